/* The tensor-parallel autograd ops (parallel/tp.h): tp_copy/tp_reduce (Megatron's f and g),
 * tp_gather/tp_split along a dim, the sequence-parallel pair tp_gather_seq/tp_scatter_seq, and the
 * vocab-parallel cross-entropy. Each is a front end that runs a blocking collective from comm/ and
 * records a node whose backward runs the conjugate collective. */
#include <math.h>
#include <stdint.h>

#include "core/autograd.h"
#include "core/runtime.h"
#include "parallel/tp.h"

#define SHAPE(t) bt_shape_str((t), (char[96]){0}, 96)

/* ---- helpers ---- */

/* The group travels to the backward in the node's last integer slot: ag_node has no pointer one,
 * and a group outlives every step (round trip through intptr_t is exact). */
#define GROUP_SLOT (AG_MAX_ARGS - 1)

static void save_group(struct ag_node *node, struct comm *group) {
    node->i[GROUP_SLOT] = (int64_t)(intptr_t)group;
}

static struct comm *saved_group(const struct ag_node *node) {
    return (struct comm *)(intptr_t)node->i[GROUP_SLOT];
}

/* Checks common to the ops: x present, float32 (on any device: comm moves host tensors over MPI
 * and device ones over NCCL); a group.
 * Returns the group's size, or 0 with a message. */
static int check_op(const char *op, const char *what, const bt_tensor *x, struct comm *group) {
    if (!x) {
        if (!bt_has_error()) bt_error("%s: %s is NULL", op, what);
        return 0;
    }
    if (!group) {
        bt_error("%s: group is NULL", op);
        return 0;
    }
    if (x->dtype != BT_F32) {
        bt_error("%s: %s must be float32, got %s %s", op, what, bt_dtype_name(x->dtype), SHAPE(x));
        return 0;
    }
    return comm_size(group);
}

/* dim wrapped into [0, ndim), or -1 with a message */
static int check_dim(const char *op, const bt_tensor *x, int dim) {
    int d = bt_wrap_dim(dim, x->ndim);
    if (d < 0) bt_error("%s: dimension %d out of range for x %s", op, dim, SHAPE(x));
    return d;
}

static bool check_divisible_dim(const char *op, const bt_tensor *x, int d, int P) {
    if (x->shape[d] % P == 0) return true;
    bt_error("%s: dimension %d of x %s has size %lld, not divisible by tp=%d", op, d, SHAPE(x),
             (long long)x->shape[d], P);
    return false;
}

/* A contiguous float32 step copy of x. */
static bt_tensor *contiguous_copy(const bt_tensor *x) {
    bt_tensor *c = bt_empty(x->ndim, x->shape, BT_F32, x->storage->device);
    if (c && bt_copy_(c, x) != BT_OK) return NULL;
    return c;
}

/* x's shape with dimension d multiplied by num and divided by den, as a new step tensor */
static bt_tensor *empty_resized(const bt_tensor *x, int d, int64_t num, int64_t den) {
    int64_t shape[BT_MAX_DIMS];
    for (int k = 0; k < x->ndim; k++)
        shape[k] = x->shape[k];
    shape[d] = shape[d] * num / den;
    return bt_empty(x->ndim, shape, BT_F32, x->storage->device);
}

/* x viewed as (outer, P, block) with the middle index first, (P, outer, block): rank r's block
 * along dimension d of x (of P equal blocks) is then r's contiguous run in comm's rank order. No
 * autograd; x itself when outer is 1. */
static bt_tensor *rank_major_view(bt_tensor *x, int d, int P) {
    int64_t outer = 1;
    for (int k = 0; k < d; k++)
        outer *= x->shape[k];
    if (outer == 1) return x;
    int64_t block = bt_numel(x) / (outer * P);
    bool grad_mode = bt_set_grad_enabled(false);
    bt_tensor *v = bt_reshape(x, BT_SHAPE(outer, P, block)); /* copies only a strided x */
    v = bt_permute(v, (int[]){1, 0, 2});
    bt_set_grad_enabled(grad_mode);
    return v;
}

