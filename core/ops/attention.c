/* Fused scaled-dot-product attention front end: argument checks, contiguous inputs, the output and
 * the (B, NH, T) log-sum-exp the backward recomputes the softmax from. Kernels: backend.h. */
#include <math.h>

#include "core/ops.h"
#include "core/ops/op_common.h"

/* Every operand contiguous: q, out, dout, dq (B, NH, T, hs); k, v, dk, dv (B, NKV, T, hs) */
static struct bt_attn_layouts contiguous_layouts(int64_t NH, int64_t NKV, int64_t T, int64_t hs) {
    struct bt_attn_layout qs = {NH * T * hs, T * hs, hs}, ks = {NKV * T * hs, T * hs, hs};
    return (struct bt_attn_layouts){qs, ks, ks, qs, qs, qs, ks, ks};
}

static bt_status attention_backward(struct ag_node *node) {
    bt_tensor *g = node->out->grad, *out = node->out;
    bt_tensor *qc = node->saved[0], *kc = node->saved[1], *vc = node->saved[2];
    bt_tensor *lse = node->saved[3];
    const struct bt_backend *be = op_backend("backward", g);
    if (!be) return BT_ERR;
    /* The kernel overwrites dq, dk, dv: it writes straight into an input's gradient when that is
     * new (beta 0), otherwise (a gradient exists, the input is given twice, or no gradient is
     * wanted) into a step buffer that is added afterwards. */
    bt_tensor *grads[3], *temps[3] = {NULL, NULL, NULL};
    for (int n = 0; n < 3; n++) {
        bt_tensor *x = node->inputs[n];
        float beta = 1.0f;
        if (ag_wants_grad(x) && !x->grad) {
            grads[n] = ag_grad_target(x, &beta);
            if (!grads[n]) return BT_ERR;
        }
        if (beta != 0.0f) {
            temps[n] = grads[n] = op_new_like_shape(g, x->ndim, x->shape);
            if (!temps[n]) return BT_ERR;
        }
    }
    int64_t NH = qc->shape[1], NKV = kc->shape[1], T = qc->shape[2], hs = qc->shape[3];
    struct bt_attn_layouts lay = contiguous_layouts(NH, NKV, T, hs);
    be->attention_backward(bt_f32(grads[0]), bt_f32(grads[1]), bt_f32(grads[2]), bt_f32(g),
                           bt_f32(qc), bt_f32(kc), bt_f32(vc), bt_f32(out), bt_f32(lse),
                           qc->shape[0], NH, NKV, T, hs, (float)node->f[0], node->i[0] != 0, &lay);
    for (int n = 0; n < 3; n++) {
        bt_tensor *x = node->inputs[n];
        if (temps[n] && ag_wants_grad(x) && ag_accumulate(x, temps[n]) != BT_OK) return BT_ERR;
    }
    return BT_OK;
}

/* q (B, NH, T, hs), k and v (B, NKV, T, hs): same B, T, hs; NKV divides NH. */
static bool check_shapes(const bt_tensor *q, const bt_tensor *k, const bt_tensor *v) {
    const bt_tensor *xs[3] = {q, k, v};
    const char *names[3] = {"q", "k", "v"};
    for (int n = 0; n < 3; n++)
        if (xs[n]->ndim != 4) {
            bt_error("attention: %s %s must be 4-D (batch, heads, time, head size)", names[n],
                     SHAPE(xs[n]));
            return false;
        }
    const char *dim_names[4] = {"batch sizes", NULL, "sequence lengths", "head sizes"};
    for (int d = 0; d < 4; d++) {
        if (d == 1 || q->shape[d] == k->shape[d]) continue;
        bt_error("attention: q %s and k %s: %s %lld and %lld differ", SHAPE(q), SHAPE(k),
                 dim_names[d], (long long)q->shape[d], (long long)k->shape[d]);
        return false;
    }
    if (!bt_same_shape(k, v)) {
        bt_error("attention: k %s and v %s must have the same shape", SHAPE(k), SHAPE(v));
        return false;
    }
    int64_t NH = q->shape[1], NKV = k->shape[1];
    if (NKV == 0 || NH % NKV != 0) {
        bt_error("attention: q %s and k %s: %lld query heads are not a multiple of %lld kv heads",
                 SHAPE(q), SHAPE(k), (long long)NH, (long long)NKV);
        return false;
    }
    return true;
}

bt_tensor *bt_attention(bt_tensor *q, bt_tensor *k, bt_tensor *v, bool causal, double scale) {
    if (!OP_INPUTS("attention", q, k, v)) return NULL;
    if (!op_check_float("attention", "q", q) || !op_check_float("attention", "k", k) ||
        !op_check_float("attention", "v", v) || !op_check_same_device("attention", q, k) ||
        !op_check_same_device("attention", q, v) || !check_shapes(q, k, v))
        return NULL;
    int64_t B = q->shape[0], NH = q->shape[1], NKV = k->shape[1], T = q->shape[2];
    int64_t hs = q->shape[3];
    if (scale <= 0.0) scale = 1.0 / sqrt((double)(hs > 0 ? hs : 1));
    bt_tensor *qc = op_contiguous_data(q), *kc = op_contiguous_data(k);
    bt_tensor *vc = op_contiguous_data(v);
    if (!qc || !kc || !vc) return NULL;
    bt_tensor *out = op_new_like_shape(q, 4, q->shape);
    bt_tensor *lse = out ? op_new_like_shape(q, 3, q->shape) : NULL;
    const struct bt_backend *be = op_backend("attention", q);
    if (!lse || !be) return NULL;
    struct bt_attn_layouts lay = contiguous_layouts(NH, NKV, T, hs);
    be->attention(bt_f32(out), bt_f32(lse), bt_f32(qc), bt_f32(kc), bt_f32(vc), B, NH, NKV, T, hs,
                  (float)scale, causal, &lay);
    struct ag_node *node =
        ag_record("attention", attention_backward, out, 3, (bt_tensor *[]){q, k, v});
    if (node) {
        node->saved[0] = qc;
        node->saved[1] = kc;
        node->saved[2] = vc;
        node->saved[3] = lse;
        node->f[0] = scale;
        node->i[0] = causal;
    }
    return out;
}

