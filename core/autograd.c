/* The autograd engine: recording nodes on the runtime's tape, the backward walk, and gradient
 * accumulation. Ops' backward functions live beside their forwards in core/ops/. */
#include "core/autograd.h"

#include <string.h>

#include "core/arena.h"
#include "core/backend.h"
#include "core/profile.h"
#include "core/runtime.h"

bool bt_set_grad_enabled(bool enabled) {
    struct bt_runtime *rt = bt_runtime();
    bool previous = rt->grad_enabled;
    rt->grad_enabled = enabled;
    return previous;
}

bool bt_is_grad_enabled(void) {
    return bt_runtime()->grad_enabled;
}

bt_tensor *bt_requires_grad_(bt_tensor *t, bool requires_grad) {
    if (!t) return NULL;
    if (t->grad_fn) {
        bt_error("requires_grad_: only leaf tensors can change requires_grad (this one was made by "
                 "%s)",
                 t->grad_fn->op);
        return NULL;
    }
    if (requires_grad && bt_dtype_is_integer(t->dtype)) {
        bt_error("requires_grad_: only floating-point tensors can require gradients, got %s",
                 bt_dtype_name(t->dtype));
        return NULL;
    }
    t->requires_grad = requires_grad;
    return t;
}

void bt_retain_grad(bt_tensor *t) {
    if (t) t->retains_grad = true;
}

void bt_zero_grad(bt_tensor *t) {
    if (t && t->grad) bt_fill(t->grad, 0.0);
}

struct ag_node *ag_record(const char *op, ag_backward_fn backward, bt_tensor *out, int n_inputs,
                          bt_tensor *const *inputs) {
    struct bt_runtime *rt = bt_runtime();
    if (!rt->grad_enabled) return NULL;
    bool any = false;
    for (int k = 0; k < n_inputs; k++)
        any |= ag_wants_grad(inputs[k]);
    if (!any) return NULL;
    struct ag_node *node =
        bt_step_alloc(sizeof(*node) + (size_t)n_inputs * sizeof(bt_tensor *), op);
    if (!node) return NULL;
    memset(node, 0, sizeof(*node));
    node->op = op;
    node->backward = backward;
    node->out = out;
    node->n_inputs = n_inputs;
    node->inputs = (bt_tensor **)(node + 1);
    memcpy(node->inputs, inputs, (size_t)n_inputs * sizeof(bt_tensor *));
    node->prev = rt->tape;
    rt->tape = node;
    out->requires_grad = true;
    out->grad_fn = node;
    bt_profile_mark("forward", op);
    return node;
}

/* A leaf's gradient is persistent when the leaf is (parameters); anything else lives in the step.
 * Step buffers are left uninitialised: ag_grad_target hands them out with beta = 0 (overwrite). */
static bt_tensor *new_grad_buffer(bt_tensor *t) {
    bt_device dev = t->storage->device;
    if (t->persistent) return bt_tensor_new(t->ndim, t->shape, BT_F32, dev);
    return bt_empty(t->ndim, t->shape, BT_F32, dev);
}

bt_tensor *ag_grad_target(bt_tensor *t, float *beta) {
    if (!t->grad) {
        t->grad = new_grad_buffer(t);
        t->grad_owned = true;
        *beta = 0.0f; /* fresh buffer: the kernel may overwrite */
        return t->grad;
    }
    if (!t->grad_owned) { /* adopted from another tensor's backward: copy before writing into it */
        bt_tensor *own = new_grad_buffer(t);
        if (!own) return NULL;
        if (bt_copy_(own, t->grad) != BT_OK) return NULL;
        t->grad = own;
        t->grad_owned = true;
    }
    *beta = 1.0f;
    return t->grad;
}

bt_status ag_accumulate(bt_tensor *t, bt_tensor *g) {
    if (!g) return BT_ERR;
    if (!t->grad && !t->persistent) { /* adopt: no copy; never written in place later */
        t->grad = g;
        t->grad_owned = false;
        g->storage->adopted = true; /* so its producer's backward never hands it back */
        return BT_OK;
    }
    float beta;
    bt_tensor *dst = ag_grad_target(t, &beta);
    if (!dst) return BT_ERR;
    const struct bt_backend *be = bt_backend_for(dst->storage->device, "backward");
    if (!be) return BT_ERR;
    int64_t n = bt_numel(dst);
    if (beta == 0.0f) {
        be->copy_strided(bt_data(dst), BT_F32, bt_data(g), BT_F32, 1, &n, (const int64_t[]){1});
    } else {
        int64_t unit = 1;
        be->binary(BT_BIN_ADD, bt_f32(dst), bt_f32(dst), &unit, bt_f32(g), &unit, 1, &n);
    }
    return BT_OK;
}

void ag_set_leaf_hook(void (*fn)(bt_tensor *leaf, void *ctx), void *ctx) {
    struct bt_runtime *rt = bt_runtime();
    rt->leaf_hook = fn;
    rt->leaf_hook_ctx = ctx;
}

void ag_set_tick_hook(void (*fn)(void *ctx), void *ctx) {
    struct bt_runtime *rt = bt_runtime();
    rt->tick_hook = fn;
    rt->tick_hook_ctx = ctx;
}

static bool is_hooked_leaf(const bt_tensor *t) {
    return t && t->requires_grad && !t->grad_fn;
}

/* Counts, for every leaf input of the tape's live nodes, the uses the backward will run, and lists
 * each leaf once in *leaves (step memory). */
