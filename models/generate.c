/* Generation with a key/value cache (models/model.h): per layer, persistent K and V tensors of
 * (batch, NKV, block_size, hs) that the families' attention appends to, and the attention of new
 * queries over the cached positions. Relies on core/ ops; the families call model_cache_attend. */
#include <math.h>
#include <stdlib.h>

#include "models/model_internal.h"

struct model_cache {
    const struct model *model;
    int64_t batch, len; /* sequences, positions held */
    int64_t n_layer;
    struct {
        bt_tensor *k, *v; /* (batch, NKV, block_size, hs) */
    } layers[];
};

/* The device the model's parameters live on (the cache goes beside them). */
static bt_status model_device(const struct model *m, bt_device *device) {
    struct nn_param_list list;
    if (model_parameters(m, &list) != BT_OK) return BT_ERR;
    if (list.count == 0) {
        nn_param_list_free(&list);
        return bt_error("model cache: the model has no parameters");
    }
    *device = list.tensors[0]->storage->device;
    nn_param_list_free(&list);
    return BT_OK;
}

struct model_cache *model_cache_create(struct model *m, int64_t batch) {
    if (!m) {
        bt_error("model cache: model is NULL");
        return NULL;
    }
    if (batch < 1) {
        bt_error("model cache: batch must be at least 1, got %lld", (long long)batch);
        return NULL;
    }
    const struct model_config *cfg = &m->config;
    bt_device device;
    if (model_device(m, &device) != BT_OK) return NULL;
    struct model_cache *c = calloc(1, sizeof(*c) + (size_t)cfg->n_layer * sizeof(c->layers[0]));
    if (!c) {
        bt_error("model cache: out of memory for %lld layers", (long long)cfg->n_layer);
        return NULL;
    }
    c->model = m;
    c->batch = batch;
    c->n_layer = cfg->n_layer;
    int64_t hs = cfg->n_embd / cfg->n_head;
    int64_t n_kv = cfg->n_kv_head / model_tp_size(cfg); /* this rank's heads under tp */
    for (int64_t l = 0; l < cfg->n_layer; l++) {
        c->layers[l].k = bt_tensor_new(BT_SHAPE(batch, n_kv, cfg->block_size, hs), BT_F32, device);
        c->layers[l].v = c->layers[l].k ? bt_tensor_new(BT_SHAPE(batch, n_kv, cfg->block_size, hs),
                                                        BT_F32, device)
                                        : NULL;
        if (!c->layers[l].v) {
            model_cache_free(c);
            return NULL;
        }
    }
    return c;
}

void model_cache_free(struct model_cache *c) {
    if (!c) return;
    for (int64_t l = 0; l < c->n_layer; l++) {
        bt_tensor_free(c->layers[l].k);
        bt_tensor_free(c->layers[l].v);
    }
    free(c);
}

int64_t model_cache_len(const struct model_cache *c) {
    return c ? c->len : 0;
}

void model_cache_reset(struct model_cache *c) {
    if (c) c->len = 0;
}

/* ---- attention over the cache ---- */

/* Copies x (B, NKV, n, hs) into positions at..at+n-1 of cache (B, NKV, block_size, hs), one
 * contiguous (n, hs) run per (batch, head) so each copy is a plain strided copy. */
static bt_status cache_store(bt_tensor *cache, bt_tensor *x, int64_t at) {
    int64_t B = x->shape[0], NKV = x->shape[1], n = x->shape[2];
    bt_tensor *dst = bt_narrow(cache, 2, at, n);
    for (int64_t b = 0; b < B && dst; b++)
        for (int64_t h = 0; h < NKV; h++) {
            bt_tensor *d = bt_narrow(bt_narrow(dst, 0, b, 1), 1, h, 1);
            bt_tensor *s = bt_narrow(bt_narrow(x, 0, b, 1), 1, h, 1);
            if (!d || !s || bt_copy_(d, s) != BT_OK) return BT_ERR;
        }
    return dst ? BT_OK : BT_ERR;
}

/* (G*n, L) bool, true where query row g*n + i (position len + i) may not see key t: t > len + i */
static bt_tensor *future_mask(int64_t groups, int64_t n, int64_t len) {
    int64_t L = len + n;
    bt_tensor *mask = bt_empty(BT_SHAPE(groups * n, L), BT_BOOL, bt_cpu());
    if (!mask) return NULL;
    uint8_t *m = bt_data(mask);
    for (int64_t g = 0; g < groups; g++)
        for (int64_t i = 0; i < n; i++)
            for (int64_t t = 0; t < L; t++)
                m[(g * n + i) * L + t] = t > len + i;
    return mask;
}

