/*
** executor_thread.c: futures.ThreadPoolExecutor, after CPython's
** concurrent/futures/thread.py. Workers are host.Thread objects of the
** caller's universe, started lazily up to max_workers and reused while
** idle; tasks and results stay Lua values of that universe.
**
** The pool's state is a separate userdata (C fields and a FIFO of work
** items in a uservalue), used with the GIL held; workers sleep on its
** host_waitq. Each work item is a table {future, nargs, fn, args...}.
** The workers hold the state, not the pool object the program sees (as
** CPython's workers hold their executor weakly): a pool the program drops
** is collected, and its __gc shuts it down as shutdown{wait = false} does,
** so its idle workers end. An exit handler shuts every live pool down so
** that host's exit waits for the queued work and not for idle workers.
*/
#include <string.h>
#include <unistd.h>

#include "executor.h"
#include "future.h"
#include "runtime.h"
#include "thread.h"
#include "trace.h"

#define POOL_TYPE "host.ThreadPoolExecutor"
#define STATE_TYPE "host.ThreadPoolExecutor.state"

/* What the workers share, in its own userdata (see above). */
typedef struct pool_state {
  host_object obj;
  host_waitq *q;
  lua_Integer max_workers;
  lua_Integer threads;     /* workers started and not yet ended */
  lua_Integer idle;        /* workers parked in their wait (woken ones too,
                              until they run again): CPython's _idle_semaphore */
  lua_Integer finishing;   /* workers completing a future with no callbacks:
                              each looks at the queue next (see run_item) */
  lua_Integer started;     /* for worker names */
  host_fifo items;         /* work items, in uservalue UV_ITEMS */
  bool shutdown;
  bool broken;
} pool_state;

/*
** State uservalues: 1 the work items, 2 {prefix, initializer, initargs (a
** copy made at construction), workers, wait_check (a pool of one worker
** only), broken_msg}.
*/
enum { UV_ITEMS = 1, UV_INFO = 2 };

/* The pool object; its uservalue 1 is the state, which s points to. */
typedef struct pool_t {
  host_object obj;
  pool_state *s;
} pool_t;

/* Checks the pool at 1 and pushes its state; returns the state. */
static pool_state *check_pool(lua_State *L) {
  pool_t *px = host_object_check(L, 1, POOL_TYPE);
  lua_getiuservalue(L, 1, 1);
  return px->s;
}

/* Fails (BrokenThreadPool) or cancels every queued item of the state at idx. */
static void drain_items(lua_State *L, int idx, pool_state *p, const char *broken_msg) {
  idx = lua_absindex(L, idx);
  while (host_fifo_pop(L, idx, UV_ITEMS, &p->items)) {
    lua_rawgeti(L, -1, 1);  /* the future */
    if (broken_msg == NULL) {
      host_future_cancel(L, -1);
    } else if (host_future_set_running(host_future_of(L, -1))) {
      host_error_push(L, "BrokenThreadPool", broken_msg, 0);
      host_future_set_error(L, -2);
    }
    lua_pop(L, 2);
  }
  lua_pop(L, 1);
}

/*
** Breaks the pool of the state at idx for the reason on top (popped):
** later submits raise BrokenThreadPool saying it (info.broken_msg), and
** the queued items fail with it.
*/
static void break_pool(lua_State *L, int idx, pool_state *p) {
  idx = lua_absindex(L, idx);
  const char *why = lua_tostring(L, -1);
  p->broken = true;
  lua_getiuservalue(L, idx, UV_INFO);
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, "broken_msg");
  lua_pop(L, 1);
  drain_items(L, idx, p, why);
  host_waitq_notify(p->q);
  lua_pop(L, 1);
}

/* How complete_item completes a future. */
enum { DONE_OK, DONE_RAISED, DONE_REFUSED };

/*
** Under lua_pcall (the future, a DONE_ kind, then the results, the error,
** or the refusal's message as a light userdata): completes the future.
*/
static int complete_item(lua_State *L) {
  int kind = (int)lua_tointeger(L, 2);
  if (kind == DONE_OK) {
    host_future_set_result(L, 1, lua_gettop(L) - 2);
    return 0;
  }
  if (kind == DONE_REFUSED) lua_pushstring(L, lua_touserdata(L, 3));
  host_future_set_error(L, 1);
  return 0;
}

