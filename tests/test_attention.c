/* Fused attention: forward against a naive double-precision softmax(q k^T * scale + mask) v,
 * gradient checks (causal and full, grouped-query heads, transposed views, existing gradients,
 * one tensor passed as q, k and v), and the messages of bad inputs. */
#include <math.h>

#include "tests/gradcheck.h"

/* out (B, NH, T, hs) in double from q (B, NH, T, hs), k, v (B, NKV, T, hs), read through bt_get so
 * views work; scale <= 0 means 1/sqrt(hs). The T x T score row is built explicitly. */
static double *reference_attention(const bt_tensor *q, const bt_tensor *k, const bt_tensor *v,
                                   bool causal, double scale) {
    int64_t B = q->shape[0], NH = q->shape[1], T = q->shape[2], hs = q->shape[3];
    int64_t NKV = k->shape[1], group = NH / NKV;
    if (scale <= 0) scale = 1.0 / sqrt((double)hs);
    double *out = calloc((size_t)(B * NH * T * hs), sizeof(double));
    double *row = malloc((size_t)T * sizeof(double));
    ck_assert_ptr_nonnull(out);
    ck_assert_ptr_nonnull(row);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < NH; h++)
            for (int64_t t = 0; t < T; t++) {
                int64_t qrow = ((b * NH + h) * T + t) * hs;
                double max = -INFINITY, sum = 0.0;
                for (int64_t s = 0; s < T; s++) {
                    int64_t krow = ((b * NKV + h / group) * T + s) * hs;
                    double score = 0.0;
                    for (int64_t i = 0; i < hs; i++)
                        score += bt_get(q, qrow + i) * bt_get(k, krow + i);
                    row[s] = (causal && s > t) ? -INFINITY : score * scale;
                    if (row[s] > max) max = row[s];
                }
                for (int64_t s = 0; s < T; s++)
                    sum += (row[s] = exp(row[s] - max));
                for (int64_t s = 0; s < T; s++) {
                    int64_t vrow = ((b * NKV + h / group) * T + s) * hs;
                    for (int64_t i = 0; i < hs; i++)
                        out[qrow + i] += row[s] / sum * bt_get(v, vrow + i);
                }
            }
    free(row);
    return out;
}

static void check_forward(int64_t B, int64_t NH, int64_t NKV, int64_t T, int64_t hs, bool causal,
                          double scale, uint64_t seed) {
    bt_tensor *q = test_param(BT_SHAPE(B, NH, T, hs), seed, -2, 2);
    bt_tensor *k = test_param(BT_SHAPE(B, NKV, T, hs), seed + 1, -2, 2);
    bt_tensor *v = test_param(BT_SHAPE(B, NKV, T, hs), seed + 2, -1, 1);
    bt_tensor *y = bt_attention(q, k, v, causal, scale);
    ck_assert_msg(y != NULL, "attention failed: %s", bt_last_error());
    ck_assert_int_eq(y->ndim, 4);
    for (int d = 0; d < 4; d++)
        ck_assert_int_eq(y->shape[d], q->shape[d]);
    double *ref = reference_attention(q, k, v, causal, scale);
    for (int64_t i = 0, n = bt_numel(y); i < n; i++)
        ck_assert_msg(fabs(bt_get(y, i) - ref[i]) <= 2e-5,
                      "attention (B=%lld NH=%lld NKV=%lld T=%lld hs=%lld causal=%d) element %lld: "
                      "%.7g, reference %.7g",
                      (long long)B, (long long)NH, (long long)NKV, (long long)T, (long long)hs,
                      causal, (long long)i, bt_get(y, i), ref[i]);
    free(ref);
}

START_TEST(test_forward_matches_reference) {
    for (int causal = 0; causal < 2; causal++) {
        check_forward(2, 4, 4, 5, 3, causal, 0.0, 10);   /* default scale 1/sqrt(hs) */
        check_forward(2, 4, 2, 6, 4, causal, 0.7, 20);   /* grouped-query, explicit scale */
        check_forward(1, 3, 1, 7, 5, causal, 0.0, 30);   /* multi-query */
        check_forward(1, 2, 1, 150, 8, causal, 0.0, 40); /* several key blocks, parallel */
        check_forward(1, 1, 1, 1, 2, causal, 0.0, 50);   /* one token */
    }
}
END_TEST

