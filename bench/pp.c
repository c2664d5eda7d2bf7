/* bench_pp: the pipeline scheduler's bubble and activation memory (parallel/pipeline.c), on equal
 * synthetic stages — each stage is `layers` MLP layers tanh(x @ W^T) of width C on (rows, C)
 * micro-batches — so that the schedule, not the model's balance, is measured. Run under mpirun,
 * one rank per stage (bench/pp.sh does):
 *
 *   mpirun -np S bench_pp [--schedule 1f1b|gpipe] [--chunks V] [--microbatches M] [--width C]
 *                         [--rows R] [--layers L] [--steps N]
 *
 * Per step, on each stage: the compute time (inside the forward callbacks and the backwards) and
 * the step's wall time; bubble = 1 - compute / wall, the fraction of the step the stage waited.
 * GPipe and 1F1B both idle (S-1)/(M+S-1) of the step in theory (equal stages, no communication
 * cost); interleaved 1F1B with V chunks per rank (each L/V layers) (S-1)/(V·M+S-1). Prints
 * key=value lines on rank 0: the medians over the steps after a warm-up of the worst stage's
 * bubble, the analytic one, and the largest stage's peak activation memory and micro-batches in
 * flight. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
};

static _Noreturn void die(const char *what) {
    fprintf(stderr, "bench_pp: %s: %s\n", what, bt_last_error());
    comm_abort(1);
}

static bt_tensor *stage_forward(void *ctx, int chunk, int64_t micro, bt_tensor *in) {
    struct stage *s = ctx;
    int per_chunk = s->layers / s->chunks;
    bt_tensor *x = in;
    if (!x) { /* the first stage makes micro-batch `micro` */
        x = bt_empty(BT_SHAPE(s->rows, s->width), BT_F32, bt_cpu());
        struct bt_rng rng = bt_rng_make(1000 + (uint64_t)micro);
        bt_fill_uniform(x, &rng, -1.0f, 1.0f);
    }
    for (int l = chunk * per_chunk; l < (chunk + 1) * per_chunk; l++)
        x = bt_tanh(bt_linear(x, s->w[l], NULL));
    if (!s->last_rank || chunk != s->chunks - 1) return x;
    return bt_mul_scalar(bt_mean_all(bt_mul(x, x)), 1.0 / (double)s->microbatches);
}

int main(int argc, char **argv) {
    const char *schedule_name = "1f1b";
    int64_t m = 8, width = 512, rows = 256;
    int layers = 4, steps = 6, chunks = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--schedule"))
            schedule_name = argv[i + 1];
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
    if (layers < 1 || layers > 16 || steps < 2 || m < 1 || chunks < 1 || layers % chunks != 0) {
        fprintf(stderr, "bench_pp: need 1-16 layers divisible by --chunks, at least 2 steps and 1 "
                        "micro-batch\n");
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
                       .last_rank = rank == S - 1};
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
        double idle = 1.0 - stats.compute_seconds / wall;
        if (comm_allreduce_doubles(world, &idle, 1, COMM_MAX) != BT_OK) die("allreduce");
        bubble[step] = idle;
        bt_step_end();
    }
    double peak[2] = {(double)stats.peak_activation_bytes, (double)stats.max_in_flight};
    if (comm_allreduce_doubles(world, peak, 2, COMM_MAX) != BT_OK) die("allreduce");
    double measured = bench_median(bubble + 1, steps - 1);
    if (rank == 0)
        /* interleaving divides the idle time by the chunks: (S-1)/v of a micro-batch's time */
        printf("stages=%d schedule=%s chunks=%d microbatches=%lld width=%lld rows=%lld "
               "layers_per_stage=%d bubble=%.3f analytic_bubble=%.3f peak_activation_mb=%.1f "
               "max_in_flight=%.0f\n",
               S, schedule_name, chunks, (long long)m, (long long)width, (long long)rows, layers,
               measured, (double)(S - 1) / (double)(chunks * m + S - 1), peak[0] / 1e6, peak[1]);
    for (int l = 0; l < layers; l++)
        bt_tensor_free(st.w[l]);
    free(bubble);
    pp_free(p);
    bt_runtime_shutdown();
    comm_finalize();
    return 0;
}
