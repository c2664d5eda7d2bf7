/* nn modules: the tree and its dotted parameter names, parameter counts, weight tying, train/eval,
 * forwards against the plain ops, init statistics, error scopes naming the module, and the
 * messages of bad constructors. ASan checks that nn_module_free releases everything. */
#include <math.h>

#include "core/nn.h"
#include "tests/gradcheck.h"

/* net
 *   pos (4)              own parameter, registered first
 *   encoder
 *     0: Linear(3 -> 5)
 *     1: Linear(5 -> 2)
 *   head: Linear(2 -> 7, no bias)
 *   ln: LayerNorm(7)
 *   drop: Dropout(0.5)
 * Built bottom up (encoder filled before it joins net) so paths must be updated recursively. */
struct tiny {
    struct nn_module *net, *encoder;
    struct nn_linear *l0, *l1, *head;
    struct nn_layernorm *ln;
    struct nn_dropout *drop;
};

static void tiny_make(struct tiny *t, struct bt_rng *rng) {
    t->net = nn_module_create("net");
    ck_assert_ptr_nonnull(nn_module_add_parameter(t->net, "pos", BT_SHAPE(4), NULL));
    t->encoder = nn_module_create("encoder");
    t->l0 = nn_linear_create("0", 3, 5, true, rng);
    t->l1 = nn_linear_create("1", 5, 2, true, rng);
    ck_assert_ptr_nonnull(nn_module_add_child(t->encoder, &t->l0->base));
    ck_assert_ptr_nonnull(nn_module_add_child(t->encoder, &t->l1->base));
    ck_assert_ptr_nonnull(nn_module_add_child(t->net, t->encoder));
    t->head = nn_linear_create("head", 2, 7, false, rng);
    t->ln = nn_layernorm_create("ln", 7, true, 1e-5);
    t->drop = nn_dropout_create("drop", 0.5);
    ck_assert_ptr_nonnull(nn_module_add_child(t->net, &t->head->base));
    ck_assert_ptr_nonnull(nn_module_add_child(t->net, &t->ln->base));
    ck_assert_ptr_nonnull(nn_module_add_child(t->net, &t->drop->base));
}

START_TEST(test_named_parameters_and_paths) {
    struct bt_rng rng = bt_rng_make(1);
    struct tiny t;
    tiny_make(&t, &rng);
    struct nn_param_list l;
    ck_assert_int_eq(nn_named_parameters(t.net, &l), BT_OK);
    const char *expect[] = {
        "pos",         "encoder.0.weight", "encoder.0.bias", "encoder.1.weight", "encoder.1.bias",
        "head.weight", "ln.weight",        "ln.bias"};
    ck_assert_int_eq(l.count, 8);
    for (int k = 0; k < 8; k++)
        ck_assert_str_eq(l.names[k], expect[k]);
    ck_assert_ptr_eq(l.tensors[1], t.l0->weight);
    ck_assert_ptr_eq(l.tensors[5], t.head->weight);
    nn_param_list_free(&l);
    for (int k = 0; k < 8; k++)
        ck_assert(nn_get_parameter(t.net, expect[k])->requires_grad);
    ck_assert(nn_get_parameter(t.net, "pos")->persistent);

    /* names relative to the module asked, like PyTorch */
    ck_assert_int_eq(nn_named_parameters(t.encoder, &l), BT_OK);
    ck_assert_int_eq(l.count, 4);
    ck_assert_str_eq(l.names[0], "0.weight");
    nn_param_list_free(&l);

    ck_assert_str_eq(t.l1->base.path, "net.encoder.1");
    ck_assert_str_eq(t.drop->base.path, "net.drop");
    ck_assert_ptr_eq(nn_module_child(t.encoder, "1"), &t.l1->base);
    ck_assert_ptr_eq(nn_get_parameter(t.net, "encoder.1.bias"), t.l1->bias);
    ck_assert_int_eq((int)t.l0->weight->shape[0], 5); /* (out, in) like nn.Linear */
    ck_assert_int_eq((int)t.l0->weight->shape[1], 3);

    /* 4 + (15+5) + (10+2) + 14 + (7+7) */
    ck_assert_int_eq(nn_num_parameters(t.net), 64);
    ck_assert_int_eq(nn_num_parameters(&t.l0->base), 20);
    nn_module_free(t.net);
}
END_TEST

