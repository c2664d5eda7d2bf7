/* The concrete nn layers: Linear, Embedding, LayerNorm, RMSNorm, Dropout. Each constructor
 * registers its parameters on the module tree (core/nn.c); each forward runs one op from
 * core/ops.h under the module's dotted path as the error scope. */
#include <math.h>

#include "core/nn.h"

static bool check_positive(const char *layer, const char *name, const char *what, int64_t v) {
    if (v > 0) return true;
    bt_error("%s %s: %s must be positive, got %lld", layer, name ? name : "(null)", what,
             (long long)v);
    return false;
}

static bool check_eps(const char *layer, const char *name, double eps) {
    if (eps >= 0.0 && isfinite(eps)) return true;
    bt_error("%s %s: eps must be a non-negative number, got %g", layer, name ? name : "(null)",
             eps);
    return false;
}

/* ---- Linear ---- */

struct nn_linear *nn_linear_create(const char *name, int64_t in_features, int64_t out_features,
                                   bool bias, struct bt_rng *rng) {
    if (!check_positive("linear", name, "in_features", in_features) ||
        !check_positive("linear", name, "out_features", out_features))
        return NULL;
    struct nn_linear *m = nn_module_new(sizeof(*m), name);
    if (!m) return NULL;
    m->base.kind = NN_LINEAR;
    m->in_features = in_features;
    m->out_features = out_features;
    if (!nn_module_add_parameter(&m->base, "weight", BT_SHAPE(out_features, in_features),
                                 &m->weight))
        return nn_module_discard(&m->base);
    if (bias && !nn_module_add_parameter(&m->base, "bias", BT_SHAPE(out_features), &m->bias))
        return nn_module_discard(&m->base);
    if (rng) nn_init_pytorch_default(&m->base, rng);
    return m;
}

bt_tensor *nn_linear_forward(struct nn_linear *m, bt_tensor *x) {
    if (!m) return nn_module_missing("linear");
    bt_scope_push(m->base.path);
    bt_tensor *y = bt_linear(x, m->weight, m->bias);
    bt_scope_pop();
    return y;
}

bt_tensor *nn_linear_gelu_forward(struct nn_linear *m, bt_tensor *x) {
    if (!m) return nn_module_missing("linear");
    bt_scope_push(m->base.path);
    bt_tensor *y = bt_linear_gelu(x, m->weight, m->bias);
    bt_scope_pop();
    return y;
}

/* ---- Embedding ---- */

struct nn_embedding *nn_embedding_create(const char *name, int64_t num_embeddings,
                                         int64_t embedding_dim, struct bt_rng *rng) {
    if (!check_positive("embedding", name, "num_embeddings", num_embeddings) ||
        !check_positive("embedding", name, "embedding_dim", embedding_dim))
        return NULL;
    struct nn_embedding *m = nn_module_new(sizeof(*m), name);
    if (!m) return NULL;
    m->base.kind = NN_EMBEDDING;
    m->num_embeddings = num_embeddings;
    m->embedding_dim = embedding_dim;
    if (!nn_module_add_parameter(&m->base, "weight", BT_SHAPE(num_embeddings, embedding_dim),
                                 &m->weight))
        return nn_module_discard(&m->base);
    if (rng) nn_init_pytorch_default(&m->base, rng);
    return m;
}

bt_tensor *nn_embedding_forward(struct nn_embedding *m, bt_tensor *idx) {
    if (!m) return nn_module_missing("embedding");
    bt_scope_push(m->base.path);
    bt_tensor *y = bt_embedding(m->weight, idx);
    bt_scope_pop();
    return y;
}

/* ---- LayerNorm, RMSNorm: weight ones, bias zeros, as PyTorch creates them ---- */

struct nn_layernorm *nn_layernorm_create(const char *name, int64_t C, bool bias, double eps) {
    if (!check_positive("layernorm", name, "normalized size", C) ||
        !check_eps("layernorm", name, eps))
        return NULL;
    struct nn_layernorm *m = nn_module_new(sizeof(*m), name);
    if (!m) return NULL;
    m->base.kind = NN_LAYERNORM;
    m->C = C;
    m->eps = eps;
    if (!nn_module_add_parameter(&m->base, "weight", BT_SHAPE(C), &m->weight))
        return nn_module_discard(&m->base);
    if (bias && !nn_module_add_parameter(&m->base, "bias", BT_SHAPE(C), &m->bias))
        return nn_module_discard(&m->base);
    nn_init_ones(m->weight);
    return m;
}

bt_tensor *nn_layernorm_forward(struct nn_layernorm *m, bt_tensor *x) {
    if (!m) return nn_module_missing("layernorm");
    bt_scope_push(m->base.path);
    bt_tensor *y = bt_layernorm(x, m->weight, m->bias, m->eps);
    bt_scope_pop();
    return y;
}

struct nn_rmsnorm *nn_rmsnorm_create(const char *name, int64_t C, double eps) {
    if (!check_positive("rmsnorm", name, "normalized size", C) || !check_eps("rmsnorm", name, eps))
        return NULL;
    struct nn_rmsnorm *m = nn_module_new(sizeof(*m), name);
    if (!m) return NULL;
    m->base.kind = NN_RMSNORM;
    m->C = C;
    m->eps = eps;
    if (!nn_module_add_parameter(&m->base, "weight", BT_SHAPE(C), &m->weight))
        return nn_module_discard(&m->base);
    nn_init_ones(m->weight);
    return m;
}

bt_tensor *nn_rmsnorm_forward(struct nn_rmsnorm *m, bt_tensor *x) {
    if (!m) return nn_module_missing("rmsnorm");
    bt_scope_push(m->base.path);
    bt_tensor *y = bt_rmsnorm(x, m->weight, m->eps);
    bt_scope_pop();
    return y;
}

/* ---- Dropout ---- */

struct nn_dropout *nn_dropout_create(const char *name, double p) {
    if (!(p >= 0.0 && p < 1.0)) {
        bt_error("dropout %s: p must be in [0, 1), got %g", name ? name : "(null)", p);
        return NULL;
    }
    struct nn_dropout *m = nn_module_new(sizeof(*m), name);
    if (!m) return NULL;
    m->base.kind = NN_DROPOUT;
    m->p = p;
    return m;
}

bt_tensor *nn_dropout_forward(struct nn_dropout *m, bt_tensor *x) {
    if (!m) return nn_module_missing("dropout");
    bt_scope_push(m->base.path);
    bt_tensor *y = bt_dropout(x, m->p, m->base.training);
    bt_scope_pop();
    return y;
}
