/*
** runtime.c: the universe. One lua_State made by host_newstate, the
** preemption policy, and the interrupt hook that turns Ctrl-C (or a pool's
** interrupt) into an "interrupted!" error at the next VM instruction.
*/
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "runtime.h"

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

struct host_universe {
  lua_State *main;
  atomic_bool interrupted;     /* an interrupt waits to be raised */
  double switch_interval;      /* seconds, for the interval policy */
  int switch_instructions;     /* > 0: the jittered instruction policy */
};

static void universe_hook(lua_State *L, lua_Debug *ar);

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

/*
** luaL_newstate gives lauxlib's panic and warning functions; the allocator
** is then swapped for ours (same realloc/free) so that its ud finds the
** universe from any lua_State without touching the stack.
*/
lua_State *host_newstate(void) {
  host_universe *u = calloc(1, sizeof *u);
  if (u == NULL) return NULL;
  lua_State *L = luaL_newstate();
  if (L == NULL) {
    free(u);
    return NULL;
  }
  lua_setallocf(L, universe_alloc, u);
  u->main = L;
  atomic_init(&u->interrupted, false);
  u->switch_interval = 0.005;
#ifdef HOST_POLL_HOOK
  lua_sethook(L, universe_hook, LUA_MASKCOUNT, POLL_PERIOD);
#endif
  return L;
}

bool host_close(lua_State *L) {
  host_universe *u = host_universe_of(L);
  lua_close(L);
  free(u);
  return true;
}

/*
** The universe's hook. Armed one-shot by host_interrupt (or for good in
** polling builds), it raises "interrupted!" when an interrupt is pending.
*/
static void universe_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  host_universe *u = host_universe_of(L);
#ifdef HOST_POLL_HOOK
  (void)host_now();  /* an intercepted call: pending signals run here */
#else
  lua_sethook(L, NULL, 0, 0);
#endif
  if (u && atomic_exchange(&u->interrupted, false))
    luaL_error(L, "interrupted!");
}

void host_interrupt(lua_State *L) {
  host_universe *u = host_universe_of(L);
  if (u == NULL) return;
  atomic_store(&u->interrupted, true);
#ifndef HOST_POLL_HOOK
  lua_sethook(L, universe_hook,
              LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
#endif
}

void host_set_switch_interval(lua_State *L, double seconds) {
  host_universe *u = host_universe_of(L);
  if (u == NULL) return;
  u->switch_interval = seconds;
  u->switch_instructions = 0;
}

void host_set_switch_instructions(lua_State *L, int n) {
  host_universe *u = host_universe_of(L);
  if (u == NULL) return;
  u->switch_instructions = n;
}

void host_unlocked_sleep(lua_State *L, const host_deadline *d) {
  host_universe *u = host_universe_of(L);
  while (!host_deadline_passed(d)) {
    if (u && atomic_load(&u->interrupted)) return;
    if (d->never) {
      pause();
    } else {
      clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &d->at, NULL);
    }
  }
}
