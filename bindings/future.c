/*
** future.c: the Future (see future.h), futures.wait and
** futures.as_completed, after CPython's concurrent/futures/_base.py.
**
** The C future's state is guarded by its mutex, because a thread outside
** the universe may complete it. The proxy's uservalues (outcome, callbacks,
** decoder) are Lua values, touched with the GIL held. A completer from
** outside the universe stores its payload and flips the state in one
** critical section. A completer in the universe (GIL held) first claims the
** future by flipping the state, so a second completion changes nothing,
** and stores the outcome before it lets the GIL go: a waiter that sees
** FINISHED needs the GIL to read the outcome, and finds it in place.
**
** A waiter sleeps on the future's condvar only when a thread outside the
** universe may complete it (a decoder's pools: "from outside"). Every other
** future is completed by GIL holders alone, so its state cannot change while
** a waiter holds the GIL: the waiter sleeps on the proxy's wait queue
** (host_waitq_wait), and the completer, right after it finishes the future,
** hands each waiter a place in the GIL's line (host_waitq_notify), so it
** wakes once, holding the GIL, instead of waking to sleep again on the GIL.
**
** Waiting on several futures (wait, as_completed) takes a reference to
** each (a "future set" userdata owns them, so an error or another thread
** dropping the futures frees nothing under the waiter) and installs one
** waiter node per future in that future's list for the duration of one
** blocking call; completion signals every waiter in the list.
*/
#include <limits.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "future.h"
#include "runtime.h"

#define FUTURE_TYPE "host.Future"
#define SET_TYPE "host.FutureSet"

/* Uservalues of a proxy. */
enum {
  UV_OUTCOME = 1, UV_CALLBACKS = 2, UV_DECODER = 3, UV_INTERRUPTER = 4, UV_WAIT_CHECK = 5
};

/* One thread blocked on several futures. */
typedef struct multi_waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int fired;
} multi_waiter;

/* A waiter's node in one future's list. */
typedef struct waiter_node {
  multi_waiter *w;
  struct waiter_node *next;
} waiter_node;

struct host_future {
  atomic_int refs;
  pthread_mutex_t mu;
  host_cond cv;        /* waiters from outside spin on it before they sleep */
  host_future_state state;
  bool failed;
  bool has_callbacks;  /* one was added before it was done */
  bool callbacks_ran;
  bool from_outside;  /* completed by payload, maybe with no GIL of ours (a decoder's pools) */
  char *payload;      /* outcome bytes from elsewhere, until decoded */
  size_t payload_len;
  waiter_node *waiters;
};

/*
** A universe's view of a future; it owns one reference to f (NULL once
** finalized) and the wait queue q of a future completed from inside (made
** by the first wait; used and dropped with the GIL held).
*/
typedef struct proxy {
  host_object obj;
  host_future *f;
  host_waitq *q;
} proxy;

/* ---- the C future ---- */

static host_future *future_new(void) {
  host_future *f = calloc(1, sizeof *f);
  if (f == NULL) return NULL;
  atomic_init(&f->refs, 1);
  pthread_mutex_init(&f->mu, NULL);
  host_cond_spin_init(&f->cv);
  return f;
}

void host_future_ref(host_future *f) {
  atomic_fetch_add(&f->refs, 1);
}

void host_future_unref(host_future *f) {
  if (f == NULL || atomic_fetch_sub(&f->refs, 1) != 1) return;
  pthread_mutex_destroy(&f->mu);
  free(f->payload);
  free(f);
}

host_future_state host_future_state_of(host_future *f) {
  if (f == NULL) return HOST_FUTURE_CANCELLED;
  pthread_mutex_lock(&f->mu);
  host_future_state s = f->state;
  pthread_mutex_unlock(&f->mu);
  return s;
}

bool host_future_set_running(host_future *f) {
  if (f == NULL) return false;
  pthread_mutex_lock(&f->mu);
  bool ok = f->state == HOST_FUTURE_PENDING;
  if (ok) f->state = HOST_FUTURE_RUNNING;
  pthread_mutex_unlock(&f->mu);
  return ok;
}

/*
** Moves f to a final state (mutex held) and wakes the multi-waiters (whose
** nodes live only under the mutex). The caller wakes the waiters on f's
** condvar after it unlocks (finish_wake), so that they do not wake to
** block on the mutex it still holds.
*/
static void finish_locked(host_future *f, host_future_state state, bool failed) {
  f->state = state;
  f->failed = failed;
  host_cond_changed(&f->cv);
  for (waiter_node *n = f->waiters; n != NULL; n = n->next) {
    pthread_mutex_lock(&n->w->mu);
    n->w->fired++;
    pthread_cond_signal(&n->w->cv);
    pthread_mutex_unlock(&n->w->mu);
  }
}

/*
** Wakes the waiters on f's condvar, after finish_locked and the unlock of
** f's mutex; the caller's reference keeps f alive meanwhile.
*/
static void finish_wake(host_future *f) {
  host_cond_wake_all(&f->cv);
}

