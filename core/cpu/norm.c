/* CPU layernorm and rmsnorm over the last dim of x (N, C), forward and backward (llm.c's
 * layernorm_forward/backward). Rows run in parallel; dweight and dbias are summed over rows one
 * column block per thread, so the result does not depend on the thread count. */
#include <math.h>

#include "core/cpu/kernels.h"
#include "core/cpu/vecmath.h"

#define PARALLEL_MIN 16384 /* below this many elements threads cost more than they save */
#define COL_BLOCK 32       /* columns per task in the dweight/dbias sums: one cache line pair */

#define ROW_BLOCK 16 /* rows per call of a dispatched row function */

/* sum_c a[c] * (b ? b[c] : 1) over n floats, BT_VL (8) lanes of partial sums */
BT_VEC_INLINE float vec_dot(const float *a, const float *b, int64_t n) {
    bt_vf acc = bt_vf_splat(0.0f);
    int64_t c = 0;
    for (; c + BT_VL <= n; c += BT_VL)
        acc += b ? bt_vf_load(a + c) * bt_vf_load(b + c) : bt_vf_load(a + c);
    float sum = bt_vf_sum(acc);
    for (; c < n; c++)
        sum += b ? a[c] * b[c] : a[c];
    return sum;
}

/* Rows n0..n1-1 of the layernorm forward; sums in float, BT_VL (8) lanes wide */
BT_CPU_DISPATCH static void layernorm_rows(float *out, float *mean, float *rstd, const float *x,
                                           const float *w, const float *b, int64_t n0, int64_t n1,
                                           int64_t C, float eps) {
    for (int64_t n = n0; n < n1; n++) {
        const float *xr = x + n * C;
        float *yr = out + n * C;
        float m = C ? vec_dot(xr, NULL, C) / (float)C : 0.0f;
        bt_vf acc = bt_vf_splat(0.0f); /* two passes: no cancellation when |mean| >> std */
        int64_t c = 0;
        for (; c + BT_VL <= C; c += BT_VL) {
            bt_vf d = bt_vf_load(xr + c) - m;
            acc += d * d;
        }
        float var = bt_vf_sum(acc);
        for (; c < C; c++)
            var += (xr[c] - m) * (xr[c] - m);
        float s = 1.0f / sqrtf((C ? var / (float)C : 0.0f) + eps);
        for (c = 0; c + BT_VL <= C; c += BT_VL) {
            bt_vf y = (bt_vf_load(xr + c) - m) * s;
            if (w) y *= bt_vf_load(w + c);
            if (b) y += bt_vf_load(b + c);
            bt_vf_store(yr + c, y);
        }
        for (; c < C; c++) {
            float y = (xr[c] - m) * s;
            if (w) y *= w[c];
            if (b) y += b[c];
            yr[c] = y;
        }
        mean[n] = m;
        rstd[n] = s;
    }
}

/* x, out (N, C); w, b (C) or NULL; mean, rstd (N)
 * out = (x - mean) * rstd * w + b, rstd = 1 / sqrt(var + eps) (biased variance) */
void bt_cpu_layernorm(float *out, float *mean, float *rstd, const float *x, const float *w,
                      const float *b, int64_t N, int64_t C, float eps) {
#pragma omp parallel for schedule(static) if (N * C >= PARALLEL_MIN)
    for (int64_t n0 = 0; n0 < N; n0 += ROW_BLOCK)
        layernorm_rows(out, mean, rstd, x, w, b, n0, n0 + ROW_BLOCK < N ? n0 + ROW_BLOCK : N, C,
                       eps);
}

