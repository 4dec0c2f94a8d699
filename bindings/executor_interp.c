/*
** executor_interp.c: futures.InterpreterPoolExecutor, CPython 3.14's twin:
** each worker is an OS thread that runs its own universe (its own
** lua_State, libraries and GIL), so CPU-bound Lua runs in parallel without
** fork. Tasks and results cross in memory through the codec.
**
** The shared part is a refcounted C struct (`ipool`), used by the caller's
** proxy, the workers and a manager thread, under its mutex: a queue of work
** items (future + encoded task) and a list of completed futures. A worker
** completes a future itself (its waiters wake at once), then hands it to
** the manager, a host.Thread of the caller's universe that runs the done
** callbacks there, lets go of the proxy and, at the end, joins the workers.
**
** Ownership: the pool struct is freed by its last reference: the proxy,
** each worker thread, and a "handle" userdata that the manager and the
** futures' interrupters hold. Neither holds the proxy itself, so a pool
** that the program drops is collected: its __gc shuts it down (as
** shutdown{wait = false}), its queued work still runs, and its threads end.
**
** An interrupt can stop a runaway task or initializer (what CPython
** lacks): the worker's universe gets host_interrupt_sticky, the hook that
** lua.c arms for Ctrl-C made to raise "interrupted!" again at every
** instruction until the task's own frame ends, so no pcall keeps it. It
** comes from future:cancel{interrupt = true} or shutdown{interrupt = true};
** the latter also reaches the pools that the worker's tasks made, when the
** worker closes. os.exit in a task stops only that task the same way: its
** future fails with a SystemExit error. (os.exit in another thread of the
** worker's universe ends only that thread.)
*/
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lualib.h"

#include "executor.h"
#include "future.h"
#include "runtime.h"
#include "thread.h"
#include "trace.h"

#define IPOOL_TYPE "host.InterpreterPoolExecutor"
#define HANDLE_TYPE "host.InterpreterPoolExecutor.handle"

/* A task waiting for a worker, or a completed future waiting for the manager. */
typedef struct item {
  struct item *next;
  host_future *f;     /* one reference */
  char *payload;      /* the encoded task; NULL on the done list */
  size_t len;
} item;

/* Why the user code a worker runs must stop (wslot.stop). */
enum { STOP_NONE, STOP_INTERRUPT, STOP_EXIT };

typedef struct wslot {
  pthread_t thread;
  bool started;
  lua_State *L;            /* its universe, while it runs (under mu) */
  host_future *current;    /* the task it runs, for interrupts (under mu) */
  const char *busy;        /* "task" or "initializer" while user code runs (under mu) */
  atomic_int stop;         /* a STOP_ value, until the user code's frame ends */
  int exit_code;           /* os.exit's code when stop is STOP_EXIT (under mu) */
} wslot;

/* Why a pool breaks when a worker's universe cannot be opened. */
#define NO_STATE_MSG "an interpreter pool worker could not open its Lua state: not enough memory"

typedef struct ipool {
  atomic_int refs;         /* the proxy, each worker, the handle */
  pthread_mutex_t mu;
  host_cond work_cv;       /* workers wait for items (and spin first) */
  pthread_cond_t done_cv;  /* the manager waits for completions */
  pthread_cond_t end_cv;   /* shutdown waits for the manager's end */
  item *head, *tail;       /* work */
  item *done;              /* completed futures, for the manager */
  bool shutdown, broken, manager_done;
  bool interrupting;       /* shutdown{interrupt = true}: nested pools too */
  bool manager_running;    /* manager_ident is the manager's thread */
  unsigned long manager_ident;
  int alive;               /* workers not yet ended */
  char *init;              /* encoded initializer and initargs, or NULL */
  size_t init_len;
  char *path, *cpath;      /* the creator's package.path and cpath, or NULL */
  char *broken_msg;
  char *no_state;          /* the encoded error of a worker with no universe, or NULL */
  size_t no_state_len;
  int nworkers;
  void *trace;             /* the creator's trace, shared (trace.c), or NULL */
  wslot w[];
} ipool;

/* The proxy. Uservalues: 1 {[lightuserdata future] = proxy} for futures in
** flight (shared with the manager), 2 the handle. */
typedef struct iproxy {
  host_object obj;
  ipool *p;                /* one reference */
} iproxy;

/* The handle: one reference, dropped by its __gc. */
typedef struct ihandle {
  ipool *p;
} ihandle;

static void free_items(item *it) {
  while (it != NULL) {
    item *next = it->next;
    host_future_unref(it->f);
    free(it->payload);
    free(it);
    it = next;
  }
}

static void ipool_unref(ipool *p) {
  if (atomic_fetch_sub(&p->refs, 1) != 1) return;
  free_items(p->head);
  free_items(p->done);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->done_cv);
  pthread_cond_destroy(&p->end_cv);
  free(p->init);
  free(p->path);
  free(p->cpath);
  free(p->broken_msg);
  free(p->no_state);
  host_trace_unshare(p->trace);
  free(p);
}

