/* Tensor parallelism inside the GPT model (models/gpt.c with model_config.tp_group): on every rank
 * the single-rank model (tp_group NULL) and the tensor-parallel one (tp_group = the world) are
 * built from the same config and seed and run on the same batch; their losses, logits and this
 * rank's slice of every parameter gradient must match, and so must the losses of 15 AdamW steps.
 * Runs alone (a group of one: the plain model) and under mpirun with 2 and 4 ranks
 * (tests/gpt_tp_tests.cmake). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "comm/comm.h"
#include "core/optim.h"
#include "core/runtime.h"
#include "models/model.h"
#include "tests/gradcheck.h"
#include "tests/mpi_test.h"

/* every split size (NH, V, F) divisible by tp = 1, 2 and 4 */
enum { V = 64, BLOCK = 16, NH = 4, C = 32, F = 128, B = 2, T = 16 };

static int tp_size(void) {
    return comm_size(comm_world());
}

static int tp_rank(void) {
    return comm_rank(comm_world());
}

static struct model_config tiny_gpt(bool bias, bool tied, struct comm *tp_group) {
    return (struct model_config){.arch = MODEL_GPT,
                                 .vocab_size = V,
                                 .block_size = BLOCK,
                                 .n_layer = 2,
                                 .n_head = NH,
                                 .n_kv_head = NH,
                                 .n_embd = C,
                                 .ffn_hidden = F,
                                 .dropout = 0.0,
                                 .bias = bias,
                                 .gelu = BT_GELU_TANH,
                                 .norm_eps = 1e-5,
                                 .tie_embeddings = tied,
                                 .tp_group = tp_group};
}

static struct model *create_ok(const struct model_config *cfg, uint64_t seed) {
    struct model *m = model_create(cfg, seed);
    ck_assert_msg(m != NULL, "model_create failed on rank %d: %s", tp_rank(), bt_last_error());
    return m;
}

/* (B, n) token ids of positions t0..t0+n-1, the same on every rank:
 * (b * 7 + t * 3 + t * t + shift) % V */
static bt_tensor *tokens_at(int shift, int64_t t0, int64_t n) {
    bt_tensor *t = bt_empty(BT_SHAPE(B, n), BT_I64, bt_cpu());
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0, s = t0; i < n; i++, s++)
            bt_set(t, b * n + i, (double)((b * 7 + s * 3 + s * s + shift) % V));
    return t;
}

static bt_tensor *tokens(int shift) {
    return tokens_at(shift, 0, T);
}

static void assert_rel(const char *what, double got, double want, double tol) {
    ck_assert_msg(fabs(got - want) <= tol * fabs(want), "%s: %.9g, expected %.9g (rank %d of %d)",
                  what, got, want, tp_rank(), tp_size());
}

/* got == want element by element (logical order), to `tol` times want's largest magnitude */
static void assert_close(const char *what, const bt_tensor *got, const bt_tensor *want,
                         double tol) {
    char a[96], b[96];
    ck_assert_msg(got && want, "%s: missing tensor on rank %d", what, tp_rank());
    ck_assert_msg(bt_same_shape(got, want), "%s: shape %s, expected %s (rank %d of %d)", what,
                  bt_shape_str(got, a, sizeof a), bt_shape_str(want, b, sizeof b), tp_rank(),
                  tp_size());
    double scale = 0.0;
    for (int64_t i = 0, n = bt_numel(want); i < n; i++)
        scale = fmax(scale, fabs(bt_get(want, i)));
    for (int64_t i = 0, n = bt_numel(want); i < n; i++) {
        double g = bt_get(got, i), w = bt_get(want, i);
        ck_assert_msg(fabs(g - w) <= tol * scale + 1e-12,
                      "%s: element %lld is %.9g, expected %.9g (scale %.3g, rank %d of %d)", what,
                      (long long)i, g, w, scale, tp_rank(), tp_size());
    }
}

/* [start, start + n) of t along dim, a view without autograd */
static bt_tensor *slice(bt_tensor *t, int dim, int64_t start, int64_t n) {
    bool grad_mode = bt_set_grad_enabled(false);
    bt_tensor *v = bt_narrow(t, dim, start, n);
    bt_set_grad_enabled(grad_mode);
    ck_assert_msg(v != NULL, "slice: %s", bt_last_error());
    return v;
}

/* Compares this rank's tensor `got` of parameter `name` with the full model's `full`: the same
 * shape means replicated (the whole tensor); otherwise got is rank r's block of P along the dim
 * that differs, or for c_attn the r-th block of each of q, k and v (parallel/tp.h). */
