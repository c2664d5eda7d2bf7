/* comm/ on device tensors: NCCL at a world of one (the process started without a launcher):
 * every collective, the async path, groups split with ncclCommSplit, the errors, and data
 * parallelism's buckets (with and without ZeRO-1) on the GPU against the same step on the CPU.
 * Label gpu; exits 77 ("skipped") where no GPU is visible. Several ranks on GPUs need as many
 * GPUs (tests/gpu/train_cuda.sh dp2). */
#include <math.h>
#include <stdio.h>

#include "comm/comm.h"
#include "core/autograd.h"
#include "core/cuda/cuda.h"
#include "core/optim.h"
#include "models/model.h"
#include "parallel/dp.h"
#include "tests/gradcheck.h"
#include "tests/model_check.h"

static bt_device gpu(void) {
    return bt_cuda(0);
}

/* a device copy of x's values, as a step tensor */
static bt_tensor *on_gpu(bt_tensor *x) {
    bt_tensor *g = bt_to_device(x, gpu());
    ck_assert_msg(g, "%s", bt_last_error());
    return g;
}

static void assert_equal(const char *what, bt_tensor *expect, bt_tensor *device) {
    bt_tensor *h = bt_to_device(device, bt_cpu());
    ck_assert_msg(h && bt_numel(h) == bt_numel(expect), "%s: %s", what, bt_last_error());
    for (int64_t i = 0; i < bt_numel(h); i++)
        ck_assert_msg(bt_get(h, i) == bt_get(expect, i), "%s: element %lld is %g, expected %g",
                      what, (long long)i, bt_get(h, i), bt_get(expect, i));
}

START_TEST(test_collectives_at_world_one) {
    struct comm *w = comm_world();
    ck_assert_msg(bt_backend_for(gpu(), "test") && comm_use_device(w) == BT_OK, "%s",
                  bt_last_error());
    bt_tensor *x = test_param(BT_SHAPE(1000), 1, -1, 1);
    comm_op ops[] = {COMM_SUM, COMM_AVG, COMM_MAX, COMM_MIN};
    for (int k = 0; k < 4; k++) { /* one rank: every reduction leaves the values as they are */
        bt_tensor *g = on_gpu(x);
        ck_assert_msg(comm_allreduce(w, g, ops[k]) == BT_OK, "%s", bt_last_error());
        assert_equal("allreduce", x, g);
    }
    bt_tensor *out = bt_zeros(BT_SHAPE(1000), BT_F32, gpu());
    ck_assert_msg(comm_reduce_scatter(w, on_gpu(x), out, COMM_SUM) == BT_OK, "%s", bt_last_error());
    assert_equal("reduce_scatter", x, out);
    out = bt_zeros(BT_SHAPE(1000), BT_F32, gpu());
    ck_assert_msg(comm_allgather(w, on_gpu(x), out) == BT_OK, "%s", bt_last_error());
    assert_equal("allgather", x, out);
    bt_tensor *b = on_gpu(x);
    ck_assert_msg(comm_broadcast(w, b, 0) == BT_OK, "%s", bt_last_error());
    assert_equal("broadcast", x, b);
    int64_t counts[1] = {1000};
    out = bt_zeros(BT_SHAPE(1000), BT_F32, gpu());
    ck_assert_msg(comm_reduce_scatter_v(w, on_gpu(x), out, counts, COMM_AVG) == BT_OK, "%s",
                  bt_last_error());
    assert_equal("reduce_scatter_v", x, out);
    b = on_gpu(x);
    ck_assert_msg(comm_allgather_v(w, b, counts) == BT_OK, "%s", bt_last_error());
    assert_equal("allgather_v", x, b);
    /* inputs just computed on the compute stream, not synchronised: NCCL's stream must wait for
     * them (an operation that ran early would reduce the old values) */
    bt_tensor *twice = bt_mul_scalar(x, 2.0);
    for (int rep = 0; rep < 3; rep++) {
        bt_tensor *g = bt_mul_scalar(on_gpu(x), 2.0);
        ck_assert_msg(comm_allreduce(w, g, COMM_SUM) == BT_OK, "%s", bt_last_error());
        assert_equal("allreduce of a fresh kernel's output", twice, g);
        out = bt_zeros(BT_SHAPE(1000), BT_F32, gpu());
        ck_assert_msg(comm_reduce_scatter(w, bt_mul_scalar(on_gpu(x), 2.0), out, COMM_SUM) == BT_OK,
                      "%s", bt_last_error());
        assert_equal("reduce_scatter of a fresh kernel's output", twice, out);
    }
    bt_tensor *ints = bt_empty(BT_SHAPE(5), BT_I64, bt_cpu());
    for (int i = 0; i < 5; i++)
        bt_set(ints, i, 1000000000000LL + i);
    bt_tensor *gi = on_gpu(ints);
    ck_assert_msg(comm_allreduce(w, gi, COMM_SUM) == BT_OK, "%s", bt_last_error());
    assert_equal("int64 allreduce", ints, gi);
}
END_TEST

