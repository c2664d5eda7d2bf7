/* SGD and AdamW (torch.optim semantics, see optim.h), parameter groups, state access for
 * checkpoints, and global-norm gradient clipping. Updates are plain loops over float32 buffers on
 * the CPU, run with grad mode off. */
#include "core/optim.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/autograd.h"
#include "core/cpu/kernels.h"

enum { MAX_STATE = 3 };

struct optim_slot {
    char *name;
    bt_tensor *param; /* one reference held */
    int group;
    bt_tensor *state[MAX_STATE]; /* in the order of the kind's state names */
};

struct optim_group_info {
    char name[32];
    double weight_decay;
};

struct optim {
    struct optim_config cfg;
    int64_t n_params;
    struct optim_slot *slots;
    struct optim_group_info groups[OPTIM_MAX_GROUPS];
    int n_groups;
    int64_t step_count;
    struct bt_adamw_span *spans; /* AdamW: one per parameter, filled each step */
};

static const char *const adamw_state[] = {"exp_avg", "exp_avg_sq", "step"};
static const char *const sgd_state[] = {"momentum_buffer"};
enum { EXP_AVG = 0, EXP_AVG_SQ = 1, STEP = 2, MOMENTUM_BUFFER = 0 };

static const char *kind_name(optim_kind kind) {
    return kind == OPTIM_SGD ? "sgd" : "adamw";
}

struct optim_config optim_config_default(optim_kind kind) {
    if (kind == OPTIM_SGD) return (struct optim_config){.kind = OPTIM_SGD};
    return (struct optim_config){
        .kind = OPTIM_ADAMW, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.01};
}

bool optim_kind_parse(const char *name, optim_kind *out) {
    if (name && strcmp(name, "adamw") == 0) {
        *out = OPTIM_ADAMW;
        return true;
    }
    if (name && strcmp(name, "sgd") == 0) {
        *out = OPTIM_SGD;
        return true;
    }
    bt_error("optimizer: unknown name \"%s\" (expected adamw or sgd)", name ? name : "(null)");
    return false;
}

int optim_state_names(const struct optim *opt, const char *const **names) {
    if (opt->cfg.kind == OPTIM_ADAMW) {
        *names = adamw_state;
        return 3;
    }
    *names = sgd_state;
    return opt->cfg.momentum != 0.0 ? 1 : 0;
}

/* ---- creating ---- */

static bt_status check_config(const struct optim_config *cfg) {
    const char *name = kind_name(cfg->kind);
    if (cfg->kind != OPTIM_ADAMW && cfg->kind != OPTIM_SGD)
        return bt_error("optimizer: unknown kind %d", (int)cfg->kind);
    if (!(cfg->weight_decay >= 0.0) || !isfinite(cfg->weight_decay))
        return bt_error("%s: weight_decay must be a non-negative number, got %g", name,
                        cfg->weight_decay);
    if (cfg->decay_rule != OPTIM_DECAY_MATRICES && cfg->decay_rule != OPTIM_DECAY_ALL)
        return bt_error("%s: unknown decay_rule %d", name, (int)cfg->decay_rule);
    if (cfg->kind == OPTIM_SGD) {
        if (!(cfg->momentum >= 0.0) || !isfinite(cfg->momentum))
            return bt_error("sgd: momentum must be a non-negative number, got %g", cfg->momentum);
        return BT_OK;
    }
    if (!(cfg->beta1 >= 0.0 && cfg->beta1 < 1.0))
        return bt_error("adamw: beta1 must be in [0, 1), got %g", cfg->beta1);
    if (!(cfg->beta2 >= 0.0 && cfg->beta2 < 1.0))
        return bt_error("adamw: beta2 must be in [0, 1), got %g", cfg->beta2);
    if (!(cfg->eps >= 0.0) || !isfinite(cfg->eps))
        return bt_error("adamw: eps must be a non-negative number, got %g", cfg->eps);
    return BT_OK;
}

