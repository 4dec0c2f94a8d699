/*
** executor.h: what the three executors share (floor 3): `map`, written
** once on top of each pool's `submit`, their metatables and options, and
** each pool's opener.
*/
#ifndef HOST_EXECUTOR_H
#define HOST_EXECUTOR_H

#include <stdbool.h>

#include "lua.h"
#include "lauxlib.h"

/*
** decoder(bytes, ok) -> the outcome table {n = k, values...} of a future
** whose result or error came encoded by the codec from another universe
** or process (functions allowed: the pools made those bytes themselves).
** An error comes as the error value and its remote traceback text (see
** host_executor_remote_traceback), joined here: a string error becomes
** "message\n<remote traceback>\n", an error object gets the text as its
** `remote_traceback` (after any it had) and no `traceback`, so the
** caller's own traceback is added where it is raised again, after it.
*/
int host_executor_decoder(lua_State *L);

/*
** For a task that failed in a worker: on top, the error value and its
** traceback from host_pcall_task (or nil). Replaces the traceback with the
** text the caller is shown: "remote traceback (<who>):\n\t<frame>...",
** from the error object's own traceback when it has one; nil when there
** is none.
*/
void host_executor_remote_traceback(lua_State *L, const char *who);

/* True when the value at idx is map's chunk runner (`_run_chunk`). */
bool host_executor_is_chunk(lua_State *L, int idx);

/*
** Encodes a task for a worker in another universe or process: the n
** values from `first`, a function and its arguments. On failure returns
** the codec's status and pushes what submit raises, naming the value as
** the caller wrote it, with the path inside it: "cannot submit argument
** #1: cannot serialize userdata at .out (FILE*)", "cannot submit the
** function: ...". A map chunk's call names its items' function and an
** item's argument the same way (as a map without chunks does).
*/
int host_executor_encode_call(lua_State *L, int first, int n, char **buf, size_t *len);

/*
** Encodes a pool's initializer and its initargs, the n values from
** `first`, for its workers. On failure returns the codec's status and
** pushes what the constructor raises: "cannot send initargs[2]: cannot
** serialize thread (coroutine)", "cannot send the initializer: ...".
*/
int host_executor_encode_initializer(lua_State *L, int first, int n, char **buf, size_t *len);

/*
** Encodes the results of a task, the values from `first` to the top, for
** the trip back from a worker. On failure returns the codec's status and
** pushes the task's error, naming the value as the task returned it, with
** the path inside it: "cannot send the result back: cannot serialize
** thread (coroutine)" for one result, "cannot send result #2 back: ..."
** for one of several. A map chunk's results (`chunk`: the task was
** _run_chunk) that do not encode are cut before the first item whose own
** results do not, and carry that item's error after them (see map's
** take_chunk): the loop gets the items before it, then that error, at
** that item's turn.
*/
int host_executor_encode_results(lua_State *L, int first, bool chunk, char **buf, size_t *len);

/* Reads shutdown's options {wait = true, cancel_futures, interrupt} at idx. */
void host_executor_shutdown_options(lua_State *L, int idx, bool *wait, bool *cancel,
                                    bool *interrupt);

/*
** Defines the metatable of executor type tname with host_type_define:
** `methods` plus `map` as __index, __gc, __tostring, and __close =
** shutdown{wait = true}; and an exit handler that shuts down every live
** pool of the type (see track). ex:map(fn, t1, t2, ... [, {timeout =,
** chunksize =}]) submits fn(t1[i], t2[i], ...) for i up to the shortest
** table through ex:submit, and returns a generic-for iterator giving
** `i, results...` in order, with a closing value that cancels what has
** not started when the loop is left. The timeout counts from the call; a
** task's error is raised at its turn.
*/
void host_executor_define(lua_State *L, const char *tname, const luaL_Reg *methods,
                          lua_CFunction gc, lua_CFunction tostring);

/* Adds the pool at idx to (or with add false removes it from) its live set. */
void host_executor_track(lua_State *L, int idx, const char *tname, bool add);

/*
** Reads the options every pool's constructor shares from the table at 1
** (an empty one when absent), whose keys must be among `known` (the
** pool's whole list): returns max_workers (default_workers when absent;
** 1..1024), and leaves initializer at 2 and initargs at 3, checked.
*/
lua_Integer host_executor_options(lua_State *L, lua_Integer default_workers,
                                  const char *const known[]);

/*
** Pushes the initializer and its arguments from the info table at `info`
** (fields "initializer" and "initargs", whose `n` or length counts them;
** host_executor_options checked both) and returns how many arguments;
** returns -1 with nothing pushed when there is no initializer. Raises
** only when the stack cannot grow that far.
*/
int host_executor_push_initializer(lua_State *L, int info);

/* The number of online CPUs (at least 1). */
lua_Integer host_executor_cores(void);

/* Adds `_run_chunk` (map's chunk runner) to the module table on top. */
void host_open_executor(lua_State *L);

/* Add each executor's constructor to the module table on top. */
void host_open_thread_pool(lua_State *L);
void host_open_process_pool(lua_State *L);
void host_open_interpreter_pool(lua_State *L);

#endif
