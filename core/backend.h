/* The per-device kernel table. Op front ends (core/ops/) check arguments, allocate outputs and
 * record autograd; they reach the math only through a struct bt_backend, one per device type
 * (core/cpu/backend.c; core/cuda/ when built). Kernels do math only: float32 buffers, contiguous
 * row-major unless strides are passed, sizes as int64_t. Shapes are named in each comment. */
#ifndef BRAID_CORE_BACKEND_H
#define BRAID_CORE_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

#include "core/tensor.h"

typedef enum { BT_BIN_ADD, BT_BIN_SUB, BT_BIN_MUL, BT_BIN_DIV } bt_binary_op;

/* Where attention's row (b, h, t) of an operand starts: b·batch + h·head + t·time floats from
 * its base; the row's hs floats are contiguous. Contiguous (B, H, T, hs): {H·T·hs, T·hs, hs}. */
struct bt_attn_layout {
    int64_t batch, head, time;
};
struct bt_attn_layouts {
    struct bt_attn_layout q, k, v, out, dout, dq, dk, dv; /* the backward's: dout, dq, dk, dv */
};

typedef enum {
    BT_UN_NEG,
    BT_UN_EXP,
    BT_UN_LOG,
    BT_UN_TANH,
    BT_UN_SQRT,
    BT_UN_RSQRT,
    BT_UN_POW,        /* x^arg */
    BT_UN_ADD_SCALAR, /* x + arg */
    BT_UN_MUL_SCALAR, /* x * arg */
    BT_UN_RELU,
    BT_UN_GELU_TANH,
    BT_UN_GELU_EXACT,
    BT_UN_SILU,
    BT_UN_COUNT
} bt_unary_op;

typedef enum { BT_RED_SUM, BT_RED_MEAN, BT_RED_MAX } bt_reduce_op;

/* What a fused linear layer did (struct bt_backend's linear_epilogue) */
typedef enum {
    BT_EPI_UNFUSED,    /* nothing: the caller runs gemm, bias_fill and unary itself */
    BT_EPI_DONE,       /* out written; aux not asked for, or not needed */
    BT_EPI_DERIVATIVE, /* out written, and aux = f'(pre), the activation's derivative */
    BT_EPI_INPUT,      /* out written, and aux = pre, the activation's input */
} bt_epilogue_result;

/* AdamW over many parameters in one pass; each span is one parameter's buffers (n floats each,
 * on the backend's device) and its update's constants; gradients are read times grad_scale */
struct bt_adamw_span {
    float *p, *m, *v;
    const float *g;
    int64_t n;
    float decay, beta1, beta2, one_minus_beta1, one_minus_beta2, step_size, bias_correction2_sqrt,
        eps;
};

struct bt_backend {
    const char *name;

    /* ---- memory ---- */
    void *(*alloc)(size_t nbytes); /* NULL on failure */
    void (*free)(void *ptr);
    /* dst (contiguous, dst_dtype) <- src viewed with `shape` and `src_strides` (elements) */
    void (*copy_strided)(void *dst, bt_dtype dst_dtype, const void *src, bt_dtype src_dtype,
                         int ndim, const int64_t *shape, const int64_t *src_strides);
    void (*fill)(void *dst, bt_dtype dtype, int64_t n, double value);
    /* nbytes between the device's memory and the host's; both return once the copy is done */
    void (*to_host)(void *host_dst, const void *src, size_t nbytes);
    void (*from_host)(void *dst, const void *host_src, size_t nbytes);

    /* ---- elementwise (core/cpu/elementwise.c) ---- */
    /* out (shape, contiguous) = a op b, a and b read through broadcast strides (0 = broadcast) */
    void (*binary)(bt_binary_op op, float *out, const float *a, const int64_t *a_strides,
                   const float *b, const int64_t *b_strides, int ndim, const int64_t *shape);
    /* out[n] = f(x[n]; arg) */
    void (*unary)(bt_unary_op op, float *out, const float *x, int64_t n, float arg);
    /* dx[n] (+)= dout[n] * f'(x[n]); `out` = f(x) where the derivative is cheaper from it */
    void (*unary_backward)(bt_unary_op op, float *dx, const float *dout, const float *x,
                           const float *out, int64_t n, float arg, float beta);
    /* out[n] = f(x[n]) and dydx[n] = f'(x[n]) in one pass, for GELU (tanh) and SiLU, whose
     * derivative repeats the forward's exp: the backward is then one multiply (mul_grad). False
     * for other ops. NULL where recomputing f'(x) in the backward costs as little (CUDA). */
    bool (*unary_with_grad)(bt_unary_op op, float *out, float *dydx, const float *x, int64_t n);
    /* dx[n] (+)= dout[n] * dydx[n] */
    void (*mul_grad)(float *dx, const float *dout, const float *dydx, int64_t n, float beta);
    /* out[i] = mask[i] ? value : x[i]; mask (bool) read through broadcast strides */
    void (*masked_fill)(float *out, const float *x, const uint8_t *mask,
                        const int64_t *mask_strides, int ndim, const int64_t *shape, float value);

