/* CUDA memory kernels: strided copies with dtype conversion, fills, host transfers. */
#include <string.h>

#include "core/cuda/kernels.cuh"

__global__ void copy_f32_kernel(float *dst, const float *src, int64_t n, struct bt_km_shape shape,
                                struct bt_km_strides strides) {
    BT_GRID_STRIDE(i, n) dst[i] = src[bt_km_offset(i, &shape, &strides)];
}

__global__ void copy_convert_kernel(void *dst, bt_dtype dst_dtype, const void *src,
                                    bt_dtype src_dtype, int64_t n, struct bt_km_shape shape,
                                    struct bt_km_strides strides) {
    BT_GRID_STRIDE(i, n)
    bt_store_at(dst, dst_dtype, i, bt_load_at(src, src_dtype, bt_km_offset(i, &shape, &strides)));
}

void bt_cuda_copy_strided(void *dst, bt_dtype dst_dtype, const void *src, bt_dtype src_dtype,
                              int ndim, const int64_t *shape, const int64_t *src_strides) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= shape[d];
    if (n == 0) return;
    if (dst_dtype == src_dtype && bt_strides_contiguous(ndim, shape, src_strides)) {
        BT_CUDA_CHECK(cudaMemcpyAsync(dst, src, (size_t)n * bt_dtype_size(src_dtype),
                                      cudaMemcpyDeviceToDevice, bt_cuda_stream()));
        return;
    }
    struct bt_km_shape sh = bt_km_make_shape(ndim, shape);
    struct bt_km_strides st = bt_km_make_strides(ndim, src_strides);
    if (dst_dtype == BT_F32 && src_dtype == BT_F32) {
        copy_f32_kernel<<<bt_blocks(n, BT_THREADS), BT_THREADS, 0, bt_cuda_stream()>>>(
            (float *)dst, (const float *)src, n, sh, st);
        BT_CUDA_LAUNCHED("copy_f32_kernel");
        return;
    }
    copy_convert_kernel<<<bt_blocks(n, BT_THREADS), BT_THREADS, 0, bt_cuda_stream()>>>(
        dst, dst_dtype, src, src_dtype, n, sh, st);
    BT_CUDA_LAUNCHED("copy_convert_kernel");
}

__global__ void fill_kernel(void *dst, bt_dtype dtype, int64_t n, double value) {
    BT_GRID_STRIDE(i, n) bt_store_at(dst, dtype, i, value);
}

void bt_cuda_fill(void *dst, bt_dtype dtype, int64_t n, double value) {
    if (n == 0) return;
    if (value == 0.0) { /* every dtype's zero is all-zero bytes */
        BT_CUDA_CHECK(
            cudaMemsetAsync(dst, 0, (size_t)n * bt_dtype_size(dtype), bt_cuda_stream()));
        return;
    }
    fill_kernel<<<bt_blocks(n, BT_THREADS), BT_THREADS, 0, bt_cuda_stream()>>>(dst, dtype, n,
                                                                                value);
    BT_CUDA_LAUNCHED("fill_kernel");
}

/* Both wait for the copy: the host buffer may be reused as soon as they return. A failed copy to
 * the host leaves 0xff bytes there (NaN as float, -1 as int64), never stale memory; the error is
 * set and the device marked unusable. */
void bt_cuda_to_host(void *host_dst, const void *src, size_t nbytes) {
    if (!nbytes) return;
    bool ok = bt_cuda_ok() && BT_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, nbytes,
                                                            cudaMemcpyDeviceToHost,
                                                            bt_cuda_stream())) &&
              BT_CUDA_CHECK(cudaStreamSynchronize(bt_cuda_stream()));
    if (!ok) memset(host_dst, 0xff, nbytes);
}

void bt_cuda_from_host(void *dst, const void *host_src, size_t nbytes) {
    if (!nbytes) return;
    if (BT_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, nbytes, cudaMemcpyHostToDevice,
                                      bt_cuda_stream())))
        BT_CUDA_CHECK(cudaStreamSynchronize(bt_cuda_stream()));
}

