/*
** executor_process.c: futures.ProcessPoolExecutor over fork(), with the
** architecture of CPython's concurrent/futures/process.py:
** - the workers are forked on demand, as in CPython since 3.9: a submit
**   that finds no idle worker wakes the manager thread, which forks one
**   (up to max_workers). Only the manager forks, from its own loop: a
**   submit may run anywhere (a __gc, a hook, deep in C calls), and a child
**   goes on from the point of its fork for good. Each worker talks to the
**   parent over its own socketpair;
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
**   someone asks for them. The manager reads a result with the GIL held
**   and completes its Future once it has let the GIL go (before it polls
**   again): a thread waiting on the Future then wakes to a free GIL, not
**   to sleep again on the GIL the manager holds (see done_t). The frames
**   its pump hands to workers go out then too (see send_t): the GIL is
**   not held across those system calls.
**
** Two objects: the pool the user holds (host.ProcessPoolExecutor) and its
** state (host.ProcessPoolState), which the pool and the manager thread
** both hold. The manager does not hold the pool, so a pool nobody uses is
** collected; its __gc shuts the pool down and the manager reaps the
** workers (CPython's executor is reachable from its threads only weakly).
**
** Each worker slot is a small state machine, changed only with the GIL:
** DEAD -> IDLE (forked) -> BUSY (a task sent) -> IDLE (its result read)
** or RETIRING (its last task under max_tasks_per_child, or the pool ends)
** -> DEAD (reaped). Only an IDLE slot takes work (and a BUSY one, up to
** AHEAD_MAX map chunks sent ahead, after which it stays BUSY until all
** their results are read), so a slot whose process is being reaped (the GIL is released in
** waitpid) is never sent a task. Only the manager forks, retires and
** reaps, but for shutdown, which retires and reaps the IDLE workers of a
** drained pool itself (a slot being reaped is skipped by the other
** thread); submit only moves a slot from IDLE to BUSY.
**
** Frames: parent -> worker [u32 length][payload = encode(fn, args...)];
** worker -> parent [u32 length][u8 kind][payload], kind OK (the values),
** ERROR (the error value and the text of the worker's traceback of the
** task's own frames, or nil) or INIT_FAILED (the same, for the initializer).
** The state's fields are used with the GIL held; the manager releases it
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
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "executor.h"
#include "future.h"
#include "runtime.h"
#include "stdwrap.h"
#include "thread.h"
#include "trace.h"

#define PPOOL_TYPE "host.ProcessPoolExecutor"
#define PSTATE_TYPE "host.ProcessPoolState"
/* registry: the states of the universe's pools (weak keys), whose fds a
** new child closes */
#define POOL_STATES "host.pool_states"
/* registry, in a worker: its socket to the parent, which a process a task
** of it forks closes too */
#define WORKER_FD "host.pool_worker_fd"
#define DEATH_GRACE 2.0  /* seconds a worker has to exit once done or hung up */
/* Map chunks a busy worker may have behind its running one: it goes on
** with them while the caller, not the manager, holds the parent's GIL.
** Past the first, only while their frames stay within AHEAD_BYTES: then
** they fit in the socket's buffer and the manager's send does not block
** on a worker that is itself blocked sending a big result. */
#define AHEAD_MAX 3
#define AHEAD_BYTES (64 * 1024)

enum { FRAME_OK = 0, FRAME_ERROR = 1, FRAME_INIT_FAILED = 2 };

/* What was read from a socket and not used yet: p[start, end). A `fixed`
** p is storage the buffer does not own (a worker's stack array): it is
** copied, never realloc'ed or freed, when the buffer must grow. */
typedef struct inbuf {
  char *p;
  size_t cap, start, end;
  bool fixed;
} inbuf;

#define INBUF_MIN 4096            /* bytes each recv may take at least */
#define INBUF_KEEP (1024 * 1024)  /* a buffer grown past this is freed once used */
#define FRAME_MAX UINT32_MAX      /* a frame's length is 32 bits: the most a payload may have */

typedef enum slot_state { SLOT_DEAD, SLOT_IDLE, SLOT_BUSY, SLOT_RETIRING } slot_state;

/*
** A result read this round, whose future the manager completes after it
** lets the GIL go (complete_done). It owns `payload` and a reference to f
** until then; the future's proxy waits in the state's UV_DONE table, for
** its callbacks. At most 1 + AHEAD_MAX per worker: the manager reads the
** frames of the items a worker has (the running one and those sent ahead).
*/
typedef struct done_t {
  host_future *f;
  bool ok;
  char *payload;
  size_t len;
} done_t;

/*
** A frame the manager's pump queued for worker i, sent once the manager
** has let the GIL go (send_queued): `p` points into the item's payload
** string, which stays anchored in UV_INFLIGHT until the manager itself
** reads that item's result.
*/
typedef struct send_t {
  int i, fd;
  const char *p;
  size_t len;
} send_t;

typedef struct worker_t {
  slot_state state;
  pid_t pid;         /* 0: no process */
  int fd;            /* the parent's end of the socketpair, -1 when closed */
  lua_Integer tasks; /* done by this process */
  int ahead;         /* BUSY, with this many items sent behind the running one */
  size_t ahead_len[AHEAD_MAX];  /* the payload sizes of those items */
  bool sending;      /* a thread sends on fd with the GIL released */
  bool queued;       /* (and sending) frames of the manager wait in sends[] */
  bool reaping;      /* a thread waits for pid with the GIL released */
  int linger;        /* a retired fd that sender still uses (it closes it), or -1 */
  inbuf in;          /* read from fd and not used yet: at most a frame's head */
} worker_t;

/*
** The state of a pool (a userdata of type PSTATE_TYPE). Owned by Lua: the
** pool and the manager's closure anchor it; its __gc frees the wait queue
** and closes what is left open.
*/
typedef struct pstate_t {
  host_object obj;
  host_waitq *q;            /* shutdown waits here for the manager */
  int wake_r, wake_w;       /* wake-up pipe of the manager */
  pid_t owner;              /* the process that made the pool */
  unsigned long manager;    /* the manager thread's ident (0 before it runs) */
  int nworkers;
  lua_Integer max_tasks;    /* per child; 0: no limit */
  host_fifo pending, callq;
  bool shutdown, broken, manager_done;
  bool queueing;            /* the manager's pump runs: dispatch queues in sends[] */
  int nsend;                /* frames in sends[] */
  send_t *sends;            /* (1 + AHEAD_MAX) * nworkers of them, after done[] */
  int ndone;                /* results in done[] */
  done_t *done;             /* (1 + AHEAD_MAX) * nworkers of them, after w[] */
  worker_t w[];
} pstate_t;

/* The pool the user holds; uservalue 1 anchors its state. */
typedef struct ppool_t {
  host_object obj;
  pstate_t *s;
} ppool_t;

/* Uservalues of the state: pending items, the call queue, items in flight
** by worker (worker i's running item at i + 1, the d-th sent ahead at
** d * nworkers + i + 1), info {initializer, initargs, decoder, wait_check,
** broken_msg}, and the proxies of done[]. An item is {future, payload,
** ahead}: `ahead` (a map's chunk) may be sent to a busy worker behind its
** running item, as CPython keeps a call queued per worker, so a worker
** that ends a chunk starts the next without waiting for the manager (and
** the GIL). Plain submits are never sent ahead: a short task would wait
** behind a long one while another worker idles. */
enum { UV_PENDING = 1, UV_CALLQ = 2, UV_INFLIGHT = 3, UV_INFO = 4, UV_DONE = 5 };

/*
** The state of the pool at 1 (raises for a finalized pool, and in a forked
** child, where the pool's pipes and workers belong to the parent).
*/
static pstate_t *check_pool(lua_State *L) {
  ppool_t *p = host_object_check(L, 1, PPOOL_TYPE);
  if (p->s->owner != getpid())
    luaL_error(L, "cannot use a ProcessPoolExecutor inherited from the parent process");
  return p->s;
}

