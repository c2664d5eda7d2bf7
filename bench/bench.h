/* What the benchmark programs share: a monotonic clock and the median of a handful of timings.
 * Header-only (static inline), included by the programs in bench/. */
#ifndef BRAID_BENCH_BENCH_H
#define BRAID_BENCH_BENCH_H

#include <time.h>

/* Seconds on the monotonic clock. */
static inline double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The median of v[0..n), n >= 1; sorts v in place (insertion sort: n is small), so v[0] is then
 * the fastest. */
static inline double bench_median(double *v, int n) {
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j] < v[j - 1]; j--) {
            double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

#endif
