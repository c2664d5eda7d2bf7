/* GPT-2 (nanoGPT's model.py): learned token and position embeddings, pre-LayerNorm blocks of
 * causal self-attention and a GELU MLP, a final LayerNorm and an LM head tied to the token
 * embedding by default. Parameter names are nanoGPT's/Hugging Face's (transformer.h.0.attn...).
 * Shapes: B batch, T time, C n_embd, NH heads, hs = C / NH, V vocab, F ffn_hidden.
 * With a tp group of P > 1 ranks (Megatron-LM's layout, parallel/tp.h, docs/tp.md) each rank holds
 * NH/P heads of c_attn (column-parallel, q/k/v blocks) and the matching columns of attn.c_proj
 * (row-parallel), F/P of mlp.c_fc (column) and mlp.c_proj (row), V/P rows of wte (vocab-parallel,
 * also the tied LM head) and the loss is tp_cross_entropy; wpe and the LayerNorms are replicated.
 * Exactly one of each layer's single-rank and `_tp` pointers is set. With sequence parallelism
 * the residual stream is this rank's slice (B, T/P, C) of the sequence (models/model_internal.h):
 * the norms, dropout and adds run on it, the column layers all-gather it and the row layers and
 * the embedding reduce-scatter back to it. A pipeline stage (model_config.pp_stages > 1) holds
 * blocks [pp_layer_begin, pp_layer_end) under their global names, wte, wpe and drop on stage 0,
 * ln_f and lm_head on the last stage (tied: a copy of wte there, whose weight the head uses). */
#include <stdio.h>
#include <stdlib.h>

#include "models/model_internal.h"
#include "parallel/tp.h"

struct gpt_attention {
    struct nn_module base;
    struct nn_linear *c_attn;           /* (3C, C): q, k, v side by side */
    struct nn_linear *c_proj;           /* (C, C) */
    struct tp_column_linear *c_attn_tp; /* tp: (3C/P, C), this rank's q | k | v heads */
    struct tp_row_linear *c_proj_tp;    /* tp: (C, C/P), the columns of those heads */
    struct nn_dropout *resid_dropout;   /* on the output projection */
    int64_t n_head;                     /* this rank's: NH, or NH/P with tp */
    int64_t head_size;                  /* hs */
};

struct gpt_mlp {
    struct nn_module base;
    struct nn_linear *c_fc;           /* (F, C) */
    struct nn_linear *c_proj;         /* (C, F) */
    struct tp_column_linear *c_fc_tp; /* tp: (F/P, C) */
    struct tp_row_linear *c_proj_tp;  /* tp: (C, F/P) */
    struct nn_dropout *dropout;
    bt_gelu_kind gelu;
};

struct gpt_block {
    struct nn_module base;
    struct nn_layernorm *ln_1;
    struct gpt_attention *attn;
    struct nn_layernorm *ln_2;
    struct gpt_mlp *mlp;
};

/* The pointers of modules a pipeline stage does not hold are NULL: wte (stage 0, and the last
 * stage when tied), wpe and drop (stage 0), ln_f and the head (the last stage). */
struct gpt {
    const struct model_config *config; /* the model's: sequence parallelism, the tp group */
    struct nn_embedding *wte;          /* (V, C) */
    struct tp_vocab_embedding *wte_tp; /* tp: (V/P, C) */
    struct nn_embedding *wpe;          /* (block_size, C) */
    struct nn_dropout *drop;
    struct nn_layernorm *ln_f;
    struct nn_linear *lm_head;           /* (V, C), weight = wte's when tied */
    struct tp_column_linear *lm_head_tp; /* tp, untied: (V/P, C); tied tp uses wte_tp's attend */
    int64_t layer_begin, n_blocks;       /* this stage's blocks: h.<layer_begin + i> */
    struct gpt_block *h[];               /* n_blocks blocks */
};

/* ---- forward ---- */

/* x (B, T, C) -> (B, T, C): causal self-attention, dropout on the projected output. With a
 * cache, x holds positions len..len+T-1 and attends to the cached ones too (model_cache_attend). */