/* Rows n0..n1-1 of the layernorm backward's dx */
BT_CPU_DISPATCH static void layernorm_dx_rows(float *dx, const float *dout, const float *x,
                                              const float *w, const float *mean, const float *rstd,
                                              int64_t n0, int64_t n1, int64_t C, bool accumulate) {
    for (int64_t n = n0; n < n1; n++) {
        const float *xr = x + n * C, *gr = dout + n * C;
        float *dr = dx + n * C;
        float m = mean[n], s = rstd[n];
        bt_vf acc = bt_vf_splat(0.0f), acc_norm = bt_vf_splat(0.0f);
        int64_t c = 0;
        for (; c + BT_VL <= C; c += BT_VL) {
            bt_vf dnorm = w ? bt_vf_load(gr + c) * bt_vf_load(w + c) : bt_vf_load(gr + c);
            acc += dnorm;
            acc_norm += dnorm * ((bt_vf_load(xr + c) - m) * s);
        }
        float dnorm_sum = bt_vf_sum(acc), dnorm_norm_sum = bt_vf_sum(acc_norm);
        for (; c < C; c++) {
            float dnorm = w ? gr[c] * w[c] : gr[c];
            dnorm_sum += dnorm;
            dnorm_norm_sum += dnorm * ((xr[c] - m) * s);
        }
        float dnorm_mean = dnorm_sum / (float)C, dnorm_norm_mean = dnorm_norm_sum / (float)C;
        for (c = 0; c + BT_VL <= C; c += BT_VL) {
            bt_vf norm = (bt_vf_load(xr + c) - m) * s;
            bt_vf dnorm = w ? bt_vf_load(gr + c) * bt_vf_load(w + c) : bt_vf_load(gr + c);
            bt_vf d = s * (dnorm - dnorm_mean - norm * dnorm_norm_mean);
            bt_vf_store(dr + c, accumulate ? bt_vf_load(dr + c) + d : d);
        }
        for (; c < C; c++) {
            float norm = (xr[c] - m) * s;
            float dnorm = w ? gr[c] * w[c] : gr[c];
            float d = s * (dnorm - dnorm_mean - norm * dnorm_norm_mean);
            dr[c] = accumulate ? dr[c] + d : d;
        }
    }
}

/* Columns c0..c0+COL_BLOCK-1 (or to C) of the layernorm's dw and db: sums over all N rows in
 * double, in row order */
