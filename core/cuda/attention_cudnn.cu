/* Attention through cuDNN's fused (flash) attention, BRAID_CUDA_ATTENTION=cudnn (docs/cuda.md):
 * the graphs are sdpa_graph.cu's; here are the plans' cache, the handle, and the kernels that
 * carry braid's float32 operands to and from the bf16 packed (B, H, T, D) tensors cuDNN reads and
 * writes. Grouped-query heads are expanded when K and V are packed (cuDNN sees as many key heads
 * as query heads), and a key or value head's gradient is the sum over its group when unpacked.
 *
 * cuDNN's flash attention is bf16 (or fp16) only: it runs under train.dtype: bfloat16, where the
 * matmuls round their operands to bf16 too. A float32 run, a head size cuDNN's kernels do not
 * take, or a shape no engine on this GPU takes run braid's rows kernels instead (attention.cu);
 * the last two are said once per shape on stderr. The log-sum-exp both sides save is the same
 * quantity, so a forward and a backward may run on different sides. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/cuda/kernels.cuh"
#include "core/cuda/sdpa_graph.h"
extern "C" {
#include "core/runtime.h"
}

__global__ void sdpa_pack_kernel(uint16_t *dst, const float *src, struct bt_attn_layout l,
                                 int64_t NH, int64_t group, int64_t T, int64_t hs, int64_t n) {
    BT_GRID_STRIDE(i, n) dst[i] = bt_f32_to_bf16(src[bt_km_attn_packed_src(i, l, 0, NH, group, T, hs)]);
}

__global__ void sdpa_unpack_kernel(float *dst, struct bt_attn_layout l, const uint16_t *src,
                                   int64_t NH, int64_t T, int64_t hs, int64_t n) {
    BT_GRID_STRIDE(i, n) dst[bt_km_attn_packed_src(i, l, 0, NH, 1, T, hs)] = bt_bf16_to_f32(src[i]);
}

__global__ void sdpa_unpack_kv_kernel(float *dst, struct bt_attn_layout l, const uint16_t *src,
                                      int64_t NH, int64_t NKV, int64_t T, int64_t hs, int64_t n) {
    BT_GRID_STRIDE(i, n) {
        int64_t at;
        float sum = bt_km_attn_kv_sum_bf16(src, i, l, NH, NKV, T, hs, &at);
        dst[at] = sum;
    }
}

#define LAUNCH(kernel, n, ...)                                                                     \
    do {                                                                                           \
        if ((n) > 0 && bt_cuda_ok()) {                                                             \
            kernel<<<bt_blocks((n), BT_THREADS), BT_THREADS, 0, bt_cuda_stream()>>>(__VA_ARGS__);  \
            BT_CUDA_LAUNCHED(#kernel);                                                             \
        }                                                                                          \
    } while (0)

struct plan_entry {
    struct bt_sdpa_dims d;
    bool ok; /* false: no engine (or a node cuDNN rejects); the rows kernels run this shape */
    struct bt_sdpa_graph g;
};

static struct {
    cudnnHandle_t handle;
    bool started, broken;
    struct plan_entry *plans;
    int n, cap;
    int64_t runs;
} cd;

extern "C" int64_t bt_cuda_cudnn_attention_runs(void) {
    return cd.runs;
}

static bool same_dims(const struct bt_sdpa_dims *a, const struct bt_sdpa_dims *b) {
    return a->B == b->B && a->H == b->H && a->T == b->T && a->D == b->D &&
           a->causal == b->causal && a->backward == b->backward;
}

/* the handle, on braid's stream; a cuDNN that cannot be loaded or started fails the device: the
 * user chose this kernel */
static bool start(void) {
    if (cd.started) return true;
    if (cd.broken) return false;
    char why[512];
    if (!bt_cudnn_load(why, sizeof why)) {
        cd.broken = true;
        return bt_cuda_fail("attention (cudnn): %s", why);
    }
    if (!BT_CUDNN_CHECK(cudnnCreate(&cd.handle)) ||
        !BT_CUDNN_CHECK(cudnnSetStream(cd.handle, bt_cuda_stream()))) {
        cd.broken = true;
        return false;
    }
    cd.started = true;
    return true;
}

static void say_unsupported(const struct bt_sdpa_dims *d, const char *why) {
    fprintf(stderr,
            "braid: note: attention (cudnn): B %lld H %lld T %lld D %lld%s %s runs on braid's "
            "rows kernels: %s\n",
            (long long)d->B, (long long)d->H, (long long)d->T, (long long)d->D,
            d->causal ? " causal" : "", d->backward ? "backward" : "forward", why);
}