static bt_tensor *attention_forward(const struct model_config *c, struct gpt_attention *a,
                                    bt_tensor *x, struct model_cache *cache, int64_t layer) {
    if (!x) return NULL; /* an earlier op failed: keep its message */
    bt_scope_push(a->base.path);
    /* with tp, NH is this rank's NH/P heads and "3C" below its 3C/P features; under SP x is
     * (B, T/P, C) and c_attn all-gathers it: T is the whole sequence from here to c_proj */
    bt_tensor *qkv = a->c_attn_tp ? tp_column_linear_forward(a->c_attn_tp, x)
                                  : nn_linear_forward(a->c_attn, x); /* (B, T, 3C) */
    if (!qkv) {
        bt_scope_pop();
        return NULL;
    }
    int64_t B = qkv->shape[0], T = qkv->shape[1], NH = a->n_head, hs = a->head_size;
    bt_tensor *y;
    if (!cache) { /* q, k, v read in place from qkv; (B, T, NH * hs), heads side by side */
        y = bt_attention_qkv(qkv, NH, NH, true, 0.0); /* scale 1/sqrt(hs) */
    } else {
        /* (B, T, 3*NH, hs) split into q, k, v, each (B, T, NH, hs): views, no copy */
        bt_tensor *heads[3] = {NULL, NULL, NULL};
        bt_tensor *qkv_heads = bt_view(qkv, BT_SHAPE(B, T, 3 * NH, hs));
        if (qkv_heads) bt_split(qkv_heads, (int64_t[]){NH, NH, NH}, 3, 2, heads);
        /* (B, T, NH, hs) -> (B, NH, T, hs) */
        bt_tensor *q = bt_transpose(heads[0], 1, 2);
        bt_tensor *k = bt_transpose(heads[1], 1, 2);
        bt_tensor *v = bt_transpose(heads[2], 1, 2);
        y = model_cache_attend(cache, layer, q, k, v); /* (B, NH, T, hs) */
        y = bt_reshape(bt_transpose(y, 1, 2), BT_SHAPE(B, T, NH * hs));
    }
    y = a->c_proj_tp ? tp_row_linear_forward(a->c_proj_tp, y)
                     : nn_linear_forward(a->c_proj, y); /* (B, T, C), replicated with tp (SP:
                                                         * this rank's (B, T/P, C)) */
    y = model_dropout(c, a->resid_dropout, y);
    bt_scope_pop();
    return y;
}

/* x (B, T, C) -> (B, T, C): c_proj(gelu(c_fc(x))), then dropout */
static bt_tensor *mlp_forward(const struct model_config *c, struct gpt_mlp *mlp, bt_tensor *x) {
    bt_scope_push(mlp->base.path);
    bt_tensor *h;                  /* (B, T, F), F/P with tp */
    if (mlp->gelu == BT_GELU_TANH) /* one op: the GELU is the GEMM's epilogue */
        h = mlp->c_fc_tp ? tp_column_linear_gelu_forward(mlp->c_fc_tp, x)
                         : nn_linear_gelu_forward(mlp->c_fc, x);
    else
        h = bt_gelu(mlp->c_fc_tp ? tp_column_linear_forward(mlp->c_fc_tp, x)
                                 : nn_linear_forward(mlp->c_fc, x),
                    mlp->gelu);
    h = mlp->c_proj_tp ? tp_row_linear_forward(mlp->c_proj_tp, h)
                       : nn_linear_forward(mlp->c_proj, h); /* (B, T, C) */
    h = model_dropout(c, mlp->dropout, h);
    bt_scope_pop();
    return h;
}

/* x (B, T, C) -> (B, T, C): x + attn(ln_1(x)), then + mlp(ln_2(x)) */
static bt_tensor *block_forward(const struct model_config *c, struct gpt_block *blk, bt_tensor *x,
                                struct model_cache *cache, int64_t layer) {
    bt_scope_push(blk->base.path);
    x = bt_add(x, attention_forward(c, blk->attn, model_layernorm(c, blk->ln_1, x), cache, layer));
    x = bt_add(x, mlp_forward(c, blk->mlp, model_layernorm(c, blk->ln_2, x)));
    bt_scope_pop();
    return x;
}

/* idx (B, T) at positions pos0..pos0+T-1 -> drop(wte[idx] + wpe[pos]) (B, T, C); under SP this
 * rank's positions (B, T/P, C) */
