/* Tensors: creation, dtypes and conversions, views sharing storage, reference counting, the step
 * arena, random numbers. */
#include <math.h>

#include "core/arena.h"
#include "core/dtype_convert.h"
#include "tests/gradcheck.h"

START_TEST(test_factories_and_properties) {
    bt_tensor *z = bt_zeros(BT_SHAPE(2, 3, 4), BT_F32, bt_cpu());
    ck_assert_int_eq(z->ndim, 3);
    ck_assert_int_eq(bt_numel(z), 24);
    ck_assert_int_eq(bt_nbytes(z), 96);
    ck_assert(bt_is_contiguous(z));
    ck_assert_int_eq(z->stride[0], 12);
    ck_assert_int_eq(z->stride[2], 1);
    ck_assert_float_eq(bt_get(z, 23), 0.0f);
    bt_tensor *f = bt_full(BT_SHAPE(5), 2.5, BT_F32, bt_cpu());
    ck_assert_float_eq(bt_get(f, 4), 2.5f);
    bt_tensor *s = bt_scalar(3.0);
    ck_assert_int_eq(s->ndim, 0);
    ck_assert_int_eq(bt_numel(s), 1);
    ck_assert_float_eq(bt_item(s), 3.0f);
    char buf[32];
    ck_assert_str_eq(bt_shape_str(z, buf, sizeof buf), "(2,3,4)");
    ck_assert_str_eq(bt_shape_str(s, buf, sizeof buf), "()");
}
END_TEST

START_TEST(test_dtypes_roundtrip) {
    bt_dtype dtypes[] = {BT_F32, BT_BF16, BT_F16, BT_I32, BT_I64, BT_U16, BT_BOOL};
    size_t sizes[] = {4, 2, 2, 4, 8, 2, 1};
    for (int k = 0; k < 7; k++) {
        bt_tensor *t = bt_full(BT_SHAPE(3), 1.0, dtypes[k], bt_cpu());
        ck_assert_ptr_nonnull(t);
        ck_assert_int_eq(bt_dtype_size(dtypes[k]), sizes[k]);
        ck_assert_double_eq(bt_get(t, 2), 1.0);
    }
    ck_assert_str_eq(bt_dtype_name(BT_BF16), "bfloat16");
    /* bf16: 8 bits of mantissa, round to nearest even; f16: 11 bits */
    ck_assert_float_eq(bt_bf16_to_f32(bt_f32_to_bf16(1.0f + 1.0f / 256)), 1.0f); /* tie: even */
    ck_assert_float_eq(bt_bf16_to_f32(bt_f32_to_bf16(1.0f + 3.0f / 256)), 1.015625f); /* tie: up */
    ck_assert_float_eq(bt_f16_to_f32(bt_f32_to_f16(0.1f)), 0.0999755859375f);
    ck_assert_float_eq(bt_f16_to_f32(bt_f32_to_f16(65504.0f)), 65504.0f);
    ck_assert(isinf(bt_f16_to_f32(bt_f32_to_f16(1e6f))));
    ck_assert_float_eq(bt_f16_to_f32(bt_f32_to_f16(5.960464477539063e-08f)),
                       5.960464477539063e-08f);
    ck_assert(isnan(bt_bf16_to_f32(bt_f32_to_bf16(NAN))));
}
END_TEST

START_TEST(test_to_dtype_and_back) {
    float v[] = {0.1f, -2.5f, 3.0f, 1000.0f};
    bt_tensor *x = bt_from_data(BT_SHAPE(4), BT_F32, v);
    bt_tensor *h = bt_to_dtype(x, BT_BF16);
    bt_tensor *back = bt_to_dtype(h, BT_F32);
    ck_assert_int_eq(h->dtype, BT_BF16);
    for (int i = 0; i < 4; i++)
        ck_assert_double_eq_tol(bt_get(back, i), v[i], fabs(v[i]) / 128);
    bt_tensor *ints = bt_to_dtype(x, BT_I32);
    ck_assert_double_eq(bt_get(ints, 1), -2.0);
}
END_TEST

