/* softmax, log_softmax, layernorm and rmsnorm: forward values against PyTorch, finite-difference
 * gradient checks (middle and last dims, non-contiguous inputs, optional weight/bias, gradients
 * accumulated from two uses) and the messages of bad inputs. */
#include <math.h>

#include "tests/gradcheck.h"

/* x[i] = 3 sin(1.3 i) (2,3,4), computed in double, rounded to float (as in the PyTorch script) */
static bt_tensor *sine_input(void) {
    float v[24];
    for (int i = 0; i < 24; i++)
        v[i] = (float)(sin(1.3 * i) * 3.0);
    return bt_from_data(BT_SHAPE(2, 3, 4), BT_F32, v);
}

START_TEST(test_softmax_forward_values) {
    bt_tensor *x = sine_input();
    bt_tensor *s = bt_softmax(x, 1), *ls = bt_log_softmax(x, -1);
    ck_assert_ptr_nonnull(s);
    ck_assert_ptr_nonnull(ls);
    /* PyTorch 1.13: torch.softmax(x, 1) and torch.log_softmax(x, -1), x = 3 sin(1.3 i) (2,3,4) */
    const double es[24] = {0.8664926,  0.8996517, 0.1663714,  0.005764918, 0.06119648,
                           0.09526792, 0.7086405, 0.1182008,  0.07231084,  0.005080361,
                           0.1249882,  0.8760344, 0.05032161, 0.004830622, 0.272595,
                           0.9484659,  0.5908483, 0.05662425, 0.08663803,  0.04382233,
                           0.3588301,  0.9385451, 0.6407669,  0.007711719};
    const double els[24] = {-3.170841,  -0.2801664, -1.624337,  -5.234139,  -5.852293,   -2.556569,
                            -0.2062989, -2.244634,  -5.619686,  -5.422157,  -1.875705,   -0.1758906,
                            -1.725355,  -4.835988,  -3.863115,  -0.2319965, -0.06317161, -3.175467,
                            -5.810304,  -4.10764,   -0.8146648, -0.6203565, -4.06216,    -6.097825};
    for (int i = 0; i < 24; i++) {
        ck_assert_double_eq_tol(bt_get(s, i), es[i], 1e-5);
        ck_assert_double_eq_tol(bt_get(ls, i), els[i], 1e-5);
    }
}
END_TEST

START_TEST(test_softmax_large_values_stable) {
    float v[] = {1000, 1001, 1002};
    bt_tensor *x = bt_from_data(BT_SHAPE(3), BT_F32, v);
    bt_tensor *s = bt_softmax(x, 0), *ls = bt_log_softmax(x, 0);
    /* PyTorch: softmax([1000,1001,1002]) and log_softmax of the same */
    const double es[] = {0.09003057, 0.2447285, 0.6652409},
                 els[] = {-2.407606, -1.407606, -0.4076059};
    for (int i = 0; i < 3; i++) {
        ck_assert_double_eq_tol(bt_get(s, i), es[i], 1e-6);
        ck_assert_double_eq_tol(bt_get(ls, i), els[i], 1e-5);
    }
}
END_TEST

struct softmax_case {
    const char *name;
    bool log;
    int dim;
};
static const struct softmax_case softmax_cases[] = {
    {"softmax dim 1", false, 1},      {"softmax dim -1", false, -1},
    {"softmax dim 0", false, 0},      {"log_softmax dim 1", true, 1},
    {"log_softmax dim -1", true, -1}, {"log_softmax dim 0", true, 0},
};

static bt_tensor *apply_softmax(const struct softmax_case *c, bt_tensor *x) {
    return c->log ? bt_log_softmax(x, c->dim) : bt_softmax(x, c->dim);
}

static bt_tensor *fn_softmax(bt_tensor **in, void *ctx) {
    return apply_softmax(ctx, in[0]);
}

START_TEST(test_softmax_gradients) {
    const struct softmax_case *c = &softmax_cases[_i];
    bt_tensor *in[1] = {test_param(BT_SHAPE(2, 3, 4), 10 + (uint64_t)_i, -2, 2)};
    GRADCHECK(c->name, fn_softmax, in, 1, (void *)c);
}
END_TEST

/* the input is a transposed view of the leaf (4,3) -> (3,4) */
static bt_tensor *fn_softmax_transposed(bt_tensor **in, void *ctx) {
    return apply_softmax(ctx, bt_transpose(in[0], 0, 1));
}

