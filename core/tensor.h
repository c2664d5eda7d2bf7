/* Tensors: dtype, device, shape and strides over reference-counted storage; views share storage.
 * Two lifetimes: persistent tensors (parameters, gradients, optimizer state; bt_tensor_new/free)
 * and step tensors (everything an op or a bt_empty-style factory returns), which live in the
 * runtime's step arena until bt_step_end(). */
#ifndef BRAID_CORE_TENSOR_H
#define BRAID_CORE_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

#define BT_MAX_DIMS 8

typedef enum {
    BT_F32 = 0,
    BT_BF16,
    BT_F16,
    BT_I32,
    BT_I64,
    BT_U16,
    BT_BOOL, /* one byte per element, 0 or 1 */
    BT_DTYPE_COUNT
} bt_dtype;

typedef enum { BT_DEVICE_CPU = 0, BT_DEVICE_CUDA, BT_DEVICE_TYPE_COUNT } bt_device_type;

typedef struct {
    bt_device_type type;
    int index; /* cuda:N; 0 for cpu */
} bt_device;

struct ag_node;

struct bt_storage {
    void *data;
    size_t nbytes;
    bt_device device;
    int refcount;    /* persistent storage only; step storage lives until the arena resets */
    bool persistent; /* false: memory belongs to the step arena */
    /* step storage: the arena it came from (NULL once handed back), and whether another tensor's
     * .grad took it over (autograd then never hands it back before the reset) */
    struct bt_arena *arena;
    bool adopted;
};

typedef struct bt_tensor {
    struct bt_storage *storage;
    int64_t offset; /* in elements, into storage */
    int ndim;
    int64_t shape[BT_MAX_DIMS];
    int64_t stride[BT_MAX_DIMS]; /* in elements */
    bt_dtype dtype;
    bool persistent;

    /* autograd */
    bool requires_grad;
    bool retains_grad;       /* keep .grad of a non-leaf after backward (PyTorch's retain_grad) */
    bool grad_owned;         /* .grad may be accumulated into in place (see autograd.c) */
    struct bt_tensor *grad;  /* contiguous, float32, same logical shape */
    struct ag_node *grad_fn; /* the op that produced this tensor; NULL for leaves */
    int32_t ag_pending;      /* during a backward with a leaf hook: uses of this leaf still to run */
    int refcount;            /* persistent tensors only */
} bt_tensor;

