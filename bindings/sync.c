/*
** sync.c: the synchronisation types of `host.thread`, made as Python's
** threading makes them: Lock, RLock, Condition, Semaphore,
** BoundedSemaphore, Event and Barrier.
**
** Their state is plain C fields touched only with the GIL held, so the
** uncontended paths are a field test and a store. A thread that must wait
** sleeps on the object's host_waitq with the GIL released; every change
** that can let a waiter through notifies that queue, and waiters re-check.
** A change that only some waiters can use wakes only those, as CPython's
** do: a Lock's release one waiter, a Semaphore's release(n) n, a
** Condition's notify(n) the n it notifies. A waiter so woken that leaves
** without taking what it was woken for (an interrupt) passes the wake-up
** on (pass_on), so none is lost.
** acquire returns the object itself (a true value) so that
**   local _ <close> = lock:acquire()
** releases it at scope exit. With a timeout, acquire returns false, which
** `<close>` accepts too (the block would run without the lock): the form
** for `<close>` is hold(timeout), which raises TimeoutError instead.
** tostring shows the state (who holds a lock, a semaphore's value); every
** wait tells the runtime what it waits for (dumps, deadlock detection).
**
** Each object owns one reference to its wait queue; __gc notifies the
** queue and drops that reference (a waiter holds its own while it sleeps).
** After __gc the object is finalized: every method raises "attempt to use
** a finalized host.Lock" (and so does a waiter woken by the __gc).
*/
#include <limits.h>
#include <stdio.h>
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

/* The start of every type's struct: the finalized state and the wait queue. */
typedef struct sync_head {
  host_object obj;
  host_waitq *q;   /* NULL once finalized */
} sync_head;

/*
** Lock and RLock: `owner` is the thread that took it (a Lock's is only
** shown by tostring, dumps and deadlock reports: another thread may
** release a Lock); `count` is used by RLock only. `handed` is true while
** the waiter that a release woke has not run yet: it will take the lock
** or sleep again, so a release meanwhile (its releaser took the lock back
** first) wakes nobody more. Every thread that begins or ends a wait on the
** queue clears it (see lock_wait), which may cost a wake-up, never lose one.
*/
typedef struct lock_t {
  sync_head h;
  bool locked;
  bool handed;
  host_tstate *owner;
  lua_Integer count;
} lock_t;

typedef struct semaphore_t {
  sync_head h;
  lua_Integer value;
  lua_Integer bound;   /* BoundedSemaphore's initial value */
  bool bounded;
} semaphore_t;

typedef struct event_t {
  sync_head h;
  bool flag;
  unsigned long long sets;  /* bumped by each set() that sets the flag */
} event_t;

/* A thread waiting on a Condition: a node of the FIFO, on its C stack. */
typedef struct cond_waiter {
  bool notified;
  host_tstate *ts;  /* the waiting thread, which a notify wakes alone */
  struct cond_waiter *next;
} cond_waiter;

/*
** A Condition keeps its lock in its uservalue (so the lock lives as long
** as the condition) and, to spare a type check by name on every call, a
** pointer to it and its kind.
*/
typedef struct condition_t {
  sync_head h;
  cond_waiter *head, *tail;
  unsigned long forks;  /* host_fork_count of the process whose threads' stacks hold the FIFO's nodes */
  lock_t *lock;
  bool reentrant;   /* the lock is an RLock */
} condition_t;

typedef struct barrier_t {
  sync_head h;
  lua_Integer parties;
  lua_Integer count;          /* threads waiting in this cycle */
  unsigned long long cycle;   /* bumped when a cycle completes or is reset */
  bool broken;
  host_tstate *actor;         /* the thread running the action, else NULL */
  double timeout;             /* default for wait, -1 for none */
} barrier_t;

/* Makes a zeroed object of type tname and its wait queue. */
static void *new_object(lua_State *L, size_t size, const char *tname, int nuv) {
  sync_head *h = host_object_new(L, size, tname, nuv);
  h->q = host_waitq_new();
  if (h->q == NULL) luaL_error(L, "not enough memory");
  return h;
}

/* The name of the type whose metatable is upvalue 1 (kept alive by it). */
static const char *upvalue_tname(lua_State *L) {
  lua_getfield(L, lua_upvalueindex(1), "__name");
  const char *tname = lua_tostring(L, -1);
  lua_pop(L, 1);
  return tname;
}

/* __gc of every type: wake the waiters and drop the object's queue. */
static int object_gc(lua_State *L) {
  sync_head *h = host_object_finalize(L, upvalue_tname(L));
  if (h != NULL && h->q != NULL) {
    host_waitq_notify(h->q);
    host_waitq_unref(h->q);
    h->q = NULL;
  }
  return 0;
}

/* Pushes the state of lock lk: "unlocked", `locked by thread 2 "w"`. */
static void push_lock_state(lua_State *L, const lock_t *lk) {
  if (!lk->locked) {
    lua_pushliteral(L, "unlocked");
  } else if (lk->owner == NULL) {
    lua_pushliteral(L, "locked");
  } else {
    lua_pushliteral(L, "locked by ");
    host_push_thread_label(L, lk->owner);
    lua_concat(L, 2);
  }
}

static void drop_forked_waiters(lua_State *L, condition_t *c);