static bt_tensor *embed(struct gpt *g, bt_tensor *idx, int64_t pos0) {
    const struct model_config *c = g->config;
    /* under SP this rank embeds and carries positions t0..t0+T/P-1 of the T */
    int64_t T = idx->shape[1], t0 = model_sp_offset(c, T);
    int64_t Tl = model_sequence_parallel(c) ? T / model_tp_size(c) : T;
    bt_tensor *pos = bt_empty(BT_SHAPE(Tl), BT_I64, bt_cpu()); /* (Tl): positions */
    if (!pos) return NULL;
    for (int64_t t = 0; t < Tl; t++)
        ((int64_t *)bt_data(pos))[t] = pos0 + t0 + t;
    pos = bt_to_device(pos, g->wpe->weight->storage->device); /* where the model is */
    bt_tensor *tok_emb = g->wte_tp ? tp_vocab_embedding_forward(g->wte_tp, idx)
                                   : nn_embedding_forward(g->wte, idx); /* (B, Tl, C) */
    bt_scope_push(g->wpe->base.path);
    bt_tensor *pos_emb = bt_embedding(model_sp_param(c, g->wpe->weight), pos); /* (Tl, C) */
    bt_scope_pop();
    return model_dropout(c, g->drop, bt_add(tok_emb, pos_emb));
}

/* The stage's layers: in is idx (B, T) at positions pos0..pos0+T-1 on the first stage, else the
 * previous stage's (B, T, C) -> the last stage's logits (B, T, V), with tp this rank's vocabulary
 * slice (B, T, V/P), or the other stages' hidden state (B, T, C) (under SP (B, T/P, C)); the
 * attention goes through the cache when there is one (a whole model; pos0 is then its length) */
static bt_tensor *gpt_stage(struct model *m, bt_tensor *in, int64_t pos0,
                            struct model_cache *cache) {
    struct gpt *g = m->impl;
    const struct model_config *c = g->config;
    bt_tensor *x = model_config_is_first_stage(c) ? embed(g, in, pos0) : in;
    for (int64_t l = 0; l < g->n_blocks; l++)
        x = block_forward(c, g->h[l], x, cache, g->layer_begin + l);
    if (!model_config_is_last_stage(c)) return x;
    x = model_layernorm(c, g->ln_f, x);
    if (m->hidden_only && g->lm_head) return x;                           /* (B, T, C) */
    if (g->lm_head_tp) return tp_column_linear_forward(g->lm_head_tp, x); /* (B, T, V/P) */
    if (g->wte_tp) return tp_vocab_embedding_attend(g->wte_tp, x);        /* (B, T, V/P) */
    return nn_linear_forward(g->lm_head, x);                              /* (B, T, V) */
}

/* in checked by model_stage_forward */
static bt_tensor *gpt_forward(struct model *m, bt_tensor *in) {
    return gpt_stage(m, in, 0, NULL);
}

/* with tp the vocabulary slices are gathered: every rank gets the full (batch, n, V) */
bt_tensor *gpt_forward_cached(struct model *m, struct model_cache *c, bt_tensor *idx) {
    if (model_config_is_pipelined(&m->config)) return model_whole_only(m, "forward_cached");
    if (model_sequence_parallel(&m->config)) {
        bt_error("gpt: parallel.sequence_parallel does not support the cached forward (build the "
                 "model without it to generate)");
        return NULL;
    }
    bt_tensor *logits = gpt_stage(m, idx, model_cache_len(c), c);
    if (model_tp_size(&m->config) == 1 || !logits) return logits;
    return tp_gather(logits, m->config.tp_group, -1);
}

/* ---- building ---- */

/* `tp` is the group when P > 1, else NULL: the layers are then the single-rank ones. Created with
 * zeros (NULL rng): gpt_build initialises them, or model_create loads them. */
