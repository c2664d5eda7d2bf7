/* CPU reductions over the middle axis of x viewed as (outer, dim, inner), their backward, the sum
 * over broadcast dims and the sum of squares of many buffers (gradient norms). */
#include <float.h>
#include <omp.h>

#include "core/cpu/kernels.h"
#include "core/cpu/vecmath.h"

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

void bt_cpu_reduce_backward(bt_reduce_op op, float *dx, const float *dout, const int64_t *argmax,
                            int64_t outer, int64_t dim, int64_t inner, float beta) {
    if (op == BT_RED_MAX) {
        if (beta == 0.0f) bt_cpu_fill(dx, BT_F32, outer * dim * inner, 0.0);
        for (int64_t o = 0; o < outer; o++)
            for (int64_t j = 0; j < inner; j++)
                dx[(o * dim + argmax[o * inner + j]) * inner + j] += dout[o * inner + j];
        return;
    }
    float scale = (op == BT_RED_MEAN && dim > 0) ? 1.0f / (float)dim : 1.0f;
    for (int64_t o = 0; o < outer; o++)
        for (int64_t k = 0; k < dim; k++)
            for (int64_t j = 0; j < inner; j++) {
                float v = dout[o * inner + j] * scale;
                float *p = &dx[(o * dim + k) * inner + j];
                *p = beta == 0.0f ? v : *p + v;
            }
}

void bt_cpu_sum_to(float *out, int64_t out_numel, const float *src, int ndim, const int64_t *shape,
                   const int64_t *map) {
    (void)out_numel;
    int64_t n = 1, index[BT_MAX_DIMS] = {0}, o = 0;
    for (int k = 0; k < ndim; k++)
        n *= shape[k];
    for (int64_t i = 0; i < n; i++) {
        out[o] += src[i];
        for (int k = ndim - 1; k >= 0; k--) { /* advance the row-major index, tracking o */
            o += map[k];
            if (++index[k] < shape[k]) break;
            o -= map[k] * index[k];
            index[k] = 0;
        }
    }
}

/* Sum of x[k]^2 in double. One accumulator would be a chain of dependent adds (4 cycles an
 * element); the simd reduction keeps a vector of partial sums (float reassociation only). */
BT_CPU_DISPATCH static double sum_squares_span(const float *x, int64_t n) {
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (int64_t k = 0; k < n; k++)
        acc += (double)x[k] * (double)x[k];
    return acc;
}

double bt_cpu_sum_squares(const float *const *xs, const int64_t *ns, int64_t n) {
    /* one parallel region: each thread sums the squares of an equal share of all the elements */
    int64_t total = 0;
    for (int64_t i = 0; i < n; i++)
        total += ns[i];
    double sum_sq = 0.0;
#pragma omp parallel reduction(+ : sum_sq) if (total > 32768)
    {
        int threads = omp_get_num_threads(), me = omp_get_thread_num();
        int64_t lo = total * me / threads, hi = total * (me + 1) / threads, off = 0;
        for (int64_t i = 0; i < n && off < hi; i++) {
            int64_t m = ns[i], a = lo > off ? lo : off, b = hi < off + m ? hi : off + m;
            if (b > a) sum_sq += sum_squares_span(xs[i] + (a - off), b - a);
            off += m;
        }
    }
    return sum_sq;
}
