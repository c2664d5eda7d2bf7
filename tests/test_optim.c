/* Optimizers against torch.optim, gradient clipping, zero_grad, parameter groups, optimizer state,
 * LR schedules, and the messages of bad parameters.
 *
 * Reference values come from PyTorch 1.13 (/usr/bin/python3) running this script:
 *
 *   import torch
 *   W0 = [[0.5, -1.25, 2.0], [0.75, 0.1, -0.3]]; b0 = [0.2, -0.4, 0.6]
 *   GW = [[0.3, -0.2, 0.1], [-0.5, 0.25, 0.05]]; Gb = [0.15, -0.35, 0.45]
 *   def run(make, lrs):
 *       W = torch.tensor(W0, requires_grad=True); b = torch.tensor(b0, requires_grad=True)
 *       c = torch.tensor([1.0, 2.0], requires_grad=True)  # never gets a gradient
 *       opt = make(W, b, c)
 *       for t, lr in enumerate(lrs):
 *           for g in opt.param_groups: g['lr'] = lr
 *           W.grad = torch.tensor(GW) * (1.0 + 0.5 * t)
 *           b.grad = torch.tensor(Gb) * (1.0 + 0.5 * t)
 *           opt.step()
 *       print(W, b, c, opt.state[W])           # printed with "%.9g"
 *   sgd_lrs = [0.1, 0.05, 0.02]; adam_lrs = [1e-2, 5e-3, 2e-3]
 *   run(lambda W, b, c: torch.optim.SGD([W, b, c], lr=0.1, momentum=0.9), sgd_lrs)
 *   run(lambda W, b, c: torch.optim.SGD([W, b, c], lr=0.1, momentum=0.9, weight_decay=0.1),
 *       sgd_lrs)
 *   run(lambda W, b, c: torch.optim.AdamW([W, b, c], lr=1e-2, weight_decay=0.0), adam_lrs)
 *   run(lambda W, b, c: torch.optim.AdamW([{'params': [W], 'weight_decay': 0.1},
 *                                          {'params': [b, c], 'weight_decay': 0.0}],
 *                                         lr=1e-2, betas=(0.8, 0.95), eps=1e-6), adam_lrs)
 *   W.grad = torch.tensor(GW) * 3; b.grad = torch.tensor(Gb) * 3
 *   torch.nn.utils.clip_grad_norm_([W, b], 1.0)  # on fresh W, b
 */
#include <math.h>
#include <stdlib.h>

#include "core/arena.h"
#include "core/cpu/kernels.h"
#include "core/optim.h"
#include "core/schedule.h"
#include "tests/gradcheck.h"

static const float W0[] = {0.5f, -1.25f, 2.0f, 0.75f, 0.1f, -0.3f};
static const float B0[] = {0.2f, -0.4f, 0.6f};
static const float GW[] = {0.3f, -0.2f, 0.1f, -0.5f, 0.25f, 0.05f};
static const float GB[] = {0.15f, -0.35f, 0.45f};

/* The three parameters of the reference script: W (2,3), b (3), c (2) without gradient. */
struct fixture {
    bt_tensor *W, *b, *c;
    struct nn_param_list list;
};

static bt_tensor *persistent_from(int ndim, const int64_t *shape, const float *values) {
    bt_tensor *t = bt_tensor_new(ndim, shape, BT_F32, bt_cpu());
    for (int64_t i = 0; i < bt_numel(t); i++)
        bt_set(t, i, values[i]);
    return bt_requires_grad_(t, true);
}

static void set_grad(bt_tensor *p, const float *g, float scale) {
    if (!p->grad) p->grad = bt_tensor_new(p->ndim, p->shape, BT_F32, bt_cpu());
    for (int64_t i = 0; i < bt_numel(p); i++)
        bt_set(p->grad, i, g[i] * scale);
}

static char *fixture_names[] = {"W", "b", "c"};

static void fixture_make(struct fixture *f) {
    f->W = persistent_from(BT_SHAPE(2, 3), W0);
    f->b = persistent_from(BT_SHAPE(3), B0);
    f->c = persistent_from(BT_SHAPE(2), (const float[]){1.0f, 2.0f});
    f->list.count = 3;
    f->list.names = fixture_names;
    f->list.tensors = malloc(3 * sizeof(bt_tensor *));
    f->list.tensors[0] = f->W;
    f->list.tensors[1] = f->b;
    f->list.tensors[2] = f->c;
}