START_TEST(test_split_groups_and_async) {
    struct comm *w = comm_world();
    ck_assert_ptr_nonnull(bt_backend_for(gpu(), "test"));
    /* split before the world has a communicator: the group makes its own on first use */
    struct comm *early = comm_split(w, 0, 0, "early");
    ck_assert_msg(early, "%s", bt_last_error());
    bt_tensor *y = test_param(BT_SHAPE(300), 4, -1, 1),
              *out = bt_zeros(BT_SHAPE(300), BT_F32, gpu());
    ck_assert_msg(comm_allgather(early, on_gpu(y), out) == BT_OK, "%s", bt_last_error());
    assert_equal("allgather on a group that made its own communicator", y, out);
    comm_free(early);
    ck_assert_msg(comm_use_device(w) == BT_OK, "%s", bt_last_error());
    struct comm *dp = comm_split(w, 0, 0, "dp"); /* its communicator: ncclCommSplit */
    ck_assert_msg(dp, "%s", bt_last_error());
    bt_tensor *x = test_param(BT_SHAPE(4096), 2, -1, 1), *g = on_gpu(x);
    struct comm_request *r = comm_iallreduce(dp, g, COMM_AVG);
    ck_assert_msg(r, "%s", bt_last_error());
    bool done = false;
    for (int i = 0; i < 1000000 && !done; i++)
        ck_assert_int_eq(comm_test(r, &done), BT_OK);
    ck_assert_int_eq(comm_wait(r), BT_OK);
    assert_equal("iallreduce on a split group", x, g);
    comm_free(dp);
    struct comm *late = comm_split(comm_world(), 0, 0, "late");
    g = on_gpu(x);
    ck_assert_msg(comm_allreduce(late, g, COMM_SUM) == BT_OK, "%s", bt_last_error());
    assert_equal("allreduce on a group split later", x, g);
    comm_free(late);
}
END_TEST

START_TEST(test_device_errors) {
    struct comm *w = comm_world();
    ck_assert_ptr_nonnull(bt_backend_for(gpu(), "test"));
    bt_tensor *x = test_param(BT_SHAPE(4, 6), 3, -1, 1), *g = on_gpu(x);
    ck_assert_int_eq(comm_reduce_scatter(w, x, g, COMM_SUM), BT_ERR);
    ck_assert_error_contains("in is on cpu but out on cuda:0");
    ck_assert_int_eq(comm_allreduce(w, bt_transpose(g, 0, 1), COMM_SUM), BT_ERR);
    ck_assert_error_contains("t is a strided view on cuda:0; device tensors must be contiguous");
    struct bt_storage other = *g->storage;
    other.device = bt_cuda(1);
    bt_tensor fake = *g;
    fake.storage = &other;
    ck_assert_int_eq(comm_allreduce(w, &fake, COMM_SUM), BT_ERR);
    ck_assert_error_contains("t is on cuda:1, but this process drives cuda:0");
}
END_TEST

