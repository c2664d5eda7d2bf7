/* CUDA matmuls through cuBLASLt. braid's matrices are row-major and cuBLAS's column-major, so
 * C = op(A) op(B) (row-major, M x N) is computed as C^T = op(B)^T op(A)^T: a column-major N x M
 * product with B as cuBLAS's first operand. float32 in and out, float32 compute (no TF32: the
 * float32 path is the one results are checked against). Under mixed precision
 * (bt_set_matmul_dtype(BT_BF16), train.dtype: bfloat16) the operands are rounded to bf16 into
 * scratch first and multiplied on the tensor cores, products summed and written in float32. The
 * heuristic's pick is cached per shape, so a steady-state step asks for none. */
#include <string.h>

#include "core/cuda/kernels.cuh"
extern "C" {
#include "core/runtime.h"
}

struct gemm_key {
    bool ta, tb;
    int64_t batch, M, N, K, lda, ldb, sa, sb, sc;
    float beta_is_zero;
    int bf16;                           /* operands in bf16 (mixed precision) */
    uint32_t align_a, align_b, align_c; /* the pointers' alignment in bytes, up to 256 */
};

struct gemm_plan {
    struct gemm_key key;
    bool used;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c; /* cuBLAS's operands: a = braid's B, b = braid's A */
    cublasLtMatmulAlgo_t algo;
};

#define PLANS 256
static struct gemm_plan plans[PLANS];
static int next_victim;

static bool same_key(const struct gemm_key *x, const struct gemm_key *y) {
    return memcmp(x, y, sizeof *x) == 0;
}

static void destroy_plan(struct gemm_plan *p) {
    if (!p->used) return;
    cublasLtMatmulDescDestroy(p->op);
    cublasLtMatrixLayoutDestroy(p->a);
    cublasLtMatrixLayoutDestroy(p->b);
    cublasLtMatrixLayoutDestroy(p->c);
    p->used = false;
}

static bool layout(cublasLtMatrixLayout_t *l, cudaDataType type, int64_t rows, int64_t cols,
                   int64_t ld, int64_t batch, int64_t stride) {
    if (!BT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(l, type, (uint64_t)rows,
                                                    (uint64_t)cols, ld)))
        return false;
    if (batch == 1) return true;
    int32_t count = (int32_t)batch;
    return BT_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
               *l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count)) &&
           BT_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
               *l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride));
}

static struct gemm_plan *plan_for(const struct gemm_key *k) {
    for (int i = 0; i < PLANS; i++)
        if (plans[i].used && same_key(&plans[i].key, k)) return &plans[i];
    struct gemm_plan *p = &plans[next_victim];
    next_victim = (next_victim + 1) % PLANS;
    destroy_plan(p);
    memset(p, 0, sizeof *p);
    p->key = *k;
    cublasOperation_t op_a = k->tb ? CUBLAS_OP_T : CUBLAS_OP_N; /* cuBLAS's a = braid's B */
    cublasOperation_t op_b = k->ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (!BT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F)))
        return NULL;
    if (!BT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &op_a,
                                                        sizeof op_a)) ||
        !BT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &op_b,
                                                        sizeof op_b))) {
        cublasLtMatmulDescDestroy(p->op);
        return NULL;
    }
    /* braid's B, row-major (K x N, or N x K when transposed), is column-major (N x K | K x N) */
    cudaDataType in = k->bf16 ? CUDA_R_16BF : CUDA_R_32F;
    bool ok =
        layout(&p->a, in, k->tb ? k->K : k->N, k->tb ? k->N : k->K, k->ldb, k->batch, k->sb) &&
        layout(&p->b, in, k->ta ? k->M : k->K, k->ta ? k->K : k->M, k->lda, k->batch, k->sa) &&
        layout(&p->c, CUDA_R_32F, k->N, k->M, k->N, k->batch, k->sc);
    cublasLtMatmulPreference_t pref = NULL;
    size_t ws_bytes;
    bt_cuda_gemm_workspace(&ws_bytes);
    cublasLtMatmulHeuristicResult_t result;
    int found = 0;
    /* the heuristic otherwise assumes 256-byte aligned operands; views and arena blocks may be
     * less aligned (cuBLAS's a is braid's B) */
    ok = ok && BT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref)) &&
         BT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
             pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof ws_bytes)) &&
         BT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
             pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &k->align_b, sizeof k->align_b)) &&
         BT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
             pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &k->align_a, sizeof k->align_a)) &&
         BT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
             pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &k->align_c, sizeof k->align_c)) &&
         BT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
             pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &k->align_c, sizeof k->align_c)) &&
         BT_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(bt_cuda_cublaslt(), p->op, p->a, p->b,
                                                        p->c, p->c, pref, 1, &result, &found));
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    p->used = true; /* from here destroy_plan releases what was made */
    if (ok && found == 0) {
        bt_cuda_fail("cuBLASLt has no algorithm for a %s matmul (M=%lld N=%lld K=%lld "
                     "batch=%lld)",
                     k->bf16 ? "bf16" : "float32", (long long)k->M, (long long)k->N,
                     (long long)k->K, (long long)k->batch);
        ok = false;
    }
    if (!ok) {
        destroy_plan(p);
        return NULL;
    }
    p->algo = result.algo;
    return p;
}

