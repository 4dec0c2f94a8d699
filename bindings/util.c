/*
** util.c: deadlines, checks of arguments (callables, option names), the
** error object, the protected-call helpers, the userdata type helper
** (finalized state, checks) and FIFOs in uservalues (floor 0). The error
** object is a table {kind, message, traceback, cause, remote_traceback}
** whose metatable is the registry's "host.Error"; `require "host.error"`
** exposes it to Lua as error.new(kind, message [, cause]) and
** error.is(value, kind).
*/
#include <math.h>
#include <stdarg.h>
#include <string.h>

#include "modules.h"
#include "util.h"

double host_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

host_deadline host_deadline_in(double seconds) {
  host_deadline d = {.never = seconds < 0};
  if (d.never) return d;
  if (seconds > 1e9) seconds = 1e9;  /* ~31 years: far enough, no overflow */
  clock_gettime(CLOCK_MONOTONIC, &d.at);
  double whole = floor(seconds);
  d.at.tv_sec += (time_t)whole;
  d.at.tv_nsec += (long)((seconds - whole) * 1e9);
  if (d.at.tv_nsec >= 1000000000L) {
    d.at.tv_sec += 1;
    d.at.tv_nsec -= 1000000000L;
  }
  return d;
}

double host_deadline_left(const host_deadline *d) {
  if (d->never) return HUGE_VAL;
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  double left = (double)(d->at.tv_sec - now.tv_sec) +
                (double)(d->at.tv_nsec - now.tv_nsec) * 1e-9;
  return left > 0 ? left : 0;
}

bool host_deadline_passed(const host_deadline *d) {
  return !d->never && host_deadline_left(d) <= 0;
}

double host_opt_timeout(lua_State *L, int arg) {
  if (lua_isnoneornil(L, arg)) return -1;
  double t = (double)luaL_checknumber(L, arg);
  luaL_argcheck(L, t >= 0, arg, "timeout must be a non-negative number");
  return t;
}

int host_field_error(lua_State *L, int arg, const char *field, const char *what) {
  return luaL_argerror(L, arg, lua_pushfstring(L, "'%s' must be %s, got %s", field, what,
                                               luaL_typename(L, -1)));
}

/* ---- checks of arguments ---- */

void host_check_callable(lua_State *L, int arg) {
  if (lua_isfunction(L, arg)) return;
  if (luaL_getmetafield(L, arg, "__call") != LUA_TNIL) {
    lua_pop(L, 1);
    return;
  }
  luaL_typeerror(L, arg, "function");
}

#define OPTION_MAX 64  /* longer names are compared by prefix only */

