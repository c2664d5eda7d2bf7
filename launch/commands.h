/* The subcommands of the braid binary. Each takes argv starting at its own name, prints its own
 * --help, reports an error as one line `braid: error: <what>: <why>` on stderr, and returns the
 * exit status: 0 success, 1 failure while running, 2 bad command line. */
#ifndef BRAID_LAUNCH_COMMANDS_H
#define BRAID_LAUNCH_COMMANDS_H

int cmd_train(int argc, char **argv);  /* braid train CONFIG.yaml [--section.key=value ...] */
int cmd_launch(int argc, char **argv); /* braid launch [-n N] [--hostfile F] CONFIG.yaml ... */
int cmd_prep(int argc, char **argv);   /* braid prep --tokenizer K --input TEXT --out DIR */
int cmd_sample(int argc, char **argv); /* braid sample --checkpoint PATH|DIR [--prompt TEXT] ... */
int cmd_inspect(int argc, char **argv); /* braid inspect PATH (a checkpoint or a token shard) */

/* Prints `braid: error: <formatted message>` as one line on stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
