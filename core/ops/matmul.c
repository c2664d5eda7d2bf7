/* matmul and linear front ends. Operands are handed to the gemm kernel in the layout they already
 * have (row-major or transposed, with a leading dimension), so transposed views cost no copy; the
 * backward reuses those layouts with the transpose flags flipped. */
#include <string.h>

#include "core/ops.h"
#include "core/ops/op_common.h"

/* How the last two dims (rows, cols) of t sit in memory, plus a uniform stride over batch dims. */
struct mat_layout {
    bt_tensor *t;   /* the tensor whose data is used (t or a contiguous copy) */
    bool trans;     /* stored column-major (a transposed view) */
    int64_t ld;     /* leading dimension as sgemm sees it */
    int64_t batch;  /* product of the batch dims */
    int64_t stride; /* elements between consecutive matrices */
};

static bool describe(bt_tensor *t, struct mat_layout *l) {
    int nd = t->ndim;
    int64_t rows = t->shape[nd - 2], cols = t->shape[nd - 1];
    int64_t rs = t->stride[nd - 2], cs = t->stride[nd - 1];
    l->t = t;
    l->batch = 1;
    for (int d = 0; d < nd - 2; d++)
        l->batch *= t->shape[d];
    if (cs == 1 && rs >= (cols > 1 ? cols : 1) && rows > 1) {
        l->trans = false;
        l->ld = rs;
    } else if (rs == 1 && cs >= (rows > 1 ? rows : 1) && cols > 1) {
        l->trans = true;
        l->ld = cs;
    } else {
        return false;
    }
    /* batch dims must collapse into one stride */
    int64_t expect = -1;
    for (int d = nd - 3; d >= 0; d--) {
        if (t->shape[d] == 1) continue;
        if (expect >= 0 && t->stride[d] != expect) return false;
        if (expect < 0) l->stride = t->stride[d];
        expect = t->stride[d] * t->shape[d];
    }
    if (expect < 0) l->stride = 0;
    return true;
}

static bool layout_of(bt_tensor *t, struct mat_layout *l) {
    if (describe(t, l)) return true;
    bt_tensor *c = op_contiguous_data(t);
    if (!c) return false;
    int nd = c->ndim;
    l->t = c;
    l->trans = false;
    l->ld = c->shape[nd - 1];
    l->batch = 1;
    for (int d = 0; d < nd - 2; d++)
        l->batch *= c->shape[d];
    l->stride = c->shape[nd - 2] * c->shape[nd - 1];
    return true;
}

/* ---- matmul ---- */

static bt_status matmul_backward(struct ag_node *node) {
    bt_tensor *a = node->inputs[0], *b = node->inputs[1], *g = node->out->grad;
    const struct bt_backend *be = op_backend("backward", g);
    bt_tensor *ad = node->saved[0], *bd = node->saved[1];
    bool ta = node->i[0], tb = node->i[1];
    int64_t lda = node->i[2], ldb = node->i[3], sa = node->i[4], sb = node->i[5];
    int64_t batch = node->i[6], M = node->i[7];
    int64_t K = a->shape[a->ndim - 1], N = b->shape[b->ndim - 1];
    float beta;
    if (ag_wants_grad(a)) { /* dA (M,K) = g (M,N) @ B^T */
        bt_tensor *ga = ag_grad_target(a, &beta);
        if (!ga) return BT_ERR;
        be->gemm(false, !tb, batch, M, K, N, 1.0f, bt_f32(g), N, M * N, bt_f32(bd), ldb, sb, beta,
                 bt_f32(ga), a->ndim > 2 ? M * K : 0);
    }
    if (ag_wants_grad(b)) { /* dB (K,N) = A^T @ g (M,N) */
        bt_tensor *gb = ag_grad_target(b, &beta);
        if (!gb) return BT_ERR;
        be->gemm(!ta, false, batch, K, N, M, 1.0f, bt_f32(ad), lda, sa, bt_f32(g), N, M * N, beta,
                 bt_f32(gb), b->ndim > 2 ? K * N : 0);
    }
    return BT_OK;
}

