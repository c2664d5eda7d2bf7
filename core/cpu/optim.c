/* CPU optimizer kernels: AdamW over every parameter in one parallel pass. */
#include <math.h>
#include <omp.h>

#include "core/cpu/kernels.h"
#include "core/cpu/vecmath.h"

/* Elements i0..i0+n-1 of one parameter; torch.optim.AdamW (_single_tensor_adamw), operation for
 * operation, on the gradient times grad_scale (clipping folded in: the same floats as scaling the
 * gradient first) */
BT_CPU_DISPATCH static void adamw_run(const struct bt_adamw_span *s, int64_t i0, int64_t n,
                                      float grad_scale) {
    float *p = s->p + i0, *m = s->m + i0, *v = s->v + i0;
    const float *g = s->g + i0;
    for (int64_t i = 0; i < n; i++) {
        float gi = g[i] * grad_scale;
        float pi = p[i] * s->decay;
        m[i] = m[i] * s->beta1 + s->one_minus_beta1 * gi;
        v[i] = v[i] * s->beta2 + s->one_minus_beta2 * gi * gi;
        float denom = sqrtf(v[i]) / s->bias_correction2_sqrt + s->eps;
        p[i] = pi + -s->step_size * (m[i] / denom);
    }
}

void bt_cpu_adamw(const struct bt_adamw_span *spans, int64_t n_spans, float grad_scale) {
    int64_t total = 0;
    for (int64_t k = 0; k < n_spans; k++)
        total += spans[k].n;
        /* one parallel region: each thread takes an equal share of all the parameters' elements,
         * in order, across tensor boundaries */
#pragma omp parallel if (total > 32768)
    {
        int threads = omp_get_num_threads(), me = omp_get_thread_num();
        int64_t lo = total * me / threads, hi = total * (me + 1) / threads, off = 0;
        for (int64_t k = 0; k < n_spans && off < hi; off += spans[k].n, k++) {
            int64_t a = lo > off ? lo : off, b = hi < off + spans[k].n ? hi : off + spans[k].n;
            if (a < b) adamw_run(&spans[k], a - off, b - a, grad_scale);
        }
    }
}

void bt_cpu_sgd(float *p, const float *g, float *buf, int64_t n, float lr, float wd,
                float momentum, float grad_scale) {
    const float neg_lr = -lr;
#pragma omp parallel for if (n > 32768)
    for (int64_t i = 0; i < n; i++) {
        float d = g[i] * grad_scale;
        if (wd != 0.0f) d = d + wd * p[i];
        if (buf) {
            buf[i] = buf[i] * momentum + d;
            d = buf[i];
        }
        p[i] = p[i] + neg_lr * d;
    }
}
