/* Data parallelism with bucketed, overlapped gradient averaging and ZeRO-1 (parallel/dp.h). */
#include "parallel/dp.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/shard.h"
#include "core/autograd.h"
#include "core/backend.h"
#include "core/optim.h"
#include "parallel/grid.h"

#define DEFAULT_BUCKET_BYTES (25 << 20)

/* One parameter: its rows and the rows each rank owns under ZeRO-1. */
struct dp_param {
    bt_tensor *t;
    int64_t numel, rows, row_elems;
    int bucket;
    bool ready;
};

/* Consecutive parameters (in reverse order) reduced together. */
struct bucket {
    int first, count; /* indices into dp->order */
    int n_ready;
    bool started;
    bt_tensor *buffer;   /* packed gradients (persistent float32) */
    bt_tensor *received; /* ZeRO-1: this rank's rows of each member, averaged */
    int64_t *counts;     /* ZeRO-1: elements each rank receives */
    struct comm_request *request;
};

struct dp {
    struct comm *group;
    int rank, size;
    bool zero1;
    bt_device device; /* the parameters', and so the buckets' */
    int n;
    struct dp_param *params;
    int *order; /* parameter indices, last first: the order their gradients become final */
    int n_buckets;
    struct bucket *buckets;
    struct nn_param_list optim_params; /* params, or the ZeRO-1 shards */
    int64_t *optim_row0;
    int64_t **gather_counts; /* ZeRO-1: per parameter, elements each rank contributes */
    bool armed;
    char
        start_error[512]; /* why a bucket failed to start inside the backward, kept for dp_finish */
    struct dp_stats stats;
};

static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* rows [lo, hi) of parameter p held by rank r, in elements */
static void owned(const struct dp *d, const struct dp_param *p, int r, int64_t *lo, int64_t *hi) {
    comm_rows_of(p->rows, r, d->size, lo, hi);
    *lo *= p->row_elems;
    *hi *= p->row_elems;
}

/* ---- building ---- */

/* Without ZeRO-1 the members' gradients live in the bucket (aliases of its buffer, as PyTorch's
 * gradient_as_bucket_view): the backward accumulates straight into what is averaged, with no
 * copy in or out. */
static bt_status grads_in_bucket(struct dp *d, struct bucket *b) {
    int64_t offset = 0;
    for (int j = 0; j < b->count; j++) {
        bt_tensor *t = d->params[d->order[b->first + j]].t;
        bt_tensor *grad = bt_tensor_alias(b->buffer, offset, t->ndim, t->shape);
        if (!grad) return BT_ERR;
        bt_tensor_free(t->grad);
        t->grad = grad;
        t->grad_owned = true;
        offset += bt_numel(t);
    }
    return BT_OK;
}

static bt_status make_buckets(struct dp *d, int64_t bucket_bytes) {
    d->buckets = calloc((size_t)d->n, sizeof *d->buckets);
    if (!d->buckets) return bt_error("data parallel: out of memory");
    for (int k = 0; k < d->n;) {
        struct bucket *b = &d->buckets[d->n_buckets];
        int64_t bytes = 0, numel = 0;
        b->first = k;
        while (k < d->n && (b->count == 0 || bytes < bucket_bytes)) {
            struct dp_param *p = &d->params[d->order[k]];
            p->bucket = d->n_buckets;
            bytes += p->numel * 4;
            numel += p->numel;
            b->count++;
            k++;
        }
        if (!(b->buffer = bt_tensor_new(BT_SHAPE(numel), BT_F32, d->device))) return BT_ERR;
        if (!d->zero1 && grads_in_bucket(d, b) != BT_OK) return BT_ERR;
        if (d->zero1) {
            if (!(b->counts = calloc((size_t)d->size, sizeof *b->counts)))
                return bt_error("data parallel: out of memory");
            for (int j = 0; j < b->count; j++)
                for (int r = 0; r < d->size; r++) {
                    int64_t lo, hi;
                    owned(d, &d->params[d->order[b->first + j]], r, &lo, &hi);
                    b->counts[r] += hi - lo;
                }
            int64_t mine = b->counts[d->rank];
            if (!(b->received = bt_tensor_new(BT_SHAPE(mine ? mine : 1), BT_F32, d->device)))
                return BT_ERR;
        }
        d->n_buckets++;
    }
    d->stats.buckets = d->n_buckets;
    return BT_OK;
}

