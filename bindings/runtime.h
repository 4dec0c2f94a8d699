/*
** runtime.h: the universe (one global state and its GIL), floor 1.
**
** Every OS thread that runs Lua code in a universe has a host_tstate (kept
** in a C thread-local) and holds the GIL for every Lua API call. A thread
** releases the GIL only at consistency points: in the universe's hook, or
** in a C function around a blocking wait with its objects anchored on its
** own stack. Waits go through host_waitq so they release the GIL, honour a
** deadline and wake for an interrupt.
*/
#ifndef HOST_RUNTIME_H
#define HOST_RUNTIME_H

#include <pthread.h>
#include <stdatomic.h>
#include <sys/types.h>

#include "util.h"

typedef struct host_universe host_universe;
typedef struct host_tstate host_tstate;

/* The universe L belongs to (NULL if L was not made by host_newstate). */
host_universe *host_universe_of(lua_State *L);

/*
** The record of the calling OS thread in its universe (NULL outside one):
** a C thread-local, read inline (a lock takes it on every acquire). Only
** runtime.c writes it.
*/
extern _Thread_local host_tstate *host_current_ts;
static inline host_tstate *host_current(void) {
  return host_current_ts;
}

/* True when the calling OS thread is its universe's main thread. */
bool host_is_main_thread(void);

/* The Lua thread that the calling OS thread started in (not a coroutine). */
lua_State *host_thread_state(void);

/*
** Pushes the Lua thread object that identifies the calling OS thread in
** its universe (the same object from any coroutine it runs). It stays
** registered, and so alive, while the OS thread runs.
*/
void host_push_thread_key(lua_State *L);

/* ---- the GIL ---- */

/* host_gil_release and host_gil_acquire are public: see host.h. */

/*
** Finalizers. Lua stops its collector for the whole universe while a
** __gc runs. Decision: inside a finalizer, host_gil_release keeps the GIL
** and host_unlocked_sleep sleeps holding it (a sleep of 0 returns at
** once), so no other thread allocates with the collector stopped (a loop
** of finalizers calling thread.sleep(0) grew the heap without bound).
** Waits for another thread (host_waitq_wait, host_cond_wait: join, locks,
** events, queues, futures) still hand the GIL off, since only another
** thread can end them; the collector stays stopped meanwhile.
**
** Closing. While host_close closes the state (its finalizers run), the
** GIL is kept the same way, and a spawned (daemon) thread served the GIL
** parks for good instead of running (CPython's daemon threads at
** finalization): so a wait inside a finalizer at close may hand the GIL
** off, but no other thread's Lua code runs beside lua_close.
*/

/* True while host_close closes L's universe (see "Closing" above). */
bool host_closing(lua_State *L);

/* Number of times the GIL changed hands in L's universe. */
unsigned long long host_gil_switches(lua_State *L);

/* ---- OS threads of a universe ---- */

/*
** Starts a thread that runs `body(arg)` in L's universe with its own Lua
** thread `co` (made by the caller with lua_newthread and anchored by it),
** on an idle OS thread of the universe's cache or else a new one. The
** thread takes the GIL before calling body and releases it after; body
** runs with the GIL held, and leaves at least LUA_MINSTACK free slots on
** co (the runtime pushes there after it). `daemon` threads do not hold up
** host_close (nor do idle OS threads). Spawned threads block every
** asynchronous signal but the switch signal; SIGPIPE stays deliverable,
** so a write to a closed pipe ends the process as it does from the main
** thread. *ident is the OS thread's: unique among running threads, and
** usually that of a thread that ended before. Returns 0 or an errno
** value. Called with the GIL held.
*/
int host_spawn(lua_State *L, lua_State *co, bool daemon,
               void (*body)(lua_State *co, void *arg), void *arg,
               unsigned long *ident);

/*
** Registers the function on top (popped) to run at host_close, before it
** waits for non-daemon threads (Python's threading._register_atexit).
*/
void host_atexit(lua_State *L);

/*
** Before an exit (os.exit): ends the idle OS threads of the universe's
** cache, joins them and those that ended, and frees the records of the
** spawned threads that have finished. Called with the GIL held.
*/
void host_reap_threads(lua_State *L);

/*
** fork() for the process pool, called with the GIL held. In the child,
** which has only the calling thread, the universe is made single-threaded
** (the GIL the caller's, the thread list empty, the runtime's mutexes new).
** Locks that other threads held stay held in the child: code that runs
** there should not use them. Returns what fork returns.
*/
pid_t host_fork(lua_State *L);

/*
** Ends a child made by host_fork: flushes its stdio and leaves without any
** at-exit work, which belongs to the parent (its handlers, and a sanitizer's
** final report about threads the child never had).
*/
void host_exit_child(int status);

/*
** Flushes stdout and stderr, never waiting for another FILE's lock (a
** thread blocked in io.read holds stdin's): what host_fork, host_exit_child,
** os.exit and io.popen flush first, instead of fflush(NULL).
*/
void host_flush_std(void);

