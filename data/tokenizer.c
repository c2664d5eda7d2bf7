/* Tokenizers (see tokenizer.h): byte, char (sorted code points of a text) and GPT-2's byte-level
 * BPE as OpenAI's encoder.py (PCRE2 pre-split, merges by rank, a per-call word cache), and
 * <dir>/tokenizer.yaml through libyaml. Relies on PCRE2, jansson and libyaml. */
#include "data/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <jansson.h>
#include <pcre2.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define MAX_VOCAB 65536 /* ids are uint16 */
#define MAX_CODE_POINT 0x10FFFF

/* OpenAI's GPT-2 pre-split pattern (gpt-2/src/encoder.py), compiled with PCRE2_UTF | PCRE2_UCP
 * so \p{L} and \p{N} are Unicode classes. \s is spelled \p{White_Space} (and \S its negation):
 * that is what \s means in Python's `regex` module (and tiktoken), while PCRE2's \s also matches
 * U+180E MONGOLIAN VOWEL SEPARATOR, which would split text differently. */
static const char GPT2_SPLIT[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\p{White_Space}\\p{L}\\p{N}]+"
    "|\\p{White_Space}+(?!\\P{White_Space})|\\p{White_Space}+";

struct merge_slot {
    uint32_t pair;   /* left id << 16 | right id */
    int32_t rank;    /* line order in vocab.bpe; -1 = empty slot */
    uint16_t merged; /* id of left + right */
};

struct gpt2_vocab {
    char *bytes;               /* every token's raw bytes, concatenated in id order */
    uint32_t *offset;          /* token `id` is bytes[offset[id] .. offset[id + 1]) */
    uint16_t byte_id[256];     /* the token of each single byte */
    struct merge_slot *merges; /* open addressing, (left, right) -> rank and merged id */
    size_t merge_mask;
    pcre2_code *split;
};

struct tokenizer {
    tokenizer_kind kind;
    int64_t vocab_size;
    uint32_t *chars;         /* char: the vocabulary's code points, ascending; id = index */
    struct gpt2_vocab *gpt2; /* gpt2 */
};

/* ---- UTF-8 ---- */

/* Decodes the code point at s[i]; returns its length in bytes, or 0 when the bytes there are not
 * valid UTF-8 (overlong forms, surrogates and values past U+10FFFF included). */
