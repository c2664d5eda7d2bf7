/* Crash safety of HDF5 checkpoints (data/checkpoint_write.c): a process SIGKILLed at random
 * moments while it saves leaves a `latest` that opens and reads fully; a save that runs out of file
 * space, or into a directory it cannot write, fails with a named error and leaves the previous
 * checkpoint and `latest` byte for byte as they were; stray temporaries are ignored. Children are
 * forked so that the test process itself survives; they use no OpenMP (not fork-safe). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <hdf5.h>
#include <signal.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/nn.h"
#include "core/optim.h"
#include "data/checkpoint.h"
#include "tests/gradcheck.h"

static char dir[64];

static void make_dir(void) {
    test_tmpdir_make(dir, sizeof dir, "ckptcrash");
}

static void remove_dir(void) {
    test_tmpdir_remove(dir);
    H5close();
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A training state of a few MB: fc = Linear(512 -> 768) with bias (394k parameters, 1.6 MB)
 * and AdamW (twice that again), so a save takes long enough to be interrupted inside. */
struct state {
    struct nn_module *net;
    struct nn_param_list params;
    struct optim *opt;
};

static void state_make(struct state *s) {
    s->net = nn_module_create("net");
    nn_module_add_child(s->net, &nn_linear_create("fc", 512, 768, true, NULL)->base);
    ck_assert_int_eq(nn_named_parameters(s->net, &s->params), BT_OK);
    struct optim_config cfg = optim_config_default(OPTIM_ADAMW);
    s->opt = optim_create(&cfg, &s->params);
    ck_assert_msg(s->opt != NULL, "%s", bt_last_error());
}

static void state_free(struct state *s) {
    optim_free(s->opt);
    nn_param_list_free(&s->params);
    nn_module_free(s->net);
}

/* The values of step k, element i: parameters k + i/2^20, exp_avg -k, exp_avg_sq 2k, per-parameter
 * step k, step count k. Plain loops: the children may not use OpenMP. */
static float param_value(int64_t k, int64_t i) {
    return (float)k + (float)(i % 1024) / 1048576.0f;
}

static void state_fill(struct state *s, int64_t k) {
    for (int64_t p = 0; p < s->params.count; p++) {
        float *w = bt_data(s->params.tensors[p]);
        float *m = bt_data(optim_state(s->opt, p, "exp_avg"));
        float *v = bt_data(optim_state(s->opt, p, "exp_avg_sq"));
        for (int64_t i = 0; i < bt_numel(s->params.tensors[p]); i++) {
            w[i] = param_value(k, i);
            m[i] = (float)-k;
            v[i] = 2.0f * (float)k;
        }
        *(int64_t *)bt_data(optim_state(s->opt, p, "step")) = k;
    }
    optim_set_step_count(s->opt, k);
}

/* s holds exactly the values of step k; "" or what differs */
static const char *state_differs(struct state *s, int64_t k) {
    static char why[256];
    for (int64_t p = 0; p < s->params.count; p++) {
        const float *w = bt_data(s->params.tensors[p]);
        const float *m = bt_data(optim_state(s->opt, p, "exp_avg"));
        const float *v = bt_data(optim_state(s->opt, p, "exp_avg_sq"));
        for (int64_t i = 0; i < bt_numel(s->params.tensors[p]); i++)
            if (w[i] != param_value(k, i) || m[i] != (float)-k || v[i] != 2.0f * (float)k) {
                snprintf(why, sizeof why, "%s[%lld] is not step %lld's", s->params.names[p],
                         (long long)i, (long long)k);
                return why;
            }
        if (*(int64_t *)bt_data(optim_state(s->opt, p, "step")) != k) return "per-parameter step";
    }
    return optim_step_count(s->opt) == k ? "" : "step count";
}

