/*
** executor_state.c: futures.InterpreterPoolExecutor, CPython 3.14's twin:
** each worker is an OS thread that runs its own universe (its own
** lua_State, libraries and GIL), so CPU-bound Lua runs in parallel without
** fork. Tasks and results cross in memory through the codec.
**
** The shared part is a refcounted C struct (`ipool`), used by the caller's
** proxy, the workers and a manager thread, under its mutex: a queue of work
** items (future + encoded task) and a list of completed futures. A worker
** completes a future itself (its waiters wake at once), then hands it to
** the manager, a host.Thread of the caller's universe that runs the done
** callbacks there and lets go of the proxy.
**
** An interrupt can stop a runaway task (what CPython lacks): the task's
** universe gets host_interrupt, the hook that lua.c arms for Ctrl-C, and
** the task fails with "interrupted!". It comes from
** future:cancel{interrupt = true} or shutdown{cancel_futures = true,
** interrupt = true}.
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

#define IPOOL_TYPE "host.InterpreterPoolExecutor"

/* A task waiting for a worker, or a completed future waiting for the manager. */
typedef struct item {
  struct item *next;
  host_future *f;     /* one reference */
  char *payload;      /* the encoded task; NULL on the done list */
  size_t len;
} item;

typedef struct wslot {
  pthread_t thread;
  bool started;
  lua_State *L;            /* its universe, while it runs */
  host_future *current;    /* the task it runs, for interrupts */
} wslot;

typedef struct ipool {
  atomic_int refs;         /* the proxy, each worker, the manager */
  pthread_mutex_t mu;
  pthread_cond_t work_cv;  /* workers wait for items */
  pthread_cond_t done_cv;  /* the manager waits for completions */
  item *head, *tail;       /* work */
  item *done;              /* completed futures, for the manager */
  bool shutdown, broken, manager_done;
  int alive;               /* workers not yet ended */
  char *init;              /* encoded initializer and initargs, or NULL */
  size_t init_len;
  char *broken_msg;
  int nworkers;
  wslot w[];
} ipool;

/* The proxy: the struct, and uservalues: 1 {[lightuserdata future] = proxy}
** for futures in flight, 2 a waitq box for shutdown. */
typedef struct iproxy {
  ipool *p;
  host_waitq *q;
} iproxy;

static void ipool_unref(ipool *p) {
  if (atomic_fetch_sub(&p->refs, 1) != 1) return;
  for (item *it = p->head; it != NULL;) {
    item *next = it->next;
    host_future_unref(it->f);
    free(it->payload);
    free(it);
    it = next;
  }
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->work_cv);
  pthread_cond_destroy(&p->done_cv);
  free(p->init);
  free(p->broken_msg);
  free(p);
}

/*
** Lists a completed future for the caller's universe to forget (mu held).
** The manager is woken only when the future has callbacks to run; else the
** list waits for the next submit or for shutdown, which saves a wake-up
** per task.
*/
static void post_done(ipool *p, item *it, bool wake) {
  free(it->payload);
  it->payload = NULL;
  it->next = p->done;
  p->done = it;
  if (wake) pthread_cond_signal(&p->done_cv);
}

/* ---- a worker thread and its universe ---- */

/*
** Completes it->f with an encoded BrokenInterpreterPool error made in the
** worker's universe L, and posts it (mu held).
*/
static void fail_broken(lua_State *L, ipool *p, item *it) {
  host_error_push(L, "BrokenInterpreterPool", p->broken_msg, 0);
  char *buf = NULL;
  size_t len = 0;
  if (host_codec_encode(L, lua_gettop(L), 1, &buf, &len) != LUA_OK) lua_pop(L, 1);
  lua_pop(L, 1);
  if (host_future_set_running(it->f)) host_future_set_payload(it->f, false, buf, len);
  else free(buf);
  post_done(p, it, true);
}

