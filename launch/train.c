/* `braid train CONFIG.yaml [--section.key=value ...]`: the worker. Loads and checks the job, builds
 * the model, the data loaders, the optimizer and the schedule, then runs the step loop: gradient
 * accumulation, clipping, the update, metrics, evaluation and checkpoints. */
#include <ctype.h>
#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm.h"
#include "core/backend.h"
#include "core/cuda/cuda.h"
#include "core/optim.h"
#include "core/profile.h"
#include "core/runtime.h"
#include "core/schedule.h"
#include "data/checkpoint.h"
#include "data/loader.h"
#include "launch/commands.h"
#include "launch/config.h"
#include "launch/job.h"
#include "launch/metrics.h"
#include "launch/resume.h"
#include "models/model.h"
#include "parallel/dp.h"
#include "parallel/grid.h"
#include "parallel/pipeline.h"

static const char train_usage[] =
    "usage: braid train CONFIG.yaml [--section.key=value ...]\n"
    "\n"
    "Trains the model a YAML job file describes (see docs/config.md for every key).\n"
    "Any key can be overridden on the command line, e.g. --train.max_steps=100.\n"
    "Writes <log.dir>/metrics.jsonl and <checkpoint.dir>/step_<8 digits>.h5 + latest, and\n"
    "resumes from <checkpoint.dir>/latest when it exists (checkpoint.resume=auto, the default;\n"
    "none = start fresh; or a checkpoint path). SIGTERM or Ctrl-C ends the run after the\n"
    "current step with a checkpoint (exit status 143 or 130).\n"
    "\n"
    "Environment: BRAID_PROFILE=1 prints, at the end, where a step's time went: milliseconds\n"
    "per step by op (forward, backward) and by the loop's other parts, after 3 warm-up steps\n"
    "(docs/performance.md). OMP_NUM_THREADS sets the CPU threads. train.device=cuda uses\n"
    "the GPU of the rank's local rank; BRAID_FAKE_CUDA=1 makes cuda:0 the CPU's kernels on host\n"
    "memory, to check a GPU job's setup on a machine without one (docs/cuda.md).\n"
    "BRAID_MFU_PEAK=GFLOPS: the peak mfu is relative to, per rank, instead of the sgemm rate\n"
    "measured at start (docs/training.md).\n";

/* Everything a run holds, released by run_free in reverse order. */
struct run {
    struct braid_config cfg;
    struct grid grid;
    struct dp *dp;               /* data parallelism: NULL when dp = 1 */
    struct pipeline *pp;         /* pipeline parallelism: NULL when pp = 1 */
    struct comm *embedding_pair; /* pp: the first and last stage (tied embedding); else NULL */
    double num_parameters;       /* of the whole model, every stage's */
    char *config_yaml;
    struct model *model; /* the whole model, or this rank's first pipeline chunk */
    /* pipeline: this rank's chunks, virtual stages c·pp + pp_rank (chunk 0 is `model`) */
    struct model *chunks[PP_MAX_CHUNKS];
    int n_chunks;
    struct nn_param_list params; /* every chunk's, in chunk order */
    struct optim *opt;
    struct sched sched;
    struct data_loader *train_data, *val_data;
    struct metrics_log log;
    double peak_flops;
    int64_t peak_shape[3]; /* the GEMM (M, N, K) it was measured at */
    int peak_remeasures;   /* times a logged MFU above 100% made the loop measure it again */
    double peak_env;       /* BRAID_MFU_PEAK in FLOP/s, 0 when unset */
    bt_device device;     /* where the model, its gradients and optimizer state, and batches live */
    char *tokenizer_yaml; /* tokenizer.yaml beside the training shards ("" when none) */
    /* where the run starts: 0 and the stream's start, or a checkpoint's step and position */
    int64_t start_step, start_position, start_tokens;
    int64_t start_micro; /* global micro-batches trained before start_step (dropout streams) */
    double last_lr;
    int64_t micro_per_step; /* dp * grad_accum: global micro-batches per step */
};

static void run_free(struct run *r) {
    metrics_close(&r->log);
    data_loader_close(r->val_data);
    data_loader_close(r->train_data);
    optim_free(r->opt);
    pp_free(r->pp);
    comm_free(r->embedding_pair);
    dp_free(r->dp);
    nn_param_list_free(&r->params);
    for (int c = 0; c < r->n_chunks; c++)
        model_free(r->chunks[c]);
    free(r->tokenizer_yaml);
    free(r->config_yaml);
    grid_free(&r->grid);
}

/* ---- setting up ---- */

/* The text of the tokenizer.yaml beside data.train's shards, stored in checkpoints so that
 * braid sample decodes with it; "" when there is none (shards not made by braid prep). */
static bt_status read_tokenizer_yaml(struct run *r) {
    char pattern[CFG_STR], path[CFG_STR + 32];
    snprintf(pattern, sizeof pattern, "%s", r->cfg.data.train);
    snprintf(path, sizeof path, "%s/tokenizer.yaml", dirname(pattern));
    FILE *f = fopen(path, "rb");
    if (!f) {
        r->tokenizer_yaml = calloc(1, 1);
        return r->tokenizer_yaml ? BT_OK : bt_error("out of memory");
    }
    size_t cap = 4096, len = 0;
    char *text = malloc(cap);
    for (size_t got; text && (got = fread(text + len, 1, cap - len - 1, f)) > 0;) {
        len += got;
        if (len + 1 == cap) {
            char *grown = realloc(text, cap *= 2);
            if (!grown) free(text);
            text = grown;
        }
    }
    bool failed = ferror(f);
    fclose(f);
    if (!text) return bt_error("%s: out of memory reading it", path);
    if (failed) {
        free(text);
        return bt_error("%s: cannot read: %s", path, strerror(errno));
    }
    text[len] = '\0';
    r->tokenizer_yaml = text;
    return BT_OK;
}

static bt_status load_config(struct braid_config *cfg, int argc, char **argv, int world) {
    cfg_defaults(cfg);
    if (cfg_load_file(cfg, argv[1]) != BT_OK) return BT_ERR;
    for (int i = 2; i < argc; i++)
        if (cfg_apply_override(cfg, argv[i]) != BT_OK) return BT_ERR;
    if (job_resolve_vocab_size(cfg) != BT_OK) return BT_ERR;
    if (cfg_finalize(cfg, world) != BT_OK) return BT_ERR;
    return job_check_supported(cfg);
}

