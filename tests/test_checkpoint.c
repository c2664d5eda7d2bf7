/* HDF5 checkpoints: a bit-exact round trip of a small module's parameters and the root metadata,
 * the latest pointer, pruning to the newest K, and the one-line message of every bad file. h5py's
 * view of the file is checked by tests/checkpoint_h5py.sh on the file test_h5py_fixture writes. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/nn.h"
#include "data/checkpoint.h"
#include "tests/gradcheck.h"

static char dir[64];

static void make_dir(void) {
    test_tmpdir_make(dir, sizeof dir, "ckpt");
}

static void remove_dir(void) {
    test_tmpdir_remove(dir);
    H5close(); /* HDF5's globals, so LeakSanitizer sees only braid's memory */
}

/* net: fc1 = Linear(4 -> 3, bias), emb = Embedding(5, 4), ln = LayerNorm(3); `wide` makes fc1
 * Linear(5 -> 3), `extra` adds head = Linear(3 -> 2, no bias), `no_ln` leaves ln out. */
struct net_options {
    bool wide, extra, no_ln;
};

static struct nn_module *make_net(struct net_options o, struct bt_rng *rng) {
    struct nn_module *net = nn_module_create("net");
    nn_module_add_child(net, &nn_linear_create("fc1", o.wide ? 5 : 4, 3, true, rng)->base);
    nn_module_add_child(net, &nn_embedding_create("emb", 5, 4, rng)->base);
    if (!o.no_ln) nn_module_add_child(net, &nn_layernorm_create("ln", 3, true, 1e-5)->base);
    if (o.extra) nn_module_add_child(net, &nn_linear_create("head", 3, 2, false, rng)->base);
    return net;
}

static void params_of(const struct nn_module *net, struct nn_param_list *list) {
    ck_assert_int_eq(nn_named_parameters(net, list), BT_OK);
}

static void save(struct nn_module *net, int64_t step, int64_t keep) {
    struct nn_param_list list;
    params_of(net, &list);
    struct ckpt_meta meta = {step, step * 1000, "train:\n  seed: 1\n"};
    ck_assert_msg(ckpt_save(dir, &list, &meta, keep) == BT_OK, "%s", bt_last_error());
    nn_param_list_free(&list);
}

static bt_status load(struct nn_module *net, const char *path) {
    struct nn_param_list list;
    params_of(net, &list);
    bt_status status = ckpt_load_model(path, &list);
    nn_param_list_free(&list);
    return status;
}

static void step_path(char *buf, size_t size, int64_t step) {
    snprintf(buf, size, "%s/step_%08lld.h5", dir, (long long)step);
}

static bool exists(const char *path) {
    return access(path, F_OK) == 0;
}

static int64_t read_i64_attr(hid_t file, const char *name) {
    int64_t value = -1;
    hid_t attr = H5Aopen(file, name, H5P_DEFAULT);
    ck_assert_int_ge(attr, 0);
    ck_assert_int_ge(H5Aread(attr, H5T_NATIVE_INT64, &value), 0);
    H5Aclose(attr);
    return value;
}

/* Reads a scalar variable-length string attribute (as_dataset false) or dataset into buf. */
static void read_string(hid_t file, const char *name, bool as_dataset, char *buf, size_t size) {
    char *text = NULL;
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, H5T_VARIABLE);
    H5Tset_cset(type, H5T_CSET_UTF8);
    if (as_dataset) {
        hid_t dset = H5Dopen2(file, name, H5P_DEFAULT);
        ck_assert_int_ge(H5Dread(dset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, &text), 0);
        H5Dclose(dset);
    } else {
        hid_t attr = H5Aopen(file, name, H5P_DEFAULT);
        ck_assert_int_ge(H5Aread(attr, type, &text), 0);
        H5Aclose(attr);
    }
    H5Tclose(type);
    ck_assert_ptr_nonnull(text);
    snprintf(buf, size, "%s", text);
    H5free_memory(text);
}

