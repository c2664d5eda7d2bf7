/* Token shards in llm.c's .bin format: a header of 256 int32 (magic 20240520, version 1 = uint16
 * tokens, token count, the rest 0) followed by the tokens. Reading validates header and size and
 * names the file in every error. */
#ifndef BRAID_DATA_SHARD_H
#define BRAID_DATA_SHARD_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

#define SHARD_MAGIC 20240520
#define SHARD_VERSION 1
#define SHARD_HEADER_INTS 256

struct shard {
    char *path;
    uint16_t *tokens; /* mapped or loaded; read-only */
    int64_t n_tokens;
    size_t map_bytes; /* internal */
    void *map;        /* internal */
};

/* Opens and validates a shard: bad magic, unknown version, a file shorter or longer than the
 * header says, or unreadable are errors: `data/train_000000.bin: bad magic 12345 (expected
 * 20240520: not an llm.c token shard)`. */
bt_status shard_open(struct shard *s, const char *path);
void shard_close(struct shard *s);

/* Writes tokens to `path` in the shard format (to a temporary name, then renamed). */
bt_status shard_write(const char *path, const uint16_t *tokens, int64_t n_tokens);

#endif
