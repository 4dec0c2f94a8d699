/*
** trace.h: the recorder behind `host --trace` and `host.trace` (floor 1,
** internal: not installed). A universe's trace collects events in one
** buffer per OS thread (no lock shared by threads on the hot path) and
** writes them as Chrome's Trace Event Format (TRACE_FORMAT.md). Every hook
** is one branch on the universe's `tracing` flag while tracing is off:
** call them as HOST_TRACE(u, host_trace_gil(ts, true)).
*/
#ifndef HOST_TRACE_H
#define HOST_TRACE_H

#include <stdbool.h>

#include "universe.h"

typedef struct host_future host_future;  /* future.h's (a floor above) */

/*
** Runs `call` only while universe u records a trace. The acquire load (a
** plain load on x86) orders what start() set up before the flag.
*/
#define HOST_TRACE(u, call) \
  do { if (atomic_load_explicit(&(u)->tracing, memory_order_acquire)) call; } while (0)

/* Runs `call` only while the universe of L records a trace. */
#define HOST_TRACE_L(L, call) do { if (host_trace_active(L)) call; } while (0)

/* True when the universe of L records a trace. */
HOST_INTERNAL bool host_trace_active(lua_State *L);

/* ts took (B) or gave up (E) its universe's GIL. */
HOST_INTERNAL void host_trace_gil(host_tstate *ts, bool take);

/* The switch interval asked ts to yield the GIL. */
HOST_INTERNAL void host_trace_switch_request(host_tstate *ts);

/* ts handed the GIL's next turn to sleeping thread w. */
HOST_INTERNAL void host_trace_handoff(host_tstate *ts, host_tstate *w);

/* ts starts waiting (GIL given up) for what ts->wait_what names. */
HOST_INTERNAL void host_trace_wait_begin(host_tstate *ts);

/* ts ends its wait (before it takes the GIL again). */
HOST_INTERNAL void host_trace_wait_end(host_tstate *ts, bool timed_out);

/* Thread ts begins (before its first GIL) or ends (after its last) its run. */
HOST_INTERNAL void host_trace_run(host_tstate *ts, bool start);

/*
** ts resumes a coroutine (begin) or the resume returned: a span, with
** --trace-coroutines only. Open resume spans close before each GIL E and
** open again after the next GIL B, so the lane's spans stay nested.
*/
HOST_INTERNAL void host_trace_resume(host_tstate *ts, bool begin);

/* ts's OS thread is done with its record: its buffer is flushed. */
HOST_INTERNAL void host_trace_thread_exit(host_tstate *ts);

/* Names the calling thread's lane in L's universe (GIL held). */
HOST_INTERNAL void host_trace_name(lua_State *L, const char *name);

/* Names the calling thread's lane after the field "name" of the table at idx. */
HOST_INTERNAL void host_trace_name_field(lua_State *L, int idx);

/* A blocking call of the wrapped stdlib (`io.read`, `os.execute`) begins/ends. */
HOST_INTERNAL void host_trace_io(lua_State *L, const char *what, bool begin);

/* A task of `pool` was submitted as future f (on the submitting lane). */
HOST_INTERNAL void host_trace_submit(lua_State *L, host_future *f, const char *pool);

/*
** The task of future f starts (outcome NULL) or ends with `outcome` ("ok",
** "raised", "cancelled") on the calling lane. In a process-pool worker f is
** NULL: the parent names the task from what it dispatched to that pid.
*/
HOST_INTERNAL void host_trace_task(lua_State *L, host_future *f, const char *pool,
                                   const char *outcome);

/*
** The parent hands the work item at idx (a table whose [1] is its future)
** to process-pool worker `pid`: its k-th task there.
*/
HOST_INTERNAL void host_trace_dispatch(lua_State *L, int idx, pid_t pid);

/* In a child just forked: forget the parent's events, record the child's own. */
HOST_INTERNAL void host_trace_after_fork(host_universe *u);

/* In a forked child about to exit: hands its events to the parent's file. */
HOST_INTERNAL void host_trace_child_exit(void);

/*
** An isolated universe (an interpreter-pool worker's) made for `parent`:
** while the parent traces, it records into the parent's trace on a lane
** named "<name> <index>". host_trace_share takes a reference for the pool
** to keep (NULL when the parent does not trace; unshare accepts NULL).
*/
HOST_INTERNAL void *host_trace_share(lua_State *parent);
HOST_INTERNAL void host_trace_attach(lua_State *L, void *shared, const char *name, int index);
HOST_INTERNAL void host_trace_unshare(void *shared);

/* At exit (host_close, os.exit): writes the file if the universe traces. */
HOST_INTERNAL void host_trace_at_exit(lua_State *L);

/* Frees u's trace (universe_free). */
HOST_INTERNAL void host_trace_free(host_universe *u);

#endif
