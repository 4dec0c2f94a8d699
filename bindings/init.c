/*
** init.c: host_openlibs, the preload table of every host library (floor 4).
** A new binding adds one line to `host_libs`.
*/
#include "runtime.h"
#include "modules.h"
#include "serialize.h"
#include "stdwrap.h"

static const luaL_Reg host_libs[] = {
  {"host.error", luaopen_host_error},
  {"host.generator", luaopen_host_generator},
  {"host.time", luaopen_host_time},
  {"host.thread", luaopen_host_thread},
  {"host.queue", luaopen_host_queue},
  {"host.futures", luaopen_host_futures},
  {"host.serialize", luaopen_host_serialize},
  {NULL, NULL}
};

void host_openlibs(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  for (const luaL_Reg *lib = host_libs; lib->func; lib++) {
    lua_pushcfunction(L, lib->func);
    lua_setfield(L, -2, lib->name);
  }
  lua_pop(L, 1);
  host_wrap_stdlib(L);
}