static void fixture_free(struct fixture *f) {
    bt_tensor_free(f->W);
    bt_tensor_free(f->b);
    bt_tensor_free(f->c);
    free(f->list.tensors);
}

/* Three steps with the script's gradients and learning rates. */
static void run_steps(struct optim *opt, struct fixture *f, const double *lrs) {
    for (int t = 0; t < 3; t++) {
        float scale = (float)(1.0 + 0.5 * t);
        set_grad(f->W, GW, scale);
        set_grad(f->b, GB, scale);
        ck_assert_int_eq(optim_step(opt, lrs[t]), BT_OK);
    }
}

static void assert_values(const char *what, const bt_tensor *t, const double *expect, double tol) {
    for (int64_t i = 0; i < bt_numel(t); i++)
        ck_assert_msg(fabs(bt_get(t, i) - expect[i]) <= tol * (1.0 + fabs(expect[i])),
                      "%s[%lld]: got %.9g, PyTorch %.9g", what, (long long)i, bt_get(t, i),
                      expect[i]);
}

static const double sgd_lrs[] = {0.1, 0.05, 0.02}, adam_lrs[] = {1e-2, 5e-3, 2e-3};

START_TEST(test_sgd_momentum_matches_torch) {
    struct fixture f;
    fixture_make(&f);
    struct optim_config cfg = optim_config_default(OPTIM_SGD);
    cfg.momentum = 0.9;
    struct optim *opt = optim_create(&cfg, &f.list);
    ck_assert_ptr_nonnull(opt);
    run_steps(opt, &f, sgd_lrs);
    assert_values("W", f.W,
                  (const double[]){0.409039974, -1.18936002, 1.96968007, 0.901600003, 0.0242000036,
                                   -0.315160006},
                  1e-6);
    assert_values("b", f.b, (const double[]){0.15451999, -0.293880016, 0.463559985}, 1e-6);
    assert_values("c", f.c, (const double[]){1, 2}, 0);
    assert_values("W.momentum_buffer", optim_state_by_name(opt, "W", "momentum_buffer"),
                  (const double[]){1.24800003, -0.832000017, 0.416000009, -2.07999992, 1.03999996,
                                   0.208000004},
                  1e-6);
    ck_assert_int_eq(optim_step_count(opt), 3);
    optim_free(opt);
    fixture_free(&f);
}
END_TEST

START_TEST(test_sgd_weight_decay_matches_torch) {
    struct fixture f;
    fixture_make(&f);
    struct optim_config cfg = optim_config_default(OPTIM_SGD);
    cfg.momentum = 0.9;
    cfg.weight_decay = 0.1;
    cfg.decay_rule = OPTIM_DECAY_ALL; /* one torch param group: every parameter decays */
    struct optim *opt = optim_create(&cfg, &f.list);
    ck_assert_ptr_nonnull(opt);
    run_steps(opt, &f, sgd_lrs);
    assert_values("W", f.W,
                  (const double[]){0.396969169, -1.15856743, 1.92016566, 0.882430673, 0.0219984408,
                                   -0.307660133},
                  1e-6);
    assert_values("b", f.b, (const double[]){0.149725229, -0.284346402, 0.449175715}, 1e-6);
    assert_values("c", f.c, (const double[]){1, 2}, 0);
    assert_values(
        "W.momentum_buffer", optim_state_by_name(opt, "W", "momentum_buffer"),
        (const double[]){1.37279248, -1.16100383, 0.949214995, -1.8634088, 1.05907798, 0.126006007},
        1e-6);
    optim_free(opt);
    fixture_free(&f);
}
END_TEST

