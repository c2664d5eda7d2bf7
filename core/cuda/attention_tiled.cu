/* CUDA attention, float32, tiled (FlashAttention-2's schedule on CUDA cores): one thread per row
 * holds that row in registers, and a block's BR rows walk the keys in tiles of BR rows staged in
 * shared memory, so each key row is read from memory once per block instead of once per row, and
 * no warp reduction is needed (each thread has whole dot products). Forward: online softmax per
 * thread, the log-sum-exp saved. Backward: dq per query row (with D = dout . out); dv and dk per
 * key row, over the query rows of the heads that read it, in two kernels (a thread cannot hold
 * k, v, dk and dv at hs = 64 in registers). Head sizes 64 and 128; others use attention.cu's
 * kernel. Opt-in (BRAID_CUDA_ATTENTION=tiled) until it has run on a GPU: docs/cuda.md. */
#include "core/cuda/kernels.cuh"

/* BR: rows per block, and key (or query) rows per shared-memory tile: two tiles of BR x HS floats
 * stay within the 48 KB of static shared memory (64 rows at hs 64, 32 at hs 128) */
template <int HS> struct tile {
    static constexpr int rows = HS <= 64 ? 64 : 32;
};

__device__ static inline const float *trow(const float *base, struct bt_attn_layout l, int64_t b,
                                           int64_t h, int64_t t) {
    return base + b * l.batch + h * l.head + t * l.time;
}

/* rows [k0, k0 + BR) of kv head kvh's keys and values into shared memory (zeros past T), the
 * block's threads reading consecutive floats */
template <int HS>
__device__ static inline void load_kv_tile(float (*ks)[HS], float (*vs)[HS], const float *k,
                                           const float *v, const struct bt_attn_layouts &L,
                                           int64_t b, int64_t kvh, int64_t k0, int64_t T) {
    constexpr int BR = tile<HS>::rows;
    for (int i = threadIdx.x; i < BR * HS; i += BR) {
        int r = i / HS, c = i % HS;
        bool in = k0 + r < T;
        ks[r][c] = in ? trow(k, L.k, b, kvh, k0 + r)[c] : 0.0f;
        vs[r][c] = in ? trow(v, L.v, b, kvh, k0 + r)[c] : 0.0f;
    }
}

/* grid (ceil(T / BR), B * NH); thread = query row t of (b, h) */
template <int HS>
__global__ void __launch_bounds__(tile<HS>::rows)
    tiled_forward_kernel(float *out, float *lse, const float *q, const float *k, const float *v,
                         int64_t NH, int64_t NKV, int64_t T, float scale, bool causal,
                         struct bt_attn_layouts L) {
    constexpr int BR = tile<HS>::rows;
    __shared__ float ks[BR][HS], vs[BR][HS];
    int64_t bh = blockIdx.y, b = bh / NH, h = bh % NH, kvh = h / (NH / NKV);
    int64_t q0 = (int64_t)blockIdx.x * BR, t = q0 + threadIdx.x;
    bool active = t < T;
    float qr[HS], acc[HS];
    const float *qp = trow(q, L.q, b, h, active ? t : 0);
#pragma unroll
    for (int c = 0; c < HS; c++)
        qr[c] = active ? qp[c] * scale : 0.0f, acc[c] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    int64_t key_end = bt_km_block_key_end(q0, BR, T, causal);
    for (int64_t k0 = 0; k0 < key_end; k0 += BR) {
        __syncthreads(); /* the previous tile is done with */
        load_kv_tile<HS>(ks, vs, k, v, L, b, kvh, k0, T);
        __syncthreads();
        int64_t n = bt_km_tile_keys(t, k0, BR, T, causal);
        for (int j = 0; active && j < n; j++) {
            float s = 0.0f;
#pragma unroll
            for (int c = 0; c < HS; c++)
                s += qr[c] * ks[j][c];
            float p, corr = bt_km_online_softmax(&m, &l, s, &p);
#pragma unroll
            for (int c = 0; c < HS; c++)
                acc[c] = acc[c] * corr + p * vs[j][c];
        }
    }
    if (!active) return;
    float *op = (float *)trow(out, L.out, b, h, t);
#pragma unroll
    for (int c = 0; c < HS; c++)
        op[c] = acc[c] / l;
    lse[bh * T + t] = m + logf(l);
}

