/* Checkpoints of tensor-parallel models (data/checkpoint.h, struct ckpt_layout): the file always
 * holds the full logical tensors. A TP GPT (tp = the world, and every dp × tp grid of the world
 * with ZeRO-1) saves after one AdamW step; the file must equal its single-rank twin (built from the
 * same seed, stepped on the same batches) — bitwise before any step — and read back into the same
 * layout (bitwise), into a single-rank model (its pieces are the TP ones) and the other way round.
 * Bad layouts and shapes are named. Runs alone and under mpirun with 2 and 4 ranks
 * (tests/checkpoint_tp_tests.cmake). */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "comm/comm.h"
#include "core/optim.h"
#include "data/checkpoint.h"
#include "models/model.h"
#include "parallel/dp.h"
#include "parallel/grid.h"
#include "tests/ckpt_check.h"
#include "tests/gradcheck.h"
#include "tests/mpi_test.h"
#include "tests/twin_check.h"

/* every split size (NH, V, F) divisible by tp = 1, 2 and 4 */
enum { V = 64, BLOCK = 16, NH = 4, C = 32, F = 128, B = 2, T = 16 };
#define LR 1e-3

/* the shared directory of the running test (tests/ckpt_check.h) */
static char dir[64];

/* ---- a model in a dp × tp layout (dp = tp = 1 without a grid: the single-rank twin) ---- */

struct run {
    struct grid grid;
    bool has_grid;
    struct model *model;
    struct nn_param_list params;
    struct dp *dp; /* ZeRO-1 over the grid's dp group, or NULL */
    struct optim *opt;
};

/* A tiny GPT (biases on) with its AdamW; with a grid (dp × tp of the world), tensor-parallel over
 * its tp group and, with zero1, ZeRO-1 over its dp group. */
static void run_create(struct run *r, bool tied, int64_t n_embd, int dp, int tp, bool zero1,
                       uint64_t seed) {
    memset(r, 0, sizeof *r);
    if (dp > 0) {
        ck_assert_msg(grid_init(&r->grid, comm_world(), dp, tp, 1) == BT_OK, "%s", bt_last_error());
        r->has_grid = true;
    }
    struct model_config cfg =
        twin_tiny_gpt(V, BLOCK, NH, n_embd, F, true, tied, r->has_grid ? r->grid.tp_group : NULL);
    r->model = model_create(&cfg, seed);
    ck_assert_msg(r->model != NULL, "model_create (rank %d): %s", twin_world_rank(),
                  bt_last_error());
    ck_assert(model_parameters(r->model, &r->params) == BT_OK);
    const struct nn_param_list *optimized = &r->params;
    if (zero1) {
        struct dp_options o = {.zero1 = true};
        r->dp = dp_create(r->grid.dp_group, &r->params, &o);
        ck_assert_msg(r->dp != NULL, "dp_create: %s", bt_last_error());
        optimized = dp_optim_params(r->dp);
    }
    r->opt = ckpt_check_adamw(optimized);
}

static void run_free(struct run *r) {
    optim_free(r->opt);
    dp_free(r->dp);
    nn_param_list_free(&r->params);
    model_free(r->model);
    if (r->has_grid) grid_free(&r->grid);
}

static const int64_t *run_row0(const struct run *r) {
    return r->dp ? dp_optim_row0(r->dp) : NULL;
}

static struct ckpt_layout run_layout(const struct run *r) {
    return (struct ckpt_layout){.group = comm_world(),
                                .split_group = r->has_grid ? r->grid.tp_group : NULL,
                                .replica_group = r->has_grid ? r->grid.dp_group : NULL,
                                .opt_row0 = run_row0(r)};
}

/* One AdamW step on the global batch of `dp` micro-batches (shifts 0..dp-1): a run in a grid takes
 * micro-batch dp_rank and averages the gradients over its dp group (ZeRO-1: dp > 1 needs it); the
 * twin (no grid) accumulates all of them, each scaled by 1/dp. */
