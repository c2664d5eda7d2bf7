/* Elementwise op front ends: broadcasting binary ops, unary math and activations, masked_fill. */
#include <string.h>

#include "core/ops.h"
#include "core/ops/op_common.h"

/* ---- broadcasting ---- */

struct broadcast {
    int ndim;
    int64_t shape[BT_MAX_DIMS];
    int64_t a_strides[BT_MAX_DIMS], b_strides[BT_MAX_DIMS]; /* 0 on broadcast dims */
};

/* Right-aligns a and b (PyTorch rules: sizes equal, or one of them 1). Strides are those of the
 * tensors as given, so non-contiguous views are read in place. */
static bool broadcast_shapes(const char *op, const bt_tensor *a, const bt_tensor *b,
                             struct broadcast *bc) {
    int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
    bc->ndim = nd;
    for (int k = 0; k < nd; k++) {
        int da = k - (nd - a->ndim), db = k - (nd - b->ndim);
        int64_t sa = da >= 0 ? a->shape[da] : 1, sb = db >= 0 ? b->shape[db] : 1;
        if (sa != sb && sa != 1 && sb != 1) {
            bt_error("%s: shapes %s and %s cannot be broadcast (dimension %d: %lld vs %lld)", op,
                     SHAPE(a), SHAPE(b), k, (long long)sa, (long long)sb);
            return false;
        }
        bc->shape[k] = sa > sb ? sa : sb;
        bc->a_strides[k] = (da >= 0 && sa != 1) ? a->stride[da] : 0;
        bc->b_strides[k] = (db >= 0 && sb != 1) ? b->stride[db] : 0;
    }
    return true;
}

static void contiguous_strides_for(int ndim, const int64_t *shape, const bt_tensor *t,
                                   int64_t *strides) {
    /* strides of a contiguous tensor of t's shape, right-aligned into ndim, 0 where broadcast */
    int64_t own[BT_MAX_DIMS];
    bt_contiguous_strides(t->ndim, t->shape, own);
    for (int k = 0; k < ndim; k++) {
        int d = k - (ndim - t->ndim);
        strides[k] = (d >= 0 && t->shape[d] != 1) ? own[d] : 0;
    }
    (void)shape;
}

/* ---- binary ops ---- */

static bt_status binary_backward(struct ag_node *node) {
    bt_tensor *a = node->inputs[0], *b = node->inputs[1], *g = node->out->grad;
    bt_binary_op op = (bt_binary_op)node->i[0];
    const struct bt_backend *be = op_backend("backward", g);
    int nd = g->ndim;
    int64_t g_strides[BT_MAX_DIMS];
    bt_contiguous_strides(nd, g->shape, g_strides);
    /* a and b were saved contiguous (node->saved) when the backward needs their values */
    bt_tensor *ac = node->saved[0], *bc = node->saved[1];
    int64_t a_strides[BT_MAX_DIMS], b_strides[BT_MAX_DIMS];
    if (ac) contiguous_strides_for(nd, g->shape, ac, a_strides);
    if (bc) contiguous_strides_for(nd, g->shape, bc, b_strides);
    for (int side = 0; side < 2; side++) {
        bt_tensor *x = side ? b : a;
        if (!ag_wants_grad(x)) continue;
        bt_tensor *gx_full = g; /* gradient in the broadcast shape */
        if (op == BT_BIN_SUB && side == 1) {
            gx_full = op_new_like_shape(g, nd, g->shape);
            if (!gx_full) return BT_ERR;
            be->unary(BT_UN_NEG, bt_f32(gx_full), bt_f32(g), bt_numel(g), 0.0f);
        } else if (op == BT_BIN_MUL || op == BT_BIN_DIV) {
            gx_full = op_new_like_shape(g, nd, g->shape);
            if (!gx_full) return BT_ERR;
            bt_tensor *other = side ? ac : bc;
            const int64_t *other_strides = side ? a_strides : b_strides;
            if (op == BT_BIN_MUL) { /* d(a*b)/da = b, d/db = a */
                be->binary(BT_BIN_MUL, bt_f32(gx_full), bt_f32(g), g_strides, bt_f32(other),
                           other_strides, nd, g->shape);
            } else if (side == 0) { /* d(a/b)/da = 1/b */
                be->binary(BT_BIN_DIV, bt_f32(gx_full), bt_f32(g), g_strides, bt_f32(other),
                           other_strides, nd, g->shape);
            } else { /* d(a/b)/db = -out/b */
                bt_tensor *out = node->saved[2];
                be->binary(BT_BIN_MUL, bt_f32(gx_full), bt_f32(g), g_strides, bt_f32(out),
                           g_strides, nd, g->shape);
                be->binary(BT_BIN_DIV, bt_f32(gx_full), bt_f32(gx_full), g_strides, bt_f32(bc),
                           b_strides, nd, g->shape);
                be->unary(BT_UN_NEG, bt_f32(gx_full), bt_f32(gx_full), bt_numel(g), 0.0f);
            }
        }
        bt_tensor *gx = bt_sum_to_shape(gx_full, x->ndim, x->shape);
        if (ag_accumulate(x, gx) != BT_OK) return BT_ERR;
    }
    return BT_OK;
}

