/* Pipeline stages of the GPT and LLaMA models (model_config.pp_stages, models/model.h), in one
 * process: the layer split of model_stage_layers; stages built from the seed of the whole model
 * hold exactly its parameters, with its names, order and values; chaining the stages' forwards
 * (each on a leaf copy of the previous output) and backwards gives the whole model's loss, logits
 * and gradients, with dropout too; the config, input and cached-forward errors. */
#include <math.h>
#include <stdio.h>

#include "core/autograd.h"
#include "core/runtime.h"
#include "models/model.h"
#include "tests/gradcheck.h"
#include "tests/model_check.h"

enum { MAX_STAGES = 16, B = 2, T = 8 };

/* ---- configs (the tiny GPT and LLaMA: tests/model_check.h) ---- */

/* cfg as stage s of S holding layers [begin, end) */
static struct model_config stage_config(struct model_config cfg, int S, int s, int64_t begin,
                                        int64_t end) {
    cfg.pp_stages = S;
    cfg.pp_stage = s;
    cfg.pp_layer_begin = begin;
    cfg.pp_layer_end = end;
    return cfg;
}

/* (B, T) token ids: (b * 7 + t * 3 + t * t + shift) % V */
static bt_tensor *tokens(int64_t V, int shift) {
    bt_tensor *t = bt_empty(BT_SHAPE(B, T), BT_I64, bt_cpu());
    for (int64_t b = 0; b < B; b++)
        for (int64_t s = 0; s < T; s++)
            bt_set(t, b * T + s, (double)((b * 7 + s * 3 + s * s + shift) % V));
    return t;
}

static const char *embedding_name(const struct model_config *c) {
    return c->arch == MODEL_GPT ? "transformer.wte.weight" : "model.embed_tokens.weight";
}

/* ---- model_stage_layers ---- */

static void expect_split(const struct model_config *c, int stages, const int64_t *want_end) {
    int64_t begin[MAX_STAGES], end[MAX_STAGES];
    ck_assert_msg(model_stage_layers(c, stages, begin, end) == BT_OK, "%s", bt_last_error());
    for (int s = 0; s < stages; s++) {
        ck_assert_int_eq(begin[s], s ? want_end[s - 1] : 0);
        ck_assert_msg(end[s] == want_end[s], "%d stages: stage %d ends at %lld, expected %lld",
                      stages, s, (long long)end[s], (long long)want_end[s]);
    }
}

/* the sizes of GPT-2 small and TinyLlama, worked by hand: per block 7,087,872 (gpt) and
 * 44,044,288 (llama) parameters; gpt's embeddings are 5.6 blocks, llama's 1.5 */
START_TEST(test_stage_layers_by_hand) {
    struct model_config gpt2 = {.arch = MODEL_GPT,
                                .vocab_size = 50304,
                                .block_size = 1024,
                                .n_layer = 12,
                                .n_head = 12,
                                .n_kv_head = 12,
                                .n_embd = 768,
                                .ffn_hidden = 3072,
                                .bias = true,
                                .gelu = BT_GELU_TANH,
                                .norm_eps = 1e-5,
                                .tie_embeddings = true};
    expect_split(&gpt2, 1, (int64_t[]){12});
    /* 3 blocks + embeddings 60.7M, 9 blocks 63.8M (4 + 8 would be 67.8M) */
    expect_split(&gpt2, 2, (int64_t[]){3, 12});
    /* the embeddings alone outweigh the other stages: one block with them, 4, 4, 3 */
    expect_split(&gpt2, 4, (int64_t[]){1, 5, 9, 12});
    expect_split(&gpt2, 12, (int64_t[]){1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12});
    struct model_config untied = gpt2;
    untied.tie_embeddings = false; /* the LM head (38.6M) on the last stage */
    expect_split(&untied, 2, (int64_t[]){6, 12});

    struct model_config tinyllama = {.arch = MODEL_LLAMA,
                                     .vocab_size = 32000,
                                     .block_size = 2048,
                                     .n_layer = 22,
                                     .n_head = 32,
                                     .n_kv_head = 4,
                                     .n_embd = 2048,
                                     .ffn_hidden = 5632,
                                     .norm_eps = 1e-5,
                                     .rope_theta = 10000.0};
    expect_split(&tinyllama, 2, (int64_t[]){11, 22});
    /* 5 + embeddings, 6, 6, 5 + head: the largest 285.76M, the two middle ones 264.27M */
    expect_split(&tinyllama, 4, (int64_t[]){5, 11, 17, 22});
    tinyllama.tie_embeddings = true;
    expect_split(&tinyllama, 3, (int64_t[]){6, 14, 22}); /* the last stage 8 + its norm */
}
END_TEST

