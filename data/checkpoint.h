/* HDF5 checkpoints (docs/checkpoint.md): one file per saved step with the whole training state —
 * `/model/<name>` float32 full logical tensors in row-major (nn.Linear) layout, `/optimizer/<name>/
 * <state>`, the RNG, data and schedule positions, the resolved config and the tokenizer — each
 * tensor with a CRC-32 of its bytes. Written to a temporary name, fsync'd and renamed, then the
 * `latest` pointer is replaced the same way. HDF5's own error stack is silenced: every failure is
 * one message `checkpoint PATH: <what is wrong>`. */
#ifndef BRAID_DATA_CHECKPOINT_H
#define BRAID_DATA_CHECKPOINT_H

#include <stdbool.h>
#include <stdint.h>

#include "comm/comm.h"
#include "core/nn.h"
#include "core/optim.h"

#define CKPT_FORMAT_VERSION 2

/* The run state saved beside the tensors. */
struct ckpt_meta {
    int64_t step;        /* optimizer steps completed */
    int64_t tokens_seen; /* training tokens consumed */
    double lr;           /* learning rate of the last step taken (0 before any) */
    /* core's dropout RNG (struct bt_rng): seed and the next counter offset */
    uint64_t dropout_seed, dropout_offset;
    /* the data stream (data/loader.h): seed, shuffle, window length and the index of the next
     * sample of the global stream (layout-independent: step * dp * grad_accum * batch_size) */
    uint64_t data_seed;
    bool data_shuffle;
    int64_t data_seq_len, data_position;
    const char *config_yaml;    /* the resolved config; "" when none */
    const char *tokenizer_yaml; /* the tokenizer.yaml of the training data; "" when unknown */
};

/* Saves params (and the optimizer's state when opt is not NULL) with meta as
 * <dir>/step_<8-digit step>.h5 and points <dir>/latest at it; keeps the newest `keep` step files
 * (keep <= 0: all; the file just written always counts). Creates dir if needed. A failure leaves
 * the previous files and `latest` as they were. */
bt_status ckpt_save(const char *dir, const struct nn_param_list *params, const struct optim *opt,
                    const struct ckpt_meta *meta, int64_t keep);

/* How the ranks that write one file together hold the state (DESIGN.md: every rank writes its own
 * slices, the file has the full logical tensors whatever the layout). With tensor parallelism the
 * group is split_group × replica_group (× stage_group): a parameter whose split (params->splits,
 * core/nn.h) is cut is piece comm_rank(split_group) of its full tensor, and the ranks of
 * replica_group hold the same pieces. With pipeline parallelism each stage passes its own
 * parameters; the file holds their union (docs/checkpoint.md "Pipeline parallelism"). */
struct ckpt_layout {
    struct comm *group; /* every rank of it calls ckpt_save_layout; NULL: this process alone */
    /* The tensor-parallel group: a cut parameter must be piece comm_rank(split_group) of
     * comm_size(split_group). NULL when no parameter is cut. */
    struct comm *split_group;
    /* The ranks holding the same pieces (the dp group); they share the writing of the pieces.
     * With split_group set, size(group) must be size(split_group) * size(replica_group) (NULL: a
     * group of one). Unused when split_group and stage_group are NULL. */
    struct comm *replica_group;
    /* The pipeline group: the ranks with this rank's dp and tp coordinates, one per stage, in stage
     * order. Each stage's params are its own (single-rank names); the stages exchange their lists
     * over it and every rank creates the datasets of their union, stage by stage; a name several
     * stages hold (a tied embedding's copy, equal values) is written by the lowest of them. With
     * more than one stage, size(group) must be size(split_group) * size(replica_group) *
     * size(stage_group) (NULL: 1), and the ranks of a stage share the writing of its whole
     * tensors. NULL or a group of one: no pipeline, every rank holds every parameter. */
    struct comm *stage_group;
    /* ZeRO-1: optimizer parameter i holds rows [opt_row0[i], opt_row0[i] + its rows) of the state
     * of this rank's piece of the parameter of the same name in params (the full parameter when it
     * is not cut; comm/shard.h splits them); a parameter this rank holds no rows of is absent from
     * its optimizer. NULL: each rank's optimizer holds the state of its whole piece, like its
     * params. */
    const int64_t *opt_row0;
};

/* ckpt_save for a group of ranks (collective): replicated tensors are written in row shares,
 * pieces of cut tensors into their place in the full tensor (in row shares among the replicas),
 * sharded optimizer state as the slices each rank holds; rank 0 commits the file and `latest`;
 * every rank returns the same status (a rank that did not fail says another did). */
