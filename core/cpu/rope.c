/* CPU rotary position embedding (RoPE, Su et al. 2021) in Hugging Face Llama's rotate-half layout:
 * feature i pairs with feature i + hs/2. The cos/sin of each (position, frequency) are computed
 * once per position in small chunks on the stack, then applied to every (batch, head) row. */
#include <math.h>

#include "core/cpu/kernels.h"

#define FREQ_CHUNK 64      /* frequencies whose cos/sin are held at once */
#define PARALLEL_MIN 16384 /* below this many elements threads cost more than they save */

/* x, out (B, NH, T, hs), hs even, contiguous; out may not alias x. For i < hs/2, position
 * p = pos_offset + t and angle a = p * theta^(-2i/hs) (HF's inv_freq):
 *   out[i]        = x[i] cos a - x[i + hs/2] sin a
 *   out[i + hs/2] = x[i + hs/2] cos a + x[i] sin a
 * inverse rotates by -a: the transpose of the rotation, i.e. the backward (dx from dout). */
void bt_cpu_rope(float *out, const float *x, int64_t B, int64_t NH, int64_t T, int64_t hs,
                 float theta, int64_t pos_offset, bool inverse) {
    const int64_t half = hs / 2;
    const double sign = inverse ? -1.0 : 1.0;
#pragma omp parallel for schedule(static) if (B * NH * T * hs >= PARALLEL_MIN)
    for (int64_t t = 0; t < T; t++) {
        const double pos = (double)(pos_offset + t);
        for (int64_t i0 = 0; i0 < half; i0 += FREQ_CHUNK) {
            const int64_t n = half - i0 < FREQ_CHUNK ? half - i0 : FREQ_CHUNK;
            float cos_a[FREQ_CHUNK], sin_a[FREQ_CHUNK];
            for (int64_t i = 0; i < n; i++) {
                double inv_freq = pow((double)theta, -2.0 * (double)(i0 + i) / (double)hs);
                double angle = pos * inv_freq;
                cos_a[i] = (float)cos(angle);
                sin_a[i] = (float)(sign * sin(angle));
            }
            for (int64_t bh = 0; bh < B * NH; bh++) {
                const float *x1 = x + (bh * T + t) * hs + i0, *x2 = x1 + half;
                float *o1 = out + (bh * T + t) * hs + i0, *o2 = o1 + half;
                for (int64_t i = 0; i < n; i++) {
                    float a = x1[i], b = x2[i];
                    o1[i] = a * cos_a[i] - b * sin_a[i];
                    o2[i] = b * cos_a[i] + a * sin_a[i];
                }
            }
        }
    }
}
