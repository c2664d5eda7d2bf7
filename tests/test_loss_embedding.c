/* embedding, cross_entropy and dropout: forward values (PyTorch or by hand), finite-difference
 * gradient checks (repeated indices, ignored targets, a fixed dropout mask), dropout's RNG
 * contract, and the messages of bad inputs. */
#include <math.h>

#include "tests/gradcheck.h"

/* ---- embedding ---- */

/* weight (4,3): row v is {10v, 10v+1, 10v+2} */
static bt_tensor *table(void) {
    float w[12];
    for (int i = 0; i < 12; i++)
        w[i] = (float)(10 * (i / 3) + i % 3);
    return bt_from_data(BT_SHAPE(4, 3), BT_F32, w);
}

START_TEST(test_embedding_forward) {
    bt_tensor *w = table();
    int32_t i32[] = {3, 0, 3, 1};
    int64_t i64[] = {3, 0, 3, 1};
    uint16_t u16[] = {3, 0, 3, 1};
    bt_tensor *idx[3] = {bt_from_data(BT_SHAPE(2, 2), BT_I32, i32),
                         bt_from_data(BT_SHAPE(2, 2), BT_I64, i64),
                         bt_from_data(BT_SHAPE(2, 2), BT_U16, u16)};
    const int rows[4] = {3, 0, 3, 1};
    for (int k = 0; k < 3; k++) {
        bt_tensor *y = bt_embedding(w, idx[k]);
        ck_assert_ptr_nonnull(y);
        ck_assert_int_eq(y->ndim, 3);
        ck_assert_int_eq(y->shape[0], 2);
        ck_assert_int_eq(y->shape[1], 2);
        ck_assert_int_eq(y->shape[2], 3);
        for (int n = 0; n < 4; n++)
            for (int c = 0; c < 3; c++)
                ck_assert_float_eq(bt_get(y, n * 3 + c), (float)(10 * rows[n] + c));
    }
    /* non-contiguous indices: the transpose of (2,2) [[3,0],[3,1]] is [[3,3],[0,1]] */
    bt_tensor *y = bt_embedding(w, bt_transpose(idx[0], 0, 1));
    const int rows_t[4] = {3, 3, 0, 1};
    for (int n = 0; n < 4; n++)
        ck_assert_float_eq(bt_get(y, n * 3 + 1), (float)(10 * rows_t[n] + 1));
    /* 0-d index -> (C) */
    bt_tensor *y0 = bt_embedding(w, bt_from_data(0, (int64_t[1]){0}, BT_I64, &(int64_t){2}));
    ck_assert_int_eq(y0->ndim, 1);
    ck_assert_float_eq(bt_get(y0, 2), 22.0f);
}
END_TEST

static bt_tensor *fn_embedding(bt_tensor **in, void *ctx) {
    return bt_embedding(in[0], ctx);
}

START_TEST(test_embedding_gradient_repeated_indices) {
    int32_t ix[] = {1, 3, 1, 0, 1, 3};
    bt_tensor *idx = bt_from_data(BT_SHAPE(2, 3), BT_I32, ix);
    bt_tensor *in[1] = {test_param(BT_SHAPE(5, 4), 200, -1, 1)};
    GRADCHECK("embedding", fn_embedding, in, 1, idx);

    /* exact: d sum(embedding) / d weight counts each row's uses; row 2 and 4 are never used */
    bt_tensor *w = test_param(BT_SHAPE(5, 4), 201, -1, 1);
    ck_assert_int_eq(bt_backward(bt_sum_all(bt_embedding(w, idx))), BT_OK);
    const float uses[5] = {1, 3, 0, 2, 0};
    for (int v = 0; v < 5; v++)
        for (int c = 0; c < 4; c++)
            ck_assert_float_eq(bt_get(w->grad, v * 4 + c), uses[v]);
    /* a second backward accumulates */
    ck_assert_int_eq(bt_backward(bt_sum_all(bt_embedding(w, idx))), BT_OK);
    for (int v = 0; v < 5; v++)
        ck_assert_float_eq(bt_get(w->grad, v * 4), 2 * uses[v]);
}
END_TEST

