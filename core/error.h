/* Error reporting for braid's core. A function that fails returns NULL (or BT_ERR) and leaves one
 * message in the runtime context; callers print it with bt_last_error(). The first error of a chain
 * wins: ops given a NULL input return NULL without overwriting the message that caused it. */
#ifndef BRAID_CORE_ERROR_H
#define BRAID_CORE_ERROR_H

#include <stdbool.h>

typedef enum { BT_OK = 0, BT_ERR = -1 } bt_status;

/* Record an error message (printf-style) and return BT_ERR. If a module scope is active (see
 * bt_scope_push), " (in <scope>)" is appended so messages name the caller. */
bt_status bt_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *bt_last_error(void); /* "" when there is none */
/* Puts "<prefix>: " in front of the current message (the caller's context: a config key, a
 * file) and returns BT_ERR. */
bt_status bt_error_prefix(const char *prefix);
bool bt_has_error(void);
void bt_error_clear(void);

/* Name the code that is running (e.g. a module's dotted path) for error messages. Scopes nest. */
void bt_scope_push(const char *name);
void bt_scope_pop(void);

#endif
