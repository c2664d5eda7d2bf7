/* The nn module tree: creating and freeing modules, children, parameter registration, dotted
 * names and train/eval. Layers live in core/nn_layers.c, init schemes in core/nn_init.c. */
#include "core/nn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/autograd.h"

static char *copy_string(const char *s) {
    size_t n = strlen(s) + 1;
    char *c = malloc(n);
    if (c) memcpy(c, s, n);
    return c;
}

/* Names are one path component: PyTorch rejects "." in module and parameter names too. */
static bool check_name(const char *what, const char *name, bool allow_empty) {
    if (!name) {
        bt_error("nn: %s name is NULL", what);
        return false;
    }
    if (!allow_empty && !name[0]) {
        bt_error("nn: %s name is empty", what);
        return false;
    }
    if (strchr(name, '.')) {
        bt_error("nn: %s name \"%s\" must not contain \".\"", what, name);
        return false;
    }
    return true;
}

/* ---- creating, freeing ---- */

void *nn_module_new(size_t size, const char *name) {
    if (size < sizeof(struct nn_module)) {
        bt_error("nn: module struct size %zu is smaller than struct nn_module", size);
        return NULL;
    }
    if (!check_name("module", name, true)) return NULL;
    struct nn_module *m = calloc(1, size);
    char *own_name = copy_string(name), *path = copy_string(name);
    if (!m || !own_name || !path) {
        free(m);
        free(own_name);
        free(path);
        bt_error("nn: out of memory creating module \"%s\"", name);
        return NULL;
    }
    m->kind = NN_MODULE;
    m->name = own_name;
    m->path = path;
    m->training = true;
    return m;
}

struct nn_module *nn_module_create(const char *name) {
    return nn_module_new(sizeof(struct nn_module), name);
}

static void free_tree(struct nn_module *m) {
    if (m->on_free) m->on_free(m);
    for (int k = 0; k < m->n_children; k++)
        free_tree(m->children[k]);
    for (int k = 0; k < m->n_params; k++) {
        bt_tensor_free(m->params[k].tensor);
        free(m->params[k].name);
    }
    free(m->children);
    free(m->params);
    free(m->name);
    free(m->path);
    free(m);
}

void nn_module_free(struct nn_module *m) {
    if (!m) return;
    struct nn_module *parent = m->parent;
    if (parent) { /* freeing a subtree: its parent forgets it */
        int k = 0;
        while (parent->children[k] != m)
            k++;
        for (; k + 1 < parent->n_children; k++)
            parent->children[k] = parent->children[k + 1];
        parent->n_children--;
    }
    free_tree(m);
}

/* ---- the tree ---- */

/* Recomputes the dotted paths of m's subtree after m got a parent. */
static bt_status update_paths(struct nn_module *m) {
    const char *prefix = m->parent ? m->parent->path : "";
    size_t n = strlen(prefix) + 1 + strlen(m->name) + 1;
    char *path = malloc(n);
    if (!path) return bt_error("nn: out of memory naming module \"%s\"", m->name);
    snprintf(path, n, "%s%s%s", prefix, prefix[0] ? "." : "", m->name);
    free(m->path);
    m->path = path;
    for (int k = 0; k < m->n_children; k++)
        if (update_paths(m->children[k]) != BT_OK) return BT_ERR;
    return BT_OK;
}

struct nn_module *nn_module_child(const struct nn_module *m, const char *name) {
    for (int k = 0; m && name && k < m->n_children; k++)
        if (strcmp(m->children[k]->name, name) == 0) return m->children[k];
    return NULL;
}

struct nn_module *nn_module_add_child(struct nn_module *parent, struct nn_module *child) {
    if (!parent || !child) {
        if (!bt_has_error()) bt_error("nn: add_child: module is NULL");
        return NULL;
    }
    if (!check_name("child module", child->name, false)) return NULL;
    if (child->parent) {
        bt_error("nn: module %s already has a parent", child->path);
        return NULL;
    }
    if (child == parent) {
        bt_error("nn: module %s cannot be its own child", parent->path);
        return NULL;
    }
    if (nn_module_child(parent, child->name)) {
        bt_error("nn: module %s already has a child named \"%s\"", parent->path, child->name);
        return NULL;
    }
    if (parent->n_children == parent->cap_children) {
        int cap = parent->cap_children ? 2 * parent->cap_children : 4;
        struct nn_module **grown = realloc(parent->children, (size_t)cap * sizeof(*grown));
        if (!grown) {
            bt_error("nn: out of memory adding child \"%s\" to %s", child->name, parent->path);
            return NULL;
        }
        parent->children = grown;
        parent->cap_children = cap;
    }
    child->parent = parent;
    if (update_paths(child) != BT_OK) {
        child->parent = NULL;
        return NULL;
    }
    parent->children[parent->n_children++] = child;
    return child;
}

