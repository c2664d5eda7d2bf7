/* Define-by-run autograd. Each op that runs with grad mode on and an input that requires grad
 * records one node on the runtime's tape; bt_backward walks the tape from newest to oldest (a
 * valid reverse topological order) and accumulates gradients into .grad. */
#ifndef BRAID_CORE_AUTOGRAD_H
#define BRAID_CORE_AUTOGRAD_H

#include <stdbool.h>

#include "core/tensor.h"

struct ag_node;
typedef bt_status (*ag_backward_fn)(struct ag_node *node);

#define AG_MAX_SAVED 4
#define AG_MAX_ARGS 8

struct ag_node {
    const char *op;          /* op name, for messages */
    ag_backward_fn backward; /* reads out->grad, accumulates into inputs' grads */
    bt_tensor *out;
    int n_inputs;
    bt_tensor **inputs;
    bt_tensor *saved[AG_MAX_SAVED]; /* tensors the backward needs beyond inputs and out */
    double f[AG_MAX_ARGS];          /* float arguments (eps, p, scale...) */
    int64_t i[AG_MAX_ARGS];         /* integer arguments (dims, flags, offsets...) */
    struct ag_node *prev;           /* the next older node on the tape */
    bool released;                  /* backward already ran through it */
};

/* ---- user API ---- */
/* Backpropagate from a one-element tensor (gradient 1). Releases the nodes it ran through. */
bt_status bt_backward(bt_tensor *loss);
/* General form: `grad` has out's shape (NULL = ones for a one-element out). With retain_graph the
 * nodes stay usable for another backward. */
bt_status bt_backward_ex(bt_tensor *out, bt_tensor *grad, bool retain_graph);
bool bt_set_grad_enabled(bool enabled); /* returns the previous mode (no-grad scope: set false) */
bool bt_is_grad_enabled(void);
bt_tensor *bt_requires_grad_(bt_tensor *t, bool requires_grad); /* leaves only; returns t */
void bt_retain_grad(bt_tensor *t);
void bt_zero_grad(bt_tensor *t); /* sets .grad to zeros if it exists */

/* Installs fn (NULL: none) to be called during every backward, once for each leaf that requires
 * grad and takes part in the graph, as soon as its gradient is final: after the last node that
 * uses it has run (in tape order), or at the end of the backward for a leaf whose nodes did not
 * run. Data parallelism starts reducing a gradient bucket there, overlapping the rest of the
 * backward. The hook must not record ops on the tape. */
void ag_set_leaf_hook(void (*fn)(bt_tensor *leaf, void *ctx), void *ctx);
/* Installs fn (NULL: none) to be called after every node a backward runs: data parallelism lets
 * the transfers it started progress there (MPI moves non-blocking collectives only inside MPI
 * calls). Must be cheap and must not record ops. */
void ag_set_tick_hook(void (*fn)(void *ctx), void *ctx);

/* ---- for op front ends ---- */
/* Records a node when grad mode is on and any input requires grad: marks out as requiring grad and
 * returns the node for the caller to fill saved/f/i; otherwise NULL (nothing recorded). */
struct ag_node *ag_record(const char *op, ag_backward_fn backward, bt_tensor *out, int n_inputs,
                          bt_tensor *const *inputs);
/* True when the input needs a gradient from this backward. */
static inline bool ag_wants_grad(const bt_tensor *t) {
    return t && t->requires_grad;
}
/* Adds g (contiguous float32, t's logical shape) into t->grad. g may be adopted, not copied. */
bt_status ag_accumulate(bt_tensor *t, bt_tensor *g);
/* A step tensor a backward function made for its own use (bt_empty) and is done with: its block
 * goes back to the arena for the next allocation of its size. Nothing may refer to it after. */
void ag_release_scratch(bt_tensor *t);
/* The buffer a kernel should write t's gradient into: *beta = 0 means overwrite (fresh buffer),
 * 1 means accumulate into the existing gradient. NULL on out-of-memory. */
bt_tensor *ag_grad_target(bt_tensor *t, float *beta);

#endif
