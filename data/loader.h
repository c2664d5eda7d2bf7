/* The sharded, resumable dataloader. A glob of token shards is cut into windows of T+1 tokens; the
 * global sample stream is a pure function of (seed, shards, T, shuffle): sample g lives in epoch
 * g / n_windows, at a position of that epoch's permutation of the windows. A training step s with
 * global batch G = dp * grad_accum * B takes samples s*G .. s*G+G-1, and micro-batch m of dp rank r
 * takes the B samples starting at s*G + (m*dp + r)*B, so the batch of a step never depends on the
 * layout (DESIGN.md "Data order"), and the position to resume from is just the step. */
#ifndef BRAID_DATA_LOADER_H
#define BRAID_DATA_LOADER_H

#include <stdbool.h>
#include <stdint.h>

#include "core/tensor.h"

struct data_loader;

/* Opens every shard matching `pattern` (sorted by name), checks each token < vocab_size (when
 * vocab_size > 0) and that there is at least one window of seq_len+1 tokens. Errors name the
 * pattern or the shard. */
struct data_loader *data_loader_open(const char *pattern, int64_t seq_len, uint64_t seed,
                                     bool shuffle, int64_t vocab_size);
void data_loader_close(struct data_loader *dl);

int64_t data_loader_windows(const struct data_loader *dl); /* samples per epoch */
int64_t data_loader_tokens(const struct data_loader *dl);  /* tokens in all shards */

/* Fills inputs (count, T) and targets (count, T), step tensors of int64, with samples
 * first .. first+count-1 of the global stream. */
bt_status data_loader_batch(struct data_loader *dl, int64_t first, int64_t count,
                            bt_tensor **inputs, bt_tensor **targets);

#endif