/*
** Completes the future at idx, whose outcome (values, or the error) is
** above it up to the top (popped), under lua_pcall: memory that runs out
** as it is stored fails the future as an error lost (which takes none),
** so that no error ends the worker and no future stays running for good.
*/
static void complete(lua_State *L, int idx, int kind, const char *refusal) {
  int n = lua_gettop(L) - idx;
  if (!lua_checkstack(L, 3)) {  /* as many results as a stack holds */
    lua_settop(L, idx);
    kind = DONE_REFUSED;
    refusal = "too many results to keep";
  }
  lua_pushcfunction(L, complete_item);
  lua_pushvalue(L, idx);
  lua_pushinteger(L, kind);
  int nargs = n + 2;
  if (kind == DONE_REFUSED) {  /* nothing above idx then */
    lua_pushlightuserdata(L, (void *)refusal);
    nargs = 3;
  } else {
    lua_rotate(L, -(n + 3), 3);  /* complete_item, future, kind, the outcome */
  }
  if (lua_pcall(L, nargs, 0, 0) != LUA_OK) {
    lua_pop(L, 1);
    host_future_fail_lost(L, idx);
  }
}

/*
** Runs the work item on top (popped) in this thread and completes its
** future. The task runs in the worker's own frame, so that its traceback
** ends with the task; nothing around it raises (see complete). Returns
** true when it counted the worker in p->finishing before the completion:
** the waiter it wakes may submit before the worker parks (the GIL may pass
** in the completion's lua_pcall), and a worker that looks at the queue
** next is as good as an idle one, so no other is started for that submit.
** A future with callbacks is not counted: they may run long, and a submit
** meanwhile starts a worker, as in CPython.
*/
static bool run_item(lua_State *L, pool_state *p) {
  int item = lua_gettop(L);
  lua_rawgeti(L, item, 1);
  int future = lua_gettop(L);
  if (!host_future_set_running(host_future_of(L, future))) {
    lua_settop(L, item - 1);  /* cancelled meanwhile */
    return false;
  }
  lua_rawgeti(L, item, 2);
  int nargs = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  if (!lua_checkstack(L, nargs + 2)) {
    complete(L, future, DONE_REFUSED, "too many arguments");
    lua_settop(L, item - 1);
    return false;
  }
  for (int i = 3; i <= nargs + 3; i++) lua_rawgeti(L, item, i);  /* fn, args */
  HOST_TRACE_L(L, host_trace_task(L, host_future_of(L, future), "ThreadPool", NULL));
  int status = host_pcall(L, nargs, LUA_MULTRET);
  /* the results may fill the stack, and a look at the proxy takes a slot:
     without one, no trace event and no finishing count (NULL: finalized) */
  host_future *done = lua_checkstack(L, 2) ? host_future_of(L, future) : NULL;
  if (done != NULL) HOST_TRACE_L(L, host_trace_task(L, done, "ThreadPool", status ? "raised" : "ok"));
  bool finishing = done != NULL && !host_future_wants_callbacks(done);
  if (finishing) p->finishing++;
  complete(L, future, status == LUA_OK ? DONE_OK : DONE_RAISED, NULL);
  lua_settop(L, item - 1);
  return finishing;
}

/*
** initializer(initargs...) of the info table at 1, run under host_pcall:
** gathering the arguments may raise (a __len, too many) as the call may.
*/
static int call_initializer(lua_State *L) {
  int nargs = host_executor_push_initializer(L, 1);
  lua_call(L, nargs, 0);
  return 0;
}

/*
** Under lua_pcall (the state, a format with one %s as a light userdata,
** the error): breaks the pool, saying the format with the error's text.
*/
static int break_for(lua_State *L) {
  lua_pushfstring(L, lua_touserdata(L, 2), host_error_tostring(L));
  break_pool(L, 1, lua_touserdata(L, 1));
  return 0;
}

/*
** Breaks the pool of the state at idx for the error on top (popped),
** saying `format` with its text. When memory runs out for that, the pool
** is marked broken (a submit then says why it may be) and its queued
** items fail as errors lost, which takes no memory.
*/
static void fail_pool(lua_State *L, int idx, pool_state *p, const char *format) {
  idx = lua_absindex(L, idx);
  p->broken = true;
  lua_pushcfunction(L, break_for);
  lua_pushvalue(L, idx);
  lua_pushlightuserdata(L, (void *)format);
  lua_rotate(L, -4, -1);  /* break_for, state, format, error */
  if (lua_pcall(L, 3, 0, 0) == LUA_OK) return;
  lua_pop(L, 1);
  while (host_fifo_pop(L, idx, UV_ITEMS, &p->items)) {
    lua_rawgeti(L, -1, 1);
    if (host_future_set_running(host_future_of(L, -1))) host_future_fail_lost(L, -1);
    lua_pop(L, 2);
  }
  lua_pop(L, 1);
  host_waitq_notify(p->q);
}

