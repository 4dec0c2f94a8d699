/*
** executor.c: Executor.map, shared by every pool (see executor.h). With
** chunksize > 1 the items travel in chunks: one submit runs a whole chunk
** through `_run_chunk` (a C function of host.futures, so the process pool
** can send it by name) and the iterator unpacks the chunk's results.
*/
#include <limits.h>
#include <string.h>
#include <unistd.h>

#include "executor.h"
#include "future.h"
#include "runtime.h"
#include "thread.h"

#define MAP_STATE "host.map_state"

/* True when the argument at idx is map's options table, not an iterable. */
static bool is_options(lua_State *L, int idx) {
  if (!lua_istable(L, idx)) return false;
  bool array = lua_rawgeti(L, idx, 1) != LUA_TNIL;
  lua_getfield(L, idx, "timeout");
  lua_getfield(L, idx, "chunksize");
  bool options = !array && (!lua_isnil(L, -1) || !lua_isnil(L, -2));
  lua_pop(L, 3);
  return options;
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
  luaL_argcheck(L, m >= 0 && k >= 0 && k <= 250, 2, "bad chunk shape");
  lua_settop(L, 4);
  lua_createtable(L, (int)m, 0);  /* 5: the results, flat */
  lua_createtable(L, (int)m, 0);  /* 6: the count of each item's results */
  lua_Integer out = 0, uniform = -1;
  bool mixed = false;
  luaL_checkstack(L, (int)k + 2, "too many arguments");
  for (lua_Integer i = 1; i <= m; i++) {
    int base = lua_gettop(L);
    lua_pushvalue(L, 1);
    for (lua_Integer a = 1; a <= k; a++) lua_rawgeti(L, 4, (i - 1) * k + a);
    lua_call(L, (int)k, LUA_MULTRET);
    int nres = lua_gettop(L) - base;
    for (int r = nres; r >= 1; r--) lua_rawseti(L, 5, out + r);
    out += nres;
    lua_pushinteger(L, nres);
    lua_rawseti(L, 6, i);
    if (uniform < 0) uniform = nres;
    else if (uniform != nres) mixed = true;
  }
  if (!mixed) {
    lua_pop(L, 1);
    lua_pushinteger(L, uniform < 0 ? 0 : uniform);
  }
  lua_pushinteger(L, m);
  return 3;
}

/* Cancels the futures of the state table at idx after position `pos`. */
static void cancel_rest(lua_State *L, int idx) {
  lua_getfield(L, idx, "pos");
  lua_Integer pos = lua_tointeger(L, -1);
  lua_pop(L, 1);
  lua_Integer count = luaL_len(L, idx);
  for (lua_Integer i = pos + 1; i <= count; i++) {
    lua_rawgeti(L, idx, i);
    host_future_cancel(L, -1);
    lua_pop(L, 1);
  }
  lua_pushinteger(L, count);
  lua_setfield(L, idx, "pos");
}

/* __close of map's closing value (the state table): cancel the rest. */
static int map_close(lua_State *L) {
  cancel_rest(L, 1);
  return 0;
}

/* Protected body of one wait: result of the future at 1 with timeout at 2. */
static int future_result_of(lua_State *L) {
  return host_future_result(L, 1, host_opt_timeout(L, 2));
}

/*
** Pushes the results of the state's next future (waiting at most until the
** state's deadline) and returns their count; 0 when none is left. On an
** error, cancels the futures after it and raises the error.
*/
static int next_outcome(lua_State *L, int st) {
  lua_getfield(L, st, "pos");
  lua_Integer pos = lua_tointeger(L, -1) + 1;
  lua_pop(L, 1);
  if (pos > luaL_len(L, st)) return -1;
  lua_pushinteger(L, pos);
  lua_setfield(L, st, "pos");
  lua_getfield(L, st, "deadline");
  double deadline = lua_tonumber(L, -1);
  lua_pop(L, 1);
  int base = lua_gettop(L);
  lua_pushcfunction(L, future_result_of);
  lua_rawgeti(L, st, pos);
  if (deadline < 0) lua_pushnil(L);
  else lua_pushnumber(L, (lua_Number)(deadline > host_now() ? deadline - host_now() : 0));
  if (lua_pcall(L, 2, LUA_MULTRET, 0) != LUA_OK) {
    cancel_rest(L, st);
    lua_error(L);
  }
  return lua_gettop(L) - base;
}