static const char *binary_names[] = {"add", "sub", "mul", "div"};

static bt_tensor *binary(bt_binary_op op, bt_tensor *a, bt_tensor *b) {
    const char *name = binary_names[op];
    if (!OP_INPUTS(name, a, b)) return NULL;
    if (!op_check_float(name, "first operand", a) || !op_check_float(name, "second operand", b) ||
        !op_check_same_device(name, a, b))
        return NULL;
    struct broadcast bc;
    if (!broadcast_shapes(name, a, b, &bc)) return NULL;
    bt_tensor *out = op_new_like_shape(a, bc.ndim, bc.shape);
    const struct bt_backend *be = op_backend(name, a);
    if (!out || !be) return NULL;
    be->binary(op, bt_f32(out), bt_f32(a), bc.a_strides, bt_f32(b), bc.b_strides, bc.ndim,
               bc.shape);
    struct ag_node *node = ag_record(name, binary_backward, out, 2, (bt_tensor *[]){a, b});
    if (node) {
        node->i[0] = op;
        if (op == BT_BIN_MUL || op == BT_BIN_DIV) {
            node->saved[0] = op_contiguous_data(a);
            node->saved[1] = op_contiguous_data(b);
            node->saved[2] = out;
            if (!node->saved[0] || !node->saved[1]) return NULL;
        }
    }
    return out;
}

bt_tensor *bt_add(bt_tensor *a, bt_tensor *b) {
    return binary(BT_BIN_ADD, a, b);
}
bt_tensor *bt_sub(bt_tensor *a, bt_tensor *b) {
    return binary(BT_BIN_SUB, a, b);
}
bt_tensor *bt_mul(bt_tensor *a, bt_tensor *b) {
    return binary(BT_BIN_MUL, a, b);
}
bt_tensor *bt_div(bt_tensor *a, bt_tensor *b) {
    return binary(BT_BIN_DIV, a, b);
}

/* ---- unary ops ---- */

static const char *unary_names[BT_UN_COUNT] = {
    [BT_UN_NEG] = "neg",
    [BT_UN_EXP] = "exp",
    [BT_UN_LOG] = "log",
    [BT_UN_TANH] = "tanh",
    [BT_UN_SQRT] = "sqrt",
    [BT_UN_RSQRT] = "rsqrt",
    [BT_UN_POW] = "pow",
    [BT_UN_ADD_SCALAR] = "add_scalar",
    [BT_UN_MUL_SCALAR] = "mul_scalar",
    [BT_UN_RELU] = "relu",
    [BT_UN_GELU_TANH] = "gelu",
    [BT_UN_GELU_EXACT] = "gelu",
    [BT_UN_SILU] = "silu",
};

static bt_status unary_backward(struct ag_node *node) {
    bt_tensor *x = node->inputs[0], *g = node->out->grad;
    float beta;
    bt_tensor *gx = ag_grad_target(x, &beta);
    if (!gx) return BT_ERR;
    const struct bt_backend *be = op_backend("backward", g);
    if (node->saved[1]) { /* f'(x) saved by the forward */
        be->mul_grad(bt_f32(gx), bt_f32(g), bt_f32(node->saved[1]), bt_numel(g), beta);
        return BT_OK;
    }
    be->unary_backward((bt_unary_op)node->i[0], bt_f32(gx), bt_f32(g), bt_f32(node->saved[0]),
                       bt_f32(node->out), bt_numel(g), (float)node->f[0], beta);
    return BT_OK;
}