static bt_status build_optimizer(struct run *r) {
    const struct cfg_optimizer *o = &r->cfg.optimizer;
    optim_kind kind;
    if (!optim_kind_parse(o->name, &kind)) return BT_ERR;
    struct optim_config oc = optim_config_default(kind);
    oc.beta1 = o->beta1;
    oc.beta2 = o->beta2;
    oc.eps = o->eps;
    oc.weight_decay = o->weight_decay;
    oc.momentum = o->momentum;
    r->opt = optim_create(&oc, r->dp ? dp_optim_params(r->dp) : &r->params);
    if (!r->opt) return BT_ERR;
    const struct cfg_schedule *s = &r->cfg.schedule;
    sched_kind sk;
    if (!sched_kind_parse(s->name, &sk)) return BT_ERR;
    return sched_init(&r->sched, sk, o->lr, s->warmup_steps, s->decay_steps, s->min_lr);
}

/* Says why the run starts fresh, and warns when that will replace another run's checkpoints. */
static void report_fresh_start(const struct braid_config *cfg) {
    char latest[CFG_STR + 300];
    bool has_latest = ckpt_resolve(cfg->checkpoint.dir, latest, sizeof latest) == BT_OK;
    bt_error_clear();
    if (strcmp(cfg->checkpoint.resume, "auto") == 0)
        printf("checkpoint.resume=auto: no checkpoint in %s, starting fresh\n",
               cfg->checkpoint.dir);
    else if (has_latest)
        printf("checkpoint.resume=none: starting fresh although %s exists; this run's "
               "checkpoints replace those of the same steps and older ones are pruned "
               "(checkpoint.keep)\n",
               latest);
}

/* Continues the run saved in `path`: weights, optimizer state, RNG and data positions. */
static bt_status restore(struct run *r, const char *path) {
    struct ckpt_file *f = ckpt_open(path);
    bt_status st = BT_ERR;
    if (!f) return BT_ERR;
    const struct ckpt_meta *m = ckpt_meta(f);
    if (resume_check_config(&r->cfg, m->config_yaml, path) != BT_OK) goto done;
    if (m->data_seq_len != r->cfg.train.seq_len || m->data_seed != (uint64_t)r->cfg.train.seed ||
        m->data_shuffle != r->cfg.data.shuffle) {
        bt_error("checkpoint %s: its /data state (seed %llu, seq_len %lld, shuffle %d) does not "
                 "match its /config",
                 path, (unsigned long long)m->data_seed, (long long)m->data_seq_len,
                 (int)m->data_shuffle);
        goto done;
    }
    /* a pipeline stage reads its own tensors of the whole model's file */
    const int64_t *row0 = r->dp ? dp_optim_row0(r->dp) : NULL;
    bool stage = r->grid.pp > 1;
    if ((stage ? ckpt_read_model_subset(f, &r->params) : ckpt_read_model(f, &r->params)) != BT_OK ||
        (stage ? ckpt_read_optim_subset(f, r->opt, &r->params, row0)
               : ckpt_read_optim_rows(f, r->opt, &r->params, row0)) != BT_OK)
        goto done;
    r->start_step = m->step;
    r->start_position = m->data_position;
    r->start_tokens = m->tokens_seen;
    r->start_micro = (int64_t)m->dropout_offset;
    r->last_lr = m->lr;
    if (r->cfg.model.init_from[0])
        printf("model.init_from=%s is ignored: the run resumes from %s\n", r->cfg.model.init_from,
               path);
    printf("resumed from %s: step %lld, %lld tokens seen\n", path, (long long)m->step,
           (long long)m->tokens_seen);
    st = BT_OK;
done:
    ckpt_close(f);
    return st;
}

/* Appends src's entries to dst (the names copied, the tensors referenced). */
static bt_status append_params(struct nn_param_list *dst, const struct nn_param_list *src) {
    int64_t n = dst->count + src->count;
    char **names = realloc(dst->names, (size_t)(n ? n : 1) * sizeof *names);
    if (names) dst->names = names;
    bt_tensor **tensors =
        names ? realloc(dst->tensors, (size_t)(n ? n : 1) * sizeof *tensors) : NULL;
    if (tensors) dst->tensors = tensors;
    struct nn_split *splits =
        tensors ? realloc(dst->splits, (size_t)(n ? n : 1) * sizeof *splits) : NULL;
    if (!splits) return bt_error("out of memory listing parameters");
    dst->splits = splits;
    for (int64_t i = 0; i < src->count; i++) {
        if (!(dst->names[dst->count] = strdup(src->names[i])))
            return bt_error("out of memory listing parameters");
        dst->tensors[dst->count] = src->tensors[i];
        dst->splits[dst->count] = nn_param_split(src, i);
        dst->count++;
    }
    return BT_OK;
}

/* The model, or with pipeline parallelism this rank's chunks: virtual stages c·pp + pp_rank of
 * pp·virtual_stages, each a contiguous range of the blocks; r->params lists them all. */
static bt_status build_models(struct run *r, struct model_config *mc) {
    const struct braid_config *cfg = &r->cfg;
    int pp = r->grid.pp, v = pp > 1 ? (int)cfg->parallel.virtual_stages : 1, stages = pp * v;
    int64_t begin[stages], end[stages];
    if (pp > 1) {
        if (!cfg_stage_layers(cfg, begin, end) &&
            model_stage_layers(mc, stages, begin, end) != BT_OK)
            return BT_ERR;
        mc->pp_stages = stages;
    }
    for (int c = 0; c < v; c++) {
        if (pp > 1) {
            mc->pp_stage = c * pp + r->grid.pp_rank;
            mc->pp_layer_begin = begin[mc->pp_stage];
            mc->pp_layer_end = end[mc->pp_stage];
        }
        struct nn_param_list list;
        if (!(r->chunks[c] = model_create(mc, (uint64_t)cfg->train.seed))) return BT_ERR;
        r->n_chunks = c + 1;
        if (model_parameters(r->chunks[c], &list) != BT_OK) return BT_ERR;
        bt_status st = append_params(&r->params, &list);
        nn_param_list_free(&list);
        if (st != BT_OK) return BT_ERR;
    }
    r->model = r->chunks[0];
    return BT_OK;
}