/*
** The iterator; upvalue 1 is the state table: the futures at 1.., `pos`
** (futures consumed), `index` (items given), `deadline` (absolute, or -1),
** and with chunks `chunk` (the current chunk's results, flat), `counts`,
** `cm` (its item count), `cpos` (items given) and `fpos` (values given).
*/
static int map_next(lua_State *L) {
  int st = lua_upvalueindex(1);
  lua_getfield(L, st, "index");
  lua_Integer index = lua_tointeger(L, -1) + 1;
  lua_getfield(L, st, "chunked");
  bool chunked = lua_toboolean(L, -1);
  lua_pop(L, 2);
  if (!chunked) {
    lua_pushinteger(L, index);
    int n = next_outcome(L, st);
    if (n < 0) return 0;
    lua_pushinteger(L, index);
    lua_setfield(L, st, "index");
    return n + 1;
  }
  for (;;) {  /* chunked: give the current chunk's next item, or fetch one */
    lua_getfield(L, st, "cpos");
    lua_Integer cpos = lua_tointeger(L, -1) + 1;
    lua_getfield(L, st, "cm");
    lua_Integer cm = lua_tointeger(L, -1);
    lua_pop(L, 2);
    if (cpos <= cm) {
      lua_getfield(L, st, "chunk");
      int chunk = lua_gettop(L);
      lua_getfield(L, st, "fpos");
      lua_Integer fpos = lua_tointeger(L, -1);
      lua_getfield(L, st, "counts");
      lua_Integer count = lua_isinteger(L, -1) ? lua_tointeger(L, -1)
                                              : (lua_rawgeti(L, -1, cpos), lua_tointeger(L, -1));
      lua_settop(L, chunk);
      lua_pushinteger(L, cpos);
      lua_setfield(L, st, "cpos");
      lua_pushinteger(L, fpos + count);
      lua_setfield(L, st, "fpos");
      lua_pushinteger(L, index);
      lua_setfield(L, st, "index");
      luaL_checkstack(L, (int)count + 1, "too many results");
      lua_pushinteger(L, index);
      for (lua_Integer r = 1; r <= count; r++) lua_rawgeti(L, chunk, fpos + r);
      return (int)count + 1;
    }
    if (next_outcome(L, st) < 0) return 0;
    lua_setfield(L, st, "cm");  /* _run_chunk's three results */
    lua_setfield(L, st, "counts");
    lua_setfield(L, st, "chunk");
    lua_pushinteger(L, 0);
    lua_setfield(L, st, "cpos");
    lua_pushinteger(L, 0);
    lua_setfield(L, st, "fpos");
  }
}

/* Calls self:submit with the values on top (fn and args, n of them). */
static void submit(lua_State *L, int n) {
  lua_getfield(L, 1, "submit");
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
  for (lua_Integer i = 1; i <= n; i += chunksize) {
    if (chunksize > 1) {
      lua_Integer m = n - i + 1 < chunksize ? n - i + 1 : chunksize;
      lua_getfield(L, lua_upvalueindex(4), "_run_chunk");
      lua_pushvalue(L, fn);
      lua_pushinteger(L, m);
      lua_pushinteger(L, k);
      lua_createtable(L, (int)(m * k), 0);
      for (lua_Integer j = 0; j < m; j++) {
        for (int a = 0; a < k; a++) {
          lua_geti(L, first + a, i + j);
          lua_rawseti(L, -2, j * k + a + 1);
        }
      }
      submit(L, 5);
    } else {
      lua_pushvalue(L, fn);
      for (int j = 0; j < k; j++) lua_geti(L, first + j, i);
      submit(L, k + 1);
    }
    lua_rawseti(L, st, luaL_len(L, st) + 1);
  }
  return 0;
}

