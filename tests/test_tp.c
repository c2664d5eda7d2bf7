/* Tensor parallelism (parallel/tp.h): each op against plain gather/scatter arithmetic, and each
 * layer against its single-rank twin from core (nn_linear, nn_embedding, bt_cross_entropy) built
 * from the same full weights and run on the same input on every rank: the outputs, the input
 * gradients and this rank's slice of every weight gradient must match the twin's. The
 * tensor-parallel group is the whole world (tp = 1 alone; 2 and 4 under mpirun, see
 * tests/tp_tests.cmake), and a dp × tp grid's tp group in test_grid_subgroups. */
#include <math.h>
#include <stdio.h>

#include "comm/comm.h"
#include "core/runtime.h"
#include "parallel/grid.h"
#include "parallel/tp.h"
#include "tests/gradcheck.h"
#include "tests/mpi_test.h"
#include "tests/twin_check.h"

/* the sizes of the layers: every full size is divisible by tp = 1, 2 and 4 */
enum { B = 2, T = 4, C = 6, F = 16, V = 16 };

static struct comm *tp_group(void) {
    return comm_world();
}

static int tp_size(void) {
    return comm_size(comm_world());
}

static int tp_rank(void) {
    return comm_rank(comm_world());
}

/* ---- tensors ---- */

/* rank r's element i: multiples of 0.25 (sums are exact), different on every rank */
static double rank_val(int r, int64_t i) {
    return (r + 1) * 0.5 + (double)((i * 7 + r * 3) % 13) * 0.25 - 1.5;
}

static bt_tensor *rank_filled(int ndim, const int64_t *shape, int r, bool requires_grad) {
    bt_tensor *t = bt_empty(ndim, shape, BT_F32, bt_cpu());
    for (int64_t i = 0, n = bt_numel(t); i < n; i++)
        bt_set(t, i, rank_val(r, i));
    return bt_requires_grad_(t, requires_grad);
}

/* the same values on every rank: uniform in [-1, 1) from seed */
static bt_tensor *uniform(int ndim, const int64_t *shape, uint64_t seed, bool requires_grad) {
    return bt_requires_grad_(test_param(ndim, shape, seed, -1.0f, 1.0f), requires_grad);
}

/* a contiguous copy of t as a new leaf */
static bt_tensor *leaf_copy(const bt_tensor *t, bool requires_grad) {
    bt_tensor *c = bt_empty(t->ndim, t->shape, BT_F32, bt_cpu());
    ck_assert(bt_copy_(c, t) == BT_OK);
    return bt_requires_grad_(c, requires_grad);
}

/* this rank's block of P along dim */
static bt_tensor *my_block(bt_tensor *t, int dim) {
    int d = bt_wrap_dim(dim, t->ndim);
    int64_t n = t->shape[d] / tp_size();
    return twin_slice(t, d, tp_rank() * n, n);
}

static void assert_ok(bt_status st, const char *what) {
    ck_assert_msg(st == BT_OK, "%s failed on rank %d: %s", what, tp_rank(), bt_last_error());
}

static void *made(void *p, const char *what) {
    ck_assert_msg(p != NULL, "%s failed on rank %d: %s", what, tp_rank(), bt_last_error());
    return p;
}

/* got == want in every element (logical order), to 1e-5 of |want| + want's largest magnitude */
static void assert_close(const char *what, const bt_tensor *got, const bt_tensor *want) {
    char a[96], b[96];
    ck_assert_msg(got != NULL, "%s: no tensor on rank %d (%s)", what, tp_rank(), bt_last_error());
    ck_assert_msg(want != NULL, "%s: no reference tensor on rank %d", what, tp_rank());
    ck_assert_msg(bt_same_shape(got, want), "%s: shape %s, expected %s (rank %d of %d)", what,
                  bt_shape_str(got, a, sizeof a), bt_shape_str(want, b, sizeof b), tp_rank(),
                  tp_size());
    double scale = 0.0;
    for (int64_t i = 0, n = bt_numel(want); i < n; i++)
        scale = fmax(scale, fabs(bt_get(want, i)));
    for (int64_t i = 0, n = bt_numel(want); i < n; i++) {
        double g = bt_get(got, i), w = bt_get(want, i);
        ck_assert_msg(fabs(g - w) <= 1e-5 * (fabs(w) + scale) + 1e-12,
                      "%s: element %lld is %.9g, expected %.9g (rank %d of %d)", what, (long long)i,
                      g, w, tp_rank(), tp_size());
    }
}

static void assert_value(const char *what, double got, double want, int64_t i) {
    ck_assert_msg(fabs(got - want) <= 1e-6 * (1.0 + fabs(want)),
                  "%s: element %lld is %.9g, expected %.9g (rank %d of %d)", what, (long long)i,
                  got, want, tp_rank(), tp_size());
}

/* Asserts that the last error is exactly `want`, then clears it. */
static void assert_error_is(const char *want) {
    ck_assert_str_eq(bt_last_error(), want);
    bt_error_clear();
}

/* the tp ops recorded on the tape since it was empty, newest first, as "tp_reduce tp_copy" */
static const char *tp_nodes_on_tape(char *buf, size_t size) {
    buf[0] = '\0';
    for (const struct ag_node *n = bt_runtime()->tape; n; n = n->prev)
        if (strncmp(n->op, "tp_", 3) == 0)
            snprintf(buf + strlen(buf), size - strlen(buf), "%s%s", buf[0] ? " " : "", n->op);
    return buf;
}

/* ---- gather/scatter arithmetic: P blocks of shape `block` side by side along d ---- */

/* the flat index, in the whole tensor, of element i of block j */
static int64_t block_to_whole(int ndim, const int64_t *block, int d, int j, int64_t i) {
    int64_t coord[BT_MAX_DIMS];
    for (int k = ndim - 1; k >= 0; k--) {
        coord[k] = i % block[k];
        i /= block[k];
    }
    coord[d] += j * block[d];
    int64_t flat = 0;
    for (int k = 0; k < ndim; k++)
        flat = flat * (k == d ? block[k] * tp_size() : block[k]) + coord[k];
    return flat;
}

/* ---- the ops ---- */

