/* Checkpoints saved by several ranks: the shared directory, saving and state comparisons of the
 * checkpoint tests (see ckpt_check.h). */
#include "tests/ckpt_check.h"

#include <hdf5.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "comm/comm.h"
#include "core/runtime.h"
#include "tests/gradcheck.h"
#include "tests/twin_check.h"

/* ---- the shared directory ---- */

void ckpt_check_dir_make(char *dir, size_t size, const char *tag) {
    ck_assert(size >= 64 && size % sizeof(int64_t) == 0);
    bt_tensor *name = bt_tensor_new(BT_SHAPE((int64_t)(size / sizeof(int64_t))), BT_I64, bt_cpu());
    memset(bt_data(name), 0, size);
    if (twin_world_rank() == 0) {
        test_tmpdir_make(dir, size, tag);
        memcpy(bt_data(name), dir, size);
    }
    ck_assert_msg(comm_broadcast(comm_world(), name, 0) == BT_OK, "%s", bt_last_error());
    memcpy(dir, bt_data(name), size);
    dir[size - 1] = '\0';
    bt_tensor_free(name);
}

void ckpt_check_dir_remove(const char *dir) {
    ck_assert(comm_barrier(comm_world()) == BT_OK); /* every rank is done reading */
    if (twin_world_rank() == 0) test_tmpdir_remove(dir);
    H5close(); /* HDF5's globals, so LeakSanitizer sees only braid's memory */
}

void ckpt_check_file_path(char *buf, size_t size, const char *dir, const char *sub, int64_t step) {
    snprintf(buf, size, "%s/%s/step_%08lld.h5", dir, sub, (long long)step);
}

/* ---- saving ---- */

void ckpt_check_save(const char *dir, const char *sub, int64_t step,
                     const struct nn_param_list *params, const struct optim *opt,
                     const struct ckpt_layout *layout) {
    char path[128];
    struct ckpt_meta meta = {.step = step, .config_yaml = "", .tokenizer_yaml = ""};
    snprintf(path, sizeof path, "%s/%s", dir, sub);
    ck_assert_msg(ckpt_save_layout(path, params, opt, &meta, 0, layout) == BT_OK,
                  "save (rank %d): %s", twin_world_rank(), bt_last_error());
}

void ckpt_check_save_fails(const char *dir, const struct nn_param_list *params,
                           const struct optim *opt, const struct ckpt_layout *layout,
                           const char *want) {
    char path[128], latest[160];
    struct ckpt_meta meta = {.step = 1, .config_yaml = "", .tokenizer_yaml = ""};
    snprintf(path, sizeof path, "%s/bad", dir);
    ck_assert_msg(ckpt_save_layout(path, params, opt, &meta, 0, layout) == BT_ERR,
                  "a bad layout was saved (rank %d)", twin_world_rank());
    ck_assert_error_contains(want);
    snprintf(latest, sizeof latest, "%s/latest", path);
    ck_assert_int_ne(access(latest, F_OK), 0);
}

/* ---- optimizer and state ---- */

struct optim *ckpt_check_adamw(const struct nn_param_list *params) {
    struct optim_config oc = optim_config_default(OPTIM_ADAMW);
    oc.weight_decay = 0.1;
    struct optim *opt = optim_create(&oc, params);
    ck_assert_msg(opt != NULL, "optim_create: %s", bt_last_error());
    return opt;
}

void ckpt_check_same_state(const struct nn_param_list *xp, const struct optim *xo,
                           const struct nn_param_list *wp, const struct optim *wo) {
    const char *const *states = NULL;
    int n_states = optim_state_names(xo, &states);
    ck_assert_int_eq(xp->count, wp->count);
    for (int64_t p = 0; p < xp->count; p++) {
        ck_assert_str_eq(xp->names[p], wp->names[p]);
        twin_assert_close(xp->names[p], xp->tensors[p], wp->tensors[p], -1.0);
    }
    ck_assert_int_eq(optim_num_params(xo), optim_num_params(wo));
    ck_assert_int_eq(optim_step_count(xo), optim_step_count(wo));
    for (int64_t i = 0; i < optim_num_params(xo); i++)
        for (int s = 0; s < n_states; s++)
            twin_assert_close(states[s], optim_state(xo, i, states[s]),
                              optim_state(wo, i, states[s]), -1.0);
}
