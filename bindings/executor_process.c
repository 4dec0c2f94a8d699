/*
** executor_process.c: futures.ProcessPoolExecutor over fork(), with the
** architecture of CPython's concurrent/futures/process.py:
** - the workers are forked when the pool is made, before its manager
**   thread exists; each talks to the parent over its own socketpair;
** - submit encodes the task with the codec at once (an unserializable
**   argument raises there, naming its path) and queues it as pending;
** - at most workers + 1 items are taken from pending into the call queue;
**   they are marked running, so they can no longer be cancelled;
** - one manager thread (a host.Thread of the parent) polls a wake-up pipe
**   and every worker's socket, which is also the worker's sentinel: EOF
**   means it died, and then the pool is broken: every pending and running
**   future fails with BrokenProcessPool, finished ones keep their results,
**   later submits raise;
** - results come back as bytes and stay bytes in the Future until
**   someone asks for them.
**
** Frames: parent -> worker [u32 length][payload = encode(fn, args...)];
** worker -> parent [u32 length][u8 kind][payload], kind OK (the values),
** ERROR (one error value, with the worker's traceback) or INIT_FAILED.
** The pool's fields are used with the GIL held; the manager releases it
** around poll, reads and writes, with what it uses anchored.
*/
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "executor.h"
#include "future.h"
#include "runtime.h"

#define PPOOL_TYPE "host.ProcessPoolExecutor"
#define POOL_FDS "host.pool_fds"            /* registry: fds a child must close */

enum { FRAME_OK = 0, FRAME_ERROR = 1, FRAME_INIT_FAILED = 2 };

typedef struct worker_t {
  pid_t pid;         /* 0: no process */
  int fd;            /* the parent's end of the socketpair, -1 when closed */
  bool busy;
  lua_Integer tasks; /* done by this process */
} worker_t;

typedef struct ppool_t {
  host_waitq *q;            /* shutdown waits here for the manager */
  int wake_r, wake_w;       /* wake-up pipe of the manager */
  int nworkers;
  lua_Integer max_tasks;    /* per child; 0: no limit */
  lua_Integer pend_head, pend_tail, callq_head, callq_tail;
  bool shutdown, broken, manager_done;
  worker_t w[];
} ppool_t;

/* Uservalues: pending items, the call queue, items in flight by worker,
** and info {initializer, initargs, decoder, broken_msg}. An item is
** {future, payload}. */
enum { UV_PENDING = 1, UV_CALLQ = 2, UV_INFLIGHT = 3, UV_INFO = 4 };

static ppool_t *check_ppool(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, PPOOL_TYPE);
}

/* ---- plain I/O (no Lua, no GIL needed) ---- */

/* Writes all of buf; false on error (EPIPE when the peer died). */
static bool send_all(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0) {
    ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= (size_t)n;
  }
  return true;
}

