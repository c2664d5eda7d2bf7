/* cross_entropy front end: fused log-softmax + negative log-likelihood over the last dim of logits,
 * mean over the targets that are not -1 (the ignore index). When every target is -1 the loss is 0
 * and so is the gradient (PyTorch returns nan; a fully padded batch should not poison a run). */
#include "core/ops.h"
#include "core/ops/op_common.h"

/* t as a contiguous int64 tensor (t itself when it already is one) */
static bt_tensor *targets_as_int64(bt_tensor *t, const struct bt_backend *be) {
    if (t->dtype == BT_I64 && bt_is_contiguous(t)) return t;
    bt_tensor *out = bt_empty(t->ndim, t->shape, BT_I64, t->storage->device);
    if (!out) return NULL;
    be->copy_strided(bt_data(out), BT_I64, bt_data(t), t->dtype, t->ndim, t->shape, t->stride);
    return out;
}

/* saved = {logits (N, V), lse (N), targets (N)}, all contiguous; i[0] = number of counted rows */
static bt_status cross_entropy_backward(struct ag_node *node) {
    bt_tensor *logits = node->inputs[0], *g = node->out->grad;
    bt_tensor *lc = node->saved[0], *lse = node->saved[1], *targets = node->saved[2];
    int64_t V = logits->shape[logits->ndim - 1], N = bt_numel(targets), count = node->i[0];
    /* loss = sum / count, so each counted row's gradient is scaled by gout / count */
    float scale = count ? (float)(bt_item(g) / (double)count) : 0.0f;
    float beta;
    bt_tensor *gl = ag_grad_target(logits, &beta);
    if (!gl) return BT_ERR;
    op_backend("backward", g)
        ->cross_entropy_backward(bt_f32(gl), bt_f32(lc), bt_f32(lse), bt_data(targets), N, V, scale,
                                 beta);
    return BT_OK;
}

static bool targets_match(const bt_tensor *logits, const bt_tensor *targets) {
    if (targets->ndim != logits->ndim - 1) return false;
    for (int k = 0; k < targets->ndim; k++)
        if (targets->shape[k] != logits->shape[k]) return false;
    return true;
}

bt_tensor *bt_cross_entropy(bt_tensor *logits, bt_tensor *targets) {
    if (!OP_INPUTS("cross_entropy", logits, targets)) return NULL;
    if (!op_check_float("cross_entropy", "logits", logits)) return NULL;
    if (targets->dtype != BT_I32 && targets->dtype != BT_I64 && targets->dtype != BT_U16) {
        bt_error("cross_entropy: targets must be int32, int64 or uint16, got %s %s",
                 bt_dtype_name(targets->dtype), SHAPE(targets));
        return NULL;
    }
    if (!op_check_same_device("cross_entropy", logits, targets)) return NULL;
    if (logits->ndim < 1 || !targets_match(logits, targets)) {
        bt_error("cross_entropy: targets %s do not match logits %s (targets must have the logits' "
                 "shape without the last dim)",
                 SHAPE(targets), SHAPE(logits));
        return NULL;
    }
    const struct bt_backend *be = op_backend("cross_entropy", logits);
    if (!be) return NULL;
    int64_t V = logits->shape[logits->ndim - 1], N = bt_numel(targets);
    bt_tensor *t64 = targets_as_int64(targets, be);
    if (!t64) return NULL;
    bt_tensor *host_t = bt_to_device(t64, bt_cpu()); /* checked on the host */
    if (!host_t) return NULL;
    const int64_t *t = bt_data(host_t);
    for (int64_t n = 0; n < N; n++)
        if (t[n] != -1 && (t[n] < 0 || t[n] >= V)) {
            bt_error("cross_entropy: target %lld at position %lld is out of range [0, %lld) for "
                     "logits %s (-1 = ignore)",
                     (long long)t[n], (long long)n, (long long)V, SHAPE(logits));
            return NULL;
        }
    bt_tensor *lc = op_contiguous_data(logits);
    bt_tensor *lse = lc ? op_new_like_shape(logits, 1, &N) : NULL;
    bt_tensor *out = lse ? op_new_like_shape(logits, 0, (int64_t[1]){0}) : NULL;
    if (!out) return NULL;
    int64_t count = 0;
    double total = be->cross_entropy(bt_f32(lse), bt_f32(lc), bt_data(t64), N, V, &count);
    bt_fill(out, count ? total / (double)count : 0.0);
    struct ag_node *node = ag_record("cross_entropy", cross_entropy_backward, out, 1, &logits);
    if (node) {
        node->saved[0] = lc;
        node->saved[1] = lse;
        node->saved[2] = t64;
        node->i[0] = count;
    }
    return out;
}
