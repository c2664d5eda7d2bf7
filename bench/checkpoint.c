/* bench_checkpoint: seconds and MB/s of saving (ckpt_save, fsync included) and loading
 * (ckpt_resolve + ckpt_open + ckpt_read_model + ckpt_read_optim, checksums verified) the training
 * state of a GPT-2 small sized model (124M parameters + AdamW state), REPEAT times each in one
 * process. bench/checkpoint.sh runs it beside dd on the same bytes; prints key=value lines; see
 * bench/README.md. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "bench/bench.h"
#include "core/optim.h"
#include "core/runtime.h"
#include "data/checkpoint.h"
#include "models/model.h"

#define MAX_REPEAT 16

static void die(const char *what) {
    fprintf(stderr, "bench_checkpoint: error: %s: %s\n", what, bt_last_error());
    exit(1);
}

static void usage(void) {
    fprintf(stderr, "usage: bench_checkpoint save|load DIR [--repeat N] [--drop-cache] "
                    "[--n_layer L] [--n_embd C] [--vocab_size V] [--block_size T]\n");
    exit(2);
}

/* sync, then drop the page cache so the next load reads the disk; false where not allowed. */
static bool drop_page_cache(void) {
    sync();
    int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
    if (fd < 0) return false;
    bool ok = write(fd, "3\n", 2) == 2;
    close(fd);
    return ok;
}

/* CRC-32 of every parameter and state tensor's bytes, chained: the same number after a save and
 * after a load means the state came back whole. */
static uint32_t digest(const struct nn_param_list *params, const struct optim *opt) {
    uLong crc = crc32(0L, Z_NULL, 0);
    const char *const *states;
    int n_states = optim_state_names(opt, &states);
    for (int64_t p = 0; p < params->count; p++) {
        crc = crc32_z(crc, bt_data(params->tensors[p]), bt_nbytes(params->tensors[p]));
        for (int s = 0; s < n_states; s++) {
            bt_tensor *t = optim_state(opt, p, states[s]);
            crc = crc32_z(crc, bt_data(t), bt_nbytes(t));
        }
    }
    return (uint32_t)crc;
}

/* AdamW state as after some training: exp_avg ~ U(-1e-3, 1e-3), exp_avg_sq ~ U(0, 1e-6), step
 * 1000 (uniform: quicker to draw than normal, and the bytes are as incompressible). */
static void fill_state(const struct nn_param_list *params, struct optim *opt) {
    struct bt_rng rng = bt_rng_make(7);
    for (int64_t p = 0; p < params->count; p++) {
        bt_fill_uniform(optim_state(opt, p, "exp_avg"), &rng, -1e-3f, 1e-3f);
        bt_fill_uniform(optim_state(opt, p, "exp_avg_sq"), &rng, 0.0f, 1e-6f);
        *(int64_t *)bt_data(optim_state(opt, p, "step")) = 1000;
    }
    optim_set_step_count(opt, 1000);
}

static void print_times(const char *key, const double *t, int n) {
    printf("%s=", key);
    for (int r = 0; r < n; r++)
        printf("%s%.3f", r ? "," : "", t[r]);
    printf("\n");
}