/* Reads exactly len bytes; false on EOF or error. */
static bool recv_all(int fd, void *buf, size_t len) {
  char *p = buf;
  while (len > 0) {
    ssize_t n = recv(fd, p, len, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= (size_t)n;
  }
  return true;
}

/* Sends one frame: [u32 len][kind byte unless kind < 0][payload]. */
static bool send_frame(int fd, int kind, const char *payload, size_t len) {
  char head[5];
  uint32_t n = (uint32_t)len;
  memcpy(head, &n, 4);
  head[4] = (char)kind;
  return send_all(fd, head, kind < 0 ? 4 : 5) && send_all(fd, payload, len);
}

/* ---- the worker process ---- */

/* Encodes the error on top as a payload, falling back to its tostring. */
static char *encode_error(lua_State *L, size_t *len) {
  char *buf;
  if (host_codec_encode(L, lua_gettop(L), 1, &buf, len) == LUA_OK) return buf;
  lua_pop(L, 1);                     /* the codec's complaint */
  host_error_tostring(L);            /* the error as a string */
  host_codec_encode(L, lua_gettop(L), 1, &buf, len);
  return buf;
}

/*
** The life of a worker process: run the initializer, then serve tasks
** until the parent closes its end. Never returns.
*/
static void worker_main(lua_State *L, int fd, int info, lua_Integer max_tasks) {
  signal(SIGINT, SIG_DFL);
  signal(SIGPIPE, SIG_IGN);
  lua_getfield(L, info, "initializer");
  if (!lua_isnil(L, -1)) {
    int nargs = 0;
    if (lua_getfield(L, info, "initargs") == LUA_TTABLE) {
      int t = lua_gettop(L);
      nargs = (int)luaL_len(L, t);
      for (int i = 1; i <= nargs; i++) lua_rawgeti(L, t, i);
      lua_remove(L, t);
    } else {
      lua_pop(L, 1);
    }
    if (host_pcall(L, nargs, 0) != LUA_OK) {
      size_t len;
      char *buf = encode_error(L, &len);
      send_frame(fd, FRAME_INIT_FAILED, buf, len);
      free(buf);
      host_exit_child(1);
    }
  } else {
    lua_pop(L, 1);
  }
  int base = lua_gettop(L);
  for (lua_Integer done = 0; max_tasks == 0 || done < max_tasks; done++) {
    uint32_t len;
    if (!recv_all(fd, &len, 4)) break;
    char *in = malloc(len ? len : 1);
    if (in == NULL || !recv_all(fd, in, len)) break;
    int n = 0;
    int status = host_codec_decode(L, in, len, HOST_CODEC_FUNCTIONS, &n);
    free(in);
    if (status == LUA_OK) status = host_pcall(L, n - 1, LUA_MULTRET);
    char *out;
    size_t outlen;
    int kind = FRAME_OK;
    if (status != LUA_OK) {
      kind = FRAME_ERROR;
      out = encode_error(L, &outlen);
    } else if (host_codec_encode(L, base + 1, lua_gettop(L) - base, &out, &outlen) != LUA_OK) {
      kind = FRAME_ERROR;  /* an unserializable result fails that future alone */
      lua_pushfstring(L, "cannot send the result back: %s", lua_tostring(L, -1));
      out = encode_error(L, &outlen);
    }
    bool sent = send_frame(fd, kind, out, outlen);
    free(out);
    lua_settop(L, base);
    fflush(NULL);
    if (!sent) break;
  }
  host_exit_child(0);
}

/* Closes, in a new child, every fd of every process pool of the parent. */
static void close_pool_fds(lua_State *L, int keep) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, POOL_FDS) == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      int fd = (int)lua_tointeger(L, -2);
      if (fd != keep) close(fd);
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
}

/* Notes fd as one a forked child must close (or forgets it). */
static void track_fd(lua_State *L, int fd, bool add) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, POOL_FDS);
  lua_pushinteger(L, fd);
  if (add) lua_pushboolean(L, 1);
  else lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

/*
** Forks worker i of the pool at idx. Returns 0 or an errno value. In the
** child this never returns.
*/
static int fork_worker(lua_State *L, int idx, ppool_t *p, int i) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return errno;
  pid_t pid = host_fork(L);
  if (pid < 0) {
    int e = errno;
    close(sv[0]);
    close(sv[1]);
    return e;
  }
  if (pid == 0) {
    close(sv[0]);
    close_pool_fds(L, sv[1]);
    lua_getiuservalue(L, idx, UV_INFO);
    worker_main(L, sv[1], lua_gettop(L), p->max_tasks);
  }
  close(sv[1]);
  p->w[i].pid = pid;
  p->w[i].fd = sv[0];
  p->w[i].busy = false;
  p->w[i].tasks = 0;
  track_fd(L, sv[0], true);
  return 0;
}

/* Closes worker i's socket and reaps its process; returns its wait status. */
static int retire_worker(lua_State *L, ppool_t *p, int i, bool kill_it) {
  int status = 0;
  if (p->w[i].fd >= 0) {
    track_fd(L, p->w[i].fd, false);
    close(p->w[i].fd);
    p->w[i].fd = -1;
  }
  if (p->w[i].pid > 0) {
    if (kill_it) kill(p->w[i].pid, SIGKILL);
    host_gil_release(L);
    while (waitpid(p->w[i].pid, &status, 0) < 0 && errno == EINTR) {}
    host_gil_acquire(L);
    p->w[i].pid = 0;
  }
  p->w[i].busy = false;
  return status;
}

/* ---- the pool's queues (GIL held) ---- */

