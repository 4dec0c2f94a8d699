/*
** generator.c: `require "host.generator"`, Python's generators on Lua
** coroutines (floor 1). It owns the host.Generator userdata: one coroutine
** per generator, its state (created, suspended, running, dead), what it
** returned, the throw/close machinery and yield_from.
**
** Ownership: while a generator can still run, its uservalue 1 holds its
** coroutine (`co` points into it), or its guard (below), which holds the
** coroutine. When it dies the uservalue is replaced by what it returned
** (nil, the one value, or a table of them) and `co` becomes NULL, so a dead
** generator keeps no coroutine alive.
**
** Collection: a generator suspended where closing it could run none of
** the user's code (see closes_quietly) is simply dropped when collected.
** Only one suspended elsewhere must be closed then, so the finalizer is
** not on the generator but on a small guard userdata [coroutine,
** generator] that only the generator refers to: it dies with it, and its
** __gc closes it. The guard is made when the generator stops where it is
** not quiet (checked at each of its first QUIET_CHECKS suspensions; after
** that it keeps one for good) and let go when it dies. A finalizer costs
** more than the generator (the collector resurrects it with its coroutine
** and clears its whole stack), so most short-lived generators never have
** one.
**
** Throwing into a suspended generator: Lua cannot resume a coroutine with
** an error, so throw registers the error in a per-state table (registry,
** keyed by the coroutine), arms a one-shot return hook on the coroutine
** and resumes it with a private mark. The hook fires when the yield
** returns, inside the generator, puts the coroutine's own hook back and
** raises the error there. yield_from's continuation runs before that
** return: it sees the mark, takes the error itself and forwards it to its
** subgenerator.
**
** Inlining: yield_from(sub) of a sub that has not started, whose body is a
** Lua function, called from a generator's coroutine L whose frames below
** are quiet (Lua functions, no <close> value: see quiet_below), runs the
** body inside L (inline_start: a protected call with a continuation), so no
** coroutine is resumed: what it yields goes straight to L's resumer, and a
** throw into L lands at its yield. Meanwhile sub is GEN_INLINED: uservalue 1
** and `co` hold L, its status follows L's, and a direct step is refused.
** PEP 380's rules at yield from's frame are kept by inline_cont (the end of
** the body; a GeneratorExit thrown into L meanwhile, counted per thread by
** exits_of, is re-raised) and take_over (a body that ignores GeneratorExit
** keeps L as its own coroutine, the generators below it die); a coroutine
** closed under it leaves it dead (settle_inlined). Anything else takes the
** coroutine path.
**
** Every resume of a generator's coroutine goes through resume_generator.
*/
#include <stdint.h>
#include <string.h>

#include "modules.h"
#include "runtime.h"

#define GENERATOR_TYPE "host.Generator"

/*
** How many suspensions of a generator are checked for quietness (see the
** top of the file) before it keeps a guard for good: a check costs a fifth
** to a tenth of the finalizer it saves (more with more locals), so two
** cost a generator that runs to its end less than half a finalizer, and
** one that yields more times lives long enough for its guard not to count.
*/
#define QUIET_CHECKS 2

/*
** yield_from runs a body inline only in a coroutine with fewer frames
** (see can_inline): each level costs one of Lua's LUAI_MAXCCALLS (200) C
** calls, as the resume of today's path does, and a deeper chain goes on
** with coroutines of its own.
*/
#define INLINE_LEVELS 64

_Static_assert(LUA_EXTRASPACE >= sizeof(const char *), "generator.c tags threads in their extra space");

/* How many let-go guards are kept for reuse (in their metatable's array). */
#define GUARD_POOL 64

/*
** How many coroutines that inline_start took the body out of, never run,
** are kept for new generators (see take_thread): a yield_from of a fresh
** generator then allocates no lua_State (Item 40 makes two per cell).
*/
#define THREAD_POOL 16

/*
** The pool of those coroutines: a userdata with THREAD_POOL uservalues,
** 1..n in use, the upvalue `POOL_UP` of yield_from and of generator
** functions (a counter read in place costs a generator that finds the
** pool empty next to nothing, a table's length more than a tenth of its
** creation).
*/
typedef struct thread_pool {
  int n;
} thread_pool;
#define POOL_UP 4

/*
** Upvalue BODY_UP of a generator function: what it knows of its body.
** A count n >= 0: a Lua function, made into n generators so far, its
** code not read yet (it is read at the BODY_READ_AT-th, see body_is_plain:
** a function wrapped for one generator is never read).
*/
#define BODY_UP 5
#define BODY_READ_AT 2
enum {
  BODY_C = -3,      /* a C function */
  BODY_PLAIN = -2,  /* a Lua function that its frame never leaves nor closes (see body_is_plain) */
  BODY_LUA = -1     /* any other Lua function */
};

/*
** The opcodes of Lua 5.4 (lopcodes.h) that body_is_plain looks for:
** the two that make a to-be-closed variable (`local x <close>`, a generic
** for's closing value; lua_toclose, the only other way, is for C
** functions) and the tail call, which replaces the body's frame.
*/
#define LUA54_OP_TBC 55
#define LUA54_OP_TAILCALL 69
#define LUA54_OP_TFORPREP 75

typedef enum {
  GEN_CREATED,    /* made, its body has not started */
  GEN_SUSPENDED,  /* stopped at a yield */
  GEN_RUNNING,    /* being resumed (it, or something it resumed, runs) */
  GEN_DEAD,       /* returned, failed or closed */
  GEN_INLINED     /* its body runs inside the coroutine of a yield_from */
} gen_state;

/* GEN_INLINED reads "running" or "suspended": see state_name. */
static const char *const state_names[] = {
  "created", "suspended", "running", "dead", "running"
};

typedef struct Generator {
  lua_State *co;  /* its coroutine (see the top of the file); NULL once dead;
                     inlined, the coroutine its body runs in */
  unsigned char state;    /* a gen_state */
  unsigned char checks;   /* suspensions checked for quietness so far */
  bool guarded : 1;       /* uservalue 1 is a guard, not the coroutine */
  bool lua_body : 1;      /* its function is a Lua function */
  bool took_over : 1;     /* it runs in the coroutine of another (take_over) */
  bool delegated : 1;     /* a yield_from on its own coroutine path waits on it */
  bool deferred : 1;      /* its guard put its close off once (see guard_gc) */
  bool plain_body : 1;    /* its function is BODY_PLAIN: its coroutine's bottom
                             frame runs it and holds no <close> value */
  int nret;       /* how many values it returned; -1 if it did not return */
} Generator;

/* What one step of a generator left on the caller's stack. */
typedef enum {
  STEP_YIELD,   /* the values it yielded */
  STEP_RETURN,  /* the values it returned (it is dead now) */
  STEP_DEAD,    /* nothing: it was dead already */
  STEP_ERROR    /* the error it raised (it is dead now) or a refusal */
} gen_step;

/* A throw in progress: the error to raise and the hook to put back. */
typedef struct throw_ctx {
  lua_State *from;  /* the thread that throws; the error is at `err` on it */
  int err;
  lua_Hook hook;    /* the coroutine's own hook, mask and count */
  int mask, count;
} throw_ctx;

/*
** Addresses used as private marks: the registry key of the table of
** pending throws; the value a coroutine is resumed with when an error is
** thrown into it; the slot that tells a yield_from frame; the last value
** a yield_from is resumed with when its delegate returned or failed.
*/
static const char pending_key = 0;
static const char throw_mark = 0;
static const char yield_from_mark = 0;
static const char done_mark = 0;
static const char raise_mark = 0;
static const char guard_key = 0;  /* registry: the guards' metatable */
/*
** The extra space of a generator's coroutine points into thread_tags (see
** is_generator_thread) and tells what is known of the body its bottom
** frame runs (see bottom_quiet): read or not, plain or not (body_is_plain).
*/
enum { TAG_NEW, TAG_SCANNED, TAG_PLAIN, TAG_LUA, TAGS };
static const char thread_tags[TAGS];
static const char exits_key = 0;  /* registry: GeneratorExits taken, per thread */

/*
** coroutine.yield as this module found it when it was loaded (the C
** function at upvalue `up` of the running C function: see createmeta), or
** NULL. Only to recognize a plain yield (see closes_quietly).
*/
static lua_CFunction plain_yield(lua_State *L, int up) {
  return lua_tocfunction(L, lua_upvalueindex(up));
}

