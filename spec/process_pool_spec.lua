-- spec/process_pool_spec.lua: futures.ProcessPoolExecutor over fork(): the
-- futures API on worker processes, and its faults (a killed worker, a task
-- that raises or exits, values that cannot cross, Ctrl-C, the parent
-- leaving or killed), and its boundaries (use after __gc, many initargs,
-- retiring workers, inherited and dropped pools, raising __tostring).
-- Every wait has a timeout.
local futures = require 'host.futures'
local thread = require 'host.thread'
local herror = require 'host.error'
local sh = require 'spec.support.sh'
local P = sh.host:gsub('%p', '%%%0')  -- errors start with the program's path

local T = 10

-- The number of open descriptors of this process.
local function fd_count()
  -- files earlier specs dropped would otherwise close in the middle of a count
  collectgarbage()
  collectgarbage()
  -- read in-process: a listing by `ls` under io.popen raced with popen
  -- closing its copy of the pipe's write end, and counted it now and then
  local n = 0
  for _ in require('lfs').dir('/proc/' .. tostring(require('host.spec_pid')) .. '/fd') do n = n + 1 end
  return n
end

-- Is process pid still there (a zombie counts as there)?
local function exists(pid)
  local f = io.open('/proc/' .. pid .. '/stat')
  if not f then return false end
  f:close()
  return true
end

-- Is process pid still running (a zombie does not count: its parent, or
-- init for an orphan, may be slow to reap it)?
local function running(pid)
  local f = io.open('/proc/' .. pid .. '/stat')
  if not f then return false end
  local stat = f:read('a') or ''
  f:close()
  return stat:match('^%d+ %b() (%a)') ~= 'Z'
end

-- Waits up to `limit` seconds for every pid to be gone (`alive` tells).
local function all_gone(pids, limit, alive)
  alive = alive or exists
  local deadline = require('host.time').monotonic() + limit
  repeat
    local any = false
    for _, pid in ipairs(pids) do any = any or alive(pid) end
    if not any then return true end
    thread.sleep(0.02)
  until require('host.time').monotonic() > deadline
  return false
end

-- The number of child processes of this process (plus one: the shell that
-- counts them).
local function child_count()
  local p = io.popen('pgrep -c -P ' .. tostring(require('host.spec_pid')))
  local n = tonumber(p:read('a'):match('%d+'))
  p:close()
  return n
end

local run_script = sh.host_script

-- Lua source of three helpers, for this file and for the scripts it runs:
-- wait_for_file(path), which a task runs to wait (at most 10 s) until the
-- parent makes the file; wait_pids(ex, n), which waits (at most 10 s) until
-- ex has n workers (the manager forks them as work comes) and returns
-- ex:pids(); and start_workers(ex, n), which starts n workers of ex and
-- returns ex:pids(). Workers start on demand, so its n tasks are kept
-- running together: each waits for a file made once all are submitted.
local HELPERS = [[
  local function wait_pids(ex, n)
    local t = os.time()
    while #ex:pids() < n and os.time() - t < 10 do require('host.thread').sleep(0.002) end
    return ex:pids()
  end
  local function wait_for_file(p)
    local t = os.time()
    while os.time() - t < 10 do
      local f = io.open(p)
      if f then f:close() return true end
    end
    return false
  end
  local function start_workers(ex, n)
    local path = os.tmpname()
    os.remove(path)
    local fs = {}
    for i = 1, n do fs[i] = ex:submit(wait_for_file, path) end
    assert(io.open(path, 'w')):close()
    for i = 1, n do assert(fs[i]:result(20), 'a worker did not see the file') end
    os.remove(path)
    return ex:pids()
  end
  return wait_for_file, start_workers, wait_pids
]]
local wait_for_file, start_workers, wait_pids = load(HELPERS)()
-- The same, as the first line of a script: it defines start_workers and wait_pids.
local WITH_HELPERS = 'local _, start_workers, wait_pids = (function() ' .. HELPERS:gsub('\n%s*', ' ') .. ' end)()\n'

-- The number of times `plain` occurs in s.
local function count(s, plain)
  local n, at = 0, 1
  while true do
    local i, j = s:find(plain, at, true)
    if not i then return n end
    n, at = n + 1, j + 1
  end
end

-- A gate a task waits on (at most 10 s) until the parent opens it: so a
-- done-callback added meanwhile runs on the manager thread.
local function gate()
  local path = os.tmpname()
  os.remove(path)
  local function open() assert(io.open(path, 'w')):close() end
  return path, wait_for_file, open
end