void nn_module_train(struct nn_module *m, bool training) {
    if (!m) return;
    m->training = training;
    for (int k = 0; k < m->n_children; k++)
        nn_module_train(m->children[k], training);
}

void *nn_module_discard(struct nn_module *m) {
    nn_module_free(m);
    return NULL;
}

bt_tensor *nn_module_missing(const char *layer) {
    if (!bt_has_error()) bt_error("%s: module is NULL", layer);
    return NULL;
}

/* ---- parameters ---- */

static struct nn_param *find_local_param(const struct nn_module *m, const char *name) {
    for (int k = 0; k < m->n_params; k++)
        if (strcmp(m->params[k].name, name) == 0) return &m->params[k];
    return NULL;
}

/* Registers t (taking over one reference) as m's parameter `name`; `field`, when not NULL, is the
 * concrete module's pointer to it. On failure t is freed. */
static bt_tensor *register_param(struct nn_module *m, const char *name, bt_tensor *t,
                                 bt_tensor **field) {
    if (!t) return NULL;
    if (!check_name("parameter", name, false)) goto fail;
    if (find_local_param(m, name)) {
        bt_error("nn: module %s already has a parameter named \"%s\"", m->path, name);
        goto fail;
    }
    if (m->n_params == m->cap_params) {
        int cap = m->cap_params ? 2 * m->cap_params : 4;
        struct nn_param *grown = realloc(m->params, (size_t)cap * sizeof(*grown));
        if (!grown) goto oom;
        m->params = grown;
        m->cap_params = cap;
    }
    char *own_name = copy_string(name);
    if (!own_name) goto oom;
    bt_requires_grad_(t, true);
    m->params[m->n_params++] = (struct nn_param){own_name, t, field, {0}};
    if (field) *field = t;
    return t;
oom:
    bt_error("nn: out of memory registering parameter \"%s\" of %s", name, m->path);
fail:
    bt_tensor_free(t);
    return NULL;
}

bt_tensor *nn_module_add_parameter(struct nn_module *m, const char *name, int ndim,
                                   const int64_t *shape, bt_tensor **field) {
    if (!m) {
        if (!bt_has_error()) bt_error("nn: add_parameter: module is NULL");
        return NULL;
    }
    return register_param(m, name, bt_tensor_new(ndim, shape, BT_F32, bt_cpu()), field);
}

bt_status nn_module_set_parameter(struct nn_module *m, const char *name, bt_tensor *t) {
    if (!m || !t) return bt_has_error() ? BT_ERR : bt_error("nn: set_parameter: argument is NULL");
    struct nn_param *p = find_local_param(m, name ? name : "");
    if (!p) return bt_error("nn: module %s has no parameter named \"%s\"", m->path, name);
    char a[96], b[96];
    if (!t->persistent)
        return bt_error("nn: parameter %s.%s must be a persistent tensor (bt_tensor_new)", m->path,
                        name);
    if (!bt_same_shape(p->tensor, t) || t->dtype != p->tensor->dtype)
        return bt_error("nn: parameter %s.%s is %s %s, cannot replace it with %s %s", m->path, name,
                        bt_dtype_name(p->tensor->dtype), bt_shape_str(p->tensor, a, sizeof a),
                        bt_dtype_name(t->dtype), bt_shape_str(t, b, sizeof b));
    bt_tensor_retain(t);
    bt_tensor_free(p->tensor);
    p->tensor = t;
    if (p->field) *p->field = t;
    return BT_OK;
}

/* ---- split parameters (tensor parallelism) ---- */

static int split_blocks(const struct nn_split *s) {
    return s->n_blocks > 0 ? s->n_blocks : 1;
}

/* Full size of block b of a dim whose full size is full_dim. */
static int64_t split_block_size(const struct nn_split *s, int b, int64_t full_dim) {
    return s->n_blocks > 0 ? s->blocks[b] : full_dim;
}

bool nn_split_is_cut(const struct nn_split *s) {
    return s && s->parts > 1;
}

