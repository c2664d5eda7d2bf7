/* Token shards in llm.c's .bin format (see shard.h): opening validates the header against the file
 * size and maps the tokens read-only; writing goes to a temporary name, is fsync'd, then renamed.
 * POSIX file I/O (open/fstat/mmap/rename); the header is little-endian int32 like llm.c's. */
#include "data/shard.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define HEADER_BYTES ((int64_t)SHARD_HEADER_INTS * (int64_t)sizeof(int32_t))

/* Checks the header of `path` against its size in bytes; sets an error naming the problem. */
static bt_status header_check(const char *path, const int32_t *header, int64_t size) {
    if (header[0] != SHARD_MAGIC)
        return bt_error("%s: bad magic %d (expected %d: not an llm.c token shard)", path, header[0],
                        SHARD_MAGIC);
    if (header[1] != SHARD_VERSION)
        return bt_error("%s: unsupported version %d (expected %d: uint16 tokens)", path, header[1],
                        SHARD_VERSION);
    int64_t count = header[2];
    if (count < 0)
        return bt_error("%s: bad token count %lld in the header", path, (long long)count);
    int64_t expected = HEADER_BYTES + 2 * count;
    if (size < expected)
        return bt_error("%s: truncated: header says %lld tokens (%lld bytes) but the file is %lld "
                        "bytes",
                        path, (long long)count, (long long)expected, (long long)size);
    if (size > expected && (size - HEADER_BYTES) % 2 == 0)
        return bt_error("%s: token count mismatch: header says %lld tokens but the file holds "
                        "%lld tokens (%lld bytes, expected %lld)",
                        path, (long long)count, (long long)((size - HEADER_BYTES) / 2),
                        (long long)size, (long long)expected);
    if (size > expected)
        return bt_error("%s: extra bytes: header says %lld tokens (%lld bytes) but the file is "
                        "%lld bytes",
                        path, (long long)count, (long long)expected, (long long)size);
    return BT_OK;
}

/* Reads the 1024-byte header at the start of `fd`; a shorter file is an error naming its size. */
static bt_status read_header(int fd, const char *path, int32_t *header) {
    size_t want = (size_t)HEADER_BYTES, got = 0;
    while (got < want) {
        ssize_t r = pread(fd, (char *)header + got, want - got, (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return bt_error("%s: cannot read the header: %s", path, strerror(errno));
        if (r == 0) break;
        got += (size_t)r;
    }
    if (got < want)
        return bt_error("%s: file is %zu bytes, shorter than the %lld-byte shard header", path, got,
                        (long long)HEADER_BYTES);
    return BT_OK;
}

bt_status shard_open(struct shard *s, const char *path) {
    memset(s, 0, sizeof *s);
    int32_t header[SHARD_HEADER_INTS];
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return bt_error("%s: cannot open token shard: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0) {
        bt_error("%s: cannot stat: %s", path, strerror(errno));
        goto fail;
    }
    if (read_header(fd, path, header) != BT_OK) goto fail;
    if (header_check(path, header, (int64_t)st.st_size) != BT_OK) goto fail;
    s->map_bytes = (size_t)st.st_size;
    s->map = mmap(NULL, s->map_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    if (s->map == MAP_FAILED) {
        s->map = NULL;
        bt_error("%s: cannot map %zu bytes: %s", path, s->map_bytes, strerror(errno));
        goto fail;
    }
    s->path = strdup(path);
    if (!s->path) {
        bt_error("%s: out of memory", path);
        goto fail_map;
    }
    s->tokens = (uint16_t *)((char *)s->map + HEADER_BYTES);
    s->n_tokens = header[2];
    close(fd);
    return BT_OK;
fail_map:
    munmap(s->map, s->map_bytes);
fail:
    close(fd);
    memset(s, 0, sizeof *s);
    return BT_ERR;
}

void shard_close(struct shard *s) {
    if (!s) return;
    if (s->map) munmap(s->map, s->map_bytes);
    free(s->path);
    memset(s, 0, sizeof *s);
}

static bt_status write_all(int fd, const char *path, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return bt_error("%s: cannot write: %s", path, strerror(errno));
        p += w;
        n -= (size_t)w;
    }
    return BT_OK;
}

/* fsync the directory holding `path` so the rename itself survives a crash. */
static void sync_parent_dir(const char *path) {
    char *copy = strdup(path);
    if (!copy) return;
    int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    free(copy);
}

bt_status shard_write(const char *path, const uint16_t *tokens, int64_t n_tokens) {
    if (n_tokens < 0 || n_tokens > INT32_MAX)
        return bt_error("%s: cannot write %lld tokens (a shard holds 0 to %d)", path,
                        (long long)n_tokens, INT32_MAX);
    int32_t header[SHARD_HEADER_INTS] = {SHARD_MAGIC, SHARD_VERSION, (int32_t)n_tokens};
    size_t tmp_len = strlen(path) + 32;
    char *tmp = malloc(tmp_len);
    if (!tmp) return bt_error("%s: out of memory", path);
    snprintf(tmp, tmp_len, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        bt_error("%s: cannot create %s: %s", path, tmp, strerror(errno));
        free(tmp);
        return BT_ERR;
    }
    if (write_all(fd, path, header, sizeof header) != BT_OK) goto fail;
    if (write_all(fd, path, tokens, (size_t)n_tokens * sizeof(uint16_t)) != BT_OK) goto fail;
    if (fsync(fd) != 0) {
        bt_error("%s: fsync failed: %s", path, strerror(errno));
        goto fail;
    }
    if (close(fd) != 0) {
        fd = -1;
        bt_error("%s: close failed: %s", path, strerror(errno));
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        bt_error("%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
        goto fail;
    }
    sync_parent_dir(path);
    free(tmp);
    return BT_OK;
fail:
    if (fd >= 0) close(fd);
    unlink(tmp);
    free(tmp);
    return BT_ERR;
}
