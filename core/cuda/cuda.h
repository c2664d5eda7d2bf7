/* The CUDA backend as the rest of braid sees it: plain C, so core/ and launch/ call it without
 * nvcc. Built from the .cu files of core/cuda/ when nvcc is found; otherwise core/cuda/absent.c
 * answers every question with "not built". One process drives one device (cuda:N, N = its local
 * rank). */
#ifndef BRAID_CORE_CUDA_CUDA_H
#define BRAID_CORE_CUDA_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

#ifdef __cplusplus
extern "C" {
#endif

struct bt_backend;

bool bt_cuda_built(void); /* false where braid was built without nvcc */
/* BRAID_FAKE_CUDA=1 (a test double, for machines without a GPU): cuda:0 is the CPU's kernels on
 * host memory; BRAID_FAKE_CUDA=N (2..64) makes N such devices, one per process as real ones, so
 * that ranks pick theirs by local rank (any other value: the device refuses to start, naming it).
 * Every path above the kernels (placing a model, transfers, device step arenas, checkpoints of
 * device tensors, braid train --train.device=cuda, dp's buckets) runs as with a GPU, and the
 * numbers are the CPU's exactly. Collectives on its tensors go over MPI (host memory), not NCCL. It
 * is no faster than the cpu: it checks plumbing, it does not train anything. */
bool bt_fake_cuda(void);
int bt_fake_cuda_devices(void); /* N above; 0 when off */
int bt_fake_cuda_current(void); /* the fake device this process uses (0 before one is chosen) */
/* Devices this process can see; 0 with the reason in `why` (e.g. "cudaGetDeviceCount: no CUDA-
 * capable device is detected", or "braid was built without the CUDA backend"). */
int bt_cuda_device_count(char *why, size_t size);
/* The backend of cuda:index. The first call makes index this process's device (cudaSetDevice,
 * its stream, cuBLASLt); a later call for another index is an error. NULL with an error set
 * naming `op` when the device cannot be used. */
const struct bt_backend *bt_cuda_backend_for(int index, const char *op);
/* The device in use: -1 before the first bt_cuda_backend_for */
int bt_cuda_current_device(void);
/* "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" of the device in use, or "" */
const char *bt_cuda_device_description(char *buf, size_t size);
/* The process's compute stream (a cudaStream_t), for libraries that order their work after it
 * (NCCL in comm/); NULL before the device is in use */
void *bt_cuda_stream_handle(void);
/* Blocks for all the work queued on the device's stream; BT_ERR with the message of the first
 * failure on the device. An asynchronous fault (a bad address in a kernel) is reported by the
 * first call that meets it, not by the kernel that caused it: CUDA_LAUNCH_BLOCKING=1 finds that. */
bt_status bt_cuda_synchronize(void);

/* Attention's kernels on the device: one warp per query row, float32 (attention.cu, the
 * default); tiled, float32 (attention_tiled.cu, head sizes 64 and 128, others take the rows
 * kernels); batched cuBLASLt GEMMs around a row softmax (attention_gemm.cu, bf16 tensor cores
 * under train.dtype: bfloat16); or cuDNN's fused flash attention (attention_cudnn.cu, bf16 only:
 * float32 runs, and shapes cuDNN does not take, run the rows kernels).
 * BRAID_CUDA_ATTENTION=rows|tiled|gemm|cudnn chooses at start (another value: the device refuses
 * to start, naming it); the setter returns the previous choice. */
enum bt_cuda_attention_kernel {
    BT_CUDA_ATTENTION_ROWS,
    BT_CUDA_ATTENTION_TILED,
    BT_CUDA_ATTENTION_GEMM,
    BT_CUDA_ATTENTION_CUDNN,
};
enum bt_cuda_attention_kernel bt_cuda_set_attention_kernel(enum bt_cuda_attention_kernel kind);
/* how many attention calls (forward and backward) cuDNN's kernels have run in this process: the
 * rest of BRAID_CUDA_ATTENTION=cudnn's calls ran on the rows kernels */
int64_t bt_cuda_cudnn_attention_runs(void);

/* cuBLASLt's epilogues for linear layers: the bias, and bt_linear_gelu's GELU (with its input
 * kept for the backward), run inside the matmul instead of as kernels of their own. Off unless
 * BRAID_CUDA_EPILOGUES=1 (0 or 1; another value: the device refuses to start, naming it) until
 * they have run on a GPU. Shapes cuBLASLt has no such algorithm for run unfused. The setter
 * returns the previous setting. */
bool bt_cuda_set_epilogues(bool on);

/* The caching allocator: device memory is taken from the driver once and reused, so a
 * steady-state step calls cudaMalloc never. Step arenas sit on it (core/runtime.c). */
void *bt_cuda_malloc(size_t nbytes); /* NULL on failure (after freeing the cache and retrying) */
void bt_cuda_free(void *ptr);        /* back to the cache; NULL is fine */
struct bt_cuda_memory_stats {
    size_t in_use;           /* bytes handed out now */
    size_t peak_in_use;      /* most bytes handed out at once */
    size_t reserved;         /* bytes taken from the driver (in use + cached) */
    uint64_t device_mallocs; /* cudaMalloc calls over the process's life */
};
struct bt_cuda_memory_stats bt_cuda_memory_stats(void);

/* Releases the device's handles, stream and cached memory (before exit, for leak checkers). */
void bt_cuda_shutdown(void);

#ifdef __cplusplus
}
#endif

#endif