static void run_step(struct run *r, int dp) {
    optim_zero_grad(r->opt);
    if (r->dp) dp_zero_grad(r->dp);
    for (int m = 0; m < dp; m++) {
        if (r->has_grid && m != r->grid.dp_rank) continue;
        bt_tensor *loss =
            model_forward(r->model, twin_tokens(B, T, V, m), twin_tokens(B, T, V, m + 1), NULL);
        ck_assert_msg(loss != NULL, "forward (rank %d): %s", twin_world_rank(), bt_last_error());
        if (!r->has_grid && dp > 1) loss = bt_mul_scalar(loss, 1.0 / dp);
        if (r->dp) dp_arm(r->dp);
        ck_assert_msg(bt_backward(loss) == BT_OK, "%s", bt_last_error());
    }
    if (r->dp) ck_assert_msg(dp_finish(r->dp) == BT_OK, "%s", bt_last_error());
    ck_assert_msg(optim_step(r->opt, LR) == BT_OK, "%s", bt_last_error());
    if (r->dp) ck_assert_msg(dp_gather_params(r->dp) == BT_OK, "%s", bt_last_error());
    bt_step_end();
}

/* Saves r in <dir>/<sub> with its layout (the twin: every rank holds it whole, like dp replicas) */
static void run_save(struct run *r, const char *sub, int64_t step) {
    struct ckpt_layout layout = run_layout(r);
    ckpt_check_save(dir, sub, step, &r->params, r->opt, &layout);
}

/* Reads file `path` into r: its parameters and its optimizer state (ZeRO-1 rows where it has). */
static void run_read(struct run *r, const char *path) {
    struct ckpt_file *f = ckpt_open(path);
    ck_assert_msg(f != NULL, "%s", bt_last_error());
    ck_assert_msg(ckpt_read_model(f, &r->params) == BT_OK, "rank %d: %s", twin_world_rank(),
                  bt_last_error());
    ck_assert_msg(ckpt_read_optim_rows(f, r->opt, &r->params, run_row0(r)) == BT_OK, "rank %d: %s",
                  twin_world_rank(), bt_last_error());
    ckpt_close(f);
}

/* ---- comparisons ---- */

static bt_tensor *read_named(struct ckpt_file *f, const char *name) {
    for (int64_t i = 0; i < ckpt_num_tensors(f); i++)
        if (strcmp(ckpt_tensor(f, i)->name, name) == 0) {
            bt_tensor *t = ckpt_read_tensor(f, i);
            ck_assert_msg(t != NULL, "%s", bt_last_error());
            return t;
        }
    ck_abort_msg("%s: no dataset %s", ckpt_path(f), name);
    return NULL;
}

/* Every tensor of file `path` equals the twin's parameters (and optimizer state when twin_opt):
 * bitwise (tol < 0) or to tol of each tensor's scale. After a step the parameters are compared to
 * 2 LR more: AdamW's first update is LR g / (|g| + eps), so a gradient element that is near zero
 * (the key bias's: softmax is shift-invariant) turns the layouts' rounding differences into
 * updates of up to LR either way. (That the file holds exactly the TP model's pieces is checked
 * bitwise by reading it back.) */
static void assert_file_is(const char *path, const struct nn_param_list *twin,
                           const struct optim *twin_opt, double tol) {
    char name[256];
    const char *const *states = NULL;
    int n_states = twin_opt ? optim_state_names(twin_opt, &states) : 0;
    struct ckpt_file *f = ckpt_open(path);
    ck_assert_msg(f != NULL, "%s", bt_last_error());
    ck_assert_int_eq(ckpt_num_tensors(f), twin->count * (1 + n_states));
    for (int64_t p = 0; p < twin->count; p++) {
        const bt_tensor *want = twin->tensors[p];
        snprintf(name, sizeof name, "/model/%s", twin->names[p]);
        bt_tensor *got = read_named(f, name);
        if (tol < 0) {
            twin_assert_close(name, got, want, tol);
        } else {
            double scale = twin_max_abs(want);
            for (int64_t i = 0; i < bt_numel(want); i++)
                ck_assert_msg(fabs(bt_get(got, i) - bt_get(want, i)) <= tol * scale + 2.01 * LR,
                              "%s: element %lld is %.9g, expected %.9g", name, (long long)i,
                              bt_get(got, i), bt_get(want, i));
        }
        bt_tensor_free(got);
        for (int s = 0; s < n_states; s++) {
            snprintf(name, sizeof name, "/optimizer/%s/%s", twin->names[p], states[s]);
            got = read_named(f, name);
            twin_assert_close(name, got, optim_state_by_name(twin_opt, twin->names[p], states[s]),
                              got->dtype == BT_I64 ? -1.0 : tol);
            bt_tensor_free(got);
        }
    }
    ckpt_close(f);
}