/* Runs the pool's initializer in L; on failure breaks the pool (mu not held). */
static bool run_initializer(lua_State *L, ipool *p) {
  if (p->init == NULL) return true;
  int n = 0;
  int status = host_codec_decode(L, p->init, p->init_len, HOST_CODEC_FUNCTIONS, &n);
  if (status == LUA_OK) status = host_pcall(L, n - 1, 0);
  if (status == LUA_OK) return true;
  const char *why = lua_pushfstring(L, "an interpreter initializer failed: %s", host_error_tostring(L));
  pthread_mutex_lock(&p->mu);
  if (!p->broken) {
    p->broken = true;
    p->broken_msg = strdup(why);
  }
  while (p->head != NULL) {
    item *it = p->head;
    p->head = it->next;
    fail_broken(L, p, it);
  }
  p->tail = NULL;
  pthread_cond_broadcast(&p->work_cv);
  pthread_mutex_unlock(&p->mu);
  lua_settop(L, 0);
  return false;
}

/* Runs one task (its payload) in L and completes its future; posts it. */
static void run_task(lua_State *L, ipool *p, item *it) {
  int base = lua_gettop(L);
  int n = 0;
  int status = host_codec_decode(L, it->payload, it->len, HOST_CODEC_FUNCTIONS, &n);
  if (status == LUA_OK) status = host_pcall(L, n - 1, LUA_MULTRET);
  char *buf = NULL;
  size_t len = 0;
  bool ok = status == LUA_OK;
  if (ok && host_codec_encode(L, base + 1, lua_gettop(L) - base, &buf, &len) != LUA_OK) {
    ok = false;  /* an unserializable result fails that future alone */
    lua_pushfstring(L, "cannot send the result back: %s", lua_tostring(L, -1));
  }
  if (!ok && host_codec_encode(L, lua_gettop(L), 1, &buf, &len) != LUA_OK) {
    host_error_tostring(L);  /* the error could not cross: its text can */
    host_codec_encode(L, lua_gettop(L), 1, &buf, &len);
  }
  lua_settop(L, base);
  host_future_set_payload(it->f, ok, buf, len);
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

/* The OS thread of one worker: its own universe, serving tasks. */
static void *worker_thread(void *arg) {
  ipool *p = ((worker_arg *)arg)->p;
  wslot *ws = &p->w[((worker_arg *)arg)->index];
  free(arg);
  lua_State *L = host_newstate();
  if (L != NULL) {
    luaL_openlibs(L);
    host_openlibs(L);
    lua_getglobal(L, "require");  /* map's chunks name host.futures._run_chunk */
    lua_pushliteral(L, "host.futures");
    if (host_pcall(L, 1, 0) != LUA_OK) lua_pop(L, 1);
  }
  pthread_mutex_lock(&p->mu);
  ws->L = L;
  pthread_mutex_unlock(&p->mu);
  host_deadline never = host_deadline_in(-1);
  if (L != NULL && run_initializer(L, p)) {
    for (;;) {
      pthread_mutex_lock(&p->mu);
      if (p->head == NULL && !p->shutdown && !p->broken) {
        host_cond_wait(L, &p->mu, &p->work_cv, &never);  /* our GIL goes meanwhile */
        continue;
      }
      item *it = p->head;
      if (it == NULL) {
        pthread_mutex_unlock(&p->mu);
        break;
      }
      p->head = it->next;
      if (p->head == NULL) p->tail = NULL;
      if (!host_future_set_running(it->f)) {  /* cancelled while queued */
        pthread_mutex_unlock(&p->mu);
        host_future_unref(it->f);
        free(it->payload);
        free(it);
        continue;
      }
      ws->current = it->f;
      host_clear_interrupt(L);
      pthread_mutex_unlock(&p->mu);
      run_task(L, p, it);
      pthread_mutex_lock(&p->mu);
      ws->current = NULL;
      pthread_mutex_unlock(&p->mu);
    }
  }
  pthread_mutex_lock(&p->mu);
  ws->L = NULL;
  pthread_mutex_unlock(&p->mu);
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
  return luaL_checkudata(L, idx, IPOOL_TYPE);
}

/*
** Takes the list of completed futures and, in the caller's universe, runs
** their callbacks (if not run yet) and forgets their proxies (inflight is
** the proxy's table of futures in flight).
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

/*
** The manager: a host.Thread of the caller's universe that runs the done
** callbacks of completed futures and forgets their proxies. Upvalue 1 is
** the pool proxy.
*/
static int manager_main(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(1));
  int idx = lua_gettop(L);
  iproxy *px = check_ipool(L, idx);
  ipool *p = px->p;
  host_deadline never = host_deadline_in(-1);
  lua_getiuservalue(L, idx, 1);
  int inflight = lua_gettop(L);
  for (;;) {
    pthread_mutex_lock(&p->mu);
    if (p->done == NULL && !(p->shutdown && p->alive == 0)) {
      host_cond_wait(L, &p->mu, &p->done_cv, &never);
      continue;
    }
    bool finished = p->done == NULL;
    pthread_mutex_unlock(&p->mu);
    if (finished) break;
    forget_done(L, p, inflight);
  }
  pthread_mutex_lock(&p->mu);
  p->manager_done = true;
  pthread_mutex_unlock(&p->mu);
  host_waitq_notify(px->q);
  return 0;
}

