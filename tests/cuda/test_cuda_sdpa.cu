/* cuDNN's fused attention graphs (core/cuda/sdpa_graph.cu) on the host: cuDNN is loaded, and every
 * tensor and operation of the forward and backward graphs, and the operation graph itself, is
 * finalized by cuDNN, which checks each node's shapes, dtypes and modes and that the nodes
 * connect. No GPU is needed for that; whether an engine on a GPU takes the graph, and what it
 * computes, is tests/gpu's (gpu_ops.test_cudnn_attention_matches_cpu). Also the bf16 unpacking
 * math of attention_cudnn.cu. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

extern "C" {
#include "core/dtype_convert.h"
#include "tests/gradcheck.h"
}
#include "core/cuda/kernel_math.h"
#include "core/cuda/sdpa_graph.h"

static void load(void) {
    char why[512] = "";
    ck_assert_msg(bt_cudnn_load(why, sizeof why), "%s", why);
}

START_TEST(test_cudnn_loads) {
    load();
    size_t v = cudnnGetVersion();
    /* the library loaded is the major version braid was compiled against */
    ck_assert_uint_eq(v / 10000, CUDNN_MAJOR);
    ck_assert_ptr_nonnull(cudnnGetErrorString(CUDNN_STATUS_SUCCESS));
}
END_TEST

/* every shape braid's models make: GPT-2's (T 1024, D 64), a T that is no multiple of a tile, the
 * largest head size, the smallest */
START_TEST(test_sdpa_graphs_finalize_without_a_gpu) {
    load();
    int64_t shapes[][4] = {{2, 3, 256, 64}, {8, 12, 1024, 64}, {2, 4, 70, 128}, {3, 2, 33, 8}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int causal = 0; causal < 2; causal++)
            for (int backward = 0; backward < 2; backward++) {
                struct bt_sdpa_dims d = {shapes[i][0], shapes[i][1], shapes[i][2], shapes[i][3],
                                         causal != 0, backward != 0};
                char why[600] = "";
                ck_assert_msg(bt_sdpa_takes(&d, why, sizeof why), "%s", why);
                struct bt_sdpa_graph g;
                bool ok = bt_sdpa_build(&g, &d, NULL, why, sizeof why);
                ck_assert_msg(ok, "B %lld H %lld T %lld D %lld causal %d backward %d: %s",
                              (long long)d.B, (long long)d.H, (long long)d.T, (long long)d.D,
                              causal, backward, why);
                /* the forward: Q Kᵀ, scale, (2 indices, compare, select), max, sub, exp, sum,
                 * log, stats, P, P V; the backward: 3 for D, Q Kᵀ, scale, sub, (mask), exp,
                 * Pᵀ, dV, dP, 3 for dS, dSᵀ, dK, K, dQ, its rounding */
                int ops = (backward ? 18 : 10) + (causal ? 4 : 0);
                ck_assert_int_eq(g.n_ops, ops);
                ck_assert_ptr_null(g.plan); /* no handle: no plan */
                /* the variant pack names every non-virtual tensor, the scalars included */
                ck_assert_int_eq(g.n_uids, (backward ? 13 : 6) + (causal ? 1 : 0));
                for (int u = 0; u < g.n_uids; u++)
                    ck_assert(g.uids[u] >= BT_SDPA_Q && g.uids[u] < BT_SDPA_UID_COUNT);
                bt_sdpa_destroy(&g);
                ck_assert_int_eq(g.n_descs, 0);
            }
}
END_TEST

/* a node cuDNN rejects comes back as a reason naming it, not a crash: a negative head size (which
 * bt_sdpa_takes refuses before building) */
START_TEST(test_sdpa_graph_reports_a_rejected_node) {
    load();
    struct bt_sdpa_dims d = {2, 3, 64, -8, true, false};
    char why[600] = "";
    ck_assert(!bt_sdpa_takes(&d, why, sizeof why));
    ck_assert_msg(strstr(why, "empty") != NULL, "%s", why);
    struct bt_sdpa_graph g;
    ck_assert(!bt_sdpa_build(&g, &d, NULL, why, sizeof why));
    ck_assert_msg(strstr(why, "cudnnBackendFinalize(Q)") != NULL, "%s", why);
    bt_sdpa_destroy(&g);
    for (int64_t D : {20, 136}) {
        struct bt_sdpa_dims e = {2, 3, 64, D, true, false};
        ck_assert(!bt_sdpa_takes(&e, why, sizeof why));
        ck_assert_msg(strstr(why, "multiples of 8 up to 128") != NULL, "%s", why);
    }
}
END_TEST

/* a key head's gradient from cuDNN's bf16 per-query-head gradients: the group's sum, at the key
 * head's place in braid's layout */
START_TEST(test_bf16_kv_sum_matches_float) {
    int64_t NH = 4, NKV = 2, T = 5, hs = 8, B = 2;
    int64_t n = B * NH * T * hs;
    uint16_t *packed = (uint16_t *)malloc((size_t)n * sizeof(uint16_t));
    float *as_float = (float *)malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) {
        packed[i] = bt_f32_to_bf16(sinf((float)i * 0.37f));
        as_float[i] = bt_bf16_to_f32(packed[i]);
    }
    /* braid's layout (B, T, NKV, hs), as a (B, T, C) projection's view */
    struct bt_attn_layout l = {T * NKV * hs, hs, NKV * hs};
    for (int64_t i = 0; i < B * NKV * T * hs; i++) {
        int64_t at_bf16, at_float;
        float got = bt_km_attn_kv_sum_bf16(packed, i, l, NH, NKV, T, hs, &at_bf16);
        float want = bt_km_attn_kv_sum(as_float, i, l, 0, NH, NKV, T, hs, &at_float);
        ck_assert_int_eq(at_bf16, at_float);
        ck_assert_float_eq(got, want);
    }
    free(as_float);
    free(packed);
}
END_TEST

static Suite *make_suite(void) {
    Suite *s = suite_create("cuda_sdpa");
    bt_suite_add(s, test_cudnn_loads);
    bt_suite_add(s, test_sdpa_graphs_finalize_without_a_gpu);
    bt_suite_add(s, test_sdpa_graph_reports_a_rejected_node);
    bt_suite_add(s, test_bf16_kv_sum_matches_float);
    return s;
}

BT_TEST_MAIN(make_suite)
