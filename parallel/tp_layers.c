/* The tensor-parallel layers (parallel/tp.h): column- and row-parallel linear and the
 * vocab-parallel embedding, nn modules holding this rank's shards of the full parameters. Their
 * forwards are core's linear/embedding between the collectives of parallel/tp_ops.c. */
#include <stdio.h>
#include <string.h>

#include "core/autograd.h"
#include "parallel/tp.h"

#define SHAPE(t) bt_shape_str((t), (char[96]){0}, 96)

/* "<layer> <name>" for messages: `column-parallel linear c_fc` */
#define OWNER(layer, name) owner_name((char[160]){0}, 160, layer, name)

static const char *owner_name(char *buf, size_t size, const char *layer, const char *name) {
    snprintf(buf, size, "%s %s", layer, name ? name : "(null)");
    return buf;
}

static bool check_setup(const char *owner, struct comm *group) {
    if (group) return true;
    bt_error("%s: group is NULL", owner);
    return false;
}

static bool check_positive(const char *owner, const char *what, int64_t v) {
    if (v > 0) return true;
    bt_error("%s: %s must be positive, got %lld", owner, what, (long long)v);
    return false;
}

/* The full tensor a *_load_full was given: present, floating point, of the expected shape. */
static bool check_full(const char *owner, const char *what, const bt_tensor *t, int ndim,
                       const int64_t *shape) {
    if (!t) {
        bt_error("%s: full %s is NULL", owner, what);
        return false;
    }
    bool same = t->ndim == ndim && !bt_dtype_is_integer(t->dtype);
    for (int k = 0; same && k < ndim; k++)
        same = t->shape[k] == shape[k];
    if (same) return true;
    char want[96] = "(";
    for (int k = 0; k < ndim; k++)
        snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", k ? "," : "",
                 (long long)shape[k]);
    strcat(want, ")");
    bt_error("%s: full %s is %s %s, expected a float tensor %s", owner, what,
             bt_dtype_name(t->dtype), SHAPE(t), want);
    return false;
}

/* A bias the layer has exactly when the full one is given. */
static bool check_full_bias(const char *owner, const bt_tensor *bias, const bt_tensor *full,
                            int64_t n) {
    if (!bias && full) {
        bt_error("%s: a full bias %s was given but the layer has no bias", owner, SHAPE(full));
        return false;
    }
    if (bias && !full) {
        bt_error("%s: the layer has a bias but no full bias was given", owner);
        return false;
    }
    return !bias || check_full(owner, "bias", full, 1, (int64_t[]){n});
}

/* Copies this rank's piece of `full` (the whole tensor, of any float dtype, checked by the
 * caller) into m's parameter `name`, as its registered split says (core/nn.h). No autograd. */
static bt_status load_piece(struct nn_module *m, const char *name, const bt_tensor *full) {
    struct nn_param *p = NULL;
    for (int k = 0; k < m->n_params && !p; k++)
        if (strcmp(m->params[k].name, name) == 0) p = &m->params[k];
    if (!p) return bt_error("%s: no parameter named %s", m->path, name);
    bool grad_mode = bt_set_grad_enabled(false);
    bt_tensor *f = (bt_tensor *)full;
    if (f->dtype != BT_F32) f = bt_to_dtype(f, BT_F32);
    if (f) f = bt_contiguous(f);
    bt_status st = f ? nn_split_take(&p->split, f, p->tensor, 0) : BT_ERR;
    bt_set_grad_enabled(grad_mode);
    return st;
}

/* ---- column-parallel linear ---- */

