/* The CUDA backend's interface where braid was built without nvcc: nothing is visible, and every
 * request for a device says why. */
#include "core/cuda/cuda.h"

#include <stdio.h>

static const char *not_built = "braid was built without the CUDA backend (nvcc was not found)";

bool bt_cuda_built(void) {
    return false;
}

int bt_cuda_device_count(char *why, size_t size) {
    if (bt_fake_cuda()) return bt_fake_cuda_devices();
    if (why && size) snprintf(why, size, "%s", not_built);
    return 0;
}

const struct bt_backend *bt_cuda_backend_for(int index, const char *op) {
    bt_error("%s: device cuda:%d is not available: %s", op, index, not_built);
    return NULL;
}

int bt_cuda_current_device(void) {
    return bt_fake_cuda() ? bt_fake_cuda_current() : -1;
}

const char *bt_cuda_device_description(char *buf, size_t size) {
    if (buf && size)
        snprintf(buf, size, "%s",
                 bt_fake_cuda() ? "fake CUDA device: the CPU's kernels on host memory "
                                  "(BRAID_FAKE_CUDA)"
                                : "");
    return buf;
}

void *bt_cuda_stream_handle(void) {
    return NULL;
}

bt_status bt_cuda_synchronize(void) {
    return BT_OK;
}

void *bt_cuda_malloc(size_t nbytes) {
    (void)nbytes;
    return NULL;
}

void bt_cuda_free(void *ptr) {
    (void)ptr;
}

struct bt_cuda_memory_stats bt_cuda_memory_stats(void) {
    return (struct bt_cuda_memory_stats){0, 0, 0, 0};
}

enum bt_cuda_attention_kernel bt_cuda_set_attention_kernel(enum bt_cuda_attention_kernel kind) {
    (void)kind;
    return BT_CUDA_ATTENTION_ROWS;
}

int64_t bt_cuda_cudnn_attention_runs(void) {
    return 0;
}

bool bt_cuda_set_epilogues(bool on) {
    (void)on;
    return false;
}

void bt_cuda_shutdown(void) {}
