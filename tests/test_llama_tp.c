/* Tensor parallelism inside the LLaMA model (models/llama.c with model_config.tp_group): on every
 * rank the single-rank model (tp_group NULL) and the tensor-parallel one (tp_group = the world)
 * are built from the same config and seed and run on the same batch; their losses, logits and
 * this rank's slice of every parameter gradient must match, and so must the losses of 15 AdamW
 * steps, with grouped-query heads, tied and untied, with and without sequence parallelism.
 * Runs alone (a group of one: the plain model) and under mpirun with 2 and 4 ranks
 * (tests/llama_tp_tests.cmake). */
#include <stdio.h>

#include "comm/comm.h"
#include "core/optim.h"
#include "core/runtime.h"
#include "models/model.h"
#include "tests/gradcheck.h"
#include "tests/mpi_test.h"
#include "tests/twin_check.h"

/* V, F and T divisible by tp = 1, 2 and 4 (T for sequence parallelism) */
enum { V = 64, BLOCK = 16, C = 32, F = 96, B = 2, T = 16 };
/* llama fuses no parameters (q, k and v are separate layers, each split by whole heads): every
 * split tensor is a single block for twin_assert_slice_close */
enum { N_BLOCKS = 1 };

/* The head layouts every test runs: grouped-query 4/2 (two query heads per kv head; kv heads
 * divisible by tp only up to 2) and 8/4 (tp 4 holds one kv head and two query heads per rank). */
struct heads {
    int64_t n_head, n_kv_head;
};
static const struct heads head_layouts[] = {{4, 2}, {8, 4}};
enum { N_LAYOUTS = sizeof(head_layouts) / sizeof(head_layouts[0]) };

