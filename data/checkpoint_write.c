/* Writing HDF5 checkpoints (docs/checkpoint.md): the whole training state to
 * <dir>/.step_<8-digit step>.h5.tmp — /model, /optimizer, the run's attributes, config and
 * tokenizer, each tensor with its CRC-32 — then fsync, rename into place, fsync the directory,
 * point <dir>/latest at it the same way and prune old files. In a group every rank writes its
 * slices of the full tensors (row shares, ZeRO-1 rows, tensor-parallel pieces, its pipeline
 * stage's tensors) through parallel HDF5, and the CRC-32s of the byte ranges the ranks wrote are
 * combined into each tensor's. */
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
/* t's elements on the host: t itself, or a step-tensor copy of a device tensor (valid until the
 * next step's reset; the writer reads it at once) */
static const void *host_data(const bt_tensor *t) {
    if (t->storage->device.type == BT_DEVICE_CPU) return bt_data(t);
    bt_tensor *host = bt_to_device((bt_tensor *)t, bt_cpu());
    return host ? bt_data(host) : NULL;
}

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

/* This rank's place in the layout (struct ckpt_layout): rank of size in the group, piece
 * split_rank of split_size, replica replica_rank of replica_size, stage stage_rank of stage_size;
 * a group of one where the layout has none. The hold_size ranks of its stage (the whole group
 * without a pipeline) hold the stage's whole tensors alike; this is the hold_rank-th of them. */
struct place {
    int rank, size;
    int split_rank, split_size;
    int replica_rank, replica_size;
    int stage_rank, stage_size;
    int hold_rank, hold_size;
};

static struct place place_of(const struct ckpt_layout *layout) {
    struct place p = {0, 1, 0, 1, 0, 1, 0, 1, 0, 1};
    if (!layout) return p;
    if (layout->group) {
        p.rank = comm_rank(layout->group);
        p.size = comm_size(layout->group);
    }
    if (layout->stage_group && comm_size(layout->stage_group) > 1) {
        p.stage_rank = comm_rank(layout->stage_group);
        p.stage_size = comm_size(layout->stage_group);
    }
    if (layout->split_group) {
        p.split_rank = comm_rank(layout->split_group);
        p.split_size = comm_size(layout->split_group);
    }
    if (layout->replica_group && (layout->split_group || p.stage_size > 1)) {
        p.replica_rank = comm_rank(layout->replica_group);
        p.replica_size = comm_size(layout->replica_group);
    }
    p.hold_rank = p.stage_size > 1 ? p.split_rank * p.replica_size + p.replica_rank : p.rank;
    p.hold_size = p.stage_size > 1 ? p.split_size * p.replica_size : p.size;
    return p;
}

/* A contiguous byte range [offset, offset + length) of tensor `tensor` (the index of its dataset
 * in the writer's list) that this rank wrote, with its CRC-32: four int64 so that the ranks can
 * exchange them as a tensor. */
struct crc_run {
    int64_t tensor, offset, crc, length;
};

/* One save in progress: the file, the ranks writing it together, the tensors written so far with
 * their sizes, and the byte ranges of them this rank wrote with their CRC-32s, for the crc32
 * attributes. */
struct writer {
    char label[CKPT_LABEL_MAX]; /* "checkpoint <tmp path>" */
    hid_t file;
    struct comm *group; /* NULL: this process alone */
    struct place at;
    /* a failed data write (disk full): the collective calls go on, the outcome is agreed after */
    bool data_failed;
    char data_error[2 * CKPT_LABEL_MAX + 300];
    int64_t n, cap;
    char **paths;
    int64_t *nbytes;
    struct crc_run *runs;
    int64_t n_runs, cap_runs;
};

/* Records the first failure of this rank's data (independent I/O: the other ranks do not wait for
 * it) and carries on, so that every rank still makes the same collective calls. */
static void note_data_failure(struct writer *w, const char *path, const char *what) {
    if (!w->data_failed)
        snprintf(w->data_error, sizeof w->data_error, "%s: %s %s", w->label, path, what);
    w->data_failed = true;
}

static void data_write_failed(struct writer *w, const char *path) {
    char reason[256];
    h5_reason(reason, sizeof reason);
    if (!w->data_failed)
        snprintf(w->data_error, sizeof w->data_error, "%s: writing %s failed: %s", w->label, path,
                 reason);
    w->data_failed = true;
}

/* Adds dataset `path` of nbytes bytes to the list; *index is its place in it, the same on every
 * rank (the datasets are created collectively, in one order). */
static bt_status remember(struct writer *w, const char *path, int64_t nbytes, int64_t *index) {
    if (w->n == w->cap) {
        int64_t cap = w->cap ? 2 * w->cap : 256;
        char **paths = realloc(w->paths, (size_t)cap * sizeof *paths);
        if (paths) w->paths = paths;
        int64_t *sizes = paths ? realloc(w->nbytes, (size_t)cap * sizeof *sizes) : NULL;
        if (!sizes) return bt_error("%s: out of memory", w->label);
        w->nbytes = sizes;
        w->cap = cap;
    }
    if (!(w->paths[w->n] = strdup(path))) return bt_error("%s: out of memory", w->label);
    w->nbytes[w->n] = nbytes;
    *index = w->n++;
    return BT_OK;
}

/* Notes that this rank wrote `length` bytes from `data` at byte `offset` of tensor `tensor`; a
 * range that continues the previous one is merged into it. */
