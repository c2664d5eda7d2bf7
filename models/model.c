/* The model interface: config checks, dispatch to the family builders (models/gpt.c,
 * models/llama.c), the checks every forward shares, the loss, parameters and FLOPs. */
#include <math.h>
#include <stdlib.h>

#include "models/model_internal.h"
#include "parallel/tp.h"

static const char *arch_name(model_arch arch) {
    return arch == MODEL_GPT ? "gpt" : arch == MODEL_LLAMA ? "llama" : "?";
}

static bt_status check_at_least_one(const char *key, int64_t v) {
    if (v >= 1) return BT_OK;
    return bt_error("model.%s must be at least 1, got %lld", key, (long long)v);
}

static bt_status check_divisible_by_tp(const char *key, int64_t v, int tp) {
    if (v % tp == 0) return BT_OK;
    return bt_error("model.%s=%lld is not divisible by parallel.tp=%d", key, (long long)v, tp);
}

/* With a tp group of P > 1: every split count divisible by P (n_embd follows from n_head). Each
 * rank holds whole query heads and whole key/value heads (llama's grouped-query attention: the
 * query heads of rank r use exactly its kv heads), so n_kv_head too; replicating kv heads when
 * P > n_kv_head is not supported. */
static bt_status check_tensor_parallel(const struct model_config *c) {
    int tp = model_tp_size(c);
    if (tp == 1) return BT_OK;
    if (check_divisible_by_tp("n_head", c->n_head, tp) != BT_OK ||
        check_divisible_by_tp("n_kv_head", c->n_kv_head, tp) != BT_OK ||
        check_divisible_by_tp("vocab_size", c->vocab_size, tp) != BT_OK ||
        check_divisible_by_tp("ffn_hidden", c->ffn_hidden, tp) != BT_OK)
        return BT_ERR;
    return BT_OK;
}

/* Every value and relation the builders rely on; messages name the config keys. */
static bt_status check_config(const struct model_config *c) {
    if (c->arch != MODEL_GPT && c->arch != MODEL_LLAMA)
        return bt_error("model.arch: unknown architecture %d (expected gpt or llama)",
                        (int)c->arch);
    const char *keys[] = {"vocab_size", "block_size", "n_layer",   "n_head",
                          "n_kv_head",  "n_embd",     "ffn_hidden"};
    const int64_t values[] = {c->vocab_size, c->block_size, c->n_layer,   c->n_head,
                              c->n_kv_head,  c->n_embd,     c->ffn_hidden};
    for (int k = 0; k < (int)(sizeof(values) / sizeof(values[0])); k++)
        if (check_at_least_one(keys[k], values[k]) != BT_OK) return BT_ERR;
    if (c->n_layer > 1000000)
        return bt_error("model.n_layer=%lld is too large", (long long)c->n_layer);
    if (c->n_embd % c->n_head != 0)
        return bt_error("model.n_embd=%lld is not divisible by model.n_head=%lld",
                        (long long)c->n_embd, (long long)c->n_head);
    if (c->n_head % c->n_kv_head != 0)
        return bt_error("model.n_head=%lld is not divisible by model.n_kv_head=%lld",
                        (long long)c->n_head, (long long)c->n_kv_head);
    if (!(c->dropout >= 0.0 && c->dropout < 1.0))
        return bt_error("model.dropout must be in [0, 1), got %g", c->dropout);
    if (!(c->norm_eps >= 0.0 && isfinite(c->norm_eps)))
        return bt_error("model.norm_eps must be a non-negative number, got %g", c->norm_eps);
    if (c->arch == MODEL_GPT) {
        if (c->n_kv_head != c->n_head)
            return bt_error("model.n_kv_head=%lld must equal model.n_head=%lld for model.arch=gpt "
                            "(grouped-query attention is llama only)",
                            (long long)c->n_kv_head, (long long)c->n_head);
        if (c->gelu != BT_GELU_TANH && c->gelu != BT_GELU_EXACT)
            return bt_error("model.gelu: unknown kind %d (expected tanh or exact)", (int)c->gelu);
    } else {
        int64_t hs = c->n_embd / c->n_head;
        if (hs % 2 != 0)
            return bt_error("model.n_embd=%lld / model.n_head=%lld gives head size %lld, which "
                            "must be even for rotary embeddings (model.arch=llama)",
                            (long long)c->n_embd, (long long)c->n_head, (long long)hs);
        if (!(c->rope_theta > 0.0 && isfinite(c->rope_theta)))
            return bt_error("model.rope_theta must be a positive number, got %g", c->rope_theta);
    }
    return check_tensor_parallel(c);
}

