/* CUDA optimizer kernels: AdamW over every parameter in one launch (a multi-tensor kernel: each
 * block takes a chunk of one parameter from a table of spans), and SGD. The per-element update is
 * kernel_math.h's, the CPU's operation for operation. */
#include <stdlib.h>

#include "core/cuda/kernels.cuh"

#define CHUNK 8192 /* elements of one span per block */

struct chunk {
    int32_t span;
    int64_t start;
};

__global__ void adamw_kernel(const struct bt_adamw_span *spans, const struct chunk *chunks,
                             float grad_scale) {
    struct chunk ch = chunks[blockIdx.x];
    const struct bt_adamw_span *s = &spans[ch.span];
    int64_t end = ch.start + CHUNK < s->n ? ch.start + CHUNK : s->n;
    for (int64_t i = ch.start + threadIdx.x; i < end; i += blockDim.x)
        bt_km_adamw(s, &s->p[i], &s->m[i], &s->v[i], s->g[i], grad_scale);
}

void bt_cuda_adamw(const struct bt_adamw_span *spans, int64_t n_spans, float grad_scale) {
    int64_t n_chunks = 0;
    for (int64_t k = 0; k < n_spans; k++)
        n_chunks += (spans[k].n + CHUNK - 1) / CHUNK;
    if (n_chunks == 0) return;
    size_t span_bytes = ((size_t)n_spans * sizeof *spans + 255) & ~(size_t)255;
    size_t bytes = span_bytes + (size_t)n_chunks * sizeof(struct chunk);
    char *host = (char *)malloc(bytes);
    char *dev = (char *)bt_cuda_scratch(bytes);
    if (!host || !dev) {
        free(host);
        if (dev) bt_cuda_fail("adamw: out of memory for the table of %lld chunks",
                              (long long)n_chunks);
        return;
    }
    memcpy(host, spans, (size_t)n_spans * sizeof *spans);
    struct chunk *chunks = (struct chunk *)(host + span_bytes);
    for (int64_t k = 0, c = 0; k < n_spans; k++)
        for (int64_t at = 0; at < spans[k].n; at += CHUNK)
            chunks[c++] = (struct chunk){(int32_t)k, at};
    bt_cuda_from_host(dev, host, bytes);
    free(host);
    for (int64_t c0 = 0; c0 < n_chunks; c0 += 65535 * 8) { /* grid limit: launches of 524280 */
        int64_t nc = n_chunks - c0 < 65535 * 8 ? n_chunks - c0 : 65535 * 8;
        adamw_kernel<<<(unsigned)nc, BT_THREADS, 0, bt_cuda_stream()>>>(
            (const struct bt_adamw_span *)dev, (const struct chunk *)(dev + span_bytes) + c0,
            grad_scale);
        if (!BT_CUDA_LAUNCHED("adamw_kernel")) return;
    }
}

__global__ void sgd_kernel(float *p, const float *g, float *buf, int64_t n, float lr, float wd,
                           float momentum, float grad_scale) {
    BT_GRID_STRIDE(i, n) bt_km_sgd(&p[i], g[i], buf ? &buf[i] : NULL, lr, wd, momentum, grad_scale);
}

void bt_cuda_sgd(float *p, const float *g, float *buf, int64_t n, float lr, float wd,
                 float momentum, float grad_scale) {
    if (n == 0) return;
    sgd_kernel<<<bt_blocks(n, BT_THREADS), BT_THREADS, 0, bt_cuda_stream()>>>(
        p, g, buf, n, lr, wd, momentum, grad_scale);
    BT_CUDA_LAUNCHED("sgd_kernel");
}
