/*
** future.c: the Future (see future.h), futures.wait and
** futures.as_completed, after CPython's concurrent/futures/_base.py.
**
** The C future's state is guarded by its mutex, because a thread outside
** the universe may complete it. The proxy's uservalues (outcome, callbacks,
** decoder) are Lua values, touched with the GIL held. A completer stores the
** outcome first, then flips the state under the mutex and wakes waiters, so
** a waiter that sees FINISHED finds the outcome in place.
**
** Waiting on several futures (wait, as_completed) installs one waiter node
** per future in that future's list for the duration of one blocking call;
** completion signals every waiter in the list.
*/
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "future.h"
#include "runtime.h"

#define FUTURE_TYPE "host.Future"

/* Uservalues of a proxy. */
enum { UV_OUTCOME = 1, UV_CALLBACKS = 2, UV_DECODER = 3, UV_INTERRUPTER = 4 };

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
  pthread_cond_t cv;
  host_future_state state;
  bool failed;
  bool has_callbacks;  /* one was added before it was done */
  bool callbacks_ran;
  char *payload;      /* outcome bytes from elsewhere, until decoded */
  size_t payload_len;
  waiter_node *waiters;
};

typedef struct proxy {
  host_future *f;
} proxy;

/* ---- the C future ---- */

static host_future *future_new(void) {
  host_future *f = calloc(1, sizeof *f);
  if (f == NULL) return NULL;
  atomic_init(&f->refs, 1);
  pthread_mutex_init(&f->mu, NULL);
  host_cond_init(&f->cv);
  return f;
}

void host_future_ref(host_future *f) {
  atomic_fetch_add(&f->refs, 1);
}

void host_future_unref(host_future *f) {
  if (f == NULL || atomic_fetch_sub(&f->refs, 1) != 1) return;
  pthread_mutex_destroy(&f->mu);
  pthread_cond_destroy(&f->cv);
  free(f->payload);
  free(f);
}

host_future_state host_future_state_of(host_future *f) {
  pthread_mutex_lock(&f->mu);
  host_future_state s = f->state;
  pthread_mutex_unlock(&f->mu);
  return s;
}

bool host_future_set_running(host_future *f) {
  pthread_mutex_lock(&f->mu);
  bool ok = f->state == HOST_FUTURE_PENDING;
  if (ok) f->state = HOST_FUTURE_RUNNING;
  pthread_mutex_unlock(&f->mu);
  return ok;
}

/* Moves f to a final state (mutex held) and wakes everyone who waits. */
static void finish_locked(host_future *f, host_future_state state, bool failed) {
  f->state = state;
  f->failed = failed;
  pthread_cond_broadcast(&f->cv);
  for (waiter_node *n = f->waiters; n != NULL; n = n->next) {
    pthread_mutex_lock(&n->w->mu);
    n->w->fired++;
    pthread_cond_signal(&n->w->cv);
    pthread_mutex_unlock(&n->w->mu);
  }
}

static bool is_done(host_future_state s) {
  return s == HOST_FUTURE_CANCELLED || s == HOST_FUTURE_FINISHED;
}

bool host_future_set_payload(host_future *f, bool ok, char *bytes, size_t len) {
  pthread_mutex_lock(&f->mu);
  bool fresh = !is_done(f->state);
  if (fresh) {
    f->payload = bytes;
    f->payload_len = len;
    finish_locked(f, HOST_FUTURE_FINISHED, !ok);
  }
  pthread_mutex_unlock(&f->mu);
  if (!fresh) free(bytes);
  return fresh;
}

/* ---- proxies ---- */

host_future *host_future_check(lua_State *L, int idx) {
  return ((proxy *)luaL_checkudata(L, idx, FUTURE_TYPE))->f;
}

host_future *host_future_push_new(lua_State *L) {
  proxy *p = lua_newuserdatauv(L, sizeof *p, 4);
  p->f = NULL;
  luaL_setmetatable(L, FUTURE_TYPE);
  p->f = future_new();
  if (p->f == NULL) luaL_error(L, "not enough memory");
  return p->f;
}

