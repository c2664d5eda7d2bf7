/* The process's CUDA device: choosing it, its stream and cuBLASLt handle, failure reporting, and
 * the caching allocator every device buffer comes from. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/cuda/common.cuh"

static struct {
    int device; /* -1: none chosen yet */
    cudaStream_t stream;
    cublasLtHandle_t lt;
    void *workspace;
    size_t workspace_bytes;
    void *scratch;
    size_t scratch_bytes;
    bool broken;              /* a CUDA call failed: the device is not used again */
    char broken_message[512]; /* what failed */
} dev = {-1, NULL, NULL, NULL, 0, NULL, 0, false, {0}};

#define GEMM_WORKSPACE ((size_t)32 << 20) /* cuBLASLt's recommendation for Hopper */

bool bt_cuda_failed_(const char *library, const char *call, const char *what, const char *file,
                     int line) {
    const char *base = strrchr(file, '/');
    if (!dev.broken) {
        dev.broken = true;
        snprintf(dev.broken_message, sizeof dev.broken_message, "%s: %s failed: %s (%s:%d)",
                 library, call, what, base ? base + 1 : file, line);
    }
    bt_error("cuda:%d: %s: %s failed: %s (%s:%d)", dev.device, library, call, what,
             base ? base + 1 : file, line);
    return false;
}

bool bt_cuda_fail(const char *fmt, ...) {
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!dev.broken) {
        dev.broken = true;
        snprintf(dev.broken_message, sizeof dev.broken_message, "%s", msg);
    }
    bt_error("cuda:%d: %s", dev.device, msg);
    return false;
}

bool bt_cuda_ok(void) {
    return !dev.broken;
}

extern "C" bool bt_cuda_built(void) {
    return true;
}

extern "C" int bt_cuda_device_count(char *why, size_t size) {
    if (bt_fake_cuda()) return bt_fake_cuda_devices();
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* not sticky: clear it */
        if (why && size) snprintf(why, size, "cudaGetDeviceCount: %s", cudaGetErrorString(e));
        return 0;
    }
    if (n == 0 && why && size) snprintf(why, size, "cudaGetDeviceCount: 0 devices");
    return n;
}

static bool init_device(int index, const char *op) {
    char why[256];
    int n = bt_cuda_device_count(why, sizeof why);
    if (n == 0) {
        bt_error("%s: device cuda:%d is not available: no CUDA device visible (%s)", op, index,
                 why);
        return false;
    }
    if (index < 0 || index >= n) {
        bt_error("%s: device cuda:%d does not exist: %d visible (CUDA_VISIBLE_DEVICES=%s)", op,
                 index, n, getenv("CUDA_VISIBLE_DEVICES") ? getenv("CUDA_VISIBLE_DEVICES") : "");
        return false;
    }
    if (!bt_cuda_attention_kernel_from_env(why, sizeof why) ||
        !bt_cuda_epilogues_from_env(why, sizeof why)) {
        bt_error("%s: device cuda:%d not started: %s", op, index, why);
        return false;
    }
    if (!bt_cublaslt_load(why, sizeof why)) {
        bt_error("%s: device cuda:%d is not available: %s", op, index, why);
        return false;
    }
    dev.device = index;
    if (!BT_CUDA_CHECK(cudaSetDevice(index)) ||
        !BT_CUDA_CHECK(cudaStreamCreateWithFlags(&dev.stream, cudaStreamNonBlocking)) ||
        !BT_CUBLAS_CHECK(cublasLtCreate(&dev.lt)))
        return false;
    dev.workspace = bt_cuda_malloc(GEMM_WORKSPACE);
    if (!dev.workspace) {
        bt_error("%s: out of device memory for cuBLASLt's %zu-byte workspace", op, GEMM_WORKSPACE);
        cublasLtDestroy(dev.lt);
        cudaStreamDestroy(dev.stream);
        dev.lt = NULL;
        dev.stream = NULL;
        return false;
    }
    dev.workspace_bytes = GEMM_WORKSPACE;
    return true;
}

extern const struct bt_backend bt_cuda_backend_table; /* backend.cu */

