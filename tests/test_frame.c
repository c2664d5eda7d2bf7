/* Frames (core/runtime.h): step memory and tapes of their own, as a pipeline keeps one per
 * micro-batch in flight. Two micro-batches' graphs live side by side; each backward runs its own
 * frame's tape only, and resetting one frame releases its memory while the other's tensors stay
 * valid. */
#include <math.h>

#include "core/autograd.h"
#include "core/runtime.h"
#include "tests/gradcheck.h"

/* loss = sum(tanh(x * w)) for a persistent w, recorded in the current frame */
static bt_tensor *loss_of(bt_tensor *w, float x_value) {
    bt_tensor *x = bt_full(BT_SHAPE(64), (double)x_value, BT_F32, bt_cpu());
    return bt_sum_all(bt_tanh(bt_mul(x, w)));
}

START_TEST(test_two_micro_batches_in_flight) {
    bt_tensor *w = bt_tensor_new(BT_SHAPE(64), BT_F32, bt_cpu());
    bt_requires_grad_(w, true);
    bt_fill(w, 0.5);
    struct bt_frame *a = bt_frame_create(), *b = bt_frame_create();
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    struct bt_frame *root = bt_frame_enter(a);
    bt_tensor *loss_a = loss_of(w, 1.0f); /* micro-batch 0's graph in a */
    bt_frame_enter(b);
    bt_tensor *loss_b = loss_of(w, 2.0f); /* micro-batch 1's in b, while a's is alive */
    ck_assert_uint_gt(bt_frame_stats(a).used, 0);
    ck_assert_uint_gt(bt_frame_stats(b).used, 0);
    ck_assert_uint_eq(bt_frame_stats(root).used, 0); /* nothing went to the runtime's frame */

    /* backward of micro-batch 0 (1F1B order: the older first) in its own frame */
    bt_frame_enter(a);
    ck_assert_int_eq(bt_backward(loss_a), BT_OK);
    double dw0 = bt_get(w->grad, 0), want0 = 1.0 * (1.0 - tanh(0.5) * tanh(0.5));
    ck_assert_double_eq_tol(dw0, want0, 1e-6);
    bt_frame_reset(a);
    ck_assert_uint_eq(bt_frame_stats(a).used, 0);
    ck_assert_uint_gt(bt_frame_stats(a).high_water, 0);

    /* micro-batch 1's graph and values are intact; its backward adds its part */
    bt_frame_enter(b);
    ck_assert_double_eq_tol(bt_item(loss_b), 64.0 * tanh(1.0), 1e-4);
    ck_assert_int_eq(bt_backward(loss_b), BT_OK);
    double want1 = 2.0 * (1.0 - tanh(1.0) * tanh(1.0));
    ck_assert_double_eq_tol(bt_get(w->grad, 0), want0 + want1, 1e-6);
    bt_frame_reset(b);
    ck_assert_ptr_eq(bt_frame_enter(root), b);
    ck_assert_ptr_null(bt_runtime()->tape);
    bt_frame_destroy(a);
    bt_frame_destroy(b);
    bt_tensor_free(w);
}
END_TEST

/* a backward runs the current frame's tape only: another frame's graph is not touched, and its
 * nodes are still there for its own backward */
START_TEST(test_backward_sees_its_frame_only) {
    bt_tensor *w = bt_tensor_new(BT_SHAPE(64), BT_F32, bt_cpu());
    bt_requires_grad_(w, true);
    bt_fill(w, 0.25);
    struct bt_frame *f = bt_frame_create();
    struct bt_frame *root = bt_frame_enter(f);
    bt_tensor *loss_f = loss_of(w, 3.0f);
    struct ag_node *tape_f = bt_runtime()->tape;
    bt_frame_enter(root);
    ck_assert_ptr_null(bt_runtime()->tape); /* the runtime's frame has its own (empty) tape */
    bt_tensor *loss_root = loss_of(w, 1.0f);
    ck_assert_int_eq(bt_backward(loss_root), BT_OK);
    bt_step_end(); /* resets the runtime's frame, not f */
    bt_frame_enter(f);
    ck_assert_ptr_eq(bt_runtime()->tape, tape_f);
    ck_assert_int_eq(bt_backward(loss_f), BT_OK);
    double want = 1.0 * (1.0 - tanh(0.25) * tanh(0.25)) + 3.0 * (1.0 - tanh(0.75) * tanh(0.75));
    ck_assert_double_eq_tol(bt_get(w->grad, 0), want, 1e-6);
    bt_frame_reset(f);
    bt_frame_enter(NULL);
    bt_frame_destroy(f);
    bt_tensor_free(w);
}
END_TEST

static Suite *frame_suite(void) {
    Suite *s = suite_create("frame");
    bt_suite_add(s, test_two_micro_batches_in_flight);
    bt_suite_add(s, test_backward_sees_its_frame_only);
    return s;
}

BT_TEST_MAIN(frame_suite)