MPI_TEST(test_copy_reduce) {
    struct comm *g = tp_group();
    int P = tp_size(), r = tp_rank();
    /* tp_copy: identity forward (no copy), all-reduce backward */
    bt_tensor *x = uniform(BT_SHAPE(3, 4), 1, true);
    bt_tensor *y = made(tp_copy(x, g), "tp_copy");
    ck_assert_ptr_eq(bt_data(y), bt_data(x));
    if (P == 1) ck_assert_ptr_eq(y, x);
    assert_ok(bt_backward_ex(y, rank_filled(BT_SHAPE(3, 4), r, false), false), "backward");
    for (int64_t i = 0; i < 12; i++) {
        double want = 0.0;
        for (int j = 0; j < P; j++)
            want += rank_val(j, i);
        assert_value("tp_copy dx", bt_get(x->grad, i), want, i);
    }
    /* tp_reduce of a transposed view: the sum over the ranks forward, identity backward */
    bt_tensor *base = rank_filled(BT_SHAPE(4, 3), r, true);
    bt_tensor *xt = bt_transpose(base, 0, 1); /* (3, 4) */
    y = made(tp_reduce(xt, g), "tp_reduce");
    ck_assert_int_eq(y->ndim, 2);
    ck_assert_int_eq(y->shape[0], 3);
    for (int64_t i = 0; i < 12; i++) {
        double want = 0.0; /* element (a, b) of the transpose is base's (b, a) */
        for (int j = 0; j < P; j++)
            want += rank_val(j, (i % 4) * 3 + i / 4);
        assert_value("tp_reduce y", bt_get(y, i), want, i);
    }
    bt_tensor *gy = uniform(BT_SHAPE(3, 4), 2, false);
    assert_ok(bt_backward_ex(y, gy, false), "backward");
    for (int64_t i = 0; i < 12; i++) /* base.grad (4, 3) is gy transposed */
        assert_value("tp_reduce dx", bt_get(base->grad, (i % 4) * 3 + i / 4), bt_get(gy, i), i);
    /* without a gradient to compute, tp_copy records nothing */
    bt_tensor *plain = uniform(BT_SHAPE(2), 3, false);
    ck_assert_ptr_eq(tp_copy(plain, g), plain);
}

/* tp_gather and tp_split along dims 0, 1, 2 and -1 of blocks (2, 3, 2) */
MPI_TEST(test_gather_split) {
    struct comm *g = tp_group();
    int P = tp_size(), r = tp_rank();
    const int dims[] = {0, 1, 2, -1};
    for (int k = 0; k < 4; k++) {
        int d = bt_wrap_dim(dims[k], 3);
        int64_t block[3] = {2, 3, 2}, whole[3] = {2, 3, 2};
        whole[d] *= P;
        int64_t nb = 12;
        /* gather: every rank's block in rank order; backward keeps this rank's block */
        bt_tensor *x = rank_filled(3, block, r, true);
        bt_tensor *y = made(tp_gather(x, g, dims[k]), "tp_gather");
        ck_assert_int_eq(y->shape[d], whole[d]);
        for (int j = 0; j < P; j++)
            for (int64_t i = 0; i < nb; i++)
                assert_value("tp_gather y", bt_get(y, block_to_whole(3, block, d, j, i)),
                             rank_val(j, i), i);
        bt_tensor *gy = uniform(3, whole, 10 + (uint64_t)k, false);
        assert_ok(bt_backward_ex(y, gy, false), "backward");
        for (int64_t i = 0; i < nb; i++)
            assert_value("tp_gather dx", bt_get(x->grad, i),
                         bt_get(gy, block_to_whole(3, block, d, r, i)), i);
        /* split: this rank's block (a view); backward all-gathers */
        bt_tensor *xs = uniform(3, whole, 20 + (uint64_t)k, true);
        y = made(tp_split(xs, g, dims[k]), "tp_split");
        ck_assert_int_eq(y->shape[d], block[d]);
        for (int64_t i = 0; i < nb; i++)
            assert_value("tp_split y", bt_get(y, i), bt_get(xs, block_to_whole(3, block, d, r, i)),
                         i);
        assert_ok(bt_backward_ex(y, rank_filled(3, block, r, false), false), "backward");
        for (int j = 0; j < P; j++)
            for (int64_t i = 0; i < nb; i++)
                assert_value("tp_split dx", bt_get(xs->grad, block_to_whole(3, block, d, j, i)),
                             rank_val(j, i), i);
        bt_step_end();
    }
}

/* the sequence-parallel pair along dims 0, 1, 2 and -1: gather / reduce-scatter */
MPI_TEST(test_sequence_parallel_ops) {
    struct comm *g = tp_group();
    int P = tp_size(), r = tp_rank();
    const int dims[] = {0, 1, 2, -1};
    for (int k = 0; k < 4; k++) {
        int d = bt_wrap_dim(dims[k], 3);
        int64_t block[3] = {2, 3, 2}, whole[3] = {2, 3, 2};
        whole[d] *= P;
        int64_t nb = 12, nw = 12 * P;
        /* tp_gather_seq: all-gather forward; backward sums every rank's gradient of the whole
         * and keeps this rank's block */
        bt_tensor *x = rank_filled(3, block, r, true);
        bt_tensor *y = made(tp_gather_seq(x, g, dims[k]), "tp_gather_seq");
        for (int j = 0; j < P; j++)
            for (int64_t i = 0; i < nb; i++)
                assert_value("tp_gather_seq y", bt_get(y, block_to_whole(3, block, d, j, i)),
                             rank_val(j, i), i);
        assert_ok(bt_backward_ex(y, rank_filled(3, whole, r, false), false), "backward");
        for (int64_t i = 0; i < nb; i++) {
            double want = 0.0;
            for (int j = 0; j < P; j++)
                want += rank_val(j, block_to_whole(3, block, d, r, i));
            assert_value("tp_gather_seq dx", bt_get(x->grad, i), want, i);
        }
        /* tp_scatter_seq: this rank's block of the sum over the ranks; backward all-gathers */
        bt_tensor *xw = rank_filled(3, whole, r, true);
        y = made(tp_scatter_seq(xw, g, dims[k]), "tp_scatter_seq");
        ck_assert_int_eq(y->shape[d], block[d]);
        for (int64_t i = 0; i < nb; i++) {
            double want = 0.0;
            for (int j = 0; j < P; j++)
                want += rank_val(j, block_to_whole(3, block, d, r, i));
            assert_value("tp_scatter_seq y", bt_get(y, i), want, i);
        }
        assert_ok(bt_backward_ex(y, rank_filled(3, block, r, false), false), "backward");
        ck_assert_int_eq(bt_numel(xw->grad), nw);
        for (int j = 0; j < P; j++)
            for (int64_t i = 0; i < nb; i++)
                assert_value("tp_scatter_seq dx",
                             bt_get(xw->grad, block_to_whole(3, block, d, j, i)), rank_val(j, i),
                             i);
        bt_step_end();
    }
}

