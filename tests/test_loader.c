/* The dataloader: deterministic sample stream, layout independence of a step's batch (DESIGN.md
 * "Data order"), every window once per epoch, targets shifted by one, and the messages of bad
 * inputs. Shards are written with shard_write into a fresh temporary directory per test. */
#define _GNU_SOURCE
#include <stdio.h>
#include <unistd.h>

#include "data/loader.h"
#include "data/shard.h"
#include "tests/gradcheck.h"

#define T 8

static char dir[64];
static char pattern[128];

static void make_dir(void) {
    test_tmpdir_make(dir, sizeof dir, "loader");
    snprintf(pattern, sizeof pattern, "%s/train_*.bin", dir);
}

static void remove_dir(void) {
    test_tmpdir_remove(dir);
}

/* Writes dir/train_<index>.bin holding tokens first, first+1, ... (mod 65536): a window's first
 * token tells where it starts. */
static void write_shard(int index, int64_t n_tokens, uint16_t first) {
    char path[128];
    uint16_t *tokens = malloc((size_t)(n_tokens ? n_tokens : 1) * sizeof *tokens);
    for (int64_t i = 0; i < n_tokens; i++)
        tokens[i] = (uint16_t)(first + i);
    snprintf(path, sizeof path, "%s/train_%06d.bin", dir, index);
    ck_assert_int_eq(shard_write(path, tokens, n_tokens), BT_OK);
    free(tokens);
}

/* Two shards: 100 tokens (12 windows of T+1 = 9 starting at 0, 8, ..., 88) and 150 tokens
 * starting at token value 1000 (18 windows at 1000, 1008, ..., 1136). */
static struct data_loader *open_two_shards(uint64_t seed, bool shuffle) {
    make_dir();
    write_shard(0, 100, 0);
    write_shard(1, 150, 1000);
    struct data_loader *dl = data_loader_open(pattern, T, seed, shuffle, 0);
    ck_assert_msg(dl != NULL, "%s", bt_last_error());
    return dl;
}

/* First tokens of samples first .. first+count-1. */
static void window_starts(struct data_loader *dl, int64_t first, int64_t count, int64_t *out) {
    bt_tensor *x, *y;
    ck_assert_int_eq(data_loader_batch(dl, first, count, &x, &y), BT_OK);
    for (int64_t b = 0; b < count; b++)
        out[b] = (int64_t)bt_get(x, b * T);
    bt_step_end();
}

static bool same_batch(struct data_loader *a, int64_t first_a, struct data_loader *b,
                       int64_t first_b, int64_t count) {
    bt_tensor *xa, *ya, *xb, *yb;
    ck_assert_int_eq(data_loader_batch(a, first_a, count, &xa, &ya), BT_OK);
    ck_assert_int_eq(data_loader_batch(b, first_b, count, &xb, &yb), BT_OK);
    bool same = memcmp(bt_data(xa), bt_data(xb), bt_nbytes(xa)) == 0 &&
                memcmp(bt_data(ya), bt_data(yb), bt_nbytes(ya)) == 0;
    bt_step_end();
    return same;
}

START_TEST(test_counts) {
    struct data_loader *dl = open_two_shards(1, true);
    ck_assert_int_eq(data_loader_windows(dl), 12 + 18);
    ck_assert_int_eq(data_loader_tokens(dl), 250);
    data_loader_close(dl);
    remove_dir();
}
END_TEST

START_TEST(test_targets_are_inputs_shifted) {
    struct data_loader *dl = open_two_shards(7, true);
    bt_tensor *x, *y;
    ck_assert_int_eq(data_loader_batch(dl, 5, 20, &x, &y), BT_OK);
    ck_assert_int_eq(x->dtype, BT_I64);
    ck_assert_int_eq(y->dtype, BT_I64);
    ck_assert_int_eq(x->ndim, 2);
    ck_assert_int_eq(x->shape[0], 20);
    ck_assert_int_eq(x->shape[1], T);
    ck_assert(bt_same_shape(x, y));
    for (int64_t b = 0; b < 20; b++) {
        double start = bt_get(x, b * T);
        ck_assert(start < 1000 ? (int64_t)start % T == 0 : ((int64_t)start - 1000) % T == 0);
        for (int64_t t = 0; t < T; t++) {
            ck_assert_double_eq(bt_get(x, b * T + t), start + t);
            ck_assert_double_eq(bt_get(y, b * T + t), start + t + 1);
        }
    }
    data_loader_close(dl);
    remove_dir();
}
END_TEST