static int future_gc(lua_State *L) {
  proxy *p = luaL_checkudata(L, 1, FUTURE_TYPE);
  host_future_unref(p->f);
  p->f = NULL;
  return 0;
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
  pthread_mutex_lock(&f->mu);
  bool wants = f->has_callbacks && !f->callbacks_ran;
  pthread_mutex_unlock(&f->mu);
  return wants;
}

void host_future_run_callbacks(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  host_future *f = host_future_check(L, idx);
  pthread_mutex_lock(&f->mu);
  bool run = is_done(f->state) && !f->callbacks_ran;
  if (run) f->callbacks_ran = true;
  pthread_mutex_unlock(&f->mu);
  if (!run) return;
  if (lua_getiuservalue(L, idx, UV_CALLBACKS) == LUA_TTABLE) {
    lua_Integer n = luaL_len(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, -1, i);
      call_callback(L, idx);
    }
  }
  lua_pop(L, 1);
  lua_pushnil(L);
  lua_setiuservalue(L, idx, UV_CALLBACKS);
}

/* Stores the outcome table on top (popped) and finishes the future. */
static void finish_with(lua_State *L, int idx, bool failed) {
  idx = lua_absindex(L, idx);
  host_future *f = host_future_check(L, idx);
  lua_setiuservalue(L, idx, UV_OUTCOME);
  pthread_mutex_lock(&f->mu);
  bool fresh = !is_done(f->state);
  if (fresh) finish_locked(f, HOST_FUTURE_FINISHED, failed);
  pthread_mutex_unlock(&f->mu);
  if (!fresh) luaL_error(L, "invalid state: the future is already done");
  host_future_run_callbacks(L, idx);
}

void host_future_set_result(lua_State *L, int idx, int n) {
  idx = lua_absindex(L, idx);
  lua_createtable(L, n, 1);
  lua_insert(L, -(n + 1));
  for (int i = n; i >= 1; i--) lua_rawseti(L, -(i + 1), i);  /* table under vi */
  lua_pushinteger(L, n);
  lua_setfield(L, -2, "n");
  finish_with(L, idx, false);
}

void host_future_set_error(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  lua_createtable(L, 1, 1);
  lua_insert(L, -2);
  lua_rawseti(L, -2, 1);
  lua_pushinteger(L, 1);
  lua_setfield(L, -2, "n");
  finish_with(L, idx, true);
}

void host_future_set_decoder(lua_State *L, int idx) {
  lua_setiuservalue(L, idx, UV_DECODER);
}

void host_future_set_interrupter(lua_State *L, int idx) {
  lua_setiuservalue(L, idx, UV_INTERRUPTER);
}

bool host_future_cancel(lua_State *L, int idx) {
  host_future *f = host_future_check(L, idx);
  pthread_mutex_lock(&f->mu);
  bool cancelled = f->state == HOST_FUTURE_CANCELLED;
  if (f->state == HOST_FUTURE_PENDING) {
    finish_locked(f, HOST_FUTURE_CANCELLED, false);
    cancelled = true;
  }
  pthread_mutex_unlock(&f->mu);
  if (cancelled) host_future_run_callbacks(L, idx);
  return cancelled;
}

