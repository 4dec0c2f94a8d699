/*
** init.c: host_openlibs, the preload table of every host library (floor 4).
** A new binding adds one line to `host_libs`.
*/
#include "runtime.h"
#include "modules.h"
#include "serialize.h"
#include "stdwrap.h"

/* The `host` module: what scripts may ask of the program (its version). */
static int luaopen_host(lua_State *L) {
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, HOST_VERSION);
  lua_setfield(L, -2, "version");
  return 1;
}

static const luaL_Reg host_libs[] = {
  {"host", luaopen_host},
  {"host.error", luaopen_host_error},
  {"host.generator", luaopen_host_generator},
  {"host.time", luaopen_host_time},
  {"host.thread", luaopen_host_thread},
  {"host.queue", luaopen_host_queue},
  {"host.futures", luaopen_host_futures},
  {"host.serialize", luaopen_host_serialize},
  {"host.trace", luaopen_host_trace},
  {"host.trace.svg", luaopen_host_trace_svg},
  {NULL, NULL}
};

/*
** Refuses a state that has no universe (plain luaL_newstate or
** lua_newstate): threads, locks, pools and the wrapped stdlib need its GIL,
** and would find none at their first call. The codec's C API (host.h)
** needs no universe and works on any state.
*/
void host_openlibs(lua_State *L) {
  if (host_universe_of(L) == NULL) {
    lua_pushliteral(L, "host_openlibs: the lua_State was not made by host_newstate");
    lua_error(L);
  }
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  for (const luaL_Reg *lib = host_libs; lib->func; lib++) {
    lua_pushcfunction(L, lib->func);
    lua_setfield(L, -2, lib->name);
  }
  lua_pop(L, 1);
  host_wrap_stdlib(L);
}
