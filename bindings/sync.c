/*
** sync.c: the synchronisation types of `host.thread`, made as Python's
** threading makes them: Lock, RLock, Condition, Semaphore,
** BoundedSemaphore, Event and Barrier.
**
** Their state is plain C fields touched only with the GIL held, so the
** uncontended paths are a field test and a store. A thread that must wait
** sleeps on the object's host_waitq with the GIL released; every change
** that can let a waiter through notifies that queue, and waiters re-check.
** acquire returns the object itself (a true value) so that
**   local _ <close> = lock:acquire()
** releases it at scope exit; `__close` is release.
*/
#include <string.h>

#include "runtime.h"
#include "sync.h"

#define LOCK_TYPE "host.Lock"
#define RLOCK_TYPE "host.RLock"
#define CONDITION_TYPE "host.Condition"
#define SEMAPHORE_TYPE "host.Semaphore"
#define BSEMAPHORE_TYPE "host.BoundedSemaphore"
#define EVENT_TYPE "host.Event"
#define BARRIER_TYPE "host.Barrier"

/* Lock and RLock: `owner` and `count` are used by RLock only. */
typedef struct lock_t {
  host_waitq *q;
  bool locked;
  host_tstate *owner;
  lua_Integer count;
} lock_t;

typedef struct semaphore_t {
  host_waitq *q;
  lua_Integer value;
  lua_Integer bound;   /* BoundedSemaphore's initial value, else 0 */
} semaphore_t;

typedef struct event_t {
  host_waitq *q;
  bool flag;
} event_t;

/* A thread waiting on a Condition: a node of the FIFO, on its C stack. */
typedef struct cond_waiter {
  bool notified;
  struct cond_waiter *next;
} cond_waiter;

typedef struct condition_t {
  host_waitq *q;
  cond_waiter *head, *tail;
} condition_t;

typedef struct barrier_t {
  host_waitq *q;
  lua_Integer parties;
  lua_Integer count;          /* threads waiting in this cycle */
  unsigned long long cycle;   /* bumped when a cycle completes or is reset */
  unsigned long long reset_cycle;  /* a cycle ended by reset(): its waiters break */
  bool broken;
  double timeout;             /* default for wait, -1 for none */
} barrier_t;

/* Every type starts with its wait queue: makes the userdata and the queue. */
static void *new_object(lua_State *L, size_t size, const char *tname, int nuv) {
  host_waitq **obj = lua_newuserdatauv(L, size, nuv);
  memset(obj, 0, size);
  *obj = host_waitq_new();
  if (*obj == NULL) luaL_error(L, "not enough memory");
  luaL_setmetatable(L, tname);
  return obj;
}

/* __gc of every type: drop the object's reference to its queue. */
static int object_gc(lua_State *L) {
  host_waitq **obj = lua_touserdata(L, 1);
  host_waitq_unref(*obj);
  *obj = NULL;
  return 0;
}

/* Reads an optional timeout, also accepting `false` for "do not block". */
static double opt_block_timeout(lua_State *L, int arg) {
  if (lua_isboolean(L, arg)) return lua_toboolean(L, arg) ? -1 : 0;
  return host_opt_timeout(L, arg);
}

/*
** Waits on q until ready(obj) holds: returns true when it does, false when
** the deadline passes first. Raises "interrupted!" in an interrupted main
** thread.
*/
static bool wait_until(lua_State *L, host_waitq *q, const host_deadline *d,
                       bool (*ready)(void *obj), void *obj) {
  while (!ready(obj)) {
    if (d != NULL && !d->never && host_deadline_passed(d)) return false;
    host_wait_result r = host_waitq_wait(L, q, d);
    if (r == HOST_WAIT_INTERRUPTED) host_raise_interrupt(L);
    if (r == HOST_WAIT_TIMEOUT) return ready(obj);
  }
  return true;
}