START_TEST(test_causal_first_row_is_first_value) {
    /* with a causal mask the first query sees only the first key: out[t=0] = v[0] */
    bt_tensor *q = test_param(BT_SHAPE(1, 2, 4, 3), 60, -1, 1);
    bt_tensor *k = test_param(BT_SHAPE(1, 2, 4, 3), 61, -1, 1);
    bt_tensor *v = test_param(BT_SHAPE(1, 2, 4, 3), 62, -1, 1);
    bt_tensor *y = bt_attention(q, k, v, true, 0.0);
    ck_assert_ptr_nonnull(y);
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < 3; i++)
            ck_assert_float_eq_tol(bt_get(y, h * 12 + i), bt_get(v, h * 12 + i), 1e-6);
}
END_TEST

START_TEST(test_short_sequences_match_reference) {
    /* T <= 64 with hs a multiple of 16: each head's whole T x T in one direct kernel (no sgemm);
     * T off the 16-key vectors and off the 4-row blocks, the longest T, grouped and multi-query,
     * and work above the OpenMP threshold */
    for (int causal = 0; causal < 2; causal++) {
        check_forward(2, 2, 2, 1, 16, causal, 0.0, 800);
        check_forward(2, 4, 2, 5, 16, causal, 0.0, 810);
        check_forward(1, 2, 1, 17, 32, causal, 0.6, 820);
        check_forward(1, 3, 3, 16, 48, causal, 0.0, 830);
        check_forward(3, 4, 4, 64, 32, causal, 0.0, 840);
        check_forward(1, 2, 2, 63, 128, causal, 0.0, 850);
    }
}
END_TEST

struct attention_case {
    bool causal;
    double scale;
};

static bt_tensor *fn_attention(bt_tensor **in, void *ctx) {
    const struct attention_case *c = ctx;
    return bt_attention(in[0], in[1], in[2], c->causal, c->scale);
}

/* Leaves stored (B, T, heads, hs) as a model's projections are, transposed to (B, heads, T, hs). */
static bt_tensor *fn_attention_views(bt_tensor **in, void *ctx) {
    const struct attention_case *c = ctx;
    return bt_attention(bt_transpose(in[0], 1, 2), bt_transpose(in[1], 1, 2),
                        bt_transpose(in[2], 1, 2), c->causal, c->scale);
}

static void gradcheck_shapes(const char *name, gradcheck_fn fn, bool views, int64_t B, int64_t NH,
                             int64_t NKV, int64_t T, int64_t hs, bool causal, uint64_t seed) {
    struct attention_case c = {causal, 0.0};
    bt_tensor *in[3];
    if (views) {
        in[0] = test_param(BT_SHAPE(B, T, NH, hs), seed, -1, 1);
        in[1] = test_param(BT_SHAPE(B, T, NKV, hs), seed + 1, -1, 1);
        in[2] = test_param(BT_SHAPE(B, T, NKV, hs), seed + 2, -1, 1);
    } else {
        in[0] = test_param(BT_SHAPE(B, NH, T, hs), seed, -1, 1);
        in[1] = test_param(BT_SHAPE(B, NKV, T, hs), seed + 1, -1, 1);
        in[2] = test_param(BT_SHAPE(B, NKV, T, hs), seed + 2, -1, 1);
    }
    GRADCHECK(name, fn, in, 3, &c);
}

START_TEST(test_gradients) {
    for (int causal = 0; causal < 2; causal++) {
        const char *name = causal ? "attention(causal)" : "attention(full)";
        gradcheck_shapes(name, fn_attention, false, 2, 2, 2, 4, 3, causal, 100);
        gradcheck_shapes(name, fn_attention, false, 2, 4, 2, 4, 3, causal, 110); /* GQA */
        gradcheck_shapes(name, fn_attention, false, 1, 3, 1, 5, 2, causal, 120); /* MQA */
    }
}
END_TEST

