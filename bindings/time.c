/*
** time.c: `require "host.time"`, the twin of Python's time module for the
** parts a benchmark or a timeout needs: monotonic() and sleep(seconds).
** sleep releases the GIL, so other threads run meanwhile.
*/
#include <errno.h>
#include <math.h>

#include "modules.h"
#include "runtime.h"

/* time.monotonic(): seconds on a clock that never goes back. */
static int time_monotonic(lua_State *L) {
  lua_pushnumber(L, (lua_Number)host_now());
  return 1;
}

/* time.sleep(seconds): waits that long; other threads run meanwhile. */
static int time_sleep(lua_State *L) {
  double seconds = (double)luaL_checknumber(L, 1);
  luaL_argcheck(L, seconds >= 0 && !isnan(seconds), 1,
                "sleep length must be a non-negative number");
  host_deadline d = host_deadline_in(seconds);
  if (!host_unlocked_sleep(L, &d)) return host_raise_interrupt(L);
  return 0;
}

static const luaL_Reg time_funcs[] = {
  {"monotonic", time_monotonic},
  {"sleep", time_sleep},
  {NULL, NULL}
};

int luaopen_host_time(lua_State *L) {
  luaL_newlib(L, time_funcs);
  return 1;
}