START_TEST(test_weight_tying) {
    /* GPT-2's LM head shares the token embedding: named once (first name), counted once */
    struct nn_module *model = nn_module_create("gpt");
    struct nn_embedding *wte = nn_embedding_create("wte", 11, 4, NULL);
    struct nn_linear *lm_head = nn_linear_create("lm_head", 4, 11, false, NULL);
    nn_module_add_child(model, &wte->base);
    nn_module_add_child(model, &lm_head->base);
    ck_assert_int_eq(nn_num_parameters(model), 88);
    ck_assert_int_eq(nn_module_set_parameter(&lm_head->base, "weight", wte->weight), BT_OK);
    ck_assert_ptr_eq(lm_head->weight, wte->weight);
    ck_assert_int_eq(nn_num_parameters(model), 44);
    struct nn_param_list l;
    nn_named_parameters(model, &l);
    ck_assert_int_eq(l.count, 1);
    ck_assert_str_eq(l.names[0], "wte.weight");
    nn_param_list_free(&l);

    bt_tensor *wrong = bt_tensor_new(BT_SHAPE(4, 11), BT_F32, bt_cpu());
    ck_assert_int_eq(nn_module_set_parameter(&lm_head->base, "weight", wrong), BT_ERR);
    ck_assert_error_contains("nn: parameter gpt.lm_head.weight is float32 (11,4), cannot replace "
                             "it with float32 (4,11)");
    ck_assert_int_eq(nn_module_set_parameter(&lm_head->base, "bias", wrong), BT_ERR);
    ck_assert_error_contains("nn: module gpt.lm_head has no parameter named \"bias\"");
    bt_tensor_free(wrong);
    nn_module_free(model); /* the shared tensor is released by both modules */
}
END_TEST

START_TEST(test_train_eval_reaches_dropout) {
    struct tiny t;
    tiny_make(&t, NULL);
    ck_assert(t.drop->base.training && t.l1->base.training);
    nn_module_train(t.net, false);
    ck_assert(!t.drop->base.training && !t.l1->base.training && !t.net->training);
    /* eval: dropout is the identity */
    bt_tensor *x = bt_full(BT_SHAPE(3, 8), 2.0, BT_F32, bt_cpu());
    bt_tensor *y = nn_dropout_forward(t.drop, x);
    ck_assert_ptr_nonnull(y);
    for (int i = 0; i < 24; i++)
        ck_assert_float_eq(bt_get(y, i), 2.0f);
    /* train: some elements dropped, the others scaled by 1/(1-p) */
    nn_module_train(t.net, true);
    ck_assert(t.drop->base.training);
    y = nn_dropout_forward(t.drop, x);
    ck_assert_ptr_nonnull(y);
    int zeros = 0;
    for (int i = 0; i < 24; i++) {
        float v = (float)bt_get(y, i);
        ck_assert(v == 0.0f || v == 4.0f);
        zeros += v == 0.0f;
    }
    ck_assert(zeros > 0 && zeros < 24);
    nn_module_free(t.net);
}
END_TEST

START_TEST(test_linear_forward_equals_bt_linear) {
    struct bt_rng rng = bt_rng_make(7);
    struct nn_linear *fc = nn_linear_create("fc", 6, 4, true, &rng);
    bt_tensor *x = test_param(BT_SHAPE(2, 3, 6), 3, -1, 1);
    bt_tensor *y = nn_linear_forward(fc, x);
    bt_tensor *ref = bt_linear(x, fc->weight, fc->bias);
    ck_assert_ptr_nonnull(y);
    ck_assert(bt_same_shape(y, ref));
    for (int64_t i = 0; i < bt_numel(y); i++)
        ck_assert_float_eq(bt_get(y, i), bt_get(ref, i));
    /* gradients reach the module's persistent parameters */
    ck_assert_int_eq(bt_backward(bt_sum_all(y)), BT_OK);
    ck_assert_ptr_nonnull(fc->weight->grad);
    ck_assert(fc->weight->grad->persistent);
    ck_assert_float_eq(bt_get(fc->bias->grad, 0), 6.0f); /* 2*3 rows */
    nn_module_free(&fc->base);
}
END_TEST