/* Runs the initializer; on failure breaks the pool and returns false. */
static bool run_initializer(lua_State *L, int idx, pool_state *p) {
  lua_getiuservalue(L, idx, UV_INFO);
  bool none = lua_getfield(L, -1, "initializer") == LUA_TNIL;
  lua_pop(L, 1);
  if (none) {
    lua_pop(L, 1);
    return true;
  }
  lua_pushcfunction(L, call_initializer);
  lua_insert(L, -2);
  if (host_pcall(L, 1, 0) == LUA_OK) return true;
  fail_pool(L, idx, p, "a thread initializer failed: %s");
  return false;
}

/* Under lua_pcall (the state): info.workers[this thread] = true. */
static int enlist_worker(lua_State *L) {
  lua_getiuservalue(L, 1, UV_INFO);
  lua_getfield(L, -1, "workers");
  host_push_thread_key(L);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  return 0;
}

/*
** The body of a worker thread; upvalue 1 is the pool's state: the
** initializer, then items until the pool shuts down or breaks. Every step
** that may run out of memory outside a task's own call is protected: a
** worker that cannot go on breaks the pool, so that no queued item waits
** for good on a worker that is gone.
*/
static int worker_main(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(1));
  int idx = lua_gettop(L);
  pool_state *p = luaL_checkudata(L, idx, STATE_TYPE);
  host_deadline never = host_deadline_in(-1);
  lua_pushcfunction(L, enlist_worker);
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) fail_pool(L, idx, p, "a worker thread failed: %s");
  else if (run_initializer(L, idx, p)) {
    bool finishing = false;  /* counted in p->finishing (run_item) */
    for (;;) {
      bool got = host_fifo_pop(L, idx, UV_ITEMS, &p->items);
      if (finishing) p->finishing--;  /* it runs the next item, or parks now */
      if (got) {
        finishing = run_item(L, p);
        continue;
      }
      finishing = false;
      lua_pop(L, 1);
      if (p->shutdown || p->broken) break;
      host_wait_on(L, "host.ThreadPoolExecutor", "idle worker: no work", p, NULL);
      p->idle++;
      host_waitq_wait_uninterrupted(L, p->q, &never);
      p->idle--;
    }
  }
  p->threads--;
  host_waitq_notify(p->q);
  return 0;
}

/* Starts one more worker for the state at 1, named prefix_N; run protected. */
static int start_worker(lua_State *L) {
  pool_state *p = lua_touserdata(L, 1);
  lua_getiuservalue(L, 1, UV_INFO);
  lua_getfield(L, -1, "prefix");
  const char *name = lua_pushfstring(L, "%s_%I", lua_tostring(L, -1), p->started++);
  lua_pushvalue(L, 1);
  lua_pushcclosure(L, worker_main, 1);
  int rc = host_thread_start(L, name, false, 0);
  if (rc != 0) return luaL_error(L, "cannot start thread: %s", strerror(rc));
  p->threads++;
  return 0;
}

/*
** Raises what a submit to the pool p (state at st) gets once it broke
** (BrokenThreadPool with its reason) or shut down; returns when neither.
*/
static void check_open(lua_State *L, int st, pool_state *p) {
  if (p->broken) {
    lua_getiuservalue(L, st, UV_INFO);
    lua_getfield(L, -1, "broken_msg");  /* nil: a worker failed, and memory ran out to say why */
    const char *why = lua_tostring(L, -1);
    host_error_raise(L, "BrokenThreadPool", "%s",
                     why != NULL ? why : "a worker thread failed: not enough memory");
  }
  if (p->shutdown) luaL_error(L, "cannot schedule new futures after shutdown");
}

