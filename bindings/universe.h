/*
** universe.h: the layout of a universe and of its thread records, shared
** by runtime.c (the thread registry, the wait queues, dumps, deadlocks) and
** gil.c (the GIL and preemption). Internal to the bindings, floor 1: not
** installed, and its functions are hidden from loaded modules.
*/
#ifndef HOST_UNIVERSE_H
#define HOST_UNIVERSE_H

#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "runtime.h"

/* Functions shared by runtime.c and gil.c only. */
#define HOST_INTERNAL __attribute__((visibility("hidden")))

/*
** HOST_NO_GIL_CONTROL: spawned threads run Lua code without taking the GIL.
** Only `make tsan` builds it, as the negative control that ThreadSanitizer
** must catch; it is never correct.
*/
#ifdef HOST_NO_GIL_CONTROL
#define SPAWNED_TAKE(u, ts) ((void)(u), (void)(ts))
#define SPAWNED_GIVE(u, ts) ((void)(u), (void)(ts))
#else
#define SPAWNED_TAKE(u, ts) gil_take(u, ts)
#define SPAWNED_GIVE(u, ts) gil_give(u, ts)
#endif

typedef struct host_trace host_trace;  /* trace.c's */
typedef struct trace_buf trace_buf;

#define GIL_SLOTS 64
/*
** A cache line. What threads on different cores write in turn gets a line
** of its own (see host_tstate and host_universe), and the structs that
** hold such fields are allocated aligned to it (host_alloc_lines).
*/
#define HOST_LINE 64
#define SWITCH_SIGNAL SIGURG          /* default action: ignore */

/*
** What an OS thread learned about spinning before it sleeps (gil.c's
** spin_wait), touched by that thread only. Zero: spinning on, no bound
** learned yet.
*/
typedef struct host_spin {
  atomic_bool active;             /* spinning now, counted in u->spinning */
  long ns;                        /* the learned bound; 0: not learned yet */
  unsigned backoff;               /* 0: it spins; n > 0: it tries once every 2^n sleeps */
  unsigned skipped;               /* sleeps without a spin since the last try */
} host_spin;

struct host_tstate {
  host_universe *u;
  lua_State *L;                   /* this OS thread's own Lua thread */
  _Atomic(lua_State *) running;   /* the coroutine it runs now, or L */
  pthread_t pthread;
  atomic_bool holding;            /* holds the GIL (read by its signal handler) */
  uint64_t rng;                   /* jitter of the instruction policy */
  unsigned policy_seen;           /* the policy epoch its hook follows */
  bool daemon;
  bool finished;                  /* body done: no longer a running thread */
  bool released;                  /* its OS thread is done with the record (threads_mu) */
  int finalizer_resumes;          /* coroutines a finalizer of this thread resumes */
  int user_release;               /* host_gil_release's state: a USER_ value */
  host_tstate *outer;             /* what this OS thread had before (nesting) */
  /* a user's hook that an interrupt put aside (see arm_hook): set by the
  ** signal handler and read by universe_hook, both on this OS thread */
  lua_Hook saved_hook;
  int saved_mask, saved_count;
  _Atomic(lua_State *) saved_for;  /* the state it belongs to, or NULL */
  host_tstate *next;              /* in the universe's list of spawned threads */
  void (*body)(lua_State *co, void *arg);
  void *arg;
  int num;                        /* 1 for the main thread, then 2, 3, ... */
  /* what it waits for (host_wait_on), all under the GIL; see "waits" below */
  const char *wait_what, *wait_detail;
  const void *wait_obj;
  host_tstate *wait_holder;
  int wait_kind;                  /* a W_ value */
  bool wait_watch;                /* an interrupt (or a deadlock) ends the wait */
  bool wait_timed;                /* the wait has a deadline */
  host_waitq *wait_q;             /* the queue it sleeps on, or NULL */
  host_tstate *wait_next;         /* in wait_q's list of waiters */
  /*
  ** Its place in the GIL's line (gil.c), in two cache lines of their own:
  ** the one it spins on (park) holds only what its waker touches there
  ** too, so a waker's other writes (its ticket, the line) do not pull the
  ** line from under the spinner once for each write (a transfer between
  ** cores costs about 150 ns here, a pause 14).
  */
  _Alignas(HOST_LINE) atomic_uint park;  /* futex word: bumped to wake it */
  atomic_bool parked;             /* asleep on park (or about to be) */
  host_waker waker;               /* the last futex wake of park */
  host_spin spin;                 /* its spin before a sleep (gil.c) */
  _Alignas(HOST_LINE) atomic_int hand;  /* a HAND_ value */
  atomic_ullong gil_ticket;       /* its ticket while in the line */
  host_tstate *line_next;         /* in its slot's line, under the slot's mu */
  atomic_bool in_line;            /* on that line (set under the slot's mu) */
  _Alignas(HOST_LINE) timer_t switch_timer;  /* sends it SWITCH_SIGNAL (gil_handoff) */
  bool has_timer;                 /* switch_timer exists */
  atomic_llong timer_armed;       /* the interval (ns) it was armed with; 0 once it fired */
  trace_buf *tbuf;                /* its events (trace.c), or NULL */
};