/* ZeRO-1: the optimizer's parameters are aliases of this rank's rows of each parameter, their
 * gradients aliases of the bucket's received buffer. */
static bt_status make_shards(struct dp *d, const struct nn_param_list *params) {
    struct nn_param_list *list = &d->optim_params;
    list->names = calloc((size_t)d->n, sizeof *list->names);
    list->tensors = calloc((size_t)d->n, sizeof *list->tensors);
    list->splits = calloc((size_t)d->n, sizeof *list->splits);
    d->optim_row0 = calloc((size_t)d->n, sizeof *d->optim_row0);
    d->gather_counts = calloc((size_t)d->n, sizeof *d->gather_counts);
    /* where each parameter's rows sit in its bucket's received buffer: members in bucket order */
    int64_t *at = calloc((size_t)d->n, sizeof *at),
            *fill = calloc((size_t)d->n_buckets, sizeof *fill);
    bt_status st = BT_ERR;
    if (!list->names || !list->tensors || !list->splits || !d->optim_row0 || !d->gather_counts ||
        !at || !fill) {
        bt_error("data parallel: out of memory");
        goto done;
    }
    for (int k = 0; k < d->n; k++) {
        struct dp_param *p = &d->params[d->order[k]];
        int64_t lo, hi;
        owned(d, p, d->rank, &lo, &hi);
        at[d->order[k]] = fill[p->bucket];
        fill[p->bucket] += hi - lo;
    }
    for (int i = 0; i < d->n; i++) { /* the optimizer's list keeps the model's order */
        struct dp_param *p = &d->params[i];
        int64_t lo, hi;
        if (!(d->gather_counts[i] = calloc((size_t)d->size, sizeof **d->gather_counts))) {
            bt_error("data parallel: out of memory");
            goto done;
        }
        for (int r = 0; r < d->size; r++) {
            owned(d, p, r, &lo, &hi);
            d->gather_counts[i][r] = hi - lo;
        }
        owned(d, p, d->rank, &lo, &hi);
        if (hi == lo) continue; /* no rows here: not in this rank's optimizer */
        int64_t shape[BT_MAX_DIMS];
        for (int dim = 0; dim < p->t->ndim; dim++)
            shape[dim] = p->t->shape[dim];
        if (p->t->ndim > 0) shape[0] = (hi - lo) / p->row_elems;
        bt_tensor *shard = bt_tensor_alias(p->t, lo, p->t->ndim, shape);
        bt_tensor *grad =
            shard ? bt_tensor_alias(d->buckets[p->bucket].received, at[i], p->t->ndim, shape)
                  : NULL;
        if (!grad) {
            bt_tensor_free(shard);
            goto done;
        }
        shard->requires_grad = true;
        shard->grad = grad;
        shard->grad_owned = true;
        list->tensors[list->count] = shard; /* owned by the list from here (dp_free) */
        list->names[list->count] = strdup(params->names[i]);
        list->splits[list->count] = nn_param_split(params, i); /* rows of the same piece */
        d->optim_row0[list->count] = lo / p->row_elems;
        list->count++;
        if (!list->names[list->count - 1]) {
            bt_error("data parallel: out of memory");
            goto done;
        }
    }
    st = BT_OK;
done:
    free(fill);
    free(at);
    return st;
}

static bt_status copy_list(struct nn_param_list *dst, const struct nn_param_list *src) {
    dst->names = calloc((size_t)(src->count ? src->count : 1), sizeof *dst->names);
    dst->tensors = calloc((size_t)(src->count ? src->count : 1), sizeof *dst->tensors);
    dst->splits = calloc((size_t)(src->count ? src->count : 1), sizeof *dst->splits);
    if (!dst->names || !dst->tensors || !dst->splits)
        return bt_error("data parallel: out of memory");
    for (int64_t i = 0; i < src->count; i++) {
        dst->names[i] = strdup(src->names[i]);
        dst->splits[i] = nn_param_split(src, i);
        dst->tensors[i] = bt_tensor_retain(src->tensors[i]);
        dst->count++;
        if (!dst->names[i]) return bt_error("data parallel: out of memory");
    }
    return BT_OK;
}

