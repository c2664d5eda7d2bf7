/* Test helpers shared by the Check suites: finite-difference gradient checks and error-message
 * assertions. */
#ifndef BRAID_TESTS_GRADCHECK_H
#define BRAID_TESTS_GRADCHECK_H

#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "core/ops.h"
#include "core/runtime.h"

/* Builds the op's output from the inputs (which are leaves requiring grad). */
typedef bt_tensor *(*gradcheck_fn)(bt_tensor **inputs, void *ctx);

/* Compares autograd's gradient of sum(fn(inputs) * w) (w a fixed random tensor, so every output
 * element gets a different upstream gradient) with central differences, for every element of
 * every input that requires grad. Fails the running Check test with the op, input, element and
 * both values on a mismatch: |analytic - numeric| <= atol + rtol * |numeric|. */
void gradcheck(const char *name, gradcheck_fn fn, bt_tensor **inputs, int n_inputs, void *ctx,
               double atol, double rtol);
/* The same comparison without asserting: the worst |analytic - numeric| / (atol + rtol*|numeric|)
 * over all elements (> 1 means a mismatch); lets a test check that gradcheck catches wrong
 * gradients. */
double gradcheck_error(const char *name, gradcheck_fn fn, bt_tensor **inputs, int n_inputs,
                       void *ctx, double atol, double rtol);
#define GRADCHECK(name, fn, inputs, n, ctx) gradcheck(name, fn, inputs, n, ctx, 2e-3, 2e-2)

/* A step tensor of the given shape filled with uniform values in [low, high) from `seed`, as a
 * leaf that requires grad. */
bt_tensor *test_param(int ndim, const int64_t *shape, uint64_t seed, float low, float high);

/* Asserts that the last error message contains `needle`, then clears it. */
#define ck_assert_error_contains(needle)                                                           \
    do {                                                                                           \
        const char *msg_ = bt_last_error();                                                        \
        ck_assert_msg(strstr(msg_, (needle)) != NULL,                                              \
                      "expected error containing \"%s\", got \"%s\"", (needle), msg_);             \
        bt_error_clear();                                                                          \
    } while (0)

/* A fresh directory /tmp/braid_<tag>_XXXXXX for a test's files, its path written into dir (at
 * least 64 bytes); test_tmpdir_remove deletes it with everything in it. */
void test_tmpdir_make(char *dir, size_t size, const char *tag);
void test_tmpdir_remove(const char *dir);

/* Each test starts and ends with a clean runtime (no error, empty step arena). */
void test_setup(void);
void test_teardown(void);

/* Adds one test as a test case of its own, named after the test function, with the
 * test_setup/test_teardown fixture: CTest runs each case as a separate test (CK_RUN_CASE=name). */
void bt_suite_add_case(Suite *suite, const char *name, const TTest *test, int start, int end);
#define bt_suite_add(suite, test) bt_suite_add_case(suite, #test, test, 0, 1)
#define bt_suite_add_loop(suite, test, start, end) bt_suite_add_case(suite, #test, test, start, end)

/* main() for a test file whose suite is built by `make_suite` */
#define BT_TEST_MAIN(make_suite)                                                                   \
    int main(void) {                                                                               \
        SRunner *runner = srunner_create(make_suite());                                            \
        srunner_run_all(runner, CK_NORMAL);                                                        \
        int failed = srunner_ntests_failed(runner);                                                \
        srunner_free(runner);                                                                      \
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;                                          \
    }

#endif