static int utf8_next(const unsigned char *s, size_t len, size_t i, uint32_t *cp) {
    unsigned c = s[i];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    int n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
    if (n == 0 || c > 0xF4 || i + (size_t)n > len) return 0;
    uint32_t v = c & (0x7F >> n);
    for (int k = 1; k < n; k++) {
        if ((s[i + k] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i + k] & 0x3F);
    }
    static const uint32_t min_of_len[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (v < min_of_len[n] || v > MAX_CODE_POINT || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return n;
}

static int utf8_put(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

int64_t tokenizer_utf8_invalid_at(const char *text, size_t len) {
    const unsigned char *s = (const unsigned char *)text;
    uint32_t cp;
    for (size_t i = 0; i < len;) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int n = utf8_next(s, len, i, &cp);
        if (n == 0) return (int64_t)i;
        i += (size_t)n;
    }
    return -1;
}

static bt_status utf8_check(const char *who, const char *text, size_t len) {
    int64_t bad = tokenizer_utf8_invalid_at(text, len);
    if (bad >= 0)
        return bt_error("%s: invalid UTF-8 at byte offset %lld (byte 0x%02X)", who, (long long)bad,
                        (unsigned char)text[bad]);
    return BT_OK;
}

/* "'é' (U+00E9)" for a printable character, "U+000A" for a control character */
static void char_describe(uint32_t cp, char *buf, size_t size) {
    if (cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp < 0xA0)) {
        snprintf(buf, size, "U+%04X", (unsigned)cp);
        return;
    }
    char utf8[5] = {0};
    utf8_put(cp, utf8);
    snprintf(buf, size, "'%s' (U+%04X)", utf8, (unsigned)cp);
}

/* ---- byte ---- */

static bt_status byte_encode(const char *text, size_t len, uint16_t *out, int64_t *n_out) {
    for (size_t i = 0; i < len; i++)
        out[i] = (unsigned char)text[i];
    *n_out = (int64_t)len;
    return BT_OK;
}

/* ---- char ---- */

static bt_status char_build(struct tokenizer *tok, const char *text, size_t len) {
    if (utf8_check("char tokenizer", text, len) != BT_OK) return BT_ERR;
    uint8_t *seen = calloc(MAX_CODE_POINT + 1, 1);
    if (!seen) return bt_error("char tokenizer: out of memory");
    const unsigned char *s = (const unsigned char *)text;
    int64_t n_distinct = 0;
    uint32_t cp;
    for (size_t i = 0; i < len;) {
        i += (size_t)utf8_next(s, len, i, &cp);
        n_distinct += !seen[cp];
        seen[cp] = 1;
    }
    if (n_distinct == 0 || n_distinct > MAX_VOCAB) {
        free(seen);
        return bt_error("char tokenizer: the text has %lld distinct characters (need 1 to %d, "
                        "the uint16 token ids)",
                        (long long)n_distinct, MAX_VOCAB);
    }
    tok->chars = malloc((size_t)n_distinct * sizeof *tok->chars);
    if (!tok->chars) {
        free(seen);
        return bt_error("char tokenizer: out of memory");
    }
    int64_t n = 0;
    for (uint32_t c = 0; c <= MAX_CODE_POINT; c++)
        if (seen[c]) tok->chars[n++] = c;
    free(seen);
    tok->vocab_size = n;
    return BT_OK;
}

static int64_t char_id(const struct tokenizer *tok, uint32_t cp) {
    int64_t lo = 0, hi = tok->vocab_size - 1;
    while (lo <= hi) {
        int64_t mid = (lo + hi) / 2;
        if (tok->chars[mid] == cp) return mid;
        if (tok->chars[mid] < cp)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

static bt_status char_encode(const struct tokenizer *tok, const char *text, size_t len,
                             uint16_t *out, int64_t *n_out) {
    if (utf8_check("char tokenizer", text, len) != BT_OK) return BT_ERR;
    const unsigned char *s = (const unsigned char *)text;
    int64_t n = 0;
    uint32_t cp;
    for (size_t i = 0; i < len;) {
        int w = utf8_next(s, len, i, &cp);
        int64_t id = char_id(tok, cp);
        if (id < 0) {
            char what[32];
            char_describe(cp, what, sizeof what);
            return bt_error("char tokenizer: character %s at byte offset %zu is not in the "
                            "vocabulary (%lld characters)",
                            what, i, (long long)tok->vocab_size);
        }
        out[n++] = (uint16_t)id;
        i += (size_t)w;
    }
    *n_out = n;
    return BT_OK;
}

/* ---- hash maps: raw bytes -> value (token lookup, word cache); merge pairs -> rank ---- */

struct str_slot {
    const char *key; /* NULL = empty; points into memory the map's user keeps alive */
    size_t len;
    uint64_t hash;
    int64_t value, count;
};

struct strmap {
    struct str_slot *slots;
    size_t mask, used;
};

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static bt_status strmap_init(struct strmap *m, size_t expected) {
    size_t cap = 64;
    while (cap < 2 * expected)
        cap *= 2;
    m->slots = calloc(cap, sizeof *m->slots);
    m->mask = cap - 1;
    m->used = 0;
    return m->slots ? BT_OK : BT_ERR;
}

static void strmap_free(struct strmap *m) {
    free(m->slots);
    m->slots = NULL;
}

/* The slot holding `key`, or the empty slot where it would go. */
static struct str_slot *strmap_slot(const struct strmap *m, const char *key, size_t len,
                                    uint64_t h) {
    for (size_t i = h & m->mask;; i = (i + 1) & m->mask) {
        struct str_slot *s = &m->slots[i];
        if (!s->key || (s->hash == h && s->len == len && !memcmp(s->key, key, len))) return s;
    }
}

/* Fills the empty `slot` (from strmap_slot) and grows the table past half full. */
static bt_status strmap_fill(struct strmap *m, struct str_slot *slot, const char *key, size_t len,
                             uint64_t h, int64_t value, int64_t count) {
    *slot = (struct str_slot){key, len, h, value, count};
    if (++m->used * 2 <= m->mask + 1) return BT_OK;
    struct strmap bigger;
    if (strmap_init(&bigger, m->used * 2) != BT_OK) return BT_ERR;
    for (size_t i = 0; i <= m->mask; i++) {
        struct str_slot *s = &m->slots[i];
        if (s->key) *strmap_slot(&bigger, s->key, s->len, s->hash) = *s;
    }
    bigger.used = m->used;
    free(m->slots);
    *m = bigger;
    return BT_OK;
}

static size_t merge_hash(uint32_t pair) {
    return (size_t)(((uint64_t)pair * 0x9E3779B97F4A7C15ull) >> 20);
}

static const struct merge_slot *merge_find(const struct gpt2_vocab *v, uint32_t left,
                                           uint32_t right) {
    uint32_t pair = left << 16 | right;
    for (size_t i = merge_hash(pair) & v->merge_mask;; i = (i + 1) & v->merge_mask) {
        const struct merge_slot *s = &v->merges[i];
        if (s->rank < 0) return NULL;
        if (s->pair == pair) return s;
    }
}

/* ---- gpt2: loading encoder.json and vocab.bpe ---- */

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other bytes for
 * U+0100 onwards in byte order. Fills byte_of_cp[0..323] (-1 = not a byte's character). */
static void gpt2_byte_alphabet(int16_t byte_of_cp[324]) {
    for (int c = 0; c < 324; c++)
        byte_of_cp[c] = -1;
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        byte_of_cp[printable ? b : 256 + extra++] = (int16_t)b;
    }
}

/* Turns a token as written in encoder.json / vocab.bpe (one character per byte) into its raw
 * bytes; returns the length or -1 when a character is outside the byte alphabet. */
static int64_t gpt2_unmap(const int16_t byte_of_cp[324], const char *token, size_t len, char *out) {
    const unsigned char *s = (const unsigned char *)token;
    int64_t n = 0;
    uint32_t cp;
    for (size_t i = 0; i < len;) {
        int w = utf8_next(s, len, i, &cp);
        if (w == 0 || cp >= 324 || byte_of_cp[cp] < 0) return -1;
        out[n++] = (char)byte_of_cp[cp];
        i += (size_t)w;
    }
    return n;
}

/* Reads encoder.json: ids must be exactly 0..n-1; fills v->bytes and v->offset. */
static bt_status gpt2_load_encoder(struct gpt2_vocab *v, const char *path, int64_t *n_vocab) {
    int16_t byte_of_cp[324];
    gpt2_byte_alphabet(byte_of_cp);
    json_error_t jerr;
    const char **key_of_id = NULL;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root && jerr.line < 1) /* jansson's text names the file and the reason */
        return bt_error("cannot load the GPT-2 vocabulary: %s", jerr.text);
    if (!root)
        return bt_error("%s:%d: cannot load the GPT-2 vocabulary: %s", path, jerr.line, jerr.text);
    size_t n = json_object_size(root), total = 0;
    if (!json_is_object(root) || n == 0 || n > MAX_VOCAB) {
        bt_error("%s: expected an object of 1 to %d tokens", path, MAX_VOCAB);
        goto fail;
    }
    key_of_id = calloc(n, sizeof *key_of_id);
    if (!key_of_id) goto oom;
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        json_int_t id = json_is_integer(value) ? json_integer_value(value) : -1;
        if (id < 0 || (size_t)id >= n || key_of_id[id]) {
            bt_error("%s: token \"%s\": id must be a unique integer in 0..%zu", path, key, n - 1);
            goto fail;
        }
        key_of_id[id] = key;
        total += strlen(key);
    }
    v->bytes = malloc(total + 1);
    v->offset = malloc((n + 1) * sizeof *v->offset);
    if (!v->bytes || !v->offset) goto oom;
    v->offset[0] = 0;
    for (size_t id = 0; id < n; id++) {
        int64_t len =
            gpt2_unmap(byte_of_cp, key_of_id[id], strlen(key_of_id[id]), v->bytes + v->offset[id]);
        if (len <= 0) {
            bt_error("%s: token \"%s\" (id %zu) is not in GPT-2's byte alphabet", path,
                     key_of_id[id], id);
            goto fail;
        }
        v->offset[id + 1] = v->offset[id] + (uint32_t)len;
    }
    *n_vocab = (int64_t)n;
    free(key_of_id);
    json_decref(root);
    return BT_OK;
oom:
    bt_error("%s: out of memory", path);
fail:
    free(key_of_id);
    json_decref(root);
    return BT_ERR;
}

static bt_status read_whole_file(const char *path, char **data, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return bt_error("%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n - 1, f);
        if (n < cap - 1) break;
        char *bigger = realloc(buf, cap * 2);
        if (!bigger) free(buf);
        buf = bigger;
        cap *= 2;
    }
    int failed = ferror(f);
    fclose(f);
    if (!buf) return bt_error("%s: out of memory", path);
    if (failed) {
        free(buf);
        return bt_error("%s: read error", path);
    }
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return BT_OK;
}

/* Adds one "left right" line of vocab.bpe as merge `rank`. */
static bt_status gpt2_add_merge(struct gpt2_vocab *v, const struct strmap *ids,
                                const int16_t byte_of_cp[324], const char *path, int line_no,
                                const char *line, size_t len, int32_t rank) {
    char raw[1024]; /* left's bytes then right's: together the merged token's */
    const char *space = memchr(line, ' ', len);
    int64_t left_len = -1, right_len = -1;
    if (space && space > line && space < line + len - 1 && len < sizeof raw) {
        left_len = gpt2_unmap(byte_of_cp, line, (size_t)(space - line), raw);
        if (left_len > 0)
            right_len =
                gpt2_unmap(byte_of_cp, space + 1, (size_t)(line + len - space - 1), raw + left_len);
    }
    if (left_len <= 0 || right_len <= 0)
        return bt_error("%s:%d: expected two tokens of GPT-2's byte alphabet separated by one "
                        "space: \"%.*s\"",
                        path, line_no, (int)len, line);
    const char *part[3] = {raw, raw + left_len, raw};
    size_t part_len[3] = {(size_t)left_len, (size_t)right_len, (size_t)(left_len + right_len)};
    int64_t id[3];
    for (int k = 0; k < 3; k++) {
        const struct str_slot *s =
            strmap_slot(ids, part[k], part_len[k], hash_bytes(part[k], part_len[k]));
        if (!s->key)
            return bt_error("%s:%d: merge \"%.*s\": %s is not in encoder.json", path, line_no,
                            (int)len, line, k == 2 ? "the merged token" : "a token");
        id[k] = s->value;
    }
    uint32_t pair = (uint32_t)id[0] << 16 | (uint32_t)id[1];
    size_t i = merge_hash(pair) & v->merge_mask;
    while (v->merges[i].rank >= 0 && v->merges[i].pair != pair)
        i = (i + 1) & v->merge_mask;
    if (v->merges[i].rank >= 0)
        return bt_error("%s:%d: merge \"%.*s\" repeats an earlier line", path, line_no, (int)len,
                        line);
    v->merges[i] = (struct merge_slot){pair, rank, (uint16_t)id[2]};
    return BT_OK;
}

/* Reads vocab.bpe (a "#version" first line, then one merge per line, highest priority first). */
static bt_status gpt2_load_merges(struct gpt2_vocab *v, const struct strmap *ids,
                                  const char *path) {
    int16_t byte_of_cp[324];
    gpt2_byte_alphabet(byte_of_cp);
    char *data = NULL;
    size_t len = 0;
    if (read_whole_file(path, &data, &len) != BT_OK) return BT_ERR;
    size_t n_lines = 1;
    for (size_t i = 0; i < len; i++)
        n_lines += data[i] == '\n';
    size_t cap = 64;
    while (cap < 2 * n_lines)
        cap *= 2;
    v->merges = malloc(cap * sizeof *v->merges);
    if (!v->merges) {
        free(data);
        return bt_error("%s: out of memory", path);
    }
    for (size_t i = 0; i < cap; i++)
        v->merges[i].rank = -1;
    v->merge_mask = cap - 1;
    int32_t rank = 0;
    int line_no = 0;
    for (char *line = data; line < data + len;) {
        char *end = memchr(line, '\n', (size_t)(data + len - line));
        if (!end) end = data + len;
        size_t line_len = (size_t)(end - line);
        if (line_len > 0 && line[line_len - 1] == '\r') line_len--;
        line_no++;
        int skip = line_len == 0 || (line_no == 1 && !strncmp(line, "#version", 8));
        if (!skip &&
            gpt2_add_merge(v, ids, byte_of_cp, path, line_no, line, line_len, rank++) != BT_OK) {
            free(data);
            return BT_ERR;
        }
        line = end + 1;
    }
    free(data);
    return BT_OK;
}

/* Finds each token's id by its raw bytes (for merges) and the single-byte tokens. */
static bt_status gpt2_index(struct gpt2_vocab *v, int64_t n_vocab, const char *path,
                            struct strmap *ids) {
    if (strmap_init(ids, (size_t)n_vocab) != BT_OK) return bt_error("%s: out of memory", path);
    for (int64_t id = 0; id < n_vocab; id++) {
        const char *key = v->bytes + v->offset[id];
        size_t len = v->offset[id + 1] - v->offset[id];
        uint64_t h = hash_bytes(key, len);
        struct str_slot *s = strmap_slot(ids, key, len, h);
        if (s->key)
            return bt_error("%s: tokens %lld and %lld have the same bytes", path,
                            (long long)s->value, (long long)id);
        if (strmap_fill(ids, s, key, len, h, id, 1) != BT_OK)
            return bt_error("%s: out of memory", path);
    }
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        const struct str_slot *s = strmap_slot(ids, &c, 1, hash_bytes(&c, 1));
        if (!s->key) return bt_error("%s: no token for the single byte 0x%02X", path, b);
        v->byte_id[b] = (uint16_t)s->value;
    }
    return BT_OK;
}

