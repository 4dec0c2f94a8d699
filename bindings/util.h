/*
** util.h: floor 0 of the bindings. Deadlines and timeouts, the userdata
** type helper, FIFOs in uservalues, the one error
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

/*
** Raises "bad argument #arg ('field' must be <what>, got <type>)" for the
** value on top, a field of the options table at arg.
*/
int host_field_error(lua_State *L, int arg, const char *field, const char *what);

/*
** Checks that the value at arg can be called: a function, or a value whose
** metatable has __call. Raises "bad argument #arg to 'f' (function
** expected, got <type>)" otherwise.
*/
void host_check_callable(lua_State *L, int arg);

/*
** Checks that every key of the options table at arg is one of `known`
** (NULL-terminated). Raises "bad argument #arg to 'f' (unknown option
** 'maxworkers' (did you mean 'max_workers'?))", naming the closest known
** option, or listing them all when none is close.
*/
void host_check_options(lua_State *L, int arg, const char *const known[]);

/*
** Gives the table on top a metatable {__mode = mode} ("k", "v" or "kv"),
** so that its keys or values do not keep what they refer to alive.
*/
void host_set_weak(lua_State *L, const char *mode);

/*
** host_pcall for code that runs on behalf of another universe or process
** (a pool's task): on error it leaves the error value and then the
** traceback of the called code's own frames (a string "\n\t<frame>..."
** with only the frames above this call, or nil) and returns the status.
** The error value itself is left as it was raised: no traceback is added
** to it.
*/
int host_pcall_task(lua_State *L, int nargs, int nresults);

/* ---- userdata types ---- */

/*
** Every host userdata type's C struct starts with a host_object, which
** records whether its __gc has run. Lua can still reach an object after
** that (a finalizer that resurrects it, finalizers at exit running in any
** order), so every method checks it, as liolib checks for a closed file.
*/
typedef struct host_object {
  bool finalized;
} host_object;

/*
** Defines metatable tname (luaL_newmetatable, so __name is tname), unless
** it exists. `methods` are reached through __index, a table; when `index`
** is given, __index is that function instead and the table is the
** metafield "methods". `meta` entries (__gc, __close, __tostring, ...) go
** in the metatable itself. Every function gets the metatable as upvalue 1
** (see host_object_check_self). Leaves the stack as it was.
*/
void host_type_define(lua_State *L, const char *tname, const luaL_Reg *methods,
                      const luaL_Reg *meta, lua_CFunction index);

/*
** Pushes a new userdata of `size` bytes (a struct that starts with a
** host_object), zeroed, with nuv uservalues and metatable tname.
*/
void *host_object_new(lua_State *L, size_t size, const char *tname, int nuv);

/*
** The object at idx when it is a tname that is not finalized. Raises
** "tname expected, got X" or "attempt to use a finalized tname".
*/
void *host_object_check(lua_State *L, int idx, const char *tname);

/*
** host_object_check(L, 1, tname) for a function made by host_type_define
** for tname: compares with its upvalue 1 instead of the registry's entry.
*/
void *host_object_check_self(lua_State *L, const char *tname);

/*
** The object at idx when it is a tname (NULL otherwise); raises when it is
** a finalized one.
*/
void *host_object_test(lua_State *L, int idx, const char *tname);

/*
** For __gc: marks the tname at 1 finalized and returns it, or returns NULL
** when it was finalized already (a __gc called again by hand).
*/
void *host_object_finalize(lua_State *L, const char *tname);

/*
** For __tostring: when the tname at 1 is finalized, pushes
** "tname (finalized): 0x..." and returns true.
*/
bool host_object_tostring_finalized(lua_State *L, const char *tname);

/* ---- a FIFO of Lua values in a userdata's uservalue table ---- */

/* The items lie at [head, tail) of the table; both start at 1. */
typedef struct host_fifo {
  lua_Integer head, tail;
} host_fifo;

void host_fifo_init(host_fifo *q);

/* Number of items. */
lua_Integer host_fifo_len(const host_fifo *q);

/* Appends the value on top (popped) to the FIFO in uservalue uv of obj. */
void host_fifo_push(lua_State *L, int obj, int uv, host_fifo *q);

/* Pushes and removes the oldest item; pushes nil and returns false if empty. */
bool host_fifo_pop(lua_State *L, int obj, int uv, host_fifo *q);

/* ---- the error object (its functions are declared in host.h) ---- */

#define HOST_ERROR_TYPE "host.Error"


#endif
