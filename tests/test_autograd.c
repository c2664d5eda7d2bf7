/* The autograd engine: shared inputs, data-dependent graphs, accumulation, no-grad, retain_grad,
 * graph release; gradient checks of reductions and view ops; and a check that gradcheck itself
 * catches a wrong backward. */
#include <math.h>

#include "core/arena.h"
#include "core/ops/op_common.h"
#include "core/profile.h"
#include "tests/gradcheck.h"

START_TEST(test_shared_input) {
    /* y = x*x + x uses x three times: dy/dx = 2x + 1 */
    bt_tensor *x = test_param(BT_SHAPE(5), 1, -2, 2);
    bt_tensor *y = bt_sum_all(bt_add(bt_mul(x, x), x));
    ck_assert_int_eq(bt_backward(y), BT_OK);
    for (int i = 0; i < 5; i++)
        ck_assert_double_eq_tol(bt_get(x->grad, i), 2 * bt_get(x, i) + 1, 1e-6);
}
END_TEST

START_TEST(test_dynamic_loop_depth_from_data) {
    /* Python-style: while the value is below 10, double it. The depth depends on the data, so
     * the graph does: y = x * 2^n with n decided at run time. */
    float v = 0.7f;
    bt_tensor *x = bt_requires_grad_(bt_from_data(BT_SHAPE(1), BT_F32, &v), true);
    bt_tensor *y = x;
    int depth = 0;
    while (bt_item(y) < 10.0) {
        y = bt_mul_scalar(y, 2.0);
        depth++;
    }
    if (depth % 2) y = bt_tanh(y); /* and an `if` on the same data */
    ck_assert_int_eq(depth, 4);    /* 0.7 * 16 = 11.2 */
    ck_assert_int_eq(bt_backward(bt_sum_all(y)), BT_OK);
    ck_assert_double_eq_tol(bt_get(x->grad, 0), 16.0, 1e-6);
}
END_TEST

START_TEST(test_grad_accumulates_across_backwards) {
    bt_tensor *w = bt_tensor_new(BT_SHAPE(3), BT_F32, bt_cpu());
    bt_requires_grad_(w, true);
    bt_fill(w, 2.0);
    for (int pass = 0; pass < 2; pass++) { /* two micro-batches: gradients add up */
        bt_tensor *loss = bt_sum_all(bt_mul_scalar(w, 3.0));
        ck_assert_int_eq(bt_backward(loss), BT_OK);
        bt_step_end();
    }
    ck_assert(w->grad->persistent);
    ck_assert_double_eq(bt_get(w->grad, 0), 6.0);
    bt_zero_grad(w);
    ck_assert_double_eq(bt_get(w->grad, 2), 0.0);
    bt_tensor_free(w);
}
END_TEST

START_TEST(test_no_grad_records_nothing) {
    bt_tensor *x = test_param(BT_SHAPE(4), 2, -1, 1);
    bool prev = bt_set_grad_enabled(false);
    ck_assert(prev);
    struct ag_node *tape_before = bt_runtime()->tape;
    bt_tensor *y = bt_exp(bt_mul(x, x));
    ck_assert(!y->requires_grad);
    ck_assert_ptr_null(y->grad_fn);
    ck_assert_ptr_eq(bt_runtime()->tape, tape_before);
    bt_set_grad_enabled(prev);
    ck_assert(bt_is_grad_enabled());
    ck_assert_int_eq(bt_backward(bt_sum_all(y)), BT_ERR);
    ck_assert_error_contains("backward: tensor () does not require grad");
}
END_TEST

START_TEST(test_retain_grad_intermediate) {
    bt_tensor *x = test_param(BT_SHAPE(3), 3, -1, 1);
    bt_tensor *h = bt_mul_scalar(x, 2.0);
    bt_tensor *k = bt_mul_scalar(x, 5.0);
    bt_retain_grad(h);
    bt_tensor *y = bt_sum_all(bt_add(bt_mul(h, h), k));
    ck_assert_int_eq(bt_backward(y), BT_OK);
    ck_assert_ptr_nonnull(h->grad); /* dy/dh = 2h */
    ck_assert_ptr_null(k->grad);    /* not retained: released after use */
    for (int i = 0; i < 3; i++)
        ck_assert_double_eq_tol(bt_get(h->grad, i), 2 * bt_get(h, i), 1e-6);
}
END_TEST

