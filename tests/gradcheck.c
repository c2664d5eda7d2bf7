/* Finite-difference gradient checking for the Check suites (see gradcheck.h). */
#define _XOPEN_SOURCE 700 /* nftw */
#include "tests/gradcheck.h"
#include "tests/mpi_test.h"

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "comm/comm.h"

void test_tmpdir_make(char *dir, size_t size, const char *tag) {
    snprintf(dir, size, "/tmp/braid_%s_XXXXXX", tag);
    ck_assert_msg(mkdtemp(dir) != NULL, "mkdtemp %s failed", dir);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

void test_tmpdir_remove(const char *dir) {
    nftw(dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
}

void test_setup(void) {
    bt_error_clear();
    bt_set_grad_enabled(true);
    bt_step_end();
}

void test_teardown(void) {
    bt_step_end();
    bt_runtime_shutdown();
}

void bt_suite_add_case(Suite *suite, const char *name, const TTest *test, int start, int end) {
    TCase *tc = tcase_create(name);
    tcase_add_checked_fixture(tc, test_setup, test_teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test, start, end);
    suite_add_tcase(suite, tc);
}

bt_tensor *test_param(int ndim, const int64_t *shape, uint64_t seed, float low, float high) {
    bt_tensor *t = bt_empty(ndim, shape, BT_F32, bt_cpu());
    struct bt_rng rng = bt_rng_make(seed);
    bt_fill_uniform(t, &rng, low, high);
    return bt_requires_grad_(t, true);
}

static char worst_at[512]; /* where gradcheck_error saw its worst mismatch */

/* sum(out * w) in double, without recording */
static double weighted_sum(gradcheck_fn fn, bt_tensor **inputs, void *ctx, const bt_tensor *w) {
    bool prev = bt_set_grad_enabled(false);
    bt_tensor *out = fn(inputs, ctx);
    bt_set_grad_enabled(prev);
    ck_assert_msg(out != NULL, "forward failed: %s", bt_last_error());
    double s = 0.0;
    for (int64_t i = 0, n = bt_numel(out); i < n; i++)
        s += bt_get(out, i) * bt_get(w, i);
    return s;
}

double gradcheck_error(const char *name, gradcheck_fn fn, bt_tensor **inputs, int n_inputs,
                       void *ctx, double atol, double rtol) {
    const double eps = 5e-3;
    double worst = 0.0;
    worst_at[0] = '\0';
    bt_tensor *out = fn(inputs, ctx);
    ck_assert_msg(out != NULL, "%s: forward failed: %s", name, bt_last_error());
    struct bt_rng rng = bt_rng_make(1234);
    bt_tensor *w = bt_empty(out->ndim, out->shape, BT_F32, bt_cpu());
    bt_fill_uniform(w, &rng, -1.0f, 1.0f);
    for (int k = 0; k < n_inputs; k++)
        if (inputs[k]->grad) bt_fill(inputs[k]->grad, 0.0);
    bt_tensor *loss = bt_sum_all(bt_mul(out, w));
    ck_assert_msg(loss && bt_backward(loss) == BT_OK, "%s: backward failed: %s", name,
                  bt_last_error());
    for (int k = 0; k < n_inputs; k++) {
        bt_tensor *x = inputs[k];
        if (!x->requires_grad) continue;
        ck_assert_msg(x->grad != NULL, "%s: input %d received no gradient", name, k);
        for (int64_t i = 0, n = bt_numel(x); i < n; i++) {
            double orig = bt_get(x, i);
            bt_set(x, i, orig + eps);
            double fp = weighted_sum(fn, inputs, ctx, w);
            bt_set(x, i, orig - eps);
            double fm = weighted_sum(fn, inputs, ctx, w);
            bt_set(x, i, orig);
            double numeric = (fp - fm) / (2.0 * eps);
            double analytic = bt_get(x->grad, i);
            double err = fabs(analytic - numeric) / (atol + rtol * fabs(numeric));
            if (err > worst) {
                worst = err;
                snprintf(worst_at, sizeof worst_at,
                         "%s: gradient of input %d element %lld: autograd %.6g, finite "
                         "difference %.6g",
                         name, k, (long long)i, analytic, numeric);
            }
        }
    }
    return worst;
}

void gradcheck(const char *name, gradcheck_fn fn, bt_tensor **inputs, int n_inputs, void *ctx,
               double atol, double rtol) {
    double worst = gradcheck_error(name, fn, inputs, n_inputs, ctx, atol, rtol);
    ck_assert_msg(worst <= 1.0, "%s", worst_at);
}

/* ---- suites that also run under mpirun (tests/mpi_test.h) ---- */

static const char *mpi_test_running;

void mpi_test_enter(const char *name) {
    if (mpi_test_running && comm_is_distributed()) {
        fprintf(stderr, "rank %d: %s failed; aborting the job so that no rank waits for it\n",
                comm_rank(comm_world()), mpi_test_running);
        comm_abort(1);
    }
    mpi_test_running = name;
}

void mpi_test_leave(void) {
    mpi_test_running = NULL;
}

int mpi_test_run(Suite *suite) {
    SRunner *runner = srunner_create(suite);
    if (comm_is_distributed()) {
        srunner_set_fork_status(runner, CK_NOFORK); /* fork and MPI clash */
        srunner_set_tap(runner, "-");               /* each result as soon as its test ends */
    }
    srunner_run_all(runner, CK_NORMAL);
    int failed = srunner_ntests_failed(runner);
    srunner_free(runner);
    if (failed > 0 && comm_is_distributed()) {
        fprintf(stderr, "rank %d: %d test(s) failed; aborting the job so that no rank waits\n",
                comm_rank(comm_world()), failed);
        comm_abort(1);
    }
    comm_finalize();
    bt_runtime_shutdown();
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
