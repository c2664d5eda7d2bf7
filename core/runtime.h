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

struct bt_frame;

struct bt_runtime {
    /* the current frame's (see below): */
    struct bt_arena *step_arena; /* step tensors, their gradients, tape nodes */
    struct ag_node *tape;        /* newest recorded node; nodes link to older ones */
    struct bt_frame *frame;      /* the current frame */
    struct bt_frame *root_frame; /* the runtime's own, current unless another was entered */
    bool grad_enabled;
    /* the dtype matmuls multiply in on a device (BT_F32, or BT_BF16 for mixed precision: operands
     * rounded to bf16, products summed and written in float32); the cpu always uses float32 */
    bt_dtype matmul_dtype;
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

/* End a step: forget the current frame's tape and release its step tensors at once (arena
 * reset). */
void bt_step_end(void);

/* ---- frames: step memory of their own ----
 * A frame is a step arena and an autograd tape of their own. A pipeline keeps one per micro-batch
 * in flight: the micro-batch's activations, their gradients and its tape live in its frame and are
 * released when its backward is done (bt_frame_reset), not at the end of the step, so 1F1B holds
 * the activations of at most pp micro-batches. The runtime starts in its own frame, the one
 * bt_step_end resets while no other is entered. A backward runs the current frame's tape. */
struct bt_frame *bt_frame_create(void);    /* NULL with a message when out of memory */
void bt_frame_destroy(struct bt_frame *f); /* not the current one; NULL is fine */
/* Makes f (NULL: the runtime's own frame) current: step tensors and tape nodes go to it from now
 * on. Returns the frame that was current, to enter again. Other frames' tensors stay valid. */
struct bt_frame *bt_frame_enter(struct bt_frame *f);
/* Releases f's step tensors and forgets its tape (bt_step_end for f alone). */
void bt_frame_reset(struct bt_frame *f);
/* f's step memory: bytes in use now (used) and the most it held over its life (high_water). */
struct bt_arena_stats bt_frame_stats(const struct bt_frame *f);
/* Free the runtime's memory (tests and tools call it before exit for leak checkers). */
void bt_runtime_shutdown(void);
/* Mixed precision for device matmuls (train.dtype: bfloat16): BT_F32 (the default) or BT_BF16;
 * returns the previous one. Parameters, gradients, optimizer state and activations stay float32. */
bt_dtype bt_set_matmul_dtype(bt_dtype dtype);

/* Seed the dropout RNG (train.seed); its offset restarts at 0. */
void bt_manual_seed(uint64_t seed);

/* Step-arena allocation; sets an error naming `what` and returns NULL when out of memory. */
void *bt_step_alloc(size_t nbytes, const char *what);
/* The same on the device (one per process), from the current frame's device arena (set in
 * *arena), whose blocks come from the device backend's allocator. */
void *bt_device_step_alloc(bt_device device, size_t nbytes, struct bt_arena **arena,
                           const char *what);

#endif
