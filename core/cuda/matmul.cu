/* CUDA matmuls through cuBLASLt. braid's matrices are row-major and cuBLAS's column-major, so
 * C = op(A) op(B) (row-major, M x N) is computed as C^T = op(B)^T op(A)^T: a column-major N x M
 * product with B as cuBLAS's first operand. float32 in and out, float32 compute (no TF32: the
 * float32 path is the one results are checked against). Under mixed precision
 * (bt_set_matmul_dtype(BT_BF16), train.dtype: bfloat16) the operands are rounded to bf16 into
 * scratch first and multiplied on the tensor cores, products summed and written in float32. The
 * heuristic's pick is cached per shape, so a steady-state step asks for none.
 * A linear layer's bias and GELU can run as the matmul's epilogue (bt_cuda_linear_epilogue,
 * opt-in with BRAID_CUDA_EPILOGUES=1 until it has run on a GPU): D = GELU(A B + bias) with the
 * GELU's input written beside it for the backward. Where cuBLASLt has no algorithm for an
 * epilogue, that is remembered per shape and the layer runs unfused. */
#include <stdio.h>
#include <stdlib.h>
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
    uint32_t epilogue;                  /* cublasLtEpilogue_t; DEFAULT for plain matmuls */
    uint32_t align_bias, align_aux;     /* the epilogue's vectors' alignment (0: none) */
};

struct gemm_plan {
    struct gemm_key key;
    bool used;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c; /* cuBLAS's operands: a = braid's B, b = braid's A */
    cublasLtMatmulAlgo_t algo;
    bool unfused; /* an epilogue cuBLASLt has no algorithm for: run the layer unfused */
};

#define PLANS 256
static struct gemm_plan plans[PLANS];
static int next_victim;

static bool same_key(const struct gemm_key *x, const struct gemm_key *y) {
    return memcmp(x, y, sizeof *x) == 0;
}

static void destroy_plan(struct gemm_plan *p) {
    if (!p->used) return;
    if (p->op) cublasLtMatmulDescDestroy(p->op);
    if (p->a) cublasLtMatrixLayoutDestroy(p->a);
    if (p->b) cublasLtMatrixLayoutDestroy(p->b);
    if (p->c) cublasLtMatrixLayoutDestroy(p->c);
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

/* The epilogue's attributes on a matmul descriptor: which one, and its vectors. The pointers are
 * set again before every call; the heuristic reads their alignment. Raw statuses: an attribute
 * this cuBLASLt does not take means "run unfused", not a broken device. */
static bool set_epilogue(cublasLtMatmulDesc_t op, uint32_t epilogue, const void *bias,
                         const void *aux, int64_t aux_ld) {
    cublasLtEpilogue_t e = (cublasLtEpilogue_t)epilogue;
    bool ok = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &e, sizeof e) ==
              CUBLAS_STATUS_SUCCESS;
    if (ok && bias)
        ok = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                            sizeof bias) == CUBLAS_STATUS_SUCCESS;
    if (ok && aux)
        ok = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux,
                                            sizeof aux) == CUBLAS_STATUS_SUCCESS &&
             cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld,
                                            sizeof aux_ld) == CUBLAS_STATUS_SUCCESS;
    return ok;
}

/* cuBLASLt's pick for plan p's descriptor and layouts, told the workspace and the operands'
 * alignment (it otherwise assumes 256-byte aligned operands; views and arena blocks may be less
 * aligned; cuBLAS's a is braid's B). The raw status, with the call it came from in *call. */
static cublasStatus_t ask_heuristic(const struct gemm_key *k, const struct gemm_plan *p,
                                    cublasLtMatmulHeuristicResult_t *result, int *found,
                                    const char **call) {
    size_t ws_bytes;
    bt_cuda_gemm_workspace(&ws_bytes);
    cublasLtMatmulPreference_t pref = NULL;
    *call = "cublasLtMatmulPreferenceCreate";
    cublasStatus_t st = cublasLtMatmulPreferenceCreate(&pref);
    const cublasLtMatmulPreferenceAttributes_t which[] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    const uint32_t *aligns[] = {&k->align_b, &k->align_a, &k->align_c, &k->align_c};
    if (st == CUBLAS_STATUS_SUCCESS) {
        *call = "cublasLtMatmulPreferenceSetAttribute";
        st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                  &ws_bytes, sizeof ws_bytes);
    }
    for (int i = 0; i < 4 && st == CUBLAS_STATUS_SUCCESS; i++)
        st = cublasLtMatmulPreferenceSetAttribute(pref, which[i], aligns[i], sizeof(uint32_t));
    if (st == CUBLAS_STATUS_SUCCESS) {
        *call = "cublasLtMatmulAlgoGetHeuristic";
        st = cublasLtMatmulAlgoGetHeuristic(bt_cuda_cublaslt(), p->op, p->a, p->b, p->c, p->c,
                                            pref, 1, result, found);
    }
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    return st;
}

