/*
** gil.c: the GIL of a universe and its preemption.
**
** The protocol. The GIL is a ticket lock: a thread takes a ticket with one
** atomic fetch_add (next_ticket) and holds the GIL while `serving` equals
** it; giving it up serves the next ticket. A thread that is not served at
** once joins the line (the list of its ticket's slot) and sleeps on its
** own futex word (`park`); the giver moves `serving` first and then wakes
** the thread in line with that ticket, so no wake-up is lost, and nobody
** waiting costs no system call.
**
** The direct hand-off. A thread that waits for a notify (host_waitq_wait)
** gives the GIL up marked HAND_SLEEPING; a notifier, which holds the GIL,
** takes a ticket for it and puts it in the line (gil_handoff) without
** waking it, so it wakes once, when it is served, instead of waking to
** sleep again on the GIL. A waiter whose deadline passes first takes a
** ticket of its own; a compare-and-swap on its hand-off state decides
** which of the two happens.
**
** Spinning. A thread about to sleep where the wait is likely short (first
** in line, or waiting for a notify) first spins on its futex word for a
** bound learned from its own recent waits, so that the thread that wakes
** it finds it awake: no system call on either side, no idle core to wake.
** No bound passes what a sleep and its wake-up cost, which the
** universe learns from its sleeps (spin_max).
** It spins only while fewer of the universe's threads run than there are
** cores (the holder, and those spinning already). A spin that ends without
** the wake-up turns spinning off for that thread, or doubles the gap to
** its next try, up to one in 256 sleeps; one that succeeds halves it. So
** on a machine where the holder needs the spinner's core the spin costs
** about nothing (spin_end). A sleep that a thread on another core ended
** within a few spins' time turns spinning on again (spin_slept): two threads
** that pass work back and forth would otherwise stay asleep for good once
** each has missed the other, a sleeper being slow to wake. A spin is a
** wait like the sleep it replaces: the ticket order and the preemption are the same. The waits
** on a host_cond (runtime.c: a future completed from another universe,
** an interpreter pool's idle worker) spin by the same rule (spin_wait),
** the thread's own learning shared with its GIL waits, and their sleeps
** teach it as park_wait's do (spin_sleep_end).
**
** Preemption. The first in line times the switch interval; when it has
** waited that long it sends SWITCH_SIGNAL to the holder's OS thread, whose
** handler arms a one-shot hook on the Lua state that thread is running
** (what lua.c does for SIGINT); the hook gives the GIL up and queues again.
** A waiter handed a place first in line sleeps and cannot time it, so the
** notifier arms a timer that signals itself after the interval instead.
** Under the instruction policy a jittered count hook yields without a
** signal. Fairness is the ticket order throughout: a handed waiter goes to
** the back of the line like any other.
*/
#include <errno.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "trace.h"
#include "universe.h"

/*
** ThreadSanitizer delivers an asynchronous signal only when the thread next
** enters an intercepted libc call, which a pure Lua loop never does. Its
** builds therefore keep a sparse count hook armed for good; the hook reads
** the clock (an intercepted call, so pending signals run) and then checks
** the universe's flags. Other builds arm the hook only on demand.
*/
#if defined(__SANITIZE_THREAD__)
#define HOST_POLL_HOOK 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define HOST_POLL_HOOK 1
#endif
#endif
#define POLL_PERIOD 1000

/* glibc 2.36 names the field of SIGEV_THREAD_ID only in its own header. */
#ifndef sigev_notify_thread_id
#define sigev_notify_thread_id _sigev_un._tid
#endif

#define DEFAULT_SWITCH_INTERVAL 0.005
#define MIN_SWITCH_INTERVAL 1e-6
#define MAX_SWITCH_INTERVAL 3600.0

static void universe_hook(lua_State *L, lua_Debug *ar);

/* xorshift64*: the per-thread jitter source. */
static uint64_t next_random(host_tstate *ts) {
  uint64_t x = ts->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  ts->rng = x;
  return x * 0x2545F4914F6CDD1DULL;
}

/* A count period drawn from [n/2, 3n/2), so no loop body aligns with it. */
static int jittered_period(host_tstate *ts, int n) {
  int low = n / 2 > 0 ? n / 2 : 1;
  return low + (int)(next_random(ts) % (uint64_t)n);
}

/* ---- preemption ---- */

/*
** Sets the hook a Lua state has when nothing is requested: the jittered
** count hook under the instruction policy, the polling hook in TSan builds,
** none otherwise. A hook the user set with debug.sethook is left alone:
** that state is then not preempted until the user's hook is removed.
*/
static void set_base_hook(host_tstate *ts, lua_State *L) {
  lua_Hook h = lua_gethook(L);
  if (h != NULL && h != universe_hook) return;
  int n = atomic_load(&ts->u->instructions);
  if (n > 0) {
    lua_sethook(L, universe_hook, LUA_MASKCOUNT, jittered_period(ts, n));
  } else {
#ifdef HOST_POLL_HOOK
    lua_sethook(L, universe_hook, LUA_MASKCOUNT, POLL_PERIOD);
#else
    if (h != NULL) lua_sethook(L, NULL, 0, 0);
#endif
  }
}

