/* CUDA reductions: over the middle axis of (outer, dim, inner), their backward, the sum over
 * broadcast dims, column sums (bias gradients) and the sum of squares of many buffers. Every sum
 * runs in a fixed order (no atomics), so results repeat bit for bit. */
#include <float.h>
#include <stdlib.h>

#include "core/cuda/kernels.cuh"

/* The CPU's answer is element 0 if it is NaN, else the first index of the largest non-NaN value
 * (it takes element 0 whatever it is, then only strictly greater ones). Whether candidate (v, k)
 * replaces (best, at) under that rule, in any merge order; at == dim: no candidate yet. A NaN
 * other than element 0 is never a candidate. */
__device__ static inline bool max_better(float v, int64_t k, float best, int64_t at,
                                         int64_t dim) {
    if (at == dim) return true;
    if (k == 0 && isnan(v)) return true;
    if (at == 0 && isnan(best)) return false;
    return v > best || (v == best && k < at);
}

/* inner == 1: one block per row, a block sum in double (as the CPU: losses, norms) */
__global__ void reduce_rows_kernel(bt_reduce_op op, float *out, int64_t *argmax, const float *x,
                                   int64_t dim) {
    __shared__ double sums[32];
    __shared__ float maxes[32];
    __shared__ int64_t ats[32];
    const float *row = x + (int64_t)blockIdx.x * dim;
    if (op == BT_RED_MAX) { /* the CPU's answer: element 0, then the first strictly greater */
        float best = -INFINITY;
        int64_t at = dim; /* dim: this thread has no candidate */
        for (int64_t k = threadIdx.x; k < dim; k += blockDim.x)
            if ((k == 0 || !isnan(row[k])) && max_better(row[k], k, best, at, dim))
                best = row[k], at = k;
        for (int o = 16; o > 0; o >>= 1) {
            float b = __shfl_xor_sync(0xffffffffu, best, o);
            int64_t a = __shfl_xor_sync(0xffffffffu, at, o);
            if (a < dim && max_better(b, a, best, at, dim)) best = b, at = a;
        }
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        if (lane == 0) maxes[warp] = best, ats[warp] = at;
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 1; w < (int)(blockDim.x >> 5); w++)
                if (ats[w] < dim && max_better(maxes[w], ats[w], best, at, dim))
                    best = maxes[w], at = ats[w];
            out[blockIdx.x] = dim ? best : -FLT_MAX;
            if (argmax) argmax[blockIdx.x] = at == dim ? 0 : at;
        }
        return;
    }
    double acc = 0.0;
    for (int64_t k = threadIdx.x; k < dim; k += blockDim.x)
        acc += row[k];
    acc = bt_block_sum(acc, sums);
    if (threadIdx.x == 0)
        out[blockIdx.x] = (float)(op == BT_RED_MEAN && dim > 0 ? acc / (double)dim : acc);
}

/* inner > 1: one thread per (o, j), walking dim (reads coalesced across j) */
__global__ void reduce_cols_kernel(bt_reduce_op op, float *out, int64_t *argmax, const float *x,
                                   int64_t outer, int64_t dim, int64_t inner) {
    BT_GRID_STRIDE(idx, outer * inner) {
        int64_t o = idx / inner, j = idx % inner;
        const float *base = x + o * dim * inner + j;
        if (op == BT_RED_MAX) {
            float best = -FLT_MAX;
            int64_t at = 0;
            for (int64_t k = 0; k < dim; k++)
                if (base[k * inner] > best || k == 0) best = base[k * inner], at = k;
            out[idx] = best;
            if (argmax) argmax[idx] = at;
            continue;
        }
        double acc = 0.0;
        for (int64_t k = 0; k < dim; k++)
            acc += base[k * inner];
        out[idx] = (float)(op == BT_RED_MEAN && dim > 0 ? acc / (double)dim : acc);
    }
}

void bt_cuda_reduce(bt_reduce_op op, float *out, int64_t *argmax, const float *x, int64_t outer,
                    int64_t dim, int64_t inner) {
    if (outer * inner == 0) return;
    if (inner == 1 && outer <= 0x7fffffff) {
        reduce_rows_kernel<<<(unsigned)outer, BT_THREADS, 0, bt_cuda_stream()>>>(op, out, argmax,
                                                                                 x, dim);
        BT_CUDA_LAUNCHED("reduce_rows_kernel");
        return;
    }
    reduce_cols_kernel<<<bt_blocks(outer * inner, BT_THREADS), BT_THREADS, 0,
                         bt_cuda_stream()>>>(op, out, argmax, x, outer, dim, inner);
    BT_CUDA_LAUNCHED("reduce_cols_kernel");
}

__global__ void reduce_backward_kernel(bt_reduce_op op, float *dx, const float *dout,
                                       const int64_t *argmax, int64_t outer, int64_t dim,
                                       int64_t inner, float beta) {
    float scale = (op == BT_RED_MEAN && dim > 0) ? 1.0f / (float)dim : 1.0f;
    BT_GRID_STRIDE(i, outer * dim * inner) {
        int64_t j = i % inner, k = (i / inner) % dim, o = i / (inner * dim);
        float g = dout[o * inner + j];
        float v = op == BT_RED_MAX ? (argmax[o * inner + j] == k ? g : 0.0f) : g * scale;
        dx[i] = beta == 0.0f ? v : dx[i] + v;
    }
}

