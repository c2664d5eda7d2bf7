/* LLaMA (Hugging Face's LlamaForCausalLM): token embedding, pre-RMSNorm blocks of causal
 * self-attention with rotary position embeddings and grouped-query heads, a SwiGLU MLP, a final
 * RMSNorm and an untied LM head by default; no biases. Parameter names are HF's
 * (model.layers.0.self_attn.q_proj.weight ...). Shapes: B batch, T time, C n_embd, NH query heads,
 * NKV key/value heads, hs = C / NH, V vocab, F ffn_hidden.
 * With a tp group of P > 1 ranks (Megatron-LM's layout, parallel/tp.h, docs/tp.md) each rank holds
 * NH/P query heads of q_proj and NKV/P key/value heads of k_proj and v_proj (column-parallel; the
 * query heads of rank r use exactly its kv heads, so NKV divisible by P needs no kv replication),
 * the matching columns of o_proj (row-parallel), F/P of gate_proj and up_proj (column) and of
 * down_proj (row), V/P rows of embed_tokens (vocab-parallel, also the tied LM head) and of an
 * untied lm_head (column); the RMSNorms are replicated and the loss is tp_cross_entropy. Exactly
 * one of each layer's single-rank and `_tp` pointers is set. With sequence parallelism the
 * residual stream is this rank's slice (B, T/P, C) of the sequence (models/model_internal.h): the
 * norms, dropout and adds run on it, the column layers all-gather it (RoPE then sees the whole
 * sequence) and the row layers and the embedding reduce-scatter back to it. A pipeline stage
 * (model_config.pp_stages > 1) holds layers [pp_layer_begin, pp_layer_end) under their global
 * names, embed_tokens and drop on stage 0, norm and lm_head on the last stage (tied: a copy of
 * embed_tokens there, whose weight the head uses). */
#include <stdio.h>
#include <stdlib.h>

#include "models/model_internal.h"
#include "parallel/tp.h"

struct llama_attention {
    struct nn_module base;
    struct nn_linear *q_proj;           /* (NH*hs, C) */
    struct nn_linear *k_proj;           /* (NKV*hs, C) */
    struct nn_linear *v_proj;           /* (NKV*hs, C) */
    struct nn_linear *o_proj;           /* (C, NH*hs) */
    struct tp_column_linear *q_proj_tp; /* tp: (NH/P*hs, C), this rank's query heads */
    struct tp_column_linear *k_proj_tp; /* tp: (NKV/P*hs, C), this rank's kv heads */
    struct tp_column_linear *v_proj_tp; /* tp: (NKV/P*hs, C) */
    struct tp_row_linear *o_proj_tp;    /* tp: (C, NH/P*hs), the columns of the query heads */
    struct nn_dropout *resid_dropout;
    int64_t n_head, n_kv_head; /* this rank's: NH and NKV, or NH/P and NKV/P with tp */
    double rope_theta;
};

struct llama_mlp {
    struct nn_module base;
    struct nn_linear *gate_proj;           /* (F, C) */
    struct nn_linear *up_proj;             /* (F, C) */
    struct nn_linear *down_proj;           /* (C, F) */
    struct tp_column_linear *gate_proj_tp; /* tp: (F/P, C) */
    struct tp_column_linear *up_proj_tp;   /* tp: (F/P, C) */
    struct tp_row_linear *down_proj_tp;    /* tp: (C, F/P) */
    struct nn_dropout *dropout;
};

struct llama_layer {
    struct nn_module base;
    struct nn_rmsnorm *input_layernorm;
    struct llama_attention *self_attn;
    struct nn_rmsnorm *post_attention_layernorm;
    struct llama_mlp *mlp;
};

/* The pointers of modules a pipeline stage does not hold are NULL: embed_tokens (stage 0, and the
 * last stage when tied), drop (stage 0), norm and the head (the last stage). */
struct llama {
    const struct model_config *config;          /* the model's: sequence parallelism, tp group */
    struct nn_embedding *embed_tokens;          /* (V, C) */
    struct tp_vocab_embedding *embed_tokens_tp; /* tp: (V/P, C) */
    struct nn_dropout *drop;
    struct nn_rmsnorm *norm;
    struct nn_linear *lm_head;           /* (V, C), weight = embed_tokens' when tied */
    struct tp_column_linear *lm_head_tp; /* tp, untied: (V/P, C); tied tp uses the embedding's */
    int64_t layer_begin, n_layers;       /* this stage's layers: layers.<layer_begin + i> */
    struct llama_layer *layers[];        /* n_layers layers */
};

/* ---- forward ---- */

