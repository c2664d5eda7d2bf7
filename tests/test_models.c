/* The GPT-2 and LLaMA families (models/): public parameter names, shapes and order; the parameter
 * count and FLOPs formulas; forward shapes and the loss at init; finite-difference gradients of a
 * tiny model's parameters; dropout in train and eval; the key/value cache against the plain
 * forward; config and batch errors. The comparison with PyTorch on every gradient lives in
 * tests/reference/. */
#include <math.h>
#include <stdio.h>

#include "models/model.h"
#include "tests/gradcheck.h"
#include "tests/model_check.h"

/* ---- configs ---- */

/* GPT: V 11, block 8, L 2, NH 2, C 8, F 32 (tests/model_check.h) */
static struct model_config tiny_gpt(bool bias, bool tied) {
    return model_check_tiny_gpt(bias, tied, 11, 2);
}

/* LLaMA: V 11, block 8, L 2, NH 4, NKV 2, C 16 (hs 4), F 24 */
static struct model_config tiny_llama(bool tied) {
    return model_check_tiny_llama(tied, 11, 2);
}

/* (B, T) token ids of the given dtype: (b * 7 + t * 3 + shift) % V */
static bt_tensor *tokens(int64_t B, int64_t T, int64_t V, int shift, bt_dtype dtype) {
    bt_tensor *t = bt_empty(BT_SHAPE(B, T), dtype, bt_cpu());
    for (int64_t b = 0; b < B; b++)
        for (int64_t s = 0; s < T; s++)
            bt_set(t, b * T + s, (double)((b * 7 + s * 3 + shift) % V));
    return t;
}

/* ---- parameter names and shapes ---- */

struct expected_params {
    int n;
    char names[64][96];
    int ndim[64];
    int64_t shape[64][2];
};

static void expect(struct expected_params *e, const char *name, int layer, int64_t d0, int64_t d1) {
    ck_assert_int_lt(e->n, 64);
    snprintf(e->names[e->n], sizeof e->names[0], name, layer);
    e->ndim[e->n] = d1 ? 2 : 1;
    e->shape[e->n][0] = d0;
    e->shape[e->n][1] = d1;
    e->n++;
}

static void check_params(const struct model *m, const struct expected_params *e) {
    struct nn_param_list list;
    ck_assert_int_eq(model_parameters(m, &list), BT_OK);
    ck_assert_msg(list.count == e->n, "%lld parameters, expected %d", (long long)list.count, e->n);
    for (int k = 0; k < e->n; k++) {
        ck_assert_str_eq(list.names[k], e->names[k]);
        const bt_tensor *t = list.tensors[k];
        ck_assert_msg(t->ndim == e->ndim[k], "%s: %d dims", e->names[k], t->ndim);
        for (int d = 0; d < e->ndim[k]; d++)
            ck_assert_msg(t->shape[d] == e->shape[k][d], "%s: dim %d is %lld, expected %lld",
                          e->names[k], d, (long long)t->shape[d], (long long)e->shape[k][d]);
        ck_assert(t->requires_grad);
    }
    nn_param_list_free(&list);
}

static void expected_gpt(struct expected_params *e, bool bias, bool tied) {
    const int64_t V = 11, BS = 8, C = 8, F = 32;
    e->n = 0;
    expect(e, "transformer.wte.weight", 0, V, C);
    expect(e, "transformer.wpe.weight", 0, BS, C);
    for (int l = 0; l < 2; l++) {
        expect(e, "transformer.h.%d.ln_1.weight", l, C, 0);
        if (bias) expect(e, "transformer.h.%d.ln_1.bias", l, C, 0);
        expect(e, "transformer.h.%d.attn.c_attn.weight", l, 3 * C, C);
        if (bias) expect(e, "transformer.h.%d.attn.c_attn.bias", l, 3 * C, 0);
        expect(e, "transformer.h.%d.attn.c_proj.weight", l, C, C);
        if (bias) expect(e, "transformer.h.%d.attn.c_proj.bias", l, C, 0);
        expect(e, "transformer.h.%d.ln_2.weight", l, C, 0);
        if (bias) expect(e, "transformer.h.%d.ln_2.bias", l, C, 0);
        expect(e, "transformer.h.%d.mlp.c_fc.weight", l, F, C);
        if (bias) expect(e, "transformer.h.%d.mlp.c_fc.bias", l, F, 0);
        expect(e, "transformer.h.%d.mlp.c_proj.weight", l, C, F);
        if (bias) expect(e, "transformer.h.%d.mlp.c_proj.bias", l, C, 0);
    }
    expect(e, "transformer.ln_f.weight", 0, C, 0);
    if (bias) expect(e, "transformer.ln_f.bias", 0, C, 0);
    if (!tied) expect(e, "lm_head.weight", 0, V, C);
}