START_TEST(test_norm_and_embedding_forwards) {
    struct bt_rng rng = bt_rng_make(8);
    struct nn_layernorm *ln = nn_layernorm_create("ln", 5, true, 1e-5);
    struct nn_rmsnorm *rms = nn_rmsnorm_create("rms", 5, 1e-6);
    struct nn_embedding *emb = nn_embedding_create("emb", 10, 5, &rng);
    bt_tensor *x = test_param(BT_SHAPE(3, 5), 4, -1, 1);
    bt_tensor *a = nn_layernorm_forward(ln, x), *b = bt_layernorm(x, ln->weight, ln->bias, 1e-5);
    bt_tensor *c = nn_rmsnorm_forward(rms, x), *d = bt_rmsnorm(x, rms->weight, 1e-6);
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(c);
    for (int64_t i = 0; i < 15; i++) {
        ck_assert_float_eq(bt_get(a, i), bt_get(b, i));
        ck_assert_float_eq(bt_get(c, i), bt_get(d, i));
    }
    int64_t idx[] = {3, 0, 9};
    bt_tensor *e = nn_embedding_forward(emb, bt_from_data(BT_SHAPE(3), BT_I64, idx));
    ck_assert_ptr_nonnull(e);
    for (int k = 0; k < 5; k++)
        ck_assert_float_eq(bt_get(e, 10 + k), bt_get(emb->weight, 45 + k));
    nn_module_free(&ln->base);
    nn_module_free(&rms->base);
    nn_module_free(&emb->base);
}
END_TEST

static void moments(const bt_tensor *t, double *mean, double *std, double *max_abs) {
    double s = 0, s2 = 0, m = 0;
    int64_t n = bt_numel(t);
    for (int64_t i = 0; i < n; i++) {
        double v = bt_get(t, i);
        s += v;
        s2 += v * v;
        if (fabs(v) > m) m = fabs(v);
    }
    *mean = s / n;
    *std = sqrt(s2 / n - *mean * *mean);
    *max_abs = m;
}

