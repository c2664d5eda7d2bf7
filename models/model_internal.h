/* What models/model.c and models/generate.c share with the families (models/gpt.c,
 * models/llama.c): each family builds its module tree into a struct model whose config model.c has
 * already checked, ends its forward with model_finish_forward, and runs its cached forward's
 * attention through model_cache_attend. Internal to models/. */
#ifndef BRAID_MODELS_MODEL_INTERNAL_H
#define BRAID_MODELS_MODEL_INTERNAL_H

#include "models/model.h"

/* Build m->root (parameters created, tied and initialised from rng), m->impl (one allocation,
 * released with free) and m->forward. On failure they return BT_ERR with a message and leave
 * whatever they built in m for model_free. */
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

/* logits (B, T, V), targets (B, T) or NULL: the mean cross-entropy over (B*T, V), or NULL without
 * error when there are no targets; *logits_out receives logits when not NULL. With tp_group of
 * P > 1, logits are this rank's vocabulary slice (B, T, V/P) and the loss is tp_cross_entropy's. */
bt_tensor *model_finish_forward(bt_tensor *logits, bt_tensor *targets, struct comm *tp_group,
                                bt_tensor **logits_out);

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
