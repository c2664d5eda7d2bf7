/* braid's differentiable ops: the table of contents. Every op checks its arguments (shapes,
 * dtypes, devices) and returns NULL with a message naming the op and the shapes on bad input; a
 * NULL argument (an earlier op failed) is passed on as NULL with the first message kept. Results
 * are step tensors (valid until bt_step_end). Float ops take and return float32. */
#ifndef BRAID_CORE_OPS_H
#define BRAID_CORE_OPS_H

#include "core/autograd.h"
#include "core/backend.h"
#include "core/tensor.h"

/* ---- elementwise, with NumPy/PyTorch broadcasting (core/ops/elementwise.c) ---- */
bt_tensor *bt_add(bt_tensor *a, bt_tensor *b);
bt_tensor *bt_sub(bt_tensor *a, bt_tensor *b);
bt_tensor *bt_mul(bt_tensor *a, bt_tensor *b);
bt_tensor *bt_div(bt_tensor *a, bt_tensor *b);
bt_tensor *bt_add_scalar(bt_tensor *x, double s);
bt_tensor *bt_mul_scalar(bt_tensor *x, double s);
bt_tensor *bt_neg(bt_tensor *x);
bt_tensor *bt_exp(bt_tensor *x);
bt_tensor *bt_log(bt_tensor *x);
bt_tensor *bt_tanh(bt_tensor *x);
bt_tensor *bt_sqrt(bt_tensor *x);
bt_tensor *bt_rsqrt(bt_tensor *x);
bt_tensor *bt_pow(bt_tensor *x, double exponent);
bt_tensor *bt_relu(bt_tensor *x);
typedef enum { BT_GELU_TANH, BT_GELU_EXACT } bt_gelu_kind;
bt_tensor *bt_gelu(bt_tensor *x, bt_gelu_kind kind);
bt_tensor *bt_silu(bt_tensor *x);
/* out = mask ? value : x; mask is bool, broadcastable to x */
bt_tensor *bt_masked_fill(bt_tensor *x, bt_tensor *mask, double value);

/* ---- reductions (core/ops/reduce.c) ---- */
bt_tensor *bt_sum(bt_tensor *x, int dim, bool keepdim);
bt_tensor *bt_mean(bt_tensor *x, int dim, bool keepdim);
bt_tensor *bt_max(bt_tensor *x, int dim, bool keepdim); /* values; gradient to the first argmax */
bt_tensor *bt_sum_all(bt_tensor *x);                    /* 0-d */
bt_tensor *bt_mean_all(bt_tensor *x);                   /* 0-d */
/* Sum g over the dims broadcast to reach g's shape from `shape` (used by broadcasting backward). */
bt_tensor *bt_sum_to_shape(bt_tensor *g, int ndim, const int64_t *shape);

/* ---- matmul (core/ops/matmul.c) ---- */
/* a (..., M, K) @ b (..., K, N) -> (..., M, N); batch dims broadcast; 1-D operands as in PyTorch
 * are not accepted (reshape first). Transposed views are passed to sgemm without a copy. */
bt_tensor *bt_matmul(bt_tensor *a, bt_tensor *b);
/* x (..., in) @ w (out, in)^T + bias (out) -> (..., out); bias may be NULL (nn.Linear layout) */
bt_tensor *bt_linear(bt_tensor *x, bt_tensor *w, bt_tensor *bias);
/* bt_gelu(bt_linear(x, w, bias), BT_GELU_TANH) as one op, the MLP's first layer: the backend runs
 * the GELU as the GEMM's epilogue (CUDA: cuBLASLt's; CPU: on each thread's rows while they are in
 * its cache) and keeps one (..., out) buffer for the backward instead of two */
bt_tensor *bt_linear_gelu(bt_tensor *x, bt_tensor *w, bt_tensor *bias);

/* ---- softmax and normalisation (core/ops/softmax.c, core/ops/norm.c) ---- */
bt_tensor *bt_softmax(bt_tensor *x, int dim);
bt_tensor *bt_log_softmax(bt_tensor *x, int dim);
/* over the last dim; weight and bias (C) may be NULL */
bt_tensor *bt_layernorm(bt_tensor *x, bt_tensor *weight, bt_tensor *bias, double eps);
bt_tensor *bt_rmsnorm(bt_tensor *x, bt_tensor *weight, double eps);

/* ---- embedding, loss, dropout (core/ops/embedding.c, loss.c, dropout.c) ---- */
/* weight (V, C), idx (...) of int32/int64/uint16 -> (..., C) */
bt_tensor *bt_embedding(bt_tensor *weight, bt_tensor *idx);
/* logits (..., V), targets (...) integer; mean over targets != -1 (ignore index); 0-d result */
bt_tensor *bt_cross_entropy(bt_tensor *logits, bt_tensor *targets);
/* bt_cross_entropy(bt_linear(x, w, NULL), targets) without the (N, V) logits: x (N, C), w (V, C),
 * targets (N). The logits are made a chunk of rows at a time, and when a gradient will be needed
 * the chunk's gradients of x and w are worked out then, so the backward only scales them by the
 * gradient that comes: the step holds one chunk of logits (at most 128 MiB, all of them when N is
 * small) and (N, C) + (V, C) floats, instead of the logits and their gradient, two (N, V). */
bt_tensor *bt_linear_cross_entropy(bt_tensor *x, bt_tensor *w, bt_tensor *targets);
/* identity when !training or p == 0; masks from the runtime's dropout RNG (bt_manual_seed) */
bt_tensor *bt_dropout(bt_tensor *x, double p, bool training);

/* ---- rotary position embedding (core/ops/rope.c) ---- */
/* x (B, NH, T, hs) with hs even: rotates feature pairs (i, i + hs/2) by the angle
 * (pos_offset + t) * theta^(-2i/hs) (Hugging Face Llama's rotate_half convention). */
bt_tensor *bt_rope(bt_tensor *x, double theta, int64_t pos_offset);

/* ---- attention (core/ops/attention.c) ---- */
/* q (B, NH, T, hs), k and v (B, NKV, T, hs) with NH % NKV == 0 (grouped-query attention) ->
 * (B, NH, T, hs); softmax(q k^T * scale) v, causal mask; scale <= 0 means 1/sqrt(hs). Fused: keeps
 * only the (B, NH, T) log-sum-exp for the backward, never the T x T matrix. */
bt_tensor *bt_attention(bt_tensor *q, bt_tensor *k, bt_tensor *v, bool causal, double scale);
/* The same on a fused projection: qkv (B, T, (NH + 2 NKV) hs) holds, per position, the NH query
 * heads, then the NKV key heads, then the NKV value heads (GPT's c_attn output) -> (B, T, NH hs),
 * the heads side by side. Equals splitting qkv, transposing each part to (B, heads, T, hs),
 * bt_attention and transposing back, without any of those copies: the kernels read q, k, v in
 * place and the backward writes the (B, T, (NH + 2 NKV) hs) gradient directly. */
bt_tensor *bt_attention_qkv(bt_tensor *qkv, int64_t NH, int64_t NKV, bool causal, double scale);

/* ---- joining and splitting (core/ops/views.c) ---- */
bt_tensor *bt_cat(bt_tensor *const *xs, int n, int dim);
/* splits x along dim into n pieces of the given sizes (summing to shape[dim]); views */
bt_status bt_split(bt_tensor *x, const int64_t *sizes, int n, int dim, bt_tensor **out);

#endif
