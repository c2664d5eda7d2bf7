/* The process grid (DESIGN.md "Comm and parallel"): world = dp × tp × pp ranks in Megatron's
 * order — tp fastest-varying (tensor-parallel peers share a node), then dp, then pp — so
 * rank = tp_rank + tp * (dp_rank + dp * pp_rank). The groups each rank belongs to are created
 * once, from grid coordinates. */
#ifndef BRAID_PARALLEL_GRID_H
#define BRAID_PARALLEL_GRID_H

#include "comm/comm.h"

struct grid {
    int dp, tp, pp;                /* sizes */
    int rank, world;               /* in the world group */
    int dp_rank, tp_rank, pp_rank; /* this rank's coordinates */
    struct comm *world_group;      /* comm_world(): not owned */
    struct comm *dp_group;         /* same tp and pp coordinates: gradients are averaged here */
    struct comm *tp_group;         /* same dp and pp */
    struct comm *pp_group;         /* same dp and tp */
};

/* The coordinates of `rank` in a dp × tp × pp grid. */
void grid_coords(int rank, int dp, int tp, int pp, int *dp_rank, int *tp_rank, int *pp_rank);
/* The rank at given coordinates. */
int grid_rank_of(int dp_rank, int tp_rank, int pp_rank, int dp, int tp);

/* Builds the grid over `world` (collective: every rank calls it with the same sizes). A layout
 * whose product is not the world's size is an error naming the numbers:
 * `parallel.dp=3 × tp=1 × pp=1 = 3 but mpirun started 2 ranks`. */
bt_status grid_init(struct grid *g, struct comm *world, int dp, int tp, int pp);
void grid_free(struct grid *g);

#endif