/* A group of one makes every op the identity: x itself comes back. */
MPI_TEST(test_group_of_one) {
    struct comm *solo = made(comm_split(comm_world(), tp_rank(), 0, "solo"), "comm_split");
    bt_tensor *x = uniform(BT_SHAPE(2, 4), 1, true);
    ck_assert_ptr_eq(tp_copy(x, solo), x);
    ck_assert_ptr_eq(tp_reduce(x, solo), x);
    ck_assert_ptr_eq(tp_gather(x, solo, 1), x);
    ck_assert_ptr_eq(tp_split(x, solo, 1), x);
    ck_assert_ptr_eq(tp_gather_seq(x, solo, 0), x);
    ck_assert_ptr_eq(tp_scatter_seq(x, solo, 0), x);
    ck_assert_ptr_null(bt_runtime()->tape);
    /* the cross-entropy of a group of one is core's */
    bt_tensor *targets = bt_from_data(BT_SHAPE(2), BT_I64, (int64_t[]){3, 0});
    bt_tensor *a = uniform(BT_SHAPE(2, 4), 2, true), *b = uniform(BT_SHAPE(2, 4), 2, true);
    bt_tensor *la = made(bt_cross_entropy(a, targets), "cross_entropy");
    bt_tensor *lb = made(tp_cross_entropy(b, targets, solo), "tp_cross_entropy");
    assert_close("loss", lb, la);
    assert_ok(bt_backward(la), "backward");
    assert_ok(bt_backward(lb), "backward");
    assert_close("dlogits", b->grad, a->grad);
    comm_free(solo);
}

MPI_TEST(test_op_errors) {
    struct comm *g = tp_group();
    int P = tp_size();
    bt_tensor *x = uniform(BT_SHAPE(2, 3), 1, true);
    ck_assert_ptr_null(tp_copy(NULL, g));
    ck_assert_error_contains("tp_copy: x is NULL");
    bt_error("an earlier op failed"); /* a NULL input keeps the first message */
    ck_assert_ptr_null(tp_reduce(NULL, g));
    ck_assert_error_contains("an earlier op failed");
    ck_assert_ptr_null(tp_reduce(x, NULL));
    assert_error_is("tp_reduce: group is NULL");
    bt_tensor *ints = bt_zeros(BT_SHAPE(2, 3), BT_I32, bt_cpu());
    ck_assert_ptr_null(tp_gather(ints, g, 0));
    assert_error_is("tp_gather: x must be float32, got int32 (2,3)");
    ck_assert_ptr_null(tp_gather_seq(x, g, 2));
    assert_error_is("tp_gather_seq: dimension 2 out of range for x (2,3)");
    ck_assert_ptr_null(tp_split(x, g, -3));
    assert_error_is("tp_split: dimension -3 out of range for x (2,3)");
    if (P > 1) { /* every size divides by 1 */
        char want[160];
        bt_tensor *odd = uniform(BT_SHAPE(2, 2 * P + 1), 2, true);
        ck_assert_ptr_null(tp_scatter_seq(odd, g, 1));
        snprintf(want, sizeof want,
                 "tp_scatter_seq: dimension 1 of x (2,%d) has size %d, not divisible by tp=%d",
                 2 * P + 1, 2 * P + 1, P);
        assert_error_is(want);
        ck_assert_ptr_null(tp_split(odd, g, -1));
        ck_assert_error_contains("not divisible by tp=");
    }
    /* cross-entropy: targets are global ids in [0, V/P * P) */
    bt_tensor *logits = uniform(BT_SHAPE(2, 4), 3, true);
    char want[200];
    bt_tensor *bad = bt_from_data(BT_SHAPE(2), BT_I64, (int64_t[]){1, 4 * P});
    ck_assert_ptr_null(tp_cross_entropy(logits, bad, g));
    snprintf(want, sizeof want,
             "tp_cross_entropy: target %d at position 1 is out of range [0, %d) for logits (2,4) "
             "on each of tp=%d ranks (-1 = ignore)",
             4 * P, 4 * P, P);
    assert_error_is(want);
    bt_tensor *short_targets = bt_from_data(BT_SHAPE(3), BT_I64, (int64_t[]){0, 1, 2});
    ck_assert_ptr_null(tp_cross_entropy(logits, short_targets, g));
    ck_assert_error_contains("tp_cross_entropy: targets (3) do not match logits (2,4)");
    ck_assert_ptr_null(tp_cross_entropy(logits, logits, g));
    assert_error_is("tp_cross_entropy: targets must be int32, int64 or uint16, got float32 (2,4)");
    ck_assert_ptr_null(tp_cross_entropy(NULL, bad, g));
    assert_error_is("tp_cross_entropy: logits is NULL");
}

/* ---- the linear layers against nn_linear ---- */

/* column-parallel c_fc (C -> F) against nn_linear, with and without gather_output */
MPI_TEST(test_column_linear) {
    struct comm *g = tp_group();
    for (int gather = 0; gather < 2; gather++) {
        struct bt_rng rng = bt_rng_make(7);
        struct nn_linear *twin = made(nn_linear_create("c_fc", C, F, true, &rng), "nn_linear");
        struct tp_column_linear *m =
            made(tp_column_linear_create("c_fc", C, F, true, g, NULL), "create");
        ck_assert_int_eq(m->out_per_rank, F / tp_size());
        ck_assert_int_eq(m->weight->shape[0], F / tp_size());
        assert_ok(tp_column_linear_load_full(m, twin->weight, twin->bias), "load_full");
        m->gather_output = gather;
        bt_tensor *x = uniform(BT_SHAPE(B, T, C), 11, true);
        bt_tensor *xt = uniform(BT_SHAPE(B, T, C), 11, true);
        bt_tensor *y = made(nn_linear_forward(twin, x), "twin forward");
        bt_tensor *yt = made(tp_column_linear_forward(m, xt), "forward");
        bt_tensor *gy = uniform(BT_SHAPE(B, T, F), 13, false);
        assert_close("output", yt, gather ? y : my_block(y, -1));
        assert_ok(bt_backward_ex(y, gy, false), "twin backward");
        assert_ok(bt_backward_ex(yt, gather ? gy : leaf_copy(my_block(gy, -1), false), false),
                  "backward");
        assert_close("dx", xt->grad, x->grad);
        assert_close("dweight", m->weight->grad, my_block(twin->weight->grad, 0));
        assert_close("dbias", m->bias->grad, my_block(twin->bias->grad, 0));
        nn_module_free(&m->base);
        nn_module_free(&twin->base);
        bt_step_end();
    }
}

