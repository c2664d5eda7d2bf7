/* metrics.jsonl writing, the sgemm peak measurement, and small filesystem/clock helpers for the
 * launch commands. */
#include "launch/metrics.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <time.h>

#include "core/backend.h"
#include "core/cuda/cuda.h"

double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

bt_status make_dirs(const char *path) {
    char buf[1024];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return bt_error("%s: path too long", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return bt_error("%s: cannot create directory: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return bt_error("%s: cannot create directory: %s", buf, strerror(errno));
    return BT_OK;
}

/* Rewrites log->path keeping the rows whose "step" is at most `through` (through a temporary file
 * and a rename, so a crash keeps the old file). A missing file is nothing to keep. */
static bt_status keep_rows_through(const struct metrics_log *log, int64_t through) {
    char tmp[sizeof log->path + 8], line[4096];
    FILE *in = fopen(log->path, "r");
    if (!in) return errno == ENOENT ? BT_OK : bt_error("%s: cannot read: %s", log->path,
                                                          strerror(errno));
    snprintf(tmp, sizeof tmp, "%s.tmp", log->path);
    FILE *out = fopen(tmp, "w");
    if (!out) {
        fclose(in);
        return bt_error("%s: cannot create: %s", tmp, strerror(errno));
    }
    bool keep = false; /* of the current line, which may span several fgets calls */
    bool at_start = true;
    while (fgets(line, sizeof line, in)) {
        long long step;
        if (at_start) keep = sscanf(line, "{\"step\": %lld", &step) == 1 && step <= through;
        if (keep) fputs(line, out);
        at_start = strchr(line, '\n') != NULL;
    }
    fclose(in);
    if (fclose(out) != 0 || rename(tmp, log->path) != 0) {
        int err = errno;
        unlink(tmp);
        return bt_error("%s: cannot rewrite: %s", log->path, strerror(err));
    }
    return BT_OK;
}

bt_status metrics_open(struct metrics_log *log, const char *dir, int64_t keep_through_step) {
    if (make_dirs(dir) != BT_OK) return BT_ERR;
    snprintf(log->path, sizeof log->path, "%s/metrics.jsonl", dir);
    if (keep_through_step > 0 && keep_rows_through(log, keep_through_step) != BT_OK)
        return BT_ERR;
    log->file = fopen(log->path, keep_through_step > 0 ? "a" : "w");
    if (!log->file) return bt_error("%s: cannot open for writing: %s", log->path, strerror(errno));
    return BT_OK;
}

/* exact: the shortest decimal that reads back as exactly v (losses compare bit for bit across
 * runs); otherwise 6 significant digits (timings). JSON has no NaN/inf: they are written as null. */
static void write_number(FILE *f, const char *key, double v, bool exact) {
    if (!isfinite(v)) {
        fprintf(f, ", \"%s\": null", key);
        return;
    }
    char text[40];
    for (int digits = 6; digits <= (exact ? 17 : 6); digits++) {
        snprintf(text, sizeof text, "%.*g", digits, v);
        if (strtod(text, NULL) == v) break;
    }
    fprintf(f, ", \"%s\": %s", key, text);
}

bt_status metrics_write(struct metrics_log *log, const struct metrics_row *row) {
    FILE *f = log->file;
    fprintf(f, "{\"step\": %lld", (long long)row->step);
    write_number(f, "loss", row->loss, true);
    write_number(f, "lr", row->lr, true);
    write_number(f, "grad_norm", row->grad_norm, true);
    write_number(f, "tokens_per_s", row->tokens_per_s, false);
    write_number(f, "mfu", row->mfu, false);
    write_number(f, "elapsed_s", row->elapsed_s, false);
    if (row->has_val) write_number(f, "val_loss", row->val_loss, true);
    fprintf(f, "}\n");
    if (fflush(f) != 0) return bt_error("%s: write failed: %s", log->path, strerror(errno));
    return BT_OK;
}

void metrics_close(struct metrics_log *log) {
    if (log->file) fclose(log->file);
    log->file = NULL;
}

/* OpenBLAS's own threading, as many threads as braid's OpenMP uses */
static double threaded_sgemm_peak(int64_t M, int64_t N, int64_t K, double seconds) {
    float *a = malloc(sizeof(float) * (size_t)(M * K)), *b = malloc(sizeof(float) * (size_t)(K * N));
    float *c = malloc(sizeof(float) * (size_t)(M * N));
    double best = 0.0;
    if (a && b && c) {
        for (int64_t i = 0; i < M * K; i++) a[i] = (float)(i % 7) * 0.1f;
        for (int64_t i = 0; i < K * N; i++) b[i] = (float)(i % 5) * 0.1f;
        /* OpenBLAS's own threading, as many threads as braid's OpenMP uses; braid keeps
         * OpenBLAS single-threaded otherwise (core/cpu/matmul.c) */
        int previous = openblas_get_num_threads();
        openblas_set_num_threads(omp_get_max_threads());
        double start = now_seconds();
        for (int rep = 0; rep < 100 && (rep < 2 || now_seconds() - start < seconds); rep++) {
            double t0 = now_seconds();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)N, (int)K, 1.0f,
                        a, (int)K, b, (int)N, 0.0f, c, (int)N);
            double rate = 2.0 * (double)M * (double)N * (double)K / (now_seconds() - t0);
            if (rep > 0 && rate > best) best = rate; /* rep 0 warms caches and threads */
        }
        openblas_set_num_threads(previous);
    }
    free(a);
    free(b);
    free(c);
    return best;
}