static struct ckpt_meta meta_for(int64_t k) {
    return (struct ckpt_meta){.step = k,
                              .tokens_seen = k * 4096,
                              .lr = 1e-3,
                              .data_seq_len = 64,
                              .data_position = k * 64,
                              .config_yaml = "model:\n  arch: gpt\n",
                              .tokenizer_yaml = "name: char\n"};
}

static bt_status save_step(struct state *s, int64_t k, int64_t keep) {
    state_fill(s, k);
    struct ckpt_meta meta = meta_for(k);
    return ckpt_save(dir, &s->params, s->opt, &meta, keep);
}

/* Reads all of checkpoint `path` (model, optimizer, checksums) into s and checks it holds the
 * values of the step its name and step attribute say; returns that step, or -1 with the reason in
 * `why`. */
static int64_t read_fully(struct state *s, const char *path, char *why, size_t size) {
    struct ckpt_file *f = ckpt_open(path);
    if (!f || ckpt_read_model(f, &s->params) != BT_OK || ckpt_read_optim(f, s->opt) != BT_OK) {
        snprintf(why, size, "%s", bt_last_error());
        ckpt_close(f);
        return -1;
    }
    int64_t step = ckpt_meta(f)->step;
    const char *differs = state_differs(s, step), *name = strrchr(path, '/');
    bool named = name && strncmp(name, "/step_", 6) == 0 && atoll(name + 6) == step;
    ckpt_close(f);
    if (differs[0] || !named) {
        snprintf(why, size, "%s (step %lld): %s", path, (long long)step,
                 named ? differs : "file name and step attribute differ");
        return -1;
    }
    return step;
}

/* The same for the checkpoint dir's latest names. */
static int64_t read_latest(struct state *s, char *why, size_t size) {
    char path[256];
    if (ckpt_resolve(dir, path, sizeof path) != BT_OK) {
        snprintf(why, size, "%s", bt_last_error());
        return -1;
    }
    return read_fully(s, path, why, size);
}

/* Every step_*.h5 of dir (a name they only get once complete) reads fully; -1 and why if not. */
static int64_t read_every_file(struct state *s, char *why, size_t size) {
    DIR *d = opendir(dir);
    int64_t n = 0;
    ck_assert_ptr_nonnull(d);
    for (struct dirent *e; (e = readdir(d));) {
        char path[512];
        if (strncmp(e->d_name, "step_", 5) != 0) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (read_fully(s, path, why, size) < 0) {
            n = -1;
            break;
        }
        n++;
    }
    closedir(d);
    return n;
}

/* The newest step_*.h5 in dir and the number of .step_*.h5.tmp temporaries. */
static int64_t newest_file(int *n_tmp) {
    DIR *d = opendir(dir);
    int64_t newest = -1;
    *n_tmp = 0;
    ck_assert_ptr_nonnull(d);
    for (struct dirent *e; (e = readdir(d));) {
        long long step;
        int end = 0;
        if (sscanf(e->d_name, "step_%lld.h5%n", &step, &end) == 1 && e->d_name[end] == '\0' &&
            step > newest)
            newest = step;
        if (strncmp(e->d_name, ".step_", 6) == 0) ++*n_tmp;
    }
    closedir(d);
    return newest;
}

/* Reads all of path into a malloc'd buffer; *size gets its length. */
static char *slurp(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    *size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc(*size + 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(fread(buf, 1, *size, f), *size);
    fclose(f);
    return buf;
}

/* A forked child's message back to the parent: status and text over a pipe. */
struct child_report {
    int status;
    char text[1024];
};

static void report_to(int fd, bt_status st, const char *text) {
    struct child_report r = {.status = st};
    snprintf(r.text, sizeof r.text, "%s", text);
    ssize_t written = write(fd, &r, sizeof r);
    (void)written;
}

/* Runs fn(arg) in a child with the result sent back. */
static struct child_report run_in_child(bt_status (*fn)(void *), void *arg) {
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(fds[0]);
        bt_error_clear();
        bt_status st = fn(arg);
        report_to(fds[1], st, bt_last_error());
        _exit(0);
    }
    close(fds[1]);
    struct child_report r = {.status = 99};
    ssize_t got = read(fds[0], &r, sizeof r);
    close(fds[0]);
    int wstatus;
    ck_assert_int_eq(waitpid(pid, &wstatus, 0), pid);
    ck_assert_msg(got == (ssize_t)sizeof r && WIFEXITED(wstatus), "the child died (%d)", wstatus);
    return r;
}

