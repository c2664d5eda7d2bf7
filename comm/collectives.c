/* The operations of comm.h: argument checks whose messages name the operation and the group,
 * staging of non-contiguous tensors, local copies for a group without MPI (a world of one), and
 * the MPI backend (mpi.c) for the rest. A blocking call starts its operation and waits on it, so
 * the watchdog (request.c) covers it too. */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "comm/comm_internal.h"
#include "core/cuda/cuda.h"

/* ---- argument checks ---- */

static const char *op_name(comm_op op) {
    static const char *const names[] = {"COMM_SUM", "COMM_AVG", "COMM_MAX", "COMM_MIN"};
    return op >= COMM_SUM && op <= COMM_MIN ? names[op] : "an unknown comm_op";
}

static bool dtype_supported(bt_dtype dtype) {
    return dtype == BT_F32 || dtype == BT_I32 || dtype == BT_I64 || dtype == BT_BOOL;
}

/* What every tensor argument must be: present, of a dtype comm moves, with an element count
 * MPI's int holds (no derived datatypes: larger tensors are an error naming the count); on a
 * device (NCCL), contiguous. */
static bt_status check_tensor(const struct comm_request *r, const bt_tensor *t, const char *arg) {
    if (!t) return comm_errorf(r->where, "%s is NULL", arg);
    int in_use = bt_cuda_current_device(); /* -1: none */
    if (t->storage->device.type != BT_DEVICE_CPU && t->storage->device.index != in_use) {
        char device[32], mine[32] = "no CUDA device";
        if (in_use >= 0) snprintf(mine, sizeof mine, "cuda:%d", in_use);
        return comm_errorf(r->where, "%s is on %s, but this process drives %s", arg,
                           bt_device_name(t->storage->device, device, sizeof device), mine);
    }
    if (t->storage->device.type != BT_DEVICE_CPU && !bt_is_contiguous(t)) {
        char device[32];
        return comm_errorf(r->where,
                           "%s is a strided view on %s; device tensors must be "
                           "contiguous",
                           arg, bt_device_name(t->storage->device, device, sizeof device));
    }
    if (!dtype_supported(t->dtype))
        return comm_errorf(r->where, "%s has dtype %s; comm supports float32, int32, int64, bool",
                           arg, bt_dtype_name(t->dtype));
    if (bt_numel(t) > INT_MAX)
        return comm_errorf(r->where, "%s has %lld elements, more than MPI's count limit %d", arg,
                           (long long)bt_numel(t), INT_MAX);
    return BT_OK;
}

/* in and out on the same side: both host (MPI) or both device (NCCL) */
static bt_status check_same_place(const struct comm_request *r, const bt_tensor *in,
                                  const bt_tensor *out) {
    if (comm_is_device_tensor(in) == comm_is_device_tensor(out)) return BT_OK;
    char a[32], b[32];
    return comm_errorf(r->where, "in is on %s but out on %s",
                       bt_device_name(in->storage->device, a, sizeof a),
                       bt_device_name(out->storage->device, b, sizeof b));
}

static bt_status check_reduction(const struct comm_request *r, bt_dtype dtype, comm_op op) {
    if (op < COMM_SUM || op > COMM_MIN) return comm_errorf(r->where, "unknown comm_op %d", (int)op);
    if (op == COMM_AVG && dtype != BT_F32)
        return comm_errorf(r->where, "COMM_AVG needs a float32 tensor, got %s",
                           bt_dtype_name(dtype));
    if (dtype == BT_BOOL && op != COMM_MAX && op != COMM_MIN)
        return comm_errorf(r->where, "bool tensors reduce with COMM_MAX or COMM_MIN only, got %s",
                           op_name(op));
    return BT_OK;
}

static bt_status check_same_dtype(const struct comm_request *r, const bt_tensor *in,
                                  const bt_tensor *out) {
    if (in->dtype == out->dtype) return BT_OK;
    return comm_errorf(r->where, "in is %s but out is %s", bt_dtype_name(in->dtype),
                       bt_dtype_name(out->dtype));
}

static bt_status check_contiguous(const struct comm_request *r, const bt_tensor *t,
                                  const char *arg) {
    if (bt_is_contiguous(t)) return BT_OK;
    return comm_errorf(r->where, "%s must be contiguous (the _v variants take no views)", arg);
}

