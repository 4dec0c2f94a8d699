/*
** stdwrap.c: the standard library functions that host replaces so they play
** fair with threads (floor 2):
** - require: a module that one thread is loading is not loaded again by
**   another; the second waits (without the GIL) and gets the first's result,
**   or a DeadlockError when its wait would close a cycle (circular requires
**   across threads);
** - coroutine.resume and coroutine.wrap: resume through host_resume, so a
**   thread running inside a coroutine can still be preempted;
** - os.exit: from a thread other than the main one, or while other threads
**   run, it exits without closing the state (closing it would free memory
**   that the other threads are using);
** - print: each call writes its whole line at once, so lines printed at the
**   same time by threads of several universes never mix.
** The blocking io and os functions are replaced in iowrap.c. Every state
** these run in is a universe (host_openlibs refuses any other), and every
** thread that runs them has its host_tstate.
*/
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "runtime.h"
#include "stdwrap.h"
#include "trace.h"

#define LOADING "host.loading"   /* registry: module name -> loader's thread key */
#define WAITING "host.require_waiting"  /* registry: thread key -> name it waits for */

/* ---- require ---- */

/* Pushes package.loaded[name] (at stack index `name`). */
static int push_loaded(lua_State *L, int name) {
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushvalue(L, name);
  lua_rawget(L, -2);
  lua_remove(L, -2);
  return lua_toboolean(L, -1);
}

/*
** True when the caller (thread key at `me`) waiting for the module whose
** loader is the thread key on top would close a cycle of module locks: the
** loader waits for a module whose loader waits ... for one the caller
** loads. Each wait is checked here before it starts, with the GIL held, so
** the graph of waits never has a cycle and the walk ends.
*/
static bool would_deadlock(lua_State *L, int loading, int waiting, int me) {
  lua_pushvalue(L, -1);
  for (;;) {
    if (lua_rawequal(L, -1, me)) break;
    if (lua_rawget(L, waiting) == LUA_TNIL) break;  /* the loader runs */
    lua_rawget(L, loading);  /* the loader of what it waits for */
    if (lua_isnil(L, -1)) break;
  }
  bool cycle = lua_rawequal(L, -1, me);
  lua_pop(L, 1);
  return cycle;
}

/* Records (name at `name`) or forgets (name 0) what thread `me` waits for. */
static void set_waiting(lua_State *L, int waiting, int me, int name) {
  lua_pushvalue(L, me);
  if (name != 0) lua_pushvalue(L, name);
  else lua_pushnil(L);
  lua_rawset(L, waiting);
}

/*
** require(name), serialised per module: a module lock per name, held by
** the thread that runs its loader. A thread whose wait would close a cycle
** of these locks (circular requires across threads) raises a DeadlockError
** instead, as CPython's import raises _DeadlockError. Upvalue 1 is the
** original require, upvalue 2 a wait queue userdata (holding a host_waitq
** pointer).
*/
static int host_require(lua_State *L) {
  luaL_checkstring(L, 1);
  lua_settop(L, 1);
  if (push_loaded(L, 1)) return 1;  /* the fast path */
  lua_pop(L, 1);
  host_waitq *q = *(host_waitq **)lua_touserdata(L, lua_upvalueindex(2));
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LOADING);   /* 2 */
  host_push_thread_key(L);                            /* 3 */
  luaL_getsubtable(L, LUA_REGISTRYINDEX, WAITING);   /* 4 */
  host_deadline never = host_deadline_in(-1);
  for (;;) {
    lua_pushvalue(L, 1);
    int owner = lua_rawget(L, 2);
    bool mine = lua_rawequal(L, -1, 3);
    if (owner == LUA_TNIL || mine) {
      lua_pop(L, 1);
      break;
    }
    bool cycle = would_deadlock(L, 2, 4, 3);
    lua_pop(L, 1);
    if (cycle) {
      set_waiting(L, 4, 3, 0);
      return host_error_raise(L, "DeadlockError",
                              "deadlock detected by the module lock of '%s' "
                              "(circular require across threads)", lua_tostring(L, 1));
    }
    set_waiting(L, 4, 3, 1);
    host_wait_on(L, "a module lock (require)", NULL, NULL, NULL);
    host_wait_result r = host_waitq_wait(L, q, &never);
    set_waiting(L, 4, 3, 0);
    if (r == HOST_WAIT_INTERRUPTED) return host_raise_interrupt(L);
  }
  if (push_loaded(L, 1)) return 1;  /* another thread loaded it meanwhile */
  lua_pop(L, 1);
  lua_pushvalue(L, 1);
  lua_rawget(L, 2);
  bool outermost = lua_isnil(L, -1);
  lua_pop(L, 1);
  if (outermost) {
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 3);
    lua_rawset(L, 2);
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, 1);
  int status = lua_pcall(L, 1, 2, 0);
  if (outermost) {
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    lua_rawset(L, 2);
    host_waitq_notify(q);
  }
  if (status != LUA_OK) return lua_error(L);
  return 2;
}

static int waitq_box_gc(lua_State *L) {
  host_waitq **box = lua_touserdata(L, 1);
  host_waitq_unref(*box);
  *box = NULL;
  return 0;
}

