/* What every CUDA kernel file of core/cuda/ shares: the process's stream and handles, launch
 * geometry, warp and block reductions in fixed order (results do not depend on timing), and a
 * scratch buffer for a kernel's temporaries. */
#ifndef BRAID_CORE_CUDA_COMMON_CUH
#define BRAID_CORE_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <stdint.h>

extern "C" { /* braid's C headers */
#include "core/backend.h"
#include "core/cuda/cuda.h"
}
#include "core/cuda/check.h"
#include "core/cuda/kernel_math.h"

/* the one stream all of braid's device work is queued on */
cudaStream_t bt_cuda_stream(void);
cublasLtHandle_t bt_cuda_cublaslt(void);
/* cuBLASLt's workspace */
void *bt_cuda_gemm_workspace(size_t *nbytes);
/* a device buffer of at least nbytes for temporaries of the calling backend function, valid
 * until the next call; stream order keeps earlier kernels' uses safe. NULL when out of memory. */
void *bt_cuda_scratch(size_t nbytes);

/* reads BRAID_CUDA_ATTENTION once (attention.cu); false with the reason for a value it does not
 * know */
bool bt_cuda_attention_kernel_from_env(char *why, size_t size);
/* Reads BRAID_CUDA_EPILOGUES (0, the default, or 1: cuBLASLt's bias and GELU epilogues for linear
 * layers); false with the reason for another value */
bool bt_cuda_epilogues_from_env(char *why, size_t size);

#define BT_THREADS 256

/* blocks for n elements at `threads` per block, capped (kernels loop grid-stride) */
static inline unsigned bt_blocks(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    if (b < 1) b = 1;
    return (unsigned)(b > 65535 * 8 ? 65535 * 8 : b);
}

#define BT_GRID_STRIDE(i, n)                                                                       \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                      \
         i += (int64_t)gridDim.x * blockDim.x)

__device__ static inline float bt_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ static inline double bt_warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ static inline float bt_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* sum of v over the block (blockDim.x a multiple of 32, at most 1024), returned to every thread;
 * `shared` holds 32 values. Order fixed by thread index. */
template <typename T> __device__ static inline T bt_block_sum(T v, T *shared) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads(); /* shared may still be read by a previous call */
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : (T)0;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ static inline float bt_block_max(float v, float *shared) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = bt_warp_max(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : -INFINITY;
    return bt_warp_max(v);
}

/* whether strides are the contiguous row-major ones of shape (size-1 dims ignored) */
static inline bool bt_strides_contiguous(int ndim, const int64_t *shape, const int64_t *strides) {
    int64_t expected = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        if (shape[d] != 1 && strides[d] != expected) return false;
        expected *= shape[d];
    }
    return true;
}

/* shapes and strides to a kernel by value */
static inline struct bt_km_shape bt_km_make_shape(int ndim, const int64_t *shape) {
    struct bt_km_shape s;
    s.ndim = ndim;
    for (int d = 0; d < ndim; d++)
        s.shape[d] = shape[d];
    return s;
}
static inline struct bt_km_strides bt_km_make_strides(int ndim, const int64_t *strides) {
    struct bt_km_strides s = {};
    for (int d = 0; d < ndim; d++)
        s.s[d] = strides[d];
    return s;
}

#endif
