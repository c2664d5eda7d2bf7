/* Elementwise ops: forward values, gradient checks (with broadcasting and non-contiguous views),
 * and the messages of bad inputs. */
#include <math.h>

#include "core/cpu/fastmath.h"
#include "core/cpu/kernels.h"
#include "core/cpu/vecmath.h"
#include "tests/gradcheck.h"

static bt_tensor *fn_add(bt_tensor **in, void *ctx) {
    return bt_add(in[0], in[1]);
}
static bt_tensor *fn_sub(bt_tensor **in, void *ctx) {
    return bt_sub(in[0], in[1]);
}
static bt_tensor *fn_mul(bt_tensor **in, void *ctx) {
    return bt_mul(in[0], in[1]);
}
static bt_tensor *fn_div(bt_tensor **in, void *ctx) {
    return bt_div(in[0], in[1]);
}

START_TEST(test_add_forward_broadcast) {
    float a[] = {1, 2, 3, 4, 5, 6};
    float b[] = {10, 20, 30};
    bt_tensor *x = bt_from_data(BT_SHAPE(2, 3), BT_F32, a);
    bt_tensor *y = bt_from_data(BT_SHAPE(3), BT_F32, b);
    bt_tensor *z = bt_add(x, y);
    ck_assert_ptr_nonnull(z);
    ck_assert_int_eq(z->ndim, 2);
    float expect[] = {11, 22, 33, 14, 25, 36};
    for (int i = 0; i < 6; i++)
        ck_assert_float_eq(bt_get(z, i), expect[i]);
}
END_TEST

START_TEST(test_binary_gradients_broadcast) {
    gradcheck_fn fns[] = {fn_add, fn_sub, fn_mul, fn_div};
    const char *names[] = {"add", "sub", "mul", "div"};
    for (int k = 0; k < 4; k++) {
        bt_tensor *in[2] = {test_param(BT_SHAPE(2, 3, 4), 1 + k, -1, 1),
                            test_param(BT_SHAPE(3, 1), 7 + k, 0.5f, 1.5f)};
        GRADCHECK(names[k], fns[k], in, 2, NULL);
        /* the other way round: the broadcast operand first, and a leading broadcast dim */
        bt_tensor *in2[2] = {test_param(BT_SHAPE(1, 4), 3 + k, 0.5f, 1.5f),
                             test_param(BT_SHAPE(2, 3, 4), 5 + k, 0.5f, 1.5f)};
        GRADCHECK(names[k], fns[k], in2, 2, NULL);
    }
}
END_TEST

static bt_tensor *fn_mul_transposed(bt_tensor **in, void *ctx) {
    return bt_mul(bt_transpose(in[0], 0, 1), in[1]);
}

START_TEST(test_binary_gradient_noncontiguous) {
    bt_tensor *in[2] = {test_param(BT_SHAPE(4, 3), 11, -1, 1),
                        test_param(BT_SHAPE(3, 4), 12, -1, 1)};
    GRADCHECK("mul(transpose)", fn_mul_transposed, in, 2, NULL);
}
END_TEST

struct unary_case {
    const char *name;
    bt_tensor *(*op)(bt_tensor *);
    float low, high;
};
static bt_tensor *gelu_tanh(bt_tensor *x) {
    return bt_gelu(x, BT_GELU_TANH);
}
static bt_tensor *gelu_exact(bt_tensor *x) {
    return bt_gelu(x, BT_GELU_EXACT);
}
static bt_tensor *pow3(bt_tensor *x) {
    return bt_pow(x, 3.0);
}
static bt_tensor *pow_half(bt_tensor *x) {
    return bt_pow(x, 0.5);
}
static bt_tensor *add_s(bt_tensor *x) {
    return bt_add_scalar(x, 2.5);
}
static bt_tensor *mul_s(bt_tensor *x) {
    return bt_mul_scalar(x, -1.5);
}
static const struct unary_case unary_cases[] = {
    {"neg", bt_neg, -1, 1},
    {"exp", bt_exp, -1, 1},
    {"log", bt_log, 0.5f, 2},
    {"tanh", bt_tanh, -2, 2},
    {"sqrt", bt_sqrt, 0.5f, 2},
    {"rsqrt", bt_rsqrt, 0.5f, 2},
    {"pow3", pow3, -1, 1},
    {"pow0.5", pow_half, 0.5f, 2},
    {"add_scalar", add_s, -1, 1},
    {"mul_scalar", mul_s, -1, 1},
    {"relu", bt_relu, -1, 1},
    {"gelu_tanh", gelu_tanh, -3, 3},
    {"gelu_exact", gelu_exact, -3, 3},
    {"silu", bt_silu, -3, 3},
};

