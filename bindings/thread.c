/*
** thread.c: `require "host.thread"`, the twin of Python's threading.
** Thread objects (OS threads that share the universe's heap) and Timers
** (Threads that call a function after a delay unless cancelled), the
** module's functions (current, enumerate, main_thread, count, sleep,
** local, the switch interval, excepthook) and the registration of the
** synchronisation types of sync.c.
**
** A Thread's record lives in its proxy userdata. The proxy is the value of
** an ephemeron entry keyed by the thread's Lua thread object, which the
** runtime keeps registered while the OS thread runs: so a running thread's
** proxy can never be collected, and thread.current() keeps one identity.
** Every field is read and written with the GIL held. After its __gc (at
** close, or a finalizer that resurrects it) a proxy's methods raise
** "attempt to use a finalized host.Thread"; its fields stay readable.
** The main thread's proxy counts as stopped once the main chunk has
** ended (an exit handler), so another thread can join it.
**
** In a child made by host_fork only the thread that forked goes on: as in
** CPython's threading._after_fork, every other thread of the parent counts
** as stopped there (a proxy records the pid of the process its thread ran
** in). One that was still running at the fork has no outcome in the child:
** joining it raises.
**
** A thread whose target raised reports its error when it ends, as
** CPython's threading.excepthook does: the module's `excepthook` (the
** registry keeps the module table) gets {thread, error, traceback}. It is
** not reported when a join was waiting for the thread then (that join
** returns the error); an error that neither a join returned nor the end
** reported is reported by __gc, so none is lost or said twice.
*/
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "modules.h"
#include "runtime.h"
#include "sync.h"
#include "thread.h"
#include "trace.h"

#define THREAD_TYPE "host.Thread"
#define LOCAL_TYPE "host.local"
#define PROXIES "host.thread_proxies"   /* registry: key thread -> proxy */
#define COUNTER "host.thread_counter"   /* registry: last "Thread-N" */
#define STARTS "host.thread_starts"     /* registry: threads started so far */
#define MODULE "host.thread_module"     /* registry: the module table */

typedef enum { T_NEW, T_RUNNING, T_DONE } thread_state;

typedef struct thread_rec {
  host_object obj;    /* first: the finalized state */
  thread_state state;
  bool failed;        /* the target raised; its error is on co's stack */
  bool collected;     /* join returned the outcome at least once */
  bool reported;      /* its error went to the excepthook (or __gc said it) */
  bool daemon;
  bool is_main;       /* the proxy of a thread host did not spawn */
  bool timer;         /* made by thread.Timer */
  bool cancelled;     /* a Timer's cancel() came before it fired */
  bool fired;         /* a Timer's function was called */
  unsigned long ident;
  pid_t pid;          /* the process the thread ran in when started */
  lua_Integer seq;    /* start order (the main thread's is 0), for enumerate */
  double join_end;    /* when the last join to wait for it gives up (host_now) */
  double interval;    /* a Timer's delay in seconds */
  lua_State *co;      /* the thread's Lua thread; uservalue 2 anchors it */
  host_waitq *done;   /* joiners wait here; made by the first join that waits */
  host_waitq *timer_q;  /* a Timer waits here for its delay or a cancel */
} thread_rec;

/* Uservalues of a Thread proxy. */
enum { UV_INFO = 1, UV_CO = 2 };

static thread_rec *check_thread(lua_State *L, int idx) {
  return host_object_check(L, idx, THREAD_TYPE);
}

/* Pushes the registry's weak-keyed table of proxies. */
static void push_proxies(lua_State *L) {
  if (luaL_getsubtable(L, LUA_REGISTRYINDEX, PROXIES) == 0) {
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_pushvalue(L, -1);
    lua_setmetatable(L, -2);
  }
}

/* Makes a new proxy (state T_NEW) with an info table {name=..}; pushes it. */
static thread_rec *new_proxy(lua_State *L, const char *name) {
  thread_rec *t = host_object_new(L, sizeof *t, THREAD_TYPE, 2);
  lua_createtable(L, 0, 2);
  if (name != NULL) {
    lua_pushstring(L, name);
  } else {
    lua_getfield(L, LUA_REGISTRYINDEX, COUNTER);
    lua_Integer n = lua_tointeger(L, -1) + 1;
    lua_pop(L, 1);
    lua_pushinteger(L, n);
    lua_setfield(L, LUA_REGISTRYINDEX, COUNTER);
    lua_pushfstring(L, "Thread-%I", n);
  }
  lua_setfield(L, -2, "name");
  lua_setiuservalue(L, -2, UV_INFO);
  return t;
}

/*
** Registered with host_atexit for the main thread's proxy (upvalue 1): the
** main chunk has ended, so the main thread counts as stopped and its
** joiners return, as CPython's threading._shutdown stops _main_thread
** before it waits for the other threads.
*/
static int main_stopped(lua_State *L) {
  thread_rec *t = lua_touserdata(L, lua_upvalueindex(1));
  if (!t->obj.finalized && t->state == T_RUNNING) {
    t->state = T_DONE;
    if (t->done != NULL) host_waitq_notify(t->done);
  }
  return 0;
}

/* The next start number: threads are listed by enumerate in start order. */
static lua_Integer next_seq(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, STARTS);
  lua_Integer n = lua_tointeger(L, -1) + 1;
  lua_pop(L, 1);
  lua_pushinteger(L, n);
  lua_setfield(L, LUA_REGISTRYINDEX, STARTS);
  return n;
}

