/*
** executor.c: what the pools share (see executor.h): their metatables,
** their options, and Executor.map, written once on top of each pool's
** `submit`. With chunksize > 1 the items travel in chunks: one submit runs
** a whole chunk through `_run_chunk` (a C function of host.futures, so the
** process pool can send it by name) and the iterator unpacks the chunk's
** results. The pools whose workers run elsewhere encode their tasks and
** results here (host_executor_encode_call, _results), so that a value
** that cannot cross is named as the user wrote it, in a chunk too.
*/
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "executor.h"
#include "future.h"
#include "runtime.h"
#include "serialize.h"

#define MAP_STATE "host.MapState"

/*
** The state of one map, behind its iterator (upvalue 1) and its closing
** value. Uservalues: the futures (1..count; each is dropped once consumed,
** so its results live only as long as the loop keeps them: CPython's
** bpo-14406), with chunks the counts of the current chunk's items when
** they differ, and the error of the item after the current chunk's last
** when the chunk came back cut there (see host_executor_encode_results).
** The chunk's results, flat (each dropped once given), are the iterator's
** upvalue 2, read without a uservalue look-up per item. It holds no C
** resource, so it needs no __gc: a resurrected one still works.
*/
typedef struct map_state {
  host_object obj;
  lua_Integer count;    /* futures submitted */
  lua_Integer pos;      /* futures consumed */
  lua_Integer index;    /* items given */
  double deadline;      /* host_now() seconds, or -1 for none */
  double timeout;       /* as the caller gave it, for the message */
  bool chunked;
  lua_Integer cm;       /* items of the current chunk */
  lua_Integer cpos;     /* of them given */
  lua_Integer fpos;     /* values of the chunk given */
  lua_Integer uniform;  /* values per item of the chunk, or -1: see UV_COUNTS */
  bool cut;             /* the chunk ends with an item's error: see UV_CUT */
} map_state;

enum { UV_FUTURES = 1, UV_COUNTS = 2, UV_CUT = 3 };
#define CHUNK lua_upvalueindex(2)  /* of map_next: the current chunk, or nil */

/* A table size hint for n slots (0 when n does not fit one). */
static int size_hint(lua_Integer n) {
  return n >= 0 && n <= INT_MAX / 2 ? (int)n : 0;
}

/*
** True when the last argument, at idx, is map's options table, not an
** iterable: a table with no item 1 and a string key of its own (so that
** a misspelt option is reported, not mapped over as an empty table), or,
** when it has a metatable (an iterable may be an object), a timeout or a
** chunksize.
*/
static bool is_options(lua_State *L, int idx) {
  if (!lua_istable(L, idx)) return false;
  bool array = lua_rawgeti(L, idx, 1) != LUA_TNIL;
  lua_pop(L, 1);
  if (array) return false;
  if (lua_getmetatable(L, idx)) {
    lua_pop(L, 1);
    lua_getfield(L, idx, "timeout");
    lua_getfield(L, idx, "chunksize");
    bool options = !lua_isnil(L, -1) || !lua_isnil(L, -2);
    lua_pop(L, 2);
    return options;
  }
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) == LUA_TSTRING) {
      lua_pop(L, 1);
      return true;
    }
  }
  return false;
}

/*
** _run_chunk(fn, m, k, args): runs fn on m items whose k arguments each lie
** flat in `args` (item i's at (i-1)*k+1 .. i*k). Returns the results flat,
** their counts (one integer when every item returned as many values, else
** a table of counts) and m. Flat tables keep the codec's work per item to
** the values themselves.
*/
static int run_chunk(lua_State *L) {
  luaL_checkany(L, 1);
  lua_Integer m = luaL_checkinteger(L, 2);
  lua_Integer k = luaL_checkinteger(L, 3);
  luaL_checktype(L, 4, LUA_TTABLE);
  luaL_argcheck(L, m >= 0 && m <= INT_MAX, 2, "bad chunk size");
  luaL_argcheck(L, k >= 0 && k <= INT_MAX - 2, 3, "bad argument count");
  lua_settop(L, 4);
  lua_createtable(L, (int)m, 0);  /* 5: the results, flat */
  lua_Integer out = 0, uniform = -1;
  bool mixed = false;  /* then 6: the count of each item's results */
  luaL_checkstack(L, (int)k + 3, "too many arguments");
  for (lua_Integer i = 1; i <= m; i++) {
    int base = lua_gettop(L);
    lua_pushvalue(L, 1);
    for (lua_Integer a = 1; a <= k; a++) lua_rawgeti(L, 4, (i - 1) * k + a);
    lua_call(L, (int)k, LUA_MULTRET);
    int nres = lua_gettop(L) - base;
    for (int r = nres; r >= 1; r--) lua_rawseti(L, 5, out + r);
    out += nres;
    if (uniform < 0) uniform = nres;
    if (!mixed && nres != uniform) {  /* the counts table, made only when they differ */
      mixed = true;
      lua_createtable(L, (int)m, 0);
      for (lua_Integer j = 1; j < i; j++) {
        lua_pushinteger(L, uniform);
        lua_rawseti(L, 6, j);
      }
    }
    if (mixed) {
      lua_pushinteger(L, nres);
      lua_rawseti(L, 6, i);
    }
  }
  if (!mixed) lua_pushinteger(L, uniform < 0 ? 0 : uniform);
  lua_pushinteger(L, m);
  return 3;
}

