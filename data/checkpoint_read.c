/* Reading HDF5 checkpoints (docs/checkpoint.md): resolve a path or a directory's `latest`, open a
 * file and check its layout (format version, attributes, groups, every tensor's dtype and
 * checksum attribute), then read tensors with their CRC-32 verified into parameters, optimizer
 * state or new tensors. Every problem is one message `checkpoint PATH: <what is wrong>`. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/checkpoint.h"
#include "data/checkpoint_internal.h"
#include "data/h5util.h"

struct tensor_entry {
    struct ckpt_tensor_info info;
    uint32_t crc;
    bool has_crc; /* always in braid's checkpoints; optional in a weights-only file */
};

struct ckpt_file {
    char *path;
    char label[CKPT_LABEL_MAX]; /* "checkpoint <path>", the start of every message */
    hid_t file;
    struct ckpt_meta meta;
    char *config, *tokenizer, *braid_version, optimizer[16];
    int64_t optimizer_steps;
    struct tensor_entry *tensors;
    int64_t n_tensors, cap_tensors;
    bool weights_only; /* an HDF5 file with just /model datasets (model.init_from) */
};

/* ---- finding the file ---- */

/* <dir>/latest names one file of dir: "step_00000010.h5\n". */
static bt_status read_latest(const char *dir, char *buf, size_t size) {
    char pointer[CKPT_LABEL_MAX], name[256];
    snprintf(pointer, sizeof pointer, "%s/latest", dir);
    FILE *f = fopen(pointer, "r");
    if (!f) {
        if (errno == ENOENT) return bt_error("checkpoint dir '%s': no latest checkpoint", dir);
        return bt_error("checkpoint %s: cannot open: %s", pointer, strerror(errno));
    }
    bool got = fgets(name, sizeof name, f) != NULL;
    fclose(f);
    size_t len = got ? strcspn(name, "\r\n") : 0;
    name[len] = '\0';
    if (len == 0 || strchr(name, '/'))
        return bt_error("checkpoint %s: expected one line naming a step_*.h5 file, got '%s'",
                        pointer, name);
    if (snprintf(buf, size, "%s/%s", dir, name) >= (int)size)
        return bt_error("checkpoint %s: path '%s/%s' is too long", pointer, dir, name);
    if (access(buf, R_OK) != 0)
        return bt_error("checkpoint %s: names '%s', which cannot be read: %s", pointer, name,
                        strerror(errno));
    return BT_OK;
}

