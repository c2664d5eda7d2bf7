/* bench_dp: how much of the gradient averaging data parallelism hides behind the backward, and the
 * optimizer memory per rank with and without ZeRO-1. Run under mpirun (bench/dp.sh does):
 *
 *   mpirun -np 2 bench_dp [--layers L] [--embd C] [--steps S] [--bucket-mb M] [--zero 0|1]
 *
 * A GPT with random weights trains S steps on random tokens through parallel/dp.c, as braid train
 * does. Per step it times the backward (buckets start from the autograd leaf hook and progress
 * while later layers run) and dp_finish: the communication left exposed is the time from the end
 * of the slowest rank's backward (a collective cannot finish before every rank has joined) to the
 * end of dp_finish. Then it times the same bytes averaged blocking, after a barrier, with nothing
 * to overlap: the communication the backward has to hide. hidden = 1 - exposed / blocking, for the
 * worst rank. Prints key=value lines on rank 0. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench.h"
#include "comm/comm.h"
#include "core/autograd.h"
#include "core/ops.h"
#include "core/optim.h"
#include "core/runtime.h"
#include "models/model.h"
#include "parallel/dp.h"

static int die(const char *what) {
    fprintf(stderr, "bench_dp: %s: %s\n", what, bt_last_error());
    comm_abort(1);
}

int main(int argc, char **argv) {
    int layers = 4, embd = 256, steps = 8, zero = 0, B = 4, T = 128;
    double bucket_mb = 25.0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--layers"))
            layers = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--embd"))
            embd = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps"))
            steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--bucket-mb"))
            bucket_mb = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--zero"))
            zero = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "bench_dp: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (comm_init(&argc, &argv) != BT_OK) return die("comm_init");
    struct comm *world = comm_world();
    int rank = comm_rank(world), size = comm_size(world);
    struct model_config mc = {.arch = MODEL_GPT,
                              .vocab_size = 4096,
                              .block_size = T,
                              .n_layer = layers,
                              .n_head = embd / 64,
                              .n_kv_head = embd / 64,
                              .n_embd = embd,
                              .ffn_hidden = 4 * embd,
                              .bias = true,
                              .gelu = BT_GELU_TANH,
                              .norm_eps = 1e-5,
                              .tie_embeddings = true};
    struct model *m = model_create(&mc, 1);
    struct nn_param_list params;
    if (!m || model_parameters(m, &params) != BT_OK) return die("model");
    struct dp_options o = {.bucket_bytes = (int64_t)(bucket_mb * (1 << 20)), .zero1 = zero == 1};
    struct dp *d = dp_create(world, &params, &o);
    if (!d) return die("dp_create");
    struct optim_config oc = optim_config_default(OPTIM_ADAMW);
    struct optim *opt = optim_create(&oc, dp_optim_params(d));
    if (!opt) return die("optim_create");

    double *backward = calloc((size_t)steps, sizeof(double));
    double *wait = calloc((size_t)steps, sizeof(double));
    struct bt_rng rng = bt_rng_make(100 + (uint64_t)rank);
    for (int s = 0; s < steps; s++) {
        bt_tensor *idx = bt_empty(BT_SHAPE(B, T), BT_I64, bt_cpu());
        bt_tensor *tgt = bt_empty(BT_SHAPE(B, T), BT_I64, bt_cpu());
        for (int64_t k = 0; k < B * T; k++) {
            ((int64_t *)bt_data(idx))[k] =
                (int64_t)(bt_rng_uniform_at(rng.seed, rng.offset++) * 4096);
            ((int64_t *)bt_data(tgt))[k] =
                (int64_t)(bt_rng_uniform_at(rng.seed, rng.offset++) * 4096);
        }
        dp_zero_grad(d);
        bt_tensor *loss = model_forward(m, idx, tgt, NULL);
        comm_barrier(world); /* start the backward together: waits measure communication only */
        dp_arm(d);
        double t0 = bench_now();
        if (!loss || bt_backward(loss) != BT_OK) return die("backward");
        double t1 = bench_now();
        if (dp_finish(d) != BT_OK) return die("dp_finish");
        double t2 = bench_now();
        bt_step_end();
        if (optim_step(opt, 1e-4) != BT_OK || dp_gather_params(d) != BT_OK) return die("step");
        /* a collective cannot end before the slowest rank's backward does: what is exposed is
         * the time after that (both clocks are CLOCK_MONOTONIC of one machine) */
        double last_end = t1;
        if (comm_allreduce_doubles(world, &last_end, 1, COMM_MAX) != BT_OK) return die("max");
        backward[s] = t1 - t0;
        wait[s] = t2 > last_end ? t2 - last_end : 0.0;
    }

    /* the same bytes averaged blocking, bucket by bucket, nothing to overlap */
    int64_t bytes = dp_stats(d)->bytes_reduced;
    double *blocking = calloc((size_t)steps, sizeof(double));
    bt_tensor *buf = bt_tensor_new(BT_SHAPE(bytes / 4), BT_F32, bt_cpu());
    int64_t per_bucket = (int64_t)(bucket_mb * (1 << 20)) / 4, total = bytes / 4;
    for (int s = 0; s < steps; s++) {
        comm_barrier(world);
        double t0 = bench_now();
        for (int64_t off = 0; off < total; off += per_bucket) {
            int64_t n = total - off < per_bucket ? total - off : per_bucket;
            bt_tensor *part = bt_narrow(buf, 0, off, n);
            bt_tensor *out =
                zero ? bt_empty(BT_SHAPE((n + size - 1) / size), BT_F32, bt_cpu()) : NULL;
            int64_t *counts = calloc((size_t)size, sizeof *counts);
            for (int r = 0; r < size; r++)
                counts[r] = n / size + (r < n % size);
            bt_status st =
                zero ? comm_reduce_scatter_v(world, part, bt_narrow(out, 0, 0, counts[rank]),
                                             counts, COMM_AVG)
                     : comm_allreduce(world, part, COMM_AVG);
            free(counts);
            if (st != BT_OK) return die("blocking");
        }
        blocking[s] = bench_now() - t0;
        bt_step_end();
    }

    /* optimizer state bytes held by this rank */
    double opt_bytes = 0.0;
    const char *const *states;
    int n_states = optim_state_names(opt, &states);
    for (int64_t i = 0; i < optim_num_params(opt); i++)
        for (int k = 0; k < n_states; k++)
            opt_bytes += (double)bt_nbytes(optim_state(opt, i, states[k]));
    double max_opt = opt_bytes;
    comm_allreduce_doubles(world, &max_opt, 1, COMM_MAX);

    double mb = bench_median(backward + 1, steps - 1), mw = bench_median(wait + 1, steps - 1);
    double mbl = bench_median(blocking + 1, steps - 1);
    double hidden = mbl > 0 ? 1.0 - mw / mbl : 0.0;
    comm_allreduce_doubles(world, &hidden, 1, COMM_MIN); /* the worst rank */
    if (rank == 0) {
        printf("ranks=%d params=%lld zero=%d buckets=%lld bucket_mb=%g\n", size,
               (long long)model_num_parameters(m), zero, (long long)dp_stats(d)->buckets,
               bucket_mb);
        printf("bytes_reduced_per_step=%lld\n", (long long)bytes);
        printf("backward_ms=%.2f exposed_after_backward_ms=%.2f blocking_reduce_ms=%.2f\n",
               1e3 * mb, 1e3 * mw, 1e3 * mbl);
        printf("hidden_fraction=%.3f\n", hidden);
        printf("optimizer_state_bytes_per_rank=%.0f (largest rank)\n", max_opt);
    }
    bt_tensor_free(buf);
    optim_free(opt);
    dp_free(d);
    nn_param_list_free(&params);
    model_free(m);
    bt_runtime_shutdown();
    comm_finalize();
    return 0;
}
