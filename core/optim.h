/* Optimizers with torch.optim semantics: SGD (momentum, coupled weight decay) and AdamW (decoupled
 * weight decay, bias correction, eps outside the sqrt). The learning rate is passed to every step,
 * so a schedule (core/schedule.h) drives it. State is plain persistent tensors named like
 * PyTorch's state_dict (exp_avg, exp_avg_sq, step; momentum_buffer), allocated at creation: a step
 * allocates nothing and records nothing on the autograd tape. CPU parameters only for now. */
#ifndef BRAID_CORE_OPTIM_H
#define BRAID_CORE_OPTIM_H

#include <stdbool.h>
#include <stdint.h>

#include "core/nn.h"
#include "core/tensor.h"

typedef enum { OPTIM_ADAMW = 0, OPTIM_SGD } optim_kind;

/* Which parameters start in the "decay" group; the others go to "no_decay" (weight_decay 0). */
typedef enum {
    OPTIM_DECAY_MATRICES = 0, /* ndim >= 2 (weights of linear and embedding layers), as nanoGPT */
    OPTIM_DECAY_ALL,          /* every parameter, as torch.optim with one param group */
} optim_decay_rule;

struct optim_config {
    optim_kind kind;
    double beta1, beta2, eps; /* adamw */
    double momentum;          /* sgd (dampening 0, no nesterov) */
    double weight_decay;      /* adamw: p -= lr*wd*p before the update; sgd: g += wd*p */
    optim_decay_rule decay_rule;
};
/* PyTorch's defaults: adamw betas (0.9, 0.999), eps 1e-8, weight_decay 0.01; sgd momentum 0,
 * weight_decay 0. */
struct optim_config optim_config_default(optim_kind kind);
/* "adamw", "sgd"; false (and a message listing them) for anything else. */
bool optim_kind_parse(const char *name, optim_kind *out);

struct optim;

/* An optimizer over `params` (persistent float32 tensors on one device, its state made there; names
 * copied, tensors retained).
 * NULL with a message naming the bad value or parameter. */
struct optim *optim_create(const struct optim_config *cfg, const struct nn_param_list *params);
void optim_free(struct optim *opt);
/* Fills every parameter's .grad with zeros (in place: the buffers are reused next step). */
void optim_zero_grad(struct optim *opt);
/* One update with learning rate `lr`. Parameters without .grad are skipped (their state and
 * per-parameter step count unchanged), like PyTorch. */
bt_status optim_step(struct optim *opt, double lr);

/* optim_step with every gradient multiplied by grad_scale as the update reads it: the same floats
 * as scaling the gradients first (optim_clip_grad_norm) without a pass over them; the gradients
 * are left as they are. AdamW updates every parameter in one parallel pass. */
bt_status optim_step_scaled(struct optim *opt, double lr, double grad_scale);

/* Scales the gradients of params so that their global L2 norm is at most max_norm (PyTorch's
 * clip_grad_norm_: scale = max_norm / (norm + 1e-6), applied only when < 1). Returns the norm
 * before clipping, summed in double; parameters without .grad are skipped. A non-finite norm is
 * returned with the gradients left as they are. -1 with a message on bad arguments. */
double optim_clip_grad_norm(bt_tensor *const *params, int64_t n, double max_norm);
/* The two halves of it: the global L2 norm of params' gradients (-1 with a message on bad
 * arguments), and the factor clipping to max_norm applies (1 when none, or the norm is not
 * finite) — for optim_step_scaled. */
double optim_grad_norm(bt_tensor *const *params, int64_t n);
double optim_clip_coef(double norm, double max_norm);

/* ---- parameter groups: 0 = "decay" (cfg weight_decay), 1 = "no_decay" (0), then any added ---- */
#define OPTIM_MAX_GROUPS 8
/* Adds a group and returns its index, or -1 with a message. */
int optim_add_group(struct optim *opt, const char *name, double weight_decay);
bt_status optim_set_param_group(struct optim *opt, const char *param_name, int group);
int optim_param_group(const struct optim *opt, const char *param_name); /* -1 if unknown */
const char *optim_group_name(const struct optim *opt, int group);
double optim_group_weight_decay(const struct optim *opt, int group);
int optim_num_groups(const struct optim *opt);

/* ---- state, for checkpoints ---- */
const struct optim_config *optim_get_config(const struct optim *opt);
int64_t optim_num_params(const struct optim *opt);
const char *optim_param_name(const struct optim *opt, int64_t i);
bt_tensor *optim_param(const struct optim *opt, int64_t i);
/* The names of the state every parameter has: adamw {"exp_avg", "exp_avg_sq", "step"} (step an
 * int64 0-d tensor: updates this parameter received), sgd {"momentum_buffer"} (none when
 * momentum is 0). Returns how many; *names points to static strings. */
int optim_state_names(const struct optim *opt, const char *const **names);
/* State tensor of parameter i (persistent, same shape as the parameter except step); NULL with a
 * message when there is no such state. Checkpoints read and write them in place. */
bt_tensor *optim_state(const struct optim *opt, int64_t i, const char *state_name);
bt_tensor *optim_state_by_name(const struct optim *opt, const char *param_name,
                               const char *state_name);
/* Number of optim_step calls made (restored from a checkpoint with optim_set_step_count). */
int64_t optim_step_count(const struct optim *opt);
void optim_set_step_count(struct optim *opt, int64_t steps);

#endif