/*
** Returns the generator at `arg`. Every function of this file has the
** metatable's address as upvalue 1 (a light userdata): comparing addresses
** skips luaL_checkudata's registry lookup by name, and send is that hot.
** Anything else gets luaL_checkudata's message ("host.Generator expected,
** got table").
*/
static Generator *check_generator(lua_State *L, int arg) {
  Generator *g = lua_touserdata(L, arg);
  if (g != NULL && lua_getmetatable(L, arg)) {
    const void *mt = lua_topointer(L, -1);
    lua_pop(L, 1);
    if (mt == lua_touserdata(L, lua_upvalueindex(1))) return g;
  }
  return luaL_checkudata(L, arg, GENERATOR_TYPE);
}

/*
** The one place a generator's coroutine is resumed, after lcorolib.c's
** auxresume: moves `nargs` values from L to co and resumes it with them.
** With nargs -1, co is started: its stack holds its body and the call's
** arguments already. On a yield or a return, *nres values come back on L;
** on an error, the error.
*/
static int resume_generator(lua_State *L, lua_State *co, int nargs, int *nres) {
  if (nargs < 0) {
    nargs = lua_gettop(co) - 1;
    if (nargs < 0) nargs = 0;  /* started behind its back: lua_resume refuses */
  } else if (!lua_checkstack(co, nargs)) {
    lua_pop(L, nargs);
    lua_pushliteral(L, "too many arguments to resume");
    return LUA_ERRRUN;
  } else {
    lua_xmove(L, co, nargs);
  }
  /* preemption follows it; inside a finalizer it keeps the GIL (runtime.h) */
  int status = host_resume(L, co, nargs, nres);
  if (status == LUA_OK || status == LUA_YIELD) {
    if (!lua_checkstack(L, *nres + 4)) {  /* the results, and room to disarm a throw */
      lua_pop(co, *nres);
      lua_pushliteral(L, "too many results to resume");
      return LUA_ERRRUN;
    }
    lua_xmove(co, L, *nres);
  } else {
    lua_xmove(co, L, 1);
  }
  return status;
}

/* Raises an error object of `kind` with a fixed message. */
static int raise_kind(lua_State *L, const char *kind, const char *message) {
  host_error_push(L, kind, message, 0);
  return lua_error(L);
}

/*
** Pops the value on top of L into uservalue 1 of g, whose userdata is at
** `gidx` on the stack of H (L itself, or the coroutine of the generator
** that delegates to g: see delegate_of).
*/
static void set_uservalue(lua_State *L, lua_State *H, int gidx) {
  if (H != L) {
    lua_checkstack(H, 2);  /* a C frame has LUA_MINSTACK slots: this holds */
    lua_xmove(L, H, 1);
  }
  lua_setiuservalue(H, gidx, 1);
}

/*
** Lets go of the guard of g (at `gidx` on H), if it has one: the guard
** forgets g and its coroutine, so its finalizer finds nothing to close,
** and goes back to the pool unless that is full. The caller then replaces
** uservalue 1, the guard's other reference.
*/
static void drop_guard(lua_State *H, int gidx, Generator *g) {
  if (!g->guarded) return;
  lua_getiuservalue(H, gidx, 1);  /* a C frame has LUA_MINSTACK slots */
  lua_pushnil(H);
  lua_setiuservalue(H, -2, 1);
  lua_pushnil(H);
  lua_setiuservalue(H, -2, 2);
  lua_rawgetp(H, LUA_REGISTRYINDEX, &guard_key);
  lua_Unsigned n = lua_rawlen(H, -1);
  if (n < GUARD_POOL) {
    lua_insert(H, -2);
    lua_rawseti(H, -2, (lua_Integer)n + 1);
    lua_pop(H, 1);
  } else {
    lua_pop(H, 2);
  }
  g->guarded = false;
}

/* Marks g (at `gidx` on H) dead and drops its coroutine. */
static void set_dead(lua_State *L, lua_State *H, int gidx, Generator *g) {
  drop_guard(H, gidx, g);
  lua_pushnil(L);
  set_uservalue(L, H, gidx);
  g->co = NULL;
  g->state = GEN_DEAD;
}

/*
** The name of g's state. An inlined generator (see inline_start) is as
** suspended or as running as the coroutine its body runs in.
*/
static const char *state_name(const Generator *g) {
  if (g->state == GEN_INLINED && lua_status(g->co) == LUA_YIELD) return "suspended";
  return state_names[g->state];
}

/*
** An inlined g (at `gidx` on H) whose coroutine lost its frames without
** finishing the body (it was closed, coroutine.close or a guard's reset,
** which closed the body's <close> variables) is dead from now on.
*/
static inline void settle_inlined(lua_State *L, lua_State *H, int gidx, Generator *g) {
  lua_Debug ar;
  if (g->state != GEN_INLINED) return;
  if (lua_status(g->co) == LUA_YIELD ||
      (lua_status(g->co) == LUA_OK && lua_getstack(g->co, 0, &ar)))
    return;
  set_dead(L, H, gidx, g);
}

/*
** Pushes the refusal of a step of g, which is running (or inlined: see
** inline_start, whose coroutine may be suspended, but g cannot be
** resumed apart from it).
*/
static void push_busy(lua_State *L, const Generator *g) {
  host_error_push(L, "ValueError", g->state == GEN_INLINED && lua_status(g->co) == LUA_YIELD
                  ? "generator is running inside another generator's yield_from"
                  : "generator already executing", 0);
}

/*
** Keeps the `n` values on top of L as what g (at `gidx` on H) returned,
** without popping them: uservalue 1 becomes nil, the value, or a table of
** the values.
*/
static void keep_results(lua_State *L, lua_State *H, int gidx, Generator *g,
                         int n) {
  g->state = GEN_DEAD;  /* dead even if the table below cannot be made */
  g->nret = -1;
  drop_guard(H, gidx, g);
  if (n == 0) {
    lua_pushnil(L);
  } else if (n == 1) {
    lua_pushvalue(L, -1);
  } else {
    lua_createtable(L, n, 0);
    for (int i = 1; i <= n; i++) {
      lua_pushvalue(L, -n - 2 + i);
      lua_rawseti(L, -2, i);
    }
  }
  set_uservalue(L, H, gidx);
  g->co = NULL;
  g->nret = n;
}

