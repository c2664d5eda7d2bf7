/* Checkpoints of pipeline-parallel runs (data/checkpoint.h, ckpt_layout.stage_group): each stage
 * saves only its own parameters (built here by hand from a single-rank tied GPT of 4 blocks: stage
 * s holds its blocks, the first also the embeddings, the last ln_f and a copy of the tied token
 * embedding), and the file must be the single-rank model's, tensor for tensor and checksum for
 * checksum. Stages read their part of either file back with the subset readers, a single-rank
 * model reads the stages' file with the strict ones; missing names, shapes and layouts are named.
 * Runs alone and under mpirun with 2 and 4 ranks (tests/checkpoint_pp_tests.cmake): the world as
 * stage group, and at 4 ranks 2 stages × 2 dp ranks with ZeRO-1. */
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

enum { V = 64, BLOCK = 16, NH = 4, C = 32, F = 128, L = 4, B = 2, T = 16 };
#define LR 1e-3

/* the shared directory of the running test (tests/ckpt_check.h) */
static char dir[64];

/* ---- the single-rank model ---- */

struct whole {
    struct model *model;
    struct nn_param_list params;
    struct optim *opt;
};

/* The tiny tied GPT of L blocks with its AdamW; `stepped`: after one step, so that every
 * parameter and state holds distinct values. */
static void whole_create(struct whole *w, int64_t n_embd, uint64_t seed, bool stepped) {
    struct model_config cfg = twin_tiny_gpt(V, BLOCK, NH, n_embd, F, true, true, NULL);
    cfg.n_layer = L;
    w->model = twin_model_create(&cfg, seed);
    ck_assert(model_parameters(w->model, &w->params) == BT_OK);
    w->opt = ckpt_check_adamw(&w->params);
    if (!stepped) return;
    optim_zero_grad(w->opt);
    bt_tensor *loss =
        model_forward(w->model, twin_tokens(B, T, V, 0), twin_tokens(B, T, V, 1), NULL);
    ck_assert_msg(loss != NULL, "forward: %s", bt_last_error());
    ck_assert_msg(bt_backward(loss) == BT_OK, "%s", bt_last_error());
    ck_assert_msg(optim_step(w->opt, LR) == BT_OK, "%s", bt_last_error());
    bt_step_end();
}

static void whole_free(struct whole *w) {
    optim_free(w->opt);
    nn_param_list_free(&w->params);
    model_free(w->model);
}

/* ---- a pipeline stage ---- */

/* Stage s of S of the L blocks: blocks [s L / S, (s + 1) L / S) */
static bool stage_holds(const char *name, int s, int S) {
    if (strncmp(name, "transformer.wte.", 16) == 0 || strncmp(name, "transformer.wpe.", 16) == 0)
        return s == 0;
    if (strncmp(name, "transformer.h.", 14) == 0) {
        int block = atoi(name + 14);
        return s * L / S <= block && block < (s + 1) * L / S;
    }
    return s == S - 1; /* ln_f */
}

/* Stage `s` of `S`: the parameters of a single-rank model (`base`) that the stage holds, and on the
 * last of several stages a copy of the tied token embedding (a tensor of its own, equal values);
 * AdamW over them (with dp > 1, ZeRO-1 over the grid's dp group) whose state is copied from
 * base's, rows and all. */
struct stage {
    struct whole base;
    int s, S;
    struct nn_param_list params; /* names owned, tensors base's (and tied_copy) */
    bt_tensor *tied_copy;
    struct grid grid;
    bool has_grid;
    struct dp *dp;
    struct optim *opt;
};

static void stage_add(struct stage *st, const char *name, bt_tensor *t) {
    int64_t n = st->params.count;
    st->params.names = realloc(st->params.names, (size_t)(n + 1) * sizeof *st->params.names);
    st->params.tensors = realloc(st->params.tensors, (size_t)(n + 1) * sizeof *st->params.tensors);
    ck_assert(st->params.names && st->params.tensors);
    st->params.names[n] = strdup(name);
    st->params.tensors[n] = t;
    st->params.count = n + 1;
}

static const int64_t *stage_row0(const struct stage *st) {
    return st->dp ? dp_optim_row0(st->dp) : NULL;
}