/* Every way to cut L blocks into S contiguous non-empty stages, by brute force, with a stage's
 * size measured on the built stage (model_num_parameters, less the last stage's copy of a tied
 * embedding): model_stage_layers' largest stage is the smallest possible. */
static int64_t stage_size(const struct model_config *c, int S, int s, int64_t begin, int64_t end) {
    struct model_config sc = stage_config(*c, S, s, begin, end);
    struct model *m = model_check_create(&sc, 1);
    int64_t n = model_num_parameters(m);
    if (S > 1 && s == S - 1 && c->tie_embeddings) n -= c->vocab_size * c->n_embd;
    model_free(m);
    return n;
}

static int64_t best_largest(const struct model_config *c, int S, int s, int64_t begin) {
    int64_t L = c->n_layer;
    if (s == S - 1) return stage_size(c, S, s, begin, L);
    int64_t best = INT64_MAX;
    for (int64_t end = begin + 1; end <= L - (S - 1 - s); end++) {
        int64_t here = stage_size(c, S, s, begin, end), rest = best_largest(c, S, s + 1, end);
        int64_t largest = here > rest ? here : rest;
        if (largest < best) best = largest;
    }
    return best;
}

START_TEST(test_stage_layers_are_optimal) {
    /* V 300: gpt's embeddings are about 3 blocks, llama's about 2 */
    struct model_config configs[] = {
        model_check_tiny_gpt(true, true, 300, 6), model_check_tiny_gpt(true, false, 300, 6),
        model_check_tiny_gpt(false, false, 40, 5), model_check_tiny_llama(false, 300, 6),
        model_check_tiny_llama(true, 300, 5)};
    for (int k = 0; k < (int)(sizeof configs / sizeof configs[0]); k++) {
        const struct model_config *c = &configs[k];
        for (int S = 1; S <= c->n_layer; S++) {
            int64_t begin[MAX_STAGES], end[MAX_STAGES], largest = 0;
            ck_assert_msg(model_stage_layers(c, S, begin, end) == BT_OK, "%s", bt_last_error());
            for (int s = 0; s < S; s++) {
                ck_assert_int_eq(begin[s], s ? end[s - 1] : 0);
                ck_assert_int_lt(begin[s], end[s]);
                int64_t n = stage_size(c, S, s, begin[s], end[s]);
                if (n > largest) largest = n;
            }
            ck_assert_int_eq(end[S - 1], c->n_layer);
            ck_assert_msg(largest == best_largest(c, S, 0, 0),
                          "config %d, %d stages: largest stage %lld, the best split has %lld", k, S,
                          (long long)largest, (long long)best_largest(c, S, 0, 0));
        }
    }
}
END_TEST

