/*
** sync.h: the synchronisation types of host.thread (floor 2).
*/
#ifndef HOST_SYNC_H
#define HOST_SYNC_H

#include "lua.h"

/* Adds Lock, RLock, Condition, ... to the module table on top of the stack. */
void host_open_sync(lua_State *L);

#endif