START_TEST(test_adamw_matches_torch) {
    struct fixture f;
    fixture_make(&f);
    struct optim_config cfg = optim_config_default(OPTIM_ADAMW);
    cfg.weight_decay = 0.0;
    struct optim *opt = optim_create(&cfg, &f.list);
    ck_assert_ptr_nonnull(opt);
    run_steps(opt, &f, adam_lrs);
    assert_values("W", f.W,
                  (const double[]){0.483071476, -1.23307157, 1.98307157, 0.766928554, 0.0830714777,
                                   -0.316928536},
                  1e-6);
    assert_values("b", f.b, (const double[]){0.183071464, -0.383071482, 0.58307147}, 1e-6);
    assert_values("c", f.c, (const double[]){1, 2}, 0);
    assert_values("W.exp_avg", optim_state_by_name(opt, "W", "exp_avg"),
                  (const double[]){0.124800004, -0.0832000002, 0.0416000001, -0.208000004,
                                   0.104000002, 0.0208000001},
                  1e-6);
    assert_values("W.exp_avg_sq", optim_state_by_name(opt, "W", "exp_avg_sq"),
                  (const double[]){0.000652117655, 0.000289830059, 7.24575148e-05, 0.00181143777,
                                   0.000452859444, 1.81143787e-05},
                  1e-6);
    ck_assert_int_eq((int)bt_item(optim_state_by_name(opt, "W", "step")), 3);
    ck_assert_int_eq((int)bt_item(optim_state_by_name(opt, "c", "step")), 0); /* no grad: skipped */
    optim_free(opt);
    fixture_free(&f);
}
END_TEST

START_TEST(test_adamw_decay_matrices_only_matches_torch) {
    struct fixture f;
    fixture_make(&f);
    struct optim_config cfg = optim_config_default(OPTIM_ADAMW);
    cfg.beta1 = 0.8;
    cfg.beta2 = 0.95;
    cfg.eps = 1e-6;
    cfg.weight_decay = 0.1; /* default decay_rule: only W (2-D) decays */
    struct optim *opt = optim_create(&cfg, &f.list);
    ck_assert_ptr_nonnull(opt);
    ck_assert_int_eq(optim_param_group(opt, "W"), 0);
    ck_assert_int_eq(optim_param_group(opt, "b"), 1);
    ck_assert_int_eq(optim_param_group(opt, "c"), 1);
    ck_assert_str_eq(optim_group_name(opt, 1), "no_decay");
    ck_assert_double_eq(optim_group_weight_decay(opt, 0), 0.1);
    ck_assert_double_eq(optim_group_weight_decay(opt, 1), 0.0);
    run_steps(opt, &f, adam_lrs);
    assert_values("W", f.W,
                  (const double[]){0.482167631, -1.23089302, 1.97961891, 0.765708447, 0.0828472748,
                                   -0.316472828},
                  1e-6);
    assert_values("b", f.b, (const double[]){0.183009237, -0.383009195, 0.583009183}, 1e-6);
    assert_values("W.exp_avg", optim_state_by_name(opt, "W", "exp_avg"),
                  (const double[]){0.230400026, -0.153600007, 0.0768000036, -0.384000003,
                                   0.192000002, 0.0384000018},
                  1e-6);
    assert_values("W.exp_avg_sq", optim_state_by_name(opt, "W", "exp_avg_sq"),
                  (const double[]){0.0316800028, 0.014080001, 0.00352000026, 0.0879999995,
                                   0.0219999999, 0.000880000065},
                  1e-6);
    optim_free(opt);
    fixture_free(&f);
}
END_TEST

START_TEST(test_param_groups_custom) {
    /* moving b into the decay group makes it decay too: after one step with a zero gradient
     * AdamW's update is only the decay p *= 1 - lr*wd (exp_avg stays 0) */
    struct fixture f;
    fixture_make(&f);
    struct optim_config cfg = optim_config_default(OPTIM_ADAMW);
    cfg.weight_decay = 0.5;
    struct optim *opt = optim_create(&cfg, &f.list);
    int strong = optim_add_group(opt, "strong", 2.0);
    ck_assert_int_eq(strong, 2);
    ck_assert_int_eq(optim_num_groups(opt), 3);
    ck_assert_int_eq(optim_set_param_group(opt, "b", 0), BT_OK);
    ck_assert_int_eq(optim_set_param_group(opt, "c", strong), BT_OK);
    set_grad(f.W, GW, 0.0f);
    set_grad(f.b, GB, 0.0f);
    set_grad(f.c, GB, 0.0f);
    ck_assert_int_eq(optim_step(opt, 0.1), BT_OK);
    for (int i = 0; i < 3; i++)
        ck_assert_float_eq_tol(bt_get(f.b, i), B0[i] * 0.95f, 1e-7);
    ck_assert_float_eq_tol(bt_get(f.c, 1), 2.0f * 0.8f, 1e-7);
    ck_assert_float_eq_tol(bt_get(f.W, 0), W0[0] * 0.95f, 1e-7);
    optim_free(opt);
    fixture_free(&f);
}
END_TEST

