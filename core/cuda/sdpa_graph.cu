/* cuDNN's fused attention graphs (core/cuda/sdpa_graph.h says what they compute). Host code only:
 * it builds descriptors and asks cuDNN for a plan; attention_cudnn.cu runs the plans.
 *
 * Each node is a tensor or an operation of cuDNN's backend API, made and finalized in graph
 * order. The graphs are the pattern cuDNN's fused flash-attention engines match (the one NVIDIA's
 * cudnn-frontend builds for its composite SDPA node): every intermediate is a virtual float32
 * tensor, the scale is a float passed by value, the causal mask compares generated row and
 * column indices, and the softmax keeps its statistics so the backward can recompute P. */
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/cuda/sdpa_graph.h"

/* the graph being built and the first failure's reason */
struct builder {
    struct bt_sdpa_graph *g;
    char *why;
    size_t size;
    bool ok;
    int64_t next_virtual; /* uids of virtual tensors, above the caller's */
};

static void fail(struct builder *b, cudnnStatus_t st, const char *fmt, ...) {
    if (!b->ok) return;
    b->ok = false;
    char what[200], detail[400] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    cudnnGetLastErrorString(detail, sizeof detail);
    snprintf(b->why, b->size, "%s: %s%s%s", what, cudnnGetErrorString(st), detail[0] ? ": " : "",
             detail);
}

/* a new descriptor of type t, owned by the graph */
static cudnnBackendDescriptor_t make(struct builder *b, cudnnBackendDescriptorType_t t,
                                     const char *what) {
    if (!b->ok) return NULL;
    if (b->g->n_descs == BT_SDPA_MAX_DESCS) {
        b->ok = false;
        snprintf(b->why, b->size, "attention graph: more than %d descriptors", BT_SDPA_MAX_DESCS);
        return NULL;
    }
    cudnnBackendDescriptor_t d = NULL;
    cudnnStatus_t st = cudnnBackendCreateDescriptor(t, &d);
    if (st != CUDNN_STATUS_SUCCESS) {
        fail(b, st, "cudnnBackendCreateDescriptor(%s)", what);
        return NULL;
    }
    b->g->descs[b->g->n_descs++] = d;
    return d;
}

static void set(struct builder *b, cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name,
                cudnnBackendAttributeType_t type, int64_t count, const void *value,
                const char *what) {
    if (!b->ok) return;
    cudnnStatus_t st = cudnnBackendSetAttribute(d, name, type, count, value);
    if (st != CUDNN_STATUS_SUCCESS) fail(b, st, "%s: attribute %d", what, (int)name);
}

static void finalize(struct builder *b, cudnnBackendDescriptor_t d, const char *what) {
    if (!b->ok) return;
    cudnnStatus_t st = cudnnBackendFinalize(d);
    if (st != CUDNN_STATUS_SUCCESS) fail(b, st, "cudnnBackendFinalize(%s)", what);
}

/* ---- tensors ---- */

enum { BF16 = CUDNN_DATA_BFLOAT16, F32 = CUDNN_DATA_FLOAT };

struct shape {
    int64_t dim[4], stride[4];
};

/* (n0, n1, n2, n3) row-major */
static struct shape dense(int64_t n0, int64_t n1, int64_t n2, int64_t n3) {
    struct shape s = {{n0, n1, n2, n3}, {n1 * n2 * n3, n2 * n3, n3, 1}};
    return s;
}

/* the transpose of the last two dims of a row-major (n0, n1, n2, n3): (n0, n1, n3, n2) */
static struct shape transposed(int64_t n0, int64_t n1, int64_t n2, int64_t n3) {
    struct shape s = {{n0, n1, n3, n2}, {n1 * n2 * n3, n2 * n3, 1, n3}};
    return s;
}

static cudnnBackendDescriptor_t tensor_(struct builder *b, int64_t uid, cudnnDataType_t dtype,
                                        struct shape s, bool is_virtual, bool by_value,
                                        const char *what) {
    cudnnBackendDescriptor_t t = make(b, CUDNN_BACKEND_TENSOR_DESCRIPTOR, what);
    int64_t align = 16;
    bool v = is_virtual, bv = by_value;
    set(b, t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dtype, what);
    set(b, t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, s.dim, what);
    set(b, t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, s.stride, what);
    set(b, t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, what);
    set(b, t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align, what);
    set(b, t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &v, what);
    if (by_value) set(b, t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &bv, what);
    finalize(b, t, what);
    return t;
}