static void gpt2_free(struct gpt2_vocab *v) {
    if (!v) return;
    free(v->bytes);
    free(v->offset);
    free(v->merges);
    pcre2_code_free(v->split);
    free(v);
}

static struct gpt2_vocab *gpt2_load(const char *dir, int64_t *n_vocab) {
    if (!dir) dir = BRAID_ASSET_DIR "/gpt2";
    size_t path_size = strlen(dir) + 32;
    char *path = malloc(path_size);
    struct gpt2_vocab *v = calloc(1, sizeof *v);
    struct strmap ids = {0};
    if (!path || !v) {
        bt_error("gpt2 tokenizer: out of memory");
        goto fail;
    }
    snprintf(path, path_size, "%s/encoder.json", dir);
    if (gpt2_load_encoder(v, path, n_vocab) != BT_OK) goto fail;
    if (gpt2_index(v, *n_vocab, path, &ids) != BT_OK) goto fail;
    snprintf(path, path_size, "%s/vocab.bpe", dir);
    if (gpt2_load_merges(v, &ids, path) != BT_OK) goto fail;
    int err;
    PCRE2_SIZE err_at;
    v->split = pcre2_compile((PCRE2_SPTR)GPT2_SPLIT, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                             &err, &err_at, NULL);
    if (!v->split) {
        bt_error("gpt2 tokenizer: cannot compile the pre-split pattern (PCRE2 error %d)", err);
        goto fail;
    }
    pcre2_jit_compile(v->split, PCRE2_JIT_COMPLETE); /* without JIT pcre2_match interprets */
    strmap_free(&ids);
    free(path);
    return v;
fail:
    strmap_free(&ids);
    gpt2_free(v);
    free(path);
    return NULL;
}