/* many rows and wide columns so the backward runs threaded; two runs give the same bits */
START_TEST(test_embedding_backward_deterministic) {
    int64_t N = 4096, V = 7, C = 100;
    bt_tensor *idx = bt_empty(BT_SHAPE(N), BT_I64, bt_cpu());
    for (int64_t n = 0; n < N; n++)
        bt_set(idx, n, (double)((n * 5) % V));
    float first[7 * 100];
    for (int run = 0; run < 2; run++) {
        bt_tensor *w = test_param(BT_SHAPE(V, C), 210, -1, 1);
        bt_tensor *g = test_param(BT_SHAPE(N, C), 211, -1, 1);
        bt_tensor *loss = bt_sum_all(bt_mul(bt_embedding(w, idx), g));
        ck_assert_int_eq(bt_backward(loss), BT_OK);
        for (int64_t i = 0; i < V * C; i++) {
            float v = (float)bt_get(w->grad, i);
            if (run == 0)
                first[i] = v;
            else
                ck_assert_msg(v == first[i], "element %lld differs between runs", (long long)i);
        }
    }
    /* and it is the plain sum over the rows with that index */
    bt_tensor *g = test_param(BT_SHAPE(N, C), 211, -1, 1);
    double expect = 0.0;
    for (int64_t n = 0; n < N; n++)
        if ((n * 5) % V == 3) expect += bt_get(g, n * C + 42);
    ck_assert_double_eq_tol(first[3 * C + 42], expect, 1e-3);
}
END_TEST

START_TEST(test_embedding_bad_inputs) {
    bt_tensor *w = table();
    int64_t bad[] = {1, 4, 0};
    ck_assert_ptr_null(bt_embedding(w, bt_from_data(BT_SHAPE(3), BT_I64, bad)));
    ck_assert_error_contains(
        "embedding: index 4 at position 1 is out of range [0, 4) for weight (4,3)");
    int32_t neg[] = {0, -1};
    ck_assert_ptr_null(bt_embedding(w, bt_from_data(BT_SHAPE(2), BT_I32, neg)));
    ck_assert_error_contains("embedding: index -1 at position 1 is out of range [0, 4)");
    bt_tensor *fidx = bt_zeros(BT_SHAPE(2, 3), BT_F32, bt_cpu());
    ck_assert_ptr_null(bt_embedding(w, fidx));
    ck_assert_error_contains(
        "embedding: indices must be int32, int64 or uint16, got float32 (2,3)");
    bt_tensor *idx = bt_zeros(BT_SHAPE(2), BT_I64, bt_cpu());
    ck_assert_ptr_null(bt_embedding(bt_zeros(BT_SHAPE(12), BT_F32, bt_cpu()), idx));
    ck_assert_error_contains("embedding: weight must be (V, C), got (12)");
    ck_assert_ptr_null(bt_embedding(bt_zeros(BT_SHAPE(4, 3), BT_I32, bt_cpu()), idx));
    ck_assert_error_contains("embedding: weight must be float32, got int32 (4,3)");
    bt_tensor *deep = bt_zeros(BT_SHAPE(1, 1, 1, 1, 1, 1, 1, 1), BT_I64, bt_cpu());
    ck_assert_ptr_null(bt_embedding(w, deep));
    ck_assert_error_contains("embedding: indices (1,1,1,1,1,1,1,1) have too many dimensions");
    ck_assert_ptr_null(bt_embedding(NULL, idx));
    ck_assert_error_contains("embedding: argument 1 is NULL");
    ck_assert_ptr_null(bt_embedding(w, NULL));
    ck_assert_error_contains("embedding: argument 2 is NULL");
}
END_TEST

/* ---- cross_entropy ---- */

/* logits[i] = 2 sin(0.9 i + 0.3) (3,4), as in the PyTorch script */
static bt_tensor *sine_logits(void) {
    float v[12];
    for (int i = 0; i < 12; i++)
        v[i] = (float)(sin(0.9 * i + 0.3) * 2.0);
    return bt_requires_grad_(bt_from_data(BT_SHAPE(3, 4), BT_F32, v), true);
}

