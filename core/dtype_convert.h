/* Scalar conversions between braid's dtypes (bf16 and f16 by bit manipulation, round to nearest
 * even), shared by the CPU kernels and the CUDA kernels (BT_HD: __host__ __device__ under nvcc). */
#ifndef BRAID_CORE_DTYPE_CONVERT_H
#define BRAID_CORE_DTYPE_CONVERT_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "core/tensor.h"

#ifndef BT_HD
#ifdef __CUDACC__
#define BT_HD __host__ __device__ static inline
#else
#define BT_HD static inline
#endif
#endif

BT_HD uint16_t bt_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

BT_HD float bt_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

BT_HD float bt_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400u)) {
                man <<= 1;
                exp--;
            }
            u = sign | (exp << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

BT_HD uint16_t bt_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);  /* NaN */
    if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* overflow to inf */
    if (abs < 0x38800000u) {                                   /* subnormal or zero in f16 */
        float a;
        memcpy(&a, &abs, 4);
        /* 2^-24 is the f16 subnormal quantum; rintf rounds half to even */
        return (uint16_t)(sign | (uint32_t)rintf(a * 16777216.0f));
    }
    uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
    return (uint16_t)(sign | ((rounded - 0x38000000u) >> 13));
}

/* element i of a buffer of `dtype`, as double (integers exactly) */
BT_HD double bt_load_at(const void *p, bt_dtype dtype, int64_t i) {
    switch (dtype) {
    case BT_F32:
        return ((const float *)p)[i];
    case BT_BF16:
        return bt_bf16_to_f32(((const uint16_t *)p)[i]);
    case BT_F16:
        return bt_f16_to_f32(((const uint16_t *)p)[i]);
    case BT_I32:
        return ((const int32_t *)p)[i];
    case BT_I64:
        return (double)((const int64_t *)p)[i];
    case BT_U16:
        return ((const uint16_t *)p)[i];
    case BT_BOOL:
        return ((const uint8_t *)p)[i];
    default:
        return 0.0;
    }
}

static inline double bt_load_as_double(const void *p, bt_dtype dtype) {
    return bt_load_at(p, dtype, 0);
}

/* element i of a buffer of `dtype` = v, converted as a C cast (floats rounded to nearest even) */
BT_HD void bt_store_at(void *p, bt_dtype dtype, int64_t i, double v) {
    switch (dtype) {
    case BT_F32:
        ((float *)p)[i] = (float)v;
        break;
    case BT_BF16:
        ((uint16_t *)p)[i] = bt_f32_to_bf16((float)v);
        break;
    case BT_F16:
        ((uint16_t *)p)[i] = bt_f32_to_f16((float)v);
        break;
    case BT_I32:
        ((int32_t *)p)[i] = (int32_t)v;
        break;
    case BT_I64:
        ((int64_t *)p)[i] = (int64_t)v;
        break;
    case BT_U16:
        ((uint16_t *)p)[i] = (uint16_t)v;
        break;
    case BT_BOOL:
        ((uint8_t *)p)[i] = v != 0.0;
        break;
    default:
        break;
    }
}

static inline void bt_store_from_double(void *p, bt_dtype dtype, double v) {
    bt_store_at(p, dtype, 0, v);
}

#endif