bt_status ckpt_resolve(const char *path, char *buf, size_t size) {
    struct stat st;
    if (stat(path, &st) != 0)
        return bt_error("checkpoint %s: cannot open: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) return read_latest(path, buf, size);
    if (snprintf(buf, size, "%s", path) >= (int)size)
        return bt_error("checkpoint %s: path is too long", path);
    return BT_OK;
}

/* ---- attributes and strings ---- */

/* Whether a dataspace (closed here) holds exactly one element: what an attribute or string
 * dataset of braid's must, so a damaged file cannot make a read overflow its buffer. */
static bool is_scalar(hid_t space) {
    if (space < 0) {
        H5Eclear2(H5E_DEFAULT);
        return false;
    }
    hssize_t n = H5Sget_simple_extent_npoints(space);
    H5Sclose(space);
    H5Eclear2(H5E_DEFAULT);
    return n == 1;
}

/* Reads scalar attribute `name` of obj (called `where` in messages) as mem_type. */
static bt_status read_attr(struct ckpt_file *f, hid_t obj, const char *where, const char *name,
                           hid_t mem_type, void *out) {
    hid_t attr = -1;
    htri_t exists;
    H5_CHECK(f->label, exists = H5Aexists(obj, name));
    if (!exists) return bt_error("%s: attribute %s%s not found", f->label, where, name);
    H5_CHECK(f->label, attr = H5Aopen(obj, name, H5P_DEFAULT));
    if (!is_scalar(H5Aget_space(attr))) {
        bt_error("%s: attribute %s%s is not a single value", f->label, where, name);
        goto fail;
    }
    H5_CHECK(f->label, H5Aread(attr, mem_type, out));
    H5_CHECK(f->label, H5Aclose(attr));
    return BT_OK;
fail:
    h5_close_quietly(attr);
    return BT_ERR;
}

/* A scalar variable-length string attribute (as_dataset false) or dataset `name` of obj, as a
 * malloc'd copy. */
static char *read_string(struct ckpt_file *f, hid_t obj, const char *where, const char *name,
                         bool as_dataset) {
    hid_t item = -1, type = -1, space = -1;
    char *text = NULL, *copy = NULL;
    htri_t exists;
    H5_CHECK(f->label,
             exists = as_dataset ? H5Lexists(obj, name, H5P_DEFAULT) : H5Aexists(obj, name));
    if (!exists) {
        bt_error("%s: %s %s%s not found", f->label, as_dataset ? "dataset" : "attribute", where,
                 name);
        return NULL;
    }
    H5_CHECK(f->label, type = H5Tcopy(H5T_C_S1));
    H5_CHECK(f->label, H5Tset_size(type, H5T_VARIABLE));
    H5_CHECK(f->label, H5Tset_cset(type, H5T_CSET_UTF8));
    if (as_dataset) {
        H5_CHECK(f->label, item = H5Dopen2(obj, name, H5P_DEFAULT));
        if (!is_scalar(H5Dget_space(item))) {
            bt_error("%s: dataset %s%s is not a single string", f->label, where, name);
            goto fail;
        }
        htri_t variable;
        hid_t stored = -1;
        H5_CHECK(f->label, stored = H5Dget_type(item));
        variable = H5Tget_class(stored) == H5T_STRING ? H5Tis_variable_str(stored) : -1;
        size_t size = H5Tget_size(stored);
        if (variable < 0) {
            H5Tclose(stored);
            bt_error("%s: dataset %s%s is not a string", f->label, where, name);
            goto fail;
        }
        if (!variable) { /* braid writes fixed-length strings (parallel HDF5 needs them) */
            if (!(copy = calloc(1, size + 1))) {
                H5Tclose(stored);
                bt_error("%s: out of memory reading %s%s", f->label, where, name);
                goto fail;
            }
            herr_t read = H5Dread(item, stored, H5S_ALL, H5S_ALL, H5P_DEFAULT, copy);
            H5Tclose(stored);
            H5_CHECK(f->label, read);
            h5_close_quietly(item);
            h5_close_quietly(type);
            return copy;
        }
        H5Tclose(stored);
        H5_CHECK(f->label, H5Dread(item, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, &text));
    } else {
        H5_CHECK(f->label, item = H5Aopen(obj, name, H5P_DEFAULT));
        if (!is_scalar(H5Aget_space(item))) {
            bt_error("%s: attribute %s%s is not a single string", f->label, where, name);
            goto fail;
        }
        hid_t stored = H5Aget_type(item);
        htri_t variable =
            stored >= 0 && H5Tget_class(stored) == H5T_STRING ? H5Tis_variable_str(stored) : -1;
        if (stored >= 0) H5Tclose(stored);
        H5Eclear2(H5E_DEFAULT);
        if (variable <= 0) {
            bt_error("%s: attribute %s%s is not a variable-length string", f->label, where, name);
            goto fail;
        }
        H5_CHECK(f->label, H5Aread(item, type, &text));
    }
    copy = strdup(text ? text : "");
    H5_CHECK(f->label, space = H5Screate(H5S_SCALAR));
    H5_CHECK(f->label, H5Dvlen_reclaim(type, space, H5P_DEFAULT, &text));
    h5_close_quietly(space);
    h5_close_quietly(item);
    h5_close_quietly(type);
    if (!copy) bt_error("%s: out of memory reading %s%s", f->label, where, name);
    return copy;
fail:
    h5_close_quietly(space);
    h5_close_quietly(item);
    h5_close_quietly(type);
    free(copy);
    return NULL;
}

/* Opens group `name` of the file; a missing one is named. */
static hid_t open_group(struct ckpt_file *f, hid_t parent, const char *name) {
    hid_t group = -1;
    htri_t exists;
    H5_CHECK(f->label, exists = H5Lexists(parent, name, H5P_DEFAULT));
    if (!exists) {
        bt_error("%s: group /%s not found", f->label, name);
        return -1;
    }
    H5_CHECK(f->label, group = H5Gopen2(parent, name, H5P_DEFAULT));
    return group;
fail:
    return -1;
}

static bt_status read_run_state(struct ckpt_file *f) {
    struct ckpt_meta *m = &f->meta;
    hid_t rng = -1, data = -1, sched = -1, opt = -1;
    uint8_t shuffle = 0;
    char *name = NULL;
    bt_status st = BT_ERR;
    if (read_attr(f, f->file, "/", "step", H5T_NATIVE_INT64, &m->step) ||
        read_attr(f, f->file, "/", "tokens_seen", H5T_NATIVE_INT64, &m->tokens_seen))
        goto done;
    if (!(f->braid_version = read_string(f, f->file, "/", "braid_version", false)) ||
        !(f->config = read_string(f, f->file, "/", "config", true)) ||
        !(f->tokenizer = read_string(f, f->file, "/", "tokenizer", true)))
        goto done;
    m->config_yaml = f->config;
    m->tokenizer_yaml = f->tokenizer;
    if ((rng = open_group(f, f->file, "rng")) < 0 ||
        read_attr(f, rng, "/rng.", "dropout_seed", H5T_NATIVE_UINT64, &m->dropout_seed) ||
        read_attr(f, rng, "/rng.", "dropout_offset", H5T_NATIVE_UINT64, &m->dropout_offset))
        goto done;
    if ((data = open_group(f, f->file, "data")) < 0 ||
        read_attr(f, data, "/data.", "seed", H5T_NATIVE_UINT64, &m->data_seed) ||
        read_attr(f, data, "/data.", "shuffle", H5T_NATIVE_UINT8, &shuffle) ||
        read_attr(f, data, "/data.", "seq_len", H5T_NATIVE_INT64, &m->data_seq_len) ||
        read_attr(f, data, "/data.", "position", H5T_NATIVE_INT64, &m->data_position))
        goto done;
    m->data_shuffle = shuffle != 0;
    if ((sched = open_group(f, f->file, "schedule")) < 0 ||
        read_attr(f, sched, "/schedule.", "lr", H5T_NATIVE_DOUBLE, &m->lr))
        goto done;
    if ((opt = open_group(f, f->file, "optimizer")) < 0 ||
        !(name = read_string(f, opt, "/optimizer.", "name", false)) ||
        read_attr(f, opt, "/optimizer.", "step_count", H5T_NATIVE_INT64, &f->optimizer_steps))
        goto done;
    if (strlen(name) >= sizeof f->optimizer) {
        bt_error("%s: attribute /optimizer.name '%.32s' is not an optimizer", f->label, name);
        goto done;
    }
    strcpy(f->optimizer, name);
    if (m->step < 0 || m->tokens_seen < 0 || m->data_position < 0 || m->data_seq_len < 0) {
        bt_error("%s: negative step, tokens_seen or data position (damaged file)", f->label);
        goto done;
    }
    st = BT_OK;
done:
    free(name);
    h5_close_quietly(opt);
    h5_close_quietly(sched);
    h5_close_quietly(data);
    h5_close_quietly(rng);
    return st;
}

/* ---- the tensor list ---- */

static const char *dtype_words(hid_t type, char *buf, size_t size) {
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

/* Adds dataset `name` of obj as tensor `full` ("/model/wte.weight"): dtype, shape, crc32. */
static bt_status add_tensor(struct ckpt_file *f, hid_t obj, const char *name, const char *full) {
    hid_t dset = -1, type = -1, space = -1;
    H5O_info_t oinfo;
    char words[32];
    int ndim;
    hsize_t dims[H5S_MAX_RANK];
    H5_CHECK(f->label, H5Oget_info_by_name2(obj, name, &oinfo, H5O_INFO_BASIC, H5P_DEFAULT));
    if (oinfo.type != H5O_TYPE_DATASET) return bt_error("%s: %s is not a dataset", f->label, full);
    if (f->n_tensors == f->cap_tensors) {
        int64_t cap = f->cap_tensors ? 2 * f->cap_tensors : 64;
        struct tensor_entry *grown = realloc(f->tensors, (size_t)cap * sizeof *grown);
        if (!grown) return bt_error("%s: out of memory listing tensors", f->label);
        f->tensors = grown;
        f->cap_tensors = cap;
    }
    struct tensor_entry *e = &f->tensors[f->n_tensors];
    memset(e, 0, sizeof *e);
    H5_CHECK(f->label, dset = H5Dopen2(obj, name, H5P_DEFAULT));
    H5_CHECK(f->label, type = H5Dget_type(dset));
    H5T_class_t cls = H5Tget_class(type);
    size_t bytes = H5Tget_size(type);
    if (cls == H5T_FLOAT && bytes == 4)
        e->info.dtype = BT_F32;
    else if (cls == H5T_INTEGER && bytes == 8 && H5Tget_sign(type) == H5T_SGN_2)
        e->info.dtype = BT_I64;
    else {
        bt_error("%s: %s has dtype %s (checkpoints hold float32 and int64 tensors)", f->label, full,
                 dtype_words(type, words, sizeof words));
        goto fail;
    }
    H5_CHECK(f->label, space = H5Dget_space(dset));
    H5_CHECK(f->label, ndim = H5Sget_simple_extent_ndims(space));
    if (ndim > BT_MAX_DIMS) {
        bt_error("%s: %s has %d dimensions (at most %d)", f->label, full, ndim, BT_MAX_DIMS);
        goto fail;
    }
    H5_CHECK(f->label, H5Sget_simple_extent_dims(space, dims, NULL));
    e->info.ndim = ndim;
    for (int d = 0; d < ndim; d++)
        e->info.shape[d] = (int64_t)dims[d];
    char where[CKPT_LABEL_MAX + 2];
    snprintf(where, sizeof where, "%s.", full);
    htri_t has_crc;
    H5_CHECK(f->label, has_crc = H5Aexists(dset, CKPT_CRC_ATTR));
    e->has_crc = has_crc > 0;
    if ((e->has_crc || !f->weights_only) &&
        read_attr(f, dset, where, CKPT_CRC_ATTR, H5T_NATIVE_UINT32, &e->crc) != BT_OK)
        goto fail;
    if (!(e->info.name = strdup(full))) {
        bt_error("%s: out of memory listing tensors", f->label);
        goto fail;
    }
    f->n_tensors++;
    h5_close_quietly(space);
    h5_close_quietly(type);
    h5_close_quietly(dset);
    return BT_OK;
fail:
    h5_close_quietly(space);
    h5_close_quietly(type);
    h5_close_quietly(dset);
    return BT_ERR;
}

/* Name of link i of group obj (in name order), malloc'd. */
static char *link_name(struct ckpt_file *f, hid_t obj, hsize_t i) {
    ssize_t len;
    char *name = NULL;
    H5_CHECK(f->label, len = H5Lget_name_by_idx(obj, ".", H5_INDEX_NAME, H5_ITER_INC, i, NULL, 0,
                                                H5P_DEFAULT));
    if (!(name = malloc((size_t)len + 1))) {
        bt_error("%s: out of memory listing tensors", f->label);
        return NULL;
    }
    H5_CHECK(f->label, H5Lget_name_by_idx(obj, ".", H5_INDEX_NAME, H5_ITER_INC, i, name,
                                          (size_t)len + 1, H5P_DEFAULT));
    return name;
fail:
    free(name);
    return NULL;
}

/* Adds every dataset of group `path` ("/model", "/optimizer/wte.weight"); with `nested`, every
 * member is itself such a group (the per-parameter groups of /optimizer). */
static bt_status list_group(struct ckpt_file *f, hid_t group, const char *path, bool nested) {
    H5G_info_t ginfo;
    H5_CHECK(f->label, H5Gget_info(group, &ginfo));
    for (hsize_t i = 0; i < ginfo.nlinks; i++) {
        char *name = link_name(f, group, i), full[CKPT_LABEL_MAX];
        if (!name) return BT_ERR;
        snprintf(full, sizeof full, "%s/%s", path, name);
        bt_status st;
        if (nested) {
            hid_t sub = -1;
            H5O_info_t oinfo;
            st = H5Oget_info_by_name2(group, name, &oinfo, H5O_INFO_BASIC, H5P_DEFAULT) >= 0 &&
                         oinfo.type == H5O_TYPE_GROUP
                     ? BT_OK
                     : bt_error("%s: %s is not a group of optimizer state", f->label, full);
            H5Eclear2(H5E_DEFAULT);
            if (st == BT_OK && (sub = H5Gopen2(group, name, H5P_DEFAULT)) < 0)
                st = bt_error("%s: cannot open group %s", f->label, full);
            if (st == BT_OK) st = list_group(f, sub, full, false);
            h5_close_quietly(sub);
        } else {
            st = add_tensor(f, group, name, full);
        }
        free(name);
        if (st != BT_OK) return BT_ERR;
    }
    return BT_OK;
fail:
    return BT_ERR;
}

static bt_status list_tensors(struct ckpt_file *f) {
    hid_t model = -1, opt = -1;
    bt_status st = BT_ERR;
    if ((model = open_group(f, f->file, "model")) >= 0 &&
        list_group(f, model, "/model", false) == BT_OK &&
        (opt = open_group(f, f->file, "optimizer")) >= 0 &&
        list_group(f, opt, "/optimizer", true) == BT_OK)
        st = BT_OK;
    h5_close_quietly(opt);
    h5_close_quietly(model);
    return st;
}

static int64_t find_tensor(const struct ckpt_file *f, const char *full) {
    for (int64_t i = 0; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i].info.name, full) == 0) return i;
    return -1;
}

