/* CPU elementwise kernels: broadcasting binary ops, unary math/activations and their derivatives,
 * masked fill. OpenMP over elements; the per-element math is in the inline functions below. */
#include <math.h>

#include "core/cpu/fastmath.h"
#include "core/cpu/kernels.h"
#include "core/cpu/vecmath.h"

#define PARALLEL_MIN 16384 /* below this many elements threads cost more than they save */

static inline float binary_apply(bt_binary_op op, float a, float b) {
    switch (op) {
    case BT_BIN_ADD:
        return a + b;
    case BT_BIN_SUB:
        return a - b;
    case BT_BIN_MUL:
        return a * b;
    case BT_BIN_DIV:
        return a / b;
    }
    return 0.0f;
}

void bt_cpu_binary(bt_binary_op op, float *out, const float *a, const int64_t *a_strides,
                   const float *b, const int64_t *b_strides, int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= shape[d];
    if (n == 0) return;
    /* rows = everything but the last dim; each row is a flat loop with fixed strides */
    int64_t inner = ndim ? shape[ndim - 1] : 1;
    int64_t as = ndim ? a_strides[ndim - 1] : 0, bs = ndim ? b_strides[ndim - 1] : 0;
    int64_t rows = n / inner;
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
    for (int64_t r = 0; r < rows; r++) {
        int64_t rem = r, ao = 0, bo = 0;
        for (int d = ndim - 2; d >= 0; d--) {
            int64_t idx = rem % shape[d];
            rem /= shape[d];
            ao += idx * a_strides[d];
            bo += idx * b_strides[d];
        }
        float *o = out + r * inner;
        const float *pa = a + ao, *pb = b + bo;
        if (as == 1 && bs == 1) {
            switch (op) {
            case BT_BIN_ADD:
                for (int64_t j = 0; j < inner; j++)
                    o[j] = pa[j] + pb[j];
                break;
            case BT_BIN_SUB:
                for (int64_t j = 0; j < inner; j++)
                    o[j] = pa[j] - pb[j];
                break;
            case BT_BIN_MUL:
                for (int64_t j = 0; j < inner; j++)
                    o[j] = pa[j] * pb[j];
                break;
            case BT_BIN_DIV:
                for (int64_t j = 0; j < inner; j++)
                    o[j] = pa[j] / pb[j];
                break;
            }
        } else {
            for (int64_t j = 0; j < inner; j++)
                o[j] = binary_apply(op, pa[j * as], pb[j * bs]);
        }
    }
}

/* GELU: tanh approximation 0.5x(1+tanh(sqrt(2/pi)(x+0.044715x^3))) and exact 0.5x(1+erf(x/sqrt2))
 */
#define GELU_K 0.7978845608028654f /* sqrt(2/pi) */
#define INV_SQRT2 0.7071067811865476f
#define INV_SQRT_2PI 0.3989422804014327f

static inline float unary_apply(bt_unary_op op, float x, float arg) {
    switch (op) {
    case BT_UN_NEG:
        return -x;
    case BT_UN_EXP:
        return expf(x);
    case BT_UN_LOG:
        return logf(x);
    case BT_UN_TANH:
        return tanhf(x);
    case BT_UN_SQRT:
        return sqrtf(x);
    case BT_UN_RSQRT:
        return 1.0f / sqrtf(x);
    case BT_UN_POW:
        return powf(x, arg);
    case BT_UN_ADD_SCALAR:
        return x + arg;
    case BT_UN_MUL_SCALAR:
        return x * arg;
    case BT_UN_RELU:
        return x > 0.0f ? x : 0.0f;
    case BT_UN_GELU_TANH:
        return 0.5f * x * (1.0f + bt_fast_tanhf(GELU_K * (x + 0.044715f * x * x * x)));
    case BT_UN_GELU_EXACT:
        return 0.5f * x * (1.0f + erff(x * INV_SQRT2));
    case BT_UN_SILU:
        return x / (1.0f + bt_fast_expf(-x));
    case BT_UN_COUNT:
        break;
    }
    return 0.0f;
}

