/* Job configuration: the key table (name, type, default, choices), libyaml document walking,
 * command-line overrides, the relation checks of cfg_finalize and the YAML dump. Every value goes
 * through one scalar parser, so a file and an override accept and reject the same text. */
#include "launch/config.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <yaml.h>

/* ---- the key table ---- */

enum cfg_type { CFG_INT, CFG_FLOAT, CFG_BOOL, CFG_STRING, CFG_ENUM };

struct cfg_key {
    const char *section, *name;
    enum cfg_type type;
    size_t offset, size; /* of the field in struct braid_config */
    const char *choices; /* CFG_ENUM: "gpt, llama" */
    const char *derived; /* a default that cfg_finalize resolves: from what */
};

#define FIELD(sec, key)                                                                            \
    offsetof(struct braid_config, sec.key), sizeof(((struct braid_config *)0)->sec.key)
#define KEY(sec, key, type)                                                                        \
    { #sec, #key, type, FIELD(sec, key), NULL, NULL }
#define ENUM(sec, key, choices)                                                                    \
    { #sec, #key, CFG_ENUM, FIELD(sec, key), choices, NULL }
#define DERIVED(sec, key, type, from)                                                              \
    { #sec, #key, type, FIELD(sec, key), NULL, from }

/* In docs order: the order of DESIGN.md's table, of docs/config.md and of cfg_to_yaml. */
static const struct cfg_key keys[] = {
    ENUM(model, arch, "gpt, llama"),
    KEY(model, vocab_size, CFG_INT),
    KEY(model, block_size, CFG_INT),
    KEY(model, n_layer, CFG_INT),
    KEY(model, n_head, CFG_INT),
    DERIVED(model, n_kv_head, CFG_INT, "model.n_head"),
    KEY(model, n_embd, CFG_INT),
    DERIVED(model, ffn_hidden, CFG_INT, "model.arch and model.n_embd"),
    KEY(model, dropout, CFG_FLOAT),
    KEY(model, bias, CFG_BOOL),
    ENUM(model, gelu, "tanh, exact"),
    KEY(model, norm_eps, CFG_FLOAT),
    KEY(model, rope_theta, CFG_FLOAT),
    DERIVED(model, tie_embeddings, CFG_BOOL, "model.arch"),
    KEY(model, init_from, CFG_STRING),
    KEY(train, seed, CFG_INT),
    KEY(train, batch_size, CFG_INT),
    DERIVED(train, seq_len, CFG_INT, "model.block_size"),
    KEY(train, grad_accum, CFG_INT),
    KEY(train, max_steps, CFG_INT),
    KEY(train, grad_clip, CFG_FLOAT),
    KEY(train, eval_every, CFG_INT),
    KEY(train, eval_steps, CFG_INT),
    ENUM(train, device, "cpu, cuda"),
    ENUM(train, dtype, "float32, bfloat16"),
    ENUM(optimizer, name, "adamw, sgd"),
    KEY(optimizer, lr, CFG_FLOAT),
    KEY(optimizer, beta1, CFG_FLOAT),
    KEY(optimizer, beta2, CFG_FLOAT),
    KEY(optimizer, eps, CFG_FLOAT),
    KEY(optimizer, weight_decay, CFG_FLOAT),
    KEY(optimizer, momentum, CFG_FLOAT),
    ENUM(schedule, name, "constant, cosine, linear"),
    KEY(schedule, warmup_steps, CFG_INT),
    DERIVED(schedule, decay_steps, CFG_INT, "train.max_steps"),
    KEY(schedule, min_lr, CFG_FLOAT),
    KEY(parallel, dp, CFG_INT),
    KEY(parallel, tp, CFG_INT),
    KEY(parallel, pp, CFG_INT),
    KEY(parallel, zero, CFG_INT),
    DERIVED(parallel, microbatches, CFG_INT, "train.grad_accum"),
    ENUM(parallel, schedule, "1f1b, gpipe"),
    KEY(parallel, bucket_mb, CFG_FLOAT),
    KEY(parallel, sequence_parallel, CFG_BOOL),
    KEY(parallel, stage_layers, CFG_STRING),
    KEY(parallel, virtual_stages, CFG_INT),
    KEY(data, train, CFG_STRING),
    KEY(data, val, CFG_STRING),
    KEY(data, shuffle, CFG_BOOL),
    KEY(checkpoint, dir, CFG_STRING),
    KEY(checkpoint, every, CFG_INT),
    KEY(checkpoint, keep, CFG_INT),
    KEY(checkpoint, resume, CFG_STRING),
    KEY(log, dir, CFG_STRING),
    KEY(log, every, CFG_INT),
};

_Static_assert(sizeof keys / sizeof keys[0] == CFG_N_KEYS, "CFG_N_KEYS must count the key table");

static const char *const sections[] = {"model",    "train", "optimizer",  "schedule",
                                       "parallel", "data",  "checkpoint", "log"};
#define N_SECTIONS ((int)(sizeof sections / sizeof sections[0]))

static void set_string(char *field, size_t size, const char *value) {
    memset(field, 0, size); /* zero the tail too, so equal configs compare equal bytewise */
    snprintf(field, size, "%s", value);
}

#define SET_STRING(field, value) set_string(field, sizeof(field), value)

void cfg_defaults(struct braid_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    struct cfg_model *m = &cfg->model;
    SET_STRING(m->arch, "gpt");
    m->vocab_size = 0;
    m->block_size = 1024;
    m->n_layer = 12;
    m->n_head = 12;
    m->n_kv_head = 0;
    m->n_embd = 768;
    m->ffn_hidden = 0;
    m->dropout = 0.0;
    m->bias = true;
    SET_STRING(m->gelu, "tanh");
    m->norm_eps = 1e-5;
    m->rope_theta = 10000.0;
    m->tie_embeddings = true;
    struct cfg_train *t = &cfg->train;
    t->seed = 1337;
    t->batch_size = 12;
    t->seq_len = 0;
    t->grad_accum = 1;
    t->max_steps = 2000;
    t->grad_clip = 1.0;
    t->eval_every = 250;
    t->eval_steps = 20;
    SET_STRING(t->device, "cpu");
    SET_STRING(t->dtype, "float32");
    struct cfg_optimizer *o = &cfg->optimizer;
    SET_STRING(o->name, "adamw");
    o->lr = 6e-4;
    o->beta1 = 0.9;
    o->beta2 = 0.95;
    o->eps = 1e-8;
    o->weight_decay = 0.1;
    o->momentum = 0.0;
    SET_STRING(cfg->schedule.name, "cosine");
    cfg->schedule.warmup_steps = 100;
    cfg->schedule.decay_steps = 0;
    cfg->schedule.min_lr = 6e-5;
    struct cfg_parallel *p = &cfg->parallel;
    p->dp = p->tp = p->pp = 1;
    p->zero = 0;
    p->bucket_mb = 25.0;
    p->virtual_stages = 1;
    p->microbatches = 0;
    SET_STRING(p->schedule, "1f1b");
    cfg->data.shuffle = true;
    SET_STRING(cfg->checkpoint.dir, "checkpoints");
    cfg->checkpoint.every = 0;
    cfg->checkpoint.keep = 3;
    SET_STRING(cfg->checkpoint.resume, "auto");
    SET_STRING(cfg->log.dir, "runs");
    cfg->log.every = 10;
}

/* ---- looking keys up ---- */

static int find_section(const char *name, size_t len) {
    for (int s = 0; s < N_SECTIONS; s++)
        if (strlen(sections[s]) == len && memcmp(sections[s], name, len) == 0) return s;
    return -1;
}

static int find_key(const char *section, const char *name, size_t len) {
    for (int k = 0; k < CFG_N_KEYS; k++)
        if (strcmp(keys[k].section, section) == 0 && strlen(keys[k].name) == len &&
            memcmp(keys[k].name, name, len) == 0)
            return k;
    return -1;
}

/* "model.n_layer" -> its index, or -1 */
static int find_dotted(const char *dotted) {
    const char *dot = strchr(dotted, '.');
    if (!dot) return -1;
    int s = find_section(dotted, (size_t)(dot - dotted));
    return s < 0 ? -1 : find_key(sections[s], dot + 1, strlen(dot + 1));
}

static int key_at(const void *cfg, const void *field) {
    size_t offset = (size_t)((const char *)field - (const char *)cfg);
    for (int k = 0; k < CFG_N_KEYS; k++)
        if (keys[k].offset == offset) return k;
    return -1;
}

/* Levenshtein distance of two short names; a large number when either is too long to matter. */
static size_t edit_distance(const char *a, size_t la, const char *b) {
    enum { MAX = 48 };
    size_t lb = strlen(b), row[MAX + 1];
    if (la > MAX || lb > MAX) return MAX;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diagonal = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t above = row[j];
            size_t best = diagonal + (a[i - 1] != b[j - 1]);
            if (above + 1 < best) best = above + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diagonal = above;
        }
    }
    return row[lb];
}

/* Close enough to be a typo: at most 2 edits, and fewer than the name has letters. */
static bool is_typo_of(const char *name, size_t len, const char *candidate) {
    size_t d = edit_distance(name, len, candidate);
    return d <= 2 && d < len;
}

/* " (did you mean 'model.n_layer'?)" for an unknown key of `section` (NULL: any section), or "" */
static void suggest_key(const char *section, const char *name, size_t len, char *buf, size_t size) {
    buf[0] = '\0';
    int best = -1;
    size_t best_distance = 3;
    for (int k = 0; k < CFG_N_KEYS; k++) {
        bool same_name = strlen(keys[k].name) == len && memcmp(keys[k].name, name, len) == 0;
        if (same_name) { /* the right key in the wrong section */
            best = k;
            break;
        }
        if (section && strcmp(keys[k].section, section) != 0) continue;
        size_t d = edit_distance(name, len, keys[k].name);
        if (is_typo_of(name, len, keys[k].name) && d < best_distance) {
            best = k;
            best_distance = d;
        }
    }
    if (best >= 0)
        snprintf(buf, size, " (did you mean '%s.%s'?)", keys[best].section, keys[best].name);
}

/* " (did you mean 'model'?)" for an unknown section, or a key's place when it is a key name */
static void suggest_section(const char *name, size_t len, char *buf, size_t size) {
    buf[0] = '\0';
    for (int s = 0; s < N_SECTIONS; s++)
        if (is_typo_of(name, len, sections[s])) {
            snprintf(buf, size, " (did you mean '%s'?)", sections[s]);
            return;
        }
    suggest_key(NULL, name, len, buf, size);
}

/* ---- one scalar value: the parser shared by files and overrides ---- */

enum scalar_style { YAML_PLAIN, YAML_QUOTED, COMMAND_LINE };

static bool is_digits(const char **s) {
    const char *start = *s;
    while (**s >= '0' && **s <= '9')
        (*s)++;
    return *s > start;
}

/* Decimal integer: [+-]digits, within int64 */
static bool parse_int(const char *text, int64_t *out, bool *out_of_range) {
    const char *s = text + (*text == '+' || *text == '-');
    if (!is_digits(&s) || *s != '\0') return false;
    errno = 0;
    long long v = strtoll(text, NULL, 10);
    *out_of_range = errno == ERANGE;
    *out = v;
    return !*out_of_range;
}

/* Decimal number: [+-](digits[.digits] | .digits)[e[+-]digits], finite */
static bool parse_float(const char *text, double *out, bool *out_of_range) {
    const char *s = text + (*text == '+' || *text == '-');
    bool whole = is_digits(&s), fraction = false;
    if (*s == '.') {
        s++;
        fraction = is_digits(&s);
    }
    if (!whole && !fraction) return false;
    if (*s == 'e' || *s == 'E') {
        s++;
        s += (*s == '+' || *s == '-');
        if (!is_digits(&s)) return false;
    }
    if (*s != '\0') return false;
    *out = strtod(text, NULL);
    *out_of_range = !isfinite(*out);
    return !*out_of_range;
}

static bool enum_has(const char *choices, const char *value) {
    size_t len = strlen(value);
    for (const char *c = choices; *c;) {
        size_t n = strcspn(c, ",");
        if (n == len && memcmp(c, value, len) == 0 && len > 0) return true;
        c += n;
        while (*c == ',' || *c == ' ')
            c++;
    }
    return false;
}

static bool is_yaml_null(const char *text) {
    return !*text || strcmp(text, "~") == 0 || strcmp(text, "null") == 0 ||
           strcmp(text, "Null") == 0 || strcmp(text, "NULL") == 0;
}

static const char *type_words(const struct cfg_key *k, char *buf, size_t size) {
    switch (k->type) {
    case CFG_INT:
        return "an integer";
    case CFG_FLOAT:
        return "a number";
    case CFG_BOOL:
        return "true or false";
    case CFG_STRING:
        return "a string";
    case CFG_ENUM:
        snprintf(buf, size, "one of %s", k->choices);
        return buf;
    }
    return "?";
}

/* Parses `text` as key k's type into cfg. On failure writes why ("expected an integer, got
 * 'abc'") into `why` and returns false; cfg is then unchanged. */
static bool parse_value(struct braid_config *cfg, const struct cfg_key *k, const char *text,
                        size_t len, enum scalar_style style, char *why, size_t why_size) {
    char *field = (char *)cfg + k->offset, words[96];
    const char *expected = type_words(k, words, sizeof words);
    int shown = len > 60 ? 60 : (int)len; /* quote long values in part */
    const char *more = len > 60 ? "..." : "";
    bool quoted = style == YAML_QUOTED, out_of_range = false;
    if (memchr(text, '\0', len)) {
        snprintf(why, why_size, "expected %s, got a value with a NUL byte", expected);
        return false;
    }
    switch (k->type) {
    case CFG_INT: {
        int64_t v;
        if (!quoted && parse_int(text, &v, &out_of_range)) {
            memcpy(field, &v, sizeof v);
            return true;
        }
        break;
    }
    case CFG_FLOAT: {
        double v;
        if (!quoted && parse_float(text, &v, &out_of_range)) {
            memcpy(field, &v, sizeof v);
            return true;
        }
        break;
    }
    case CFG_BOOL:
        if (!quoted && (strcmp(text, "true") == 0 || strcmp(text, "false") == 0)) {
            *(bool *)field = text[0] == 't';
            return true;
        }
        break;
    case CFG_ENUM:
        if (enum_has(k->choices, text)) {
            set_string(field, k->size, text);
            return true;
        }
        snprintf(why, why_size, "'%.*s%s' is not one of %s", shown, text, more, k->choices);
        return false;
    case CFG_STRING:
        if (len >= k->size) {
            snprintf(why, why_size, "'%.*s%s' is longer than %zu characters", shown, text, more,
                     k->size - 1);
            return false;
        }
        set_string(field, k->size, style == YAML_PLAIN && is_yaml_null(text) ? "" : text);
        return true;
    }
    snprintf(why, why_size, "expected %s, got %s'%.*s%s'%s", expected, quoted ? "the string " : "",
             shown, text, more, out_of_range ? " (out of range)" : "");
    return false;
}

/* ---- reading a YAML document ---- */

struct yaml_reader {
    struct braid_config *cfg;
    yaml_document_t *doc;
    const char *path;
    int key_line[CFG_N_KEYS];     /* where this file set each key, for duplicates */
    int section_line[N_SECTIONS]; /* where this file opened each section */
};

static int line_of(const yaml_node_t *node) {
    return (int)node->start_mark.line + 1;
}

static const char *node_kind(const yaml_node_t *node) {
    switch (node->type) {
    case YAML_SCALAR_NODE:
        return "a scalar";
    case YAML_SEQUENCE_NODE:
        return "a sequence";
    case YAML_MAPPING_NODE:
        return "a mapping";
    default:
        return "nothing";
    }
}

static bool is_null_node(const yaml_node_t *node) {
    return node->type == YAML_SCALAR_NODE && node->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
           is_yaml_null((const char *)node->data.scalar.value);
}

/* The name of a mapping key: a scalar, else an error */
static bt_status key_name(struct yaml_reader *r, const yaml_node_t *node, const char *what,
                          const char **name, size_t *len) {
    if (node->type != YAML_SCALAR_NODE)
        return bt_error("%s:%d: expected %s name, got %s", r->path, line_of(node), what,
                        node_kind(node));
    *name = (const char *)node->data.scalar.value;
    *len = node->data.scalar.length;
    return BT_OK;
}

static bt_status read_value(struct yaml_reader *r, int k, yaml_node_t *value) {
    const struct cfg_key *key = &keys[k];
    char why[320], words[96];
    if (value->type != YAML_SCALAR_NODE)
        return bt_error("%s:%d: %s.%s: expected %s, got %s", r->path, line_of(value), key->section,
                        key->name, type_words(key, words, sizeof words), node_kind(value));
    enum scalar_style style =
        value->data.scalar.style == YAML_PLAIN_SCALAR_STYLE ? YAML_PLAIN : YAML_QUOTED;
    if (!parse_value(r->cfg, key, (const char *)value->data.scalar.value, value->data.scalar.length,
                     style, why, sizeof why))
        return bt_error("%s:%d: %s.%s: %s", r->path, line_of(value), key->section, key->name, why);
    return BT_OK;
}

static bt_status read_section(struct yaml_reader *r, int s, yaml_node_t *body) {
    if (is_null_node(body)) return BT_OK; /* `model:` with every key commented out */
    if (body->type != YAML_MAPPING_NODE)
        return bt_error("%s:%d: section '%s' must be a mapping of keys, got %s", r->path,
                        line_of(body), sections[s], node_kind(body));
    for (yaml_node_pair_t *pair = body->data.mapping.pairs.start;
         pair < body->data.mapping.pairs.top; pair++) {
        yaml_node_t *key = yaml_document_get_node(r->doc, pair->key);
        yaml_node_t *value = yaml_document_get_node(r->doc, pair->value);
        const char *name = NULL;
        size_t len = 0;
        char hint[96];
        if (key_name(r, key, "a key", &name, &len) != BT_OK) return BT_ERR;
        int k = find_key(sections[s], name, len);
        if (k < 0) {
            suggest_key(sections[s], name, len, hint, sizeof hint);
            return bt_error("%s:%d: unknown key '%s.%.*s'%s", r->path, line_of(key), sections[s],
                            (int)(len > 64 ? 64 : len), name, hint);
        }
        if (r->key_line[k])
            return bt_error("%s:%d: duplicate key '%s.%s' (first set at line %d)", r->path,
                            line_of(key), sections[s], keys[k].name, r->key_line[k]);
        r->key_line[k] = line_of(key);
        if (read_value(r, k, value) != BT_OK) return BT_ERR;
        r->cfg->origin[k] = line_of(key);
    }
    return BT_OK;
}

static bt_status read_document(struct yaml_reader *r) {
    yaml_node_t *root = yaml_document_get_root_node(r->doc);
    if (!root || is_null_node(root)) return BT_OK; /* an empty file: every default */
    if (root->type != YAML_MAPPING_NODE)
        return bt_error("%s:%d: expected a mapping of sections (model:, train:, ...), got %s",
                        r->path, line_of(root), node_kind(root));
    for (yaml_node_pair_t *pair = root->data.mapping.pairs.start;
         pair < root->data.mapping.pairs.top; pair++) {
        yaml_node_t *key = yaml_document_get_node(r->doc, pair->key);
        const char *name = NULL;
        size_t len = 0;
        char hint[96];
        if (key_name(r, key, "a section", &name, &len) != BT_OK) return BT_ERR;
        int s = find_section(name, len);
        if (s < 0) {
            suggest_section(name, len, hint, sizeof hint);
            return bt_error("%s:%d: unknown section '%.*s'%s", r->path, line_of(key),
                            (int)(len > 64 ? 64 : len), name, hint);
        }
        if (r->section_line[s])
            return bt_error("%s:%d: duplicate section '%s' (first at line %d)", r->path,
                            line_of(key), sections[s], r->section_line[s]);
        r->section_line[s] = line_of(key);
        if (read_section(r, s, yaml_document_get_node(r->doc, pair->value)) != BT_OK) return BT_ERR;
    }
    return BT_OK;
}

/* The line holding byte `offset` of f: libyaml's reader errors give only the offset. */
static size_t line_at_offset(FILE *f, size_t offset) {
    size_t line = 1;
    rewind(f);
    for (size_t i = 0; i < offset; i++) {
        int c = fgetc(f);
        if (c == EOF) break;
        line += c == '\n';
    }
    return line;
}

static bt_status syntax_error(const char *path, const yaml_parser_t *parser, FILE *f) {
    if (parser->error == YAML_MEMORY_ERROR) return bt_error("%s: out of memory parsing YAML", path);
    if (parser->error == YAML_READER_ERROR)
        return bt_error("%s:%zu: YAML syntax error: %s (at byte %zu)", path,
                        line_at_offset(f, parser->problem_offset), parser->problem,
                        parser->problem_offset);
    char context[160] = "";
    if (parser->context)
        snprintf(context, sizeof context, " (%s at line %zu)", parser->context,
                 parser->context_mark.line + 1);
    return bt_error("%s:%zu: YAML syntax error: %s%s", path, parser->problem_mark.line + 1,
                    parser->problem ? parser->problem : "unknown problem", context);
}

/* A job file holds one document: anything after a second `---` is a mistake, not ignored. */
static bt_status check_single_document(const char *path, yaml_parser_t *parser, FILE *f) {
    yaml_document_t next;
    if (!yaml_parser_load(parser, &next)) return syntax_error(path, parser, f);
    yaml_node_t *root = yaml_document_get_root_node(&next);
    int line = root ? line_of(root) : 0;
    yaml_document_delete(&next);
    if (root) return bt_error("%s:%d: a second YAML document; a job file holds one", path, line);
    return BT_OK;
}

static FILE *open_regular_file(const char *path) {
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f) {
        bt_error("%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(f);
        bt_error("%s: cannot open: %s", path, strerror(EISDIR));
        return NULL;
    }
    return f;
}

/* Keys a previous file set keep their values but not their lines, which were lines of that file. */
static void forget_earlier_lines(struct braid_config *cfg) {
    for (int k = 0; k < CFG_N_KEYS; k++)
        if (cfg->origin[k] > 0) cfg->origin[k] = CFG_FROM_EARLIER_FILE;
}

/* Reads the YAML of stream f (named `path` in messages) over cfg; closes f. */
static bt_status load_stream(struct braid_config *cfg, const char *path, FILE *f) {
    bt_status status = BT_ERR;
    struct braid_config next = *cfg; /* cfg changes only when the whole file is good */
    struct yaml_reader reader = {.cfg = &next, .path = path};
    yaml_parser_t parser;
    yaml_document_t doc;
    bool have_parser = false, have_doc = false;
    if (!f) goto fail;
    if (!yaml_parser_initialize(&parser)) {
        bt_error("%s: out of memory starting the YAML parser", path);
        goto fail;
    }
    have_parser = true;
    yaml_parser_set_input_file(&parser, f);
    if (!yaml_parser_load(&parser, &doc)) {
        syntax_error(path, &parser, f);
        goto fail;
    }
    have_doc = true;
    reader.doc = &doc;
    forget_earlier_lines(&next);
    SET_STRING(next.source, path);
    if (read_document(&reader) != BT_OK || check_single_document(path, &parser, f) != BT_OK)
        goto fail;
    *cfg = next;
    status = BT_OK;
fail:
    if (have_doc) yaml_document_delete(&doc);
    if (have_parser) yaml_parser_delete(&parser);
    if (f) fclose(f);
    return status;
}

bt_status cfg_load_file(struct braid_config *cfg, const char *path) {
    return load_stream(cfg, path, open_regular_file(path));
}

bt_status cfg_load_text(struct braid_config *cfg, const char *text, const char *name) {
    size_t len = strlen(text);
    if (len == 0) return BT_OK; /* an empty document: every key keeps its value */
    FILE *f = fmemopen((void *)text, len, "rb");
    if (!f) return bt_error("%s: cannot read the config text: %s", name, strerror(errno));
    return load_stream(cfg, name, f);
}

/* ---- command-line overrides ---- */

bt_status cfg_apply_override(struct braid_config *cfg, const char *arg) {
    const char *s = arg + (arg[0] == '-') + (arg[0] == '-' && arg[1] == '-');
    const char *eq = strchr(s, '=');
    const char *dot = eq ? memchr(s, '.', (size_t)(eq - s)) : NULL;
    char hint[96] = "", why[320];
    if (!eq || !dot || dot == s) {
        size_t len = eq ? (size_t)(eq - s) : strlen(s);
        if (!dot) suggest_key(NULL, s, len, hint, sizeof hint);
        return bt_error("command line: %s: expected --section.key=value%s", arg, hint);
    }
    int sec = find_section(s, (size_t)(dot - s));
    if (sec < 0) {
        suggest_section(s, (size_t)(dot - s), hint, sizeof hint);
        return bt_error("command line: %s: unknown section '%.*s'%s", arg, (int)(dot - s), s, hint);
    }
    const char *name = dot + 1;
    size_t len = (size_t)(eq - name);
    int k = find_key(sections[sec], name, len);
    if (k < 0) {
        suggest_key(sections[sec], name, len, hint, sizeof hint);
        return bt_error("command line: %s: unknown key '%s.%.*s'%s", arg, sections[sec], (int)len,
                        name, hint);
    }
    if (!parse_value(cfg, &keys[k], eq + 1, strlen(eq + 1), COMMAND_LINE, why, sizeof why))
        return bt_error("command line: %s: %s", arg, why);
    cfg->origin[k] = CFG_FROM_COMMAND_LINE;
    return BT_OK;
}

/* ---- keys by index, for comparing configs ---- */

static const char *format_value(const struct braid_config *cfg, int k, char *buf, size_t size);

const char *cfg_key_name(int k, char *buf, size_t size) {
    if (k < 0 || k >= CFG_N_KEYS) return NULL;
    snprintf(buf, size, "%s.%s", keys[k].section, keys[k].name);
    return buf;
}

const char *cfg_value_text(const struct braid_config *cfg, int k, char *buf, size_t size) {
    if (k < 0 || k >= CFG_N_KEYS) return NULL;
    return format_value(cfg, k, buf, size);
}

/* ---- where keys came from ---- */

static const char *origin_text(const struct braid_config *cfg, int k, char *buf, size_t size) {
    int origin = cfg->origin[k];
    if (origin > 0)
        snprintf(buf, size, "%s:%d", cfg->source, origin);
    else if (origin == CFG_FROM_COMMAND_LINE)
        snprintf(buf, size, "command line");
    else if (origin == CFG_FROM_EARLIER_FILE)
        snprintf(buf, size, "an earlier file");
    else
        snprintf(buf, size, "default");
    return buf;
}

bool cfg_is_set(const struct braid_config *cfg, const char *key) {
    int k = find_dotted(key);
    return k >= 0 && cfg->origin[k] != CFG_FROM_DEFAULT;
}

const char *cfg_origin(const struct braid_config *cfg, const char *key, char *buf, size_t size) {
    int k = find_dotted(key);
    return k < 0 ? NULL : origin_text(cfg, k, buf, size);
}

/* ---- writing values ---- */

/* The shortest form that reads back to the same double, always with a '.' ("10000.0",
 * "1.0e-05"): YAML 1.1 readers such as PyYAML take "1e-05" for a string. */
static void format_float(double v, char *buf, size_t size) {
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(buf, size, "%.1f", v);
        return;
    }
    char shortest[40];
    for (int digits = 1; digits <= 17; digits++) {
        snprintf(shortest, sizeof shortest, "%.*g", digits, v);
        if (strtod(shortest, NULL) == v) break;
    }
    char *e = strchr(shortest, 'e');
    if (e && !memchr(shortest, '.', (size_t)(e - shortest)))
        snprintf(buf, size, "%.*s.0%s", (int)(e - shortest), shortest, e);
    else
        snprintf(buf, size, "%s", shortest);
}

