/* `braid inspect PATH`: summarizes a checkpoint (an HDF5 file, or a checkpoint directory through
 * its `latest`) or an llm.c token shard, told apart by their first bytes. A checkpoint's every
 * tensor is read, so every checksum is verified. Relies on data/checkpoint, data/shard,
 * data/tokenizer and launch/config (to read the config a checkpoint holds). */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/runtime.h"
#include "data/checkpoint.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "launch/commands.h"
#include "launch/config.h"

#define PATH_BUF 4096
#define FIRST_IDS 16     /* ids of a shard listed */
#define FIRST_DECODED 64 /* tokens of a shard decoded */

static const char inspect_usage[] =
    "usage: braid inspect PATH\n"
    "\n"
    "Summarizes a checkpoint or a token shard, told apart by content:\n"
    "  an HDF5 file (or a checkpoint directory, through its `latest`): step, tokens seen,\n"
    "    learning rate, optimizer, the stored config, RNG and data positions, tokenizer, and\n"
    "    every tensor with its dtype, shape and L2 norm (reading each one verifies its checksum);\n"
    "  an llm.c token shard (magic 20240520): header, token count, min/max id and, when a\n"
    "    tokenizer.yaml sits beside it, its first tokens decoded.\n"
    "Exit status: 0 ok, 1 unreadable or damaged input, 2 bad command line.\n"
    "See docs/inspect.md.\n";

typedef enum { INPUT_CHECKPOINT, INPUT_SHARD } input_kind;

/* "  label        value": the label column of every summary line */
#define LABEL "  %-12s "

/* ---- telling the input apart ---- */

/* Classifies path by its first bytes (a directory is a checkpoint directory); returns 0, or 1
 * after printing the error. */
