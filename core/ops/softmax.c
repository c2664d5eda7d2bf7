/* softmax and log_softmax front ends: any dim, x viewed as (outer, dim, inner) around it. The
 * backward needs only the output (saved as the node's out), not x. */
#include "core/ops.h"
#include "core/ops/op_common.h"

/* node->i[0] = dim, node->i[1] = log */
static bt_status softmax_backward(struct ag_node *node) {
    bt_tensor *x = node->inputs[0], *g = node->out->grad;
    int64_t outer, dim, inner;
    op_split_dims(x, (int)node->i[0], &outer, &dim, &inner);
    float beta;
    bt_tensor *gx = ag_grad_target(x, &beta);
    if (!gx) return BT_ERR;
    op_backend("backward", g)
        ->softmax_backward(bt_f32(gx), bt_f32(g), bt_f32(node->out), outer, dim, inner,
                           node->i[1] != 0, beta);
    return BT_OK;
}

static bt_tensor *softmax(const char *name, bt_tensor *x, int dim, bool log) {
    if (!OP_INPUTS(name, x)) return NULL;
    if (!op_check_float(name, "input", x)) return NULL;
    int d = op_dim(name, x, dim);
    if (d < 0) return NULL;
    bt_tensor *xc = op_contiguous_data(x);
    bt_tensor *out = xc ? op_new_like_shape(x, x->ndim, x->shape) : NULL;
    const struct bt_backend *be = op_backend(name, x);
    if (!out || !be) return NULL;
    int64_t outer, len, inner;
    op_split_dims(x, d, &outer, &len, &inner);
    be->softmax(bt_f32(out), bt_f32(xc), outer, len, inner, log);
    struct ag_node *node = ag_record(name, softmax_backward, out, 1, &x);
    if (node) {
        node->i[0] = d;
        node->i[1] = log;
    }
    return out;
}

bt_tensor *bt_softmax(bt_tensor *x, int dim) {
    return softmax("softmax", x, dim, false);
}

bt_tensor *bt_log_softmax(bt_tensor *x, int dim) {
    return softmax("log_softmax", x, dim, true);
}