/* a tensor the caller supplies */
static cudnnBackendDescriptor_t real(struct builder *b, int64_t uid, cudnnDataType_t dtype,
                                     struct shape s, const char *what) {
    return tensor_(b, uid, (cudnnDataType_t)dtype, s, false, false, what);
}

/* an intermediate that lives only inside the fused kernel */
static cudnnBackendDescriptor_t virt(struct builder *b, cudnnDataType_t dtype, struct shape s,
                                     const char *what) {
    return tensor_(b, b->next_virtual++, dtype, s, true, false, what);
}

/* a scalar passed by value (its pointer is the host's, in the variant pack) */
static cudnnBackendDescriptor_t scalar(struct builder *b, int64_t uid, cudnnDataType_t dtype,
                                       const char *what) {
    return tensor_(b, uid, dtype, dense(1, 1, 1, 1), false, true, what);
}

/* ---- operations ---- */

static void add_op(struct builder *b, cudnnBackendDescriptor_t op, const char *what) {
    finalize(b, op, what);
    if (!b->ok) return;
    if (b->g->n_ops == (int)(sizeof b->g->ops / sizeof b->g->ops[0])) {
        b->ok = false;
        snprintf(b->why, b->size, "attention graph: too many operations");
        return;
    }
    b->g->ops[b->g->n_ops++] = op;
}

/* y = mode(x, b2, t) computed in prec: t is BINARY_SELECT's condition (y = t ? x : b2); axis
 * is GEN_INDEX's (else -1) */
static void pointwise_(struct builder *b, cudnnPointwiseMode_t mode, cudnnDataType_t prec,
                       cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b2,
                       cudnnBackendDescriptor_t t, cudnnBackendDescriptor_t y, int64_t axis,
                       const char *what) {
    cudnnBackendDescriptor_t pw = make(b, CUDNN_BACKEND_POINTWISE_DESCRIPTOR, what);
    set(b, pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, what);
    set(b, pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec, what);
    if (axis >= 0) set(b, pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, what);
    finalize(b, pw, what);
    cudnnBackendDescriptor_t op = make(b, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, what);
    cudnnBackendAttributeType_t D = CUDNN_TYPE_BACKEND_DESCRIPTOR;
    set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, D, 1, &pw, what);
    set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, D, 1, &x, what);
    if (b2) set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, D, 1, &b2, what);
    if (t) set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, D, 1, &t, what);
    set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, D, 1, &y, what);
    float one = 1.0f;
    set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, CUDNN_TYPE_FLOAT, 1, &one, what);
    set(b, op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, CUDNN_TYPE_FLOAT, 1, &one, what);
    add_op(b, op, what);
}

/* the float32 pointwise ops: y = mode(x) or mode(x, b2) */
static void pointwise(struct builder *b, cudnnPointwiseMode_t mode, cudnnBackendDescriptor_t x,
                      cudnnBackendDescriptor_t b2, cudnnBackendDescriptor_t y, const char *what) {
    pointwise_(b, mode, CUDNN_DATA_FLOAT, x, b2, NULL, y, -1, what);
}

/* y (.., 1) = the sum or max of x over its last dim */
static void reduction(struct builder *b, cudnnReduceTensorOp_t mode, cudnnBackendDescriptor_t x,
                      cudnnBackendDescriptor_t y, const char *what) {
    cudnnBackendDescriptor_t r = make(b, CUDNN_BACKEND_REDUCTION_DESCRIPTOR, what);
    cudnnDataType_t prec = CUDNN_DATA_FLOAT;
    bool deterministic = false;
    set(b, r, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &prec, what);
    set(b, r, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode, what);
    if (cudnnGetVersion() >= 91100) /* the attribute is 9.11's */
        set(b, r, CUDNN_ATTR_REDUCTION_IS_DETERMINISTIC, CUDNN_TYPE_BOOLEAN, 1, &deterministic,
            what);
    finalize(b, r, what);
    cudnnBackendDescriptor_t op = make(b, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, what);
    cudnnBackendAttributeType_t D = CUDNN_TYPE_BACKEND_DESCRIPTOR;
    set(b, op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, D, 1, &r, what);
    set(b, op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, D, 1, &x, what);
    set(b, op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, D, 1, &y, what);
    add_op(b, op, what);
}

