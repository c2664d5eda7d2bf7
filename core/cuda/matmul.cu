/* CUDA matmuls through cuBLASLt. braid's matrices are row-major and cuBLAS's column-major, so
 * C = op(A) op(B) (row-major, M x N) is computed as C^T = op(B)^T op(A)^T: a column-major N x M
 * product with B as cuBLAS's first operand. float32 in and out, float32 compute (no TF32: the
 * float32 path is the one results are checked against). The heuristic's pick is cached per
 * shape, so a steady-state step asks for none. */
#include <string.h>

#include "core/cuda/kernels.cuh"

struct gemm_key {
    bool ta, tb;
    int64_t batch, M, N, K, lda, ldb, sa, sb, sc;
    float beta_is_zero;
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

static bool layout(cublasLtMatrixLayout_t *l, int64_t rows, int64_t cols, int64_t ld,
                   int64_t batch, int64_t stride) {
    if (!BT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(l, CUDA_R_32F, (uint64_t)rows,
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
    bool ok = layout(&p->a, k->tb ? k->K : k->N, k->tb ? k->N : k->K, k->ldb, k->batch, k->sb) &&
              layout(&p->b, k->ta ? k->M : k->K, k->ta ? k->K : k->M, k->lda, k->batch, k->sa) &&
              layout(&p->c, k->N, k->M, k->N, k->batch, k->sc);
    cublasLtMatmulPreference_t pref = NULL;
    size_t ws_bytes;
    bt_cuda_gemm_workspace(&ws_bytes);
    cublasLtMatmulHeuristicResult_t result;
    int found = 0;
    ok = ok && BT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref)) &&
         BT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
             pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof ws_bytes)) &&
         BT_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(bt_cuda_cublaslt(), p->op, p->a, p->b,
                                                        p->c, p->c, pref, 1, &result, &found));
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    p->used = true; /* from here destroy_plan releases what was made */
    if (ok && found == 0) {
        bt_error("cuda: cuBLASLt has no algorithm for a float32 matmul (M=%lld N=%lld K=%lld "
                 "batch=%lld)",
                 (long long)k->M, (long long)k->N, (long long)k->K, (long long)k->batch);
        ok = false;
    }
    if (!ok) {
        destroy_plan(p);
        return NULL;
    }
    p->algo = result.algo;
    return p;
}

void bt_cuda_gemm(bool trans_a, bool trans_b, int64_t batch, int64_t M, int64_t N, int64_t K,
                  float alpha, const float *A, int64_t lda, int64_t stride_a, const float *B,
                  int64_t ldb, int64_t stride_b, float beta, float *C, int64_t stride_c) {
    if (M == 0 || N == 0 || batch == 0) return;
    struct gemm_key key;
    memset(&key, 0, sizeof key); /* padding bytes too: keys are compared with memcmp */
    key.ta = trans_a, key.tb = trans_b, key.batch = batch, key.M = M, key.N = N, key.K = K;
    key.lda = lda, key.ldb = ldb, key.sa = stride_a, key.sb = stride_b, key.sc = stride_c;
    key.beta_is_zero = beta == 0.0f;
    struct gemm_plan *p = plan_for(&key);
    if (!p) return;
    size_t ws_bytes;
    void *ws = bt_cuda_gemm_workspace(&ws_bytes);
    BT_CUBLAS_CHECK(cublasLtMatmul(bt_cuda_cublaslt(), p->op, &alpha, B, p->a, A, p->b, &beta, C,
                                   p->c, C, p->c, &p->algo, ws, ws_bytes, bt_cuda_stream()));
}

void bt_cuda_gemm_release_plans(void) {
    for (int i = 0; i < PLANS; i++)
        destroy_plan(&plans[i]);
}