struct tp_column_linear *tp_column_linear_create_fused(const char *name, int64_t in_features,
                                                       int n_blocks, const int64_t *block_sizes,
                                                       bool bias, struct comm *group,
                                                       struct bt_rng *rng) {
    const char *owner = OWNER("column-parallel linear", name);
    if (!check_setup(owner, group) || !check_positive(owner, "in_features", in_features))
        return NULL;
    if (n_blocks < 1 || n_blocks > TP_MAX_BLOCKS || !block_sizes) {
        bt_error("%s: %d output blocks, expected 1 to %d", owner, n_blocks, TP_MAX_BLOCKS);
        return NULL;
    }
    int P = comm_size(group);
    int64_t out_features = 0, out_per_rank = 0;
    for (int b = 0; b < n_blocks; b++) {
        int64_t n = block_sizes[b];
        if (n_blocks == 1) {
            if (!check_positive(owner, "out_features", n)) return NULL;
            if (tp_divide(owner, "out_features", n, P) < 0) return NULL;
        } else if (n <= 0) {
            bt_error("%s: output block %d of %d has %lld rows, expected a positive number", owner,
                     b, n_blocks, (long long)n);
            return NULL;
        } else if (n % P != 0) {
            bt_error("%s: output block %d of %d has %lld rows, not divisible by tp=%d", owner, b,
                     n_blocks, (long long)n, P);
            return NULL;
        }
        out_features += n;
        out_per_rank += n / P;
    }
    struct tp_column_linear *m = nn_module_new(sizeof(*m), name);
    if (!m) return NULL;
    m->in_features = in_features;
    m->out_features = out_features;
    m->out_per_rank = out_per_rank;
    m->n_blocks = n_blocks;
    memcpy(m->block_sizes, block_sizes, (size_t)n_blocks * sizeof(int64_t));
    m->group = group;
    m->tp = P;
    m->tp_rank = comm_rank(group);
    m->seq_dim = 1;
    if (!nn_module_add_parameter(&m->base, "weight", BT_SHAPE(out_per_rank, in_features),
                                 &m->weight))
        return nn_module_discard(&m->base);
    if (bias && !nn_module_add_parameter(&m->base, "bias", BT_SHAPE(out_per_rank), &m->bias))
        return nn_module_discard(&m->base);
    struct nn_split rows = {.parts = P, .part = m->tp_rank, .dim = 0, .n_blocks = n_blocks};
    memcpy(rows.blocks, block_sizes, (size_t)n_blocks * sizeof(int64_t));
    if (nn_module_set_split(&m->base, "weight", &rows) != BT_OK ||
        (bias && nn_module_set_split(&m->base, "bias", &rows) != BT_OK))
        return nn_module_discard(&m->base);
    if (rng) { /* draw the full layer as nn_linear would, keep this rank's rows */
        struct nn_linear *full = nn_linear_create(name, in_features, out_features, bias, rng);
        bt_status st = full ? tp_column_linear_load_full(m, full->weight, full->bias) : BT_ERR;
        nn_module_free(full ? &full->base : NULL);
        if (st != BT_OK) return nn_module_discard(&m->base);
    }
    return m;
}

struct tp_column_linear *tp_column_linear_create(const char *name, int64_t in_features,
                                                 int64_t out_features, bool bias,
                                                 struct comm *group, struct bt_rng *rng) {
    return tp_column_linear_create_fused(name, in_features, 1, (int64_t[]){out_features}, bias,
                                         group, rng);
}

bt_status tp_column_linear_load_full(struct tp_column_linear *m, const bt_tensor *full_weight,
                                     const bt_tensor *full_bias) {
    if (!m) return bt_has_error() ? BT_ERR : bt_error("column-parallel linear: module is NULL");
    const char *owner = OWNER("column-parallel linear", m->base.path);
    if (!check_full(owner, "weight", full_weight, 2,
                    (int64_t[]){m->out_features, m->in_features}) ||
        !check_full_bias(owner, m->bias, full_bias, m->out_features))
        return BT_ERR;
    /* block b's rows [r*n_b/P, (r+1)*n_b/P), block after block */
    if (load_piece(&m->base, "weight", full_weight) != BT_OK) return BT_ERR;
    return m->bias ? load_piece(&m->base, "bias", full_bias) : BT_OK;
}

