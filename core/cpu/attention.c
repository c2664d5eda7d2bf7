/* CPU attention kernels, FlashAttention-2 style (Dao 2023) on tiles: a block of BQ query rows is
 * scored against up to KC keys at once with cblas_sgemm, so no thread holds more than a BQ x KC
 * tile of the T x T score matrix. Forward: online softmax over key chunks (one chunk when T <= KC),
 * saves the log-sum-exp. Backward: recomputes P from it. OpenMP over (batch, head, query block)
 * in the forward; over (batch, kv head) or, with few of those, over key blocks then query blocks
 * in the backward, so that no two threads write the same output row. The small sgemms run inside
 * the OpenMP team with OpenBLAS single-threaded. Short sequences (T <= TD, hs a multiple of 16)
 * skip the tiles and sgemm: one head's whole T x T in registers and per-thread scratch (below). */
#include <math.h>
#include <omp.h>
#include <stdalign.h>
#include <string.h>

#include "core/cpu/fastmath.h"
#include "core/cpu/kernels.h"
#include "core/cpu/vecmath.h"

/* The softmax loops over a tile's rows run BT_VL (8) lanes at a time (core/cpu/vecmath.h) in
 * functions compiled for each ISA level (BT_CPU_DISPATCH); a row's last partial vector is done with
 * the scalar bt_fast_expf. */

#define BQ 64  /* query rows per tile */
#define KC 256 /* keys per tile (a multiple of BQ: a causal tile never starts past its queries) */

static inline int64_t min64(int64_t a, int64_t b) {
    return a < b ? a : b;
}

static inline float dot(const float *a, const float *b, int64_t n) {
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; i++)
        acc += a[i] * b[i];
    return acc;
}

/* Keys of a causal tile that query q0 + i may see: those below q0 + i + 1, from key c0 on */
static inline int64_t visible_keys(bool causal, int64_t q0, int64_t i, int64_t c0, int64_t nc) {
    if (!causal) return nc;
    int64_t n = q0 + i + 1 - c0;
    return n < 0 ? 0 : n < nc ? n : nc;
}

/* max of s[0..n) (-inf when n = 0) */
BT_VEC_INLINE float row_max(const float *s, int64_t n) {
    bt_vf acc = bt_vf_splat(-INFINITY);
    int64_t j = 0;
    for (; j + BT_VL <= n; j += BT_VL)
        acc = bt_vf_max(acc, bt_vf_load(s + j));
    float mx = bt_vf_hmax(acc);
    for (; j < n; j++)
        mx = s[j] > mx ? s[j] : mx;
    return mx;
}

/* s[j] = exp(s[j] - shift) for j < n, 0 for n <= j < nc; returns the sum of the exps */
BT_VEC_INLINE float row_exp(float *s, int64_t n, int64_t nc, float shift) {
    bt_vf acc = bt_vf_splat(0.0f);
    int64_t j = 0;
    for (; j + BT_VL <= n; j += BT_VL) {
        bt_vf e = bt_vf_exp(bt_vf_load(s + j) - shift);
        bt_vf_store(s + j, e);
        acc += e;
    }
    float sum = bt_vf_sum(acc);
    for (; j < n; j++)
        sum += (s[j] = bt_fast_expf(s[j] - shift));
    for (; j < nc; j++)
        s[j] = 0.0f;
    return sum;
}

/* Online-softmax step for the nq rows of a tile S (nq x nc) of scores of queries q0.. against
 * keys c0..: S becomes exp(S - m_new) (0 where masked), l and the output rows O accumulated so
 * far are rescaled to the new running max m_new, and m, l take the chunk in. */
BT_CPU_DISPATCH static void forward_tile_softmax(float *S, int64_t nq, int64_t nc, bool causal,
                                                 int64_t q0, int64_t c0, float *m, float *l,
                                                 float *O, int64_t ldo, int64_t hs) {
    for (int64_t i = 0; i < nq; i++) {
        float *s = S + i * nc;
        int64_t nv = visible_keys(causal, q0, i, c0, nc);
        float mx = row_max(s, nv);
        float m_new = mx > m[i] ? mx : m[i];
        float sum = row_exp(s, nv, nc, m_new);
        if (c0 > 0 && m_new > m[i]) { /* rescale what earlier chunks accumulated */
            float correction = bt_fast_expf(m[i] - m_new);
            l[i] *= correction;
            for (int64_t d = 0; d < hs; d++)
                O[i * ldo + d] *= correction;
        }
        if (nv > 0) m[i] = m_new;
        l[i] += sum;
    }
}