START_TEST(test_gpt_parameter_names) {
    for (int variant = 0; variant < 4; variant++) {
        bool bias = variant & 1, tied = variant & 2;
        struct model_config cfg = tiny_gpt(bias, tied);
        struct model *m = model_check_create(&cfg, 1);
        struct expected_params e;
        expected_gpt(&e, bias, tied);
        check_params(m, &e);
        bt_tensor *wte = nn_get_parameter(m->root, "transformer.wte.weight");
        bt_tensor *head = nn_get_parameter(m->root, "lm_head.weight");
        ck_assert_ptr_nonnull(head);
        ck_assert(tied ? head == wte : head != wte);
        model_free(m);
    }
}
END_TEST

START_TEST(test_llama_parameter_names) {
    const int64_t V = 11, C = 16, F = 24, hs = 4, NH = 4, NKV = 2;
    for (int tied = 0; tied < 2; tied++) {
        struct model_config cfg = tiny_llama(tied);
        struct model *m = model_check_create(&cfg, 1);
        struct expected_params e = {0};
        expect(&e, "model.embed_tokens.weight", 0, V, C);
        for (int l = 0; l < 2; l++) {
            expect(&e, "model.layers.%d.self_attn.q_proj.weight", l, NH * hs, C);
            expect(&e, "model.layers.%d.self_attn.k_proj.weight", l, NKV * hs, C);
            expect(&e, "model.layers.%d.self_attn.v_proj.weight", l, NKV * hs, C);
            expect(&e, "model.layers.%d.self_attn.o_proj.weight", l, C, NH * hs);
            expect(&e, "model.layers.%d.mlp.gate_proj.weight", l, F, C);
            expect(&e, "model.layers.%d.mlp.up_proj.weight", l, F, C);
            expect(&e, "model.layers.%d.mlp.down_proj.weight", l, C, F);
            expect(&e, "model.layers.%d.input_layernorm.weight", l, C, 0);
            expect(&e, "model.layers.%d.post_attention_layernorm.weight", l, C, 0);
        }
        expect(&e, "model.norm.weight", 0, C, 0);
        if (!tied) expect(&e, "lm_head.weight", 0, V, C);
        check_params(m, &e);
        model_free(m);
    }
}
END_TEST

/* ---- counts and FLOPs ---- */

START_TEST(test_parameter_count_formula) {
    for (int variant = 0; variant < 4; variant++) {
        bool bias = variant & 1, tied = variant & 2;
        struct model_config c = tiny_gpt(bias, tied);
        int64_t V = c.vocab_size, C = c.n_embd, F = c.ffn_hidden, L = c.n_layer, b = bias;
        int64_t layer = 2 * (C + b * C)         /* ln_1, ln_2 */
                        + 3 * C * C + b * 3 * C /* c_attn */
                        + C * C + b * C         /* attn.c_proj */
                        + F * C + b * F         /* c_fc */
                        + C * F + b * C;        /* mlp.c_proj */
        int64_t expected = V * C + c.block_size * C + L * layer + C + b * C + (tied ? 0 : V * C);
        struct model *m = model_check_create(&c, 1);
        ck_assert_int_eq(model_num_parameters(m), expected);
        /* 6 N without the position embedding + 12 L C T */
        double N = (double)(expected - c.block_size * C);
        ck_assert_double_eq_tol(model_flops_per_token(m, 5), 6.0 * N + 12.0 * L * C * 5, 1e-6);
        model_free(m);
    }
    for (int tied = 0; tied < 2; tied++) {
        struct model_config c = tiny_llama(tied);
        int64_t V = c.vocab_size, C = c.n_embd, F = c.ffn_hidden, L = c.n_layer;
        int64_t hs = C / c.n_head, kv = c.n_kv_head * hs;
        int64_t layer = 2 * C + C * C + 2 * kv * C + C * C + 3 * F * C;
        int64_t expected = V * C + L * layer + C + (tied ? 0 : V * C);
        struct model *m = model_check_create(&c, 1);
        ck_assert_int_eq(model_num_parameters(m), expected);
        ck_assert_double_eq_tol(model_flops_per_token(m, 8),
                                6.0 * (double)expected + 12.0 * L * C * 8, 1e-6);
        model_free(m);
    }
}
END_TEST

/* ---- init ---- */

static double std_of(const bt_tensor *t, double *mean_out) {
    double s = 0.0, s2 = 0.0;
    int64_t n = bt_numel(t);
    for (int64_t i = 0; i < n; i++) {
        double v = bt_get(t, i);
        s += v;
        s2 += v * v;
    }
    double mean = s / (double)n;
    if (mean_out) *mean_out = mean;
    return sqrt(s2 / (double)n - mean * mean);
}