/* True when an interrupt waits to be raised in thread ts (its universe's main). */
bool interrupt_wanted(host_tstate *ts) {
  host_universe *u = ts->u;
  return ts == &u->main_ts && (atomic_load(&u->interrupted) || atomic_load(&u->stopping));
}

/*
** Arms the one-shot hook on L, which thread ts runs. A user's hook
** (debug.sethook) stays, which keeps the thread from being preempted. But
** an interrupt does not wait: it puts a user's hook aside in ts for
** universe_hook to put back (so debug.sethook cannot make a task deaf to
** interrupts). Async-signal-safe (lua_sethook is, as lua.c relies on for
** Ctrl-C).
**
** The universe's own hook is set again even when it is there already.
** Lua's VM turns a frame's trap off when it finds no hook (luaG_traceexec
** reads the mask, then clears the trap): a signal that sets the hook
** between the two leaves it set with the trap off, and a loop that calls
** nothing then never runs it, so the thread holds the GIL for good (seen
** at a 1 us switch interval). Setting it again sets the traps again: the
** next request gets through.
*/
void arm_hook(host_tstate *ts, lua_State *L) {
  lua_Hook h = lua_gethook(L);
  if (h != NULL && h != universe_hook) {
    lua_State *pending = atomic_load(&ts->saved_for);
    if (!interrupt_wanted(ts) || (pending != NULL && pending != L)) return;
    ts->saved_hook = h;
    ts->saved_mask = lua_gethookmask(L);
    ts->saved_count = lua_gethookcount(L);
    atomic_store(&ts->saved_for, L);
  }
  lua_sethook(L, universe_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

/*
** SWITCH_SIGNAL: arm the hook in each universe whose GIL this thread holds
** right now (the signal does not say which universe asked). Not in one that
** host_close closes: its state is freed at the end of lua_close, with the
** record still current, and nothing is preempted there anyway.
*/
static void on_switch_signal(int sig) {
  (void)sig;
  int saved = errno;
  for (host_tstate *ts = host_current(); ts != NULL; ts = ts->outer) {
    atomic_store(&ts->timer_armed, 0);  /* its timer fired, or it is asked anyway */
    if (atomic_load(&ts->holding) && !atomic_load(&ts->u->closing))
      arm_hook(ts, atomic_load(&ts->running));
  }
  errno = saved;
}

/* Installs the SWITCH_SIGNAL handler (idempotent, process-wide). */
static void install_switch_handler(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_switch_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SWITCH_SIGNAL, &sa, NULL);
}

/* Asks the GIL holder to yield (a waiter has waited a switch interval). */
static void request_switch(host_universe *u) {
  pthread_mutex_lock(&u->threads_mu);  /* keeps the holder from being reaped */
  host_tstate *h = atomic_load(&u->holder);
  if (h != NULL) pthread_kill(h->pthread, SWITCH_SIGNAL);
  pthread_mutex_unlock(&u->threads_mu);
}

/* ---- the GIL ---- */

/* ---- the spin before a sleep ---- */

#define SPIN_MAX_NS 10000     /* the longest spin where a wake-up is quicker, the first one's bound */
#define SPIN_CAP_NS 100000    /* the longest spin where a wake-up is slow (spin_max) */
#define SPIN_MIN_NS 2000      /* the shortest bound a success teaches */
#define SPIN_MAX_BACKOFF 8    /* off: a try every 2^8 sleeps at the least */
#define SPIN_RETRIES 4        /* looks again at a full count, 8 pauses apart */
#define SPIN_SLEPT_NS 50000   /* a sleep this short, ended from another core, turns spinning on, */
#define SPIN_SLEPT_TIMES 2    /* as does one up to this many longest spins (spin_slept) */
#define LEAVE_SPINS 64        /* pauses a served thread waits to be taken out of the line */

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

/* The CLOCK_MONOTONIC time in nanoseconds (a vDSO read, no system call). */
static long long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/*
** The longest spin in u: about what a sleep and its wake-up cost, so that
** a spin that misses costs no more than the sleep it tried to spare
** (spinning for up to the cost of blocking, the classic bound). That cost
** is the latency of a wake-up, learned from u's sleeps (spin_sleep_end):
** 4 to 12 us on most machines, where SPIN_MAX_NS covers it; over 20 us on
** some virtual machines, where an idle virtual core is slow to wake and
** a bound below the latency makes both sides of every hand-off miss.
*/
static long spin_max(host_universe *u) {
  long long wake = atomic_load_explicit(&u->wake_ns, memory_order_relaxed);
  long long bound = wake + wake / 2;
  return bound < SPIN_MAX_NS ? SPIN_MAX_NS : bound > SPIN_CAP_NS ? SPIN_CAP_NS : (long)bound;
}

/*
** True when a thread is to spin before this sleep, counted then in
** u->spinning (spin_stop takes it out): spinning is on for it, or this is
** the sleep on which it tries again, and another core is free of u's
** threads (the GIL's holder runs on one, each spinner on another). It is
** marked active before it counts itself, so that a waker that comes
** meanwhile takes it out (spin_stop) instead of leaving it counted while
** it no longer spins. A count that is full may be so only for a moment (a
** thread that was just served counts until it sees so): it looks again
** for a few hundred nanoseconds before it gives up.
*/
static bool spin_begin(host_universe *u, host_spin *spin, atomic_uint *word, unsigned seen) {
  if (spin->backoff > 0) {
    if (++spin->skipped < (1u << spin->backoff)) return false;
    spin->skipped = 0;
  }
  for (int i = 0;; i++) {
    atomic_store(&spin->active, true);
    if (atomic_fetch_add(&u->spinning, 1) + 1 < u->cores) return true;
    spin_stop(u, spin);
    if (i == SPIN_RETRIES) return false;
    for (int j = 0; j < 8 && atomic_load_explicit(&u->spinning, memory_order_relaxed) + 1 >= u->cores; j++) {
      if (atomic_load_explicit(word, memory_order_relaxed) != seen) return true;  /* woken: the spin ends at once */
      cpu_relax();
    }
  }
}

void spin_stop(host_universe *u, host_spin *spin) {
  if (atomic_load(&spin->active) && atomic_exchange(&spin->active, false))
    atomic_fetch_sub(&u->spinning, 1);
}

/*
** Learns from a spin that took `spent` ns. One that saw the wake-up sets
** the bound to four times the longest recent spin (a longer one raises it
** at once, shorter ones lower it by an eighth each) and halves the gap
** between tries; one that did not doubles it (the first miss turns spinning
** off). So a thread spins at every sleep only while most spins succeed,
** and where most fail (the holder needs the spinner's core) it tries once
** every 256 sleeps: a miss costs at most spin_max.
*/
static void spin_end(host_universe *u, host_spin *spin, bool woken, long long spent) {
  spin_stop(u, spin);  /* unless its waker did */
  long most = spin_max(u);
  if (woken) {
    long bound = spin->ns > 0 ? spin->ns : most;
    bound -= bound / 8;
    if (4 * spent > bound) bound = (long)(4 * spent);
    spin->ns = bound < SPIN_MIN_NS ? SPIN_MIN_NS : bound > most ? most : bound;
    if (spin->backoff > 0) spin->backoff--;
  } else {
    spin->ns = most;  /* a try after a back-off gets the whole bound */
    if (spin->backoff < SPIN_MAX_BACKOFF) spin->backoff++;
  }
}

/*
** Learns from a sleep that a wake-up from another core ended after
** `slept` ns. A short one turns spinning on again for that thread: two
** threads that hand work back and forth would otherwise stay asleep for
** good once each has missed the other. Each one's wait then holds the
** other's wake-up (tens of microseconds on an idle virtual core, more than
** a spin's bound), so each spin misses and both back off, while both
** spinning would catch every hand-off: hence a window of SPIN_SLEPT_NS,
** longer than the longest spin where wake-ups are quick, or twice the
** longest spin where they are slow (a sleep holds one of them). A window
** that grew with the spin alone would, on a loaded machine whose delays
** swell the learned latency, keep every thread spinning the longest spin
** at each wait. A wake-up from the sleeper's own core says the opposite
** (the two share a core, another process has the other): the caller does
** not count it.
*/
static void spin_slept(host_universe *u, host_spin *spin, long long slept) {
  long long window = SPIN_SLEPT_TIMES * (long long)spin_max(u);
  if (slept > (window > SPIN_SLEPT_NS ? window : SPIN_SLEPT_NS)) return;
  spin->backoff = 0;
  spin->skipped = 0;
}

void spin_sleep_begin(host_sleep *sleep) {
  sleep->start = now_ns();
  sleep->cpu = sched_getcpu();
}

void waker_note(host_waker *waker) {
  atomic_store_explicit(&waker->cpu, sched_getcpu(), memory_order_relaxed);
  atomic_store_explicit(&waker->at, now_ns(), memory_order_relaxed);
}

/*
** Learns from a sleep that a futex wake ended: a wake-up from another
** core teaches spin_slept, and the time from it to now is a sample of
** the wake-up's latency, which u->wake_ns follows (an eighth of the way
** each time; a sample over twice SPIN_CAP_NS is a sleeper whose core ran
** something else, not a wake-up, and is cut there). The note may be of a
** later wake of the same word, for another sleeper: then the sample is
** short, and the average moves a little the safe way (shorter spins).
*/
void spin_sleep_end(host_universe *u, host_spin *spin, const host_sleep *sleep,
                    const host_waker *waker) {
  if (atomic_load_explicit(&waker->cpu, memory_order_relaxed) == sleep->cpu) return;
  long long now = now_ns();
  spin_slept(u, spin, now - sleep->start);
  long long at = atomic_load_explicit(&waker->at, memory_order_relaxed);
  if (at < sleep->start || at > now) return;  /* an earlier sleep's */
  long long sample = now - at, cut = 2LL * SPIN_CAP_NS;
  if (sample > cut) sample = cut;
  long long avg = atomic_load_explicit(&u->wake_ns, memory_order_relaxed);
  atomic_store_explicit(&u->wake_ns, avg + (sample - avg) / 8, memory_order_relaxed);
}

bool spin_wait(host_universe *u, host_spin *spin, atomic_uint *word, unsigned seen,
               const struct timespec *at) {
  if (!spin_begin(u, spin, word, seen)) return false;
  long long start = now_ns(), spent = 0;
  long long end = start + (spin->ns > 0 ? spin->ns : spin_max(u));
  if (at != NULL) {
    long long limit = (long long)at->tv_sec * 1000000000LL + at->tv_nsec;
    if (limit < end) end = limit;
  }
  bool woken = false;
  for (unsigned i = 1;; i++) {
    if (atomic_load_explicit(word, memory_order_acquire) != seen) {
      woken = true;
      break;
    }
    cpu_relax();
    if (i % 32 == 0 && (spent = now_ns() - start) >= end - start) break;
  }
  if (woken) spent = now_ns() - start;
  spin_end(u, spin, woken, spent);
  return woken;
}

/*
** Sleeps until ts->park moves from `seen`, a wake-up, or until `at` (an
** absolute CLOCK_MONOTONIC time; NULL: no limit), after a spin if `spin`
** (see "Spinning" above), whose learning then hears how long the sleep
** took too (spin_slept). False when it timed out.
*/
static bool park_wait(host_tstate *ts, unsigned seen, const struct timespec *at, bool spin) {
  if (spin && spin_wait(ts->u, &ts->spin, &ts->park, seen, at)) return true;
  host_sleep sleep;
  if (spin) spin_sleep_begin(&sleep);
  atomic_store(&ts->parked, true);
  long rc = syscall(SYS_futex, &ts->park, FUTEX_WAIT_BITSET_PRIVATE, seen, at, NULL,
                    FUTEX_BITSET_MATCH_ANY);
  int err = errno;
  atomic_store(&ts->parked, false);
  bool woken = !(rc == -1 && err == ETIMEDOUT);
  if (spin && woken) spin_sleep_end(ts->u, &ts->spin, &sleep, &ts->waker);
  return woken;
}

/*
** Wakes ts from park_wait. The waker moves `park` before it reads
** `parked`, the sleeper sets `parked` before the kernel reads `park`: one
** of the two sees the other, and a thread not asleep costs no system call.
*/
static void park_wake(host_tstate *ts) {
  atomic_fetch_add(&ts->park, 1);
  if (atomic_load(&ts->parked)) {
    waker_note(&ts->waker);
    syscall(SYS_futex, &ts->park, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
  } else
    spin_stop(ts->u, &ts->spin);
}

/* Puts ts in the line with ticket t: who serves t wakes it. */
static void line_join(host_universe *u, host_tstate *ts, unsigned long long t) {
  struct gil_slot *s = &u->slot[t % GIL_SLOTS];
  pthread_mutex_lock(&s->mu);
  atomic_store(&ts->gil_ticket, t);
  atomic_store(&ts->in_line, true);
  ts->line_next = s->line;
  s->line = ts;
  pthread_mutex_unlock(&s->mu);
}

/*
** Takes ts out of the line (it has been served), unless the thread that
** served it did (wake_ticket): then the slot's mutex is not touched, so a
** waiter that spins does not find it held by its waker. A waiter sees
** itself served (serving, its park word) while its server still holds
** that mutex to take it out: it waits a moment for that instead of
** blocking on the mutex, which sleeps at once (measured: a blocked
** line_leave cost the served thread about a microsecond a hand-off).
*/
static void line_leave(host_universe *u, host_tstate *ts) {
  for (int i = 0; i < LEAVE_SPINS && atomic_load_explicit(&ts->in_line, memory_order_relaxed); i++)
    cpu_relax();
  if (!atomic_load(&ts->in_line)) return;
  struct gil_slot *s = &u->slot[atomic_load(&ts->gil_ticket) % GIL_SLOTS];
  pthread_mutex_lock(&s->mu);
  if (atomic_load(&ts->in_line)) {
    host_tstate **p = &s->line;
    while (*p != ts) p = &(*p)->line_next;
    *p = ts->line_next;
    atomic_store(&ts->in_line, false);
  }
  pthread_mutex_unlock(&s->mu);
}

/*
** Wakes the thread in line with ticket t, if it is there yet; `serve` (t
** is served now) takes it out of the line too, and says so last: a served
** thread that finds itself out of the line goes on without the slot's
** mutex, and may have ended before the mutex is unlocked. The
** system call comes after the slot's mutex is unlocked, so the woken
** thread does not find it held. By then that thread may have run on and
** ended: a futex wake of memory that is gone, or is something else's now,
** wakes nobody or a sleeper who checks its condition again, as every
** park_wait and glibc's own waits do (glibc wakes after unlock the same
** way).
*/
static void wake_ticket(host_universe *u, unsigned long long t, bool serve) {
  struct gil_slot *s = &u->slot[t % GIL_SLOTS];
  atomic_uint *word = NULL;
  pthread_mutex_lock(&s->mu);
  for (host_tstate **p = &s->line; *p != NULL; p = &(*p)->line_next) {
    host_tstate *w = *p;
    if (atomic_load(&w->gil_ticket) == t) {
      if (serve) *p = w->line_next;
      atomic_fetch_add(&w->park, 1);
      if (atomic_load(&w->parked)) {
        waker_note(&w->waker);
        word = &w->park;
      } else {
        spin_stop(u, &w->spin);
      }
      /* the last touch of w: once out of the line it may run on and end */
      if (serve) atomic_store(&w->in_line, false);
      break;
    }
  }
  pthread_mutex_unlock(&s->mu);
  if (word != NULL) syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/*
** Sleeps, in the line, until ts's ticket is served; the first in line asks
** for a switch after a switch interval. A thread joins the line before it
** reads `serving`, and a giver moves `serving` before it looks in the
** line, so one of the two always sees the other.
*/
static void wait_turn(host_universe *u, host_tstate *ts) {
  unsigned long long t = atomic_load(&ts->gil_ticket);
  for (;;) {
    unsigned seen = atomic_load(&ts->park);
    unsigned long long serving = atomic_load(&u->serving);
    if (serving == t) break;
    if (serving + 1 == t) {
      double interval = (double)atomic_load(&u->interval_ns) * 1e-9;
      host_deadline d = host_deadline_in(interval);
      if (!park_wait(ts, seen, &d.at, true) && atomic_load(&u->serving) == serving)
        request_switch(u);
    } else {
      park_wait(ts, seen, NULL, false);
    }
  }
  line_leave(u, ts);
  atomic_fetch_add(&u->switches, 1);
}

/* What a thread does each time it has taken the GIL. */
static void after_take(host_universe *u, host_tstate *ts) {
  atomic_store(&u->holder, ts);
  atomic_store(&ts->holding, true);
  HOST_TRACE(u, host_trace_gil(ts, true));
  if (ts->policy_seen != atomic_load(&u->policy_epoch)) {
    ts->policy_seen = atomic_load(&u->policy_epoch);
    set_base_hook(ts, atomic_load(&ts->running));
  }
  if (interrupt_wanted(ts)) arm_hook(ts, atomic_load(&ts->running));
}

/*
** What a spawned thread does when it is served the GIL while host_close
** closes the state (only daemon threads run then): it gives the GIL back
** and parks for good, as CPython's daemon threads do at finalization, so
** that no Lua code runs beside lua_close and its finalizers.
*/
static _Noreturn void park_at_close(host_universe *u, host_tstate *ts) {
  gil_give(u, ts);
  for (;;) pause();
}

/* What a thread that has been served does before it runs. */
static void served(host_universe *u, host_tstate *ts) {
  if (atomic_load(&u->closing) && ts != &u->main_ts) park_at_close(u, ts);
  after_take(u, ts);
}

/* Takes the GIL for ts: a ticket, then wait for it unless served at once. */
void gil_take(host_universe *u, host_tstate *ts) {
  unsigned long long t = atomic_fetch_add(&u->next_ticket, 1);
  if (atomic_load(&u->serving) != t) {
    line_join(u, ts, t);
    wait_turn(u, ts);
  }
  served(u, ts);
}

/*
** Gives the GIL up: serve the next ticket and wake it if it waits. The one
** after it is now first in line: wake it too, so it starts timing the
** switch interval (asleep without a timer, it could never ask a thread
** that does not block to yield).
*/
void gil_give(host_universe *u, host_tstate *ts) {
  HOST_TRACE(u, host_trace_gil(ts, false));
  atomic_store(&ts->holding, false);
  atomic_store(&u->holder, NULL);
  unsigned long long next = atomic_fetch_add(&u->serving, 1) + 1;
  unsigned long long end = atomic_load(&u->next_ticket);
  if (end > next) wake_ticket(u, next, true);
  if (end > next + 1) wake_ticket(u, next + 1, false);
}

/* ---- the direct hand-off ---- */

void gil_give_to_sleep(host_universe *u, host_tstate *ts) {
  atomic_store(&ts->hand, HAND_SLEEPING);
  gil_give(u, ts);
}

/*
** The kernel compares the deadline with the clock (a futex wait until a
** time that has passed fails at once), so no clock is read here.
*/
bool gil_sleep(host_universe *u, host_tstate *ts, const host_deadline *d) {
  (void)u;
  for (;;) {
    unsigned seen = atomic_load(&ts->park);
    if (atomic_load(&ts->hand) != HAND_SLEEPING) return true;
    if (!park_wait(ts, seen, d->never ? NULL : &d->at, true))
      return atomic_load(&ts->hand) != HAND_SLEEPING;
  }
}

/*
** A thread not handed a place takes a ticket of its own; one handed a
** place (or being handed one: the notifier holds the GIL and is quick)
** waits for its turn.
*/
bool gil_wake_up(host_universe *u, host_tstate *ts) {
  int expected = HAND_SLEEPING;
  if (atomic_compare_exchange_strong(&ts->hand, &expected, HAND_NONE)) {
    gil_take(u, ts);
    return false;
  }
  while (atomic_load(&ts->hand) != HAND_HANDED) sched_yield();
  atomic_store(&ts->hand, HAND_NONE);
  wait_turn(u, ts);
  served(u, ts);
  return true;
}

/*
** A thread handed a place first in line sleeps, so it cannot time the
** switch interval as a waiter in line does (wait_turn). The notifier, which
** holds the GIL, times it for it instead: a timer of its own sends it
** SWITCH_SIGNAL after the interval, whose hook yields if another thread
** still waits then (early is harmless: it yields only to a waiter). A timer
** that is armed already is left to run, so this costs at most one
** timer_settime per interval, and no clock is read: the signal handler
** marks the timer fired (any SWITCH_SIGNAL does, which at worst re-arms it
** early). Without a timer (none could be made), a waiter first in line is
** woken to time it.
*/
static bool time_first_in_line(host_universe *u) {
  host_tstate *ts = tstate_in(u);
  if (ts == NULL || !atomic_load(&ts->holding)) return false;
  long long interval = atomic_load(&u->interval_ns);
  long long armed = atomic_load(&ts->timer_armed);
  /* armed under a longer interval (setswitchinterval lowered it): re-arm */
  if (ts->has_timer && armed != 0 && armed <= interval) return true;
  if (!ts->has_timer) {
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = SWITCH_SIGNAL;
    sev.sigev_notify_thread_id = (pid_t)syscall(SYS_gettid);
    ts->has_timer = timer_create(CLOCK_MONOTONIC, &sev, &ts->switch_timer) == 0;
  }
  struct itimerspec its;
  memset(&its, 0, sizeof its);
  its.it_value.tv_sec = (time_t)(interval / 1000000000);
  its.it_value.tv_nsec = (long)(interval % 1000000000);
  if (!ts->has_timer) return false;
  atomic_store(&ts->timer_armed, interval);  /* before the timer can fire */
  if (timer_settime(ts->switch_timer, 0, &its, NULL) == 0) return true;
  atomic_store(&ts->timer_armed, 0);
  return false;
}

/*
** The notifier takes the ticket for w and puts w in the line, where the
** thread that serves it wakes it. The notifier holds the GIL, so that
** ticket is not served yet; were it served (a misuse, or the negative
** control's threads that hold no GIL), w is woken at once. A w first in
** line is not woken, asleep or spinning: the notifier's timer times the
** switch interval for it (time_first_in_line), and w wakes once, when it
** is served. Woken at once, a spinning w would start a second spin and
** pull its lines (its hand-off state, the count of spinners) back and
** forth with the notifier, which still runs and needs them (measured:
** each transfer between cores costs about 150 ns here).
*/
bool gil_handoff(host_universe *u, host_tstate *w) {
  int expected = HAND_SLEEPING;
  if (!atomic_compare_exchange_strong(&w->hand, &expected, HAND_HANDING)) return false;
  unsigned long long t = atomic_fetch_add(&u->next_ticket, 1);
  line_join(u, w, t);
  HOST_TRACE(u, host_trace_handoff(tstate_in(u), w));
  atomic_store(&w->hand, HAND_HANDED);
  unsigned long long serving = atomic_load(&u->serving);
  if (serving == t) park_wake(w);
  else if (serving + 1 == t && !time_first_in_line(u)) park_wake(w);
  return true;
}

void gil_disarm(host_tstate *ts) {
  if (!ts->has_timer || atomic_load(&ts->timer_armed) == 0) return;
  struct itimerspec off;
  memset(&off, 0, sizeof off);
  timer_settime(ts->switch_timer, 0, &off, NULL);
  atomic_store(&ts->timer_armed, 0);
}

void gil_forget(host_tstate *ts) {
  if (ts->has_timer) timer_delete(ts->switch_timer);
  ts->has_timer = false;
}

/* True when another thread waits for the GIL. */
static bool gil_contended(host_universe *u) {
  return atomic_load(&u->next_ticket) - atomic_load(&u->serving) > 1;
}

/* A misuse that would break the GIL for every thread: stop at once. */
static void gil_misuse(const char *what) {
  fprintf(stderr, "host: fatal: %s\n", what);
  fflush(stderr);
  abort();
}

/*
** True when some frame of L is a finalizer (lua_getinfo names it "__gc"),
** or when L is a coroutine that a finalizer of this thread resumed (see
** host_resume). The walk of in_finalizer, kept out of line so that its
** fast test (on every resume) does not pay this frame's lua_Debug.
*/
__attribute__((noinline)) static bool finalizer_frames(lua_State *L) {
  host_tstate *ts = member_of(L);
  if (ts != NULL && ts->finalizer_resumes > 0) return true;  /* see host_resume */
  lua_Debug ar;
  for (int level = 0; lua_getstack(L, level, &ar); level++) {
    if (lua_getinfo(L, "n", &ar) && ar.namewhat != NULL && ar.name != NULL &&
        strcmp(ar.namewhat, "metamethod") == 0 && strcmp(ar.name, "__gc") == 0)
      return true;
  }
  return false;
}

/*
** True when L runs a finalizer (__gc). Lua stops its collector while a
** finalizer runs (lua_gc answers -1 to everything then), for every thread
** of the universe: a finalizer that handed the GIL off while it sleeps or
** blocks in C would let the others allocate with no collection at all, and
** a loop of such finalizers grows the heap without bound. So inside a
** finalizer, sleeps and host_gil_release keep the GIL (see runtime.h).
** The cheap global check comes first; the walk of L's frames only while
** some finalizer runs.
*/
bool in_finalizer(lua_State *L) {
  return lua_gc(L, LUA_GCISRUNNING, 0) == -1 && finalizer_frames(L);
}

void host_gil_release(lua_State *L) {
  host_tstate *ts = member_of(L);
  if (ts == NULL) return;
  if (ts->user_release != USER_HOLDING)
    gil_misuse("host_gil_release called twice without host_gil_acquire");
  if (atomic_load(&ts->u->closing) || in_finalizer(L)) {
    ts->user_release = USER_KEPT;
    return;
  }
  if (!atomic_load(&ts->holding))
    gil_misuse("host_gil_release called by a thread that does not hold the GIL");
  ts->user_release = USER_RELEASED;
  gil_disarm(ts);  /* a binding's blocking call must not see its EINTR */
  gil_give(ts->u, ts);
}

void host_gil_acquire(lua_State *L) {
  host_tstate *ts = member_of(L);
  if (ts == NULL) return;
  int was = ts->user_release;
  if (was == USER_HOLDING)
    gil_misuse("host_gil_acquire called without host_gil_release");
  if (was == USER_RELEASED) gil_take(ts->u, ts);
  ts->user_release = USER_HOLDING;  /* with the GIL: a dump reads it */
}

unsigned long long host_gil_switches(lua_State *L) {
  host_universe *u = host_universe_of(L);
  return u ? atomic_load(&u->switches) : 0;
}

/* Puts back the hook L had before the one-shot hook: a user's, or the base. */

static void restore_hook(host_tstate *ts, lua_State *L) {
  if (atomic_load(&ts->saved_for) == L) {
    lua_Hook h = ts->saved_hook;
    int mask = ts->saved_mask, count = ts->saved_count;
    atomic_store(&ts->saved_for, NULL);  /* a signal now sees our hook: no race */
    lua_sethook(L, h, mask, count);
  } else {
    set_base_hook(ts, L);
  }
}

/*
** False at the call or return of a C function: an error raised there could
** land in a message handler (host_pcall's traceback) while an error is
** being handled, and turn it into "error in error handling".
*/
static bool can_raise(lua_State *L, lua_Debug *ar) {
  if (ar->event == LUA_HOOKCOUNT || ar->event == LUA_HOOKLINE) return true;
  return lua_getinfo(L, "S", ar) && ar->what[0] != 'C';
}

/*
** The universe's hook, armed one-shot on request, or as the count hook of
** the instruction policy or of polling builds. It restores the hook that
** was there before, raises a pending interrupt in the main thread, and
** yields the GIL when another thread waits for it. A sticky interrupt
** (host_interrupt_sticky) arms the hook again before it raises, so the
** next instruction raises again, wherever a pcall caught the last one.
*/
static void universe_hook(lua_State *L, lua_Debug *ar) {
  host_tstate *ts = member_of(L);
  if (ts == NULL) return;
  host_universe *u = ts->u;
#ifdef HOST_POLL_HOOK
  (void)host_now();  /* an intercepted call: pending signals run here */
#endif
  restore_hook(ts, L);
  /* a finalizer (and a coroutine it resumed) keeps the GIL; another thread
  ** that runs while a finalizer waits for it is preempted as usual */
  if (gil_contended(u) && !in_finalizer(L)) {
    HOST_TRACE(u, host_trace_switch_request(ts));
    gil_give(u, ts);
    gil_take(u, ts);
  }
  if (interrupt_wanted(ts)) {
    bool raise_here = can_raise(L, ar);
    if (!raise_here || atomic_load(&u->stopping)) arm_hook(ts, L);
    if (raise_here) {
      atomic_store(&u->interrupted, false);
      luaL_error(L, "interrupted!");
    }
  }
}

/* Records a new policy and applies it to the calling thread at once. */
static void policy_changed(host_universe *u) {
  atomic_fetch_add(&u->policy_epoch, 1);
  host_tstate *ts = tstate_in(u);
  if (ts != NULL) {
    ts->policy_seen = atomic_load(&u->policy_epoch);
    set_base_hook(ts, atomic_load(&ts->running));
  }
}

/*
** The interval is clamped to [1 us, 1 h] (NaN gives 1 us), so the
** conversion to nanoseconds never overflows whatever a caller passes.
*/
void host_set_switch_interval(lua_State *L, double seconds) {
  host_universe *u = host_universe_of(L);
  if (u == NULL) return;
  if (!(seconds >= MIN_SWITCH_INTERVAL)) seconds = MIN_SWITCH_INTERVAL;
  if (seconds > MAX_SWITCH_INTERVAL) seconds = MAX_SWITCH_INTERVAL;
  atomic_store(&u->interval_ns, (long long)(seconds * 1e9));
  atomic_store(&u->instructions, 0);
  policy_changed(u);
}

void host_set_switch_instructions(lua_State *L, int n) {
  host_universe *u = host_universe_of(L);
  if (u == NULL) return;
  atomic_store(&u->instructions, n);
  policy_changed(u);
}

double host_get_switch_interval(lua_State *L, int *instructions) {
  host_universe *u = host_universe_of(L);
  *instructions = atomic_load(&u->instructions);
  return (double)atomic_load(&u->interval_ns) * 1e-9;
}

/*
** ts->running is written only by its own thread (here and where it starts);
** the others read it with the GIL, which orders it, and so does a signal on
** this thread: a release store, not a full fence, on this hot path.
*/
int host_resume(lua_State *L, lua_State *co, int nargs, int *nresults) {
  host_tstate *ts = member_of(L);
  if (ts == NULL) return lua_resume(co, L, nargs, nresults);
  lua_State *outer = atomic_load_explicit(&ts->running, memory_order_relaxed);
  /* a coroutine that a finalizer resumes runs in that finalizer too */
  bool finalizing = in_finalizer(L);
  if (finalizing) ts->finalizer_resumes++;
  atomic_store_explicit(&ts->running, co, memory_order_release);
  if (atomic_load(&ts->u->instructions) > 0 && lua_gethook(co) == NULL)
    set_base_hook(ts, co);
  HOST_TRACE(ts->u, host_trace_resume(ts, true));
  int status = lua_resume(co, L, nargs, nresults);
  HOST_TRACE(ts->u, host_trace_resume(ts, false));
  atomic_store_explicit(&ts->running, outer, memory_order_release);
  if (finalizing) ts->finalizer_resumes--;
  if (interrupt_wanted(ts)) arm_hook(ts, L);  /* co may have died of it: L goes on */
  return status;
}

/* ---- the GIL's life ---- */

void gil_init(host_universe *u) {
  for (int i = 0; i < GIL_SLOTS; i++) pthread_mutex_init(&u->slot[i].mu, NULL);
  cpu_set_t cpus;
  u->cores = sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? CPU_COUNT(&cpus) : 1;
  atomic_init(&u->interval_ns, (long long)(DEFAULT_SWITCH_INTERVAL * 1e9));
}

void gil_destroy(host_universe *u) {
  for (int i = 0; i < GIL_SLOTS; i++) pthread_mutex_destroy(&u->slot[i].mu);
}

void gil_start(host_universe *u, host_tstate *ts) {
  install_switch_handler();
  gil_take(u, ts);
#ifdef HOST_POLL_HOOK
  set_base_hook(ts, ts->L);
#endif
}

void gil_after_fork(host_universe *u, host_tstate *ts) {
  for (int i = 0; i < GIL_SLOTS; i++) {
    pthread_mutex_init(&u->slot[i].mu, NULL);
    u->slot[i].line = NULL;
  }
  atomic_store(&u->next_ticket, atomic_load(&u->serving) + 1);
  atomic_store(&u->holder, ts);
  atomic_store(&u->spinning, 0);  /* those spinning at the fork are gone */
  atomic_store(&ts->spin.active, false);
  ts->has_timer = false;  /* a child inherits no timer */
}
