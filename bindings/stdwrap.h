/*
** stdwrap.h: the standard library functions host replaces (floor 2).
*/
#ifndef HOST_STDWRAP_H
#define HOST_STDWRAP_H

#include "lua.h"

/* Replaces require, coroutine.resume/wrap and os.exit in L's globals. */
void host_wrap_stdlib(lua_State *L);

#endif