START_TEST(test_gpt_init) {
    struct model_config c = tiny_gpt(true, true);
    c.n_embd = 64;
    c.ffn_hidden = 256;
    c.n_head = c.n_kv_head = 4;
    c.n_layer = 3;
    c.block_size = 64;
    struct model *m = model_check_create(&c, 5);
    double mean;
    const struct {
        const char *name;
        double std;
    } normal[] = {
        {"transformer.wte.weight", 0.02},
        {"transformer.wpe.weight", 0.02},
        {"transformer.h.1.attn.c_attn.weight", 0.02},
        {"transformer.h.1.mlp.c_fc.weight", 0.02},
        {"transformer.h.1.attn.c_proj.weight", 0.02 / sqrt(6.0)}, /* 0.02/sqrt(2*n_layer) */
        {"transformer.h.2.mlp.c_proj.weight", 0.02 / sqrt(6.0)},
    };
    for (int k = 0; k < 6; k++) {
        double s = std_of(nn_get_parameter(m->root, normal[k].name), &mean);
        ck_assert_msg(fabs(s / normal[k].std - 1.0) < 0.1, "%s: std %g, expected %g",
                      normal[k].name, s, normal[k].std);
        ck_assert_double_lt(fabs(mean), 0.2 * normal[k].std);
    }
    const char *zeros[] = {"transformer.h.0.attn.c_attn.bias", "transformer.h.0.mlp.c_proj.bias",
                           "transformer.h.0.ln_1.bias", "transformer.ln_f.bias"};
    for (int k = 0; k < 4; k++) {
        bt_tensor *t = nn_get_parameter(m->root, zeros[k]);
        for (int64_t i = 0; i < bt_numel(t); i++)
            ck_assert_double_eq(bt_get(t, i), 0.0);
    }
    bt_tensor *ln = nn_get_parameter(m->root, "transformer.h.2.ln_2.weight");
    for (int64_t i = 0; i < bt_numel(ln); i++)
        ck_assert_double_eq(bt_get(ln, i), 1.0);
    /* same seed, same weights; another seed, others */
    struct model *same = model_check_create(&c, 5), *other = model_check_create(&c, 6);
    bt_tensor *w = nn_get_parameter(m->root, "transformer.h.0.attn.c_attn.weight");
    ck_assert_double_eq(
        bt_get(nn_get_parameter(same->root, "transformer.h.0.attn.c_attn.weight"), 7),
        bt_get(w, 7));
    ck_assert_double_ne(
        bt_get(nn_get_parameter(other->root, "transformer.h.0.attn.c_attn.weight"), 7),
        bt_get(w, 7));
    model_free(other);
    model_free(same);
    model_free(m);
}
END_TEST

START_TEST(test_llama_init) {
    struct model_config c = tiny_llama(false);
    c.n_embd = 64;
    c.ffn_hidden = 128;
    struct model *m = model_check_create(&c, 5);
    const char *normal[] = {"model.embed_tokens.weight", "model.layers.1.self_attn.q_proj.weight",
                            "model.layers.1.self_attn.o_proj.weight",
                            "model.layers.0.mlp.down_proj.weight", "lm_head.weight"};
    for (int k = 0; k < 5; k++) {
        double s = std_of(nn_get_parameter(m->root, normal[k]), NULL);
        ck_assert_msg(fabs(s / 0.02 - 1.0) < 0.1, "%s: std %g, expected 0.02", normal[k], s);
    }
    const char *ones[] = {"model.layers.0.input_layernorm.weight",
                          "model.layers.1.post_attention_layernorm.weight", "model.norm.weight"};
    for (int k = 0; k < 3; k++) {
        bt_tensor *t = nn_get_parameter(m->root, ones[k]);
        for (int64_t i = 0; i < bt_numel(t); i++)
            ck_assert_double_eq(bt_get(t, i), 1.0);
    }
    model_free(m);
}
END_TEST

/* ---- forward ---- */

static void check_forward_shapes(const struct model_config *c) {
    struct model *m = model_check_create(c, 2);
    const int64_t B = 3, V = c->vocab_size;
    for (int64_t T = 1; T <= c->block_size; T += c->block_size - 1) {
        bt_tensor *idx = tokens(B, T, V, 0, BT_I64), *targets = tokens(B, T, V, 1, BT_I64);
        bt_tensor *logits = NULL;
        bt_tensor *loss = model_forward(m, idx, targets, &logits);
        ck_assert_msg(loss != NULL, "forward failed: %s", bt_last_error());
        ck_assert_int_eq(loss->ndim, 0);
        ck_assert(isfinite(bt_item(loss)));
        ck_assert(loss->requires_grad);
        ck_assert_ptr_nonnull(logits);
        ck_assert_int_eq(logits->ndim, 3);
        ck_assert_int_eq(logits->shape[0], B);
        ck_assert_int_eq(logits->shape[1], T);
        ck_assert_int_eq(logits->shape[2], V);
        /* without targets: logits, no loss, no error */
        bt_tensor *only = NULL;
        ck_assert_ptr_null(model_forward(m, idx, NULL, &only));
        ck_assert(!bt_has_error());
        ck_assert_ptr_nonnull(only);
        for (int64_t i = 0; i < bt_numel(only); i++)
            ck_assert_double_eq(bt_get(only, i), bt_get(logits, i));
        bt_step_end();
    }
    model_free(m);
}

START_TEST(test_forward_shapes) {
    struct model_config g = tiny_gpt(true, true), l = tiny_llama(false);
    check_forward_shapes(&g);
    check_forward_shapes(&l);
}
END_TEST

