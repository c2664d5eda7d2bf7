/* `braid launch [-n N] [--hostfile F] [--max-restarts K] CONFIG.yaml [--section.key=value ...]`:
 * checks the job and its layout with braid train's own config code, prints the rank map, runs
 * `mpirun -np N <this binary> train ...`, passes Ctrl-C and SIGTERM on to the ranks, and restarts
 * a failed job from its latest checkpoint (docs/launch.md). Relies on launch/config, parallel/grid
 * and a POSIX system with /proc (Linux) for finding the local ranks. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "core/runtime.h"
#include "launch/commands.h"
#include "launch/config.h"
#include "launch/job.h"
#include "parallel/grid.h"

#define MAX_RANKS (1 << 20)  /* -n and dp × tp × pp */
#define MAX_RESTARTS 1000000 /* --max-restarts */
#define MAX_LOCAL_RANKS 4096 /* ranks signalled directly (the rest hear it from mpirun) */
#define STATUS_BAD_CONFIG 2  /* braid train's exit status for a bad command line or config */
#define RESUME_OVERRIDE "--checkpoint.resume=auto"

static const char launch_usage[] =
    "usage: braid launch [-n N] [--hostfile F] [--max-restarts K] CONFIG.yaml\n"
    "                    [--section.key=value ...]\n"
    "\n"
    "Starts N ranks of `braid train CONFIG.yaml ...` with mpirun, after checking the config and\n"
    "its layout (parallel.dp × tp × pp must be N) as braid train does. Prints the rank map and\n"
    "the mpirun command, passes Ctrl-C and SIGTERM on to the ranks (they stop after the current\n"
    "step with a checkpoint; a second one stops them at once, a third kills them), and restarts a\n"
    "job that failed from its latest checkpoint, up to K times. Exit status: the job's (0 when it\n"
    "finished), 128 + the signal when stopped by one, 2 for a bad command line or config.\n"
    "\n"
    "options:\n"
    "  -n N               ranks to start (default: parallel.dp × tp × pp of the config)\n"
    "  --hostfile F       mpirun's hostfile: the machines and their slots (default: this one)\n"
    "  --max-restarts K   restarts after a failure, each resuming from <checkpoint.dir>/latest\n"
    "                     (default 0)\n"
    "  -h, --help         show this help and exit\n"
    "\n"
    "Any --section.key=value is passed on to braid train. See docs/launch.md.\n";

struct launch_options {
    const char *config;
    const char *hostfile; /* NULL = this machine */
    long long n_ranks;    /* 0 = dp × tp × pp */
    long long max_restarts;
    char **overrides; /* the --section.key=value arguments, in order (into argv) */
    int n_overrides;
};

/* The command of one attempt and what it needs. */
struct job {
    char mpirun[PATH_MAX]; /* mpirun, found on PATH */
    char braid[PATH_MAX];  /* this binary, for the ranks */
    char **argv;           /* mpirun -np N ... braid train CONFIG overrides [resume] NULL */
    int argc;
    pid_t mpirun_pid;
    int user_signal; /* the first SIGINT/SIGTERM/SIGHUP braid launch got, 0 = none */
    int signals;     /* how many it got */
};

/* ---- the command line ---- */

/* A whole number in [min, max]; false when value is anything else. */
static bool parse_int(const char *value, long long min, long long max, long long *out) {
    char *end;
    errno = 0;
    long long n = strtoll(value, &end, 10);
    if (errno || end == value || *end || n < min || n > max) return false;
    *out = n;
    return true;
}

/* A `--section.key=value` override rather than an option of braid launch: a dot in its name. */
static bool is_override(const char *arg) {
    if (strncmp(arg, "--", 2) != 0) return false;
    const char *dot = strchr(arg, '.'), *eq = strchr(arg, '=');
    return dot && (!eq || dot < eq);
}

/* Takes the value of option `flag` at argv[*i]: `-n 2`, `-n2`, `--hostfile=F` or `--hostfile F`.
 * NULL (after the message) when there is none. */
static const char *option_value(int argc, char **argv, int *i, const char *flag) {
    const char *arg = argv[*i];
    size_t len = strlen(flag);
    if (arg[len] == '=' || (len == 2 && arg[len])) return arg + len + (arg[len] == '=');
    if (*i + 1 < argc) return argv[++*i];
    cli_error("launch: %s needs a value (see braid launch --help)", flag);
    return NULL;
}

