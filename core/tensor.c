/* Tensor creation, properties and element access; persistent tensors are malloc'd and
 * reference-counted, step tensors come from the runtime's step arena. Views live in views.c. */
#include "core/tensor.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "core/dtype_convert.h"
#include "core/runtime.h"

/* ---- dtypes and devices ---- */

static const struct {
    const char *name;
    size_t size;
} dtype_info[BT_DTYPE_COUNT] = {
    [BT_F32] = {"float32", 4}, [BT_BF16] = {"bfloat16", 2}, [BT_F16] = {"float16", 2},
    [BT_I32] = {"int32", 4},   [BT_I64] = {"int64", 8},     [BT_U16] = {"uint16", 2},
    [BT_BOOL] = {"bool", 1},
};

size_t bt_dtype_size(bt_dtype dtype) {
    return dtype < BT_DTYPE_COUNT ? dtype_info[dtype].size : 0;
}

const char *bt_dtype_name(bt_dtype dtype) {
    return dtype < BT_DTYPE_COUNT ? dtype_info[dtype].name : "invalid-dtype";
}

bool bt_dtype_is_integer(bt_dtype dtype) {
    return dtype == BT_I32 || dtype == BT_I64 || dtype == BT_U16 || dtype == BT_BOOL;
}

bt_device bt_cpu(void) {
    return (bt_device){BT_DEVICE_CPU, 0};
}

bt_device bt_cuda(int index) {
    return (bt_device){BT_DEVICE_CUDA, index};
}

bool bt_device_equal(bt_device a, bt_device b) {
    return a.type == b.type && a.index == b.index;
}

const char *bt_device_name(bt_device device, char *buf, size_t size) {
    if (device.type == BT_DEVICE_CPU)
        snprintf(buf, size, "cpu");
    else
        snprintf(buf, size, "cuda:%d", device.index);
    return buf;
}

void bt_contiguous_strides(int ndim, const int64_t *shape, int64_t *strides) {
    int64_t s = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        strides[d] = s;
        s *= shape[d];
    }
}

int bt_wrap_dim(int dim, int ndim) {
    if (dim < 0) dim += ndim;
    return (dim >= 0 && dim < ndim) ? dim : -1;
}

/* ---- allocation ---- */

static bt_status check_shape(const char *what, int ndim, const int64_t *shape, bt_dtype dtype) {
    if (ndim < 0 || ndim > BT_MAX_DIMS)
        return bt_error("%s: %d dimensions, at most %d are supported", what, ndim, BT_MAX_DIMS);
    if (dtype >= BT_DTYPE_COUNT) return bt_error("%s: invalid dtype %d", what, (int)dtype);
    for (int d = 0; d < ndim; d++)
        if (shape[d] < 0)
            return bt_error("%s: dimension %d has negative size %lld", what, d,
                            (long long)shape[d]);
    return BT_OK;
}

static void init_header(bt_tensor *t, int ndim, const int64_t *shape, bt_dtype dtype) {
    memset(t, 0, sizeof(*t));
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++)
        t->shape[d] = shape[d];
    bt_contiguous_strides(ndim, shape, t->stride);
    t->dtype = dtype;
}

static int64_t shape_numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= shape[d];
    return n;
}

bt_tensor *bt_tensor_new(int ndim, const int64_t *shape, bt_dtype dtype, bt_device device) {
    if (check_shape("bt_tensor_new", ndim, shape, dtype) != BT_OK) return NULL;
    const struct bt_backend *be = bt_backend_for(device, "bt_tensor_new");
    if (!be) return NULL;
    size_t nbytes = (size_t)shape_numel(ndim, shape) * bt_dtype_size(dtype);
    bt_tensor *t = malloc(sizeof(*t));
    struct bt_storage *s = malloc(sizeof(*s));
    void *data = be->alloc(nbytes ? nbytes : 1);
    if (!t || !s || !data) {
        free(t);
        free(s);
        if (data) be->free(data);
        bt_error("bt_tensor_new: out of memory allocating %zu bytes", nbytes);
        return NULL;
    }
    init_header(t, ndim, shape, dtype);
    *s = (struct bt_storage){data, nbytes, device, 1, true, NULL, false};
    be->fill(data, dtype, shape_numel(ndim, shape), 0.0);
    t->storage = s;
    t->persistent = true;
    t->refcount = 1;
    return t;
}

bt_tensor *bt_tensor_retain(bt_tensor *t) {
    if (t && t->persistent) t->refcount++;
    return t;
}

