/* Rotary position embedding: forward against values from PyTorch (Hugging Face Llama's
 * apply_rotary_pos_emb), against a naive double-precision loop on shapes that take the parallel and
 * chunked paths, the relative-position property, gradient checks and the messages of bad inputs. */
#include <math.h>

#include "core/cpu/kernels.h"
#include "tests/gradcheck.h"

/* x[i] = sin(0.37 i + 0.1), row-major: the same input the PyTorch script builds */
static bt_tensor *sine_input(int ndim, const int64_t *shape) {
    bt_tensor *x = bt_empty(ndim, shape, BT_F32, bt_cpu());
    for (int64_t i = 0, n = bt_numel(x); i < n; i++)
        bt_set(x, i, sin(0.37 * (double)i + 0.1));
    return x;
}

/* Expected values printed by (torch 1.13, /usr/bin/python3):
 *
 * import math, torch
 * def rotate_half(x):
 *     x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
 *     return torch.cat((-x2, x1), dim=-1)
 * def rope(x, theta, pos_offset):
 *     B, NH, T, hs = x.shape
 *     inv_freq = 1.0 / (theta ** (torch.arange(0, hs, 2, dtype=torch.float64) / hs))
 *     pos = torch.arange(pos_offset, pos_offset + T, dtype=torch.float64)
 *     emb = torch.cat((torch.outer(pos, inv_freq),) * 2, dim=-1)
 *     cos, sin = emb.cos()[None, None], emb.sin()[None, None]
 *     return x * cos + rotate_half(x) * sin  # HF apply_rotary_pos_emb
 * for (shape, theta, off) in [((2, 2, 3, 6), 10000.0, 0), ((1, 2, 4, 4), 100.0, 5)]:
 *     n = math.prod(shape)
 *     x = torch.tensor([math.sin(0.37 * i + 0.1) for i in range(n)],
 *                      dtype=torch.float64).reshape(shape)
 *     y = rope(x, theta, off).flatten().tolist()
 *     print(",\n".join(", ".join("%.8ff" % v for v in y[i:i+6]) for i in range(0, n, 6)))
 */
static const float expected_2x2x3x6[] = {
    0.09983342f,  0.45288629f,  0.74464312f,  0.93561600f,  0.99995765f,  0.92895972f,
    0.63496232f,  0.46431880f,  0.08334719f,  0.46247565f,  -0.59095033f, -0.85630040f,
    0.94802407f,  -0.95220021f, -0.84363929f, -0.64957905f, -0.34993175f, 0.10297753f,
    0.45895149f,  0.74917435f,  0.93799998f,  0.99987171f,  0.92641550f,  0.72757329f,
    0.75185347f,  0.11453003f,  -0.28882665f, 0.02855630f,  -0.85558307f, -0.98694841f,
    0.63805359f,  -0.84640038f, -0.58820640f, -0.78484083f, 0.03507600f,  0.46246517f,
    0.75367079f,  0.94034039f,  0.99973934f,  0.92382825f,  0.72288135f,  0.42409585f,
    0.76324666f,  -0.25132927f, -0.62047314f, -0.40936999f, -1.00016283f, -0.97911063f,
    0.23855325f,  -0.62183606f, -0.25023805f, -0.80997596f, 0.41516199f,  0.75706101f,
    0.94263714f,  0.99956054f,  0.92119811f,  0.71815584f,  0.41791454f,  0.06111047f,
    0.66754325f,  -0.58192275f, -0.86505661f, -0.78985465f, -1.00440257f, -0.83388682f,
    -0.19442022f, -0.31001746f, 0.12284299f,  -0.72145756f, 0.73699363f,  0.94542820f,
};
static const float expected_1x2x4x4[] = {
    0.74237533f,  -0.05111310f, 0.11549441f,  1.03820554f,  1.16472643f,  0.52029408f, 0.42366321f,
    0.88470582f,  0.46342709f,  0.33421748f,  -0.40773522f, -0.83830256f, 0.97755815f, -0.25867690f,
    -0.85200992f, -1.11564741f, 0.36630288f,  -0.26561275f, 0.37965852f,  0.70857471f, 1.15949455f,
    0.41441095f,  0.62742490f,  1.16506218f,  0.51552382f,  0.45477301f,  0.06332379f, -0.42395808f,
    1.09388405f,  -0.08495480f, -0.70835365f, -1.29243384f,
};