static struct gpt_attention *attention_create(const struct model_config *c, struct comm *tp) {
    struct gpt_attention *a = nn_module_new(sizeof(*a), "attn");
    if (!a) return NULL;
    int64_t C = c->n_embd;
    a->head_size = C / c->n_head;
    a->n_head = tp ? c->n_head / comm_size(tp) : c->n_head;
    bool made;
    if (tp) {
        a->c_attn_tp = model_attach(
            &a->base,
            tp_column_linear_create_fused("c_attn", C, 3, (int64_t[]){C, C, C}, c->bias, tp, NULL));
        a->c_proj_tp =
            a->c_attn_tp
                ? model_attach(&a->base, tp_row_linear_create("c_proj", C, C, c->bias, tp, NULL))
                : NULL;
        made = a->c_proj_tp != NULL;
    } else {
        a->c_attn = model_attach(&a->base, nn_linear_create("c_attn", C, 3 * C, c->bias, NULL));
        a->c_proj = a->c_attn
                        ? model_attach(&a->base, nn_linear_create("c_proj", C, C, c->bias, NULL))
                        : NULL;
        made = a->c_proj != NULL;
        if (made) a->c_proj->residual_projection = true;
    }
    a->resid_dropout =
        made ? model_attach(&a->base, nn_dropout_create("resid_dropout", c->dropout)) : NULL;
    if (!a->resid_dropout) {
        nn_module_free(&a->base);
        return NULL;
    }
    return a;
}

static struct gpt_mlp *mlp_create(const struct model_config *c, struct comm *tp) {
    struct gpt_mlp *mlp = nn_module_new(sizeof(*mlp), "mlp");
    if (!mlp) return NULL;
    mlp->gelu = c->gelu;
    int64_t C = c->n_embd, F = c->ffn_hidden;
    bool made;
    if (tp) {
        mlp->c_fc_tp =
            model_attach(&mlp->base, tp_column_linear_create("c_fc", C, F, c->bias, tp, NULL));
        mlp->c_proj_tp =
            mlp->c_fc_tp
                ? model_attach(&mlp->base, tp_row_linear_create("c_proj", F, C, c->bias, tp, NULL))
                : NULL;
        made = mlp->c_proj_tp != NULL;
    } else {
        mlp->c_fc = model_attach(&mlp->base, nn_linear_create("c_fc", C, F, c->bias, NULL));
        mlp->c_proj =
            mlp->c_fc ? model_attach(&mlp->base, nn_linear_create("c_proj", F, C, c->bias, NULL))
                      : NULL;
        made = mlp->c_proj != NULL;
        if (made) mlp->c_proj->residual_projection = true;
    }
    mlp->dropout = made ? model_attach(&mlp->base, nn_dropout_create("dropout", c->dropout)) : NULL;
    if (!mlp->dropout) {
        nn_module_free(&mlp->base);
        return NULL;
    }
    return mlp;
}

static struct gpt_block *block_create(const struct model_config *c, int64_t index,
                                      struct comm *tp) {
    char name[32];
    snprintf(name, sizeof name, "%lld", (long long)index);
    struct gpt_block *blk = nn_module_new(sizeof(*blk), name);
    if (!blk) return NULL;
    double eps = c->norm_eps;
    blk->ln_1 = model_attach(&blk->base, nn_layernorm_create("ln_1", c->n_embd, c->bias, eps));
    blk->attn = blk->ln_1 ? model_attach(&blk->base, attention_create(c, tp)) : NULL;
    blk->ln_2 = blk->attn
                    ? model_attach(&blk->base, nn_layernorm_create("ln_2", c->n_embd, c->bias, eps))
                    : NULL;
    blk->mlp = blk->ln_2 ? model_attach(&blk->base, mlp_create(c, tp)) : NULL;
    if (!blk->mlp) {
        nn_module_free(&blk->base);
        return NULL;
    }
    return blk;
}

/* Sequence parallelism: the embedding (and the tied head's attend) and every tp linear take or
 * give this rank's sequence slice along dim 1 */
static void set_sequence_parallel(struct gpt *g) {
    if (g->wte_tp) g->wte_tp->sequence_parallel = true;
    if (g->lm_head_tp) g->lm_head_tp->sequence_parallel = true;
    for (int64_t l = 0; l < g->n_blocks; l++) {
        struct gpt_block *b = g->h[l];
        b->attn->c_attn_tp->sequence_parallel = b->attn->c_proj_tp->sequence_parallel = true;
        b->mlp->c_fc_tp->sequence_parallel = b->mlp->c_proj_tp->sequence_parallel = true;
    }
}

/* transformer.wte: the vocab-parallel embedding with tp, else the single-rank one */
static bool attach_wte(struct gpt *g, struct nn_module *tr, struct comm *tp) {
    const struct model_config *c = g->config;
    if (tp)
        return (g->wte_tp = model_attach(
                    tr, tp_vocab_embedding_create("wte", c->vocab_size, c->n_embd, tp, NULL)));
    return (g->wte = model_attach(tr, nn_embedding_create("wte", c->vocab_size, c->n_embd, NULL)));
}