/* ---- opening ---- */

/* Opens path; weights_only accepts, besides braid's checkpoints, any HDF5 file whose /model
 * datasets hold the weights (no format_version, checksums optional): model.init_from's contract. */
static struct ckpt_file *open_file(const char *path, bool weights_only) {
    struct ckpt_file *f = calloc(1, sizeof *f);
    char reason[256];
    int32_t version = 0;
    if (!f || !(f->path = strdup(path))) {
        free(f);
        bt_error("checkpoint %s: out of memory", path);
        return NULL;
    }
    f->file = -1;
    snprintf(f->label, sizeof f->label, "checkpoint %s", path);
    h5_silence();
    struct stat st;
    if (stat(path, &st) != 0 || access(path, R_OK) != 0) {
        bt_error("%s: cannot open: %s", f->label, strerror(errno));
        goto fail;
    }
    if (S_ISDIR(st.st_mode)) {
        bt_error("%s: is a directory (its latest checkpoint is read through ckpt_resolve)",
                 f->label);
        goto fail;
    }
    if ((f->file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT)) < 0) {
        h5_reason(reason, sizeof reason);
        bt_error("%s: not a readable HDF5 file (truncated or damaged%s%s)", f->label,
                 reason[0] ? ": " : "", reason);
        goto fail;
    }
    htri_t has_version = H5Aexists(f->file, "format_version");
    if (has_version <= 0 && weights_only) {
        H5Eclear2(H5E_DEFAULT);
        hid_t model = -1;
        f->weights_only = true;
        f->meta.config_yaml = f->meta.tokenizer_yaml = "";
        if ((model = open_group(f, f->file, "model")) < 0) goto fail;
        bt_status st = list_group(f, model, "/model", false);
        h5_close_quietly(model);
        if (st != BT_OK) goto fail;
        return f;
    }
    if (has_version <= 0) {
        H5Eclear2(H5E_DEFAULT);
        bt_error("%s: no format_version attribute: not a braid checkpoint", f->label);
        goto fail;
    }
    if (read_attr(f, f->file, "/", "format_version", H5T_NATIVE_INT32, &version) != BT_OK)
        goto fail;
    if (version != CKPT_FORMAT_VERSION) {
        bt_error("%s: format_version %d is not one this braid (%s) reads: it reads format %d",
                 f->label, (int)version, BRAID_VERSION, CKPT_FORMAT_VERSION);
        goto fail;
    }
    if (read_run_state(f) != BT_OK || list_tensors(f) != BT_OK) goto fail;
    return f;
