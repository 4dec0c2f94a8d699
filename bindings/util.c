/*
** util.c: deadlines, the error object and the protected-call helper
** (floor 0). The error object is a table {kind, message, traceback, cause}
** whose metatable is the registry's "host.Error"; `require "host.error"`
** exposes it to Lua as error.new(kind, message [, cause]) and
** error.is(value, kind).
*/
#include <math.h>
#include <stdarg.h>
#include <string.h>

#include "modules.h"
#include "util.h"

double host_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

host_deadline host_deadline_in(double seconds) {
  host_deadline d = {.never = seconds < 0};
  if (d.never) return d;
  if (seconds > 1e9) seconds = 1e9;  /* ~31 years: far enough, no overflow */
  clock_gettime(CLOCK_MONOTONIC, &d.at);
  double whole = floor(seconds);
  d.at.tv_sec += (time_t)whole;
  d.at.tv_nsec += (long)((seconds - whole) * 1e9);
  if (d.at.tv_nsec >= 1000000000L) {
    d.at.tv_sec += 1;
    d.at.tv_nsec -= 1000000000L;
  }
  return d;
}

double host_deadline_left(const host_deadline *d) {
  if (d->never) return HUGE_VAL;
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  double left = (double)(d->at.tv_sec - now.tv_sec) +
                (double)(d->at.tv_nsec - now.tv_nsec) * 1e-9;
  return left > 0 ? left : 0;
}

bool host_deadline_passed(const host_deadline *d) {
  return !d->never && host_deadline_left(d) <= 0;
}

double host_opt_timeout(lua_State *L, int arg) {
  if (lua_isnoneornil(L, arg)) return -1;
  double t = (double)luaL_checknumber(L, arg);
  luaL_argcheck(L, t >= 0, arg, "timeout must be a non-negative number");
  return t;
}

/* ---- the error object ---- */

/* Pushes the shared metatable of error objects, creating it on first use. */
static void push_error_meta(lua_State *L);

void host_error_push(lua_State *L, const char *kind, const char *message,
                     int cause_idx) {
  if (cause_idx != 0) cause_idx = lua_absindex(L, cause_idx);
  lua_createtable(L, 0, 4);
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  lua_pushstring(L, message);
  lua_setfield(L, -2, "message");
  if (cause_idx != 0) {
    lua_pushvalue(L, cause_idx);
    lua_setfield(L, -2, "cause");
  }
  push_error_meta(L);
  lua_setmetatable(L, -2);
}

int host_error_raise(lua_State *L, const char *kind, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  const char *message = lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  host_error_push(L, kind, message, 0);
  return lua_error(L);
}

bool host_error_is(lua_State *L, int idx, const char *kind) {
  if (lua_type(L, idx) != LUA_TTABLE) return false;
  if (!lua_getmetatable(L, idx)) return false;
  luaL_getmetatable(L, HOST_ERROR_TYPE);
  bool ours = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  if (!ours) return false;
  if (kind == NULL) return true;
  lua_getfield(L, idx, "kind");
  const char *k = lua_tostring(L, -1);
  bool same = k != NULL && strcmp(k, kind) == 0;
  lua_pop(L, 1);
  return same;
}

/* __tostring: "Kind: message", then the cause and the traceback if present. */
static int error_tostring(lua_State *L) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  lua_getfield(L, 1, "kind");
  luaL_addvalue(&b);
  lua_getfield(L, 1, "message");
  if (!lua_isnil(L, -1)) {
    luaL_addstring(&b, ": ");
    luaL_tolstring(L, -1, NULL);
    luaL_addvalue(&b);
  }
  lua_pop(L, 1);
  lua_getfield(L, 1, "traceback");
  if (lua_type(L, -1) == LUA_TSTRING) {
    luaL_addchar(&b, '\n');
    luaL_addvalue(&b);
  } else {
    lua_pop(L, 1);
  }
  lua_getfield(L, 1, "cause");
  if (!lua_isnil(L, -1)) {
    luaL_addstring(&b, "\ncaused by: ");
    luaL_tolstring(L, -1, NULL);
    lua_remove(L, -2);
    luaL_addvalue(&b);
  } else {
    lua_pop(L, 1);
  }
  luaL_pushresult(&b);
  return 1;
}

/* err:is(kind) / error.is(v, kind): is `v` an error object of that kind? */
static int error_is(lua_State *L) {
  const char *kind = luaL_optstring(L, 2, NULL);
  lua_pushboolean(L, host_error_is(L, 1, kind));
  return 1;
}

/* error.new(kind, message [, cause]) */
static int error_new(lua_State *L) {
  const char *kind = luaL_checkstring(L, 1);
  const char *message = luaL_optstring(L, 2, "");
  host_error_push(L, kind, message, lua_isnoneornil(L, 3) ? 0 : 3);
  return 1;
}

static void push_error_meta(lua_State *L) {
  if (luaL_newmetatable(L, HOST_ERROR_TYPE)) {
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, error_is);
    lua_setfield(L, -2, "is");
    lua_setfield(L, -2, "__index");
  }
}

int host_msghandler(lua_State *L) {
  if (lua_type(L, 1) == LUA_TSTRING) {
    luaL_traceback(L, L, lua_tostring(L, 1), 1);
    return 1;
  }
  if (host_error_is(L, 1, NULL)) {
    if (lua_getfield(L, 1, "traceback") == LUA_TNIL) {
      luaL_traceback(L, L, NULL, 1);
      lua_setfield(L, 1, "traceback");
    }
    lua_pop(L, 1);
  }
  lua_settop(L, 1);
  return 1;
}

int host_pcall(lua_State *L, int nargs, int nresults) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, host_msghandler);
  lua_insert(L, base);
  int status = lua_pcall(L, nargs, nresults, base);
  lua_remove(L, base);
  return status;
}

const char *host_error_tostring(lua_State *L) {
  if (lua_isstring(L, -1)) {  /* strings and numbers, as lua.c prints them */
    lua_pushstring(L, lua_tostring(L, -1));
    lua_remove(L, -2);
    return lua_tostring(L, -1);
  }
  if (luaL_callmeta(L, -1, "__tostring")) {
    if (lua_type(L, -1) == LUA_TSTRING) {
      lua_remove(L, -2);
      return lua_tostring(L, -1);
    }
    lua_pop(L, 1);
  }
  lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, -1));
  lua_remove(L, -2);
  return lua_tostring(L, -1);
}

static const luaL_Reg error_funcs[] = {
  {"new", error_new},
  {"is", error_is},
  {NULL, NULL}
};

int luaopen_host_error(lua_State *L) {
  luaL_newlib(L, error_funcs);
  push_error_meta(L);
  lua_setfield(L, -2, "metatable");
  return 1;
}
