/* HDF5 checkpoints (format 2): bit-exact round trips of parameters, optimizer state (AdamW, SGD)
 * and the run state, the tensor listing, the latest pointer, pruning to the newest K, and the
 * one-line `checkpoint PATH: ...` message of every bad or damaged file. h5py's view of the file is
 * checked by tests/checkpoint_h5py.sh on the file test_h5py_fixture writes; crash safety is in
 * tests/test_checkpoint_crash.c. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "core/nn.h"
#include "core/optim.h"
#include "data/checkpoint.h"
#include "data/checkpoint_internal.h"
#include "tests/gradcheck.h"

static char dir[64];

/* An HDF5 call of a test's own file surgery must succeed. */
#define H5_OK(call) ck_assert_msg((int64_t)(call) >= 0, "%s failed", #call)

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

/* A run state with every field set to something recognisable for `step`. */
static struct ckpt_meta meta_for(int64_t step) {
    return (struct ckpt_meta){.step = step,
                              .tokens_seen = step * 1000,
                              .lr = 6e-4,
                              .dropout_seed = 1337,
                              .dropout_offset = (uint64_t)step * 96,
                              .data_seed = 7,
                              .data_shuffle = true,
                              .data_seq_len = 64,
                              .data_position = step * 12,
                              .config_yaml = "train:\n  seed: 1\n",
                              .tokenizer_yaml = "name: char\n"};
}

static void save(struct nn_module *net, int64_t step, int64_t keep) {
    struct nn_param_list list;
    params_of(net, &list);
    struct ckpt_meta meta = meta_for(step);
    ck_assert_msg(ckpt_save(dir, &list, NULL, &meta, keep) == BT_OK, "%s", bt_last_error());
    nn_param_list_free(&list);
}

static bt_status load(struct nn_module *net, const char *path) {
    struct nn_param_list list;
    params_of(net, &list);
    bt_status status = ckpt_load_model(path, &list);
    nn_param_list_free(&list);
    return status;
}

static struct ckpt_file *open_ok(const char *path) {
    struct ckpt_file *f = ckpt_open(path);
    ck_assert_msg(f != NULL, "ckpt_open: %s", bt_last_error());
    return f;
}

/* ckpt_open(path) fails with exactly "checkpoint <path>: <what>" at the start of its message. */
static void assert_open_fails(const char *path, const char *what) {
    char want[512];
    ck_assert_ptr_null(ckpt_open(path));
    snprintf(want, sizeof want, "checkpoint %s: %s", path, what);
    ck_assert_error_contains(want);
}

static void step_path(char *buf, size_t size, int64_t step) {
    snprintf(buf, size, "%s/step_%08lld.h5", dir, (long long)step);
}

static bool exists(const char *path) {
    return access(path, F_OK) == 0;
}

static void copy_file(const char *from, const char *to) {
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    char buf[65536];
    size_t n;
    ck_assert_ptr_nonnull(in);
    ck_assert_ptr_nonnull(out);
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        ck_assert_uint_eq(fwrite(buf, 1, n, out), n);
    fclose(in);
    ck_assert_int_eq(fclose(out), 0);
}

/* A copy of step file `step` named <dir>/<name>, into buf, for one damage case. */
static void damaged_copy(int64_t step, const char *name, char *buf, size_t size) {
    char from[128];
    step_path(from, sizeof from, step);
    snprintf(buf, size, "%s/%s", dir, name);
    copy_file(from, buf);
}

static int64_t read_i64_attr(hid_t obj, const char *name) {
    int64_t value = -1;
    hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
    ck_assert_int_ge(attr, 0);
    H5_OK(H5Aread(attr, H5T_NATIVE_INT64, &value));
    H5Aclose(attr);
    return value;
}

/* Reads a scalar string attribute (variable-length) or dataset (fixed-length, which parallel HDF5
 * can write; variable-length accepted too) into buf. */
static void read_string(hid_t file, const char *name, bool as_dataset, char *buf, size_t size) {
    char *text = NULL;
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, H5T_VARIABLE);
    H5Tset_cset(type, H5T_CSET_UTF8);
    if (as_dataset) {
        hid_t dset = H5Dopen2(file, name, H5P_DEFAULT), stored = H5Dget_type(dset);
        ck_assert_int_eq(H5Tget_class(stored), H5T_STRING);
        if (H5Tis_variable_str(stored) > 0) {
            H5_OK(H5Dread(dset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, &text));
        } else {
            size_t n = H5Tget_size(stored);
            ck_assert_uint_lt(n, size);
            memset(buf, 0, size);
            H5_OK(H5Dread(dset, stored, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf));
        }
        H5Tclose(stored);
        H5Dclose(dset);
    } else {
        hid_t attr = H5Aopen(file, name, H5P_DEFAULT);
        H5_OK(H5Aread(attr, type, &text));
        H5Aclose(attr);
    }
    H5Tclose(type);
    if (!as_dataset || text) {
        ck_assert_ptr_nonnull(text);
        snprintf(buf, size, "%s", text);
        H5free_memory(text);
    }
}

/* ---- file surgery on copies, through the HDF5 C API ---- */

static hid_t edit(const char *path) {
    hid_t file = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    ck_assert_msg(file >= 0, "H5Fopen(%s) failed", path);
    return file;
}

/* Replaces dataset `name` with one of file_type and shape dims holding data (mem_type), with a
 * crc32 attribute that matches its bytes: a well-formed tensor, just not the expected one. */
static void replace_dataset(const char *path, const char *name, hid_t file_type, hid_t mem_type,
                            int ndim, const hsize_t *dims, const void *data, size_t nbytes) {
    hid_t file = edit(path), space, dset, aspace, attr;
    uint32_t crc = (uint32_t)crc32(0L, data, (uInt)nbytes);
    H5_OK(H5Ldelete(file, name, H5P_DEFAULT));
    H5_OK(space = H5Screate_simple(ndim, dims, NULL));
    H5_OK(dset = H5Dcreate2(file, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    H5_OK(H5Dwrite(dset, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data));
    H5_OK(aspace = H5Screate(H5S_SCALAR));
    H5_OK(attr = H5Acreate2(dset, "crc32", H5T_STD_U32LE, aspace, H5P_DEFAULT, H5P_DEFAULT));
    H5_OK(H5Awrite(attr, H5T_NATIVE_UINT32, &crc));
    H5Aclose(attr);
    H5Sclose(aspace);
    H5Dclose(dset);
    H5Sclose(space);
    H5_OK(H5Fclose(file));
}

static void delete_link(const char *path, const char *name) {
    hid_t file = edit(path);
    H5_OK(H5Ldelete(file, name, H5P_DEFAULT));
    H5_OK(H5Fclose(file));
}

/* Deletes attribute `attr` of object `obj` ("/" for the root). */
static void delete_attr(const char *path, const char *obj, const char *attr) {
    hid_t file = edit(path);
    H5_OK(H5Adelete_by_name(file, obj, attr, H5P_DEFAULT));
    H5_OK(H5Fclose(file));
}

static void set_format_version(const char *path, int32_t version) {
    hid_t file = edit(path), attr;
    H5_OK(attr = H5Aopen(file, "format_version", H5P_DEFAULT));
    H5_OK(H5Awrite(attr, H5T_NATIVE_INT32, &version));
    H5Aclose(attr);
    H5_OK(H5Fclose(file));
}

/* Flips the lowest bit of byte `byte` of dataset `name`'s data, found through H5Dget_offset
 * (contiguous layout) and changed with pwrite: the file stays well-formed HDF5. */
static void flip_data_byte(const char *path, const char *name, int64_t byte) {
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT), dset;
    ck_assert_int_ge(file, 0);
    H5_OK(dset = H5Dopen2(file, name, H5P_DEFAULT));
    haddr_t offset = H5Dget_offset(dset);
    ck_assert_msg(offset != HADDR_UNDEF, "%s is not contiguous", name);
    H5Dclose(dset);
    H5_OK(H5Fclose(file));
    int fd = open(path, O_RDWR);
    unsigned char c;
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pread(fd, &c, 1, (off_t)(offset + (haddr_t)byte)), 1);
    c ^= 0x01;
    ck_assert_int_eq(pwrite(fd, &c, 1, (off_t)(offset + (haddr_t)byte)), 1);
    close(fd);
}