/* The byte range [lo, hi) of its storage that t's elements span. */
static void byte_span(const bt_tensor *t, int64_t *lo, int64_t *hi) {
    int64_t first = t->offset, last = t->offset;
    for (int d = 0; d < t->ndim; d++) {
        int64_t reach = (t->shape[d] - 1) * t->stride[d];
        if (reach < 0)
            first += reach;
        else
            last += reach;
    }
    int64_t esize = (int64_t)bt_dtype_size(t->dtype);
    *lo = first * esize;
    *hi = (last + 1) * esize;
}

/* MPI forbids a send buffer that overlaps the receive buffer (short of MPI_IN_PLACE). */
static bool tensors_overlap(const bt_tensor *a, const bt_tensor *b) {
    if (a->storage != b->storage || bt_numel(a) == 0 || bt_numel(b) == 0) return false;
    int64_t a_lo, a_hi, b_lo, b_hi;
    byte_span(a, &a_lo, &a_hi);
    byte_span(b, &b_lo, &b_hi);
    return a_lo < b_hi && b_lo < a_hi;
}

static bt_status check_no_overlap(const struct comm_request *r, const bt_tensor *in,
                                  const bt_tensor *out) {
    if (!tensors_overlap(in, out)) return BT_OK;
    return comm_errorf(r->where, "in and out overlap in memory; %s needs separate buffers", r->op);
}

/* counts[0..size): non-negative, summing to `total` (the elements of the tensor named `arg`). */
static bt_status check_counts(const struct comm_request *r, const struct comm *c,
                              const int64_t *counts, int64_t total, const char *arg) {
    if (!counts) return comm_errorf(r->where, "counts is NULL");
    int64_t sum = 0;
    for (int i = 0; i < c->size; i++) {
        if (counts[i] < 0)
            return comm_errorf(r->where, "counts[%d] = %lld is negative", i, (long long)counts[i]);
        sum += counts[i];
        if (sum > INT_MAX)
            return comm_errorf(r->where, "counts sum to more than MPI's count limit %d", INT_MAX);
    }
    if (sum != total)
        return comm_errorf(r->where, "counts sum to %lld but %s has %lld elements", (long long)sum,
                           arg, (long long)total);
    return BT_OK;
}

static bt_status check_root(const struct comm_request *r, const struct comm *c, int root) {
    if (root >= 0 && root < c->size) return BT_OK;
    return comm_errorf(r->where, "root %d is not a rank of the group (ranks 0..%d)", root,
                       c->size - 1);
}

static bt_status check_peer(const struct comm_request *r, const struct comm *c, int peer, int tag) {
    if (peer < 0 || peer >= c->size)
        return comm_errorf(r->where, "peer %d is not a rank of the group (ranks 0..%d)", peer,
                           c->size - 1);
    /* refused at every size so that a world of one (no MPI) behaves like the others */
    if (peer == c->rank)
        return comm_errorf(r->where, "peer %d is this rank; send/recv to self is not supported",
                           peer);
    if (tag < 0 || tag > comm_rt()->tag_ub)
        return comm_errorf(r->where, "tag %d is outside 0..%d", tag, comm_rt()->tag_ub);
    return BT_OK;
}

/* A request that failed to start: freed, its message kept. */
static struct comm_request *discard(struct comm_request *r) {
    comm_request_free(r);
    return NULL;
}

/* A group without MPI moves data by copying it (memcpy wants no NULL even for 0 bytes). */
static void copy_elements(void *dst, const void *src, int64_t n, bt_dtype dtype) {
    if (n > 0) memcpy(dst, src, (size_t)n * bt_dtype_size(dtype));
}

/* The bytes of t's elements. */
static int64_t tensor_bytes(const bt_tensor *t) {
    return bt_numel(t) * (int64_t)bt_dtype_size(t->dtype);
}

/* r has started on c: counted in c's traffic (comm.h), then handed to the caller. */
static struct comm_request *count_started(struct comm *c, struct comm_request *r, comm_kind kind,
                                          int64_t bytes) {
    c->traffic[kind].calls++;
    c->traffic[kind].bytes += bytes;
    return comm_request_started(r);
}

/* ---- non-blocking operations ---- */

struct comm_request *comm_iallreduce(struct comm *c, bt_tensor *t, comm_op op) {
    struct comm_request *r = comm_request_new(c, "allreduce");
    if (!r) return NULL;
    if (check_tensor(r, t, "t") != BT_OK || check_reduction(r, t->dtype, op) != BT_OK)
        return discard(r);
    int64_t n = bt_numel(t);
    if (comm_is_device_tensor(t)) {
        if (comm_nccl_allreduce(r, c, bt_data(t), n, t->dtype, op) != BT_OK) return discard(r);
        return count_started(c, r, COMM_KIND_ALLREDUCE, tensor_bytes(t));
    }
    void *buf = comm_request_stage(r, t, true, true);
    if (!buf) return discard(r);
    if (!c->local && comm_mpi_iallreduce(r, c, buf, n, t->dtype, op) != BT_OK) return discard(r);
    if (op == COMM_AVG && c->size > 1) comm_request_average_f32(r, buf, n, c->size);
    return count_started(c, r, COMM_KIND_ALLREDUCE, tensor_bytes(t));
}

