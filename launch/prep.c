/* `braid prep`: a text file -> llm.c token shards, DIR/train_NNNNNN.bin and DIR/val_NNNNNN.bin (the
 * text's last --val-fraction, split at a character boundary before tokenizing, as nanoGPT's
 * prepare.py), plus DIR/tokenizer.yaml. Relies on data/tokenizer and data/shard. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "data/shard.h"
#include "data/tokenizer.h"
#include "launch/commands.h"

#define DEFAULT_SHARD_TOKENS 100000000

struct prep_options {
    const char *tokenizer, *input, *out;
    tokenizer_kind kind;
    double val_fraction;
    int64_t shard_tokens;
};

/* One split of the text and what became of it. */
struct prep_split {
    const char *name; /* "train" or "val" */
    const char *text;
    size_t bytes, chars;
    uint16_t *ids;
    int64_t n_ids, n_shards, n_stale;
};

static void print_help(FILE *out) {
    fprintf(out,
            "usage: braid prep --tokenizer byte|char|gpt2 --input TEXT --out DIR\n"
            "                  [--val-fraction F] [--shard-tokens N]\n\n"
            "Tokenizes TEXT into llm.c token shards for `braid train`: the first 1-F of the text\n"
            "(split at a character, before tokenizing) becomes DIR/train_000000.bin ..., the rest\n"
            "DIR/val_000000.bin ...; DIR/tokenizer.yaml records the tokenizer (and the char\n"
            "vocabulary). DIR is created if needed.\n\n"
            "options:\n"
            "  --tokenizer K       byte (ids = bytes, vocab 256), char (the text's sorted set of\n"
            "                      characters) or gpt2 (OpenAI GPT-2 BPE, vocab 50257)\n"
            "  --input TEXT        the text file (UTF-8 for char and gpt2)\n"
            "  --out DIR           where the shards and tokenizer.yaml go\n"
            "  --val-fraction F    share of the text for validation, 0 <= F < 1 (default 0.1;\n"
            "                      0 writes no val shard)\n"
            "  --shard-tokens N    tokens per shard file (default %d)\n"
            "  -h, --help          show this help and exit\n\n"
            "See docs/data.md for the shard format and the tokenizers.\n",
            DEFAULT_SHARD_TOKENS);
}

/* Stores the value of option `name`; returns 0, or 2 after a usage error. */
static int set_option(struct prep_options *o, const char *name, const char *value) {
    char *end;
    if (!strcmp(name, "tokenizer")) {
        o->tokenizer = value;
        if (tokenizer_kind_parse(value, &o->kind) != BT_OK) {
            cli_error("prep: --tokenizer: %s", bt_last_error());
            return 2;
        }
    } else if (!strcmp(name, "input")) {
        o->input = value;
    } else if (!strcmp(name, "out")) {
        o->out = value;
    } else if (!strcmp(name, "val-fraction")) {
        errno = 0;
        o->val_fraction = strtod(value, &end);
        if (errno || end == value || *end || !(o->val_fraction >= 0 && o->val_fraction < 1)) {
            cli_error("prep: --val-fraction '%s': expected a number in [0, 1)", value);
            return 2;
        }
    } else if (!strcmp(name, "shard-tokens")) {
        errno = 0;
        long long n = strtoll(value, &end, 10);
        if (errno || end == value || *end || n < 1 || n > INT32_MAX) {
            cli_error("prep: --shard-tokens '%s': expected a whole number from 1 to %d", value,
                      INT32_MAX);
            return 2;
        }
        o->shard_tokens = n;
    }
    return 0;
}

static int set_option_of(void *o, const char *name, const char *value) {
    return set_option(o, name, value);
}

/* Parses argv (argv[0] = "prep"); returns -1 to go on, else the exit status (0 after --help). */
static int parse_args(int argc, char **argv, struct prep_options *o) {
    *o = (struct prep_options){.val_fraction = 0.1, .shard_tokens = DEFAULT_SHARD_TOKENS};
    static const char *const names[] = {"tokenizer",    "input",        "out",
                                        "val-fraction", "shard-tokens", NULL};
    int status = cli_parse_options(argc, argv, "prep", names, set_option_of, o, print_help);
    if (status >= 0) return status;
    const char *missing = !o->tokenizer ? "--tokenizer byte|char|gpt2"
                          : !o->input   ? "--input TEXT"
                          : !o->out     ? "--out DIR"
                                        : NULL;
    if (missing) {
        cli_error("prep: missing %s (see braid prep --help)", missing);
        return 2;
    }
    return -1;
}