bt_tensor *bt_matmul(bt_tensor *a, bt_tensor *b) {
    if (!OP_INPUTS("matmul", a, b)) return NULL;
    if (!op_check_float("matmul", "first operand", a) ||
        !op_check_float("matmul", "second operand", b) || !op_check_same_device("matmul", a, b))
        return NULL;
    if (a->ndim < 2 || b->ndim < 2) {
        bt_error("matmul: %s @ %s: operands need at least 2 dimensions", SHAPE(a), SHAPE(b));
        return NULL;
    }
    int64_t M = a->shape[a->ndim - 2], K = a->shape[a->ndim - 1];
    int64_t K2 = b->shape[b->ndim - 2], N = b->shape[b->ndim - 1];
    if (K != K2) {
        bt_error("matmul: %s @ %s: inner dimensions %lld and %lld differ", SHAPE(a), SHAPE(b),
                 (long long)K, (long long)K2);
        return NULL;
    }
    /* batch dims: equal, or one operand 2-D (broadcast over the other's batch) */
    const bt_tensor *batched = a->ndim >= b->ndim ? a : b;
    if (a->ndim > 2 && b->ndim > 2) {
        bool same = a->ndim == b->ndim;
        for (int d = 0; same && d < a->ndim - 2; d++)
            same = a->shape[d] == b->shape[d];
        if (!same) {
            bt_error("matmul: %s @ %s: batch dimensions differ (equal batch dims or a 2-D operand "
                     "are supported)",
                     SHAPE(a), SHAPE(b));
            return NULL;
        }
    }
    struct mat_layout la, lb;
    if (!layout_of(a, &la) || !layout_of(b, &lb)) return NULL;
    int64_t shape[BT_MAX_DIMS];
    int nd = batched->ndim;
    memcpy(shape, batched->shape, (size_t)nd * sizeof(int64_t));
    shape[nd - 2] = M;
    shape[nd - 1] = N;
    bt_tensor *out = op_new_like_shape(a, nd, shape);
    const struct bt_backend *be = op_backend("matmul", a);
    if (!out || !be) return NULL;
    int64_t batch = la.batch > lb.batch ? la.batch : lb.batch;
    int64_t sa = a->ndim > 2 ? la.stride : 0, sb = b->ndim > 2 ? lb.stride : 0;
    be->gemm(la.trans, lb.trans, batch, M, N, K, 1.0f, bt_f32(la.t), la.ld, sa, bt_f32(lb.t), lb.ld,
             sb, 0.0f, bt_f32(out), M * N);
    struct ag_node *node = ag_record("matmul", matmul_backward, out, 2, (bt_tensor *[]){a, b});
    if (node) {
        node->saved[0] = la.t;
        node->saved[1] = lb.t;
        int64_t args[] = {la.trans, lb.trans, la.ld, lb.ld, sa, sb, batch, M};
        memcpy(node->i, args, sizeof(args));
    }
    return out;
}

/* ---- linear: x (R, in) @ w (out, in)^T + bias ---- */

