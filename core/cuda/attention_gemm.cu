/* CUDA attention as batched cuBLASLt GEMMs (attention_gemm.h has the steps and their cost):
 * the kernels here only pack heads into contiguous buffers and back, and run the row softmax
 * and the elementwise steps between the GEMMs. Any head size. Opt-in (BRAID_CUDA_ATTENTION=gemm)
 * until it has run on a GPU: docs/cuda.md. */
#include "core/cuda/attention_gemm.h"
#include "core/cuda/kernels.cuh"
extern "C" {
#include "core/runtime.h"
}

__global__ void attn_pack_kernel(float *dst, const float *src, struct bt_attn_layout l,
                                 int64_t b0, int64_t NH, int64_t group, int64_t T, int64_t hs,
                                 int64_t n) {
    BT_GRID_STRIDE(i, n) dst[i] = src[bt_km_attn_packed_src(i, l, b0, NH, group, T, hs)];
}

__global__ void attn_unpack_kernel(float *dst, struct bt_attn_layout l, const float *src,
                                   int64_t b0, int64_t NH, int64_t T, int64_t hs, int64_t n) {
    BT_GRID_STRIDE(i, n) dst[bt_km_attn_packed_src(i, l, b0, NH, 1, T, hs)] = src[i];
}

__global__ void attn_unpack_kv_kernel(float *dst, struct bt_attn_layout l, const float *src,
                                      int64_t b0, int64_t NH, int64_t NKV, int64_t T, int64_t hs,
                                      int64_t n) {
    BT_GRID_STRIDE(i, n) {
        int64_t at;
        float sum = bt_km_attn_kv_sum(src, i, l, b0, NH, NKV, T, hs, &at);
        dst[at] = sum;
    }
}

/* one block per score row: its max and sum in fixed order, then the probabilities in place */
__global__ void attn_softmax_kernel(float *S, float *lse, int64_t rows, int64_t T, bool causal) {
    __shared__ float red[32];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        float *s = S + r * T;
        int64_t t = r % T, n = bt_km_attn_keys(t, T, causal);
        float m = -INFINITY;
        for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
            m = fmaxf(m, s[j]);
        m = bt_block_max(m, red);
        float l = 0.0f;
        for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
            l += expf(s[j] - m);
        float row_lse = m + logf(bt_block_sum(l, red));
        for (int64_t j = threadIdx.x; j < T; j += blockDim.x)
            s[j] = bt_km_attn_prob(s[j], row_lse, j, t, causal);
        if (threadIdx.x == 0) lse[r] = row_lse;
    }
}

__global__ void attn_probs_kernel(float *S, const float *lse, int64_t T, bool causal, int64_t n) {
    BT_GRID_STRIDE(i, n) {
        int64_t r = i / T;
        S[i] = bt_km_attn_prob(S[i], lse[r], i % T, r % T, causal);
    }
}

__global__ void attn_dscores_kernel(float *dP, const float *P, const float *D, int64_t T,
                                    int64_t n) {
    BT_GRID_STRIDE(i, n) dP[i] = bt_km_attn_dscore(P[i], dP[i], D[i / T]);
}

/* D of row (b, h, t) = dout . out, one warp per row */
__global__ void attn_row_dots_kernel(float *D, const float *dout, const float *out,
                                     struct bt_attn_layout ld, struct bt_attn_layout lo,
                                     int64_t NH, int64_t T, int64_t hs, int64_t rows) {
    int lane = threadIdx.x & 31;
    int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
    for (int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); row < rows;
         row += warps) {
        int64_t t = row % T, h = (row / T) % NH, b = row / (T * NH);
        const float *g = dout + b * ld.batch + h * ld.head + t * ld.time;
        const float *o = out + b * lo.batch + h * lo.head + t * lo.time;
        float acc = 0.0f;
        for (int64_t c = lane; c < hs; c += 32)
            acc += g[c] * o[c];
        acc = bt_warp_sum(acc);
        if (lane == 0) D[row] = acc;
    }
}

