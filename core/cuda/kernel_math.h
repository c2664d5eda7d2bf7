/* The per-element math of the CUDA kernels, as inline functions that compile for the device and
 * for the host (BT_HD = __host__ __device__ under nvcc). The CUDA wrappers (the .cu files here)
 * only index, launch and reduce; the host tests (tests/test_cuda_math.cu, built by nvcc) call
 * these same functions and compare them with the CPU backend, so the math is checked on
 * machines without a GPU. Plain C11 as well: no C++ features. */
#ifndef BRAID_CORE_CUDA_KERNEL_MATH_H
#define BRAID_CORE_CUDA_KERNEL_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "core/backend.h"
#include "core/dtype_convert.h" /* defines BT_HD */

#define BT_KM_GELU_K 0.7978845608028654f /* sqrt(2/pi) */
#define BT_KM_INV_SQRT2 0.7071067811865476f
#define BT_KM_INV_SQRT_2PI 0.3989422804014327f

/* ---- dtypes: core/dtype_convert.h's conversions (BT_HD there too), and bit casts ---- */

BT_HD uint32_t bt_km_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

BT_HD float bt_km_float(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- indexing: shapes and strides passed by value to kernels ---- */

struct bt_km_shape {
    int ndim;
    int64_t shape[BT_MAX_DIMS];
};
struct bt_km_strides {
    int64_t s[BT_MAX_DIMS];
};

/* element offset of the i-th element in row-major order of `shape`, read through `strides` */
BT_HD int64_t bt_km_offset(int64_t i, const struct bt_km_shape *shape,
                           const struct bt_km_strides *strides) {
    int64_t off = 0;
    for (int d = shape->ndim - 1; d >= 0; d--) {
        int64_t n = shape->shape[d];
        off += (i % n) * strides->s[d];
        i /= n;
    }
    return off;
}

/* ---- the sum over broadcast dims (sum_to): one output element's sum ----
 * src (shape, contiguous) element (i_0..i_n-1) adds into out[sum_k i_k map[k]]. kept: the dims
 * with map != 0 (their output stride in map, source stride in src); summed: the broadcast dims of
 * size > 1, walked in row-major order for each output element */
struct bt_km_sum_to_plan {
    int n_kept, n_summed;
    int64_t kept_map[BT_MAX_DIMS], kept_src[BT_MAX_DIMS], kept_size[BT_MAX_DIMS];
    int64_t summed_size[BT_MAX_DIMS], summed_src[BT_MAX_DIMS];
    int64_t summed_total, src_numel;
};

BT_HD struct bt_km_sum_to_plan bt_km_sum_to_make_plan(int ndim, const int64_t *shape,
                                                      const int64_t *map) {
    struct bt_km_sum_to_plan plan;
    memset(&plan, 0, sizeof plan);
    int64_t src_stride[BT_MAX_DIMS], s = 1;
    for (int k = ndim - 1; k >= 0; k--) {
        src_stride[k] = s;
        s *= shape[k];
    }
    plan.src_numel = s;
    plan.summed_total = 1;
    for (int k = 0; k < ndim; k++) {
        if (map[k] != 0) {
            plan.kept_map[plan.n_kept] = map[k];
            plan.kept_src[plan.n_kept] = src_stride[k];
            plan.kept_size[plan.n_kept++] = shape[k];
        } else if (shape[k] > 1) {
            plan.summed_src[plan.n_summed] = src_stride[k];
            plan.summed_size[plan.n_summed++] = shape[k];
            plan.summed_total *= shape[k];
        }
    }
    return plan;
}

/* the sum (in float, in row-major order of the summed dims) of the src elements of output o */
BT_HD float bt_km_sum_to_element(const struct bt_km_sum_to_plan *plan, int64_t o,
                                 const float *src) {
    int64_t base = 0;
    for (int k = 0; k < plan->n_kept; k++)
        base += (o / plan->kept_map[k]) % plan->kept_size[k] * plan->kept_src[k];
    float acc = 0.0f;
    for (int64_t r = 0; r < plan->summed_total; r++) {
        int64_t off = base, rem = r;
        for (int k = plan->n_summed - 1; k >= 0; k--) {
            off += rem % plan->summed_size[k] * plan->summed_src[k];
            rem /= plan->summed_size[k];
        }
        acc += src[off];
    }
    return acc;
}

/* ---- elementwise ---- */

BT_HD float bt_km_binary(bt_binary_op op, float a, float b) {
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

BT_HD float bt_km_sigmoid(float x) {
    return 1.0f / (1.0f + expf(-x));
}

BT_HD float bt_km_unary(bt_unary_op op, float x, float arg) {
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
        return 0.5f * x * (1.0f + tanhf(BT_KM_GELU_K * (x + 0.044715f * x * x * x)));
    case BT_UN_GELU_EXACT:
        return 0.5f * x * (1.0f + erff(x * BT_KM_INV_SQRT2));
    case BT_UN_SILU:
        return x * bt_km_sigmoid(x);
    case BT_UN_COUNT:
        break;
    }
    return 0.0f;
}

/* d f(x) / dx, given x and y = f(x) */
BT_HD float bt_km_unary_derivative(bt_unary_op op, float x, float y, float arg) {
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
        float u = BT_KM_GELU_K * (x + 0.044715f * x * x * x);
        float t = tanhf(u);
        float du = BT_KM_GELU_K * (1.0f + 3.0f * 0.044715f * x * x);
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
    }
    case BT_UN_GELU_EXACT:
        return 0.5f * (1.0f + erff(x * BT_KM_INV_SQRT2)) +
               x * BT_KM_INV_SQRT_2PI * expf(-0.5f * x * x);
    case BT_UN_SILU: {
        float s = bt_km_sigmoid(x);
        return s * (1.0f + x * (1.0f - s));
    }
    case BT_UN_COUNT:
        break;
    }
    return 0.0f;
}