/* ---- plain I/O (no Lua, no GIL needed) ---- */

/*
** Reads buf[*got .. len), adding what it read to *got; blocking unless
** `flags` has MSG_DONTWAIT. False on EOF (errno 0) or error (EAGAIN when
** it would block).
*/
static bool recv_some(int fd, void *buf, size_t len, size_t *got, int flags) {
  char *p = buf;
  while (*got < len) {
    ssize_t n = recv(fd, p + *got, len - *got, flags);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) errno = 0;
    if (n <= 0) return false;
    *got += (size_t)n;
  }
  return true;
}

/*
** Sends what it can of one frame, [u32 len][kind byte unless kind < 0]
** [payload], in one sendmsg (one system call for the usual small frame),
** from byte *done of it on; blocking unless `flags` has MSG_DONTWAIT.
** Adds what was sent to *done; false on error (EAGAIN when it would block).
*/
static bool send_frame_from(int fd, int kind, const char *payload, size_t len, size_t *done,
                            int flags) {
  char head[5];
  uint32_t n = (uint32_t)len;
  memcpy(head, &n, 4);
  head[4] = (char)kind;
  size_t hlen = kind < 0 ? 4 : 5;
  while (*done < hlen + len) {
    struct iovec iov[2];
    int k = 0;
    if (*done < hlen) iov[k++] = (struct iovec){head + *done, hlen - *done};
    size_t off = *done < hlen ? 0 : *done - hlen;
    iov[k++] = (struct iovec){(char *)payload + off, len - off};
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)k};
    ssize_t r = sendmsg(fd, &msg, MSG_NOSIGNAL | flags);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    *done += (size_t)r;
  }
  return true;
}

/* Sends one whole frame (blocking); false on error (EPIPE when the peer died). */
static bool send_frame(int fd, int kind, const char *payload, size_t len) {
  size_t done = 0;
  return send_frame_from(fd, kind, payload, len, &done, 0);
}

/* ---- the worker process ---- */

/*
** Encodes the failure on top (the error value, then its traceback from
** host_pcall_task or nil) as a payload: the error and its remote traceback
** text, the error as its tostring when the codec cannot carry it.
*/
static char *encode_error(lua_State *L, size_t *len) {
  char who[48];
  snprintf(who, sizeof who, "worker process %ld", (long)getpid());
  host_executor_remote_traceback(L, who);
  int err = lua_gettop(L) - 1;
  char *buf;
  if (host_codec_encode(L, err, 2, &buf, len) == LUA_OK) return buf;
  lua_pop(L, 1);                     /* the codec's complaint */
  lua_pushvalue(L, err);
  host_error_tostring(L);            /* the error as a string */
  lua_replace(L, err);
  if (host_codec_encode(L, err, 2, &buf, len) != LUA_OK) lua_error(L);
  return buf;
}

/* Closes *fd in a new child, unless it is -1 or `keep`, and forgets it:
** the number may be reused, and a child of this one must not close it. */
static void close_inherited(int *fd, int keep) {
  if (*fd < 0 || *fd == keep) return;
  close(*fd);
  *fd = -1;
}

/*
** Closes, in a new child, every fd of every process pool of the parent,
** and the parent's own socket when the parent is itself a worker (a task
** made a pool); `keep` is the child's socket.
*/
static void close_pool_fds(lua_State *L, int keep) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, POOL_STATES) == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      pstate_t *s = lua_touserdata(L, -2);
      close_inherited(&s->wake_r, keep);
      close_inherited(&s->wake_w, keep);
      for (int i = 0; i < s->nworkers; i++) {
        close_inherited(&s->w[i].fd, keep);
        close_inherited(&s->w[i].linger, keep);
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  if (lua_getfield(L, LUA_REGISTRYINDEX, WORKER_FD) == LUA_TNUMBER) {
    int fd = (int)lua_tointeger(L, -1);
    close_inherited(&fd, keep);
  }
  lua_pop(L, 1);
}

/*
** Registers the state on top among those whose fds a new child closes
** (see POOL_STATES). Closing each fd as the pool closes it needs no
** bookkeeping then, and a fork changes no Lua table: it runs no code
** that could pass the GIL to another thread in the middle of a fork.
*/
static void register_state(lua_State *L) {
  if (luaL_getsubtable(L, LUA_REGISTRYINDEX, POOL_STATES) == 0) host_set_weak(L, "k");
  lua_pushvalue(L, -2);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

/*
** Makes sure `need` bytes from b->start are read, each recv taking all
** that is there (the header and a small frame's payload in one system
** call); blocking unless `flags` has MSG_DONTWAIT. False on EOF (errno 0),
** error (EAGAIN when it would block) or no memory.
*/
static bool inbuf_fill(int fd, inbuf *b, size_t need, int flags) {
  if (b->end - b->start >= need) return true;
  if (b->cap - b->start < need || b->cap - b->end < INBUF_MIN) {  /* move down, grow */
    if (b->start > 0) memmove(b->p, b->p + b->start, b->end - b->start);
    b->end -= b->start;
    b->start = 0;
    size_t want = need > INBUF_MIN ? need : INBUF_MIN;
    if (b->cap < want) {
      char *p = b->fixed ? malloc(want) : realloc(b->p, want);
      if (p == NULL) return false;
      if (b->fixed) memcpy(p, b->p, b->end);
      b->p = p;
      b->cap = want;
      b->fixed = false;
    }
  }
  while (b->end - b->start < need) {
    ssize_t n = recv(fd, b->p + b->end, b->cap - b->end, flags);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) errno = 0;
    if (n <= 0) return false;
    b->end += (size_t)n;
  }
  return true;
}

/* Marks n bytes used; a big buffer left empty is freed. */
static void inbuf_used(inbuf *b, size_t n) {
  b->start += n;
  if (b->start == b->end && b->cap > INBUF_KEEP) {  /* (never fixed) */
    free(b->p);
    *b = (inbuf){NULL, 0, 0, 0, false};
  }
}

/*
** inbuf_fill for a worker (its state L), blocking: it waits in poll, not
** in recv, and without the GIL, so threads a task started run meanwhile.
** A reader asleep in recv on a Unix socket is also woken whenever the peer
** consumes what the reader sent (its write space grows), so a worker would
** wake for nothing once per result it sent; poll(POLLIN) wakes only for
** data or a hang-up.
*/
static bool worker_fill(lua_State *L, int fd, inbuf *b, size_t need) {
  while (!inbuf_fill(fd, b, need, MSG_DONTWAIT)) {
    if (errno != EAGAIN && errno != EWOULDBLOCK) return false;
    struct pollfd one = {.fd = fd, .events = POLLIN};
    host_gil_release(L);
    while (poll(&one, 1, -1) < 0 && errno == EINTR) {}
    host_gil_acquire(L);
  }
  return true;
}

/*
** get_initializer(info) -> the initializer and its initargs (nothing when
** there is none): reading initargs runs their __len, which may raise.
*/
static int get_initializer(lua_State *L) {
  lua_settop(L, 1);
  int n = host_executor_push_initializer(L, 1);
  return n < 0 ? 0 : n + 1;
}

