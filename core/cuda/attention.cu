/* CUDA attention, float32: one warp per row, an online softmax over the keys (FlashAttention's
 * recurrence, kernel_math.h's bt_km_online_softmax), so no T x T matrix is ever stored; the
 * log-sum-exp is saved for the backward, which recomputes the probabilities: one warp per query
 * row for dq (and D = rowsum(dout * out)), one warp per key row for dk and dv, each summing over
 * the rows in order (no atomics: deterministic). Head size up to 256 (8 floats per lane).
 * The default (BRAID_CUDA_ATTENTION=rows) until attention_tiled.cu's (tiled),
 * attention_gemm.cu's (gemm) or cuDNN's fused attention (cudnn, attention_cudnn.cu) have run on a
 * GPU (docs/cuda.md); cudnn falls back to these kernels where cuDNN does not take a call. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/cuda/kernels.cuh"

/* attention_tiled.cu */
bool bt_cuda_attention_tiled_takes(int64_t hs);
void bt_cuda_attention_tiled(float *out, float *lse, const float *q, const float *k,
                             const float *v, int64_t B, int64_t NH, int64_t NKV, int64_t T,
                             int64_t hs, float scale, bool causal,
                             const struct bt_attn_layouts *layouts);
void bt_cuda_attention_tiled_backward(float *dq, float *dk, float *dv, const float *dout,
                                      const float *q, const float *k, const float *v,
                                      const float *out, const float *lse, int64_t B, int64_t NH,
                                      int64_t NKV, int64_t T, int64_t hs, float scale, bool causal,
                                      const struct bt_attn_layouts *layouts);

/* attention_gemm.cu */
void bt_cuda_attention_gemm(float *out, float *lse, const float *q, const float *k,
                            const float *v, int64_t B, int64_t NH, int64_t NKV, int64_t T,
                            int64_t hs, float scale, bool causal,
                            const struct bt_attn_layouts *layouts);
void bt_cuda_attention_gemm_backward(float *dq, float *dk, float *dv, const float *dout,
                                     const float *q, const float *k, const float *v,
                                     const float *out, const float *lse, int64_t B, int64_t NH,
                                     int64_t NKV, int64_t T, int64_t hs, float scale, bool causal,
                                     const struct bt_attn_layouts *layouts);

/* attention_cudnn.cu: false where cuDNN does not take the call (then these kernels run it) */
extern "C" bool bt_cuda_attention_cudnn(float *out, float *lse, const float *q, const float *k,
                                        const float *v, int64_t B, int64_t NH, int64_t NKV,
                                        int64_t T, int64_t hs, float scale, bool causal,
                                        const struct bt_attn_layouts *layouts);
extern "C" bool bt_cuda_attention_cudnn_backward(float *dq, float *dk, float *dv,
                                                 const float *dout, const float *q,
                                                 const float *k, const float *v, const float *out,
                                                 const float *lse, int64_t B, int64_t NH,
                                                 int64_t NKV, int64_t T, int64_t hs, float scale,
                                                 bool causal, const struct bt_attn_layouts *layouts);

/* -1 until read or set: what BRAID_CUDA_ATTENTION says (rows when unset or unknown), and what
 * bt_cuda_set_attention_kernel chose over it */
static int from_env = -1, chosen = -1;

bool bt_cuda_attention_kernel_from_env(char *why, size_t size) {
    const char *v = getenv("BRAID_CUDA_ATTENTION");
    bool known = true;
    if (!v || !*v || strcmp(v, "rows") == 0)
        from_env = BT_CUDA_ATTENTION_ROWS;
    else if (strcmp(v, "tiled") == 0)
        from_env = BT_CUDA_ATTENTION_TILED;
    else if (strcmp(v, "gemm") == 0)
        from_env = BT_CUDA_ATTENTION_GEMM;
    else if (strcmp(v, "cudnn") == 0)
        from_env = BT_CUDA_ATTENTION_CUDNN;
    else {
        from_env = BT_CUDA_ATTENTION_ROWS;
        known = false;
        snprintf(why, size, "BRAID_CUDA_ATTENTION=%s: expected rows, tiled, gemm or cudnn", v);
    }
    /* cuDNN is loaded when the device starts, so that a missing one is said before any work */
    char load_why[400];
    if (known && from_env == BT_CUDA_ATTENTION_CUDNN && !bt_cudnn_load(load_why, sizeof load_why)) {
        snprintf(why, size, "BRAID_CUDA_ATTENTION=cudnn: %s", load_why);
        known = false;
    }
    return known;
}

