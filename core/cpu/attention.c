/* CPU attention kernels: fused scaled-dot-product attention with an online softmax (forward) and
 * FlashAttention-2 style recomputation from the saved log-sum-exp (backward), one query row at a
 * time; never builds the T x T matrix. OpenMP over query rows (forward), over kv heads or key
 * blocks (backward), so that no two threads write the same row. */
#include <math.h>
#include <omp.h>

#include "core/cpu/kernels.h"

#define KEY_BLOCK 64 /* keys scored at once; forward rescales once per block, backward owns one */

static inline float dot(const float *a, const float *b, int64_t n) {
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; i++)
        acc += a[i] * b[i];
    return acc;
}

/* y[n] += alpha * x[n] */
static inline void axpy(float *restrict y, float alpha, const float *restrict x, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++)
        y[i] += alpha * x[i];
}

/* y[n] += sum_j w[j] * x[j][n] for x (n_rows, n): four rows per pass over y, so y is loaded and
 * stored a quarter as often as with one axpy per row */
static inline void add_weighted_rows(float *restrict y, const float *w, const float *restrict x,
                                     int64_t n_rows, int64_t n) {
    int64_t j = 0;
    for (; j + 4 <= n_rows; j += 4) {
        const float *x0 = x + j * n, *x1 = x0 + n, *x2 = x1 + n, *x3 = x2 + n;
        float w0 = w[j], w1 = w[j + 1], w2 = w[j + 2], w3 = w[j + 3];
#pragma omp simd
        for (int64_t i = 0; i < n; i++)
            y[i] += w0 * x0[i] + w1 * x1[i] + w2 * x2[i] + w3 * x3[i];
    }
    for (; j < n_rows; j++)
        axpy(y, w[j], x + j * n, n);
}

static inline int64_t min64(int64_t a, int64_t b) {
    return a < b ? a : b;
}

void bt_cpu_attention(float *out, float *lse, const float *q, const float *k, const float *v,
                      int64_t B, int64_t NH, int64_t NKV, int64_t T, int64_t hs, float scale,
                      bool causal) {
    /* q and out are (B, NH, T, hs), k and v (B, NKV, T, hs), lse (B, NH, T); row r = (b, h, t):
     *   out_t = sum_s softmax_s(q_t . k_s * scale) v_s,  lse_t = log sum_s exp(q_t . k_s * scale)
     * over s <= t when causal, all s otherwise; query head h reads kv head h / (NH / NKV).
     * Online softmax (Milakov & Gimelshein 2018): keep the running max m and sum l, rescale the
     * partial output when m grows. */
    int64_t rows = B * NH * T, group = NKV > 0 ? NH / NKV : 1;
#pragma omp parallel for schedule(dynamic, 16) if (rows * T * hs >= 32768)
    for (int64_t r = 0; r < rows; r++) {
        int64_t t = r % T, bh = r / T, b = bh / NH, h = bh % NH;
        int64_t kv_off = (b * NKV + h / group) * T * hs;
        const float *q_t = q + r * hs, *kh = k + kv_off, *vh = v + kv_off;
        float *o = out + r * hs;
        int64_t n_keys = causal ? t + 1 : T;
        float m = -INFINITY, l = 0.0f, p[KEY_BLOCK];
        for (int64_t i = 0; i < hs; i++)
            o[i] = 0.0f;
        for (int64_t s0 = 0; s0 < n_keys; s0 += KEY_BLOCK) {
            int64_t n = min64(KEY_BLOCK, n_keys - s0);
            float block_max = -INFINITY;
            for (int64_t j = 0; j < n; j++) {
                p[j] = dot(q_t, kh + (s0 + j) * hs, hs) * scale;
                if (p[j] > block_max) block_max = p[j];
            }
            if (block_max > m) { /* rescale what was accumulated under the old max */
                float correction = expf(m - block_max);
                l *= correction;
                for (int64_t i = 0; i < hs; i++)
                    o[i] *= correction;
                m = block_max;
            }
            for (int64_t j = 0; j < n; j++) {
                p[j] = expf(p[j] - m);
                l += p[j];
            }
            add_weighted_rows(o, p, vh + s0 * hs, n, hs);
        }
        float inv_l = 1.0f / l;
        for (int64_t i = 0; i < hs; i++)
            o[i] *= inv_l;
        lse[r] = m + logf(l);
    }
}

/* Everything the backward helpers read and write; shapes as in bt_cpu_attention_backward. */
struct attention_grads {
    float *dq, *dk, *dv;
    const float *dout, *q, *k, *v, *out, *lse;
    int64_t NH, NKV, T, hs;
    float scale;
    bool causal;
};

/* Keys s0 <= s < s1 (s1 - s0 <= KEY_BLOCK) of kv head g in batch b, against every query of the
 * heads that read it: overwrites dk, dv rows s0..s1-1 and, when with_dq, adds these keys' share
 * to those queries' dq rows. */
