/*
** queue.c: `require "host.queue"`, the twin of Python's queue module:
** Queue(maxsize), LifoQueue(maxsize), PriorityQueue(maxsize) and
** SimpleQueue, for threads of one universe.
**
** Items live in the queue's uservalue table (a host_fifo for Queue and
** SimpleQueue, slots 1..n for LifoQueue and PriorityQueue's heap);
** counters are C fields used with the GIL held. As in CPython, getters
** sleep on one wait queue (not_empty) and putters on another (not_full),
** and a put wakes one getter, a get one putter: one queue for all made
** every item wake every consumer. Joiners, and threads waiting for a
** PriorityQueue's comparison to end, sleep on a third (others), which is
** woken whole. A getter or putter so woken that leaves without its item
** or its slot (an interrupt, an error in __lt) passes the wake-up on.
** Timeouts and full/empty answer with nil and a reason; a shut-down queue
** raises a ShutDown error object.
**
** A PriorityQueue compares items with `<`, which may run a Lua __lt: it
** may raise, and the GIL may change hands inside it. So a put or get
** first finds where items go with the heap untouched and the queue marked
** busy (other threads wait until it is not), and only then moves the
** items, with no Lua code in between. An error in __lt leaves the queue as
** it was and is raised by that put or get.
**
** __gc wakes the waiters and drops the wait queue; the queue is then
** finalized and every method raises "attempt to use a finalized
** host.Queue".
*/
#include <string.h>

#include "modules.h"
#include "runtime.h"

#define QUEUE_TYPE "host.Queue"
#define SIMPLE_TYPE "host.SimpleQueue"

typedef enum { Q_FIFO, Q_LIFO, Q_PRIORITY } queue_order;

typedef struct queue_t {
  host_object obj;
  host_waitq *not_empty;   /* getters; the three are NULL once finalized */
  host_waitq *not_full;    /* putters */
  host_waitq *others;      /* joiners, and waiters for `busy` to end */
  const char *tname;       /* QUEUE_TYPE or SIMPLE_TYPE */
  queue_order order;
  lua_Integer maxsize;     /* <= 0: unbounded */
  host_fifo fifo;          /* Q_FIFO: the items */
  lua_Integer n;           /* Q_LIFO, Q_PRIORITY: the items are at [1, n] */
  lua_Integer unfinished;  /* put and not yet task_done */
  host_tstate *busy;       /* the thread comparing priority items, or NULL */
  bool shut;
} queue_t;

/* Raises when the queue at 1 was finalized (during a wait, say). */
static void check_live(lua_State *L, queue_t *q) {
  if (q->obj.finalized) host_object_check(L, 1, q->tname);
}

/* The Queue or SimpleQueue at 1. */
static queue_t *check_queue(lua_State *L) {
  if (lua_getmetatable(L, 1)) {  /* the fast path: upvalue 1 is the method's own type */
    bool own = lua_rawequal(L, -1, lua_upvalueindex(1));
    lua_pop(L, 1);
    if (own) {
      queue_t *q = lua_touserdata(L, 1);
      check_live(L, q);
      return q;
    }
  }
  queue_t *q = host_object_test(L, 1, QUEUE_TYPE);
  return q ? q : host_object_check(L, 1, SIMPLE_TYPE);
}

static lua_Integer queue_size(const queue_t *q) {
  return q->order == Q_FIFO ? host_fifo_len(&q->fifo) : q->n;
}

static bool queue_full(const queue_t *q) {
  return q->maxsize > 0 && queue_size(q) >= q->maxsize;
}

static int shut_down_error(lua_State *L) {
  return host_error_raise(L, "ShutDown", "the queue is shut down");
}

/* Wakes every waiter of the queue (shutdown, __gc). */
static void notify_all(queue_t *q) {
  host_waitq_notify(q->not_empty);
  host_waitq_notify(q->not_full);
  host_waitq_notify(q->others);
}