/* ---- gpt2: byte-pair merging ---- */

struct bpe_candidate {
    int32_t rank, pos; /* the pair starting at symbol `pos`, when it still is (left, right) */
    uint16_t left, right, merged;
};

/* Scratch for one word: symbols as a linked list over byte positions, candidate pairs in a
 * min-heap ordered by (rank, position). */
struct bpe_scratch {
    int32_t *id, *prev, *next; /* id -1 = merged into its left neighbour */
    struct bpe_candidate *heap;
    size_t n_heap, cap;
};

static int candidate_before(const struct bpe_candidate *a, const struct bpe_candidate *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(struct bpe_scratch *w, struct bpe_candidate c) {
    size_t i = w->n_heap++;
    while (i > 0 && candidate_before(&c, &w->heap[(i - 1) / 2])) {
        w->heap[i] = w->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    w->heap[i] = c;
}

static struct bpe_candidate heap_pop(struct bpe_scratch *w) {
    struct bpe_candidate top = w->heap[0], last = w->heap[--w->n_heap];
    size_t i = 0, n = w->n_heap;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && candidate_before(&w->heap[child + 1], &w->heap[child])) child++;
        if (!candidate_before(&w->heap[child], &last)) break;
        w->heap[i] = w->heap[child];
        i = child;
    }
    if (n > 0) w->heap[i] = last;
    return top;
}

/* Queues the pair starting at symbol `pos` (-1 = none) if vocab.bpe can merge it. */
static void bpe_consider(const struct gpt2_vocab *v, struct bpe_scratch *w, int32_t pos) {
    int32_t right = pos >= 0 ? w->next[pos] : -1;
    if (right < 0) return;
    const struct merge_slot *m = merge_find(v, (uint32_t)w->id[pos], (uint32_t)w->id[right]);
    if (m)
        heap_push(w, (struct bpe_candidate){m->rank, pos, (uint16_t)w->id[pos],
                                            (uint16_t)w->id[right], m->merged});
}

