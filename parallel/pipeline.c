/* The pipeline scheduler (parallel/pipeline.h): GPipe and 1F1B over this rank's stage, one core
 * frame per micro-batch in flight, non-blocking sends and blocking receives between neighbours. */
#include "parallel/pipeline.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/autograd.h"
#include "core/runtime.h"

enum { TAG_ACTIVATION = 201, TAG_GRADIENT = 202 };

/* One micro-batch on this stage, from its forward until its gradient has left. */
struct micro {
    struct bt_frame *frame;       /* its activations and tape; NULL once released */
    bt_tensor *in;                /* the received activation (NULL on the first stage) */
    bt_tensor *out;               /* the activation sent on, or the loss on the last stage */
    struct comm_request *to_next; /* out, to the next stage */
    struct comm_request *to_prev; /* in's gradient, to the previous stage */
    bt_tensor *grad_sent;         /* a persistent copy of it, until the send completes */
};

struct pipeline {
    struct comm *group;
    int stage, stages;
    struct pp_options options;
    struct micro *micro;     /* options.microbatches */
    struct bt_frame **spare; /* released frames, reused by later micro-batches */
    int n_spare;
    bt_tensor **buffers; /* persistent activation-shaped send buffers not in use */
    int n_buffers;
    int64_t in_flight; /* micro-batches holding a frame now */
    struct pp_step_stats *stats;
};

bool pp_schedule_parse(const char *name, pp_schedule *out) {
    if (name && strcmp(name, "1f1b") == 0) {
        *out = PP_SCHEDULE_1F1B;
        return true;
    }
    if (name && strcmp(name, "gpipe") == 0) {
        *out = PP_SCHEDULE_GPIPE;
        return true;
    }
    bt_error("parallel.schedule: unknown schedule '%s' (expected 1f1b or gpipe)",
             name ? name : "(null)");
    return false;
}

struct pipeline *pp_create(struct comm *group, const struct pp_options *options) {
    if (!group || !options) {
        bt_error("pipeline: group or options is NULL");
        return NULL;
    }
    if (options->microbatches < 1 || options->act_ndim < 1 || options->act_ndim > BT_MAX_DIMS) {
        bt_error("pipeline: %lld micro-batches and a %d-D activation: expected at least one "
                 "micro-batch and 1 to %d dims",
                 (long long)options->microbatches, options->act_ndim, BT_MAX_DIMS);
        return NULL;
    }
    for (int d = 0; d < options->act_ndim; d++)
        if (options->act_shape[d] < 1) {
            bt_error("pipeline: activation dim %d has size %lld", d,
                     (long long)options->act_shape[d]);
            return NULL;
        }
    struct pipeline *p = calloc(1, sizeof *p);
    if (p) p->micro = calloc((size_t)options->microbatches, sizeof *p->micro);
    if (p && p->micro) p->spare = calloc((size_t)options->microbatches, sizeof *p->spare);
    if (p && p->spare) p->buffers = calloc((size_t)options->microbatches, sizeof *p->buffers);
    if (!p || !p->micro || !p->spare || !p->buffers) {
        pp_free(p);
        bt_error("pipeline: out of memory for %lld micro-batches",
                 (long long)options->microbatches);
        return NULL;
    }
    p->group = group;
    p->stage = comm_rank(group);
    p->stages = comm_size(group);
    p->options = *options;
    return p;
}