static int detect_input(const char *path, input_kind *kind) {
    static const unsigned char hdf5_signature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    struct stat st;
    if (stat(path, &st) != 0) {
        cli_error("%s: cannot open: %s", path, strerror(errno));
        return 1;
    }
    if (S_ISDIR(st.st_mode)) {
        *kind = INPUT_CHECKPOINT;
        return 0;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        cli_error("%s: cannot open: %s", path, strerror(errno));
        return 1;
    }
    unsigned char head[8];
    size_t got = 0;
    while (got < sizeof head) {
        ssize_t r = read(fd, head + got, sizeof head - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            cli_error("%s: cannot read: %s", path, strerror(errno));
            close(fd);
            return 1;
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    close(fd);
    int32_t magic = 0;
    if (got >= sizeof magic) memcpy(&magic, head, sizeof magic); /* little-endian, as llm.c */
    if (got == sizeof head && !memcmp(head, hdf5_signature, sizeof head)) {
        *kind = INPUT_CHECKPOINT;
    } else if (got >= sizeof magic && magic == SHARD_MAGIC) {
        *kind = INPUT_SHARD;
    } else {
        cli_error("%s: neither a braid checkpoint (HDF5) nor a token shard (magic %d)", path,
                  SHARD_MAGIC);
        return 1;
    }
    return 0;
}

/* ---- text helpers ---- */

/* One byte of decoded text, escaped so the text stays on one line: \n \t \r \\ \" and \xNN. */
static void print_escaped_byte(unsigned char c) {
    const char *named = c == '\n'   ? "\\n"
                        : c == '\t' ? "\\t"
                        : c == '\r' ? "\\r"
                        : c == '\\' ? "\\\\"
                        : c == '"'  ? "\\\""
                                    : NULL;
    if (named)
        fputs(named, stdout);
    else if (c < 0x20 || c == 0x7f)
        printf("\\x%02X", c);
    else
        putchar(c);
}

/* Prints text in double quotes, escaped; bytes that are not valid UTF-8 (a gpt2 token cut inside a
 * character, the byte tokenizer) as \xNN. */
static void print_quoted(const char *text, size_t len) {
    putchar('"');
    for (size_t i = 0; i < len;) {
        int64_t bad = tokenizer_utf8_invalid_at(text + i, len - i);
        size_t end = bad < 0 ? len : i + (size_t)bad;
        for (; i < end; i++)
            print_escaped_byte((unsigned char)text[i]);
        if (i < len) printf("\\x%02X", (unsigned char)text[i++]);
    }
    putchar('"');
}

/* The value of a top-level `key: value` line of YAML text, copied (trimmed, unquoted) into buf;
 * false when there is no such line. Enough for the tokenizer.yaml a checkpoint holds. */
static bool yaml_top_value(const char *text, const char *key, char *buf, size_t size) {
    size_t key_len = strlen(key);
    for (const char *line = text; line && *line;) {
        const char *next = strchr(line, '\n');
        size_t line_len = next ? (size_t)(next - line) : strlen(line);
        if (line_len > key_len && !strncmp(line, key, key_len) && line[key_len] == ':') {
            const char *v = line + key_len + 1, *end = line + line_len;
            while (v < end && (*v == ' ' || *v == '"' || *v == '\''))
                v++;
            while (end > v &&
                   (end[-1] == ' ' || end[-1] == '\r' || end[-1] == '"' || end[-1] == '\''))
                end--;
            snprintf(buf, size, "%.*s", (int)(end - v), v);
            return true;
        }
        line = next ? next + 1 : NULL;
    }
    return false;
}

/* "(65,32)", "()" for a scalar */
static const char *shape_str(int ndim, const int64_t *shape, char *buf, size_t size) {
    size_t n = (size_t)snprintf(buf, size, "(");
    for (int d = 0; d < ndim && n < size; d++)
        n += (size_t)snprintf(buf + n, size - n, "%s%lld", d ? "," : "", (long long)shape[d]);
    if (n < size) snprintf(buf + n, size - n, ")");
    return buf;
}

static int64_t shape_numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= shape[d];
    return n;
}

static bool is_model_tensor(const char *name) {
    return !strncmp(name, "/model/", 7);
}

/* ---- checkpoints ---- */

/* The config summary: the resolved config the checkpoint stores, read over the defaults. */
static void print_config(const char *yaml) {
    if (!yaml[0]) {
        printf(LABEL "none stored\n", "config");
        return;
    }
    struct braid_config cfg;
    cfg_defaults(&cfg);
    if (cfg_load_text(&cfg, yaml, "/config") != BT_OK) {
        printf(LABEL "cannot be read: %s\n", "config", bt_last_error());
        bt_error_clear();
        return;
    }
    const struct cfg_model *m = &cfg.model;
    const struct cfg_train *t = &cfg.train;
    printf(LABEL "%s: n_layer %lld, n_head %lld, n_kv_head %lld, n_embd %lld, vocab_size %lld, "
                 "block_size %lld\n",
           "model", m->arch, (long long)m->n_layer, (long long)m->n_head,
           (long long)(m->n_kv_head ? m->n_kv_head : m->n_head), (long long)m->n_embd,
           (long long)m->vocab_size, (long long)m->block_size);
    printf(LABEL "batch_size %lld, seq_len %lld, grad_accum %lld; %s lr %g, %s schedule\n", "train",
           (long long)t->batch_size, (long long)t->seq_len, (long long)t->grad_accum,
           cfg.optimizer.name, cfg.optimizer.lr, cfg.schedule.name);
}

/* The run state: step, tokens, lr, optimizer, config, RNG, data position, tokenizer. */
static void print_run_state(const struct ckpt_file *f) {
    const struct ckpt_meta *meta = ckpt_meta(f);
    printf("braid inspect: checkpoint %s\n", ckpt_path(f));
    printf(LABEL "%d, written by braid %s\n", "format", CKPT_FORMAT_VERSION,
           ckpt_braid_version(f));
    printf(LABEL "%lld\n", "step", (long long)meta->step);
    printf(LABEL "%lld\n", "tokens seen", (long long)meta->tokens_seen);
    printf(LABEL "%g (of the last step)\n", "lr", meta->lr);
    const char *opt = ckpt_optimizer_name(f);
    if (opt[0])
        printf(LABEL "%s, %lld steps\n", "optimizer", opt, (long long)ckpt_optimizer_steps(f));
    else
        printf(LABEL "none stored\n", "optimizer");
    print_config(meta->config_yaml);
    printf(LABEL "seed %llu, offset %llu\n", "dropout rng", (unsigned long long)meta->dropout_seed,
           (unsigned long long)meta->dropout_offset);
    printf(LABEL "seed %llu, shuffle %s, seq_len %lld, position %lld (next sample)\n", "data",
           (unsigned long long)meta->data_seed, meta->data_shuffle ? "true" : "false",
           (long long)meta->data_seq_len, (long long)meta->data_position);
    char kind[64], vocab[32];
    if (meta->tokenizer_yaml[0] &&
        yaml_top_value(meta->tokenizer_yaml, "tokenizer", kind, sizeof kind)) {
        if (yaml_top_value(meta->tokenizer_yaml, "vocab_size", vocab, sizeof vocab))
            printf(LABEL "%s, vocab size %s\n", "tokenizer", kind, vocab);
        else
            printf(LABEL "%s\n", "tokenizer", kind);
    } else {
        printf(LABEL "unknown\n", "tokenizer");
    }
}

/* One tensor's row: its L2 norm (double accumulation), or its value for an int64 scalar. */
static void print_tensor_row(const struct ckpt_tensor_info *info, const bt_tensor *t,
                             int name_width) {
    char shape[128];
    shape_str(info->ndim, info->shape, shape, sizeof shape);
    printf("  %-*s  %-7s  %-14s  ", name_width, info->name, bt_dtype_name(info->dtype), shape);
    int64_t n = bt_numel(t);
    if (info->dtype == BT_I64) {
        const int64_t *v = bt_data(t);
        if (info->ndim == 0) {
            printf("value %lld\n", (long long)v[0]);
            return;
        }
        double sum = 0.0;
        for (int64_t i = 0; i < n; i++)
            sum += (double)v[i] * (double)v[i];
        printf("%.6g\n", sqrt(sum));
        return;
    }
    const float *x = bt_f32(t);
    double sum = 0.0;
    int64_t non_finite = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) non_finite++;
        sum += (double)x[i] * (double)x[i];
    }
    if (non_finite)
        printf("%.6g (%lld non-finite)\n", sqrt(sum), (long long)non_finite);
    else
        printf("%.6g\n", sqrt(sum));
}