/* row-parallel c_proj (F -> C) against nn_linear, with the input split or whole */
MPI_TEST(test_row_linear) {
    struct comm *g = tp_group();
    for (int parallel_input = 0; parallel_input < 2; parallel_input++) {
        struct bt_rng rng = bt_rng_make(8);
        struct nn_linear *twin = made(nn_linear_create("c_proj", F, C, true, &rng), "nn_linear");
        struct tp_row_linear *m =
            made(tp_row_linear_create("c_proj", F, C, true, g, NULL), "create");
        ck_assert(m->input_is_parallel); /* the default */
        ck_assert_int_eq(m->weight->shape[1], F / tp_size());
        assert_ok(tp_row_linear_load_full(m, twin->weight, twin->bias), "load_full");
        m->input_is_parallel = parallel_input;
        bt_tensor *x = uniform(BT_SHAPE(B, T, F), 12, true);
        bt_tensor *x_values = uniform(BT_SHAPE(B, T, F), 12, false);
        bt_tensor *xt = leaf_copy(parallel_input ? my_block(x_values, -1) : x_values, true);
        bt_tensor *y = made(nn_linear_forward(twin, x), "twin forward");
        bt_tensor *yt = made(tp_row_linear_forward(m, xt), "forward");
        assert_close("output", yt, y); /* replicated */
        bt_tensor *gy = uniform(BT_SHAPE(B, T, C), 14, false);
        assert_ok(bt_backward_ex(y, gy, false), "twin backward");
        assert_ok(bt_backward_ex(yt, gy, false), "backward");
        assert_close("dx", xt->grad, parallel_input ? my_block(x->grad, -1) : x->grad);
        assert_close("dweight", m->weight->grad, my_block(twin->weight->grad, 1));
        assert_close("dbias", m->bias->grad, twin->bias->grad);
        nn_module_free(&m->base);
        nn_module_free(&twin->base);
        bt_step_end();
    }
}

/* GPT-2's c_attn (q, k, v stacked) and a grouped-query one (q 8 rows, k and v 4): each rank holds
 * its slice of every block, block after block */
MPI_TEST(test_fused_column_blocks) {
    struct comm *g = tp_group();
    int P = tp_size(), r = tp_rank();
    const int64_t layouts[2][3] = {{4, 4, 4}, {8, 4, 4}};
    for (int k = 0; k < 2; k++) {
        const int64_t *blocks = layouts[k];
        int64_t out = blocks[0] + blocks[1] + blocks[2];
        struct bt_rng rng = bt_rng_make(9);
        struct nn_linear *twin = made(nn_linear_create("c_attn", 4, out, true, &rng), "nn_linear");
        rng = bt_rng_make(9); /* drawn as the twin was */
        struct tp_column_linear *m = made(
            tp_column_linear_create_fused("c_attn", 4, 3, blocks, true, g, &rng), "create_fused");
        ck_assert_int_eq(m->out_per_rank, out / P);
        bt_tensor *x = uniform(BT_SHAPE(B, T, 4), 15, true);
        bt_tensor *xt = uniform(BT_SHAPE(B, T, 4), 15, true);
        bt_tensor *y = made(nn_linear_forward(twin, x), "twin forward");
        bt_tensor *yt = made(tp_column_linear_forward(m, xt), "forward");
        bt_tensor *gy = uniform(BT_SHAPE(B, T, out), 16, false);
        bt_tensor *gy_mine[3];
        int64_t full_row = 0, local_row = 0;
        for (int b = 0; b < 3; b++) {
            int64_t n = blocks[b] / P, from = full_row + r * n;
            assert_close("output block", twin_slice(yt, -1, local_row, n),
                         twin_slice(y, -1, from, n));
            assert_close("weight block", twin_slice(m->weight, 0, local_row, n),
                         twin_slice(twin->weight, 0, from, n));
            assert_close("bias block", twin_slice(m->bias, 0, local_row, n),
                         twin_slice(twin->bias, 0, from, n));
            gy_mine[b] = twin_slice(gy, -1, from, n);
            full_row += blocks[b];
            local_row += n;
        }
        assert_ok(bt_backward_ex(y, gy, false), "twin backward");
        assert_ok(bt_backward_ex(yt, made(bt_cat(gy_mine, 3, -1), "cat"), false), "backward");
        assert_close("dx", xt->grad, x->grad);
        full_row = local_row = 0;
        for (int b = 0; b < 3; b++) {
            int64_t n = blocks[b] / P, from = full_row + r * n;
            assert_close("dweight block", twin_slice(m->weight->grad, 0, local_row, n),
                         twin_slice(twin->weight->grad, 0, from, n));
            assert_close("dbias block", twin_slice(m->bias->grad, 0, local_row, n),
                         twin_slice(twin->bias->grad, 0, from, n));
            full_row += blocks[b];
            local_row += n;
        }
        nn_module_free(&m->base);
        nn_module_free(&twin->base);
        bt_step_end();
    }
}

/* Megatron's MLP, c_proj(gelu(c_fc(x))), on `group` against two nn_linears from `seed`; with
 * sequence_parallel the input and output are this rank's slices along T. */