static bt_status bpe_reserve(struct bpe_scratch *w, size_t n) {
    if (n <= w->cap) return BT_OK;
    size_t cap = n < 64 ? 64 : n * 2;
    int32_t *id = realloc(w->id, cap * sizeof *id);
    if (id) w->id = id;
    int32_t *prev = realloc(w->prev, cap * sizeof *prev);
    if (prev) w->prev = prev;
    int32_t *next = realloc(w->next, cap * sizeof *next);
    if (next) w->next = next;
    struct bpe_candidate *heap = realloc(w->heap, 3 * cap * sizeof *heap);
    if (heap) w->heap = heap;
    if (!id || !prev || !next || !heap) return bt_error("gpt2 tokenizer: out of memory");
    w->cap = cap;
    return BT_OK;
}

/* OpenAI's bpe(): repeatedly merges the lowest-ranked adjacent pair, all its occurrences left to
 * right. Popping (rank, position) from a heap does the same, since merging a pair can only create
 * pairs of later rank. Writes the word's ids to `out`; returns their count or -1. */
static int64_t bpe_word(const struct gpt2_vocab *v, struct bpe_scratch *w, const char *word,
                        size_t len, uint16_t *out) {
    if (bpe_reserve(w, len) != BT_OK) return -1;
    for (size_t i = 0; i < len; i++) {
        w->id[i] = v->byte_id[(unsigned char)word[i]];
        w->prev[i] = (int32_t)i - 1;
        w->next[i] = i + 1 < len ? (int32_t)i + 1 : -1;
    }
    w->n_heap = 0;
    for (size_t i = 0; i + 1 < len; i++)
        bpe_consider(v, w, (int32_t)i);
    while (w->n_heap > 0) {
        struct bpe_candidate c = heap_pop(w);
        int32_t right = w->next[c.pos];
        if (w->id[c.pos] != c.left || right < 0 || w->id[right] != c.right) continue; /* stale */
        w->id[c.pos] = c.merged;
        w->id[right] = -1;
        w->next[c.pos] = w->next[right];
        if (w->next[right] >= 0) w->prev[w->next[right]] = c.pos;
        bpe_consider(v, w, w->prev[c.pos]);
        bpe_consider(v, w, c.pos);
    }
    int64_t n = 0;
    for (int32_t i = 0; i >= 0; i = w->next[i])
        out[n++] = (uint16_t)w->id[i];
    return n;
}

/* ---- gpt2: encoding and decoding ---- */

/* Encodes one pre-split word at out[*n], reusing the ids of an earlier equal word: the cache
 * maps a word to where its ids already sit in `out`. */
static bt_status gpt2_encode_word(const struct gpt2_vocab *v, struct strmap *cache,
                                  struct bpe_scratch *w, const char *word, size_t len,
                                  uint16_t *out, int64_t *n) {
    uint64_t h = hash_bytes(word, len);
    struct str_slot *s = strmap_slot(cache, word, len, h);
    if (s->key) {
        memcpy(out + *n, out + s->value, (size_t)s->count * sizeof *out);
        *n += s->count;
        return BT_OK;
    }
    int64_t count = bpe_word(v, w, word, len, out + *n);
    if (count < 0) return BT_ERR;
    if (strmap_fill(cache, s, word, len, h, *n, count) != BT_OK)
        return bt_error("gpt2 tokenizer: out of memory");
    *n += count;
    return BT_OK;
}

static bt_status gpt2_encode(const struct gpt2_vocab *v, const char *text, size_t len,
                             uint16_t *out, int64_t *n_out) {
    if (utf8_check("gpt2 tokenizer", text, len) != BT_OK) return BT_ERR;
    bt_status status = BT_ERR;
    struct strmap cache = {0};
    struct bpe_scratch w = {0};
    pcre2_match_data *match = pcre2_match_data_create_from_pattern(v->split, NULL);
    pcre2_match_context *mctx = pcre2_match_context_create(NULL);
    pcre2_jit_stack *stack = pcre2_jit_stack_create(32 * 1024, 16 * 1024 * 1024, NULL);
    if (!match || !mctx || !stack || strmap_init(&cache, 4096) != BT_OK) {
        bt_error("gpt2 tokenizer: out of memory");
        goto done;
    }
    pcre2_jit_stack_assign(mctx, NULL, stack);
    int64_t n = 0;
    for (size_t at = 0; at < len;) {
        int rc = pcre2_match(v->split, (PCRE2_SPTR)text, len, at, PCRE2_NO_UTF_CHECK, match, mctx);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        PCRE2_SIZE *span = pcre2_get_ovector_pointer(match);
        if (rc < 0 || span[1] <= span[0]) {
            PCRE2_UCHAR why[128] = "empty match";
            if (rc < 0) pcre2_get_error_message(rc, why, sizeof why);
            bt_error("gpt2 tokenizer: pre-split failed at byte offset %zu: %s", at, (char *)why);
            goto done;
        }
        if (gpt2_encode_word(v, &cache, &w, text + span[0], span[1] - span[0], out, &n) != BT_OK)
            goto done;
        at = span[1];
    }
    *n_out = n;
    status = BT_OK;
done:
    free(w.id);
    free(w.prev);
    free(w.next);
    free(w.heap);
    strmap_free(&cache);
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(mctx);
    pcre2_match_data_free(match);
    return status;
}

/* ---- the public API ---- */

static const char *const KIND_NAMES[] = {"byte", "char", "gpt2"};

const char *tokenizer_kind_name(tokenizer_kind kind) {
    return (unsigned)kind < 3 ? KIND_NAMES[kind] : "unknown";
}

bt_status tokenizer_kind_parse(const char *name, tokenizer_kind *out) {
    for (int k = 0; k < 3; k++)
        if (!strcmp(name, KIND_NAMES[k])) {
            *out = (tokenizer_kind)k;
            return BT_OK;
        }
    return bt_error("unknown tokenizer '%s' (choices: byte, char, gpt2)", name);
}