static bool is_done(host_future_state s) {
  return s == HOST_FUTURE_CANCELLED || s == HOST_FUTURE_FINISHED;
}

bool host_future_set_payload(host_future *f, bool ok, char *bytes, size_t len) {
  if (f == NULL) {
    free(bytes);
    return false;
  }
  pthread_mutex_lock(&f->mu);
  bool fresh = !is_done(f->state);
  if (fresh) {
    f->payload = bytes;
    f->payload_len = len;
    finish_locked(f, HOST_FUTURE_FINISHED, !ok);
  }
  pthread_mutex_unlock(&f->mu);
  if (fresh) finish_wake(f);  /* the caller holds a reference to f */
  else free(bytes);
  return fresh;
}

/* ---- proxies ---- */

host_future *host_future_check(lua_State *L, int idx) {
  return ((proxy *)host_object_check(L, idx, FUTURE_TYPE))->f;
}

host_future *host_future_of(lua_State *L, int idx) {
  return ((proxy *)luaL_checkudata(L, idx, FUTURE_TYPE))->f;  /* NULL once finalized */
}

/* The future of the proxy at 1, for the methods (upvalue 1: the metatable). */
static host_future *check_self(lua_State *L) {
  return ((proxy *)host_object_check_self(L, FUTURE_TYPE))->f;
}

host_future *host_future_push_new(lua_State *L) {
  proxy *p = host_object_new(L, sizeof *p, FUTURE_TYPE, 5);
  p->f = future_new();
  if (p->f == NULL) luaL_error(L, "not enough memory");
  return p->f;
}

/*
** __gc: drops the proxy's reference; later uses raise (see util.h), and a
** pool that still holds the proxy skips it (host_future_of). Threads that
** wait on it (a __gc called by hand) wake and raise: each holds its own
** reference to f while it waits.
*/
static int future_gc(lua_State *L) {
  proxy *p = host_object_finalize(L, FUTURE_TYPE);
  if (p == NULL) return 0;
  if (p->q != NULL) {
    host_waitq_notify(p->q);
    host_waitq_unref(p->q);
    p->q = NULL;
  }
  if (p->f != NULL) {  /* NULL when no future could be made for it */
    pthread_mutex_lock(&p->f->mu);
    host_cond_changed(&p->f->cv);
    pthread_mutex_unlock(&p->f->mu);
    host_cond_wake_all(&p->f->cv);
  }
  host_future_unref(p->f);
  p->f = NULL;
  return 0;
}

/* Wakes the threads that wait on the proxy at idx in its queue (GIL held). */
static void wake_waiters(lua_State *L, int idx) {
  proxy *p = lua_touserdata(L, idx);
  if (p->q != NULL) host_waitq_notify(p->q);
}

/* Reports an error raised by a callback on stderr; it hurts nothing else. */
static void report_callback_error(lua_State *L) {
  const char *msg = host_error_tostring(L);
  fprintf(stderr, "host: exception calling callback for future: %s\n", msg);
  fflush(stderr);
  lua_pop(L, 1);
}

/* Calls fn (on top, popped) with the proxy at idx, reporting its errors. */
static void call_callback(lua_State *L, int idx) {
  lua_pushvalue(L, idx);
  if (host_pcall(L, 1, 0) != LUA_OK) report_callback_error(L);
}

bool host_future_wants_callbacks(host_future *f) {
  if (f == NULL) return false;
  pthread_mutex_lock(&f->mu);
  bool wants = f->has_callbacks && !f->callbacks_ran;
  pthread_mutex_unlock(&f->mu);
  return wants;
}

/* Runs (once) the done-callbacks of the proxy at idx, whose future is f. */
static void run_callbacks(lua_State *L, int idx, host_future *f) {
  if (f == NULL) return;
  pthread_mutex_lock(&f->mu);
  bool run = is_done(f->state) && !f->callbacks_ran;
  if (run) f->callbacks_ran = true;
  pthread_mutex_unlock(&f->mu);
  if (!run) return;
  if (lua_getiuservalue(L, idx, UV_CALLBACKS) == LUA_TTABLE) {
    lua_pushnil(L);  /* forget them before any runs: each runs once */
    lua_setiuservalue(L, idx, UV_CALLBACKS);
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, -1, i);
      call_callback(L, idx);
    }
  }
  lua_pop(L, 1);
}

void host_future_run_callbacks(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  run_callbacks(L, idx, host_future_of(L, idx));
}

/*
** Finishes the proxy at idx with the outcome table on top (popped) and runs
** its callbacks; returns false, storing nothing, when it was done already.
** The caller has checked that idx holds a proxy (read its future again
** here: making the outcome may have run a finalizer). The state flips
** first and the outcome is stored before the GIL can go
** (lua_setiuservalue neither allocates nor calls Lua).
*/
static bool finish_with(lua_State *L, int idx, bool failed) {
  host_future *f = ((proxy *)lua_touserdata(L, idx))->f;
  if (f != NULL) pthread_mutex_lock(&f->mu);
  bool fresh = f != NULL && !is_done(f->state);
  if (fresh) finish_locked(f, HOST_FUTURE_FINISHED, failed);
  if (f != NULL) pthread_mutex_unlock(&f->mu);
  if (fresh) finish_wake(f);  /* the proxy at idx holds a reference */
  if (!fresh) {
    lua_pop(L, 1);
    return false;
  }
  lua_setiuservalue(L, idx, UV_OUTCOME);
  wake_waiters(L, idx);  /* before callbacks, which may block */
  run_callbacks(L, idx, f);
  return true;
}

