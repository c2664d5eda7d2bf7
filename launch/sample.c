/* `braid sample`: text from a checkpoint (docs/sample.md). Builds the model its /config describes,
 * reads its weights and the tokenizer of its training data, then generates one token at a time
 * through the model's key/value cache, sampling with temperature and top-k from a counter-based
 * RNG so a seed always gives the same text. Relies on data/checkpoint, data/tokenizer, models/. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/runtime.h"
#include "data/checkpoint.h"
#include "data/tokenizer.h"
#include "launch/commands.h"
#include "launch/config.h"
#include "launch/job.h"

#define DEFAULT_TOKENS 200
#define DEFAULT_TEMPERATURE 0.8
#define DEFAULT_SEED 1337
#define MAX_TOKENS 100000000 /* new tokens per run */
#define GPT2_END_OF_TEXT 50256

struct sample_options {
    const char *checkpoint, *prompt, *device;
    int64_t tokens, top_k;
    double temperature;
    uint64_t seed;
};

/* What a run holds; sampler_close releases it. */
struct sampler {
    char path[4096];  /* the checkpoint file */
    bt_device device; /* where the model and its cache live */
    struct model *model;
    struct tokenizer *tok;
    struct model_cache *cache;
    int64_t vocab;   /* ids sampled from: the tokenizer's (the model's may be padded) */
    double *probs;   /* (vocab) */
    float *sorted;   /* (vocab) top-k scratch */
    uint16_t *ids;   /* the prompt's tokens, then the generated ones */
    int64_t n_ids;   /* tokens in ids */
    char pending[4]; /* gpt2: the start of a character cut between tokens */
    size_t pending_len;
};

static void print_help(FILE *out) {
    fprintf(out,
            "usage: braid sample --checkpoint PATH|DIR [--prompt TEXT] [--tokens N]\n"
            "                    [--temperature T] [--top-k K] [--seed S] [--device D]\n\n"
            "Generates text from a checkpoint of braid train: the prompt, then N new tokens, on\n"
            "stdout as they come. The model and the tokenizer are the ones stored in the\n"
            "checkpoint. A context longer than model.block_size keeps its last block_size/2\n"
            "tokens whenever the model's window is full.\n\n"
            "options:\n"
            "  --checkpoint PATH   a checkpoint file, or a directory (its `latest`)\n"
            "  --prompt TEXT       text to continue (default: none; generation starts from\n"
            "                      <|endoftext|> for gpt2, a newline for char and byte)\n"
            "  --tokens N          new tokens to generate, >= 0 (default %d)\n"
            "  --temperature T     softmax temperature, >= 0; 0 = always the likeliest token\n"
            "                      (default %g)\n"
            "  --top-k K           sample among the K likeliest tokens only; 0 = all (default 0)\n"
            "  --seed S            random seed: the same seed gives the same text (default %d)\n"
            "  --device D          cpu, or cuda (the first visible GPU; float32) (default cpu)\n"
            "  -h, --help          show this help and exit\n\n"
            "See docs/sample.md.\n",
            DEFAULT_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_SEED);
}

/* ---- the command line ---- */

/* A whole number in [min, max]; false when value is anything else. */
static bool parse_int(const char *value, long long min, long long max, long long *out) {
    char *end;
    errno = 0;
    long long n = strtoll(value, &end, 10);
    if (errno || end == value || *end || n < min || n > max) return false;
    *out = n;
    return true;
}

/* Stores the value of option `name`; returns 0, or 2 after a usage error naming the flag. */
static int set_option(struct sample_options *o, const char *name, const char *value) {
    long long n;
    if (!strcmp(name, "checkpoint")) {
        o->checkpoint = value;
    } else if (!strcmp(name, "prompt")) {
        o->prompt = value;
    } else if (!strcmp(name, "tokens")) {
        if (!parse_int(value, 0, MAX_TOKENS, &n)) {
            cli_error("sample: --tokens '%s': expected a whole number from 0 to %d", value,
                      MAX_TOKENS);
            return 2;
        }
        o->tokens = n;
    } else if (!strcmp(name, "top-k")) {
        if (!parse_int(value, 0, INT64_MAX, &n)) {
            cli_error("sample: --top-k '%s': expected a whole number >= 0 (0 = off)", value);
            return 2;
        }
        o->top_k = n;
    } else if (!strcmp(name, "seed")) {
        if (!parse_int(value, 0, INT64_MAX, &n)) {
            cli_error("sample: --seed '%s': expected a whole number >= 0", value);
            return 2;
        }
        o->seed = (uint64_t)n;
    } else if (!strcmp(name, "device")) {
        if (strcmp(value, "cpu") != 0 && strcmp(value, "cuda") != 0) {
            cli_error("sample: --device '%s': expected cpu or cuda", value);
            return 2;
        }
        o->device = value;
    } else if (!strcmp(name, "temperature")) {
        char *end;
        errno = 0;
        o->temperature = strtod(value, &end);
        if (errno || end == value || *end || !(o->temperature >= 0 && isfinite(o->temperature))) {
            cli_error("sample: --temperature '%s': expected a number >= 0", value);
            return 2;
        }
    }
    return 0;
}

