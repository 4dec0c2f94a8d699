/*
** myblock.c: a user's own binding for host, built out of tree against the
** installed header (examples/blocking/Makefile, README "Writing your own
** binding"). It shows the two reasons to release the GIL in C:
**
**   local mb = require "myblock"
**   local r, w = mb.pipe()       -- two file descriptors (integers)
**   mb.write(w, "hi")            -- true | nil, msg, errno
**   mb.read(r [, timeout])       -- waits for data WITHOUT the GIL:
**                                -- string ("" at end of file) | nil, "timeout" | nil, msg, errno
**   mb.close(fd)                 -- true | nil, msg, errno
**   mb.crunch(n)                 -- n xorshift steps WITHOUT the GIL: a checksum (integer)
**   mb.overlap()                 -- the most threads seen inside crunch at once
**
** No static mutable state: crunch's counters live in a userdata that is an
** upvalue of crunch and overlap, so each universe (and each lua_State that
** loads the module) has its own.
*/
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "host.h"

#define READ_MAX 4096

/* ---- blocking: a read from a pipe ---- */

/* mb.pipe() -> r, w | nil, msg, errno */
static int mb_pipe(lua_State *L) {
  int fd[2];
  if (pipe(fd) != 0) return luaL_fileresult(L, 0, "pipe");
  lua_pushinteger(L, fd[0]);
  lua_pushinteger(L, fd[1]);
  return 2;
}

/* Milliseconds from now until `end` (CLOCK_MONOTONIC), at least 0. */
static int ms_until(const struct timespec *end) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  double left = (double)(end->tv_sec - now.tv_sec) * 1e3 +
                (double)(end->tv_nsec - now.tv_nsec) / 1e6;
  return left <= 0 ? 0 : left > 1e9 ? 1000000000 : (int)left + 1;
}

/*
** mb.read(fd [, timeout]): waits until fd is readable (at most `timeout`
** seconds; none, a negative one or one past a billion seconds: forever),
** then reads what is there. Everything between
** host_gil_release and host_gil_acquire is plain C on C data: the bytes go
** to a buffer on the C stack and become a Lua string after the GIL is back.
*/
static int mb_read(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  double timeout = luaL_optnumber(L, 2, -1);
  luaL_argcheck(L, timeout == timeout, 2, "timeout is NaN");
  if (timeout > 1e9) timeout = -1;  /* (time_t)1e300 would be undefined */
  struct timespec end;
  clock_gettime(CLOCK_MONOTONIC, &end);
  if (timeout >= 0) {
    end.tv_sec += (time_t)timeout;
    end.tv_nsec += (long)((timeout - (double)(time_t)timeout) * 1e9);
    if (end.tv_nsec >= 1000000000L) {
      end.tv_sec++;
      end.tv_nsec -= 1000000000L;
    }
  }
  char buf[READ_MAX];
  ssize_t n = -1;
  int ready, err;
  host_gil_release(L);
  struct pollfd p = { .fd = fd, .events = POLLIN };
  do {
    ready = poll(&p, 1, timeout < 0 ? -1 : ms_until(&end));
  } while (ready < 0 && errno == EINTR);  /* host's switch signal lands here too */
  if (ready > 0) n = read(fd, buf, sizeof buf);
  err = errno;
  host_gil_acquire(L);
  if (ready == 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "timeout");
    return 2;
  }
  if (ready < 0 || n < 0) {
    errno = err;
    return luaL_fileresult(L, 0, "read");
  }
  lua_pushlstring(L, buf, (size_t)n);
  return 1;
}

/* mb.write(fd, s) -> true | nil, msg, errno (short pipe writes: with the GIL) */
static int mb_write(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  return luaL_fileresult(L, write(fd, s, len) == (ssize_t)len, "write");
}

/* mb.close(fd) -> true | nil, msg, errno */
static int mb_close(lua_State *L) {
  return luaL_fileresult(L, close((int)luaL_checkinteger(L, 1)) == 0, "close");
}

/* ---- CPU-heavy: a loop on C data ---- */

/* Upvalue 1 of crunch and overlap. */
typedef struct stats {
  atomic_int inside;   /* threads inside crunch now */
  atomic_int most;     /* the most there ever were at once */
} stats;

/*
** mb.crunch(n): n steps of xorshift64, summed. The stats block is reached
** through an upvalue (anchored by the closure that runs), so using it
** without the GIL is allowed; the atomics make it safe between threads.
*/
static int mb_crunch(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 0, 1, "must be non-negative");
  stats *st = lua_touserdata(L, lua_upvalueindex(1));
  host_gil_release(L);
  int now = atomic_fetch_add(&st->inside, 1) + 1;
  int most = atomic_load(&st->most);
  while (now > most && !atomic_compare_exchange_weak(&st->most, &most, now)) {}
  uint64_t x = 88172645463325252ULL, sum = 0;
  for (lua_Integer i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    sum += x;
  }
  atomic_fetch_sub(&st->inside, 1);
  host_gil_acquire(L);
  lua_pushinteger(L, (lua_Integer)(sum & 0x7fffffffffffffffULL));
  return 1;
}

/* mb.overlap() -> the most threads seen inside crunch at once */
static int mb_overlap(lua_State *L) {
  stats *st = lua_touserdata(L, lua_upvalueindex(1));
  lua_pushinteger(L, atomic_load(&st->most));
  return 1;
}

static const luaL_Reg plain_funcs[] = {
  {"pipe", mb_pipe},
  {"read", mb_read},
  {"write", mb_write},
  {"close", mb_close},
  {NULL, NULL}
};

static const luaL_Reg stats_funcs[] = {
  {"crunch", mb_crunch},
  {"overlap", mb_overlap},
  {NULL, NULL}
};

int luaopen_myblock(lua_State *L);

int luaopen_myblock(lua_State *L) {
  luaL_newlib(L, plain_funcs);
  stats *st = lua_newuserdatauv(L, sizeof *st, 0);
  atomic_init(&st->inside, 0);
  atomic_init(&st->most, 0);
  luaL_setfuncs(L, stats_funcs, 1);
  return 1;
}
