/* The CUDA kernels' per-element math (core/cuda/kernel_math.h), compiled by nvcc and run on the
 * host, against the CPU backend on the same inputs: dtype conversions, strided indexing, the
 * broadcast sum's plan, unary ops and derivatives, dropout's mask, RoPE's angles, the online
 * softmax of the attention kernels (the kernel's recurrence, row by row), AdamW and SGD. Runs
 * without a GPU: nothing here touches the device. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

extern "C" {
#include "core/cpu/kernels.h"
#include "core/dtype_convert.h"
#include "tests/gradcheck.h"
}
#include "core/cuda/attention_gemm.h"
#include "core/cuda/cublaslt.h"
#include "core/cuda/kernel_math.h"

static float uniform(uint64_t seed, uint64_t i, float lo, float hi) {
    return lo + (hi - lo) * bt_rng_uniform_at(seed, i);
}

/* The kernels convert dtypes with core/dtype_convert.h's own functions (BT_HD), so what is left
 * to check is that they compile for the device and give, compiled by nvcc, what gcc's build
 * gives (tests/test_tensor.c checks the values themselves): round to nearest even, NaN, the
 * f16 range */
START_TEST(test_dtype_conversions_under_nvcc) {
    ck_assert_uint_eq(bt_f32_to_bf16(1.0f + 1.0f / 256.0f), 0x3f80); /* a tie: to even */
    ck_assert_uint_eq(bt_f32_to_bf16(1.0f + 3.0f / 256.0f), 0x3f82);
    ck_assert_uint_eq(bt_f32_to_bf16(NAN) & 0x7fc0, 0x7fc0);
    ck_assert_uint_eq(bt_f32_to_f16(65504.0f), 0x7bff);
    ck_assert_uint_eq(bt_f32_to_f16(65520.0f), 0x7c00); /* rounds to inf */
    ck_assert_uint_eq(bt_f32_to_f16(5.9604645e-8f), 0x0001); /* the smallest subnormal */
    ck_assert_float_eq(bt_f16_to_f32(0x3c00), 1.0f);
    char buf[8];
    bt_store_at(buf, BT_I64, 0, -7.0);
    ck_assert_double_eq(bt_load_at(buf, BT_I64, 0), -7.0);
    bt_store_at(buf, BT_BOOL, 3, 2.5);
    ck_assert_double_eq(bt_load_at(buf, BT_BOOL, 3), 1.0);
}
END_TEST

/* a (2,3,4) buffer read through permuted and broadcast strides: the offsets the copy and binary
 * kernels use give the CPU's results exactly */
START_TEST(test_strided_offsets_match_cpu) {
    float src[24], cpu[24], gpu[24];
    for (int i = 0; i < 24; i++)
        src[i] = (float)i + 0.5f;
    int64_t shape[3] = {4, 3, 2}, strides[3] = {1, 4, 12}; /* the (2,3,4) permuted (2,1,0) */
    bt_cpu_copy_strided(cpu, BT_F32, src, BT_F32, 3, shape, strides);
    struct bt_km_shape sh = {3, {4, 3, 2}};
    struct bt_km_strides st = {{1, 4, 12}};
    for (int64_t i = 0; i < 24; i++)
        gpu[i] = src[bt_km_offset(i, &sh, &st)];
    ck_assert_mem_eq(cpu, gpu, sizeof cpu);
    /* a + b with b (1,3,1) broadcast over (4,3,2) */
    float b[3] = {10.0f, 20.0f, 30.0f};
    int64_t a_str[3] = {6, 2, 1}, b_str[3] = {0, 1, 0};
    bt_cpu_binary(BT_BIN_ADD, cpu, src, a_str, b, b_str, 3, shape);
    struct bt_km_strides as = {{6, 2, 1}}, bs = {{0, 1, 0}};
    for (int64_t i = 0; i < 24; i++)
        gpu[i] = bt_km_binary(BT_BIN_ADD, src[bt_km_offset(i, &sh, &as)],
                              b[bt_km_offset(i, &sh, &bs)]);
    ck_assert_mem_eq(cpu, gpu, sizeof cpu);
}
END_TEST

