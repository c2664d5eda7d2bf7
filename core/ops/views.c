/* View ops (reshape, transpose/permute, narrow, squeeze, contiguous, dtype casts) and joining
 * (cat/split), with their backwards. Views share storage with their input; gradients are always
 * contiguous in the logical shape, so a view's backward only reshapes, permutes or pads. */
#include <string.h>

#include "core/ops.h"
#include "core/ops/op_common.h"

/* A step-tensor header sharing x's storage, with the given shape/strides/offset. */
static bt_tensor *make_view(const bt_tensor *x, int ndim, const int64_t *shape,
                            const int64_t *strides, int64_t offset) {
    bt_tensor *v = bt_step_alloc(sizeof(*v), "view");
    if (!v) return NULL;
    memset(v, 0, sizeof(*v));
    v->storage = x->storage;
    v->offset = offset;
    v->ndim = ndim;
    memcpy(v->shape, shape, (size_t)ndim * sizeof(int64_t));
    memcpy(v->stride, strides, (size_t)ndim * sizeof(int64_t));
    v->dtype = x->dtype;
    return v;
}

bt_tensor *op_contiguous_data(bt_tensor *t) {
    if (bt_is_contiguous(t)) return t;
    bt_tensor *c = bt_empty(t->ndim, t->shape, t->dtype, t->storage->device);
    if (!c) return NULL;
    const struct bt_backend *be = op_backend("contiguous", t);
    if (!be) return NULL;
    be->copy_strided(bt_data(c), c->dtype, bt_data(t), t->dtype, t->ndim, t->shape, t->stride);
    return c;
}

/* ---- reshape / view / squeeze / unsqueeze: backward reshapes g to the input's shape ---- */

static bt_status reshape_backward(struct ag_node *node) {
    bt_tensor *x = node->inputs[0], *g = node->out->grad;
    bt_tensor *gx = make_view(g, x->ndim, x->shape, (int64_t[BT_MAX_DIMS]){0}, g->offset);
    if (!gx) return BT_ERR;
    bt_contiguous_strides(x->ndim, x->shape, gx->stride);
    return ag_accumulate(x, gx);
}

static bool resolve_shape(const char *op, const bt_tensor *x, int ndim, const int64_t *shape,
                          int64_t *out) {
    if (ndim < 0 || ndim > BT_MAX_DIMS) {
        bt_error("%s: %d dimensions requested, at most %d are supported", op, ndim, BT_MAX_DIMS);
        return false;
    }
    int infer = -1;
    int64_t known = 1;
    for (int d = 0; d < ndim; d++) {
        out[d] = shape[d];
        if (shape[d] == -1) {
            if (infer >= 0) {
                bt_error("%s: only one dimension can be -1", op);
                return false;
            }
            infer = d;
        } else if (shape[d] < 0) {
            bt_error("%s: invalid size %lld for dimension %d", op, (long long)shape[d], d);
            return false;
        } else {
            known *= shape[d];
        }
    }
    int64_t n = bt_numel(x);
    if (infer >= 0) {
        if (known == 0 || n % known != 0) goto mismatch;
        out[infer] = n / known;
    } else if (known != n) {
        goto mismatch;
    }
    return true;
mismatch:
    bt_error("%s: shape of %lld elements cannot be viewed as the requested shape (%lld "
             "elements known) from %s",
             op, (long long)n, (long long)known, SHAPE(x));
    return false;
}

static bt_tensor *reshape_impl(const char *op, bt_tensor *x, int ndim, const int64_t *shape,
                               bool allow_copy) {
    if (!OP_INPUTS(op, x)) return NULL;
    int64_t new_shape[BT_MAX_DIMS];
    if (!resolve_shape(op, x, ndim, shape, new_shape)) return NULL;
    bt_tensor *base = x;
    if (!bt_is_contiguous(x)) {
        if (!allow_copy) {
            bt_error("%s: input %s is not contiguous; use reshape or contiguous first", op,
                     SHAPE(x));
            return NULL;
        }
        base = op_contiguous_data(x);
        if (!base) return NULL;
    }
    int64_t strides[BT_MAX_DIMS];
    bt_contiguous_strides(ndim, new_shape, strides);
    bt_tensor *out = make_view(base, ndim, new_shape, strides, base->offset);
    if (!out) return NULL;
    ag_record(op, reshape_backward, out, 1, &x);
    return out;
}