/* Stops taking work (mu held): queued work still runs, then threads end. */
static void begin_shutdown(ipool *p) {
  p->shutdown = true;
  host_cond_broadcast(&p->work_cv);
  pthread_cond_signal(&p->done_cv);
}

/*
** Lists a completed (or cancelled) future for the caller's universe to
** forget (mu held). The manager is woken only when the future has
** callbacks to run; else the list waits for the next submit or for
** shutdown, which saves a wake-up per task.
*/
static void post_done(ipool *p, item *it, bool wake) {
  free(it->payload);
  it->payload = NULL;
  it->next = p->done;
  p->done = it;
  if (wake) pthread_cond_signal(&p->done_cv);
}

/* ---- a worker thread and its universe ---- */

/* Pushes the SystemExit error of a worker whose `what` called os.exit(code). */
static void push_exit_error(lua_State *L, const char *what, int code) {
  const char *msg = lua_pushfstring(L, "the %s called os.exit(%d)", what, code);
  host_error_push(L, "SystemExit", msg, 0);
  lua_pushinteger(L, code);
  lua_setfield(L, -2, "code");
  lua_remove(L, -2);
}

/*
** os.exit in a worker universe (upvalue 1: the slot, 2: the pool): it
** cannot end the process, which other tasks and the caller's script share.
** From the worker's own thread it stops the running task (or initializer),
** whose future fails with SystemExit. From another thread of the universe
** (one a task started, which may outlive it) it ends only that thread, as
** Python's sys.exit does in a thread: no task is blamed for it.
*/
static int worker_exit(lua_State *L) {
  wslot *ws = lua_touserdata(L, lua_upvalueindex(1));
  int code = lua_isboolean(L, 1) ? (lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE)
                                 : (int)luaL_optinteger(L, 1, EXIT_SUCCESS);
  if (!host_is_main_thread()) {
    const char *msg = lua_pushfstring(L, "os.exit(%d) in a thread of an interpreter pool's "
                                      "worker ends only that thread", code);
    host_error_push(L, "SystemExit", msg, 0);
    lua_pushinteger(L, code);
    lua_setfield(L, -2, "code");
    return lua_error(L);
  }
  const char *what = NULL;
  ipool *p = lua_touserdata(L, lua_upvalueindex(2));
  pthread_mutex_lock(&p->mu);
  if (ws->busy != NULL) {
    what = ws->busy;
    if (atomic_load(&ws->stop) != STOP_EXIT) ws->exit_code = code;
    atomic_store(&ws->stop, STOP_EXIT);
    host_interrupt_sticky(ws->L);  /* until the task's frame ends */
  }
  pthread_mutex_unlock(&p->mu);
  if (what != NULL) {
    push_exit_error(L, what, code);
  } else {
    const char *msg = lua_pushfstring(L, "os.exit(%d) outside a task of an interpreter pool", code);
    host_error_push(L, "SystemExit", msg, 0);
  }
  return lua_error(L);
}

/*
** The message handler xpcall gets in a worker universe: upvalue 1 is the
** user's handler, 2 the slot. While the task must stop, the user's handler
** is not called: an interrupt raised by the hook reaches it with hooks off
** (Lua calls a message handler inside the raising hook), where a loop in
** it could never be interrupted.
*/
static int guarded_handler(lua_State *L) {
  wslot *ws = lua_touserdata(L, lua_upvalueindex(2));
  if (host_is_main_thread() && atomic_load(&ws->stop) != STOP_NONE) return lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

/* The continuation of guarded_xpcall: the results are all that is left. */
static int guarded_xpcall_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return lua_gettop(L);
}

/*
** xpcall(f, msgh, ...) in a worker universe: upvalue 1 the original, 2 the
** slot. The original's results pass through, and f may yield.
*/
static int guarded_xpcall(lua_State *L) {
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_pushcclosure(L, guarded_handler, 2);
  lua_replace(L, 2);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_callk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, guarded_xpcall_k);
  return guarded_xpcall_k(L, LUA_OK, 0);
}

/* Sets package[field] in L to s, when both exist. */
static void set_package_field(lua_State *L, const char *field, const char *s) {
  if (s == NULL) return;
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, LUA_LOADLIBNAME) == LUA_TTABLE) {
    lua_pushstring(L, s);
    lua_setfield(L, -2, field);
  }
  lua_pop(L, 2);
}

/*
** Protected (arguments: the slot and the pool, light userdata): opens the
** libraries of a worker's new universe with the creator's package.path and
** cpath, host.futures, its xpcall and os.exit.
*/
static int open_worker(lua_State *L) {
  wslot *ws = lua_touserdata(L, 1);
  ipool *p = lua_touserdata(L, 2);
  luaL_openlibs(L);
  host_openlibs(L);
  host_trace_attach(L, p->trace, "interpreter-pool worker", (int)(ws - p->w) + 1);
  set_package_field(L, "path", p->path);
  set_package_field(L, "cpath", p->cpath);
  lua_getglobal(L, "require");  /* map's chunks name host.futures._run_chunk */
  lua_pushliteral(L, "host.futures");
  if (host_pcall(L, 1, 0) != LUA_OK) lua_pop(L, 1);
  lua_getglobal(L, "xpcall");
  lua_pushlightuserdata(L, ws);
  lua_pushcclosure(L, guarded_xpcall, 2);
  lua_setglobal(L, "xpcall");
  if (lua_getglobal(L, "os") == LUA_TTABLE) {
    lua_pushlightuserdata(L, ws);
    lua_pushlightuserdata(L, p);
    lua_pushcclosure(L, worker_exit, 2);
    lua_setfield(L, -2, "exit");
  }
  return 0;
}