/* Training or evaluation mode (dropout) for every chunk. */
static void train_mode(struct run *r, bool training) {
    for (int c = 0; c < r->n_chunks; c++)
        model_train(r->chunks[c], training);
}

/* The tied embedding's tensor on this rank (the first chunk of the first stage, or the last
 * chunk of the last), or NULL. */
static bt_tensor *tied_embedding(const struct run *r) {
    for (int c = 0; c < r->n_chunks; c++) {
        bt_tensor *t = model_tied_embedding(r->chunks[c]);
        if (t) return t;
    }
    return NULL;
}

/* The elements of the parameters this rank holds. */
static int64_t local_parameters(const struct run *r) {
    int64_t n = 0;
    for (int c = 0; c < r->n_chunks; c++)
        n += model_num_local_parameters(r->chunks[c]);
    return n;
}

/* The rank's last chunk holds the last virtual stage (the loss) */
static bool holds_last_stage(const struct run *r) {
    return model_is_last_stage(r->chunks[r->n_chunks - 1]);
}

/* BRAID_MFU_PEAK: the peak MFU is relative to, in GFLOP/s per rank, instead of a measured one (a
 * plain decimal number > 0); 0 in *flops when unset */
static bt_status peak_from_env(double *flops) {
    const char *s = getenv("BRAID_MFU_PEAK");
    *flops = 0.0;
    if (!s) return BT_OK;
    bool plain = *s != '\0';
    for (const char *p = s; *p; p++)
        plain = plain && (isdigit((unsigned char)*p) || *p == '.');
    char *end = NULL;
    errno = 0;
    double v = plain ? strtod(s, &end) : 0.0;
    if (!plain || errno != 0 || *end != '\0' || !isfinite(v) || v <= 0.0)
        return bt_error("BRAID_MFU_PEAK='%s': expected a positive number of GFLOP/s", s);
    *flops = v * 1e9;
    return BT_OK;
}

/* The matmul peak MFU is relative to: sgemm on the CPU (metrics_sgemm_peak), the backend's matmul
 * on a device, at r->peak_shape, 0.25 s */
static double measure_peak(const struct run *r) {
    const int64_t *k = r->peak_shape;
    if (r->device.type == BT_DEVICE_CPU) return metrics_sgemm_peak(k[0], k[1], k[2], 0.25);
    return metrics_device_matmul_peak(r->device, k[0], k[1], k[2], 0.25);
}

static bt_status setup(struct run *r) {
    const struct braid_config *cfg = &r->cfg;
    size_t need = cfg_to_yaml(cfg, NULL, 0);
    r->config_yaml = malloc(need + 1);
    if (!r->config_yaml) return bt_error("out of memory");
    cfg_to_yaml(cfg, r->config_yaml, need + 1);
    printf("braid train %s: resolved config\n%s\n", cfg->source, r->config_yaml);
    char resume_path[CFG_STR + 300];
    bool resuming;
    if (resume_find(cfg, resume_path, sizeof resume_path, &resuming) != BT_OK) return BT_ERR;
    if (!resuming) report_fresh_start(cfg);
    if (read_tokenizer_yaml(r) != BT_OK) return BT_ERR;

    struct model_config mc = job_model_config(&cfg->model);
    if (r->grid.tp > 1) { /* this rank builds its shards; its tp peers train the same batches */
        mc.tp_group = r->grid.tp_group;
        mc.sequence_parallel = cfg->parallel.sequence_parallel;
    }
    if (build_models(r, &mc) != BT_OK) return BT_ERR;
    r->device = bt_cpu();
    if (strcmp(cfg->train.device, "cuda") == 0) { /* one GPU per rank: the one of its local rank */
        r->device = bt_cuda(comm_local_rank());
        if (strcmp(cfg->train.dtype, "bfloat16") == 0) bt_set_matmul_dtype(BT_BF16);
        for (int c = 0; c < r->n_chunks; c++)
            if (nn_module_to(r->chunks[c]->root, r->device) != BT_OK)
                return bt_error_prefix("train.device=cuda");
    }
    if (!resuming && cfg->model.init_from[0]) {
        if ((r->grid.pp > 1 ? ckpt_load_model_subset(cfg->model.init_from, &r->params)
                            : ckpt_load_model(cfg->model.init_from, &r->params)) != BT_OK)
            return bt_error_prefix("model.init_from");
        printf("model.init_from: weights from %s\n", cfg->model.init_from);
    }
    bt_manual_seed((uint64_t)cfg->train.seed);

    int64_t T = cfg->train.seq_len;
    r->train_data = data_loader_open(cfg->data.train, T, (uint64_t)cfg->train.seed,
                                     cfg->data.shuffle, cfg->model.vocab_size);
    if (!r->train_data) return bt_error_prefix("data.train");
    if (cfg->data.val[0]) {
        r->val_data = data_loader_open(cfg->data.val, T, (uint64_t)cfg->train.seed, false,
                                       cfg->model.vocab_size);
        if (!r->val_data) return bt_error_prefix("data.val");
    }
    r->micro_per_step = cfg->train.grad_accum * cfg->parallel.dp;
    if (cfg->parallel.dp > 1) {
        struct dp_options o = {.bucket_bytes = (int64_t)(cfg->parallel.bucket_mb * (1 << 20)),
                               .zero1 = cfg->parallel.zero == 1};
        if (!(r->dp = dp_create(r->grid.dp_group, &r->params, &o))) return BT_ERR;
    }
    if (r->grid.pp > 1) {
        pp_schedule schedule;
        if (!pp_schedule_parse(cfg->parallel.schedule, &schedule)) return BT_ERR;
        int64_t sp = cfg->parallel.sequence_parallel ? r->grid.tp : 1;
        struct pp_options o = {.schedule = schedule,
                               .microbatches = cfg->train.grad_accum,
                               .chunks = (int)cfg->parallel.virtual_stages,
                               .act_ndim = 3,
                               .act_shape = {cfg->train.batch_size, T / sp, cfg->model.n_embd},
                               .device = r->device};
        if (!(r->pp = pp_create(r->grid.pp_group, &o))) return BT_ERR;
    }
    if (build_optimizer(r) != BT_OK) return BT_ERR;
    if (resuming && restore(r, resume_path) != BT_OK) return BT_ERR;
    if (r->grid.rank == 0 && metrics_open(&r->log, cfg->log.dir, r->start_step) != BT_OK)
        return BT_ERR;

    /* MFU is relative to sgemm at the model's largest GEMM: the MLP or the lm_head */
    int64_t rows = cfg->train.batch_size * T, C = cfg->model.n_embd;
    int64_t wide = mc.vocab_size > 4 * C ? mc.vocab_size : 4 * C;
    r->peak_shape[0] = rows, r->peak_shape[1] = wide, r->peak_shape[2] = C;
    r->peak_flops = r->peak_env > 0.0 ? r->peak_env : measure_peak(r);
    return r->device.type == BT_DEVICE_CPU || r->peak_flops > 0.0
               ? BT_OK
               : bt_error_prefix("train.device=cuda: the matmul peak");
}