/*
** luaL_checkudata(L, 1, tname) for the hot methods, without its registry
** lookup: every method has its type's metatable as upvalue 1.
*/
static void *check_self(lua_State *L, const char *tname) {
  void *p = lua_touserdata(L, 1);
  if (p != NULL && lua_getmetatable(L, 1)) {
    bool same = lua_rawequal(L, -1, lua_upvalueindex(1));
    lua_pop(L, 1);
    if (same) return p;
  }
  return luaL_checkudata(L, 1, tname);  /* raises the usual message */
}

/* ---- Lock and RLock ---- */

static bool lock_free(void *obj) {
  return !((lock_t *)obj)->locked;
}

/* Takes `lk` for the calling thread, waiting until d; false on timeout. */
static bool lock_take(lua_State *L, lock_t *lk, double timeout) {
  if (!lk->locked) {
    lk->locked = true;
    return true;
  }
  if (timeout == 0) return false;
  host_deadline d = host_deadline_in(timeout);
  if (!wait_until(L, lk->q, &d, lock_free, lk)) return false;
  lk->locked = true;
  return true;
}

/* lock:acquire([timeout]) -> lock | false */
static int lock_acquire(lua_State *L) {
  lock_t *lk = check_self(L, LOCK_TYPE);
  if (!lk->locked) {  /* the fast path */
    if (lua_gettop(L) > 1) opt_block_timeout(L, 2);  /* still check it */
    lk->locked = true;
    lua_pushvalue(L, 1);
    return 1;
  }
  if (lock_take(L, lk, opt_block_timeout(L, 2))) lua_pushvalue(L, 1);
  else lua_pushboolean(L, 0);
  return 1;
}

static void lock_give(lock_t *lk) {
  lk->locked = false;
  host_waitq_notify(lk->q);
}

static int lock_release(lua_State *L) {
  lock_t *lk = check_self(L, LOCK_TYPE);
  if (!lk->locked) return luaL_error(L, "cannot release un-acquired lock");
  lock_give(lk);
  return 0;
}

static int lock_locked(lua_State *L) {
  lock_t *lk = luaL_checkudata(L, 1, LOCK_TYPE);
  lua_pushboolean(L, lk->locked);
  return 1;
}

static int lock_new(lua_State *L) {
  new_object(L, sizeof(lock_t), LOCK_TYPE, 0);
  return 1;
}

/* rlock:acquire([timeout]) -> rlock | false; reentrant for its owner. */
static int rlock_acquire(lua_State *L) {
  lock_t *lk = check_self(L, RLOCK_TYPE);
  host_tstate *me = host_current();
  if (lk->locked && lk->owner == me) {
    lk->count++;
  } else if (lock_take(L, lk, opt_block_timeout(L, 2))) {
    lk->owner = me;
    lk->count = 1;
  } else {
    lua_pushboolean(L, 0);
    return 1;
  }
  lua_settop(L, 1);
  return 1;
}

static int rlock_release(lua_State *L) {
  lock_t *lk = check_self(L, RLOCK_TYPE);
  if (!lk->locked || lk->owner != host_current())
    return luaL_error(L, "cannot release un-acquired lock");
  if (--lk->count == 0) {
    lk->owner = NULL;
    lock_give(lk);
  }
  return 0;
}

static int rlock_locked(lua_State *L) {
  lock_t *lk = luaL_checkudata(L, 1, RLOCK_TYPE);
  lua_pushboolean(L, lk->locked);
  return 1;
}

static int rlock_new(lua_State *L) {
  new_object(L, sizeof(lock_t), RLOCK_TYPE, 0);
  return 1;
}

/* ---- Condition ---- */

/* The lock of the condition at 1 (its uservalue), with its kind. */
static lock_t *condition_lock(lua_State *L, bool *reentrant) {
  lua_getiuservalue(L, 1, 1);
  lock_t *lk = luaL_testudata(L, -1, RLOCK_TYPE);
  *reentrant = lk != NULL;
  if (lk == NULL) lk = luaL_checkudata(L, -1, LOCK_TYPE);
  lua_pop(L, 1);
  return lk;
}

