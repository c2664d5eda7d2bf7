/* bench_gpu: GPT-2 124M (L12 H12 C768 T1024, V 50304, tied, no bias) trained with AdamW on the
 * CUDA device in float32 through braid's core API (the model built by models/, moved with
 * nn_module_to): median tokens/s of the steady-state steps, MFU against the float32 matmul rate
 * braid measures on the device first (cuBLASLt, the model's largest GEMM), and the caching
 * allocator's peak. Run by bench/gpu.sh on a lent GPU; prints "skipped" and exits 0 without one.
 * With DTYPE bfloat16 the matmuls take bf16 operands (train.dtype: bfloat16), and MFU is against
 * the bf16 matmul rate.   usage: bench_gpu [STEPS [BATCH [float32|bfloat16]]] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "core/autograd.h"
#include "core/cuda/cuda.h"
#include "core/nn.h"
#include "core/optim.h"
#include "core/runtime.h"
#include "models/model.h"

static void die(const char *what) {
    fprintf(stderr, "bench_gpu: %s: %s\n", what, bt_last_error());
    exit(1);
}

/* matmul rate (the runtime's matmul dtype) of (M,K) x (K,N) on the device, GFLOP/s: the median of
 * 10 timed runs */
static double matmul_rate(int64_t M, int64_t K, int64_t N) {
    bt_tensor *a = bt_tensor_new(BT_SHAPE(M, K), BT_F32, bt_cuda(0));
    bt_tensor *b = bt_tensor_new(BT_SHAPE(K, N), BT_F32, bt_cuda(0));
    if (!a || !b) die("matmul operands");
    bt_fill(a, 1.0);
    bt_fill(b, 1.0);
    double t[10];
    for (int i = 0; i < 13; i++) {
        bt_cuda_synchronize();
        double t0 = bench_now();
        if (!bt_matmul(a, b)) die("matmul");
        bt_cuda_synchronize();
        if (i >= 3) t[i - 3] = bench_now() - t0;
        bt_step_end(); /* the output; a and b are persistent */
    }
    bt_tensor_free(a);
    bt_tensor_free(b);
    return 2.0 * (double)M * (double)K * (double)N / bench_median(t, 10) / 1e9;
}

int main(int argc, char **argv) {
    int steps = argc > 1 ? atoi(argv[1]) : 30;
    int64_t B = argc > 2 ? atoll(argv[2]) : 8, T = 1024;
    const char *dtype = argc > 3 ? argv[3] : "float32";
    if (steps < 2 || B < 1) { /* the median needs a step after the warm-up */
        fprintf(stderr, "bench_gpu: STEPS must be >= 2 and BATCH >= 1, got %d and %lld\n", steps,
                (long long)B);
        return 2;
    }
    if (strcmp(dtype, "float32") != 0 && strcmp(dtype, "bfloat16") != 0) {
        fprintf(stderr, "bench_gpu: DTYPE must be float32 or bfloat16, got '%s'\n", dtype);
        return 2;
    }
    char why[256], desc[256];
    if (bt_cuda_device_count(why, sizeof why) == 0) {
        printf("bench_gpu: skipped: no CUDA device visible (%s)\n", why);
        return 0;
    }
    struct model_config cfg = {.arch = MODEL_GPT,
                               .vocab_size = 50304,
                               .block_size = T,
                               .n_layer = 12,
                               .n_head = 12,
                               .n_kv_head = 12,
                               .n_embd = 768,
                               .ffn_hidden = 3072,
                               .dropout = 0.0,
                               .bias = false,
                               .gelu = BT_GELU_TANH,
                               .norm_eps = 1e-5,
                               .tie_embeddings = true};
    struct model *m = model_create(&cfg, 1337);
    if (!m || nn_module_to(m->root, bt_cuda(0)) != BT_OK) die("model");
    printf("command: bench_gpu %d %lld %s   device: %s\n", steps, (long long)B, dtype,
           bt_cuda_device_description(desc, sizeof desc));
    if (strcmp(dtype, "bfloat16") == 0) bt_set_matmul_dtype(BT_BF16);
    double peak = matmul_rate(B * T, 768, 3072);
    struct nn_param_list params;
    if (nn_named_parameters(m->root, &params) != BT_OK) die("parameters");
    struct optim_config oc = optim_config_default(OPTIM_ADAMW);
    struct optim *opt = optim_create(&oc, &params);
    if (!opt) die("optimizer");
    bt_tensor *idx = bt_empty(BT_SHAPE(B, T), BT_I64, bt_cpu());
    bt_tensor *tgt = bt_empty(BT_SHAPE(B, T), BT_I64, bt_cpu());
    double *dt = malloc(sizeof(double) * (size_t)steps), loss = 0.0;
    int warmup = steps > 10 ? 5 : 1;
    for (int s = 0; s < steps; s++) {
        for (int64_t i = 0; i < B * T; i++) { /* the host batch persists across steps */
            ((int64_t *)bt_data(idx))[i] = (i * 7919 + s * 104729) % cfg.vocab_size;
            ((int64_t *)bt_data(tgt))[i] = (i * 6271 + s * 1299709 + 1) % cfg.vocab_size;
        }
        bt_cuda_synchronize();
        double t0 = bench_now();
        optim_zero_grad(opt);
        bt_tensor *l =
            model_forward(m, bt_to_device(idx, bt_cuda(0)), bt_to_device(tgt, bt_cuda(0)), NULL);
        if (!l || bt_backward(l) != BT_OK) die("step");
        optim_clip_grad_norm(params.tensors, params.count, 1.0);
        if (optim_step(opt, 3e-4) != BT_OK) die("optim_step");
        loss = bt_item(l); /* syncs, as a training loop reading its loss does */
        if (bt_cuda_synchronize() != BT_OK) die("synchronize");
        dt[s] = bench_now() - t0;
        bt_step_end();
    }
    double med = bench_median(dt + warmup, steps - warmup), tps = (double)(B * T) / med;
    double flops = model_flops_per_token(m, T);
    struct bt_cuda_memory_stats mem = bt_cuda_memory_stats();
    printf("%s matmul rate (cuBLASLt, (%lld,768)x(768,3072)): %.1f TFLOP/s\n", dtype,
           (long long)(B * T), peak / 1e3);
    printf("braid %s %s: median tokens/s %.0f, step %.1f ms, mfu %.1f%% of that rate, "
           "last loss %.4f, peak device memory %.0f MiB (reserved %.0f MiB, %llu cudaMalloc)\n",
           BRAID_VERSION, dtype, tps, med * 1e3, 100.0 * tps * flops / (peak * 1e9), loss,
           (double)mem.peak_in_use / (1 << 20), (double)mem.reserved / (1 << 20),
           (unsigned long long)mem.device_mallocs);
    free(dt);
    optim_free(opt);
    nn_param_list_free(&params);
    model_free(m);
    bt_runtime_shutdown();
    return 0;
}
