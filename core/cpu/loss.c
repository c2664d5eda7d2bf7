/* CPU fused cross-entropy: log-softmax and the negative log-likelihood in one pass over the logits,
 * saving only the per-row log-sum-exp for the backward. Rows with target -1 are ignored. Targets
 * are int64 and already range-checked. */
#include <math.h>

#include "core/cpu/kernels.h"

#define PARALLEL_MIN 16384 /* below this many elements threads cost more than they save */

/* logits (N, V), targets (N), lse (N). Returns sum_n (lse[n] - logits[n, targets[n]]) over rows
 * with a target, and their number in *count. lse of an ignored row is 0. */
double bt_cpu_cross_entropy(float *lse, const float *logits, const int64_t *targets, int64_t N,
                            int64_t V, int64_t *count) {
#pragma omp parallel for schedule(static) if (N * V >= PARALLEL_MIN)
    for (int64_t n = 0; n < N; n++) {
        if (targets[n] < 0) {
            lse[n] = 0.0f;
            continue;
        }
        const float *xr = logits + n * V;
        float maxval = -INFINITY;
        for (int64_t v = 0; v < V; v++)
            if (xr[v] > maxval) maxval = xr[v];
        if (maxval == -INFINITY) maxval = 0.0f;
        double sum = 0.0;
        for (int64_t v = 0; v < V; v++)
            sum += expf(xr[v] - maxval);
        lse[n] = maxval + logf((float)sum);
    }
    /* the sum over rows is serial so the loss has the same bits for any thread count */
    double total = 0.0;
    int64_t counted = 0;
    for (int64_t n = 0; n < N; n++) {
        if (targets[n] < 0) continue;
        total += (double)lse[n] - (double)logits[n * V + targets[n]];
        counted++;
    }
    *count = counted;
    return total;
}

/* logits, dlogits (N, V), lse, targets (N):
 * dlogits[n, v] (+)= (exp(logits[n, v] - lse[n]) - [v == targets[n]]) * scale;
 * ignored rows get 0 */
void bt_cpu_cross_entropy_backward(float *dlogits, const float *logits, const float *lse,
                                   const int64_t *targets, int64_t N, int64_t V, float scale,
                                   float beta) {
#pragma omp parallel for schedule(static) if (N * V >= PARALLEL_MIN)
    for (int64_t n = 0; n < N; n++) {
        const float *xr = logits + n * V;
        float *dr = dlogits + n * V;
        int64_t t = targets[n];
        for (int64_t v = 0; v < V; v++) {
            float d = t < 0 ? 0.0f : (expf(xr[v] - lse[n]) - (v == t ? 1.0f : 0.0f)) * scale;
            dr[v] = beta == 0.0f ? d : dr[v] + d;
        }
    }
}
