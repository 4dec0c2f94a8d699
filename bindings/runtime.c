/*
** runtime.c: the universe. One lua_State made by host_newstate, the OS
** threads that run Lua code in it (spawn, fork), interrupts (Ctrl-C, a
** pool's interrupt) and the wait queues that let blocking calls release
** the GIL. The GIL itself and preemption are in gil.c.
**
** Waits keep a record of what each thread waits for (host_wait_on): the
** dumps print it, and the deadlock detector counts the threads blocked
** without a deadline; when all are, no thread can wake another, and the
** main thread raises a DeadlockError. The dump watcher is a C thread that
** takes the GIL to print the dump on request (SIGQUIT) or after a delay.
**
** Ownership: the universe owns every host_tstate of its spawned threads
** and every worker (an OS thread that runs them, cached while idle);
** host_close joins the workers and frees the universe unless a daemon
** thread still runs (then the universe stays allocated for it to park on).
*/
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "trace.h"
#include "universe.h"

#define MAIN_WAIT_SLICE 0.05  /* how often a waiting main thread looks for Ctrl-C */

/*
** The records of the universes the calling OS thread runs Lua code in,
** innermost first (linked by `outer`): host_newstate pushes one, host_close
** takes it out. A thread that made a second universe (an embedder's, the
** spec helper's) goes on running the first one's code too, so whatever
** has a lua_State finds its record with member_of, not by the innermost.
*/
_Thread_local host_tstate *host_current_ts = NULL;

static void check_deadlock(host_universe *u, lua_State *L);
static void wait_done(host_tstate *ts);
static void watcher_stop(host_universe *u, host_tstate *ts);
static void worker_call(host_worker *w);
static void push_wait_what(lua_State *L, host_tstate *ts);
static void push_where(lua_State *L, lua_State *co);

#define DEADLOCK_REPORT "host.deadlock_report"  /* registry: the pending DeadlockError's message */

/* ---- small helpers ---- */

void host_cond_init(pthread_cond_t *cv) {
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(cv, &attr);
  pthread_condattr_destroy(&attr);
}

/*
** The deadline that is the earlier of `d` and about `seconds` (a slice)
** from now. "Now" is the coarse clock, a tick behind at most and far
** cheaper to read (a wait takes this on every call): the slice may be a
** tick short, and `d` is compared as it is, without reading the clock.
*/
static host_deadline earlier(const host_deadline *d, double seconds) {
  host_deadline s = {.never = false};
  clock_gettime(CLOCK_MONOTONIC_COARSE, &s.at);
  long ns = (long)(seconds * 1e9);
  s.at.tv_sec += ns / 1000000000L;
  s.at.tv_nsec += ns % 1000000000L;
  if (s.at.tv_nsec >= 1000000000L) {
    s.at.tv_sec += 1;
    s.at.tv_nsec -= 1000000000L;
  }
  if (!d->never && (d->at.tv_sec < s.at.tv_sec ||
                    (d->at.tv_sec == s.at.tv_sec && d->at.tv_nsec <= s.at.tv_nsec)))
    return *d;
  return s;
}

/* ---- the allocator and the universe's identity ---- */

void *host_alloc_lines(size_t size) {
  size = (size + HOST_LINE - 1) / HOST_LINE * HOST_LINE;
  void *p = aligned_alloc(HOST_LINE, size);
  if (p != NULL) memset(p, 0, size);
  return p;
}

/* The allocator of every universe: its ud is the universe itself. */
static void *universe_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  (void)osize;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  return realloc(ptr, nsize);
}

host_universe *host_universe_of(lua_State *L) {
  void *ud = NULL;
  if (lua_getallocf(L, &ud) != universe_alloc) return NULL;
  return ud;
}

bool host_is_main_thread(void) {
  return host_current_ts != NULL && host_current_ts == &host_current_ts->u->main_ts;
}

lua_State *host_thread_state(void) {
  return host_current_ts ? host_current_ts->L : NULL;
}

#define THREAD_KEYS "host.thread_keys"

/*
** Registers `key` (a Lua thread, not running) as the key object of OS
** thread ts, or with key NULL forgets it. The registry's strong reference
** is what anchors a spawned thread's Lua thread while it runs.
*/
static void register_thread_key(lua_State *L, host_tstate *ts, lua_State *key) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, THREAD_KEYS);
  if (key == L) {
    lua_pushthread(L);
  } else if (key != NULL) {
    lua_pushthread(key);
    lua_xmove(key, L, 1);
  } else {
    lua_pushnil(L);
  }
  lua_rawsetp(L, -2, ts);
  lua_pop(L, 1);
}

/* Under lua_pcall: register_thread_key of the main thread (its record at 1). */
static int register_main_key(lua_State *L) {
  register_thread_key(L, lua_touserdata(L, 1), L);
  return 0;
}

void host_push_thread_key(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, THREAD_KEYS);
  lua_rawgetp(L, -1, member_of(L));
  lua_remove(L, -2);
}

unsigned long host_thread_ident(void) {
  return (unsigned long)pthread_self();
}

/* The calling thread's record in universe u, or NULL. */
host_tstate *tstate_in(host_universe *u) {
  host_tstate *ts = host_current_ts;
  while (ts != NULL && ts->u != u) ts = ts->outer;
  return ts;
}

/* The calling thread's record if it runs Lua code in L's universe. */
host_tstate *member_of(lua_State *L) {
  host_universe *u = host_universe_of(L);
  return u != NULL ? tstate_in(u) : NULL;
}

bool host_closing(lua_State *L) {
  host_universe *u = host_universe_of(L);
  return u != NULL && atomic_load(&u->closing);
}

/* ---- universes ---- */

/* Fills a thread record for `L` in universe u. */
static void tstate_init(host_tstate *ts, host_universe *u, lua_State *L) {
  ts->u = u;
  ts->L = L;
  atomic_init(&ts->running, L);
  atomic_init(&ts->holding, false);
  atomic_init(&ts->hand, HAND_NONE);
  atomic_init(&ts->park, 0);
  ts->pthread = pthread_self();
  ts->rng = ((uint64_t)(uintptr_t)ts ^ (uint64_t)(host_now() * 1e9)) | 1;
  ts->policy_seen = 0;
  ts->user_release = USER_HOLDING;
}

/*
** luaL_newstate gives lauxlib's panic and warning functions; the allocator
** is then swapped for ours (same realloc/free) so that its ud finds the
** universe from any lua_State without touching the stack.
*/
lua_State *host_newstate(void) {
  host_universe *u = host_alloc_lines(sizeof *u);
  if (u == NULL) return NULL;
  lua_State *L = luaL_newstate();
  if (L == NULL) {
    free(u);
    return NULL;
  }
  lua_setallocf(L, universe_alloc, u);
  /* Lua leaves the main thread's extra space unset and copies it into
  ** every new thread: zeroed, host.generator's tag test reads defined bytes */
  memset(lua_getextraspace(L), 0, LUA_EXTRASPACE);
  u->main = L;
  gil_init(u);
  pthread_mutex_init(&u->threads_mu, NULL);
  host_cond_init(&u->threads_cv);
  tstate_init(&u->main_ts, u, L);
  u->main_ts.num = u->last_num = 1;
  pthread_mutex_init(&u->later_mu, NULL);
  u->main_ts.outer = host_current_ts;
  host_current_ts = &u->main_ts;
  gil_start(u, &u->main_ts);
  lua_pushcfunction(L, register_main_key);  /* neither push allocates */
  lua_pushlightuserdata(L, &u->main_ts);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {  /* memory ran out: no universe */
    host_close(L);
    return NULL;
  }
  return L;
}