/* thread.Condition([lock]): lock is a Lock or RLock (default a new RLock). */
static int condition_new(lua_State *L) {
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    rlock_new(L);
  } else if (!luaL_testudata(L, 1, RLOCK_TYPE) && !luaL_testudata(L, 1, LOCK_TYPE)) {
    return luaL_typeerror(L, 1, "host.Lock or host.RLock");
  }
  lua_settop(L, 1);
  new_object(L, sizeof(condition_t), CONDITION_TYPE, 1);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  return 1;
}

/* cond:acquire([timeout]) -> cond | false: acquires the condition's lock. */
static int condition_acquire(lua_State *L) {
  luaL_checkudata(L, 1, CONDITION_TYPE);
  lua_settop(L, 2);
  lua_getiuservalue(L, 1, 1);
  lua_getfield(L, 3, "acquire");
  lua_insert(L, 3);
  lua_rotate(L, 2, -1);  /* acquire, lock, timeout */
  lua_call(L, 2, 1);
  if (lua_toboolean(L, -1)) lua_settop(L, 1);
  return 1;
}

/* cond:release(): releases the condition's lock. */
static int condition_release(lua_State *L) {
  luaL_checkudata(L, 1, CONDITION_TYPE);
  lua_getiuservalue(L, 1, 1);
  lua_getfield(L, -1, "release");
  lua_insert(L, -2);
  lua_call(L, 1, 0);
  return 0;
}

/* Takes `lk` back after a wait, restoring an RLock's count; never times out. */
static void lock_restore(lua_State *L, lock_t *lk, bool reentrant,
                         lua_Integer count, host_tstate *me) {
  host_deadline never = host_deadline_in(-1);
  while (lk->locked) host_waitq_wait_uninterrupted(L, lk->q, &never);
  lk->locked = true;
  if (reentrant) {
    lk->owner = me;
    lk->count = count;
  }
}

/* Removes waiter w from the condition's FIFO if it is still there. */
static void unlink_waiter(condition_t *c, cond_waiter *w) {
  cond_waiter *prev = NULL;
  for (cond_waiter *it = c->head; it != NULL; prev = it, it = it->next) {
    if (it != w) continue;
    if (prev) prev->next = w->next;
    else c->head = w->next;
    if (c->tail == w) c->tail = prev;
    return;
  }
}

/*
** cond:wait([timeout]) -> true when notified, false on timeout. The lock is
** released while waiting and held again on return, whatever happened.
*/
static int condition_wait(lua_State *L) {
  condition_t *c = luaL_checkudata(L, 1, CONDITION_TYPE);
  double timeout = host_opt_timeout(L, 2);
  bool reentrant;
  lock_t *lk = condition_lock(L, &reentrant);
  host_tstate *me = host_current();
  if (!lk->locked || (reentrant && lk->owner != me))
    return luaL_error(L, "cannot wait on un-acquired lock");
  cond_waiter w = {false, NULL};
  if (c->tail) c->tail->next = &w;
  else c->head = &w;
  c->tail = &w;
  lua_Integer count = lk->count;
  lk->owner = NULL;
  lk->count = 0;
  lock_give(lk);
  host_deadline d = host_deadline_in(timeout);
  host_wait_result r = HOST_WAIT_WOKEN;
  while (!w.notified && r == HOST_WAIT_WOKEN) r = host_waitq_wait(L, c->q, &d);
  if (!w.notified) unlink_waiter(c, &w);
  lock_restore(L, lk, reentrant, count, me);
  if (r == HOST_WAIT_INTERRUPTED && !w.notified) return host_raise_interrupt(L);
  lua_pushboolean(L, w.notified);
  return 1;
}

/* cond:wait_for(predicate [, timeout]) -> the predicate's last result. */
static int condition_wait_for(lua_State *L) {
  luaL_checkudata(L, 1, CONDITION_TYPE);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  double timeout = host_opt_timeout(L, 3);
  host_deadline d = host_deadline_in(timeout);
  for (;;) {
    lua_settop(L, 3);
    lua_pushvalue(L, 2);
    lua_call(L, 0, 1);
    if (lua_toboolean(L, -1) || host_deadline_passed(&d)) return 1;
    lua_pushcfunction(L, condition_wait);
    lua_pushvalue(L, 1);
    if (d.never) lua_pushnil(L);
    else lua_pushnumber(L, (lua_Number)host_deadline_left(&d));
    lua_call(L, 2, 0);
  }
}

