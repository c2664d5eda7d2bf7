/* bench_tp: tensor parallelism's traffic and step time. Run alone (tp=1) or under mpirun, where the
 * world is the tp group (bench/tp.sh does both):
 *
 *   mpirun -np 2 bench_tp [--layers L] [--embd C] [--heads NH] [--vocab V] [--seq T]
 *                         [--batch B] [--steps S] [--sp 0|1]
 *
 * A GPT (tied embeddings, biases, no dropout) with random weights trains S steps (forward,
 * backward, AdamW; no gradient clipping) on random tokens, the same on every rank. After one
 * warm-up step it reads the tp group's traffic counters (comm/comm.h: payload bytes as NCCL-tests'
 * algbw counts them) around each step and compares them, kind by kind, with the count derived from
 * the model's code below (analytic()). Prints key=value lines on rank 0. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "bench/bench.h"
#include "comm/comm.h"
#include "core/autograd.h"
#include "core/optim.h"
#include "core/runtime.h"
#include "models/model.h"

/* the kinds tensor parallelism uses */
static const comm_kind kinds[] = {COMM_KIND_ALLREDUCE, COMM_KIND_REDUCE_SCATTER,
                                  COMM_KIND_ALLGATHER};
#define N_KINDS 3

struct traffic {
    double calls[N_KINDS], bytes[N_KINDS];
};

/* The terms of the analytic count, in bytes per step (float32 = 4 bytes). */
struct analytic {
    struct traffic per_kind;
    double activations; /* (B, T, C) tensors: all-reduces, or all-gathers and reduce-scatters */
    int64_t n_activations;
    double cross_entropy;  /* the row maxima (N floats) and sums + target logits (2N) */
    double param_grads;    /* SP: gradients of replicated parameters used on a sequence slice */
    int64_t n_param_grads; /* their all-reduces */
    double position_embed; /* SP: wpe's gradient (block_size, C) */
};

static int die(const char *what) {
    fprintf(stderr, "bench_tp: %s: %s\n", what, bt_last_error());
    comm_abort(1);
}

static void add(struct traffic *t, int kind, int64_t calls, double bytes) {
    t->calls[kind] += (double)calls;
    t->bytes[kind] += bytes;
}

/* The tp group's collectives in one training step of models/gpt.c at tp = P > 1, N = B*T tokens,
 * A = the bytes of one (B, T, C) float32 activation. Without sequence parallelism:
 *   forward:  wte's tp_reduce (1 all-reduce of A); per layer the row-parallel attn.c_proj and
 *             mlp.c_proj's tp_reduce (2 x A); tp_cross_entropy: the row maxima (N floats, MAX)
 *             and the sums of exponentials with the target logits (2N floats, SUM);
 *   backward: per layer the tp_copy in front of the column-parallel c_attn and c_fc (2 x A);
 *             the tied LM head's tp_copy (attend, 1 x A); wte's tp_reduce passes the gradient
 *             through, the cross-entropy's backward is local.
 * With it, every tp_copy/tp_reduce of an activation becomes tp_gather_seq (all-gather forward,
 * reduce-scatter backward) or tp_scatter_seq (reduce-scatter forward, all-gather backward), each
 * of A bytes, so per layer 2 all-gathers + 2 reduce-scatters forward and the same backward, and
 * around the stack wte (scatter) and the LM head (gather): 8L + 4 operations of A. The replicated
 * parameters used on this rank's slice go through tp_copy (models/model.c model_sp_param): their
 * gradients are all-reduced, per layer ln_1 and ln_2 (weight and bias: 4 x C floats) and the
 * row-parallel biases of attn.c_proj and mlp.c_proj (2 x C), then ln_f (2 x C) and wpe
 * (block_size x C). The cross-entropy is unchanged (its logits are whole-sequence). */