bt_status ckpt_save_layout(const char *dir, const struct nn_param_list *params,
                           const struct optim *opt, const struct ckpt_meta *meta, int64_t keep,
                           const struct ckpt_layout *layout);

/* The checkpoint `path` names: a file as it is, a directory through its `latest` pointer, into
 * buf. Errors: `checkpoint dir 'ckpt': no latest checkpoint`, a bad `latest`, a missing path. */
bt_status ckpt_resolve(const char *path, char *buf, size_t size);

/* ---- reading ---- */

/* An opened checkpoint whose layout has been checked: the format version, the root attributes and
 * groups, and that every tensor is a float32 or int64 dataset with a crc32 attribute. */
struct ckpt_file;

struct ckpt_tensor_info {
    const char *name; /* full path: "/model/wte.weight", "/optimizer/wte.weight/exp_avg" */
    int ndim;         /* 0 for a scalar */
    int64_t shape[BT_MAX_DIMS];
    bt_dtype dtype; /* BT_F32 or BT_I64 */
};

/* Opens path read-only and checks its layout; NULL with `checkpoint PATH: ...` on any problem
 * (missing, not HDF5, truncated, unknown format_version, a missing group or attribute). */
struct ckpt_file *ckpt_open(const char *path);
void ckpt_close(struct ckpt_file *f);
const char *ckpt_path(const struct ckpt_file *f);
/* The braid version that wrote the file ("0.1.0"). */
const char *ckpt_braid_version(const struct ckpt_file *f);
/* The run state; its strings belong to f. */
const struct ckpt_meta *ckpt_meta(const struct ckpt_file *f);
/* Name of the optimizer whose state the file holds ("adamw", "sgd"), "" when none, and the number
 * of optimizer steps it had taken. */
const char *ckpt_optimizer_name(const struct ckpt_file *f);
int64_t ckpt_optimizer_steps(const struct ckpt_file *f);

/* Every tensor in the file (/model first, then /optimizer), in name order. */
int64_t ckpt_num_tensors(const struct ckpt_file *f);
const struct ckpt_tensor_info *ckpt_tensor(const struct ckpt_file *f, int64_t i);
/* Reads tensor i into a new persistent CPU tensor of its dtype and shape, verifying its checksum;
 * NULL with `checkpoint PATH: /model/x: checksum mismatch (...)` and the like. */
bt_tensor *ckpt_read_tensor(struct ckpt_file *f, int64_t i);

/* Reads /model/<name> into every parameter of params. Every parameter's dataset must exist with
 * its full logical shape (a cut parameter, params->splits, receives its piece of it: the tensor is
 * read whole, one at a time) and dtype, and every /model dataset must be a parameter: checked
 * before any is read.
 * Checksums are verified as each tensor is read: on a mismatch the error is returned and the
 * parameters read so far keep their new values (callers stop the run). */
bt_status ckpt_read_model(struct ckpt_file *f, const struct nn_param_list *params);
/* ckpt_read_model for a part of the model (a pipeline stage's parameters): the same checks, but
 * the file may hold datasets that are not in params. */
bt_status ckpt_read_model_subset(struct ckpt_file *f, const struct nn_param_list *params);
/* Reads the optimizer state of every parameter of opt (same checks) and its step count; the file's
 * optimizer must be the same kind. The state of a parameter that is cut in params (params->splits)
 * is that piece of the file's full tensor. With opt_row0 (ZeRO-1, see struct ckpt_layout),
 * parameter i of opt holds rows [opt_row0[i], +its rows) of the piece of the parameter of the same
 * name in params (the full tensor when it is not cut); NULL: whole pieces. params may be NULL when
 * nothing is cut and opt_row0 is NULL. No communication. */
bt_status ckpt_read_optim(struct ckpt_file *f, struct optim *opt);
bt_status ckpt_read_optim_rows(struct ckpt_file *f, struct optim *opt,
                               const struct nn_param_list *params, const int64_t *opt_row0);
/* ckpt_read_optim_rows for a pipeline stage: the file may hold the state of parameters that are
 * not in opt (nor in params). */
bt_status ckpt_read_optim_subset(struct ckpt_file *f, struct optim *opt,
                                 const struct nn_param_list *params, const int64_t *opt_row0);

/* Opens path, reads /model into params and closes it (model.init_from). Besides braid's
 * checkpoints, any HDF5 file whose /model/<name> datasets hold float32 weights is accepted (a
 * conversion of other weights, written with h5py): crc32 attributes are verified where present. */
bt_status ckpt_load_model(const char *path, const struct nn_param_list *params);
/* ckpt_load_model for a pipeline stage: reads its parameters, ignoring the file's other datasets */
bt_status ckpt_load_model_subset(const char *path, const struct nn_param_list *params);

#endif