struct tokenizer *tokenizer_create(tokenizer_kind kind, const char *text, size_t len,
                                   const char *gpt2_dir) {
    struct tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) {
        bt_error("tokenizer: out of memory");
        return NULL;
    }
    tok->kind = kind;
    bt_status st = BT_OK;
    if (kind == TOKENIZER_BYTE)
        tok->vocab_size = 256;
    else if (kind == TOKENIZER_CHAR)
        st = char_build(tok, text ? text : "", text ? len : 0);
    else if (kind == TOKENIZER_GPT2)
        st = (tok->gpt2 = gpt2_load(gpt2_dir, &tok->vocab_size)) ? BT_OK : BT_ERR;
    else
        st = bt_error("tokenizer: unknown kind %d", (int)kind);
    if (st != BT_OK) {
        tokenizer_free(tok);
        return NULL;
    }
    return tok;
}

void tokenizer_free(struct tokenizer *tok) {
    if (!tok) return;
    free(tok->chars);
    gpt2_free(tok->gpt2);
    free(tok);
}

tokenizer_kind tokenizer_kind_of(const struct tokenizer *tok) {
    return tok->kind;
}

int64_t tokenizer_vocab_size(const struct tokenizer *tok) {
    return tok->vocab_size;
}

bt_status tokenizer_encode(const struct tokenizer *tok, const char *text, size_t len,
                           uint16_t **ids, int64_t *n_ids) {
    *ids = NULL;
    *n_ids = 0;
    uint16_t *out = malloc((len > 0 ? len : 1) * sizeof *out); /* at most one id per byte */
    if (!out) return bt_error("tokenizer: out of memory for %zu ids", len);
    int64_t n = 0;
    bt_status st = tok->kind == TOKENIZER_BYTE   ? byte_encode(text, len, out, &n)
                   : tok->kind == TOKENIZER_CHAR ? char_encode(tok, text, len, out, &n)
                                                 : gpt2_encode(tok->gpt2, text, len, out, &n);
    if (st != BT_OK) {
        free(out);
        return BT_ERR;
    }
    *ids = out;
    *n_ids = n;
    return BT_OK;
}

/* Bytes of token `id` for byte and gpt2; for char the code point's UTF-8 goes to `scratch`. */
static const char *token_bytes(const struct tokenizer *tok, uint16_t id, char scratch[4],
                               size_t *len) {
    if (tok->kind == TOKENIZER_CHAR) {
        *len = (size_t)utf8_put(tok->chars[id], scratch);
        return scratch;
    }
    if (tok->kind == TOKENIZER_BYTE) {
        scratch[0] = (char)id;
        *len = 1;
        return scratch;
    }
    *len = tok->gpt2->offset[id + 1] - tok->gpt2->offset[id];
    return tok->gpt2->bytes + tok->gpt2->offset[id];
}

bt_status tokenizer_decode(const struct tokenizer *tok, const uint16_t *ids, int64_t n,
                           char **text) {
    *text = NULL;
    size_t total = 0, len;
    char scratch[4];
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] >= tok->vocab_size)
            return bt_error("%s tokenizer: id %u at position %lld is out of range (vocab size "
                            "%lld)",
                            tokenizer_kind_name(tok->kind), (unsigned)ids[i], (long long)i,
                            (long long)tok->vocab_size);
        token_bytes(tok, ids[i], scratch, &len);
        total += len;
    }
    char *out = malloc(total + 1);
    if (!out) return bt_error("tokenizer: out of memory decoding %lld ids", (long long)n);
    char *p = out;
    for (int64_t i = 0; i < n; i++) {
        const char *bytes = token_bytes(tok, ids[i], scratch, &len);
        memcpy(p, bytes, len);
        p += len;
    }
    *p = '\0';
    *text = out;
    return BT_OK;
}

/* ---- tokenizer.yaml ---- */

static char *yaml_path(const char *dir) {
    size_t size = strlen(dir) + sizeof "/tokenizer.yaml";
    char *path = malloc(size);
    if (path) snprintf(path, size, "%s/tokenizer.yaml", dir);
    return path;
}

static int emit_scalar(yaml_emitter_t *em, const char *value, size_t len,
                       yaml_scalar_style_t style) {
    yaml_event_t ev;
    return yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)value, (int)len, 1, 1,
                                        style) &&
           yaml_emitter_emit(em, &ev);
}

static int emit_pair(yaml_emitter_t *em, const char *key, const char *value, size_t len,
                     yaml_scalar_style_t style) {
    return emit_scalar(em, key, strlen(key), YAML_PLAIN_SCALAR_STYLE) &&
           emit_scalar(em, value, len, style);
}

/* The char vocabulary as one UTF-8 string in id order (malloc'd). */
static char *chars_utf8(const struct tokenizer *tok, size_t *len) {
    char *s = malloc((size_t)tok->vocab_size * 4 + 1);
    if (!s) return NULL;
    size_t n = 0;
    for (int64_t i = 0; i < tok->vocab_size; i++)
        n += (size_t)utf8_put(tok->chars[i], s + n);
    s[n] = '\0';
    *len = n;
    return s;
}