/* d f(x) / dx, given x and y = f(x) */
static inline float unary_derivative(bt_unary_op op, float x, float y, float arg) {
    switch (op) {
    case BT_UN_NEG:
        return -1.0f;
    case BT_UN_EXP:
        return y;
    case BT_UN_LOG:
        return 1.0f / x;
    case BT_UN_TANH:
        return 1.0f - y * y;
    case BT_UN_SQRT:
        return 0.5f / y;
    case BT_UN_RSQRT:
        return -0.5f * y * y * y;
    case BT_UN_POW:
        return arg * powf(x, arg - 1.0f);
    case BT_UN_ADD_SCALAR:
        return 1.0f;
    case BT_UN_MUL_SCALAR:
        return arg;
    case BT_UN_RELU:
        return x > 0.0f ? 1.0f : 0.0f;
    case BT_UN_GELU_TANH: {
        float u = GELU_K * (x + 0.044715f * x * x * x);
        float t = bt_fast_tanhf(u);
        float du = GELU_K * (1.0f + 3.0f * 0.044715f * x * x);
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
    }
    case BT_UN_GELU_EXACT:
        return 0.5f * (1.0f + erff(x * INV_SQRT2)) + x * INV_SQRT_2PI * expf(-0.5f * x * x);
    case BT_UN_SILU: {
        float s = 1.0f / (1.0f + bt_fast_expf(-x));
        return s * (1.0f + x * (1.0f - s));
    }
    case BT_UN_COUNT:
        break;
    }
    return 0.0f;
}

/* The op is loop-invariant: each case gets a loop of its own, so the hot activations (GELU,
 * SiLU) compile to vectorised loops instead of a switch per element. */
#define UNARY_LOOP(expr)                                                                           \
    do {                                                                                           \
        _Pragma(                                                                                   \
            "omp parallel for simd schedule(static) if (n >= PARALLEL_MIN)") for (int64_t i = 0;   \
                                                                                  i < n; i++) {    \
            float v = x[i];                                                                        \
            out[i] = (expr);                                                                       \
        }                                                                                          \
    } while (0)

/* The activations' hot loops, BT_VL (8) lanes at a time (core/cpu/vecmath.h), on spans of SPAN
 * elements that the OpenMP loop hands out. A last partial vector goes through a zero-padded copy,
 * so every element takes the same arithmetic. */
#define SPAN 4096

/* f(x) and f'(x) of each activation from one exp; the kernels that want only one of the two take
 * it from these (the compiler drops the other), so all paths share one arithmetic */
BT_VEC_INLINE void gelu_tanh_both_v(bt_vf x, bt_vf *y, bt_vf *d) {
    bt_vf t = bt_vf_tanh(GELU_K * (x + 0.044715f * x * x * x));
    bt_vf du = GELU_K * (1.0f + 3.0f * 0.044715f * x * x);
    *y = 0.5f * x * (1.0f + t);
    *d = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
}

BT_VEC_INLINE void silu_both_v(bt_vf x, bt_vf *y, bt_vf *d) {
    bt_vf e = bt_vf_exp(-x);
    *y = x / (1.0f + e);
    bt_vf s = 1.0f / (1.0f + e);
    *d = s * (1.0f + x * (1.0f - s));
}

BT_VEC_INLINE bt_vf gelu_tanh_v(bt_vf x) {
    bt_vf y, d;
    gelu_tanh_both_v(x, &y, &d);
    return y;
}

BT_VEC_INLINE bt_vf gelu_tanh_grad_v(bt_vf x) {
    bt_vf y, d;
    gelu_tanh_both_v(x, &y, &d);
    return d;
}

BT_VEC_INLINE bt_vf silu_v(bt_vf x) {
    bt_vf y, d;
    silu_both_v(x, &y, &d);
    return y;
}

BT_VEC_INLINE bt_vf silu_grad_v(bt_vf x) {
    bt_vf y, d;
    silu_both_v(x, &y, &d);
    return d;
}