/* A worker's universe, opened (open_worker); NULL when memory runs out. */
static lua_State *worker_universe(ipool *p, wslot *ws) {
  lua_State *L = host_newstate();
  if (L == NULL) return NULL;
  lua_pushcfunction(L, open_worker);  /* neither push allocates */
  lua_pushlightuserdata(L, ws);
  lua_pushlightuserdata(L, p);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    host_close(L);
    return NULL;
  }
  return L;
}

/*
** Marks user code (`what`, and the task's future f or NULL) running in
** slot ws, or with what NULL, over; then no interrupt meant for it is left
** pending. An initializer that starts after shutdown{interrupt = true} is
** interrupted at once. Returns the STOP_ value it ended with.
*/
static int set_busy(ipool *p, wslot *ws, const char *what, host_future *f) {
  pthread_mutex_lock(&p->mu);
  int stop = atomic_exchange(&ws->stop, STOP_NONE);
  ws->busy = what;
  ws->current = f;
  host_clear_interrupt(ws->L);
  if (what != NULL && f == NULL && p->interrupting) {
    atomic_store(&ws->stop, STOP_INTERRUPT);
    host_interrupt_sticky(ws->L);
  }
  pthread_mutex_unlock(&p->mu);
  return stop;
}

/*
** Completes it->f with an encoded BrokenInterpreterPool error, and posts
** it (mu held). L is the failing worker's universe, where the error is
** made; NULL when it has none: the error encoded for that case when the
** pool was made (p->no_state) is copied.
*/
static void fail_broken(lua_State *L, ipool *p, item *it) {
  char *buf = NULL;
  size_t len = 0;
  if (L != NULL) {
    host_error_push(L, "BrokenInterpreterPool", p->broken_msg, 0);
    if (host_codec_encode(L, lua_gettop(L), 1, &buf, &len) != LUA_OK) lua_pop(L, 1);
    lua_pop(L, 1);
  } else if (p->no_state != NULL && (buf = malloc(p->no_state_len)) != NULL) {
    memcpy(buf, p->no_state, p->no_state_len);
    len = p->no_state_len;
  }
  if (host_future_set_running(it->f)) host_future_set_payload(it->f, false, buf, len);
  else free(buf);
  post_done(p, it, true);
}

/*
** Breaks the pool for `why` (mu held): later submits raise it as a
** BrokenInterpreterPool error, and the queued work fails with it
** (fail_broken, L as there).
*/
static void break_locked(lua_State *L, ipool *p, const char *why) {
  if (!p->broken) {
    p->broken_msg = strdup(why);
    p->broken = true;
  }
  while (p->head != NULL) {
    item *it = p->head;
    p->head = it->next;
    fail_broken(L, p, it);
  }
  p->tail = NULL;
  host_cond_broadcast(&p->work_cv);
}

/* Runs the pool's initializer in L; on failure breaks the pool (mu not held). */
static bool run_initializer(lua_State *L, ipool *p, wslot *ws) {
  if (p->init == NULL) return true;
  int n = 0;
  set_busy(p, ws, "initializer", NULL);
  int status = host_codec_decode(L, p->init, p->init_len, HOST_CODEC_FUNCTIONS, &n);
  if (status == LUA_OK) status = host_pcall_task(L, n - 1, 0);
  else lua_pushnil(L);  /* a payload that does not decode has no traceback */
  int stop = set_busy(p, ws, NULL, NULL);
  if (stop == STOP_EXIT) {
    if (status != LUA_OK) lua_pop(L, 2);
    push_exit_error(L, "initializer", ws->exit_code);
    lua_pushnil(L);
    status = LUA_ERRRUN;
  }
  if (status == LUA_OK) return true;
  /* as the process pool says it: the message, then the labelled traceback */
  const char *who = lua_pushfstring(L, "interpreter pool worker %d", (int)(ws - p->w) + 1);
  lua_insert(L, -3);  /* kept under the error and its traceback */
  host_executor_remote_traceback(L, who);
  const char *tb = lua_tostring(L, -1);
  lua_pushvalue(L, -2);
  const char *msg = host_error_tostring(L);
  const char *why = lua_pushfstring(L, "an interpreter initializer failed: %s%s%s%s", msg,
                                    tb != NULL ? "\n" : "", tb != NULL ? tb : "",
                                    tb != NULL ? "\n" : "");
  pthread_mutex_lock(&p->mu);
  break_locked(L, p, why);
  pthread_mutex_unlock(&p->mu);
  lua_settop(L, 0);
  return false;
}