/*
** Wakes a getter if an item is there and a putter if a slot is (each may
** have been the one woken for it, and be leaving without it).
*/
static void pass_on(queue_t *q) {
  if (queue_size(q) > 0) host_waitq_notify_first(q->not_empty);
  if (!queue_full(q)) host_waitq_notify_first(q->not_full);
}

/*
** Waits once on wq, a wait queue of the queue at 1, with the GIL
** released; raises on an interrupt (passing on a wake-up it may have
** had) and when the queue got finalized meanwhile.
*/
static host_wait_result queue_wait_once(lua_State *L, queue_t *q, host_waitq *wq,
                                        const host_deadline *d, const char *detail) {
  host_wait_on(L, q->tname, detail, q, detail == NULL ? q->busy : NULL);
  host_wait_result r = host_waitq_wait(L, wq, d);
  check_live(L, q);
  if (r == HOST_WAIT_INTERRUPTED) {
    pass_on(q);
    host_raise_interrupt(L);
  }
  return r;
}

/* Waits until no other thread is in the middle of a priority put or get. */
static void wait_idle(lua_State *L, queue_t *q) {
  host_deadline never = host_deadline_in(-1);
  while (q->busy != NULL) {
    if (q->busy == host_current())
      luaL_error(L, "cannot use a PriorityQueue from inside its own comparison");
    queue_wait_once(L, q, q->others, &never, NULL);
  }
}

/* ---- the heap of a PriorityQueue (slots 1..n, smallest at 1) ---- */

/*
** Protected, with the heap untouched: (items, item, slot) -> where the
** item put at the new slot `slot` ends up after sifting up.
*/
static int heap_find_up(lua_State *L) {
  lua_Integer p = lua_tointeger(L, 3);
  while (p > 1) {
    lua_rawgeti(L, 1, p / 2);
    bool less = lua_compare(L, 2, -1, LUA_OPLT);
    lua_pop(L, 1);
    if (!less) break;
    p /= 2;
  }
  lua_pushinteger(L, p);
  return 1;
}

/*
** Protected, with the heap untouched: (items, last, m) -> where `last`
** ends up when it fills the hole at slot 1 of a heap of m slots.
*/
static int heap_find_down(lua_State *L) {
  lua_Integer m = lua_tointeger(L, 3), i = 1;
  while (2 * i <= m) {
    lua_Integer child = 2 * i;
    if (child + 1 <= m) {
      lua_rawgeti(L, 1, child + 1);
      lua_rawgeti(L, 1, child);
      if (lua_compare(L, -2, -1, LUA_OPLT)) child++;
      lua_pop(L, 2);
    }
    lua_rawgeti(L, 1, child);
    bool less = lua_compare(L, -1, 2, LUA_OPLT);
    lua_pop(L, 1);
    if (!less) break;
    i = child;
  }
  lua_pushinteger(L, i);
  return 1;
}

/*
** Runs `find` (items at t, the item at v, the count c) with the queue
** marked busy, and returns its slot; raises its error with the queue
** unchanged.
*/
static lua_Integer heap_find(lua_State *L, queue_t *q, lua_CFunction find,
                             int t, int v, lua_Integer c) {
  lua_pushcfunction(L, find);
  lua_pushvalue(L, t);
  lua_pushvalue(L, v);
  lua_pushinteger(L, c);
  q->busy = host_current();
  int status = lua_pcall(L, 3, 1, 0);
  q->busy = NULL;
  check_live(L, q);
  host_waitq_notify(q->others);
  if (status != LUA_OK) {
    pass_on(q);
    lua_error(L);
  }
  lua_Integer slot = lua_tointeger(L, -1);
  lua_pop(L, 1);
  return slot;
}

