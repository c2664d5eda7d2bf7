/* CPU memory kernels: allocation, strided copies with dtype conversion, fills. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/cpu/kernels.h"
#include "core/dtype_convert.h"

#define COPY_PARALLEL_MIN 65536 /* elements: below this a strided copy stays on one thread */

void *bt_cpu_alloc(size_t nbytes) {
    return aligned_alloc(64, (nbytes + 63) & ~(size_t)63);
}

void bt_cpu_free(void *ptr) {
    free(ptr);
}

static bool strides_contiguous(int ndim, const int64_t *shape, const int64_t *strides) {
    int64_t expected = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        if (shape[d] != 1 && strides[d] != expected) return false;
        expected *= shape[d];
    }
    return true;
}

void bt_cpu_copy_strided(void *dst, bt_dtype dst_dtype, const void *src, bt_dtype src_dtype,
                         int ndim, const int64_t *shape, const int64_t *src_strides) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= shape[d];
    if (n == 0) return;
    size_t src_size = bt_dtype_size(src_dtype), dst_size = bt_dtype_size(dst_dtype);
    if (dst_dtype == src_dtype && strides_contiguous(ndim, shape, src_strides)) {
        memcpy(dst, src, (size_t)n * src_size);
        return;
    }
    /* Rows of the innermost dim, walked in row-major order; threads take blocks of rows, each
     * starting its index counter at its first row. */
    int64_t inner = ndim ? shape[ndim - 1] : 1, inner_stride = ndim ? src_strides[ndim - 1] : 1;
    int64_t rows = n / inner;
#pragma omp parallel if (n >= COPY_PARALLEL_MIN && rows > 1)
    {
        int threads = omp_get_num_threads(), me = omp_get_thread_num();
        int64_t r0 = rows * me / threads, r1 = rows * (me + 1) / threads;
        int64_t index[BT_MAX_DIMS] = {0};
        for (int64_t rem = r0, d = ndim - 2; d >= 0; d--) {
            index[d] = rem % shape[d];
            rem /= shape[d];
        }
        char *out = (char *)dst + r0 * inner * (int64_t)dst_size;
        for (int64_t r = r0; r < r1; r++) {
            int64_t off = 0;
            for (int d = 0; d < ndim - 1; d++)
                off += index[d] * src_strides[d];
            const char *in = (const char *)src + off * (int64_t)src_size;
            if (dst_dtype == BT_F32 && src_dtype == BT_F32) {
                float *o = (float *)out;
                const float *s = (const float *)in;
                for (int64_t j = 0; j < inner; j++)
                    o[j] = s[j * inner_stride];
            } else {
                for (int64_t j = 0; j < inner; j++)
                    bt_store_from_double(
                        out + j * (int64_t)dst_size, dst_dtype,
                        bt_load_as_double(in + j * inner_stride * (int64_t)src_size, src_dtype));
            }
            out += inner * (int64_t)dst_size;
            for (int d = ndim - 2; d >= 0; d--) {
                if (++index[d] < shape[d]) break;
                index[d] = 0;
            }
        }
    }
}

void bt_cpu_fill(void *dst, bt_dtype dtype, int64_t n, double value) {
    if (value == 0.0) { /* zeroing gradients: big ones split over the threads */
        size_t bytes = (size_t)n * bt_dtype_size(dtype), chunk = (size_t)1 << 20;
        int64_t chunks = (int64_t)((bytes + chunk - 1) / chunk);
#pragma omp parallel for schedule(static) if (chunks >= 4)
        for (int64_t c = 0; c < chunks; c++) {
            size_t at = (size_t)c * chunk;
            memset((char *)dst + at, 0, bytes - at < chunk ? bytes - at : chunk);
        }
        return;
    }
    if (dtype == BT_F32) {
        float *p = dst, v = (float)value;
        for (int64_t i = 0; i < n; i++)
            p[i] = v;
        return;
    }
    size_t size = bt_dtype_size(dtype);
    for (int64_t i = 0; i < n; i++)
        bt_store_from_double((char *)dst + i * (int64_t)size, dtype, value);
}

void bt_cpu_to_host(void *host_dst, const void *src, size_t nbytes) {
    if (nbytes) memcpy(host_dst, src, nbytes);
}

void bt_cpu_from_host(void *dst, const void *host_src, size_t nbytes) {
    if (nbytes) memcpy(dst, host_src, nbytes);
}
