/* Shared by the files of comm/ and by nothing outside it: the group and request structs, the one
 * comm runtime of the process (reached through comm_rt()), request bookkeeping (request.c) and
 * the MPI backend's entry points (mpi.c). */
#ifndef BRAID_COMM_COMM_INTERNAL_H
#define BRAID_COMM_COMM_INTERNAL_H

#include <mpi.h>
#include <stddef.h>

#include "comm/comm.h"

#define COMM_NAME_MAX 32  /* group names: "world", "dp", "tp", "pp", ... */
#define COMM_WHERE_MAX 96 /* "allreduce on group dp (rank 1 of 2)" */

struct comm {
    MPI_Comm mpi; /* MPI_COMM_NULL when local */
    bool local;   /* no MPI: the world of one of a process started without a launcher, or a split
                     of it; every collective is then a local copy */
    int rank, size;
    char name[COMM_NAME_MAX];
    struct comm_traffic traffic[COMM_KIND_COUNT]; /* comm_traffic: started on this rank */
    void *nccl; /* ncclComm_t for device tensors (nccl.c), NULL until made */
};

/* The comm state of the process: set up by comm_init, torn down by comm_finalize. */
struct comm_runtime {
    bool initialized;
    bool distributed; /* MPI was started (or found started) by comm_init */
    bool owns_mpi;    /* comm_init called MPI_Init_thread, so comm_finalize calls MPI_Finalize */
    struct comm *world;
    int node_rank;    /* rank among the ranks sharing this node (MPI_COMM_TYPE_SHARED split) */
    int tag_ub;       /* largest tag MPI accepts */
    double timeout_s; /* the watchdog: BRAID_COMM_TIMEOUT */
    struct comm_request *outstanding; /* requests whose MPI part is in flight */
    /* comm_progress's arrays for MPI_Testsome, grown as needed */
    MPI_Request *scratch_mpi;
    struct comm_request **scratch_owner;
    int *scratch_index;
    MPI_Status *scratch_status;
    int scratch_cap;
};

struct comm_runtime *comm_rt(void);

/* A tensor whose elements travel through a contiguous copy because it is not contiguous. */
struct comm_staging {
    bt_tensor *user; /* the caller's tensor */
    void *buf;       /* malloc'd contiguous copy, freed when the request is freed */
    bool unpack;     /* copy buf back into user when the request completes */
};

struct comm_request {
    const char *op;             /* "allreduce", "send", ... */
    char group[COMM_NAME_MAX];  /* copied: the group may be freed before the request is */
    char where[COMM_WHERE_MAX]; /* "allreduce on group dp (rank 1 of 2)", starts messages */
    MPI_Request mpi;            /* MPI_REQUEST_NULL when local or once MPI completed it */
    bool complete;              /* the transfer is over (or failed) */
    bool finished;              /* completion work done; `result` is final */
    int mpi_error;              /* MPI_SUCCESS, or what completing the MPI request returned */
    const char *mpi_error_call; /* the call that returned mpi_error */
    MPI_Status status;          /* of the completed MPI request (recv checks its count) */
    bt_status result;
    char *error; /* the message of a failed completion, for a later comm_wait */

    /* completion work, in this order: check a recv's count, average, unpack */
    int64_t recv_expected; /* recv: elements the tensor holds; -1 for other operations */
    int peer;              /* recv: the sender */
    bt_dtype recv_dtype;
    float *avg_f32; /* COMM_AVG: divide avg_count elements by avg_divisor */
    double *avg_f64;
    int64_t avg_count;
    int avg_divisor;
    struct comm_staging stage[2];
    int n_stage;
    /* the _v variants' counts and displacements, which MPI reads until completion */
    int *mpi_counts;
    /* device tensors (nccl.c): the event recorded after the NCCL operation, its communicator, and
     * whether completing it failed (the message is then set) */
    void *nccl_done, *nccl_comm;
    bool nccl_failed;

    struct comm_request *prev, *next; /* the outstanding list */
    bool listed;
};

/* ---- messages (comm.c) ---- */
/* "op on group name (rank r of n)" into buf. */
void comm_where(const struct comm *c, const char *op, char *buf, size_t size);
/* Records "<where>: <message>" and returns BT_ERR. */
bt_status comm_errorf(const char *where, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Records "<where>: MPI error: <MPI_Error_string> (<call> at <file>:<line>)" and returns BT_ERR. */
bt_status comm_mpi_error(const char *where, int rc, const char *call, const char *file, int line);

/* Every MPI call goes through this: a failed call returns BT_ERR from the calling function with a
 * message naming `where`, MPI's reason and the call. */
#define COMM_MPI_CHECK(where, call)                                                                \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        if (rc_ != MPI_SUCCESS) return comm_mpi_error((where), rc_, #call, __FILE__, __LINE__);    \
    } while (0)

