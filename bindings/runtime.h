/*
** runtime.h: the universe (one global state and its GIL), floor 1.
*/
#ifndef HOST_RUNTIME_H
#define HOST_RUNTIME_H

#include "util.h"

typedef struct host_universe host_universe;

/* The universe L belongs to (NULL if L was not made by host_newstate). */
host_universe *host_universe_of(lua_State *L);

/*
** Sleeps until `d` without holding the GIL. An interrupt of the universe
** ends the sleep early; the interrupt is then raised by the hook.
*/
void host_unlocked_sleep(lua_State *L, const host_deadline *d);

int luaopen_host_time(lua_State *L);

#endif
