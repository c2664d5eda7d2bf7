/* The CUDA backend against the CPU backend: every op's forward and backward on the same inputs
 * (float32: within 1e-5 of the output's largest element; bf16 matmuls: 2e-2), the caching
 * allocator and the device
 * step arena, errors on bad device use, and a few AdamW training steps of a small GPT and LLaMA
 * moved to the GPU with nn_module_to. Label gpu; where no GPU is visible the whole suite exits 77,
 * which CTest reports as "skipped", never as passed. */
#include <math.h>
#include <stdio.h>

#include "core/autograd.h"
#include "core/cuda/cuda.h"
#include "core/nn.h"
#include "core/optim.h"
#include "models/model.h"
#include "tests/gradcheck.h"
#include "tests/model_check.h"

#define FP32_TOL 1e-5
#define BF16_TOL 2e-2 /* bf16 keeps 8 bits of mantissa */

static bt_device gpu(void) {
    return bt_cuda(0);
}

/* max |a - b| <= tol * max |a| (+ a floor for all-zero tensors); a on the cpu, b anywhere */
static void assert_close(const char *what, bt_tensor *a, bt_tensor *b, double tol) {
    ck_assert_msg(a && b, "%s: missing tensor (%s)", what, bt_last_error());
    bt_tensor *hb = bt_to_device(b, bt_cpu());
    ck_assert_msg(hb && bt_same_shape(a, hb), "%s: shapes differ", what);
    double worst = 0.0, big = 0.0;
    int64_t at = 0;
    for (int64_t i = 0, n = bt_numel(a); i < n; i++) {
        double x = bt_get(a, i), y = bt_get(hb, i), d = fabs(x - y);
        if (!(d <= worst)) worst = d, at = i; /* NaN counts as worst */
        if (fabs(x) > big) big = fabs(x);
    }
    ck_assert_msg(worst <= tol * big + 1e-30,
                  "%s: max error %g at %lld (cpu %g, cuda %g), max |cpu| %g", what, worst,
                  (long long)at, bt_get(a, at), bt_get(hb, at), big);
}

typedef bt_tensor *(*op_fn)(bt_tensor **in, void *ctx);

/* runs fn on the cpu inputs and on copies of them on the gpu, then the backward of sum(out * w),
 * and compares outputs and every input's gradient */
static void twin(const char *name, op_fn fn, bt_tensor **cpu_in, int n, void *ctx, double tol) {
    bt_tensor *gpu_in[8];
    for (int i = 0; i < n; i++) {
        gpu_in[i] = bt_to_device(cpu_in[i], gpu());
        ck_assert_msg(gpu_in[i], "%s: input %d to cuda: %s", name, i, bt_last_error());
        if (cpu_in[i]->requires_grad) bt_requires_grad_(gpu_in[i], true);
    }
    bt_tensor *oc = fn(cpu_in, ctx), *og = fn(gpu_in, ctx);
    ck_assert_msg(oc && og, "%s: %s", name, bt_last_error());
    char what[96];
    snprintf(what, sizeof what, "%s forward", name);
    assert_close(what, oc, og, tol);
    bt_tensor *w = test_param(oc->ndim, oc->shape, 77, -1.0f, 1.0f);
    bt_requires_grad_(w, false);
    ck_assert_int_eq(bt_backward(bt_sum_all(bt_mul(oc, w))), BT_OK);
    ck_assert_msg(bt_backward(bt_sum_all(bt_mul(og, bt_to_device(w, gpu())))) == BT_OK, "%s: %s",
                  name, bt_last_error());
    for (int i = 0; i < n; i++) {
        if (!cpu_in[i]->requires_grad) continue;
        snprintf(what, sizeof what, "%s grad of input %d", name, i);
        assert_close(what, cpu_in[i]->grad, gpu_in[i]->grad, tol);
    }
}