/* The cached plan for k, made on first use. For an epilogue, bias and aux are this call's
 * vectors (their alignment is in k) and a plan cuBLASLt cannot make is kept as unfused. */
static struct gemm_plan *plan_for(const struct gemm_key *k, const void *bias, const void *aux) {
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
    bool epilogue = k->epilogue != CUBLASLT_EPILOGUE_DEFAULT;
    if (epilogue && !set_epilogue(p->op, k->epilogue, bias, aux, k->N)) {
        p->used = true;
        p->unfused = true; /* the layouts stay unmade: destroy_plan skips NULL handles */
        return p;
    }
    /* braid's B, row-major (K x N, or N x K when transposed), is column-major (N x K | K x N) */
    cudaDataType in = k->bf16 ? CUDA_R_16BF : CUDA_R_32F;
    bool ok =
        layout(&p->a, in, k->tb ? k->K : k->N, k->tb ? k->N : k->K, k->ldb, k->batch, k->sb) &&
        layout(&p->b, in, k->ta ? k->M : k->K, k->ta ? k->K : k->M, k->lda, k->batch, k->sa) &&
        layout(&p->c, CUDA_R_32F, k->N, k->M, k->N, k->batch, k->sc);
    cublasLtMatmulHeuristicResult_t result;
    int found = 0;
    const char *call = "";
    cublasStatus_t st = ok ? ask_heuristic(k, p, &result, &found, &call) : CUBLAS_STATUS_SUCCESS;
    p->used = true; /* from here destroy_plan releases what was made */
    if (ok && epilogue) { /* no algorithm for this epilogue here: unfused, not an error */
        if (st != CUBLAS_STATUS_SUCCESS || found == 0) p->unfused = true;
        else p->algo = result.algo;
        return p;
    }
    ok = ok && bt_cublas_check_(st, call, __FILE__, __LINE__);
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

/* The matmul's inputs: A and B themselves, or under mixed precision their spans' bf16 copies in
 * the matmul scratch (laid out as they were), which round_operands then writes */
struct operands {
    const void *a, *b;
    uint16_t *half;
    int64_t na, na_padded, nb;
};

/* Where the operands will be, and their alignment and dtype in k; false (device marked broken)
 * when the scratch cannot be had */
static bool operands_for(struct gemm_key *k, const float *A, const float *B, struct operands *in) {
    memset(in, 0, sizeof *in);
    in->a = A, in->b = B;
    k->bf16 = bt_runtime()->matmul_dtype == BT_BF16;
    if (k->bf16) {
        in->na = operand_span(k->ta ? k->K : k->M, k->ta ? k->M : k->K, k->lda, k->batch, k->sa);
        in->nb = operand_span(k->tb ? k->N : k->K, k->tb ? k->K : k->N, k->ldb, k->batch, k->sb);
        in->na_padded = (in->na + 127) / 128 * 128; /* B's copy 256-byte aligned */
        in->half = (uint16_t *)bt_cuda_scratch((size_t)(in->na_padded + in->nb) *
                                               sizeof(uint16_t));
        if (!in->half) return false;
        in->a = in->half;
        in->b = in->half + in->na_padded;
    }
    k->align_a = alignment(in->a), k->align_b = alignment(in->b);
    return true;
}

static bool round_operands(const struct operands *in, const float *A, const float *B) {
    if (!in->half) return true;
    to_bf16_kernel<<<bt_blocks(in->na, BT_THREADS), BT_THREADS, 0, bt_cuda_stream()>>>(
        in->half, A, in->na);
    if (!BT_CUDA_LAUNCHED("to_bf16_kernel")) return false;
    to_bf16_kernel<<<bt_blocks(in->nb, BT_THREADS), BT_THREADS, 0, bt_cuda_stream()>>>(
        in->half + in->na_padded, B, in->nb);
    return BT_CUDA_LAUNCHED("to_bf16_kernel");
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
    key.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    struct operands in;
    if (!operands_for(&key, A, B, &in)) return;
    key.align_c = alignment(C);
    struct gemm_plan *p = plan_for(&key, NULL, NULL);
    if (!p || !round_operands(&in, A, B)) return;
    size_t ws_bytes;
    void *ws = bt_cuda_gemm_workspace(&ws_bytes);
    BT_CUBLAS_CHECK(cublasLtMatmul(bt_cuda_cublaslt(), p->op, &alpha, in.b, p->a, in.a, p->b,
                                   &beta, C, p->c, C, p->c, &p->algo, ws, ws_bytes,
                                   bt_cuda_stream()));
}

/* -1 until read or set: what BRAID_CUDA_EPILOGUES says (read when the device starts), and what
 * bt_cuda_set_epilogues chose over it */
static int epilogues_env = -1, epilogues_chosen = -1;

bool bt_cuda_epilogues_from_env(char *why, size_t size) {
    const char *v = getenv("BRAID_CUDA_EPILOGUES");
    epilogues_env = v && strcmp(v, "1") == 0;
    if (!v || !*v || strcmp(v, "0") == 0 || strcmp(v, "1") == 0) return true;
    snprintf(why, size, "BRAID_CUDA_EPILOGUES=%s: expected 0 or 1", v);
    return false;
}

static bool epilogues_on(void) {
    char why[128];
    if (epilogues_chosen >= 0) return epilogues_chosen == 1;
    if (epilogues_env < 0) bt_cuda_epilogues_from_env(why, sizeof why);
    return epilogues_env == 1;
}

bool bt_cuda_set_epilogues(bool on) {
    bool was = epilogues_on();
    epilogues_chosen = on;
    return was;
}

bt_epilogue_result bt_cuda_linear_epilogue(float *out, float *aux, const float *A, int64_t lda,
                                           bool trans_b, const float *B, int64_t ldb,
                                           const float *bias, int64_t M, int64_t N, int64_t K,
                                           bool gelu) {
    /* cuBLASLt: the GELU input's leading dimension (column-major D's rows, braid's N) must be a
     * multiple of 8 */
    if (!epilogues_on() || M == 0 || N == 0 || K == 0 || (aux && N % 8 != 0))
        return BT_EPI_UNFUSED;
    struct gemm_key key;
    memset(&key, 0, sizeof key);
    key.ta = false, key.tb = trans_b, key.batch = 1, key.M = M, key.N = N, key.K = K;
    key.lda = lda, key.ldb = ldb, key.sc = M * N;
    key.beta_is_zero = true;
    cublasLtEpilogue_t e = CUBLASLT_EPILOGUE_BIAS;
    if (gelu && aux) e = bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
    else if (gelu) e = bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
    key.epilogue = e;
    key.align_bias = bias ? alignment(bias) : 0;
    key.align_aux = aux ? alignment(aux) : 0;
    struct operands in;
    if (!operands_for(&key, A, B, &in)) return BT_EPI_DONE; /* no scratch: device marked broken */
    key.align_c = alignment(out);
    struct gemm_plan *p = plan_for(&key, bias, aux);
    if (!p) return BT_EPI_DONE; /* the device is marked broken: every later op fails */
    if (p->unfused) return BT_EPI_UNFUSED;
    if (!round_operands(&in, A, B)) return BT_EPI_DONE;
    if (!set_epilogue(p->op, e, bias, aux, N)) { /* it took them when the plan was made */
        bt_cuda_fail("cuBLASLt took the epilogue's attributes once and not again");
        return BT_EPI_DONE;
    }
    size_t ws_bytes;
    void *ws = bt_cuda_gemm_workspace(&ws_bytes);
    float alpha = 1.0f, beta = 0.0f;
    BT_CUBLAS_CHECK(cublasLtMatmul(bt_cuda_cublaslt(), p->op, &alpha, in.b, p->a, in.a, p->b,
                                   &beta, out, p->c, out, p->c, &p->algo, ws, ws_bytes,
                                   bt_cuda_stream()));
    return gelu && aux ? BT_EPI_INPUT : BT_EPI_DONE;
}

void bt_cuda_gemm_release_plans(void) {
    for (int i = 0; i < PLANS; i++)
        destroy_plan(&plans[i]);
}
