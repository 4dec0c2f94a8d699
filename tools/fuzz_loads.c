/*
** tools/fuzz_loads.c: the libFuzzer target of `make fuzz`. Every input goes
** to host_codec_decode with default flags (no functions: what loads does
** with untrusted bytes) in one lua_State. The oracle, beyond the
** sanitizers: decoding returns or fails with an error message; Lua memory
** allocated while decoding stays under a bound proportional to the input's
** length; and whatever decodes encodes again and decodes to as many values.
** A table type and a userdata type are registered so those paths are fed.
** The state is a plain lua_newstate, so that its allocator can count: the
** codec needs no universe (host.h), and host_openlibs would refuse such a
** state, so only `host.serialize` is opened, straight from its luaopen.
** This program owns its statics; the bindings have none.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

#include "host.h"
#include "serialize.h"  /* luaopen_host_serialize: bindings/ is on the path */

/* Bytes of Lua memory a decode may allocate per input byte, plus a floor. */
#define BYTES_PER_INPUT_BYTE 128
#define BYTES_FLOOR (256 * 1024)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lua_State *L;
static size_t in_use, peak;

/* The state's allocator: realloc/free, counting bytes in use and the peak. */
static void *counting_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  if (ptr == NULL) osize = 0;
  if (nsize == 0) {
    free(ptr);
    in_use -= osize;
    return NULL;
  }
  void *p = realloc(ptr, nsize);
  if (p != NULL) {
    in_use = in_use - osize + nsize;
    if (in_use > peak) peak = in_use;
  }
  return p;
}

/* The userdata type: its payload is kept; an empty payload loads as nil. */
static int blob_dump(lua_State *S) {
  size_t n = lua_rawlen(S, 1);
  lua_pushlstring(S, lua_touserdata(S, 1), n);
  return 1;
}

static int blob_load(lua_State *S) {
  size_t n;
  const char *s = luaL_checklstring(S, 1, &n);
  if (n == 0) {
    lua_pushnil(S);
    return 1;
  }
  memcpy(lua_newuserdatauv(S, n, 0), s, n);
  luaL_setmetatable(S, "fuzz.Blob");
  return 1;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  L = lua_newstate(counting_alloc, NULL);
  luaL_openlibs(L);
  luaL_requiref(L, "host.serialize", luaopen_host_serialize, 0);
  lua_pop(L, 1);
  luaL_newmetatable(L, "fuzz.Blob");
  lua_pop(L, 1);
  if (host_codec_register_udata(L, "fuzz.Blob", blob_dump, blob_load) != LUA_OK ||
      luaL_dostring(L, "require 'host.serialize'.register('fuzz.T', {})") != LUA_OK) {
    fprintf(stderr, "fuzz_loads: setup failed: %s\n", lua_tostring(L, -1));
    abort();
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_settop(L, 0);
  lua_gc(L, LUA_GCCOLLECT);
  size_t base = in_use;
  peak = in_use;
  int n;
  int status = host_codec_decode(L, (const char *)data, size, 0, &n);
  if (peak - base > BYTES_PER_INPUT_BYTE * size + BYTES_FLOOR) {
    fprintf(stderr, "fuzz_loads: %zu input bytes made %zu bytes of Lua memory\n",
            size, peak - base);
    abort();
  }
  if (status != LUA_OK) {
    if (lua_type(L, -1) != LUA_TSTRING) abort();  /* errors are messages */
    return 0;
  }
  char *buf;
  size_t len;
  if (host_codec_encode(L, 1, n, &buf, &len) != LUA_OK) {
    fprintf(stderr, "fuzz_loads: decoded values do not encode: %s\n", lua_tostring(L, -1));
    abort();
  }
  int m;
  status = host_codec_decode(L, buf, len, 0, &m);
  free(buf);
  if (status != LUA_OK || m != n) {
    fprintf(stderr, "fuzz_loads: re-encoded values do not decode: %s\n",
            status != LUA_OK ? lua_tostring(L, -1) : "count differs");
    abort();
  }
  return 0;
}
