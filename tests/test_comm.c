/* Communicators (comm/comm.h): every collective, blocking and non-blocking, against a serial
 * computation of the expected values (rank r fills element i with a known formula of r and i),
 * on odd sizes and non-contiguous views; send/recv, splits, scalar reductions, the traffic counters
 * and the messages of bad arguments. The same binary runs alone (a world of one: collectives are
 * copies) and under mpirun -np 2, 3, 4 (tests/comm_tests.cmake); BRAID_COMM_TEST_MODE=watchdog
 * makes rank 1 skip an allreduce so that the watchdog must end the job. */
#define _POSIX_C_SOURCE 200809L /* nanosleep */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <time.h>

#include "comm/comm.h"
#include "comm/mpi.h"
#include "tests/gradcheck.h"
#include "tests/mpi_test.h"

/* ---- what each rank contributes, and what the group should compute from it ---- */

#define MAX_RANKS 64 /* the largest world the tests' per-rank arrays hold */

static const comm_op all_ops[] = {COMM_SUM, COMM_AVG, COMM_MAX, COMM_MIN};
static const int64_t sizes[] = {1, 7, 1001};

/* rank r's float element i: multiples of 0.25, so sums are exact; varies with r non-monotonically
 */
static double fval(int r, int64_t i) {
    return (r + 1) * 0.5 + (double)((i * 7 + r * 3) % 13) * 0.25 - 1.5;
}

/* rank r's int64 element i: uses the bits above 32 */
static double ival(int r, int64_t i) {
    return (double)(((int64_t)(r + 1) << 33) + (i * 7919 + r * 104729) % 100003 - 50000);
}

/* op over ranks 0..size-1 of f(r, i) */
static double reduce_serial(comm_op op, int size, double (*f)(int, int64_t), int64_t i) {
    double acc = f(0, i);
    for (int r = 1; r < size; r++) {
        double v = f(r, i);
        acc = op == COMM_MAX ? fmax(acc, v) : op == COMM_MIN ? fmin(acc, v) : acc + v;
    }
    return op == COMM_AVG ? acc / size : acc;
}

static struct comm *world(void) {
    return comm_world();
}

static int my_rank(void) {
    return comm_rank(comm_world());
}

static int world_size(void) {
    return comm_size(comm_world());
}

/* t's logical element i = f(rank, first + i) */
static void fill(bt_tensor *t, double (*f)(int, int64_t), int rank, int64_t first) {
    for (int64_t i = 0, n = bt_numel(t); i < n; i++)
        bt_set(t, i, f(rank, first + i));
}

static void assert_value(double got, double want, bt_dtype dtype, const char *what, int64_t i) {
    double tol = dtype == BT_F32 ? 1e-6 * (1.0 + fabs(want)) : 0.0;
    ck_assert_msg(fabs(got - want) <= tol,
                  "%s: element %lld is %.9g, expected %.9g (rank %d of %d)", what, (long long)i,
                  got, want, my_rank(), world_size());
}

static void assert_ok(bt_status st, const char *what) {
    ck_assert_msg(st == BT_OK, "%s failed on rank %d: %s", what, my_rank(), bt_last_error());
}

static struct comm_request *started(struct comm_request *r, const char *what) {
    ck_assert_msg(r != NULL, "%s did not start on rank %d: %s", what, my_rank(), bt_last_error());
    return r;
}

/* Asserts the last error is "<op> on group world (rank R of N): <detail...>". */
static void assert_error(const char *op, const char *detail) {
    char prefix[128];
    snprintf(prefix, sizeof prefix, "%s on group world (rank %d of %d): ", op, my_rank(),
             world_size());
    const char *msg = bt_last_error();
    ck_assert_msg(strncmp(msg, prefix, strlen(prefix)) == 0, "expected \"%s...\", got \"%s\"",
                  prefix, msg);
    ck_assert_error_contains(detail);
}

/* counts for the _v variants: uneven, the last rank (of two or more) gets none */
static void uneven_counts(int size, int64_t *counts, int64_t *offsets, int64_t *total) {
    ck_assert_int_le(size, MAX_RANKS);
    *total = 0;
    for (int r = 0; r < size; r++) {
        counts[r] = r == size - 1 && size > 1 ? 0 : (r == 0 ? 1001 : 3 + 5 * r);
        offsets[r] = *total;
        *total += counts[r];
    }
}

/* ---- the process and the world ---- */

MPI_TEST(test_world) {
    struct comm *w = world();
    ck_assert_ptr_nonnull(w);
    ck_assert_str_eq(comm_name(w), "world");
    ck_assert_int_ge(comm_rank(w), 0);
    ck_assert_int_lt(comm_rank(w), comm_size(w));
    const char *env_size = getenv("OMPI_COMM_WORLD_SIZE"); /* set by Open MPI's mpirun */
    if (env_size) {
        ck_assert(comm_is_distributed());
        ck_assert_int_eq(comm_size(w), atoi(env_size));
    }
    if (!comm_is_distributed()) ck_assert_int_eq(comm_size(w), 1);
    assert_ok(comm_init(NULL, NULL), "comm_init again"); /* idempotent */
    ck_assert_ptr_eq(comm_world(), w);
    ck_assert_int_ge(comm_local_rank(), 0);
    ck_assert_int_lt(comm_local_rank(), comm_size(w));
    MPI_Comm handle;
    ck_assert_int_eq(comm_mpi_handle(w, &handle), comm_is_distributed());
    if (comm_is_distributed()) {
        int size = 0;
        ck_assert_int_eq(MPI_Comm_size(handle, &size), MPI_SUCCESS);
        ck_assert_int_eq(size, comm_size(w));
    }
    comm_free(w); /* the world is never freed */
    ck_assert_ptr_eq(comm_world(), w);
    ck_assert_str_eq(comm_name(w), "world");
}

/* ---- allreduce ---- */

MPI_TEST(test_allreduce_f32) {
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
        for (int o = 0; o < 4; o++) {
            bt_tensor *t = bt_empty(BT_SHAPE(sizes[k]), BT_F32, bt_cpu());
            fill(t, fval, my_rank(), 0);
            assert_ok(comm_allreduce(world(), t, all_ops[o]), "allreduce");
            for (int64_t i = 0; i < sizes[k]; i++)
                assert_value(bt_get(t, i), reduce_serial(all_ops[o], world_size(), fval, i), BT_F32,
                             "allreduce f32", i);
        }
}

