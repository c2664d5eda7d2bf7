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
    .linear_epilogue = bt_cpu_linear_epilogue,
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

/* BRAID_FAKE_CUDA=N (core/cuda/cuda.h): cuda:0 .. cuda:N-1 are these kernels on host memory */
static bool fake_env_bad; /* BRAID_FAKE_CUDA is set to something other than 0 or 1..64 */

int bt_fake_cuda_devices(void) {
    static int n = -1;
    if (n < 0) {
        const char *v = getenv("BRAID_FAKE_CUDA");
        char *end = NULL;
        long k = v && *v ? strtol(v, &end, 10) : 0;
        bool number = v && *v && *end == '\0';
        n = !v || !*v || (number && k == 0) ? 0 : number && k >= 1 && k <= 64 ? (int)k : 1;
        fake_env_bad = n > 0 && !(number && k >= 1 && k <= 64);
    }
    return n;
}

bool bt_fake_cuda(void) {
    return bt_fake_cuda_devices() > 0;
}

static int fake_current = -1; /* the fake device this process drives, once chosen */

int bt_fake_cuda_current(void) {
    return fake_current < 0 ? 0 : fake_current;
}

static const struct bt_backend *fake_cuda_backend(int index, const char *op) {
    static struct bt_backend fake;
    int n = bt_fake_cuda_devices();
    if (fake_env_bad) {
        bt_error("%s: BRAID_FAKE_CUDA=%s: expected 0 (off) or a number of fake devices, 1 to 64",
                 op, getenv("BRAID_FAKE_CUDA"));
        return NULL;
    }
    if (index < 0 || index >= n) {
        bt_error("%s: device cuda:%d is not available: BRAID_FAKE_CUDA=%d has cuda:0..%d", op,
                 index, n, n - 1);
        return NULL;
    }
    if (fake_current >= 0 && index != fake_current) {
        bt_error("%s: this process drives cuda:%d; cuda:%d was asked for (one device per process)",
                 op, fake_current, index);
        return NULL;
    }
    fake_current = index;
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
