/* Helpers shared by the op front ends in core/ops/: argument checks that produce braid's error
 * messages, and output allocation. Internal to core/. */
#ifndef BRAID_CORE_OPS_OP_COMMON_H
#define BRAID_CORE_OPS_OP_COMMON_H

#include <stdbool.h>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/runtime.h"
#include "core/tensor.h"

/* Shape strings for messages: SHAPE(t) formats into a buffer that lives for the statement. */
#define SHAPE(t) bt_shape_str((t), (char[96]){0}, 96)

/* NULL inputs mean an earlier op failed: keep its message; otherwise say which argument. */
static inline bool op_inputs_present(const char *op, int n, bt_tensor *const *xs) {
    for (int k = 0; k < n; k++)
        if (!xs[k]) {
            if (!bt_has_error()) bt_error("%s: argument %d is NULL", op, k + 1);
            return false;
        }
    return true;
}
#define OP_INPUTS(op, ...)                                                                         \
    op_inputs_present(op, (int)(sizeof((bt_tensor *[]){__VA_ARGS__}) / sizeof(bt_tensor *)),       \
                      (bt_tensor *[]){__VA_ARGS__})

static inline bool op_check_float(const char *op, const char *what, const bt_tensor *t) {
    if (t->dtype == BT_F32) return true;
    bt_error("%s: %s must be float32, got %s %s", op, what, bt_dtype_name(t->dtype), SHAPE(t));
    return false;
}

static inline bool op_check_same_device(const char *op, const bt_tensor *a, const bt_tensor *b) {
    if (bt_device_equal(a->storage->device, b->storage->device)) return true;
    char da[32], db[32];
    bt_error("%s: tensors on different devices (%s and %s)", op,
             bt_device_name(a->storage->device, da, sizeof da),
             bt_device_name(b->storage->device, db, sizeof db));
    return false;
}

static inline const struct bt_backend *op_backend(const char *op, const bt_tensor *t) {
    return bt_backend_for(t->storage->device, op);
}

/* A contiguous version of t for a kernel to read (t itself when contiguous); no autograd. */
bt_tensor *op_contiguous_data(bt_tensor *t);

/* New step tensor with the given shape, float32, on t's device. */
static inline bt_tensor *op_new_like_shape(const bt_tensor *t, int ndim, const int64_t *shape) {
    return bt_empty(ndim, shape, BT_F32, t->storage->device);
}

/* dim wrapped into [0, ndim), or -1 with "<op>: dimension <dim> out of range for <shape>" */
static inline int op_dim(const char *op, const bt_tensor *x, int dim) {
    int d = bt_wrap_dim(dim, x->ndim);
    if (d < 0) bt_error("%s: dimension %d out of range for %s", op, dim, SHAPE(x));
    return d;
}

/* (outer, dim, inner) of x around dimension d */
static inline void op_split_dims(const bt_tensor *x, int d, int64_t *outer, int64_t *dim,
                                 int64_t *inner) {
    *outer = 1;
    *inner = 1;
    for (int k = 0; k < d; k++)
        *outer *= x->shape[k];
    for (int k = d + 1; k < x->ndim; k++)
        *inner *= x->shape[k];
    *dim = x->shape[d];
}

#endif