/* The interrupter of the pool's futures: upvalue 1 is the pool proxy. */
static int interrupt_task(lua_State *L) {
  iproxy *px = check_ipool(L, lua_upvalueindex(1));
  host_future *f = host_future_check(L, 1);
  bool hit = false;
  pthread_mutex_lock(&px->p->mu);
  for (int i = 0; i < px->p->nworkers; i++) {
    wslot *ws = &px->p->w[i];
    if (ws->current == f && ws->L != NULL) {
      host_interrupt(ws->L);
      hit = true;
    }
  }
  pthread_mutex_unlock(&px->p->mu);
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
  if (broken) host_error_push(L, "BrokenInterpreterPool", why, 0);
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
  luaL_checkany(L, 2);
  int nvalues = lua_gettop(L) - 1;  /* fn and its arguments, from 2 */
  if (refused(L, p)) return lua_error(L);
  lua_getiuservalue(L, 1, 1);
  int inflight = lua_gettop(L);
  forget_done(L, p, inflight);  /* what finished since the last submit */
  host_future *f = host_future_push_new(L);
  int fut = lua_gettop(L);
  lua_pushcfunction(L, host_executor_decoder);
  host_future_set_decoder(L, fut);
  lua_pushvalue(L, 1);
  lua_pushcclosure(L, interrupt_task, 1);
  host_future_set_interrupter(L, fut);
  lua_pushlightuserdata(L, f);  /* in flight until the caller's side forgets it */
  lua_pushvalue(L, fut);
  lua_rawset(L, inflight);
  item *it = calloc(1, sizeof *it);
  int status = it == NULL ? LUA_ERRMEM : host_codec_encode(L, 2, nvalues, &it->payload, &it->len);
  pthread_mutex_lock(&p->mu);
  bool queued = status == LUA_OK && !p->broken && !p->shutdown;
  if (queued) {
    it->f = f;
    host_future_ref(f);
    if (p->tail) p->tail->next = it;
    else p->head = it;
    p->tail = it;
    pthread_cond_signal(&p->work_cv);
  }
  pthread_mutex_unlock(&p->mu);
  if (queued) {
    lua_settop(L, fut);
    return 1;
  }
  if (it != NULL) free(it->payload);  /* NULL when the encoding failed */
  free(it);
  lua_pushlightuserdata(L, f);
  lua_pushnil(L);
  lua_rawset(L, inflight);
  if (status == LUA_ERRMEM) return luaL_error(L, "not enough memory");
  if (status != LUA_OK) return luaL_error(L, "cannot submit: %s", lua_tostring(L, -1));
  refused(L, p);  /* the pool broke or shut down since the check above */
  return lua_error(L);
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
** ex:shutdown{wait = true, cancel_futures = false, interrupt = false}:
** `interrupt` also interrupts the tasks running now.
*/
static int ipool_shutdown(lua_State *L) {
  iproxy *px = check_ipool(L, 1);
  ipool *p = px->p;
  bool wait, cancel, interrupt;
  host_executor_shutdown_options(L, 2, &wait, &cancel, &interrupt);
  if (cancel) {  /* cancel what waits in the queue, through the proxies */
    lua_getiuservalue(L, 1, 1);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      host_future_cancel(L, -1);
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  pthread_mutex_lock(&p->mu);
  p->shutdown = true;
  if (interrupt) {
    for (int i = 0; i < p->nworkers; i++)
      if (p->w[i].current != NULL && p->w[i].L != NULL) host_interrupt(p->w[i].L);
  }
  pthread_cond_broadcast(&p->work_cv);
  pthread_cond_signal(&p->done_cv);
  pthread_mutex_unlock(&p->mu);
  if (!wait) return 0;
  host_deadline never = host_deadline_in(-1);
  for (;;) {
    pthread_mutex_lock(&p->mu);
    bool done = p->manager_done;
    pthread_mutex_unlock(&p->mu);
    if (done) break;
    if (host_waitq_wait(L, px->q, &never) == HOST_WAIT_INTERRUPTED) return host_raise_interrupt(L);
  }
  join_workers(L, p);
  return 0;
}

/* __gc: the workers were joined by shutdown (or at exit); let go. */
static int ipool_gc(lua_State *L) {
  iproxy *px = check_ipool(L, 1);
  host_executor_track(L, 1, IPOOL_TYPE, false);
  if (px->p != NULL) {
    pthread_mutex_lock(&px->p->mu);
    px->p->shutdown = true;
    pthread_cond_broadcast(&px->p->work_cv);
    pthread_mutex_unlock(&px->p->mu);
    for (int i = 0; i < px->p->nworkers; i++)
      if (px->p->w[i].started) pthread_detach(px->p->w[i].thread);
    ipool_unref(px->p);
    px->p = NULL;
  }
  host_waitq_unref(px->q);
  px->q = NULL;
  return 0;
}

static int ipool_tostring(lua_State *L) {
  iproxy *px = check_ipool(L, 1);
  pthread_mutex_lock(&px->p->mu);
  bool broken = px->p->broken, shut = px->p->shutdown;
  pthread_mutex_unlock(&px->p->mu);
  lua_pushfstring(L, "host.InterpreterPoolExecutor (%d workers%s%s): %p", px->p->nworkers,
                  broken ? ", broken" : "", shut ? ", shut down" : "", (void *)px->p);
  return 1;
}

/*
** futures.InterpreterPoolExecutor{max_workers =, initializer =, initargs =}.
** The initializer and its arguments are encoded now and run in each worker.
*/
static int ipool_new(lua_State *L) {
  lua_Integer n = host_executor_options(L, host_executor_cores());
  iproxy *px = lua_newuserdatauv(L, sizeof *px, 1);
  px->p = NULL;
  px->q = NULL;
  luaL_setmetatable(L, IPOOL_TYPE);
  int idx = lua_gettop(L);
  lua_newtable(L);
  lua_setiuservalue(L, idx, 1);
  px->q = host_waitq_new();
  ipool *p = calloc(1, sizeof *p + sizeof(wslot) * (size_t)n);
  if (px->q == NULL || p == NULL) {
    free(p);
    return luaL_error(L, "not enough memory");
  }
  atomic_init(&p->refs, 1);
  pthread_mutex_init(&p->mu, NULL);
  host_cond_init(&p->work_cv);
  host_cond_init(&p->done_cv);
  p->nworkers = (int)n;
  px->p = p;
  if (!lua_isnil(L, 2)) {  /* encode initializer(table.unpack(initargs)) */
    int first = lua_gettop(L) + 1;
    lua_pushvalue(L, 2);
    int nargs = 0;
    if (lua_istable(L, 3)) {
      nargs = (int)luaL_len(L, 3);
      for (int i = 1; i <= nargs; i++) lua_rawgeti(L, 3, i);
    }
    if (host_codec_encode(L, first, nargs + 1, &p->init, &p->init_len) != LUA_OK)
      return luaL_error(L, "cannot send the initializer: %s", lua_tostring(L, -1));
    lua_settop(L, idx);
  }
  int e = start_workers(p);
  if (e != 0) {
    pthread_mutex_lock(&p->mu);
    p->shutdown = true;
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->mu);
    join_workers(L, p);
    errno = e;
    return luaL_fileresult(L, 0, "pthread_create");
  }
  host_executor_start(L, idx, IPOOL_TYPE, manager_main, "InterpreterPoolManager");
  return 1;
}

static const luaL_Reg ipool_methods[] = {
  {"submit", ipool_submit},
  {"shutdown", ipool_shutdown},
  {NULL, NULL}
};

void host_open_interpreter_pool(lua_State *L) {
  host_executor_define(L, IPOOL_TYPE, ipool_methods, ipool_gc, ipool_tostring);
  lua_pushcfunction(L, ipool_new);
  lua_setfield(L, -2, "InterpreterPoolExecutor");
}