static void check_mlp(struct comm *group, uint64_t seed, bool sequence_parallel) {
    int P = comm_size(group);
    struct bt_rng rng = bt_rng_make(seed);
    struct nn_linear *fc = made(nn_linear_create("c_fc", C, F, true, &rng), "nn_linear");
    struct nn_linear *proj = made(nn_linear_create("c_proj", F, C, true, &rng), "nn_linear");
    struct tp_column_linear *tfc =
        made(tp_column_linear_create("c_fc", C, F, true, group, NULL), "column create");
    struct tp_row_linear *tproj =
        made(tp_row_linear_create("c_proj", F, C, true, group, NULL), "row create");
    assert_ok(tp_column_linear_load_full(tfc, fc->weight, fc->bias), "column load_full");
    assert_ok(tp_row_linear_load_full(tproj, proj->weight, proj->bias), "row load_full");
    tfc->sequence_parallel = tproj->sequence_parallel = sequence_parallel;
    int64_t Tp = T / P, t0 = comm_rank(group) * Tp; /* this rank's positions under SP */

    bt_tensor *x = uniform(BT_SHAPE(B, T, C), seed + 1, true);
    bt_tensor *x_values = uniform(BT_SHAPE(B, T, C), seed + 1, false);
    bt_tensor *xt = leaf_copy(sequence_parallel ? twin_slice(x_values, 1, t0, Tp) : x_values, true);
    bt_tensor *yt =
        made(tp_row_linear_forward(tproj, bt_gelu(tp_column_linear_forward(tfc, xt), BT_GELU_TANH)),
             "tp forward");
    /* two collectives per MLP: g's all-reduce forward, f's backward (or their SP twins; under SP
     * the replicated c_proj bias, added on this rank's positions only, goes through tp_copy) */
    char nodes[128];
    ck_assert_str_eq(tp_nodes_on_tape(nodes, sizeof nodes),
                     P == 1              ? ""
                     : sequence_parallel ? "tp_copy tp_scatter_seq tp_gather_seq"
                                         : "tp_reduce tp_copy");
    bt_tensor *y =
        made(nn_linear_forward(proj, bt_gelu(nn_linear_forward(fc, x), BT_GELU_TANH)), "twin");

    bt_tensor *gy = uniform(BT_SHAPE(B, T, C), seed + 2, false);
    assert_close("output", yt, sequence_parallel ? twin_slice(y, 1, t0, Tp) : y);
    assert_ok(bt_backward_ex(y, gy, false), "twin backward");
    assert_ok(bt_backward_ex(
                  yt, sequence_parallel ? leaf_copy(twin_slice(gy, 1, t0, Tp), false) : gy, false),
              "backward");
    assert_close("dx", xt->grad, sequence_parallel ? twin_slice(x->grad, 1, t0, Tp) : x->grad);
    int64_t Fp = F / P, f0 = comm_rank(group) * Fp;
    assert_close("c_fc dweight", tfc->weight->grad, twin_slice(fc->weight->grad, 0, f0, Fp));
    assert_close("c_fc dbias", tfc->bias->grad, twin_slice(fc->bias->grad, 0, f0, Fp));
    assert_close("c_proj dweight", tproj->weight->grad, twin_slice(proj->weight->grad, 1, f0, Fp));
    assert_close("c_proj dbias", tproj->bias->grad, proj->bias->grad); /* summed under SP */
    nn_module_free(&tfc->base);
    nn_module_free(&tproj->base);
    nn_module_free(&fc->base);
    nn_module_free(&proj->base);
}

MPI_TEST(test_mlp_pair) {
    check_mlp(tp_group(), 21, false);
}

MPI_TEST(test_mlp_sequence_parallel) {
    check_mlp(tp_group(), 31, true);
}

/* two column layers reading the same x (LLaMA's gate and up) share one input collective through
 * tp_column_input: one tp_copy (or tp_gather_seq) on the tape, and the gradient of x is the sum of
 * both layers' (its backward all-reduces the sum once) */
static void check_shared_input(bool sequence_parallel) {
    struct comm *g = tp_group();
    int P = tp_size();
    struct bt_rng rng = bt_rng_make(91);
    struct nn_linear *gate = made(nn_linear_create("gate", C, F, false, &rng), "nn_linear");
    struct nn_linear *up = made(nn_linear_create("up", C, F, false, &rng), "nn_linear");
    rng = bt_rng_make(91);
    struct tp_column_linear *tgate =
        made(tp_column_linear_create("gate", C, F, false, g, &rng), "");
    struct tp_column_linear *tup = made(tp_column_linear_create("up", C, F, false, g, &rng), "");
    tgate->input_is_gathered = tup->input_is_gathered = true;
    tgate->sequence_parallel = tup->sequence_parallel = sequence_parallel;
    int64_t Tp = T / P, t0 = tp_rank() * Tp;
    bt_tensor *x = uniform(BT_SHAPE(B, T, C), 92, true);
    bt_tensor *x_values = uniform(BT_SHAPE(B, T, C), 92, false);
    bt_tensor *xt = leaf_copy(sequence_parallel ? twin_slice(x_values, 1, t0, Tp) : x_values, true);
    bt_tensor *xin = made(tp_column_input(tgate, xt), "tp_column_input");
    bt_tensor *yt =
        bt_mul(tp_column_linear_forward(tgate, xin), tp_column_linear_forward(tup, xin));
    char nodes[128];
    ck_assert_str_eq(tp_nodes_on_tape(nodes, sizeof nodes), P == 1              ? ""
                                                            : sequence_parallel ? "tp_gather_seq"
                                                                                : "tp_copy");
    bt_tensor *y = bt_mul(nn_linear_forward(gate, x), nn_linear_forward(up, x));
    assert_close("output", yt, my_block(y, -1));
    bt_tensor *gy = uniform(BT_SHAPE(B, T, F), 93, false);
    assert_ok(bt_backward_ex(y, gy, false), "twin backward");
    assert_ok(bt_backward_ex(yt, leaf_copy(my_block(gy, -1), false), false), "backward");
    assert_close("dx", xt->grad, sequence_parallel ? twin_slice(x->grad, 1, t0, Tp) : x->grad);
    assert_close("gate dweight", tgate->weight->grad, my_block(gate->weight->grad, 0));
    assert_close("up dweight", tup->weight->grad, my_block(up->weight->grad, 0));
    nn_module_free(&tgate->base);
    nn_module_free(&tup->base);
    nn_module_free(&gate->base);
    nn_module_free(&up->base);
    bt_step_end();
}

MPI_TEST(test_column_shared_input) {
    check_shared_input(false);
    check_shared_input(true);
}

/* a dp × tp grid (tp = 2 where the world is even): each tp group runs its own MLP on its own
 * input (seeded by dp_rank) while the other group does the same */