START_TEST(test_token_dtypes_agree) {
    struct model_config configs[2] = {tiny_gpt(false, true), tiny_llama(true)};
    for (int k = 0; k < 2; k++) {
        struct model *m = model_check_create(&configs[k], 3);
        double losses[3];
        bt_dtype dtypes[3] = {BT_I64, BT_I32, BT_U16};
        for (int d = 0; d < 3; d++) {
            bt_tensor *loss = model_forward(m, tokens(2, 5, 11, 0, dtypes[d]),
                                            tokens(2, 5, 11, 4, dtypes[d]), NULL);
            ck_assert_msg(loss != NULL, "%s", bt_last_error());
            losses[d] = bt_item(loss);
        }
        ck_assert_double_eq(losses[0], losses[1]);
        ck_assert_double_eq(losses[0], losses[2]);
        model_free(m);
    }
}
END_TEST

/* With N(0, 0.02) weights the logits are near 0: the loss is about ln(V). */
START_TEST(test_loss_at_init_is_log_vocab) {
    struct model_config configs[2] = {tiny_gpt(true, true), tiny_llama(false)};
    for (int k = 0; k < 2; k++) {
        struct model_config c = configs[k];
        c.vocab_size = 64;
        c.n_embd = 32;
        c.block_size = 16;
        struct model *m = model_check_create(&c, 4);
        bt_tensor *loss =
            model_forward(m, tokens(4, 16, 64, 0, BT_I32), tokens(4, 16, 64, 5, BT_I32), NULL);
        ck_assert_msg(loss != NULL, "%s", bt_last_error());
        ck_assert_msg(fabs(bt_item(loss) - log(64.0)) < 0.05, "arch %d: loss %g, ln(64) = %g", k,
                      bt_item(loss), log(64.0));
        model_free(m);
    }
}
END_TEST

/* ---- gradients ---- */

struct model_case {
    struct model *m;
    bt_tensor *idx, *targets;
};

static bt_tensor *fn_model_loss(bt_tensor **inputs, void *ctx) {
    (void)inputs; /* the perturbed inputs are the model's own parameters */
    struct model_case *c = ctx;
    return model_forward(c->m, c->idx, c->targets, NULL);
}

/* Every parameter redrawn from N(0, 0.3), so activations and gradients are far from linear. */
static void randomize(struct model *m, uint64_t seed) {
    struct nn_param_list list;
    ck_assert_int_eq(model_parameters(m, &list), BT_OK);
    struct bt_rng rng = bt_rng_make(seed);
    for (int64_t k = 0; k < list.count; k++)
        nn_init_normal(list.tensors[k], &rng, 0.0, 0.3);
    nn_param_list_free(&list);
}

static void gradcheck_model(const struct model_config *cfg, const char *const *names, int n) {
    struct model *m = model_check_create(cfg, 7);
    randomize(m, 8);
    struct model_case c = {m, tokens(2, cfg->block_size, cfg->vocab_size, 0, BT_I64),
                           tokens(2, cfg->block_size, cfg->vocab_size, 2, BT_I64)};
    bt_set(c.targets, 3, -1); /* one ignored target */
    bt_tensor *inputs[8];
    ck_assert_int_le(n, 8);
    for (int k = 0; k < n; k++) {
        inputs[k] = nn_get_parameter(m->root, names[k]);
        ck_assert_msg(inputs[k] != NULL, "%s", bt_last_error());
    }
    char what[64];
    snprintf(what, sizeof what, "%s model", cfg->arch == MODEL_GPT ? "gpt" : "llama");
    gradcheck(what, fn_model_loss, inputs, n, &c, 1e-3, 2e-2);
    model_free(m);
}

START_TEST(test_gpt_gradients) {
    /* V 7, block 4, L 1, NH 2, C 4, F 8 */
    struct model_config cfg = tiny_gpt(true, true);
    cfg.vocab_size = 7;
    cfg.block_size = 4;
    cfg.n_layer = 1;
    cfg.n_embd = 4;
    cfg.ffn_hidden = 8;
    const char *names[] = {"transformer.wte.weight",
                           "transformer.wpe.weight",
                           "transformer.h.0.attn.c_attn.weight",
                           "transformer.h.0.attn.c_attn.bias",
                           "transformer.h.0.ln_1.weight",
                           "transformer.h.0.mlp.c_proj.weight",
                           "transformer.ln_f.bias"};
    gradcheck_model(&cfg, names, 7);
    cfg.gelu = BT_GELU_EXACT;
    cfg.tie_embeddings = false;
    cfg.bias = false;
    const char *untied[] = {"lm_head.weight", "transformer.h.0.mlp.c_fc.weight",
                            "transformer.h.0.ln_2.weight"};
    gradcheck_model(&cfg, untied, 3);
}
END_TEST