static bt_status check_param(const struct optim_config *cfg, const char *name, const bt_tensor *p) {
    const char *opt = kind_name(cfg->kind);
    char shape[96];
    if (!p) return bt_error("%s: parameter %s is NULL", opt, name);
    if (!p->persistent)
        return bt_error("%s: parameter %s is a step tensor; parameters must be persistent "
                        "(bt_tensor_new)",
                        opt, name);
    if (p->dtype != BT_F32)
        return bt_error("%s: parameter %s must be float32, got %s %s", opt, name,
                        bt_dtype_name(p->dtype), bt_shape_str(p, shape, sizeof shape));
    if (!bt_is_contiguous(p)) return bt_error("%s: parameter %s must be contiguous", opt, name);
    return BT_OK;
}

static bt_status make_slot(struct optim *opt, struct optim_slot *slot, const char *name,
                           bt_tensor *p) {
    slot->name = malloc(strlen(name) + 1);
    if (!slot->name) return bt_error("%s: out of memory", kind_name(opt->cfg.kind));
    strcpy(slot->name, name);
    slot->param = bt_tensor_retain(p);
    bool decays = opt->cfg.decay_rule == OPTIM_DECAY_ALL || p->ndim >= 2;
    slot->group = decays ? 0 : 1;
    const char *const *names;
    int n_state = optim_state_names(opt, &names);
    for (int k = 0; k < n_state; k++) {
        bool is_step = opt->cfg.kind == OPTIM_ADAMW && k == STEP;
        /* the step count is read and bumped by the host each step: it stays on the cpu */
        slot->state[k] = is_step ? bt_tensor_new(0, NULL, BT_I64, bt_cpu())
                                 : bt_tensor_new(p->ndim, p->shape, BT_F32, p->storage->device);
        if (!slot->state[k]) return BT_ERR;
    }
    return BT_OK;
}

struct optim *optim_create(const struct optim_config *cfg, const struct nn_param_list *params) {
    if (!cfg || !params) {
        bt_error("optimizer: config or parameter list is NULL");
        return NULL;
    }
    if (check_config(cfg) != BT_OK) return NULL;
    char fallback[32];
    for (int64_t i = 0; i < params->count; i++) {
        const char *name = params->names ? params->names[i] : NULL;
        if (!name) snprintf(fallback, sizeof fallback, "%lld", (long long)i);
        if (check_param(cfg, name ? name : fallback, params->tensors[i]) != BT_OK) return NULL;
        for (int64_t j = 0; j < i; j++)
            if (params->tensors[j] == params->tensors[i]) {
                bt_error("%s: parameter %s appears more than once", kind_name(cfg->kind),
                         name ? name : fallback);
                return NULL;
            }
    }
    size_t count = (size_t)(params->count ? params->count : 1);
    struct optim *opt = calloc(1, sizeof(*opt));
    struct optim_slot *slots = calloc(count, sizeof(*slots));
    struct bt_adamw_span *spans = calloc(count, sizeof(*spans));
    if (!opt || !slots || !spans) {
        free(opt);
        free(slots);
        free(spans);
        bt_error("%s: out of memory", kind_name(cfg->kind));
        return NULL;
    }
    opt->cfg = *cfg;
    opt->slots = slots;
    opt->spans = spans;
    opt->groups[0] = (struct optim_group_info){"decay", cfg->weight_decay};
    opt->groups[1] = (struct optim_group_info){"no_decay", 0.0};
    opt->n_groups = 2;
    for (int64_t i = 0; i < params->count; i++) {
        const char *name = params->names ? params->names[i] : NULL;
        if (!name) snprintf(fallback, sizeof fallback, "%lld", (long long)i);
        opt->n_params = i + 1; /* so optim_free releases a half-made slot */
        if (make_slot(opt, &slots[i], name ? name : fallback, params->tensors[i]) != BT_OK) {
            optim_free(opt);
            return NULL;
        }
    }
    return opt;
}

void optim_free(struct optim *opt) {
    if (!opt) return;
    for (int64_t i = 0; i < opt->n_params; i++) {
        struct optim_slot *s = &opt->slots[i];
        for (int k = 0; k < MAX_STATE; k++)
            bt_tensor_free(s->state[k]);
        bt_tensor_free(s->param);
        free(s->name);
    }
    free(opt->slots);
    free(opt->spans);
    free(opt);
}