/* The collective part of the setup, once every rank has built its part: the pipeline's
 * first-and-last-stage group, the whole model's parameter count, and the banners. */
static bt_status setup_parallel(struct run *r) {
    const struct braid_config *cfg = &r->cfg;
    int pp = r->grid.pp, stage = r->grid.pp_rank;
    double local = 0.0;
    for (int c = 0; c < r->n_chunks; c++)
        local += (double)model_num_parameters(r->chunks[c]);
    if (pp > 1) {
        if (cfg->model.tie_embeddings) {
            bool ends = stage == 0 || stage == pp - 1;
            r->embedding_pair = comm_split(r->grid.pp_group, ends ? 0 : 1, stage, "embedding");
            if (!r->embedding_pair) return BT_ERR;
            /* the last stage's copy is counted by the first */
            bt_tensor *tied = tied_embedding(r);
            if (stage == pp - 1 && tied)
                local -= (double)(cfg->model.vocab_size * cfg->model.n_embd);
        }
        if (comm_allreduce_doubles(r->grid.pp_group, &local, 1, COMM_SUM) != BT_OK) return BT_ERR;
    }
    r->num_parameters = local;
    int64_t T = cfg->train.seq_len;
    printf("model: %s, %.0f parameters | data: %lld tokens, %lld windows of %lld | sgemm peak "
           "%.1f GFLOP/s%s\n",
           cfg->model.arch, r->num_parameters, (long long)data_loader_tokens(r->train_data),
           (long long)data_loader_windows(r->train_data), (long long)T, r->peak_flops / 1e9,
           r->peak_env > 0.0 ? " (BRAID_MFU_PEAK)" : "");
    if (r->device.type != BT_DEVICE_CPU) {
        char name[32], desc[160];
        printf("device: %s, %s, %s matmuls (the peak above: that matmul's rate, cuBLASLt)\n",
               bt_device_name(r->device, name, sizeof name),
               bt_cuda_device_description(desc, sizeof desc), cfg->train.dtype);
    }
    if (r->grid.tp > 1)
        printf("tensor parallel: tp=%d, %lld of the parameters on each rank%s\n", r->grid.tp,
               (long long)local_parameters(r),
               cfg->parallel.sequence_parallel ? ", sequence parallel" : "");
    else if (cfg->parallel.sequence_parallel)
        printf("parallel.sequence_parallel has no effect at parallel.tp=1\n");
    if (pp > 1) { /* rank 0 speaks for stage 0 */
        printf("pipeline parallel: pp=%d, schedule %s, %lld micro-batches a step; stage 0 holds "
               "layers",
               pp, cfg->parallel.schedule, (long long)cfg->train.grad_accum);
        for (int c = 0; c < r->n_chunks; c++)
            printf("%s [%lld, %lld)", c ? " and" : "",
                   (long long)r->chunks[c]->config.pp_layer_begin,
                   (long long)r->chunks[c]->config.pp_layer_end);
        if (r->n_chunks > 1) printf(" (%d virtual stages per rank, interleaved)", r->n_chunks);
        printf("\n");
    }
    if (r->dp)
        printf("data parallel: dp=%lld, %lld gradient buckets of about %g MB%s\n",
               (long long)cfg->parallel.dp, (long long)dp_stats(r->dp)->buckets,
               cfg->parallel.bucket_mb,
               cfg->parallel.zero ? ", ZeRO-1: optimizer state sharded across dp ranks" : "");
    return BT_OK;
}

/* ---- the loop ---- */

/* SIGTERM (what Slurm and Kubernetes send before they preempt) and SIGINT (Ctrl-C) end the run
 * after the current step with a checkpoint; a second signal kills at once (SA_RESETHAND). */
static volatile sig_atomic_t stop_signal;

/* The error that ended the loop is the same on every rank (a diverged loss, an agreed checkpoint
 * failure, a stop): rank 0 alone reports it and every rank exits normally. Otherwise the failing
 * rank reports it and aborts the job, since the others may be waiting for it in a collective. */
static bool error_everywhere;

static void on_stop_signal(int sig) {
    stop_signal = sig;
}

static void catch_stop_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}

/* ---- pipeline parallelism: this stage's part of a micro-batch ---- */

static void seed_dropout(uint64_t seed, int64_t g);

/* What the pipeline's callback needs to find micro-batch `micro` of a step. */
struct stage_batch {
    struct run *r;
    struct data_loader *data;
    int64_t first;   /* the step's first sample in the global stream */
    int64_t micro0;  /* the global micro-batch number of the step's first (dropout streams) */
    bool evaluating; /* validation batch k = dp_rank + micro * dp */
};

/* Dropout values the stages before chunk m draw for one micro-batch (one mask of (B, T, C) per
 * dropout layer: the embeddings' and two per block), so that the chunk continues the
 * micro-batch's stream where a single rank would be. */
