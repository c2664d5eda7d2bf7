/* The dataloader (data/loader.h) over llm.c token shards (data/shard.h). Windows are fixed: shard i
 * of n_i tokens holds windows starting at k*T for k >= 0 while k*T + T + 1 <= n_i (T+1 tokens each;
 * consecutive windows share one token; windows never cross shards; a shard's tail shorter than a
 * window is unused). They are numbered shard by shard in name order. Epoch e visits every window
 * once: in that order when shuffle is off, else in a Fisher-Yates permutation drawn from the
 * counter-based bt_rng_uniform_at(seed ^ mix(e), i), the same on every machine. There is no
 * per-epoch shift of window starts: it would make the window count depend on the epoch and the
 * sample -> (epoch, position) map no longer O(1). */
#include "data/loader.h"

#include <glob.h>
#include <stdlib.h>
#include <string.h>

#include "data/shard.h"

struct data_loader {
    char *pattern;
    int64_t T; /* seq_len */
    uint64_t seed;
    bool shuffle;
    int n_shards;
    struct shard *shards;
    int64_t *first_window; /* (n_shards + 1): windows of shard i are first_window[i] .. [i+1]-1 */
    int64_t n_windows;
    int64_t n_tokens;
    int64_t perm_epoch; /* epoch whose permutation `perm` holds; -1: none */
    int64_t *perm;      /* (n_windows) window of each position of that epoch */
};

/* splitmix64's finalizer: spreads the epoch number over all 64 bits of the permutation seed */
static uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform integer in [0, n) from counters 2i and 2i+1 of the stream: 48 random bits, so the
 * bias is below n / 2^48 even for billions of windows. */
static int64_t uniform_below(uint64_t seed, uint64_t i, int64_t n) {
    double hi = bt_rng_uniform_at(seed, 2 * i), lo = bt_rng_uniform_at(seed, 2 * i + 1);
    double u = hi + lo / 16777216.0; /* [0, 1), 48 bits, exact in a double */
    int64_t j = (int64_t)(u * (double)n);
    return j < n ? j : n - 1;
}

static void make_permutation(struct data_loader *dl, int64_t epoch) {
    int64_t n = dl->n_windows;
    uint64_t seed = dl->seed ^ mix64((uint64_t)epoch);
    for (int64_t i = 0; i < n; i++)
        dl->perm[i] = i;
    for (int64_t i = n - 1; i > 0; i--) { /* Fisher-Yates: position i takes one of 0..i */
        int64_t j = uniform_below(seed, (uint64_t)i, i + 1);
        int64_t tmp = dl->perm[i];
        dl->perm[i] = dl->perm[j];
        dl->perm[j] = tmp;
    }
    dl->perm_epoch = epoch;
}

/* ---- opening ---- */

static int compare_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* glob(3), sorted by byte order so the order is the same under every locale */
static bt_status match_files(const char *pattern, glob_t *g) {
    int rc = glob(pattern, 0, NULL, g);
    if (rc == GLOB_NOMATCH) return bt_error("no files match '%s'", pattern);
    if (rc != 0) {
        globfree(g);
        return bt_error("cannot expand '%s' (%s)", pattern,
                        rc == GLOB_NOSPACE ? "out of memory" : "read error");
    }
    qsort(g->gl_pathv, g->gl_pathc, sizeof *g->gl_pathv, compare_names);
    return BT_OK;
}

static bt_status check_vocab(const struct shard *s, int64_t vocab_size) {
    for (int64_t i = 0; i < s->n_tokens; i++)
        if (s->tokens[i] >= vocab_size)
            return bt_error("%s: token %u at position %lld is >= model.vocab_size %lld", s->path,
                            (unsigned)s->tokens[i], (long long)i, (long long)vocab_size);
    return BT_OK;
}

