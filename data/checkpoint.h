/* HDF5 checkpoints (docs/checkpoint.md): one file per saved step, `/model/<name>` float32 full
 * logical tensors in row-major (nn.Linear) layout, root attributes for the step, tokens seen, the
 * resolved config (YAML text), braid's version and the format version. Written to a temporary name,
 * fsync'd and renamed, then the `latest` pointer is replaced the same way. HDF5's own error stack
 * is silenced: failures come back as one message naming the file and what is wrong. */
#ifndef BRAID_DATA_CHECKPOINT_H
#define BRAID_DATA_CHECKPOINT_H

#include <stdint.h>

#include "core/nn.h"

#define CKPT_FORMAT_VERSION 1

struct ckpt_meta {
    int64_t step;        /* steps completed */
    int64_t tokens_seen; /* training tokens consumed */
    const char *config_yaml;
};

/* Saves `params` as <dir>/step_<8-digit step>.h5 and points <dir>/latest at it; keeps the newest
 * `keep` step files (keep <= 0: all). Creates dir if needed. */
bt_status ckpt_save(const char *dir, const struct nn_param_list *params,
                    const struct ckpt_meta *meta, int64_t keep);

/* Loads `/model/<name>` for every parameter in `params` into it. A missing dataset, a shape or
 * dtype that differs, or a /model dataset that no parameter takes is an error naming it:
 * `init.h5: dataset /model/transformer.h.0.attn.c_attn.weight has shape (384,1152), expected
 * (1152,384)`. */
bt_status ckpt_load_model(const char *path, const struct nn_param_list *params);

/* The path <dir>/latest names, into buf; BT_ERR with a message when there is none. */
bt_status ckpt_latest(const char *dir, char *buf, size_t size);

#endif
