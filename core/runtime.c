/* The process's runtime context, lazily created on first use, and the error/scope functions that
 * write into it. */
#include "core/runtime.h"

#include "core/backend.h"
#include "core/cpu/kernels.h"
#include "core/cuda/cuda.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct bt_runtime *runtime_instance;

struct bt_frame {
    struct bt_arena *arena;        /* host: step tensors' headers, CPU data, tape nodes */
    struct bt_arena *device_arena; /* the data of step tensors on the CUDA device, made on use */
    struct ag_node *tape; /* stale while the frame is current: the runtime's tape is live */
};

static void frame_reset_arenas(struct bt_frame *f) {
    bt_arena_reset(f->arena);
    if (f->device_arena) bt_arena_reset(f->device_arena);
}

static void frame_free_arenas(struct bt_frame *f) {
    bt_arena_destroy(f->arena);
    bt_arena_destroy(f->device_arena);
}

struct bt_runtime *bt_runtime(void) {
    if (!runtime_instance) {
        runtime_instance = calloc(1, sizeof(*runtime_instance));
        if (!runtime_instance) {
            fprintf(stderr, "braid: error: out of memory creating the runtime\n");
            exit(1);
        }
        struct bt_frame *root = calloc(1, sizeof *root);
        if (root) root->arena = bt_arena_create((size_t)1 << 20);
        if (!root || !root->arena) {
            fprintf(stderr, "braid: error: out of memory creating the step arena\n");
            exit(1);
        }
        runtime_instance->root_frame = runtime_instance->frame = root;
        runtime_instance->step_arena = root->arena;
        runtime_instance->grad_enabled = true;
        bt_cpu_threads_init();
        runtime_instance->dropout_rng = bt_rng_make(0);
    }
    return runtime_instance;
}

void bt_step_end(void) {
    struct bt_runtime *rt = bt_runtime();
    rt->tape = NULL;
    frame_reset_arenas(rt->frame);
}

void bt_runtime_shutdown(void) {
    if (!runtime_instance) return;
    frame_free_arenas(runtime_instance->root_frame);
    free(runtime_instance->root_frame);
    free(runtime_instance);
    runtime_instance = NULL;
    bt_cuda_shutdown();
}

/* ---- frames ---- */

struct bt_frame *bt_frame_create(void) {
    struct bt_frame *f = calloc(1, sizeof *f);
    if (f) f->arena = bt_arena_create((size_t)1 << 20);
    if (!f || !f->arena) {
        free(f);
        bt_error("out of memory creating a frame");
        return NULL;
    }
    return f;
}

void bt_frame_destroy(struct bt_frame *f) {
    if (!f) return;
    frame_free_arenas(f);
    free(f);
}

struct bt_frame *bt_frame_enter(struct bt_frame *f) {
    struct bt_runtime *rt = bt_runtime();
    if (!f) f = rt->root_frame;
    struct bt_frame *was = rt->frame;
    was->tape = rt->tape;
    rt->frame = f;
    rt->step_arena = f->arena;
    rt->tape = f->tape;
    return was;
}

void bt_frame_reset(struct bt_frame *f) {
    struct bt_runtime *rt = bt_runtime();
    if (!f) f = rt->root_frame;
    f->tape = NULL;
    if (rt->frame == f) rt->tape = NULL;
    frame_reset_arenas(f);
}

struct bt_arena_stats bt_frame_stats(const struct bt_frame *f) {
    return bt_arena_stats(f ? f->arena : bt_runtime()->root_frame->arena);
}

bt_dtype bt_set_matmul_dtype(bt_dtype dtype) {
    struct bt_runtime *rt = bt_runtime();
    bt_dtype was = rt->matmul_dtype;
    rt->matmul_dtype = dtype == BT_BF16 ? BT_BF16 : BT_F32;
    return was;
}

void bt_manual_seed(uint64_t seed) {
    bt_runtime()->dropout_rng = bt_rng_make(seed);
}

void *bt_device_step_alloc(bt_device device, size_t nbytes, struct bt_arena **arena,
                           const char *what) {
    struct bt_frame *f = bt_runtime()->frame;
    const struct bt_backend *be = bt_backend_for(device, what);
    if (!be) return NULL;
    if (!f->device_arena) /* its blocks from the device's allocator (CUDA: the caching one) */
        f->device_arena = bt_arena_create_with((size_t)1 << 20, be->alloc, be->free);
    void *p = f->device_arena ? bt_arena_alloc(f->device_arena, nbytes) : NULL;
    if (!p) {
        struct bt_cuda_memory_stats m = bt_cuda_memory_stats();
        bt_error("%s: out of device memory allocating %zu bytes (%zu bytes in use, %zu reserved)",
                 what, nbytes, m.in_use, m.reserved);
    }
    *arena = f->device_arena;
    return p;
}

void *bt_step_alloc(size_t nbytes, const char *what) {
    void *p = bt_arena_alloc(bt_runtime()->step_arena, nbytes);
    if (!p) bt_error("%s: out of memory allocating %zu bytes", what, nbytes);
    return p;
}

bt_status bt_error(const char *fmt, ...) {
    struct bt_runtime *rt = bt_runtime();
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(rt->error, sizeof(rt->error), fmt, ap);
    va_end(ap);
    int top = rt->n_scopes < BT_SCOPE_MAX ? rt->n_scopes : BT_SCOPE_MAX;
    if (n >= 0 && (size_t)n < sizeof(rt->error) && top > 0)
        snprintf(rt->error + n, sizeof(rt->error) - (size_t)n, " (in %s)", rt->scopes[top - 1]);
    rt->has_error = true;
    return BT_ERR;
}

bt_status bt_error_prefix(const char *prefix) {
    struct bt_runtime *rt = bt_runtime();
    char message[BT_ERROR_MAX];
    strcpy(message, rt->has_error ? rt->error : "failed"); /* rt->error is NUL-terminated */
    size_t size = sizeof rt->error, n = 0;
    for (const char *p = prefix; *p && n < size / 2; p++)
        rt->error[n++] = *p;
    for (const char *p = ": "; *p; p++)
        rt->error[n++] = *p;
    for (const char *p = message; *p && n < size - 1; p++)
        rt->error[n++] = *p;
    rt->error[n] = '\0';
    rt->has_error = true;
    return BT_ERR;
}

const char *bt_last_error(void) {
    struct bt_runtime *rt = bt_runtime();
    return rt->has_error ? rt->error : "";
}

bool bt_has_error(void) {
    return bt_runtime()->has_error;
}

void bt_error_clear(void) {
    struct bt_runtime *rt = bt_runtime();
    rt->has_error = false;
    rt->error[0] = '\0';
}

void bt_scope_push(const char *name) {
    struct bt_runtime *rt = bt_runtime();
    if (rt->n_scopes < BT_SCOPE_MAX) rt->scopes[rt->n_scopes] = name;
    rt->n_scopes++;
}

void bt_scope_pop(void) {
    struct bt_runtime *rt = bt_runtime();
    if (rt->n_scopes > 0) rt->n_scopes--;
}
