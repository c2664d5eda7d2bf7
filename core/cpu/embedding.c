/* CPU embedding lookup and its scatter-add backward. The backward gives each thread its own block
 * of columns and walks the indices in order, so repeated indices sum in a fixed order: no atomics,
 * and the same bits for any thread count. Indices are int64 and already range-checked. */
#include <string.h>

#include "core/cpu/kernels.h"

#define PARALLEL_MIN 16384 /* below this many elements threads cost more than they save */
#define COL_BLOCK 64       /* columns of dweight per task in the backward */

/* weight (V, C), idx (N), out (N, C): out[n, :] = weight[idx[n], :] */
void bt_cpu_embedding(float *out, const float *weight, const int64_t *idx, int64_t N, int64_t C) {
#pragma omp parallel for schedule(static) if (N * C >= PARALLEL_MIN)
    for (int64_t n = 0; n < N; n++)
        memcpy(out + n * C, weight + idx[n] * C, (size_t)C * sizeof(float));
}

/* dout (N, C), idx (N), dweight (V, C): dweight[idx[n], :] += dout[n, :], n in increasing order */
void bt_cpu_embedding_backward(float *dweight, const float *dout, const int64_t *idx, int64_t N,
                               int64_t C, int64_t V) {
    (void)V;
    int64_t blocks = (C + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static) if (N * C >= PARALLEL_MIN)
    for (int64_t blk = 0; blk < blocks; blk++) {
        int64_t c0 = blk * COL_BLOCK, c1 = c0 + COL_BLOCK < C ? c0 + COL_BLOCK : C;
        for (int64_t n = 0; n < N; n++) {
            float *dst = dweight + idx[n] * C;
            const float *src = dout + n * C;
            for (int64_t c = c0; c < c1; c++)
                dst[c] += src[c];
        }
    }
}
