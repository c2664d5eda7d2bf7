/* Tensor parallelism (DESIGN.md "Comm and parallel", Megatron-LM, Shoeybi et al. 2019): the
 * autograd ops that move activations between the ranks of a tensor-parallel group, and the layers
 * built on them — column- and row-parallel linear, vocab-parallel embedding and cross-entropy.
 * Relies on core/ (ops, autograd, nn) and comm/ (collectives: MPI for host tensors, NCCL for
 * device ones); docs/tp.md.
 *
 * Every rank of the group runs the same ops in the same order: the ops are collectives. A group of
 * size 1 makes each op the identity (x itself is returned, nothing is copied or recorded). Ops'
 * collectives are blocking, in the forward and in the backward, so none is in flight at
 * bt_step_end. The layers keep a pointer to their group: it must outlive them. */
#ifndef BRAID_PARALLEL_TP_H
#define BRAID_PARALLEL_TP_H

#include <stdbool.h>
#include <stdint.h>

#include "comm/comm.h"
#include "core/nn.h"

/* ---- the conjugate ops (parallel/tp_ops.c); x float32 on any device, any shape ----
 * P = comm_size(group), r = comm_rank(group); dim may be negative (from the end). */

/* Megatron's f: identity forward; backward all-reduces (sums) the gradient over the group. Put in
 * front of a column-parallel matmul whose input is replicated. */
bt_tensor *tp_copy(bt_tensor *x, struct comm *group);
/* Megatron's g: all-reduce (sum) forward; identity backward. Ends a row-parallel matmul. */
bt_tensor *tp_reduce(bt_tensor *x, struct comm *group);
/* All-gather along dim in rank order (dim grows P-fold); backward keeps this rank's block of the
 * gradient (the consumer is replicated, so every rank holds the same full gradient). */
bt_tensor *tp_gather(bt_tensor *x, struct comm *group, int dim);
/* This rank's block r of P along dim (a view; shape[dim] divisible by P); backward all-gathers. */
bt_tensor *tp_split(bt_tensor *x, struct comm *group, int dim);
/* Sequence parallelism (Korthikanti et al. 2022): all-gather along dim forward (rank order);
 * backward reduce-scatters the gradient (each rank's consumer saw the whole gathered tensor and
 * produced a partial gradient of it). Replaces tp_copy in front of a column-parallel matmul. */
bt_tensor *tp_gather_seq(bt_tensor *x, struct comm *group, int dim);
/* Reduce-scatter along dim forward (sum over ranks of block r; shape[dim] divisible by P);
 * backward all-gathers. Replaces tp_reduce after a row-parallel matmul. */
bt_tensor *tp_scatter_seq(bt_tensor *x, struct comm *group, int dim);

/* Vocab-parallel cross-entropy: logits (..., V/P) are this rank's vocabulary slice [r*V/P,
 * (r+1)*V/P); targets (...) are global ids (int32/int64/uint16, -1 = ignore) and the same on every
 * rank. Mean over the counted targets (0 when none), 0-d, the same on every rank; the full logits
 * are never gathered: each rank's backend kernels give each row's log-sum-exp over its slice
 * (lse_r) and its target logit where it holds it; m = max_r lse_r is all-reduced (max), then
 * sum_r exp(lse_r - m) and the target logits (sum), as N-row host vectors. Backward gives each
 * rank its slice of (softmax - onehot) / count. */
bt_tensor *tp_cross_entropy(bt_tensor *logits, bt_tensor *targets, struct comm *group);

/* n / tp, or -1 with "<owner>: <what> <n> not divisible by tp=<tp>" (e.g. owner "column-parallel
 * linear c_fc", what "out_features"); models check head counts with it. */
int64_t tp_divide(const char *owner, const char *what, int64_t n, int tp);

/* ---- layers (parallel/tp_layers.c): nn modules whose parameters are this rank's shards ----
 * Parameters keep nn_linear's and nn_embedding's local names ("weight", "bias"), so a TP model's
 * dotted names are those of its single-rank twin. A non-NULL rng draws the full tensor exactly as
 * the single-rank layer would (nn_linear_create / nn_embedding_create with the same rng) and keeps
 * this rank's slice, so every layout starts from the same weights; NULL leaves zeros. The kind is
 * NN_MODULE: nn_init_* schemes pass over these layers (init the full tensors, then *_load_full). */

#define TP_MAX_BLOCKS 4

/* Column-parallel: y = x @ W^T + b with W (out, in) split by rows. The output dim may be made of
 * stacked blocks (GPT-2's c_attn: q, k, v of C rows each), each split across the ranks: this rank
 * holds, block after block, rows [r*n_b/P, (r+1)*n_b/P) of every block b, so its output is
 * (..., q_r | k_r | v_r). One block is the plain layer. */
struct tp_column_linear {
    struct nn_module base;
    bt_tensor *weight;                 /* (out_features/P, in_features): this rank's rows */
    bt_tensor *bias;                   /* (out_features/P) or NULL */
    int64_t in_features, out_features; /* of the full layer */
    int64_t out_per_rank;              /* out_features / P */
    int n_blocks;
    int64_t block_sizes[TP_MAX_BLOCKS]; /* full rows of each block, summing to out_features */
    struct comm *group;                 /* not owned */
    int tp, tp_rank;
    /* set after creation (defaults false, 1): */
    bool gather_output;     /* all-gather the output to (..., out_features); one block only */
    bool sequence_parallel; /* x is this rank's slice along seq_dim: tp_gather_seq, not tp_copy */
    int seq_dim;
    bool input_is_gathered; /* x already went through tp_column_input: several column layers
                             * reading the same x (LLaMA's q/k/v, gate/up) share one collective */
};

