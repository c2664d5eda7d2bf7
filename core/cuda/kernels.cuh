/* The CUDA kernels behind struct bt_backend (core/backend.h says every buffer's shape), one
 * declaration per table entry, defined in core/cuda/<family>.cu and gathered into the table by
 * core/cuda/backend.cu. Device pointers throughout; work is queued on the process's stream. */
#ifndef BRAID_CORE_CUDA_KERNELS_CUH
#define BRAID_CORE_CUDA_KERNELS_CUH

#include "core/cuda/common.cuh"

void bt_cuda_copy_strided(void *dst, bt_dtype dst_dtype, const void *src, bt_dtype src_dtype,
    int ndim, const int64_t *shape, const int64_t *src_strides);
void bt_cuda_fill(void *dst, bt_dtype dtype, int64_t n, double value);
void bt_cuda_to_host(void *host_dst, const void *src, size_t nbytes);
void bt_cuda_from_host(void *dst, const void *host_src, size_t nbytes);
void bt_cuda_binary(bt_binary_op op, float *out, const float *a, const int64_t *a_strides,
    const float *b, const int64_t *b_strides, int ndim, const int64_t *shape);
void bt_cuda_unary(bt_unary_op op, float *out, const float *x, int64_t n, float arg);
void bt_cuda_unary_backward(bt_unary_op op, float *dx, const float *dout, const float *x,
    const float *out, int64_t n, float arg, float beta);
void bt_cuda_masked_fill(float *out, const float *x, const uint8_t *mask,
    const int64_t *mask_strides, int ndim, const int64_t *shape, float value);
void bt_cuda_reduce(bt_reduce_op op, float *out, int64_t *argmax, const float *x, int64_t outer,
    int64_t dim, int64_t inner);
void bt_cuda_reduce_backward(bt_reduce_op op, float *dx, const float *dout, const int64_t *argmax,
    int64_t outer, int64_t dim, int64_t inner, float beta);
void bt_cuda_sum_to(float *out, int64_t out_numel, const float *src, int ndim, const int64_t *shape,
    const int64_t *map);
double bt_cuda_sum_squares(const float *const *xs, const int64_t *ns, int64_t n);
void bt_cuda_gemm(bool trans_a, bool trans_b, int64_t batch, int64_t M, int64_t N, int64_t K,
    float alpha, const float *A, int64_t lda, int64_t stride_a, const float *B,
    int64_t ldb, int64_t stride_b, float beta, float *C, int64_t stride_c);
void bt_cuda_bias_fill(float *out, const float *bias, int64_t rows, int64_t cols);
bt_epilogue_result bt_cuda_linear_epilogue(float *out, float *aux, const float *A, int64_t lda,
                                           bool trans_b, const float *B, int64_t ldb,
                                           const float *bias, int64_t M, int64_t N, int64_t K,
                                           bool gelu);
void bt_cuda_bias_backward(float *dbias, const float *dout, int64_t rows, int64_t cols, float beta);
void bt_cuda_softmax(float *out, const float *x, int64_t outer, int64_t dim, int64_t inner,
    bool log);
void bt_cuda_softmax_backward(float *dx, const float *dout, const float *out, int64_t outer,
    int64_t dim, int64_t inner, bool log, float beta);
void bt_cuda_layernorm(float *out, float *mean, float *rstd, const float *x, const float *w,
    const float *b, int64_t N, int64_t C, float eps);
void bt_cuda_layernorm_backward(float *dx, float *dw, float *db, const float *dout, const float *x,
    const float *w, const float *mean, const float *rstd, int64_t N,
    int64_t C, float beta_x, float beta_w, float beta_b);
void bt_cuda_rmsnorm(float *out, float *rstd, const float *x, const float *w, int64_t N, int64_t C,
    float eps);
void bt_cuda_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x,
    const float *w, const float *rstd, int64_t N, int64_t C, float beta_x,
    float beta_w);
void bt_cuda_embedding(float *out, const float *weight, const int64_t *idx, int64_t N, int64_t C);
void bt_cuda_embedding_backward(float *dweight, const float *dout, const int64_t *idx, int64_t N,
    int64_t C, int64_t V);
double bt_cuda_cross_entropy(float *lse, const float *logits, const int64_t *targets, int64_t N,
    int64_t V, int64_t *count);
void bt_cuda_cross_entropy_backward(float *dlogits, const float *logits, const float *lse,
    const int64_t *targets, int64_t N, int64_t V, float scale,
    float beta);
void bt_cuda_dropout(float *out, const float *x, int64_t n, float p, uint64_t seed, uint64_t offset,
    float beta);
void bt_cuda_rope(float *out, const float *x, int64_t B, int64_t NH, int64_t T, int64_t hs,
    float theta, int64_t pos_offset, bool inverse);
void bt_cuda_adamw(const struct bt_adamw_span *spans, int64_t n_spans, float grad_scale);
void bt_cuda_sgd(float *p, const float *g, float *buf, int64_t n, float lr, float wd,
    float momentum, float grad_scale);
void bt_cuda_attention(float *out, float *lse, const float *q, const float *k, const float *v,
    int64_t B, int64_t NH, int64_t NKV, int64_t T, int64_t hs, float scale,
    bool causal, const struct bt_attn_layouts *layouts);
void bt_cuda_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
    const float *k, const float *v, const float *out, const float *lse,
    int64_t B, int64_t NH, int64_t NKV, int64_t T, int64_t hs,
    float scale, bool causal, const struct bt_attn_layouts *layouts);

#endif