/* Appends the value on top (popped) to the FIFO in uservalue uv. */
static void fifo_push(lua_State *L, int idx, int uv, lua_Integer *tail) {
  lua_getiuservalue(L, idx, uv);
  lua_insert(L, -2);
  lua_rawseti(L, -2, (*tail)++);
  lua_pop(L, 1);
}

/* Pushes and removes the head of the FIFO in uservalue uv (nil if empty). */
static void fifo_pop(lua_State *L, int idx, int uv, lua_Integer *head, lua_Integer *tail) {
  if (*head == *tail) {
    lua_pushnil(L);
    return;
  }
  lua_getiuservalue(L, idx, uv);
  lua_rawgeti(L, -1, *head);
  lua_pushnil(L);
  lua_rawseti(L, -3, (*head)++);
  lua_remove(L, -2);
  if (*head == *tail) *head = *tail = 1;
}

/* Items in flight: one per busy worker. */
static int busy_count(ppool_t *p) {
  int n = 0;
  for (int i = 0; i < p->nworkers; i++) n += p->w[i].busy;
  return n;
}

/* Fails the future of the item on top (popped) with BrokenProcessPool. */
static void fail_item(lua_State *L, const char *why) {
  lua_rawgeti(L, -1, 1);
  host_future *f = host_future_check(L, -1);
  host_future_state s = host_future_state_of(f);
  if (s == HOST_FUTURE_PENDING || s == HOST_FUTURE_RUNNING) {
    host_error_push(L, "BrokenProcessPool", why, 0);
    host_future_set_error(L, -2);
  }
  lua_pop(L, 2);
}

/*
** Breaks the pool: every pending, queued and running future fails with
** BrokenProcessPool (`why`), the workers are killed and reaped.
*/
static void break_pool(lua_State *L, int idx, ppool_t *p, const char *why) {
  idx = lua_absindex(L, idx);
  p->broken = true;
  lua_getiuservalue(L, idx, UV_INFO);
  lua_pushstring(L, why);
  lua_setfield(L, -2, "broken_msg");
  lua_pop(L, 1);
  for (int i = 0; i < p->nworkers; i++) {
    lua_getiuservalue(L, idx, UV_INFLIGHT);
    lua_rawgeti(L, -1, i + 1);
    lua_pushnil(L);
    lua_rawseti(L, -3, i + 1);
    if (lua_isnil(L, -1)) lua_pop(L, 1);
    else fail_item(L, why);
    lua_pop(L, 1);
    retire_worker(L, p, i, true);
  }
  for (;;) {
    fifo_pop(L, idx, UV_CALLQ, &p->callq_head, &p->callq_tail);
    if (lua_isnil(L, -1)) break;
    fail_item(L, why);
  }
  lua_pop(L, 1);
  for (;;) {
    fifo_pop(L, idx, UV_PENDING, &p->pend_head, &p->pend_tail);
    if (lua_isnil(L, -1)) break;
    fail_item(L, why);
  }
  lua_pop(L, 1);
}

/* Sends the item on top (popped) to idle worker i; false if it died. */
static bool dispatch(lua_State *L, int idx, ppool_t *p, int i) {
  lua_getiuservalue(L, idx, UV_INFLIGHT);
  lua_pushvalue(L, -2);
  lua_rawseti(L, -2, i + 1);  /* anchored while the GIL is away */
  lua_pop(L, 1);
  p->w[i].busy = true;
  lua_rawgeti(L, -1, 2);
  size_t len;
  const char *payload = lua_tolstring(L, -1, &len);
  int fd = p->w[i].fd;
  host_gil_release(L);
  bool ok = send_frame(fd, -1, payload, len);
  host_gil_acquire(L);
  lua_pop(L, 2);
  return ok;
}

