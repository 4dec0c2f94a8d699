/*
** iowrap.c: the standard library's blocking calls, remade to release the
** GIL while they block (floor 2): io.read, io.lines, and the read and lines
** methods of files ("FILE*"), io.popen (and closing what it opened), and
** os.execute. Their results, errors and return values are those of Lua
** 5.4's liolib.c and loslib.c, whose code this follows (Lua's MIT licence,
** Copyright (C) 1994-2022 Lua.org, PUC-Rio), except at two edges: a count
** reads what the file holds without reserving the count first (liolib's
** io.read(math.maxinteger) fails with "not enough memory"), and a negative
** count is a bad argument (liolib's is a huge one).
**
** The GIL goes only around the libc calls that may block, with no Lua API
** call in between. What they read lands in C memory: the C stack, or a
** malloc'd block that a protected push turns into a string and frees.
** Regular files release the GIL too: it costs two atomic operations when
** nobody waits, and CPython does the same.
**
** Several threads may read one file at once. Each format of a read is read
** under the FILE's own lock (flockfile), taken after the GIL is released
** and dropped before it is taken back: never the other way round, since a
** thread holding the GIL may be waiting for that lock in fwrite or fseek.
** So a line, a number, a count or the rest of the file is read whole; the
** formats of one call may interleave with another thread's reads. The
** stream's error flag is only ever touched under that lock too.
**
** A file that some thread reads without the GIL cannot be closed under it.
** The decision (CPython's buffered files make a close wait for the read in
** progress too): a close waits until every format being read without the
** GIL has been read, then closes the file; a read call that still has
** formats to go raises at its next one, with the error a read of a closed
** file raises ("attempt to use a closed file"; "file is already closed"
** in lines(); "default input file is closed" in io.read). The format read
** meanwhile is lost with the call, as the file is. So a close never
** frees a FILE that a reader uses, and never waits longer than one format
** of each reader (a pipe whose writer never writes makes it wait, as
** pclose waits for its command). While a file has readers, its close
** function is swapped for busy_close, which does the waiting (see `busy`).
** The standard files are never closed (liolib's io_noclose answers "cannot
** close standard file" at once), so their reads skip all of this.
**
** A process pool's worker, forked, inherits the pipes of io.popen's
** commands, which stay the parent's: host_io_after_fork swaps each for a
** pipe nobody is at the other end of, so the worker never keeps a
** command's input open (the command would never see its end) nor waits
** for a command that is not its child.
*/
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <stdint.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime.h"
#include "stdwrap.h"
#include "trace.h"

#define IO_INPUT "_IO_input"          /* liolib's registry key of io.input() */
#define BUSY "host.io.busy"           /* registry: file -> busy record (weak keys) */
#define BUSY_TYPE "host.io.busy_record"
#define NOCLOSE "host.io.noclose"     /* registry: liolib's io_noclose */
#define POPENED "host.io.popened"     /* registry: the files io.popen made (weak keys) */
#define MAXARGLINE 250                /* liolib's limit of formats in lines() */
#define L_MAXLENNUM 200               /* liolib's longest numeral */
#define READ_CHUNK 4096              /* first block of read_block */

typedef luaL_Stream LStream;

/* ---- files that threads read without the GIL ---- */

/*
** One per file that has been read: a userdata, the value of BUSY[file],
** so it lives as long as the file. Its fields are used with the GIL held.
*/
typedef struct busy {
  int readers;            /* threads reading the file without the GIL */
  bool closing;           /* a close waits for them */
  lua_CFunction closef;   /* the stream's own close function, while readers > 0 */
  host_waitq *q;          /* where a close waits */
} busy;

static int busy_gc(lua_State *L) {
  busy *b = luaL_checkudata(L, 1, BUSY_TYPE);
  host_waitq_unref(b->q);
  b->q = NULL;
  return 0;
}