/* the cached plan for d, built on first use; NULL where cuDNN does not take it */
static struct bt_sdpa_graph *plan_for(const struct bt_sdpa_dims *d) {
    for (int i = 0; i < cd.n; i++)
        if (same_dims(&cd.plans[i].d, d)) return cd.plans[i].ok ? &cd.plans[i].g : NULL;
    if (cd.n == cd.cap) {
        int cap = cd.cap ? 2 * cd.cap : 8;
        struct plan_entry *p =
            (struct plan_entry *)realloc(cd.plans, (size_t)cap * sizeof *cd.plans);
        if (!p) return NULL; /* out of host memory: the rows kernels, uncached */
        cd.plans = p, cd.cap = cap;
    }
    struct plan_entry *e = &cd.plans[cd.n++];
    memset(e, 0, sizeof *e);
    e->d = *d;
    char why[600];
    e->ok = bt_sdpa_takes(d, why, sizeof why) && bt_sdpa_build(&e->g, d, cd.handle, why, sizeof why);
    if (!e->ok) {
        bt_sdpa_destroy(&e->g);
        say_unsupported(d, why);
    }
    return e->ok ? &e->g : NULL;
}

/* the plans and the handle, at bt_cuda_shutdown (before the stream they run on goes) */
void bt_cuda_cudnn_release_plans(void) {
    for (int i = 0; i < cd.n; i++)
        bt_sdpa_destroy(&cd.plans[i].g);
    free(cd.plans);
    if (cd.started) cudnnDestroy(cd.handle);
    memset(&cd, 0, sizeof cd);
}

/* runs g's plan with the pointers for its uids (ptrs[uid]) and a workspace */
static bool execute(const struct bt_sdpa_graph *g, void *const *ptrs) {
    void *workspace = NULL;
    if (g->workspace > 0 && !(workspace = bt_cuda_malloc((size_t)g->workspace)))
        return bt_cuda_fail("attention (cudnn): out of device memory for a %lld-byte workspace",
                            (long long)g->workspace);
    void *data[16];
    for (int i = 0; i < g->n_uids; i++)
        data[i] = ptrs[g->uids[i]];
    cudnnBackendDescriptor_t pack = NULL;
    bool ok =
        BT_CUDNN_CHECK(cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &pack)) &&
        BT_CUDNN_CHECK(cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS,
                                                CUDNN_TYPE_INT64, g->n_uids, g->uids)) &&
        BT_CUDNN_CHECK(cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS,
                                                CUDNN_TYPE_VOID_PTR, g->n_uids, data)) &&
        BT_CUDNN_CHECK(cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE,
                                                CUDNN_TYPE_VOID_PTR, 1, &workspace)) &&
        BT_CUDNN_CHECK(cudnnBackendFinalize(pack)) &&
        BT_CUDNN_CHECK(cudnnBackendExecute(cd.handle, g->plan, pack));
    if (pack) cudnnBackendDestroyDescriptor(pack);
    cd.runs += ok;
    bt_cuda_free(workspace); /* the caching allocator: stream order keeps it safe */
    return ok;
}

/* cuDNN's kernels for this call, or false: the caller runs its own */
static struct bt_sdpa_graph *usable(int64_t B, int64_t NH, int64_t T, int64_t hs, bool causal,
                                    bool backward) {
    if (bt_runtime()->matmul_dtype != BT_BF16 || !bt_cuda_ok() || !start()) return NULL;
    struct bt_sdpa_dims d = {B, NH, T, hs, causal, backward};
    return plan_for(&d);
}

/* packed bf16 buffers of B·NH·T·hs elements each, NULL (device failed) when out of memory */
static bool alloc_packed(uint16_t **bufs, int n, int64_t elems) {
    for (int i = 0; i < n; i++) bufs[i] = NULL;
    for (int i = 0; i < n; i++)
        if (!(bufs[i] = (uint16_t *)bt_cuda_malloc((size_t)elems * sizeof(uint16_t)))) {
            for (int j = 0; j < i; j++) bt_cuda_free(bufs[j]);
            return bt_cuda_fail("attention (cudnn): out of device memory for %lld bytes",
                                (long long)elems * 2);
        }
    return true;
}

extern "C" bool bt_cuda_attention_cudnn(float *out, float *lse, const float *q, const float *k,
                                        const float *v, int64_t B, int64_t NH, int64_t NKV,
                                        int64_t T, int64_t hs, float scale, bool causal,
                                        const struct bt_attn_layouts *L) {
    struct bt_sdpa_graph *g = usable(B, NH, T, hs, causal, false);
    if (!g) return false;
    int64_t n = B * NH * T * hs, group = NH / NKV;
    enum { Q, K, V, O, N_BUF };
    uint16_t *buf[N_BUF];
    if (!alloc_packed(buf, N_BUF, n)) return true; /* the device failed: nothing to fall back to */
    LAUNCH(sdpa_pack_kernel, n, buf[Q], q, L->q, NH, 1, T, hs, n);
    LAUNCH(sdpa_pack_kernel, n, buf[K], k, L->k, NH, group, T, hs, n);
    LAUNCH(sdpa_pack_kernel, n, buf[V], v, L->v, NH, group, T, hs, n);
    void *ptrs[BT_SDPA_UID_COUNT] = {NULL};
    ptrs[BT_SDPA_Q] = buf[Q], ptrs[BT_SDPA_K] = buf[K], ptrs[BT_SDPA_V] = buf[V];
    float neg_inf = bt_sdpa_neg_inf();
    ptrs[BT_SDPA_O] = buf[O], ptrs[BT_SDPA_STATS] = lse, ptrs[BT_SDPA_SCALE] = &scale;
    ptrs[BT_SDPA_NEG_INF] = &neg_inf;
    if (bt_cuda_ok() && execute(g, ptrs)) LAUNCH(sdpa_unpack_kernel, n, out, L->out, buf[O], NH, T, hs, n);
    for (int i = N_BUF - 1; i >= 0; i--) bt_cuda_free(buf[i]);
    return true;
}