/* Opens every matched shard and numbers their windows. */
static bt_status open_shards(struct data_loader *dl, const glob_t *g, int64_t vocab_size) {
    int64_t T = dl->T, longest = 0;
    dl->shards = calloc(g->gl_pathc, sizeof *dl->shards);
    dl->first_window = calloc(g->gl_pathc + 1, sizeof *dl->first_window);
    if (!dl->shards || !dl->first_window) return bt_error("out of memory");
    for (size_t i = 0; i < g->gl_pathc; i++) {
        struct shard *s = &dl->shards[i];
        if (shard_open(s, g->gl_pathv[i]) != BT_OK) return BT_ERR;
        dl->n_shards++;
        if (vocab_size > 0 && check_vocab(s, vocab_size) != BT_OK) return BT_ERR;
        int64_t windows = s->n_tokens >= T + 1 ? (s->n_tokens - 1) / T : 0;
        dl->first_window[i + 1] = dl->first_window[i] + windows;
        dl->n_tokens += s->n_tokens;
        if (s->n_tokens > longest) longest = s->n_tokens;
    }
    dl->n_windows = dl->first_window[g->gl_pathc];
    if (dl->n_windows == 0)
        return bt_error("'%s' has %lld tokens in %zu shard(s), the longest %lld: a window "
                        "needs seq_len+1 = %lld tokens in one shard",
                        dl->pattern, (long long)dl->n_tokens, g->gl_pathc, (long long)longest,
                        (long long)(T + 1));
    return BT_OK;
}

struct data_loader *data_loader_open(const char *pattern, int64_t seq_len, uint64_t seed,
                                     bool shuffle, int64_t vocab_size) {
    glob_t g;
    memset(&g, 0, sizeof g);
    if (seq_len <= 0) {
        bt_error("seq_len must be positive, got %lld", (long long)seq_len);
        return NULL;
    }
    if (match_files(pattern, &g) != BT_OK) return NULL;
    struct data_loader *dl = calloc(1, sizeof *dl);
    if (!dl || !(dl->pattern = strdup(pattern))) {
        bt_error("out of memory");
        goto fail;
    }
    dl->T = seq_len;
    dl->seed = seed;
    dl->shuffle = shuffle;
    dl->perm_epoch = -1;
    if (open_shards(dl, &g, vocab_size) != BT_OK) goto fail;
    if (shuffle && !(dl->perm = malloc((size_t)dl->n_windows * sizeof *dl->perm))) {
        bt_error("out of memory for the permutation of %lld windows",
                 (long long)dl->n_windows);
        goto fail;
    }
    globfree(&g);
    return dl;
fail:
    data_loader_close(dl);
    globfree(&g);
    return NULL;
}

void data_loader_close(struct data_loader *dl) {
    if (!dl) return;
    for (int i = 0; i < dl->n_shards; i++)
        shard_close(&dl->shards[i]);
    free(dl->shards);
    free(dl->first_window);
    free(dl->perm);
    free(dl->pattern);
    free(dl);
}

int64_t data_loader_windows(const struct data_loader *dl) {
    return dl->n_windows;
}

int64_t data_loader_tokens(const struct data_loader *dl) {
    return dl->n_tokens;
}

/* ---- batches ---- */

/* The first token of window w: the shard holding it by binary search over first_window. */
static const uint16_t *window_tokens(const struct data_loader *dl, int64_t w) {
    int lo = 0, hi = dl->n_shards - 1;
    while (lo < hi) { /* the last shard i with first_window[i] <= w */
        int mid = lo + (hi - lo + 1) / 2;
        if (dl->first_window[mid] <= w)
            lo = mid;
        else
            hi = mid - 1;
    }
    return dl->shards[lo].tokens + (w - dl->first_window[lo]) * dl->T;
}

/* The window of global sample g. */
static int64_t sample_window(struct data_loader *dl, int64_t g) {
    int64_t epoch = g / dl->n_windows, position = g % dl->n_windows;
    if (!dl->shuffle) return position;
    if (epoch != dl->perm_epoch) make_permutation(dl, epoch);
    return dl->perm[position];
}

bt_status data_loader_batch(struct data_loader *dl, int64_t first, int64_t count,
                            bt_tensor **inputs, bt_tensor **targets) {
    int64_t T = dl->T;
    if (first < 0 || count <= 0)
        return bt_error("data_loader_batch: samples %lld..+%lld: first must be >= 0 and count > 0",
                        (long long)first, (long long)count);
    bt_tensor *x = bt_empty(BT_SHAPE(count, T), BT_I64, bt_cpu());
    bt_tensor *y = bt_empty(BT_SHAPE(count, T), BT_I64, bt_cpu());
    if (!x || !y) return BT_ERR;
    int64_t *xs = bt_data(x), *ys = bt_data(y);
    for (int64_t b = 0; b < count; b++) {
        const uint16_t *tokens = window_tokens(dl, sample_window(dl, first + b));
        for (int64_t t = 0; t < T; t++) {
            xs[b * T + t] = tokens[t];
            ys[b * T + t] = tokens[t + 1];
        }
    }
    *inputs = x;
    *targets = y;
    return BT_OK;
}