static bt_tensor *op_add_broadcast(bt_tensor **in, void *ctx) {
    return bt_add(in[0], in[1]);
}
static bt_tensor *op_mul_div(bt_tensor **in, void *ctx) {
    return bt_div(bt_mul(in[0], in[1]), bt_add_scalar(bt_mul(in[1], in[1]), 1.0));
}
static bt_tensor *op_unaries(bt_tensor **in, void *ctx) {
    bt_tensor *x = in[0];
    bt_tensor *y = bt_add(bt_gelu(x, BT_GELU_TANH), bt_gelu(x, BT_GELU_EXACT));
    y = bt_add(y, bt_add(bt_silu(x), bt_relu(x)));
    y = bt_add(y, bt_add(bt_tanh(x), bt_exp(bt_mul_scalar(x, 0.5))));
    return bt_add(y, bt_sqrt(bt_add_scalar(bt_mul(x, x), 1.0)));
}
static bt_tensor *op_reductions(bt_tensor **in, void *ctx) {
    bt_tensor *x = in[0]; /* (4, 5, 6) */
    bt_tensor *a = bt_sum(x, 1, true), *b = bt_mean(x, 2, true), *c = bt_max(x, 0, true);
    return bt_add(bt_add(a, b), c); /* broadcast back to (4, 5, 6) */
}
static bt_tensor *op_matmul(bt_tensor **in, void *ctx) {
    return bt_matmul(in[0], in[1]); /* batched (3, 17, 33) @ (33, 9) */
}
static bt_tensor *op_matmul_transposed(bt_tensor **in, void *ctx) {
    return bt_matmul(bt_transpose(in[0], 1, 2), in[1]); /* (3, 33, 17)^T @ (3, 33, 9) */
}
static bt_tensor *op_linear(bt_tensor **in, void *ctx) {
    return bt_linear(in[0], in[1], in[2]);
}
static bt_tensor *op_linear_gelu(bt_tensor **in, void *ctx) {
    return bt_linear_gelu(in[0], in[1], ctx ? in[2] : NULL);
}
static bt_tensor *op_softmaxes(bt_tensor **in, void *ctx) {
    return bt_add(bt_softmax(in[0], -1), bt_log_softmax(in[0], 1));
}
static bt_tensor *op_layernorm(bt_tensor **in, void *ctx) {
    return bt_layernorm(in[0], in[1], in[2], 1e-5);
}
static bt_tensor *op_rmsnorm(bt_tensor **in, void *ctx) {
    return bt_rmsnorm(in[0], in[1], 1e-6);
}
static bt_tensor *op_embedding(bt_tensor **in, void *ctx) {
    return bt_embedding(in[0], in[1]);
}
static bt_tensor *op_cross_entropy(bt_tensor **in, void *ctx) {
    return bt_cross_entropy(in[0], in[1]);
}
static bt_tensor *op_linear_cross_entropy(bt_tensor **in, void *ctx) {
    return bt_linear_cross_entropy(in[0], in[1], in[2]);
}
static bt_tensor *op_rope(bt_tensor **in, void *ctx) {
    return bt_rope(in[0], 10000.0, 3);
}
static bt_tensor *op_attention(bt_tensor **in, void *ctx) {
    return bt_attention(in[0], in[1], in[2], *(bool *)ctx, 1.0 / sqrt((double)in[0]->shape[3]));
}
static bt_tensor *op_masked_fill(bt_tensor **in, void *ctx) {
    return bt_masked_fill(in[0], in[1], -3.0);
}