/* Copies base's optimizer state into st's (ZeRO-1: st's rows of it) and its step count. */
static void stage_copy_state(struct stage *st) {
    const char *const *states = NULL;
    int n_states = optim_state_names(st->opt, &states);
    const int64_t *row0 = stage_row0(st);
    for (int64_t i = 0; i < optim_num_params(st->opt); i++)
        for (int k = 0; k < n_states; k++) {
            bt_tensor *to = optim_state(st->opt, i, states[k]);
            const bt_tensor *from =
                optim_state_by_name(st->base.opt, optim_param_name(st->opt, i), states[k]);
            ck_assert(to && from);
            size_t bytes = (size_t)bt_numel(to) * bt_dtype_size(to->dtype);
            size_t skip = to->ndim && row0 ? (size_t)row0[i] * bytes / (size_t)to->shape[0] : 0;
            memcpy(bt_data(to), (const char *)bt_data(from) + skip, bytes);
        }
    optim_set_step_count(st->opt, optim_step_count(st->base.opt));
}

/* Stage s of S, on a grid of dp × S ranks when dp > 0 (ZeRO-1 over its dp group when dp > 1);
 * n_embd of the base model; `stepped`: the base and the state after one step. */
static void stage_create(struct stage *st, int s, int S, int dp, int64_t n_embd, uint64_t seed,
                         bool stepped) {
    memset(st, 0, sizeof *st);
    st->s = s;
    st->S = S;
    whole_create(&st->base, n_embd, seed, stepped);
    for (int64_t p = 0; p < st->base.params.count; p++)
        if (stage_holds(st->base.params.names[p], s, S))
            stage_add(st, st->base.params.names[p], st->base.params.tensors[p]);
    if (S > 1 && s == S - 1) {
        const bt_tensor *wte = st->base.params.tensors[0];
        ck_assert_str_eq(st->base.params.names[0], "transformer.wte.weight");
        st->tied_copy = bt_tensor_new(wte->ndim, wte->shape, BT_F32, bt_cpu());
        memcpy(bt_data(st->tied_copy), bt_data(wte), (size_t)bt_numel(wte) * sizeof(float));
        stage_add(st, "transformer.wte.weight", st->tied_copy);
    }
    const struct nn_param_list *optimized = &st->params;
    if (dp > 0) {
        ck_assert_msg(grid_init(&st->grid, comm_world(), dp, 1, S) == BT_OK, "%s", bt_last_error());
        st->has_grid = true;
        ck_assert_int_eq(st->grid.pp_rank, s);
        if (dp > 1) {
            struct dp_options o = {.zero1 = true};
            st->dp = dp_create(st->grid.dp_group, &st->params, &o);
            ck_assert_msg(st->dp != NULL, "dp_create: %s", bt_last_error());
            optimized = dp_optim_params(st->dp);
        }
    }
    st->opt = ckpt_check_adamw(optimized);
    if (stepped) stage_copy_state(st);
}

static void stage_free(struct stage *st) {
    optim_free(st->opt);
    dp_free(st->dp);
    if (st->has_grid) grid_free(&st->grid);
    nn_param_list_free(&st->params);
    bt_tensor_free(st->tied_copy);
    whole_free(&st->base);
}

/* the layout of st: the world as stage group, or the grid's groups */
static struct ckpt_layout stage_layout(const struct stage *st) {
    if (!st->has_grid)
        return (struct ckpt_layout){.group = comm_world(), .stage_group = comm_world()};
    return (struct ckpt_layout){.group = comm_world(),
                                .replica_group = st->grid.dp_group,
                                .stage_group = st->grid.pp_group,
                                .opt_row0 = stage_row0(st)};
}

static void stage_save(struct stage *st, const char *sub, int64_t step) {
    struct ckpt_layout layout = stage_layout(st);
    ckpt_check_save(dir, sub, step, &st->params, st->opt, &layout);
}

/* rank 0 saves the single-rank model in <dir>/<sub> (ckpt_save: a process alone) */
static void whole_save(struct whole *w, const char *sub, int64_t step) {
    char path[128];
    struct ckpt_meta meta = {.step = step, .config_yaml = "", .tokenizer_yaml = ""};
    snprintf(path, sizeof path, "%s/%s", dir, sub);
    if (twin_world_rank() == 0)
        ck_assert_msg(ckpt_save(path, &w->params, w->opt, &meta, 0) == BT_OK, "%s",
                      bt_last_error());
    ck_assert(comm_barrier(comm_world()) == BT_OK);
}