/*
** Encodes the failure on top of worker `index`'s universe (the error, then
** its traceback from host_pcall_task or nil; both popped) into *buf: the
** error and its remote traceback text. An error the codec cannot carry
** crosses as its text (__tostring run protected), as the process pool
** sends it.
*/
static void encode_error(lua_State *L, int index, char **buf, size_t *len) {
  const char *who = lua_pushfstring(L, "interpreter pool worker %d", index + 1);
  lua_insert(L, -3);
  host_executor_remote_traceback(L, who);
  int err = lua_gettop(L) - 1;
  if (host_codec_encode(L, err, 2, buf, len) != LUA_OK) {
    lua_pop(L, 1);  /* the codec's complaint */
    lua_pushvalue(L, err);
    host_error_tostring(L);
    lua_replace(L, err);
    if (host_codec_encode(L, err, 2, buf, len) != LUA_OK) lua_pop(L, 1);
  }
  lua_pop(L, 3);
}

/* Runs one task (its payload) in L and completes its future; posts it. */
static void run_task(lua_State *L, ipool *p, wslot *ws, item *it) {
  int base = lua_gettop(L);
  int n = 0;
  int status = host_codec_decode(L, it->payload, it->len, HOST_CODEC_FUNCTIONS, &n);
  bool chunk = status == LUA_OK && host_executor_is_chunk(L, base + 1);
  HOST_TRACE_L(L, host_trace_task(L, it->f, "InterpreterPool", NULL));
  if (status == LUA_OK) status = host_pcall_task(L, n - 1, LUA_MULTRET);
  else lua_pushnil(L);  /* a payload that does not decode has no traceback */
  HOST_TRACE_L(L, host_trace_task(L, it->f, "InterpreterPool", status ? "raised" : "ok"));
  int stop = set_busy(p, ws, NULL, NULL);  /* no interrupt lands after this */
  if (stop == STOP_EXIT) {
    lua_settop(L, base);
    push_exit_error(L, "task", ws->exit_code);
    lua_pushnil(L);
    status = LUA_ERRRUN;
  }
  char *buf = NULL;
  size_t len = 0;
  bool ok = status == LUA_OK;
  if (ok && host_executor_encode_results(L, base + 1, chunk, &buf, &len) != LUA_OK) {
    ok = false;  /* an unserializable result fails that future alone */
    lua_pushnil(L);
  }
  if (!ok) encode_error(L, (int)(ws - p->w), &buf, &len);
  lua_settop(L, base);
  host_future_set_payload(it->f, ok, buf, len);
  bool wake = host_future_wants_callbacks(it->f);
  pthread_mutex_lock(&p->mu);
  post_done(p, it, wake);
  pthread_mutex_unlock(&p->mu);
}

/* run_task under lua_pcall (arguments: the pool, the slot, the item, as light userdata). */
static int run_task_call(lua_State *L) {
  ipool *p = lua_touserdata(L, 1);
  wslot *ws = lua_touserdata(L, 2);
  item *it = lua_touserdata(L, 3);
  lua_settop(L, 0);
  run_task(L, p, ws, it);
  return 0;
}

/*
** Runs one task as run_task does, so that memory that runs out outside
** the task's own call (its error or result being encoded) fails its future
** as an error lost (a failure with no payload, which allocates nothing)
** instead of aborting the process (an unprotected error). run_task raises
** only before it completes the future and posts it.
*/
static void serve_task(lua_State *L, ipool *p, wslot *ws, item *it) {
  int base = lua_gettop(L);
  lua_pushcfunction(L, run_task_call);  /* none of the pushes allocates */
  lua_pushlightuserdata(L, p);
  lua_pushlightuserdata(L, ws);
  lua_pushlightuserdata(L, it);
  if (lua_pcall(L, 3, 0, 0) == LUA_OK) return;
  lua_settop(L, base);
  set_busy(p, ws, NULL, NULL);
  host_future_set_payload(it->f, false, NULL, 0);
  bool wake = host_future_wants_callbacks(it->f);
  pthread_mutex_lock(&p->mu);
  post_done(p, it, wake);
  pthread_mutex_unlock(&p->mu);
}

/* What a worker thread is started with (freed by it). */
typedef struct worker_arg {
  ipool *p;
  int index;
} worker_arg;

/* Serves tasks in L until the queue is empty and the pool shut down or broken. */
static void serve(lua_State *L, ipool *p, wslot *ws) {
  host_deadline never = host_deadline_in(-1);
  for (;;) {
    pthread_mutex_lock(&p->mu);
    if (p->head == NULL && !p->shutdown && !p->broken) {
      host_cond_wait_spin(L, &p->mu, &p->work_cv, &never);  /* our GIL goes meanwhile */
      continue;
    }
    item *it = p->head;
    if (it == NULL) {
      pthread_mutex_unlock(&p->mu);
      return;
    }
    p->head = it->next;
    if (p->head == NULL) p->tail = NULL;
    if (!host_future_set_running(it->f)) {  /* cancelled while queued */
      post_done(p, it, false);
      pthread_mutex_unlock(&p->mu);
      continue;
    }
    ws->busy = "task";  /* interruptible from the moment it runs */
    ws->current = it->f;
    pthread_mutex_unlock(&p->mu);
    serve_task(L, p, ws, it);
  }
}