/*
** The life of a worker process, run protected: worker_main(info, fd,
** max_tasks) closes the parent's other pool fds, lets go of the pipes of
** the parent's io.popen commands (host_io_after_fork), runs the
** initializer, then serves tasks until the parent closes its end or
** max_tasks are done.
** Its input buffer starts on the stack: a first malloc of that size in a
** new child would make glibc consolidate the parent's free small chunks,
** writing to every page they lie on (a copy-on-write fault each).
*/
static int worker_main(lua_State *L) {
  int fd = (int)lua_tointeger(L, 2);
  lua_Integer max_tasks = lua_tointeger(L, 3);
  close_pool_fds(L, fd);
  lua_pushinteger(L, fd);
  lua_setfield(L, LUA_REGISTRYINDEX, WORKER_FD);
  host_io_after_fork(L);
  int top = lua_gettop(L);
  lua_pushcfunction(L, get_initializer);
  lua_pushvalue(L, 1);
  int init = host_pcall_task(L, 1, LUA_MULTRET);
  if (init == LUA_OK && lua_gettop(L) > top)  /* the initializer's own frames alone */
    init = host_pcall_task(L, lua_gettop(L) - top - 1, 0);
  if (init != LUA_OK) {
    size_t len;
    char *buf = encode_error(L, &len);
    send_frame(fd, FRAME_INIT_FAILED, buf, len);
    free(buf);
    host_exit_child(1);
  }
  int base = lua_gettop(L);
  char first[INBUF_MIN];
  inbuf in = {first, sizeof first, 0, 0, true};
  for (lua_Integer done = 0; max_tasks == 0 || done < max_tasks; done++) {
    uint32_t len;
    if (!worker_fill(L, fd, &in, 4)) break;
    memcpy(&len, in.p + in.start, 4);
    if (!worker_fill(L, fd, &in, 4 + (size_t)len)) break;
    int n = 0;
    int status = host_codec_decode(L, in.p + in.start + 4, len, HOST_CODEC_FUNCTIONS, &n);
    inbuf_used(&in, 4 + (size_t)len);
    bool chunk = status == LUA_OK && host_executor_is_chunk(L, base + 1);
    HOST_TRACE_L(L, host_trace_task(L, NULL, "ProcessPool", NULL));
    if (status == LUA_OK) status = host_pcall_task(L, n - 1, LUA_MULTRET);
    else lua_pushnil(L);  /* a payload that does not decode has no traceback */
    HOST_TRACE_L(L, host_trace_task(L, NULL, "ProcessPool", status ? "raised" : "ok"));
    char *out;
    size_t outlen;
    int kind = FRAME_OK;
    if (status != LUA_OK) {
      kind = FRAME_ERROR;
      out = encode_error(L, &outlen);
    } else if (host_executor_encode_results(L, base + 1, chunk, &out, &outlen) != LUA_OK) {
      kind = FRAME_ERROR;  /* an unserializable result fails that future alone */
      lua_pushnil(L);
      out = encode_error(L, &outlen);
    } else if (outlen > FRAME_MAX) {
      free(out);
      kind = FRAME_ERROR;
      lua_pushfstring(L, "cannot send the result back: it takes %I bytes, more than a frame "
                      "to the parent carries (4 GiB)", (lua_Integer)outlen);
      lua_pushnil(L);
      out = encode_error(L, &outlen);
    }
    bool sent = send_frame(fd, kind, out, outlen);
    free(out);
    lua_settop(L, base);
    host_flush_std();  /* not fflush(NULL): a task's thread may block in io.read */
    if (!sent) break;
  }
  if (!in.fixed) free(in.p);  /* (an error that ends the worker leaves it to the process's end) */
  return 0;
}

/*
** Runs in a child just forked for worker slot of the state at sidx, and
** never returns: nothing the child runs may unwind into the parent's Lua
** frames above the fork (it would run the rest of the parent's script), so
** everything runs under lua_pcall and the child ends with host_exit_child.
** The child dies with its parent (a parent-death signal, checked against
** a parent that died before it was set), and starts with an empty signal
** mask and default handlers (the forking thread may block every signal).
*/
static void run_worker(lua_State *L, int sidx, pstate_t *s, int fd) {
  /* Linux sends it when the thread that forked the worker ends: the
  ** manager, which reaps its workers before it ends, so only when the
  ** process dies; SIGKILL ends a stopped worker too */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != s->owner) host_exit_child(1);  /* the parent died already */
  sigset_t none;
  sigemptyset(&none);
  pthread_sigmask(SIG_SETMASK, &none, NULL);
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  signal(SIGPIPE, SIG_IGN);  /* a closed pipe is an error, as in CPython */
  if (!lua_checkstack(L, 4)) host_exit_child(1);
  lua_pushcfunction(L, worker_main);
  lua_getiuservalue(L, sidx, UV_INFO);
  lua_pushinteger(L, fd);
  lua_pushinteger(L, s->max_tasks);
  if (lua_pcall(L, 3, 0, 0) != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "host: a process pool worker failed: %s\n",
            msg != NULL ? msg : "(error object is not a string)");
    host_exit_child(1);
  }
  host_exit_child(0);
}

/*
** Forks worker i (a DEAD slot) of the state at sidx; it becomes IDLE.
** Returns 0 or an errno value. In the child this never returns. Nothing
** here runs Lua code, so the GIL stays with the caller throughout: no
** other thread can take the slot meanwhile.
*/
static int fork_worker(lua_State *L, int sidx, pstate_t *s, int i) {
  int sv[2];
  sidx = lua_absindex(L, sidx);
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
    run_worker(L, sidx, s, sv[1]);
  }
  close(sv[1]);
  worker_t *w = &s->w[i];
  w->state = SLOT_IDLE;
  w->pid = pid;
  w->fd = sv[0];
  w->tasks = 0;
  w->sending = false;
  return 0;
}

/* Workers alive or starting: the slots that are not DEAD. */
static int live_count(pstate_t *s) {
  int n = 0;
  for (int i = 0; i < s->nworkers; i++) n += s->w[i].state != SLOT_DEAD;
  return n;
}

/*
** Forks workers into DEAD slots while the `waiting` items outnumber the
** IDLE workers: workers start on demand, as in CPython since 3.9 (one
** task forks one process, not max_workers). Sets *err to 0, or to the
** errno of a fork that failed.
*/
static void start_wanted(lua_State *L, int sidx, pstate_t *s, size_t waiting, int *err) {
  size_t idle = 0;
  *err = 0;
  for (int i = 0; i < s->nworkers; i++) idle += s->w[i].state == SLOT_IDLE;
  for (int i = 0; i < s->nworkers && waiting > idle && *err == 0; i++) {
    if (s->w[i].state != SLOT_DEAD) continue;
    *err = fork_worker(L, sidx, s, i);
    idle += *err == 0;
  }
}