/* ---- requests (request.c) ---- */
/* A new request for `op` on c; NULL with a message when c is NULL or memory runs out. */
struct comm_request *comm_request_new(struct comm *c, const char *op);
/* Contiguous memory with t's elements: t's own when t is contiguous, otherwise a copy owned by
 * r (filled from t when `pack`; copied back into t on completion when `unpack`). NULL with a
 * message when out of memory. */
void *comm_request_stage(struct comm_request *r, const bt_tensor *t, bool pack, bool unpack);
/* Arranges for count floats at data (or doubles) to be divided by divisor on completion. */
void comm_request_average_f32(struct comm_request *r, float *data, int64_t count, int divisor);
void comm_request_average_f64(struct comm_request *r, double *data, int64_t count, int divisor);
/* Hands r to the caller: outstanding when r->mpi was started, otherwise already complete. */
struct comm_request *comm_request_started(struct comm_request *r);
/* Frees r (staging, counts, the outstanding list entry) without completing it. */
void comm_request_free(struct comm_request *r);

/* ---- the MPI backend (mpi.c): start one operation on contiguous buffers, setting r->mpi ---- */
MPI_Datatype comm_mpi_dtype(bt_dtype dtype); /* one the front end accepted */
bt_status comm_mpi_iallreduce(struct comm_request *r, const struct comm *c, void *buf, int64_t n,
                              bt_dtype dtype, comm_op op);
bt_status comm_mpi_iallreduce_doubles(struct comm_request *r, const struct comm *c, double *vals,
                                      int n, comm_op op);
bt_status comm_mpi_ireduce_scatter(struct comm_request *r, const struct comm *c, const void *in,
                                   void *out, int64_t n, bt_dtype dtype, comm_op op);
bt_status comm_mpi_ireduce_scatter_v(struct comm_request *r, const struct comm *c, const void *in,
                                     void *out, const int64_t *counts, bt_dtype dtype, comm_op op);
/* in == NULL: this rank's block is already in place in out */
bt_status comm_mpi_iallgather(struct comm_request *r, const struct comm *c, const void *in,
                              void *out, int64_t n, bt_dtype dtype);
bt_status comm_mpi_iallgather_v(struct comm_request *r, const struct comm *c, void *buf,
                                const int64_t *counts, bt_dtype dtype);
bt_status comm_mpi_ibroadcast(struct comm_request *r, const struct comm *c, void *buf, int64_t n,
                              bt_dtype dtype, int root);
bt_status comm_mpi_isend(struct comm_request *r, const struct comm *c, const void *buf, int64_t n,
                         bt_dtype dtype, int peer, int tag);
bt_status comm_mpi_irecv(struct comm_request *r, const struct comm *c, void *buf, int64_t n,
                         bt_dtype dtype, int peer, int tag);
bt_status comm_mpi_ibarrier(struct comm_request *r, const struct comm *c);

/* ---- the NCCL backend (nccl.c; nccl_absent.c where braid is built without CUDA): the same
 * operations on contiguous device buffers, each setting r->nccl_done ---- */
bool comm_is_device_tensor(const bt_tensor *t);
/* at comm_split: the child's communicator split from the parent's, when the parent has one */
bt_status comm_nccl_split(struct comm *parent, struct comm *child, int color, int key,
                          const char *where);
void comm_nccl_free(struct comm *c);
bt_status comm_nccl_allreduce(struct comm_request *r, struct comm *c, void *buf, int64_t n,
                              bt_dtype dtype, comm_op op);
bt_status comm_nccl_reduce_scatter(struct comm_request *r, struct comm *c, const void *in,
                                   void *out, int64_t n, bt_dtype dtype, comm_op op);
bt_status comm_nccl_reduce_scatter_v(struct comm_request *r, struct comm *c, const void *in,
                                     void *out, const int64_t *counts, bt_dtype dtype, comm_op op);
bt_status comm_nccl_allgather(struct comm_request *r, struct comm *c, const void *in, void *out,
                              int64_t n, bt_dtype dtype);
bt_status comm_nccl_allgather_v(struct comm_request *r, struct comm *c, void *buf,
                                const int64_t *counts, bt_dtype dtype);
bt_status comm_nccl_broadcast(struct comm_request *r, struct comm *c, void *buf, int64_t n,
                              bt_dtype dtype, int root);
bt_status comm_nccl_send(struct comm_request *r, struct comm *c, const void *buf, int64_t n,
                         bt_dtype dtype, int peer);
bt_status comm_nccl_recv(struct comm_request *r, struct comm *c, void *buf, int64_t n,
                         bt_dtype dtype, int peer);
/* true once r's operation is over (r->nccl_failed, with the message set, if it failed) */
bool comm_nccl_poll(struct comm_request *r);
void comm_nccl_release(struct comm_request *r); /* its event */

#endif