BT_CPU_DISPATCH static void layernorm_param_grad_block(float *dw, float *db, const float *dout,
                                                       const float *x, const float *mean,
                                                       const float *rstd, int64_t N, int64_t C,
                                                       int64_t c0, float beta_w, float beta_b) {
    int64_t c1 = c0 + COL_BLOCK < C ? c0 + COL_BLOCK : C;
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

/* dout, x, dx (N, C); w, dw, db (C); mean, rstd (N). With norm = (x - mean) * rstd and
 * dnorm = dout * w:  dx = rstd * (dnorm - mean_c(dnorm) - norm * mean_c(dnorm * norm)),
 * dw = sum_n dout * norm, db = sum_n dout. Each of dx, dw, db may be NULL (not wanted). */
void bt_cpu_layernorm_backward(float *dx, float *dw, float *db, const float *dout, const float *x,
                               const float *w, const float *mean, const float *rstd, int64_t N,
                               int64_t C, float beta_x, float beta_w, float beta_b) {
    if (dx) {
#pragma omp parallel for schedule(static) if (N * C >= PARALLEL_MIN)
        for (int64_t n0 = 0; n0 < N; n0 += ROW_BLOCK)
            layernorm_dx_rows(dx, dout, x, w, mean, rstd, n0,
                              n0 + ROW_BLOCK < N ? n0 + ROW_BLOCK : N, C, beta_x != 0.0f);
    }
    if (!dw && !db) return;
    int64_t blocks = (C + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static) if (N * C >= PARALLEL_MIN)
    for (int64_t blk = 0; blk < blocks; blk++)
        layernorm_param_grad_block(dw, db, dout, x, mean, rstd, N, C, blk * COL_BLOCK, beta_w,
                                   beta_b);
}

/* Rows n0..n1-1 of the rmsnorm forward; sums in float, BT_VL (8) lanes wide */
BT_CPU_DISPATCH static void rmsnorm_rows(float *out, float *rstd, const float *x, const float *w,
                                         int64_t n0, int64_t n1, int64_t C, float eps) {
    for (int64_t n = n0; n < n1; n++) {
        const float *xr = x + n * C;
        float *yr = out + n * C;
        float s = 1.0f / sqrtf((C ? vec_dot(xr, xr, C) / (float)C : 0.0f) + eps);
        int64_t c = 0;
        for (; c + BT_VL <= C; c += BT_VL) {
            bt_vf y = bt_vf_load(xr + c) * s;
            bt_vf_store(yr + c, w ? y * bt_vf_load(w + c) : y);
        }
        for (; c < C; c++)
            yr[c] = w ? xr[c] * s * w[c] : xr[c] * s;
        rstd[n] = s;
    }
}

/* x, out (N, C); w (C) or NULL; rstd (N)
 * out = x * rstd * w, rstd = 1 / sqrt(mean_c(x^2) + eps) */
void bt_cpu_rmsnorm(float *out, float *rstd, const float *x, const float *w, int64_t N, int64_t C,
                    float eps) {
#pragma omp parallel for schedule(static) if (N * C >= PARALLEL_MIN)
    for (int64_t n0 = 0; n0 < N; n0 += ROW_BLOCK)
        rmsnorm_rows(out, rstd, x, w, n0, n0 + ROW_BLOCK < N ? n0 + ROW_BLOCK : N, C, eps);
}

/* Rows n0..n1-1 of the rmsnorm backward's dx */
BT_CPU_DISPATCH static void rmsnorm_dx_rows(float *dx, const float *dout, const float *x,
                                            const float *w, const float *rstd, int64_t n0,
                                            int64_t n1, int64_t C, bool accumulate) {
    for (int64_t n = n0; n < n1; n++) {
        const float *xr = x + n * C, *gr = dout + n * C;
        float *dr = dx + n * C;
        float s = rstd[n];
        bt_vf acc = bt_vf_splat(0.0f);
        int64_t c = 0;
        for (; c + BT_VL <= C; c += BT_VL) {
            bt_vf dnorm = w ? bt_vf_load(gr + c) * bt_vf_load(w + c) : bt_vf_load(gr + c);
            acc += dnorm * (bt_vf_load(xr + c) * s);
        }
        float dnorm_norm_sum = bt_vf_sum(acc);
        for (; c < C; c++)
            dnorm_norm_sum += (w ? gr[c] * w[c] : gr[c]) * (xr[c] * s);
        float dnorm_norm_mean = dnorm_norm_sum / (float)C;
        for (c = 0; c + BT_VL <= C; c += BT_VL) {
            bt_vf dnorm = w ? bt_vf_load(gr + c) * bt_vf_load(w + c) : bt_vf_load(gr + c);
            bt_vf d = s * (dnorm - bt_vf_load(xr + c) * s * dnorm_norm_mean);
            bt_vf_store(dr + c, accumulate ? bt_vf_load(dr + c) + d : d);
        }
        for (; c < C; c++) {
            float dnorm = w ? gr[c] * w[c] : gr[c];
            float d = s * (dnorm - xr[c] * s * dnorm_norm_mean);
            dr[c] = accumulate ? dr[c] + d : d;
        }
    }
}

/* dout, x, dx (N, C); w, dw (C); rstd (N). With norm = x * rstd and dnorm = dout * w:
 * dx = rstd * (dnorm - norm * mean_c(dnorm * norm)), dw = sum_n dout * norm. dx, dw may be NULL. */
void bt_cpu_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x,
                             const float *w, const float *rstd, int64_t N, int64_t C, float beta_x,
                             float beta_w) {
    if (dx) {
#pragma omp parallel for schedule(static) if (N * C >= PARALLEL_MIN)
        for (int64_t n0 = 0; n0 < N; n0 += ROW_BLOCK)
            rmsnorm_dx_rows(dx, dout, x, w, rstd, n0, n0 + ROW_BLOCK < N ? n0 + ROW_BLOCK : N, C,
                            beta_x != 0.0f);
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
