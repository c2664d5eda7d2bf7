/* Tensor parallelism inside the LLaMA model (models/llama.c with model_config.tp_group): on every
 * rank the single-rank model (tp_group NULL) and the tensor-parallel one (tp_group = the world)
 * are built from the same config and seed and run on the same batch; their losses, logits and
 * this rank's slice of every parameter gradient must match, and so must the losses of 15 AdamW
 * steps, with grouped-query heads, tied and untied, with and without sequence parallelism.
 * Runs alone (a group of one: the plain model) and under mpirun with 2 and 4 ranks
 * (tests/llama_tp_tests.cmake). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "comm/comm.h"
#include "core/optim.h"
#include "core/runtime.h"
#include "models/model.h"
#include "tests/gradcheck.h"
#include "tests/mpi_test.h"

/* V, F and T divisible by tp = 1, 2 and 4 (T for sequence parallelism) */
enum { V = 64, BLOCK = 16, C = 32, F = 96, B = 2, T = 16 };

static int tp_size(void) {
    return comm_size(comm_world());
}

static int tp_rank(void) {
    return comm_rank(comm_world());
}

/* The head layouts every test runs: grouped-query 4/2 (two query heads per kv head; kv heads
 * divisible by tp only up to 2) and 8/4 (tp 4 holds one kv head and two query heads per rank). */
struct heads {
    int64_t n_head, n_kv_head;
};
static const struct heads head_layouts[] = {{4, 2}, {8, 4}};
enum { N_LAYOUTS = sizeof(head_layouts) / sizeof(head_layouts[0]) };

static bool layout_fits(struct heads h) {
    return h.n_kv_head % tp_size() == 0;
}

struct variant {
    struct heads heads;
    bool tied, sequence_parallel;
    double dropout;
};

static struct model_config tiny_llama(struct variant v, struct comm *tp_group) {
    return (struct model_config){.arch = MODEL_LLAMA,
                                 .vocab_size = V,
                                 .block_size = BLOCK,
                                 .n_layer = 2,
                                 .n_head = v.heads.n_head,
                                 .n_kv_head = v.heads.n_kv_head,
                                 .n_embd = C,
                                 .ffn_hidden = F,
                                 .dropout = v.dropout,
                                 .norm_eps = 1e-5,
                                 .rope_theta = 10000.0,
                                 .tie_embeddings = v.tied,
                                 .tp_group = tp_group,
                                 .sequence_parallel = v.sequence_parallel};
}