bool host_executor_is_chunk(lua_State *L, int idx) {
  return lua_tocfunction(L, idx) == run_chunk;
}

/*
** Replaces the codec's complaint on top about value `where` (0: none in
** particular) of a call with what submit, or with `init` a pool's
** constructor, says: the value as the caller wrote it, 1 being the
** function.
*/
static void name_call_value(lua_State *L, int where, bool init) {
  const char *why = lua_tostring(L, -1);
  if (init && where > 1) lua_pushfstring(L, "cannot send initargs[%d]: %s", where - 1, why);
  else if (init) lua_pushfstring(L, "cannot send the initializer: %s", why);
  else if (where == 1) lua_pushfstring(L, "cannot submit the function: %s", why);
  else if (where > 1) lua_pushfstring(L, "cannot submit argument #%d: %s", where - 1, why);
  else lua_pushfstring(L, "cannot submit: %s", why);
  lua_replace(L, -2);
}

/*
** For a chunk's call (_run_chunk, fn, m, k, args at `first`) whose
** arguments do not encode: pushes the codec's complaint about the first
** argument that does not encode alone and returns its position in its
** item's own call (2 for the item's first argument); 0 when each encodes
** alone (the failure was no one value's), with nothing pushed.
*/
static int chunk_argument(lua_State *L, int first) {
  lua_Integer k = lua_tointeger(L, first + 3);
  lua_Integer count = lua_tointeger(L, first + 2) * k;
  for (lua_Integer i = 1; i <= count; i++) {
    lua_rawgeti(L, first + 4, i);
    char *buf;
    size_t len;
    int where;
    int status = host_codec_encode_at(L, -1, 1, &buf, &len, &where);
    free(buf);
    lua_remove(L, status == LUA_OK ? -1 : -2);
    if (status == LUA_OK) continue;
    if (where == 0) lua_pop(L, 1);
    return where == 0 ? 0 : (int)((i - 1) % k) + 2;
  }
  return 0;
}

int host_executor_encode_call(lua_State *L, int first, int n, char **buf, size_t *len) {
  first = lua_absindex(L, first);
  int where;
  int status = host_codec_encode_at(L, first, n, buf, len, &where);
  if (status == LUA_OK) return LUA_OK;
  if (where > 0 && n == 5 && host_executor_is_chunk(L, first) && lua_istable(L, first + 4) &&
      lua_isinteger(L, first + 2) && lua_isinteger(L, first + 3)) {
    int arg = where == 5 ? chunk_argument(L, first) : 0;  /* the items' arguments */
    if (arg > 0) lua_remove(L, -2);  /* the complaint about them all */
    where = where == 2 ? 1 : arg;    /* 2: the items' function */
  }
  name_call_value(L, where, false);
  return status;
}

int host_executor_encode_initializer(lua_State *L, int first, int n, char **buf, size_t *len) {
  int where;
  int status = host_codec_encode_at(L, first, n, buf, len, &where);
  if (status != LUA_OK) name_call_value(L, where, true);
  return status;
}