/* True in a child made by host_fork. */
bool host_in_fork_child(lua_State *L);

/*
** How many host_forks separate this process from the one that made L's
** universe (0 there): a record that points into other threads' stacks
** (a Condition's waiters) is stale once this changed.
*/
unsigned long host_fork_count(lua_State *L);

/* Number of OS threads running Lua code in L's universe, main included. */
int host_thread_count(lua_State *L);

/* The identifier of the calling OS thread (as `Thread.ident` shows it). */
unsigned long host_thread_ident(void);

/* The identifier of the main thread of L's universe (a host_newstate one). */
unsigned long host_main_thread_ident(lua_State *L);

/* ---- waiting without the GIL ---- */

/*
** A wait queue: where threads wait for state kept under the GIL. A notify
** hands each waiter a place in the GIL's line, so it wakes once, holding
** the GIL. It is refcounted so that a waiter parked at close never touches
** freed memory; every field is used with the GIL held.
*/
typedef struct host_waitq host_waitq;
struct host_waitq {
  int refs;              /* owner + waiters; under the GIL */
  host_tstate *waiters;  /* linked by wait_next, in the order they came; under the GIL */
};

/* A new wait queue with one reference, or NULL when memory is short. */
host_waitq *host_waitq_new(void);

/* Drops one reference (GIL held); the last one frees the queue. */
void host_waitq_unref(host_waitq *q);

typedef enum host_wait_result {
  HOST_WAIT_WOKEN,       /* notified (or woken spuriously): check again */
  HOST_WAIT_TIMEOUT,     /* the deadline passed */
  HOST_WAIT_INTERRUPTED  /* the universe was interrupted (main thread only) */
} host_wait_result;

/*
** With the GIL held: releases it, sleeps until host_waitq_notify, the
** deadline or an interrupt, and takes the GIL back. The caller re-checks its
** condition in a loop, and on HOST_WAIT_INTERRUPTED restores its invariants
** and calls host_raise_interrupt.
*/
host_wait_result host_waitq_wait(lua_State *L, host_waitq *q,
                                 const host_deadline *d);

/*
** For state guarded by a mutex rather than the GIL (futures completed by
** threads outside the universe). Called with the GIL held and `mu` locked:
** releases the GIL, waits once on cv (signal, deadline, or an interrupt of
** the main thread), unlocks mu and takes the GIL back. The caller locks mu
** again to re-check its condition.
*/
host_wait_result host_cond_wait(lua_State *L, pthread_mutex_t *mu,
                                pthread_cond_t *cv, const host_deadline *d);

/* Initialises a condition variable that times out on CLOCK_MONOTONIC. */
void host_cond_init(pthread_cond_t *cv);

/*
** Where and when the last futex wake of a sleeper came from (gil.c's
** waker_note): its sleeper learns from it whether spinning pays and how
** long a wake-up takes on this machine (see "Spinning" in gil.c).
*/
typedef struct host_waker {
  atomic_int cpu;
  atomic_llong at;  /* CLOCK_MONOTONIC, ns */
} host_waker;

/*
** A condition variable for state guarded by a mutex, whose waiter may spin
** before it sleeps where the GIL's rule says a spin pays (see "Spinning"
** in gil.c). `seq` is a futex word that moves with every change a waiter
** waits for, under the waiters' mutex; a waiter sleeps on it with the
** value it read under the mutex, so no change is missed, and it never
** takes the mutex back inside the wait (a pthread condvar does, which
** costs a futex wait and wake when the signaller still holds it). One
** waiter at a time spins (`spinner`): a host_cond_wake_one that finds it
** spinning wakes no sleeper.
*/
typedef struct host_cond {
  atomic_uint seq;
  atomic_int sleepers;   /* waiters asleep on seq, or about to be */
  atomic_int spinner;    /* a SPIN_ value of runtime.c */
  host_waker waker;      /* the last futex wake */
} host_cond;

/* Initialises c (nothing to free). */
void host_cond_spin_init(host_cond *c);

/*
** Wakes waiters of c in two steps: host_cond_changed with the waiters'
** mutex held (in the same hold as the change they wait for), then, at once
** or after the unlock (so that they do not wake to block on the mutex),
** host_cond_wake_one (the spinning waiter if there is one, else a
** sleeper) or host_cond_wake_all. host_cond_broadcast does both steps.
*/
void host_cond_changed(host_cond *c);
void host_cond_wake_one(host_cond *c);
void host_cond_wake_all(host_cond *c);
void host_cond_broadcast(host_cond *c);

/* host_cond_wait on c, spinning first where it pays (unlocks mu too). */
host_wait_result host_cond_wait_spin(lua_State *L, pthread_mutex_t *mu, host_cond *c,
                                     const host_deadline *d);

/* The number of threads waiting on q now (GIL held). */
int host_waitq_waiters(const host_waitq *q);