/* The option named by arg ("-n", "--hostfile", "--max-restarts"), or NULL. */
static const char *option_name(const char *arg) {
    static const char *const flags[] = {"--hostfile", "--max-restarts"};
    if (!strncmp(arg, "-n", 2) && (arg[2] != '-')) return "-n";
    for (size_t k = 0; k < sizeof flags / sizeof flags[0]; k++) {
        size_t len = strlen(flags[k]);
        if (!strncmp(arg, flags[k], len) && (arg[len] == '\0' || arg[len] == '=')) return flags[k];
    }
    return NULL;
}

/* Parses argv (argv[0] = "launch"); returns -1 to go on, else the exit status (0 after --help).
 * o->overrides points into argv's own array, reordered: options may come anywhere. */
static int parse_args(int argc, char **argv, struct launch_options *o) {
    *o = (struct launch_options){.overrides = argv + 1};
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *flag = option_name(arg), *value;
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
            fputs(launch_usage, stdout);
            return 0;
        }
        if (is_override(arg)) {
            o->overrides[o->n_overrides++] = argv[i];
            continue;
        }
        if (arg[0] != '-') {
            if (o->config) {
                cli_error("launch: unexpected argument '%s' after the config file %s (overrides "
                          "are --section.key=value)",
                          arg, o->config);
                return 2;
            }
            o->config = arg;
            continue;
        }
        if (!flag) {
            cli_error("launch: unknown option '%s' (see braid launch --help)", arg);
            return 2;
        }
        if (!(value = option_value(argc, argv, &i, flag))) return 2;
        if (!strcmp(flag, "-n") && !parse_int(value, 1, MAX_RANKS, &o->n_ranks)) {
            cli_error("launch: -n '%s': expected a whole number of ranks from 1 to %d", value,
                      MAX_RANKS);
            return 2;
        }
        if (!strcmp(flag, "--max-restarts") &&
            !parse_int(value, 0, MAX_RESTARTS, &o->max_restarts)) {
            cli_error("launch: --max-restarts '%s': expected a whole number from 0 to %d", value,
                      MAX_RESTARTS);
            return 2;
        }
        if (!strcmp(flag, "--hostfile")) {
            if (access(value, R_OK) != 0) {
                cli_error("launch: --hostfile %s: cannot read it: %s", value, strerror(errno));
                return 2;
            }
            o->hostfile = value;
        }
    }
    if (!o->config) {
        cli_error("launch: expected a config file (usage: braid launch [-n N] [--hostfile F] "
                  "[--max-restarts K] CONFIG.yaml [--section.key=value ...])");
        return 2;
    }
    return -1;
}

/* ---- checking the job ---- */

/* The layout's rank count against -n, in launch's words (cfg_finalize would say "N ranks are
 * running"). Sizes below 1 are left to cfg_finalize, which names them. */
static bt_status check_layout(const struct braid_config *cfg, long long n_ranks) {
    const struct cfg_parallel *p = &cfg->parallel;
    if (p->dp < 1 || p->tp < 1 || p->pp < 1) return BT_OK;
    int64_t product;
    bool overflow = __builtin_mul_overflow(p->dp, p->tp, &product) ||
                    __builtin_mul_overflow(product, p->pp, &product);
    if (!overflow && product == n_ranks) return BT_OK;
    static const char *const keys[] = {"parallel.dp", "parallel.tp", "parallel.pp"};
    char place[CFG_STR + 32] = "", where[CFG_STR + 16];
    for (int k = 0; k < 3 && !place[0]; k++)
        if (cfg_is_set(cfg, keys[k]))
            snprintf(place, sizeof place, "%s: ", cfg_origin(cfg, keys[k], where, sizeof where));
    char total[32] = "more than 2^63";
    if (!overflow) snprintf(total, sizeof total, "%lld", (long long)product);
    return bt_error("%sparallel.dp=%lld × tp=%lld × pp=%lld = %s but braid launch -n %lld starts "
                    "%lld rank%s",
                    place, (long long)p->dp, (long long)p->tp, (long long)p->pp, total, n_ranks,
                    n_ranks, n_ranks == 1 ? "" : "s");
}

