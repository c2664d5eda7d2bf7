/* matmul and linear: forward values worked out by hand, gradient checks (batched, broadcast,
 * transposed views on either side, bias, 3-D input), the fused linear + GELU against the two ops
 * it replaces, and the messages of bad inputs. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/cpu/kernels.h"
#include "tests/gradcheck.h"

static void assert_values(const bt_tensor *y, const float *expect, int64_t n) {
    ck_assert_ptr_nonnull(y);
    ck_assert_int_eq(bt_numel(y), n);
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(bt_get(y, i) == expect[i], "element %lld: got %g, expected %g", (long long)i,
                      bt_get(y, i), (double)expect[i]);
}

START_TEST(test_matmul_forward_2d) {
    float a[] = {1, 2, 3, 4, 5, 6};    /* (2,3) */
    float b[] = {7, 8, 9, 10, 11, 12}; /* (3,2) */
    bt_tensor *y =
        bt_matmul(bt_from_data(BT_SHAPE(2, 3), BT_F32, a), bt_from_data(BT_SHAPE(3, 2), BT_F32, b));
    /* [1*7+2*9+3*11, 1*8+2*10+3*12; 4*7+5*9+6*11, 4*8+5*10+6*12] */
    float expect[] = {58, 64, 139, 154};
    assert_values(y, expect, 4);
    ck_assert_int_eq(y->ndim, 2);
    ck_assert_int_eq(y->shape[0], 2);
    ck_assert_int_eq(y->shape[1], 2);
}
END_TEST

START_TEST(test_matmul_forward_batched_and_broadcast) {
    float a[] = {1, 2, 3, 4,  /* batch 0: [[1,2],[3,4]] */
                 0, 1, 1, 0}; /* batch 1: [[0,1],[1,0]] */
    float b[] = {5, 6, 7, 8}; /* [[5,6],[7,8]] */
    bt_tensor *ta = bt_from_data(BT_SHAPE(2, 2, 2), BT_F32, a);
    bt_tensor *tb = bt_from_data(BT_SHAPE(2, 2), BT_F32, b);
    float expect[] = {19, 22, 43, 50, 7, 8, 5, 6}; /* a[0] @ b; a[1] @ b swaps b's rows */
    bt_tensor *y = bt_matmul(ta, tb);
    assert_values(y, expect, 8);
    ck_assert_int_eq(y->ndim, 3);
    /* 2-D @ batched: b @ a[i] */
    float expect2[] = {23, 34, 31, 46,
                       6,  5,  8,  7}; /* [[5,6],[7,8]] @ [[1,2],[3,4]]; cols swapped */
    assert_values(bt_matmul(tb, ta), expect2, 8);
    /* batched @ batched */
    float expect3[] = {7, 10, 15, 22, 1, 0, 0, 1}; /* a[0]^2, a[1]^2 */
    assert_values(bt_matmul(ta, ta), expect3, 8);
}
END_TEST

START_TEST(test_matmul_forward_transposed_view) {
    float at[] = {1, 4, 2, 5, 3, 6}; /* (3,2), the transpose of [[1,2,3],[4,5,6]] */
    float b[] = {7, 8, 9, 10, 11, 12};
    bt_tensor *a = bt_transpose(bt_from_data(BT_SHAPE(3, 2), BT_F32, at), 0, 1);
    bt_tensor *y = bt_matmul(a, bt_from_data(BT_SHAPE(3, 2), BT_F32, b));
    float expect[] = {58, 64, 139, 154};
    assert_values(y, expect, 4);
    /* and on the right: [[1,2,3],[4,5,6]] @ ([[1,2,3],[4,5,6]])^T */
    float m[] = {1, 2, 3, 4, 5, 6};
    bt_tensor *x = bt_from_data(BT_SHAPE(2, 3), BT_F32, m);
    float expect2[] = {14, 32, 32, 77};
    assert_values(bt_matmul(x, bt_transpose(x, 0, 1)), expect2, 4);
}
END_TEST