/* dx, dW, dbias of a linear layer from g, the gradient of its pre-activation output (R, out) */
static bt_status linear_grads(struct ag_node *node, bt_tensor *g) {
    bt_tensor *x = node->inputs[0], *w = node->inputs[1];
    bt_tensor *bias = node->n_inputs > 2 ? node->inputs[2] : NULL;
    bt_tensor *xd = node->saved[0], *wd = node->saved[1];
    const struct bt_backend *be = op_backend("backward", g);
    bool tw = node->i[0];
    int64_t ldw = node->i[1], R = node->i[2];
    int64_t IN = w->shape[1], OUT = w->shape[0];
    float beta;
    if (ag_wants_grad(x)) { /* dx (R,in) = g (R,out) @ W (out,in) */
        bt_tensor *gx = ag_grad_target(x, &beta);
        if (!gx) return BT_ERR;
        be->gemm(false, tw, 1, R, IN, OUT, 1.0f, bt_f32(g), OUT, 0, bt_f32(wd), ldw, 0, beta,
                 bt_f32(gx), R * IN);
    }
    if (ag_wants_grad(w)) { /* dW (out,in) = g^T (out,R) @ x (R,in) */
        bt_tensor *gw = ag_grad_target(w, &beta);
        if (!gw) return BT_ERR;
        be->gemm(true, false, 1, OUT, IN, R, 1.0f, bt_f32(g), OUT, 0, bt_f32(xd), IN, 0, beta,
                 bt_f32(gw), OUT * IN);
    }
    if (bias && ag_wants_grad(bias)) {
        bt_tensor *gb = ag_grad_target(bias, &beta);
        if (!gb) return BT_ERR;
        be->bias_backward(bt_f32(gb), bt_f32(g), R, OUT, beta);
    }
    return BT_OK;
}

static bt_status linear_backward(struct ag_node *node) {
    return linear_grads(node, node->out->grad);
}

/* The checks, contiguous operands and output of bt_linear and bt_linear_gelu */
struct linear_args {
    bt_tensor *xd, *bd, *out;
    struct mat_layout lw;
    int64_t IN, OUT, R;
    const struct bt_backend *be;
};

static bool linear_prepare(const char *op, bt_tensor *x, bt_tensor *w, bt_tensor *bias,
                           struct linear_args *a) {
    if (!OP_INPUTS(op, x, w)) return false;
    if (!op_check_float(op, "input", x) || !op_check_float(op, "weight", w) ||
        !op_check_same_device(op, x, w))
        return false;
    if (w->ndim != 2) {
        bt_error("%s: weight must be (out_features, in_features), got %s", op, SHAPE(w));
        return false;
    }
    if (x->ndim < 1 || x->shape[x->ndim - 1] != w->shape[1]) {
        bt_error("%s: input %s has %lld features but weight %s expects %lld", op, SHAPE(x),
                 (long long)(x->ndim ? x->shape[x->ndim - 1] : 0), SHAPE(w),
                 (long long)w->shape[1]);
        return false;
    }
    if (bias) {
        if (!op_check_float(op, "bias", bias) || !op_check_same_device(op, x, bias)) return false;
        if (bias->ndim != 1 || bias->shape[0] != w->shape[0]) {
            bt_error("%s: bias %s does not match weight %s (expected (%lld))", op, SHAPE(bias),
                     SHAPE(w), (long long)w->shape[0]);
            return false;
        }
    }
    a->IN = w->shape[1], a->OUT = w->shape[0], a->R = bt_numel(x) / (a->IN ? a->IN : 1);
    a->xd = op_contiguous_data(x);
    a->bd = bias ? op_contiguous_data(bias) : NULL;
    if (!a->xd || (bias && !a->bd) || !layout_of(w, &a->lw)) return false;
    int64_t shape[BT_MAX_DIMS];
    memcpy(shape, x->shape, (size_t)x->ndim * sizeof(int64_t));
    shape[x->ndim - 1] = a->OUT;
    a->out = op_new_like_shape(x, x->ndim, shape);
    a->be = op_backend(op, x);
    return a->out && a->be;
}

/* out (R,out) = x (R,in) @ W^T + bias, with W stored (out,in) row-major (W^T transposed): the
 * backend's fused form where it has one for these operands, else bias_fill and gemm */
