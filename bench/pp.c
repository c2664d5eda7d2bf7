/* bench_pp: the pipeline scheduler's bubble and activation memory (parallel/pipeline.c), on equal
 * synthetic stages, so that the schedule, not the model's balance, is measured. Each stage is
 * `layers` layers tanh(x @ W^T) of width C on (rows, C) micro-batches, run through pp_step with
 * real autograd, sends and receives in either mode:
 *  - --compute mlp (default): real layers, 512 wide on 256 rows; each stage needs a core.
 *  - --compute timed: tiny layers (64 wide, 8 rows: microseconds of compute, 2 KB messages), each
 *    followed by an identity op that sleeps until the layer has lasted --layer-ms (default 3) in
 *    the forward and twice that in the backward (at least; a layer computing longer does not
 *    sleep). Sleeping stages need no core, so the schedule's bubble can be timed with more stages
 *    than cores; compute contention is not measured.
 * Run under mpirun, one rank per stage (bench/pp.sh does):
 *
 *   mpirun -np S bench_pp [--schedule 1f1b|gpipe] [--chunks V] [--microbatches M]
 *                         [--compute mlp|timed] [--layer-ms T] [--width C] [--rows R]
 *                         [--layers L] [--steps N]
 *
 * Per step, on each stage: the compute time (inside the forward callbacks and the backwards, as
 * pp_step_stats counts it) and the step's wall time; bubble = 1 - compute / wall, the fraction of
 * the step the stage waited. GPipe and 1F1B both idle (S-1)/(M+S-1) of the step in theory (equal
 * stages, no communication cost); interleaved 1F1B with V chunks per rank (each L/V layers)
 * (S-1)/(V·M+S-1). Prints key=value lines on rank 0: the medians over the steps after a warm-up
 * of the worst stage's bubble (and its range over those steps), the analytic one, the worst
 * stage's step time, the least and most compute of a stage (timed: against the nominal
 * 3 · layer-ms per layer and micro-batch), and the largest stage's peak activation memory and
 * micro-batches in flight. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench.h"
#include "comm/comm.h"
#include "core/autograd.h"
#include "core/ops.h"
#include "core/runtime.h"
#include "parallel/pipeline.h"

struct stage {
    int layers;       /* of this rank, over all its chunks */
    int chunks;       /* interleaved: virtual stages per rank, layers / chunks layers each */
    bt_tensor *w[16]; /* chunk c's layers are w[c * layers / chunks ...] */
    int64_t rows, width, microbatches;
    bool last_rank;
    /* --compute timed: a layer's forward lasts layer_seconds, its backward twice that */
    bool timed;
    double layer_seconds;
    double backward_start; /* when the backward of the chunk running now began */
};

static _Noreturn void die(const char *what) {
    fprintf(stderr, "bench_pp: %s: %s\n", what, bt_last_error());
    comm_abort(1);
}

/* Sleeps until `deadline` (bench_now's clock, CLOCK_MONOTONIC): an absolute deadline, so that
 * the layers of a chunk do not add up their wake-up delays. */