bt_tensor *tp_column_input(const struct tp_column_linear *m, bt_tensor *x) {
    if (!m) return nn_module_missing("column-parallel linear");
    return m->sequence_parallel ? tp_gather_seq(x, m->group, m->seq_dim) : tp_copy(x, m->group);
}

static bt_tensor *column_forward(struct tp_column_linear *m, bt_tensor *x, bool gelu) {
    if (!m) return nn_module_missing("column-parallel linear");
    bt_scope_push(m->base.path);
    bt_tensor *y = NULL;
    if (m->gather_output && (m->n_blocks > 1 || m->sequence_parallel)) {
        bt_error("column-parallel linear: gather_output needs one output block (this layer has "
                 "%d) and no sequence_parallel",
                 m->n_blocks);
        goto done;
    }
    if (!m->input_is_gathered) x = tp_column_input(m, x);
    y = gelu ? bt_linear_gelu(x, m->weight, m->bias) /* elementwise: its own shard */
             : bt_linear(x, m->weight, m->bias);     /* (..., out/P) */
    if (m->gather_output) y = tp_gather(y, m->group, -1);
done:
    bt_scope_pop();
    return y;
}

bt_tensor *tp_column_linear_forward(struct tp_column_linear *m, bt_tensor *x) {
    return column_forward(m, x, false);
}

bt_tensor *tp_column_linear_gelu_forward(struct tp_column_linear *m, bt_tensor *x) {
    return column_forward(m, x, true);
}

/* ---- row-parallel linear ---- */

struct tp_row_linear *tp_row_linear_create(const char *name, int64_t in_features,
                                           int64_t out_features, bool bias, struct comm *group,
                                           struct bt_rng *rng) {
    const char *owner = OWNER("row-parallel linear", name);
    if (!check_setup(owner, group) || !check_positive(owner, "in_features", in_features) ||
        !check_positive(owner, "out_features", out_features))
        return NULL;
    int P = comm_size(group);
    int64_t in_per_rank = tp_divide(owner, "in_features", in_features, P);
    if (in_per_rank < 0) return NULL;
    struct tp_row_linear *m = nn_module_new(sizeof(*m), name);
    if (!m) return NULL;
    m->in_features = in_features;
    m->out_features = out_features;
    m->in_per_rank = in_per_rank;
    m->group = group;
    m->tp = P;
    m->tp_rank = comm_rank(group);
    m->input_is_parallel = true;
    m->seq_dim = 1;
    if (!nn_module_add_parameter(&m->base, "weight", BT_SHAPE(out_features, in_per_rank),
                                 &m->weight))
        return nn_module_discard(&m->base);
    if (bias && !nn_module_add_parameter(&m->base, "bias", BT_SHAPE(out_features), &m->bias))
        return nn_module_discard(&m->base);
    /* the bias is whole and replicated */
    struct nn_split columns = {.parts = P, .part = m->tp_rank, .dim = 1};
    if (nn_module_set_split(&m->base, "weight", &columns) != BT_OK)
        return nn_module_discard(&m->base);
    if (rng) {
        struct nn_linear *full = nn_linear_create(name, in_features, out_features, bias, rng);
        bt_status st = full ? tp_row_linear_load_full(m, full->weight, full->bias) : BT_ERR;
        nn_module_free(full ? &full->base : NULL);
        if (st != BT_OK) return nn_module_discard(&m->base);
    }
    return m;
}

bt_status tp_row_linear_load_full(struct tp_row_linear *m, const bt_tensor *full_weight,
                                  const bt_tensor *full_bias) {
    if (!m) return bt_has_error() ? BT_ERR : bt_error("row-parallel linear: module is NULL");
    const char *owner = OWNER("row-parallel linear", m->base.path);
    if (!check_full(owner, "weight", full_weight, 2,
                    (int64_t[]){m->out_features, m->in_features}) ||
        !check_full_bias(owner, m->bias, full_bias, m->out_features))
        return BT_ERR;
    if (load_piece(&m->base, "weight", full_weight) != BT_OK) return BT_ERR; /* its columns */
    return m->bias ? load_piece(&m->base, "bias", full_bias) : BT_OK;        /* whole */
}