/*
** Replaces the codec's complaint on top about value `where` (0: none in
** particular) of a task's n results with what the worker says: the value
** as the task returned it.
*/
static void name_result(lua_State *L, int where, int n) {
  const char *why = lua_tostring(L, -1);
  if (where > 0 && n > 1) lua_pushfstring(L, "cannot send result #%d back: %s", where, why);
  else lua_pushfstring(L, "cannot send the result back: %s", why);
  lua_replace(L, -2);
}

/* The count of item j's results in a chunk whose counts are at idx. */
static lua_Integer item_count(lua_State *L, int idx, lua_Integer j) {
  if (lua_isinteger(L, idx)) return lua_tointeger(L, idx);
  lua_rawgeti(L, idx, j);
  lua_Integer count = lua_tointeger(L, -1);
  lua_pop(L, 1);
  return count;
}

/*
** For a chunk's results (flat, counts, m at `first`, the codec's complaint
** above them) that do not encode as a whole: finds the first item whose
** own results do not, cuts the chunk before it (its results and the later
** items' leave `flat`; m becomes the count of the items before it) and
** pushes that item's error, named as a task of its own would name it.
** False, with nothing changed, when each item encodes alone (the failure
** was no one value's: memory).
*/
static bool cut_chunk(lua_State *L, int first) {
  lua_Integer m = lua_tointeger(L, first + 2);
  lua_Integer off = 0, j = 1;
  for (; j <= m; j++) {
    lua_Integer count = item_count(L, first + 1, j);
    if (count < 0 || count > INT_MAX - 2) return false;
    luaL_checkstack(L, (int)count + 2, "too many results");
    int top = lua_gettop(L);
    for (lua_Integer r = 1; r <= count; r++) lua_rawgeti(L, first, off + r);
    char *buf;
    size_t len;
    int where;
    int status = host_codec_encode_at(L, top + 1, (int)count, &buf, &len, &where);
    free(buf);
    if (status != LUA_OK && where > 0) {
      name_result(L, where, (int)count);
      lua_replace(L, top + 1);
      lua_settop(L, top + 1);
      break;
    }
    lua_settop(L, top);
    if (status != LUA_OK) return false;
    off += count;
  }
  if (j > m) return false;
  lua_pushinteger(L, j - 1);
  lua_replace(L, first + 2);
  for (lua_Integer r = off; j <= m; j++) {  /* the cut item's results and the rest */
    for (lua_Integer end = r + item_count(L, first + 1, j); r < end; r++) {
      lua_pushnil(L);
      lua_rawseti(L, first, r + 1);
    }
  }
  return true;
}

int host_executor_encode_results(lua_State *L, int first, bool chunk, char **buf, size_t *len) {
  first = lua_absindex(L, first);
  int n = lua_gettop(L) - first + 1;
  int where;
  int status = host_codec_encode_at(L, first, n, buf, len, &where);
  if (status == LUA_OK) return LUA_OK;
  if (chunk && where == 1 && n == 3 && lua_istable(L, first) && lua_isinteger(L, first + 2) &&
      (lua_isinteger(L, first + 1) || lua_istable(L, first + 1)) && cut_chunk(L, first)) {
    lua_replace(L, first + 3);  /* the item's error instead of the complaint, after the chunk */
    status = host_codec_encode_at(L, first, 4, buf, len, &where);
    if (status == LUA_OK) return LUA_OK;
    where = 0;
  }
  name_result(L, where, n);
  return status;
}