/* _i = 0: shuffle off, 1: on. Every window exactly once in each of three epochs. */
START_TEST(test_every_window_once_per_epoch) {
    bool shuffle = _i == 1;
    struct data_loader *dl = open_two_shards(3, shuffle);
    int64_t n = data_loader_windows(dl), starts[30], first_epoch[30];
    for (int64_t epoch = 0; epoch < 3; epoch++) {
        int seen[30] = {0};
        window_starts(dl, epoch * n, n, starts);
        for (int64_t k = 0; k < n; k++) {
            int64_t w = starts[k] < 1000 ? starts[k] / T : 12 + (starts[k] - 1000) / T;
            ck_assert_int_lt(w, n);
            seen[w]++;
            if (!shuffle) ck_assert_int_eq(w, k); /* sequential, shard by shard */
        }
        for (int64_t w = 0; w < n; w++)
            ck_assert_msg(seen[w] == 1, "epoch %lld: window %lld seen %d times", (long long)epoch,
                          (long long)w, seen[w]);
        if (epoch == 0) memcpy(first_epoch, starts, sizeof starts);
        if (shuffle && epoch > 0) /* each epoch its own order */
            ck_assert(memcmp(first_epoch, starts, sizeof starts) != 0);
    }
    data_loader_close(dl);
    remove_dir();
}
END_TEST

START_TEST(test_same_seed_same_batches) {
    struct data_loader *a = open_two_shards(42, true);
    struct data_loader *b = data_loader_open(pattern, T, 42, true, 0);
    struct data_loader *c = data_loader_open(pattern, T, 43, true, 0);
    ck_assert_ptr_nonnull(b);
    ck_assert_ptr_nonnull(c);
    for (int64_t first = 0; first < 100; first += 10)
        ck_assert(same_batch(a, first, b, first, 10));
    ck_assert(!same_batch(a, 0, c, 0, 30));
    data_loader_close(a);
    data_loader_close(b);
    data_loader_close(c);
    remove_dir();
}
END_TEST

/* DESIGN.md "Data order": step s's global batch (G = dp*grad_accum*B samples from s*G) is the
 * concatenation of micro-batch m of dp rank r (B samples from s*G + (m*dp + r)*B) in (m, r)
 * order, so dp=2,grad_accum=1 and dp=1,grad_accum=2 see the same sequences. Steps run over
 * several epochs; the loaders answer out of order to exercise the permutation cache. */
START_TEST(test_batch_independent_of_layout) {
    enum { B = 4, G = 8 };
    struct data_loader *whole = open_two_shards(11, true);
    struct data_loader *ranks = data_loader_open(pattern, T, 11, true, 0);
    ck_assert_ptr_nonnull(ranks);
    int layouts[2][2] = {{2, 1}, {1, 2}}; /* {dp, grad_accum} */
    for (int64_t step = 0; step < 12; step++) {
        bt_tensor *gx, *gy;
        ck_assert_int_eq(data_loader_batch(whole, step * G, G, &gx, &gy), BT_OK);
        for (int l = 0; l < 2; l++) {
            int dp = layouts[l][0], grad_accum = layouts[l][1];
            for (int r = dp - 1; r >= 0; r--)
                for (int m = grad_accum - 1; m >= 0; m--) {
                    bt_tensor *x, *y;
                    int64_t first = step * G + (int64_t)(m * dp + r) * B;
                    ck_assert_int_eq(data_loader_batch(ranks, first, B, &x, &y), BT_OK);
                    size_t offset = (size_t)(m * dp + r) * B * T, nbytes = bt_nbytes(x);
                    ck_assert(!memcmp((int64_t *)bt_data(gx) + offset, bt_data(x), nbytes));
                    ck_assert(!memcmp((int64_t *)bt_data(gy) + offset, bt_data(y), nbytes));
                }
        }
        bt_step_end();
    }
    data_loader_close(whole);
    data_loader_close(ranks);
    remove_dir();
}
END_TEST

/* _i = 0: shuffle off, 1: on. Sample n_windows + k is epoch 1's k-th; a batch across the
 * boundary equals its two halves. */
START_TEST(test_epoch_wrap) {
    bool shuffle = _i == 1;
    struct data_loader *dl = open_two_shards(5, shuffle);
    struct data_loader *other = data_loader_open(pattern, T, 5, shuffle, 0);
    ck_assert_ptr_nonnull(other);
    int64_t n = data_loader_windows(dl), across[10], before[5], after[5];
    window_starts(dl, n - 5, 10, across);
    window_starts(other, n + 0, 5, after);
    window_starts(other, n - 5, 5, before);
    ck_assert(memcmp(across, before, sizeof before) == 0);
    ck_assert(memcmp(across + 5, after, sizeof after) == 0);
    if (!shuffle) {
        ck_assert(same_batch(dl, 0, other, n, n)); /* epochs repeat in order */
        ck_assert(same_batch(dl, 0, other, 7 * n, n));
    } else {
        ck_assert(!same_batch(dl, 0, other, n, n));
    }
    data_loader_close(dl);
    data_loader_close(other);
    remove_dir();
}
END_TEST

