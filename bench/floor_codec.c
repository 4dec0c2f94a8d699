/*
** bench/floor_codec.c: the floor under host.serialize's round trips, as a
** Lua C module that bench/serialize_bench.lua loads with package.loadlib.
** copy(x) builds a deep copy of x through Lua's public C API, which is the
** least any codec that reads Lua values and makes new ones must do: each
** element is read (lua_rawgeti / lua_next, its type checked, its value
** taken) and a new value is made and stored (lua_pushinteger,
** lua_pushlstring, which hashes and interns a short string as a decoder
** must, lua_rawseti / lua_rawset). No bytes are written in between, no
** cycle or shared table is tracked and nothing is checked, so it is a
** floor, not a codec.
*/
#include <lauxlib.h>
#include <lua.h>

static void copy_value(lua_State *L, int idx, int depth);

/* Pushes a fresh copy of the table at idx: its run 1..n, then the rest. */
static void copy_table(lua_State *L, int idx, int depth) {
  luaL_checkstack(L, 6, "floor_codec: too deep");
  lua_createtable(L, (int)lua_rawlen(L, idx), 0);  /* the size a decoder reads */
  int out = lua_gettop(L);
  lua_Integer n = 0;
  while (lua_rawgeti(L, idx, n + 1) != LUA_TNIL) {
    copy_value(L, lua_gettop(L), depth);
    lua_rawseti(L, out, ++n);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_isinteger(L, -2)) {
      lua_Integer k = lua_tointeger(L, -2);
      if (k >= 1 && k <= n) {
        lua_pop(L, 1);
        continue;
      }
    }
    int v = lua_gettop(L);
    copy_value(L, v - 1, depth);
    copy_value(L, v, depth);
    lua_rawset(L, out);
    lua_pop(L, 1);
  }
}

/* Pushes a copy of the value at idx: scalars and strings made anew. */
static void copy_value(lua_State *L, int idx, int depth) {
  switch (lua_type(L, idx)) {
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) lua_pushinteger(L, lua_tointeger(L, idx));
      else lua_pushnumber(L, lua_tonumber(L, idx));
      break;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, idx, &len);
      lua_pushlstring(L, s, len);
      break;
    }
    case LUA_TTABLE:
      if (depth >= 200) luaL_error(L, "floor_codec: too deep");
      copy_table(L, idx, depth + 1);
      break;
    default:
      lua_pushvalue(L, idx);
      break;
  }
}

/* floor_codec.copy(x) -> a deep copy of x. */
static int copy(lua_State *L) {
  luaL_checkany(L, 1);
  copy_value(L, 1, 0);
  return 1;
}

int luaopen_floor_codec(lua_State *L);

int luaopen_floor_codec(lua_State *L) {
  lua_newtable(L);
  lua_pushcfunction(L, copy);
  lua_setfield(L, -2, "copy");
  return 1;
}