START_TEST(test_state_names_and_access) {
    struct fixture f;
    fixture_make(&f);
    struct optim_config cfg = optim_config_default(OPTIM_ADAMW);
    struct optim *opt = optim_create(&cfg, &f.list);
    const char *const *names;
    ck_assert_int_eq(optim_state_names(opt, &names), 3);
    ck_assert_str_eq(names[0], "exp_avg");
    ck_assert_str_eq(names[1], "exp_avg_sq");
    ck_assert_str_eq(names[2], "step");
    ck_assert_int_eq(optim_num_params(opt), 3);
    ck_assert_str_eq(optim_param_name(opt, 1), "b");
    ck_assert_ptr_eq(optim_param(opt, 1), f.b);
    bt_tensor *m = optim_state(opt, 0, "exp_avg");
    ck_assert(m->persistent && bt_same_shape(m, f.W));
    ck_assert_int_eq(optim_state(opt, 0, "step")->dtype, BT_I64);
    optim_set_step_count(opt, 41);
    ck_assert_int_eq(optim_step_count(opt), 41);
    ck_assert_ptr_null(optim_state(opt, 0, "momentum_buffer"));
    ck_assert_error_contains("adamw: parameter W has no state \"momentum_buffer\"");
    ck_assert_ptr_null(optim_state_by_name(opt, "nope", "exp_avg"));
    ck_assert_error_contains("adamw: no parameter named \"nope\"");
    ck_assert_ptr_null(optim_state(opt, 7, "exp_avg"));
    ck_assert_error_contains("adamw: parameter index 7 out of range (3 parameters)");
    optim_free(opt);

    cfg = optim_config_default(OPTIM_SGD); /* momentum 0: no state at all, like PyTorch */
    opt = optim_create(&cfg, &f.list);
    ck_assert_int_eq(optim_state_names(opt, &names), 0);
    optim_free(opt);
    cfg.momentum = 0.5;
    opt = optim_create(&cfg, &f.list);
    ck_assert_int_eq(optim_state_names(opt, &names), 1);
    ck_assert_str_eq(names[0], "momentum_buffer");
    optim_free(opt);
    fixture_free(&f);
}
END_TEST

START_TEST(test_zero_grad) {
    struct fixture f;
    fixture_make(&f);
    struct optim_config cfg = optim_config_default(OPTIM_SGD);
    struct optim *opt = optim_create(&cfg, &f.list);
    set_grad(f.W, GW, 1.0f);
    bt_tensor *buffer = f.W->grad;
    optim_zero_grad(opt);
    ck_assert_ptr_eq(f.W->grad, buffer); /* zeroed in place, not reallocated */
    for (int i = 0; i < 6; i++)
        ck_assert_float_eq(bt_get(f.W->grad, i), 0.0f);
    ck_assert_ptr_null(f.c->grad); /* a parameter without gradient keeps none */
    optim_free(opt);
    fixture_free(&f);
}
END_TEST

START_TEST(test_step_records_nothing_and_allocates_nothing) {
    /* a real backward fills the persistent gradients; the step leaves the tape and arena alone */
    struct fixture f;
    fixture_make(&f);
    struct optim_config cfg = optim_config_default(OPTIM_ADAMW);
    struct optim *opt = optim_create(&cfg, &f.list);
    bt_tensor *x = bt_full(BT_SHAPE(4, 3), 0.5, BT_F32, bt_cpu());
    bt_tensor *loss = bt_sum_all(bt_linear(x, f.W, NULL));
    ck_assert_int_eq(bt_backward(loss), BT_OK);
    ck_assert_ptr_nonnull(f.W->grad);
    ck_assert(f.W->grad->persistent);
    ck_assert_float_eq(bt_get(f.W->grad, 0), 2.0f); /* sum over 4 rows of 0.5 */
    struct bt_runtime *rt = bt_runtime();
    struct ag_node *tape = rt->tape;
    size_t used = bt_arena_stats(rt->step_arena).used;
    ck_assert_int_eq(optim_step(opt, 1e-3), BT_OK);
    ck_assert_ptr_eq(rt->tape, tape);
    ck_assert_uint_eq(bt_arena_stats(rt->step_arena).used, used);
    ck_assert(bt_is_grad_enabled());
    ck_assert(!f.W->grad_fn);
    ck_assert_float_ne(bt_get(f.W, 0), W0[0]);
    optim_free(opt);
    fixture_free(&f);
}
END_TEST