/*
** True when process pid (a child of this one) is blocked in write: a worker
** flushing its output to a reader slow to read it, which is no hang. Read
** from /proc/<pid>/syscall; false where that cannot be read.
*/
static bool blocked_writing(pid_t pid) {
  char path[64], buf[64];
  snprintf(path, sizeof path, "/proc/%d/syscall", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return false;
  buf[n] = '\0';
  char *end;
  long nr = strtol(buf, &end, 10);  /* "running" when not in a system call */
  return end != buf && (nr == SYS_write || nr == SYS_writev);
}

/*
** Waits for process pid (no GIL) and returns its wait status; kills it
** first when `grace` is 0, else once `grace` seconds have passed (a worker
** whose socket hung up but that runs on: a task closed the socket itself;
** one stuck in a lock that another thread of this process held at the
** fork), so that the manager never hangs here. A worker still writing its
** output then is given more time, grace by grace, as CPython joins its
** workers: a kill would lose that output. The wait sleeps in poll on a
** pidfd, which wakes when the process ends; where pidfd_open is missing
** (Linux before 5.3) it looks again every millisecond.
*/
static int reap(pid_t pid, double grace) {
  int status = 0;
  if (grace == 0) kill(pid, SIGKILL);
  if (grace > 0) {
    int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
    double give_up = host_now() + grace;
    for (;;) {
      pid_t r = waitpid(pid, &status, WNOHANG);
      if (r == pid || (r < 0 && errno != EINTR)) {
        if (pfd >= 0) close(pfd);
        return status;
      }
      double left = give_up - host_now();
      if (r == 0 && left <= 0 && blocked_writing(pid)) {
        give_up = host_now() + grace;
        continue;
      }
      if (r == 0 && left <= 0) break;
      if (r == 0) {
        struct pollfd one = {.fd = pfd, .events = POLLIN};
        int ms = (int)(left * 1000) + 1;
        poll(pfd >= 0 ? &one : NULL, pfd >= 0 ? 1 : 0, pfd >= 0 ? ms : 1);
      }
    }
    if (pfd >= 0) close(pfd);
    kill(pid, SIGKILL);
  }
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
  return status;
}

/*
** Hangs up on worker i: its socket is shut down, so the worker reads EOF
** and ends even when another process holds a copy of this end (a worker
** of a pool of another universe, forked meanwhile), then closed (a
** manager that polls the fd meanwhile finds w->fd changed). A socket that
** a sender still uses is left open: the sender closes it, so its number
** cannot be reused under the sender.
*/
static void hang_up(pstate_t *s, int i) {
  worker_t *w = &s->w[i];
  if (w->fd < 0) return;
  int fd = w->fd;
  w->fd = -1;
  shutdown(fd, SHUT_RDWR);
  if (w->sending) {
    w->sending = false;
    w->linger = fd;
  } else {
    close(fd);
  }
}

/*
** Retires worker i: the slot is RETIRING (never dispatchable) while it is
** hung up on and its process reaped (see reap for `grace`), then DEAD.
** Returns the wait status; 0 at once when another thread reaps it.
*/
static int retire_worker(lua_State *L, pstate_t *s, int i, double grace) {
  int status = 0;
  worker_t *w = &s->w[i];
  if (w->state == SLOT_DEAD || w->reaping) return 0;  /* (another thread reaps it) */
  w->state = SLOT_RETIRING;
  hang_up(s, i);
  free(w->in.p);
  w->in = (inbuf){NULL, 0, 0, 0, false};
  if (w->pid > 0) {
    pid_t pid = w->pid;
    w->reaping = true;
    host_gil_release(L);
    status = reap(pid, grace);
    host_gil_acquire(L);
    w->reaping = false;
    w->pid = 0;
  }
  w->state = SLOT_DEAD;
  return status;
}

/* ---- the pool's queues (GIL held) ---- */

/* Items in flight: one per busy worker. */
static int busy_count(pstate_t *s) {
  int n = 0;
  for (int i = 0; i < s->nworkers; i++) n += s->w[i].state == SLOT_BUSY;
  return n;
}

/* Under lua_pcall (the future, why as light userdata): fails it, BrokenProcessPool. */
static int fail_broken(lua_State *L) {
  host_error_push(L, "BrokenProcessPool", lua_touserdata(L, 2), 0);
  host_future_set_error(L, 1);
  return 0;
}

/*
** Fails the future of the item on top (popped) with BrokenProcessPool, or,
** when memory has run out for that error, as a failure whose error was
** lost, which takes no memory.
*/
static void fail_item(lua_State *L, const char *why) {
  lua_rawgeti(L, -1, 1);
  host_future *f = host_future_of(L, -1);
  host_future_state st = host_future_state_of(f);
  if (st == HOST_FUTURE_PENDING || st == HOST_FUTURE_RUNNING) {
    bool failed = false;
    if (lua_checkstack(L, 3)) {
      lua_pushcfunction(L, fail_broken);
      lua_pushvalue(L, -2);
      lua_pushlightuserdata(L, (void *)why);
      failed = lua_pcall(L, 2, 0, 0) == LUA_OK;
      if (!failed) lua_pop(L, 1);
    }
    if (!failed) host_future_fail_lost(L, -1);  /* allocates nothing */
  }
  lua_pop(L, 2);
}

/* Under lua_pcall (info, why as light userdata): info.broken_msg = why. */
static int set_broken_msg(lua_State *L) {
  lua_pushstring(L, lua_touserdata(L, 2));
  lua_setfield(L, 1, "broken_msg");
  return 0;
}

/*
** Breaks the pool of the state at sidx: every pending, queued and running
** future fails with BrokenProcessPool (`why`), the workers are killed and
** reaped. The state says broken before any callback runs; calling it again
** fails what is left.
*/
static void break_pool(lua_State *L, int sidx, pstate_t *s, const char *why) {
  sidx = lua_absindex(L, sidx);
  s->broken = true;
  lua_pushcfunction(L, set_broken_msg);  /* memory may have run out: see fail_item */
  lua_getiuservalue(L, sidx, UV_INFO);
  lua_pushlightuserdata(L, (void *)why);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) lua_pop(L, 1);
  for (int i = 0; i < s->nworkers; i++) retire_worker(L, s, i, 0);
  for (int i = 0; i < (1 + AHEAD_MAX) * s->nworkers; i++) {  /* running items, then those sent ahead */
    lua_getiuservalue(L, sidx, UV_INFLIGHT);
    lua_rawgeti(L, -1, i + 1);
    lua_pushnil(L);
    lua_rawseti(L, -3, i + 1);
    if (lua_isnil(L, -1)) lua_pop(L, 1);
    else fail_item(L, why);
    lua_pop(L, 1);
  }
  while (host_fifo_pop(L, sidx, UV_CALLQ, &s->callq)) fail_item(L, why);
  lua_pop(L, 1);
  while (host_fifo_pop(L, sidx, UV_PENDING, &s->pending)) fail_item(L, why);
  lua_pop(L, 1);
}

/*
** Sends the item on top (popped) to IDLE worker i, which becomes BUSY, or
** when `ahead` to BUSY worker i behind its running item. A worker that
** died meanwhile is the manager's to find (EOF on its socket), and the
** item then fails with the rest.
*/
static void dispatch(lua_State *L, int sidx, pstate_t *s, int i, bool ahead) {
  lua_getiuservalue(L, sidx, UV_INFLIGHT);
  lua_pushvalue(L, -2);
  worker_t *w = &s->w[i];
  w->ahead = ahead ? w->ahead + 1 : 0;
  lua_rawseti(L, -2, w->ahead * s->nworkers + i + 1);  /* anchored while the GIL is away */
  lua_pop(L, 1);
  HOST_TRACE_L(L, host_trace_dispatch(L, -1, w->pid));
  w->state = SLOT_BUSY;
  lua_rawgeti(L, -1, 2);
  size_t len;
  const char *payload = lua_tolstring(L, -1, &len);
  if (ahead) w->ahead_len[w->ahead - 1] = len;
  int fd = w->fd;
  if (s->queueing) {  /* the manager sends it once the GIL is free (send_queued) */
    w->sending = w->queued = true;
    s->sends[s->nsend++] = (send_t){i, fd, payload, len};
    lua_pop(L, 2);
    return;
  }
  size_t done = 0;
  /* Most frames fit in the socket's buffer at once: then the GIL stays. */
  if (send_frame_from(fd, -1, payload, len, &done, MSG_DONTWAIT) ||
      (errno != EAGAIN && errno != EWOULDBLOCK)) {
    lua_pop(L, 2);
    return;
  }
  w->sending = true;
  host_gil_release(L);
  send_frame_from(fd, -1, payload, len, &done, 0);
  host_gil_acquire(L);
  if (w->linger == fd) {  /* retired meanwhile: the fd is ours to close */
    w->linger = -1;
    close(fd);
  } else if (w->fd == fd) {
    w->sending = false;
  }
  lua_pop(L, 2);
}