void bt_tensor_free(bt_tensor *t) {
    if (!t || !t->persistent) return;
    if (--t->refcount > 0) return;
    if (t->grad) bt_tensor_free(t->grad);
    struct bt_storage *s = t->storage;
    if (s && s->persistent && --s->refcount == 0) {
        const struct bt_backend *be = bt_backend_for(s->device, "bt_tensor_free");
        if (be) be->free(s->data);
        free(s);
    }
    free(t);
}

bt_tensor *bt_tensor_alias(bt_tensor *base, int64_t offset, int ndim, const int64_t *shape) {
    if (!base || !base->persistent || !bt_is_contiguous(base)) {
        bt_error("bt_tensor_alias: the base must be a contiguous persistent tensor");
        return NULL;
    }
    if (check_shape("bt_tensor_alias", ndim, shape, base->dtype) != BT_OK) return NULL;
    int64_t n = shape_numel(ndim, shape);
    if (offset < 0 || offset + n > bt_numel(base)) {
        bt_error("bt_tensor_alias: elements [%lld, %lld) are outside the base's %lld",
                 (long long)offset, (long long)(offset + n), (long long)bt_numel(base));
        return NULL;
    }
    bt_tensor *t = malloc(sizeof(*t));
    if (!t) {
        bt_error("bt_tensor_alias: out of memory");
        return NULL;
    }
    init_header(t, ndim, shape, base->dtype);
    t->storage = base->storage;
    t->storage->refcount++;
    t->offset = base->offset + offset;
    t->persistent = true;
    t->refcount = 1;
    return t;
}

bt_tensor *bt_tensor_clone_persistent(const bt_tensor *t) {
    if (!t) return NULL;
    bt_tensor *c = bt_tensor_new(t->ndim, t->shape, t->dtype, t->storage->device);
    if (c && bt_copy_(c, t) != BT_OK) {
        bt_tensor_free(c);
        return NULL;
    }
    return c;
}

bt_tensor *bt_empty(int ndim, const int64_t *shape, bt_dtype dtype, bt_device device) {
    if (check_shape("bt_empty", ndim, shape, dtype) != BT_OK) return NULL;
    bool on_cpu = device.type == BT_DEVICE_CPU;
    if (!on_cpu && !bt_backend_for(device, "bt_empty")) return NULL;
    size_t nbytes = (size_t)shape_numel(ndim, shape) * bt_dtype_size(dtype);
    /* the header always on the host; the data in the frame's arena of the tensor's device */
    bt_tensor *t = bt_step_alloc(sizeof(*t) + sizeof(struct bt_storage), "bt_empty");
    struct bt_arena *arena = bt_runtime()->step_arena;
    void *data = !t     ? NULL
                 : on_cpu ? bt_step_alloc(nbytes, "bt_empty")
                          : bt_device_step_alloc(device, nbytes, &arena, "bt_empty");
    if (!data) return NULL;
    init_header(t, ndim, shape, dtype);
    struct bt_storage *s = (struct bt_storage *)(t + 1);
    *s = (struct bt_storage){data, nbytes, device, 0, false, arena, false};
    t->storage = s;
    return t;
}

bt_tensor *bt_full(int ndim, const int64_t *shape, double value, bt_dtype dtype, bt_device device) {
    bt_tensor *t = bt_empty(ndim, shape, dtype, device);
    if (t) bt_fill(t, value);
    return t;
}

bt_tensor *bt_zeros(int ndim, const int64_t *shape, bt_dtype dtype, bt_device device) {
    return bt_full(ndim, shape, 0.0, dtype, device);
}

bt_tensor *bt_ones(int ndim, const int64_t *shape, bt_dtype dtype, bt_device device) {
    return bt_full(ndim, shape, 1.0, dtype, device);
}

bt_tensor *bt_to_device(bt_tensor *x, bt_device device) {
    if (!x) return NULL;
    if (bt_device_equal(x->storage->device, device)) return x;
    const struct bt_backend *be = bt_backend_for(device, "to_device");
    if (!be) return NULL;
    bt_tensor *out = bt_empty(x->ndim, x->shape, x->dtype, device);
    return out && bt_copy_(out, x) == BT_OK ? out : NULL;
}

bt_tensor *bt_from_data(int ndim, const int64_t *shape, bt_dtype dtype, const void *data) {
    bt_tensor *t = bt_empty(ndim, shape, dtype, bt_cpu());
    if (t) memcpy(bt_data(t), data, bt_nbytes(t));
    return t;
}

bt_tensor *bt_scalar(double value) {
    return bt_full(0, NULL, value, BT_F32, bt_cpu());
}

bt_tensor *bt_empty_like(const bt_tensor *t) {
    return t ? bt_empty(t->ndim, t->shape, t->dtype, t->storage->device) : NULL;
}