/*
** Pushes the proxy of L's universe's main thread, made the first time it
** is asked for (from any thread). It is stopped from the start when made
** once host_close has begun, or in a forked child by a thread that is not
** the main one (the main thread does not exist there); else main_stopped
** stops it at exit.
*/
static void push_main(lua_State *L) {
  push_proxies(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  if (lua_rawget(L, -2) == LUA_TNIL) {
    lua_pop(L, 1);
    thread_rec *t = new_proxy(L, "MainThread");
    bool gone = host_exiting(L) || (host_in_fork_child(L) && !host_is_main_thread());
    t->state = gone ? T_DONE : T_RUNNING;
    t->is_main = true;
    t->ident = host_main_thread_ident(L);
    t->pid = getpid();
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    lua_pushvalue(L, -2);
    lua_rawset(L, -4);
    if (!gone) {
      lua_pushvalue(L, -1);
      lua_pushcclosure(L, main_stopped, 1);
      host_atexit(L);
    }
  }
  lua_remove(L, -2);
}

/* Pushes the proxy of the calling OS thread, making one for a main thread. */
static void push_current(lua_State *L) {
  if (host_is_main_thread()) {
    push_main(L);
    return;
  }
  push_proxies(L);
  host_push_thread_key(L);
  if (lua_rawget(L, -2) == LUA_TNIL) {  /* a thread host did not spawn */
    lua_pop(L, 1);
    thread_rec *t = new_proxy(L, NULL);
    t->state = T_RUNNING;
    t->is_main = true;
    t->ident = host_thread_ident();
    t->pid = getpid();
    t->seq = next_seq(L);
    host_push_thread_key(L);
    lua_pushvalue(L, -2);
    lua_rawset(L, -4);
  }
  lua_remove(L, -2);
}

/* ---- reporting a thread's error: the excepthook ---- */

/*
** Pushes the name of the Thread at idx (its info table's), or "?" for
** anything else, and returns it.
*/
static const char *push_thread_name(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  if (luaL_testudata(L, idx, THREAD_TYPE) == NULL) {
    lua_pushliteral(L, "?");
  } else {
    lua_getiuservalue(L, idx, UV_INFO);
    lua_getfield(L, -1, "name");
    lua_remove(L, -2);
    if (!lua_isstring(L, -1)) {
      lua_pop(L, 1);
      lua_pushliteral(L, "?");
    }
  }
  return lua_tostring(L, -1);
}

/*
** thread.__excepthook__(info), the default thread.excepthook: prints
** "Exception in thread NAME (ident N):" and the error (its __tostring, run
** protected) with its traceback on stderr. A SystemExit error is silent,
** as in CPython.
*/
static int l_default_excepthook(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_getfield(L, 1, "thread");  /* 2 */
  lua_getfield(L, 1, "error");   /* 3 */
  lua_getfield(L, 1, "traceback");  /* 4 */
  if (host_error_is(L, 3, "SystemExit")) return 0;
  thread_rec *t = luaL_testudata(L, 2, THREAD_TYPE);
  const char *name = push_thread_name(L, 2);
  /* strings and error objects carry their traceback; say it for others */
  bool with_tb = lua_isstring(L, 4) && lua_type(L, 3) != LUA_TSTRING &&
                 !host_error_is(L, 3, NULL);
  lua_pushvalue(L, 3);
  const char *msg = host_error_tostring(L);
  if (t != NULL && t->state != T_NEW)
    fprintf(stderr, "Exception in thread %s (ident %lu):\n%s\n", name, t->ident, msg);
  else
    fprintf(stderr, "Exception in thread %s:\n%s\n", name, msg);
  if (with_tb) fprintf(stderr, "%s\n", lua_tostring(L, 4));
  fflush(stderr);
  return 0;
}

/*
** The message handler of a thread's target: host_msghandler's, after it
** keeps the traceback as a string in the info table (upvalue 1) for the
** excepthook, whatever the error value is.
*/
static int thread_msghandler(lua_State *L) {
  luaL_traceback(L, L, NULL, 1);
  lua_setfield(L, lua_upvalueindex(1), "traceback");
  lua_settop(L, 1);
  return host_msghandler(L);
}

/* Under lua_pcall (a proxy, its error): the info table of an excepthook. */
static int push_hook_info(lua_State *L) {
  lua_createtable(L, 0, 3);
  lua_pushvalue(L, 1);
  lua_setfield(L, -2, "thread");
  lua_pushvalue(L, 2);
  lua_setfield(L, -2, "error");
  lua_getiuservalue(L, 1, UV_INFO);
  lua_getfield(L, -1, "traceback");
  lua_setfield(L, -3, "traceback");
  lua_pop(L, 1);
  return 1;
}

/*
** Hands the error at `err` on L (a thread's Lua thread, whose proxy is at
** `proxy`) to thread.excepthook, run protected. A hook that raises or
** cannot be called is reported, and the error then goes to the default
** hook, so it is never lost; when memory runs out even for that, a line
** says so. The hook runs in the caller's frame, so that its tracebacks
** end with it. Leaves L's stack as it found it.
*/
static void report_error(lua_State *L, int proxy, int err) {
  int top = lua_gettop(L);
  proxy = lua_absindex(L, proxy);
  lua_pushcfunction(L, push_hook_info);
  lua_pushvalue(L, proxy);
  lua_pushvalue(L, err);
  if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
    const char *why = host_error_tostring(L);
    fprintf(stderr, "host: cannot report an error of thread %s: %s\n",
            push_thread_name(L, proxy), why);
    fflush(stderr);
    lua_settop(L, top);
    return;
  }
  int info = lua_gettop(L);
  lua_pushnil(L);
  if (lua_getfield(L, LUA_REGISTRYINDEX, MODULE) == LUA_TTABLE) {
    lua_pushliteral(L, "excepthook");
    lua_rawget(L, -2);
    lua_replace(L, -3);
  }
  lua_pop(L, 1);
  bool custom = lua_toboolean(L, -1) && lua_tocfunction(L, -1) != l_default_excepthook;
  if (custom) {
    lua_pushvalue(L, info);
    if (host_pcall(L, 1, 0) == LUA_OK) {
      lua_settop(L, top);
      return;
    }
    fprintf(stderr, "Exception in thread.excepthook:\n%s\n", host_error_tostring(L));
    fflush(stderr);
  }
  lua_pushcfunction(L, l_default_excepthook);
  lua_pushvalue(L, info);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {  /* out of memory */
    const char *why = host_error_tostring(L);
    fprintf(stderr, "host: cannot report an error of thread %s: %s\n",
            push_thread_name(L, proxy), why);
    fflush(stderr);
  }
  lua_settop(L, top);
}