/* Piece (and ZeRO-1 rows) of `whole`'s tensor `full` that the same-named tensor `piece` of
 * parameter p of `tp` is, bitwise. */
static void assert_piece(const char *what, const struct run *tp, int64_t p, const bt_tensor *full,
                         const bt_tensor *piece, int64_t row0) {
    struct nn_split split = nn_param_split(&tp->params, p);
    if (piece->ndim == 0) {
        twin_assert_close(what, piece, full, -1.0);
        return;
    }
    bt_tensor *taken = bt_tensor_new(piece->ndim, piece->shape, piece->dtype, bt_cpu());
    ck_assert_msg(nn_split_take(&split, full, taken, row0) == BT_OK, "%s", bt_last_error());
    twin_assert_close(what, piece, taken, -1.0);
    bt_tensor_free(taken);
}

/* `tp`'s parameters and optimizer state (its ZeRO-1 rows) are pieces of the single-rank `whole`'s
 */
static void assert_pieces_of(const struct run *tp, const struct run *whole) {
    const char *const *states = NULL;
    int n_states = optim_state_names(tp->opt, &states);
    const int64_t *row0 = run_row0(tp);
    ck_assert_int_eq(tp->params.count, whole->params.count);
    for (int64_t p = 0; p < tp->params.count; p++)
        assert_piece(tp->params.names[p], tp, p, whole->params.tensors[p], tp->params.tensors[p],
                     0);
    for (int64_t i = 0; i < optim_num_params(tp->opt); i++) {
        const char *name = optim_param_name(tp->opt, i);
        int64_t p = 0;
        while (p < tp->params.count && strcmp(tp->params.names[p], name) != 0)
            p++;
        ck_assert_int_lt(p, tp->params.count);
        for (int s = 0; s < n_states; s++)
            assert_piece(name, tp, p, optim_state_by_name(whole->opt, name, states[s]),
                         optim_state(tp->opt, i, states[s]), row0 ? row0[i] : 0);
    }
}

/* ---- tp = the world ---- */

/* A TP GPT (bias on; tied or untied, where lm_head is cut too) saves before and after an AdamW
 * step: the files are its single-rank twin's, bitwise before the step. They read back into a
 * fresh TP model (bitwise what was saved) and into a single-rank model (whose pieces are the TP
 * model's); the twin's own file reads into a TP model as its pieces. */
static void check_tp_world(bool tied) {
    int P = twin_world_size();
    char path[128];
    struct run tp, twin, again, whole;
    run_create(&tp, tied, C, 1, P, false, 1234);
    run_create(&twin, tied, C, 0, 0, false, 1234);
    int n_cut = 0; /* with tp > 1 the embedding, c_attn, c_fc, c_proj and an untied lm_head are */
    bool head_cut = false;
    for (int64_t p = 0; p < tp.params.count; p++) {
        struct nn_split split = nn_param_split(&tp.params, p);
        n_cut += nn_split_is_cut(&split);
        head_cut = head_cut || (nn_split_is_cut(&split) && strstr(tp.params.names[p], "lm_head"));
    }
    ck_assert_int_eq(n_cut > 0, P > 1);
    ck_assert_int_eq(head_cut, P > 1 && !tied);
    run_save(&tp, "before", 0);
    ckpt_check_file_path(path, sizeof path, dir, "before", 0);
    assert_file_is(path, &twin.params, twin.opt, -1.0);

    run_step(&tp, 1);
    run_step(&twin, 1);
    run_save(&tp, "after", 1);
    ckpt_check_file_path(path, sizeof path, dir, "after", 1);
    assert_file_is(path, &twin.params, twin.opt, 1e-5);

    run_create(&again, tied, C, 1, P, false, 99); /* other weights until read */
    run_read(&again, path);
    ckpt_check_same_state(&again.params, again.opt, &tp.params, tp.opt);
    run_create(&whole, tied, C, 0, 0, false, 99);
    run_read(&whole, path);
    assert_pieces_of(&tp, &whole);
    run_free(&whole);

    /* the other way: the single-rank twin's file (every rank holding it whole: no split group),
     * read into the TP layout, gives the twin's pieces */
    run_save(&twin, "twin", 1);
    ckpt_check_file_path(path, sizeof path, dir, "twin", 1);
    run_read(&again, path);
    assert_pieces_of(&again, &twin);
    run_free(&again);
    run_free(&twin);
    run_free(&tp);
}