/*
** Pushes the state that tostring shows for the object h of type tname, as
** CPython's repr does: "locked by thread 2 \"w\"", "value=3/3, waiters=0".
*/
static void push_state(lua_State *L, sync_head *h, const char *tname) {
  int waiters = host_waitq_waiters(h->q);
  if (strcmp(tname, LOCK_TYPE) == 0) {
    push_lock_state(L, (lock_t *)h);
  } else if (strcmp(tname, RLOCK_TYPE) == 0) {
    lock_t *lk = (lock_t *)h;
    push_lock_state(L, lk);
    if (lk->locked) {
      lua_pushfstring(L, ", count=%I", (LUAI_UACINT)lk->count);
      lua_concat(L, 2);
    }
  } else if (strcmp(tname, SEMAPHORE_TYPE) == 0) {
    semaphore_t *s = (semaphore_t *)h;
    lua_pushfstring(L, "value=%I, waiters=%d", (LUAI_UACINT)s->value, waiters);
  } else if (strcmp(tname, BSEMAPHORE_TYPE) == 0) {
    semaphore_t *s = (semaphore_t *)h;
    lua_pushfstring(L, "value=%I/%I, waiters=%d", (LUAI_UACINT)s->value,
                    (LUAI_UACINT)s->bound, waiters);
  } else if (strcmp(tname, EVENT_TYPE) == 0) {
    lua_pushstring(L, ((event_t *)h)->flag ? "set" : "unset");
  } else if (strcmp(tname, CONDITION_TYPE) == 0) {
    int n = 0;
    drop_forked_waiters(L, (condition_t *)h);
    for (cond_waiter *w = ((condition_t *)h)->head; w != NULL; w = w->next) n++;
    lua_pushfstring(L, "waiters=%d", n);
  } else {
    barrier_t *b = (barrier_t *)h;
    lua_pushfstring(L, "%swaiters=%I/%I", b->broken ? "broken, " : "",
                    (LUAI_UACINT)b->count, (LUAI_UACINT)b->parties);
  }
}

/*
** __tostring of every type: `host.Lock (locked by thread 2 "w"): 0x...`,
** or "host.Lock (finalized): 0x...".
*/
static int object_tostring(lua_State *L) {
  const char *tname = upvalue_tname(L);
  if (host_object_tostring_finalized(L, tname)) return 1;
  sync_head *h = host_object_check_self(L, tname);
  lua_pushfstring(L, "%s (", tname);
  push_state(L, h, tname);
  lua_pushfstring(L, "): %p", (void *)h);
  lua_concat(L, 3);
  return 1;
}

/* Says what the calling thread waits for on h, the tname at idx (see host_wait_on). */
static void describe_wait(lua_State *L, sync_head *h, const char *tname) {
  if (strcmp(tname, LOCK_TYPE) == 0 || strcmp(tname, RLOCK_TYPE) == 0) {
    lock_t *lk = (lock_t *)h;
    host_wait_on(L, tname, lk->owner ? "locked by" : "locked", h, lk->owner);
  } else if (strcmp(tname, EVENT_TYPE) == 0) {
    host_wait_on(L, tname, "unset", h, NULL);
  } else if (strcmp(tname, BARRIER_TYPE) == 0) {
    barrier_t *b = (barrier_t *)h;
    host_wait_on(L, tname, b->actor ? "its action runs in" : "waiting for the other parties",
                 h, b->actor);
  } else {
    host_wait_on(L, tname, "value=0", h, NULL);
  }
}

/* Reads an optional timeout, also accepting `false` for "do not block". */
static double opt_block_timeout(lua_State *L, int arg) {
  if (lua_isboolean(L, arg)) return lua_toboolean(L, arg) ? -1 : 0;
  return host_opt_timeout(L, arg);
}

static void lock_wake(lock_t *lk);

/*
** A waiter of h (of type tname) leaves its wait without what it waited
** for (an interrupt): a release may have woken it alone, so while what it
** waited for is there still, the next waiter is woken in its place.
*/
static void pass_on(sync_head *h, const char *tname) {
  if (strcmp(tname, LOCK_TYPE) == 0 || strcmp(tname, RLOCK_TYPE) == 0) {
    lock_t *lk = (lock_t *)h;
    lk->handed = false;
    if (!lk->locked) lock_wake(lk);
  } else if (strcmp(tname, SEMAPHORE_TYPE) == 0 || strcmp(tname, BSEMAPHORE_TYPE) == 0) {
    if (((semaphore_t *)h)->value > 0) host_waitq_notify_first(h->q);
  }
}

/*
** Waits once on the queue of the tname at idx with the GIL released.
** Raises when that object is (or gets, meanwhile) finalized, and on an
** interrupt when `interruptible` (passing on a wake-up it may have had).
*/
static host_wait_result object_wait(lua_State *L, int idx, const char *tname,
                                    const host_deadline *d, bool interruptible) {
  sync_head *h = host_object_check(L, idx, tname);
  describe_wait(L, h, tname);
  host_wait_result r = interruptible ? host_waitq_wait(L, h->q, d)
                                     : host_waitq_wait_uninterrupted(L, h->q, d);
  host_object_check(L, idx, tname);
  if (r == HOST_WAIT_INTERRUPTED) {
    pass_on(h, tname);
    host_raise_interrupt(L);
  }
  return r;
}