/* Pushes what the dead generator at `gidx` returned; returns how many. */
static int push_results(lua_State *L, int gidx, const Generator *g) {
  int n = g->nret < 0 ? 0 : g->nret;
  luaL_checkstack(L, n + 1, "too many results");
  if (n == 0) return 0;
  lua_getiuservalue(L, gidx, 1);
  if (n == 1) return 1;
  for (int i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
  lua_remove(L, -n - 1);
  return n;
}

static int gen_yield_from(lua_State *L);

/*
** If the frame `ar` of L is a yield_from running a body inline (see
** inline_start: its frame is [sub, count, ...] and sub is still inlined),
** returns sub, and pushes it on L if `push`; else NULL. *count gets the
** frame's count of GeneratorExits (see exits_of) if count is not NULL.
*/
static Generator *inline_frame(lua_State *L, lua_Debug *ar, bool push,
                               lua_Integer *count) {
  if (!lua_checkstack(L, 2)) return NULL;  /* L may be suspended: never raise on it */
  lua_getinfo(L, "f", ar);
  lua_CFunction f = lua_tocfunction(L, -1);
  lua_pop(L, 1);
  if (f != gen_yield_from || lua_getlocal(L, ar, 1) == NULL) return NULL;
  Generator *sub = lua_touserdata(L, -1);
  if (sub == NULL || sub->state != GEN_INLINED || lua_getlocal(L, ar, 2) == NULL) {
    lua_pop(L, 1);
    return NULL;
  }
  if (count != NULL) *count = lua_tointeger(L, -1);
  lua_pop(L, push ? 1 : 2);
  return sub;
}

/*
** True if the running function of L (level 0) runs inside a body that a
** yield_from runs inline (see inline_start): such a frame below it.
** Only a GeneratorExit thrown in asks (it walks the whole stack).
*/
static bool inside_inline(lua_State *L) {
  lua_Debug ar;
  for (int level = 1; lua_getstack(L, level, &ar); level++)
    if (inline_frame(L, &ar, false, NULL) != NULL) return true;
  return false;
}

/*
** How many GeneratorExits were thrown into the thread L so far (0 when
** none): an inlined body compares it before and after (see inline_cont).
** Its callers on a running L have made room for it.
** The counts live in a table keyed weakly by thread, at exits_key in the
** registry: entry [1] the count, [2] the last GeneratorExit.
*/
static lua_Integer exits_of(lua_State *L) {
  lua_Integer n = 0;
  if (!lua_checkstack(L, 3)) return 0;  /* L may be suspended: never raise on it */
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &exits_key) == LUA_TTABLE) {
    lua_pushthread(L);
    if (lua_rawget(L, -2) == LUA_TTABLE) {
      lua_rawgeti(L, -1, 1);
      n = lua_tointeger(L, -1);
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return n;
}

/*
** Counts the GeneratorExit on top of co (left there) as thrown into co
** and keeps it as co's last one (see exits_of).
*/
static void note_exit(lua_State *co) {
  luaL_checkstack(co, 4, "no room to throw");
  if (lua_rawgetp(co, LUA_REGISTRYINDEX, &exits_key) != LUA_TTABLE) {
    lua_pop(co, 1);
    lua_newtable(co);
    host_set_weak(co, "k");
    lua_pushvalue(co, -1);
    lua_rawsetp(co, LUA_REGISTRYINDEX, &exits_key);
  }
  lua_pushthread(co);
  if (lua_rawget(co, -2) != LUA_TTABLE) {
    lua_pop(co, 1);
    lua_createtable(co, 2, 0);
    lua_pushthread(co);
    lua_pushvalue(co, -2);
    lua_rawset(co, -4);
  }
  lua_rawgeti(co, -1, 1);
  lua_Integer n = lua_tointeger(co, -1);
  lua_pop(co, 1);
  lua_pushinteger(co, n + 1);
  lua_rawseti(co, -2, 1);
  lua_pushvalue(co, -3);
  lua_rawseti(co, -2, 2);
  lua_pop(co, 2);
}

/*
** If an error is being thrown into co, ends the throw: puts co's own hook
** back, forgets the throw and pushes the error on co. Returns 0 if none.
*/
static int take_throw(lua_State *co) {
  luaL_checkstack(co, 3, "no room to throw");
  if (lua_rawgetp(co, LUA_REGISTRYINDEX, &pending_key) != LUA_TTABLE) {
    lua_pop(co, 1);
    return 0;
  }
  lua_rawgetp(co, -1, co);
  throw_ctx *t = lua_touserdata(co, -1);
  lua_pop(co, 1);
  if (t == NULL) {
    lua_pop(co, 1);
    return 0;
  }
  lua_pushnil(co);
  lua_rawsetp(co, -2, co);
  lua_pop(co, 1);
  lua_sethook(co, t->hook, t->mask, t->count);
  lua_pushvalue(t->from, t->err);
  lua_xmove(t->from, co, 1);
  if (host_error_is(co, -1, "GeneratorExit")) {
    note_exit(co);
    if (inside_inline(co)) {  /* as the close of an inlined body (PEP 380) */
      lua_pop(co, 1);
      host_error_push(co, "GeneratorExit", "generator closed", 0);
    }
  }
  return 1;
}

/* The one-shot return hook of a throw: raises the error where the yield returns. */
static void throw_hook(lua_State *co, lua_Debug *ar) {
  (void)ar;
  if (take_throw(co)) lua_error(co);
  lua_sethook(co, NULL, 0, 0);  /* no throw pending: never stay armed */
}

/*
** Prepares a throw of the value on top of L into the suspended coroutine
** co: registers it as pending (this may raise, so it comes before the
** generator counts as running) and arms throw_hook. The caller then
** resumes co with the mark and calls disarm_throw.
*/
static void arm_throw(lua_State *L, lua_State *co, throw_ctx *t) {
  luaL_checkstack(L, LUA_MINSTACK, "no room to throw");
  *t = (throw_ctx){L, lua_gettop(L), lua_gethook(co), lua_gethookmask(co),
                   lua_gethookcount(co)};
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &pending_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &pending_key);
  }
  lua_pushlightuserdata(L, t);
  lua_rawsetp(L, -2, co);
  lua_pop(L, 1);
  lua_sethook(co, throw_hook, LUA_MASKRET, 0);
  lua_pushlightuserdata(L, (void *)&throw_mark);
}

/*
** After the resume of a throw: a coroutine that yielded inside a hook
** never returned to take the throw; forget it and put its hook back all
** the same. Needs 3 free slots on L (resume_generator leaves them).
*/
static void disarm_throw(lua_State *L, lua_State *co, const throw_ctx *t) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &pending_key);
  if (lua_rawgetp(L, -1, co) != LUA_TNIL) {
    lua_pushnil(L);
    lua_rawsetp(L, -3, co);
    lua_sethook(co, t->hook, t->mask, t->count);
  }
  lua_pop(L, 2);
}

/* generator.yield(...): coroutine.yield. */
static int gen_yield(lua_State *L) {
  return lua_yield(L, lua_gettop(L));
}