/* Pushes a userdata that owns a new wait queue. */
static void push_waitq_box(lua_State *L) {
  host_waitq **box = lua_newuserdatauv(L, sizeof *box, 0);
  *box = host_waitq_new();
  if (*box == NULL) luaL_error(L, "not enough memory");
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, waitq_box_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
}

/* ---- coroutines ---- */

/*
** Resumes co with narg values from the top of L. Returns the number of
** values co yielded or returned, now on L; or -1 with the error on L.
*/
static int resume_values(lua_State *L, lua_State *co, int narg) {
  if (!lua_checkstack(co, narg)) {
    lua_pushliteral(L, "too many arguments to resume");
    return -1;
  }
  lua_xmove(L, co, narg);
  int nres;
  int status = host_resume(L, co, narg, &nres);
  if (status != LUA_OK && status != LUA_YIELD) {
    lua_xmove(co, L, 1);
    return -1;
  }
  if (!lua_checkstack(L, nres + 1)) {
    lua_pop(co, nres);
    lua_pushliteral(L, "too many results to resume");
    return -1;
  }
  lua_xmove(co, L, nres);
  return nres;
}

/* coroutine.resume(co, ...): true, values... | false, error */
static int co_resume(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  luaL_argexpected(L, co != NULL, 1, "coroutine");
  int n = resume_values(L, co, lua_gettop(L) - 1);
  if (n < 0) {
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_insert(L, -(n + 1));
  return n + 1;
}

/* The function coroutine.wrap returns; its coroutine is upvalue 1. */
static int co_wrapped(lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  int n = resume_values(L, co, lua_gettop(L));
  if (n >= 0) return n;
  int status = lua_status(co);
  if (status != LUA_OK && status != LUA_YIELD) {  /* it died: close it */
    status = lua_resetthread(co);
    lua_xmove(co, L, 1);
  }
  if (status != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
    luaL_where(L, 1);  /* add where the wrapped function was called */
    lua_insert(L, -2);
    lua_concat(L, 2);
  }
  return lua_error(L);
}

/* coroutine.wrap(f) */
static int co_wrap(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_State *co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  lua_pushcclosure(L, co_wrapped, 1);
  return 1;
}

/* ---- os.exit ---- */

/* The status os.exit was given: true, false or an integer (default true). */
static int exit_code(lua_State *L) {
  if (lua_isboolean(L, 1)) return lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
  return (int)luaL_optinteger(L, 1, EXIT_SUCCESS);
}

/*
** os.exit in a worker process of the process pool: the child shares its
** parent's at-exit duties (handlers, sanitizer checks of threads it does not
** have), so it leaves through host_exit_child.
*/
static int child_exit(lua_State *L) {
  host_exit_child(exit_code(L));
  return 0;
}

/*
** os.exit([code [, close]]). Closing the state (host_close) is only safe
** when no other thread runs Lua code in it; otherwise it exits without
** closing.
*/
static int host_exit(lua_State *L) {
  if (host_in_fork_child(L)) return child_exit(L);
  bool close = lua_toboolean(L, 2);
  int code = exit_code(L);
  host_reap_threads(L);
  host_trace_at_exit(L);
  if (close && host_is_main_thread() && host_thread_count(L) == 1)
    host_close(L);  /* what lua_close does, plus exit handlers and the universe */
  host_flush_std();
  exit(code);
}

/* ---- print ---- */

/*
** print(...), as Lua's: each value through luaL_tolstring (so __tostring
** and __name), tabs between them, a newline, then stdout is flushed. But
** the line is built first and written with one fwrite under stdout's lock:
** Lua's print writes each piece on its own, and the pieces of two
** universes' lines (each universe has its own GIL) came out mixed. A
** raising __tostring now leaves nothing written, not half a line.
*/
static int host_print(lua_State *L) {
  int n = lua_gettop(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (int i = 1; i <= n; i++) {
    if (i > 1) luaL_addchar(&b, '\t');
    luaL_tolstring(L, i, NULL);
    luaL_addvalue(&b);
  }
  luaL_addchar(&b, '\n');
  luaL_pushresult(&b);
  size_t len;
  const char *line = lua_tolstring(L, -1, &len);
  flockfile(stdout);
  fwrite(line, 1, len, stdout);
  fflush(stdout);
  funlockfile(stdout);
  return 0;
}

void host_wrap_stdlib(lua_State *L) {
  lua_pushcfunction(L, host_print);
  lua_setglobal(L, "print");
  lua_getglobal(L, "require");
  push_waitq_box(L);
  lua_pushcclosure(L, host_require, 2);
  lua_setglobal(L, "require");
  if (lua_getglobal(L, "os") == LUA_TTABLE) {
    lua_pushcfunction(L, host_exit);
    lua_setfield(L, -2, "exit");
  }
  lua_pop(L, 1);
  if (lua_getglobal(L, "coroutine") == LUA_TTABLE) {
    lua_pushcfunction(L, co_resume);
    lua_setfield(L, -2, "resume");
    lua_pushcfunction(L, co_wrap);
    lua_setfield(L, -2, "wrap");
  }
  lua_pop(L, 1);
  host_wrap_io(L);
}