/* Backward of a tile's rows: S (scores) becomes P = exp(S - lse), dP becomes dS = P * (dP - D),
 * both 0 where masked. */
BT_CPU_DISPATCH static void backward_tile_softmax(float *S, float *dP, int64_t nq, int64_t nc,
                                                  bool causal, int64_t q0, int64_t c0,
                                                  const float *L, const float *D) {
    for (int64_t i = 0; i < nq; i++) {
        float *s = S + i * nc, *dp = dP + i * nc, lse_t = L[i], d_t = D[i];
        int64_t nv = visible_keys(causal, q0, i, c0, nc);
        row_exp(s, nv, nc, lse_t);
        int64_t j = 0;
        for (; j + BT_VL <= nv; j += BT_VL)
            bt_vf_store(dp + j, bt_vf_load(s + j) * (bt_vf_load(dp + j) - d_t));
        for (; j < nv; j++)
            dp[j] = s[j] * (dp[j] - d_t);
        for (; j < nc; j++)
            dp[j] = 0.0f;
    }
}

/* Where row t of head h in batch b starts, for an operand of layout L */
static inline int64_t row_at(const struct bt_attn_layout *L, int64_t b, int64_t h, int64_t t) {
    return b * L->batch + h * L->head + t * L->time;
}

/* Forward of query rows q0..q1-1 of head h in batch b (q1 - q0 <= BQ). S: BQ * KC scratch. */
static void forward_block(float *out, float *lse, const float *q, const float *k, const float *v,
                          int64_t b, int64_t h, int64_t q0, int64_t q1, int64_t NH, int64_t NKV,
                          int64_t T, int64_t hs, float scale, bool causal,
                          const struct bt_attn_layouts *L, float *S) {
    int64_t nq = q1 - q0, g = h / (NH / NKV);
    const float *Q = q + row_at(&L->q, b, h, q0), *K = k + row_at(&L->k, b, g, 0);
    const float *V = v + row_at(&L->v, b, g, 0);
    int64_t ldq = L->q.time, ldk = L->k.time, ldv = L->v.time, ldo = L->out.time;
    float *O = out + row_at(&L->out, b, h, q0), m[BQ], l[BQ];
    int64_t n_keys = causal ? q1 : T;
    for (int64_t i = 0; i < nq; i++)
        m[i] = -INFINITY, l[i] = 0.0f;
    for (int64_t c0 = 0; c0 < n_keys; c0 += KC) {
        int64_t nc = min64(KC, n_keys - c0);
        bt_cpu_sgemm(false, true, nq, nc, hs, scale, Q, ldq, K + c0 * ldk, ldk, 0.0f, S, nc);
        forward_tile_softmax(S, nq, nc, causal, q0, c0, m, l, O, ldo, hs);
        bt_cpu_sgemm(false, false, nq, hs, nc, 1.0f, S, nc, V + c0 * ldv, ldv, c0 > 0 ? 1.0f : 0.0f,
                     O, ldo);
    }
    int64_t lse0 = (b * NH + h) * T + q0;
    for (int64_t i = 0; i < nq; i++) {
        float inv_l = 1.0f / l[i];
        for (int64_t d = 0; d < hs; d++)
            O[i * ldo + d] *= inv_l;
        lse[lse0 + i] = m[i] + logf(l[i]);
    }
}

/* Everything the backward tiles read and write; shapes as in bt_cpu_attention_backward. */
struct attention_grads {
    float *dq, *dk, *dv;
    const float *dout, *q, *k, *v, *out, *lse;
    int64_t NH, NKV, T, hs;
    float scale;
    bool causal;
    const struct bt_attn_layouts *L;
};

/* ---- short sequences: a head's whole T x T at once, no sgemm ----
 * At T <= TD OpenBLAS's per-call work (packing, dispatch) dominates the tiles' small GEMMs (a
 * 64 x 64 x 32 product is 0.26 MFLOP), so each head is done directly: K and V transposed into
 * scratch, and every product as rows of RB outputs times a row-major operand, 16 floats at a
 * time, in registers. Causal blocks skip the keys no row of theirs sees. Needs hs a multiple of
 * DV; other shapes take the tiles. */