static bt_status add_run(struct writer *w, int64_t tensor, int64_t offset, const void *data,
                         int64_t length) {
    if (length <= 0) return BT_OK;
    uint32_t crc = ckpt_crc32(data, (size_t)length);
    struct crc_run *last = w->n_runs ? &w->runs[w->n_runs - 1] : NULL;
    if (last && last->tensor == tensor && last->offset + last->length == offset) {
        last->crc = (int64_t)crc32_combine((uLong)last->crc, crc, (z_off_t)length);
        last->length += length;
        return BT_OK;
    }
    if (w->n_runs == w->cap_runs) {
        int64_t cap = w->cap_runs ? 2 * w->cap_runs : 1024;
        struct crc_run *runs = realloc(w->runs, (size_t)cap * sizeof *runs);
        if (!runs) return bt_error("%s: out of memory", w->label);
        w->runs = runs;
        w->cap_runs = cap;
    }
    w->runs[w->n_runs++] = (struct crc_run){tensor, offset, (int64_t)crc, length};
    return BT_OK;
}

/* Where piece split->part of a tensor lies along its cut dim: block k of the piece is indices
 * [local[k], +len[k]) of the piece and [full[k], +len[k]) of the full tensor (core/nn.h: each
 * block of the full dim is cut into `parts` equal pieces). A tensor that is not cut is one block:
 * the whole of dim 0. */
struct piece_blocks {
    int dim, n;
    int64_t local[NN_SPLIT_MAX_BLOCKS], full[NN_SPLIT_MAX_BLOCKS], len[NN_SPLIT_MAX_BLOCKS];
};

static void piece_blocks_of(const struct nn_split *s, const int64_t *full_shape,
                            struct piece_blocks *b) {
    bool cut = nn_split_is_cut(s);
    int parts = cut ? s->parts : 1, part = cut ? s->part : 0;
    b->dim = cut ? s->dim : 0;
    b->n = cut && s->n_blocks > 0 ? s->n_blocks : 1;
    int64_t full_start = 0, local_start = 0;
    for (int k = 0; k < b->n; k++) {
        int64_t size = cut && s->n_blocks > 0 ? s->blocks[k] : full_shape[b->dim];
        b->len[k] = size / parts;
        b->local[k] = local_start;
        b->full[k] = full_start + part * b->len[k];
        local_start += b->len[k];
        full_start += size;
    }
}

/* Bytes of one row (dim-0 index) of this rank's piece of a tensor of shape full_shape; a 0-d
 * tensor is one row. */
static int64_t piece_row_bytes(const struct nn_split *s, bt_dtype dtype, int ndim,
                               const int64_t *full_shape) {
    int64_t bytes = (int64_t)bt_dtype_size(dtype);
    for (int d = 1; d < ndim; d++)
        bytes *= full_shape[d] / (nn_split_is_cut(s) && d == s->dim ? s->parts : 1);
    return bytes;
}

/* Selects in fspace (the full tensor's dataspace) rows [row0, row0 + rows) of piece split->part,
 * and notes the byte ranges they are in the file with their CRC-32s from `data` (those rows of the
 * piece, contiguous). HDF5 transfers a selection in row-major order of the dataset, which is the
 * order of the piece's elements in memory: a piece's row r, block after block. */
static bt_status select_piece(struct writer *w, hid_t fspace, int64_t tensor, bt_dtype dtype,
                              int ndim, const int64_t *full_shape, const struct nn_split *split,
                              const char *data, int64_t row0, int64_t rows) {
    struct piece_blocks b;
    hsize_t start[BT_MAX_DIMS], count[BT_MAX_DIMS];
    int64_t esize = (int64_t)bt_dtype_size(dtype);
    bool any = false;
    piece_blocks_of(split, full_shape, &b);
    int64_t inner = 1; /* elements after the cut dim */
    for (int d = b.dim + 1; d < ndim; d++)
        inner *= full_shape[d];
    for (int k = 0; k < b.n; k++) {
        for (int d = 0; d < ndim; d++) {
            start[d] = 0;
            count[d] = (hsize_t)full_shape[d];
        }
        int64_t lo = row0, hi = row0 + rows; /* rows of the piece */
        if (b.dim == 0) {                    /* block k's rows of the piece, as rows of the file */
            lo = lo > b.local[k] ? lo : b.local[k];
            hi = hi < b.local[k] + b.len[k] ? hi : b.local[k] + b.len[k];
            if (lo >= hi) continue;
            start[0] = (hsize_t)(b.full[k] + lo - b.local[k]);
            count[0] = (hsize_t)(hi - lo);
            if (add_run(w, tensor, (int64_t)start[0] * inner * esize,
                        data + (lo - row0) * inner * esize, (hi - lo) * inner * esize) != BT_OK)
                return BT_ERR;
        } else { /* the piece's columns of block k in rows [row0, row0 + rows) */
            start[0] = (hsize_t)row0;
            count[0] = (hsize_t)rows;
            start[b.dim] = (hsize_t)b.full[k];
            count[b.dim] = (hsize_t)b.len[k];
        }
        H5_CHECK(w->label, H5Sselect_hyperslab(fspace, any ? H5S_SELECT_OR : H5S_SELECT_SET, start,
                                               NULL, count, NULL));
        any = true;
    }
    if (b.dim > 0) { /* a run per row, per index of the dims between 0 and the cut one, per block */
        int64_t mid = 1, full_dim = full_shape[b.dim], local_dim = full_dim / split->parts;
        for (int d = 1; d < b.dim; d++)
            mid *= full_shape[d];
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = 0; j < mid; j++)
                for (int k = 0; k < b.n; k++) {
                    int64_t file = (((row0 + r) * mid + j) * full_dim + b.full[k]) * inner;
                    int64_t mine = ((r * mid + j) * local_dim + b.local[k]) * inner;
                    if (add_run(w, tensor, file * esize, data + mine * esize,
                                b.len[k] * inner * esize) != BT_OK)
                        return BT_ERR;
                }
    }
    return BT_OK;