START_TEST(test_graph_released_after_backward) {
    bt_tensor *x = test_param(BT_SHAPE(3), 4, -1, 1);
    bt_tensor *y = bt_sum_all(bt_exp(x));
    ck_assert_int_eq(bt_backward_ex(y, NULL, true), BT_OK); /* retain_graph */
    ck_assert_int_eq(bt_backward(y), BT_OK);                /* second pass allowed */
    for (int i = 0; i < 3; i++)
        ck_assert_double_eq_tol(bt_get(x->grad, i), 2 * exp(bt_get(x, i)), 1e-5);
    ck_assert_int_eq(bt_backward(y), BT_ERR);
    ck_assert_error_contains("backward: trying to backward through the graph a second time");
    ck_assert_ptr_null(bt_runtime()->tape); /* the tape is empty again */
}
END_TEST

START_TEST(test_independent_graphs_backward_separately) {
    bt_tensor *a = test_param(BT_SHAPE(2), 5, -1, 1), *b = test_param(BT_SHAPE(2), 6, -1, 1);
    bt_tensor *la = bt_sum_all(bt_mul_scalar(a, 3.0));
    bt_tensor *lb = bt_sum_all(bt_mul_scalar(b, 4.0));
    ck_assert_int_eq(bt_backward(la), BT_OK);
    ck_assert_ptr_null(b->grad);
    ck_assert_int_eq(bt_backward(lb), BT_OK); /* lb's nodes were not released by la's backward */
    ck_assert_double_eq(bt_get(a->grad, 0), 3.0);
    ck_assert_double_eq(bt_get(b->grad, 1), 4.0);
}
END_TEST

START_TEST(test_backward_bad_inputs) {
    bt_tensor *x = test_param(BT_SHAPE(2, 3), 7, -1, 1);
    bt_tensor *y = bt_exp(x);
    ck_assert_int_eq(bt_backward(y), BT_ERR);
    ck_assert_error_contains(
        "backward: grad can be implicitly created only for one-element outputs, got shape (2,3)");
    bt_tensor *g = bt_ones(BT_SHAPE(3, 2), BT_F32, bt_cpu());
    ck_assert_int_eq(bt_backward_ex(y, g, false), BT_ERR);
    ck_assert_error_contains("backward: gradient (3,2) float32 does not match output (2,3)");
    bt_tensor *i = bt_zeros(BT_SHAPE(2), BT_I32, bt_cpu());
    ck_assert_ptr_null(bt_requires_grad_(i, true));
    ck_assert_error_contains(
        "requires_grad_: only floating-point tensors can require gradients, got int32");
    ck_assert_ptr_null(bt_requires_grad_(y, false));
    ck_assert_error_contains(
        "requires_grad_: only leaf tensors can change requires_grad (this one was made by exp)");
    ck_assert_int_eq(bt_backward(NULL), BT_ERR);
    ck_assert_error_contains("backward: tensor is NULL");
}
END_TEST

START_TEST(test_backward_with_explicit_grad) {
    bt_tensor *x = test_param(BT_SHAPE(2, 2), 8, -1, 1);
    bt_tensor *y = bt_mul_scalar(x, 3.0);
    bt_tensor *g = bt_full(BT_SHAPE(2, 2), 0.5, BT_F32, bt_cpu());
    ck_assert_int_eq(bt_backward_ex(y, g, false), BT_OK);
    ck_assert_double_eq(bt_get(x->grad, 3), 1.5);
}
END_TEST

/* ---- gradient checks: reductions ---- */

struct reduce_case {
    const char *name;
    bt_tensor *(*op)(bt_tensor *, int, bool);
    int dim;
    bool keepdim;
};
static const struct reduce_case reduce_cases[] = {
    {"sum d0", bt_sum, 0, false},       {"sum d1 keep", bt_sum, 1, true},
    {"sum d-1", bt_sum, -1, false},     {"mean d0", bt_mean, 0, true},
    {"mean d2", bt_mean, 2, false},     {"max d1", bt_max, 1, false},
    {"max d-1 keep", bt_max, -1, true},
};