/*
** Frees the records of the spawned threads that have finished and whose
** OS threads are done with them, and joins the workers that have ended
** (threads_mu held; such a worker needs it no more). The GIL is held too,
** so no reader of a record (a dump, a lock's owner) is midway.
*/
static void reap_finished(host_universe *u) {
  host_tstate **p = &u->threads;
  while (*p != NULL) {
    host_tstate *ts = *p;
    if (ts->finished && ts->released) {
      *p = ts->next;
      gil_forget(ts);
      free(ts);
    } else {
      p = &ts->next;
    }
  }
  host_worker **w = &u->workers;
  while (*w != NULL) {
    host_worker *x = *w;
    if (x->exited) {
      *w = x->next;
      pthread_join(x->pthread, NULL);
      pthread_cond_destroy(&x->cv);
      free(x);
    } else {
      w = &x->next;
    }
  }
}

/* Frees what host_newstate made, once no thread can touch it. */
static void universe_free(host_universe *u) {
  host_trace_free(u);
  gil_forget(&u->main_ts);
  gil_destroy(u);
  pthread_mutex_destroy(&u->threads_mu);
  pthread_cond_destroy(&u->threads_cv);
  pthread_mutex_destroy(&u->later_mu);
  free(u);
}

/*
** Waits (GIL released) until no non-daemon thread runs. Returns false when
** the main thread was interrupted meanwhile; the GIL is held again on return.
*/
static bool wait_nondaemon(host_universe *u, host_tstate *ts) {
  bool ok = true, deadlocked = false;
  pthread_mutex_lock(&u->threads_mu);
  if (u->nondaemon > 0) {
    pthread_mutex_unlock(&u->threads_mu);
    ts->wait_what = "the non-daemon threads to end (at exit)";
    ts->wait_kind = W_BLOCKED;  /* only those threads can end it */
    u->nblocked++;
    u->exit_wait = true;
    check_deadlock(u, u->main);
    gil_give(u, ts);
    pthread_mutex_lock(&u->threads_mu);
    while (u->nondaemon > 0) {
      deadlocked = atomic_load(&u->deadlock);
      if (atomic_load(&u->interrupted) || deadlocked) {
        ok = false;
        break;
      }
      host_deadline d = host_deadline_in(MAIN_WAIT_SLICE);
      pthread_cond_timedwait(&u->threads_cv, &u->threads_mu, &d.at);
    }
    pthread_mutex_unlock(&u->threads_mu);
    gil_take(u, ts);
    u->exit_wait = false;
    u->nblocked--;
    wait_done(ts);
    if (!ok && !deadlocked) {  /* Ctrl-C: say what holds exit up */
      fputs("host: interrupted while waiting for non-daemon threads at exit:\n", stderr);
      host_dump_tracebacks(u->main, stderr);
    }
  } else {
    pthread_mutex_unlock(&u->threads_mu);
  }
  return ok;
}

#define ATEXIT "host.atexit"

void host_atexit(lua_State *L) {
  luaL_checktype(L, -1, LUA_TFUNCTION);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, ATEXIT);
  lua_insert(L, -2);
  lua_rawseti(L, -2, luaL_len(L, -2) + 1);
  lua_pop(L, 1);
}

/* Under lua_pcall: pushes the table of the functions registered with host_atexit. */
static int push_atexit(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, ATEXIT);
  return 1;
}

/*
** Calls the functions registered with host_atexit, last first. Their
** table is looked up protected: memory that runs out then (an interpreter
** pool worker's universe closing short of memory) is said on stderr
** instead of aborting the process (an unprotected error).
*/
static void run_atexit(lua_State *L) {
  lua_pushcfunction(L, push_atexit);
  if (lua_pcall(L, 0, 1, 0) != LUA_OK) {
    fprintf(stderr, "host: cannot run the exit handlers: %s\n", host_error_tostring(L));
    fflush(stderr);
  } else if (lua_istable(L, -1)) {
    for (lua_Integer i = (lua_Integer)lua_rawlen(L, -1); i >= 1; i--) {
      lua_rawgeti(L, -1, i);
      if (host_pcall(L, 0, 0) != LUA_OK) {
        fprintf(stderr, "host: error in exit handler: %s\n", host_error_tostring(L));
        lua_pop(L, 1);
      }
    }
  }
  lua_pop(L, 1);
}

/*
** At close, with threads_mu and the GIL held: tells the idle workers to end
** and waits until every worker has ended but those with a thread still to
** run (a daemon one, parked for good). A worker whose thread has finished
** has given the GIL up already, and ends without it.
*/
static void stop_workers(host_universe *u) {
  u->workers_stop = true;
  for (host_worker *w = u->idle; w != NULL; w = w->next_idle) worker_call(w);
  for (host_worker *w = u->workers; w != NULL; w = w->next) {
    while (!w->exited && w->job == NULL && (w->running == NULL || w->running->finished))
      pthread_cond_wait(&u->threads_cv, &u->threads_mu);
  }
}

/* Takes ts out of the calling thread's list of records. */
static void leave_universe(host_tstate *ts) {
  host_tstate **p = &host_current_ts;
  while (*p != NULL && *p != ts) p = &(*p)->outer;
  if (*p == ts) *p = ts->outer;
}

bool host_close(lua_State *L) {
  host_universe *u = host_universe_of(L);
  host_tstate *ts = &u->main_ts;
  atomic_store(&u->exiting, true);
  run_atexit(L);
  bool joined = wait_nondaemon(u, ts);
  host_trace_at_exit(L);
  if (!joined) {
    host_reap_threads(L);  /* the process is about to exit: no idle thread stays */
    leave_universe(ts);
    return false;  /* interrupted: threads still run, leave the state be */
  }
  watcher_stop(u, ts);
  atomic_store(&u->closing, true);  /* before the state goes: see on_switch_signal */
  gil_disarm(ts);
  lua_close(L);  /* the GIL stays held: parked daemon threads never resume */
  pthread_mutex_lock(&u->threads_mu);
  stop_workers(u);
  reap_finished(u);
  bool daemons_left = u->threads != NULL;
  pthread_mutex_unlock(&u->threads_mu);
  leave_universe(ts);
  if (!daemons_left) universe_free(u);
  return true;
}

void host_interrupt(lua_State *L) {
  host_universe *u = host_universe_of(L);
  if (u == NULL) return;
  atomic_store(&u->interrupted, true);
  pthread_kill(u->main_ts.pthread, SWITCH_SIGNAL);
}

void host_interrupt_sticky(lua_State *L) {
  host_universe *u = host_universe_of(L);
  if (u == NULL) return;
  atomic_store(&u->stopping, true);
  pthread_kill(u->main_ts.pthread, SWITCH_SIGNAL);
}

void host_clear_interrupt(lua_State *L) {
  host_universe *u = host_universe_of(L);
  if (u == NULL) return;
  atomic_store(&u->stopping, false);
  atomic_store(&u->interrupted, false);
}

bool host_exiting(lua_State *L) {
  host_universe *u = host_universe_of(L);
  return u != NULL && atomic_load(&u->exiting);
}

void host_check_interrupt(lua_State *L) {
  host_tstate *ts = member_of(L);
  if (ts != NULL && interrupt_wanted(ts)) host_raise_interrupt(L);
}

int host_raise_interrupt(lua_State *L) {
  host_tstate *ts = member_of(L);
  if (ts != NULL && ts == &ts->u->main_ts && atomic_exchange(&ts->u->deadlock, false)) {
    lua_getfield(L, LUA_REGISTRYINDEX, DEADLOCK_REPORT);
    lua_pushnil(L);
    lua_setfield(L, LUA_REGISTRYINDEX, DEADLOCK_REPORT);
    const char *msg = lua_tostring(L, -1);
    return host_error_raise(L, "DeadlockError", "%s", msg ? msg : "deadlock");
  }
  if (ts != NULL) atomic_store(&ts->u->interrupted, false);
  return luaL_error(L, "interrupted!");
}

/* ---- spawned threads ---- */