/* c = a b over the last two dims, batched over the first two, float32 accumulation */
static void matmul(struct builder *b, cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b2,
                   cudnnBackendDescriptor_t c, const char *what) {
    cudnnBackendDescriptor_t mm = make(b, CUDNN_BACKEND_MATMUL_DESCRIPTOR, what);
    cudnnDataType_t prec = CUDNN_DATA_FLOAT;
    set(b, mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &prec, what);
    finalize(b, mm, what);
    cudnnBackendDescriptor_t op = make(b, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, what);
    cudnnBackendAttributeType_t D = CUDNN_TYPE_BACKEND_DESCRIPTOR;
    set(b, op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, D, 1, &a, what);
    set(b, op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, D, 1, &b2, what);
    set(b, op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, D, 1, &c, what);
    set(b, op, CUDNN_ATTR_OPERATION_MATMUL_DESC, D, 1, &mm, what);
    add_op(b, op, what);
}

/* y = x in another layout or dtype (the transposes of P and dS, K as a row-major operand) */
static void reshape(struct builder *b, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y,
                    const char *what) {
    cudnnBackendDescriptor_t op = make(b, CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, what);
    cudnnBackendAttributeType_t D = CUDNN_TYPE_BACKEND_DESCRIPTOR;
    set(b, op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, D, 1, &x, what);
    set(b, op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, D, 1, &y, what);
    add_op(b, op, what);
}

/* ---- the graphs ---- */

/* s with the keys after each query set to -inf: row (query) index >= column (key) index keeps
 * the score */
static cudnnBackendDescriptor_t causal_mask(struct builder *b, cudnnBackendDescriptor_t s,
                                            struct shape S, cudnnBackendDescriptor_t neg_inf) {
    cudnnBackendDescriptor_t row = virt(b, CUDNN_DATA_INT32, S, "row index");
    cudnnBackendDescriptor_t col = virt(b, CUDNN_DATA_INT32, S, "column index");
    pointwise_(b, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, s, NULL, NULL, row, 2, "row index");
    pointwise_(b, CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_FLOAT, s, NULL, NULL, col, 3,
               "column index");
    cudnnBackendDescriptor_t keep = virt(b, CUDNN_DATA_BOOLEAN, S, "causal mask");
    pointwise_(b, CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, row, col, NULL, keep, -1,
               "causal mask");
    cudnnBackendDescriptor_t masked = virt(b, CUDNN_DATA_FLOAT, S, "masked scores");
    pointwise_(b, CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, s, neg_inf, keep, masked, -1,
               "masked scores");
    return masked;
}

/* S = scale Q Kᵀ (masked); stats = max + log(sum exp(S - max)); P = exp(S - max) / sum (bf16);
 * O = P V */