START_TEST(test_gradients_transposed_views) {
    for (int causal = 0; causal < 2; causal++) {
        gradcheck_shapes("attention(views)", fn_attention_views, true, 2, 2, 2, 4, 3, causal, 200);
        gradcheck_shapes("attention(views, GQA)", fn_attention_views, true, 1, 4, 2, 5, 2, causal,
                         210);
    }
}
END_TEST

START_TEST(test_gradients_several_key_blocks) {
    /* T above the kernel's key block and work above its OpenMP threshold (with few groups the
     * backward takes its two-pass schedule) */
    gradcheck_shapes("attention(T=130)", fn_attention, false, 1, 2, 1, 130, 2, true, 300);
    gradcheck_shapes("attention(T=70, full)", fn_attention, false, 1, 2, 2, 70, 2, false, 310);
    /* many (batch, kv head) groups: the backward's one-pass schedule, in parallel */
    gradcheck_shapes("attention(B=4, GQA, T=40)", fn_attention, false, 4, 4, 2, 40, 2, true, 320);
}
END_TEST

START_TEST(test_gradients_short_sequences) {
    /* the direct kernels' backward (T <= 64, hs a multiple of 16) */
    for (int causal = 0; causal < 2; causal++) {
        gradcheck_shapes("attention(direct)", fn_attention, false, 1, 2, 2, 7, 16, causal, 900);
        gradcheck_shapes("attention(direct, GQA)", fn_attention, false, 1, 4, 2, 10, 16, causal,
                         910);
        gradcheck_shapes("attention(direct, views)", fn_attention_views, true, 1, 2, 1, 6, 32,
                         causal, 920);
    }
    /* above the OpenMP threshold: groups in parallel */
    gradcheck_shapes("attention(direct, parallel)", fn_attention, false, 2, 2, 1, 24, 16, true,
                     930);
    struct attention_case c = {true, 0.4};
    bt_tensor *in[3] = {test_param(BT_SHAPE(1, 2, 9, 16), 940, -1, 1),
                        test_param(BT_SHAPE(1, 2, 9, 16), 941, -1, 1),
                        test_param(BT_SHAPE(1, 2, 9, 16), 942, -1, 1)};
    GRADCHECK("attention(direct, scale 0.4)", fn_attention, in, 3, &c);
    /* the leaves now hold gradients: the backward adds into them */
    GRADCHECK("attention(direct, existing grads)", fn_attention, in, 3, &c);
}
END_TEST

START_TEST(test_gradients_explicit_scale_and_accumulation) {
    struct attention_case c = {true, 0.3};
    bt_tensor *in[3] = {test_param(BT_SHAPE(1, 2, 5, 3), 400, -1, 1),
                        test_param(BT_SHAPE(1, 2, 5, 3), 401, -1, 1),
                        test_param(BT_SHAPE(1, 2, 5, 3), 402, -1, 1)};
    GRADCHECK("attention(scale 0.3)", fn_attention, in, 3, &c);
    /* the leaves now hold (zeroed) gradients: the backward adds into them */
    GRADCHECK("attention(existing grads)", fn_attention, in, 3, &c);
}
END_TEST

START_TEST(test_gradients_some_inputs) {
    struct attention_case c = {true, 0.0};
    bt_tensor *in[3] = {test_param(BT_SHAPE(1, 4, 4, 3), 500, -1, 1),
                        test_param(BT_SHAPE(1, 2, 4, 3), 501, -1, 1),
                        test_param(BT_SHAPE(1, 2, 4, 3), 502, -1, 1)};
    bt_requires_grad_(in[0], false);
    bt_requires_grad_(in[1], false);
    GRADCHECK("attention(v only)", fn_attention, in, 3, &c);
    ck_assert_ptr_null(in[0]->grad);
    ck_assert_ptr_null(in[1]->grad);
}
END_TEST

static bt_tensor *fn_self_attention(bt_tensor **in, void *ctx) {
    return bt_attention(in[0], in[0], in[0], true, 0.0);
}

START_TEST(test_gradient_same_tensor_three_times) {
    bt_tensor *in[1] = {test_param(BT_SHAPE(2, 2, 4, 3), 600, -1, 1)};
    GRADCHECK("attention(x, x, x)", fn_self_attention, in, 1, NULL);
}
END_TEST

