/*
** bench/floor_udata.c: the floor under Lock acquire + release, as a Lua C
** module that bench/thread_bench.lua loads with package.loadlib: a userdata
** whose methods `acquire` and `release` are empty C functions (found
** through __index, as every host type's methods are). Two calls of them
** cost what any C method pair costs from Lua, before any work is done.
*/
#include <lauxlib.h>
#include <lua.h>

/* An empty method: no argument checked, no result. */
static int nop(lua_State *L) {
  (void)L;
  return 0;
}

/* floor_udata.new() -> a userdata with the two empty methods. */
static int new_object(lua_State *L) {
  lua_newuserdatauv(L, 16, 0);
  luaL_setmetatable(L, "bench.floor_udata");
  return 1;
}

int luaopen_floor_udata(lua_State *L);

int luaopen_floor_udata(lua_State *L) {
  static const luaL_Reg methods[] = {{"acquire", nop}, {"release", nop}, {NULL, NULL}};
  luaL_newmetatable(L, "bench.floor_udata");
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushcfunction(L, new_object);
  lua_setfield(L, -2, "new");
  return 1;
}
