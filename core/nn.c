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
    m->params[m->n_params++] = (struct nn_param){own_name, t, field};
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

/* ---- named parameters ---- */

static bool list_contains(const struct nn_param_list *l, const bt_tensor *t) {
    for (int64_t k = 0; k < l->count; k++)
        if (l->tensors[k] == t) return true;
    return false;
}

static bt_status list_push(struct nn_param_list *l, int64_t *cap, const char *prefix,
                           const char *name, bt_tensor *t) {
    if (l->count == *cap) {
        int64_t grown_cap = *cap ? 2 * *cap : 16;
        char **names = realloc(l->names, (size_t)grown_cap * sizeof(*names));
        if (names) l->names = names;
        bt_tensor **tensors = realloc(l->tensors, (size_t)grown_cap * sizeof(*tensors));
        if (tensors) l->tensors = tensors;
        if (!names || !tensors) return bt_error("nn: out of memory listing parameters");
        *cap = grown_cap;
    }
    size_t n = strlen(prefix) + strlen(name) + 1;
    char *full = malloc(n);
    if (!full) return bt_error("nn: out of memory listing parameters");
    snprintf(full, n, "%s%s", prefix, name);
    l->names[l->count] = full;
    l->tensors[l->count] = t;
    l->count++;
    return BT_OK;
}

/* prefix is "" for the module asked, else "a.b." */
static bt_status collect(const struct nn_module *m, const char *prefix, struct nn_param_list *l,
                         int64_t *cap) {
    for (int k = 0; k < m->n_params; k++) {
        if (list_contains(l, m->params[k].tensor)) continue; /* tied: first name wins */
        if (list_push(l, cap, prefix, m->params[k].name, m->params[k].tensor) != BT_OK)
            return BT_ERR;
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