/* key k's value as text: 12, 0.0006, true, gpt, or the string itself */
static const char *format_value(const struct braid_config *cfg, int k, char *buf, size_t size) {
    const char *field = (const char *)cfg + keys[k].offset;
    int64_t i;
    double d;
    switch (keys[k].type) {
    case CFG_INT:
        memcpy(&i, field, sizeof i);
        snprintf(buf, size, "%lld", (long long)i);
        break;
    case CFG_FLOAT:
        memcpy(&d, field, sizeof d);
        format_float(d, buf, size);
        break;
    case CFG_BOOL:
        snprintf(buf, size, "%s", *(const bool *)field ? "true" : "false");
        break;
    case CFG_STRING:
    case CFG_ENUM:
        snprintf(buf, size, "%s", field);
        break;
    }
    return buf;
}

/* ---- cfg_finalize: derived defaults and checks ---- */

/* "model.n_head=3", plus where it was set when that differs from the message's place */
static void describe_key(const struct braid_config *cfg, int k, int place, char *buf, size_t size) {
    char value[CFG_STR], where[CFG_STR + 16];
    format_value(cfg, k, value, sizeof value);
    const char *quote = keys[k].type == CFG_STRING ? "'" : "";
    int n = snprintf(buf, size, "%s.%s=%s%s%s", keys[k].section, keys[k].name, quote, value, quote);
    if (n < 0 || (size_t)n >= size) return;
    if (cfg->origin[k] == CFG_FROM_DEFAULT && keys[k].derived)
        snprintf(buf + n, size - (size_t)n, " (default, from %s)", keys[k].derived);
    else if (cfg->origin[k] == CFG_FROM_DEFAULT)
        snprintf(buf + n, size - (size_t)n, " (default)");
    else if (cfg->origin[k] > 0 && place > 0 && cfg->origin[k] != place)
        snprintf(buf + n, size - (size_t)n, " (line %d)", cfg->origin[k]); /* same file */
    else if (cfg->origin[k] != place)
        snprintf(buf + n, size - (size_t)n, " (%s)", origin_text(cfg, k, where, sizeof where));
}

