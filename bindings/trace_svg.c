/*
** trace_svg.c: the preloaded module `host.trace.svg`, which turns a trace
** (Chrome's Trace Event Format, TRACE_FORMAT.md) into an SVG timeline.
** The module is Lua (bindings/trace_svg.lua); its source is assembled into
** the binary with .incbin, so an installed host needs no file beside it.
** The Makefile makes this object depend on the .lua file.
*/
#include "lauxlib.h"
#include "modules.h"

__asm__(
  ".section .rodata\n"
  ".globl host_trace_svg_lua\n"
  ".hidden host_trace_svg_lua\n"
  "host_trace_svg_lua:\n"
  ".incbin \"bindings/trace_svg.lua\"\n"
  ".globl host_trace_svg_lua_end\n"
  ".hidden host_trace_svg_lua_end\n"
  "host_trace_svg_lua_end:\n"
  ".previous\n");

extern const char host_trace_svg_lua[];
extern const char host_trace_svg_lua_end[];

/* Loads and runs the embedded chunk; it returns the module's table. */
int luaopen_host_trace_svg(lua_State *L) {
  size_t len = (size_t)(host_trace_svg_lua_end - host_trace_svg_lua);
  if (luaL_loadbuffer(L, host_trace_svg_lua, len, "=host.trace.svg") != LUA_OK)
    return lua_error(L);
  lua_call(L, 0, 1);
  return 1;
}