START_TEST(test_linear_forward) {
    float x[] = {1, 2, 3, 4, 5, 6};  /* (2,3) */
    float w[] = {1, 0, -1, 2, 1, 0}; /* (2,3): rows are output features */
    float bias[] = {0.5f, -1};
    bt_tensor *tx = bt_from_data(BT_SHAPE(2, 3), BT_F32, x);
    bt_tensor *tw = bt_from_data(BT_SHAPE(2, 3), BT_F32, w);
    bt_tensor *tb = bt_from_data(BT_SHAPE(2), BT_F32, bias);
    /* x @ w^T = [[1-3, 2+2], [4-6, 8+5]] = [[-2,4],[-2,13]] */
    float expect[] = {-1.5f, 3, -1.5f, 12};
    assert_values(bt_linear(tx, tw, tb), expect, 4);
    float expect_nobias[] = {-2, 4, -2, 13};
    assert_values(bt_linear(tx, tw, NULL), expect_nobias, 4);
    /* 3-D input (1,2,3) -> (1,2,2) */
    bt_tensor *y3 = bt_linear(bt_from_data(BT_SHAPE(1, 2, 3), BT_F32, x), tw, tb);
    assert_values(y3, expect, 4);
    ck_assert_int_eq(y3->ndim, 3);
    ck_assert_int_eq(y3->shape[2], 2);
    /* weight given as a transposed view of its (in, out) storage */
    float wt[] = {1, 2, 0, 1, -1, 0};
    bt_tensor *wv = bt_transpose(bt_from_data(BT_SHAPE(3, 2), BT_F32, wt), 0, 1);
    assert_values(bt_linear(tx, wv, tb), expect, 4);
}
END_TEST

/* ---- gradient checks ---- */

static bt_tensor *fn_matmul(bt_tensor **in, void *ctx) {
    return bt_matmul(in[0], in[1]);
}
static bt_tensor *fn_matmul_ta(bt_tensor **in, void *ctx) {
    return bt_matmul(bt_transpose(in[0], -2, -1), in[1]);
}
static bt_tensor *fn_matmul_tb(bt_tensor **in, void *ctx) {
    return bt_matmul(in[0], bt_transpose(in[1], -2, -1));
}
static bt_tensor *fn_matmul_tab(bt_tensor **in, void *ctx) {
    return bt_matmul(bt_transpose(in[0], -2, -1), bt_transpose(in[1], -2, -1));
}
/* a stored (M, batch, K), viewed (batch, M, K): batch stride K, row stride batch*K */
static bt_tensor *fn_matmul_permuted_batch(bt_tensor **in, void *ctx) {
    return bt_matmul(bt_transpose(in[0], 0, 1), in[1]);
}
static bt_tensor *fn_matmul_self(bt_tensor **in, void *ctx) {
    return bt_matmul(in[0], in[0]);
}

#define PARAMS2(seed, shape_a, shape_b)                                                            \
    (bt_tensor *[]) {                                                                              \
        test_param(BT_SHAPE shape_a, seed, -1, 1), test_param(BT_SHAPE shape_b, seed + 1, -1, 1)   \
    }

START_TEST(test_matmul_gradients) {
    GRADCHECK("matmul 2-D", fn_matmul, PARAMS2(1, (3, 4), (4, 5)), 2, NULL);
    GRADCHECK("matmul 3-D", fn_matmul, PARAMS2(3, (2, 3, 4), (2, 4, 5)), 2, NULL);
    GRADCHECK("matmul 4-D", fn_matmul, PARAMS2(5, (2, 2, 3, 4), (2, 2, 4, 2)), 2, NULL);
    GRADCHECK("matmul batched @ 2-D", fn_matmul, PARAMS2(7, (2, 3, 4), (4, 5)), 2, NULL);
    GRADCHECK("matmul 4-D @ 2-D", fn_matmul, PARAMS2(9, (2, 2, 3, 4), (4, 2)), 2, NULL);
    GRADCHECK("matmul 2-D @ batched", fn_matmul, PARAMS2(11, (3, 4), (2, 4, 5)), 2, NULL);
    GRADCHECK("matmul row @ col", fn_matmul, PARAMS2(13, (1, 4), (4, 1)), 2, NULL);
    GRADCHECK("matmul x @ x", fn_matmul_self,
              (bt_tensor *[]){test_param(BT_SHAPE(3, 3), 15, -1, 1)}, 1, NULL);
}
END_TEST

