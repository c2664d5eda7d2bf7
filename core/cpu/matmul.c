/* CPU matmul kernels: batched sgemm through OpenBLAS (cblas, row-major), bias fill and bias
 * gradient. */
#include <cblas.h>

#include "core/cpu/kernels.h"

void bt_cpu_gemm(bool trans_a, bool trans_b, int64_t batch, int64_t M, int64_t N, int64_t K,
                 float alpha, const float *A, int64_t lda, int64_t stride_a, const float *B,
                 int64_t ldb, int64_t stride_b, float beta, float *C, int64_t stride_c) {
    /* stride_c == 0 means every batch accumulates into the same C (a broadcast operand's grad) */
    for (int64_t b = 0; b < batch; b++) {
        float beta_b = (stride_c == 0 && b > 0) ? 1.0f : beta;
        cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K, alpha,
                    A + b * stride_a, (int)lda, B + b * stride_b, (int)ldb, beta_b,
                    C + b * stride_c, (int)N);
    }
}

void bt_cpu_bias_fill(float *out, const float *bias, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static) if (rows * cols >= 16384)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            out[r * cols + c] = bias[c];
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