/* ---- stepping ---- */

void optim_zero_grad(struct optim *opt) {
    for (int64_t i = 0; opt && i < opt->n_params; i++)
        bt_zero_grad(opt->slots[i].param);
}

/* AdamW's constants for one parameter at its step `step` (torch.optim.AdamW,
 * _single_tensor_adamw); the buffers are set by the caller */
static struct bt_adamw_span adamw_constants(const struct optim_config *cfg, double lr, double wd,
                                            int64_t step) {
    return (struct bt_adamw_span){.decay = (float)(1.0 - lr * wd),
                                  .beta1 = (float)cfg->beta1,
                                  .beta2 = (float)cfg->beta2,
                                  .one_minus_beta1 = (float)(1.0 - cfg->beta1),
                                  .one_minus_beta2 = (float)(1.0 - cfg->beta2),
                                  .step_size = (float)(lr / (1.0 - pow(cfg->beta1, (double)step))),
                                  .bias_correction2_sqrt =
                                      (float)sqrt(1.0 - pow(cfg->beta2, (double)step)),
                                  .eps = (float)cfg->eps};
}

/* torch.optim.SGD with dampening 0, no nesterov; buf starts at zero, so buf = g on the first step
 * exactly as PyTorch's clone. buf is NULL when momentum is 0. */
bt_status optim_step(struct optim *opt, double lr) {
    return optim_step_scaled(opt, lr, 1.0);
}

bt_status optim_step_scaled(struct optim *opt, double lr, double grad_scale) {
    if (!opt) return bt_error("optim_step: optimizer is NULL");
    if (!(grad_scale >= 0.0) || !isfinite(grad_scale))
        return bt_error("%s: gradient scale must be a non-negative number, got %g",
                        kind_name(opt->cfg.kind), grad_scale);
    const char *name = kind_name(opt->cfg.kind);
    if (!(lr >= 0.0) || !isfinite(lr))
        return bt_error("%s: lr must be a non-negative number, got %g", name, lr);
    /* check every gradient before touching any parameter: a step is all or nothing */
    for (int64_t i = 0; i < opt->n_params; i++) {
        const bt_tensor *p = opt->slots[i].param, *g = p->grad;
        char a[96], b[96];
        if (g && (g->dtype != BT_F32 || !bt_same_shape(g, p) || !bt_is_contiguous(g) ||
                  !bt_device_equal(g->storage->device, p->storage->device)))
            return bt_error("%s: gradient of %s is %s %s; expected contiguous float32 %s", name,
                            opt->slots[i].name, bt_dtype_name(g->dtype),
                            bt_shape_str(g, a, sizeof a), bt_shape_str(p, b, sizeof b));
    }
    /* one backend runs the whole step: every parameter on the first one's device */
    const struct bt_backend *be = NULL;
    for (int64_t i = 0; i < opt->n_params; i++) {
        const bt_tensor *p = opt->slots[i].param;
        const bt_tensor *first = opt->slots[0].param;
        char a[32], b[32];
        if (!bt_device_equal(p->storage->device, first->storage->device))
            return bt_error("%s: parameter %s is on %s, %s on %s: one optimizer steps parameters "
                            "on one device",
                            name, opt->slots[i].name, bt_device_name(p->storage->device, a, sizeof a),
                            opt->slots[0].name, bt_device_name(first->storage->device, b, sizeof b));
    }
    if (opt->n_params && !(be = bt_backend_for(opt->slots[0].param->storage->device, name)))
        return BT_ERR;
    bool grad_mode = bt_set_grad_enabled(false);
    const float scale = (float)grad_scale; /* as clip_grad_norm's in-place scaling */
    int64_t n_spans = 0;
    for (int64_t i = 0; i < opt->n_params; i++) {
        struct optim_slot *s = &opt->slots[i];
        if (!s->param->grad) continue;
        double wd = opt->groups[s->group].weight_decay;
        int64_t n = bt_numel(s->param);
        float *p = bt_f32(s->param);
        const float *g = bt_f32(s->param->grad);
        if (opt->cfg.kind == OPTIM_ADAMW) {
            int64_t *step = (int64_t *)bt_data(s->state[STEP]);
            *step += 1;
            struct bt_adamw_span *span = &opt->spans[n_spans++];
            *span = adamw_constants(&opt->cfg, lr, wd, *step);
            span->p = p, span->g = g, span->n = n;
            span->m = bt_f32(s->state[EXP_AVG]), span->v = bt_f32(s->state[EXP_AVG_SQ]);
        } else {
            bt_tensor *buf = s->state[MOMENTUM_BUFFER];
            be->sgd(p, g, buf ? bt_f32(buf) : NULL, n, (float)lr, (float)wd,
                    (float)opt->cfg.momentum, scale);
        }
    }
    if (n_spans) be->adamw(opt->spans, n_spans, scale); /* every parameter in one pass */
    bt_set_grad_enabled(grad_mode);
    opt->step_count++;
    return BT_OK;
}