/*
** True while a join waits for t (so it will return t's outcome): the
** latest deadline among the joins that waited has not passed. A join
** that ended early (interrupted) may leave this true: __gc then reports.
*/
static bool join_waiting(const thread_rec *t) {
  return t->join_end > host_now();
}

/* Does nothing: a call to it makes the CallInfo and stack a call needs. */
static int call_nothing(lua_State *L) {
  (void)L;
  return 0;
}

/*
** Makes sure that a call of the function below the top values of co can
** start: memory for its frame, which the call would take when it starts,
** is taken now by a call to nothing (the next call reuses it), tried again
** after a full collection if memory ran out. A C function's frame is then
** there; a Lua function's larger frame may still be grown. False, with the
** error on top, when memory does not come.
*/
static bool ready_to_call(lua_State *co) {
  for (int tries = 0;; tries++) {
    lua_pushcfunction(co, call_nothing);
    int status = lua_pcall(co, 0, 0, 0);
    if (status == LUA_OK) return true;
    if (status != LUA_ERRMEM || tries == 1) return false;
    lua_pop(co, 1);
    lua_gc(co, LUA_GCCOLLECT);
  }
}

/*
** Under lua_pcall, in a spawned thread: pushes the proxies table and the
** thread's proxy (the ephemeron keeps it while co runs) and notes the
** thread's name in the trace.
*/
static int thread_setup(lua_State *co) {
  push_proxies(co);
  lua_pushthread(co);
  lua_rawget(co, -2);
  lua_getiuservalue(co, -1, UV_INFO);
  HOST_TRACE_L(co, host_trace_name_field(co, -1));
  lua_pop(co, 1);
  return 2;
}

/* Under lua_pcall: pushes the outcome of a thread whose results do not fit. */
static int push_too_many(lua_State *co) {
  lua_pushliteral(co, "too many results to keep");
  return 1;
}

/*
** The body of a spawned thread (co holds the message handler, the target
** and its arguments): calls the target, allocating nothing before (a pool
** counts on its worker running), and keeps the outcome on co. The target
** is called from co's base frame, so that its tracebacks end with it.
** co keeps LUA_MINSTACK free slots above the outcome for whoever pushes
** on it next (the runtime's bookkeeping, a join); an outcome too large for
** that is replaced by an error. An error is reported before the thread
** counts as stopped (as CPython runs its excepthook), unless a join waits
** for it. The setup runs protected: an error there (memory that runs out)
** ends the thread with that error as its outcome, reported when its Thread
** is collected, instead of aborting the process.
*/
static void thread_body(lua_State *co, void *arg) {
  thread_rec *t = arg;
  bool set = ready_to_call(co);  /* the target never runs otherwise: a pool's thread would be waited for in vain */
  if (set) {
    lua_pushcfunction(co, thread_setup);  /* allocates nothing: ready_to_call made the frame */
    set = lua_pcall(co, 0, 2, 0) == LUA_OK;
  }
  if (!set) {
    lua_replace(co, 1);
    lua_settop(co, 1);  /* the error is the outcome */
    t->failed = true;
    t->reported = false;
  } else {
    lua_rotate(co, 2, 2);  /* handler, proxies, proxy, target, args... */
    int status = lua_pcall(co, lua_gettop(co) - 4, LUA_MULTRET, 1);
    t->failed = status != LUA_OK;
    if (!lua_checkstack(co, LUA_MINSTACK)) {
      lua_settop(co, 3);
      lua_pushcfunction(co, push_too_many);
      lua_pcall(co, 0, 1, 0);  /* that error, or the memory error */
      t->failed = true;
    }
    if (t->failed && !join_waiting(t)) {
      t->reported = true;
      report_error(co, 3, 4);
    }
    lua_rotate(co, 1, -3);
    lua_pop(co, 3);  /* only the outcome stays */
  }
  t->state = T_DONE;
  if (t->done != NULL) host_waitq_notify(t->done);
}