static bt_status count_leaf_uses(struct ag_node *tape, bt_tensor ***leaves, int64_t *n_leaves) {
    int64_t uses = 0, n = 0;
    for (struct ag_node *node = tape; node; node = node->prev)
        if (!node->released) uses += node->n_inputs;
    bt_tensor **list = bt_step_alloc((size_t)(uses ? uses : 1) * sizeof *list, "backward hooks");
    if (!list) return BT_ERR;
    for (struct ag_node *node = tape; node; node = node->prev) {
        if (node->released) continue;
        for (int i = 0; i < node->n_inputs; i++) {
            bt_tensor *x = node->inputs[i];
            if (!is_hooked_leaf(x)) continue;
            if (x->ag_pending++ == 0) list[n++] = x;
        }
    }
    *leaves = list;
    *n_leaves = n;
    return BT_OK;
}

/* After node ran: leaves whose last use it was are final. */
static void leaves_done(struct bt_runtime *rt, struct ag_node *node) {
    for (int i = 0; i < node->n_inputs; i++) {
        bt_tensor *x = node->inputs[i];
        if (is_hooked_leaf(x) && x->ag_pending > 0 && --x->ag_pending == 0)
            rt->leaf_hook(x, rt->leaf_hook_ctx);
    }
}

bt_status bt_backward(bt_tensor *loss) {
    return bt_backward_ex(loss, NULL, false);
}

/* Hands a non-leaf's gradient back to its step arena once the node that consumed it has run:
 * the buffer autograd made for it (owned), whole, not taken over as another tensor's .grad
 * (adopted), so nothing refers to it any more. The next gradient of the same size reuses it. */
static void release_grad(bt_tensor *g, bool owned) {
    struct bt_storage *s = g ? g->storage : NULL;
    if (!owned || !s || s->persistent || s->adopted || !s->arena || g->offset != 0 ||
        bt_nbytes(g) != s->nbytes)
        return;
    bt_arena_recycle(s->arena, s->data, s->nbytes);
    s->arena = NULL;
}

void ag_release_scratch(bt_tensor *t) {
    release_grad(t, true);
}

bt_status bt_backward_ex(bt_tensor *out, bt_tensor *grad, bool retain_graph) {
    char a[64], b[64];
    if (!out) return bt_has_error() ? BT_ERR : bt_error("backward: tensor is NULL");
    if (!out->requires_grad)
        return bt_error("backward: tensor %s does not require grad and has no grad_fn",
                        bt_shape_str(out, a, sizeof a));
    if (out->grad_fn && out->grad_fn->released)
        return bt_error("backward: trying to backward through the graph a second time (%s's "
                        "saved tensors were released; pass retain_graph to keep them)",
                        out->grad_fn->op);
    if (!grad) {
        if (bt_numel(out) != 1)
            return bt_error("backward: grad can be implicitly created only for one-element "
                            "outputs, got shape %s",
                            bt_shape_str(out, a, sizeof a));
        grad = bt_ones(out->ndim, out->shape, BT_F32, out->storage->device);
        if (!grad) return BT_ERR;
    } else if (!bt_same_shape(grad, out) || grad->dtype != BT_F32) {
        return bt_error("backward: gradient %s %s does not match output %s float32",
                        bt_shape_str(grad, a, sizeof a), bt_dtype_name(grad->dtype),
                        bt_shape_str(out, b, sizeof b));
    } else {
        grad = bt_contiguous(grad);
        if (!grad) return BT_ERR;
    }
    if (ag_accumulate(out, grad) != BT_OK) return BT_ERR;
    if (!out->grad_fn) return BT_OK; /* a leaf: its gradient is the seed */

    /* Walk the tape from newest to oldest. A node runs when its output received a gradient; the
     * nodes it ran are unlinked (released) unless retain_graph, others stay for a later backward.
     */
    struct bt_runtime *rt = bt_runtime();
    bt_tensor **leaves = NULL;
    int64_t n_leaves = 0;
    if (rt->leaf_hook && count_leaf_uses(rt->tape, &leaves, &n_leaves) != BT_OK) return BT_ERR;
    struct ag_node **link = &rt->tape;
    bt_status status = BT_OK;
    while (*link) {
        struct ag_node *node = *link;
        bt_tensor *y = node->out;
        if (!y->grad || node->released) {
            link = &node->prev;
            continue;
        }
        bt_profile_mark("backward", "(autograd, hooks)");
        bt_status ran = node->backward(node);
        bt_profile_mark("backward", node->op);
        if (ran != BT_OK) {
            if (!bt_has_error()) bt_error("backward: %s failed", node->op);
            status = BT_ERR;
            break;
        }
        if (!y->retains_grad && y != out) {
            release_grad(y->grad, y->grad_owned);
            y->grad = NULL;
        }
        if (leaves) leaves_done(rt, node);
        if (rt->tick_hook) rt->tick_hook(rt->tick_hook_ctx);
        if (retain_graph) {
            link = &node->prev;
        } else {
            node->released = true;
            *link = node->prev;
        }
    }
    if (!out->retains_grad && out->grad_fn) out->grad = NULL;
    for (int64_t i = 0; i < n_leaves; i++) { /* leaves of nodes that did not run */
        if (leaves[i]->ag_pending == 0) continue;
        leaves[i]->ag_pending = 0;
        if (status == BT_OK) rt->leaf_hook(leaves[i], rt->leaf_hook_ctx);
    }
    return status;
}
