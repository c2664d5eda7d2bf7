/* Requests: an operation in flight, the process-wide list of outstanding ones (comm_progress
 * tests them all), completing them (count checks, averaging, unpacking staged copies) and the
 * watchdog that aborts the job when comm_wait waits longer than BRAID_COMM_TIMEOUT. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, nanosleep */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm_internal.h"

struct comm_request *comm_request_new(struct comm *c, const char *op) {
    if (!c) {
        bt_error("%s: group is NULL (was comm_init called?)", op);
        return NULL;
    }
    struct comm_request *r = calloc(1, sizeof *r);
    if (!r) {
        char where[COMM_WHERE_MAX];
        comm_where(c, op, where, sizeof where);
        comm_errorf(where, "out of memory");
        return NULL;
    }
    r->op = op;
    snprintf(r->group, sizeof r->group, "%s", c->name);
    comm_where(c, op, r->where, sizeof r->where);
    r->mpi = MPI_REQUEST_NULL;
    r->mpi_error = MPI_SUCCESS;
    r->recv_expected = -1;
    return r;
}

/* ---- staging non-contiguous tensors ---- */

/* Copies t's elements in row-major order into buf (to_buffer) or from buf into t. */
static void strided_copy(const bt_tensor *t, void *buf, bool to_buffer) {
    size_t esize = bt_dtype_size(t->dtype);
    int64_t n = bt_numel(t);
    if (n == 0) return;
    char *base = bt_data(t), *b = buf;
    if (t->ndim == 0) {
        memcpy(to_buffer ? b : base, to_buffer ? base : b, esize);
        return;
    }
    int last = t->ndim - 1;
    int64_t inner = t->shape[last], inner_step = t->stride[last] * (int64_t)esize;
    int64_t index[BT_MAX_DIMS] = {0}; /* of the outer dims; the innermost runs in the loop */
    for (int64_t done = 0; done < n; done += inner) {
        int64_t offset = 0;
        for (int d = 0; d < last; d++)
            offset += index[d] * t->stride[d];
        char *p = base + offset * (int64_t)esize;
        for (int64_t j = 0; j < inner; j++, p += inner_step, b += esize)
            memcpy(to_buffer ? b : p, to_buffer ? p : b, esize);
        for (int d = last - 1; d >= 0; d--) {
            if (++index[d] < t->shape[d]) break;
            index[d] = 0;
        }
    }
}

void *comm_request_stage(struct comm_request *r, const bt_tensor *t, bool pack, bool unpack) {
    if (bt_is_contiguous(t)) return bt_data(t);
    size_t nbytes = (size_t)bt_numel(t) * bt_dtype_size(t->dtype);
    void *buf = malloc(nbytes ? nbytes : 1);
    if (!buf) {
        comm_errorf(r->where, "out of memory staging a non-contiguous tensor (%zu bytes)", nbytes);
        return NULL;
    }
    if (pack) strided_copy(t, buf, true);
    /* two at most: reduce-scatter and allgather stage an input and an output */
    r->stage[r->n_stage++] = (struct comm_staging){(bt_tensor *)t, buf, unpack};
    return buf;
}

void comm_request_average_f32(struct comm_request *r, float *data, int64_t count, int divisor) {
    r->avg_f32 = data;
    r->avg_count = count;
    r->avg_divisor = divisor;
}

void comm_request_average_f64(struct comm_request *r, double *data, int64_t count, int divisor) {
    r->avg_f64 = data;
    r->avg_count = count;
    r->avg_divisor = divisor;
}

/* ---- the outstanding list ---- */

static void list_add(struct comm_request *r) {
    struct comm_runtime *rt = comm_rt();
    r->prev = NULL;
    r->next = rt->outstanding;
    if (rt->outstanding) rt->outstanding->prev = r;
    rt->outstanding = r;
    r->listed = true;
}

static void list_remove(struct comm_request *r) {
    if (!r->listed) return;
    if (r->prev)
        r->prev->next = r->next;
    else
        comm_rt()->outstanding = r->next;
    if (r->next) r->next->prev = r->prev;
    r->prev = r->next = NULL;
    r->listed = false;
}