/* x (..., in) through whichever of the single-rank or column-parallel layer is set */
static bt_tensor *column_forward(struct nn_linear *single, struct tp_column_linear *tp,
                                 bt_tensor *x) {
    return tp ? tp_column_linear_forward(tp, x) : nn_linear_forward(single, x);
}

/* x (..., in) (this rank's in/P with tp) through the single-rank or row-parallel layer */
static bt_tensor *row_forward(struct nn_linear *single, struct tp_row_linear *tp, bt_tensor *x) {
    return tp ? tp_row_linear_forward(tp, x) : nn_linear_forward(single, x);
}

/* y (B, T, heads*hs) -> (B, heads, T, hs), a view */
static bt_tensor *split_heads(bt_tensor *y, int64_t heads) {
    if (!y) return NULL;
    int64_t B = y->shape[0], T = y->shape[1], hs = y->shape[2] / heads;
    return bt_transpose(bt_view(y, BT_SHAPE(B, T, heads, hs)), 1, 2);
}

/* x (B, T, C) -> (B, T, C): causal self-attention with RoPE on q and k, kv heads shared by
 * NH / NKV query heads each (HF's repeat_kv), dropout on the projected output. With a cache, x
 * holds positions len..len+T-1 (RoPE offset len) and attends to the cached ones too. Under SP x
 * and the result are this rank's (B, T/P, C); q_proj, k_proj and v_proj all-gather x, so from
 * them to o_proj T is the whole sequence and RoPE's positions start at 0. */
static bt_tensor *attention_forward(const struct model_config *c, struct llama_attention *a,
                                    bt_tensor *x, struct model_cache *cache, int64_t layer) {
    if (!x) return NULL; /* an earlier op failed: keep its message */
    bt_scope_push(a->base.path);
    /* with tp, NH and NKV are this rank's NH/P and NKV/P heads; q, k and v share one input
     * collective (tp_copy, or under SP the all-gather of the sequence) */
    if (a->q_proj_tp) x = tp_column_input(a->q_proj_tp, x);
    bt_tensor *q = column_forward(a->q_proj, a->q_proj_tp, x); /* (B, T, NH*hs) */
    bt_tensor *k = column_forward(a->k_proj, a->k_proj_tp, x); /* (B, T, NKV*hs) */
    bt_tensor *v = column_forward(a->v_proj, a->v_proj_tp, x); /* (B, T, NKV*hs) */
    if (!q || !k || !v) {
        bt_scope_pop();
        return NULL;
    }
    int64_t B = q->shape[0], T = q->shape[1], pos0 = model_cache_len(cache);
    q = bt_rope(split_heads(q, a->n_head), a->rope_theta, pos0);    /* (B, NH, T, hs) */
    k = bt_rope(split_heads(k, a->n_kv_head), a->rope_theta, pos0); /* (B, NKV, T, hs) */
    v = split_heads(v, a->n_kv_head);                               /* (B, NKV, T, hs) */
    bt_tensor *y = cache ? model_cache_attend(cache, layer, q, k, v)
                         : bt_attention(q, k, v, true, 0.0); /* (B, NH, T, hs), scale 1/sqrt(hs) */
    y = bt_reshape(bt_transpose(y, 1, 2), BT_SHAPE(B, T, -1)); /* (B, T, NH*hs) */
    y = row_forward(a->o_proj, a->o_proj_tp, y); /* (B, T, C), replicated with tp (SP: T/P) */
    y = model_dropout(c, a->resid_dropout, y);
    bt_scope_pop();
    return y;
}

/* x (B, T, C) -> (B, T, C): down(silu(gate(x)) * up(x)), then dropout (SwiGLU, Shazeer 2020).
 * With tp F is this rank's F/P; under SP x and the result are (B, T/P, C) */
static bt_tensor *mlp_forward(const struct model_config *c, struct llama_mlp *mlp, bt_tensor *x) {
    bt_scope_push(mlp->base.path);
    if (mlp->gate_proj_tp) x = tp_column_input(mlp->gate_proj_tp, x); /* shared by gate and up */
    bt_tensor *gate = bt_silu(column_forward(mlp->gate_proj, mlp->gate_proj_tp, x)); /* (B,T,F) */
    bt_tensor *up = column_forward(mlp->up_proj, mlp->up_proj_tp, x);                /* (B,T,F) */
    bt_tensor *h = row_forward(mlp->down_proj, mlp->down_proj_tp, bt_mul(gate, up)); /* (B,T,C) */
    h = model_dropout(c, mlp->dropout, h);
    bt_scope_pop();
    return h;
}

