/* The pipeline scheduler (parallel/pipeline.h): GPipe and 1F1B over this rank's stage, one core
 * frame per micro-batch in flight, non-blocking sends and blocking receives between neighbours. */
#include "parallel/pipeline.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/autograd.h"
#include "core/runtime.h"

/* a message's tag: what it is, and the receiver's chunk (virtual stage) it is for */
static int tag_activation(int chunk) {
    return 1000 + 2 * chunk;
}
static int tag_gradient(int chunk) {
    return 1001 + 2 * chunk;
}

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
    int chunks;              /* virtual stages on this rank (interleaved 1F1B), >= 1 */
    struct micro *micro;     /* chunks × options.microbatches, chunk-major */
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
    int chunks = options->chunks > 1 ? options->chunks : 1, S = comm_size(group);
    if (chunks > PP_MAX_CHUNKS) {
        bt_error("pipeline: %d virtual stages per rank, at most %d", chunks, PP_MAX_CHUNKS);
        return NULL;
    }
    if (chunks > 1 && S < 2) {
        bt_error("pipeline: %d virtual stages per rank need at least 2 pipeline stages", chunks);
        return NULL;
    }
    if (chunks > 1 && (options->schedule != PP_SCHEDULE_1F1B || options->microbatches % S != 0)) {
        bt_error("pipeline: %d virtual stages per rank need the 1f1b schedule and a number of "
                 "micro-batches divisible by the %d stages (got %s and %lld)",
                 chunks, S, options->schedule == PP_SCHEDULE_1F1B ? "1f1b" : "gpipe",
                 (long long)options->microbatches);
        return NULL;
    }
    size_t n = (size_t)(options->microbatches * chunks);
    struct pipeline *p = calloc(1, sizeof *p);
    if (p) p->micro = calloc(n, sizeof *p->micro);
    if (p && p->micro) p->spare = calloc(n, sizeof *p->spare);
    if (p && p->spare) p->buffers = calloc(n, sizeof *p->buffers);
    if (!p || !p->micro || !p->spare || !p->buffers) {
        pp_free(p);
        bt_error("pipeline: out of memory for %lld micro-batches",
                 (long long)options->microbatches);
        return NULL;
    }
    p->group = group;
    p->stage = comm_rank(group);
    p->stages = S;
    p->chunks = chunks;
    p->options = *options;
    return p;
}

