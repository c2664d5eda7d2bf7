/* Tensor-parallel model vs single-rank twin: the shared tiny models, batches and rank-naming
 * assertions of the TP tests (see twin_check.h). */
#include "tests/twin_check.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/runtime.h"

int twin_world_size(void) {
    return comm_size(comm_world());
}

int twin_world_rank(void) {
    return comm_rank(comm_world());
}

/* ---- models and batches ---- */

struct model_config twin_tiny_gpt(int64_t vocab_size, int64_t block_size, int64_t n_head,
                                  int64_t n_embd, int64_t ffn_hidden, bool bias, bool tied,
                                  struct comm *tp_group) {
    return (struct model_config){.arch = MODEL_GPT,
                                 .vocab_size = vocab_size,
                                 .block_size = block_size,
                                 .n_layer = 2,
                                 .n_head = n_head,
                                 .n_kv_head = n_head,
                                 .n_embd = n_embd,
                                 .ffn_hidden = ffn_hidden,
                                 .dropout = 0.0,
                                 .bias = bias,
                                 .gelu = BT_GELU_TANH,
                                 .norm_eps = 1e-5,
                                 .tie_embeddings = tied,
                                 .tp_group = tp_group};
}

struct model *twin_model_create(const struct model_config *cfg, uint64_t seed) {
    struct model *m = model_create(cfg, seed);
    ck_assert_msg(m != NULL, "model_create failed on rank %d: %s", twin_world_rank(),
                  bt_last_error());
    return m;
}

void twin_assert_create_fails(const struct model_config *cfg, const char *want) {
    struct model *m = model_create(cfg, 1);
    ck_assert_msg(m == NULL, "model_create accepted a bad config (rank %d)", twin_world_rank());
    ck_assert_str_eq(bt_last_error(), want);
    bt_error_clear();
}

bt_tensor *twin_tokens_at(int64_t batch, int64_t t0, int64_t n, int64_t vocab_size, int shift) {
    bt_tensor *t = bt_empty(BT_SHAPE(batch, n), BT_I64, bt_cpu());
    for (int64_t b = 0; b < batch; b++)
        for (int64_t i = 0, s = t0; i < n; i++, s++)
            bt_set(t, b * n + i, (double)((b * 7 + s * 3 + s * s + shift) % vocab_size));
    return t;
}

bt_tensor *twin_tokens(int64_t batch, int64_t T, int64_t vocab_size, int shift) {
    return twin_tokens_at(batch, 0, T, vocab_size, shift);
}

void twin_params_of(struct model *full, struct model *tp, struct nn_param_list *pf,
                    struct nn_param_list *pt) {
    ck_assert(model_parameters(full, pf) == BT_OK);
    ck_assert(model_parameters(tp, pt) == BT_OK);
    ck_assert_int_eq(pf->count, pt->count);
    for (int64_t i = 0; i < pf->count; i++)
        ck_assert_str_eq(pt->names[i], pf->names[i]);
}

/* ---- comparisons ---- */

bt_tensor *twin_slice(bt_tensor *t, int dim, int64_t start, int64_t n) {
    bool grad_mode = bt_set_grad_enabled(false);
    bt_tensor *v = bt_narrow(t, dim, start, n);
    bt_set_grad_enabled(grad_mode);
    ck_assert_msg(v != NULL, "slice: %s", bt_last_error());
    return v;
}

double twin_max_abs(const bt_tensor *t) {
    double scale = 0.0;
    for (int64_t i = 0, n = bt_numel(t); i < n; i++)
        scale = fmax(scale, fabs(bt_get(t, i)));
    return scale;
}

void twin_assert_rel(const char *what, double got, double want, double tol) {
    ck_assert_msg(fabs(got - want) <= tol * fabs(want), "%s: %.9g, expected %.9g (rank %d of %d)",
                  what, got, want, twin_world_rank(), twin_world_size());
}