/* "job.yaml:9: " naming the first of keys ks[0..n) that was set, "" when all are defaults;
 * returns that key's origin */
static int message_place(const struct braid_config *cfg, const int *ks, int n, char *buf,
                         size_t size) {
    char where[CFG_STR + 16];
    buf[0] = '\0';
    for (int i = 0; i < n; i++)
        if (ks[i] >= 0 && cfg->origin[ks[i]] != CFG_FROM_DEFAULT) {
            snprintf(buf, size, "%s: ", origin_text(cfg, ks[i], where, sizeof where));
            return cfg->origin[ks[i]];
        }
    return CFG_FROM_DEFAULT;
}

/* Fails naming one key or two: "job.yaml:9: model.n_embd=100 is not divisible by
 * model.n_head=3", then `note` when there is one. */
static bt_status key_error(const struct braid_config *cfg, const void *a, const char *relation,
                           const void *b, const char *note) {
    int ka = key_at(cfg, a), kb = b ? key_at(cfg, b) : -1, ks[2] = {ka, kb};
    char place[CFG_STR + 32], first[2 * CFG_STR], second[2 * CFG_STR] = "";
    int line = message_place(cfg, ks, 2, place, sizeof place);
    describe_key(cfg, ka, line, first, sizeof first);
    if (kb >= 0) describe_key(cfg, kb, line, second, sizeof second);
    return bt_error("%s%s %s%s%s%s%s", place, first, relation, kb >= 0 ? " " : "", second,
                    note ? ": " : "", note ? note : "");
}