/*
** Moves pending items into the call queue (at most workers + 1 queued or
** running; each marked running, so no longer cancellable) and hands
** queued items to idle workers. Returns false if a worker died.
*/
static bool pump(lua_State *L, int idx, ppool_t *p) {
  while (!p->broken && busy_count(p) + (p->callq_tail - p->callq_head) < p->nworkers + 1) {
    fifo_pop(L, idx, UV_PENDING, &p->pend_head, &p->pend_tail);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      break;
    }
    lua_rawgeti(L, -1, 1);
    bool runs = host_future_set_running(host_future_check(L, -1));
    lua_pop(L, 1);
    if (runs) fifo_push(L, idx, UV_CALLQ, &p->callq_tail);
    else lua_pop(L, 1);  /* cancelled while pending */
  }
  for (int i = 0; i < p->nworkers && !p->broken; i++) {
    if (p->w[i].busy || p->w[i].pid == 0) continue;
    fifo_pop(L, idx, UV_CALLQ, &p->callq_head, &p->callq_tail);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      break;
    }
    if (!dispatch(L, idx, p, i)) return false;
  }
  return true;
}

/* Wakes the manager (GIL held), unless it is gone. */
static void wake_manager(ppool_t *p) {
  char c = 1;
  if (p->wake_w < 0) return;
  while (write(p->wake_w, &c, 1) < 0 && errno == EINTR) {}
}

/* Closes the wake-up pipe (GIL held): the manager is done with it. */
static void close_wake_pipe(lua_State *L, ppool_t *p) {
  int fds[2] = {p->wake_r, p->wake_w};
  for (int i = 0; i < 2; i++) {
    if (fds[i] < 0) continue;
    track_fd(L, fds[i], false);
    close(fds[i]);
  }
  p->wake_r = p->wake_w = -1;
}

/* A message for a worker that died, from its wait status. */
static const char *death_message(lua_State *L, int status) {
  const char *how;
  if (WIFEXITED(status))
    how = lua_pushfstring(L, "exited with status %d (a task called os.exit?)", WEXITSTATUS(status));
  else if (WIFSIGNALED(status))
    how = lua_pushfstring(L, "was killed by signal %d", WTERMSIG(status));
  else
    how = lua_pushliteral(L, "ended");
  return lua_pushfstring(L, "a process in the process pool was terminated abruptly "
                         "while the future was running or pending: it %s", how);
}

/*
** Reads worker i's frame and completes its future; handles a worker that
** died or retired (max_tasks_per_child). Returns false if the pool broke.
*/
static bool take_result(lua_State *L, int idx, ppool_t *p, int i) {
  int fd = p->w[i].fd;
  char head[5];
  char *payload = NULL;
  uint32_t len = 0;
  host_gil_release(L);
  bool ok = recv_all(fd, head, 5);
  if (ok) {
    memcpy(&len, head, 4);
    payload = malloc(len ? len : 1);
    ok = payload != NULL && recv_all(fd, payload, len);
  }
  host_gil_acquire(L);
  if (!ok) {
    free(payload);
    int status = retire_worker(L, p, i, false);
    break_pool(L, idx, p, death_message(L, status));
    return false;
  }
  if (head[4] == FRAME_INIT_FAILED) {
    lua_getiuservalue(L, idx, UV_INFO);
    lua_getfield(L, -1, "decoder");
    lua_pushlstring(L, payload, len);
    free(payload);
    lua_pushboolean(L, 0);
    if (lua_pcall(L, 2, 1, 0) == LUA_OK) lua_rawgeti(L, -1, 1);  /* the error value */
    /* else the decoder's own complaint says what went wrong: the manager
    ** must not die of it, or no future of the pool would ever complete */
    const char *why = lua_pushfstring(L, "a process initializer failed: %s", host_error_tostring(L));
    break_pool(L, idx, p, why);
    return false;
  }
  lua_getiuservalue(L, idx, UV_INFLIGHT);
  lua_rawgeti(L, -1, i + 1);
  lua_pushnil(L);
  lua_rawseti(L, -3, i + 1);
  lua_rawgeti(L, -1, 1);
  host_future_set_payload(host_future_check(L, -1), head[4] == FRAME_OK, payload, len);
  host_future_run_callbacks(L, -1);
  lua_pop(L, 3);
  p->w[i].busy = false;
  if (p->max_tasks > 0 && ++p->w[i].tasks >= p->max_tasks) {
    retire_worker(L, p, i, false);  /* it exits by itself after its last task */
    if (!p->shutdown) {
      int e = fork_worker(L, idx, p, i);
      if (e != 0) {
        break_pool(L, idx, p, lua_pushfstring(L, "cannot replace a worker: %s", strerror(e)));
        return false;
      }
    }
  }
  return true;
}