/* the same dtype and shape, or the test fails naming both */
static void assert_same_layout(const char *what, const bt_tensor *got, const bt_tensor *want) {
    char a[96], b[96];
    ck_assert_msg(got && want, "%s: missing tensor on rank %d", what, twin_world_rank());
    ck_assert_msg(got->dtype == want->dtype && bt_same_shape(got, want),
                  "%s: %s %s, expected %s %s (rank %d of %d)", what, bt_dtype_name(got->dtype),
                  bt_shape_str(got, a, sizeof a), bt_dtype_name(want->dtype),
                  bt_shape_str(want, b, sizeof b), twin_world_rank(), twin_world_size());
}

void twin_assert_close_scaled(const char *what, const bt_tensor *got, const bt_tensor *want,
                              double tol, double scale) {
    assert_same_layout(what, got, want);
    for (int64_t i = 0, n = bt_numel(want); i < n; i++) {
        double g = bt_get(got, i), w = bt_get(want, i);
        ck_assert_msg(fabs(g - w) <= tol * scale + 1e-12,
                      "%s: element %lld is %.9g, expected %.9g (scale %.3g, rank %d of %d)", what,
                      (long long)i, g, w, scale, twin_world_rank(), twin_world_size());
    }
}

void twin_assert_close(const char *what, const bt_tensor *got, const bt_tensor *want, double tol) {
    if (tol >= 0) {
        twin_assert_close_scaled(what, got, want, tol, want ? twin_max_abs(want) : 0.0);
        return;
    }
    assert_same_layout(what, got, want);
    ck_assert_msg(memcmp(bt_data(got), bt_data(want), bt_nbytes(want)) == 0,
                  "%s: not bitwise equal (rank %d of %d)", what, twin_world_rank(),
                  twin_world_size());
}

void twin_assert_slice_close(const char *name, bt_tensor *got, bt_tensor *full, int n_blocks,
                             double tol) {
    char what[160];
    int P = twin_world_size(), r = twin_world_rank();
    ck_assert_int_eq(got->ndim, full->ndim);
    int dim = -1;
    for (int d = 0; d < got->ndim; d++)
        if (got->shape[d] != full->shape[d]) {
            ck_assert_msg(dim < 0 && got->shape[d] * P == full->shape[d],
                          "%s: shape does not split by tp=%d", name, P);
            dim = d;
        }
    double scale = twin_max_abs(full); /* the whole full tensor's, not a block's */
    if (dim < 0) {
        twin_assert_close_scaled(name, got, full, tol, scale);
        return;
    }
    int64_t local = got->shape[dim] / n_blocks, whole = full->shape[dim] / n_blocks;
    for (int b = 0; b < n_blocks; b++) {
        if (n_blocks > 1)
            snprintf(what, sizeof what, "%s block %d of %d", name, b, n_blocks);
        else
            snprintf(what, sizeof what, "%s", name);
        twin_assert_close_scaled(what, twin_slice(got, dim, b * local, local),
                                 twin_slice(full, dim, b * whole + r * local, local), tol, scale);
    }
}

void twin_assert_same_on_every_rank(const char *name, const bt_tensor *grad) {
    bt_tensor *hi = bt_tensor_new(grad->ndim, grad->shape, BT_F32, bt_cpu());
    bt_tensor *lo = bt_tensor_new(grad->ndim, grad->shape, BT_F32, bt_cpu());
    ck_assert(bt_copy_(hi, grad) == BT_OK && bt_copy_(lo, grad) == BT_OK);
    ck_assert(comm_allreduce(comm_world(), hi, COMM_MAX) == BT_OK);
    ck_assert(comm_allreduce(comm_world(), lo, COMM_MIN) == BT_OK);
    for (int64_t i = 0, n = bt_numel(grad); i < n; i++)
        ck_assert_msg(bt_get(hi, i) == bt_get(lo, i),
                      "%s: gradient element %lld differs across ranks (%.9g to %.9g, rank %d)",
                      name, (long long)i, bt_get(lo, i), bt_get(hi, i), twin_world_rank());
    bt_tensor_free(hi);
    bt_tensor_free(lo);
}