struct comm_request *comm_request_started(struct comm_request *r) {
    if (r->mpi != MPI_REQUEST_NULL || r->nccl_done) /* NCCL: polled through its event */
        list_add(r);
    else
        r->complete = true; /* local: the work was done when it started */
    return r;
}

void comm_request_free(struct comm_request *r) {
    list_remove(r);
    for (int i = 0; i < r->n_stage; i++)
        free(r->stage[i].buf);
    free(r->mpi_counts);
    free(r->error);
    comm_nccl_release(r);
    free(r);
}

/* ---- completion ---- */

/* Marks r's transfer as over, after MPI_Test or MPI_Testsome reported it. */
static void mark_complete(struct comm_request *r, int mpi_error, const char *call,
                          const MPI_Status *status) {
    r->complete = true;
    r->mpi_error = mpi_error;
    r->mpi_error_call = call;
    if (status) r->status = *status;
    list_remove(r);
}

/* One MPI_Test of r. An MPI request that failed is not handed back to MPI: the job is about to
 * stop, and MPI_Request_free is not allowed on collective requests. */
static void poll_once(struct comm_request *r) {
    if (r->complete) return;
    if (r->nccl_done) {
        if (comm_nccl_poll(r)) {
            r->complete = true;
            list_remove(r);
        }
        return;
    }
    int flag = 0;
    MPI_Status status;
    int rc = MPI_Test(&r->mpi, &flag, &status);
    if (rc != MPI_SUCCESS) {
        r->mpi = MPI_REQUEST_NULL;
        mark_complete(r, rc, "MPI_Test", NULL);
    } else if (flag) {
        mark_complete(r, MPI_SUCCESS, NULL, &status);
    }
}

/* recv: the message must fill the tensor exactly (a longer one is MPI's truncation error) */
static bt_status check_recv_count(struct comm_request *r) {
    int count = 0;
    MPI_Datatype type = comm_mpi_dtype(r->recv_dtype);
    int rc = MPI_Get_count(&r->status, type, &count);
    if (rc != MPI_SUCCESS) return comm_mpi_error(r->where, rc, "MPI_Get_count", __FILE__, __LINE__);
    if (count != r->recv_expected)
        return comm_errorf(r->where,
                           "expected %lld elements from rank %d, got %d (the tensors sent and "
                           "received differ in size)",
                           (long long)r->recv_expected, r->peer, count);
    return BT_OK;
}

static void average(struct comm_request *r) {
    for (int64_t i = 0; r->avg_f32 && i < r->avg_count; i++)
        r->avg_f32[i] /= (float)r->avg_divisor;
    for (int64_t i = 0; r->avg_f64 && i < r->avg_count; i++)
        r->avg_f64[i] /= (double)r->avg_divisor;
}

/* The work after the transfer, once: results land in the caller's tensors or an error is kept. */
static bt_status finish(struct comm_request *r) {
    if (r->finished) {
        if (r->result != BT_OK) bt_error("%s", r->error ? r->error : "communication failed");
        return r->result;
    }
    r->finished = true;
    bt_status st = BT_OK;
    if (r->nccl_failed)
        st = BT_ERR; /* comm_nccl_poll set the message */
    else if (r->mpi_error != MPI_SUCCESS)
        st = comm_mpi_error(r->where, r->mpi_error, r->mpi_error_call, __FILE__, __LINE__);
    else if (r->recv_expected >= 0)
        st = check_recv_count(r);
    if (st == BT_OK) {
        average(r);
        for (int i = 0; i < r->n_stage; i++)
            if (r->stage[i].unpack) strided_copy(r->stage[i].user, r->stage[i].buf, false);
    } else {
        r->error = strdup(bt_last_error());
    }
    r->result = st;
    return st;
}

