/* The language models braid trains (GPT-2 and LLaMA families) behind one interface: build from the
 * model section of a config, forward (B,T) token ids to logits and a loss, list parameters with
 * their public names (HF/nanoGPT), count FLOPs. Built from core/ ops and nn modules. */
#ifndef BRAID_MODELS_MODEL_H
#define BRAID_MODELS_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "comm/comm.h"
#include "core/nn.h"

typedef enum { MODEL_GPT = 0, MODEL_LLAMA } model_arch;

struct model_config {
    model_arch arch;
    int64_t vocab_size, block_size, n_layer, n_head, n_kv_head, n_embd, ffn_hidden;
    double dropout;
    bool bias;         /* gpt: biases in linears and layernorms */
    bt_gelu_kind gelu; /* gpt */
    double norm_eps;   /* layernorm (gpt) / rmsnorm (llama) epsilon */
    double rope_theta; /* llama */
    bool tie_embeddings;
    /* Tensor parallelism (docs/tp.md): NULL or a group of one builds the whole
     * model; a group of P > 1 ranks builds this rank's shards (attention heads, MLP columns,
     * vocabulary rows), and every rank of the group must run the same calls. Not owned: it must
     * outlive the model. */
    struct comm *tp_group;
    /* Sequence parallelism (Megatron-SP, docs/tp.md), with a tp group of P > 1: the norms,
     * dropout and residual adds run on this rank's slice T/P of the sequence (all-gathered in
     * front of each column-parallel layer, reduce-scattered after each row-parallel one); T must
     * be divisible by P. The same losses as without. */
    bool sequence_parallel;
};

struct model {
    struct model_config config;
    struct nn_module *root; /* parameters named like the public checkpoints */
    void *impl;             /* the family's own layer pointers */
    bt_tensor *(*forward)(struct model *m, bt_tensor *idx, bt_tensor *targets, bt_tensor **logits);
};

/* Builds the model with its family's init (GPT-2: normal 0.02 with scaled residual projections;
 * LLaMA: normal 0.02) drawn from `seed`. NULL with a message naming the bad value. */
struct model *model_create(const struct model_config *cfg, uint64_t seed);
void model_free(struct model *m);

/* idx (B, T) integer token ids, T <= block_size; targets (B, T) or NULL. Returns the mean
 * cross-entropy loss (0-d) when targets are given, else NULL without error; *logits, when not NULL,
 * receives (B, T, V), or with a tp group of P > 1 this rank's vocabulary slice (B, T, V/P) (the
 * loss is then the same on every rank of the group). Step tensors; records autograd when grad mode
 * is on. */
bt_tensor *model_forward(struct model *m, bt_tensor *idx, bt_tensor *targets, bt_tensor **logits);

/* ---- generation with a key/value cache (braid sample) ---- */
/* Per layer, the keys and values of the positions seen so far, for `batch` sequences and up to
 * block_size positions (persistent tensors, allocated once). */
struct model_cache;
struct model_cache *model_cache_create(struct model *m, int64_t batch);
void model_cache_free(struct model_cache *c);
int64_t model_cache_len(const struct model_cache *c); /* positions held */
void model_cache_reset(struct model_cache *c);        /* forget them all (len 0) */

/* Forward of idx (batch, n) at positions len .. len+n-1 of the cache, attending to the cached
 * positions and the new ones (causally), appending the new keys and values. No autograd, eval
 * mode semantics (no dropout). Returns logits (batch, n, V) as a step tensor; NULL with a message
 * when len + n > block_size or idx has the wrong shape. Equal (to float rounding) to the last n
 * rows of model_forward over all len + n tokens. */
bt_tensor *model_forward_cached(struct model *m, struct model_cache *c, bt_tensor *idx);

/* Training-mode switch (dropout). */
void model_train(struct model *m, bool training);

/* Parameters with their public names, in a fixed order (caller frees the list). With a tp group
 * of P > 1 the names are the same and the tensors this rank's shards (or replicated copies). */
bt_status model_parameters(const struct model *m, struct nn_param_list *out);
/* Parameters of the whole model (with tp, of the full logical tensors: pieces times parts), and
 * those this rank holds. Tied parameters count once. */
int64_t model_num_parameters(const struct model *m);
int64_t model_num_local_parameters(const struct model *m);

/* Model FLOPs for one token of a forward+backward at sequence length T: 6*N (N without the
 * position embedding) + 12*n_layer*n_embd*T (attention scores and values; PaLM appendix B). */
double model_flops_per_token(const struct model *m, int64_t T);

#endif
