/* CPU dropout. The mask is never stored: keep(i) is recomputed from the counter-based RNG
 * (bt_rng_uniform_at of seed and offset + i), so forward and backward agree bit for bit. */
#include "core/cpu/kernels.h"

#define PARALLEL_MIN 16384 /* below this many elements threads cost more than they save */

/* x, out (n): out[i] (+)= keep(i) ? x[i] / (1 - p) : 0, keep(i) = uniform(seed, offset + i) >= p.
 * The backward calls it with dout as x and dx as out. */
void bt_cpu_dropout(float *out, const float *x, int64_t n, float p, uint64_t seed, uint64_t offset,
                    float beta) {
    float scale = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++) {
        float d = bt_rng_uniform_at(seed, offset + (uint64_t)i) >= p ? x[i] * scale : 0.0f;
        out[i] = beta == 0.0f ? d : out[i] + d;
    }
}