fail:
    ckpt_close(f);
    return NULL;
}

struct ckpt_file *ckpt_open(const char *path) {
    return open_file(path, false);
}

void ckpt_close(struct ckpt_file *f) {
    if (!f) return;
    h5_close_quietly(f->file);
    for (int64_t i = 0; i < f->n_tensors; i++)
        free((char *)f->tensors[i].info.name);
    free(f->tensors);
    free(f->config);
    free(f->tokenizer);
    free(f->braid_version);
    free(f->path);
    free(f);
}

const char *ckpt_path(const struct ckpt_file *f) {
    return f->path;
}

const struct ckpt_meta *ckpt_meta(const struct ckpt_file *f) {
    return &f->meta;
}

const char *ckpt_braid_version(const struct ckpt_file *f) {
    return f->braid_version;
}

const char *ckpt_optimizer_name(const struct ckpt_file *f) {
    return f->optimizer;
}

int64_t ckpt_optimizer_steps(const struct ckpt_file *f) {
    return f->optimizer_steps;
}

int64_t ckpt_num_tensors(const struct ckpt_file *f) {
    return f->n_tensors;
}

const struct ckpt_tensor_info *ckpt_tensor(const struct ckpt_file *f, int64_t i) {
    return i >= 0 && i < f->n_tensors ? &f->tensors[i].info : NULL;
}