/* Reads the whole input file (NUL-terminated); errors name the path. */
static char *read_input(const char *path, size_t *len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) {
        cli_error("prep: cannot read input '%s': %s", path,
                  fd < 0 ? strerror(errno) : "is a directory");
        if (fd >= 0) close(fd);
        return NULL;
    }
    size_t size = (size_t)st.st_size, n = 0;
    char *text = malloc(size + 1);
    while (text && n < size) {
        ssize_t r = read(fd, text + n, size - n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            cli_error("prep: cannot read input '%s': %s", path,
                      r < 0 ? strerror(errno) : "file shrank");
            free(text);
            close(fd);
            return NULL;
        }
        n += (size_t)r;
    }
    close(fd);
    if (!text) {
        cli_error("prep: input '%s': out of memory for %zu bytes", path, size);
        return NULL;
    }
    text[n] = '\0';
    *len = n;
    return text;
}

/* Splits the text after its first floor(n_chars * (1 - F)) characters (UTF-8 lead bytes). */
static void split_text(const char *text, size_t len, double val_fraction, struct prep_split *train,
                       struct prep_split *val) {
    size_t n_chars = 0;
    for (size_t i = 0; i < len; i++)
        n_chars += ((unsigned char)text[i] & 0xC0) != 0x80;
    size_t train_chars = (size_t)floor((double)n_chars * (1.0 - val_fraction)), at = 0, seen = 0;
    for (; at < len; at++) {
        if (((unsigned char)text[at] & 0xC0) == 0x80) continue;
        if (seen++ == train_chars) break;
    }
    *train = (struct prep_split){.name = "train", .text = text, .bytes = at, .chars = train_chars};
    *val = (struct prep_split){
        .name = "val", .text = text + at, .bytes = len - at, .chars = n_chars - train_chars};
}

/* mkdir -p; an error names the directory. */
static int make_dirs(const char *path) {
    char *p = strdup(path);
    int err = p ? 0 : ENOMEM;
    for (char *c = p ? p + 1 : NULL; c && *c && !err; c++) {
        if (*c != '/') continue;
        *c = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) err = errno;
        *c = '/';
    }
    if (!err && mkdir(p, 0755) != 0 && errno != EEXIST) err = errno;
    free(p);
    struct stat st;
    if (!err && (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))) err = ENOTDIR;
    if (err) {
        cli_error("prep: cannot create output directory '%s': %s", path, strerror(err));
        return -1;
    }
    return 0;
}

static void shard_path(char *buf, size_t size, const char *dir, const char *split, int64_t k) {
    snprintf(buf, size, "%s/%s_%06lld.bin", dir, split, (long long)k);
}

/* Writes a split's ids as shards of at most `shard_tokens`, then removes higher-numbered shards
 * an earlier run left behind (a glob over the directory would pick them up). */
static int write_split(struct prep_split *s, const char *dir, int64_t shard_tokens) {
    size_t size = strlen(dir) + 64;
    char *path = malloc(size);
    if (!path) {
        cli_error("prep: out of memory");
        return -1;
    }
    for (int64_t at = 0; at < s->n_ids; at += shard_tokens, s->n_shards++) {
        int64_t n = s->n_ids - at < shard_tokens ? s->n_ids - at : shard_tokens;
        shard_path(path, size, dir, s->name, s->n_shards);
        if (shard_write(path, s->ids + at, n) != BT_OK) {
            cli_error("prep: %s", bt_last_error());
            free(path);
            return -1;
        }
    }
    for (int64_t k = s->n_shards;; k++, s->n_stale++) {
        shard_path(path, size, dir, s->name, k);
        if (unlink(path) != 0) break;
    }
    free(path);
    return 0;
}