/*
** Starts the thread of proxy at `idx` with the function and arguments on
** top of the stack (nargs of them, the function below). Pops them. The
** frame of the target's call is made here (ready_to_call): no memory is
** wanted before the target runs, so a pool's worker that starts runs.
** Returns 0, or the errno of a failed thread creation: the proxy is then
** left as it was (not started).
*/
static int start_proxy(lua_State *L, int idx, int nargs) {
  thread_rec *t = check_thread(L, idx);
  if (t->state != T_NEW) luaL_error(L, "threads can only be started once");
  if (host_closing(L))  /* no spawned thread runs again: a join would hang */
    luaL_error(L, "cannot start a thread while host closes the state");
  lua_getiuservalue(L, idx, UV_INFO);  /* the message handler, made here: */
  lua_pushcclosure(L, thread_msghandler, 1);  /* running, co allocates nothing before its target */
  lua_insert(L, -(nargs + 2));
  lua_State *co = lua_newthread(L);
  if (!lua_checkstack(co, nargs + 2 + LUA_MINSTACK))
    luaL_error(L, "stack overflow (too many arguments)");
  lua_insert(L, -(nargs + 3));
  lua_xmove(L, co, nargs + 2);
  if (!ready_to_call(co)) {  /* here, where a failure is the caller's to see */
    lua_pop(L, 1);
    return ENOMEM;
  }
  /* co stays anchored in the proxy, and the proxy in the ephemeron */
  lua_setiuservalue(L, idx, UV_CO);
  t->co = co;
  push_proxies(L);
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  lua_pushvalue(L, idx);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  t->state = T_RUNNING;
  t->pid = getpid();
  t->seq = next_seq(L);
  int rc = host_spawn(L, co, t->daemon, thread_body, t, &t->ident);
  if (rc != 0) {  /* undo: forget co */
    t->state = T_NEW;
    t->co = NULL;
    push_proxies(L);
    lua_pushthread(co);
    lua_xmove(co, L, 1);
    lua_pushnil(L);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    lua_pushnil(L);
    lua_setiuservalue(L, idx, UV_CO);
  }
  return rc;
}

/* Pushes the failure of a thread creation: nil, message, errno. */
static int push_start_failure(lua_State *L, int rc) {
  luaL_pushfail(L);
  lua_pushfstring(L, "cannot start thread: %s", strerror(rc));
  lua_pushinteger(L, rc);
  return 3;
}

int host_thread_start(lua_State *L, const char *name, bool daemon, int nargs) {
  thread_rec *t = new_proxy(L, name);
  t->daemon = daemon;
  lua_insert(L, -(nargs + 2));
  int rc = start_proxy(L, lua_absindex(L, -(nargs + 2)), nargs);
  if (rc != 0) lua_pop(L, 1);  /* the Thread that did not start */
  return rc;
}

int host_thread_start_failed(lua_State *L, int rc) {
  return push_start_failure(L, rc);
}

/*
** The most arguments a Thread's args may hold: half of Lua's stack limit
** (LUAI_MAXSTACK), so that the caller's stack and the new thread's both
** have room for them and start does not fail later on a count it took.
*/
#define MAX_ARGS (LUAI_MAXSTACK / 2)

/*
** The number of arguments in the args table at idx: args.n when present,
** else #args; -1 when that is not an integer in [0, MAX_ARGS].
*/
static int args_count(lua_State *L, int idx) {
  lua_Integer n;
  int isint = 1;
  idx = lua_absindex(L, idx);
  if (lua_getfield(L, idx, "n") == LUA_TNIL) n = luaL_len(L, idx);
  else n = lua_tointegerx(L, -1, &isint);
  lua_pop(L, 1);
  return isint && n >= 0 && n <= MAX_ARGS ? (int)n : -1;
}

/* The message for a bad args count (the limit is MAX_ARGS). */
#define BAD_ARGS_N "'args.n' (or #args) must be an integer in [0, %d]"

/*
** thread.Thread{target = f, args = {...}, name = s, daemon = b}; without
** a target it runs nothing (or the `run` function set on it).
*/
static int thread_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  host_check_options(L, 1, (const char *const[]){"target", "name", "args", "daemon", NULL});
  lua_settop(L, 1);
  lua_getfield(L, 1, "target");
  if (!lua_isnil(L, -1) && !lua_isfunction(L, -1)) host_field_error(L, 1, "target", "a function");
  lua_getfield(L, 1, "name");
  const char *name = lua_tostring(L, -1);
  luaL_argcheck(L, name != NULL || lua_isnil(L, -1), 1, "'name' must be a string");
  lua_getfield(L, 1, "args");
  if (!lua_isnil(L, -1) && !lua_istable(L, -1)) host_field_error(L, 1, "args", "a table");
  if (!lua_isnil(L, -1) && args_count(L, -1) < 0)
    luaL_argerror(L, 1, lua_pushfstring(L, BAD_ARGS_N, MAX_ARGS));
  lua_getfield(L, 1, "daemon");
  bool daemon = lua_toboolean(L, -1);
  thread_rec *t = new_proxy(L, name);  /* 6 */
  t->daemon = daemon;
  /* info.target, info.args: kept until start */
  lua_getiuservalue(L, 6, UV_INFO);
  lua_pushvalue(L, 2);
  lua_setfield(L, -2, "target");
  lua_pushvalue(L, 4);
  lua_setfield(L, -2, "args");
  lua_pop(L, 1);
  return 1;
}

/* What a Thread without a target runs. */
static int run_nothing(lua_State *L) {
  (void)L;
  return 0;
}

/*
** Pushes the target and args of the Thread whose info table is at 2, or
** a function that does nothing; returns the number of arguments.
*/
static int push_target(lua_State *L) {
  if (lua_getfield(L, 2, "target") == LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushcfunction(L, run_nothing);
    return 0;
  }
  int nargs = 0;
  if (lua_getfield(L, 2, "args") == LUA_TTABLE) {
    nargs = args_count(L, -1);
    if (nargs < 0) return luaL_error(L, BAD_ARGS_N, MAX_ARGS);
    luaL_checkstack(L, nargs + 2, "too many arguments");
    for (int i = 1; i <= nargs; i++) lua_geti(L, -i, i);
    lua_remove(L, -nargs - 1);
  } else {
    lua_pop(L, 1);
  }
  return nargs;
}