describe('ProcessPoolExecutor', function()
  setup(function()
    -- this process's pid, for /proc/<pid>/fd (io.popen's shell is a child)
    local f = assert(io.open('/proc/self/stat'))
    local pid = tonumber(f:read('a'):match('^(%d+)'))
    f:close()
    package.loaded['host.spec_pid'] = pid
  end)

  it('a worker forked while a parent thread waits on a Queue can use that Queue (hostile review)', function()
    local out, err, code = sh.host_script([[
      local thread = require 'host.thread'
      local Queue = require('host.queue').Queue
      local futures = require 'host.futures'
      local time = require 'host.time'
      Q = Queue()
      local started = thread.Event()
      local t = thread.start(function() started:set(); return Q:get(10) end)
      assert(started:wait(5))
      time.sleep(0.2)  -- t sleeps in Q:get now, and the worker is forked meanwhile
      local ex = futures.ProcessPoolExecutor { max_workers = 1 }
      local f = ex:submit(function() Q:put('x'); require('host.time').sleep(0.01); return 'task done' end)
      print(pcall(f.result, f, 5))
      Q:put('parent')
      print(t:join(5))
      ex:shutdown()
    ]], 60)
    assert.are.equal('', err)
    assert.are.equal(0, code)
    assert.are.equal('true\ttask done\ntrue\tparent\n', out)
  end)

  it('a worker forked while a parent thread waits on a Condition can wait on and notify it', function()
    if os.getenv 'TSAN_OPTIONS' then
      pending('TSan forbids a new thread in a child forked by a multithreaded process')
      return
    end
    -- the FIFO node of the parent's waiter lives on a stack that glibc reuses for the
    -- worker's new thread: appending that thread's node made a cycle and notify_all spun
    local out, err, code = sh.host_script([[
      local thread = require 'host.thread'
      local futures = require 'host.futures'
      C = thread.Condition()
      local ready = thread.Event()
      local a = thread.start(function() C:acquire(); ready:set(); C:wait(3); C:release() end)
      assert(ready:wait(5))
      C:acquire(); C:release()  -- a sleeps in C:wait now, and the worker is forked meanwhile
      local ex = futures.ProcessPoolExecutor { max_workers = 1 }
      local f = ex:submit(function()
        local thread = require 'host.thread'
        local inwait, r = false, nil
        local t = thread.start(function() C:acquire(); inwait = true; r = C:wait(5); C:release() end)
        while not inwait do thread.sleep(0.001) end
        C:acquire()
        local shown = tostring(C):match('waiters=%d+')
        C:notify_all()
        C:release()
        assert(t:join(5))
        return shown, r
      end)
      print(pcall(f.result, f, 5))
      ex:shutdown { cancel_futures = true }
      a:join(5)
    ]], 20)
    assert.are.equal('', err)
    assert.are.equal(0, code)
    assert.are.equal('true\twaiters=1\ttrue\n', out)
  end)

  it('runs tasks in other processes and returns all their values', function()
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 2 })
    local me = require('host.spec_pid')
    local f = ex:submit(function(a, b) return a + b, nil, 'z' end, 1, 2)
    assert.are.same({ n = 3, 3, nil, 'z' }, table.pack(f:result(T)))
    local pid = ex:submit(function()
      local s = assert(io.open('/proc/self/stat')):read('a')
      return tonumber(s:match('^(%d+)'))
    end):result(T)
    assert.are_not.equal(me, pid)
    -- workers start on demand: tasks one after the other need only one
    assert.are.same({ pid }, ex:pids())
  end)

  it('starts workers on demand, never more than max_workers', function()
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 2 })
    assert.are.same({}, ex:pids())
    local path, wait, open = gate()
    local one = ex:submit(wait, path)
    assert.are.equal(1, #wait_pids(ex, 1))
    local two = ex:submit(wait, path)  -- the first worker is busy
    assert.are.equal(2, #wait_pids(ex, 2))
    local three = ex:submit(wait, path)  -- both are: it waits for one
    thread.sleep(0.1)
    assert.are.equal(2, #ex:pids())
    open()
    assert.are.same({ true, true, true }, { one:result(T), two:result(T), three:result(T) })
    os.remove(path)
    local got = {}
    for i, v in ex:map(function(x) return x end, { 1, 2, 3, 4, 5, 6, 7, 8 }, { timeout = T }) do got[i] = v end
    assert.are.same({ 1, 2, 3, 4, 5, 6, 7, 8 }, got)
    assert.are.equal(2, #ex:pids())
  end)

  it('a worker sleeps once per task: the parent reading its result does not wake it', function()
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    local function sleeps()
      local f = assert(io.open('/proc/self/status'))
      local n = f:read('a'):match('voluntary_ctxt_switches:%s*(%d+)')
      f:close()
      return tonumber(n)
    end
    local first = ex:submit(sleeps):result(T)
    for _ = 1, 199 do ex:submit(sleeps):result(T) end
    local per_task = (ex:submit(sleeps):result(T) - first) / 200
    -- before: about 2 (it slept in recv, which its socket's write space woke too)
    assert.is_true(per_task < 1.5, ('%.2f sleeps per task'):format(per_task))
  end)

  it('lists only live workers in pids(): none after shutdown, never a 0', function()
    local ex = assert(futures.ProcessPoolExecutor { max_workers = 2 })
    assert.are.equal(2, #start_workers(ex, 2))
    ex:shutdown()
    -- before: { 0, 0 }, and `kill -9 0` kills the caller's process group
    assert.are.same({}, ex:pids())
  end)

  it('carries closures with upvalues; _ENV is the worker\'s globals', function()
    -- busted runs specs in an environment of its own: write the real globals
    local set_global = load('WORKER_TAG_FOR_SPEC = ...')
    local factor = 7
    local ex <close> = assert(futures.ProcessPoolExecutor {
      max_workers = 1, initializer = set_global, initargs = { 'worker' } })
    set_global('parent')  -- after the fork: the worker does not see it
    local f = ex:submit(function(x) return x * factor, WORKER_TAG_FOR_SPEC end, 6)
    assert.are.same({ 42, 'worker' }, { f:result(T) })
    set_global(nil)
  end)

  it('maps in order, with chunks', function()
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 2 })
    local got = {}
    for i, v in ex:map(function(x) return x * x end, { 1, 2, 3, 4, 5, 6, 7 }, { chunksize = 3 }) do got[i] = v end
    assert.are.same({ 1, 4, 9, 16, 25, 36, 49 }, got)
  end)

  it('raises a task error carrying the worker traceback of the task alone', function()
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    local function inner() error('worker broke') end
    local f = ex:submit(function() inner() end)
    local ok, err = pcall(f.result, f, T)
    assert.is_false(ok)
    -- the task's frames only: not the pool's constructor (the fork point) nor this spec
    local pid = ex:pids()[1]
    assert.matches('^spec/process_pool_spec.lua:%d+: worker broke\n' ..
      'remote traceback %(worker process ' .. pid .. '%):\n' ..
      "\t%[C%]: in function 'error'\n" ..
      "\tspec/process_pool_spec.lua:%d+: in upvalue 'inner'\n" ..
      '\tspec/process_pool_spec.lua:%d+: in function <spec/process_pool_spec.lua:%d+>\n$', err)
    assert.are.equal('fine', ex:submit(function() return 'fine' end):result(T))
  end)

  it('shows the worker traceback, then the caller traceback, apart', function()
    local out, err, code = sh.host_script [[
      local futures = require 'host.futures'
      local ex = futures.ProcessPoolExecutor { max_workers = 1 }
      local function task() error('remote boom') end
      local f = ex:submit(task)
      local function wait_for_it() return f:result(10) end
      wait_for_it()
    ]]
    assert.are.equal(1, code, out)
    local remote, caller = err:match('^' .. P .. ': [^\n]*:3: remote boom\n(remote traceback %(worker process %d+%):\n.-)\n\n(stack traceback:\n.*)$')
    assert(remote, err)
    assert.matches("^remote traceback %(worker process %d+%):\n\t%[C%]: in function 'error'\n\t[^\n]*:3: in function <[^\n]*:3>$", remote)
    assert.matches("^stack traceback:\n\t%[C%]: in method 'result'\n\t[^\n]*:5: in local 'wait_for_it'\n\t[^\n]*:6: in main chunk\n", caller)
    assert.is_nil(err:find('ProcessPoolExecutor', 1, true))
    assert.is_nil(err:find('stack traceback:', err:find('stack traceback:', 1, true) + 1, true))
  end)

  it('skips the middle of a deep task traceback, ending at the task', function()
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    local f = ex:submit(function()
      local function rec(n) if n == 0 then error('deep') end return rec(n - 1) + 0 end
      local r = rec(50)
      return r
    end)
    local ok, err = pcall(f.result, f, T)
    assert.is_false(ok)
    local frames = select(2, err:gsub('\n\t', ''))
    assert.are.equal(22, frames)  -- 10, the skip line, 11: as luaL_traceback
    assert.matches('\n\t...\t(skipping 32 levels)\n', err, 1, true)
    assert.matches('\n\tspec/process_pool_spec.lua:%d+: in function <spec/process_pool_spec.lua:%d+>\n$', err)
  end)

  it('gives an error object the worker traceback as remote_traceback', function()
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    local f = ex:submit(function() error(require('host.error').new('ValueError', 'typed')) end)
    local ok, err = pcall(f.result, f, T)
    assert.is_false(ok)
    assert.is_true(herror.is(err, 'ValueError'))
    assert.is_nil(err.traceback)  -- where it is raised again in the caller adds it
    assert.matches("^remote traceback %(worker process %d+%):\n\t%[C%]: in function 'error'\n\t", err.remote_traceback)
    assert.matches('^ValueError: typed\nremote traceback %(worker process %d+%):\n', tostring(err))
    local _, stderr, code = sh.host_script [[
      local futures = require 'host.futures'
      local ex = futures.ProcessPoolExecutor { max_workers = 1 }
      ex:submit(function() error(require('host.error').new('ValueError', 'typed')) end):result(10)
    ]]
    assert.are.equal(1, code)
    assert.matches('^' .. P .. ': ValueError: typed\nremote traceback %(worker process %d+%):\n\t[^\n]*\n\t[^\n]*\n\n' ..
      "stack traceback:\n\t%[C%]: in method 'result'\n", stderr)
  end)

  it('carries task payloads of every size, one after another, to one worker', function()
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    local function size(t) return #t, t:sub(-3) end
    for _, n in ipairs { 10, 4090, 4100, 3 * 1024 * 1024, 10, 2 * 1024 * 1024, 1 } do
      assert.are.same({ n, string.rep('x', math.min(n, 3)) }, { ex:submit(size, string.rep('x', n)):result(T) })
    end
    local fs = {}
    for i = 1, 50 do fs[i] = ex:submit(size, string.rep('y', i * 997)) end
    for i = 1, 50 do assert.are.equal(i * 997, (fs[i]:result(T))) end
  end)

  it('refuses an unserializable argument at submit, naming its path', function()
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    assert.has_error(function() ex:submit(print, { out = io.stdout }) end,
      'cannot submit argument #1: cannot serialize userdata at .out (FILE*)')
  end)

  it('fails only the future whose result cannot come back', function()
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    local f = ex:submit(function() return coroutine.create(print) end)
    local ok, err = pcall(f.result, f, T)
    assert.is_false(ok)
    assert.matches('cannot send the result back: cannot serialize thread', err, 1, true)
    assert.are.equal(2, ex:submit(function() return 2 end):result(T))
  end)

  it('breaks within 1 s when a worker is killed: running and pending fail, done ones keep results', function()
    local fds = fd_count()
    local ex = assert(futures.ProcessPoolExecutor { max_workers = 2 })
    local done = ex:submit(function() return 'kept' end)
    assert.are.equal('kept', done:result(T))
    local pids = ex:pids()
    local running = {}
    for i = 1, 2 do running[i] = ex:submit(function() while true do end end) end
    local pending = {}
    for i = 1, 4 do pending[i] = ex:submit(function() return i end) end
    thread.sleep(0.1)  -- let the busy tasks start
    os.execute('kill -KILL ' .. pids[1])
    local all = { running[1], running[2], table.unpack(pending) }
    local _, not_done = futures.wait(all, { timeout = 1 })
    assert.are.equal(0, #not_done)
    for _, f in ipairs(all) do
      local ok, err = pcall(f.result, f, 0)
      assert.is_false(ok)
      assert.is_true(herror.is(err, 'BrokenProcessPool'))
    end
    assert.matches('killed by signal 9', select(2, pcall(running[1].result, running[1], 0)).message, 1, true)
    assert.are.equal('kept', done:result(0))
    local ok, err = pcall(ex.submit, ex, print)
    assert.is_false(ok)
    assert.is_true(herror.is(err, 'BrokenProcessPool'))
    ex:shutdown()
    assert.is_true(all_gone(pids, T))  -- reaped: no zombie either
    -- another spec's thread may hold a descriptor for a moment: wait for ours to go
    local deadline = os.time() + T
    -- (and judge the count the loop saw: a fresh one could catch another's again)
    local now = fd_count()
    while now > fds and os.time() < deadline do
      thread.sleep(0.05)
      now = fd_count()
    end
    assert.is_true(now <= fds)
  end)

  it('breaks, saying so, when a task calls os.exit', function()
    local ex = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    local f = ex:submit(function() os.exit(3) end)
    local ok, err = pcall(f.result, f, T)
    assert.is_false(ok)
    assert.is_true(herror.is(err, 'BrokenProcessPool'))
    -- under valgrind a worker's exit status is valgrind's (its leak check of the fork)
    local status = os.getenv('HOST_UNDER_VALGRIND') and '%d+' or '3'
    assert.matches('exited with status ' .. status, err.message)
    ex:shutdown()
  end)

  it('breaks when the initializer fails', function()
    local ex = assert(futures.ProcessPoolExecutor { max_workers = 1, initializer = function() error('no setup') end })
    local f = ex:submit(function() return 1 end)
    local ok, err = pcall(f.result, f, T)
    assert.is_false(ok)
    assert.is_true(herror.is(err, 'BrokenProcessPool'))
    assert.matches('no setup', err.message, 1, true)
    ex:shutdown()
  end)

  it('cannot cancel work in the call queue (workers + 1), only pending work', function()
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    start_workers(ex, 1)  -- so the submits below find it busy
    local first = ex:submit(function() local t = os.clock() while os.clock() - t < 0.5 do end return 1 end)
    local queued = ex:submit(function() return 2 end)
    local pending = ex:submit(function() return 3 end)  -- submit fills the call queue itself
    assert.is_false(queued:cancel())
    assert.is_true(pending:cancel())
    assert.are.same({ 1, 2 }, { first:result(T), queued:result(T) })
  end)

  it("sends up to 3 map chunks to a busy worker behind its running task: those calls, like the call queue's, cannot be cancelled", function()
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    start_workers(ex, 1)  -- so the submits below find it busy
    local first = ex:submit(function() local t = os.clock() while os.clock() - t < 0.5 do end return 1 end)
    -- _submit_ahead is how map submits its chunks
    local ahead = {}
    for j = 1, 3 do ahead[j] = ex:_submit_ahead(function() return j + 1 end) end  -- sent to the busy worker
    local queued = ex:_submit_ahead(function() return 5 end)   -- the call queue (workers + 1)
    local pending = ex:_submit_ahead(function() return 6 end)
    local plain = ex:submit(function() return 7 end)
    for j = 1, 3 do assert.is_false(ahead[j]:cancel()) end
    assert.is_false(queued:cancel())
    assert.is_true(pending:cancel())
    assert.are.same({ 1, 2, 3, 4, 5, 7 }, { first:result(T), ahead[1]:result(T), ahead[2]:result(T),
                                            ahead[3]:result(T), queued:result(T), plain:result(T) })
  end)

  it('sends a busy worker a second map chunk ahead only while the frames ahead stay small (64 KiB)', function()
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    start_workers(ex, 1)  -- so the submits below find it busy
    local first = ex:submit(function() local t = os.clock() while os.clock() - t < 0.5 do end return 1 end)
    local big = string.rep('x', 40000)
    local ahead = ex:_submit_ahead(function(s) return #s end, big)   -- sent to the busy worker
    local queued = ex:_submit_ahead(function(s) return #s end, big)  -- 80 000 bytes ahead: the call queue
    local pending = ex:_submit_ahead(function(s) return #s end, big)
    assert.is_false(ahead:cancel())
    assert.is_false(queued:cancel())
    assert.is_true(pending:cancel())
    assert.are.same({ 1, 40000, 40000 }, { first:result(T), ahead:result(T), queued:result(T) })
  end)

  it('does not deadlock when the manager would send a big chunk ahead to a worker sending a big result', function()
    local ex = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    local function spin(s) local t = os.clock() while os.clock() - t < s do end return s end
    -- the worker is busy and the call queue holds a plain task: the map's
    -- chunks stay pending, so the manager, not this thread, sends them
    local first, second = ex:submit(spin, 0.2), ex:submit(spin, 0.2)
    local items = {}
    for i = 1, 6 do items[i] = string.rep(string.char(64 + i), 1024 * 1024) end
    local n = 0
    local ok, err = pcall(function()
      for i, r in ex:map(function(x) spin(0.05) return x end, items, { chunksize = 2, timeout = 5 }) do
        assert(r == items[i])
        n = n + 1
      end
    end)
    if not ok then  -- unblock the pool so that the spec ends
      ex:shutdown { wait = false, cancel_futures = true }
      for _, pid in ipairs(ex:pids()) do if pid > 0 then os.execute('kill -KILL ' .. pid) end end
    end
    assert.is_true(ok, tostring(err))
    assert.are.equal(6, n)
    assert.are.same({ 0.2, 0.2 }, { first:result(T), second:result(T) })
    -- a map made by a done-callback, which the manager runs: it sends too
    local short, long = ex:submit(spin, 0.1), ex:submit(spin, 0.3)
    local iter
    short:add_done_callback(function()  -- long runs then
      iter = { ex:map(function(x) spin(0.05) return x end, items, { chunksize = 2, timeout = 5 }) }
    end)
    ok, err = pcall(long.result, long, 5)
    if not ok then
      ex:shutdown { wait = false, cancel_futures = true }
      for _, pid in ipairs(ex:pids()) do if pid > 0 then os.execute('kill -KILL ' .. pid) end end
    end
    assert.is_true(ok, tostring(err))
    n = 0
    for i, r in table.unpack(iter) do
      assert(r == items[i])
      n = n + 1
    end
    assert.are.equal(6, n)
    ex:shutdown()
  end)

  it('fails the call sent ahead with BrokenProcessPool when its worker dies, and a map over it ends', function()
    local ex = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    local running = ex:submit(function() while true do end end)
    local pids = wait_pids(ex, 1)
    local ahead = ex:_submit_ahead(function() return 2 end)
    local queued = ex:_submit_ahead(function() return 3 end)
    local pending = ex:_submit_ahead(function() return 4 end)
    os.execute('kill -KILL ' .. pids[1])
    local all = { running, ahead, queued, pending }
    local _, not_done = futures.wait(all, { timeout = T })
    assert.are.equal(0, #not_done)
    for _, f in ipairs(all) do
      local ok, err = pcall(f.result, f, 0)
      assert.is_false(ok)
      assert.is_true(herror.is(err, 'BrokenProcessPool'))
    end
    ex:shutdown()
    assert.is_true(all_gone(pids, T))
    -- a map whose worker dies in its first chunk, with the next one sent ahead
    ex = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    pids = start_workers(ex, 1)
    local items = {}
    for i = 1, 10 do items[i] = i end
    local seen, ok, err = 0, pcall(function()
      for _ in ex:map(function(x) if x == 1 then os.exit(5) end return x end, items,
                      { chunksize = 2, timeout = T }) do end
    end)
    assert.are.equal(0, seen)
    assert.is_false(ok)
    assert.is_true(herror.is(err, 'BrokenProcessPool'), tostring(err))
    local t = thread.start(function() ex:shutdown() end)
    assert.is_true(t:join(T))
    assert.is_true(all_gone(pids, T))
  end)

  it('ends the workers of an idle pool at shutdown, before its manager thread gets to run', function()
    local ex = assert(futures.ProcessPoolExecutor { max_workers = 2 })
    local pids = start_workers(ex, 2)
    -- the state letter of a process in /proc: Z once it exited (and is not reaped yet)
    local function state(pid)
      local f = io.open('/proc/' .. pid .. '/stat')
      if not f then return 'gone' end
      local s = f:read('a') or ''
      f:close()
      return s:match('^%d+ %b() (%a)') or 'gone'
    end
    local interval = thread.getswitchinterval()
    thread.setswitchinterval(60)  -- the manager cannot take the GIL from this loop
    local ok, err = pcall(function()
      ex:shutdown { wait = false }
      -- (no call in the loop gives the GIL up); under valgrind a worker's
      -- exit runs its leak check of the fork, which took more than 0.5 s
      local give_up = os.clock() + (os.getenv('HOST_UNDER_VALGRIND') and 5 or 0.5)
      while os.clock() < give_up do end
    end)
    local states = { state(pids[1]), state(pids[2]) }
    thread.setswitchinterval(interval)
    assert.is_true(ok, tostring(err))
    for i = 1, 2 do assert.is_truthy(states[i] == 'Z' or states[i] == 'gone', states[i]) end
    ex:shutdown()
    assert.is_true(all_gone(pids, T))
  end)

  it('carries chunks bigger than a socket buffer, sent ahead, whole and in order', function()
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 2 })
    local items = {}
    for i = 1, 60 do items[i] = string.rep(string.char(65 + i % 26), 60000 + i) end
    for _ = 1, 3 do
      local n = 0
      for i, len, last in ex:map(function(s) return #s, s:sub(-1) end, items, { chunksize = 3, timeout = T }) do
        assert.are.same({ 60000 + i, string.char(65 + i % 26) }, { len, last })
        n = n + 1
      end
      assert.are.equal(60, n)
    end
  end)

  it('gives every result of a chunked map with max_tasks_per_child, none sent past a worker\'s last task', function()
    for _, max in ipairs { 1, 2, 3 } do
      local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 2, max_tasks_per_child = max })
      local items = {}
      for i = 1, 40 do items[i] = i end
      local got = {}
      for i, v in ex:map(function(x) return x * 2 end, items, { chunksize = 3, timeout = T }) do got[i] = v end
      assert.are.equal(40, #got)
      for i = 1, 40 do assert.are.equal(2 * i, got[i]) end
    end
  end)

  it('runs the work queued at shutdown under max_tasks_per_child: a retired worker is replaced', function()
    local out, err, code = sh.host_script([[
      local futures = require 'host.futures'
      local ex = futures.ProcessPoolExecutor { max_workers = 1, max_tasks_per_child = 1 }
      local fs = {}
      for i = 1, 3 do fs[i] = ex:submit(function(x) require('host.time').sleep(0.05); return x end, i) end
      ex:shutdown { wait = false }
      for i = 1, 3 do print(i, pcall(fs[i].result, fs[i], 5)) end
      ex:shutdown()
      print('shut')
    ]], 30)
    assert.are.equal('1\ttrue\t1\n2\ttrue\t2\n3\ttrue\t3\nshut\n', out, err)
    assert.are.equal(0, code)
  end)

  it('replaces workers after max_tasks_per_child without losing tasks', function()
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 2, max_tasks_per_child = 2 })
    local fs, pids = {}, {}
    for i = 1, 10 do
      fs[i] = ex:submit(function(x)
        local s = assert(io.open('/proc/self/stat')):read('a')
        return x, tonumber(s:match('^(%d+)'))
      end, i)
    end
    local distinct = 0
    for i = 1, 10 do
      local x, pid = fs[i]:result(T)
      assert.are.equal(i, x)
      if not pids[pid] then distinct = distinct + 1 end
      pids[pid] = true
    end
    assert.is_true(distinct >= 5)
  end)

  it('forks while other host threads run: the child has only the forking thread', function()
    local stop = thread.Event()
    local t = thread.start(function() stop:wait(T) end)
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    assert.are.equal(1, ex:submit(function() return require('host.thread').count() end):result(T))
    stop:set()
    t:join(T)
  end)

  -- The manager completes a future once it has let the GIL go (its
  -- callbacks then run when it has it again): every waiter wakes, with or
  -- without a timeout.
  it('wakes every thread that waits on one future', function()
    local path, wait, open = gate()
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    local f = ex:submit(function() return wait(path) and 'opened' end)
    local ts = {}
    for i = 1, 3 do ts[i] = thread.start(function() return f:result(i == 1 and T or nil) end) end
    open()
    assert.are.equal('opened', f:result(T))
    for i = 1, 3 do assert.are.same({ true, 'opened' }, { ts[i]:join(T) }) end
    os.remove(path)
  end)

  it('runs a done-callback added while the task runs, with nothing else to wake the manager', function()
    local path, wait, open = gate()
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    local f = ex:submit(function() return wait(path) and 'opened' end)
    local ran, where = thread.Event(), nil
    f:add_done_callback(function(done)
      where = thread.get_ident()
      assert(done:result(0) == 'opened')
      ran:set()
    end)
    open()
    assert.is_true(ran:wait(T))
    assert.are_not.equal(thread.get_ident(), where)  -- the manager ran it
    os.remove(path)
  end)

  it('gives the result or TimeoutError when short timeouts race completion', function()
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 2 })
    local function race(n)
      local bad = {}
      for i = 1, n do
        local f = ex:submit(function() return i end)
        local ok, v = pcall(f.result, f, (i % 4) * 1e-5)
        if not ok and not herror.is(v, 'TimeoutError') then bad[#bad + 1] = tostring(v) end
        if ok and v ~= i then bad[#bad + 1] = 'wrong value ' .. tostring(v) end
        if f:result(T) ~= i then bad[#bad + 1] = 'wrong late value' end
      end
      return table.concat(bad, '; ')
    end
    local t = thread.start(race, 300)  -- a spawned thread and the main thread at once
    assert.are.equal('', race(300))
    assert.are.same({ true, '' }, { t:join(T * 3) })
    assert.are.equal(7, ex:submit(function() return 7 end):result())  -- no timeout: nothing left astray
  end)

  it('ends a wait for a result at Ctrl-C, and the future still completes', function()
    local out, err, code = run_script([[
      local futures = require 'host.futures'
      local pid = assert(io.open('/proc/self/stat')):read('n')
      local ex = futures.ProcessPoolExecutor { max_workers = 1 }
      local f
      local ok, e = pcall(function()
        f = ex:submit(function()
          -- not before the parent sleeps in result: an interrupt that lands
          -- as submit returns would leave f unset
          local function sleeping()
            local st = io.open('/proc/' .. pid .. '/stat')
            local s = st and st:read('a') or ''
            if st then st:close() end
            return s:match('^%d+ %b() S') ~= nil
          end
          while not sleeping() do end
          io.popen('kill -INT ' .. pid):close()
          return 'done'
        end)
        return f:result()  -- no timeout: only the interrupt ends it
      end)
      print(ok, e)
      print(f:result(10))
      ex:shutdown()
    ]], 20)
    assert.are.equal('', err)
    assert.are.equal(0, code)
    assert.matches('^false\t[^\n]*interrupted!\ndone\n$', out)
  end)

  it('refuses submits after shutdown and bad arguments', function()
    local ex = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    ex:shutdown()
    assert.has_error(function() ex:submit(print) end, 'cannot schedule new futures after shutdown')
    assert.has_error(function() futures.ProcessPoolExecutor { max_workers = 0 } end,
      "bad argument #1 to 'ProcessPoolExecutor' ('max_workers' must be in [1, 1024])")
    assert.has_error(function() futures.ProcessPoolExecutor { max_tasks_per_child = -1 } end,
      "bad argument #1 to 'ProcessPoolExecutor' ('max_tasks_per_child' must be >= 1)")
    assert.has_error(function() futures.ProcessPoolExecutor { max_tasks_per_child = 'x' } end,
      "bad argument #1 to 'ProcessPoolExecutor' ('max_tasks_per_child' must be an integer, got string)")
    assert.has_error(function() futures.ProcessPoolExecutor { initializer = 'x' } end,
      "bad argument #1 to 'ProcessPoolExecutor' ('initializer' must be a function, got string)")
  end)
end)

describe('ProcessPoolExecutor and the parent process', function()
  it('takes its workers with it when the parent exits without shutdown', function()
    local f = sh.tempfile(WITH_HELPERS .. [[
      local futures = require 'host.futures'
      local ex = futures.ProcessPoolExecutor { max_workers = 2 }
      print(table.concat(start_workers(ex, 2), ' '))
      print(ex:submit(function() return 'ok' end):result(5))
    ]])
    local out, _, code = sh.host_run(sh.quote(f), 20)
    os.remove(f)
    assert.are.equal(0, code)
    local pids = {}
    for pid in out:match('^[^\n]*'):gmatch('%d+') do pids[#pids + 1] = pid end
    assert.are.equal(2, #pids)
    assert.matches('\nok\n$', out)
    assert.is_true(all_gone(pids, T))
  end)

  it('takes a stopped worker with it when the parent is killed', function()
    -- a parent-death signal with a handler cannot end a stopped process:
    -- a worker's is SIGKILL (the manager thread, which forks it, ends only
    -- once it reaped its workers, or with the process)
    local f = sh.tempfile(WITH_HELPERS .. [[
      io.stdout:setvbuf 'no'
      local futures = require 'host.futures'
      local thread = require 'host.thread'
      local ex = futures.ProcessPoolExecutor { max_workers = 1 }
      ex:submit(function() os.execute('kill -STOP $PPID') end)
      local pid = wait_pids(ex, 1)[1]
      print(pid)
      local function state()
        local st = io.open('/proc/' .. pid .. '/stat')
        local s = st and st:read('a') or ''
        if st then st:close() end
        return s:match('^%d+ %b() (%a)')
      end
      for _ = 1, 500 do
        if state() == 'T' then break end
        thread.sleep(0.01)
      end
      print(state())
      local me = assert(io.open('/proc/self/stat')):read('a'):match('^%d+')
      os.execute('kill -KILL ' .. me)
    ]])
    -- the shell lives on meanwhile: the stopped worker's process group is
    -- not orphaned, so the kernel does not SIGCONT it (a terminal's job
    -- control, a CI runner or a service manager keep it so too)
    local out = sh.run('o=$(mktemp); ' .. sh.quote(sh.host) .. ' ' .. sh.quote(f) .. ' > "$o";' ..
      ' echo "rc=$?" >> "$o"; pid=$(head -n 1 "$o"); for i in $(seq 200); do' ..
      ' s=$(cut -d " " -f 3 /proc/$pid/stat 2>/dev/null); { [ -z "$s" ] || [ "$s" = Z ]; } && break;' ..
      ' sleep 0.05; done; echo "after=${s:-gone}"; cat "$o"; kill -KILL $pid 2>/dev/null; rm -f "$o"',
      30)
    os.remove(f)
    assert.matches('\n%d+\nT\nrc=137\n$', out)
    assert.matches('^after=[gZ]', out)
  end)

  it('stops within 1 s on Ctrl-C during map, and the workers are gone', function()
    local f = sh.tempfile(WITH_HELPERS .. [[
      io.stdout:setvbuf 'no'
      local futures = require 'host.futures'
      local ex = futures.ProcessPoolExecutor { max_workers = 2 }
      print(table.concat(start_workers(ex, 2), ' '))
      for _ in ex:map(function() while true do end end, { 1, 2, 3, 4 }) do end
    ]])
    -- Ctrl-C reaches the terminal's whole process group: so does this.
    -- A watchdog kills the group after 3 s, so a failure leaves nothing behind.
    local out = sh.run('o=$(mktemp); setsid ' .. sh.quote(sh.host) .. ' ' .. sh.quote(f) ..
      ' > "$o" 2>&1 & p=$!; for i in $(seq 200); do [ -s "$o" ] && break; sleep 0.05; done; sleep 0.2;' ..
      ' kill -INT -$p; s=$(date +%s%N); (sleep 3; kill -KILL -$p 2>/dev/null) & w=$!;' ..
      ' wait $p; rc=$?; ms=$(( ($(date +%s%N) - s) / 1000000 )); kill $w 2>/dev/null;' ..
      ' echo "rc=$rc ms=$ms"; cat "$o"; rm -f "$o"', 20)
    os.remove(f)
    local ms = tonumber(out:match('ms=(%d+)'))
    assert.matches('rc=1 ', out, 1, true)
    assert.is_true(ms < 1000, out)
    assert.matches('interrupted!', out, 1, true)
    local pids = {}
    for pid in out:match('\n(%d+ %d+)\n'):gmatch('%d+') do pids[#pids + 1] = pid end
    assert.is_true(all_gone(pids, T))
  end)
end)

describe('ProcessPoolExecutor forking its workers', function()
  it('forks in its manager thread: a first submit in a __gc or a hook gives a worker that collects and runs hooks', function()
    -- a child goes on from the point of its fork for good: forked inside a
    -- finalizer its GC stayed stopped (RSS grew 37 MB a task), inside a
    -- hook its tasks were never preempted
    local probe = function()  -- (no thread: TSan forbids one after such a fork)
      local hooked = 0
      debug.sethook(function() hooked = hooked + 1 end, '', 1)
      for _ = 1, 10 do end
      debug.sethook()
      return collectgarbage('isrunning'), collectgarbage('count') ~= nil, hooked > 0
    end
    local in_gc = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    local first
    setmetatable({}, { __gc = function() first = in_gc:submit(probe) end })
    collectgarbage()
    collectgarbage()
    assert.is_not_nil(first)
    assert.are.same({ true, true, true }, { first:result(T) })
    in_gc:shutdown()
    local in_hook = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    debug.sethook(function() debug.sethook() first = in_hook:submit(probe) end, '', 1)
    local _ = #in_hook:pids()
    debug.sethook()
    assert.are.same({ true, true, true }, { first:result(T) })
    in_hook:shutdown()
  end)

  it('gives a worker the whole C stack, however deep the first submit was', function()
    local function nest(n)  -- a task: n nested pcalls
      local function go(k) if k == 0 then return 'ok' end return select(2, assert(pcall(go, k - 1))) end
      return select(2, pcall(go, n))
    end
    local function at_depth(depth, fn)
      if depth == 0 then return fn() end
      return select(2, pcall(at_depth, depth - 1, fn))
    end
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    local f = at_depth(170, function() return ex:submit(function() return 'first' end) end)
    assert.are.equal('first', f:result(T))
    -- before: "C stack overflow" (the worker kept the 170 frames of its fork)
    assert.are.equal('ok', ex:submit(nest, 40):result(T))
  end)

  it("lets go of the parent's io.popen pipes: closing the command does not wait for the worker", function()
    local set_global = load('POPEN_FOR_SPEC = ...')
    local p = assert(io.popen('cat > /dev/null', 'w'))
    set_global(p)
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    -- in the worker the command is the parent's: its pipe is dead, its close does not wait
    local wrote = ex:submit(function()
      local q = load('return POPEN_FOR_SPEC')()
      local ok, err = q:write('x')
      if ok then ok, err = q:flush() end
      return ok ~= nil, err
    end)
    assert.are.same({ false, 'Broken pipe' }, { wrote:result(T) })
    -- before: the worker held cat's input open, and this close waited for good
    local closer = thread.start(function() return p:close() end)
    local ok, closed = closer:join(T)
    assert.is_true(ok, 'the close still waits')
    assert.is_true(closed)
    local closes = ex:submit(function() return load('return POPEN_FOR_SPEC')():close() end)
    assert.is_true(closes:result(T))
    set_global(nil)
  end)

  it("shuts down when a pool of another universe holds its worker's socket", function()
    -- P lives in an interpreter pool worker's universe, Q in this one: Q's
    -- worker, forked later, inherits P's socket (a child closes the fds of
    -- its own universe's pools only), so closing it sent P's worker no EOF
    -- and P's shutdown waited for good. Shutting the socket down does.
    local ip <close> = assert(futures.InterpreterPoolExecutor { max_workers = 1 })
    assert.are.equal(1, ip:submit(function()
      P_FOR_SPEC = require('host.futures').ProcessPoolExecutor { max_workers = 1 }
      return P_FOR_SPEC:submit(function() return 1 end):result(10)
    end):result(T))
    local q <close> = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    assert.are.equal(2, q:submit(function() return 2 end):result(T))
    local took = ip:submit(function()
      local time = require 'host.time'
      local t0 = time.monotonic()
      P_FOR_SPEC:submit(function() require('host.thread').sleep(0.2) end)
      P_FOR_SPEC:shutdown()
      return time.monotonic() - t0
    end)
    assert.is_true(took:result(T) < 8)
  end)

  it("discards what the parent read ahead of an io.popen file: in a worker it reads end of file", function()
    local set_global = load('POPEN_FOR_SPEC = ...')
    local p = assert(io.popen('printf "a\\nb\\nc\\n"', 'r'))
    assert.are.equal('a', p:read('l'))  -- the FILE holds b and c now
    set_global(p)
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    -- before: the worker read "b\nc\n" from the buffer it inherited
    assert.are.equal('', ex:submit(function() return load('return POPEN_FOR_SPEC')():read('a') end):result(T))
    set_global(nil)
    assert.are.same({ 'b', 'c' }, { p:read('l'), p:read('l') })
    assert.is_true(p:close())
  end)

  it('runs the threads a task started while its worker waits for the next task', function()
    if os.getenv 'TSAN_OPTIONS' then
      pending('TSan forbids a new thread in a child forked by a multithreaded process')
      return
    end
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    ex:submit(function()
      TICKS_FOR_SPEC = 0
      require('host.thread').start(function()
        for _ = 1, 25 do TICKS_FOR_SPEC = TICKS_FOR_SPEC + 1 require('host.thread').sleep(0.02) end
      end)
    end):result(T)
    thread.sleep(0.3)
    -- before: 0 or 1 (the worker held its GIL while it waited for a task)
    assert.is_true(ex:submit(function() return TICKS_FOR_SPEC end):result(T) >= 5)
  end)

  it('lets a worker flush its output at shutdown, however slow the reader: it is not killed', function()
    -- the task fills stdout's pipe, whose reader starts 2.5 s late, and
    -- leaves 3000 bytes in its buffer, flushed as the worker exits. Before:
    -- killed after 1 s (its manager thread's end) or 2 s, and those bytes lost
    local f = sh.tempfile [[
      local futures = require 'host.futures'
      local ex = futures.ProcessPoolExecutor { max_workers = 1 }
      ex:submit(function() io.write(string.rep('a', 65536)) io.write(string.rep('b', 3000)) end):result(20)
      ex:shutdown()
    ]]
    local out = sh.run(sh.quote(sh.host) .. ' ' .. sh.quote(f) .. ' | (sleep 2.5; wc -c)', 30)
    os.remove(f)
    assert.are.equal('68536', out:match('%d+'))
  end)

  it('kills at shutdown a worker that does not end within its grace (a stopped one)', function()
    local ex = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    local pid = start_workers(ex, 1)[1]
    os.execute('kill -STOP ' .. pid)
    finally(function() os.execute('kill -KILL ' .. pid .. ' 2>/dev/null') end)
    local t = thread.start(function() ex:shutdown() return true end)
    -- a wait without limit would hang here
    assert.is_true(t:join(T))
    assert.is_true(all_gone({ pid }, T))
  end)

  it("closes in a nested pool's worker only the outer pool's fds, not numbers its worker reused", function()
    if os.getenv 'TSAN_OPTIONS' then  -- the inner pool's manager is such a thread
      pending('TSan forbids a new thread in a child forked by a multithreaded process')
      return
    end
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    local ok, err = ex:submit(function()
      local futures = require 'host.futures'
      local path = os.tmpname()
      LOG_FOR_SPEC = assert(io.open(path, 'w'))  -- may take a number the worker closed at its start
      local inner = futures.ProcessPoolExecutor { max_workers = 1 }
      local wrote, why = inner:submit(function()
        local ok, e = LOG_FOR_SPEC:write('inner\n')
        if ok then ok, e = LOG_FOR_SPEC:flush() end
        return ok ~= nil, e
      end):result(10)
      inner:shutdown()
      LOG_FOR_SPEC:close()
      os.remove(path)
      return wrote, why
    end):result(T)
    -- before: false, "Bad file descriptor"
    assert.is_true(ok, tostring(err))
  end)
end)

describe('ProcessPoolExecutor at its boundaries', function()
  it('says a worker could not start when its socket cannot be made', function()
    local f = sh.tempfile [[
      local futures = require 'host.futures'
      local ex = assert(futures.ProcessPoolExecutor { max_workers = 2 })
      local f = ex:submit(print)
      local ok, err = pcall(f.result, f, 10)
      print(ok, tostring(err))
      print(pcall(ex.submit, ex, print))
      ex:shutdown()
    ]]
    local out, err, code = sh.run('ulimit -n 6; ' .. sh.quote(sh.host) .. ' ' .. sh.quote(f))
    os.remove(f)
    assert.are.equal(0, code, err)
    -- before: "fork: ...", though the fork was never tried
    -- the manager forks the first worker for the first submit: no worker
    -- at all breaks the pool, and the future says why
    assert.are.equal('false\tBrokenProcessPool: cannot start a worker: Too many open files\n' ..
                     'false\tBrokenProcessPool: cannot start a worker: Too many open files\n', out)
  end)

  it('fails every future loudly at any address-space limit: none is left waiting', function()
    -- Each run limits its own address space (prlimit) to its size plus
    -- extra KiB, then maps 40 tasks over 2 workers. Somewhere in the range
    -- the manager thread runs out of memory outside its loop. Before: the
    -- pool was not broken, and map waited until its timeout.
    local why = sh.cannot_limit_memory(true)
    if why then pending(why) return end
    local f = sh.tempfile(sh.LIMIT_SELF .. [[
      local futures = require 'host.futures'
      local ok, err = pcall(function()
        local ex = assert(futures.ProcessPoolExecutor { max_workers = 2 })
        local t = {}
        for i = 1, 40 do t[i] = i end
        for i, r in ex:map(function(x) return string.rep('x', x * 1000) end, t, { timeout = 5, chunksize = 4 }) do
          assert(#r == i * 1000)
        end
        ex:shutdown()
      end)
      print(ok and 'ok' or 'failed', ok and '' or tostring(err):match('^[^\n]*'))
    ]])
    local seen = {}
    for extra_kb = 6000, 11000, 200 do
      local out, err, code = sh.run(sh.quote(sh.host) .. ' ' .. sh.quote(f) .. ' ' .. extra_kb, 30)
      local fits = (code == 0 and out:find('^ok\t\n$')) or (code == 0 and out:find('^failed\t') and
        not out:find('TimeoutError')) or (code == 1 and err:find('memory'))
      assert(fits and not err:find('PANIC') and not err:find('Fatal'),
             ('%d KiB: exit %s, stdout %q, stderr %q'):format(extra_kb, code, out, err))
      seen[out:match('^%a+')] = true
    end
    assert.is_true(seen.ok)  -- the range reaches a limit where all of it fits
  end)

  it('returns nil, message, errno and leaves no worker when its manager thread cannot start', function()
    -- Under an address-space limit thread stacks run out (fork still works).
    local why = sh.cannot_limit_memory()
    if why then pending(why) return end
    local f = sh.tempfile(sh.EXHAUST_THREADS .. [[
      local futures = require 'host.futures'
      local ex, msg, code = futures.ProcessPoolExecutor { max_workers = 2 }
      go:set()
      for _, t in ipairs(started) do assert(t:join(10)) end
      print(ex, msg:match('^(cannot start thread: ).'), math.type(code))
      -- before: it raised, and its two forked workers lived on until __gc
      local me, children = io.open('/proc/self/stat'):read('n'), 0
      for name in require('lfs').dir('/proc') do
        local stat = name:match('^%d+$') and io.open('/proc/' .. name .. '/stat')
        if stat then
          local ppid = tonumber(stat:read('a'):match('^%d+ %b() %S+ (%d+)'))
          stat:close()
          if ppid == me then children = children + 1 end
        end
      end
      print(children)
    ]])
    local out, err, code = sh.run('ulimit -v 400000 && exec ' .. sh.quote(sh.host) .. ' ' .. sh.quote(f), 30)
    os.remove(f)
    assert.are.equal('', err)
    assert.are.equal(0, code)
    assert.are.equal('nil\tcannot start thread: \tinteger\n0\n', out)
  end)

  setup(function()
    local f = assert(io.open('/proc/self/stat'))
    local pid = tonumber(f:read('a'):match('^(%d+)'))
    f:close()
    package.loaded['host.spec_pid'] = pid
  end)

  it('refuses use after __gc, and its workers are gone', function()
    local ex = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    assert.are.equal(1, ex:submit(function() return 1 end):result(T))
    local pids = ex:pids()
    getmetatable(ex).__gc(ex)
    local msg = 'attempt to use a finalized host.ProcessPoolExecutor'
    assert.has_error(function() ex:submit(print) end, msg)
    assert.has_error(function() ex:shutdown() end, msg)
    assert.has_error(function() ex:map(print, { 1 }) end, msg)
    assert.has_error(function() ex:pids() end, msg)
    assert.matches('^host.ProcessPoolExecutor %(finalized%)', tostring(ex))
    getmetatable(ex).__gc(ex)  -- again: nothing
    assert.is_true(all_gone(pids, T))
  end)

  for _, n in ipairs { 200, 5000 } do
    it('passes ' .. n .. ' initargs to the initializer', function()
      local args = {}
      for i = 1, n do args[i] = i end
      local init = load('local t = { ... } local s = 0 for i = 1, #t do s = s + t[i] end ' ..
        'INITARGS_FOR_SPEC = { select("#", ...), s }')
      local ex <close> = assert(futures.ProcessPoolExecutor {
        max_workers = 1, initializer = init, initargs = args })
      local got = ex:submit(load('return INITARGS_FOR_SPEC')):result(T)
      assert.are.same({ n, n * (n + 1) // 2 }, got)
    end)
  end

  it('passes initargs.n values, nils included', function()
    local init = load('INITARGS_FOR_SPEC = table.pack(...)')
    local ex <close> = assert(futures.ProcessPoolExecutor {
      max_workers = 1, initializer = init, initargs = { n = 3, 1, nil, 3 } })
    assert.are.same({ n = 3, 1, nil, 3 }, ex:submit(load('return INITARGS_FOR_SPEC')):result(T))
  end)

  for _, workers in ipairs { 1, 2 } do
    it('loses no task when workers retire after each one (' .. workers .. ' workers)', function()
      local ex <close> = assert(futures.ProcessPoolExecutor {
        max_workers = workers, max_tasks_per_child = 1 })
      local fs = {}
      for i = 1, 300 do
        fs[i] = ex:submit(function(x) return x * 2 end, i)
        -- the next submit then meets a worker retiring after its task
        if i % 2 == 0 then assert.are.equal((i - 1) * 2, fs[i - 1]:result(T)) end
      end
      for i = 1, 300 do assert.are.equal(i * 2, fs[i]:result(T)) end
    end)
  end

  it('refuses a pool inherited by fork, in the child', function()
    local parent_pool <close> = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    package.loaded['spec.inherited_pool'] = parent_pool
    local ex = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    local pid = start_workers(ex, 1)[1]  -- the fork: the worker inherits parent_pool
    package.loaded['spec.inherited_pool'] = nil
    -- before the fix the worker hangs in the inherited pool's shutdown
    finally(function()
      ex:shutdown { wait = false }
      if not all_gone({ pid }, 2) then os.execute('kill -KILL ' .. pid) end
      ex:shutdown()
    end)
    local got = ex:submit(function()
      local inherited = package.loaded['spec.inherited_pool']
      local ok1, e1 = pcall(inherited.submit, inherited, print)
      local ok2, e2 = pcall(inherited.shutdown, inherited)
      return { ok1, tostring(e1), ok2, tostring(e2) }
    end):result(T)
    local msg = 'cannot use a ProcessPoolExecutor inherited from the parent process'
    assert.is_false(got[1])
    assert.matches(msg, got[2], 1, true)
    assert.is_false(got[3])
    assert.matches(msg, got[4], 1, true)
    assert.are.equal(2, parent_pool:submit(function() return 2 end):result(T))
  end)

  it('reclaims pools dropped without shutdown: workers reaped, fds closed', function()
    collectgarbage()
    collectgarbage()
    local kids0, fds0 = child_count(), fd_count()
    local pools = {}
    for i = 1, 10 do
      pools[i] = assert(futures.ProcessPoolExecutor { max_workers = 2 })
      assert.are.equal(i, pools[i]:submit(function(x) return x end, i):result(T))
    end
    assert.is_true(child_count() >= kids0 + 10)  -- one worker each: tasks one at a time
    pools = nil  -- luacheck: ignore
    collectgarbage()
    collectgarbage()
    local clock = require('host.time').monotonic
    local deadline, kids, fds = clock() + T
    repeat
      kids, fds = child_count(), fd_count()
      if kids <= kids0 and fds <= fds0 then break end
      thread.sleep(0.05)
    until clock() > deadline
    assert.is_true(kids <= kids0, ('children: %d at start, %d now'):format(kids0, kids))
    assert.is_true(fds <= fds0, ('fds: %d at start, %d now'):format(fds0, fds))
  end)

  it('gives workers of a pool used from another thread a clean signal mask', function()
    local t = thread.start(function()
      local ex = futures.ProcessPoolExecutor { max_workers = 1 }
      assert(ex:submit(function() return 0 end):result(T))
      return ex
    end)
    local ok, ex = t:join(T)
    assert.is_true(ok, tostring(ex))
    -- the thread that forked the worker is gone: the worker still serves
    assert.are.equal(1, ex:submit(function() return 1 end):result(T))
    local pid = ex:pids()[1]
    local f = ex:submit(function() local t0 = os.time() while os.time() - t0 < 20 do end end)
    finally(function() os.execute('kill -KILL ' .. pid .. ' 2>/dev/null') ex:shutdown() end)
    os.execute('kill -TERM ' .. pid)
    local ok2, err = pcall(f.result, f, T)
    assert.is_false(ok2)
    assert.is_true(herror.is(err, 'BrokenProcessPool'), tostring(err))
    assert.matches('killed by signal 15 (SIGTERM)', err.message, 1, true)
  end)

  it('says how a worker ended: status 0, another status, a signal', function()
    -- under valgrind a worker's exit status is valgrind's (its leak check of the fork)
    local valgrind = os.getenv('HOST_UNDER_VALGRIND')
    local cases = {
      { function() os.exit(0) end, valgrind and 'exited with status %d+'
        or 'it closed its connection to the parent and exited with status 0$' },
      { function() os.exit(3) end, valgrind and 'exited with status %d+' or 'it exited with status 3$' },
      { function() os.execute('kill -KILL $PPID') while true do end end,
        'it was killed by signal 9 %(SIGKILL%)$' },
    }
    for _, case in ipairs(cases) do
      local ex = assert(futures.ProcessPoolExecutor { max_workers = 1 })
      local f = ex:submit(case[1])
      local ok, err = pcall(f.result, f, T)
      assert.is_false(ok)
      assert.is_true(herror.is(err, 'BrokenProcessPool'), tostring(err))
      assert.matches(case[2], err.message)
      ex:shutdown()
    end
  end)

  it('refuses shutdown{wait = true} from a done-callback, and exits', function()
    local out, err, code = run_script [[
      local futures = require 'host.futures'
      local thread = require 'host.thread'
      local path = os.tmpname()
      os.remove(path)
      local ex = futures.ProcessPoolExecutor { max_workers = 1 }
      local f = ex:submit(function(p)
        local t = os.time()
        while os.time() - t < 10 do
          local g = io.open(p)
          if g then g:close() return 1 end
        end
      end, path)
      local called = thread.Event()
      f:add_done_callback(function()
        print('callback', pcall(ex.shutdown, ex))
        called:set()
      end)
      assert(io.open(path, 'w')):close()
      print('result', f:result(5))
      print('called', called:wait(5))
      os.remove(path)
      print('submit', pcall(ex.submit, ex, print))
      print('end')
    ]]
    assert.are.equal(0, code, err)
    assert.matches('callback\tfalse\t[^\n]*cannot join current thread', out)
    assert.matches('result\t1\n', out, 1, true)
    assert.matches('called\ttrue\n', out, 1, true)
    assert.matches('submit\tfalse\t[^\n]*cannot schedule new futures after shutdown', out)
    assert.matches('end\n$', out)
  end)

  it('refuses at once, in a done-callback, to wait for a future of the pool that is not done', function()
    -- the callback runs on the manager thread, the only one that completes
    -- the pool's futures: waiting there (CPython) never ends
    local out, err, code = run_script [[
      local futures = require 'host.futures'
      local thread = require 'host.thread'
      local path = os.tmpname()
      os.remove(path)
      local ex = futures.ProcessPoolExecutor { max_workers = 1 }
      local other <close> = futures.ThreadPoolExecutor { max_workers = 1 }
      local f = ex:submit(function(p)
        local t = os.time()
        while os.time() - t < 10 do
          local g = io.open(p)
          if g then g:close() return 1 end
        end
      end, path)
      local later = ex:submit(function() return 2 end)  -- queued behind f
      local elsewhere = other:submit(function() return 3 end)
      local called = thread.Event()
      local lines = {}
      local function try(name, fn, ...)
        local ok, e = pcall(fn, ...)
        lines[#lines + 1] = name .. '\t' .. tostring(ok) .. '\t' .. tostring(e)
      end
      f:add_done_callback(function()
        try('result', later.result, later)
        try('result60', later.result, later, 60)
        try('result0', later.result, later, 0)
        try('exception60', later.exception, later, 60)
        try('wait', futures.wait, { later }, { timeout = 60 })
        try('as_completed', function() for _ in futures.as_completed({ later }, 60) do end end)
        try('map', function() for _ in ex:map(tostring, { 1 }, { timeout = 60 }) do end end)
        try('wait_other', function()  -- a future another thread completes: waited for
          local done = futures.wait({ later, elsewhere }, { timeout = 60, return_when = 'FIRST_COMPLETED' })
          return done[1] == elsewhere
        end)
        called:set()
      end)
      assert(io.open(path, 'w')):close()
      print('result', f:result(5))
      print('called', called:wait(5))
      os.remove(path)
      print(table.concat(lines, '\n'))
      print('later', later:result(5))
      ex:shutdown()
      print('end')
    ]]
    assert.are.equal(0, code, err)
    local refused = '\tfalse\tcannot wait for a future of this pool inside its own callback '
      .. '(it would never complete)\n'
    assert.are.equal('result\t1\ncalled\ttrue\n'
      .. 'result' .. refused .. 'result60' .. refused
      .. 'result0\tfalse\tTimeoutError: the future is not done after 0.0 seconds\n'
      .. 'exception60' .. refused .. 'wait' .. refused .. 'as_completed' .. refused .. 'map' .. refused
      .. 'wait_other\ttrue\ttrue\nlater\t2\nend\n', out)
  end)

  it('leaves no item behind in a pool that another thread shut down while submit encoded it', function()
    -- the codec runs under lua_pcall, where the hook may hand the GIL to a
    -- thread that shuts the pool down, then to the manager, which ends:
    -- submit raises then (the item used to go to a worker whose result
    -- nobody read, and the future stayed running for good, exit too: about
    -- one submit in 50 here at a 1 us switch interval)
    local out, err, code = run_script([[
      local futures = require 'host.futures'
      local thread = require 'host.thread'
      thread.setswitchinterval(1e-6)
      local box = { running = true }
      local closer = dofile('spec/support/shutdown_race.lua')(box)
      local queued, refused = 0, 0
      for i = 1, 300 do
        local ex = futures.ProcessPoolExecutor { max_workers = 1 }
        box.ex = ex
        local submitted, f = pcall(ex.submit, ex, function() return i end)
        if submitted then
          local ok, got = pcall(f.result, f, 5)
          if not ok or got ~= i then
            print('lost', i, tostring(got))
            break
          end
          queued = queued + 1
        elseif tostring(f):find('cannot schedule new futures after shutdown', 1, true) then
          refused = refused + 1
        else
          print('error', i, tostring(f))
          break
        end
        ex:shutdown()
      end
      box.running = false
      closer:join(5)
      thread.setswitchinterval(0.005)
      print('submits', queued + refused, queued > 0)
    ]], 60)
    assert.are.equal(0, code, err)
    assert.are.equal('submits\t300\ttrue\n', out)
  end)

  it('keeps a worker whose error __tostring raises out of the parent script', function()
    local out, err, code = run_script [[
      print('script start')
      local futures = require 'host.futures'
      local herror = require 'host.error'
      local ex = futures.ProcessPoolExecutor { max_workers = 1 }
      local f = ex:submit(function()
        error(setmetatable({}, { __tostring = function() error('tostring raised') end }))
      end)
      print('task', pcall(f.result, f, 5))
      print('after', ex:submit(function() return 'fine' end):result(5))
      ex:shutdown()
      local ex2 = futures.ProcessPoolExecutor { max_workers = 1, initializer = function()
        error(setmetatable({}, { __tostring = function() error('tostring raised') end }))
      end }
      local f2 = ex2:submit(function() return 1 end)
      local ok, e = pcall(f2.result, f2, 5)
      print('init', ok, herror.is(e, 'BrokenProcessPool'), e.message)
      ex2:shutdown()
      -- a raise in the child outside any task: initargs whose __len raises
      local made, ex3 = pcall(futures.ProcessPoolExecutor, { max_workers = 1, initializer = print,
        initargs = setmetatable({}, { __len = function() error('len raised') end }) })
      if made then
        local f3 = ex3:submit(function() return 1 end)
        local ok3, e3 = pcall(f3.result, f3, 5)
        print('len', ok3, herror.is(e3, 'BrokenProcessPool'), e3.message)
        ex3:shutdown()
      else
        print('not made', ex3)
      end
      print('script end')
    ]]
    assert.are.equal(0, code, err)
    assert.are.equal(1, count(out, 'script start'), out)
    assert.are.equal(1, count(out, 'script end'), out)
    assert.matches('task\tfalse\t(error object is a table value)', out, 1, true)
    assert.matches('after\tfine\n', out, 1, true)
    assert.matches('init\tfalse\ttrue\ta process initializer failed: (error object is a table value)',
      out, 1, true)
    assert.matches('len\tfalse\ttrue\ta process initializer failed: [^\n]*len raised', out)
  end)

  it('survives a done-callback that raises an error whose __tostring raises', function()
    local out, err, code = run_script [[
      print('script start')
      local futures = require 'host.futures'
      local path = os.tmpname()
      os.remove(path)
      local ex = futures.ProcessPoolExecutor { max_workers = 1 }
      local f = ex:submit(function(p)
        local t = os.time()
        while os.time() - t < 10 do
          local g = io.open(p)
          if g then g:close() return 1 end
        end
      end, path)
      f:add_done_callback(function()
        error(setmetatable({}, { __tostring = function() error('tostring raised') end }))
      end)
      assert(io.open(path, 'w')):close()
      print('first', f:result(5))
      os.remove(path)
      print('later', ex:submit(function() return 2 end):result(5))
      ex:shutdown()
      print('script end')
    ]]
    assert.are.equal(0, code, err)
    assert.are.equal(1, count(out, 'script start'), out)
    assert.matches('first\t1\nlater\t2\nscript end\n$', out)
    assert.matches('exception calling callback for future: (error object is a table value)', err, 1, true)
  end)

  for _, case in ipairs { { 'KILL', 'main' }, { 'TERM', 'main' }, { 'KILL', 'ended' } } do
    local sig, maker = case[1], case[2]
    it('ends busy workers when the parent gets SIG' .. sig .. ' (pool used by the ' ..
      maker .. ' thread)', function()
      local f = sh.tempfile(WITH_HELPERS .. [[
        io.stdout:setvbuf 'no'
        local futures = require 'host.futures'
        local thread = require 'host.thread'
        local function make()  -- its submits start the workers: both tasks run on
          local ex = futures.ProcessPoolExecutor { max_workers = 2 }
          for i = 1, 2 do
            ex:submit(function() local t = os.time() while os.time() - t < 60 do end end)
          end
          return ex
        end
        local ex
        if ']] .. maker .. [[' == 'main' then ex = make()
        else ex = select(2, assert(thread.start(make):join(5))) end
        print(table.concat(wait_pids(ex, 2), ' '))
        thread.sleep(60)
      ]])
      local out = sh.run('o=$(mktemp); ' .. sh.quote(sh.host) .. ' ' .. sh.quote(f) ..
        ' > "$o" 2>&1 & p=$!; for i in $(seq 200); do [ -s "$o" ] && break; sleep 0.05; done;' ..
        ' sleep 0.2; kill -' .. sig .. ' $p; wait $p; echo "rc=$?"; cat "$o"; rm -f "$o"', 20)
      os.remove(f)
      local pids = {}
      for pid in (out:match('\n(%d+ %d+)\n') or ''):gmatch('%d+') do pids[#pids + 1] = pid end
      finally(function()
        for _, pid in ipairs(pids) do os.execute('kill -KILL ' .. pid .. ' 2>/dev/null') end
      end)
      assert.are.equal(2, #pids, out)
      assert.is_true(all_gone(pids, T, running), out)
    end)
  end
end)
