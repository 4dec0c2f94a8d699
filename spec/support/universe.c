/*
** spec/support/universe.c: a test helper, not part of host. `make` builds it
** as $(BUILD)/spec/universe.so; specs load it with package.loadlib (path in
** $HOST_SPEC_UNIVERSE). It uses only the public API in bindings/host.h:
**
**   universe.new() -> u       a second universe in this process, made with
**                             host_newstate, standard and host libraries
**                             open; closed by u:close() or the GC
**   u:run(code, payload)      in u: decode `payload` with host_codec_decode
**                             (functions allowed), call chunk `code` with
**                             those values, and return its results encoded
**                             with host_codec_encode; or nil, message
**   universe.point(x, y)      a "spec.Point" userdata; the type is
**                             registered with host_codec_register_udata in
**                             every universe this helper touches
**   universe.encode(...)      host_codec_encode of the arguments, here
**   universe.decode(s [, functions])  host_codec_decode, here
**   universe.plain_openlibs()  host_openlibs on a plain luaL_newstate,
**                             under lua_pcall: its status and message
**   universe.decode_full(s)   host_codec_decode here with a stack that
**                             cannot grow: its status and what it pushed
**   universe.encode_count(n, ...)  host_codec_encode of n values from
**                             argument 2: its status and message
**   universe.decode_failing(s, n)  host_codec_decode of s (functions
**                             allowed) in a new plain state (points
**                             registered) whose allocator refuses the n-th
**                             growing request of the decoding (none when n
**                             is 0): its status, its message or count of
**                             values, and how many requests it made
**   universe.bad(how)         a "spec.Bad" userdata (registered like
**                             points): how == "dump" makes its dump raise
**                             a table whose __tostring gives "bad dump";
**                             "load" makes its load raise a table whose
**                             __tostring raises
**   universe.nap(ms)          poll(NULL, 0, ms) with the GIL released, as a
**                             binding blocks: "ok", or the strerror of a
**                             failure (EINTR: a signal reached the thread)
**
** The new universe runs on the caller's OS thread, one call at a time.
*/
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

#include "host.h"

#define UNIVERSE_TYPE "spec.Universe"
#define POINT_TYPE "spec.Point"

typedef struct point {
  double x, y;
} point;

/* Makes a point userdata (and its metatable on first use). */
static point *push_point(lua_State *L, double x, double y) {
  point *p = lua_newuserdatauv(L, sizeof *p, 0);
  p->x = x;
  p->y = y;
  luaL_setmetatable(L, POINT_TYPE);
  return p;
}

/* p.x, p.y */
static int point_index(lua_State *L) {
  point *p = luaL_checkudata(L, 1, POINT_TYPE);
  const char *k = luaL_checkstring(L, 2);
  if (strcmp(k, "x") == 0) lua_pushnumber(L, p->x);
  else if (strcmp(k, "y") == 0) lua_pushnumber(L, p->y);
  else lua_pushnil(L);
  return 1;
}

/* The codec's dump function for points: 16 bytes, the two doubles. */
static int point_dump(lua_State *L) {
  point *p = luaL_checkudata(L, 1, POINT_TYPE);
  lua_pushlstring(L, (const char *)p, sizeof *p);
  return 1;
}

/* The codec's load function for points. */
static int point_load(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  if (n != sizeof(point)) return luaL_error(L, "a point is %d bytes, not %d",
                                            (int)sizeof(point), (int)n);
  point p;
  memcpy(&p, s, sizeof p);
  push_point(L, p.x, p.y);
  return 1;
}

#define BAD_TYPE "spec.Bad"

/* Raises a table whose __tostring runs `tostring_code`. */
static int raise_object(lua_State *L, const char *tostring_code) {
  lua_newtable(L);
  lua_newtable(L);
  if (luaL_loadstring(L, tostring_code) != LUA_OK) return lua_error(L);
  lua_setfield(L, -2, "__tostring");
  lua_setmetatable(L, -2);
  return lua_error(L);
}

/* The codec's dump function for spec.Bad: its one byte, or an error. */
static int bad_dump(lua_State *L) {
  const char *how = luaL_checkudata(L, 1, BAD_TYPE);
  if (*how == 'd') return raise_object(L, "return 'bad dump'");
  lua_pushlstring(L, how, 1);
  return 1;
}

/* The codec's load function for spec.Bad. */
static int bad_load(lua_State *L) {
  const char *s = luaL_checkstring(L, 1);
  if (*s == 'l') return raise_object(L, "error('__tostring fails')");
  *(char *)lua_newuserdatauv(L, 1, 0) = *s;
  luaL_setmetatable(L, BAD_TYPE);
  return 1;
}

