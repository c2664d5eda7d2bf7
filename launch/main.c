/* The `braid` binary: parses the global flags and dispatches to a subcommand. Subcommands are
 * rows of `commands` below; each prints its own --help and returns its exit status. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "launch/commands.h"

struct command {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
};

/* The subcommands, in the order braid --help lists them. */
static const struct command commands[] = {
    {"train", "train a model from a YAML job file (the worker)", cmd_train},
    {"launch", "start N local ranks of braid train (wrapping mpirun)", cmd_launch},
    {"prep", "tokenize a text file into token shards", cmd_prep},
    {"sample", "generate text from a checkpoint", cmd_sample},
    {"inspect", "summarize a checkpoint or a token shard", cmd_inspect},
    {NULL, NULL, NULL},
};

void cli_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("braid: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void print_usage(FILE *out) {
    fprintf(out, "usage: braid [--help] [--version] <command> [<args>]\n\n"
                 "braid trains GPT- and LLaMA-style language models from a YAML job file.\n\n");
    int n = 0;
    for (const struct command *c = commands; c->name; c++) {
        if (n++ == 0) fprintf(out, "commands:\n");
        fprintf(out, "  %-10s %s\n", c->name, c->summary);
    }
    fprintf(out, "\nRun 'braid <command> --help' for a command's options.\n"
                 "\noptions:\n"
                 "  -h, --help     show this help and exit\n"
                 "  -V, --version  show the version and build configuration and exit\n"
                 "\nSee README.md and docs/ for the quick start and the config reference.\n");
}

static void print_version(void) {
    printf("braid %s\n", BRAID_VERSION);
    printf("backends: cpu (OpenBLAS, OpenMP)");
#ifdef BRAID_HAVE_CUDA
    printf(", cuda");
#else
    printf("; cuda not built");
#endif
    printf("\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        print_usage(stderr);
        return 2;
    }
    const char *arg = argv[1];
    if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
        print_usage(stdout);
        return 0;
    }
    if (!strcmp(arg, "-V") || !strcmp(arg, "--version")) {
        print_version();
        return 0;
    }
    if (arg[0] == '-') {
        cli_error("unknown option '%s' (see braid --help)", arg);
        return 2;
    }
    for (const struct command *c = commands; c->name; c++)
        if (!strcmp(arg, c->name)) return c->run(argc - 1, argv + 1);
    cli_error("unknown command '%s' (see braid --help)", arg);
    return 2;
}
