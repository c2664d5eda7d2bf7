/* Explicit SIMD for the CPU kernels' transcendental loops, and the runtime ISA dispatch.
 *
 * gcc's auto-vectoriser does vectorise bt_fast_expf loops for the portable x86-64 target (SSE2),
 * but for AVX2 and AVX-512 it turns the range clamps into branches and gives up ("control flow
 * in loop"), so a -march=native build ran GELU 3x slower than the portable one. The loops below
 * are written with gcc's vector extensions instead: one bt_vf holds 8 floats, one AVX2 register
 * (2 SSE ones, half an AVX-512 one), with the same arithmetic, operation for operation, as
 * core/cpu/fastmath.h's scalar code. Not 16: gcc 12 keeps a vector wider than the target's
 * registers on the stack wherever it is carried across loop iterations (an accumulator) or read
 * lane by lane, which made the x86-64-v3 clones of layernorm and the attention softmax several
 * times slower than their arithmetic.
 *
 * BT_CPU_DISPATCH on a kernel function compiles it three times, for x86-64-v4 (AVX-512),
 * x86-64-v3 (AVX2 + FMA) and the portable baseline, and picks one when the program loads
 * (gcc's target_clones: an ifunc resolver reading CPUID). So a portable build of braid still uses
 * the machine's widest vectors. Put it on functions without OpenMP parallel regions (gcc outlines
 * the parallel region's body into a function of its own, which is not cloned): the parallel loop
 * calls a dispatched function per chunk of work. The v3/v4 clones contract a*b+c into fused
 * multiply-adds, so results may differ from the baseline clone's in the last bits; on one machine
 * they are always the same. */
#ifndef BRAID_CORE_CPU_VECMATH_H
#define BRAID_CORE_CPU_VECMATH_H

#include <stdint.h>
#include <string.h>

/* gcc >= 12 resolves arch=x86-64-vN clones by the CPU's features (older ones cannot). Off in the
 * sanitizer build, so that the test suite's two runs (ASan+UBSan, then Release) check both the
 * portable code and this machine's clone. */
#if defined(__x86_64__) && !defined(__clang__) && __GNUC__ >= 12 && !defined(__SANITIZE_ADDRESS__)
#define BT_CPU_DISPATCH                                                                            \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define BT_CPU_DISPATCH
#endif

/* The helpers below pass bt_vf by value; they are static inline, so no call crosses an ABI and
 * gcc's note that 64-byte vector arguments change it without AVX-512 does not apply. */
#pragma GCC diagnostic ignored "-Wpsabi"

/* Always inlined, so each clone of a dispatched caller gets them compiled for its own ISA */
#define BT_VEC_INLINE static inline __attribute__((always_inline))

#define BT_VL 8 /* floats per bt_vf */
typedef float bt_vf __attribute__((vector_size(BT_VL * sizeof(float))));
typedef int32_t bt_vi __attribute__((vector_size(BT_VL * sizeof(int32_t))));

BT_VEC_INLINE bt_vf bt_vf_load(const float *p) {
    bt_vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

BT_VEC_INLINE void bt_vf_store(float *p, bt_vf v) {
    memcpy(p, &v, sizeof v);
}

BT_VEC_INLINE bt_vf bt_vf_splat(float x) {
    return (bt_vf){0} + x;
}

/* mask ? a : b, lane by lane; mask lanes are all ones or all zeros */
BT_VEC_INLINE bt_vf bt_vf_select(bt_vi mask, bt_vf a, bt_vf b) {
    return (bt_vf)(((bt_vi)a & mask) | ((bt_vi)b & ~mask));
}

/* a < b as a lane mask, from the sign of a - b (negative exactly when a < b for finite a, b:
 * gradual underflow never rounds a nonzero difference to 0). Not a vector comparison: gcc 12
 * lowers a float comparison wider than the target's vectors to one scalar compare-and-cmov pair
 * per lane (a 16-lane one made GELU 2-2.4x slower on AVX2 machines; an 8-lane one does the same
 * on the SSE baseline); a subtraction and an arithmetic shift split into native vectors.
 * Infinities order correctly; NaN lanes give either answer. */
BT_VEC_INLINE bt_vi bt_vf_lt(bt_vf a, bt_vf b) {
    return (bt_vi)(a - b) >> 31;
}

BT_VEC_INLINE bt_vf bt_vf_min(bt_vf a, bt_vf b) {
    return bt_vf_select(bt_vf_lt(a, b), a, b);
}

BT_VEC_INLINE bt_vf bt_vf_max(bt_vf a, bt_vf b) {
    return bt_vf_select(bt_vf_lt(b, a), a, b);
}

/* bt_fast_expf lane by lane (core/cpu/fastmath.h: same clamps, reduction and polynomial) */
BT_VEC_INLINE bt_vf bt_vf_exp(bt_vf x) {
    x = bt_vf_min(x, bt_vf_splat(88.0f));
    x = bt_vf_max(x, bt_vf_splat(-87.0f));
    bt_vf t = x * 1.44269504088896341f;
    bt_vf half = (bt_vf)(((bt_vi)t & INT32_MIN) | (bt_vi)bt_vf_splat(0.5f));
    bt_vi n = __builtin_convertvector(t + half, bt_vi); /* round to nearest, as copysign(0.5) */
    bt_vf fn = __builtin_convertvector(n, bt_vf);
    bt_vf r = x - fn * 0.693359375f + fn * 2.12194440e-4f;
    bt_vf p = bt_vf_splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    bt_vf y = p * r * r + r + 1.0f;
    return y * (bt_vf)((n + 127) << 23);
}

/* bt_fast_tanhf lane by lane */
BT_VEC_INLINE bt_vf bt_vf_tanh(bt_vf u) {
    return 1.0f - 2.0f / (bt_vf_exp(2.0f * u) + 1.0f);
}

BT_VEC_INLINE float bt_vf_sum(bt_vf v) {
    float s = 0.0f;
    for (int i = 0; i < BT_VL; i++)
        s += v[i];
    return s;
}

BT_VEC_INLINE float bt_vf_hmax(bt_vf v) {
    float m = v[0];
    for (int i = 1; i < BT_VL; i++)
        m = v[i] > m ? v[i] : m;
    return m;
}

#endif
