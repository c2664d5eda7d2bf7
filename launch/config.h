/* Job configuration: the YAML file of `braid train`, parsed with libyaml into struct braid_config,
 * with every key of docs/config.md, its default, its type and its checks. Errors name the file,
 * the line and the key: `job.yaml:12: model.n_head: expected an integer, got 'eight'`. */
#ifndef BRAID_LAUNCH_CONFIG_H
#define BRAID_LAUNCH_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

#define CFG_STR 256   /* longest string value (paths, globs), including the terminator */
#define CFG_N_KEYS 55 /* keys of docs/config.md, all sections */

/* Where a key's value came from (struct braid_config.origin): a line (>= 1) of `source`, or: */
#define CFG_FROM_DEFAULT 0
#define CFG_FROM_COMMAND_LINE (-1)
#define CFG_FROM_EARLIER_FILE (-2) /* a file loaded before `source` */

struct cfg_model {
    char arch[16];      /* gpt, llama */
    int64_t vocab_size; /* 0 = from the tokenizer.yaml beside data.train's shards */
    int64_t block_size, n_layer, n_head, n_kv_head, n_embd, ffn_hidden;
    double dropout;
    bool bias;
    char gelu[8]; /* tanh, exact */
    double norm_eps, rope_theta;
    bool tie_embeddings;
    char init_from[CFG_STR]; /* "" = random init */
};

struct cfg_train {
    int64_t seed, batch_size, seq_len, grad_accum, max_steps;
    double grad_clip;
    int64_t eval_every, eval_steps;
    char device[16]; /* cpu, cuda */
    char dtype[16];  /* float32, bfloat16 */
};

struct cfg_optimizer {
    char name[16]; /* adamw, sgd */
    double lr, beta1, beta2, eps, weight_decay, momentum;
};

struct cfg_schedule {
    char name[16];                     /* constant, cosine, linear */
    int64_t warmup_steps, decay_steps; /* decay_steps 0 = max_steps */
    double min_lr;
};

struct cfg_parallel {
    int64_t dp, tp, pp, zero, microbatches; /* microbatches 0 = train.grad_accum */
    char schedule[16];                      /* 1f1b, gpipe */
    double bucket_mb;                       /* data-parallel gradient bucket size */
    bool sequence_parallel;                 /* Megatron-SP inside the tensor-parallel group */
    char stage_layers[CFG_STR];             /* blocks per pipeline stage, "3,5"; "" = balanced */
    int64_t virtual_stages;                 /* pipeline chunks per rank (interleaved 1F1B) */
};

struct cfg_data {
    char train[CFG_STR], val[CFG_STR]; /* glob patterns of token shards */
    bool shuffle;
};

struct cfg_checkpoint {
    char dir[CFG_STR];
    int64_t every, keep;  /* every 0 = only at the last step */
    char resume[CFG_STR]; /* none, auto, or a file path */
};

struct cfg_log {
    char dir[CFG_STR];
    int64_t every;
};

struct braid_config {
    struct cfg_model model;
    struct cfg_train train;
    struct cfg_optimizer optimizer;
    struct cfg_schedule schedule;
    struct cfg_parallel parallel;
    struct cfg_data data;
    struct cfg_checkpoint checkpoint;
    struct cfg_log log;
    char source[CFG_STR];   /* the file it was loaded from, for messages */
    int origin[CFG_N_KEYS]; /* per key, in docs order: a line of source or CFG_FROM_* */
};

/* Every key at its documented default (model defaults that depend on model.arch, such as
 * tie_embeddings and ffn_hidden, are resolved by cfg_finalize). */
void cfg_defaults(struct braid_config *cfg);

/* Reads `path` over the defaults. Unknown sections or keys, wrong types, unparsable YAML and a
 * missing file are errors naming path:line and the key; on an error cfg is left unchanged. Records
 * path in cfg->source and each key's line in cfg->origin. */
bt_status cfg_load_file(struct braid_config *cfg, const char *path);

/* The same for YAML text held in memory (a checkpoint's /config); `name` stands for the file in
 * messages and in cfg->source. */
bt_status cfg_load_text(struct braid_config *cfg, const char *text, const char *name);

/* Applies one `--section.key=value` override (the leading dashes optional); the value is parsed
 * as the key's type. Errors name the override as given. */
bt_status cfg_apply_override(struct braid_config *cfg, const char *arg);

/* Fills arch-dependent defaults and checks values and their relations (n_embd divisible by
 * n_head, n_head by n_kv_head, seq_len <= block_size, dp*tp*pp == world_size, ...): errors name
 * the key(s) and the numbers. */
bt_status cfg_finalize(struct braid_config *cfg, int world_size);

/* The resolved config as YAML text (every key, sections in docs order), into buf; returns the
 * length it needs (like snprintf). */
size_t cfg_to_yaml(const struct braid_config *cfg, char *buf, size_t size);

/* The pipeline stages' blocks from parallel.stage_layers of a finalized config: virtual stage s
 * holds blocks [begin[s], end[s]) (parallel.pp × parallel.virtual_stages entries each). False when
 * the key is empty (the caller balances the stages itself). */
bool cfg_stage_layers(const struct braid_config *cfg, int64_t *begin, int64_t *end);

/* Key k (0 .. CFG_N_KEYS-1, docs order) as "section.key", and its value in cfg as the text
 * cfg_to_yaml writes ("12", "0.0006", "true", "gpt"); NULL for k out of range. */
const char *cfg_key_name(int k, char *buf, size_t size);
const char *cfg_value_text(const struct braid_config *cfg, int k, char *buf, size_t size);

/* Whether `key` ("model.tie_embeddings") was set by a file or the command line rather than left
 * at its default; false for an unknown key. */
bool cfg_is_set(const struct braid_config *cfg, const char *key);

/* Where `key` was set, for messages: "job.yaml:9", "command line", "an earlier file" or
 * "default"; NULL for an unknown key. Writes into buf and returns it. */
const char *cfg_origin(const struct braid_config *cfg, const char *key, char *buf, size_t size);

#endif