/* dq of query row t; D[row] = dout . out */
template <int HS>
__global__ void __launch_bounds__(tile<HS>::rows)
    tiled_dq_kernel(float *dq, float *D, const float *dout, const float *q, const float *k,
                    const float *v, const float *out, const float *lse, int64_t NH, int64_t NKV,
                    int64_t T, float scale, bool causal, struct bt_attn_layouts L) {
    constexpr int BR = tile<HS>::rows;
    __shared__ float ks[BR][HS], vs[BR][HS];
    int64_t bh = blockIdx.y, b = bh / NH, h = bh % NH, kvh = h / (NH / NKV);
    int64_t q0 = (int64_t)blockIdx.x * BR, t = q0 + threadIdx.x;
    bool active = t < T;
    float qr[HS], gr[HS], acc[HS], Di = 0.0f, li = active ? lse[bh * T + t] : 0.0f;
    const float *qp = trow(q, L.q, b, h, active ? t : 0), *gp = trow(dout, L.dout, b, h, active ? t : 0);
    const float *opp = trow(out, L.out, b, h, active ? t : 0);
#pragma unroll
    for (int c = 0; c < HS; c++) {
        qr[c] = active ? qp[c] : 0.0f;
        gr[c] = active ? gp[c] : 0.0f;
        Di += active ? gr[c] * opp[c] : 0.0f;
        acc[c] = 0.0f;
    }
    int64_t key_end = bt_km_block_key_end(q0, BR, T, causal);
    for (int64_t k0 = 0; k0 < key_end; k0 += BR) {
        __syncthreads();
        load_kv_tile<HS>(ks, vs, k, v, L, b, kvh, k0, T);
        __syncthreads();
        int64_t n = bt_km_tile_keys(t, k0, BR, T, causal);
        for (int j = 0; active && j < n; j++) {
            float s = 0.0f, dp = 0.0f;
#pragma unroll
            for (int c = 0; c < HS; c++)
                s += qr[c] * ks[j][c], dp += gr[c] * vs[j][c];
            float p = expf(s * scale - li), ds = p * (dp - Di);
#pragma unroll
            for (int c = 0; c < HS; c++)
                acc[c] += ds * ks[j][c];
        }
    }
    if (!active) return;
    float *dp_out = (float *)trow(dq, L.dq, b, h, t);
#pragma unroll
    for (int c = 0; c < HS; c++)
        dp_out[c] = acc[c] * scale;
    D[bh * T + t] = Di;
}

/* dv (want_dk false) or dk (true) of key row j of (b, kvh): over the query rows i (>= j when
 * causal) of the heads that read kv head kvh, staged in tiles: q and dout (and lse, D) */
template <int HS, bool WANT_DK>
__global__ void __launch_bounds__(tile<HS>::rows)
    tiled_dkv_kernel(float *dkv, const float *D, const float *dout, const float *q, const float *k,
                     const float *v, const float *lse, int64_t NH, int64_t NKV, int64_t T,
                     float scale, bool causal, struct bt_attn_layouts L) {
    constexpr int BR = tile<HS>::rows;
    __shared__ float qs[BR][HS], gs[BR][HS], ls[BR], Ds[BR];
    int64_t bkv = blockIdx.y, b = bkv / NKV, kvh = bkv % NKV, group = NH / NKV;
    int64_t k0 = (int64_t)blockIdx.x * BR, j = k0 + threadIdx.x;
    bool active = j < T;
    float kr[HS], vr[HS], acc[HS];
    const float *kp = trow(k, L.k, b, kvh, active ? j : 0), *vp = trow(v, L.v, b, kvh, active ? j : 0);
#pragma unroll
    for (int c = 0; c < HS; c++) {
        kr[c] = active ? kp[c] : 0.0f;
        vr[c] = WANT_DK && active ? vp[c] : 0.0f;
        acc[c] = 0.0f;
    }
    for (int64_t h = kvh * group; h < (kvh + 1) * group; h++) {
        int64_t bh = b * NH + h;
        for (int64_t i0 = bt_km_block_query_start(k0, causal); i0 < T; i0 += BR) {
            __syncthreads();
            for (int x = threadIdx.x; x < BR * HS; x += BR) {
                int r = x / HS, c = x % HS;
                bool in = i0 + r < T;
                qs[r][c] = in ? trow(q, L.q, b, h, i0 + r)[c] : 0.0f;
                gs[r][c] = in ? trow(dout, L.dout, b, h, i0 + r)[c] : 0.0f;
            }
            if (threadIdx.x < BR) {
                bool in = i0 + threadIdx.x < T;
                ls[threadIdx.x] = in ? lse[bh * T + i0 + threadIdx.x] : 0.0f;
                Ds[threadIdx.x] = in ? D[bh * T + i0 + threadIdx.x] : 0.0f;
            }
            __syncthreads();
            int64_t n = T - i0 < BR ? T - i0 : BR;
            int first = (int)bt_km_tile_first_query(j, i0, causal);
            for (int r = first; active && r < n; r++) {
                float s = 0.0f, dp = 0.0f;
#pragma unroll
                for (int c = 0; c < HS; c++) {
                    s += kr[c] * qs[r][c];
                    if (WANT_DK) dp += vr[c] * gs[r][c];
                }
                float p = expf(s * scale - ls[r]);
                if (WANT_DK) {
                    float ds = p * (dp - Ds[r]);
#pragma unroll
                    for (int c = 0; c < HS; c++)
                        acc[c] += ds * qs[r][c];
                } else {
#pragma unroll
                    for (int c = 0; c < HS; c++)
                        acc[c] += p * gs[r][c];
                }
            }
        }
    }
    if (!active) return;
    float *dst = (float *)trow(dkv, WANT_DK ? L.dk : L.dv, b, kvh, j);
#pragma unroll
    for (int c = 0; c < HS; c++)
        dst[c] = WANT_DK ? acc[c] * scale : acc[c];
}