static int stop_nested(lua_State *L);


/* The OS thread of one worker: its own universe, serving tasks. */
static void *worker_thread(void *arg) {
  ipool *p = ((worker_arg *)arg)->p;
  wslot *ws = &p->w[((worker_arg *)arg)->index];
  free(arg);
  lua_State *L = worker_universe(p, ws);
  pthread_mutex_lock(&p->mu);
  ws->L = L;
  if (L == NULL) break_locked(NULL, p, NO_STATE_MSG);  /* no worker of it may serve */
  pthread_mutex_unlock(&p->mu);
  if (L != NULL && run_initializer(L, p, ws)) serve(L, p, ws);
  pthread_mutex_lock(&p->mu);
  ws->L = NULL;
  bool interrupting = p->interrupting;
  pthread_mutex_unlock(&p->mu);
  if (L != NULL && interrupting) {
    lua_pushcfunction(L, stop_nested);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) lua_pop(L, 1);
  }
  if (L != NULL) host_close(L);  /* waits for the threads the tasks started */
  pthread_mutex_lock(&p->mu);
  p->alive--;
  pthread_cond_signal(&p->done_cv);
  pthread_mutex_unlock(&p->mu);
  ipool_unref(p);
  return NULL;
}

/*
** Starts every worker thread; each holds a reference to the pool. Like
** host threads, they take no asynchronous signal but the runtime's switch
** signal, so Ctrl-C reaches the caller's main thread. Returns 0 or errno.
*/
static int start_workers(ipool *p) {
  sigset_t all, old;
  sigfillset(&all);
  sigdelset(&all, SIGURG);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int rc = 0;
  for (int i = 0; i < p->nworkers && rc == 0; i++) {
    worker_arg *a = malloc(sizeof *a);
    if (a == NULL) {
      rc = ENOMEM;
      break;
    }
    a->p = p;
    a->index = i;
    atomic_fetch_add(&p->refs, 1);
    pthread_mutex_lock(&p->mu);
    p->alive++;
    pthread_mutex_unlock(&p->mu);
    rc = pthread_create(&p->w[i].thread, NULL, worker_thread, a);
    if (rc == 0) {
      p->w[i].started = true;
    } else {
      free(a);
      pthread_mutex_lock(&p->mu);
      p->alive--;
      pthread_mutex_unlock(&p->mu);
      ipool_unref(p);
    }
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return rc;
}

/* ---- the caller's side (GIL held) ---- */

static iproxy *check_ipool(lua_State *L, int idx) {
  return host_object_check(L, idx, IPOOL_TYPE);
}

/* The pool of the handle at idx (an upvalue of the manager or an interrupter). */
static ipool *handle_pool(lua_State *L, int idx) {
  ihandle *h = luaL_checkudata(L, idx, HANDLE_TYPE);
  if (h->p == NULL) luaL_error(L, "attempt to use a finalized %s", IPOOL_TYPE);
  return h->p;
}

static int handle_gc(lua_State *L) {
  ihandle *h = luaL_checkudata(L, 1, HANDLE_TYPE);
  if (h->p != NULL) ipool_unref(h->p);
  h->p = NULL;
  return 0;
}

/*
** Takes the list of completed futures and, in the caller's universe, runs
** their callbacks (if not run yet) and forgets their proxies (inflight is
** the table of futures in flight).
*/
static void forget_done(lua_State *L, ipool *p, int inflight) {
  pthread_mutex_lock(&p->mu);
  item *done = p->done;
  p->done = NULL;
  pthread_mutex_unlock(&p->mu);
  while (done != NULL) {
    item *next = done->next;
    lua_pushlightuserdata(L, done->f);
    if (lua_rawget(L, inflight) != LUA_TNIL) host_future_run_callbacks(L, -1);
    lua_pop(L, 1);
    lua_pushlightuserdata(L, done->f);
    lua_pushnil(L);
    lua_rawset(L, inflight);
    host_future_unref(done->f);
    free(done);
    done = next;
  }
}

/* Joins every worker that started (GIL released meanwhile). */
static void join_workers(lua_State *L, ipool *p) {
  host_gil_release(L);
  for (int i = 0; i < p->nworkers; i++) {
    if (p->w[i].started) pthread_join(p->w[i].thread, NULL);
    p->w[i].started = false;
  }
  host_gil_acquire(L);
}

/*
** The manager: a host.Thread of the caller's universe that runs the done
** callbacks of completed futures and forgets their proxies, until the pool
** is shut down and its workers have ended; then it joins them. Upvalue 1
** is the handle, 2 the table of futures in flight.
*/
static int manager_main(lua_State *L) {
  ipool *p = handle_pool(L, lua_upvalueindex(1));
  lua_pushvalue(L, lua_upvalueindex(2));
  int inflight = lua_gettop(L);
  host_deadline never = host_deadline_in(-1);
  pthread_mutex_lock(&p->mu);
  p->manager_ident = host_thread_ident();
  p->manager_running = true;
  pthread_mutex_unlock(&p->mu);
  for (;;) {
    pthread_mutex_lock(&p->mu);
    if (p->done == NULL && !(p->shutdown && p->alive == 0)) {
      host_wait_on(L, IPOOL_TYPE, "manager: no task done", p, NULL);
      host_cond_wait(L, &p->mu, &p->done_cv, &never);
      continue;
    }
    bool finished = p->done == NULL;
    pthread_mutex_unlock(&p->mu);
    if (finished) break;
    forget_done(L, p, inflight);
  }
  join_workers(L, p);
  pthread_mutex_lock(&p->mu);
  p->manager_done = true;
  p->manager_running = false;
  pthread_cond_broadcast(&p->end_cv);
  pthread_mutex_unlock(&p->mu);
  return 0;
}

/* The interrupter of the pool's futures: upvalue 1 is the handle. */
static int interrupt_task(lua_State *L) {
  ipool *p = handle_pool(L, lua_upvalueindex(1));
  host_future *f = host_future_check(L, 1);
  bool hit = false;
  pthread_mutex_lock(&p->mu);
  for (int i = 0; i < p->nworkers; i++) {
    wslot *ws = &p->w[i];
    if (ws->current == f && ws->L != NULL) {
      int none = STOP_NONE;
      atomic_compare_exchange_strong(&ws->stop, &none, STOP_INTERRUPT);
      host_interrupt_sticky(ws->L);
      hit = true;
    }
  }
  pthread_mutex_unlock(&p->mu);
  lua_pushboolean(L, hit);
  return 1;
}

/*
** Pushes the error that a submit to p gets now, and returns true; false
** when p takes work. The workers set the flags, under the mutex.
*/
static bool refused(lua_State *L, ipool *p) {
  pthread_mutex_lock(&p->mu);
  bool broken = p->broken, shut = p->shutdown;
  const char *why = p->broken_msg;  /* written once, before broken is set */
  pthread_mutex_unlock(&p->mu);
  if (broken) host_error_push(L, "BrokenInterpreterPool", why != NULL ? why : NO_STATE_MSG, 0);
  else if (shut) lua_pushliteral(L, "cannot schedule new futures after shutdown");
  return broken || shut;
}

/*
** ex:submit(fn, ...) -> Future; the arguments are encoded at once. The Lua
** work (which may raise) comes before the C item exists, so no error path
** leaks it; the item is queued, or refused, under the pool's mutex.
*/
static int ipool_submit(lua_State *L) {
  iproxy *px = check_ipool(L, 1);
  ipool *p = px->p;
  host_check_callable(L, 2);
  int nvalues = lua_gettop(L) - 1;  /* fn and its arguments, from 2 */
  if (refused(L, p)) return lua_error(L);
  lua_getiuservalue(L, 1, 1);
  int inflight = lua_gettop(L);
  forget_done(L, p, inflight);  /* what finished since the last submit */
  host_future *f = host_future_push_new(L);
  HOST_TRACE_L(L, host_trace_submit(L, f, "InterpreterPool"));
  int fut = lua_gettop(L);
  lua_pushcfunction(L, host_executor_decoder);
  host_future_set_decoder(L, fut);
  lua_getiuservalue(L, 1, 2);
  lua_pushcclosure(L, interrupt_task, 1);
  host_future_set_interrupter(L, fut);
  lua_pushlightuserdata(L, f);  /* in flight until the caller's side forgets it */
  lua_pushvalue(L, fut);
  lua_rawset(L, inflight);
  item *it = calloc(1, sizeof *it);
  int status = it == NULL ? LUA_ERRMEM
                          : host_executor_encode_call(L, 2, nvalues, &it->payload, &it->len);
  pthread_mutex_lock(&p->mu);
  bool queued = status == LUA_OK && !p->broken && !p->shutdown;
  if (queued) {
    it->f = f;
    host_future_ref(f);
    if (p->tail) p->tail->next = it;
    else p->head = it;
    p->tail = it;
    host_cond_changed(&p->work_cv);
  }
  pthread_mutex_unlock(&p->mu);
  if (queued) {
    host_cond_wake_one(&p->work_cv);  /* after the unlock: the worker finds mu free */
    lua_settop(L, fut);
    return 1;
  }
  if (it != NULL) free(it->payload);  /* NULL when the encoding failed */
  free(it);
  lua_pushlightuserdata(L, f);
  lua_pushnil(L);
  lua_rawset(L, inflight);
  if (status == LUA_ERRMEM) return luaL_error(L, "not enough memory");
  if (status != LUA_OK) return lua_error(L);  /* what host_executor_encode_call says */
  refused(L, p);  /* the pool broke or shut down since the check above */
  return lua_error(L);
}

/*
** Cancels the queued items (taken off the queue) through their proxies in
** the table at inflight, which then forgets them; callbacks run here.
*/
static void cancel_items(lua_State *L, item *it, int inflight) {
  while (it != NULL) {
    item *next = it->next;
    lua_pushlightuserdata(L, it->f);
    if (lua_rawget(L, inflight) != LUA_TNIL) host_future_cancel(L, -1);
    lua_pop(L, 1);
    lua_pushlightuserdata(L, it->f);
    lua_pushnil(L);
    lua_rawset(L, inflight);
    host_future_unref(it->f);
    free(it->payload);
    free(it);
    it = next;
  }
}

/*
** Shuts p down without waiting: it refuses work from here on; `cancel`
** cancels its queued items (their proxies in the table at inflight; their
** callbacks run here), `interrupt` interrupts the user code its workers
** run now (tasks and initializers) and, when each worker closes, the pools
** that its tasks made. Returns true when called from p's manager.
*/
static bool stop_pool(lua_State *L, ipool *p, bool cancel, bool interrupt, int inflight) {
  item *queued = NULL;
  pthread_mutex_lock(&p->mu);
  if (interrupt) p->interrupting = true;
  begin_shutdown(p);
  if (cancel) {
    queued = p->head;
    p->head = p->tail = NULL;
  }
  if (interrupt) {
    for (int i = 0; i < p->nworkers; i++) {
      wslot *ws = &p->w[i];
      if (ws->busy != NULL && ws->L != NULL) {
        int none = STOP_NONE;
        atomic_compare_exchange_strong(&ws->stop, &none, STOP_INTERRUPT);
        host_interrupt_sticky(ws->L);
      }
    }
  }
  bool own = p->manager_running && p->manager_ident == host_thread_ident();
  pthread_mutex_unlock(&p->mu);
  cancel_items(L, queued, inflight);
  return own;
}

#define MANAGED IPOOL_TYPE ".managed"  /* registry: handle -> its futures in flight */

/*
** In a worker's universe about to close after shutdown{interrupt = true}:
** every interpreter pool that the worker's tasks made (even one they
** dropped, whose manager still runs) is shut down the same way, so a
** runaway task there does not hold the worker's close up. Run protected.
*/
static int stop_nested(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, MANAGED) != LUA_TTABLE) return 0;
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    ihandle *h = lua_touserdata(L, -2);
    if (h->p != NULL) stop_pool(L, h->p, true, true, lua_gettop(L));
    lua_pop(L, 1);
  }
  return 0;
}