static bt_status check_min(const struct braid_config *cfg, const int64_t *field, int64_t min) {
    if (*field >= min) return BT_OK;
    char relation[48];
    snprintf(relation, sizeof relation, "must be >= %lld", (long long)min);
    return key_error(cfg, field, relation, NULL, NULL);
}

/* lo <= v (or lo < v when !lo_inclusive) and v < hi (hi = INFINITY: no bound above) */
static bt_status check_range(const struct braid_config *cfg, const double *field, double lo,
                             bool lo_inclusive, double hi) {
    bool ok = (lo_inclusive ? *field >= lo : *field > lo) && *field < hi;
    if (ok) return BT_OK;
    char relation[128], lo_text[40], hi_text[40];
    format_float(lo, lo_text, sizeof lo_text);
    format_float(hi, hi_text, sizeof hi_text);
    if (isinf(hi))
        snprintf(relation, sizeof relation, "must be %s %s", lo_inclusive ? ">=" : ">", lo_text);
    else
        snprintf(relation, sizeof relation, "must be in %s%s, %s)", lo_inclusive ? "[" : "(",
                 lo_text, hi_text);
    return key_error(cfg, field, relation, NULL, NULL);
}

static bt_status check_sizes(const struct braid_config *cfg) {
    const struct cfg_model *m = &cfg->model;
    const struct cfg_train *t = &cfg->train;
    const int64_t *at_least_one[] = {&m->block_size,    &m->n_layer,           &m->n_head,
                                     &m->n_embd,        &t->batch_size,        &t->grad_accum,
                                     &t->max_steps,     &cfg->parallel.dp,     &cfg->parallel.tp,
                                     &cfg->parallel.pp, &cfg->checkpoint.keep, &cfg->log.every};
    const int64_t *at_least_zero[] = {&m->vocab_size,
                                      &m->n_kv_head,
                                      &m->ffn_hidden,
                                      &t->seq_len,
                                      &t->eval_every,
                                      &cfg->schedule.warmup_steps,
                                      &cfg->schedule.decay_steps,
                                      &cfg->parallel.microbatches,
                                      &cfg->checkpoint.every};
    for (size_t i = 0; i < sizeof at_least_one / sizeof at_least_one[0]; i++)
        if (check_min(cfg, at_least_one[i], 1) != BT_OK) return BT_ERR;
    for (size_t i = 0; i < sizeof at_least_zero / sizeof at_least_zero[0]; i++)
        if (check_min(cfg, at_least_zero[i], 0) != BT_OK) return BT_ERR;
    if (t->eval_every > 0 && t->eval_steps < 1)
        return key_error(cfg, &t->eval_steps, "must be >= 1", NULL,
                         "set train.eval_every=0 to turn evaluation off");
    if (cfg->parallel.zero != 0 && cfg->parallel.zero != 1)
        return key_error(cfg, &cfg->parallel.zero, "must be 0 or 1", NULL, NULL);
    if (!(cfg->parallel.bucket_mb > 0.0 && cfg->parallel.bucket_mb <= 1e6))
        return key_error(cfg, &cfg->parallel.bucket_mb, "must be in (0, 1e6]", NULL, NULL);
    return BT_OK;
}

