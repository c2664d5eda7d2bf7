/* The one runtime context of a braid process: the step arena, the autograd tape, grad mode, the
 * last error and the dropout RNG. Reached only through bt_runtime(). */
#ifndef BRAID_CORE_RUNTIME_H
#define BRAID_CORE_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>

#include "core/arena.h"
#include "core/tensor.h"

#define BT_ERROR_MAX 1024
#define BT_SCOPE_MAX 32

struct bt_runtime {
    struct bt_arena *step_arena; /* step tensors, their gradients, tape nodes */
    struct ag_node *tape;        /* newest recorded node; nodes link to older ones */
    bool grad_enabled;
    char error[BT_ERROR_MAX];
    bool has_error;
    const char *scopes[BT_SCOPE_MAX];
    int n_scopes;
    struct bt_rng dropout_rng; /* dropout masks: counter-based, one offset range per call */
    /* called once per leaf per backward when its gradient is final (ag_set_leaf_hook) */
    void (*leaf_hook)(bt_tensor *leaf, void *ctx);
    void *leaf_hook_ctx;
    void (*tick_hook)(void *ctx); /* after every node a backward runs (ag_set_tick_hook) */
    void *tick_hook_ctx;
};

struct bt_runtime *bt_runtime(void);

/* End a step: forget the tape and release every step tensor at once (arena reset). */
void bt_step_end(void);
/* Free the runtime's memory (tests and tools call it before exit for leak checkers). */
void bt_runtime_shutdown(void);
/* Seed the dropout RNG (train.seed); its offset restarts at 0. */
void bt_manual_seed(uint64_t seed);

/* Step-arena allocation; sets an error naming `what` and returns NULL when out of memory. */
void *bt_step_alloc(size_t nbytes, const char *what);

#endif