/* "(64, 64, 64)" for messages */
static const char *blocks_str(const struct nn_split *s, int64_t full_dim, char *buf, size_t size) {
    size_t len = (size_t)snprintf(buf, size, "(");
    for (int b = 0; b < split_blocks(s) && len < size; b++)
        len += (size_t)snprintf(buf + len, size - len, "%s%lld", b ? ", " : "",
                                (long long)split_block_size(s, b, full_dim));
    if (len < size) snprintf(buf + len, size - len, ")");
    return buf;
}

/* Whether s is a valid cut of a tensor whose full size along s->dim is full_dim. */
static bool split_fits(const struct nn_split *s, int ndim, int64_t full_dim) {
    if (s->parts < 1 || s->part < 0 || s->part >= s->parts || s->dim < 0 || s->dim >= ndim ||
        s->n_blocks < 0 || s->n_blocks > NN_SPLIT_MAX_BLOCKS)
        return false;
    int64_t sum = 0;
    for (int b = 0; b < split_blocks(s); b++) {
        int64_t n = split_block_size(s, b, full_dim);
        if (n <= 0 || n % s->parts != 0) return false;
        sum += n;
    }
    return sum == full_dim;
}

bt_status nn_module_set_split(struct nn_module *m, const char *name, const struct nn_split *split) {
    if (!m || !split) return bt_has_error() ? BT_ERR : bt_error("nn: set_split: argument is NULL");
    struct nn_param *p = find_local_param(m, name ? name : "");
    if (!p) return bt_error("nn: module %s has no parameter named \"%s\"", m->path, name);
    const bt_tensor *t = p->tensor;
    int64_t local = split->dim >= 0 && split->dim < t->ndim ? t->shape[split->dim] : -1;
    char blocks[96];
    if (local < 0 || !split_fits(split, t->ndim, local * split->parts))
        return bt_error("nn: parameter %s.%s: dim %d of size %lld is not piece %d of %d of blocks "
                        "%s",
                        m->path, name, split->dim, (long long)local, split->part, split->parts,
                        blocks_str(split, local * split->parts, blocks, sizeof blocks));
    p->split = *split;
    return BT_OK;
}

struct nn_split nn_param_split(const struct nn_param_list *list, int64_t i) {
    if (!list || !list->splits || i < 0 || i >= list->count) return (struct nn_split){0};
    return list->splits[i];
}

void nn_split_full_shape(const struct nn_split *s, const bt_tensor *local, int64_t *shape) {
    for (int d = 0; d < local->ndim; d++)
        shape[d] = local->shape[d] * (nn_split_is_cut(s) && d == s->dim ? s->parts : 1);
}

/* Copies between piece `part` of full and `local`, which holds rows [rows0, rows0 + its rows) of
 * that piece, in the direction given: the cut dim is a run of segments (one per block), each a
 * contiguous range of the piece and of the full tensor. */