static void forward_nodes(struct builder *b, const struct bt_sdpa_dims *d) {
    int64_t B = d->B, H = d->H, T = d->T, D = d->D;
    struct shape X = dense(B, H, T, D), S = dense(B, H, T, T), R = dense(B, H, T, 1);
    cudnnBackendDescriptor_t q = real(b, BT_SDPA_Q, CUDNN_DATA_BFLOAT16, X, "Q");
    cudnnBackendDescriptor_t kt = real(b, BT_SDPA_K, CUDNN_DATA_BFLOAT16, transposed(B, H, T, D), "K");
    cudnnBackendDescriptor_t v = real(b, BT_SDPA_V, CUDNN_DATA_BFLOAT16, X, "V");
    cudnnBackendDescriptor_t o = real(b, BT_SDPA_O, CUDNN_DATA_BFLOAT16, X, "O");
    cudnnBackendDescriptor_t stats = real(b, BT_SDPA_STATS, CUDNN_DATA_FLOAT, R, "stats");
    cudnnBackendDescriptor_t scale = scalar(b, BT_SDPA_SCALE, CUDNN_DATA_FLOAT, "scale");
    cudnnBackendDescriptor_t neg_inf =
        d->causal ? scalar(b, BT_SDPA_NEG_INF, CUDNN_DATA_FLOAT, "-inf") : NULL;

    cudnnBackendDescriptor_t s0 = virt(b, CUDNN_DATA_FLOAT, S, "Q Kᵀ");
    matmul(b, q, kt, s0, "Q Kᵀ");
    cudnnBackendDescriptor_t s = virt(b, CUDNN_DATA_FLOAT, S, "scaled scores");
    pointwise(b, CUDNN_POINTWISE_MUL, s0, scale, s, "scaled scores");
    if (d->causal) s = causal_mask(b, s, S, neg_inf);
    cudnnBackendDescriptor_t m = virt(b, CUDNN_DATA_FLOAT, R, "row max");
    reduction(b, CUDNN_REDUCE_TENSOR_MAX, s, m, "row max");
    cudnnBackendDescriptor_t sm = virt(b, CUDNN_DATA_FLOAT, S, "scores - max");
    pointwise(b, CUDNN_POINTWISE_SUB, s, m, sm, "scores - max");
    cudnnBackendDescriptor_t e = virt(b, CUDNN_DATA_FLOAT, S, "exp");
    pointwise(b, CUDNN_POINTWISE_EXP, sm, NULL, e, "exp");
    cudnnBackendDescriptor_t z = virt(b, CUDNN_DATA_FLOAT, R, "row sum");
    reduction(b, CUDNN_REDUCE_TENSOR_ADD, e, z, "row sum");
    cudnnBackendDescriptor_t logz = virt(b, CUDNN_DATA_FLOAT, R, "log row sum");
    pointwise(b, CUDNN_POINTWISE_LOG, z, NULL, logz, "log row sum");
    pointwise(b, CUDNN_POINTWISE_ADD, m, logz, stats, "stats");
    cudnnBackendDescriptor_t p = virt(b, CUDNN_DATA_BFLOAT16, S, "P");
    pointwise(b, CUDNN_POINTWISE_DIV, e, z, p, "P");
    matmul(b, p, v, o, "P V");
}

/* With D = rowsum(dO ∘ O) and P = exp(mask(scale Q Kᵀ - stats)):
 *   dV = Pᵀ dO,  dP = dO Vᵀ,  dS = scale P ∘ (dP - D),  dK = dSᵀ Q,  dQ = dS K
 * (dQ summed in float32, then rounded to bf16) */