/* comm takes device tensors contiguous only (it stages strided host ones itself) */
static bool needs_staging(const bt_tensor *t) {
    return t->storage->device.type != BT_DEVICE_CPU && !bt_is_contiguous(t);
}

/* out (x's shape with dim d P-fold) <- every rank's x, in rank order along d */
static bt_status gather_along(struct comm *group, bt_tensor *x, int d, bt_tensor *out) {
    if (bt_numel(x) == 0) return BT_OK; /* the same on every rank: nothing to move */
    bt_tensor *dst = rank_major_view(out, d, comm_size(group));
    bt_tensor *src = dst && needs_staging(x) ? contiguous_copy(x) : x;
    if (!dst || !src) return BT_ERR;
    if (!needs_staging(dst)) return comm_allgather(group, src, dst);
    /* into a contiguous (P, outer, block) first, then permuted into out (outer, P, block): the
     * copy reads strided and writes contiguous, which device kernels do */
    bt_tensor *whole = bt_empty(dst->ndim, dst->shape, BT_F32, dst->storage->device);
    if (!whole || comm_allgather(group, src, whole) != BT_OK) return BT_ERR;
    bool grad_mode = bt_set_grad_enabled(false);
    bt_tensor *from = bt_permute(whole, (int[]){1, 0, 2});
    bt_tensor *to = from ? bt_reshape(out, 3, from->shape) : NULL;
    bt_set_grad_enabled(grad_mode);
    return to ? bt_copy_(to, from) : BT_ERR;
}

/* out (x's shape with dim d divided by P) <- sum over the ranks of their block `rank` along d */
static bt_status reduce_scatter_along(struct comm *group, bt_tensor *x, int d, bt_tensor *out) {
    if (bt_numel(x) == 0) return BT_OK;
    bt_tensor *src = rank_major_view(x, d, comm_size(group));
    if (src && needs_staging(src)) src = contiguous_copy(src);
    return src ? comm_reduce_scatter(group, src, out, COMM_SUM) : BT_ERR;
}

/* Records op on out with x as its input and the group (and dim) for the backward. */
static void record(const char *op, ag_backward_fn backward, bt_tensor *out, bt_tensor *x,
                   struct comm *group, int d) {
    struct ag_node *node = ag_record(op, backward, out, 1, &x);
    if (!node) return;
    node->i[0] = d;
    save_group(node, group);
}

/* ---- f and g: identity / all-reduce ---- */

/* dx = sum over the group of dy */
static bt_status copy_backward(struct ag_node *node) {
    bt_tensor *sum = contiguous_copy(node->out->grad);
    if (!sum || comm_allreduce(saved_group(node), sum, COMM_SUM) != BT_OK) return BT_ERR;
    return ag_accumulate(node->inputs[0], sum);
}

/* dx = dy (the output is replicated, and so is its gradient) */
static bt_status passthrough_backward(struct ag_node *node) {
    return ag_accumulate(node->inputs[0], node->out->grad);
}

bt_tensor *tp_copy(bt_tensor *x, struct comm *group) {
    int P = check_op("tp_copy", "x", x, group);
    if (P == 0) return NULL;
    if (P == 1 || !bt_is_grad_enabled() || !x->requires_grad) return x; /* nothing to record */
    bt_tensor *out = bt_detach(x); /* the same storage: the forward is the identity */
    if (!out) return NULL;
    record("tp_copy", copy_backward, out, x, group, 0);
    return out;
}

bt_tensor *tp_reduce(bt_tensor *x, struct comm *group) {
    int P = check_op("tp_reduce", "x", x, group);
    if (P == 0) return NULL;
    if (P == 1) return x;
    bt_tensor *out = contiguous_copy(x);
    if (!out || comm_allreduce(group, out, COMM_SUM) != BT_OK) return NULL;
    record("tp_reduce", passthrough_backward, out, x, group, 0);
    return out;
}

/* ---- gather / split along a dim ---- */