struct comm_request *comm_ireduce_scatter(struct comm *c, const bt_tensor *in, bt_tensor *out,
                                          comm_op op) {
    struct comm_request *r = comm_request_new(c, "reduce_scatter");
    if (!r) return NULL;
    if (check_tensor(r, in, "in") != BT_OK || check_tensor(r, out, "out") != BT_OK ||
        check_same_dtype(r, in, out) != BT_OK || check_reduction(r, in->dtype, op) != BT_OK ||
        check_same_place(r, in, out) != BT_OK || check_no_overlap(r, in, out) != BT_OK)
        return discard(r);
    int64_t n = bt_numel(out);
    if (bt_numel(in) != c->size * n) {
        comm_errorf(r->where, "in has %lld elements, expected %d ranks x %lld (out) = %lld",
                    (long long)bt_numel(in), c->size, (long long)n, (long long)(c->size * n));
        return discard(r);
    }
    if (comm_is_device_tensor(in)) {
        if (comm_nccl_reduce_scatter(r, c, bt_data(in), bt_data(out), n, out->dtype, op) != BT_OK)
            return discard(r);
        return count_started(c, r, COMM_KIND_REDUCE_SCATTER, tensor_bytes(in));
    }
    void *send = comm_request_stage(r, in, true, false);
    void *recv = send ? comm_request_stage(r, out, false, true) : NULL;
    if (!recv) return discard(r);
    if (c->local)
        copy_elements(recv, send, n, out->dtype);
    else if (comm_mpi_ireduce_scatter(r, c, send, recv, n, out->dtype, op) != BT_OK)
        return discard(r);
    if (op == COMM_AVG && c->size > 1) comm_request_average_f32(r, recv, n, c->size);
    return count_started(c, r, COMM_KIND_REDUCE_SCATTER, tensor_bytes(in));
}

struct comm_request *comm_ireduce_scatter_v(struct comm *c, const bt_tensor *in, bt_tensor *out,
                                            const int64_t *counts, comm_op op) {
    struct comm_request *r = comm_request_new(c, "reduce_scatter_v");
    if (!r) return NULL;
    if (check_tensor(r, in, "in") != BT_OK || check_tensor(r, out, "out") != BT_OK ||
        check_same_dtype(r, in, out) != BT_OK || check_reduction(r, in->dtype, op) != BT_OK ||
        check_contiguous(r, in, "in") != BT_OK || check_contiguous(r, out, "out") != BT_OK ||
        check_same_place(r, in, out) != BT_OK || check_no_overlap(r, in, out) != BT_OK ||
        check_counts(r, c, counts, bt_numel(in), "in") != BT_OK)
        return discard(r);
    int64_t n = counts[c->rank];
    if (bt_numel(out) != n) {
        comm_errorf(r->where, "out has %lld elements but counts[%d] = %lld",
                    (long long)bt_numel(out), c->rank, (long long)n);
        return discard(r);
    }
    if (comm_is_device_tensor(in)) {
        if (comm_nccl_reduce_scatter_v(r, c, bt_data(in), bt_data(out), counts, out->dtype, op) !=
            BT_OK)
            return discard(r);
        return count_started(c, r, COMM_KIND_REDUCE_SCATTER, tensor_bytes(in));
    }
    if (c->local)
        copy_elements(bt_data(out), bt_data(in), n, out->dtype);
    else if (comm_mpi_ireduce_scatter_v(r, c, bt_data(in), bt_data(out), counts, out->dtype, op) !=
             BT_OK)
        return discard(r);
    if (op == COMM_AVG && c->size > 1) comm_request_average_f32(r, bt_data(out), n, c->size);
    return count_started(c, r, COMM_KIND_REDUCE_SCATTER, tensor_bytes(in));
}