START_TEST(test_init_gpt2_statistics) {
    struct nn_module *block = nn_module_create("block");
    struct nn_linear *c_fc = nn_linear_create("c_fc", 256, 1024, true, NULL);
    struct nn_linear *c_proj = nn_linear_create("c_proj", 1024, 256, true, NULL);
    struct nn_embedding *wte = nn_embedding_create("wte", 512, 256, NULL);
    struct nn_layernorm *ln = nn_layernorm_create("ln", 256, true, 1e-5);
    c_proj->residual_projection = true;
    nn_module_add_child(block, &c_fc->base);
    nn_module_add_child(block, &c_proj->base);
    nn_module_add_child(block, &wte->base);
    nn_module_add_child(block, &ln->base);
    bt_fill(ln->weight, 3.0); /* to see it reset */
    bt_fill(c_fc->bias, 1.0);
    struct bt_rng rng = bt_rng_make(2024);
    ck_assert_int_eq(nn_init_gpt2(block, &rng, 12), BT_OK);
    double mean, std, max_abs;
    moments(c_fc->weight, &mean, &std, &max_abs);
    ck_assert_double_eq_tol(mean, 0.0, 2e-4);
    ck_assert_double_eq_tol(std, 0.02, 0.02 * 0.01);
    moments(c_proj->weight, &mean, &std, &max_abs);
    ck_assert_double_eq_tol(std, 0.02 / sqrt(24.0), 0.02 / sqrt(24.0) * 0.01);
    moments(wte->weight, &mean, &std, &max_abs);
    ck_assert_double_eq_tol(std, 0.02, 0.02 * 0.01);
    moments(c_fc->bias, &mean, &std, &max_abs);
    ck_assert_double_eq(max_abs, 0.0);
    for (int i = 0; i < 256; i++) {
        ck_assert_float_eq(bt_get(ln->weight, i), 1.0f);
        ck_assert_float_eq(bt_get(ln->bias, i), 0.0f);
    }
    ck_assert_int_eq(nn_init_gpt2(block, &rng, 0), BT_ERR);
    ck_assert_error_contains("nn: init_gpt2: n_layer must be at least 1, got 0");

    /* applied to one named parameter: same seed, same values */
    bt_tensor *w = nn_get_parameter(block, "c_fc.weight");
    struct bt_rng a = bt_rng_make(5), b = bt_rng_make(5);
    nn_init_normal(w, &a, 0.0, 0.02);
    bt_tensor *copy = bt_tensor_clone_persistent(w);
    nn_init_normal(w, &b, 0.0, 0.02);
    for (int64_t i = 0; i < bt_numel(w); i += 997)
        ck_assert_float_eq(bt_get(w, i), bt_get(copy, i));
    ck_assert_uint_eq(a.offset, b.offset);
    bt_tensor_free(copy);
    nn_module_free(block);
}
END_TEST

START_TEST(test_init_pytorch_default_statistics) {
    struct bt_rng rng = bt_rng_make(3);
    struct nn_linear *fc = nn_linear_create("fc", 400, 300, true, &rng);
    struct nn_embedding *emb = nn_embedding_create("emb", 300, 400, &rng);
    double bound = 1.0 / sqrt(400.0), mean, std, max_abs;
    moments(fc->weight, &mean, &std, &max_abs);
    ck_assert(max_abs <= bound);
    ck_assert_double_eq_tol(std, bound / sqrt(3.0), bound / sqrt(3.0) * 0.01); /* U(-b,b) */
    moments(fc->bias, &mean, &std, &max_abs);
    ck_assert(max_abs <= bound && max_abs > 0.5 * bound);
    moments(emb->weight, &mean, &std, &max_abs);
    ck_assert_double_eq_tol(std, 1.0, 0.01);
    /* NULL rng: zeros, to be loaded from a checkpoint */
    struct nn_linear *blank = nn_linear_create("blank", 4, 4, true, NULL);
    moments(blank->weight, &mean, &std, &max_abs);
    ck_assert_double_eq(max_abs, 0.0);
    nn_init_ones(blank->bias);
    nn_init_uniform(blank->weight, &rng, 2.0, 3.0);
    moments(blank->weight, &mean, &std, &max_abs);
    ck_assert(mean > 2.0 && mean < 3.0 && max_abs < 3.0);
    nn_init_zeros(blank->weight);
    ck_assert_float_eq(bt_get(blank->weight, 5), 0.0f);
    ck_assert_float_eq(bt_get(blank->bias, 3), 1.0f);
    nn_module_free(&fc->base);
    nn_module_free(&emb->base);
    nn_module_free(&blank->base);
}
END_TEST

START_TEST(test_error_scope_names_module) {
    struct nn_module *net = nn_module_create("net");
    struct nn_linear *fc1 = nn_linear_create("fc1", 8, 3, true, NULL);
    nn_module_add_child(net, &fc1->base);
    bt_tensor *x = bt_zeros(BT_SHAPE(4, 7), BT_F32, bt_cpu());
    ck_assert_ptr_null(nn_linear_forward(fc1, x));
    ck_assert_error_contains(
        "linear: input (4,7) has 7 features but weight (3,8) expects 8 (in net.fc1)");
    /* the scope was popped: a later error outside the module names no module */
    ck_assert_ptr_null(bt_add(x, bt_zeros(BT_SHAPE(3), BT_F32, bt_cpu())));
    ck_assert(strstr(bt_last_error(), "(in ") == NULL);
    bt_error_clear();
    ck_assert_int_eq(bt_runtime()->n_scopes, 0);
    /* a NULL input from an earlier failure keeps the first message */
    ck_assert_ptr_null(nn_linear_forward(fc1, bt_reshape(x, BT_SHAPE(5, 5))));
    ck_assert(strstr(bt_last_error(), "net.fc1") == NULL);
    bt_error_clear();
    nn_module_free(net);
}
END_TEST