/* True when the oldest item of the call queue may be sent ahead to BUSY
** worker i (see AHEAD_BYTES). The manager sends none past AHEAD_BYTES, not
** even the first: its send would block on a worker that is itself blocked
** sending a big result, which only the manager reads (another thread's
** blocking send lets the manager read meanwhile). */
static bool head_goes_ahead(lua_State *L, int sidx, pstate_t *s, int i) {
  if (host_fifo_len(&s->callq) == 0) return false;
  lua_getiuservalue(L, sidx, UV_CALLQ);
  lua_rawgeti(L, -1, s->callq.head);
  bool ahead = lua_rawgeti(L, -1, 3) == LUA_TBOOLEAN;
  lua_rawgeti(L, -2, 2);
  size_t bytes = lua_rawlen(L, -1);
  lua_pop(L, 4);
  worker_t *w = &s->w[i];
  for (int d = 0; d < w->ahead; d++) bytes += w->ahead_len[d];
  return ahead && (bytes <= AHEAD_BYTES || (w->ahead == 0 && s->manager != host_thread_ident()));
}

/* True when BUSY worker i may take an item ahead: it has fewer than
** AHEAD_MAX, no other thread still sends it one (two frames would
** interleave; the manager's own queued frames go out in order), and they
** all fit in its max_tasks_per_child. */
static bool takes_ahead(pstate_t *s, int i) {
  worker_t *w = &s->w[i];
  return w->state == SLOT_BUSY && w->ahead < AHEAD_MAX &&
         (!w->sending || (s->queueing && w->queued)) &&
         (s->max_tasks == 0 || w->tasks + w->ahead + 2 <= s->max_tasks);
}

/*
** Moves pending items into the call queue (at most workers + 1 queued or
** running, not counting those sent ahead; each marked running, so no
** longer cancellable), forks workers for them when `may_fork` (the
** manager's loop), hands queued items to IDLE workers, then items that
** may go ahead to BUSY workers, as long as that frees room.
*/
static void pump(lua_State *L, int sidx, pstate_t *s, bool may_fork) {
  sidx = lua_absindex(L, sidx);
  for (bool again = true; again && !s->broken;) {
    again = false;
    while (!s->broken && busy_count(s) + host_fifo_len(&s->callq) < s->nworkers + 1) {
      if (!host_fifo_pop(L, sidx, UV_PENDING, &s->pending)) {
        lua_pop(L, 1);
        break;
      }
      lua_rawgeti(L, -1, 1);
      bool runs = host_future_set_running(host_future_of(L, -1));
      lua_pop(L, 1);
      if (runs) host_fifo_push(L, sidx, UV_CALLQ, &s->callq);
      else lua_pop(L, 1);  /* cancelled while pending */
    }
    int err = 0;
    if (may_fork) start_wanted(L, sidx, s, host_fifo_len(&s->callq), &err);
    if (err != 0 && live_count(s) == 0) {  /* else the workers there take the work */
      char why[128];
      snprintf(why, sizeof why, "cannot start a worker: %s", strerror(err));
      break_pool(L, sidx, s, why);
    }
    for (int i = 0; i < s->nworkers && !s->broken && host_fifo_len(&s->callq) > 0; i++) {
      if (s->w[i].state != SLOT_IDLE) continue;
      host_fifo_pop(L, sidx, UV_CALLQ, &s->callq);
      dispatch(L, sidx, s, i, false);
    }
    for (int i = 0; i < s->nworkers && !s->broken; i++) {
      if (!takes_ahead(s, i) || !head_goes_ahead(L, sidx, s, i)) continue;
      host_fifo_pop(L, sidx, UV_CALLQ, &s->callq);
      dispatch(L, sidx, s, i, true);
      again = true;
    }
  }
}

/* Sends the frames the manager's pump queued (GIL released). A failed send
** is the manager's to find: the worker died, and EOF on its socket says so. */
static void send_queued(pstate_t *s) {
  for (int k = 0; k < s->nsend; k++) {
    size_t done = 0;
    send_frame_from(s->sends[k].fd, -1, s->sends[k].p, s->sends[k].len, &done, 0);
  }
}

/* Forgets the frames send_queued sent (GIL held again): a socket retired
** meanwhile (see hang_up) is closed here. */
static void sent_queued(pstate_t *s) {
  for (int k = 0; k < s->nsend; k++) {
    worker_t *w = &s->w[s->sends[k].i];
    int fd = s->sends[k].fd;
    if (w->linger == fd) {
      w->linger = -1;
      close(fd);
    } else if (w->fd == fd) {
      w->sending = w->queued = false;
    }
  }
  s->nsend = 0;
}

/*
** Wakes the manager (GIL held), unless it is gone. The write cannot raise
** SIGPIPE (which spawned threads no longer block): the read end is closed
** only with the write end, both under the GIL (close_wake_pipe), and the
** forked workers, which close their copies, never write here.
*/
static void wake_manager(pstate_t *s) {
  char c = 1;
  if (s->wake_w < 0) return;
  while (write(s->wake_w, &c, 1) < 0 && errno == EINTR) {}
}

/* Closes the wake-up pipe (GIL held): the manager is done with it. */
static void close_wake_pipe(pstate_t *s) {
  int fds[2] = {s->wake_r, s->wake_w};
  s->wake_r = s->wake_w = -1;
  for (int i = 0; i < 2; i++) {
    if (fds[i] >= 0) close(fds[i]);
  }
}

/* A message for a worker that died, from its wait status. */
static const char *death_message(lua_State *L, int status) {
  const char *how;
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
    how = lua_pushliteral(L, "closed its connection to the parent and exited with status 0");
  else if (WIFEXITED(status))
    how = lua_pushfstring(L, "exited with status %d", WEXITSTATUS(status));
  else if (WIFSIGNALED(status) && sigabbrev_np(WTERMSIG(status)) != NULL)
    how = lua_pushfstring(L, "was killed by signal %d (SIG%s)", WTERMSIG(status),
                          sigabbrev_np(WTERMSIG(status)));
  else if (WIFSIGNALED(status))
    how = lua_pushfstring(L, "was killed by signal %d", WTERMSIG(status));
  else
    how = lua_pushliteral(L, "ended");
  return lua_pushfstring(L, "a process in the process pool was terminated abruptly "
                         "while the future was running or pending: it %s", how);
}