/* Adds the item on top (popped) to the heap in the items table at t. */
static void heap_put(lua_State *L, queue_t *q, int t) {
  int v = lua_gettop(L);
  lua_Integer slot = q->n + 1;
  lua_Integer p = heap_find(L, q, heap_find_up, t, v, slot);
  for (lua_Integer a = slot; a > p; a /= 2) {  /* the path moves down a level */
    lua_rawgeti(L, t, a / 2);
    lua_rawseti(L, t, a);
  }
  lua_rawseti(L, t, p);
  q->n++;
}

/* Pushes the smallest item of the heap in the items table at t, removing it. */
static void heap_get(lua_State *L, queue_t *q, int t) {
  lua_Integer n = q->n;
  lua_rawgeti(L, t, n);  /* the last item, to fill the hole at the root */
  int last = lua_gettop(L);
  lua_Integer p = n > 1 ? heap_find(L, q, heap_find_down, t, last, n - 1) : 1;
  lua_rawgeti(L, t, 1);  /* the result */
  int depth = 0;
  for (lua_Integer a = p; a > 1; a /= 2) depth++;
  for (int k = depth - 1; k >= 0; k--) {  /* the path moves up a level */
    lua_Integer a = p >> k;
    lua_rawgeti(L, t, a);
    lua_rawseti(L, t, a / 2);
  }
  lua_pushvalue(L, last);
  lua_rawseti(L, t, p);
  lua_pushnil(L);
  lua_rawseti(L, t, n);
  q->n--;
  lua_remove(L, last);
}

/* ---- items ---- */

/* Adds the value on top of the stack (popped) to the queue at 1. */
static void push_item(lua_State *L, queue_t *q) {
  if (q->order == Q_FIFO) {
    host_fifo_push(L, 1, 1, &q->fifo);
  } else {
    lua_getiuservalue(L, 1, 1);
    lua_insert(L, -2);
    int t = lua_gettop(L) - 1;
    if (q->order == Q_PRIORITY) {
      heap_put(L, q, t);
    } else {
      lua_rawseti(L, t, q->n + 1);
      q->n++;
    }
    lua_pop(L, 1);
  }
  q->unfinished++;
  host_waitq_notify_first(q->not_empty);
}

/* Pushes the next item of the queue at 1, removing it. */
static void pop_item(lua_State *L, queue_t *q) {
  if (q->order == Q_FIFO) {
    host_fifo_pop(L, 1, 1, &q->fifo);
  } else {
    lua_getiuservalue(L, 1, 1);
    int t = lua_gettop(L);
    if (q->order == Q_PRIORITY) {
      heap_get(L, q, t);
    } else {
      lua_rawgeti(L, t, q->n);
      lua_pushnil(L);
      lua_rawseti(L, t, q->n--);
    }
    lua_remove(L, t);
  }
  host_waitq_notify_first(q->not_full);
}

/*
** Waits until the queue is idle and has space (for_space) or an item, or
** is shut down: true then; false when `timeout` passes first.
*/
static bool queue_wait(lua_State *L, queue_t *q, double timeout, bool for_space) {
  host_deadline d = host_deadline_in(timeout);
  bool timed_out = timeout == 0;
  for (;;) {
    wait_idle(L, q);
    if (q->shut) return true;
    if (for_space ? !queue_full(q) : queue_size(q) > 0) return true;
    if (timed_out) return false;
    timed_out = queue_wait_once(L, q, for_space ? q->not_full : q->not_empty, &d,
                                for_space ? "put: full" : "get: empty") == HOST_WAIT_TIMEOUT;
  }
}

/* Puts the item at 2, waiting up to `timeout`; the Lua results of put. */
static int do_put(lua_State *L, double timeout, const char *busy) {
  queue_t *q = check_queue(L);
  luaL_argexpected(L, !lua_isnoneornil(L, 2), 2, "non-nil value");
  if (!queue_wait(L, q, timeout, true)) {
    luaL_pushfail(L);
    lua_pushstring(L, busy);
    return 2;
  }
  if (q->shut) return shut_down_error(L);
  lua_pushvalue(L, 2);
  push_item(L, q);
  lua_pushboolean(L, 1);
  return 1;
}