START_TEST(test_round_trip_is_bit_exact) {
    make_dir();
    struct bt_rng rng = bt_rng_make(1), other_rng = bt_rng_make(2);
    struct nn_module *a = make_net((struct net_options){0}, &rng);
    struct nn_module *b = make_net((struct net_options){0}, &other_rng);
    struct nn_param_list pa, pb;
    char path[128], text[256];
    params_of(a, &pa);
    bt_fill(pa.tensors[4], 0.1); /* ln.bias: not all zeros */
    struct ckpt_meta meta = {10, 5120, "model:\n  n_layer: 2\n"};
    ck_assert_msg(ckpt_save(dir, &pa, &meta, 0) == BT_OK, "%s", bt_last_error());
    step_path(path, sizeof path, 10);
    ck_assert_msg(load(b, path) == BT_OK, "%s", bt_last_error());
    params_of(b, &pb);
    ck_assert_int_eq(pa.count, 5);
    ck_assert_int_eq(pb.count, pa.count);
    for (int64_t i = 0; i < pa.count; i++) {
        ck_assert_str_eq(pa.names[i], pb.names[i]);
        size_t nbytes = bt_nbytes(pa.tensors[i]);
        ck_assert(!memcmp(bt_data(pa.tensors[i]), bt_data(pb.tensors[i]), nbytes));
    }
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    ck_assert_int_ge(file, 0);
    ck_assert_int_eq(read_i64_attr(file, "step"), 10);
    ck_assert_int_eq(read_i64_attr(file, "tokens_seen"), 5120);
    ck_assert_int_eq(read_i64_attr(file, "format_version"), CKPT_FORMAT_VERSION);
    read_string(file, "braid_version", false, text, sizeof text);
    ck_assert_str_eq(text, BRAID_VERSION);
    read_string(file, "config", true, text, sizeof text);
    ck_assert_str_eq(text, "model:\n  n_layer: 2\n");
    hid_t dset = H5Dopen2(file, "/model/fc1.weight", H5P_DEFAULT); /* nn.Linear: (out, in) */
    hid_t space = H5Dget_space(dset);
    hsize_t dims[2];
    ck_assert_int_eq(H5Sget_simple_extent_dims(space, dims, NULL), 2);
    ck_assert_int_eq(dims[0], 3);
    ck_assert_int_eq(dims[1], 4);
    H5Sclose(space);
    H5Dclose(dset);
    H5Fclose(file);
    nn_param_list_free(&pa);
    nn_param_list_free(&pb);
    nn_module_free(a);
    nn_module_free(b);
    remove_dir();
}
END_TEST

START_TEST(test_latest_points_at_newest) {
    make_dir();
    struct bt_rng rng = bt_rng_make(1);
    struct nn_module *net = make_net((struct net_options){0}, &rng);
    char path[128], want[128], line[64];
    ck_assert_int_eq(ckpt_latest(dir, path, sizeof path), BT_ERR);
    snprintf(want, sizeof want, "checkpoint dir '%s': no latest checkpoint", dir);
    ck_assert_error_contains(want);
    save(net, 10, 0);
    ck_assert_int_eq(ckpt_latest(dir, path, sizeof path), BT_OK);
    step_path(want, sizeof want, 10);
    ck_assert_str_eq(path, want);
    save(net, 20, 0);
    ck_assert_int_eq(ckpt_latest(dir, path, sizeof path), BT_OK);
    step_path(want, sizeof want, 20);
    ck_assert_str_eq(path, want);
    snprintf(path, sizeof path, "%s/latest", dir); /* one line naming the file */
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    ck_assert_ptr_nonnull(fgets(line, sizeof line, f));
    fclose(f);
    ck_assert_str_eq(line, "step_00000020.h5\n");
    snprintf(path, sizeof path, "%s/.step_00000020.h5.tmp", dir); /* no temporaries left */
    ck_assert(!exists(path));
    snprintf(path, sizeof path, "%s/.latest.tmp", dir);
    ck_assert(!exists(path));
    ck_assert_int_eq(ckpt_latest(dir, path, 10), BT_ERR); /* buffer too small */
    ck_assert_error_contains("too long for the buffer");
    step_path(path, sizeof path, 20); /* latest names a file that is gone */
    unlink(path);
    ck_assert_int_eq(ckpt_latest(dir, path, sizeof path), BT_ERR);
    ck_assert_error_contains("names 'step_00000020.h5', which cannot be read");
    nn_module_free(net);
    remove_dir();
}
END_TEST

