/* LLaMA (Hugging Face's LlamaForCausalLM): token embedding, pre-RMSNorm blocks of causal
 * self-attention with rotary position embeddings and grouped-query heads, a SwiGLU MLP, a final
 * RMSNorm and an untied LM head by default; no biases. Parameter names are HF's
 * (model.layers.0.self_attn.q_proj.weight ...). Shapes: B batch, T time, C n_embd, NH query heads,
 * NKV key/value heads, hs = C / NH, V vocab, F ffn_hidden. */
#include <stdio.h>
#include <stdlib.h>

#include "models/model_internal.h"

struct llama_attention {
    struct nn_module base;
    struct nn_linear *q_proj; /* (NH*hs, C) */
    struct nn_linear *k_proj; /* (NKV*hs, C) */
    struct nn_linear *v_proj; /* (NKV*hs, C) */
    struct nn_linear *o_proj; /* (C, NH*hs) */
    struct nn_dropout *resid_dropout;
    int64_t n_head, n_kv_head;
    double rope_theta;
};

struct llama_mlp {
    struct nn_module base;
    struct nn_linear *gate_proj; /* (F, C) */
    struct nn_linear *up_proj;   /* (F, C) */
    struct nn_linear *down_proj; /* (C, F) */
    struct nn_dropout *dropout;
};

struct llama_layer {
    struct nn_module base;
    struct nn_rmsnorm *input_layernorm;
    struct llama_attention *self_attn;
    struct nn_rmsnorm *post_attention_layernorm;
    struct llama_mlp *mlp;
};

struct llama {
    struct nn_embedding *embed_tokens; /* (V, C) */
    struct nn_dropout *drop;
    struct nn_rmsnorm *norm;
    struct nn_linear *lm_head; /* (V, C), weight = embed_tokens' when tied */
    int64_t n_layer;
    struct llama_layer *layers[]; /* n_layer layers */
};

/* ---- forward ---- */

/* y (B, T, heads*hs) -> (B, heads, T, hs), a view */
static bt_tensor *split_heads(bt_tensor *y, int64_t heads) {
    if (!y) return NULL;
    int64_t B = y->shape[0], T = y->shape[1], hs = y->shape[2] / heads;
    return bt_transpose(bt_view(y, BT_SHAPE(B, T, heads, hs)), 1, 2);
}

/* x (B, T, C) -> (B, T, C): causal self-attention with RoPE on q and k, kv heads shared by
 * NH / NKV query heads each (HF's repeat_kv), dropout on the projected output. With a cache, x
 * holds positions len..len+T-1 (RoPE offset len) and attends to the cached ones too. */
static bt_tensor *attention_forward(struct llama_attention *a, bt_tensor *x,
                                    struct model_cache *cache, int64_t layer) {
    if (!x) return NULL; /* an earlier op failed: keep its message */
    bt_scope_push(a->base.path);
    int64_t B = x->shape[0], T = x->shape[1], pos0 = model_cache_len(cache);
    bt_tensor *q = split_heads(nn_linear_forward(a->q_proj, x), a->n_head);    /* (B,NH,T,hs) */
    bt_tensor *k = split_heads(nn_linear_forward(a->k_proj, x), a->n_kv_head); /* (B,NKV,T,hs) */
    bt_tensor *v = split_heads(nn_linear_forward(a->v_proj, x), a->n_kv_head); /* (B,NKV,T,hs) */
    q = bt_rope(q, a->rope_theta, pos0);
    k = bt_rope(k, a->rope_theta, pos0);
    bt_tensor *y = cache ? model_cache_attend(cache, layer, q, k, v)
                         : bt_attention(q, k, v, true, 0.0); /* (B, NH, T, hs), scale 1/sqrt(hs) */
    y = bt_reshape(bt_transpose(y, 1, 2), BT_SHAPE(B, T, -1)); /* (B, T, NH*hs) */
    y = nn_linear_forward(a->o_proj, y);                       /* (B, T, C) */
    y = nn_dropout_forward(a->resid_dropout, y);
    bt_scope_pop();
    return y;
}

/* x (B, T, C) -> (B, T, C): down(silu(gate(x)) * up(x)), then dropout (SwiGLU, Shazeer 2020) */
static bt_tensor *mlp_forward(struct llama_mlp *mlp, bt_tensor *x) {
    bt_scope_push(mlp->base.path);
    bt_tensor *gate = bt_silu(nn_linear_forward(mlp->gate_proj, x));    /* (B, T, F) */
    bt_tensor *up = nn_linear_forward(mlp->up_proj, x);                 /* (B, T, F) */
    bt_tensor *h = nn_linear_forward(mlp->down_proj, bt_mul(gate, up)); /* (B, T, C) */
    h = nn_dropout_forward(mlp->dropout, h);
    bt_scope_pop();
    return h;
}

/* x (B, T, C) -> (B, T, C): x + attn(norm(x)), then + mlp(norm(x)) */
static bt_tensor *layer_forward(struct llama_layer *layer, bt_tensor *x, struct model_cache *cache,
                                int64_t index) {
    bt_scope_push(layer->base.path);
    x = bt_add(x, attention_forward(layer->self_attn, nn_rmsnorm_forward(layer->input_layernorm, x),
                                    cache, index));
    x = bt_add(x, mlp_forward(layer->mlp, nn_rmsnorm_forward(layer->post_attention_layernorm, x)));
    bt_scope_pop();
    return x;
}

/* idx (B, T) checked by the caller -> logits (B, T, V); positions start at the cache's length
 * and the attention goes through the cache when there is one, else at 0 */