/*
** Pushes what the Thread at 1 (info table at 2) runs: the `run` set on it,
** called with the Thread, else its target. Returns the argument count.
*/
static int push_run(lua_State *L) {
  if (lua_getfield(L, 2, "run") == LUA_TFUNCTION) {
    lua_pushvalue(L, 1);
    return 1;
  }
  lua_pop(L, 1);
  return push_target(L);
}

/* Drops the target and args of the Thread whose info table is at 2. */
static void forget_target(lua_State *L) {
  lua_pushnil(L);
  lua_setfield(L, 2, "target");
  lua_pushnil(L);
  lua_setfield(L, 2, "args");
}

/*
** t:start(): runs target(table.unpack(args, 1, args.n or #args)) (or the
** `run` set on t, as run(t)); returns t, or nil, message, errno when no
** thread could be made (t can be started again then).
*/
static int thread_start(lua_State *L) {
  thread_rec *t = host_object_check_self(L, THREAD_TYPE);
  lua_settop(L, 1);
  if (t->state != T_NEW) return luaL_error(L, "threads can only be started once");
  lua_getiuservalue(L, 1, UV_INFO);
  int nargs = push_run(L);
  int rc = start_proxy(L, 1, nargs);
  if (rc != 0) return push_start_failure(L, rc);
  forget_target(L);
  lua_settop(L, 1);
  return 1;
}

/*
** t:run(), Python's Thread.run: calls the target with its args in the
** calling thread and returns what it returns; the target and args are
** then dropped, as CPython does, so a later run or start runs nothing.
** A `run` set on t replaces this method.
*/
static int thread_run(lua_State *L) {
  host_object_check_self(L, THREAD_TYPE);
  lua_settop(L, 1);
  lua_getiuservalue(L, 1, UV_INFO);
  int nargs = push_target(L);
  forget_target(L);
  lua_call(L, nargs, LUA_MULTRET);
  return lua_gettop(L) - 2;
}

/*
** thread.start(f, ...): a new thread running f(...), started; or nil,
** message, errno when no thread could be made.
*/
static int thread_start_fn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  int nargs = lua_gettop(L) - 1;
  new_proxy(L, NULL);
  lua_insert(L, 1);
  int rc = start_proxy(L, 1, nargs);
  if (rc != 0) return push_start_failure(L, rc);
  lua_settop(L, 1);
  return 1;
}

/*
** Pushes the outcome of a finished thread: true and its results, or false
** and its error. The values stay on its stack for later joins; they are
** copied one at a time, so co needs one free slot (thread_body leaves it
** more) and L room for all of them.
*/
static int push_outcome(lua_State *L, thread_rec *t) {
  if (t->co == NULL) {  /* a main thread, stopped: no results */
    lua_pushboolean(L, 1);
    return 1;
  }
  int n = lua_gettop(t->co);
  luaL_checkstack(L, n + 1, "too many results to join");
  lua_pushboolean(L, !t->failed);
  for (int i = 1; i <= n; i++) {
    lua_pushvalue(t->co, i);
    lua_xmove(t->co, L, 1);
  }
  t->collected = true;
  return n + 1;
}

/*
** True when t is the calling thread's proxy. It looks the proxy up without
** making one: a proxy made while the state closes is never finalized.
*/
static bool is_current(lua_State *L, thread_rec *t) {
  push_proxies(L);
  host_push_thread_key(L);
  lua_rawget(L, -2);
  bool same = lua_touserdata(L, -1) == (void *)t;
  lua_pop(L, 2);
  return same;
}

/*
** True when t's thread ran in a parent of this process (made by host_fork)
** and did not fork it: its OS thread does not exist here.
*/
static bool is_inherited(lua_State *L, thread_rec *t) {
  return t->state != T_NEW && host_in_fork_child(L) && t->pid != getpid() &&
         !is_current(L, t);
}

/* Records that a join waits for t until `timeout` seconds from now (< 0: forever). */
static void note_joiner(thread_rec *t, double timeout) {
  double end = timeout < 0 ? HUGE_VAL : host_now() + timeout;
  if (end > t->join_end) t->join_end = end;
}

/* t:join([timeout]): true, results... | false, err | nil, "timeout" */
static int thread_join(lua_State *L) {
  thread_rec *t = host_object_check_self(L, THREAD_TYPE);
  double timeout = host_opt_timeout(L, 2);
  if (t->state == T_NEW) return luaL_error(L, "cannot join thread before it is started");
  if (is_current(L, t)) return luaL_error(L, "cannot join current thread");
  if (t->state == T_RUNNING && is_inherited(L, t))
    return luaL_error(L, "cannot join a thread of the parent process (inherited by fork)");
  if (t->state != T_DONE && t->done == NULL) {
    t->done = host_waitq_new();  /* freed by __gc */
    if (t->done == NULL) return luaL_error(L, "not enough memory");
  }
  note_joiner(t, timeout);
  host_deadline d = host_deadline_in(timeout);
  while (t->state != T_DONE) {
    host_wait_on(L, THREAD_TYPE, "join of", t, host_tstate_of_ident(L, t->ident));
    host_wait_result r = host_waitq_wait(L, t->done, &d);
    if (t->obj.finalized)  /* its __gc was called by hand meanwhile */
      return luaL_error(L, "attempt to use a finalized " THREAD_TYPE);
    if (r == HOST_WAIT_INTERRUPTED) return host_raise_interrupt(L);
    if (r == HOST_WAIT_TIMEOUT && t->state != T_DONE) {
      luaL_pushfail(L);
      lua_pushliteral(L, "timeout");
      return 2;
    }
  }
  return push_outcome(L, t);
}