START_TEST(test_cross_entropy_forward_backward_values) {
    bt_tensor *logits = sine_logits();
    int64_t t[] = {2, -1, 0};
    bt_tensor *loss = bt_cross_entropy(logits, bt_from_data(BT_SHAPE(3), BT_I64, t));
    ck_assert_ptr_nonnull(loss);
    ck_assert_int_eq(loss->ndim, 0);
    ck_assert_int_eq(bt_backward(loss), BT_OK);
    /* PyTorch: l = F.cross_entropy(logits, [2, -1, 0], ignore_index=-1); l.backward() */
    ck_assert_double_eq_tol(bt_item(loss), 0.8638602, 1e-5);
    const double eg[12] = {0.05939397, 0.2121366, -0.3151452, 0.04361461, 0,          0,
                           0,          0,         -0.2596912, 0.2033895,  0.04722077, 0.009080922};
    for (int i = 0; i < 12; i++)
        ck_assert_double_eq_tol(bt_get(logits->grad, i), eg[i], 1e-6);
}
END_TEST

START_TEST(test_cross_entropy_large_logits_stable) {
    float v[] = {1000, 0, -1000, 0, 1000, 0};
    int32_t t[] = {0, 0};
    bt_tensor *loss = bt_cross_entropy(bt_from_data(BT_SHAPE(2, 3), BT_F32, v),
                                       bt_from_data(BT_SHAPE(2), BT_I32, t));
    /* row 0: lse = 1000 + log(1 + e^-1000 + e^-2000) = 1000, loss 0; row 1: lse = 1000, target
     * logit 0, loss 1000; mean 500 (a naive exp overflows to inf) */
    ck_assert_double_eq_tol(bt_item(loss), 500.0, 1e-3);
}
END_TEST

static bt_tensor *fn_cross_entropy(bt_tensor **in, void *ctx) {
    return bt_cross_entropy(in[0], ctx);
}

START_TEST(test_cross_entropy_gradient) {
    int32_t t[] = {4, -1, 0, 2, -1, 1};
    bt_tensor *targets = bt_from_data(BT_SHAPE(2, 3), BT_I32, t);
    bt_tensor *in[1] = {test_param(BT_SHAPE(2, 3, 5), 300, -2, 2)};
    GRADCHECK("cross_entropy", fn_cross_entropy, in, 1, targets);
    /* uint16 targets (no ignore index possible) */
    uint16_t u[] = {1, 0, 3};
    bt_tensor *tu = bt_from_data(BT_SHAPE(3), BT_U16, u);
    bt_tensor *in2[1] = {test_param(BT_SHAPE(3, 4), 301, -2, 2)};
    GRADCHECK("cross_entropy(uint16)", fn_cross_entropy, in2, 1, tu);
}
END_TEST

static bt_tensor *fn_cross_entropy_transposed(bt_tensor **in, void *ctx) {
    return bt_cross_entropy(bt_transpose(in[0], 0, 1), ctx);
}

START_TEST(test_cross_entropy_gradient_noncontiguous) {
    int64_t t[] = {1, 0, -1, 3};
    bt_tensor *targets = bt_from_data(BT_SHAPE(4), BT_I64, t);
    bt_tensor *in[1] = {test_param(BT_SHAPE(5, 4), 310, -2, 2)}; /* viewed as (4,5) */
    GRADCHECK("cross_entropy(transpose)", fn_cross_entropy_transposed, in, 1, targets);
}
END_TEST

/* every target ignored: braid defines the loss and its gradient as 0 (PyTorch gives nan) */
START_TEST(test_cross_entropy_all_ignored) {
    bt_tensor *logits = test_param(BT_SHAPE(2, 3), 320, -1, 1);
    int64_t t[] = {-1, -1};
    bt_tensor *loss = bt_cross_entropy(logits, bt_from_data(BT_SHAPE(2), BT_I64, t));
    ck_assert_ptr_nonnull(loss);
    ck_assert_double_eq(bt_item(loss), 0.0);
    ck_assert_int_eq(bt_backward(loss), BT_OK);
    for (int i = 0; i < 6; i++)
        ck_assert_double_eq(bt_get(logits->grad, i), 0.0);
}
END_TEST