extern "C" const struct bt_backend *bt_cuda_backend_for(int index, const char *op) {
    if (dev.broken) {
        bt_error("%s: cuda:%d is unusable after an earlier failure: %s", op, dev.device,
                 dev.broken_message);
        return NULL;
    }
    if (dev.device < 0) {
        if (!init_device(index, op)) {
            if (!dev.broken) dev.device = -1; /* no device: a later call may report it again */
            return NULL;
        }
    } else if (index != dev.device) {
        bt_error("%s: this process drives cuda:%d; cuda:%d was asked for (one device per "
                 "process: ranks choose theirs by local rank)",
                 op, dev.device, index);
        return NULL;
    }
    return &bt_cuda_backend_table;
}

extern "C" int bt_cuda_current_device(void) {
    return bt_fake_cuda() ? bt_fake_cuda_current() : dev.device;
}

extern "C" const char *bt_cuda_device_description(char *buf, size_t size) {
    cudaDeviceProp p;
    if (!buf || !size) return buf;
    buf[0] = '\0';
    if (bt_fake_cuda()) {
        snprintf(buf, size, "fake CUDA device: the CPU's kernels on host memory (BRAID_FAKE_CUDA)");
        return buf;
    }
    if (dev.device >= 0 && cudaGetDeviceProperties(&p, dev.device) == cudaSuccess)
        snprintf(buf, size, "%s (sm_%d%d, %.1f GiB)", p.name, p.major, p.minor,
                 (double)p.totalGlobalMem / (1 << 30));
    return buf;
}

extern "C" bt_status bt_cuda_synchronize(void) {
    if (dev.device < 0) return BT_OK;
    if (dev.broken) return bt_error("cuda:%d: %s", dev.device, dev.broken_message);
    return BT_CUDA_CHECK(cudaStreamSynchronize(dev.stream)) ? BT_OK : BT_ERR;
}

extern "C" void *bt_cuda_stream_handle(void) {
    return dev.device >= 0 ? (void *)dev.stream : NULL;
}

cudaStream_t bt_cuda_stream(void) {
    return dev.stream;
}

cublasLtHandle_t bt_cuda_cublaslt(void) {
    return dev.lt;
}

void *bt_cuda_gemm_workspace(size_t *nbytes) {
    *nbytes = dev.workspace_bytes;
    return dev.workspace;
}

void *bt_cuda_scratch(size_t nbytes) {
    if (nbytes > dev.scratch_bytes) {
        bt_cuda_free(dev.scratch); /* stream order: queued kernels finish with it first */
        size_t want = nbytes + nbytes / 2;
        dev.scratch = bt_cuda_malloc(want);
        dev.scratch_bytes = dev.scratch ? want : 0;
        if (!dev.scratch) { /* the caller's kernel cannot run: later ops must not use its output */
            bt_cuda_fail("out of device memory for %zu bytes of scratch", want);
            return NULL;
        }
    }
    return dev.scratch;
}

/* ---- the caching allocator ----
 * Sizes are rounded up (512 B; 2 MiB above 1 MiB), and a freed block waits in the cache for the
 * next request of its rounded size. Blocks are tracked in a host hash table keyed by address.
 * When cudaMalloc fails the cache is given back to the driver and the request retried. Memory
 * freed here may be handed out again at once: all of braid's device work is on one stream, so a
 * kernel queued earlier is done with it before a later one starts. */

struct block {
    void *ptr;
    size_t size;
    bool in_use;
};

static struct {
    struct block *blocks; /* open addressing by pointer; ptr NULL = empty slot */
    size_t cap, count;
    size_t in_use, peak, reserved;
    uint64_t mallocs;
} cache;

static bool shut_down_once; /* blocks handed out before it are unknown to the new table */

static size_t round_size(size_t n) {
    if (n == 0) n = 1;
    if (n <= ((size_t)1 << 20)) return (n + 511) & ~(size_t)511;
    size_t big = (size_t)2 << 20;
    return (n + big - 1) / big * big;
}

static size_t slot_of(const void *p, size_t cap) {
    uint64_t h = (uint64_t)(uintptr_t)p;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return (size_t)(h & (cap - 1));
}

static bool table_grow(void) {
    size_t cap = cache.cap ? cache.cap * 2 : 1024;
    struct block *b = (struct block *)calloc(cap, sizeof *b);
    if (!b) return false;
    for (size_t i = 0; i < cache.cap; i++)
        if (cache.blocks[i].ptr) {
            size_t s = slot_of(cache.blocks[i].ptr, cap);
            while (b[s].ptr)
                s = (s + 1) & (cap - 1);
            b[s] = cache.blocks[i];
        }
    free(cache.blocks);
    cache.blocks = b;
    cache.cap = cap;
    return true;
}

