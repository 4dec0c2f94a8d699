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

/*
** In a process just forked from L's (a process pool's worker): each file
** of io.popen still open is made to read end of file and fail to write
** (EPIPE), and its close no longer waits for the command, which is the
** parent's. The command's pipe is no longer held open by this process.
*/
void host_io_after_fork(lua_State *L);

#endif