struct dp *dp_create(struct comm *group, const struct nn_param_list *params,
                     const struct dp_options *options) {
    struct dp *d = calloc(1, sizeof *d);
    if (!d) {
        bt_error("data parallel: out of memory");
        return NULL;
    }
    d->group = group;
    d->rank = comm_rank(group);
    d->size = comm_size(group);
    d->zero1 = options && options->zero1;
    d->n = (int)params->count;
    d->params = calloc((size_t)(d->n ? d->n : 1), sizeof *d->params);
    d->order = calloc((size_t)(d->n ? d->n : 1), sizeof *d->order);
    if (!d->params || !d->order) {
        bt_error("data parallel: out of memory");
        goto fail;
    }
    d->device = d->n ? params->tensors[0]->storage->device : bt_cpu();
    for (int i = 0; i < d->n; i++) {
        bt_tensor *t = params->tensors[i];
        if (t->dtype != BT_F32 || !t->persistent || !bt_is_contiguous(t)) {
            bt_error("data parallel: parameter %s must be a contiguous persistent float32 tensor",
                     params->names[i]);
            goto fail;
        }
        if (!bt_device_equal(t->storage->device, d->device)) {
            char a[32], b[32];
            bt_error("data parallel: parameter %s is on %s, %s on %s: all on one device",
                     params->names[i], bt_device_name(t->storage->device, a, sizeof a),
                     params->names[0], bt_device_name(d->device, b, sizeof b));
            goto fail;
        }
        struct dp_param *p = &d->params[i];
        p->t = t;
        p->numel = bt_numel(t);
        p->rows = t->ndim ? t->shape[0] : 1;
        p->row_elems = p->rows ? p->numel / p->rows : 0;
        d->order[i] = d->n - 1 - i;
    }
    int64_t bucket_bytes =
        options && options->bucket_bytes > 0 ? options->bucket_bytes : DEFAULT_BUCKET_BYTES;
    if (make_buckets(d, bucket_bytes) != BT_OK) goto fail;
    if ((d->zero1 ? make_shards(d, params) : copy_list(&d->optim_params, params)) != BT_OK)
        goto fail;
    return d;
fail:
    dp_free(d);
    return NULL;
}

void dp_free(struct dp *d) {
    if (!d) return;
    if (d->armed) {
        ag_set_leaf_hook(NULL, NULL);
        ag_set_tick_hook(NULL, NULL);
    }
    for (int b = 0; b < d->n_buckets; b++) {
        if (d->buckets[b].request) comm_wait(d->buckets[b].request);
        bt_tensor_free(d->buckets[b].buffer);
        bt_tensor_free(d->buckets[b].received);
        free(d->buckets[b].counts);
    }
    for (int i = 0; d->gather_counts && i < d->n; i++)
        free(d->gather_counts[i]);
    free(d->gather_counts);
    free(d->optim_row0);
    for (int64_t i = 0; i < d->optim_params.count; i++) /* references copy_list/make_shards took */
        bt_tensor_free(d->optim_params.tensors[i]);
    nn_param_list_free(&d->optim_params);
    free(d->buckets);
    free(d->order);
    free(d->params);
    free(d);
}

const struct nn_param_list *dp_optim_params(const struct dp *d) {
    return &d->optim_params;
}

const int64_t *dp_optim_row0(const struct dp *d) {
    return d->zero1 ? d->optim_row0 : NULL;
}

const struct dp_stats *dp_stats(const struct dp *d) {
    return &d->stats;
}

void dp_zero_grad(struct dp *d) {
    for (int i = 0; i < d->n; i++)
        if (d->params[i].t->grad) bt_fill(d->params[i].t->grad, 0.0);
    if (d->zero1)
        for (int64_t i = 0; i < d->optim_params.count; i++)
            bt_fill(d->optim_params.tensors[i]->grad, 0.0);
}

/* ---- reducing ---- */

/* ZeRO-1: copies member gradients into the bucket buffer rank by rank, each rank's rows of every
 * member, for the reduce-scatter. A parameter the backward did not reach counts as zeros. */