static int thread_is_alive(lua_State *L) {
  thread_rec *t = host_object_check_self(L, THREAD_TYPE);
  lua_pushboolean(L, t->state == T_RUNNING && !is_inherited(L, t));
  return 1;
}

/*
** t.name = s (any time) and t.daemon = b (before start), as Python's
** Thread properties, and t.run = f (before start), Python's override of
** run: start then runs f(t). Other fields cannot be set.
*/
static int thread_newindex(lua_State *L) {
  thread_rec *t = host_object_check(L, 1, THREAD_TYPE);
  const char *key = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : NULL;
  if (key != NULL && strcmp(key, "name") == 0) {
    if (lua_type(L, 3) != LUA_TSTRING && lua_type(L, 3) != LUA_TNUMBER)
      return luaL_error(L, "'name' must be a string, got %s", luaL_typename(L, 3));
    lua_getiuservalue(L, 1, UV_INFO);
    lua_pushstring(L, lua_tostring(L, 3));
    lua_setfield(L, -2, "name");
  } else if (key != NULL && strcmp(key, "daemon") == 0) {
    if (t->state != T_NEW) return luaL_error(L, "cannot set daemon status of active thread");
    t->daemon = lua_toboolean(L, 3);
  } else if (key != NULL && strcmp(key, "run") == 0) {
    if (t->state != T_NEW) return luaL_error(L, "cannot set 'run' of a started thread");
    if (!lua_isnil(L, 3) && !lua_isfunction(L, 3))
      return luaL_error(L, "'run' must be a function, got %s", luaL_typename(L, 3));
    lua_getiuservalue(L, 1, UV_INFO);
    lua_pushvalue(L, 3);
    lua_setfield(L, -2, "run");
  } else if (key != NULL) {
    return luaL_error(L, "cannot set field '%s' of a " THREAD_TYPE, key);
  } else {
    return luaL_error(L, "cannot set a %s field of a " THREAD_TYPE, luaL_typename(L, 2));
  }
  return 0;
}

/*
** t.name, t.ident, t.daemon, and the methods (upvalue 1 is the metatable):
** `run` is the one set on t if any, `cancel` is a Timer's only. The fields
** stay readable after __gc: they are plain values.
*/
static int thread_index(lua_State *L) {
  thread_rec *t = luaL_checkudata(L, 1, THREAD_TYPE);
  const char *key = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : "";
  if (strcmp(key, "ident") == 0) {
    if (t->state == T_NEW) lua_pushnil(L);
    else lua_pushinteger(L, (lua_Integer)t->ident);
  } else if (strcmp(key, "daemon") == 0) {
    lua_pushboolean(L, t->daemon);
  } else if (strcmp(key, "name") == 0) {
    lua_getiuservalue(L, 1, UV_INFO);
    lua_getfield(L, -1, "name");
  } else if (strcmp(key, "run") == 0 && lua_getiuservalue(L, 1, UV_INFO) == LUA_TTABLE &&
             lua_getfield(L, -1, "run") != LUA_TNIL) {
    /* the run set on t */
  } else if (strcmp(key, "cancel") == 0 && !t->timer) {
    lua_pushnil(L);  /* only Timers have it */
  } else {
    lua_getfield(L, lua_upvalueindex(1), "methods");
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);
  }
  return 1;
}

/*
** __tostring, after CPython's Thread repr: `host.Thread "worker" (started,
** daemon, ident 1234)`; the states are initial, started and stopped, with
** "raised" for a thread whose target raised. A Timer says host.Timer and,
** once cancelled before it fired, "cancelled".
*/
static int thread_tostring(lua_State *L) {
  if (host_object_tostring_finalized(L, THREAD_TYPE)) return 1;
  thread_rec *t = host_object_check_self(L, THREAD_TYPE);
  static const char *const states[] = {"initial", "started", "stopped"};
  thread_state state = is_inherited(L, t) ? T_DONE : t->state;
  lua_settop(L, 1);
  const char *name = push_thread_name(L, 1);
  lua_pushfstring(L, "%s \"%s\" (%s", t->timer ? "host.Timer" : THREAD_TYPE, name,
                  states[state]);
  lua_remove(L, 2);
  if (t->daemon) lua_pushliteral(L, ", daemon");
  if (state == T_DONE && t->failed) lua_pushliteral(L, ", raised");
  if (t->timer && t->cancelled) lua_pushliteral(L, ", cancelled");
  if (state != T_NEW) lua_pushfstring(L, ", ident %I", (lua_Integer)t->ident);
  lua_pushliteral(L, ")");
  lua_concat(L, lua_gettop(L) - 1);
  return 1;
}

/* ---- thread.Timer ---- */