START_TEST(test_matmul_gradients_transposed_views) {
    GRADCHECK("matmul a^T @ b", fn_matmul_ta, PARAMS2(21, (4, 3), (4, 5)), 2, NULL);
    GRADCHECK("matmul a @ b^T", fn_matmul_tb, PARAMS2(23, (3, 4), (5, 4)), 2, NULL);
    GRADCHECK("matmul a^T @ b^T", fn_matmul_tab, PARAMS2(25, (4, 3), (5, 4)), 2, NULL);
    GRADCHECK("matmul batched a^T @ b", fn_matmul_ta, PARAMS2(27, (2, 4, 3), (2, 4, 5)), 2, NULL);
    GRADCHECK("matmul batched a @ b^T", fn_matmul_tb, PARAMS2(29, (2, 2, 3, 4), (2, 2, 5, 4)), 2,
              NULL);
    GRADCHECK("matmul batched a^T @ 2-D b^T", fn_matmul_tab, PARAMS2(31, (2, 4, 3), (5, 4)), 2,
              NULL);
    GRADCHECK("matmul 2-D a^T @ batched b^T", fn_matmul_tab, PARAMS2(33, (4, 3), (2, 5, 4)), 2,
              NULL);
    GRADCHECK("matmul permuted batch", fn_matmul_permuted_batch, PARAMS2(35, (3, 2, 4), (2, 4, 5)),
              2, NULL);
}
END_TEST

static bt_tensor *fn_linear(bt_tensor **in, void *ctx) {
    return bt_linear(in[0], in[1], ctx ? in[2] : NULL);
}
static bt_tensor *fn_linear_wt(bt_tensor **in, void *ctx) {
    return bt_linear(in[0], bt_transpose(in[1], 0, 1), ctx ? in[2] : NULL);
}
static bt_tensor *fn_linear_xt(bt_tensor **in, void *ctx) {
    return bt_linear(bt_transpose(in[0], 0, 1), in[1], in[2]);
}

#define PARAMS3(seed, shape_x, shape_w, shape_b)                                                   \
    (bt_tensor *[]) {                                                                              \
        test_param(BT_SHAPE shape_x, seed, -1, 1), test_param(BT_SHAPE shape_w, seed + 1, -1, 1),  \
            test_param(BT_SHAPE shape_b, seed + 2, -1, 1)                                          \
    }
static int with_bias = 1;

START_TEST(test_linear_gradients) {
    GRADCHECK("linear", fn_linear, PARAMS3(41, (3, 4), (5, 4), (5)), 3, &with_bias);
    GRADCHECK("linear no bias", fn_linear, PARAMS2(44, (3, 4), (5, 4)), 2, NULL);
    GRADCHECK("linear 3-D", fn_linear, PARAMS3(46, (2, 3, 4), (5, 4), (5)), 3, &with_bias);
    GRADCHECK("linear 1-D", fn_linear, PARAMS3(49, (4), (5, 4), (5)), 3, &with_bias);
    GRADCHECK("linear w^T view", fn_linear_wt, PARAMS3(52, (3, 4), (4, 5), (5)), 3, &with_bias);
    GRADCHECK("linear w^T view no bias", fn_linear_wt, PARAMS2(55, (2, 3, 4), (4, 5)), 2, NULL);
    GRADCHECK("linear x^T view", fn_linear_xt, PARAMS3(57, (4, 3), (5, 4), (5)), 3, &with_bias);
}
END_TEST

START_TEST(test_linear_gradient_accumulates_into_persistent_weight) {
    /* a parameter: persistent, its gradient adds up over two backward passes */
    bt_tensor *w = bt_requires_grad_(bt_tensor_new(BT_SHAPE(2, 3), BT_F32, bt_cpu()), true);
    for (int i = 0; i < 6; i++)
        bt_set(w, i, 0.1 * i);
    float xs[] = {1, 2, 3, -1, 0, 1};
    for (int pass = 0; pass < 2; pass++) {
        bt_tensor *x = bt_from_data(BT_SHAPE(2, 3), BT_F32, xs);
        ck_assert_int_eq(bt_backward(bt_sum_all(bt_linear(x, w, NULL))), BT_OK);
    }
    /* d sum(x w^T) / dW[o][i] = sum_r x[r][i] = (0, 2, 4); twice */
    float expect[] = {0, 4, 8, 0, 4, 8};
    assert_values(w->grad, expect, 6);
    bt_tensor_free(w);
}
END_TEST

/* ---- linear + GELU ---- */

/* a fresh copy of t's values as a leaf that requires grad */
static bt_tensor *leaf_copy(const bt_tensor *t) {
    return bt_requires_grad_(bt_detach((bt_tensor *)t), true);
}