/*
** Each spawned thread (host_spawn) has a fresh record, but runs on an OS
** thread (a worker) that may have run others before it: a worker that has
** finished a thread waits, idle, to be given the next one, so a start
** wakes a worker instead of creating an OS thread. At most MAX_IDLE_WORKERS
** wait so per universe (a worker that would be one more ends), and one that
** waits WORKER_IDLE_TIME seconds ends. Ended workers are joined at the next
** start, fork or reap; host_close stops the idle ones and joins every
** worker that does not run a (parked daemon) thread. A thread's ident is
** its worker's pthread_t: unique among running threads, and like CPython's
** (and pthread ids) it may be the ident of a thread that has ended. What
** belongs to one thread lives in its record, its Lua thread and its Thread
** object, never in the worker, so nothing carries over from one thread to
** the next; the worker sets its signal mask again before each.
*/
#define MAX_IDLE_WORKERS 8
#define WORKER_IDLE_TIME 1.0

/*
** The signal mask of spawned threads: no asynchronous signal but the
** switch signal. SIGPIPE is synchronous (sent to the thread that wrote to
** a closed pipe): unblocked, it ends the process as it does for the main
** thread (`host script | head -1` exits 141, like lua5.4), where blocked it
** stayed pending and print went on writing to the closed pipe forever.
*/
static void spawned_mask(sigset_t *set) {
  sigfillset(set);
  sigdelset(set, SWITCH_SIGNAL);
  sigdelset(set, SIGPIPE);
}

/*
** With threads_mu held, once w's thread has finished: w goes on the idle
** stack at once, before it gives the GIL up, so that the next start finds
** it there (it then runs that thread without ever sleeping), unless the
** stack is full or host_close stops the workers.
*/
static void worker_available(host_universe *u, host_worker *w) {
  if (u->workers_stop || u->nidle >= MAX_IDLE_WORKERS) return;
  w->idle = true;
  w->next_idle = u->idle;
  u->idle = w;
  u->nidle++;
}

/* Runs the spawned thread ts on worker w (the calling thread), from GIL to GIL. */
static void run_thread(host_worker *w, host_tstate *ts) {
  host_universe *u = ts->u;
  host_current_ts = ts;
  HOST_TRACE(u, host_trace_run(ts, true));
  ts->switch_timer = w->timer;  /* the timer is the OS thread's: lent to ts */
  ts->has_timer = w->has_timer;
  SPAWNED_TAKE(u, ts);
  ts->body(ts->L, ts->arg);
  register_thread_key(ts->L, ts, NULL);
  pthread_mutex_lock(&u->threads_mu);
  u->running--;
  if (!ts->daemon) u->nondaemon--;
  ts->finished = true;
  worker_available(u, w);
  pthread_cond_broadcast(&u->threads_cv);
  pthread_mutex_unlock(&u->threads_mu);
  check_deadlock(u, ts->L);  /* those left may all be blocked now */
  gil_disarm(ts);  /* the next thread on this OS thread gets no late signal */
  w->timer = ts->switch_timer;  /* taken back: gil_forget(ts) leaves it */
  w->has_timer = ts->has_timer;
  ts->has_timer = false;
  SPAWNED_GIVE(u, ts);
  HOST_TRACE(u, host_trace_run(ts, false));
  host_trace_thread_exit(ts);
  host_current_ts = NULL;  /* before ts is released: a late switch signal looks here */
}

/* With threads_mu held: signals worker w (given a job, or told to end). */
static void worker_call(host_worker *w) {
  atomic_fetch_add(&w->calls, 1);
  pthread_cond_signal(&w->cv);
}

/*
** With threads_mu held, when w has no thread to run: waits, idle, until it
** is given one. False when w is to end instead: it is not on the idle
** stack (which was full), host_close stops it, or it waited
** WORKER_IDLE_TIME. It spins first (a start often follows a join at once),
** with threads_mu unlocked; a call meanwhile moves w->calls.
*/
static bool worker_wait(host_universe *u, host_worker *w) {
  if (!w->idle) return false;
  if (w->job == NULL && !u->workers_stop && !w->stop) {
    unsigned seen = atomic_load(&w->calls);
    pthread_mutex_unlock(&u->threads_mu);
    spin_wait(u, &w->spin, &w->calls, seen, NULL);
    pthread_mutex_lock(&u->threads_mu);
  }
  host_deadline d = host_deadline_in(WORKER_IDLE_TIME);
  while (w->job == NULL && !u->workers_stop && !w->stop) {
    if (pthread_cond_timedwait(&w->cv, &u->threads_mu, &d.at) == ETIMEDOUT) break;
  }
  if (w->job != NULL) return true;  /* host_spawn took it off the stack */
  host_worker **p = &u->idle;
  while (*p != w) p = &(*p)->next_idle;
  *p = w->next_idle;
  u->nidle--;
  w->idle = false;
  return false;
}

/* The start routine of every worker: runs threads until it is to end. */
static void *worker_main(void *arg) {
  host_worker *w = arg;
  host_universe *u = w->u;
  sigset_t mask;
  spawned_mask(&mask);
  pthread_mutex_lock(&u->threads_mu);
  while (w->job != NULL || worker_wait(u, w)) {
    host_tstate *ts = w->job;
    w->job = NULL;
    w->running = ts;
    pthread_mutex_unlock(&u->threads_mu);
    pthread_sigmask(SIG_SETMASK, &mask, NULL);  /* a C binding may have changed it */
    run_thread(w, ts);
    pthread_mutex_lock(&u->threads_mu);
    ts->released = true;
    w->running = NULL;
  }
  if (w->has_timer) timer_delete(w->timer);
  w->has_timer = false;
  w->exited = true;
  pthread_cond_broadcast(&u->threads_cv);  /* host_close may wait for it */
  pthread_mutex_unlock(&u->threads_mu);
  return NULL;
}

/*
** Gives ts to an idle worker, or starts a new one (threads_mu held).
** Returns 0 or the errno of pthread_create; *wake is the idle worker to
** signal once threads_mu is unlocked (woken with it held, the worker
** would preempt us only to block on it), or NULL.
*/
static int give_to_worker(host_universe *u, host_tstate *ts, host_worker **wake) {
  host_worker *w = u->idle;
  *wake = NULL;
  if (w != NULL) {
    u->idle = w->next_idle;
    u->nidle--;
    w->idle = false;
    w->job = ts;
    ts->pthread = w->pthread;
    atomic_fetch_add(&w->calls, 1);  /* ends its spin; its cv is signalled later */
    spin_stop(u, &w->spin);
    *wake = w;
    return 0;
  }
  w = calloc(1, sizeof *w);
  if (w == NULL) return ENOMEM;
  host_cond_init(&w->cv);
  w->u = u;
  w->job = ts;
  sigset_t mask, old;
  spawned_mask(&mask);
  pthread_sigmask(SIG_SETMASK, &mask, &old);
  int rc = pthread_create(&w->pthread, NULL, worker_main, w);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    pthread_cond_destroy(&w->cv);
    free(w);
    return rc;
  }
  ts->pthread = w->pthread;
  w->next = u->workers;
  u->workers = w;
  return 0;
}

int host_spawn(lua_State *L, lua_State *co, bool daemon,
               void (*body)(lua_State *co, void *arg), void *arg,
               unsigned long *ident) {
  host_universe *u = host_universe_of(L);
  host_tstate *ts = host_alloc_lines(sizeof *ts);
  if (ts == NULL) return ENOMEM;
  tstate_init(ts, u, co);
  ts->daemon = daemon;
  ts->body = body;
  ts->arg = arg;
  ts->policy_seen = atomic_load(&u->policy_epoch);  /* inherits co's hook */
  register_thread_key(L, ts, co);  /* anchors co before the GIL can go */
  pthread_mutex_lock(&u->threads_mu);
  reap_finished(u);
  host_worker *wake;
  int rc = give_to_worker(u, ts, &wake);
  if (rc == 0) {
    ts->num = ++u->last_num;
    ts->next = u->threads;
    u->threads = ts;
    u->running++;
    if (!daemon) u->nondaemon++;
    *ident = (unsigned long)ts->pthread;
  }
  pthread_mutex_unlock(&u->threads_mu);
  if (wake != NULL) pthread_cond_signal(&wake->cv);  /* it has a job: nobody frees it */
  if (rc != 0) {
    register_thread_key(L, ts, NULL);
    free(ts);
  }
  return rc;
}