/*
** True if the value on top of L has a __close metamethod; pops it.
** *last_mt and *last remember the last metatable looked at and the answer.
*/
static bool pop_closable(lua_State *L, const void **last_mt, bool *last) {
  bool closable = false;
  if (lua_getmetatable(L, -1)) {
    const void *mt = lua_topointer(L, -1);
    if (mt == *last_mt) {  /* strings share one: look it up once */
      closable = *last;
    } else {
      lua_pushliteral(L, "__close");
      closable = lua_rawget(L, -2) != LUA_TNIL;
      lua_pop(L, 1);
      *last_mt = mt;
      *last = closable;
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return closable;
}

/*
** True if raising GeneratorExit in the suspended coroutine of g could run
** none of the user's code, so that closing it is dropping it: it waits in
** a plain yield (generator.yield, or coroutine.yield as the module found
** it: see plain_yield, `yield_up`), every frame below is a Lua function (no pcall, no C
** function that could catch the error or own a <close> slot), and no live
** local holds a value with a __close metamethod (a <close> variable would
** see the error). CPython skips the throw the same way for a frame
** outside any try block. The bottom frame runs g's function: what kind
** it is was noted when g was made (a lua_getinfo less per check), and a
** plain one (see body_is_plain) has no local to look at.
*/
static bool closes_quietly(lua_State *L, const Generator *g, int yield_up) {
  lua_State *co = g->co;
  lua_Debug frames[2];  /* a frame and the one below it, swapped (no copy) */
  lua_Debug *ar = &frames[0], *below = &frames[1];
  const void *last_mt = NULL;
  bool last = false;
  if (!lua_checkstack(co, 4)) return false;
  if (!lua_getstack(co, 0, ar)) return true;
  lua_getinfo(co, "f", ar);
  lua_CFunction f = lua_tocfunction(co, -1);
  lua_pop(co, 1);
  if (f != gen_yield && (f == NULL || f != plain_yield(L, yield_up))) return false;
  bool more = lua_getstack(co, 1, ar);
  for (int level = 1; more; level++) {
    bool lua_function;
    more = lua_getstack(co, level + 1, below);
    if (more) {
      lua_getinfo(co, "f", ar);
      lua_function = !lua_iscfunction(co, -1);
      lua_pop(co, 1);
    } else {
      lua_function = g->lua_body;  /* the bottom frame is the body */
      if (g->plain_body) break;    /* which has no <close> value to see it */
    }
    if (!lua_function || !lua_checkstack(L, 4)) return false;
    for (int n = 1; lua_getlocal(co, ar, n) != NULL; n++) {
      lua_xmove(co, L, 1);  /* looked at on L: a GC step must not run on co */
      if (pop_closable(L, &last_mt, &last)) return false;
    }
    lua_Debug *next = below;
    below = ar;
    ar = next;
  }
  return true;
}

/*
** Gives g (at `gidx` on H, see set_uservalue) a guard: a userdata with
** uservalues [its coroutine, g] and the guards' metatable, whose __gc
** closes g; one from the pool if there is one. It takes the coroutine's
** place as g's uservalue 1. Needs 4 free slots on L.
*/
static void attach_guard(lua_State *L, lua_State *H, int gidx, Generator *g) {
  if (H != L) {
    lua_pushvalue(H, gidx);  /* a C frame has LUA_MINSTACK slots */
    lua_xmove(H, L, 1);
  } else {
    lua_pushvalue(L, gidx);
  }
  lua_rawgetp(L, LUA_REGISTRYINDEX, &guard_key);
  lua_Unsigned n = lua_rawlen(L, -1);
  if (n > 0) {
    lua_rawgeti(L, -1, (lua_Integer)n);
    lua_pushnil(L);
    lua_rawseti(L, -3, (lua_Integer)n);
    lua_remove(L, -2);
  } else {
    lua_newuserdatauv(L, 0, 2);
    lua_insert(L, -2);
    lua_setmetatable(L, -2);
  }
  lua_getiuservalue(L, -2, 1);
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, -2);
  lua_setiuservalue(L, -2, 2);
  lua_setiuservalue(L, -2, 1);
  lua_pop(L, 1);
  g->guarded = true;
}

/*
** g (at `gidx` on H) has just stopped at a yield: unless it already has a
** guard, gives it one if closing it now could run user code, or if it has
** been checked QUIET_CHECKS times. Not called when g was reached through
** a generator suspended in yield_from on it (advance's shortcut): closing
** that one closes g too, as CPython's close of a generator closes the one
** it delegates to, and that one has a guard (a yield_from is never quiet)
** or is in turn delegated to, up to one reached directly, which has. It
** stays so until g dies, unless a refusal ends the delegation (advance
** checks g then). The running C function has
** coroutine.yield as upvalue `yield_up` (see plain_yield): closes_quietly
** reads it, off the path of a send to a guarded generator. Needs 4 free
** slots on L.
*/
static void check_quiet(lua_State *L, lua_State *H, int gidx, Generator *g,
                        int yield_up) {
  if (g->guarded) return;
  if (g->checks < QUIET_CHECKS && closes_quietly(L, g, yield_up)) {
    g->checks++;
    return;
  }
  attach_guard(L, H, gidx, g);
}

/*
** The generator that the suspended coroutine co delegates to: co stopped in
** yield_from, whose frame is [sub, yield_from_mark]. NULL otherwise. The
** frame is read each time (nothing cached), so a coroutine resumed behind
** the generator's back cannot leave a dangling pointer.
*/
static Generator *delegate_of(lua_State *co) {
  if (lua_gettop(co) != 2 || lua_touserdata(co, 2) != &yield_from_mark)
    return NULL;
  return lua_touserdata(co, 1);
}

/*
** A GeneratorExit thrown into co landed in a body run inline there (see
** inline_start), the close of its generator, and co yielded instead of
** ending: that generator ignored GeneratorExit. In CPython it stays
** suspended and its close raises RuntimeError where its delegating
** generator waits in yield from, whose frames then end with nothing run
** (quiet_below checked that when the body started). So here: the
** innermost generator inlined before that GeneratorExit takes co over as
** its own coroutine, suspended where it is (with a guard: closing it runs
** code); the ones it was inlined in are dead. Returns false if there is
** none (the GeneratorExit reached co's own body). The caller raises
** the RuntimeError and lets co's generator die. Needs 5 free slots on L.
*/
static bool take_over(lua_State *L, lua_State *co) {
  lua_Integer exits = exits_of(co), count = exits;
  lua_Debug ar;
  Generator *sub = NULL;
  int level;
  if (!lua_checkstack(L, 8)) return false;
  for (level = 0; lua_getstack(co, level, &ar); level++) {
    sub = inline_frame(co, &ar, true, &count);
    if (sub != NULL && count != exits) break;
    if (sub != NULL) lua_pop(co, 1);
    sub = NULL;
  }
  if (sub == NULL) return false;
  lua_xmove(co, L, 1);  /* sub's userdata */
  for (level++; lua_getstack(co, level, &ar); level++) {
    Generator *below = inline_frame(co, &ar, true, NULL);
    if (below != NULL) {  /* it dies of the RuntimeError, as CPython's would */
      lua_xmove(co, L, 1);
      set_dead(L, L, lua_gettop(L), below);
      lua_pop(L, 1);
    }
  }
  sub->state = GEN_SUSPENDED;  /* its uservalue 1 holds co already */
  sub->checks = 0;
  sub->took_over = true;
  sub->plain_body = false;  /* co's bottom frame runs another body */
  attach_guard(L, L, lua_gettop(L), sub);
  lua_pop(L, 1);
  return true;
}

/*
** PEP 479: a StopIteration error on top of L that leaves a generator's
** frame becomes RuntimeError "generator raised StopIteration", with the
** StopIteration as its cause.
*/
static void stop_iteration_to_runtime_error(lua_State *L) {
  if (host_error_is(L, -1, "StopIteration")) {
    host_error_push(L, "RuntimeError", "generator raised StopIteration", -1);
    lua_remove(L, -2);
  }
}

/*
** One step of the generator g, whose userdata is at `gidx` on H (see
** set_uservalue): with `throwing` 0 it sends the `nargs` values on top of
** L; with `throwing` 1 it raises the one value on top of L inside the
** generator. Those values are consumed. Returns what the step left on L
** (see gen_step); *nres counts the values. `yield_up` as in check_quiet.
**
** A send to a generator suspended in yield_from goes straight to the
** generator it delegates to (recursively), without resuming the delegating
** ones: a chain of n yield_from costs one resume, not n. Only when the
** delegate ends is the delegating generator resumed, with what it returned
** (done_mark) or the error it raised (raise_mark).
*/
static gen_step advance(lua_State *L, Generator *g, lua_State *H, int gidx,
                        int nargs, int throwing, int yield_up, int *nres) {
  *nres = 0;
  settle_inlined(L, H, gidx, g);
  switch (g->state) {
    case GEN_RUNNING:
    case GEN_INLINED:
      lua_pop(L, nargs);
      push_busy(L, g);
      return STEP_ERROR;
    case GEN_DEAD:
      if (throwing) return STEP_ERROR;  /* the error goes to the caller */
      lua_pop(L, nargs);
      return STEP_DEAD;
    case GEN_CREATED:
      if (throwing) {  /* raised at the start: the body never runs */
        set_dead(L, H, gidx, g);
        stop_iteration_to_runtime_error(L);  /* raised in its frame all the same */
        return STEP_ERROR;
      }
      for (int i = 0; i < nargs; i++) {
        if (!lua_isnil(L, -1 - i)) {
          lua_pop(L, nargs);
          host_error_push(L, "TypeError",
                          "can't send non-nil value to a just-started generator", 0);
          return STEP_ERROR;
        }
      }
      lua_pop(L, nargs);
      nargs = -1;  /* the body starts with the call's arguments, on co already */
      break;
    case GEN_SUSPENDED:
      break;
  }
  lua_State *co = g->co;
  throw_ctx t;
  Generator *sub;
  if (throwing) {
    arm_throw(L, co, &t);  /* pushes the mark, the one value to send */
    nargs = 1;
  } else if (g->state == GEN_SUSPENDED && (sub = delegate_of(co)) != NULL) {
    g->state = GEN_RUNNING;
    gen_step step = advance(L, sub, co, 1, nargs, 0, yield_up, nres);
    if (step == STEP_YIELD) {
      g->state = GEN_SUSPENDED;
      return STEP_YIELD;
    }
    if (step == STEP_ERROR && sub->state == GEN_SUSPENDED && lua_checkstack(L, 4))
      check_quiet(L, co, 1, sub, yield_up);  /* refused: g stops delegating to it */
    /* The delegate ended: resume g's yield_from with the outcome. The
    ** stack has room: advance leaves what resume_generator ensured. */
    lua_pushlightuserdata(L, (void *)(step == STEP_ERROR ? &raise_mark : &done_mark));
    nargs = (step == STEP_ERROR ? 1 : *nres) + 1;
  }
  lua_Integer exits = throwing ? exits_of(co) : 0;
  g->state = GEN_RUNNING;  /* nothing may raise until the state is set again */
  int status = resume_generator(L, co, nargs, nres);
  if (throwing) {
    disarm_throw(L, co, &t);
    lua_remove(L, -(status == LUA_OK || status == LUA_YIELD ? *nres : 1) - 1);
  }
  if (g->took_over && status == LUA_YIELD && *nres > 0 && lua_touserdata(L, -1) == &done_mark) {
    lua_pop(L, 1);  /* a body that took co over returned (see inline_cont) */
    (*nres)--;
    lua_resetthread(co);  /* what is below is quiet (see quiet_below) */
    keep_results(L, H, gidx, g, *nres);
    return STEP_RETURN;
  }
  if (status == LUA_YIELD && throwing && exits_of(co) != exits && take_over(L, co)) {
    lua_pop(L, *nres);
    *nres = 0;
    host_error_push(L, "RuntimeError", "generator ignored GeneratorExit", 0);
    set_dead(L, H, gidx, g);
    return STEP_ERROR;
  }
  if (status == LUA_YIELD) {
    g->state = GEN_SUSPENDED;
    if (H == L)  /* else g is delegated to: see check_quiet */
      check_quiet(L, H, gidx, g, yield_up);  /* resume_generator left the room */
    return STEP_YIELD;
  }
  if (status == LUA_OK) {
    keep_results(L, H, gidx, g, *nres);
    return STEP_RETURN;
  }
  *nres = 0;
  int co_status = lua_status(co);
  if (co_status == LUA_YIELD) {  /* refused by lua_resume: still suspended */
    g->state = GEN_SUSPENDED;
    return STEP_ERROR;
  }
  if (co_status != LUA_OK) {  /* its body failed: close its tbc variables */
    lua_resetthread(co);
    lua_pop(L, 1);
    lua_xmove(co, L, 1);  /* a failing __close may have replaced the error */
  }
  set_dead(L, H, gidx, g);
  stop_iteration_to_runtime_error(L);
  return STEP_ERROR;
}

/*
** Turns a step into what send, next and throw return: the yielded values;
** at a return or on a dead generator a StopIteration error object whose
** `value` is the first value returned and `values` all of them ({n = k}).
*/
static int step_result(lua_State *L, gen_step step, int nres) {
  switch (step) {
    case STEP_YIELD:
      return nres;
    case STEP_ERROR:
      return lua_error(L);
    default: {
      luaL_checkstack(L, 4, "too many results");  /* beyond the results themselves */
      int base = lua_gettop(L) - nres;
      host_error_push(L, "StopIteration", step == STEP_RETURN
                      ? "generator returned" : "cannot resume dead generator", 0);
      if (nres > 0) {
        lua_pushvalue(L, base + 1);
        lua_setfield(L, -2, "value");
      }
      lua_createtable(L, nres, 1);
      for (int i = 1; i <= nres; i++) {
        lua_pushvalue(L, base + i);
        lua_rawseti(L, -2, i);
      }
      lua_pushinteger(L, nres);
      lua_setfield(L, -2, "n");
      lua_setfield(L, -2, "values");
      return lua_error(L);
    }
  }
}

/* g:send(...): resumes g with the values; returns what it yields next. */
static int gen_send(lua_State *L) {
  Generator *g = check_generator(L, 1);
  int nres;
  gen_step step = advance(L, g, L, 1, lua_gettop(L) - 1, 0, 2, &nres);
  return step_result(L, step, nres);
}

/* g:next(): send(nil). */
static int gen_next(lua_State *L) {
  Generator *g = check_generator(L, 1);
  lua_settop(L, 1);
  int nres;
  gen_step step = advance(L, g, L, 1, 0, 0, 2, &nres);
  return step_result(L, step, nres);
}

/* g:throw(err): raises err where g is suspended; returns its next yield. */
static int gen_throw(lua_State *L) {
  Generator *g = check_generator(L, 1);
  luaL_checkany(L, 2);
  lua_settop(L, 2);
  int nres;
  gen_step step = advance(L, g, L, 1, 1, 1, 2, &nres);
  return step_result(L, step, nres);
}

/*
** Closes the generator at `gidx`: raises GeneratorExit where it is
** suspended. Returns how many values it pushed (what the generator
** returned, if it returned instead of letting GeneratorExit through); a
** generator that yields instead, or raises another error, makes it raise.
** One that would close quietly (see closes_quietly; `yield_up` as in
** check_quiet) is dropped instead: its coroutine is reset, dead like one that
** let GeneratorExit through, with no error raised and caught.
*/
static int close_generator(lua_State *L, int gidx, int yield_up) {
  Generator *g = lua_touserdata(L, gidx);
  settle_inlined(L, L, gidx, g);
  switch (g->state) {
    case GEN_RUNNING:
    case GEN_INLINED:
      push_busy(L, g);
      return lua_error(L);
    case GEN_CREATED:
      set_dead(L, L, gidx, g);
      return 0;
    case GEN_DEAD:
      return 0;
    case GEN_SUSPENDED:
      if (lua_status(g->co) == LUA_YIELD && closes_quietly(L, g, yield_up)) {
        int status = lua_resetthread(g->co);  /* no __close left to fail */
        if (status != LUA_OK) lua_xmove(g->co, L, 1);
        set_dead(L, L, gidx, g);
        return status == LUA_OK ? 0 : lua_error(L);
      }
      break;
  }
  host_error_push(L, "GeneratorExit", "generator closed", 0);
  int nres;
  switch (advance(L, g, L, gidx, 1, 1, yield_up, &nres)) {
    case STEP_YIELD:
      lua_pop(L, nres);
      return raise_kind(L, "RuntimeError", "generator ignored GeneratorExit");
    case STEP_RETURN:
      return nres;
    case STEP_ERROR:
      if (!host_error_is(L, -1, "GeneratorExit")) return lua_error(L);
      lua_pop(L, 1);
      return 0;
    case STEP_DEAD:
      break;
  }
  return 0;
}

/* g:close() and __close: GeneratorExit inside g; a no-op once it is dead. */
static int gen_close(lua_State *L) {
  check_generator(L, 1);
  lua_settop(L, 1);
  return close_generator(L, 1, 2);
}

/* g:status(): "created", "suspended", "running" or "dead". */
static int gen_status(lua_State *L) {
  Generator *g = check_generator(L, 1);
  settle_inlined(L, L, 1, g);
  lua_pushstring(L, state_name(g));
  return 1;
}

/*
** g:result(): what g returned, once it has. Nothing when it ended by an
** error or by close; an error while it can still run.
*/
static int gen_result(lua_State *L) {
  Generator *g = check_generator(L, 1);
  settle_inlined(L, L, 1, g);
  if (g->state != GEN_DEAD)
    return luaL_error(L, "generator is %s, it has not returned", state_name(g));
  return push_results(L, 1, g);
}

/*
** __call, the iterator of `for v in g do`: next(), but the end (a return,
** or a dead generator) gives nothing instead of StopIteration.
*/
static int gen_call(lua_State *L) {
  Generator *g = check_generator(L, 1);
  lua_settop(L, 1);
  int nres;
  gen_step step = advance(L, g, L, 1, 0, 0, 2, &nres);
  if (step == STEP_YIELD) return nres;
  if (step == STEP_ERROR) return lua_error(L);
  return 0;
}

/* The iterator of g:enumerate(): i + 1 and the next yield; nothing at the end. */
static int enumerate_step(lua_State *L) {
  Generator *g = check_generator(L, 1);
  lua_Integer i = luaL_checkinteger(L, 2);
  lua_settop(L, 1);
  int nres;
  gen_step step = advance(L, g, L, 1, 0, 0, 2, &nres);
  if (step == STEP_ERROR) return lua_error(L);
  if (step != STEP_YIELD) return 0;
  lua_pushinteger(L, i + 1);
  lua_insert(L, -nres - 1);
  return nres + 1;
}

/* g:enumerate(): `for i, v in g:enumerate() do`, where v may be nil. */
static int gen_enumerate(lua_State *L) {
  check_generator(L, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_pushcclosure(L, enumerate_step, 2);
  lua_pushvalue(L, 1);
  lua_pushinteger(L, 0);
  return 3;
}

/* Protected part of guard_gc: closes the generator at 1. Upvalue 1: as guard_gc's. */
static int close_protected(lua_State *L) {
  close_generator(L, 1, 1);
  return 0;
}

/* Turns the error on top of L into a warning about a collected generator. */
static void warn_gc_error(lua_State *L) {
  const char *msg = host_error_tostring(L);
  lua_warning(L, "error closing a collected host.Generator: ", 1);
  lua_warning(L, msg, 0);
  lua_pop(L, 1);
}

/*
** __gc of a guard (see the top of the file): a generator collected while
** suspended is closed, as CPython's generator finalizer calls close():
** GeneratorExit is raised where it waits, so its <close> variables run (a
** lock it holds is released) and so do its pcall handlers. It runs inside
** a finalizer, so it cannot yield out: a generator that yields while
** closing, or an error, becomes a warning (Lua's way for errors in __gc),
** and whatever <close> variables it still has pending are then closed as
** coroutine.close closes them. The hooks of the coroutines it delegates
** to are removed first: a hook (the instruction policy's) would let the
** finalizer be preempted. Lua runs every finalizer when the state closes:
** a generator still suspended then is closed the same way. One that would
** close quietly (see closes_quietly) is only dropped, its coroutine not
** even reset: freeing a stack inside a finalizer lowers the collector's
** debt, which postpones Lua's next cycle by as much (generators dropped
** suspended, 200 000 in a row, peaked at 67 MB with the reset, 0.8 MB
** without). A coroutine.running() leaked from its body stays suspended.
** Upvalue 1: coroutine.yield as loaded (see plain_yield).
*/
static int guard_gc(lua_State *L) {
  lua_settop(L, 1);
  if (!lua_getmetatable(L, 1)) return 0;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &guard_key);
  if (!lua_rawequal(L, -1, -2)) return 0;  /* not a guard: called by hand */
  lua_settop(L, 1);
  lua_getiuservalue(L, 1, 2);  /* 2: the generator; 1 keeps its coroutine */
  Generator *g = lua_touserdata(L, 2);
  if (g == NULL) {  /* let go of: if it went to the pool meanwhile, arm its __gc again */
    lua_rawgetp(L, LUA_REGISTRYINDEX, &guard_key);
    for (lua_Unsigned i = lua_rawlen(L, -1); i > 0; i--) {
      if (lua_rawgeti(L, -1, (lua_Integer)i) == LUA_TUSERDATA && lua_rawequal(L, -1, 1)) {
        lua_pushvalue(L, -2);
        lua_setmetatable(L, 1);
        break;
      }
      lua_pop(L, 1);
    }
    return 0;
  }
  if (g->delegated && !g->deferred && g->state == GEN_SUSPENDED && !host_closing(L)) {
    /* a generator delegating to g is garbage too, and its own guard closes
    ** g through its yield_from (PEP 380: g's close error reaches it), but
    ** may come later in this cycle: g's close waits for the next one */
    g->deferred = true;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &guard_key);
    lua_setmetatable(L, 1);
    return 0;
  }
  lua_getiuservalue(L, 1, 1);  /* g takes its coroutine back: a finalized */
  lua_setiuservalue(L, 2, 1);  /* guard must never reach the pool */
  g->guarded = false;
  if (g->state != GEN_SUSPENDED || lua_status(g->co) != LUA_YIELD)
    return 0;  /* resumed behind its back */
  lua_State *co = g->co;
  if (closes_quietly(L, g, 1)) {  /* no pcall, no error object */
    set_dead(L, L, 2, g);  /* co is garbage, unless a coroutine.running() leaked it */
    return 0;
  }
  for (lua_State *c = co;;) {
    lua_sethook(c, NULL, 0, 0);
    Generator *sub = delegate_of(c);
    if (sub == NULL || sub->co == NULL) break;
    c = sub->co;
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushcclosure(L, close_protected, 1);
  lua_pushvalue(L, 2);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) warn_gc_error(L);
  if (g->co == co && lua_status(co) == LUA_YIELD) {  /* it yielded instead of closing */
    if (lua_resetthread(co) != LUA_OK) {
      lua_xmove(co, L, 1);
      warn_gc_error(L);
    }
    if (g->co == co) set_dead(L, L, 2, g);
  }
  return 0;
}