static void sleep_until(double deadline) {
    struct timespec ts = {.tv_sec = (time_t)deadline};
    ts.tv_nsec = (long)((deadline - (double)ts.tv_sec) * 1e9);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

/* ---- the timed layer's wait: an identity op whose forward and backward last a fixed time ---- */

enum { WAIT_STAGE, WAIT_FROM_TOP }; /* node->i slots: the stage; the layer's place in its chunk */

/* dx = dy, once the backward of this layer and those above it in the chunk has lasted 2 · layer
 * each since the chunk's backward began (the top layer's wait runs first and notes that time) */
static bt_status timed_wait_backward(struct ag_node *node) {
    struct stage *s = (struct stage *)(intptr_t)node->i[WAIT_STAGE];
    int64_t from_top = node->i[WAIT_FROM_TOP];
    if (from_top == 0) s->backward_start = bench_now();
    sleep_until(s->backward_start + (double)(from_top + 1) * 2.0 * s->layer_seconds);
    return ag_accumulate(node->inputs[0], node->out->grad);
}

/* out = x, returned at `deadline`; from_top: 0 for the chunk's last layer, 1 for the one below */
static bt_tensor *timed_wait(struct stage *s, bt_tensor *x, double deadline, int from_top) {
    bt_tensor *out = x ? bt_empty(x->ndim, x->shape, BT_F32, bt_cpu()) : NULL;
    if (!out || bt_copy_(out, x) != BT_OK) return NULL;
    sleep_until(deadline);
    struct ag_node *node = ag_record("timed_wait", timed_wait_backward, out, 1, &x);
    if (node) {
        node->i[WAIT_STAGE] = (int64_t)(intptr_t)s;
        node->i[WAIT_FROM_TOP] = from_top;
    }
    return out;
}

static bt_tensor *stage_forward(void *ctx, int chunk, int64_t micro, bt_tensor *in) {
    struct stage *s = ctx;
    double start = bench_now();
    int per_chunk = s->layers / s->chunks;
    bt_tensor *x = in;
    if (!x) { /* the first stage makes micro-batch `micro` */
        x = bt_empty(BT_SHAPE(s->rows, s->width), BT_F32, bt_cpu());
        struct bt_rng rng = bt_rng_make(1000 + (uint64_t)micro);
        bt_fill_uniform(x, &rng, -1.0f, 1.0f);
    }
    for (int k = 0; k < per_chunk; k++) {
        x = bt_tanh(bt_linear(x, s->w[chunk * per_chunk + k], NULL));
        if (s->timed) x = timed_wait(s, x, start + (k + 1) * s->layer_seconds, per_chunk - 1 - k);
    }
    if (!s->last_rank || chunk != s->chunks - 1) return x;
    return bt_mul_scalar(bt_mean_all(bt_mul(x, x)), 1.0 / (double)s->microbatches);
}

int main(int argc, char **argv) {
    const char *schedule_name = "1f1b", *compute = "mlp";
    int64_t m = 8, width = 0, rows = 0; /* 0: the mode's default */
    int layers = 4, steps = 6, chunks = 1;
    double layer_ms = 3.0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--schedule"))
            schedule_name = argv[i + 1];
        else if (!strcmp(argv[i], "--compute"))
            compute = argv[i + 1];
        else if (!strcmp(argv[i], "--layer-ms"))
            layer_ms = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--microbatches"))
            m = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--width"))
            width = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--rows"))
            rows = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--layers"))
            layers = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--chunks"))
            chunks = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps"))
            steps = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "bench_pp: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    bool timed = !strcmp(compute, "timed");
    if (!timed && strcmp(compute, "mlp") != 0) {
        fprintf(stderr, "bench_pp: --compute %s: expected mlp or timed\n", compute);
        return 2;
    }
    /* timed: tiny layers, whose real compute and transfers take microseconds */
    if (width == 0) width = timed ? 64 : 512;
    if (rows == 0) rows = timed ? 8 : 256;
    if (layers < 1 || layers > 16 || steps < 2 || m < 1 || chunks < 1 || layers % chunks != 0 ||
        width < 1 || rows < 1 || !(layer_ms >= 0.0)) {
        fprintf(stderr, "bench_pp: need 1-16 layers divisible by --chunks, at least 2 steps, 1 "
                        "micro-batch, a positive width and rows and --layer-ms >= 0\n");
        return 2;
    }
    if (comm_init(&argc, &argv) != BT_OK) die("comm_init");
    struct comm *world = comm_world();
    int S = comm_size(world), rank = comm_rank(world);
    pp_schedule schedule;
    if (!pp_schedule_parse(schedule_name, &schedule)) die("--schedule");
    struct stage st = {.layers = layers,
                       .rows = rows,
                       .width = width,
                       .microbatches = m,
                       .chunks = chunks,
                       .last_rank = rank == S - 1,
                       .timed = timed,
                       .layer_seconds = layer_ms / 1e3};
    for (int l = 0; l < layers; l++) {
        st.w[l] = bt_tensor_new(BT_SHAPE(width, width), BT_F32, bt_cpu());
        struct bt_rng rng = bt_rng_make(7 + (uint64_t)(rank * layers + l));
        bt_fill_uniform(st.w[l], &rng, -0.05f, 0.05f);
        bt_requires_grad_(st.w[l], true);
    }
    struct pp_options o = {.schedule = schedule,
                           .microbatches = m,
                           .chunks = chunks,
                           .act_ndim = 2,
                           .act_shape = {rows, width}};
    struct pipeline *p = pp_create(world, &o);
    if (!p) die("pp_create");
    double *bubble = calloc((size_t)steps, sizeof *bubble);
    double *step_ms = calloc((size_t)steps, sizeof *step_ms);
    double *compute_ms = calloc((size_t)steps * 2, sizeof *compute_ms);
    if (!bubble || !step_ms || !compute_ms) {
        fprintf(stderr, "bench_pp: out of memory\n");
        comm_abort(1);
    }
    struct pp_step_stats stats = {0};
    for (int step = 0; step < steps; step++) {
        for (int l = 0; l < layers; l++)
            bt_zero_grad(st.w[l]);
        if (comm_barrier(world) != BT_OK) die("barrier");
        double t0 = bench_now();
        if (pp_step(p, stage_forward, NULL, &st, &stats) != BT_OK) die("pp_step");
        double wall = bench_now() - t0;
        /* the worst stage's idle fraction: a stage finishes its last backward before the first
         * stage does, so each measures its own wall time from the common start */
        /* and the range of the stages' compute times (-min, to take it with COMM_MAX) */
        double worst[4] = {1.0 - stats.compute_seconds / wall, wall * 1e3,
                           stats.compute_seconds * 1e3, -stats.compute_seconds * 1e3};
        if (comm_allreduce_doubles(world, worst, 4, COMM_MAX) != BT_OK) die("allreduce");
        bubble[step] = worst[0];
        step_ms[step] = worst[1];
        compute_ms[step] = -worst[3];
        compute_ms[steps + step] = worst[2];
        bt_step_end();
    }
    double peak[2] = {(double)stats.peak_activation_bytes, (double)stats.max_in_flight};
    if (comm_allreduce_doubles(world, peak, 2, COMM_MAX) != BT_OK) die("allreduce");
    double measured = bench_median(bubble + 1, steps - 1); /* sorts: the range is at the ends */
    if (rank == 0)
        /* interleaving divides the idle time by the chunks: (S-1)/v of a micro-batch's time */
        printf("stages=%d schedule=%s chunks=%d microbatches=%lld compute=%s layer_ms=%g "
               "width=%lld rows=%lld layers_per_stage=%d bubble=%.3f bubble_min=%.3f "
               "bubble_max=%.3f analytic_bubble=%.3f step_ms=%.1f compute_ms_min=%.1f "
               "compute_ms_max=%.1f nominal_compute_ms=%.1f peak_activation_mb=%.1f "
               "max_in_flight=%.0f\n",
               S, schedule_name, chunks, (long long)m, compute, timed ? layer_ms : 0.0,
               (long long)width, (long long)rows, layers, measured, bubble[1], bubble[steps - 1],
               (double)(S - 1) / (double)(chunks * m + S - 1), bench_median(step_ms + 1, steps - 1),
               bench_median(compute_ms + 1, steps - 1),
               bench_median(compute_ms + steps + 1, steps - 1),
               timed ? (double)(m * layers) * 3.0 * layer_ms : 0.0, peak[0] / 1e6, peak[1]);
    for (int l = 0; l < layers; l++)
        bt_tensor_free(st.w[l]);
    free(compute_ms);
    free(step_ms);
    free(bubble);
    pp_free(p);
    bt_runtime_shutdown();
    comm_finalize();
    return 0;
}
