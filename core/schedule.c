/* Learning-rate schedules (see schedule.h): nanoGPT's warmup and cosine decay, plus linear decay
 * and constant. */
#include "core/schedule.h"

#include <math.h>
#include <string.h>

static const char *const kind_names[] = {"constant", "linear", "cosine"};

const char *sched_kind_name(sched_kind kind) {
    return (unsigned)kind < sizeof(kind_names) / sizeof(kind_names[0]) ? kind_names[kind] : "?";
}

bool sched_kind_parse(const char *name, sched_kind *out) {
    for (int k = 0; k < (int)(sizeof(kind_names) / sizeof(kind_names[0])); k++)
        if (name && strcmp(name, kind_names[k]) == 0) {
            *out = (sched_kind)k;
            return true;
        }
    bt_error("schedule: unknown name \"%s\" (expected constant, linear or cosine)",
             name ? name : "(null)");
    return false;
}

bt_status sched_init(struct sched *s, sched_kind kind, double lr, int64_t warmup_steps,
                     int64_t decay_steps, double min_lr) {
    if ((unsigned)kind > SCHED_COSINE) return bt_error("schedule: unknown kind %d", (int)kind);
    const char *name = sched_kind_name(kind);
    if (!(lr >= 0.0) || !isfinite(lr))
        return bt_error("schedule %s: lr must be a non-negative number, got %g", name, lr);
    if (!(min_lr >= 0.0) || !isfinite(min_lr))
        return bt_error("schedule %s: min_lr must be a non-negative number, got %g", name, min_lr);
    if (min_lr > lr)
        return bt_error("schedule %s: min_lr (%g) is greater than lr (%g)", name, min_lr, lr);
    if (warmup_steps < 0)
        return bt_error("schedule %s: warmup_steps must be non-negative, got %lld", name,
                        (long long)warmup_steps);
    if (kind != SCHED_CONSTANT && warmup_steps > decay_steps)
        return bt_error("schedule %s: warmup_steps (%lld) is greater than decay_steps (%lld)", name,
                        (long long)warmup_steps, (long long)decay_steps);
    *s = (struct sched){kind, lr, min_lr, warmup_steps, decay_steps};
    return BT_OK;
}

double sched_lr(const struct sched *s, int64_t step) {
    if (step < 0) step = 0;
    if (step < s->warmup_steps) return s->lr * (double)(step + 1) / (double)(s->warmup_steps + 1);
    if (s->kind == SCHED_CONSTANT) return s->lr;
    if (step >= s->decay_steps) return s->min_lr; /* also covers warmup == decay (no decay span) */
    double ratio = (double)(step - s->warmup_steps) / (double)(s->decay_steps - s->warmup_steps);
    double coeff = s->kind == SCHED_COSINE ? 0.5 * (1.0 + cos(M_PI * ratio)) : 1.0 - ratio;
    return s->min_lr + coeff * (s->lr - s->min_lr);
}