/* __tostring: "host.Generator: 0x... (suspended)". */
static int gen_tostring(lua_State *L) {
  Generator *g = check_generator(L, 1);
  settle_inlined(L, L, 1, g);
  lua_pushfstring(L, "%s: %p (%s)", GENERATOR_TYPE, (void *)g, state_name(g));
  return 1;
}

static int yield_from_cont(lua_State *L, int status, lua_KContext ctx);

/*
** One step of yield_from, whose frame is [sub, yield_from_mark, values...]:
** advances sub with the values, then yields what it yields (leaving the
** frame that delegate_of recognizes), or returns what it returned.
*/
static int yield_from_step(lua_State *L, int throwing) {
  int nres;
  Generator *sub = lua_touserdata(L, 1);
  gen_step step = advance(L, sub, L, 1, lua_gettop(L) - 2, throwing, 3, &nres);
  sub->delegated = step == STEP_YIELD;
  switch (step) {
    case STEP_YIELD:
      return lua_yieldk(L, nres, 0, yield_from_cont);
    case STEP_RETURN:
      return nres;
    case STEP_DEAD:
      return 0;
    case STEP_ERROR:
      break;
  }
  return lua_error(L);
}

/*
** yield_from resumed. After done_mark, sub has ended and the values below
** the mark are what it returned; after raise_mark, the value below is the
** error it raised (advance resumed sub directly: see there). A throw into
** the running generator goes to sub (GeneratorExit closes sub and is then
** raised here, as PEP 380 says). Anything else is sent to sub.
*/
static int yield_from_cont(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  int top = lua_gettop(L);
  if (top > 2) {
    const void *mark = lua_touserdata(L, top);
    if (mark == &done_mark || mark == &raise_mark)
      ((Generator *)lua_touserdata(L, 1))->delegated = false;
    if (mark == &done_mark) {
      lua_pop(L, 1);
      return top - 3;
    }
    if (mark == &raise_mark) {
      lua_pop(L, 1);
      return lua_error(L);
    }
    if (mark == &throw_mark && top == 3 && take_throw(L)) {
      lua_remove(L, 3);
      if (host_error_is(L, 3, "GeneratorExit")) {
        close_generator(L, 1, 3);
        lua_settop(L, 3);
        return lua_error(L);
      }
      return yield_from_step(L, 1);
    }
  }
  return yield_from_step(L, 0);
}