bt_tensor *tp_row_linear_forward(struct tp_row_linear *m, bt_tensor *x) {
    if (!m) return nn_module_missing("row-parallel linear");
    bt_scope_push(m->base.path);
    bt_tensor *y = NULL;
    if (m->sequence_parallel && !m->input_is_parallel) {
        bt_error("row-parallel linear: sequence_parallel needs input_is_parallel");
        goto done;
    }
    if (!m->input_is_parallel) x = tp_split(x, m->group, -1); /* (..., in) -> (..., in/P) */
    y = bt_linear(x, m->weight, NULL);                        /* a partial sum (..., out) */
    y = m->sequence_parallel ? tp_scatter_seq(y, m->group, m->seq_dim) : tp_reduce(y, m->group);
    /* once, after the sum; under SP on this rank's slice only, so its gradient is partial and
     * tp_copy sums it over the group */
    if (m->bias) y = bt_add(y, m->sequence_parallel ? tp_copy(m->bias, m->group) : m->bias);
done:
    bt_scope_pop();
    return y;
}

/* ---- vocab-parallel embedding ---- */

struct tp_vocab_embedding *tp_vocab_embedding_create(const char *name, int64_t num_embeddings,
                                                     int64_t embedding_dim, struct comm *group,
                                                     struct bt_rng *rng) {
    const char *owner = OWNER("vocab-parallel embedding", name);
    if (!check_setup(owner, group) || !check_positive(owner, "num_embeddings", num_embeddings) ||
        !check_positive(owner, "embedding_dim", embedding_dim))
        return NULL;
    int P = comm_size(group);
    int64_t per_rank = tp_divide(owner, "num_embeddings", num_embeddings, P);
    if (per_rank < 0) return NULL;
    struct tp_vocab_embedding *m = nn_module_new(sizeof(*m), name);
    if (!m) return NULL;
    m->num_embeddings = num_embeddings;
    m->embedding_dim = embedding_dim;
    m->vocab_per_rank = per_rank;
    m->group = group;
    m->tp = P;
    m->tp_rank = comm_rank(group);
    m->vocab_start = m->tp_rank * per_rank;
    m->seq_dim = 1;
    struct nn_split rows = {.parts = P, .part = m->tp_rank, .dim = 0};
    if (!nn_module_add_parameter(&m->base, "weight", BT_SHAPE(per_rank, embedding_dim),
                                 &m->weight) ||
        nn_module_set_split(&m->base, "weight", &rows) != BT_OK)
        return nn_module_discard(&m->base);
    if (rng) {
        struct nn_embedding *full = nn_embedding_create(name, num_embeddings, embedding_dim, rng);
        bt_status st = full ? tp_vocab_embedding_load_full(m, full->weight) : BT_ERR;
        nn_module_free(full ? &full->base : NULL);
        if (st != BT_OK) return nn_module_discard(&m->base);
    }
    return m;
}

bt_status tp_vocab_embedding_load_full(struct tp_vocab_embedding *m, const bt_tensor *full_weight) {
    if (!m) return bt_has_error() ? BT_ERR : bt_error("vocab-parallel embedding: module is NULL");
    const char *owner = OWNER("vocab-parallel embedding", m->base.path);
    if (!check_full(owner, "weight", full_weight, 2,
                    (int64_t[]){m->num_embeddings, m->embedding_dim}))
        return BT_ERR;
    return load_piece(&m->base, "weight", full_weight); /* its rows */
}

/* ids -> this rank's rows: local ids (0 for a row held elsewhere) and the mask of those held
 * elsewhere (..., 1), as step tensors on the ids' device (worked out on the host: the ids are
 * few); false with a message on a bad id */