START_TEST(test_elementwise_ops_match_cpu) {
    bt_tensor *in[2] = {test_param(BT_SHAPE(4, 5, 6), 1, -2, 2),
                        test_param(BT_SHAPE(5, 1), 2, -2, 2)};
    twin("add (broadcast)", op_add_broadcast, in, 2, NULL, FP32_TOL);
    bt_tensor *in2[2] = {test_param(BT_SHAPE(300, 7), 3, -2, 2),
                         test_param(BT_SHAPE(300, 7), 4, -2, 2)};
    twin("mul/div", op_mul_div, in2, 2, NULL, FP32_TOL);
    bt_tensor *x = test_param(BT_SHAPE(1000, 33), 5, -4, 4);
    twin("unary ops", op_unaries, &x, 1, NULL, FP32_TOL);
    bt_tensor *mask = bt_empty(BT_SHAPE(1, 33), BT_BOOL, bt_cpu());
    for (int i = 0; i < 33; i++)
        bt_set(mask, i, i % 3 == 0);
    bt_tensor *in3[2] = {test_param(BT_SHAPE(40, 33), 6, -1, 1), mask};
    twin("masked_fill", op_masked_fill, in3, 2, NULL, FP32_TOL);
}
END_TEST

START_TEST(test_reductions_match_cpu) {
    bt_tensor *x = test_param(BT_SHAPE(4, 5, 6), 7, -3, 3);
    twin("sum/mean/max", op_reductions, &x, 1, NULL, FP32_TOL);
    bt_tensor *big = test_param(BT_SHAPE(3, 70000), 8, -1, 1);
    bt_tensor *c = bt_sum(big, 1, false), *g = bt_sum(bt_to_device(big, gpu()), 1, false);
    assert_close("sum of 70000-element rows", c, g, FP32_TOL);
}
END_TEST

START_TEST(test_matmuls_match_cpu) {
    bt_tensor *in[2] = {test_param(BT_SHAPE(3, 17, 33), 9, -1, 1),
                        test_param(BT_SHAPE(33, 9), 10, -1, 1)};
    twin("matmul batched x 2-d", op_matmul, in, 2, NULL, FP32_TOL);
    bt_tensor *in2[2] = {test_param(BT_SHAPE(3, 33, 17), 11, -1, 1),
                         test_param(BT_SHAPE(3, 33, 9), 12, -1, 1)};
    twin("matmul transposed", op_matmul_transposed, in2, 2, NULL, FP32_TOL);
    bt_tensor *in3[3] = {test_param(BT_SHAPE(2, 64, 384), 13, -1, 1),
                         test_param(BT_SHAPE(1152, 384), 14, -0.05f, 0.05f),
                         test_param(BT_SHAPE(1152), 15, -0.1f, 0.1f)};
    twin("linear (GPT's qkv shape)", op_linear, in3, 3, NULL, FP32_TOL);
}
END_TEST

START_TEST(test_softmax_and_norms_match_cpu) {
    bt_tensor *x = test_param(BT_SHAPE(6, 50, 70), 16, -5, 5);
    twin("softmax/log_softmax", op_softmaxes, &x, 1, NULL, FP32_TOL);
    bt_tensor *ln[3] = {test_param(BT_SHAPE(2, 30, 768), 17, -3, 3),
                        test_param(BT_SHAPE(768), 18, 0.5f, 1.5f),
                        test_param(BT_SHAPE(768), 19, -0.5f, 0.5f)};
    twin("layernorm", op_layernorm, ln, 3, NULL, FP32_TOL);
    bt_tensor *rn[2] = {test_param(BT_SHAPE(45, 100), 20, -3, 3),
                        test_param(BT_SHAPE(100), 21, 0.5f, 1.5f)};
    twin("rmsnorm", op_rmsnorm, rn, 2, NULL, FP32_TOL);
}
END_TEST

