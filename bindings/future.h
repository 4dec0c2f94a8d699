/*
** future.h: the Future of host.futures (floor 2), shared by the three
** executors.
**
** A host_future is a refcounted C object: a mutex, a condvar and a state
** (PENDING, RUNNING, CANCELLED, FINISHED). Any thread may complete it, even
** one that holds no Lua state, with a payload of bytes (host_future_set_payload).
** A universe looks at it through one proxy userdata ("host.Future") whose
** uservalues hold the outcome as Lua values, the done-callbacks, and the
** decoder that turns a payload into values when someone asks for them.
** The proxy owns one reference; its __gc drops it, and any later use of the
** proxy raises "attempt to use a finalized host.Future".
*/
#ifndef HOST_FUTURE_H
#define HOST_FUTURE_H

#include <stdbool.h>
#include <stddef.h>

#include "lua.h"

#include "util.h"

typedef struct host_future host_future;

typedef enum host_future_state {
  HOST_FUTURE_PENDING,
  HOST_FUTURE_RUNNING,
  HOST_FUTURE_CANCELLED,
  HOST_FUTURE_FINISHED
} host_future_state;

/* Pushes a new Future proxy with a new PENDING future; returns the future. */
host_future *host_future_push_new(lua_State *L);

/* The future of the proxy at idx (raises unless it is a live host.Future). */
host_future *host_future_check(lua_State *L, int idx);

/*
** For the pools, which hold proxies in their queues: the future of the
** proxy at idx, or NULL when the proxy was finalized (a __gc called by
** hand). A finalized proxy counts as a cancelled future: the functions
** below accept it (and NULL) and do nothing, so a pool skips its item.
*/
host_future *host_future_of(lua_State *L, int idx);

/* Takes / drops a reference (atomic; the last drop frees). */
void host_future_ref(host_future *f);
void host_future_unref(host_future *f);

/* PENDING -> RUNNING. False when it was cancelled: do not run the task. */
bool host_future_set_running(host_future *f);

/* The current state. */
host_future_state host_future_state_of(host_future *f);

/*
** Completes the proxy at idx (GIL held) with the n values on top of the
** stack (popped), then runs its callbacks in this thread. Returns false,
** storing nothing, when it was done already (cancelled, say).
*/
bool host_future_set_result(lua_State *L, int idx, int n);

/*
** Completes the proxy at idx with the error on top (popped) and runs its
** callbacks; false, storing nothing, when it was done already.
*/
bool host_future_set_error(lua_State *L, int idx);

/*
** Fails the proxy at idx as a failure whose error was lost (no payload:
** allocates nothing, for when memory ran out storing the error), wakes its
** waiters and runs its callbacks; false when it was done already.
*/
bool host_future_fail_lost(lua_State *L, int idx);

/* True when f finished with an error. */
bool host_future_failed(host_future *f);

/*
** Completes f from any thread: `bytes` (malloc'd, owned by the future from
** now on) hold the outcome, to be decoded by the proxy's decoder in the
** universe when asked. `ok` false means the bytes encode an error. Returns
** false (and frees bytes) if f was already done. Callbacks do not run here:
** the caller that holds the proxy's universe runs host_future_run_callbacks.
*/
bool host_future_set_payload(host_future *f, bool ok, char *bytes, size_t len);

/* Sets the decoder of the proxy at idx to the function on top (popped). */
void host_future_set_decoder(lua_State *L, int idx);

/*
** Sets the interrupter of the proxy at idx to the function on top (popped):
** cancel{interrupt = true} calls it with the future while it runs.
*/
void host_future_set_interrupter(lua_State *L, int idx);

/*
** Sets the wait check of the proxy at idx to the function on top (popped),
** for a pool whose futures only some thread can complete (its manager, its
** only worker): before a wait on the future that would block while it is
** not done (result, exception, futures.wait, as_completed, map), the
** waiting thread calls check(future); when that thread is the one the
** future needs, so the wait could never end, check returns the message
** that the wait raises instead of waiting.
*/
void host_future_set_wait_check(lua_State *L, int idx);

/*
** True when callbacks were added to f and have not run: a completer outside
** the universe then has someone there run them. Callbacks added after f is
** done run at once in the thread that adds them.
*/
bool host_future_wants_callbacks(host_future *f);

/* Runs (once) the done-callbacks of the proxy at idx, if it is done. */
void host_future_run_callbacks(lua_State *L, int idx);

/*
** Cancels the proxy at idx if still pending (runs callbacks). Returns true
** if it is cancelled now.
*/
bool host_future_cancel(lua_State *L, int idx);

/*
** Waits for the proxy at idx (GIL released) up to `timeout` seconds (< 0:
** no limit) and pushes every value its task returned, returning their
** count. Raises the task's error, a TimeoutError or a CancelledError.
*/
int host_future_result(lua_State *L, int idx, double timeout);

/*
** Waits for the proxy at idx (GIL released) until it is done or `d`
** passes, and returns its state. Raises only "interrupted!".
*/
host_future_state host_future_wait(lua_State *L, int idx, const host_deadline *d);

/*
** Reads the timeout field `field` of the options table at arg: -1 when
** absent; raises "bad argument #arg" for a non-number or a negative one.
*/
double host_future_timeout_field(lua_State *L, int arg, const char *field);

/* Adds Future, wait, as_completed and the wait constants to the table on top. */
void host_open_future(lua_State *L);

#endif