static void assert_slice_close(const char *name, bt_tensor *got, bt_tensor *full, double tol) {
    char what[160];
    int P = tp_size(), r = tp_rank();
    ck_assert_int_eq(got->ndim, full->ndim);
    int dim = -1;
    for (int d = 0; d < got->ndim; d++)
        if (got->shape[d] != full->shape[d]) {
            ck_assert_msg(dim < 0 && got->shape[d] * P == full->shape[d],
                          "%s: shape does not split by tp=%d", name, P);
            dim = d;
        }
    if (dim < 0) {
        assert_close(name, got, full, tol);
        return;
    }
    int n_blocks = strstr(name, ".c_attn.") ? 3 : 1;
    int64_t local = got->shape[dim] / n_blocks, whole = full->shape[dim] / n_blocks;
    double scale = 0.0; /* the whole full tensor's, not the block's */
    for (int64_t i = 0, n = bt_numel(full); i < n; i++)
        scale = fmax(scale, fabs(bt_get(full, i)));
    for (int b = 0; b < n_blocks; b++) {
        snprintf(what, sizeof what, "%s block %d of %d", name, b, n_blocks);
        bt_tensor *g = slice(got, dim, b * local, local);
        bt_tensor *w = slice(full, dim, b * whole + r * local, local);
        for (int64_t i = 0, n = bt_numel(w); i < n; i++)
            ck_assert_msg(fabs(bt_get(g, i) - bt_get(w, i)) <= tol * scale + 1e-12,
                          "%s: element %lld is %.9g, expected %.9g (rank %d of %d)", what,
                          (long long)i, bt_get(g, i), bt_get(w, i), r, P);
    }
}

/* the two models' parameter lists have the same names in the same order */
static void params_of(struct model *full, struct model *tp, struct nn_param_list *pf,
                      struct nn_param_list *pt) {
    ck_assert(model_parameters(full, pf) == BT_OK);
    ck_assert(model_parameters(tp, pt) == BT_OK);
    ck_assert_int_eq(pf->count, pt->count);
    for (int64_t i = 0; i < pf->count; i++)
        ck_assert_str_eq(pt->names[i], pf->names[i]);
}

/* a replicated parameter's gradient is bit-identical on every rank of the group */
static void assert_same_on_every_rank(const char *name, const bt_tensor *grad) {
    bt_tensor *hi = bt_tensor_new(grad->ndim, grad->shape, BT_F32, bt_cpu());
    bt_tensor *lo = bt_tensor_new(grad->ndim, grad->shape, BT_F32, bt_cpu());
    ck_assert(bt_copy_(hi, grad) == BT_OK && bt_copy_(lo, grad) == BT_OK);
    ck_assert(comm_allreduce(comm_world(), hi, COMM_MAX) == BT_OK);
    ck_assert(comm_allreduce(comm_world(), lo, COMM_MIN) == BT_OK);
    for (int64_t i = 0, n = bt_numel(grad); i < n; i++)
        ck_assert_msg(bt_get(hi, i) == bt_get(lo, i),
                      "%s: gradient element %lld differs across ranks (%.9g to %.9g, rank %d)",
                      name, (long long)i, bt_get(lo, i), bt_get(hi, i), tp_rank());
    bt_tensor_free(hi);
    bt_tensor_free(lo);
}

/* ---- one step: loss, logits and gradients ---- */

static void check_one_step(bool bias, bool tied, bool sequence_parallel) {
    struct model_config cf = tiny_gpt(bias, tied, NULL), ct = tiny_gpt(bias, tied, comm_world());
    ct.sequence_parallel = sequence_parallel;
    struct model *full = create_ok(&cf, 1234), *tp = create_ok(&ct, 1234);
    struct nn_param_list pf, pt;
    params_of(full, tp, &pf, &pt);
    /* the same initial weights: this rank's slices of the single-rank ones */
    for (int64_t i = 0; i < pf.count; i++)
        assert_slice_close(pf.names[i], pt.tensors[i], pf.tensors[i], 0.0);

    bt_tensor *idx = tokens(0), *targets = tokens(5);
    bt_tensor *logits_full, *logits_tp;
    bt_tensor *loss_full = model_forward(full, idx, targets, &logits_full);
    ck_assert_msg(loss_full != NULL, "%s", bt_last_error());
    ck_assert(bt_backward(loss_full) == BT_OK);
    bt_tensor *loss_tp = model_forward(tp, idx, targets, &logits_tp);
    ck_assert_msg(loss_tp != NULL, "rank %d: %s", tp_rank(), bt_last_error());
    ck_assert(bt_backward(loss_tp) == BT_OK);

    double lf = bt_item(loss_full), lt = bt_item(loss_tp);
    if (tp_size() == 1) ck_assert(lf == lt); /* the same model, the same ops */
    assert_rel("loss", lt, lf, 1e-5);
    /* logits (B, T, V/P): this rank's vocabulary slice */
    assert_slice_close("logits", logits_tp, logits_full, 1e-5);
    for (int64_t i = 0; i < pf.count; i++) {
        bt_tensor *gf = pf.tensors[i]->grad, *gt = pt.tensors[i]->grad;
        ck_assert_msg(gf && gt, "%s has no gradient (rank %d)", pf.names[i], tp_rank());
        assert_slice_close(pf.names[i], gt, gf, 1e-5);
        if (bt_same_shape(gt, gf)) assert_same_on_every_rank(pf.names[i], gt);
    }
    bt_step_end();
    nn_param_list_free(&pf);
    nn_param_list_free(&pt);
    model_free(full);
    model_free(tp);
}