START_TEST(test_cross_entropy_bad_inputs) {
    bt_tensor *logits = bt_zeros(BT_SHAPE(2, 3, 4), BT_F32, bt_cpu());
    int64_t bad[] = {0, 1, 4, 2, -1, 3};
    ck_assert_ptr_null(bt_cross_entropy(logits, bt_from_data(BT_SHAPE(2, 3), BT_I64, bad)));
    ck_assert_error_contains("cross_entropy: target 4 at position 2 is out of range [0, 4) for "
                             "logits (2,3,4) (-1 = ignore)");
    int32_t neg[] = {0, 1, -2, 2, 0, 3};
    ck_assert_ptr_null(bt_cross_entropy(logits, bt_from_data(BT_SHAPE(2, 3), BT_I32, neg)));
    ck_assert_error_contains("cross_entropy: target -2 at position 2 is out of range [0, 4)");
    bt_tensor *t23 = bt_zeros(BT_SHAPE(2, 3), BT_I64, bt_cpu());
    ck_assert_ptr_null(bt_cross_entropy(logits, bt_zeros(BT_SHAPE(3, 2), BT_I64, bt_cpu())));
    ck_assert_error_contains("cross_entropy: targets (3,2) do not match logits (2,3,4)");
    ck_assert_ptr_null(bt_cross_entropy(logits, bt_zeros(BT_SHAPE(6), BT_I64, bt_cpu())));
    ck_assert_error_contains("cross_entropy: targets (6) do not match logits (2,3,4)");
    ck_assert_ptr_null(
        bt_cross_entropy(bt_scalar(1.0), bt_zeros(0, (int64_t[1]){0}, BT_I64, bt_cpu())));
    ck_assert_error_contains("cross_entropy: targets () do not match logits ()");
    ck_assert_ptr_null(bt_cross_entropy(logits, bt_zeros(BT_SHAPE(2, 3), BT_F32, bt_cpu())));
    ck_assert_error_contains("cross_entropy: targets must be int32, int64 or uint16, got float32 "
                             "(2,3)");
    ck_assert_ptr_null(bt_cross_entropy(bt_zeros(BT_SHAPE(2, 3, 4), BT_I32, bt_cpu()), t23));
    ck_assert_error_contains("cross_entropy: logits must be float32, got int32 (2,3,4)");
    ck_assert_ptr_null(bt_cross_entropy(NULL, t23));
    ck_assert_error_contains("cross_entropy: argument 1 is NULL");
    ck_assert_ptr_null(bt_cross_entropy(logits, NULL));
    ck_assert_error_contains("cross_entropy: argument 2 is NULL");
    /* a failed earlier op keeps its message */
    ck_assert_ptr_null(bt_cross_entropy(bt_log_softmax(logits, 3), t23));
    ck_assert_error_contains("log_softmax: dimension 3 out of range for (2,3,4)");
}
END_TEST

/* ---- linear + cross-entropy without the logits ---- */

static bt_tensor *fn_linear_cross_entropy(bt_tensor **in, void *ctx) {
    return bt_linear_cross_entropy(in[0], in[1], ctx);
}

/* against the unfused bt_cross_entropy(bt_linear(x, w)) on the same values: the loss and both
 * gradients within 1e-6 of their largest element, with ignored rows, a gradient that is not 1
 * (the loss scaled by 0.25 before the backward), rows past one chunk (V = 50000: 640 rows a
 * chunk, so 1300 rows run as 640 + 640 + 20), and w tied to a second use (its gradient adds) */