/*
** Cancels the futures of the map state at st from position `first` on
** (those still pending), and marks every future consumed.
*/
static void cancel_from(lua_State *L, int st, map_state *s, lua_Integer first) {
  lua_getiuservalue(L, st, UV_FUTURES);
  for (lua_Integer i = first; i <= s->count; i++) {
    if (lua_rawgeti(L, -1, i) != LUA_TNIL) host_future_cancel(L, -1);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  s->pos = s->count;
}

/* __close of map's closing value (the state): cancel what is not consumed. */
static int map_close(lua_State *L) {
  map_state *s = host_object_check_self(L, MAP_STATE);
  cancel_from(L, 1, s, s->pos + 1);
  return 0;
}

/*
** Pushes the results of the next future of the map state at st (waiting
** at most until the state's deadline) and returns their count; -1 when
** none is left. When the wait times out, that future and the ones after
** it are cancelled and a TimeoutError that names the map's timeout is
** raised; when the future failed or was cancelled, the ones after it are
** cancelled and its error raised.
*/
static int next_outcome(lua_State *L, int st, map_state *s) {
  if (s->pos >= s->count) return -1;
  lua_Integer pos = s->pos + 1;
  lua_getiuservalue(L, st, UV_FUTURES);
  int futures = lua_gettop(L);
  lua_rawgeti(L, futures, pos);
  int fut = futures + 1;
  double now = s->deadline < 0 ? 0 : host_now();
  host_deadline d = host_deadline_in(s->deadline < 0 ? -1 : s->deadline > now ? s->deadline - now : 0);
  host_future_state state = host_future_wait(L, fut, &d);
  if (state != HOST_FUTURE_FINISHED && state != HOST_FUTURE_CANCELLED) {
    cancel_from(L, st, s, pos);
    return host_error_raise(L, "TimeoutError", "map timed out after %f seconds", s->timeout);
  }
  s->pos = pos;
  lua_pushnil(L);
  lua_rawseti(L, futures, pos);
  if (state == HOST_FUTURE_CANCELLED || host_future_failed(host_future_of(L, fut)))
    cancel_from(L, st, s, pos + 1);
  int n = host_future_result(L, fut, 0);  /* raises its error */
  lua_rotate(L, futures, n);
  lua_pop(L, 2);
  return n;
}

/*
** Takes the chunk `_run_chunk` returned (its n results on top, popped)
** as the state's current chunk (called by map_next only: see CHUNK). A
** fourth value is the error of the item after its last (see UV_CUT).
*/
static void take_chunk(lua_State *L, int st, map_state *s, int n) {
  if (n == 4) {
    s->cut = true;
    lua_setiuservalue(L, st, UV_CUT);
    n = 3;
  }
  if (n != 3 || !lua_istable(L, -3) || !lua_isinteger(L, -1) ||
      !(lua_isinteger(L, -2) || lua_istable(L, -2)))
    luaL_error(L, "map: a chunk came back malformed");
  s->cm = lua_tointeger(L, -1);
  s->cpos = s->fpos = 0;
  s->uniform = lua_isinteger(L, -2) ? lua_tointeger(L, -2) : -1;
  lua_pop(L, 1);
  lua_setiuservalue(L, st, UV_COUNTS);
  lua_replace(L, CHUNK);
}

/*
** Pushes the next item's values from the current chunk of the state at
** st (dropping each from the chunk) and returns their count (called by
** map_next only: see CHUNK).
*/
static int give_from_chunk(lua_State *L, int st, map_state *s) {
  s->cpos++;
  lua_Integer count = s->uniform;
  if (count < 0) {
    lua_getiuservalue(L, st, UV_COUNTS);
    lua_rawgeti(L, -1, s->cpos);
    count = lua_tointeger(L, -1);
    lua_pop(L, 2);
  }
  if (count < 0 || count > INT_MAX - 2) luaL_error(L, "map: a chunk came back malformed");
  if (count > LUA_MINSTACK - 4) luaL_checkstack(L, (int)count + 2, "too many results");
  for (lua_Integer r = 1; r <= count; r++) {
    /* only a collectable value needs dropping: a number or a boolean
    ** keeps nothing alive (the usual results skip a table write) */
    int t = lua_rawgeti(L, CHUNK, s->fpos + r);
    if (t != LUA_TNUMBER && t != LUA_TBOOLEAN && t != LUA_TNIL) {
      lua_pushnil(L);
      lua_rawseti(L, CHUNK, s->fpos + r);
    }
  }
  s->fpos += count;
  if (s->cpos == s->cm) {  /* the chunk is used up */
    lua_pushnil(L);
    lua_replace(L, CHUNK);
    if (s->uniform < 0) {
      lua_pushnil(L);
      lua_setiuservalue(L, st, UV_COUNTS);
    }
  }
  return (int)count;
}

/*
** Raises the error of the item after the current chunk's last, which the
** chunk came back cut before (see UV_CUT), once the chunk's items are
** given: as a failed future does, it cancels the futures after it.
*/
static int raise_cut(lua_State *L, int st, map_state *s) {
  s->cut = false;
  cancel_from(L, st, s, s->pos + 1);
  lua_pushnil(L);
  lua_replace(L, CHUNK);
  lua_pushnil(L);
  lua_setiuservalue(L, st, UV_COUNTS);
  lua_getiuservalue(L, st, UV_CUT);
  lua_pushnil(L);
  lua_setiuservalue(L, st, UV_CUT);
  return lua_error(L);
}

/*
** The iterator; upvalue 1 is the state (always one: executor_map made the
** closure, and a state is never finalized), upvalue 2 its current chunk.
** Gives `index, results...`.
*/
static int map_next(lua_State *L) {
  int st = lua_upvalueindex(1);
  map_state *s = lua_touserdata(L, st);
  lua_settop(L, 0);
  lua_pushinteger(L, s->index + 1);
  for (;;) {
    if (s->chunked && s->cpos < s->cm) {
      int n = give_from_chunk(L, st, s);
      s->index++;
      return n + 1;
    }
    if (s->cut) return raise_cut(L, st, s);
    int n = next_outcome(L, st, s);
    if (n < 0) return 0;
    if (!s->chunked) {
      s->index++;
      return n + 1;
    }
    take_chunk(L, st, s, n);
  }
}

/* Calls self:<how> (a submit) with the values on top (fn and args, n of them). */
static void submit(lua_State *L, const char *how, int n) {
  lua_getfield(L, 1, how);
  lua_insert(L, -(n + 1));
  lua_pushvalue(L, 1);
  lua_insert(L, -(n + 1));
  lua_call(L, n + 1, 1);
}

/*
** The protected part of map. Stack: self, t1..tk, fn, state; upvalues: k,
** the item count, chunksize, the host.futures module. Appends each future
** to the state.
*/
static int submit_all(lua_State *L) {
  int first = 2, k = (int)lua_tointeger(L, lua_upvalueindex(1));
  lua_Integer n = lua_tointeger(L, lua_upvalueindex(2));
  lua_Integer chunksize = lua_tointeger(L, lua_upvalueindex(3));
  int fn = first + k, st = fn + 1;
  map_state *s = lua_touserdata(L, st);
  lua_getiuservalue(L, st, UV_FUTURES);
  int futures = lua_gettop(L);
  luaL_checkstack(L, k + 8, "too many tables");
  /* a pool that can send a chunk to a busy worker behind its running one
  ** (the process pool) takes chunks by _submit_ahead; it encodes a chunk
  ** at once and keeps no reference to its arguments, so one table serves
  ** every chunk's arguments (no 100-slot table made and collected each) */
  bool ahead = lua_getfield(L, 1, "_submit_ahead") != LUA_TNIL;
  const char *chunk_submit = ahead ? "_submit_ahead" : "submit";
  lua_pop(L, 1);
  int reuse = 0;  /* the shared arguments table, when ahead */
  lua_Integer filled = 0;  /* its slots in use */
  if (ahead && chunksize > 1) {
    lua_Integer m = n < chunksize ? n : chunksize;
    lua_createtable(L, m <= INT_MAX / k ? size_hint(m * k) : 0, 0);
    reuse = lua_gettop(L);
  }
  /* counted by what is done, so that no sum passes n (a chunksize or a
  ** __len of math.maxinteger would overflow `i += chunksize`) */
  for (lua_Integer done = 0; done < n; done += (chunksize < n - done ? chunksize : n - done)) {
    lua_Integer i = done + 1;
    if (chunksize > 1) {
      lua_Integer m = n - done < chunksize ? n - done : chunksize;
      lua_getfield(L, lua_upvalueindex(4), "_run_chunk");
      lua_pushvalue(L, fn);
      lua_pushinteger(L, m);
      lua_pushinteger(L, k);
      if (reuse) {
        for (lua_Integer j = m * k + 1; j <= filled; j++) {  /* a shorter last chunk */
          lua_pushnil(L);
          lua_rawseti(L, reuse, j);
        }
        filled = m * k;
        lua_pushvalue(L, reuse);
      } else {
        lua_createtable(L, size_hint(m * k), 0);
      }
      for (lua_Integer j = 0; j < m; j++) {
        for (int a = 0; a < k; a++) {
          lua_geti(L, first + a, i + j);
          lua_rawseti(L, -2, j * k + a + 1);
        }
      }
      submit(L, chunk_submit, 5);
    } else {
      lua_pushvalue(L, fn);
      for (int j = 0; j < k; j++) lua_geti(L, first + j, i);
      submit(L, "submit", k + 1);
    }
    lua_rawseti(L, futures, ++s->count);
  }
  return 0;
}

/* Reads map's chunksize from the options table at arg. */
static lua_Integer chunksize_field(lua_State *L, int arg) {
  lua_Integer chunksize = 1;
  if (lua_getfield(L, arg, "chunksize") != LUA_TNIL) {
    int isint;
    chunksize = lua_tointegerx(L, -1, &isint);
    if (!isint)
      luaL_argerror(L, arg, lua_pushfstring(L, "'chunksize' must be an integer, got %s",
                                            luaL_typename(L, -1)));
    luaL_argcheck(L, chunksize >= 1, arg, "'chunksize' must be >= 1");
  }
  lua_pop(L, 1);
  return chunksize;
}

/*
** ex:map(fn, t1, t2, ... [, {timeout =, chunksize =}]): submits
** fn(t1[i], t2[i], ...) for i up to the shortest table, through ex:submit,
** and returns a generic-for iterator giving `i, results...` in order, with a
** closing value that cancels what has not started when the loop is left.
** The timeout counts from the call; a task's error is raised at its turn.
** Upvalue 1: the executor type's metatable.
*/
static int executor_map(lua_State *L) {
  lua_getfield(L, lua_upvalueindex(1), "__name");  /* anchored in the metatable */
  host_object_check_self(L, lua_tostring(L, -1));
  lua_pop(L, 1);
  int top = lua_gettop(L);
  host_check_callable(L, 2);
  double timeout = -1;
  lua_Integer chunksize = 1;
  if (top >= 4 && is_options(L, top)) {
    static const char *const known[] = {"timeout", "chunksize", NULL};
    host_check_options(L, top, known);
    timeout = host_future_timeout_field(L, top, "timeout");
    chunksize = chunksize_field(L, top);
    lua_settop(L, --top);
  }
  luaL_argcheck(L, top >= 3, 3, "at least one table of arguments expected");
  int k = top - 2;
  lua_Integer n = LUA_MAXINTEGER;
  for (int j = 3; j <= top; j++) {
    luaL_checktype(L, j, LUA_TTABLE);
    lua_Integer len = luaL_len(L, j);
    if (len < n) n = len;
  }
  luaL_checkstack(L, k + 12, "too many tables");
  map_state *s = host_object_new(L, sizeof *s, MAP_STATE, 3);
  int st = lua_gettop(L);
  lua_createtable(L, size_hint(n / chunksize + 1), 0);
  lua_setiuservalue(L, st, UV_FUTURES);
  s->timeout = timeout;
  s->deadline = timeout < 0 ? -1 : host_now() + timeout;
  s->chunked = chunksize > 1;
  s->uniform = -1;
  /* submit_all(self, t1..tk, fn, st) with upvalues k, n, chunksize, module */
  lua_pushinteger(L, k);
  lua_pushinteger(L, n);
  lua_pushinteger(L, chunksize);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "host.futures");
  lua_remove(L, -2);
  lua_pushcclosure(L, submit_all, 4);
  lua_pushvalue(L, 1);
  for (int j = 3; j <= top; j++) lua_pushvalue(L, j);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, st);
  if (lua_pcall(L, k + 3, 0, 0) != LUA_OK) {  /* cancel what was submitted */
    cancel_from(L, st, s, 1);
    return lua_error(L);
  }
  lua_settop(L, st);
  lua_pushvalue(L, st);
  lua_pushnil(L);  /* no chunk yet */
  lua_pushcclosure(L, map_next, 2);
  lua_pushnil(L);
  lua_pushnil(L);
  lua_pushvalue(L, st);  /* the closing value */
  return 4;
}

