/* Data parallelism (DESIGN.md "Comm and parallel"): every rank of the dp group holds the model and
 * trains on its slice of the global batch; gradients are averaged over the group in buckets of
 * about `bucket_bytes`, each started (non-blocking) as soon as the backward has produced the last
 * gradient in it, so communication overlaps the rest of the backward. Parameters are bucketed in
 * reverse order, the order their gradients become final.
 *
 * ZeRO-1 (`zero1`): each rank keeps optimizer state only for its shard of every parameter — rows
 * [lo, hi) by comm_rows_of (comm/shard.h), ceil(rows / dp) each — so optimizer memory is 1/dp.
 * Buckets are then reduce-scattered (each rank receives the averaged gradient of its rows only),
 * the optimizer updates the shards, and the parameters are all-gathered back whole.
 *
 * A step: zero the gradients, run the micro-batches, calling dp_arm() before the backward of the
 * last one (with gradient accumulation only the last reduces), then dp_finish(), the clip, the
 * optimizer (over dp_optim_params) and dp_gather_params(). */
#ifndef BRAID_PARALLEL_DP_H
#define BRAID_PARALLEL_DP_H

#include <stdbool.h>
#include <stdint.h>

#include "comm/comm.h"
#include "core/nn.h"

struct dp_options {
    int64_t bucket_bytes; /* target bucket size; <= 0: 25 MB (PyTorch DDP's default) */
    bool zero1;
};

struct dp_stats {
    int64_t buckets;       /* in the layout */
    int64_t bytes_reduced; /* per step, by this rank */
    double wait_seconds;   /* of the last step: time dp_finish spent waiting for communication */
};

struct dp;

/* A data-parallel wrapper of params (the model's parameters: float32, persistent, the same list in
 * the same order on every rank) over `group`. NULL with a message on error. */
struct dp *dp_create(struct comm *group, const struct nn_param_list *params,
                     const struct dp_options *options);
void dp_free(struct dp *d);

/* The parameters the optimizer updates: params itself, or with ZeRO-1 this rank's shards (aliases
 * of the parameters' rows, whose .grad receive the reduce-scattered gradients), and their first
 * rows in the full parameters (for checkpoints: struct ckpt_layout.opt_row0). */
const struct nn_param_list *dp_optim_params(const struct dp *d);
const int64_t *dp_optim_row0(const struct dp *d); /* NULL without ZeRO-1 */

/* Fills every parameter's gradient with zeros (the full ones, and with ZeRO-1 the shard ones). */
void dp_zero_grad(struct dp *d);
/* The next backward reduces: buckets start as their gradients become final. */
void dp_arm(struct dp *d);
/* After that backward: starts any bucket that has not started, waits for all and leaves the
 * averaged gradients in the parameters' .grad (with ZeRO-1: in the shards' .grad). */
bt_status dp_finish(struct dp *d);
/* Global gradient norm over the group of the optimizer's gradients, clipped like
 * torch.nn.utils.clip_grad_norm_ when max_norm is finite; -1 on error. */
double dp_clip_grad_norm(struct dp *d, double max_norm);
/* ZeRO-1: all-gathers every parameter's rows after the optimizer step (nothing otherwise). */
bt_status dp_gather_params(struct dp *d);

const struct dp_stats *dp_stats(const struct dp *d);

#endif