/*
** In a forked child, takes thread o (gone with the fork) off the wait
** queue it slept on, so that a notify never hands the GIL to it. Its
** reference to the queue leaks with its record.
*/
static void forget_waiter(host_tstate *o) {
  if (o->wait_q != NULL) {
    host_tstate **p = &o->wait_q->waiters;
    while (*p != NULL && *p != o) p = &(*p)->wait_next;
    if (*p == o) *p = o->wait_next;
  }
  atomic_store(&o->hand, HAND_NONE);
}

/*
** In a forked child only the forking thread exists. Its universe is made
** single-threaded again: every mutex another thread may have held is
** made anew, the other threads leave the wait queues, the thread list and
** the workers, idle ones included, are dropped (the records leak, as their
** threads are gone), and the GIL is the caller's with nobody in line.
*/
static void reset_after_fork(host_universe *u, host_tstate *ts) {
  gil_after_fork(u, ts);
  for (host_tstate *o = u->threads; o != NULL; o = o->next)
    if (o != ts) forget_waiter(o);
  if (ts != &u->main_ts) forget_waiter(&u->main_ts);
  pthread_mutex_init(&u->threads_mu, NULL);
  host_cond_init(&u->threads_cv);
  u->threads = NULL;
  u->running = 0;
  u->nondaemon = 0;
  u->workers = u->idle = NULL;  /* the idle workers are gone too */
  u->nidle = 0;
  ts->pthread = pthread_self();
  atomic_store(&u->interrupted, false);
  atomic_store(&u->stopping, false);
  u->fork_child = true;
  u->forks++;
  /* the other threads' waits are gone with them; no watcher runs here */
  u->nblocked = 0;
  u->exit_wait = false;
  atomic_store(&u->deadlock, false);
  atomic_store(&u->watching, false);
  pthread_mutex_init(&u->later_mu, NULL);
  u->later_set = false;
}

unsigned long host_fork_count(lua_State *L) {
  host_universe *u = host_universe_of(L);
  return u != NULL ? u->forks : 0;
}

bool host_in_fork_child(lua_State *L) {
  host_universe *u = host_universe_of(L);
  return u != NULL && u->fork_child;
}

/*
** Flushes the standard output streams before fork or exit. Not fflush(NULL):
** it takes every FILE's lock, and a thread blocked in io.read holds
** stdin's until a line arrives. Other files flush when closed.
*/
void host_flush_std(void) {
  fflush(stdout);
  fflush(stderr);
}

void host_exit_child(int status) {
  host_trace_child_exit();
  host_flush_std();
  syscall(SYS_exit_group, status);  /* not _exit: sanitizers hook that too */
  _exit(status);
}

/*
** Forks with the thread list locked, once the workers that ended are
** joined: none can end meanwhile, so the child inherits no OS thread that
** exited unjoined (it could never join one, and ThreadSanitizer would
** report it as leaked when the child exits). The idle workers, alive in
** the parent, do not exist in the child: reset_after_fork forgets them.
*/
pid_t host_fork(lua_State *L) {
  host_universe *u = host_universe_of(L);
  host_flush_std();  /* or the child would write the parent's buffered output again */
  pthread_mutex_lock(&u->threads_mu);
  reap_finished(u);
  pid_t pid = fork();
  pthread_mutex_unlock(&u->threads_mu);  /* in the child, reset_after_fork remakes it */
  if (pid == 0) reset_after_fork(u, tstate_in(u));
  if (pid == 0) host_trace_after_fork(u);
  return pid;
}

/*
** Ends the workers idle now and joins them (threads_mu and the GIL held:
** each has given the GIL up, and none can be given a thread meanwhile).
*/
static void end_idle_workers(host_universe *u) {
  for (host_worker *w = u->idle; w != NULL; w = w->next_idle) {
    w->stop = true;
    worker_call(w);
  }
  for (host_worker *w = u->workers; w != NULL; w = w->next) {
    while (w->stop && !w->exited) pthread_cond_wait(&u->threads_cv, &u->threads_mu);
  }
  reap_finished(u);
}

void host_reap_threads(lua_State *L) {
  host_universe *u = host_universe_of(L);
  pthread_mutex_lock(&u->threads_mu);
  end_idle_workers(u);
  pthread_mutex_unlock(&u->threads_mu);
}

int host_thread_count(lua_State *L) {
  host_universe *u = host_universe_of(L);
  pthread_mutex_lock(&u->threads_mu);
  int n = u->running + 1;
  pthread_mutex_unlock(&u->threads_mu);
  return n;
}

/* ---- wait queues ---- */

host_waitq *host_waitq_new(void) {
  host_waitq *q = malloc(sizeof *q);
  if (q == NULL) return NULL;
  q->refs = 1;
  q->waiters = NULL;
  return q;
}

void host_waitq_unref(host_waitq *q) {
  if (q != NULL && --q->refs == 0) free(q);
}

/*
** The one blocking wait of the runtime. Called with the GIL held and `mu`
** locked (so no signal sent under mu after the caller's check is lost):
** gives the GIL up, waits once on cv, unlocks mu (before the GIL comes back,
** or a signaller holding the GIL and wanting mu would deadlock) and takes
** the GIL again. A watching main thread waits in slices to see Ctrl-C. ts
** is the caller's record in the universe whose GIL it holds.
*/
static host_wait_result cond_wait(host_tstate *ts, pthread_mutex_t *mu, pthread_cond_t *cv,
                                  const host_deadline *d, bool watch) {
  host_universe *u = ts->u;
  bool is_main = watch && ts == &u->main_ts;
  host_wait_result result = HOST_WAIT_WOKEN;
  gil_give(u, ts);
  HOST_TRACE(u, host_trace_wait_begin(ts));
  if (is_main && (interrupt_wanted(ts) || atomic_load(&u->deadlock))) {
    result = HOST_WAIT_INTERRUPTED;
  } else {
    int rc;
    if (is_main) {
      host_deadline slice = earlier(d, MAIN_WAIT_SLICE);
      rc = pthread_cond_timedwait(cv, mu, &slice.at);
    } else if (d->never) {
      rc = pthread_cond_wait(cv, mu);
    } else {
      rc = pthread_cond_timedwait(cv, mu, &d->at);
    }
    if (is_main && (interrupt_wanted(ts) || atomic_load(&u->deadlock)))
      result = HOST_WAIT_INTERRUPTED;
    else if (rc == ETIMEDOUT && host_deadline_passed(d)) result = HOST_WAIT_TIMEOUT;
  }
  pthread_mutex_unlock(mu);
  HOST_TRACE(u, host_trace_wait_end(ts, result == HOST_WAIT_TIMEOUT));
  gil_take(u, ts);
  return result;
}

host_wait_result host_cond_wait(lua_State *L, pthread_mutex_t *mu,
                                pthread_cond_t *cv, const host_deadline *d) {
  host_tstate *ts = member_of(L);
  ts->wait_kind = W_TIMED;  /* a thread outside the universe may end it */
  ts->wait_timed = !d->never;
  host_wait_result result = cond_wait(ts, mu, cv, d, true);
  wait_done(ts);
  return result;
}

/* host_cond's spinner: none, one spinning, or one a signal has claimed. */
enum { SPIN_NONE, SPIN_ON, SPIN_CLAIMED };

/*
** Spins (GIL given up) while c's seq holds `seen`, as the GIL's rule
** allows (spin_wait), unless another waiter of c spins. True when it
** moved, or a host_cond_wake_one claimed the spinner.
*/
static bool cond_spin(host_tstate *ts, host_cond *c, unsigned seen, const host_deadline *d) {
  int none = SPIN_NONE;
  if (!atomic_compare_exchange_strong(&c->spinner, &none, SPIN_ON)) return false;
  bool moved = spin_wait(ts->u, &ts->spin, &c->seq, seen, d->never ? NULL : &d->at);
  int on = SPIN_ON;
  if (!atomic_compare_exchange_strong(&c->spinner, &on, SPIN_NONE)) {
    atomic_store(&c->spinner, SPIN_NONE);  /* claimed by a signal: it is ours */
    return true;
  }
  return moved;
}