static bt_tensor *fn_unary(bt_tensor **in, void *ctx) {
    return ((const struct unary_case *)ctx)->op(in[0]);
}

START_TEST(test_unary_gradients) {
    const struct unary_case *c = &unary_cases[_i];
    bt_tensor *in[1] = {test_param(BT_SHAPE(3, 5), 100 + (uint64_t)_i, c->low, c->high)};
    GRADCHECK(c->name, fn_unary, in, 1, (void *)c);
}
END_TEST

START_TEST(test_unary_forward_values) {
    float v[] = {-1.0f, 0.5f, 2.0f};
    bt_tensor *x = bt_from_data(BT_SHAPE(3), BT_F32, v);
    bt_tensor *ge = bt_gelu(x, BT_GELU_EXACT), *gt = bt_gelu(x, BT_GELU_TANH), *s = bt_silu(x);
    /* PyTorch: F.gelu([-1,.5,2]) = [-0.158655, 0.345731, 1.954500];
     * approximate='tanh': [-0.158808, 0.345714, 1.954598]; silu: [-0.268941, 0.311230, 1.761594] */
    double ex[] = {-0.158655, 0.345731, 1.954500}, et[] = {-0.158808, 0.345714, 1.954598},
           es[] = {-0.268941, 0.311230, 1.761594};
    for (int i = 0; i < 3; i++) {
        ck_assert_double_eq_tol(bt_get(ge, i), ex[i], 1e-5);
        ck_assert_double_eq_tol(bt_get(gt, i), et[i], 1e-5);
        ck_assert_double_eq_tol(bt_get(s, i), es[i], 1e-5);
    }
}
END_TEST

static bt_tensor *fn_masked_fill(bt_tensor **in, void *ctx) {
    return bt_masked_fill(in[0], (bt_tensor *)ctx, -3.0);
}

START_TEST(test_masked_fill) {
    uint8_t m[] = {1, 0, 0, 1};
    bt_tensor *mask = bt_from_data(BT_SHAPE(1, 4), BT_BOOL, m);
    bt_tensor *in[1] = {test_param(BT_SHAPE(3, 4), 21, -1, 1)};
    bt_tensor *y = bt_masked_fill(in[0], mask, -3.0);
    ck_assert_float_eq(bt_get(y, 0), -3.0f);
    ck_assert_float_eq(bt_get(y, 5), bt_get(in[0], 5));
    GRADCHECK("masked_fill", fn_masked_fill, in, 1, mask);
}
END_TEST

START_TEST(test_binary_bad_shapes) {
    bt_tensor *a = bt_zeros(BT_SHAPE(4, 8), BT_F32, bt_cpu());
    bt_tensor *b = bt_zeros(BT_SHAPE(7, 3), BT_F32, bt_cpu());
    ck_assert_ptr_null(bt_add(a, b));
    ck_assert_error_contains("add: shapes (4,8) and (7,3) cannot be broadcast");
}
END_TEST

START_TEST(test_binary_bad_dtype) {
    bt_tensor *a = bt_zeros(BT_SHAPE(2), BT_F32, bt_cpu());
    bt_tensor *b = bt_zeros(BT_SHAPE(2), BT_I32, bt_cpu());
    ck_assert_ptr_null(bt_mul(a, b));
    ck_assert_error_contains("mul: second operand must be float32, got int32 (2)");
}
END_TEST