double optim_clip_coef(double norm, double max_norm) {
    double scale = max_norm / (norm + 1e-6);
    return !isfinite(norm) || scale >= 1.0 ? 1.0 : scale;
}

double optim_grad_norm(bt_tensor *const *params, int64_t n) {
    if (n > 0 && !params) {
        bt_error("grad_norm: parameter array is NULL");
        return -1.0;
    }
    /* every gradient on one device; their squares summed by its backend in one pass */
    const bt_tensor *first = NULL;
    for (int64_t i = 0; i < n; i++) {
        const bt_tensor *g = params[i] ? params[i]->grad : NULL;
        if (g && (g->dtype != BT_F32 || !bt_is_contiguous(g))) {
            bt_error("grad_norm: gradient of parameter %lld must be contiguous float32",
                     (long long)i);
            return -1.0;
        }
        if (g && !first) first = g;
        if (g && !bt_device_equal(g->storage->device, first->storage->device)) {
            char a[32], b[32];
            bt_error("grad_norm: gradient of parameter %lld is on %s, an earlier one on %s",
                     (long long)i, bt_device_name(g->storage->device, a, sizeof a),
                     bt_device_name(first->storage->device, b, sizeof b));
            return -1.0;
        }
    }
    if (!first) return 0.0;
    const struct bt_backend *be = bt_backend_for(first->storage->device, "grad_norm");
    const float **xs = malloc((size_t)n * sizeof *xs);
    int64_t *ns = malloc((size_t)n * sizeof *ns), m = 0;
    if (!be || !xs || !ns) {
        free(xs);
        free(ns);
        if (be) bt_error("grad_norm: out of memory");
        return -1.0;
    }
    for (int64_t i = 0; i < n; i++) {
        const bt_tensor *g = params[i] ? params[i]->grad : NULL;
        if (!g) continue;
        xs[m] = bt_f32(g);
        ns[m++] = bt_numel(g);
    }
    double sum_sq = be->sum_squares(xs, ns, m);
    free(xs);
    free(ns);
    return sqrt(sum_sq);
}

double optim_clip_grad_norm(bt_tensor *const *params, int64_t n, double max_norm) {
    if (!(max_norm > 0.0)) {
        bt_error("clip_grad_norm: max_norm must be positive, got %g", max_norm);
        return -1.0;
    }
    double norm = optim_grad_norm(params, n);
    double coef = norm < 0.0 ? 1.0 : optim_clip_coef(norm, max_norm);
    if (coef >= 1.0) return norm;
    const float fscale = (float)coef;
    for (int64_t i = 0; i < n; i++) {
        bt_tensor *g = params[i] ? params[i]->grad : NULL;
        if (!g) continue;
        const struct bt_backend *be = bt_backend_for(g->storage->device, "clip_grad_norm");
        if (!be) return -1.0;
        be->unary(BT_UN_MUL_SCALAR, bt_f32(g), bt_f32(g), bt_numel(g), fscale);
    }
    return norm;
}

/* ---- groups ---- */

static int64_t find_param(const struct optim *opt, const char *param_name) {
    for (int64_t i = 0; opt && param_name && i < opt->n_params; i++)
        if (strcmp(opt->slots[i].name, param_name) == 0) return i;
    return -1;
}