/* ---- comparisons ---- */

/* dataset `name`'s crc32 attribute, read with HDF5 itself */
static uint32_t stored_crc(const char *path, const char *name) {
    uint32_t crc = 0;
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    ck_assert_int_ge(file, 0);
    hid_t attr = H5Aopen_by_name(file, name, "crc32", H5P_DEFAULT, H5P_DEFAULT);
    ck_assert_msg(attr >= 0, "%s: %s has no crc32", path, name);
    ck_assert(H5Aread(attr, H5T_NATIVE_UINT32, &crc) >= 0);
    H5Aclose(attr);
    H5Fclose(file);
    return crc;
}

/* Files a and b hold the same tensors (names, dtypes, shapes, bytes, crc32 attributes) and the
 * same optimizer. */
static void assert_same_files(const char *a, const char *b) {
    struct ckpt_file *fa = ckpt_open(a), *fb = ckpt_open(b);
    ck_assert_msg(fa && fb, "%s", bt_last_error());
    ck_assert_int_eq(ckpt_num_tensors(fa), ckpt_num_tensors(fb));
    ck_assert_str_eq(ckpt_optimizer_name(fa), ckpt_optimizer_name(fb));
    ck_assert_int_eq(ckpt_optimizer_steps(fa), ckpt_optimizer_steps(fb));
    for (int64_t i = 0; i < ckpt_num_tensors(fa); i++) {
        const struct ckpt_tensor_info *x = ckpt_tensor(fa, i), *y = ckpt_tensor(fb, i);
        ck_assert_str_eq(x->name, y->name);
        ck_assert_int_eq(x->dtype, y->dtype);
        ck_assert_int_eq(x->ndim, y->ndim);
        for (int d = 0; d < x->ndim; d++)
            ck_assert_int_eq(x->shape[d], y->shape[d]);
        bt_tensor *tx = ckpt_read_tensor(fa, i), *ty = ckpt_read_tensor(fb, i);
        ck_assert_msg(tx && ty, "rank %d: %s", twin_world_rank(), bt_last_error());
        ck_assert_msg(
            memcmp(bt_data(tx), bt_data(ty), (size_t)bt_numel(tx) * bt_dtype_size(tx->dtype)) == 0,
            "%s differs between %s and %s", x->name, a, b);
        ck_assert_uint_eq(stored_crc(a, x->name), stored_crc(b, x->name));
        bt_tensor_free(tx);
        bt_tensor_free(ty);
    }
    ckpt_close(fb);
    ckpt_close(fa);
}

/* A stage of the same layout as `want` (another seed, no step) reads file `path` with the subset
 * readers and then holds want's parameters and state, bitwise. */
static void assert_stage_reads(const struct stage *want, int dp, const char *path) {
    struct stage again;
    stage_create(&again, want->s, want->S, dp, C, 7, false);
    struct ckpt_file *f = ckpt_open(path);
    ck_assert_msg(f != NULL, "%s", bt_last_error());
    ck_assert_msg(ckpt_read_model_subset(f, &again.params) == BT_OK, "rank %d: %s",
                  twin_world_rank(), bt_last_error());
    ck_assert_msg(ckpt_read_optim_subset(f, again.opt, &again.params, stage_row0(&again)) == BT_OK,
                  "rank %d: %s", twin_world_rank(), bt_last_error());
    ckpt_check_same_state(&again.params, again.opt, &want->params, want->opt);
    if (want->S > 1) { /* the strict readers refuse a file holding the other stages' tensors */
        ck_assert_int_eq(ckpt_read_model(f, &again.params), BT_ERR);
        ck_assert_error_contains("is not a parameter of this model");
        ck_assert_int_eq(ckpt_read_optim_rows(f, again.opt, &again.params, stage_row0(&again)),
                         BT_ERR);
        ck_assert_error_contains("is not state of");
    }
    ckpt_close(f);
    stage_free(&again);
    /* model.init_from for a stage */
    stage_create(&again, want->s, want->S, dp, C, 8, false);
    ck_assert_msg(ckpt_load_model_subset(path, &again.params) == BT_OK, "rank %d: %s",
                  twin_world_rank(), bt_last_error());
    for (int64_t p = 0; p < again.params.count; p++)
        twin_assert_close(again.params.names[p], again.params.tensors[p], want->params.tensors[p],
                          -1.0);
    stage_free(&again);
}

