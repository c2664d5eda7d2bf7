/* CPU matmul kernels: batched sgemm through OpenBLAS (cblas, row-major), bias fill and bias
 * gradient. */
#include <cblas.h>
#include <omp.h>
#include <strings.h>

#include "core/cpu/kernels.h"

/* One thread pool: OpenBLAS runs single-threaded (bt_cpu_threads_init) and the GEMM is split
 * across braid's OpenMP threads, so BLAS worker threads never spin against the OpenMP kernels
 * that run between GEMMs (the two pools fought over 2 cores: ~15% of a training step in
 * sched_yield). Each thread computes a block of C's rows or columns, aligned to 16. */
#define GEMM_SPLIT_MIN_FLOPS 2000000.0 /* below this, one thread does the whole product */

void bt_cpu_sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                  const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                  int64_t ldc) {
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K, alpha, A, (int)lda, B,
                (int)ldb, beta, C, (int)ldc);
}

/* OpenBLAS's AVX-512 cores (SkylakeX, Cooperlake, Sapphire Rapids) have "small matrix" kernels
 * that read A and B where they lie, without packing them, for products of up to 1e6 M*N*K (and,
 * at beta = 0, without the pass that zeroes C first). On the shapes of small models, A B (dX)
 * runs 5-16% faster cut into such products than packed, A^T B (dW) mostly faster too (once or
 * twice 2-3% slower), A B^T slower: it stays packed, as does A^T B^T, which OpenBLAS has no
 * small kernel for (bench/README.md, "GEMM chunks"). Other
 * cores have no such kernels: a chunked product would be packed chunk by chunk, slower, so they
 * keep one block per thread. This assumes an OpenBLAS built with SMALL_MATRIX_OPT, as x86-64
 * DYNAMIC_ARCH builds since 0.3.17 are (Debian's is); bench_ops shows whether it pays. */
#define SMALL_GEMM_MNK 1000000.0
#define SMALL_GEMM_MAX_ROWS 64
static bool small_gemm_kernels, small_gemm_chunks = true;

bool bt_cpu_has_small_gemm_kernels(void) {
    return small_gemm_kernels;
}

bool bt_cpu_set_small_gemm_chunks(bool on) {
    bool was = small_gemm_chunks;
    small_gemm_chunks = on;
    return was;
}

/* Rows (or columns) of C per call when C is cut into small-kernel products: a multiple of 8, at
 * most SMALL_GEMM_MAX_ROWS; 0 when this product should not be cut. `other` is C's other side. */
static int64_t small_gemm_chunk(bool trans_a, bool trans_b, int64_t other, int64_t K) {
    if (!small_gemm_kernels || !small_gemm_chunks || trans_b) return 0;
    double rows = SMALL_GEMM_MNK / ((double)other * (double)K);
    int64_t chunk = rows >= SMALL_GEMM_MAX_ROWS ? SMALL_GEMM_MAX_ROWS : (int64_t)rows / 8 * 8;
    return chunk;
}

/* C (M,N) = alpha op(A) op(B) + beta C, split over the threads of the enclosing team. With
 * gelu, C = gelu(C) after (and gelu_dydx = its derivative when not NULL): each thread runs it on
 * the rows it computed, while they are in its cache; over all of C at the end where the split is
 * by columns or there is none. */