/*
** ex:shutdown{wait = true, cancel_futures = false, interrupt = false}:
** see stop_pool. From the manager (a done-callback), waiting would wait
** for itself: refused.
*/
static int ipool_shutdown(lua_State *L) {
  iproxy *px = check_ipool(L, 1);
  ipool *p = px->p;
  bool wait, cancel, interrupt;
  host_executor_shutdown_options(L, 2, &wait, &cancel, &interrupt);
  lua_getiuservalue(L, 1, 1);
  bool own = stop_pool(L, p, cancel, interrupt, lua_gettop(L));
  if (!wait) return 0;
  if (own)
    return luaL_error(L, "cannot join current thread (a done-callback cannot wait for its own pool)");
  host_deadline never = host_deadline_in(-1);
  pthread_mutex_lock(&p->mu);
  while (!p->manager_done) {
    if (host_cond_wait(L, &p->mu, &p->end_cv, &never) == HOST_WAIT_INTERRUPTED)
      return host_raise_interrupt(L);
    pthread_mutex_lock(&p->mu);
  }
  pthread_mutex_unlock(&p->mu);
  return 0;
}

/*
** __gc: the program dropped the pool. Like shutdown{wait = false}: queued
** work still runs, then the workers and the manager end and let go.
*/
static int ipool_gc(lua_State *L) {
  iproxy *px = host_object_finalize(L, IPOOL_TYPE);
  if (px == NULL) return 0;
  host_executor_track(L, 1, IPOOL_TYPE, false);
  if (px->p != NULL) {
    pthread_mutex_lock(&px->p->mu);
    begin_shutdown(px->p);
    pthread_mutex_unlock(&px->p->mu);
    ipool_unref(px->p);
    px->p = NULL;
  }
  return 0;
}