/*
** Waits on the tname at idx until ready(obj) holds: returns true when it
** does, false when the deadline passes first.
*/
static bool wait_until(lua_State *L, int idx, const char *tname,
                       const host_deadline *d, bool (*ready)(void *obj), void *obj) {
  while (!ready(obj)) {
    if (host_deadline_passed(d)) return false;
    if (object_wait(L, idx, tname, d, true) == HOST_WAIT_TIMEOUT) return ready(obj);
  }
  return true;
}

/* ---- Lock and RLock ---- */

/*
** Waits once for the lock `lk` (the tname at idx) to be released: every
** wait on a lock's queue goes through here, so that `handed` is cleared
** when it begins (a thread that forked while a woken waiter was in line
** leaves it set in the child, where that waiter never runs) and when it
** ends (the woken waiter ran; pass_on clears it on an interrupt).
*/
static host_wait_result lock_wait(lua_State *L, lock_t *lk, int idx, const char *tname,
                                  const host_deadline *d, bool interruptible) {
  lk->handed = false;
  host_wait_result r = object_wait(L, idx, tname, d, interruptible);
  lk->handed = false;
  return r;
}

/* Takes the lock `lk` (the tname at idx), waiting up to timeout; false on timeout. */
static bool lock_take(lua_State *L, lock_t *lk, int idx, const char *tname,
                      double timeout) {
  if (!lk->locked) {
    lk->locked = true;
    lk->owner = host_current();
    return true;
  }
  if (timeout == 0) return false;
  host_deadline d = host_deadline_in(timeout);
  while (lk->locked) {
    if (host_deadline_passed(&d)) return false;
    if (lock_wait(L, lk, idx, tname, &d, true) == HOST_WAIT_TIMEOUT && lk->locked) return false;
  }
  lk->locked = true;
  lk->owner = host_current();
  return true;
}

/* Takes the RLock `lk` at idx for the calling thread (reentrant); false on timeout. */
static bool rlock_take(lua_State *L, lock_t *lk, int idx, double timeout) {
  host_tstate *me = host_current();
  if (lk->locked && lk->owner == me) {
    lk->count++;
    return true;
  }
  if (!lock_take(L, lk, idx, RLOCK_TYPE, timeout)) return false;
  lk->owner = me;
  lk->count = 1;
  return true;
}

/*
** Wakes the first waiter of the free lock `lk` still asleep, which takes
** it (or, if another thread took it first, sleeps again until that one's
** release), unless a waiter woken before has not run yet (lk->handed):
** waking them all made N contending threads cost N hand-offs of the GIL
** per release.
*/
static void lock_wake(lock_t *lk) {
  if (!lk->handed) lk->handed = host_waitq_notify_first(lk->h.q);
}

/* Frees the lock `lk` and wakes a waiter. */
static void lock_give(lock_t *lk) {
  lk->locked = false;
  lk->owner = NULL;
  lock_wake(lk);
}

/* Releases the Lock `lk`; raises when it is not held. */
static void lock_put(lua_State *L, lock_t *lk) {
  if (!lk->locked) luaL_error(L, "cannot release un-acquired lock");
  lock_give(lk);
}

/* Releases the RLock `lk` once; raises unless the calling thread holds it. */
static void rlock_put(lua_State *L, lock_t *lk) {
  if (!lk->locked || lk->owner != host_current())
    luaL_error(L, "cannot release un-acquired lock");
  if (--lk->count == 0) {
    lk->owner = NULL;
    lock_give(lk);
  }
}

/*
** The Lock or RLock (tname) that is argument 1 of a method of it: the
** checks of host_object_check_self with fewer and cheaper API calls. The
** metatables are compared by address (two lua_topointer cost less than
** one lua_rawequal, which compares any two values), and the metatable
** pushed stays on the stack above the arguments (a caller that reads an
** optional argument sets the top back first). Anything but a live object
** of that type raises there.
*/
static inline lock_t *self_lock(lua_State *L, const char *tname) {
  lock_t *lk = lua_touserdata(L, 1);
  if (lk != NULL && lua_getmetatable(L, 1) &&
      lua_topointer(L, -1) == lua_topointer(L, lua_upvalueindex(1)) &&
      !lk->h.obj.finalized)
    return lk;
  return host_object_check_self(L, tname);
}

/* lock:acquire([timeout]) -> lock | false */
static int lock_acquire(lua_State *L) {
  int top = lua_gettop(L);
  lock_t *lk = self_lock(L, LOCK_TYPE);
  if (!lk->locked) {  /* the fast path */
    if (top > 1) opt_block_timeout(L, 2);  /* still check it */
    lk->locked = true;
    lk->owner = host_current();
    lua_pushvalue(L, 1);
    return 1;
  }
  lua_settop(L, top);  /* argument 2 is not self_lock's metatable */
  if (lock_take(L, lk, 1, LOCK_TYPE, opt_block_timeout(L, 2))) lua_pushvalue(L, 1);
  else lua_pushboolean(L, 0);
  return 1;
}

/* lock:release(), and __close(lock, err): reads argument 1 only. */
static int lock_release(lua_State *L) {
  lock_put(L, self_lock(L, LOCK_TYPE));
  return 0;
}

static int lock_locked(lua_State *L) {
  lock_t *lk = host_object_check_self(L, LOCK_TYPE);
  lua_pushboolean(L, lk->locked);
  return 1;
}