/* dp at a world of one on the GPU (buckets, ZeRO-1's packing and shards) takes the CPU's step */
static void dp_step_matches_cpu(bool zero1) {
    struct model_config cfg = model_check_tiny_gpt(true, true, 61, 2);
    struct model *mc = model_check_create(&cfg, 7), *mg = model_check_create(&cfg, 7);
    ck_assert_int_eq(nn_module_to(mg->root, gpu()), BT_OK);
    struct nn_param_list pc, pg;
    ck_assert_int_eq(nn_named_parameters(mc->root, &pc), BT_OK);
    ck_assert_int_eq(nn_named_parameters(mg->root, &pg), BT_OK);
    struct dp_options o = {.bucket_bytes = 2048, .zero1 = zero1}; /* several buckets */
    struct dp *d = dp_create(comm_world(), &pg, &o);
    ck_assert_msg(d, "%s", bt_last_error());
    struct optim_config oc = optim_config_default(OPTIM_ADAMW);
    struct optim *opt_c = optim_create(&oc, &pc), *opt_g = optim_create(&oc, dp_optim_params(d));
    ck_assert_msg(opt_c && opt_g, "%s", bt_last_error());
    for (int step = 0; step < 3; step++) {
        bt_tensor *idx = bt_empty(BT_SHAPE(2, 8), BT_I64, bt_cpu());
        bt_tensor *tgt = bt_empty(BT_SHAPE(2, 8), BT_I64, bt_cpu());
        for (int i = 0; i < 16; i++) {
            bt_set(idx, i, (i * 7 + step) % 61);
            bt_set(tgt, i, (i * 3 + step + 1) % 61);
        }
        optim_zero_grad(opt_c);
        dp_zero_grad(d);
        bt_tensor *lc = model_forward(mc, idx, tgt, NULL);
        ck_assert_int_eq(bt_backward(lc), BT_OK);
        bt_tensor *lg = model_forward(mg, on_gpu(idx), on_gpu(tgt), NULL);
        dp_arm(d);
        ck_assert_msg(lg && bt_backward(lg) == BT_OK && dp_finish(d) == BT_OK, "%s",
                      bt_last_error());
        ck_assert_int_eq(optim_step(opt_c, 1e-3), BT_OK);
        ck_assert_msg(optim_step(opt_g, 1e-3) == BT_OK && dp_gather_params(d) == BT_OK, "%s",
                      bt_last_error());
        bt_step_end();
    }
    for (int64_t i = 0; i < pc.count; i++) {
        bt_tensor *h = bt_to_device(pg.tensors[i], bt_cpu());
        double worst = 0.0, big = 0.0;
        for (int64_t k = 0; k < bt_numel(h); k++) {
            worst = fmax(worst, fabs(bt_get(h, k) - bt_get(pc.tensors[i], k)));
            big = fmax(big, fabs(bt_get(pc.tensors[i], k)));
        }
        ck_assert_msg(worst <= 1e-4 * big, "%s: max error %g of max %g", pc.names[i], worst, big);
    }
    optim_free(opt_c);
    optim_free(opt_g);
    dp_free(d);
    nn_param_list_free(&pc);
    nn_param_list_free(&pg);
    model_free(mc);
    model_free(mg);
}

START_TEST(test_dp_buckets_on_device) {
    dp_step_matches_cpu(false);
}
END_TEST

START_TEST(test_dp_zero1_on_device) {
    dp_step_matches_cpu(true);
}
END_TEST

static Suite *make_suite(void) {
    Suite *s = suite_create("gpu_comm");
    bt_suite_add(s, test_collectives_at_world_one);
    bt_suite_add(s, test_split_groups_and_async);
    bt_suite_add(s, test_device_errors);
    bt_suite_add(s, test_dp_buckets_on_device);
    bt_suite_add(s, test_dp_zero1_on_device);
    return s;
}

int main(int argc, char **argv) {
    char why[256];
    if (bt_cuda_device_count(why, sizeof why) == 0) {
        printf("skipped: no CUDA device visible (%s)\n", why);
        return 77; /* CTest: SKIP_RETURN_CODE */
    }
    if (comm_init(&argc, &argv) != BT_OK) {
        fprintf(stderr, "braid: error: %s\n", bt_last_error());
        return EXIT_FAILURE;
    }
    SRunner *runner = srunner_create(make_suite());
    /* no fork: CUDA, initialised above, cannot be used in a forked child (CTest runs each test
     * in a process of its own, CK_RUN_CASE) */
    srunner_set_fork_status(runner, CK_NOFORK);
    srunner_run_all(runner, CK_NORMAL);
    int failed = srunner_ntests_failed(runner);
    srunner_free(runner);
    comm_finalize();
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
