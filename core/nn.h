/* nn modules: a tree of named modules owning persistent parameters, like torch.nn.Module.
 * Parameter names are dotted paths relative to the module asked
 * (`transformer.h.0.attn.c_attn.weight`); each forward pushes its module's full path as the error
 * scope, so an op failing inside reads `linear: ... (in net.fc1)`. Concrete modules embed struct
 * nn_module as their first member. */
#ifndef BRAID_CORE_NN_H
#define BRAID_CORE_NN_H

#include <stdbool.h>
#include <stdint.h>

#include "core/ops.h"
#include "core/tensor.h"

typedef enum {
    NN_MODULE = 0, /* a container (or a model's own module type) */
    NN_LINEAR,
    NN_EMBEDDING,
    NN_LAYERNORM,
    NN_RMSNORM,
    NN_DROPOUT,
} nn_kind;

/* How a parameter this process holds relates to its full logical tensor (tensor parallelism,
 * docs/tp.md): the full tensor is cut into `parts` pieces along `dim` and this is piece `part`. The
 * dim may be made of stacked blocks (GPT-2's c_attn: q, k, v), each cut the same way: piece r
 * holds rows [r*n_b/parts, (r+1)*n_b/parts) of every block b, block after block. parts <= 1: the
 * tensor is whole. Checkpoints write the full tensor and read any piece of it. */
#define NN_SPLIT_MAX_BLOCKS 4
struct nn_split {
    int parts, part;
    int dim;
    int n_blocks;                        /* 0 means one block: the whole dim */
    int64_t blocks[NN_SPLIT_MAX_BLOCKS]; /* full sizes along dim, summing to its full size */
};

struct nn_param {
    char *name;            /* local name: "weight" */
    bt_tensor *tensor;     /* persistent, requires_grad; one reference held by the module */
    bt_tensor **field;     /* the concrete module's pointer to it (kept in step by set_parameter) */
    struct nn_split split; /* zero: whole */
};

struct nn_module {
    nn_kind kind;
    char *name; /* local name: "fc1", "0" */
    char *path; /* full dotted path from the root, root name included: "net.fc1" */
    struct nn_module *parent;
    struct nn_module **children;
    int n_children, cap_children;
    struct nn_param *params;
    int n_params, cap_params;
    bool training; /* true after creation, like PyTorch */
    /* extra cleanup of a model's own module type, run before its children are freed; may be NULL */
    void (*on_free)(struct nn_module *self);
};

struct nn_linear { /* y = x @ weight^T + bias */
    struct nn_module base;
    bt_tensor *weight; /* (out_features, in_features), like nn.Linear */
    bt_tensor *bias;   /* (out_features) or NULL */
    int64_t in_features, out_features;
    bool residual_projection; /* GPT-2 init scales its weight by 1/sqrt(2*n_layer) */
};

struct nn_embedding {
    struct nn_module base;
    bt_tensor *weight; /* (num_embeddings, embedding_dim) */
    int64_t num_embeddings, embedding_dim;
};

struct nn_layernorm {
    struct nn_module base;
    bt_tensor *weight, *bias; /* (C); bias NULL when created without */
    int64_t C;
    double eps;
};

struct nn_rmsnorm {
    struct nn_module base;
    bt_tensor *weight; /* (C) */
    int64_t C;
    double eps;
};

struct nn_dropout {
    struct nn_module base;
    double p;
};

/* ---- building the tree ---- */
/* A container module. NULL (with a message) on bad names or out of memory. */
struct nn_module *nn_module_create(const char *name);
/* Allocates a zeroed module struct of `size` bytes (>= sizeof(struct nn_module), the module first)
 * for a model's own module types; free it with nn_module_free like any other. */
void *nn_module_new(size_t size, const char *name);
/* Makes `child` the last child of `parent`; returns child, or NULL if the name is taken in parent,
 * or child already has a parent. */
struct nn_module *nn_module_add_child(struct nn_module *parent, struct nn_module *child);
/* Creates a persistent zero float32 tensor requiring grad and registers it under `name`; `field`
 * (may be NULL) is the module struct's pointer to it, set now and kept in step when the parameter
 * is replaced: nn_module_add_parameter(&attn->base, "weight", BT_SHAPE(C, C), &attn->weight). */
bt_tensor *nn_module_add_parameter(struct nn_module *m, const char *name, int ndim,
                                   const int64_t *shape, bt_tensor **field);
/* Replaces m's parameter `name` with `t` (same shape; one more reference to t is taken): weight
 * tying, e.g. the LM head sharing the token embedding. */
bt_status nn_module_set_parameter(struct nn_module *m, const char *name, bt_tensor *t);
/* Marks m's parameter `name` as a piece of a larger logical tensor (struct nn_split); checked
 * against the parameter's shape: `nn: parameter attn.c_attn.weight: dim 0 of 96 rows is not piece
 * 1 of 2 of blocks (64, 64, 64)`. */
bt_status nn_module_set_split(struct nn_module *m, const char *name, const struct nn_split *split);
/* Frees m, its subtree and their parameters (each parameter drops one reference); a module with a
 * parent is removed from it first. */