/* The busy record of the file at `file` (absolute or pseudo-index). */
static busy *get_busy(lua_State *L, int file) {
  lua_getfield(L, LUA_REGISTRYINDEX, BUSY);
  lua_pushvalue(L, file);
  busy *b = lua_rawget(L, -2) == LUA_TNIL ? NULL : lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (b == NULL) {
    b = lua_newuserdatauv(L, sizeof *b, 0);
    b->q = NULL;
    luaL_setmetatable(L, BUSY_TYPE);
    b->q = host_waitq_new();
    if (b->q == NULL) luaL_error(L, "not enough memory");
    b->readers = 0;
    b->closing = false;
    b->closef = NULL;
    lua_pushvalue(L, file);
    lua_insert(L, -2);
    lua_rawset(L, -3);
  }
  lua_pop(L, 1);
  return b;
}

/*
** The close function of a file while threads read it without the GIL: it
** waits until they are done (releasing the GIL), then closes the file with
** its own close function. Called by liolib's aux_close, which has marked
** the stream closed already, so no new read can start meanwhile.
*/
static int busy_close(lua_State *L) {
  LStream *p = luaL_checkudata(L, 1, LUA_FILEHANDLE);
  busy *b = get_busy(L, 1);
  if (host_closing(L)) return 0;  /* a reader is parked for good: leave it open */
  host_deadline never = host_deadline_in(-1);
  b->closing = true;
  while (b->readers > 0) {
    if (host_waitq_wait(L, b->q, &never) == HOST_WAIT_INTERRUPTED) {
      b->closing = false;  /* still open, as before the call */
      p->closef = b->readers > 0 ? busy_close : b->closef;
      return host_raise_interrupt(L);
    }
  }
  b->closing = false;
  return b->closef(L);
}

/*
** The busy record for a read of the file at `file`, whose stream is p; NULL
** for the standard files, whose close function (io_noclose, kept in the
** registry by host_wrap_io) closes nothing, and must not wait for a reader
** of stdin that may never get a line.
*/
static busy *reader_busy(lua_State *L, LStream *p, int file) {
  lua_getfield(L, LUA_REGISTRYINDEX, NOCLOSE);
  lua_CFunction noclose = lua_tocfunction(L, -1);
  lua_pop(L, 1);
  return p->closef == noclose ? NULL : get_busy(L, file);
}

/* ---- reading ---- */

/* A read call in progress: the file, its record and the stream's state. */
typedef struct reader {
  lua_State *L;
  LStream *p;
  FILE *f;
  busy *b;
  const char *closed;  /* the error when another thread closes the file */
  bool cleared;   /* clearerr done (liolib clears before the first format) */
  bool error;     /* the stream's error flag after the last read */
} reader;

/*
** Lets the other threads run while this one reads (GIL held on entry).
** A close that another thread began since the call's previous format
** (the stream is marked closed, its close waits or is done) ends the call
** with r->closed: the FILE may be gone.
*/
static void leave(reader *r) {
  if (r->p->closef == NULL) luaL_error(r->L, "%s", r->closed);
  if (r->b != NULL && r->b->readers++ == 0) {
    r->b->closef = r->p->closef;
    r->p->closef = busy_close;
  }
  host_gil_release(r->L);
  HOST_TRACE_L(r->L, host_trace_io(r->L, "io.read", true));
  flockfile(r->f);
  if (!r->cleared) {
    clearerr_unlocked(r->f);
    r->cleared = true;
  }
}

/* Ends what leave began: errno is kept for luaL_fileresult. */
static void enter(reader *r) {
  r->error = ferror_unlocked(r->f) != 0;
  funlockfile(r->f);
  int saved = errno;
  HOST_TRACE_L(r->L, host_trace_io(r->L, "io.read", false));
  host_gil_acquire(r->L);
  busy *b = r->b;
  if (b != NULL && --b->readers == 0) {
    if (!b->closing) r->p->closef = b->closef;
    host_waitq_notify(b->q);
  }
  errno = saved;
}

/* Pushes the string in a malloc'd block (GIL held); frees it, on error too. */
typedef struct owned {
  char *s;
  size_t len;
} owned;

static int push_owned_unprotected(lua_State *L) {
  const owned *o = lua_touserdata(L, 1);
  lua_pushlstring(L, o->s, o->len);
  return 1;
}