static bt_tensor *unary(bt_unary_op op, bt_tensor *x, double arg) {
    const char *name = unary_names[op];
    if (!OP_INPUTS(name, x)) return NULL;
    if (!op_check_float(name, "input", x)) return NULL;
    bt_tensor *xc = op_contiguous_data(x);
    bt_tensor *out = xc ? op_new_like_shape(x, x->ndim, x->shape) : NULL;
    const struct bt_backend *be = op_backend(name, x);
    if (!out || !be) return NULL;
    /* where the backend can, a recorded GELU or SiLU saves f'(x) as it computes f(x) */
    bt_tensor *dydx = NULL;
    if (be->unary_with_grad && bt_runtime()->grad_enabled && ag_wants_grad(x) &&
        (op == BT_UN_GELU_TANH || op == BT_UN_SILU)) {
        dydx = op_new_like_shape(x, x->ndim, x->shape);
        if (!dydx) return NULL;
        if (!be->unary_with_grad(op, bt_f32(out), bt_f32(dydx), bt_f32(xc), bt_numel(x)))
            dydx = NULL;
    }
    if (!dydx) be->unary(op, bt_f32(out), bt_f32(xc), bt_numel(x), (float)arg);
    struct ag_node *node = ag_record(name, unary_backward, out, 1, &x);
    if (node) {
        node->i[0] = op;
        node->f[0] = arg;
        node->saved[0] = xc;
        node->saved[1] = dydx;
    }
    return out;
}

bt_tensor *bt_neg(bt_tensor *x) {
    return unary(BT_UN_NEG, x, 0);
}
bt_tensor *bt_exp(bt_tensor *x) {
    return unary(BT_UN_EXP, x, 0);
}
bt_tensor *bt_log(bt_tensor *x) {
    return unary(BT_UN_LOG, x, 0);
}
bt_tensor *bt_tanh(bt_tensor *x) {
    return unary(BT_UN_TANH, x, 0);
}
bt_tensor *bt_sqrt(bt_tensor *x) {
    return unary(BT_UN_SQRT, x, 0);
}
bt_tensor *bt_rsqrt(bt_tensor *x) {
    return unary(BT_UN_RSQRT, x, 0);
}
bt_tensor *bt_pow(bt_tensor *x, double exponent) {
    return unary(BT_UN_POW, x, exponent);
}
bt_tensor *bt_add_scalar(bt_tensor *x, double s) {
    return unary(BT_UN_ADD_SCALAR, x, s);
}
bt_tensor *bt_mul_scalar(bt_tensor *x, double s) {
    return unary(BT_UN_MUL_SCALAR, x, s);
}
bt_tensor *bt_relu(bt_tensor *x) {
    return unary(BT_UN_RELU, x, 0);
}
bt_tensor *bt_gelu(bt_tensor *x, bt_gelu_kind kind) {
    return unary(kind == BT_GELU_EXACT ? BT_UN_GELU_EXACT : BT_UN_GELU_TANH, x, 0);
}
bt_tensor *bt_silu(bt_tensor *x) {
    return unary(BT_UN_SILU, x, 0);
}

/* ---- masked_fill ---- */

static bt_status masked_fill_backward(struct ag_node *node) {
    bt_tensor *x = node->inputs[0], *g = node->out->grad, *mask = node->saved[0];
    bt_tensor *gx = op_new_like_shape(g, g->ndim, g->shape);
    if (!gx) return BT_ERR;
    struct broadcast bc;
    if (!broadcast_shapes("masked_fill", x, mask, &bc)) return BT_ERR;
    op_backend("backward", g)
        ->masked_fill(bt_f32(gx), bt_f32(g), bt_data(mask), bc.b_strides, bc.ndim, bc.shape, 0.0f);
    return ag_accumulate(x, gx);
}

bt_tensor *bt_masked_fill(bt_tensor *x, bt_tensor *mask, double value) {
    if (!OP_INPUTS("masked_fill", x, mask)) return NULL;
    if (!op_check_float("masked_fill", "input", x)) return NULL;
    if (mask->dtype != BT_BOOL) {
        bt_error("masked_fill: mask must be bool, got %s %s", bt_dtype_name(mask->dtype),
                 SHAPE(mask));
        return NULL;
    }
    if (!op_check_same_device("masked_fill", x, mask)) return NULL;
    struct broadcast bc;
    if (!broadcast_shapes("masked_fill", x, mask, &bc)) return NULL;
    if (bc.ndim != x->ndim || memcmp(bc.shape, x->shape, (size_t)x->ndim * sizeof(int64_t)) != 0) {
        bt_error("masked_fill: mask %s must broadcast to the input's shape %s", SHAPE(mask),
                 SHAPE(x));
        return NULL;
    }
    bt_tensor *xc = op_contiguous_data(x);
    bt_tensor *out = xc ? op_new_like_shape(x, x->ndim, x->shape) : NULL;
    const struct bt_backend *be = op_backend("masked_fill", x);
    if (!out || !be) return NULL;
    be->masked_fill(bt_f32(out), bt_f32(xc), bt_data(mask), bc.b_strides, bc.ndim, bc.shape,
                    (float)value);
    struct ag_node *node = ag_record("masked_fill", masked_fill_backward, out, 1, &x);
    if (node) node->saved[0] = mask;
    return out;
}