/* A single-rank model reads file `path` with the strict readers and holds `want`'s state. */
static void assert_whole_reads(const struct whole *want, const char *path) {
    struct whole again;
    whole_create(&again, C, 7, false);
    struct ckpt_file *f = ckpt_open(path);
    ck_assert_msg(f != NULL, "%s", bt_last_error());
    ck_assert_msg(ckpt_read_model(f, &again.params) == BT_OK, "%s", bt_last_error());
    ck_assert_msg(ckpt_read_optim(f, again.opt) == BT_OK, "%s", bt_last_error());
    ckpt_close(f);
    ckpt_check_same_state(&again.params, again.opt, &want->params, want->opt);
    whole_free(&again);
}

/* Stage layout with `dp` replicas per stage (0: no grid, the world is the stage group), named sub:
 * the stages' file is the single-rank model's; it reads back into the stages and into a
 * single-rank model, and the single-rank file reads into the stages. */
static void check_layout_round_trip(int S, int s, int dp, const char *sub) {
    char stages_path[256], whole_path[256], whole_sub[32];
    struct stage st;
    stage_create(&st, s, S, dp, C, 55, true);
    stage_save(&st, sub, 3);
    snprintf(whole_sub, sizeof whole_sub, "%s_whole", sub);
    whole_save(&st.base, whole_sub, 3);
    ckpt_check_file_path(stages_path, sizeof stages_path, dir, sub, 3);
    ckpt_check_file_path(whole_path, sizeof whole_path, dir, whole_sub, 3);

    assert_same_files(stages_path, whole_path);
    assert_stage_reads(&st, dp, stages_path);
    assert_stage_reads(&st, dp, whole_path);
    assert_whole_reads(&st.base, stages_path);
    stage_free(&st);
}

/* The world as the stage group: stage r of P (P = 1: a single-rank run through the same calls). */
MPI_TEST(test_stages_write_the_whole_model) {
    ckpt_check_dir_make(dir, sizeof dir, "ckpt_pp");
    check_layout_round_trip(twin_world_size(), twin_world_rank(), 0, "pp");
    ckpt_check_dir_remove(dir);
}

/* 4 ranks as 2 stages × 2 dp ranks with ZeRO-1 (each dp rank holds rows of its stage's state);
 * 2 ranks as 2 stages × 1 dp rank through a grid. */
MPI_TEST(test_stage_by_dp_grid_with_zero1) {
    int P = twin_world_size();
    if (P < 2) return;
    ckpt_check_dir_make(dir, sizeof dir, "ckpt_pp");
    int dp = P / 2, dp_rank, tp_rank, pp_rank;
    grid_coords(twin_world_rank(), dp, 1, 2, &dp_rank, &tp_rank, &pp_rank);
    check_layout_round_trip(2, pp_rank, dp, "pp_dp");
    ckpt_check_dir_remove(dir);
}

/* ---- errors ---- */

static void assert_save_fails(struct stage *st, const struct ckpt_layout *layout,
                              const char *want) {
    ckpt_check_save_fails(dir, &st->params, st->opt, layout, want);
}

/* A stage parameter the file lacks, and one of another shape, are named; groups whose sizes do not
 * multiply to the world's, stages that disagree on a shared tensor's shape, and ranks whose stages
 * hold different lists are refused before anything is written. */