START_TEST(test_no_grad_records_nothing) {
    bt_tensor *q = test_param(BT_SHAPE(1, 2, 3, 2), 700, -1, 1);
    bt_tensor *k = bt_zeros(BT_SHAPE(1, 2, 3, 2), BT_F32, bt_cpu());
    bool prev = bt_set_grad_enabled(false);
    bt_tensor *y = bt_attention(q, k, k, true, 0.0);
    bt_set_grad_enabled(prev);
    ck_assert_ptr_nonnull(y);
    ck_assert(!y->requires_grad);
    ck_assert_ptr_null(y->grad_fn);
    bt_tensor *c = bt_zeros(BT_SHAPE(1, 2, 3, 2), BT_F32, bt_cpu());
    y = bt_attention(c, k, k, false, 0.0);
    ck_assert_ptr_nonnull(y);
    ck_assert(!y->requires_grad);
    /* all scores equal: uniform average of v = 0 */
    for (int64_t i = 0; i < bt_numel(y); i++)
        ck_assert_float_eq(bt_get(y, i), 0.0f);
}
END_TEST

START_TEST(test_bad_inputs) {
    bt_device cpu = bt_cpu();
    bt_tensor *q = bt_zeros(BT_SHAPE(2, 4, 8, 16), BT_F32, cpu);
    bt_tensor *k = bt_zeros(BT_SHAPE(2, 2, 8, 16), BT_F32, cpu);

    ck_assert_ptr_null(bt_attention(q, NULL, k, true, 0));
    ck_assert_error_contains("attention: argument 2 is NULL");

    bt_tensor *ki = bt_zeros(BT_SHAPE(2, 2, 8, 16), BT_I32, cpu);
    ck_assert_ptr_null(bt_attention(q, ki, k, true, 0));
    ck_assert_error_contains("attention: k must be float32, got int32 (2,2,8,16)");
    ck_assert_ptr_null(bt_attention(ki, k, k, true, 0));
    ck_assert_error_contains("attention: q must be float32, got int32 (2,2,8,16)");
    ck_assert_ptr_null(bt_attention(q, k, ki, true, 0));
    ck_assert_error_contains("attention: v must be float32, got int32 (2,2,8,16)");

    bt_tensor *q3 = bt_zeros(BT_SHAPE(2, 4, 8), BT_F32, cpu);
    ck_assert_ptr_null(bt_attention(q3, k, k, true, 0));
    ck_assert_error_contains("attention: q (2,4,8) must be 4-D (batch, heads, time, head size)");
    bt_tensor *k5 = bt_zeros(BT_SHAPE(1, 2, 2, 8, 16), BT_F32, cpu);
    ck_assert_ptr_null(bt_attention(q, k, k5, true, 0));
    ck_assert_error_contains("attention: v (1,2,2,8,16) must be 4-D");

    bt_tensor *kb = bt_zeros(BT_SHAPE(3, 2, 8, 16), BT_F32, cpu);
    ck_assert_ptr_null(bt_attention(q, kb, kb, true, 0));
    ck_assert_error_contains(
        "attention: q (2,4,8,16) and k (3,2,8,16): batch sizes 2 and 3 differ");
    bt_tensor *kt = bt_zeros(BT_SHAPE(2, 2, 6, 16), BT_F32, cpu);
    ck_assert_ptr_null(bt_attention(q, kt, kt, true, 0));
    ck_assert_error_contains(
        "attention: q (2,4,8,16) and k (2,2,6,16): sequence lengths 8 and 6 differ");
    bt_tensor *kh = bt_zeros(BT_SHAPE(2, 2, 8, 8), BT_F32, cpu);
    ck_assert_ptr_null(bt_attention(q, kh, kh, true, 0));
    ck_assert_error_contains("attention: q (2,4,8,16) and k (2,2,8,8): head sizes 16 and 8 differ");

    bt_tensor *v1 = bt_zeros(BT_SHAPE(2, 1, 8, 16), BT_F32, cpu);
    ck_assert_ptr_null(bt_attention(q, k, v1, true, 0));
    ck_assert_error_contains("attention: k (2,2,8,16) and v (2,1,8,16) must have the same shape");

    bt_tensor *k3 = bt_zeros(BT_SHAPE(2, 3, 8, 16), BT_F32, cpu);
    ck_assert_ptr_null(bt_attention(q, k3, k3, true, 0));
    ck_assert_error_contains("attention: q (2,4,8,16) and k (2,3,8,16): 4 query heads are not a "
                             "multiple of 3 kv heads");
    bt_tensor *k0 = bt_zeros(BT_SHAPE(2, 0, 8, 16), BT_F32, cpu);
    ck_assert_ptr_null(bt_attention(q, k0, k0, true, 0));
    ck_assert_error_contains("4 query heads are not a multiple of 0 kv heads");

    /* a header claiming CUDA storage: the device check runs before any data is touched */
    struct bt_storage cuda_storage = *k->storage;
    cuda_storage.device = bt_cuda(0);
    bt_tensor kc = *k;
    kc.storage = &cuda_storage;
    ck_assert_ptr_null(bt_attention(q, &kc, k, true, 0));
    ck_assert_error_contains("attention: tensors on different devices (cpu and cuda:0)");
    ck_assert_ptr_null(bt_attention(q, k, &kc, true, 0));
    ck_assert_error_contains("attention: tensors on different devices (cpu and cuda:0)");
}
END_TEST

