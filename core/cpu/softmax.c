/* CPU softmax and log-softmax over the middle axis of x viewed as (outer, dim, inner), forward and
 * backward. Stable: each row's max is subtracted before exp. OpenMP over the outer*inner rows. */
#include <math.h>

#include "core/cpu/kernels.h"

#define PARALLEL_MIN 16384 /* below this many elements threads cost more than they save */

/* x, out (outer, dim, inner); row r = (o, j) is x[o, :, j], read with stride inner */
void bt_cpu_softmax(float *out, const float *x, int64_t outer, int64_t dim, int64_t inner,
                    bool log) {
    int64_t rows = outer * inner;
#pragma omp parallel for schedule(static) if (rows * dim >= PARALLEL_MIN)
    for (int64_t r = 0; r < rows; r++) {
        int64_t o = r / inner, j = r % inner;
        const float *xr = x + o * dim * inner + j;
        float *yr = out + o * dim * inner + j;
        float maxval = -INFINITY;
        for (int64_t k = 0; k < dim; k++)
            if (xr[k * inner] > maxval) maxval = xr[k * inner];
        if (maxval == -INFINITY) maxval = 0.0f; /* an all -inf row: avoid -inf - -inf = nan */
        double sum = 0.0;
        for (int64_t k = 0; k < dim; k++) {
            float e = expf(xr[k * inner] - maxval);
            if (!log) yr[k * inner] = e;
            sum += e;
        }
        if (log) { /* log_softmax = (x - max) - log(sum exp(x - max)), in that order for large x */
            float log_sum = logf((float)sum);
            for (int64_t k = 0; k < dim; k++)
                yr[k * inner] = (xr[k * inner] - maxval) - log_sum;
        } else {
            float inv = (float)(1.0 / sum);
            for (int64_t k = 0; k < dim; k++)
                yr[k * inner] *= inv;
        }
    }
}

/* dout, out, dx (outer, dim, inner); out is the forward's result.
 * softmax:     dx = y * (dout - sum_k dout_k y_k)
 * log_softmax: dx = dout - exp(y) * sum_k dout_k */
void bt_cpu_softmax_backward(float *dx, const float *dout, const float *out, int64_t outer,
                             int64_t dim, int64_t inner, bool log, float beta) {
    int64_t rows = outer * inner;
#pragma omp parallel for schedule(static) if (rows * dim >= PARALLEL_MIN)
    for (int64_t r = 0; r < rows; r++) {
        int64_t base = (r / inner) * dim * inner + r % inner;
        const float *gr = dout + base, *yr = out + base;
        float *dr = dx + base;
        double acc = 0.0;
        for (int64_t k = 0; k < dim; k++)
            acc += log ? gr[k * inner] : gr[k * inner] * yr[k * inner];
        float s = (float)acc;
        for (int64_t k = 0; k < dim; k++) {
            float y = yr[k * inner], g = gr[k * inner];
            float d = log ? g - expf(y) * s : y * (g - s);
            dr[k * inner] = beta == 0.0f ? d : dr[k * inner] + d;
        }
    }
}