/* LLaMA's FFN width: 2/3 of 4*n_embd, rounded up to a multiple of 256 */
static int64_t llama_ffn_hidden(int64_t n_embd) {
    int64_t hidden = 2 * (4 * n_embd) / 3;
    return (hidden + 255) / 256 * 256;
}

static bt_status fill_derived(struct braid_config *cfg) {
    struct cfg_model *m = &cfg->model;
    bool llama = strcmp(m->arch, "llama") == 0;
    if (m->n_embd > INT64_MAX / 8) return key_error(cfg, &m->n_embd, "is too large", NULL, NULL);
    if (m->n_kv_head == 0) m->n_kv_head = m->n_head;
    if (m->ffn_hidden == 0) m->ffn_hidden = llama ? llama_ffn_hidden(m->n_embd) : 4 * m->n_embd;
    if (!cfg_is_set(cfg, "model.tie_embeddings")) m->tie_embeddings = !llama;
    if (cfg->train.seq_len == 0) cfg->train.seq_len = m->block_size;
    if (cfg->schedule.decay_steps == 0) cfg->schedule.decay_steps = cfg->train.max_steps;
    if (cfg->parallel.microbatches == 0) cfg->parallel.microbatches = cfg->train.grad_accum;
    return BT_OK;
}

static bt_status check_model(const struct braid_config *cfg) {
    const struct cfg_model *m = &cfg->model;
    if (m->n_embd % m->n_head != 0)
        return key_error(cfg, &m->n_embd, "is not divisible by", &m->n_head, NULL);
    if (m->n_head % m->n_kv_head != 0)
        return key_error(cfg, &m->n_head, "is not divisible by", &m->n_kv_head,
                         "query heads are shared evenly among key/value heads");
    if (strcmp(m->arch, "llama") == 0 && (m->n_embd / m->n_head) % 2 != 0) {
        char note[96];
        snprintf(note, sizeof note, "head size %lld is odd; RoPE (model.arch=llama) needs it even",
                 (long long)(m->n_embd / m->n_head));
        return key_error(cfg, &m->n_embd, "/", &m->n_head, note);
    }
    if (check_range(cfg, &m->dropout, 0, true, 1) != BT_OK ||
        check_range(cfg, &m->norm_eps, 0, false, INFINITY) != BT_OK ||
        check_range(cfg, &m->rope_theta, 0, false, INFINITY) != BT_OK)
        return BT_ERR;
    if (cfg->train.seq_len > m->block_size)
        return key_error(cfg, &cfg->train.seq_len, "must be <=", &m->block_size, NULL);
    return BT_OK;
}

