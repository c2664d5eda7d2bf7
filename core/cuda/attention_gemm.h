/* Attention as batched GEMMs, the order of its steps written once for the device and the host.
 *
 * The scores of a chunk of whole batch entries are one batched GEMM, S = scale Q Kᵀ, each of
 * them (n heads, T, T); a row kernel turns S into probabilities in place and saves each row's
 * log-sum-exp; a second GEMM gives O = P V. So the two products run on cuBLASLt (tensor cores
 * under train.dtype: bfloat16, which rounds the operands, P included, to bf16), where the
 * attention kernels of attention.cu and attention_tiled.cu run float32 on CUDA cores. The price:
 * the whole T x T square is computed (the causal half above the diagonal is masked to 0, not
 * skipped), and the chunk's scores are held: one (n, T, T) buffer forward, two backward, chunks
 * sized so they stay under a cap. The backward recomputes P from the saved log-sum-exp, as the
 * other kernels do (under bf16, bt_cuda_gemm's scratch keeps the bf16 copy of the last P or dS
 * it rounded: attention_gemm.cu's cap counts it). Backward, with D = rowsum(dout ∘ out):
 *   dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P ∘ (dP - D),  dQ = scale dS K,  dK = scale dSᵀ Q,
 * and a key or value head's gradient is the sum over the query heads that read it (GQA).
 *
 * Ops supplies the steps: device kernels and cuBLASLt in attention_gemm.cu, plain loops and the
 * CPU's GEMM in tests/cuda/test_cuda_math.cu, which runs this same code on the host against the
 * CPU backend's attention. Its members:
 *   float *alloc(int64_t floats)             NULL when out of memory (the error set)
 *   void release(float *)
 *   bool ok()                                 no step has failed
 *   void gemm(...)                            struct bt_backend's gemm
 *   void pack(float *dst, const float *src, struct bt_attn_layout, int64_t b0, int64_t nb,
 *             int64_t NH, int64_t group, int64_t T, int64_t hs)
 *   void unpack(float *dst, struct bt_attn_layout, const float *packed, int64_t b0, int64_t nb,
 *               int64_t NH, int64_t T, int64_t hs)
 *   void unpack_kv(float *dst, struct bt_attn_layout, const float *packed, int64_t b0,
 *                  int64_t nb, int64_t NH, int64_t NKV, int64_t T, int64_t hs)
 *   void softmax(float *S, float *lse, int64_t rows, int64_t T, bool causal)   P in place
 *   void probs(float *S, const float *lse, int64_t rows, int64_t T, bool causal)
 *   void row_dots(float *D, const float *dout, const float *out, const struct bt_attn_layouts &,
 *                 int64_t B, int64_t NH, int64_t T, int64_t hs)                over all B·NH·T rows
 *   void dscores(float *dP, const float *P, const float *D, int64_t rows, int64_t T)   in place
 * (kernel_math.h's bt_km_attn_* functions hold the per-element math both sides share). */
#ifndef BRAID_CORE_CUDA_ATTENTION_GEMM_H
#define BRAID_CORE_CUDA_ATTENTION_GEMM_H

#include "core/cuda/kernel_math.h"

/* the most bytes of scores a chunk may hold on the device */
#define BT_ATTN_GEMM_CHUNK_BYTES ((int64_t)512 << 20)

/* batch entries per chunk: as many as keep `buffers` (n, T, T) float buffers under cap_bytes,
 * at least one */
static inline int64_t bt_attn_gemm_chunk(int64_t B, int64_t NH, int64_t T, int buffers,
                                         int64_t cap_bytes) {
    int64_t per_entry = NH * T * T * (int64_t)sizeof(float) * buffers;
    int64_t nb = per_entry > 0 ? cap_bytes / per_entry : B;
    return nb < 1 ? 1 : nb > B ? B : nb;
}