/* in is exactly this rank's block of out: MPI_IN_PLACE (MPI forbids aliasing otherwise). */
static bool allgather_in_place(const struct comm *c, const bt_tensor *in, const bt_tensor *out) {
    size_t block = (size_t)bt_numel(in) * bt_dtype_size(in->dtype);
    return in->storage == out->storage && bt_is_contiguous(in) && bt_is_contiguous(out) &&
           (char *)bt_data(in) == (char *)bt_data(out) + (size_t)c->rank * block;
}

struct comm_request *comm_iallgather(struct comm *c, const bt_tensor *in, bt_tensor *out) {
    struct comm_request *r = comm_request_new(c, "allgather");
    if (!r) return NULL;
    if (check_tensor(r, in, "in") != BT_OK || check_tensor(r, out, "out") != BT_OK ||
        check_same_dtype(r, in, out) != BT_OK || check_same_place(r, in, out) != BT_OK)
        return discard(r);
    int64_t n = bt_numel(in);
    if (bt_numel(out) != c->size * n) {
        comm_errorf(r->where, "out has %lld elements, expected %d ranks x %lld (in) = %lld",
                    (long long)bt_numel(out), c->size, (long long)n, (long long)(c->size * n));
        return discard(r);
    }
    bool in_place = allgather_in_place(c, in, out);
    if (!in_place && check_no_overlap(r, in, out) != BT_OK) return discard(r);
    if (comm_is_device_tensor(in)) {
        if (comm_nccl_allgather(r, c, in_place ? NULL : bt_data(in), bt_data(out), n, in->dtype) !=
            BT_OK)
            return discard(r);
        return count_started(c, r, COMM_KIND_ALLGATHER, tensor_bytes(out));
    }
    void *send = in_place ? NULL : comm_request_stage(r, in, true, false);
    if (!in_place && !send) return discard(r);
    void *recv = comm_request_stage(r, out, false, true);
    if (!recv) return discard(r);
    if (c->local) {
        if (!in_place) copy_elements(recv, send, n, in->dtype);
    } else if (comm_mpi_iallgather(r, c, send, recv, n, in->dtype) != BT_OK) {
        return discard(r);
    }
    return count_started(c, r, COMM_KIND_ALLGATHER, tensor_bytes(out));
}

struct comm_request *comm_iallgather_v(struct comm *c, bt_tensor *buf, const int64_t *counts) {
    struct comm_request *r = comm_request_new(c, "allgather_v");
    if (!r) return NULL;
    if (check_tensor(r, buf, "buf") != BT_OK || check_contiguous(r, buf, "buf") != BT_OK ||
        check_counts(r, c, counts, bt_numel(buf), "buf") != BT_OK)
        return discard(r);
    if (comm_is_device_tensor(buf)) {
        if (comm_nccl_allgather_v(r, c, bt_data(buf), counts, buf->dtype) != BT_OK)
            return discard(r);
        return count_started(c, r, COMM_KIND_ALLGATHER, tensor_bytes(buf));
    }
    /* local: this rank's block is the whole buffer, already in place */
    if (!c->local && comm_mpi_iallgather_v(r, c, bt_data(buf), counts, buf->dtype) != BT_OK)
        return discard(r);
    return count_started(c, r, COMM_KIND_ALLGATHER, tensor_bytes(buf));
}

struct comm_request *comm_ibroadcast(struct comm *c, bt_tensor *t, int root) {
    struct comm_request *r = comm_request_new(c, "broadcast");
    if (!r) return NULL;
    if (check_tensor(r, t, "t") != BT_OK || check_root(r, c, root) != BT_OK) return discard(r);
    if (comm_is_device_tensor(t)) {
        if (comm_nccl_broadcast(r, c, bt_data(t), bt_numel(t), t->dtype, root) != BT_OK)
            return discard(r);
        return count_started(c, r, COMM_KIND_BROADCAST, tensor_bytes(t));
    }
    bool is_root = c->rank == root;
    void *buf = comm_request_stage(r, t, is_root, !is_root);
    if (!buf) return discard(r);
    if (!c->local && comm_mpi_ibroadcast(r, c, buf, bt_numel(t), t->dtype, root) != BT_OK)
        return discard(r);
    return count_started(c, r, COMM_KIND_BROADCAST, tensor_bytes(t));
}