MPI_TEST(test_grid_subgroups) {
    int W = tp_size(), tp = W % 2 == 0 ? 2 : 1;
    struct grid grid;
    assert_ok(grid_init(&grid, comm_world(), W / tp, tp, 1), "grid_init");
    ck_assert_int_eq(comm_size(grid.tp_group), tp);
    check_mlp(grid.tp_group, 100 + 10 * (uint64_t)grid.dp_rank, false);
    bt_step_end();
    check_mlp(grid.tp_group, 200 + 10 * (uint64_t)grid.dp_rank, true);
    grid_free(&grid);
}

/* ---- embedding and cross-entropy ---- */

static const int64_t ids_data[B * T] = {0, 15, 3, 8, 12, 7, 4, 11}; /* every rank's range */

MPI_TEST(test_vocab_embedding) {
    struct comm *g = tp_group();
    int P = tp_size(), r = tp_rank();
    for (int sp = 0; sp < 2; sp++) {
        struct bt_rng rng = bt_rng_make(41);
        struct nn_embedding *twin = made(nn_embedding_create("wte", V, C, &rng), "nn_embedding");
        struct tp_vocab_embedding *m =
            made(tp_vocab_embedding_create("wte", V, C, g, NULL), "create");
        ck_assert_int_eq(m->vocab_start, r * (V / P));
        assert_ok(tp_vocab_embedding_load_full(m, twin->weight), "load_full");
        m->sequence_parallel = sp;
        bt_tensor *ids = bt_from_data(BT_SHAPE(B, T), BT_I64, ids_data);
        bt_tensor *ids32 = made(bt_to_dtype(ids, sp ? BT_U16 : BT_I32), "to_dtype");
        bt_tensor *y = made(nn_embedding_forward(twin, ids), "twin forward");
        bt_tensor *yt = made(tp_vocab_embedding_forward(m, ids32), "forward");
        int64_t Tp = T / P;
        assert_close("output", yt, sp ? twin_slice(y, 1, r * Tp, Tp) : y);
        bt_tensor *gy = uniform(BT_SHAPE(B, T, C), 42, false);
        assert_ok(bt_backward_ex(y, gy, false), "twin backward");
        assert_ok(
            bt_backward_ex(yt, sp ? leaf_copy(twin_slice(gy, 1, r * Tp, Tp), false) : gy, false),
            "backward");
        /* whole under SP too: the backward all-gathers the output gradient of every position */
        assert_close("dweight", m->weight->grad, my_block(twin->weight->grad, 0));
        nn_module_free(&m->base);
        nn_module_free(&twin->base);
        bt_step_end();
    }
}

/* logits (B, T, V) with large offsets on two rows (stability) and ignored targets */
static bt_tensor *ce_logits(void) {
    bt_tensor *l = bt_mul_scalar(uniform(BT_SHAPE(B, T, V), 51, false), 4.0);
    for (int64_t v = 0; v < V; v++) {
        bt_set(l, 1 * V + v, bt_get(l, 1 * V + v) + 1000.0);
        bt_set(l, 6 * V + v, bt_get(l, 6 * V + v) - 500.0);
    }
    return l;
}

static const int64_t targets_data[B * T] = {3, -1, 15, 0, 9, -1, 12, 5};

MPI_TEST(test_vocab_cross_entropy) {
    struct comm *g = tp_group();
    for (int pass = 0; pass < 2; pass++) { /* int64 targets, then int32 ones all ignored */
        bt_tensor *targets = bt_from_data(BT_SHAPE(B, T), BT_I64, targets_data);
        if (pass == 1)
            targets = bt_from_data(BT_SHAPE(B, T), BT_I32,
                                   (int32_t[B * T]){-1, -1, -1, -1, -1, -1, -1, -1});
        bt_tensor *values = ce_logits();
        bt_tensor *l = leaf_copy(values, true), *lt = leaf_copy(values, true);
        bt_tensor *loss = made(bt_cross_entropy(l, targets), "cross_entropy");
        bt_tensor *mine = bt_narrow(lt, -1, tp_rank() * (V / tp_size()), V / tp_size()); /* view */
        bt_tensor *loss_t = made(tp_cross_entropy(mine, targets, g), "tp_cross_entropy");
        ck_assert_int_eq(loss_t->ndim, 0);
        assert_close("loss", loss_t, loss);
        if (pass == 1) ck_assert(bt_item(loss_t) == 0.0);
        assert_ok(bt_backward_ex(loss, bt_scalar(2.5), false), "twin backward");
        assert_ok(bt_backward_ex(loss_t, bt_scalar(2.5), false), "backward");
        assert_close("dlogits", my_block(lt->grad, -1), my_block(l->grad, -1));
        bt_step_end();
    }
}

/* finite differences, on a group of one at every world size (perturbing one rank's logit moves
 * every rank's loss, so the check is per rank) */
static bt_tensor *cross_entropy_fn(bt_tensor **in, void *ctx) {
    bt_tensor *targets = bt_from_data(BT_SHAPE(B, T), BT_I64, targets_data);
    return tp_cross_entropy(in[0], targets, ctx);
}

MPI_TEST(test_cross_entropy_gradcheck) {
    struct comm *solo = made(comm_split(comm_world(), tp_rank(), 0, "solo"), "comm_split");
    bt_tensor *logits = test_param(BT_SHAPE(B, T, V), 61, -2.0f, 2.0f);
    GRADCHECK("tp_cross_entropy", cross_entropy_fn, &logits, 1, solo);
    comm_free(solo);
}