#define STACK_TRACEBACK "stack traceback:"

/*
** An error object that already has a traceback (host_msghandler gave it
** one in the task, e.g. in a thread whose join raised it again) keeps
** that one: it says where the error began.
*/
void host_executor_remote_traceback(lua_State *L, const char *who) {
  int err = lua_gettop(L) - 1;
  luaL_checkstack(L, 4, NULL);
  if (host_error_is(L, err, NULL)) {
    if (lua_getfield(L, err, "traceback") == LUA_TSTRING) {
      const char *own = lua_tostring(L, -1);
      size_t head = strncmp(own, STACK_TRACEBACK, strlen(STACK_TRACEBACK)) == 0
                    ? strlen(STACK_TRACEBACK) : 0;
      lua_pushstring(L, own + head);
      lua_replace(L, err + 1);
    }
    lua_pop(L, 1);
  }
  if (lua_type(L, err + 1) != LUA_TSTRING) {
    lua_pushnil(L);
    lua_replace(L, err + 1);
    return;
  }
  lua_pushfstring(L, "remote traceback (%s):%s", who, lua_tostring(L, err + 1));
  lua_replace(L, err + 1);
}

/*
** Joins the error value at idx (the outcome's first value) and the remote
** traceback text on top (popped): see host_executor_decoder.
*/
static void join_remote_traceback(lua_State *L, int idx) {
  if (lua_type(L, -1) != LUA_TSTRING) {
    lua_pop(L, 1);
    return;
  }
  if (lua_type(L, idx) == LUA_TSTRING) {
    lua_pushfstring(L, "%s\n%s\n", lua_tostring(L, idx), lua_tostring(L, -1));
    lua_replace(L, idx);
  } else if (host_error_is(L, idx, NULL)) {
    if (lua_getfield(L, idx, "remote_traceback") == LUA_TSTRING) {  /* a nested pool's */
      lua_pushliteral(L, "\n\n");
      lua_pushvalue(L, -3);
      lua_concat(L, 3);
      lua_replace(L, -2);
    } else {
      lua_pop(L, 1);
    }
    lua_setfield(L, idx, "remote_traceback");
    lua_pushnil(L);
    lua_setfield(L, idx, "traceback");
    return;
  }
  lua_pop(L, 1);
}