extern "C" bool bt_cuda_attention_cudnn_backward(float *dq, float *dk, float *dv,
                                                 const float *dout, const float *q,
                                                 const float *k, const float *v, const float *out,
                                                 const float *lse, int64_t B, int64_t NH,
                                                 int64_t NKV, int64_t T, int64_t hs, float scale,
                                                 bool causal, const struct bt_attn_layouts *L) {
    struct bt_sdpa_graph *g = usable(B, NH, T, hs, causal, true);
    if (!g) return false;
    int64_t n = B * NH * T * hs, group = NH / NKV, kv_n = B * NKV * T * hs;
    enum { Q, K, V, O, DO, DQ, DK, DV, N_BUF };
    uint16_t *buf[N_BUF];
    if (!alloc_packed(buf, N_BUF, n)) return true;
    /* the row sums of dO ∘ O (float, B·NH·T) and dQ's float32 accumulator, which cuDNN's
     * backward adds into: zeroed here */
    float *sum = (float *)bt_cuda_malloc((size_t)(B * NH * T) * sizeof(float));
    float *accum = sum ? (float *)bt_cuda_malloc((size_t)n * sizeof(float)) : NULL;
    if (!accum) {
        bt_cuda_free(sum);
        for (int i = N_BUF - 1; i >= 0; i--) bt_cuda_free(buf[i]);
        bt_cuda_fail("attention (cudnn): out of device memory for the backward's %lld-byte "
                     "accumulator",
                     (long long)n * 4);
        return true;
    }
    LAUNCH(sdpa_pack_kernel, n, buf[Q], q, L->q, NH, 1, T, hs, n);
    LAUNCH(sdpa_pack_kernel, n, buf[K], k, L->k, NH, group, T, hs, n);
    LAUNCH(sdpa_pack_kernel, n, buf[V], v, L->v, NH, group, T, hs, n);
    LAUNCH(sdpa_pack_kernel, n, buf[O], out, L->out, NH, 1, T, hs, n);
    LAUNCH(sdpa_pack_kernel, n, buf[DO], dout, L->dout, NH, 1, T, hs, n);
    if (bt_cuda_ok())
        BT_CUDA_CHECK(cudaMemsetAsync(accum, 0, (size_t)n * sizeof(float), bt_cuda_stream()));
    void *ptrs[BT_SDPA_UID_COUNT] = {NULL};
    ptrs[BT_SDPA_Q] = buf[Q], ptrs[BT_SDPA_K] = buf[K], ptrs[BT_SDPA_V] = buf[V];
    ptrs[BT_SDPA_O] = buf[O], ptrs[BT_SDPA_DO] = buf[DO], ptrs[BT_SDPA_STATS] = (void *)lse;
    ptrs[BT_SDPA_SCALE] = &scale, ptrs[BT_SDPA_DQ] = buf[DQ], ptrs[BT_SDPA_DK] = buf[DK];
    ptrs[BT_SDPA_DV] = buf[DV], ptrs[BT_SDPA_SUM] = sum, ptrs[BT_SDPA_DQ_ACCUM] = accum;
    float neg_inf = bt_sdpa_neg_inf(), one = 1.0f;
    ptrs[BT_SDPA_NEG_INF] = &neg_inf, ptrs[BT_SDPA_ONE] = &one;
    if (bt_cuda_ok() && execute(g, ptrs)) {
        LAUNCH(sdpa_unpack_kernel, n, dq, L->dq, buf[DQ], NH, T, hs, n);
        LAUNCH(sdpa_unpack_kv_kernel, kv_n, dk, L->dk, buf[DK], NH, NKV, T, hs, kv_n);
        LAUNCH(sdpa_unpack_kv_kernel, kv_n, dv, L->dv, buf[DV], NH, NKV, T, hs, kv_n);
    }
    bt_cuda_free(accum), bt_cuda_free(sum);
    for (int i = N_BUF - 1; i >= 0; i--) bt_cuda_free(buf[i]);
    return true;
}