/* Loads and checks the job as braid train will, and settles the number of ranks. */
static bt_status check_job(struct launch_options *o, struct braid_config *cfg) {
    cfg_defaults(cfg);
    if (cfg_load_file(cfg, o->config) != BT_OK) return BT_ERR;
    for (int i = 0; i < o->n_overrides; i++)
        if (cfg_apply_override(cfg, o->overrides[i]) != BT_OK) return BT_ERR;
    const struct cfg_parallel *p = &cfg->parallel;
    if (o->n_ranks == 0) {
        int64_t product;
        if (p->dp >= 1 && p->tp >= 1 && p->pp >= 1 &&
            !__builtin_mul_overflow(p->dp, p->tp, &product) &&
            !__builtin_mul_overflow(product, p->pp, &product) && product <= MAX_RANKS)
            o->n_ranks = product;
        else if (p->dp >= 1 && p->tp >= 1 && p->pp >= 1)
            return bt_error("parallel.dp=%lld × tp=%lld × pp=%lld is more than the %d ranks "
                            "braid launch starts",
                            (long long)p->dp, (long long)p->tp, (long long)p->pp, MAX_RANKS);
        else
            o->n_ranks = 1; /* cfg_finalize names the size below 1 */
    }
    if (check_layout(cfg, o->n_ranks) != BT_OK || job_resolve_vocab_size(cfg) != BT_OK ||
        cfg_finalize(cfg, (int)o->n_ranks) != BT_OK)
        return BT_ERR;
    return job_check_supported(cfg); /* what braid train would refuse, before any rank starts */
}

/* ---- the command ---- */

/* The first executable `name` on PATH, into path; false when there is none. */
static bool find_on_path(const char *name, char *path, size_t size) {
    const char *dirs = getenv("PATH");
    if (!dirs || !*dirs) dirs = "/usr/local/bin:/usr/bin:/bin";
    for (const char *dir = dirs;;) {
        const char *colon = strchr(dir, ':');
        size_t len = colon ? (size_t)(colon - dir) : strlen(dir);
        int n = len ? snprintf(path, size, "%.*s/%s", (int)len, dir, name)
                    : snprintf(path, size, "./%s", name); /* an empty entry is . */
        struct stat st;
        if (n > 0 && (size_t)n < size && stat(path, &st) == 0 && S_ISREG(st.st_mode) &&
            access(path, X_OK) == 0)
            return true;
        if (!colon) return false;
        dir = colon + 1;
    }
}

/* The variables braid launch set for the ranks, as the shell prefix of the printed command. */
struct env_prefix {
    char text[512];
    size_t len;
};

/* Sets an environment variable for the ranks (and mpirun) unless the user has; returns whether it
 * did, adding it to the prefix. */
static bool set_env(struct env_prefix *prefix, const char *name, const char *value) {
    if (getenv(name)) return false;
    setenv(name, value, 0);
    if (prefix->len < sizeof prefix->text)
        prefix->len += (size_t)snprintf(prefix->text + prefix->len,
                                        sizeof prefix->text - prefix->len, "%s=%s ", name, value);
    return true;
}

/* The environment of the ranks, each variable said once with its reason: threads per rank, and
 * what Open MPI's mpirun needs to run as root or with more ranks than cores (another MPI's
 * mpirun ignores OMPI_* variables, where a flag such as --oversubscribe would stop it). */
static void setup_environment(const struct launch_options *o, struct env_prefix *prefix) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores < 1) cores = 1;
    memset(prefix, 0, sizeof *prefix);
    if (!o->hostfile) {
        char threads[32];
        long per_rank = cores / o->n_ranks > 1 ? cores / o->n_ranks : 1;
        snprintf(threads, sizeof threads, "%ld", per_rank);
        if (set_env(prefix, "OMP_NUM_THREADS", threads))
            printf("braid launch: OMP_NUM_THREADS=%s for each rank (%ld core%s / %lld rank%s; "
                   "set OMP_NUM_THREADS to choose)\n",
                   threads, cores, cores == 1 ? "" : "s", o->n_ranks, o->n_ranks == 1 ? "" : "s");
        if (o->n_ranks > cores && set_env(prefix, "OMPI_MCA_rmaps_base_oversubscribe", "1"))
            printf("braid launch: OMPI_MCA_rmaps_base_oversubscribe=1 (%lld ranks on %ld "
                   "core%s: Open MPI's mpirun refuses more ranks than cores without it)\n",
                   o->n_ranks, cores, cores == 1 ? "" : "s");
    }
    if (geteuid() == 0) {
        bool allow = set_env(prefix, "OMPI_ALLOW_RUN_AS_ROOT", "1");
        bool confirm = set_env(prefix, "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
        if (allow || confirm)
            printf("braid launch: OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
                   "(running as root: Open MPI's mpirun refuses to without them)\n");
    }
}