START_TEST(test_clip_grad_norm_matches_torch) {
    struct fixture f;
    fixture_make(&f);
    set_grad(f.W, GW, 3.0f);
    set_grad(f.b, GB, 3.0f);
    double norm = optim_clip_grad_norm(f.list.tensors, 3, 1.0); /* c has no grad: skipped */
    ck_assert_double_eq_tol(norm, 2.68747091, 1e-6);
    assert_values("W.grad", f.W->grad,
                  (const double[]){0.334887236, -0.223258168, 0.111629084, -0.558145404,
                                   0.279072702, 0.0558145419},
                  1e-6);
    assert_values("b.grad", f.b->grad, (const double[]){0.167443618, -0.390701741, 0.50233084},
                  1e-6);
    /* below max_norm: returned, gradients untouched */
    double again = optim_clip_grad_norm(f.list.tensors, 3, 5.0);
    ck_assert_double_eq_tol(again, 1.0, 1e-5);
    ck_assert_double_eq_tol(bt_get(f.W->grad, 0), 0.334887236, 1e-7);
    fixture_free(&f);
}
END_TEST

START_TEST(test_sum_squares_of_many_buffers) {
    /* the gradient norm's kernel: buffers of odd lengths, split over the threads at places that
     * cut buffers, a vector reduction in each share; against a serial double sum */
    static const int64_t ns[] = {3, 40000, 0, 17, 100001, 1};
    enum { NB = sizeof(ns) / sizeof(ns[0]) };
    float *xs[NB];
    double want = 0.0;
    for (int b = 0; b < NB; b++) {
        xs[b] = malloc((size_t)(ns[b] + 1) * sizeof(float));
        for (int64_t i = 0; i < ns[b]; i++) {
            xs[b][i] = bt_rng_uniform_at(50 + (uint64_t)b, (uint64_t)i) * 4.0f - 2.0f;
            want += (double)xs[b][i] * (double)xs[b][i];
        }
    }
    double got = bt_cpu_sum_squares((const float *const *)xs, ns, NB);
    ck_assert_msg(fabs(got - want) <= 1e-12 * want, "sum of squares %.17g, want %.17g", got, want);
    for (int b = 0; b < NB; b++)
        free(xs[b]);
}
END_TEST