#define TD 64  /* longest sequence done directly */
#define HD 128 /* widest head done directly */
#define RB 4   /* output rows per register block */
#define DV 16  /* columns per register block: two 8-float vectors */

static inline int64_t round_up(int64_t n, int64_t m) {
    return (n + m - 1) / m * m;
}

static bool direct_shape(int64_t T, int64_t hs) {
    return T <= TD && hs <= HD && hs % DV == 0;
}

/* Eight floats, the native AVX2 width, whatever BT_VL is: the register blocks below are
 * written for it (vectors wider than the registers are kept on the stack by gcc, see
 * core/cpu/vecmath.h) */
typedef float v8f __attribute__((vector_size(8 * sizeof(float))));

BT_VEC_INLINE v8f v8f_load(const float *p) {
    v8f v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* C rows 0..nr-1 (nr <= RB), columns 0..N-1 (N a multiple of DV):
 *   C[r, :] = alpha * sum_{k0 <= k < k1} A[r * ars + k * aks] * B[k * ldb + :]  (+ C[r, :])
 * Rows past nr compute row nr - 1 again and are not stored. */
BT_VEC_INLINE void block_rows(int64_t nr, int64_t N, int64_t k0, int64_t k1, float alpha,
                              const float *A, int64_t ars, int64_t aks, const float *B, int64_t ldb,
                              float *C, int64_t ldc, bool accumulate) {
    const float *a0 = A, *a1 = A + (nr > 1 ? 1 : 0) * ars, *a2 = A + (nr > 2 ? 2 : nr - 1) * ars;
    const float *a3 = A + (nr > 3 ? 3 : nr - 1) * ars;
    for (int64_t c = 0; c < N; c += DV) {
        v8f c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0}, c30 = {0}, c31 = {0};
        for (int64_t k = k0; k < k1; k++) {
            const float *b = B + k * ldb + c;
            v8f b0 = v8f_load(b), b1 = v8f_load(b + 8);
            float x0 = a0[k * aks], x1 = a1[k * aks], x2 = a2[k * aks], x3 = a3[k * aks];
            c00 += x0 * b0, c01 += x0 * b1;
            c10 += x1 * b0, c11 += x1 * b1;
            c20 += x2 * b0, c21 += x2 * b1;
            c30 += x3 * b0, c31 += x3 * b1;
        }
        v8f acc[RB][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}};
        for (int64_t r = 0; r < nr; r++)
            for (int half = 0; half < 2; half++) {
                float *out = C + r * ldc + c + 8 * half;
                v8f v = alpha * acc[r][half];
                if (accumulate) v += v8f_load(out);
                memcpy(out, &v, sizeof v);
            }
    }
}

typedef int32_t v8i __attribute__((vector_size(8 * sizeof(int32_t))));

/* out[c] = row c of the transpose of the 8 x 8 block in r[0..7] (AVX's unpack, shufps and
 * perm2f128 sequence, which gcc finds for these shuffles) */
BT_VEC_INLINE void transpose8(v8f r[8]) {
    const v8i lo = {0, 8, 1, 9, 4, 12, 5, 13}, hi = {2, 10, 3, 11, 6, 14, 7, 15};
    const v8i even = {0, 1, 8, 9, 4, 5, 12, 13}, odd = {2, 3, 10, 11, 6, 7, 14, 15};
    const v8i low = {0, 1, 2, 3, 8, 9, 10, 11}, high = {4, 5, 6, 7, 12, 13, 14, 15};
    v8f t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = __builtin_shuffle(r[2 * i], r[2 * i + 1], lo);
        t[2 * i + 1] = __builtin_shuffle(r[2 * i], r[2 * i + 1], hi);
    }
    for (int i = 0; i < 2; i++) {
        u[4 * i] = __builtin_shuffle(t[4 * i], t[4 * i + 2], even);
        u[4 * i + 1] = __builtin_shuffle(t[4 * i], t[4 * i + 2], odd);
        u[4 * i + 2] = __builtin_shuffle(t[4 * i + 1], t[4 * i + 3], even);
        u[4 * i + 3] = __builtin_shuffle(t[4 * i + 1], t[4 * i + 3], odd);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = __builtin_shuffle(u[i], u[i + 4], low);
        r[i + 4] = __builtin_shuffle(u[i], u[i + 4], high);
    }
}