static void gemm_parallel(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                          const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                          float *C, bool gelu, float *gelu_dydx) {
    int threads = omp_get_max_threads();
    bool split = threads > 1 && 2.0 * (double)M * (double)N * (double)K >= GEMM_SPLIT_MIN_FLOPS;
    bool split_rows = M >= N; /* split the longer side of C */
    if (!split) {
        bt_cpu_sgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, N);
    } else {
        int64_t len = split_rows ? M : N;
        /* one contiguous part per thread; each part in small-kernel chunks where they pay */
        int64_t part = ((len + threads - 1) / threads + 15) / 16 * 16;
        int64_t chunk = small_gemm_chunk(trans_a, trans_b, split_rows ? N : M, K);
#pragma omp parallel for schedule(static, 1)
        for (int64_t first = 0; first < len; first += part) {
            int64_t end = first + part < len ? first + part : len;
            int64_t step = chunk ? chunk : end - first;
            for (int64_t start = first; start < end; start += step) {
                int64_t n = start + step <= end ? step : end - start;
                if (split_rows) /* rows of op(A) and of C */
                    bt_cpu_sgemm(trans_a, trans_b, n, N, K, alpha,
                                 trans_a ? A + start : A + start * lda, lda, B, ldb, beta,
                                 C + start * N, N);
                else /* columns of op(B) and of C */
                    bt_cpu_sgemm(trans_a, trans_b, M, n, K, alpha, A, lda,
                                 trans_b ? B + start * ldb : B + start, ldb, beta, C + start, N);
            }
            if (gelu && split_rows) /* this thread's rows, still in its cache */
                bt_cpu_gelu_tanh_in_place(C + first * N, gelu_dydx ? gelu_dydx + first * N : NULL,
                                          (end - first) * N);
        }
    }
    if (gelu && !(split && split_rows)) {
        if (gelu_dydx)
            bt_cpu_unary_with_grad(BT_UN_GELU_TANH, C, gelu_dydx, C, M * N);
        else
            bt_cpu_unary(BT_UN_GELU_TANH, C, C, M * N, 0.0f);
    }
}

void bt_cpu_threads_init(void) {
    openblas_set_num_threads(1);
    const char *core = openblas_get_corename();
    small_gemm_kernels =
        core && (strcasecmp(core, "SkylakeX") == 0 || strcasecmp(core, "Cooperlake") == 0 ||
                 strcasecmp(core, "SapphireRapids") == 0);
}

void bt_cpu_gemm(bool trans_a, bool trans_b, int64_t batch, int64_t M, int64_t N, int64_t K,
                 float alpha, const float *A, int64_t lda, int64_t stride_a, const float *B,
                 int64_t ldb, int64_t stride_b, float beta, float *C, int64_t stride_c) {
    /* many small independent products: one per thread; stride_c == 0 means every batch
     * accumulates into the same C (a broadcast operand's gradient), which must stay serial */
    if (batch >= omp_get_max_threads() && stride_c != 0 && batch > 1) {
#pragma omp parallel for schedule(static)
        for (int64_t b = 0; b < batch; b++)
            bt_cpu_sgemm(trans_a, trans_b, M, N, K, alpha, A + b * stride_a, lda, B + b * stride_b,
                         ldb, beta, C + b * stride_c, N);
        return;
    }
    for (int64_t b = 0; b < batch; b++) {
        float beta_b = (stride_c == 0 && b > 0) ? 1.0f : beta;
        gemm_parallel(trans_a, trans_b, M, N, K, alpha, A + b * stride_a, lda, B + b * stride_b,
                      ldb, beta_b, C + b * stride_c, false, NULL);
    }
}

void bt_cpu_bias_fill(float *out, const float *bias, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols >= 16384)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            out[r * cols + c] = bias[c];
}

/* GELU only: the bias is bias_fill and beta 1, as unfused (the same bits); the GELU runs on each
 * thread's rows of C right after its GEMM, in place, instead of over a second buffer later */
bt_epilogue_result bt_cpu_linear_epilogue(float *out, float *aux, const float *A, int64_t lda,
                                          bool trans_b, const float *B, int64_t ldb,
                                          const float *bias, int64_t M, int64_t N, int64_t K,
                                          bool gelu) {
    if (!gelu) return BT_EPI_UNFUSED; /* bias_fill and gemm are already all there is */
    if (bias) bt_cpu_bias_fill(out, bias, M, N);
    gemm_parallel(false, trans_b, M, N, K, 1.0f, A, lda, B, ldb, bias ? 1.0f : 0.0f, out, true,
                  aux);
    return aux ? BT_EPI_DERIVATIVE : BT_EPI_DONE;
}

void bt_cpu_bias_backward(float *dbias, const float *dout, int64_t rows, int64_t cols, float beta) {
#pragma omp parallel for schedule(static) if (rows * cols >= 16384)
    for (int64_t c = 0; c < cols; c++) {
        float acc = 0.0f;
        for (int64_t r = 0; r < rows; r++)
            acc += dout[r * cols + c];
        dbias[c] = beta == 0.0f ? acc : dbias[c] + acc;
    }
}
