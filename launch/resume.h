/* Resuming a run (docs/training.md "Resuming"): which checkpoint checkpoint.resume names, and
 * whether the config of this run may continue the one stored in it. */
#ifndef BRAID_LAUNCH_RESUME_H
#define BRAID_LAUNCH_RESUME_H

#include <stdbool.h>
#include <stddef.h>

#include "launch/config.h"

/* The checkpoint to resume from, into path: checkpoint.resume `auto` takes <checkpoint.dir>/latest
 * (*found false when the directory holds none yet: a fresh start), `none` finds nothing, and any
 * other value is a file or a directory (its latest) that must exist. A `latest` that exists but
 * is broken is an error, never a silent fresh start. */
bt_status resume_find(const struct braid_config *cfg, char *path, size_t size, bool *found);

/* Compares this run's config with the checkpoint's (YAML text). Keys that fix the shapes of the
 * saved state or the data stream (the model's shape, the optimizer, train.seed, train.seq_len,
 * data.shuffle) must be equal: an error names the first that differs and both values. Every other
 * difference is printed on stdout as `resume: <key>: <old> -> <new>`. */
bt_status resume_check_config(const struct braid_config *cfg, const char *stored_yaml,
                              const char *ckpt_path);

#endif