    /* ---- reductions (core/cpu/reduce.c): x viewed as (outer, dim, inner) ---- */
    /* out (outer, inner); argmax (outer, inner) filled for BT_RED_MAX when not NULL */
    void (*reduce)(bt_reduce_op op, float *out, int64_t *argmax, const float *x, int64_t outer,
                   int64_t dim, int64_t inner);
    /* dx (outer, dim, inner) (+)= dout (outer, inner) broadcast over dim (times 1/dim for MEAN);
     * MAX: only to argmax's position (the rest get 0 when beta is 0) */
    void (*reduce_backward)(bt_reduce_op op, float *dx, const float *dout, const int64_t *argmax,
                            int64_t outer, int64_t dim, int64_t inner, float beta);
    /* out += src summed over broadcast: src (shape, contiguous) element at index (i_0..i_n-1)
     * adds into out[sum_k i_k * map[k]] (map[k] = 0 on a broadcast dim); out has out_numel */
    void (*sum_to)(float *out, int64_t out_numel, const float *src, int ndim, const int64_t *shape,
                   const int64_t *map);
    /* sum over k < n of the squares of xs[k] (ns[k] floats each), in double */
    double (*sum_squares)(const float *const *xs, const int64_t *ns, int64_t n);

    /* ---- matmul (core/cpu/matmul.c) ---- */
    /* C[b] = alpha * op(A[b]) @ op(B[b]) + beta * C[b] for b < batch, row-major, op = transpose
     * when trans_*; A[b] starts at A + b*stride_a (stride 0 broadcasts). C is (M,N), ldc = N. */
    void (*gemm)(bool trans_a, bool trans_b, int64_t batch, int64_t M, int64_t N, int64_t K,
                 float alpha, const float *A, int64_t lda, int64_t stride_a, const float *B,
                 int64_t ldb, int64_t stride_b, float beta, float *C, int64_t stride_c);
    /* out (rows, cols) = bias broadcast over rows */
    void (*bias_fill)(float *out, const float *bias, int64_t rows, int64_t cols);
    /* dbias (cols) (+)= sum over rows of dout (rows, cols) */
    void (*bias_backward)(float *dbias, const float *dout, int64_t rows, int64_t cols, float beta);
    /* A linear layer's forward in one call: out (M, N) = act(pre), pre = A (M, K) op(B) + bias
     * (gemm's A B or A B^T, trans_a false, alpha 1, one batch), bias (N) or NULL; act is GELU
     * (tanh) when gelu, else the identity. With aux (M, N) (GELU in training) the backward's
     * input is written there too, and the result says which (f'(pre) or pre). The result is the
     * unfused path's up to float reassociation. BT_EPI_UNFUSED where the backend cannot fuse these
     * operands (nothing written; not an error); NULL where it never fuses. CPU: GELU only, on each
     * thread's rows of C while they are in its cache; CUDA: cuBLASLt's bias and GELU epilogues. */
    bt_epilogue_result (*linear_epilogue)(float *out, float *aux, const float *A, int64_t lda,
                                          bool trans_b, const float *B, int64_t ldb,
                                          const float *bias, int64_t M, int64_t N, int64_t K,
                                          bool gelu);

    /* ---- softmax family (core/cpu/softmax.c): x viewed as (outer, dim, inner) ---- */
    void (*softmax)(float *out, const float *x, int64_t outer, int64_t dim, int64_t inner,
                    bool log);
    /* dx (+)= softmax/log_softmax backward from out and dout */
    void (*softmax_backward)(float *dx, const float *dout, const float *out, int64_t outer,
                             int64_t dim, int64_t inner, bool log, float beta);