static struct analytic analytic(const struct model_config *c, int64_t B, int64_t T, int P,
                                bool sp) {
    struct analytic a = {0};
    if (P <= 1) return a;
    int64_t N = B * T, L = c->n_layer, C = c->n_embd;
    double A = 4.0 * (double)N * (double)C;
    a.cross_entropy = 4.0 * (double)N + 8.0 * (double)N;
    add(&a.per_kind, 0, 1, 4.0 * (double)N);
    add(&a.per_kind, 0, 1, 8.0 * (double)N);
    if (!sp) {
        a.n_activations = 4 * L + 2;
        a.activations = (double)a.n_activations * A;
        add(&a.per_kind, 0, a.n_activations, a.activations);
        return a;
    }
    a.n_activations = 8 * L + 4;
    a.activations = (double)a.n_activations * A;
    add(&a.per_kind, 1, a.n_activations / 2, a.activations / 2); /* reduce-scatters */
    add(&a.per_kind, 2, a.n_activations / 2, a.activations / 2); /* all-gathers */
    int64_t norm_params = c->bias ? 2 : 1;                       /* layernorm weight (and bias) */
    int64_t row_biases = c->bias ? 2 : 0;                        /* attn.c_proj, mlp.c_proj */
    a.n_param_grads = L * (2 * norm_params + row_biases) + norm_params;
    a.param_grads = 4.0 * (double)C * (double)a.n_param_grads;
    add(&a.per_kind, 0, a.n_param_grads, a.param_grads);
    a.position_embed = 4.0 * (double)c->block_size * (double)C;
    add(&a.per_kind, 0, 1, a.position_embed);
    return a;
}

/* What crosses the wire per rank with ring algorithms: 2(P-1)/P of an all-reduce's payload,
 * (P-1)/P of a reduce-scatter's or an all-gather's (NCCL-tests' busbw). */
static double wire_bytes(const struct traffic *t, int P) {
    double f = P > 1 ? (double)(P - 1) / P : 0.0;
    return 2.0 * f * t->bytes[0] + f * (t->bytes[1] + t->bytes[2]);
}

static void snapshot(const struct comm *g, struct comm_traffic *out) {
    for (int k = 0; k < N_KINDS; k++)
        out[k] = comm_traffic_of(g, kinds[k]);
}

static bt_tensor *random_tokens(int64_t B, int64_t T, int64_t V, struct bt_rng *rng) {
    bt_tensor *t = bt_empty(BT_SHAPE(B, T), BT_I64, bt_cpu());
    for (int64_t k = 0; t && k < B * T; k++)
        ((int64_t *)bt_data(t))[k] =
            (int64_t)(bt_rng_uniform_at(rng->seed, rng->offset++) * (float)V) % V;
    return t;
}