static bool layout_fits(struct heads h) {
    return h.n_kv_head % twin_world_size() == 0;
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

/* ---- one step: loss, logits and gradients ---- */

static void check_one_step(struct variant v) {
    char what[160];
    describe(v, what, sizeof what);
    struct model_config cf = tiny_llama(v, NULL), ct = tiny_llama(v, comm_world());
    struct model *full = twin_model_create(&cf, 1234), *tp = twin_model_create(&ct, 1234);
    struct nn_param_list pf, pt;
    twin_params_of(full, tp, &pf, &pt);
    /* the same initial weights: this rank's slices of the single-rank ones */
    for (int64_t i = 0; i < pf.count; i++)
        twin_assert_slice_close(pf.names[i], pt.tensors[i], pf.tensors[i], N_BLOCKS, 0.0);

    bt_tensor *idx = twin_tokens(B, T, V, 0), *targets = twin_tokens(B, T, V, 5);
    bt_tensor *logits_full, *logits_tp;
    bt_tensor *loss_full = model_forward(full, idx, targets, &logits_full);
    ck_assert_msg(loss_full != NULL, "%s: %s", what, bt_last_error());
    ck_assert(bt_backward(loss_full) == BT_OK);
    bt_tensor *loss_tp = model_forward(tp, idx, targets, &logits_tp);
    ck_assert_msg(loss_tp != NULL, "%s, rank %d: %s", what, twin_world_rank(), bt_last_error());
    ck_assert(bt_backward(loss_tp) == BT_OK);

    double lf = bt_item(loss_full), lt = bt_item(loss_tp);
    if (twin_world_size() == 1) ck_assert(lf == lt); /* the same model, the same ops */
    twin_assert_rel(what, lt, lf, 1e-5);
    /* logits (B, T, V/P): this rank's vocabulary slice, of the whole sequence even under SP */
    twin_assert_slice_close("logits", logits_tp, logits_full, N_BLOCKS, 1e-5);
    for (int64_t i = 0; i < pf.count; i++) {
        bt_tensor *gf = pf.tensors[i]->grad, *gt = pt.tensors[i]->grad;
        ck_assert_msg(gf && gt, "%s has no gradient (%s, rank %d)", pf.names[i], what,
                      twin_world_rank());
        twin_assert_slice_close(pf.names[i], gt, gf, N_BLOCKS, 1e-5);
        if (bt_same_shape(gt, gf)) twin_assert_same_on_every_rank(pf.names[i], gt);
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
    struct model *full = twin_model_create(&cf, 77), *tp = twin_model_create(&ct, 77);
    struct nn_param_list pf, pt;
    twin_params_of(full, tp, &pf, &pt);
    struct optim_config oc = optim_config_default(OPTIM_ADAMW);
    oc.weight_decay = 0.1;
    struct optim *of = optim_create(&oc, &pf), *ot = optim_create(&oc, &pt);
    ck_assert_msg(of && ot, "optim_create: %s", bt_last_error());
    double first = 0.0, last = 0.0;
    for (int step = 0; step < 15; step++) {
        bt_tensor *idx = twin_tokens(B, T, V, step % 3),
                  *targets = twin_tokens(B, T, V, step % 3 + 1);
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
        twin_assert_rel(step_what, lt, lf, 1e-4);
        /* the replicated parameters must stay replicated: their gradients agree bit for bit */
        for (int64_t i = 0; i < pt.count; i++)
            if (bt_same_shape(pt.tensors[i], pf.tensors[i]))
                twin_assert_same_on_every_rank(pt.names[i], pt.tensors[i]->grad);
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
        twin_assert_slice_close(pf.names[i], pt.tensors[i], pf.tensors[i], N_BLOCKS, 1e-3);
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
        struct model *full = twin_model_create(&cf, 9), *tp = twin_model_create(&ct, 9);
        struct model_cache *kf = model_cache_create(full, B), *kt = model_cache_create(tp, B);
        ck_assert_msg(kf && kt, "model_cache_create: %s", bt_last_error());
        /* a prefill of 10 positions, then 3 and 3 more: RoPE offsets 10 and 13 */
        const int64_t starts[] = {0, 10, 13}, counts[] = {10, 3, 3};
        for (int k = 0; k < 3; k++) {
            bt_tensor *part = twin_tokens_at(B, starts[k], counts[k], V, 2);
            bt_tensor *lf = model_forward_cached(full, kf, part);
            bt_tensor *lt = model_forward_cached(tp, kt, part);
            ck_assert_msg(lf && lt, "model_forward_cached: %s", bt_last_error());
            ck_assert_int_eq(lt->shape[2], V);
            twin_assert_close_scaled("cached logits", lt, lf, 1e-5, twin_max_abs(lf));
            bt_step_end();
        }
        ck_assert_int_eq(model_cache_len(kt), T);
        /* and the whole sequence in one forward gives the same last rows */
        bt_tensor *all;
        model_forward(tp, twin_tokens_at(B, 0, T, V, 2), NULL, &all);
        ck_assert_msg(all != NULL, "model_forward: %s", bt_last_error());
        model_cache_reset(kt);
        bt_tensor *lt = model_forward_cached(tp, kt, twin_tokens_at(B, 0, T, V, 2));
        ck_assert_msg(lt != NULL, "model_forward_cached: %s", bt_last_error());
        int64_t local = all->shape[2];
        twin_assert_close_scaled("cached vs full logits", all,
                                 twin_slice(lt, 2, twin_world_rank() * local, local), 1e-5,
                                 twin_max_abs(lt));
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
    struct model *tp = twin_model_create(&ct, 9);
    struct model_cache *kt = model_cache_create(tp, B);
    ck_assert_msg(kt != NULL, "model_cache_create: %s", bt_last_error());
    bt_tensor *lt = model_forward_cached(tp, kt, twin_tokens_at(B, 0, 4, V, 2));
    if (twin_world_size() == 1) {
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

MPI_TEST(test_config_errors) {
    int P = twin_world_size();
    char want[200];
    /* kv heads fewer than the ranks (replicating them is not supported): 4 query heads, 1 kv */
    struct model_config c = tiny_llama((struct variant){{4, 1}, false, false, 0.0}, comm_world());
    if (P == 1) { /* a group of one splits nothing */
        model_free(twin_model_create(&c, 1));
        return;
    }
    snprintf(want, sizeof want, "model.n_kv_head=1 is not divisible by parallel.tp=%d", P);
    twin_assert_create_fails(&c, want);
    /* 3 query heads (C = 30, hs = 10), as many kv heads: n_head is checked first */
    c = tiny_llama((struct variant){{3, 3}, false, false, 0.0}, comm_world());
    c.n_embd = 30;
    if (P % 3 != 0) {
        snprintf(want, sizeof want, "model.n_head=3 is not divisible by parallel.tp=%d", P);
        twin_assert_create_fails(&c, want);
    }
    /* 6 query heads over 3 kv heads (C = 60): n_head divides by 2 but n_kv_head does not */
    c = tiny_llama((struct variant){{6, 3}, false, false, 0.0}, comm_world());
    c.n_embd = 60;
    if (P == 2) twin_assert_create_fails(&c, "model.n_kv_head=3 is not divisible by parallel.tp=2");
    c = tiny_llama((struct variant){{8, 4}, false, false, 0.0}, comm_world());
    c.vocab_size = 4 * P + 1;
    snprintf(want, sizeof want, "model.vocab_size=%d is not divisible by parallel.tp=%d", 4 * P + 1,
             P);
    twin_assert_create_fails(&c, want);
    c = tiny_llama((struct variant){{8, 4}, false, false, 0.0}, comm_world());
    c.ffn_hidden = 4 * P + 1;
    snprintf(want, sizeof want, "model.ffn_hidden=%d is not divisible by parallel.tp=%d", 4 * P + 1,
             P);
    twin_assert_create_fails(&c, want);
    /* under SP the sequence must split over the ranks */
    c = tiny_llama((struct variant){{8, 4}, false, true, 0.0}, comm_world());
    struct model *m = twin_model_create(&c, 1);
    bt_tensor *idx = twin_tokens_at(B, 0, P + 1, V, 0);
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