static const char *describe(struct variant v, char *buf, size_t n) {
    snprintf(buf, n, "n_head %lld n_kv_head %lld, %s, %s, dropout %g", (long long)v.heads.n_head,
             (long long)v.heads.n_kv_head, v.tied ? "tied" : "untied",
             v.sequence_parallel ? "sequence parallel" : "no sequence parallel", v.dropout);
    return buf;
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

static double max_abs(const bt_tensor *t) {
    double scale = 0.0;
    for (int64_t i = 0, n = bt_numel(t); i < n; i++)
        scale = fmax(scale, fabs(bt_get(t, i)));
    return scale;
}

/* got == want element by element (logical order), to `tol` times `scale` */
static void assert_close_scaled(const char *what, const bt_tensor *got, const bt_tensor *want,
                                double tol, double scale) {
    char a[96], b[96];
    ck_assert_msg(got && want, "%s: missing tensor on rank %d", what, tp_rank());
    ck_assert_msg(bt_same_shape(got, want), "%s: shape %s, expected %s (rank %d of %d)", what,
                  bt_shape_str(got, a, sizeof a), bt_shape_str(want, b, sizeof b), tp_rank(),
                  tp_size());
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

/* Compares this rank's tensor `got` of parameter `name` with the full model's `full`, to `tol`
 * times full's largest element: the same shape means replicated (the whole tensor); otherwise got
 * is rank r's block of P along the dim that differs (llama has no fused blocks: q, k and v are
 * separate layers, each split by whole heads). */
static void assert_slice_close(const char *name, bt_tensor *got, bt_tensor *full, double tol) {
    int P = tp_size(), r = tp_rank();
    ck_assert_int_eq(got->ndim, full->ndim);
    int dim = -1;
    for (int d = 0; d < got->ndim; d++)
        if (got->shape[d] != full->shape[d]) {
            ck_assert_msg(dim < 0 && got->shape[d] * P == full->shape[d],
                          "%s: shape does not split by tp=%d", name, P);
            dim = d;
        }
    double scale = max_abs(full);
    if (dim < 0) {
        assert_close_scaled(name, got, full, tol, scale);
        return;
    }
    int64_t local = got->shape[dim];
    assert_close_scaled(name, got, slice(full, dim, r * local, local), tol, scale);
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

/* a replicated parameter's gradient is bit-identical on every rank of the group (without SP the
 * ranks compute it from the same replicated values; with SP it comes out of one all-reduce) */
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

static void check_one_step(struct variant v) {
    char what[160];
    describe(v, what, sizeof what);
    struct model_config cf = tiny_llama(v, NULL), ct = tiny_llama(v, comm_world());
    struct model *full = create_ok(&cf, 1234), *tp = create_ok(&ct, 1234);
    struct nn_param_list pf, pt;
    params_of(full, tp, &pf, &pt);
    /* the same initial weights: this rank's slices of the single-rank ones */
    for (int64_t i = 0; i < pf.count; i++)
        assert_slice_close(pf.names[i], pt.tensors[i], pf.tensors[i], 0.0);

    bt_tensor *idx = tokens(0), *targets = tokens(5);
    bt_tensor *logits_full, *logits_tp;
    bt_tensor *loss_full = model_forward(full, idx, targets, &logits_full);
    ck_assert_msg(loss_full != NULL, "%s: %s", what, bt_last_error());
    ck_assert(bt_backward(loss_full) == BT_OK);
    bt_tensor *loss_tp = model_forward(tp, idx, targets, &logits_tp);
    ck_assert_msg(loss_tp != NULL, "%s, rank %d: %s", what, tp_rank(), bt_last_error());
    ck_assert(bt_backward(loss_tp) == BT_OK);

    double lf = bt_item(loss_full), lt = bt_item(loss_tp);
    if (tp_size() == 1) ck_assert(lf == lt); /* the same model, the same ops */
    assert_rel(what, lt, lf, 1e-5);
    /* logits (B, T, V/P): this rank's vocabulary slice, of the whole sequence even under SP */
    assert_slice_close("logits", logits_tp, logits_full, 1e-5);
    for (int64_t i = 0; i < pf.count; i++) {
        bt_tensor *gf = pf.tensors[i]->grad, *gt = pt.tensors[i]->grad;
        ck_assert_msg(gf && gt, "%s has no gradient (%s, rank %d)", pf.names[i], what, tp_rank());
        assert_slice_close(pf.names[i], gt, gf, 1e-5);
        if (bt_same_shape(gt, gf)) assert_same_on_every_rank(pf.names[i], gt);
    }
    bt_step_end();
    nn_param_list_free(&pf);
    nn_param_list_free(&pt);
    model_free(full);
    model_free(tp);
}

/* every head layout that divides by tp, tied (tp_vocab_embedding_attend) and untied
 * (column-parallel lm_head), without and with sequence parallelism */
MPI_TEST(test_loss_and_gradients) {
    for (int h = 0; h < N_LAYOUTS; h++) {
        if (!layout_fits(head_layouts[h])) continue;
        for (int tied = 0; tied < 2; tied++)
            for (int sp = 0; sp < 2; sp++)
                check_one_step((struct variant){head_layouts[h], tied, sp, 0.0});
    }
}

/* ---- training: 15 AdamW steps on each model's own parameters ---- */

/* With dropout each forward reseeds the dropout rng the same way, so both models draw the same
 * masks: without SP every rank draws the whole (B, T, C) masks, with SP model_dropout draws them
 * whole and keeps this rank's slice. */
static void check_adamw_steps(struct variant v) {
    char what[160], step_what[200];
    describe(v, what, sizeof what);
    struct model_config cf = tiny_llama(v, NULL), ct = tiny_llama(v, comm_world());
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
        bt_manual_seed(1000 + (uint64_t)step);
        bt_tensor *loss_full = model_forward(full, idx, targets, NULL);
        ck_assert_msg(loss_full && bt_backward(loss_full) == BT_OK, "%s", bt_last_error());
        bt_manual_seed(1000 + (uint64_t)step);
        bt_tensor *loss_tp = model_forward(tp, idx, targets, NULL);
        ck_assert_msg(loss_tp && bt_backward(loss_tp) == BT_OK, "%s", bt_last_error());
        snprintf(step_what, sizeof step_what, "loss at step %d (%s)", step, what);
        double lf = bt_item(loss_full), lt = bt_item(loss_tp);
        assert_rel(step_what, lt, lf, 1e-4);
        /* the replicated parameters must stay replicated: their gradients agree bit for bit */
        for (int64_t i = 0; i < pt.count; i++)
            if (bt_same_shape(pt.tensors[i], pf.tensors[i]))
                assert_same_on_every_rank(pt.names[i], pt.tensors[i]->grad);
        ck_assert(optim_step(of, 3e-3) == BT_OK);
        ck_assert(optim_step(ot, 3e-3) == BT_OK);
        bt_step_end();
        if (step == 0) first = lf;
        last = lf;
    }
    ck_assert_msg(last < first - 0.1, "%s: the loss did not fall: %.6f -> %.6f", what, first, last);
    /* and the weights stayed slices of the single-rank ones, to 1e-3 of their scale (AdamW
     * divides by sqrt(v), so a gradient element near zero turns rounding differences between the
     * layouts into updates of up to lr) */
    for (int64_t i = 0; i < pf.count; i++)
        assert_slice_close(pf.names[i], pt.tensors[i], pf.tensors[i], 1e-3);
    optim_free(of);
    optim_free(ot);
    nn_param_list_free(&pf);
    nn_param_list_free(&pt);
    model_free(full);
    model_free(tp);
}

/* the largest layout that divides by tp: untied without SP, tied with SP */
MPI_TEST(test_adamw_steps) {
    struct heads h = layout_fits(head_layouts[0]) ? head_layouts[0] : head_layouts[1];
    check_adamw_steps((struct variant){h, false, false, 0.0});
    check_adamw_steps((struct variant){h, true, true, 0.0});
}

/* dropout 0.1 on the embeddings, the attention and the MLP outputs, without and with SP */
MPI_TEST(test_adamw_steps_dropout) {
    struct heads h = layout_fits(head_layouts[0]) ? head_layouts[0] : head_layouts[1];
    check_adamw_steps((struct variant){h, false, false, 0.1});
    check_adamw_steps((struct variant){h, false, true, 0.1});
}

/* ---- generation: the cached forward gathers the vocabulary slices ---- */

MPI_TEST(test_cached_forward) {
    for (int h = 0; h < N_LAYOUTS; h++) {
        if (!layout_fits(head_layouts[h])) continue;
        struct variant v = {head_layouts[h], false, false, 0.0};
        struct model_config cf = tiny_llama(v, NULL), ct = tiny_llama(v, comm_world());
        struct model *full = create_ok(&cf, 9), *tp = create_ok(&ct, 9);
        struct model_cache *kf = model_cache_create(full, B), *kt = model_cache_create(tp, B);
        ck_assert_msg(kf && kt, "model_cache_create: %s", bt_last_error());
        /* a prefill of 10 positions, then 3 and 3 more: RoPE offsets 10 and 13 */
        const int64_t starts[] = {0, 10, 13}, counts[] = {10, 3, 3};
        for (int k = 0; k < 3; k++) {
            bt_tensor *part = tokens_at(2, starts[k], counts[k]);
            bt_tensor *lf = model_forward_cached(full, kf, part);
            bt_tensor *lt = model_forward_cached(tp, kt, part);
            ck_assert_msg(lf && lt, "model_forward_cached: %s", bt_last_error());
            ck_assert_int_eq(lt->shape[2], V);
            assert_close_scaled("cached logits", lt, lf, 1e-5, max_abs(lf));
            bt_step_end();
        }
        ck_assert_int_eq(model_cache_len(kt), T);
        /* and the whole sequence in one forward gives the same last rows */
        bt_tensor *all;
        model_forward(tp, tokens_at(2, 0, T), NULL, &all);
        ck_assert_msg(all != NULL, "model_forward: %s", bt_last_error());
        model_cache_reset(kt);
        bt_tensor *lt = model_forward_cached(tp, kt, tokens_at(2, 0, T));
        ck_assert_msg(lt != NULL, "model_forward_cached: %s", bt_last_error());
        int64_t local = all->shape[2];
        assert_close_scaled("cached vs full logits", all, slice(lt, 2, tp_rank() * local, local),
                            1e-5, max_abs(lt));
        bt_step_end();
        model_cache_free(kf);
        model_cache_free(kt);
        model_free(full);
        model_free(tp);
    }
}

/* under SP the cached forward is refused (with a group of one there is no SP: it runs) */
MPI_TEST(test_cached_forward_sequence_parallel) {
    struct heads h = layout_fits(head_layouts[0]) ? head_layouts[0] : head_layouts[1];
    struct variant v = {h, false, true, 0.0};
    struct model_config ct = tiny_llama(v, comm_world());
    struct model *tp = create_ok(&ct, 9);
    struct model_cache *kt = model_cache_create(tp, B);
    ck_assert_msg(kt != NULL, "model_cache_create: %s", bt_last_error());
    bt_tensor *lt = model_forward_cached(tp, kt, tokens_at(2, 0, 4));
    if (tp_size() == 1) {
        ck_assert_msg(lt != NULL, "model_forward_cached: %s", bt_last_error());
    } else {
        ck_assert(lt == NULL);
        ck_assert_str_eq(bt_last_error(),
                         "llama: parallel.sequence_parallel does not support the cached forward "
                         "(build the model without it to generate)");
        bt_error_clear();
        ck_assert_int_eq(model_cache_len(kt), 0);
    }
    bt_step_end();
    model_cache_free(kt);
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
    char want[200];
    /* kv heads fewer than the ranks (replicating them is not supported): 4 query heads, 1 kv */
    struct model_config c = tiny_llama((struct variant){{4, 1}, false, false, 0.0}, comm_world());
    if (P == 1) { /* a group of one splits nothing */
        model_free(create_ok(&c, 1));
        return;
    }
    snprintf(want, sizeof want, "model.n_kv_head=1 is not divisible by parallel.tp=%d", P);
    assert_create_fails(&c, want);
    /* 3 query heads (C = 30, hs = 10), as many kv heads: n_head is checked first */
    c = tiny_llama((struct variant){{3, 3}, false, false, 0.0}, comm_world());
    c.n_embd = 30;
    if (P % 3 != 0) {
        snprintf(want, sizeof want, "model.n_head=3 is not divisible by parallel.tp=%d", P);
        assert_create_fails(&c, want);
    }
    /* 6 query heads over 3 kv heads (C = 60): n_head divides by 2 but n_kv_head does not */
    c = tiny_llama((struct variant){{6, 3}, false, false, 0.0}, comm_world());
    c.n_embd = 60;
    if (P == 2) assert_create_fails(&c, "model.n_kv_head=3 is not divisible by parallel.tp=2");
    c = tiny_llama((struct variant){{8, 4}, false, false, 0.0}, comm_world());
    c.vocab_size = 4 * P + 1;
    snprintf(want, sizeof want, "model.vocab_size=%d is not divisible by parallel.tp=%d", 4 * P + 1,
             P);
    assert_create_fails(&c, want);
    c = tiny_llama((struct variant){{8, 4}, false, false, 0.0}, comm_world());
    c.ffn_hidden = 4 * P + 1;
    snprintf(want, sizeof want, "model.ffn_hidden=%d is not divisible by parallel.tp=%d", 4 * P + 1,
             P);
    assert_create_fails(&c, want);
    /* under SP the sequence must split over the ranks */
    c = tiny_llama((struct variant){{8, 4}, false, true, 0.0}, comm_world());
    struct model *m = create_ok(&c, 1);
    bt_tensor *idx = tokens_at(0, 0, P + 1);
    ck_assert(model_forward(m, idx, NULL, NULL) == NULL);
    snprintf(want, sizeof want,
             "llama: idx (2,%d) has sequence length %d, not divisible by parallel.tp=%d "
             "(parallel.sequence_parallel splits the sequence across the tp ranks)",
             P + 1, P + 1, P);
    ck_assert_str_eq(bt_last_error(), want);
    bt_error_clear();
    bt_step_end();
    model_free(m);
}

static Suite *llama_tp_suite(void) {
    Suite *s = suite_create("llama_tp");
    bt_suite_add(s, test_loss_and_gradients);
    bt_suite_add(s, test_adamw_steps);
    bt_suite_add(s, test_adamw_steps_dropout);
    bt_suite_add(s, test_cached_forward);
    bt_suite_add(s, test_cached_forward_sequence_parallel);
    bt_suite_add(s, test_config_errors);
    return s;
}

MPI_TEST_MAIN(llama_tp_suite)