bt_tensor *bt_reshape(bt_tensor *x, int ndim, const int64_t *shape) {
    return reshape_impl("reshape", x, ndim, shape, true);
}

bt_tensor *bt_view(bt_tensor *x, int ndim, const int64_t *shape) {
    return reshape_impl("view", x, ndim, shape, false);
}

bt_tensor *bt_squeeze(bt_tensor *x, int dim) {
    if (!OP_INPUTS("squeeze", x)) return NULL;
    int d = bt_wrap_dim(dim, x->ndim);
    if (d < 0 || x->shape[d] != 1) {
        bt_error("squeeze: dimension %d of %s is not of size 1", dim, SHAPE(x));
        return NULL;
    }
    int64_t shape[BT_MAX_DIMS], strides[BT_MAX_DIMS];
    int n = 0;
    for (int k = 0; k < x->ndim; k++)
        if (k != d) {
            shape[n] = x->shape[k];
            strides[n++] = x->stride[k];
        }
    bt_tensor *out = make_view(x, n, shape, strides, x->offset);
    if (out) ag_record("squeeze", reshape_backward, out, 1, &x);
    return out;
}

bt_tensor *bt_unsqueeze(bt_tensor *x, int dim) {
    if (!OP_INPUTS("unsqueeze", x)) return NULL;
    int d = bt_wrap_dim(dim, x->ndim + 1);
    if (d < 0 || x->ndim >= BT_MAX_DIMS) {
        bt_error("unsqueeze: dimension %d out of range for %s", dim, SHAPE(x));
        return NULL;
    }
    int64_t shape[BT_MAX_DIMS], strides[BT_MAX_DIMS];
    for (int k = 0, n = 0; k <= x->ndim; k++) {
        if (k == d) {
            shape[k] = 1;
            strides[k] = (d < x->ndim) ? x->stride[d] * x->shape[d] : 1;
        } else {
            shape[k] = x->shape[n];
            strides[k] = x->stride[n++];
        }
    }
    bt_tensor *out = make_view(x, x->ndim + 1, shape, strides, x->offset);
    if (out) ag_record("unsqueeze", reshape_backward, out, 1, &x);
    return out;
}

/* ---- permute / transpose: backward applies the inverse permutation ---- */

static bt_status permute_backward(struct ag_node *node) {
    bt_tensor *x = node->inputs[0], *g = node->out->grad;
    int inverse[BT_MAX_DIMS];
    for (int k = 0; k < x->ndim; k++)
        inverse[node->i[k]] = k;
    int64_t shape[BT_MAX_DIMS], strides[BT_MAX_DIMS];
    for (int k = 0; k < x->ndim; k++) {
        shape[k] = g->shape[inverse[k]];
        strides[k] = g->stride[inverse[k]];
    }
    bt_tensor *gv = make_view(g, x->ndim, shape, strides, g->offset);
    return ag_accumulate(x, gv ? op_contiguous_data(gv) : NULL);
}

bt_tensor *bt_permute(bt_tensor *x, const int *dims) {
    if (!OP_INPUTS("permute", x)) return NULL;
    bool seen[BT_MAX_DIMS] = {false};
    int64_t shape[BT_MAX_DIMS], strides[BT_MAX_DIMS];
    int wrapped[BT_MAX_DIMS];
    for (int k = 0; k < x->ndim; k++) {
        int d = bt_wrap_dim(dims[k], x->ndim);
        if (d < 0 || seen[d]) {
            bt_error("permute: dims are not a permutation of 0..%d for %s (entry %d is %d)",
                     x->ndim - 1, SHAPE(x), k, dims[k]);
            return NULL;
        }
        seen[d] = true;
        wrapped[k] = d;
        shape[k] = x->shape[d];
        strides[k] = x->stride[d];
    }
    bt_tensor *out = make_view(x, x->ndim, shape, strides, x->offset);
    if (!out) return NULL;
    struct ag_node *node = ag_record("permute", permute_backward, out, 1, &x);
    if (node)
        for (int k = 0; k < x->ndim; k++)
            node->i[k] = wrapped[k];
    return out;
}

