/* The process grid (DESIGN.md "Comm and parallel"): world = dp × tp × pp ranks in Megatron's
 * order — tp fastest-varying (tensor-parallel peers share a node), then dp, then pp — so
 * rank = tp_rank + tp * (dp_rank + dp * pp_rank). The groups each rank belongs to are created
 * once, from grid coordinates. */
#ifndef BRAID_PARALLEL_GRID_H
#define BRAID_PARALLEL_GRID_H

#include "comm/comm.h"
#include "core/nn.h"

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

/* Where the gradients of a model spread over the grid are (grid_clip_grad_norm). */
struct grid_norm_groups {
    struct comm *rows; /* the list holds ZeRO-1 row shards spread over it; NULL: whole tensors */
    struct comm *tp;   /* the cut pieces (.splits) are spread over it, the uncut tensors
                        * replicated on it; NULL: no tensor parallelism */
    struct comm *pp;   /* each pipeline stage holds other parameters; NULL: one stage */
    /* a parameter another stage also holds and counts (the last stage's copy of the tied
     * embedding): left out of the norm here, clipped like the others; NULL: none */
    const char *counted_elsewhere;
};

/* torch.nn.utils.clip_grad_norm_ over the whole model, wherever its pieces are: the global L2 norm
 * of the gradients of params (the optimizer's list), which are scaled by max_norm / (norm + 1e-6)
 * when that is below 1 (max_norm = INFINITY: never). Collective over the groups given. Returns the
 * norm, or -1 on error. With no group (NULL or all NULL/size 1) the result is
 * optim_clip_grad_norm's, bit for bit. */
double grid_clip_grad_norm(const struct nn_param_list *params,
                           const struct grid_norm_groups *groups, double max_norm);
/* Its first half: the global norm alone, gradients untouched (braid train folds the clipping
 * factor, optim_clip_coef, into the update: optim_step_scaled). */
double grid_grad_norm(const struct nn_param_list *params, const struct grid_norm_groups *groups);

#endif