START_TEST(test_error_propagates_first_message) {
    bt_tensor *a = bt_zeros(BT_SHAPE(4, 8), BT_F32, bt_cpu());
    bt_tensor *b = bt_zeros(BT_SHAPE(7, 3), BT_F32, bt_cpu());
    bt_tensor *y = bt_relu(bt_exp(bt_sub(a, b))); /* the chain keeps the first failure */
    ck_assert_ptr_null(y);
    ck_assert_error_contains("sub: shapes (4,8) and (7,3)");
    ck_assert_ptr_null(bt_exp(NULL));
    ck_assert_error_contains("exp: argument 1 is NULL");
}
END_TEST

START_TEST(test_masked_fill_bad_mask) {
    bt_tensor *x = bt_zeros(BT_SHAPE(2, 3), BT_F32, bt_cpu());
    bt_tensor *m = bt_zeros(BT_SHAPE(2, 3), BT_F32, bt_cpu());
    ck_assert_ptr_null(bt_masked_fill(x, m, 0));
    ck_assert_error_contains("masked_fill: mask must be bool, got float32 (2,3)");
    bt_tensor *big = bt_zeros(BT_SHAPE(4, 2, 3), BT_BOOL, bt_cpu());
    ck_assert_ptr_null(bt_masked_fill(x, big, 0));
    ck_assert_error_contains("masked_fill: mask (4,2,3) must broadcast to the input's shape (2,3)");
}
END_TEST

START_TEST(test_fast_exp_matches_libm) {
    /* bt_fast_expf (vectorisable) against libm's expf over the range kernels use */
    double worst = 0.0;
    for (float x = -87.0f; x <= 88.0f; x += 0.00731f) {
        double ref = exp((double)x), rel = fabs(bt_fast_expf(x) - ref) / ref;
        if (rel > worst) worst = rel;
    }
    ck_assert_msg(worst < 3e-7, "fast exp relative error %g", worst); /* ~2.5 ulp of float */
    ck_assert_float_eq(bt_fast_expf(0.0f), 1.0f);
    ck_assert(bt_fast_expf(-1000.0f) < 1e-37f); /* clamped, no garbage */
    ck_assert(isfinite(bt_fast_expf(1000.0f)));
    for (float u = -10.0f; u <= 10.0f; u += 0.01f)
        ck_assert_msg(fabsf(bt_fast_tanhf(u) - tanhf(u)) < 2e-7f, "tanh(%g)", u);
}
END_TEST

/* GELU-tanh and SiLU and their derivatives in double, for the vectorised kernels' check */
static double ref_activation(bool gelu, double x, bool derivative) {
    if (gelu) {
        double k = sqrt(2.0 / M_PI), u = k * (x + 0.044715 * x * x * x), t = tanh(u);
        if (!derivative) return 0.5 * x * (1.0 + t);
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x);
    }
    double s = 1.0 / (1.0 + exp(-x));
    return derivative ? s * (1.0 + x * (1.0 - s)) : x * s;
}