START_TEST(test_softmax_gradient_noncontiguous) {
    const struct softmax_case *c = &softmax_cases[_i];
    if (c->dim == 1) return; /* the (3,4) view has dims 0 and 1 = -1 only */
    bt_tensor *in[1] = {test_param(BT_SHAPE(4, 3), 30 + (uint64_t)_i, -2, 2)};
    GRADCHECK(c->name, fn_softmax_transposed, in, 1, (void *)c);
}
END_TEST

/* x used twice: the second backward accumulates into x's gradient (beta = 1) */
static bt_tensor *fn_softmax_twice(bt_tensor **in, void *ctx) {
    return bt_add(bt_softmax(in[0], 1), bt_log_softmax(in[0], 1));
}

START_TEST(test_softmax_gradient_accumulates) {
    bt_tensor *in[1] = {test_param(BT_SHAPE(3, 5), 40, -2, 2)};
    GRADCHECK("softmax + log_softmax", fn_softmax_twice, in, 1, NULL);
}
END_TEST

START_TEST(test_softmax_bad_inputs) {
    bt_tensor *xi = bt_zeros(BT_SHAPE(2, 3), BT_I32, bt_cpu());
    ck_assert_ptr_null(bt_softmax(xi, 0));
    ck_assert_error_contains("softmax: input must be float32, got int32 (2,3)");
    bt_tensor *x = bt_zeros(BT_SHAPE(2, 3), BT_F32, bt_cpu());
    ck_assert_ptr_null(bt_log_softmax(x, 2));
    ck_assert_error_contains("log_softmax: dimension 2 out of range for (2,3)");
    ck_assert_ptr_null(bt_softmax(x, -3));
    ck_assert_error_contains("softmax: dimension -3 out of range for (2,3)");
    ck_assert_ptr_null(bt_softmax(NULL, 0));
    ck_assert_error_contains("softmax: argument 1 is NULL");
    /* a NULL from a failed op keeps the first message */
    ck_assert_ptr_null(bt_log_softmax(bt_softmax(x, 5), 0));
    ck_assert_error_contains("softmax: dimension 5 out of range for (2,3)");
}
END_TEST

/* ---- layernorm and rmsnorm ---- */

/* x[i] = 2 cos(0.7 i) + 0.5 (2,5); weight and bias as in the PyTorch script */
static bt_tensor *cosine_input(void) {
    float v[10];
    for (int i = 0; i < 10; i++)
        v[i] = (float)(cos(0.7 * i) * 2.0 + 0.5);
    return bt_from_data(BT_SHAPE(2, 5), BT_F32, v);
}
static const float norm_weight[5] = {0.5f, -1.0f, 2.0f, 1.5f, 0.25f};
static const float norm_bias[5] = {0.1f, 0.2f, -0.3f, 0.0f, 1.0f};

START_TEST(test_layernorm_forward_values) {
    bt_tensor *x = cosine_input();
    bt_tensor *w = bt_from_data(BT_SHAPE(5), BT_F32, norm_weight);
    bt_tensor *b = bt_from_data(BT_SHAPE(5), BT_F32, norm_bias);
    bt_tensor *y = bt_layernorm(x, w, b, 1e-5), *plain = bt_layernorm(x, NULL, NULL, 1e-5);
    ck_assert_ptr_nonnull(y);
    ck_assert_ptr_nonnull(plain);
    /* PyTorch: F.layer_norm(x, (5,), w, b, 1e-5) and F.layer_norm(x, (5,), None, None, 1e-5) */
    const double ey[10] = {0.7130246,  -0.7065693, -0.1032267,  -1.227597, 0.6468483,
                           -0.6105342, 1.013426,   -0.08355506, 1.365618,  1.303965};
    const double ep[10] = {1.226049,  0.9065693,  0.09838667, -0.8183981, -1.412607,
                           -1.421068, -0.8134264, 0.1082225,  0.9104121,  1.21586};
    for (int i = 0; i < 10; i++) {
        ck_assert_double_eq_tol(bt_get(y, i), ey[i], 1e-5);
        ck_assert_double_eq_tol(bt_get(plain, i), ep[i], 1e-5);
    }
}
END_TEST

START_TEST(test_rmsnorm_forward_values) {
    bt_tensor *x = cosine_input();
    bt_tensor *w = bt_from_data(BT_SHAPE(5), BT_F32, norm_weight);
    bt_tensor *y = bt_rmsnorm(x, w, 1e-6);
    ck_assert_ptr_nonnull(y);
    /* PyTorch: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w */
    const double ey[10] = {0.7678229,  -1.24675,  1.031873, -0.469624, -0.2126017,
                           -0.4203614, 0.2942542, 1.069218, 1.884059,  0.3826843};
    for (int i = 0; i < 10; i++)
        ck_assert_double_eq_tol(bt_get(y, i), ey[i], 1e-5);
    /* without weight: the weighted result divided by w */
    bt_tensor *plain = bt_rmsnorm(x, NULL, 1e-6);
    for (int i = 0; i < 10; i++)
        ck_assert_double_eq_tol(bt_get(plain, i), ey[i] / norm_weight[i % 5], 1e-5);
}
END_TEST