static int emit_tokenizer(yaml_emitter_t *em, const struct tokenizer *tok, const char *chars,
                          size_t chars_len) {
    yaml_event_t ev;
    char vocab[32];
    snprintf(vocab, sizeof vocab, "%lld", (long long)tok->vocab_size);
    const char *kind = tokenizer_kind_name(tok->kind);
    int ok = yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING) &&
             yaml_emitter_emit(em, &ev) &&
             yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1) &&
             yaml_emitter_emit(em, &ev) &&
             yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1, YAML_BLOCK_MAPPING_STYLE) &&
             yaml_emitter_emit(em, &ev) &&
             emit_pair(em, "tokenizer", kind, strlen(kind), YAML_PLAIN_SCALAR_STYLE) &&
             emit_pair(em, "vocab_size", vocab, strlen(vocab), YAML_PLAIN_SCALAR_STYLE);
    if (ok && chars) ok = emit_pair(em, "chars", chars, chars_len, YAML_DOUBLE_QUOTED_SCALAR_STYLE);
    return ok && yaml_mapping_end_event_initialize(&ev) && yaml_emitter_emit(em, &ev) &&
           yaml_document_end_event_initialize(&ev, 1) && yaml_emitter_emit(em, &ev) &&
           yaml_stream_end_event_initialize(&ev) && yaml_emitter_emit(em, &ev);
}

bt_status tokenizer_save(const struct tokenizer *tok, const char *dir) {
    char *path = yaml_path(dir), *chars = NULL;
    size_t chars_len = 0;
    if (!path) return bt_error("tokenizer: out of memory");
    if (tok->kind == TOKENIZER_CHAR && !(chars = chars_utf8(tok, &chars_len))) {
        bt_error("%s: out of memory", path);
        goto fail;
    }
    FILE *f = fopen(path, "wb");
    if (!f) {
        bt_error("%s: cannot write: %s", path, strerror(errno));
        goto fail;
    }
    yaml_emitter_t em;
    yaml_emitter_initialize(&em);
    yaml_emitter_set_output_file(&em, f);
    yaml_emitter_set_unicode(&em, 1);
    yaml_emitter_set_width(&em, -1);
    int ok = emit_tokenizer(&em, tok, chars, chars_len);
    if (!ok) bt_error("%s: cannot write YAML: %s", path, em.problem ? em.problem : "emitter error");
    yaml_emitter_delete(&em);
    if (fclose(f) != 0 && ok) {
        bt_error("%s: cannot write: %s", path, strerror(errno));
        ok = 0;
    }
    if (!ok) goto fail;
    free(chars);
    free(path);
    return BT_OK;
fail:
    free(chars);
    free(path);
    return BT_ERR;
}

/* The top-level scalars of tokenizer.yaml, with the line each value is on (1-based). */
struct yaml_fields {
    char *kind, *vocab, *chars;
    size_t chars_len;
    int kind_line, vocab_line, chars_line;
};

static void yaml_fields_free(struct yaml_fields *f) {
    free(f->kind);
    free(f->vocab);
    free(f->chars);
}

/* Stores one key/value pair; an unknown or repeated key is an error naming the line. */
static bt_status yaml_field_set(struct yaml_fields *f, const char *path, const yaml_event_t *key,
                                const yaml_event_t *value) {
    const char *name = (const char *)key->data.scalar.value;
    int line = (int)value->start_mark.line + 1;
    char **slot = !strcmp(name, "tokenizer")    ? &f->kind
                  : !strcmp(name, "vocab_size") ? &f->vocab
                  : !strcmp(name, "chars")      ? &f->chars
                                                : NULL;
    if (!slot)
        return bt_error("%s:%d: unknown key '%s' (expected tokenizer, vocab_size, chars)", path,
                        (int)key->start_mark.line + 1, name);
    if (value->type != YAML_SCALAR_EVENT)
        return bt_error("%s:%d: %s must be a single value", path, line, name);
    if (*slot) return bt_error("%s:%d: key '%s' appears twice", path, line, name);
    size_t len = value->data.scalar.length;
    if (!(*slot = malloc(len + 1))) return bt_error("%s: out of memory", path);
    memcpy(*slot, value->data.scalar.value, len);
    (*slot)[len] = '\0';
    if (slot == &f->kind) f->kind_line = line;
    if (slot == &f->vocab) f->vocab_line = line;
    if (slot == &f->chars) {
        f->chars_line = line;
        f->chars_len = len;
    }
    return BT_OK;
}

/* Parses the next event; a libyaml error names the file, line and column. */
static bt_status yaml_next(yaml_parser_t *p, yaml_event_t *ev, const char *path) {
    if (yaml_parser_parse(p, ev)) return BT_OK;
    return bt_error("%s:%d:%d: invalid YAML: %s", path, (int)p->problem_mark.line + 1,
                    (int)p->problem_mark.column + 1, p->problem ? p->problem : "parse error");
}

/* Reads a mapping of scalar keys to scalar values. */
static bt_status yaml_read_fields(yaml_parser_t *p, const char *path, struct yaml_fields *f) {
    yaml_event_t ev, value;
    for (int k = 0; k < 3; k++) { /* stream start, document start, mapping start */
        if (yaml_next(p, &ev, path) != BT_OK) return BT_ERR;
        yaml_event_type_t type = ev.type;
        int line = (int)ev.start_mark.line + 1;
        yaml_event_delete(&ev);
        if (k == 1 && type == YAML_STREAM_END_EVENT)
            return bt_error("%s: empty file (expected tokenizer and vocab_size)", path);
        if (k == 2 && type != YAML_MAPPING_START_EVENT)
            return bt_error("%s:%d: expected a mapping of tokenizer, vocab_size, chars", path,
                            line);
    }
    for (;;) {
        if (yaml_next(p, &ev, path) != BT_OK) return BT_ERR;
        if (ev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&ev);
            return BT_OK;
        }
        if (ev.type != YAML_SCALAR_EVENT) {
            int line = (int)ev.start_mark.line + 1;
            yaml_event_delete(&ev);
            return bt_error("%s:%d: expected a key", path, line);
        }
        if (yaml_next(p, &value, path) != BT_OK) {
            yaml_event_delete(&ev);
            return BT_ERR;
        }
        bt_status st = yaml_field_set(f, path, &ev, &value);
        yaml_event_delete(&ev);
        yaml_event_delete(&value);
        if (st != BT_OK) return BT_ERR;
    }
}