/* ---- SIGKILL at random moments ---- */

/* The child: saves steps first, first+1, ... (keep 2) until killed, writing each completed step
 * to fd. */
static void save_forever(struct state *s, int64_t first, int fd) {
    for (int64_t k = first;; k++) {
        if (save_step(s, k, 2) != BT_OK) {
            int64_t failed = -1;
            ssize_t w = write(fd, &failed, sizeof failed);
            (void)w;
            fprintf(stderr, "child: save of step %lld failed: %s\n", (long long)k, bt_last_error());
            _exit(3);
        }
        ssize_t w = write(fd, &k, sizeof k);
        (void)w;
    }
}

START_TEST(test_kill_during_save_keeps_latest_readable) {
    enum { KILLS = 40 };
    make_dir();
    struct state s, check;
    state_make(&s);
    state_make(&check);
    double t0 = now_s();
    ck_assert_msg(save_step(&s, 0, 2) == BT_OK, "%s", bt_last_error());
    ck_assert_msg(save_step(&s, 1, 2) == BT_OK, "%s", bt_last_error());
    double save_s = (now_s() - t0) / 2;
    /* kill anywhere in the next ~2.5 saves, but keep the test short on a slow disk */
    int64_t max_delay_us = (int64_t)(2.5e6 * save_s) + 1000;
    if (max_delay_us > 250000) max_delay_us = 250000;
    uint64_t x = 0x2545F4914F6CDD1DULL; /* xorshift64: the same delays every run */
    int64_t latest = 1, mid_save = 0, moved = 0;
    char why[1200];
    for (int kill_no = 0; kill_no < KILLS; kill_no++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        int64_t delay_us = (int64_t)(x % (uint64_t)max_delay_us);
        int fds[2];
        ck_assert_int_eq(pipe(fds), 0);
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            close(fds[0]);
            save_forever(&s, latest + 1, fds[1]); /* resumes after latest, as braid does */
        }
        close(fds[1]);
        usleep((useconds_t)delay_us);
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        int wstatus;
        ck_assert_int_eq(waitpid(pid, &wstatus, 0), pid);
        int64_t done = latest, k;
        while (read(fds[0], &k, sizeof k) == (ssize_t)sizeof k) {
            ck_assert_msg(k >= 0, "kill %d: the child's save failed (see stderr)", kill_no);
            done = k;
        }
        close(fds[0]);
        ck_assert_msg(WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL,
                      "kill %d: the child ended otherwise (%d)", kill_no, wstatus);

        int n_tmp;
        int64_t newest = newest_file(&n_tmp);
        int64_t step = read_latest(&check, why, sizeof why);
        ck_assert_msg(step >= 0, "kill %d after %lld us: latest unreadable: %s", kill_no,
                      (long long)delay_us, why);
        /* latest is the newest complete file, or the one before when the kill came between the
         * file's rename and latest's; never older than the last save that returned */
        ck_assert_msg(step == newest || step == newest - 1,
                      "kill %d after %lld us: latest is step %lld, newest file step %lld", kill_no,
                      (long long)delay_us, (long long)step, (long long)newest);
        ck_assert_msg(step >= done && step <= done + 1,
                      "kill %d after %lld us: latest is step %lld, last completed save %lld",
                      kill_no, (long long)delay_us, (long long)step, (long long)done);
        ck_assert_int_le(n_tmp, 1);
        ck_assert_msg(read_every_file(&check, why, sizeof why) >= 1, "kill %d after %lld us: %s",
                      kill_no, (long long)delay_us, why);
        mid_save += n_tmp > 0 || step == newest - 1;
        moved += step != latest;
        latest = step;
    }
    fprintf(stderr,
            "%d kills (save %.1f ms, delays 0..%.1f ms): %lld inside a save, latest moved %lld "
            "times, to step %lld\n",
            KILLS, 1e3 * save_s, max_delay_us / 1e3, (long long)mid_save, (long long)moved,
            (long long)latest);
    /* the kills did land inside saves and between them: the test tested something */
    ck_assert_int_gt(mid_save, 0);
    ck_assert_int_gt(moved, 0);
    state_free(&s);
    state_free(&check);
    remove_dir();
}
END_TEST