START_TEST(test_bad_optimizer_parameters) {
    struct fixture f;
    fixture_make(&f);
    struct optim_config cfg = optim_config_default(OPTIM_ADAMW);
    cfg.beta1 = 1.0;
    ck_assert_ptr_null(optim_create(&cfg, &f.list));
    ck_assert_error_contains("adamw: beta1 must be in [0, 1), got 1");
    cfg = optim_config_default(OPTIM_ADAMW);
    cfg.beta2 = -0.1;
    ck_assert_ptr_null(optim_create(&cfg, &f.list));
    ck_assert_error_contains("adamw: beta2 must be in [0, 1), got -0.1");
    cfg = optim_config_default(OPTIM_ADAMW);
    cfg.eps = -1e-8;
    ck_assert_ptr_null(optim_create(&cfg, &f.list));
    ck_assert_error_contains("adamw: eps must be a non-negative number, got -1e-08");
    cfg = optim_config_default(OPTIM_ADAMW);
    cfg.weight_decay = -0.5;
    ck_assert_ptr_null(optim_create(&cfg, &f.list));
    ck_assert_error_contains("adamw: weight_decay must be a non-negative number, got -0.5");
    cfg = optim_config_default(OPTIM_SGD);
    cfg.momentum = -0.9;
    ck_assert_ptr_null(optim_create(&cfg, &f.list));
    ck_assert_error_contains("sgd: momentum must be a non-negative number, got -0.9");

    optim_kind kind;
    ck_assert(!optim_kind_parse("adam", &kind));
    ck_assert_error_contains("optimizer: unknown name \"adam\" (expected adamw or sgd)");
    ck_assert(optim_kind_parse("sgd", &kind) && kind == OPTIM_SGD);

    /* the same tensor twice, and a step tensor as a parameter */
    cfg = optim_config_default(OPTIM_ADAMW);
    bt_tensor *twice[] = {f.W, f.W};
    char *twice_names[] = {"a", "b"};
    struct nn_param_list dup = {.count = 2, .names = twice_names, .tensors = twice};
    ck_assert_ptr_null(optim_create(&cfg, &dup));
    ck_assert_error_contains("adamw: parameter b appears more than once");
    bt_tensor *step_tensor[] = {bt_zeros(BT_SHAPE(2), BT_F32, bt_cpu())};
    struct nn_param_list steps = {.count = 1, .tensors = step_tensor};
    ck_assert_ptr_null(optim_create(&cfg, &steps));
    ck_assert_error_contains("adamw: parameter 0 is a step tensor");

    struct optim *opt = optim_create(&cfg, &f.list);
    ck_assert_int_eq(optim_step(opt, -1.0), BT_ERR);
    ck_assert_error_contains("adamw: lr must be a non-negative number, got -1");
    ck_assert_int_eq(optim_step(opt, NAN), BT_ERR);
    ck_assert_error_contains("adamw: lr must be a non-negative number, got nan");
    f.W->grad = bt_tensor_new(BT_SHAPE(3, 2), BT_F32, bt_cpu());
    ck_assert_int_eq(optim_step(opt, 0.1), BT_ERR);
    ck_assert_error_contains(
        "adamw: gradient of W is float32 (3,2); expected contiguous float32 (2,3)");
    ck_assert_float_eq(bt_get(f.W, 0), W0[0]); /* nothing was updated */
    ck_assert_int_eq(optim_set_param_group(opt, "W", 5), BT_ERR);
    ck_assert_error_contains("adamw: group 5 does not exist (there are 2)");
    ck_assert_int_eq(optim_set_param_group(opt, "Z", 0), BT_ERR);
    ck_assert_error_contains("adamw: no parameter named \"Z\"");
    ck_assert_int_eq(optim_add_group(opt, "decay", 0.1), -1);
    ck_assert_error_contains("adamw: group decay already exists");
    ck_assert_int_eq(optim_add_group(opt, "neg", -1.0), -1);
    ck_assert_error_contains(
        "adamw: group neg: weight_decay must be a non-negative number, got -1");
    optim_free(opt);

    ck_assert_double_eq(optim_clip_grad_norm(f.list.tensors, 3, 0.0), -1.0);
    ck_assert_error_contains("clip_grad_norm: max_norm must be positive, got 0");
    fixture_free(&f);
}
END_TEST

/* ---- schedules: nanoGPT's get_lr, lr 6e-4, min_lr 6e-5, warmup 10, decay 100 ---- */

START_TEST(test_schedule_cosine) {
    struct sched s;
    ck_assert_int_eq(sched_init(&s, SCHED_COSINE, 6e-4, 10, 100, 6e-5), BT_OK);
    ck_assert_double_eq_tol(sched_lr(&s, 0), 6e-4 * 1 / 11, 1e-15);
    ck_assert_double_eq_tol(sched_lr(&s, 9), 6e-4 * 10 / 11, 1e-15);
    ck_assert_double_eq_tol(sched_lr(&s, 10), 6e-4, 1e-15);
    ck_assert_double_eq_tol(sched_lr(&s, 28), 6e-5 + 0.904508497187474 * 5.4e-4, 1e-15);
    ck_assert_double_eq_tol(sched_lr(&s, 55), 3.3e-4, 1e-15); /* halfway: the mean */
    ck_assert_double_eq_tol(sched_lr(&s, 99), 6e-5 + 0.5 * (1 + cos(M_PI * 89 / 90)) * 5.4e-4,
                            1e-15);
    ck_assert_double_eq_tol(sched_lr(&s, 100), 6e-5, 1e-15);
    ck_assert_double_eq_tol(sched_lr(&s, 5000), 6e-5, 1e-15);
    ck_assert_double_eq(sched_lr(&s, -3), sched_lr(&s, 0));
}
END_TEST