/* Creates the point and bad types in L and registers them with the codec. */
static void open_point(lua_State *L) {
  if (luaL_newmetatable(L, POINT_TYPE)) {
    lua_pushcfunction(L, point_index);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  if (host_codec_register_udata(L, POINT_TYPE, point_dump, point_load) != LUA_OK)
    lua_error(L);
  luaL_newmetatable(L, BAD_TYPE);
  lua_pop(L, 1);
  if (host_codec_register_udata(L, BAD_TYPE, bad_dump, bad_load) != LUA_OK)
    lua_error(L);
}

/* universe.bad(how) */
static int universe_bad(lua_State *L) {
  const char *how = luaL_checkstring(L, 1);
  *(char *)lua_newuserdatauv(L, 1, 0) = how[0];
  luaL_setmetatable(L, BAD_TYPE);
  return 1;
}

/* universe.point(x, y) */
static int universe_point(lua_State *L) {
  push_point(L, luaL_checknumber(L, 1), luaL_checknumber(L, 2));
  return 1;
}

/* The handle of a universe; `L2` is NULL once closed. */
typedef struct handle {
  lua_State *L2;
} handle;

static handle *check_open(lua_State *L) {
  handle *h = luaL_checkudata(L, 1, UNIVERSE_TYPE);
  if (h->L2 == NULL) luaL_error(L, "attempt to use a closed universe");
  return h;
}

/* Opens the libraries of a new universe; runs protected inside it. */
static int open_universe(lua_State *L2) {
  luaL_openlibs(L2);
  host_openlibs(L2);
  open_point(L2);
  return 0;
}

/* universe.new() */
static int universe_new(lua_State *L) {
  handle *h = lua_newuserdatauv(L, sizeof *h, 0);
  h->L2 = NULL;
  luaL_setmetatable(L, UNIVERSE_TYPE);
  h->L2 = host_newstate();
  if (h->L2 == NULL) return luaL_error(L, "host_newstate: not enough memory");
  lua_pushcfunction(h->L2, open_universe);
  if (host_pcall(h->L2, 0, 0) != LUA_OK) {
    lua_pushstring(L, host_error_tostring(h->L2));
    host_close(h->L2);
    h->L2 = NULL;
    return lua_error(L);
  }
  return 1;
}

/* Moves the error on top of L2 to L as nil, message; returns 2. */
static int fail_from(lua_State *L, lua_State *L2) {
  lua_pushnil(L);
  lua_pushstring(L, host_error_tostring(L2));
  lua_pop(L2, 1);
  return 2;
}

/* u:run(code, payload) */
static int universe_run(lua_State *L) {
  lua_State *L2 = check_open(L)->L2;
  size_t ncode, len;
  const char *code = luaL_checklstring(L, 2, &ncode);
  const char *payload = luaL_checklstring(L, 3, &len);
  int top = lua_gettop(L2);
  if (luaL_loadbuffer(L2, code, ncode, "=run") != LUA_OK) return fail_from(L, L2);
  int n;
  if (host_codec_decode(L2, payload, len, HOST_CODEC_FUNCTIONS, &n) != LUA_OK) {
    int r = fail_from(L, L2);
    lua_settop(L2, top);
    return r;
  }
  if (host_pcall(L2, n, LUA_MULTRET) != LUA_OK) return fail_from(L, L2);
  char *buf;
  size_t blen;
  if (host_codec_encode(L2, top + 1, lua_gettop(L2) - top, &buf, &blen) != LUA_OK) {
    int r = fail_from(L, L2);
    lua_settop(L2, top);
    return r;
  }
  lua_settop(L2, top);
  lua_pushlstring(L, buf, blen);  /* a memory error here would leak buf: a
                                     test helper accepts that */
  free(buf);
  return 1;
}

/* u:close(), __gc, __close */
static int universe_close(lua_State *L) {
  handle *h = luaL_checkudata(L, 1, UNIVERSE_TYPE);
  if (h->L2 != NULL) {
    host_close(h->L2);
    h->L2 = NULL;
  }
  return 0;
}

/* universe.encode(...): host_codec_encode here; raises its error. */
static int universe_encode(lua_State *L) {
  char *buf;
  size_t len;
  if (host_codec_encode(L, 1, lua_gettop(L), &buf, &len) != LUA_OK)
    return lua_error(L);
  lua_pushlstring(L, buf, len);
  free(buf);
  return 1;
}

/* universe.decode(s [, functions]): host_codec_decode here. */
static int universe_decode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  unsigned flags = lua_toboolean(L, 2) ? HOST_CODEC_FUNCTIONS : 0;
  lua_settop(L, 2);
  int n;
  if (host_codec_decode(L, s, len, flags, &n) != LUA_OK) return lua_error(L);
  return n;
}

/* Opens the standard and host libraries in a plain state (protected). */
static int open_plain(lua_State *L) {
  luaL_openlibs(L);
  host_openlibs(L);
  return 0;
}

/* universe.plain_openlibs() -> true, or false, message */
static int universe_plain_openlibs(lua_State *L) {
  lua_State *P = luaL_newstate();
  if (P == NULL) return luaL_error(L, "luaL_newstate: not enough memory");
  lua_pushcfunction(P, open_plain);
  int status = lua_pcall(P, 0, 0, 0);
  lua_pushboolean(L, status == LUA_OK);
  if (status != LUA_OK) lua_pushstring(L, lua_tostring(P, -1));
  lua_close(P);
  return status == LUA_OK ? 1 : 2;
}