static void assert_same_bits(const char *what, const bt_tensor *a, const bt_tensor *b) {
    ck_assert_msg(a && b, "%s: missing (%s)", what, bt_last_error());
    ck_assert_msg(bt_same_shape(a, b), "%s: shapes differ", what);
    bt_tensor *ac = bt_contiguous((bt_tensor *)a), *bc = bt_contiguous((bt_tensor *)b);
    for (int64_t i = 0, n = bt_numel(a); i < n; i++)
        ck_assert_msg(memcmp(&bt_f32(ac)[i], &bt_f32(bc)[i], sizeof(float)) == 0,
                      "%s: element %lld: fused %.9g, unfused %.9g", what, (long long)i,
                      (double)bt_f32(ac)[i], (double)bt_f32(bc)[i]);
}

START_TEST(test_linear_gelu_matches_linear_then_gelu) {
    /* bt_linear_gelu runs the same GEMM calls, split over the threads the same way, and the GELU
     * on each thread's rows (CPU): outputs and gradients must be the unfused ops' bit for bit.
     * Shapes: C split by rows (with small-kernel chunks where OpenBLAS has them), by columns
     * (N > M: the GELU runs after), too small to split; 1 and 2 threads; with and without a
     * bias, a transposed weight view, a 3-D input; then without autograd. */
    static const int64_t shapes[][3] = {{256, 192, 64}, {203, 77, 65}, {40, 600, 96}, {3, 5, 4}};
    int threads_was = omp_get_max_threads();
    for (size_t si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++)
        for (int threads = 1; threads <= 2; threads++)
            for (int variant = 0; variant < 3; variant++) {
                omp_set_num_threads(threads);
                int64_t M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
                bool bias = variant != 1, wt = variant == 2;
                bt_tensor *x = test_param(BT_SHAPE(M, K), 100 + si, -1, 1);
                bt_tensor *w = wt ? test_param(BT_SHAPE(K, N), 200 + si, -0.3f, 0.3f)
                                  : test_param(BT_SHAPE(N, K), 200 + si, -0.3f, 0.3f);
                bt_tensor *b = test_param(BT_SHAPE(N), 300 + si, -0.5f, 0.5f);
                bt_tensor *x2 = leaf_copy(x), *w2 = leaf_copy(w), *b2 = leaf_copy(b);
                bt_tensor *wv = wt ? bt_transpose(w, 0, 1) : w,
                          *wv2 = wt ? bt_transpose(w2, 0, 1) : w2;
                bt_tensor *fused = bt_linear_gelu(x, wv, bias ? b : NULL);
                bt_tensor *plain = bt_gelu(bt_linear(x2, wv2, bias ? b2 : NULL), BT_GELU_TANH);
                char what[96];
                snprintf(what, sizeof what, "(%lld,%lld,%lld) %d threads variant %d forward",
                         (long long)M, (long long)N, (long long)K, threads, variant);
                assert_same_bits(what, fused, plain);
                bt_tensor *g = test_param(2, fused->shape, 400 + si, -1, 1);
                bt_requires_grad_(g, false);
                ck_assert_int_eq(bt_backward(bt_sum_all(bt_mul(fused, g))), BT_OK);
                ck_assert_int_eq(bt_backward(bt_sum_all(bt_mul(plain, g))), BT_OK);
                assert_same_bits("dx", x->grad, x2->grad);
                assert_same_bits("dw", w->grad, w2->grad);
                if (bias) assert_same_bits("db", b->grad, b2->grad);
                bool was = bt_set_grad_enabled(false);
                assert_same_bits("no grad", bt_linear_gelu(x, wv, bias ? b : NULL),
                                 bt_gelu(bt_linear(x, wv, bias ? b : NULL), BT_GELU_TANH));
                bt_set_grad_enabled(was);
                bt_step_end();
            }
    omp_set_num_threads(threads_was);
    /* a 3-D input: the rows are its first two dims */
    bt_tensor *x3 = test_param(BT_SHAPE(2, 50, 24), 500, -1, 1),
              *w3 = test_param(BT_SHAPE(40, 24), 501, -1, 1);
    assert_same_bits("3-D", bt_linear_gelu(x3, w3, NULL),
                     bt_gelu(bt_linear(x3, w3, NULL), BT_GELU_TANH));
}
END_TEST

