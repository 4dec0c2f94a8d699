/*
** thread.h: starting host.Thread objects from C (floor 2), for the pools.
*/
#ifndef HOST_THREAD_H
#define HOST_THREAD_H

#include <stdbool.h>

#include "lua.h"

/*
** Starts a host.Thread running the function below the nargs values on top
** of the stack (all popped) and pushes its Thread object. `name` NULL gives
** "Thread-N". Needs host.thread's metatables (luaopen_host_thread).
** Raises "cannot start thread: <strerror>" when no thread can be made
** (the Lua-facing thread.start returns nil, message, errno instead), and
** while host closes the state.
*/
void host_thread_start(lua_State *L, const char *name, bool daemon, int nargs);

#endif
