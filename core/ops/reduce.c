/* Reduction front ends: sum/mean/max over one dim, over everything, and sum_to_shape (the
 * reduction that undoes broadcasting in backward passes). */
#include <string.h>

#include "core/ops.h"
#include "core/ops/op_common.h"

static void reduced_shape(const bt_tensor *x, int d, bool keepdim, int *ndim, int64_t *shape) {
    int n = 0;
    for (int k = 0; k < x->ndim; k++) {
        if (k != d)
            shape[n++] = x->shape[k];
        else if (keepdim)
            shape[n++] = 1;
    }
    *ndim = n;
}

/* sum/mean backward: broadcast g over the reduced dim (scaled by 1/dim for mean) */
static bt_status reduce_backward(struct ag_node *node) {
    bt_tensor *x = node->inputs[0], *g = node->out->grad;
    bt_reduce_op op = (bt_reduce_op)node->i[0];
    int d = (int)node->i[1];
    int64_t outer, dim, inner;
    op_split_dims(x, d, &outer, &dim, &inner);
    float beta;
    bt_tensor *gx = ag_grad_target(x, &beta);
    if (!gx) return BT_ERR;
    const struct bt_backend *be = op_backend("backward", g);
    if (!be) return BT_ERR;
    be->reduce_backward(op, bt_f32(gx), bt_f32(g),
                        op == BT_RED_MAX ? bt_data(node->saved[0]) : NULL, outer, dim, inner,
                        beta);
    return BT_OK;
}

static const char *reduce_names[] = {"sum", "mean", "max"};

static bt_tensor *reduce(bt_reduce_op op, bt_tensor *x, int dim, bool keepdim) {
    const char *name = reduce_names[op];
    if (!OP_INPUTS(name, x)) return NULL;
    if (!op_check_float(name, "input", x)) return NULL;
    int d = op_dim(name, x, dim);
    if (d < 0) return NULL;
    if (op == BT_RED_MAX && x->shape[d] == 0) {
        bt_error("max: dimension %d of %s is empty", d, SHAPE(x));
        return NULL;
    }
    int ndim;
    int64_t shape[BT_MAX_DIMS];
    reduced_shape(x, d, keepdim, &ndim, shape);
    bt_tensor *xc = op_contiguous_data(x);
    bt_tensor *out = xc ? op_new_like_shape(x, ndim, shape) : NULL;
    const struct bt_backend *be = op_backend(name, x);
    if (!out || !be) return NULL;
    int64_t outer, len, inner;
    op_split_dims(x, d, &outer, &len, &inner);
    bt_tensor *argmax = NULL;
    if (op == BT_RED_MAX) {
        argmax = bt_empty(ndim, shape, BT_I64, x->storage->device);
        if (!argmax) return NULL;
    }
    be->reduce(op, bt_f32(out), argmax ? bt_data(argmax) : NULL, bt_f32(xc), outer, len, inner);
    struct ag_node *node = ag_record(name, reduce_backward, out, 1, &x);
    if (node) {
        node->i[0] = op;
        node->i[1] = d;
        node->saved[0] = argmax;
    }
    return out;
}

bt_tensor *bt_sum(bt_tensor *x, int dim, bool keepdim) {
    return reduce(BT_RED_SUM, x, dim, keepdim);
}
bt_tensor *bt_mean(bt_tensor *x, int dim, bool keepdim) {
    return reduce(BT_RED_MEAN, x, dim, keepdim);
}
bt_tensor *bt_max(bt_tensor *x, int dim, bool keepdim) {
    return reduce(BT_RED_MAX, x, dim, keepdim);
}

static bt_tensor *reduce_all(bt_reduce_op op, bt_tensor *x) {
    if (!OP_INPUTS(reduce_names[op], x)) return NULL;
    bt_tensor *flat = bt_reshape(x, 1, (int64_t[]){bt_numel(x)});
    return reduce(op, flat, 0, false);
}

bt_tensor *bt_sum_all(bt_tensor *x) {
    return reduce_all(BT_RED_SUM, x);
}
bt_tensor *bt_mean_all(bt_tensor *x) {
    return reduce_all(BT_RED_MEAN, x);
}

/* g has a broadcast shape of `shape`; sum over the dims that broadcasting expanded. Not recorded:
 * used inside backward functions, where grad mode is irrelevant. */
bt_tensor *bt_sum_to_shape(bt_tensor *g, int ndim, const int64_t *shape) {
    if (!g) return NULL;
    if (g->ndim == ndim && memcmp(g->shape, shape, (size_t)ndim * sizeof(int64_t)) == 0)
        return op_contiguous_data(g);
    int offset = g->ndim - ndim;
    if (offset < 0) {
        bt_error("sum_to_shape: %s has fewer dims than the target", SHAPE(g));
        return NULL;
    }
    bt_tensor *out = bt_zeros(ndim, shape, BT_F32, g->storage->device);
    bt_tensor *gc = op_contiguous_data(g);
    if (!out || !gc) return NULL;
    int64_t out_strides[BT_MAX_DIMS], map[BT_MAX_DIMS];
    bt_contiguous_strides(ndim, shape, out_strides);
    for (int k = 0; k < g->ndim; k++) {
        int d = k - offset;
        map[k] = (d >= 0 && shape[d] != 1) ? out_strides[d] : 0;
    }
    const struct bt_backend *be = op_backend("sum_to_shape", g);
    if (!be) return NULL;
    be->sum_to(bt_f32(out), bt_numel(out), bt_f32(gc), g->ndim, g->shape, map);
    return out;
}
