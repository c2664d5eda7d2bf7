/* bench_ops: GFLOP/s of braid's linear and matmul (forward + backward through autograd) at GPT-2
 * small sizes, next to raw OpenBLAS cblas_sgemm doing the same GEMMs in the same run, and of the
 * fused attention. Median of REPS timed runs after WARMUP; see bench/README.md. */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench.h"
#include "core/cpu/kernels.h"
#include "core/ops.h"
#include "core/runtime.h"

#define WARMUP 3
#define REPS 21

static void die(const char *what) {
    fprintf(stderr, "bench_ops: error: %s: %s\n", what, bt_last_error());
    exit(1);
}

static float *random_buffer(int64_t n, uint64_t seed) {
    float *p = malloc((size_t)n * sizeof(float));
    if (!p) {
        fprintf(stderr, "bench_ops: error: out of memory\n");
        exit(1);
    }
    for (int64_t i = 0; i < n; i++)
        p[i] = bt_rng_uniform_at(seed, (uint64_t)i) - 0.5f;
    return p;
}

/* A persistent tensor filled like random_buffer. */
static bt_tensor *random_tensor(int ndim, const int64_t *shape, uint64_t seed) {
    bt_tensor *t = bt_tensor_new(ndim, shape, BT_F32, bt_cpu());
    if (!t) die("bt_tensor_new");
    struct bt_rng rng = bt_rng_make(seed);
    bt_fill_uniform(t, &rng, -0.5f, 0.5f);
    return t;
}

/* ---- GEMM cases: braid against raw sgemm ---- */

struct matmul_case {
    const char *name;
    int64_t M, K, N; /* x (M,K) against W (N,K): out (M,N) */
};

struct bench_state {
    const struct matmul_case *c;
    bt_tensor *x, *w, *a, *b;          /* persistent data */
    bt_tensor *x_step, *a_step, *grad; /* made by prepare each step */
    float *X, *W, *Y, *G, *dX, *dW;    /* raw sgemm buffers */
};

typedef void (*bench_fn)(struct bench_state *s);

/* Medians of braid's and raw sgemm's times, the two alternating run by run so that machine noise
 * falls on both alike. `prepare` (outside the timer) makes braid's step tensors. */
static void time_pair(bench_fn prepare, bench_fn braid, bench_fn raw, struct bench_state *s,
                      double *t_braid, double *t_raw) {
    double tb[REPS], tr[REPS];
    for (int r = 0; r < WARMUP + REPS; r++) {
        if (prepare) prepare(s);
        double t0 = bench_now();
        braid(s);
        double t1 = bench_now();
        bt_step_end();
        /* raw sgemm gets OpenBLAS's own threads; braid splits GEMMs over OpenMP with OpenBLAS
         * single-threaded (core/cpu/matmul.c) */
        openblas_set_num_threads(omp_get_max_threads());
        double t2 = bench_now();
        raw(s);
        double t3 = bench_now();
        openblas_set_num_threads(1);
        if (r >= WARMUP) tb[r - WARMUP] = t1 - t0, tr[r - WARMUP] = t3 - t2;
    }
    *t_braid = bench_median(tb, REPS);
    *t_raw = bench_median(tr, REPS);
}

/* braid linear: out = x @ W^T, backward with a ones gradient of out's shape: dX, dW (3 GEMMs).
 * x is a step tensor that requires grad (an activation), W a persistent parameter. */
static void linear_prepare(struct bench_state *s) {
    s->x_step = bt_requires_grad_(bt_detach(s->x), true);
    s->grad = bt_ones(BT_SHAPE(s->c->M, s->c->N), BT_F32, bt_cpu());
    if (!s->x_step || !s->grad) die("linear_prepare");
}

static void linear_run(struct bench_state *s) {
    bt_tensor *y = bt_linear(s->x_step, s->w, NULL);
    if (!y || bt_backward_ex(y, s->grad, false) != BT_OK) die("linear");
}