static void linear_ce_matches_unfused(int64_t N, int64_t C, int64_t V) {
    bt_tensor *t = bt_empty(BT_SHAPE(N), BT_I64, bt_cpu());
    for (int64_t n = 0; n < N; n++)
        bt_set(t, n, n % 7 == 3 ? -1.0 : (double)((n * 7919) % V));
    bt_tensor *x[2], *w[2], *loss[2];
    for (int k = 0; k < 2; k++) {
        x[k] = test_param(BT_SHAPE(N, C), 330, -1, 1);
        w[k] = test_param(BT_SHAPE(V, C), 331, -0.5f, 0.5f);
        loss[k] = k ? bt_linear_cross_entropy(x[k], w[k], t)
                    : bt_cross_entropy(bt_linear(x[k], w[k], NULL), t);
        ck_assert_msg(loss[k], "%s", bt_last_error());
        /* w used once more, as a tied embedding would be */
        bt_tensor *other = bt_sum_all(bt_mul_scalar(w[k], 0.5));
        ck_assert_int_eq(bt_backward(bt_add(bt_mul_scalar(loss[k], 0.25), other)), BT_OK);
    }
    ck_assert_double_eq_tol(bt_item(loss[1]), bt_item(loss[0]), 1e-6 * fabs(bt_item(loss[0])));
    bt_tensor *g[2][2] = {{x[0]->grad, w[0]->grad}, {x[1]->grad, w[1]->grad}};
    for (int k = 0; k < 2; k++) {
        double worst = 0.0, big = 0.0;
        for (int64_t i = 0, n = bt_numel(g[0][k]); i < n; i++) {
            double a = bt_get(g[0][k], i), b = bt_get(g[1][k], i);
            worst = fmax(worst, fabs(a - b));
            big = fmax(big, fabs(a));
        }
        ck_assert_msg(worst <= 1e-6 * big, "(%lld,%lld,%lld) grad of %s: max error %g, max %g",
                      (long long)N, (long long)C, (long long)V, k ? "w" : "x", worst, big);
    }
}

START_TEST(test_linear_cross_entropy_matches_unfused) {
    linear_ce_matches_unfused(12, 8, 5);
    linear_ce_matches_unfused(1300, 16, 50000);
}
END_TEST

START_TEST(test_linear_cross_entropy_gradient) {
    int64_t t[] = {4, -1, 0, 2, -1, 1};
    bt_tensor *targets = bt_from_data(BT_SHAPE(6), BT_I64, t);
    bt_tensor *in[2] = {test_param(BT_SHAPE(6, 3), 340, -2, 2),
                        test_param(BT_SHAPE(5, 3), 341, -1, 1)};
    GRADCHECK("linear_cross_entropy", fn_linear_cross_entropy, in, 2, targets);
}
END_TEST

/* no grad mode: the loss only, nothing recorded; all rows ignored: 0 and zero gradients */
START_TEST(test_linear_cross_entropy_no_grad_and_all_ignored) {
    bt_tensor *x = test_param(BT_SHAPE(4, 3), 350, -1, 1),
              *w = test_param(BT_SHAPE(6, 3), 351, -1, 1);
    int64_t t[] = {5, 0, -1, 2};
    bt_tensor *targets = bt_from_data(BT_SHAPE(4), BT_I64, t);
    bool was = bt_set_grad_enabled(false);
    double want = bt_item(bt_cross_entropy(bt_linear(x, w, NULL), targets));
    bt_tensor *loss = bt_linear_cross_entropy(x, w, targets);
    bt_set_grad_enabled(was);
    ck_assert_msg(loss, "%s", bt_last_error());
    ck_assert_double_eq_tol(bt_item(loss), want, 1e-6);
    ck_assert(!loss->requires_grad);
    ck_assert_ptr_null(bt_runtime()->tape);
    int64_t none[] = {-1, -1, -1, -1};
    loss = bt_linear_cross_entropy(x, w, bt_from_data(BT_SHAPE(4), BT_I64, none));
    ck_assert_double_eq(bt_item(loss), 0.0);
    ck_assert_int_eq(bt_backward(loss), BT_OK);
    for (int i = 0; i < 12; i++)
        ck_assert_double_eq(bt_get(x->grad, i), 0.0);
}
END_TEST

/* a second backward over a retained graph gives the same gradients again, even after the first
 * one's were zeroed in place (the saved gradients are never handed to autograd themselves), for
 * a step tensor x (whose gradient autograd may adopt) and a parameter w */
