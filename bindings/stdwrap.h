/*
** stdwrap.h: the standard library functions host replaces (floor 2):
** stdwrap.c and iowrap.c.
*/
#ifndef HOST_STDWRAP_H
#define HOST_STDWRAP_H

#include "lua.h"

/*
** Replaces require, print, coroutine.resume/wrap and os.exit in L's
** globals, then calls host_wrap_io.
*/
void host_wrap_stdlib(lua_State *L);

/*
** Replaces io.read, io.lines, io.popen, os.execute and the read and lines
** methods of files with versions that release the GIL while they block
** (iowrap.c).
*/
void host_wrap_io(lua_State *L);

#endif