/* the same three GEMMs, with the transposes braid uses; dW accumulates like a parameter's grad */
static void linear_raw(struct bench_state *s) {
    int M = (int)s->c->M, K = (int)s->c->K, N = (int)s->c->N;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, s->X, K, s->W, K, 0.0f,
                s->Y, N);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, N, 1.0f, s->G, N, s->W, K, 0.0f,
                s->dX, K);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, K, M, 1.0f, s->G, N, s->X, K, 1.0f,
                s->dW, K);
}

/* braid matmul: a (M,K) @ b (K,N), both step tensors requiring grad: out, dA, dB */
static void matmul_prepare(struct bench_state *s) {
    s->a_step = bt_requires_grad_(bt_detach(s->a), true);
    s->x_step = bt_requires_grad_(bt_detach(s->b), true);
    s->grad = bt_ones(BT_SHAPE(s->c->M, s->c->N), BT_F32, bt_cpu());
    if (!s->a_step || !s->x_step || !s->grad) die("matmul_prepare");
}

static void matmul_run(struct bench_state *s) {
    bt_tensor *y = bt_matmul(s->a_step, s->x_step);
    if (!y || bt_backward_ex(y, s->grad, false) != BT_OK) die("matmul");
}

static void matmul_raw(struct bench_state *s) {
    /* X doubles as a (M,K), W as b (K,N) here; dW as dB (K,N) */
    int M = (int)s->c->M, K = (int)s->c->K, N = (int)s->c->N;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, s->X, K, s->W, N, 0.0f,
                s->Y, N);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, K, N, 1.0f, s->G, N, s->W, N, 0.0f,
                s->dX, K);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, N, M, 1.0f, s->X, K, s->G, N, 0.0f,
                s->dW, N);
}

/* braid matmul forward only, b given as a transposed view of W (N,K): no copy expected */
static void matmul_fwd_run(struct bench_state *s) {
    if (!bt_matmul(s->x, bt_transpose(s->w, 0, 1))) die("matmul forward");
}

static void matmul_fwd_raw(struct bench_state *s) {
    int M = (int)s->c->M, K = (int)s->c->K, N = (int)s->c->N;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, s->X, K, s->W, K, 0.0f,
                s->Y, N);
}

static void print_row(const char *op, const struct matmul_case *c, double gflop, double t_braid,
                      double t_raw) {
    char shape[64];
    snprintf(shape, sizeof shape, "(%lld,%lld)x(%lld,%lld)", (long long)c->M, (long long)c->K,
             (long long)c->N, (long long)c->K);
    printf("%-16s %-12s %-22s %9.2f %9.2f %9.1f %9.1f %+8.1f%%\n", op, c->name, shape,
           1e3 * t_braid, 1e3 * t_raw, gflop / t_braid, gflop / t_raw,
           100.0 * (t_braid - t_raw) / t_raw);
}

static void bench_matmul_case(const struct matmul_case *c, uint64_t seed) {
    struct bench_state s = {.c = c};
    int64_t M = c->M, K = c->K, N = c->N;
    s.x = random_tensor(BT_SHAPE(M, K), seed);
    s.w = bt_requires_grad_(random_tensor(BT_SHAPE(N, K), seed + 1), true);
    s.a = s.x;
    s.b = random_tensor(BT_SHAPE(K, N), seed + 2);
    s.X = random_buffer(M * K, seed);
    s.W = random_buffer(N * K, seed + 1);
    s.G = random_buffer(M * N, seed + 3);
    s.Y = random_buffer(M * N, seed + 4);
    s.dX = random_buffer(M * K, seed + 5);
    s.dW = random_buffer(N * K, seed + 6);
    double gemm = 2.0 * (double)M * (double)K * (double)N * 1e-9;

    double tb, tr;
    time_pair(linear_prepare, linear_run, linear_raw, &s, &tb, &tr);
    print_row("linear fwd+bwd", c, 3 * gemm, tb, tr);
    time_pair(matmul_prepare, matmul_run, matmul_raw, &s, &tb, &tr);
    print_row("matmul fwd+bwd", c, 3 * gemm, tb, tr);
    time_pair(NULL, matmul_fwd_run, matmul_fwd_raw, &s, &tb, &tr);
    print_row("matmul x@W^T fwd", c, gemm, tb, tr);

    free(s.X), free(s.W), free(s.G), free(s.Y), free(s.dX), free(s.dW);
    bt_tensor_free(s.x);
    bt_tensor_free(s.w);
    bt_tensor_free(s.b);
}