static bt_epilogue_result linear_compute(const struct linear_args *a, float *aux, bool gelu) {
    const struct bt_backend *be = a->be;
    const float *bias = a->bd ? bt_f32(a->bd) : NULL;
    bt_epilogue_result r = BT_EPI_UNFUSED;
    if (be->linear_epilogue && (gelu || bias))
        r = be->linear_epilogue(bt_f32(a->out), aux, bt_f32(a->xd), a->IN, !a->lw.trans,
                                bt_f32(a->lw.t), a->lw.ld, bias, a->R, a->OUT, a->IN, gelu);
    if (r != BT_EPI_UNFUSED) return r;
    float *pre = gelu && aux ? aux : bt_f32(a->out); /* unfused GELU: pre kept for the backward */
    if (bias) be->bias_fill(pre, bias, a->R, a->OUT);
    be->gemm(false, !a->lw.trans, 1, a->R, a->OUT, a->IN, 1.0f, bt_f32(a->xd), a->IN, 0,
             bt_f32(a->lw.t), a->lw.ld, 0, bias ? 1.0f : 0.0f, pre, a->R * a->OUT);
    if (!gelu) return BT_EPI_DONE;
    be->unary(BT_UN_GELU_TANH, bt_f32(a->out), pre, a->R * a->OUT, 0.0f);
    return aux ? BT_EPI_INPUT : BT_EPI_DONE;
}

static struct ag_node *linear_record(const char *op, ag_backward_fn backward, bt_tensor *x,
                                     bt_tensor *w, bt_tensor *bias, const struct linear_args *a) {
    bt_tensor *inputs[3] = {x, w, bias};
    struct ag_node *node = ag_record(op, backward, a->out, bias ? 3 : 2, inputs);
    if (node) {
        node->saved[0] = a->xd;
        node->saved[1] = a->lw.t;
        node->i[0] = a->lw.trans;
        node->i[1] = a->lw.ld;
        node->i[2] = a->R;
    }
    return node;
}

bt_tensor *bt_linear(bt_tensor *x, bt_tensor *w, bt_tensor *bias) {
    struct linear_args a;
    if (!linear_prepare("linear", x, w, bias, &a)) return NULL;
    linear_compute(&a, NULL, false);
    linear_record("linear", linear_backward, x, w, bias, &a);
    return a.out;
}

/* ---- linear + GELU (tanh): gelu(x @ w^T + bias) as one op ---- */

static bt_status linear_gelu_backward(struct ag_node *node) {
    bt_tensor *g = node->out->grad, *aux = node->saved[2];
    const struct bt_backend *be = op_backend("backward", g);
    int64_t n = bt_numel(g);
    /* the gradient of the pre-activation, the backward's own scratch */
    bt_tensor *gpre = bt_empty(g->ndim, g->shape, BT_F32, g->storage->device);
    if (!gpre) return BT_ERR;
    if (node->i[3] == BT_EPI_DERIVATIVE)
        be->mul_grad(bt_f32(gpre), bt_f32(g), bt_f32(aux), n, 0.0f);
    else /* aux is the GELU's input */
        be->unary_backward(BT_UN_GELU_TANH, bt_f32(gpre), bt_f32(g), bt_f32(aux), bt_f32(node->out),
                           n, 0.0f, 0.0f);
    bt_status st = linear_grads(node, gpre);
    ag_release_scratch(gpre);
    return st;
}

bt_tensor *bt_linear_gelu(bt_tensor *x, bt_tensor *w, bt_tensor *bias) {
    struct linear_args a;
    if (!linear_prepare("linear_gelu", x, w, bias, &a)) return NULL;
    bool record = bt_runtime()->grad_enabled &&
                  (ag_wants_grad(x) || ag_wants_grad(w) || (bias && ag_wants_grad(bias)));
    bt_tensor *aux = record ? op_new_like_shape(x, a.out->ndim, a.out->shape) : NULL;
    if (record && !aux) return NULL;
    bt_epilogue_result r = linear_compute(&a, aux ? bt_f32(aux) : NULL, true);
    struct ag_node *node = linear_record("linear_gelu", linear_gelu_backward, x, w, bias, &a);
    if (node) {
        node->saved[2] = aux;
        node->i[3] = r;
    }
    return a.out;
}