/* ---- waiting, testing, progress ---- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

_Noreturn static void watchdog_fire(const struct comm_request *r) {
    struct comm_runtime *rt = comm_rt();
    fprintf(stderr,
            "braid: error: rank %d: %s on group %s did not complete in %g s (a peer is stuck or "
            "dead)\n",
            rt->world ? rt->world->rank : 0, r->op, r->group, rt->timeout_s);
    comm_abort(1);
}

/* Polls r until it completes, aborting the job past the watchdog time. Spins first (latency
 * matters when peers are in step), then yields the core (oversubscribed ranks), then sleeps
 * briefly (a peer that is seconds behind gains nothing from a busy core here). */
static void wait_complete(struct comm_request *r) {
    double start = now_s(), deadline = start + comm_rt()->timeout_s;
    for (long polls = 0; !r->complete; polls++) {
        poll_once(r);
        if (r->complete) break;
        double t = now_s();
        if (t > deadline) watchdog_fire(r);
        if (t - start > 0.01)
            nanosleep(&(struct timespec){0, 50000}, NULL);
        else if (polls > 1000)
            sched_yield();
    }
}

bt_status comm_wait(struct comm_request *r) {
    if (!r)
        return bt_has_error() ? BT_ERR
                              : bt_error("comm_wait: request is NULL (its operation did not "
                                         "start)");
    wait_complete(r);
    bt_status st = finish(r);
    comm_request_free(r);
    return st;
}

bt_status comm_test(struct comm_request *r, bool *done) {
    if (!r || !done) {
        if (done) *done = false;
        return bt_has_error() ? BT_ERR : bt_error("comm_test: request or done is NULL");
    }
    poll_once(r);
    *done = r->complete;
    return r->complete ? finish(r) : BT_OK;
}

/* Grows comm_progress's arrays to hold n requests. */
static bool scratch_reserve(struct comm_runtime *rt, int n) {
    if (n <= rt->scratch_cap) return true;
    int cap = n < 16 ? 16 : 2 * n;
    MPI_Request *m = realloc(rt->scratch_mpi, (size_t)cap * sizeof *m);
    if (m) rt->scratch_mpi = m;
    struct comm_request **o = realloc(rt->scratch_owner, (size_t)cap * sizeof *o);
    if (o) rt->scratch_owner = o;
    int *idx = realloc(rt->scratch_index, (size_t)cap * sizeof *idx);
    if (idx) rt->scratch_index = idx;
    MPI_Status *st = realloc(rt->scratch_status, (size_t)cap * sizeof *st);
    if (st) rt->scratch_status = st;
    if (!m || !o || !idx || !st) return false;
    rt->scratch_cap = cap;
    return true;
}

void comm_progress(void) {
    struct comm_runtime *rt = comm_rt();
    for (struct comm_request *r = rt->outstanding, *next; r; r = next) { /* NCCL's: events */
        next = r->next;
        if (r->nccl_done) poll_once(r);
    }
    int n = 0;
    for (struct comm_request *r = rt->outstanding; r; r = r->next)
        n++;
    if (n == 0 || !scratch_reserve(rt, n)) return; /* out of memory: the next wait progresses */
    int k = 0;
    for (struct comm_request *r = rt->outstanding; r; r = r->next, k++) {
        rt->scratch_mpi[k] = r->mpi;
        rt->scratch_owner[k] = r;
    }
    int n_done = 0;
    int rc = MPI_Testsome(n, rt->scratch_mpi, &n_done, rt->scratch_index, rt->scratch_status);
    /* Other failures and failed requests are left to comm_test/comm_wait, whose MPI_Test on
     * that request reports them with the operation's name. */
    if ((rc != MPI_SUCCESS && rc != MPI_ERR_IN_STATUS) || n_done == MPI_UNDEFINED) return;
    for (int i = 0; i < n_done; i++) {
        int j = rt->scratch_index[i];
        const MPI_Status *status = &rt->scratch_status[i];
        if (rc == MPI_ERR_IN_STATUS && status->MPI_ERROR != MPI_SUCCESS) continue;
        struct comm_request *r = rt->scratch_owner[j];
        r->mpi = rt->scratch_mpi[j]; /* MPI_REQUEST_NULL: MPI freed it */
        mark_complete(r, MPI_SUCCESS, NULL, status);
    }
}