MPI_TEST(test_tp_file_holds_full_tensors) {
    ckpt_check_dir_make(dir, sizeof dir, "ckpt_tp");
    check_tp_world(true);
    check_tp_world(false);
    ckpt_check_dir_remove(dir);
}

/* ---- every dp × tp grid of the world, with ZeRO-1 ---- */

/* An untied TP GPT in a dp × tp grid with ZeRO-1 over dp steps on dp micro-batches and saves: the
 * file is its twin's (which took the whole batch); it reads back into the same layout bitwise and
 * into a single-rank model whose pieces (and ZeRO-1 rows of them) are the grid's. */
MPI_TEST(test_grid_layouts_with_zero1) {
    int P = twin_world_size();
    char sub[32], path[128];
    ckpt_check_dir_make(dir, sizeof dir, "ckpt_tp");
    for (int tp_size = 1; tp_size <= P; tp_size++) {
        if (P % tp_size != 0) continue;
        int dp_size = P / tp_size;
        struct run grid, twin, again, whole;
        run_create(&grid, false, C, dp_size, tp_size, true, 55);
        run_create(&twin, false, C, 0, 0, false, 55);
        run_step(&grid, dp_size);
        run_step(&twin, dp_size);
        snprintf(sub, sizeof sub, "dp%d_tp%d", dp_size, tp_size);
        run_save(&grid, sub, 1);
        ckpt_check_file_path(path, sizeof path, dir, sub, 1);
        assert_file_is(path, &twin.params, twin.opt, 1e-5);

        run_create(&again, false, C, dp_size, tp_size, true, 7);
        run_read(&again, path);
        ckpt_check_same_state(&again.params, again.opt, &grid.params, grid.opt);
        run_create(&whole, false, C, 0, 0, false, 7);
        run_read(&whole, path);
        assert_pieces_of(&grid, &whole);
        run_free(&whole);
        run_free(&again);
        run_free(&twin);
        run_free(&grid);
    }
    ckpt_check_dir_remove(dir);
}

/* ---- errors ---- */

static void assert_save_fails(struct run *r, const struct ckpt_layout *layout, const char *want) {
    ckpt_check_save_fails(dir, &r->params, r->opt, layout, want);
}

/* A file read into a model of another full shape names the dataset and both shapes; a layout
 * whose split group does not number the pieces, or whose groups do not multiply to the world, is
 * refused before anything is written; so is a cut parameter without a split group; groups that
 * do not match the pieces leave a tensor uncovered, which the ranks agree on. */