static void check_against(const bt_tensor *y, const float *expected, int64_t n, const char *what) {
    ck_assert_msg(y != NULL, "%s: rope failed: %s", what, bt_last_error());
    ck_assert_int_eq(bt_numel(y), n);
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(fabs(bt_get(y, i) - expected[i]) <= 2e-6 + 2e-6 * fabs(expected[i]),
                      "%s element %lld: %.8f, PyTorch %.8f", what, (long long)i, bt_get(y, i),
                      expected[i]);
}

START_TEST(test_forward_matches_pytorch) {
    check_against(bt_rope(sine_input(BT_SHAPE(2, 2, 3, 6)), 10000.0, 0), expected_2x2x3x6, 72,
                  "rope (2,2,3,6) theta 1e4");
    check_against(bt_rope(sine_input(BT_SHAPE(1, 2, 4, 4)), 100.0, 5), expected_1x2x4x4, 32,
                  "rope (1,2,4,4) theta 100 offset 5");
}
END_TEST

/* naive double-precision rotate-half RoPE of x read through bt_get */
static double reference_rope(const bt_tensor *x, int64_t idx, double theta, int64_t pos_offset) {
    int64_t T = x->shape[2], hs = x->shape[3], half = hs / 2;
    int64_t t = (idx / hs) % T, i = idx % hs, pair = i < half ? i : i - half;
    double angle = (double)(pos_offset + t) * pow(theta, -2.0 * (double)pair / (double)hs);
    double a = bt_get(x, idx - i + pair), b = bt_get(x, idx - i + pair + half);
    return i < half ? a * cos(angle) - b * sin(angle) : b * cos(angle) + a * sin(angle);
}

START_TEST(test_forward_parallel_and_chunked) {
    /* hs 160: 80 frequencies (more than one chunk of 64); 2*3*40*160 elements: OpenMP path */
    bt_tensor *x = test_param(BT_SHAPE(2, 3, 40, 160), 7, -1, 1);
    bt_tensor *y = bt_rope(x, 500000.0, 17);
    ck_assert_msg(y != NULL, "rope failed: %s", bt_last_error());
    for (int64_t i = 0, n = bt_numel(y); i < n; i++) {
        double ref = reference_rope(x, i, 500000.0, 17);
        ck_assert_msg(fabs(bt_get(y, i) - ref) <= 1e-5, "element %lld: %.8f, reference %.8f",
                      (long long)i, bt_get(y, i), ref);
    }
}
END_TEST

START_TEST(test_inverse_undoes_forward) {
    bt_tensor *x = test_param(BT_SHAPE(2, 2, 5, 8), 11, -1, 1);
    bt_tensor *y = bt_empty(BT_SHAPE(2, 2, 5, 8), BT_F32, bt_cpu());
    bt_tensor *back = bt_empty(BT_SHAPE(2, 2, 5, 8), BT_F32, bt_cpu());
    bt_cpu_rope(bt_f32(y), bt_f32(x), 2, 2, 5, 8, 10000.0f, 3, false);
    bt_cpu_rope(bt_f32(back), bt_f32(y), 2, 2, 5, 8, 10000.0f, 3, true);
    for (int64_t i = 0; i < bt_numel(x); i++)
        ck_assert_double_eq_tol(bt_get(back, i), bt_get(x, i), 1e-6);
}
END_TEST

/* RoPE's point: <rope(q at m), rope(k at n)> depends on m - n only */
START_TEST(test_scores_depend_on_relative_position) {
    bt_tensor *q = test_param(BT_SHAPE(1, 1, 1, 8), 21, -1, 1);
    bt_tensor *k = test_param(BT_SHAPE(1, 1, 1, 8), 22, -1, 1);
    double dots[2];
    int64_t offsets[2][2] = {{7, 4}, {103, 100}}; /* (query position, key position) */
    for (int c = 0; c < 2; c++) {
        bt_tensor *rq = bt_rope(q, 10000.0, offsets[c][0]),
                  *rk = bt_rope(k, 10000.0, offsets[c][1]);
        ck_assert_ptr_nonnull(rq);
        ck_assert_ptr_nonnull(rk);
        dots[c] = 0.0;
        for (int i = 0; i < 8; i++)
            dots[c] += bt_get(rq, i) * bt_get(rk, i);
    }
    ck_assert_double_eq_tol(dots[0], dots[1], 1e-5);
}
END_TEST