START_TEST(test_keep_prunes_older_files) {
    make_dir();
    struct bt_rng rng = bt_rng_make(1);
    struct nn_module *net = make_net((struct net_options){0}, &rng);
    char path[128];
    int64_t steps[] = {10, 20, 30};
    for (int i = 0; i < 3; i++)
        save(net, steps[i], 2);
    step_path(path, sizeof path, 10);
    ck_assert(!exists(path));
    step_path(path, sizeof path, 20);
    ck_assert(exists(path));
    step_path(path, sizeof path, 30);
    ck_assert(exists(path));
    save(net, 5, 2); /* the file just written is always kept, with the newest other */
    step_path(path, sizeof path, 5);
    ck_assert(exists(path));
    step_path(path, sizeof path, 20);
    ck_assert(!exists(path));
    step_path(path, sizeof path, 30);
    ck_assert(exists(path));
    save(net, 40, 0); /* keep <= 0: all */
    step_path(path, sizeof path, 5);
    ck_assert(exists(path));
    save(net, 50, 1);
    step_path(path, sizeof path, 40);
    ck_assert(!exists(path));
    step_path(path, sizeof path, 50);
    ck_assert(exists(path));
    nn_module_free(net);
    remove_dir();
}
END_TEST

/* Each mismatch between file and model is one message naming the file and the dataset, and the
 * model's parameters are left as they were. */
START_TEST(test_mismatched_model_is_named) {
    make_dir();
    struct bt_rng rng = bt_rng_make(1);
    struct nn_module *saved = make_net((struct net_options){0}, &rng);
    struct nn_module *extra = make_net((struct net_options){.extra = true}, NULL);
    struct nn_module *wide = make_net((struct net_options){.wide = true}, NULL);
    struct nn_module *no_ln = make_net((struct net_options){.no_ln = true}, NULL);
    char path[128], want[256];
    save(saved, 1, 0);
    step_path(path, sizeof path, 1);
    ck_assert_int_eq(load(extra, path), BT_ERR);
    snprintf(want, sizeof want, "%s: dataset /model/head.weight not found", path);
    ck_assert_error_contains(want);
    ck_assert_int_eq(load(wide, path), BT_ERR);
    snprintf(want, sizeof want, "%s: dataset /model/fc1.weight has shape (3,4), expected (3,5)",
             path);
    ck_assert_error_contains(want);
    ck_assert_int_eq(load(no_ln, path), BT_ERR);
    snprintf(want, sizeof want, "%s: dataset /model/ln.bias is not a parameter of this model",
             path);
    ck_assert_error_contains(want);
    /* the checks come before any read: fc1 of the failed loads is untouched (zeros) */
    ck_assert_double_eq(bt_get(nn_get_parameter(extra, "fc1.weight"), 0), 0.0);
    ck_assert_double_eq(bt_get(nn_get_parameter(no_ln, "fc1.weight"), 0), 0.0);
    nn_module_free(saved);
    nn_module_free(extra);
    nn_module_free(wide);
    nn_module_free(no_ln);
    remove_dir();
}
END_TEST