static void pack(struct dp *d, struct bucket *b) {
    if (!d->zero1) return; /* the gradients are the buffer already */
    const struct bt_backend *be = bt_backend_for(d->device, "data parallel");
    if (!be) return; /* the device failed: the reduction's start reports it */
    float *out = bt_f32(b->buffer);
    for (int r = 0; r < d->size; r++)
        for (int j = 0; j < b->count; j++) {
            struct dp_param *p = &d->params[d->order[b->first + j]];
            int64_t lo, hi, n;
            owned(d, p, r, &lo, &hi);
            n = hi - lo;
            if (p->t->grad) /* a contiguous copy on the gradients' device */
                be->copy_strided(out, BT_F32, bt_f32(p->t->grad) + lo, BT_F32, 1, &n,
                                 (const int64_t[]){1});
            else
                be->fill(out, BT_F32, n, 0.0);
            out += n;
        }
}

static bt_status start(struct dp *d, struct bucket *b) {
    pack(d, b);
    b->started = true;
    b->request = d->zero1
                     ? comm_ireduce_scatter_v(d->group, b->buffer, b->received, b->counts, COMM_AVG)
                     : comm_iallreduce(d->group, b->buffer, COMM_AVG);
    d->stats.bytes_reduced += (int64_t)bt_nbytes(b->buffer);
    if (b->request) return BT_OK;
    if (!d->start_error[0]) snprintf(d->start_error, sizeof d->start_error, "%s", bt_last_error());
    return BT_ERR;
}

/* The leaf hook: a parameter's gradient is final; its bucket starts when it is complete. A failed
 * start is reported by dp_finish. */
static void on_grad_ready(bt_tensor *leaf, void *ctx) {
    struct dp *d = ctx;
    for (int i = 0; i < d->n; i++) {
        struct dp_param *p = &d->params[i];
        if (p->t != leaf || p->ready) continue;
        p->ready = true;
        struct bucket *b = &d->buckets[p->bucket];
        if (++b->n_ready == b->count && !b->started) start(d, b);
        break;
    }
    comm_progress();
}

/* After every backward node: keep the started buckets moving. */
static void on_tick(void *ctx) {
    (void)ctx;
    comm_progress();
}

void dp_arm(struct dp *d) {
    for (int i = 0; i < d->n; i++)
        d->params[i].ready = false;
    for (int b = 0; b < d->n_buckets; b++) {
        d->buckets[b].n_ready = 0;
        d->buckets[b].started = false;
    }
    d->stats.bytes_reduced = 0;
    d->start_error[0] = '\0';
    d->armed = true;
    ag_set_leaf_hook(on_grad_ready, d);
    ag_set_tick_hook(on_tick, d);
}

bt_status dp_finish(struct dp *d) {
    ag_set_leaf_hook(NULL, NULL);
    ag_set_tick_hook(NULL, NULL);
    d->armed = false;
    bt_status st = BT_OK;
    for (int k = 0; k < d->n_buckets; k++) /* parameters the backward never reached */
        if (!d->buckets[k].started && start(d, &d->buckets[k]) != BT_OK) st = BT_ERR;
    double t0 = seconds();
    for (int k = 0; k < d->n_buckets; k++) {
        struct bucket *b = &d->buckets[k];
        if (!b->request) {
            if (st == BT_OK)
                st = bt_error("data parallel: bucket %d did not start: %s", k,
                              d->start_error[0] ? d->start_error : "unknown reason");
            continue;
        }
        if (comm_wait(b->request) != BT_OK) st = BT_ERR;
        b->request = NULL;
    }
    d->stats.wait_seconds = seconds() - t0;
    return st;
}

double dp_clip_grad_norm(struct dp *d, double max_norm) {
    struct grid_norm_groups groups = {.rows = d->zero1 ? d->group : NULL};
    return grid_clip_grad_norm(&d->optim_params, &groups, max_norm);
}

bt_status dp_gather_params(struct dp *d) {
    if (!d->zero1) return BT_OK;
    struct comm_request **requests = calloc((size_t)(d->n ? d->n : 1), sizeof *requests);
    if (!requests) return bt_error("data parallel: out of memory");
    bt_status st = BT_OK;
    for (int i = 0; i < d->n && st == BT_OK; i++)
        if (!(requests[i] = comm_iallgather_v(d->group, d->params[i].t, d->gather_counts[i])))
            st = BT_ERR;
    for (int i = 0; i < d->n; i++)
        if (requests[i] && comm_wait(requests[i]) != BT_OK) st = BT_ERR;
    free(requests);
    return st;
}
