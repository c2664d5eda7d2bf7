/* The dp × tp × pp process grid and its groups, and gradient clipping across them (grid.h). */
#include "parallel/grid.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "core/optim.h"

void grid_coords(int rank, int dp, int tp, int pp, int *dp_rank, int *tp_rank, int *pp_rank) {
    (void)pp;
    *tp_rank = rank % tp;
    *dp_rank = (rank / tp) % dp;
    *pp_rank = rank / (tp * dp);
}

int grid_rank_of(int dp_rank, int tp_rank, int pp_rank, int dp, int tp) {
    return tp_rank + tp * (dp_rank + dp * pp_rank);
}

bt_status grid_init(struct grid *g, struct comm *world, int dp, int tp, int pp) {
    memset(g, 0, sizeof *g);
    int size = comm_size(world);
    if (dp < 1 || tp < 1 || pp < 1)
        return bt_error("parallel.dp=%d × tp=%d × pp=%d: every size must be at least 1", dp, tp,
                        pp);
    if ((long long)dp * tp * pp != size)
        return bt_error("parallel.dp=%d × tp=%d × pp=%d = %lld but mpirun started %d rank%s", dp,
                        tp, pp, (long long)dp * tp * pp, size, size == 1 ? "" : "s");
    g->dp = dp;
    g->tp = tp;
    g->pp = pp;
    g->world_group = world;
    g->world = size;
    g->rank = comm_rank(world);
    grid_coords(g->rank, dp, tp, pp, &g->dp_rank, &g->tp_rank, &g->pp_rank);
    /* a group is the ranks that share the other two coordinates; key orders them by their own */
    int dp_color = g->tp_rank + tp * g->pp_rank;
    int tp_color = g->dp_rank + dp * g->pp_rank;
    int pp_color = g->tp_rank + tp * g->dp_rank;
    if (!(g->dp_group = comm_split(world, dp_color, g->dp_rank, "dp")) ||
        !(g->tp_group = comm_split(world, tp_color, g->tp_rank, "tp")) ||
        !(g->pp_group = comm_split(world, pp_color, g->pp_rank, "pp"))) {
        grid_free(g);
        return BT_ERR;
    }
    return BT_OK;
}

void grid_free(struct grid *g) {
    comm_free(g->pp_group);
    comm_free(g->tp_group);
    comm_free(g->dp_group);
    g->pp_group = g->tp_group = g->dp_group = NULL;
}

static bool spans(struct comm *c) {
    return c && comm_size(c) > 1;
}

double grid_grad_norm(const struct nn_param_list *params, const struct grid_norm_groups *groups) {
    struct grid_norm_groups none = {0};
    const struct grid_norm_groups *g = groups ? groups : &none;
    bool rows = spans(g->rows), tp = spans(g->tp), pp = spans(g->pp);
    if (!rows && !tp && !pp && !g->counted_elsewhere)
        return optim_grad_norm(params->tensors, params->count);
    /* [0]: the pieces of cut tensors, summed over tp; [1]: replicated ones, counted once; each
     * kind's squares summed by the gradients' backend in one call (one device sync each) */
    double sumsq[2] = {0.0, 0.0};
    int64_t count = params->count, n[2] = {0, 0};
    const float **xs = malloc((size_t)(2 * (count ? count : 1)) * sizeof *xs);
    int64_t *ns = malloc((size_t)(2 * (count ? count : 1)) * sizeof *ns);
    const struct bt_backend *be =
        count ? bt_backend_for(params->tensors[0]->grad->storage->device, "grad_norm") : NULL;
    if (!xs || !ns || (count && !be)) {
        free(xs);
        free(ns);
        if (!bt_has_error()) bt_error("grad_norm: out of memory");
        return -1.0;
    }
    for (int64_t i = 0; i < count; i++) {
        if (g->counted_elsewhere && strcmp(params->names[i], g->counted_elsewhere) == 0) continue;
        struct nn_split s = nn_param_split(params, i);
        int kind = nn_split_is_cut(&s) ? 0 : 1;
        const bt_tensor *grad = params->tensors[i]->grad;
        xs[kind * count + n[kind]] = bt_f32(grad);
        ns[kind * count + n[kind]++] = bt_numel(grad);
    }
    for (int kind = 0; kind < 2 && count; kind++)
        sumsq[kind] = be->sum_squares(xs + kind * count, ns + kind * count, n[kind]);
    free(xs);
    free(ns);
    if (rows && comm_allreduce_doubles(g->rows, sumsq, 2, COMM_SUM) != BT_OK) return -1.0;
    if (tp && comm_allreduce_doubles(g->tp, &sumsq[0], 1, COMM_SUM) != BT_OK) return -1.0;
    if (pp && comm_allreduce_doubles(g->pp, sumsq, 2, COMM_SUM) != BT_OK) return -1.0;
    return sqrt(sumsq[0] + sumsq[1]);
}

double grid_clip_grad_norm(const struct nn_param_list *params,
                           const struct grid_norm_groups *groups, double max_norm) {
    double norm = grid_grad_norm(params, groups);
    if (norm < 0.0) return -1.0;
    double coef = optim_clip_coef(norm, max_norm);
    if (coef >= 1.0) return norm;
    const float fscale = (float)coef; /* as optim_clip_grad_norm */
    for (int64_t i = 0; i < params->count; i++) {
        bt_tensor *g = params->tensors[i]->grad;
        const struct bt_backend *be = bt_backend_for(g->storage->device, "clip_grad_norm");
        if (!be) return -1.0;
        be->unary(BT_UN_MUL_SCALAR, bt_f32(g), bt_f32(g), bt_numel(g), fscale);
    }
    return norm;
}
