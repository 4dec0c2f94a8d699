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

/* ---- the codec (`host.serialize`) ---- */

/*
** The codec turns Lua values into bytes and back, across universes and
** processes. It carries nil, booleans, integers and floats exactly,
** strings, tables (shared references and cycles kept), tables whose
** metatable is registered by name, Lua functions by value (bytecode with
** debug info and their upvalues; `_ENV` becomes the receiver's globals),
** C functions found under the same path in package.loaded on both sides,
** and userdata whose type is registered with host_codec_register_udata.
** Each call is self-contained: no state outlives it but what a universe
** registered.
*/

/* host_codec_decode flag: accept functions and the globals table. */
#define HOST_CODEC_FUNCTIONS 1u

/*
** Encodes the `n` values from stack index `first` (nils included). On
** success returns LUA_OK with *buf a malloc'd payload of *len bytes, which
** the caller frees with free(). On failure returns the lua_pcall status,
** leaves the error message on the stack, and sets *buf to NULL. Never
** raises; the values are left where they are.
*/
int host_codec_encode(lua_State *L, int first, int n, char **buf, size_t *len);

/*
** Decodes a payload made by host_codec_encode (or serialize.dumps) and
** pushes its values, storing how many in *n. Payloads holding functions
** (bytecode) or the globals table are refused unless `flags` has
** HOST_CODEC_FUNCTIONS: loading bytecode is only safe from a trusted
** source. On failure returns the lua_pcall status with the error message
** pushed, and *n is 0. Never raises; any input is safe without the flag.
*/
int host_codec_decode(lua_State *L, const char *buf, size_t len, unsigned flags,
                      int *n);

/*
** Lets the codec carry userdata of type `tname` (a metatable made with
** luaL_newmetatable). `dump` is called with the userdata and returns a
** string; `load` is called with that string in the receiving universe,
** which registered the same name, and returns the value to use. A payload
** that must outlive its sender's memory, or cross processes, must hold no
** raw pointer. Returns LUA_OK, or an error status with the message pushed
** (no such metatable, or the name or metatable is taken by another type).
*/
int host_codec_register_udata(lua_State *L, const char *tname,
                              lua_CFunction dump, lua_CFunction load);

#endif