static void push_owned(lua_State *L, owned *o) {
  lua_pushcfunction(L, push_owned_unprotected);
  lua_pushlightuserdata(L, o);
  int status = lua_pcall(L, 1, 1, 0);
  free(o->s);
  o->s = NULL;
  if (status != LUA_OK) lua_error(L);
}

/* Raises the error a failed allocation raises in liolib. */
static int no_memory(lua_State *L) {
  lua_pushliteral(L, "not enough memory");
  return lua_error(L);
}

/* liolib's read_number: a numeral's longest valid prefix, then convert. */
typedef struct RN {
  FILE *f;
  int c;        /* current character (look ahead) */
  int n;        /* number of characters in buff */
  char buff[L_MAXLENNUM + 1];
} RN;

/* Adds the current char to the buffer (if room) and reads the next one. */
static int nextc(RN *rn) {
  if (rn->n >= L_MAXLENNUM) {
    rn->buff[0] = '\0';
    return 0;
  }
  rn->buff[rn->n++] = (char)rn->c;
  rn->c = getc_unlocked(rn->f);
  return 1;
}

/* Accepts the current char if it is in `set` (of size 2). */
static int test2(RN *rn, const char *set) {
  if (rn->c == set[0] || rn->c == set[1]) return nextc(rn);
  return 0;
}

/* Reads a sequence of (hex)digits. */
static int readdigits(RN *rn, int hex) {
  int count = 0;
  while ((hex ? isxdigit(rn->c) : isdigit(rn->c)) && nextc(rn)) count++;
  return count;
}

static int read_number(reader *r) {
  RN rn;
  int count = 0;
  int hex = 0;
  char decp[2];
  rn.f = r->f;
  rn.n = 0;
  decp[0] = lua_getlocaledecpoint();
  decp[1] = '.';
  leave(r);
  do { rn.c = getc_unlocked(rn.f); } while (isspace(rn.c));
  test2(&rn, "-+");
  if (test2(&rn, "00")) {
    if (test2(&rn, "xX")) hex = 1;
    else count = 1;
  }
  count += readdigits(&rn, hex);
  if (test2(&rn, decp)) count += readdigits(&rn, hex);
  if (count > 0 && test2(&rn, hex ? "pP" : "eE")) {
    test2(&rn, "-+");
    readdigits(&rn, 0);
  }
  ungetc(rn.c, rn.f);
  enter(r);
  rn.buff[rn.n] = '\0';
  if (lua_stringtonumber(r->L, rn.buff)) return 1;
  lua_pushnil(r->L);  /* "result" to be removed */
  return 0;
}

/* Format 0: "" unless at end of file. */
static int test_eof(reader *r) {
  leave(r);
  int c = getc_unlocked(r->f);
  ungetc(c, r->f);
  enter(r);
  lua_pushliteral(r->L, "");
  return c != EOF;
}

/* Formats "l" (chop) and "L": one whole line, read under the FILE's lock. */
static int read_line(reader *r, bool chop) {
  owned line = { NULL, 0 };
  size_t cap = 0;
  leave(r);
  ssize_t n = getdelim(&line.s, &cap, '\n', r->f);
  bool failed = n < 0 && !ferror_unlocked(r->f) && !feof_unlocked(r->f);
  enter(r);
  if (failed) {  /* getdelim could not allocate */
    free(line.s);
    return no_memory(r->L);
  }
  line.len = n > 0 ? (size_t)n : 0;
  bool newline = line.len > 0 && line.s[line.len - 1] == '\n';
  if (newline && chop) line.len--;
  push_owned(r->L, &line);
  return newline || line.len > 0;
}

/*
** Up to `max` bytes (to the end of the file), read under the FILE's lock
** into a malloc'd block that grows with what comes, and pushed. Format "a"
** is max = SIZE_MAX; a count n is max = n, so a huge count costs what the
** file holds, not n bytes up front (liolib's luaL_prepbuffsize(n) raises
** "not enough memory" for io.read(math.maxinteger)). Returns the length.
*/
static size_t read_block(reader *r, size_t max) {
  owned block = { NULL, 0 };
  size_t cap = 0;
  bool failed = false;
  leave(r);
  while (block.len < max) {
    if (block.len == cap) {
      size_t ncap = cap == 0 ? READ_CHUNK : cap <= SIZE_MAX / 2 ? cap * 2 : SIZE_MAX;
      if (ncap > max) ncap = max;
      char *p = realloc(block.s, ncap);
      if (p == NULL) {
        failed = true;
        break;
      }
      block.s = p;
      cap = ncap;
    }
    size_t want = cap - block.len;
    size_t got = fread(block.s + block.len, 1, want, r->f);
    block.len += got;
    if (got < want) break;
  }
  enter(r);
  if (failed) {
    free(block.s);
    no_memory(r->L);
  }
  size_t len = block.len;
  push_owned(r->L, &block);
  return len;
}