/*
** universe.decode_full(s) -> status, type of the value pushed (or
** "nothing"), that value if a string. The stack is filled until it
** cannot grow by 2, leaving the one slot any push may assume.
*/
static int universe_decode_full(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  int base = lua_gettop(L);
  while (lua_checkstack(L, 2)) lua_pushboolean(L, 1);
  int top = lua_gettop(L);
  int n;
  int status = host_codec_decode(L, s, len, 0, &n);
  int pushed = lua_gettop(L) - top;
  char msg[64] = "";
  const char *type = pushed == 1 ? luaL_typename(L, -1) : pushed == 0 ? "nothing" : "more";
  if (pushed == 1 && lua_type(L, -1) == LUA_TSTRING)
    snprintf(msg, sizeof msg, "%s", lua_tostring(L, -1));
  lua_settop(L, base);
  lua_pushinteger(L, status);
  lua_pushstring(L, type);
  lua_pushstring(L, msg);
  return 3;
}

/* universe.encode_count(n, ...) -> status, message or payload length */
static int universe_encode_count(lua_State *L) {
  int n = (int)luaL_checkinteger(L, 1);
  char *buf;
  size_t len;
  int status = host_codec_encode(L, 2, n, &buf, &len);
  lua_pushinteger(L, status);
  if (status == LUA_OK) {
    free(buf);
    lua_pushinteger(L, (lua_Integer)len);
  } else {
    lua_insert(L, -2);  /* the message after the status */
  }
  return 2;
}

/*
** What decode_failing's allocator refuses: once armed, it counts
** the requests that grow a block and refuses the fail_at-th, and Lua's
** retry of that same request after its emergency collection; it grants
** every other, as when one large allocation does not fit.
*/
typedef struct failing {
  bool armed, retry_next;
  lua_Integer requests, fail_at;
  void *failed_ptr;
  size_t failed_size;
} failing;

/* decode_failing's allocator: realloc/free, refusing as `ud` says. */
static void *failing_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  failing *f = ud;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  if (ptr == NULL) osize = 0;  /* then it holds the object's type */
  if (f->armed && nsize > osize) {
    bool retry = f->retry_next && ptr == f->failed_ptr && nsize == f->failed_size;
    f->retry_next = false;
    if (retry) return NULL;
    if (++f->requests == f->fail_at) {
      f->retry_next = true;
      f->failed_ptr = ptr;
      f->failed_size = nsize;
      return NULL;
    }
  }
  return realloc(ptr, nsize);
}

/* Opens the standard libraries and the point types (run protected). */
static int open_failing(lua_State *F) {
  luaL_openlibs(F);
  open_point(F);
  return 0;
}

/* universe.decode_failing(s, n) -> status, message or count, requests */
static int universe_decode_failing(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  failing f = {.fail_at = luaL_checkinteger(L, 2)};
  lua_State *F = lua_newstate(failing_alloc, &f);
  if (F == NULL) return luaL_error(L, "lua_newstate: not enough memory");
  lua_pushcfunction(F, open_failing);
  if (lua_pcall(F, 0, 0, 0) != LUA_OK) {
    lua_pushstring(L, lua_tostring(F, -1));
    lua_close(F);
    return lua_error(L);
  }
  f.armed = true;
  int n;
  int status = host_codec_decode(F, s, len, HOST_CODEC_FUNCTIONS, &n);
  f.armed = false;
  lua_pushinteger(L, status);
  if (status == LUA_OK) lua_pushinteger(L, n);
  else lua_pushstring(L, lua_tostring(F, -1));
  lua_pushinteger(L, f.requests);
  lua_close(F);
  return 3;
}

/* universe.nap(ms) -> "ok" | strerror: one poll, not retried on EINTR. */
static int universe_nap(lua_State *L) {
  int ms = (int)luaL_checkinteger(L, 1);
  host_gil_release(L);
  int rc = poll(NULL, 0, ms);
  int err = errno;
  host_gil_acquire(L);
  lua_pushstring(L, rc < 0 ? strerror(err) : "ok");
  return 1;
}

static const luaL_Reg universe_funcs[] = {
  {"nap", universe_nap},
  {"encode_count", universe_encode_count},
  {"decode_failing", universe_decode_failing},
  {"bad", universe_bad},
  {"plain_openlibs", universe_plain_openlibs},
  {"decode_full", universe_decode_full},
  {"new", universe_new},
  {"point", universe_point},
  {"encode", universe_encode},
  {"decode", universe_decode},
  {NULL, NULL}
};

static const luaL_Reg universe_methods[] = {
  {"run", universe_run},
  {"close", universe_close},
  {NULL, NULL}
};

static const luaL_Reg universe_meta[] = {
  {"__gc", universe_close},
  {"__close", universe_close},
  {NULL, NULL}
};

int luaopen_universe(lua_State *L);

int luaopen_universe(lua_State *L) {
  if (luaL_newmetatable(L, UNIVERSE_TYPE)) {
    luaL_setfuncs(L, universe_meta, 0);
    luaL_newlib(L, universe_methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  open_point(L);
  luaL_newlib(L, universe_funcs);
  return 1;
}