/* c in lower case (ASCII: option names are identifiers). */
static int lower(int c) {
  return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

/* The edit distance of a and b, case ignored; both at most OPTION_MAX long. */
static size_t edit_distance(const char *a, size_t la, const char *b, size_t lb) {
  size_t row[OPTION_MAX + 1];
  for (size_t j = 0; j <= lb; j++) row[j] = j;
  for (size_t i = 1; i <= la; i++) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= lb; j++) {
      size_t up = row[j];
      size_t best = diag + (lower(a[i - 1]) != lower(b[j - 1]));
      if (up + 1 < best) best = up + 1;
      if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[lb];
}

/* True when the shorter of a and b (at least 3 long) begins the other, case ignored. */
static bool prefix_match(const char *a, size_t la, const char *b, size_t lb) {
  size_t n = la < lb ? la : lb;
  if (n < 3) return false;
  for (size_t i = 0; i < n; i++)
    if (lower(a[i]) != lower(b[i])) return false;
  return true;
}

/*
** The known option closest to key: the one at the smallest edit distance
** when that is small (at most 2, or a third of the name), else one that
** key begins or that begins key; NULL when none is close.
*/
static const char *closest_option(const char *key, size_t len, const char *const known[]) {
  const char *best = NULL, *prefixed = NULL;
  size_t best_d = (size_t)-1;
  for (int i = 0; known[i] != NULL; i++) {
    size_t kl = strlen(known[i]);
    if (prefixed == NULL && prefix_match(key, len, known[i], kl)) prefixed = known[i];
    if (len > OPTION_MAX || kl > OPTION_MAX) continue;
    size_t d = edit_distance(key, len, known[i], kl);
    if (d < best_d && (d <= 2 || d <= kl / 3)) {
      best = known[i];
      best_d = d;
    }
  }
  return best != NULL ? best : prefixed;
}

/* Raises the argument error for the unknown key on top of the stack. */
static int unknown_option(lua_State *L, int arg, const char *const known[]) {
  if (lua_type(L, -1) != LUA_TSTRING) {
    if (lua_type(L, -1) == LUA_TNUMBER)
      return luaL_argerror(L, arg, lua_pushfstring(L, "unknown option [%s]", lua_tostring(L, -1)));
    return luaL_argerror(L, arg, lua_pushfstring(L, "unknown option (a %s key)",
                                                 luaL_typename(L, -1)));
  }
  size_t len;
  const char *key = lua_tolstring(L, -1, &len);
  const char *near = closest_option(key, len, known);
  if (strlen(key) != len) key = lua_pushfstring(L, "%s\\0...", key);  /* a NUL inside */
  if (near != NULL)
    return luaL_argerror(L, arg, lua_pushfstring(L, "unknown option '%s' (did you mean '%s'?)",
                                                 key, near));
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (int i = 0; known[i] != NULL; i++) {
    if (i > 0) luaL_addstring(&b, ", ");
    luaL_addchar(&b, '\'');
    luaL_addstring(&b, known[i]);
    luaL_addchar(&b, '\'');
  }
  luaL_pushresult(&b);
  return luaL_argerror(L, arg, lua_pushfstring(L, "unknown option '%s' (known options: %s)",
                                               key, lua_tostring(L, -1)));
}

void host_set_weak(lua_State *L, const char *mode) {
  lua_createtable(L, 0, 1);
  lua_pushstring(L, mode);
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
}

void host_check_options(lua_State *L, int arg, const char *const known[]) {
  arg = lua_absindex(L, arg);
  luaL_checkstack(L, 4, NULL);
  lua_pushnil(L);
  while (lua_next(L, arg)) {
    lua_pop(L, 1);
    bool found = false;
    if (lua_type(L, -1) == LUA_TSTRING) {
      size_t len;
      const char *key = lua_tolstring(L, -1, &len);  /* "max_workers\0x" is not max_workers */
      for (int i = 0; known[i] != NULL && !found; i++)
        found = strlen(known[i]) == len && memcmp(key, known[i], len) == 0;
    }
    if (!found) {
      lua_pushvalue(L, -1);  /* a copy to convert: lua_next needs the key as it is */
      unknown_option(L, arg, known);
    }
  }
}

/* ---- tracebacks of a task's own frames ---- */

#define TRACE_HEAD 10  /* frames shown before the skipped ones, as lauxlib */
#define TRACE_TAIL 11  /* frames shown after them */

/* The number of levels on L's stack (level 0 is the running function). */
static int stack_depth(lua_State *L) {
  lua_Debug ar;
  if (!lua_getstack(L, 0, &ar)) return 0;
  int lo = 0, hi = 1;  /* lo is a level, hi is past the end once the loop ends */
  while (lua_getstack(L, hi, &ar)) {
    lo = hi;
    hi *= 2;
  }
  while (hi - lo > 1) {
    int mid = lo + (hi - lo) / 2;
    if (lua_getstack(L, mid, &ar)) lo = mid;
    else hi = mid;
  }
  return lo + 1;
}

#define TAIL_CALLS "\n\t(...tail calls...)"
#define SKIPPING "\n\t...\t("

/*
** Pushes luaL_traceback's lines for levels from `first` on, at most
** `count` of them and not past a skip of luaL_traceback's own, each
** "\n\t<where>: in <what>" with the tail-call note that may follow it;
** returns how many levels it pushed.
*/
static int push_frame_lines(lua_State *L, int first, int count) {
  luaL_traceback(L, L, NULL, first);
  const char *t = lua_tostring(L, -1);
  const char *start = strchr(t, '\n'), *end = start;
  int n = 0;
  while (end != NULL && n < count && strncmp(end, SKIPPING, strlen(SKIPPING)) != 0) {
    end = strstr(end + 1, "\n\t");
    if (end == NULL || strncmp(end, TAIL_CALLS, strlen(TAIL_CALLS)) != 0) n++;
  }
  if (start == NULL) lua_pushliteral(L, "");
  else lua_pushlstring(L, start, end != NULL ? (size_t)(end - start) : strlen(start));
  lua_remove(L, -2);
  return n;
}

/*
** Joins the lines of levels first..last to the string on top. Each
** luaL_traceback walks the whole stack, so it is called again only where
** the one before skipped levels (at most three calls for TRACE_TAIL).
*/
static void add_frame_lines(lua_State *L, int first, int last) {
  for (int level = first; level <= last; ) {
    int n = push_frame_lines(L, level, last - level + 1);
    lua_concat(L, 2);
    if (n <= 0) break;  /* the stack ended: nothing more to say */
    level += n;
  }
}

/*
** Message handler of host_pcall_task; upvalue 1: the depth of the stack
** under the called code, 2: a table where the traceback of the frames
** above it goes ([1]). Levels 1..k are the called code's frames; the
** middle ones are skipped past TRACE_HEAD + TRACE_TAIL, as lauxlib does.
*/
static int task_msghandler(lua_State *L) {
  int k = stack_depth(L) - 1 - (int)lua_tointeger(L, lua_upvalueindex(1));
  if (k <= 0) return 1;
  /* luaL_traceback counts on as much; after a stack overflow there may
  ** be no room: then the error goes without a traceback, its message kept */
  if (!lua_checkstack(L, LUA_MINSTACK)) return 1;
  lua_pushliteral(L, "");
  if (k <= TRACE_HEAD + TRACE_TAIL) {
    add_frame_lines(L, 1, k);
  } else {
    add_frame_lines(L, 1, TRACE_HEAD);
    lua_pushfstring(L, "\n\t...\t(skipping %d levels)", k - TRACE_HEAD - TRACE_TAIL);
    lua_concat(L, 2);
    add_frame_lines(L, k - TRACE_TAIL + 1, k);
  }
  lua_rawseti(L, lua_upvalueindex(2), 1);
  return 1;
}

int host_pcall_task(lua_State *L, int nargs, int nresults) {
  luaL_checkstack(L, 3, "no room to call a task");
  int base = lua_gettop(L) - nargs;
  lua_pushinteger(L, stack_depth(L));
  lua_createtable(L, 1, 0);
  lua_pushcclosure(L, task_msghandler, 2);
  lua_insert(L, base);
  int status = lua_pcall(L, nargs, nresults, base);
  if (status != LUA_OK) {
    lua_getupvalue(L, base, 2);
    lua_rawgeti(L, -1, 1);
    lua_remove(L, -2);
  }
  lua_remove(L, base);
  return status;
}

/* ---- the error object ---- */

/* Pushes the shared metatable of error objects, creating it on first use. */
static void push_error_meta(lua_State *L);

void host_error_push(lua_State *L, const char *kind, const char *message,
                     int cause_idx) {
  if (cause_idx != 0) cause_idx = lua_absindex(L, cause_idx);
  luaL_checkstack(L, 8, "no room for an error object");  /* with its metatable */
  lua_createtable(L, 0, 4);
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  lua_pushstring(L, message);
  lua_setfield(L, -2, "message");
  if (cause_idx != 0) {
    lua_pushvalue(L, cause_idx);
    lua_setfield(L, -2, "cause");
  }
  push_error_meta(L);
  lua_setmetatable(L, -2);
}

int host_error_raise(lua_State *L, const char *kind, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  const char *message = lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  host_error_push(L, kind, message, 0);
  return lua_error(L);
}

bool host_error_is(lua_State *L, int idx, const char *kind) {
  if (lua_type(L, idx) != LUA_TTABLE) return false;
  if (!lua_getmetatable(L, idx)) return false;
  luaL_getmetatable(L, HOST_ERROR_TYPE);
  bool ours = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  if (!ours) return false;
  if (kind == NULL) return true;
  lua_getfield(L, idx, "kind");
  const char *k = lua_tostring(L, -1);
  bool same = k != NULL && strcmp(k, kind) == 0;
  lua_pop(L, 1);
  return same;
}

/* Replaces the value on top with its luaL_tolstring (may call __tostring). */
static void top_tolstring(lua_State *L) {
  luaL_tolstring(L, -1, NULL);
  lua_remove(L, -2);
}

/*
** Pushes "Kind: message", the remote traceback (a pool worker's, see
** executor.h) and the traceback of the error object at idx as pieces on
** the stack, a blank line between the two tracebacks; returns how many.
** The pieces stay on the stack and are joined later: a message's own
** __tostring may push anything, which an open luaL_Buffer would not
** survive.
*/
static int push_error_pieces(lua_State *L, int idx) {
  luaL_checkstack(L, 10, NULL);
  lua_getfield(L, idx, "kind");
  top_tolstring(L);
  int pieces = 1;
  if (lua_getfield(L, idx, "message") != LUA_TNIL) {
    top_tolstring(L);
    lua_pushliteral(L, ": ");
    lua_insert(L, -2);
    pieces += 2;
  } else {
    lua_pop(L, 1);
  }
  bool remote = lua_getfield(L, idx, "remote_traceback") == LUA_TSTRING;
  if (remote) {
    lua_pushliteral(L, "\n");
    lua_insert(L, -2);
    pieces += 2;
  } else {
    lua_pop(L, 1);
  }
  if (lua_getfield(L, idx, "traceback") == LUA_TSTRING) {
    if (remote) lua_pushliteral(L, "\n\n");
    else lua_pushliteral(L, "\n");
    lua_insert(L, -2);
    pieces += 2;
  } else {
    lua_pop(L, 1);
  }
  return pieces;
}

/*
** __tostring: "Kind: message" and the traceback, then each cause after
** "caused by: ". The chain of error objects is walked here, not through
** their __tostring, so that a cause cycle (e.cause = e) ends with a note
** instead of a C stack overflow. Stack: 1 the error, 2 the errors said, 3
** the text so far, 4 the error being said.
*/
static int error_tostring(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_newtable(L);
  lua_pushliteral(L, "");
  lua_pushvalue(L, 1);
  for (;;) {
    lua_pushvalue(L, 4);
    lua_pushboolean(L, 1);
    lua_rawset(L, 2);
    lua_pushvalue(L, 3);
    lua_concat(L, 1 + push_error_pieces(L, 4));
    lua_replace(L, 3);
    if (lua_getfield(L, 4, "cause") == LUA_TNIL) break;
    lua_pushvalue(L, 3);
    lua_pushliteral(L, "\ncaused by: ");
    if (host_error_is(L, 5, NULL)) {
      lua_pushvalue(L, 5);
      if (lua_rawget(L, 2) == LUA_TNIL) {  /* a new one: say it next */
        lua_pop(L, 1);
        lua_concat(L, 2);
        lua_replace(L, 3);
        lua_replace(L, 4);
        continue;
      }
      lua_pop(L, 1);
      lua_pushliteral(L, "(an error said above: the causes form a cycle)");
    } else {
      lua_pushvalue(L, 5);
      top_tolstring(L);
    }
    lua_concat(L, 3);
    lua_replace(L, 3);
    break;
  }
  lua_settop(L, 3);
  return 1;
}

/* err:is(kind) / error.is(v, kind): is `v` an error object of that kind? */
static int error_is(lua_State *L) {
  const char *kind = luaL_optstring(L, 2, NULL);
  lua_pushboolean(L, host_error_is(L, 1, kind));
  return 1;
}

/* error.new(kind, message [, cause]) */
static int error_new(lua_State *L) {
  const char *kind = luaL_checkstring(L, 1);
  const char *message = luaL_optstring(L, 2, "");
  host_error_push(L, kind, message, lua_isnoneornil(L, 3) ? 0 : 3);
  return 1;
}

static void push_error_meta(lua_State *L) {
  if (luaL_newmetatable(L, HOST_ERROR_TYPE)) {
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, error_is);
    lua_setfield(L, -2, "is");
    lua_setfield(L, -2, "__index");
  }
}