/*
** Waits (GIL released) until f is done or the deadline passes. Returns the
** state; raises "interrupted!" in an interrupted main thread.
*/
static host_future_state wait_done(lua_State *L, host_future *f, const host_deadline *d) {
  for (;;) {
    pthread_mutex_lock(&f->mu);
    host_future_state s = f->state;
    if (is_done(s) || host_deadline_passed(d)) {
      pthread_mutex_unlock(&f->mu);
      return s;
    }
    host_wait_result r = host_cond_wait(L, &f->mu, &f->cv, d);  /* unlocks */
    if (r == HOST_WAIT_INTERRUPTED) host_raise_interrupt(L);
  }
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
  if (bytes == NULL) {  /* cancelled: no outcome */
    lua_createtable(L, 0, 1);
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

int host_future_result(lua_State *L, int idx, double timeout) {
  idx = lua_absindex(L, idx);
  host_future *f = host_future_check(L, idx);
  host_deadline d = host_deadline_in(timeout);
  check_waited(L, wait_done(L, f, &d), timeout);
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

/* future:result([timeout]): every value the task returned, or raises. */
static int future_result(lua_State *L) {
  host_future_check(L, 1);
  return host_future_result(L, 1, host_opt_timeout(L, 2));
}

/* future:exception([timeout]): the task's error, or nil. */
static int future_exception(lua_State *L) {
  host_future *f = host_future_check(L, 1);
  double timeout = host_opt_timeout(L, 2);
  host_deadline d = host_deadline_in(timeout);
  check_waited(L, wait_done(L, f, &d), timeout);
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
  host_future *f = host_future_check(L, 1);
  bool interrupt = false;
  if (lua_istable(L, 2)) {
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
  lua_pushboolean(L, host_future_state_of(host_future_check(L, 1)) == HOST_FUTURE_CANCELLED);
  return 1;
}

static int future_running(lua_State *L) {
  lua_pushboolean(L, host_future_state_of(host_future_check(L, 1)) == HOST_FUTURE_RUNNING);
  return 1;
}

static int future_done(lua_State *L) {
  lua_pushboolean(L, is_done(host_future_state_of(host_future_check(L, 1))));
  return 1;
}

/* future:add_done_callback(fn): fn(future) when done, or at once. */
static int future_add_done_callback(lua_State *L) {
  host_future *f = host_future_check(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  pthread_mutex_lock(&f->mu);
  bool now = is_done(f->state) && f->callbacks_ran;
  pthread_mutex_unlock(&f->mu);
  if (now) {
    lua_pushvalue(L, 2);
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
  lua_rawseti(L, -2, luaL_len(L, -2) + 1);
  pthread_mutex_lock(&f->mu);
  f->has_callbacks = true;
  pthread_mutex_unlock(&f->mu);
  host_future_run_callbacks(L, 1);  /* done meanwhile, callbacks not yet run */
  return 0;
}

/* future:set_running_or_notify_cancel(), for code that runs futures itself. */
static int future_set_running(lua_State *L) {
  host_future *f = host_future_check(L, 1);
  if (host_future_set_running(f)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (host_future_state_of(f) != HOST_FUTURE_CANCELLED)
    return host_error_raise(L, "InvalidStateError", "the future is already running or done");
  lua_pushboolean(L, 0);
  return 1;
}

/* future:set_result(...): finishes it with these values. */
static int future_lua_set_result(lua_State *L) {
  host_future_check(L, 1);
  host_future_set_result(L, 1, lua_gettop(L) - 1);
  return 0;
}

/* future:set_exception(err): finishes it with this error. */
static int future_lua_set_exception(lua_State *L) {
  host_future_check(L, 1);
  luaL_checkany(L, 2);
  lua_settop(L, 2);
  host_future_set_error(L, 1);
  return 0;
}

static int future_tostring(lua_State *L) {
  host_future *f = host_future_check(L, 1);
  static const char *const names[] = {"pending", "running", "cancelled", "finished"};
  host_future_state s = host_future_state_of(f);
  lua_pushfstring(L, "host.Future (%s%s): %p", names[s],
                  s == HOST_FUTURE_FINISHED && f->failed ? ", raised" : "", (void *)f);
  return 1;
}

static int future_new_lua(lua_State *L) {
  host_future_push_new(L);
  return 1;
}

/* ---- waiting on several futures ---- */

/* The futures of the array at idx, checked; n set to their count. */
static host_future **collect_futures(lua_State *L, int idx, lua_Integer *n) {
  luaL_checktype(L, idx, LUA_TTABLE);
  *n = luaL_len(L, idx);
  host_future **fs = lua_newuserdatauv(L, sizeof *fs * (size_t)(*n > 0 ? *n : 1), 0);
  for (lua_Integer i = 1; i <= *n; i++) {
    lua_rawgeti(L, idx, i);
    proxy *p = luaL_testudata(L, -1, FUTURE_TYPE);
    if (p == NULL)
      luaL_error(L, "bad argument #%d (host.Future expected at [%I], got %s)", idx, i,
                 luaL_typename(L, -1));
    fs[i - 1] = p->f;
    lua_pop(L, 1);
  }
  return fs;
}

/*
** Blocks until one of the n futures (none done when the caller looked)
** fires the waiter or the deadline passes. The waiter is in every future's
** list only during this call; one found done already counts as fired.
*/
static host_wait_result wait_any(lua_State *L, host_future **fs, lua_Integer n,
                                 const host_deadline *d) {
  multi_waiter w;
  pthread_mutex_init(&w.mu, NULL);
  host_cond_init(&w.cv);
  w.fired = 0;
  waiter_node *nodes = calloc((size_t)n, sizeof *nodes);
  if (nodes == NULL) luaL_error(L, "not enough memory");
  for (lua_Integer i = 0; i < n; i++) {
    nodes[i].w = &w;
    pthread_mutex_lock(&fs[i]->mu);
    if (is_done(fs[i]->state)) w.fired++;  /* no lock on w needed: not yet shared */
    nodes[i].next = fs[i]->waiters;
    fs[i]->waiters = &nodes[i];
    pthread_mutex_unlock(&fs[i]->mu);
  }
  host_wait_result r = HOST_WAIT_WOKEN;
  pthread_mutex_lock(&w.mu);
  if (w.fired == 0) r = host_cond_wait(L, &w.mu, &w.cv, d);  /* unlocks */
  else pthread_mutex_unlock(&w.mu);
  for (lua_Integer i = 0; i < n; i++) {
    pthread_mutex_lock(&fs[i]->mu);
    for (waiter_node **p = &fs[i]->waiters; *p != NULL; p = &(*p)->next) {
      if (*p == &nodes[i]) {
        *p = nodes[i].next;
        break;
      }
    }
    pthread_mutex_unlock(&fs[i]->mu);
  }
  free(nodes);
  pthread_mutex_destroy(&w.mu);
  pthread_cond_destroy(&w.cv);
  return r;
}

/* Is the wait of futures.wait over for return_when `mode`? */
static bool wait_satisfied(host_future **fs, lua_Integer n, const char *mode) {
  lua_Integer done = 0;
  for (lua_Integer i = 0; i < n; i++) {
    pthread_mutex_lock(&fs[i]->mu);
    bool d = is_done(fs[i]->state);
    bool raised = fs[i]->state == HOST_FUTURE_FINISHED && fs[i]->failed;
    pthread_mutex_unlock(&fs[i]->mu);
    if (d) done++;
    if (raised && strcmp(mode, "FIRST_EXCEPTION") == 0) return true;
    if (d && strcmp(mode, "FIRST_COMPLETED") == 0) return true;
  }
  return done == n;
}

/*
** futures.wait(fs, {timeout =, return_when =}) -> done, not_done
** (two arrays, in the order of fs).
*/
static int l_wait(lua_State *L) {
  lua_Integer n;
  host_future **fs = collect_futures(L, 1, &n);
  double timeout = -1;
  const char *mode = "ALL_COMPLETED";
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "timeout");
    timeout = host_opt_timeout(L, -1);
    lua_getfield(L, 2, "return_when");
    mode = luaL_optstring(L, -1, mode);
    lua_pop(L, 2);
    luaL_argcheck(L, strcmp(mode, "ALL_COMPLETED") == 0 || strcmp(mode, "FIRST_COMPLETED") == 0 ||
                  strcmp(mode, "FIRST_EXCEPTION") == 0, 2, "invalid return_when");
  }
  host_deadline d = host_deadline_in(timeout);
  host_future **pending = lua_newuserdatauv(L, sizeof *pending * (size_t)(n > 0 ? n : 1), 0);
  while (!wait_satisfied(fs, n, mode) && !host_deadline_passed(&d)) {
    lua_Integer np = 0;  /* wait only on those not done: a done one wakes at once */
    for (lua_Integer i = 0; i < n; i++)
      if (!is_done(host_future_state_of(fs[i]))) pending[np++] = fs[i];
    if (wait_any(L, pending, np, &d) == HOST_WAIT_INTERRUPTED) return host_raise_interrupt(L);
  }
  lua_pop(L, 1);
  lua_newtable(L);
  int done = lua_gettop(L);
  lua_newtable(L);
  for (lua_Integer i = 1; i <= n; i++) {
    int into = is_done(host_future_state_of(fs[i - 1])) ? done : done + 1;
    lua_Integer at = luaL_len(L, into) + 1;
    lua_rawgeti(L, 1, i);
    lua_rawseti(L, into, at);
  }
  return 2;
}

/*
** The iterator of as_completed. Upvalues: 1 the array of futures still to
** give, 2 the deadline's seconds left at creation, 3 the creation time.
*/
static int as_completed_next(lua_State *L) {
  int pending = lua_upvalueindex(1);
  double timeout = lua_tonumber(L, lua_upvalueindex(2));
  double started = lua_tonumber(L, lua_upvalueindex(3));
  host_deadline d = host_deadline_in(timeout < 0 ? -1 : timeout - (host_now() - started));
  for (;;) {
    lua_Integer n;
    host_future **fs = collect_futures(L, pending, &n);
    if (n == 0) return 0;
    for (lua_Integer i = 1; i <= n; i++) {
      if (!is_done(host_future_state_of(fs[i - 1]))) continue;
      lua_rawgeti(L, pending, i);
      lua_rawgeti(L, pending, n);  /* fill the hole with the last one */
      lua_rawseti(L, pending, i);
      lua_pushnil(L);
      lua_rawseti(L, pending, n);
      return 1;
    }
    if (host_deadline_passed(&d))
      return host_error_raise(L, "TimeoutError", "%I (of %I) futures unfinished", n, n);
    if (wait_any(L, fs, n, &d) == HOST_WAIT_INTERRUPTED) return host_raise_interrupt(L);
    lua_pop(L, 1);
  }
}

/* futures.as_completed(fs [, timeout]): iterates futures as they finish. */
static int l_as_completed(lua_State *L) {
  double timeout = host_opt_timeout(L, 2);
  lua_Integer n;
  collect_futures(L, 1, &n);
  lua_createtable(L, (int)n, 0);
  for (lua_Integer i = 1; i <= n; i++) {  /* a copy, without duplicates */
    lua_rawgeti(L, 1, i);
    bool seen = false;
    for (lua_Integer j = 1; j < i && !seen; j++) {
      lua_rawgeti(L, 1, j);
      seen = lua_rawequal(L, -1, -2);
      lua_pop(L, 1);
    }
    if (seen) lua_pop(L, 1);
    else lua_rawseti(L, -2, luaL_len(L, -2) + 1);
  }
  lua_pushnumber(L, (lua_Number)timeout);
  lua_pushnumber(L, (lua_Number)host_now());
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

static const luaL_Reg future_funcs[] = {
  {"Future", future_new_lua},
  {"wait", l_wait},
  {"as_completed", l_as_completed},
  {NULL, NULL}
};

void host_open_future(lua_State *L) {
  if (luaL_newmetatable(L, FUTURE_TYPE)) {
    lua_newtable(L);
    luaL_setfuncs(L, future_methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, future_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, future_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, future_funcs, 0);
  static const char *const modes[] = {"FIRST_COMPLETED", "FIRST_EXCEPTION", "ALL_COMPLETED"};
  for (int i = 0; i < 3; i++) {
    lua_pushstring(L, modes[i]);
    lua_setfield(L, -2, modes[i]);
  }
}
