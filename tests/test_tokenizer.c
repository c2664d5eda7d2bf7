/* Tokenizers: byte and char round trips and vocabularies, GPT-2 encodings checked against fixed ids
 * from an independent reference (tests/reference/gpt2_encode.py), tokenizer.yaml save/load, and the
 * error messages for unknown characters, invalid UTF-8 and damaged files. */
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/tokenizer.h"
#include "tests/gradcheck.h"

static char dir[64];

static void dir_make(void) {
    test_tmpdir_make(dir, sizeof dir, "test_tok");
}

static void dir_remove(void) {
    test_tmpdir_remove(dir);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static char *read_text(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    ck_assert_int_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* Encodes and decodes `text` and checks the round trip; returns the ids (caller frees). */
static uint16_t *roundtrip(const struct tokenizer *tok, const char *text, size_t len, int64_t *n) {
    uint16_t *ids;
    ck_assert_msg(tokenizer_encode(tok, text, len, &ids, n) == BT_OK, "encode: %s",
                  bt_last_error());
    char *back;
    ck_assert_msg(tokenizer_decode(tok, ids, *n, &back) == BT_OK, "decode: %s", bt_last_error());
    ck_assert_msg(strlen(back) == len && !memcmp(back, text, len),
                  "round trip of \"%s\" gave \"%s\"", text, back);
    free(back);
    return ids;
}

static void assert_ids(const uint16_t *got, int64_t n, const uint16_t *want, int64_t n_want,
                       const char *text) {
    ck_assert_msg(n == n_want, "\"%s\": %lld ids, expected %lld", text, (long long)n,
                  (long long)n_want);
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(got[i] == want[i], "\"%s\": id %lld is %u, expected %u", text, (long long)i,
                      got[i], want[i]);
}

START_TEST(test_byte_roundtrip) {
    struct tokenizer *tok = tokenizer_create(TOKENIZER_BYTE, NULL, 0, NULL);
    ck_assert_int_eq(tokenizer_vocab_size(tok), 256);
    ck_assert_int_eq(tokenizer_kind_of(tok), TOKENIZER_BYTE);
    char text[256];
    for (int i = 0; i < 255; i++)
        text[i] = (char)(i + 1); /* every byte but NUL, invalid UTF-8 included */
    text[255] = '\0';
    int64_t n;
    uint16_t *ids = roundtrip(tok, text, 255, &n);
    ck_assert_int_eq(n, 255);
    ck_assert_int_eq(ids[0], 1);
    ck_assert_int_eq(ids[254], 255);
    free(ids);
    uint16_t bad[2] = {65, 300};
    char *out;
    ck_assert_int_eq(tokenizer_decode(tok, bad, 2, &out), BT_ERR);
    ck_assert_error_contains(
        "byte tokenizer: id 300 at position 1 is out of range (vocab size 256)");
    tokenizer_free(tok);
}
END_TEST

START_TEST(test_char_vocab_of_known_string) {
    const char *text = "hello world";
    struct tokenizer *tok = tokenizer_create(TOKENIZER_CHAR, text, strlen(text), NULL);
    ck_assert_int_eq(tokenizer_vocab_size(tok), 8); /* " dehlorw" */
    int64_t n;
    uint16_t *ids = roundtrip(tok, "hello", 5, &n);
    uint16_t want[] = {3, 2, 4, 4, 5};
    assert_ids(ids, n, want, 5, "hello");
    free(ids);
    tokenizer_free(tok);
    /* code point order, like Python's sorted(set(text)): ' ' h l o é 你 🙂 */
    const char *uni = "héllo 你🙂";
    tok = tokenizer_create(TOKENIZER_CHAR, uni, strlen(uni), NULL);
    ck_assert_int_eq(tokenizer_vocab_size(tok), 7);
    ids = roundtrip(tok, uni, strlen(uni), &n);
    uint16_t want_uni[] = {1, 4, 2, 2, 3, 0, 5, 6};
    assert_ids(ids, n, want_uni, 8, uni);
    free(ids);
    tokenizer_free(tok);
}
END_TEST

START_TEST(test_char_roundtrip_tinyshakespeare) {
    size_t len;
    char *text = read_text(BRAID_ASSET_DIR "/tinyshakespeare.txt", &len);
    struct tokenizer *tok = tokenizer_create(TOKENIZER_CHAR, text, len, NULL);
    ck_assert_int_eq(tokenizer_vocab_size(tok), 65); /* as nanoGPT's shakespeare_char */
    int64_t n;
    uint16_t *ids = roundtrip(tok, text, len, &n);
    ck_assert_int_eq(n, 1115394);
    uint16_t first[] = {18, 47, 56, 57, 58, 1, 15, 47, 58, 47, 64, 43, 52, 10}; /* First Citizen: */
    assert_ids(ids, 14, first, 14, "First Citizen:");
    free(ids);
    tokenizer_free(tok);
    free(text);
}
END_TEST

START_TEST(test_char_unknown_character) {
    struct tokenizer *tok = tokenizer_create(TOKENIZER_CHAR, "abc", 3, NULL);
    uint16_t *ids;
    int64_t n;
    ck_assert_int_eq(tokenizer_encode(tok, "abé", strlen("abé"), &ids, &n), BT_ERR);
    ck_assert_ptr_null(ids);
    ck_assert_error_contains(
        "char tokenizer: character 'é' (U+00E9) at byte offset 2 is not in the "
        "vocabulary (3 characters)");
    ck_assert_int_eq(tokenizer_encode(tok, "cab\n", 4, &ids, &n), BT_ERR);
    ck_assert_error_contains("character U+000A at byte offset 3 is not in the vocabulary");
    tokenizer_free(tok);
}
END_TEST

START_TEST(test_invalid_utf8) {
    ck_assert_ptr_null(tokenizer_create(TOKENIZER_CHAR, "ab\xff", 3, NULL));
    ck_assert_error_contains("char tokenizer: invalid UTF-8 at byte offset 2 (byte 0xFF)");
    ck_assert_ptr_null(tokenizer_create(TOKENIZER_CHAR, "", 0, NULL));
    ck_assert_error_contains("char tokenizer: the text has 0 distinct characters");
    struct tokenizer *tok = tokenizer_create(TOKENIZER_GPT2, NULL, 0, NULL);
    uint16_t *ids;
    int64_t n;
    const char *bad[] = {"Hi \xc3(", "ok \xc0\xaf", "x\xed\xa0\x80", "\xf4\x90\x80\x80",
                         "ab\xe4\xbd"};
    const char *where[] = {"offset 3 (byte 0xC3)", "offset 3 (byte 0xC0)", "offset 1 (byte 0xED)",
                           "offset 0 (byte 0xF4)", "offset 2 (byte 0xE4)"};
    for (int k = 0; k < 5; k++) {
        ck_assert_int_eq(tokenizer_encode(tok, bad[k], strlen(bad[k]), &ids, &n), BT_ERR);
        ck_assert_error_contains(where[k]);
    }
    ck_assert_int_eq(tokenizer_utf8_invalid_at("héllo 🙂", strlen("héllo 🙂")), -1);
    tokenizer_free(tok);
}
END_TEST

/* Expected ids printed by `python3 tests/reference/gpt2_encode.py` (OpenAI's encoder.py algorithm
 * with the `regex` module, reading the same data/assets/gpt2 files). */
struct gpt2_case {
    const char *text;
    uint16_t ids[16];
    int n;
};

static const struct gpt2_case GPT2_CASES[] = {
    {"Hello world", {15496, 995}, 2},
    {"I'm don't they'll we've", {40, 1101, 836, 470, 484, 1183, 356, 1053}, 8},
    {"12345 3.14", {10163, 2231, 513, 13, 1415}, 5},
    {"héllo wörld 你好 🙂",
     {71, 2634, 18798, 266, 30570, 335, 220, 19526, 254, 25001, 121, 32485},
     12},
    {"a    b", {64, 220, 220, 220, 275}, 5},
    {"\n\n\nx", {628, 198, 87}, 3},
    {"trailing   ", {9535, 4386, 220, 220, 220}, 5},
    {"<|endoftext|>", {27, 91, 437, 1659, 5239, 91, 29}, 7}, /* plain text, not id 50256 */
    {"She said: \"Hi!!\"\tthen\r\n  left...  ",
     {3347, 531, 25, 366, 17250, 37160, 197, 8524, 201, 198, 220, 1364, 986, 220, 220},
     15},
    {"I'M DON'T don't've", {40, 6, 44, 23917, 6, 51, 836, 470, 1053}, 9},
    {"   leading", {220, 220, 3756}, 3},
    {"x\n\n  \n y", {87, 628, 220, 220, 198, 331}, 6},
    {"e\u0301 \u0967\u0968 \u0663", {68, 136, 223, 220, 24231, 100, 24231, 101, 18923, 96}, 10},
    /* U+180E is not white space for Python's regex module (nor tiktoken), though PCRE2's \s is */
    {"x \u180e y\u00a0\u2028z", {87, 28053, 254, 236, 331, 1849, 447, 101, 89}, 9},
};

START_TEST(test_gpt2_known_encodings) {
    struct tokenizer *tok = tokenizer_create(TOKENIZER_GPT2, NULL, 0, NULL);
    ck_assert_msg(tok != NULL, "%s", bt_last_error());
    ck_assert_int_eq(tokenizer_vocab_size(tok), 50257);
    for (size_t k = 0; k < sizeof GPT2_CASES / sizeof GPT2_CASES[0]; k++) {
        const struct gpt2_case *c = &GPT2_CASES[k];
        int64_t n;
        uint16_t *ids = roundtrip(tok, c->text, strlen(c->text), &n);
        assert_ids(ids, n, c->ids, c->n, c->text);
        free(ids);
    }
    tokenizer_free(tok);
}
END_TEST

START_TEST(test_gpt2_endoftext_decodes) {
    struct tokenizer *tok = tokenizer_create(TOKENIZER_GPT2, NULL, 0, NULL);
    uint16_t ids[] = {15496, 50256, 995};
    char *text;
    ck_assert_int_eq(tokenizer_decode(tok, ids, 3, &text), BT_OK);
    ck_assert_str_eq(text, "Hello<|endoftext|> world");
    free(text);
    uint16_t bad[] = {50257};
    ck_assert_int_eq(tokenizer_decode(tok, bad, 1, &text), BT_ERR);
    ck_assert_error_contains("gpt2 tokenizer: id 50257 at position 0 is out of range (vocab size "
                             "50257)");
    tokenizer_free(tok);
}
END_TEST

START_TEST(test_gpt2_tinyshakespeare) {
    size_t len;
    char *text = read_text(BRAID_ASSET_DIR "/tinyshakespeare.txt", &len);
    struct tokenizer *tok = tokenizer_create(TOKENIZER_GPT2, NULL, 0, NULL);
    int64_t n;
    uint16_t *ids = roundtrip(tok, text, len, &n);
    ck_assert_int_eq(n, 338025); /* the reference's count (tiktoken's too) */
    /* python3 tests/reference/gpt2_encode.py data/assets/tinyshakespeare.txt */
    uint16_t first[] = {5962, 22307, 25,   198, 8421, 356, 5120, 597,
                        2252, 11,    3285, 502, 2740, 13,  198,  198};
    uint16_t last[] = {198, 1199, 2915, 14210, 1242, 23137, 13, 198};
    assert_ids(ids, 16, first, 16, "tinyshakespeare (first ids)");
    assert_ids(ids + n - 8, 8, last, 8, "tinyshakespeare (last ids)");
    free(ids);
    tokenizer_free(tok);
    free(text);
}
END_TEST

START_TEST(test_gpt2_bad_assets) {
    ck_assert_ptr_null(tokenizer_create(TOKENIZER_GPT2, NULL, 0, "/nonexistent_braid_dir"));
    ck_assert_error_contains("/nonexistent_braid_dir/encoder.json");
    dir_make();
    char path[128];
    snprintf(path, sizeof path, "%s/encoder.json", dir);
    ck_assert_int_eq(symlink(BRAID_ASSET_DIR "/gpt2/encoder.json", path), 0);
    snprintf(path, sizeof path, "%s/vocab.bpe", dir);
    write_text(path, "#version: 0.2\nĠ t\nĠt\n");
    ck_assert_ptr_null(tokenizer_create(TOKENIZER_GPT2, NULL, 0, dir));
    ck_assert_error_contains("vocab.bpe:3: expected two tokens of GPT-2's byte alphabet separated "
                             "by one space: \"Ġt\"");
    dir_remove();
}
END_TEST

START_TEST(test_kind_names) {
    tokenizer_kind kind;
    ck_assert_int_eq(tokenizer_kind_parse("gpt2", &kind), BT_OK);
    ck_assert_int_eq(kind, TOKENIZER_GPT2);
    ck_assert_str_eq(tokenizer_kind_name(TOKENIZER_CHAR), "char");
    ck_assert_int_eq(tokenizer_kind_parse("sentencepiece", &kind), BT_ERR);
    ck_assert_error_contains("unknown tokenizer 'sentencepiece' (choices: byte, char, gpt2)");
}
END_TEST

/* Saves `tok` to a fresh directory, loads it back and checks it encodes `text` the same. */
static void assert_save_load(const struct tokenizer *tok, const char *text) {
    dir_make();
    ck_assert_msg(tokenizer_save(tok, dir) == BT_OK, "%s", bt_last_error());
    struct tokenizer *back = tokenizer_load(dir, NULL);
    ck_assert_msg(back != NULL, "%s", bt_last_error());
    ck_assert_int_eq(tokenizer_kind_of(back), tokenizer_kind_of(tok));
    ck_assert_int_eq(tokenizer_vocab_size(back), tokenizer_vocab_size(tok));
    int64_t n1, n2;
    uint16_t *ids1 = roundtrip(tok, text, strlen(text), &n1);
    uint16_t *ids2 = roundtrip(back, text, strlen(text), &n2);
    assert_ids(ids2, n2, ids1, n1, text);
    free(ids1);
    free(ids2);
    tokenizer_free(back);
    dir_remove();
}

START_TEST(test_save_load_roundtrip) {
    /* characters YAML must escape or quote: quotes, backslash, control characters, '#', ':' */
    const char *text = "say \"hi\"\\ \t\n\r\x01 # a: b 'q' é 你 🙂 \u00a0\u2028\ufeff~";
    struct tokenizer *tok = tokenizer_create(TOKENIZER_CHAR, text, strlen(text), NULL);
    assert_save_load(tok, text);
    tokenizer_free(tok);
    tok = tokenizer_create(TOKENIZER_BYTE, NULL, 0, NULL);
    assert_save_load(tok, text);
    tokenizer_free(tok);
    tok = tokenizer_create(TOKENIZER_GPT2, NULL, 0, NULL);
    assert_save_load(tok, text);
    tokenizer_free(tok);
}
END_TEST

START_TEST(test_saved_yaml_reads_as_documented) {
    dir_make();
    struct tokenizer *tok = tokenizer_create(TOKENIZER_CHAR, "ba\"\n", 4, NULL);
    ck_assert_int_eq(tokenizer_save(tok, dir), BT_OK);
    char path[128];
    snprintf(path, sizeof path, "%s/tokenizer.yaml", dir);
    size_t len;
    char *yaml = read_text(path, &len);
    ck_assert_str_eq(yaml, "tokenizer: char\nvocab_size: 4\nchars: \"\\n\\\"ab\"\n");
    free(yaml);
    tokenizer_free(tok);
    dir_remove();
}
END_TEST

/* Writes `yaml` as <dir>/tokenizer.yaml; loading fails naming the file and `problem`. */
static void assert_load_fails(const char *yaml, const char *problem) {
    char path[128];
    snprintf(path, sizeof path, "%s/tokenizer.yaml", dir);
    if (yaml)
        write_text(path, yaml);
    else
        unlink(path);
    ck_assert_ptr_null(tokenizer_load(dir, NULL));
    const char *msg = bt_last_error();
    ck_assert_msg(strstr(msg, path) != NULL, "error does not name %s: \"%s\"", path, msg);
    ck_assert_error_contains(problem);
}

START_TEST(test_load_damaged_yaml) {
    dir_make();
    assert_load_fails(NULL, "tokenizer.yaml: cannot open: No such file or directory");
    assert_load_fails("", "empty file");
    assert_load_fails("tokenizer: char\nvocab_size: 3\nchars: \"abc\n", "invalid YAML");
    assert_load_fails("- byte\n", "tokenizer.yaml:1: expected a mapping");
    assert_load_fails("tokenizer: byte\nvocab: 256\n", "tokenizer.yaml:2: unknown key 'vocab'");
    assert_load_fails("tokenizer: byte\n", "missing key 'vocab_size'");
    assert_load_fails("tokenizer: bpe\nvocab_size: 256\n",
                      "tokenizer.yaml:1: unknown tokenizer 'bpe' (choices: byte, char, gpt2)");
    assert_load_fails("tokenizer: byte\nvocab_size: lots\n",
                      "tokenizer.yaml:2: vocab_size 'lots' is not a whole number");
    assert_load_fails("tokenizer: byte\nvocab_size: 255\n",
                      "tokenizer.yaml:2: vocab_size 255 does not match the byte tokenizer's 256");
    assert_load_fails("tokenizer: char\nvocab_size: 3\n", "missing key 'chars'");
    assert_load_fails("tokenizer: char\nvocab_size: 3\nchars: \"acb\"\n",
                      "tokenizer.yaml:3: chars must be in ascending code point order");
    assert_load_fails("tokenizer: char\nvocab_size: 4\nchars: \"abc\"\n",
                      "vocab_size 4 does not match the char tokenizer's 3");
    assert_load_fails("tokenizer: char\nvocab_size: 3\nchars: [a, b, c]\n",
                      "tokenizer.yaml:3: chars must be a single value");
    assert_load_fails("tokenizer: byte\ntokenizer: char\nvocab_size: 3\n",
                      "tokenizer.yaml:2: key 'tokenizer' appears twice");
    dir_remove();
}
END_TEST

static Suite *tokenizer_suite(void) {
    Suite *s = suite_create("tokenizer");
    bt_suite_add(s, test_byte_roundtrip);
    bt_suite_add(s, test_char_vocab_of_known_string);
    bt_suite_add(s, test_char_roundtrip_tinyshakespeare);
    bt_suite_add(s, test_char_unknown_character);
    bt_suite_add(s, test_invalid_utf8);
    bt_suite_add(s, test_gpt2_known_encodings);
    bt_suite_add(s, test_gpt2_endoftext_decodes);
    bt_suite_add(s, test_gpt2_tinyshakespeare);
    bt_suite_add(s, test_gpt2_bad_assets);
    bt_suite_add(s, test_kind_names);
    bt_suite_add(s, test_save_load_roundtrip);
    bt_suite_add(s, test_saved_yaml_reads_as_documented);
    bt_suite_add(s, test_load_damaged_yaml);
    return s;
}

BT_TEST_MAIN(tokenizer_suite)