/* Marks up to n waiters notified, oldest first. */
static void notify_waiters(condition_t *c, lua_Integer n) {
  while (n-- > 0 && c->head != NULL) {
    cond_waiter *w = c->head;
    c->head = w->next;
    if (c->head == NULL) c->tail = NULL;
    w->notified = true;
  }
  host_waitq_notify(c->q);
}

/* Raises unless the calling thread holds the condition's lock. */
static void check_owned(lua_State *L, const char *what) {
  bool reentrant;
  lock_t *lk = condition_lock(L, &reentrant);
  if (!lk->locked || (reentrant && lk->owner != host_current()))
    luaL_error(L, "cannot %s on un-acquired lock", what);
}

static int condition_notify(lua_State *L) {
  condition_t *c = luaL_checkudata(L, 1, CONDITION_TYPE);
  lua_Integer n = luaL_optinteger(L, 2, 1);
  luaL_argcheck(L, n >= 0, 2, "count must be non-negative");
  check_owned(L, "notify");
  notify_waiters(c, n);
  return 0;
}

static int condition_notify_all(lua_State *L) {
  condition_t *c = luaL_checkudata(L, 1, CONDITION_TYPE);
  check_owned(L, "notify");
  notify_waiters(c, LUA_MAXINTEGER);
  return 0;
}

/* ---- Semaphore and BoundedSemaphore ---- */

static bool semaphore_positive(void *obj) {
  return ((semaphore_t *)obj)->value > 0;
}

static semaphore_t *check_semaphore(lua_State *L) {
  semaphore_t *s = luaL_testudata(L, 1, SEMAPHORE_TYPE);
  return s ? s : luaL_checkudata(L, 1, BSEMAPHORE_TYPE);
}

/* sem:acquire([timeout]) -> sem | false */
static int semaphore_acquire(lua_State *L) {
  semaphore_t *s = check_semaphore(L);
  double timeout = opt_block_timeout(L, 2);
  if (s->value == 0) {
    host_deadline d = host_deadline_in(timeout);
    if (timeout == 0 || !wait_until(L, s->q, &d, semaphore_positive, s)) {
      lua_pushboolean(L, 0);
      return 1;
    }
  }
  s->value--;
  lua_settop(L, 1);
  return 1;
}

/* sem:release([n]) */
static int semaphore_release(lua_State *L) {
  semaphore_t *s = check_semaphore(L);
  lua_Integer n = luaL_optinteger(L, 2, 1);
  luaL_argcheck(L, n >= 1, 2, "n must be one or more");
  if (s->bound > 0 && s->value + n > s->bound)
    return luaL_error(L, "semaphore released too many times");
  s->value += n;
  host_waitq_notify(s->q);
  return 0;
}

static int semaphore_value(lua_State *L) {
  lua_pushinteger(L, check_semaphore(L)->value);
  return 1;
}

/* Makes a semaphore of type tname with the initial value at 1. */
static int make_semaphore(lua_State *L, const char *tname, bool bounded) {
  lua_Integer value = luaL_optinteger(L, 1, 1);
  luaL_argcheck(L, value >= 0, 1, "semaphore initial value must be >= 0");
  semaphore_t *s = new_object(L, sizeof *s, tname, 0);
  s->value = value;
  s->bound = bounded ? value : 0;
  return 1;
}

static int semaphore_new(lua_State *L) {
  return make_semaphore(L, SEMAPHORE_TYPE, false);
}

static int bsemaphore_new(lua_State *L) {
  return make_semaphore(L, BSEMAPHORE_TYPE, true);
}

/* ---- Event ---- */

static bool event_set_p(void *obj) {
  return ((event_t *)obj)->flag;
}

static int event_set(lua_State *L) {
  event_t *e = luaL_checkudata(L, 1, EVENT_TYPE);
  e->flag = true;
  host_waitq_notify(e->q);
  return 0;
}