/* in = {x, weight, bias}; ctx selects which of weight and bias are passed (bit 0 weight, bit 1
 * bias) */
static bt_tensor *fn_layernorm(bt_tensor **in, void *ctx) {
    int which = *(const int *)ctx;
    return bt_layernorm(in[0], (which & 1) ? in[1] : NULL, (which & 2) ? in[2] : NULL, 1e-5);
}

START_TEST(test_layernorm_gradients) {
    static const int which[] = {3, 0, 1, 2};
    static const char *names[] = {"layernorm(x, w, b)", "layernorm(x)", "layernorm(x, w)",
                                  "layernorm(x, NULL, b)"};
    bt_tensor *in[3] = {test_param(BT_SHAPE(3, 6), 50 + (uint64_t)_i, -2, 2),
                        test_param(BT_SHAPE(6), 60 + (uint64_t)_i, 0.5f, 1.5f),
                        test_param(BT_SHAPE(6), 70 + (uint64_t)_i, -1, 1)};
    if (!(which[_i] & 1)) bt_requires_grad_(in[1], false);
    if (!(which[_i] & 2)) bt_requires_grad_(in[2], false);
    GRADCHECK(names[_i], fn_layernorm, in, 3, (void *)&which[_i]);
    if (which[_i] & 1) ck_assert_ptr_nonnull(in[1]->grad);
    if (which[_i] & 2) ck_assert_ptr_nonnull(in[2]->grad);
}
END_TEST

/* a 3-D transposed view (2,3,5) -> (5,3,2), used twice so every gradient is accumulated once (beta
 * = 1) */
static bt_tensor *fn_layernorm_view_twice(bt_tensor **in, void *ctx) {
    bt_tensor *xt = bt_transpose(in[0], 0, 2);
    return bt_add(bt_layernorm(xt, in[1], in[2], 1e-5), bt_layernorm(xt, in[1], in[2], 1e-5));
}

START_TEST(test_layernorm_gradient_noncontiguous_accumulates) {
    bt_tensor *in[3] = {test_param(BT_SHAPE(2, 3, 5), 80, -2, 2),
                        test_param(BT_SHAPE(2), 81, 0.5f, 1.5f),
                        test_param(BT_SHAPE(2), 82, -1, 1)};
    GRADCHECK("layernorm(transpose) twice", fn_layernorm_view_twice, in, 3, NULL);
}
END_TEST

static bt_tensor *fn_rmsnorm(bt_tensor **in, void *ctx) {
    return bt_rmsnorm(in[0], ctx ? in[1] : NULL, 1e-6);
}

static bt_tensor *fn_rmsnorm_view_twice(bt_tensor **in, void *ctx) {
    bt_tensor *xt = bt_transpose(in[0], 0, 1);
    return bt_add(bt_rmsnorm(xt, in[1], 1e-6), bt_rmsnorm(xt, in[1], 1e-6));
}

START_TEST(test_rmsnorm_gradients) {
    bt_tensor *in[2] = {test_param(BT_SHAPE(4, 7), 90, -2, 2),
                        test_param(BT_SHAPE(7), 91, 0.5f, 1.5f)};
    GRADCHECK("rmsnorm(x, w)", fn_rmsnorm, in, 2, (void *)1);
    bt_tensor *plain[2] = {test_param(BT_SHAPE(2, 3, 5), 92, -2, 2), NULL};
    GRADCHECK("rmsnorm(x)", fn_rmsnorm, plain, 1, NULL);
    bt_tensor *view[2] = {test_param(BT_SHAPE(6, 3), 93, -2, 2),
                          test_param(BT_SHAPE(6), 94, 0.5f, 1.5f)};
    GRADCHECK("rmsnorm(transpose) twice", fn_rmsnorm_view_twice, view, 2, NULL);
}
END_TEST