void nn_module_free(struct nn_module *m);
/* Sets the training flag of m and every module below it (PyTorch's train(mode) / eval()). */
void nn_module_train(struct nn_module *m, bool training);
/* For module types' own code: frees a half-built module and returns NULL (a constructor's
 * failure path); and what a forward given a NULL module (its constructor failed) returns: NULL,
 * keeping the constructor's message, or `<layer>: module is NULL`. */
void *nn_module_discard(struct nn_module *m);
bt_tensor *nn_module_missing(const char *layer);
/* The child with this local name, or NULL. */
struct nn_module *nn_module_child(const struct nn_module *m, const char *name);

/* ---- parameters ---- */
struct nn_param_list {
    int64_t count;
    char **names;            /* full dotted names relative to the module asked */
    bt_tensor **tensors;     /* the parameters themselves (owned by the modules, not the list) */
    struct nn_split *splits; /* count entries (nn_named_parameters fills it), or NULL: all whole */
};
/* Every parameter of m's tree, each once (a tied parameter under its first name), in order: a
 * module's own parameters in registration order, then its children's, depth first. */
bt_status nn_named_parameters(const struct nn_module *m, struct nn_param_list *out);
void nn_param_list_free(struct nn_param_list *list);
/* The split of list entry i (a whole one when the list has none). */
struct nn_split nn_param_split(const struct nn_param_list *list, int64_t i);
/* Whether split s cuts its tensor (parts > 1). */
bool nn_split_is_cut(const struct nn_split *s);
/* The full logical shape of `local` (ndim entries into shape). */
void nn_split_full_shape(const struct nn_split *s, const bt_tensor *local, int64_t *shape);
/* local = piece s->part of full (full has the full logical shape; any float dtypes, contiguous
 * CPU tensors); with rows0 >= 0, local holds only rows [rows0, rows0 + local's rows) of the piece
 * (a ZeRO-1 shard of it). No autograd. Shapes are checked and named. */
bt_status nn_split_take(const struct nn_split *s, const bt_tensor *full, bt_tensor *local,
                        int64_t rows0);
/* The reverse: writes piece `part` (shape of s's piece) into its place in full. */
bt_status nn_split_place(const struct nn_split *s, int part, const bt_tensor *piece,
                         bt_tensor *full);
/* Number of parameter elements (tied parameters counted once). */
int64_t nn_num_parameters(const struct nn_module *m);
/* Moves every parameter of m's tree (and its .grad) to `device`, in place, as PyTorch's
 * module.to(device): each storage is moved once, so tied parameters and aliases of them stay
 * shared. Parameters must be float32 persistent tensors (they are). */
bt_status nn_module_to(struct nn_module *m, bt_device device);
/* The parameter with this dotted name relative to m, or NULL with a message naming it. */
bt_tensor *nn_get_parameter(const struct nn_module *m, const char *dotted_name);

/* ---- layers: constructors take the rng of PyTorch's default init, or NULL for zeros ---- */
struct nn_linear *nn_linear_create(const char *name, int64_t in_features, int64_t out_features,
                                   bool bias, struct bt_rng *rng);
struct nn_embedding *nn_embedding_create(const char *name, int64_t num_embeddings,
                                         int64_t embedding_dim, struct bt_rng *rng);
struct nn_layernorm *nn_layernorm_create(const char *name, int64_t C, bool bias, double eps);
struct nn_rmsnorm *nn_rmsnorm_create(const char *name, int64_t C, double eps);
struct nn_dropout *nn_dropout_create(const char *name, double p);

/* ---- forwards (step tensors; NULL with a message naming the module on error) ---- */
bt_tensor *nn_linear_forward(struct nn_linear *m, bt_tensor *x); /* (..., in) -> (..., out) */
/* gelu_tanh(nn_linear_forward(m, x)) as one op (bt_linear_gelu) */
bt_tensor *nn_linear_gelu_forward(struct nn_linear *m, bt_tensor *x);
bt_tensor *nn_embedding_forward(struct nn_embedding *m, bt_tensor *idx); /* (...) -> (..., C) */
bt_tensor *nn_layernorm_forward(struct nn_layernorm *m, bt_tensor *x);   /* over the last dim */
bt_tensor *nn_rmsnorm_forward(struct nn_rmsnorm *m, bt_tensor *x);       /* over the last dim */
bt_tensor *nn_dropout_forward(struct nn_dropout *m, bt_tensor *x);       /* identity in eval */

/* ---- init schemes (core/nn_init.c); the rng's offset advances by the values drawn ---- */
void nn_init_normal(bt_tensor *t, struct bt_rng *rng, double mean, double std);
void nn_init_uniform(bt_tensor *t, struct bt_rng *rng, double low, double high);
void nn_init_zeros(bt_tensor *t);
void nn_init_ones(bt_tensor *t);
/* PyTorch's reset_parameters for every module of the tree: Linear weight and bias
 * U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform with a=sqrt(5)), Embedding N(0,1), norms
 * ones/zeros. */
void nn_init_pytorch_default(struct nn_module *m, struct bt_rng *rng);
/* GPT-2's scheme (nanoGPT _init_weights): Linear and Embedding weights N(0, 0.02), biases zero,
 * norms ones/zeros; Linears marked residual_projection get N(0, 0.02/sqrt(2*n_layer)). */
bt_status nn_init_gpt2(struct nn_module *m, struct bt_rng *rng, int n_layer);

#endif
