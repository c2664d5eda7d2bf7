/* Helpers for the checkpoint tests whose ranks save one file together (tests/test_checkpoint_pp.c,
 * test_checkpoint_tp.c): a temporary directory shared by the world's ranks and the file paths in
 * it, saving with a layout (and failing to), AdamW for a run, and comparing two runs' state
 * bitwise. Failures end the running Check test and name the rank (see tests/mpi_test.h). */
#ifndef BRAID_TESTS_CKPT_CHECK_H
#define BRAID_TESTS_CKPT_CHECK_H

#include <check.h>
#include <stddef.h>
#include <stdint.h>

#include "core/nn.h"
#include "core/optim.h"
#include "data/checkpoint.h"

/* ---- the shared directory ---- */

/* Rank 0 makes a fresh /tmp/braid_<tag>_XXXXXX and every rank of the world learns its path,
 * written into dir (size: a multiple of 8, at least 64 bytes). Collective. */
void ckpt_check_dir_make(char *dir, size_t size, const char *tag);
/* Once every rank is done reading, rank 0 removes dir with its files; closes HDF5's globals, so
 * that LeakSanitizer sees only braid's memory. Collective. */
void ckpt_check_dir_remove(const char *dir);
/* <dir>/<sub>/step_<step>.h5, into buf */
void ckpt_check_file_path(char *buf, size_t size, const char *dir, const char *sub, int64_t step);

/* ---- saving ---- */

/* ckpt_save_layout of params and opt as step `step` into <dir>/<sub> (collective) must succeed */
void ckpt_check_save(const char *dir, const char *sub, int64_t step,
                     const struct nn_param_list *params, const struct optim *opt,
                     const struct ckpt_layout *layout);
/* ckpt_save_layout of params and opt as step 1 into <dir>/bad must fail with an error containing
 * `want` (then cleared) and leave no `latest` there */
void ckpt_check_save_fails(const char *dir, const struct nn_param_list *params,
                           const struct optim *opt, const struct ckpt_layout *layout,
                           const char *want);

/* ---- optimizer and state ---- */

/* AdamW (defaults, weight decay 0.1) over params */
struct optim *ckpt_check_adamw(const struct nn_param_list *params);

/* x's parameters (xp) and optimizer state (xo) are bitwise those of w (wp, wo): the same names in
 * the same order, the same step count */
void ckpt_check_same_state(const struct nn_param_list *xp, const struct optim *xo,
                           const struct nn_param_list *wp, const struct optim *wo);

#endif