MPI_TEST(test_allreduce_int) {
    const comm_op ops[] = {COMM_SUM, COMM_MAX, COMM_MIN};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
        for (int o = 0; o < 3; o++) {
            bt_tensor *t = bt_empty(BT_SHAPE(sizes[k]), BT_I64, bt_cpu());
            fill(t, ival, my_rank(), 0);
            assert_ok(comm_allreduce(world(), t, ops[o]), "allreduce i64");
            bt_tensor *u = bt_empty(BT_SHAPE(sizes[k], 1), BT_I32, bt_cpu());
            fill(u, fval, my_rank(), 0); /* int32 of fval: truncated, still a function of r, i */
            bt_tensor *expected = bt_empty(BT_SHAPE(world_size(), sizes[k]), BT_I32, bt_cpu());
            for (int r = 0; r < world_size(); r++)
                fill(bt_narrow(expected, 0, r, 1), fval, r, 0);
            assert_ok(comm_allreduce(world(), u, ops[o]), "allreduce i32");
            for (int64_t i = 0; i < sizes[k]; i++) {
                assert_value(bt_get(t, i), reduce_serial(ops[o], world_size(), ival, i), BT_I64,
                             "allreduce i64", i);
                double want = bt_get(expected, i);
                for (int r = 1; r < world_size(); r++) {
                    double v = bt_get(expected, r * sizes[k] + i);
                    want = ops[o] == COMM_MAX   ? fmax(want, v)
                           : ops[o] == COMM_MIN ? fmin(want, v)
                                                : want + v;
                }
                assert_value(bt_get(u, i), want, BT_I32, "allreduce i32", i);
            }
        }
}

MPI_TEST(test_allreduce_bool) {
    const int64_t n = 7;
    for (int o = 0; o < 2; o++) {
        comm_op op = o == 0 ? COMM_MAX : COMM_MIN;
        bt_tensor *t = bt_empty(BT_SHAPE(n), BT_BOOL, bt_cpu());
        for (int64_t i = 0; i < n; i++)
            bt_set(t, i, (i + my_rank()) % 3 != 0);
        assert_ok(comm_allreduce(world(), t, op), "allreduce bool");
        for (int64_t i = 0; i < n; i++) {
            bool any = false, all = true;
            for (int r = 0; r < world_size(); r++) {
                any = any || (i + r) % 3 != 0;
                all = all && (i + r) % 3 != 0;
            }
            assert_value(bt_get(t, i), op == COMM_MAX ? any : all, BT_BOOL, "allreduce bool", i);
        }
    }
    bt_tensor *t = bt_zeros(BT_SHAPE(n), BT_BOOL, bt_cpu());
    ck_assert_int_eq(comm_allreduce(world(), t, COMM_SUM), BT_ERR);
    assert_error("allreduce", "bool tensors reduce with COMM_MAX or COMM_MIN only, got COMM_SUM");
}

MPI_TEST(test_allreduce_nonblocking) {
    /* four operations in flight at once, completed by progress, test and wait in mixed order */
    bt_tensor *t[4];
    struct comm_request *r[4];
    for (int k = 0; k < 4; k++) {
        int64_t n = k < 3 ? sizes[k] : 1001;
        t[k] = bt_empty(BT_SHAPE(n), k < 3 ? BT_F32 : BT_I64, bt_cpu());
        fill(t[k], k < 3 ? fval : ival, my_rank(), 0);
        r[k] = started(comm_iallreduce(world(), t[k], all_ops[k]), "iallreduce");
    }
    comm_progress();
    bool done = false;
    for (int polls = 0; polls < 100000 && !done; polls++)
        assert_ok(comm_test(r[2], &done), "comm_test");
    for (int k = 3; k >= 0; k--)
        assert_ok(comm_wait(r[k]), "comm_wait");
    for (int k = 0; k < 4; k++)
        for (int64_t i = 0; i < bt_numel(t[k]); i++)
            assert_value(bt_get(t[k], i),
                         reduce_serial(all_ops[k], world_size(), k < 3 ? fval : ival, i),
                         t[k]->dtype, "iallreduce", i);
}

MPI_TEST(test_allreduce_noncontiguous) {
    /* a transposed view: (7, 13) over a (13, 7) buffer */
    for (int o = 0; o < 4; o++) {
        bt_tensor *base = bt_empty(BT_SHAPE(13, 7), BT_F32, bt_cpu());
        bt_tensor *t = bt_transpose(base, 0, 1);
        ck_assert(!bt_is_contiguous(t));
        fill(t, fval, my_rank(), 0);
        struct comm_request *r = started(comm_iallreduce(world(), t, all_ops[o]), "iallreduce");
        assert_ok(comm_wait(r), "comm_wait");
        for (int64_t i = 0; i < 91; i++)
            assert_value(bt_get(t, i), reduce_serial(all_ops[o], world_size(), fval, i), BT_F32,
                         "allreduce of a transposed view", i);
    }
    /* a narrow view: columns 2..5 of (5, 9); the other columns must stay as they were */
    bt_tensor *base = bt_full(BT_SHAPE(5, 9), 1000.0, BT_F32, bt_cpu());
    bt_tensor *t = bt_narrow(base, 1, 2, 4);
    fill(t, fval, my_rank(), 0);
    assert_ok(comm_allreduce(world(), t, COMM_MAX), "allreduce of a narrow view");
    for (int64_t i = 0; i < 20; i++)
        assert_value(bt_get(t, i), reduce_serial(COMM_MAX, world_size(), fval, i), BT_F32,
                     "allreduce of a narrow view", i);
    for (int64_t i = 0; i < 45; i++)
        if (i % 9 < 2 || i % 9 >= 6) assert_value(bt_get(base, i), 1000.0, BT_F32, "outside", i);
}

/* ---- reduce-scatter ---- */

