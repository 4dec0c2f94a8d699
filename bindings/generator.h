/*
** generator.h: `host.generator`, Python's generators on Lua coroutines
** (floor 1).
*/
#ifndef HOST_GENERATOR_H
#define HOST_GENERATOR_H

#include "util.h"

int luaopen_host_generator(lua_State *L);

#endif
