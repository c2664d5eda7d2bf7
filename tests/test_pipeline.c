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
    bt_tensor *w;     /* this rank's stage */
    bt_tensor *wc[4]; /* interleaved: chunk c's, virtual stage c·S + rank */
    int chunks;       /* 0: not interleaved */
    int64_t m;        /* micro-batches, for the loss scale */
};

static bt_tensor *toy_forward(void *ctx, int chunk, int64_t micro, bt_tensor *in) {
    struct toy *t = ctx;
    if (t->chunks) { /* virtual stage chunk·S + rank of S·chunks */
        bt_tensor *y = stage_forward(t->wc[chunk], in ? in : input_of(micro));
        bool last = chunk == t->chunks - 1 && stage() == stages() - 1;
        return last ? bt_mul_scalar(bt_mean_all(bt_mul(y, y)), 1.0 / (double)t->m) : y;
    }
    ck_assert_int_eq(chunk, 0);
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

/* interleaved 1F1B: v = 2 chunks per rank, the chain of S·v virtual stages, m = 2S micro-batches;
 * loss and both chunks' gradients bit-identical to single-rank gradient accumulation */
MPI_TEST(test_interleaved_equals_gradient_accumulation) {
    enum { V = 2 };
    int S = stages(), s = stage();
    int64_t m = 2 * S;
    if (S == 1) { /* one stage has nothing to interleave */
        struct pp_options one = {.schedule = PP_SCHEDULE_1F1B,
                                 .microbatches = 2,
                                 .chunks = V,
                                 .act_ndim = 2,
                                 .act_shape = {B, C}};
        ck_assert_ptr_null(pp_create(comm_world(), &one));
        ck_assert_error_contains("2 virtual stages per rank need at least 2 pipeline stages");
        return;
    }
    bt_tensor *w[16];
    for (int k = 0; k < S * V; k++)
        w[k] = weight_of(k);
    double want = 0.0;
    for (int64_t i = 0; i < m; i++) {
        bt_tensor *y = input_of(i);
        for (int k = 0; k < S * V; k++)
            y = stage_forward(w[k], y);
        bt_tensor *l = bt_mul_scalar(bt_mean_all(bt_mul(y, y)), 1.0 / (double)m);
        want += bt_item(l);
        ck_assert_int_eq(bt_backward(l), BT_OK);
        bt_step_end();
    }
    struct toy toy = {.chunks = V, .m = m};
    for (int c = 0; c < V; c++)
        toy.wc[c] = weight_of(c * S + s);
    struct pp_options o = {.schedule = PP_SCHEDULE_1F1B,
                           .microbatches = m,
                           .chunks = V,
                           .act_ndim = 2,
                           .act_shape = {B, C}};
    struct pipeline *p = pp_create(comm_world(), &o);
    ck_assert_msg(p != NULL, "%s", bt_last_error());
    struct pp_step_stats stats;
    last_backward_calls = 0;
    ck_assert_msg(pp_step(p, toy_forward, count_last_backward, &toy, &stats) == BT_OK,
                  "rank %d: %s", s, bt_last_error());
    ck_assert_int_eq(last_backward_calls, 1);
    if (s == S - 1)
        ck_assert_msg(stats.loss_sum == want, "loss %.9g, expected %.9g", stats.loss_sum, want);
    for (int c = 0; c < V; c++)
        for (int64_t k = 0; k < C * C; k++)
            ck_assert_msg(bt_get(toy.wc[c]->grad, k) == bt_get(w[c * S + s]->grad, k),
                          "rank %d chunk %d gradient element %lld: %.9g, expected %.9g", s, c,
                          (long long)k, bt_get(toy.wc[c]->grad, k), bt_get(w[c * S + s]->grad, k));
    /* Megatron's warm-up: 2(S-s-1) + (v-1)S forwards before the first backward */
    int64_t warmup = 2 * (S - s - 1) + (V - 1) * S;
    ck_assert_int_le(stats.max_in_flight, (warmup < m * V ? warmup : m * V) + 1);
    /* evaluation goes through the chunks too */
    double loss = -1.0;
    bt_zero_grad(toy.wc[0]);
    ck_assert(pp_forward_only(p, m, toy_forward, &toy, &loss) == BT_OK);
    if (s == S - 1) ck_assert_double_eq_tol(loss, want, 1e-12);
    pp_free(p);
    for (int c = 0; c < V; c++)
        bt_tensor_free(toy.wc[c]);
    for (int k = 0; k < S * V; k++)
        bt_tensor_free(w[k]);
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

static bt_tensor *wrong_shape(void *ctx, int chunk, int64_t micro, bt_tensor *in) {
    (void)ctx;
    (void)chunk;
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
    o.microbatches = 3 * stages() + 1;
    o.chunks = 2;
    o.schedule = PP_SCHEDULE_GPIPE;
    ck_assert_ptr_null(pp_create(comm_world(), &o));
    if (stages() > 1)
        ck_assert_error_contains("virtual stages per rank need the 1f1b schedule and a number of "
                                 "micro-batches divisible by the");
    o.chunks = 0;
    o.schedule = PP_SCHEDULE_1F1B;
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
    bt_suite_add(s, test_interleaved_equals_gradient_accumulation);
    bt_suite_add(s, test_forward_only);
    bt_suite_add(s, test_errors);
    return s;
}

MPI_TEST_MAIN(pipeline_suite)