static bt_status split_copy(const char *op, const struct nn_split *s, int part, bt_tensor *full,
                            bt_tensor *local, int64_t rows0, bool to_local) {
    char a[96], b[96], blocks[96];
    struct nn_split whole = {.parts = 1};
    if (!nn_split_is_cut(s)) s = &whole;
    if (!full || !local) return bt_error("nn: %s: tensor is NULL", op);
    if (full->dtype != local->dtype || !bt_is_contiguous(full) || !bt_is_contiguous(local) ||
        full->storage->device.type != BT_DEVICE_CPU || local->storage->device.type != BT_DEVICE_CPU)
        return bt_error("nn: %s: expected contiguous CPU tensors of one dtype, got %s and %s", op,
                        bt_dtype_name(full->dtype), bt_dtype_name(local->dtype));
    int ndim = full->ndim, dim = s->dim;
    bool fits = local->ndim == ndim && ndim > 0 && split_fits(s, ndim, full->shape[dim]);
    int64_t piece_rows = fits ? full->shape[0] / (dim == 0 ? s->parts : 1) : 0;
    for (int d = 0; fits && d < ndim; d++) {
        int64_t want = d == dim ? full->shape[d] / s->parts : full->shape[d];
        fits =
            d == 0 ? rows0 >= 0 && rows0 + local->shape[0] <= piece_rows : local->shape[d] == want;
    }
    if (!fits)
        return bt_error("nn: %s: %s is not rows [%lld, ...) of piece %d of %d along dim %d of %s "
                        "(blocks %s)",
                        op, bt_shape_str(local, a, sizeof a), (long long)rows0, part, s->parts, dim,
                        bt_shape_str(full, b, sizeof b),
                        blocks_str(s, full->shape[dim], blocks, sizeof blocks));
    int nb = split_blocks(s);
    int64_t local_start[NN_SPLIT_MAX_BLOCKS], full_start[NN_SPLIT_MAX_BLOCKS],
        len[NN_SPLIT_MAX_BLOCKS];
    for (int k = 0, lo = 0, fo = 0; k < nb; k++) {
        int64_t n = split_block_size(s, k, full->shape[dim]), per = n / s->parts;
        local_start[k] = lo;
        full_start[k] = fo + (int64_t)part * per;
        len[k] = per;
        lo += (int)per;
        fo += (int)n;
    }
    size_t esize = bt_dtype_size(full->dtype);
    char *fd = bt_data(full), *ld = bt_data(local);
    int64_t inner = 1; /* elements after dim */
    for (int d = dim + 1; d < ndim; d++)
        inner *= full->shape[d];
    int64_t rows = local->shape[0];
    if (dim == 0) { /* a local row r is piece row rows0 + r: find its block */
        for (int64_t r = 0; r < rows; r++) {
            int64_t i = rows0 + r;
            int k = 0;
            while (k + 1 < nb && i >= local_start[k + 1])
                k++;
            char *f = fd + (size_t)((full_start[k] + i - local_start[k]) * inner) * esize;
            char *l = ld + (size_t)(r * inner) * esize;
            memcpy(to_local ? l : f, to_local ? f : l, (size_t)inner * esize);
        }
        return BT_OK;
    }
    int64_t mid = 1; /* elements of the dims between 0 and dim (exclusive) */
    for (int d = 1; d < dim; d++)
        mid *= full->shape[d];
    int64_t full_dim = full->shape[dim], local_dim = full_dim / s->parts;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < mid; j++) {
            int64_t o = (rows0 + r) * mid + j, ol = r * mid + j;
            for (int k = 0; k < nb; k++) {
                char *f = fd + (size_t)((o * full_dim + full_start[k]) * inner) * esize;
                char *l = ld + (size_t)((ol * local_dim + local_start[k]) * inner) * esize;
                memcpy(to_local ? l : f, to_local ? f : l, (size_t)(len[k] * inner) * esize);
            }
        }
    return BT_OK;
}

bt_status nn_split_take(const struct nn_split *s, const bt_tensor *full, bt_tensor *local,
                        int64_t rows0) {
    return split_copy("split_take", s, s && nn_split_is_cut(s) ? s->part : 0, (bt_tensor *)full,
                      local, rows0 < 0 ? 0 : rows0, true);
}

bt_status nn_split_place(const struct nn_split *s, int part, const bt_tensor *piece,
                         bt_tensor *full) {
    return split_copy("split_place", s, part, full, (bt_tensor *)piece, 0, false);
}

/* ---- named parameters ---- */

static bool list_contains(const struct nn_param_list *l, const bt_tensor *t) {
    for (int64_t k = 0; k < l->count; k++)
        if (l->tensors[k] == t) return true;
    return false;
}

static bt_status list_push(struct nn_param_list *l, int64_t *cap, const char *prefix,
                           const struct nn_param *p) {
    const char *name = p->name;
    if (l->count == *cap) {
        int64_t grown_cap = *cap ? 2 * *cap : 16;
        char **names = realloc(l->names, (size_t)grown_cap * sizeof(*names));
        if (names) l->names = names;
        bt_tensor **tensors = realloc(l->tensors, (size_t)grown_cap * sizeof(*tensors));
        if (tensors) l->tensors = tensors;
        struct nn_split *splits = realloc(l->splits, (size_t)grown_cap * sizeof(*splits));
        if (splits) l->splits = splits;
        if (!names || !tensors || !splits) return bt_error("nn: out of memory listing parameters");
        *cap = grown_cap;
    }
    size_t n = strlen(prefix) + strlen(name) + 1;
    char *full = malloc(n);
    if (!full) return bt_error("nn: out of memory listing parameters");
    snprintf(full, n, "%s%s", prefix, name);
    l->names[l->count] = full;
    l->tensors[l->count] = p->tensor;
    l->splits[l->count] = p->split;
    l->count++;
    return BT_OK;
}

/* prefix is "" for the module asked, else "a.b." */
static bt_status collect(const struct nn_module *m, const char *prefix, struct nn_param_list *l,
                         int64_t *cap) {
    for (int k = 0; k < m->n_params; k++) {
        if (list_contains(l, m->params[k].tensor)) continue; /* tied: first name wins */
        if (list_push(l, cap, prefix, &m->params[k]) != BT_OK) return BT_ERR;
    }
    for (int k = 0; k < m->n_children; k++) {
        const struct nn_module *c = m->children[k];
        size_t n = strlen(prefix) + strlen(c->name) + 2;
        char *child_prefix = malloc(n);
        if (!child_prefix) return bt_error("nn: out of memory listing parameters");
        snprintf(child_prefix, n, "%s%s.", prefix, c->name);
        bt_status st = collect(c, child_prefix, l, cap);
        free(child_prefix);
        if (st != BT_OK) return BT_ERR;
    }
    return BT_OK;
}