/* ---- bt_attention_qkv: the fused projection, read and written in place ---- */

struct qkv_case {
    int64_t NH, NKV;
    bool causal;
};

static bt_tensor *fn_attention_qkv(bt_tensor **in, void *ctx) {
    const struct qkv_case *c = ctx;
    return bt_attention_qkv(in[0], c->NH, c->NKV, c->causal, 0.0);
}

/* the same through views: split qkv into heads, transpose, bt_attention, back to (B, T, NH hs) */
static bt_tensor *attention_via_views(bt_tensor *qkv, int64_t NH, int64_t NKV, bool causal) {
    int64_t B = qkv->shape[0], T = qkv->shape[1], hs = qkv->shape[2] / (NH + 2 * NKV);
    bt_tensor *parts[3];
    ck_assert_int_eq(bt_split(bt_view(qkv, BT_SHAPE(B, T, NH + 2 * NKV, hs)),
                              (int64_t[]){NH, NKV, NKV}, 3, 2, parts),
                     BT_OK);
    bt_tensor *y = bt_attention(bt_transpose(parts[0], 1, 2), bt_transpose(parts[1], 1, 2),
                                bt_transpose(parts[2], 1, 2), causal, 0.0);
    return bt_reshape(bt_transpose(y, 1, 2), BT_SHAPE(B, T, NH * hs));
}

START_TEST(test_qkv_gradients) {
    /* small shapes, MHA and GQA, causal and full; then T = 70 over two query blocks with one
     * (batch, kv head) group (the backward's two-pass schedule) and B = 4 (one pass) */
    for (int causal = 0; causal < 2; causal++) {
        struct qkv_case mha = {2, 2, causal}, gqa = {4, 2, causal};
        bt_tensor *a[1] = {test_param(BT_SHAPE(2, 5, 6 * 3), 800 + causal, -1, 1)};
        GRADCHECK("attention_qkv(MHA)", fn_attention_qkv, a, 1, &mha);
        bt_tensor *b[1] = {test_param(BT_SHAPE(2, 4, 8 * 2), 810 + causal, -1, 1)};
        GRADCHECK("attention_qkv(GQA)", fn_attention_qkv, b, 1, &gqa);
    }
    struct qkv_case one = {2, 1, true}, many = {2, 2, true};
    bt_tensor *c[1] = {test_param(BT_SHAPE(1, 70, 4 * 2), 820, -1, 1)};
    GRADCHECK("attention_qkv(T=70)", fn_attention_qkv, c, 1, &one);
    bt_tensor *d[1] = {test_param(BT_SHAPE(4, 40, 6 * 2), 830, -1, 1)};
    GRADCHECK("attention_qkv(B=4, T=40)", fn_attention_qkv, d, 1, &many);
    /* d now holds a gradient: the backward adds into it */
    GRADCHECK("attention_qkv(existing grad)", fn_attention_qkv, d, 1, &many);
}
END_TEST

