/* cuDNN's fused (flash) attention, forward and backward, as operation graphs of cuDNN's backend
 * API: the scores S = scale Q Kᵀ, the causal mask, the softmax with its per-row statistics, the
 * products with V, and the backward's recomputation from those statistics, each an operation node
 * that cuDNN's fused attention engines recognise as one kernel. bf16 Q, K, V, O, dO, dQ, dK, dV,
 * packed (B, H, T, D) row-major; float32 statistics (B, H, T, 1), stats = max + log(sum exp) of a
 * row's scaled, masked scores: the log-sum-exp braid's other attention kernels save, so either
 * side's can feed the other's backward.
 *
 * Building has two halves. The nodes (tensors and operations) need no GPU: cuDNN checks each
 * one's shapes, types and modes when it is finalized, and tests/cuda checks that on the host. The
 * operation graph, the engine heuristics and the execution plan need a handle (a GPU); a graph
 * that no engine on this GPU and cuDNN takes is "unsupported", with cuDNN's reason, not an error:
 * the caller runs braid's own kernels instead. */
#ifndef BRAID_CORE_CUDA_SDPA_GRAPH_H
#define BRAID_CORE_CUDA_SDPA_GRAPH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/cuda/cudnn_api.h"

struct bt_sdpa_dims {
    int64_t B, H, T, D; /* batch, heads (as many for K and V as for Q), sequence, head size */
    bool causal;
    bool backward;
};

/* the graph's tensors that a caller supplies (device pointers, and the scale by value on the
 * host), by their cuDNN unique ids */
enum bt_sdpa_uid {
    BT_SDPA_Q = 1,
    BT_SDPA_K,
    BT_SDPA_V,
    BT_SDPA_O,
    BT_SDPA_STATS,
    BT_SDPA_SCALE,   /* floats on the host, by value: the scale, */
    BT_SDPA_NEG_INF, /* -inf (the causal mask's fill), */
    BT_SDPA_ONE,     /* and 1 (backward) */
    BT_SDPA_DO,
    BT_SDPA_DQ,
    BT_SDPA_DK,
    BT_SDPA_DV,
    BT_SDPA_SUM,      /* backward: rowsum(dO ∘ O), float (B, H, T, 1), the graph's own scratch */
    BT_SDPA_DQ_ACCUM, /* backward: dQ summed in float32 (B, H, T, D), zeroed before each run */
    BT_SDPA_UID_COUNT
};

#define BT_SDPA_MAX_DESCS 256

struct bt_sdpa_graph {
    cudnnBackendDescriptor_t descs[BT_SDPA_MAX_DESCS]; /* everything made, destroyed in reverse */
    int n_descs;
    cudnnBackendDescriptor_t ops[48]; /* the operation nodes, in graph order */
    int n_ops;
    cudnnBackendDescriptor_t plan; /* NULL until built with a handle */
    int64_t workspace;             /* bytes the plan needs */
    int64_t uids[16];              /* the ids the plan reads and writes, in variant-pack order */
    int n_uids;
};

/* The uids a graph of these dims uses (the plan's variant pack: every one needs a pointer). */
int bt_sdpa_uids(const struct bt_sdpa_dims *d, int64_t *uids, int max);

/* Builds the graph's nodes, then (handle not NULL) its operation graph and execution plan. False
 * with the reason in why: a node cuDNN rejects (a bug here, or a cuDNN that lacks an operation),
 * or no engine for the graph. *g is filled either way; bt_sdpa_destroy frees it. */
bool bt_sdpa_build(struct bt_sdpa_graph *g, const struct bt_sdpa_dims *d, cudnnHandle_t handle,
                   char *why, size_t size);
void bt_sdpa_destroy(struct bt_sdpa_graph *g);

/* the value of BT_SDPA_NEG_INF, the masked scores' fill: -inf from cuDNN 9.10 on, the lowest
 * float before (as NVIDIA's frontend passes them) */
float bt_sdpa_neg_inf(void);

/* what bt_sdpa_build takes: bf16 flash attention wants a head size that is a multiple of 8, at
 * most 128 here; false with the reason */
bool bt_sdpa_takes(const struct bt_sdpa_dims *d, char *why, size_t size);

#endif