/*
** How a thread waits. W_BLOCKED: in host_waitq_wait without a deadline and
** not notified since; only such threads count in the universe's nblocked.
** W_WOKEN: notified, not yet running again. W_TIMED: any other wait (a
** deadline, host_cond_wait, a sleep): something else will end it.
*/
enum { W_NONE, W_TIMED, W_BLOCKED, W_WOKEN };

/* The threads in the GIL's line whose ticket is this slot's (mod GIL_SLOTS). */
struct gil_slot {
  _Alignas(HOST_LINE) pthread_mutex_t mu;
  host_tstate *line;              /* linked by line_next, under mu */
};

/*
** A thread's hand-off state (gil.c): HAND_SLEEPING while it sleeps in a
** wait that a notifier may end by giving it a place in the GIL's line
** (HAND_HANDING while it does, HAND_HANDED once done); HAND_NONE otherwise.
*/
enum { HAND_NONE, HAND_SLEEPING, HAND_HANDING, HAND_HANDED };

/*
** An OS thread that host started to run spawned threads, one after another
** (see "spawned threads" in runtime.c). Every field is under the
** universe's threads_mu.
*/
typedef struct host_worker host_worker;
struct host_worker {
  host_universe *u;
  pthread_t pthread;
  pthread_cond_t cv;              /* signalled when given a thread or told to stop */
  host_tstate *job;               /* the thread given to it, not started yet */
  host_tstate *running;           /* the thread it runs, or NULL */
  bool idle;                      /* on the universe's stack of idle workers */
  bool stop;                      /* to end once idle (host_reap_threads) */
  bool exited;                    /* has left its loop: to be joined */
  host_worker *next;              /* in the universe's list of workers */
  host_worker *next_idle;         /* in the stack of idle workers */
  atomic_uint calls;              /* bumped (under threads_mu) with each signal of cv */
  host_spin spin;                 /* its spin before it sleeps idle (the worker's own) */
  timer_t timer;                  /* the switch timer its threads use in turn */
  bool has_timer;                 /* timer exists (the worker's own) */
};

struct host_universe {
  lua_State *main;
  host_tstate main_ts;
  /* the GIL: what every hand-off writes, in one line */
  _Alignas(HOST_LINE) atomic_ullong next_ticket;
  atomic_ullong serving;
  _Atomic(host_tstate *) holder;
  atomic_ullong switches;
  struct gil_slot slot[GIL_SLOTS];
  _Alignas(HOST_LINE) atomic_int spinning;  /* its threads spinning before a sleep now */
  /* read at every spin, written at every woken sleep: a line of its own */
  _Alignas(HOST_LINE) atomic_llong wake_ns;  /* a futex wake-up's latency here, learned (gil.c) */
  /* read at every hand-off, written seldom: a line away from those above */
  _Alignas(HOST_LINE) int cores;  /* processors this process may run on */
  /* preemption and interrupts */
  atomic_llong interval_ns;
  atomic_int instructions;        /* > 0: the jittered instruction policy */
  atomic_uint policy_epoch;
  atomic_bool interrupted;
  atomic_bool stopping;           /* host_interrupt_sticky: raised until cleared */
  atomic_bool exiting;            /* host_close has begun (its exit handlers ran) */
  bool fork_child;                /* this is a worker forked by the pool */
  unsigned long forks;            /* host_fork_count: forks this process descends by */
  atomic_bool closing;            /* host_close is closing the state */
  /* spawned threads: list, counts (under threads_mu) */
  _Alignas(HOST_LINE) pthread_mutex_t threads_mu;
  pthread_cond_t threads_cv;
  host_tstate *threads;
  int running;
  int nondaemon;
  int last_num;                   /* the number of the last thread made */
  host_worker *workers;           /* every OS thread started for them, until joined */
  host_worker *idle;              /* the idle ones, the latest idle first */
  int nidle;
  bool workers_stop;              /* host_close: idle workers end */
  /* deadlock detection (under the GIL) */
  int nblocked;                   /* threads in W_BLOCKED */
  bool exit_wait;                 /* the main thread waits for non-daemon threads */
  atomic_bool deadlock;           /* the main thread is to raise DeadlockError */
  /* the dump watcher (host_dump_watch) */
  atomic_bool watching;            /* read by host_dump_request, a signal handler's */
  pthread_t watcher;
  host_tstate watcher_ts;
  sem_t watch_sem;
  atomic_bool dump_wanted, watch_stop;
  pthread_mutex_t later_mu;
  bool later_set;                 /* a dump is due at `later` */
  host_deadline later;
  /* the trace (trace.c): the flag every hook tests, the recorder */
  atomic_bool tracing;
  host_trace *trace;
  bool trace_sub;                 /* records into a parent universe's trace */
  long trace_lanes;               /* added to a thread's number for its lane (trace.c) */
};