int host_executor_map(lua_State *L) {
  int top = lua_gettop(L);
  luaL_checkany(L, 2);
  double timeout = -1;
  lua_Integer chunksize = 1;
  if (top >= 4 && is_options(L, top)) {
    lua_getfield(L, top, "timeout");
    timeout = host_opt_timeout(L, -1);
    lua_getfield(L, top, "chunksize");
    chunksize = luaL_optinteger(L, -1, 1);
    luaL_argcheck(L, chunksize >= 1, top, "chunksize must be >= 1");
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
  lua_newtable(L);  /* the state */
  int st = lua_gettop(L);
  lua_pushnumber(L, (lua_Number)(timeout < 0 ? -1 : host_now() + timeout));
  lua_setfield(L, st, "deadline");
  lua_pushboolean(L, chunksize > 1);
  lua_setfield(L, st, "chunked");
  /* submit_all(self, t1..tk, self, fn, st) with upvalues k, n, chunksize, module */
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
    cancel_rest(L, st);
    return lua_error(L);
  }
  lua_settop(L, st);
  luaL_setmetatable(L, MAP_STATE);
  lua_pushvalue(L, st);
  lua_pushcclosure(L, map_next, 1);
  lua_pushnil(L);
  lua_pushnil(L);
  lua_pushvalue(L, st);  /* the closing value */
  return 4;
}

int host_executor_decoder(lua_State *L) {
  size_t len;
  const char *bytes = luaL_checklstring(L, 1, &len);
  bool ok = lua_toboolean(L, 2);
  lua_settop(L, 2);
  int n = 0;
  if (host_codec_decode(L, bytes, len, HOST_CODEC_FUNCTIONS, &n) != LUA_OK) return lua_error(L);
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

/* __close of every pool: shutdown{wait = true}, through its own method. */
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
  if (luaL_newmetatable(L, tname)) {
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_pushcfunction(L, host_executor_map);
    lua_setfield(L, -2, "map");
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, executor_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, tostring);
    lua_setfield(L, -2, "__tostring");
    push_live_key(L, tname);
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_pushcclosure(L, shutdown_live, 1);
    host_atexit(L);
    lua_rawset(L, LUA_REGISTRYINDEX);
  }
  lua_pop(L, 1);
}

lua_Integer host_executor_options(lua_State *L, lua_Integer default_workers) {
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_newtable(L);
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_getfield(L, 1, "max_workers");
  lua_Integer n = lua_isnil(L, -1) ? default_workers : luaL_checkinteger(L, -1);
  luaL_argcheck(L, n >= 1 && n <= 1024, 1, "max_workers must be in [1, 1024]");
  lua_pop(L, 1);
  lua_getfield(L, 1, "initializer");
  luaL_argexpected(L, lua_isnil(L, -1) || lua_isfunction(L, -1), 1, "function as 'initializer'");
  lua_getfield(L, 1, "initargs");
  luaL_argexpected(L, lua_isnil(L, -1) || lua_istable(L, -1), 1, "table as 'initargs'");
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "n");
    luaL_argcheck(L, lua_isnil(L, -1) || (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 0),
                  1, "'initargs.n' must be a non-negative integer");
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

void host_executor_start(lua_State *L, int idx, const char *tname,
                         lua_CFunction manager, const char *name) {
  lua_pushvalue(L, idx);
  lua_pushcclosure(L, manager, 1);
  host_thread_start(L, name, false, 0);
  lua_pop(L, 1);
  host_executor_track(L, idx, tname, true);
  lua_settop(L, idx);
}

void host_open_executor(lua_State *L) {
  if (luaL_newmetatable(L, MAP_STATE)) {
    lua_pushcfunction(L, map_close);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, run_chunk);
  lua_setfield(L, -2, "_run_chunk");
}