/*
** Wakes every waiter of q (GIL held). Inline, so that a notify nobody
** waits for (a Lock's release) costs no call.
*/
void host_waitq_notify_waiters(host_waitq *q);
static inline void host_waitq_notify(host_waitq *q) {
  if (q->waiters != NULL) host_waitq_notify_waiters(q);
}

/*
** Wakes one waiter of q that is still asleep (GIL held): the one that came
** last, which is the likeliest to be awake still, spinning before its
** sleep (a pool's idle workers: the one that just finished takes the next
** item); false when none is.
*/
bool host_waitq_notify_one(host_waitq *q);

/*
** Hands the first n waiters of q still asleep (in the order they came) a
** place in the GIL's line, as host_waitq_notify does for all of them, and
** returns how many it handed (GIL held). For a wake-up that only n waiters
** can use (a Lock's release, a Semaphore's n permits, one queued item): the
** others would wake only to sleep again, so N waiters made N such
** operations cost N^2 hand-offs of the GIL. A waiter so woken that leaves
** without what it waited for, while it is still there (an interrupt, an
** error), must pass the wake-up on the same way.
*/
int host_waitq_notify_first_n(host_waitq *q, int n);
static inline bool host_waitq_notify_first(host_waitq *q) {
  return q->waiters != NULL && host_waitq_notify_first_n(q, 1) > 0;
}

/*
** Hands thread ts a place in the GIL's line if it sleeps on q now (GIL
** held): a notify meant for one known waiter (a Condition's) wakes no
** other. A ts not on q runs or is about to: it sees its new state itself.
*/
void host_waitq_notify_thread(host_waitq *q, host_tstate *ts);

/* Like host_waitq_wait, but an interrupt does not end the wait. */
host_wait_result host_waitq_wait_uninterrupted(lua_State *L, host_waitq *q,
                                               const host_deadline *d);

/*
** Sleeps until `d` without the GIL (with it in a finalizer or at close);
** returns false when interrupted.
*/
bool host_unlocked_sleep(lua_State *L, const host_deadline *d);

/*
** Interrupts L's universe until host_clear_interrupt: its main thread's
** Lua code fails with "interrupted!" at every instruction (and its waits
** end), so no pcall, xpcall, message handler, __close or coroutine can
** swallow it, and a debug.sethook hook does not hide it. What it cannot
** reach: a C function that never returns to Lua, a user's hook function
** and a __gc finalizer (Lua runs both with hooks off). Async-signal-safe.
** The interpreter pool stops a task with it.
*/
void host_interrupt_sticky(lua_State *L);

/* Forgets an interrupt of L's universe (sticky or not) not raised yet. */
void host_clear_interrupt(lua_State *L);

/*
** True once host_close has begun on L's universe (its exit handlers ran or
** run): the pools refuse to start then, as CPython refuses new futures
** after interpreter shutdown, since no exit handler would stop them.
*/
bool host_exiting(lua_State *L);

/* Raises "interrupted!" when the main thread has an interrupt pending. */
void host_check_interrupt(lua_State *L);

/* Raises "interrupted!" (after a wait said HOST_WAIT_INTERRUPTED). */
int host_raise_interrupt(lua_State *L);

/* ---- what a thread waits for: dumps and deadlock detection ---- */

/*
** Says what the calling thread's next wait (host_waitq_wait, host_cond_wait)
** is for, GIL held: `what` is the type ("host.Lock"), `detail` its state
** ("locked by"), both static strings; `obj` the object (its address is
** printed); `holder` the one thread that can end the wait (a lock's owner,
** a joined thread), or NULL. The wait clears it when it returns, so call it
** before each wait. A thread of L's universe blocked without a deadline in
** host_waitq_wait counts as blocked for deadlock detection until the queue
** is notified; host_cond_wait waits (which a thread outside the universe
** may end) never count.
*/
void host_wait_on(lua_State *L, const char *what, const char *detail,
                  const void *obj, host_tstate *holder);

/* The record of the running thread of L's universe whose ident is `ident`, or NULL. */
host_tstate *host_tstate_of_ident(lua_State *L, unsigned long ident);

/* Pushes `thread 3 "worker"` for ts (1 is the main thread; the name when known). */
void host_push_thread_label(lua_State *L, host_tstate *ts);

/*
** Pushes the dump of every thread of L's universe (what host_dump_tracebacks
** prints): each thread's label, what it waits for and where, and the
** traceback of the coroutine it runs. The calling thread's traceback
** starts at the C function that calls host_push_dump, or `skip` levels
** above it.
*/
void host_push_dump(lua_State *L, int skip);

/* ---- preemption ---- */

/* The interval policy's period in seconds, and the instruction policy's n. */
double host_get_switch_interval(lua_State *L, int *instructions);

/*
** Resumes coroutine `co` from L like lua_resume, keeping track of the
** coroutine the OS thread is running so that preemption reaches it.
*/
int host_resume(lua_State *L, lua_State *co, int nargs, int *nresults);


#endif
