/* Writing HDF5 checkpoints (docs/checkpoint.md): the whole training state to
 * <dir>/.step_<8-digit step>.h5.tmp — /model, /optimizer, the run's attributes, config and
 * tokenizer, each tensor with its CRC-32 — then fsync, rename into place, fsync the directory,
 * point <dir>/latest at it the same way and prune old files. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/checkpoint.h"
#include "data/checkpoint_internal.h"
#include "data/h5util.h"

#define PATH_MAX_LEN 4096

/* ---- small file-system helpers ---- */

/* mkdir -p */
static bt_status make_dirs(const char *dir) {
    char path[PATH_MAX_LEN];
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path)
        return bt_error("checkpoint dir '%s': path too long", dir);
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p != '\0') continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(path, 0777) != 0 && errno != EEXIST)
            return bt_error("checkpoint dir '%s': cannot create '%s': %s", dir, path,
                            strerror(errno));
        *p = saved;
        if (saved == '\0') break;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return bt_error("checkpoint dir '%s': not a directory", dir);
    return BT_OK;
}

/* fsync a file or directory by path, so a rename that follows (or preceded) is durable */
static bt_status fsync_path(const char *path, bool directory) {
    int fd = open(path, directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
    if (fd < 0) return bt_error("checkpoint %s: cannot open to fsync: %s", path, strerror(errno));
    if (fsync(fd) != 0) {
        int err = errno;
        close(fd);
        return bt_error("checkpoint %s: fsync failed: %s", path, strerror(err));
    }
    close(fd);
    return BT_OK;
}

/* rename(2) into place, then fsync the directory holding both names */
static bt_status commit_rename(const char *dir, const char *tmp, const char *final) {
    if (rename(tmp, final) != 0)
        return bt_error("checkpoint %s: cannot rename to '%s': %s", tmp, final, strerror(errno));
    return fsync_path(dir, true);
}

/* ---- datasets and attributes ---- */

/* The tensor as dataset `name` of obj, contiguous, with its crc32 attribute. float32 and int64
 * only: what parameters and optimizer state are. */
static bt_status write_tensor(const char *label, hid_t obj, const char *name, const bt_tensor *t) {
    hid_t space = -1, dset = -1, aspace = -1, attr = -1;
    hsize_t dims[BT_MAX_DIMS];
    bool f32 = t->dtype == BT_F32;
    if ((!f32 && t->dtype != BT_I64) || t->storage->device.type != BT_DEVICE_CPU ||
        !bt_is_contiguous(t))
        return bt_error("%s: %s must be a contiguous float32 or int64 CPU tensor (got %s)", label,
                        name, bt_dtype_name(t->dtype));
    for (int d = 0; d < t->ndim; d++)
        dims[d] = (hsize_t)t->shape[d];
    uint32_t crc = ckpt_crc32(bt_data(t), (size_t)bt_numel(t) * bt_dtype_size(t->dtype));
    if (t->ndim == 0)
        H5_CHECK(label, space = H5Screate(H5S_SCALAR));
    else
        H5_CHECK(label, space = H5Screate_simple(t->ndim, dims, NULL));
    H5_CHECK(label, dset = H5Dcreate2(obj, name, f32 ? H5T_IEEE_F32LE : H5T_STD_I64LE, space,
                                      H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    H5_CHECK(label, H5Dwrite(dset, f32 ? H5T_NATIVE_FLOAT : H5T_NATIVE_INT64, H5S_ALL, H5S_ALL,
                             H5P_DEFAULT, bt_data(t)));
    H5_CHECK(label, aspace = H5Screate(H5S_SCALAR));
    H5_CHECK(label, attr = H5Acreate2(dset, CKPT_CRC_ATTR, H5T_STD_U32LE, aspace, H5P_DEFAULT,
                                      H5P_DEFAULT));
    H5_CHECK(label, H5Awrite(attr, H5T_NATIVE_UINT32, &crc));
    H5_CHECK(label, H5Aclose(attr));
    H5_CHECK(label, H5Sclose(aspace));
    H5_CHECK(label, H5Dclose(dset));
    H5_CHECK(label, H5Sclose(space));
    return BT_OK;
fail:
    h5_close_quietly(attr);
    h5_close_quietly(aspace);
    h5_close_quietly(dset);
    h5_close_quietly(space);
    return BT_ERR;
}

/* A scalar attribute of a fixed-size type. */
static bt_status write_attr(const char *label, hid_t obj, const char *name, hid_t file_type,
                            hid_t mem_type, const void *value) {
    hid_t space = -1, attr = -1;
    H5_CHECK(label, space = H5Screate(H5S_SCALAR));
    H5_CHECK(label, attr = H5Acreate2(obj, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT));
    H5_CHECK(label, H5Awrite(attr, mem_type, value));
    H5_CHECK(label, H5Aclose(attr));
    H5_CHECK(label, H5Sclose(space));
    return BT_OK;
fail:
    h5_close_quietly(attr);
    h5_close_quietly(space);
    return BT_ERR;
}

static bt_status write_i64(const char *label, hid_t obj, const char *name, int64_t v) {
    return write_attr(label, obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v);
}

static bt_status write_u64(const char *label, hid_t obj, const char *name, uint64_t v) {
    return write_attr(label, obj, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &v);
}

/* A variable-length UTF-8 string type: h5py reads it as str (attributes) or bytes (datasets). */
static hid_t vlen_string_type(const char *label) {
    hid_t type = -1;
    H5_CHECK(label, type = H5Tcopy(H5T_C_S1));
    H5_CHECK(label, H5Tset_size(type, H5T_VARIABLE));
    H5_CHECK(label, H5Tset_cset(type, H5T_CSET_UTF8));
    return type;
fail:
    h5_close_quietly(type);
    return -1;
}

/* A scalar string as attribute `name` of obj (as_dataset false) or as dataset `name` in obj. */
static bt_status write_string(const char *label, hid_t obj, const char *name, const char *text,
                              bool as_dataset) {
    hid_t type = -1, space = -1, item = -1;
    if (!text) text = "";
    if ((type = vlen_string_type(label)) < 0) return BT_ERR;
    H5_CHECK(label, space = H5Screate(H5S_SCALAR));
    if (as_dataset) {
        H5_CHECK(label,
                 item = H5Dcreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
        H5_CHECK(label, H5Dwrite(item, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, &text));
        H5_CHECK(label, H5Dclose(item));
    } else {
        H5_CHECK(label, item = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT));
        H5_CHECK(label, H5Awrite(item, type, &text));
        H5_CHECK(label, H5Aclose(item));
    }
    H5_CHECK(label, H5Sclose(space));
    H5_CHECK(label, H5Tclose(type));
    return BT_OK;
fail:
    h5_close_quietly(item);
    h5_close_quietly(space);
    h5_close_quietly(type);
    return BT_ERR;
}

/* ---- the file's parts ---- */

static bt_status write_model(const char *label, hid_t file, const struct nn_param_list *params) {
    hid_t model = -1;
    H5_CHECK(label, model = H5Gcreate2(file, "model", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    for (int64_t i = 0; i < params->count; i++)
        if (write_tensor(label, model, params->names[i], params->tensors[i]) != BT_OK) goto fail;
    H5_CHECK(label, H5Gclose(model));
    return BT_OK;
fail:
    h5_close_quietly(model);
    return BT_ERR;
}

/* /optimizer: attributes name and step_count, then a group per parameter holding its state. */
static bt_status write_optimizer(const char *label, hid_t file, const struct optim *opt) {
    hid_t group = -1, param = -1;
    const char *const *states = NULL;
    int n_states = opt ? optim_state_names(opt, &states) : 0;
    const char *name = !opt ? "" : optim_get_config(opt)->kind == OPTIM_ADAMW ? "adamw" : "sgd";
    H5_CHECK(label, group = H5Gcreate2(file, "optimizer", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    if (write_string(label, group, "name", name, false) != BT_OK ||
        write_i64(label, group, "step_count", opt ? optim_step_count(opt) : 0) != BT_OK)
        goto fail;
    for (int64_t i = 0; opt && n_states > 0 && i < optim_num_params(opt); i++) {
        H5_CHECK(label, param = H5Gcreate2(group, optim_param_name(opt, i), H5P_DEFAULT,
                                           H5P_DEFAULT, H5P_DEFAULT));
        for (int s = 0; s < n_states; s++) {
            bt_tensor *t = optim_state(opt, i, states[s]);
            if (!t || write_tensor(label, param, states[s], t) != BT_OK) goto fail;
        }
        H5_CHECK(label, H5Gclose(param));
        param = -1;
    }
    H5_CHECK(label, H5Gclose(group));
    return BT_OK;
fail:
    h5_close_quietly(param);
    h5_close_quietly(group);
    return BT_ERR;
}

/* A group holding only scalar attributes. */
static hid_t create_group(const char *label, hid_t file, const char *name) {
    hid_t group = -1;
    H5_CHECK(label, group = H5Gcreate2(file, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    return group;
fail:
    return -1;
}

static bt_status write_run_state(const char *label, hid_t file, const struct ckpt_meta *m) {
    int32_t format_version = CKPT_FORMAT_VERSION;
    hid_t rng = -1, data = -1, sched = -1;
    bt_status st = BT_ERR;
    uint8_t shuffle = m->data_shuffle ? 1 : 0;
    if (write_attr(label, file, "format_version", H5T_STD_I32LE, H5T_NATIVE_INT32,
                   &format_version) ||
        write_string(label, file, "braid_version", BRAID_VERSION, false) ||
        write_i64(label, file, "step", m->step) ||
        write_i64(label, file, "tokens_seen", m->tokens_seen) ||
        write_string(label, file, "config", m->config_yaml, true) ||
        write_string(label, file, "tokenizer", m->tokenizer_yaml, true))
        goto done;
    if ((rng = create_group(label, file, "rng")) < 0 ||
        write_u64(label, rng, "dropout_seed", m->dropout_seed) ||
        write_u64(label, rng, "dropout_offset", m->dropout_offset))
        goto done;
    if ((data = create_group(label, file, "data")) < 0 ||
        write_u64(label, data, "seed", m->data_seed) ||
        write_attr(label, data, "shuffle", H5T_STD_U8LE, H5T_NATIVE_UINT8, &shuffle) ||
        write_i64(label, data, "seq_len", m->data_seq_len) ||
        write_i64(label, data, "position", m->data_position))
        goto done;
    if ((sched = create_group(label, file, "schedule")) < 0 ||
        write_i64(label, sched, "position", m->step) ||
        write_attr(label, sched, "lr", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &m->lr))
        goto done;
    st = BT_OK;
done:
    h5_close_quietly(sched);
    h5_close_quietly(data);
    h5_close_quietly(rng);
    return st;
}

/* Writes the whole checkpoint to `path` (a temporary name) and closes it. */
static bt_status write_file(const char *path, const struct nn_param_list *params,
                            const struct optim *opt, const struct ckpt_meta *meta) {
    char label[CKPT_LABEL_MAX];
    hid_t file = -1;
    snprintf(label, sizeof label, "checkpoint %s", path);
    H5_CHECK(label, file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
    if (write_run_state(label, file, meta) != BT_OK || write_model(label, file, params) != BT_OK ||
        write_optimizer(label, file, opt) != BT_OK)
        goto fail;
    H5_CHECK(label, H5Fflush(file, H5F_SCOPE_GLOBAL));
    H5_CHECK(label, H5Fclose(file));
    return BT_OK;
fail:
    h5_close_quietly(file);
    return BT_ERR;
}

/* Replaces <dir>/latest with one line naming `file_name`, atomically. */
static bt_status write_latest(const char *dir, const char *file_name) {
    char tmp[PATH_MAX_LEN], final[PATH_MAX_LEN];
    snprintf(tmp, sizeof tmp, "%s/.latest.tmp", dir);
    snprintf(final, sizeof final, "%s/latest", dir);
    FILE *f = fopen(tmp, "w");
    if (!f) return bt_error("checkpoint %s: cannot create: %s", tmp, strerror(errno));
    bool ok = fprintf(f, "%s\n", file_name) > 0 && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int err = errno;
    if (fclose(f) != 0 && ok) {
        ok = false;
        err = errno;
    }
    if (!ok) {
        unlink(tmp);
        return bt_error("checkpoint %s: cannot write: %s", tmp, strerror(err));
    }
    if (commit_rename(dir, tmp, final) != BT_OK) {
        unlink(tmp);
        return BT_ERR;
    }
    return BT_OK;
}

/* ---- pruning: keep the file just written and the newest keep-1 others ---- */

/* step of a name "step_<digits>.h5", or -1 */
static int64_t step_of_name(const char *name) {
    int64_t step = 0;
    const char *p = name;
    if (strncmp(p, "step_", 5) != 0) return -1;
    p += 5;
    if (*p < '0' || *p > '9') return -1;
    for (; *p >= '0' && *p <= '9'; p++)
        step = step * 10 + (*p - '0');
    return strcmp(p, ".h5") == 0 ? step : -1;
}

static int compare_desc(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x < y) - (x > y);
}

static bt_status prune(const char *dir, int64_t keep, int64_t just_written) {
    int64_t *steps = NULL, n = 0, cap = 0;
    DIR *d = opendir(dir);
    if (!d) return bt_error("checkpoint dir '%s': cannot list: %s", dir, strerror(errno));
    for (struct dirent *e; (e = readdir(d));) {
        int64_t step = step_of_name(e->d_name);
        if (step < 0 || step == just_written) continue;
        if (n == cap) {
            int64_t *grown = realloc(steps, (size_t)(cap = cap ? 2 * cap : 16) * sizeof *steps);
            if (!grown) goto fail;
            steps = grown;
        }
        steps[n++] = step;
    }
    closedir(d);
    d = NULL;
    if (n > 1) qsort(steps, (size_t)n, sizeof *steps, compare_desc);
    for (int64_t i = keep - 1; i < n; i++) {
        char path[PATH_MAX_LEN];
        snprintf(path, sizeof path, "%s/step_%08lld.h5", dir, (long long)steps[i]);
        if (unlink(path) != 0 && errno != ENOENT) {
            bt_error("checkpoint %s: cannot delete old checkpoint: %s", path, strerror(errno));
            goto fail;
        }
    }
    free(steps);
    return BT_OK;
fail:
    if (!bt_has_error()) bt_error("checkpoint dir '%s': out of memory while pruning", dir);
    if (d) closedir(d);
    free(steps);
    return BT_ERR;
}

/* ---- public ---- */

bt_status ckpt_save(const char *dir, const struct nn_param_list *params, const struct optim *opt,
                    const struct ckpt_meta *meta, int64_t keep) {
    char name[64], tmp[PATH_MAX_LEN], final[PATH_MAX_LEN];
    if (meta->step < 0) return bt_error("checkpoint: step %lld is negative", (long long)meta->step);
    snprintf(name, sizeof name, "step_%08lld.h5", (long long)meta->step);
    if (snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name) >= (int)sizeof tmp)
        return bt_error("checkpoint dir '%s': path too long", dir);
    snprintf(final, sizeof final, "%s/%s", dir, name);
    h5_silence();
    if (make_dirs(dir) != BT_OK) return BT_ERR;
    if (write_file(tmp, params, opt, meta) != BT_OK || fsync_path(tmp, false) != BT_OK) {
        unlink(tmp);
        return BT_ERR;
    }
    if (commit_rename(dir, tmp, final) != BT_OK) {
        unlink(tmp);
        return BT_ERR;
    }
    if (write_latest(dir, name) != BT_OK) return BT_ERR;
    return keep > 0 ? prune(dir, keep, meta->step) : BT_OK;
}