START_TEST(test_embedding_and_loss_match_cpu) {
    bt_tensor *idx = bt_empty(BT_SHAPE(4, 64), BT_I64, bt_cpu());
    for (int i = 0; i < 256; i++)
        bt_set(idx, i, (i * 37 + i / 5) % 50); /* repeats: the backward adds rows */
    bt_tensor *in[2] = {test_param(BT_SHAPE(50, 96), 22, -1, 1), idx};
    twin("embedding", op_embedding, in, 2, NULL, FP32_TOL);
    bt_tensor *targets = bt_empty(BT_SHAPE(256), BT_I64, bt_cpu());
    for (int i = 0; i < 256; i++)
        bt_set(targets, i, i % 11 == 0 ? -1 : (i * 13) % 1000); /* some rows ignored */
    bt_tensor *ce[2] = {test_param(BT_SHAPE(256, 1000), 23, -4, 4), targets};
    twin("cross_entropy", op_cross_entropy, ce, 2, NULL, FP32_TOL);
    /* the head and the loss without the logits: over a 40000-word vocabulary a chunk is 832
     * rows, so 2000 rows run as 832 + 832 + 336 */
    bt_tensor *t2000 = bt_empty(BT_SHAPE(2000), BT_I64, bt_cpu());
    for (int i = 0; i < 2000; i++)
        bt_set(t2000, i, i % 11 == 0 ? -1 : (i * 7919) % 40000);
    bt_tensor *lce[3] = {test_param(BT_SHAPE(2000, 64), 28, -1, 1),
                         test_param(BT_SHAPE(40000, 64), 29, -0.1f, 0.1f), t2000};
    twin("linear_cross_entropy", op_linear_cross_entropy, lce, 3, NULL, FP32_TOL);
}
END_TEST

START_TEST(test_rope_and_attention_match_cpu) {
    bt_tensor *x = test_param(BT_SHAPE(2, 3, 17, 16), 24, -1, 1);
    twin("rope", op_rope, &x, 1, NULL, FP32_TOL);
    for (int causal = 0; causal < 2; causal++) {
        bool c = causal;
        bt_tensor *in[3] = {test_param(BT_SHAPE(2, 4, 70, 64), 25, -1, 1),
                            test_param(BT_SHAPE(2, 2, 70, 64), 26, -1, 1), /* GQA */
                            test_param(BT_SHAPE(2, 2, 70, 64), 27, -1, 1)};
        twin(causal ? "attention causal" : "attention", op_attention, in, 3, &c, FP32_TOL);
    }
}
END_TEST

/* the tiled attention kernels (BRAID_CUDA_ATTENTION=tiled), then the GEMM ones (gemm): head
 * sizes 64 and 128 (the tiled kernels' two) and 24, T not a multiple of a tile, GQA, causal and
 * not; the GEMM ones in bf16 too */
static void attention_kernels_match_cpu(enum bt_cuda_attention_kernel kind, const char *what) {
    enum bt_cuda_attention_kernel was = bt_cuda_set_attention_kernel(kind);
    int64_t hs_of[3] = {64, 128, 24}, T_of[3] = {70, 40, 33};
    for (int k = 0; k < 3; k++)
        for (int causal = 0; causal < 2; causal++) {
            bool c = causal;
            int64_t hs = hs_of[k], T = T_of[k];
            for (int bf16 = 0; bf16 < (kind == BT_CUDA_ATTENTION_GEMM ? 2 : 1); bf16++) {
                /* fresh inputs each time: the cpu ones accumulate their gradients */
                bt_tensor *in[3] = {test_param(BT_SHAPE(2, 4, T, hs), 30 + k, -1, 1),
                                    test_param(BT_SHAPE(2, 2, T, hs), 33 + k, -1, 1),
                                    test_param(BT_SHAPE(2, 2, T, hs), 36 + k, -1, 1)};
                char name[80];
                snprintf(name, sizeof name, "%s attention%s hs %lld%s", what, bf16 ? " bf16" : "",
                         (long long)hs, causal ? " causal" : "");
                bt_set_matmul_dtype(bf16 ? BT_BF16 : BT_F32);
                twin(name, op_attention, in, 3, &c, bf16 ? BF16_TOL : FP32_TOL);
                bt_set_matmul_dtype(BT_F32);
            }
        }
    bt_cuda_set_attention_kernel(was);
}