bt_tensor *bt_transpose(bt_tensor *x, int dim0, int dim1) {
    if (!OP_INPUTS("transpose", x)) return NULL;
    int a = bt_wrap_dim(dim0, x->ndim), b = bt_wrap_dim(dim1, x->ndim);
    if (a < 0 || b < 0) {
        bt_error("transpose: dims %d and %d out of range for %s", dim0, dim1, SHAPE(x));
        return NULL;
    }
    int dims[BT_MAX_DIMS];
    for (int k = 0; k < x->ndim; k++)
        dims[k] = k;
    dims[a] = b;
    dims[b] = a;
    return bt_permute(x, dims);
}

/* ---- narrow: backward pads the gradient with zeros ---- */

static bt_status narrow_backward(struct ag_node *node) {
    bt_tensor *x = node->inputs[0], *g = node->out->grad;
    float beta;
    bt_tensor *gx = ag_grad_target(x, &beta);
    if (!gx) return BT_ERR;
    int d = (int)node->i[0];
    int64_t outer, dim, inner;
    op_split_dims(x, d, &outer, &dim, &inner);
    int64_t start = node->i[1], length = g->shape[d];
    float *dst = bt_f32(gx);
    const float *src = bt_f32(g);
    /* per outer row: the slice's gradient lands at [start, start + length); a fresh buffer
     * (beta 0) gets zeros around it, an accumulating one keeps what it has */
#pragma omp parallel for schedule(static) if (outer * dim * inner >= 65536)
    for (int64_t o = 0; o < outer; o++) {
        float *row = dst + o * dim * inner, *slice = row + start * inner;
        const float *from = src + o * length * inner;
        if (beta == 0.0f) {
            memset(row, 0, (size_t)(start * inner) * sizeof(float));
            memcpy(slice, from, (size_t)(length * inner) * sizeof(float));
            memset(slice + length * inner, 0,
                   (size_t)((dim - start - length) * inner) * sizeof(float));
        } else {
            for (int64_t j = 0; j < length * inner; j++)
                slice[j] += from[j];
        }
    }
    return BT_OK;
}

bt_tensor *bt_narrow(bt_tensor *x, int dim, int64_t start, int64_t length) {
    if (!OP_INPUTS("narrow", x)) return NULL;
    int d = bt_wrap_dim(dim, x->ndim);
    if (d < 0) {
        bt_error("narrow: dimension %d out of range for %s", dim, SHAPE(x));
        return NULL;
    }
    if (start < 0 || length < 0 || start + length > x->shape[d]) {
        bt_error("narrow: range [%lld, %lld) out of bounds for dimension %d of %s",
                 (long long)start, (long long)(start + length), d, SHAPE(x));
        return NULL;
    }
    int64_t shape[BT_MAX_DIMS];
    memcpy(shape, x->shape, sizeof(shape));
    shape[d] = length;
    bt_tensor *out = make_view(x, x->ndim, shape, x->stride, x->offset + start * x->stride[d]);
    if (!out) return NULL;
    struct ag_node *node = ag_record("narrow", narrow_backward, out, 1, &x);
    if (node) {
        node->i[0] = d;
        node->i[1] = start;
    }
    return out;
}

bt_status bt_split(bt_tensor *x, const int64_t *sizes, int n, int dim, bt_tensor **out) {
    if (!OP_INPUTS("split", x)) return BT_ERR;
    int d = bt_wrap_dim(dim, x->ndim);
    if (d < 0) return bt_error("split: dimension %d out of range for %s", dim, SHAPE(x));
    int64_t total = 0;
    for (int k = 0; k < n; k++)
        total += sizes[k];
    if (n <= 0 || total != x->shape[d])
        return bt_error("split: %d sizes summing to %lld do not match dimension %d of %s", n,
                        (long long)total, d, SHAPE(x));
    int64_t start = 0;
    for (int k = 0; k < n; k++) {
        out[k] = bt_narrow(x, d, start, sizes[k]);
        if (!out[k]) return BT_ERR;
        start += sizes[k];
    }
    return BT_OK;
}

/* ---- contiguous, dtype casts, detach ---- */

static bt_status passthrough_backward(struct ag_node *node) {
    return ag_accumulate(node->inputs[0], node->out->grad);
}

bt_tensor *bt_contiguous(bt_tensor *x) {
    if (!OP_INPUTS("contiguous", x)) return NULL;
    if (bt_is_contiguous(x)) return x;
    bt_tensor *out = op_contiguous_data(x);
    if (out) ag_record("contiguous", passthrough_backward, out, 1, &x);
    return out;
}