/*
** The end of a body run inline by yield_from, whose frame is [sub, count,
** results...] or [sub, count, error]: sub dies as advance would leave it,
** what it returned is yield_from's result, an error goes on (a
** StopIteration as RuntimeError, PEP 479). If a GeneratorExit was thrown
** into L since the body started (count: how many were before, see
** exits_of), it landed in the body, which is sub's close; PEP 380 then
** raises GeneratorExit here, unless the close raised another error: the
** one thrown into L's generator, or, in a body itself run inline, a new
** one, as the close of that body made it. A sub that took L over (see
** take_over) is being advanced: its end goes to advance, a return as a
** yield of its values and done_mark; a sub killed by take_over only lets
** the error through.
*/
static int inline_cont(lua_State *L, int status, lua_KContext ctx) {
  (void)ctx;
  Generator *sub = lua_touserdata(L, 1);
  int failed = status != LUA_OK && status != LUA_YIELD;
  int n = lua_gettop(L) - 2;
  luaL_checkstack(L, 4, "too many results");
  if (sub->state != GEN_INLINED) {
    if (failed || sub->state != GEN_RUNNING) return lua_error(L);
    lua_pushlightuserdata(L, (void *)&done_mark);
    return lua_yield(L, n + 1);
  }
  if (failed) {
    set_dead(L, L, 1, sub);
    stop_iteration_to_runtime_error(L);
  } else {
    keep_results(L, L, 1, sub, n);
  }
  if (exits_of(L) != lua_tointeger(L, 2) &&
      (!failed || host_error_is(L, -1, "GeneratorExit"))) {
    if (inside_inline(L)) {  /* raised by the close of this frame's own body */
      host_error_push(L, "GeneratorExit", "generator closed", 0);
      return lua_error(L);
    }
    lua_rawgetp(L, LUA_REGISTRYINDEX, &exits_key);  /* thrown into L's generator */
    lua_pushthread(L);
    lua_rawget(L, -2);
    lua_rawgeti(L, -1, 2);
    return lua_error(L);
  }
  return failed ? lua_error(L) : n;
}

/*
** yield_from(sub) of a sub that can run inline (see can_inline): its body
** and arguments leave its coroutine for L's stack and it is called there,
** protected, with inline_cont as continuation, so that what it yields
** goes straight to whoever resumes L. Its coroutine is dropped and
** uservalue 1 keeps L instead. The frame: [sub, count of GeneratorExits
** thrown into L so far, body, arguments...].
*/
static int inline_start(lua_State *L, Generator *sub) {
  lua_State *co = sub->co;
  int n = lua_gettop(co);  /* its body and arguments */
  luaL_checkstack(L, n + 4, "too many arguments");
  lua_pushinteger(L, exits_of(L));
  lua_xmove(co, L, n);
  thread_pool *pool = lua_touserdata(L, lua_upvalueindex(POOL_UP));
  if (n <= LUA_MINSTACK && pool->n < THREAD_POOL) {  /* its stack never grew */
    lua_getiuservalue(L, 1, 1);
    lua_setiuservalue(L, lua_upvalueindex(POOL_UP), ++pool->n);
  }
  lua_pushthread(L);
  lua_setiuservalue(L, 1, 1);
  sub->co = L;
  sub->state = GEN_INLINED;
  int status = lua_pcallk(L, n - 1, LUA_MULTRET, 0, 0, inline_cont);
  return inline_cont(L, status, 0);
}

