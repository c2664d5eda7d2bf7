/* GPT-2 (nanoGPT's model.py): learned token and position embeddings, pre-LayerNorm blocks of
 * causal self-attention and a GELU MLP, a final LayerNorm and an LM head tied to the token
 * embedding by default. Parameter names are nanoGPT's/Hugging Face's (transformer.h.0.attn...).
 * Shapes: B batch, T time, C n_embd, NH heads, hs = C / NH, V vocab, F ffn_hidden. */
#include <stdio.h>
#include <stdlib.h>

#include "models/model_internal.h"

struct gpt_attention {
    struct nn_module base;
    struct nn_linear *c_attn;         /* (3C, C): q, k, v side by side */
    struct nn_linear *c_proj;         /* (C, C) */
    struct nn_dropout *resid_dropout; /* on the output projection */
    int64_t n_head;
};

struct gpt_mlp {
    struct nn_module base;
    struct nn_linear *c_fc;   /* (F, C) */
    struct nn_linear *c_proj; /* (C, F) */
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

struct gpt {
    struct nn_embedding *wte; /* (V, C) */
    struct nn_embedding *wpe; /* (block_size, C) */
    struct nn_dropout *drop;
    struct nn_layernorm *ln_f;
    struct nn_linear *lm_head; /* (V, C), weight = wte's when tied */
    int64_t n_layer;
    struct gpt_block *h[]; /* n_layer blocks */
};

/* ---- forward ---- */

/* x (B, T, C) -> (B, T, C): causal self-attention, dropout on the projected output. With a
 * cache, x holds positions len..len+T-1 and attends to the cached ones too (model_cache_attend). */
static bt_tensor *attention_forward(struct gpt_attention *a, bt_tensor *x,
                                    struct model_cache *cache, int64_t layer) {
    if (!x) return NULL; /* an earlier op failed: keep its message */
    bt_scope_push(a->base.path);
    int64_t B = x->shape[0], T = x->shape[1], C = x->shape[2], NH = a->n_head, hs = C / NH;
    bt_tensor *qkv = nn_linear_forward(a->c_attn, x); /* (B, T, 3C) */
    /* (B, T, 3*NH, hs) split into q, k, v, each (B, T, NH, hs): views, no copy */
    bt_tensor *heads[3] = {NULL, NULL, NULL};
    bt_tensor *qkv_heads = bt_view(qkv, BT_SHAPE(B, T, 3 * NH, hs));
    if (qkv_heads) bt_split(qkv_heads, (int64_t[]){NH, NH, NH}, 3, 2, heads);
    /* (B, T, NH, hs) -> (B, NH, T, hs) */
    bt_tensor *q = bt_transpose(heads[0], 1, 2);
    bt_tensor *k = bt_transpose(heads[1], 1, 2);
    bt_tensor *v = bt_transpose(heads[2], 1, 2);
    bt_tensor *y = cache ? model_cache_attend(cache, layer, q, k, v)
                         : bt_attention(q, k, v, true, 0.0);  /* (B, NH, T, hs), scale 1/sqrt(hs) */
    y = bt_reshape(bt_transpose(y, 1, 2), BT_SHAPE(B, T, C)); /* heads side by side again */
    y = nn_linear_forward(a->c_proj, y);                      /* (B, T, C) */
    y = nn_dropout_forward(a->resid_dropout, y);
    bt_scope_pop();
    return y;
}

/* x (B, T, C) -> (B, T, C): c_proj(gelu(c_fc(x))), then dropout */
static bt_tensor *mlp_forward(struct gpt_mlp *mlp, bt_tensor *x) {
    bt_scope_push(mlp->base.path);
    bt_tensor *h = nn_linear_forward(mlp->c_fc, x); /* (B, T, F) */
    h = bt_gelu(h, mlp->gelu);
    h = nn_linear_forward(mlp->c_proj, h); /* (B, T, C) */
    h = nn_dropout_forward(mlp->dropout, h);
    bt_scope_pop();
    return h;
}

/* x (B, T, C) -> (B, T, C): x + attn(ln_1(x)), then + mlp(ln_2(x)) */
static bt_tensor *block_forward(struct gpt_block *blk, bt_tensor *x, struct model_cache *cache,
                                int64_t layer) {
    bt_scope_push(blk->base.path);
    x = bt_add(x, attention_forward(blk->attn, nn_layernorm_forward(blk->ln_1, x), cache, layer));
    x = bt_add(x, mlp_forward(blk->mlp, nn_layernorm_forward(blk->ln_2, x)));
    bt_scope_pop();
    return x;
}

/* idx (B, T) at positions pos0..pos0+T-1, checked by the caller -> logits (B, T, V); the
 * attention goes through the cache when there is one (pos0 is then its length) */
static bt_tensor *gpt_logits(struct model *m, bt_tensor *idx, int64_t pos0,
                             struct model_cache *cache) {
    struct gpt *g = m->impl;
    int64_t T = idx->shape[1];
    bt_tensor *pos = bt_empty(BT_SHAPE(T), BT_I64, bt_cpu()); /* (T): pos0..pos0+T-1 */
    if (!pos) return NULL;
    for (int64_t t = 0; t < T; t++)
        ((int64_t *)bt_data(pos))[t] = pos0 + t;
    bt_tensor *tok_emb = nn_embedding_forward(g->wte, idx); /* (B, T, C) */
    bt_tensor *pos_emb = nn_embedding_forward(g->wpe, pos); /* (T, C), broadcast over B */
    bt_tensor *x = nn_dropout_forward(g->drop, bt_add(tok_emb, pos_emb));
    for (int64_t l = 0; l < g->n_layer; l++)
        x = block_forward(g->h[l], x, cache, l);
    x = nn_layernorm_forward(g->ln_f, x);
    return nn_linear_forward(g->lm_head, x); /* (B, T, V) */
}

/* idx (B, T) checked by model_forward -> logits (B, T, V), loss () */
static bt_tensor *gpt_forward(struct model *m, bt_tensor *idx, bt_tensor *targets,
                              bt_tensor **logits) {
    return model_finish_forward(gpt_logits(m, idx, 0, NULL), targets, logits);
}

bt_tensor *gpt_forward_cached(struct model *m, struct model_cache *c, bt_tensor *idx) {
    return gpt_logits(m, idx, model_cache_len(c), c);
}

/* ---- building ---- */

static struct gpt_attention *attention_create(const struct model_config *c) {
    struct gpt_attention *a = nn_module_new(sizeof(*a), "attn");
    if (!a) return NULL;
    a->n_head = c->n_head;
    a->c_attn =
        model_attach(&a->base, nn_linear_create("c_attn", c->n_embd, 3 * c->n_embd, c->bias, NULL));
    a->c_proj =
        model_attach(&a->base, nn_linear_create("c_proj", c->n_embd, c->n_embd, c->bias, NULL));
    a->resid_dropout = model_attach(&a->base, nn_dropout_create("resid_dropout", c->dropout));
    if (!a->c_attn || !a->c_proj || !a->resid_dropout) {
        nn_module_free(&a->base);
        return NULL;
    }
    a->c_proj->residual_projection = true;
    return a;
}

static struct gpt_mlp *mlp_create(const struct model_config *c) {
    struct gpt_mlp *mlp = nn_module_new(sizeof(*mlp), "mlp");
    if (!mlp) return NULL;
    mlp->gelu = c->gelu;
    mlp->c_fc =
        model_attach(&mlp->base, nn_linear_create("c_fc", c->n_embd, c->ffn_hidden, c->bias, NULL));
    mlp->c_proj = model_attach(&mlp->base,
                               nn_linear_create("c_proj", c->ffn_hidden, c->n_embd, c->bias, NULL));
    mlp->dropout = model_attach(&mlp->base, nn_dropout_create("dropout", c->dropout));
    if (!mlp->c_fc || !mlp->c_proj || !mlp->dropout) {
        nn_module_free(&mlp->base);
        return NULL;
    }
    mlp->c_proj->residual_projection = true;
    return mlp;
}

static struct gpt_block *block_create(const struct model_config *c, int64_t index) {
    char name[32];
    snprintf(name, sizeof name, "%lld", (long long)index);
    struct gpt_block *blk = nn_module_new(sizeof(*blk), name);
    if (!blk) return NULL;
    double eps = c->norm_eps;
    blk->ln_1 = model_attach(&blk->base, nn_layernorm_create("ln_1", c->n_embd, c->bias, eps));
    blk->attn = blk->ln_1 ? model_attach(&blk->base, attention_create(c)) : NULL;
    blk->ln_2 = blk->attn
                    ? model_attach(&blk->base, nn_layernorm_create("ln_2", c->n_embd, c->bias, eps))
                    : NULL;
    blk->mlp = blk->ln_2 ? model_attach(&blk->base, mlp_create(c)) : NULL;
    if (!blk->mlp) {
        nn_module_free(&blk->base);
        return NULL;
    }
    return blk;
}

/* The tree, in nanoGPT's registration order (so parameters list in its order):
 *   transformer.{wte, wpe, drop, h.<i>.{ln_1, attn.{c_attn, c_proj}, ln_2, mlp.{c_fc, c_proj}},
 *   ln_f}, lm_head */
bt_status gpt_build(struct model *m, struct bt_rng *rng) {
    const struct model_config *c = &m->config;
    struct gpt *g = calloc(1, sizeof(*g) + (size_t)c->n_layer * sizeof(g->h[0]));
    if (!g) return bt_error("gpt: out of memory for %lld layers", (long long)c->n_layer);
    m->impl = g;
    g->n_layer = c->n_layer;
    m->forward = gpt_forward;
    m->root = nn_module_create("");
    if (!m->root) return BT_ERR;
    struct nn_module *tr = model_attach(m->root, nn_module_create("transformer"));
    if (!tr) return BT_ERR;
    g->wte = model_attach(tr, nn_embedding_create("wte", c->vocab_size, c->n_embd, NULL));
    g->wpe = model_attach(tr, nn_embedding_create("wpe", c->block_size, c->n_embd, NULL));
    g->drop = model_attach(tr, nn_dropout_create("drop", c->dropout));
    struct nn_module *h = model_attach(tr, nn_module_create("h"));
    if (!g->wte || !g->wpe || !g->drop || !h) return BT_ERR;
    for (int64_t l = 0; l < c->n_layer; l++)
        if (!(g->h[l] = model_attach(h, block_create(c, l)))) return BT_ERR;
    g->ln_f = model_attach(tr, nn_layernorm_create("ln_f", c->n_embd, c->bias, c->norm_eps));
    g->lm_head =
        model_attach(m->root, nn_linear_create("lm_head", c->n_embd, c->vocab_size, false, NULL));
    if (!g->ln_f || !g->lm_head) return BT_ERR;
    if (c->tie_embeddings &&
        nn_module_set_parameter(&g->lm_head->base, "weight", g->wte->weight) != BT_OK)
        return BT_ERR;
    /* N(0, 0.02), zero biases, c_proj weights N(0, 0.02/sqrt(2*n_layer)), norms 1 and 0. Tied
     * before init, as nanoGPT does: the shared matrix keeps the last draw (lm_head's). */
    return nn_init_gpt2(m->root, rng, (int)c->n_layer);
}
