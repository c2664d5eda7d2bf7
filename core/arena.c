/* Per-step bump allocator: one main block plus overflow blocks that are folded into a bigger main
 * block at reset time, so the arena converges to a single block after the first step. */
#include "core/arena.h"

#include <stdlib.h>
#include <string.h>

#define ARENA_ALIGN 64
#define ARENA_SIZE_CLASSES 32 /* distinct sizes of recycled blocks kept; a step has a handful */

struct overflow_block {
    struct overflow_block *next;
};

/* Recycled blocks of one rounded size, a list threaded through their first bytes */
struct size_class {
    size_t size;
    void *head;
};

struct bt_arena {
    char *base;
    size_t capacity, used, overflow_bytes, high_water;
    struct overflow_block *overflow; /* blocks malloc'd because the main block was full */
    uint64_t system_allocs, reuses;
    struct size_class recycled[ARENA_SIZE_CLASSES];
    int n_classes;
};

static size_t align_up(size_t n) {
    return (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
}

struct bt_arena *bt_arena_create(size_t initial_bytes) {
    struct bt_arena *arena = calloc(1, sizeof(*arena));
    if (!arena) return NULL;
    arena->capacity = align_up(initial_bytes ? initial_bytes : 1 << 20);
    arena->base = aligned_alloc(ARENA_ALIGN, arena->capacity);
    if (!arena->base) {
        free(arena);
        return NULL;
    }
    arena->system_allocs = 1;
    return arena;
}

static void free_overflow(struct bt_arena *arena) {
    struct overflow_block *block = arena->overflow;
    while (block) {
        struct overflow_block *next = block->next;
        free(block);
        block = next;
    }
    arena->overflow = NULL;
    arena->overflow_bytes = 0;
}

void bt_arena_destroy(struct bt_arena *arena) {
    if (!arena) return;
    free_overflow(arena);
    free(arena->base);
    free(arena);
}

/* Debug builds fill fresh memory with 0xff bytes (NaN as float32), so a kernel that reads a buffer
 * it was meant to overwrite fails the tests instead of passing on memory that happened to be 0. */
static void *poison(void *p, size_t size) {
#ifndef NDEBUG
    if (p) memset(p, 0xff, size);
#else
    (void)size;
#endif
    return p;
}

static struct size_class *size_class(struct bt_arena *arena, size_t size) {
    for (int i = 0; i < arena->n_classes; i++)
        if (arena->recycled[i].size == size) return &arena->recycled[i];
    return NULL;
}

void bt_arena_recycle(struct bt_arena *arena, void *p, size_t nbytes) {
    size_t size = align_up(nbytes ? nbytes : 1);
    struct size_class *c = size_class(arena, size);
    if (!c) {
        if (arena->n_classes == ARENA_SIZE_CLASSES) return; /* left until the reset */
        c = &arena->recycled[arena->n_classes++];
        *c = (struct size_class){size, NULL};
    }
    memcpy(p, &c->head, sizeof(void *));
    c->head = p;
}

void *bt_arena_alloc(struct bt_arena *arena, size_t nbytes) {
    size_t size = align_up(nbytes ? nbytes : 1);
    struct size_class *c = size_class(arena, size);
    if (c && c->head) {
        void *p = c->head;
        memcpy(&c->head, p, sizeof(void *));
        arena->reuses++;
        return poison(p, size);
    }
    size_t total = arena->used + arena->overflow_bytes + size;
    if (total > arena->high_water) arena->high_water = total;
    if (arena->used + size <= arena->capacity) {
        void *p = arena->base + arena->used;
        arena->used += size;
        return poison(p, size);
    }
    /* Main block full: serve from a block of its own; reset will grow the main block. */
    size_t header = align_up(sizeof(struct overflow_block));
    struct overflow_block *block = aligned_alloc(ARENA_ALIGN, header + size);
    if (!block) return NULL;
    arena->system_allocs++;
    block->next = arena->overflow;
    arena->overflow = block;
    arena->overflow_bytes += size;
    return poison((char *)block + header, size);
}

void bt_arena_reset(struct bt_arena *arena) {
    size_t needed = arena->used + arena->overflow_bytes;
    free_overflow(arena);
    arena->used = 0;
    arena->n_classes = 0;
    if (needed > arena->capacity) {
        size_t capacity = align_up(needed + needed / 4);
        char *base = aligned_alloc(ARENA_ALIGN, capacity);
        if (base) { /* on failure keep the old block: the next step overflows again */
            free(arena->base);
            arena->base = base;
            arena->capacity = capacity;
            arena->system_allocs++;
        }
    }
}

struct bt_arena_stats bt_arena_stats(const struct bt_arena *arena) {
    struct bt_arena_stats s = {arena->used + arena->overflow_bytes, arena->high_water,
                               arena->capacity, arena->system_allocs, arena->reuses};
    return s;
}