static int event_clear(lua_State *L) {
  event_t *e = luaL_checkudata(L, 1, EVENT_TYPE);
  e->flag = false;
  return 0;
}

static int event_is_set(lua_State *L) {
  event_t *e = luaL_checkudata(L, 1, EVENT_TYPE);
  lua_pushboolean(L, e->flag);
  return 1;
}

/* ev:wait([timeout]) -> true when set, false on timeout. */
static int event_wait(lua_State *L) {
  event_t *e = luaL_checkudata(L, 1, EVENT_TYPE);
  host_deadline d = host_deadline_in(host_opt_timeout(L, 2));
  lua_pushboolean(L, wait_until(L, e->q, &d, event_set_p, e));
  return 1;
}

static int event_new(lua_State *L) {
  new_object(L, sizeof(event_t), EVENT_TYPE, 0);
  return 1;
}

/* ---- Barrier ---- */

/* Breaks the barrier: every waiter and later wait raises BrokenBarrierError. */
static void barrier_break(barrier_t *b) {
  b->broken = true;
  host_waitq_notify(b->q);
}

static int broken_error(lua_State *L) {
  return host_error_raise(L, "BrokenBarrierError", "the barrier is broken");
}

/*
** barrier:wait([timeout]) -> the arrival index, 0 .. parties-1. The last
** arrival runs the action; an error in it, a timeout or abort() breaks the
** barrier for everyone.
*/
static int barrier_wait(lua_State *L) {
  barrier_t *b = luaL_checkudata(L, 1, BARRIER_TYPE);
  double timeout = lua_isnoneornil(L, 2) ? b->timeout : host_opt_timeout(L, 2);
  if (b->broken) return broken_error(L);
  lua_Integer index = b->count++;
  unsigned long long cycle = b->cycle;
  if (b->count == b->parties) {
    lua_getiuservalue(L, 1, 1);
    if (!lua_isnil(L, -1) && host_pcall(L, 0, 0) != LUA_OK) {
      barrier_break(b);
      return lua_error(L);
    }
    b->count = 0;
    b->cycle++;
    host_waitq_notify(b->q);
    lua_pushinteger(L, index);
    return 1;
  }
  host_deadline d = host_deadline_in(timeout);
  while (b->cycle == cycle && !b->broken) {
    host_wait_result r = host_waitq_wait(L, b->q, &d);
    if (b->cycle != cycle) break;
    if (r != HOST_WAIT_WOKEN) {
      barrier_break(b);
      if (r == HOST_WAIT_INTERRUPTED) return host_raise_interrupt(L);
    }
  }
  if (b->cycle == cycle || b->reset_cycle == cycle + 1) {
    if (b->cycle == cycle) b->count--;
    return broken_error(L);
  }
  lua_pushinteger(L, index);
  return 1;
}

/* barrier:reset(): waiters now break; the barrier starts afresh. */
static int barrier_reset(lua_State *L) {
  barrier_t *b = luaL_checkudata(L, 1, BARRIER_TYPE);
  if (b->count > 0) {
    b->cycle++;
    b->reset_cycle = b->cycle;
    b->count = 0;
  }
  b->broken = false;
  host_waitq_notify(b->q);
  return 0;
}

static int barrier_abort(lua_State *L) {
  barrier_break(luaL_checkudata(L, 1, BARRIER_TYPE));
  return 0;
}

/* b.parties, b.n_waiting, b.broken and the methods. */
static int barrier_index(lua_State *L) {
  barrier_t *b = luaL_checkudata(L, 1, BARRIER_TYPE);
  const char *key = luaL_checkstring(L, 2);
  if (strcmp(key, "parties") == 0) lua_pushinteger(L, b->parties);
  else if (strcmp(key, "n_waiting") == 0) lua_pushinteger(L, b->count);
  else if (strcmp(key, "broken") == 0) lua_pushboolean(L, b->broken);
  else {
    luaL_getmetafield(L, 1, "methods");
    lua_getfield(L, -1, key);
  }
  return 1;
}