/* Shape literal helper: bt_zeros(BT_SHAPE(4, 8), BT_F32, bt_cpu()). */
#define BT_SHAPE(...)                                                                              \
    (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (const int64_t[]) {                 \
        __VA_ARGS__                                                                                \
    }

/* ---- dtypes and devices ---- */
size_t bt_dtype_size(bt_dtype dtype);
const char *bt_dtype_name(bt_dtype dtype);
bool bt_dtype_is_integer(bt_dtype dtype); /* i32, i64, u16, bool */
bt_device bt_cpu(void);
bt_device bt_cuda(int index);
bool bt_device_equal(bt_device a, bt_device b);
const char *bt_device_name(bt_device device, char *buf, size_t size); /* "cpu", "cuda:1" */

/* ---- persistent tensors (caller owns; free with bt_tensor_free) ---- */
bt_tensor *bt_tensor_new(int ndim, const int64_t *shape, bt_dtype dtype, bt_device device);
void bt_tensor_free(bt_tensor *t);         /* drops one reference; frees at zero */
bt_tensor *bt_tensor_retain(bt_tensor *t); /* adds one reference to a persistent tensor */
/* A persistent contiguous tensor of `shape` over base's storage, starting `offset` elements into
 * base (contiguous and persistent); keeps the storage alive. Shards of parameters and gradient
 * buckets are such aliases. */
bt_tensor *bt_tensor_alias(bt_tensor *base, int64_t offset, int ndim, const int64_t *shape);
/* Persistent deep copy (contiguous); the copy is a leaf with requires_grad=false. */
bt_tensor *bt_tensor_clone_persistent(const bt_tensor *t);

/* ---- step tensors (valid until bt_step_end) ---- */
bt_tensor *bt_empty(int ndim, const int64_t *shape, bt_dtype dtype, bt_device device);
bt_tensor *bt_zeros(int ndim, const int64_t *shape, bt_dtype dtype, bt_device device);
bt_tensor *bt_ones(int ndim, const int64_t *shape, bt_dtype dtype, bt_device device);
bt_tensor *bt_full(int ndim, const int64_t *shape, double value, bt_dtype dtype, bt_device device);
/* Copies `data` (numel elements of `dtype`, row-major) into a new step tensor on the CPU. */
bt_tensor *bt_from_data(int ndim, const int64_t *shape, bt_dtype dtype, const void *data);
bt_tensor *bt_scalar(double value); /* 0-d float32 */
bt_tensor *bt_empty_like(const bt_tensor *t);
bt_tensor *bt_zeros_like(const bt_tensor *t);

/* ---- properties ---- */
int64_t bt_numel(const bt_tensor *t);
size_t bt_nbytes(const bt_tensor *t);
bool bt_is_contiguous(const bt_tensor *t);
bool bt_same_shape(const bt_tensor *a, const bt_tensor *b);
void *bt_data(const bt_tensor *t); /* pointer to element 0 (storage data + offset) */
static inline float *bt_f32(const bt_tensor *t) {
    return (float *)bt_data(t);
}
/* Writes "(4,8)" (or "()" for a scalar) into buf and returns buf. */
const char *bt_shape_str(const bt_tensor *t, char *buf, size_t size);
double bt_item(const bt_tensor *t);           /* value of a one-element tensor, as double */
double bt_get(const bt_tensor *t, int64_t i); /* i-th element in logical row-major order */
void bt_set(bt_tensor *t, int64_t i, double value);
void bt_fill(bt_tensor *t, double value);
bt_status bt_copy_(bt_tensor *dst, const bt_tensor *src); /* same shape; converts dtypes */

/* ---- views (share storage; differentiable) ---- */
bt_tensor *bt_reshape(bt_tensor *x, int ndim, const int64_t *shape); /* one dim may be -1 */
bt_tensor *bt_view(bt_tensor *x, int ndim, const int64_t *shape); /* like reshape, never copies */
bt_tensor *bt_transpose(bt_tensor *x, int dim0, int dim1);
bt_tensor *bt_permute(bt_tensor *x, const int *dims);
bt_tensor *bt_narrow(bt_tensor *x, int dim, int64_t start, int64_t length);
bt_tensor *bt_contiguous(bt_tensor *x); /* x itself when already contiguous */
bt_tensor *bt_squeeze(bt_tensor *x, int dim);
bt_tensor *bt_unsqueeze(bt_tensor *x, int dim);
bt_tensor *bt_to_dtype(bt_tensor *x, bt_dtype dtype); /* copy; differentiable between floats */
/* A step-tensor copy of x on `device` (x itself when already there); not recorded by autograd:
 * batches go to the device before the forward */
bt_tensor *bt_to_device(bt_tensor *x, bt_device device);
bt_tensor *bt_detach(bt_tensor *x);                   /* same storage, no autograd history */

/* ---- random (counter-based, reproducible from seed and offset) ---- */
struct bt_rng {
    uint64_t seed;
    uint64_t offset; /* advances by the number of values drawn */
};
struct bt_rng bt_rng_make(uint64_t seed);
float bt_rng_uniform_at(uint64_t seed, uint64_t counter); /* [0, 1) */
void bt_fill_uniform(bt_tensor *t, struct bt_rng *rng, float low, float high);
void bt_fill_normal(bt_tensor *t, struct bt_rng *rng, float mean, float std);
bt_tensor *bt_randn(int ndim, const int64_t *shape, struct bt_rng *rng);
bt_tensor *bt_rand(int ndim, const int64_t *shape, struct bt_rng *rng);

/* Resolve a possibly negative dim against ndim; -1 if out of range. */
int bt_wrap_dim(int dim, int ndim);
/* Fill `strides` with the contiguous row-major strides of shape. */
void bt_contiguous_strides(int ndim, const int64_t *shape, int64_t *strides);

#endif