START_TEST(test_llama_gradients) {
    /* V 7, block 4, L 1, NH 4, NKV 2, C 8 (hs 2), F 6 */
    struct model_config cfg = tiny_llama(false);
    cfg.vocab_size = 7;
    cfg.block_size = 4;
    cfg.n_layer = 1;
    cfg.n_embd = 8;
    cfg.ffn_hidden = 6;
    const char *names[] = {"model.embed_tokens.weight",
                           "model.layers.0.self_attn.q_proj.weight",
                           "model.layers.0.self_attn.k_proj.weight",
                           "model.layers.0.self_attn.v_proj.weight",
                           "model.layers.0.mlp.gate_proj.weight",
                           "model.layers.0.input_layernorm.weight",
                           "lm_head.weight"};
    gradcheck_model(&cfg, names, 7);
    cfg.tie_embeddings = true;
    const char *tied[] = {"model.embed_tokens.weight", "model.norm.weight"};
    gradcheck_model(&cfg, tied, 2);
}
END_TEST

/* backward reaches every parameter */
START_TEST(test_every_parameter_gets_a_gradient) {
    struct model_config configs[3] = {tiny_gpt(true, true), tiny_gpt(false, false),
                                      tiny_llama(false)};
    for (int k = 0; k < 3; k++) {
        struct model *m = model_check_create(&configs[k], 9);
        bt_tensor *loss =
            model_forward(m, tokens(2, 6, 11, 0, BT_I64), tokens(2, 6, 11, 1, BT_I64), NULL);
        ck_assert_int_eq(bt_backward(loss), BT_OK);
        struct nn_param_list list;
        ck_assert_int_eq(model_parameters(m, &list), BT_OK);
        for (int64_t p = 0; p < list.count; p++) {
            bt_tensor *g = list.tensors[p]->grad;
            ck_assert_msg(g != NULL, "%s has no gradient", list.names[p]);
            double norm = 0.0;
            for (int64_t i = 0; i < bt_numel(g); i++)
                norm += bt_get(g, i) * bt_get(g, i);
            ck_assert_msg(norm > 0.0 && isfinite(norm), "%s: gradient norm %g", list.names[p],
                          norm);
        }
        nn_param_list_free(&list);
        model_free(m);
    }
}
END_TEST

/* ---- dropout ---- */

START_TEST(test_dropout_train_and_eval) {
    struct model_config configs[2] = {tiny_gpt(true, true), tiny_llama(false)};
    for (int k = 0; k < 2; k++) {
        struct model_config c = configs[k];
        struct model *plain = model_check_create(&c, 11);
        c.dropout = 0.3;
        struct model *dropped = model_check_create(&c, 11);
        bt_tensor *idx = tokens(2, 8, 11, 0, BT_I64), *targets = tokens(2, 8, 11, 3, BT_I64);
        double base = bt_item(model_forward(plain, idx, targets, NULL));
        bt_manual_seed(1);
        double a = bt_item(model_forward(dropped, idx, targets, NULL));
        double b = bt_item(model_forward(dropped, idx, targets, NULL));
        ck_assert_double_ne(a, b); /* fresh masks each call */
        ck_assert_double_ne(a, base);
        bt_manual_seed(1);
        ck_assert_double_eq(bt_item(model_forward(dropped, idx, targets, NULL)), a);
        model_train(dropped, false); /* eval: dropout is the identity */
        ck_assert_double_eq(bt_item(model_forward(dropped, idx, targets, NULL)), base);
        model_train(dropped, true);
        ck_assert_double_ne(bt_item(model_forward(dropped, idx, targets, NULL)), base);
        model_free(dropped);
        model_free(plain);
    }
}
END_TEST

/* ---- generation with a key/value cache ---- */

/* The GPT config and the LLaMA one with grouped-query heads (NH 4, NKV 2), weights N(0, 0.3) */
static struct model *cache_model(int which, double dropout) {
    struct model_config c = which == 0 ? tiny_gpt(true, true) : tiny_llama(false);
    c.dropout = dropout;
    struct model *m = model_check_create(&c, 21);
    randomize(m, 22);
    return m;
}

/* cached (B, n, V) equals rows start..start+n-1 of full (B, T, V) */
static void expect_rows(const bt_tensor *cached, const bt_tensor *full, int64_t start,
                        const char *what) {
    ck_assert_msg(cached != NULL, "%s: %s", what, bt_last_error());
    int64_t B = full->shape[0], T = full->shape[1], V = full->shape[2], n = cached->shape[1];
    ck_assert_int_eq(cached->ndim, 3);
    ck_assert_int_eq(cached->shape[0], B);
    ck_assert_int_eq(cached->shape[2], V);
    ck_assert(!cached->requires_grad); /* nothing recorded */
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < n; t++)
            for (int64_t v = 0; v < V; v++) {
                double got = bt_get(cached, (b * n + t) * V + v);
                double want = bt_get(full, (b * T + start + t) * V + v);
                ck_assert_msg(fabs(got - want) <= 1e-5 + 1e-5 * fabs(want),
                              "%s: logits[%lld, %lld, %lld] = %.8g with the cache, %.8g without",
                              what, (long long)b, (long long)(start + t), (long long)v, got, want);
            }
}

/* Feeds the 8 tokens of idx (2, 8) in chunks of the given sizes; each chunk's logits equal its
 * rows of model_forward over all 8 */