static bt_tensor *fn_linear_gelu(bt_tensor **in, void *ctx) {
    return bt_linear_gelu(in[0], in[1], ctx ? in[2] : NULL);
}
static bt_tensor *fn_linear_gelu_wt(bt_tensor **in, void *ctx) {
    return bt_linear_gelu(in[0], bt_transpose(in[1], 0, 1), ctx ? in[2] : NULL);
}

START_TEST(test_linear_gelu_gradients) {
    GRADCHECK("linear_gelu", fn_linear_gelu, PARAMS3(61, (3, 4), (5, 4), (5)), 3, &with_bias);
    GRADCHECK("linear_gelu no bias", fn_linear_gelu, PARAMS2(64, (2, 3, 4), (5, 4)), 2, NULL);
    GRADCHECK("linear_gelu w^T view", fn_linear_gelu_wt, PARAMS3(66, (3, 4), (4, 5), (5)), 3,
              &with_bias);
}
END_TEST

START_TEST(test_linear_gelu_retained_graph_and_accumulation) {
    /* the backward's scratch goes back to the arena: a second backward through the same graph
     * (retain_graph) must see nothing of it, and the gradients add up to twice the first */
    bt_tensor *x = test_param(BT_SHAPE(64, 32), 70, -1, 1),
              *w = test_param(BT_SHAPE(48, 32), 71, -1, 1);
    bt_tensor *b = test_param(BT_SHAPE(48), 72, -1, 1);
    bt_tensor *y = bt_sum_all(bt_mul(bt_linear_gelu(x, w, b), bt_linear(x, w, NULL)));
    ck_assert_int_eq(bt_backward_ex(y, NULL, true), BT_OK);
    bt_tensor *dx1 = bt_contiguous(bt_detach(x->grad)), *dw1 = bt_contiguous(bt_detach(w->grad));
    dx1 = bt_mul_scalar(dx1, 2.0), dw1 = bt_mul_scalar(dw1, 2.0);
    ck_assert_int_eq(bt_backward_ex(y, NULL, false), BT_OK);
    for (int64_t i = 0; i < bt_numel(dx1); i++)
        ck_assert_float_eq_tol(bt_get(x->grad, i), bt_get(dx1, i),
                               1e-5 * (1 + fabs(bt_get(dx1, i))));
    for (int64_t i = 0; i < bt_numel(dw1); i++)
        ck_assert_float_eq_tol(bt_get(w->grad, i), bt_get(dw1, i),
                               1e-5 * (1 + fabs(bt_get(dw1, i))));
}
END_TEST

START_TEST(test_linear_gelu_bad_inputs) {
    bt_device cpu = bt_cpu();
    bt_tensor *x = bt_zeros(BT_SHAPE(2, 3), BT_F32, cpu),
              *w = bt_zeros(BT_SHAPE(4, 5), BT_F32, cpu);
    ck_assert_ptr_null(bt_linear_gelu(x, w, NULL));
    ck_assert_error_contains("linear_gelu: input (2,3) has 3 features but weight (4,5) expects 5");
    bt_tensor *w43 = bt_zeros(BT_SHAPE(4, 3), BT_F32, cpu),
              *b3 = bt_zeros(BT_SHAPE(3), BT_F32, cpu);
    ck_assert_ptr_null(bt_linear_gelu(x, w43, b3));
    ck_assert_error_contains("linear_gelu: bias (3) does not match weight (4,3) (expected (4))");
    ck_assert_ptr_null(bt_linear_gelu(NULL, w43, NULL));
    ck_assert_error_contains("linear_gelu: argument 1 is NULL");
}
END_TEST

/* ---- bad inputs ---- */

/* C (M,N) = op(A) op(B) + beta C0 in double, row-major, as bt_cpu_gemm's contract */
static double gemm_ref(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *A,
                       const float *B, float beta, const float *C0, int64_t i, int64_t j) {
    double acc = beta * (double)C0[i * N + j];
    for (int64_t k = 0; k < K; k++)
        acc +=
            (double)(ta ? A[k * M + i] : A[i * K + k]) * (double)(tb ? B[j * K + k] : B[k * N + j]);
    return acc;
}