fail:
    return BT_ERR;
}

/* Dataset `name` of obj with the full logical shape (ndim, full_shape), float32 or int64, created
 * by every rank; this rank writes rows [row0, row0 + rows) of its piece split->part of it (the
 * whole tensor when the split is not cut) from `data` (contiguous), with independent I/O. */
static bt_status write_piece(struct writer *w, hid_t obj, const char *path, const char *name,
                             bt_dtype dtype, int ndim, const int64_t *full_shape,
                             const struct nn_split *split, const void *data, int64_t row0,
                             int64_t rows) {
    hid_t fspace = -1, mspace = -1, dset = -1;
    hsize_t dims[BT_MAX_DIMS];
    int64_t tensor = -1, nbytes = (int64_t)bt_dtype_size(dtype);
    bool f32 = dtype == BT_F32;
    if (!f32 && dtype != BT_I64)
        return bt_error("%s: %s must be float32 or int64 (got %s)", w->label, path,
                        bt_dtype_name(dtype));
    for (int d = 0; d < ndim; d++) {
        dims[d] = (hsize_t)full_shape[d];
        nbytes *= full_shape[d];
    }
    if (ndim == 0)
        H5_CHECK(w->label, fspace = H5Screate(H5S_SCALAR));
    else
        H5_CHECK(w->label, fspace = H5Screate_simple(ndim, dims, NULL));
    H5_CHECK(w->label, dset = H5Dcreate2(obj, name, f32 ? H5T_IEEE_F32LE : H5T_STD_I64LE, fspace,
                                         H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    if (remember(w, path, nbytes, &tensor) != BT_OK) goto fail;
    if (rows > 0) {
        if (ndim > 0) {
            hsize_t n = (hsize_t)(rows * piece_row_bytes(split, dtype, ndim, full_shape) /
                                  (int64_t)bt_dtype_size(dtype));
            if (select_piece(w, fspace, tensor, dtype, ndim, full_shape, split, data, row0, rows) !=
                BT_OK)
                goto fail;
            H5_CHECK(w->label, mspace = H5Screate_simple(1, &n, NULL));
        } else {
            if (add_run(w, tensor, 0, data, nbytes) != BT_OK) goto fail;
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
    return BT_OK;
fail:
    h5_close_quietly(mspace);
    h5_close_quietly(dset);
    h5_close_quietly(fspace);
    return BT_ERR;
}

/* Rows [held_row0, held_row0 + held_rows) of this rank's piece of a tensor (the whole tensor when
 * split is not cut), at `data`, which `share_size` ranks hold alike: this one, the share_rank-th of
 * them, writes its share of those rows (comm_rows_of). */
static bt_status write_shared(struct writer *w, hid_t obj, const char *path, const char *name,
                              bt_dtype dtype, int ndim, const int64_t *full_shape,
                              const struct nn_split *split, const void *data, int64_t held_row0,
                              int64_t held_rows, int share_rank, int share_size) {
    if (!data) return bt_has_error() ? BT_ERR : bt_error("%s: %s: no data", w->label, path);
    int64_t lo, hi;
    comm_rows_of(held_rows, share_rank, share_size, &lo, &hi);
    const char *mine = (const char *)data + lo * piece_row_bytes(split, dtype, ndim, full_shape);
    return write_piece(w, obj, path, name, dtype, ndim, full_shape, split, mine, held_row0 + lo,
                       hi - lo);
}

static bt_status check_tensor(struct writer *w, const char *path, const bt_tensor *t) {
    if (!bt_is_contiguous(t)) /* on any device: a device tensor is written from a host copy */
        return bt_error("%s: %s must be a contiguous tensor", w->label, path);
    return BT_OK;
}

static int compare_runs(const void *a, const void *b) {
    const struct crc_run *x = a, *y = b;
    if (x->tensor != y->tensor) return (x->tensor > y->tensor) - (x->tensor < y->tensor);
    return (x->offset > y->offset) - (x->offset < y->offset);
}

/* Every rank's byte ranges of every tensor: the ranks exchange them (allgather of the counts, then
 * of the ranges) and sort them by tensor and offset. *all is malloc'd (or the writer's own list).
 */
static bt_status gather_runs(struct writer *w, struct crc_run **all, int64_t *n_all) {
    bt_tensor *mine = NULL, *counts = NULL, *runs = NULL;
    int64_t *elems = NULL, total = 0, before = 0;
    bt_status st = BT_ERR;
    *all = NULL;
    *n_all = 0;
    if (w->at.size == 1) {
        qsort(w->runs, (size_t)w->n_runs, sizeof *w->runs, compare_runs);
        *all = w->runs;
        *n_all = w->n_runs;
        return BT_OK;
    }
    mine = bt_tensor_new(BT_SHAPE(1), BT_I64, bt_cpu());
    counts = bt_tensor_new(BT_SHAPE(w->at.size), BT_I64, bt_cpu());
    elems = malloc((size_t)w->at.size * sizeof *elems);
    if (!mine || !counts || !elems) {
        bt_error("%s: out of memory", w->label);
        goto done;
    }
    *(int64_t *)bt_data(mine) = w->n_runs;
    if (comm_allgather(w->group, mine, counts) != BT_OK) {
        bt_error_prefix(w->label);
        goto done;
    }
    const int64_t *count = bt_data(counts);
    for (int r = 0; r < w->at.size; r++) {
        elems[r] = 4 * count[r];
        if (r < w->at.rank) before += count[r];
        total += count[r];
    }
    if (total > 0) {
        if (!(runs = bt_tensor_new(BT_SHAPE(4 * total), BT_I64, bt_cpu()))) goto done;
        memcpy((struct crc_run *)bt_data(runs) + before, w->runs,
               (size_t)w->n_runs * sizeof *w->runs);
        if (comm_allgather_v(w->group, runs, elems) != BT_OK) {
            bt_error_prefix(w->label);
            goto done;
        }
        if (!(*all = malloc((size_t)total * sizeof **all))) {
            bt_error("%s: out of memory", w->label);
            goto done;
        }
        memcpy(*all, bt_data(runs), (size_t)total * sizeof **all);
        qsort(*all, (size_t)total, sizeof **all, compare_runs);
    }
    *n_all = total;
    st = BT_OK;
done:
    bt_tensor_free(runs);
    bt_tensor_free(counts);
    bt_tensor_free(mine);
    free(elems);
    return st;
}

/* One crc32 attribute per tensor: the ranks' byte ranges of it, in file order, must cover it
 * exactly once, and their CRC-32s combined in that order (zlib's crc32_combine) are the CRC-32 of
 * the whole tensor. Every rank computes the same values and writes the attributes together. */
static bt_status write_checksums(struct writer *w) {
    struct crc_run *all = NULL;
    int64_t n_all = 0;
    hid_t dset = -1, space = -1, attr = -1;
    bt_status st = BT_ERR;
    if (gather_runs(w, &all, &n_all) != BT_OK) goto fail;
    for (int64_t i = 0, j = 0; i < w->n; i++) {
        uLong crc = 0; /* crc32 of no bytes */
        int64_t covered = 0;
        bool exact = true;
        for (; j < n_all && all[j].tensor == i; j++) {
            exact = exact && all[j].offset == covered;
            crc = crc32_combine(crc, (uLong)all[j].crc, (z_off_t)all[j].length);
            covered = all[j].offset + all[j].length;
        }
        if (!exact || covered != w->nbytes[i]) /* every rank sees it: agreed as a data failure */
            note_data_failure(
                w, w->paths[i],
                "is not covered exactly once by the ranks' parts (the layout's groups "
                "do not match the parameters' pieces)");
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
    if (all != w->runs) free(all);
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

/* The tensor of params entry p (this rank's piece of it when its split is cut): its full shape
 * into full_shape; *cut says whether it is a piece. */
static struct nn_split split_of(const struct nn_param_list *params, int64_t p, int64_t *full_shape,
                                bool *cut) {
    struct nn_split s = nn_param_split(params, p);
    nn_split_full_shape(&s, params->tensors[p], full_shape);
    *cut = nn_split_is_cut(&s);
    return s;
}

static int64_t optim_index(const struct optim *opt, const char *name) {
    for (int64_t i = 0; opt && i < optim_num_params(opt); i++)
        if (strcmp(optim_param_name(opt, i), name) == 0) return i;
    return -1;
}

/* ---- the tensor list every rank agrees on ----
 * Parallel HDF5 creates datasets collectively: every rank of the group creates every one, in the
 * same order, with the same shape. Without a pipeline every rank holds every parameter (whole or
 * a piece), so its own list is the file's. With one, the stages exchange their lists and every
 * rank walks their union: stage by stage, each stage's parameters in its order, a name several
 * stages hold (a tied embedding's copy) listed once, at its first stage, which writes it. */

/* One /model tensor in the file's order: its name, dtype and full logical shape, whether it has an
 * /optimizer group, and its index in this rank's params when this rank's stage writes it (-1:
 * another stage does). */
struct entry {
    char *name;
    bt_dtype dtype;
    int ndim;
    int64_t full[BT_MAX_DIMS];
    bool has_state;
    int64_t local;
    int stage; /* the first stage holding it */
};

struct catalog {
    int64_t n, cap;
    struct entry *entries;
};

static void catalog_free(struct catalog *c) {
    for (int64_t i = 0; i < c->n; i++)
        free(c->entries[i].name);
    free(c->entries);
    memset(c, 0, sizeof *c);
}

static bt_status catalog_add(struct catalog *c, const struct entry *e, const char *label) {
    if (c->n == c->cap) {
        int64_t cap = c->cap ? 2 * c->cap : 64;
        struct entry *grown = realloc(c->entries, (size_t)cap * sizeof *grown);
        if (!grown) return bt_error("%s: out of memory", label);
        c->entries = grown;
        c->cap = cap;
    }
    c->entries[c->n] = *e;
    if (!(c->entries[c->n].name = strdup(e->name))) return bt_error("%s: out of memory", label);
    c->n++;
    return BT_OK;
}

static int64_t catalog_find(const struct catalog *c, const char *name) {
    for (int64_t i = 0; i < c->n; i++)
        if (strcmp(c->entries[i].name, name) == 0) return i;
    return -1;
}

/* Entry p of this rank's params; has_state as write_optimizer decides it: the optimizer keeps
 * state and holds the parameter (under ZeRO-1 every parameter has its group, whoever holds rows).
 */
static struct entry entry_of(const struct nn_param_list *params, int64_t p, const struct optim *opt,
                             const int64_t *opt_row0) {
    const char *const *states = NULL;
    bool cut;
    struct entry e = {.name = params->names[p],
                      .dtype = params->tensors[p]->dtype,
                      .ndim = params->tensors[p]->ndim,
                      .local = p};
    split_of(params, p, e.full, &cut);
    e.has_state = opt && optim_state_names(opt, &states) > 0 &&
                  (opt_row0 || optim_index(opt, params->names[p]) >= 0);
    return e;
}

/* One entry as int64 words for the exchange: name length, dtype, ndim, has_state, the full shape,
 * then the name's bytes (NUL-padded to whole words). *n words are written at words (NULL: only
 * counted). */
static void serialise_entry(const struct entry *e, int64_t *words, int64_t *n) {
    size_t len = strlen(e->name);
    int64_t name_words = (int64_t)(len + 8) / 8;
    if (words) {
        words[0] = (int64_t)len;
        words[1] = (int64_t)e->dtype;
        words[2] = e->ndim;
        words[3] = e->has_state;
        memcpy(words + 4, e->full, (size_t)e->ndim * sizeof *words);
        memset(words + 4 + e->ndim, 0, (size_t)name_words * sizeof *words);
        memcpy(words + 4 + e->ndim, e->name, len);
    }
    *n = 4 + e->ndim + name_words;
}

/* Adds stage `stage`'s list (n words from the exchange) to the catalog. A name an earlier stage
 * listed must have the same dtype and full shape there; it stays that stage's to write. */
static bt_status catalog_add_stage(struct catalog *c, int stage, const int64_t *words, int64_t n,
                                   bool mine, const char *label) {
    char got[160], want[160];
    for (int64_t at = 0, p = 0; at < n; p++) {
        struct entry e = {.stage = stage, .local = -1};
        int64_t len = words[at], size = 0;
        e.dtype = (bt_dtype)words[at + 1];
        e.ndim = (int)words[at + 2];
        e.has_state = words[at + 3] != 0;
        if (len < 0 || e.ndim < 0 || e.ndim > BT_MAX_DIMS || at + 4 + e.ndim + (len + 8) / 8 > n)
            return bt_error("%s: layout: the parameter list of stage %d is damaged", label, stage);
        memcpy(e.full, words + at + 4, (size_t)e.ndim * sizeof *words);
        e.name = (char *)(words + at + 4 + e.ndim); /* NUL-padded */
        serialise_entry(&e, NULL, &size);
        at += size;
        if (mine) e.local = p;
        int64_t seen = catalog_find(c, e.name);
        if (seen < 0) {
            if (catalog_add(c, &e, label) != BT_OK) return BT_ERR;
            continue;
        }
        const struct entry *first = &c->entries[seen];
        bool same = first->dtype == e.dtype && first->ndim == e.ndim;
        for (int d = 0; same && d < e.ndim; d++)
            same = first->full[d] == e.full[d];
        if (!same)
            return bt_error("%s: layout: /model/%s is %s %s on stage %d but %s %s on stage %d",
                            label, e.name, bt_dtype_name(first->dtype),
                            ckpt_shape_words(first->ndim, first->full, want, sizeof want),
                            first->stage, bt_dtype_name(e.dtype),
                            ckpt_shape_words(e.ndim, e.full, got, sizeof got), stage);
    }
    return BT_OK;
}

/* This rank's stage list, serialised */
static int64_t *serialise_params(const struct nn_param_list *params, const struct optim *opt,
                                 const int64_t *opt_row0, int64_t *n_words) {
    int64_t total = 0, n = 0;
    for (int64_t p = 0; p < params->count; p++) {
        struct entry e = entry_of(params, p, opt, opt_row0);
        serialise_entry(&e, NULL, &n);
        total += n;
    }
    int64_t *words = malloc((size_t)(total ? total : 1) * sizeof *words);
    if (!words) return NULL;
    total = 0;
    for (int64_t p = 0; p < params->count; p++) {
        struct entry e = entry_of(params, p, opt, opt_row0);
        serialise_entry(&e, words + total, &n);
        total += n;
    }
    *n_words = total;
    return words;
}

/* The stages' lists, gathered over the stage group: every stage's words in stage order, stage s's
 * counts[s] of them. *all and *counts are malloc'd. */
static bt_status exchange_lists(struct comm *stages, const int64_t *mine, int64_t n_mine,
                                int64_t **all, int64_t **counts, const char *label) {
    int S = comm_size(stages), me = comm_rank(stages);
    bt_tensor *count = bt_tensor_new(BT_SHAPE(1), BT_I64, bt_cpu());
    bt_tensor *gathered = bt_tensor_new(BT_SHAPE(S), BT_I64, bt_cpu()), *buf = NULL;
    int64_t total = 0, before = 0;
    bt_status st = BT_ERR;
    *all = NULL;
    *counts = malloc((size_t)S * sizeof **counts);
    if (!count || !gathered || !*counts) {
        bt_error("%s: out of memory", label);
        goto done;
    }
    *(int64_t *)bt_data(count) = n_mine;
    if (comm_allgather(stages, count, gathered) != BT_OK) {
        bt_error_prefix(label);
        goto done;
    }
    memcpy(*counts, bt_data(gathered), (size_t)S * sizeof **counts);
    for (int s = 0; s < S; s++) {
        if (s < me) before += (*counts)[s];
        total += (*counts)[s];
    }
    if (!(buf = bt_tensor_new(BT_SHAPE(total ? total : 1), BT_I64, bt_cpu())) ||
        !(*all = malloc((size_t)(total ? total : 1) * sizeof **all))) {
        bt_error("%s: out of memory", label);
        goto done;
    }
    memcpy((int64_t *)bt_data(buf) + before, mine, (size_t)n_mine * sizeof *mine);
    if (total > 0 && comm_allgather_v(stages, buf, *counts) != BT_OK) {
        bt_error_prefix(label);
        goto done;
    }
    memcpy(*all, bt_data(buf), (size_t)total * sizeof **all);
    st = BT_OK;
done:
    bt_tensor_free(buf);
    bt_tensor_free(gathered);
    bt_tensor_free(count);
    if (st != BT_OK) {
        free(*all);
        free(*counts);
        *all = *counts = NULL;
    }
    return st;
}

/* Every rank of the group must have found the same list (each learns it from its own stage
 * group): their CRC-32s are compared, or the collective creates would not match. */
static bt_status check_same_everywhere(struct comm *group, const int64_t *words, int64_t n,
                                       const char *label) {
    uint32_t crc = ckpt_crc32(words, (size_t)n * sizeof *words);
    double range[2] = {(double)crc, -(double)crc};
    if (!group || comm_size(group) == 1) return BT_OK;
    if (comm_allreduce_doubles(group, range, 2, COMM_MIN) != BT_OK) return bt_error_prefix(label);
    if (range[0] != -range[1])
        return bt_error("%s: layout: the stages' parameter lists differ between the ranks of group "
                        "%s (each rank's stage group must hold one rank of every stage, with the "
                        "same parameters)",
                        label, comm_name(group));
    return BT_OK;
}

/* The file's tensor list (struct entry). Collective over the layout's stage group and then its
 * group when it has more than one stage: a rank that fails still makes both calls. */
static bt_status catalog_build(struct catalog *c, const struct nn_param_list *params,
                               const struct optim *opt, const struct ckpt_layout *layout,
                               const struct place *at, const char *label) {
    const int64_t *opt_row0 = layout ? layout->opt_row0 : NULL;
    int64_t *mine = NULL, *all = NULL, *counts = NULL, n_mine = 0, total = 0;
    bt_status st = BT_OK;
    memset(c, 0, sizeof *c);
    if (at->stage_size == 1) {
        for (int64_t p = 0; p < params->count && st == BT_OK; p++) {
            struct entry e = entry_of(params, p, opt, opt_row0);
            st = catalog_add(c, &e, label);
        }
        if (st != BT_OK) catalog_free(c);
        return st;
    }
    if (!(mine = serialise_params(params, opt, opt_row0, &n_mine))) {
        st = bt_error("%s: out of memory", label);
        n_mine = 0; /* still take part: the ranks agree on the failure after */
    }
    static const int64_t none = 0;
    if (exchange_lists(layout->stage_group, mine ? mine : &none, n_mine, &all, &counts, label) !=
        BT_OK) {
        free(mine);
        return BT_ERR;
    }
    for (int s = 0; s < at->stage_size && st == BT_OK; s++) {
        st = catalog_add_stage(c, s, all + total, counts[s], s == at->stage_rank, label);
        total += counts[s];
    }
    total = 0;
    for (int s = 0; s < at->stage_size; s++)
        total += counts[s];
    if (check_same_everywhere(layout->group, all, total, label) != BT_OK && st == BT_OK)
        st = BT_ERR;
    free(counts);
    free(all);
    free(mine);
    if (st != BT_OK) catalog_free(c);
    return st;
}

/* ---- /model and /optimizer ---- */

/* Creates dataset `name` of obj (collectively, like every dataset) and writes none of it: this
 * rank does not hold it. */
static bt_status create_only(struct writer *w, hid_t obj, const char *path, const char *name,
                             bt_dtype dtype, int ndim, const int64_t *full) {
    const struct nn_split whole = {0};
    return write_piece(w, obj, path, name, dtype, ndim, full, &whole, NULL, 0, 0);
}

/* The dtype of optimizer state `state`: a 0-d int64 for a count (AdamW's step), else float32 with
 * its parameter's shape. A rank that holds none of it creates it so. */
static bool state_is_count(const char *state) {
    return strcmp(state, "step") == 0;
}

/* Every tensor of the catalog: a whole one in row shares among the ranks holding it (the group,
 * or with a pipeline its stage), a piece in row shares among the replicas holding it; a tensor of
 * another stage is only created. */
static bt_status write_model(struct writer *w, const struct nn_param_list *params,
                             const struct catalog *cat) {
    hid_t model = -1;
    char path[CKPT_LABEL_MAX];
    int64_t full[BT_MAX_DIMS];
    bool cut;
    H5_CHECK(w->label, model = H5Gcreate2(w->file, "model", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    for (int64_t k = 0; k < cat->n; k++) {
        const struct entry *e = &cat->entries[k];
        int64_t i = e->local;
        snprintf(path, sizeof path, "/model/%s", e->name);
        if (i < 0) {
            if (create_only(w, model, path, e->name, e->dtype, e->ndim, e->full) != BT_OK)
                goto fail;
            continue;
        }
        const bt_tensor *t = params->tensors[i];
        struct nn_split split = split_of(params, i, full, &cut);
        if (check_tensor(w, path, t) != BT_OK ||
            write_shared(w, model, path, params->names[i], t->dtype, t->ndim, full, &split,
                         host_data(t), 0, t->ndim ? t->shape[0] : 1,
                         cut ? w->at.replica_rank : w->at.hold_rank,
                         cut ? w->at.replica_size : w->at.hold_size) != BT_OK)
            goto fail;
    }
    H5_CHECK(w->label, H5Gclose(model));
    return BT_OK;
fail:
    h5_close_quietly(model);
    return BT_ERR;
}

/* State `state` of params entry p: every rank creates the dataset (the parameter's full shape, or
 * a scalar). Without opt_row0 this rank's optimizer holds the state of its whole piece, written in
 * shares like the parameter. With opt_row0 it holds rows [opt_row0[i], +rows) of the piece (or
 * none, i < 0): of a cut parameter no other rank holds them; of a whole one the ranks of the split
 * group hold the same rows and share them. A scalar state (AdamW's step) is the same on every rank
 * that holds it: one writes it. */
static bt_status write_state(struct writer *w, hid_t group, const char *path, const char *state,
                             const struct nn_param_list *params, int64_t p, const struct optim *opt,
                             int64_t i, const int64_t *opt_row0) {
    const struct nn_split whole = {0};
    int64_t full[BT_MAX_DIMS];
    bool cut;
    struct nn_split split = split_of(params, p, full, &cut);
    bt_tensor *t = i >= 0 ? optim_state(opt, i, state) : NULL;
    const bt_tensor *param = params->tensors[p];
    if (i >= 0 && !t) return BT_ERR;
    if (t && check_tensor(w, path, t) != BT_OK) return BT_ERR;
    if (!opt_row0 && !t) return bt_error("%s: the optimizer has no state for %s", w->label, path);
    if (t && t->ndim == 0) {
        int64_t held = !opt_row0 || opt_row0[i] == 0 ? 1 : 0; /* rows: row 0's owner has it */
        return write_shared(w, group, path, state, t->dtype, 0, NULL, &whole, host_data(t), 0, held,
                            opt_row0 ? w->at.split_rank : w->at.hold_rank,
                            opt_row0 ? w->at.split_size : w->at.hold_size);
    }
    if (!t) { /* a shard of no rows on this rank; the dataset is still created collectively */
        bool count = state_is_count(state);
        return create_only(w, group, path, state, count ? BT_I64 : BT_F32, count ? 0 : param->ndim,
                           full);
    }
    if (!opt_row0)
        return write_shared(w, group, path, state, t->dtype, param->ndim, full, &split, host_data(t),
                            0, t->shape[0], cut ? w->at.replica_rank : w->at.hold_rank,
                            cut ? w->at.replica_size : w->at.hold_size);
    return write_shared(w, group, path, state, t->dtype, param->ndim, full, &split, host_data(t),
                        opt_row0[i], t->shape[0], cut ? 0 : w->at.split_rank,
                        cut ? 1 : w->at.split_size);
}

/* /optimizer: attributes name and step_count, then a group per parameter with state holding it.
 * Every rank walks the catalog, so the collective creates match; a stage creates the state of
 * another stage's parameters without writing it. */
static bt_status write_optimizer(struct writer *w, const struct nn_param_list *params,
                                 const struct optim *opt, const int64_t *opt_row0,
                                 const struct catalog *cat) {
    hid_t group = -1, param = -1;
    const char *const *states = NULL;
    char path[CKPT_LABEL_MAX];
    int n_states = opt ? optim_state_names(opt, &states) : 0;
    const char *name = !opt ? "" : optim_get_config(opt)->kind == OPTIM_ADAMW ? "adamw" : "sgd";
    H5_CHECK(w->label,
             group = H5Gcreate2(w->file, "optimizer", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    if (write_string(w->label, group, "name", name, false, w->at.rank) != BT_OK ||
        write_i64(w->label, group, "step_count", opt ? optim_step_count(opt) : 0) != BT_OK)
        goto fail;
    for (int64_t k = 0; k < cat->n; k++) {
        const struct entry *e = &cat->entries[k];
        if (!e->has_state) continue; /* not optimized at all: no state */
        int64_t i = e->local >= 0 ? optim_index(opt, e->name) : -1;
        H5_CHECK(w->label,
                 param = H5Gcreate2(group, e->name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
        for (int s = 0; s < n_states; s++) {
            bool count = state_is_count(states[s]);
            snprintf(path, sizeof path, "/optimizer/%s/%s", e->name, states[s]);
            if (e->local >= 0
                    ? write_state(w, param, path, states[s], params, e->local, opt, i, opt_row0)
                    : create_only(w, param, path, states[s], count ? BT_I64 : BT_F32,
                                  count ? 0 : e->ndim, e->full))
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
    free(w->nbytes);
    free(w->runs);
}

/* Opens `path` for writing: by this process alone, or by every rank of the group together through
 * parallel HDF5 (MPI-IO). */
static hid_t create_file(struct writer *w, const char *path) {
    hid_t fapl = -1, file = -1;
    MPI_Comm mpi;
    H5_CHECK(w->label, fapl = H5Pcreate(H5P_FILE_ACCESS));
    if (w->at.size > 1) {
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
                            const struct ckpt_layout *layout, const struct catalog *cat,
                            bool *collective_failed) {
    struct writer w = {.file = -1, .group = layout ? layout->group : NULL, .at = place_of(layout)};
    snprintf(w.label, sizeof w.label, "checkpoint %s", path);
    bt_status st = BT_ERR;
    if ((w.file = create_file(&w, path)) < 0) goto done;
    if (write_run_state(w.label, w.file, meta, w.at.rank) != BT_OK ||
        write_model(&w, params, cat) != BT_OK ||
        write_optimizer(&w, params, opt, layout ? layout->opt_row0 : NULL, cat) != BT_OK ||
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

static const char *group_name(struct comm *c) {
    return c ? comm_name(c) : "(none)";
}

/* With a pipeline the layout's group is split group × replica group × stage group, without one
 * (and with a split group) split group × replica group; every cut parameter is piece
 * comm_rank(split_group) of comm_size(split_group) of its full tensor. */
static bt_status check_layout(const struct nn_param_list *params, const struct ckpt_layout *layout,
                              const struct place *at, const char *label) {
    struct comm *split = layout ? layout->split_group : NULL;
    if (at->stage_size > 1 && at->size != at->split_size * at->replica_size * at->stage_size)
        return bt_error("%s: layout: group %s has %d ranks, but split group %s × replica group %s "
                        "× stage group %s = %d × %d × %d",
                        label, layout->group ? comm_name(layout->group) : "(this process)",
                        at->size, group_name(split), group_name(layout->replica_group),
                        comm_name(layout->stage_group), at->split_size, at->replica_size,
                        at->stage_size);
    if (at->stage_size == 1 && split && at->size != at->split_size * at->replica_size)
        return bt_error("%s: layout: group %s has %d ranks, but split group %s × replica group %s "
                        "= %d × %d",
                        label, layout->group ? comm_name(layout->group) : "(this process)",
                        at->size, comm_name(split),
                        layout->replica_group ? comm_name(layout->replica_group) : "(none)",
                        at->split_size, at->replica_size);
    for (int64_t i = 0; i < params->count; i++) {
        struct nn_split s = nn_param_split(params, i);
        if (!nn_split_is_cut(&s)) continue;
        if (!split)
            return bt_error("%s: /model/%s is piece %d of %d of its full tensor, but the layout "
                            "has no split group",
                            label, params->names[i], s.part, s.parts);
        if (s.part != at->split_rank || s.parts != at->split_size)
            return bt_error("%s: /model/%s is piece %d of %d of its full tensor, but this rank is "
                            "rank %d of %d of split group %s",
                            label, params->names[i], s.part, s.parts, at->split_rank,
                            at->split_size, comm_name(split));
    }
    return BT_OK;
}

static int64_t param_index(const struct nn_param_list *params, const char *name) {
    for (int64_t p = 0; p < params->count; p++)
        if (strcmp(params->names[p], name) == 0) return p;
    return -1;
}

/* The tensors a rank writes must be contiguous tensors of float32 or int64, every state the
 * optimizer names must exist and be its parameter's piece (with opt_row0, rows of it), and the
 * layout must describe this rank: checked before the file is created, so that no rank fails
 * half-way through the collective calls for a reason it could have seen before. */
static bt_status precheck(const struct nn_param_list *params, const struct optim *opt,
                          const struct ckpt_layout *layout, const struct place *at,
                          const char *label) {
    char got[96], want[96];
    const int64_t *opt_row0 = layout ? layout->opt_row0 : NULL;
    for (int64_t i = 0; i < params->count; i++) {
        const bt_tensor *t = params->tensors[i];
        if (!bt_is_contiguous(t) || (t->dtype != BT_F32 && t->dtype != BT_I64))
            return bt_error("%s: /model/%s must be a contiguous float32 or int64 tensor", label,
                            params->names[i]);
    }
    if (check_layout(params, layout, at, label) != BT_OK) return BT_ERR;
    const char *const *states = NULL;
    int n_states = opt ? optim_state_names(opt, &states) : 0;
    for (int64_t i = 0; opt && i < optim_num_params(opt); i++) {
        int64_t p = param_index(params, optim_param_name(opt, i));
        for (int s = 0; s < n_states; s++) {
            const bt_tensor *t = optim_state(opt, i, states[s]);
            if (!t) return bt_error_prefix(label);
            if (!bt_is_contiguous(t))
                return bt_error("%s: /optimizer/%s/%s must be a contiguous tensor", label,
                                optim_param_name(opt, i), states[s]);
            /* the ranks that hold none of it create it so (write_state, write_optimizer) */
            bool count = state_is_count(states[s]);
            if (count ? t->dtype != BT_I64 || t->ndim != 0 : t->dtype != BT_F32)
                return bt_error("%s: /optimizer/%s/%s must be %s", label, optim_param_name(opt, i),
                                states[s], count ? "a 0-d int64 tensor" : "float32");
            if (p < 0 || t->ndim == 0) continue; /* not written / a scalar */
            const bt_tensor *piece = params->tensors[p];
            int64_t row0 = opt_row0 ? opt_row0[i] : 0;
            bool fits = t->ndim == piece->ndim && row0 >= 0 &&
                        row0 + t->shape[0] <= piece->shape[0] &&
                        (opt_row0 || t->shape[0] == piece->shape[0]);
            for (int d = 1; fits && d < t->ndim; d++)
                fits = t->shape[d] == piece->shape[d];
            if (!fits)
                return bt_error("%s: /optimizer/%s/%s has shape %s, which is not rows [%lld, ...) "
                                "of its parameter's %s",
                                label, optim_param_name(opt, i), states[s],
                                bt_shape_str(t, got, sizeof got), (long long)row0,
                                bt_shape_str(piece, want, sizeof want));
        }
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
    struct place at = place_of(layout);
    struct catalog cat = {0};
    bt_status st = precheck(params, opt, layout, &at, label);
    if (st == BT_OK && leader) st = make_dirs(dir);
    if (agree(group, st, tmp) != BT_OK) return BT_ERR;
    /* with a pipeline, collective over the stage group: every rank gets here */
    st = catalog_build(&cat, params, opt, layout, &at, label);
    if (agree(group, st, tmp) != BT_OK) {
        catalog_free(&cat);
        return BT_ERR;
    }
    bool collective_failed = false;
    st = write_file(tmp, params, opt, meta, layout, &cat, &collective_failed);
    catalog_free(&cat);
    if (group && collective_failed) {
        /* the ranks' HDF5 calls no longer match: waiting for the others could hang them all */
        fflush(stdout);
        fprintf(stderr, "braid: error: rank %d: %s\n", comm_rank(group), bt_last_error());
        comm_abort(1);
    }
    if (agree(group, st, tmp) != BT_OK) {
        if (leader) unlink(tmp);
        /* no rank returns before the temporary file is gone (the error stays the agreed one) */
        if (group) (void)comm_barrier(group);
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
