/* Training metrics: the JSON-lines log (<log.dir>/metrics.jsonl, one object per logged step), the
 * progress line on stdout, and the machine's measured sgemm peak that MFU is relative to. */
#ifndef BRAID_LAUNCH_METRICS_H
#define BRAID_LAUNCH_METRICS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/error.h"
#include "core/tensor.h"

struct metrics_row {
    int64_t step; /* steps completed (1-based), as in checkpoint names */
    double loss, lr, grad_norm, tokens_per_s, mfu, elapsed_s;
    bool has_val;
    double val_loss;
};

struct metrics_log {
    FILE *file;
    char path[512];
};

/* Creates <dir> (mkdir -p) and truncates <dir>/metrics.jsonl. */
/* Opens <dir>/metrics.jsonl (creating dir). A resumed run passes the step it resumes from: rows of
 * a previous run up to that step are kept, later ones (steps the resumed run redoes) dropped; a
 * fresh run passes 0 and starts an empty file. */
bt_status metrics_open(struct metrics_log *log, const char *dir, int64_t keep_through_step);
bt_status metrics_write(struct metrics_log *log, const struct metrics_row *row);
void metrics_close(struct metrics_log *log);

/* FLOP/s of sgemm on this machine for an (M,K)@(K,N) product over about `seconds`: the better of
 * OpenBLAS with its own threads (as many as OpenMP's) and braid's CPU GEMM (the product split over
 * the OpenMP threads, each running single-threaded OpenBLAS). The peak MFU is measured against
 * (DESIGN.md "Performance"). */
double metrics_sgemm_peak(int64_t M, int64_t N, int64_t K, double seconds);
/* The same on a device (cuda:N): the best rate of (M,K)x(K,N) matmuls through braid's backend
 * (cuBLASLt, in the runtime's matmul dtype: bf16 operands under bt_set_matmul_dtype) over about
 * `seconds`; 0 with an error set when the device fails. */
double metrics_device_matmul_peak(bt_device device, int64_t M, int64_t N, int64_t K,
                                  double seconds);

/* mkdir -p; BT_ERR with a message naming the path on failure. */
bt_status make_dirs(const char *path);

/* Seconds since an arbitrary fixed point (CLOCK_MONOTONIC). */
double now_seconds(void);

#endif