/* ---- attention: no raw reference, GFLOP/s of the fused kernel pair ---- */

struct attention_state {
    bt_tensor *q, *k, *v; /* persistent (B, NH, T, hs) / (B, NKV, T, hs) */
    bt_tensor *qs, *ks, *vs, *grad;
    bool causal;
};

static void bench_attention(int64_t B, int64_t NH, int64_t NKV, int64_t T, int64_t hs,
                            bool causal) {
    struct attention_state s = {.causal = causal};
    s.q = random_tensor(BT_SHAPE(B, NH, T, hs), 11);
    s.k = random_tensor(BT_SHAPE(B, NKV, T, hs), 12);
    s.v = random_tensor(BT_SHAPE(B, NKV, T, hs), 13);
    double fwd[REPS], bwd[REPS];
    for (int r = 0; r < WARMUP + REPS; r++) {
        s.qs = bt_requires_grad_(bt_detach(s.q), true);
        s.ks = bt_requires_grad_(bt_detach(s.k), true);
        s.vs = bt_requires_grad_(bt_detach(s.v), true);
        s.grad = bt_ones(BT_SHAPE(B, NH, T, hs), BT_F32, bt_cpu());
        double t0 = bench_now();
        bt_tensor *y = bt_attention(s.qs, s.ks, s.vs, causal, 0.0);
        double t1 = bench_now();
        if (!y || bt_backward_ex(y, s.grad, false) != BT_OK) die("attention");
        double t2 = bench_now();
        bt_step_end();
        if (r >= WARMUP) fwd[r - WARMUP] = t1 - t0, bwd[r - WARMUP] = t2 - t1;
    }
    /* flops counted as the unfused math: forward QK^T and PV, 4 B NH T^2 hs; backward QK^T, dV,
     * dP, dQ, dK, 10 B NH T^2 hs; both halved when causal (recomputation not counted) */
    double pairs = (double)B * NH * T * T * hs * (causal ? 0.5 : 1.0) * 1e-9;
    double tf = bench_median(fwd, REPS), tb = bench_median(bwd, REPS);
    printf("attention %-6s B=%lld NH=%lld NKV=%lld T=%lld hs=%lld: forward %6.2f ms %5.1f GFLOP/s, "
           "backward %6.2f ms %5.1f GFLOP/s\n",
           causal ? "causal" : "full", (long long)B, (long long)NH, (long long)NKV, (long long)T,
           (long long)hs, 1e3 * tf, 4 * pairs / tf, 1e3 * tb, 10 * pairs / tb);
    bt_tensor_free(s.q);
    bt_tensor_free(s.k);
    bt_tensor_free(s.v);
}

/* the fused-projection form GPT trains with (bt_attention_qkv): q, k, v read in place from one
 * (B, T, (NH + 2 NKV) hs) tensor, out (B, T, NH hs), the gradient written in place */
static void bench_attention_qkv(int64_t B, int64_t NH, int64_t NKV, int64_t T, int64_t hs) {
    bt_tensor *qkv = random_tensor(BT_SHAPE(B, T, (NH + 2 * NKV) * hs), 14);
    double fwd[REPS], bwd[REPS];
    for (int r = 0; r < WARMUP + REPS; r++) {
        bt_tensor *x = bt_requires_grad_(bt_detach(qkv), true);
        bt_tensor *grad = bt_ones(BT_SHAPE(B, T, NH * hs), BT_F32, bt_cpu());
        double t0 = bench_now();
        bt_tensor *y = bt_attention_qkv(x, NH, NKV, true, 0.0);
        double t1 = bench_now();
        if (!y || bt_backward_ex(y, grad, false) != BT_OK) die("attention_qkv");
        double t2 = bench_now();
        bt_step_end();
        if (r >= WARMUP) fwd[r - WARMUP] = t1 - t0, bwd[r - WARMUP] = t2 - t1;
    }
    double pairs = (double)B * NH * T * T * hs * 0.5 * 1e-9;
    double tf = bench_median(fwd, REPS), tb = bench_median(bwd, REPS);
    printf("attention_qkv causal B=%lld NH=%lld NKV=%lld T=%lld hs=%lld: forward %6.2f ms %5.1f "
           "GFLOP/s, backward %6.2f ms %5.1f GFLOP/s\n",
           (long long)B, (long long)NH, (long long)NKV, (long long)T, (long long)hs, 1e3 * tf,
           4 * pairs / tf, 1e3 * tb, 10 * pairs / tb);
    bt_tensor_free(qkv);
}

