/* layernorm and rmsnorm front ends: normalise over the last dim of x, seen as (N, C). The forward
 * saves x (contiguous), the weight, and the per-row statistics (mean and rstd, or rstd). */
#include "core/ops.h"
#include "core/ops/op_common.h"

/* weight or bias: float32, shape (C) where C is x's last dim, on x's device */
static bool check_affine(const char *op, const char *what, const bt_tensor *x, const bt_tensor *p) {
    if (!op_check_float(op, what, p) || !op_check_same_device(op, x, p)) return false;
    int64_t C = x->shape[x->ndim - 1];
    if (p->ndim != 1 || p->shape[0] != C) {
        bt_error("%s: %s %s does not match input %s last dim %lld", op, what, SHAPE(p), SHAPE(x),
                 (long long)C);
        return false;
    }
    return true;
}

/* N: the number of rows, the product of all dims but the last */
static int64_t rows_of(const bt_tensor *x) {
    int64_t N = 1;
    for (int k = 0; k < x->ndim - 1; k++)
        N *= x->shape[k];
    return N;
}

static bool check_input(const char *op, const bt_tensor *x, double eps) {
    if (!op_check_float(op, "input", x)) return false;
    if (x->ndim < 1) {
        bt_error("%s: input must have at least 1 dimension, got %s", op, SHAPE(x));
        return false;
    }
    if (!(eps >= 0.0)) {
        bt_error("%s: eps must be >= 0, got %g", op, eps);
        return false;
    }
    return true;
}

/* ---- layernorm: saved = {x, weight, mean, rstd} (contiguous) ---- */

static bt_status layernorm_backward(struct ag_node *node) {
    bt_tensor *x = node->inputs[0], *w = node->inputs[1], *b = node->inputs[2];
    bt_tensor *g = node->out->grad, *xc = node->saved[0], *wc = node->saved[1];
    int64_t C = x->shape[x->ndim - 1], N = rows_of(x);
    float beta_x = 0.0f, beta_w = 0.0f, beta_b = 0.0f;
    bt_tensor *gx = NULL, *gw = NULL, *gb = NULL;
    if (ag_wants_grad(x) && !(gx = ag_grad_target(x, &beta_x))) return BT_ERR;
    if (ag_wants_grad(w) && !(gw = ag_grad_target(w, &beta_w))) return BT_ERR;
    if (ag_wants_grad(b) && !(gb = ag_grad_target(b, &beta_b))) return BT_ERR;
    op_backend("backward", g)
        ->layernorm_backward(gx ? bt_f32(gx) : NULL, gw ? bt_f32(gw) : NULL, gb ? bt_f32(gb) : NULL,
                             bt_f32(g), bt_f32(xc), wc ? bt_f32(wc) : NULL, bt_f32(node->saved[2]),
                             bt_f32(node->saved[3]), N, C, beta_x, beta_w, beta_b);
    return BT_OK;
}

bt_tensor *bt_layernorm(bt_tensor *x, bt_tensor *weight, bt_tensor *bias, double eps) {
    if (!OP_INPUTS("layernorm", x)) return NULL;
    if (!check_input("layernorm", x, eps)) return NULL;
    if (weight && !check_affine("layernorm", "weight", x, weight)) return NULL;
    if (bias && !check_affine("layernorm", "bias", x, bias)) return NULL;
    int64_t C = x->shape[x->ndim - 1], N = rows_of(x);
    bt_tensor *xc = op_contiguous_data(x);
    bt_tensor *wc = weight ? op_contiguous_data(weight) : NULL;
    bt_tensor *bc = bias ? op_contiguous_data(bias) : NULL;
    if (!xc || (weight && !wc) || (bias && !bc)) return NULL;
    bt_tensor *out = op_new_like_shape(x, x->ndim, x->shape);
    bt_tensor *mean = op_new_like_shape(x, 1, &N), *rstd = op_new_like_shape(x, 1, &N);
    const struct bt_backend *be = op_backend("layernorm", x);
    if (!out || !mean || !rstd || !be) return NULL;
    be->layernorm(bt_f32(out), bt_f32(mean), bt_f32(rstd), bt_f32(xc), wc ? bt_f32(wc) : NULL,
                  bc ? bt_f32(bc) : NULL, N, C, (float)eps);
    /* inputs keep their positions (a NULL weight or bias stays NULL) for the backward */
    bt_tensor *inputs[3] = {x, weight, bias};
    struct ag_node *node = ag_record("layernorm", layernorm_backward, out, 3, inputs);
    if (node) {
        node->saved[0] = xc;
        node->saved[1] = wc;
        node->saved[2] = mean;
        node->saved[3] = rstd;
    }
    return out;
}

/* ---- rmsnorm: saved = {x, weight, rstd} (contiguous) ---- */

static bt_status rmsnorm_backward(struct ag_node *node) {
    bt_tensor *x = node->inputs[0], *w = node->inputs[1];
    bt_tensor *g = node->out->grad, *xc = node->saved[0], *wc = node->saved[1];
    int64_t C = x->shape[x->ndim - 1], N = rows_of(x);
    float beta_x = 0.0f, beta_w = 0.0f;
    bt_tensor *gx = NULL, *gw = NULL;
    if (ag_wants_grad(x) && !(gx = ag_grad_target(x, &beta_x))) return BT_ERR;
    if (ag_wants_grad(w) && !(gw = ag_grad_target(w, &beta_w))) return BT_ERR;
    op_backend("backward", g)
        ->rmsnorm_backward(gx ? bt_f32(gx) : NULL, gw ? bt_f32(gw) : NULL, bt_f32(g), bt_f32(xc),
                           wc ? bt_f32(wc) : NULL, bt_f32(node->saved[2]), N, C, beta_x, beta_w);
    return BT_OK;
}

bt_tensor *bt_rmsnorm(bt_tensor *x, bt_tensor *weight, double eps) {
    if (!OP_INPUTS("rmsnorm", x)) return NULL;
    if (!check_input("rmsnorm", x, eps)) return NULL;
    if (weight && !check_affine("rmsnorm", "weight", x, weight)) return NULL;
    int64_t C = x->shape[x->ndim - 1], N = rows_of(x);
    bt_tensor *xc = op_contiguous_data(x);
    bt_tensor *wc = weight ? op_contiguous_data(weight) : NULL;
    if (!xc || (weight && !wc)) return NULL;
    bt_tensor *out = op_new_like_shape(x, x->ndim, x->shape);
    bt_tensor *rstd = op_new_like_shape(x, 1, &N);
    const struct bt_backend *be = op_backend("rmsnorm", x);
    if (!out || !rstd || !be) return NULL;
    be->rmsnorm(bt_f32(out), bt_f32(rstd), bt_f32(xc), wc ? bt_f32(wc) : NULL, N, C, (float)eps);
    bt_tensor *inputs[2] = {x, weight};
    struct ag_node *node = ag_record("rmsnorm", rmsnorm_backward, out, 2, inputs);
    if (node) {
        node->saved[0] = xc;
        node->saved[1] = wc;
        node->saved[2] = rstd;
    }
    return out;
}