/*
** Reads worker i's frame and completes its future; handles a worker that
** died, and one that retires (max_tasks_per_child): the slot goes from
** BUSY to RETIRING before the future completes, then it is reaped and
** replaced. Breaks the pool when a worker died or cannot be replaced.
*/
static void take_result(lua_State *L, int sidx, pstate_t *s, int i) {
  int fd = s->w[i].fd;
  inbuf *b = &s->w[i].in;
  char head[5];
  char *payload = NULL;
  uint32_t len = 0;
  size_t got = 0;
  /* poll said it is readable: most frames are all there, and come in one
  ** recv with the GIL held (the buffer takes what there is, up to 4 KiB) */
  bool ok = inbuf_fill(fd, b, 5, MSG_DONTWAIT);
  if (!ok && (errno == EAGAIN || errno == EWOULDBLOCK)) {
    host_gil_release(L);
    ok = inbuf_fill(fd, b, 5, 0);
    host_gil_acquire(L);
  }
  if (ok) {
    memcpy(head, b->p + b->start, 5);
    memcpy(&len, head, 4);
    b->start += 5;
    payload = malloc(len ? len : 1);
    ok = payload != NULL;
  }
  if (ok) {
    got = b->end - b->start < len ? b->end - b->start : len;
    memcpy(payload, b->p + b->start, got);
    b->start += got;
    ok = recv_some(fd, payload, len, &got, MSG_DONTWAIT);
    if (!ok && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      host_gil_release(L);
      ok = recv_some(fd, payload, len, &got, 0);
      host_gil_acquire(L);
    }
  }
  if (!ok) {
    free(payload);
    int status = retire_worker(L, s, i, DEATH_GRACE);
    break_pool(L, sidx, s, death_message(L, status));
    return;
  }
  if (head[4] == FRAME_INIT_FAILED) {
    lua_getiuservalue(L, sidx, UV_INFO);
    lua_getfield(L, -1, "decoder");
    lua_pushlstring(L, payload, len);
    free(payload);
    lua_pushboolean(L, 0);
    if (lua_pcall(L, 2, 1, 0) == LUA_OK) lua_rawgeti(L, -1, 1);  /* the error value */
    /* else the decoder's own complaint says what went wrong: the manager
    ** must not die of it, or no future of the pool would ever complete */
    const char *why = lua_pushfstring(L, "a process initializer failed: %s", host_error_tostring(L));
    break_pool(L, sidx, s, why);
    return;
  }
  worker_t *w = &s->w[i];
  bool ahead = w->ahead > 0;  /* then the first item sent ahead runs now */
  lua_getiuservalue(L, sidx, UV_INFLIGHT);
  lua_rawgeti(L, -1, i + 1);
  for (int d = 1; d <= w->ahead; d++) {  /* the items behind move up by one */
    lua_rawgeti(L, -2, d * s->nworkers + i + 1);
    lua_rawseti(L, -3, (d - 1) * s->nworkers + i + 1);
    if (d > 1) w->ahead_len[d - 2] = w->ahead_len[d - 1];
  }
  lua_pushnil(L);
  lua_rawseti(L, -3, w->ahead * s->nworkers + i + 1);
  if (ahead) w->ahead--;
  /* (takes_ahead keeps all its items within max_tasks: no retiring with one ahead) */
  bool retire = s->max_tasks > 0 && ++w->tasks >= s->max_tasks;
  w->state = ahead ? SLOT_BUSY : retire ? SLOT_RETIRING : SLOT_IDLE;
  if (lua_isnil(L, -1)) {  /* a frame nobody asked for */
    free(payload);
    break_pool(L, sidx, s, "a process in the process pool sent a result it was not asked for");
    return;
  }
  bool more = b->start < b->end && !ahead;  /* the start of another frame, also unasked */
  lua_rawgeti(L, -1, 1);
  host_future *f = host_future_of(L, -1);
  if (!more && !retire && f != NULL) {  /* the usual case: completed once the GIL goes */
    host_future_ref(f);
    s->done[s->ndone++] = (done_t){f, head[4] == FRAME_OK, payload, len};
    lua_getiuservalue(L, sidx, UV_DONE);
    lua_insert(L, -2);
    lua_rawseti(L, -2, s->ndone);
    lua_pop(L, 3);
    return;
  }
  host_future_set_payload(f, head[4] == FRAME_OK, payload, len);
  host_future_run_callbacks(L, -1);  /* protected: a raising callback is reported */
  lua_pop(L, 3);
  if (more) {
    break_pool(L, sidx, s, "a process in the process pool sent a result it was not asked for");
    return;
  }
  /* it exits by itself after its last task; the manager's next pump forks
  ** a new one while queued work is left (after a shutdown too) */
  if (retire) retire_worker(L, s, i, DEATH_GRACE);
}

/*
** Completes the futures of done[] (GIL released: any thread may complete
** a future with a payload). True when one of them has callbacks to run: a
** callback added before the completion is the manager's to run (one added
** after runs at once in the thread that adds it).
*/
static bool complete_done(pstate_t *s) {
  bool callbacks = false;
  for (int k = 0; k < s->ndone; k++) {
    done_t *d = &s->done[k];
    host_future_set_payload(d->f, d->ok, d->payload, d->len);
    callbacks = callbacks || host_future_wants_callbacks(d->f);
    host_future_unref(d->f);
    *d = (done_t){NULL, false, NULL, 0};
  }
  return callbacks;
}

/*
** Forgets done[] once complete_done ran (GIL held), running the callbacks
** of its futures first when `callbacks` (protected: a raising one is
** reported).
*/
static void forget_done(lua_State *L, int sidx, pstate_t *s, bool callbacks) {
  if (s->ndone == 0) return;
  lua_getiuservalue(L, sidx, UV_DONE);
  for (int k = 1; k <= s->ndone; k++) {
    if (callbacks) {
      lua_rawgeti(L, -1, k);
      host_future_run_callbacks(L, -1);
      lua_pop(L, 1);
    }
    lua_pushnil(L);
    lua_rawseti(L, -2, k);
  }
  lua_pop(L, 1);
  s->ndone = 0;
}

/* forget_done under lua_pcall: (the state, whether callbacks are to run). */
static int forget_done_protected(lua_State *L) {
  forget_done(L, 1, lua_touserdata(L, 1), lua_toboolean(L, 2));
  return 0;
}

/* True when the manager has nothing left to do after a shutdown. */
static bool drained(pstate_t *s) {
  return host_fifo_len(&s->pending) == 0 && host_fifo_len(&s->callq) == 0 && busy_count(s) == 0;
}

/* The manager's loop, run protected: manager_loop(state). */
static int manager_loop(lua_State *L) {
  pstate_t *s = lua_touserdata(L, 1);
  struct pollfd *fds = lua_newuserdatauv(L, sizeof *fds * (size_t)(s->nworkers + 1), 0);
  for (;;) {
    s->queueing = true;  /* the frames go out once the GIL is let go, below */
    pump(L, 1, s, true);
    s->queueing = false;
    if (s->broken || (s->shutdown && drained(s))) {
      host_gil_release(L);
      send_queued(s);
      host_gil_acquire(L);
      sent_queued(s);
      break;
    }
    int n = 0;
    fds[n++] = (struct pollfd){.fd = s->wake_r, .events = POLLIN};
    for (int i = 0; i < s->nworkers; i++)
      fds[n++] = (struct pollfd){.fd = s->w[i].fd, .events = POLLIN};
    host_gil_release(L);
    send_queued(s);
    bool callbacks = complete_done(s);
    while (!callbacks && poll(fds, (nfds_t)n, -1) < 0 && errno == EINTR) {}
    host_gil_acquire(L);
    sent_queued(s);
    forget_done(L, 1, s, callbacks);
    if (callbacks) continue;  /* they ran instead of the poll: look again */
    /* The GIL may have come long after poll returned (the caller held it
    ** through a map's submits or its hand-out): when a busy worker was not
    ** seen readable then, look again, so that this turn reads every frame
    ** that has arrived, not one turn (and one more wait for the GIL) each. */
    bool stale = false;
    for (int i = 0; i < s->nworkers; i++)
      stale = stale || (s->w[i].state == SLOT_BUSY && fds[i + 1].revents == 0);
    if (stale)
      while (poll(fds, (nfds_t)n, 0) < 0 && errno == EINTR) {}
    if (fds[0].revents) {
      char buf[64];
      while (read(s->wake_r, buf, sizeof buf) == (ssize_t)sizeof buf) {}
    }
    for (int i = 0; i < s->nworkers && !s->broken; i++) {
      worker_t *w = &s->w[i];
      bool ready = fds[i + 1].revents && w->fd == fds[i + 1].fd;
      while (ready && !s->broken && (w->state == SLOT_IDLE || w->state == SLOT_BUSY)) {
        take_result(L, 1, s, i);
        /* the result of an item sent ahead may be read already: poll would not say */
        ready = w->state == SLOT_BUSY && w->in.start < w->in.end;
      }
    }
  }
  return 0;
}

/* What a pool says when its manager failed and memory ran out to say why. */
#define MANAGER_NOMEM "the process pool's manager failed: not enough memory"

/* Breaks the pool, protected: break_protected(state, why or nil). */
static int break_protected(lua_State *L) {
  const char *why = lua_tostring(L, 2);
  break_pool(L, 1, lua_touserdata(L, 1), why != NULL ? why : MANAGER_NOMEM);
  return 0;
}

/* Protected (the state, the error): info.broken_msg says the manager failed. */
static int note_manager_failure(lua_State *L) {
  lua_pushfstring(L, "the process pool's manager failed: %s", host_error_tostring(L));
  lua_getiuservalue(L, 1, UV_INFO);
  lua_insert(L, -2);
  lua_setfield(L, -2, "broken_msg");
  return 0;
}