static enum bt_cuda_attention_kernel current(void) {
    char why[160];
    if (chosen >= 0) return (enum bt_cuda_attention_kernel)chosen;
    if (from_env < 0) bt_cuda_attention_kernel_from_env(why, sizeof why);
    return (enum bt_cuda_attention_kernel)from_env;
}

/* the kernels for head size hs (the device checked BRAID_CUDA_ATTENTION when it started) */
static enum bt_cuda_attention_kernel kernel_for(int64_t hs) {
    enum bt_cuda_attention_kernel k = current();
    return k == BT_CUDA_ATTENTION_TILED && !bt_cuda_attention_tiled_takes(hs)
               ? BT_CUDA_ATTENTION_ROWS
               : k;
}

extern "C" enum bt_cuda_attention_kernel
bt_cuda_set_attention_kernel(enum bt_cuda_attention_kernel kind) {
    enum bt_cuda_attention_kernel was = current();
    chosen = kind;
    return was;
}

#define MAX_PER_LANE 8 /* hs <= 256 */
#define WARPS 4        /* rows per block */

__device__ static inline const float *row_at(const float *base, struct bt_attn_layout l,
                                             int64_t b, int64_t h, int64_t t) {
    return base + b * l.batch + h * l.head + t * l.time;
}

__device__ static inline float warp_dot(const float *a_reg, const float *b, int hs, int lane) {
    float acc = 0.0f;
#pragma unroll
    for (int r = 0; r < MAX_PER_LANE; r++) {
        int c = lane + 32 * r;
        if (c < hs) acc += a_reg[r] * b[c];
    }
    return bt_warp_sum(acc);
}