static bt_tensor *fn_reduce(bt_tensor **in, void *ctx) {
    const struct reduce_case *c = ctx;
    return c->op(in[0], c->dim, c->keepdim);
}

START_TEST(test_reduce_gradients) {
    const struct reduce_case *c = &reduce_cases[_i];
    bt_tensor *in[1] = {test_param(BT_SHAPE(2, 3, 4), 30 + (uint64_t)_i, -1, 1)};
    GRADCHECK(c->name, fn_reduce, in, 1, (void *)c);
}
END_TEST

static bt_tensor *fn_sum_all(bt_tensor **in, void *ctx) {
    return bt_sum_all(in[0]);
}
static bt_tensor *fn_mean_all_t(bt_tensor **in, void *ctx) {
    return bt_mean_all(bt_transpose(in[0], 0, 1));
}

START_TEST(test_reduce_all_gradients) {
    bt_tensor *in[1] = {test_param(BT_SHAPE(3, 4), 40, -1, 1)};
    GRADCHECK("sum_all", fn_sum_all, in, 1, NULL);
    GRADCHECK("mean_all(transpose)", fn_mean_all_t, in, 1, NULL);
}
END_TEST

START_TEST(test_reduce_values_and_errors) {
    float v[] = {1, 5, 3, 4, 2, 6};
    bt_tensor *x = bt_from_data(BT_SHAPE(2, 3), BT_F32, v);
    bt_tensor *s = bt_sum(x, 1, false), *m = bt_mean(x, 0, false), *mx = bt_max(x, 1, true);
    ck_assert_double_eq(bt_get(s, 0), 9.0);
    ck_assert_double_eq(bt_get(s, 1), 12.0);
    ck_assert_double_eq(bt_get(m, 1), 3.5);
    ck_assert_int_eq(mx->ndim, 2);
    ck_assert_double_eq(bt_get(mx, 0), 5.0);
    ck_assert_double_eq(bt_get(mx, 1), 6.0);
    ck_assert_double_eq(bt_item(bt_sum_all(x)), 21.0);
    ck_assert_ptr_null(bt_sum(x, 2, false));
    ck_assert_error_contains("sum: dimension 2 out of range for (2,3)");
    ck_assert_ptr_null(bt_max(bt_zeros(BT_SHAPE(2, 0), BT_F32, bt_cpu()), 1, false));
    ck_assert_error_contains("max: dimension 1 of (2,0) is empty");
}
END_TEST

/* ---- gradient checks: views and joins ---- */

static bt_tensor *fn_reshape(bt_tensor **in, void *ctx) {
    return bt_mul(bt_reshape(in[0], BT_SHAPE(4, -1)), bt_reshape(in[0], BT_SHAPE(4, 3)));
}
static bt_tensor *fn_permute(bt_tensor **in, void *ctx) {
    return bt_exp(bt_permute(in[0], (int[]){2, 0, 1}));
}
static bt_tensor *fn_narrow(bt_tensor **in, void *ctx) {
    return bt_add(bt_narrow(in[0], 1, 1, 2), bt_narrow(in[0], 1, 0, 2));
}
static bt_tensor *fn_squeeze(bt_tensor **in, void *ctx) {
    return bt_tanh(bt_unsqueeze(bt_squeeze(in[0], 1), -1));
}
static bt_tensor *fn_cat(bt_tensor **in, void *ctx) {
    bt_tensor *parts[] = {in[0], bt_exp(in[1]), in[0]};
    return bt_cat(parts, 3, *(int *)ctx);
}
static bt_tensor *fn_split(bt_tensor **in, void *ctx) {
    bt_tensor *pieces[3];
    if (bt_split(in[0], (int64_t[]){1, 2, 1}, 3, 1, pieces) != BT_OK) return NULL;
    return bt_add(bt_mul(pieces[0], pieces[2]), bt_sum(pieces[1], 1, true));
}
static bt_tensor *fn_contiguous(bt_tensor **in, void *ctx) {
    return bt_mul(bt_contiguous(bt_transpose(in[0], 0, 1)), bt_transpose(in[0], 0, 1));
}
static bt_tensor *fn_to_dtype(bt_tensor **in, void *ctx) {
    return bt_mul_scalar(bt_to_dtype(bt_to_dtype(in[0], BT_F16), BT_F32), 2.0);
}