static bt_status check_optimizer(const struct braid_config *cfg) {
    const struct cfg_optimizer *o = &cfg->optimizer;
    const struct cfg_schedule *s = &cfg->schedule;
    if (check_range(cfg, &o->lr, 0, false, INFINITY) != BT_OK ||
        check_range(cfg, &o->beta1, 0, true, 1) != BT_OK ||
        check_range(cfg, &o->beta2, 0, true, 1) != BT_OK ||
        check_range(cfg, &o->eps, 0, false, INFINITY) != BT_OK ||
        check_range(cfg, &o->weight_decay, 0, true, INFINITY) != BT_OK ||
        check_range(cfg, &o->momentum, 0, true, 1) != BT_OK ||
        check_range(cfg, &cfg->train.grad_clip, 0, true, INFINITY) != BT_OK ||
        check_range(cfg, &s->min_lr, 0, true, INFINITY) != BT_OK)
        return BT_ERR;
    /* a constant schedule never reaches min_lr, so only a decaying one needs it below lr */
    if (strcmp(s->name, "constant") != 0 && s->min_lr > o->lr)
        return key_error(cfg, &s->min_lr, "must be <=", &o->lr, NULL);
    if (s->warmup_steps > s->decay_steps)
        return key_error(cfg, &s->warmup_steps, "must be <=", &s->decay_steps, NULL);
    return BT_OK;
}