__global__ void to_bf16_kernel(uint16_t *dst, const float *src, int64_t n) {
    BT_GRID_STRIDE(i, n) dst[i] = bt_f32_to_bf16(src[i]);
}

/* elements from a row-major operand's first to its last: rows x cols with leading dimension ld,
 * batch copies stride apart (stride 0: one copy, broadcast) */
static int64_t operand_span(int64_t rows, int64_t cols, int64_t ld, int64_t batch,
                            int64_t stride) {
    if (rows == 0 || cols == 0) return 0;
    int64_t one = (rows - 1) * ld + cols;
    return batch > 1 && stride > 0 ? (batch - 1) * stride + one : one;
}

static uint32_t alignment(const void *p) {
    uintptr_t u = (uintptr_t)p;
    uint32_t a = 256;
    while (a > 4 && u % a) a /= 2;
    return a;
}

void bt_cuda_gemm(bool trans_a, bool trans_b, int64_t batch, int64_t M, int64_t N, int64_t K,
                  float alpha, const float *A, int64_t lda, int64_t stride_a, const float *B,
                  int64_t ldb, int64_t stride_b, float beta, float *C, int64_t stride_c) {
    if (M == 0 || N == 0 || batch == 0) return;
    if (K == 0) { /* C = beta C (the CPU's sgemm does the same) */
        for (int64_t b = 0; b < (stride_c ? batch : 1); b++) {
            if (beta == 0.0f) /* BLAS's beta = 0: C is not read (it may hold NaN) */
                bt_cuda_fill(C + b * stride_c, BT_F32, M * N, 0.0);
            else
                bt_cuda_unary(BT_UN_MUL_SCALAR, C + b * stride_c, C + b * stride_c, M * N, beta);
        }
        return;
    }
    if (batch > 1 && stride_c == 0) { /* every batch adds into one C (a 2-d operand's gradient):
                                         in turn, as the CPU, not at once (cuBLASLt's batches
                                         would race on C) */
        for (int64_t b = 0; b < batch; b++)
            bt_cuda_gemm(trans_a, trans_b, 1, M, N, K, alpha, A + b * stride_a, lda, 0,
                         B + b * stride_b, ldb, 0, b == 0 ? beta : 1.0f, C, 0);
        return;
    }
    struct gemm_key key;
    memset(&key, 0, sizeof key); /* padding bytes too: keys are compared with memcmp */
    key.ta = trans_a, key.tb = trans_b, key.batch = batch, key.M = M, key.N = N, key.K = K;
    key.lda = lda, key.ldb = ldb, key.sa = stride_a, key.sb = stride_b, key.sc = stride_c;
    key.beta_is_zero = beta == 0.0f;
    key.bf16 = bt_runtime()->matmul_dtype == BT_BF16;
    const void *a_in = A, *b_in = B;
    if (key.bf16) { /* A's and B's spans rounded to bf16, laid out as they were */
        int64_t na = operand_span(trans_a ? K : M, trans_a ? M : K, lda, batch, stride_a);
        int64_t nb = operand_span(trans_b ? N : K, trans_b ? K : N, ldb, batch, stride_b);
        int64_t na_padded = (na + 127) / 128 * 128; /* B's copy 256-byte aligned */
        uint16_t *half = (uint16_t *)bt_cuda_scratch((size_t)(na_padded + nb) * sizeof(uint16_t));
        if (!half) return;
        to_bf16_kernel<<<bt_blocks(na, BT_THREADS), BT_THREADS, 0, bt_cuda_stream()>>>(half, A,
                                                                                     na);
        if (!BT_CUDA_LAUNCHED("to_bf16_kernel")) return;
        to_bf16_kernel<<<bt_blocks(nb, BT_THREADS), BT_THREADS, 0, bt_cuda_stream()>>>(
            half + na_padded, B, nb);
        if (!BT_CUDA_LAUNCHED("to_bf16_kernel")) return;
        a_in = half;
        b_in = half + na_padded;
    }
    key.align_a = alignment(a_in), key.align_b = alignment(b_in), key.align_c = alignment(C);
    struct gemm_plan *p = plan_for(&key);
    if (!p) return;
    size_t ws_bytes;
    void *ws = bt_cuda_gemm_workspace(&ws_bytes);
    BT_CUBLAS_CHECK(cublasLtMatmul(bt_cuda_cublaslt(), p->op, &alpha, b_in, p->a, a_in, p->b,
                                   &beta, C, p->c, C, p->c, &p->algo, ws, ws_bytes,
                                   bt_cuda_stream()));
}

void bt_cuda_gemm_release_plans(void) {
    for (int i = 0; i < PLANS; i++)
        destroy_plan(&plans[i]);
}
