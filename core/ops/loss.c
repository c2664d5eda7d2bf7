/* cross_entropy front end: fused log-softmax + negative log-likelihood over the last dim of logits,
 * mean over the targets that are not -1 (the ignore index). When every target is -1 the loss is 0
 * and so is the gradient (PyTorch returns nan; a fully padded batch should not poison a run). */
#include "core/ops.h"
#include "core/ops/op_common.h"

/* bt_linear_cross_entropy's logits per chunk at most (rows rounded down to a multiple of 64) */
#define LINEAR_CE_CHUNK_BYTES ((int64_t)128 << 20)

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

/* targets as contiguous int64 on their device, each checked on the host to be -1 or in [0, V);
 * *counted (when not NULL) gets how many are not -1. NULL with a message naming op, and the
 * tensor `what` the classes are the last dim of, otherwise. */
static bt_tensor *checked_targets(const char *op, bt_tensor *targets, int64_t V, const char *what,
                                  const bt_tensor *of, const struct bt_backend *be,
                                  int64_t *counted) {
    bt_tensor *t64 = targets_as_int64(targets, be);
    bt_tensor *host_t = t64 ? bt_to_device(t64, bt_cpu()) : NULL;
    if (!host_t) return NULL;
    const int64_t *t = bt_data(host_t);
    int64_t n_counted = 0;
    for (int64_t n = 0, N = bt_numel(targets); n < N; n++) {
        if (t[n] != -1 && (t[n] < 0 || t[n] >= V)) {
            bt_error("%s: target %lld at position %lld is out of range [0, %lld) for %s %s (-1 = "
                     "ignore)",
                     op, (long long)t[n], (long long)n, (long long)V, what, SHAPE(of));
            return NULL;
        }
        n_counted += t[n] >= 0;
    }
    if (counted) *counted = n_counted;
    return t64;
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
    bt_tensor *t64 = checked_targets("cross_entropy", targets, V, "logits", logits, be, NULL);
    if (!t64) return NULL;
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

/* ---- linear + cross-entropy, without the logits ---- */

/* saved = {dx (N, C) or NULL, dw (V, C) or NULL}: the loss's gradients of x and w for a gradient
 * of 1, worked out in the forward; the backward writes them, times the gradient that comes, into
 * each input's gradient in one pass (never handing the saved buffer itself to autograd: a second
 * backward with retain_graph reads it again) */
static bt_status linear_cross_entropy_backward(struct ag_node *node) {
    float gv = (float)bt_item(node->out->grad);
    for (int k = 0; k < 2; k++) {
        bt_tensor *in = node->inputs[k], *d = node->saved[k];
        if (!d || !ag_wants_grad(in)) continue;
        float beta;
        bt_tensor *target = ag_grad_target(in, &beta);
        if (!target) return BT_ERR;
        const float *dp = bt_f32(d);
        /* target (+)= gv * d: the backward of y = gv * x */
        op_backend("backward", d)
            ->unary_backward(BT_UN_MUL_SCALAR, bt_f32(target), dp, dp, dp, bt_numel(d), gv, beta);
    }
    return BT_OK;
}

bt_tensor *bt_linear_cross_entropy(bt_tensor *x, bt_tensor *w, bt_tensor *targets) {
    const char *op = "linear_cross_entropy";
    if (!OP_INPUTS(op, x, w, targets)) return NULL;
    if (!op_check_float(op, "x", x) || !op_check_float(op, "w", w)) return NULL;
    if (targets->dtype != BT_I32 && targets->dtype != BT_I64 && targets->dtype != BT_U16) {
        bt_error("%s: targets must be int32, int64 or uint16, got %s %s", op,
                 bt_dtype_name(targets->dtype), SHAPE(targets));
        return NULL;
    }
    if (!op_check_same_device(op, x, w) || !op_check_same_device(op, x, targets)) return NULL;
    if (x->ndim != 2 || w->ndim != 2 || w->shape[1] != x->shape[1] || targets->ndim != 1 ||
        targets->shape[0] != x->shape[0]) {
        bt_error("%s: expected x (N, C), w (V, C) and targets (N), got x %s, w %s, targets %s", op,
                 SHAPE(x), SHAPE(w), SHAPE(targets));
        return NULL;
    }
    const struct bt_backend *be = op_backend(op, x);
    if (!be) return NULL;
    int64_t N = x->shape[0], C = x->shape[1], V = w->shape[0], count = 0;
    bt_tensor *t64 = checked_targets(op, targets, V, "w", w, be, &count);
    bt_tensor *xd = t64 ? op_contiguous_data(x) : NULL, *wd = xd ? op_contiguous_data(w) : NULL;
    if (!wd) return NULL;
    bool grad = bt_is_grad_enabled() && (x->requires_grad || w->requires_grad);
    int64_t rows = LINEAR_CE_CHUNK_BYTES / (V > 0 ? V * (int64_t)sizeof(float) : 1) / 64 * 64;
    if (rows < 64) rows = 64;
    if (rows > N) rows = N;
    bt_tensor *logits = op_new_like_shape(x, 2, (int64_t[2]){rows, V});
    bt_tensor *lse = logits ? op_new_like_shape(x, 1, &rows) : NULL;
    bt_tensor *dx = lse && grad && x->requires_grad ? op_new_like_shape(x, 2, x->shape) : NULL;
    bt_tensor *dw = lse && grad && w->requires_grad ? op_new_like_shape(x, 2, w->shape) : NULL;
    bt_tensor *out = lse ? op_new_like_shape(x, 0, (int64_t[1]){0}) : NULL;
    if (!out || (grad && x->requires_grad && !dx) || (grad && w->requires_grad && !dw)) return NULL;
    if (grad && dw && N == 0) be->fill(bt_f32(dw), BT_F32, V * C, 0.0);
    float *l = bt_f32(logits), *s = bt_f32(lse);
    const float *xp = bt_f32(xd), *wp = bt_f32(wd);
    const int64_t *tp = bt_data(t64);
    double total = 0.0;
    for (int64_t r0 = 0; r0 < N; r0 += rows) {
        int64_t r = N - r0 < rows ? N - r0 : rows, counted;
        be->gemm(false, true, 1, r, V, C, 1.0f, xp + r0 * C, C, 0, wp, C, 0, 0.0f, l, 0);
        total += be->cross_entropy(s, l, tp + r0, r, V, &counted);
        if (!grad) continue;
        /* dlogits in place of the logits: (softmax - onehot) / count */
        be->cross_entropy_backward(l, l, s, tp + r0, r, V, count ? 1.0f / (float)count : 0.0f,
                                   0.0f);
        if (dx)
            be->gemm(false, false, 1, r, C, V, 1.0f, l, V, 0, wp, C, 0, 0.0f, bt_f32(dx) + r0 * C,
                     0);
        if (dw)
            be->gemm(true, false, 1, V, C, r, 1.0f, l, V, 0, xp + r0 * C, C, 0, r0 ? 1.0f : 0.0f,
                     bt_f32(dw), 0);
    }
    bt_fill(out, count ? total / (double)count : 0.0);
    bt_tensor *inputs[2] = {x, w};
    struct ag_node *node = ag_record(op, linear_cross_entropy_backward, out, 2, inputs);
    if (node) {
        node->saved[0] = dx;
        node->saved[1] = dw;
    }
    return out;
}