/* the broadcast sum's plan, output element by output element, against the CPU's walk */
START_TEST(test_sum_to_plan_matches_cpu) {
    static const int64_t shapes[][4] = {{2, 3, 4, 5}, {1, 3, 1, 5}, {7, 1, 6, 1}, {2, 1, 1, 9}};
    for (int c = 0; c < 4; c++)
        for (int mask = 0; mask < 16; mask++) { /* which dims the target keeps */
            int64_t target[4], map[4], strides[4], n = 1, out_n = 1;
            for (int k = 0; k < 4; k++) {
                target[k] = (mask >> k) & 1 ? shapes[c][k] : 1;
                n *= shapes[c][k];
                out_n *= target[k];
            }
            bt_contiguous_strides(4, target, strides);
            for (int k = 0; k < 4; k++)
                map[k] = target[k] != 1 ? strides[k] : 0;
            float src[2 * 3 * 4 * 5 * 9], cpu[512] = {0}, gpu[512];
            for (int64_t i = 0; i < n; i++)
                src[i] = uniform(3, (uint64_t)i, -1.0f, 1.0f);
            bt_cpu_sum_to(cpu, out_n, src, 4, shapes[c], map);
            struct bt_km_sum_to_plan plan = bt_km_sum_to_make_plan(4, shapes[c], map);
            for (int64_t o = 0; o < out_n; o++)
                gpu[o] = 0.0f + bt_km_sum_to_element(&plan, o, src);
            ck_assert_msg(memcmp(cpu, gpu, (size_t)out_n * sizeof(float)) == 0,
                          "shape %d mask %d: sums differ", c, mask);
        }
}
END_TEST

/* |a - b| over (atol + rtol |b|): <= 1 means they agree */
static double mismatch(double a, double b, double atol, double rtol) {
    return fabs(a - b) / (atol + rtol * fabs(b));
}

/* unary ops and derivatives against the CPU's kernels (which use fast exp/tanh approximations
 * for GELU-tanh and SiLU, good to ~1e-7 absolute) */
START_TEST(test_unary_matches_cpu) {
    enum { N = 4096 };
    static float x[N], pos[N], cpu[N], dx[N], ones[N];
    for (int i = 0; i < N; i++) {
        x[i] = uniform(11, (uint64_t)i, -8.0f, 8.0f);
        pos[i] = uniform(12, (uint64_t)i, 0.01f, 8.0f);
        ones[i] = 1.0f;
    }
    for (int op = 0; op < BT_UN_COUNT; op++) {
        bool positive = op == BT_UN_LOG || op == BT_UN_SQRT || op == BT_UN_RSQRT || op == BT_UN_POW;
        const float *in = positive ? pos : x;
        float arg = op == BT_UN_POW ? 1.7f : op == BT_UN_ADD_SCALAR ? 0.25f : 1.5f;
        bt_cpu_unary((bt_unary_op)op, cpu, in, N, arg);
        bt_cpu_unary_backward((bt_unary_op)op, dx, ones, in, cpu, N, arg, 0.0f);
        double worst = 0.0, worst_d = 0.0;
        for (int i = 0; i < N; i++) {
            float y = bt_km_unary((bt_unary_op)op, in[i], arg);
            float d = bt_km_unary_derivative((bt_unary_op)op, in[i], y, arg);
            worst = fmax(worst, mismatch(y, cpu[i], 1e-5, 1e-5));
            worst_d = fmax(worst_d, mismatch(d, dx[i], 1e-5, 1e-5));
        }
        ck_assert_msg(worst <= 1.0 && worst_d <= 1.0,
                      "unary op %d: error %g, derivative %g (of 1e-5 + 1e-5 |cpu|)", op, worst,
                      worst_d);
    }
}
END_TEST

START_TEST(test_dropout_mask_matches_cpu) {
    for (uint64_t c = 0; c < 100000; c++)
        ck_assert_uint_eq(bt_km_bits(bt_km_uniform_at(1337, c)),
                          bt_km_bits(bt_rng_uniform_at(1337, c)));
    enum { N = 10000 };
    static float x[N], cpu[N];
    for (int i = 0; i < N; i++)
        x[i] = uniform(5, (uint64_t)i, -1.0f, 1.0f);
    bt_cpu_dropout(cpu, x, N, 0.2f, 99, 1000, 0.0f);
    for (int i = 0; i < N; i++)
        ck_assert_uint_eq(bt_km_bits(bt_km_dropout(x[i], 0.2f, 1.0f / (1.0f - 0.2f), 99,
                                                   1000 + (uint64_t)i)),
                          bt_km_bits(cpu[i]));
}
END_TEST