/* x (B, T, C) -> (B, T, C): x + attn(norm(x)), then + mlp(norm(x)) */
static bt_tensor *layer_forward(const struct model_config *c, struct llama_layer *layer,
                                bt_tensor *x, struct model_cache *cache, int64_t index) {
    bt_scope_push(layer->base.path);
    x = bt_add(x, attention_forward(c, layer->self_attn,
                                    model_rmsnorm(c, layer->input_layernorm, x), cache, index));
    x = bt_add(x, mlp_forward(c, layer->mlp, model_rmsnorm(c, layer->post_attention_layernorm, x)));
    bt_scope_pop();
    return x;
}

/* idx (B, T) -> drop(embed_tokens[idx]) (B, T, C); under SP this rank's (B, T/P, C) */
static bt_tensor *embed(struct llama *g, bt_tensor *idx) {
    bt_tensor *x = g->embed_tokens_tp ? tp_vocab_embedding_forward(g->embed_tokens_tp, idx)
                                      : nn_embedding_forward(g->embed_tokens, idx); /* (B,T,C) */
    return model_dropout(g->config, g->drop, x);
}

/* The stage's layers: in is idx (B, T) on the first stage, else the previous stage's (B, T, C)
 * -> the last stage's logits (B, T, V), with tp this rank's vocabulary slice (B, T, V/P), or the
 * other stages' hidden state (B, T, C) (under SP (B, T/P, C) from the embedding to the head).
 * Positions start at the cache's length and the attention goes through the cache when there is
 * one (a whole model), else at 0 */
static bt_tensor *llama_stage(struct model *m, bt_tensor *in, struct model_cache *cache) {
    struct llama *g = m->impl;
    const struct model_config *c = g->config;
    bt_tensor *x = model_config_is_first_stage(c) ? embed(g, in) : in;
    for (int64_t l = 0; l < g->n_layers; l++)
        x = layer_forward(c, g->layers[l], x, cache, g->layer_begin + l);
    if (!model_config_is_last_stage(c)) return x;
    x = model_rmsnorm(c, g->norm, x);
    if (m->hidden_only && g->lm_head) return x;                                      /* (B, T, C) */
    if (g->lm_head_tp) return tp_column_linear_forward(g->lm_head_tp, x);            /* (B,T,V/P) */
    if (g->embed_tokens_tp) return tp_vocab_embedding_attend(g->embed_tokens_tp, x); /* same */
    return nn_linear_forward(g->lm_head, x);                                         /* (B,T,V) */
}

/* in checked by model_stage_forward */
static bt_tensor *llama_forward(struct model *m, bt_tensor *in) {
    return llama_stage(m, in, NULL);
}

/* with tp the vocabulary slices are gathered: every rank gets the full (batch, n, V). Not under
 * SP: generation's chunks (one token at a time) do not split over the ranks. */
bt_tensor *llama_forward_cached(struct model *m, struct model_cache *c, bt_tensor *idx) {
    if (model_config_is_pipelined(&m->config)) return model_whole_only(m, "forward_cached");
    if (model_sequence_parallel(&m->config)) {
        bt_error("llama: parallel.sequence_parallel does not support the cached forward (build "
                 "the model without it to generate)");
        return NULL;
    }
    bt_tensor *logits = llama_stage(m, idx, c);
    if (model_tp_size(&m->config) == 1 || !logits) return logits;
    return tp_gather(logits, m->config.tp_group, -1);
}

/* ---- building ---- */

/* Bias-free linears attached to parent: NULL (the child freed, the message kept) on failure */
static struct nn_linear *attach_linear(struct nn_module *parent, const char *name, int64_t in,
                                       int64_t out) {
    return model_attach(parent, nn_linear_create(name, in, out, false, NULL));
}

static struct tp_column_linear *attach_column(struct nn_module *parent, const char *name,
                                              int64_t in, int64_t out, struct comm *tp) {
    return model_attach(parent, tp_column_linear_create(name, in, out, false, tp, NULL));
}

static struct tp_row_linear *attach_row(struct nn_module *parent, const char *name, int64_t in,
                                        int64_t out, struct comm *tp) {
    return model_attach(parent, tp_row_linear_create(name, in, out, false, tp, NULL));
}

/* `tp` is the group when P > 1, else NULL: the layers are then the single-rank ones. Created with
 * zeros (NULL rng): llama_build initialises them, or model_create loads them. Each chain stops at
 * the first failure, keeping its message. */