/* Xt (hs x Tp) = X^T for the T rows of X (row stride ldx), zero in columns T..Tp-1; hs is a
 * multiple of 8. Blocks of 8 x 8 in registers (a scalar transpose took a fifth of the kernels'
 * time: one strided store per element). */
BT_VEC_INLINE void transpose_rows(float *Xt, const float *X, int64_t ldx, int64_t T, int64_t Tp,
                                  int64_t hs) {
    int64_t j = 0;
    for (; j + 8 <= T; j += 8)
        for (int64_t d = 0; d < hs; d += 8) {
            v8f r[8];
            for (int i = 0; i < 8; i++)
                r[i] = v8f_load(X + (j + i) * ldx + d);
            transpose8(r);
            for (int i = 0; i < 8; i++)
                memcpy(Xt + (d + i) * Tp + j, &r[i], sizeof r[i]);
        }
    for (; j < T; j++)
        for (int64_t d = 0; d < hs; d++)
            Xt[d * Tp + j] = X[j * ldx + d];
    for (int64_t d = 0; d < hs; d++)
        for (j = T; j < Tp; j++)
            Xt[d * Tp + j] = 0.0f;
}

/* a . b for n a multiple of 16 */
BT_VEC_INLINE float dot16(const float *a, const float *b, int64_t n) {
    v8f s0 = {0}, s1 = {0};
    for (int64_t i = 0; i < n; i += 16) {
        s0 += v8f_load(a + i) * v8f_load(b + i);
        s1 += v8f_load(a + i + 8) * v8f_load(b + i + 8);
    }
    s0 += s1;
    float acc = 0.0f;
    for (int i = 0; i < 8; i++)
        acc += s0[i];
    return acc;
}

/* S (T x Tp) = scale * Q Xt for T query rows of Q (stride ldq) against the transposed keys Xt;
 * when causal each block of rows stops at the first DV-column boundary past its last row */
BT_VEC_INLINE void scores(float *S, const float *Q, int64_t ldq, const float *Xt, int64_t T,
                          int64_t Tp, int64_t hs, float scale, bool causal) {
    for (int64_t i0 = 0; i0 < T; i0 += RB) {
        int64_t nr = min64(RB, T - i0), ncol = causal ? round_up(i0 + nr, DV) : Tp;
        block_rows(nr, ncol, 0, hs, scale, Q + i0 * ldq, ldq, 1, Xt, Tp, S + i0 * Tp, Tp, false);
    }
}

/* Lane numbers 0..BT_VL-1, to mask a row's last vector */
BT_VEC_INLINE bt_vf lane_numbers(void) {
    bt_vf v;
    for (int i = 0; i < BT_VL; i++)
        v[i] = (float)i;
    return v;
}

/* Row i of a direct tile: s[j] = exp(s[j] - shift) for j < nv, 0 for nv <= j < Tp; returns the
 * sum. Whole vectors throughout (the last one masked), so s must hold finite or any values up to
 * the next multiple of BT_VL past nv. With max_shift, shift is the row's maximum (softmax). */
BT_VEC_INLINE float masked_row_exp(float *s, int64_t nv, int64_t Tp, float shift, bool max_shift,
                                   float *row_max_out) {
    bt_vf lanes = lane_numbers(), limit = bt_vf_splat((float)nv);
    int64_t nvec = round_up(nv, BT_VL);
    if (max_shift) {
        bt_vf acc = bt_vf_splat(-INFINITY);
        for (int64_t j = 0; j < nvec; j += BT_VL) {
            bt_vi in = bt_vf_lt(lanes + (float)j, limit);
            acc = bt_vf_max(acc, bt_vf_select(in, bt_vf_load(s + j), bt_vf_splat(-INFINITY)));
        }
        shift = bt_vf_hmax(acc);
        *row_max_out = shift;
    }
    bt_vf sum = bt_vf_splat(0.0f);
    for (int64_t j = 0; j < nvec; j += BT_VL) {
        bt_vi in = bt_vf_lt(lanes + (float)j, limit);
        bt_vf e = bt_vf_select(in, bt_vf_exp(bt_vf_load(s + j) - shift), bt_vf_splat(0.0f));
        bt_vf_store(s + j, e);
        sum += e;
    }
    for (int64_t j = nvec; j < Tp; j++)
        s[j] = 0.0f;
    return bt_vf_sum(sum);
}

