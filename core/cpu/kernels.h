/* The CPU kernels behind struct bt_backend (see core/backend.h for every buffer's shape). Defined
 * in core/cpu/<family>.c, gathered into bt_cpu_backend by core/cpu/backend.c. */
#ifndef BRAID_CORE_CPU_KERNELS_H
#define BRAID_CORE_CPU_KERNELS_H

#include "core/backend.h"

/* memory.c */
void *bt_cpu_alloc(size_t nbytes);
void bt_cpu_free(void *ptr);
void bt_cpu_copy_strided(void *dst, bt_dtype dst_dtype, const void *src, bt_dtype src_dtype,
                         int ndim, const int64_t *shape, const int64_t *src_strides);
void bt_cpu_fill(void *dst, bt_dtype dtype, int64_t n, double value);
void bt_cpu_to_host(void *host_dst, const void *src, size_t nbytes);
void bt_cpu_from_host(void *dst, const void *host_src, size_t nbytes);

/* elementwise.c */
void bt_cpu_binary(bt_binary_op op, float *out, const float *a, const int64_t *a_strides,
                   const float *b, const int64_t *b_strides, int ndim, const int64_t *shape);
void bt_cpu_unary(bt_unary_op op, float *out, const float *x, int64_t n, float arg);
void bt_cpu_unary_backward(bt_unary_op op, float *dx, const float *dout, const float *x,
                           const float *out, int64_t n, float arg, float beta);
bool bt_cpu_unary_with_grad(bt_unary_op op, float *out, float *dydx, const float *x, int64_t n);
/* x = gelu_tanh(x) in place on the calling thread, and dydx = its derivative when not NULL */
void bt_cpu_gelu_tanh_in_place(float *x, float *dydx, int64_t n);
void bt_cpu_mul_grad(float *dx, const float *dout, const float *dydx, int64_t n, float beta);
void bt_cpu_masked_fill(float *out, const float *x, const uint8_t *mask,
                        const int64_t *mask_strides, int ndim, const int64_t *shape, float value);

/* reduce.c */
void bt_cpu_reduce(bt_reduce_op op, float *out, int64_t *argmax, const float *x, int64_t outer,
                   int64_t dim, int64_t inner);
void bt_cpu_reduce_backward(bt_reduce_op op, float *dx, const float *dout, const int64_t *argmax,
                            int64_t outer, int64_t dim, int64_t inner, float beta);
void bt_cpu_sum_to(float *out, int64_t out_numel, const float *src, int ndim, const int64_t *shape,
                   const int64_t *map);
double bt_cpu_sum_squares(const float *const *xs, const int64_t *ns, int64_t n);

/* matmul.c */
/* Once per process: OpenBLAS single-threaded; braid's OpenMP threads split the GEMMs. */
void bt_cpu_threads_init(void);
/* Whether this machine's OpenBLAS has small-matrix kernels, and whether GEMMs are cut into
 * products for them (on by default where it has them; core/cpu/matmul.c). The setter returns the
 * previous setting: for benchmarks and tests. */
bool bt_cpu_has_small_gemm_kernels(void);
bool bt_cpu_set_small_gemm_chunks(bool on);
/* C (M,N) = alpha op(A) op(B) + beta C on the calling thread (row-major, leading dimensions as
 * given): for kernels that already run inside an OpenMP team, e.g. attention's tiles. */
void bt_cpu_sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                  const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                  int64_t ldc);
void bt_cpu_gemm(bool trans_a, bool trans_b, int64_t batch, int64_t M, int64_t N, int64_t K,
                 float alpha, const float *A, int64_t lda, int64_t stride_a, const float *B,
                 int64_t ldb, int64_t stride_b, float beta, float *C, int64_t stride_c);
void bt_cpu_bias_fill(float *out, const float *bias, int64_t rows, int64_t cols);
void bt_cpu_bias_backward(float *dbias, const float *dout, int64_t rows, int64_t cols, float beta);
bt_epilogue_result bt_cpu_linear_epilogue(float *out, float *aux, const float *A, int64_t lda,
                                          bool trans_b, const float *B, int64_t ldb,
                                          const float *bias, int64_t M, int64_t N, int64_t K,
                                          bool gelu);

/* softmax.c */
void bt_cpu_softmax(float *out, const float *x, int64_t outer, int64_t dim, int64_t inner,
                    bool log);
void bt_cpu_softmax_backward(float *dx, const float *dout, const float *out, int64_t outer,
                             int64_t dim, int64_t inner, bool log, float beta);

/* norm.c */
void bt_cpu_layernorm(float *out, float *mean, float *rstd, const float *x, const float *w,
                      const float *b, int64_t N, int64_t C, float eps);
void bt_cpu_layernorm_backward(float *dx, float *dw, float *db, const float *dout, const float *x,
                               const float *w, const float *mean, const float *rstd, int64_t N,
                               int64_t C, float beta_x, float beta_w, float beta_b);
void bt_cpu_rmsnorm(float *out, float *rstd, const float *x, const float *w, int64_t N, int64_t C,
                    float eps);
void bt_cpu_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x,
                             const float *w, const float *rstd, int64_t N, int64_t C, float beta_x,
                             float beta_w);

/* embedding.c */
void bt_cpu_embedding(float *out, const float *weight, const int64_t *idx, int64_t N, int64_t C);
void bt_cpu_embedding_backward(float *dweight, const float *dout, const int64_t *idx, int64_t N,
                               int64_t C, int64_t V);

/* loss.c */
double bt_cpu_cross_entropy(float *lse, const float *logits, const int64_t *targets, int64_t N,
                            int64_t V, int64_t *count);
void bt_cpu_cross_entropy_backward(float *dlogits, const float *logits, const float *lse,
                                   const int64_t *targets, int64_t N, int64_t V, float scale,
                                   float beta);

/* dropout.c */
void bt_cpu_dropout(float *out, const float *x, int64_t n, float p, uint64_t seed, uint64_t offset,
                    float beta);

/* rope.c */
void bt_cpu_rope(float *out, const float *x, int64_t B, int64_t NH, int64_t T, int64_t hs,
                 float theta, int64_t pos_offset, bool inverse);

/* optim.c */
void bt_cpu_adamw(const struct bt_adamw_span *spans, int64_t n_spans, float grad_scale);
void bt_cpu_sgd(float *p, const float *g, float *buf, int64_t n, float lr, float wd, float momentum,
                float grad_scale);

/* attention.c */
void bt_cpu_attention(float *out, float *lse, const float *q, const float *k, const float *v,
                      int64_t B, int64_t NH, int64_t NKV, int64_t T, int64_t hs, float scale,
                      bool causal, const struct bt_attn_layouts *layouts);
void bt_cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                               const float *k, const float *v, const float *out, const float *lse,
                               int64_t B, int64_t NH, int64_t NKV, int64_t T, int64_t hs,
                               float scale, bool causal, const struct bt_attn_layouts *layouts);

#endif