/* ---- GEMM chunks: the three GEMMs of a linear layer, cut for OpenBLAS's small-matrix kernels or
 * one block per thread (core/cpu/matmul.c), alternating run by run ---- */

static double time_gemm(int which, const struct matmul_case *c, const float *X, const float *W,
                        const float *G, float *Y, float *dX, float *dW) {
    int64_t M = c->M, K = c->K, N = c->N;
    double t0 = bench_now();
    if (which == 0) /* out (M,N) = x W^T */
        bt_cpu_gemm(false, true, 1, M, N, K, 1.0f, X, K, 0, W, K, 0, 0.0f, Y, 0);
    else if (which == 1) /* dX (M,K) = g W */
        bt_cpu_gemm(false, false, 1, M, K, N, 1.0f, G, N, 0, W, K, 0, 0.0f, dX, 0);
    else /* dW (N,K) += g^T x */
        bt_cpu_gemm(true, false, 1, N, K, M, 1.0f, G, N, 0, X, K, 0, 1.0f, dW, 0);
    return bench_now() - t0;
}

static void bench_gemm_chunks(const struct matmul_case *c) {
    float *X = random_buffer(c->M * c->K, 1), *W = random_buffer(c->N * c->K, 2);
    float *G = random_buffer(c->M * c->N, 3), *Y = random_buffer(c->M * c->N, 4);
    float *dX = random_buffer(c->M * c->K, 5), *dW = random_buffer(c->N * c->K, 6);
    double flops = 2.0 * (double)c->M * (double)c->N * (double)c->K * 1e-9;
    printf("%-12s", c->name);
    for (int which = 0; which < 3; which++) {
        double t[2][REPS];
        for (int r = 0; r < WARMUP + REPS; r++)
            for (int chunked = 0; chunked < 2; chunked++) {
                bt_cpu_set_small_gemm_chunks(chunked);
                double dt = time_gemm(which, c, X, W, G, Y, dX, dW);
                if (r >= WARMUP) t[chunked][r - WARMUP] = dt;
            }
        static const char *const gemm_names[] = {"out", "dX", "dW"};
        printf("  %s %6.1f -> %6.1f", gemm_names[which], flops / bench_median(t[0], REPS),
               flops / bench_median(t[1], REPS));
    }
    printf("  GFLOP/s\n");
    bt_cpu_set_small_gemm_chunks(true);
    free(X), free(W), free(G), free(Y), free(dX), free(dW);
}

/* ---- activations: GELU-tanh's kernels on a (rows, cols) activation ---- */

static void bench_gelu(int64_t rows, int64_t cols) {
    bt_tensor *x = random_tensor(BT_SHAPE(rows, cols), 21);
    int64_t n = rows * cols;
    float *y = malloc((size_t)n * sizeof(float)), *g = malloc((size_t)n * sizeof(float));
    float *dx = malloc((size_t)n * sizeof(float));
    if (!y || !g || !dx) die("gelu: out of memory");
    for (int64_t i = 0; i < n; i++)
        g[i] = 1.0f;
    float *d = malloc((size_t)n * sizeof(float));
    if (!d) die("gelu: out of memory");
    const struct bt_backend *be = bt_backend_for(bt_cpu(), "bench");
    double fwd[REPS], bwd[REPS], fwd_saving[REPS], bwd_saved[REPS];
    for (int r = 0; r < WARMUP + REPS; r++) {
        double t0 = bench_now();
        be->unary(BT_UN_GELU_TANH, y, bt_f32(x), n, 0.0f);
        double t1 = bench_now();
        be->unary_backward(BT_UN_GELU_TANH, dx, g, bt_f32(x), y, n, 0.0f, 0.0f);
        double t2 = bench_now();
        be->unary_with_grad(BT_UN_GELU_TANH, y, d, bt_f32(x), n);
        double t3 = bench_now();
        be->mul_grad(dx, g, d, n, 0.0f);
        double t4 = bench_now();
        if (r >= WARMUP) {
            fwd[r - WARMUP] = t1 - t0, bwd[r - WARMUP] = t2 - t1;
            fwd_saving[r - WARMUP] = t3 - t2, bwd_saved[r - WARMUP] = t4 - t3;
        }
    }
    printf("gelu_tanh (%lld,%lld): forward %6.3f ms, backward %6.3f ms (recomputing f'); training "
           "(f' saved): forward %6.3f ms, backward %6.3f ms\n",
           (long long)rows, (long long)cols, 1e3 * bench_median(fwd, REPS),
           1e3 * bench_median(bwd, REPS), 1e3 * bench_median(fwd_saving, REPS),
           1e3 * bench_median(bwd_saved, REPS));
    free(y);
    free(g);
    free(dx);
    free(d);
    bt_tensor_free(x);
}