static int lock_new(lua_State *L) {
  new_object(L, sizeof(lock_t), LOCK_TYPE, 0);
  return 1;
}

/* rlock:acquire([timeout]) -> rlock | false; reentrant for its owner. */
static int rlock_acquire(lua_State *L) {
  int top = lua_gettop(L);
  lock_t *lk = self_lock(L, RLOCK_TYPE);
  double timeout = top > 1 ? opt_block_timeout(L, 2) : -1;  /* 2 may be the metatable */
  if (rlock_take(L, lk, 1, timeout)) lua_pushvalue(L, 1);
  else lua_pushboolean(L, 0);
  return 1;
}

/* rlock:release(), and __close(rlock, err): reads argument 1 only. */
static int rlock_release(lua_State *L) {
  rlock_put(L, self_lock(L, RLOCK_TYPE));
  return 0;
}

static int rlock_locked(lua_State *L) {
  lock_t *lk = host_object_check_self(L, RLOCK_TYPE);
  lua_pushboolean(L, lk->locked);
  return 1;
}

static int rlock_new(lua_State *L) {
  new_object(L, sizeof(lock_t), RLOCK_TYPE, 0);
  return 1;
}

/* ---- Condition ---- */

/* The type name of condition c's lock. */
static const char *lock_type(const condition_t *c) {
  return c->reentrant ? RLOCK_TYPE : LOCK_TYPE;
}

/* Raises when condition c's lock is finalized. */
static void check_lock_alive(lua_State *L, const condition_t *c) {
  if (c->lock->h.obj.finalized)
    luaL_error(L, "attempt to use a finalized %s", lock_type(c));
}

/*
** Pushes the lock of condition c, at 1 (its uservalue), and returns it;
** raises when that lock is finalized.
*/
static lock_t *condition_lock(lua_State *L, condition_t *c) {
  lua_getiuservalue(L, 1, 1);
  check_lock_alive(L, c);
  return c->lock;
}

/* thread.Condition([lock]): lock is a Lock or RLock (default a new RLock). */
static int condition_new(lua_State *L) {
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    rlock_new(L);
  }
  lock_t *lk = host_object_test(L, 1, RLOCK_TYPE);
  bool reentrant = lk != NULL;
  if (lk == NULL) lk = host_object_test(L, 1, LOCK_TYPE);
  if (lk == NULL) return luaL_typeerror(L, 1, "host.Lock or host.RLock");
  lua_settop(L, 1);
  condition_t *c = new_object(L, sizeof(condition_t), CONDITION_TYPE, 1);
  c->lock = lk;
  c->reentrant = reentrant;
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  return 1;
}

/* cond:acquire([timeout]) -> cond | false: acquires the condition's lock. */
static int condition_acquire(lua_State *L) {
  condition_t *c = host_object_check_self(L, CONDITION_TYPE);
  double timeout = opt_block_timeout(L, 2);
  lua_settop(L, 1);
  lock_t *lk = condition_lock(L, c);  /* at 2 */
  bool got = c->reentrant ? rlock_take(L, lk, 2, timeout)
                       : lock_take(L, lk, 2, LOCK_TYPE, timeout);
  if (!got) lua_pushboolean(L, 0);
  else lua_settop(L, 1);
  return 1;
}

/* cond:release(), and __close(cond, err): releases the condition's lock. */
static int condition_release(lua_State *L) {
  condition_t *c = host_object_check_self(L, CONDITION_TYPE);
  lock_t *lk = condition_lock(L, c);
  if (c->reentrant) rlock_put(L, lk);
  else lock_put(L, lk);
  return 0;
}

/*
** Takes condition c's lock (at idx) back after a wait, restoring an
** RLock's count; never times out, and raises only when the lock is
** finalized.
*/
static void lock_restore(lua_State *L, condition_t *c, int idx,
                         lua_Integer count, host_tstate *me) {
  lock_t *lk = c->lock;
  host_deadline never = host_deadline_in(-1);
  check_lock_alive(L, c);
  while (lk->locked) lock_wait(L, lk, idx, lock_type(c), &never, false);
  lk->locked = true;
  lk->owner = me;
  if (c->reentrant) lk->count = count;
}