static void backward_key_block(const struct attention_grads *a, int64_t b, int64_t g, int64_t s0,
                               int64_t s1, bool with_dq) {
    int64_t NH = a->NH, T = a->T, hs = a->hs, group = a->NH / a->NKV;
    int64_t kv_off = (b * a->NKV + g) * T * hs;
    const float *kg = a->k + kv_off, *vg = a->v + kv_off;
    float *dkg = a->dk + kv_off, *dvg = a->dv + kv_off, ds[KEY_BLOCK];
    for (int64_t i = s0 * hs; i < s1 * hs; i++)
        dkg[i] = dvg[i] = 0.0f;
    for (int64_t h = g * group; h < (g + 1) * group; h++) {
        for (int64_t t = a->causal ? s0 : 0; t < T; t++) {
            int64_t r = (b * NH + h) * T + t;
            const float *q_t = a->q + r * hs, *do_t = a->dout + r * hs;
            float D = dot(do_t, a->out + r * hs, hs), lse_t = a->lse[r];
            int64_t n = (a->causal ? min64(s1, t + 1) : s1) - s0;
            for (int64_t j = 0; j < n; j++) {
                int64_t s = s0 + j;
                float p = expf(dot(q_t, kg + s * hs, hs) * a->scale - lse_t);
                float dp = dot(do_t, vg + s * hs, hs);
                ds[j] = p * (dp - D) * a->scale;
                axpy(dvg + s * hs, p, do_t, hs);
                axpy(dkg + s * hs, ds[j], q_t, hs);
            }
            if (with_dq) add_weighted_rows(a->dq + r * hs, ds, kg + s0 * hs, n, hs);
        }
    }
}

/* dq row r = (b, h, t) from all its keys (overwritten) */
static void backward_query_row(const struct attention_grads *a, int64_t r) {
    int64_t NH = a->NH, T = a->T, hs = a->hs, group = a->NH / a->NKV;
    int64_t t = r % T, b = r / T / NH, h = r / T % NH;
    int64_t kv_off = (b * a->NKV + h / group) * T * hs;
    const float *q_t = a->q + r * hs, *do_t = a->dout + r * hs;
    const float *kh = a->k + kv_off, *vh = a->v + kv_off;
    float *dq_t = a->dq + r * hs, ds[KEY_BLOCK];
    float D = dot(do_t, a->out + r * hs, hs), lse_t = a->lse[r];
    int64_t n_keys = a->causal ? t + 1 : T;
    for (int64_t i = 0; i < hs; i++)
        dq_t[i] = 0.0f;
    for (int64_t s0 = 0; s0 < n_keys; s0 += KEY_BLOCK) {
        int64_t n = min64(KEY_BLOCK, n_keys - s0);
        for (int64_t j = 0; j < n; j++) {
            const float *k_s = kh + (s0 + j) * hs, *v_s = vh + (s0 + j) * hs;
            float p = expf(dot(q_t, k_s, hs) * a->scale - lse_t);
            ds[j] = p * (dot(do_t, v_s, hs) - D) * a->scale;
        }
        add_weighted_rows(dq_t, ds, kh + s0 * hs, n, hs);
    }
}

void bt_cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                               const float *k, const float *v, const float *out, const float *lse,
                               int64_t B, int64_t NH, int64_t NKV, int64_t T, int64_t hs,
                               float scale, bool causal) {
    /* Shapes as in the forward; dq, dout like q; dk, dv like k, v; all overwritten.
     * FlashAttention-2 (Dao 2023, Alg. 2) per (query t, key s) pair, with p recomputed from lse:
     *   p = exp(q_t . k_s * scale - lse_t)     (forward: softmax row)
     *   D_t = dout_t . out_t                   (= sum_s p_s dp_s)
     *   dv_s += p dout_t;  dp = dout_t . v_s;  ds = p (dp - D_t) * scale
     *   dq_t += ds k_s;  dk_s += ds q_t
     * Every output row has one writer. With enough (b, kv head) groups for the threads, one pass:
     * a group's task owns its dk, dv rows and the dq rows of the query heads that read it. Else two
     * passes with more tasks: dk, dv by (b, kv head, key block), then dq by query row; this scores
     * every pair twice. */
    if (NKV <= 0 || T <= 0) return;
    struct attention_grads a = {dq, dk, dv, dout, q, k, v, out, lse, NH, NKV, T, hs, scale, causal};
    int64_t rows = B * NH * T, groups = B * NKV, n_blocks = (T + KEY_BLOCK - 1) / KEY_BLOCK;
    bool parallel = rows * T * hs >= 32768;
    if (!parallel || groups >= 4 * omp_get_max_threads()) {
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
        for (int64_t bg = 0; bg < groups; bg++) {
            int64_t b = bg / NKV, g = bg % NKV, group = NH / NKV;
            float *dq_g = dq + (b * NH + g * group) * T * hs; /* the group's query heads */
            for (int64_t i = 0; i < group * T * hs; i++)
                dq_g[i] = 0.0f;
            for (int64_t s0 = 0; s0 < T; s0 += KEY_BLOCK)
                backward_key_block(&a, b, g, s0, min64(s0 + KEY_BLOCK, T), true);
        }
        return;
    }
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t task = 0; task < groups * n_blocks; task++) {
        int64_t bg = task / n_blocks, s0 = (task % n_blocks) * KEY_BLOCK;
        backward_key_block(&a, bg / NKV, bg % NKV, s0, min64(s0 + KEY_BLOCK, T), false);
    }
#pragma omp parallel for schedule(dynamic, 16)
    for (int64_t r = 0; r < rows; r++)
        backward_query_row(&a, r);
}