    /* ---- normalisation (core/cpu/norm.c): x (N, C) ---- */
    /* out = (x - mean) * rstd * w + b; mean, rstd (N) saved; w, b may be NULL */
    void (*layernorm)(float *out, float *mean, float *rstd, const float *x, const float *w,
                      const float *b, int64_t N, int64_t C, float eps);
    /* dx, dw, db each (+)= ; any of them may be NULL; betas say overwrite (0) or add (1) */
    void (*layernorm_backward)(float *dx, float *dw, float *db, const float *dout, const float *x,
                               const float *w, const float *mean, const float *rstd, int64_t N,
                               int64_t C, float beta_x, float beta_w, float beta_b);
    /* out = x * rstd * w; rstd (N) saved; w may be NULL */
    void (*rmsnorm)(float *out, float *rstd, const float *x, const float *w, int64_t N, int64_t C,
                    float eps);
    void (*rmsnorm_backward)(float *dx, float *dw, const float *dout, const float *x,
                             const float *w, const float *rstd, int64_t N, int64_t C, float beta_x,
                             float beta_w);

    /* ---- embedding and loss (core/cpu/embedding.c, core/cpu/loss.c) ---- */
    /* out (N, C) = weight[idx[n]] ; idx as int64 (front end converts) */
    void (*embedding)(float *out, const float *weight, const int64_t *idx, int64_t N, int64_t C);
    /* dweight (V, C) += scatter of dout (N, C) by idx; deterministic order */
    void (*embedding_backward)(float *dweight, const float *dout, const int64_t *idx, int64_t N,
                               int64_t C, int64_t V);
    /* logits (N, V), targets (N) (-1 = ignore); lse (N) saved; returns sum of losses and count */
    double (*cross_entropy)(float *lse, const float *logits, const int64_t *targets, int64_t N,
                            int64_t V, int64_t *count);
    /* dlogits (N, V) (+)= (softmax - onehot) * scale, rows with target -1 get 0 */
    void (*cross_entropy_backward)(float *dlogits, const float *logits, const float *lse,
                                   const int64_t *targets, int64_t N, int64_t V, float scale,
                                   float beta);

    /* ---- dropout (core/cpu/dropout.c) ---- */
    /* out[i] = x[i] * keep(i) / (1-p), keep(i) = uniform(seed, offset+i) >= p; used for the
     * backward too (dx from dout with the same seed and offset) */
    void (*dropout)(float *out, const float *x, int64_t n, float p, uint64_t seed, uint64_t offset,
                    float beta);

    /* ---- rotary position embedding (core/cpu/rope.c) ---- */
    /* x, out (B, NH, T, hs), hs even; HF's rotate-half convention: for i < hs/2, with angle
     * (pos_offset + t) * theta^(-2i/hs): out[i] = x[i] cos - x[i+hs/2] sin,
     * out[i+hs/2] = x[i+hs/2] cos + x[i] sin. inverse = rotate by -angle (the backward). */
    void (*rope)(float *out, const float *x, int64_t B, int64_t NH, int64_t T, int64_t hs,
                 float theta, int64_t pos_offset, bool inverse);

    /* ---- attention (core/cpu/attention.c) ---- */
    /* q (B, NH, T, hs), k and v (B, NKV, T, hs), out (B, NH, T, hs), each laid out as its
     * struct bt_attn_layout says (rows of hs contiguous floats; e.g. q, k, v read in place from
     * GPT's fused (B, T, 3C) projection); lse (B, NH, T) contiguous, saved; causal when `causal`;
     * query head h reads kv head h / (NH / NKV) */
    void (*attention)(float *out, float *lse, const float *q, const float *k, const float *v,
                      int64_t B, int64_t NH, int64_t NKV, int64_t T, int64_t hs, float scale,
                      bool causal, const struct bt_attn_layouts *layouts);
    /* dq, dk, dv overwritten (shapes of q, k, v; layouts dq, dk, dv); dout at layout dout */
    void (*attention_backward)(float *dq, float *dk, float *dv, const float *dout, const float *q,
                               const float *k, const float *v, const float *out, const float *lse,
                               int64_t B, int64_t NH, int64_t NKV, int64_t T, int64_t hs,
                               float scale, bool causal, const struct bt_attn_layouts *layouts);

    /* ---- optimizers (core/cpu/optim.c) ---- */
    void (*adamw)(const struct bt_adamw_span *spans, int64_t n_spans, float grad_scale);
    /* p (n) += -lr * d, d = g*grad_scale + wd*p, through the momentum buffer when buf is set
     * (torch.optim.SGD without dampening or nesterov) */
    void (*sgd)(float *p, const float *g, float *buf, int64_t n, float lr, float wd, float momentum,
                float grad_scale);
};

/* The backend of a device; NULL with an error set when that device type is not built/available. */
const struct bt_backend *bt_backend_for(bt_device device, const char *op);
extern const struct bt_backend bt_cpu_backend;

#endif