MPI_TEST(test_stage_errors) {
    int P = twin_world_size(), rank = twin_world_rank();
    char path[128], want[512];
    ckpt_check_dir_make(dir, sizeof dir, "ckpt_pp");
    struct stage st;
    stage_create(&st, rank, P, 0, C, 3, false);
    stage_save(&st, "ok", 1);
    ckpt_check_file_path(path, sizeof path, dir, "ok", 1);

    /* a block the file does not have */
    struct ckpt_file *f = ckpt_open(path);
    ck_assert_msg(f != NULL, "%s", bt_last_error());
    bt_tensor *extra = bt_tensor_new(BT_SHAPE(C), BT_F32, bt_cpu());
    stage_add(&st, "transformer.h.4.ln_1.weight", extra);
    ck_assert_int_eq(ckpt_read_model_subset(f, &st.params), BT_ERR);
    snprintf(want, sizeof want,
             "checkpoint %s: dataset /model/transformer.h.4.ln_1.weight not found", path);
    ck_assert_error_contains(want);
    st.params.count--;
    free(st.params.names[st.params.count]);
    bt_tensor_free(extra);

    /* a stage of a wider model: its first parameter is named with both shapes */
    struct stage wide;
    stage_create(&wide, rank, P, 0, 2 * C, 3, false);
    ck_assert_int_eq(ckpt_read_model_subset(f, &wide.params), BT_ERR);
    const char *first = wide.params.names[0];
    int64_t rows = strstr(first, "wte") ? V : strstr(first, "wpe") ? BLOCK : -1;
    if (rows > 0)
        snprintf(want, sizeof want, "dataset /model/%s has shape (%lld,%d), expected (%lld,%d)",
                 first, (long long)rows, C, (long long)rows, 2 * C);
    else
        snprintf(want, sizeof want, "dataset /model/%s has shape (%d), expected (%d)", first, C,
                 2 * C);
    ck_assert_error_contains(want);
    ck_assert_int_eq(ckpt_load_model_subset(path, &wide.params), BT_ERR);
    ck_assert_error_contains(want);
    ckpt_close(f);
    stage_free(&wide);

    if (P > 1) {
        /* world replicas × world stages is not the world */
        struct ckpt_layout layout = {
            .group = comm_world(), .replica_group = comm_world(), .stage_group = comm_world()};
        snprintf(want, sizeof want,
                 "layout: group world has %d ranks, but split group (none) × replica group world "
                 "× stage group world = 1 × %d × %d",
                 P, P, P);
        assert_save_fails(&st, &layout, want);

        /* the last stage's tied copy of another shape than stage 0's embedding */
        struct stage odd;
        stage_create(&odd, rank, P, 0, C, 3, false);
        if (rank == P - 1) {
            bt_tensor *narrow = bt_tensor_new(BT_SHAPE(V, C / 2), BT_F32, bt_cpu());
            bt_tensor_free(odd.tied_copy);
            odd.tied_copy = narrow;
            odd.params.tensors[odd.params.count - 1] = narrow;
        }
        layout = (struct ckpt_layout){.group = comm_world(), .stage_group = comm_world()};
        snprintf(want, sizeof want,
                 "layout: /model/transformer.wte.weight is float32 (%d,%d) on stage 0 but float32 "
                 "(%d,%d) on stage %d",
                 V, C, V, C / 2, P - 1);
        optim_free(odd.opt);
        odd.opt = NULL; /* its state would have the old shape */
        assert_save_fails(&odd, &layout, want);
        stage_free(&odd);
    }
    if (P == 4) { /* 2 stages × 2 dp ranks, but dp rank 1's last stage lacks ln_f */
        struct grid g;
        ck_assert_msg(grid_init(&g, comm_world(), 2, 1, 2) == BT_OK, "%s", bt_last_error());
        struct stage short_list;
        stage_create(&short_list, g.pp_rank, 2, 0, C, 3, false);
        struct nn_param_list *sp = &short_list.params;
        if (g.pp_rank == 1 && g.dp_rank == 1) { /* ..., ln_f.weight, ln_f.bias, wte copy */
            int64_t n = sp->count;
            ck_assert_str_eq(sp->names[n - 3], "transformer.ln_f.weight");
            free(sp->names[n - 3]);
            free(sp->names[n - 2]);
            sp->names[n - 3] = sp->names[n - 1];
            sp->tensors[n - 3] = sp->tensors[n - 1];
            sp->count = n - 2;
        }
        optim_free(short_list.opt);
        short_list.opt = NULL; /* it holds state of ln_f */
        struct ckpt_layout layout = {
            .group = comm_world(), .replica_group = g.dp_group, .stage_group = g.pp_group};
        assert_save_fails(&short_list, &layout,
                          "layout: the stages' parameter lists differ between the ranks of group "
                          "world");
        stage_free(&short_list);
        grid_free(&g);
    }
    stage_free(&st);
    ckpt_check_dir_remove(dir);
}

static Suite *checkpoint_pp_suite(void) {
    Suite *s = suite_create("checkpoint_pp");
    bt_suite_add(s, test_stages_write_the_whole_model);
    bt_suite_add(s, test_stage_by_dp_grid_with_zero1);
    bt_suite_add(s, test_stage_errors);
    return s;
}

MPI_TEST_MAIN(checkpoint_pp_suite)