/*
** The manager thread's body; upvalue 1 is the pool's state. Whatever ends
** its loop (shutdown, a broken pool, or an error of its own, which breaks
** the pool with that message), it fails what is left, reaps the workers
** and tells shutdown it is done.
*/
static int manager_main(lua_State *L) {
  lua_settop(L, 0);
  lua_pushvalue(L, lua_upvalueindex(1));
  pstate_t *s = lua_touserdata(L, 1);
  s->manager = host_thread_ident();
  lua_pushcfunction(L, manager_loop);
  lua_pushvalue(L, 1);
  int status = host_pcall(L, 1, 0);
  lua_pushcfunction(L, forget_done_protected);  /* results read before the loop ended */
  lua_pushvalue(L, 1);
  lua_pushboolean(L, complete_done(s));
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) lua_pop(L, 1);
  if (status != LUA_OK) {  /* (memory may have run out: each step is protected) */
    s->broken = true;
    lua_pushcfunction(L, note_manager_failure);
    lua_pushvalue(L, 1);
    lua_rotate(L, -3, -1);  /* note_manager_failure, state, error */
    lua_pcall(L, 2, 0, 0);
    lua_settop(L, 1);
  }
  if (s->broken) {  /* fail what came meanwhile */
    lua_pushcfunction(L, break_protected);
    lua_pushvalue(L, 1);
    lua_getiuservalue(L, 1, UV_INFO);
    lua_getfield(L, -1, "broken_msg");
    lua_remove(L, -2);
    lua_pcall(L, 2, 0, 0);
    lua_settop(L, 1);
  }
  for (int i = 0; i < s->nworkers; i++) {  /* EOF ends them, all at once */
    if (s->w[i].state != SLOT_DEAD) s->w[i].state = SLOT_RETIRING;
    hang_up(s, i);
  }
  for (int i = 0; i < s->nworkers; i++) retire_worker(L, s, i, DEATH_GRACE);
  /* Those a shutdown reaps itself are reaped before this thread ends: its
  ** end sends them their parent-death signal, SIGKILL (once its OS thread,
  ** kept for reuse, exits), which would cut their last output short. */
  host_deadline never = host_deadline_in(-1);
  for (int i = 0; i < s->nworkers; i++) {
    while (s->w[i].reaping) {
      host_wait_on(L, "host.ProcessPoolExecutor", "manager: a worker shutdown reaps", s, NULL);
      host_waitq_wait_uninterrupted(L, s->q, &never);
    }
  }
  close_wake_pipe(s);
  s->manager_done = true;
  host_waitq_notify(s->q);
  return 0;
}

/* ---- the Lua API ---- */

/*
** The wait check of the pool's futures (see host_future_set_wait_check;
** upvalue 1: the pool's state): only the manager completes them, so the
** manager thread, where done-callbacks run, cannot wait for one.
*/
static int pstate_wait_check(lua_State *L) {
  pstate_t *s = lua_touserdata(L, lua_upvalueindex(1));
  if (s->manager_done || s->manager != host_thread_ident()) return 0;
  lua_pushliteral(L, "cannot wait for a future of this pool inside its own callback "
                  "(it would never complete)");
  return 1;
}

/*
** Raises what a submit to the pool at 1 (state s) gets once it broke
** (BrokenProcessPool with its reason) or shut down; returns when neither.
*/
static void check_open(lua_State *L, pstate_t *s) {
  if (s->broken) {
    lua_getiuservalue(L, 1, 1);
    lua_getiuservalue(L, -1, UV_INFO);
    lua_getfield(L, -1, "broken_msg");  /* nil: memory ran out as the manager failed */
    const char *why = lua_tostring(L, -1);
    host_error_raise(L, "BrokenProcessPool", "%s", why != NULL ? why : MANAGER_NOMEM);
  }
  if (s->shutdown) luaL_error(L, "cannot schedule new futures after shutdown");
}

/*
** Submits fn(...) (self, fn, args at 1..) as an item that may be sent
** ahead when `ahead`; returns its Future.
*/
static int submit_item(lua_State *L, bool ahead) {
  pstate_t *s = check_pool(L);
  host_check_callable(L, 2);
  check_open(L, s);
  char *buf;
  size_t len;
  if (host_executor_encode_call(L, 2, lua_gettop(L) - 1, &buf, &len) != LUA_OK)
    return lua_error(L);
  if (s->broken || s->shutdown) {
    /* the GIL may have gone in the codec's lua_pcall (the hook) to a thread
    ** that shut the pool down: the manager may have ended since, and an
    ** item queued now would never complete */
    free(buf);
    check_open(L, s);
  }
  if (len > FRAME_MAX) {
    free(buf);
    return luaL_error(L, "cannot submit: the function and its arguments take %I bytes, "
                      "more than a frame to a worker carries (4 GiB)", (lua_Integer)len);
  }
  lua_getiuservalue(L, 1, 1);  /* the state */
  int sidx = lua_gettop(L);
  lua_createtable(L, 3, 0);
  lua_pushlstring(L, buf, len);
  free(buf);
  lua_rawseti(L, -2, 2);
  if (ahead) {
    lua_pushboolean(L, 1);
    lua_rawseti(L, -2, 3);
  }
  host_future_push_new(L);
  HOST_TRACE_L(L, host_trace_submit(L, host_future_of(L, -1), "ProcessPool"));
  lua_getiuservalue(L, sidx, UV_INFO);
  lua_getfield(L, -1, "decoder");
  host_future_set_decoder(L, -3);
  lua_getfield(L, -1, "wait_check");
  host_future_set_wait_check(L, -3);
  lua_pop(L, 1);
  lua_pushvalue(L, -1);
  lua_rawseti(L, -3, 1);
  lua_insert(L, -2);
  host_fifo_push(L, sidx, UV_PENDING, &s->pending);
  /* Hand it to an idle worker now, not through the manager: one wake-up
  ** less. With none idle, the manager forks one if a slot is free. */
  pump(L, sidx, s, false);
  if (host_fifo_len(&s->callq) > 0 && live_count(s) < s->nworkers) wake_manager(s);
  return 1;
}

/* ex:submit(fn, ...) -> Future; the arguments are encoded at once. */
static int ppool_submit(lua_State *L) {
  return submit_item(L, false);
}

/*
** ex:_submit_ahead(fn, ...) -> Future: submit for map's chunks, which a
** busy worker may be sent behind its running item (see UV_INFLIGHT).
*/
static int ppool_submit_ahead(lua_State *L) {
  return submit_item(L, true);
}

/*
** Ends the IDLE workers of a drained pool that shuts down (GIL held), so
** that they exit while the manager wakes up, not after it: each is
** RETIRING and hung up on at once. Returns the number hung up on.
*/
static int end_idle(pstate_t *s) {
  if (!drained(s)) return 0;
  int n = 0;
  for (int i = 0; i < s->nworkers; i++) {
    worker_t *w = &s->w[i];
    if (w->state != SLOT_IDLE || w->fd < 0) continue;
    w->state = SLOT_RETIRING;
    hang_up(s, i);
    n++;
  }
  return n;
}