static void check_chunks(struct model *m, const int64_t *chunks, int n_chunks, const char *what) {
    bt_tensor *idx = tokens(2, 8, 11, 1, BT_I64), *full = NULL;
    model_forward(m, idx, NULL, &full);
    ck_assert_msg(full != NULL, "%s", bt_last_error());
    struct model_cache *c = model_cache_create(m, 2);
    ck_assert_msg(c != NULL, "%s", bt_last_error());
    int64_t at = 0;
    for (int k = 0; k < n_chunks; k++) {
        bt_tensor *logits = model_forward_cached(m, c, bt_narrow(idx, 1, at, chunks[k]));
        expect_rows(logits, full, at, what);
        at += chunks[k];
        ck_assert_int_eq(model_cache_len(c), at);
    }
    model_cache_free(c);
}

/* A prefill of 5 then 3 single steps; a prefill of 2, a chunk of 4 (masked), 2 steps */
START_TEST(test_cache_matches_forward) {
    for (int which = 0; which < 2; which++) {
        struct model *m = cache_model(which, 0.0);
        const char *what = which == 0 ? "gpt" : "llama";
        check_chunks(m, (int64_t[]){5, 1, 1, 1}, 4, what);
        check_chunks(m, (int64_t[]){2, 4, 1, 1}, 4, what);
        check_chunks(m, (int64_t[]){8}, 1, what);
        model_free(m);
    }
}
END_TEST

/* A model in training mode with dropout: the cached forward is the eval forward, and both modes
 * (training, grad) are as they were after it. */
START_TEST(test_cache_is_eval_and_no_grad) {
    for (int which = 0; which < 2; which++) {
        struct model *m = cache_model(which, 0.3);
        bt_tensor *idx = tokens(2, 6, 11, 2, BT_I64), *full = NULL;
        model_train(m, false);
        model_forward(m, idx, NULL, &full);
        model_train(m, true);
        struct model_cache *c = model_cache_create(m, 2);
        expect_rows(model_forward_cached(m, c, bt_narrow(idx, 1, 0, 4)), full, 0, "prefill");
        expect_rows(model_forward_cached(m, c, bt_narrow(idx, 1, 4, 1)), full, 4, "step");
        ck_assert(m->root->training);
        ck_assert(bt_is_grad_enabled());
        model_cache_free(c);
        model_free(m);
    }
}
END_TEST

/* Greedy decoding one token at a time through the cache picks the same tokens as the argmax of
 * model_forward's last row over the whole sequence so far. */
static int64_t argmax_row(const bt_tensor *logits, int64_t row) {
    int64_t V = logits->shape[2], best = 0;
    for (int64_t v = 1; v < V; v++)
        if (bt_get(logits, row * V + v) > bt_get(logits, row * V + best)) best = v;
    return best;
}

START_TEST(test_cache_greedy_equals_full_forward) {
    for (int which = 0; which < 2; which++) {
        struct model *m = cache_model(which, 0.0);
        const int64_t T = m->config.block_size, prompt = 2;
        int64_t with_cache[8] = {3, 7}, without[8] = {3, 7};
        struct model_cache *c = model_cache_create(m, 1);
        bt_tensor *logits =
            model_forward_cached(m, c, bt_from_data(BT_SHAPE(1, prompt), BT_I64, with_cache));
        for (int64_t t = prompt; t < T; t++) {
            ck_assert_msg(logits != NULL, "%s", bt_last_error());
            with_cache[t] = argmax_row(logits, logits->shape[1] - 1);
            if (t + 1 < T)
                logits = model_forward_cached(m, c,
                                              bt_from_data(BT_SHAPE(1, 1), BT_I64, &with_cache[t]));
        }
        for (int64_t t = prompt; t < T; t++) {
            bt_tensor *full = NULL;
            model_forward(m, bt_from_data(BT_SHAPE(1, t), BT_I64, without), NULL, &full);
            ck_assert_msg(full != NULL, "%s", bt_last_error());
            without[t] = argmax_row(full, t - 1);
        }
        for (int64_t t = 0; t < T; t++)
            ck_assert_msg(with_cache[t] == without[t],
                          "arch %d: token %lld is %lld with the cache, %lld without", which,
                          (long long)t, (long long)with_cache[t], (long long)without[t]);
        model_cache_free(c);
        model_free(m);
    }
}
END_TEST

/* After a reset the cache starts again at position 0: the same prefill gives the same logits */
START_TEST(test_cache_reset) {
    struct model *m = cache_model(1, 0.0);
    struct model_cache *c = model_cache_create(m, 2);
    bt_tensor *idx = tokens(2, 8, 11, 4, BT_I64), *full = NULL;
    model_forward(m, bt_narrow(idx, 1, 0, 3), NULL, &full);
    ck_assert_ptr_nonnull(model_forward_cached(m, c, idx)); /* full: len 8 */
    ck_assert_int_eq(model_cache_len(c), 8);
    model_cache_reset(c);
    ck_assert_int_eq(model_cache_len(c), 0);
    expect_rows(model_forward_cached(m, c, bt_narrow(idx, 1, 0, 3)), full, 0, "after reset");
    ck_assert_int_eq(model_cache_len(c), 3);
    model_cache_free(c);
    model_free(m);
}
END_TEST