/*
** host_cond_wait on c: like cond_wait, but a spin first, then a futex
** sleep on c's seq until it moves from what it held under mu. A waker
** bumps seq before it reads `sleepers`, a sleeper counts itself there
** before the kernel reads seq: one of the two sees the other.
*/
host_wait_result host_cond_wait_spin(lua_State *L, pthread_mutex_t *mu, host_cond *c,
                                     const host_deadline *d) {
  host_tstate *ts = member_of(L);
  host_universe *u = ts->u;
  bool is_main = ts == &u->main_ts;
  host_wait_result result = HOST_WAIT_WOKEN;
  ts->wait_kind = W_TIMED;  /* a thread outside the universe may end it */
  ts->wait_timed = !d->never;
  unsigned seen = atomic_load(&c->seq);
  pthread_mutex_unlock(mu);
  gil_give(u, ts);
  HOST_TRACE(u, host_trace_wait_begin(ts));
  if (is_main && (interrupt_wanted(ts) || atomic_load(&u->deadlock))) {
    result = HOST_WAIT_INTERRUPTED;
  } else if (!cond_spin(ts, c, seen, d)) {
    host_deadline slice = is_main ? earlier(d, MAIN_WAIT_SLICE) : *d;
    host_sleep sleep;
    spin_sleep_begin(&sleep);
    atomic_fetch_add(&c->sleepers, 1);
    long rc = syscall(SYS_futex, &c->seq, FUTEX_WAIT_BITSET_PRIVATE, seen,
                      slice.never ? NULL : &slice.at, NULL, FUTEX_BITSET_MATCH_ANY);
    int err = errno;
    atomic_fetch_sub(&c->sleepers, 1);
    if (rc == 0) spin_sleep_end(u, &ts->spin, &sleep, &c->waker);
    if (is_main && (interrupt_wanted(ts) || atomic_load(&u->deadlock)))
      result = HOST_WAIT_INTERRUPTED;
    else if (rc == -1 && err == ETIMEDOUT && host_deadline_passed(d)) result = HOST_WAIT_TIMEOUT;
  }
  HOST_TRACE(u, host_trace_wait_end(ts, result == HOST_WAIT_TIMEOUT));
  gil_take(u, ts);
  wait_done(ts);
  return result;
}

void host_cond_spin_init(host_cond *c) {
  atomic_init(&c->seq, 0);
  atomic_init(&c->sleepers, 0);
  atomic_init(&c->spinner, SPIN_NONE);
  atomic_init(&c->waker.cpu, -1);
  atomic_init(&c->waker.at, 0);
}

/* Wakes up to n sleepers of c, telling them where the wake-up came from. */
static void cond_futex_wake(host_cond *c, int n) {
  waker_note(&c->waker);
  syscall(SYS_futex, &c->seq, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

void host_cond_wake_one(host_cond *c) {
  int on = SPIN_ON;
  if (!atomic_compare_exchange_strong(&c->spinner, &on, SPIN_CLAIMED) &&
      atomic_load(&c->sleepers) > 0)
    cond_futex_wake(c, 1);
}

void host_cond_changed(host_cond *c) {
  atomic_fetch_add(&c->seq, 1);
}

void host_cond_wake_all(host_cond *c) {
  if (atomic_load(&c->sleepers) > 0) cond_futex_wake(c, INT_MAX);
}

void host_cond_broadcast(host_cond *c) {
  host_cond_changed(c);
  host_cond_wake_all(c);
}

/*
** Sleeps without the GIL in a wait of q (the caller's record ts is on its
** list) until a notify hands it a place in the GIL's line, the deadline
** passes or (a watching main thread, which looks every slice) an
** interrupt or a deadlock ends it; returns with the GIL held.
*/
static host_wait_result waitq_sleep(host_tstate *ts, const host_deadline *d, bool watch) {
  host_universe *u = ts->u;
  bool is_main = watch && ts == &u->main_ts;
  host_wait_result result = HOST_WAIT_WOKEN;
  gil_give_to_sleep(u, ts);
  HOST_TRACE(u, host_trace_wait_begin(ts));
  for (;;) {
    if (is_main && (interrupt_wanted(ts) || atomic_load(&u->deadlock))) {
      result = HOST_WAIT_INTERRUPTED;
      break;
    }
    host_deadline slice = is_main ? earlier(d, MAIN_WAIT_SLICE) : *d;
    if (gil_sleep(u, ts, &slice)) break;
    if (host_deadline_passed(d)) {
      result = HOST_WAIT_TIMEOUT;
      break;
    }
  }
  HOST_TRACE(u, host_trace_wait_end(ts, result == HOST_WAIT_TIMEOUT));
  if (gil_wake_up(u, ts)) {  /* notified: an interrupt still wins */
    bool stop = is_main && (interrupt_wanted(ts) || atomic_load(&u->deadlock));
    result = stop ? HOST_WAIT_INTERRUPTED : HOST_WAIT_WOKEN;
  }
  return result;
}

/* Protected part of closing_wait_fails: pushes its report. */
static int closing_report(lua_State *L) {
  host_tstate *ts = lua_touserdata(L, 1);
  lua_settop(L, 0);
  lua_pushliteral(L, "deadlock: a wait without a timeout while host closes the state, "
                     "when no other thread runs: waiting for ");
  push_wait_what(L, ts);
  push_where(L, atomic_load(&ts->running));
  lua_concat(L, 3);
  return 1;
}

/*
** A wait without a deadline while host_close closes the state (a finalizer
** at exit, a generator closed then) can never end: no other thread of the
** universe runs again (daemon threads park). Says so on stderr, since an
** error in a finalizer is only a warning, and arms the DeadlockError that
** host_raise_interrupt raises. False when there is no room to report.
*/
static bool closing_wait_fails(lua_State *L, host_tstate *ts) {
  if (ts != &ts->u->main_ts || !lua_checkstack(L, 4)) return false;
  lua_pushcfunction(L, closing_report);
  lua_pushlightuserdata(L, ts);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    wait_done(ts);
    lua_pop(L, 1);
    return false;
  }
  wait_done(ts);
  fprintf(stderr, "host: %s\n", lua_tostring(L, -1));
  fflush(stderr);
  lua_setfield(L, LUA_REGISTRYINDEX, DEADLOCK_REPORT);
  atomic_store(&ts->u->deadlock, true);
  return true;
}

/*
** The wait behind host_waitq_wait; `watch` says if an interrupt ends it.
** The waiter is on q's list (in the order they came) while it waits;
** without a deadline it counts as blocked until notified, and may find the
** universe deadlocked.
*/
static host_wait_result waitq_wait(lua_State *L, host_waitq *q, const host_deadline *d,
                                   bool watch) {
  host_tstate *ts = member_of(L);
  host_universe *u = ts->u;
  if (d->never && watch && atomic_load(&u->closing) && closing_wait_fails(L, ts))
    return HOST_WAIT_INTERRUPTED;  /* the caller raises the DeadlockError */
  q->refs++;
  ts->wait_q = q;
  ts->wait_next = NULL;
  host_tstate **tail = &q->waiters;
  while (*tail != NULL) tail = &(*tail)->wait_next;
  *tail = ts;
  ts->wait_watch = watch;
  ts->wait_kind = W_TIMED;
  ts->wait_timed = !d->never;
  if (d->never && !atomic_load(&u->closing)) {
    ts->wait_kind = W_BLOCKED;
    u->nblocked++;
    check_deadlock(u, L);
  }
  host_wait_result result;
  if (watch && ts == &u->main_ts && atomic_load(&u->deadlock))
    result = HOST_WAIT_INTERRUPTED;  /* the caller raises the DeadlockError */
  else
    result = waitq_sleep(ts, d, watch);
  if (ts->wait_kind == W_BLOCKED) u->nblocked--;
  host_tstate **p = &q->waiters;
  while (*p != NULL && *p != ts) p = &(*p)->wait_next;
  if (*p == ts) *p = ts->wait_next;
  wait_done(ts);
  host_waitq_unref(q);
  return result;
}

host_wait_result host_waitq_wait(lua_State *L, host_waitq *q,
                                 const host_deadline *d) {
  return waitq_wait(L, q, d, true);
}

host_wait_result host_waitq_wait_uninterrupted(lua_State *L, host_waitq *q,
                                               const host_deadline *d) {
  return waitq_wait(L, q, d, false);
}

int host_waitq_waiters(const host_waitq *q) {
  int n = 0;
  for (const host_tstate *w = q->waiters; w != NULL; w = w->wait_next) n++;
  return n;
}

/*
** Hands each sleeping waiter of q a place in the GIL's line, in the order
** they came: each wakes once it holds the GIL (gil_handoff), not to sleep
** on it again. Those blocked count as running from now on.
*/
void host_waitq_notify_waiters(host_waitq *q) {
  for (host_tstate *w = q->waiters; w != NULL; w = w->wait_next) {
    if (w->wait_kind == W_BLOCKED) {
      w->wait_kind = W_WOKEN;
      w->u->nblocked--;
    }
    gil_handoff(w->u, w);
  }
}

/*
** Hands waiter w a place in the GIL's line; one that was blocked counts as
** running from now on. False when its deadline passed just now (it wakes
** timed out, and stays counted as it was).
*/
static bool hand_waiter(host_tstate *w) {
  int kind = w->wait_kind;
  if (!gil_handoff(w->u, w)) return false;
  if (kind == W_BLOCKED) {
    w->wait_kind = W_WOKEN;
    w->u->nblocked--;
  }
  return true;
}

int host_waitq_notify_first_n(host_waitq *q, int n) {
  int handed = 0;
  for (host_tstate *w = q->waiters; w != NULL && handed < n; w = w->wait_next)
    if (atomic_load(&w->hand) == HAND_SLEEPING && hand_waiter(w)) handed++;
  return handed;
}

void host_waitq_notify_thread(host_waitq *q, host_tstate *ts) {
  if (ts->wait_q == q) hand_waiter(ts);  /* else not asleep: it looks at its state before it sleeps */
}

/*
** Hands the waiter of q that came last among those still asleep a place in
** the GIL's line, as host_waitq_notify does (see runtime.h for why the
** last); one handed a place already, or whose deadline has passed, is
** passed over. False when no waiter sleeps.
*/
bool host_waitq_notify_one(host_waitq *q) {
  for (;;) {
    host_tstate *last = NULL;
    for (host_tstate *w = q->waiters; w != NULL; w = w->wait_next)
      if (atomic_load(&w->hand) == HAND_SLEEPING) last = w;
    if (last == NULL) return false;
    if (hand_waiter(last)) return true;  /* else its deadline passed just now: the next */
  }
}

/*
** Sleeps until d, without the GIL unless the state closes or L runs a
** finalizer (in_finalizer): then the GIL is kept, and a sleep of 0 returns
** at once. The main thread looks for an interrupt every slice.
*/
bool host_unlocked_sleep(lua_State *L, const host_deadline *d) {
  host_tstate *ts = member_of(L);
  if (ts == NULL) {
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &d->at, NULL) == EINTR) {}
    return true;
  }
  host_universe *u = ts->u;
  bool is_main = ts == &u->main_ts;
  bool keep = atomic_load(&u->closing) || in_finalizer(L);
  bool ok = true;
  ts->wait_what = "sleep";
  ts->wait_kind = W_TIMED;
  if (!keep) gil_give(u, ts);
  if (!keep) HOST_TRACE(u, host_trace_wait_begin(ts));
  while (!host_deadline_passed(d)) {
    if (is_main && interrupt_wanted(ts)) {
      ok = false;
      break;
    }
    host_deadline slice = is_main ? earlier(d, MAIN_WAIT_SLICE) : *d;
    if (slice.never) slice = host_deadline_in(3600);
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &slice.at, NULL);
  }
  if (!keep) HOST_TRACE(u, host_trace_wait_end(ts, false));
  if (!keep) gil_take(u, ts);
  wait_done(ts);
  return ok;
}