__global__ void attention_forward_kernel(float *out, float *lse, const float *q, const float *k,
                                         const float *v, int64_t B, int64_t NH, int64_t NKV,
                                         int64_t T, int hs, float scale, bool causal,
                                         struct bt_attn_layouts L) {
    int lane = threadIdx.x & 31;
    int64_t row = (int64_t)blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (row >= B * NH * T) return;
    int64_t t = row % T, h = (row / T) % NH, b = row / (T * NH), kvh = h / (NH / NKV);
    const float *qr = row_at(q, L.q, b, h, t);
    float qreg[MAX_PER_LANE], acc[MAX_PER_LANE];
#pragma unroll
    for (int r = 0; r < MAX_PER_LANE; r++) {
        int c = lane + 32 * r;
        qreg[r] = c < hs ? qr[c] : 0.0f;
        acc[r] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    int64_t last = causal ? t : T - 1;
    for (int64_t j = 0; j <= last; j++) {
        float s = warp_dot(qreg, row_at(k, L.k, b, kvh, j), hs, lane) * scale;
        float p, corr = bt_km_online_softmax(&m, &l, s, &p);
        const float *vr = row_at(v, L.v, b, kvh, j);
#pragma unroll
        for (int r = 0; r < MAX_PER_LANE; r++) {
            int c = lane + 32 * r;
            if (c < hs) acc[r] = acc[r] * corr + p * vr[c];
        }
    }
    float *orow = (float *)row_at(out, L.out, b, h, t);
#pragma unroll
    for (int r = 0; r < MAX_PER_LANE; r++) {
        int c = lane + 32 * r;
        if (c < hs) orow[c] = acc[r] / l;
    }
    if (lane == 0) lse[row] = m + logf(l);
}

void bt_cuda_attention(float *out, float *lse, const float *q, const float *k, const float *v,
                       int64_t B, int64_t NH, int64_t NKV, int64_t T, int64_t hs, float scale,
                       bool causal, const struct bt_attn_layouts *layouts) {
    int64_t rows = B * NH * T;
    if (rows == 0) return;
    enum bt_cuda_attention_kernel kind = kernel_for(hs);
    if (kind == BT_CUDA_ATTENTION_TILED) {
        bt_cuda_attention_tiled(out, lse, q, k, v, B, NH, NKV, T, hs, scale, causal, layouts);
        return;
    }
    if (kind == BT_CUDA_ATTENTION_GEMM) {
        bt_cuda_attention_gemm(out, lse, q, k, v, B, NH, NKV, T, hs, scale, causal, layouts);
        return;
    }
    if (kind == BT_CUDA_ATTENTION_CUDNN &&
        bt_cuda_attention_cudnn(out, lse, q, k, v, B, NH, NKV, T, hs, scale, causal, layouts))
        return;
    if (hs > 32 * MAX_PER_LANE) {
        bt_cuda_fail("attention: head size %lld is above the CUDA kernel's %d", (long long)hs,
                     32 * MAX_PER_LANE);
        return;
    }
    attention_forward_kernel<<<(unsigned)((rows + WARPS - 1) / WARPS), 32 * WARPS, 0,
                               bt_cuda_stream()>>>(out, lse, q, k, v, B, NH, NKV, T, (int)hs,
                                                   scale, causal, *layouts);
    BT_CUDA_LAUNCHED("attention_forward_kernel");
}

/* dq of query row (b, h, i), and D[row] = dout . out */
__global__ void attention_dq_kernel(float *dq, float *D, const float *dout, const float *q,
                                    const float *k, const float *v, const float *out,
                                    const float *lse, int64_t B, int64_t NH, int64_t NKV,
                                    int64_t T, int hs, float scale, bool causal,
                                    struct bt_attn_layouts L) {
    int lane = threadIdx.x & 31;
    int64_t row = (int64_t)blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (row >= B * NH * T) return;
    int64_t i = row % T, h = (row / T) % NH, b = row / (T * NH), kvh = h / (NH / NKV);
    const float *qr = row_at(q, L.q, b, h, i), *gr = row_at(dout, L.dout, b, h, i);
    const float *orow = row_at(out, L.out, b, h, i);
    float qreg[MAX_PER_LANE], greg[MAX_PER_LANE], acc[MAX_PER_LANE], dsum = 0.0f;
#pragma unroll
    for (int r = 0; r < MAX_PER_LANE; r++) {
        int c = lane + 32 * r;
        qreg[r] = c < hs ? qr[c] : 0.0f;
        greg[r] = c < hs ? gr[c] : 0.0f;
        dsum += c < hs ? greg[r] * orow[c] : 0.0f;
        acc[r] = 0.0f;
    }
    float Di = bt_warp_sum(dsum), li = lse[row];
    int64_t last = causal ? i : T - 1;
    for (int64_t j = 0; j <= last; j++) {
        const float *kr = row_at(k, L.k, b, kvh, j);
        float p = expf(warp_dot(qreg, kr, hs, lane) * scale - li);
        float ds = p * (warp_dot(greg, row_at(v, L.v, b, kvh, j), hs, lane) - Di);
#pragma unroll
        for (int r = 0; r < MAX_PER_LANE; r++) {
            int c = lane + 32 * r;
            if (c < hs) acc[r] += ds * kr[c];
        }
    }
    float *dr = (float *)row_at(dq, L.dq, b, h, i);
#pragma unroll
    for (int r = 0; r < MAX_PER_LANE; r++) {
        int c = lane + 32 * r;
        if (c < hs) dr[c] = acc[r] * scale;
    }
    if (lane == 0) D[row] = Di;
}

/* dk, dv of key row (b, kvh, j): over the query heads that read kv head kvh, and their rows */
__global__ void attention_dkv_kernel(float *dk, float *dv, const float *D, const float *dout,
                                     const float *q, const float *k, const float *v,
                                     const float *lse, int64_t B, int64_t NH, int64_t NKV,
                                     int64_t T, int hs, float scale, bool causal,
                                     struct bt_attn_layouts L) {
    int lane = threadIdx.x & 31;
    int64_t row = (int64_t)blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (row >= B * NKV * T) return;
    int64_t j = row % T, kvh = (row / T) % NKV, b = row / (T * NKV), group = NH / NKV;
    const float *kr = row_at(k, L.k, b, kvh, j), *vr = row_at(v, L.v, b, kvh, j);
    float kreg[MAX_PER_LANE], vreg[MAX_PER_LANE], ak[MAX_PER_LANE], av[MAX_PER_LANE];
#pragma unroll
    for (int r = 0; r < MAX_PER_LANE; r++) {
        int c = lane + 32 * r;
        kreg[r] = c < hs ? kr[c] : 0.0f;
        vreg[r] = c < hs ? vr[c] : 0.0f;
        ak[r] = av[r] = 0.0f;
    }
    for (int64_t h = kvh * group; h < (kvh + 1) * group; h++)
        for (int64_t i = causal ? j : 0; i < T; i++) {
            int64_t qrow = (b * NH + h) * T + i;
            const float *qr = row_at(q, L.q, b, h, i), *gr = row_at(dout, L.dout, b, h, i);
            float p = expf(warp_dot(kreg, qr, hs, lane) * scale - lse[qrow]);
            float ds = p * (warp_dot(vreg, gr, hs, lane) - D[qrow]);
#pragma unroll
            for (int r = 0; r < MAX_PER_LANE; r++) {
                int c = lane + 32 * r;
                if (c < hs) {
                    av[r] += p * gr[c];
                    ak[r] += ds * qr[c];
                }
            }
        }
    float *dkr = (float *)row_at(dk, L.dk, b, kvh, j), *dvr = (float *)row_at(dv, L.dv, b, kvh, j);
#pragma unroll
    for (int r = 0; r < MAX_PER_LANE; r++) {
        int c = lane + 32 * r;
        if (c < hs) dkr[c] = ak[r] * scale, dvr[c] = av[r];
    }
}

void bt_cuda_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                const float *k, const float *v, const float *out,
                                const float *lse, int64_t B, int64_t NH, int64_t NKV, int64_t T,
                                int64_t hs, float scale, bool causal,
                                const struct bt_attn_layouts *layouts) {
    int64_t rows = B * NH * T, kv_rows = B * NKV * T;
    if (rows == 0) return;
    enum bt_cuda_attention_kernel kind = kernel_for(hs);
    if (kind == BT_CUDA_ATTENTION_TILED) {
        bt_cuda_attention_tiled_backward(dq, dk, dv, dout, q, k, v, out, lse, B, NH, NKV, T, hs,
                                         scale, causal, layouts);
        return;
    }
    if (kind == BT_CUDA_ATTENTION_GEMM) {
        bt_cuda_attention_gemm_backward(dq, dk, dv, dout, q, k, v, out, lse, B, NH, NKV, T, hs,
                                        scale, causal, layouts);
        return;
    }
    if (kind == BT_CUDA_ATTENTION_CUDNN &&
        bt_cuda_attention_cudnn_backward(dq, dk, dv, dout, q, k, v, out, lse, B, NH, NKV, T, hs,
                                         scale, causal, layouts))
        return;
    if (hs > 32 * MAX_PER_LANE) {
        bt_cuda_fail("attention: head size %lld is above the CUDA kernel's %d", (long long)hs,
                     32 * MAX_PER_LANE);
        return;
    }
    float *D = (float *)bt_cuda_scratch((size_t)rows * sizeof(float));
    if (!D) return;
    attention_dq_kernel<<<(unsigned)((rows + WARPS - 1) / WARPS), 32 * WARPS, 0,
                          bt_cuda_stream()>>>(dq, D, dout, q, k, v, out, lse, B, NH, NKV, T,
                                              (int)hs, scale, causal, *layouts);
    if (!BT_CUDA_LAUNCHED("attention_dq_kernel")) return;
    attention_dkv_kernel<<<(unsigned)((kv_rows + WARPS - 1) / WARPS), 32 * WARPS, 0,
                           bt_cuda_stream()>>>(dk, dv, D, dout, q, k, v, lse, B, NH, NKV, T,
                                               (int)hs, scale, causal, *layouts);
    BT_CUDA_LAUNCHED("attention_dkv_kernel");
}