int main(int argc, char **argv) {
    if (argc < 3 || (strcmp(argv[1], "save") != 0 && strcmp(argv[1], "load") != 0)) usage();
    bool save = strcmp(argv[1], "save") == 0, drop = false;
    const char *dir = argv[2];
    int repeat = 1;
    struct model_config cfg = {.arch = MODEL_GPT,
                               .vocab_size = 50304,
                               .block_size = 1024,
                               .n_layer = 12,
                               .n_head = 12,
                               .n_kv_head = 12,
                               .n_embd = 768,
                               .ffn_hidden = 4 * 768,
                               .dropout = 0.0,
                               .bias = true,
                               .gelu = BT_GELU_TANH,
                               .norm_eps = 1e-5,
                               .rope_theta = 10000.0,
                               .tie_embeddings = true};
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--drop-cache") == 0) {
            drop = true;
            continue;
        }
        if (i + 1 >= argc) usage();
        long long v = atoll(argv[++i]);
        if (strcmp(argv[i - 1], "--repeat") == 0 && v >= 1 && v <= MAX_REPEAT) {
            repeat = (int)v;
        } else if (strcmp(argv[i - 1], "--n_layer") == 0) {
            cfg.n_layer = v;
        } else if (strcmp(argv[i - 1], "--n_embd") == 0) { /* heads of 64 */
            cfg.n_embd = v;
            cfg.ffn_hidden = 4 * v;
            cfg.n_head = cfg.n_kv_head = v / 64 > 0 ? v / 64 : 1;
        } else if (strcmp(argv[i - 1], "--vocab_size") == 0) {
            cfg.vocab_size = v;
        } else if (strcmp(argv[i - 1], "--block_size") == 0) {
            cfg.block_size = v;
        } else {
            usage();
        }
    }

    /* the model and optimizer, built outside the timers: save fills them (seed 1 and the state
     * above); load starts from another seed and zero state, all overwritten by the read */
    struct model *m = model_create(&cfg, save ? 1 : 2);
    if (!m) die("model_create");
    struct nn_param_list params;
    if (model_parameters(m, &params) != BT_OK) die("model_parameters");
    struct optim_config ocfg = optim_config_default(OPTIM_ADAMW);
    struct optim *opt = optim_create(&ocfg, &params);
    if (!opt) die("optim_create");
    if (save) fill_state(&params, opt);

    char path[4096];
    double total[MAX_REPEAT], open_s[MAX_REPEAT], model_s[MAX_REPEAT], optim_s[MAX_REPEAT];
    bool dropped = drop;
    for (int r = 0; r < repeat; r++) {
        if (save) {
            /* steps 1000, 1001, ...: keep 1 deletes the previous file after the save */
            struct ckpt_meta meta = {.step = 1000 + r,
                                     .tokens_seen = (1000LL + r) * 512 * 1024,
                                     .lr = 6e-4,
                                     .data_seq_len = cfg.block_size,
                                     .data_position = (1000LL + r) * 512,
                                     .config_yaml = "model:\n  arch: gpt\n",
                                     .tokenizer_yaml = "name: gpt2\n"};
            double t0 = bench_now();
            if (ckpt_save(dir, &params, opt, &meta, 1) != BT_OK) die("ckpt_save");
            total[r] = bench_now() - t0;
            continue;
        }
        if (drop) dropped = drop_page_cache() && dropped;
        double t0 = bench_now();
        if (ckpt_resolve(dir, path, sizeof path) != BT_OK) die("ckpt_resolve");
        struct ckpt_file *f = ckpt_open(path);
        if (!f) die("ckpt_open");
        double t1 = bench_now();
        if (ckpt_read_model(f, &params) != BT_OK) die("ckpt_read_model");
        double t2 = bench_now();
        if (ckpt_read_optim(f, opt) != BT_OK) die("ckpt_read_optim");
        ckpt_close(f);
        double t3 = bench_now();
        total[r] = t3 - t0;
        open_s[r] = t1 - t0;
        model_s[r] = t2 - t1;
        optim_s[r] = t3 - t2;
    }
    if (ckpt_resolve(dir, path, sizeof path) != BT_OK) die("ckpt_resolve");
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "bench_checkpoint: error: cannot stat %s\n", path);
        return 1;
    }
    printf("op=%s\nfile=%s\nparams=%lld\nbytes=%lld\nrepeat=%d\n", argv[1], path,
           (long long)model_num_parameters(m), (long long)st.st_size, repeat);
    print_times("all_seconds", total, repeat); /* in run order, before the median sorts them */
    double seconds = bench_median(total, repeat);
    printf("seconds=%.3f\nmb_per_s=%.1f\n", seconds, (double)st.st_size / 1e6 / seconds);
    if (!save) {
        printf("page_cache=%s\n", !drop     ? "kept"
                                  : dropped ? "dropped"
                                            : "NOT dropped (no permission)");
        printf("open_seconds=%.3f\nmodel_seconds=%.3f\noptim_seconds=%.3f\n",
               bench_median(open_s, repeat), bench_median(model_s, repeat),
               bench_median(optim_s, repeat));
    }
    printf("digest=%08x\n", (unsigned)digest(&params, opt));
    optim_free(opt);
    nn_param_list_free(&params);
    model_free(m);
    bt_runtime_shutdown();
    return 0;
}