static int ipool_tostring(lua_State *L) {
  if (host_object_tostring_finalized(L, IPOOL_TYPE)) return 1;
  iproxy *px = check_ipool(L, 1);
  pthread_mutex_lock(&px->p->mu);
  bool broken = px->p->broken, shut = px->p->shutdown;
  pthread_mutex_unlock(&px->p->mu);
  lua_pushfstring(L, "host.InterpreterPoolExecutor (%d workers%s%s): %p", px->p->nworkers,
                  broken ? ", broken" : "", shut ? ", shut down" : "", (void *)px->p);
  return 1;
}

/* Encodes initializer(initargs...) of the options at 1 into p->init. */
static void encode_initializer(lua_State *L, ipool *p) {
  int first = lua_gettop(L) + 1;
  int nargs = host_executor_push_initializer(L, 1);
  if (nargs < 0) return;
  if (host_executor_encode_initializer(L, first, nargs + 1, &p->init, &p->init_len) != LUA_OK)
    lua_error(L);
  lua_settop(L, first - 1);
}

/*
** Encodes into p->no_state the error the futures of p get if a worker's
** universe cannot be opened (fail_broken), made now, while a universe is
** at hand. Left NULL when memory runs out: they then fail with no
** payload, which result() reports as an error that was lost.
*/
static void encode_no_state(lua_State *L, ipool *p) {
  host_error_push(L, "BrokenInterpreterPool", NO_STATE_MSG, 0);
  if (host_codec_encode(L, lua_gettop(L), 1, &p->no_state, &p->no_state_len) != LUA_OK)
    lua_pop(L, 1);
  lua_pop(L, 1);
}

