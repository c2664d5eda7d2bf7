/* dropout front end. Masks come from the runtime's counter-based dropout RNG: each call takes the
 * next numel counters, and the node keeps only (seed, offset) so the backward regenerates the mask
 * instead of saving it. */
#include "core/ops.h"
#include "core/ops/op_common.h"

/* i[0] = seed, i[1] = offset (as int64 bits), f[0] = p */
static bt_status dropout_backward(struct ag_node *node) {
    bt_tensor *x = node->inputs[0], *g = node->out->grad;
    float beta;
    bt_tensor *gx = ag_grad_target(x, &beta);
    if (!gx) return BT_ERR;
    op_backend("backward", g)
        ->dropout(bt_f32(gx), bt_f32(g), bt_numel(g), (float)node->f[0], (uint64_t)node->i[0],
                  (uint64_t)node->i[1], beta);
    return BT_OK;
}

bt_tensor *bt_dropout(bt_tensor *x, double p, bool training) {
    if (!OP_INPUTS("dropout", x)) return NULL;
    if (!op_check_float("dropout", "input", x)) return NULL;
    if (!(p >= 0.0 && p < 1.0)) {
        bt_error("dropout: p must be in [0, 1), got %g", p);
        return NULL;
    }
    if (!training || p == 0.0) return x;
    bt_tensor *xc = op_contiguous_data(x);
    bt_tensor *out = xc ? op_new_like_shape(x, x->ndim, x->shape) : NULL;
    const struct bt_backend *be = op_backend("dropout", x);
    if (!out || !be) return NULL;
    struct bt_runtime *rt = bt_runtime();
    uint64_t seed = rt->dropout_rng.seed, offset = rt->dropout_rng.offset;
    int64_t n = bt_numel(x);
    rt->dropout_rng.offset += (uint64_t)n;
    be->dropout(bt_f32(out), bt_f32(xc), n, (float)p, seed, offset, 0.0f);
    struct ag_node *node = ag_record("dropout", dropout_backward, out, 1, &x);
    if (node) {
        node->i[0] = (int64_t)seed;
        node->i[1] = (int64_t)offset;
        node->f[0] = p;
    }
    return out;
}
