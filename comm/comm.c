/* The process and its groups: comm_init (MPI when a launcher started us, else a world of one),
 * finalize/abort, the world, local rank, splits, and the messages every comm error starts with.
 * The collectives are in collectives.c, requests in request.c, MPI calls in mpi.c. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm_internal.h"
#include "core/runtime.h"

#define COMM_DEFAULT_TIMEOUT_S 600.0

static struct comm_runtime runtime;

struct comm_runtime *comm_rt(void) {
    return &runtime;
}

/* ---- messages ---- */

void comm_where(const struct comm *c, const char *op, char *buf, size_t size) {
    if (c)
        snprintf(buf, size, "%s on group %s (rank %d of %d)", op, c->name, c->rank, c->size);
    else
        snprintf(buf, size, "%s", op);
}

bt_status comm_errorf(const char *where, const char *fmt, ...) {
    char message[BT_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    return bt_error("%s: %s", where, message);
}

/* "comm/mpi.c" from a compiler's possibly absolute __FILE__ */
static const char *short_path(const char *file) {
    const char *last = strrchr(file, '/');
    if (!last) return file;
    const char *p = last;
    while (p > file && p[-1] != '/')
        p--;
    return p > file ? p : file;
}

bt_status comm_mpi_error(const char *where, int rc, const char *call, const char *file, int line) {
    char reason[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    if (MPI_Error_string(rc, reason, &len) != MPI_SUCCESS)
        snprintf(reason, sizeof reason, "error code %d", rc);
    /* the call's name is what precedes its argument list */
    int name_len = (int)strcspn(call, "(");
    return comm_errorf(where, "MPI error: %s (%.*s at %s:%d)", reason, name_len, call,
                       short_path(file), line);
}

/* ---- starting and ending ---- */

/* mpirun/mpiexec (Open MPI, MPICH/Hydra) or srun (PMIx, PMI-2) set these in every rank. Not
 * SLURM_NTASKS: an sbatch script has it too, and a plain `braid train` there is a world of one. */
static bool started_by_launcher(void) {
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) return true;
    }
    return false;
}

/* BRAID_COMM_TIMEOUT: seconds as a plain decimal number > 0 ("600", "2.5"); anything else is an
 * error rather than a silently ignored watchdog. */
static bt_status parse_timeout(double *out) {
    const char *s = getenv("BRAID_COMM_TIMEOUT");
    *out = COMM_DEFAULT_TIMEOUT_S;
    if (!s) return BT_OK;
    int digits = 0, dots = 0;
    for (const char *p = s; *p; p++) {
        if (isdigit((unsigned char)*p))
            digits++;
        else if (*p == '.')
            dots++;
        else
            digits = -1000; /* any other character */
    }
    char *end = NULL;
    errno = 0;
    double v = digits > 0 && dots <= 1 ? strtod(s, &end) : 0.0;
    if (digits <= 0 || dots > 1 || errno != 0 || *end != '\0' || !isfinite(v) || v <= 0.0)
        return bt_error("comm_init: BRAID_COMM_TIMEOUT='%s': expected a positive number of seconds",
                        s);
    *out = v;
    return BT_OK;
}

/* A non-negative decimal environment variable; false when unset or not a plain number. */
static bool env_index(const char *name, int *out) {
    const char *s = getenv(name);
    if (!s || !*s) return false;
    long v = 0;
    for (const char *p = s; *p; p++) {
        if (!isdigit((unsigned char)*p) || v > INT_MAX / 10) return false;
        v = v * 10 + (*p - '0');
    }
    if (v > INT_MAX) return false;
    *out = (int)v;
    return true;
}

/* This rank's index on its node from MPI itself: collective over the world, so comm_init does it
 * once on every rank and comm_local_rank stays a local call. */
static bt_status find_node_rank(struct comm *world, int *out) {
    MPI_Comm node;
    COMM_MPI_CHECK("comm_init", MPI_Comm_split_type(world->mpi, MPI_COMM_TYPE_SHARED, world->rank,
                                                    MPI_INFO_NULL, &node));
    int rc = MPI_Comm_rank(node, out);
    int rc_free = MPI_Comm_free(&node);
    COMM_MPI_CHECK("comm_init", rc);
    COMM_MPI_CHECK("comm_init", rc_free);
    return BT_OK;
}

