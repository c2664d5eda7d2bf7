/* The subcommands of the braid binary. Each takes argv starting at its own name, prints its own
 * --help, reports an error as one line `braid: error: <what>: <why>` on stderr, and returns the
 * exit status: 0 success, 1 failure while running, 2 bad command line. */
#ifndef BRAID_LAUNCH_COMMANDS_H
#define BRAID_LAUNCH_COMMANDS_H

#include <stdbool.h>
#include <stdio.h>

int cmd_train(int argc, char **argv);   /* braid train CONFIG.yaml [--section.key=value ...] */
int cmd_launch(int argc, char **argv);  /* braid launch [-n N] [--hostfile F] CONFIG.yaml ... */
int cmd_prep(int argc, char **argv);    /* braid prep --tokenizer K --input TEXT --out DIR */
int cmd_sample(int argc, char **argv);  /* braid sample --checkpoint PATH|DIR [--prompt TEXT] ... */
int cmd_inspect(int argc, char **argv); /* braid inspect PATH (a checkpoint or a token shard) */

/* Parses argv[1..] (argv[0] = cmd) as long options `--name value` or `--name=value` of the
 * NULL-terminated `names`, calling set(ctx, name, value) for each (it returns 0, or 2 after
 * printing a usage error); --help/-h calls help(stdout). Returns -1 to go on, 0 after --help, 2
 * for a bad command line (one line said: an unknown option, a missing value, a stray argument). */
int cli_parse_options(int argc, char **argv, const char *cmd, const char *const *names,
                      int (*set)(void *ctx, const char *name, const char *value), void *ctx,
                      void (*help)(FILE *out));

/* Prints `braid: error: <formatted message>` as one line on stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
