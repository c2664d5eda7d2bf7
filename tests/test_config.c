/* Job configuration: defaults, a full file, every class of bad input (each message names file:line
 * and the key), command-line overrides and the cfg_to_yaml round trip. Fixtures live in
 * tests/config_files/; small cases are written to temporary files. */
#include <stdio.h>
#include <unistd.h>

#include "launch/config.h"
#include "tests/gradcheck.h"

/* tests/config_files/<name>, found beside this source file */
static const char *fixture(const char *name) {
    static char path[1024];
    const char *slash = strrchr(__FILE__, '/');
    int dir_len = slash ? (int)(slash - __FILE__) : 1;
    snprintf(path, sizeof path, "%.*s/config_files/%s", dir_len, slash ? __FILE__ : ".", name);
    return path;
}

/* Loads `text` from a temporary file over cfg; the file is removed afterwards. */
static bt_status load_text(struct braid_config *cfg, const char *text) {
    char path[] = "/tmp/braid_test_config_XXXXXX.yaml";
    int fd = mkstemps(path, 5);
    ck_assert_int_ge(fd, 0);
    FILE *f = fdopen(fd, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    bt_status status = cfg_load_file(cfg, path);
    unlink(path);
    return status;
}

static void expect_text_error(const char *text, const char *needle) {
    struct braid_config cfg;
    cfg_defaults(&cfg);
    ck_assert_msg(load_text(&cfg, text) == BT_ERR, "expected an error for:\n%s", text);
    ck_assert_error_contains(needle);
}

static void expect_file_error(const char *name, const char *needle) {
    struct braid_config cfg;
    cfg_defaults(&cfg);
    ck_assert_int_eq(cfg_load_file(&cfg, fixture(name)), BT_ERR);
    ck_assert_error_contains(needle);
}

/* Loads a fixture and expects cfg_finalize to fail with `needle` */
static void expect_finalize_error(const char *name, int world_size, const char *needle) {
    struct braid_config cfg;
    cfg_defaults(&cfg);
    ck_assert_int_eq(cfg_load_file(&cfg, fixture(name)), BT_OK);
    ck_assert_int_eq(cfg_finalize(&cfg, world_size), BT_ERR);
    ck_assert_error_contains(needle);
}

/* Applies overrides over the defaults (with data.train set) and expects finalize to fail */
static void expect_override_finalize_error(const char *const *overrides, int n, int world_size,
                                           const char *needle) {
    struct braid_config cfg;
    cfg_defaults(&cfg);
    ck_assert_int_eq(cfg_apply_override(&cfg, "--data.train=shards/train_*.bin"), BT_OK);
    for (int i = 0; i < n; i++)
        ck_assert_msg(cfg_apply_override(&cfg, overrides[i]) == BT_OK, "%s: %s", overrides[i],
                      bt_last_error());
    ck_assert_int_eq(cfg_finalize(&cfg, world_size), BT_ERR);
    ck_assert_error_contains(needle);
}

#define FINALIZE_FAILS(world_size, needle, ...)                                                    \
    do {                                                                                           \
        const char *const overrides_[] = {__VA_ARGS__};                                            \
        expect_override_finalize_error(overrides_, (int)(sizeof overrides_ / sizeof *overrides_),  \
                                       world_size, needle);                                        \
    } while (0)

static char *to_yaml(const struct braid_config *cfg) {
    size_t n = cfg_to_yaml(cfg, NULL, 0);
    char *text = malloc(n + 1);
    ck_assert_ptr_nonnull(text);
    ck_assert_uint_eq(cfg_to_yaml(cfg, text, n + 1), n);
    ck_assert_uint_eq(strlen(text), n);
    return text;
}

START_TEST(test_defaults) {
    struct braid_config cfg;
    cfg_defaults(&cfg);
    ck_assert_str_eq(cfg.model.arch, "gpt");
    ck_assert_int_eq(cfg.model.vocab_size, 0);
    ck_assert_int_eq(cfg.model.block_size, 1024);
    ck_assert_int_eq(cfg.model.n_layer, 12);
    ck_assert_int_eq(cfg.model.n_embd, 768);
    ck_assert(cfg.model.bias);
    ck_assert_str_eq(cfg.model.gelu, "tanh");
    ck_assert_str_eq(cfg.model.init_from, "");
    ck_assert_int_eq(cfg.train.seed, 1337);
    ck_assert_int_eq(cfg.train.batch_size, 12);
    ck_assert_str_eq(cfg.train.device, "cpu");
    ck_assert_str_eq(cfg.train.dtype, "float32");
    ck_assert_str_eq(cfg.optimizer.name, "adamw");
    ck_assert_double_eq(cfg.optimizer.lr, 6e-4);
    ck_assert_double_eq(cfg.optimizer.beta2, 0.95);
    ck_assert_str_eq(cfg.schedule.name, "cosine");
    ck_assert_double_eq(cfg.schedule.min_lr, 6e-5);
    ck_assert_str_eq(cfg.parallel.schedule, "1f1b");
    ck_assert(cfg.data.shuffle);
    ck_assert_str_eq(cfg.checkpoint.dir, "checkpoints");
    ck_assert_str_eq(cfg.checkpoint.resume, "auto");
    ck_assert_int_eq(cfg.checkpoint.keep, 3);
    ck_assert_str_eq(cfg.log.dir, "runs");
    ck_assert(!cfg_is_set(&cfg, "model.n_layer"));
    char where[64];
    ck_assert_str_eq(cfg_origin(&cfg, "model.n_layer", where, sizeof where), "default");
    ck_assert_ptr_null(cfg_origin(&cfg, "model.n_layers", where, sizeof where));

    /* derived defaults */
    ck_assert_int_eq(cfg_apply_override(&cfg, "--data.train=shards/train_*.bin"), BT_OK);
    ck_assert_int_eq(cfg_finalize(&cfg, 1), BT_OK);
    ck_assert_int_eq(cfg.model.n_kv_head, 12);
    ck_assert_int_eq(cfg.model.ffn_hidden, 3072);
    ck_assert(cfg.model.tie_embeddings);
    ck_assert_int_eq(cfg.train.seq_len, 1024);
    ck_assert_int_eq(cfg.schedule.decay_steps, 2000);
    ck_assert_int_eq(cfg.parallel.microbatches, 1);
}
END_TEST

START_TEST(test_empty_files_are_defaults) {
    const char *names[] = {"empty.yaml", "comments_only.yaml"};
    struct braid_config defaults;
    cfg_defaults(&defaults);
    char *expected = to_yaml(&defaults);
    for (int i = 0; i < 2; i++) {
        struct braid_config cfg;
        cfg_defaults(&cfg);
        ck_assert_int_eq(cfg_load_file(&cfg, fixture(names[i])), BT_OK);
        char *got = to_yaml(&cfg);
        ck_assert_str_eq(got, expected);
        free(got);
    }
    free(expected);
}
END_TEST

START_TEST(test_llama_derived_defaults) {
    struct braid_config cfg;
    cfg_defaults(&cfg);
    ck_assert_int_eq(load_text(&cfg, "model: {arch: llama, n_embd: 4096, n_head: 32}\n"
                                     "data: {train: x.bin}\n"),
                     BT_OK);
    ck_assert_int_eq(cfg_finalize(&cfg, 1), BT_OK);
    ck_assert_int_eq(cfg.model.ffn_hidden, 11008); /* LLaMA-7B */
    ck_assert(!cfg.model.tie_embeddings);
    cfg_defaults(&cfg);
    ck_assert_int_eq(cfg_apply_override(&cfg, "model.arch=llama"), BT_OK);
    ck_assert_int_eq(cfg_apply_override(&cfg, "model.tie_embeddings=true"), BT_OK);
    ck_assert_int_eq(cfg_apply_override(&cfg, "data.train=x.bin"), BT_OK);
    ck_assert_int_eq(cfg_finalize(&cfg, 1), BT_OK);
    ck_assert_int_eq(cfg.model.ffn_hidden, 2048); /* 2/3 of 3072 */
    ck_assert(cfg.model.tie_embeddings);          /* set explicitly: kept */
}
END_TEST

START_TEST(test_full_file) {
    struct braid_config cfg;
    cfg_defaults(&cfg);
    ck_assert_msg(cfg_load_file(&cfg, fixture("full.yaml")) == BT_OK, "%s", bt_last_error());
    ck_assert_msg(cfg_finalize(&cfg, 8) == BT_OK, "%s", bt_last_error());
    ck_assert_str_eq(cfg.model.arch, "llama");
    ck_assert_int_eq(cfg.model.vocab_size, 50304);
    ck_assert_int_eq(cfg.model.n_kv_head, 4);
    ck_assert_int_eq(cfg.model.ffn_hidden, 1536);
    ck_assert_double_eq(cfg.model.dropout, 0.1);
    ck_assert(!cfg.model.bias);
    ck_assert_str_eq(cfg.model.gelu, "exact");
    ck_assert_double_eq(cfg.model.norm_eps, 1e-6);
    ck_assert_double_eq(cfg.model.rope_theta, 500000.0);
    ck_assert(cfg.model.tie_embeddings);
    ck_assert_str_eq(cfg.model.init_from, "weights/init.h5");
    ck_assert_int_eq(cfg.train.seed, 42);
    ck_assert_int_eq(cfg.train.seq_len, 128);
    ck_assert_str_eq(cfg.train.dtype, "bfloat16");
    ck_assert_str_eq(cfg.optimizer.name, "sgd");
    ck_assert_double_eq(cfg.optimizer.lr, 3e-4);
    ck_assert_double_eq(cfg.optimizer.momentum, 0.9);
    ck_assert_str_eq(cfg.schedule.name, "linear");
    ck_assert_int_eq(cfg.schedule.decay_steps, 400);
    ck_assert_int_eq(cfg.parallel.zero, 1);
    ck_assert_str_eq(cfg.parallel.schedule, "gpipe");
    ck_assert_str_eq(cfg.data.train, "data/shakespeare/train_*.bin");
    ck_assert_str_eq(cfg.data.val, "data/shakespeare/val_*.bin");
    ck_assert(!cfg.data.shuffle);
    ck_assert_str_eq(cfg.checkpoint.resume, "none");
    ck_assert_str_eq(cfg.log.dir, "runs/test");
    ck_assert_int_eq(cfg.log.every, 1);
    ck_assert_str_eq(cfg.source, fixture("full.yaml"));
    char where[1100], expected[1100];
    snprintf(expected, sizeof expected, "%s:6", fixture("full.yaml"));
    ck_assert_str_eq(cfg_origin(&cfg, "model.n_layer", where, sizeof where), expected);
    ck_assert(cfg_is_set(&cfg, "log.every"));
}
END_TEST

START_TEST(test_syntax_error) {
    expect_file_error("syntax_error.yaml", "syntax_error.yaml:4: YAML syntax error: did not find "
                                           "expected ',' or ']'");
    expect_text_error("model:\n  n_layer: 4\n n_head: 2\n", ".yaml:3: YAML syntax error: ");
    expect_text_error("model: [\n", "YAML syntax error");
    expect_text_error("model:\n  arch: gpt\n  gelu: \xc3\x28\n",
                      ".yaml:3: YAML syntax error: invalid trailing UTF-8 octet");
    expect_file_error("two_documents.yaml", "two_documents.yaml:4: a second YAML document");
}
END_TEST

START_TEST(test_unknown_key) {
    expect_file_error("unknown_key.yaml",
                      "unknown_key.yaml:3: unknown key 'model.n_layers' (did you mean "
                      "'model.n_layer'?)");
    expect_text_error("model:\n  lr: 0.1\n", ":2: unknown key 'model.lr' (did you mean "
                                             "'optimizer.lr'?)");
    expect_text_error("train:\n  frobnicate: 1\n", ":2: unknown key 'train.frobnicate'");
    expect_text_error("model:\n  [a]: 1\n", ":2: expected a key name, got a sequence");
}
END_TEST

START_TEST(test_unknown_section) {
    expect_file_error("unknown_section.yaml",
                      "unknown_section.yaml:3: unknown section 'trian' (did you mean 'train'?)");
    expect_text_error("\nn_layer: 4\n", ":2: unknown section 'n_layer' (did you mean "
                                        "'model.n_layer'?)");
    expect_text_error("zzz: {}\n", ":1: unknown section 'zzz'");
}
END_TEST

START_TEST(test_wrong_type_int) {
    expect_file_error("bad_int.yaml", "bad_int.yaml:3: model.n_head: expected an integer, got "
                                      "'eight'");
    expect_text_error("model:\n  n_layer: 1.5\n",
                      ":2: model.n_layer: expected an integer, got '1.5'");
    expect_text_error("model:\n  n_layer: \"12\"\n",
                      ":2: model.n_layer: expected an integer, got the string '12'");
    expect_text_error("train:\n  seed: 99999999999999999999\n",
                      ":2: train.seed: expected an integer, got '99999999999999999999' (out of "
                      "range)");
    expect_text_error("model:\n  n_layer:\n", ":2: model.n_layer: expected an integer, got ''");
    expect_file_error("not_scalar.yaml",
                      "not_scalar.yaml:3: model.n_layer: expected an integer, got a sequence");
    expect_text_error("model:\n  n_layer: {a: 1}\n",
                      ":2: model.n_layer: expected an integer, got a mapping");
}
END_TEST

START_TEST(test_wrong_type_float) {
    expect_file_error("bad_float.yaml", "bad_float.yaml:2: optimizer.lr: expected a number, got "
                                        "'fast'");
    expect_text_error("optimizer:\n  lr: .nan\n",
                      ":2: optimizer.lr: expected a number, got '.nan'");
    expect_text_error("optimizer:\n  lr: .inf\n", ":2: optimizer.lr: expected a number");
    expect_text_error("optimizer:\n  lr: 1e999\n",
                      ":2: optimizer.lr: expected a number, got '1e999' (out of range)");
    expect_text_error("optimizer:\n  lr: true\n", ":2: optimizer.lr: expected a number");
    expect_text_error("optimizer:\n  lr: 1e\n", ":2: optimizer.lr: expected a number");
    struct braid_config cfg;
    cfg_defaults(&cfg);
    ck_assert_int_eq(load_text(&cfg, "optimizer: {lr: 1, eps: .5e-3, beta1: -0.0}\n"), BT_OK);
    ck_assert_double_eq(cfg.optimizer.lr, 1.0);
    ck_assert_double_eq(cfg.optimizer.eps, 5e-4);
}
END_TEST

START_TEST(test_wrong_type_bool) {
    expect_file_error("bad_bool.yaml",
                      "bad_bool.yaml:3: data.shuffle: expected true or false, got 'yes'");
    expect_text_error("model:\n  bias: 1\n", ":2: model.bias: expected true or false, got '1'");
    expect_text_error("model:\n  bias: \"true\"\n",
                      ":2: model.bias: expected true or false, got the string 'true'");
}
END_TEST

START_TEST(test_wrong_type_enum) {
    expect_file_error("bad_enum.yaml",
                      "bad_enum.yaml:3: model.arch: 'gtp' is not one of gpt, llama");
    expect_text_error("train:\n  dtype: fp16\n",
                      ":2: train.dtype: 'fp16' is not one of float32, bfloat16");
    expect_text_error("parallel:\n  schedule: [1f1b]\n",
                      ":2: parallel.schedule: expected one of 1f1b, gpipe, got a sequence");
}
END_TEST

START_TEST(test_not_a_mapping) {
    expect_file_error("section_not_mapping.yaml",
                      "section_not_mapping.yaml:1: section 'model' must be a mapping of keys, got "
                      "a scalar");
    expect_text_error("- model\n- train\n",
                      ":1: expected a mapping of sections (model:, train:, ...), got a sequence");
}
END_TEST

START_TEST(test_duplicates) {
    expect_file_error("duplicate_key.yaml",
                      "duplicate_key.yaml:4: duplicate key 'model.n_layer' (first set at line 2)");
    expect_file_error("duplicate_section.yaml",
                      "duplicate_section.yaml:5: duplicate section 'model' (first at line 1)");
}
END_TEST

START_TEST(test_missing_file) {
    expect_file_error("no_such_file.yaml",
                      "no_such_file.yaml: cannot open: No such file or directory");
    expect_file_error("", "config_files/: cannot open: Is a directory");
}
END_TEST

START_TEST(test_failed_load_changes_nothing) {
    struct braid_config cfg;
    cfg_defaults(&cfg);
    /* bad_int.yaml sets model.n_layer=4 on line 2 before failing on line 3 */
    ck_assert_int_eq(cfg_load_file(&cfg, fixture("bad_int.yaml")), BT_ERR);
    bt_error_clear();
    ck_assert_int_eq(cfg.model.n_layer, 12);
    ck_assert(!cfg_is_set(&cfg, "model.n_layer"));
    ck_assert_str_eq(cfg.source, "");
    ck_assert_int_eq(cfg_apply_override(&cfg, "--model.n_layer=abc"), BT_ERR);
    bt_error_clear();
    ck_assert_int_eq(cfg.model.n_layer, 12);
}
END_TEST

START_TEST(test_relation_divisible) {
    expect_finalize_error("not_divisible.yaml", 1,
                          "not_divisible.yaml:6: model.n_embd=100 is not divisible by "
                          "model.n_head=3 (line 4)");
    FINALIZE_FAILS(1, "command line: model.n_embd=768 (default) is not divisible by model.n_head=5",
                   "--model.n_head=5");
    FINALIZE_FAILS(1,
                   "command line: model.n_head=12 (default) is not divisible by "
                   "model.n_kv_head=5",
                   "--model.n_kv_head=5");
    FINALIZE_FAILS(1, "command line: model.n_embd=24 / model.n_head=8: head size 3 is odd",
                   "--model.n_embd=24", "--model.n_head=8", "--model.arch=llama");
}
END_TEST

START_TEST(test_relation_seq_len) {
    expect_finalize_error("seq_len_too_long.yaml", 1,
                          "seq_len_too_long.yaml:6: train.seq_len=128 must be <= "
                          "model.block_size=64 (line 4)");
}
END_TEST

START_TEST(test_relation_layout) {
    expect_finalize_error("layout.yaml", 2,
                          "layout.yaml:4: parallel.dp=3 × tp=1 × pp=1 = 3 but 2 ranks are running");
    FINALIZE_FAILS(1, "parallel.dp=1 × tp=2 × pp=1 = 2 but 1 rank is running", "--parallel.tp=2");
    FINALIZE_FAILS(5, "command line: parallel.tp=5 does not divide model.n_head=12 (default)",
                   "--parallel.tp=5");
    FINALIZE_FAILS(16, "command line: parallel.pp=16 must be <= model.n_layer=12 (default)",
                   "--parallel.pp=16");
    FINALIZE_FAILS(1, "command line: parallel.zero=2 must be 0 or 1", "--parallel.zero=2");
    FINALIZE_FAILS(2,
                   "command line: parallel.tp=2 does not divide model.vocab_size=65: set "
                   "model.vocab_size to a multiple of 2 (ids above the tokenizer's are never "
                   "seen), e.g. 66",
                   "--parallel.tp=2", "--model.vocab_size=65");
    FINALIZE_FAILS(2, "parallel.tp=2 does not divide train.seq_len=255", "--parallel.tp=2",
                   "--parallel.sequence_parallel=true", "--train.seq_len=255");
}
END_TEST

/* parallel.stage_layers: one positive count per stage, adding up to n_layer */
START_TEST(test_relation_stage_layers) {
    FINALIZE_FAILS(2,
                   "command line: parallel.stage_layers='5,x' must be a list of positive "
                   "block counts: one per pipeline stage, e.g. \"3,5\"",
                   "--parallel.pp=2", "--parallel.stage_layers=5,x");
    FINALIZE_FAILS(2, "parallel.stage_layers='0,12' must be a list of positive block counts",
                   "--parallel.pp=2", "--parallel.stage_layers=0,12");
    FINALIZE_FAILS(2,
                   "parallel.stage_layers='4,4,4' must have one count per stage of "
                   "parallel.pp=2: it names 3 stages",
                   "--parallel.pp=2", "--parallel.stage_layers=4,4,4");
    FINALIZE_FAILS(2,
                   "parallel.stage_layers='5,5' must add up to model.n_layer=12 (default): "
                   "its counts add up to 10",
                   "--parallel.pp=2", "--parallel.stage_layers=5,5");
    FINALIZE_FAILS(2,
                   "parallel.stage_layers='6,6' must have one count per stage of parallel.pp=2: "
                   "it names 2 stages, and parallel.virtual_stages=2",
                   "--parallel.pp=2", "--parallel.virtual_stages=2", "--train.grad_accum=2",
                   "--parallel.stage_layers=6,6");
    /* interleaved 1F1B: its own conditions, named */
    FINALIZE_FAILS(1,
                   "parallel.virtual_stages=2 needs at least 2 pipeline stages, not "
                   "parallel.pp=1",
                   "--parallel.virtual_stages=2");
    FINALIZE_FAILS(2,
                   "parallel.virtual_stages=2 does not work with parallel.schedule=gpipe: "
                   "interleaving is a 1f1b schedule",
                   "--parallel.pp=2", "--parallel.virtual_stages=2", "--parallel.schedule=gpipe");
    FINALIZE_FAILS(2, "train.grad_accum=3 must be a multiple of parallel.pp=2", "--parallel.pp=2",
                   "--parallel.virtual_stages=2", "--train.grad_accum=3");
    FINALIZE_FAILS(4, "parallel.virtual_stages=4 × parallel.pp must be <= model.n_layer=12",
                   "--parallel.pp=4", "--parallel.virtual_stages=4", "--train.grad_accum=4");
    FINALIZE_FAILS(2, "parallel.virtual_stages=0 must be in [1, 16]", "--parallel.pp=2",
                   "--parallel.virtual_stages=0");
    struct braid_config cfg;
    cfg_defaults(&cfg);
    ck_assert_int_eq(cfg_apply_override(&cfg, "--data.train=shards/train_*.bin"), BT_OK);
    ck_assert_int_eq(cfg_apply_override(&cfg, "--parallel.pp=2"), BT_OK);
    ck_assert_int_eq(cfg_apply_override(&cfg, "--parallel.stage_layers=5,7"), BT_OK);
    ck_assert_int_eq(cfg_finalize(&cfg, 2), BT_OK);
    int64_t begin[2], end[2];
    ck_assert(cfg_stage_layers(&cfg, begin, end));
    ck_assert(begin[0] == 0 && end[0] == 5 && begin[1] == 5 && end[1] == 12);
    cfg_defaults(&cfg);
    ck_assert(!cfg_stage_layers(&cfg, begin, end)); /* empty: balanced by the model */
}
END_TEST

START_TEST(test_relation_microbatches) {
    expect_finalize_error("microbatches.yaml", 2,
                          "microbatches.yaml:7: parallel.microbatches=4 must equal "
                          "train.grad_accum=2 (line 4)");
}
END_TEST

START_TEST(test_relation_ranges) {
    FINALIZE_FAILS(1, "command line: model.dropout=1.0 must be in [0.0, 1.0)", "--model.dropout=1");
    FINALIZE_FAILS(1, "command line: optimizer.lr=0.0 must be > 0.0", "--optimizer.lr=0");
    FINALIZE_FAILS(1, "command line: optimizer.beta2=1.0 must be in [0.0, 1.0)",
                   "--optimizer.beta2=1.0");
    FINALIZE_FAILS(1, "command line: optimizer.eps=-1.0e-08 must be > 0.0",
                   "--optimizer.eps=-1e-8");
    FINALIZE_FAILS(1, "command line: model.n_layer=0 must be >= 1", "--model.n_layer=0");
    FINALIZE_FAILS(1, "command line: checkpoint.keep=0 must be >= 1", "--checkpoint.keep=0");
    FINALIZE_FAILS(1, "command line: train.eval_steps=0 must be >= 1: set train.eval_every=0",
                   "--train.eval_steps=0");
    FINALIZE_FAILS(1,
                   "command line: schedule.min_lr=0.001 must be <= optimizer.lr=0.0006 "
                   "(default)",
                   "--schedule.min_lr=1e-3");
    FINALIZE_FAILS(1,
                   "command line: schedule.warmup_steps=3000 must be <= "
                   "schedule.decay_steps=2000 (default, from train.max_steps)",
                   "--schedule.warmup_steps=3000");
    FINALIZE_FAILS(1, "command line: checkpoint.resume='' must be none, auto or a checkpoint path",
                   "--checkpoint.resume=");
    /* a constant schedule never decays to min_lr */
    struct braid_config cfg;
    cfg_defaults(&cfg);
    ck_assert_int_eq(cfg_apply_override(&cfg, "data.train=x.bin"), BT_OK);
    ck_assert_int_eq(cfg_apply_override(&cfg, "schedule.name=constant"), BT_OK);
    ck_assert_int_eq(cfg_apply_override(&cfg, "schedule.min_lr=1"), BT_OK);
    ck_assert_int_eq(cfg_finalize(&cfg, 1), BT_OK);
}
END_TEST

START_TEST(test_data_train_required) {
    struct braid_config cfg;
    cfg_defaults(&cfg);
    ck_assert_int_eq(cfg_finalize(&cfg, 1), BT_ERR);
    ck_assert_error_contains(
        "data.train is not set: name a glob of token shards (braid prep writes them)");
    ck_assert_int_eq(load_text(&cfg, "data:\n  train: \"\"\n"), BT_OK);
    ck_assert_int_eq(cfg_finalize(&cfg, 1), BT_ERR);
    ck_assert_error_contains(".yaml:2: data.train is not set");
}
END_TEST

START_TEST(test_override_precedence) {
    struct braid_config cfg;
    cfg_defaults(&cfg);
    ck_assert_int_eq(cfg_load_file(&cfg, fixture("full.yaml")), BT_OK);
    ck_assert_int_eq(cfg_apply_override(&cfg, "--model.n_layer=6"), BT_OK);
    ck_assert_int_eq(cfg_apply_override(&cfg, "data.shuffle=true"), BT_OK);
    ck_assert_int_eq(cfg_apply_override(&cfg, "-optimizer.lr=1e-3"), BT_OK);
    ck_assert_int_eq(cfg_apply_override(&cfg, "--data.val=a=b.bin"), BT_OK);
    ck_assert_int_eq(cfg.model.n_layer, 6);
    ck_assert(cfg.data.shuffle);
    ck_assert_double_eq(cfg.optimizer.lr, 1e-3);
    ck_assert_str_eq(cfg.data.val, "a=b.bin");
    ck_assert_int_eq(cfg.model.n_head, 8); /* from the file, untouched */
    char where[64];
    ck_assert_str_eq(cfg_origin(&cfg, "model.n_layer", where, sizeof where), "command line");
    ck_assert_int_eq(cfg_finalize(&cfg, 8), BT_OK);
}
END_TEST

START_TEST(test_bad_override) {
    struct braid_config cfg;
    cfg_defaults(&cfg);
    ck_assert_int_eq(cfg_apply_override(&cfg, "--model.n_layer=abc"), BT_ERR);
    ck_assert_error_contains("command line: --model.n_layer=abc: expected an integer, got 'abc'");
    ck_assert_int_eq(cfg_apply_override(&cfg, "--model.n_layers=4"), BT_ERR);
    ck_assert_error_contains("command line: --model.n_layers=4: unknown key 'model.n_layers' (did "
                             "you mean 'model.n_layer'?)");
    ck_assert_int_eq(cfg_apply_override(&cfg, "--modle.n_layer=4"), BT_ERR);
    ck_assert_error_contains("command line: --modle.n_layer=4: unknown section 'modle' (did you "
                             "mean 'model'?)");
    ck_assert_int_eq(cfg_apply_override(&cfg, "--model.n_layer"), BT_ERR);
    ck_assert_error_contains("command line: --model.n_layer: expected --section.key=value");
    ck_assert_int_eq(cfg_apply_override(&cfg, "--n_layer=4"), BT_ERR);
    ck_assert_error_contains("command line: --n_layer=4: expected --section.key=value (did you "
                             "mean 'model.n_layer'?)");
    ck_assert_int_eq(cfg_apply_override(&cfg, "--.n_layer=4"), BT_ERR);
    ck_assert_error_contains("expected --section.key=value");
    ck_assert_int_eq(cfg_apply_override(&cfg, "--model.bias=yes"), BT_ERR);
    ck_assert_error_contains("command line: --model.bias=yes: expected true or false, got 'yes'");
    ck_assert_int_eq(cfg_apply_override(&cfg, "--optimizer.lr=nan"), BT_ERR);
    ck_assert_error_contains("command line: --optimizer.lr=nan: expected a number, got 'nan'");
    ck_assert_int_eq(cfg_apply_override(&cfg, "--model.arch=gtp"), BT_ERR);
    ck_assert_error_contains("command line: --model.arch=gtp: 'gtp' is not one of gpt, llama");
}
END_TEST

START_TEST(test_round_trip) {
    struct braid_config cfg, back;
    cfg_defaults(&cfg);
    ck_assert_int_eq(cfg_load_file(&cfg, fixture("full.yaml")), BT_OK);
    /* strings that need quoting: glob characters, quotes, backslashes, a comment sign */
    ck_assert_int_eq(cfg_apply_override(&cfg, "--data.val=*odd \"name\" \\ #1: x.bin"), BT_OK);
    ck_assert_int_eq(cfg_apply_override(&cfg, "--optimizer.lr=0.1"), BT_OK);
    ck_assert_int_eq(cfg_apply_override(&cfg, "--model.rope_theta=1e20"), BT_OK);
    ck_assert_int_eq(cfg_apply_override(&cfg, "--model.norm_eps=1.5e-7"), BT_OK);
    ck_assert_int_eq(cfg_apply_override(&cfg, "--optimizer.weight_decay=0.30000000000000004"),
                     BT_OK);
    ck_assert_int_eq(cfg_finalize(&cfg, 8), BT_OK);
    char *text = to_yaml(&cfg);
    ck_assert_ptr_nonnull(strstr(text, "model:\n  arch: llama\n  vocab_size: 50304\n"));
    ck_assert_ptr_nonnull(strstr(text, "  lr: 0.1\n"));
    ck_assert_ptr_nonnull(strstr(text, "  rope_theta: 1.0e+20\n"));
    ck_assert_ptr_nonnull(strstr(text, "  norm_eps: 1.5e-07\n"));
    ck_assert_ptr_nonnull(strstr(text, "  weight_decay: 0.30000000000000004\n"));
    ck_assert_ptr_nonnull(strstr(text, "\nlog:\n  dir: \"runs/test\"\n  every: 1\n"));
    cfg_defaults(&back);
    ck_assert_msg(load_text(&back, text) == BT_OK, "%s\n%s", bt_last_error(), text);
    ck_assert_int_eq(cfg_finalize(&back, 8), BT_OK);
    char *again = to_yaml(&back);
    ck_assert_str_eq(again, text);
    ck_assert_str_eq(back.data.val, "*odd \"name\" \\ #1: x.bin");
    ck_assert_double_eq(back.optimizer.lr, 0.1);
    free(again);

    /* the resolved defaults round-trip too, and a short buffer is cut and terminated */
    cfg_defaults(&cfg);
    ck_assert_int_eq(cfg_apply_override(&cfg, "--data.train=x.bin"), BT_OK);
    ck_assert_int_eq(cfg_finalize(&cfg, 1), BT_OK);
    free(text);
    text = to_yaml(&cfg);
    cfg_defaults(&back);
    ck_assert_int_eq(load_text(&back, text), BT_OK);
    again = to_yaml(&back);
    ck_assert_str_eq(again, text);
    char small[8];
    ck_assert_uint_eq(cfg_to_yaml(&cfg, small, sizeof small), strlen(text));
    ck_assert_str_eq(small, "model:\n");
    free(again);
    free(text);
}
END_TEST

static Suite *config_suite(void) {
    Suite *s = suite_create("config");
    bt_suite_add(s, test_defaults);
    bt_suite_add(s, test_empty_files_are_defaults);
    bt_suite_add(s, test_llama_derived_defaults);
    bt_suite_add(s, test_full_file);
    bt_suite_add(s, test_syntax_error);
    bt_suite_add(s, test_unknown_key);
    bt_suite_add(s, test_unknown_section);
    bt_suite_add(s, test_wrong_type_int);
    bt_suite_add(s, test_wrong_type_float);
    bt_suite_add(s, test_wrong_type_bool);
    bt_suite_add(s, test_wrong_type_enum);
    bt_suite_add(s, test_not_a_mapping);
    bt_suite_add(s, test_duplicates);
    bt_suite_add(s, test_missing_file);
    bt_suite_add(s, test_failed_load_changes_nothing);
    bt_suite_add(s, test_relation_divisible);
    bt_suite_add(s, test_relation_seq_len);
    bt_suite_add(s, test_relation_layout);
    bt_suite_add(s, test_relation_microbatches);
    bt_suite_add(s, test_relation_stage_layers);
    bt_suite_add(s, test_relation_ranges);
    bt_suite_add(s, test_data_train_required);
    bt_suite_add(s, test_override_precedence);
    bt_suite_add(s, test_bad_override);
    bt_suite_add(s, test_round_trip);
    return s;
}

BT_TEST_MAIN(config_suite)
