/*
** host.h: the public C API of host's bindings, for other C programs that
** embed them and for users' own bindings loaded into `host`.
**
** A *universe* is one Lua global state plus its GIL. Every OS thread that
** runs Lua code in it holds the GIL while it calls the Lua API.
*/
#ifndef HOST_H
#define HOST_H

#include <stdbool.h>

#include "lua.h"
#include "lauxlib.h"

/* ---- universes ---- */

/*
** Creates a new universe and returns its main state, with the GIL held by
** the calling thread. NULL when memory is short.
*/
lua_State *host_newstate(void);

/*
** Closes a universe made by host_newstate: waits for its non-daemon threads
** (releasing the GIL meanwhile), then closes the state. Returns false when
** a thread of the universe ended with an error nobody collected.
*/
bool host_close(lua_State *L);

/*
** Preloads every host library (`host.thread`, `host.error`, ...) into
** package.preload of L. The standard libraries must be open already.
*/
void host_openlibs(lua_State *L);

/*
** Makes the Lua code running in L's universe fail with "interrupted!" at
** its next instruction, the way lua.c handles Ctrl-C. Async-signal-safe.
*/
void host_interrupt(lua_State *L);

/* Preemption policy of L's universe: every `seconds` of waiting (default). */
void host_set_switch_interval(lua_State *L, double seconds);

/* Preemption policy of L's universe: every ~n VM instructions, jittered. */
void host_set_switch_instructions(lua_State *L, int n);

/* ---- errors ---- */

/*
** Pushes an error object {kind, message [, cause]}: a table whose
** metatable is "host.Error". `cause_idx` 0 means no cause.
*/
void host_error_push(lua_State *L, const char *kind, const char *message,
                     int cause_idx);

/* Raises a new error object of `kind` with a formatted message. */
int host_error_raise(lua_State *L, const char *kind, const char *fmt, ...);

/* True when the value at `idx` is an error object of `kind` (NULL: any). */
bool host_error_is(lua_State *L, int idx, const char *kind);

/* Message handler that adds a traceback to strings and error objects. */
int host_msghandler(lua_State *L);

/* lua_pcall with host_msghandler: the one way bindings call into Lua. */
int host_pcall(lua_State *L, int nargs, int nresults);

/*
** Replaces the error value on top of the stack with a printable string
** (its __tostring, or "(error object is a X value)") and returns it.
*/
const char *host_error_tostring(lua_State *L);

#endif