/* dx = this rank's block of dy along d */
static bt_status keep_block_backward(struct ag_node *node) {
    bt_tensor *x = node->inputs[0], *g = node->out->grad;
    int d = (int)node->i[0];
    int64_t n = x->shape[d];
    bool grad_mode = bt_set_grad_enabled(false);
    bt_tensor *block = bt_narrow(g, d, comm_rank(saved_group(node)) * n, n);
    bt_set_grad_enabled(grad_mode);
    if (block && !bt_is_contiguous(block)) block = contiguous_copy(block);
    return block ? ag_accumulate(x, block) : BT_ERR;
}

/* dx = every rank's dy along d, in rank order */
static bt_status gather_backward(struct ag_node *node) {
    bt_tensor *x = node->inputs[0], *g = node->out->grad;
    bt_tensor *full = bt_empty(x->ndim, x->shape, BT_F32, x->storage->device);
    if (!full || gather_along(saved_group(node), g, (int)node->i[0], full) != BT_OK) return BT_ERR;
    return ag_accumulate(x, full);
}

/* dx = the sum over the group of every rank's dy, this rank's block along d */
static bt_status reduce_scatter_backward(struct ag_node *node) {
    bt_tensor *x = node->inputs[0], *g = node->out->grad;
    bt_tensor *part = bt_empty(x->ndim, x->shape, BT_F32, x->storage->device);
    if (!part || reduce_scatter_along(saved_group(node), g, (int)node->i[0], part) != BT_OK)
        return BT_ERR;
    return ag_accumulate(x, part);
}

/* all-gather along dim forward; `backward` says what the gradient does */
static bt_tensor *gather_op(const char *op, ag_backward_fn backward, bt_tensor *x,
                            struct comm *group, int dim) {
    int P = check_op(op, "x", x, group);
    if (P == 0) return NULL;
    int d = check_dim(op, x, dim);
    if (d < 0) return NULL;
    if (P == 1) return x;
    bt_tensor *out = empty_resized(x, d, P, 1);
    if (!out || gather_along(group, x, d, out) != BT_OK) return NULL;
    record(op, backward, out, x, group, d);
    return out;
}

bt_tensor *tp_gather(bt_tensor *x, struct comm *group, int dim) {
    return gather_op("tp_gather", keep_block_backward, x, group, dim);
}

bt_tensor *tp_gather_seq(bt_tensor *x, struct comm *group, int dim) {
    return gather_op("tp_gather_seq", reduce_scatter_backward, x, group, dim);
}

bt_tensor *tp_split(bt_tensor *x, struct comm *group, int dim) {
    int P = check_op("tp_split", "x", x, group);
    if (P == 0) return NULL;
    int d = check_dim("tp_split", x, dim);
    if (d < 0 || !check_divisible_dim("tp_split", x, d, P)) return NULL;
    if (P == 1) return x;
    int64_t n = x->shape[d] / P;
    bool grad_mode = bt_set_grad_enabled(false);
    bt_tensor *out = bt_narrow(x, d, comm_rank(group) * n, n); /* a view: no copy */
    bt_set_grad_enabled(grad_mode);
    if (!out) return NULL;
    record("tp_split", gather_backward, out, x, group, d);
    return out;
}

bt_tensor *tp_scatter_seq(bt_tensor *x, struct comm *group, int dim) {
    int P = check_op("tp_scatter_seq", "x", x, group);
    if (P == 0) return NULL;
    int d = check_dim("tp_scatter_seq", x, dim);
    if (d < 0 || !check_divisible_dim("tp_scatter_seq", x, d, P)) return NULL;
    if (P == 1) return x;
    bt_tensor *out = empty_resized(x, d, 1, P);
    if (!out || reduce_scatter_along(group, x, d, out) != BT_OK) return NULL;
    record("tp_scatter_seq", gather_backward, out, x, group, d);
    return out;
}

/* ---- vocab-parallel cross-entropy ---- */

/* t as a contiguous int64 tensor on the CPU (t itself when it already is one) */
static bt_tensor *host_int64(bt_tensor *t) {
    if (t->storage->device.type != BT_DEVICE_CPU && !(t = bt_to_device(t, bt_cpu()))) return NULL;
    if (t->dtype == BT_I64 && bt_is_contiguous(t)) return t;
    return bt_to_dtype(t, BT_I64);
}

