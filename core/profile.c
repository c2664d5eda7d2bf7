/* Per-op wall-clock timers (core/profile.h): a small table of (phase, name) totals. */
#include "core/profile.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PROFILE_MAX_ROWS 256

struct profile_row {
    const char *phase, *name;
    double seconds;
    int64_t calls;
};

static struct {
    bool on;
    void (*sync)(void);
    double last;
    int n_rows;
    struct profile_row rows[PROFILE_MAX_ROWS];
} profile;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void bt_profile_enable(bool on) {
    profile.on = on;
    bt_profile_reset();
}

void bt_profile_set_sync(void (*sync)(void)) {
    profile.sync = sync;
}

bool bt_profile_enabled(void) {
    return profile.on;
}

void bt_profile_start(void) {
    if (!profile.on) return;
    if (profile.sync) profile.sync();
    profile.last = now();
}

void bt_profile_reset(void) {
    profile.n_rows = 0;
    profile.last = now();
}

void bt_profile_mark(const char *phase, const char *name) {
    if (!profile.on) return;
    if (profile.sync) profile.sync();
    double t = now();
    struct profile_row *row = NULL;
    for (int i = 0; i < profile.n_rows && !row; i++)
        if (!strcmp(profile.rows[i].name, name) && !strcmp(profile.rows[i].phase, phase))
            row = &profile.rows[i];
    if (!row && profile.n_rows < PROFILE_MAX_ROWS) {
        row = &profile.rows[profile.n_rows++];
        *row = (struct profile_row){.phase = phase, .name = name};
    }
    if (row) { /* a full table drops new names rather than fail the run */
        row->seconds += t - profile.last;
        row->calls++;
    }
    profile.last = t;
}

static int by_time(const void *a, const void *b) {
    double x = ((const struct profile_row *)a)->seconds,
           y = ((const struct profile_row *)b)->seconds;
    return x < y ? 1 : x > y ? -1 : 0;
}

void bt_profile_report(FILE *out, int64_t steps) {
    if (!profile.on || profile.n_rows == 0 || steps <= 0) return;
    struct profile_row rows[PROFILE_MAX_ROWS];
    memcpy(rows, profile.rows, (size_t)profile.n_rows * sizeof rows[0]);
    qsort(rows, (size_t)profile.n_rows, sizeof rows[0], by_time);
    double total = 0.0;
    for (int i = 0; i < profile.n_rows; i++)
        total += rows[i].seconds;
    fprintf(out, "profile: %lld steps, %.1f ms a step (wall time between marks)\n",
            (long long)steps, 1e3 * total / (double)steps);
    fprintf(out, "  %-9s %-22s %10s %10s %7s\n", "phase", "op", "calls/step", "ms/step", "share");
    for (int i = 0; i < profile.n_rows; i++)
        fprintf(out, "  %-9s %-22s %10.1f %10.2f %6.1f%%\n", rows[i].phase, rows[i].name,
                (double)rows[i].calls / (double)steps, 1e3 * rows[i].seconds / (double)steps,
                total > 0 ? 100.0 * rows[i].seconds / total : 0.0);
}