int host_msghandler(lua_State *L) {
  if (lua_type(L, 1) == LUA_TSTRING) {
    luaL_traceback(L, L, lua_tostring(L, 1), 1);
    return 1;
  }
  if (host_error_is(L, 1, NULL)) {
    if (lua_getfield(L, 1, "traceback") == LUA_TNIL) {
      luaL_traceback(L, L, NULL, 1);
      lua_setfield(L, 1, "traceback");
    }
    lua_pop(L, 1);
  }
  lua_settop(L, 1);
  return 1;
}

int host_pcall(lua_State *L, int nargs, int nresults) {
  /* the caller made room for the function and its arguments, not for this */
  if (!lua_checkstack(L, 1)) return lua_pcall(L, nargs, nresults, 0);
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, host_msghandler);
  lua_insert(L, base);
  int status = lua_pcall(L, nargs, nresults, base);
  lua_remove(L, base);
  return status;
}

/* Protected part of host_error_tostring: the result of __tostring, or nil. */
static int call_tostring_meta(lua_State *L) {
  if (!luaL_callmeta(L, 1, "__tostring")) lua_pushnil(L);
  return 1;
}

const char *host_error_tostring(lua_State *L) {
  if (lua_isstring(L, -1)) {  /* strings and numbers, as lua.c prints them */
    lua_pushstring(L, lua_tostring(L, -1));
    lua_remove(L, -2);
    return lua_tostring(L, -1);
  }
  /* __tostring is user code: it may raise or yield, and must not escape */
  lua_pushcfunction(L, call_tostring_meta);
  lua_pushvalue(L, -2);
  if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_type(L, -1) == LUA_TSTRING) {
    lua_remove(L, -2);
    return lua_tostring(L, -1);
  }
  lua_pop(L, 1);
  lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, -1));
  lua_remove(L, -2);
  return lua_tostring(L, -1);
}