int host_executor_decoder(lua_State *L) {
  size_t len;
  const char *bytes = luaL_checklstring(L, 1, &len);
  bool ok = lua_toboolean(L, 2);
  lua_settop(L, 2);
  int n = 0;
  if (host_codec_decode(L, bytes, len, HOST_CODEC_FUNCTIONS, &n) != LUA_OK) return lua_error(L);
  luaL_checkstack(L, 4, "too many results");  /* the codec left room for the values only */
  if (!ok && n >= 2) {  /* the error and its remote traceback */
    lua_settop(L, 4);
    join_remote_traceback(L, 3);
    n = 1;
  }
  lua_createtable(L, n, 1);
  lua_insert(L, 3);
  for (int i = n; i >= 1; i--) lua_rawseti(L, 3, i);
  lua_pushinteger(L, ok ? n : 1);
  lua_setfield(L, 3, "n");
  return 1;
}

void host_executor_shutdown_options(lua_State *L, int idx, bool *wait, bool *cancel,
                                    bool *interrupt) {
  *wait = true;
  *cancel = *interrupt = false;
  if (lua_isnoneornil(L, idx)) return;
  luaL_checktype(L, idx, LUA_TTABLE);
  static const char *const known[] = {"wait", "cancel_futures", "interrupt", NULL};
  host_check_options(L, idx, known);
  if (lua_getfield(L, idx, "wait") != LUA_TNIL) *wait = lua_toboolean(L, -1);
  *cancel = lua_getfield(L, idx, "cancel_futures") != LUA_TNIL && lua_toboolean(L, -1);
  *interrupt = lua_getfield(L, idx, "interrupt") != LUA_TNIL && lua_toboolean(L, -1);
  lua_pop(L, 3);
}