static int set_option_of(void *o, const char *name, const char *value) {
    return set_option(o, name, value);
}

/* Parses argv (argv[0] = "sample"); returns -1 to go on, else the exit status (0 after --help). */
static int parse_args(int argc, char **argv, struct sample_options *o) {
    *o = (struct sample_options){.prompt = "",
                                 .device = "cpu",
                                 .tokens = DEFAULT_TOKENS,
                                 .temperature = DEFAULT_TEMPERATURE,
                                 .seed = DEFAULT_SEED};
    static const char *const names[] = {"checkpoint", "prompt", "tokens", "temperature",
                                        "top-k",      "seed",   "device", NULL};
    int status = cli_parse_options(argc, argv, "sample", names, set_option_of, o, print_help);
    if (status >= 0) return status;
    if (!o->checkpoint) {
        cli_error("sample: missing --checkpoint PATH|DIR (see braid sample --help)");
        return 2;
    }
    return -1;
}

/* ---- loading ---- */

/* The model its /config describes, with the weights of its /model. */
static bt_status load_model(struct sampler *s, struct ckpt_file *f) {
    const char *yaml = ckpt_meta(f)->config_yaml;
    char label[sizeof s->path + 32];
    snprintf(label, sizeof label, "checkpoint %s: /config", s->path);
    if (!yaml[0]) return bt_error("checkpoint %s has no /config (the model is unknown)", s->path);
    struct braid_config cfg;
    cfg_defaults(&cfg);
    if (cfg_load_text(&cfg, yaml, label) != BT_OK) return BT_ERR;
    /* the saved layout, so that cfg_finalize checks the rest (its messages name label:line) */
    int64_t world;
    if (__builtin_mul_overflow(cfg.parallel.dp, cfg.parallel.tp, &world) ||
        __builtin_mul_overflow(world, cfg.parallel.pp, &world) || world < 1 || world > INT32_MAX)
        world = 1;
    if (cfg_finalize(&cfg, (int)world) != BT_OK) return BT_ERR;
    struct model_config mc = job_model_config(&cfg.model);
    if (!(s->model = model_create(&mc, 0))) return bt_error_prefix(label);
    model_train(s->model, false); /* no dropout */
    struct nn_param_list params;
    if (model_parameters(s->model, &params) != BT_OK) return BT_ERR;
    bt_status st = ckpt_read_model(f, &params);
    nn_param_list_free(&params);
    return st;
}

/* The tokenizer.yaml of the training data, saved in the checkpoint. */
static bt_status load_tokenizer(struct sampler *s, struct ckpt_file *f) {
    const char *yaml = ckpt_meta(f)->tokenizer_yaml;
    if (!yaml[0])
        return bt_error("checkpoint %s has no tokenizer (its training data had no "
                        "tokenizer.yaml)",
                        s->path);
    char label[sizeof s->path + 32];
    snprintf(label, sizeof label, "checkpoint %s: /tokenizer", s->path);
    if (!(s->tok = tokenizer_load_text(yaml, label, NULL))) return BT_ERR;
    s->vocab = tokenizer_vocab_size(s->tok);
    if (s->vocab > s->model->config.vocab_size)
        return bt_error("checkpoint %s: its tokenizer has %lld tokens but model.vocab_size is "
                        "%lld",
                        s->path, (long long)s->vocab, (long long)s->model->config.vocab_size);
    return BT_OK;
}

/* s->device from --device: cuda is the first visible GPU, checked before any work */
static bt_status choose_device(struct sampler *s, const char *device) {
    s->device = bt_cpu();
    if (strcmp(device, "cuda") != 0) return BT_OK;
    if (job_check_cuda("--device cuda") != BT_OK) return BT_ERR;
    s->device = bt_cuda(0);
    return bt_backend_for(s->device, "--device cuda") ? BT_OK : BT_ERR;
}