/* this rank's block of op over the group of everyone's (size * n) elements */
static void check_reduce_scatter_block(const bt_tensor *out, comm_op op, double (*f)(int, int64_t),
                                       const char *what) {
    int64_t n = bt_numel(out);
    for (int64_t j = 0; j < n; j++)
        assert_value(bt_get(out, j), reduce_serial(op, world_size(), f, my_rank() * n + j),
                     out->dtype, what, j);
}

MPI_TEST(test_reduce_scatter) {
    int size = world_size();
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        int64_t n = sizes[k];
        for (int o = 0; o < 4; o++) {
            bt_tensor *in = bt_empty(BT_SHAPE(size * n), BT_F32, bt_cpu());
            bt_tensor *out = bt_empty(BT_SHAPE(n), BT_F32, bt_cpu());
            fill(in, fval, my_rank(), 0);
            assert_ok(comm_reduce_scatter(world(), in, out, all_ops[o]), "reduce_scatter");
            check_reduce_scatter_block(out, all_ops[o], fval, "reduce_scatter f32");
        }
        bt_tensor *in = bt_empty(BT_SHAPE(size, n), BT_I64, bt_cpu());
        bt_tensor *out = bt_empty(BT_SHAPE(n), BT_I64, bt_cpu());
        fill(in, ival, my_rank(), 0);
        struct comm_request *r =
            started(comm_ireduce_scatter(world(), in, out, COMM_MIN), "ireduce_scatter");
        assert_ok(comm_wait(r), "comm_wait");
        check_reduce_scatter_block(out, COMM_MIN, ival, "ireduce_scatter i64");
    }
}

MPI_TEST(test_reduce_scatter_noncontiguous) {
    /* in: (size, 7) as the transpose of a (7, size) buffer; out: column 1 of a (7, 3) buffer */
    int size = world_size();
    bt_tensor *in = bt_transpose(bt_empty(BT_SHAPE(7, size), BT_F32, bt_cpu()), 0, 1);
    bt_tensor *out_base = bt_full(BT_SHAPE(7, 3), -7.0, BT_F32, bt_cpu());
    bt_tensor *out = bt_narrow(out_base, 1, 1, 1);
    ck_assert(!bt_is_contiguous(out));
    fill(in, fval, my_rank(), 0);
    assert_ok(comm_reduce_scatter(world(), in, out, COMM_SUM), "reduce_scatter of views");
    check_reduce_scatter_block(out, COMM_SUM, fval, "reduce_scatter of views");
    for (int64_t i = 0; i < 21; i++)
        if (i % 3 != 1) assert_value(bt_get(out_base, i), -7.0, BT_F32, "outside", i);
}

MPI_TEST(test_reduce_scatter_v) {
    int size = world_size(), rank = my_rank();
    int64_t counts[MAX_RANKS], offsets[MAX_RANKS], total;
    uneven_counts(size, counts, offsets, &total);
    for (int o = 0; o < 4; o++) {
        bt_tensor *in = bt_empty(BT_SHAPE(total), BT_F32, bt_cpu());
        bt_tensor *out = bt_full(BT_SHAPE(counts[rank]), -1.0, BT_F32, bt_cpu());
        fill(in, fval, rank, 0);
        struct comm_request *r = NULL;
        if (o % 2)
            r = started(comm_ireduce_scatter_v(world(), in, out, counts, all_ops[o]),
                        "ireduce_scatter_v");
        bt_status st =
            r ? comm_wait(r) : comm_reduce_scatter_v(world(), in, out, counts, all_ops[o]);
        assert_ok(st, "reduce_scatter_v");
        for (int64_t j = 0; j < counts[rank]; j++)
            assert_value(bt_get(out, j), reduce_serial(all_ops[o], size, fval, offsets[rank] + j),
                         BT_F32, "reduce_scatter_v", j);
    }
    bt_tensor *in = bt_empty(BT_SHAPE(total), BT_I64, bt_cpu());
    bt_tensor *out = bt_empty(BT_SHAPE(counts[rank]), BT_I64, bt_cpu());
    fill(in, ival, rank, 0);
    assert_ok(comm_reduce_scatter_v(world(), in, out, counts, COMM_SUM), "reduce_scatter_v i64");
    for (int64_t j = 0; j < counts[rank]; j++)
        assert_value(bt_get(out, j), reduce_serial(COMM_SUM, size, ival, offsets[rank] + j), BT_I64,
                     "reduce_scatter_v i64", j);
}

/* ---- allgather ---- */

/* out holds every rank's n elements f(r, 0..n) in rank order */
static void check_gathered(const bt_tensor *out, int64_t n, double (*f)(int, int64_t),
                           const char *what) {
    for (int r = 0; r < world_size(); r++)
        for (int64_t j = 0; j < n; j++)
            assert_value(bt_get(out, r * n + j), f(r, j), out->dtype, what, r * n + j);
}

MPI_TEST(test_allgather) {
    int size = world_size();
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        int64_t n = sizes[k];
        bt_tensor *in = bt_empty(BT_SHAPE(n), BT_F32, bt_cpu());
        bt_tensor *out = bt_empty(BT_SHAPE(size, n), BT_F32, bt_cpu());
        fill(in, fval, my_rank(), 0);
        assert_ok(comm_allgather(world(), in, out), "allgather");
        check_gathered(out, n, fval, "allgather f32");

        bt_tensor *in64 = bt_empty(BT_SHAPE(n), BT_I64, bt_cpu());
        bt_tensor *out64 = bt_empty(BT_SHAPE(size * n), BT_I64, bt_cpu());
        fill(in64, ival, my_rank(), 0);
        struct comm_request *r = started(comm_iallgather(world(), in64, out64), "iallgather");
        assert_ok(comm_wait(r), "comm_wait");
        check_gathered(out64, n, ival, "iallgather i64");

        /* in place: in is this rank's block of out */
        bt_tensor *buf = bt_full(BT_SHAPE(size * n), -3.0, BT_F32, bt_cpu());
        bt_tensor *block = bt_narrow(buf, 0, my_rank() * n, n);
        fill(block, fval, my_rank(), 0);
        assert_ok(comm_allgather(world(), block, buf), "allgather in place");
        check_gathered(buf, n, fval, "allgather in place");
    }
}