/* ---- a full disk and a read-only directory ---- */

struct failing_save {
    struct state *s;
    int64_t step;
    bool drop_to_nobody;
};

/* In the child: the file-size limit stands in for a full disk (write fails with EFBIG). */
static bt_status save_with_small_fsize(void *arg) {
    struct failing_save *fs = arg;
    struct rlimit limit = {256 * 1024, 256 * 1024};
    signal(SIGXFSZ, SIG_IGN);
    if (setrlimit(RLIMIT_FSIZE, &limit) != 0) return bt_error("setrlimit: %s", strerror(errno));
    return save_step(fs->s, fs->step, 1);
}

static bt_status save_without_write_permission(void *arg) {
    struct failing_save *fs = arg;
    /* root writes anywhere: become nobody first */
    if (fs->drop_to_nobody && (setgid(65534) != 0 || setuid(65534) != 0))
        return bt_error("cannot drop to uid 65534: %s", strerror(errno));
    return save_step(fs->s, fs->step, 1);
}

/* After a failed save of step 2: step 1's file and latest are byte-identical to before, no
 * temporary is left, and latest reads fully as step 1. */
static void assert_nothing_lost(struct state *check, const char *file_before, size_t file_size,
                                const char *latest_before, size_t latest_size) {
    char path[128], why[1200];
    size_t size;
    snprintf(path, sizeof path, "%s/step_00000001.h5", dir);
    char *now = slurp(path, &size);
    ck_assert_msg(size == file_size && !memcmp(now, file_before, size), "%s changed", path);
    free(now);
    snprintf(path, sizeof path, "%s/latest", dir);
    now = slurp(path, &size);
    ck_assert_msg(size == latest_size && !memcmp(now, latest_before, size), "latest changed");
    free(now);
    int n_tmp;
    ck_assert_int_eq(newest_file(&n_tmp), 1);
    ck_assert_int_eq(n_tmp, 0);
    ck_assert_msg(read_latest(check, why, sizeof why) == 1, "%s", why);
}

START_TEST(test_disk_full_keeps_previous) {
    make_dir();
    struct state s, check;
    char path[128], want[256];
    size_t file_size, latest_size;
    state_make(&s);
    state_make(&check);
    ck_assert_msg(save_step(&s, 1, 1) == BT_OK, "%s", bt_last_error());
    snprintf(path, sizeof path, "%s/step_00000001.h5", dir);
    char *file_before = slurp(path, &file_size);
    ck_assert_uint_gt(file_size, 1024 * 1024); /* well over the limit */
    snprintf(path, sizeof path, "%s/latest", dir);
    char *latest_before = slurp(path, &latest_size);

    struct failing_save fs = {&s, 2, false};
    struct child_report r = run_in_child(save_with_small_fsize, &fs);
    fprintf(stderr, "save with a 256 KiB file size limit: %s\n", r.text);
    ck_assert_int_eq(r.status, BT_ERR);
    snprintf(want, sizeof want, "checkpoint %s/.step_00000002.h5.tmp: ", dir);
    ck_assert_msg(strstr(r.text, want) == r.text, "expected \"%s...\", got \"%s\"", want, r.text);
    ck_assert_msg(strstr(r.text, "File too large"), "the reason (EFBIG) is not named: %s", r.text);
    assert_nothing_lost(&check, file_before, file_size, latest_before, latest_size);
    free(file_before);
    free(latest_before);
    state_free(&s);
    state_free(&check);
    remove_dir();
}
END_TEST