START_TEST(test_view_gradients) {
    bt_tensor *a[1] = {test_param(BT_SHAPE(2, 6), 50, -1, 1)};
    GRADCHECK("reshape", fn_reshape, a, 1, NULL);
    bt_tensor *b[1] = {test_param(BT_SHAPE(2, 3, 4), 51, -1, 1)};
    GRADCHECK("permute", fn_permute, b, 1, NULL);
    bt_tensor *c[1] = {test_param(BT_SHAPE(3, 4), 52, -1, 1)};
    GRADCHECK("narrow", fn_narrow, c, 1, NULL);
    bt_tensor *d[1] = {test_param(BT_SHAPE(3, 1, 2), 53, -1, 1)};
    GRADCHECK("squeeze/unsqueeze", fn_squeeze, d, 1, NULL);
    bt_tensor *e[1] = {test_param(BT_SHAPE(3, 4), 54, -1, 1)};
    GRADCHECK("contiguous", fn_contiguous, e, 1, NULL);
    bt_tensor *f[1] = {test_param(BT_SHAPE(5), 55, -1, 1)};
    /* f16 rounding makes finite differences coarse: a looser tolerance */
    gradcheck("to_dtype", fn_to_dtype, f, 1, NULL, 2e-2, 5e-2);
}
END_TEST

START_TEST(test_cat_split_gradients) {
    for (int dim = 0; dim < 2; dim++) {
        bt_tensor *in[2] = {test_param(BT_SHAPE(2, 3), 60, -1, 1),
                            test_param(BT_SHAPE(2, 3), 61, -1, 1)};
        GRADCHECK("cat", fn_cat, in, 2, &dim);
    }
    bt_tensor *in[1] = {test_param(BT_SHAPE(3, 4), 62, -1, 1)};
    GRADCHECK("split", fn_split, in, 1, NULL);
}
END_TEST

START_TEST(test_cat_split_values_and_errors) {
    float a[] = {1, 2, 3, 4}, b[] = {5, 6};
    bt_tensor *x = bt_from_data(BT_SHAPE(2, 2), BT_F32, a),
              *y = bt_from_data(BT_SHAPE(2, 1), BT_F32, b);
    bt_tensor *c = bt_cat((bt_tensor *[]){x, y}, 2, 1);
    float expect[] = {1, 2, 5, 3, 4, 6};
    for (int i = 0; i < 6; i++)
        ck_assert_double_eq(bt_get(c, i), expect[i]);
    ck_assert_ptr_null(bt_cat((bt_tensor *[]){x, y}, 2, 0));
    ck_assert_error_contains(
        "cat: tensor 1 (2,1) float32 does not match tensor 0 (2,2) float32 outside dimension 0");
    bt_tensor *pieces[2];
    ck_assert_int_eq(bt_split(c, (int64_t[]){2, 2}, 2, 1, pieces), BT_ERR);
    ck_assert_error_contains("split: 2 sizes summing to 4 do not match dimension 1 of (2,3)");
}
END_TEST

/* ---- gradcheck must catch a wrong backward ---- */

static bt_status wrong_square_backward(struct ag_node *node) {
    /* claims d(x^2)/dx = x instead of 2x */
    bt_tensor *x = node->inputs[0];
    bt_tensor *g = bt_mul(bt_detach(node->out->grad), bt_detach(x));
    return ag_accumulate(x, g);
}

static bt_tensor *fn_wrong_square(bt_tensor **in, void *ctx) {
    bool prev = bt_set_grad_enabled(false);
    bt_tensor *y = bt_mul(in[0], in[0]);
    bt_set_grad_enabled(prev);
    ag_record("wrong_square", wrong_square_backward, y, 1, in);
    return y;
}