/* embedding -> tanh -> column-parallel LM head -> cross-entropy, with ignored targets */
MPI_TEST(test_embedding_cross_entropy_pair) {
    struct comm *g = tp_group();
    struct bt_rng rng = bt_rng_make(71);
    struct nn_embedding *wte = made(nn_embedding_create("wte", V, C, &rng), "nn_embedding");
    struct nn_linear *head = made(nn_linear_create("lm_head", C, V, false, &rng), "nn_linear");
    rng = bt_rng_make(71); /* the TP layers draw the same full weights */
    struct tp_vocab_embedding *twte = made(tp_vocab_embedding_create("wte", V, C, g, &rng), "emb");
    struct tp_column_linear *thead =
        made(tp_column_linear_create("lm_head", C, V, false, g, &rng), "column");
    bt_tensor *ids = bt_from_data(BT_SHAPE(B, T), BT_I64, ids_data);
    bt_tensor *targets = bt_from_data(BT_SHAPE(B, T), BT_I64, targets_data);
    bt_tensor *loss =
        bt_cross_entropy(nn_linear_forward(head, bt_tanh(nn_embedding_forward(wte, ids))), targets);
    bt_tensor *loss_t = tp_cross_entropy(
        tp_column_linear_forward(thead, bt_tanh(tp_vocab_embedding_forward(twte, ids))), targets,
        g);
    made(loss, "twin");
    made(loss_t, "tp");
    assert_close("loss", loss_t, loss);
    assert_ok(bt_backward(loss), "twin backward");
    assert_ok(bt_backward(loss_t), "backward");
    assert_close("wte dweight", twte->weight->grad, my_block(wte->weight->grad, 0));
    assert_close("lm_head dweight", thead->weight->grad, my_block(head->weight->grad, 0));
    nn_module_free(&twte->base);
    nn_module_free(&thead->base);
    nn_module_free(&wte->base);
    nn_module_free(&head->base);
}

/* GPT-2's tied LM head: the logits use the embedding's own (V/P, C) rows */
MPI_TEST(test_tied_lm_head) {
    struct comm *g = tp_group();
    struct bt_rng rng = bt_rng_make(81);
    struct nn_embedding *wte = made(nn_embedding_create("wte", V, C, &rng), "nn_embedding");
    struct tp_vocab_embedding *twte =
        made(tp_vocab_embedding_create("wte", V, C, g, NULL), "create");
    assert_ok(tp_vocab_embedding_load_full(twte, wte->weight), "load_full");
    bt_tensor *ids = bt_from_data(BT_SHAPE(B, T), BT_I64, ids_data);
    bt_tensor *targets = bt_from_data(BT_SHAPE(B, T), BT_I64, targets_data);
    bt_tensor *h = bt_tanh(nn_embedding_forward(wte, ids));
    bt_tensor *loss = made(bt_cross_entropy(bt_linear(h, wte->weight, NULL), targets), "twin");
    bt_tensor *ht = bt_tanh(tp_vocab_embedding_forward(twte, ids));
    bt_tensor *logits_t = made(tp_vocab_embedding_attend(twte, ht), "attend");
    ck_assert_int_eq(logits_t->shape[2], V / tp_size());
    bt_tensor *loss_t = made(tp_cross_entropy(logits_t, targets, g), "tp");
    assert_close("loss", loss_t, loss);
    assert_ok(bt_backward(loss), "twin backward");
    assert_ok(bt_backward(loss_t), "backward");
    assert_close("wte dweight", twte->weight->grad, my_block(wte->weight->grad, 0));
    nn_module_free(&twte->base);
    nn_module_free(&wte->base);
}

/* ---- construction ---- */

/* an rng draws the full tensors as the single-rank layers would; names are theirs */
MPI_TEST(test_create_from_rng) {
    struct comm *g = tp_group();
    struct bt_rng a = bt_rng_make(91), b = bt_rng_make(91);
    struct nn_linear *fc = made(nn_linear_create("c_fc", C, F, true, &a), "nn_linear");
    struct nn_linear *proj = made(nn_linear_create("c_proj", F, C, true, &a), "nn_linear");
    struct nn_embedding *wte = made(nn_embedding_create("wte", V, C, &a), "nn_embedding");
    struct nn_module *root = made(nn_module_create("mlp"), "container");
    struct tp_column_linear *tfc =
        made(tp_column_linear_create("c_fc", C, F, true, g, &b), "column");
    struct tp_row_linear *tproj = made(tp_row_linear_create("c_proj", F, C, true, g, &b), "row");
    struct tp_vocab_embedding *twte =
        made(tp_vocab_embedding_create("wte", V, C, g, &b), "embedding");
    ck_assert_uint_eq(a.offset, b.offset);
    assert_close("c_fc weight", tfc->weight, my_block(fc->weight, 0));
    assert_close("c_fc bias", tfc->bias, my_block(fc->bias, 0));
    assert_close("c_proj weight", tproj->weight, my_block(proj->weight, 1));
    assert_close("c_proj bias", tproj->bias, proj->bias);
    assert_close("wte weight", twte->weight, my_block(wte->weight, 0));
    made(nn_module_add_child(root, &tfc->base), "add_child");
    made(nn_module_add_child(root, &tproj->base), "add_child");
    struct nn_param_list list;
    assert_ok(nn_named_parameters(root, &list), "named_parameters");
    ck_assert_int_eq(list.count, 4);
    ck_assert_str_eq(list.names[0], "c_fc.weight");
    ck_assert_str_eq(list.names[1], "c_fc.bias");
    ck_assert_str_eq(list.names[2], "c_proj.weight");
    ck_assert_str_eq(list.names[3], "c_proj.bias");
    nn_param_list_free(&list);
    nn_module_free(root);
    nn_module_free(&twte->base);
    nn_module_free(&fc->base);
    nn_module_free(&proj->base);
    nn_module_free(&wte->base);
}

MPI_TEST(test_errors_divisible) {
    struct comm *g = tp_group();
    int P = tp_size();
    ck_assert_int_eq(tp_divide("column-parallel linear c_fc", "out_features", 100, 3), -1);
    assert_error_is("column-parallel linear c_fc: out_features 100 not divisible by tp=3");
    ck_assert_int_eq(tp_divide("attention h.0.attn", "n_head", 12, 4), 3);
    ck_assert(!bt_has_error());
    if (P == 1) return; /* every size divides by 1 */
    char want[160];
    int64_t odd = 4 * P + 1;
    ck_assert_ptr_null(tp_column_linear_create("c_fc", C, odd, true, g, NULL));
    snprintf(want, sizeof want,
             "column-parallel linear c_fc: out_features %lld not divisible by tp=%d",
             (long long)odd, P);
    assert_error_is(want);
    ck_assert_ptr_null(tp_row_linear_create("c_proj", odd, C, true, g, NULL));
    snprintf(want, sizeof want,
             "row-parallel linear c_proj: in_features %lld not divisible by tp=%d", (long long)odd,
             P);
    assert_error_is(want);
    ck_assert_ptr_null(tp_vocab_embedding_create("wte", odd, C, g, NULL));
    snprintf(want, sizeof want,
             "vocab-parallel embedding wte: num_embeddings %lld not divisible by tp=%d",
             (long long)odd, P);
    assert_error_is(want);
    ck_assert_ptr_null(
        tp_column_linear_create_fused("c_attn", C, 3, (int64_t[]){4, odd, 4}, true, g, NULL));
    snprintf(want, sizeof want,
             "column-parallel linear c_attn: output block 1 of 3 has %lld rows, not divisible by "
             "tp=%d",
             (long long)odd, P);
    assert_error_is(want);
}

