/*
** modules.h: the luaopen_ function of every host library, for init.c's
** preload table. Each binding file includes it and defines its own.
*/
#ifndef HOST_MODULES_H
#define HOST_MODULES_H

#include "lua.h"

int luaopen_host_error(lua_State *L);
int luaopen_host_generator(lua_State *L);
int luaopen_host_time(lua_State *L);
int luaopen_host_thread(lua_State *L);
int luaopen_host_queue(lua_State *L);
int luaopen_host_futures(lua_State *L);
int luaopen_host_trace(lua_State *L);
int luaopen_host_trace_svg(lua_State *L);

#endif