START_TEST(test_cache_errors) {
    struct model *gpt = cache_model(0, 0.0), *llama = cache_model(1, 0.0);
    struct model_cache *c = model_cache_create(gpt, 2);
    ck_assert_ptr_nonnull(model_forward_cached(gpt, c, tokens(2, 6, 11, 0, BT_I64)));
    ck_assert_ptr_null(model_forward_cached(gpt, c, tokens(2, 3, 11, 0, BT_I64)));
    ck_assert_error_contains("gpt: forward_cached: 6 cached + 3 new positions is more than "
                             "model.block_size=8 (reset the cache)");
    ck_assert_int_eq(model_cache_len(c), 6); /* a failed call leaves it as it was */
    ck_assert_ptr_nonnull(model_forward_cached(gpt, c, tokens(2, 2, 11, 0, BT_I64)));
    ck_assert_ptr_null(model_forward_cached(gpt, c, tokens(2, 1, 11, 0, BT_I64)));
    ck_assert_error_contains("8 cached + 1 new positions is more than model.block_size=8");
    model_cache_reset(c);
    ck_assert_ptr_null(model_forward_cached(gpt, c, tokens(2, 9, 11, 0, BT_I64)));
    ck_assert_error_contains("0 cached + 9 new positions is more than model.block_size=8");

    ck_assert_ptr_null(model_forward_cached(gpt, c, tokens(3, 2, 11, 0, BT_I64)));
    ck_assert_error_contains("gpt: forward_cached: idx (3,2) must be (2, n) with n >= 1");
    ck_assert_ptr_null(model_forward_cached(gpt, c, bt_zeros(BT_SHAPE(2, 0), BT_I64, bt_cpu())));
    ck_assert_error_contains("idx (2,0) must be (2, n) with n >= 1");
    ck_assert_ptr_null(model_forward_cached(gpt, c, bt_zeros(BT_SHAPE(2, 2), BT_F32, bt_cpu())));
    ck_assert_error_contains("forward_cached: idx must hold token ids (int32, int64 or uint16), "
                             "got float32 (2,2)");
    ck_assert_ptr_null(model_forward_cached(llama, c, tokens(2, 2, 11, 0, BT_I64)));
    ck_assert_error_contains("llama: forward_cached: the cache belongs to another model");
    ck_assert_ptr_null(model_forward_cached(gpt, NULL, tokens(2, 2, 11, 0, BT_I64)));
    ck_assert_error_contains("model: forward_cached: cache is NULL");
    ck_assert_ptr_null(model_cache_create(gpt, 0));
    ck_assert_error_contains("model cache: batch must be at least 1, got 0");
    /* a bad token id fails inside the embedding and leaves the cache as it was */
    bt_tensor *bad = tokens(2, 2, 11, 0, BT_I64);
    bt_set(bad, 1, 11);
    ck_assert_ptr_null(model_forward_cached(gpt, c, bad));
    ck_assert_error_contains("embedding: index 11 at position 1 is out of range");
    ck_assert_int_eq(model_cache_len(c), 0);
    ck_assert(bt_is_grad_enabled());

    model_cache_free(c);
    model_cache_free(NULL);
    model_free(llama);
    model_free(gpt);
}
END_TEST

/* ---- errors ---- */

START_TEST(test_bad_batches) {
    struct model_config g = tiny_gpt(true, true), l = tiny_llama(false);
    struct model *gpt = model_check_create(&g, 1), *llama = model_check_create(&l, 1);

    ck_assert_ptr_null(model_forward(gpt, tokens(2, 9, 11, 0, BT_I64), NULL, NULL));
    ck_assert_error_contains("gpt: idx (2,9) has sequence length 9, more than model.block_size=8");
    ck_assert_ptr_null(model_forward(llama, tokens(1, 12, 11, 0, BT_I32), NULL, NULL));
    ck_assert_error_contains(
        "llama: idx (1,12) has sequence length 12, more than model.block_size=8");

    bt_tensor *idx3 = bt_zeros(BT_SHAPE(2, 3, 4), BT_I64, bt_cpu());
    ck_assert_ptr_null(model_forward(gpt, idx3, NULL, NULL));
    ck_assert_error_contains("gpt: idx (2,3,4) must be 2-D (batch, time)");
    bt_tensor *idxf = bt_zeros(BT_SHAPE(2, 3), BT_F32, bt_cpu());
    ck_assert_ptr_null(model_forward(gpt, idxf, NULL, NULL));
    ck_assert_error_contains(
        "gpt: idx must hold token ids (int32, int64 or uint16), got float32 (2,3)");
    bt_tensor *empty = bt_zeros(BT_SHAPE(2, 0), BT_I64, bt_cpu());
    ck_assert_ptr_null(model_forward(gpt, empty, NULL, NULL));
    ck_assert_error_contains("gpt: idx (2,0) is empty");
    ck_assert_ptr_null(
        model_forward(gpt, tokens(2, 4, 11, 0, BT_I64), tokens(2, 3, 11, 0, BT_I64), NULL));
    ck_assert_error_contains("gpt: targets (2,3) must have the shape of idx (2,4)");
    ck_assert_ptr_null(model_forward(gpt, NULL, NULL, NULL));
    ck_assert_error_contains("model: forward: idx is NULL");

    /* a token id out of range fails inside the embedding, which names its module */
    bt_tensor *idx = tokens(2, 4, 11, 0, BT_I64);
    bt_set(idx, 5, 11);
    bt_tensor *logits = idx;
    ck_assert_ptr_null(model_forward(gpt, idx, NULL, &logits));
    ck_assert_ptr_null(logits);
    ck_assert_error_contains("embedding: index 11 at position 5 is out of range [0, 11) for "
                             "weight (11,8) (in transformer.wte)");
    ck_assert_ptr_null(model_forward(llama, idx, NULL, NULL));
    ck_assert_error_contains("(in model.embed_tokens)");

    model_free(llama);
    model_free(gpt);
}
END_TEST