int main(int argc, char **argv) {
    const char *omp = getenv("OMP_NUM_THREADS"), *obt = getenv("OPENBLAS_NUM_THREADS");
    printf("command:");
    if (omp) printf(" OMP_NUM_THREADS=%s", omp);
    if (obt) printf(" OPENBLAS_NUM_THREADS=%s", obt);
    for (int i = 0; i < argc; i++)
        printf(" %s", argv[i]);
    printf("\n");
    printf("threads: raw sgemm with OpenBLAS's %d threads; braid with %d OpenMP threads over "
           "single-threaded OpenBLAS; %s\n",
           omp_get_max_threads(), omp_get_max_threads(), openblas_get_config());
    printf("timing: median of %d runs after %d warm-up runs; ms per run; overhead = braid/raw - 1\n"
           "linear/matmul fwd+bwd = 3 GEMMs (out, dX, dW), 6*M*K*N flops; backward seeded with a "
           "ones gradient (no loss reduction)\n\n",
           REPS, WARMUP);
    printf("%-16s %-12s %-22s %9s %9s %9s %9s %9s\n", "op", "layer", "x @ W^T", "braid ms",
           "sgemm ms", "braid GF", "sgemm GF", "overhead");

    static const struct matmul_case cases[] = {
        {"attn.qkv", 2048, 384, 1152},
        {"attn.proj", 2048, 384, 384},
        {"mlp.fc", 2048, 384, 1536},
        {"mlp.proj", 2048, 1536, 384},
        /* configs/shakespeare_char.yaml: B*T = 768, C = 128, and its lm_head (V = 65) */
        {"sh.attn.qkv", 768, 128, 384},
        {"sh.attn.proj", 768, 128, 128},
        {"sh.mlp.fc", 768, 128, 512},
        {"sh.mlp.proj", 768, 512, 128},
        {"sh.lm_head", 768, 128, 65},
    };
    bool attention_only = argc > 1 && strcmp(argv[1], "attention") == 0;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]) && !attention_only; i++)
        bench_matmul_case(&cases[i], 100 + 10 * i);
    if (!attention_only && bt_cpu_has_small_gemm_kernels()) {
        printf("\nGEMM chunks (%s): one block per thread -> small-matrix kernels\n",
               openblas_get_corename());
        for (size_t i = 4; i < sizeof(cases) / sizeof(cases[0]); i++)
            bench_gemm_chunks(&cases[i]);
    }
    if (!attention_only) {
        printf("\n");
        bench_gelu(2048, 1536); /* bench/train_cpu.yaml's MLP */
        bench_gelu(768, 512);   /* configs/shakespeare_char.yaml's */
    }

    printf("\n");
    bench_attention(8, 6, 6, 256, 64, true);
    bench_attention(8, 6, 2, 256, 64, true);
    bench_attention(12, 4, 4, 64, 32, true); /* configs/shakespeare_char.yaml */
    bench_attention_qkv(12, 4, 4, 64, 32);
    bench_attention_qkv(8, 6, 6, 256, 64); /* bench/train_cpu.yaml */
    bt_runtime_shutdown();
    return 0;
}