/* ---- userdata types ---- */

void host_type_define(lua_State *L, const char *tname, const luaL_Reg *methods,
                      const luaL_Reg *meta, lua_CFunction index) {
  if (!luaL_newmetatable(L, tname)) {
    lua_pop(L, 1);
    return;
  }
  lua_newtable(L);
  lua_pushvalue(L, -2);
  luaL_setfuncs(L, methods, 1);
  if (index != NULL) {
    lua_setfield(L, -2, "methods");
    lua_pushvalue(L, -1);
    lua_pushcclosure(L, index, 1);
  }
  lua_setfield(L, -2, "__index");
  lua_pushvalue(L, -1);
  luaL_setfuncs(L, meta, 1);
  lua_pop(L, 1);
}

void *host_object_new(lua_State *L, size_t size, const char *tname, int nuv) {
  void *obj = lua_newuserdatauv(L, size, nuv);
  memset(obj, 0, size);
  luaL_setmetatable(L, tname);
  return obj;
}

/* Raises the error for a finalized object of type tname. */
static int finalized_error(lua_State *L, const char *tname) {
  return luaL_error(L, "attempt to use a finalized %s", tname);
}

void *host_object_check(lua_State *L, int idx, const char *tname) {
  host_object *obj = luaL_checkudata(L, idx, tname);
  if (obj->finalized) finalized_error(L, tname);
  return obj;
}