bt_status nn_named_parameters(const struct nn_module *m, struct nn_param_list *out) {
    *out = (struct nn_param_list){0};
    if (!m) return bt_has_error() ? BT_ERR : bt_error("nn: named_parameters: module is NULL");
    int64_t cap = 0;
    if (collect(m, "", out, &cap) != BT_OK) {
        nn_param_list_free(out);
        return BT_ERR;
    }
    return BT_OK;
}

void nn_param_list_free(struct nn_param_list *list) {
    if (!list) return;
    for (int64_t k = 0; k < list->count; k++)
        free(list->names[k]);
    free(list->names);
    free(list->tensors);
    free(list->splits);
    *list = (struct nn_param_list){0};
}

int64_t nn_num_parameters(const struct nn_module *m) {
    struct nn_param_list l;
    if (nn_named_parameters(m, &l) != BT_OK) return -1;
    int64_t n = 0;
    for (int64_t k = 0; k < l.count; k++)
        n += bt_numel(l.tensors[k]);
    nn_param_list_free(&l);
    return n;
}

bt_tensor *nn_get_parameter(const struct nn_module *m, const char *dotted_name) {
    if (!m || !dotted_name) {
        if (!bt_has_error()) bt_error("nn: get_parameter: argument is NULL");
        return NULL;
    }
    const struct nn_module *at = m;
    const char *rest = dotted_name;
    for (const char *dot; (dot = strchr(rest, '.')) != NULL; rest = dot + 1) {
        const struct nn_module *next = NULL;
        for (int k = 0; k < at->n_children; k++) {
            const char *cn = at->children[k]->name;
            if (strlen(cn) == (size_t)(dot - rest) && strncmp(cn, rest, (size_t)(dot - rest)) == 0)
                next = at->children[k];
        }
        if (!next) break;
        at = next;
    }
    struct nn_param *p = strchr(rest, '.') ? NULL : find_local_param(at, rest);
    if (!p) {
        bt_error("nn: module %s has no parameter named \"%s\"", m->path[0] ? m->path : "(root)",
                 dotted_name);
        return NULL;
    }
    return p->tensor;
}

/* ---- moving a module to a device ---- */

/* The storage's bytes to `device` (a fresh buffer there), the old buffer freed: every tensor on
 * this storage sees the move */
static bt_status move_storage(struct bt_storage *st, bt_device device) {
    if (bt_device_equal(st->device, device)) return BT_OK;
    if (!st->persistent) return bt_error("nn: module_to: a parameter's storage is a step tensor's");
    const struct bt_backend *to = bt_backend_for(device, "module_to");
    const struct bt_backend *from = to ? bt_backend_for(st->device, "module_to") : NULL;
    if (!from) return BT_ERR;
    void *data = to->alloc(st->nbytes ? st->nbytes : 1);
    if (!data) return bt_error("nn: module_to: out of memory for %zu bytes", st->nbytes);
    if (st->device.type == BT_DEVICE_CPU) {
        to->from_host(data, st->data, st->nbytes);
    } else if (device.type == BT_DEVICE_CPU) {
        from->to_host(data, st->data, st->nbytes);
    } else {
        to->free(data);
        return bt_error("nn: module_to: device to device moves go through the cpu");
    }
    from->free(st->data);
    st->data = data;
    st->device = device;
    return BT_OK;
}

bt_status nn_module_to(struct nn_module *m, bt_device device) {
    if (!m) return bt_error("nn: module_to: module is NULL");
    if (device.type != BT_DEVICE_CPU && !bt_backend_for(device, "module_to")) return BT_ERR;
    struct nn_param_list list;
    if (nn_named_parameters(m, &list) != BT_OK) return BT_ERR;
    bt_status st = BT_OK;
    for (int64_t i = 0; i < list.count && st == BT_OK; i++) {
        bt_tensor *t = list.tensors[i];
        st = move_storage(t->storage, device);
        if (st == BT_OK && t->grad) st = move_storage(t->grad->storage, device);
    }
    nn_param_list_free(&list);
    return st;
}
