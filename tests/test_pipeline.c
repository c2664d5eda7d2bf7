/* The pipeline scheduler (parallel/pipeline.c) on a toy model of S stages, one per rank of the
 * world: stage s computes tanh(x @ W_s^T) and the last stage's loss is mean(y^2) / m. Every rank
 * also runs the whole chain alone, micro-batch after micro-batch, as single-rank gradient
 * accumulation does; the pipeline's loss and this rank's stage gradient must equal it exactly
 * (the same ops in the same order), with GPipe and with 1F1B, and 1F1B must hold at most S - s
 * micro-batches in flight where GPipe holds all m. Runs alone (S = 1) and under mpirun with 2 and
 * 4 ranks (tests/pipeline_tests.cmake). */
#include <string.h>

#include "comm/comm.h"
#include "core/autograd.h"
#include "core/runtime.h"
#include "parallel/pipeline.h"
#include "tests/gradcheck.h"
#include "tests/mpi_test.h"

enum { B = 3, C = 8, M = 6 }; /* batch rows, features, micro-batches */

static int stages(void) {
    return comm_size(comm_world());
}

static int stage(void) {
    return comm_rank(comm_world());
}

/* W_s (C, C), the same on every rank */
static bt_tensor *weight_of(int s) {
    bt_tensor *w = bt_tensor_new(BT_SHAPE(C, C), BT_F32, bt_cpu());
    struct bt_rng rng = bt_rng_make(100 + (uint64_t)s);
    bt_fill_uniform(w, &rng, -0.6f, 0.6f);
    return bt_requires_grad_(w, true);
}

/* micro-batch i's input (B, C) */
static bt_tensor *input_of(int64_t i) {
    bt_tensor *x = bt_empty(BT_SHAPE(B, C), BT_F32, bt_cpu());
    struct bt_rng rng = bt_rng_make(500 + (uint64_t)i);
    bt_fill_uniform(x, &rng, -1.0f, 1.0f);
    return x;
}

static bt_tensor *stage_forward(bt_tensor *w, bt_tensor *x) {
    return bt_tanh(bt_linear(x, w, NULL));
}

static bt_tensor *loss_of(bt_tensor *y) {
    return bt_mul_scalar(bt_mean_all(bt_mul(y, y)), 1.0 / M);
}

struct toy {
    bt_tensor *w; /* this rank's stage */
};

static bt_tensor *toy_forward(void *ctx, int64_t micro, bt_tensor *in) {
    struct toy *t = ctx;
    bt_tensor *y = stage_forward(t->w, in ? in : input_of(micro));
    return stage() == stages() - 1 ? loss_of(y) : y;
}

static int last_backward_calls;
static void count_last_backward(void *ctx) {
    (void)ctx;
    last_backward_calls++;
}

/* the single-rank reference: every stage's weights, grad accumulated over the M micro-batches */
static double reference(bt_tensor **w) {
    double loss = 0.0;
    for (int64_t i = 0; i < M; i++) {
        bt_tensor *y = input_of(i);
        for (int s = 0; s < stages(); s++)
            y = stage_forward(w[s], y);
        bt_tensor *l = loss_of(y);
        loss += bt_item(l);
        ck_assert_int_eq(bt_backward(l), BT_OK);
        bt_step_end();
    }
    return loss;
}

static void check_schedule(pp_schedule schedule) {
    int S = stages(), s = stage();
    bt_tensor *w[8];
    for (int k = 0; k < S; k++)
        w[k] = weight_of(k);
    double want = reference(w);

    struct toy toy = {.w = weight_of(s)};
    struct pp_options o = {
        .schedule = schedule, .microbatches = M, .act_ndim = 2, .act_shape = {B, C}};
    struct pipeline *p = pp_create(comm_world(), &o);
    ck_assert_msg(p != NULL, "%s", bt_last_error());
    struct pp_step_stats stats;
    last_backward_calls = 0;
    for (int step = 0; step < 2; step++) { /* a second step reuses the frames */
        bt_zero_grad(toy.w);
        ck_assert_msg(pp_step(p, toy_forward, count_last_backward, &toy, &stats) == BT_OK,
                      "rank %d: %s", s, bt_last_error());
    }
    ck_assert_int_eq(last_backward_calls, 2);
    if (s == S - 1)
        ck_assert_msg(stats.loss_sum == want, "loss %.9g, expected %.9g", stats.loss_sum, want);
    for (int64_t k = 0; k < C * C; k++) /* bit for bit: the same ops in the same order */
        ck_assert_msg(bt_get(toy.w->grad, k) == bt_get(w[s]->grad, k),
                      "stage %d gradient element %lld: %.9g, expected %.9g", s, (long long)k,
                      bt_get(toy.w->grad, k), bt_get(w[s]->grad, k));
    int64_t bound = schedule == PP_SCHEDULE_GPIPE ? M : (S - s < M ? S - s : M);
    ck_assert_int_eq(stats.max_in_flight, bound);
    ck_assert_uint_gt(stats.peak_activation_bytes, 0);
    ck_assert_ptr_null(bt_runtime()->tape); /* back in the runtime's frame, nothing recorded */
    pp_free(p);
    bt_tensor_free(toy.w);
    for (int k = 0; k < S; k++)
        bt_tensor_free(w[k]);
}