/* ---- reading tensors ---- */

const char *ckpt_shape_words(int ndim, const int64_t *shape, char *buf, size_t size) {
    size_t used = (size_t)snprintf(buf, size, "(");
    for (int d = 0; d < ndim && used < size; d++)
        used +=
            (size_t)snprintf(buf + used, size - used, "%s%lld", d ? "," : "", (long long)shape[d]);
    if (used < size) snprintf(buf + used, size - used, ")");
    return buf;
}

static bt_status read_host(struct ckpt_file *f, int64_t i, bt_tensor *t);

/* Reads tensor i into t (same dtype and element count, contiguous; a device tensor through a host
 * copy, checked before it is copied over) and checks its crc32. */
static bt_status read_into(struct ckpt_file *f, int64_t i, bt_tensor *t) {
    if (t->storage->device.type == BT_DEVICE_CPU) return read_host(f, i, t);
    bt_tensor *host = bt_empty(t->ndim, t->shape, t->dtype, bt_cpu());
    if (!host || read_host(f, i, host) != BT_OK) return BT_ERR;
    return bt_copy_(t, host);
}

static bt_status read_host(struct ckpt_file *f, int64_t i, bt_tensor *t) {
    const struct tensor_entry *e = &f->tensors[i];
    hid_t dset = -1;
    H5_CHECK(f->label, dset = H5Dopen2(f->file, e->info.name, H5P_DEFAULT));
    H5_CHECK(f->label, H5Dread(dset, e->info.dtype == BT_F32 ? H5T_NATIVE_FLOAT : H5T_NATIVE_INT64,
                               H5S_ALL, H5S_ALL, H5P_DEFAULT, bt_data(t)));
    H5_CHECK(f->label, H5Dclose(dset));
    uint32_t crc = ckpt_crc32(bt_data(t), (size_t)bt_numel(t) * bt_dtype_size(t->dtype));
    if (e->has_crc && crc != e->crc)
        return bt_error("%s: %s: checksum mismatch (crc32 of the data 0x%08x, stored 0x%08x): "
                        "the file is damaged",
                        f->label, e->info.name, (unsigned)crc, (unsigned)e->crc);
    return BT_OK;
fail:
    h5_close_quietly(dset);
    return BT_ERR;
}