void *host_object_check_self(lua_State *L, const char *tname) {
  host_object *obj = lua_touserdata(L, 1);
  if (obj != NULL && lua_getmetatable(L, 1)) {
    /* two lua_topointer cost less than a lua_rawequal of any two values */
    bool same = lua_topointer(L, -1) == lua_topointer(L, lua_upvalueindex(1));
    lua_pop(L, 1);
    if (same) {
      if (obj->finalized) finalized_error(L, tname);
      return obj;
    }
  }
  return host_object_check(L, 1, tname);
}

void *host_object_test(lua_State *L, int idx, const char *tname) {
  host_object *obj = luaL_testudata(L, idx, tname);
  if (obj != NULL && obj->finalized) finalized_error(L, tname);
  return obj;
}

void *host_object_finalize(lua_State *L, const char *tname) {
  host_object *obj = luaL_checkudata(L, 1, tname);
  if (obj->finalized) return NULL;
  obj->finalized = true;
  return obj;
}

bool host_object_tostring_finalized(lua_State *L, const char *tname) {
  host_object *obj = luaL_checkudata(L, 1, tname);
  if (!obj->finalized) return false;
  lua_pushfstring(L, "%s (finalized): %p", tname, (void *)obj);
  return true;
}

/* ---- FIFOs in uservalues ---- */

void host_fifo_init(host_fifo *q) {
  q->head = q->tail = 1;
}

lua_Integer host_fifo_len(const host_fifo *q) {
  return q->tail - q->head;
}

void host_fifo_push(lua_State *L, int obj, int uv, host_fifo *q) {
  obj = lua_absindex(L, obj);
  lua_getiuservalue(L, obj, uv);
  lua_insert(L, -2);
  lua_rawseti(L, -2, q->tail);  /* may raise a memory error: move tail after */
  q->tail++;
  lua_pop(L, 1);
}

bool host_fifo_pop(lua_State *L, int obj, int uv, host_fifo *q) {
  if (q->head == q->tail) {
    lua_pushnil(L);
    return false;
  }
  obj = lua_absindex(L, obj);
  lua_getiuservalue(L, obj, uv);
  lua_rawgeti(L, -1, q->head);
  lua_pushnil(L);
  lua_rawseti(L, -3, q->head++);
  lua_remove(L, -2);
  if (q->head == q->tail) host_fifo_init(q);
  return true;
}

static const luaL_Reg error_funcs[] = {
  {"new", error_new},
  {"is", error_is},
  {NULL, NULL}
};

int luaopen_host_error(lua_State *L) {
  luaL_newlib(L, error_funcs);
  push_error_meta(L);
  lua_setfield(L, -2, "metatable");
  return 1;
}