/* ---- the fused-projection form ---- */

/* q, k, v read in place from qkv (B, T, W), W = (NH + 2 NKV) hs, and their gradients written in
 * place into dqkv of the same shape; out and dout (B, T, NH hs) */
static struct bt_attn_layouts qkv_layouts(int64_t NH, int64_t NKV, int64_t T, int64_t hs) {
    int64_t W = (NH + 2 * NKV) * hs;
    struct bt_attn_layout in = {T * W, hs, W}, o = {T * NH * hs, hs, NH * hs};
    return (struct bt_attn_layouts){in, in, in, o, o, in, in, in};
}

static bt_status attention_qkv_backward(struct ag_node *node) {
    bt_tensor *qkv = node->inputs[0], *out = node->out, *lse = node->saved[1];
    bt_tensor *qc = node->saved[0], *g = bt_contiguous(out->grad);
    const struct bt_backend *be = op_backend("backward", out);
    if (!g || !be) return BT_ERR;
    /* the kernel overwrites every element of dqkv: straight into a new gradient, else a step
     * buffer added afterwards */
    float beta = 1.0f;
    bt_tensor *dqkv = qkv->grad ? NULL : ag_grad_target(qkv, &beta);
    if (!qkv->grad) return BT_ERR; /* ag_grad_target failed */
    bt_tensor *temp = NULL;
    if (beta != 0.0f) {
        dqkv = temp = op_new_like_shape(g, 3, qkv->shape);
        if (!temp) return BT_ERR;
    }
    int64_t B = qkv->shape[0], T = qkv->shape[1], NH = node->i[1], NKV = node->i[2];
    int64_t hs = node->i[3];
    struct bt_attn_layouts lay = qkv_layouts(NH, NKV, T, hs);
    const float *q = bt_f32(qc);
    float *dq = bt_f32(dqkv);
    be->attention_backward(dq, dq + NH * hs, dq + (NH + NKV) * hs, bt_f32(g), q, q + NH * hs,
                           q + (NH + NKV) * hs, bt_f32(out), bt_f32(lse), B, NH, NKV, T, hs,
                           (float)node->f[0], node->i[0] != 0, &lay);
    return temp ? ag_accumulate(qkv, temp) : BT_OK;
}

bt_tensor *bt_attention_qkv(bt_tensor *qkv, int64_t NH, int64_t NKV, bool causal, double scale) {
    if (!OP_INPUTS("attention_qkv", qkv)) return NULL;
    if (!op_check_float("attention_qkv", "qkv", qkv)) return NULL;
    if (qkv->ndim != 3) {
        bt_error("attention_qkv: qkv %s must be 3-D (batch, time, (heads + 2 kv heads) * head "
                 "size)",
                 SHAPE(qkv));
        return NULL;
    }
    int64_t heads = NH + 2 * NKV;
    if (NH <= 0 || NKV <= 0 || NH % NKV != 0 || qkv->shape[2] % heads != 0) {
        bt_error("attention_qkv: qkv %s does not hold %lld query and 2 x %lld kv heads (query "
                 "heads must be a positive multiple of kv heads, and the last dimension a "
                 "multiple of their sum)",
                 SHAPE(qkv), (long long)NH, (long long)NKV);
        return NULL;
    }
    int64_t B = qkv->shape[0], T = qkv->shape[1], hs = qkv->shape[2] / heads;
    if (scale <= 0.0) scale = 1.0 / sqrt((double)(hs > 0 ? hs : 1));
    bt_tensor *qc = op_contiguous_data(qkv);
    if (!qc) return NULL;
    bt_tensor *out = op_new_like_shape(qkv, 3, (int64_t[]){B, T, NH * hs});
    bt_tensor *lse = out ? op_new_like_shape(qkv, 3, (int64_t[]){B, NH, T}) : NULL;
    const struct bt_backend *be = op_backend("attention_qkv", qkv);
    if (!lse || !be) return NULL;
    struct bt_attn_layouts lay = qkv_layouts(NH, NKV, T, hs);
    const float *q = bt_f32(qc);
    be->attention(bt_f32(out), bt_f32(lse), q, q + NH * hs, q + (NH + NKV) * hs, B, NH, NKV, T, hs,
                  (float)scale, causal, &lay);
    struct ag_node *node = ag_record("attention", attention_qkv_backward, out, 1, &qkv);
    if (node) {
        node->saved[0] = qc;
        node->saved[1] = lse;
        node->f[0] = scale;
        node->i[0] = causal;
        node->i[1] = NH;
        node->i[2] = NKV;
        node->i[3] = hs;
    }
    return out;
}
