/*
** queue.c: `require "host.queue"`, the twin of Python's queue module:
** Queue(maxsize), LifoQueue(maxsize), PriorityQueue(maxsize) and
** SimpleQueue, for threads of one universe.
**
** Items live in the queue's uservalue table; counters are C fields used
** with the GIL held. Getters, putters and joiners sleep on the queue's one
** host_waitq, which every change notifies. Timeouts and full/empty answer
** with nil and a reason; a shut-down queue raises a ShutDown error object.
*/
#include <string.h>

#include "modules.h"
#include "runtime.h"

#define QUEUE_TYPE "host.Queue"
#define SIMPLE_TYPE "host.SimpleQueue"

typedef enum { Q_FIFO, Q_LIFO, Q_PRIORITY } queue_order;

typedef struct queue_t {
  host_waitq *q;
  queue_order order;
  lua_Integer maxsize;     /* <= 0: unbounded */
  lua_Integer head, tail;  /* items at [head, tail) of the uservalue table */
  lua_Integer unfinished;  /* put and not yet task_done */
  bool shut;
} queue_t;

static queue_t *check_queue(lua_State *L) {
  queue_t *q = luaL_testudata(L, 1, QUEUE_TYPE);
  return q ? q : luaL_checkudata(L, 1, SIMPLE_TYPE);
}

static lua_Integer queue_size(const queue_t *q) {
  return q->tail - q->head;
}

static bool queue_full(const queue_t *q) {
  return q->maxsize > 0 && queue_size(q) >= q->maxsize;
}

static int shut_down_error(lua_State *L) {
  return host_error_raise(L, "ShutDown", "the queue is shut down");
}

/* Compares heap slots i and j of the items table at t: items[i] < items[j]. */
static bool heap_less(lua_State *L, int t, lua_Integer i, lua_Integer j) {
  lua_rawgeti(L, t, i);
  lua_rawgeti(L, t, j);
  bool less = lua_compare(L, -2, -1, LUA_OPLT);
  lua_pop(L, 2);
  return less;
}

static void heap_swap(lua_State *L, int t, lua_Integer i, lua_Integer j) {
  lua_rawgeti(L, t, i);
  lua_rawgeti(L, t, j);
  lua_rawseti(L, t, i);
  lua_rawseti(L, t, j);
}

/* Adds the value on top of the stack (popped) to the queue at 1. */
static void push_item(lua_State *L, queue_t *q) {
  lua_getiuservalue(L, 1, 1);
  lua_insert(L, -2);
  int t = lua_gettop(L) - 1;
  lua_Integer slot = q->tail++;
  lua_rawseti(L, t, slot);
  q->unfinished++;
  if (q->order == Q_PRIORITY) {  /* sift up; heap slots are 1-based */
    while (slot > 1 && heap_less(L, t, slot, slot / 2)) {
      heap_swap(L, t, slot, slot / 2);
      slot /= 2;
    }
  }
  lua_pop(L, 1);
  host_waitq_notify(q->q);
}

/* Pushes the next item of the queue at 1, removing it. */
static void pop_item(lua_State *L, queue_t *q) {
  lua_getiuservalue(L, 1, 1);
  int t = lua_gettop(L);
  if (q->order == Q_FIFO) {
    lua_rawgeti(L, t, q->head);
    lua_pushnil(L);
    lua_rawseti(L, t, q->head++);
  } else {
    lua_Integer last = --q->tail;
    if (q->order == Q_LIFO) {
      lua_rawgeti(L, t, last);
    } else {  /* the heap's root, replaced by its last item, sifted down */
      lua_rawgeti(L, t, 1);
      lua_rawgeti(L, t, last);
      lua_rawseti(L, t, 1);
      lua_Integer i = 1;
      for (;;) {
        lua_Integer child = 2 * i;
        if (child >= last) break;
        if (child + 1 < last && heap_less(L, t, child + 1, child)) child++;
        if (!heap_less(L, t, child, i)) break;
        heap_swap(L, t, child, i);
        i = child;
      }
    }
    lua_pushnil(L);
    lua_rawseti(L, t, last);
  }
  if (queue_size(q) == 0 && q->order == Q_FIFO) q->head = q->tail = 1;
  lua_remove(L, t);
  host_waitq_notify(q->q);
}