/* mpirun -np N [--hostfile F] BRAID train CONFIG overrides..., with room for the resume override
 * of a restart and the terminating NULL. */
static bt_status build_command(struct job *job, const struct launch_options *o, char *np,
                               size_t np_size) {
    ssize_t len = readlink("/proc/self/exe", job->braid, sizeof job->braid - 1);
    if (len <= 0 || (size_t)len >= sizeof job->braid - 1)
        return bt_error("launch: cannot find the path of this braid binary (/proc/self/exe): %s",
                        len < 0 ? strerror(errno) : "too long");
    job->braid[len] = '\0';
    if (!find_on_path("mpirun", job->mpirun, sizeof job->mpirun))
        return bt_error("launch: mpirun is not on PATH: install an MPI (Open MPI: apt install "
                        "openmpi-bin) or start the ranks yourself (docs/launch.md)");
    job->argv = calloc((size_t)o->n_overrides + 12, sizeof *job->argv);
    if (!job->argv) return bt_error("launch: out of memory");
    snprintf(np, np_size, "%lld", o->n_ranks);
    char **a = job->argv;
    int n = 0;
    a[n++] = "mpirun";
    a[n++] = "-np";
    a[n++] = np;
    if (o->hostfile) {
        a[n++] = "--hostfile";
        a[n++] = (char *)o->hostfile;
    }
    a[n++] = job->braid;
    a[n++] = "train";
    a[n++] = (char *)o->config;
    for (int i = 0; i < o->n_overrides; i++)
        a[n++] = o->overrides[i];
    job->argc = n;
    return BT_OK;
}

/* A word as the shell reads it back: as it is when it is plain, else in single quotes. */
static void print_shell_word(const char *word) {
    bool plain = *word != '\0';
    for (const char *c = word; *c && plain; c++)
        plain = strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%",
                       *c) != NULL;
    if (plain) {
        fputs(word, stdout);
        return;
    }
    putchar('\'');
    for (const char *c = word; *c; c++)
        if (*c == '\'')
            fputs("'\\''", stdout);
        else
            putchar(*c);
    putchar('\'');
}

static void print_command(const struct job *job, const struct env_prefix *env) {
    printf("braid launch: running %s", env->text);
    for (int i = 0; i < job->argc; i++) {
        if (i) putchar(' ');
        print_shell_word(job->argv[i]);
    }
    putchar('\n');
    fflush(stdout);
}

static void print_rank_map(const struct braid_config *cfg, const struct launch_options *o) {
    const struct cfg_parallel *p = &cfg->parallel;
    printf("braid launch: %lld rank%s, parallel.dp=%lld × tp=%lld × pp=%lld, %s\n", o->n_ranks,
           o->n_ranks == 1 ? "" : "s", (long long)p->dp, (long long)p->tp, (long long)p->pp,
           o->hostfile ? "on the hosts of the hostfile (mpirun places them by slot)"
                       : "on this machine");
    for (int rank = 0; rank < (int)o->n_ranks; rank++) {
        int dp_rank, tp_rank, pp_rank;
        grid_coords(rank, (int)p->dp, (int)p->tp, (int)p->pp, &dp_rank, &tp_rank, &pp_rank);
        printf("rank %d: dp %d, tp %d, pp %d", rank, dp_rank, tp_rank, pp_rank);
        if (!o->hostfile) printf(" (local rank %d)", rank);
        putchar('\n');
    }
}

/* ---- running it ---- */

/* Signals reach braid launch through a self-pipe: the handler (on whichever thread the kernel
 * picks) writes the signal's number, and the loop waiting for mpirun reads it. */
static int signal_pipe[2] = {-1, -1};
static pid_t launcher_pid;

static void on_signal(int sig) {
    if (getpid() != launcher_pid) return; /* a forked child before its exec */
    int saved = errno;
    unsigned char byte = (unsigned char)sig;
    ssize_t written = write(signal_pipe[1], &byte, 1); /* fails only when full of signals */
    (void)written;
    errno = saved;
}

static const int caught_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGCHLD};
#define N_CAUGHT (int)(sizeof caught_signals / sizeof caught_signals[0])

/* Installs on_signal for the signals above, keeping the old actions in old[]. SIGHUP stays
 * ignored when it was (nohup). */
