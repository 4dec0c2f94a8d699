/*
** futures_module.c: `require "host.futures"`, the module table: the
** Future API (future.c), map's chunk runner (executor.c) and the three
** executors (executor_thread.c, executor_process.c, executor_state.c).
*/
#include "lauxlib.h"

#include "executor.h"
#include "future.h"
#include "modules.h"

int luaopen_host_futures(lua_State *L) {
  luaL_requiref(L, "host.thread", luaopen_host_thread, 0);  /* workers are Threads */
  lua_pop(L, 1);
  lua_newtable(L);
  host_open_future(L);
  host_open_executor(L);
  host_open_thread_pool(L);
  host_open_process_pool(L);
  host_open_interpreter_pool(L);
  return 1;
}
