/* Pipeline parallelism (DESIGN.md "Comm and parallel"): the model's layers are cut into contiguous
 * stages, one per rank of the pp group, and a step's micro-batches flow through them — activations
 * forward by send/recv, their gradients backward. This file is the scheduler: it runs one step of
 * this rank's stage over the step's micro-batches in the order of the schedule, moving tensors
 * between neighbouring stages. The stage's own computation is a callback (the model lives above
 * parallel/). docs/pp.md.
 *
 * Schedules (stage s of S, m micro-batches; F = forward, B = backward of one micro-batch):
 *  - GPipe (Huang et al. 2019): F0 F1 ... F(m-1), then B0 B1 ... B(m-1); every micro-batch's
 *    activations are alive at once.
 *  - 1F1B (Narayanan et al. 2021, PipeDream-Flush): S-s-1 warm-up forwards, then one forward and
 *    one backward alternately, then the remaining backwards; at most S-s micro-batches are in
 *    flight on stage s, so activation memory is bounded by the number of stages.
 *  - Interleaved 1F1B (the same paper, Megatron-LM): each rank holds v chunks of the model
 *    (virtual stages), which divides the bubble by v for v times the point-to-point messages.
 * Both run the backwards in micro-batch order, so parameter gradients accumulate in the order of
 * single-rank gradient accumulation. Each micro-batch's activations live in a core frame
 * (core/runtime.h) released as soon as its backward has run (the gradient sent back is copied to
 * a persistent buffer first, so the frame need not wait for the previous stage to receive it).
 * Sends are non-blocking (a stage computes while they travel, and neighbours never wait on each
 * other's sends); receives block. */
#ifndef BRAID_PARALLEL_PIPELINE_H
#define BRAID_PARALLEL_PIPELINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "comm/comm.h"
#include "core/tensor.h"

typedef enum { PP_SCHEDULE_1F1B = 0, PP_SCHEDULE_GPIPE } pp_schedule;

#define PP_MAX_CHUNKS 16 /* virtual stages per rank */

/* "1f1b" / "gpipe" (parallel.schedule) -> *out; false with a message naming the value otherwise */
bool pp_schedule_parse(const char *name, pp_schedule *out);

struct pp_options {
    pp_schedule schedule;
    int64_t microbatches; /* m >= 1 */
    /* virtual stages per rank (interleaved 1F1B, parallel.virtual_stages): the model is cut into
     * S·v stages and rank r holds chunks c = 0..v-1, virtual stages c·S + r; needs S >= 2, the
     * 1F1B schedule and m divisible by S; at most PP_MAX_CHUNKS. 0 or 1: one stage per rank */
    int chunks;
    /* the activation sent from each stage to the next, float32: (B, T, C), or (B, T/tp, C) under
     * sequence parallelism; the same on every stage */
    int act_ndim;
    int64_t act_shape[BT_MAX_DIMS];
    /* where the stages compute ({0}: the cpu); messages cross through host copies */
    bt_device device;
};

/* The computation of this rank's chunk `chunk` (0 without interleaving) for one micro-batch, run
 * in the micro-batch's frame with grad mode on. `in` is NULL on the first virtual stage (the
 * callback loads micro-batch `micro` itself), else the activation received from the previous
 * one, a leaf that requires grad. Returns the activation for the next stage (act_shape), or on the
 * last virtual stage the micro-batch's loss, 0-d, scaled as it should enter the step's gradient
 * (e.g. by 1/m). NULL with a message on error. */
typedef bt_tensor *(*pp_forward_fn)(void *ctx, int chunk, int64_t micro, bt_tensor *in);
/* Called just before the backward of the step's last micro-batch (data parallelism arms its
 * gradient reduction there); may be NULL. */
typedef void (*pp_last_backward_fn)(void *ctx);

struct pp_step_stats {
    double loss_sum;              /* last stage: the sum of the micro-batches' returned losses */
    int64_t max_in_flight;        /* most micro-batches whose activations were alive at once */
    size_t peak_activation_bytes; /* most step memory held by those micro-batches at once */
    double compute_seconds;       /* in the forward callbacks and the backwards, not waiting */
};

struct pipeline;

/* A scheduler for this rank's stage (comm_rank(group)) of comm_size(group) stages. NULL with a
 * message on bad options. */
struct pipeline *pp_create(struct comm *group, const struct pp_options *options);
void pp_free(struct pipeline *p);

/* One step: every micro-batch forward and backward through this stage, per the schedule;
 * gradients accumulate into the parameters' .grad. Collective over the group: every stage calls
 * it with the same options. stats may be NULL. On error the pipeline's other stages may be left
 * waiting: the caller ends the job (comm_abort), as for any failure inside a collective. */
bt_status pp_step(struct pipeline *p, pp_forward_fn forward, pp_last_backward_fn last_backward,
                  void *ctx, struct pp_step_stats *stats);

/* Forward only, without autograd (evaluation): micro-batches 0 .. n-1 through this stage in
 * order, each one's frame released once its activation has left. On the last stage *loss_sum is
 * the sum of the returned losses (0 elsewhere). Collective over the group like pp_step; n may
 * differ from the options' micro-batch count. */
bt_status pp_forward_only(struct pipeline *p, int64_t n, pp_forward_fn forward, void *ctx,
                          double *loss_sum);

#endif