static bt_status catch_signals(struct sigaction old[N_CAUGHT]) {
    launcher_pid = getpid();
    if (pipe(signal_pipe) != 0) return bt_error("launch: pipe: %s", strerror(errno));
    for (int k = 0; k < 2; k++) {
        fcntl(signal_pipe[k], F_SETFD, FD_CLOEXEC);
        fcntl(signal_pipe[k], F_SETFL, O_NONBLOCK);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    for (int k = 0; k < N_CAUGHT; k++) {
        sigaction(caught_signals[k], NULL, &old[k]);
        if (caught_signals[k] == SIGHUP && old[k].sa_handler == SIG_IGN) continue;
        sa.sa_flags = SA_RESTART | (caught_signals[k] == SIGCHLD ? SA_NOCLDSTOP : 0);
        sigaction(caught_signals[k], &sa, NULL);
    }
    return BT_OK;
}

static void release_signals(const struct sigaction old[N_CAUGHT]) {
    for (int k = 0; k < N_CAUGHT; k++)
        sigaction(caught_signals[k], &old[k], NULL);
    for (int k = 0; k < 2; k++)
        if (signal_pipe[k] >= 0) close(signal_pipe[k]);
    signal_pipe[0] = signal_pipe[1] = -1;
}

/* The next signal waiting in the pipe, 0 when none (wait: block until one comes). */
static int next_signal(bool wait) {
    for (;;) {
        unsigned char byte;
        ssize_t got = read(signal_pipe[0], &byte, 1);
        if (got == 1) return byte;
        if (got < 0 && errno == EINTR) continue;
        if (!wait) return 0;
        struct pollfd pfd = {.fd = signal_pipe[0], .events = POLLIN};
        if (poll(&pfd, 1, -1) < 0 && errno != EINTR) return 0;
    }
}

/* The parent pid of `pid` from /proc/PID/stat, or -1. */
static pid_t parent_of(pid_t pid) {
    char path[64], text[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t len = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[len] = '\0';
    const char *after_name = strrchr(text, ')'); /* the name may hold spaces and parentheses */
    int ppid;
    if (!after_name || sscanf(after_name + 1, " %*c %d", &ppid) != 1) return -1;
    return ppid;
}

/* The ranks on this machine: processes below mpirun (its children for Open MPI, grandchildren
 * under MPICH's proxy) that run this binary. Returns how many went into pids. */
static int find_local_ranks(const struct job *job, pid_t *pids, int max) {
    DIR *proc = opendir("/proc");
    if (!proc) return 0;
    int n = 0;
    for (struct dirent *e; n < max && (e = readdir(proc));) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 1 || pid == job->mpirun_pid) continue;
        pid_t up = (pid_t)pid;
        for (int depth = 0; depth < 4 && up > 1 && up != job->mpirun_pid; depth++)
            up = parent_of(up);
        if (up != job->mpirun_pid) continue;
        char link[64], exe[PATH_MAX];
        snprintf(link, sizeof link, "/proc/%ld/exe", pid);
        ssize_t len = readlink(link, exe, sizeof exe - 1);
        if (len <= 0) continue;
        exe[len] = '\0';
        if (!strcmp(exe, job->braid)) pids[n++] = (pid_t)pid;
    }
    closedir(proc);
    return n;
}

static const char *signal_name(int sig) {
    return sig == SIGINT    ? "SIGINT"
           : sig == SIGTERM ? "SIGTERM"
           : sig == SIGHUP  ? "SIGHUP"
                            : "a signal";
}

/* A signal for braid launch. mpirun itself would give the ranks SIGTERM only after its
 * odls_base_sigkill_timeout (1 s) and SIGKILL them a second later, too soon for a step and a
 * checkpoint; so the first signal goes to the local ranks, which agree to stop after the current
 * step (braid train sums the requests), and to mpirun only when none is found here. The second
 * stops them at once (braid train's handler is one-shot), the third kills the job. */
static void forward_signal(struct job *job, int sig) {
    pid_t ranks[MAX_LOCAL_RANKS];
    int to_ranks = sig == SIGHUP ? SIGTERM : sig; /* braid train saves on SIGTERM, dies on SIGHUP */
    int n = find_local_ranks(job, ranks, MAX_LOCAL_RANKS);
    if (!job->user_signal) job->user_signal = sig;
    job->signals++;
    if (job->signals >= 3) {
        printf("braid launch: %s again: killing the job (SIGKILL)\n", signal_name(sig));
        to_ranks = SIGKILL;
        kill(job->mpirun_pid, SIGKILL);
    } else if (job->signals == 2) {
        printf("braid launch: %s again: stopping the ranks now, without a checkpoint (once more: "
               "SIGKILL)\n",
               signal_name(sig));
        kill(job->mpirun_pid, to_ranks);
    } else if (n > 0) {
        printf("braid launch: %s: the ranks stop after the current step with a checkpoint "
               "(again: stop now)\n",
               signal_name(sig));
    } else {
        printf("braid launch: %s: no rank found on this machine, passing it to mpirun\n",
               signal_name(sig));
        kill(job->mpirun_pid, to_ranks);
    }
    fflush(stdout);
    for (int i = 0; i < n; i++)
        kill(ranks[i], to_ranks);
}