/* q (B, NH, n, hs) at positions len..len+n-1, K and V (B, NKV, len+n, hs) -> (B, NH, n, hs):
 * softmax(q K^T / sqrt(hs)) V with the causal mask. bt_attention needs as many keys as queries,
 * so this is matmul + softmax; the query heads sharing a kv head (h / (NH/NKV), as the fused
 * kernel) are stacked as rows so K and V are used as they are, without repeating heads. */
static bt_tensor *attend_cached(bt_tensor *q, bt_tensor *K, bt_tensor *V, int64_t len) {
    int64_t B = q->shape[0], NH = q->shape[1], n = q->shape[2], hs = q->shape[3];
    int64_t NKV = K->shape[1], G = NH / NKV;
    bt_tensor *qg = bt_reshape(q, BT_SHAPE(B, NKV, G * n, hs));
    qg = bt_mul_scalar(qg, 1.0 / sqrt((double)hs));
    bt_tensor *scores = bt_matmul(qg, bt_transpose(K, 2, 3)); /* (B, NKV, G*n, len+n) */
    if (n > 1) {
        bt_tensor *mask = scores ? future_mask(G, n, len) : NULL;
        if (mask) mask = bt_to_device(mask, scores->storage->device); /* made on the host */
        scores = bt_masked_fill(scores, mask, -INFINITY);
    }
    bt_tensor *y = bt_matmul(bt_softmax(scores, -1), V); /* (B, NKV, G*n, hs) */
    return bt_reshape(y, BT_SHAPE(B, NH, n, hs));
}

bt_tensor *model_cache_attend(struct model_cache *c, int64_t layer, bt_tensor *q, bt_tensor *k,
                              bt_tensor *v) {
    if (!q || !k || !v) return NULL; /* an earlier op failed: keep its message */
    int64_t len = c->len, n = q->shape[2];
    if (cache_store(c->layers[layer].k, k, len) != BT_OK ||
        cache_store(c->layers[layer].v, v, len) != BT_OK)
        return NULL;
    if (len == 0) return bt_attention(q, k, v, true, 0.0); /* a prefill: the fused kernel */
    bt_tensor *K = bt_narrow(c->layers[layer].k, 2, 0, len + n);
    bt_tensor *V = bt_narrow(c->layers[layer].v, 2, 0, len + n);
    if (!K || !V) return NULL;
    return attend_cached(q, K, V, len);
}

/* ---- the cached forward ---- */

/* idx (batch, n) of token ids for this cache, with room for n more positions. */
static bt_status check_cached_batch(const struct model *m, const struct model_cache *c,
                                    const bt_tensor *idx) {
    const char *arch = m->config.arch == MODEL_GPT ? "gpt" : "llama";
    char a[96];
    if (c->model != m)
        return bt_error("%s: forward_cached: the cache belongs to another model", arch);
    if (idx->ndim != 2 || idx->shape[0] != c->batch || idx->shape[1] < 1)
        return bt_error("%s: forward_cached: idx %s must be (%lld, n) with n >= 1 (the cache's "
                        "batch)",
                        arch, bt_shape_str(idx, a, sizeof a), (long long)c->batch);
    if (idx->dtype != BT_I32 && idx->dtype != BT_I64 && idx->dtype != BT_U16)
        return bt_error("%s: forward_cached: idx must hold token ids (int32, int64 or uint16), "
                        "got %s %s",
                        arch, bt_dtype_name(idx->dtype), bt_shape_str(idx, a, sizeof a));
    int64_t n = idx->shape[1];
    if (c->len + n > m->config.block_size)
        return bt_error("%s: forward_cached: %lld cached + %lld new positions is more than "
                        "model.block_size=%lld (reset the cache)",
                        arch, (long long)c->len, (long long)n, (long long)m->config.block_size);
    return BT_OK;
}

bt_tensor *model_forward_cached(struct model *m, struct model_cache *c, bt_tensor *idx) {
    if (!m || !c || !idx) {
        if (!bt_has_error())
            bt_error("model: forward_cached: %s is NULL", !m ? "model" : !c ? "cache" : "idx");
        return NULL;
    }
    if (check_cached_batch(m, c, idx) != BT_OK) return NULL;
    /* eval mode (no dropout) and no tape for the duration; the caller's modes come back after */
    bool grad = bt_set_grad_enabled(false), training = m->root->training;
    if (training) model_train(m, false);
    bt_tensor *logits = m->config.arch == MODEL_GPT ? gpt_forward_cached(m, c, idx)
                                                    : llama_forward_cached(m, c, idx);
    if (training) model_train(m, true);
    bt_set_grad_enabled(grad);
    if (logits) c->len += idx->shape[1];
    return logits;
}