START_TEST(test_wrong_dtype_is_named) {
    make_dir();
    struct nn_module *net = make_net((struct net_options){.no_ln = true}, NULL);
    char path[128], want[256];
    snprintf(path, sizeof path, "%s/f64.h5", dir); /* a file of float64 datasets, rank 1 scalar */
    hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hid_t model = H5Gcreate2(file, "model", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t dims[] = {3, 4};
    hid_t space = H5Screate_simple(2, dims, NULL);
    hid_t dset = H5Dcreate2(model, "fc1.weight", H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT,
                            H5P_DEFAULT);
    H5Dclose(dset);
    H5Sclose(space);
    H5Gclose(model);
    H5Fclose(file);
    ck_assert_int_eq(load(net, path), BT_ERR);
    snprintf(want, sizeof want, "%s: dataset /model/fc1.weight has dtype float64, expected float32",
             path);
    ck_assert_error_contains(want);
    nn_module_free(net);
    remove_dir();
}
END_TEST

START_TEST(test_unreadable_files_are_named) {
    make_dir();
    struct bt_rng rng = bt_rng_make(1);
    struct nn_module *net = make_net((struct net_options){0}, &rng);
    char path[128], want[256];
    snprintf(path, sizeof path, "%s/garbage.h5", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    for (int i = 0; i < 200; i++)
        fputs("not an HDF5 file\n", f);
    fclose(f);
    ck_assert_int_eq(load(net, path), BT_ERR);
    snprintf(want, sizeof want, "%s: not a readable HDF5 file", path);
    ck_assert_error_contains(want);

    save(net, 3, 0); /* a truncated checkpoint */
    step_path(path, sizeof path, 3);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(truncate(path, st.st_size / 2), 0);
    ck_assert_int_eq(load(net, path), BT_ERR);
    snprintf(want, sizeof want, "%s: not a readable HDF5 file", path);
    ck_assert_error_contains(want);

    snprintf(path, sizeof path, "%s/missing.h5", dir);
    ck_assert_int_eq(load(net, path), BT_ERR);
    snprintf(want, sizeof want, "%s: cannot open: No such file or directory", path);
    ck_assert_error_contains(want);

    snprintf(path, sizeof path, "%s/no_model.h5", dir); /* HDF5, but no /model */
    H5Fclose(H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
    ck_assert_int_eq(load(net, path), BT_ERR);
    snprintf(want, sizeof want, "%s: group /model not found", path);
    ck_assert_error_contains(want);
    nn_module_free(net);
    remove_dir();
}
END_TEST

START_TEST(test_save_errors_are_named) {
    make_dir();
    struct bt_rng rng = bt_rng_make(1);
    struct nn_module *net = make_net((struct net_options){0}, &rng);
    struct nn_param_list list;
    struct ckpt_meta meta = {1, 0, NULL};
    char blocker[128], sub[160], want[256];
    snprintf(blocker, sizeof blocker, "%s/file", dir); /* a file where a directory must go */
    fclose(fopen(blocker, "w"));
    snprintf(sub, sizeof sub, "%s/ckpt", blocker);
    params_of(net, &list);
    ck_assert_int_eq(ckpt_save(sub, &list, &meta, 0), BT_ERR);
    snprintf(want, sizeof want, "checkpoint dir '%s': cannot create", sub);
    ck_assert_error_contains(want);
    snprintf(sub, sizeof sub, "%s/.step_00000001.h5.tmp", dir); /* HDF5 cannot create the file */
    ck_assert_int_eq(mkdir(sub, 0700), 0);
    ck_assert_int_eq(ckpt_save(dir, &list, &meta, 0), BT_ERR);
    snprintf(want, sizeof want, "%s: HDF5 H5Fcreate(", sub);
    ck_assert_error_contains(want);
    snprintf(sub, sizeof sub, "%s/a/b", dir); /* nested directories are created */
    ck_assert_msg(ckpt_save(sub, &list, &meta, 0) == BT_OK, "%s", bt_last_error());
    snprintf(sub, sizeof sub, "%s/a/b/step_00000001.h5", dir);
    ck_assert(exists(sub));
    nn_param_list_free(&list);
    nn_module_free(net);
    remove_dir();
}
END_TEST

/* Writes a checkpoint of known values for tests/checkpoint_h5py.sh (into
 * $BRAID_CKPT_FIXTURE_DIR when set, kept there) and checks it loads back: parameter p's element i
 * is (100 p + i) / 4 - 7, step 1234, tokens_seen 5678901234, config "model:\n  arch: gpt\n". */
START_TEST(test_h5py_fixture) {
    const char *keep_in = getenv("BRAID_CKPT_FIXTURE_DIR");
    if (keep_in)
        snprintf(dir, sizeof dir, "%s", keep_in);
    else
        make_dir();
    struct nn_module *net = make_net((struct net_options){0}, NULL);
    struct nn_param_list list;
    char path[128];
    params_of(net, &list);
    for (int64_t p = 0; p < list.count; p++)
        for (int64_t i = 0; i < bt_numel(list.tensors[p]); i++)
            bt_set(list.tensors[p], i, (100.0 * p + i) / 4 - 7);
    struct ckpt_meta meta = {1234, 5678901234LL, "model:\n  arch: gpt\n"};
    ck_assert_msg(ckpt_save(dir, &list, &meta, 1) == BT_OK, "%s", bt_last_error());
    for (int64_t p = 0; p < list.count; p++)
        bt_fill(list.tensors[p], 0.0);
    step_path(path, sizeof path, 1234);
    ck_assert_msg(ckpt_load_model(path, &list) == BT_OK, "%s", bt_last_error());
    ck_assert_double_eq(bt_get(list.tensors[2], 3), (200.0 + 3) / 4 - 7);
    nn_param_list_free(&list);
    nn_module_free(net);
    if (!keep_in)
        remove_dir();
    else
        H5close();
}
END_TEST

static Suite *checkpoint_suite(void) {
    Suite *s = suite_create("checkpoint");
    bt_suite_add(s, test_round_trip_is_bit_exact);
    bt_suite_add(s, test_latest_points_at_newest);
    bt_suite_add(s, test_keep_prunes_older_files);
    bt_suite_add(s, test_mismatched_model_is_named);
    bt_suite_add(s, test_wrong_dtype_is_named);
    bt_suite_add(s, test_unreadable_files_are_named);
    bt_suite_add(s, test_save_errors_are_named);
    bt_suite_add(s, test_h5py_fixture);
    return s;
}

BT_TEST_MAIN(checkpoint_suite)