void pp_free(struct pipeline *p) {
    if (!p) return;
    for (int i = 0; i < p->n_spare; i++)
        bt_frame_destroy(p->spare[i]);
    for (int i = 0; i < p->n_buffers; i++)
        bt_tensor_free(p->buffers[i]);
    for (int64_t i = 0; p->micro && i < p->options.microbatches; i++)
        bt_frame_destroy(p->micro[i].frame); /* left by a failed step */
    free(p->spare);
    free(p->buffers);
    free(p->micro);
    free(p);
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- frames ---- */

static struct bt_frame *frame_acquire(struct pipeline *p) {
    return p->n_spare ? p->spare[--p->n_spare] : bt_frame_create();
}

static void frame_release(struct pipeline *p, struct micro *mb) {
    bt_frame_reset(mb->frame);
    p->spare[p->n_spare++] = mb->frame;
    mb->frame = NULL;
    mb->in = mb->out = NULL; /* they lived in the frame */
    p->in_flight--;
}

/* Takes back the send buffers of gradients that have left; with wait, waits for all of them
 * (the end of the step). */
static bt_status retire(struct pipeline *p, bool wait) {
    for (int64_t i = 0; i < p->options.microbatches; i++) {
        struct micro *mb = &p->micro[i];
        if (!mb->to_prev) continue;
        bool done = wait;
        if (!wait && comm_test(mb->to_prev, &done) != BT_OK) return BT_ERR;
        if (!done) continue;
        bt_status st = comm_wait(mb->to_prev);
        mb->to_prev = NULL;
        p->buffers[p->n_buffers++] = mb->grad_sent;
        mb->grad_sent = NULL;
        if (st != BT_OK) return BT_ERR;
    }
    return BT_OK;
}

/* the step memory of the micro-batches in flight now */
static void note_memory(struct pipeline *p) {
    size_t bytes = 0;
    for (int64_t i = 0; i < p->options.microbatches; i++)
        if (p->micro[i].frame) bytes += bt_frame_stats(p->micro[i].frame).used;
    if (p->in_flight > p->stats->max_in_flight) p->stats->max_in_flight = p->in_flight;
    if (bytes > p->stats->peak_activation_bytes) p->stats->peak_activation_bytes = bytes;
}

/* ---- one micro-batch forward and backward ---- */

static bt_tensor *activation_buffer(const struct pipeline *p) {
    return bt_empty(p->options.act_ndim, p->options.act_shape, BT_F32, bt_cpu());
}

/* A persistent buffer of the activation's shape for a gradient to send. */
static bt_tensor *send_buffer(struct pipeline *p) {
    if (p->n_buffers) return p->buffers[--p->n_buffers];
    bt_tensor *t = bt_tensor_new(p->options.act_ndim, p->options.act_shape, BT_F32, bt_cpu());
    if (!t) bt_error("pipeline: out of memory for a gradient buffer");
    return t;
}

static bool is_last(const struct pipeline *p) {
    return p->stage == p->stages - 1;
}

static bt_status forward(struct pipeline *p, int64_t i, pp_forward_fn fn, void *ctx) {
    struct micro *mb = &p->micro[i];
    if (!(mb->frame = frame_acquire(p))) return BT_ERR;
    p->in_flight++;
    struct bt_frame *was = bt_frame_enter(mb->frame);
    bt_status st = BT_ERR;
    if (p->stage > 0) {
        if (!(mb->in = activation_buffer(p)) ||
            comm_recv(p->group, mb->in, p->stage - 1, TAG_ACTIVATION) != BT_OK)
            goto done;
        bt_requires_grad_(mb->in, true);
    }
    double t0 = now_seconds();
    mb->out = fn(ctx, i, mb->in);
    p->stats->compute_seconds += now_seconds() - t0;
    if (!mb->out) goto done;
    char a[96];
    if (is_last(p)) {
        if (bt_numel(mb->out) != 1) {
            bt_error("pipeline: the last stage returned %s for micro-batch %lld, expected its "
                     "loss (one element)",
                     bt_shape_str(mb->out, a, sizeof a), (long long)i);
            goto done;
        }
        p->stats->loss_sum += bt_item(mb->out);
    } else {
        bool same = mb->out->ndim == p->options.act_ndim && mb->out->dtype == BT_F32;
        for (int d = 0; same && d < p->options.act_ndim; d++)
            same = mb->out->shape[d] == p->options.act_shape[d];
        if (!same) {
            bt_error("pipeline: stage %d returned %s %s for micro-batch %lld, but the next stage "
                     "expects the float32 activation of the pipeline's shape",
                     p->stage, bt_dtype_name(mb->out->dtype), bt_shape_str(mb->out, a, sizeof a),
                     (long long)i);
            goto done;
        }
        if (!(mb->to_next = comm_isend(p->group, mb->out, p->stage + 1, TAG_ACTIVATION))) goto done;
    }
    note_memory(p);
    st = BT_OK;
done:
    bt_frame_enter(was);
    return st;
}

static bt_status backward(struct pipeline *p, int64_t i) {
    struct micro *mb = &p->micro[i];
    struct bt_frame *was = bt_frame_enter(mb->frame);
    bt_status st = BT_ERR;
    double t0 = now_seconds();
    if (is_last(p)) {
        if (bt_backward(mb->out) != BT_OK) goto done;
        p->stats->compute_seconds += now_seconds() - t0;
    } else {
        bt_tensor *grad = activation_buffer(p);
        if (!grad || comm_recv(p->group, grad, p->stage + 1, TAG_GRADIENT) != BT_OK) goto done;
        t0 = now_seconds();
        if (bt_backward_ex(mb->out, grad, false) != BT_OK) goto done;
        p->stats->compute_seconds += now_seconds() - t0;
        /* the next stage has used the activation: its send has completed */
        st = comm_wait(mb->to_next);
        mb->to_next = NULL;
        if (st != BT_OK) goto done;
        st = BT_ERR;
    }
    if (p->stage > 0) {
        /* a stage that did not use its input sends a zero gradient */
        bt_tensor *g = mb->in->grad ? mb->in->grad : bt_zeros_like(mb->in);
        /* copied out of the frame, so that the frame is released now, not when the previous
         * stage gets to receive it */
        if (!g || !(mb->grad_sent = send_buffer(p)) || bt_copy_(mb->grad_sent, g) != BT_OK ||
            !(mb->to_prev = comm_isend(p->group, mb->grad_sent, p->stage - 1, TAG_GRADIENT)))
            goto done;
    }
    st = BT_OK;
done:
    bt_frame_enter(was);
    if (st != BT_OK) return BT_ERR;
    frame_release(p, mb);
    return retire(p, false);
}

/* ---- schedules ---- */

bt_status pp_step(struct pipeline *p, pp_forward_fn fn, pp_last_backward_fn last_backward,
                  void *ctx, struct pp_step_stats *stats) {
    struct pp_step_stats local;
    p->stats = stats ? stats : &local;
    memset(p->stats, 0, sizeof *p->stats);
    int64_t m = p->options.microbatches, next_forward = 0;
    /* 1F1B: the stages after this one each hold one more micro-batch before the first backward
     * comes back; GPipe: all of them */
    int64_t warmup = p->options.schedule == PP_SCHEDULE_GPIPE ? m : p->stages - p->stage - 1;
    if (warmup > m) warmup = m;
    for (; next_forward < warmup; next_forward++)
        if (forward(p, next_forward, fn, ctx) != BT_OK) return BT_ERR;
    for (int64_t i = 0; i < m; i++) {
        if (next_forward < m && forward(p, next_forward++, fn, ctx) != BT_OK) return BT_ERR;
        if (i == m - 1 && last_backward) last_backward(ctx);
        if (backward(p, i) != BT_OK) return BT_ERR;
    }
    return retire(p, true);
}

bt_status pp_forward_only(struct pipeline *p, int64_t n, pp_forward_fn fn, void *ctx,
                          double *loss_sum) {
    *loss_sum = 0.0;
    struct bt_frame *f = frame_acquire(p);
    if (!f) return BT_ERR;
    bool grad_mode = bt_set_grad_enabled(false);
    struct bt_frame *was = bt_frame_enter(f);
    bt_status st = BT_OK;
    char a[96];
    for (int64_t i = 0; i < n && st == BT_OK; i++) {
        bt_tensor *in = NULL, *out;
        st = BT_ERR;
        if (p->stage > 0 && (!(in = activation_buffer(p)) ||
                             comm_recv(p->group, in, p->stage - 1, TAG_ACTIVATION) != BT_OK))
            break;
        if (!(out = fn(ctx, i, in))) break;
        if (is_last(p)) {
            if (bt_numel(out) != 1) {
                bt_error("pipeline: the last stage returned %s for evaluation micro-batch %lld, "
                         "expected its loss (one element)",
                         bt_shape_str(out, a, sizeof a), (long long)i);
                break;
            }
            *loss_sum += bt_item(out);
        } else {
            /* the next stage receives micro-batches in order, so waiting here cannot block it */
            if (comm_send(p->group, bt_contiguous(out), p->stage + 1, TAG_ACTIVATION) != BT_OK)
                break;
        }
        bt_frame_reset(f);
        st = BT_OK;
    }
    bt_frame_enter(was);
    bt_frame_reset(f);
    p->spare[p->n_spare++] = f;
    bt_set_grad_enabled(grad_mode);
    return st;
}