/* ex:shutdown{wait = true, cancel_futures = false} */
static int ppool_shutdown(lua_State *L) {
  pstate_t *s = check_pool(L);
  bool wait, cancel, interrupt;
  host_executor_shutdown_options(L, 2, &wait, &cancel, &interrupt);
  (void)interrupt;  /* only the interpreter pool can interrupt a task */
  lua_settop(L, 1);
  lua_getiuservalue(L, 1, 1);  /* 2: the state */
  s->shutdown = true;
  if (cancel) {
    while (host_fifo_pop(L, 2, UV_PENDING, &s->pending)) {
      lua_rawgeti(L, -1, 1);
      host_future_cancel(L, -1);
      lua_pop(L, 2);
    }
    lua_pop(L, 1);
  }
  int ended = end_idle(s);
  wake_manager(s);
  if (wait && !s->manager_done && s->manager == host_thread_ident())
    return luaL_error(L, "cannot join current thread (a done-callback runs on the pool's "
                      "manager thread and cannot wait for it)");
  /* a waiting caller reaps the workers it ended itself (as the manager
  ** would, bounded by DEATH_GRACE): no wake-up of the manager between
  ** their exits and its return; the manager skips them */
  for (int i = 0; wait && ended > 0 && i < s->nworkers; i++)
    if (s->w[i].state == SLOT_RETIRING && s->w[i].fd < 0) retire_worker(L, s, i, DEATH_GRACE);
  if (wait && ended > 0) host_waitq_notify(s->q);  /* the manager may wait for them */
  host_deadline never = host_deadline_in(-1);
  while (wait && !s->manager_done) {
    host_wait_on(L, "host.ProcessPoolExecutor", "shutdown: its manager to end", s, NULL);
    if (host_waitq_wait(L, s->q, &never) == HOST_WAIT_INTERRUPTED)
      return host_raise_interrupt(L);
  }
  return 0;
}

/*
** __gc of the pool: nobody can submit any more, so the pool shuts down
** without waiting (queued work still runs, then the manager reaps the
** workers and ends). Nothing in a forked child: the pool is the parent's.
*/
static int ppool_gc(lua_State *L) {
  ppool_t *p = host_object_finalize(L, PPOOL_TYPE);
  if (p == NULL) return 0;
  host_executor_track(L, 1, PPOOL_TYPE, false);
  pstate_t *s = p->s;
  if (s->owner == getpid() && !s->shutdown) {
    s->shutdown = true;
    wake_manager(s);
  }
  return 0;
}

/*
** __gc of the state: the manager has ended (it anchors the state while it
** runs, and reaps every worker before it ends); kills any worker still
** there, closes the wake-up pipe (open when the manager never started) and
** frees the wait queue. In a forked child the fds are the parent's.
*/
static int pstate_gc(lua_State *L) {
  pstate_t *s = host_object_finalize(L, PSTATE_TYPE);
  if (s == NULL) return 0;
  if (s->owner == getpid()) {
    for (int i = 0; i < s->nworkers; i++) retire_worker(L, s, i, 0);
    close_wake_pipe(s);
  }
  host_waitq_unref(s->q);
  s->q = NULL;
  return 0;
}

static int ppool_tostring(lua_State *L) {
  if (host_object_tostring_finalized(L, PPOOL_TYPE)) return 1;
  ppool_t *p = host_object_check(L, 1, PPOOL_TYPE);
  pstate_t *s = p->s;
  lua_pushfstring(L, "host.ProcessPoolExecutor (%d workers%s%s): %p", s->nworkers,
                  s->broken ? ", broken" : "", s->shutdown ? ", shut down" : "", (void *)p);
  return 1;
}

/*
** ex:pids() -> the ids of the worker processes alive now, in slot order
** (for tests and tools). A slot with none is left out: a 0 there once led
** `kill -9 0`, which kills the caller's whole process group.
*/
static int ppool_pids(lua_State *L) {
  ppool_t *p = host_object_check(L, 1, PPOOL_TYPE);
  pstate_t *s = p->s;
  lua_createtable(L, s->nworkers, 0);
  for (int i = 0, n = 0; i < s->nworkers; i++) {
    if (s->w[i].pid <= 0) continue;
    lua_pushinteger(L, s->w[i].pid);
    lua_rawseti(L, -2, ++n);
  }
  return 1;
}

/*
** futures.ProcessPoolExecutor{max_workers =, initializer =, initargs =,
** max_tasks_per_child =}. Returns the pool, or nil, message, errno when
** its wake-up pipe or its manager thread fails. No worker starts yet.
*/
static int ppool_new(lua_State *L) {
  static const char *const known[] = {"max_workers", "initializer", "initargs",
                                      "max_tasks_per_child", NULL};
  lua_Integer n = host_executor_options(L, host_executor_cores(), known);
  if (host_exiting(L)) return luaL_error(L, "cannot start a new pool after interpreter shutdown");
  lua_Integer max_tasks = 0;  /* no limit */
  if (lua_getfield(L, 1, "max_tasks_per_child") != LUA_TNIL) {
    int isint;
    max_tasks = lua_tointegerx(L, -1, &isint);
    if (!isint) host_field_error(L, 1, "max_tasks_per_child", "an integer");
    luaL_argcheck(L, max_tasks >= 1, 1, "'max_tasks_per_child' must be >= 1");
  }
  pstate_t *s = host_object_new(L, sizeof *s + (sizeof(worker_t) + (1 + AHEAD_MAX) * (sizeof(done_t) + sizeof(send_t))) * (size_t)n,
                                 PSTATE_TYPE, 5);
  int sidx = lua_gettop(L);
  s->done = (done_t *)&s->w[n];
  s->sends = (send_t *)&s->done[(1 + AHEAD_MAX) * n];
  s->wake_r = s->wake_w = -1;
  for (int i = 0; i < n; i++) s->w[i].fd = s->w[i].linger = -1;
  s->owner = getpid();
  s->nworkers = (int)n;
  register_state(L);
  s->max_tasks = max_tasks;
  host_fifo_init(&s->pending);
  host_fifo_init(&s->callq);
  s->q = host_waitq_new();
  if (s->q == NULL) return luaL_error(L, "not enough memory");
  static const int tables[] = {UV_PENDING, UV_CALLQ, UV_INFLIGHT, UV_DONE};
  for (int k = 0; k < 4; k++) {
    lua_newtable(L);
    lua_setiuservalue(L, sidx, tables[k]);
  }
  lua_createtable(L, 0, 5);
  lua_pushvalue(L, 2);
  lua_setfield(L, -2, "initializer");
  lua_pushvalue(L, 3);
  lua_setfield(L, -2, "initargs");
  lua_pushcfunction(L, host_executor_decoder);
  lua_setfield(L, -2, "decoder");
  lua_pushvalue(L, sidx);
  lua_pushcclosure(L, pstate_wait_check, 1);
  lua_setfield(L, -2, "wait_check");
  lua_setiuservalue(L, sidx, UV_INFO);
  ppool_t *p = host_object_new(L, sizeof *p, PPOOL_TYPE, 1);
  int idx = lua_gettop(L);
  p->s = s;
  lua_pushvalue(L, sidx);
  lua_setiuservalue(L, idx, 1);
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC | O_NONBLOCK) != 0) return luaL_fileresult(L, 0, "pipe");
  s->wake_r = pipefd[0];
  s->wake_w = pipefd[1];
  lua_pushvalue(L, sidx);
  lua_pushcclosure(L, manager_main, 1);
  int e = host_thread_start(L, "ProcessPoolManager", false, 0);
  if (e != 0) {
    s->broken = s->shutdown = true;  /* no submit reaches it */
    return host_thread_start_failed(L, e);
  }
  lua_pop(L, 1);
  host_executor_track(L, idx, PPOOL_TYPE, true);
  lua_settop(L, idx);
  return 1;
}

static const luaL_Reg ppool_methods[] = {
  {"submit", ppool_submit},
  {"_submit_ahead", ppool_submit_ahead},
  {"shutdown", ppool_shutdown},
  {"pids", ppool_pids},
  {NULL, NULL}
};

static const luaL_Reg pstate_methods[] = {
  {NULL, NULL}
};

static const luaL_Reg pstate_meta[] = {
  {"__gc", pstate_gc},
  {NULL, NULL}
};

void host_open_process_pool(lua_State *L) {
  host_type_define(L, PSTATE_TYPE, pstate_methods, pstate_meta, NULL);
  host_executor_define(L, PPOOL_TYPE, ppool_methods, ppool_gc, ppool_tostring);
  lua_pushcfunction(L, ppool_new);
  lua_setfield(L, -2, "ProcessPoolExecutor");
}