static uint64_t dropout_values_before(const struct run *r, const struct model *m) {
    const struct braid_config *cfg = &r->cfg;
    if (cfg->model.dropout == 0.0 || model_is_first_stage(m)) return 0;
    int64_t layers_before = m->config.pp_layer_begin;
    return (uint64_t)((1 + 2 * layers_before) * cfg->train.batch_size * cfg->train.seq_len *
                      cfg->model.n_embd);
}

/* Batch samples [first, first + B) of `data`, on the run's device */
static bt_status run_batch(const struct run *r, struct data_loader *data, int64_t first, int64_t B,
                           bt_tensor **x, bt_tensor **y) {
    if (data_loader_batch(data, first, B, x, y) != BT_OK) return BT_ERR;
    if (r->device.type == BT_DEVICE_CPU) return BT_OK;
    *x = bt_to_device(*x, r->device);
    *y = *x ? bt_to_device(*y, r->device) : NULL;
    return *y ? BT_OK : BT_ERR;
}

static bt_tensor *stage_forward(void *ctx, int chunk, int64_t micro, bt_tensor *in) {
    struct stage_batch *sb = ctx;
    struct run *r = sb->r;
    struct model *m = r->chunks[chunk];
    int64_t B = r->cfg.train.batch_size, dp = r->grid.dp;
    int64_t g = sb->evaluating ? r->grid.dp_rank + micro * dp : micro * dp + r->grid.dp_rank;
    bt_tensor *x = NULL, *y = NULL;
    bool first = model_is_first_stage(m), last = model_is_last_stage(m);
    if ((first || last) && run_batch(r, sb->data, sb->first + g * B, B, &x, &y) != BT_OK)
        return NULL;
    if (!sb->evaluating) {
        seed_dropout((uint64_t)r->cfg.train.seed, sb->micro0 + g);
        bt_runtime()->dropout_rng.offset = dropout_values_before(r, m);
    }
    bt_tensor *out = model_stage_forward(m, first ? x : in, last ? y : NULL, NULL);
    if (!last || !out || sb->evaluating) return out;
    /* the step's loss is the mean over its micro-batches */
    return bt_mul_scalar(out, 1.0 / (double)r->cfg.train.grad_accum);
}

static void arm_data_parallel(void *ctx) {
    struct stage_batch *sb = ctx;
    if (sb->r->dp) dp_arm(sb->r->dp);
}

/* The public name of the tied embedding on this stage (its parameter list's), or NULL. */
static const char *tied_embedding_name(const struct run *r) {
    bt_tensor *tied = tied_embedding(r);
    for (int64_t i = 0; tied && i < r->params.count; i++)
        if (r->params.tensors[i] == tied) return r->params.names[i];
    return NULL;
}

/* The gradient of the tied embedding, held by the first and the last stage, is the sum of theirs
 * (after data parallelism has averaged each; with ZeRO-1 each rank sums its rows). */
static bt_status sum_tied_embedding(struct run *r) {
    bt_tensor *tied = tied_embedding(r);
    if (!r->embedding_pair || !tied || comm_size(r->embedding_pair) < 2) return BT_OK;
    bt_tensor *grad = tied->grad;
    if (r->dp) { /* the optimizer's tensor of the same name: tied itself or this rank's rows */
        const struct nn_param_list *list = dp_optim_params(r->dp);
        const char *name = tied_embedding_name(r);
        grad = NULL;
        for (int64_t i = 0; name && i < list->count; i++)
            if (strcmp(list->names[i], name) == 0) grad = list->tensors[i]->grad;
    }
    /* both stages hold the same rows (same dp rank, same shape): present on both or neither */
    return grad ? comm_allreduce(r->embedding_pair, grad, COMM_SUM) : BT_OK;
}

/* Mean loss over eval_steps batches of the validation data, in eval mode without autograd. */
static bt_status evaluate(struct run *r, double *val_loss) {
    const struct cfg_train *t = &r->cfg.train;
    bool grad_mode = bt_set_grad_enabled(false);
    train_mode(r, false);
    double sum = 0.0;
    bt_status status = BT_OK;
    if (r->pp) { /* the last stages' losses, summed over the world by their tp rank 0 */
        int64_t mine = (t->eval_steps - r->grid.dp_rank + r->grid.dp - 1) / r->grid.dp;
        struct stage_batch sb = {.r = r, .data = r->val_data, .evaluating = true};
        status = pp_forward_only(r->pp, mine > 0 ? mine : 0, stage_forward, &sb, &sum);
        bt_step_end();
        train_mode(r, true);
        bt_set_grad_enabled(grad_mode);
        if (r->grid.tp_rank != 0) sum = 0.0;
        if (status == BT_OK &&
            comm_allreduce_doubles(r->grid.world_group, &sum, 1, COMM_SUM) != BT_OK)
            status = BT_ERR;
        *val_loss = sum / (double)t->eval_steps;
        return status;
    }
    /* dp ranks share the batches: rank r takes r, r + dp, ... */
    for (int64_t k = r->grid.dp_rank; k < t->eval_steps && status == BT_OK; k += r->grid.dp) {
        bt_tensor *x, *y;
        status = run_batch(r, r->val_data, k * t->batch_size, t->batch_size, &x, &y);
        bt_tensor *loss = status == BT_OK ? model_forward(r->model, x, y, NULL) : NULL;
        if (!loss)
            status = BT_ERR;
        else
            sum += bt_item(loss);
        bt_step_end();
    }
    train_mode(r, true);
    bt_set_grad_enabled(grad_mode);
    if (status == BT_OK && r->device.type != BT_DEVICE_CPU && bt_cuda_synchronize() != BT_OK)
        status = BT_ERR;
    if (status == BT_OK && r->grid.dp > 1 &&
        comm_allreduce_doubles(r->grid.dp_group, &sum, 1, COMM_SUM) != BT_OK)
        status = BT_ERR;
    *val_loss = sum / (double)t->eval_steps;
    return status;
}

/* Dropout masks of global micro-batch g (of a step's dp * grad_accum, in data order) come from a
 * stream of their own, a function of the seed and g alone: the masks do not depend on the layout,
 * and a resumed run draws the same ones. */
static void seed_dropout(uint64_t seed, int64_t g) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * (uint64_t)(g + 1); /* splitmix64 */
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    bt_runtime()->dropout_rng = bt_rng_make(z ^ (z >> 31));
}