START_TEST(test_linear_cross_entropy_retained_graph) {
    bt_tensor *p = test_param(BT_SHAPE(5, 4), 360, -1, 1),
              *w = test_param(BT_SHAPE(7, 4), 361, -1, 1);
    bt_tensor *x = bt_empty(BT_SHAPE(5, 4), BT_F32, bt_cpu());
    ck_assert_int_eq(bt_copy_(x, p), BT_OK);
    bt_requires_grad_(x, true);
    int64_t t[] = {6, 0, -1, 3, 2};
    bt_tensor *loss = bt_linear_cross_entropy(x, w, bt_from_data(BT_SHAPE(5), BT_I64, t));
    ck_assert_msg(loss, "%s", bt_last_error());
    ck_assert_int_eq(bt_backward_ex(loss, NULL, true), BT_OK);
    float gx[20], gw[28];
    for (int i = 0; i < 20; i++)
        gx[i] = (float)bt_get(x->grad, i);
    for (int i = 0; i < 28; i++)
        gw[i] = (float)bt_get(w->grad, i);
    bt_zero_grad(x);
    bt_zero_grad(w);
    ck_assert_int_eq(bt_backward_ex(loss, bt_scalar(1.0), false), BT_OK);
    for (int i = 0; i < 20; i++)
        ck_assert_float_eq(bt_get(x->grad, i), gx[i]);
    for (int i = 0; i < 28; i++)
        ck_assert_float_eq(bt_get(w->grad, i), gw[i]);
}
END_TEST

START_TEST(test_linear_cross_entropy_bad_inputs) {
    bt_tensor *x = bt_zeros(BT_SHAPE(2, 3), BT_F32, bt_cpu()),
              *w = bt_zeros(BT_SHAPE(4, 3), BT_F32, bt_cpu());
    int64_t bad[] = {0, 4};
    ck_assert_ptr_null(bt_linear_cross_entropy(x, w, bt_from_data(BT_SHAPE(2), BT_I64, bad)));
    ck_assert_error_contains("linear_cross_entropy: target 4 at position 1 is out of range [0, 4) "
                             "for w (4,3) (-1 = ignore)");
    ck_assert_ptr_null(bt_linear_cross_entropy(x, bt_zeros(BT_SHAPE(4, 2), BT_F32, bt_cpu()),
                                               bt_zeros(BT_SHAPE(2), BT_I64, bt_cpu())));
    ck_assert_error_contains("linear_cross_entropy: expected x (N, C), w (V, C) and targets (N), "
                             "got x (2,3), w (4,2), targets (2)");
    ck_assert_ptr_null(bt_linear_cross_entropy(x, w, bt_zeros(BT_SHAPE(2), BT_F32, bt_cpu())));
    ck_assert_error_contains("linear_cross_entropy: targets must be int32, int64 or uint16");
    ck_assert_ptr_null(bt_linear_cross_entropy(x, w, NULL));
    ck_assert_error_contains("linear_cross_entropy: argument 3 is NULL");
}
END_TEST

/* ---- dropout ---- */

START_TEST(test_dropout_identity) {
    bt_tensor *x = test_param(BT_SHAPE(3, 4), 400, -1, 1);
    ck_assert_ptr_eq(bt_dropout(x, 0.5, false), x);
    ck_assert_ptr_eq(bt_dropout(x, 0.0, true), x);
    /* identity draws no random numbers */
    ck_assert_uint_eq(bt_runtime()->dropout_rng.offset, 0);
}
END_TEST

START_TEST(test_dropout_mask) {
    int64_t n = 10000;
    bt_tensor *x = bt_full(BT_SHAPE(n), 2.0, BT_F32, bt_cpu());
    bt_manual_seed(7);
    bt_tensor *a = bt_dropout(x, 0.3, true);
    ck_assert_uint_eq(bt_runtime()->dropout_rng.offset, (uint64_t)n); /* one counter per element */
    bt_tensor *b = bt_dropout(x, 0.3, true);                          /* next offsets: new mask */
    bt_manual_seed(7);
    bt_tensor *c = bt_dropout(x, 0.3, true); /* same seed: same mask */
    int64_t kept = 0, same_ab = 0;
    for (int64_t i = 0; i < n; i++) {
        double va = bt_get(a, i);
        ck_assert_msg(va == 0.0 || fabs(va - 2.0 / 0.7) < 1e-6, "element %lld is %g", (long long)i,
                      va);
        ck_assert_double_eq(va, bt_get(c, i));
        kept += va != 0.0;
        same_ab += (va != 0.0) == (bt_get(b, i) != 0.0);
    }
    /* 1 - p = 0.7 of 10000: the binomial's std is about 46, allow 4 of them */
    ck_assert_msg(llabs(kept - 7000) < 184, "kept %lld of 10000 with p = 0.3", (long long)kept);
    ck_assert_msg(same_ab < n, "consecutive calls drew the same mask");
}
END_TEST