/*
** ex:submit(fn, ...) -> Future. A worker is started when the queue would
** hold more items than workers are parked (CPython's _adjust_thread_count),
** before the item is queued: when no worker can start and none runs, submit
** raises and nothing is queued; when others run, one of them takes the item.
*/
static int pool_submit(lua_State *L) {
  pool_state *p = ((pool_t *)host_object_check_self(L, POOL_TYPE))->s;
  host_check_callable(L, 2);
  lua_getiuservalue(L, 1, 1);
  int st = lua_gettop(L);
  check_open(L, st, p);
  if ((lua_Integer)host_fifo_len(&p->items) + 1 > p->idle + p->finishing &&
      p->threads < p->max_workers) {
    lua_pushcfunction(L, start_worker);
    lua_pushvalue(L, st);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
      if (p->threads == 0) return lua_error(L);
      lua_pop(L, 1);
    }
    /* the GIL may have gone meanwhile (the pcall's hook): to the new
    ** worker, whose failing initializer broke the pool, or to a thread that
    ** shut it down, after which every worker may have ended: an item
    ** queued now would wait for good */
    check_open(L, st, p);
  }
  int n = st - 3;  /* arguments after fn */
  lua_createtable(L, n + 3, 0);
  host_future_push_new(L);
  HOST_TRACE_L(L, host_trace_submit(L, host_future_of(L, -1), "ThreadPool"));
  if (p->max_workers == 1) {  /* see state_wait_check */
    lua_getiuservalue(L, st, UV_INFO);
    lua_getfield(L, -1, "wait_check");
    host_future_set_wait_check(L, -3);
    lua_pop(L, 1);
  }
  lua_pushvalue(L, -1);
  lua_rawseti(L, -3, 1);
  lua_pushinteger(L, n);
  lua_rawseti(L, -3, 2);
  for (int i = 0; i <= n; i++) {  /* fn and args */
    lua_pushvalue(L, 2 + i);
    lua_rawseti(L, -3, 3 + i);
  }
  lua_pushvalue(L, -2);
  host_fifo_push(L, st, UV_ITEMS, &p->items);
  host_waitq_notify_one(p->q);  /* one item, one worker: a worker sleeps only when none is left */
  return 1;
}

/* True when the calling thread is a worker of the state at idx. */
static bool is_own_worker(lua_State *L, int idx) {
  lua_getiuservalue(L, idx, UV_INFO);
  lua_getfield(L, -1, "workers");
  host_push_thread_key(L);
  bool mine = lua_rawget(L, -2) != LUA_TNIL;
  lua_pop(L, 3);
  return mine;
}

/*
** The wait check of the futures of a pool of one worker (see
** host_future_set_wait_check; upvalue 1: the pool's state): one not done
** is queued for that worker or run by it, so the worker, in a task or a
** done-callback, cannot wait for it.
*/
static int state_wait_check(lua_State *L) {
  if (!is_own_worker(L, lua_upvalueindex(1))) return 0;
  lua_pushliteral(L, "cannot wait for a future of this pool on its only worker "
                  "(it would never complete)");
  return 1;
}

/* ex:shutdown{wait = true, cancel_futures = false} */
static int pool_shutdown(lua_State *L) {
  lua_settop(L, 2);
  pool_state *p = check_pool(L);
  int st = lua_gettop(L);
  bool wait, cancel, interrupt;
  host_executor_shutdown_options(L, 2, &wait, &cancel, &interrupt);
  (void)interrupt;  /* only the interpreter pool can interrupt a task */
  p->shutdown = true;
  if (cancel) drain_items(L, st, p, NULL);
  host_waitq_notify(p->q);
  if (wait && is_own_worker(L, st))
    return luaL_error(L, "cannot join current thread (a task cannot wait for its own pool)");
  host_deadline never = host_deadline_in(-1);
  while (wait && p->threads > 0) {
    host_wait_on(L, "host.ThreadPoolExecutor", "shutdown: its workers to end", p, NULL);
    if (host_waitq_wait(L, p->q, &never) == HOST_WAIT_INTERRUPTED)
      return host_raise_interrupt(L);
  }
  return 0;
}

/*
** __gc of the pool: the program dropped it. Like shutdown{wait = false}:
** queued work still runs, then the workers end. The state may have been
** finalized in the same cycle (at exit): then no worker is left to tell.
*/
static int pool_gc(lua_State *L) {
  pool_t *px = host_object_finalize(L, POOL_TYPE);
  if (px == NULL) return 0;
  host_executor_track(L, 1, POOL_TYPE, false);
  pool_state *p = px->s;
  if (p != NULL && !p->obj.finalized) {
    p->shutdown = true;
    host_waitq_notify(p->q);
  }
  return 0;
}

/* __gc of the state: no worker holds it any more. */
static int state_gc(lua_State *L) {
  pool_state *p = host_object_finalize(L, STATE_TYPE);
  if (p != NULL) {
    host_waitq_unref(p->q);
    p->q = NULL;
  }
  return 0;
}