static bool local_ids(const struct tp_vocab_embedding *m, bt_tensor *idx, bt_tensor **local,
                      bt_tensor **elsewhere) {
    bt_device device = idx->storage->device;
    bt_tensor *ids = device.type == BT_DEVICE_CPU ? idx : bt_to_device(idx, bt_cpu());
    if (ids && !(ids->dtype == BT_I64 && bt_is_contiguous(ids))) ids = bt_to_dtype(ids, BT_I64);
    int64_t shape[BT_MAX_DIMS];
    for (int k = 0; k < idx->ndim; k++)
        shape[k] = idx->shape[k];
    shape[idx->ndim] = 1;
    *local = ids ? bt_empty(idx->ndim, idx->shape, BT_I64, bt_cpu()) : NULL;
    *elsewhere = *local ? bt_empty(idx->ndim + 1, shape, BT_BOOL, bt_cpu()) : NULL;
    if (!*elsewhere) return false;
    const int64_t *id = bt_data(ids);
    int64_t *lid = bt_data(*local);
    uint8_t *away = bt_data(*elsewhere);
    for (int64_t n = 0, N = bt_numel(idx); n < N; n++) {
        if (id[n] < 0 || id[n] >= m->num_embeddings) {
            bt_error("vocab-parallel embedding: index %lld at position %lld is out of range [0, "
                     "%lld)",
                     (long long)id[n], (long long)n, (long long)m->num_embeddings);
            return false;
        }
        int64_t l = id[n] - m->vocab_start;
        bool here = l >= 0 && l < m->vocab_per_rank;
        lid[n] = here ? l : 0;
        away[n] = !here;
    }
    if (device.type == BT_DEVICE_CPU) return true;
    *local = bt_to_device(*local, device);
    *elsewhere = *local ? bt_to_device(*elsewhere, device) : NULL;
    return *elsewhere != NULL;
}

bt_tensor *tp_vocab_embedding_forward(struct tp_vocab_embedding *m, bt_tensor *idx) {
    if (!m) return nn_module_missing("vocab-parallel embedding");
    bt_scope_push(m->base.path);
    bt_tensor *y = NULL, *local = NULL, *elsewhere = NULL;
    if (!idx) {
        if (!bt_has_error()) bt_error("vocab-parallel embedding: idx is NULL");
        goto done;
    }
    if (idx->dtype != BT_I32 && idx->dtype != BT_I64 && idx->dtype != BT_U16) {
        bt_error("vocab-parallel embedding: indices must be int32, int64 or uint16, got %s %s",
                 bt_dtype_name(idx->dtype), SHAPE(idx));
        goto done;
    }
    if (idx->ndim + 1 > BT_MAX_DIMS) {
        bt_error("vocab-parallel embedding: indices %s must have at most %d dims", SHAPE(idx),
                 BT_MAX_DIMS - 1);
        goto done;
    }
    if (!local_ids(m, idx, &local, &elsewhere)) goto done;
    y = bt_embedding(m->weight, local);                   /* (..., C) */
    if (m->tp > 1) y = bt_masked_fill(y, elsewhere, 0.0); /* rows another rank holds */
    y = m->sequence_parallel ? tp_scatter_seq(y, m->group, m->seq_dim) : tp_reduce(y, m->group);
done:
    bt_scope_pop();
    return y;
}

bt_tensor *tp_vocab_embedding_attend(struct tp_vocab_embedding *m, bt_tensor *x) {
    if (!m) return nn_module_missing("vocab-parallel embedding");
    bt_scope_push(m->base.path);
    x = m->sequence_parallel ? tp_gather_seq(x, m->group, m->seq_dim) : tp_copy(x, m->group);
    bt_tensor *logits = bt_linear(x, m->weight, NULL); /* (..., V/P) */
    bt_scope_pop();
    return logits;
}
