/* Check suites that also run under mpirun (tests/test_comm.c, tests/test_tp.c). Under MPI the
 * suite runs without fork, and a failed assertion ends only this rank's test: the other ranks may
 * be waiting in one of its collectives. So each MPI_TEST notes its name while it runs; a rank that
 * starts a test while the previous one is still noted (it failed) aborts the job, after Check has
 * printed the failure, and mpi_test_run does the same after the last test. */
#ifndef BRAID_TESTS_MPI_TEST_H
#define BRAID_TESTS_MPI_TEST_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>

#include "comm/comm.h"
#include "core/runtime.h"

void mpi_test_enter(const char *name); /* aborts the job if the previous test failed */
void mpi_test_leave(void);

#define MPI_TEST(name)                                                                             \
    static void name##_body(void);                                                                 \
    START_TEST(name) {                                                                             \
        mpi_test_enter(#name);                                                                     \
        name##_body();                                                                             \
        mpi_test_leave();                                                                          \
    }                                                                                              \
    END_TEST                                                                                       \
    static void name##_body(void)

/* Runs the suite (after comm_init): without fork and with TAP output (each result printed as soon
 * as its test ends) under MPI; aborts the job when a test failed under MPI; finalizes comm and the
 * runtime. Returns main's exit status. */
int mpi_test_run(Suite *suite);

/* main() of such a suite: comm_init (MPI under a launcher, else a world of one), then the suite. */
#define MPI_TEST_MAIN(make_suite)                                                                  \
    int main(int argc, char **argv) {                                                              \
        if (comm_init(&argc, &argv) != BT_OK) {                                                    \
            fprintf(stderr, "braid: error: %s\n", bt_last_error());                                \
            return EXIT_FAILURE;                                                                   \
        }                                                                                          \
        return mpi_test_run(make_suite());                                                         \
    }

#endif
