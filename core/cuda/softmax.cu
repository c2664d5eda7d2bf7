/* CUDA softmax / log-softmax over the middle axis of (outer, dim, inner), and the fused
 * cross-entropy: one block per row when inner == 1 (the last axis, every case in braid's
 * models), one thread per (o, j) column otherwise. */
#include "core/cuda/kernels.cuh"

__global__ void softmax_rows_kernel(float *out, const float *x, int64_t dim, bool log_) {
    __shared__ float shared[32];
    const float *xr = x + (int64_t)blockIdx.x * dim;
    float *yr = out + (int64_t)blockIdx.x * dim;
    float mx = -INFINITY;
    for (int64_t k = threadIdx.x; k < dim; k += blockDim.x)
        mx = fmaxf(mx, xr[k]);
    mx = bt_block_max(mx, shared);
    if (mx == -INFINITY) mx = 0.0f;
    float s = 0.0f;
    for (int64_t k = threadIdx.x; k < dim; k += blockDim.x)
        s += expf(xr[k] - mx);
    s = bt_block_sum(s, shared);
    float log_s = logf(s);
    for (int64_t k = threadIdx.x; k < dim; k += blockDim.x) /* (x - max) - log s, as the CPU */
        yr[k] = log_ ? (xr[k] - mx) - log_s : expf(xr[k] - mx) / s;
}

__global__ void softmax_cols_kernel(float *out, const float *x, int64_t outer, int64_t dim,
                                    int64_t inner, bool log_) {
    BT_GRID_STRIDE(idx, outer * inner) {
        int64_t o = idx / inner, j = idx % inner;
        const float *xb = x + o * dim * inner + j;
        float *yb = out + o * dim * inner + j;
        float mx = -INFINITY;
        for (int64_t k = 0; k < dim; k++)
            mx = fmaxf(mx, xb[k * inner]);
        if (mx == -INFINITY) mx = 0.0f;
        float s = 0.0f;
        for (int64_t k = 0; k < dim; k++)
            s += expf(xb[k * inner] - mx);
        float log_s = logf(s);
        for (int64_t k = 0; k < dim; k++)
            yb[k * inner] = log_ ? (xb[k * inner] - mx) - log_s : expf(xb[k * inner] - mx) / s;
    }
}

void bt_cuda_softmax(float *out, const float *x, int64_t outer, int64_t dim, int64_t inner,
                     bool log) {
    if (outer * inner == 0 || dim == 0) return;
    if (inner == 1) {
        softmax_rows_kernel<<<(unsigned)outer, BT_THREADS, 0, bt_cuda_stream()>>>(out, x, dim,
                                                                                  log);
        BT_CUDA_LAUNCHED("softmax_rows_kernel");
        return;
    }
    softmax_cols_kernel<<<bt_blocks(outer * inner, BT_THREADS), BT_THREADS, 0,
                          bt_cuda_stream()>>>(out, x, outer, dim, inner, log);
    BT_CUDA_LAUNCHED("softmax_cols_kernel");
}

/* softmax: dx = y (dy - sum(dy y)); log-softmax: dx = dy - exp(y) sum(dy) */
__global__ void softmax_backward_kernel(float *dx, const float *dout, const float *out,
                                        int64_t outer, int64_t dim, int64_t inner, bool log_,
                                        float beta) {
    __shared__ float shared[32];
    for (int64_t idx = blockIdx.x; idx < outer * inner; idx += gridDim.x) {
        int64_t o = idx / inner, j = idx % inner, base = o * dim * inner + j;
        float s = 0.0f;
        for (int64_t k = threadIdx.x; k < dim; k += blockDim.x) {
            int64_t at = base + k * inner;
            s += log_ ? dout[at] : dout[at] * out[at];
        }
        s = bt_block_sum(s, shared);
        for (int64_t k = threadIdx.x; k < dim; k += blockDim.x) {
            int64_t at = base + k * inner;
            float d = log_ ? dout[at] - expf(out[at]) * s : out[at] * (dout[at] - s);
            dx[at] = beta == 0.0f ? d : dx[at] + d;
        }
    }
}