/* Opens the checkpoint (a directory: its latest), then the model (on s->device), tokenizer and
 * cache. */
static bt_status sampler_open(struct sampler *s, const char *checkpoint, const char *device) {
    if (choose_device(s, device) != BT_OK) return BT_ERR;
    if (ckpt_resolve(checkpoint, s->path, sizeof s->path) != BT_OK) return BT_ERR;
    struct ckpt_file *f = ckpt_open(s->path);
    if (!f) return BT_ERR;
    bt_status st = load_model(s, f);
    if (st == BT_OK) st = load_tokenizer(s, f);
    ckpt_close(f);
    if (st != BT_OK) return BT_ERR;
    if (s->device.type != BT_DEVICE_CPU && nn_module_to(s->model->root, s->device) != BT_OK)
        return bt_error_prefix("--device cuda");
    s->probs = malloc((size_t)s->vocab * sizeof *s->probs);
    s->sorted = malloc((size_t)s->vocab * sizeof *s->sorted);
    if (!s->probs || !s->sorted)
        return bt_error("out of memory for %lld tokens", (long long)s->vocab);
    s->cache = model_cache_create(s->model, 1);
    return s->cache ? BT_OK : BT_ERR;
}

static void sampler_close(struct sampler *s) {
    model_cache_free(s->cache);
    model_free(s->model);
    tokenizer_free(s->tok);
    free(s->probs);
    free(s->sorted);
    free(s->ids);
}

/* The token a document starts with: <|endoftext|> for gpt2, a newline for char (token 0 when the
 * training text had none) and byte. */
static uint16_t first_token(const struct tokenizer *tok) {
    if (tokenizer_kind_of(tok) == TOKENIZER_GPT2) return GPT2_END_OF_TEXT;
    uint16_t *ids, id = 0;
    int64_t n;
    if (tokenizer_encode(tok, "\n", 1, &ids, &n) != BT_OK) {
        bt_error_clear(); /* a char vocabulary without a newline */
        return 0;
    }
    id = ids[0];
    free(ids);
    return id;
}

/* The prompt's tokens (an empty prompt: first_token) with room for `extra` more after them. */
static bt_status start_tokens(struct sampler *s, const char *prompt, int64_t extra) {
    uint16_t *ids = NULL;
    int64_t n = 1;
    if (prompt[0] && tokenizer_encode(s->tok, prompt, strlen(prompt), &ids, &n) != BT_OK)
        return bt_error_prefix("--prompt");
    s->ids = malloc((size_t)(n + extra) * sizeof *s->ids);
    if (!s->ids) {
        free(ids);
        return bt_error("out of memory for %lld tokens", (long long)(n + extra));
    }
    if (ids)
        memcpy(s->ids, ids, (size_t)n * sizeof *ids);
    else
        s->ids[0] = first_token(s->tok);
    free(ids);
    s->n_ids = n;
    return BT_OK;
}

/* ---- generating ---- */

/* Runs the model on the newest n_new tokens through the cache and returns the logits (V) of the
 * last one (a step tensor's row, on the host). When the window is full it starts over from the
 * last block_size/2 tokens (a prompt longer than the window: its last block_size). */
static const float *next_logits(struct sampler *s, int64_t n_new) {
    int64_t block = s->model->config.block_size, len = model_cache_len(s->cache);
    int64_t from = s->n_ids - n_new;
    if (len + n_new > block) {
        int64_t keep = len == 0 ? block : (block / 2 > 0 ? block / 2 : 1);
        model_cache_reset(s->cache);
        from = s->n_ids - (s->n_ids < keep ? s->n_ids : keep);
    }
    int64_t n = s->n_ids - from;
    bt_tensor *idx = bt_from_data(BT_SHAPE(1, n), BT_U16, s->ids + from);
    if (idx) idx = bt_to_device(idx, s->device);
    bt_tensor *logits = idx ? model_forward_cached(s->model, s->cache, idx) : NULL;
    bt_tensor *last = logits ? bt_narrow(logits, 1, n - 1, 1) : NULL; /* (1, 1, V) */
    if (last) last = bt_to_device(last, bt_cpu());
    return last ? bt_f32(last) : NULL;
}

static int compare_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

static int64_t argmax(const float *logits, int64_t V) {
    int64_t best = 0;
    for (int64_t v = 1; v < V; v++)
        if (logits[v] > logits[best]) best = v;
    return best;
}

