/* Per-op wall-clock timers, off unless switched on (`BRAID_PROFILE=1 braid train ...`, or
 * bt_profile_enable): where a training step's time goes, by op and phase.
 *
 * Time is charged between marks: every op recorded for autograd marks when its forward is done
 * (so an op is charged the time since the previous op ended: its own work and whatever the model
 * code did between the two), every backward function is timed on its own, and the training loop
 * marks its other parts (data, the optimizer, gradient clipping, collectives). Views are recorded
 * ops too: their forward is cheap, their backward (a copy) shows. Totals add up to the wall time
 * between the first mark after bt_profile_reset and the last one. One process's timers: with
 * several ranks each keeps its own. */
#ifndef BRAID_CORE_PROFILE_H
#define BRAID_CORE_PROFILE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

void bt_profile_enable(bool on);
/* Called at every mark before the clock is read, so that asynchronous device work is charged to
 * the op that queued it (braid train sets bt_cuda_synchronize on cuda: it waits for braid's
 * compute stream, not for NCCL's, so overlapped collectives are charged to nobody; the waits
 * slow the step, the price of a meaningful split). NULL: host time only. */
void bt_profile_set_sync(void (*sync)(void));
bool bt_profile_enabled(void);
/* Charges the time since the last mark to (phase, name) and marks now; name and phase must be
 * strings that outlive the profile (literals). No-op while profiling is off. */
void bt_profile_mark(const char *phase, const char *name);
/* Marks now without charging anyone: the start of a measured stretch. */
void bt_profile_start(void);
/* Forgets the totals (after warm-up steps) and marks now. */
void bt_profile_reset(void);
/* The table: (phase, name) rows sorted by time, with calls and milliseconds per step and the
 * share of the total, for `steps` steps. Nothing while profiling is off. */
void bt_profile_report(FILE *out, int64_t steps);

#endif