/* Per-thread scratch of the direct kernels */
struct direct_scratch {
    alignas(64) float S[TD * TD];
    alignas(64) float dP[TD * TD];
    alignas(64) float Kt[HD * TD];
    alignas(64) float Vt[HD * TD];
};

/* Forward of every query row of head h in batch b */
BT_CPU_DISPATCH static void direct_forward_head(float *out, float *lse, const float *q,
                                                const float *k, const float *v, int64_t b,
                                                int64_t h, int64_t NH, int64_t NKV, int64_t T,
                                                int64_t hs, float scale, bool causal,
                                                const struct bt_attn_layouts *L,
                                                struct direct_scratch *x) {
    int64_t g = h / (NH / NKV), Tp = round_up(T, DV);
    const float *Q = q + row_at(&L->q, b, h, 0), *K = k + row_at(&L->k, b, g, 0);
    const float *V = v + row_at(&L->v, b, g, 0);
    int64_t ldq = L->q.time, ldv = L->v.time, ldo = L->out.time;
    float *O = out + row_at(&L->out, b, h, 0), *S = x->S, *Lse = lse + (b * NH + h) * T;
    transpose_rows(x->Kt, K, L->k.time, T, Tp, hs);
    scores(S, Q, ldq, x->Kt, T, Tp, hs, scale, causal);
    for (int64_t i = 0; i < T; i++) { /* P = softmax(S), 0 where masked, up to column Tp */
        float *s = S + i * Tp;
        int64_t nv = causal ? i + 1 : T;
        float mx, sum = masked_row_exp(s, nv, Tp, 0.0f, true, &mx), inv = 1.0f / sum;
        for (int64_t j = 0; j < round_up(nv, BT_VL); j += BT_VL)
            bt_vf_store(s + j, bt_vf_load(s + j) * inv);
        Lse[i] = mx + logf(sum);
    }
    for (int64_t i0 = 0; i0 < T; i0 += RB) { /* O = P V */
        int64_t nr = min64(RB, T - i0), keys = causal ? i0 + nr : T;
        block_rows(nr, hs, 0, keys, 1.0f, S + i0 * Tp, Tp, 1, V, ldv, O + i0 * ldo, ldo, false);
    }
}

/* Backward of kv head g in batch b with every query of the heads that read it: overwrites the
 * group's dk, dv rows and those heads' dq rows (FlashAttention-2's math on one tile, as in
 * bt_cpu_attention_backward) */
BT_CPU_DISPATCH static void direct_backward_group(const struct attention_grads *a, int64_t b,
                                                  int64_t g, struct direct_scratch *x) {
    const struct bt_attn_layouts *L = a->L;
    int64_t NH = a->NH, T = a->T, hs = a->hs, group = NH / a->NKV, Tp = round_up(T, DV);
    const float *K = a->k + row_at(&L->k, b, g, 0), *V = a->v + row_at(&L->v, b, g, 0);
    float *dK = a->dk + row_at(&L->dk, b, g, 0), *dV = a->dv + row_at(&L->dv, b, g, 0);
    int64_t ldk = L->k.time, lddk = L->dk.time, lddv = L->dv.time;
    float *S = x->S, *dP = x->dP;
    bool causal = a->causal;
    transpose_rows(x->Kt, K, ldk, T, Tp, hs);
    transpose_rows(x->Vt, V, L->v.time, T, Tp, hs);
    for (int64_t h = g * group; h < (g + 1) * group; h++) {
        const float *Q = a->q + row_at(&L->q, b, h, 0), *dO = a->dout + row_at(&L->dout, b, h, 0);
        const float *O = a->out + row_at(&L->out, b, h, 0), *Lse = a->lse + (b * NH + h) * T;
        float *dQ = a->dq + row_at(&L->dq, b, h, 0);
        int64_t ldq = L->q.time, lddo = L->dout.time, ldo = L->out.time, lddq = L->dq.time;
        scores(S, Q, ldq, x->Kt, T, Tp, hs, a->scale, causal);
        scores(dP, dO, lddo, x->Vt, T, Tp, hs, 1.0f, causal);
        for (int64_t i = 0; i < T; i++) { /* P = exp(S - lse), dS = P * (dP - D), 0 if masked */
            float *s = S + i * Tp, *dp = dP + i * Tp, d_i = dot16(dO + i * lddo, O + i * ldo, hs);
            int64_t nv = causal ? i + 1 : T, j = 0;
            masked_row_exp(s, nv, Tp, Lse[i], false, NULL);
            for (; j < round_up(nv, BT_VL); j += BT_VL) /* P is 0 past nv, and so is dS */
                bt_vf_store(dp + j, bt_vf_load(s + j) * (bt_vf_load(dp + j) - d_i));
            for (; j < Tp; j++) /* columns no score of this row's block was computed for */
                dp[j] = 0.0f;
        }
        for (int64_t i0 = 0; i0 < T; i0 += RB) { /* dQ = dS K * scale */
            int64_t nr = min64(RB, T - i0), keys = causal ? i0 + nr : T;
            block_rows(nr, hs, 0, keys, a->scale, dP + i0 * Tp, Tp, 1, K, ldk, dQ + i0 * lddq, lddq,
                       false);
        }
        bool more = h > g * group;               /* later heads of the group add to dk, dv */
        for (int64_t j0 = 0; j0 < T; j0 += RB) { /* dK = dS^T Q * scale, dV = P^T dO */
            int64_t nr = min64(RB, T - j0), first = causal ? j0 : 0;
            block_rows(nr, hs, first, T, a->scale, dP + j0, 1, Tp, Q, ldq, dK + j0 * lddk, lddk,
                       more);
            block_rows(nr, hs, first, T, 1.0f, S + j0, 1, Tp, dO, lddo, dV + j0 * lddv, lddv, more);
        }
    }
}

