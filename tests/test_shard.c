/* Token shards (llm.c .bin): write/read round trip, and every malformed file is refused with a
 * message naming the file and the problem. Files live in a fresh directory under /tmp. */
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/shard.h"
#include "tests/gradcheck.h"

static char dir[64];

static void dir_make(void) {
    test_tmpdir_make(dir, sizeof dir, "test_shard");
}

static void dir_remove(void) {
    test_tmpdir_remove(dir);
}

/* Writes a shard file by hand: a header with the given fields, then `n_written` tokens, then
 * `extra` stray bytes. Returns its path (static buffer). */
static const char *write_raw(int32_t magic, int32_t version, int32_t count, int32_t n_written,
                             int extra) {
    static char path[128];
    snprintf(path, sizeof path, "%s/raw.bin", dir);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    int32_t header[SHARD_HEADER_INTS] = {magic, version, count};
    fwrite(header, sizeof header, 1, f);
    for (int32_t i = 0; i < n_written; i++) {
        uint16_t t = (uint16_t)(i * 7);
        fwrite(&t, sizeof t, 1, f);
    }
    for (int i = 0; i < extra; i++)
        fputc('x', f);
    fclose(f);
    return path;
}

/* Opening `path` fails with a message naming the path and containing `problem`. */
static void assert_open_fails(const char *path, const char *problem) {
    struct shard s;
    ck_assert_int_eq(shard_open(&s, path), BT_ERR);
    ck_assert_ptr_null(s.tokens);
    const char *msg = bt_last_error();
    ck_assert_msg(strstr(msg, path) != NULL, "error does not name %s: \"%s\"", path, msg);
    ck_assert_error_contains(problem);
}

START_TEST(test_write_read_roundtrip) {
    dir_make();
    uint16_t tokens[1000];
    for (int i = 0; i < 1000; i++)
        tokens[i] = (uint16_t)(i * 65 + 3);
    char path[128];
    snprintf(path, sizeof path, "%s/train_000000.bin", dir);
    ck_assert_int_eq(shard_write(path, tokens, 1000), BT_OK);
    struct shard s;
    ck_assert_int_eq(shard_open(&s, path), BT_OK);
    ck_assert_int_eq(s.n_tokens, 1000);
    ck_assert_str_eq(s.path, path);
    ck_assert_mem_eq(s.tokens, tokens, sizeof tokens);
    shard_close(&s);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(st.st_size, 1024 + 2000);
    /* the header as llm.c reads it */
    FILE *f = fopen(path, "rb");
    int32_t header[SHARD_HEADER_INTS];
    ck_assert_int_eq(fread(header, sizeof header, 1, f), 1);
    fclose(f);
    ck_assert_int_eq(header[0], 20240520);
    ck_assert_int_eq(header[1], 1);
    ck_assert_int_eq(header[2], 1000);
    ck_assert_int_eq(header[3], 0);
    ck_assert_int_eq(header[255], 0);
    /* an empty shard, and overwriting an existing one */
    ck_assert_int_eq(shard_write(path, tokens, 0), BT_OK);
    ck_assert_int_eq(shard_open(&s, path), BT_OK);
    ck_assert_int_eq(s.n_tokens, 0);
    shard_close(&s);
    dir_remove();
}
END_TEST

START_TEST(test_write_leaves_no_temporary) {
    dir_make();
    uint16_t tokens[3] = {1, 2, 3};
    char path[128];
    snprintf(path, sizeof path, "%s/val_000000.bin", dir);
    ck_assert_int_eq(shard_write(path, tokens, 3), BT_OK);
    char tmp[160];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    ck_assert_int_ne(access(tmp, F_OK), 0);
    dir_remove();
}
END_TEST

START_TEST(test_write_unwritable_names_path) {
    uint16_t tokens[3] = {1, 2, 3};
    const char *path = "/nonexistent_braid_dir/train_000000.bin";
    ck_assert_int_eq(shard_write(path, tokens, 3), BT_ERR);
    ck_assert_error_contains("/nonexistent_braid_dir/train_000000.bin: cannot create");
}
END_TEST

START_TEST(test_bad_magic) {
    dir_make();
    const char *path = write_raw(12345, 1, 10, 10, 0);
    assert_open_fails(path, "bad magic 12345 (expected 20240520: not an llm.c token shard)");
    dir_remove();
}
END_TEST

START_TEST(test_wrong_version) {
    dir_make();
    const char *path = write_raw(SHARD_MAGIC, 2, 10, 10, 0);
    assert_open_fails(path, "unsupported version 2 (expected 1: uint16 tokens)");
    dir_remove();
}
END_TEST

START_TEST(test_short_file) {
    dir_make();
    const char *path = write_raw(SHARD_MAGIC, 1, 100, 90, 0);
    assert_open_fails(path, "truncated: header says 100 tokens (1224 bytes) but the file is 1204 "
                            "bytes");
    /* shorter than the header itself */
    FILE *f = fopen(path, "wb");
    fputs("0123456789", f);
    fclose(f);
    assert_open_fails(path, "file is 10 bytes, shorter than the 1024-byte shard header");
    dir_remove();
}
END_TEST

START_TEST(test_extra_bytes) {
    dir_make();
    const char *path = write_raw(SHARD_MAGIC, 1, 10, 10, 1);
    assert_open_fails(path, "extra bytes: header says 10 tokens (1044 bytes) but the file is 1045 "
                            "bytes");
    dir_remove();
}
END_TEST

START_TEST(test_count_mismatch) {
    dir_make();
    const char *path = write_raw(SHARD_MAGIC, 1, 90, 100, 0);
    assert_open_fails(path, "token count mismatch: header says 90 tokens but the file holds 100 "
                            "tokens (1224 bytes, expected 1204)");
    path = write_raw(SHARD_MAGIC, 1, -5, 0, 0);
    assert_open_fails(path, "bad token count -5");
    dir_remove();
}
END_TEST

START_TEST(test_missing_file) {
    assert_open_fails("/nonexistent_braid_dir/train_000000.bin",
                      "cannot open token shard: No such file or directory");
}
END_TEST

static Suite *shard_suite(void) {
    Suite *s = suite_create("shard");
    bt_suite_add(s, test_write_read_roundtrip);
    bt_suite_add(s, test_write_leaves_no_temporary);
    bt_suite_add(s, test_write_unwritable_names_path);
    bt_suite_add(s, test_bad_magic);
    bt_suite_add(s, test_wrong_version);
    bt_suite_add(s, test_short_file);
    bt_suite_add(s, test_extra_bytes);
    bt_suite_add(s, test_count_mismatch);
    bt_suite_add(s, test_missing_file);
    return s;
}

BT_TEST_MAIN(shard_suite)