bt_tensor *bt_zeros_like(const bt_tensor *t) {
    return t ? bt_zeros(t->ndim, t->shape, t->dtype, t->storage->device) : NULL;
}

/* ---- properties ---- */

int64_t bt_numel(const bt_tensor *t) {
    return shape_numel(t->ndim, t->shape);
}

size_t bt_nbytes(const bt_tensor *t) {
    return (size_t)bt_numel(t) * bt_dtype_size(t->dtype);
}

bool bt_is_contiguous(const bt_tensor *t) {
    int64_t expected = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] != 1 && t->stride[d] != expected) return false;
        expected *= t->shape[d];
    }
    return true;
}

bool bt_same_shape(const bt_tensor *a, const bt_tensor *b) {
    if (a->ndim != b->ndim) return false;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d]) return false;
    return true;
}

void *bt_data(const bt_tensor *t) {
    return (char *)t->storage->data + t->offset * (int64_t)bt_dtype_size(t->dtype);
}

const char *bt_shape_str(const bt_tensor *t, char *buf, size_t size) {
    size_t n = (size_t)snprintf(buf, size, "(");
    for (int d = 0; d < t->ndim && n < size; d++)
        n += (size_t)snprintf(buf + n, size - n, d ? ",%lld" : "%lld", (long long)t->shape[d]);
    if (n < size) snprintf(buf + n, size - n, ")");
    return buf;
}

static int64_t element_offset(const bt_tensor *t, int64_t i) {
    int64_t off = 0;
    for (int d = t->ndim - 1; d >= 0; d--) {
        off += (i % t->shape[d]) * t->stride[d];
        i /= t->shape[d];
    }
    return off;
}

/* One element of a tensor on any device: device elements travel through an 8-byte host copy */
double bt_get(const bt_tensor *t, int64_t i) {
    size_t size = bt_dtype_size(t->dtype);
    const char *p = (const char *)bt_data(t) + element_offset(t, i) * (int64_t)size;
    if (t->storage->device.type == BT_DEVICE_CPU) return bt_load_as_double(p, t->dtype);
    char host[8];
    const struct bt_backend *be = bt_backend_for(t->storage->device, "bt_get");
    if (!be) return NAN;
    be->to_host(host, p, size);
    return bt_load_as_double(host, t->dtype);
}

void bt_set(bt_tensor *t, int64_t i, double value) {
    size_t size = bt_dtype_size(t->dtype);
    char *p = (char *)bt_data(t) + element_offset(t, i) * (int64_t)size;
    if (t->storage->device.type == BT_DEVICE_CPU) {
        bt_store_from_double(p, t->dtype, value);
        return;
    }
    char host[8];
    const struct bt_backend *be = bt_backend_for(t->storage->device, "bt_set");
    if (!be) return;
    bt_store_from_double(host, t->dtype, value);
    be->from_host(p, host, size);
}

double bt_item(const bt_tensor *t) {
    return bt_get(t, 0);
}

void bt_fill(bt_tensor *t, double value) {
    if (bt_is_contiguous(t)) {
        const struct bt_backend *be = bt_backend_for(t->storage->device, "bt_fill");
        if (be) be->fill(bt_data(t), t->dtype, bt_numel(t), value);
        return;
    }
    for (int64_t i = 0, n = bt_numel(t); i < n; i++) /* a strided view (on a device: slow) */
        bt_set(t, i, value);
}

/* Between the cpu and a device: the source made contiguous in dst's dtype on its own side, one
 * transfer, then (if dst is a strided view) a copy into place on dst's side */
static bt_status copy_across(bt_tensor *dst, const bt_tensor *src) {
    bool to_device = dst->storage->device.type != BT_DEVICE_CPU;
    const struct bt_backend *be =
        bt_backend_for(to_device ? dst->storage->device : src->storage->device, "copy_");
    if (!be) return BT_ERR;
    const struct bt_backend *src_be = to_device ? &bt_cpu_backend : be;
    /* the source as it is when it is already contiguous in dst's dtype (a checkpoint's
     * parameters and states): no staging copy on its side */
    bool as_is = bt_is_contiguous(src) && src->dtype == dst->dtype;
    bt_tensor *staged = as_is ? (bt_tensor *)src
                              : bt_empty(src->ndim, src->shape, dst->dtype, src->storage->device);
    bt_tensor *landed = bt_is_contiguous(dst) ? dst : bt_empty_like(dst);
    if (!staged || !landed) return BT_ERR;
    if (!as_is)
        src_be->copy_strided(bt_data(staged), dst->dtype, bt_data(src), src->dtype, src->ndim,
                             src->shape, src->stride);
    if (to_device)
        be->from_host(bt_data(landed), bt_data(staged), bt_nbytes(staged));
    else
        be->to_host(bt_data(landed), bt_data(staged), bt_nbytes(staged));
    return landed == dst ? BT_OK : bt_copy_(dst, landed);
}

