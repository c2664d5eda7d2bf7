/* Communicators (DESIGN.md "Comm and parallel"): a group of ranks and the collectives on it —
 * allreduce, reduce-scatter, allgather, broadcast, send/recv, barrier — each blocking and
 * non-blocking (a request to wait on or test). Backend-neutral: comm/mpi.c moves host tensors
 * over MPI; NCCL plugs in for device tensors with the CUDA backend. A process started without a
 * launcher (no mpirun/srun) is a world of one and needs no MPI: every collective is then local.
 *
 * Errors come back as BT_ERR (or a NULL request) with one message naming the operation, the group
 * and the reason: `allreduce on group dp (rank 1 of 2): MPI error: MPI_ERR_TRUNCATE: ...`. A
 * request that does not complete within the watchdog time (BRAID_COMM_TIMEOUT seconds, default
 * 600) aborts the whole job with a message naming the rank, the operation and the group, so a
 * stuck peer never hangs the job forever. */
#ifndef BRAID_COMM_COMM_H
#define BRAID_COMM_COMM_H

#include <stdbool.h>
#include <stdint.h>

#include "core/tensor.h"

typedef enum { COMM_SUM = 0, COMM_AVG, COMM_MAX, COMM_MIN } comm_op;

struct comm;         /* a group of ranks */
struct comm_request; /* an operation in flight */

/* ---- the process ---- */

/* Starts the communication runtime: MPI (MPI_Init_thread, MPI_THREAD_FUNNELED) when the process
 * was started by a launcher (mpirun/mpiexec: OMPI_COMM_WORLD_SIZE or PMI_SIZE; srun with PMIx or
 * PMI-2: PMIX_RANK or PMI_RANK), otherwise a world of one without MPI. Idempotent. */
bt_status comm_init(int *argc, char ***argv);
/* Ends it (MPI_Finalize when MPI was started); frees the world. */
void comm_finalize(void);
/* Ends every rank of the job now with `status` (MPI_Abort, or exit for a world of one). */
_Noreturn void comm_abort(int status);
bool comm_is_distributed(void); /* MPI was started */
struct comm *comm_world(void);  /* after comm_init */
/* This rank's index among the ranks on its node (for binding a GPU): Open MPI's
 * OMPI_COMM_WORLD_LOCAL_RANK, Slurm's SLURM_LOCALID, MPI's shared-memory split, or 0. */
int comm_local_rank(void);

/* ---- groups ---- */
int comm_rank(const struct comm *c);
int comm_size(const struct comm *c);
const char *comm_name(const struct comm *c); /* "world", "dp", "tp", "pp", ... for messages */
/* Collective over parent: ranks with the same color form a group, ordered by key. */
struct comm *comm_split(struct comm *parent, int color, int key, const char *name);
/* Device tensors on c and on the groups split from it later go through NCCL: makes c's NCCL
 * communicator now (collective over c), so that comm_split derives its children's with
 * ncclCommSplit. A group without one makes it on its first device operation. Needs the CUDA
 * device in use (bt_cuda); an error naming why where braid has no CUDA. */
bt_status comm_use_device(struct comm *c);
void comm_free(struct comm *c); /* not the world */

/* ---- collectives on host tensors (MPI) or device tensors (NCCL) ----
 * float32, int32, int64 (and bool for MAX/MIN). Host inputs may be non-contiguous views (they
 * are packed and unpacked); device tensors must be contiguous, on the process's device, and must
 * stay alive until their request is waited on (the caching allocator reuses freed memory at
 * once, and NCCL's stream is not the compute stream). Element counts are per rank. */

/* t = op over the group of t, in place; every rank passes the same shape. */
bt_status comm_allreduce(struct comm *c, bt_tensor *t, comm_op op);
/* in holds size * n elements in rank order; out (n elements) receives op over the group of this
 * rank's n-element block. */
bt_status comm_reduce_scatter(struct comm *c, const bt_tensor *in, bt_tensor *out, comm_op op);
/* out (size * numel(in) elements) receives every rank's in, in rank order. */
bt_status comm_allgather(struct comm *c, const bt_tensor *in, bt_tensor *out);
bt_status comm_broadcast(struct comm *c, bt_tensor *t, int root);
bt_status comm_send(struct comm *c, const bt_tensor *t, int peer, int tag);
bt_status comm_recv(struct comm *c, bt_tensor *t, int peer, int tag); /* t: the expected shape */
bt_status comm_barrier(struct comm *c);