/* ---- dropout's counter-based uniform: the CPU's bt_rng_uniform_at, bit for bit ---- */

BT_HD uint64_t bt_km_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

BT_HD float bt_km_uniform_at(uint64_t seed, uint64_t counter) {
    uint64_t bits =
        bt_km_mix64(bt_km_mix64(seed + 0x9e3779b97f4a7c15ULL) ^ (counter * 0x9e3779b97f4a7c15ULL));
    return (float)(bits >> 40) * (1.0f / 16777216.0f);
}

BT_HD float bt_km_dropout(float x, float p, float scale, uint64_t seed, uint64_t counter) {
    return bt_km_uniform_at(seed, counter) >= p ? x * scale : 0.0f;
}

/* ---- RoPE: the angle of frequency i at position pos (HF's inv_freq), and one rotation ---- */

BT_HD void bt_km_rope_angle(double theta, int64_t i, int64_t hs, int64_t pos, bool inverse,
                            float *c, float *s) {
    double inv_freq = pow(theta, -2.0 * (double)i / (double)hs);
    double angle = (double)pos * inv_freq;
    *c = (float)cos(angle);
    *s = (float)((inverse ? -1.0 : 1.0) * sin(angle));
}

/* ---- online softmax (attention): merge score s into running (max m, sum l); returns the factor
 * the accumulated output is rescaled by, and *p the weight of s's value row ---- */

BT_HD float bt_km_online_softmax(float *m, float *l, float s, float *p) {
    float m_new = s > *m ? s : *m;
    float corr = *m == -INFINITY ? 0.0f : expf(*m - m_new);
    *p = expf(s - m_new);
    *l = *l * corr + *p;
    *m = m_new;
    return corr;
}

/* ---- the tiled attention kernels' ranges (attention_tiled.cu): a block of br query rows from q0
 * walks key tiles [k0, k0 + br) below its end; row t uses the first n keys of a tile; a block of
 * key rows from k0 walks query tiles from its start, and key row j uses rows from `first` on ---- */

/* keys the query block starting at q0 may see: [0, end) */
BT_HD int64_t bt_km_block_key_end(int64_t q0, int64_t br, int64_t T, bool causal) {
    return causal ? (q0 + br < T ? q0 + br : T) : T;
}

/* keys of the tile at k0 that query row t sees (<= 0: none) */
BT_HD int64_t bt_km_tile_keys(int64_t t, int64_t k0, int64_t br, int64_t T, bool causal) {
    int64_t n = T - k0 < br ? T - k0 : br;
    if (causal && t - k0 + 1 < n) n = t - k0 + 1; /* keys <= t */
    return n;
}

/* the first query tile the key block starting at k0 reads (causal: none before it sees a key) */
BT_HD int64_t bt_km_block_query_start(int64_t k0, bool causal) {
    return causal ? k0 : 0;
}

/* the first row of the query tile at i0 that key row j contributes to (causal: rows >= j) */
BT_HD int64_t bt_km_tile_first_query(int64_t j, int64_t i0, bool causal) {
    return causal && j > i0 ? j - i0 : 0;
}