/* The name of the registry's weak set of live pools of type tname. */
static void push_live_key(lua_State *L, const char *tname) {
  lua_pushfstring(L, "%s.live", tname);
}

void host_executor_track(lua_State *L, int idx, const char *tname, bool add) {
  idx = lua_absindex(L, idx);
  push_live_key(L, tname);
  lua_rawget(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, idx);
  if (add) lua_pushboolean(L, 1);
  else lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

/*
** __close of every pool: shutdown{wait = true}, through its own method
** (which checks that the pool is not finalized). Argument 2, the error
** that closes the scope, is not an option table: it is not passed on.
*/
static int executor_close(lua_State *L) {
  lua_getfield(L, 1, "shutdown");
  lua_pushvalue(L, 1);
  lua_call(L, 1, 0);
  return 0;
}

/*
** The exit handler of a pool type (upvalue 1: the live set): every live pool
** gets shutdown{wait = false}: it takes no more work, queued work still runs,
** and host's exit waits for it, not for idle workers.
*/
static int shutdown_live(lua_State *L) {
  lua_pushnil(L);
  while (lua_next(L, lua_upvalueindex(1))) {
    lua_getfield(L, -2, "shutdown");
    lua_pushvalue(L, -3);
    lua_createtable(L, 0, 1);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "wait");
    lua_call(L, 2, 0);
    lua_pop(L, 1);
  }
  return 0;
}