/* cuDNN's fused attention (BRAID_CUDA_ATTENTION=cudnn) under bf16: head sizes 64 and 128 (T not a
 * multiple of a tile), GQA, causal and not, run by cuDNN (its run count says so); head size 20,
 * and float32 runs, fall back to the rows kernels */
START_TEST(test_cudnn_attention_matches_cpu) {
    enum bt_cuda_attention_kernel was = bt_cuda_set_attention_kernel(BT_CUDA_ATTENTION_CUDNN);
    int64_t hs_of[3] = {64, 128, 20}, T_of[3] = {70, 40, 33};
    for (int k = 0; k < 3; k++)
        for (int causal = 0; causal < 2; causal++)
            for (int bf16 = 0; bf16 < 2; bf16++) {
                bool c = causal;
                int64_t hs = hs_of[k], T = T_of[k];
                bt_tensor *in[3] = {test_param(BT_SHAPE(2, 4, T, hs), 40 + k, -1, 1),
                                    test_param(BT_SHAPE(2, 2, T, hs), 43 + k, -1, 1),
                                    test_param(BT_SHAPE(2, 2, T, hs), 46 + k, -1, 1)};
                char name[80];
                snprintf(name, sizeof name, "cudnn attention%s hs %lld%s", bf16 ? " bf16" : "",
                         (long long)hs, causal ? " causal" : "");
                int64_t runs = bt_cuda_cudnn_attention_runs();
                bt_set_matmul_dtype(bf16 ? BT_BF16 : BT_F32);
                twin(name, op_attention, in, 3, &c, bf16 ? BF16_TOL : FP32_TOL);
                bt_set_matmul_dtype(BT_F32);
                /* forward and backward on cuDNN exactly where it takes the call (the fake
                 * device runs the CPU's kernels: no cuDNN there) */
                int64_t want = !bt_fake_cuda() && bf16 && hs % 8 == 0 ? 2 : 0;
                ck_assert_msg(bt_cuda_cudnn_attention_runs() - runs == want,
                              "%s: cuDNN ran %lld of the forward and backward, expected %lld", name,
                              (long long)(bt_cuda_cudnn_attention_runs() - runs), (long long)want);
            }
    bt_cuda_set_attention_kernel(was);
}
END_TEST

START_TEST(test_tiled_attention_matches_cpu) {
    attention_kernels_match_cpu(BT_CUDA_ATTENTION_TILED, "tiled");
}
END_TEST

START_TEST(test_gemm_attention_matches_cpu) {
    attention_kernels_match_cpu(BT_CUDA_ATTENTION_GEMM, "gemm");
}
END_TEST

/* mixed precision: matmuls with bf16 operands and float32 sums, against the cpu's float32 */
START_TEST(test_bf16_matmuls_match_cpu) {
    bt_set_matmul_dtype(BT_BF16);
    bt_tensor *in[3] = {test_param(BT_SHAPE(2, 64, 384), 13, -1, 1),
                        test_param(BT_SHAPE(1152, 384), 14, -0.05f, 0.05f),
                        test_param(BT_SHAPE(1152), 15, -0.1f, 0.1f)};
    twin("bf16 linear", op_linear, in, 3, NULL, BF16_TOL);
    bt_tensor *in2[2] = {test_param(BT_SHAPE(3, 33, 17), 11, -1, 1),
                         test_param(BT_SHAPE(3, 33, 9), 12, -1, 1)};
    twin("bf16 matmul transposed", op_matmul_transposed, in2, 2, NULL, BF16_TOL);
    bt_set_matmul_dtype(BT_F32);
}
END_TEST

/* cuBLASLt's epilogues (BRAID_CUDA_EPILOGUES=1), then the same ops unfused: linear with a bias
 * (BIAS), linear_gelu with and without one (GELU_AUX_BIAS, GELU_AUX), and without autograd
 * (GELU_BIAS, no saved input); a width that is not a multiple of 8, which cuBLASLt's saved GELU
 * input cannot have (it runs unfused); float32 and bf16 matmuls */