START_TEST(test_activation_kernels_every_length) {
    /* the vector kernels (core/cpu/vecmath.h, BT_CPU_DISPATCH picks this machine's ISA) at
     * lengths that end in a partial vector, cross a span of work (4096) and run in parallel, over
     * [-100, 100]: far past where exp saturates; backward overwriting (beta 0) and accumulating.
     * f' to 5e-6: in float, 1 - tanh(u)^2 is 0 once |tanh(u)| rounds to 1 (PyTorch's too).
     * Then the same for the kernels training uses, which save f'(x) in the forward. */
    const int64_t lengths[] = {1, 7, 15, 16, 17, 33, 4095, 4097, 40000};
    const bt_unary_op ops[] = {BT_UN_GELU_TANH, BT_UN_SILU};
    for (int o = 0; o < 2; o++)
        for (size_t li = 0; li < sizeof(lengths) / sizeof(lengths[0]); li++) {
            int64_t n = lengths[li];
            float *x = malloc((size_t)n * sizeof(float)), *y = malloc((size_t)n * sizeof(float));
            float *g = malloc((size_t)n * sizeof(float)), *dx = malloc((size_t)n * sizeof(float));
            for (int64_t i = 0; i < n; i++) {
                x[i] = n == 1 ? 0.5f : -100.0f + 200.0f * (float)i / (float)(n - 1);
                g[i] = 1.0f + 0.25f * (float)(i % 3);
                dx[i] = 2.0f;
            }
            bool gelu = ops[o] == BT_UN_GELU_TANH;
            bt_cpu_unary(ops[o], y, x, n, 0.0f);
            bt_cpu_unary_backward(ops[o], dx, g, x, y, n, 0.0f, 1.0f); /* 2 + g f'(x) */
            for (int64_t i = 0; i < n; i++) {
                double fx = ref_activation(gelu, x[i], false);
                double dfx = 2.0 + g[i] * ref_activation(gelu, x[i], true);
                ck_assert_msg(fabs(y[i] - fx) <= 1e-6 + 1e-6 * fabs(fx),
                              "op %d n %lld: f(%g) = %g, want %g", o, (long long)n, x[i], y[i], fx);
                ck_assert_msg(fabs(dx[i] - dfx) <= 5e-6 + 1e-6 * fabs(dfx),
                              "op %d n %lld: 2 + g f'(%g) = %g, want %g", o, (long long)n, x[i],
                              dx[i], dfx);
            }
            bt_cpu_unary_backward(ops[o], dx, g, x, y, n, 0.0f, 0.0f); /* overwrite */
            for (int64_t i = 0; i < n; i++) {
                double dfx = g[i] * ref_activation(gelu, x[i], true);
                ck_assert_msg(fabs(dx[i] - dfx) <= 5e-6 + 1e-6 * fabs(dfx),
                              "op %d n %lld: g f'(%g) = %g, want %g", o, (long long)n, x[i], dx[i],
                              dfx);
            }
            /* the training path: f and f' in one pass, then the backward's multiply; the same
             * floats as the recomputing kernels above */
            float *y2 = malloc((size_t)n * sizeof(float)), *d = malloc((size_t)n * sizeof(float));
            float *dx2 = malloc((size_t)n * sizeof(float));
            ck_assert(bt_cpu_unary_with_grad(ops[o], y2, d, x, n));
            for (int64_t i = 0; i < n; i++) { /* the same expressions: equal up to contraction */
                ck_assert_msg(fabsf(y2[i] - y[i]) <= 1e-7f + 1e-6f * fabsf(y[i]),
                              "op %d n %lld: fused f(%g) = %g, unfused %g", o, (long long)n, x[i],
                              y2[i], y[i]);
                dx2[i] = 2.0f;
            }
            bt_cpu_mul_grad(dx2, g, d, n, 1.0f); /* 2 + g f'(x) */
            for (int64_t i = 0; i < n; i++) {
                double dfx = 2.0 + g[i] * ref_activation(gelu, x[i], true);
                ck_assert_msg(fabs(dx2[i] - dfx) <= 5e-6 + 1e-6 * fabs(dfx),
                              "op %d n %lld: saved 2 + g f'(%g) = %g, want %g", o, (long long)n,
                              x[i], dx2[i], dfx);
            }
            bt_cpu_mul_grad(dx2, g, d, n, 0.0f); /* overwrite */
            for (int64_t i = 0; i < n; i++)
                ck_assert_msg(fabsf(dx2[i] - dx[i]) <= 1e-7f + 1e-6f * fabsf(dx[i]),
                              "op %d n %lld: saved g f'(%g) = %g, recomputed %g", o, (long long)n,
                              x[i], dx2[i], dx[i]);
            free(x), free(y), free(g), free(dx), free(y2), free(d), free(dx2);
        }
}
END_TEST

