-- spec/thread_pool_spec.lua: futures.ThreadPoolExecutor at its boundaries:
-- use after __gc, many initargs, error objects that cannot be printed, and
-- pools the program drops. (Its everyday behaviour is in futures_spec.)
-- Every wait has a timeout.
local futures = require 'host.futures'
local thread = require 'host.thread'
local herror = require 'host.error'
local time = require 'host.time'
local sh = require 'spec.support.sh'

local T = 10
-- Rounds of the specs that race at a 1 us switch interval: under valgrind,
-- which runs one thread at a time, each GIL hand-off costs a scheduling
-- slice (the closer thread's spec took more than half an hour there).
local RACE_ROUNDS = os.getenv 'HOST_UNDER_VALGRIND' and 50 or 1000

local run_script = sh.host_script

describe('ThreadPoolExecutor', function()
  it('raises "attempt to use a finalized" after __gc', function()
    local seen = {}
    -- made first, so its finalizer runs after the pool's in the same cycle
    local holder = setmetatable({}, { __gc = function(h)
      seen.submit = select(2, pcall(h.pool.submit, h.pool, print))
      seen.shutdown = select(2, pcall(h.pool.shutdown, h.pool))
      seen.text = tostring(h.pool)
    end })
    holder.pool = futures.ThreadPoolExecutor { max_workers = 1 }
    holder.pool:submit(function() end):result(T)
    holder = nil
    collectgarbage()
    collectgarbage()
    assert.matches('attempt to use a finalized host.ThreadPoolExecutor', seen.submit, 1, true)
    assert.matches('attempt to use a finalized host.ThreadPoolExecutor', seen.shutdown, 1, true)
    assert.matches('^host.ThreadPoolExecutor %(finalized%)', seen.text)
  end)

  it('passes 200 and 5000 initargs to the initializer, and honours initargs.n', function()
    for _, n in ipairs { 200, 5000 } do
      local args, got = {}, {}
      for i = 1, n do args[i] = i end
      local ex <close> = futures.ThreadPoolExecutor { max_workers = 1, initargs = args,
        initializer = function(...) got.n, got.last = select('#', ...), select(select('#', ...), ...) end }
      ex:submit(function() end):result(T)
      assert.are.same({ n = n, last = n }, got)
    end
    local got
    local ex <close> = futures.ThreadPoolExecutor { max_workers = 1, initargs = { n = 3, 'a' },
      initializer = function(...) got = table.pack(...) end }
    ex:submit(function() end):result(T)
    assert.are.same({ n = 3, 'a' }, got)
  end)

  it('gathers the initargs at construction: a raising __len raises there', function()
    -- The initargs are copied when the pool is made (see 'copies the initargs'),
    -- so no worker can meet this error later.
    local args = setmetatable({}, { __len = function() error('no length') end })
    local ok, err = pcall(futures.ThreadPoolExecutor, { max_workers = 1, initargs = args, initializer = print })
    assert.is_false(ok)
    assert.matches('no length', err, 1, true)
  end)

  it('survives error objects whose __tostring raises: task, initializer, done-callback', function()
    local out, err, code = run_script [[
      local futures = require 'host.futures'
      local function bad() return setmetatable({}, { __tostring = function() error('no text') end }) end
      local ex = futures.ThreadPoolExecutor { max_workers = 1 }
      local f = ex:submit(function() error(bad()) end)
      print('task', pcall(f.result, f, 10) == false)
      local g = ex:submit(function() return 1 end)
      g:add_done_callback(function() error(bad()) end)
      print('callback', g:result(10))
      print('later', ex:submit(function() return 'served' end):result(10))
      ex:shutdown()
      local broken = futures.ThreadPoolExecutor { max_workers = 1,
        initializer = function() error(bad()) end }
      local ok, e = pcall(function() return broken:submit(print):result(10) end)
      print('init', ok, e.message)
      broken:shutdown()
      print('end')
    ]]
    assert.are.equal(0, code)
    assert.are.equal('task\ttrue\ncallback\t1\nlater\tserved\n'
      .. 'init\tfalse\ta thread initializer failed: (error object is a table value)\nend\n', out)
    assert.matches('exception calling callback for future: (error object is a table value)', err, 1, true)
  end)

  it('refuses at once, on its only worker, to wait for a future of the pool that is not done', function()
    -- a done-callback or a task runs on the worker that the future waits
    -- for (queued) or runs on: waiting there never ends; with a second
    -- worker the wait is a plain one
    local out, err, code = run_script [[
      local futures = require 'host.futures'
      local thread = require 'host.thread'
      local ex = futures.ThreadPoolExecutor { max_workers = 1 }
      local gate, called = thread.Event(), thread.Event()
      local f = ex:submit(function() gate:wait(5) return 1 end)
      local later = ex:submit(function() return 2 end)
      local lines = {}
      local function try(name, fn, ...)
        local ok, e = pcall(fn, ...)
        lines[#lines + 1] = name .. '\t' .. tostring(ok) .. '\t' .. tostring(e)
      end
      f:add_done_callback(function()
        try('result', later.result, later)
        try('result60', later.result, later, 60)
        try('result0', later.result, later, 0)
        try('wait', futures.wait, { later }, { timeout = 60 })
        called:set()
      end)
      gate:set()
      print('result', f:result(5))
      print('called', called:wait(5))
      print(table.concat(lines, '\n'))
      print('later', later:result(5))
      local go, box = thread.Event(), {}
      local outer = ex:submit(function()
        go:wait(5)
        return pcall(box.inner.result, box.inner, 60)
      end)
      box.inner = ex:submit(function() return 'inner' end)
      go:set()
      print('task', outer:result(5))
      print('inner', box.inner:result(5))
      ex:shutdown()
      local two = futures.ThreadPoolExecutor { max_workers = 2 }
      local gate2, gate3 = thread.Event(), thread.Event()
      local first = two:submit(function() gate2:wait(5) return 1 end)
      local second = two:submit(function() gate3:wait(5) return 'second' end)
      local called2, got = thread.Event(), nil
      first:add_done_callback(function()
        gate3:set()
        got = { pcall(second.result, second, 5) }
        called2:set()
      end)
      gate2:set()
      assert(called2:wait(5))
      print('two', table.unpack(got))
      two:shutdown()
      print('end')
    ]]
    assert.are.equal(0, code, err)
    local refused = '\tfalse\tcannot wait for a future of this pool on its only worker '
      .. '(it would never complete)\n'
    assert.are.equal('result\t1\ncalled\ttrue\n'
      .. 'result' .. refused .. 'result60' .. refused
      .. 'result0\tfalse\tTimeoutError: the future is not done after 0.0 seconds\n'
      .. 'wait' .. refused .. 'later\t2\n'
      .. 'task\tfalse\tcannot wait for a future of this pool on its only worker (it would never complete)\n'
      .. 'inner\tinner\ntwo\ttrue\tsecond\nend\n', out)
  end)

  it('refuses, on its only worker, a FIRST_EXCEPTION wait once the other futures ended without an error', function()
    -- the future of another pool ends fine, which does not end a
    -- FIRST_EXCEPTION wait: only the own pool's future is left, which
    -- would never complete (the wait used to last its whole timeout, or
    -- for good without one)
    local ex <close> = futures.ThreadPoolExecutor { max_workers = 1 }
    local other <close> = futures.ThreadPoolExecutor { max_workers = 1 }
    local go, box = thread.Event(), {}
    local outer = ex:submit(function()
      go:wait(T)
      local start = time.monotonic()
      local ok, err = pcall(futures.wait, { box.inner, box.elsewhere },
                            { timeout = T, return_when = 'FIRST_EXCEPTION' })
      return ok, err, box.elsewhere:done(), time.monotonic() - start < T / 2
    end)
    box.inner = ex:submit(function() return 'inner' end)
    box.elsewhere = other:submit(function() thread.sleep(0.05) return 'elsewhere' end)
    go:set()
    assert.are.same({ false, 'cannot wait for a future of this pool on its only worker (it would never complete)',
                      true, true }, { outer:result(2 * T) })
    assert.are.equal('inner', box.inner:result(T))
  end)

  it('ends the idle workers of pools dropped without shutdown', function()
    collectgarbage()
    local start = thread.count()
    for i = 1, 20 do
      local ex = futures.ThreadPoolExecutor { max_workers = 3 }
      local fs = {}
      for j = 1, 3 do fs[j] = ex:submit(function(x) return x end, i) end
      for j = 1, 3 do assert.are.equal(i, fs[j]:result(T)) end
    end
    collectgarbage()
    collectgarbage()
    local deadline = require('host.time').monotonic() + T
    while thread.count() > start and require('host.time').monotonic() < deadline do
      thread.sleep(0.01)
      collectgarbage()
    end
    assert.is_true(thread.count() <= start)
  end)

  it('runs the queued work of a dropped pool', function()
    local ex = futures.ThreadPoolExecutor { max_workers = 1 }
    local gate, fs = thread.Event(), {}
    fs[1] = ex:submit(function() return gate:wait(T) end)
    for i = 2, 5 do fs[i] = ex:submit(function(x) return x end, i) end
    ex = nil
    collectgarbage()
    collectgarbage()
    gate:set()
    assert.is_true(fs[1]:result(T))
    for i = 2, 5 do assert.are.equal(i, fs[i]:result(T)) end
  end)
  it('counts its idle workers exactly, so a blocked pool still starts its last worker', function()
    local ex <close> = futures.ThreadPoolExecutor { max_workers = 3 }
    local go = thread.Event()
    local a = ex:submit(function() return go:wait(T) end)
    local b = ex:submit(function() return go:wait(T) end)
    go:set()
    assert.is_true(a:result(T))
    assert.is_true(b:result(T))
    -- Each submit wakes every idle worker; one that finds nothing must not
    -- count itself idle twice (the count once grew with every such wake-up).
    for i = 1, 50 do assert.are.equal(i, ex:submit(function() return i end):result(T)) end
    local e1, e2 = thread.Event(), thread.Event()
    local x = ex:submit(function() return e1:wait(T) end)
    local y = ex:submit(function() return e2:wait(T) end)
    local z = ex:submit(function() e1:set(); e2:set(); return 'z ran' end)
    assert.are.equal('z ran', z:result(T))
    assert.is_true(x:result(T))
    assert.is_true(y:result(T))
  end)

  it('keeps the initializer failure as the reason later submits give', function()
    local ex = futures.ThreadPoolExecutor { max_workers = 1, initializer = function() error('init boom') end }
    local ok, err = pcall(function() return ex:submit(print):result(T) end)
    assert.is_false(ok)
    assert.is_true(herror.is(err, 'BrokenThreadPool'))
    ok, err = pcall(ex.submit, ex, print)
    assert.is_false(ok)
    assert.is_true(herror.is(err, 'BrokenThreadPool'))
    assert.matches('a thread initializer failed: .*init boom', err.message)
    ex:shutdown()
  end)

  it('leaves no item queued in a pool that its new worker broke while submit started it', function()
    -- the GIL may go to that worker inside submit (a hook at a call): its
    -- initializer fails and breaks the pool before the item is queued, so
    -- submit raises BrokenThreadPool then (the item used to wait for good);
    -- a switch interval of 1 us makes that likely (15 of 1000 submits here)
    local before = thread.getswitchinterval()
    thread.setswitchinterval(1e-6)
    local lost
    for i = 1, RACE_ROUNDS do
      local ex = futures.ThreadPoolExecutor { max_workers = 1, initializer = function() error('init boom') end }
      local ok, err = pcall(function() return ex:submit(print):result(T) end)
      ex:shutdown()
      if ok or not herror.is(err, 'BrokenThreadPool') then
        lost = i .. ': ' .. tostring(err)
        break
      end
    end
    thread.setswitchinterval(before)
    assert.is_nil(lost)
  end)

  it('leaves no item queued in a pool that another thread shut down while submit started its worker', function()
    -- the GIL may go to a thread that shuts the pool down inside submit (a
    -- hook at a call), and then to the new worker, which finds no item and
    -- ends: submit raises then (the item used to wait for good: about one
    -- submit in 50 here at a 1 us switch interval)
    local before = thread.getswitchinterval()
    thread.setswitchinterval(1e-6)
    local box = { running = true }
    local closer = dofile('spec/support/shutdown_race.lua')(box)
    local lost, queued = nil, 0
    for i = 1, RACE_ROUNDS do
      local ex = futures.ThreadPoolExecutor { max_workers = 1 }
      box.ex = ex
      local submitted, f = pcall(ex.submit, ex, function() return i end)
      if submitted then
        local ok, got = pcall(f.result, f, T)
        if not ok or got ~= i then
          lost = i .. ': ' .. tostring(got)
          break
        end
        queued = queued + 1
      elseif not tostring(f):find('cannot schedule new futures after shutdown', 1, true) then
        lost = i .. ': ' .. tostring(f)
        break
      end
      ex:shutdown()
    end
    box.running = false
    closer:join(T)
    thread.setswitchinterval(before)
    assert.is_nil(lost)
    assert.is_true(queued > 0)
  end)

  it('copies the initargs at construction (a later change is not seen)', function()
    local seen
    local args = { 'original', n = 2 }
    local ex <close> = futures.ThreadPoolExecutor { max_workers = 1, initargs = args,
      initializer = function(...) seen = table.pack(...) end }
    args[1], args[2], args.n = 'changed', 'added', 3
    ex:submit(print):result(T)  -- the worker starts now
    assert.are.same({ n = 2, 'original' }, seen)
    local ok, err = pcall(futures.ThreadPoolExecutor, { initargs = { n = 100000000 }, initializer = print })
    assert.is_false(ok)
    assert.matches("'initargs.n' must be an integer in [0, 500000]", err, 1, true)
  end)

  it('refuses to start after interpreter shutdown began, so exit does not hang', function()
    -- a thread, and a task of a pool, make a pool once the main chunk ended
    local out, err, code = run_script [[
      local futures = require 'host.futures'
      local thread = require 'host.thread'
      local main = thread.current()
      local function late(who)
        main:join(10)
        local ok, ex = pcall(futures.ThreadPoolExecutor, { max_workers = 1 })
        if ok then KEEP = ex; ex:submit(print, 'late task ran'):result(5) end
        io.stderr:write(who, ' ', tostring(ok), ' ', tostring(ex), '\n')
      end
      thread.start(late, 'thread')
      futures.ThreadPoolExecutor { max_workers = 1 }:submit(late, 'task')
      print('main ends')
    ]]
    assert.are.equal(0, code)
    assert.are.equal('main ends\n', out)
    assert.matches('thread false [^\n]*cannot start a new pool after interpreter shutdown\n', err)
    assert.matches('task false [^\n]*cannot start a new pool after interpreter shutdown\n', err)
  end)

  it('runs no task whose submit raised because no worker could start', function()
    -- Under an address-space limit thread stacks run out; 0.4 GB is far more
    -- than host needs. A sanitizer build cannot start under it: skipped.
    local probe = sh.run('ulimit -v 400000 && exec ' .. sh.quote(sh.host) .. ' -e "print(1)"', 20)
    if probe ~= '1\n' then pending('host does not start under ulimit -v (a sanitizer build?)') return end
    local f = sh.tempfile [[
      local futures = require 'host.futures'
      local thread = require 'host.thread'
      local big = futures.ThreadPoolExecutor { max_workers = 1000 }
      local go, full = thread.Event(), false
      for _ = 1, 1000 do
        big:submit(function() go:wait(20) end)  -- never raises: the pool has workers
        local t = thread.start(function() end)  -- nil, message, errno on failure
        if not t then full = true break end
        t:join(10)
      end
      local ex = futures.ThreadPoolExecutor { max_workers = 1 }
      local runs = 0
      local ok, err = pcall(ex.submit, ex, function() runs = runs + 1 end)
      print(full, ok, (tostring(err):match('cannot start thread')))
      go:set()
      big:shutdown()
      local start = require('host.time').monotonic()
      while thread.count() > 1 and require('host.time').monotonic() < start + 10 do thread.sleep(0.01) end
      ex:submit(function() runs = runs + 1 end):result(10)
      ex:shutdown()
      print(runs)
    ]]
    local out, err, code = sh.run('ulimit -v 400000 && exec ' .. sh.quote(sh.host) .. ' ' .. sh.quote(f), 30)
    os.remove(f)
    assert.are.equal('', err)
    assert.are.equal(0, code)
    assert.are.equal('true\tfalse\tcannot start thread\n1\n', out)
  end)
end)

describe('ThreadPoolExecutor short of memory', function()
  it('never aborts the process, whatever address-space limit it runs under', function()
    -- Each run limits its own address space (prlimit) to its size plus
    -- extra KiB, then runs 50 tasks on 2 workers. Somewhere in the range a
    -- worker's start, a task or the storing of a result runs out of memory.
    -- Before: "PANIC: unprotected error in call to Lua API (not enough
    -- memory)" as a worker thread set itself up, and the process aborted.
    local why = sh.cannot_limit_memory(true)
    if why then pending(why) return end
    local f = sh.tempfile(sh.LIMIT_SELF .. [[
      local futures = require 'host.futures'
      local ok, err = pcall(function()
        local ex = futures.ThreadPoolExecutor { max_workers = 2 }
        local t = {}
        for i = 1, 50 do t[i] = ex:submit(function(x) return string.rep('x', x * 100) end, i) end
        for i = 1, 50 do assert(#t[i]:result(3) == i * 100) end
        ex:shutdown { wait = false }
      end)
      print(ok and 'ok' or 'failed', ok and '' or tostring(err):match('^[^\n]*'))
    ]])
    local seen = {}
    for extra_kb = 15000, 18000, 200 do
      local out, err, code = sh.run(sh.quote(sh.host) .. ' ' .. sh.quote(f) .. ' ' .. extra_kb, 30)
      -- exit 1: the script itself ran out of memory, which host reports
      -- a TimeoutError: a task waited for a worker that never ran (before: its
      -- thread failed to set up, "Exception in thread ...: not enough memory")
      local fits = (code == 0 and (out == 'ok\t\n' or (out:find('^failed\t') and not out:find('TimeoutError'))))
      assert(fits or (code == 1 and err:find('memory')),
             ('%d KiB: exit %s, stdout %q, stderr %q'):format(extra_kb, code, out, err))
      assert(not err:find('PANIC') and not err:find('Fatal'), err)
      seen[out:match('^%a+')] = true
    end
    assert.is_true(seen.ok)  -- the range reaches a limit where all of it fits
  end)

  it('runs the callbacks of a future whose error was lost for want of memory', function()
    -- Somewhere in the range a task's result, and then its error, cannot
    -- be stored: the future fails with no payload. Before, that failure
    -- ran none of its done-callbacks (and woke none of its waiters).
    local why = sh.cannot_limit_memory(true)
    if why then pending(why) return end
    local f = sh.tempfile(sh.LIMIT_SELF .. [[
      local futures = require 'host.futures'
      local called, t = 0, {}
      pcall(function()
        local ex = futures.ThreadPoolExecutor { max_workers = 2 }
        for i = 1, 50 do
          t[i] = ex:submit(function(x) return string.rep('x', x * 100) end, i)
          t[i]:add_done_callback(function() called = called + 1 end)
        end
        for i = 1, 50 do
          local ok, err = pcall(t[i].result, t[i], 3)
          if not ok and tostring(err):find('TimeoutError') then print('stuck') os.exit(0) end
        end
        ex:shutdown()
      end)
      local done = 0
      for i = 1, #t do if t[i]:done() then done = done + 1 end end
      print(done, called)
    ]])
    for extra_kb = 15000, 18000, 200 do
      local out, err, code = sh.run(sh.quote(sh.host) .. ' ' .. sh.quote(f) .. ' ' .. extra_kb, 30)
      -- a callback that itself ran out of memory is reported, as CPython logs it
      local done, called = out:match('^(%d+)\t(%d+)\n$')
      local failed = sh.count(err, 'exception calling callback for future')
      assert((code == 0 and done and tonumber(done) == tonumber(called) + failed) or
             (code == 1 and err:find('memory')),
             ('%d KiB: exit %s, stdout %q, stderr %q'):format(extra_kb, code, out, err))
    end
  end)
end)
