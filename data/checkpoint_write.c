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

#include "comm/mpi.h"
#include "comm/shard.h"
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

/* One save in progress: the file, the ranks writing it together, and the tensors written so far
 * with the CRC-32 and byte count of this rank's part of each, for their crc32 attributes. */
struct writer {
    char label[CKPT_LABEL_MAX]; /* "checkpoint <tmp path>" */
    hid_t file;
    struct comm *group; /* NULL: this process alone */
    int rank, size;
    /* a failed data write (disk full): the collective calls go on, the outcome is agreed after */
    bool data_failed;
    char data_error[2 * CKPT_LABEL_MAX + 300];
    int64_t n, cap;
    char **paths;
    uint32_t *crc;
    int64_t *nbytes;
};

/* Records the first failed data write (independent I/O: the other ranks do not wait for it) and
 * carries on, so that every rank still makes the same collective calls. */
static void data_write_failed(struct writer *w, const char *path) {
    char reason[256];
    h5_reason(reason, sizeof reason);
    if (!w->data_failed)
        snprintf(w->data_error, sizeof w->data_error, "%s: writing %s failed: %s", w->label, path,
                 reason);
    w->data_failed = true;
}

static bt_status remember(struct writer *w, const char *path, uint32_t crc, int64_t nbytes) {
    if (w->n == w->cap) {
        int64_t cap = w->cap ? 2 * w->cap : 256;
        char **paths = realloc(w->paths, (size_t)cap * sizeof *paths);
        if (paths) w->paths = paths;
        uint32_t *crcs = paths ? realloc(w->crc, (size_t)cap * sizeof *crcs) : NULL;
        if (crcs) w->crc = crcs;
        int64_t *sizes = crcs ? realloc(w->nbytes, (size_t)cap * sizeof *sizes) : NULL;
        if (!sizes) return bt_error("%s: out of memory", w->label);
        w->nbytes = sizes;
        w->cap = cap;
    }
    if (!(w->paths[w->n] = strdup(path))) return bt_error("%s: out of memory", w->label);
    w->crc[w->n] = crc;
    w->nbytes[w->n] = nbytes;
    w->n++;
    return BT_OK;
}

/* Dataset `name` of obj (full logical shape ndim/shape, float32 or int64), created by every rank;
 * this rank writes rows [row0, row0 + rows) from `data` (contiguous). */