START_TEST(test_activation_saved_derivative_accumulates) {
    /* on the CPU a recorded GELU-tanh or SiLU saves f'(x) in its forward: its output matches the
     * no-grad forward's, and its gradient adds into one that other uses of x wrote first */
    enum { N = 4099 }; /* more than a span of work, ending in a partial vector */
    bt_tensor *x = test_param(BT_SHAPE(N), 7, -6.0f, 6.0f);
    bool mode = bt_set_grad_enabled(false);
    bt_tensor *plain_g = bt_gelu(x, BT_GELU_TANH), *plain_s = bt_silu(x);
    bt_set_grad_enabled(mode);
    bt_tensor *g = bt_gelu(x, BT_GELU_TANH), *s = bt_silu(x);
    ck_assert_ptr_nonnull(g->grad_fn);
    ck_assert_ptr_nonnull(s->grad_fn);
    ck_assert_msg(g->grad_fn->saved[1] && s->grad_fn->saved[1], "f'(x) was not saved");
    for (int64_t i = 0; i < N; i++) {
        ck_assert_float_eq_tol(bt_get(g, i), bt_get(plain_g, i), 1e-6 * (1.0 + fabs(bt_get(g, i))));
        ck_assert_float_eq_tol(bt_get(s, i), bt_get(plain_s, i), 1e-6 * (1.0 + fabs(bt_get(s, i))));
    }
    bt_tensor *loss = bt_add(bt_add(bt_sum(bt_mul_scalar(x, 3.0), 0, false), bt_sum(g, 0, false)),
                             bt_sum(s, 0, false));
    ck_assert_int_eq(bt_backward(loss), BT_OK);
    for (int64_t i = 0; i < N; i++) {
        double xi = bt_get(x, i);
        double want = 3.0 + ref_activation(true, xi, true) + ref_activation(false, xi, true);
        ck_assert_msg(fabs(bt_get(x->grad, i) - want) <= 1e-5 * (1.0 + fabs(want)),
                      "x = %g: grad %g, want %g", xi, bt_get(x->grad, i), want);
    }
}
END_TEST

START_TEST(test_vector_exp_equals_scalar) {
    /* bt_vf_exp is bt_fast_expf lane by lane, clamps included */
    enum { N = 16 }; /* whole vectors */
    _Static_assert(N % BT_VL == 0, "the inputs fill whole vectors");
    float in[N] = {-1000.0f, -87.5f, -87.0f, -20.0f, -1.0f, -1e-8f, 0.0f,  1e-8f,
                   0.5f,     1.0f,   10.0f,  44.3f,  87.9f, 88.0f,  88.5f, 1000.0f};
    float out[N];
    for (int i = 0; i < N; i += BT_VL)
        bt_vf_store(out + i, bt_vf_exp(bt_vf_load(in + i)));
    for (int i = 0; i < N; i++) {
        float want = bt_fast_expf(in[i]);
        ck_assert_msg(fabsf(out[i] - want) <= 2e-7f * want, "exp(%g) = %g, scalar %g", in[i],
                      out[i], want);
    }
}
END_TEST

static Suite *elementwise_suite(void) {
    Suite *s = suite_create("elementwise");
    bt_suite_add(s, test_add_forward_broadcast);
    bt_suite_add(s, test_binary_gradients_broadcast);
    bt_suite_add(s, test_binary_gradient_noncontiguous);
    bt_suite_add_loop(s, test_unary_gradients, 0,
                      (int)(sizeof(unary_cases) / sizeof(unary_cases[0])));
    bt_suite_add(s, test_unary_forward_values);
    bt_suite_add(s, test_activation_saved_derivative_accumulates);
    bt_suite_add(s, test_fast_exp_matches_libm);
    bt_suite_add(s, test_activation_kernels_every_length);
    bt_suite_add(s, test_vector_exp_equals_scalar);
    bt_suite_add(s, test_masked_fill);
    bt_suite_add(s, test_binary_bad_shapes);
    bt_suite_add(s, test_binary_bad_dtype);
    bt_suite_add(s, test_error_propagates_first_message);
    bt_suite_add(s, test_masked_fill_bad_mask);
    return s;
}

BT_TEST_MAIN(elementwise_suite)