bool host_future_fail_lost(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  host_future *f = host_future_of(L, idx);
  if (!host_future_set_payload(f, false, NULL, 0)) return false;
  wake_waiters(L, idx);  /* before callbacks, which may block */
  run_callbacks(L, idx, f);
  return true;
}

bool host_future_set_result(lua_State *L, int idx, int n) {
  idx = lua_absindex(L, idx);
  luaL_checkstack(L, 4, "too many results");  /* after a LUA_MULTRET call: no room */
  host_future_of(L, idx);  /* a bad idx raises before the values move */
  lua_createtable(L, n, 1);
  lua_insert(L, -(n + 1));
  for (int i = n; i >= 1; i--) lua_rawseti(L, -(i + 1), i);  /* table under vi */
  lua_pushinteger(L, n);
  lua_setfield(L, -2, "n");
  return finish_with(L, idx, false);
}

bool host_future_set_error(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  luaL_checkstack(L, 4, NULL);
  host_future_of(L, idx);  /* a bad idx raises before the values move */
  lua_createtable(L, 1, 1);
  lua_insert(L, -2);
  lua_rawseti(L, -2, 1);
  lua_pushinteger(L, 1);
  lua_setfield(L, -2, "n");
  return finish_with(L, idx, true);
}

void host_future_set_decoder(lua_State *L, int idx) {
  host_future *f = host_future_of(L, idx);
  if (f != NULL) f->from_outside = true;  /* at submit, before anyone waits */
  lua_setiuservalue(L, idx, UV_DECODER);
}

void host_future_set_interrupter(lua_State *L, int idx) {
  lua_setiuservalue(L, idx, UV_INTERRUPTER);
}

void host_future_set_wait_check(lua_State *L, int idx) {
  lua_setiuservalue(L, idx, UV_WAIT_CHECK);
}

/*
** True, with the reason pushed, when the calling thread is the one that
** the future of the proxy at idx needs to complete, so that its wait could
** never end (the proxy's wait check says so); false with nothing pushed.
*/
static bool push_wait_refusal(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  if (lua_getiuservalue(L, idx, UV_WAIT_CHECK) != LUA_TFUNCTION) {
    lua_pop(L, 1);
    return false;
  }
  lua_pushvalue(L, idx);
  lua_call(L, 1, 1);
  if (lua_isstring(L, -1)) return true;
  lua_pop(L, 1);
  return false;
}

bool host_future_cancel(lua_State *L, int idx) {
  host_future *f = host_future_of(L, idx);
  if (f == NULL) return false;
  pthread_mutex_lock(&f->mu);
  bool cancelled = f->state == HOST_FUTURE_CANCELLED;
  bool now = f->state == HOST_FUTURE_PENDING;
  if (now) {
    finish_locked(f, HOST_FUTURE_CANCELLED, false);
    cancelled = true;
  }
  pthread_mutex_unlock(&f->mu);
  if (now) finish_wake(f);  /* the proxy at idx holds a reference */
  if (cancelled) {
    wake_waiters(L, idx);
    host_future_run_callbacks(L, idx);
  }
  return cancelled;
}

bool host_future_failed(host_future *f) {
  if (f == NULL) return false;
  pthread_mutex_lock(&f->mu);
  bool failed = f->state == HOST_FUTURE_FINISHED && f->failed;
  pthread_mutex_unlock(&f->mu);
  return failed;
}

/*
** Waits (GIL released) until the future of the proxy at idx is done or the
** deadline passes, and returns its state. A future from outside is waited
** for on its condvar. Any other is changed by GIL holders alone, so not
** while we hold the GIL: we wait on the proxy's queue, where a wait
** without a deadline counts as blocked for deadlock detection. Raises
** "interrupted!" in an interrupted main thread, and "attempt to use a
** finalized host.Future" when the proxy is finalized meanwhile. A wait
** that could never end (see host_future_set_wait_check) raises instead,
** unless it would not block (the deadline has passed: a poll). p is the
** proxy at idx, checked by the caller.
*/
static host_future_state wait_proxy(lua_State *L, int idx, proxy *p, const host_deadline *d) {
  host_future *f = p->f;
  if (!is_done(host_future_state_of(f)) && !host_deadline_passed(d) && push_wait_refusal(L, idx))
    lua_error(L);
  host_future_ref(f);  /* f outlives a __gc of p during the wait */
  host_future_state s;
  host_wait_result r = HOST_WAIT_WOKEN;
  bool no_memory = false;
  for (;;) {
    pthread_mutex_lock(&f->mu);
    s = f->state;
    if (is_done(s) || p->f == NULL || r == HOST_WAIT_INTERRUPTED || host_deadline_passed(d)) {
      pthread_mutex_unlock(&f->mu);
      break;
    }
    if (f->from_outside) {
      host_wait_on(L, "host.Future", "pending", f, NULL);
      r = host_cond_wait_spin(L, &f->mu, &f->cv, d);  /* unlocks mu */
      continue;
    }
    pthread_mutex_unlock(&f->mu);
    if (p->q == NULL && (p->q = host_waitq_new()) == NULL) {
      no_memory = true;
      break;
    }
    host_wait_on(L, "host.Future", "pending", f, NULL);
    r = host_waitq_wait(L, p->q, d);
  }
  host_future_unref(f);
  if (p->f == NULL) host_object_check(L, idx, FUTURE_TYPE);  /* finalized meanwhile: raises */
  if (r == HOST_WAIT_INTERRUPTED) host_raise_interrupt(L);
  if (no_memory) luaL_error(L, "not enough memory");
  return s;
}