MPI_TEST(test_gpipe_equals_gradient_accumulation) {
    check_schedule(PP_SCHEDULE_GPIPE);
}

MPI_TEST(test_1f1b_equals_gradient_accumulation) {
    check_schedule(PP_SCHEDULE_1F1B);
}

/* 1F1B's activation memory is bounded by the stages, GPipe's grows with the micro-batches */
MPI_TEST(test_1f1b_holds_less_than_gpipe) {
    struct toy toy = {.w = weight_of(stage())};
    size_t peak[2];
    for (int k = 0; k < 2; k++) {
        struct pp_options o = {.schedule = k ? PP_SCHEDULE_1F1B : PP_SCHEDULE_GPIPE,
                               .microbatches = M,
                               .act_ndim = 2,
                               .act_shape = {B, C}};
        struct pipeline *p = pp_create(comm_world(), &o);
        struct pp_step_stats stats;
        ck_assert(p && pp_step(p, toy_forward, NULL, &toy, &stats) == BT_OK);
        peak[k] = stats.peak_activation_bytes;
        pp_free(p);
    }
    if (stages() - stage() < M)
        ck_assert_msg(peak[1] < peak[0], "1F1B held %zu bytes, GPipe %zu", peak[1], peak[0]);
    bt_tensor_free(toy.w);
}

/* evaluation: forward only, the losses of the whole chain, nothing recorded */
MPI_TEST(test_forward_only) {
    int S = stages(), s = stage();
    bt_tensor *w[8];
    for (int k = 0; k < S; k++)
        w[k] = weight_of(k);
    double want = 0.0;
    for (int64_t i = 0; i < M + 3; i++) {
        bt_tensor *y = input_of(i);
        for (int k = 0; k < S; k++)
            y = stage_forward(w[k], y);
        want += bt_item(loss_of(y));
        bt_step_end();
    }
    struct toy toy = {.w = weight_of(s)};
    struct pp_options o = {
        .schedule = PP_SCHEDULE_1F1B, .microbatches = M, .act_ndim = 2, .act_shape = {B, C}};
    struct pipeline *p = pp_create(comm_world(), &o);
    double loss = -1.0;
    ck_assert_msg(pp_forward_only(p, M + 3, toy_forward, &toy, &loss) == BT_OK, "%s",
                  bt_last_error());
    ck_assert(loss == (s == S - 1 ? want : 0.0));
    ck_assert_ptr_null(bt_runtime()->tape);
    ck_assert_ptr_null(toy.w->grad);
    ck_assert(bt_is_grad_enabled());
    pp_free(p);
    bt_tensor_free(toy.w);
    for (int k = 0; k < S; k++)
        bt_tensor_free(w[k]);
}

static bt_tensor *wrong_shape(void *ctx, int64_t micro, bt_tensor *in) {
    (void)ctx;
    (void)micro;
    (void)in;
    return bt_zeros(BT_SHAPE(2, 2), BT_F32, bt_cpu());
}

/* errors a single rank can show without leaving neighbours waiting */
MPI_TEST(test_errors) {
    pp_schedule sch;
    ck_assert(!pp_schedule_parse("zigzag", &sch));
    ck_assert_error_contains(
        "parallel.schedule: unknown schedule 'zigzag' (expected 1f1b or gpipe)");
    ck_assert(pp_schedule_parse("gpipe", &sch) && sch == PP_SCHEDULE_GPIPE);
    struct pp_options o = {
        .schedule = PP_SCHEDULE_1F1B, .microbatches = 0, .act_ndim = 2, .act_shape = {B, C}};
    ck_assert_ptr_null(pp_create(comm_world(), &o));
    ck_assert_error_contains("expected at least one micro-batch");
    if (stages() > 1) return;
    o.microbatches = 2;
    struct pipeline *p = pp_create(comm_world(), &o);
    ck_assert_int_eq(pp_step(p, wrong_shape, NULL, NULL, NULL), BT_ERR);
    ck_assert_error_contains("pipeline: the last stage returned (2,2) for micro-batch 0, expected "
                             "its loss (one element)");
    bt_frame_enter(NULL);
    pp_free(p);
    bt_step_end();
}

static Suite *pipeline_suite(void) {
    Suite *s = suite_create("pipeline");
    bt_suite_add(s, test_gpipe_equals_gradient_accumulation);
    bt_suite_add(s, test_1f1b_equals_gradient_accumulation);
    bt_suite_add(s, test_1f1b_holds_less_than_gpipe);
    bt_suite_add(s, test_forward_only);
    bt_suite_add(s, test_errors);
    return s;
}

MPI_TEST_MAIN(pipeline_suite)