START_TEST(test_gemm_threads_and_chunks_match_reference) {
    /* bt_cpu_gemm splits C over the threads; where OpenBLAS has small-matrix kernels it cuts each
     * thread's share into products of 8..64 rows or columns for them (core/cpu/matmul.c). Both
     * ways, every transpose, beta 0 and 1, C split by rows and by columns, lengths that are not
     * multiples of 8 or of the thread count, against double. Elsewhere the two settings run the
     * same code. */
    static const int64_t shapes[][3] = {{768, 128, 128}, {203, 65, 77},  {50, 300, 80},
                                        {768, 65, 128},  {96, 256, 768}, {9, 1000, 130}};
    for (size_t si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++) {
        int64_t M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
        float *A = malloc((size_t)(M * K) * sizeof(float)),
              *B = malloc((size_t)(K * N) * sizeof(float));
        float *C0 = malloc((size_t)(M * N) * sizeof(float)),
              *C = malloc((size_t)(M * N) * sizeof(float));
        for (int64_t i = 0; i < M * K; i++)
            A[i] = bt_rng_uniform_at(11 + si, (uint64_t)i) - 0.5f;
        for (int64_t i = 0; i < K * N; i++)
            B[i] = bt_rng_uniform_at(23 + si, (uint64_t)i) - 0.5f;
        for (int64_t i = 0; i < M * N; i++)
            C0[i] = bt_rng_uniform_at(37 + si, (uint64_t)i) - 0.5f;
        for (int chunked = 0; chunked < 2; chunked++)
            for (int t = 0; t < 4; t++)
                for (int bi = 0; bi < 2; bi++) {
                    bool ta = t & 1, tb = t & 2;
                    float beta = (float)bi;
                    bool was = bt_cpu_set_small_gemm_chunks(chunked);
                    memcpy(C, C0, (size_t)(M * N) * sizeof(float));
                    bt_cpu_gemm(ta, tb, 1, M, N, K, 1.0f, A, ta ? M : K, 0, B, tb ? K : N, 0, beta,
                                C, 0);
                    bt_cpu_set_small_gemm_chunks(was);
                    for (int64_t i = 0; i < M; i++)
                        for (int64_t j = 0; j < N; j++) {
                            double want = gemm_ref(ta, tb, M, N, K, A, B, beta, C0, i, j);
                            ck_assert_msg(fabs(C[i * N + j] - want) <= 1e-5 * (1.0 + fabs(want)),
                                          "(%lld,%lld,%lld) ta %d tb %d beta %g chunked %d: C[%lld,"
                                          "%lld] = %g, want %g",
                                          (long long)M, (long long)N, (long long)K, ta, tb,
                                          (double)beta, chunked, (long long)i, (long long)j,
                                          (double)C[i * N + j], want);
                        }
                }
        free(A), free(B), free(C0), free(C);
    }
}
END_TEST

START_TEST(test_matmul_bad_inputs) {
    bt_device cpu = bt_cpu();
    bt_tensor *a = bt_zeros(BT_SHAPE(4, 8), BT_F32, cpu),
              *b = bt_zeros(BT_SHAPE(7, 3), BT_F32, cpu);
    ck_assert_ptr_null(bt_matmul(a, b));
    ck_assert_error_contains("matmul: (4,8) @ (7,3): inner dimensions 8 and 7 differ");

    bt_tensor *v = bt_zeros(BT_SHAPE(8), BT_F32, cpu);
    ck_assert_ptr_null(bt_matmul(v, a));
    ck_assert_error_contains("matmul: (8) @ (4,8): operands need at least 2 dimensions");
    ck_assert_ptr_null(bt_matmul(a, v));
    ck_assert_error_contains("matmul: (4,8) @ (8): operands need at least 2 dimensions");

    bt_tensor *a3 = bt_zeros(BT_SHAPE(2, 3, 4), BT_F32, cpu);
    bt_tensor *b3 = bt_zeros(BT_SHAPE(3, 4, 5), BT_F32, cpu);
    ck_assert_ptr_null(bt_matmul(a3, b3));
    ck_assert_error_contains("matmul: (2,3,4) @ (3,4,5): batch dimensions differ");
    bt_tensor *b4 = bt_zeros(BT_SHAPE(1, 2, 4, 5), BT_F32, cpu);
    ck_assert_ptr_null(bt_matmul(a3, b4));
    ck_assert_error_contains("matmul: (2,3,4) @ (1,2,4,5): batch dimensions differ");

    bt_tensor *ai = bt_zeros(BT_SHAPE(4, 3), BT_I32, cpu);
    ck_assert_ptr_null(bt_matmul(b, ai));
    ck_assert_error_contains("matmul: second operand must be float32, got int32 (4,3)");
    ck_assert_ptr_null(bt_matmul(ai, b));
    ck_assert_error_contains("matmul: first operand must be float32, got int32 (4,3)");

    ck_assert_ptr_null(bt_matmul(NULL, b));
    ck_assert_error_contains("matmul: argument 1 is NULL");
    /* a failed op upstream keeps its message */
    ck_assert_ptr_null(bt_matmul(bt_matmul(a, b), b));
    ck_assert_error_contains("matmul: (4,8) @ (7,3): inner dimensions 8 and 7 differ");
}
END_TEST