/*
** In a process forked while threads waited on condition c, its FIFO lists
** nodes on the stacks of threads the fork left behind: glibc reuses those
** stacks for the child's new threads, so a node may be overwritten, or be
** at the very address of a new waiter's (appending it then made a cycle,
** and notify_all spun for ever). None of them can be notified: forget
** them all (the forking thread itself was not waiting).
*/
static void drop_forked_waiters(lua_State *L, condition_t *c) {
  if (c->head != NULL && c->forks != host_fork_count(L)) c->head = c->tail = NULL;
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
** Waits on the condition at 1, whose lock the caller holds, for at most
** timeout seconds (-1: no limit); returns whether it was notified. The
** lock is released while waiting and held again on return, whatever
** happened (unless it was finalized meanwhile).
*/
static bool condition_do_wait(lua_State *L, condition_t *c, double timeout) {
  int top = lua_gettop(L);
  lock_t *lk = condition_lock(L, c);
  int lock_idx = lua_gettop(L);
  host_tstate *me = host_current();
  if (!lk->locked || (c->reentrant && lk->owner != me))
    luaL_error(L, "cannot wait on un-acquired lock");
  cond_waiter w = {false, me, NULL};
  drop_forked_waiters(L, c);
  if (c->head == NULL) c->forks = host_fork_count(L);
  if (c->tail) c->tail->next = &w;
  else c->head = &w;
  c->tail = &w;
  lua_Integer count = lk->count;
  lk->owner = NULL;
  lk->count = 0;
  lock_give(lk);
  host_deadline d = host_deadline_in(timeout);
  host_wait_result r = HOST_WAIT_WOKEN;
  while (!w.notified && r == HOST_WAIT_WOKEN && !c->h.obj.finalized) {
    host_wait_on(L, CONDITION_TYPE, "waiting for notify", c, NULL);
    r = host_waitq_wait(L, c->h.q, &d);
  }
  if (!w.notified) unlink_waiter(c, &w);  /* no dangling node, whatever follows */
  lock_restore(L, c, lock_idx, count, me);
  if (c->h.obj.finalized)  /* while waiting */
    luaL_error(L, "attempt to use a finalized %s", CONDITION_TYPE);
  if (r == HOST_WAIT_INTERRUPTED && !w.notified) host_raise_interrupt(L);
  lua_settop(L, top);
  return w.notified;
}

/* cond:wait([timeout]) -> true when notified, false on timeout. */
static int condition_wait(lua_State *L) {
  condition_t *c = host_object_check_self(L, CONDITION_TYPE);
  double timeout = host_opt_timeout(L, 2);
  lua_pushboolean(L, condition_do_wait(L, c, timeout));
  return 1;
}

/*
** cond:wait_for(predicate [, timeout]) -> the predicate's last result. An
** error in the predicate propagates with the lock still held.
*/
static int condition_wait_for(lua_State *L) {
  condition_t *c = host_object_check_self(L, CONDITION_TYPE);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  double timeout = host_opt_timeout(L, 3);
  host_deadline d = host_deadline_in(timeout);
  for (;;) {
    lua_settop(L, 3);
    lua_pushvalue(L, 2);
    lua_call(L, 0, 1);
    if (lua_toboolean(L, -1) || host_deadline_passed(&d)) return 1;
    lua_pop(L, 1);
    condition_do_wait(L, c, d.never ? -1 : host_deadline_left(&d));
  }
}

/*
** Marks up to n waiters notified, oldest first, and wakes those alone: a
** waiter not notified would only wake to sleep again (one notify() among
** N waiters cost N hand-offs of the GIL, so N of them cost N^2).
*/
static void notify_waiters(lua_State *L, condition_t *c, lua_Integer n) {
  drop_forked_waiters(L, c);
  while (n-- > 0 && c->head != NULL) {
    cond_waiter *w = c->head;
    c->head = w->next;
    if (c->head == NULL) c->tail = NULL;
    w->notified = true;
    host_waitq_notify_thread(c->h.q, w->ts);
  }
}

/* Raises unless the calling thread holds the lock of condition c, at 1. */
static void check_owned(lua_State *L, condition_t *c, const char *what) {
  lock_t *lk = condition_lock(L, c);
  if (!lk->locked || (c->reentrant && lk->owner != host_current()))
    luaL_error(L, "cannot %s on un-acquired lock", what);
  lua_pop(L, 1);
}

static int condition_notify(lua_State *L) {
  condition_t *c = host_object_check_self(L, CONDITION_TYPE);
  lua_Integer n = luaL_optinteger(L, 2, 1);
  luaL_argcheck(L, n >= 0, 2, "count must be non-negative");
  check_owned(L, c, "notify");
  notify_waiters(L, c, n);
  return 0;
}

static int condition_notify_all(lua_State *L) {
  condition_t *c = host_object_check_self(L, CONDITION_TYPE);
  check_owned(L, c, "notify");
  notify_waiters(L, c, LUA_MAXINTEGER);
  return 0;
}

/* ---- Semaphore and BoundedSemaphore ---- */

static bool semaphore_positive(void *obj) {
  return ((semaphore_t *)obj)->value > 0;
}

/* The Semaphore or BoundedSemaphore at 1, with its type name. */
static semaphore_t *check_semaphore(lua_State *L, const char **tname) {
  semaphore_t *s = host_object_test(L, 1, SEMAPHORE_TYPE);
  *tname = s ? SEMAPHORE_TYPE : BSEMAPHORE_TYPE;
  return s ? s : host_object_check(L, 1, BSEMAPHORE_TYPE);
}

/* sem:acquire([timeout]) -> sem | false */
static int semaphore_acquire(lua_State *L) {
  const char *tname;
  semaphore_t *s = check_semaphore(L, &tname);
  double timeout = opt_block_timeout(L, 2);
  if (s->value == 0) {
    host_deadline d = host_deadline_in(timeout);
    if (timeout == 0 || !wait_until(L, 1, tname, &d, semaphore_positive, s)) {
      lua_pushboolean(L, 0);
      return 1;
    }
  }
  s->value--;
  lua_settop(L, 1);
  return 1;
}

/* Adds n >= 1 permits to s; raises past the bound or math.maxinteger. */
static void semaphore_add(lua_State *L, semaphore_t *s, lua_Integer n) {
  if (s->bounded && n > s->bound - s->value)
    luaL_error(L, "semaphore released too many times");
  if (n > LUA_MAXINTEGER - s->value)
    luaL_error(L, "semaphore value would exceed math.maxinteger");
  s->value += n;
  if (s->h.q->waiters != NULL)  /* n permits: n waiters at most can use them */
    host_waitq_notify_first_n(s->h.q, n < INT_MAX ? (int)n : INT_MAX);
}

/* sem:release([n]) */
static int semaphore_release(lua_State *L) {
  const char *tname;
  semaphore_t *s = check_semaphore(L, &tname);
  lua_Integer n = luaL_optinteger(L, 2, 1);
  luaL_argcheck(L, n >= 1, 2, "n must be one or more");
  semaphore_add(L, s, n);
  return 0;
}

/*
** __close(sem, err): gives back the one permit that `local _ <close> =
** sem:acquire()` took. The error being propagated (argument 2) is not
** looked at.
*/
static int semaphore_close(lua_State *L) {
  const char *tname;
  semaphore_add(L, check_semaphore(L, &tname), 1);
  return 0;
}

static int semaphore_value(lua_State *L) {
  const char *tname;
  lua_pushinteger(L, check_semaphore(L, &tname)->value);
  return 1;
}

/* Makes a semaphore of type tname with the initial value at 1. */
static int make_semaphore(lua_State *L, const char *tname, bool bounded) {
  lua_Integer value = luaL_optinteger(L, 1, 1);
  luaL_argcheck(L, value >= 0, 1, "semaphore initial value must be >= 0");
  semaphore_t *s = new_object(L, sizeof *s, tname, 0);
  s->value = value;
  s->bound = value;
  s->bounded = bounded;
  return 1;
}

static int semaphore_new(lua_State *L) {
  return make_semaphore(L, SEMAPHORE_TYPE, false);
}

static int bsemaphore_new(lua_State *L) {
  return make_semaphore(L, BSEMAPHORE_TYPE, true);
}

/* ---- Event ---- */

/* ev:set(): sets the flag; every thread waiting then returns true. */
static int event_set(lua_State *L) {
  event_t *e = host_object_check_self(L, EVENT_TYPE);
  if (!e->flag) {
    e->flag = true;
    e->sets++;
    host_waitq_notify(e->h.q);
  }
  return 0;
}

static int event_clear(lua_State *L) {
  event_t *e = host_object_check_self(L, EVENT_TYPE);
  e->flag = false;
  return 0;
}

static int event_is_set(lua_State *L) {
  event_t *e = host_object_check_self(L, EVENT_TYPE);
  lua_pushboolean(L, e->flag);
  return 1;
}

/*
** ev:wait([timeout]) -> true when set, false on timeout. A waiter that a
** set() woke returns true even if clear() followed before it ran (as
** CPython since issue 13502): it waits for a set, counted in `sets`.
*/
static int event_wait(lua_State *L) {
  event_t *e = host_object_check_self(L, EVENT_TYPE);
  host_deadline d = host_deadline_in(host_opt_timeout(L, 2));
  unsigned long long sets = e->sets;
  while (!e->flag && e->sets == sets && !host_deadline_passed(&d))
    object_wait(L, 1, EVENT_TYPE, &d, true);
  lua_pushboolean(L, e->flag || e->sets != sets);
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
  host_waitq_notify(b->h.q);
}

static int broken_error(lua_State *L) {
  return host_error_raise(L, "BrokenBarrierError", "the barrier is broken");
}

/*
** Waits while another thread runs the barrier's action (as CPython's
** threads wait for the Barrier's lock); `what` names the caller for the
** error raised when the action itself calls it.
*/
static void barrier_wait_action(lua_State *L, barrier_t *b, const char *what) {
  host_deadline never = host_deadline_in(-1);
  while (b->actor != NULL) {
    if (b->actor == host_current())
      luaL_error(L, "cannot %s a barrier from its own action", what);
    object_wait(L, 1, BARRIER_TYPE, &never, true);
  }
}

/*
** The last arrival at the barrier at 1: runs the action (protected; other
** threads that call the barrier meanwhile wait), then lets the cycle go.
** An error in the action breaks the barrier and is raised again, as is.
*/
static int barrier_complete(lua_State *L, barrier_t *b, lua_Integer index) {
  lua_getiuservalue(L, 1, 1);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
  } else {
    b->actor = host_current();
    int status = lua_pcall(L, 0, 0, 0);
    b->actor = NULL;
    host_object_check(L, 1, BARRIER_TYPE);  /* the action may finalize it */
    if (status != LUA_OK || b->broken) {  /* the action failed, or aborted */
      b->count--;
      barrier_break(b);
      return status != LUA_OK ? lua_error(L) : broken_error(L);
    }
  }
  b->count = 0;
  b->cycle++;
  host_waitq_notify(b->h.q);
  lua_pushinteger(L, index);
  return 1;
}