/* Starts mpirun in a process group of its own, so that a Ctrl-C at the terminal reaches braid
 * launch alone, which passes it on (forward_signal). Its stdin is /dev/null: a background
 * process group reading the terminal would be stopped. */
static bt_status start_mpirun(struct job *job) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return bt_error("launch: fork: %s", strerror(errno));
    if (pid == 0) {
        setpgid(0, 0);
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0 && null != STDIN_FILENO) {
            dup2(null, STDIN_FILENO);
            close(null);
        }
#ifdef __linux__
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* braid launch killed: mpirun ends the job */
        if (getppid() != launcher_pid) _exit(128 + SIGTERM);
#endif
        execv(job->mpirun, job->argv);
        static const char msg[] = "braid: error: launch: cannot run mpirun\n";
        ssize_t written = write(STDERR_FILENO, msg, sizeof msg - 1);
        (void)written;
        _exit(127);
    }
    setpgid(pid, pid); /* also here: no signal may find the child still in ours */
    job->mpirun_pid = pid;
    return BT_OK;
}

/* Runs the command once; returns mpirun's exit status (128 + the signal that killed it). */
static int run_once(struct job *job) {
    if (start_mpirun(job) != BT_OK) {
        cli_error("%s", bt_last_error());
        return 1;
    }
    for (;;) {
        int sig = next_signal(true), wstatus;
        if (sig != SIGCHLD && sig != 0) forward_signal(job, sig);
        pid_t done = waitpid(job->mpirun_pid, &wstatus, WNOHANG);
        if (done == job->mpirun_pid)
            return WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
        if (done < 0 && errno != EINTR) {
            cli_error("launch: waiting for mpirun: %s", strerror(errno));
            return 1;
        }
    }
}

/* Runs the job, restarting it after a failure up to max_restarts times. */
static int run_job(struct job *job, const struct launch_options *o, const struct env_prefix *env) {
    for (long long restart = 0;; restart++) {
        int status = run_once(job);
        if (job->user_signal) return status == 0 ? 0 : 128 + job->user_signal;
        if (status == 0) return 0;
        if (status == STATUS_BAD_CONFIG) {
            printf("braid launch: the job failed with status 2 (a bad command line or config): "
                   "not restarting, a restart cannot help\n");
            return status;
        }
        if (restart == o->max_restarts) {
            if (o->max_restarts > 0)
                printf("braid launch: the job failed (status %d) after %lld restart%s: giving "
                       "up\n",
                       status, restart, restart == 1 ? "" : "s");
            return status;
        }
        for (int sig; (sig = next_signal(false));)
            if (sig != SIGCHLD) return 128 + sig; /* asked to stop between two attempts */
        printf("braid launch: the job failed (status %d); restart %lld of %lld from the latest "
               "checkpoint\n",
               status, restart + 1, o->max_restarts);
        if (restart == 0) job->argv[job->argc++] = RESUME_OVERRIDE;
        print_command(job, env);
    }
}

int cmd_launch(int argc, char **argv) {
    struct launch_options o;
    int status = parse_args(argc, argv, &o);
    if (status >= 0) return status;
    struct braid_config cfg;
    if (check_job(&o, &cfg) != BT_OK) {
        cli_error("%s", bt_last_error());
        bt_runtime_shutdown();
        return 2;
    }
    struct job job;
    memset(&job, 0, sizeof job);
    char np[32];
    struct env_prefix env;
    struct sigaction old[N_CAUGHT];
    if (build_command(&job, &o, np, sizeof np) != BT_OK) {
        cli_error("%s", bt_last_error());
        status = 1;
    } else if (catch_signals(old) != BT_OK) {
        cli_error("%s", bt_last_error());
        status = 1;
    } else {
        print_rank_map(&cfg, &o);
        setup_environment(&o, &env);
        print_command(&job, &env);
        status = run_job(&job, &o, &env);
        release_signals(old);
    }
    free(job.argv);
    bt_runtime_shutdown();
    return status;
}
