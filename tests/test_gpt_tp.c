/* Tensor parallelism inside the GPT model (models/gpt.c with model_config.tp_group): on every rank
 * the single-rank model (tp_group NULL) and the tensor-parallel one (tp_group = the world) are
 * built from the same config and seed and run on the same batch; their losses, logits and this
 * rank's slice of every parameter gradient must match, and so must the losses of 15 AdamW steps.
 * Runs alone (a group of one: the plain model) and under mpirun with 2 and 4 ranks
 * (tests/gpt_tp_tests.cmake). */
#include <stdio.h>
#include <string.h>

#include "comm/comm.h"
#include "core/optim.h"
#include "core/runtime.h"
#include "models/model.h"
#include "tests/gradcheck.h"
#include "tests/mpi_test.h"
#include "tests/twin_check.h"

/* every split size (NH, V, F) divisible by tp = 1, 2 and 4 */
enum { V = 64, BLOCK = 16, NH = 4, C = 32, F = 128, B = 2, T = 16 };

/* the tiny GPT with biases and tying as given (tp_group NULL: the single-rank twin) */
static struct model_config tiny_gpt(bool bias, bool tied, struct comm *tp_group) {
    return twin_tiny_gpt(V, BLOCK, NH, C, F, bias, tied, tp_group);
}

/* c_attn fuses q, k and v: each rank holds the r-th block of each (parallel/tp.h) */
static void assert_slice_close(const char *name, bt_tensor *got, bt_tensor *full, double tol) {
    twin_assert_slice_close(name, got, full, strstr(name, ".c_attn.") ? 3 : 1, tol);
}

/* ---- one step: loss, logits and gradients ---- */