static bt_status finish_step(struct run *r, int64_t step, double lr, const double *sums,
                             double *loss_out, double *norm_out, bool *stop);

/* One optimizer step over this rank's grad_accum micro-batches: micro-batch m of dp rank r is
 * global micro-batch m * dp + r (DESIGN.md "Data order"). Returns the step's mean loss over all
 * ranks, the gradient norm, and whether any rank was asked to stop (a signal). */
static bt_status train_step(struct run *r, int64_t step, double lr, double *loss_out,
                            double *norm_out, bool *stop) {
    const struct cfg_train *t = &r->cfg.train;
    int64_t B = t->batch_size, dp = r->grid.dp, global_batch = B * r->micro_per_step;
    /* the stream continues from where the checkpoint left it, whatever its batch layout was */
    int64_t first = r->start_position + (step - r->start_step) * global_batch;
    if (r->dp)
        dp_zero_grad(r->dp);
    else
        optim_zero_grad(r->opt);
    double sums[2] = {0.0, stop_signal ? 1.0 : 0.0}; /* loss, stop requests */
    int64_t micro0 = r->start_micro + (step - r->start_step) * r->micro_per_step;
    if (r->pp) {
        struct stage_batch sb = {.r = r, .data = r->train_data, .first = first, .micro0 = micro0};
        struct pp_step_stats stats;
        if (pp_step(r->pp, stage_forward, arm_data_parallel, &sb, &stats) != BT_OK) return BT_ERR;
        bt_profile_mark("step", "(pipeline: waits, others)");
        bt_step_end();
        /* the last stage's tp rank 0 speaks for its dp rank's micro-batches */
        if (holds_last_stage(r) && r->grid.tp_rank == 0)
            sums[0] = stats.loss_sum * (double)t->grad_accum;
        if (r->dp && dp_finish(r->dp) != BT_OK) return BT_ERR;
        if (sum_tied_embedding(r) != BT_OK) return BT_ERR;
        if (comm_allreduce_doubles(r->grid.world_group, &sums[0], 1, COMM_SUM) != BT_OK ||
            comm_allreduce_doubles(r->grid.world_group, &sums[1], 1, COMM_MAX) != BT_OK)
            return BT_ERR;
        return finish_step(r, step, lr, sums, loss_out, norm_out, stop);
    }
    for (int64_t m = 0; m < t->grad_accum; m++) {
        int64_t g = m * dp + r->grid.dp_rank;
        bt_tensor *x, *y;
        if (run_batch(r, r->train_data, first + g * B, B, &x, &y) != BT_OK) return BT_ERR;
        seed_dropout((uint64_t)t->seed, micro0 + g);
        bt_profile_mark("step", "data");
        bt_tensor *loss = model_forward(r->model, x, y, NULL);
        /* the step's loss is the mean over micro-batches: scale each one's gradient (and dp
         * averages over ranks) */
        bt_tensor *scaled = bt_mul_scalar(loss, 1.0 / (double)t->grad_accum);
        if (r->dp && m == t->grad_accum - 1) dp_arm(r->dp); /* only the last one reduces */
        if (!scaled || bt_backward(scaled) != BT_OK) return BT_ERR;
        bt_profile_mark("backward", "(autograd, hooks)");
        sums[0] += bt_item(loss);
        bt_step_end();
    }
    if (r->dp && dp_finish(r->dp) != BT_OK) return BT_ERR;
    if (dp > 1 && comm_allreduce_doubles(r->grid.dp_group, sums, 2, COMM_SUM) != BT_OK)
        return BT_ERR;
    /* tp peers hold the same loss; a signal may have reached any rank: every rank must stop */
    if (r->grid.world > dp &&
        comm_allreduce_doubles(r->grid.world_group, &sums[1], 1, COMM_MAX) != BT_OK)
        return BT_ERR;
    bt_profile_mark("step", "dp finish, loss sums");
    /* a failed kernel reads as a NaN loss: say what failed, not "diverged" */
    if (r->device.type != BT_DEVICE_CPU && bt_cuda_synchronize() != BT_OK) return BT_ERR;
    return finish_step(r, step, lr, sums, loss_out, norm_out, stop);
}

/* The end of a step, once the gradients are whole and sums holds {the loss summed over the step's
 * global micro-batches, the stop requests}: the mean loss, clipping, the update. */
static bt_status finish_step(struct run *r, int64_t step, double lr, const double *sums,
                             double *loss_out, double *norm_out, bool *stop) {
    const struct cfg_train *t = &r->cfg.train;
    *loss_out = sums[0] / (double)r->micro_per_step;
    *stop = sums[1] > 0.0;
    double max_norm = t->grad_clip > 0.0 ? t->grad_clip : INFINITY;
    bool tied_copy = r->embedding_pair && holds_last_stage(r) && !model_is_first_stage(r->model);
    struct grid_norm_groups groups = {
        .rows = r->dp && r->cfg.parallel.zero ? r->grid.dp_group : NULL,
        .tp = r->grid.tp_group,
        .pp = r->grid.pp_group,
        .counted_elsewhere = tied_copy ? tied_embedding_name(r) : NULL};
    /* clip_grad_norm_ folded into the update: the factor multiplies each gradient as the
     * optimizer reads it (the same floats as scaling them first, one pass fewer) */
    *norm_out = grid_grad_norm(r->dp ? dp_optim_params(r->dp) : &r->params, &groups);
    if (*norm_out < 0.0) return BT_ERR;
    double clip = optim_clip_coef(*norm_out, max_norm);
    bt_profile_mark("step", "clip_grad_norm");
    if (!isfinite(*loss_out)) {
        error_everywhere = true; /* the loss was averaged: every rank sees it */
        return bt_error("step %lld: loss is %g (diverged); lower optimizer.lr or set "
                        "train.grad_clip",
                        (long long)step + 1, *loss_out);
    }
    if (optim_step_scaled(r->opt, lr, clip) != BT_OK) return BT_ERR;
    bt_profile_mark("step", "optimizer");
    bt_status gathered = r->dp ? dp_gather_params(r->dp) : BT_OK;
    bt_profile_mark("step", "dp gather params");
    return gathered;
}