/* wait_proxy for the proxy at idx (raises unless it is a live host.Future). */
static host_future_state wait_done(lua_State *L, int idx, const host_deadline *d) {
  return wait_proxy(L, idx, host_object_check(L, idx, FUTURE_TYPE), d);
}

host_future_state host_future_wait(lua_State *L, int idx, const host_deadline *d) {
  return wait_done(L, idx, d);
}

/*
** Pushes the outcome table of the done proxy at idx, decoding a payload
** with the proxy's decoder the first time.
*/
static void push_outcome(lua_State *L, int idx, host_future *f) {
  if (lua_getiuservalue(L, idx, UV_OUTCOME) == LUA_TTABLE) return;
  lua_pop(L, 1);
  pthread_mutex_lock(&f->mu);
  char *bytes = f->payload;
  size_t len = f->payload_len;
  pthread_mutex_unlock(&f->mu);
  if (bytes == NULL) {  /* cancelled: no outcome; failed: its error could not be encoded */
    lua_createtable(L, 1, 1);
    if (f->failed) {
      lua_pushliteral(L, "the future failed, but its error was lost (not enough memory)");
      lua_rawseti(L, -2, 1);
    }
    return;
  }
  lua_getiuservalue(L, idx, UV_DECODER);
  lua_pushlstring(L, bytes, len);
  lua_pushboolean(L, !f->failed);
  lua_call(L, 2, 1);  /* decoder(bytes, ok) -> outcome table */
  luaL_checktype(L, -1, LUA_TTABLE);
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, idx, UV_OUTCOME);
  pthread_mutex_lock(&f->mu);
  free(f->payload);
  f->payload = NULL;
  pthread_mutex_unlock(&f->mu);
}

/* Raises TimeoutError or CancelledError for result() and exception(). */
static void check_waited(lua_State *L, host_future_state s, double timeout) {
  if (s == HOST_FUTURE_CANCELLED)
    host_error_raise(L, "CancelledError", "the future was cancelled");
  if (s != HOST_FUTURE_FINISHED)
    host_error_raise(L, "TimeoutError", "the future is not done after %f seconds", timeout);
}