/* Gets an item, waiting up to `timeout`; the Lua results of get. */
static int do_get(lua_State *L, double timeout, const char *empty) {
  queue_t *q = check_queue(L);
  if (!queue_wait(L, q, timeout, false)) {
    luaL_pushfail(L);
    lua_pushstring(L, empty);
    return 2;
  }
  if (queue_size(q) == 0) return shut_down_error(L);
  pop_item(L, q);
  return 1;
}

/* q:put(item [, timeout]) -> true | nil, "timeout" */
static int queue_put(lua_State *L) {
  return do_put(L, host_opt_timeout(L, 3), "timeout");
}

/* q:put_nowait(item) -> true | nil, "full" */
static int queue_put_nowait(lua_State *L) {
  return do_put(L, 0, "full");
}

/* q:get([timeout]) -> item | nil, "timeout" */
static int queue_get(lua_State *L) {
  return do_get(L, host_opt_timeout(L, 2), "timeout");
}

/* q:get_nowait() -> item | nil, "empty" */
static int queue_get_nowait(lua_State *L) {
  return do_get(L, 0, "empty");
}

static int queue_qsize(lua_State *L) {
  lua_pushinteger(L, queue_size(check_queue(L)));
  return 1;
}

static int queue_empty(lua_State *L) {
  lua_pushboolean(L, queue_size(check_queue(L)) == 0);
  return 1;
}

static int queue_is_full(lua_State *L) {
  lua_pushboolean(L, queue_full(check_queue(L)));
  return 1;
}

/* q:task_done(): one item put earlier is fully processed. */
static int queue_task_done(lua_State *L) {
  queue_t *q = host_object_check_self(L, QUEUE_TYPE);
  if (q->unfinished <= 0) return luaL_error(L, "task_done() called too many times");
  if (--q->unfinished == 0) host_waitq_notify(q->others);
  return 0;
}

/* q:join([timeout]) -> true when every item is done | nil, "timeout" */
static int queue_join(lua_State *L) {
  queue_t *q = host_object_check_self(L, QUEUE_TYPE);
  host_deadline d = host_deadline_in(host_opt_timeout(L, 2));
  while (q->unfinished > 0) {
    if (queue_wait_once(L, q, q->others, &d, "join: unfinished tasks") == HOST_WAIT_TIMEOUT &&
        q->unfinished > 0) {
      luaL_pushfail(L);
      lua_pushliteral(L, "timeout");
      return 2;
    }
  }
  lua_pushboolean(L, 1);
  return 1;
}

/*
** q:shutdown([immediate]): later puts raise ShutDown; gets raise it once
** the queue is empty. `immediate` drops the items left (as done tasks).
*/
static int queue_shutdown(lua_State *L) {
  queue_t *q = host_object_check_self(L, QUEUE_TYPE);
  wait_idle(L, q);
  q->shut = true;
  if (lua_toboolean(L, 2)) {
    q->unfinished -= queue_size(q);
    if (q->unfinished < 0) q->unfinished = 0;
    lua_newtable(L);
    lua_setiuservalue(L, 1, 1);
    host_fifo_init(&q->fifo);
    q->n = 0;
  }
  notify_all(q);
  return 0;
}

/* The name of the type whose metatable is upvalue 1 (kept alive by it). */
static const char *upvalue_tname(lua_State *L) {
  lua_getfield(L, lua_upvalueindex(1), "__name");
  const char *tname = lua_tostring(L, -1);
  lua_pop(L, 1);
  return tname;
}

/* __gc: wakes the waiters (they raise) and drops the wait queues. */
static int queue_gc(lua_State *L) {
  queue_t *q = host_object_finalize(L, upvalue_tname(L));
  if (q != NULL) {
    if (q->others != NULL) notify_all(q);  /* else a failed make_queue: no waiter */
    host_waitq_unref(q->not_empty);
    host_waitq_unref(q->not_full);
    host_waitq_unref(q->others);
    q->not_empty = q->not_full = q->others = NULL;
  }
  return 0;
}