/*
** True if no value on the frame `ar` of L has a __close metamethod (see
** pop_closable): its locals are looked at.
*/
static bool locals_quiet(lua_State *L, lua_Debug *ar, const void **last_mt, bool *last) {
  for (int n = 1; lua_getlocal(L, ar, n) != NULL; n++)
    if (pop_closable(L, last_mt, last)) return false;
  return true;
}

static bool body_is_plain(lua_State *L);

/*
** locals_quiet of the bottom frame `ar` of the generator's coroutine L,
** which runs its body: none when L's tag says the body is plain. A body
** not known yet is read (body_is_plain) the second time it is asked, so
** that a coroutine asked once never pays the read. Needs 3 free slots.
*/
static bool bottom_quiet(lua_State *L, lua_Debug *ar, const void **last_mt, bool *last) {
  const char **tag = lua_getextraspace(L);
  if (*tag == &thread_tags[TAG_PLAIN]) return true;
  if (*tag == &thread_tags[TAG_NEW]) {
    *tag = &thread_tags[TAG_SCANNED];
  } else if (*tag == &thread_tags[TAG_SCANNED]) {
    lua_getinfo(L, "f", ar);
    bool plain = body_is_plain(L);
    lua_pop(L, 1);
    *tag = &thread_tags[plain ? TAG_PLAIN : TAG_LUA];
    if (plain) return true;
  }
  return locals_quiet(L, ar, last_mt, last);
}

/*
** True if no code of the delegating generator would run if an error went
** through its frames below the running yield_from of L: down to a yield_from
** running a body inline, or the bottom, they are Lua functions (no pcall,
** no C function) with no live value with a __close metamethod. They stay
** so while the yield_from lasts, and take_over relies on it. A frame that
** runs a plain body (see body_is_plain) holds no such value, and its
** locals are not looked at: the bottom one when L's tag says so (see
** bottom_quiet), the one just above an inline yield_from whose sub is
** plain (inline_start calls the body there, with nothing between).
*/
static bool quiet_below(lua_State *L) {
  lua_Debug frames[2];  /* a frame and the one below it, swapped (no copy) */
  lua_Debug *ar = &frames[0], *pending = NULL;
  const void *last_mt = NULL;
  bool last = false;
  luaL_checkstack(L, 3, "no room to inspect a yield_from");
  for (int level = 1; lua_getstack(L, level, ar); level++) {
    lua_getinfo(L, "f", ar);
    bool c = lua_iscfunction(L, -1);
    lua_pop(L, 1);
    if (c) {
      Generator *sub = inline_frame(L, ar, false, NULL);
      return sub != NULL && (pending == NULL || sub->plain_body ||
                             locals_quiet(L, pending, &last_mt, &last));
    }
    if (pending != NULL && !locals_quiet(L, pending, &last_mt, &last)) return false;
    pending = ar;  /* looked at once the frame below it is known */
    ar = &frames[pending == &frames[0]];
  }
  return pending == NULL || bottom_quiet(L, pending, &last_mt, &last);
}

/* True if L runs a generator's body (tagged by generator_function). */
static bool is_generator_thread(lua_State *L) {
  const char *tag = *(const char **)lua_getextraspace(L);
  for (int i = 0; i < TAGS; i++)
    if (tag == &thread_tags[i]) return true;
  return false;
}

/*
** Can yield_from run sub's body inline in L (see inline_start)? sub has
** not started, its coroutine holds just its body and arguments, its body
** is a Lua function (a C one could not yield through), L is a
** generator's coroutine (closed with it: a plain coroutine is not) with
** fewer than INLINE_LEVELS frames (each inline level costs a C call),
** and the frames below are quiet (see quiet_below, take_over).
*/
static bool can_inline(lua_State *L, const Generator *sub) {
  lua_Debug ar;
  return sub->state == GEN_CREATED && sub->lua_body && is_generator_thread(L) &&
         lua_status(sub->co) == LUA_OK && lua_gettop(sub->co) > 0 &&
         !lua_getstack(sub->co, 0, &ar) && !lua_getstack(L, INLINE_LEVELS, &ar) &&
         quiet_below(L);
}

/* generator.yield_from(sub): delegates to sub until it returns; returns what it returned. */
static int gen_yield_from(lua_State *L) {
  Generator *sub = check_generator(L, 1);
  lua_settop(L, 1);
  if (can_inline(L, sub)) return inline_start(L, sub);
  lua_pushlightuserdata(L, (void *)&yield_from_mark);
  return yield_from_step(L, 0);
}

/*
** Reading a function's own code from lua_dump's output as it comes
** (ldump.c of Lua 5.4: the header, the function's header, its code):
** `pos` counts the bytes of the current part, `num` the size being read
** (written 7 bits a byte, most significant first, the last byte marked
** by 0x80), `left` what is left of the part.
*/
typedef enum {
  CODE_HEADER, CODE_UPVALUES, CODE_SOURCE, CODE_SOURCE_BYTES, CODE_LINE,
  CODE_LASTLINE, CODE_PARAMS, CODE_SIZE, CODE_INSTRUCTIONS, CODE_DONE
} code_part;

typedef struct code_reader {
  code_part part;
  size_t pos, num, left;
  unsigned char word[4];
  bool plain;  /* read to its end, and none of the opcodes looked for */
} code_reader;

/* The header up to LUAC_INT and LUAC_NUM: signature, 5.4, format 0, LUAC_DATA, sizes. */
static const unsigned char lua54_header[] = {
  0x1b, 'L', 'u', 'a', 0x54, 0, 0x19, 0x93, '\r', '\n', 0x1a, '\n',
  4, sizeof(lua_Integer), sizeof(lua_Number)
};

/* Reads one byte of a size (see code_reader); true at its last. */
static bool read_size(code_reader *r, unsigned char b) {
  r->num = (r->num << 7) | (b & 0x7f);
  return (b & 0x80) != 0;
}

/* Reads one instruction: done at an opcode looked for or at the last one. */
static void read_instruction(code_reader *r) {
  uint32_t instruction;
  memcpy(&instruction, r->word, sizeof instruction);
  unsigned op = instruction & 0x7f;
  if (op == LUA54_OP_TBC || op == LUA54_OP_TAILCALL || op == LUA54_OP_TFORPREP) {
    r->part = CODE_DONE;
  } else if (--r->left == 0) {
    r->plain = true;
    r->part = CODE_DONE;
  }
}

/*
** lua_Writer of body_is_plain: feeds the bytes to the reader. Stops the
** dump (non-zero) once the code is read, or at a header it does not know.
*/
static int read_code(lua_State *L, const void *p, size_t size, void *ud) {
  code_reader *r = ud;
  const unsigned char *b = p;
  (void)L;
  for (size_t i = 0; i < size && r->part != CODE_DONE; i++) {
    switch (r->part) {
      case CODE_HEADER:
        if (r->pos < sizeof lua54_header && b[i] != lua54_header[r->pos])
          r->part = CODE_DONE;
        else if (++r->pos == sizeof lua54_header + sizeof(lua_Integer) + sizeof(lua_Number))
          r->part = CODE_UPVALUES;
        break;
      case CODE_UPVALUES:  /* one byte */
        r->part = CODE_SOURCE;
        break;
      case CODE_SOURCE:  /* its length + 1, 0 for none */
        if (read_size(r, b[i])) {
          r->left = r->num > 0 ? r->num - 1 : 0;
          r->num = 0;
          r->part = r->left > 0 ? CODE_SOURCE_BYTES : CODE_LINE;
        }
        break;
      case CODE_SOURCE_BYTES:
        if (--r->left == 0) r->part = CODE_LINE;
        break;
      case CODE_LINE:
      case CODE_LASTLINE:
        if (read_size(r, b[i])) {
          r->num = 0;
          r->pos = 0;
          r->part = r->part == CODE_LINE ? CODE_LASTLINE : CODE_PARAMS;
        }
        break;
      case CODE_PARAMS:  /* numparams, is_vararg, maxstacksize */
        if (++r->pos == 3) r->part = CODE_SIZE;
        break;
      case CODE_SIZE:
        if (read_size(r, b[i])) {
          r->left = r->num;
          r->pos = 0;
          r->part = r->left > 0 ? CODE_INSTRUCTIONS : CODE_DONE;
        }
        break;
      case CODE_INSTRUCTIONS:
        r->word[r->pos++] = b[i];
        if (r->pos == sizeof r->word) {
          r->pos = 0;
          read_instruction(r);
        }
        break;
      case CODE_DONE:
        break;
    }
  }
  return r->part == CODE_DONE;
}