START_TEST(test_stage_layers_errors) {
    struct model_config c = model_check_tiny_gpt(true, true, 11, 4);
    int64_t begin[MAX_STAGES], end[MAX_STAGES];
    ck_assert(model_stage_layers(&c, 5, begin, end) == BT_ERR);
    ck_assert_error_contains("model: 5 pipeline stages for model.n_layer=4 layers: expected 1 to 4 "
                             "(every stage needs a layer)");
    ck_assert(model_stage_layers(&c, 0, begin, end) == BT_ERR);
    ck_assert_error_contains("model: 0 pipeline stages for model.n_layer=4 layers");
    c.n_embd = 9;
    ck_assert(model_stage_layers(&c, 2, begin, end) == BT_ERR);
    ck_assert_error_contains("model.n_embd=9 is not divisible by model.n_head=2");
    ck_assert(model_stage_layers(NULL, 2, begin, end) == BT_ERR);
    ck_assert_error_contains("model: stage_layers: argument is NULL");
}
END_TEST

/* ---- the stages against the whole model ---- */

/* Whether parameter `name` belongs on stage s of S holding layers [begin, end) */
static bool belongs(const struct model_config *c, const char *name, int S, int s, int64_t begin,
                    int64_t end) {
    long long layer;
    if (sscanf(name, "transformer.h.%lld.", &layer) == 1 ||
        sscanf(name, "model.layers.%lld.", &layer) == 1)
        return begin <= layer && layer < end;
    if (!strcmp(name, embedding_name(c))) return s == 0 || (s == S - 1 && c->tie_embeddings);
    if (!strcmp(name, "transformer.wpe.weight")) return s == 0;
    return s == S - 1; /* ln_f / norm, lm_head */
}

static int64_t index_of(const struct nn_param_list *l, const char *name) {
    for (int64_t i = 0; i < l->count; i++)
        if (!strcmp(l->names[i], name)) return i;
    ck_abort_msg("%s is not a parameter of the whole model", name);
    return -1;
}

/* |got - want| <= tol * max|want| element by element; tol 0: bitwise */
static void assert_close(const char *what, const bt_tensor *got, const bt_tensor *want,
                         double tol) {
    ck_assert_msg(got && want, "%s: missing tensor", what);
    ck_assert_msg(bt_same_shape(got, want), "%s: shapes differ", what);
    double scale = 0.0;
    for (int64_t i = 0; i < bt_numel(want); i++)
        scale = fmax(scale, fabs(bt_get(want, i)));
    for (int64_t i = 0; i < bt_numel(want); i++) {
        double g = bt_get(got, i), w = bt_get(want, i);
        if (tol == 0.0)
            ck_assert_msg(g == w, "%s[%lld]: %.9g, expected %.9g (bitwise)", what, (long long)i, g,
                          w);
        else
            ck_assert_msg(fabs(g - w) <= tol * scale, "%s[%lld]: %.9g, expected %.9g (scale %g)",
                          what, (long long)i, g, w, scale);
    }
}

/* a leaf step tensor requiring grad with x's values: what the next stage receives */
static bt_tensor *leaf_copy(bt_tensor *x) {
    ck_assert_msg(x != NULL, "%s", bt_last_error());
    bt_tensor *y = bt_empty_like(x);
    ck_assert(bt_copy_(y, x) == BT_OK);
    return bt_requires_grad_(y, true);
}

/* The stages of a split of c, built from `seed`: the split's stage ends in ends */
static void create_stages(const struct model_config *c, int S, const int64_t *ends, uint64_t seed,
                          struct model **stages) {
    for (int s = 0; s < S; s++) {
        struct model_config sc = stage_config(*c, S, s, s ? ends[s - 1] : 0, ends[s]);
        stages[s] = model_check_create(&sc, seed);
        ck_assert(model_is_first_stage(stages[s]) == (s == 0));
        ck_assert(model_is_last_stage(stages[s]) == (s == S - 1));
    }
}

/* Each stage lists its subset of the whole model's parameters, in the whole model's order, with
 * the whole model's values; the two lists together are the whole list (tied: its embedding
 * twice, model_tied_embedding's tensors) */