#define LAUNCH(kernel, n, ...)                                                                     \
    do {                                                                                           \
        if ((n) > 0 && bt_cuda_ok()) {                                                             \
            kernel<<<bt_blocks((n), BT_THREADS), BT_THREADS, 0, bt_cuda_stream()>>>(__VA_ARGS__);  \
            BT_CUDA_LAUNCHED(#kernel);                                                             \
        }                                                                                          \
    } while (0)

/* blocks for a kernel that gives each row a block (or a warp of one) and loops past the grid */
static unsigned row_blocks(int64_t rows) {
    return (unsigned)(rows < 65535 * 8 ? (rows > 0 ? rows : 1) : 65535 * 8);
}

struct cuda_attn_ops {
    float *alloc(int64_t floats) {
        float *p = (float *)bt_cuda_malloc((size_t)floats * sizeof(float));
        if (!p)
            bt_cuda_fail("attention (gemm): out of device memory for %lld bytes",
                         (long long)floats * (long long)sizeof(float));
        return p;
    }
    void release(float *p) { bt_cuda_free(p); }
    bool ok() { return bt_cuda_ok(); }
    void gemm(bool ta, bool tb, int64_t batch, int64_t M, int64_t N, int64_t K, float alpha,
              const float *A, int64_t lda, int64_t sa, const float *B, int64_t ldb, int64_t sb,
              float beta, float *C, int64_t sc) {
        if (bt_cuda_ok())
            bt_cuda_gemm(ta, tb, batch, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C, sc);
    }
    void pack(float *dst, const float *src, struct bt_attn_layout l, int64_t b0, int64_t nb,
              int64_t NH, int64_t group, int64_t T, int64_t hs) {
        int64_t n = nb * NH * T * hs;
        LAUNCH(attn_pack_kernel, n, dst, src, l, b0, NH, group, T, hs, n);
    }
    void unpack(float *dst, struct bt_attn_layout l, const float *src, int64_t b0, int64_t nb,
                int64_t NH, int64_t T, int64_t hs) {
        int64_t n = nb * NH * T * hs;
        LAUNCH(attn_unpack_kernel, n, dst, l, src, b0, NH, T, hs, n);
    }
    void unpack_kv(float *dst, struct bt_attn_layout l, const float *src, int64_t b0, int64_t nb,
                   int64_t NH, int64_t NKV, int64_t T, int64_t hs) {
        int64_t n = nb * NKV * T * hs;
        LAUNCH(attn_unpack_kv_kernel, n, dst, l, src, b0, NH, NKV, T, hs, n);
    }
    void softmax(float *S, float *lse, int64_t rows, int64_t T, bool causal) {
        if (rows <= 0 || !bt_cuda_ok()) return;
        attn_softmax_kernel<<<row_blocks(rows), BT_THREADS, 0, bt_cuda_stream()>>>(S, lse, rows,
                                                                                  T, causal);
        BT_CUDA_LAUNCHED("attn_softmax_kernel");
    }
    void probs(float *S, const float *lse, int64_t rows, int64_t T, bool causal) {
        int64_t n = rows * T;
        LAUNCH(attn_probs_kernel, n, S, lse, T, causal, n);
    }
    void row_dots(float *D, const float *dout, const float *out, const struct bt_attn_layouts &L,
                  int64_t B, int64_t NH, int64_t T, int64_t hs) {
        int64_t rows = B * NH * T;
        if (rows <= 0 || !bt_cuda_ok()) return;
        attn_row_dots_kernel<<<row_blocks((rows + 7) / 8), BT_THREADS, 0, bt_cuda_stream()>>>(
            D, dout, out, L.dout, L.out, NH, T, hs, rows);
        BT_CUDA_LAUNCHED("attn_row_dots_kernel");
    }
    void dscores(float *dP, const float *P, const float *D, int64_t rows, int64_t T) {
        int64_t n = rows * T;
        LAUNCH(attn_dscores_kernel, n, dP, P, D, T, n);
    }
};

/* the cap on a chunk's scores: under bf16, bt_cuda_gemm also rounds P (or dS) into its scratch
 * buffer (half the scores' bytes, grown by half again, kept for later matmuls), so the scores get
 * 4/7 of BT_ATTN_GEMM_CHUNK_BYTES and the two together stay under it */
static int64_t chunk_cap(void) {
    return bt_runtime()->matmul_dtype == BT_BF16 ? BT_ATTN_GEMM_CHUNK_BYTES / 7 * 4
                                                 : BT_ATTN_GEMM_CHUNK_BYTES;
}

void bt_cuda_attention_gemm(float *out, float *lse, const float *q, const float *k,
                            const float *v, int64_t B, int64_t NH, int64_t NKV, int64_t T,
                            int64_t hs, float scale, bool causal,
                            const struct bt_attn_layouts *layouts) {
    cuda_attn_ops ops;
    bt_attn_gemm_forward(ops, out, lse, q, k, v, B, NH, NKV, T, hs, scale, causal, *layouts,
                         chunk_cap());
}

void bt_cuda_attention_gemm_backward(float *dq, float *dk, float *dv, const float *dout,
                                     const float *q, const float *k, const float *v,
                                     const float *out, const float *lse, int64_t B, int64_t NH,
                                     int64_t NKV, int64_t T, int64_t hs, float scale, bool causal,
                                     const struct bt_attn_layouts *layouts) {
    cuda_attn_ops ops;
    bt_attn_gemm_backward(ops, dq, dk, dv, dout, q, k, v, out, lse, B, NH, NKV, T, hs, scale,
                          causal, *layouts, chunk_cap());
}