/*
** What host_gil_release did, so that host_gil_acquire undoes exactly that.
** A release while the state closes or inside a finalizer keeps the GIL
** (see in_finalizer), and so does a release in a state of another universe.
*/
enum { USER_HOLDING, USER_RELEASED, USER_KEPT };

/* ---- runtime.c ---- */

/* Zeroed memory aligned to a cache line, for a universe or a record (free() frees it). */
HOST_INTERNAL void *host_alloc_lines(size_t size);

/* The calling thread's record in universe u, or NULL. */
HOST_INTERNAL host_tstate *tstate_in(host_universe *u);

/* The calling thread's record if it runs Lua code in L's universe. */
HOST_INTERNAL host_tstate *member_of(lua_State *L);

/* ---- gil.c ---- */

/* Initialises u's GIL (free, nobody in line) and its default policy. */
HOST_INTERNAL void gil_init(host_universe *u);

/* Frees what gil_init made. */
HOST_INTERNAL void gil_destroy(host_universe *u);

/* The main thread ts of a new universe u takes its GIL for the first time. */
HOST_INTERNAL void gil_start(host_universe *u, host_tstate *ts);

/* In a forked child: the GIL is ts's with nobody in line, its mutexes new. */
HOST_INTERNAL void gil_after_fork(host_universe *u, host_tstate *ts);

/* Takes the GIL for ts (in its turn); a spawned thread parks if u closes. */
HOST_INTERNAL void gil_take(host_universe *u, host_tstate *ts);

/* Gives the GIL up, serving the next in line. */
HOST_INTERNAL void gil_give(host_universe *u, host_tstate *ts);

/*
** The direct hand-off. A thread about to sleep in a wait that a notifier
** ends gives the GIL up with gil_give_to_sleep, sleeps with gil_sleep (until
** it is handed a place in the line, true, or `d` passes, false) and ends
** its wait with gil_wake_up, which returns with the GIL held (true when it
** was handed). gil_handoff, by a thread holding the GIL, gives sleeping
** thread w a ticket: w wakes only once it is served.
*/
HOST_INTERNAL void gil_give_to_sleep(host_universe *u, host_tstate *ts);
HOST_INTERNAL bool gil_sleep(host_universe *u, host_tstate *ts, const host_deadline *d);
HOST_INTERNAL bool gil_wake_up(host_universe *u, host_tstate *ts);
HOST_INTERNAL bool gil_handoff(host_universe *u, host_tstate *w);

/*
** Spins while *word still holds `seen`, as a thread about to sleep on it
** does (see "Spinning" in gil.c), with what `spin` learned; `at` (absolute,
** CLOCK_MONOTONIC; NULL: none) ends it too. True when the word moved.
*/
HOST_INTERNAL bool spin_wait(host_universe *u, host_spin *spin, atomic_uint *word,
                             unsigned seen, const struct timespec *at);

/*
** A futex sleep after a spin that missed: where and when it began. Its end
** teaches `spin` and u (see "Spinning" in gil.c): a short sleep that a
** thread on another core ended turns spinning back on, and the time from
** that thread's wake to the sleeper's return is a wake-up's latency.
*/
typedef struct host_sleep {
  long long start;  /* CLOCK_MONOTONIC, ns */
  int cpu;
} host_sleep;
HOST_INTERNAL void spin_sleep_begin(host_sleep *sleep);
HOST_INTERNAL void spin_sleep_end(host_universe *u, host_spin *spin, const host_sleep *sleep,
                                  const host_waker *waker);

/* Notes in `waker` where and when the calling thread wakes its sleeper. */
HOST_INTERNAL void waker_note(host_waker *waker);

/*
** Called by a thread that has just moved the word another thread spins on:
** that thread no longer counts as spinning (it stops at once), so that the
** waker may spin in its turn.
*/
HOST_INTERNAL void spin_stop(host_universe *u, host_spin *spin);

/* Frees what the GIL keeps for thread ts (before its record is freed). */
HOST_INTERNAL void gil_forget(host_tstate *ts);

/*
** Stops ts's switch timer if it is armed (time_first_in_line in gil.c):
** before ts blocks in a binding without the GIL, or ends, so that no late
** signal interrupts a system call that the GIL has nothing to do with.
*/
HOST_INTERNAL void gil_disarm(host_tstate *ts);

/* True when an interrupt waits to be raised in thread ts (its universe's main). */
HOST_INTERNAL bool interrupt_wanted(host_tstate *ts);

/* Arms the one-shot hook on L, which thread ts runs (async-signal-safe). */
HOST_INTERNAL void arm_hook(host_tstate *ts, lua_State *L);

/* True when L runs a finalizer (__gc). */
HOST_INTERNAL bool in_finalizer(lua_State *L);

#endif