/*
** liolib's g_read: the formats from stack index `first` on, for the file
** whose stream is p and whose userdata is at `file` (anchored there);
** `closed` is the error raised if another thread closes it meanwhile.
*/
static int g_read(lua_State *L, LStream *p, int file, int first,
                  const char *closed) {
  int nargs = lua_gettop(L) - 1;
  /* one result per format, and room for the busy record's lookup first
     (lines() calls with a stack just big enough for its formats) */
  luaL_checkstack(L, nargs + LUA_MINSTACK, "too many arguments");
  reader r = { L, p, p->f, reader_busy(L, p, file), closed, false, false };
  int n, success;
  if (nargs == 0) {
    success = read_line(&r, true);
    n = first + 1;
  } else {
    success = 1;
    for (n = first; nargs-- && success; n++) {
      if (lua_type(L, n) == LUA_TNUMBER) {
        lua_Integer l = luaL_checkinteger(L, n);
        luaL_argcheck(L, l >= 0, n, "negative count");
        success = (l == 0) ? test_eof(&r) : read_block(&r, (size_t)l) > 0;
      } else {
        const char *fmt = luaL_checkstring(L, n);
        if (*fmt == '*') fmt++;  /* skip optional '*' (for compatibility) */
        switch (*fmt) {
          case 'n': success = read_number(&r); break;
          case 'l': success = read_line(&r, true); break;
          case 'L': success = read_line(&r, false); break;
          case 'a': read_block(&r, SIZE_MAX); success = 1; break;
          default: return luaL_argerror(L, n, "invalid format");
        }
      }
    }
  }
  if (r.error) return luaL_fileresult(L, 0, NULL);
  if (!success) {
    lua_pop(L, 1);
    luaL_pushfail(L);
  }
  return n - first;
}

/* The open stream at index 1, or liolib's errors. */
static LStream *tofile(lua_State *L) {
  LStream *p = luaL_checkudata(L, 1, LUA_FILEHANDLE);
  if (p->closef == NULL) luaL_error(L, "attempt to use a closed file");
  return p;
}

/* io.read(...) */
static int io_read(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, IO_INPUT);
  LStream *p = lua_touserdata(L, -1);
  const char *closed = "default input file is closed";
  if (p->closef == NULL) luaL_error(L, "%s", closed);
  return g_read(L, p, lua_gettop(L), 1, closed);
}

/* file:read(...) */
static int f_read(lua_State *L) {
  return g_read(L, tofile(L), 1, 2, "attempt to use a closed file");
}

/* ---- lines ---- */

/* liolib's aux_close: marks the stream at index 1 closed, then closes it. */
static int aux_close(lua_State *L, LStream *p) {
  lua_CFunction cf = p->closef;
  p->closef = NULL;
  return cf(L);
}

/*
** The iterator of lines(): upvalues file, n, toclose, formats 1..n. At the
** end of the file, lines(name) closes the file, unless another thread
** closed it, or began to, while this one read without the GIL: that close
** (which may be waiting for this very read) closes it, and the loop just
** ends here.
*/
static int io_readline(lua_State *L) {
  LStream *p = lua_touserdata(L, lua_upvalueindex(1));
  int n = (int)lua_tointeger(L, lua_upvalueindex(2));
  const char *closed = "file is already closed";
  if (p->closef == NULL) return luaL_error(L, "%s", closed);
  lua_settop(L, 1);
  luaL_checkstack(L, n, "too many arguments");
  for (int i = 1; i <= n; i++) lua_pushvalue(L, lua_upvalueindex(3 + i));
  n = g_read(L, p, lua_upvalueindex(1), 2, closed);
  if (lua_toboolean(L, -n)) return n;
  if (n > 1) return luaL_error(L, "%s", lua_tostring(L, -n + 1));
  if (lua_toboolean(L, lua_upvalueindex(3)) && p->closef != NULL) {
    lua_settop(L, 0);
    lua_pushvalue(L, lua_upvalueindex(1));
    aux_close(L, p);
  }
  return 0;
}

