/* HDF5 checkpoints (docs/checkpoint.md): save a model's parameters and the run's metadata to
 * <dir>/step_<8-digit step>.h5 atomically (temp file, fsync, rename, fsync dir), point <dir>/latest
 * at it, prune old files; load /model/<name> back with every mismatch named. Uses data/h5util.h. */
#include "data/checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
    if (fd < 0) return bt_error("%s: cannot open to fsync: %s", path, strerror(errno));
    if (fsync(fd) != 0) {
        int err = errno;
        close(fd);
        return bt_error("%s: fsync failed: %s", path, strerror(err));
    }
    close(fd);
    return BT_OK;
}

/* rename(2) into place, then fsync the directory holding both names */
static bt_status commit_rename(const char *dir, const char *tmp, const char *final) {
    if (rename(tmp, final) != 0)
        return bt_error("%s: cannot rename to '%s': %s", tmp, final, strerror(errno));
    return fsync_path(dir, true);
}

/* ---- writing ---- */

static bt_status check_saveable(const char *name, const bt_tensor *t) {
    if (t->dtype != BT_F32 || t->storage->device.type != BT_DEVICE_CPU || !bt_is_contiguous(t))
        return bt_error("checkpoint: parameter %s must be a contiguous float32 CPU tensor (got %s)",
                        name, bt_dtype_name(t->dtype));
    return BT_OK;
}

static bt_status write_param(const char *path, hid_t model, const char *name, const bt_tensor *t) {
    hid_t space = -1, dset = -1;
    hsize_t dims[BT_MAX_DIMS];
    for (int d = 0; d < t->ndim; d++)
        dims[d] = (hsize_t)t->shape[d];
    if (check_saveable(name, t) != BT_OK) return BT_ERR;
    if (t->ndim == 0)
        H5_CHECK(path, space = H5Screate(H5S_SCALAR));
    else
        H5_CHECK(path, space = H5Screate_simple(t->ndim, dims, NULL));
    H5_CHECK(path, dset = H5Dcreate2(model, name, H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT,
                                     H5P_DEFAULT));
    H5_CHECK(path, H5Dwrite(dset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, bt_data(t)));
    H5_CHECK(path, H5Dclose(dset));
    H5_CHECK(path, H5Sclose(space));
    return BT_OK;
fail:
    h5_close_quietly(dset);
    h5_close_quietly(space);
    return BT_ERR;
}

static bt_status write_int_attr(const char *path, hid_t obj, const char *name, hid_t file_type,
                                hid_t mem_type, const void *value) {
    hid_t space = -1, attr = -1;
    H5_CHECK(path, space = H5Screate(H5S_SCALAR));
    H5_CHECK(path, attr = H5Acreate2(obj, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT));
    H5_CHECK(path, H5Awrite(attr, mem_type, value));
    H5_CHECK(path, H5Aclose(attr));
    H5_CHECK(path, H5Sclose(space));
    return BT_OK;
fail:
    h5_close_quietly(attr);
    h5_close_quietly(space);
    return BT_ERR;
}

/* A variable-length UTF-8 string type: h5py reads it as str (attributes) or bytes (datasets). */
static hid_t vlen_string_type(const char *path) {
    hid_t type = -1;
    H5_CHECK(path, type = H5Tcopy(H5T_C_S1));
    H5_CHECK(path, H5Tset_size(type, H5T_VARIABLE));
    H5_CHECK(path, H5Tset_cset(type, H5T_CSET_UTF8));
    return type;
fail:
    h5_close_quietly(type);
    return -1;
}

/* A scalar string as attribute `name` of obj (as_dataset false) or as dataset `name` in obj. */
static bt_status write_string(const char *path, hid_t obj, const char *name, const char *text,
                              bool as_dataset) {
    hid_t type = -1, space = -1, item = -1;
    if ((type = vlen_string_type(path)) < 0) return BT_ERR;
    H5_CHECK(path, space = H5Screate(H5S_SCALAR));
    if (as_dataset) {
        H5_CHECK(path,
                 item = H5Dcreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
        H5_CHECK(path, H5Dwrite(item, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, &text));
        H5_CHECK(path, H5Dclose(item));
    } else {
        H5_CHECK(path, item = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT));
        H5_CHECK(path, H5Awrite(item, type, &text));
        H5_CHECK(path, H5Aclose(item));
    }
    H5_CHECK(path, H5Sclose(space));
    H5_CHECK(path, H5Tclose(type));
    return BT_OK;
fail:
    h5_close_quietly(item);
    h5_close_quietly(space);
    h5_close_quietly(type);
    return BT_ERR;
}

static bt_status write_metadata(const char *path, hid_t file, const struct ckpt_meta *meta) {
    int format_version = CKPT_FORMAT_VERSION;
    if (write_int_attr(path, file, "step", H5T_STD_I64LE, H5T_NATIVE_INT64, &meta->step) ||
        write_int_attr(path, file, "tokens_seen", H5T_STD_I64LE, H5T_NATIVE_INT64,
                       &meta->tokens_seen) ||
        write_int_attr(path, file, "format_version", H5T_STD_I32LE, H5T_NATIVE_INT,
                       &format_version) ||
        write_string(path, file, "braid_version", BRAID_VERSION, false) ||
        write_string(path, file, "config", meta->config_yaml ? meta->config_yaml : "", true))
        return BT_ERR;
    return BT_OK;
}