/* A group without MPI has one rank, so check_peer refuses every send and recv there. */
struct comm_request *comm_isend(struct comm *c, const bt_tensor *t, int peer, int tag) {
    struct comm_request *r = comm_request_new(c, "send");
    if (!r) return NULL;
    if (check_tensor(r, t, "t") != BT_OK || check_peer(r, c, peer, tag) != BT_OK) return discard(r);
    if (comm_is_device_tensor(t)) { /* NCCL: no tags, pairs' messages in order */
        if (comm_nccl_send(r, c, bt_data(t), bt_numel(t), t->dtype, peer) != BT_OK)
            return discard(r);
        return count_started(c, r, COMM_KIND_SEND, tensor_bytes(t));
    }
    void *buf = comm_request_stage(r, t, true, false);
    if (!buf || comm_mpi_isend(r, c, buf, bt_numel(t), t->dtype, peer, tag) != BT_OK)
        return discard(r);
    return count_started(c, r, COMM_KIND_SEND, tensor_bytes(t));
}

struct comm_request *comm_irecv(struct comm *c, bt_tensor *t, int peer, int tag) {
    struct comm_request *r = comm_request_new(c, "recv");
    if (!r) return NULL;
    if (check_tensor(r, t, "t") != BT_OK || check_peer(r, c, peer, tag) != BT_OK) return discard(r);
    if (comm_is_device_tensor(t)) {
        if (comm_nccl_recv(r, c, bt_data(t), bt_numel(t), t->dtype, peer) != BT_OK)
            return discard(r);
        return count_started(c, r, COMM_KIND_RECV, tensor_bytes(t));
    }
    void *buf = comm_request_stage(r, t, false, true);
    if (!buf || comm_mpi_irecv(r, c, buf, bt_numel(t), t->dtype, peer, tag) != BT_OK)
        return discard(r);
    r->recv_expected = bt_numel(t);
    r->recv_dtype = t->dtype;
    r->peer = peer;
    return count_started(c, r, COMM_KIND_RECV, tensor_bytes(t));
}

struct comm_request *comm_ibarrier(struct comm *c) {
    struct comm_request *r = comm_request_new(c, "barrier");
    if (!r) return NULL;
    if (!c->local && comm_mpi_ibarrier(r, c) != BT_OK) return discard(r);
    return count_started(c, r, COMM_KIND_BARRIER, 0);
}

/* ---- blocking operations: start, then wait (a NULL request carries its error to comm_wait) ----
 */

bt_status comm_allreduce(struct comm *c, bt_tensor *t, comm_op op) {
    return comm_wait(comm_iallreduce(c, t, op));
}

bt_status comm_reduce_scatter(struct comm *c, const bt_tensor *in, bt_tensor *out, comm_op op) {
    return comm_wait(comm_ireduce_scatter(c, in, out, op));
}

bt_status comm_reduce_scatter_v(struct comm *c, const bt_tensor *in, bt_tensor *out,
                                const int64_t *counts, comm_op op) {
    return comm_wait(comm_ireduce_scatter_v(c, in, out, counts, op));
}

bt_status comm_allgather(struct comm *c, const bt_tensor *in, bt_tensor *out) {
    return comm_wait(comm_iallgather(c, in, out));
}

bt_status comm_allgather_v(struct comm *c, bt_tensor *buf, const int64_t *counts) {
    return comm_wait(comm_iallgather_v(c, buf, counts));
}

bt_status comm_broadcast(struct comm *c, bt_tensor *t, int root) {
    return comm_wait(comm_ibroadcast(c, t, root));
}

bt_status comm_send(struct comm *c, const bt_tensor *t, int peer, int tag) {
    return comm_wait(comm_isend(c, t, peer, tag));
}

bt_status comm_recv(struct comm *c, bt_tensor *t, int peer, int tag) {
    return comm_wait(comm_irecv(c, t, peer, tag));
}

bt_status comm_barrier(struct comm *c) {
    return comm_wait(comm_ibarrier(c));
}

bt_status comm_allreduce_doubles(struct comm *c, double *vals, int n, comm_op op) {
    struct comm_request *r = comm_request_new(c, "allreduce_doubles");
    if (!r) return BT_ERR;
    bt_status st = BT_OK;
    if (n < 0)
        st = comm_errorf(r->where, "n = %d is negative", n);
    else if (n > 0 && !vals)
        st = comm_errorf(r->where, "vals is NULL");
    else if (op < COMM_SUM || op > COMM_MIN)
        st = comm_errorf(r->where, "unknown comm_op %d", (int)op);
    else if (!c->local)
        st = comm_mpi_iallreduce_doubles(r, c, vals, n, op);
    if (st != BT_OK) {
        comm_request_free(r);
        return BT_ERR;
    }
    if (op == COMM_AVG && c->size > 1) comm_request_average_f64(r, vals, n, c->size);
    return comm_wait(count_started(c, r, COMM_KIND_ALLREDUCE, 8 * (int64_t)n));
}