/*
** True if the Lua function on top of L is plain: its own code (not the
** functions it defines, which run in frames of their own) has no
** instruction that makes a to-be-closed variable and no tail call, so a
** coroutine started on it keeps it as its bottom frame, which never
** holds a <close> value. Read from lua_dump (stripped, stopped after the
** code): anything unexpected answers false, which only costs time.
*/
static bool body_is_plain(lua_State *L) {
  code_reader r = {CODE_HEADER, 0, 0, 0, {0}, false};
  lua_dump(L, read_code, &r, 1);
  return r.plain;
}

/*
** What a generator function knows of its body (upvalue BODY_UP), after
** one more generator made of it: reads its code the BODY_READ_AT-th time.
** A count (>= 0) when it is a Lua function not read yet. Needs 1 free slot.
*/
static lua_Integer body_kind(lua_State *L) {
  lua_Integer kind = lua_tointeger(L, lua_upvalueindex(BODY_UP));
  if (kind < 0) return kind;
  if (kind + 1 < BODY_READ_AT) {
    kind++;
  } else {
    lua_pushvalue(L, lua_upvalueindex(3));
    kind = body_is_plain(L) ? BODY_PLAIN : BODY_LUA;
    lua_pop(L, 1);
  }
  lua_pushinteger(L, kind);
  lua_replace(L, lua_upvalueindex(BODY_UP));
  return kind;
}

/*
** Pushes a coroutine for a new generator: one from the pool that
** inline_start fills (it never ran; it gets L's hook, as lua_newthread
** gives it), else a new one. Its extra space gets `tag` (see thread_tags):
** what is known of the body its bottom frame will run. Needs 2 free slots.
*/
static lua_State *take_thread(lua_State *L, int tag) {
  lua_State *co;
  thread_pool *pool = lua_touserdata(L, lua_upvalueindex(POOL_UP));
  if (pool->n > 0) {
    lua_getiuservalue(L, lua_upvalueindex(POOL_UP), pool->n);
    lua_pushnil(L);
    lua_setiuservalue(L, lua_upvalueindex(POOL_UP), pool->n--);
    co = lua_tothread(L, -1);
    lua_sethook(co, lua_gethook(L), lua_gethookmask(L), lua_gethookcount(L));
  } else {
    co = lua_newthread(L);
  }
  *(const char **)lua_getextraspace(co) = &thread_tags[tag];
  return co;
}

/*
** A generator function: calling it makes a generator that will run its
** function (upvalue 3) with the call's arguments. Upvalue 2 is the
** metatable, upvalue POOL_UP the pool of coroutines, upvalue BODY_UP
** what is known of the function.
*/
static int generator_function(lua_State *L) {
  int nargs = lua_gettop(L);
  luaL_checkstack(L, 3, "too many arguments");
  lua_Integer body = body_kind(L);
  Generator *g = lua_newuserdatauv(L, sizeof *g, 1);
  g->co = NULL;  /* dead until its coroutine exists */
  g->state = GEN_DEAD;
  g->checks = 0;
  g->guarded = false;
  g->lua_body = body != BODY_C;
  g->plain_body = body == BODY_PLAIN;
  g->took_over = false;
  g->delegated = false;
  g->deferred = false;
  g->nret = -1;
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_setmetatable(L, -2);
  lua_State *co = take_thread(L, body == BODY_PLAIN ? TAG_PLAIN : body < 0 ? TAG_LUA : TAG_NEW);
  if (nargs > 0) lua_rotate(L, 1, 2);  /* generator, thread, arguments... */
  if (!lua_checkstack(co, nargs + 1)) return luaL_error(L, "too many arguments");
  lua_pushvalue(L, lua_upvalueindex(3));
  lua_xmove(L, co, 1);
  lua_xmove(L, co, nargs);
  lua_setiuservalue(L, 1, 1);
  g->co = co;
  g->state = GEN_CREATED;
  return 1;
}

/* generator.wrap(f): the generator function of f. */
static int gen_wrap(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_pushvalue(L, 1);
  lua_pushvalue(L, lua_upvalueindex(POOL_UP));
  lua_pushinteger(L, lua_iscfunction(L, 1) ? BODY_C : 0);
  lua_pushcclosure(L, generator_function, BODY_UP);
  return 1;
}

/* generator.isgenerator(v): is v a host.Generator? */
static int gen_isgenerator(lua_State *L) {
  int ours = lua_getmetatable(L, 1) && lua_rawequal(L, -1, lua_upvalueindex(2));
  lua_pushboolean(L, ours);
  return 1;
}

static const luaL_Reg generator_funcs[] = {
  {"wrap", gen_wrap},
  {"yield", gen_yield},
  {"yield_from", gen_yield_from},
  {"isgenerator", gen_isgenerator},
  {NULL, NULL}
};

static const luaL_Reg generator_methods[] = {
  {"send", gen_send},
  {"next", gen_next},
  {"throw", gen_throw},
  {"close", gen_close},
  {"status", gen_status},
  {"result", gen_result},
  {"enumerate", gen_enumerate},
  {NULL, NULL}
};

static const luaL_Reg generator_metamethods[] = {
  {"__call", gen_call},
  {"__close", gen_close},
  {"__tostring", gen_tostring},
  {"__index", NULL},  /* placeholder */
  {NULL, NULL}
};

/* Pushes coroutine.yield if it is a C function as loaded, or nil. */
static void push_plain_yield(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, "coroutine") == LUA_TTABLE)
    lua_getfield(L, -1, "yield");
  else
    lua_pushnil(L);
  if (!lua_iscfunction(L, -1)) {
    lua_pop(L, 1);
    lua_pushnil(L);
  }
  lua_replace(L, -3);
  lua_pop(L, 1);
}

/*
** Pushes the metatable of generators, with coroutine.yield on top of the
** stack. Every function in it and in the module gets its address (a light
** userdata) as upvalue 1 for check_generator; the methods and metamethods
** get coroutine.yield (see plain_yield) as upvalue 2; the module's
** functions get the table as upvalue 2, coroutine.yield as upvalue 3 and
** the pool of coroutines (see thread_pool) as upvalue POOL_UP.
** The guards' metatable (registry, at guard_key) holds guard_gc, with
** coroutine.yield as its upvalue, hides itself from getmetatable, and
** keeps the pool of guards let go (see drop_guard) in its array part.
*/
static void createmeta(lua_State *L) {
  int yield_idx = lua_gettop(L);
  lua_createtable(L, GUARD_POOL, 2);
  lua_pushvalue(L, yield_idx);
  lua_pushcclosure(L, guard_gc, 1);
  lua_setfield(L, -2, "__gc");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_rawsetp(L, LUA_REGISTRYINDEX, &guard_key);
  luaL_newmetatable(L, GENERATOR_TYPE);
  lua_pushlightuserdata(L, (void *)lua_topointer(L, -1));
  lua_pushvalue(L, yield_idx);
  luaL_setfuncs(L, generator_metamethods, 2);
  luaL_newlibtable(L, generator_methods);
  lua_pushlightuserdata(L, (void *)lua_topointer(L, -2));
  lua_pushvalue(L, yield_idx);
  luaL_setfuncs(L, generator_methods, 2);
  lua_setfield(L, -2, "__index");
}

int luaopen_host_generator(lua_State *L) {
  luaL_newlibtable(L, generator_funcs);
  push_plain_yield(L);
  createmeta(L);                                           /* lib, yield, mt */
  lua_pushlightuserdata(L, (void *)lua_topointer(L, -1));
  lua_rotate(L, -3, 1);                               /* lib, address, yield, mt */
  lua_insert(L, -2);                                  /* lib, address, mt, yield */
  lua_newuserdatauv(L, sizeof(thread_pool), THREAD_POOL);   /* ..., yield, pool */
  ((thread_pool *)lua_touserdata(L, -1))->n = 0;
  luaL_setfuncs(L, generator_funcs, POOL_UP);
  return 1;
}