MPI_TEST(test_layout_errors) {
    int P = twin_world_size(), rank = twin_world_rank();
    char path[128], want[512], shape_file[64], shape_model[64];
    ckpt_check_dir_make(dir, sizeof dir, "ckpt_tp");
    struct run tp, wide;
    run_create(&tp, false, C, 1, P, false, 3);
    run_save(&tp, "ok", 1);
    ckpt_check_file_path(path, sizeof path, dir, "ok", 1);

    /* another n_embd, in the TP layout and in one process: the first parameter is named with the
     * file's shape and the model's full one */
    for (int layout = 0; layout < 2; layout++) {
        run_create(&wide, false, 2 * C, layout == 0 ? 1 : 0, P, false, 3);
        struct ckpt_file *f = ckpt_open(path);
        ck_assert_msg(f != NULL, "%s", bt_last_error());
        snprintf(want, sizeof want, "/model/%s", wide.params.names[0]);
        bt_tensor *stored = read_named(f, want);
        struct nn_split split = nn_param_split(&wide.params, 0);
        int64_t full[BT_MAX_DIMS];
        nn_split_full_shape(&split, wide.params.tensors[0], full);
        bt_tensor *expected = bt_empty(wide.params.tensors[0]->ndim, full, BT_F32, bt_cpu());
        ck_assert_int_eq(ckpt_read_model(f, &wide.params), BT_ERR);
        snprintf(want, sizeof want, "checkpoint %s: dataset /model/%s has shape %s, expected %s",
                 path, wide.params.names[0], bt_shape_str(stored, shape_file, sizeof shape_file),
                 bt_shape_str(expected, shape_model, sizeof shape_model));
        ck_assert_error_contains(want);
        ckpt_close(f);
        bt_tensor_free(stored);
        bt_step_end();
        run_free(&wide);
    }

    /* the split group numbers the ranks the other way round: every piece is in the wrong place */
    if (P > 1) {
        struct comm *reversed = comm_split(comm_world(), 0, P - 1 - rank, "reversed");
        ck_assert_ptr_nonnull(reversed);
        struct ckpt_layout layout = {.group = comm_world(), .split_group = reversed};
        snprintf(want, sizeof want,
                 "/model/%s is piece %d of %d of its full tensor, but this rank is rank %d of %d "
                 "of split group reversed",
                 tp.params.names[0], rank, P, P - 1 - rank, P);
        assert_save_fails(&tp, &layout, want);
        /* world × world is not the world */
        layout = (struct ckpt_layout){
            .group = comm_world(), .split_group = comm_world(), .replica_group = comm_world()};
        snprintf(want, sizeof want,
                 "layout: group world has %d ranks, but split group world × replica group world "
                 "= %d × %d",
                 P, P, P);
        assert_save_fails(&tp, &layout, want);
        /* pieces but no split group */
        layout = (struct ckpt_layout){.group = comm_world()};
        snprintf(want, sizeof want,
                 "/model/%s is piece %d of %d of its full tensor, but the layout has no split "
                 "group",
                 tp.params.names[0], rank, P);
        assert_save_fails(&tp, &layout, want);
        comm_free(reversed);
    }
    if (P == 4) { /* tp = 2, and the tp group given as the replicas too: half of every piece */
        struct run grid;
        run_create(&grid, false, C, 2, 2, false, 3);
        struct ckpt_layout layout = {.group = comm_world(),
                                     .split_group = grid.grid.tp_group,
                                     .replica_group = grid.grid.tp_group};
        snprintf(want, sizeof want,
                 "/model/%s is not covered exactly once by the ranks' parts (the layout's groups "
                 "do not match the parameters' pieces)",
                 grid.params.names[0]);
        assert_save_fails(&grid, &layout, want);
        char tmp[160];
        snprintf(tmp, sizeof tmp, "%s/bad/.step_00000001.h5.tmp", dir);
        ck_assert_int_ne(access(tmp, F_OK), 0);
        run_free(&grid);
    }
    run_free(&tp);
    ckpt_check_dir_remove(dir);
}

/* A parameter marked as a piece in a process of its own: the world (one rank, or rank r of P) is
 * not 2 pieces, and a layout without a split group cannot place it. Runs at every world size. */
MPI_TEST(test_piece_without_its_group) {
    int P = twin_world_size(), rank = twin_world_rank();
    char want[512];
    ckpt_check_dir_make(dir, sizeof dir, "ckpt_tp");
    struct run r = {0};
    struct nn_module *m = nn_module_create("net");
    struct bt_rng rng = bt_rng_make(1);
    nn_module_add_child(m, &nn_linear_create("fc", 4, 6, false, &rng)->base);
    struct nn_split split = {.parts = 2, .part = 1 - rank % 2, .dim = 0};
    ck_assert_msg(nn_module_set_split(nn_module_child(m, "fc"), "weight", &split) == BT_OK, "%s",
                  bt_last_error());
    ck_assert(nn_named_parameters(m, &r.params) == BT_OK);
    struct ckpt_layout layout = {.group = comm_world(), .split_group = comm_world()};
    snprintf(want, sizeof want,
             "/model/fc.weight is piece %d of 2 of its full tensor, but this rank is rank %d of %d "
             "of split group world",
             1 - rank % 2, rank, P);
    assert_save_fails(&r, &layout, want);
    layout.split_group = NULL;
    snprintf(want, sizeof want,
             "/model/fc.weight is piece %d of 2 of its full tensor, but the layout has no split "
             "group",
             1 - rank % 2);
    assert_save_fails(&r, &layout, want);
    nn_param_list_free(&r.params);
    nn_module_free(m);
    ckpt_check_dir_remove(dir);
}

static Suite *checkpoint_tp_suite(void) {
    Suite *s = suite_create("checkpoint_tp");
    bt_suite_add(s, test_tp_file_holds_full_tensors);
    bt_suite_add(s, test_grid_layouts_with_zero1);
    bt_suite_add(s, test_layout_errors);
    bt_suite_add(s, test_piece_without_its_group);
    return s;
}

MPI_TEST_MAIN(checkpoint_tp_suite)