/*
** reset() ends the cycle `cycle` of the barrier at 1, with `count` threads
** waiting in it: notes it in the table at uservalue 2, [cycle] = how many
** of them have not left yet, so that each of them breaks however many
** cycles end before it runs (a single "last reset cycle" let a waiter
** that two resets, or a reset and a completed cycle, passed by go free).
*/
static void note_reset_cycle(lua_State *L, unsigned long long cycle, lua_Integer count) {
  if (lua_getiuservalue(L, 1, 2) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, 1, 2);
  }
  lua_pushinteger(L, count);
  lua_rawseti(L, -2, (lua_Integer)cycle);
  lua_pop(L, 1);
}

/*
** The calling thread waited in the cycle `cycle` of the barrier at 1,
** which has ended: true if a reset ended it (see note_reset_cycle), and
** then the thread is counted out of it.
*/
static bool leave_reset_cycle(lua_State *L, unsigned long long cycle) {
  if (lua_getiuservalue(L, 1, 2) != LUA_TTABLE) {
    lua_pop(L, 1);
    return false;
  }
  if (lua_rawgeti(L, -1, (lua_Integer)cycle) == LUA_TNIL) {
    lua_pop(L, 2);
    return false;
  }
  lua_Integer left = lua_tointeger(L, -1) - 1;
  lua_pop(L, 1);
  if (left > 0) lua_pushinteger(L, left);
  else lua_pushnil(L);
  lua_rawseti(L, -2, (lua_Integer)cycle);
  lua_pop(L, 1);
  return true;
}