bt_tensor *ckpt_read_tensor(struct ckpt_file *f, int64_t i) {
    if (i < 0 || i >= f->n_tensors) {
        bt_error("%s: no tensor %lld", f->label, (long long)i);
        return NULL;
    }
    const struct ckpt_tensor_info *info = &f->tensors[i].info;
    bt_tensor *t = bt_tensor_new(info->ndim, info->shape, info->dtype, bt_cpu());
    if (!t) return NULL;
    if (read_into(f, i, t) != BT_OK) {
        bt_tensor_free(t);
        return NULL;
    }
    return t;
}

/* Index of tensor `full`, checked to have dtype and shape (ndim, shape); -1 with a message. */
static int64_t expect_dataset(struct ckpt_file *f, const char *full, bt_dtype dtype, int ndim,
                              const int64_t *shape) {
    char got[160], want[160];
    int64_t i = find_tensor(f, full);
    if (i < 0) {
        bt_error("%s: dataset %s not found", f->label, full);
        return -1;
    }
    const struct ckpt_tensor_info *info = &f->tensors[i].info;
    if (info->dtype != dtype) {
        bt_error("%s: dataset %s has dtype %s, expected %s", f->label, full,
                 bt_dtype_name(info->dtype), bt_dtype_name(dtype));
        return -1;
    }
    bool same = info->ndim == ndim;
    for (int d = 0; same && d < ndim; d++)
        same = info->shape[d] == shape[d];
    if (!same) {
        bt_error("%s: dataset %s has shape %s, expected %s", f->label, full,
                 ckpt_shape_words(info->ndim, info->shape, got, sizeof got),
                 ckpt_shape_words(ndim, shape, want, sizeof want));
        return -1;
    }
    return i;
}

/* on any device: a device tensor is read through a host copy (read_into, read_piece) */
static bool is_contiguous_dest(struct ckpt_file *f, const char *full, const bt_tensor *t) {
    if (bt_is_contiguous(t)) return true;
    bt_error("%s: %s: the tensor to read into must be contiguous", f->label, full);
    return false;
}

/* Index of tensor `full`, checked to have the dtype of t and the full logical shape of t (t is
 * piece split->part of it when the split is cut); -1 with a message. */
static int64_t expect_tensor(struct ckpt_file *f, const char *full, const bt_tensor *t,
                             const struct nn_split *split) {
    int64_t shape[BT_MAX_DIMS];
    nn_split_full_shape(split, t, shape);
    int64_t i = expect_dataset(f, full, t->dtype, t->ndim, shape);
    return i >= 0 && is_contiguous_dest(f, full, t) ? i : -1;
}

/* Every tensor under `prefix` ("/model/") must be one of the names the caller takes. */
static bt_status check_no_extra(struct ckpt_file *f, const char *prefix, const char *what,
                                bool (*taken)(const char *rest, const void *ctx), const void *ctx) {
    size_t len = strlen(prefix);
    for (int64_t i = 0; i < f->n_tensors; i++) {
        const char *name = f->tensors[i].info.name;
        if (strncmp(name, prefix, len) == 0 && !taken(name + len, ctx))
            return bt_error("%s: dataset %s is not %s", f->label, name, what);
    }
    return BT_OK;
}

static bool is_param(const char *rest, const void *ctx) {
    const struct nn_param_list *params = ctx;
    for (int64_t p = 0; p < params->count; p++)
        if (strcmp(params->names[p], rest) == 0) return true;
    return false;
}

/* Reads tensor i into dest: rows [row0, +rows of dest) of piece split->part of it (row0 < 0: the
 * whole piece; the whole tensor when the split is not cut). A part of a tensor is read through a
 * temporary full tensor, one at a time, whose checksum is verified before its rows are taken. */
static bt_status read_piece(struct ckpt_file *f, int64_t i, const struct nn_split *split,
                            bt_tensor *dest, int64_t row0) {
    if (!nn_split_is_cut(split) && row0 < 0) return read_into(f, i, dest);
    bt_tensor *whole = ckpt_read_tensor(f, i);
    if (!whole) return BT_ERR;
    /* the rows are taken on the host; a device destination gets them copied over */
    bool on_host = dest->storage->device.type == BT_DEVICE_CPU;
    bt_tensor *rows = on_host ? dest : bt_empty(dest->ndim, dest->shape, dest->dtype, bt_cpu());
    bt_status st = rows ? nn_split_take(split, whole, rows, row0 < 0 ? 0 : row0) : BT_ERR;
    bt_tensor_free(whole);
    if (st == BT_OK && !on_host) st = bt_copy_(dest, rows);
    return st == BT_OK ? BT_OK : bt_error_prefix(f->label);
}