/*
** The target of a Timer (its proxy is upvalue 1): waits for the interval
** or a cancel, then calls the function with its arguments (the target's
** own) unless cancelled. A __gc called by hand meanwhile cancels it.
*/
static int timer_target(lua_State *L) {
  thread_rec *t = lua_touserdata(L, lua_upvalueindex(1));
  host_deadline d = host_deadline_in(t->interval);
  while (!t->cancelled && !t->obj.finalized && !host_deadline_passed(&d))
    host_waitq_wait(L, t->timer_q, &d);  /* a spawned thread: never interrupted */
  if (t->cancelled || t->obj.finalized) return 0;
  t->fired = true;
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

/*
** thread.Timer(interval, f, ...): a Thread (not started) that calls
** f(...) after `interval` seconds unless cancelled, as Python's
** threading.Timer. The interval must be a number >= 0.
*/
static int l_timer(lua_State *L) {
  lua_Number interval = luaL_checknumber(L, 1);
  luaL_argcheck(L, interval >= 0, 1, "interval must be a non-negative number");
  luaL_checktype(L, 2, LUA_TFUNCTION);
  int nargs = lua_gettop(L) - 1;  /* f and its arguments */
  lua_createtable(L, nargs, 1);
  for (int i = 1; i <= nargs; i++) {
    lua_pushvalue(L, i + 1);
    lua_rawseti(L, -2, i);
  }
  lua_pushinteger(L, nargs);
  lua_setfield(L, -2, "n");
  thread_rec *t = new_proxy(L, NULL);
  t->timer = true;
  t->interval = (double)interval;
  t->timer_q = host_waitq_new();  /* freed by __gc */
  if (t->timer_q == NULL) return luaL_error(L, "not enough memory");
  lua_getiuservalue(L, -1, UV_INFO);
  lua_pushvalue(L, -2);
  lua_pushcclosure(L, timer_target, 1);
  lua_setfield(L, -2, "target");
  lua_pushvalue(L, -3);
  lua_setfield(L, -2, "args");
  lua_pop(L, 1);
  return 1;
}

/* timer:cancel(): a Timer that has not fired yet never will. */
static int thread_cancel(lua_State *L) {
  thread_rec *t = host_object_check_self(L, THREAD_TYPE);
  if (!t->timer) return luaL_error(L, "only a host.Timer can be cancelled");
  if (!t->fired && !t->cancelled) {
    t->cancelled = true;
    host_waitq_notify(t->timer_q);
  }
  return 0;
}

/*
** __gc: an error that no join returned and the thread's end did not
** report (a join waited then, and left without it) is reported now,
** through thread.excepthook as at the thread's end (info.thread is then
** finalized), and the wait queues are released. A daemon
** thread still running at close keeps its outcome: it never runs again.
*/
static int thread_gc(lua_State *L) {
  thread_rec *t = host_object_finalize(L, THREAD_TYPE);
  if (t == NULL) return 0;
  if (t->done != NULL) {
    host_waitq_notify(t->done);  /* a joiner (a __gc called by hand) raises */
    host_waitq_unref(t->done);
    t->done = NULL;
  }
  if (t->timer_q != NULL) {
    host_waitq_notify(t->timer_q);  /* a waiting Timer (a __gc called by hand) ends */
    host_waitq_unref(t->timer_q);
    t->timer_q = NULL;
  }
  if (t->state == T_DONE && t->failed && !t->collected && !t->reported) {
    t->reported = true;
    lua_settop(L, 1);
    lua_pushvalue(t->co, -1);
    lua_xmove(t->co, L, 1);  /* 2: the error */
    report_error(L, 1, 2);
  }
  return 0;
}

/* ---- module functions ---- */

static int l_current(lua_State *L) {
  push_current(L);
  return 1;
}

/* One live Thread in enumerate's scratch array: its start order and its place. */
typedef struct live_entry {
  lua_Integer seq;
  int at;
} live_entry;

static int by_seq(const void *a, const void *b) {
  lua_Integer x = ((const live_entry *)a)->seq, y = ((const live_entry *)b)->seq;
  return (x > y) - (x < y);
}

/*
** Pushes a list of every live Thread of the universe (started, not
** stopped, not a thread of a parent process), the main one first, then in
** start order; returns how many.
*/
static int push_live(lua_State *L) {
  push_main(L);
  lua_pop(L, 1);  /* made if missing; it is in the proxies table now */
  push_proxies(L);
  int proxies = lua_gettop(L);
  lua_newtable(L);  /* the live ones, unordered */
  int found = lua_gettop(L);
  int n = 0;
  lua_pushnil(L);
  while (lua_next(L, proxies)) {
    thread_rec *t = luaL_testudata(L, -1, THREAD_TYPE);
    if (t != NULL && !t->obj.finalized && t->state == T_RUNNING && !is_inherited(L, t)) {
      if (n == INT_MAX) return luaL_error(L, "too many threads");
      lua_pushvalue(L, -1);
      lua_rawseti(L, found, ++n);
    }
    lua_pop(L, 1);
  }
  live_entry *e = lua_newuserdatauv(L, (size_t)(n > 0 ? n : 1) * sizeof *e, 0);
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, found, i + 1);
    e[i].seq = ((thread_rec *)lua_touserdata(L, -1))->seq;
    e[i].at = i + 1;
    lua_pop(L, 1);
  }
  qsort(e, (size_t)n, sizeof *e, by_seq);
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, found, e[i].at);
    lua_rawseti(L, -2, i + 1);
  }
  lua_replace(L, proxies);
  lua_settop(L, proxies);
  return n;
}

/* thread.enumerate(): the live Threads, main first, then in start order. */
static int l_enumerate(lua_State *L) {
  push_live(L);
  return 1;
}

/* thread.active_count(): how many Threads enumerate() lists. */
static int l_active_count(lua_State *L) {
  lua_pushinteger(L, push_live(L));
  return 1;
}

