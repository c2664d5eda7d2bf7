/* CPU layernorm and rmsnorm over the last dim of x (N, C), forward and backward (llm.c's
 * layernorm_forward/backward). Rows run in parallel; dweight and dbias are summed over rows one
 * column block per thread, so the result does not depend on the thread count. */
#include <math.h>

#include "core/cpu/kernels.h"

#define PARALLEL_MIN 16384 /* below this many elements threads cost more than they save */
#define COL_BLOCK 32       /* columns per task in the dweight/dbias sums: one cache line pair */

/* x, out (N, C); w, b (C) or NULL; mean, rstd (N)
 * out = (x - mean) * rstd * w + b, rstd = 1 / sqrt(var + eps) (biased variance) */
void bt_cpu_layernorm(float *out, float *mean, float *rstd, const float *x, const float *w,
                      const float *b, int64_t N, int64_t C, float eps) {
#pragma omp parallel for schedule(static) if (N * C >= PARALLEL_MIN)
    for (int64_t n = 0; n < N; n++) {
        const float *xr = x + n * C;
        float *yr = out + n * C;
        double sum = 0.0;
        for (int64_t c = 0; c < C; c++)
            sum += xr[c];
        float m = C ? (float)(sum / (double)C) : 0.0f;
        double var = 0.0; /* two passes: no cancellation when |mean| >> std */
        for (int64_t c = 0; c < C; c++) {
            float d = xr[c] - m;
            var += (double)d * d;
        }
        float s = 1.0f / sqrtf((C ? (float)(var / (double)C) : 0.0f) + eps);
        for (int64_t c = 0; c < C; c++) {
            float y = (xr[c] - m) * s;
            if (w) y *= w[c];
            if (b) y += b[c];
            yr[c] = y;
        }
        mean[n] = m;
        rstd[n] = s;
    }
}

/* dout, x, dx (N, C); w, dw, db (C); mean, rstd (N). With norm = (x - mean) * rstd and
 * dnorm = dout * w:  dx = rstd * (dnorm - mean_c(dnorm) - norm * mean_c(dnorm * norm)),
 * dw = sum_n dout * norm, db = sum_n dout. Each of dx, dw, db may be NULL (not wanted). */
void bt_cpu_layernorm_backward(float *dx, float *dw, float *db, const float *dout, const float *x,
                               const float *w, const float *mean, const float *rstd, int64_t N,
                               int64_t C, float beta_x, float beta_w, float beta_b) {
    if (dx) {
#pragma omp parallel for schedule(static) if (N * C >= PARALLEL_MIN)
        for (int64_t n = 0; n < N; n++) {
            const float *xr = x + n * C, *gr = dout + n * C;
            float *dr = dx + n * C;
            float m = mean[n], s = rstd[n];
            double dnorm_sum = 0.0, dnorm_norm_sum = 0.0;
            for (int64_t c = 0; c < C; c++) {
                float dnorm = w ? gr[c] * w[c] : gr[c];
                dnorm_sum += dnorm;
                dnorm_norm_sum += (double)dnorm * ((xr[c] - m) * s);
            }
            float dnorm_mean = (float)(dnorm_sum / (double)C);
            float dnorm_norm_mean = (float)(dnorm_norm_sum / (double)C);
            for (int64_t c = 0; c < C; c++) {
                float norm = (xr[c] - m) * s;
                float dnorm = w ? gr[c] * w[c] : gr[c];
                float d = s * (dnorm - dnorm_mean - norm * dnorm_norm_mean);
                dr[c] = beta_x == 0.0f ? d : dr[c] + d;
            }
        }
    }
    if (!dw && !db) return;
    int64_t blocks = (C + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static) if (N * C >= PARALLEL_MIN)
    for (int64_t blk = 0; blk < blocks; blk++) {
        int64_t c0 = blk * COL_BLOCK, c1 = c0 + COL_BLOCK < C ? c0 + COL_BLOCK : C;
        double acc_w[COL_BLOCK] = {0}, acc_b[COL_BLOCK] = {0};
        for (int64_t n = 0; n < N; n++) {
            const float *xr = x + n * C, *gr = dout + n * C;
            for (int64_t c = c0; c < c1; c++) {
                acc_w[c - c0] += (double)gr[c] * ((xr[c] - mean[n]) * rstd[n]);
                acc_b[c - c0] += gr[c];
            }
        }
        for (int64_t c = c0; c < c1; c++) {
            if (dw) dw[c] = beta_w == 0.0f ? (float)acc_w[c - c0] : dw[c] + (float)acc_w[c - c0];
            if (db) db[c] = beta_b == 0.0f ? (float)acc_b[c - c0] : db[c] + (float)acc_b[c - c0];
        }
    }
}