/* Uneven variants for sharding (counts has comm_size(c) entries: counts[r] elements for rank r,
 * summing to numel(in) / numel(buf); contiguous tensors only): reduce-scatter where rank r receives
 * counts[r] elements into out, and an in-place allgather where rank r contributes buf's block at
 * offset counts[0]+...+counts[r-1]. */
bt_status comm_reduce_scatter_v(struct comm *c, const bt_tensor *in, bt_tensor *out,
                                const int64_t *counts, comm_op op);
bt_status comm_allgather_v(struct comm *c, bt_tensor *buf, const int64_t *counts);

/* Scalars in double (losses, norms, flags): vals[0..n) = op over the group, in place. */
bt_status comm_allreduce_doubles(struct comm *c, double *vals, int n, comm_op op);

/* ---- non-blocking: the same operations, started; NULL with a message on error ----
 * The tensors must stay alive and untouched until the request completes. Progress is made when
 * the caller tests or waits on any request (MPI has no progress thread by default): call
 * comm_progress() from long computations to keep transfers moving. */
struct comm_request *comm_iallreduce(struct comm *c, bt_tensor *t, comm_op op);
struct comm_request *comm_ireduce_scatter(struct comm *c, const bt_tensor *in, bt_tensor *out,
                                          comm_op op);
struct comm_request *comm_ireduce_scatter_v(struct comm *c, const bt_tensor *in, bt_tensor *out,
                                            const int64_t *counts, comm_op op);
struct comm_request *comm_iallgather(struct comm *c, const bt_tensor *in, bt_tensor *out);
struct comm_request *comm_iallgather_v(struct comm *c, bt_tensor *buf, const int64_t *counts);
struct comm_request *comm_ibroadcast(struct comm *c, bt_tensor *t, int root);
struct comm_request *comm_isend(struct comm *c, const bt_tensor *t, int peer, int tag);
struct comm_request *comm_irecv(struct comm *c, bt_tensor *t, int peer, int tag);
struct comm_request *comm_ibarrier(struct comm *c);
/* Waits for r to complete (results are in place, unpacked) and frees it. */
bt_status comm_wait(struct comm_request *r);
/* *done = whether r completed; when it did, its results are in place and r must still be freed
 * with comm_wait (which then returns at once). */
bt_status comm_test(struct comm_request *r, bool *done);
/* Lets outstanding requests of this process progress (MPI_Testsome on them); cheap. */
void comm_progress(void);

/* ---- traffic counters ----
 * Each group counts, on this rank, the operations started on it and their payload bytes, by kind.
 * An operation counts once, when it starts (a blocking call starts one; a non-blocking one counts
 * whether or not it is waited on yet; one refused by its argument checks does not count). Bytes
 * are the payload as NCCL-tests' algbw defines it, independent of the group's size:
 *   allreduce              the tensor's bytes; comm_allreduce_doubles: 8 * n
 *   reduce_scatter(_v)     the input's bytes (every rank's block)
 *   allgather(_v)          the gathered output's bytes (buf for allgather_v)
 *   broadcast              the tensor's bytes, on the root and the others alike
 *   send / recv            the bytes sent / received (the tensor's)
 *   barrier                a call, 0 bytes
 * What crosses the wire per rank with ring algorithms (NCCL-tests' busbw) is 2(P-1)/P of that for
 * an allreduce and (P-1)/P for a reduce-scatter or allgather. A group without MPI (a world of one
 * or its splits) counts the same way though it moves nothing. Not thread-safe (nor is the rest of
 * comm: MPI_THREAD_FUNNELED). */
typedef enum {
    COMM_KIND_ALLREDUCE = 0, /* comm_allreduce, comm_allreduce_doubles and their starts */
    COMM_KIND_REDUCE_SCATTER,
    COMM_KIND_ALLGATHER,
    COMM_KIND_BROADCAST,
    COMM_KIND_SEND,
    COMM_KIND_RECV,
    COMM_KIND_BARRIER,
    COMM_KIND_COUNT
} comm_kind;

struct comm_traffic {
    int64_t calls; /* operations started */
    int64_t bytes; /* their payload, as above */
};

/* Since the group was created or last reset: every kind together (zeros for a NULL group). */
struct comm_traffic comm_traffic(const struct comm *c);
/* The same for one kind (zeros for a NULL group or a kind out of range). */
struct comm_traffic comm_traffic_of(const struct comm *c, comm_kind kind);
void comm_traffic_reset(struct comm *c);
const char *comm_kind_name(comm_kind kind); /* "allreduce", "reduce_scatter", ... */

#endif