void pp_free(struct pipeline *p) {
    if (!p) return;
    for (int i = 0; i < p->n_spare; i++)
        bt_frame_destroy(p->spare[i]);
    for (int i = 0; i < p->n_buffers; i++)
        bt_tensor_free(p->buffers[i]);
    for (int64_t i = 0; p->micro && i < p->options.microbatches * p->chunks; i++)
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
    for (int64_t i = 0; i < p->options.microbatches * p->chunks; i++) {
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
    for (int64_t i = 0; i < p->options.microbatches * p->chunks; i++)
        if (p->micro[i].frame) bytes += bt_frame_stats(p->micro[i].frame).used;
    if (p->in_flight > p->stats->max_in_flight) p->stats->max_in_flight = p->in_flight;
    if (bytes > p->stats->peak_activation_bytes) p->stats->peak_activation_bytes = bytes;
}

/* ---- one micro-batch forward and backward ---- */

/* Messages travel over MPI on host tensors. Device activations and gradients cross through host
 * copies: NCCL's sends and receives are not grouped, so two stages sending to each other at once
 * (1F1B's steady state) would each wait for the other's receive. */
static bt_tensor *activation_buffer(const struct pipeline *p) {
    return bt_empty(p->options.act_ndim, p->options.act_shape, BT_F32, bt_cpu());
}

/* a received host tensor where the stage computes (itself on the cpu) */
static bt_tensor *on_device(const struct pipeline *p, bt_tensor *host) {
    return host ? bt_to_device(host, p->options.device) : NULL;
}

/* t as a host tensor to send (itself when it is one), a step tensor of the current frame */
static bt_tensor *on_host(bt_tensor *t) {
    return t ? bt_to_device(t, bt_cpu()) : NULL;
}

/* A persistent buffer of the activation's shape for a gradient to send. */
static bt_tensor *send_buffer(struct pipeline *p) {
    if (p->n_buffers) return p->buffers[--p->n_buffers];
    bt_tensor *t = bt_tensor_new(p->options.act_ndim, p->options.act_shape, BT_F32, bt_cpu());
    if (!t) bt_error("pipeline: out of memory for a gradient buffer");
    return t;
}

/* Chunk c of rank r is virtual stage c·S + r of S·chunks: activations go from rank r to r+1 in
 * the same chunk, and from the last rank to rank 0 in the next chunk. */
static bool is_first(const struct pipeline *p, int chunk) {
    return chunk == 0 && p->stage == 0;
}
static bool is_last(const struct pipeline *p, int chunk) {
    return chunk == p->chunks - 1 && p->stage == p->stages - 1;
}
static int next_rank(const struct pipeline *p) {
    return (p->stage + 1) % p->stages;
}
static int prev_rank(const struct pipeline *p) {
    return (p->stage + p->stages - 1) % p->stages;
}
/* the chunk of the next / previous virtual stage, on next_rank / prev_rank */
static int next_chunk(const struct pipeline *p, int chunk) {
    return p->stage == p->stages - 1 ? chunk + 1 : chunk;
}
static int prev_chunk(const struct pipeline *p, int chunk) {
    return p->stage == 0 ? chunk - 1 : chunk;
}

static struct micro *micro_of(struct pipeline *p, int chunk, int64_t i) {
    return &p->micro[(int64_t)chunk * p->options.microbatches + i];
}

static bt_status forward(struct pipeline *p, int chunk, int64_t i, pp_forward_fn fn, void *ctx) {
    struct micro *mb = micro_of(p, chunk, i);
    if (!(mb->frame = frame_acquire(p))) return BT_ERR;
    p->in_flight++;
    struct bt_frame *was = bt_frame_enter(mb->frame);
    bt_status st = BT_ERR;
    if (!is_first(p, chunk)) {
        bt_tensor *recv = activation_buffer(p);
        if (!recv || comm_recv(p->group, recv, prev_rank(p), tag_activation(chunk)) != BT_OK ||
            !(mb->in = on_device(p, recv)))
            goto done;
        bt_requires_grad_(mb->in, true);
    }
    double t0 = now_seconds();
    mb->out = fn(ctx, chunk, i, mb->in);
    p->stats->compute_seconds += now_seconds() - t0;
    if (!mb->out) goto done;
    char a[96];
    if (is_last(p, chunk)) {
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
        bt_tensor *send = on_host(mb->out); /* lives in mb's frame until the send completes */
        if (!send || !(mb->to_next = comm_isend(p->group, send, next_rank(p),
                                                tag_activation(next_chunk(p, chunk)))))
            goto done;
    }
    note_memory(p);
    st = BT_OK;
done:
    bt_frame_enter(was);
    return st;
}

static bt_status backward(struct pipeline *p, int chunk, int64_t i) {
    struct micro *mb = micro_of(p, chunk, i);
    struct bt_frame *was = bt_frame_enter(mb->frame);
    bt_status st = BT_ERR;
    double t0 = now_seconds();
    if (is_last(p, chunk)) {
        if (bt_backward(mb->out) != BT_OK) goto done;
        p->stats->compute_seconds += now_seconds() - t0;
    } else {
        bt_tensor *grad = activation_buffer(p);
        if (!grad || comm_recv(p->group, grad, next_rank(p), tag_gradient(chunk)) != BT_OK ||
            !(grad = on_device(p, grad)))
            goto done;
        t0 = now_seconds();
        if (bt_backward_ex(mb->out, grad, false) != BT_OK) goto done;
        p->stats->compute_seconds += now_seconds() - t0;
        /* the next stage has used the activation: its send has completed */
        st = comm_wait(mb->to_next);
        mb->to_next = NULL;
        if (st != BT_OK) goto done;
        st = BT_ERR;
    }
    if (!is_first(p, chunk)) {
        /* a stage that did not use its input sends a zero gradient */
        bt_tensor *g = on_host(mb->in->grad ? mb->in->grad : bt_zeros_like(mb->in));
        /* copied out of the frame, so that the frame is released now, not when the previous
         * stage gets to receive it */
        if (!g || !(mb->grad_sent = send_buffer(p)) || bt_copy_(mb->grad_sent, g) != BT_OK ||
            !(mb->to_prev = comm_isend(p->group, mb->grad_sent, prev_rank(p),
                                       tag_gradient(prev_chunk(p, chunk)))))
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

/* Interleaved 1F1B (Narayanan et al. 2021, Megatron-LM): the step's m·v forward units k run
 * in groups of S micro-batches per chunk — unit k is micro-batch (k / (S·v))·S + k % S of chunk
 * (k / S) % v — and backward unit k the same micro-batch of the chunks in reverse order. */
static void interleaved_unit(const struct pipeline *p, int64_t k, bool forward_unit, int *chunk,
                             int64_t *micro) {
    int64_t S = p->stages, v = p->chunks;
    int c = (int)((k % (S * v)) / S);
    *chunk = forward_unit ? c : (int)v - 1 - c;
    *micro = (k / (S * v)) * S + k % S;
}

bt_status pp_step(struct pipeline *p, pp_forward_fn fn, pp_last_backward_fn last_backward,
                  void *ctx, struct pp_step_stats *stats) {
    struct pp_step_stats local;
    p->stats = stats ? stats : &local;
    memset(p->stats, 0, sizeof *p->stats);
    int64_t m = p->options.microbatches, units = m * p->chunks, next_forward = 0;
    /* 1F1B: the stages after this one each hold one more micro-batch before the first backward
     * comes back (interleaved: and the other chunks' first groups); GPipe: all of them */
    int64_t warmup = p->stages - p->stage - 1;
    if (p->chunks > 1) warmup = 2 * warmup + (int64_t)(p->chunks - 1) * p->stages;
    if (p->options.schedule == PP_SCHEDULE_GPIPE || warmup > units) warmup = units;
    int chunk;
    int64_t micro;
    for (; next_forward < warmup; next_forward++) {
        interleaved_unit(p, next_forward, true, &chunk, &micro);
        if (forward(p, chunk, micro, fn, ctx) != BT_OK) return BT_ERR;
    }
    for (int64_t k = 0; k < units; k++) {
        if (next_forward < units) {
            interleaved_unit(p, next_forward++, true, &chunk, &micro);
            if (forward(p, chunk, micro, fn, ctx) != BT_OK) return BT_ERR;
        }
        if (k == units - 1 && last_backward) last_backward(ctx);
        interleaved_unit(p, k, false, &chunk, &micro);
        if (backward(p, chunk, micro) != BT_OK) return BT_ERR;
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
    for (int64_t unit = 0; unit < n * p->chunks && st == BT_OK; unit++) {
        int64_t i = unit / p->chunks; /* micro-batch after micro-batch, each through the chunks */
        int chunk = (int)(unit % p->chunks);
        bt_tensor *in = NULL, *out;
        st = BT_ERR;
        if (!is_first(p, chunk) &&
            (!(in = activation_buffer(p)) ||
             comm_recv(p->group, in, prev_rank(p), tag_activation(chunk)) != BT_OK ||
             !(in = on_device(p, in))))
            break;
        if (!(out = fn(ctx, chunk, i, in))) break;
        if (is_last(p, chunk)) {
            if (bt_numel(out) != 1) {
                bt_error("pipeline: the last stage returned %s for evaluation micro-batch %lld, "
                         "expected its loss (one element)",
                         bt_shape_str(out, a, sizeof a), (long long)i);
                break;
            }
            *loss_sum += bt_item(out);
        } else {
            /* the next stage receives micro-batches in order, so waiting here cannot block it */
            if (comm_send(p->group, on_host(bt_contiguous(out)), next_rank(p),
                          tag_activation(next_chunk(p, chunk))) != BT_OK)
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