START_TEST(test_norm_bad_inputs) {
    bt_tensor *x = bt_zeros(BT_SHAPE(4, 8), BT_F32, bt_cpu());
    bt_tensor *w7 = bt_ones(BT_SHAPE(7), BT_F32, bt_cpu());
    bt_tensor *w8 = bt_ones(BT_SHAPE(8), BT_F32, bt_cpu());
    ck_assert_ptr_null(bt_layernorm(x, w7, NULL, 1e-5));
    ck_assert_error_contains("layernorm: weight (7) does not match input (4,8) last dim 8");
    ck_assert_ptr_null(bt_layernorm(x, w8, w7, 1e-5));
    ck_assert_error_contains("layernorm: bias (7) does not match input (4,8) last dim 8");
    bt_tensor *w2d = bt_ones(BT_SHAPE(1, 8), BT_F32, bt_cpu());
    ck_assert_ptr_null(bt_layernorm(x, w2d, NULL, 1e-5));
    ck_assert_error_contains("layernorm: weight (1,8) does not match input (4,8) last dim 8");
    bt_tensor *wi = bt_ones(BT_SHAPE(8), BT_I64, bt_cpu());
    ck_assert_ptr_null(bt_layernorm(x, wi, NULL, 1e-5));
    ck_assert_error_contains("layernorm: weight must be float32, got int64 (8)");
    ck_assert_ptr_null(bt_layernorm(x, NULL, wi, 1e-5));
    ck_assert_error_contains("layernorm: bias must be float32, got int64 (8)");
    bt_tensor *xi = bt_zeros(BT_SHAPE(4, 8), BT_I32, bt_cpu());
    ck_assert_ptr_null(bt_layernorm(xi, NULL, NULL, 1e-5));
    ck_assert_error_contains("layernorm: input must be float32, got int32 (4,8)");
    ck_assert_ptr_null(bt_layernorm(bt_scalar(1.0), NULL, NULL, 1e-5));
    ck_assert_error_contains("layernorm: input must have at least 1 dimension, got ()");
    ck_assert_ptr_null(bt_layernorm(x, NULL, NULL, -1.0));
    ck_assert_error_contains("layernorm: eps must be >= 0, got -1");
    ck_assert_ptr_null(bt_layernorm(NULL, w8, NULL, 1e-5));
    ck_assert_error_contains("layernorm: argument 1 is NULL");

    ck_assert_ptr_null(bt_rmsnorm(x, w7, 1e-6));
    ck_assert_error_contains("rmsnorm: weight (7) does not match input (4,8) last dim 8");
    ck_assert_ptr_null(bt_rmsnorm(x, wi, 1e-6));
    ck_assert_error_contains("rmsnorm: weight must be float32, got int64 (8)");
    ck_assert_ptr_null(bt_rmsnorm(xi, NULL, 1e-6));
    ck_assert_error_contains("rmsnorm: input must be float32, got int32 (4,8)");
    ck_assert_ptr_null(bt_rmsnorm(bt_scalar(1.0), NULL, 1e-6));
    ck_assert_error_contains("rmsnorm: input must have at least 1 dimension, got ()");
    ck_assert_ptr_null(bt_rmsnorm(x, NULL, NAN));
    ck_assert_error_contains("rmsnorm: eps must be >= 0, got nan");
    ck_assert_ptr_null(bt_rmsnorm(NULL, NULL, 1e-6));
    ck_assert_error_contains("rmsnorm: argument 1 is NULL");
    /* a failed earlier op keeps its message */
    ck_assert_ptr_null(bt_rmsnorm(bt_layernorm(x, w7, NULL, 1e-5), w8, 1e-6));
    ck_assert_error_contains("layernorm: weight (7) does not match");
}
END_TEST

static Suite *softmax_norm_suite(void) {
    Suite *s = suite_create("softmax_norm");
    int n_softmax = (int)(sizeof(softmax_cases) / sizeof(softmax_cases[0]));
    bt_suite_add(s, test_softmax_forward_values);
    bt_suite_add(s, test_softmax_large_values_stable);
    bt_suite_add_loop(s, test_softmax_gradients, 0, n_softmax);
    bt_suite_add_loop(s, test_softmax_gradient_noncontiguous, 0, n_softmax);
    bt_suite_add(s, test_softmax_gradient_accumulates);
    bt_suite_add(s, test_softmax_bad_inputs);
    bt_suite_add(s, test_layernorm_forward_values);
    bt_suite_add(s, test_rmsnorm_forward_values);
    bt_suite_add_loop(s, test_layernorm_gradients, 0, 4);
    bt_suite_add(s, test_layernorm_gradient_noncontiguous_accumulates);
    bt_suite_add(s, test_rmsnorm_gradients);
    bt_suite_add(s, test_norm_bad_inputs);
    return s;
}

BT_TEST_MAIN(softmax_norm_suite)