/* parallel.stage_layers: "n0,n1,..." into counts (at most max); the number of them, or -1 when
 * the text is not a list of positive integers */
static int parse_stage_layers(const char *text, int64_t *counts, int max) {
    int n = 0;
    for (const char *at = text;; at++) {
        char *end;
        long long v = strtoll(at, &end, 10);
        if (end == at || v < 1 || n == max || (*end != ',' && *end != '\0')) return -1;
        counts[n++] = v;
        at = end;
        if (*at == '\0') return n;
    }
}

/* a list of parallel.pp positive block counts summing to model.n_layer */
static bt_status check_stage_layers(const struct braid_config *cfg) {
    const struct cfg_parallel *p = &cfg->parallel;
    int64_t counts[64], sum = 0;
    int n = parse_stage_layers(p->stage_layers, counts, 64);
    char note[160];
    if (n < 0)
        return key_error(cfg, p->stage_layers, "must be a list of positive block counts", NULL,
                         "one per pipeline stage, e.g. \"3,5\"");
    for (int s = 0; s < n; s++)
        sum += counts[s];
    if (n != p->pp * p->virtual_stages) {
        snprintf(note, sizeof note, "it names %d stages, and parallel.virtual_stages=%lld", n,
                 (long long)p->virtual_stages);
        return key_error(cfg, p->stage_layers, "must have one count per stage of", &p->pp, note);
    }
    if (sum != cfg->model.n_layer) {
        snprintf(note, sizeof note, "its counts add up to %lld", (long long)sum);
        return key_error(cfg, p->stage_layers, "must add up to", &cfg->model.n_layer, note);
    }
    return BT_OK;
}

bool cfg_stage_layers(const struct braid_config *cfg, int64_t *begin, int64_t *end) {
    int64_t counts[64];
    int n = cfg->parallel.stage_layers[0]
                ? parse_stage_layers(cfg->parallel.stage_layers, counts, 64)
                : -1;
    if (n < 1) return false;
    for (int s = 0, at = 0; s < n; s++) {
        begin[s] = at;
        end[s] = at += (int)counts[s];
    }
    return true;
}

