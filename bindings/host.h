/*
** host.h: the public C API of host's bindings, for other C programs that
** embed them and for users' own bindings loaded into `host`.
**
** A *universe* is one Lua global state plus its GIL. Every OS thread that
** runs Lua code in it holds the GIL while it calls the Lua API.
**
** Building against it (README, "Writing your own binding"):
**   a module loaded by `host`:  cc -shared -fPIC $(pkg-config --cflags --libs host)
**     (links no library: the program exports these functions and Lua's);
**   a program that embeds host: cc $(pkg-config --cflags --libs host-embed)
**     (links libhost.a and liblua5.4, and exports them to its modules).
** The header needs only Lua's headers (lua.h, lauxlib.h) on the path.
*/
#ifndef HOST_H
#define HOST_H

#include <stdbool.h>
#include <stdio.h>

#include "lua.h"
#include "lauxlib.h"

#ifdef __cplusplus
extern "C" {
#endif

/* host's version: `host --version` and `require "host".version` say it. */
#define HOST_VERSION "0.1"

/* ---- universes ---- */

/*
** Creates a new universe and returns its main state, with the GIL held by
** the calling thread. NULL when memory is short.
*/
lua_State *host_newstate(void);

/*
** Closes a universe made by host_newstate: runs the functions registered
** to run at exit, waits for its non-daemon threads (releasing the GIL
** meanwhile), then closes the state (daemon threads stay parked) and
** returns true. Returns false, without closing the state, when
** host_interrupt interrupts that wait (the dump of every thread is then
** printed on stderr), or when those threads can never end (every thread of
** the universe is blocked: the deadlock report and the dump are printed):
** the non-daemon threads still run, and the program is expected to exit.
** Errors of threads do not change the result (so `host` exits 0 after a
** thread failed, as CPython does): a thread's error goes to
** `thread.excepthook` (by default printed on stderr) when the thread ends,
** unless a join was waiting for it then (that join returns it); an error
** neither reported nor joined is printed when its Thread object is
** collected, at the latest here.
*/
bool host_close(lua_State *L);

/*
** Preloads every host library (`host.thread`, `host.error`, ...) into
** package.preload of L, a state made by host_newstate whose standard
** libraries are open already. It also replaces the standard functions
** that must play fair with threads: require, coroutine.resume and wrap,
** os.exit, and the blocking io.read, io.lines, file:read, file:lines,
** io.popen and os.execute (which release the GIL while they block).
** Any other state (plain luaL_newstate or lua_newstate) is refused with
** the error "host_openlibs: the lua_State was not made by host_newstate",
** raised before it changes anything (call it under lua_pcall to catch
** it): the host libraries need the universe's GIL. The codec functions
** below need no universe and work on any state.
*/
void host_openlibs(lua_State *L);

/*
** Makes the Lua code running in L's universe fail with "interrupted!" at
** its next instruction, the way lua.c handles Ctrl-C, also under a hook the
** script set with debug.sethook (put aside for that one call). Async-
** signal-safe.
*/
void host_interrupt(lua_State *L);

/* Preemption policy of L's universe: every `seconds` of waiting (default). */
void host_set_switch_interval(lua_State *L, double seconds);

/* Preemption policy of L's universe: every ~n VM instructions, jittered. */
void host_set_switch_instructions(lua_State *L, int n);

/* ---- tracebacks of every thread (Python's faulthandler) ---- */

/*
** Writes to `out` the traceback of every thread of L's universe and what
** each one waits for (`waiting for host.Lock 0x... (locked by thread 3
** "worker") at worker.lua:12`), as `thread.dump_tracebacks` does. GIL held.
*/
void host_dump_tracebacks(lua_State *L, FILE *out);

/*
** Starts the dump watcher of L's universe (once; GIL held): a C thread that
** takes the GIL to print the dump on stderr when host_dump_request asks, or
** when the delay of host_dump_later passes, even while every Lua thread
** blocks or one spins. host_close stops it. Returns 0 or an errno value.
*/
int host_dump_watch(lua_State *L);

/*
** Asks the watcher (host_dump_watch) for a dump on stderr; the program goes
** on. Async-signal-safe: a SIGQUIT handler calls it.
*/
void host_dump_request(lua_State *L);

/*
** Dumps once on stderr after `seconds` (starting the watcher), replacing a
** dump asked before; a negative `seconds` cancels it. GIL held. Returns 0
** or an errno value.
*/
int host_dump_later(lua_State *L, double seconds);

/* ---- the GIL, around a blocking or CPU-heavy part of a C function ---- */

/*
** host_gil_release(L) lets the other threads of L's universe run Lua code
** while the calling C function blocks (read, poll, sleep, waitpid) or
** computes on C data; host_gil_acquire(L) takes the GIL back (waiting for
** its turn). They are CPython's Py_BEGIN_ALLOW_THREADS and
** Py_END_ALLOW_THREADS, as two plain calls:
**
**   size_t len;
**   const char *s = luaL_checklstring(L, 1, &len); // anchored: argument 1
**   host_gil_release(L);
**   uint32_t h = crc32(s, len);                    // no Lua API here
**   host_gil_acquire(L);
**   lua_pushinteger(L, h);
**
** The rules, between the two calls:
** - no Lua API or lauxlib call at all on any lua_State of the universe
**   (no lua_push*, lua_to*, luaL_error; no raising errors either): other
**   threads are changing the heap and may run the collector;
** - the Lua objects the C code still uses are anchored on the function's
**   own stack (its arguments, or values it pushed): a string's bytes and a
**   userdata's block stay put while anchored. Nothing may point into the
**   stack's slots themselves: the collector may shrink the stack;
** - never from inside a lua_Alloc, a lua_Reader or lua_Writer, or while
**   holding a lock that a thread holding the GIL might wait for (take such
**   locks after the release, drop them before the acquire);
** - every release is followed by exactly one acquire, on the same OS
**   thread, before the function returns or calls the Lua API again; no
**   nesting.
** C functions are never preempted otherwise: code between two Lua API
** calls runs alone unless it releases the GIL.
**
** Decisions: both are no-ops when L's universe is not the one the calling
** thread runs in (a state from plain luaL_newstate, say), while host_close
** is closing the state, and inside a finalizer (__gc): a finalizer that
** let other threads run would pause the collector for all of them. So a
** binding's __gc must not block, with the GIL "released", on something
** only another Lua thread of the universe can end.
** Releasing twice, acquiring without a release, or releasing from a
** thread that does not hold the GIL prints "host: fatal: ..." and aborts:
** going on would let two threads into the Lua heap at once.
** Ctrl-C during the released part is raised after host_gil_acquire, at
** the next Lua instruction of the main thread.
*/
void host_gil_release(lua_State *L);
void host_gil_acquire(lua_State *L);

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
** leaves the error message on the stack, and sets *buf to NULL (a
** negative `n` is LUA_ERRRUN; more values than the stack can hold again
** LUA_ERRMEM). Never raises; the values are left where they are.
*/
int host_codec_encode(lua_State *L, int first, int n, char **buf, size_t *len);

/*
** Decodes a payload made by host_codec_encode (or serialize.dumps) and
** pushes its values, storing how many in *n. Payloads holding functions
** (bytecode) or the globals table are refused unless `flags` has
** HOST_CODEC_FUNCTIONS: loading bytecode is only safe from a trusted
** source. On failure returns the lua_pcall status with the error message
** pushed, and *n is 0: bad input is LUA_ERRRUN ("corrupt serialized data
** at byte N: ..." and the like), memory that runs out while decoding is
** LUA_ERRMEM with Lua's "not enough memory", as is a stack of L that
** cannot grow for the call (like any push, that message takes the
** caller's free slot). Never raises; any input is safe without the flag.
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

#ifdef __cplusplus
}
#endif

#endif