START_TEST(test_window_layout_at_shard_edges) {
    /* n = T+1: one window; n = 2T: still one (the second would need 2T+1); shards shorter than a
     * window add no window; windows never cross shards */
    make_dir();
    write_shard(0, T + 1, 0);
    write_shard(1, T - 3, 100);
    write_shard(2, 2 * T, 200);
    write_shard(3, 2 * T + 1, 300);
    struct data_loader *dl = data_loader_open(pattern, T, 0, false, 0);
    ck_assert_msg(dl != NULL, "%s", bt_last_error());
    ck_assert_int_eq(data_loader_windows(dl), 1 + 0 + 1 + 2);
    ck_assert_int_eq(data_loader_tokens(dl), (T + 1) + (T - 3) + 2 * T + (2 * T + 1));
    int64_t starts[4];
    window_starts(dl, 0, 4, starts);
    ck_assert_int_eq(starts[0], 0);
    ck_assert_int_eq(starts[1], 200);
    ck_assert_int_eq(starts[2], 300);
    ck_assert_int_eq(starts[3], 300 + T);
    data_loader_close(dl);
    remove_dir();
}
END_TEST

START_TEST(test_token_beyond_vocab_is_named) {
    make_dir();
    write_shard(0, 50, 0);
    char path[128], want[256];
    uint16_t tokens[40];
    for (int i = 0; i < 40; i++)
        tokens[i] = (uint16_t)(i == 17 ? 300 : i);
    snprintf(path, sizeof path, "%s/train_000001.bin", dir);
    ck_assert_int_eq(shard_write(path, tokens, 40), BT_OK);
    ck_assert_ptr_null(data_loader_open(pattern, T, 0, true, 256));
    snprintf(want, sizeof want, "%s: token 300 at position 17 is >= model.vocab_size 256", path);
    ck_assert_error_contains(want);
    struct data_loader *dl = data_loader_open(pattern, T, 0, true, 301); /* 300 < 301 */
    ck_assert_ptr_nonnull(dl);
    data_loader_close(dl);
    remove_dir();
}
END_TEST

START_TEST(test_no_matching_files) {
    make_dir();
    char want[256];
    ck_assert_ptr_null(data_loader_open(pattern, T, 0, true, 0));
    snprintf(want, sizeof want, "no files match '%s'", pattern);
    ck_assert_error_contains(want);
    remove_dir();
}
END_TEST

START_TEST(test_too_short_data) {
    make_dir();
    write_shard(0, T, 0); /* one token short of a window */
    write_shard(1, 5, 0);
    char want[256];
    ck_assert_ptr_null(data_loader_open(pattern, T, 0, true, 0));
    snprintf(want, sizeof want,
             "'%s' has %d tokens in 2 shard(s), the longest %d: a window needs "
             "seq_len+1 = %d tokens in one shard",
             pattern, T + 5, T, T + 1);
    ck_assert_error_contains(want);
    remove_dir();
}
END_TEST

START_TEST(test_bad_shard_and_arguments) {
    make_dir();
    write_shard(0, 100, 0);
    char path[128];
    snprintf(path, sizeof path, "%s/train_000001.bin", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("not a shard", f);
    fclose(f);
    ck_assert_ptr_null(data_loader_open(pattern, T, 0, true, 0));
    ck_assert_error_contains(path); /* shard_open's message names the file */
    unlink(path);
    ck_assert_ptr_null(data_loader_open(pattern, 0, 0, true, 0));
    ck_assert_error_contains("seq_len must be positive, got 0");
    struct data_loader *dl = data_loader_open(pattern, T, 0, true, 0);
    ck_assert_ptr_nonnull(dl);
    bt_tensor *x, *y;
    ck_assert_int_eq(data_loader_batch(dl, -1, 2, &x, &y), BT_ERR);
    ck_assert_error_contains("first must be >= 0 and count > 0");
    ck_assert_int_eq(data_loader_batch(dl, 0, 0, &x, &y), BT_ERR);
    ck_assert_error_contains("first must be >= 0 and count > 0");
    data_loader_close(dl);
    remove_dir();
}
END_TEST

static Suite *loader_suite(void) {
    Suite *s = suite_create("loader");
    bt_suite_add(s, test_counts);
    bt_suite_add(s, test_targets_are_inputs_shifted);
    bt_suite_add_loop(s, test_every_window_once_per_epoch, 0, 2);
    bt_suite_add(s, test_same_seed_same_batches);
    bt_suite_add(s, test_batch_independent_of_layout);
    bt_suite_add_loop(s, test_epoch_wrap, 0, 2);
    bt_suite_add(s, test_window_layout_at_shard_edges);
    bt_suite_add(s, test_token_beyond_vocab_is_named);
    bt_suite_add(s, test_no_matching_files);
    bt_suite_add(s, test_too_short_data);
    bt_suite_add(s, test_bad_shard_and_arguments);
    return s;
}

BT_TEST_MAIN(loader_suite)
