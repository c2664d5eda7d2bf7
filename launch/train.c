/* `braid train CONFIG.yaml [--section.key=value ...]`: the worker. Loads and checks the job, builds
 * the model, the data loaders, the optimizer and the schedule, then runs the step loop: gradient
 * accumulation, clipping, the update, metrics, evaluation and checkpoints. */
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/optim.h"
#include "core/runtime.h"
#include "core/schedule.h"
#include "data/checkpoint.h"
#include "data/loader.h"
#include "data/tokenizer.h"
#include "launch/commands.h"
#include "launch/config.h"
#include "launch/metrics.h"
#include "models/model.h"

static const char train_usage[] =
    "usage: braid train CONFIG.yaml [--section.key=value ...]\n"
    "\n"
    "Trains the model a YAML job file describes (see docs/config.md for every key).\n"
    "Any key can be overridden on the command line, e.g. --train.max_steps=100.\n"
    "Writes <log.dir>/metrics.jsonl and <checkpoint.dir>/step_<8 digits>.h5 + latest.\n";

/* Everything a run holds, released by run_free in reverse order. */
struct run {
    struct braid_config cfg;
    char *config_yaml;
    struct model *model;
    struct nn_param_list params;
    struct optim *opt;
    struct sched sched;
    struct data_loader *train_data, *val_data;
    struct metrics_log log;
    double peak_flops;
};

static void run_free(struct run *r) {
    metrics_close(&r->log);
    data_loader_close(r->val_data);
    data_loader_close(r->train_data);
    optim_free(r->opt);
    nn_param_list_free(&r->params);
    model_free(r->model);
    free(r->config_yaml);
}

/* ---- setting up ---- */

/* model.vocab_size 0: take the tokenizer.yaml that braid prep wrote beside the training shards */
static bt_status resolve_vocab_size(struct braid_config *cfg) {
    if (cfg->model.vocab_size > 0 || !cfg->data.train[0]) return BT_OK;
    char pattern[CFG_STR];
    snprintf(pattern, sizeof pattern, "%s", cfg->data.train);
    const char *dir = dirname(pattern);
    struct tokenizer *tok = tokenizer_load(dir, NULL);
    if (!tok) {
        char why[BT_ERROR_MAX / 2];
        snprintf(why, sizeof why, "%s", bt_last_error());
        return bt_error("model.vocab_size is not set and %s/tokenizer.yaml cannot be read (%s): "
                        "set model.vocab_size or prepare the data with braid prep",
                        dir, why);
    }
    cfg->model.vocab_size = tokenizer_vocab_size(tok);
    tokenizer_free(tok);
    return BT_OK;
}

static bt_status load_config(struct braid_config *cfg, int argc, char **argv) {
    cfg_defaults(cfg);
    if (cfg_load_file(cfg, argv[1]) != BT_OK) return BT_ERR;
    for (int i = 2; i < argc; i++)
        if (cfg_apply_override(cfg, argv[i]) != BT_OK) return BT_ERR;
    if (resolve_vocab_size(cfg) != BT_OK) return BT_ERR;
    if (cfg_finalize(cfg, 1) != BT_OK) return BT_ERR;
    if (strcmp(cfg->train.device, "cpu") != 0)
        return bt_error("train.device=%s: braid was built without the CUDA backend (use cpu)",
                        cfg->train.device);
    if (strcmp(cfg->train.dtype, "float32") != 0)
        return bt_error("train.dtype=%s: CPU training runs in float32", cfg->train.dtype);
    if (strcmp(cfg->checkpoint.resume, "none") != 0 && strcmp(cfg->checkpoint.resume, "auto") != 0)
        return bt_error("checkpoint.resume=%s: resuming from a checkpoint is not supported yet "
                        "(checkpoints hold model weights only; use model.init_from to start "
                        "from them)",
                        cfg->checkpoint.resume);
    return BT_OK;
}