/* out = f(x) over n elements; f one of the activations above */
#define ACTIVATION_SPAN(name, f)                                                                   \
    BT_CPU_DISPATCH static void name(float *out, const float *x, int64_t n) {                      \
        int64_t i = 0;                                                                             \
        for (; i + BT_VL <= n; i += BT_VL)                                                         \
            bt_vf_store(out + i, f(bt_vf_load(x + i)));                                            \
        if (i < n) {                                                                               \
            float buf[BT_VL] = {0};                                                                \
            memcpy(buf, x + i, (size_t)(n - i) * sizeof(float));                                   \
            bt_vf_store(buf, f(bt_vf_load(buf)));                                                  \
            memcpy(out + i, buf, (size_t)(n - i) * sizeof(float));                                 \
        }                                                                                          \
    }

/* dx = dout * f'(x) (+ dx when accumulate) over n elements */
#define ACTIVATION_GRAD_SPAN(name, fprime)                                                         \
    BT_CPU_DISPATCH static void name(float *dx, const float *dout, const float *x, int64_t n,      \
                                     bool accumulate) {                                            \
        int64_t i = 0;                                                                             \
        for (; i < n; i += BT_VL) {                                                                \
            int64_t m = n - i < BT_VL ? n - i : BT_VL;                                             \
            float bx[BT_VL] = {0}, bg[BT_VL] = {0}, bd[BT_VL] = {0};                               \
            const float *px = x + i, *pg = dout + i;                                               \
            float *pd = dx + i;                                                                    \
            if (m < BT_VL) { /* the last, partial vector: through padded copies */                 \
                memcpy(bx, px, (size_t)m * sizeof(float));                                         \
                memcpy(bg, pg, (size_t)m * sizeof(float));                                         \
                if (accumulate) memcpy(bd, pd, (size_t)m * sizeof(float));                         \
                px = bx, pg = bg, pd = bd;                                                         \
            }                                                                                      \
            bt_vf d = bt_vf_load(pg) * fprime(bt_vf_load(px));                                     \
            bt_vf_store(pd, accumulate ? bt_vf_load(pd) + d : d);                                  \
            if (m < BT_VL) memcpy(dx + i, bd, (size_t)m * sizeof(float));                          \
        }                                                                                          \
    }

/* out = f(x) and dydx = f'(x) over n elements, sharing f's exp */
#define ACTIVATION_WITH_GRAD_SPAN(name, both)                                                      \
    BT_CPU_DISPATCH static void name(float *out, float *dydx, const float *x, int64_t n) {         \
        int64_t i = 0;                                                                             \
        bt_vf y, d;                                                                                \
        for (; i + BT_VL <= n; i += BT_VL) {                                                       \
            both(bt_vf_load(x + i), &y, &d);                                                       \
            bt_vf_store(out + i, y);                                                               \
            bt_vf_store(dydx + i, d);                                                              \
        }                                                                                          \
        if (i < n) {                                                                               \
            float bx[BT_VL] = {0}, by[BT_VL], bd[BT_VL];                                           \
            memcpy(bx, x + i, (size_t)(n - i) * sizeof(float));                                    \
            both(bt_vf_load(bx), &y, &d);                                                          \
            bt_vf_store(by, y);                                                                    \
            bt_vf_store(bd, d);                                                                    \
            memcpy(out + i, by, (size_t)(n - i) * sizeof(float));                                  \
            memcpy(dydx + i, bd, (size_t)(n - i) * sizeof(float));                                 \
        }                                                                                          \
    }

ACTIVATION_SPAN(gelu_tanh_span, gelu_tanh_v)
ACTIVATION_SPAN(silu_span, silu_v)
ACTIVATION_GRAD_SPAN(gelu_tanh_grad_span, gelu_tanh_grad_v)
ACTIVATION_GRAD_SPAN(silu_grad_span, silu_grad_v)
ACTIVATION_WITH_GRAD_SPAN(gelu_tanh_both_span, gelu_tanh_both_v)
ACTIVATION_WITH_GRAD_SPAN(silu_both_span, silu_both_v)