/* True when the manager has nothing left to do after a shutdown. */
static bool drained(ppool_t *p) {
  return p->pend_head == p->pend_tail && p->callq_head == p->callq_tail && busy_count(p) == 0;
}

/* The manager thread's body; upvalue 1 is the pool. */
static int manager_main(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(1));
  int idx = lua_gettop(L);
  ppool_t *p = check_ppool(L, idx);
  struct pollfd *fds = lua_newuserdatauv(L, sizeof *fds * (size_t)(p->nworkers + 1), 0);
  while (!p->broken && pump(L, idx, p) && !(p->shutdown && drained(p))) {
    int n = 0;
    fds[n++] = (struct pollfd){.fd = p->wake_r, .events = POLLIN};
    for (int i = 0; i < p->nworkers; i++)
      fds[n++] = (struct pollfd){.fd = p->w[i].fd, .events = POLLIN};
    host_gil_release(L);
    while (poll(fds, (nfds_t)n, -1) < 0 && errno == EINTR) {}
    host_gil_acquire(L);
    if (fds[0].revents) {
      char buf[64];
      while (read(p->wake_r, buf, sizeof buf) == (ssize_t)sizeof buf) {}
    }
    for (int i = 0; i < p->nworkers && !p->broken; i++) {
      if (fds[i + 1].revents && p->w[i].fd == fds[i + 1].fd) take_result(L, idx, p, i);
    }
  }
  if (p->broken) {
    lua_getiuservalue(L, idx, UV_INFO);
    lua_getfield(L, -1, "broken_msg");
    break_pool(L, idx, p, lua_tostring(L, -1));  /* what was submitted meanwhile */
  }
  for (int i = 0; i < p->nworkers; i++) retire_worker(L, p, i, false);
  close_wake_pipe(L, p);
  p->manager_done = true;
  host_waitq_notify(p->q);
  return 0;
}

/* ---- the Lua API ---- */

/* ex:submit(fn, ...) -> Future; the arguments are encoded at once. */
static int ppool_submit(lua_State *L) {
  ppool_t *p = check_ppool(L, 1);
  luaL_checkany(L, 2);
  if (p->broken) {
    lua_getiuservalue(L, 1, UV_INFO);
    lua_getfield(L, -1, "broken_msg");
    return host_error_raise(L, "BrokenProcessPool", "%s", lua_tostring(L, -1));
  }
  if (p->shutdown) return luaL_error(L, "cannot schedule new futures after shutdown");
  char *buf;
  size_t len;
  if (host_codec_encode(L, 2, lua_gettop(L) - 1, &buf, &len) != LUA_OK)
    return luaL_error(L, "cannot submit: %s", lua_tostring(L, -1));
  lua_createtable(L, 2, 0);
  lua_pushlstring(L, buf, len);
  free(buf);
  lua_rawseti(L, -2, 2);
  host_future_push_new(L);
  lua_getiuservalue(L, 1, UV_INFO);
  lua_getfield(L, -1, "decoder");
  host_future_set_decoder(L, -3);
  lua_pop(L, 1);
  lua_pushvalue(L, -1);
  lua_rawseti(L, -3, 1);
  lua_insert(L, -2);
  fifo_push(L, 1, UV_PENDING, &p->pend_tail);
  /* Hand it to an idle worker now, not through the manager: one wake-up
  ** less. A worker that died meanwhile is the manager's to find (EOF). */
  if (!pump(L, 1, p)) wake_manager(p);
  return 1;
}

/* ex:shutdown{wait = true, cancel_futures = false} */
static int ppool_shutdown(lua_State *L) {
  ppool_t *p = check_ppool(L, 1);
  bool wait, cancel, interrupt;
  host_executor_shutdown_options(L, 2, &wait, &cancel, &interrupt);
  (void)interrupt;  /* only the interpreter pool can interrupt a task */
  p->shutdown = true;
  if (cancel) {
    for (;;) {
      fifo_pop(L, 1, UV_PENDING, &p->pend_head, &p->pend_tail);
      if (lua_isnil(L, -1)) break;
      lua_rawgeti(L, -1, 1);
      host_future_cancel(L, -1);
      lua_pop(L, 2);
    }
    lua_pop(L, 1);
  }
  wake_manager(p);
  host_deadline never = host_deadline_in(-1);
  while (wait && !p->manager_done) {
    if (host_waitq_wait(L, p->q, &never) == HOST_WAIT_INTERRUPTED)
      return host_raise_interrupt(L);
  }
  return 0;
}