MPI_TEST(test_allgather_noncontiguous) {
    /* in: (7, 3) as the transpose of (3, 7); out: (size, 21) as the transpose of (21, size) */
    int size = world_size();
    bt_tensor *in = bt_transpose(bt_empty(BT_SHAPE(3, 7), BT_F32, bt_cpu()), 0, 1);
    bt_tensor *out = bt_transpose(bt_empty(BT_SHAPE(21, size), BT_F32, bt_cpu()), 0, 1);
    fill(in, fval, my_rank(), 0);
    struct comm_request *r = started(comm_iallgather(world(), in, out), "iallgather");
    assert_ok(comm_wait(r), "comm_wait");
    check_gathered(out, 21, fval, "allgather of views");
}

MPI_TEST(test_allgather_v) {
    int size = world_size(), rank = my_rank();
    int64_t counts[MAX_RANKS], offsets[MAX_RANKS], total;
    uneven_counts(size, counts, offsets, &total);
    for (int k = 0; k < 2; k++) {
        bt_dtype dtype = k == 0 ? BT_F32 : BT_I64;
        double (*f)(int, int64_t) = k == 0 ? fval : ival;
        bt_tensor *buf = bt_full(BT_SHAPE(total), -5.0, dtype, bt_cpu());
        fill(bt_narrow(buf, 0, offsets[rank], counts[rank]), f, rank, 0);
        bt_status st =
            k == 0 ? comm_allgather_v(world(), buf, counts)
                   : comm_wait(started(comm_iallgather_v(world(), buf, counts), "iallgather_v"));
        assert_ok(st, "allgather_v");
        for (int r = 0; r < size; r++)
            for (int64_t j = 0; j < counts[r]; j++)
                assert_value(bt_get(buf, offsets[r] + j), f(r, j), dtype, "allgather_v",
                             offsets[r] + j);
    }
}

/* ---- broadcast ---- */

MPI_TEST(test_broadcast) {
    int size = world_size();
    for (int root = 0; root < size; root++) {
        bt_tensor *t = bt_full(BT_SHAPE(1001), -1.0, BT_F32, bt_cpu());
        if (my_rank() == root) fill(t, fval, root, 0);
        assert_ok(comm_broadcast(world(), t, root), "broadcast");
        for (int64_t i = 0; i < 1001; i++)
            assert_value(bt_get(t, i), fval(root, i), BT_F32, "broadcast", i);
    }
    /* from the last rank: int64 non-blocking, and a transposed view */
    int root = size - 1;
    bt_tensor *t = bt_full(BT_SHAPE(7), -1.0, BT_I64, bt_cpu());
    bt_tensor *v = bt_transpose(bt_full(BT_SHAPE(3, 5), -1.0, BT_F32, bt_cpu()), 0, 1);
    if (my_rank() == root) {
        fill(t, ival, root, 0);
        fill(v, fval, root, 0);
    }
    struct comm_request *r = started(comm_ibroadcast(world(), t, root), "ibroadcast");
    assert_ok(comm_broadcast(world(), v, root), "broadcast of a view");
    assert_ok(comm_wait(r), "comm_wait");
    for (int64_t i = 0; i < 7; i++)
        assert_value(bt_get(t, i), ival(root, i), BT_I64, "ibroadcast", i);
    for (int64_t i = 0; i < 15; i++)
        assert_value(bt_get(v, i), fval(root, i), BT_F32, "broadcast of a view", i);
}

/* ---- send and recv ---- */

MPI_TEST(test_send_recv_ring) {
    int size = world_size(), rank = my_rank();
    bt_tensor *out = bt_empty(BT_SHAPE(1001), BT_F32, bt_cpu());
    bt_tensor *in = bt_full(BT_SHAPE(1001), -1.0, BT_F32, bt_cpu());
    fill(out, fval, rank, 0);
    if (size == 1) { /* no peer: sending to oneself is refused, naming it */
        ck_assert_ptr_null(comm_isend(world(), out, 0, 7));
        assert_error("send", "peer 0 is this rank; send/recv to self is not supported");
        ck_assert_int_eq(comm_recv(world(), in, 0, 7), BT_ERR);
        assert_error("recv", "peer 0 is this rank");
        ck_assert_int_eq(comm_send(world(), out, 1, 7), BT_ERR);
        assert_error("send", "peer 1 is not a rank of the group (ranks 0..0)");
        return;
    }
    int next = (rank + 1) % size, prev = (rank + size - 1) % size;
    /* non-blocking ring */
    struct comm_request *rr = started(comm_irecv(world(), in, prev, 7), "irecv");
    struct comm_request *rs = started(comm_isend(world(), out, next, 7), "isend");
    assert_ok(comm_wait(rs), "wait send");
    assert_ok(comm_wait(rr), "wait recv");
    for (int64_t i = 0; i < 1001; i++)
        assert_value(bt_get(in, i), fval(prev, i), BT_F32, "ring recv", i);

    /* blocking ring, the other way, into a transposed view: even ranks send first */
    bt_tensor *back = bt_transpose(bt_empty(BT_SHAPE(3, 4), BT_I64, bt_cpu()), 0, 1);
    bt_tensor *mine = bt_empty(BT_SHAPE(4, 3), BT_I64, bt_cpu());
    fill(mine, ival, rank, 0);
    if (rank % 2 == 0) {
        assert_ok(comm_send(world(), mine, prev, 8), "send");
        assert_ok(comm_recv(world(), back, next, 8), "recv");
    } else {
        assert_ok(comm_recv(world(), back, next, 8), "recv");
        assert_ok(comm_send(world(), mine, prev, 8), "send");
    }
    for (int64_t i = 0; i < 12; i++)
        assert_value(bt_get(back, i), ival(next, i), BT_I64, "ring recv into a view", i);

    /* tags pick the message: two sent, received in the other order */
    bt_tensor *a = bt_full(BT_SHAPE(3), 1.0, BT_I32, bt_cpu());
    bt_tensor *b = bt_full(BT_SHAPE(3), 2.0, BT_I32, bt_cpu());
    bt_tensor *got_a = bt_zeros(BT_SHAPE(3), BT_I32, bt_cpu());
    bt_tensor *got_b = bt_zeros(BT_SHAPE(3), BT_I32, bt_cpu());
    struct comm_request *sa = started(comm_isend(world(), a, next, 1), "isend a");
    struct comm_request *sb = started(comm_isend(world(), b, next, 2), "isend b");
    assert_ok(comm_recv(world(), got_b, prev, 2), "recv b");
    assert_ok(comm_recv(world(), got_a, prev, 1), "recv a");
    assert_ok(comm_wait(sa), "wait a");
    assert_ok(comm_wait(sb), "wait b");
    ck_assert_double_eq(bt_get(got_a, 2), 1.0);
    ck_assert_double_eq(bt_get(got_b, 2), 2.0);
}