/* The char vocabulary from `chars`: valid UTF-8, code points strictly ascending. */
static bt_status chars_parse(struct tokenizer *tok, const struct yaml_fields *f, const char *path) {
    if (!f->chars) return bt_error("%s: missing key 'chars' (the char vocabulary)", path);
    if (utf8_check(path, f->chars, f->chars_len) != BT_OK) return BT_ERR;
    if (!(tok->chars = malloc((f->chars_len + 1) * sizeof *tok->chars)))
        return bt_error("%s: out of memory", path);
    const unsigned char *s = (const unsigned char *)f->chars;
    int64_t n = 0;
    uint32_t cp;
    for (size_t i = 0; i < f->chars_len;) {
        i += (size_t)utf8_next(s, f->chars_len, i, &cp);
        if (n > 0 && cp <= tok->chars[n - 1])
            return bt_error("%s:%d: chars must be in ascending code point order without repeats "
                            "(character %lld breaks it)",
                            path, f->chars_line, (long long)n);
        tok->chars[n++] = cp;
    }
    if (n == 0) return bt_error("%s:%d: chars is empty", path, f->chars_line);
    tok->vocab_size = n;
    return BT_OK;
}

/* Checks the kind and vocab_size fields. */
static bt_status fields_check(const struct yaml_fields *f, const char *path, tokenizer_kind *kind,
                              long long *vocab) {
    if (!f->kind) return bt_error("%s: missing key 'tokenizer'", path);
    if (!f->vocab) return bt_error("%s: missing key 'vocab_size'", path);
    if (tokenizer_kind_parse(f->kind, kind) != BT_OK)
        return bt_error("%s:%d: unknown tokenizer '%s' (choices: byte, char, gpt2)", path,
                        f->kind_line, f->kind);
    char *end;
    errno = 0;
    *vocab = strtoll(f->vocab, &end, 10);
    if (errno || end == f->vocab || *end)
        return bt_error("%s:%d: vocab_size '%s' is not a whole number", path, f->vocab_line,
                        f->vocab);
    if (*kind != TOKENIZER_CHAR && f->chars)
        return bt_error("%s:%d: chars is only for the char tokenizer", path, f->chars_line);
    return BT_OK;
}

/* Builds the tokenizer the fields describe and checks vocab_size against it. */
static struct tokenizer *tokenizer_from_fields(const struct yaml_fields *f, const char *path,
                                               const char *gpt2_dir) {
    tokenizer_kind kind = TOKENIZER_BYTE;
    long long vocab = 0;
    if (fields_check(f, path, &kind, &vocab) != BT_OK) return NULL;
    struct tokenizer *tok = NULL;
    if (kind != TOKENIZER_CHAR) {
        tok = tokenizer_create(kind, NULL, 0, gpt2_dir);
        if (!tok) return NULL;
    } else {
        tok = calloc(1, sizeof *tok);
        if (!tok) {
            bt_error("%s: out of memory", path);
            return NULL;
        }
        tok->kind = kind;
        if (chars_parse(tok, f, path) != BT_OK) goto fail;
    }
    if (vocab != tok->vocab_size) {
        bt_error("%s:%d: vocab_size %lld does not match the %s tokenizer's %lld tokens", path,
                 f->vocab_line, vocab, f->kind, (long long)tok->vocab_size);
        goto fail;
    }
    return tok;
fail:
    tokenizer_free(tok);
    return NULL;
}

struct tokenizer *tokenizer_load_text(const char *yaml_text, const char *name,
                                      const char *gpt2_dir) {
    struct tokenizer *tok = NULL;
    struct yaml_fields fields = {0};
    yaml_parser_t parser;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_string(&parser, (const unsigned char *)yaml_text, strlen(yaml_text));
    if (yaml_read_fields(&parser, name, &fields) == BT_OK)
        tok = tokenizer_from_fields(&fields, name, gpt2_dir);
    yaml_parser_delete(&parser);
    yaml_fields_free(&fields);
    return tok;
}

/* The whole file at path, NUL-terminated (malloc'd); NULL with a message naming it. */
static char *read_text_file(const char *path) {
    FILE *file = fopen(path, "rb");
    if (!file) {
        bt_error("%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    size_t len = 0, cap = 0, n = 1;
    char *text = NULL;
    while (n > 0) {
        if (len + 1 >= cap) { /* room for one more read and the terminator */
            char *bigger = realloc(text, cap = cap ? 2 * cap : 4096);
            if (!bigger) break;
            text = bigger;
        }
        n = fread(text + len, 1, cap - 1 - len, file);
        len += n;
    }
    bool failed = n > 0 || ferror(file);
    fclose(file);
    if (failed) {
        bt_error("%s: cannot read: %s", path, n > 0 ? "out of memory" : strerror(errno));
        free(text);
        return NULL;
    }
    text[len] = '\0';
    return text;
}

struct tokenizer *tokenizer_load(const char *dir, const char *gpt2_dir) {
    char *path = yaml_path(dir);
    if (!path) {
        bt_error("tokenizer: out of memory");
        return NULL;
    }
    char *text = read_text_file(path);
    struct tokenizer *tok = text ? tokenizer_load_text(text, path, gpt2_dir) : NULL;
    free(text);
    free(path);
    return tok;
}