START_TEST(test_schedule_linear_and_constant) {
    struct sched s;
    ck_assert_int_eq(sched_init(&s, SCHED_LINEAR, 6e-4, 10, 100, 6e-5), BT_OK);
    ck_assert_double_eq_tol(sched_lr(&s, 0), 6e-4 / 11, 1e-15);
    ck_assert_double_eq_tol(sched_lr(&s, 9), 6e-4 * 10 / 11, 1e-15);
    ck_assert_double_eq_tol(sched_lr(&s, 10), 6e-4, 1e-15);
    ck_assert_double_eq_tol(sched_lr(&s, 28), 4.92e-4, 1e-15); /* 20% of the way down */
    ck_assert_double_eq_tol(sched_lr(&s, 55), 3.3e-4, 1e-15);
    ck_assert_double_eq_tol(sched_lr(&s, 100), 6e-5, 1e-15);
    ck_assert_double_eq_tol(sched_lr(&s, 101), 6e-5, 1e-15);

    ck_assert_int_eq(sched_init(&s, SCHED_CONSTANT, 1e-3, 4, 0, 0.0), BT_OK);
    ck_assert_double_eq_tol(sched_lr(&s, 0), 1e-3 / 5, 1e-15);
    ck_assert_double_eq_tol(sched_lr(&s, 3), 1e-3 * 4 / 5, 1e-15);
    ck_assert_double_eq_tol(sched_lr(&s, 4), 1e-3, 1e-15);
    ck_assert_double_eq_tol(sched_lr(&s, 1000000), 1e-3, 1e-15);

    /* no warmup, and warmup == decay (nothing to decay over) */
    ck_assert_int_eq(sched_init(&s, SCHED_COSINE, 1.0, 0, 4, 0.0), BT_OK);
    ck_assert_double_eq_tol(sched_lr(&s, 0), 1.0, 1e-15);
    ck_assert_double_eq_tol(sched_lr(&s, 2), 0.5, 1e-15);
    ck_assert_int_eq(sched_init(&s, SCHED_LINEAR, 1.0, 3, 3, 0.1), BT_OK);
    ck_assert_double_eq_tol(sched_lr(&s, 2), 0.75, 1e-15);
    ck_assert_double_eq_tol(sched_lr(&s, 3), 0.1, 1e-15);

    sched_kind kind;
    ck_assert(sched_kind_parse("cosine", &kind) && kind == SCHED_COSINE);
    ck_assert(!sched_kind_parse("step", &kind));
    ck_assert_error_contains(
        "schedule: unknown name \"step\" (expected constant, linear or cosine)");
}
END_TEST

START_TEST(test_schedule_bad_parameters) {
    struct sched s;
    ck_assert_int_eq(sched_init(&s, SCHED_COSINE, 6e-4, 200, 100, 6e-5), BT_ERR);
    ck_assert_error_contains(
        "schedule cosine: warmup_steps (200) is greater than decay_steps (100)");
    ck_assert_int_eq(sched_init(&s, SCHED_LINEAR, -0.1, 0, 100, 0.0), BT_ERR);
    ck_assert_error_contains("schedule linear: lr must be a non-negative number, got -0.1");
    ck_assert_int_eq(sched_init(&s, SCHED_COSINE, 1e-3, 0, 100, 0.01), BT_ERR);
    ck_assert_error_contains("schedule cosine: min_lr (0.01) is greater than lr (0.001)");
    ck_assert_int_eq(sched_init(&s, SCHED_CONSTANT, 1e-3, -1, 100, 0.0), BT_ERR);
    ck_assert_error_contains("schedule constant: warmup_steps must be non-negative, got -1");
    ck_assert_int_eq(sched_init(&s, SCHED_COSINE, 1e-3, 0, 100, -1e-4), BT_ERR);
    ck_assert_error_contains("schedule cosine: min_lr must be a non-negative number, got -0.0001");
}
END_TEST

static Suite *optim_suite(void) {
    Suite *s = suite_create("optim");
    bt_suite_add(s, test_sgd_momentum_matches_torch);
    bt_suite_add(s, test_sgd_weight_decay_matches_torch);
    bt_suite_add(s, test_adamw_matches_torch);
    bt_suite_add(s, test_adamw_decay_matrices_only_matches_torch);
    bt_suite_add(s, test_param_groups_custom);
    bt_suite_add(s, test_state_names_and_access);
    bt_suite_add(s, test_zero_grad);
    bt_suite_add(s, test_step_records_nothing_and_allocates_nothing);
    bt_suite_add(s, test_clip_grad_norm_matches_torch);
    bt_suite_add(s, test_sum_squares_of_many_buffers);
    bt_suite_add(s, test_bad_optimizer_parameters);
    bt_suite_add(s, test_schedule_cosine);
    bt_suite_add(s, test_schedule_linear_and_constant);
    bt_suite_add(s, test_schedule_bad_parameters);
    return s;
}

BT_TEST_MAIN(optim_suite)