/* ckpt_read_model (whole: every /model dataset must be a parameter) and ckpt_read_model_subset */
static bt_status read_model(struct ckpt_file *f, const struct nn_param_list *params, bool whole) {
    char full[CKPT_LABEL_MAX];
    int64_t *index = malloc((size_t)(params->count ? params->count : 1) * sizeof *index);
    bt_status st = BT_ERR;
    if (!index) return bt_error("%s: out of memory", f->label);
    for (int64_t p = 0; p < params->count; p++) {
        struct nn_split split = nn_param_split(params, p);
        snprintf(full, sizeof full, "/model/%s", params->names[p]);
        if ((index[p] = expect_tensor(f, full, params->tensors[p], &split)) < 0) goto done;
    }
    if (whole &&
        check_no_extra(f, "/model/", "a parameter of this model", is_param, params) != BT_OK)
        goto done;
    for (int64_t p = 0; p < params->count; p++) {
        struct nn_split split = nn_param_split(params, p);
        if (read_piece(f, index[p], &split, params->tensors[p], -1) != BT_OK) goto done;
    }
    st = BT_OK;
done:
    free(index);
    return st;
}

bt_status ckpt_read_model(struct ckpt_file *f, const struct nn_param_list *params) {
    return read_model(f, params, true);
}

bt_status ckpt_read_model_subset(struct ckpt_file *f, const struct nn_param_list *params) {
    return read_model(f, params, false);
}

/* "<param>/<state>" names a state this optimizer keeps */
static bool is_optim_state(const char *rest, const void *ctx) {
    const struct optim *opt = ctx;
    const char *slash = strrchr(rest, '/');
    if (!slash) return false;
    const char *const *states;
    int n = optim_state_names(opt, &states);
    bool known_state = false;
    for (int s = 0; s < n && !known_state; s++)
        known_state = strcmp(states[s], slash + 1) == 0;
    if (!known_state) return false;
    for (int64_t i = 0; i < optim_num_params(opt); i++) {
        const char *name = optim_param_name(opt, i);
        if (strlen(name) == (size_t)(slash - rest) &&
            strncmp(name, rest, (size_t)(slash - rest)) == 0)
            return true;
    }
    return false;
}

/* "<param>/<state>" names a state of a parameter in params (ZeRO-1: this rank's optimizer may
 * hold no rows of some parameters, whose state the file still has) */
struct state_of_params {
    const struct nn_param_list *params;
    const struct optim *opt;
};

static bool is_params_state(const char *rest, const void *ctx) {
    const struct state_of_params *sp = ctx;
    const char *slash = strrchr(rest, '/');
    if (!slash) return false;
    const char *const *states;
    int n = optim_state_names(sp->opt, &states);
    bool known_state = false;
    for (int s = 0; s < n && !known_state; s++)
        known_state = strcmp(states[s], slash + 1) == 0;
    for (int64_t p = 0; known_state && p < sp->params->count; p++) {
        const char *name = sp->params->names[p];
        if (strlen(name) == (size_t)(slash - rest) &&
            strncmp(name, rest, (size_t)(slash - rest)) == 0)
            return true;
    }
    return false;
}

static int64_t param_index(const struct nn_param_list *params, const char *name) {
    for (int64_t p = 0; params && p < params->count; p++)
        if (strcmp(params->names[p], name) == 0) return p;
    return -1;
}

/* Index of the full tensor `full` of which dest receives rows [row0, +rows of dest) of the piece
 * `piece` (piece split->part of it; the whole parameter when the split is not cut): the file's
 * shape must be the parameter's full one. With whole_piece, dest must hold all the piece's rows. */
static int64_t expect_rows(struct ckpt_file *f, const char *full, const bt_tensor *dest,
                           const bt_tensor *piece, const struct nn_split *split, int64_t row0,
                           bool whole_piece) {
    char got[160], want[160];
    if (!piece) {
        bt_error("%s: %s: no parameter of that name in the model", f->label, full);
        return -1;
    }
    int64_t shape[BT_MAX_DIMS];
    nn_split_full_shape(split, piece, shape);
    int64_t i = expect_dataset(f, full, dest->dtype, piece->ndim, shape);
    if (i < 0 || !is_contiguous_dest(f, full, dest)) return -1;
    bool fits = dest->ndim == piece->ndim && row0 >= 0 &&
                row0 + dest->shape[0] <= piece->shape[0] &&
                (!whole_piece || dest->shape[0] == piece->shape[0]);
    for (int d = 1; fits && d < dest->ndim; d++)
        fits = dest->shape[d] == piece->shape[d];
    if (!fits) {
        bt_error("%s: %s: rows [%lld, +%s) do not fit %s %s", f->label, full, (long long)row0,
                 bt_shape_str(dest, got, sizeof got),
                 nn_split_is_cut(split) ? "this rank's piece" : "its shape",
                 bt_shape_str(piece, want, sizeof want));
        return -1;
    }
    return i;
}