/* ---- attention as batched GEMMs (attention_gemm.h): the heads of whole batch entries
 * b0 .. b0 + nb are packed into contiguous (nb·NH, T, hs) buffers, one per operand, and their
 * scores into (nb·NH, T, T) ones whose row r is query t = r % T of packed head r / T ---- */

/* the offset in an operand laid out as l of element i of its packed buffer; `group` query heads
 * read one head of the operand (1 for q, out, dout; NH / NKV for k and v) */
BT_HD int64_t bt_km_attn_packed_src(int64_t i, struct bt_attn_layout l, int64_t b0, int64_t NH,
                                    int64_t group, int64_t T, int64_t hs) {
    int64_t c = i % hs, t = (i / hs) % T, g = i / (hs * T);
    return (b0 + g / NH) * l.batch + (g % NH) / group * l.head + t * l.time + c;
}

/* element i of a packed (nb, NKV, T, hs) key or value gradient: the sum, in head order, of the
 * packed (nb·NH, T, hs) gradients of the group of query heads that read that kv head; *dst gets
 * its offset in an operand laid out as l */
BT_HD float bt_km_attn_kv_sum(const float *packed, int64_t i, struct bt_attn_layout l, int64_t b0,
                              int64_t NH, int64_t NKV, int64_t T, int64_t hs, int64_t *dst) {
    int64_t c = i % hs, t = (i / hs) % T, kvh = (i / (hs * T)) % NKV, bl = i / (hs * T * NKV);
    int64_t group = NH / NKV;
    float sum = 0.0f;
    for (int64_t h = kvh * group; h < (kvh + 1) * group; h++)
        sum += packed[((bl * NH + h) * T + t) * hs + c];
    *dst = (b0 + bl) * l.batch + kvh * l.head + t * l.time + c;
    return sum;
}

/* bt_km_attn_kv_sum over packed bf16 gradients (cuDNN's attention writes bf16): the same sum, in
 * float32, of the bf16 values */
BT_HD float bt_km_attn_kv_sum_bf16(const uint16_t *packed, int64_t i, struct bt_attn_layout l,
                                   int64_t NH, int64_t NKV, int64_t T, int64_t hs, int64_t *dst) {
    int64_t c = i % hs, t = (i / hs) % T, kvh = (i / (hs * T)) % NKV, bl = i / (hs * T * NKV);
    int64_t group = NH / NKV;
    float sum = 0.0f;
    for (int64_t h = kvh * group; h < (kvh + 1) * group; h++)
        sum += bt_bf16_to_f32(packed[((bl * NH + h) * T + t) * hs + c]);
    *dst = bl * l.batch + kvh * l.head + t * l.time + c;
    return sum;
}

/* keys query row t sees: [0, n) */
BT_HD int64_t bt_km_attn_keys(int64_t t, int64_t T, bool causal) {
    return causal ? t + 1 : T;
}

/* the probability of score s (key j, query t) given its row's log-sum-exp; 0 above the causal
 * diagonal. The forward and the backward's recomputation both take it from here. */
BT_HD float bt_km_attn_prob(float s, float lse, int64_t j, int64_t t, bool causal) {
    return causal && j > t ? 0.0f : expf(s - lse);
}

/* the gradient of score s: p (dp - D), dp = dout . v_j and D = dout . out of its row */
BT_HD float bt_km_attn_dscore(float p, float dp, float D) {
    return p * (dp - D);
}

/* ---- AdamW: torch.optim.AdamW (_single_tensor_adamw) operation for operation, as the CPU ---- */

BT_HD void bt_km_adamw(const struct bt_adamw_span *s, float *p, float *m, float *v, float g,
                       float grad_scale) {
    float gi = g * grad_scale;
    float pi = *p * s->decay;
    *m = *m * s->beta1 + s->one_minus_beta1 * gi;
    *v = *v * s->beta2 + s->one_minus_beta2 * gi * gi;
    float denom = sqrtf(*v) / s->bias_correction2_sqrt + s->eps;
    *p = pi + -s->step_size * (*m / denom);
}

BT_HD float bt_km_sgd(float *p, float g, float *buf, float lr, float wd, float momentum,
                      float grad_scale) {
    float d = g * grad_scale;
    if (wd != 0.0f) d = d + wd * *p;
    if (buf) {
        *buf = *buf * momentum + d;
        d = *buf;
    }
    *p = *p + -lr * d;
    return *p;
}

#endif