/*
** barrier:wait([timeout]) -> the arrival index, 0 .. parties-1. The last
** arrival runs the action; an error in it, a timeout or abort() breaks the
** barrier for everyone. A timeout that passes while the action runs does
** not: the cycle ends with the action (CPython runs it under the barrier's
** lock, which a party timing out must take back before it can break it).
*/
static int barrier_wait(lua_State *L) {
  barrier_t *b = host_object_check(L, 1, BARRIER_TYPE);
  double timeout = lua_isnoneornil(L, 2) ? b->timeout : host_opt_timeout(L, 2);
  lua_settop(L, 1);
  barrier_wait_action(L, b, "wait on");
  if (b->broken) return broken_error(L);
  lua_Integer index = b->count++;
  unsigned long long cycle = b->cycle;
  if (b->count == b->parties) return barrier_complete(L, b, index);
  host_deadline d = host_deadline_in(timeout), never = host_deadline_in(-1);
  while (b->cycle == cycle && !b->broken) {
    host_wait_on(L, BARRIER_TYPE, "waiting for the other parties", b, NULL);
    host_wait_result r = host_waitq_wait(L, b->h.q, b->actor != NULL ? &never : &d);
    host_object_check(L, 1, BARRIER_TYPE);
    if (b->cycle != cycle) break;
    if (r == HOST_WAIT_TIMEOUT && b->actor != NULL) continue;  /* its action runs */
    if (r != HOST_WAIT_WOKEN) {
      barrier_break(b);
      if (r == HOST_WAIT_INTERRUPTED) {
        b->count--;
        return host_raise_interrupt(L);
      }
    }
  }
  if (b->cycle == cycle) {  /* broken in its cycle */
    b->count--;
    return broken_error(L);
  }
  if (leave_reset_cycle(L, cycle)) return broken_error(L);
  lua_pushinteger(L, index);
  return 1;
}

/* barrier:reset(): waiters now break; the barrier starts afresh. */
static int barrier_reset(lua_State *L) {
  barrier_t *b = host_object_check(L, 1, BARRIER_TYPE);
  barrier_wait_action(L, b, "reset");
  if (b->count > 0) {
    note_reset_cycle(L, b->cycle, b->count);
    b->cycle++;
    b->count = 0;
  }
  b->broken = false;
  host_waitq_notify(b->h.q);
  return 0;
}

/* barrier:abort(): breaks the barrier (the action may call it too). */
static int barrier_abort(lua_State *L) {
  barrier_break(host_object_check(L, 1, BARRIER_TYPE));
  return 0;
}

/* b.parties, b.n_waiting, b.broken and the methods. */
static int barrier_index(lua_State *L) {
  barrier_t *b = host_object_check_self(L, BARRIER_TYPE);
  if (lua_type(L, 2) != LUA_TSTRING) return 0;  /* b[1], b[{}]: nil */
  const char *key = lua_tostring(L, 2);
  if (strcmp(key, "parties") == 0) lua_pushinteger(L, b->parties);
  else if (strcmp(key, "n_waiting") == 0) lua_pushinteger(L, b->count);
  else if (strcmp(key, "broken") == 0) lua_pushboolean(L, b->broken);
  else {
    lua_getfield(L, lua_upvalueindex(1), "methods");
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
  barrier_t *b = new_object(L, sizeof *b, BARRIER_TYPE, 2);
  b->parties = parties;
  b->timeout = timeout;
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, -2, 1);
  return 1;
}

/* ---- hold: the acquire for `<close>` that cannot run unlocked ---- */

/*
** x:hold([timeout]) -> x, for `local _ <close> = x:hold(0.5)`: acquires
** like `acquire` but raises TimeoutError when the timeout passes, where
** acquire returns false (a value `<close>` accepts, so the block would run
** without the lock). `acquire` is the type's acquire method.
*/
static int hold_with(lua_State *L, lua_CFunction acquire) {
  lua_settop(L, 2);
  acquire(L);
  if (lua_toboolean(L, -1)) return 1;
  lua_settop(L, 2);
  double timeout = lua_isboolean(L, 2) ? 0 : host_opt_timeout(L, 2);
  luaL_tolstring(L, 1, NULL);
  return host_error_raise(L, "TimeoutError", "could not acquire %s within %f seconds",
                          lua_tostring(L, -1), timeout);
}

static int lock_acquire(lua_State *L);
static int rlock_acquire(lua_State *L);
static int condition_acquire(lua_State *L);
static int semaphore_acquire(lua_State *L);