static int queue_tostring(lua_State *L) {
  if (host_object_tostring_finalized(L, upvalue_tname(L))) return 1;
  queue_t *q = check_queue(L);
  static const char *const names[] = {"Queue", "LifoQueue", "PriorityQueue"};
  bool simple = strcmp(q->tname, SIMPLE_TYPE) == 0;
  lua_pushfstring(L, "host.%s (size=%I", simple ? "SimpleQueue" : names[q->order],
                  (LUAI_UACINT)queue_size(q));
  if (q->maxsize > 0) lua_pushfstring(L, "/%I", (LUAI_UACINT)q->maxsize);
  else lua_pushliteral(L, "");
  if (simple) lua_pushliteral(L, "");
  else lua_pushfstring(L, ", unfinished=%I", (LUAI_UACINT)q->unfinished);
  lua_pushfstring(L, "%s): %p", q->shut ? ", shut down" : "", (void *)q);
  lua_concat(L, 4);
  return 1;
}

/* Makes a queue of the given order and metatable; maxsize at 1. */
static int make_queue(lua_State *L, queue_order order, const char *tname) {
  lua_Integer maxsize = luaL_optinteger(L, 1, 0);
  queue_t *q = host_object_new(L, sizeof *q, tname, 1);
  q->not_empty = host_waitq_new();
  q->not_full = host_waitq_new();
  q->others = host_waitq_new();
  if (q->not_empty == NULL || q->not_full == NULL || q->others == NULL)
    return luaL_error(L, "not enough memory");  /* __gc frees those made */
  q->tname = tname;
  q->order = order;
  q->maxsize = maxsize;
  host_fifo_init(&q->fifo);
  lua_newtable(L);
  lua_setiuservalue(L, -2, 1);
  return 1;
}

static int queue_new(lua_State *L) {
  return make_queue(L, Q_FIFO, QUEUE_TYPE);
}

static int lifo_new(lua_State *L) {
  return make_queue(L, Q_LIFO, QUEUE_TYPE);
}

static int priority_new(lua_State *L) {
  return make_queue(L, Q_PRIORITY, QUEUE_TYPE);
}

static int simple_new(lua_State *L) {
  lua_settop(L, 0);
  return make_queue(L, Q_FIFO, SIMPLE_TYPE);
}

static const luaL_Reg queue_methods[] = {
  {"put", queue_put}, {"get", queue_get},
  {"put_nowait", queue_put_nowait}, {"get_nowait", queue_get_nowait},
  {"qsize", queue_qsize}, {"empty", queue_empty}, {"full", queue_is_full},
  {"task_done", queue_task_done}, {"join", queue_join},
  {"shutdown", queue_shutdown}, {NULL, NULL}
};

static const luaL_Reg simple_methods[] = {
  {"put", queue_put}, {"get", queue_get},
  {"put_nowait", queue_put_nowait}, {"get_nowait", queue_get_nowait},
  {"qsize", queue_qsize}, {"empty", queue_empty}, {NULL, NULL}
};

static const luaL_Reg queue_meta[] = {
  {"__gc", queue_gc}, {"__tostring", queue_tostring}, {NULL, NULL}
};

static const luaL_Reg queue_funcs[] = {
  {"Queue", queue_new},
  {"LifoQueue", lifo_new},
  {"PriorityQueue", priority_new},
  {"SimpleQueue", simple_new},
  {NULL, NULL}
};

int luaopen_host_queue(lua_State *L) {
  host_type_define(L, QUEUE_TYPE, queue_methods, queue_meta, NULL);
  host_type_define(L, SIMPLE_TYPE, simple_methods, queue_meta, NULL);
  luaL_newlib(L, queue_funcs);
  return 1;
}