static bt_status check_layout(const struct braid_config *cfg, int world_size) {
    const struct cfg_parallel *p = &cfg->parallel;
    const struct cfg_model *m = &cfg->model;
    int64_t product;
    bool overflow = __builtin_mul_overflow(p->dp, p->tp, &product) ||
                    __builtin_mul_overflow(product, p->pp, &product);
    if (overflow || product != world_size) {
        int ks[3] = {key_at(cfg, &p->dp), key_at(cfg, &p->tp), key_at(cfg, &p->pp)};
        char place[CFG_STR + 32], total[32] = "more than 2^63";
        message_place(cfg, ks, 3, place, sizeof place);
        if (!overflow) snprintf(total, sizeof total, "%lld", (long long)product);
        return bt_error("%sparallel.dp=%lld × tp=%lld × pp=%lld = %s but %d rank%s running", place,
                        (long long)p->dp, (long long)p->tp, (long long)p->pp, total, world_size,
                        world_size == 1 ? " is" : "s are");
    }
    if (m->n_head % p->tp != 0) return key_error(cfg, &p->tp, "does not divide", &m->n_head, NULL);
    if (m->n_kv_head % p->tp != 0)
        return key_error(cfg, &p->tp, "does not divide", &m->n_kv_head, NULL);
    if (m->ffn_hidden % p->tp != 0)
        return key_error(cfg, &p->tp, "does not divide", &m->ffn_hidden, NULL);
    if (m->vocab_size % p->tp != 0) { /* resolved from the tokenizer by now when it was 0 */
        char note[160];
        snprintf(note, sizeof note,
                 "set model.vocab_size to a multiple of %lld (ids above the tokenizer's are "
                 "never seen), e.g. %lld",
                 (long long)p->tp, (long long)((m->vocab_size + p->tp - 1) / p->tp * p->tp));
        return key_error(cfg, &p->tp, "does not divide", &m->vocab_size, note);
    }
    if (p->sequence_parallel && cfg->train.seq_len % p->tp != 0)
        return key_error(cfg, &p->tp, "does not divide", &cfg->train.seq_len,
                         "parallel.sequence_parallel splits the sequence across the tp ranks");
    if (p->pp > m->n_layer)
        return key_error(cfg, &p->pp, "must be <=", &m->n_layer, "each stage needs a layer");
    if (p->virtual_stages < 1 || p->virtual_stages > 16)
        return key_error(cfg, &p->virtual_stages, "must be in [1, 16]", NULL, NULL);
    if (p->virtual_stages > 1) { /* interleaved 1F1B */
        if (p->pp < 2)
            return key_error(cfg, &p->virtual_stages, "needs at least 2 pipeline stages, not",
                             &p->pp, NULL);
        if (strcmp(p->schedule, "1f1b") != 0)
            return key_error(cfg, &p->virtual_stages, "does not work with", p->schedule,
                             "interleaving is a 1f1b schedule");
        if (p->pp * p->virtual_stages > m->n_layer)
            return key_error(cfg, &p->virtual_stages, "× parallel.pp must be <=", &m->n_layer,
                             "each virtual stage needs a layer");
        if (cfg->train.grad_accum % p->pp != 0)
            return key_error(cfg, &cfg->train.grad_accum, "must be a multiple of", &p->pp,
                             "interleaved micro-batches go in groups of parallel.pp");
    }
    if (p->stage_layers[0] && check_stage_layers(cfg) != BT_OK) return BT_ERR;
    if (p->microbatches != cfg->train.grad_accum)
        return key_error(cfg, &p->microbatches, "must equal", &cfg->train.grad_accum,
                         "pipeline micro-batches are the gradient-accumulation steps");
    return BT_OK;
}

static bt_status check_files(const struct braid_config *cfg) {
    if (!cfg->data.train[0]) {
        int ks[1] = {key_at(cfg, cfg->data.train)};
        char place[CFG_STR + 32];
        message_place(cfg, ks, 1, place, sizeof place);
        return bt_error("%sdata.train is not set: name a glob of token shards (braid prep writes "
                        "them)",
                        place);
    }
    if (!cfg->checkpoint.dir[0])
        return key_error(cfg, cfg->checkpoint.dir, "must name a directory", NULL, NULL);
    if (!cfg->checkpoint.resume[0])
        return key_error(cfg, cfg->checkpoint.resume, "must be none, auto or a checkpoint path",
                         NULL, NULL);
    if (!cfg->log.dir[0]) return key_error(cfg, cfg->log.dir, "must name a directory", NULL, NULL);
    return BT_OK;
}

bt_status cfg_finalize(struct braid_config *cfg, int world_size) {
    if (world_size < 1) return bt_error("cfg_finalize: world size %d must be >= 1", world_size);
    if (check_sizes(cfg) != BT_OK || fill_derived(cfg) != BT_OK || check_model(cfg) != BT_OK ||
        check_optimizer(cfg) != BT_OK || check_layout(cfg, world_size) != BT_OK ||
        check_files(cfg) != BT_OK)
        return BT_ERR;
    return BT_OK;
}

/* ---- cfg_to_yaml ---- */

struct text_out {
    char *buf;
    size_t size, len; /* len counts what was needed, even past size */
};

static void emit(struct text_out *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void emit(struct text_out *out, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *at = out->len < out->size ? out->buf + out->len : NULL;
    int n = vsnprintf(at, at ? out->size - out->len : 0, fmt, ap);
    va_end(ap);
    if (n > 0) out->len += (size_t)n;
}

/* A double-quoted YAML string: paths and globs may hold '*', ':' or '#' */
static void emit_quoted(struct text_out *out, const char *s) {
    emit(out, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            emit(out, "\\%c", c);
        else if (c == '\n')
            emit(out, "\\n");
        else if (c == '\t')
            emit(out, "\\t");
        else if (c < 0x20 || c == 0x7f)
            emit(out, "\\x%02x", c);
        else
            emit(out, "%c", c);
    }
    emit(out, "\"");
}

size_t cfg_to_yaml(const struct braid_config *cfg, char *buf, size_t size) {
    struct text_out out = {buf, size, 0};
    if (buf && size) buf[0] = '\0';
    for (int k = 0; k < CFG_N_KEYS; k++) {
        char value[CFG_STR];
        if (k == 0 || strcmp(keys[k].section, keys[k - 1].section) != 0)
            emit(&out, "%s%s:\n", k ? "\n" : "", keys[k].section);
        emit(&out, "  %s: ", keys[k].name);
        if (keys[k].type == CFG_STRING)
            emit_quoted(&out, (const char *)cfg + keys[k].offset);
        else
            emit(&out, "%s", format_value(cfg, k, value, sizeof value));
        emit(&out, "\n");
    }
    return out.len;
}