MPI_TEST(test_recv_size_mismatch) {
    if (world_size() < 2) return; /* needs a peer */
    int rank = my_rank();
    if (rank == 0) {
        assert_ok(comm_send(world(), bt_zeros(BT_SHAPE(5), BT_F32, bt_cpu()), 1, 3), "send 5");
        assert_ok(comm_send(world(), bt_zeros(BT_SHAPE(9), BT_F32, bt_cpu()), 1, 4), "send 9");
    } else if (rank == 1) {
        bt_tensor *t = bt_zeros(BT_SHAPE(7), BT_F32, bt_cpu());
        ck_assert_int_eq(comm_recv(world(), t, 0, 3), BT_ERR);
        assert_error("recv", "expected 7 elements from rank 0, got 5");
        ck_assert_int_eq(comm_recv(world(), t, 0, 4), BT_ERR);
        assert_error("recv", "MPI error: MPI_ERR_TRUNCATE");
    }
    assert_ok(comm_barrier(world()), "barrier");
}

/* ---- barrier, test, progress ---- */

MPI_TEST(test_barrier_and_test) {
    assert_ok(comm_barrier(world()), "barrier");
    struct comm_request *b = started(comm_ibarrier(world()), "ibarrier");
    bt_tensor *t = bt_empty(BT_SHAPE(7), BT_F32, bt_cpu());
    fill(t, fval, my_rank(), 0);
    struct comm_request *r = started(comm_iallreduce(world(), t, COMM_SUM), "iallreduce");
    bool done = false;
    time_t give_up = time(NULL) + 60; /* the watchdog covers comm_wait, not a comm_test loop */
    while (!done && time(NULL) < give_up) {
        assert_ok(comm_test(r, &done), "comm_test");
        comm_progress();
        nanosleep(&(struct timespec){0, 1000}, NULL);
    }
    ck_assert_msg(done, "iallreduce did not complete in 60 s of comm_test");
    assert_ok(comm_test(r, &done), "comm_test after completion");
    ck_assert(done);
    for (int64_t i = 0; i < 7; i++) /* results are in place once comm_test says done */
        assert_value(bt_get(t, i), reduce_serial(COMM_SUM, world_size(), fval, i), BT_F32,
                     "iallreduce after comm_test", i);
    assert_ok(comm_wait(r), "comm_wait after completion");
    assert_ok(comm_wait(b), "wait ibarrier");
    comm_progress(); /* nothing outstanding */
}

/* ---- groups ---- */

MPI_TEST(test_split_even_odd) {
    int size = world_size(), rank = my_rank(), parity = rank % 2;
    /* key = size - rank: the group orders its ranks by descending world rank */
    struct comm *g = comm_split(world(), parity, size - rank, parity ? "odd" : "even");
    ck_assert_msg(g != NULL, "comm_split: %s", bt_last_error());
    ck_assert_str_eq(comm_name(g), parity ? "odd" : "even");
    int members[MAX_RANKS], n_members = 0; /* world ranks of the group, in group order */
    ck_assert_int_le(size, MAX_RANKS);
    for (int r = size - 1; r >= 0; r--)
        if (r % 2 == parity) members[n_members++] = r;
    ck_assert_int_eq(comm_size(g), n_members);
    ck_assert_int_eq(members[comm_rank(g)], rank);

    bt_tensor *t = bt_empty(BT_SHAPE(1001), BT_F32, bt_cpu());
    fill(t, fval, rank, 0);
    assert_ok(comm_allreduce(g, t, COMM_SUM), "allreduce in the group");
    for (int64_t i = 0; i < 1001; i++) {
        double want = 0.0;
        for (int m = 0; m < n_members; m++)
            want += fval(members[m], i);
        assert_value(bt_get(t, i), want, BT_F32, "allreduce in the group", i);
    }
    bt_tensor *who = bt_full(BT_SHAPE(1), rank, BT_I32, bt_cpu());
    bt_tensor *all = bt_empty(BT_SHAPE(n_members), BT_I32, bt_cpu());
    assert_ok(comm_allgather(g, who, all), "allgather in the group");
    for (int m = 0; m < n_members; m++)
        ck_assert_int_eq((int)bt_get(all, m), members[m]);
    bt_tensor *b = bt_full(BT_SHAPE(2), rank, BT_I64, bt_cpu());
    assert_ok(comm_broadcast(g, b, 0), "broadcast in the group");
    ck_assert_int_eq((int)bt_get(b, 1), members[0]);
    double x = rank;
    assert_ok(comm_allreduce_doubles(g, &x, 1, COMM_MAX), "allreduce_doubles in the group");
    ck_assert_double_eq(x, members[0]);
    MPI_Comm handle;
    ck_assert_int_eq(comm_mpi_handle(g, &handle), comm_is_distributed());
    comm_free(g);
    assert_ok(comm_barrier(world()), "barrier after comm_free");
}

/* ---- scalars ---- */