MPI_TEST(test_errors_layers) {
    struct comm *g = tp_group();
    /* construction */
    ck_assert_ptr_null(tp_column_linear_create("c_fc", C, F, true, NULL, NULL));
    assert_error_is("column-parallel linear c_fc: group is NULL");
    ck_assert_ptr_null(tp_row_linear_create("c_proj", 0, C, true, g, NULL));
    assert_error_is("row-parallel linear c_proj: in_features must be positive, got 0");
    ck_assert_ptr_null(tp_vocab_embedding_create("wte", V, -2, g, NULL));
    assert_error_is("vocab-parallel embedding wte: embedding_dim must be positive, got -2");
    ck_assert_ptr_null(
        tp_column_linear_create_fused("c_attn", C, 5, (int64_t[]){4, 4, 4, 4, 4}, true, g, NULL));
    assert_error_is("column-parallel linear c_attn: 5 output blocks, expected 1 to 4");
    ck_assert_ptr_null(tp_column_linear_create("bad.name", C, F, true, g, NULL));
    ck_assert_error_contains("must not contain");

    /* loading the full tensors */
    struct tp_column_linear *fc = made(tp_column_linear_create("c_fc", C, F, true, g, NULL), "c");
    struct tp_row_linear *proj = made(tp_row_linear_create("c_proj", F, C, false, g, NULL), "r");
    struct tp_vocab_embedding *wte = made(tp_vocab_embedding_create("wte", V, C, g, NULL), "e");
    bt_tensor *w = bt_zeros(BT_SHAPE(C, F), BT_F32, bt_cpu()),
              *b = bt_zeros(BT_SHAPE(F), BT_F32, bt_cpu());
    ck_assert_int_eq(tp_column_linear_load_full(fc, w, b), BT_ERR);
    assert_error_is("column-parallel linear c_fc: full weight is float32 (6,16), expected a float "
                    "tensor (16,6)");
    bt_tensor *wt = bt_zeros(BT_SHAPE(F, C), BT_F32, bt_cpu());
    ck_assert_int_eq(tp_column_linear_load_full(fc, wt, NULL), BT_ERR);
    assert_error_is("column-parallel linear c_fc: the layer has a bias but no full bias was given");
    ck_assert_int_eq(tp_row_linear_load_full(proj, w, b), BT_ERR);
    assert_error_is("row-parallel linear c_proj: a full bias (16) was given but the layer has no "
                    "bias");
    bt_tensor *ids_as_weight = bt_zeros(BT_SHAPE(V, C), BT_I64, bt_cpu());
    ck_assert_int_eq(tp_vocab_embedding_load_full(wte, ids_as_weight), BT_ERR);
    assert_error_is("vocab-parallel embedding wte: full weight is int64 (16,6), expected a float "
                    "tensor (16,6)");

    /* forwards name the module */
    bt_tensor *x = uniform(BT_SHAPE(B, T, C + 1), 1, true);
    ck_assert_ptr_null(tp_column_linear_forward(fc, x));
    ck_assert_error_contains("(in c_fc)");
    proj->input_is_parallel = false;
    proj->sequence_parallel = true;
    ck_assert_ptr_null(tp_row_linear_forward(proj, uniform(BT_SHAPE(B, T, F), 2, true)));
    assert_error_is("row-parallel linear: sequence_parallel needs input_is_parallel (in c_proj)");
    struct tp_column_linear *attn = made(
        tp_column_linear_create_fused("c_attn", C, 3, (int64_t[]){4, 4, 4}, true, g, NULL), "f");
    attn->gather_output = true;
    ck_assert_ptr_null(tp_column_linear_forward(attn, uniform(BT_SHAPE(B, T, C), 3, true)));
    assert_error_is("column-parallel linear: gather_output needs one output block (this layer has "
                    "3) and no sequence_parallel (in c_attn)");
    bt_tensor *bad_ids = bt_from_data(BT_SHAPE(3), BT_I64, (int64_t[]){0, V, 1});
    ck_assert_ptr_null(tp_vocab_embedding_forward(wte, bad_ids));
    assert_error_is("vocab-parallel embedding: index 16 at position 1 is out of range [0, 16) (in "
                    "wte)");
    ck_assert_ptr_null(tp_vocab_embedding_forward(wte, x));
    assert_error_is("vocab-parallel embedding: indices must be int32, int64 or uint16, got "
                    "float32 (2,4,7) (in wte)");
    ck_assert_ptr_null(tp_row_linear_forward(NULL, x));
    assert_error_is("row-parallel linear: module is NULL");
    nn_module_free(&fc->base);
    nn_module_free(&proj->base);
    nn_module_free(&wte->base);
    nn_module_free(&attn->base);
}

static Suite *tp_suite(void) {
    Suite *s = suite_create("tp");
    bt_suite_add(s, test_copy_reduce);
    bt_suite_add(s, test_gather_split);
    bt_suite_add(s, test_sequence_parallel_ops);
    bt_suite_add(s, test_group_of_one);
    bt_suite_add(s, test_op_errors);
    bt_suite_add(s, test_column_linear);
    bt_suite_add(s, test_row_linear);
    bt_suite_add(s, test_fused_column_blocks);
    bt_suite_add(s, test_mlp_pair);
    bt_suite_add(s, test_mlp_sequence_parallel);
    bt_suite_add(s, test_grid_subgroups);
    bt_suite_add(s, test_column_shared_input);
    bt_suite_add(s, test_vocab_embedding);
    bt_suite_add(s, test_vocab_cross_entropy);
    bt_suite_add(s, test_cross_entropy_gradcheck);
    bt_suite_add(s, test_embedding_cross_entropy_pair);
    bt_suite_add(s, test_tied_lm_head);
    bt_suite_add(s, test_create_from_rng);
    bt_suite_add(s, test_errors_divisible);
    bt_suite_add(s, test_errors_layers);
    return s;
}

MPI_TEST_MAIN(tp_suite)
