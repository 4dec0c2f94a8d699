/*
** thread.h: starting host.Thread objects from C (floor 2), for the pools.
*/
#ifndef HOST_THREAD_H
#define HOST_THREAD_H

#include <stdbool.h>

#include "lua.h"

/*
** Starts a host.Thread running the function below the nargs values on top
** of the stack (all popped), pushes its Thread object and returns 0.
** `name` NULL gives "Thread-N". Needs host.thread's metatables
** (luaopen_host_thread). When no thread can be made it pushes nothing and
** returns the errno (a pool then undoes what it made and returns
** host_thread_start_failed, as thread.start does); it raises while host
** closes the state.
*/
int host_thread_start(lua_State *L, const char *name, bool daemon, int nargs);

/* Pushes nil, "cannot start thread: <strerror(rc)>", rc; returns 3. */
int host_thread_start_failed(lua_State *L, int rc);

#endif