START_TEST(test_qkv_equals_views) {
    /* GPT-sized heads (hs 64, T 200 over several query blocks): outputs and qkv gradients of the
     * fused form and of the view path agree to float rounding */
    const int64_t cases[][4] = {{2, 6, 6, 200}, {2, 4, 2, 130}, {1, 2, 1, 64}};
    for (int ci = 0; ci < 3; ci++) {
        int64_t B = cases[ci][0], NH = cases[ci][1], NKV = cases[ci][2], T = cases[ci][3];
        int64_t W = (NH + 2 * NKV) * 64;
        bt_tensor *x1 = test_param(BT_SHAPE(B, T, W), 900 + (uint64_t)ci, -1, 1);
        bt_tensor *x2 = test_param(BT_SHAPE(B, T, W), 900 + (uint64_t)ci, -1, 1);
        bt_tensor *w = test_param(BT_SHAPE(B, T, NH * 64), 950 + (uint64_t)ci, -1, 1);
        bt_tensor *y1 = bt_attention_qkv(x1, NH, NKV, true, 0.0);
        bt_tensor *y2 = attention_via_views(x2, NH, NKV, true);
        ck_assert_msg(y1 && y2, "%s", bt_last_error());
        for (int64_t i = 0; i < bt_numel(y1); i++)
            ck_assert_msg(fabs(bt_get(y1, i) - bt_get(y2, i)) <= 1e-6, "case %d y[%lld]", ci,
                          (long long)i);
        ck_assert_int_eq(bt_backward(bt_sum_all(bt_mul(y1, w))), BT_OK);
        ck_assert_int_eq(bt_backward(bt_sum_all(bt_mul(y2, w))), BT_OK);
        for (int64_t i = 0; i < bt_numel(x1); i++)
            ck_assert_msg(fabs(bt_get(x1->grad, i) - bt_get(x2->grad, i)) <= 1e-5,
                          "case %d dqkv[%lld]: %g vs %g", ci, (long long)i, bt_get(x1->grad, i),
                          bt_get(x2->grad, i));
        bt_step_end();
    }
}
END_TEST

START_TEST(test_qkv_bad_inputs) {
    bt_tensor *x = bt_zeros(BT_SHAPE(2, 3, 10), BT_F32, bt_cpu());
    ck_assert_ptr_null(bt_attention_qkv(x, 2, 2, true, 0.0)); /* 10 is not a multiple of 6 */
    ck_assert_error_contains(
        "attention_qkv: qkv (2,3,10) does not hold 2 query and 2 x 2 kv heads");
    ck_assert_ptr_null(bt_attention_qkv(x, 3, 2, true, 0.0));
    ck_assert_error_contains("does not hold 3 query and 2 x 2 kv heads");
    bt_tensor *flat = bt_zeros(BT_SHAPE(6, 12), BT_F32, bt_cpu());
    ck_assert_ptr_null(bt_attention_qkv(flat, 2, 1, true, 0.0));
    ck_assert_error_contains("attention_qkv: qkv (6,12) must be 3-D");
}
END_TEST

static Suite *attention_suite(void) {
    Suite *s = suite_create("attention");
    bt_suite_add(s, test_forward_matches_reference);
    bt_suite_add(s, test_causal_first_row_is_first_value);
    bt_suite_add(s, test_gradients);
    bt_suite_add(s, test_gradients_transposed_views);
    bt_suite_add(s, test_gradients_several_key_blocks);
    bt_suite_add(s, test_short_sequences_match_reference);
    bt_suite_add(s, test_gradients_short_sequences);
    bt_suite_add(s, test_gradients_explicit_scale_and_accumulation);
    bt_suite_add(s, test_gradients_some_inputs);
    bt_suite_add(s, test_gradient_same_tensor_three_times);
    bt_suite_add(s, test_no_grad_records_nothing);
    bt_suite_add(s, test_bad_inputs);
    bt_suite_add(s, test_qkv_gradients);
    bt_suite_add(s, test_qkv_equals_views);
    bt_suite_add(s, test_qkv_bad_inputs);
    return s;
}

BT_TEST_MAIN(attention_suite)