/* Row-parallel: y = x @ W^T + b with W (out, in) split by columns; the partial products are summed
 * over the group (tp_reduce), then the bias — full, replicated — is added once. */
struct tp_row_linear {
    struct nn_module base;
    bt_tensor *weight; /* (out_features, in_features/P): columns [r*in/P, (r+1)*in/P) */
    bt_tensor *bias;   /* (out_features), the same on every rank, or NULL */
    int64_t in_features, out_features; /* of the full layer */
    int64_t in_per_rank;               /* in_features / P */
    struct comm *group;                /* not owned */
    int tp, tp_rank;
    /* set after creation (defaults true, false, 1): */
    bool input_is_parallel; /* x is (..., in/P), this rank's block; false: x is full, tp_split */
    bool sequence_parallel; /* reduce-scatter the output along seq_dim instead of all-reducing it;
                             * the bias then goes through tp_copy: its gradient is summed */
    int seq_dim;
};

/* Vocab-parallel embedding: this rank holds rows [r*V/P, (r+1)*V/P) of the (V, C) table; ids
 * outside them give zero rows, and the sum over the group (tp_reduce) is the full lookup. */
struct tp_vocab_embedding {
    struct nn_module base;
    bt_tensor *weight;                     /* (num_embeddings/P, embedding_dim) */
    int64_t num_embeddings, embedding_dim; /* of the full table */
    int64_t vocab_start, vocab_per_rank;   /* this rank's rows: [vocab_start, + vocab_per_rank) */
    struct comm *group;                    /* not owned */
    int tp, tp_rank;
    /* set after creation (defaults false, 1): */
    bool sequence_parallel; /* reduce-scatter the output along seq_dim instead of all-reducing */
    int seq_dim;
};

/* Constructors: NULL with a message on error (`column-parallel linear c_fc: out_features 100 not
 * divisible by tp=3`). */
struct tp_column_linear *tp_column_linear_create(const char *name, int64_t in_features,
                                                 int64_t out_features, bool bias,
                                                 struct comm *group, struct bt_rng *rng);
/* The same with the output made of n_blocks (<= TP_MAX_BLOCKS) stacked blocks of the given sizes,
 * each divisible by P. */
struct tp_column_linear *tp_column_linear_create_fused(const char *name, int64_t in_features,
                                                       int n_blocks, const int64_t *block_sizes,
                                                       bool bias, struct comm *group,
                                                       struct bt_rng *rng);
struct tp_row_linear *tp_row_linear_create(const char *name, int64_t in_features,
                                           int64_t out_features, bool bias, struct comm *group,
                                           struct bt_rng *rng);
struct tp_vocab_embedding *tp_vocab_embedding_create(const char *name, int64_t num_embeddings,
                                                     int64_t embedding_dim, struct comm *group,
                                                     struct bt_rng *rng);

/* Forwards (step tensors; NULL with a message naming the module on error):
 * column: x (..., in) replicated [SP: this rank's slice along seq_dim] -> (..., out/P), or
 *         (..., out) with gather_output;
 * row:    x (..., in/P) [full (..., in) without input_is_parallel] -> (..., out) replicated
 *         [SP: this rank's slice along seq_dim];
 * embedding: idx (...) global ids in [0, V) -> (..., C) replicated [SP: slice along seq_dim];
 * attend: the tied LM head, x (..., C) replicated [SP: slice] -> logits (..., V/P), this rank's
 *         vocabulary slice, ready for tp_cross_entropy. */
bt_tensor *tp_column_linear_forward(struct tp_column_linear *m, bt_tensor *x);
/* gelu_tanh(tp_column_linear_forward(m, x)) with the GELU fused into the GEMM (bt_linear_gelu) */
bt_tensor *tp_column_linear_gelu_forward(struct tp_column_linear *m, bt_tensor *x);
/* The input collective of column layer m alone: tp_copy(x), or tp_gather_seq under SP. Run it once
 * for several column layers of the same settings that read the same x, with their
 * input_is_gathered set: one all-reduce in the backward (or one all-gather and one
 * reduce-scatter under SP) instead of one per layer. */
bt_tensor *tp_column_input(const struct tp_column_linear *m, bt_tensor *x);
bt_tensor *tp_row_linear_forward(struct tp_row_linear *m, bt_tensor *x);
bt_tensor *tp_vocab_embedding_forward(struct tp_vocab_embedding *m, bt_tensor *idx);
bt_tensor *tp_vocab_embedding_attend(struct tp_vocab_embedding *m, bt_tensor *x);

/* Copy this rank's slice of the full (unsharded) tensors into the layer's parameters: weight
 * (out, in) / (V, C) as the single-rank layer holds it, bias (out) or NULL exactly when the layer
 * has none. Any float dtype; the shapes are checked and named. Checkpoint loading uses these. */
bt_status tp_column_linear_load_full(struct tp_column_linear *m, const bt_tensor *full_weight,
                                     const bt_tensor *full_bias);
bt_status tp_row_linear_load_full(struct tp_row_linear *m, const bt_tensor *full_weight,
                                  const bt_tensor *full_bias);
bt_status tp_vocab_embedding_load_full(struct tp_vocab_embedding *m, const bt_tensor *full_weight);

#endif
