/* Learning-rate schedules: constant, linear or cosine decay, each after a linear warmup, with
 * nanoGPT's get_lr formulas. The training loop asks sched_lr(step) and hands the value to
 * optim_step, so a schedule is pure data and needs no state in checkpoints. */
#ifndef BRAID_CORE_SCHEDULE_H
#define BRAID_CORE_SCHEDULE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"

typedef enum { SCHED_CONSTANT = 0, SCHED_LINEAR, SCHED_COSINE } sched_kind;

struct sched {
    sched_kind kind;
    double lr;            /* peak learning rate, reached at step warmup_steps */
    double min_lr;        /* the floor decay reaches at decay_steps (linear, cosine) */
    int64_t warmup_steps; /* steps 0..warmup_steps-1 ramp up: lr * (step+1) / (warmup_steps+1) */
    int64_t decay_steps;  /* decay ends here; min_lr from then on (ignored by constant) */
};

/* Fills *s after checking the values: lr >= 0, 0 <= min_lr <= lr, warmup_steps >= 0 and, for
 * linear and cosine, warmup_steps <= decay_steps. BT_ERR with a message naming the value. */
bt_status sched_init(struct sched *s, sched_kind kind, double lr, int64_t warmup_steps,
                     int64_t decay_steps, double min_lr);
/* The learning rate for `step` (0-based; negative steps count as 0):
 *   step < warmup:       lr * (step + 1) / (warmup + 1)
 *   constant:            lr
 *   step >= decay_steps: min_lr
 *   otherwise, with r = (step - warmup) / (decay_steps - warmup):
 *     linear: min_lr + (1 - r) * (lr - min_lr)
 *     cosine: min_lr + 0.5 * (1 + cos(pi * r)) * (lr - min_lr) */
double sched_lr(const struct sched *s, int64_t step);
/* "constant", "linear", "cosine"; false (and a message listing them) for anything else. */
bool sched_kind_parse(const char *name, sched_kind *out);
const char *sched_kind_name(sched_kind kind);

#endif