static bt_status start_mpi(int *argc, char ***argv, struct comm *world) {
    struct comm_runtime *rt = &runtime;
    int initialized = 0, finalized = 0;
    COMM_MPI_CHECK("comm_init", MPI_Initialized(&initialized));
    COMM_MPI_CHECK("comm_init", MPI_Finalized(&finalized));
    if (finalized)
        return bt_error("comm_init: MPI was already finalized in this process; it cannot start "
                        "again");
    if (!initialized) {
        int provided = 0;
        COMM_MPI_CHECK("comm_init", MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
        rt->owns_mpi = true;
        if (provided < MPI_THREAD_FUNNELED)
            return bt_error("comm_init: MPI provides thread level %d, braid needs "
                            "MPI_THREAD_FUNNELED",
                            provided);
    }
    rt->distributed = true;
    /* errors come back as codes we turn into messages, never as MPI's own abort */
    COMM_MPI_CHECK("comm_init", MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    /* braid's own copy of the world keeps its traffic apart from other MPI users (HDF5) */
    COMM_MPI_CHECK("comm_init", MPI_Comm_dup(MPI_COMM_WORLD, &world->mpi));
    COMM_MPI_CHECK("comm_init", MPI_Comm_set_errhandler(world->mpi, MPI_ERRORS_RETURN));
    COMM_MPI_CHECK("comm_init", MPI_Comm_rank(world->mpi, &world->rank));
    COMM_MPI_CHECK("comm_init", MPI_Comm_size(world->mpi, &world->size));
    int *tag_ub = NULL, flag = 0;
    COMM_MPI_CHECK("comm_init", MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &tag_ub, &flag));
    rt->tag_ub = flag && tag_ub ? *tag_ub : 32767; /* 32767: the least the standard allows */
    return find_node_rank(world, &rt->node_rank);
}

bt_status comm_init(int *argc, char ***argv) {
    struct comm_runtime *rt = &runtime;
    if (rt->initialized) return BT_OK;
    double timeout_s;
    if (parse_timeout(&timeout_s) != BT_OK) return BT_ERR;
    struct comm *world = calloc(1, sizeof *world);
    if (!world) return bt_error("comm_init: out of memory");
    *world = (struct comm){.mpi = MPI_COMM_NULL, .local = true, .rank = 0, .size = 1};
    snprintf(world->name, sizeof world->name, "world");
    rt->timeout_s = timeout_s;
    rt->tag_ub = INT_MAX;
    if (started_by_launcher()) {
        world->local = false;
        if (start_mpi(argc, argv, world) != BT_OK) {
            /* the world's communicator stays with MPI, which is of no further use here */
            free(world);
            return BT_ERR;
        }
    }
    rt->world = world;
    rt->initialized = true;
    return BT_OK;
}

void comm_finalize(void) {
    struct comm_runtime *rt = &runtime;
    if (!rt->initialized) return;
    if (rt->outstanding)
        fprintf(stderr, "braid: warning: comm_finalize: %s on group %s was never waited on\n",
                rt->outstanding->op, rt->outstanding->group);
    comm_nccl_free(rt->world);
    if (!rt->world->local && MPI_Comm_free(&rt->world->mpi) != MPI_SUCCESS)
        fprintf(stderr, "braid: warning: comm_finalize: MPI_Comm_free of the world failed\n");
    if (rt->owns_mpi && MPI_Finalize() != MPI_SUCCESS)
        fprintf(stderr, "braid: warning: comm_finalize: MPI_Finalize failed\n");
    free(rt->world);
    free(rt->scratch_mpi);
    free(rt->scratch_owner);
    free(rt->scratch_index);
    free(rt->scratch_status);
    runtime = (struct comm_runtime){0};
}

_Noreturn void comm_abort(int status) {
    fflush(stdout);
    fflush(stderr);
    int initialized = 0, finalized = 0;
    if (runtime.distributed && MPI_Initialized(&initialized) == MPI_SUCCESS && initialized &&
        MPI_Finalized(&finalized) == MPI_SUCCESS && !finalized)
        MPI_Abort(MPI_COMM_WORLD, status);
    exit(status); /* a world of one, or MPI_Abort returned (it should not) */
}

bool comm_is_distributed(void) {
    return runtime.distributed;
}

struct comm *comm_world(void) {
    return runtime.initialized ? runtime.world : NULL;
}

int comm_local_rank(void) {
    int v;
    if (env_index("OMPI_COMM_WORLD_LOCAL_RANK", &v)) return v;
    if (env_index("SLURM_LOCALID", &v)) return v;
    return runtime.node_rank; /* 0 for a world of one */
}

/* ---- groups ---- */

int comm_rank(const struct comm *c) {
    return c ? c->rank : -1;
}

int comm_size(const struct comm *c) {
    return c ? c->size : 0;
}

const char *comm_name(const struct comm *c) {
    return c ? c->name : "(null)";
}

/* c's communicator: the ranks of parent that passed `color`, ordered by key */
static bt_status split_mpi(struct comm *parent, int color, int key, struct comm *c,
                           const char *where) {
    COMM_MPI_CHECK(where, MPI_Comm_split(parent->mpi, color, key, &c->mpi));
    c->local = false;
    COMM_MPI_CHECK(where, MPI_Comm_set_errhandler(c->mpi, MPI_ERRORS_RETURN));
    COMM_MPI_CHECK(where, MPI_Comm_rank(c->mpi, &c->rank));
    COMM_MPI_CHECK(where, MPI_Comm_size(c->mpi, &c->size));
    return BT_OK;
}

struct comm *comm_split(struct comm *parent, int color, int key, const char *name) {
    char where[COMM_WHERE_MAX];
    comm_where(parent, "comm_split", where, sizeof where);
    if (!parent) {
        comm_errorf(where, "parent group is NULL (was comm_init called?)");
        return NULL;
    }
    if (!name || !*name || strlen(name) >= COMM_NAME_MAX) {
        comm_errorf(where, "group name '%s' must have 1 to %d characters", name ? name : "(null)",
                    COMM_NAME_MAX - 1);
        return NULL;
    }
    if (color < 0) {
        comm_errorf(where, "color %d for group %s must be >= 0", color, name);
        return NULL;
    }
    struct comm *c = calloc(1, sizeof *c);
    if (!c) {
        comm_errorf(where, "out of memory");
        return NULL;
    }
    *c = (struct comm){.mpi = MPI_COMM_NULL, .local = true, .rank = 0, .size = 1};
    snprintf(c->name, sizeof c->name, "%s", name);
    if ((!parent->local && split_mpi(parent, color, key, c, where) != BT_OK) ||
        comm_nccl_split(parent, c, color, key, where) != BT_OK) {
        if (!c->local) MPI_Comm_free(&c->mpi);
        free(c);
        return NULL;
    }
    return c;
}

void comm_free(struct comm *c) {
    if (!c || c == runtime.world) return;
    comm_nccl_free(c);
    if (!c->local && MPI_Comm_free(&c->mpi) != MPI_SUCCESS)
        fprintf(stderr, "braid: warning: comm_free: MPI_Comm_free of group %s failed\n", c->name);
    free(c);
}

/* ---- traffic counters ---- */

struct comm_traffic comm_traffic(const struct comm *c) {
    struct comm_traffic total = {0, 0};
    for (int k = 0; c && k < COMM_KIND_COUNT; k++) {
        total.calls += c->traffic[k].calls;
        total.bytes += c->traffic[k].bytes;
    }
    return total;
}

struct comm_traffic comm_traffic_of(const struct comm *c, comm_kind kind) {
    if (!c || kind < 0 || kind >= COMM_KIND_COUNT) return (struct comm_traffic){0, 0};
    return c->traffic[kind];
}

void comm_traffic_reset(struct comm *c) {
    if (c) memset(c->traffic, 0, sizeof c->traffic);
}

const char *comm_kind_name(comm_kind kind) {
    static const char *const names[COMM_KIND_COUNT] = {
        "allreduce", "reduce_scatter", "allgather", "broadcast", "send", "recv", "barrier"};
    return kind >= 0 && kind < COMM_KIND_COUNT ? names[kind] : "unknown";
}