static void check_parameters(const struct model_config *c, struct model *full,
                             struct model **stages, int S) {
    struct nn_param_list pf;
    ck_assert(model_parameters(full, &pf) == BT_OK);
    int64_t listed = 0, counted = 0;
    for (int s = 0; s < S; s++) {
        struct nn_param_list ps;
        ck_assert(model_parameters(stages[s], &ps) == BT_OK);
        const struct model_config *sc = &stages[s]->config;
        int64_t expected = 0, last = -1;
        for (int64_t i = 0; i < pf.count; i++)
            expected += belongs(c, pf.names[i], S, s, sc->pp_layer_begin, sc->pp_layer_end);
        ck_assert_int_eq(ps.count, expected);
        for (int64_t i = 0; i < ps.count; i++) {
            ck_assert_msg(belongs(c, ps.names[i], S, s, sc->pp_layer_begin, sc->pp_layer_end),
                          "stage %d holds %s", s, ps.names[i]);
            int64_t k = index_of(&pf, ps.names[i]);
            ck_assert_msg(k > last, "stage %d lists %s out of the whole model's order", s,
                          ps.names[i]);
            last = k;
            assert_close(ps.names[i], ps.tensors[i], pf.tensors[k], 0.0);
        }
        bt_tensor *tied = model_tied_embedding(stages[s]);
        bool holds_tied = c->tie_embeddings && (s == 0 || s == S - 1);
        ck_assert(holds_tied == (tied != NULL));
        if (tied) ck_assert_ptr_eq(tied, ps.tensors[index_of(&ps, embedding_name(c))]);
        listed += ps.count;
        counted += model_num_parameters(stages[s]);
        nn_param_list_free(&ps);
    }
    ck_assert_int_eq(listed, pf.count + (c->tie_embeddings ? 1 : 0));
    /* the last stage counts its copy of a tied embedding */
    ck_assert_int_eq(counted, model_num_parameters(full) +
                                  (c->tie_embeddings ? c->vocab_size * c->n_embd : 0));
    ck_assert_ptr_null(model_tied_embedding(full));
    nn_param_list_free(&pf);
}

/* The stages run as a pipeline would, in one process: stage 0 on idx, each later stage on a leaf
 * copy of the previous output; the backward from the last stage's loss, then each earlier stage's
 * from the gradient its successor's input received. Returns the loss, *logits the last stage's. */
static double run_chain(struct model **stages, int S, bt_tensor *idx, bt_tensor *targets,
                        bt_tensor **logits) {
    bt_tensor *outs[MAX_STAGES], *ins[MAX_STAGES];
    for (int s = 0; s < S; s++) {
        ins[s] = s ? leaf_copy(outs[s - 1]) : idx;
        bt_tensor *l = NULL;
        outs[s] = model_stage_forward(stages[s], ins[s], targets, &l);
        ck_assert_msg(outs[s] != NULL, "stage %d: %s", s, bt_last_error());
        if (s < S - 1) { /* a hidden state (B, T, C); targets ignored, no logits */
            ck_assert_int_eq(outs[s]->ndim, 3);
            ck_assert_int_eq(outs[s]->shape[2], stages[s]->config.n_embd);
            ck_assert_ptr_null(l);
        }
        *logits = l;
    }
    ck_assert(bt_backward(outs[S - 1]) == BT_OK);
    for (int s = S - 2; s >= 0; s--) {
        ck_assert_msg(ins[s + 1]->grad != NULL, "stage %d's input has no gradient", s + 1);
        ck_assert(bt_backward_ex(outs[s], ins[s + 1]->grad, false) == BT_OK);
    }
    return bt_item(outs[S - 1]);
}

/* Every parameter's gradient on the stages equals the whole model's of the same name (the tied
 * embedding's: stage 0's plus the last stage's copy's) */