static void backward_nodes(struct builder *b, const struct bt_sdpa_dims *d) {
    int64_t B = d->B, H = d->H, T = d->T, D = d->D;
    struct shape X = dense(B, H, T, D), XT = transposed(B, H, T, D), S = dense(B, H, T, T);
    struct shape ST = transposed(B, H, T, T), R = dense(B, H, T, 1);
    cudnnBackendDescriptor_t q = real(b, BT_SDPA_Q, CUDNN_DATA_BFLOAT16, X, "Q");
    cudnnBackendDescriptor_t kt = real(b, BT_SDPA_K, CUDNN_DATA_BFLOAT16, XT, "K");
    cudnnBackendDescriptor_t vt = real(b, BT_SDPA_V, CUDNN_DATA_BFLOAT16, XT, "V");
    cudnnBackendDescriptor_t o = real(b, BT_SDPA_O, CUDNN_DATA_BFLOAT16, X, "O");
    cudnnBackendDescriptor_t dout = real(b, BT_SDPA_DO, CUDNN_DATA_BFLOAT16, X, "dO");
    cudnnBackendDescriptor_t stats = real(b, BT_SDPA_STATS, CUDNN_DATA_FLOAT, R, "stats");
    cudnnBackendDescriptor_t dq = real(b, BT_SDPA_DQ, CUDNN_DATA_BFLOAT16, X, "dQ");
    cudnnBackendDescriptor_t dk = real(b, BT_SDPA_DK, CUDNN_DATA_BFLOAT16, X, "dK");
    cudnnBackendDescriptor_t dv = real(b, BT_SDPA_DV, CUDNN_DATA_BFLOAT16, X, "dV");
    cudnnBackendDescriptor_t sum = real(b, BT_SDPA_SUM, CUDNN_DATA_FLOAT, R, "rowsum(dO O)");
    cudnnBackendDescriptor_t accum = real(b, BT_SDPA_DQ_ACCUM, CUDNN_DATA_FLOAT, X, "dQ float");
    cudnnBackendDescriptor_t scale = scalar(b, BT_SDPA_SCALE, CUDNN_DATA_FLOAT, "scale");
    cudnnBackendDescriptor_t one = scalar(b, BT_SDPA_ONE, CUDNN_DATA_FLOAT, "1");
    cudnnBackendDescriptor_t neg_inf =
        d->causal ? scalar(b, BT_SDPA_NEG_INF, CUDNN_DATA_FLOAT, "-inf") : NULL;

    /* D = rowsum(dO ∘ O); the frontend's element-product strides, (H T D, T D, H D, 1), kept */
    struct shape XO = X;
    XO.stride[2] = H * D;
    cudnnBackendDescriptor_t prod = virt(b, CUDNN_DATA_FLOAT, XO, "dO O");
    pointwise(b, CUDNN_POINTWISE_MUL, dout, o, prod, "dO O");
    cudnnBackendDescriptor_t rows = virt(b, CUDNN_DATA_FLOAT, R, "rowsum(dO O) unscaled");
    reduction(b, CUDNN_REDUCE_TENSOR_ADD, prod, rows, "rowsum(dO O)");
    pointwise(b, CUDNN_POINTWISE_MUL, rows, one, sum, "rowsum(dO O)");

    /* P again, from the forward's statistics */
    cudnnBackendDescriptor_t s0 = virt(b, CUDNN_DATA_FLOAT, S, "Q Kᵀ");
    matmul(b, q, kt, s0, "Q Kᵀ");
    cudnnBackendDescriptor_t s1 = virt(b, CUDNN_DATA_FLOAT, S, "scaled scores");
    pointwise(b, CUDNN_POINTWISE_MUL, s0, scale, s1, "scaled scores");
    cudnnBackendDescriptor_t s2 = virt(b, CUDNN_DATA_FLOAT, S, "scores - stats");
    pointwise(b, CUDNN_POINTWISE_SUB, s1, stats, s2, "scores - stats");
    if (d->causal) s2 = causal_mask(b, s2, S, neg_inf);
    cudnnBackendDescriptor_t p = virt(b, CUDNN_DATA_FLOAT, S, "P");
    pointwise(b, CUDNN_POINTWISE_EXP, s2, NULL, p, "P");

    cudnnBackendDescriptor_t pt = virt(b, CUDNN_DATA_BFLOAT16, ST, "Pᵀ");
    reshape(b, p, pt, "Pᵀ");
    matmul(b, pt, dout, dv, "dV = Pᵀ dO");
    cudnnBackendDescriptor_t dp = virt(b, CUDNN_DATA_FLOAT, S, "dP");
    matmul(b, dout, vt, dp, "dP = dO Vᵀ");
    cudnnBackendDescriptor_t t2 = virt(b, CUDNN_DATA_FLOAT, S, "dP - D");
    pointwise(b, CUDNN_POINTWISE_SUB, dp, sum, t2, "dP - D");
    cudnnBackendDescriptor_t t3 = virt(b, CUDNN_DATA_FLOAT, S, "P (dP - D)");
    pointwise(b, CUDNN_POINTWISE_MUL, t2, p, t3, "P (dP - D)");
    cudnnBackendDescriptor_t ds = virt(b, CUDNN_DATA_FLOAT, S, "dS");
    pointwise(b, CUDNN_POINTWISE_MUL, t3, scale, ds, "dS");
    cudnnBackendDescriptor_t dst = virt(b, CUDNN_DATA_BFLOAT16, ST, "dSᵀ");
    reshape(b, ds, dst, "dSᵀ");
    matmul(b, dst, q, dk, "dK = dSᵀ Q");
    cudnnBackendDescriptor_t k = virt(b, CUDNN_DATA_FLOAT, X, "K");
    reshape(b, kt, k, "K");
    matmul(b, ds, k, accum, "dQ = dS K");
    pointwise(b, CUDNN_POINTWISE_IDENTITY, accum, NULL, dq, "dQ");
}

/* ---- the plan: operation graph, engine heuristics, the first engine config that finalizes ---- */

/* the operations as one graph: cuDNN checks that they connect (by their tensors' uids); a handle
 * is needed only for what follows */
static cudnnBackendDescriptor_t op_graph(struct builder *b, cudnnHandle_t handle) {
    struct bt_sdpa_graph *g = b->g;
    cudnnBackendDescriptor_t graph = make(b, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "graph");
    set(b, graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, g->n_ops, g->ops,
        "graph");
    if (handle)
        set(b, graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle, "graph");
    finalize(b, graph, "operation graph");
    return graph;
}