struct model *model_create(const struct model_config *cfg, uint64_t seed) {
    if (!cfg) {
        bt_error("model: config is NULL");
        return NULL;
    }
    if (check_config(cfg) != BT_OK) return NULL;
    struct model *m = calloc(1, sizeof(*m));
    if (!m) {
        bt_error("model: out of memory creating a %s model", arch_name(cfg->arch));
        return NULL;
    }
    m->config = *cfg;
    struct bt_rng rng = bt_rng_make(seed);
    bt_status st = cfg->arch == MODEL_GPT ? gpt_build(m, &rng) : llama_build(m, &rng);
    if (st != BT_OK) {
        model_free(m);
        return NULL;
    }
    return m;
}

void model_free(struct model *m) {
    if (!m) return;
    nn_module_free(m->root);
    free(m->impl);
    free(m);
}

/* idx (B, T) integer with 1 <= T <= block_size; targets NULL or integer of idx's shape */
static bt_status check_batch(const struct model *m, const bt_tensor *idx,
                             const bt_tensor *targets) {
    const char *arch = arch_name(m->config.arch);
    char a[96], b[96];
    if (idx->ndim != 2)
        return bt_error("%s: idx %s must be 2-D (batch, time)", arch,
                        bt_shape_str(idx, a, sizeof a));
    if (idx->dtype != BT_I32 && idx->dtype != BT_I64 && idx->dtype != BT_U16)
        return bt_error("%s: idx must hold token ids (int32, int64 or uint16), got %s %s", arch,
                        bt_dtype_name(idx->dtype), bt_shape_str(idx, a, sizeof a));
    int64_t T = idx->shape[1];
    if (T > m->config.block_size)
        return bt_error("%s: idx %s has sequence length %lld, more than model.block_size=%lld",
                        arch, bt_shape_str(idx, a, sizeof a), (long long)T,
                        (long long)m->config.block_size);
    if (idx->shape[0] < 1 || T < 1)
        return bt_error("%s: idx %s is empty", arch, bt_shape_str(idx, a, sizeof a));
    int tp = model_tp_size(&m->config);
    if (model_sequence_parallel(&m->config) && T % tp != 0)
        return bt_error("%s: idx %s has sequence length %lld, not divisible by parallel.tp=%d "
                        "(parallel.sequence_parallel splits the sequence across the tp ranks)",
                        arch, bt_shape_str(idx, a, sizeof a), (long long)T, tp);
    if (targets && !bt_same_shape(idx, targets))
        return bt_error("%s: targets %s must have the shape of idx %s", arch,
                        bt_shape_str(targets, b, sizeof b), bt_shape_str(idx, a, sizeof a));
    return BT_OK;
}

bt_tensor *model_forward(struct model *m, bt_tensor *idx, bt_tensor *targets, bt_tensor **logits) {
    if (logits) *logits = NULL;
    if (!m || !idx) {
        if (!bt_has_error()) bt_error("model: forward: %s is NULL", m ? "idx" : "model");
        return NULL;
    }
    if (check_batch(m, idx, targets) != BT_OK) return NULL;
    return m->forward(m, idx, targets, logits);
}

bt_tensor *model_finish_forward(bt_tensor *logits, bt_tensor *targets, struct comm *tp_group,
                                bt_tensor **logits_out) {
    if (logits_out) *logits_out = logits;
    if (!logits || !targets) return NULL;
    /* logits (B, T, V) -> (B*T, V), targets (B, T) -> (B*T); V is V/P with a tp group */
    int64_t V = logits->shape[2];
    bt_tensor *flat_logits = bt_reshape(logits, BT_SHAPE(-1, V));
    bt_tensor *flat_targets = bt_reshape(targets, BT_SHAPE(-1));
    if (tp_group && comm_size(tp_group) > 1)
        return tp_cross_entropy(flat_logits, flat_targets, tp_group);
    return bt_cross_entropy(flat_logits, flat_targets);
}