static void activation(void (*span)(float *, const float *, int64_t), float *out, const float *x,
                       int64_t n) {
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
    for (int64_t i = 0; i < n; i += SPAN)
        span(out + i, x + i, n - i < SPAN ? n - i : SPAN);
}

static void activation_grad(void (*span)(float *, const float *, const float *, int64_t, bool),
                            float *dx, const float *dout, const float *x, int64_t n,
                            bool accumulate) {
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
    for (int64_t i = 0; i < n; i += SPAN)
        span(dx + i, dout + i, x + i, n - i < SPAN ? n - i : SPAN, accumulate);
}

void bt_cpu_unary(bt_unary_op op, float *out, const float *x, int64_t n, float arg) {
    switch (op) {
    case BT_UN_GELU_TANH:
        activation(gelu_tanh_span, out, x, n);
        break;
    case BT_UN_SILU:
        activation(silu_span, out, x, n);
        break;
    case BT_UN_MUL_SCALAR:
        UNARY_LOOP(v * arg);
        break;
    case BT_UN_ADD_SCALAR:
        UNARY_LOOP(v + arg);
        break;
    default:
        UNARY_LOOP(unary_apply(op, v, arg));
        break;
    }
}

void bt_cpu_gelu_tanh_in_place(float *x, float *dydx, int64_t n) {
    if (dydx)
        gelu_tanh_both_span(x, dydx, x, n);
    else
        gelu_tanh_span(x, x, n);
}

bool bt_cpu_unary_with_grad(bt_unary_op op, float *out, float *dydx, const float *x, int64_t n) {
    void (*span)(float *, float *, const float *, int64_t);
    if (op == BT_UN_GELU_TANH)
        span = gelu_tanh_both_span;
    else if (op == BT_UN_SILU)
        span = silu_both_span;
    else
        return false;
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
    for (int64_t i = 0; i < n; i += SPAN)
        span(out + i, dydx + i, x + i, n - i < SPAN ? n - i : SPAN);
    return true;
}

void bt_cpu_mul_grad(float *dx, const float *dout, const float *dydx, int64_t n, float beta) {
    if (beta == 0.0f) {
#pragma omp parallel for simd schedule(static) if (n >= PARALLEL_MIN)
        for (int64_t i = 0; i < n; i++)
            dx[i] = dout[i] * dydx[i];
    } else {
#pragma omp parallel for simd schedule(static) if (n >= PARALLEL_MIN)
        for (int64_t i = 0; i < n; i++)
            dx[i] += dout[i] * dydx[i];
    }
}

#define UNARY_BACKWARD_LOOP(op_const)                                                              \
    do {                                                                                           \
        _Pragma(                                                                                   \
            "omp parallel for simd schedule(static) if (n >= PARALLEL_MIN)") for (int64_t i = 0;   \
                                                                                  i < n; i++) {    \
            float d = dout[i] * unary_derivative(op_const, x[i], out[i], arg);                     \
            dx[i] = beta == 0.0f ? d : dx[i] + d;                                                  \
        }                                                                                          \
    } while (0)

void bt_cpu_unary_backward(bt_unary_op op, float *dx, const float *dout, const float *x,
                           const float *out, int64_t n, float arg, float beta) {
    switch (op) {
    case BT_UN_GELU_TANH:
        activation_grad(gelu_tanh_grad_span, dx, dout, x, n, beta != 0.0f);
        break;
    case BT_UN_SILU:
        activation_grad(silu_grad_span, dx, dout, x, n, beta != 0.0f);
        break;
    default:
        UNARY_BACKWARD_LOOP(op);
        break;
    }
}

void bt_cpu_masked_fill(float *out, const float *x, const uint8_t *mask,
                        const int64_t *mask_strides, int ndim, const int64_t *shape, float value) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= shape[d];
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++) {
        int64_t rem = i, mo = 0;
        for (int d = ndim - 1; d >= 0; d--) {
            mo += (rem % shape[d]) * mask_strides[d];
            rem /= shape[d];
        }
        out[i] = mask[mo] ? value : x[i];
    }
}