static struct model_config model_config_of(const struct cfg_model *m) {
    struct model_config mc = {
        .arch = strcmp(m->arch, "llama") == 0 ? MODEL_LLAMA : MODEL_GPT,
        .vocab_size = m->vocab_size,
        .block_size = m->block_size,
        .n_layer = m->n_layer,
        .n_head = m->n_head,
        .n_kv_head = m->n_kv_head,
        .n_embd = m->n_embd,
        .ffn_hidden = m->ffn_hidden,
        .dropout = m->dropout,
        .bias = m->bias,
        .gelu = strcmp(m->gelu, "exact") == 0 ? BT_GELU_EXACT : BT_GELU_TANH,
        .norm_eps = m->norm_eps,
        .rope_theta = m->rope_theta,
        .tie_embeddings = m->tie_embeddings,
    };
    return mc;
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
    r->opt = optim_create(&oc, &r->params);
    if (!r->opt) return BT_ERR;
    const struct cfg_schedule *s = &r->cfg.schedule;
    sched_kind sk;
    if (!sched_kind_parse(s->name, &sk)) return BT_ERR;
    return sched_init(&r->sched, sk, o->lr, s->warmup_steps, s->decay_steps, s->min_lr);
}

static bt_status setup(struct run *r) {
    const struct braid_config *cfg = &r->cfg;
    size_t need = cfg_to_yaml(cfg, NULL, 0);
    r->config_yaml = malloc(need + 1);
    if (!r->config_yaml) return bt_error("out of memory");
    cfg_to_yaml(cfg, r->config_yaml, need + 1);
    printf("braid train %s: resolved config\n%s\n", cfg->source, r->config_yaml);
    if (strcmp(cfg->checkpoint.resume, "auto") == 0) {
        char latest[1024];
        if (ckpt_latest(cfg->checkpoint.dir, latest, sizeof latest) == BT_OK)
            return bt_error("checkpoint.resume=auto: %s exists but resuming is not supported "
                            "yet; move it away or set checkpoint.resume=none",
                            latest);
        bt_error_clear();
        printf("checkpoint.resume=auto: no checkpoint in %s, starting fresh\n",
               cfg->checkpoint.dir);
    }

    struct model_config mc = model_config_of(&cfg->model);
    r->model = model_create(&mc, (uint64_t)cfg->train.seed);
    if (!r->model || model_parameters(r->model, &r->params) != BT_OK) return BT_ERR;
    if (cfg->model.init_from[0] && ckpt_load_model(cfg->model.init_from, &r->params) != BT_OK)
        return BT_ERR;
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
    if (build_optimizer(r) != BT_OK) return BT_ERR;
    if (metrics_open(&r->log, cfg->log.dir) != BT_OK) return BT_ERR;

    /* MFU is relative to sgemm at the model's largest GEMM: the MLP or the lm_head */
    int64_t rows = cfg->train.batch_size * T, C = cfg->model.n_embd;
    int64_t wide = mc.vocab_size > 4 * C ? mc.vocab_size : 4 * C;
    r->peak_flops = metrics_sgemm_peak(rows, wide, C, 0.25);
    printf("model: %s, %lld parameters | data: %lld tokens, %lld windows of %lld | sgemm peak "
           "%.1f GFLOP/s\n",
           cfg->model.arch, (long long)model_num_parameters(r->model),
           (long long)data_loader_tokens(r->train_data),
           (long long)data_loader_windows(r->train_data), (long long)T, r->peak_flops / 1e9);
    return BT_OK;
}

/* ---- the loop ---- */

/* Mean loss over eval_steps batches of the validation data, in eval mode without autograd. */
static bt_status evaluate(struct run *r, double *val_loss) {
    const struct cfg_train *t = &r->cfg.train;
    bool grad_mode = bt_set_grad_enabled(false);
    model_train(r->model, false);
    double sum = 0.0;
    bt_status status = BT_OK;
    for (int64_t k = 0; k < t->eval_steps && status == BT_OK; k++) {
        bt_tensor *x, *y;
        status = data_loader_batch(r->val_data, k * t->batch_size, t->batch_size, &x, &y);
        bt_tensor *loss = status == BT_OK ? model_forward(r->model, x, y, NULL) : NULL;
        if (!loss) status = BT_ERR;
        else sum += bt_item(loss);
        bt_step_end();
    }
    model_train(r->model, true);
    bt_set_grad_enabled(grad_mode);
    *val_loss = sum / (double)t->eval_steps;
    return status;
}