/* gradcheck reruns the forward many times: reseed so every call draws the same mask */
static bt_tensor *fn_dropout(bt_tensor **in, void *ctx) {
    bt_manual_seed(42);
    return bt_dropout(in[0], 0.4, true);
}

START_TEST(test_dropout_gradient) {
    bt_tensor *in[1] = {test_param(BT_SHAPE(4, 6), 410, -1, 1)};
    GRADCHECK("dropout", fn_dropout, in, 1, NULL);
    /* the backward regenerates the forward's mask: d sum(y) / dx = y / x */
    bt_tensor *x = test_param(BT_SHAPE(50), 411, 0.5f, 1.5f);
    bt_manual_seed(3);
    bt_tensor *y = bt_dropout(bt_transpose(bt_reshape(x, BT_SHAPE(5, 10)), 0, 1), 0.5, true);
    bt_tensor *yt = bt_contiguous(bt_transpose(y, 0, 1)); /* back to x's order */
    ck_assert_int_eq(bt_backward(bt_sum_all(y)), BT_OK);
    for (int64_t i = 0; i < 50; i++)
        ck_assert_double_eq_tol(bt_get(x->grad, i), bt_get(yt, i) / bt_get(x, i), 1e-6);
}
END_TEST

START_TEST(test_dropout_bad_inputs) {
    bt_tensor *x = bt_zeros(BT_SHAPE(2, 3), BT_F32, bt_cpu());
    ck_assert_ptr_null(bt_dropout(x, 1.0, true));
    ck_assert_error_contains("dropout: p must be in [0, 1), got 1");
    ck_assert_ptr_null(bt_dropout(x, -0.1, false));
    ck_assert_error_contains("dropout: p must be in [0, 1), got -0.1");
    ck_assert_ptr_null(bt_dropout(x, NAN, true));
    ck_assert_error_contains("dropout: p must be in [0, 1), got nan");
    ck_assert_ptr_null(bt_dropout(bt_zeros(BT_SHAPE(2, 3), BT_I64, bt_cpu()), 0.1, true));
    ck_assert_error_contains("dropout: input must be float32, got int64 (2,3)");
    ck_assert_ptr_null(bt_dropout(NULL, 0.1, true));
    ck_assert_error_contains("dropout: argument 1 is NULL");
}
END_TEST

static Suite *loss_embedding_suite(void) {
    Suite *s = suite_create("loss_embedding");
    bt_suite_add(s, test_embedding_forward);
    bt_suite_add(s, test_embedding_gradient_repeated_indices);
    bt_suite_add(s, test_embedding_backward_deterministic);
    bt_suite_add(s, test_embedding_bad_inputs);
    bt_suite_add(s, test_cross_entropy_forward_backward_values);
    bt_suite_add(s, test_cross_entropy_large_logits_stable);
    bt_suite_add(s, test_cross_entropy_gradient);
    bt_suite_add(s, test_cross_entropy_gradient_noncontiguous);
    bt_suite_add(s, test_cross_entropy_all_ignored);
    bt_suite_add(s, test_cross_entropy_bad_inputs);
    bt_suite_add(s, test_linear_cross_entropy_matches_unfused);
    bt_suite_add(s, test_linear_cross_entropy_gradient);
    bt_suite_add(s, test_linear_cross_entropy_no_grad_and_all_ignored);
    bt_suite_add(s, test_linear_cross_entropy_retained_graph);
    bt_suite_add(s, test_linear_cross_entropy_bad_inputs);
    bt_suite_add(s, test_dropout_identity);
    bt_suite_add(s, test_dropout_mask);
    bt_suite_add(s, test_dropout_gradient);
    bt_suite_add(s, test_dropout_bad_inputs);
    return s;
}

BT_TEST_MAIN(loss_embedding_suite)