/* Writes the whole checkpoint to `path` (a temporary name) and closes it. */
static bt_status write_file(const char *path, const struct nn_param_list *params,
                            const struct ckpt_meta *meta) {
    hid_t file = -1, model = -1;
    H5_CHECK(path, file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
    H5_CHECK(path, model = H5Gcreate2(file, "model", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    for (int64_t i = 0; i < params->count; i++)
        if (write_param(path, model, params->names[i], params->tensors[i]) != BT_OK) goto fail;
    H5_CHECK(path, H5Gclose(model));
    model = -1;
    if (write_metadata(path, file, meta) != BT_OK) goto fail;
    H5_CHECK(path, H5Fflush(file, H5F_SCOPE_GLOBAL));
    H5_CHECK(path, H5Fclose(file));
    return BT_OK;
fail:
    h5_close_quietly(model);
    h5_close_quietly(file);
    return BT_ERR;
}

/* Replaces <dir>/latest with one line naming `file_name`, atomically. */
static bt_status write_latest(const char *dir, const char *file_name) {
    char tmp[PATH_MAX_LEN], final[PATH_MAX_LEN];
    snprintf(tmp, sizeof tmp, "%s/.latest.tmp", dir);
    snprintf(final, sizeof final, "%s/latest", dir);
    FILE *f = fopen(tmp, "w");
    if (!f) return bt_error("%s: cannot create: %s", tmp, strerror(errno));
    bool ok = fprintf(f, "%s\n", file_name) > 0 && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int err = errno;
    if (fclose(f) != 0 && ok) {
        ok = false;
        err = errno;
    }
    if (!ok) {
        unlink(tmp);
        return bt_error("%s: cannot write: %s", tmp, strerror(err));
    }
    return commit_rename(dir, tmp, final);
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
            bt_error("%s: cannot delete old checkpoint: %s", path, strerror(errno));
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

bt_status ckpt_save(const char *dir, const struct nn_param_list *params,
                    const struct ckpt_meta *meta, int64_t keep) {
    char name[64], tmp[PATH_MAX_LEN], final[PATH_MAX_LEN];
    if (meta->step < 0) return bt_error("checkpoint: step %lld is negative", (long long)meta->step);
    snprintf(name, sizeof name, "step_%08lld.h5", (long long)meta->step);
    if (snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name) >= (int)sizeof tmp)
        return bt_error("checkpoint dir '%s': path too long", dir);
    snprintf(final, sizeof final, "%s/%s", dir, name);
    h5_silence();
    if (make_dirs(dir) != BT_OK) return BT_ERR;
    if (write_file(tmp, params, meta) != BT_OK || fsync_path(tmp, false) != BT_OK) {
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

bt_status ckpt_latest(const char *dir, char *buf, size_t size) {
    char pointer[PATH_MAX_LEN], name[256];
    snprintf(pointer, sizeof pointer, "%s/latest", dir);
    FILE *f = fopen(pointer, "r");
    if (!f) {
        if (errno == ENOENT) return bt_error("checkpoint dir '%s': no latest checkpoint", dir);
        return bt_error("%s: cannot open: %s", pointer, strerror(errno));
    }
    bool got = fgets(name, sizeof name, f) != NULL;
    fclose(f);
    size_t len = got ? strcspn(name, "\r\n") : 0;
    name[len] = '\0';
    if (len == 0 || strchr(name, '/'))
        return bt_error("%s: expected one line naming a step_*.h5 file, got '%s'", pointer, name);
    if (snprintf(buf, size, "%s/%s", dir, name) >= (int)size)
        return bt_error("%s: path '%s/%s' too long for the buffer", pointer, dir, name);
    if (access(buf, R_OK) != 0)
        return bt_error("%s: names '%s', which cannot be read: %s", pointer, name, strerror(errno));
    return BT_OK;
}

/* ---- loading ---- */

static const char *h5_dtype_name(hid_t type, char *buf, size_t size) {
    H5T_class_t cls = H5Tget_class(type);
    size_t bits = 8 * H5Tget_size(type);
    if (cls == H5T_FLOAT)
        snprintf(buf, size, "float%zu", bits);
    else if (cls == H5T_INTEGER)
        snprintf(buf, size, "%sint%zu", H5Tget_sign(type) == H5T_SGN_NONE ? "u" : "", bits);
    else if (cls == H5T_STRING)
        snprintf(buf, size, "string");
    else
        snprintf(buf, size, "a non-numeric type");
    return buf;
}

static const char *dims_str(int ndim, const hsize_t *dims, char *buf, size_t size) {
    size_t used = (size_t)snprintf(buf, size, "(");
    for (int d = 0; d < ndim && used < size; d++)
        used += (size_t)snprintf(buf + used, size - used, "%s%llu", d ? "," : "",
                                 (unsigned long long)dims[d]);
    if (used < size) snprintf(buf + used, size - used, ")");
    return buf;
}

/* Checks that /model/<name> exists, is float32 and has t's shape. */
static bt_status check_param(const char *path, hid_t model, const char *name, const bt_tensor *t) {
    hid_t dset = -1, type = -1, space = -1;
    hsize_t dims[H5S_MAX_RANK];
    char got[160], want[160];
    htri_t exists;
    int ndim;
    if (check_saveable(name, t) != BT_OK) return BT_ERR;
    H5_CHECK(path, exists = H5Lexists(model, name, H5P_DEFAULT));
    if (!exists) return bt_error("%s: dataset /model/%s not found", path, name);
    H5_CHECK(path, dset = H5Dopen2(model, name, H5P_DEFAULT));
    H5_CHECK(path, type = H5Dget_type(dset));
    if (H5Tget_class(type) != H5T_FLOAT || H5Tget_size(type) != 4) {
        bt_error("%s: dataset /model/%s has dtype %s, expected float32", path, name,
                 h5_dtype_name(type, got, sizeof got));
        goto fail;
    }
    H5_CHECK(path, space = H5Dget_space(dset));
    H5_CHECK(path, ndim = H5Sget_simple_extent_ndims(space));
    H5_CHECK(path, H5Sget_simple_extent_dims(space, dims, NULL));
    bool same = ndim == t->ndim;
    for (int d = 0; same && d < ndim; d++)
        same = dims[d] == (hsize_t)t->shape[d];
    if (!same) {
        bt_error("%s: dataset /model/%s has shape %s, expected %s", path, name,
                 dims_str(ndim, dims, got, sizeof got), bt_shape_str(t, want, sizeof want));
        goto fail;
    }
    H5_CHECK(path, H5Sclose(space));
    space = -1;
    H5_CHECK(path, H5Tclose(type));
    type = -1;
    H5_CHECK(path, H5Dclose(dset));
    return BT_OK;
fail:
    h5_close_quietly(space);
    h5_close_quietly(type);
    h5_close_quietly(dset);
    return BT_ERR;
}

/* Every link in /model must name a parameter. */
static bt_status check_no_extra(const char *path, hid_t model, const struct nn_param_list *params) {
    H5G_info_t info;
    char name[1024];
    H5_CHECK(path, H5Gget_info(model, &info));
    for (hsize_t i = 0; i < info.nlinks; i++) {
        ssize_t len;
        H5_CHECK(path, len = H5Lget_name_by_idx(model, ".", H5_INDEX_NAME, H5_ITER_INC, i, name,
                                                sizeof name, H5P_DEFAULT));
        bool taken = false;
        for (int64_t p = 0; p < params->count && !taken; p++)
            taken = strcmp(params->names[p], name) == 0;
        if (!taken)
            return bt_error("%s: dataset /model/%s is not a parameter of this model", path, name);
    }
    return BT_OK;
fail:
    return BT_ERR;
}

static bt_status read_params(const char *path, hid_t model, const struct nn_param_list *params) {
    hid_t dset = -1;
    for (int64_t i = 0; i < params->count; i++) {
        H5_CHECK(path, dset = H5Dopen2(model, params->names[i], H5P_DEFAULT));
        H5_CHECK(path, H5Dread(dset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                               bt_data(params->tensors[i])));
        H5_CHECK(path, H5Dclose(dset));
        dset = -1;
    }
    return BT_OK;
fail:
    h5_close_quietly(dset);
    return BT_ERR;
}

/* Opens path read-only; anything HDF5 cannot open is "not a readable HDF5 file". */
static hid_t open_readonly(const char *path) {
    if (access(path, R_OK) != 0) {
        bt_error("%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) {
        H5Eclear2(H5E_DEFAULT);
        bt_error("%s: not a readable HDF5 file", path);
    }
    return file;
}

bt_status ckpt_load_model(const char *path, const struct nn_param_list *params) {
    hid_t file = -1, model = -1;
    htri_t exists;
    h5_silence();
    if ((file = open_readonly(path)) < 0) return BT_ERR;
    H5_CHECK(path, exists = H5Lexists(file, "model", H5P_DEFAULT));
    if (!exists) {
        bt_error("%s: group /model not found", path);
        goto fail;
    }
    H5_CHECK(path, model = H5Gopen2(file, "model", H5P_DEFAULT));
    /* check everything before writing anything, so a failed load leaves the parameters as they
     * were */
    for (int64_t i = 0; i < params->count; i++)
        if (check_param(path, model, params->names[i], params->tensors[i]) != BT_OK) goto fail;
    if (check_no_extra(path, model, params) != BT_OK) goto fail;
    if (read_params(path, model, params) != BT_OK) goto fail;
    H5_CHECK(path, H5Gclose(model));
    model = -1;
    H5_CHECK(path, H5Fclose(file));
    return BT_OK;
fail:
    h5_close_quietly(model);
    h5_close_quietly(file);
    return BT_ERR;
}