/* x, out (N, C); w (C) or NULL; rstd (N)
 * out = x * rstd * w, rstd = 1 / sqrt(mean_c(x^2) + eps) */
void bt_cpu_rmsnorm(float *out, float *rstd, const float *x, const float *w, int64_t N, int64_t C,
                    float eps) {
#pragma omp parallel for schedule(static) if (N * C >= PARALLEL_MIN)
    for (int64_t n = 0; n < N; n++) {
        const float *xr = x + n * C;
        float *yr = out + n * C;
        double ss = 0.0;
        for (int64_t c = 0; c < C; c++)
            ss += (double)xr[c] * xr[c];
        float s = 1.0f / sqrtf((C ? (float)(ss / (double)C) : 0.0f) + eps);
        for (int64_t c = 0; c < C; c++)
            yr[c] = w ? xr[c] * s * w[c] : xr[c] * s;
        rstd[n] = s;
    }
}

/* dout, x, dx (N, C); w, dw (C); rstd (N). With norm = x * rstd and dnorm = dout * w:
 * dx = rstd * (dnorm - norm * mean_c(dnorm * norm)), dw = sum_n dout * norm. dx, dw may be NULL. */
void bt_cpu_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x,
                             const float *w, const float *rstd, int64_t N, int64_t C, float beta_x,
                             float beta_w) {
    if (dx) {
#pragma omp parallel for schedule(static) if (N * C >= PARALLEL_MIN)
        for (int64_t n = 0; n < N; n++) {
            const float *xr = x + n * C, *gr = dout + n * C;
            float *dr = dx + n * C;
            float s = rstd[n];
            double dnorm_norm_sum = 0.0;
            for (int64_t c = 0; c < C; c++) {
                float dnorm = w ? gr[c] * w[c] : gr[c];
                dnorm_norm_sum += (double)dnorm * (xr[c] * s);
            }
            float dnorm_norm_mean = (float)(dnorm_norm_sum / (double)C);
            for (int64_t c = 0; c < C; c++) {
                float dnorm = w ? gr[c] * w[c] : gr[c];
                float d = s * (dnorm - xr[c] * s * dnorm_norm_mean);
                dr[c] = beta_x == 0.0f ? d : dr[c] + d;
            }
        }
    }
    if (!dw) return;
    int64_t blocks = (C + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static) if (N * C >= PARALLEL_MIN)
    for (int64_t blk = 0; blk < blocks; blk++) {
        int64_t c0 = blk * COL_BLOCK, c1 = c0 + COL_BLOCK < C ? c0 + COL_BLOCK : C;
        double acc[COL_BLOCK] = {0};
        for (int64_t n = 0; n < N; n++) {
            const float *xr = x + n * C, *gr = dout + n * C;
            for (int64_t c = c0; c < c1; c++)
                acc[c - c0] += (double)gr[c] * (xr[c] * rstd[n]);
        }
        for (int64_t c = c0; c < c1; c++)
            dw[c] = beta_w == 0.0f ? (float)acc[c - c0] : dw[c] + (float)acc[c - c0];
    }
}