static void check_gradients(const struct model_config *c, struct model *full, struct model **stages,
                            int S) {
    struct nn_param_list pf;
    ck_assert(model_parameters(full, &pf) == BT_OK);
    for (int s = 0; s < S; s++) {
        struct nn_param_list ps;
        ck_assert(model_parameters(stages[s], &ps) == BT_OK);
        for (int64_t i = 0; i < ps.count; i++) {
            bt_tensor *grad = ps.tensors[i]->grad, *want = pf.tensors[index_of(&pf, ps.names[i])];
            ck_assert_msg(grad != NULL, "stage %d: %s has no gradient", s, ps.names[i]);
            if (ps.tensors[i] == model_tied_embedding(stages[s])) {
                if (s != 0) continue; /* summed with stage 0's */
                grad = bt_add(grad, model_tied_embedding(stages[S - 1])->grad);
            }
            assert_close(ps.names[i], grad, want->grad, 1e-5);
        }
        nn_param_list_free(&ps);
    }
    nn_param_list_free(&pf);
}

/* The whole model and the stages of the split `ends` from one seed: the same parameters, loss,
 * logits and gradients; with dropout the masks are drawn in the same order (bt_manual_seed
 * before each run) */
static void check_split(const struct model_config *c, int S, const int64_t *ends) {
    struct model *full = model_check_create(c, 42), *stages[MAX_STAGES];
    create_stages(c, S, ends, 42, stages);
    check_parameters(c, full, stages, S);

    bt_tensor *idx = tokens(c->vocab_size, 0), *targets = tokens(c->vocab_size, 5);
    bt_tensor *logits_full, *logits_chain;
    bt_manual_seed(9);
    bt_tensor *loss = model_forward(full, idx, targets, &logits_full);
    ck_assert_msg(loss != NULL, "%s", bt_last_error());
    ck_assert(bt_backward(loss) == BT_OK);
    bt_manual_seed(9);
    double chained = run_chain(stages, S, idx, targets, &logits_chain);
    ck_assert_msg(fabs(chained - bt_item(loss)) <= 1e-6 * fabs(bt_item(loss)),
                  "%d stages: loss %.9g, the whole model's %.9g", S, chained, bt_item(loss));
    assert_close("logits", logits_chain, logits_full, 1e-6);
    check_gradients(c, full, stages, S);
    bt_step_end();
    for (int s = 0; s < S; s++)
        model_free(stages[s]);
    model_free(full);
}

/* the splits of model_stage_layers for 2 and 3 stages, and an uneven one */
static void check_family(struct model_config c) {
    for (int S = 2; S <= 3; S++) {
        int64_t begin[MAX_STAGES], end[MAX_STAGES];
        ck_assert(model_stage_layers(&c, S, begin, end) == BT_OK);
        check_split(&c, S, end);
    }
    check_split(&c, 3, (int64_t[]){1, 3, 4});
}

START_TEST(test_gpt_stages_equal_whole_model) {
    check_family(model_check_tiny_gpt(true, true, 11, 4));
    check_family(model_check_tiny_gpt(true, false, 11, 4));
}
END_TEST

START_TEST(test_llama_stages_equal_whole_model) {
    check_family(model_check_tiny_llama(false, 11, 4));
    check_family(model_check_tiny_llama(true, 11, 4));
}
END_TEST

START_TEST(test_stages_with_dropout) {
    struct model_config configs[] = {
        model_check_tiny_gpt(true, true, 11, 4), model_check_tiny_gpt(true, false, 11, 4),
        model_check_tiny_llama(false, 11, 4), model_check_tiny_llama(true, 11, 4)};
    for (int k = 0; k < 4; k++) {
        struct model *plain = model_check_create(&configs[k], 42);
        configs[k].dropout = 0.1;
        struct model *dropped = model_check_create(&configs[k], 42);
        bt_tensor *idx = tokens(11, 0), *targets = tokens(11, 5);
        bt_manual_seed(9); /* the masks are on: the loss moves */
        ck_assert_double_ne(bt_item(model_forward(dropped, idx, targets, NULL)),
                            bt_item(model_forward(plain, idx, targets, NULL)));
        bt_step_end();
        model_free(dropped);
        model_free(plain);
        check_family(configs[k]);
    }
}
END_TEST