/*
** Copies package[field] of the caller's universe into *out (left NULL
** when it is not a string, or memory runs out: workers keep the default).
*/
static void copy_package_field(lua_State *L, const char *field, char **out) {
  int top = lua_gettop(L);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, LUA_LOADLIBNAME) == LUA_TTABLE &&
      lua_getfield(L, -1, field) == LUA_TSTRING)
    *out = strdup(lua_tostring(L, -1));
  lua_settop(L, top);
}

/*
** Undoes a pool whose threads could not all start (errno e): its workers
** end and are joined. Returns thread.start's failure: nil, message, errno.
*/
static int abandon_start(lua_State *L, ipool *p, int e) {
  pthread_mutex_lock(&p->mu);
  begin_shutdown(p);
  pthread_mutex_unlock(&p->mu);
  join_workers(L, p);
  return host_thread_start_failed(L, e);
}

/*
** futures.InterpreterPoolExecutor{max_workers =, initializer =, initargs =}.
** The initializer and its arguments are encoded now and run in each worker.
** Returns the pool, or nil, message, errno when a thread cannot start.
*/
static int ipool_new(lua_State *L) {
  static const char *const known[] = {"max_workers", "initializer", "initargs", NULL};
  lua_Integer n = host_executor_options(L, host_executor_cores(), known);
  if (host_exiting(L)) return luaL_error(L, "cannot start a new pool after interpreter shutdown");
  lua_settop(L, 1);
  iproxy *px = host_object_new(L, sizeof *px, IPOOL_TYPE, 2);
  int idx = lua_gettop(L);
  ipool *p = calloc(1, sizeof *p + sizeof(wslot) * (size_t)n);
  if (p == NULL) return luaL_error(L, "not enough memory");
  atomic_init(&p->refs, 1);
  pthread_mutex_init(&p->mu, NULL);
  host_cond_spin_init(&p->work_cv);
  host_cond_init(&p->done_cv);
  host_cond_init(&p->end_cv);
  p->nworkers = (int)n;
  p->trace = host_trace_share(L);
  px->p = p;  /* from here, __gc frees it */
  lua_newtable(L);
  lua_setiuservalue(L, idx, 1);
  ihandle *h = lua_newuserdatauv(L, sizeof *h, 0);
  h->p = NULL;
  luaL_setmetatable(L, HANDLE_TYPE);
  atomic_fetch_add(&p->refs, 1);
  h->p = p;
  lua_setiuservalue(L, idx, 2);
  copy_package_field(L, "path", &p->path);
  copy_package_field(L, "cpath", &p->cpath);
  encode_initializer(L, p);
  encode_no_state(L, p);
  int e = start_workers(p);
  if (e != 0) return abandon_start(L, p, e);
  /* the manager thread, over the handle and the table of futures in flight */
  lua_getiuservalue(L, idx, 2);
  lua_getiuservalue(L, idx, 1);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, MANAGED);  /* for stop_nested, weak keys */
  if (!lua_getmetatable(L, -1)) {
    host_set_weak(L, "k");
  } else {
    lua_pop(L, 1);
  }
  lua_pushvalue(L, -3);
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  lua_pushcclosure(L, manager_main, 2);
  e = host_thread_start(L, "InterpreterPoolManager", false, 0);
  if (e != 0) return abandon_start(L, p, e);
  lua_settop(L, idx);
  host_executor_track(L, idx, IPOOL_TYPE, true);
  return 1;
}

static const luaL_Reg ipool_methods[] = {
  {"submit", ipool_submit},
  {"shutdown", ipool_shutdown},
  {NULL, NULL}
};

static const luaL_Reg handle_meta[] = {
  {"__gc", handle_gc},
  {NULL, NULL}
};

static const luaL_Reg no_methods[] = {
  {NULL, NULL}
};

void host_open_interpreter_pool(lua_State *L) {
  host_type_define(L, HANDLE_TYPE, no_methods, handle_meta, NULL);
  host_executor_define(L, IPOOL_TYPE, ipool_methods, ipool_gc, ipool_tostring);
  lua_pushcfunction(L, ipool_new);
  lua_setfield(L, -2, "InterpreterPoolExecutor");
}