MPI_TEST(test_allreduce_doubles) {
    int size = world_size(), rank = my_rank();
    for (int o = 0; o < 4; o++) {
        double v[3] = {rank + 0.5, -rank, 1e10 + rank};
        assert_ok(comm_allreduce_doubles(world(), v, 3, all_ops[o]), "allreduce_doubles");
        double sum0 = 0, sum1 = 0, sum2 = 0;
        for (int r = 0; r < size; r++) {
            sum0 += r + 0.5;
            sum1 += -r;
            sum2 += 1e10 + r;
        }
        double want[4][3] = {{sum0, sum1, sum2},
                             {sum0 / size, sum1 / size, sum2 / size},
                             {size - 0.5, 0.0, 1e10 + size - 1},
                             {0.5, -(size - 1.0), 1e10}};
        for (int i = 0; i < 3; i++)
            ck_assert_msg(fabs(v[i] - want[o][i]) <= 1e-12 * fabs(want[o][i]),
                          "allreduce_doubles op %d value %d: %.17g, expected %.17g", o, i, v[i],
                          want[o][i]);
    }
    assert_ok(comm_allreduce_doubles(world(), NULL, 0, COMM_SUM), "allreduce_doubles of none");
    double v = 1.0;
    ck_assert_int_eq(comm_allreduce_doubles(world(), &v, -1, COMM_SUM), BT_ERR);
    assert_error("allreduce_doubles", "n = -1 is negative");
    ck_assert_int_eq(comm_allreduce_doubles(world(), NULL, 2, COMM_SUM), BT_ERR);
    assert_error("allreduce_doubles", "vals is NULL");
}

/* ---- bad arguments: every check is local, so every rank fails alike and none waits ---- */

MPI_TEST(test_errors_dtype_and_op) {
    bt_tensor *h = bt_zeros(BT_SHAPE(4), BT_BF16, bt_cpu());
    ck_assert_ptr_null(comm_iallreduce(world(), h, COMM_SUM));
    assert_error("allreduce", "t has dtype bfloat16; comm supports float32, int32, int64, bool");
    ck_assert_int_eq(comm_broadcast(world(), bt_zeros(BT_SHAPE(2), BT_U16, bt_cpu()), 0), BT_ERR);
    assert_error("broadcast", "t has dtype uint16");
    bt_tensor *i = bt_zeros(BT_SHAPE(4), BT_I64, bt_cpu());
    ck_assert_int_eq(comm_allreduce(world(), i, COMM_AVG), BT_ERR);
    assert_error("allreduce", "COMM_AVG needs a float32 tensor, got int64");
    bt_tensor *f = bt_zeros(BT_SHAPE(4), BT_F32, bt_cpu());
    ck_assert_int_eq(comm_allreduce(world(), f, (comm_op)7), BT_ERR);
    assert_error("allreduce", "unknown comm_op 7");
    ck_assert_int_eq(comm_allreduce(world(), NULL, COMM_SUM), BT_ERR);
    assert_error("allreduce", "t is NULL");
    ck_assert_int_eq(comm_allreduce(NULL, f, COMM_SUM), BT_ERR);
    ck_assert_error_contains("allreduce: group is NULL");

    /* tensors no MPI count holds, or on a GPU: a header over a small buffer suffices, since
     * the checks come before any element is touched */
    bt_tensor huge = *f;
    huge.shape[0] = 3000000000LL;
    huge.stride[0] = 0;
    ck_assert_int_eq(comm_allreduce(world(), &huge, COMM_SUM), BT_ERR);
    assert_error("allreduce", "t has 3000000000 elements, more than MPI's count limit 2147483647");
    struct bt_storage gpu_storage = *f->storage;
    gpu_storage.device = bt_cuda(0);
    bt_tensor gpu = *f;
    gpu.storage = &gpu_storage;
    ck_assert_int_eq(comm_allreduce(world(), &gpu, COMM_SUM), BT_ERR);
    assert_error("allreduce", "t is on cuda:0, but this process drives no CUDA device");
}

MPI_TEST(test_errors_shapes) {
    int size = world_size(), rank = my_rank();
    bt_tensor *in7 = bt_zeros(BT_SHAPE(7), BT_F32, bt_cpu());
    bt_tensor *out3 = bt_zeros(BT_SHAPE(3), BT_F32, bt_cpu());
    char detail[128];
    ck_assert_int_eq(comm_reduce_scatter(world(), in7, out3, COMM_SUM), BT_ERR);
    snprintf(detail, sizeof detail, "in has 7 elements, expected %d ranks x 3 (out) = %d", size,
             3 * size);
    assert_error("reduce_scatter", detail);
    bt_tensor *out_i = bt_zeros(BT_SHAPE(7 * size), BT_I64, bt_cpu());
    ck_assert_int_eq(comm_reduce_scatter(world(), bt_zeros(BT_SHAPE(7 * size), BT_F32, bt_cpu()),
                                         bt_zeros(BT_SHAPE(7), BT_I64, bt_cpu()), COMM_SUM),
                     BT_ERR);
    assert_error("reduce_scatter", "in is float32 but out is int64");
    bt_tensor *same = bt_zeros(BT_SHAPE(size), BT_F32, bt_cpu());
    ck_assert_int_eq(comm_reduce_scatter(world(), same, bt_narrow(same, 0, 0, 1), COMM_SUM),
                     BT_ERR);
    assert_error("reduce_scatter", "in and out overlap in memory");
    ck_assert_int_eq(comm_allgather(world(), in7, out_i), BT_ERR);
    assert_error("allgather", "in is float32 but out is int64");
    ck_assert_int_eq(
        comm_allgather(world(), in7, bt_zeros(BT_SHAPE(7 * size + 1), BT_F32, bt_cpu())), BT_ERR);
    assert_error("allgather", "expected");
    ck_assert_int_eq(comm_broadcast(world(), in7, size), BT_ERR);
    snprintf(detail, sizeof detail, "root %d is not a rank of the group (ranks 0..%d)", size,
             size - 1);
    assert_error("broadcast", detail);
    ck_assert_ptr_null(comm_ibroadcast(world(), in7, -1));
    assert_error("broadcast", "root -1 is not a rank");
    if (size > 1) {
        ck_assert_int_eq(comm_send(world(), in7, (rank + 1) % size, -1), BT_ERR);
        assert_error("send", "tag -1 is outside 0..");
    }
    ck_assert_int_eq(comm_recv(world(), in7, -1, 0), BT_ERR);
    assert_error("recv", "peer -1 is not a rank of the group");
}

