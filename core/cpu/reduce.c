/* CPU reductions over the middle axis of x viewed as (outer, dim, inner). */
#include <float.h>

#include "core/cpu/kernels.h"

void bt_cpu_reduce(bt_reduce_op op, float *out, int64_t *argmax, const float *x, int64_t outer,
                   int64_t dim, int64_t inner) {
#pragma omp parallel for schedule(static) if (outer * dim * inner >= 16384)
    for (int64_t o = 0; o < outer; o++) {
        const float *base = x + o * dim * inner;
        float *row = out + o * inner;
        if (op == BT_RED_MAX) {
            for (int64_t j = 0; j < inner; j++) {
                float best = -FLT_MAX;
                int64_t at = 0;
                for (int64_t k = 0; k < dim; k++) {
                    float v = base[k * inner + j];
                    if (v > best || (k == 0)) {
                        best = v;
                        at = k;
                    }
                }
                row[j] = best;
                if (argmax) argmax[o * inner + j] = at;
            }
            continue;
        }
        /* sums in double: the reductions feed losses and norms that users compare to PyTorch */
        for (int64_t j = 0; j < inner; j++) {
            double acc = 0.0;
            for (int64_t k = 0; k < dim; k++)
                acc += base[k * inner + j];
            row[j] = (float)(op == BT_RED_MEAN && dim > 0 ? acc / (double)dim : acc);
        }
    }
}