struct rope_case {
    double theta;
    int64_t pos_offset;
};

static bt_tensor *fn_rope(bt_tensor **in, void *ctx) {
    const struct rope_case *c = ctx;
    return bt_rope(in[0], c->theta, c->pos_offset);
}

/* the leaf stored (B, T, NH, hs), as a model's projection is, seen as (B, NH, T, hs) */
static bt_tensor *fn_rope_view(bt_tensor **in, void *ctx) {
    const struct rope_case *c = ctx;
    return bt_rope(bt_transpose(in[0], 1, 2), c->theta, c->pos_offset);
}

START_TEST(test_gradients) {
    struct rope_case c = {10000.0, 0};
    bt_tensor *x[1] = {test_param(BT_SHAPE(2, 3, 4, 6), 31, -1, 1)};
    GRADCHECK("rope", fn_rope, x, 1, &c);
    struct rope_case c2 = {10.0, 9};
    bt_tensor *x2[1] = {test_param(BT_SHAPE(1, 2, 5, 4), 32, -1, 1)};
    GRADCHECK("rope(theta 10, offset 9)", fn_rope, x2, 1, &c2);
    bt_tensor *x3[1] = {test_param(BT_SHAPE(2, 4, 3, 2), 33, -1, 1)};
    GRADCHECK("rope(transposed view)", fn_rope_view, x3, 1, &c2);
    /* x2 now holds a gradient: the backward adds into it */
    GRADCHECK("rope(existing grad)", fn_rope, x2, 1, &c2);
}
END_TEST

START_TEST(test_no_grad_records_nothing) {
    bt_tensor *x = test_param(BT_SHAPE(1, 1, 2, 2), 41, -1, 1);
    bool prev = bt_set_grad_enabled(false);
    bt_tensor *y = bt_rope(x, 10000.0, 0);
    bt_set_grad_enabled(prev);
    ck_assert_ptr_nonnull(y);
    ck_assert(!y->requires_grad);
    ck_assert_ptr_null(y->grad_fn);
}
END_TEST

START_TEST(test_bad_inputs) {
    bt_device cpu = bt_cpu();
    ck_assert_ptr_null(bt_rope(NULL, 10000.0, 0));
    ck_assert_error_contains("rope: argument 1 is NULL");

    bt_tensor *xi = bt_zeros(BT_SHAPE(1, 2, 3, 4), BT_I32, cpu);
    ck_assert_ptr_null(bt_rope(xi, 10000.0, 0));
    ck_assert_error_contains("rope: x must be float32, got int32 (1,2,3,4)");

    bt_tensor *x3 = bt_zeros(BT_SHAPE(2, 3, 4), BT_F32, cpu);
    ck_assert_ptr_null(bt_rope(x3, 10000.0, 0));
    ck_assert_error_contains("rope: x (2,3,4) must be 4-D (batch, heads, time, head size)");

    bt_tensor *odd = bt_zeros(BT_SHAPE(1, 2, 3, 5), BT_F32, cpu);
    ck_assert_ptr_null(bt_rope(odd, 10000.0, 0));
    ck_assert_error_contains("rope: x (1,2,3,5): head size 5 must be even");

    bt_tensor *x = bt_zeros(BT_SHAPE(1, 2, 3, 4), BT_F32, cpu);
    ck_assert_ptr_null(bt_rope(x, 0.0, 0));
    ck_assert_error_contains("rope: theta must be a positive number, got 0");
    ck_assert_ptr_null(bt_rope(x, NAN, 0));
    ck_assert_error_contains("rope: theta must be a positive number, got nan");
    ck_assert_ptr_null(bt_rope(x, 10000.0, -1));
    ck_assert_error_contains("rope: pos_offset must be non-negative, got -1");
}
END_TEST

static Suite *rope_suite(void) {
    Suite *s = suite_create("rope");
    bt_suite_add(s, test_forward_matches_pytorch);
    bt_suite_add(s, test_forward_parallel_and_chunked);
    bt_suite_add(s, test_inverse_undoes_forward);
    bt_suite_add(s, test_scores_depend_on_relative_position);
    bt_suite_add(s, test_gradients);
    bt_suite_add(s, test_no_grad_records_nothing);
    bt_suite_add(s, test_bad_inputs);
    return s;
}

BT_TEST_MAIN(rope_suite)
