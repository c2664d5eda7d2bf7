/* The NCCL backend: collectives and point-to-point on device tensors. Each group gets its NCCL
 * communicator either from its parent's by ncclCommSplit (comm_split of a group that has one) or,
 * on its first device operation, from a unique id that its rank 0 makes and MPI broadcasts (a
 * group without MPI, a world of one, makes a communicator of one rank). Operations run on one
 * NCCL stream of the process, after the work already queued on the compute stream (an event
 * orders them), so the backward keeps computing while buckets reduce. A request completes when
 * the event recorded after its operation has passed; comm_wait polls it under the watchdog. */
#include <cuda_runtime_api.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>

#include "comm/comm_internal.h"
#include "core/cuda/cuda.h"

static cudaStream_t nccl_stream;

/* One macro per library, naming the call: NCCL's and the CUDA runtime's */
static bt_status nccl_failed(const char *where, ncclResult_t rc, const char *call, int line) {
    return comm_errorf(where, "NCCL: %s failed: %s (nccl.c:%d)", call, ncclGetErrorString(rc),
                       line);
}
static bt_status cuda_failed(const char *where, cudaError_t rc, const char *call, int line) {
    return comm_errorf(where, "CUDA: %s failed: %s (nccl.c:%d)", call, cudaGetErrorString(rc),
                       line);
}
#define NCCL_CHECK(where, call)                                                                    \
    do {                                                                                           \
        ncclResult_t rc_ = (call);                                                                 \
        if (rc_ != ncclSuccess) return nccl_failed((where), rc_, #call, __LINE__);                 \
    } while (0)
#define CUDA_CHECK(where, call)                                                                    \
    do {                                                                                           \
        cudaError_t rc_ = (call);                                                                  \
        if (rc_ != cudaSuccess) return cuda_failed((where), rc_, #call, __LINE__);                 \
    } while (0)

/* BRAID_FAKE_CUDA's "device" tensors are host memory: they travel over MPI, so that multi-rank
 * jobs on the fake device check everything above the transport (which tensors go where, over
 * which group, in which order) on machines without a GPU */
bool comm_is_device_tensor(const bt_tensor *t) {
    return t && t->storage->device.type == BT_DEVICE_CUDA && !bt_fake_cuda();
}

static ncclDataType_t nccl_dtype(bt_dtype dtype) {
    switch (dtype) {
    case BT_F32:
        return ncclFloat32;
    case BT_I32:
        return ncclInt32;
    case BT_I64:
        return ncclInt64;
    default: /* BT_BOOL: one byte of 0 or 1, MAX = any, MIN = all (the MPI path's convention) */
        return ncclUint8;
    }
}

static ncclRedOp_t nccl_op(comm_op op) {
    switch (op) {
    case COMM_AVG:
        return ncclAvg;
    case COMM_MAX:
        return ncclMax;
    case COMM_MIN:
        return ncclMin;
    default:
        return ncclSum;
    }
}

/* c's communicator, made now if it has none (collective over c: every rank of c is in the same
 * operation). A rank that fails here before the broadcast leaves the others waiting in it:
 * braid train ends the job then (comm_abort); library callers should do the same. */
static bt_status ready(struct comm *c, const char *where) {
    if (bt_fake_cuda())
        return comm_errorf(where, "BRAID_FAKE_CUDA's device has no NCCL (its tensors go over "
                                  "MPI)");
    if (bt_cuda_current_device() < 0)
        return comm_errorf(where, "no CUDA device is in use in this process");
    if (!nccl_stream)
        CUDA_CHECK(where, cudaStreamCreateWithFlags(&nccl_stream, cudaStreamNonBlocking));
    if (c->nccl) return BT_OK;
    ncclUniqueId id;
    if (c->rank == 0) NCCL_CHECK(where, ncclGetUniqueId(&id));
    if (!c->local) COMM_MPI_CHECK(where, MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, c->mpi));
    ncclComm_t nc;
    NCCL_CHECK(where, ncclCommInitRank(&nc, c->size, id, c->rank));
    c->nccl = nc;
    return BT_OK;
}

bt_status comm_use_device(struct comm *c) {
    char where[COMM_WHERE_MAX];
    comm_where(c, "comm_use_device", where, sizeof where);
    if (!c) return comm_errorf(where, "group is NULL");
    if (bt_fake_cuda()) return BT_OK; /* its tensors go over MPI (comm_is_device_tensor) */
    return ready(c, where);
}

bt_status comm_nccl_split(struct comm *parent, struct comm *child, int color, int key,
                          const char *where) {
    if (!parent->nccl) return BT_OK; /* the child makes its own on first use */
    ncclComm_t nc = NULL;
    NCCL_CHECK(where, ncclCommSplit((ncclComm_t)parent->nccl, color, key, &nc, NULL));
    child->nccl = nc;
    return BT_OK;
}

/* A communicator that saw an asynchronous error is aborted (destroying it may wait forever on
 * its stuck kernels) */
void comm_nccl_free(struct comm *c) {
    if (!c || !c->nccl) return;
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError((ncclComm_t)c->nccl, &async);
    if (async == ncclSuccess)
        ncclCommDestroy((ncclComm_t)c->nccl);
    else
        ncclCommAbort((ncclComm_t)c->nccl);
    c->nccl = NULL;
}

/* Before an operation: the NCCL stream waits for what the compute stream has queued (the
 * gradients being reduced). After it: the request's event, which completion polls. */
static bt_status begin(struct comm_request *r) {
    cudaEvent_t ready_ev;
    CUDA_CHECK(r->where, cudaEventCreateWithFlags(&ready_ev, cudaEventDisableTiming));
    cudaError_t rc = cudaEventRecord(ready_ev, (cudaStream_t)bt_cuda_stream_handle());
    if (rc == cudaSuccess) rc = cudaStreamWaitEvent(nccl_stream, ready_ev, 0);
    cudaEventDestroy(ready_ev); /* released once it has passed */
    if (rc != cudaSuccess) return cuda_failed(r->where, rc, "cudaStreamWaitEvent", __LINE__);
    return BT_OK;
}

static bt_status end(struct comm_request *r, struct comm *c) {
    cudaEvent_t done;
    CUDA_CHECK(r->where, cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    r->nccl_done = done;
    r->nccl_comm = c->nccl;
    CUDA_CHECK(r->where, cudaEventRecord(done, nccl_stream));
    return BT_OK;
}

#define START(r, c)                                                                                \
    do {                                                                                           \
        if (ready((c), (r)->where) != BT_OK || begin(r) != BT_OK) return BT_ERR;                   \
    } while (0)

bt_status comm_nccl_allreduce(struct comm_request *r, struct comm *c, void *buf, int64_t n,
                              bt_dtype dtype, comm_op op) {
    START(r, c);
    NCCL_CHECK(r->where, ncclAllReduce(buf, buf, (size_t)n, nccl_dtype(dtype), nccl_op(op),
                                       (ncclComm_t)c->nccl, nccl_stream));
    return end(r, c);
}

bt_status comm_nccl_reduce_scatter(struct comm_request *r, struct comm *c, const void *in,
                                   void *out, int64_t n, bt_dtype dtype, comm_op op) {
    START(r, c);
    NCCL_CHECK(r->where, ncclReduceScatter(in, out, (size_t)n, nccl_dtype(dtype), nccl_op(op),
                                           (ncclComm_t)c->nccl, nccl_stream));
    return end(r, c);
}

/* NCCL has no v-variants: one ncclReduce per rank's block, rooted at that rank, in a group */
bt_status comm_nccl_reduce_scatter_v(struct comm_request *r, struct comm *c, const void *in,
                                     void *out, const int64_t *counts, bt_dtype dtype, comm_op op) {
    START(r, c);
    size_t esize = bt_dtype_size(dtype), at = 0;
    NCCL_CHECK(r->where, ncclGroupStart());
    for (int k = 0; k < c->size; k++) {
        const char *block = (const char *)in + at * esize;
        /* recvbuff is only used on the root; the others pass theirs, a valid pointer */
        ncclResult_t rc = ncclReduce(block, out, (size_t)counts[k], nccl_dtype(dtype), nccl_op(op),
                                     k, (ncclComm_t)c->nccl, nccl_stream);
        if (rc != ncclSuccess) {
            ncclGroupEnd();
            return nccl_failed(r->where, rc, "ncclReduce", __LINE__);
        }
        at += (size_t)counts[k];
    }
    NCCL_CHECK(r->where, ncclGroupEnd());
    return end(r, c);
}

/* in == NULL: this rank's block is already in place in out */
bt_status comm_nccl_allgather(struct comm_request *r, struct comm *c, const void *in, void *out,
                              int64_t n, bt_dtype dtype) {
    START(r, c);
    const void *send =
        in ? in : (const char *)out + (size_t)c->rank * (size_t)n * bt_dtype_size(dtype);
    NCCL_CHECK(r->where, ncclAllGather(send, out, (size_t)n, nccl_dtype(dtype), (ncclComm_t)c->nccl,
                                       nccl_stream));
    return end(r, c);
}

/* one ncclBroadcast per rank's block, in place, in a group */
bt_status comm_nccl_allgather_v(struct comm_request *r, struct comm *c, void *buf,
                                const int64_t *counts, bt_dtype dtype) {
    START(r, c);
    size_t esize = bt_dtype_size(dtype), at = 0;
    NCCL_CHECK(r->where, ncclGroupStart());
    for (int k = 0; k < c->size; k++) {
        char *block = (char *)buf + at * esize;
        ncclResult_t rc = ncclBroadcast(block, block, (size_t)counts[k], nccl_dtype(dtype), k,
                                        (ncclComm_t)c->nccl, nccl_stream);
        if (rc != ncclSuccess) {
            ncclGroupEnd();
            return nccl_failed(r->where, rc, "ncclBroadcast", __LINE__);
        }
        at += (size_t)counts[k];
    }
    NCCL_CHECK(r->where, ncclGroupEnd());
    return end(r, c);
}

bt_status comm_nccl_broadcast(struct comm_request *r, struct comm *c, void *buf, int64_t n,
                              bt_dtype dtype, int root) {
    START(r, c);
    NCCL_CHECK(r->where, ncclBroadcast(buf, buf, (size_t)n, nccl_dtype(dtype), root,
                                       (ncclComm_t)c->nccl, nccl_stream));
    return end(r, c);
}

/* Send and recv involve two ranks of the group: they cannot make its communicator (a collective
 * over all of it), so it must exist already */
static bt_status has_communicator(struct comm_request *r, const struct comm *c) {
    if (c->nccl) return BT_OK;
    return comm_errorf(r->where,
                       "device tensors: group %s has no NCCL communicator yet (call "
                       "comm_use_device on it, or on the group it was split from, first)",
                       c->name);
}

/* NCCL has no tags: messages between two ranks arrive in the order they were sent */
bt_status comm_nccl_send(struct comm_request *r, struct comm *c, const void *buf, int64_t n,
                         bt_dtype dtype, int peer) {
    if (has_communicator(r, c) != BT_OK) return BT_ERR;
    START(r, c);
    NCCL_CHECK(r->where,
               ncclSend(buf, (size_t)n, nccl_dtype(dtype), peer, (ncclComm_t)c->nccl, nccl_stream));
    return end(r, c);
}

bt_status comm_nccl_recv(struct comm_request *r, struct comm *c, void *buf, int64_t n,
                         bt_dtype dtype, int peer) {
    if (has_communicator(r, c) != BT_OK) return BT_ERR;
    START(r, c);
    NCCL_CHECK(r->where,
               ncclRecv(buf, (size_t)n, nccl_dtype(dtype), peer, (ncclComm_t)c->nccl, nccl_stream));
    return end(r, c);
}

bool comm_nccl_poll(struct comm_request *r) {
    if (r->complete || !r->nccl_done) return true;
    cudaError_t rc = cudaEventQuery((cudaEvent_t)r->nccl_done);
    if (rc == cudaErrorNotReady) {
        ncclResult_t async = ncclSuccess;
        if (r->nccl_comm) ncclCommGetAsyncError((ncclComm_t)r->nccl_comm, &async);
        if (async == ncclSuccess || async == ncclInProgress) return false;
        nccl_failed(r->where, async, "ncclCommGetAsyncError", __LINE__);
        r->nccl_failed = true;
        return true;
    }
    if (rc != cudaSuccess) {
        cuda_failed(r->where, rc, "cudaEventQuery", __LINE__);
        r->nccl_failed = true;
    }
    return true;
}

void comm_nccl_release(struct comm_request *r) {
    if (r->nccl_done) cudaEventDestroy((cudaEvent_t)r->nccl_done);
    r->nccl_done = NULL;
}