bt_tensor *bt_to_dtype(bt_tensor *x, bt_dtype dtype) {
    if (!OP_INPUTS("to_dtype", x)) return NULL;
    if (dtype >= BT_DTYPE_COUNT) {
        bt_error("to_dtype: invalid dtype %d", (int)dtype);
        return NULL;
    }
    bt_tensor *out = bt_empty(x->ndim, x->shape, dtype, x->storage->device);
    if (!out) return NULL;
    const struct bt_backend *be = op_backend("to_dtype", x);
    if (!be) return NULL;
    be->copy_strided(bt_data(out), dtype, bt_data(x), x->dtype, x->ndim, x->shape, x->stride);
    /* Gradients are float32 whatever the forward dtype; integer results end the graph. */
    if (!bt_dtype_is_integer(dtype)) ag_record("to_dtype", passthrough_backward, out, 1, &x);
    return out;
}

bt_tensor *bt_detach(bt_tensor *x) {
    if (!OP_INPUTS("detach", x)) return NULL;
    return make_view(x, x->ndim, x->shape, x->stride, x->offset);
}

/* ---- cat: backward hands each input its slice of the gradient ---- */

static bt_status cat_backward(struct ag_node *node) {
    bt_tensor *g = node->out->grad;
    int d = (int)node->i[0];
    int64_t start = 0;
    for (int k = 0; k < node->n_inputs; k++) {
        bt_tensor *x = node->inputs[k];
        int64_t len = x->shape[d];
        if (ag_wants_grad(x)) {
            int64_t shape[BT_MAX_DIMS];
            memcpy(shape, g->shape, sizeof(shape));
            shape[d] = len;
            bt_tensor *slice =
                make_view(g, g->ndim, shape, g->stride, g->offset + start * g->stride[d]);
            if (!slice || ag_accumulate(x, op_contiguous_data(slice)) != BT_OK) return BT_ERR;
        }
        start += len;
    }
    return BT_OK;
}

bt_tensor *bt_cat(bt_tensor *const *xs, int n, int dim) {
    if (n <= 0) {
        bt_error("cat: expected at least one tensor");
        return NULL;
    }
    if (!op_inputs_present("cat", n, xs)) return NULL;
    const bt_tensor *first = xs[0];
    int d = bt_wrap_dim(dim, first->ndim);
    if (d < 0) {
        bt_error("cat: dimension %d out of range for %s", dim, SHAPE(first));
        return NULL;
    }
    int64_t shape[BT_MAX_DIMS];
    memcpy(shape, first->shape, sizeof(shape));
    shape[d] = 0;
    for (int k = 0; k < n; k++) {
        const bt_tensor *x = xs[k];
        bool ok = x->ndim == first->ndim && x->dtype == first->dtype;
        for (int j = 0; ok && j < x->ndim; j++)
            ok = j == d || x->shape[j] == first->shape[j];
        if (!ok) {
            bt_error("cat: tensor %d %s %s does not match tensor 0 %s %s outside dimension %d", k,
                     SHAPE(x), bt_dtype_name(x->dtype), SHAPE(first), bt_dtype_name(first->dtype),
                     d);
            return NULL;
        }
        if (!op_check_same_device("cat", first, x)) return NULL;
        shape[d] += x->shape[d];
    }
    bt_tensor *out = bt_empty(first->ndim, shape, first->dtype, first->storage->device);
    const struct bt_backend *be = op_backend("cat", first);
    if (!out || !be) return NULL;
    int64_t start = 0;
    for (int k = 0; k < n; k++) {
        const bt_tensor *x = xs[k];
        /* copy x into out's slice: view the destination slice's strides via a transposed walk:
         * copy rows of (outer) blocks of x->shape[d]*inner contiguous elements */
        int64_t outer, dim_len, inner;
        op_split_dims(x, d, &outer, &dim_len, &inner);
        bt_tensor *src = op_contiguous_data((bt_tensor *)x);
        if (!src) return NULL;
        size_t es = bt_dtype_size(x->dtype);
        for (int64_t o = 0; o < outer; o++)
            memcpy((char *)bt_data(out) + ((o * shape[d] + start) * inner) * (int64_t)es,
                   (char *)bt_data(src) + (o * dim_len * inner) * (int64_t)es,
                   (size_t)(dim_len * inner) * es);
        start += dim_len;
    }
    struct ag_node *node = ag_record("cat", cat_backward, out, n, xs);
    if (node) node->i[0] = d;
    return out;
}