static struct llama_attention *attention_create(const struct model_config *c, struct comm *tp) {
    struct llama_attention *a = nn_module_new(sizeof(*a), "self_attn");
    if (!a) return NULL;
    int64_t C = c->n_embd, hs = C / c->n_head, NH = c->n_head, NKV = c->n_kv_head;
    int P = tp ? comm_size(tp) : 1;
    a->n_head = NH / P;
    a->n_kv_head = NKV / P;
    a->rope_theta = c->rope_theta;
    struct nn_module *p = &a->base;
    bool made = tp ? (a->q_proj_tp = attach_column(p, "q_proj", C, NH * hs, tp)) &&
                         (a->k_proj_tp = attach_column(p, "k_proj", C, NKV * hs, tp)) &&
                         (a->v_proj_tp = attach_column(p, "v_proj", C, NKV * hs, tp)) &&
                         (a->o_proj_tp = attach_row(p, "o_proj", NH * hs, C, tp))
                   : (a->q_proj = attach_linear(p, "q_proj", C, NH * hs)) &&
                         (a->k_proj = attach_linear(p, "k_proj", C, NKV * hs)) &&
                         (a->v_proj = attach_linear(p, "v_proj", C, NKV * hs)) &&
                         (a->o_proj = attach_linear(p, "o_proj", NH * hs, C));
    a->resid_dropout =
        made ? model_attach(p, nn_dropout_create("resid_dropout", c->dropout)) : NULL;
    if (!a->resid_dropout) {
        nn_module_free(&a->base);
        return NULL;
    }
    if (tp) /* attention_forward runs their one input collective */
        a->q_proj_tp->input_is_gathered = a->k_proj_tp->input_is_gathered =
            a->v_proj_tp->input_is_gathered = true;
    return a;
}

static struct llama_mlp *mlp_create(const struct model_config *c, struct comm *tp) {
    struct llama_mlp *mlp = nn_module_new(sizeof(*mlp), "mlp");
    if (!mlp) return NULL;
    int64_t C = c->n_embd, F = c->ffn_hidden;
    struct nn_module *p = &mlp->base;
    bool made = tp ? (mlp->gate_proj_tp = attach_column(p, "gate_proj", C, F, tp)) &&
                         (mlp->up_proj_tp = attach_column(p, "up_proj", C, F, tp)) &&
                         (mlp->down_proj_tp = attach_row(p, "down_proj", F, C, tp))
                   : (mlp->gate_proj = attach_linear(p, "gate_proj", C, F)) &&
                         (mlp->up_proj = attach_linear(p, "up_proj", C, F)) &&
                         (mlp->down_proj = attach_linear(p, "down_proj", F, C));
    mlp->dropout = made ? model_attach(p, nn_dropout_create("dropout", c->dropout)) : NULL;
    if (!mlp->dropout) {
        nn_module_free(&mlp->base);
        return NULL;
    }
    if (tp) /* mlp_forward runs their one input collective */
        mlp->gate_proj_tp->input_is_gathered = mlp->up_proj_tp->input_is_gathered = true;
    return mlp;
}

static struct llama_layer *layer_create(const struct model_config *c, int64_t index,
                                        struct comm *tp) {
    char name[32];
    snprintf(name, sizeof name, "%lld", (long long)index);
    struct llama_layer *layer = nn_module_new(sizeof(*layer), name);
    if (!layer) return NULL;
    int64_t C = c->n_embd;
    layer->self_attn = model_attach(&layer->base, attention_create(c, tp));
    layer->mlp = layer->self_attn ? model_attach(&layer->base, mlp_create(c, tp)) : NULL;
    layer->input_layernorm =
        layer->mlp
            ? model_attach(&layer->base, nn_rmsnorm_create("input_layernorm", C, c->norm_eps))
            : NULL;
    layer->post_attention_layernorm =
        layer->input_layernorm
            ? model_attach(&layer->base,
                           nn_rmsnorm_create("post_attention_layernorm", C, c->norm_eps))
            : NULL;
    if (!layer->post_attention_layernorm) {
        nn_module_free(&layer->base);
        return NULL;
    }
    return layer;
}

/* Sequence parallelism: the embedding (and the tied head's attend) and every tp linear take or
 * give this rank's sequence slice along dim 1 */
static void set_sequence_parallel(struct llama *g) {
    if (g->embed_tokens_tp) g->embed_tokens_tp->sequence_parallel = true;
    if (g->lm_head_tp) g->lm_head_tp->sequence_parallel = true;
    for (int64_t l = 0; l < g->n_layers; l++) {
        struct llama_attention *a = g->layers[l]->self_attn;
        struct llama_mlp *mlp = g->layers[l]->mlp;
        a->q_proj_tp->sequence_parallel = a->k_proj_tp->sequence_parallel = true;
        a->v_proj_tp->sequence_parallel = a->o_proj_tp->sequence_parallel = true;
        mlp->gate_proj_tp->sequence_parallel = mlp->up_proj_tp->sequence_parallel = true;
        mlp->down_proj_tp->sequence_parallel = true;
    }
}

