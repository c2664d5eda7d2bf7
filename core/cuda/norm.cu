/* CUDA layernorm and rmsnorm: one block per row for the forward and for dx (two passes over the
 * row: no cancellation when |mean| >> std), and column-sum kernels for the weight and bias
 * gradients (double accumulators, rows in a fixed order, as the CPU). */
#include "core/cuda/kernels.cuh"

#define NORM_THREADS 256

__global__ void layernorm_kernel(float *out, float *mean, float *rstd, const float *x,
                                 const float *w, const float *b, int64_t C, float eps) {
    __shared__ float shared[32];
    const float *xr = x + (int64_t)blockIdx.x * C;
    float *yr = out + (int64_t)blockIdx.x * C;
    float s = 0.0f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
        s += xr[c];
    float m = C ? bt_block_sum(s, shared) / (float)C : 0.0f; /* C = 0: the CPU's m = 0 */
    float v = 0.0f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        float d = xr[c] - m;
        v += d * d;
    }
    float r = 1.0f / sqrtf((C ? bt_block_sum(v, shared) / (float)C : 0.0f) + eps);
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        float y = (xr[c] - m) * r;
        if (w) y = y * w[c];
        if (b) y = y + b[c];
        yr[c] = y;
    }
    if (threadIdx.x == 0) mean[blockIdx.x] = m, rstd[blockIdx.x] = r;
}

void bt_cuda_layernorm(float *out, float *mean, float *rstd, const float *x, const float *w,
                       const float *b, int64_t N, int64_t C, float eps) {
    if (N == 0) return;
    layernorm_kernel<<<(unsigned)N, NORM_THREADS, 0, bt_cuda_stream()>>>(out, mean, rstd, x, w,
                                                                         b, C, eps);
    BT_CUDA_LAUNCHED("layernorm_kernel");
}

/* dx of one row per block: dx = rstd (dnorm - mean(dnorm) - norm mean(dnorm norm)); rms = true
 * drops the mean terms (rmsnorm: norm = x rstd) */
__global__ void norm_dx_kernel(float *dx, const float *dout, const float *x, const float *w,
                               const float *mean, const float *rstd, int64_t C, bool rms,
                               bool accumulate) {
    __shared__ float shared[32];
    int64_t n = blockIdx.x;
    const float *xr = x + n * C, *gr = dout + n * C;
    float *dr = dx + n * C;
    float m = rms ? 0.0f : mean[n], s = rstd[n];
    float sum_d = 0.0f, sum_dn = 0.0f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        float dnorm = w ? gr[c] * w[c] : gr[c];
        sum_d += dnorm;
        sum_dn += dnorm * ((xr[c] - m) * s);
    }
    float dnorm_mean = rms ? 0.0f : bt_block_sum(sum_d, shared) / (float)C;
    float dnorm_norm_mean = bt_block_sum(sum_dn, shared) / (float)C;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        float dnorm = w ? gr[c] * w[c] : gr[c];
        float norm = (xr[c] - m) * s;
        float d = s * (dnorm - dnorm_mean - norm * dnorm_norm_mean);
        dr[c] = accumulate ? dr[c] + d : d;
    }
}

/* dw (+)= sum_n dout norm, db (+)= sum_n dout: 32 columns x 16 row lanes per block */
__global__ void norm_param_grad_kernel(float *dw, float *db, const float *dout, const float *x,
                                       const float *mean, const float *rstd, int64_t N,
                                       int64_t C, bool rms, float beta_w, float beta_b) {
    __shared__ double part_w[16][33], part_b[16][33];
    int64_t c = (int64_t)blockIdx.x * 32 + threadIdx.x;
    double aw = 0.0, ab = 0.0;
    if (c < C)
        for (int64_t n = threadIdx.y; n < N; n += 16) {
            float g = dout[n * C + c];
            aw += (double)g * ((x[n * C + c] - (rms ? 0.0f : mean[n])) * rstd[n]);
            ab += g;
        }
    part_w[threadIdx.y][threadIdx.x] = aw;
    part_b[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y != 0 || c >= C) return;
    double sw = 0.0, sb = 0.0;
    for (int y = 0; y < 16; y++)
        sw += part_w[y][threadIdx.x], sb += part_b[y][threadIdx.x];
    if (dw) dw[c] = beta_w == 0.0f ? (float)sw : dw[c] + (float)sw;
    if (db) db[c] = beta_b == 0.0f ? (float)sb : db[c] + (float)sb;
}

void bt_cuda_layernorm_backward(float *dx, float *dw, float *db, const float *dout, const float *x,
                                const float *w, const float *mean, const float *rstd, int64_t N,
                                int64_t C, float beta_x, float beta_w, float beta_b) {
    if (C == 0) return;
    if (dx && N > 0) {
        norm_dx_kernel<<<(unsigned)N, NORM_THREADS, 0, bt_cuda_stream()>>>(
            dx, dout, x, w, mean, rstd, C, false, beta_x != 0.0f);
        if (!BT_CUDA_LAUNCHED("norm_dx_kernel")) return;
    }
    if (dw || db) { /* N = 0: the sums are 0, written when beta is 0 (as the CPU) */
        norm_param_grad_kernel<<<(unsigned)((C + 31) / 32), dim3(32, 16), 0, bt_cuda_stream()>>>(
            dw, db, dout, x, mean, rstd, N, C, false, beta_w, beta_b);
        BT_CUDA_LAUNCHED("norm_param_grad_kernel");
    }
}

__global__ void rmsnorm_kernel(float *out, float *rstd, const float *x, const float *w, int64_t C,
                               float eps) {
    __shared__ float shared[32];
    const float *xr = x + (int64_t)blockIdx.x * C;
    float *yr = out + (int64_t)blockIdx.x * C;
    float ss = 0.0f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
        ss += xr[c] * xr[c];
    float r = 1.0f / sqrtf((C ? bt_block_sum(ss, shared) / (float)C : 0.0f) + eps);
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
        yr[c] = w ? xr[c] * r * w[c] : xr[c] * r;
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
}

void bt_cuda_rmsnorm(float *out, float *rstd, const float *x, const float *w, int64_t N, int64_t C,
                     float eps) {
    if (N == 0) return;
    rmsnorm_kernel<<<(unsigned)N, NORM_THREADS, 0, bt_cuda_stream()>>>(out, rstd, x, w, C, eps);
    BT_CUDA_LAUNCHED("rmsnorm_kernel");
}

void bt_cuda_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x,
                              const float *w, const float *rstd, int64_t N, int64_t C,
                              float beta_x, float beta_w) {
    if (C == 0) return;
    if (dx && N > 0) {
        norm_dx_kernel<<<(unsigned)N, NORM_THREADS, 0, bt_cuda_stream()>>>(
            dx, dout, x, w, NULL, rstd, C, true, beta_x != 0.0f);
        if (!BT_CUDA_LAUNCHED("norm_dx_kernel")) return;
    }
    if (dw) {
        norm_param_grad_kernel<<<(unsigned)((C + 31) / 32), dim3(32, 16), 0, bt_cuda_stream()>>>(
            dw, NULL, dout, x, NULL, rstd, N, C, true, beta_w, 0.0f);
        BT_CUDA_LAUNCHED("norm_param_grad_kernel");
    }
}