/* saved = {logits (N, V/P), lse (N, the whole vocabulary's), targets (N): this rank's column of
 * each row's target, V/P for a target another rank holds, -1 for an ignored row}, all contiguous
 * on the logits' device; i[0] = counted rows. The backend's cross-entropy backward then gives
 * dlogits[n, v] (+)= (exp(logits[n, v] - lse[n]) - [v == targets[n]]) * gout / count */
static bt_status cross_entropy_backward(struct ag_node *node) {
    bt_tensor *logits = node->inputs[0], *g = node->out->grad, *lc = node->saved[0];
    int64_t V = logits->shape[logits->ndim - 1], N = bt_numel(node->saved[2]), count = node->i[0];
    const struct bt_backend *be = bt_backend_for(lc->storage->device, "tp_cross_entropy");
    float scale = count ? (float)(bt_item(g) / (double)count) : 0.0f;
    float beta;
    bt_tensor *gl = be ? ag_grad_target(logits, &beta) : NULL;
    if (!gl) return BT_ERR;
    be->cross_entropy_backward(bt_f32(gl), bt_f32(lc), bt_f32(node->saved[1]),
                               bt_data(node->saved[2]), N, V, scale, beta);
    return BT_OK;
}

static bool targets_match(const bt_tensor *logits, const bt_tensor *targets) {
    if (targets->ndim != logits->ndim - 1) return false;
    for (int k = 0; k < targets->ndim; k++)
        if (targets->shape[k] != logits->shape[k]) return false;
    return true;
}

/* The rows' log-sum-exp over the whole vocabulary and the sum of their target logits, from each
 * rank's piece: the backend's cross-entropy kernel gives each row's log-sum-exp over this rank's
 * columns (lse_r), an embedding lookup of the flattened logits the target logit where this rank
 * holds it; then lse = m + log sum_r exp(lse_r - m), m = max_r lse_r, over the group (on the
 * host: N values a rank). So the kernels are the device's own and only (N) vectors travel. */