/* RoPE: the kernel's per-(row, frequency) rotation over (B, NH, T, hs), forward and inverse */
START_TEST(test_rope_matches_cpu) {
    enum { B = 2, NH = 3, T = 5, HS = 8, N = B * NH * T * HS };
    float x[N], cpu[N], gpu[N];
    for (int i = 0; i < N; i++)
        x[i] = uniform(8, (uint64_t)i, -1.0f, 1.0f);
    for (int inverse = 0; inverse < 2; inverse++) {
        bt_cpu_rope(cpu, x, B, NH, T, HS, 10000.0f, 3, inverse);
        for (int64_t row = 0; row < B * NH * T; row++)
            for (int64_t i = 0; i < HS / 2; i++) {
                float c, s;
                bt_km_rope_angle(10000.0, i, HS, 3 + row % T, inverse, &c, &s);
                float a = x[row * HS + i], b = x[row * HS + i + HS / 2];
                gpu[row * HS + i] = a * c - b * s;
                gpu[row * HS + i + HS / 2] = b * c + a * s;
            }
        ck_assert_mem_eq(cpu, gpu, sizeof cpu);
    }
}
END_TEST

/* The attention kernels' recurrences, one row at a time as a warp runs them (forward: online
 * softmax over the keys; backward: dq per query row, dk and dv per key row over the group's
 * query heads), against the CPU's tiled kernels; GQA (NH = 4, NKV = 2), causal and not */