START_TEST(test_bad_modules) {
    ck_assert_ptr_null(nn_linear_create("fc", 0, 3, true, NULL));
    ck_assert_error_contains("linear fc: in_features must be positive, got 0");
    ck_assert_ptr_null(nn_embedding_create("wte", 10, -2, NULL));
    ck_assert_error_contains("embedding wte: embedding_dim must be positive, got -2");
    ck_assert_ptr_null(nn_dropout_create("drop", 1.5));
    ck_assert_error_contains("dropout drop: p must be in [0, 1), got 1.5");
    ck_assert_ptr_null(nn_layernorm_create("ln", 4, true, -1e-5));
    ck_assert_error_contains("layernorm ln: eps must be a non-negative number, got -1e-05");
    ck_assert_ptr_null(nn_rmsnorm_create("rms", 0, 1e-6));
    ck_assert_error_contains("rmsnorm rms: normalized size must be positive, got 0");
    ck_assert_ptr_null(nn_module_create("a.b"));
    ck_assert_error_contains("nn: module name \"a.b\" must not contain \".\"");
    ck_assert_ptr_null(nn_linear_forward(NULL, NULL));
    ck_assert_error_contains("linear: module is NULL");

    struct nn_module *net = nn_module_create("net");
    struct nn_module *a = nn_module_create("a"), *a2 = nn_module_create("a");
    struct nn_module *unnamed = nn_module_create("");
    ck_assert_ptr_nonnull(nn_module_add_child(net, a));
    ck_assert_ptr_null(nn_module_add_child(net, a2));
    ck_assert_error_contains("nn: module net already has a child named \"a\"");
    ck_assert_ptr_null(nn_module_add_child(a2, a));
    ck_assert_error_contains("nn: module net.a already has a parent");
    ck_assert_ptr_null(nn_module_add_child(net, unnamed));
    ck_assert_error_contains("nn: child module name is empty");
    ck_assert_ptr_nonnull(nn_module_add_parameter(a, "w", BT_SHAPE(2), NULL));
    ck_assert_ptr_null(nn_module_add_parameter(a, "w", BT_SHAPE(2), NULL));
    ck_assert_error_contains("nn: module net.a already has a parameter named \"w\"");
    ck_assert_ptr_null(nn_module_add_parameter(a, "x.y", BT_SHAPE(2), NULL));
    ck_assert_error_contains("nn: parameter name \"x.y\" must not contain \".\"");
    ck_assert_ptr_null(nn_get_parameter(net, "a.v"));
    ck_assert_error_contains("nn: module net has no parameter named \"a.v\"");
    ck_assert_ptr_null(nn_get_parameter(net, "b.w"));
    ck_assert_error_contains("nn: module net has no parameter named \"b.w\"");
    ck_assert_ptr_eq(nn_get_parameter(net, "a.w"), a->params[0].tensor);
    nn_module_free(a); /* a subtree: net forgets it */
    ck_assert_int_eq(net->n_children, 0);
    ck_assert_int_eq(nn_num_parameters(net), 0);
    nn_module_free(net);
    nn_module_free(a2);
    nn_module_free(unnamed);
}
END_TEST

/* A model's own module type: embeds nn_module, registers a parameter with a field, frees extras. */
struct scaled {
    struct nn_module base;
    bt_tensor *scale;
    float *scratch;
};
static void scaled_free(struct nn_module *m) {
    free(((struct scaled *)m)->scratch);
}