/* Draws a token from softmax(logits / temperature) over the top_k likeliest (ties with the k-th
 * kept, as nanoGPT), with the uniform number `counter` of the seed's stream. */
static int64_t pick_token(struct sampler *s, const float *logits, const struct sample_options *o,
                          uint64_t counter) {
    int64_t V = s->vocab;
    if (o->temperature == 0.0) return argmax(logits, V);
    float cut = -INFINITY;
    if (o->top_k > 0 && o->top_k < V) {
        memcpy(s->sorted, logits, (size_t)V * sizeof *s->sorted);
        qsort(s->sorted, (size_t)V, sizeof *s->sorted, compare_desc);
        cut = s->sorted[o->top_k - 1];
    }
    double top = logits[argmax(logits, V)], total = 0.0;
    for (int64_t v = 0; v < V; v++) {
        s->probs[v] = logits[v] < cut ? 0.0 : exp((logits[v] - top) / o->temperature);
        total += s->probs[v];
    }
    double u = bt_rng_uniform_at(o->seed, counter) * total, sum = 0.0;
    int64_t last = 0;
    for (int64_t v = 0; v < V; v++) {
        if (s->probs[v] == 0.0) continue;
        sum += s->probs[v];
        last = v;
        if (u < sum) return v;
    }
    return last; /* u rounded up to the total */
}

/* Length of the complete UTF-8 characters at the start of buf: a lead byte whose continuation
 * bytes have not come yet stays behind. Bytes that are not UTF-8 at all pass through. */
static size_t utf8_complete(const char *buf, size_t len) {
    for (size_t back = 1; back <= 3 && back <= len; back++) {
        unsigned char c = (unsigned char)buf[len - back];
        if ((c & 0xC0) == 0x80) continue; /* a continuation byte: look further back */
        size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        return need > back ? len - back : len;
    }
    return len;
}

/* Writes the text of token id on stdout; gpt2 holds back a character cut between tokens. */
static bt_status emit_token(struct sampler *s, uint16_t id) {
    char *text;
    if (tokenizer_decode(s->tok, &id, 1, &text) != BT_OK) return BT_ERR;
    size_t len = strlen(text);
    if (len == 0) len = 1; /* the token of byte 0 (no token decodes to nothing) */
    if (tokenizer_kind_of(s->tok) != TOKENIZER_GPT2) {
        fwrite(text, 1, len, stdout);
    } else {
        char *buf = malloc(s->pending_len + len);
        if (!buf) {
            free(text);
            return bt_error("out of memory");
        }
        memcpy(buf, s->pending, s->pending_len);
        memcpy(buf + s->pending_len, text, len);
        size_t n = s->pending_len + len, done = utf8_complete(buf, n);
        fwrite(buf, 1, done, stdout);
        s->pending_len = n - done;
        memcpy(s->pending, buf + done, s->pending_len);
        free(buf);
    }
    free(text);
    fflush(stdout);
    return BT_OK;
}

/* The prompt, then o->tokens new tokens as they come, then a newline. */
static bt_status generate(struct sampler *s, const struct sample_options *o) {
    fputs(o->prompt, stdout);
    fflush(stdout);
    int64_t n_new = s->n_ids;
    for (int64_t t = 0; t < o->tokens; t++) {
        const float *logits = next_logits(s, n_new);
        if (!logits) return BT_ERR;
        uint16_t id = (uint16_t)pick_token(s, logits, o, (uint64_t)t);
        bt_step_end();
        s->ids[s->n_ids++] = id;
        n_new = 1;
        if (emit_token(s, id) != BT_OK) return BT_ERR;
    }
    fwrite(s->pending, 1, s->pending_len, stdout); /* a character the text ended inside */
    fputc('\n', stdout);
    return fflush(stdout) == 0 ? BT_OK : bt_error("cannot write the text: %s", strerror(errno));
}

int cmd_sample(int argc, char **argv) {
    struct sample_options o;
    int status = parse_args(argc, argv, &o);
    if (status >= 0) return status;
    struct sampler s;
    memset(&s, 0, sizeof s);
    if (sampler_open(&s, o.checkpoint, o.device) != BT_OK ||
        start_tokens(&s, o.prompt, o.tokens) != BT_OK || generate(&s, &o) != BT_OK) {
        cli_error("sample: %s", bt_last_error());
        status = 1;
    } else {
        status = 0;
    }
    sampler_close(&s);
    bt_runtime_shutdown();
    return status;
}