/* ckpt_read_optim_rows (whole: every /optimizer dataset must be state of this optimizer, or with
 * opt_row0 of a parameter in params) and ckpt_read_optim_subset */
static bt_status read_optim(struct ckpt_file *f, struct optim *opt,
                            const struct nn_param_list *params, const int64_t *opt_row0,
                            bool whole) {
    const char *kind = optim_get_config(opt)->kind == OPTIM_ADAMW ? "adamw" : "sgd";
    if (strcmp(f->optimizer, kind) != 0)
        return bt_error("%s: holds %s optimizer state, the run uses %s", f->label,
                        f->optimizer[0] ? f->optimizer : "no", kind);
    if (opt_row0 && !params)
        return bt_error("%s: reading sharded optimizer state needs the parameters", f->label);
    const char *const *states;
    int n_states = optim_state_names(opt, &states);
    int64_t n = optim_num_params(opt) * n_states, k = 0;
    int64_t *index = malloc((size_t)(n ? n : 1) * sizeof *index);
    int64_t *row0 = malloc((size_t)(n ? n : 1) * sizeof *row0);
    bt_tensor **dest = malloc((size_t)(n ? n : 1) * sizeof *dest);
    struct nn_split *split = malloc((size_t)(n ? n : 1) * sizeof *split);
    char full[CKPT_LABEL_MAX];
    bt_status st = BT_ERR;
    if (!index || !dest || !row0 || !split) {
        bt_error("%s: out of memory", f->label);
        goto done;
    }
    for (int64_t i = 0; i < optim_num_params(opt); i++) {
        const char *pname = optim_param_name(opt, i);
        int64_t p = param_index(params, pname);
        struct nn_split param_split = nn_param_split(params, p);
        bool cut = nn_split_is_cut(&param_split);
        for (int s = 0; s < n_states; s++, k++) {
            snprintf(full, sizeof full, "/optimizer/%s/%s", pname, states[s]);
            if (!(dest[k] = optim_state(opt, i, states[s]))) goto done;
            /* a scalar state (AdamW's step) is read whole, and so is the state of a whole
             * parameter without ZeRO-1; otherwise rows of this rank's piece */
            bool scalar = dest[k]->ndim == 0;
            split[k] = scalar ? (struct nn_split){0} : param_split;
            row0[k] = !scalar && opt_row0 ? opt_row0[i] : !scalar && cut ? 0 : -1;
            index[k] = row0[k] < 0
                           ? expect_tensor(f, full, dest[k], &split[k])
                           : expect_rows(f, full, dest[k], p >= 0 ? params->tensors[p] : NULL,
                                         &split[k], row0[k], !opt_row0);
            if (index[k] < 0) goto done;
        }
    }
    struct state_of_params sp = {params, opt};
    /* a subset (a pipeline stage's) leaves the other stages' state in the file alone */
    if (whole && (opt_row0 ? check_no_extra(f, "/optimizer/", "state of a parameter of this model",
                                            is_params_state, &sp)
                           : check_no_extra(f, "/optimizer/", "state of this optimizer",
                                            is_optim_state, opt)) != BT_OK)
        goto done;
    for (k = 0; k < n; k++)
        if (read_piece(f, index[k], &split[k], dest[k], row0[k]) != BT_OK) goto done;
    optim_set_step_count(opt, f->optimizer_steps);
    st = BT_OK;
done:
    free(split);
    free(dest);
    free(row0);
    free(index);
    return st;
}

bt_status ckpt_read_optim_rows(struct ckpt_file *f, struct optim *opt,
                               const struct nn_param_list *params, const int64_t *opt_row0) {
    return read_optim(f, opt, params, opt_row0, true);
}

bt_status ckpt_read_optim_subset(struct ckpt_file *f, struct optim *opt,
                                 const struct nn_param_list *params, const int64_t *opt_row0) {
    return read_optim(f, opt, params, opt_row0, false);
}

bt_status ckpt_read_optim(struct ckpt_file *f, struct optim *opt) {
    return ckpt_read_optim_rows(f, opt, NULL, NULL);
}

static bt_status load_model(const char *path, const struct nn_param_list *params, bool whole) {
    struct ckpt_file *f = open_file(path, true);
    if (!f) return BT_ERR;
    bt_status st = read_model(f, params, whole);
    ckpt_close(f);
    return st;
}

bt_status ckpt_load_model(const char *path, const struct nn_param_list *params) {
    return load_model(path, params, true);
}

bt_status ckpt_load_model_subset(const char *path, const struct nn_param_list *params) {
    return load_model(path, params, false);
}