START_TEST(test_custom_module) {
    struct scaled *s = nn_module_new(sizeof(*s), "scaled");
    s->base.on_free = scaled_free;
    s->scratch = malloc(64);
    ck_assert_ptr_nonnull(nn_module_add_parameter(&s->base, "scale", BT_SHAPE(3), &s->scale));
    ck_assert_ptr_eq(s->scale, s->base.params[0].tensor);
    ck_assert(s->scale->requires_grad);
    bt_tensor *other = bt_tensor_new(BT_SHAPE(3), BT_F32, bt_cpu());
    ck_assert_int_eq(nn_module_set_parameter(&s->base, "scale", other), BT_OK);
    ck_assert_ptr_eq(s->scale, other);
    bt_tensor_free(other); /* the module keeps its own reference */
    ck_assert_int_eq(nn_num_parameters(&s->base), 3);
    nn_module_free(&s->base);
}
END_TEST

/* full (rows, cols) with full[i][j] = 100 i + j */
static bt_tensor *numbered(int64_t rows, int64_t cols) {
    bt_tensor *t = bt_tensor_new(BT_SHAPE(rows, cols), BT_F32, bt_cpu());
    float *d = bt_data(t);
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++)
            d[i * cols + j] = (float)(100 * i + j);
    return t;
}

START_TEST(test_split_blocks_take_place) {
    /* a fused (q, k, v) weight of 3 blocks of 4 rows, piece 1 of 2: rows 2-3, 6-7, 10-11 */
    struct nn_module *m = nn_module_create("attn");
    bt_tensor *w = nn_module_add_parameter(m, "weight", BT_SHAPE(6, 3), NULL);
    struct nn_split s = {.parts = 2, .part = 1, .dim = 0, .n_blocks = 3, .blocks = {4, 4, 4}};
    ck_assert_int_eq(nn_module_set_split(m, "weight", &s), BT_OK);
    struct nn_param_list l;
    ck_assert_int_eq(nn_named_parameters(m, &l), BT_OK);
    struct nn_split got = nn_param_split(&l, 0);
    ck_assert(nn_split_is_cut(&got));
    int64_t shape[2];
    nn_split_full_shape(&got, w, shape);
    ck_assert_int_eq(shape[0], 12);
    ck_assert_int_eq(shape[1], 3);
    bt_tensor *full = numbered(12, 3);
    ck_assert_int_eq(nn_split_take(&got, full, w, 0), BT_OK);
    const float *d = bt_data(w);
    int want_rows[6] = {2, 3, 6, 7, 10, 11};
    for (int r = 0; r < 6; r++)
        for (int j = 0; j < 3; j++)
            ck_assert_float_eq(d[r * 3 + j], (float)(100 * want_rows[r] + j));
    /* a ZeRO shard: rows 3..4 of the piece are full rows 7 and 10 */
    bt_tensor *shard = bt_tensor_new(BT_SHAPE(2, 3), BT_F32, bt_cpu());
    ck_assert_int_eq(nn_split_take(&got, full, shard, 3), BT_OK);
    ck_assert_float_eq(((float *)bt_data(shard))[0], 700.0f);
    ck_assert_float_eq(((float *)bt_data(shard))[3], 1000.0f);
    /* place both pieces into a zeroed full tensor: it comes back whole */
    bt_tensor *rebuilt = bt_tensor_new(BT_SHAPE(12, 3), BT_F32, bt_cpu());
    bt_tensor *piece = bt_tensor_new(BT_SHAPE(6, 3), BT_F32, bt_cpu());
    for (int part = 0; part < 2; part++) {
        struct nn_split p = got;
        p.part = part;
        ck_assert_int_eq(nn_split_take(&p, full, piece, 0), BT_OK);
        ck_assert_int_eq(nn_split_place(&got, part, piece, rebuilt), BT_OK);
    }
    ck_assert_mem_eq(bt_data(rebuilt), bt_data(full), 12 * 3 * sizeof(float));
    /* a shard past the piece's end, and a split that does not fit the parameter */
    ck_assert_int_eq(nn_split_take(&got, full, shard, 5), BT_ERR);
    ck_assert_error_contains("is not rows [5, ...) of piece 1 of 2 along dim 0");
    struct nn_split bad = {.parts = 2, .part = 0, .dim = 0, .n_blocks = 2, .blocks = {4, 4}};
    ck_assert_int_eq(nn_module_set_split(m, "weight", &bad), BT_ERR);
    ck_assert_error_contains("nn: parameter attn.weight: dim 0 of size 6 is not piece 0 of 2 of "
                             "blocks (4, 4)");
    nn_param_list_free(&l);
    bt_tensor_free(piece);
    bt_tensor_free(rebuilt);
    bt_tensor_free(shard);
    bt_tensor_free(full);
    nn_module_free(m);
}
END_TEST

