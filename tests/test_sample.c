/* What `braid sample` reads besides the model (launch/sample.c): the tokenizer from the text of a
 * checkpoint's /tokenizer (tokenizer_load_text, the one parser tokenizer_load also goes through).
 * The command itself is tested from the command line (tests/cli/sample.sh). */
#include <stdio.h>

#include "data/tokenizer.h"
#include "tests/gradcheck.h"

#define NAME "checkpoint ckpt/step_00000040.h5: /tokenizer"

/* The text tokenizer_save writes for tok (as a checkpoint stores it), malloc'd. */
static char *saved_yaml(const struct tokenizer *tok) {
    char dir[128], path[160];
    test_tmpdir_make(dir, sizeof dir, "sample");
    ck_assert_msg(tokenizer_save(tok, dir) == BT_OK, "%s", bt_last_error());
    snprintf(path, sizeof path, "%s/tokenizer.yaml", dir);
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    char *text = calloc(1, 1 << 16);
    size_t n = fread(text, 1, (1 << 16) - 1, f);
    fclose(f);
    ck_assert_uint_gt(n, 0);
    test_tmpdir_remove(dir);
    return text;
}

/* A char, a byte and a gpt2 tokenizer come back from their saved text and encode alike. */
START_TEST(test_tokenizer_load_text_roundtrip) {
    const char *text = "ROMEO: é\n\"quoted\" \\ 🙂";
    tokenizer_kind kinds[3] = {TOKENIZER_CHAR, TOKENIZER_BYTE, TOKENIZER_GPT2};
    for (int k = 0; k < 3; k++) {
        struct tokenizer *tok = tokenizer_create(kinds[k], text, strlen(text), NULL);
        ck_assert_msg(tok != NULL, "%s", bt_last_error());
        char *yaml = saved_yaml(tok);
        struct tokenizer *back = tokenizer_load_text(yaml, NAME, NULL);
        ck_assert_msg(back != NULL, "%s", bt_last_error());
        ck_assert_int_eq(tokenizer_kind_of(back), kinds[k]);
        ck_assert_int_eq(tokenizer_vocab_size(back), tokenizer_vocab_size(tok));
        uint16_t *a, *b;
        int64_t na, nb;
        ck_assert_int_eq(tokenizer_encode(tok, text, strlen(text), &a, &na), BT_OK);
        ck_assert_int_eq(tokenizer_encode(back, text, strlen(text), &b, &nb), BT_OK);
        ck_assert_int_eq(na, nb);
        for (int64_t i = 0; i < na; i++)
            ck_assert_int_eq(a[i], b[i]);
        free(a);
        free(b);
        free(yaml);
        tokenizer_free(back);
        tokenizer_free(tok);
    }
}
END_TEST

/* Bad text fails with the messages of tokenizer_load, naming `name` instead of a file. */
START_TEST(test_tokenizer_load_text_errors) {
    struct {
        const char *yaml, *message;
    } cases[] = {
        {"", NAME ": empty file (expected tokenizer and vocab_size)"},
        {"tokenizer: char\nvocab_size: 3\nchars: \"abc\n", NAME ":4:1: invalid YAML"},
        {"tokenizer: byte\nvocab: 256\n", NAME ":2: unknown key 'vocab'"},
        {"tokenizer: char\nvocab_size: 3\n", NAME ": missing key 'chars'"},
        {"tokenizer: char\nvocab_size: 4\nchars: \"abc\"\n",
         NAME ":2: vocab_size 4 does not match the char tokenizer's 3 tokens"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        ck_assert_ptr_null(tokenizer_load_text(cases[k].yaml, NAME, NULL));
        ck_assert_error_contains(cases[k].message);
    }
}
END_TEST

/* tokenizer_load still names the file it read, and a missing one. */
START_TEST(test_tokenizer_load_reads_the_file) {
    char dir[128];
    test_tmpdir_make(dir, sizeof dir, "sample");
    ck_assert_ptr_null(tokenizer_load(dir, NULL));
    ck_assert_error_contains("/tokenizer.yaml: cannot open: No such file or directory");
    struct tokenizer *tok = tokenizer_create(TOKENIZER_CHAR, "abc", 3, NULL);
    ck_assert_int_eq(tokenizer_save(tok, dir), BT_OK);
    struct tokenizer *back = tokenizer_load(dir, NULL);
    ck_assert_msg(back != NULL, "%s", bt_last_error());
    ck_assert_int_eq(tokenizer_vocab_size(back), 3);
    tokenizer_free(back);
    tokenizer_free(tok);
    test_tmpdir_remove(dir);
}
END_TEST

static Suite *sample_suite(void) {
    Suite *s = suite_create("sample");
    bt_suite_add(s, test_tokenizer_load_text_roundtrip);
    bt_suite_add(s, test_tokenizer_load_text_errors);
    bt_suite_add(s, test_tokenizer_load_reads_the_file);
    return s;
}

BT_TEST_MAIN(sample_suite)
