/* The CPU kernel table, and the lookup from a device to its backend. */
#include <stdlib.h>
#include <string.h>

#include "core/cpu/kernels.h"
#include "core/cuda/cuda.h"
#include "core/error.h"

const struct bt_backend bt_cpu_backend = {
    .name = "cpu",
    .alloc = bt_cpu_alloc,
    .free = bt_cpu_free,
    .copy_strided = bt_cpu_copy_strided,
    .fill = bt_cpu_fill,
    .to_host = bt_cpu_to_host,
    .from_host = bt_cpu_from_host,
    .binary = bt_cpu_binary,
    .unary = bt_cpu_unary,
    .unary_backward = bt_cpu_unary_backward,
    .unary_with_grad = bt_cpu_unary_with_grad,
    .mul_grad = bt_cpu_mul_grad,
    .masked_fill = bt_cpu_masked_fill,
    .reduce = bt_cpu_reduce,
    .reduce_backward = bt_cpu_reduce_backward,
    .sum_to = bt_cpu_sum_to,
    .sum_squares = bt_cpu_sum_squares,
    .gemm = bt_cpu_gemm,
    .bias_fill = bt_cpu_bias_fill,
    .bias_backward = bt_cpu_bias_backward,
    .softmax = bt_cpu_softmax,
    .softmax_backward = bt_cpu_softmax_backward,
    .layernorm = bt_cpu_layernorm,
    .layernorm_backward = bt_cpu_layernorm_backward,
    .rmsnorm = bt_cpu_rmsnorm,
    .rmsnorm_backward = bt_cpu_rmsnorm_backward,
    .embedding = bt_cpu_embedding,
    .embedding_backward = bt_cpu_embedding_backward,
    .cross_entropy = bt_cpu_cross_entropy,
    .cross_entropy_backward = bt_cpu_cross_entropy_backward,
    .dropout = bt_cpu_dropout,
    .rope = bt_cpu_rope,
    .attention = bt_cpu_attention,
    .attention_backward = bt_cpu_attention_backward,
    .adamw = bt_cpu_adamw,
    .sgd = bt_cpu_sgd,
};

/* BRAID_FAKE_CUDA=1 (core/cuda/cuda.h): cuda:0 is these kernels on host memory */
bool bt_fake_cuda(void) {
    static int on = -1;
    if (on < 0) {
        const char *v = getenv("BRAID_FAKE_CUDA");
        on = v && *v && strcmp(v, "0") != 0;
    }
    return on;
}

static const struct bt_backend *fake_cuda_backend(int index, const char *op) {
    static struct bt_backend fake;
    if (index != 0) {
        bt_error("%s: device cuda:%d is not available: BRAID_FAKE_CUDA has cuda:0 only", op, index);
        return NULL;
    }
    if (!fake.name) {
        fake = bt_cpu_backend;
        fake.name = "cuda (fake: the CPU's kernels on host memory, BRAID_FAKE_CUDA)";
    }
    return &fake;
}

const struct bt_backend *bt_backend_for(bt_device device, const char *op) {
    if (device.type == BT_DEVICE_CPU) return &bt_cpu_backend;
    if (bt_fake_cuda()) return fake_cuda_backend(device.index, op);
    return bt_cuda_backend_for(device.index, op); /* core/cuda/ (absent.c when not built) */
}
