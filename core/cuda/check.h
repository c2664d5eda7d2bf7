/* One checking macro per library: each names the call that failed, with the library's own error
 * string, in braid's error message, and marks the device unusable (every later op on it fails
 * with that message instead of running on a broken context). They evaluate to true when the call
 * succeeded. NCCL's is in comm/. */
#ifndef BRAID_CORE_CUDA_CHECK_H
#define BRAID_CORE_CUDA_CHECK_H

#include <cuda_runtime.h>

#include <stdio.h>

#include "core/cuda/cublaslt.h"
#include "core/cuda/cudnn_api.h"

extern "C" {
#include "core/error.h"
}

bool bt_cuda_failed_(const char *library, const char *call, const char *what, const char *file,
                     int line);
/* A backend function that cannot do its work (no algorithm, a size the kernel does not take, no
 * scratch): its output is not written, so the device is marked unusable with this message, and
 * every later op fails with it. Returns false. */
bool bt_cuda_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* no failure so far (host copies check it before using what they copied) */
bool bt_cuda_ok(void);

static inline bool bt_cuda_check_(cudaError_t e, const char *call, const char *file, int line) {
    return e == cudaSuccess || bt_cuda_failed_("CUDA", call, cudaGetErrorString(e), file, line);
}
static inline bool bt_cublas_check_(cublasStatus_t e, const char *call, const char *file,
                                    int line) {
    return e == CUBLAS_STATUS_SUCCESS ||
           bt_cuda_failed_("cuBLAS", call, cublasLtGetStatusString(e), file, line);
}

/* cuDNN's status string and, where it has one, its message for the last failed call (which
 * attribute or shape it rejected) */
static inline bool bt_cudnn_check_(cudnnStatus_t e, const char *call, const char *file, int line) {
    if (e == CUDNN_STATUS_SUCCESS) return true;
    char detail[400] = "", what[520];
    cudnnGetLastErrorString(detail, sizeof detail);
    snprintf(what, sizeof what, "%s%s%s", cudnnGetErrorString(e), detail[0] ? ": " : "", detail);
    return bt_cuda_failed_("cuDNN", call, what, file, line);
}

#define BT_CUDA_CHECK(call) bt_cuda_check_((call), #call, __FILE__, __LINE__)
#define BT_CUBLAS_CHECK(call) bt_cublas_check_((call), #call, __FILE__, __LINE__)
#define BT_CUDNN_CHECK(call) bt_cudnn_check_((call), #call, __FILE__, __LINE__)
/* after a kernel launch: the launch's own error (bad geometry, no kernel image for this GPU) */
#define BT_CUDA_LAUNCHED(kernel_name)                                                              \
    bt_cuda_check_(cudaGetLastError(), kernel_name " launch", __FILE__, __LINE__)

#endif
