/*
** executor.h: what the three executors share (floor 3): `map`, written
** once on top of each pool's `submit`, and each pool's opener.
*/
#ifndef HOST_EXECUTOR_H
#define HOST_EXECUTOR_H

#include "lua.h"

/*
** ex:map(fn, t1, t2, ... [, {timeout =, chunksize =}]): submits
** fn(t1[i], t2[i], ...) for i up to the shortest table, through ex:submit,
** and returns a generic-for iterator giving `i, results...` in order, with a
** closing value that cancels what has not started when the loop is left.
** The timeout counts from the call; a task's error is raised at its turn.
*/
int host_executor_map(lua_State *L);

/*
** decoder(bytes, ok) -> the outcome table {n = k, values...} of a future
** whose result or error came encoded by the codec from another universe
** or process (functions allowed: the pools made those bytes themselves).
*/
int host_executor_decoder(lua_State *L);

/* Adds `_run_chunk` (map's chunk runner) to the module table on top. */
void host_open_executor(lua_State *L);

/* Add each executor's constructor to the module table on top. */
void host_open_thread_pool(lua_State *L);
void host_open_process_pool(lua_State *L);
void host_open_interpreter_pool(lua_State *L);

#endif