static float dotp(const float *a, const float *b, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* The CPU's attention outputs (out, lse, dq, dk, dv) against the host-run device math's: each
 * within 1e-5 of its tensor's largest element. q_numel is the size of out and dq, rows that of
 * lse, kv_numel that of dk and dv. */
static void check_attention_outputs(const char *what, const float *const cpu[5],
                                    const float *const host[5], int q_numel, int rows,
                                    int kv_numel) {
    static const char *names[5] = {"out", "lse", "dq", "dk", "dv"};
    const int n[5] = {q_numel, rows, q_numel, kv_numel, kv_numel};
    for (int p = 0; p < 5; p++) {
        double worst = 0.0, big = 0.0;
        for (int i = 0; i < n[p]; i++) {
            worst = fmax(worst, fabs(cpu[p][i] - host[p][i]));
            big = fmax(big, fabs(cpu[p][i]));
        }
        ck_assert_msg(worst <= 1e-5 * big, "%s %s: max error %g, max |cpu| %g", what, names[p],
                      worst, big);
    }
}

START_TEST(test_attention_recurrence_matches_cpu) {
    enum { B = 2, NH = 4, NKV = 2, T = 7, HS = 8 };
    static float q[B * NH * T * HS], k[B * NKV * T * HS], v[B * NKV * T * HS], g[B * NH * T * HS];
    static float out_c[B * NH * T * HS], lse_c[B * NH * T], dq_c[B * NH * T * HS];
    static float dk_c[B * NKV * T * HS], dv_c[B * NKV * T * HS];
    static float out_g[B * NH * T * HS], lse_g[B * NH * T], dq_g[B * NH * T * HS], D[B * NH * T];
    static float dk_g[B * NKV * T * HS], dv_g[B * NKV * T * HS];
    for (int i = 0; i < B * NH * T * HS; i++)
        q[i] = uniform(21, (uint64_t)i, -1, 1), g[i] = uniform(22, (uint64_t)i, -1, 1);
    for (int i = 0; i < B * NKV * T * HS; i++)
        k[i] = uniform(23, (uint64_t)i, -1, 1), v[i] = uniform(24, (uint64_t)i, -1, 1);
    struct bt_attn_layout lq = {NH * T * HS, T * HS, HS}, lk = {NKV * T * HS, T * HS, HS};
    struct bt_attn_layouts L = {lq, lk, lk, lq, lq, lq, lk, lk};
    const float scale = 0.35355339f;
    for (int causal = 0; causal < 2; causal++) {
        bt_cpu_attention(out_c, lse_c, q, k, v, B, NH, NKV, T, HS, scale, causal, &L);
        bt_cpu_attention_backward(dq_c, dk_c, dv_c, g, q, k, v, out_c, lse_c, B, NH, NKV, T, HS,
                                  scale, causal, &L);
        for (int b = 0; b < B; b++)
            for (int h = 0; h < NH; h++)
                for (int t = 0; t < T; t++) { /* forward row */
                    int kvh = h / (NH / NKV), row = (b * NH + h) * T + t;
                    const float *qr = q + row * HS;
                    float m = -INFINITY, l = 0.0f, acc[HS] = {0};
                    for (int j = 0; j <= (causal ? t : T - 1); j++) {
                        const float *kr = k + ((b * NKV + kvh) * T + j) * HS;
                        const float *vr = v + ((b * NKV + kvh) * T + j) * HS;
                        float p, corr = bt_km_online_softmax(&m, &l, dotp(qr, kr, HS) * scale, &p);
                        for (int c = 0; c < HS; c++)
                            acc[c] = acc[c] * corr + p * vr[c];
                    }
                    for (int c = 0; c < HS; c++)
                        out_g[row * HS + c] = acc[c] / l;
                    lse_g[row] = m + logf(l);
                }
        for (int b = 0; b < B; b++)
            for (int h = 0; h < NH; h++)
                for (int i = 0; i < T; i++) { /* dq row */
                    int kvh = h / (NH / NKV), row = (b * NH + h) * T + i;
                    float Di = dotp(g + row * HS, out_g + row * HS, HS), acc[HS] = {0};
                    D[row] = Di;
                    for (int j = 0; j <= (causal ? i : T - 1); j++) {
                        const float *kr = k + ((b * NKV + kvh) * T + j) * HS;
                        float p = expf(dotp(q + row * HS, kr, HS) * scale - lse_g[row]);
                        float ds = p * (dotp(g + row * HS, v + ((b * NKV + kvh) * T + j) * HS,
                                             HS) - Di);
                        for (int c = 0; c < HS; c++)
                            acc[c] += ds * kr[c];
                    }
                    for (int c = 0; c < HS; c++)
                        dq_g[row * HS + c] = acc[c] * scale;
                }
        for (int b = 0; b < B; b++)
            for (int kvh = 0; kvh < NKV; kvh++)
                for (int j = 0; j < T; j++) { /* dk, dv row */
                    int krow = (b * NKV + kvh) * T + j;
                    float ak[HS] = {0}, av[HS] = {0};
                    for (int h = kvh * (NH / NKV); h < (kvh + 1) * (NH / NKV); h++)
                        for (int i = causal ? j : 0; i < T; i++) {
                            int row = (b * NH + h) * T + i;
                            float p = expf(dotp(k + krow * HS, q + row * HS, HS) * scale -
                                           lse_g[row]);
                            float ds = p * (dotp(v + krow * HS, g + row * HS, HS) - D[row]);
                            for (int c = 0; c < HS; c++) {
                                av[c] += p * g[row * HS + c];
                                ak[c] += ds * q[row * HS + c];
                            }
                        }
                    for (int c = 0; c < HS; c++)
                        dk_g[krow * HS + c] = ak[c] * scale, dv_g[krow * HS + c] = av[c];
                }
        const float *cpu[5] = {out_c, lse_c, dq_c, dk_c, dv_c};
        const float *host[5] = {out_g, lse_g, dq_g, dk_g, dv_g};
        char what[32];
        snprintf(what, sizeof what, "causal=%d", causal);
        check_attention_outputs(what, cpu, host, B * NH * T * HS, B * NH * T, B * NKV * T * HS);
    }
}
END_TEST

/* The tiled kernels' schedule (attention_tiled.cu), run on the host with their own range
 * functions: blocks of br rows, key and query tiles, the causal cut-offs, against the CPU; tiles
 * of 3 and 4 rows over T = 7 reach every edge (a partial last tile, a tile wholly above the
 * diagonal) */
START_TEST(test_tiled_attention_schedule_matches_cpu) {
    enum { B = 1, NH = 4, NKV = 2, T = 7, HS = 8, G = NH / NKV };
    static float q[B * NH * T * HS], k[B * NKV * T * HS], v[B * NKV * T * HS], g[B * NH * T * HS];
    static float out_c[B * NH * T * HS], lse_c[B * NH * T], dq_c[B * NH * T * HS];
    static float dk_c[B * NKV * T * HS], dv_c[B * NKV * T * HS];
    static float out_g[B * NH * T * HS], lse_g[B * NH * T], dq_g[B * NH * T * HS], D[B * NH * T];
    static float dk_g[B * NKV * T * HS], dv_g[B * NKV * T * HS];
    for (int i = 0; i < B * NH * T * HS; i++)
        q[i] = uniform(41, (uint64_t)i, -1, 1), g[i] = uniform(42, (uint64_t)i, -1, 1);
    for (int i = 0; i < B * NKV * T * HS; i++)
        k[i] = uniform(43, (uint64_t)i, -1, 1), v[i] = uniform(44, (uint64_t)i, -1, 1);
    struct bt_attn_layout lq = {NH * T * HS, T * HS, HS}, lk = {NKV * T * HS, T * HS, HS};
    struct bt_attn_layouts L = {lq, lk, lk, lq, lq, lq, lk, lk};
    const float scale = 0.35355339f;
    for (int br = 3; br <= 4; br++)
        for (int causal = 0; causal < 2; causal++) {
            bt_cpu_attention(out_c, lse_c, q, k, v, B, NH, NKV, T, HS, scale, causal, &L);
            bt_cpu_attention_backward(dq_c, dk_c, dv_c, g, q, k, v, out_c, lse_c, B, NH, NKV, T,
                                      HS, scale, causal, &L);
            for (int h = 0; h < NH; h++) /* forward and dq: blocks of query rows */
                for (int64_t q0 = 0; q0 < T; q0 += br)
                    for (int64_t t = q0; t < q0 + br && t < T; t++) {
                        const float *qr = q + (h * T + t) * HS, *gr = g + (h * T + t) * HS;
                        const float *kb = k + (h / G) * T * HS, *vb = v + (h / G) * T * HS;
                        float m = -INFINITY, l = 0.0f, acc[HS] = {0};
                        int64_t end = bt_km_block_key_end(q0, br, T, causal);
                        for (int64_t k0 = 0; k0 < end; k0 += br)
                            for (int64_t j = 0; j < bt_km_tile_keys(t, k0, br, T, causal); j++) {
                                float p, corr = bt_km_online_softmax(
                                             &m, &l, dotp(qr, kb + (k0 + j) * HS, HS) * scale, &p);
                                for (int c = 0; c < HS; c++)
                                    acc[c] = acc[c] * corr + p * vb[(k0 + j) * HS + c];
                            }
                        for (int c = 0; c < HS; c++)
                            out_g[(h * T + t) * HS + c] = acc[c] / l;
                        lse_g[h * T + t] = m + logf(l);
                        float Di = dotp(gr, out_g + (h * T + t) * HS, HS), dq[HS] = {0};
                        D[h * T + t] = Di;
                        for (int64_t k0 = 0; k0 < end; k0 += br)
                            for (int64_t j = 0; j < bt_km_tile_keys(t, k0, br, T, causal); j++) {
                                const float *kr = kb + (k0 + j) * HS;
                                float p = expf(dotp(qr, kr, HS) * scale - lse_g[h * T + t]);
                                float ds = p * (dotp(gr, vb + (k0 + j) * HS, HS) - Di);
                                for (int c = 0; c < HS; c++)
                                    dq[c] += ds * kr[c];
                            }
                        for (int c = 0; c < HS; c++)
                            dq_g[(h * T + t) * HS + c] = dq[c] * scale;
                    }
            for (int kvh = 0; kvh < NKV; kvh++) /* dk, dv: blocks of key rows */
                for (int64_t k0 = 0; k0 < T; k0 += br)
                    for (int64_t j = k0; j < k0 + br && j < T; j++) {
                        const float *kr = k + (kvh * T + j) * HS, *vr = v + (kvh * T + j) * HS;
                        float ak[HS] = {0}, av[HS] = {0};
                        for (int h = kvh * G; h < (kvh + 1) * G; h++)
                            for (int64_t i0 = bt_km_block_query_start(k0, causal); i0 < T; i0 += br) {
                                int64_t n = T - i0 < br ? T - i0 : br;
                                for (int64_t r = bt_km_tile_first_query(j, i0, causal); r < n; r++) {
                                    int64_t i = i0 + r;
                                    const float *qr = q + (h * T + i) * HS, *gr = g + (h * T + i) * HS;
                                    float p = expf(dotp(kr, qr, HS) * scale - lse_g[h * T + i]);
                                    float ds = p * (dotp(vr, gr, HS) - D[h * T + i]);
                                    for (int c = 0; c < HS; c++)
                                        av[c] += p * gr[c], ak[c] += ds * qr[c];
                                }
                            }
                        for (int c = 0; c < HS; c++)
                            dk_g[(kvh * T + j) * HS + c] = ak[c] * scale,
                                                    dv_g[(kvh * T + j) * HS + c] = av[c];
                    }
            const float *cpu[5] = {out_c, lse_c, dq_c, dk_c, dv_c};
            const float *host[5] = {out_g, lse_g, dq_g, dk_g, dv_g};
            char what[32];
            snprintf(what, sizeof what, "br=%d causal=%d", br, causal);
            check_attention_outputs(what, cpu, host, B * NH * T * HS, B * NH * T,
                                    B * NKV * T * HS);
        }
}
END_TEST

START_TEST(test_optimizer_updates_match_cpu) {
    enum { N = 5000 };
    static float p_c[N], m_c[N], v_c[N], p_g[N], m_g[N], v_g[N], gr[N], buf_c[N], buf_g[N];
    for (int i = 0; i < N; i++) {
        p_c[i] = p_g[i] = uniform(31, (uint64_t)i, -1, 1);
        m_c[i] = m_g[i] = uniform(32, (uint64_t)i, -0.1f, 0.1f);
        v_c[i] = v_g[i] = uniform(33, (uint64_t)i, 0, 0.01f);
        gr[i] = uniform(34, (uint64_t)i, -1, 1);
        buf_c[i] = buf_g[i] = uniform(35, (uint64_t)i, -1, 1);
    }
    struct bt_adamw_span s = {p_c, m_c, v_c, gr, N, 0.9999f, 0.9f, 0.95f, 0.1f, 0.05f,
                              3e-4f, 0.3f, 1e-8f};
    /* the same operations; the compilers may fuse a multiply-add differently (the CPU's x86-64-v3
     * clone and the GPU contract to FMA): agreement to a few ulps */
    bt_cpu_adamw(&s, 1, 0.7f);
    for (int i = 0; i < N; i++)
        bt_km_adamw(&s, &p_g[i], &m_g[i], &v_g[i], gr[i], 0.7f);
    double worst = 0.0;
    for (int i = 0; i < N; i++) {
        worst = fmax(worst, mismatch(p_g[i], p_c[i], 2e-7, 1e-6)); /* an ulp of 1: 6e-8 */
        worst = fmax(worst, mismatch(m_g[i], m_c[i], 1e-8, 1e-6));
        worst = fmax(worst, mismatch(v_g[i], v_c[i], 1e-10, 1e-6));
    }
    ck_assert_msg(worst <= 1.0, "adamw: error %g (of a few ulps)", worst);
    bt_cpu_sgd(p_c, gr, buf_c, N, 0.01f, 0.1f, 0.9f, 0.5f);
    for (int i = 0; i < N; i++)
        bt_km_sgd(&p_g[i], gr[i], &buf_g[i], 0.01f, 0.1f, 0.9f, 0.5f);
    for (int i = 0; i < N; i++) {
        worst = fmax(worst, mismatch(p_g[i], p_c[i], 2e-7, 1e-6));
        worst = fmax(worst, mismatch(buf_g[i], buf_c[i], 2e-7, 1e-6));
    }
    ck_assert_msg(worst <= 1.0, "sgd: error %g (of a few ulps)", worst);
}
END_TEST

/* attention_gemm.h's steps on the host: each Ops member a plain loop over kernel_math.h's
 * bt_km_attn_* functions (as the device kernels call them), and the CPU's GEMM in cuBLASLt's
 * place, with its semantics (struct bt_backend's gemm) */
struct host_attn_ops {
    int chunks = 0; /* score buffers filled (softmax or probs calls) */
    float *alloc(int64_t floats) { return (float *)malloc((size_t)floats * sizeof(float)); }
    void release(float *p) { free(p); }
    bool ok() { return true; }
    void gemm(bool ta, bool tb, int64_t batch, int64_t M, int64_t N, int64_t K, float alpha,
              const float *A, int64_t lda, int64_t sa, const float *B, int64_t ldb, int64_t sb,
              float beta, float *C, int64_t sc) {
        bt_cpu_gemm(ta, tb, batch, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C, sc);
    }
    void pack(float *dst, const float *src, struct bt_attn_layout l, int64_t b0, int64_t nb,
              int64_t NH, int64_t group, int64_t T, int64_t hs) {
        for (int64_t i = 0; i < nb * NH * T * hs; i++)
            dst[i] = src[bt_km_attn_packed_src(i, l, b0, NH, group, T, hs)];
    }
    void unpack(float *dst, struct bt_attn_layout l, const float *src, int64_t b0, int64_t nb,
                int64_t NH, int64_t T, int64_t hs) {
        for (int64_t i = 0; i < nb * NH * T * hs; i++)
            dst[bt_km_attn_packed_src(i, l, b0, NH, 1, T, hs)] = src[i];
    }
    void unpack_kv(float *dst, struct bt_attn_layout l, const float *src, int64_t b0, int64_t nb,
                   int64_t NH, int64_t NKV, int64_t T, int64_t hs) {
        for (int64_t i = 0; i < nb * NKV * T * hs; i++) {
            int64_t at;
            float sum = bt_km_attn_kv_sum(src, i, l, b0, NH, NKV, T, hs, &at);
            dst[at] = sum;
        }
    }
    void softmax(float *S, float *lse, int64_t rows, int64_t T, bool causal) {
        chunks++;
        for (int64_t r = 0; r < rows; r++) {
            float *s = S + r * T, m = -INFINITY, l = 0.0f;
            int64_t t = r % T, n = bt_km_attn_keys(t, T, causal);
            for (int64_t j = 0; j < n; j++)
                m = fmaxf(m, s[j]);
            for (int64_t j = 0; j < n; j++)
                l += expf(s[j] - m);
            lse[r] = m + logf(l);
            for (int64_t j = 0; j < T; j++)
                s[j] = bt_km_attn_prob(s[j], lse[r], j, t, causal);
        }
    }
    void probs(float *S, const float *lse, int64_t rows, int64_t T, bool causal) {
        chunks++;
        for (int64_t i = 0; i < rows * T; i++)
            S[i] = bt_km_attn_prob(S[i], lse[i / T], i % T, (i / T) % T, causal);
    }
    void row_dots(float *D, const float *dout, const float *out, const struct bt_attn_layouts &L,
                  int64_t B, int64_t NH, int64_t T, int64_t hs) {
        for (int64_t row = 0; row < B * NH * T; row++) {
            int64_t t = row % T, h = (row / T) % NH, b = row / (T * NH);
            const float *g = dout + b * L.dout.batch + h * L.dout.head + t * L.dout.time;
            const float *o = out + b * L.out.batch + h * L.out.head + t * L.out.time;
            D[row] = dotp(g, o, (int)hs);
        }
    }
    void dscores(float *dP, const float *P, const float *D, int64_t rows, int64_t T) {
        for (int64_t i = 0; i < rows * T; i++)
            dP[i] = bt_km_attn_dscore(P[i], dP[i], D[i / T]);
    }
};

/* attention_gemm.h run on the host against the CPU's attention: q, k and v read in place from
 * one fused (B, T, (NH + 2 NKV) hs) buffer, as GPT's qkv projection leaves them, out and dout
 * (B, T, NH hs), the gradients written into a fused buffer alike; GQA and not, causal and not,
 * an odd head size, and caps on the scores that cut the batch into chunks (of 2 and 1 entries
 * forward and 1 backward, or of 3 forward and 2 and 1 backward) */
START_TEST(test_gemm_attention_steps_match_cpu) {
    enum { B = 3, T = 9, HS = 5 };
    const int nkv_of[2] = {2, 4};
    for (int kv = 0; kv < 2; kv++)
        for (int cap_entries = 0; cap_entries < 3; cap_entries++)
            for (int causal = 0; causal < 2; causal++) {
                const int64_t NH = 4, NKV = nkv_of[kv], W = (NH + 2 * NKV) * HS, C = NH * HS;
                const int64_t n_qkv = B * T * W, n_out = B * T * C;
                /* cap_entries 0: no cap; else room for that many entries' backward buffers */
                int64_t cap = cap_entries ? cap_entries * 2 * NH * T * T * 4 : (int64_t)1 << 40;
                float *qkv = (float *)malloc(n_qkv * sizeof(float));
                float *g = (float *)malloc(n_out * sizeof(float));
                float *res[2][3]; /* [cpu, host][out, lse, dqkv] */
                for (int i = 0; i < n_qkv; i++)
                    qkv[i] = uniform(51, (uint64_t)i, -2, 2);
                for (int i = 0; i < n_out; i++)
                    g[i] = uniform(52, (uint64_t)i, -1, 1);
                const int64_t sizes[3] = {n_out, B * NH * T, n_qkv};
                for (int w = 0; w < 2; w++)
                    for (int o = 0; o < 3; o++) {
                        res[w][o] = (float *)malloc(sizes[o] * sizeof(float));
                        for (int64_t i = 0; i < sizes[o]; i++)
                            res[w][o][i] = 7.0f; /* what is not written stays 7 in both */
                    }
                struct bt_attn_layout lqkv = {T * W, HS, W}, lo = {T * C, HS, C};
                struct bt_attn_layouts L = {lqkv, lqkv, lqkv, lo, lo, lqkv, lqkv, lqkv};
                const float *q = qkv, *k = qkv + NH * HS, *v = qkv + (NH + NKV) * HS;
                const float scale = 0.4472136f;
                bt_cpu_attention(res[0][0], res[0][1], q, k, v, B, NH, NKV, T, HS, scale, causal,
                                 &L);
                float *d = res[0][2];
                bt_cpu_attention_backward(d, d + NH * HS, d + (NH + NKV) * HS, g, q, k, v,
                                          res[0][0], res[0][1], B, NH, NKV, T, HS, scale, causal,
                                          &L);
                host_attn_ops ops;
                bt_attn_gemm_forward(ops, res[1][0], res[1][1], q, k, v, B, NH, NKV, T, HS, scale,
                                     causal, L, cap);
                ck_assert_int_eq(ops.chunks, cap_entries == 1 ? 2 : 1); /* one buffer: 2 + 1 */
                d = res[1][2];
                bt_attn_gemm_backward(ops, d, d + NH * HS, d + (NH + NKV) * HS, g, q, k, v,
                                      res[1][0], res[1][1], B, NH, NKV, T, HS, scale, causal, L,
                                      cap);
                /* the backward's two buffers: 3 entries at once, 1 at a time, or 2 + 1 */
                int expect = cap_entries == 0 ? 1 + 1 : cap_entries == 1 ? 2 + 3 : 1 + 2;
                ck_assert_int_eq(ops.chunks, expect);
                static const char *names[3] = {"out", "lse", "dq dk dv"};
                for (int o = 0; o < 3; o++) {
                    double worst = 0.0, big = 0.0;
                    for (int64_t i = 0; i < sizes[o]; i++) {
                        double e = fabs(res[0][o][i] - res[1][o][i]);
                        worst = e > worst || e != e ? e : worst; /* NaN fails */
                        big = fmax(big, fabs(res[0][o][i]));
                    }
                    ck_assert_msg(worst <= 1e-5 * big,
                                  "NKV=%lld cap=%d causal=%d %s: max error %g, max |cpu| %g",
                                  (long long)NKV, cap_entries, causal, names[o], worst, big);
                }
                for (int w = 0; w < 2; w++)
                    for (int o = 0; o < 3; o++)
                        free(res[w][o]);
                free(qkv);
                free(g);
            }
}
END_TEST

/* cuBLASLt is loaded at run time: the library and every entry braid calls are found, and the
 * host-side objects of a matmul plan can be made (no GPU needed for those) */
START_TEST(test_cublaslt_loads) {
    char why[512] = "";
    ck_assert_msg(bt_cublaslt_load(why, sizeof why), "%s", why);
    ck_assert_str_eq(cublasLtGetStatusString(CUBLAS_STATUS_SUCCESS), "success");
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t l;
    ck_assert_int_eq(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F),
                     CUBLAS_STATUS_SUCCESS);
    ck_assert_int_eq(cublasLtMatrixLayoutCreate(&l, CUDA_R_16BF, 64, 32, 64), CUBLAS_STATUS_SUCCESS);
    ck_assert_int_eq(cublasLtMatrixLayoutDestroy(l), CUBLAS_STATUS_SUCCESS);
    ck_assert_int_eq(cublasLtMatmulDescDestroy(op), CUBLAS_STATUS_SUCCESS);
}
END_TEST

static Suite *make_suite(void) {
    Suite *s = suite_create("cuda_math");
    bt_suite_add(s, test_dtype_conversions_under_nvcc);
    bt_suite_add(s, test_strided_offsets_match_cpu);
    bt_suite_add(s, test_sum_to_plan_matches_cpu);
    bt_suite_add(s, test_unary_matches_cpu);
    bt_suite_add(s, test_dropout_mask_matches_cpu);
    bt_suite_add(s, test_rope_matches_cpu);
    bt_suite_add(s, test_attention_recurrence_matches_cpu);
    bt_suite_add(s, test_tiled_attention_schedule_matches_cpu);
    bt_suite_add(s, test_gemm_attention_steps_match_cpu);
    bt_suite_add(s, test_optimizer_updates_match_cpu);
    bt_suite_add(s, test_cublaslt_loads);
    return s;
}

BT_TEST_MAIN(make_suite)