void host_executor_define(lua_State *L, const char *tname, const luaL_Reg *methods,
                          lua_CFunction gc, lua_CFunction tostring) {
  if (luaL_getmetatable(L, tname) != LUA_TNIL) {
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  const luaL_Reg meta[] = {
    {"__gc", gc}, {"__close", executor_close}, {"__tostring", tostring}, {NULL, NULL}
  };
  host_type_define(L, tname, methods, meta, NULL);
  luaL_getmetatable(L, tname);
  lua_getfield(L, -1, "__index");
  lua_pushvalue(L, -2);
  lua_pushcclosure(L, executor_map, 1);
  lua_setfield(L, -2, "map");
  lua_pop(L, 2);
  push_live_key(L, tname);
  lua_newtable(L);
  host_set_weak(L, "k");
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, shutdown_live, 1);
  host_atexit(L);
  lua_rawset(L, LUA_REGISTRYINDEX);
}

lua_Integer host_executor_options(lua_State *L, lua_Integer default_workers,
                                  const char *const known[]) {
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_newtable(L);
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  host_check_options(L, 1, known);
  lua_Integer n = default_workers;
  if (lua_getfield(L, 1, "max_workers") != LUA_TNIL) {
    int isint;
    n = lua_tointegerx(L, -1, &isint);
    if (!isint) host_field_error(L, 1, "max_workers", "an integer");
  }
  luaL_argcheck(L, n >= 1 && n <= 1024, 1, "'max_workers' must be in [1, 1024]");
  lua_pop(L, 1);
  lua_getfield(L, 1, "initializer");
  if (!lua_isnil(L, -1) && !lua_isfunction(L, -1)) host_field_error(L, 1, "initializer", "a function");
  lua_getfield(L, 1, "initargs");
  if (!lua_isnil(L, -1) && !lua_istable(L, -1)) host_field_error(L, 1, "initargs", "a table");
  if (lua_istable(L, -1)) {  /* n: at most half of Lua's stack limit, as a Thread's args */
    int isint = 1;
    lua_Integer count = 0;
    if (lua_getfield(L, -1, "n") != LUA_TNIL) count = lua_tointegerx(L, -1, &isint);
    if (!isint || count < 0 || count > LUAI_MAXSTACK / 2)
      luaL_argerror(L, 1, lua_pushfstring(L, "'initargs.n' must be an integer in [0, %d]",
                                          LUAI_MAXSTACK / 2));
    lua_pop(L, 1);
  }
  return n;
}

/* The number of values in the argument table at idx: its `n`, or its length. */
static lua_Integer args_count(lua_State *L, int idx) {
  lua_getfield(L, idx, "n");
  lua_Integer n = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : luaL_len(L, idx);
  lua_pop(L, 1);
  return n;
}

int host_executor_push_initializer(lua_State *L, int info) {
  info = lua_absindex(L, info);
  if (lua_getfield(L, info, "initializer") == LUA_TNIL) {
    lua_pop(L, 1);
    return -1;
  }
  if (lua_getfield(L, info, "initargs") != LUA_TTABLE) {
    lua_pop(L, 1);
    return 0;
  }
  int t = lua_gettop(L);
  lua_Integer n = args_count(L, t);
  if (n < 0 || n > INT_MAX / 2) luaL_error(L, "too many initargs (%I)", n);
  luaL_checkstack(L, (int)n, "too many initargs");
  for (lua_Integer i = 1; i <= n; i++) lua_rawgeti(L, t, i);
  lua_remove(L, t);
  return (int)n;
}

lua_Integer host_executor_cores(void) {
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  return cores > 0 ? cores : 1;
}

static const luaL_Reg map_methods[] = {
  {NULL, NULL}
};

static const luaL_Reg map_meta[] = {
  {"__close", map_close},
  {NULL, NULL}
};

void host_open_executor(lua_State *L) {
  host_type_define(L, MAP_STATE, map_methods, map_meta, NULL);
  lua_pushcfunction(L, run_chunk);
  lua_setfield(L, -2, "_run_chunk");
}