bt_status bt_copy_(bt_tensor *dst, const bt_tensor *src) {
    char a[64], b[64];
    if (!dst || !src) return bt_has_error() ? BT_ERR : bt_error("copy_: argument is NULL");
    if (!bt_same_shape(dst, src))
        return bt_error("copy_: destination %s and source %s shapes differ",
                        bt_shape_str(dst, a, sizeof a), bt_shape_str(src, b, sizeof b));
    bt_device dd = dst->storage->device, sd = src->storage->device;
    if (!bt_device_equal(dd, sd)) {
        if (dd.type != BT_DEVICE_CPU && sd.type != BT_DEVICE_CPU)
            return bt_error("copy_: destination on %s, source on %s: copies between two devices "
                            "go through the cpu",
                            bt_device_name(dd, a, sizeof a), bt_device_name(sd, b, sizeof b));
        return copy_across(dst, src);
    }
    const struct bt_backend *be = bt_backend_for(src->storage->device, "copy_");
    if (!be) return BT_ERR;
    if (bt_is_contiguous(dst)) {
        be->copy_strided(bt_data(dst), dst->dtype, bt_data(src), src->dtype, src->ndim, src->shape,
                         src->stride);
        return BT_OK;
    }
    /* into a strided view: element by element (on a device each is a transfer; braid's own
     * callers write contiguous tensors) */
    for (int64_t i = 0, n = bt_numel(src); i < n; i++)
        bt_set(dst, i, bt_get(src, i));
    return BT_OK;
}

/* ---- random numbers: a counter-based generator (splitmix64 of seed and counter), so any value is
 * a pure function of (seed, position): reproducible, parallel, and cheap to checkpoint. ---- */

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

float bt_rng_uniform_at(uint64_t seed, uint64_t counter) {
    uint64_t bits = mix64(mix64(seed + 0x9e3779b97f4a7c15ULL) ^ (counter * 0x9e3779b97f4a7c15ULL));
    return (float)(bits >> 40) * (1.0f / 16777216.0f); /* 24 random bits: exact in float */
}

struct bt_rng bt_rng_make(uint64_t seed) {
    return (struct bt_rng){seed, 0};
}

/* A device tensor is filled on the host and copied over (initialisation, not the step loop) */
static bt_tensor *host_twin(bt_tensor *t) {
    return t->storage->device.type == BT_DEVICE_CPU ? t
                                                    : bt_empty(t->ndim, t->shape, t->dtype, bt_cpu());
}

void bt_fill_uniform(bt_tensor *t, struct bt_rng *rng, float low, float high) {
    bt_tensor *device = t;
    if (!(t = host_twin(t))) return;
    int64_t n = bt_numel(t);
    for (int64_t i = 0; i < n; i++)
        bt_set(t, i, low + (high - low) * bt_rng_uniform_at(rng->seed, rng->offset + (uint64_t)i));
    rng->offset += (uint64_t)n;
    if (t != device) bt_copy_(device, t);
}

void bt_fill_normal(bt_tensor *t, struct bt_rng *rng, float mean, float std) {
    /* Box-Muller on two uniforms per value */
    bt_tensor *device = t;
    if (!(t = host_twin(t))) return;
    int64_t n = bt_numel(t);
    for (int64_t i = 0; i < n; i++) {
        uint64_t c = rng->offset + 2 * (uint64_t)i;
        double u1 = 1.0 - bt_rng_uniform_at(rng->seed, c); /* (0, 1] */
        double u2 = bt_rng_uniform_at(rng->seed, c + 1);
        double z = sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
        bt_set(t, i, mean + std * z);
    }
    rng->offset += 2 * (uint64_t)n;
    if (t != device) bt_copy_(device, t);
}

bt_tensor *bt_randn(int ndim, const int64_t *shape, struct bt_rng *rng) {
    bt_tensor *t = bt_empty(ndim, shape, BT_F32, bt_cpu());
    if (t) bt_fill_normal(t, rng, 0.0f, 1.0f);
    return t;
}

bt_tensor *bt_rand(int ndim, const int64_t *shape, struct bt_rng *rng) {
    bt_tensor *t = bt_empty(ndim, shape, BT_F32, bt_cpu());
    if (t) bt_fill_uniform(t, rng, 0.0f, 1.0f);
    return t;
}
