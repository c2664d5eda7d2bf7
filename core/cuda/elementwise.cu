/* CUDA elementwise kernels: binary ops with broadcasting, unary ops and their derivatives,
 * masked fill, dropout, RoPE, the bias broadcast. The math is kernel_math.h's. */
#include "core/cuda/kernels.cuh"

__global__ void binary_contiguous_kernel(bt_binary_op op, float *out, const float *a,
                                         const float *b, int64_t n) {
    BT_GRID_STRIDE(i, n) out[i] = bt_km_binary(op, a[i], b[i]);
}

__global__ void binary_strided_kernel(bt_binary_op op, float *out, const float *a,
                                      struct bt_km_strides as, const float *b,
                                      struct bt_km_strides bs, struct bt_km_shape shape,
                                      int64_t n) {
    BT_GRID_STRIDE(i, n)
    out[i] = bt_km_binary(op, a[bt_km_offset(i, &shape, &as)], b[bt_km_offset(i, &shape, &bs)]);
}

void bt_cuda_binary(bt_binary_op op, float *out, const float *a, const int64_t *a_strides,
                    const float *b, const int64_t *b_strides, int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= shape[d];
    if (n == 0) return;
    if (bt_strides_contiguous(ndim, shape, a_strides) &&
        bt_strides_contiguous(ndim, shape, b_strides)) {
        binary_contiguous_kernel<<<bt_blocks(n, BT_THREADS), BT_THREADS, 0, bt_cuda_stream()>>>(
            op, out, a, b, n);
        BT_CUDA_LAUNCHED("binary_contiguous_kernel");
        return;
    }
    binary_strided_kernel<<<bt_blocks(n, BT_THREADS), BT_THREADS, 0, bt_cuda_stream()>>>(
        op, out, a, bt_km_make_strides(ndim, a_strides), b, bt_km_make_strides(ndim, b_strides),
        bt_km_make_shape(ndim, shape), n);
    BT_CUDA_LAUNCHED("binary_strided_kernel");
}

__global__ void unary_kernel(bt_unary_op op, float *out, const float *x, int64_t n, float arg) {
    BT_GRID_STRIDE(i, n) out[i] = bt_km_unary(op, x[i], arg);
}

void bt_cuda_unary(bt_unary_op op, float *out, const float *x, int64_t n, float arg) {
    if (n == 0) return;
    unary_kernel<<<bt_blocks(n, BT_THREADS), BT_THREADS, 0, bt_cuda_stream()>>>(op, out, x, n,
                                                                                 arg);
    BT_CUDA_LAUNCHED("unary_kernel");
}

/* `out` may be NULL for ops whose derivative needs only x (the front end passes it when saved) */
__global__ void unary_backward_kernel(bt_unary_op op, float *dx, const float *dout,
                                      const float *x, const float *out, int64_t n, float arg,
                                      float beta) {
    BT_GRID_STRIDE(i, n) {
        float xi = x ? x[i] : 0.0f;
        float yi = out ? out[i] : bt_km_unary(op, xi, arg);
        float d = dout[i] * bt_km_unary_derivative(op, xi, yi, arg);
        dx[i] = beta == 0.0f ? d : dx[i] + d;
    }
}

void bt_cuda_unary_backward(bt_unary_op op, float *dx, const float *dout, const float *x,
                            const float *out, int64_t n, float arg, float beta) {
    if (n == 0) return;
    unary_backward_kernel<<<bt_blocks(n, BT_THREADS), BT_THREADS, 0, bt_cuda_stream()>>>(
        op, dx, dout, x, out, n, arg, beta);
    BT_CUDA_LAUNCHED("unary_backward_kernel");
}

__global__ void masked_fill_kernel(float *out, const float *x, const uint8_t *mask,
                                   struct bt_km_strides ms, struct bt_km_shape shape, int64_t n,
                                   float value) {
    BT_GRID_STRIDE(i, n) out[i] = mask[bt_km_offset(i, &shape, &ms)] ? value : x[i];
}

void bt_cuda_masked_fill(float *out, const float *x, const uint8_t *mask,
                         const int64_t *mask_strides, int ndim, const int64_t *shape,
                         float value) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= shape[d];
    if (n == 0) return;
    masked_fill_kernel<<<bt_blocks(n, BT_THREADS), BT_THREADS, 0, bt_cuda_stream()>>>(
        out, x, mask, bt_km_make_strides(ndim, mask_strides), bt_km_make_shape(ndim, shape), n,
        value);
    BT_CUDA_LAUNCHED("masked_fill_kernel");
}

__global__ void dropout_kernel(float *out, const float *x, int64_t n, float p, float scale,
                               uint64_t seed, uint64_t offset, float beta) {
    BT_GRID_STRIDE(i, n) {
        float d = bt_km_dropout(x[i], p, scale, seed, offset + (uint64_t)i);
        out[i] = beta == 0.0f ? d : out[i] + d;
    }
}

void bt_cuda_dropout(float *out, const float *x, int64_t n, float p, uint64_t seed,
                     uint64_t offset, float beta) {
    if (n == 0) return;
    dropout_kernel<<<bt_blocks(n, BT_THREADS), BT_THREADS, 0, bt_cuda_stream()>>>(
        out, x, n, p, 1.0f / (1.0f - p), seed, offset, beta);
    BT_CUDA_LAUNCHED("dropout_kernel");
}

/* one thread per (row, frequency) pair; rows are (b, h, t) of hs floats */
__global__ void rope_kernel(float *out, const float *x, int64_t rows, int64_t T, int64_t hs,
                            double theta, int64_t pos_offset, bool inverse) {
    int64_t half = hs / 2;
    BT_GRID_STRIDE(k, rows * half) {
        int64_t row = k / half, i = k % half, t = row % T;
        float c, s;
        bt_km_rope_angle(theta, i, hs, pos_offset + t, inverse, &c, &s);
        const float *x1 = x + row * hs + i;
        float a = x1[0], b = x1[half];
        out[row * hs + i] = a * c - b * s;
        out[row * hs + i + half] = b * c + a * s;
    }
}

void bt_cuda_rope(float *out, const float *x, int64_t B, int64_t NH, int64_t T, int64_t hs,
                  float theta, int64_t pos_offset, bool inverse) {
    int64_t rows = B * NH * T;
    if (rows == 0 || hs == 0) return;
    rope_kernel<<<bt_blocks(rows * (hs / 2), BT_THREADS), BT_THREADS, 0, bt_cuda_stream()>>>(
        out, x, rows, T, hs, (double)theta, pos_offset, inverse);
    BT_CUDA_LAUNCHED("rope_kernel");
}

__global__ void bias_fill_kernel(float *out, const float *bias, int64_t rows, int64_t cols) {
    BT_GRID_STRIDE(i, rows * cols) out[i] = bias[i % cols];
}

void bt_cuda_bias_fill(float *out, const float *bias, int64_t rows, int64_t cols) {
    if (rows * cols == 0) return;
    bias_fill_kernel<<<bt_blocks(rows * cols, BT_THREADS), BT_THREADS, 0, bt_cuda_stream()>>>(
        out, bias, rows, cols);
    BT_CUDA_LAUNCHED("bias_fill_kernel");
}
