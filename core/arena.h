/* A bump allocator for per-step memory (activations, their gradients, the autograd tape).
 * Reset at the end of each step instead of freeing piece by piece; after a warm-up step it holds
 * one block as large as the step needs, so a steady-state step makes no system allocation.
 * A block known to be dead before the reset (an activation's gradient once its backward has run)
 * can be handed back with bt_arena_recycle: the next allocation of the same size takes it, so
 * the backward's gradients reuse a few warm buffers instead of walking through fresh memory. */
#ifndef BRAID_CORE_ARENA_H
#define BRAID_CORE_ARENA_H

#include <stddef.h>
#include <stdint.h>

struct bt_arena;

struct bt_arena_stats {
    size_t used;            /* bytes handed out since the last reset (a reused block once) */
    size_t high_water;      /* largest `used` seen over the arena's life */
    size_t capacity;        /* bytes of the main block */
    uint64_t system_allocs; /* malloc calls made by the arena over its life */
    uint64_t reuses;        /* allocations served from recycled blocks over its life */
};

struct bt_arena *bt_arena_create(size_t initial_bytes);
/* An arena whose blocks come from `alloc`/`release` (e.g. device memory through the CUDA
 * backend's caching allocator). Its memory is never touched by the arena itself: recycled-block
 * lists are kept on the host, and debug builds do not poison it. */
struct bt_arena *bt_arena_create_with(size_t initial_bytes, void *(*alloc)(size_t nbytes),
                                      void (*release)(void *ptr));
void bt_arena_destroy(struct bt_arena *arena);
/* 64-byte aligned, uninitialised memory valid until the next reset; NULL only when out of memory.
 */
void *bt_arena_alloc(struct bt_arena *arena, size_t nbytes);
/* p (from bt_arena_alloc(arena, nbytes) since the last reset) is dead: a later allocation of
 * the same rounded size may return it before the reset. Nothing may read or write it after. */
void bt_arena_recycle(struct bt_arena *arena, void *p, size_t nbytes);
void bt_arena_reset(struct bt_arena *arena);
struct bt_arena_stats bt_arena_stats(const struct bt_arena *arena);

#endif