START_TEST(test_split_columns) {
    /* a row-parallel weight (4, 6): piece 2 of 3 holds columns 4-5 */
    struct nn_split s = {.parts = 3, .part = 2, .dim = 1};
    bt_tensor *full = numbered(4, 6);
    bt_tensor *local = bt_tensor_new(BT_SHAPE(4, 2), BT_F32, bt_cpu());
    ck_assert_int_eq(nn_split_take(&s, full, local, 0), BT_OK);
    const float *d = bt_data(local);
    for (int i = 0; i < 4; i++) {
        ck_assert_float_eq(d[i * 2], (float)(100 * i + 4));
        ck_assert_float_eq(d[i * 2 + 1], (float)(100 * i + 5));
    }
    bt_tensor *shard = bt_tensor_new(BT_SHAPE(1, 2), BT_F32, bt_cpu()); /* row 3 of the piece */
    ck_assert_int_eq(nn_split_take(&s, full, shard, 3), BT_OK);
    ck_assert_float_eq(((float *)bt_data(shard))[1], 305.0f);
    bt_tensor *zeros = bt_zeros(BT_SHAPE(4, 6), BT_F32, bt_cpu());
    bt_tensor *rebuilt = bt_tensor_new(BT_SHAPE(4, 6), BT_F32, bt_cpu());
    ck_assert_int_eq(bt_copy_(rebuilt, zeros), BT_OK);
    ck_assert_int_eq(nn_split_place(&s, 2, local, rebuilt), BT_OK);
    ck_assert_float_eq(((float *)bt_data(rebuilt))[6 + 5], 105.0f);
    ck_assert_float_eq(((float *)bt_data(rebuilt))[6 + 3], 0.0f);
    /* a whole (uncut) split copies everything */
    struct nn_split whole = {0};
    bt_tensor *copy = bt_tensor_new(BT_SHAPE(4, 6), BT_F32, bt_cpu());
    ck_assert_int_eq(nn_split_take(&whole, full, copy, 0), BT_OK);
    ck_assert_mem_eq(bt_data(copy), bt_data(full), 24 * sizeof(float));
    bt_step_end();
    bt_tensor_free(copy);
    bt_tensor_free(rebuilt);
    bt_tensor_free(shard);
    bt_tensor_free(local);
    bt_tensor_free(full);
}
END_TEST

static Suite *nn_suite(void) {
    Suite *s = suite_create("nn");
    bt_suite_add(s, test_named_parameters_and_paths);
    bt_suite_add(s, test_weight_tying);
    bt_suite_add(s, test_train_eval_reaches_dropout);
    bt_suite_add(s, test_linear_forward_equals_bt_linear);
    bt_suite_add(s, test_norm_and_embedding_forwards);
    bt_suite_add(s, test_init_gpt2_statistics);
    bt_suite_add(s, test_init_pytorch_default_statistics);
    bt_suite_add(s, test_error_scope_names_module);
    bt_suite_add(s, test_bad_modules);
    bt_suite_add(s, test_custom_module);
    bt_suite_add(s, test_split_blocks_take_place);
    bt_suite_add(s, test_split_columns);
    return s;
}

BT_TEST_MAIN(nn_suite)