static void profile_sync_device(void) {
    (void)bt_cuda_synchronize(); /* a device error is reported by the step's own check */
}

static void format_duration(double s, char *buf, size_t size) {
    long total = (long)(s + 0.5);
    if (total >= 3600)
        snprintf(buf, size, "%ldh%02ldm", total / 3600, (total / 60) % 60);
    else
        snprintf(buf, size, "%ldm%02lds", total / 60, total % 60);
}

static bt_status save_checkpoint(struct run *r, int64_t steps_done) {
    const struct braid_config *cfg = &r->cfg;
    int64_t samples_per_step = cfg->train.batch_size * r->micro_per_step;
    int64_t steps = steps_done - r->start_step;
    struct ckpt_meta meta = {
        .step = steps_done,
        .tokens_seen = r->start_tokens + steps * samples_per_step * cfg->train.seq_len,
        .lr = r->last_lr,
        .dropout_seed = (uint64_t)cfg->train.seed,
        .dropout_offset = (uint64_t)(r->start_micro + steps * r->micro_per_step),
        .data_seed = (uint64_t)cfg->train.seed,
        .data_shuffle = cfg->data.shuffle,
        .data_seq_len = cfg->train.seq_len,
        .data_position = r->start_position + steps * samples_per_step,
        .config_yaml = r->config_yaml,
        .tokenizer_yaml = r->tokenizer_yaml,
    };
    /* every rank writes its own pieces; the file holds the full tensors whatever the layout */
    struct ckpt_layout layout = {.group = r->grid.world_group,
                                 .split_group = r->grid.tp > 1 ? r->grid.tp_group : NULL,
                                 .replica_group = r->grid.dp_group,
                                 .stage_group = r->grid.pp > 1 ? r->grid.pp_group : NULL,
                                 .opt_row0 = r->dp ? dp_optim_row0(r->dp) : NULL};
    if (ckpt_save_layout(cfg->checkpoint.dir, &r->params, r->opt, &meta, cfg->checkpoint.keep,
                         &layout) != BT_OK) {
        error_everywhere =
            true; /* every rank agreed on the failure; the one that failed says why */
        return BT_ERR;
    }
    printf("saved %s/step_%08lld.h5\n", cfg->checkpoint.dir, (long long)steps_done);
    return BT_OK;
}

/* BRAID_PROFILE=1: steps left out of the per-op profile (allocation, first touches), fewer when
 * the run is short */
static int64_t profile_warmup(const struct run *r) {
    int64_t steps = r->cfg.train.max_steps - r->start_step;
    return steps > 6 ? 3 : steps / 2;
}

static bt_status train_loop(struct run *r) {
    const struct braid_config *cfg = &r->cfg;
    const struct cfg_train *t = &cfg->train;
    int64_t tokens_per_step = t->batch_size * r->micro_per_step * t->seq_len;
    double peak = r->peak_flops * r->grid.world; /* every rank's cores */
    /* of the whole model: with pipeline stages, every stage's parameters */
    double flops_per_token =
        model_flops_per_token_of(&r->model->config, r->num_parameters, t->seq_len);
    double start = now_seconds(), window_start = start, eval_time = 0.0;
    int64_t window_steps = 0;
    if (r->start_step >= t->max_steps) {
        printf("nothing to train: the run is at step %lld and train.max_steps=%lld\n",
               (long long)r->start_step, (long long)t->max_steps);
        return BT_OK;
    }
    bt_profile_start();
    for (int64_t step = r->start_step; step < t->max_steps; step++) {
        int64_t done = step + 1;
        double lr = sched_lr(&r->sched, step), loss, norm;
        bool stop;
        if (train_step(r, step, lr, &loss, &norm, &stop) != BT_OK) return BT_ERR;
        r->last_lr = lr;
        window_steps++;
        bool last = done == t->max_steps;
        struct metrics_row row = {.step = done, .loss = loss, .lr = lr, .grad_norm = norm};
        if (r->val_data && t->eval_every > 0 && (done % t->eval_every == 0 || last)) {
            double e0 = now_seconds();
            if (evaluate(r, &row.val_loss) != BT_OK) return BT_ERR;
            row.has_val = true;
            eval_time += now_seconds() - e0;
        }
        if (done % cfg->log.every == 0 || last || row.has_val) {
            double now = now_seconds();
            double train_time = now - window_start - eval_time;
            row.tokens_per_s = (double)(window_steps * tokens_per_step) / train_time;
            row.mfu = peak > 0 ? row.tokens_per_s * flops_per_token / peak : 0;
            double paused = 0.0; /* a peak measured again below: not the next row's time */
            if (row.mfu > 1.0 && r->grid.rank == 0 && r->peak_remeasures < 3) {
                /* training beat the peak: it was set too low (BRAID_MFU_PEAK), or its start-up
                 * measurement ran slow (a busy or descheduled core). Measure it again, keep the
                 * better. */
                double t0 = now_seconds(), again = measure_peak(r), was = r->peak_flops;
                paused = now_seconds() - t0;
                r->peak_remeasures++;
                if (again > r->peak_flops) r->peak_flops = again;
                peak = r->peak_flops * r->grid.world;
                row.mfu = row.tokens_per_s * flops_per_token / peak;
                printf("mfu: training ran above the matmul peak of %.1f GFLOP/s it was relative "
                       "to; measured again: %.1f GFLOP/s\n",
                       was / 1e9, again / 1e9);
            }
            row.elapsed_s = now - start;
            if (r->grid.rank == 0 && metrics_write(&r->log, &row) != BT_OK) return BT_ERR;
            char eta[32];
            format_duration((now - start) / (double)(done - r->start_step) *
                                (double)(t->max_steps - done),
                            eta, sizeof eta);
            printf("step %lld/%lld | loss %.4f", (long long)done, (long long)t->max_steps, loss);
            if (row.has_val) printf(" | val %.4f", row.val_loss);
            printf(" | lr %.2e | norm %.3f | %.0f tok/s | mfu %.1f%% | %.1f s | eta %s\n", lr, norm,
                   row.tokens_per_s, 100.0 * row.mfu, row.elapsed_s, eta);
            fflush(stdout);
            window_start = now + paused;
            window_steps = 0;
            eval_time = 0.0;
        }
        bool periodic = cfg->checkpoint.every > 0 && done % cfg->checkpoint.every == 0;
        /* every rank stops at the same step: train_step summed the requests over the ranks */
        if ((periodic || last || stop) && save_checkpoint(r, done) != BT_OK) return BT_ERR;
        bt_profile_mark("step", "eval, log, checkpoint");
        if (done - r->start_step == profile_warmup(r)) bt_profile_reset();
        if (stop && !last) {
            error_everywhere = true;
            if (!stop_signal) stop_signal = SIGTERM; /* another rank got it: end the same way */
            return bt_error("stopped by %s after step %lld, with a checkpoint: run again with "
                            "checkpoint.resume=auto to continue",
                            stop_signal == SIGINT ? "SIGINT" : "SIGTERM", (long long)done);
        }
    }
    bt_profile_report(stdout, t->max_steps - r->start_step - profile_warmup(r));
    return BT_OK;
}