/* ---- waits, dumps and deadlock detection ---- */

/* Forgets what ts waited for (its wait has ended). */
static void wait_done(host_tstate *ts) {
  ts->wait_what = ts->wait_detail = NULL;
  ts->wait_obj = NULL;
  ts->wait_holder = NULL;
  ts->wait_kind = W_NONE;
  ts->wait_timed = false;
  ts->wait_q = NULL;
  ts->wait_next = NULL;
  ts->wait_watch = false;
}

void host_wait_on(lua_State *L, const char *what, const char *detail,
                  const void *obj, host_tstate *holder) {
  host_tstate *ts = member_of(L);
  if (ts == NULL) return;
  ts->wait_what = what;
  ts->wait_detail = detail;
  ts->wait_obj = obj;
  ts->wait_holder = holder;
}

/*
** The running threads of u, main first, into `out` (at most `max`);
** returns how many there are. GIL held, so none starts or ends meanwhile.
*/
static int live_threads(host_universe *u, host_tstate **out, int max) {
  int n = 0;
  if (max > 0) out[n] = &u->main_ts;
  n++;
  pthread_mutex_lock(&u->threads_mu);
  for (host_tstate *ts = u->threads; ts != NULL; ts = ts->next) {
    if (ts->finished) continue;
    if (n < max) out[n] = ts;
    n++;
  }
  pthread_mutex_unlock(&u->threads_mu);
  int shown = n < max ? n : max;
  for (int i = 1; i < shown; i++) {  /* by number: the order they started in */
    host_tstate *x = out[i];
    int j = i;
    for (; j > 0 && out[j - 1]->num > x->num; j--) out[j] = out[j - 1];
    out[j] = x;
  }
  return n;
}

/* True when ts is a running thread of u (a lock's owner may have ended). */
static bool is_live(host_universe *u, host_tstate *ts) {
  if (ts == &u->main_ts) return true;
  bool found = false;
  pthread_mutex_lock(&u->threads_mu);
  for (host_tstate *it = u->threads; it != NULL && !found; it = it->next)
    found = it == ts && !it->finished;
  pthread_mutex_unlock(&u->threads_mu);
  return found;
}

host_tstate *host_tstate_of_ident(lua_State *L, unsigned long ident) {
  host_universe *u = host_universe_of(L);
  if (u == NULL) return NULL;
  if ((unsigned long)u->main_ts.pthread == ident) return &u->main_ts;
  host_tstate *found = NULL;
  pthread_mutex_lock(&u->threads_mu);
  for (host_tstate *ts = u->threads; ts != NULL && found == NULL; ts = ts->next)
    if (!ts->finished && (unsigned long)ts->pthread == ident) found = ts;
  pthread_mutex_unlock(&u->threads_mu);
  return found;
}

#define THREAD_PROXIES "host.thread_proxies"  /* thread.c's: key thread -> Thread */

/*
** Pushes the name of thread ts, read raw from thread.c's tables (its Thread
** proxy's info table): true when found, else nothing is pushed.
*/
static bool push_thread_name(lua_State *L, host_tstate *ts) {
  if (!lua_checkstack(L, 5)) return false;
  int top = lua_gettop(L);
  if (lua_getfield(L, LUA_REGISTRYINDEX, THREAD_KEYS) == LUA_TTABLE &&
      lua_rawgetp(L, -1, ts) == LUA_TTHREAD &&
      lua_getfield(L, LUA_REGISTRYINDEX, THREAD_PROXIES) == LUA_TTABLE) {
    lua_pushvalue(L, -2);
    if (lua_rawget(L, -2) == LUA_TUSERDATA && lua_getiuservalue(L, -1, 1) == LUA_TTABLE &&
        lua_getfield(L, -1, "name") == LUA_TSTRING) {
      lua_replace(L, top + 1);
      lua_settop(L, top + 1);
      return true;
    }
  }
  lua_settop(L, top);
  return false;
}