static void aux_lines(lua_State *L, int toclose) {
  int n = lua_gettop(L) - 1;
  luaL_argcheck(L, n <= MAXARGLINE, MAXARGLINE + 2, "too many arguments");
  lua_pushvalue(L, 1);
  lua_pushinteger(L, n);
  lua_pushboolean(L, toclose);
  lua_rotate(L, 2, 3);
  lua_pushcclosure(L, io_readline, 3 + n);
}

/* file:lines(...) */
static int f_lines(lua_State *L) {
  tofile(L);
  aux_lines(L, 0);
  return 1;
}

/* liolib's io_fclose: the close function of files io.lines opens. */
static int io_fclose(lua_State *L) {
  LStream *p = luaL_checkudata(L, 1, LUA_FILEHANDLE);
  return luaL_fileresult(L, fclose(p->f) == 0, NULL);
}

/* A closed file handle, made before the OS resource (liolib's newprefile). */
static LStream *newprefile(lua_State *L) {
  LStream *p = lua_newuserdatauv(L, sizeof(LStream), 0);
  p->closef = NULL;
  luaL_setmetatable(L, LUA_FILEHANDLE);
  return p;
}

/* io.lines([filename, ...]) */
static int io_lines(lua_State *L) {
  int toclose;
  if (lua_isnone(L, 1)) lua_pushnil(L);
  if (lua_isnil(L, 1)) {
    lua_getfield(L, LUA_REGISTRYINDEX, IO_INPUT);
    lua_replace(L, 1);
    tofile(L);
    toclose = 0;
  } else {
    const char *filename = luaL_checkstring(L, 1);
    LStream *p = newprefile(L);
    host_gil_release(L);  /* opening a FIFO waits for its writer */
    FILE *f = fopen(filename, "r");
    int saved = errno;
    host_gil_acquire(L);
    p->f = f;
    p->closef = io_fclose;
    if (f == NULL)
      luaL_error(L, "cannot open file '%s' (%s)", filename, strerror(saved));
    lua_replace(L, 1);
    toclose = 1;
  }
  aux_lines(L, toclose);
  if (toclose) {
    lua_pushnil(L);       /* state */
    lua_pushnil(L);       /* control */
    lua_pushvalue(L, 1);  /* the file, to-be-closed */
    return 4;
  }
  return 1;
}

/* ---- processes ---- */

/*
** Waits for a command without the GIL: pclose(f), or system(cmd) when f is
** NULL. Returns its status, with errno as it left it (luaL_execresult
** reads it; 0 unless the wait itself failed).
*/
static int wait_command(lua_State *L, FILE *f, const char *cmd) {
  host_gil_release(L);
  HOST_TRACE_L(L, host_trace_io(L, f != NULL ? "io.popen" : "os.execute", true));
  errno = 0;
  int stat = f != NULL ? pclose(f) : system(cmd);
  int saved = errno;
  HOST_TRACE_L(L, host_trace_io(L, f != NULL ? "io.popen" : "os.execute", false));
  host_gil_acquire(L);
  errno = saved;
  return stat;
}

/* The close function of io.popen's files: waits for the command. */
static int io_pclose(lua_State *L) {
  LStream *p = luaL_checkudata(L, 1, LUA_FILEHANDLE);
  return luaL_execresult(L, wait_command(L, p->f, NULL));
}