/* ---- errors ---- */

START_TEST(test_bad_stage_configs) {
    struct model_config g = model_check_tiny_gpt(true, true, 11, 4),
                        l = model_check_tiny_llama(false, 11, 4);
    model_check_create_fails(stage_config(g, -1, 0, 0, 4),
                             "model: pp_stages must be at least 0, got -1");
    model_check_create_fails(stage_config(g, 2, 2, 2, 4),
                             "model: pp_stage=2 is not a stage of pp_stages=2 (expected 0 to 1)");
    model_check_create_fails(stage_config(l, 2, -1, 0, 2), "model: pp_stage=-1 is not a stage");
    model_check_create_fails(
        stage_config(g, 3, 1, 2, 2),
        "model: pipeline stage 1's layers [pp_layer_begin=2, pp_layer_end=2) are "
        "not a non-empty range of [0, model.n_layer=4)");
    model_check_create_fails(stage_config(l, 3, 1, 3, 5),
                             "[pp_layer_begin=3, pp_layer_end=5) are not");
    model_check_create_fails(
        stage_config(g, 2, 0, 1, 2),
        "model: the first pipeline stage (pp_stage=0) must start at layer 0, got "
        "pp_layer_begin=1");
    model_check_create_fails(
        stage_config(l, 2, 1, 2, 3),
        "model: the last pipeline stage (pp_stage=1 of pp_stages=2) must end at "
        "model.n_layer=4, got pp_layer_end=3");
    model_check_create_fails(
        stage_config(g, 5, 0, 0, 1),
        "model: pp_stages=5 is more than model.n_layer=4 (every pipeline stage "
        "needs a layer)");
    /* one stage (or none) is the whole model, whatever the other fields say */
    struct model_config one = stage_config(g, 1, 7, 3, 3);
    struct model *m = model_check_create(&one, 1);
    ck_assert(model_is_first_stage(m) && model_is_last_stage(m));
    ck_assert_ptr_null(model_tied_embedding(m));
    one.pp_stages = 0;
    struct model *whole = model_check_create(&one, 1);
    ck_assert_int_eq(model_num_parameters(m), model_num_parameters(whole));
    model_free(whole);
    model_free(m);
}
END_TEST

