/* parallel/dp.c in a world of one (no mpirun; multi-rank equivalence is tests/cli/dp.sh): the
 * gradients it leaves equal those of plain accumulation, with and without ZeRO-1 and with buckets
 * of one parameter each; ZeRO-1's shards cover every parameter; and dp_free releases everything
 * it took (LeakSanitizer checks this in the ASan build). */
#include "comm/comm.h"
#include "core/nn.h"
#include "core/optim.h"
#include "parallel/dp.h"
#include "tests/gradcheck.h"

/* net: fc1 Linear(4 -> 6), fc2 Linear(6 -> 3, no bias) */
static struct nn_module *make_net(void) {
    struct bt_rng rng = bt_rng_make(3);
    struct nn_module *net = nn_module_create("net");
    nn_module_add_child(net, &nn_linear_create("fc1", 4, 6, true, &rng)->base);
    nn_module_add_child(net, &nn_linear_create("fc2", 6, 3, false, &rng)->base);
    return net;
}

/* loss of micro-batch m: sum of squares of fc2(relu(fc1(x_m))) / 2 */
static bt_tensor *loss_of(struct nn_module *net, int m) {
    struct bt_rng rng = bt_rng_make(10 + (uint64_t)m);
    bt_tensor *x = bt_randn(BT_SHAPE(5, 4), &rng);
    struct nn_linear *fc1 = (struct nn_linear *)nn_module_child(net, "fc1");
    struct nn_linear *fc2 = (struct nn_linear *)nn_module_child(net, "fc2");
    bt_tensor *y = nn_linear_forward(fc2, bt_relu(nn_linear_forward(fc1, x)));
    return bt_mul_scalar(bt_sum_all(bt_mul(y, y)), 0.5);
}

/* Gradients of two accumulated micro-batches through dp (world of one) equal plain ones. */
static void check_dp(bool zero1, int64_t bucket_bytes) {
    ck_assert_int_eq(comm_init(NULL, NULL), BT_OK);
    struct nn_module *plain = make_net(), *wrapped = make_net();
    struct nn_param_list pp, wp;
    ck_assert_int_eq(nn_named_parameters(plain, &pp), BT_OK);
    ck_assert_int_eq(nn_named_parameters(wrapped, &wp), BT_OK);
    struct dp_options o = {.bucket_bytes = bucket_bytes, .zero1 = zero1};
    struct dp *d = dp_create(comm_world(), &wp, &o);
    ck_assert_msg(d != NULL, "%s", bt_last_error());
    for (int m = 0; m < 2; m++) {
        ck_assert_int_eq(bt_backward(loss_of(plain, m)), BT_OK);
        if (m == 1) dp_arm(d);
        ck_assert_int_eq(bt_backward(loss_of(wrapped, m)), BT_OK);
        bt_step_end();
    }
    ck_assert_msg(dp_finish(d) == BT_OK, "%s", bt_last_error());
    const struct nn_param_list *op = dp_optim_params(d);
    ck_assert_int_eq(op->count, pp.count); /* one rank: its shards are the whole parameters */
    for (int64_t i = 0; i < pp.count; i++) {
        ck_assert_str_eq(op->names[i], pp.names[i]);
        const bt_tensor *want = pp.tensors[i]->grad, *got = op->tensors[i]->grad;
        ck_assert_int_eq(bt_numel(got), bt_numel(want));
        for (int64_t k = 0; k < bt_numel(want); k++)
            ck_assert_float_eq(bt_get(got, k), bt_get(want, k));
    }
    ck_assert(zero1 ? dp_optim_row0(d) != NULL : dp_optim_row0(d) == NULL);
    dp_zero_grad(d);
    for (int64_t k = 0; k < bt_numel(op->tensors[0]->grad); k++)
        ck_assert_float_eq(bt_get(op->tensors[0]->grad, k), 0.0f);
    ck_assert_int_eq(dp_gather_params(d), BT_OK);
    dp_free(d);
    nn_param_list_free(&pp);
    nn_param_list_free(&wp);
    nn_module_free(plain);
    nn_module_free(wrapped);
    comm_finalize();
}

START_TEST(test_dp_equals_accumulation) {
    check_dp(false, 0);
}
END_TEST

START_TEST(test_dp_one_param_buckets) {
    check_dp(false, 1); /* every parameter alone in its bucket */
}
END_TEST

START_TEST(test_zero1_equals_accumulation) {
    check_dp(true, 1);
}
END_TEST

START_TEST(test_dp_refuses_non_float_parameters) {
    ck_assert_int_eq(comm_init(NULL, NULL), BT_OK);
    bt_tensor *t = bt_tensor_new(BT_SHAPE(3), BT_I64, bt_cpu());
    char *name = "counts";
    struct nn_param_list list = {.count = 1, .names = &name, .tensors = &t};
    ck_assert_ptr_null(dp_create(comm_world(), &list, NULL));
    ck_assert_error_contains(
        "data parallel: parameter counts must be a contiguous persistent float32 tensor");
    bt_tensor_free(t);
    comm_finalize();
}
END_TEST

static Suite *dp_suite(void) {
    Suite *s = suite_create("dp");
    bt_suite_add(s, test_dp_equals_accumulation);
    bt_suite_add(s, test_dp_one_param_buckets);
    bt_suite_add(s, test_zero1_equals_accumulation);
    bt_suite_add(s, test_dp_refuses_non_float_parameters);
    return s;
}

BT_TEST_MAIN(dp_suite)
