/* embedding front end: rows of weight (V, C) gathered by integer indices of any shape. Indices are
 * converted to contiguous int64 and range-checked here, so the kernels never see a bad index; they
 * receive no gradient. */
#include "core/ops.h"
#include "core/ops/op_common.h"

/* idx as a contiguous int64 tensor (idx itself when it already is one) */
static bt_tensor *indices_as_int64(bt_tensor *idx, const struct bt_backend *be) {
    if (idx->dtype == BT_I64 && bt_is_contiguous(idx)) return idx;
    bt_tensor *out = bt_empty(idx->ndim, idx->shape, BT_I64, idx->storage->device);
    if (!out) return NULL;
    be->copy_strided(bt_data(out), BT_I64, bt_data(idx), idx->dtype, idx->ndim, idx->shape,
                     idx->stride);
    return out;
}

/* saved[0] = the int64 indices (N) */
static bt_status embedding_backward(struct ag_node *node) {
    bt_tensor *w = node->inputs[0], *g = node->out->grad, *idx = node->saved[0];
    int64_t V = w->shape[0], C = w->shape[1], N = bt_numel(idx);
    float beta;
    bt_tensor *gw = ag_grad_target(w, &beta);
    if (!gw) return BT_ERR;
    if (beta == 0.0f) bt_fill(gw, 0.0); /* the kernel only adds */
    op_backend("backward", g)->embedding_backward(bt_f32(gw), bt_f32(g), bt_data(idx), N, C, V);
    return BT_OK;
}

bt_tensor *bt_embedding(bt_tensor *weight, bt_tensor *idx) {
    if (!OP_INPUTS("embedding", weight, idx)) return NULL;
    if (!op_check_float("embedding", "weight", weight)) return NULL;
    if (weight->ndim != 2) {
        bt_error("embedding: weight must be (V, C), got %s", SHAPE(weight));
        return NULL;
    }
    if (idx->dtype != BT_I32 && idx->dtype != BT_I64 && idx->dtype != BT_U16) {
        bt_error("embedding: indices must be int32, int64 or uint16, got %s %s",
                 bt_dtype_name(idx->dtype), SHAPE(idx));
        return NULL;
    }
    if (!op_check_same_device("embedding", weight, idx)) return NULL;
    if (idx->ndim + 1 > BT_MAX_DIMS) {
        bt_error("embedding: indices %s have too many dimensions (at most %d)", SHAPE(idx),
                 BT_MAX_DIMS - 1);
        return NULL;
    }
    const struct bt_backend *be = op_backend("embedding", weight);
    if (!be) return NULL;
    int64_t V = weight->shape[0], C = weight->shape[1], N = bt_numel(idx);
    bt_tensor *idx64 = indices_as_int64(idx, be);
    if (!idx64) return NULL;
    bt_tensor *host_ix = bt_to_device(idx64, bt_cpu()); /* checked on the host */
    if (!host_ix) return NULL;
    const int64_t *ix = bt_data(host_ix);
    for (int64_t n = 0; n < N; n++)
        if (ix[n] < 0 || ix[n] >= V) {
            bt_error("embedding: index %lld at position %lld is out of range [0, %lld) for weight "
                     "%s",
                     (long long)ix[n], (long long)n, (long long)V, SHAPE(weight));
            return NULL;
        }
    int64_t shape[BT_MAX_DIMS];
    for (int k = 0; k < idx->ndim; k++)
        shape[k] = idx->shape[k];
    shape[idx->ndim] = C;
    bt_tensor *wc = op_contiguous_data(weight);
    bt_tensor *out = wc ? op_new_like_shape(weight, idx->ndim + 1, shape) : NULL;
    if (!out) return NULL;
    be->embedding(bt_f32(out), bt_f32(wc), bt_data(idx64), N, C);
    struct ag_node *node = ag_record("embedding", embedding_backward, out, 1, &weight);
    if (node) node->saved[0] = idx64;
    return out;
}
