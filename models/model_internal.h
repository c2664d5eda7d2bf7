/* What models/model.c and models/generate.c share with the families (models/gpt.c,
 * models/llama.c): each family builds its module tree into a struct model whose config model.c has
 * already checked (a whole model or one pipeline stage of it), returns the stage's output from its
 * forward (model.c adds the loss on the last stage) and runs its cached forward's attention
 * through model_cache_attend. Internal to models/. */
#ifndef BRAID_MODELS_MODEL_INTERNAL_H
#define BRAID_MODELS_MODEL_INTERNAL_H

#include "models/model.h"

/* Build m->root, m->impl (one allocation, released with free) and m->forward: the stage's modules
 * (model_config_layer_begin .. _end, the embeddings and the head as the stage holds them). A whole
 * single-rank model (model_config_is_whole) is tied and initialised from rng; otherwise the
 * parameters are created zero (the last stage's head tied to its copy of a tied embedding) and
 * model_create loads them from the whole single-rank model built from the same rng. On failure
 * they return BT_ERR with a message and leave whatever they built in m for model_free. */
bt_status gpt_build(struct model *m, struct bt_rng *rng);
bt_status llama_build(struct model *m, struct bt_rng *rng);

/* The families' halves of model_forward_cached, which has checked idx (batch, n) against the cache
 * and turned dropout and autograd off: logits (batch, n, V) of positions len..len+n-1. */
bt_tensor *gpt_forward_cached(struct model *m, struct model_cache *c, bt_tensor *idx);
bt_tensor *llama_forward_cached(struct model *m, struct model_cache *c, bt_tensor *idx);

/* q (B, NH, n, hs), k and v (B, NKV, n, hs) of positions len..len+n-1 (len =
 * model_cache_len(c)): stores k and v in layer `layer` of the cache and returns the causal
 * attention of q over the len + n positions, (B, NH, n, hs), scale 1/sqrt(hs). NULL inputs (an
 * earlier op failed) give NULL. */
bt_tensor *model_cache_attend(struct model_cache *c, int64_t layer, bt_tensor *q, bt_tensor *k,
                              bt_tensor *v);

/* P of the config's tp group: 1 without one. */
static inline int model_tp_size(const struct model_config *c) {
    return c->tp_group ? comm_size(c->tp_group) : 1;
}

/* ---- pipeline stages (model_config.pp_stages > 1) ---- */
static inline bool model_config_is_pipelined(const struct model_config *c) {
    return c->pp_stages > 1;
}
/* The stage holds the embeddings (stage 0) / the final norm and the LM head (the last stage);
 * a whole model holds both. */
static inline bool model_config_is_first_stage(const struct model_config *c) {
    return !model_config_is_pipelined(c) || c->pp_stage == 0;
}
static inline bool model_config_is_last_stage(const struct model_config *c) {
    return !model_config_is_pipelined(c) || c->pp_stage == c->pp_stages - 1;
}
/* The stage's blocks [begin, end): all n_layer of them for a whole model. */
static inline int64_t model_config_layer_begin(const struct model_config *c) {
    return model_config_is_pipelined(c) ? c->pp_layer_begin : 0;
}
static inline int64_t model_config_layer_end(const struct model_config *c) {
    return model_config_is_pipelined(c) ? c->pp_layer_end : c->n_layer;
}
/* Every parameter of the single-rank model, whole, in this process: no tp shards, no stage. */
static inline bool model_config_is_whole(const struct model_config *c) {
    return model_tp_size(c) == 1 && !model_config_is_pipelined(c);
}
/* NULL with `<arch>: <what> needs the whole model, not pipeline stage s of S (layers [b, e))` */
bt_tensor *model_whole_only(const struct model *m, const char *what);

/* ---- sequence parallelism (model_config.sequence_parallel) ----
 * Between a row-parallel layer's reduce-scatter and the next column-parallel layer's all-gather,
 * each rank holds its slice r of the residual stream along dim 1, (B, T/P, C). */
static inline bool model_sequence_parallel(const struct model_config *c) {
    return c->sequence_parallel && model_tp_size(c) > 1;
}
/* A replicated parameter w used on this rank's sequence slice gets a partial gradient: under SP
 * it goes through tp_copy (identity forward, gradient summed over the tp group); else w. */
bt_tensor *model_sp_param(const struct model_config *c, bt_tensor *w);
/* Norms with their weights through model_sp_param. */
bt_tensor *model_layernorm(const struct model_config *c, struct nn_layernorm *ln, bt_tensor *x);
bt_tensor *model_rmsnorm(const struct model_config *c, struct nn_rmsnorm *n, bt_tensor *x);
/* Dropout of x; under SP x is this rank's slice along dim 1 of a (B, T, ...) tensor and its mask
 * is that slice of the mask the whole tensor would draw, so the run draws what tp=1 draws. */
bt_tensor *model_dropout(const struct model_config *c, struct nn_dropout *d, bt_tensor *x);
/* This rank's first position of the sequence slice of T positions (0 without SP). */
int64_t model_sp_offset(const struct model_config *c, int64_t T);

/* Makes child (a module struct or NULL from a failed constructor) the last child of parent and
 * returns it; NULL (the child freed) when it cannot be attached. */
static inline void *model_attach(struct nn_module *parent, void *child) {
    if (!child) return NULL;
    if (!nn_module_add_child(parent, child)) {
        nn_module_free(child);
        return NULL;
    }
    return child;
}

#endif
