/* Long options of the subcommands (launch/commands.h): `--name value` or `--name=value`. */
#include <stdio.h>
#include <string.h>

#include "launch/commands.h"

static bool known(const char *name, const char *const *names) {
    for (; *names; names++)
        if (!strcmp(name, *names)) return true;
    return false;
}

int cli_parse_options(int argc, char **argv, const char *cmd, const char *const *names,
                      int (*set)(void *ctx, const char *name, const char *value), void *ctx,
                      void (*help)(FILE *out)) {
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
            help(stdout);
            return 0;
        }
        if (strncmp(arg, "--", 2) != 0) {
            cli_error("%s: unexpected argument '%s' (see braid %s --help)", cmd, arg, cmd);
            return 2;
        }
        char name[32];
        const char *eq = strchr(arg, '='), *value;
        size_t name_len = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
        snprintf(name, sizeof name, "%.*s", (int)name_len, arg + 2);
        if (name_len >= sizeof name || !known(name, names)) {
            cli_error("%s: unknown option '%.*s' (see braid %s --help)", cmd, (int)name_len + 2,
                      arg, cmd);
            return 2;
        }
        if (eq) {
            value = eq + 1;
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            cli_error("%s: --%s needs a value (see braid %s --help)", cmd, name, cmd);
            return 2;
        }
        if (set(ctx, name, value) != 0) return 2;
    }
    return -1;
}