static bt_status write_rows(struct writer *w, hid_t obj, const char *path, const char *name,
                            bt_dtype dtype, int ndim, const int64_t *shape, const void *data,
                            int64_t row0, int64_t rows) {
    hid_t fspace = -1, mspace = -1, dset = -1;
    hsize_t dims[BT_MAX_DIMS], start[BT_MAX_DIMS] = {0}, count[BT_MAX_DIMS];
    bool f32 = dtype == BT_F32;
    if (!f32 && dtype != BT_I64)
        return bt_error("%s: %s must be float32 or int64 (got %s)", w->label, path,
                        bt_dtype_name(dtype));
    int64_t row_elems = 1;
    for (int d = 0; d < ndim; d++) {
        dims[d] = count[d] = (hsize_t)shape[d];
        if (d > 0) row_elems *= shape[d];
    }
    if (ndim == 0)
        H5_CHECK(w->label, fspace = H5Screate(H5S_SCALAR));
    else
        H5_CHECK(w->label, fspace = H5Screate_simple(ndim, dims, NULL));
    H5_CHECK(w->label, dset = H5Dcreate2(obj, name, f32 ? H5T_IEEE_F32LE : H5T_STD_I64LE, fspace,
                                         H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    int64_t nbytes = rows * row_elems * (int64_t)bt_dtype_size(dtype);
    if (rows > 0) {
        if (ndim > 0) {
            start[0] = (hsize_t)row0;
            count[0] = (hsize_t)rows;
            H5_CHECK(w->label,
                     H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, count, NULL));
            H5_CHECK(w->label, mspace = H5Screate_simple(ndim, count, NULL));
        } else {
            H5_CHECK(w->label, mspace = H5Screate(H5S_SCALAR));
        }
        if (H5Dwrite(dset, f32 ? H5T_NATIVE_FLOAT : H5T_NATIVE_INT64, mspace, fspace, H5P_DEFAULT,
                     data) < 0)
            data_write_failed(w, path);
        H5_CHECK(w->label, H5Sclose(mspace));
        mspace = -1;
    }
    H5_CHECK(w->label, H5Dclose(dset));
    H5_CHECK(w->label, H5Sclose(fspace));
    return remember(w, path, rows > 0 ? ckpt_crc32(data, (size_t)nbytes) : 0, nbytes);
fail:
    h5_close_quietly(mspace);
    h5_close_quietly(dset);
    h5_close_quietly(fspace);
    return BT_ERR;
}

static bt_status check_tensor(struct writer *w, const char *path, const bt_tensor *t) {
    if (t->storage->device.type != BT_DEVICE_CPU || !bt_is_contiguous(t))
        return bt_error("%s: %s must be a contiguous CPU tensor", w->label, path);
    return BT_OK;
}

/* A tensor every rank holds whole: each rank writes its share of the rows. */
static bt_status write_replicated(struct writer *w, hid_t obj, const char *path, const char *name,
                                  const bt_tensor *t) {
    if (check_tensor(w, path, t) != BT_OK) return BT_ERR;
    int64_t n = t->ndim ? t->shape[0] : 1, lo, hi;
    comm_rows_of(n, w->rank, w->size, &lo, &hi);
    int64_t row_bytes = t->ndim ? (int64_t)bt_nbytes(t) / (n ? n : 1) : (int64_t)bt_nbytes(t);
    return write_rows(w, obj, path, name, t->dtype, t->ndim, t->shape,
                      (const char *)bt_data(t) + lo * row_bytes, lo, hi - lo);
}

/* One crc32 attribute per tensor: every rank's part's CRC-32, combined in rank order (zlib's
 * crc32_combine), is the CRC-32 of the whole tensor. */
static bt_status write_checksums(struct writer *w) {
    int64_t n = w->n;
    bt_status st = BT_ERR;
    bt_tensor *mine = bt_empty(BT_SHAPE(2 * (n ? n : 1)), BT_I64, bt_cpu());
    bt_tensor *all = bt_empty(BT_SHAPE(2 * (n ? n : 1) * w->size), BT_I64, bt_cpu());
    hid_t dset = -1, space = -1, attr = -1;
    if (!mine || !all) return BT_ERR;
    int64_t *m = bt_data(mine), *a = bt_data(all);
    for (int64_t i = 0; i < n; i++) {
        m[2 * i] = w->crc[i];
        m[2 * i + 1] = w->nbytes[i];
    }
    if (w->size > 1) {
        if (comm_allgather(w->group, mine, all) != BT_OK) return bt_error_prefix(w->label);
    } else {
        memcpy(a, m, (size_t)(2 * n) * sizeof *a);
    }
    for (int64_t i = 0; i < n; i++) {
        uLong crc = (uLong)a[2 * i];
        for (int r = 1; r < w->size; r++) {
            const int64_t *part = a + (int64_t)r * 2 * (n ? n : 1) + 2 * i;
            crc = crc32_combine(crc, (uLong)part[0], (z_off_t)part[1]);
        }
        uint32_t value = (uint32_t)crc;
        H5_CHECK(w->label, dset = H5Dopen2(w->file, w->paths[i], H5P_DEFAULT));
        H5_CHECK(w->label, space = H5Screate(H5S_SCALAR));
        H5_CHECK(w->label, attr = H5Acreate2(dset, CKPT_CRC_ATTR, H5T_STD_U32LE, space, H5P_DEFAULT,
                                             H5P_DEFAULT));
        H5_CHECK(w->label, H5Awrite(attr, H5T_NATIVE_UINT32, &value));
        H5_CHECK(w->label, H5Aclose(attr));
        H5_CHECK(w->label, H5Sclose(space));
        H5_CHECK(w->label, H5Dclose(dset));
        attr = space = dset = -1;
    }
    st = BT_OK;
fail:
    h5_close_quietly(attr);
    h5_close_quietly(space);
    h5_close_quietly(dset);
    return st;
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

/* A scalar string as attribute `name` of obj (as_dataset false: variable-length) or as dataset
 * `name` in obj (fixed-length, NUL-terminated: parallel HDF5 cannot write variable-length
 * datasets). In a parallel save rank 0 writes the dataset's bytes. */
static bt_status write_string(const char *label, hid_t obj, const char *name, const char *text,
                              bool as_dataset, int rank) {
    hid_t type = -1, space = -1, item = -1;
    if (!text) text = "";
    H5_CHECK(label, space = H5Screate(H5S_SCALAR));
    if (as_dataset) {
        H5_CHECK(label, type = H5Tcopy(H5T_C_S1));
        H5_CHECK(label, H5Tset_size(type, strlen(text) + 1));
        H5_CHECK(label, H5Tset_strpad(type, H5T_STR_NULLTERM));
        H5_CHECK(label, H5Tset_cset(type, H5T_CSET_UTF8));
        H5_CHECK(label,
                 item = H5Dcreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
        if (rank == 0) H5_CHECK(label, H5Dwrite(item, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, text));
        H5_CHECK(label, H5Dclose(item));
    } else {
        if ((type = vlen_string_type(label)) < 0) goto fail;
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

static bt_status write_model(struct writer *w, const struct nn_param_list *params) {
    hid_t model = -1;
    char path[CKPT_LABEL_MAX];
    H5_CHECK(w->label, model = H5Gcreate2(w->file, "model", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    for (int64_t i = 0; i < params->count; i++) {
        snprintf(path, sizeof path, "/model/%s", params->names[i]);
        if (write_replicated(w, model, path, params->names[i], params->tensors[i]) != BT_OK)
            goto fail;
    }
    H5_CHECK(w->label, H5Gclose(model));
    return BT_OK;
fail:
    h5_close_quietly(model);
    return BT_ERR;
}

static int64_t optim_index(const struct optim *opt, const char *name) {
    for (int64_t i = 0; opt && i < optim_num_params(opt); i++)
        if (strcmp(optim_param_name(opt, i), name) == 0) return i;
    return -1;
}

/* State `state` of parameter p (full tensor `full`): every rank creates the dataset; with
 * opt_row0, this rank's optimizer holds rows [opt_row0[i], +rows) of it (or none, i < 0),
 * otherwise the whole of it, of which it writes its share. */
static bt_status write_state(struct writer *w, hid_t group, const char *path, const char *state,
                             const bt_tensor *full, const struct optim *opt, int64_t i,
                             const int64_t *opt_row0) {
    bt_tensor *t = i >= 0 ? optim_state(opt, i, state) : NULL;
    if (i >= 0 && !t) return BT_ERR;
    if (t && check_tensor(w, path, t) != BT_OK) return BT_ERR;
    if (!opt_row0) {
        if (!t) return bt_error("%s: the optimizer has no state for %s", w->label, path);
        return write_replicated(w, group, path, state, t);
    }
    if (t && t->ndim == 0) /* a per-parameter scalar (AdamW's step): row 0's owner writes it */
        return write_rows(w, group, path, state, t->dtype, 0, NULL, bt_data(t), 0,
                          opt_row0[i] == 0 ? 1 : 0);
    if (!t) { /* a shard of no rows on this rank; the dataset is still created collectively */
        bool scalar = strcmp(state, "step") == 0;
        return write_rows(w, group, path, state, scalar ? BT_I64 : BT_F32, scalar ? 0 : full->ndim,
                          full->shape, NULL, 0, 0);
    }
    return write_rows(w, group, path, state, t->dtype, full->ndim, full->shape, bt_data(t),
                      opt_row0[i], t->ndim ? t->shape[0] : 1);
}

/* /optimizer: attributes name and step_count, then a group per parameter holding its state.
 * Every rank walks the full parameter list, so the collective creates match. */
static bt_status write_optimizer(struct writer *w, const struct nn_param_list *params,
                                 const struct optim *opt, const int64_t *opt_row0) {
    hid_t group = -1, param = -1;
    const char *const *states = NULL;
    char path[CKPT_LABEL_MAX];
    int n_states = opt ? optim_state_names(opt, &states) : 0;
    const char *name = !opt ? "" : optim_get_config(opt)->kind == OPTIM_ADAMW ? "adamw" : "sgd";
    H5_CHECK(w->label,
             group = H5Gcreate2(w->file, "optimizer", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    if (write_string(w->label, group, "name", name, false, w->rank) != BT_OK ||
        write_i64(w->label, group, "step_count", opt ? optim_step_count(opt) : 0) != BT_OK)
        goto fail;
    for (int64_t p = 0; opt && n_states > 0 && p < params->count; p++) {
        int64_t i = optim_index(opt, params->names[p]);
        if (i < 0 && !opt_row0) continue; /* not optimized at all: no state */
        H5_CHECK(w->label, param = H5Gcreate2(group, params->names[p], H5P_DEFAULT, H5P_DEFAULT,
                                              H5P_DEFAULT));
        for (int s = 0; s < n_states; s++) {
            snprintf(path, sizeof path, "/optimizer/%s/%s", params->names[p], states[s]);
            if (write_state(w, param, path, states[s], params->tensors[p], opt, i, opt_row0) !=
                BT_OK)
                goto fail;
        }
        H5_CHECK(w->label, H5Gclose(param));
        param = -1;
    }
    H5_CHECK(w->label, H5Gclose(group));
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

static bt_status write_run_state(const char *label, hid_t file, const struct ckpt_meta *m,
                                 int rank) {
    int32_t format_version = CKPT_FORMAT_VERSION;
    hid_t rng = -1, data = -1, sched = -1;
    bt_status st = BT_ERR;
    uint8_t shuffle = m->data_shuffle ? 1 : 0;
    if (write_attr(label, file, "format_version", H5T_STD_I32LE, H5T_NATIVE_INT32,
                   &format_version) ||
        write_string(label, file, "braid_version", BRAID_VERSION, false, rank) ||
        write_i64(label, file, "step", m->step) ||
        write_i64(label, file, "tokens_seen", m->tokens_seen) ||
        write_string(label, file, "config", m->config_yaml, true, rank) ||
        write_string(label, file, "tokenizer", m->tokenizer_yaml, true, rank))
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

static void writer_free(struct writer *w) {
    for (int64_t i = 0; i < w->n; i++)
        free(w->paths[i]);
    free(w->paths);
    free(w->crc);
    free(w->nbytes);
}

/* Opens `path` for writing: by this process alone, or by every rank of the group together through
 * parallel HDF5 (MPI-IO). */
static hid_t create_file(struct writer *w, const char *path) {
    hid_t fapl = -1, file = -1;
    MPI_Comm mpi;
    H5_CHECK(w->label, fapl = H5Pcreate(H5P_FILE_ACCESS));
    if (w->size > 1) {
        if (!comm_mpi_handle(w->group, &mpi)) {
            bt_error("%s: group %s has no MPI communicator", w->label, comm_name(w->group));
            goto fail;
        }
        H5_CHECK(w->label, H5Pset_fapl_mpio(fapl, mpi, MPI_INFO_NULL));
    }
    H5_CHECK(w->label, file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl));
    H5Pclose(fapl);
    return file;
fail:
    h5_close_quietly(fapl);
    return -1;
}

/* Writes the whole checkpoint to `path` (a temporary name) and closes it. Collective over the
 * layout's group: a rank that fails still takes part in the collective calls that follow. */
static bt_status write_file(const char *path, const struct nn_param_list *params,
                            const struct optim *opt, const struct ckpt_meta *meta,
                            const struct ckpt_layout *layout, bool *collective_failed) {
    struct writer w = {.file = -1, .group = layout ? layout->group : NULL, .size = 1};
    if (w.group) {
        w.rank = comm_rank(w.group);
        w.size = comm_size(w.group);
    }
    snprintf(w.label, sizeof w.label, "checkpoint %s", path);
    bt_status st = BT_ERR;
    if ((w.file = create_file(&w, path)) < 0) goto done;
    if (write_run_state(w.label, w.file, meta, w.rank) != BT_OK ||
        write_model(&w, params) != BT_OK ||
        write_optimizer(&w, params, opt, layout ? layout->opt_row0 : NULL) != BT_OK ||
        write_checksums(&w) != BT_OK)
        goto done;
    H5_CHECK(w.label, H5Fflush(w.file, H5F_SCOPE_GLOBAL));
    H5_CHECK(w.label, H5Fclose(w.file));
    w.file = -1;
    st = BT_OK;
fail:
done:
    /* anything but a data write failing breaks the sequence of collective calls */
    *collective_failed = st != BT_OK;
    h5_close_quietly(w.file);
    if (st == BT_OK && w.data_failed) st = bt_error("%s", w.data_error);
    writer_free(&w);
    return st;
}

/* The tensors a rank writes must be contiguous CPU tensors of float32 or int64, and every state
 * the optimizer names must exist: checked before the file is created, so that no rank fails
 * half-way through the collective calls for a reason it could have seen before. */
static bt_status precheck(const struct nn_param_list *params, const struct optim *opt,
                          const char *label) {
    for (int64_t i = 0; i < params->count; i++) {
        const bt_tensor *t = params->tensors[i];
        if (t->storage->device.type != BT_DEVICE_CPU || !bt_is_contiguous(t) ||
            (t->dtype != BT_F32 && t->dtype != BT_I64))
            return bt_error("%s: /model/%s must be a contiguous float32 or int64 CPU tensor", label,
                            params->names[i]);
    }
    const char *const *states = NULL;
    int n_states = opt ? optim_state_names(opt, &states) : 0;
    for (int64_t i = 0; opt && i < optim_num_params(opt); i++)
        for (int s = 0; s < n_states; s++) {
            const bt_tensor *t = optim_state(opt, i, states[s]);
            if (!t) return bt_error_prefix(label);
            if (t->storage->device.type != BT_DEVICE_CPU || !bt_is_contiguous(t))
                return bt_error("%s: /optimizer/%s/%s must be a contiguous CPU tensor", label,
                                optim_param_name(opt, i), states[s]);
        }
    return BT_OK;
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

/* ".step_<digits>.h5.tmp": a save's temporary file. prune runs after this process's save was
 * committed, when no other save of this run is in flight. */
static bool is_stale_temporary(const char *name) {
    size_t len = strlen(name);
    return name[0] == '.' && step_of_name(name + 1) < 0 && len > 5 &&
           strcmp(name + len - 4, ".tmp") == 0 && strncmp(name, ".step_", 6) == 0;
}

static bt_status prune(const char *dir, int64_t keep, int64_t just_written) {
    int64_t *steps = NULL, n = 0, cap = 0;
    DIR *d = opendir(dir);
    if (!d) return bt_error("checkpoint dir '%s': cannot list: %s", dir, strerror(errno));
    for (struct dirent *e; (e = readdir(d));) {
        if (is_stale_temporary(e->d_name)) { /* left by a save that crashed: never read */
            char path[PATH_MAX_LEN];
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
            continue;
        }
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

/* Every rank of the group learns whether all succeeded. */
static bt_status agree(struct comm *group, bt_status mine, const char *path) {
    if (!group || comm_size(group) == 1) return mine;
    double ok = mine == BT_OK ? 1.0 : 0.0;
    if (comm_allreduce_doubles(group, &ok, 1, COMM_MIN) != BT_OK) return BT_ERR;
    if (ok == 1.0) return BT_OK;
    if (mine == BT_OK) bt_error("checkpoint %s: another rank failed to write its part", path);
    return BT_ERR;
}

bt_status ckpt_save_layout(const char *dir, const struct nn_param_list *params,
                           const struct optim *opt, const struct ckpt_meta *meta, int64_t keep,
                           const struct ckpt_layout *layout) {
    char name[64], tmp[PATH_MAX_LEN], final[PATH_MAX_LEN];
    struct comm *group =
        layout && layout->group && comm_size(layout->group) > 1 ? layout->group : NULL;
    bool leader = !group || comm_rank(group) == 0;
    if (meta->step < 0) return bt_error("checkpoint: step %lld is negative", (long long)meta->step);
    snprintf(name, sizeof name, "step_%08lld.h5", (long long)meta->step);
    if (snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name) >= (int)sizeof tmp)
        return bt_error("checkpoint dir '%s': path too long", dir);
    snprintf(final, sizeof final, "%s/%s", dir, name);
    h5_silence();
    char label[CKPT_LABEL_MAX];
    snprintf(label, sizeof label, "checkpoint %s", tmp);
    bt_status st = precheck(params, opt, label);
    if (st == BT_OK && leader) st = make_dirs(dir);
    if (agree(group, st, tmp) != BT_OK) return BT_ERR;
    bool collective_failed = false;
    st = write_file(tmp, params, opt, meta, layout, &collective_failed);
    if (group && collective_failed) {
        /* the ranks' HDF5 calls no longer match: waiting for the others could hang them all */
        fflush(stdout);
        fprintf(stderr, "braid: error: rank %d: %s\n", comm_rank(group), bt_last_error());
        comm_abort(1);
    }
    if (agree(group, st, tmp) != BT_OK) {
        if (leader) unlink(tmp);
        return BT_ERR;
    }
    /* the leader makes it durable and visible; the others wait for the outcome */
    st = BT_OK;
    if (leader) {
        if (fsync_path(tmp, false) != BT_OK || commit_rename(dir, tmp, final) != BT_OK) {
            unlink(tmp);
            st = BT_ERR;
        } else if (write_latest(dir, name) != BT_OK) {
            st = BT_ERR;
        } else if (keep > 0) {
            st = prune(dir, keep, meta->step);
        }
    }
    return agree(group, st, final);
}

bt_status ckpt_save(const char *dir, const struct nn_param_list *params, const struct optim *opt,
                    const struct ckpt_meta *meta, int64_t keep) {
    return ckpt_save_layout(dir, params, opt, meta, keep, NULL);
}