/* Tokenizes one split; a split of the text must give at least 2 tokens (an input and a target). */
static int encode_split(const struct tokenizer *tok, struct prep_split *s, const char *input) {
    if (tokenizer_encode(tok, s->text, s->bytes, &s->ids, &s->n_ids) != BT_OK) {
        cli_error("prep: input '%s' (%s split): %s", input, s->name, bt_last_error());
        return -1;
    }
    if (s->n_ids < 2) {
        cli_error("prep: too few tokens: the %s split of '%s' has %lld token%s (at least 2 "
                  "needed: an input and its target); use a longer text or another --val-fraction",
                  s->name, input, (long long)s->n_ids, s->n_ids == 1 ? "" : "s");
        return -1;
    }
    return 0;
}

/* "  train  301966 tokens from 1003854 characters (first 90% of the text) in 1 shard: ..." */
static void print_split(const struct prep_split *s, const char *dir, const char *where,
                        double share) {
    if (s->n_shards == 0) {
        printf("  %-6s none (--val-fraction 0)\n", s->name);
        return;
    }
    char first[512], last[512];
    shard_path(first, sizeof first, dir, s->name, 0);
    shard_path(last, sizeof last, dir, s->name, s->n_shards - 1);
    printf("  %-6s %lld tokens from %zu characters (%s %g%% of the text) in %lld shard%s: %s%s%s\n",
           s->name, (long long)s->n_ids, s->chars, where, share * 100, (long long)s->n_shards,
           s->n_shards == 1 ? "" : "s", first, s->n_shards > 1 ? " .. " : "",
           s->n_shards > 1 ? last : "");
}

static double seconds_since(const struct timespec *t0) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) * 1e-9;
}

static void print_summary(const struct prep_options *o, const struct tokenizer *tok,
                          const struct prep_split *train, const struct prep_split *val,
                          size_t bytes, const struct timespec *t0) {
    printf("braid prep: %s tokenizer, vocab size %lld\n", tokenizer_kind_name(o->kind),
           (long long)tokenizer_vocab_size(tok));
    printf("  input  %s: %zu bytes, %zu characters\n", o->input, bytes, train->chars + val->chars);
    print_split(train, o->out, "first", 1.0 - o->val_fraction);
    print_split(val, o->out, "last", o->val_fraction);
    printf("  vocab  %s/tokenizer.yaml\n", o->out);
    if (train->n_stale + val->n_stale > 0)
        printf("  removed %lld stale shard(s) of an earlier run\n",
               (long long)(train->n_stale + val->n_stale));
    printf("  time   %.2f s\n", seconds_since(t0));
}

/* Reads, splits, tokenizes and writes; returns the exit status. */
static int prep_run(const struct prep_options *o) {
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int status = 1;
    size_t len = 0;
    struct tokenizer *tok = NULL;
    struct prep_split train = {0}, val = {0};
    char *text = read_input(o->input, &len);
    if (!text) return 1;
    if (len == 0) {
        cli_error("prep: input '%s' is empty", o->input);
        goto done;
    }
    int64_t bad = o->kind == TOKENIZER_BYTE ? -1 : tokenizer_utf8_invalid_at(text, len);
    if (bad >= 0) {
        cli_error("prep: input '%s': invalid UTF-8 at byte offset %lld (the %s tokenizer reads "
                  "UTF-8 text; --tokenizer byte takes any bytes)",
                  o->input, (long long)bad, tokenizer_kind_name(o->kind));
        goto done;
    }
    split_text(text, len, o->val_fraction, &train, &val);
    tok = tokenizer_create(o->kind, text, len, NULL);
    if (!tok) {
        cli_error("prep: %s", bt_last_error());
        goto done;
    }
    if (encode_split(tok, &train, o->input) != 0) goto done;
    if (o->val_fraction > 0 && encode_split(tok, &val, o->input) != 0) goto done;
    if (make_dirs(o->out) != 0) goto done;
    if (write_split(&train, o->out, o->shard_tokens) != 0) goto done;
    if (write_split(&val, o->out, o->shard_tokens) != 0) goto done;
    if (tokenizer_save(tok, o->out) != BT_OK) {
        cli_error("prep: %s", bt_last_error());
        goto done;
    }
    print_summary(o, tok, &train, &val, len, &t0);
    status = 0;
done:
    free(train.ids);
    free(val.ids);
    tokenizer_free(tok);
    free(text);
    return status;
}

int cmd_prep(int argc, char **argv) {
    struct prep_options o;
    int status = parse_args(argc, argv, &o);
    if (status >= 0) return status;
    return prep_run(&o);
}