void bt_cpu_attention(float *out, float *lse, const float *q, const float *k, const float *v,
                      int64_t B, int64_t NH, int64_t NKV, int64_t T, int64_t hs, float scale,
                      bool causal, const struct bt_attn_layouts *layouts) {
    /* row (b, h, t) of q and out, (b, g, t) of k and v at their layouts; lse (B, NH, T):
     *   out_t = sum_s softmax_s(q_t . k_s * scale) v_s,  lse_t = log sum_s exp(q_t . k_s * scale)
     * over s <= t when causal, all s otherwise; query head h reads kv head h / (NH / NKV).
     * Per tile S = Q K^T * scale; online softmax across key chunks (Milakov & Gimelshein 2018);
     * O = P V. Tasks go longest first (late causal query blocks see the most keys). */
    if (NKV <= 0 || T <= 0) return;
    int64_t n_qblocks = (T + BQ - 1) / BQ, heads = B * NH, tasks = heads * n_qblocks;
    bool parallel = heads * T * T * hs >= 32768;
    if (direct_shape(T, hs)) {
#pragma omp parallel if (parallel)
        {
            struct direct_scratch x;
#pragma omp for schedule(dynamic, 1)
            for (int64_t bh = 0; bh < heads; bh++)
                direct_forward_head(out, lse, q, k, v, bh / NH, bh % NH, NH, NKV, T, hs, scale,
                                    causal, layouts, &x);
        }
        return;
    }
#pragma omp parallel if (parallel)
    {
        alignas(64) float S[BQ * KC];
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < tasks; task++) {
            int64_t qb = n_qblocks - 1 - task / heads, bh = task % heads;
            forward_block(out, lse, q, k, v, bh / NH, bh % NH, qb * BQ, min64(qb * BQ + BQ, T), NH,
                          NKV, T, hs, scale, causal, layouts, S);
        }
    }
}

/* Per-thread scratch of the backward: scores / probabilities, dP / dS, and D of a query tile */
struct backward_scratch {
    alignas(64) float S[BQ * KC];
    alignas(64) float dP[BQ * KC];
    float D[BQ];
};

/* D_t = dout_t . out_t for the query rows q0..q1-1 of head h in batch b */
static void backward_rowsums(const struct attention_grads *a, int64_t b, int64_t h, int64_t q0,
                             int64_t q1, float *D) {
    const float *dO = a->dout + row_at(&a->L->dout, b, h, q0);
    const float *O = a->out + row_at(&a->L->out, b, h, q0);
    for (int64_t i = 0; i < q1 - q0; i++)
        D[i] = dot(dO + i * a->L->dout.time, O + i * a->L->out.time, a->hs);
}