static struct block *table_find(const void *p) {
    if (!cache.cap) return NULL;
    for (size_t s = slot_of(p, cache.cap);; s = (s + 1) & (cache.cap - 1)) {
        if (!cache.blocks[s].ptr) return NULL;
        if (cache.blocks[s].ptr == p) return &cache.blocks[s];
    }
}

static bool table_insert(void *p, size_t size) {
    if ((cache.count + 1) * 2 > cache.cap && !table_grow()) return false;
    size_t s = slot_of(p, cache.cap);
    while (cache.blocks[s].ptr)
        s = (s + 1) & (cache.cap - 1);
    cache.blocks[s] = (struct block){p, size, true};
    cache.count++;
    return true;
}

/* gives every cached (free) block back to the driver; rebuilds the table without them */
static void release_cached(void) {
    size_t cap = cache.cap;
    struct block *old = cache.blocks;
    cache.blocks = NULL;
    cache.cap = cache.count = 0;
    for (size_t i = 0; i < cap; i++) {
        if (!old[i].ptr) continue;
        if (old[i].in_use) {
            table_insert(old[i].ptr, old[i].size);
        } else {
            cudaFree(old[i].ptr);
            cache.reserved -= old[i].size;
        }
    }
    free(old);
}

extern "C" void *bt_cuda_malloc(size_t nbytes) {
    size_t size = round_size(nbytes);
    for (size_t i = 0; i < cache.cap; i++) { /* a cached block of this size */
        struct block *b = &cache.blocks[i];
        if (b->ptr && !b->in_use && b->size == size) {
            b->in_use = true;
            cache.in_use += size;
            if (cache.in_use > cache.peak) cache.peak = cache.in_use;
            return b->ptr;
        }
    }
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, size);
    if (e == cudaErrorMemoryAllocation) {
        cudaGetLastError(); /* out of memory is not sticky */
        release_cached();
        e = cudaMalloc(&p, size);
        if (e == cudaErrorMemoryAllocation) {
            cudaGetLastError();
            return NULL; /* the caller says out of memory, with sizes */
        }
    }
    if (!BT_CUDA_CHECK(e)) return NULL; /* not memory: e.g. an earlier kernel's fault */
    if (!table_insert(p, size)) {
        cudaFree(p);
        return NULL;
    }
    cache.mallocs++;
    cache.reserved += size;
    cache.in_use += size;
    if (cache.in_use > cache.peak) cache.peak = cache.in_use;
    return p;
}

extern "C" void bt_cuda_free(void *ptr) {
    if (!ptr || !cache.cap) return; /* NULL, or after bt_cuda_shutdown gave everything back */
    struct block *b = table_find(ptr);
    if (!b && shut_down_once) return; /* a block of before bt_cuda_shutdown: already given back */
    if (!b || !b->in_use) {
        fprintf(stderr, "braid: internal error: bt_cuda_free of %p, not a live device block\n",
                ptr);
        abort();
    }
    b->in_use = false;
    cache.in_use -= b->size;
}

extern "C" struct bt_cuda_memory_stats bt_cuda_memory_stats(void) {
    return (struct bt_cuda_memory_stats){cache.in_use, cache.peak, cache.reserved, cache.mallocs};
}

void bt_cuda_gemm_release_plans(void);  /* matmul.cu */
void bt_cuda_cudnn_release_plans(void); /* attention_cudnn.cu */

extern "C" void bt_cuda_shutdown(void) {
    if (dev.device < 0) return;
    cudaStreamSynchronize(dev.stream);
    bt_cuda_gemm_release_plans();
    bt_cuda_cudnn_release_plans();
    shut_down_once = true;
    if (dev.lt) cublasLtDestroy(dev.lt);
    if (dev.stream) cudaStreamDestroy(dev.stream);
    for (size_t i = 0; i < cache.cap; i++)
        if (cache.blocks[i].ptr) cudaFree(cache.blocks[i].ptr);
    free(cache.blocks);
    memset(&cache, 0, sizeof cache);
    memset(&dev, 0, sizeof dev);
    dev.device = -1;
}