/* ---- sequence parallelism ---- */

bt_tensor *model_sp_param(const struct model_config *c, bt_tensor *w) {
    return w && model_sequence_parallel(c) ? tp_copy(w, c->tp_group) : w;
}

bt_tensor *model_layernorm(const struct model_config *c, struct nn_layernorm *ln, bt_tensor *x) {
    if (!model_sequence_parallel(c)) return nn_layernorm_forward(ln, x);
    bt_scope_push(ln->base.path);
    bt_tensor *y =
        bt_layernorm(x, model_sp_param(c, ln->weight), model_sp_param(c, ln->bias), ln->eps);
    bt_scope_pop();
    return y;
}

bt_tensor *model_rmsnorm(const struct model_config *c, struct nn_rmsnorm *n, bt_tensor *x) {
    if (!model_sequence_parallel(c)) return nn_rmsnorm_forward(n, x);
    bt_scope_push(n->base.path);
    bt_tensor *y = bt_rmsnorm(x, model_sp_param(c, n->weight), n->eps);
    bt_scope_pop();
    return y;
}

int64_t model_sp_offset(const struct model_config *c, int64_t T) {
    if (!model_sequence_parallel(c)) return 0;
    return comm_rank(c->tp_group) * (T / comm_size(c->tp_group));
}

bt_tensor *model_dropout(const struct model_config *c, struct nn_dropout *d, bt_tensor *x) {
    if (!model_sequence_parallel(c) || !x || !d->base.training || d->p == 0.0)
        return nn_dropout_forward(d, x);
    bt_scope_push(d->base.path);
    /* the whole tensor's mask (scaled by 1/(1-p)), drawn as tp=1 draws it, then this rank's
     * slice of it: x * mask has the gradient grad * mask */
    int64_t shape[BT_MAX_DIMS];
    for (int k = 0; k < x->ndim; k++)
        shape[k] = x->shape[k];
    int P = comm_size(c->tp_group);
    shape[1] *= P;
    bt_tensor *mask = bt_dropout(bt_ones(x->ndim, shape, x->dtype, bt_cpu()), d->p, true);
    bt_tensor *y = bt_mul(x, bt_narrow(mask, 1, comm_rank(c->tp_group) * x->shape[1], x->shape[1]));
    bt_scope_pop();
    return y;
}

void model_train(struct model *m, bool training) {
    if (m) nn_module_train(m->root, training);
}

bt_status model_parameters(const struct model *m, struct nn_param_list *out) {
    if (!m) {
        *out = (struct nn_param_list){0};
        return bt_has_error() ? BT_ERR : bt_error("model: parameters: model is NULL");
    }
    return nn_named_parameters(m->root, out);
}

int64_t model_num_parameters(const struct model *m) {
    struct nn_param_list l;
    if (!m || nn_named_parameters(m->root, &l) != BT_OK) return -1;
    int64_t n = 0;
    for (int64_t i = 0; i < l.count; i++) {
        struct nn_split s = nn_param_split(&l, i);
        n += bt_numel(l.tensors[i]) * (nn_split_is_cut(&s) ? s.parts : 1);
    }
    nn_param_list_free(&l);
    return n;
}

int64_t model_num_local_parameters(const struct model *m) {
    return m ? nn_num_parameters(m->root) : -1;
}

double model_flops_per_token(const struct model *m, int64_t T) {
    if (!m) return 0.0;
    const struct model_config *c = &m->config;
    double N = (double)model_num_parameters(m);
    if (c->arch == MODEL_GPT) N -= (double)(c->block_size * c->n_embd); /* transformer.wpe */
    /* PaLM appendix B: 6N for the matmuls with weights, 12*L*C*T for q k^T and (att) v */
    return 6.0 * N + 12.0 * (double)c->n_layer * (double)c->n_embd * (double)T;
}