static int pool_tostring(lua_State *L) {
  if (host_object_tostring_finalized(L, POOL_TYPE)) return 1;
  pool_state *p = check_pool(L);
  lua_pushfstring(L, "host.ThreadPoolExecutor (%I/%I workers%s): %p", p->threads,
                  p->max_workers, p->shutdown ? ", shut down" : "", (void *)p);
  return 1;
}

/* The default number of workers, as Python's: min(32, cores + 4). */
static lua_Integer default_workers(void) {
  lua_Integer n = host_executor_cores() + 4;
  return n < 32 ? n : 32;
}

/*
** Pushes a copy of the initargs table at idx, {n = n, ...} (n its `n` or
** its length), as CPython keeps the initargs tuple: a worker started
** later does not see what the program changed in the table since.
*/
static void copy_initargs(lua_State *L, int idx) {
  lua_getfield(L, idx, "n");
  lua_Integer n = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : luaL_len(L, idx);
  lua_pop(L, 1);
  if (n < 0 || n > LUAI_MAXSTACK) luaL_error(L, "too many initargs (%I)", n);
  lua_createtable(L, (int)n, 1);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, idx, i);
    lua_rawseti(L, -2, i);
  }
  lua_pushinteger(L, n);
  lua_setfield(L, -2, "n");
}

/*
** futures.ThreadPoolExecutor{max_workers =, thread_name_prefix =,
** initializer =, initargs =}
*/
static int pool_new(lua_State *L) {
  static const char *const known[] = {"max_workers", "thread_name_prefix", "initializer",
                                      "initargs", NULL};
  lua_Integer max = host_executor_options(L, default_workers(), known);
  if (host_exiting(L)) return luaL_error(L, "cannot start a new pool after interpreter shutdown");
  lua_getfield(L, 1, "thread_name_prefix");
  if (!lua_isnil(L, -1) && !lua_isstring(L, -1)) host_field_error(L, 1, "thread_name_prefix", "a string");
  /* the state first: at exit, finalizers run newest first, the pool's before it */
  pool_state *p = host_object_new(L, sizeof *p, STATE_TYPE, 2);
  int st = lua_gettop(L);
  p->q = host_waitq_new();
  if (p->q == NULL) return luaL_error(L, "not enough memory");
  p->max_workers = max;
  host_fifo_init(&p->items);
  lua_newtable(L);
  lua_setiuservalue(L, st, UV_ITEMS);
  lua_createtable(L, 0, 6);
  if (lua_isnil(L, 4)) {
    lua_getfield(L, LUA_REGISTRYINDEX, POOL_TYPE ".count");
    lua_Integer n = lua_tointeger(L, -1);
    lua_pushinteger(L, n + 1);
    lua_setfield(L, LUA_REGISTRYINDEX, POOL_TYPE ".count");
    lua_pushfstring(L, "ThreadPoolExecutor-%I", n);
    lua_remove(L, -2);
  } else {
    lua_pushvalue(L, 4);
  }
  lua_setfield(L, -2, "prefix");
  lua_pushvalue(L, 2);
  lua_setfield(L, -2, "initializer");
  if (lua_istable(L, 3)) copy_initargs(L, 3);
  else lua_pushnil(L);
  lua_setfield(L, -2, "initargs");
  lua_newtable(L);  /* thread key -> true for each worker, weak keys */
  host_set_weak(L, "k");
  lua_setfield(L, -2, "workers");
  if (max == 1) {
    lua_pushvalue(L, st);
    lua_pushcclosure(L, state_wait_check, 1);
    lua_setfield(L, -2, "wait_check");
  }
  lua_setiuservalue(L, st, UV_INFO);
  pool_t *px = host_object_new(L, sizeof *px, POOL_TYPE, 1);
  lua_pushvalue(L, st);
  lua_setiuservalue(L, -2, 1);
  px->s = p;
  host_executor_track(L, -1, POOL_TYPE, true);
  return 1;
}

static const luaL_Reg pool_methods[] = {
  {"submit", pool_submit},
  {"shutdown", pool_shutdown},
  {NULL, NULL}
};

static const luaL_Reg state_meta[] = {
  {"__gc", state_gc},
  {NULL, NULL}
};

static const luaL_Reg no_methods[] = {
  {NULL, NULL}
};

void host_open_thread_pool(lua_State *L) {
  host_type_define(L, STATE_TYPE, no_methods, state_meta, NULL);
  host_executor_define(L, POOL_TYPE, pool_methods, pool_gc, pool_tostring);
  lua_pushcfunction(L, pool_new);
  lua_setfield(L, -2, "ThreadPoolExecutor");
}
