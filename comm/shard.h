/* The one rule for splitting a tensor's rows among the ranks of a group: ceil(n / size) rows per
 * rank, in rank order, so rank 0 always holds row 0 (a 0-d tensor counts as one row) and the last
 * ranks may hold fewer or none. ZeRO-1 shards optimizer state by it (parallel/dp.c) and
 * checkpoints split the writing of replicated tensors by it (data/checkpoint_write.c). */
#ifndef BRAID_COMM_SHARD_H
#define BRAID_COMM_SHARD_H

#include <stdint.h>

/* Rows [*lo, *hi) of an n-row tensor that `rank` of `size` holds. */
static inline void comm_rows_of(int64_t n, int rank, int size, int64_t *lo, int64_t *hi) {
    int64_t chunk = (n + size - 1) / size;
    *lo = chunk * rank < n ? chunk * rank : n;
    *hi = *lo + chunk < n ? *lo + chunk : n;
}

#endif
