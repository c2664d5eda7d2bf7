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

/* Recycled blocks of one rounded size: a stack of pointers kept on the host (the blocks may be
 * device memory); its storage survives resets */
struct size_class {
    size_t size;
    void **blocks;
    int count, cap;
};

struct bt_arena {
    void *(*alloc)(size_t nbytes); /* NULL: host memory (aligned_alloc/free) */
    void (*release)(void *ptr);
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

static void *block_alloc(const struct bt_arena *arena, size_t size) {
    return arena->alloc ? arena->alloc(size) : aligned_alloc(ARENA_ALIGN, size);
}

static void block_free(const struct bt_arena *arena, void *p) {
    if (arena->release)
        arena->release(p);
    else
        free(p);
}

struct bt_arena *bt_arena_create_with(size_t initial_bytes, void *(*alloc)(size_t nbytes),
                                      void (*release)(void *ptr)) {
    struct bt_arena *arena = calloc(1, sizeof(*arena));
    if (!arena) return NULL;
    arena->alloc = alloc;
    arena->release = release;
    arena->capacity = align_up(initial_bytes ? initial_bytes : 1 << 20);
    arena->base = block_alloc(arena, arena->capacity);
    if (!arena->base) {
        free(arena);
        return NULL;
    }
    arena->system_allocs = 1;
    return arena;
}

struct bt_arena *bt_arena_create(size_t initial_bytes) {
    return bt_arena_create_with(initial_bytes, NULL, NULL);
}

/* Overflow blocks: host ones carry their list link in a header; device ones are listed on the
 * host (the link cannot live in device memory) */
static void free_overflow(struct bt_arena *arena) {
    struct overflow_block *block = arena->overflow;
    while (block) {
        struct overflow_block *next = block->next;
        if (arena->alloc) block_free(arena, ((void **)(block + 1))[0]);
        free(block);
        block = next;
    }
    arena->overflow = NULL;
    arena->overflow_bytes = 0;
}

void bt_arena_destroy(struct bt_arena *arena) {
    if (!arena) return;
    free_overflow(arena);
    block_free(arena, arena->base);
    for (int i = 0; i < ARENA_SIZE_CLASSES; i++)
        free(arena->recycled[i].blocks);
    free(arena);
}

/* Debug builds fill fresh memory with 0xff bytes (NaN as float32), so a kernel that reads a buffer
 * it was meant to overwrite fails the tests instead of passing on memory that happened to be 0. */
static void *poison(const struct bt_arena *arena, void *p, size_t size) {
#ifndef NDEBUG
    if (p && !arena->alloc) memset(p, 0xff, size);
#else
    (void)arena, (void)size;
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
        c->size = size; /* its pointer storage, if any, is kept from an earlier step */
        c->count = 0;
    }
    if (c->count == c->cap) {
        int cap = c->cap ? 2 * c->cap : 16;
        void **blocks = realloc(c->blocks, (size_t)cap * sizeof *blocks);
        if (!blocks) return; /* left until the reset */
        c->blocks = blocks;
        c->cap = cap;
    }
    c->blocks[c->count++] = p;
}

void *bt_arena_alloc(struct bt_arena *arena, size_t nbytes) {
    size_t size = align_up(nbytes ? nbytes : 1);
    struct size_class *c = size_class(arena, size);
    if (c && c->count) {
        arena->reuses++;
        return poison(arena, c->blocks[--c->count], size);
    }
    size_t total = arena->used + arena->overflow_bytes + size;
    if (total > arena->high_water) arena->high_water = total;
    if (arena->used + size <= arena->capacity) {
        void *p = arena->base + arena->used;
        arena->used += size;
        return poison(arena, p, size);
    }
    /* Main block full: serve from a block of its own; reset will grow the main block. */
    size_t header = align_up(sizeof(struct overflow_block));
    struct overflow_block *block;
    void *p;
    if (arena->alloc) { /* device memory: the list node lives on the host */
        block = malloc(sizeof *block + sizeof(void *));
        p = block ? block_alloc(arena, size) : NULL;
        if (!p) {
            free(block);
            return NULL;
        }
        ((void **)(block + 1))[0] = p;
    } else {
        block = aligned_alloc(ARENA_ALIGN, header + size);
        if (!block) return NULL;
        p = (char *)block + header;
    }
    arena->system_allocs++;
    block->next = arena->overflow;
    arena->overflow = block;
    arena->overflow_bytes += size;
    return poison(arena, p, size);
}

void bt_arena_reset(struct bt_arena *arena) {
    size_t needed = arena->used + arena->overflow_bytes;
    free_overflow(arena);
    arena->used = 0;
    arena->n_classes = 0;
    if (needed > arena->capacity) {
        size_t capacity = align_up(needed + needed / 4);
        size_t old = arena->capacity;
        block_free(arena, arena->base); /* first: a device allocator may reuse its memory */
        arena->base = block_alloc(arena, capacity);
        if (!arena->base) { /* keep the old size: the next step overflows again */
            capacity = old;
            arena->base = block_alloc(arena, capacity);
        }
        arena->capacity = arena->base ? capacity : 0; /* 0: every block overflows */
        arena->system_allocs++;
    }
}

struct bt_arena_stats bt_arena_stats(const struct bt_arena *arena) {
    struct bt_arena_stats s = {arena->used + arena->overflow_bytes, arena->high_water,
                               arena->capacity, arena->system_allocs, arena->reuses};
    return s;
}