/* thread.Barrier(parties [, action [, timeout]]) */
static int barrier_new(lua_State *L) {
  lua_settop(L, 3);  /* index 2 is the action (or nil), never the new object */
  lua_Integer parties = luaL_checkinteger(L, 1);
  luaL_argcheck(L, parties >= 1, 1, "parties must be one or more");
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
  double timeout = host_opt_timeout(L, 3);
  barrier_t *b = new_object(L, sizeof *b, BARRIER_TYPE, 1);
  b->parties = parties;
  b->timeout = timeout;
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, -2, 1);
  return 1;
}

/* __tostring of every type: "host.Lock (locked): 0x..." style. */
static int object_tostring(lua_State *L) {
  luaL_getmetafield(L, 1, "__name");
  lua_pushfstring(L, "%s: %p", lua_tostring(L, -1), lua_touserdata(L, 1));
  return 1;
}

static const luaL_Reg lock_methods[] = {
  {"acquire", lock_acquire}, {"release", lock_release}, {"locked", lock_locked},
  {"__close", lock_release}, {NULL, NULL}
};
static const luaL_Reg rlock_methods[] = {
  {"acquire", rlock_acquire}, {"release", rlock_release}, {"locked", rlock_locked},
  {"__close", rlock_release}, {NULL, NULL}
};
static const luaL_Reg condition_methods[] = {
  {"acquire", condition_acquire}, {"release", condition_release},
  {"wait", condition_wait}, {"wait_for", condition_wait_for},
  {"notify", condition_notify}, {"notify_all", condition_notify_all},
  {"__close", condition_release}, {NULL, NULL}
};
static const luaL_Reg semaphore_methods[] = {
  {"acquire", semaphore_acquire}, {"release", semaphore_release},
  {"value", semaphore_value}, {"__close", semaphore_release}, {NULL, NULL}
};
static const luaL_Reg event_methods[] = {
  {"set", event_set}, {"clear", event_clear}, {"is_set", event_is_set},
  {"wait", event_wait}, {NULL, NULL}
};
static const luaL_Reg barrier_methods[] = {
  {"wait", barrier_wait}, {"reset", barrier_reset}, {"abort", barrier_abort},
  {NULL, NULL}
};

/*
** Creates the metatable `tname`: methods reachable through __index (a
** table, or `index` when given), __close when listed, __gc, __tostring.
** Each method gets the metatable as upvalue 1 (see check_self).
*/
static void make_type(lua_State *L, const char *tname, const luaL_Reg *methods,
                      lua_CFunction index) {
  luaL_newmetatable(L, tname);
  lua_newtable(L);
  lua_pushvalue(L, -2);
  luaL_setfuncs(L, methods, 1);  /* the metatable is every method's upvalue */
  lua_getfield(L, -1, "__close");
  lua_setfield(L, -3, "__close");
  lua_pushnil(L);
  lua_setfield(L, -2, "__close");
  if (index) {
    lua_setfield(L, -2, "methods");
    lua_pushcfunction(L, index);
  }
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, object_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, object_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
}

static const luaL_Reg sync_constructors[] = {
  {"Lock", lock_new},
  {"RLock", rlock_new},
  {"Condition", condition_new},
  {"Semaphore", semaphore_new},
  {"BoundedSemaphore", bsemaphore_new},
  {"Event", event_new},
  {"Barrier", barrier_new},
  {NULL, NULL}
};

void host_open_sync(lua_State *L) {
  make_type(L, LOCK_TYPE, lock_methods, NULL);
  make_type(L, RLOCK_TYPE, rlock_methods, NULL);
  make_type(L, CONDITION_TYPE, condition_methods, NULL);
  make_type(L, SEMAPHORE_TYPE, semaphore_methods, NULL);
  make_type(L, BSEMAPHORE_TYPE, semaphore_methods, NULL);
  make_type(L, EVENT_TYPE, event_methods, NULL);
  make_type(L, BARRIER_TYPE, barrier_methods, barrier_index);
  luaL_setfuncs(L, sync_constructors, 0);
}