/* io.popen(prog [, mode]) */
static int io_popen(lua_State *L) {
  const char *prog = luaL_checkstring(L, 1);
  const char *mode = luaL_optstring(L, 2, "r");
  LStream *p = newprefile(L);
  luaL_argcheck(L, (mode[0] == 'r' || mode[0] == 'w') && mode[1] == '\0', 2,
                "invalid mode");
  lua_getfield(L, LUA_REGISTRYINDEX, POPENED);  /* see host_io_after_fork */
  lua_pushvalue(L, -2);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  host_gil_release(L);
  host_flush_std();  /* not fflush(NULL): a blocked reader holds stdin's lock */
  FILE *f = popen(prog, mode);
  int saved = errno;
  host_gil_acquire(L);
  errno = saved;
  p->f = f;
  p->closef = io_pclose;
  return f == NULL ? luaL_fileresult(L, 0, prog) : 1;
}

/* The close function of a command's file in a forked process: no wait. */
static int io_close_forked(lua_State *L) {
  LStream *p = luaL_checkudata(L, 1, LUA_FILEHANDLE);
  fclose(p->f);
  lua_pushboolean(L, 1);
  return 1;
}

/* The close function of a command's file whose fd could not be swapped. */
static int io_close_lost(lua_State *L) {
  lua_pushboolean(L, 1);
  return 1;
}

/*
** Puts in place of fd (a pipe end) the same end of a new pipe whose other
** end is closed, so that reading it gives end of file and writing it fails
** with EPIPE. False when no pipe can be made.
*/
static bool swap_for_dead_pipe(int fd) {
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) return false;
  int end = (fcntl(fd, F_GETFL) & O_ACCMODE) == O_WRONLY ? pipefd[1] : pipefd[0];
  bool ok = dup2(end, fd) == fd;
  close(pipefd[0]);
  close(pipefd[1]);
  return ok;
}

void host_io_after_fork(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, POPENED) == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      lua_pop(L, 1);
      LStream *p = lua_touserdata(L, -1);
      if (p->closef == NULL || p->f == NULL) continue;  /* closed */
      __fpurge(p->f);  /* what the parent read ahead, or has still to write */
      if (swap_for_dead_pipe(fileno(p->f))) {
        p->closef = io_close_forked;
      } else {  /* fds ran out: the pipe goes, and the FILE is never closed */
        close(fileno(p->f));
        p->closef = io_close_lost;
      }
    }
  }
  lua_pop(L, 1);
}

/* os.execute([command]) */
static int os_execute(lua_State *L) {
  const char *cmd = luaL_optstring(L, 1, NULL);
  int stat = wait_command(L, NULL, cmd);
  if (cmd != NULL) return luaL_execresult(L, stat);
  lua_pushboolean(L, stat);
  return 1;
}

/* ---- installing them ---- */

/* Sets field `name` of the table on top of the stack to f. */
static void set_function(lua_State *L, const char *name, lua_CFunction f) {
  lua_pushcfunction(L, f);
  lua_setfield(L, -2, name);
}

/* Makes registry[key] a table with weak keys. */
static void new_weak_keyed(lua_State *L, const char *key) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, key);
  host_set_weak(L, "k");
  lua_pop(L, 1);
}

void host_wrap_io(lua_State *L) {
  new_weak_keyed(L, BUSY);
  new_weak_keyed(L, POPENED);
  luaL_newmetatable(L, BUSY_TYPE);
  set_function(L, "__gc", busy_gc);
  lua_pop(L, 1);
  if (lua_getglobal(L, "io") == LUA_TTABLE) {
    lua_getfield(L, -1, "stdin");
    LStream *p = luaL_testudata(L, -1, LUA_FILEHANDLE);
    if (p != NULL && p->closef != NULL) {
      lua_pushcfunction(L, p->closef);
      lua_setfield(L, LUA_REGISTRYINDEX, NOCLOSE);
    }
    lua_pop(L, 1);
    set_function(L, "read", io_read);
    set_function(L, "lines", io_lines);
    set_function(L, "popen", io_popen);
  }
  lua_pop(L, 1);
  if (luaL_getmetatable(L, LUA_FILEHANDLE) == LUA_TTABLE) {
    if (lua_getfield(L, -1, "__index") == LUA_TTABLE) {  /* the methods */
      set_function(L, "read", f_read);
      set_function(L, "lines", f_lines);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  if (lua_getglobal(L, "os") == LUA_TTABLE) set_function(L, "execute", os_execute);
  lua_pop(L, 1);
}