/* host_future_result for the proxy p at idx (absolute), checked by the caller. */
static int result_of(lua_State *L, int idx, proxy *p, double timeout) {
  host_future *f = p->f;
  host_deadline d = host_deadline_in(timeout);
  check_waited(L, wait_proxy(L, idx, p, &d), timeout);
  push_outcome(L, idx, f);
  if (f->failed) {
    lua_rawgeti(L, -1, 1);
    lua_error(L);
  }
  lua_getfield(L, -1, "n");
  int n = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  luaL_checkstack(L, n, "too many results");
  for (int i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
  lua_remove(L, -(n + 1));
  return n;
}

int host_future_result(lua_State *L, int idx, double timeout) {
  idx = lua_absindex(L, idx);
  return result_of(L, idx, host_object_check(L, idx, FUTURE_TYPE), timeout);
}

/* future:result([timeout]): every value the task returned, or raises. */
static int future_result(lua_State *L) {
  proxy *p = host_object_check_self(L, FUTURE_TYPE);
  return result_of(L, 1, p, host_opt_timeout(L, 2));
}

/* future:exception([timeout]): the task's error, or nil. */
static int future_exception(lua_State *L) {
  host_future *f = check_self(L);
  double timeout = host_opt_timeout(L, 2);
  host_deadline d = host_deadline_in(timeout);
  check_waited(L, wait_done(L, 1, &d), timeout);
  if (!f->failed) return 0;
  push_outcome(L, 1, f);
  lua_rawgeti(L, -1, 1);
  return 1;
}

/*
** future:cancel([{interrupt = true}]). A pending future is cancelled. With
** `interrupt`, a running one whose executor can interrupt its task (the
** interpreter pool) is interrupted instead: its task fails with
** "interrupted!"; the answer is then true too.
*/
static int future_cancel(lua_State *L) {
  host_future *f = check_self(L);
  bool interrupt = false;
  if (lua_istable(L, 2)) {
    host_check_options(L, 2, (const char *const[]){"interrupt", NULL});
    lua_getfield(L, 2, "interrupt");
    interrupt = lua_toboolean(L, -1);
    lua_pop(L, 1);
  } else {
    luaL_argexpected(L, lua_isnoneornil(L, 2), 2, "table");
  }
  if (host_future_cancel(L, 1)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (interrupt && host_future_state_of(f) == HOST_FUTURE_RUNNING &&
      lua_getiuservalue(L, 1, UV_INTERRUPTER) == LUA_TFUNCTION) {
    lua_pushvalue(L, 1);
    lua_call(L, 1, 1);
    lua_pushboolean(L, lua_toboolean(L, -1));
    return 1;
  }
  lua_pushboolean(L, 0);
  return 1;
}

static int future_cancelled(lua_State *L) {
  lua_pushboolean(L, host_future_state_of(check_self(L)) == HOST_FUTURE_CANCELLED);
  return 1;
}

static int future_running(lua_State *L) {
  lua_pushboolean(L, host_future_state_of(check_self(L)) == HOST_FUTURE_RUNNING);
  return 1;
}

static int future_done(lua_State *L) {
  lua_pushboolean(L, is_done(host_future_state_of(check_self(L))));
  return 1;
}

/* future:add_done_callback(fn): fn(future) when done, or at once. */
static int future_add_done_callback(lua_State *L) {
  host_future *f = check_self(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  pthread_mutex_lock(&f->mu);
  bool now = is_done(f->state) && f->callbacks_ran;
  pthread_mutex_unlock(&f->mu);
  if (now) {
    call_callback(L, 1);
    return 0;
  }
  if (lua_getiuservalue(L, 1, UV_CALLBACKS) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, 1, UV_CALLBACKS);
  }
  lua_pushvalue(L, 2);
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  pthread_mutex_lock(&f->mu);
  f->has_callbacks = true;
  pthread_mutex_unlock(&f->mu);
  host_future_run_callbacks(L, 1);  /* done meanwhile, callbacks not yet run */
  return 0;
}

/* future:set_running_or_notify_cancel(), for code that runs futures itself. */
static int future_set_running(lua_State *L) {
  host_future *f = check_self(L);
  if (host_future_set_running(f)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (host_future_state_of(f) != HOST_FUTURE_CANCELLED)
    return host_error_raise(L, "InvalidStateError", "the future is already running or done");
  lua_pushboolean(L, 0);
  return 1;
}

/* The InvalidStateError of a second set_result or set_exception. */
static int already_done(lua_State *L) {
  return host_error_raise(L, "InvalidStateError", "the future is already done");
}

/* future:set_result(...): finishes it with these values. */
static int future_lua_set_result(lua_State *L) {
  check_self(L);
  if (!host_future_set_result(L, 1, lua_gettop(L) - 1)) return already_done(L);
  return 0;
}

/* future:set_exception(err): finishes it with this error. */
static int future_lua_set_exception(lua_State *L) {
  check_self(L);
  luaL_checkany(L, 2);
  lua_settop(L, 2);
  if (!host_future_set_error(L, 1)) return already_done(L);
  return 0;
}

/* At most this many bytes of an error's text go into a future's tostring. */
#define SHORT_ERROR 60

/*
** Protected part of future_tostring for the finished proxy at 1: pushes
** "returned N values", "raised Kind" (an error object's kind) or "raised"
** and the first line of the error's text, cut at SHORT_ERROR bytes. It may
** decode a payload, as result() would.
*/
static int describe_outcome(lua_State *L) {
  host_future *f = ((proxy *)lua_touserdata(L, 1))->f;
  push_outcome(L, 1, f);
  if (!f->failed) {
    lua_getfield(L, -1, "n");
    lua_Integer n = lua_tointeger(L, -1);
    lua_pushfstring(L, "returned %I value%s", n, n == 1 ? "" : "s");
    return 1;
  }
  lua_rawgeti(L, -1, 1);
  if (host_error_is(L, -1, NULL)) {
    lua_pushliteral(L, "kind");
    lua_rawget(L, -2);
  } else {
    host_error_tostring(L);
  }
  size_t len;
  const char *text = lua_tolstring(L, -1, &len);
  if (text == NULL) text = "?";
  const char *nl = strchr(text, '\n');
  size_t line = nl != NULL ? (size_t)(nl - text) : len;
  bool cut = line > SHORT_ERROR;
  lua_pushliteral(L, "raised ");
  lua_pushlstring(L, text, cut ? SHORT_ERROR : line);
  if (cut) lua_pushliteral(L, "...");
  lua_concat(L, cut ? 3 : 2);
  return 1;
}

/*
** __tostring: `host.Future (pending)`, `(running)`, `(cancelled)`,
** `(finished, returned 1 value)` or `(finished, raised TimeoutError)`, as
** CPython's Future repr. The error's __tostring runs protected.
*/
static int future_tostring(lua_State *L) {
  if (host_object_tostring_finalized(L, FUTURE_TYPE)) return 1;
  host_future *f = check_self(L);
  static const char *const names[] = {"pending", "running", "cancelled", "finished"};
  host_future_state s = host_future_state_of(f);
  if (s != HOST_FUTURE_FINISHED) {
    lua_pushfstring(L, "host.Future (%s)", names[s]);
    return 1;
  }
  lua_settop(L, 1);
  lua_pushcfunction(L, describe_outcome);
  lua_pushvalue(L, 1);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK || !lua_isstring(L, -1)) {
    lua_pop(L, 1);
    lua_pushstring(L, f->failed ? "raised" : "returned");
  }
  lua_pushfstring(L, "host.Future (finished, %s)", lua_tostring(L, -1));
  return 1;
}

static int future_new_lua(lua_State *L) {
  host_future_push_new(L);
  return 1;
}

double host_future_timeout_field(lua_State *L, int arg, const char *field) {
  double t = -1;
  if (lua_getfield(L, arg, field) != LUA_TNIL) {
    int isnum;
    t = (double)lua_tonumberx(L, -1, &isnum);
    if (!isnum)
      luaL_argerror(L, arg, lua_pushfstring(L, "'%s' must be a number, got %s", field,
                                            luaL_typename(L, -1)));
    if (!(t >= 0))
      luaL_argerror(L, arg, lua_pushfstring(L, "'%s' must be a non-negative number", field));
  }
  lua_pop(L, 1);
  return t;
}

/* ---- waiting on several futures ---- */

/*
** The futures a wait or an as_completed looks at, without duplicates: a
** reference to each in fs[0..n), their proxies at 1..n of uservalue 1.
** __gc drops the references.
*/
typedef struct future_set {
  host_object obj;
  lua_Integer n;
  host_future *fs[];
} future_set;

/* Drops the references of the set s (its proxies stay in uservalue 1). */
static void set_release(future_set *s) {
  for (lua_Integer i = 0; i < s->n; i++) host_future_unref(s->fs[i]);
  s->n = 0;
}

static int set_gc(lua_State *L) {
  future_set *s = host_object_finalize(L, SET_TYPE);
  if (s != NULL) set_release(s);
  return 0;
}

/*
** Pushes the set of the futures in the array at arg (argument `arg` of the
** caller, for messages). Raises if an entry is not a host.Future.
*/
static future_set *push_future_set(lua_State *L, int arg) {
  luaL_checktype(L, arg, LUA_TTABLE);
  lua_Unsigned len = lua_rawlen(L, arg);
  if (len > (SIZE_MAX - sizeof(future_set)) / sizeof(host_future *) || len > INT_MAX)
    luaL_argerror(L, arg, "too many futures");
  future_set *s = host_object_new(L, sizeof *s + (size_t)len * sizeof(host_future *), SET_TYPE, 1);
  int set = lua_gettop(L);
  lua_createtable(L, (int)len, 0);  /* the proxies, at set + 1 */
  lua_createtable(L, 0, (int)len);  /* proxy -> true, to skip duplicates */
  int seen = set + 2;
  for (lua_Integer i = 1; i <= (lua_Integer)len; i++) {
    lua_rawgeti(L, arg, i);
    proxy *p = host_object_test(L, -1, FUTURE_TYPE);
    if (p == NULL)
      luaL_argerror(L, arg, lua_pushfstring(L, "host.Future expected at index %I, got %s", i,
                                            luaL_typename(L, -1)));
    lua_pushvalue(L, -1);
    if (lua_rawget(L, seen) != LUA_TNIL) {
      lua_pop(L, 2);
      continue;
    }
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_pushboolean(L, 1);
    lua_rawset(L, seen);
    host_future_ref(p->f);
    s->fs[s->n++] = p->f;
    lua_rawseti(L, set + 1, s->n);
  }
  lua_pop(L, 1);
  lua_setiuservalue(L, set, 1);
  return s;
}

/* One future of a blocking wait on several, and the waiter's node in its list. */
typedef struct wait_slot {
  host_future *f;
  waiter_node node;
} wait_slot;

/*
** Blocks until one of the futures of slots[0..n) (none done when the
** caller looked) fires the waiter or the deadline passes. The waiter is in
** every future's list only during this call; one found done already counts
** as fired. The caller keeps each future alive during the call, and the
** slots belong to this call alone.
*/
static host_wait_result wait_any(lua_State *L, wait_slot *slots, lua_Integer n,
                                 const host_deadline *d) {
  if (n == 0) return HOST_WAIT_WOKEN;  /* nothing to wait for: look again */
  multi_waiter w;
  pthread_mutex_init(&w.mu, NULL);
  host_cond_init(&w.cv);
  w.fired = 0;
  for (lua_Integer i = 0; i < n; i++) {
    host_future *f = slots[i].f;
    slots[i].node.w = &w;
    pthread_mutex_lock(&f->mu);
    if (is_done(f->state)) w.fired++;  /* no lock on w needed: not yet shared */
    slots[i].node.next = f->waiters;
    f->waiters = &slots[i].node;
    pthread_mutex_unlock(&f->mu);
  }
  host_wait_result r = HOST_WAIT_WOKEN;
  pthread_mutex_lock(&w.mu);
  host_wait_on(L, "futures.wait", NULL, NULL, NULL);
  if (w.fired == 0) r = host_cond_wait(L, &w.mu, &w.cv, d);  /* unlocks */
  else pthread_mutex_unlock(&w.mu);
  for (lua_Integer i = 0; i < n; i++) {
    host_future *f = slots[i].f;
    pthread_mutex_lock(&f->mu);
    for (waiter_node **p = &f->waiters; *p != NULL; p = &(*p)->next) {
      if (*p == &slots[i].node) {
        *p = slots[i].node.next;
        break;
      }
    }
    pthread_mutex_unlock(&f->mu);
  }
  pthread_mutex_destroy(&w.mu);
  pthread_cond_destroy(&w.cv);
  return r;
}

enum { FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED };
static const char *const wait_modes[] = {"FIRST_COMPLETED", "FIRST_EXCEPTION", "ALL_COMPLETED", NULL};

/*
** Is the wait of futures.wait over for return_when `mode`? A cancelled
** future counts as done, not as raised (CPython's FIRST_EXCEPTION).
*/
static bool wait_satisfied(future_set *s, int mode) {
  lua_Integer done = 0;
  for (lua_Integer i = 0; i < s->n; i++) {
    pthread_mutex_lock(&s->fs[i]->mu);
    bool d = is_done(s->fs[i]->state);
    bool raised = s->fs[i]->state == HOST_FUTURE_FINISHED && s->fs[i]->failed;
    pthread_mutex_unlock(&s->fs[i]->mu);
    if (d) done++;
    if ((raised && mode == FIRST_EXCEPTION) || (d && mode == FIRST_COMPLETED)) return true;
  }
  return done == s->n;
}

/*
** Raises when a wait on the futures of the set s (at `set`) for `mode`
** could never end (see host_future_set_wait_check): with ALL_COMPLETED
** when one that is not done is refused, else when every one not done is.
*/
static void check_set_wait(lua_State *L, int set, future_set *s, int mode) {
  lua_getiuservalue(L, set, 1);
  int proxies = lua_gettop(L);
  lua_Integer open = 0, refused = 0;
  for (lua_Integer i = 0; i < s->n; i++) {
    if (is_done(host_future_state_of(s->fs[i]))) continue;
    open++;
    lua_rawgeti(L, proxies, i + 1);
    bool refusal = push_wait_refusal(L, -1);
    lua_remove(L, refusal ? -2 : -1);
    if (!refusal) continue;
    if (mode == ALL_COMPLETED) lua_error(L);
    if (++refused > 1) lua_pop(L, 1);  /* the first one's message is kept */
  }
  if (open > 0 && refused == open) lua_error(L);
  lua_settop(L, proxies - 1);
}

/* Reads wait's return_when from the options table at 2. */
static int wait_mode(lua_State *L) {
  int mode = ALL_COMPLETED;
  if (lua_getfield(L, 2, "return_when") != LUA_TNIL) {
    const char *name = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    if (name == NULL)
      luaL_argerror(L, 2, lua_pushfstring(L, "'return_when' must be a string, got %s",
                                          luaL_typename(L, -1)));
    for (mode = 0; wait_modes[mode] != NULL; mode++)
      if (strcmp(wait_modes[mode], name) == 0) break;
    if (wait_modes[mode] == NULL)
      luaL_argerror(L, 2, lua_pushfstring(L, "invalid return_when '%s'", name));
  }
  lua_pop(L, 1);
  return mode;
}

/*
** futures.wait(fs [, {timeout =, return_when =}]) -> done, not_done (two
** arrays, in the order of fs, each future once).
*/
static int l_wait(lua_State *L) {
  lua_settop(L, 2);
  double timeout = -1;
  int mode = ALL_COMPLETED;
  if (!lua_isnil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    host_check_options(L, 2, (const char *const[]){"timeout", "return_when", NULL});
    timeout = host_future_timeout_field(L, 2, "timeout");
    mode = wait_mode(L);
  }
  future_set *s = push_future_set(L, 1);
  int set = lua_gettop(L);
  host_deadline d = host_deadline_in(timeout);
  wait_slot *pending = lua_newuserdatauv(L, sizeof *pending * (size_t)(s->n > 0 ? s->n : 1), 0);
  while (!wait_satisfied(s, mode) && !host_deadline_passed(&d)) {
    /* at each turn: with FIRST_EXCEPTION, the futures that end without an
    ** error may leave only refused ones to wait for */
    check_set_wait(L, set, s, mode);
    lua_Integer np = 0;  /* wait only on those not done: a done one wakes at once */
    for (lua_Integer i = 0; i < s->n; i++)
      if (!is_done(host_future_state_of(s->fs[i]))) pending[np++].f = s->fs[i];
    if (wait_any(L, pending, np, &d) == HOST_WAIT_INTERRUPTED) return host_raise_interrupt(L);
  }
  lua_pop(L, 1);
  lua_getiuservalue(L, set, 1);
  lua_newtable(L);
  int done = lua_gettop(L);
  lua_newtable(L);
  lua_Integer ndone = 0, nnot = 0;
  for (lua_Integer i = 0; i < s->n; i++) {
    bool isdone = is_done(host_future_state_of(s->fs[i]));
    lua_rawgeti(L, set + 1, i + 1);
    lua_rawseti(L, isdone ? done : done + 1, isdone ? ++ndone : ++nnot);
  }
  set_release(s);
  return 2;
}

/*
** wait_any on the futures of the set s, through a copy that holds its own
** references: another thread may take futures from s meanwhile (the same
** iterator called from two threads).
*/
static host_wait_result wait_pending(lua_State *L, future_set *s, const host_deadline *d) {
  lua_Integer n = s->n;
  wait_slot *slots = lua_newuserdatauv(L, sizeof *slots * (size_t)n, 0);
  for (lua_Integer i = 0; i < n; i++) {
    slots[i].f = s->fs[i];
    host_future_ref(slots[i].f);
  }
  host_wait_result r = wait_any(L, slots, n, d);
  for (lua_Integer i = 0; i < n; i++) host_future_unref(slots[i].f);
  lua_pop(L, 1);
  return r;
}

/*
** The iterator of as_completed. Upvalues: 1 the set of futures still to
** give, 2 the deadline (host_now() seconds, or -1 for none), 3 how many
** futures it was given.
*/
static int as_completed_next(lua_State *L) {
  future_set *s = host_object_check(L, lua_upvalueindex(1), SET_TYPE);
  double at = lua_tonumber(L, lua_upvalueindex(2));
  host_deadline d = host_deadline_in(at < 0 ? -1 : at > host_now() ? at - host_now() : 0);
  lua_getiuservalue(L, lua_upvalueindex(1), 1);
  int proxies = lua_gettop(L);
  for (;;) {
    if (s->n == 0) return 0;
    for (lua_Integer i = 0; i < s->n; i++) {
      if (!is_done(host_future_state_of(s->fs[i]))) continue;
      lua_rawgeti(L, proxies, i + 1);
      host_future_unref(s->fs[i]);  /* fill the hole with the last one */
      s->fs[i] = s->fs[--s->n];
      lua_rawgeti(L, proxies, s->n + 1);
      lua_rawseti(L, proxies, i + 1);
      lua_pushnil(L);
      lua_rawseti(L, proxies, s->n + 1);
      return 1;
    }
    if (host_deadline_passed(&d))
      return host_error_raise(L, "TimeoutError", "%I (of %I) futures unfinished", s->n,
                              lua_tointeger(L, lua_upvalueindex(3)));
    check_set_wait(L, lua_upvalueindex(1), s, FIRST_COMPLETED);
    if (wait_pending(L, s, &d) == HOST_WAIT_INTERRUPTED) return host_raise_interrupt(L);
  }
}

/* futures.as_completed(fs [, timeout]): iterates futures as they finish. */
static int l_as_completed(lua_State *L) {
  double timeout = host_opt_timeout(L, 2);
  lua_settop(L, 2);
  future_set *s = push_future_set(L, 1);
  lua_pushnumber(L, (lua_Number)(timeout < 0 ? -1 : host_now() + timeout));
  lua_pushinteger(L, s->n);
  lua_pushcclosure(L, as_completed_next, 3);
  return 1;
}

static const luaL_Reg future_methods[] = {
  {"result", future_result},
  {"exception", future_exception},
  {"cancel", future_cancel},
  {"cancelled", future_cancelled},
  {"running", future_running},
  {"done", future_done},
  {"add_done_callback", future_add_done_callback},
  {"set_running_or_notify_cancel", future_set_running},
  {"set_result", future_lua_set_result},
  {"set_exception", future_lua_set_exception},
  {NULL, NULL}
};

static const luaL_Reg future_meta[] = {
  {"__gc", future_gc},
  {"__tostring", future_tostring},
  {NULL, NULL}
};

static const luaL_Reg set_methods[] = {
  {NULL, NULL}
};

static const luaL_Reg set_meta[] = {
  {"__gc", set_gc},
  {NULL, NULL}
};

static const luaL_Reg future_funcs[] = {
  {"Future", future_new_lua},
  {"wait", l_wait},
  {"as_completed", l_as_completed},
  {NULL, NULL}
};

void host_open_future(lua_State *L) {
  host_type_define(L, FUTURE_TYPE, future_methods, future_meta, NULL);
  host_type_define(L, SET_TYPE, set_methods, set_meta, NULL);
  luaL_setfuncs(L, future_funcs, 0);
  for (int i = 0; wait_modes[i] != NULL; i++) {
    lua_pushstring(L, wait_modes[i]);
    lua_setfield(L, -2, wait_modes[i]);
  }
}