void bt_cuda_reduce_backward(bt_reduce_op op, float *dx, const float *dout, const int64_t *argmax,
                             int64_t outer, int64_t dim, int64_t inner, float beta) {
    int64_t n = outer * dim * inner;
    if (n == 0) return;
    reduce_backward_kernel<<<bt_blocks(n, BT_THREADS), BT_THREADS, 0, bt_cuda_stream()>>>(
        op, dx, dout, argmax, outer, dim, inner, beta);
    BT_CUDA_LAUNCHED("reduce_backward_kernel");
}

__global__ void sum_to_kernel(float *out, int64_t out_numel, const float *src,
                              struct bt_km_sum_to_plan plan) {
    BT_GRID_STRIDE(o, out_numel) out[o] += bt_km_sum_to_element(&plan, o, src);
}

void bt_cuda_sum_to(float *out, int64_t out_numel, const float *src, int ndim,
                    const int64_t *shape, const int64_t *map) {
    struct bt_km_sum_to_plan plan = bt_km_sum_to_make_plan(ndim, shape, map);
    if (out_numel == 0 || plan.src_numel == 0) return;
    sum_to_kernel<<<bt_blocks(out_numel, BT_THREADS), BT_THREADS, 0, bt_cuda_stream()>>>(
        out, out_numel, src, plan);
    BT_CUDA_LAUNCHED("sum_to_kernel");
}

/* dbias (cols) (+)= column sums of dout (rows, cols): blocks of 32 columns x 16 row lanes; each
 * lane sums its rows in order, then the 16 lanes are added in order */
__global__ void column_sum_kernel(float *dbias, const float *dout, int64_t rows, int64_t cols,
                                  float beta) {
    __shared__ float part[16][33];
    int64_t c = (int64_t)blockIdx.x * 32 + threadIdx.x;
    float acc = 0.0f;
    if (c < cols)
        for (int64_t r = threadIdx.y; r < rows; r += 16)
            acc += dout[r * cols + c];
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        float s = 0.0f;
        for (int y = 0; y < 16; y++)
            s += part[y][threadIdx.x];
        dbias[c] = beta == 0.0f ? s : dbias[c] + s;
    }
}

void bt_cuda_bias_backward(float *dbias, const float *dout, int64_t rows, int64_t cols,
                           float beta) {
    if (cols == 0) return;
    column_sum_kernel<<<(unsigned)((cols + 31) / 32), dim3(32, 16), 0, bt_cuda_stream()>>>(
        dbias, dout, rows, cols, beta);
    BT_CUDA_LAUNCHED("column_sum_kernel");
}

/* ---- sum of squares of many buffers: per-block partial sums in double, then one block adds
 * the partials in order ---- */
#define SQ_BLOCKS_MAX 128 /* partial sums per buffer */

__global__ void sum_squares_partial_kernel(double *partials, const float *x, int64_t n) {
    __shared__ double shared[32];
    double acc = 0.0;
    BT_GRID_STRIDE(i, n) acc += (double)x[i] * (double)x[i];
    acc = bt_block_sum(acc, shared);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

__global__ void sum_partials_kernel(double *total, const double *partials, int64_t n) {
    __shared__ double shared[32];
    double acc = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        acc += partials[i];
    acc = bt_block_sum(acc, shared);
    if (threadIdx.x == 0) *total = acc;
}

double bt_cuda_sum_squares(const float *const *xs, const int64_t *ns, int64_t n) {
    int64_t n_partials = 0;
    for (int64_t k = 0; k < n; k++)
        n_partials += ns[k] ? (int64_t)bt_blocks(ns[k], BT_THREADS) < SQ_BLOCKS_MAX
                                  ? bt_blocks(ns[k], BT_THREADS)
                                  : SQ_BLOCKS_MAX
                            : 0;
    double *partials = (double *)bt_cuda_scratch((size_t)(n_partials + 1) * sizeof(double));
    if (!partials) return NAN;
    int64_t at = 0;
    for (int64_t k = 0; k < n; k++) {
        if (!ns[k]) continue;
        unsigned blocks = bt_blocks(ns[k], BT_THREADS);
        if (blocks > SQ_BLOCKS_MAX) blocks = SQ_BLOCKS_MAX;
        sum_squares_partial_kernel<<<blocks, BT_THREADS, 0, bt_cuda_stream()>>>(partials + at,
                                                                               xs[k], ns[k]);
        if (!BT_CUDA_LAUNCHED("sum_squares_partial_kernel")) return NAN;
        at += blocks;
    }
    sum_partials_kernel<<<1, 1024, 0, bt_cuda_stream()>>>(partials + n_partials, partials,
                                                          n_partials);
    if (!BT_CUDA_LAUNCHED("sum_partials_kernel")) return NAN;
    double total = NAN; /* stays NaN (0xff bytes) if the copy fails */
    bt_cuda_to_host(&total, partials + n_partials, sizeof total);
    return total;
}