static void check_one_step(bool bias, bool tied, bool sequence_parallel) {
    struct model_config cf = tiny_gpt(bias, tied, NULL), ct = tiny_gpt(bias, tied, comm_world());
    ct.sequence_parallel = sequence_parallel;
    struct model *full = twin_model_create(&cf, 1234), *tp = twin_model_create(&ct, 1234);
    struct nn_param_list pf, pt;
    twin_params_of(full, tp, &pf, &pt);
    /* the same initial weights: this rank's slices of the single-rank ones */
    for (int64_t i = 0; i < pf.count; i++)
        assert_slice_close(pf.names[i], pt.tensors[i], pf.tensors[i], 0.0);

    bt_tensor *idx = twin_tokens(B, T, V, 0), *targets = twin_tokens(B, T, V, 5);
    bt_tensor *logits_full, *logits_tp;
    bt_tensor *loss_full = model_forward(full, idx, targets, &logits_full);
    ck_assert_msg(loss_full != NULL, "%s", bt_last_error());
    ck_assert(bt_backward(loss_full) == BT_OK);
    bt_tensor *loss_tp = model_forward(tp, idx, targets, &logits_tp);
    ck_assert_msg(loss_tp != NULL, "rank %d: %s", twin_world_rank(), bt_last_error());
    ck_assert(bt_backward(loss_tp) == BT_OK);

    double lf = bt_item(loss_full), lt = bt_item(loss_tp);
    if (twin_world_size() == 1) ck_assert(lf == lt); /* the same model, the same ops */
    twin_assert_rel("loss", lt, lf, 1e-5);
    /* logits (B, T, V/P): this rank's vocabulary slice */
    assert_slice_close("logits", logits_tp, logits_full, 1e-5);
    for (int64_t i = 0; i < pf.count; i++) {
        bt_tensor *gf = pf.tensors[i]->grad, *gt = pt.tensors[i]->grad;
        ck_assert_msg(gf && gt, "%s has no gradient (rank %d)", pf.names[i], twin_world_rank());
        assert_slice_close(pf.names[i], gt, gf, 1e-5);
        if (bt_same_shape(gt, gf)) twin_assert_same_on_every_rank(pf.names[i], gt);
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
        bt_runtime()->dropout_rng = bt_rng_make(500 + (uint64_t)step);
        bt_tensor *loss_full = model_forward(full, idx, targets, NULL);
        ck_assert_msg(loss_full && bt_backward(loss_full) == BT_OK, "%s", bt_last_error());
        bt_runtime()->dropout_rng = bt_rng_make(500 + (uint64_t)step);
        bt_tensor *loss_tp = model_forward(tp, idx, targets, NULL);
        ck_assert_msg(loss_tp && bt_backward(loss_tp) == BT_OK, "%s", bt_last_error());
        char what[32];
        snprintf(what, sizeof what, "loss at step %d", step);
        double lf = bt_item(loss_full), lt = bt_item(loss_tp);
        twin_assert_rel(what, lt, lf, 1e-4);
        /* replicated parameters' gradients are the same everywhere (summed under SP) */
        for (int64_t i = 0; i < pt.count; i++)
            if (bt_same_shape(pt.tensors[i], pf.tensors[i]))
                twin_assert_same_on_every_rank(pt.names[i], pt.tensors[i]->grad);
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
    struct model *full = twin_model_create(&cf, 9), *tp = twin_model_create(&ct, 9);
    struct model_cache *kf = model_cache_create(full, B), *kt = model_cache_create(tp, B);
    ck_assert_msg(kf && kt, "model_cache_create: %s", bt_last_error());
    /* a prefill of 10 positions, then 3 and 3 more */
    const int64_t starts[] = {0, 10, 13}, counts[] = {10, 3, 3};
    for (int k = 0; k < 3; k++) {
        bt_tensor *part = twin_tokens_at(B, starts[k], counts[k], V, 2);
        bt_tensor *lf = model_forward_cached(full, kf, part);
        bt_tensor *lt = model_forward_cached(tp, kt, part);
        ck_assert_msg(lf && lt, "model_forward_cached: %s", bt_last_error());
        ck_assert_int_eq(lt->shape[2], V);
        twin_assert_close("cached logits", lt, lf, 1e-5);
        bt_step_end();
    }
    ck_assert_int_eq(model_cache_len(kt), T);
    model_cache_free(kf);
    model_cache_free(kt);
    model_free(full);
    model_free(tp);
}

/* ---- config errors ---- */

MPI_TEST(test_config_errors) {
    int P = twin_world_size();
    struct model_config c = tiny_gpt(true, true, comm_world());
    c.n_head = c.n_kv_head = 3; /* C = 30 keeps n_embd divisible by n_head */
    c.n_embd = 30;
    if (P == 1) { /* a group of one splits nothing */
        model_free(twin_model_create(&c, 1));
        return;
    }
    char want[160];
    if (P % 3 != 0) {
        snprintf(want, sizeof want, "model.n_head=3 is not divisible by parallel.tp=%d", P);
        twin_assert_create_fails(&c, want);
    }
    c = tiny_gpt(true, true, comm_world());
    c.vocab_size = 4 * P + 1;
    snprintf(want, sizeof want, "model.vocab_size=%d is not divisible by parallel.tp=%d", 4 * P + 1,
             P);
    twin_assert_create_fails(&c, want);
    c = tiny_gpt(true, true, comm_world());
    c.ffn_hidden = 4 * P + 1;
    snprintf(want, sizeof want, "model.ffn_hidden=%d is not divisible by parallel.tp=%d", 4 * P + 1,
             P);
    twin_assert_create_fails(&c, want);
    if (P > 1) { /* SP splits the sequence: T must divide; generation needs the model without */
        c = tiny_gpt(true, true, comm_world());
        c.sequence_parallel = true;
        struct model *m = twin_model_create(&c, 3);
        ck_assert_ptr_null(model_forward(m, twin_tokens_at(B, 0, 2 * P + 1, V, 0), NULL, NULL));
        snprintf(want, sizeof want,
                 "has sequence length %d, not divisible by parallel.tp=%d (parallel.sequence_"
                 "parallel splits the sequence across the tp ranks)",
                 2 * P + 1, P);
        ck_assert_error_contains(want);
        struct model_cache *cache = model_cache_create(m, B);
        ck_assert_ptr_nonnull(cache);
        ck_assert_ptr_null(model_forward_cached(m, cache, twin_tokens_at(B, 0, 4, V, 0)));
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
