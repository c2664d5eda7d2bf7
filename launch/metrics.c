/* metrics.jsonl writing, the sgemm peak measurement, and small filesystem/clock helpers for the
 * launch commands. */
#include "launch/metrics.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

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

bt_status metrics_open(struct metrics_log *log, const char *dir) {
    if (make_dirs(dir) != BT_OK) return BT_ERR;
    snprintf(log->path, sizeof log->path, "%s/metrics.jsonl", dir);
    log->file = fopen(log->path, "w");
    if (!log->file) return bt_error("%s: cannot open for writing: %s", log->path, strerror(errno));
    return BT_OK;
}

/* JSON has no NaN/inf: they are written as null */
static void write_number(FILE *f, const char *key, double v) {
    if (isfinite(v))
        fprintf(f, ", \"%s\": %.9g", key, v);
    else
        fprintf(f, ", \"%s\": null", key);
}

bt_status metrics_write(struct metrics_log *log, const struct metrics_row *row) {
    FILE *f = log->file;
    fprintf(f, "{\"step\": %lld", (long long)row->step);
    write_number(f, "loss", row->loss);
    write_number(f, "lr", row->lr);
    write_number(f, "grad_norm", row->grad_norm);
    write_number(f, "tokens_per_s", row->tokens_per_s);
    write_number(f, "mfu", row->mfu);
    write_number(f, "elapsed_s", row->elapsed_s);
    if (row->has_val) write_number(f, "val_loss", row->val_loss);
    fprintf(f, "}\n");
    if (fflush(f) != 0) return bt_error("%s: write failed: %s", log->path, strerror(errno));
    return BT_OK;
}

void metrics_close(struct metrics_log *log) {
    if (log->file) fclose(log->file);
    log->file = NULL;
}

double metrics_sgemm_peak(int64_t M, int64_t N, int64_t K, double seconds) {
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
