/* The dp × tp × pp process grid and its groups (grid.h). */
#include "parallel/grid.h"

#include <string.h>

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