static bt_tensor *llama_logits(struct model *m, bt_tensor *idx, struct model_cache *cache) {
    struct llama *g = m->impl;
    bt_tensor *x = nn_embedding_forward(g->embed_tokens, idx); /* (B, T, C) */
    x = nn_dropout_forward(g->drop, x);
    for (int64_t l = 0; l < g->n_layer; l++)
        x = layer_forward(g->layers[l], x, cache, l);
    x = nn_rmsnorm_forward(g->norm, x);
    return nn_linear_forward(g->lm_head, x); /* (B, T, V) */
}

/* idx (B, T) checked by model_forward -> logits (B, T, V), loss () */
static bt_tensor *llama_forward(struct model *m, bt_tensor *idx, bt_tensor *targets,
                                bt_tensor **logits) {
    return model_finish_forward(llama_logits(m, idx, NULL), targets, NULL, logits);
}

bt_tensor *llama_forward_cached(struct model *m, struct model_cache *c, bt_tensor *idx) {
    return llama_logits(m, idx, c);
}

/* ---- building ---- */

static struct llama_attention *attention_create(const struct model_config *c) {
    struct llama_attention *a = nn_module_new(sizeof(*a), "self_attn");
    if (!a) return NULL;
    int64_t C = c->n_embd, hs = C / c->n_head;
    a->n_head = c->n_head;
    a->n_kv_head = c->n_kv_head;
    a->rope_theta = c->rope_theta;
    a->q_proj = model_attach(&a->base, nn_linear_create("q_proj", C, c->n_head * hs, false, NULL));
    a->k_proj =
        model_attach(&a->base, nn_linear_create("k_proj", C, c->n_kv_head * hs, false, NULL));
    a->v_proj =
        model_attach(&a->base, nn_linear_create("v_proj", C, c->n_kv_head * hs, false, NULL));
    a->o_proj = model_attach(&a->base, nn_linear_create("o_proj", c->n_head * hs, C, false, NULL));
    a->resid_dropout = model_attach(&a->base, nn_dropout_create("resid_dropout", c->dropout));
    if (!a->q_proj || !a->k_proj || !a->v_proj || !a->o_proj || !a->resid_dropout) {
        nn_module_free(&a->base);
        return NULL;
    }
    return a;
}

static struct llama_mlp *mlp_create(const struct model_config *c) {
    struct llama_mlp *mlp = nn_module_new(sizeof(*mlp), "mlp");
    if (!mlp) return NULL;
    int64_t C = c->n_embd, F = c->ffn_hidden;
    mlp->gate_proj = model_attach(&mlp->base, nn_linear_create("gate_proj", C, F, false, NULL));
    mlp->up_proj = model_attach(&mlp->base, nn_linear_create("up_proj", C, F, false, NULL));
    mlp->down_proj = model_attach(&mlp->base, nn_linear_create("down_proj", F, C, false, NULL));
    mlp->dropout = model_attach(&mlp->base, nn_dropout_create("dropout", c->dropout));
    if (!mlp->gate_proj || !mlp->up_proj || !mlp->down_proj || !mlp->dropout) {
        nn_module_free(&mlp->base);
        return NULL;
    }
    return mlp;
}

static struct llama_layer *layer_create(const struct model_config *c, int64_t index) {
    char name[32];
    snprintf(name, sizeof name, "%lld", (long long)index);
    struct llama_layer *layer = nn_module_new(sizeof(*layer), name);
    if (!layer) return NULL;
    int64_t C = c->n_embd;
    layer->self_attn = model_attach(&layer->base, attention_create(c));
    layer->mlp = layer->self_attn ? model_attach(&layer->base, mlp_create(c)) : NULL;
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

/* The tree, in HF's registration order (so parameters list in its order):
 *   model.{embed_tokens, layers.<i>.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj,
 *   input_layernorm, post_attention_layernorm}, norm}, lm_head */
bt_status llama_build(struct model *m, struct bt_rng *rng) {
    const struct model_config *c = &m->config;
    struct llama *g = calloc(1, sizeof(*g) + (size_t)c->n_layer * sizeof(g->layers[0]));
    if (!g) return bt_error("llama: out of memory for %lld layers", (long long)c->n_layer);
    m->impl = g;
    g->n_layer = c->n_layer;
    m->forward = llama_forward;
    m->root = nn_module_create("");
    if (!m->root) return BT_ERR;
    struct nn_module *body = model_attach(m->root, nn_module_create("model"));
    if (!body) return BT_ERR;
    g->embed_tokens =
        model_attach(body, nn_embedding_create("embed_tokens", c->vocab_size, c->n_embd, NULL));
    g->drop = model_attach(body, nn_dropout_create("drop", c->dropout));
    struct nn_module *layers = model_attach(body, nn_module_create("layers"));
    if (!g->embed_tokens || !g->drop || !layers) return BT_ERR;
    for (int64_t l = 0; l < c->n_layer; l++)
        if (!(g->layers[l] = model_attach(layers, layer_create(c, l)))) return BT_ERR;
    g->norm = model_attach(body, nn_rmsnorm_create("norm", c->n_embd, c->norm_eps));
    g->lm_head =
        model_attach(m->root, nn_linear_create("lm_head", c->n_embd, c->vocab_size, false, NULL));
    if (!g->norm || !g->lm_head) return BT_ERR;
    if (c->tie_embeddings &&
        nn_module_set_parameter(&g->lm_head->base, "weight", g->embed_tokens->weight) != BT_OK)
        return BT_ERR;
    /* HF's _init_weights with initializer_range 0.02: Linear and Embedding weights N(0, 0.02),
     * RMSNorm weights 1. That is GPT-2's scheme with no residual projection flagged. */
    return nn_init_gpt2(m->root, rng, (int)c->n_layer);
}