bt_tensor *tp_cross_entropy(bt_tensor *logits, bt_tensor *targets, struct comm *group) {
    const char *op = "tp_cross_entropy";
    int P = check_op(op, "logits", logits, group);
    if (P == 0) return NULL;
    if (!targets) {
        if (!bt_has_error()) bt_error("%s: targets is NULL", op);
        return NULL;
    }
    if (targets->dtype != BT_I32 && targets->dtype != BT_I64 && targets->dtype != BT_U16) {
        bt_error("%s: targets must be int32, int64 or uint16, got %s %s", op,
                 bt_dtype_name(targets->dtype), SHAPE(targets));
        return NULL;
    }
    if (logits->ndim < 1 || !targets_match(logits, targets) ||
        !bt_device_equal(logits->storage->device, targets->storage->device)) {
        bt_error("%s: targets %s do not match logits %s (targets must have the logits' shape "
                 "without the last dim, on the same device)",
                 op, SHAPE(targets), SHAPE(logits));
        return NULL;
    }
    bt_device dev = logits->storage->device;
    const struct bt_backend *be = bt_backend_for(dev, op);
    int64_t V = logits->shape[logits->ndim - 1], N = bt_numel(targets);
    int64_t vocab_start = comm_rank(group) * V, V_full = V * P;
    bt_tensor *th = be ? host_int64(targets) : NULL;
    /* host: the kernels' targets (forward: column 0 for every counted row, so each gets its
     * log-sum-exp; backward: see cross_entropy_backward), where each row's target logit is in
     * the flattened logits, then the statistics the group reduces: maxima (N), then the sums of
     * exp(lse_r - m) and of the target logits (2N) */
    bt_tensor *ids = th ? bt_empty(BT_SHAPE(3, N), BT_I64, bt_cpu()) : NULL;
    bt_tensor *maxima = ids ? bt_empty(BT_SHAPE(N), BT_F32, bt_cpu()) : NULL;
    bt_tensor *sums = maxima ? bt_empty(BT_SHAPE(2, N), BT_F32, bt_cpu()) : NULL;
    if (!sums) return NULL;
    const int64_t *t = bt_data(th);
    int64_t *fwd_t = bt_data(ids), *at = fwd_t + N, *bwd_t = fwd_t + 2 * N;
    for (int64_t n = 0; n < N; n++) {
        if (t[n] != -1 && (t[n] < 0 || t[n] >= V_full)) {
            bt_error("%s: target %lld at position %lld is out of range [0, %lld) for logits %s "
                     "on each of tp=%d ranks (-1 = ignore)",
                     op, (long long)t[n], (long long)n, (long long)V_full, SHAPE(logits), P);
            return NULL;
        }
        int64_t local = t[n] - vocab_start;
        bool here = t[n] >= 0 && local >= 0 && local < V;
        fwd_t[n] = t[n] < 0 ? -1 : 0;
        at[n] = n * V + (here ? local : 0);
        bwd_t[n] = t[n] < 0 ? -1 : here ? local : V;
    }
    /* one copy of the three id rows to the device, one copy of the two result rows back */
    bt_tensor *lc = bt_is_contiguous(logits) ? logits : contiguous_copy(logits);
    bt_tensor *ids_d = lc ? bt_to_device(ids, dev) : NULL;
    bt_tensor *bwd_d = ids_d ? bt_narrow(ids_d, 0, 2, 1) : NULL; /* (1, N): saved for backward */
    bt_tensor *found = bwd_d ? bt_empty(BT_SHAPE(2, N), BT_F32, dev) : NULL; /* lse_r; picked */
    if (!found) return NULL;
    const int64_t *ids_dp = bt_data(ids_d);
    int64_t rows_counted;
    be->cross_entropy(bt_f32(found), bt_f32(lc), ids_dp, N, V, &rows_counted);
    be->embedding(bt_f32(found) + N, bt_f32(lc), ids_dp + N, N, 1);
    bt_tensor *found_h = bt_to_device(found, bt_cpu());
    if (!found_h) return NULL;
    const float *lr = bt_f32(found_h), *xt = lr + N;
    float *m = bt_f32(maxima);
    for (int64_t n = 0; n < N; n++)
        m[n] = lr[n];
    if (comm_allreduce(group, maxima, COMM_MAX) != BT_OK) return NULL;
    float *sumexp = bt_f32(sums), *target_logit = sumexp + N;
    for (int64_t n = 0; n < N; n++) {
        int64_t local = t[n] - vocab_start;
        sumexp[n] = m[n] == -INFINITY ? 0.0f : expf(lr[n] - m[n]);
        target_logit[n] = t[n] >= 0 && local >= 0 && local < V ? xt[n] : 0.0f;
    }
    if (comm_allreduce(group, sums, COMM_SUM) != BT_OK) return NULL;
    /* loss = mean over counted rows of lse - target logit; serial, so the bits do not depend
     * on the thread count */
    bt_tensor *lse_full = bt_empty(BT_SHAPE(N), BT_F32, bt_cpu());
    if (!lse_full) return NULL;
    float *l = bt_f32(lse_full);
    double total = 0.0;
    int64_t count = 0;
    for (int64_t n = 0; n < N; n++) {
        l[n] = m[n] + logf(sumexp[n]);
        if (t[n] < 0) continue;
        total += (double)l[n] - (double)target_logit[n];
        count++;
    }
    bt_tensor *lse_d = bt_to_device(lse_full, dev);
    bt_tensor *out = lse_d ? bt_empty(0, (int64_t[1]){0}, BT_F32, dev) : NULL;
    if (!out) return NULL;
    bt_fill(out, count ? total / (double)count : 0.0);
    struct ag_node *node = ag_record(op, cross_entropy_backward, out, 1, &logits);
    if (node) {
        node->saved[0] = lc;
        node->saved[1] = lse_d;
        node->saved[2] = bwd_d;
        node->i[0] = count;
    }
    return out;
}

int64_t tp_divide(const char *owner, const char *what, int64_t n, int tp) {
    if (tp >= 1 && n % tp == 0) return n / tp;
    bt_error("%s: %s %lld not divisible by tp=%d", owner, what, (long long)n, tp);
    return -1;
}