/*
** ts is only looked at while it is known to be live: pushing may run a
** finalizer that starts a thread, which frees the records of ended ones.
*/
void host_push_thread_label(lua_State *L, host_tstate *ts) {
  host_universe *u = host_universe_of(L);
  if (ts == NULL || u == NULL || !is_live(u, ts)) {
    lua_pushliteral(L, "a thread that has ended");
    return;
  }
  int num = ts->num;
  if (push_thread_name(L, ts)) {  /* ts is only a key there */
    lua_pushfstring(L, "thread %d \"%s\"", num, lua_tostring(L, -1));
    lua_remove(L, -2);
  } else if (ts == &u->main_ts) {
    lua_pushliteral(L, "thread 1 \"MainThread\"");
  } else {
    lua_pushfstring(L, "thread %d", num);
  }
}

/* Pushes what ts waits for: `host.Lock 0x... (locked by thread 3 "w")`. */
static void push_wait_what(lua_State *L, host_tstate *ts) {
  const char *what = ts->wait_what ? ts->wait_what : "a wait queue";
  if (ts->wait_obj != NULL) lua_pushfstring(L, "%s %p", what, ts->wait_obj);
  else lua_pushstring(L, what);
  if (ts->wait_detail != NULL || ts->wait_holder != NULL) {
    lua_pushfstring(L, " (%s", ts->wait_detail ? ts->wait_detail : "held by");
    if (ts->wait_holder != NULL) {
      lua_pushliteral(L, " ");
      host_push_thread_label(L, ts->wait_holder);
      lua_concat(L, 3);
    }
    lua_pushliteral(L, ")");
    lua_concat(L, 3);
  }
}

/* Pushes " at file:line" for the innermost Lua frame of co, or "". */
static void push_where(lua_State *L, lua_State *co) {
  lua_Debug ar;
  for (int level = 0; lua_getstack(co, level, &ar); level++) {
    if (lua_getinfo(co, "Sl", &ar) && ar.currentline > 0) {
      lua_pushfstring(L, " at %s:%d", ar.short_src, ar.currentline);
      return;
    }
  }
  lua_pushliteral(L, "");
}

/* Pushes the state line of thread ts for a dump made by thread `self`. */
static void push_state(lua_State *L, host_tstate *ts, host_tstate *self) {
  lua_State *co = ts == self ? L : atomic_load(&ts->running);
  if (ts->wait_what != NULL && strcmp(ts->wait_what, "sleep") == 0) {
    lua_pushliteral(L, "sleeping");
    push_where(L, co);
    lua_concat(L, 2);
  } else if (ts->wait_kind != W_NONE) {
    lua_pushliteral(L, "waiting for ");
    push_wait_what(L, ts);
    push_where(L, co);
    lua_pushstring(L, ts->wait_timed ? ", with a timeout" : "");
    lua_concat(L, 4);
  } else if (ts == self) {
    lua_pushliteral(L, "running (this thread)");
  } else if (ts->user_release == USER_RELEASED) {
    lua_pushliteral(L, "in a blocking call (GIL released)");
    push_where(L, co);
    lua_concat(L, 2);
  } else {
    lua_pushliteral(L, "runnable (waiting for the GIL)");
    push_where(L, co);
    lua_concat(L, 2);
  }
}

/* The most threads a dump or a deadlock report shows. */
#define MAX_SHOWN 256

/* The body of host_push_dump, run protected: (skip) -> the dump. */
static int dump_body(lua_State *L) {
  int skip = (int)lua_tointeger(L, 1);
  lua_settop(L, 0);
  luaL_checkstack(L, 40, "no room for the dump");
  host_universe *u = host_universe_of(L);
  host_tstate *self = member_of(L);
  host_tstate *list[MAX_SHOWN];
  int n = live_threads(u, list, MAX_SHOWN);
  lua_pushfstring(L, "host: tracebacks of %d thread%s", n, n == 1 ? "" : "s");
  for (int i = 0; i < n && i < MAX_SHOWN; i++) {
    host_tstate *ts = list[i];
    lua_State *co = ts == self ? L : atomic_load(&ts->running);
    lua_pushliteral(L, "\n\n");
    host_push_thread_label(L, ts);
    lua_pushfstring(L, " (ident %I): ", (LUAI_UACINT)(lua_Integer)(unsigned long)ts->pthread);
    push_state(L, ts, self);
    lua_pushliteral(L, "\n");
    luaL_traceback(L, co, NULL, ts == self ? skip + 1 : 0);  /* level 0: dump_body */
    lua_concat(L, 7);
  }
  if (n > MAX_SHOWN) lua_pushfstring(L, "\n\n... and %d more threads", n - MAX_SHOWN);
  else lua_pushliteral(L, "");
  lua_pushliteral(L, "\n");
  lua_concat(L, 3);
  return 1;
}

/*
** Runs f(L, arg) protected with the collector stopped (so no finalizer
** runs and no thread record is freed while it reads them); pushes its
** result or its error message.
*/
static int run_stopped(lua_State *L, lua_CFunction f, lua_Integer arg) {
  luaL_checkstack(L, 3, "no room for the dump");
  int running = lua_gc(L, LUA_GCISRUNNING, 0);
  if (running == 1) lua_gc(L, LUA_GCSTOP, 0);
  lua_pushcfunction(L, f);
  lua_pushinteger(L, arg);
  int status = lua_pcall(L, 1, 1, 0);
  if (running == 1) lua_gc(L, LUA_GCRESTART, 0);
  return status;
}

void host_push_dump(lua_State *L, int skip) {
  if (host_universe_of(L) == NULL)
    lua_pushliteral(L, "host: no tracebacks (the state was not made by host_newstate)\n");
  else
    run_stopped(L, dump_body, skip);
}

void host_dump_tracebacks(lua_State *L, FILE *out) {
  host_push_dump(L, 0);
  size_t len;
  const char *s = lua_tolstring(L, -1, &len);
  if (s != NULL) fwrite(s, 1, len, out);
  fflush(out);
  lua_pop(L, 1);
}

/* The next thread in the wait-for graph: the holder of what ts waits for. */
static host_tstate *wait_next_of(host_universe *u, host_tstate *ts) {
  host_tstate *h = ts->wait_holder;
  return h != NULL && h->wait_kind == W_BLOCKED && is_live(u, h) ? h : NULL;
}

/*
** A thread on a wait-for cycle of the blocked threads, found from `start`
** (the main thread first, then each thread), or NULL when there is none.
*/
static host_tstate *find_cycle(host_universe *u, host_tstate **list, int n) {
  for (int i = 0; i < n; i++) {
    host_tstate *x = list[i];
    int steps = 0;
    while (x != NULL && steps <= n) {
      x = wait_next_of(u, x);
      steps++;
    }
    if (x != NULL) return x;
  }
  return NULL;
}