/* Queries q0..q1-1 (at most BQ) of head h in batch b against keys c0..c1-1 (at most KC) of its kv
 * head, with x->D holding the queries' D. dq rows = dS K * scale + dq_beta * dq rows when with_dq;
 * dk rows += dS^T Q * scale and dv rows += P^T dout when with_dkdv. */
static void backward_tile(const struct attention_grads *a, int64_t b, int64_t h, int64_t q0,
                          int64_t q1, int64_t c0, int64_t c1, struct backward_scratch *x,
                          bool with_dq, float dq_beta, bool with_dkdv) {
    const struct bt_attn_layouts *L = a->L;
    int64_t NH = a->NH, T = a->T, hs = a->hs, nq = q1 - q0, nc = c1 - c0;
    int64_t g = h / (NH / a->NKV);
    const float *Q = a->q + row_at(&L->q, b, h, q0), *dO = a->dout + row_at(&L->dout, b, h, q0);
    const float *Lse = a->lse + (b * NH + h) * T + q0;
    const float *K = a->k + row_at(&L->k, b, g, c0), *V = a->v + row_at(&L->v, b, g, c0);
    int64_t ldq = L->q.time, lddo = L->dout.time, ldk = L->k.time, ldv = L->v.time;
    float *S = x->S, *dP = x->dP;
    bt_cpu_sgemm(false, true, nq, nc, hs, a->scale, Q, ldq, K, ldk, 0.0f, S, nc);
    bt_cpu_sgemm(false, true, nq, nc, hs, 1.0f, dO, lddo, V, ldv, 0.0f, dP, nc);
    backward_tile_softmax(S, dP, nq, nc, a->causal, q0, c0, Lse, x->D);
    if (with_dq)
        bt_cpu_sgemm(false, false, nq, hs, nc, a->scale, dP, nc, K, ldk, dq_beta,
                     a->dq + row_at(&L->dq, b, h, q0), L->dq.time);
    if (with_dkdv) {
        bt_cpu_sgemm(true, false, nc, hs, nq, a->scale, dP, nc, Q, ldq, 1.0f,
                     a->dk + row_at(&L->dk, b, g, c0), L->dk.time);
        bt_cpu_sgemm(true, false, nc, hs, nq, 1.0f, S, nc, dO, lddo, 1.0f,
                     a->dv + row_at(&L->dv, b, g, c0), L->dv.time);
    }
}

/* Zeros rows t0..t1-1 of kv head g in batch b of dk and dv */
static void zero_kv_rows(const struct attention_grads *a, int64_t b, int64_t g, int64_t t0,
                         int64_t t1) {
    for (int64_t t = t0; t < t1; t++) {
        memset(a->dk + row_at(&a->L->dk, b, g, t), 0, (size_t)a->hs * sizeof(float));
        memset(a->dv + row_at(&a->L->dv, b, g, t), 0, (size_t)a->hs * sizeof(float));
    }
}

/* One-pass task: kv head g of batch b with every query of the heads that read it; overwrites the
 * group's dk, dv and the dq of those heads. */
static void backward_group(const struct attention_grads *a, int64_t b, int64_t g,
                           struct backward_scratch *x) {
    int64_t T = a->T, group = a->NH / a->NKV;
    zero_kv_rows(a, b, g, 0, T);
    for (int64_t h = g * group; h < (g + 1) * group; h++)
        for (int64_t q0 = 0; q0 < T; q0 += BQ) {
            int64_t q1 = min64(q0 + BQ, T), n_keys = a->causal ? q1 : T;
            backward_rowsums(a, b, h, q0, q1, x->D);
            for (int64_t c0 = 0; c0 < n_keys; c0 += KC)
                backward_tile(a, b, h, q0, q1, c0, min64(c0 + KC, n_keys), x, true,
                              c0 > 0 ? 1.0f : 0.0f, true);
        }
}

/* Two-pass, first pass: keys s0..s1-1 (at most KC) of kv head g in batch b against every query
 * that sees them; overwrites those dk, dv rows. */