/* ---- optimizers with known state ---- */

static struct optim *make_optim(optim_kind kind, double momentum, const struct nn_param_list *p) {
    struct optim_config cfg = optim_config_default(kind);
    cfg.momentum = momentum;
    struct optim *opt = optim_create(&cfg, p);
    ck_assert_msg(opt != NULL, "optim_create: %s", bt_last_error());
    return opt;
}

/* Every state tensor of opt gets values from `seed` (floats that use all mantissa bits, int64
 * steps above 2^32) and the step count seed + 17. */
static void fill_optim_state(struct optim *opt, uint64_t seed) {
    const char *const *states;
    int n_states = optim_state_names(opt, &states);
    struct bt_rng rng = bt_rng_make(seed);
    for (int64_t i = 0; i < optim_num_params(opt); i++)
        for (int s = 0; s < n_states; s++) {
            bt_tensor *t = optim_state(opt, i, states[s]);
            ck_assert_ptr_nonnull(t);
            if (t->dtype == BT_I64)
                *(int64_t *)bt_data(t) = (int64_t)(seed << 33) + i * 3 + s;
            else
                bt_fill_normal(t, &rng, (float)s, 1.0f);
        }
    optim_set_step_count(opt, (int64_t)seed + 17);
}

/* a and b hold bit-identical state for every parameter */
static void assert_same_state(const struct optim *a, const struct optim *b) {
    const char *const *states;
    int n_states = optim_state_names(a, &states);
    ck_assert_int_eq(optim_num_params(a), optim_num_params(b));
    for (int64_t i = 0; i < optim_num_params(a); i++)
        for (int s = 0; s < n_states; s++) {
            bt_tensor *x = optim_state(a, i, states[s]), *y = optim_state(b, i, states[s]);
            ck_assert_ptr_nonnull(x);
            ck_assert_ptr_nonnull(y);
            ck_assert_uint_eq(bt_nbytes(x), bt_nbytes(y));
            ck_assert_msg(!memcmp(bt_data(x), bt_data(y), bt_nbytes(x)), "%s/%s differs",
                          optim_param_name(a, i), states[s]);
        }
    ck_assert_int_eq(optim_step_count(a), optim_step_count(b));
}

static void assert_same_params(const struct nn_param_list *a, const struct nn_param_list *b) {
    ck_assert_int_eq(a->count, b->count);
    for (int64_t i = 0; i < a->count; i++) {
        ck_assert_str_eq(a->names[i], b->names[i]);
        ck_assert_msg(
            !memcmp(bt_data(a->tensors[i]), bt_data(b->tensors[i]), bt_nbytes(a->tensors[i])),
            "%s differs", a->names[i]);
    }
}

/* ---- round trips ---- */