int optim_add_group(struct optim *opt, const char *name, double weight_decay) {
    const char *kind = kind_name(opt->cfg.kind);
    if (!name || !name[0] || strlen(name) >= sizeof(opt->groups[0].name)) {
        bt_error("%s: group name must have 1 to %zu characters", kind,
                 sizeof(opt->groups[0].name) - 1);
        return -1;
    }
    if (!(weight_decay >= 0.0) || !isfinite(weight_decay)) {
        bt_error("%s: group %s: weight_decay must be a non-negative number, got %g", kind, name,
                 weight_decay);
        return -1;
    }
    for (int k = 0; k < opt->n_groups; k++)
        if (strcmp(opt->groups[k].name, name) == 0) {
            bt_error("%s: group %s already exists", kind, name);
            return -1;
        }
    if (opt->n_groups == OPTIM_MAX_GROUPS) {
        bt_error("%s: cannot add group %s: at most %d groups", kind, name, OPTIM_MAX_GROUPS);
        return -1;
    }
    struct optim_group_info *g = &opt->groups[opt->n_groups];
    snprintf(g->name, sizeof g->name, "%s", name);
    g->weight_decay = weight_decay;
    return opt->n_groups++;
}

bt_status optim_set_param_group(struct optim *opt, const char *param_name, int group) {
    const char *kind = kind_name(opt->cfg.kind);
    int64_t i = find_param(opt, param_name);
    if (i < 0) return bt_error("%s: no parameter named \"%s\"", kind, param_name);
    if (group < 0 || group >= opt->n_groups)
        return bt_error("%s: group %d does not exist (there are %d)", kind, group, opt->n_groups);
    opt->slots[i].group = group;
    return BT_OK;
}

int optim_param_group(const struct optim *opt, const char *param_name) {
    int64_t i = find_param(opt, param_name);
    return i < 0 ? -1 : opt->slots[i].group;
}

const char *optim_group_name(const struct optim *opt, int group) {
    return group >= 0 && group < opt->n_groups ? opt->groups[group].name : NULL;
}

double optim_group_weight_decay(const struct optim *opt, int group) {
    return group >= 0 && group < opt->n_groups ? opt->groups[group].weight_decay : 0.0;
}

int optim_num_groups(const struct optim *opt) {
    return opt->n_groups;
}

/* ---- state ---- */

const struct optim_config *optim_get_config(const struct optim *opt) {
    return &opt->cfg;
}

int64_t optim_num_params(const struct optim *opt) {
    return opt->n_params;
}

const char *optim_param_name(const struct optim *opt, int64_t i) {
    return i >= 0 && i < opt->n_params ? opt->slots[i].name : NULL;
}

bt_tensor *optim_param(const struct optim *opt, int64_t i) {
    return i >= 0 && i < opt->n_params ? opt->slots[i].param : NULL;
}

bt_tensor *optim_state(const struct optim *opt, int64_t i, const char *state_name) {
    const char *kind = kind_name(opt->cfg.kind);
    if (i < 0 || i >= opt->n_params) {
        bt_error("%s: parameter index %lld out of range (%lld parameters)", kind, (long long)i,
                 (long long)opt->n_params);
        return NULL;
    }
    const char *const *names;
    int n = optim_state_names(opt, &names);
    for (int k = 0; k < n; k++)
        if (state_name && strcmp(names[k], state_name) == 0) return opt->slots[i].state[k];
    bt_error("%s: parameter %s has no state \"%s\"", kind, opt->slots[i].name,
             state_name ? state_name : "(null)");
    return NULL;
}

bt_tensor *optim_state_by_name(const struct optim *opt, const char *param_name,
                               const char *state_name) {
    int64_t i = find_param(opt, param_name);
    if (i < 0) {
        bt_error("%s: no parameter named \"%s\"", kind_name(opt->cfg.kind),
                 param_name ? param_name : "(null)");
        return NULL;
    }
    return optim_state(opt, i, state_name);
}

int64_t optim_step_count(const struct optim *opt) {
    return opt->step_count;
}

void optim_set_step_count(struct optim *opt, int64_t steps) {
    opt->step_count = steps;
}