/* ---- reporting errors once ---- */

/* Prints this rank's error when it is the one to say it: in a world of one always; otherwise the
 * lowest rank that failed says it (prefixed with its rank unless every rank failed). Collective:
 * every rank calls it with whether it failed. */
static void report_agreed(struct comm *world, bool failed) {
    int rank = comm_rank(world), size = comm_size(world);
    if (size == 1) {
        if (failed) cli_error("%s", bt_last_error());
        return;
    }
    double v[2] = {failed ? (double)rank : (double)size, failed ? 1.0 : 0.0};
    double lowest = v[0];
    if (comm_allreduce_doubles(world, &lowest, 1, COMM_MIN) != BT_OK ||
        comm_allreduce_doubles(world, &v[1], 1, COMM_SUM) != BT_OK) {
        if (failed) cli_error("rank %d: %s", rank, bt_last_error());
        return;
    }
    if (!failed || (int)lowest != rank) return;
    if ((int)v[1] == size)
        cli_error("%s", bt_last_error());
    else
        cli_error("rank %d: %s", rank, bt_last_error());
}

/* Setup: build everything on every rank, then agree: a failure anywhere ends every rank cleanly,
 * with the error said once. */
static bt_status setup_all(struct run *r) {
    bt_status st = setup(r);
    report_agreed(r->grid.world_group, st != BT_OK);
    double ok = st == BT_OK ? 1.0 : 0.0;
    if (r->grid.world > 1 && comm_allreduce_doubles(r->grid.world_group, &ok, 1, COMM_MIN) != BT_OK)
        ok = 0.0;
    return ok == 1.0 ? BT_OK : BT_ERR;
}

int cmd_train(int argc, char **argv) {
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        fputs(train_usage, stdout);
        return 0;
    }
    if (argc < 2 || argv[1][0] == '-') {
        cli_error("train: expected a config file first (usage: braid train CONFIG.yaml "
                  "[--section.key=value ...])");
        return 2;
    }
    if (comm_init(&argc, &argv) != BT_OK) {
        cli_error("%s", bt_last_error());
        return 1;
    }
    struct comm *world = comm_world();
    int rank = comm_rank(world), size = comm_size(world);
    if (rank != 0 && !freopen("/dev/null", "w", stdout)) /* progress and reports: rank 0's */
        fprintf(stderr, "braid: rank %d: cannot silence stdout\n", rank);
    struct run r;
    memset(&r, 0, sizeof r);
    int status = 0;
    bool config_failed =
        load_config(&r.cfg, argc, argv, size) != BT_OK || peak_from_env(&r.peak_env) != BT_OK;
    if (size > 1) { /* usually the same error everywhere, but data directories can differ */
        report_agreed(world, config_failed);
        double ok = config_failed ? 0.0 : 1.0;
        if (comm_allreduce_doubles(world, &ok, 1, COMM_MIN) != BT_OK) ok = 0.0;
        config_failed = ok == 0.0;
    } else if (config_failed) {
        cli_error("%s", bt_last_error());
    }
    /* on GPUs: the rank's device, and NCCL on the world before the grid splits it (the groups'
     * communicators come from ncclCommSplit) */
    if (!config_failed && strcmp(r.cfg.train.device, "cuda") == 0 && size > 1 &&
        (!bt_backend_for(bt_cuda(comm_local_rank()), "train.device=cuda") ||
         comm_use_device(world) != BT_OK)) {
        cli_error("rank %d: %s", rank, bt_last_error());
        comm_abort(1);
    }
    if (config_failed) {
        status = 2;
    } else if (grid_init(&r.grid, world, (int)r.cfg.parallel.dp, (int)r.cfg.parallel.tp,
                         (int)r.cfg.parallel.pp) != BT_OK) {
        if (rank == 0) cli_error("%s", bt_last_error());
        status = 2;
    } else if (setup_all(&r) != BT_OK) {
        status = 1;
    } else if (setup_parallel(&r) != BT_OK) { /* collective: a failure here cannot be agreed */
        cli_error("rank %d: %s", rank, bt_last_error());
        fflush(NULL);
        comm_abort(1);
    } else {
        catch_stop_signals();
        const char *profile = getenv("BRAID_PROFILE");
        if (profile && *profile && strcmp(profile, "0") != 0) {
            /* on a GPU, each mark waits for the queued kernels (a failure shows at the next
             * checked call, as without profiling) */
            if (r.device.type != BT_DEVICE_CPU) bt_profile_set_sync(profile_sync_device);
            bt_profile_enable(true);
        }
        if (train_loop(&r) != BT_OK) {
            status = stop_signal ? 128 + stop_signal : 1;
            if (size == 1 || error_everywhere) {
                /* a rank that only learnt that another failed leaves the telling to that one */
                report_agreed(world, !strstr(bt_last_error(), "another rank failed"));
            } else {
                /* this rank alone failed while the others may wait in a collective: end them */
                cli_error("rank %d: %s", rank, bt_last_error());
                fflush(NULL);
                comm_abort(status);
            }
        }
    }
    run_free(&r);
    bt_runtime_shutdown();
    comm_finalize();
    return status;
}
