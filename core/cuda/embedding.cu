/* CUDA embedding: the forward is a gather; the backward is deterministic without atomics. The
 * positions are grouped by token on the host (a counting sort, positions ascending within a
 * token), and one block per distinct token adds its rows in that order: the same additions in the
 * same order as the CPU's loop over positions, so the gradient matches it bit for bit. */
#include <stdlib.h>

#include "core/cuda/kernels.cuh"

__global__ void embedding_kernel(float *out, const float *weight, const int64_t *idx, int64_t N,
                                 int64_t C) {
    BT_GRID_STRIDE(i, N * C) out[i] = weight[idx[i / C] * C + i % C];
}

void bt_cuda_embedding(float *out, const float *weight, const int64_t *idx, int64_t N,
                       int64_t C) {
    if (N * C == 0) return;
    embedding_kernel<<<bt_blocks(N * C, BT_THREADS), BT_THREADS, 0, bt_cuda_stream()>>>(
        out, weight, idx, N, C);
    BT_CUDA_LAUNCHED("embedding_kernel");
}

/* plan: tokens[u] (u < U distinct tokens), start[u]..start[u+1] into positions[] */
__global__ void embedding_backward_kernel(float *dweight, const float *dout,
                                          const int64_t *plan, int64_t U, int64_t C) {
    const int64_t *tokens = plan, *start = plan + U, *positions = plan + 2 * U + 1;
    for (int64_t u = blockIdx.x; u < U; u += gridDim.x) {
        float *row = dweight + tokens[u] * C;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
            float acc = row[c];
            for (int64_t k = start[u]; k < start[u + 1]; k++)
                acc += dout[positions[k] * C + c];
            row[c] = acc;
        }
    }
}

void bt_cuda_embedding_backward(float *dweight, const float *dout, const int64_t *idx, int64_t N,
                                int64_t C, int64_t V) {
    if (N == 0 || C == 0) return;
    int64_t *host_idx = (int64_t *)calloc((size_t)N, sizeof(int64_t));
    int64_t *count = (int64_t *)calloc((size_t)V + 1, sizeof(int64_t));
    int64_t *plan = (int64_t *)malloc((size_t)(2 * N + 1 + N) * sizeof(int64_t));
    if (!host_idx || !count || !plan) {
        free(host_idx), free(count), free(plan);
        bt_cuda_fail("embedding backward: out of memory for the %lld positions' plan",
                     (long long)N);
        return;
    }
    bt_cuda_to_host(host_idx, idx, (size_t)N * sizeof(int64_t));
    for (int64_t n = 0; n < N && bt_cuda_ok(); n++) /* the front end range-checked them */
        if (host_idx[n] < 0 || host_idx[n] >= V)
            bt_cuda_fail("embedding backward: index %lld at %lld outside [0, %lld)",
                         (long long)host_idx[n], (long long)n, (long long)V);
    if (!bt_cuda_ok()) {
        free(host_idx), free(count), free(plan);
        return;
    }
    for (int64_t n = 0; n < N; n++)
        count[host_idx[n]]++;
    int64_t U = 0;
    for (int64_t v = 0; v < V; v++)
        U += count[v] > 0;
    int64_t *tokens = plan, *start = plan + U, *positions = plan + 2 * U + 1;
    for (int64_t v = 0, u = 0, at = 0; v < V; v++) {
        if (!count[v]) continue;
        tokens[u] = v;
        start[u++] = at;
        int64_t c = count[v];
        count[v] = at; /* from here: where token v's next position goes */
        at += c;
    }
    start[U] = N;
    for (int64_t n = 0; n < N; n++)
        positions[count[host_idx[n]]++] = n;
    size_t bytes = (size_t)(2 * U + 1 + N) * sizeof(int64_t);
    int64_t *dplan = (int64_t *)bt_cuda_scratch(bytes);
    if (dplan) {
        bt_cuda_from_host(dplan, plan, bytes);
        embedding_backward_kernel<<<U < 65535 * 8 ? (unsigned)U : 65535 * 8, BT_THREADS, 0,
                                    bt_cuda_stream()>>>(dweight, dout, dplan, U, C);
        BT_CUDA_LAUNCHED("embedding_backward_kernel");
    }
    free(host_idx), free(count), free(plan);
}