template <class Ops>
void bt_attn_gemm_forward(Ops &ops, float *out, float *lse, const float *q, const float *k,
                          const float *v, int64_t B, int64_t NH, int64_t NKV, int64_t T,
                          int64_t hs, float scale, bool causal, const struct bt_attn_layouts &L,
                          int64_t cap_bytes) {
    int64_t group = NH / NKV, nb = bt_attn_gemm_chunk(B, NH, T, 1, cap_bytes);
    int64_t n_max = nb * NH, Ths = T * hs, TT = T * T;
    float *qc = ops.alloc(n_max * Ths), *kc = qc ? ops.alloc(n_max * Ths) : NULL;
    float *vc = kc ? ops.alloc(n_max * Ths) : NULL, *oc = vc ? ops.alloc(n_max * Ths) : NULL;
    float *s = oc ? ops.alloc(n_max * TT) : NULL;
    for (int64_t b0 = 0; s && b0 < B && ops.ok(); b0 += nb) {
        int64_t nbc = B - b0 < nb ? B - b0 : nb, n = nbc * NH;
        ops.pack(qc, q, L.q, b0, nbc, NH, 1, T, hs);
        ops.pack(kc, k, L.k, b0, nbc, NH, group, T, hs);
        ops.pack(vc, v, L.v, b0, nbc, NH, group, T, hs);
        ops.gemm(false, true, n, T, T, hs, scale, qc, hs, Ths, kc, hs, Ths, 0.0f, s, TT);
        ops.softmax(s, lse + b0 * NH * T, n * T, T, causal);
        ops.gemm(false, false, n, T, hs, T, 1.0f, s, T, TT, vc, hs, Ths, 0.0f, oc, Ths);
        ops.unpack(out, L.out, oc, b0, nbc, NH, T, hs);
    }
    ops.release(s), ops.release(oc), ops.release(vc), ops.release(kc), ops.release(qc);
}

template <class Ops>
void bt_attn_gemm_backward(Ops &ops, float *dq, float *dk, float *dv, const float *dout,
                           const float *q, const float *k, const float *v, const float *out,
                           const float *lse, int64_t B, int64_t NH, int64_t NKV, int64_t T,
                           int64_t hs, float scale, bool causal, const struct bt_attn_layouts &L,
                           int64_t cap_bytes) {
    int64_t group = NH / NKV, nb = bt_attn_gemm_chunk(B, NH, T, 2, cap_bytes);
    int64_t n_max = nb * NH, Ths = T * hs, TT = T * T;
    enum { Q, K, V, DO, DQ, DK, DV, P, DP, D, N_BUF };
    float *buf[N_BUF] = {NULL};
    bool have = true;
    for (int i = 0; i < N_BUF && have; i++) {
        int64_t floats = i == D ? B * NH * T : i >= P ? n_max * TT : n_max * Ths;
        have = (buf[i] = ops.alloc(floats)) != NULL;
    }
    if (have) ops.row_dots(buf[D], dout, out, L, B, NH, T, hs);
    for (int64_t b0 = 0; have && b0 < B && ops.ok(); b0 += nb) {
        int64_t nbc = B - b0 < nb ? B - b0 : nb, n = nbc * NH, r0 = b0 * NH * T;
        float *qc = buf[Q], *kc = buf[K], *vc = buf[V], *doc = buf[DO], *p = buf[P], *dp = buf[DP];
        ops.pack(qc, q, L.q, b0, nbc, NH, 1, T, hs);
        ops.pack(kc, k, L.k, b0, nbc, NH, group, T, hs);
        ops.pack(vc, v, L.v, b0, nbc, NH, group, T, hs);
        ops.pack(doc, dout, L.dout, b0, nbc, NH, 1, T, hs);
        ops.gemm(false, true, n, T, T, hs, scale, qc, hs, Ths, kc, hs, Ths, 0.0f, p, TT);
        ops.probs(p, lse + r0, n * T, T, causal);
        ops.gemm(true, false, n, T, hs, T, 1.0f, p, T, TT, doc, hs, Ths, 0.0f, buf[DV], Ths);
        ops.gemm(false, true, n, T, T, hs, 1.0f, doc, hs, Ths, vc, hs, Ths, 0.0f, dp, TT);
        ops.dscores(dp, p, buf[D] + r0, n * T, T);
        ops.gemm(false, false, n, T, hs, T, scale, dp, T, TT, kc, hs, Ths, 0.0f, buf[DQ], Ths);
        ops.gemm(true, false, n, T, hs, T, scale, dp, T, TT, qc, hs, Ths, 0.0f, buf[DK], Ths);
        ops.unpack(dq, L.dq, buf[DQ], b0, nbc, NH, T, hs);
        ops.unpack_kv(dk, L.dk, buf[DK], b0, nbc, NH, NKV, T, hs);
        ops.unpack_kv(dv, L.dv, buf[DV], b0, nbc, NH, NKV, T, hs);
    }
    for (int i = N_BUF - 1; i >= 0; i--)
        ops.release(buf[i]);
}

#endif
