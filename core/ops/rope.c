/* Rotary position embedding front end: argument checks, a contiguous input, the output, and the
 * backward, which is the inverse rotation applied to the output gradient (a rotation's transpose
 * is its inverse). Kernel: backend.h (rope). */
#include <math.h>

#include "core/ops.h"
#include "core/ops/op_common.h"

/* f[0] = theta, i[0] = pos_offset */
static bt_status rope_backward(struct ag_node *node) {
    bt_tensor *x = node->inputs[0], *g = node->out->grad;
    const struct bt_backend *be = op_backend("backward", g);
    if (!be) return BT_ERR;
    bt_tensor *gc = op_contiguous_data(g);
    if (!gc) return BT_ERR;
    /* the kernel overwrites: straight into a fresh gradient, else into a buffer added after */
    float beta = 1.0f;
    bt_tensor *gx = ag_grad_target(x, &beta);
    if (!gx) return BT_ERR;
    bt_tensor *target = beta == 0.0f ? gx : op_new_like_shape(g, x->ndim, x->shape);
    if (!target) return BT_ERR;
    be->rope(bt_f32(target), bt_f32(gc), x->shape[0], x->shape[1], x->shape[2], x->shape[3],
             (float)node->f[0], node->i[0], true);
    if (target != gx) return ag_accumulate(x, target);
    return BT_OK;
}

bt_tensor *bt_rope(bt_tensor *x, double theta, int64_t pos_offset) {
    if (!OP_INPUTS("rope", x)) return NULL;
    if (!op_check_float("rope", "x", x)) return NULL;
    if (x->ndim != 4) {
        bt_error("rope: x %s must be 4-D (batch, heads, time, head size)", SHAPE(x));
        return NULL;
    }
    if (x->shape[3] % 2 != 0) {
        bt_error("rope: x %s: head size %lld must be even", SHAPE(x), (long long)x->shape[3]);
        return NULL;
    }
    if (!(theta > 0.0 && isfinite(theta))) {
        bt_error("rope: theta must be a positive number, got %g", theta);
        return NULL;
    }
    if (pos_offset < 0) {
        bt_error("rope: pos_offset must be non-negative, got %lld", (long long)pos_offset);
        return NULL;
    }
    bt_tensor *xc = op_contiguous_data(x);
    bt_tensor *out = xc ? op_new_like_shape(x, 4, x->shape) : NULL;
    const struct bt_backend *be = op_backend("rope", x);
    if (!out || !be) return NULL;
    be->rope(bt_f32(out), bt_f32(xc), x->shape[0], x->shape[1], x->shape[2], x->shape[3],
             (float)theta, pos_offset, false);
    struct ag_node *node = ag_record("rope", rope_backward, out, 1, &x);
    if (node) {
        node->f[0] = theta;
        node->i[0] = pos_offset;
    }
    return out;
}