START_TEST(test_bad_stage_inputs) {
    struct model_config g = model_check_tiny_gpt(true, true, 11, 4),
                        l = model_check_tiny_llama(false, 11, 4);
    struct model_config c0 = stage_config(g, 2, 0, 0, 2), c1 = stage_config(g, 2, 1, 2, 4),
                        cm = stage_config(l, 3, 1, 1, 2);
    struct model *first = model_check_create(&c0, 1), *gpt_last = model_check_create(&c1, 1),
                 *llama_mid = model_check_create(&cm, 1);
    bt_tensor *idx = tokens(11, 0), *targets = tokens(11, 3);

    /* a later stage takes the hidden state, not token ids */
    ck_assert_ptr_null(model_stage_forward(gpt_last, idx, targets, NULL));
    ck_assert_error_contains("gpt: pipeline stage 1's input int64 (2,8) must be the previous "
                             "stage's float hidden state (batch, time, model.n_embd=8)");
    bt_tensor *narrow = bt_zeros(BT_SHAPE(B, T, 7), BT_F32, bt_cpu());
    ck_assert_ptr_null(model_stage_forward(gpt_last, narrow, targets, NULL));
    ck_assert_error_contains("input float32 (2,8,7) must be the previous stage's float hidden");
    bt_tensor *hidden = bt_zeros(BT_SHAPE(B, T, 8), BT_F32, bt_cpu());
    ck_assert_ptr_null(model_stage_forward(gpt_last, hidden, bt_narrow(targets, 1, 0, 5), NULL));
    ck_assert_error_contains("gpt: targets (2,5) must be (2, 8), the batch and sequence of "
                             "pipeline stage 1's input (2,8,8)");
    bt_tensor *long_hidden = bt_zeros(BT_SHAPE(B, 9, 16), BT_F32, bt_cpu());
    ck_assert_ptr_null(model_stage_forward(llama_mid, long_hidden, NULL, NULL));
    ck_assert_error_contains("llama: pipeline stage 1's input (2,9,16) has sequence length 9, more "
                             "than model.block_size=8");
    ck_assert_ptr_null(model_stage_forward(llama_mid, NULL, NULL, NULL));
    ck_assert_error_contains("model: forward: input is NULL");
    /* the first stage takes token ids, checked as model_forward checks them */
    ck_assert_ptr_null(model_stage_forward(first, hidden, NULL, NULL));
    ck_assert_error_contains("gpt: idx (2,8,8) must be 2-D (batch, time)");

    /* a middle stage returns its hidden state, with or without targets; the last one its loss */
    bt_tensor *out = model_stage_forward(llama_mid, bt_zeros(BT_SHAPE(B, T, 16), BT_F32, bt_cpu()),
                                         targets, NULL);
    ck_assert_msg(out != NULL, "%s", bt_last_error());
    ck_assert_int_eq(out->ndim, 3);
    bt_tensor *logits = NULL;
    ck_assert_ptr_null(model_stage_forward(gpt_last, hidden, NULL, &logits));
    ck_assert(!bt_has_error()); /* no targets: no loss, no error */
    ck_assert_ptr_nonnull(logits);
    ck_assert_int_eq(logits->shape[2], 11);
    bt_step_end();
    model_free(llama_mid);
    model_free(gpt_last);
    model_free(first);
}
END_TEST

START_TEST(test_cached_forward_needs_the_whole_model) {
    struct model_config g = model_check_tiny_gpt(true, true, 11, 4),
                        l = model_check_tiny_llama(true, 11, 4);
    struct model_config gs = stage_config(g, 2, 0, 0, 2), ls = stage_config(l, 2, 1, 1, 4);
    struct model *gpt = model_check_create(&gs, 1), *llama = model_check_create(&ls, 1);
    struct model_cache *gc = model_cache_create(gpt, 1), *lc = model_cache_create(llama, 1);
    ck_assert(gc && lc);
    bt_tensor *idx = bt_zeros(BT_SHAPE(1, 2), BT_I64, bt_cpu());
    ck_assert_ptr_null(model_forward_cached(gpt, gc, idx));
    ck_assert_error_contains("gpt: forward_cached needs the whole model, not pipeline stage 0 of "
                             "2 (layers [0, 2))");
    ck_assert_ptr_null(model_forward_cached(llama, lc, idx));
    ck_assert_error_contains("llama: forward_cached needs the whole model, not pipeline stage 1 "
                             "of 2 (layers [1, 4))");
    ck_assert_int_eq(model_cache_len(gc), 0);
    bt_step_end();
    model_cache_free(gc);
    model_cache_free(lc);
    model_free(llama);
    model_free(gpt);
}
END_TEST

static Suite *pp_model_suite(void) {
    Suite *s = suite_create("pp_model");
    bt_suite_add(s, test_stage_layers_by_hand);
    bt_suite_add(s, test_stage_layers_are_optimal);
    bt_suite_add(s, test_stage_layers_errors);
    bt_suite_add(s, test_gpt_stages_equal_whole_model);
    bt_suite_add(s, test_llama_stages_equal_whole_model);
    bt_suite_add(s, test_stages_with_dropout);
    bt_suite_add(s, test_bad_stage_configs);
    bt_suite_add(s, test_bad_stage_inputs);
    bt_suite_add(s, test_cached_forward_needs_the_whole_model);
    return s;
}

BT_TEST_MAIN(pp_model_suite)