/* tied LM head (tp_vocab_embedding_attend) with biases; untied (column-parallel lm_head) without */
MPI_TEST(test_loss_and_gradients) {
    check_one_step(true, true, false);
    check_one_step(false, false, false);
}

/* sequence parallelism: the same loss, logits and gradients; the replicated parameters (norms,
 * wpe, row-parallel biases) see only this rank's positions and their gradients are summed */
MPI_TEST(test_sequence_parallel_gradients) {
    check_one_step(true, true, true);
    check_one_step(false, false, true);
}

/* ---- training: 15 AdamW steps on each model's own parameters ---- */

/* 15 steps of both models on the same batches; with dropout both draw their masks from the same
 * stream, set before each forward (under SP each rank keeps its slice of the whole mask) */
static void check_adamw_steps(bool sequence_parallel, double dropout) {
    struct model_config cf = tiny_gpt(true, true, NULL), ct = tiny_gpt(true, true, comm_world());
    cf.dropout = ct.dropout = dropout;
    ct.sequence_parallel = sequence_parallel;
    struct model *full = create_ok(&cf, 77), *tp = create_ok(&ct, 77);
    struct nn_param_list pf, pt;
    params_of(full, tp, &pf, &pt);
    struct optim_config oc = optim_config_default(OPTIM_ADAMW);
    oc.weight_decay = 0.1;
    struct optim *of = optim_create(&oc, &pf), *ot = optim_create(&oc, &pt);
    ck_assert_msg(of && ot, "optim_create: %s", bt_last_error());
    double first = 0.0, last = 0.0;
    for (int step = 0; step < 15; step++) {
        bt_tensor *idx = tokens(step % 3), *targets = tokens(step % 3 + 1);
        optim_zero_grad(of);
        optim_zero_grad(ot);
        bt_runtime()->dropout_rng = bt_rng_make(500 + (uint64_t)step);
        bt_tensor *loss_full = model_forward(full, idx, targets, NULL);
        ck_assert_msg(loss_full && bt_backward(loss_full) == BT_OK, "%s", bt_last_error());
        bt_runtime()->dropout_rng = bt_rng_make(500 + (uint64_t)step);
        bt_tensor *loss_tp = model_forward(tp, idx, targets, NULL);
        ck_assert_msg(loss_tp && bt_backward(loss_tp) == BT_OK, "%s", bt_last_error());
        char what[32];
        snprintf(what, sizeof what, "loss at step %d", step);
        double lf = bt_item(loss_full), lt = bt_item(loss_tp);
        assert_rel(what, lt, lf, 1e-4);
        /* replicated parameters' gradients are the same everywhere (summed under SP) */
        for (int64_t i = 0; i < pt.count; i++)
            if (bt_same_shape(pt.tensors[i], pf.tensors[i]))
                assert_same_on_every_rank(pt.names[i], pt.tensors[i]->grad);
        ck_assert(optim_step(of, 3e-3) == BT_OK);
        ck_assert(optim_step(ot, 3e-3) == BT_OK);
        bt_step_end();
        if (step == 0) first = lf;
        last = lf;
    }
    ck_assert_msg(last < first - 0.1, "the loss did not fall: %.6f -> %.6f", first, last);
    /* and the weight matrices stayed slices of the single-rank ones, to 1e-3 of their scale:
     * AdamW divides by sqrt(v), so a gradient element near zero turns its rounding differences
     * between the layouts into updates of up to lr. Not the biases: the key bias's gradient is
     * zero up to rounding (softmax is shift-invariant), its updates are that noise. */
    for (int64_t i = 0; i < pf.count; i++)
        if (pf.tensors[i]->ndim == 2)
            assert_slice_close(pf.names[i], pt.tensors[i], pf.tensors[i], 1e-3);
    optim_free(of);
    optim_free(ot);
    nn_param_list_free(&pf);
    nn_param_list_free(&pt);
    model_free(full);
    model_free(tp);
}

MPI_TEST(test_adamw_steps) {
    check_adamw_steps(false, 0.0);
}

MPI_TEST(test_adamw_steps_dropout) {
    check_adamw_steps(false, 0.1);
}