static int profile_syncs;
static void count_sync(void) {
    profile_syncs++;
}

START_TEST(test_profile_marks_call_the_sync_hook) {
    /* braid train sets the device's synchronize as the hook on cuda: every mark (and the start)
     * waits for queued work before reading the clock; no hook, no calls; off, nothing */
    bt_profile_set_sync(count_sync);
    bt_profile_enable(true);
    bt_profile_start();
    bt_tensor *x = bt_requires_grad_(test_param(BT_SHAPE(4), 3, -1.0f, 1.0f), true);
    bt_tensor *y = bt_sum(bt_exp(x), 0, false); /* two recorded ops: two marks */
    ck_assert_ptr_nonnull(y);
    ck_assert_int_eq(profile_syncs, 3);
    bt_profile_mark("step", "data");
    ck_assert_int_eq(profile_syncs, 4);
    bt_profile_set_sync(NULL);
    bt_profile_mark("step", "data");
    ck_assert_int_eq(profile_syncs, 4);
    bt_profile_set_sync(count_sync);
    bt_profile_enable(false);
    bt_profile_mark("step", "data");
    bt_profile_start();
    ck_assert_int_eq(profile_syncs, 4);
    bt_profile_set_sync(NULL);
    bt_step_end();
}
END_TEST

START_TEST(test_gradcheck_catches_wrong_gradient) {
    bt_tensor *in[1] = {test_param(BT_SHAPE(4), 70, 0.5f, 1.5f)};
    ck_assert_double_gt(gradcheck_error("wrong_square", fn_wrong_square, in, 1, NULL, 2e-3, 2e-2),
                        10.0);
}
END_TEST

/* ag_set_leaf_hook: each leaf reported once, when its gradient is final — in reverse order of
 * last use, a leaf used twice (tied) after its second use's backward, one whose node did not
 * run at the end — and never again in a backward without the hook. */
struct hook_log {
    bt_tensor *seen[8];
    double grad_at_hook[8];
    int n;
};

static void log_leaf(bt_tensor *leaf, void *ctx) {
    struct hook_log *log = ctx;
    ck_assert_int_lt(log->n, 8);
    log->seen[log->n] = leaf;
    log->grad_at_hook[log->n] = leaf->grad ? bt_get(leaf->grad, 0) : NAN;
    log->n++;
}

START_TEST(test_leaf_hook_reports_final_gradients) {
    bt_tensor *a = test_param(BT_SHAPE(3), 1, -1, 1); /* used first and last: tied */
    bt_tensor *b = test_param(BT_SHAPE(3), 2, -1, 1); /* used in the middle */
    bt_tensor *c = test_param(BT_SHAPE(3), 3, -1, 1); /* in a branch that gets no gradient */
    struct hook_log log = {0};
    ag_set_leaf_hook(log_leaf, &log);
    bt_tensor *h = bt_mul(a, a);                     /* first use of a */
    bt_tensor *g = bt_add(h, b);                     /* b */
    bt_tensor *loss = bt_sum_all(bt_mul(g, a));      /* last use of a */
    bt_tensor *unused = bt_mul_scalar(c, 2.0);       /* on the tape, not in the loss */
    ck_assert_ptr_nonnull(unused);
    ck_assert_int_eq(bt_backward(loss), BT_OK);
    ck_assert_int_eq(log.n, 3);
    ck_assert_ptr_eq(log.seen[0], b); /* b's only use runs before a's first use */
    ck_assert_ptr_eq(log.seen[1], a); /* after both uses */
    ck_assert_ptr_eq(log.seen[2], c); /* its node never ran: reported at the end */
    ck_assert_double_eq(log.grad_at_hook[1], bt_get(a->grad, 0)); /* final when reported */
    ck_assert_double_eq(log.grad_at_hook[0], bt_get(b->grad, 0));
    ck_assert_int_eq(a->ag_pending + b->ag_pending + c->ag_pending, 0);
    ag_set_leaf_hook(NULL, NULL); /* (a, b are step tensors: no bt_step_end before reusing them) */
    log.n = 0;
    ck_assert_int_eq(bt_backward(bt_sum_all(bt_mul(a, b))), BT_OK);
    ck_assert_int_eq(log.n, 0);
}
END_TEST