START_TEST(test_linear_epilogues_match_cpu) {
    static int bias = 1;
    const int64_t widths[2] = {1536, 77};
    for (int on = 0; on < 2; on++) {
        bool was = bt_cuda_set_epilogues(on);
        for (int bf16 = 0; bf16 < 2; bf16++)
            for (int wi = 0; wi < 2; wi++) {
                double tol = bf16 ? BF16_TOL : FP32_TOL;
                int64_t F = widths[wi];
                char name[64];
                bt_tensor *in[3] = {test_param(BT_SHAPE(2, 64, 384), 40 + wi, -1, 1),
                                    test_param(BT_SHAPE(F, 384), 42 + wi, -0.05f, 0.05f),
                                    test_param(BT_SHAPE(F), 44 + wi, -0.1f, 0.1f)};
                bt_set_matmul_dtype(bf16 ? BT_BF16 : BT_F32);
                snprintf(name, sizeof name, "linear_gelu F=%lld%s%s", (long long)F,
                         bf16 ? " bf16" : "", on ? " epilogues" : "");
                twin(name, op_linear_gelu, in, 3, &bias, tol);
                bt_tensor *in2[2] = {test_param(BT_SHAPE(2, 64, 384), 46 + wi, -1, 1),
                                     test_param(BT_SHAPE(F, 384), 48 + wi, -0.05f, 0.05f)};
                twin(name, op_linear_gelu, in2, 2, NULL, tol);
                bt_tensor *in3[3] = {test_param(BT_SHAPE(2, 64, 384), 50 + wi, -1, 1),
                                     test_param(BT_SHAPE(F, 384), 52 + wi, -0.05f, 0.05f),
                                     test_param(BT_SHAPE(F), 54 + wi, -0.1f, 0.1f)};
                twin(name, op_linear, in3, 3, NULL, tol);
                bool grad = bt_set_grad_enabled(false);
                bt_tensor *c = bt_linear_gelu(in[0], in[1], in[2]);
                bt_tensor *g =
                    bt_linear_gelu(bt_to_device(in[0], gpu()), bt_to_device(in[1], gpu()),
                                   bt_to_device(in[2], gpu()));
                assert_close(name, c, g, tol);
                bt_set_grad_enabled(grad);
                bt_set_matmul_dtype(BT_F32);
                bt_step_end();
            }
        bt_cuda_set_epilogues(was);
    }
}
END_TEST

/* dropout draws the same mask on both devices: the counter-based RNG */
START_TEST(test_dropout_matches_cpu) {
    bt_tensor *x = test_param(BT_SHAPE(100, 100), 28, -1, 1);
    bt_manual_seed(5);
    bt_tensor *c = bt_dropout(x, 0.3, true);
    bt_manual_seed(5);
    bt_tensor *g = bt_dropout(bt_to_device(x, gpu()), 0.3, true);
    assert_close("dropout", c, g, 0.0);
}
END_TEST

/* step tensors on the device: after a warm-up step the arena makes no device allocation */
START_TEST(test_device_arena_and_cache_allocate_once) {
    for (int step = 0; step < 3; step++) {
        bt_tensor *a = bt_zeros(BT_SHAPE(1024, 1024), BT_F32, gpu());
        bt_tensor *b = bt_ones(BT_SHAPE(1024, 1024), BT_F32, gpu());
        ck_assert_ptr_nonnull(bt_add(a, b));
        ck_assert_double_eq(bt_item(bt_sum_all(bt_add(a, b))), 1024.0 * 1024.0);
        bt_step_end();
        if (step == 1) bt_runtime(); /* warm */
    }
    uint64_t before = bt_cuda_memory_stats().device_mallocs;
    for (int step = 0; step < 3; step++) {
        bt_tensor *a = bt_zeros(BT_SHAPE(1024, 1024), BT_F32, gpu());
        ck_assert_ptr_nonnull(bt_add_scalar(a, 1.0));
        bt_step_end();
    }
    ck_assert_uint_eq(bt_cuda_memory_stats().device_mallocs, before);
    /* persistent tensors: freed blocks are reused */
    bt_tensor *p = bt_tensor_new(BT_SHAPE(777, 3), BT_F32, gpu());
    bt_tensor_free(p);
    before = bt_cuda_memory_stats().device_mallocs;
    p = bt_tensor_new(BT_SHAPE(777, 3), BT_F32, gpu());
    ck_assert_uint_eq(bt_cuda_memory_stats().device_mallocs, before);
    bt_tensor_free(p);
}
END_TEST

