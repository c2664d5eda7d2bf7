/* The MPI backend: starts each operation on contiguous host buffers with MPI's non-blocking
 * calls (the front end in collectives.c has checked the arguments and staged the tensors), and
 * hands out a group's MPI communicator (comm/mpi.h). */
#include "comm/mpi.h"

#include <stdlib.h>

#include "comm/comm_internal.h"

bool comm_mpi_handle(const struct comm *c, MPI_Comm *out) {
    if (!c || c->local) return false;
    *out = c->mpi;
    return true;
}

MPI_Datatype comm_mpi_dtype(bt_dtype dtype) {
    switch (dtype) {
    case BT_F32:
        return MPI_FLOAT;
    case BT_I32:
        return MPI_INT32_T;
    case BT_I64:
        return MPI_INT64_T;
    case BT_BOOL:
        /* one byte holding 0 or 1: MPI_MAX is "any", MPI_MIN "all" (MPI_C_BOOL has no MAX/MIN) */
        return MPI_UINT8_T;
    default:
        return MPI_DATATYPE_NULL; /* the front end refuses other dtypes */
    }
}

/* COMM_AVG travels as a sum; the request divides on completion. */
static MPI_Op mpi_op(comm_op op) {
    switch (op) {
    case COMM_MAX:
        return MPI_MAX;
    case COMM_MIN:
        return MPI_MIN;
    default:
        return MPI_SUM;
    }
}

bt_status comm_mpi_iallreduce(struct comm_request *r, const struct comm *c, void *buf, int64_t n,
                              bt_dtype dtype, comm_op op) {
    COMM_MPI_CHECK(r->where, MPI_Iallreduce(MPI_IN_PLACE, buf, (int)n, comm_mpi_dtype(dtype),
                                            mpi_op(op), c->mpi, &r->mpi));
    return BT_OK;
}

bt_status comm_mpi_iallreduce_doubles(struct comm_request *r, const struct comm *c, double *vals,
                                      int n, comm_op op) {
    COMM_MPI_CHECK(r->where,
                   MPI_Iallreduce(MPI_IN_PLACE, vals, n, MPI_DOUBLE, mpi_op(op), c->mpi, &r->mpi));
    return BT_OK;
}

bt_status comm_mpi_ireduce_scatter(struct comm_request *r, const struct comm *c, const void *in,
                                   void *out, int64_t n, bt_dtype dtype, comm_op op) {
    COMM_MPI_CHECK(r->where, MPI_Ireduce_scatter_block(in, out, (int)n, comm_mpi_dtype(dtype),
                                                       mpi_op(op), c->mpi, &r->mpi));
    return BT_OK;
}

/* counts as MPI's ints in r->mpi_counts (MPI reads them until the operation completes):
 * counts[0..size) then, when `displacements`, their running sums */
static bt_status mpi_counts(struct comm_request *r, const struct comm *c, const int64_t *counts,
                            bool displacements) {
    r->mpi_counts = malloc((size_t)(2 * c->size) * sizeof(int));
    if (!r->mpi_counts) return comm_errorf(r->where, "out of memory");
    int offset = 0;
    for (int i = 0; i < c->size; i++) {
        r->mpi_counts[i] = (int)counts[i];
        if (displacements) r->mpi_counts[c->size + i] = offset;
        offset += (int)counts[i]; /* the front end checked that the sum fits an int */
    }
    return BT_OK;
}

bt_status comm_mpi_ireduce_scatter_v(struct comm_request *r, const struct comm *c, const void *in,
                                     void *out, const int64_t *counts, bt_dtype dtype, comm_op op) {
    if (mpi_counts(r, c, counts, false) != BT_OK) return BT_ERR;
    COMM_MPI_CHECK(r->where, MPI_Ireduce_scatter(in, out, r->mpi_counts, comm_mpi_dtype(dtype),
                                                 mpi_op(op), c->mpi, &r->mpi));
    return BT_OK;
}

bt_status comm_mpi_iallgather(struct comm_request *r, const struct comm *c, const void *in,
                              void *out, int64_t n, bt_dtype dtype) {
    MPI_Datatype type = comm_mpi_dtype(dtype);
    COMM_MPI_CHECK(r->where, MPI_Iallgather(in ? in : MPI_IN_PLACE, (int)n, type, out, (int)n, type,
                                            c->mpi, &r->mpi));
    return BT_OK;
}

bt_status comm_mpi_iallgather_v(struct comm_request *r, const struct comm *c, void *buf,
                                const int64_t *counts, bt_dtype dtype) {
    if (mpi_counts(r, c, counts, true) != BT_OK) return BT_ERR;
    COMM_MPI_CHECK(r->where, MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, r->mpi_counts,
                                             r->mpi_counts + c->size, comm_mpi_dtype(dtype), c->mpi,
                                             &r->mpi));
    return BT_OK;
}

bt_status comm_mpi_ibroadcast(struct comm_request *r, const struct comm *c, void *buf, int64_t n,
                              bt_dtype dtype, int root) {
    COMM_MPI_CHECK(r->where, MPI_Ibcast(buf, (int)n, comm_mpi_dtype(dtype), root, c->mpi, &r->mpi));
    return BT_OK;
}

bt_status comm_mpi_isend(struct comm_request *r, const struct comm *c, const void *buf, int64_t n,
                         bt_dtype dtype, int peer, int tag) {
    COMM_MPI_CHECK(r->where,
                   MPI_Isend(buf, (int)n, comm_mpi_dtype(dtype), peer, tag, c->mpi, &r->mpi));
    return BT_OK;
}

bt_status comm_mpi_irecv(struct comm_request *r, const struct comm *c, void *buf, int64_t n,
                         bt_dtype dtype, int peer, int tag) {
    COMM_MPI_CHECK(r->where,
                   MPI_Irecv(buf, (int)n, comm_mpi_dtype(dtype), peer, tag, c->mpi, &r->mpi));
    return BT_OK;
}

bt_status comm_mpi_ibarrier(struct comm_request *r, const struct comm *c) {
    COMM_MPI_CHECK(r->where, MPI_Ibarrier(c->mpi, &r->mpi));
    return BT_OK;
}