START_TEST(test_views_share_storage) {
    bt_tensor *x = bt_zeros(BT_SHAPE(2, 3), BT_F32, bt_cpu());
    for (int i = 0; i < 6; i++)
        bt_set(x, i, i);
    bt_tensor *t = bt_transpose(x, 0, 1);
    ck_assert_ptr_eq(t->storage, x->storage);
    ck_assert(!bt_is_contiguous(t));
    ck_assert_int_eq(t->shape[0], 3);
    ck_assert_double_eq(bt_get(t, 1), 3.0); /* t[0][1] = x[1][0] */
    bt_tensor *r = bt_reshape(x, BT_SHAPE(3, -1));
    ck_assert_ptr_eq(r->storage, x->storage);
    ck_assert_int_eq(r->shape[1], 2);
    bt_tensor *n = bt_narrow(x, 1, 1, 2);
    ck_assert_double_eq(bt_get(n, 0), 1.0);
    ck_assert_double_eq(bt_get(n, 3), 5.0);
    bt_set(n, 0, 42.0); /* writes through to x */
    ck_assert_double_eq(bt_get(x, 1), 42.0);
    bt_tensor *c = bt_contiguous(t);
    ck_assert(bt_is_contiguous(c));
    ck_assert_ptr_ne(c->storage, x->storage);
    ck_assert_double_eq(bt_get(c, 1), 3.0);
    bt_tensor *u = bt_unsqueeze(x, 0);
    ck_assert_int_eq(u->ndim, 3);
    bt_tensor *sq = bt_squeeze(u, 0);
    ck_assert_int_eq(sq->ndim, 2);
    /* reshape of a non-contiguous view copies; view refuses */
    bt_tensor *rt = bt_reshape(t, BT_SHAPE(6));
    ck_assert_double_eq(bt_get(rt, 1), 3.0);
    ck_assert_ptr_null(bt_view(t, BT_SHAPE(6)));
    ck_assert_error_contains("view: input (3,2) is not contiguous");
}
END_TEST

START_TEST(test_large_strided_copies) {
    /* bt_contiguous of big permuted views (threads split the rows of the copy) and of a dtype
     * conversion, at odd shapes: every element lands where the index arithmetic says; a big
     * fill with zeros */
    const int64_t A = 7, B = 131, C = 97; /* 88949 elements, over the parallel threshold */
    bt_tensor *x = bt_empty(BT_SHAPE(A, B, C), BT_F32, bt_cpu());
    float *xs = bt_f32(x);
    for (int64_t i = 0; i < A * B * C; i++)
        xs[i] = (float)i;
    bt_tensor *p = bt_contiguous(bt_permute(x, (int[]){2, 0, 1}));
    ck_assert_ptr_nonnull(p);
    const float *ps = bt_f32(p);
    for (int64_t c = 0; c < C; c++)
        for (int64_t a = 0; a < A; a++)
            for (int64_t b = 0; b < B; b++)
                ck_assert_float_eq(ps[(c * A + a) * B + b], (float)((a * B + b) * C + c));
    /* zeroing a big buffer (threads take 1 MiB chunks; the last one is partial) */
    bt_tensor *big = bt_empty(BT_SHAPE(1234567), BT_F32, bt_cpu());
    for (int64_t i = 0; i < 1234567; i++)
        bt_f32(big)[i] = 1.0f;
    bt_fill(big, 0.0);
    for (int64_t i = 0; i < 1234567; i++)
        ck_assert_float_eq(bt_f32(big)[i], 0.0f);
    bt_tensor *t = bt_to_dtype(bt_transpose(x, 1, 2), BT_I32); /* (A, C, B), int32 */
    ck_assert_ptr_nonnull(t);
    for (int64_t i = 0; i < A * B * C; i += 9973) {
        int64_t a = i / (C * B), c = i / B % C, b = i % B;
        ck_assert_double_eq(bt_get(t, i), (double)((a * B + b) * C + c));
    }
}
END_TEST

