/*
** embed.c: a C program that embeds host's bindings (not the `host`
** program): one universe, the standard and host libraries, a chunk from
** the command line run under host_pcall, and host_close, which waits for
** the chunk's non-daemon threads. Modules it requires may call host_*:
** host-embed.pc links with -rdynamic so they find them here.
**
**   ./embed 'local t = require("host.thread").start(print, "hi"); t:join(5)'
*/
#include <stdio.h>
#include <stdlib.h>

#include "lualib.h"
#include "host.h"

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s 'lua chunk'\n", argv[0]);
    return EXIT_FAILURE;
  }
  lua_State *L = host_newstate();
  if (L == NULL) {
    fprintf(stderr, "%s: not enough memory\n", argv[0]);
    return EXIT_FAILURE;
  }
  luaL_openlibs(L);
  host_openlibs(L);
  int status = luaL_loadstring(L, argv[1]);
  if (status == LUA_OK) status = host_pcall(L, 0, 0);
  if (status != LUA_OK) {
    fprintf(stderr, "%s: %s\n", argv[0], host_error_tostring(L));
    lua_pop(L, 1);
  }
  bool threads_ok = host_close(L);
  return status == LUA_OK && threads_ok ? EXIT_SUCCESS : EXIT_FAILURE;
}
