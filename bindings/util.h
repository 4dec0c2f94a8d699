/*
** util.h: floor 0 of the bindings. Deadlines and timeouts, the one error
** object type (kind, message, traceback, cause), and the one protected-call
** helper that every call from C into Lua goes through. The public parts
** are declared in host.h.
** Nothing here knows about threads, the GIL or the codec.
*/
#ifndef HOST_UTIL_H
#define HOST_UTIL_H

#include <stdbool.h>
#include <time.h>

#include "lua.h"
#include "lauxlib.h"

#include "host.h"

/* ---- time ---- */

/* Seconds on the monotonic clock. */
double host_now(void);

/* An absolute point on CLOCK_MONOTONIC, or "never" for a wait without limit. */
typedef struct host_deadline {
  struct timespec at;
  bool never;
} host_deadline;

/* The deadline `seconds` from now; a negative value means never. */
host_deadline host_deadline_in(double seconds);

/* Seconds left before `d` (0 when passed; a huge value when never). */
double host_deadline_left(const host_deadline *d);

/* True when `d` has passed. */
bool host_deadline_passed(const host_deadline *d);

/*
** Reads an optional timeout in seconds at `arg`: nil or absent gives -1 (wait
** without limit); a negative number or NaN is an argument error.
*/
double host_opt_timeout(lua_State *L, int arg);

/* ---- the error object (its functions are declared in host.h) ---- */

#define HOST_ERROR_TYPE "host.Error"


#endif