bool bt_cuda_attention_tiled_takes(int64_t hs) {
    return hs == 64 || hs == 128;
}

template <int HS>
static void forward(float *out, float *lse, const float *q, const float *k, const float *v,
                    int64_t B, int64_t NH, int64_t NKV, int64_t T, float scale, bool causal,
                    const struct bt_attn_layouts *L) {
    constexpr int BR = tile<HS>::rows;
    dim3 grid((unsigned)((T + BR - 1) / BR), (unsigned)(B * NH));
    tiled_forward_kernel<HS><<<grid, BR, 0, bt_cuda_stream()>>>(out, lse, q, k, v, NH, NKV, T,
                                                                 scale, causal, *L);
    BT_CUDA_LAUNCHED("tiled_forward_kernel");
}

template <int HS>
static void backward(float *dq, float *dk, float *dv, float *D, const float *dout, const float *q,
                     const float *k, const float *v, const float *out, const float *lse, int64_t B,
                     int64_t NH, int64_t NKV, int64_t T, float scale, bool causal,
                     const struct bt_attn_layouts *L) {
    constexpr int BR = tile<HS>::rows;
    dim3 qgrid((unsigned)((T + BR - 1) / BR), (unsigned)(B * NH));
    dim3 kgrid((unsigned)((T + BR - 1) / BR), (unsigned)(B * NKV));
    tiled_dq_kernel<HS><<<qgrid, BR, 0, bt_cuda_stream()>>>(dq, D, dout, q, k, v, out, lse, NH,
                                                            NKV, T, scale, causal, *L);
    if (!BT_CUDA_LAUNCHED("tiled_dq_kernel")) return;
    tiled_dkv_kernel<HS, false><<<kgrid, BR, 0, bt_cuda_stream()>>>(dv, D, dout, q, k, v, lse, NH,
                                                                    NKV, T, scale, causal, *L);
    if (!BT_CUDA_LAUNCHED("tiled_dkv_kernel (dv)")) return;
    tiled_dkv_kernel<HS, true><<<kgrid, BR, 0, bt_cuda_stream()>>>(dk, D, dout, q, k, v, lse, NH,
                                                                   NKV, T, scale, causal, *L);
    BT_CUDA_LAUNCHED("tiled_dkv_kernel (dk)");
}

void bt_cuda_attention_tiled(float *out, float *lse, const float *q, const float *k,
                             const float *v, int64_t B, int64_t NH, int64_t NKV, int64_t T,
                             int64_t hs, float scale, bool causal,
                             const struct bt_attn_layouts *layouts) {
    if (B * NH * T == 0) return;
    if (hs == 64)
        forward<64>(out, lse, q, k, v, B, NH, NKV, T, scale, causal, layouts);
    else
        forward<128>(out, lse, q, k, v, B, NH, NKV, T, scale, causal, layouts);
}

void bt_cuda_attention_tiled_backward(float *dq, float *dk, float *dv, const float *dout,
                                      const float *q, const float *k, const float *v,
                                      const float *out, const float *lse, int64_t B, int64_t NH,
                                      int64_t NKV, int64_t T, int64_t hs, float scale, bool causal,
                                      const struct bt_attn_layouts *layouts) {
    if (B * NH * T == 0) return;
    float *D = (float *)bt_cuda_scratch((size_t)(B * NH * T) * sizeof(float));
    if (!D) return;
    if (hs == 64)
        backward<64>(dq, dk, dv, D, dout, q, k, v, out, lse, B, NH, NKV, T, scale, causal, layouts);
    else
        backward<128>(dq, dk, dv, D, dout, q, k, v, out, lse, B, NH, NKV, T, scale, causal,
                      layouts);
}