/* The parameter count, then every tensor read (its checksum verified), one row each, freed
 * before the next is read. Returns 0, or 1 after printing the first error. */
static int print_tensors(struct ckpt_file *f) {
    int64_t n = ckpt_num_tensors(f), n_model = 0, n_params = 0, n_bytes = 0;
    int name_width = (int)strlen("tensor");
    for (int64_t i = 0; i < n; i++) {
        const struct ckpt_tensor_info *info = ckpt_tensor(f, i);
        int64_t numel = shape_numel(info->ndim, info->shape);
        n_bytes += numel * (int64_t)bt_dtype_size(info->dtype);
        if (is_model_tensor(info->name)) {
            n_model++;
            n_params += numel;
        }
        int len = (int)strlen(info->name);
        if (len > name_width) name_width = len;
    }
    printf(LABEL "%lld in %lld /model tensors\n", "parameters", (long long)n_params,
           (long long)n_model);
    printf(LABEL "%lld (%lld /model, %lld /optimizer), %lld bytes\n\n", "tensors", (long long)n,
           (long long)n_model, (long long)(n - n_model), (long long)n_bytes);
    printf("  %-*s  %-7s  %-14s  %s\n", name_width, "tensor", "dtype", "shape", "L2 norm");
    for (int64_t i = 0; i < n; i++) {
        bt_tensor *t = ckpt_read_tensor(f, i);
        if (!t) {
            fflush(stdout);
            cli_error("%s", bt_last_error());
            return 1;
        }
        print_tensor_row(ckpt_tensor(f, i), t, name_width);
        bt_tensor_free(t);
    }
    printf("\n" LABEL "all %lld tensors read, checksums verified\n", "checksums", (long long)n);
    return 0;
}

static int inspect_checkpoint(const char *path) {
    char resolved[PATH_BUF];
    if (ckpt_resolve(path, resolved, sizeof resolved) != BT_OK) {
        cli_error("%s", bt_last_error());
        return 1;
    }
    struct ckpt_file *f = ckpt_open(resolved);
    if (!f) {
        cli_error("%s", bt_last_error());
        return 1;
    }
    print_run_state(f);
    int status = print_tensors(f);
    ckpt_close(f);
    return status;
}

/* ---- token shards ---- */

/* The first tokens decoded, up to the first id outside the vocabulary. */
static int print_decoded(const struct tokenizer *tok, const struct shard *s) {
    int64_t vocab = tokenizer_vocab_size(tok);
    int64_t n = s->n_tokens < FIRST_DECODED ? s->n_tokens : FIRST_DECODED, good = 0;
    while (good < n && s->tokens[good] < vocab)
        good++;
    char *text = NULL;
    if (tokenizer_decode(tok, s->tokens, good, &text) != BT_OK) {
        cli_error("%s", bt_last_error());
        return 1;
    }
    printf(LABEL, "text");
    print_quoted(text, strlen(text));
    if (good < n)
        printf(" (first %lld tokens; token %lld is id %u, outside the vocabulary)\n",
               (long long)good, (long long)good, (unsigned)s->tokens[good]);
    else
        printf(" (first %lld tokens)\n", (long long)n);
    free(text);
    return 0;
}