START_TEST(test_view_errors) {
    bt_tensor *x = bt_zeros(BT_SHAPE(2, 3), BT_F32, bt_cpu());
    ck_assert_ptr_null(bt_reshape(x, BT_SHAPE(4, 2)));
    ck_assert_error_contains("reshape: shape of 6 elements cannot be viewed");
    ck_assert_ptr_null(bt_reshape(x, BT_SHAPE(-1, -1)));
    ck_assert_error_contains("reshape: only one dimension can be -1");
    ck_assert_ptr_null(bt_transpose(x, 0, 2));
    ck_assert_error_contains("transpose: dims 0 and 2 out of range for (2,3)");
    ck_assert_ptr_null(bt_narrow(x, 1, 2, 2));
    ck_assert_error_contains("narrow: range [2, 4) out of bounds for dimension 1 of (2,3)");
    ck_assert_ptr_null(bt_squeeze(x, 0));
    ck_assert_error_contains("squeeze: dimension 0 of (2,3) is not of size 1");
    ck_assert_ptr_null(bt_permute(x, (int[]){0, 0}));
    ck_assert_error_contains("permute: dims are not a permutation");
    ck_assert_ptr_null(bt_zeros(BT_SHAPE(2, -3), BT_F32, bt_cpu()));
    ck_assert_error_contains("bt_empty: dimension 1 has negative size -3");
    ck_assert_ptr_null(bt_tensor_new(BT_SHAPE(2), BT_F32, bt_cuda(0)));
    ck_assert_error_contains("device cuda:0 is not available");
}
END_TEST

START_TEST(test_persistent_refcount) {
    bt_tensor *p = bt_tensor_new(BT_SHAPE(4, 4), BT_F32, bt_cpu());
    ck_assert(p->persistent);
    ck_assert_double_eq(bt_get(p, 15), 0.0); /* zero-initialised */
    bt_tensor_retain(p);
    ck_assert_int_eq(p->refcount, 2);
    bt_tensor_free(p);
    ck_assert_int_eq(p->refcount, 1);
    bt_fill(p, 3.0);
    bt_tensor *c = bt_tensor_clone_persistent(p);
    ck_assert_ptr_ne(c->storage, p->storage);
    ck_assert_double_eq(bt_get(c, 5), 3.0);
    /* a step view of persistent storage survives a step end of the view, not of the storage */
    bt_tensor *v = bt_transpose(p, 0, 1);
    ck_assert_ptr_eq(v->storage, p->storage);
    bt_step_end();
    ck_assert_double_eq(bt_get(p, 0), 3.0);
    bt_tensor_free(c);
    bt_tensor_free(p); /* ASan reports a leak or a double free if the counts are wrong */
}
END_TEST

START_TEST(test_arena_reaches_steady_state) {
    struct bt_arena *arena = bt_arena_create(1024);
    uint64_t after_warmup = 0;
    for (int step = 0; step < 5; step++) {
        for (int k = 0; k < 100; k++)
            ck_assert_ptr_nonnull(bt_arena_alloc(arena, 1000));
        if (step == 1) after_warmup = bt_arena_stats(arena).system_allocs;
        bt_arena_reset(arena);
    }
    struct bt_arena_stats s = bt_arena_stats(arena);
    ck_assert_uint_eq(s.system_allocs, after_warmup); /* no malloc after the warm-up step */
    ck_assert_uint_ge(s.capacity, 100 * 1024);
    ck_assert_uint_eq(s.used, 0);
    void *a = bt_arena_alloc(arena, 3), *b = bt_arena_alloc(arena, 5);
    ck_assert_uint_eq((uintptr_t)a % 64, 0);
    ck_assert_uint_eq((uintptr_t)b % 64, 0);
    bt_arena_destroy(arena);
}
END_TEST

START_TEST(test_step_tensors_no_malloc_after_warmup) {
    /* a small training-like step through the runtime's arena: forward, backward, reset */
    bt_tensor *w = bt_tensor_new(BT_SHAPE(16, 8), BT_F32, bt_cpu());
    bt_requires_grad_(w, true);
    uint64_t allocs[4];
    for (int step = 0; step < 4; step++) {
        struct bt_rng rng = bt_rng_make(7);
        bt_tensor *x = bt_randn(BT_SHAPE(4, 8), &rng);
        bt_tensor *loss = bt_mean_all(bt_tanh(bt_linear(x, w, NULL)));
        ck_assert_int_eq(bt_backward(loss), BT_OK);
        bt_step_end();
        allocs[step] = bt_arena_stats(bt_runtime()->step_arena).system_allocs;
    }
    ck_assert_uint_eq(allocs[3], allocs[1]);
    bt_tensor_free(w);
}
END_TEST