static int ppool_gc(lua_State *L) {
  ppool_t *p = check_ppool(L, 1);
  host_executor_track(L, 1, PPOOL_TYPE, false);
  host_waitq_unref(p->q);
  p->q = NULL;
  close_wake_pipe(L, p);
  return 0;
}

static int ppool_tostring(lua_State *L) {
  ppool_t *p = check_ppool(L, 1);
  lua_pushfstring(L, "host.ProcessPoolExecutor (%d workers%s%s): %p", p->nworkers,
                  p->broken ? ", broken" : "", p->shutdown ? ", shut down" : "", (void *)p);
  return 1;
}

/* ex:pids() -> the worker processes' ids (for tests and tools). */
static int ppool_pids(lua_State *L) {
  ppool_t *p = check_ppool(L, 1);
  lua_createtable(L, p->nworkers, 0);
  for (int i = 0; i < p->nworkers; i++) {
    lua_pushinteger(L, p->w[i].pid);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/*
** futures.ProcessPoolExecutor{max_workers =, initializer =, initargs =,
** max_tasks_per_child =}. Returns the pool, or nil, message, errno when
** fork or a socket fails.
*/
static int ppool_new(lua_State *L) {
  lua_Integer n = host_executor_options(L, host_executor_cores());
  lua_getfield(L, 1, "max_tasks_per_child");
  lua_Integer max_tasks = luaL_optinteger(L, -1, 0);
  luaL_argcheck(L, max_tasks >= 0, 1, "max_tasks_per_child must be positive");
  ppool_t *p = lua_newuserdatauv(L, sizeof *p + sizeof(worker_t) * (size_t)n, 4);
  memset(p, 0, sizeof *p + sizeof(worker_t) * (size_t)n);
  p->wake_r = p->wake_w = -1;
  for (int i = 0; i < n; i++) p->w[i].fd = -1;
  luaL_setmetatable(L, PPOOL_TYPE);
  int idx = lua_gettop(L);
  p->q = host_waitq_new();
  if (p->q == NULL) return luaL_error(L, "not enough memory");
  p->nworkers = (int)n;
  p->max_tasks = max_tasks;
  p->pend_head = p->pend_tail = p->callq_head = p->callq_tail = 1;
  for (int uv = UV_PENDING; uv <= UV_INFLIGHT; uv++) {
    lua_newtable(L);
    lua_setiuservalue(L, idx, uv);
  }
  lua_createtable(L, 0, 4);
  lua_pushvalue(L, 2);
  lua_setfield(L, -2, "initializer");
  lua_pushvalue(L, 3);
  lua_setfield(L, -2, "initargs");
  lua_pushcfunction(L, host_executor_decoder);
  lua_setfield(L, -2, "decoder");
  lua_setiuservalue(L, idx, UV_INFO);
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC | O_NONBLOCK) != 0) return luaL_fileresult(L, 0, "pipe");
  p->wake_r = pipefd[0];
  p->wake_w = pipefd[1];
  track_fd(L, p->wake_r, true);
  track_fd(L, p->wake_w, true);
  for (int i = 0; i < n; i++) {  /* every worker before the manager thread */
    int e = fork_worker(L, idx, p, i);
    if (e != 0) {
      for (int j = 0; j < i; j++) retire_worker(L, p, j, true);
      p->broken = true;
      errno = e;
      return luaL_fileresult(L, 0, "fork");
    }
  }
  host_executor_start(L, idx, PPOOL_TYPE, manager_main, "ProcessPoolManager");
  return 1;
}

static const luaL_Reg ppool_methods[] = {
  {"submit", ppool_submit},
  {"shutdown", ppool_shutdown},
  {"pids", ppool_pids},
  {NULL, NULL}
};

void host_open_process_pool(lua_State *L) {
  host_executor_define(L, PPOOL_TYPE, ppool_methods, ppool_gc, ppool_tostring);
  lua_pushcfunction(L, ppool_new);
  lua_setfield(L, -2, "ProcessPoolExecutor");
}