START_TEST(test_device_errors_name_the_problem) {
    ck_assert_ptr_null(bt_zeros(BT_SHAPE(2), BT_F32, bt_cuda(7)));
    ck_assert_error_contains("cuda:7");
    bt_tensor *a = bt_zeros(BT_SHAPE(2, 2), BT_F32, gpu()),
              *b = bt_zeros(BT_SHAPE(2, 2), BT_F32, bt_cpu());
    ck_assert_ptr_null(bt_add(a, b));
    ck_assert_error_contains("cuda:0");
}
END_TEST

/* a few AdamW steps of a model on the cpu and the same model moved to the gpu: losses and
 * parameters agree (float32; the reassociation of sums compounds a little over the steps) */
static void train_twins(struct model_config cfg, bt_dtype matmul_dtype) {
    double tol = matmul_dtype == BT_BF16 ? BF16_TOL : 1e-5;
    struct model *mc = model_check_create(&cfg, 42), *mg = model_check_create(&cfg, 42);
    ck_assert_int_eq(nn_module_to(mg->root, gpu()), BT_OK);
    struct nn_param_list pc, pg;
    ck_assert_int_eq(nn_named_parameters(mc->root, &pc), BT_OK);
    ck_assert_int_eq(nn_named_parameters(mg->root, &pg), BT_OK);
    struct optim_config oc = optim_config_default(OPTIM_ADAMW);
    struct optim *opt_c = optim_create(&oc, &pc), *opt_g = optim_create(&oc, &pg);
    ck_assert_msg(opt_c && opt_g, "%s", bt_last_error());
    int64_t B = 2, T = cfg.block_size;
    for (int step = 0; step < 4; step++) {
        bt_tensor *idx = bt_empty(BT_SHAPE(B, T), BT_I64, bt_cpu());
        bt_tensor *tgt = bt_empty(BT_SHAPE(B, T), BT_I64, bt_cpu());
        for (int64_t i = 0; i < B * T; i++) {
            bt_set(idx, i, (i * 7 + step * 3) % cfg.vocab_size);
            bt_set(tgt, i, (i * 5 + step + 1) % cfg.vocab_size);
        }
        optim_zero_grad(opt_c);
        optim_zero_grad(opt_g);
        bt_tensor *lc = model_forward(mc, idx, tgt, NULL);
        bt_dtype was = bt_set_matmul_dtype(matmul_dtype);
        bt_tensor *lg = model_forward(mg, bt_to_device(idx, gpu()), bt_to_device(tgt, gpu()), NULL);
        ck_assert_msg(lc && lg, "%s", bt_last_error());
        double vc = bt_item(lc), vg = bt_item(lg);
        ck_assert_msg(fabs(vc - vg) <= tol * fabs(vc), "step %d: loss cpu %.9g cuda %.9g", step, vc,
                      vg);
        ck_assert_msg(bt_backward(lg) == BT_OK, "%s", bt_last_error());
        bt_set_matmul_dtype(was);
        ck_assert_int_eq(bt_backward(lc), BT_OK);
        double nc = optim_clip_grad_norm(pc.tensors, pc.count, 1.0);
        double ng = optim_clip_grad_norm(pg.tensors, pg.count, 1.0);
        ck_assert_msg(fabs(nc - ng) <= 10 * tol * nc, "step %d: grad norm cpu %g cuda %g", step, nc,
                      ng);
        ck_assert_int_eq(optim_step(opt_c, 1e-3), BT_OK);
        ck_assert_msg(optim_step(opt_g, 1e-3) == BT_OK, "%s", bt_last_error());
        bt_step_end();
    }
    for (int64_t i = 0; i < pc.count; i++) /* 4 updates of lr 1e-3 moved them little */
        assert_close(pc.names[i], pc.tensors[i], pg.tensors[i],
                     matmul_dtype == BT_BF16 ? 1e-2 : 1e-4);
    optim_free(opt_c);
    optim_free(opt_g);
    nn_param_list_free(&pc);
    nn_param_list_free(&pg);
    model_free(mc);
    model_free(mg);
}