int main(int argc, char **argv) {
    int64_t layers = 4, embd = 256, heads = 8, vocab = 4096, T = 128, B = 4;
    int steps = 8, sp = 0;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "bench_tp: %s needs a value\n", argv[i]);
            return 2;
        }
        if (!strcmp(argv[i], "--layers"))
            layers = atoll(v);
        else if (!strcmp(argv[i], "--embd"))
            embd = atoll(v);
        else if (!strcmp(argv[i], "--heads"))
            heads = atoll(v);
        else if (!strcmp(argv[i], "--vocab"))
            vocab = atoll(v);
        else if (!strcmp(argv[i], "--seq"))
            T = atoll(v);
        else if (!strcmp(argv[i], "--batch"))
            B = atoll(v);
        else if (!strcmp(argv[i], "--steps"))
            steps = atoi(v);
        else if (!strcmp(argv[i], "--sp"))
            sp = atoi(v);
        else {
            fprintf(stderr, "bench_tp: unknown option %s\n", argv[i]);
            return 2;
        }
        i++;
    }
    if (steps < 2) {
        fprintf(stderr, "bench_tp: --steps %d: need at least 2 (the first is a warm-up)\n", steps);
        return 2;
    }
    if (comm_init(&argc, &argv) != BT_OK) return die("comm_init");
    struct comm *world = comm_world();
    int rank = comm_rank(world), P = comm_size(world);
    struct model_config mc = {.arch = MODEL_GPT,
                              .vocab_size = vocab,
                              .block_size = T,
                              .n_layer = layers,
                              .n_head = heads,
                              .n_kv_head = heads,
                              .n_embd = embd,
                              .ffn_hidden = 4 * embd,
                              .bias = true,
                              .gelu = BT_GELU_TANH,
                              .norm_eps = 1e-5,
                              .tie_embeddings = true,
                              .tp_group = P > 1 ? world : NULL,
                              .sequence_parallel = sp == 1};
    struct model *m = model_create(&mc, 1);
    struct nn_param_list params;
    if (!m || model_parameters(m, &params) != BT_OK) return die("model");
    struct optim_config oc = optim_config_default(OPTIM_ADAMW);
    struct optim *opt = optim_create(&oc, &params);
    if (!opt) return die("optim_create");

    double *step_s = calloc((size_t)steps, sizeof(double));
    struct traffic measured = {0};
    struct bt_rng rng = bt_rng_make(100); /* the same tokens on every rank of the group */
    for (int s = 0; s < steps; s++) {
        bt_tensor *idx = random_tokens(B, T, vocab, &rng);
        bt_tensor *tgt = random_tokens(B, T, vocab, &rng);
        optim_zero_grad(opt);
        if (comm_barrier(world) != BT_OK) return die("barrier"); /* start the step together */
        struct comm_traffic before[N_KINDS], after[N_KINDS];
        snapshot(world, before);
        double t0 = bench_now();
        bt_tensor *loss = model_forward(m, idx, tgt, NULL);
        if (!loss || bt_backward(loss) != BT_OK) return die("forward/backward");
        bt_step_end();
        if (optim_step(opt, 1e-4) != BT_OK) return die("optim_step");
        double t = bench_now() - t0;
        snapshot(world, after);
        if (comm_allreduce_doubles(world, &t, 1, COMM_MAX) != BT_OK) return die("max");
        step_s[s] = t;
        if (s == 0) continue; /* warm-up */
        for (int k = 0; k < N_KINDS; k++)
            add(&measured, k, after[k].calls - before[k].calls,
                (double)(after[k].bytes - before[k].bytes));
    }
    int timed = steps - 1;
    for (int k = 0; k < N_KINDS; k++) {
        measured.calls[k] /= timed;
        measured.bytes[k] /= timed;
    }
    struct analytic a = analytic(&mc, B, T, P, sp == 1);
    double ms = 1e3 * bench_median(step_s + 1, timed); /* sorts them: the fastest step is first */
    double best_ms = 1e3 * step_s[1];
    double total = 0, want = 0, calls = 0, want_calls = 0;
    for (int k = 0; k < N_KINDS; k++) {
        total += measured.bytes[k];
        want += a.per_kind.bytes[k];
        calls += measured.calls[k];
        want_calls += a.per_kind.calls[k];
    }
    /* memory: the largest rank's peak resident set (the kernel's high-water mark, all of it:
     * weights, gradients, optimizer state, activations and the MPI library) */
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    double peak_rss_mb = (double)usage.ru_maxrss / 1024.0; /* ru_maxrss is in KiB on Linux */
    if (comm_allreduce_doubles(comm_world(), &peak_rss_mb, 1, COMM_MAX) != BT_OK) die("allreduce");
    if (rank == 0) {
        printf("model=gpt layers=%lld embd=%lld heads=%lld vocab=%lld seq=%lld batch=%lld "
               "params=%lld\n",
               (long long)layers, (long long)embd, (long long)heads, (long long)vocab, (long long)T,
               (long long)B, (long long)model_num_parameters(m));
        printf("tp=%d sp=%d threads_per_rank=%d steps=%d (first one warm-up)\n", P, sp,
               omp_get_max_threads(), steps);
        printf("step_ms=%.1f step_min_ms=%.1f tokens_per_s=%.0f tokens_per_step=%lld\n", ms,
               best_ms, 1e3 * (double)(B * T) / ms, (long long)(B * T));
        printf("peak_rss_mb=%.1f (the largest rank's, MiB)\n", peak_rss_mb);
        printf("bytes_per_step=%.0f calls_per_step=%.1f (tp group, payload as algbw)\n", total,
               calls);
        printf("analytic_bytes_per_step=%.0f analytic_calls_per_step=%.0f\n", want, want_calls);
        if (want > 0)
            printf("ratio=%.6f\n", total / want);
        else
            printf("ratio=n/a\n");
        printf("wire_bytes_per_step=%.0f analytic_wire_bytes_per_step=%.0f (ring, per rank)\n",
               wire_bytes(&measured, P), wire_bytes(&a.per_kind, P));
        for (int k = 0; k < N_KINDS; k++)
            printf("  %-15s measured %6.1f calls %12.0f bytes   analytic %6.0f calls %12.0f "
                   "bytes\n",
                   comm_kind_name(kinds[k]), measured.calls[k], measured.bytes[k],
                   a.per_kind.calls[k], a.per_kind.bytes[k]);
        int64_t A = 4 * B * T * embd;
        printf("  analytic terms: activations %lld x (B,T,C) %lld B = %.0f; cross_entropy 3N "
               "floats = %.0f; param_grads %lld x C floats = %.0f; wpe (T,C) = %.0f\n",
               (long long)a.n_activations, (long long)A, a.activations, a.cross_entropy,
               (long long)a.n_param_grads, a.param_grads, a.position_embed);
    }
    free(step_s);
    optim_free(opt);
    nn_param_list_free(&params);
    model_free(m);
    bt_runtime_shutdown();
    comm_finalize();
    return 0;
}
