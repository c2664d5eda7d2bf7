/* Branch-free float exp for kernel inner loops: unlike libm's expf, gcc can vectorise loops that
 * call it. Cephes' expf (range reduction by ln 2 in two parts, degree-5 polynomial), within 2 ulp
 * of expf over [-87, 88] (tests/test_elementwise.c compares them). */
#ifndef BRAID_CORE_CPU_FASTMATH_H
#define BRAID_CORE_CPU_FASTMATH_H

#include <stdint.h>
#include <string.h>

static inline float bt_fast_expf(float x) {
    x = x > 88.0f ? 88.0f : x; /* keeps 2^n a normal float; written as two selects so that */
    x = x < -87.0f ? -87.0f : x; /* gcc if-converts them (maxps/minps) and vectorises callers */
    float t = x * 1.44269504088896341f;                       /* x / ln 2 */
    int32_t n = (int32_t)(t + __builtin_copysignf(0.5f, t)); /* round to nearest */
    float fn = (float)n;
    float r = x - fn * 0.693359375f + fn * 2.12194440e-4f; /* x - n ln 2, ln 2 in two parts */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    int32_t bits = (n + 127) << 23; /* 2^n */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

/* tanh(u) = 1 - 2 / (exp(2u) + 1): absolute error ~1e-7, for activations (GELU), not for bt_tanh */
static inline float bt_fast_tanhf(float u) {
    return 1.0f - 2.0f / (bt_fast_expf(2.0f * u) + 1.0f);
}

#endif