START_TEST(test_gpt_training_steps_match_cpu) {
    train_twins(model_check_tiny_gpt(true, true, 61, 2), BT_F32);
}
END_TEST

START_TEST(test_gpt_bf16_training_steps_match_cpu) {
    train_twins(model_check_tiny_gpt(true, true, 61, 2), BT_BF16);
}
END_TEST

START_TEST(test_gpt_training_steps_with_epilogues_match_cpu) {
    bool was = bt_cuda_set_epilogues(true);
    train_twins(model_check_tiny_gpt(true, true, 61, 2), BT_F32);
    train_twins(model_check_tiny_gpt(true, true, 61, 2), BT_BF16);
    bt_cuda_set_epilogues(was);
}
END_TEST

START_TEST(test_llama_training_steps_match_cpu) {
    train_twins(model_check_tiny_llama(false, 61, 2), BT_F32);
}
END_TEST

static Suite *make_suite(void) {
    Suite *s = suite_create("gpu_ops");
    bt_suite_add(s, test_elementwise_ops_match_cpu);
    bt_suite_add(s, test_reductions_match_cpu);
    bt_suite_add(s, test_matmuls_match_cpu);
    bt_suite_add(s, test_softmax_and_norms_match_cpu);
    bt_suite_add(s, test_embedding_and_loss_match_cpu);
    bt_suite_add(s, test_rope_and_attention_match_cpu);
    bt_suite_add(s, test_tiled_attention_matches_cpu);
    bt_suite_add(s, test_gemm_attention_matches_cpu);
    bt_suite_add(s, test_cudnn_attention_matches_cpu);
    bt_suite_add(s, test_bf16_matmuls_match_cpu);
    bt_suite_add(s, test_linear_epilogues_match_cpu);
    bt_suite_add(s, test_dropout_matches_cpu);
    bt_suite_add(s, test_device_arena_and_cache_allocate_once);
    bt_suite_add(s, test_device_errors_name_the_problem);
    bt_suite_add(s, test_gpt_training_steps_match_cpu);
    bt_suite_add(s, test_gpt_bf16_training_steps_match_cpu);
    bt_suite_add(s, test_gpt_training_steps_with_epilogues_match_cpu);
    bt_suite_add(s, test_llama_training_steps_match_cpu);
    return s;
}

int main(void) {
    char why[256];
    if (bt_cuda_device_count(why, sizeof why) == 0) {
        printf("skipped: no CUDA device visible (%s)\n", why);
        return 77; /* CTest: SKIP_RETURN_CODE */
    }
    SRunner *runner = srunner_create(make_suite());
    /* no fork: CUDA, initialised above, cannot be used in a forked child (CTest runs each test
     * in a process of its own, CK_RUN_CASE) */
    srunner_set_fork_status(runner, CK_NOFORK);
    srunner_run_all(runner, CK_NORMAL);
    int failed = srunner_ntests_failed(runner);
    srunner_free(runner);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