START_TEST(test_linear_bad_inputs) {
    bt_device cpu = bt_cpu();
    bt_tensor *x = bt_zeros(BT_SHAPE(2, 3), BT_F32, cpu),
              *w = bt_zeros(BT_SHAPE(4, 5), BT_F32, cpu);
    ck_assert_ptr_null(bt_linear(x, w, NULL));
    ck_assert_error_contains("linear: input (2,3) has 3 features but weight (4,5) expects 5");

    bt_tensor *w1 = bt_zeros(BT_SHAPE(3), BT_F32, cpu);
    ck_assert_ptr_null(bt_linear(x, w1, NULL));
    ck_assert_error_contains("linear: weight must be (out_features, in_features), got (3)");

    bt_tensor *w43 = bt_zeros(BT_SHAPE(4, 3), BT_F32, cpu);
    bt_tensor *b3 = bt_zeros(BT_SHAPE(3), BT_F32, cpu);
    ck_assert_ptr_null(bt_linear(x, w43, b3));
    ck_assert_error_contains("linear: bias (3) does not match weight (4,3) (expected (4))");
    bt_tensor *b14 = bt_zeros(BT_SHAPE(1, 4), BT_F32, cpu);
    ck_assert_ptr_null(bt_linear(x, w43, b14));
    ck_assert_error_contains("linear: bias (1,4) does not match weight (4,3) (expected (4))");

    bt_tensor *xi = bt_zeros(BT_SHAPE(2, 3), BT_I64, cpu);
    ck_assert_ptr_null(bt_linear(xi, w43, NULL));
    ck_assert_error_contains("linear: input must be float32, got int64 (2,3)");
    bt_tensor *wi = bt_zeros(BT_SHAPE(4, 3), BT_I32, cpu);
    ck_assert_ptr_null(bt_linear(x, wi, NULL));
    ck_assert_error_contains("linear: weight must be float32, got int32 (4,3)");
    bt_tensor *bi = bt_zeros(BT_SHAPE(4), BT_I32, cpu);
    ck_assert_ptr_null(bt_linear(x, w43, bi));
    ck_assert_error_contains("linear: bias must be float32, got int32 (4)");

    ck_assert_ptr_null(bt_linear(x, NULL, NULL));
    ck_assert_error_contains("linear: argument 2 is NULL");
}
END_TEST

static Suite *matmul_suite(void) {
    Suite *s = suite_create("matmul");
    bt_suite_add(s, test_matmul_forward_2d);
    bt_suite_add(s, test_matmul_forward_batched_and_broadcast);
    bt_suite_add(s, test_matmul_forward_transposed_view);
    bt_suite_add(s, test_linear_forward);
    bt_suite_add(s, test_matmul_gradients);
    bt_suite_add(s, test_matmul_gradients_transposed_views);
    bt_suite_add(s, test_linear_gradients);
    bt_suite_add(s, test_linear_gradient_accumulates_into_persistent_weight);
    bt_suite_add(s, test_gemm_threads_and_chunks_match_reference);
    bt_suite_add(s, test_linear_gelu_matches_linear_then_gelu);
    bt_suite_add(s, test_linear_gelu_gradients);
    bt_suite_add(s, test_linear_gelu_retained_graph_and_accumulation);
    bt_suite_add(s, test_linear_gelu_bad_inputs);
    bt_suite_add(s, test_matmul_bad_inputs);
    bt_suite_add(s, test_linear_bad_inputs);
    return s;
}

BT_TEST_MAIN(matmul_suite)