static void plan(struct builder *b, cudnnBackendDescriptor_t graph) {
    struct bt_sdpa_graph *g = b->g;
    /* heuristics' instant mode first, then the fallback list */
    cudnnBackendHeurMode_t modes[2] = {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK};
    char first[600] = "";
    for (int m = 0; m < 2 && b->ok && !g->plan; m++) {
        cudnnBackendDescriptor_t heur = make(b, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "heuristics");
        set(b, heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
            &graph, "heuristics");
        set(b, heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &modes[m],
            "heuristics");
        finalize(b, heur, "engine heuristics");
        enum { MAX_CFG = 8 };
        cudnnBackendDescriptor_t cfg[MAX_CFG];
        for (int i = 0; i < MAX_CFG; i++)
            cfg[i] = make(b, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine config");
        int64_t found = 0;
        if (b->ok) {
            cudnnStatus_t st =
                cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                         CUDNN_TYPE_BACKEND_DESCRIPTOR, MAX_CFG, &found, cfg);
            if (st != CUDNN_STATUS_SUCCESS) fail(b, st, "engine heuristics' results");
        }
        for (int64_t i = 0; i < found && b->ok && !g->plan; i++) {
            cudnnBackendDescriptor_t p = make(b, CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, "plan");
            set(b, p, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                &cfg[i], "plan");
            if (!b->ok) break;
            cudnnStatus_t st = cudnnBackendFinalize(p);
            if (st == CUDNN_STATUS_SUCCESS)
                g->plan = p;
            else if (!first[0]) { /* an engine that cannot run this graph here: try the next */
                char detail[400] = "";
                cudnnGetLastErrorString(detail, sizeof detail);
                snprintf(first, sizeof first, "%s%s%s", cudnnGetErrorString(st),
                         detail[0] ? ": " : "", detail);
            }
        }
    }
    if (b->ok && !g->plan) {
        b->ok = false;
        snprintf(b->why, b->size, "no cuDNN engine takes the attention graph%s%s",
                 first[0] ? ": " : "", first);
    }
    if (b->ok) {
        int64_t n = 0;
        cudnnStatus_t st =
            cudnnBackendGetAttribute(g->plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                     CUDNN_TYPE_INT64, 1, &n, &g->workspace);
        if (st != CUDNN_STATUS_SUCCESS) fail(b, st, "the plan's workspace size");
    }
}

int bt_sdpa_uids(const struct bt_sdpa_dims *d, int64_t *uids, int max) {
    int n = 0;
    for (int64_t uid = BT_SDPA_Q; uid < BT_SDPA_UID_COUNT; uid++) {
        bool used = d->backward ? (uid != BT_SDPA_NEG_INF || d->causal)
                                : uid <= BT_SDPA_SCALE || (uid == BT_SDPA_NEG_INF && d->causal);
        if (used && n < max) uids[n] = uid;
        n += used;
    }
    return n;
}

float bt_sdpa_neg_inf(void) {
    return cudnnGetVersion() >= 91000 ? -INFINITY : -FLT_MAX; /* what each cuDNN's engines match */
}

bool bt_sdpa_takes(const struct bt_sdpa_dims *d, char *why, size_t size) {
    if (d->B < 1 || d->H < 1 || d->T < 1 || d->D < 1) {
        snprintf(why, size, "an empty attention");
        return false;
    }
    if (d->D % 8 != 0 || d->D > 128) {
        snprintf(why, size,
                 "head size %lld: cuDNN's bf16 flash attention takes multiples of 8 up to 128",
                 (long long)d->D);
        return false;
    }
    return true;
}

bool bt_sdpa_build(struct bt_sdpa_graph *g, const struct bt_sdpa_dims *d, cudnnHandle_t handle,
                   char *why, size_t size) {
    memset(g, 0, sizeof *g);
    struct builder b = {g, why, size, true, 100};
    if (d->backward)
        backward_nodes(&b, d);
    else
        forward_nodes(&b, d);
    cudnnBackendDescriptor_t graph = op_graph(&b, handle);
    if (b.ok && handle) plan(&b, graph);
    g->n_uids = bt_sdpa_uids(d, g->uids, (int)(sizeof g->uids / sizeof *g->uids));
    return b.ok;
}

void bt_sdpa_destroy(struct bt_sdpa_graph *g) {
    for (int i = g->n_descs - 1; i >= 0; i--)
        cudnnBackendDestroyDescriptor(g->descs[i]);
    memset(g, 0, sizeof *g);
}