START_TEST(test_rng_reproducible) {
    struct bt_rng a = bt_rng_make(42), b = bt_rng_make(42), c = bt_rng_make(43);
    bt_tensor *x = bt_randn(BT_SHAPE(1000), &a), *y = bt_randn(BT_SHAPE(1000), &b);
    bt_tensor *z = bt_randn(BT_SHAPE(1000), &c);
    double mean = 0, var = 0;
    int differ = 0;
    for (int i = 0; i < 1000; i++) {
        ck_assert_double_eq(bt_get(x, i), bt_get(y, i));
        differ += bt_get(x, i) != bt_get(z, i);
        mean += bt_get(x, i) / 1000;
    }
    for (int i = 0; i < 1000; i++)
        var += (bt_get(x, i) - mean) * (bt_get(x, i) - mean) / 1000;
    ck_assert_int_gt(differ, 990);
    ck_assert_double_lt(fabs(mean), 0.1);
    ck_assert_double_lt(fabs(var - 1.0), 0.1);
    ck_assert_uint_eq(a.offset, 2000); /* two uniforms per normal */
    for (uint64_t i = 0; i < 1000; i++) {
        float u = bt_rng_uniform_at(1, i);
        ck_assert(u >= 0.0f && u < 1.0f);
    }
}
END_TEST

START_TEST(test_copy_converts_and_checks) {
    bt_tensor *src = bt_full(BT_SHAPE(2, 3), 1.5, BT_F32, bt_cpu());
    bt_tensor *dst = bt_zeros(BT_SHAPE(2, 3), BT_BF16, bt_cpu());
    ck_assert_int_eq(bt_copy_(dst, src), BT_OK);
    ck_assert_double_eq(bt_get(dst, 5), 1.5);
    bt_tensor *bad = bt_zeros(BT_SHAPE(3, 2), BT_F32, bt_cpu());
    ck_assert_int_eq(bt_copy_(bad, src), BT_ERR);
    ck_assert_error_contains("copy_: destination (3,2) and source (2,3) shapes differ");
    /* copy into a transposed (non-contiguous) destination */
    bt_tensor *t = bt_transpose(bad, 0, 1);
    for (int i = 0; i < 6; i++)
        bt_set(src, i, i);
    ck_assert_int_eq(bt_copy_(t, src), BT_OK);
    ck_assert_double_eq(bt_get(bad, 1), 3.0); /* bad[0][1] = t[1][0] = src[1][0] */
}
END_TEST

START_TEST(test_alias_shares_storage) {
    bt_tensor *base = bt_tensor_new(BT_SHAPE(4, 3), BT_F32, bt_cpu());
    for (int i = 0; i < 12; i++)
        bt_set(base, i, i);
    bt_tensor *rows = bt_tensor_alias(base, 3, BT_SHAPE(2, 3)); /* rows 1..2 */
    ck_assert_ptr_nonnull(rows);
    ck_assert(rows->persistent && bt_is_contiguous(rows));
    ck_assert_double_eq(bt_get(rows, 0), 3.0);
    bt_set(rows, 5, -1.0);
    ck_assert_double_eq(bt_get(base, 8), -1.0);
    bt_tensor_free(base); /* the alias keeps the storage alive */
    ck_assert_double_eq(bt_get(rows, 5), -1.0);
    ck_assert_ptr_null(bt_tensor_alias(rows, 4, BT_SHAPE(3)));
    ck_assert_error_contains("bt_tensor_alias: elements [4, 7) are outside the base's 6");
    bt_tensor_free(rows);
}
END_TEST

static Suite *tensor_suite(void) {
    Suite *s = suite_create("tensor");
    bt_suite_add(s, test_factories_and_properties);
    bt_suite_add(s, test_dtypes_roundtrip);
    bt_suite_add(s, test_to_dtype_and_back);
    bt_suite_add(s, test_views_share_storage);
    bt_suite_add(s, test_view_errors);
    bt_suite_add(s, test_persistent_refcount);
    bt_suite_add(s, test_arena_reaches_steady_state);
    bt_suite_add(s, test_step_tensors_no_malloc_after_warmup);
    bt_suite_add(s, test_rng_reproducible);
    bt_suite_add(s, test_copy_converts_and_checks);
    bt_suite_add(s, test_alias_shares_storage);
    bt_suite_add(s, test_large_strided_copies);
    return s;
}

BT_TEST_MAIN(tensor_suite)