static int lock_hold(lua_State *L) {
  return hold_with(L, lock_acquire);
}

static int rlock_hold(lua_State *L) {
  return hold_with(L, rlock_acquire);
}

static int condition_hold(lua_State *L) {
  return hold_with(L, condition_acquire);
}

static int semaphore_hold(lua_State *L) {
  return hold_with(L, semaphore_acquire);
}

/* ---- dumps: thread.dump_tracebacks and friends ---- */

/* thread.dump_tracebacks([file]): every thread's traceback, to file (default io.stderr). */
static int l_dump_tracebacks(lua_State *L) {
  FILE *out = stderr;
  if (!lua_isnoneornil(L, 1)) {
    luaL_Stream *p = luaL_checkudata(L, 1, LUA_FILEHANDLE);
    if (p->closef == NULL) return luaL_error(L, "attempt to use a closed file");
    out = p->f;
  }
  host_push_dump(L, 1);
  size_t len;
  const char *text = lua_tolstring(L, -1, &len);
  fwrite(text, 1, len, out);
  fflush(out);
  return 0;
}

/* thread.dump_tracebacks_later(seconds): one dump on stderr after seconds. */
static int l_dump_tracebacks_later(lua_State *L) {
  lua_Number s = luaL_checknumber(L, 1);
  luaL_argcheck(L, s >= 0 && s <= 1e9, 1, "seconds must be in [0, 1e9]");
  int rc = host_dump_later(L, (double)s);
  if (rc != 0) return luaL_error(L, "cannot start the dump watcher: %s", strerror(rc));
  return 0;
}

/* thread.cancel_dump_tracebacks_later(): forgets the dump asked for. */
static int l_cancel_dump_tracebacks_later(lua_State *L) {
  host_dump_later(L, -1);
  return 0;
}

static const luaL_Reg lock_methods[] = {
  {"acquire", lock_acquire}, {"release", lock_release}, {"locked", lock_locked},
  {"hold", lock_hold}, {NULL, NULL}
};
static const luaL_Reg lock_meta[] = {
  {"__close", lock_release}, {"__gc", object_gc}, {"__tostring", object_tostring},
  {NULL, NULL}
};
static const luaL_Reg rlock_methods[] = {
  {"acquire", rlock_acquire}, {"release", rlock_release}, {"locked", rlock_locked},
  {"hold", rlock_hold}, {NULL, NULL}
};
static const luaL_Reg rlock_meta[] = {
  {"__close", rlock_release}, {"__gc", object_gc}, {"__tostring", object_tostring},
  {NULL, NULL}
};
static const luaL_Reg condition_methods[] = {
  {"acquire", condition_acquire}, {"release", condition_release},
  {"hold", condition_hold}, {"wait", condition_wait}, {"wait_for", condition_wait_for},
  {"notify", condition_notify}, {"notify_all", condition_notify_all},
  {NULL, NULL}
};
static const luaL_Reg condition_meta[] = {
  {"__close", condition_release}, {"__gc", object_gc},
  {"__tostring", object_tostring}, {NULL, NULL}
};
static const luaL_Reg semaphore_methods[] = {
  {"acquire", semaphore_acquire}, {"release", semaphore_release},
  {"hold", semaphore_hold}, {"value", semaphore_value}, {NULL, NULL}
};
static const luaL_Reg semaphore_meta[] = {
  {"__close", semaphore_close}, {"__gc", object_gc},
  {"__tostring", object_tostring}, {NULL, NULL}
};
static const luaL_Reg event_methods[] = {
  {"set", event_set}, {"clear", event_clear}, {"is_set", event_is_set},
  {"wait", event_wait}, {NULL, NULL}
};
static const luaL_Reg barrier_methods[] = {
  {"wait", barrier_wait}, {"reset", barrier_reset}, {"abort", barrier_abort},
  {NULL, NULL}
};
static const luaL_Reg plain_meta[] = {
  {"__gc", object_gc}, {"__tostring", object_tostring}, {NULL, NULL}
};

static const luaL_Reg sync_constructors[] = {
  {"Lock", lock_new},
  {"RLock", rlock_new},
  {"Condition", condition_new},
  {"Semaphore", semaphore_new},
  {"BoundedSemaphore", bsemaphore_new},
  {"Event", event_new},
  {"Barrier", barrier_new},
  {"dump_tracebacks", l_dump_tracebacks},
  {"dump_tracebacks_later", l_dump_tracebacks_later},
  {"cancel_dump_tracebacks_later", l_cancel_dump_tracebacks_later},
  {NULL, NULL}
};

void host_open_sync(lua_State *L) {
  host_type_define(L, LOCK_TYPE, lock_methods, lock_meta, NULL);
  host_type_define(L, RLOCK_TYPE, rlock_methods, rlock_meta, NULL);
  host_type_define(L, CONDITION_TYPE, condition_methods, condition_meta, NULL);
  host_type_define(L, SEMAPHORE_TYPE, semaphore_methods, semaphore_meta, NULL);
  host_type_define(L, BSEMAPHORE_TYPE, semaphore_methods, semaphore_meta, NULL);
  host_type_define(L, EVENT_TYPE, event_methods, plain_meta, NULL);
  host_type_define(L, BARRIER_TYPE, barrier_methods, plain_meta, barrier_index);
  luaL_setfuncs(L, sync_constructors, 0);
}