/* thread.main_thread(): the Thread of the universe's main thread. */
static int l_main_thread(lua_State *L) {
  push_main(L);
  return 1;
}

static int l_count(lua_State *L) {
  lua_pushinteger(L, host_thread_count(L));
  return 1;
}

static int l_ident(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)host_thread_ident());
  return 1;
}

/* thread.sleep(seconds): waits without the GIL. */
static int l_sleep(lua_State *L) {
  double seconds = host_opt_timeout(L, 1);
  luaL_argcheck(L, seconds >= 0, 1, "number expected");
  host_deadline d = host_deadline_in(seconds);
  if (!host_unlocked_sleep(L, &d)) return host_raise_interrupt(L);
  return 0;
}

/*
** thread.setswitchinterval(seconds) or thread.setswitchinterval{instructions = n}
*/
static int l_setswitchinterval(lua_State *L) {
  if (lua_istable(L, 1)) {
    host_check_options(L, 1, (const char *const[]){"instructions", NULL});
    lua_getfield(L, 1, "instructions");
    int isint;
    lua_Integer n = lua_tointegerx(L, -1, &isint);
    luaL_argcheck(L, isint && n >= 1 && n <= 1000000000, 1,
                  "'instructions' must be an integer in [1, 1e9]");
    host_set_switch_instructions(L, (int)n);
    return 0;
  }
  lua_Number s = luaL_checknumber(L, 1);
  luaL_argcheck(L, s > 0 && s <= 3600, 1, "interval must be in (0, 3600] seconds");
  host_set_switch_interval(L, (double)s);
  return 0;
}

/* thread.getswitchinterval(): seconds, and n when the instruction policy is on. */
static int l_getswitchinterval(lua_State *L) {
  int n;
  lua_pushnumber(L, (lua_Number)host_get_switch_interval(L, &n));
  if (n > 0) {
    lua_pushinteger(L, n);
    return 2;
  }
  return 1;
}

/* thread.switches(): how many times the GIL changed hands. */
static int l_switches(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)host_gil_switches(L));
  return 1;
}

/* ---- thread.local(): fields per OS thread ---- */

/*
** A thread.local() object holds no C resource: its per-thread tables live
** in its uservalue (thread key -> table, weak keys). It has no __gc, so it
** keeps working in finalizers, even after being collected once.
*/
typedef struct local_rec {
  host_object obj;
} local_rec;

/* Pushes the table of the calling thread inside local object at 1. */
static void push_local_table(lua_State *L) {
  host_object_check_self(L, LOCAL_TYPE);
  lua_getiuservalue(L, 1, 1);
  host_push_thread_key(L);
  if (lua_rawget(L, -2) == LUA_TNIL) {
    lua_pop(L, 1);
    lua_newtable(L);
    host_push_thread_key(L);
    lua_pushvalue(L, -2);
    lua_rawset(L, -4);
  }
  lua_remove(L, -2);
}

static int local_index(lua_State *L) {
  push_local_table(L);
  lua_pushvalue(L, 2);
  lua_rawget(L, -2);
  return 1;
}

static int local_newindex(lua_State *L) {
  push_local_table(L);
  luaL_argcheck(L, !lua_isnoneornil(L, 2), 2, "index is nil");
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 3);
  lua_rawset(L, -3);
  return 0;
}

static int local_tostring(lua_State *L) {
  lua_pushfstring(L, LOCAL_TYPE ": %p", host_object_check_self(L, LOCAL_TYPE));
  return 1;
}

static int l_local(lua_State *L) {
  host_object_new(L, sizeof(local_rec), LOCAL_TYPE, 1);
  lua_newtable(L);  /* thread key -> its table, weak keys */
  host_set_weak(L, "k");
  lua_setiuservalue(L, -2, 1);
  return 1;
}

static const luaL_Reg thread_methods[] = {
  {"start", thread_start},
  {"join", thread_join},
  {"is_alive", thread_is_alive},
  {"run", thread_run},
  {"cancel", thread_cancel},
  {NULL, NULL}
};

static const luaL_Reg thread_meta[] = {
  {"__tostring", thread_tostring},
  {"__newindex", thread_newindex},
  {"__gc", thread_gc},
  {NULL, NULL}
};

static const luaL_Reg local_methods[] = {
  {NULL, NULL}
};

static const luaL_Reg local_meta[] = {
  {"__newindex", local_newindex},
  {"__tostring", local_tostring},
  {NULL, NULL}
};

static const luaL_Reg thread_funcs[] = {
  {"Thread", thread_new},
  {"start", thread_start_fn},
  {"current", l_current},
  {"count", l_count},
  {"ident", l_ident},
  {"get_ident", l_ident},
  {"enumerate", l_enumerate},
  {"active_count", l_active_count},
  {"main_thread", l_main_thread},
  {"Timer", l_timer},
  {"sleep", l_sleep},
  {"local", l_local},
  {"setswitchinterval", l_setswitchinterval},
  {"getswitchinterval", l_getswitchinterval},
  {"switches", l_switches},
  {NULL, NULL}
};

int luaopen_host_thread(lua_State *L) {
  host_type_define(L, THREAD_TYPE, thread_methods, thread_meta, thread_index);
  host_type_define(L, LOCAL_TYPE, local_methods, local_meta, local_index);
  luaL_newlib(L, thread_funcs);
  lua_pushcfunction(L, l_default_excepthook);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__excepthook__");
  lua_setfield(L, -2, "excepthook");
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, MODULE);  /* where a thread finds excepthook */
  host_open_sync(L);
  return 1;
}