MPI_TEST(test_sequence_parallel_adamw_steps) {
    check_adamw_steps(true, 0.0);
}

MPI_TEST(test_sequence_parallel_adamw_steps_dropout) {
    check_adamw_steps(true, 0.1);
}

/* ---- generation: the cached forward gathers the vocabulary slices ---- */

MPI_TEST(test_cached_forward) {
    struct model_config cf = tiny_gpt(true, true, NULL), ct = tiny_gpt(true, true, comm_world());
    struct model *full = create_ok(&cf, 9), *tp = create_ok(&ct, 9);
    struct model_cache *kf = model_cache_create(full, B), *kt = model_cache_create(tp, B);
    ck_assert_msg(kf && kt, "model_cache_create: %s", bt_last_error());
    /* a prefill of 10 positions, then 3 and 3 more */
    const int64_t starts[] = {0, 10, 13}, counts[] = {10, 3, 3};
    for (int k = 0; k < 3; k++) {
        bt_tensor *part = tokens_at(2, starts[k], counts[k]);
        bt_tensor *lf = model_forward_cached(full, kf, part);
        bt_tensor *lt = model_forward_cached(tp, kt, part);
        ck_assert_msg(lf && lt, "model_forward_cached: %s", bt_last_error());
        ck_assert_int_eq(lt->shape[2], V);
        assert_close("cached logits", lt, lf, 1e-5);
        bt_step_end();
    }
    ck_assert_int_eq(model_cache_len(kt), T);
    model_cache_free(kf);
    model_cache_free(kt);
    model_free(full);
    model_free(tp);
}

/* ---- config errors ---- */

static void assert_create_fails(const struct model_config *cfg, const char *want) {
    struct model *m = model_create(cfg, 1);
    ck_assert_msg(m == NULL, "model_create accepted a bad config (rank %d)", tp_rank());
    ck_assert_str_eq(bt_last_error(), want);
    bt_error_clear();
}

MPI_TEST(test_config_errors) {
    int P = tp_size();
    struct model_config c = tiny_gpt(true, true, comm_world());
    c.n_head = c.n_kv_head = 3; /* C = 30 keeps n_embd divisible by n_head */
    c.n_embd = 30;
    if (P == 1) { /* a group of one splits nothing */
        model_free(create_ok(&c, 1));
        return;
    }
    char want[160];
    if (P % 3 != 0) {
        snprintf(want, sizeof want, "model.n_head=3 is not divisible by parallel.tp=%d", P);
        assert_create_fails(&c, want);
    }
    c = tiny_gpt(true, true, comm_world());
    c.vocab_size = 4 * P + 1;
    snprintf(want, sizeof want, "model.vocab_size=%d is not divisible by parallel.tp=%d", 4 * P + 1,
             P);
    assert_create_fails(&c, want);
    c = tiny_gpt(true, true, comm_world());
    c.ffn_hidden = 4 * P + 1;
    snprintf(want, sizeof want, "model.ffn_hidden=%d is not divisible by parallel.tp=%d", 4 * P + 1,
             P);
    assert_create_fails(&c, want);
    if (P > 1) { /* SP splits the sequence: T must divide; generation needs the model without */
        c = tiny_gpt(true, true, comm_world());
        c.sequence_parallel = true;
        struct model *m = create_ok(&c, 3);
        ck_assert_ptr_null(model_forward(m, tokens_at(0, 0, 2 * P + 1), NULL, NULL));
        snprintf(want, sizeof want,
                 "has sequence length %d, not divisible by parallel.tp=%d (parallel.sequence_"
                 "parallel splits the sequence across the tp ranks)",
                 2 * P + 1, P);
        ck_assert_error_contains(want);
        struct model_cache *cache = model_cache_create(m, B);
        ck_assert_ptr_nonnull(cache);
        ck_assert_ptr_null(model_forward_cached(m, cache, tokens_at(0, 0, 4)));
        ck_assert_error_contains("parallel.sequence_parallel does not support the cached forward");
        bt_step_end();
        model_cache_free(cache);
        model_free(m);
    }
}

static Suite *gpt_tp_suite(void) {
    Suite *s = suite_create("gpt_tp");
    bt_suite_add(s, test_loss_and_gradients);
    bt_suite_add(s, test_sequence_parallel_gradients);
    bt_suite_add(s, test_adamw_steps);
    bt_suite_add(s, test_adamw_steps_dropout);
    bt_suite_add(s, test_sequence_parallel_adamw_steps);
    bt_suite_add(s, test_sequence_parallel_adamw_steps_dropout);
    bt_suite_add(s, test_cached_forward);
    bt_suite_add(s, test_config_errors);
    return s;
}

MPI_TEST_MAIN(gpt_tp_suite)