START_TEST(test_round_trip_is_bit_exact) {
    make_dir();
    struct bt_rng rng = bt_rng_make(1), other_rng = bt_rng_make(2);
    struct nn_module *a = make_net((struct net_options){0}, &rng);
    struct nn_module *b = make_net((struct net_options){0}, &other_rng);
    struct nn_param_list pa, pb;
    char path[128], text[256];
    params_of(a, &pa);
    bt_fill(pa.tensors[4], 0.1); /* ln.bias: not all zeros */
    struct ckpt_meta meta = meta_for(10);
    meta.config_yaml = "model:\n  n_layer: 2\n";
    ck_assert_msg(ckpt_save(dir, &pa, NULL, &meta, 0) == BT_OK, "%s", bt_last_error());
    step_path(path, sizeof path, 10);
    ck_assert_msg(load(b, path) == BT_OK, "%s", bt_last_error());
    params_of(b, &pb);
    ck_assert_int_eq(pa.count, 5);
    assert_same_params(&pa, &pb);
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    ck_assert_int_ge(file, 0);
    ck_assert_int_eq(read_i64_attr(file, "step"), 10);
    ck_assert_int_eq(read_i64_attr(file, "tokens_seen"), 10000);
    ck_assert_int_eq(read_i64_attr(file, "format_version"), CKPT_FORMAT_VERSION);
    ck_assert_int_eq(CKPT_FORMAT_VERSION, 2);
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
    uint32_t crc = 0; /* the crc32 attribute is zlib's crc32 of the bytes */
    hid_t attr = H5Aopen(dset, "crc32", H5P_DEFAULT);
    ck_assert_int_ge(attr, 0);
    H5_OK(H5Aread(attr, H5T_NATIVE_UINT32, &crc));
    ck_assert_uint_eq(crc, (uint32_t)crc32(0L, bt_data(pa.tensors[0]), 12 * sizeof(float)));
    ck_assert_str_eq(pa.names[0], "fc1.weight");
    H5Aclose(attr);
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

/* Every field of ckpt_meta comes back as saved: 64-bit values beyond int64's range for the
 * unsigned ones, a double with all mantissa bits, UTF-8 text; NULL strings come back "". */
START_TEST(test_meta_round_trip) {
    make_dir();
    struct nn_module *net = make_net((struct net_options){0}, NULL);
    struct nn_param_list list;
    char path[128];
    params_of(net, &list);
    const char *config = "model:\n  arch: gpt\n  n_layer: 12\ntrain:\n  seed: 1337\n";
    const char *tokenizer = "name: gpt2\nvocab_size: 50257\n# caf\xc3\xa9 \xe2\x86\x92 ok\n";
    struct ckpt_meta meta = {.step = 123456789012LL,
                             .tokens_seen = 9000000000000LL,
                             .lr = 0.1 + 0.2, /* 0.30000000000000004 */
                             .dropout_seed = 0xFEDCBA9876543210ULL,
                             .dropout_offset = 0x8000000000000001ULL,
                             .data_seed = UINT64_MAX,
                             .data_shuffle = true,
                             .data_seq_len = 1024,
                             .data_position = 4611686018427387904LL,
                             .config_yaml = config,
                             .tokenizer_yaml = tokenizer};
    ck_assert_msg(ckpt_save(dir, &list, NULL, &meta, 0) == BT_OK, "%s", bt_last_error());
    ck_assert_msg(ckpt_resolve(dir, path, sizeof path) == BT_OK, "%s", bt_last_error());
    struct ckpt_file *f = open_ok(path);
    const struct ckpt_meta *m = ckpt_meta(f);
    ck_assert_int_eq(m->step, meta.step);
    ck_assert_int_eq(m->tokens_seen, meta.tokens_seen);
    ck_assert_msg(m->lr == meta.lr, "lr %.17g, saved %.17g", m->lr, meta.lr);
    ck_assert_uint_eq(m->dropout_seed, meta.dropout_seed);
    ck_assert_uint_eq(m->dropout_offset, meta.dropout_offset);
    ck_assert_uint_eq(m->data_seed, meta.data_seed);
    ck_assert(m->data_shuffle);
    ck_assert_int_eq(m->data_seq_len, 1024);
    ck_assert_int_eq(m->data_position, meta.data_position);
    ck_assert_str_eq(m->config_yaml, config);
    ck_assert_str_eq(m->tokenizer_yaml, tokenizer);
    ck_assert_str_eq(ckpt_optimizer_name(f), ""); /* saved without an optimizer */
    ck_assert_int_eq(ckpt_optimizer_steps(f), 0);
    ck_assert_str_eq(ckpt_path(f), path);
    ck_assert_str_eq(ckpt_braid_version(f), BRAID_VERSION);
    ckpt_close(f);

    struct ckpt_meta plain = {.step = 0, .data_shuffle = false}; /* zeros, false, NULL strings */
    ck_assert_msg(ckpt_save(dir, &list, NULL, &plain, 0) == BT_OK, "%s", bt_last_error());
    step_path(path, sizeof path, 0);
    f = open_ok(path);
    m = ckpt_meta(f);
    ck_assert_int_eq(m->step, 0);
    ck_assert_int_eq(m->tokens_seen, 0);
    ck_assert(m->lr == 0.0);
    ck_assert(!m->data_shuffle);
    ck_assert_uint_eq(m->dropout_seed, 0);
    ck_assert_str_eq(m->config_yaml, "");
    ck_assert_str_eq(m->tokenizer_yaml, "");
    ckpt_close(f);
    nn_param_list_free(&list);
    nn_module_free(net);
    remove_dir();
}
END_TEST

/* AdamW's exp_avg, exp_avg_sq, per-parameter step and step count come back bit-equal in a fresh
 * optimizer; the model too. */
START_TEST(test_optim_adamw_round_trip) {
    make_dir();
    struct bt_rng rng = bt_rng_make(3);
    struct nn_module *a = make_net((struct net_options){0}, &rng),
                     *b = make_net((struct net_options){0}, NULL);
    struct nn_param_list pa, pb;
    char path[128];
    params_of(a, &pa);
    params_of(b, &pb);
    struct optim *oa = make_optim(OPTIM_ADAMW, 0.0, &pa), *ob = make_optim(OPTIM_ADAMW, 0.0, &pb);
    fill_optim_state(oa, 5);
    struct ckpt_meta meta = meta_for(22);
    ck_assert_msg(ckpt_save(dir, &pa, oa, &meta, 0) == BT_OK, "%s", bt_last_error());
    ck_assert_msg(ckpt_resolve(dir, path, sizeof path) == BT_OK, "%s", bt_last_error());
    struct ckpt_file *f = open_ok(path);
    ck_assert_str_eq(ckpt_optimizer_name(f), "adamw");
    ck_assert_int_eq(ckpt_optimizer_steps(f), 22);
    ck_assert_msg(ckpt_read_model(f, &pb) == BT_OK, "%s", bt_last_error());
    ck_assert_msg(ckpt_read_optim(f, ob) == BT_OK, "%s", bt_last_error());
    ckpt_close(f);
    assert_same_params(&pa, &pb);
    assert_same_state(oa, ob);
    ck_assert_int_eq(optim_step_count(ob), 22);
    bt_tensor *step = optim_state_by_name(ob, "emb.weight", "step");
    ck_assert_ptr_nonnull(step);
    ck_assert_int_eq(*(int64_t *)bt_data(step), (5LL << 33) + 2 * 3 + 2); /* parameter 2, state 2 */

    /* a state missing from the run's optimizer (a model with head.weight) is named */
    struct nn_module *c = make_net((struct net_options){.extra = true}, NULL);
    struct nn_param_list pc;
    params_of(c, &pc);
    struct optim *oc = make_optim(OPTIM_ADAMW, 0.0, &pc);
    f = open_ok(path);
    ck_assert_int_eq(ckpt_read_optim(f, oc), BT_ERR);
    char want[256];
    snprintf(want, sizeof want, "checkpoint %s: dataset /optimizer/head.weight/exp_avg not found",
             path);
    ck_assert_error_contains(want);
    ckpt_close(f);
    /* and state for a parameter the run does not have */
    struct nn_module *d = make_net((struct net_options){.no_ln = true}, NULL);
    struct nn_param_list pd;
    params_of(d, &pd);
    struct optim *od = make_optim(OPTIM_ADAMW, 0.0, &pd);
    f = open_ok(path);
    ck_assert_int_eq(ckpt_read_optim(f, od), BT_ERR);
    snprintf(want, sizeof want,
             "checkpoint %s: dataset /optimizer/ln.bias/exp_avg is not state of this optimizer",
             path);
    ck_assert_error_contains(want);
    ckpt_close(f);
    optim_free(oa);
    optim_free(ob);
    optim_free(oc);
    optim_free(od);
    nn_param_list_free(&pa);
    nn_param_list_free(&pb);
    nn_param_list_free(&pc);
    nn_param_list_free(&pd);
    nn_module_free(a);
    nn_module_free(b);
    nn_module_free(c);
    nn_module_free(d);
    remove_dir();
}
END_TEST

/* SGD with momentum keeps momentum_buffer; without, no state. Reading state into an optimizer of
 * another kind, or state that is not there, is a named error. */
START_TEST(test_optim_sgd_round_trip) {
    make_dir();
    struct bt_rng rng = bt_rng_make(4);
    struct nn_module *a = make_net((struct net_options){0}, &rng);
    struct nn_param_list pa;
    char path[128], want[256];
    params_of(a, &pa);
    struct optim *sgd = make_optim(OPTIM_SGD, 0.9, &pa), *fresh = make_optim(OPTIM_SGD, 0.9, &pa);
    struct optim *adamw = make_optim(OPTIM_ADAMW, 0.0, &pa);
    struct optim *plain = make_optim(OPTIM_SGD, 0.0, &pa);
    fill_optim_state(sgd, 9);
    struct ckpt_meta meta = meta_for(1);
    ck_assert_msg(ckpt_save(dir, &pa, sgd, &meta, 0) == BT_OK, "%s", bt_last_error());
    step_path(path, sizeof path, 1);
    struct ckpt_file *f = open_ok(path);
    ck_assert_str_eq(ckpt_optimizer_name(f), "sgd");
    ck_assert_int_eq(ckpt_num_tensors(f), 5 + 5); /* /model and one momentum_buffer each */
    ck_assert_msg(ckpt_read_optim(f, fresh) == BT_OK, "%s", bt_last_error());
    assert_same_state(sgd, fresh);
    ck_assert_int_eq(ckpt_read_optim(f, adamw), BT_ERR); /* sgd state into adamw */
    snprintf(want, sizeof want, "checkpoint %s: holds sgd optimizer state, the run uses adamw",
             path);
    ck_assert_error_contains(want);
    /* sgd without momentum has no state to take momentum_buffer */
    ck_assert_int_eq(ckpt_read_optim(f, plain), BT_ERR);
    snprintf(want, sizeof want,
             "checkpoint %s: dataset /optimizer/emb.weight/momentum_buffer is not state of this "
             "optimizer",
             path);
    ck_assert_error_contains(want);
    ckpt_close(f);

    fill_optim_state(adamw, 2); /* adamw state into sgd */
    meta = meta_for(2);
    ck_assert_msg(ckpt_save(dir, &pa, adamw, &meta, 0) == BT_OK, "%s", bt_last_error());
    step_path(path, sizeof path, 2);
    f = open_ok(path);
    ck_assert_int_eq(ckpt_read_optim(f, fresh), BT_ERR);
    snprintf(want, sizeof want, "checkpoint %s: holds adamw optimizer state, the run uses sgd",
             path);
    ck_assert_error_contains(want);
    assert_same_state(sgd, fresh); /* untouched */
    ckpt_close(f);

    meta = meta_for(3); /* no optimizer in the file */
    ck_assert_msg(ckpt_save(dir, &pa, NULL, &meta, 0) == BT_OK, "%s", bt_last_error());
    step_path(path, sizeof path, 3);
    f = open_ok(path);
    ck_assert_int_eq(ckpt_read_optim(f, fresh), BT_ERR);
    snprintf(want, sizeof want, "checkpoint %s: holds no optimizer state, the run uses sgd", path);
    ck_assert_error_contains(want);
    ckpt_close(f);

    optim_set_step_count(plain, 41); /* momentum 0: only the step count */
    meta = meta_for(4);
    ck_assert_msg(ckpt_save(dir, &pa, plain, &meta, 0) == BT_OK, "%s", bt_last_error());
    step_path(path, sizeof path, 4);
    struct optim *plain2 = make_optim(OPTIM_SGD, 0.0, &pa);
    f = open_ok(path);
    ck_assert_int_eq(ckpt_num_tensors(f), 5);
    ck_assert_msg(ckpt_read_optim(f, plain2) == BT_OK, "%s", bt_last_error());
    ck_assert_int_eq(optim_step_count(plain2), 41);
    ckpt_close(f);
    optim_free(sgd);
    optim_free(fresh);
    optim_free(adamw);
    optim_free(plain);
    optim_free(plain2);
    nn_param_list_free(&pa);
    nn_module_free(a);
    remove_dir();
}
END_TEST

/* ckpt_num_tensors / ckpt_tensor list /model then /optimizer, each in name order, with shape and
 * dtype; ckpt_read_tensor gives each back bit-equal. */
START_TEST(test_tensor_listing) {
    make_dir();
    struct bt_rng rng = bt_rng_make(6);
    struct nn_module *net = make_net((struct net_options){0}, &rng);
    struct nn_param_list list;
    char path[128], want[256];
    params_of(net, &list);
    struct optim *opt = make_optim(OPTIM_ADAMW, 0.0, &list);
    fill_optim_state(opt, 1);
    struct ckpt_meta meta = meta_for(5);
    ck_assert_msg(ckpt_save(dir, &list, opt, &meta, 0) == BT_OK, "%s", bt_last_error());
    step_path(path, sizeof path, 5);
    struct ckpt_file *f = open_ok(path);
    static const struct {
        const char *name;
        int ndim;
        int64_t d0, d1;
    } want_list[] = {
        {"/model/emb.weight", 2, 5, 4},
        {"/model/fc1.bias", 1, 3, 0},
        {"/model/fc1.weight", 2, 3, 4},
        {"/model/ln.bias", 1, 3, 0},
        {"/model/ln.weight", 1, 3, 0},
        {"/optimizer/emb.weight/exp_avg", 2, 5, 4},
        {"/optimizer/emb.weight/exp_avg_sq", 2, 5, 4},
        {"/optimizer/emb.weight/step", 0, 0, 0},
        {"/optimizer/fc1.bias/exp_avg", 1, 3, 0},
        {"/optimizer/fc1.bias/exp_avg_sq", 1, 3, 0},
        {"/optimizer/fc1.bias/step", 0, 0, 0},
        {"/optimizer/fc1.weight/exp_avg", 2, 3, 4},
        {"/optimizer/fc1.weight/exp_avg_sq", 2, 3, 4},
        {"/optimizer/fc1.weight/step", 0, 0, 0},
        {"/optimizer/ln.bias/exp_avg", 1, 3, 0},
        {"/optimizer/ln.bias/exp_avg_sq", 1, 3, 0},
        {"/optimizer/ln.bias/step", 0, 0, 0},
        {"/optimizer/ln.weight/exp_avg", 1, 3, 0},
        {"/optimizer/ln.weight/exp_avg_sq", 1, 3, 0},
        {"/optimizer/ln.weight/step", 0, 0, 0},
    };
    int64_t n = (int64_t)(sizeof want_list / sizeof want_list[0]);
    ck_assert_int_eq(ckpt_num_tensors(f), n);
    for (int64_t i = 0; i < n; i++) {
        const struct ckpt_tensor_info *info = ckpt_tensor(f, i);
        ck_assert_ptr_nonnull(info);
        ck_assert_str_eq(info->name, want_list[i].name);
        ck_assert_int_eq(info->ndim, want_list[i].ndim);
        if (info->ndim > 0) ck_assert_int_eq(info->shape[0], want_list[i].d0);
        if (info->ndim > 1) ck_assert_int_eq(info->shape[1], want_list[i].d1);
        ck_assert_int_eq(info->dtype, want_list[i].ndim == 0 ? BT_I64 : BT_F32);
        bt_tensor *t = ckpt_read_tensor(f, i);
        ck_assert_msg(t != NULL, "%s: %s", info->name, bt_last_error());
        ck_assert_int_eq(t->dtype, info->dtype);
        ck_assert_int_eq(t->ndim, info->ndim);
        /* the tensor it came from */
        const bt_tensor *src = NULL;
        char param[64], state[32];
        if (sscanf(info->name, "/optimizer/%63[^/]/%31s", param, state) == 2)
            src = optim_state_by_name(opt, param, state);
        else
            src = nn_get_parameter(net, info->name + strlen("/model/"));
        ck_assert_ptr_nonnull(src);
        ck_assert_uint_eq(bt_nbytes(t), bt_nbytes(src));
        ck_assert_msg(!memcmp(bt_data(t), bt_data(src), bt_nbytes(t)), "%s differs", info->name);
        bt_tensor_free(t);
    }
    ck_assert_ptr_null(ckpt_tensor(f, -1));
    ck_assert_ptr_null(ckpt_tensor(f, n));
    ck_assert_ptr_null(ckpt_read_tensor(f, n));
    snprintf(want, sizeof want, "checkpoint %s: no tensor %lld", path, (long long)n);
    ck_assert_error_contains(want);
    ckpt_close(f);
    optim_free(opt);
    nn_param_list_free(&list);
    nn_module_free(net);
    remove_dir();
}
END_TEST

/* An error left over from earlier code must not make a good checkpoint fail to open. */
START_TEST(test_open_ignores_earlier_error) {
    make_dir();
    struct nn_module *net = make_net((struct net_options){0}, NULL);
    char path[128];
    save(net, 1, 0);
    step_path(path, sizeof path, 1);
    bt_error("an earlier error the caller handled");
    struct ckpt_file *f = ckpt_open(path);
    ck_assert_msg(f != NULL, "ckpt_open: %s", bt_last_error());
    ckpt_close(f);
    bt_error_clear();
    nn_module_free(net);
    remove_dir();
}
END_TEST

/* ---- the latest pointer and pruning ---- */

START_TEST(test_latest_points_at_newest) {
    make_dir();
    struct bt_rng rng = bt_rng_make(1);
    struct nn_module *net = make_net((struct net_options){0}, &rng);
    char path[128], want[256], line[64];
    ck_assert_int_eq(ckpt_resolve(dir, path, sizeof path), BT_ERR);
    snprintf(want, sizeof want, "checkpoint dir '%s': no latest checkpoint", dir);
    ck_assert_error_contains(want);
    save(net, 10, 0);
    ck_assert_int_eq(ckpt_resolve(dir, path, sizeof path), BT_OK);
    step_path(want, sizeof want, 10);
    ck_assert_str_eq(path, want);
    save(net, 20, 0);
    ck_assert_int_eq(ckpt_resolve(dir, path, sizeof path), BT_OK);
    step_path(want, sizeof want, 20);
    ck_assert_str_eq(path, want);
    step_path(want, sizeof want, 10); /* a file resolves to itself */
    ck_assert_int_eq(ckpt_resolve(want, path, sizeof path), BT_OK);
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
    ck_assert_int_eq(ckpt_resolve(dir, path, 10), BT_ERR); /* buffer too small */
    snprintf(want, sizeof want, "checkpoint %s/latest: path '%s/step_00000020.h5' is too long", dir,
             dir);
    ck_assert_error_contains(want);
    char missing[96];
    snprintf(missing, sizeof missing, "%s/nothing", dir); /* a path that does not exist */
    ck_assert_int_eq(ckpt_resolve(missing, path, sizeof path), BT_ERR);
    snprintf(want, sizeof want, "checkpoint %s: cannot open: No such file or directory", missing);
    ck_assert_error_contains(want);
    snprintf(path, sizeof path, "%s/latest", dir); /* a latest that names no file */
    f = fopen(path, "w");
    fputs("\n", f);
    fclose(f);
    ck_assert_int_eq(ckpt_resolve(dir, path, sizeof path), BT_ERR);
    snprintf(want, sizeof want,
             "checkpoint %s/latest: expected one line naming a step_*.h5 file, got ''", dir);
    ck_assert_error_contains(want);
    snprintf(path, sizeof path, "%s/latest", dir); /* latest names a file that is gone */
    f = fopen(path, "w");
    fputs("step_00000020.h5\n", f);
    fclose(f);
    step_path(path, sizeof path, 20);
    unlink(path);
    ck_assert_int_eq(ckpt_resolve(dir, path, sizeof path), BT_ERR);
    snprintf(want, sizeof want,
             "checkpoint %s/latest: names 'step_00000020.h5', which cannot be read: No such file",
             dir);
    ck_assert_error_contains(want);
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
    snprintf(path, sizeof path, "%s/notes.txt", dir); /* files of other names are left alone */
    fclose(fopen(path, "w"));
    save(net, 50, 1);
    step_path(path, sizeof path, 40);
    ck_assert(!exists(path));
    step_path(path, sizeof path, 5);
    ck_assert(!exists(path));
    step_path(path, sizeof path, 50);
    ck_assert(exists(path));
    snprintf(path, sizeof path, "%s/notes.txt", dir);
    ck_assert(exists(path));
    nn_module_free(net);
    remove_dir();
}
END_TEST

/* ---- files that do not fit the model, or are not checkpoints ---- */

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
    snprintf(want, sizeof want, "checkpoint %s: dataset /model/head.weight not found", path);
    ck_assert_error_contains(want);
    ck_assert_int_eq(load(wide, path), BT_ERR);
    snprintf(want, sizeof want,
             "checkpoint %s: dataset /model/fc1.weight has shape (3,4), expected (3,5)", path);
    ck_assert_error_contains(want);
    ck_assert_int_eq(load(no_ln, path), BT_ERR);
    snprintf(want, sizeof want,
             "checkpoint %s: dataset /model/ln.bias is not a parameter of this model", path);
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

/* A tensor of a dtype checkpoints never hold fails the open; an int64 tensor where a float32
 * parameter goes fails the read; both named. */
START_TEST(test_wrong_dtype_is_named) {
    make_dir();
    struct nn_module *net = make_net((struct net_options){0}, NULL);
    char path[128], want[256];
    hsize_t dims[] = {3, 4};
    double f64[12] = {0};
    int64_t i64[12] = {0};
    save(net, 1, 0);
    damaged_copy(1, "f64.h5", path, sizeof path);
    replace_dataset(path, "/model/fc1.weight", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 2, dims, f64,
                    sizeof f64);
    assert_open_fails(path,
                      "/model/fc1.weight has dtype float64 (checkpoints hold float32 and int64 "
                      "tensors)");
    damaged_copy(1, "i64.h5", path, sizeof path);
    replace_dataset(path, "/model/fc1.weight", H5T_STD_I64LE, H5T_NATIVE_INT64, 2, dims, i64,
                    sizeof i64);
    ck_assert_int_eq(load(net, path), BT_ERR);
    snprintf(want, sizeof want,
             "checkpoint %s: dataset /model/fc1.weight has dtype int64, expected float32", path);
    ck_assert_error_contains(want);
    nn_module_free(net);
    remove_dir();
}
END_TEST

START_TEST(test_unreadable_files_are_named) {
    make_dir();
    struct bt_rng rng = bt_rng_make(1);
    struct nn_module *net = make_net((struct net_options){0}, &rng);
    char path[128];
    snprintf(path, sizeof path, "%s/garbage.h5", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    for (int i = 0; i < 200; i++)
        fputs("not an HDF5 file\n", f);
    fclose(f);
    ck_assert_int_eq(load(net, path), BT_ERR);
    char want[256];
    snprintf(want, sizeof want, "checkpoint %s: not a readable HDF5 file (truncated or damaged",
             path);
    ck_assert_error_contains(want);

    snprintf(path, sizeof path, "%s/missing.h5", dir);
    assert_open_fails(path, "cannot open: No such file or directory");
    ck_assert_int_eq(load(net, path), BT_ERR);
    bt_error_clear();

    snprintf(path, sizeof path, "%s/plain.h5", dir); /* HDF5, but not a braid checkpoint */
    H5Fclose(H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
    assert_open_fails(path, "no format_version attribute: not a braid checkpoint");

    assert_open_fails(dir, "is a directory (its latest checkpoint is read through ckpt_resolve)");
    nn_module_free(net);
    remove_dir();
}
END_TEST

START_TEST(test_save_errors_are_named) {
    make_dir();
    struct bt_rng rng = bt_rng_make(1);
    struct nn_module *net = make_net((struct net_options){0}, &rng);
    struct nn_param_list list;
    struct ckpt_meta meta = {.step = 1};
    char blocker[96], sub[128], want[512];
    snprintf(blocker, sizeof blocker, "%s/file", dir); /* a file where a directory must go */
    fclose(fopen(blocker, "w"));
    snprintf(sub, sizeof sub, "%s/ckpt", blocker);
    params_of(net, &list);
    ck_assert_int_eq(ckpt_save(sub, &list, NULL, &meta, 0), BT_ERR);
    snprintf(want, sizeof want, "checkpoint dir '%s': cannot create '%s': Not a directory", sub,
             sub);
    ck_assert_error_contains(want);
    ck_assert_int_eq(ckpt_save(blocker, &list, NULL, &meta, 0), BT_ERR);
    snprintf(want, sizeof want, "checkpoint dir '%s': not a directory", blocker);
    ck_assert_error_contains(want);
    snprintf(sub, sizeof sub, "%s/.step_00000001.h5.tmp", dir); /* HDF5 cannot create the file */
    ck_assert_int_eq(mkdir(sub, 0700), 0);
    ck_assert_int_eq(ckpt_save(dir, &list, NULL, &meta, 0), BT_ERR);
    snprintf(want, sizeof want, "checkpoint %s: HDF5 H5Fcreate(", sub);
    ck_assert_error_contains(want);
    meta.step = -1;
    ck_assert_int_eq(ckpt_save(dir, &list, NULL, &meta, 0), BT_ERR);
    ck_assert_error_contains("checkpoint: step -1 is negative");
    meta.step = 1;
    snprintf(sub, sizeof sub, "%s/a/b", dir); /* nested directories are created */
    ck_assert_msg(ckpt_save(sub, &list, NULL, &meta, 0) == BT_OK, "%s", bt_last_error());
    snprintf(sub, sizeof sub, "%s/a/b/step_00000001.h5", dir);
    ck_assert(exists(sub));
    /* latest cannot be replaced: a named error, and latest still names the step 1 file */
    snprintf(sub, sizeof sub, "%s/a/b/.latest.tmp", dir);
    ck_assert_int_eq(mkdir(sub, 0700), 0);
    meta.step = 2;
    snprintf(blocker, sizeof blocker, "%s/a/b", dir);
    ck_assert_int_eq(ckpt_save(blocker, &list, NULL, &meta, 1), BT_ERR);
    snprintf(want, sizeof want, "checkpoint %s: cannot create: Is a directory", sub);
    ck_assert_error_contains(want);
    char path[160];
    ck_assert_msg(ckpt_resolve(blocker, path, sizeof path) == BT_OK, "%s", bt_last_error());
    snprintf(want, sizeof want, "%s/step_00000001.h5", blocker);
    ck_assert_str_eq(path, want);
    ck_assert_msg(ckpt_load_model(path, &list) == BT_OK, "%s", bt_last_error());
    nn_param_list_free(&list);
    nn_module_free(net);
    remove_dir();
}
END_TEST

/* A weights-only file as a conversion script writes it with h5py: /model/<name> float32 datasets
 * of net's parameters and nothing else (no format_version, no crc32). */
static void write_weights_file(const char *path, const struct nn_param_list *list) {
    hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), model, space, dset;
    ck_assert_int_ge(file, 0);
    H5_OK(model = H5Gcreate2(file, "model", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    for (int64_t p = 0; p < list->count; p++) {
        const bt_tensor *t = list->tensors[p];
        hsize_t dims[BT_MAX_DIMS];
        for (int d = 0; d < t->ndim; d++)
            dims[d] = (hsize_t)t->shape[d];
        H5_OK(space = H5Screate_simple(t->ndim, dims, NULL));
        H5_OK(dset = H5Dcreate2(model, list->names[p], H5T_IEEE_F32LE, space, H5P_DEFAULT,
                                H5P_DEFAULT, H5P_DEFAULT));
        H5_OK(H5Dwrite(dset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, bt_data(t)));
        H5Dclose(dset);
        H5Sclose(space);
    }
    H5Gclose(model);
    H5_OK(H5Fclose(file));
}

static void set_crc_attr(const char *path, const char *name, uint32_t crc) {
    hid_t file = edit(path), dset, space, attr;
    H5_OK(dset = H5Dopen2(file, name, H5P_DEFAULT));
    H5_OK(space = H5Screate(H5S_SCALAR));
    H5_OK(attr = H5Acreate2(dset, "crc32", H5T_STD_U32LE, space, H5P_DEFAULT, H5P_DEFAULT));
    H5_OK(H5Awrite(attr, H5T_NATIVE_UINT32, &crc));
    H5Aclose(attr);
    H5Sclose(space);
    H5Dclose(dset);
    H5_OK(H5Fclose(file));
}

/* model.init_from: ckpt_load_model takes a weights-only HDF5 file (crc32 checked where present);
 * ckpt_open does not, since it is no checkpoint. */
START_TEST(test_weights_only_file_loads) {
    make_dir();
    struct bt_rng rng = bt_rng_make(8);
    struct nn_module *src = make_net((struct net_options){0}, &rng);
    struct nn_module *dst = make_net((struct net_options){0}, NULL);
    struct nn_param_list ps, pd;
    char path[128], want[256];
    params_of(src, &ps);
    params_of(dst, &pd);
    snprintf(path, sizeof path, "%s/weights.h5", dir);
    write_weights_file(path, &ps);
    ck_assert_msg(ckpt_load_model(path, &pd) == BT_OK, "%s", bt_last_error());
    assert_same_params(&ps, &pd);
    assert_open_fails(path, "no format_version attribute: not a braid checkpoint");

    /* a right crc32 is accepted, a wrong one named */
    set_crc_attr(path, "/model/fc1.weight",
                 (uint32_t)crc32(0L, bt_data(ps.tensors[0]), (uInt)bt_nbytes(ps.tensors[0])));
    set_crc_attr(path, "/model/fc1.bias", 0x12345678u);
    ck_assert_int_eq(ckpt_load_model(path, &pd), BT_ERR);
    snprintf(want, sizeof want,
             "checkpoint %s: /model/fc1.bias: checksum mismatch (crc32 of the data 0x%08x, "
             "stored 0x12345678)",
             path, (unsigned)crc32(0L, bt_data(ps.tensors[1]), (uInt)bt_nbytes(ps.tensors[1])));
    ck_assert_error_contains(want);

    /* the same checks of names, shapes and dtypes as for a checkpoint */
    struct nn_module *extra = make_net((struct net_options){.extra = true}, NULL);
    write_weights_file(path, &ps);
    ck_assert_int_eq(load(extra, path), BT_ERR);
    snprintf(want, sizeof want, "checkpoint %s: dataset /model/head.weight not found", path);
    ck_assert_error_contains(want);
    double f64[12] = {0};
    hsize_t dims[] = {3, 4};
    replace_dataset(path, "/model/fc1.weight", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 2, dims, f64,
                    sizeof f64);
    ck_assert_int_eq(ckpt_load_model(path, &pd), BT_ERR);
    snprintf(want, sizeof want,
             "checkpoint %s: /model/fc1.weight has dtype float64 (checkpoints hold float32 and "
             "int64 tensors)",
             path);
    ck_assert_error_contains(want);
    snprintf(path, sizeof path, "%s/no_model.h5", dir); /* HDF5, but no /model */
    H5Fclose(H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
    ck_assert_int_eq(ckpt_load_model(path, &pd), BT_ERR);
    snprintf(want, sizeof want, "checkpoint %s: group /model not found", path);
    ck_assert_error_contains(want);
    nn_param_list_free(&ps);
    nn_param_list_free(&pd);
    nn_module_free(src);
    nn_module_free(dst);
    nn_module_free(extra);
    remove_dir();
}
END_TEST

/* ---- damaged files: each gives its one-line message from open or read ---- */

/* The checkpoint every damage case starts from: net with AdamW state, step 1. */
static void save_full(struct nn_module *net, struct optim **opt_out) {
    struct nn_param_list list;
    params_of(net, &list);
    struct optim *opt = make_optim(OPTIM_ADAMW, 0.0, &list);
    fill_optim_state(opt, 11);
    struct ckpt_meta meta = meta_for(1);
    ck_assert_msg(ckpt_save(dir, &list, opt, &meta, 0) == BT_OK, "%s", bt_last_error());
    nn_param_list_free(&list);
    if (opt_out)
        *opt_out = opt;
    else
        optim_free(opt);
}

START_TEST(test_damaged_truncated_file) {
    make_dir();
    struct bt_rng rng = bt_rng_make(1);
    struct nn_module *net = make_net((struct net_options){0}, &rng);
    char path[128], from[128];
    save_full(net, NULL);
    step_path(from, sizeof from, 1);
    struct stat st;
    ck_assert_int_eq(stat(from, &st), 0);
    /* cut inside the superblock, the metadata and the last tensor's data */
    off_t cuts[] = {0, 7, 100, st.st_size / 2, st.st_size - 1};
    for (size_t c = 0; c < sizeof cuts / sizeof cuts[0]; c++) {
        damaged_copy(1, "cut.h5", path, sizeof path);
        ck_assert_int_eq(truncate(path, cuts[c]), 0);
        assert_open_fails(path, "not a readable HDF5 file (truncated or damaged");
    }
    nn_module_free(net);
    remove_dir();
}
END_TEST

START_TEST(test_damaged_random_bytes) {
    make_dir();
    struct bt_rng rng = bt_rng_make(1);
    struct nn_module *net = make_net((struct net_options){0}, &rng);
    char path[128];
    uint64_t x = 0x9E3779B97F4A7C15ULL; /* xorshift64, fixed seed */
    unsigned char bytes[8192];
    for (size_t i = 0; i < sizeof bytes; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes[i] = (unsigned char)x;
    }
    snprintf(path, sizeof path, "%s/random.h5", dir);
    FILE *f = fopen(path, "wb");
    ck_assert_uint_eq(fwrite(bytes, 1, sizeof bytes, f), sizeof bytes);
    fclose(f);
    assert_open_fails(path, "not a readable HDF5 file (truncated or damaged");
    /* a real checkpoint whose first 2 KiB (superblock, root group) are overwritten */
    save_full(net, NULL);
    damaged_copy(1, "scrambled.h5", path, sizeof path);
    int fd = open(path, O_WRONLY);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pwrite(fd, bytes, 2048, 0), 2048);
    close(fd);
    assert_open_fails(path, "not a readable HDF5 file (truncated or damaged");
    nn_module_free(net);
    remove_dir();
}
END_TEST

START_TEST(test_damaged_dataset_removed) {
    make_dir();
    struct bt_rng rng = bt_rng_make(1);
    struct nn_module *net = make_net((struct net_options){0}, &rng);
    struct nn_param_list list;
    struct optim *opt;
    char path[128], want[256];
    save_full(net, &opt);
    params_of(net, &list);
    damaged_copy(1, "no_bias.h5", path, sizeof path);
    delete_link(path, "/model/fc1.bias");
    struct ckpt_file *f = open_ok(path);
    ck_assert_int_eq(ckpt_read_model(f, &list), BT_ERR);
    snprintf(want, sizeof want, "checkpoint %s: dataset /model/fc1.bias not found", path);
    ck_assert_error_contains(want);
    ckpt_close(f);
    damaged_copy(1, "no_state.h5", path, sizeof path);
    delete_link(path, "/optimizer/ln.weight/exp_avg_sq");
    f = open_ok(path);
    ck_assert_msg(ckpt_read_model(f, &list) == BT_OK, "%s", bt_last_error());
    ck_assert_int_eq(ckpt_read_optim(f, opt), BT_ERR);
    snprintf(want, sizeof want, "checkpoint %s: dataset /optimizer/ln.weight/exp_avg_sq not found",
             path);
    ck_assert_error_contains(want);
    ckpt_close(f);
    damaged_copy(1, "no_config.h5", path, sizeof path);
    delete_link(path, "/config");
    assert_open_fails(path, "dataset /config not found");
    damaged_copy(1, "no_model.h5", path, sizeof path);
    delete_link(path, "/model");
    assert_open_fails(path, "group /model not found");
    optim_free(opt);
    nn_param_list_free(&list);
    nn_module_free(net);
    remove_dir();
}
END_TEST

/* A dataset of another shape with a valid checksum: the read names both shapes, leaves the
 * parameters as they were, and ckpt_read_tensor gives it back as it is in the file. */
START_TEST(test_damaged_wrong_shape) {
    make_dir();
    struct bt_rng rng = bt_rng_make(1);
    struct nn_module *net = make_net((struct net_options){0}, &rng);
    struct nn_module *fresh = make_net((struct net_options){0}, NULL);
    struct nn_param_list list;
    char path[128], want[256];
    float values[12];
    for (int i = 0; i < 12; i++)
        values[i] = (float)i - 5.5f;
    hsize_t dims[] = {4, 3};
    save_full(net, NULL);
    params_of(fresh, &list);
    damaged_copy(1, "shape.h5", path, sizeof path);
    replace_dataset(path, "/model/fc1.weight", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, dims, values,
                    sizeof values);
    struct ckpt_file *f = open_ok(path);
    ck_assert_int_eq(ckpt_read_model(f, &list), BT_ERR);
    snprintf(want, sizeof want,
             "checkpoint %s: dataset /model/fc1.weight has shape (4,3), expected (3,4)", path);
    ck_assert_error_contains(want);
    for (int64_t p = 0; p < list.count; p++) /* nothing was read */
        for (int64_t i = 0; i < bt_numel(list.tensors[p]); i++)
            ck_assert_msg(bt_get(list.tensors[p], i) == (p == 3 ? 1.0 : 0.0), "%s[%lld] changed",
                          list.names[p], (long long)i);
    int64_t i = 0;
    while (i < ckpt_num_tensors(f) && strcmp(ckpt_tensor(f, i)->name, "/model/fc1.weight") != 0)
        i++;
    ck_assert_int_lt(i, ckpt_num_tensors(f));
    ck_assert_int_eq(ckpt_tensor(f, i)->shape[0], 4);
    bt_tensor *t = ckpt_read_tensor(f, i);
    ck_assert_msg(t != NULL, "%s", bt_last_error());
    ck_assert_int_eq(t->shape[0], 4);
    ck_assert_int_eq(t->shape[1], 3);
    ck_assert(!memcmp(bt_data(t), values, sizeof values));
    bt_tensor_free(t);
    ckpt_close(f);
    nn_param_list_free(&list);
    nn_module_free(net);
    nn_module_free(fresh);
    remove_dir();
}
END_TEST

/* One flipped bit in a tensor's data: the file opens, and reading that tensor (as a parameter, as
 * optimizer state or on its own) fails with the checksum message. */
START_TEST(test_damaged_flipped_byte) {
    make_dir();
    struct bt_rng rng = bt_rng_make(1);
    struct nn_module *net = make_net((struct net_options){0}, &rng);
    struct nn_param_list list;
    struct optim *opt;
    char path[128], want[256];
    save_full(net, &opt);
    params_of(net, &list);

    damaged_copy(1, "flip_model.h5", path, sizeof path);
    flip_data_byte(path, "/model/emb.weight", 37);
    struct ckpt_file *f = open_ok(path);
    ck_assert_int_eq(ckpt_read_model(f, &list), BT_ERR);
    snprintf(want, sizeof want,
             "checkpoint %s: /model/emb.weight: checksum mismatch (crc32 of the "
             "data 0x",
             path);
    ck_assert_error_contains(want);
    ck_assert_ptr_null(ckpt_read_tensor(f, 0)); /* /model/emb.weight is first by name */
    ck_assert_error_contains("/model/emb.weight: checksum mismatch");
    bt_tensor *t = ckpt_read_tensor(f, 1); /* the others read fine */
    ck_assert_msg(t != NULL, "%s", bt_last_error());
    bt_tensor_free(t);
    ckpt_close(f);

    damaged_copy(1, "flip_state.h5", path, sizeof path);
    flip_data_byte(path, "/optimizer/fc1.weight/exp_avg_sq", 0);
    f = open_ok(path);
    ck_assert_msg(ckpt_read_model(f, &list) == BT_OK, "%s", bt_last_error());
    ck_assert_int_eq(ckpt_read_optim(f, opt), BT_ERR);
    snprintf(want, sizeof want,
             "checkpoint %s: /optimizer/fc1.weight/exp_avg_sq: checksum mismatch", path);
    ck_assert_error_contains(want);
    ckpt_close(f);

    damaged_copy(1, "flip_step.h5", path, sizeof path); /* the int64 scalar too */
    flip_data_byte(path, "/optimizer/ln.bias/step", 7);
    f = open_ok(path);
    ck_assert_int_eq(ckpt_read_optim(f, opt), BT_ERR);
    snprintf(want, sizeof want, "checkpoint %s: /optimizer/ln.bias/step: checksum mismatch", path);
    ck_assert_error_contains(want);
    ckpt_close(f);
    optim_free(opt);
    nn_param_list_free(&list);
    nn_module_free(net);
    remove_dir();
}
END_TEST

START_TEST(test_damaged_format_version) {
    make_dir();
    struct bt_rng rng = bt_rng_make(1);
    struct nn_module *net = make_net((struct net_options){0}, &rng);
    char path[128], what[256];
    save_full(net, NULL);
    int32_t versions[] = {3, 1, -7};
    for (size_t v = 0; v < sizeof versions / sizeof versions[0]; v++) {
        damaged_copy(1, "version.h5", path, sizeof path);
        set_format_version(path, versions[v]);
        snprintf(what, sizeof what,
                 "format_version %d is not one this braid (%s) reads: it reads format 2",
                 (int)versions[v], BRAID_VERSION);
        assert_open_fails(path, what);
        ck_assert_int_eq(load(net, path), BT_ERR);
        bt_error_clear();
    }
    damaged_copy(1, "no_version.h5", path, sizeof path);
    delete_attr(path, "/", "format_version");
    assert_open_fails(path, "no format_version attribute: not a braid checkpoint");
    nn_module_free(net);
    remove_dir();
}
END_TEST

START_TEST(test_damaged_missing_crc32) {
    make_dir();
    struct bt_rng rng = bt_rng_make(1);
    struct nn_module *net = make_net((struct net_options){0}, &rng);
    char path[128];
    save_full(net, NULL);
    damaged_copy(1, "no_crc.h5", path, sizeof path);
    delete_attr(path, "/model/fc1.weight", "crc32");
    assert_open_fails(path, "attribute /model/fc1.weight.crc32 not found");
    damaged_copy(1, "no_crc_state.h5", path, sizeof path);
    delete_attr(path, "/optimizer/emb.weight/step", "crc32");
    assert_open_fails(path, "attribute /optimizer/emb.weight/step.crc32 not found");
    nn_module_free(net);
    remove_dir();
}
END_TEST

START_TEST(test_damaged_missing_run_state) {
    make_dir();
    struct bt_rng rng = bt_rng_make(1);
    struct nn_module *net = make_net((struct net_options){0}, &rng);
    char path[128];
    save_full(net, NULL);
    static const char *const groups[][2] = {
        {"/rng", "group /rng not found"},
        {"/data", "group /data not found"},
        {"/schedule", "group /schedule not found"},
        {"/optimizer", "group /optimizer not found"},
    };
    for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
        damaged_copy(1, "no_group.h5", path, sizeof path);
        delete_link(path, groups[g][0]);
        assert_open_fails(path, groups[g][1]);
    }
    static const char *const attrs[][3] = {
        {"/", "step", "attribute /step not found"},
        {"/", "tokens_seen", "attribute /tokens_seen not found"},
        {"/rng", "dropout_offset", "attribute /rng.dropout_offset not found"},
        {"/data", "position", "attribute /data.position not found"},
        {"/schedule", "lr", "attribute /schedule.lr not found"},
        {"/optimizer", "name", "attribute /optimizer.name not found"},
        {"/optimizer", "step_count", "attribute /optimizer.step_count not found"},
    };
    for (size_t a = 0; a < sizeof attrs / sizeof attrs[0]; a++) {
        damaged_copy(1, "no_attr.h5", path, sizeof path);
        delete_attr(path, attrs[a][0], attrs[a][1]);
        assert_open_fails(path, attrs[a][2]);
    }
    nn_module_free(net);
    remove_dir();
}
END_TEST

/* Writes a checkpoint of known values for tests/checkpoint_h5py.sh (into
 * $BRAID_CKPT_FIXTURE_DIR when set, kept there) and checks it loads back: parameter p's element i
 * is (100 p + i) / 4 - 7; AdamW state of parameter p: exp_avg[i] = (p + i) / 8, exp_avg_sq[i] =
 * p * i / 16 + 1, step = 1000 + p; step_count 1234; the run state as written below. */
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
    struct optim *opt = make_optim(OPTIM_ADAMW, 0.0, &list);
    for (int64_t p = 0; p < list.count; p++) {
        bt_tensor *m = optim_state(opt, p, "exp_avg"), *v = optim_state(opt, p, "exp_avg_sq");
        for (int64_t i = 0; i < bt_numel(list.tensors[p]); i++) {
            bt_set(list.tensors[p], i, (100.0 * p + i) / 4 - 7);
            bt_set(m, i, (p + i) / 8.0);
            bt_set(v, i, p * i / 16.0 + 1);
        }
        *(int64_t *)bt_data(optim_state(opt, p, "step")) = 1000 + p;
    }
    optim_set_step_count(opt, 1234);
    struct ckpt_meta meta = {.step = 1234,
                             .tokens_seen = 5678901234LL,
                             .lr = 3e-4,
                             .dropout_seed = 42,
                             .dropout_offset = 987654321,
                             .data_seed = 7,
                             .data_shuffle = true,
                             .data_seq_len = 64,
                             .data_position = 14808,
                             .config_yaml = "model:\n  arch: gpt\n",
                             .tokenizer_yaml = "name: char\nvocab_size: 65\n"};
    ck_assert_msg(ckpt_save(dir, &list, opt, &meta, 1) == BT_OK, "%s", bt_last_error());
    for (int64_t p = 0; p < list.count; p++)
        bt_fill(list.tensors[p], 0.0);
    step_path(path, sizeof path, 1234);
    ck_assert_msg(ckpt_load_model(path, &list) == BT_OK, "%s", bt_last_error());
    ck_assert_double_eq(bt_get(list.tensors[2], 3), (200.0 + 3) / 4 - 7);
    optim_free(opt);
    nn_param_list_free(&list);
    nn_module_free(net);
    if (!keep_in)
        remove_dir();
    else
        H5close();
}
END_TEST

/* The CRC-32 of a large tensor, computed in pieces on all threads and joined, is zlib's. */
START_TEST(test_crc32_in_pieces_is_zlibs) {
    size_t n = (40u << 20) + 12345; /* above the threshold for pieces, not a multiple of them */
    unsigned char *bytes = malloc(n);
    ck_assert_ptr_nonnull(bytes);
    for (size_t i = 0; i < n; i++)
        bytes[i] = (unsigned char)(i * 2654435761u >> 13);
    uint32_t whole = (uint32_t)crc32_z(0L, bytes, n);
    ck_assert_uint_eq(ckpt_crc32(bytes, n), whole);
    ck_assert_uint_eq(ckpt_crc32(bytes, 100), (uint32_t)crc32_z(0L, bytes, 100));
    ck_assert_uint_eq(ckpt_crc32(bytes, 0), 0);
    free(bytes);
}
END_TEST

static Suite *checkpoint_suite(void) {
    Suite *s = suite_create("checkpoint");
    bt_suite_add(s, test_round_trip_is_bit_exact);
    bt_suite_add(s, test_crc32_in_pieces_is_zlibs);
    bt_suite_add(s, test_meta_round_trip);
    bt_suite_add(s, test_optim_adamw_round_trip);
    bt_suite_add(s, test_optim_sgd_round_trip);
    bt_suite_add(s, test_tensor_listing);
    bt_suite_add(s, test_open_ignores_earlier_error);
    bt_suite_add(s, test_latest_points_at_newest);
    bt_suite_add(s, test_keep_prunes_older_files);
    bt_suite_add(s, test_mismatched_model_is_named);
    bt_suite_add(s, test_wrong_dtype_is_named);
    bt_suite_add(s, test_unreadable_files_are_named);
    bt_suite_add(s, test_save_errors_are_named);
    bt_suite_add(s, test_weights_only_file_loads);
    bt_suite_add(s, test_damaged_truncated_file);
    bt_suite_add(s, test_damaged_random_bytes);
    bt_suite_add(s, test_damaged_dataset_removed);
    bt_suite_add(s, test_damaged_wrong_shape);
    bt_suite_add(s, test_damaged_flipped_byte);
    bt_suite_add(s, test_damaged_format_version);
    bt_suite_add(s, test_damaged_missing_crc32);
    bt_suite_add(s, test_damaged_missing_run_state);
    bt_suite_add(s, test_h5py_fixture);
    return s;
}

BT_TEST_MAIN(checkpoint_suite)