static void backward_key_block(const struct attention_grads *a, int64_t b, int64_t g, int64_t s0,
                               int64_t s1, struct backward_scratch *x) {
    int64_t T = a->T, group = a->NH / a->NKV;
    zero_kv_rows(a, b, g, s0, s1);
    for (int64_t h = g * group; h < (g + 1) * group; h++)
        for (int64_t q0 = a->causal ? s0 : 0; q0 < T; q0 += BQ) {
            int64_t q1 = min64(q0 + BQ, T);
            backward_rowsums(a, b, h, q0, q1, x->D);
            backward_tile(a, b, h, q0, q1, s0, s1, x, false, 0.0f, true);
        }
}

/* Two-pass, second pass: dq of query rows q0..q1-1 of head h in batch b (overwritten) */
static void backward_query_block(const struct attention_grads *a, int64_t b, int64_t h, int64_t q0,
                                 int64_t q1, struct backward_scratch *x) {
    int64_t n_keys = a->causal ? q1 : a->T;
    backward_rowsums(a, b, h, q0, q1, x->D);
    for (int64_t c0 = 0; c0 < n_keys; c0 += KC)
        backward_tile(a, b, h, q0, q1, c0, min64(c0 + KC, n_keys), x, true, c0 > 0 ? 1.0f : 0.0f,
                      false);
}

void bt_cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                               const float *k, const float *v, const float *out, const float *lse,
                               int64_t B, int64_t NH, int64_t NKV, int64_t T, int64_t hs,
                               float scale, bool causal, const struct bt_attn_layouts *layouts) {
    /* Shapes as in the forward; dq, dout rows like q's, dk, dv like k's, each at its own layout;
     * dq, dk, dv overwritten.
     * FlashAttention-2 (Dao 2023, Alg. 2) per tile of queries i and keys j, P recomputed from lse:
     *   S = Q K^T * scale,  P = exp(S - lse_i) (0 where masked),  D_i = dout_i . out_i
     *   dP = dO V^T,  dS = P * (dP - D_i)
     *   dQ += dS K * scale,  dK += dS^T Q * scale,  dV += P^T dO
     * Every output row has one writer. When the (b, kv head) groups keep the threads busy, one
     * pass: a group's task owns its dk, dv rows and the dq rows of the query heads that read it.
     * Else two passes with more tasks: dk, dv by (b, kv head, key block), then dq by (b, head,
     * query block); this scores every pair twice. */
    if (NKV <= 0 || T <= 0) return;
    struct attention_grads a = {dq,  dk, dv,  dout, q,  k,     v,      out,
                                lse, NH, NKV, T,    hs, scale, causal, layouts};
    int64_t groups = B * NKV, heads = B * NH;
    int64_t n_kblocks = (T + BQ - 1) / BQ, n_qblocks = n_kblocks;
    bool parallel = heads * T * T * hs >= 32768;
    int64_t threads = parallel ? omp_get_max_threads() : 1;
    /* the one pass's share of busy thread time, its groups all being the same size */
    int64_t rounds = (groups + threads - 1) / threads;
    bool one_pass = 4 * groups >= 3 * rounds * threads;
    if (one_pass && direct_shape(T, hs)) {
#pragma omp parallel if (parallel)
        {
            struct direct_scratch x;
#pragma omp for schedule(dynamic, 1)
            for (int64_t bg = 0; bg < groups; bg++)
                direct_backward_group(&a, bg / NKV, bg % NKV, &x);
        }
    } else if (one_pass) {
#pragma omp parallel if (parallel)
        {
            struct backward_scratch x;
#pragma omp for schedule(dynamic, 1)
            for (int64_t bg = 0; bg < groups; bg++)
                backward_group(&a, bg / NKV, bg % NKV, &x);
        }
    } else {
#pragma omp parallel
        {
            struct backward_scratch x;
            /* early key blocks first: causal, they see the most queries */
#pragma omp for schedule(dynamic, 1)
            for (int64_t task = 0; task < groups * n_kblocks; task++) {
                int64_t kb = task / groups, bg = task % groups;
                backward_key_block(&a, bg / NKV, bg % NKV, kb * BQ, min64(kb * BQ + BQ, T), &x);
            }
            /* late query blocks first: causal, they see the most keys */
#pragma omp for schedule(dynamic, 1)
            for (int64_t task = 0; task < heads * n_qblocks; task++) {
                int64_t qb = n_qblocks - 1 - task / heads, bh = task % heads;
                backward_query_block(&a, bh / NH, bh % NH, qb * BQ, min64(qb * BQ + BQ, T), &x);
            }
        }
    }
}