/*
** The body of the deadlock report, run protected: pushes the message of
** the DeadlockError, naming the wait-for cycle when there is one (from the
** main thread when it is on it), else what every thread waits for.
*/
static int report_body(lua_State *L) {
  host_universe *u = host_universe_of(L);
  host_tstate *self = member_of(L);
  host_tstate *list[MAX_SHOWN];
  int n = live_threads(u, list, MAX_SHOWN);
  if (n > MAX_SHOWN) n = MAX_SHOWN;
  lua_settop(L, 0);
  luaL_checkstack(L, 40, "no room for the report");
  host_tstate *start = find_cycle(u, list, n);
  if (start != NULL) {
    for (host_tstate *c = wait_next_of(u, start); c != start; c = wait_next_of(u, c))
      if (c == &u->main_ts) start = c;  /* from the main thread, when on it */
    lua_pushliteral(L, "deadlock: ");
    host_push_thread_label(L, start);
    lua_pushliteral(L, " waits for ");
    push_wait_what(L, start);
    lua_concat(L, 4);
    for (host_tstate *c = wait_next_of(u, start); c != start; c = wait_next_of(u, c)) {
      lua_pushliteral(L, ", which waits for ");
      push_wait_what(L, c);
      lua_concat(L, 3);
    }
    if (start->wait_holder == start) {
      lua_pushliteral(L, ", which it holds itself (a coroutine of that thread took it, "
                         "and no other thread can release it)");
      lua_concat(L, 2);
    }
    host_tstate *m = &u->main_ts;
    if (start != m) {  /* the main thread waits for the cycle, off it */
      lua_pushliteral(L, "; ");
      host_push_thread_label(L, m);
      lua_pushliteral(L, " waits for ");
      push_wait_what(L, m);
      push_where(L, m == self ? L : atomic_load(&m->running));
      lua_concat(L, 6);
    }
    return 1;
  }
  lua_pushliteral(L, "deadlock: every thread waits and none can wake another:");
  for (int i = 0; i < n; i++) {
    lua_pushstring(L, i == 0 ? " " : "; ");
    host_push_thread_label(L, list[i]);
    lua_pushliteral(L, " waits for ");
    push_wait_what(L, list[i]);
    push_where(L, list[i] == self ? L : atomic_load(&list[i]->running));
    lua_concat(L, 6);
  }
  return 1;
}

/*
** Called with the GIL held when a thread starts a wait without a deadline
** and when a thread ends. When every thread of the universe is blocked in
** such a wait and none has been notified since, no thread can ever wake
** another: a thread in blocking I/O, asleep, running or waiting with a
** deadline is not blocked, and neither is a future's wait (a process or
** an interpreter pool completes it from outside). Then the main thread
** raises a DeadlockError naming the cycle; when it cannot (it waits for
** the non-daemon threads at exit, or where an interrupt cannot reach it),
** the report and the dump go to stderr, and an exit wait fails. A child
** made by host_fork (a pool's worker) is left alone: its records of the
** parent's threads are stale.
*/
static void check_deadlock(host_universe *u, lua_State *L) {
  if (u->nblocked == 0 || u->fork_child || atomic_load(&u->closing) ||
      atomic_load(&u->interrupted) || atomic_load(&u->stopping))
    return;
  pthread_mutex_lock(&u->threads_mu);
  int total = u->running + 1;
  bool exit_ends = u->exit_wait && u->nondaemon == 0;  /* the last one just ended */
  pthread_mutex_unlock(&u->threads_mu);
  host_tstate *m = &u->main_ts;
  if (u->nblocked < total || m->wait_kind != W_BLOCKED || exit_ends) return;
  bool can_raise = m->wait_watch;  /* a cond wait sees the flag within a slice */
  if (can_raise && atomic_load(&u->deadlock)) return;  /* it is about to raise */
  if (!lua_checkstack(L, LUA_MINSTACK)) return;  /* what follows must not raise */
  if (run_stopped(L, report_body, 0) != LUA_OK) {
    lua_pop(L, 1);
    return;
  }
  if (can_raise) {
    lua_setfield(L, LUA_REGISTRYINDEX, DEADLOCK_REPORT);
    atomic_store(&u->deadlock, true);
    /* main alone: the caller may wait on the same queue, not asleep yet */
    if (tstate_in(u) != m && m->wait_q != NULL && gil_handoff(u, m) &&
        m->wait_kind == W_BLOCKED) {
      m->wait_kind = W_WOKEN;
      u->nblocked--;
    }
    return;
  }
  fprintf(stderr, "host: %s\n", lua_tostring(L, -1));
  lua_pop(L, 1);
  host_dump_tracebacks(L, stderr);
  if (u->exit_wait) atomic_store(&u->deadlock, true);
}

/* ---- the dump watcher ---- */

/*
** The watcher's loop: sleeps on its semaphore (posted by host_dump_request,
** host_dump_later and host_close) or until a dump_later deadline, and
** takes the GIL to print the dump on stderr.
*/
static void *watcher_main(void *arg) {
  host_universe *u = arg;
  host_tstate *ts = &u->watcher_ts;
  host_current_ts = ts;
  while (!atomic_load(&u->watch_stop)) {
    pthread_mutex_lock(&u->later_mu);
    bool timed = u->later_set;
    host_deadline d = u->later;
    pthread_mutex_unlock(&u->later_mu);
    if (timed) sem_clockwait(&u->watch_sem, CLOCK_MONOTONIC, &d.at);
    else sem_wait(&u->watch_sem);
    if (atomic_load(&u->watch_stop)) break;
    bool due = false;
    pthread_mutex_lock(&u->later_mu);
    if (u->later_set && host_deadline_passed(&u->later)) {
      u->later_set = false;
      due = true;
    }
    pthread_mutex_unlock(&u->later_mu);
    if (atomic_exchange(&u->dump_wanted, false) || due) {
      gil_take(u, ts);
      host_dump_tracebacks(ts->L, stderr);
      gil_give(u, ts);
    }
  }
  host_current_ts = NULL;
  return NULL;
}

#define WATCHER_KEY "host.dump_watcher"  /* registry: the watcher's Lua thread */

/* Protected: makes the watcher's Lua thread, anchored in the registry. */
static int new_watcher_thread(lua_State *L) {
  lua_newthread(L);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, WATCHER_KEY);
  return 1;
}

int host_dump_watch(lua_State *L) {
  host_universe *u = host_universe_of(L);
  if (u == NULL) return EINVAL;
  if (atomic_load(&u->watching)) return 0;
  if (!lua_checkstack(L, 2)) return ENOMEM;
  lua_pushcfunction(L, new_watcher_thread);
  if (lua_pcall(L, 0, 1, 0) != LUA_OK) {
    lua_pop(L, 1);
    return ENOMEM;
  }
  lua_State *co = lua_tothread(L, -1);
  lua_pop(L, 1);  /* the registry anchors it */
  tstate_init(&u->watcher_ts, u, co);
  u->watcher_ts.num = 0;
  sem_init(&u->watch_sem, 0, 0);
  atomic_store(&u->watch_stop, false);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int rc = pthread_create(&u->watcher, NULL, watcher_main, u);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    sem_destroy(&u->watch_sem);
    return rc;
  }
  atomic_store(&u->watching, true);
  return 0;
}

void host_dump_request(lua_State *L) {
  host_universe *u = host_universe_of(L);
  if (u == NULL || !atomic_load(&u->watching)) return;
  atomic_store(&u->dump_wanted, true);
  sem_post(&u->watch_sem);
}

int host_dump_later(lua_State *L, double seconds) {
  host_universe *u = host_universe_of(L);
  if (u == NULL) return EINVAL;
  if (seconds >= 0) {
    int rc = host_dump_watch(L);
    if (rc != 0) return rc;
  }
  pthread_mutex_lock(&u->later_mu);
  u->later_set = seconds >= 0;
  if (seconds >= 0) u->later = host_deadline_in(seconds);
  pthread_mutex_unlock(&u->later_mu);
  if (atomic_load(&u->watching)) sem_post(&u->watch_sem);
  return 0;
}

/* Stops the watcher and waits for it to end; GIL held (it gives it up meanwhile). */
static void watcher_stop(host_universe *u, host_tstate *ts) {
  if (!atomic_load(&u->watching)) return;
  atomic_store(&u->watching, false);  /* no request posts to the semaphore now */
  atomic_store(&u->watch_stop, true);
  sem_post(&u->watch_sem);
  gil_give(u, ts);
  pthread_join(u->watcher, NULL);
  gil_take(u, ts);
  sem_destroy(&u->watch_sem);
}

/* The identifier of L's universe's main thread (as `Thread.ident` shows it). */
unsigned long host_main_thread_ident(lua_State *L) {
  return (unsigned long)host_universe_of(L)->main_ts.pthread;
}