/* One optimizer step over grad_accum micro-batches: returns the mean loss and the grad norm. */
static bt_status train_step(struct run *r, int64_t step, double lr, double *loss_out,
                            double *norm_out) {
    const struct cfg_train *t = &r->cfg.train;
    int64_t B = t->batch_size, global_batch = B * t->grad_accum; /* dp = 1 */
    optim_zero_grad(r->opt);
    double loss_sum = 0.0;
    for (int64_t m = 0; m < t->grad_accum; m++) {
        bt_tensor *x, *y;
        if (data_loader_batch(r->train_data, step * global_batch + m * B, B, &x, &y) != BT_OK)
            return BT_ERR;
        bt_tensor *loss = model_forward(r->model, x, y, NULL);
        /* the step's loss is the mean over micro-batches: scale each one's gradient */
        bt_tensor *scaled = bt_mul_scalar(loss, 1.0 / (double)t->grad_accum);
        if (!scaled || bt_backward(scaled) != BT_OK) return BT_ERR;
        loss_sum += bt_item(loss);
        bt_step_end();
    }
    *loss_out = loss_sum / (double)t->grad_accum;
    double max_norm = t->grad_clip > 0.0 ? t->grad_clip : INFINITY;
    *norm_out = optim_clip_grad_norm(r->params.tensors, r->params.count, max_norm);
    if (*norm_out < 0.0) return BT_ERR;
    if (!isfinite(*loss_out))
        return bt_error("step %lld: loss is %g (diverged); lower optimizer.lr or set "
                        "train.grad_clip",
                        (long long)step + 1, *loss_out);
    return optim_step(r->opt, lr);
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
    struct ckpt_meta meta = {
        .step = steps_done,
        .tokens_seen = steps_done * cfg->train.batch_size * cfg->train.grad_accum *
                       cfg->train.seq_len,
        .config_yaml = r->config_yaml,
    };
    if (ckpt_save(cfg->checkpoint.dir, &r->params, &meta, cfg->checkpoint.keep) != BT_OK)
        return BT_ERR;
    printf("saved %s/step_%08lld.h5\n", cfg->checkpoint.dir, (long long)steps_done);
    return BT_OK;
}

static bt_status train_loop(struct run *r) {
    const struct braid_config *cfg = &r->cfg;
    const struct cfg_train *t = &cfg->train;
    int64_t tokens_per_step = t->batch_size * t->grad_accum * t->seq_len;
    double flops_per_token = model_flops_per_token(r->model, t->seq_len);
    double start = now_seconds(), window_start = start, eval_time = 0.0;
    int64_t window_steps = 0;
    for (int64_t step = 0; step < t->max_steps; step++) {
        int64_t done = step + 1;
        double lr = sched_lr(&r->sched, step), loss, norm;
        if (train_step(r, step, lr, &loss, &norm) != BT_OK) return BT_ERR;
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
            row.mfu = r->peak_flops > 0 ? row.tokens_per_s * flops_per_token / r->peak_flops : 0;
            row.elapsed_s = now - start;
            if (metrics_write(&r->log, &row) != BT_OK) return BT_ERR;
            char eta[32];
            format_duration((now - start) / (double)done * (double)(t->max_steps - done), eta,
                            sizeof eta);
            printf("step %lld/%lld | loss %.4f", (long long)done, (long long)t->max_steps, loss);
            if (row.has_val) printf(" | val %.4f", row.val_loss);
            printf(" | lr %.2e | norm %.3f | %.0f tok/s | mfu %.1f%% | %.1f s | eta %s\n", lr,
                   norm, row.tokens_per_s, 100.0 * row.mfu, row.elapsed_s, eta);
            fflush(stdout);
            window_start = now;
            window_steps = 0;
            eval_time = 0.0;
        }
        bool periodic = cfg->checkpoint.every > 0 && done % cfg->checkpoint.every == 0;
        if ((periodic || last) && save_checkpoint(r, done) != BT_OK) return BT_ERR;
    }
    return BT_OK;
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
    struct run r;
    memset(&r, 0, sizeof r);
    int status = 0;
    if (load_config(&r.cfg, argc, argv) != BT_OK) {
        cli_error("%s", bt_last_error());
        status = 2;
    } else if (setup(&r) != BT_OK || train_loop(&r) != BT_OK) {
        cli_error("%s", bt_last_error());
        status = 1;
    }
    run_free(&r);
    bt_runtime_shutdown();
    return status;
}