MPI_TEST(test_errors_counts) {
    int size = world_size(), rank = my_rank();
    int64_t counts[MAX_RANKS], offsets[MAX_RANKS], total;
    uneven_counts(size, counts, offsets, &total);
    bt_tensor *buf = bt_zeros(BT_SHAPE(total + 1), BT_F32, bt_cpu());
    char detail[128];
    ck_assert_int_eq(comm_allgather_v(world(), buf, counts), BT_ERR);
    snprintf(detail, sizeof detail, "counts sum to %lld but buf has %lld elements",
             (long long)total, (long long)total + 1);
    assert_error("allgather_v", detail);
    ck_assert_int_eq(comm_allgather_v(world(), buf, NULL), BT_ERR);
    assert_error("allgather_v", "counts is NULL");
    counts[0] = -2;
    ck_assert_ptr_null(comm_iallgather_v(world(), buf, counts));
    assert_error("allgather_v", "counts[0] = -2 is negative");
    uneven_counts(size, counts, offsets, &total);
    bt_tensor *column = bt_narrow(bt_zeros(BT_SHAPE(total, 2), BT_F32, bt_cpu()), 1, 0, 1);
    ck_assert_int_eq(comm_allgather_v(world(), column, counts), BT_ERR);
    assert_error("allgather_v", "buf must be contiguous");

    bt_tensor *in = bt_zeros(BT_SHAPE(total), BT_F32, bt_cpu());
    bt_tensor *out = bt_zeros(BT_SHAPE(counts[rank] + 1), BT_F32, bt_cpu());
    ck_assert_int_eq(comm_reduce_scatter_v(world(), in, out, counts, COMM_SUM), BT_ERR);
    snprintf(detail, sizeof detail, "out has %lld elements but counts[%d] = %lld",
             (long long)counts[rank] + 1, rank, (long long)counts[rank]);
    assert_error("reduce_scatter_v", detail);
    ck_assert_int_eq(comm_reduce_scatter_v(world(), bt_zeros(BT_SHAPE(total + 2), BT_F32, bt_cpu()),
                                           out, counts, COMM_SUM),
                     BT_ERR);
    assert_error("reduce_scatter_v", "but in has");
}

MPI_TEST(test_errors_requests_and_split) {
    bt_error_clear();
    ck_assert_int_eq(comm_wait(NULL), BT_ERR);
    ck_assert_error_contains("comm_wait: request is NULL");
    bool done = true;
    ck_assert_int_eq(comm_test(NULL, &done), BT_ERR);
    ck_assert(!done);
    bt_error_clear();
    ck_assert_ptr_null(comm_split(world(), -1, 0, "dp"));
    assert_error("comm_split", "color -1 for group dp must be >= 0");
    ck_assert_ptr_null(comm_split(world(), 0, 0, "a-name-far-longer-than-thirty-one-chars"));
    assert_error("comm_split", "must have 1 to 31 characters");
    ck_assert_ptr_null(comm_split(NULL, 0, 0, "dp"));
    ck_assert_error_contains("comm_split: parent group is NULL");
    ck_assert_int_eq(comm_rank(NULL), -1);
    ck_assert_int_eq(comm_size(NULL), 0);
}

/* ---- traffic counters ---- */

static void assert_traffic(const struct comm *c, comm_kind kind, int64_t calls, int64_t bytes) {
    struct comm_traffic t = comm_traffic_of(c, kind);
    ck_assert_msg(t.calls == calls && t.bytes == bytes,
                  "%s on group %s: %lld calls, %lld bytes; expected %lld, %lld (rank %d of %d)",
                  comm_kind_name(kind), comm_name(c), (long long)t.calls, (long long)t.bytes,
                  (long long)calls, (long long)bytes, my_rank(), world_size());
}

