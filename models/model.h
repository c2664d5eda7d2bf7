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
    /* Pipeline parallelism (docs/pp.md): with pp_stages > 1 this process builds stage pp_stage
     * only: blocks [pp_layer_begin, pp_layer_end) under their global names (h.<i> / layers.<i>),
     * the embeddings on stage 0, the final norm and the LM head on stage pp_stages-1. With tied
     * embeddings the last stage holds a copy of the token embedding under its public name
     * (transformer.wte.weight / model.embed_tokens.weight), initialised equal; its gradient must be
     * summed with stage 0's (model_tied_embedding). 0 or 1 stages: the whole model. */
    int pp_stages, pp_stage;
    int64_t pp_layer_begin, pp_layer_end;
};

struct model {
    struct model_config config;
    struct nn_module *root; /* parameters named like the public checkpoints */
    void *impl;             /* the family's own layer pointers */
    /* The stage's layers, on an input model_stage_forward has checked: idx (B, T) on the first
     * stage, else the previous stage's hidden state; returns the hidden state (B, T, C), or on
     * the last stage the logits (B, T, V) (V/P with tp); with hidden_only set, the last stage's
     * hidden state (B, T, C) after its final norm, for `head`. */
    bt_tensor *(*forward)(struct model *m, bt_tensor *in);
    /* The last stage's LM head on one rank (its weight the tied embedding's when tied), or NULL
     * (tp, or another stage). With it, a forward that wants the loss and not the logits runs the
     * head and the loss as one bt_linear_cross_entropy: no (B, T, V) logits in the step. */
    struct nn_linear *head;
    bool hidden_only;
};

/* Builds the model with its family's init (GPT-2: normal 0.02 with scaled residual projections;
 * LLaMA: normal 0.02) drawn from `seed`. NULL with a message naming the bad value. A tp shard or a
 * pipeline stage starts from exactly the weights of the whole single-rank model of that seed. */
struct model *model_create(const struct model_config *cfg, uint64_t seed);
void model_free(struct model *m);

/* idx (B, T) integer token ids, T <= block_size; targets (B, T) or NULL. Returns the mean
 * cross-entropy loss (0-d) when targets are given, else NULL without error; *logits, when not NULL,
 * receives (B, T, V), or with a tp group of P > 1 this rank's vocabulary slice (B, T, V/P) (the
 * loss is then the same on every rank of the group). Step tensors; records autograd when grad mode
 * is on. */
bt_tensor *model_forward(struct model *m, bt_tensor *idx, bt_tensor *targets, bt_tensor **logits);

/* ---- pipeline stages (model_config.pp_stages > 1) ---- */
/* The layers of each stage, balanced by parameter count: stage 0 also carries the embeddings
 * (token, and position for gpt), the last stage the final norm and the untied LM head; blocks are
 * given out contiguously so that the largest stage is as small as possible (every stage at least
 * one block). begin/end have `stages` entries. Error when stages > n_layer. */
bt_status model_stage_layers(const struct model_config *c, int stages, int64_t *begin,
                             int64_t *end);
/* Whether m is the first / the last pipeline stage (both for a whole model). */
bool model_is_first_stage(const struct model *m);
bool model_is_last_stage(const struct model *m);
/* One stage's forward. First stage: in = idx (B, T) token ids; later stages: in = the previous
 * stage's output, a float (B, T, C) (with sequence parallelism (B, T/P, C)). Last stage: returns
 * the mean loss (0-d) when targets are given (else NULL without error) and *logits like
 * model_forward; other stages return their output hidden state (targets ignored). model_forward is
 * this for a whole model (and on a stage model it is this function). */
bt_tensor *model_stage_forward(struct model *m, bt_tensor *in, bt_tensor *targets,
                               bt_tensor **logits);
/* The tied token embedding's tensor on stage 0 and its copy on the last stage when the embeddings
 * are tied and pp_stages > 1; NULL otherwise (the pipeline sums their gradients over the two
 * stages). */
bt_tensor *model_tied_embedding(const struct model *m);

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
 * when len + n > block_size, idx has the wrong shape or m is a stage of several (whole models
 * only). Equal (to float rounding) to the last n
 * rows of model_forward over all len + n tokens. */
bt_tensor *model_forward_cached(struct model *m, struct model_cache *c, bt_tensor *idx);

/* Training-mode switch (dropout). */
void model_train(struct model *m, bool training);

/* Parameters with their public names, in a fixed order (caller frees the list). With a tp group
 * of P > 1 the names are the same and the tensors this rank's shards (or replicated copies). */
bt_status model_parameters(const struct model *m, struct nn_param_list *out);
/* Parameters of the whole model (with tp, of the full logical tensors: pieces times parts), and
 * those this rank holds. Tied parameters count once. On a pipeline stage both count the stage's
 * parameters, the last stage's copy of a tied embedding included (the stages sum to the whole
 * model plus vocab_size * n_embd). */
int64_t model_num_parameters(const struct model *m);
int64_t model_num_local_parameters(const struct model *m);

/* Model FLOPs for one token of a forward+backward at sequence length T: 6*N (N without the
 * position embedding) + 12*n_layer*n_embd*T (attention scores and values; PaLM appendix B), for a
 * whole model (pp_stages <= 1). A pipeline stage knows only its own N: callers sum the stages'
 * model_num_parameters (less the last stage's tied copy) and pass the total to
 * model_flops_per_token_of. */
double model_flops_per_token(const struct model *m, int64_t T);
double model_flops_per_token_of(const struct model_config *c, double num_parameters, int64_t T);

#endif