/* Waits until `ready` holds for q, shutdown, or the deadline; false on timeout. */
static bool queue_wait(lua_State *L, queue_t *q, double timeout, bool for_space) {
  host_deadline d = host_deadline_in(timeout);
  for (;;) {
    if (q->shut) return true;
    if (for_space ? !queue_full(q) : queue_size(q) > 0) return true;
    if (timeout == 0) return false;
    host_wait_result r = host_waitq_wait(L, q->q, &d);
    if (r == HOST_WAIT_INTERRUPTED) host_raise_interrupt(L);
    if (r == HOST_WAIT_TIMEOUT) {
      if (q->shut) return true;
      return for_space ? !queue_full(q) : queue_size(q) > 0;
    }
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
  queue_t *q = luaL_checkudata(L, 1, QUEUE_TYPE);
  if (q->unfinished <= 0) return luaL_error(L, "task_done() called too many times");
  if (--q->unfinished == 0) host_waitq_notify(q->q);
  return 0;
}

/* q:join([timeout]) -> true when every item is done | nil, "timeout" */
static int queue_join(lua_State *L) {
  queue_t *q = luaL_checkudata(L, 1, QUEUE_TYPE);
  host_deadline d = host_deadline_in(host_opt_timeout(L, 2));
  while (q->unfinished > 0) {
    host_wait_result r = host_waitq_wait(L, q->q, &d);
    if (r == HOST_WAIT_INTERRUPTED) return host_raise_interrupt(L);
    if (r == HOST_WAIT_TIMEOUT && q->unfinished > 0) {
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
  queue_t *q = luaL_checkudata(L, 1, QUEUE_TYPE);
  q->shut = true;
  if (lua_toboolean(L, 2)) {
    q->unfinished -= queue_size(q);
    if (q->unfinished < 0) q->unfinished = 0;
    lua_newtable(L);
    lua_setiuservalue(L, 1, 1);
    q->head = q->tail = 1;
  }
  host_waitq_notify(q->q);
  return 0;
}

static int queue_gc(lua_State *L) {
  queue_t *q = lua_touserdata(L, 1);
  host_waitq_unref(q->q);
  q->q = NULL;
  return 0;
}

static int queue_tostring(lua_State *L) {
  queue_t *q = check_queue(L);
  static const char *const names[] = {"Queue", "LifoQueue", "PriorityQueue"};
  bool simple = luaL_testudata(L, 1, SIMPLE_TYPE) != NULL;
  lua_pushfstring(L, "host.%s (%I items%s): %p", simple ? "SimpleQueue" : names[q->order],
                  queue_size(q), q->shut ? ", shut down" : "", (void *)q);
  return 1;
}

/* Makes a queue of the given order and metatable; maxsize at 1. */
static int make_queue(lua_State *L, queue_order order, const char *tname) {
  lua_Integer maxsize = luaL_optinteger(L, 1, 0);
  queue_t *q = lua_newuserdatauv(L, sizeof *q, 1);
  memset(q, 0, sizeof *q);
  luaL_setmetatable(L, tname);
  q->q = host_waitq_new();
  if (q->q == NULL) return luaL_error(L, "not enough memory");
  q->order = order;
  q->maxsize = maxsize;
  q->head = q->tail = 1;
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

static const luaL_Reg queue_funcs[] = {
  {"Queue", queue_new},
  {"LifoQueue", lifo_new},
  {"PriorityQueue", priority_new},
  {"SimpleQueue", simple_new},
  {NULL, NULL}
};

/* Creates metatable tname with `methods` as __index. */
static void make_type(lua_State *L, const char *tname, const luaL_Reg *methods) {
  luaL_newmetatable(L, tname);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, queue_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, queue_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
}

int luaopen_host_queue(lua_State *L) {
  make_type(L, QUEUE_TYPE, queue_methods);
  make_type(L, SIMPLE_TYPE, simple_methods);
  luaL_newlib(L, queue_funcs);
  return 1;
}