START_TEST(test_read_only_dir_keeps_previous) {
    make_dir();
    struct state s, check;
    char path[128], want[256];
    size_t file_size, latest_size;
    state_make(&s);
    state_make(&check);
    ck_assert_msg(save_step(&s, 1, 1) == BT_OK, "%s", bt_last_error());
    snprintf(path, sizeof path, "%s/step_00000001.h5", dir);
    char *file_before = slurp(path, &file_size);
    snprintf(path, sizeof path, "%s/latest", dir);
    char *latest_before = slurp(path, &latest_size);

    ck_assert_int_eq(chmod(dir, 0555), 0);
    struct failing_save fs = {&s, 2, geteuid() == 0};
    struct child_report r = run_in_child(save_without_write_permission, &fs);
    ck_assert_int_eq(chmod(dir, 0700), 0);
    fprintf(stderr, "save into a read-only directory: %s\n", r.text);
    ck_assert_int_eq(r.status, BT_ERR);
    snprintf(want, sizeof want, "checkpoint %s/.step_00000002.h5.tmp: HDF5 H5Fcreate(", dir);
    ck_assert_msg(strstr(r.text, want) == r.text, "expected \"%s...\", got \"%s\"", want, r.text);
    ck_assert_msg(strstr(r.text, "Permission denied"), "the reason is not named: %s", r.text);
    assert_nothing_lost(&check, file_before, file_size, latest_before, latest_size);
    free(file_before);
    free(latest_before);
    state_free(&s);
    state_free(&check);
    remove_dir();
}
END_TEST

/* Temporaries a killed save left behind (a torn step file, a half-written latest) are neither
 * read nor pruned as checkpoints, and the next save of that step replaces them. */
START_TEST(test_stray_temporaries_are_ignored) {
    make_dir();
    struct state s, check;
    char path[128], why[1200];
    state_make(&s);
    state_make(&check);
    ck_assert_msg(save_step(&s, 1, 1) == BT_OK, "%s", bt_last_error());
    const char *names[] = {".step_00000002.h5.tmp", ".step_00000009.h5.tmp", ".latest.tmp"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        FILE *f = fopen(path, "w");
        ck_assert_ptr_nonnull(f);
        fputs(i == 2 ? "step_0000" : "\x89HDF\r\n\x1a\n torn", f);
        fclose(f);
    }
    ck_assert_msg(read_latest(&check, why, sizeof why) == 1, "%s", why);
    ck_assert_msg(save_step(&s, 2, 1) == BT_OK, "%s", bt_last_error());
    ck_assert_msg(read_latest(&check, why, sizeof why) == 2, "%s", why);
    snprintf(path, sizeof path, "%s/.step_00000002.h5.tmp", dir);
    ck_assert_int_ne(access(path, F_OK), 0);
    snprintf(path, sizeof path, "%s/.latest.tmp", dir);
    ck_assert_int_ne(access(path, F_OK), 0);
    snprintf(path, sizeof path, "%s/step_00000001.h5", dir); /* pruned: keep 1 */
    ck_assert_int_ne(access(path, F_OK), 0);
    state_free(&s);
    state_free(&check);
    remove_dir();
}
END_TEST

static Suite *checkpoint_crash_suite(void) {
    Suite *s = suite_create("checkpoint_crash");
    bt_suite_add(s, test_kill_during_save_keeps_latest_readable);
    bt_suite_add(s, test_disk_full_keeps_previous);
    bt_suite_add(s, test_read_only_dir_keeps_previous);
    bt_suite_add(s, test_stray_temporaries_are_ignored);
    return s;
}

BT_TEST_MAIN(checkpoint_crash_suite)