START_TEST(test_backward_reuses_dead_gradients) {
    /* A chain of six ops: each intermediate gradient is dead once its node has run, so the step
     * arena hands it to the next gradient of the same size instead of bumping further. */
    bt_tensor *x = test_param(BT_SHAPE(1024), 4, -1, 1);
    bt_tensor *y = x;
    for (int i = 0; i < 6; i++)
        y = bt_mul_scalar(y, 2.0);
    struct bt_runtime *rt = bt_runtime();
    struct bt_arena_stats before = bt_arena_stats(rt->step_arena);
    ck_assert_int_eq(bt_backward(bt_sum_all(y)), BT_OK);
    struct bt_arena_stats after = bt_arena_stats(rt->step_arena);
    ck_assert_uint_ge(after.reuses - before.reuses, 4);
    /* without reuse each of the 7 gradients (the seed's expansion and 6 inputs') takes 4 KiB */
    ck_assert_uint_lt(after.used - before.used, 4 * 4096);
    for (int i = 0; i < 1024; i++)
        ck_assert_double_eq(bt_get(x->grad, i), 64.0);
}
END_TEST

START_TEST(test_reuse_keeps_adopted_gradients) {
    /* v = reshape(y): reshape's backward hands y a view of v's gradient (adopted), so that
     * buffer must outlive v's node. Were it recycled, x's gradient (the next 64-byte step buffer
     * asked for) would land on it and matmul's backward would write dx over the gradient it is
     * reading. loss = sum(v * v), dy = 2y, dx = 2y W^T. */
    bt_tensor *x = test_param(BT_SHAPE(4, 4), 5, -1, 1);
    bt_tensor *w = test_param(BT_SHAPE(4, 4), 6, -1, 1);
    bt_tensor *y = bt_matmul(x, w);
    bt_tensor *v = bt_reshape(y, BT_SHAPE(16));
    ck_assert_int_eq(bt_backward(bt_sum_all(bt_mul(v, v))), BT_OK);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            double want = 0.0;
            for (int k = 0; k < 4; k++)
                want += 2.0 * bt_get(y, i * 4 + k) * bt_get(w, j * 4 + k);
            ck_assert_double_eq_tol(bt_get(x->grad, i * 4 + j), want, 1e-5);
        }
}
END_TEST

static Suite *autograd_suite(void) {
    Suite *s = suite_create("autograd");
    bt_suite_add(s, test_shared_input);
    bt_suite_add(s, test_dynamic_loop_depth_from_data);
    bt_suite_add(s, test_grad_accumulates_across_backwards);
    bt_suite_add(s, test_no_grad_records_nothing);
    bt_suite_add(s, test_retain_grad_intermediate);
    bt_suite_add(s, test_graph_released_after_backward);
    bt_suite_add(s, test_independent_graphs_backward_separately);
    bt_suite_add(s, test_backward_bad_inputs);
    bt_suite_add(s, test_backward_with_explicit_grad);
    bt_suite_add(s, test_gradcheck_catches_wrong_gradient);
    bt_suite_add_loop(s, test_reduce_gradients, 0,
                      (int)(sizeof(reduce_cases) / sizeof(reduce_cases[0])));
    bt_suite_add(s, test_reduce_all_gradients);
    bt_suite_add(s, test_reduce_values_and_errors);
    bt_suite_add(s, test_view_gradients);
    bt_suite_add(s, test_cat_split_gradients);
    bt_suite_add(s, test_cat_split_values_and_errors);
    bt_suite_add(s, test_leaf_hook_reports_final_gradients);
    bt_suite_add(s, test_backward_reuses_dead_gradients);
    bt_suite_add(s, test_reuse_keeps_adopted_gradients);
    bt_suite_add(s, test_profile_marks_call_the_sync_hook);
    return s;
}

BT_TEST_MAIN(autograd_suite)