/* The tokenizer.yaml beside the shard, if any: kind, vocabulary, ids outside it, decoded text. */
static int print_tokenizer(const struct shard *s, unsigned max_id) {
    char copy[PATH_BUF], yaml[PATH_BUF + 32];
    snprintf(copy, sizeof copy, "%s", s->path);
    const char *dir = dirname(copy); /* "." (not copy) for a bare file name */
    snprintf(yaml, sizeof yaml, "%s/tokenizer.yaml", dir);
    if (access(yaml, F_OK) != 0) {
        printf(LABEL "none beside the shard (no %s)\n", "tokenizer", yaml);
        return 0;
    }
    struct tokenizer *tok = tokenizer_load(dir, NULL);
    if (!tok) {
        printf(LABEL "cannot be loaded: %s\n", "tokenizer", bt_last_error());
        bt_error_clear();
        return 0;
    }
    int64_t vocab = tokenizer_vocab_size(tok);
    printf(LABEL "%s, vocab size %lld (%s)\n", "tokenizer",
           tokenizer_kind_name(tokenizer_kind_of(tok)), (long long)vocab, yaml);
    if (s->n_tokens > 0 && (int64_t)max_id >= vocab) {
        int64_t outside = 0;
        for (int64_t i = 0; i < s->n_tokens; i++)
            outside += s->tokens[i] >= vocab;
        printf(LABEL "%lld %s >= vocab size %lld: not this tokenizer's shard?\n", "warning",
               (long long)outside, outside == 1 ? "token has an id" : "tokens have ids",
               (long long)vocab);
    }
    int status = s->n_tokens > 0 ? print_decoded(tok, s) : 0;
    tokenizer_free(tok);
    return status;
}

static int inspect_shard(const char *path) {
    struct shard s;
    if (shard_open(&s, path) != BT_OK) {
        cli_error("%s", bt_last_error());
        return 1;
    }
    unsigned min_id = 0, max_id = 0;
    for (int64_t i = 0; i < s.n_tokens; i++) {
        unsigned id = s.tokens[i];
        if (i == 0 || id < min_id) min_id = id;
        if (i == 0 || id > max_id) max_id = id;
    }
    printf("braid inspect: token shard %s\n", path);
    printf(LABEL "%d\n", "magic", SHARD_MAGIC);
    printf(LABEL "%d (uint16 tokens)\n", "version", SHARD_VERSION);
    printf(LABEL "%lld\n", "tokens", (long long)s.n_tokens);
    printf(LABEL "%zu bytes\n", "file size", s.map_bytes);
    if (s.n_tokens > 0) {
        printf(LABEL "min %u, max %u\n", "token ids", min_id, max_id);
        int64_t n = s.n_tokens < FIRST_IDS ? s.n_tokens : FIRST_IDS;
        printf(LABEL, "first ids");
        for (int64_t i = 0; i < n; i++)
            printf("%s%u", i ? " " : "", (unsigned)s.tokens[i]);
        printf(s.n_tokens > n ? " ...\n" : "\n");
    } else {
        printf(LABEL "none (empty shard)\n", "token ids");
    }
    int status = print_tokenizer(&s, max_id);
    shard_close(&s);
    return status;
}

int cmd_inspect(int argc, char **argv) {
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
            fputs(inspect_usage, stdout);
            return 0;
        }
        if (arg[0] == '-' && arg[1]) {
            cli_error("inspect: unknown option '%s' (see braid inspect --help)", arg);
            return 2;
        }
        if (path) {
            cli_error("inspect: unexpected argument '%s': one PATH at a time (see braid inspect "
                      "--help)",
                      arg);
            return 2;
        }
        path = arg;
    }
    if (!path) {
        cli_error("inspect: expected a PATH: a checkpoint, a checkpoint directory or a token "
                  "shard (see braid inspect --help)");
        return 2;
    }
    input_kind kind;
    int status = detect_input(path, &kind);
    if (status == 0) status = kind == INPUT_SHARD ? inspect_shard(path) : inspect_checkpoint(path);
    bt_runtime_shutdown();
    return status;
}