/* model.embed_tokens: the vocab-parallel embedding with tp, else the single-rank one */
static bool attach_embed_tokens(struct llama *g, struct nn_module *body, struct comm *tp) {
    int64_t V = g->config->vocab_size, C = g->config->n_embd;
    if (tp)
        return (g->embed_tokens_tp =
                    model_attach(body, tp_vocab_embedding_create("embed_tokens", V, C, tp, NULL)));
    return (g->embed_tokens = model_attach(body, nn_embedding_create("embed_tokens", V, C, NULL)));
}

/* norm and the LM head of the last stage. tied: with tp the embedding's attend is the head, no
 * module of its own (as the tied single-rank model lists lm_head.weight under
 * model.embed_tokens.weight only); without, lm_head's weight is the embedding's (on a later stage
 * than 0, the stage's copy of it) */
static bt_status attach_head(struct model *m, struct nn_module *body, struct comm *tp) {
    struct llama *g = m->impl;
    const struct model_config *c = g->config;
    int64_t V = c->vocab_size, C = c->n_embd;
    g->norm = model_attach(body, nn_rmsnorm_create("norm", C, c->norm_eps));
    if (!g->norm) return BT_ERR;
    if (tp) {
        if (!c->tie_embeddings &&
            !(g->lm_head_tp =
                  model_attach(m->root, tp_column_linear_create("lm_head", C, V, false, tp, NULL))))
            return BT_ERR;
        return BT_OK;
    }
    g->lm_head = model_attach(m->root, nn_linear_create("lm_head", C, V, false, NULL));
    if (!g->lm_head) return BT_ERR;
    m->head = g->lm_head;
    if (c->tie_embeddings)
        return nn_module_set_parameter(&g->lm_head->base, "weight", g->embed_tokens->weight);
    return BT_OK;
}

/* The tree, in HF's registration order (so parameters list in its order):
 *   model.{embed_tokens, layers.<i>.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj,
 *   input_layernorm, post_attention_layernorm}, norm}, lm_head
 * A pipeline stage builds its part of it: embed_tokens and drop on the first stage,
 * layers.<begin..end-1>, norm and lm_head on the last stage (tied: with its copy of embed_tokens,
 * first in the tree as in the whole model's list). */
bt_status llama_build(struct model *m, struct bt_rng *rng) {
    const struct model_config *c = &m->config;
    int64_t begin = model_config_layer_begin(c), n_layers = model_config_layer_end(c) - begin;
    struct llama *g = calloc(1, sizeof(*g) + (size_t)n_layers * sizeof(g->layers[0]));
    if (!g) return bt_error("llama: out of memory for %lld layers", (long long)n_layers);
    m->impl = g;
    g->config = &m->config;
    g->layer_begin = begin;
    g->n_layers = n_layers;
    struct comm *tp = model_tp_size(c) > 1 ? c->tp_group : NULL;
    bool first = model_config_is_first_stage(c), last = model_config_is_last_stage(c);
    m->forward = llama_forward;
    m->root = nn_module_create("");
    if (!m->root) return BT_ERR;
    struct nn_module *body = model_attach(m->root, nn_module_create("model"));
    if (!body) return BT_ERR;
    if ((first || (last && c->tie_embeddings)) && !attach_embed_tokens(g, body, tp)) return BT_ERR;
    if (first && !(g->drop = model_attach(body, nn_dropout_create("drop", c->dropout))))
        return BT_ERR;
    struct nn_module *layers = model_attach(body, nn_module_create("layers"));
    if (!layers) return BT_ERR;
    for (int64_t l = 0; l < n_layers; l++)
        if (!(g->layers[l] = model_attach(layers, layer_create(c, begin + l, tp)))) return BT_ERR;
    if (last && attach_head(m, body, tp) != BT_OK) return BT_ERR;
    if (model_sequence_parallel(c)) set_sequence_parallel(g);
    if (!model_config_is_whole(c)) return BT_OK; /* model_create loads the whole model's weights */
    /* HF's _init_weights with initializer_range 0.02: Linear and Embedding weights N(0, 0.02),
     * RMSNorm weights 1. That is GPT-2's scheme with no residual projection flagged. */
    return nn_init_gpt2(m->root, rng, (int)c->n_layer);
}