void bt_cuda_softmax_backward(float *dx, const float *dout, const float *out, int64_t outer,
                              int64_t dim, int64_t inner, bool log, float beta) {
    int64_t rows = outer * inner;
    if (rows == 0 || dim == 0) return;
    softmax_backward_kernel<<<rows < 65535 * 8 ? (unsigned)rows : 65535 * 8, BT_THREADS, 0,
                              bt_cuda_stream()>>>(dx, dout, out, outer, dim, inner, log, beta);
    BT_CUDA_LAUNCHED("softmax_backward_kernel");
}

/* ---- cross-entropy: per-row log-sum-exp and loss, then one block sums the losses in row order
 * (the same total for any launch) ---- */

__global__ void cross_entropy_rows_kernel(float *lse, double *row_loss, const float *logits,
                                          const int64_t *targets, int64_t V) {
    __shared__ float shared_f[32];
    __shared__ double shared_d[32];
    int64_t n = blockIdx.x, t = targets[n];
    if (t < 0) {
        if (threadIdx.x == 0) lse[n] = 0.0f, row_loss[n] = 0.0;
        return;
    }
    const float *xr = logits + n * V;
    float mx = -INFINITY;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x)
        mx = fmaxf(mx, xr[v]);
    mx = bt_block_max(mx, shared_f);
    if (mx == -INFINITY) mx = 0.0f;
    double s = 0.0;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x)
        s += expf(xr[v] - mx);
    s = bt_block_sum(s, shared_d);
    if (threadIdx.x == 0) {
        float l = mx + logf((float)s);
        lse[n] = l;
        row_loss[n] = (double)l - (double)xr[t];
    }
}

__global__ void cross_entropy_total_kernel(double *total, double *count, const double *row_loss,
                                           const int64_t *targets, int64_t N) {
    __shared__ double shared[32];
    double acc = 0.0, cnt = 0.0;
    for (int64_t n = threadIdx.x; n < N; n += blockDim.x) {
        acc += row_loss[n];
        cnt += targets[n] >= 0 ? 1.0 : 0.0;
    }
    acc = bt_block_sum(acc, shared);
    cnt = bt_block_sum(cnt, shared);
    if (threadIdx.x == 0) *total = acc, *count = cnt;
}

double bt_cuda_cross_entropy(float *lse, const float *logits, const int64_t *targets, int64_t N,
                             int64_t V, int64_t *count) {
    *count = 0;
    if (N == 0) return 0.0;
    double *buf = (double *)bt_cuda_scratch((size_t)(N + 2) * sizeof(double));
    if (!buf) return NAN;
    cross_entropy_rows_kernel<<<(unsigned)N, BT_THREADS, 0, bt_cuda_stream()>>>(lse, buf, logits,
                                                                                targets, V);
    if (!BT_CUDA_LAUNCHED("cross_entropy_rows_kernel")) return NAN;
    cross_entropy_total_kernel<<<1, 1024, 0, bt_cuda_stream()>>>(buf + N, buf + N + 1, buf,
                                                                 targets, N);
    if (!BT_CUDA_LAUNCHED("cross_entropy_total_kernel")) return NAN;
    double host[2] = {0.0, 0.0};
    bt_cuda_to_host(host, buf + N, sizeof host);
    *count = (int64_t)host[1];
    return host[0];
}

__global__ void cross_entropy_backward_kernel(float *dlogits, const float *logits,
                                              const float *lse, const int64_t *targets,
                                              int64_t N, int64_t V, float scale, float beta) {
    BT_GRID_STRIDE(i, N * V) {
        int64_t n = i / V, v = i % V, t = targets[n];
        float d = t < 0 ? 0.0f : (expf(logits[i] - lse[n]) - (v == t ? 1.0f : 0.0f)) * scale;
        dlogits[i] = beta == 0.0f ? d : dlogits[i] + d;
    }
}

void bt_cuda_cross_entropy_backward(float *dlogits, const float *logits, const float *lse,
                                    const int64_t *targets, int64_t N, int64_t V, float scale,
                                    float beta) {
    if (N * V == 0) return;
    cross_entropy_backward_kernel<<<bt_blocks(N * V, BT_THREADS), BT_THREADS, 0,
                                    bt_cuda_stream()>>>(dlogits, logits, lse, targets, N, V,
                                                        scale, beta);
    BT_CUDA_LAUNCHED("cross_entropy_backward_kernel");
}