double metrics_sgemm_peak(int64_t M, int64_t N, int64_t K, double seconds) {
    /* two ways of running OpenBLAS on the same threads: its own threading, and braid's (the
     * CPU backend's GEMM: the product split over OpenMP threads, each calling single-threaded
     * OpenBLAS), each timed for half the time. The better is the peak: the first alone was
     * bimodal at small shapes (97-112 or 173-189 GFLOP/s at (768, 512, 128) on Zen 4 from run to
     * run), which put MFU anywhere from 60% to over 100%; the second gave 206-230 there. */
    bool had_error = bt_has_error();
    double threaded = threaded_sgemm_peak(M, N, K, seconds / 2);
    double split = metrics_device_matmul_peak(bt_cpu(), M, N, K, seconds / 2);
    if (!had_error && split == 0.0) bt_error_clear(); /* out of memory: the first one stands */
    return split > threaded ? split : threaded;
}

double metrics_device_matmul_peak(bt_device device, int64_t M, int64_t N, int64_t K,
                                  double seconds) {
    /* persistent operands and one output, the backend's GEMM into it: no step memory grows */
    const struct bt_backend *be = bt_backend_for(device, "matmul peak");
    bt_tensor *a = be ? bt_tensor_new(BT_SHAPE(M, K), BT_F32, device) : NULL;
    bt_tensor *b = a ? bt_tensor_new(BT_SHAPE(K, N), BT_F32, device) : NULL;
    bt_tensor *c = b ? bt_tensor_new(BT_SHAPE(M, N), BT_F32, device) : NULL;
    double best = 0.0;
    if (c && bt_cuda_synchronize() == BT_OK) {
        bt_fill(a, 0.1);
        bt_fill(b, 0.1);
        double start = now_seconds();
        for (int rep = 0; rep < 100 && (rep < 3 || now_seconds() - start < seconds); rep++) {
            double t0 = now_seconds();
            be->gemm(false, false, 1, M, N, K, 1.0f, bt_f32(a), K, 0, bt_f32(b), N, 0, 0.0f,
                     bt_f32(c), 0);
            if (bt_cuda_synchronize() != BT_OK) {
                best = 0.0;
                break;
            }
            double rate = 2.0 * (double)M * (double)N * (double)K / (now_seconds() - t0);
            if (rep > 0 && rate > best) best = rate; /* rep 0: cuBLASLt's heuristic, warm-up */
        }
    }
    bt_tensor_free(c);
    bt_tensor_free(b);
    bt_tensor_free(a);
    return best;
}