/* ln_f and the LM head of the last stage. tied: with tp wte_tp's attend is the head, no module of
 * its own (as the tied single-rank model lists lm_head.weight under transformer.wte.weight only);
 * without, lm_head's weight is wte's (on a later stage than 0, the stage's copy of it) */
static bt_status attach_head(struct model *m, struct nn_module *tr, struct comm *tp) {
    struct gpt *g = m->impl;
    const struct model_config *c = g->config;
    g->ln_f = model_attach(tr, nn_layernorm_create("ln_f", c->n_embd, c->bias, c->norm_eps));
    if (!g->ln_f) return BT_ERR;
    if (tp) {
        if (!c->tie_embeddings &&
            !(g->lm_head_tp =
                  model_attach(m->root, tp_column_linear_create("lm_head", c->n_embd, c->vocab_size,
                                                                false, tp, NULL))))
            return BT_ERR;
        return BT_OK;
    }
    g->lm_head =
        model_attach(m->root, nn_linear_create("lm_head", c->n_embd, c->vocab_size, false, NULL));
    if (!g->lm_head) return BT_ERR;
    m->head = g->lm_head;
    if (c->tie_embeddings)
        return nn_module_set_parameter(&g->lm_head->base, "weight", g->wte->weight);
    return BT_OK;
}

/* The tree, in nanoGPT's registration order (so parameters list in its order):
 *   transformer.{wte, wpe, drop, h.<i>.{ln_1, attn.{c_attn, c_proj}, ln_2, mlp.{c_fc, c_proj}},
 *   ln_f}, lm_head
 * A pipeline stage builds its part of it: wte, wpe and drop on the first stage, h.<begin..end-1>,
 * ln_f and lm_head on the last stage (tied: with its copy of wte, first in the tree as in the
 * whole model's list). */
bt_status gpt_build(struct model *m, struct bt_rng *rng) {
    const struct model_config *c = &m->config;
    int64_t begin = model_config_layer_begin(c), n_blocks = model_config_layer_end(c) - begin;
    struct gpt *g = calloc(1, sizeof(*g) + (size_t)n_blocks * sizeof(g->h[0]));
    if (!g) return bt_error("gpt: out of memory for %lld layers", (long long)n_blocks);
    m->impl = g;
    g->config = &m->config;
    g->layer_begin = begin;
    g->n_blocks = n_blocks;
    struct comm *tp = model_tp_size(c) > 1 ? c->tp_group : NULL;
    bool first = model_config_is_first_stage(c), last = model_config_is_last_stage(c);
    m->forward = gpt_forward;
    m->root = nn_module_create("");
    if (!m->root) return BT_ERR;
    struct nn_module *tr = model_attach(m->root, nn_module_create("transformer"));
    if (!tr) return BT_ERR;
    if ((first || (last && c->tie_embeddings)) && !attach_wte(g, tr, tp)) return BT_ERR;
    if (first) {
        g->wpe = model_attach(tr, nn_embedding_create("wpe", c->block_size, c->n_embd, NULL));
        g->drop = g->wpe ? model_attach(tr, nn_dropout_create("drop", c->dropout)) : NULL;
        if (!g->drop) return BT_ERR;
    }
    struct nn_module *h = model_attach(tr, nn_module_create("h"));
    if (!h) return BT_ERR;
    for (int64_t l = 0; l < n_blocks; l++)
        if (!(g->h[l] = model_attach(h, block_create(c, begin + l, tp)))) return BT_ERR;
    if (last && attach_head(m, tr, tp) != BT_OK) return BT_ERR;
    if (model_sequence_parallel(c)) set_sequence_parallel(g);
    if (!model_config_is_whole(c)) return BT_OK; /* model_create loads the whole model's weights */
    /* N(0, 0.02), zero biases, c_proj weights N(0, 0.02/sqrt(2*n_layer)), norms 1 and 0. Tied
     * before init, as nanoGPT does: the shared matrix keeps the last draw (lm_head's). */
    return nn_init_gpt2(m->root, rng, (int)c->n_layer);
}