MPI_TEST(test_traffic_counters) {
    int size = world_size(), rank = my_rank();
    struct comm *w = world();
    comm_traffic_reset(w); /* the suite's earlier tests used the world too */
    for (int k = 0; k < COMM_KIND_COUNT; k++)
        assert_traffic(w, (comm_kind)k, 0, 0);

    /* allreduce: the tensor's bytes, a view's too; doubles 8 each */
    bt_tensor *t = bt_zeros(BT_SHAPE(7), BT_F32, bt_cpu());
    assert_ok(comm_allreduce(w, t, COMM_SUM), "allreduce");
    bt_tensor *m = bt_zeros(BT_SHAPE(3, 4), BT_I64, bt_cpu());
    assert_ok(comm_allreduce(w, bt_transpose(m, 0, 1), COMM_MAX), "allreduce of a view");
    double d[3] = {0, 0, 0};
    assert_ok(comm_allreduce_doubles(w, d, 3, COMM_SUM), "allreduce_doubles");
    int64_t allreduce_bytes = 7 * 4 + 12 * 8 + 3 * 8;
    assert_traffic(w, COMM_KIND_ALLREDUCE, 3, allreduce_bytes);
    /* non-blocking: counted when it starts */
    struct comm_request *r = started(comm_iallreduce(w, t, COMM_AVG), "iallreduce");
    assert_traffic(w, COMM_KIND_ALLREDUCE, 4, allreduce_bytes + 28);
    assert_ok(comm_wait(r), "wait");
    assert_traffic(w, COMM_KIND_ALLREDUCE, 4, allreduce_bytes + 28);

    /* reduce-scatter: the input (every rank's block); allgather: the gathered output */
    int64_t counts[MAX_RANKS], offsets[MAX_RANKS], total;
    uneven_counts(size, counts, offsets, &total);
    bt_tensor *blocks = bt_zeros(BT_SHAPE(size * 5), BT_F32, bt_cpu());
    bt_tensor *block = bt_zeros(BT_SHAPE(5), BT_F32, bt_cpu());
    assert_ok(comm_reduce_scatter(w, blocks, block, COMM_SUM), "reduce_scatter");
    bt_tensor *all = bt_zeros(BT_SHAPE(total), BT_F32, bt_cpu());
    bt_tensor *mine = bt_zeros(BT_SHAPE(counts[rank]), BT_F32, bt_cpu());
    assert_ok(comm_reduce_scatter_v(w, all, mine, counts, COMM_SUM), "reduce_scatter_v");
    assert_traffic(w, COMM_KIND_REDUCE_SCATTER, 2, size * 5 * 4 + total * 4);
    assert_ok(comm_allgather(w, block, blocks), "allgather");
    assert_ok(comm_allgather_v(w, all, counts), "allgather_v");
    assert_traffic(w, COMM_KIND_ALLGATHER, 2, size * 5 * 4 + total * 4);

    /* broadcast: the tensor's bytes on every rank; barrier: a call */
    assert_ok(comm_broadcast(w, bt_zeros(BT_SHAPE(4), BT_I32, bt_cpu()), 0), "broadcast");
    assert_traffic(w, COMM_KIND_BROADCAST, 1, 16);
    assert_ok(comm_barrier(w), "barrier");
    assert_traffic(w, COMM_KIND_BARRIER, 1, 0);

    /* send/recv around the ring: the bytes sent, the bytes received */
    int64_t p2p = 0;
    if (size > 1) {
        bt_tensor *out = bt_zeros(BT_SHAPE(6), BT_F32, bt_cpu());
        bt_tensor *in = bt_zeros(BT_SHAPE(6), BT_F32, bt_cpu());
        struct comm_request *rr = started(comm_irecv(w, in, (rank + size - 1) % size, 5), "irecv");
        assert_ok(comm_send(w, out, (rank + 1) % size, 5), "send");
        assert_ok(comm_wait(rr), "wait recv");
        p2p = 1;
    }
    assert_traffic(w, COMM_KIND_SEND, p2p, 24 * p2p);
    assert_traffic(w, COMM_KIND_RECV, p2p, 24 * p2p);

    /* refused by its checks: not counted */
    ck_assert_int_eq(comm_allreduce(w, NULL, COMM_SUM), BT_ERR);
    ck_assert_int_eq(comm_allreduce(w, m, COMM_AVG), BT_ERR);
    ck_assert_int_eq(comm_allgather(w, block, block), size > 1 ? BT_ERR : BT_OK);
    assert_traffic(w, COMM_KIND_ALLREDUCE, 4, allreduce_bytes + 28);
    assert_traffic(w, COMM_KIND_ALLGATHER, size > 1 ? 2 : 3,
                   size * 5 * 4 + total * 4 + (size > 1 ? 0 : 20));

    /* the total is the sum over kinds */
    struct comm_traffic sum = {0, 0}, whole = comm_traffic(w);
    for (int k = 0; k < COMM_KIND_COUNT; k++) {
        sum.calls += comm_traffic_of(w, (comm_kind)k).calls;
        sum.bytes += comm_traffic_of(w, (comm_kind)k).bytes;
    }
    ck_assert_int_eq(whole.calls, sum.calls);
    ck_assert_int_eq(whole.bytes, sum.bytes);
    ck_assert_int_eq(whole.calls, 10 + (size > 1 ? 2 : 1));

    /* a split group counts its own operations; the world's counters do not move */
    struct comm *g = comm_split(w, rank % 2, rank, "half");
    ck_assert_ptr_nonnull(g);
    ck_assert_int_eq(comm_traffic(g).calls, 0);
    assert_ok(comm_allreduce(g, t, COMM_SUM), "allreduce in the group");
    assert_traffic(g, COMM_KIND_ALLREDUCE, 1, 28);
    ck_assert_int_eq(comm_traffic(w).calls, whole.calls);
    ck_assert_int_eq(comm_traffic(w).bytes, whole.bytes);
    comm_free(g);

    comm_traffic_reset(w);
    ck_assert_int_eq(comm_traffic(w).calls, 0);
    ck_assert_int_eq(comm_traffic(w).bytes, 0);
    ck_assert_int_eq(comm_traffic(NULL).calls, 0);
    ck_assert_int_eq(comm_traffic_of(w, COMM_KIND_COUNT).bytes, 0);
    ck_assert_str_eq(comm_kind_name(COMM_KIND_REDUCE_SCATTER), "reduce_scatter");
    ck_assert_str_eq(comm_kind_name(COMM_KIND_COUNT), "unknown");
}

static Suite *comm_suite(void) {
    Suite *s = suite_create("comm");
    bt_suite_add(s, test_world);
    bt_suite_add(s, test_allreduce_f32);
    bt_suite_add(s, test_allreduce_int);
    bt_suite_add(s, test_allreduce_bool);
    bt_suite_add(s, test_allreduce_nonblocking);
    bt_suite_add(s, test_allreduce_noncontiguous);
    bt_suite_add(s, test_reduce_scatter);
    bt_suite_add(s, test_reduce_scatter_noncontiguous);
    bt_suite_add(s, test_reduce_scatter_v);
    bt_suite_add(s, test_allgather);
    bt_suite_add(s, test_allgather_noncontiguous);
    bt_suite_add(s, test_allgather_v);
    bt_suite_add(s, test_broadcast);
    bt_suite_add(s, test_send_recv_ring);
    bt_suite_add(s, test_recv_size_mismatch);
    bt_suite_add(s, test_barrier_and_test);
    bt_suite_add(s, test_split_even_odd);
    bt_suite_add(s, test_allreduce_doubles);
    bt_suite_add(s, test_errors_dtype_and_op);
    bt_suite_add(s, test_errors_shapes);
    bt_suite_add(s, test_errors_counts);
    bt_suite_add(s, test_errors_requests_and_split);
    bt_suite_add(s, test_traffic_counters);
    return s;
}

/* BRAID_COMM_TEST_MODE=watchdog, under mpirun -np 2 with a short BRAID_COMM_TIMEOUT: rank 1
 * sleeps through rank 0's allreduce, so rank 0's watchdog must end the job. */
static int watchdog_mode(void) {
    if (comm_rank(comm_world()) == 1) nanosleep(&(struct timespec){30, 0}, NULL);
    bt_tensor *t = bt_ones(BT_SHAPE(4), BT_F32, bt_cpu());
    if (comm_allreduce(comm_world(), t, COMM_SUM) != BT_OK) {
        fprintf(stderr, "braid: error: %s\n", bt_last_error());
        return EXIT_FAILURE;
    }
    comm_finalize();
    return EXIT_SUCCESS; /* the watchdog did not fire: the test script fails on this */
}

int main(int argc, char **argv) {
    if (comm_init(&argc, &argv) != BT_OK) {
        fprintf(stderr, "braid: error: %s\n", bt_last_error());
        return EXIT_FAILURE;
    }
    const char *mode = getenv("BRAID_COMM_TEST_MODE");
    if (mode && strcmp(mode, "watchdog") == 0) return watchdog_mode();
    return mpi_test_run(comm_suite());
}