START_TEST(test_bad_configs) {
    struct model_config g = tiny_gpt(true, true), l = tiny_llama(false), c;
    ck_assert_ptr_null(model_create(NULL, 1));
    ck_assert_error_contains("model: config is NULL");

    c = g, c.arch = (model_arch)7;
    model_check_create_fails(c, "model.arch: unknown architecture 7 (expected gpt or llama)");
    c = g, c.vocab_size = 0;
    model_check_create_fails(c, "model.vocab_size must be at least 1, got 0");
    c = g, c.block_size = -3;
    model_check_create_fails(c, "model.block_size must be at least 1, got -3");
    c = l, c.n_layer = 0;
    model_check_create_fails(c, "model.n_layer must be at least 1, got 0");
    c = g, c.n_head = 0;
    model_check_create_fails(c, "model.n_head must be at least 1, got 0");
    c = l, c.n_kv_head = 0;
    model_check_create_fails(c, "model.n_kv_head must be at least 1, got 0");
    c = g, c.n_embd = 0;
    model_check_create_fails(c, "model.n_embd must be at least 1, got 0");
    c = l, c.ffn_hidden = 0;
    model_check_create_fails(c, "model.ffn_hidden must be at least 1, got 0");
    c = g, c.n_embd = 9;
    model_check_create_fails(c, "model.n_embd=9 is not divisible by model.n_head=2");
    c = l, c.n_kv_head = 3;
    model_check_create_fails(c, "model.n_head=4 is not divisible by model.n_kv_head=3");
    c = g, c.n_kv_head = 1;
    model_check_create_fails(c, "model.n_kv_head=1 must equal model.n_head=2 for model.arch=gpt");
    c = l, c.n_embd = 12; /* head size 3 */
    model_check_create_fails(
        c, "model.n_embd=12 / model.n_head=4 gives head size 3, which must be even "
           "for rotary embeddings (model.arch=llama)");
    c = g, c.dropout = 1.0;
    model_check_create_fails(c, "model.dropout must be in [0, 1), got 1");
    c = l, c.dropout = -0.1;
    model_check_create_fails(c, "model.dropout must be in [0, 1), got -0.1");
    c = g, c.norm_eps = -1e-5;
    model_check_create_fails(c, "model.norm_eps must be a non-negative number, got -1e-05");
    c = l, c.rope_theta = 0.0;
    model_check_create_fails(c, "model.rope_theta must be a positive number, got 0");
    c = g, c.gelu = (bt_gelu_kind)5;
    model_check_create_fails(c, "model.gelu: unknown kind 5 (expected tanh or exact)");
    /* rope_theta and gelu belong to the other family: not checked there */
    c = g, c.rope_theta = 0.0;
    struct model *m = model_check_create(&c, 1);
    model_free(m);
}
END_TEST

static Suite *models_suite(void) {
    Suite *s = suite_create("models");
    bt_suite_add(s, test_gpt_parameter_names);
    bt_suite_add(s, test_llama_parameter_names);
    bt_suite_add(s, test_parameter_count_formula);
    bt_suite_add(s, test_gpt_init);
    bt_suite_add(s, test_llama_init);
    bt_suite_add(s, test_forward_shapes);
    bt_suite_add(s, test_token_dtypes_agree);
    bt_suite_add(s, test_loss_at_init_is_log_vocab);
    bt_suite_add(s, test_gpt_gradients);
    bt_suite_add(s, test_llama_gradients);
    bt_suite_add(s, test_every_parameter_gets_a_gradient);
    bt_suite_add(s, test_dropout_train_and_eval);
    bt_suite_add(s, test_cache_matches_forward);
    bt_suite_add(s, test_cache_is_eval_and_no_grad);
    bt_suite_add(s, test_cache_greedy_equals_full_forward);
    bt_suite_add(s, test_cache_reset);
    bt_suite_add(s, test_cache_errors);
    bt_suite_add(s, test_bad_batches);
    bt_suite_add(s, test_bad_configs);
    return s;
}

BT_TEST_MAIN(models_suite)
