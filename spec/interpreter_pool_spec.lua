-- spec/interpreter_pool_spec.lua: futures.InterpreterPoolExecutor, one
-- isolated universe per worker thread. Every wait has a timeout.
local futures = require 'host.futures'
local thread = require 'host.thread'
local herror = require 'host.error'
local sh = require 'spec.support.sh'

local T = 10

local run_script = sh.host_script

-- Waits (polling, at most T seconds) until the future runs.
local function wait_running(f)
  local deadline = require('host.time').monotonic() + T
  while not f:running() and require('host.time').monotonic() < deadline do thread.sleep(0.002) end
  assert.is_true(f:running())
end

-- The number of OS threads of this process.
local function os_threads()
  local f = assert(io.open('/proc/self/status'))
  local s = f:read('a')
  f:close()
  return tonumber(s:match('Threads:%s*(%d+)'))
end

describe('InterpreterPoolExecutor', function()
  it('runs tasks in other universes and returns all their values', function()
    local ex <close> = assert(futures.InterpreterPoolExecutor { max_workers = 2 })
    local f = ex:submit(function(a, b) return a + b, nil, 'z' end, 1, 2)
    assert.are.same({ n = 3, 3, nil, 'z' }, table.pack(f:result(T)))
    local factor = 6
    assert.are.equal(42, ex:submit(function(x) return x * factor end, 7):result(T))
  end)

  it('isolates globals: a task sees none of the caller\'s, the caller none of a task\'s', function()
    local set = load('ISOLATION_PROBE = ...')  -- busted's own environment aside
    local get = load('return ISOLATION_PROBE')
    set('main')
    local ex <close> = assert(futures.InterpreterPoolExecutor { max_workers = 1 })
    local first = ex:submit(function()
      local before = ISOLATION_PROBE
      ISOLATION_PROBE = 'worker'
      return before
    end)
    assert.are.same({ n = 1, nil }, table.pack(first:result(T)))
    assert.are.equal('main', get())  -- the task's global stayed in its universe
    -- the one worker keeps its universe: the next task sees its own global
    assert.are.equal('worker', ex:submit(function() return ISOLATION_PROBE end):result(T))
    set('changed')  -- and a change in the caller does not reach it
    assert.are.equal('worker', ex:submit(function() return ISOLATION_PROBE end):result(T))
    local other <close> = assert(futures.InterpreterPoolExecutor { max_workers = 1 })
    assert.are.same({ n = 1, nil }, table.pack(other:submit(function() return ISOLATION_PROBE end):result(T)))
    set(nil)
  end)

  it('preloads the host libraries and runs the initializer in each worker', function()
    local ex <close> = assert(futures.InterpreterPoolExecutor {
      max_workers = 2, initializer = function(tag) WORKER_TAG = tag .. '!' end, initargs = { 'ready' } })
    local f = ex:submit(function()
      return WORKER_TAG, package.preload['host.thread'] ~= nil, require('host.serialize') ~= nil
    end)
    assert.are.same({ 'ready!', true, true }, { f:result(T) })
  end)

  it('lets a worker universe start its own threads and pools', function()
    local ex <close> = assert(futures.InterpreterPoolExecutor { max_workers = 1 })
    local f = ex:submit(function()
      local th = require 'host.thread'
      local t = th.start(function(x) return x + 1 end, 41)
      local ok, v = t:join(5)
      local inner = require('host.futures').ThreadPoolExecutor { max_workers = 2 }
      local w = inner:submit(function() return 'inner pool' end):result(5)
      inner:shutdown()
      return ok, v, w
    end)
    assert.are.same({ true, 42, 'inner pool' }, { f:result(T) })
  end)

  it('stops a busy loop with cancel{interrupt = true}, then serves the next task', function()
    local ex <close> = assert(futures.InterpreterPoolExecutor { max_workers = 1 })
    local started = ex:submit(function() return true end)
    started:result(T)
    local spin = ex:submit(function() while true do end end)
    local deadline = require('host.time').monotonic() + T
    while not spin:running() and require('host.time').monotonic() < deadline do thread.sleep(0.005) end
    assert.is_false(spin:cancel())  -- a plain cancel cannot stop a running task
    assert.is_true(spin:cancel { interrupt = true })
    local ok, err = pcall(spin.result, spin, 1)  -- stopped within 1 s
    assert.is_false(ok)
    assert.matches('interrupted!', err, 1, true)
    assert.are.equal('next', ex:submit(function() return 'next' end):result(T))
  end)

  it('interrupts running tasks on shutdown{cancel_futures = true, interrupt = true}', function()
    local ex = assert(futures.InterpreterPoolExecutor { max_workers = 1 })
    local spin = ex:submit(function() while true do end end)
    local queued = ex:submit(function() return 1 end)
    local deadline = require('host.time').monotonic() + T
    while not spin:running() and require('host.time').monotonic() < deadline do thread.sleep(0.005) end
    ex:shutdown { cancel_futures = true, interrupt = true }
    assert.is_true(queued:cancelled())
    assert.matches('interrupted!', select(2, pcall(spin.result, spin, 0)), 1, true)
  end)

  it('carries a task error with the worker traceback', function()
    local ex <close> = assert(futures.InterpreterPoolExecutor { max_workers = 1 })
    local f = ex:submit(function() error('in a worker') end)
    local ok, err = pcall(f.result, f, T)
    assert.is_false(ok)
    assert.matches('in a worker\nremote traceback (interpreter pool worker 1):\n\t', err, 1, true)
    assert.matches("in function 'error'", err, 1, true)
    local e = ex:submit(function() error(require('host.error').new('ValueError', 'typed')) end)
    ok, err = pcall(e.result, e, T)
    assert.is_true(herror.is(err, 'ValueError'))
  end)

  it('gives the clear errors for values that cannot cross', function()
    local ex <close> = assert(futures.InterpreterPoolExecutor { max_workers = 1 })
    assert.has_error(function() ex:submit(print, { io.stdout }) end,
      'cannot submit argument #1: cannot serialize userdata at [1] (FILE*)')
    local f = ex:submit(function() return io.stdout end)
    local ok, err = pcall(f.result, f, T)
    assert.is_false(ok)
    assert.matches('cannot send the result back: cannot serialize userdata (FILE*)', err, 1, true)
    assert.are.equal(1, ex:submit(function() return 1 end):result(T))
  end)

  it('breaks when the initializer fails', function()
    local ex = assert(futures.InterpreterPoolExecutor { max_workers = 1, initializer = function() error('no init') end })
    -- the worker may have failed already: then submit itself raises
    local ok, err = pcall(function() return ex:submit(function() return 1 end):result(T) end)
    assert.is_false(ok)
    assert.is_true(herror.is(err, 'BrokenInterpreterPool'))
    assert.matches('no init', err.message, 1, true)
    -- labelled as the process pool labels it (before: a bare "stack traceback:")
    assert.matches('\nremote traceback %(interpreter pool worker 1%):\n\t', err.message)
    ok, err = pcall(ex.submit, ex, print)
    assert.is_true(herror.is(err, 'BrokenInterpreterPool'))
    ex:shutdown()
  end)

  it('runs 1000 tiny tasks, and callbacks in the caller\'s universe', function()
    local ex <close> = assert(futures.InterpreterPoolExecutor { max_workers = 2 })
    local fs, called, lock = {}, 0, thread.Lock()
    -- callbacks run in the manager thread or, when already done, in this
    -- one: the count is shared state, so it takes a lock (see Item 38)
    local function count() local _ <close> = lock:acquire(T) called = called + 1 end
    for i = 1, 1000 do
      fs[i] = ex:submit(function(x) return x * 2 end, i)
      fs[i]:add_done_callback(count)
    end
    local sum = 0
    for i = 1, 1000 do sum = sum + fs[i]:result(T) end
    assert.are.equal(1001000, sum)
    ex:shutdown()
    assert.are.equal(1000, called)
  end)

  it('shuts down with work pending: plain shutdown finishes it, submits are refused', function()
    local ex = assert(futures.InterpreterPoolExecutor { max_workers = 1 })
    local fs = {}
    for i = 1, 20 do fs[i] = ex:submit(function(x) return x end, i) end
    ex:shutdown()
    for i = 1, 20 do assert.are.equal(i, fs[i]:result(0)) end
    assert.has_error(function() ex:submit(print) end, 'cannot schedule new futures after shutdown')
  end)

  it('maps and rejects bad arguments', function()
    local ex <close> = assert(futures.InterpreterPoolExecutor { max_workers = 2 })
    local got = {}
    for i, v in ex:map(function(x) return -x end, { 1, 2, 3 }, { chunksize = 2 }) do got[i] = v end
    assert.are.same({ -1, -2, -3 }, got)
    assert.has_error(function() futures.InterpreterPoolExecutor { max_workers = 0 } end,
      "bad argument #1 to 'InterpreterPoolExecutor' ('max_workers' must be in [1, 1024])")
    assert.has_error(function() futures.InterpreterPoolExecutor { initializer = 5 } end,
      "bad argument #1 to 'InterpreterPoolExecutor' ('initializer' must be a function, got number)")
    assert.has_error(function() futures.InterpreterPoolExecutor { initializer = function() end, initargs = { io.stdout } } end)
  end)

  it('raises "attempt to use a finalized" after __gc', function()
    local seen = {}
    -- made first, so its finalizer runs after the pool's in the same cycle
    local holder = setmetatable({}, { __gc = function(h)
      seen.submit = select(2, pcall(h.pool.submit, h.pool, print))
      seen.shutdown = select(2, pcall(h.pool.shutdown, h.pool))
      seen.text = tostring(h.pool)
    end })
    holder.pool = futures.InterpreterPoolExecutor { max_workers = 1 }
    holder = nil
    collectgarbage()
    collectgarbage()
    assert.matches('attempt to use a finalized host.InterpreterPoolExecutor', seen.submit, 1, true)
    assert.matches('attempt to use a finalized host.InterpreterPoolExecutor', seen.shutdown, 1, true)
    assert.matches('^host.InterpreterPoolExecutor %(finalized%)', seen.text)
  end)

  it('passes 200 and 5000 initargs to the initializer', function()
    local out, err, code = run_script [[
      local futures = require 'host.futures'
      for _, n in ipairs { 200, 5000 } do
        local args = {}
        for i = 1, n do args[i] = i end
        local ex = futures.InterpreterPoolExecutor { max_workers = 1, initargs = args,
          initializer = function(...) COUNT, LAST = select('#', ...), select(select('#', ...), ...) end }
        print(ex:submit(function() return COUNT, LAST end):result(10))
        ex:shutdown()
      end
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, code)
    assert.are.equal('200\t200\n5000\t5000\n', out)
  end)

  it('survives error objects whose __tostring raises: task, initializer, done-callback', function()
    local out, err, code = run_script [[
      local futures = require 'host.futures'
      local thread = require 'host.thread'
      local function bad() return setmetatable({}, { __tostring = function() error('no text') end }) end
      local ex = futures.InterpreterPoolExecutor { max_workers = 1 }
      local f = ex:submit(function(mk) error(mk()) end, bad)
      print('task', select(2, pcall(f.result, f, 10)))
      -- a done-callback raising it, in the manager: later tasks are not lost
      local spin = ex:submit(function() while true do end end)
      local called = thread.Event()
      spin:add_done_callback(function() called:set() error(bad()) end)
      while not spin:running() do thread.sleep(0.002) end
      spin:cancel { interrupt = true }
      print('callback', called:wait(10))
      print('later', ex:submit(function() return 'served' end):result(10))
      ex:shutdown()
      local broken = futures.InterpreterPoolExecutor { max_workers = 1, initargs = { bad },
        initializer = function(mk) error(mk()) end }
      print('init', pcall(function() return broken:submit(print):result(10) end))
      broken:shutdown()
      print('end')
    ]]
    assert.are.equal(0, code)
    assert.matches('task\t(error object is a table value)\n', out, 1, true)
    assert.matches('callback\ttrue\nlater\tserved\n', out, 1, true)
    assert.matches('init\tfalse\tBrokenInterpreterPool: an interpreter initializer failed: '
      .. '(error object is a table value)', out, 1, true)
    assert.matches('end\n$', out)
    assert.matches('exception calling callback for future: (error object is a table value)', err, 1, true)
  end)

  it('sends an unserializable task error as its text', function()
    local ex <close> = assert(futures.InterpreterPoolExecutor { max_workers = 1 })
    local f = ex:submit(function()
      error(setmetatable({}, { __tostring = function() return 'my error text' end }))
    end)
    local ok, err = pcall(f.result, f, T)
    assert.is_false(ok)
    assert.matches('^my error text\nremote traceback %(interpreter pool worker 1%):\n', err)
  end)

  it('fails the task that calls os.exit, and nothing else', function()
    local out, err, code = run_script [[
      local futures = require 'host.futures'
      local ex = futures.InterpreterPoolExecutor { max_workers = 1 }
      local f = ex:submit(function() os.exit(3) end)
      local g = ex:submit(function() pcall(os.exit, true) while true do end end)
      local h = ex:submit(function() return 'after' end)
      local ok, e = pcall(f.result, f, 10)
      print(ok, e:is('SystemExit'), e.code, e.message)
      print(select(2, pcall(g.result, g, 10)).message)
      print(h:result(10))
      ex:shutdown()
      print('the script goes on')
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, code)
    assert.are.equal('false\ttrue\t3\tthe task called os.exit(3)\n'
      .. 'the task called os.exit(0)\nafter\nthe script goes on\n', out)
  end)

  it('cancels every pending future on shutdown{cancel_futures = true}, refusing submits from callbacks', function()
    local ex = assert(futures.InterpreterPoolExecutor { max_workers = 1 })
    local spin = ex:submit(function() while true do end end)
    wait_running(spin)
    local fs, refused = {}, 0
    for i = 1, 50 do
      fs[i] = ex:submit(function() return i end)
      fs[i]:add_done_callback(function()
        local ok, err = pcall(ex.submit, ex, function() return 'late' end)
        if not ok and err:find('cannot schedule new futures after shutdown', 1, true) then
          refused = refused + 1
        end
      end)
    end
    ex:shutdown { cancel_futures = true, wait = false }
    local cancelled = 0
    for i = 1, 50 do if fs[i]:cancelled() then cancelled = cancelled + 1 end end
    assert.are.equal(50, cancelled)
    assert.are.equal(50, refused)
    assert.is_true(spin:cancel { interrupt = true })
    ex:shutdown()
    assert.has_error(function() ex:submit(print) end, 'cannot schedule new futures after shutdown')
  end)

  it('interrupts a task through its own pcalls, and the worker serves on', function()
    local out, err, code = run_script [[
      local futures = require 'host.futures'
      local thread = require 'host.thread'
      local ex = futures.InterpreterPoolExecutor { max_workers = 1 }
      local f = ex:submit(function() while true do pcall(function() while true do end end) end end)
      while not f:running() do thread.sleep(0.002) end
      print(f:cancel { interrupt = true })
      local ok, e = pcall(f.result, f, 10)
      print(ok, tostring(e):match('interrupted!'))
      -- xpcall and coroutines do not keep it either
      local g = ex:submit(function()
        while true do
          xpcall(function() while true do end end, function(m) return m end)
          coroutine.resume(coroutine.create(function() while true do end end))
        end
      end)
      while not g:running() do thread.sleep(0.002) end
      g:cancel { interrupt = true }
      print(pcall(g.result, g, 10) == false)
      print(ex:submit(function() return pcall(error, 'plain') end):result(10))
      ex:shutdown()
      print('end')
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, code)
    assert.are.equal('true\nfalse\tinterrupted!\ntrue\nfalse\tplain\nend\n', out)
  end)

  it('interrupts only the task it was meant for (shutdown right after a task, 50 runs)', function()
    local out, err, code = run_script [[
      local futures = require 'host.futures'
      for _ = 1, 50 do
        local ex = futures.InterpreterPoolExecutor { max_workers = 1 }
        ex:submit(function() return 1 end):result(10)
        ex:shutdown { interrupt = true }
      end
      local ex = futures.InterpreterPoolExecutor { max_workers = 1 }
      for i = 1, 50 do
        local f = ex:submit(function(x) return x end, i)
        assert(f:result(10) == i)
        f:cancel { interrupt = true }  -- too late: done already
        assert(ex:submit(function(x) return x end, i):result(10) == i)
      end
      ex:shutdown()
      print('end')
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, code)
    assert.are.equal('end\n', out)
  end)

  it('refuses shutdown{wait = true} from a done-callback in the manager; wait = false works', function()
    local out, err, code = run_script [[
      local futures = require 'host.futures'
      local thread = require 'host.thread'
      local ex = futures.InterpreterPoolExecutor { max_workers = 1 }
      local spin = ex:submit(function() while true do end end)
      local called, res = thread.Event()
      spin:add_done_callback(function()
        res = { thread.current().name, pcall(ex.shutdown, ex) }
        res[4] = pcall(ex.shutdown, ex, { wait = false })
        called:set()
      end)
      while not spin:running() do thread.sleep(0.002) end
      spin:cancel { interrupt = true }
      print(called:wait(10))
      print(table.unpack(res))
      print(pcall(ex.submit, ex, print))
      ex:shutdown()
      print('end')
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, code)
    assert.are.equal('true\nInterpreterPoolManager\tfalse\t'
      .. 'cannot join current thread (a done-callback cannot wait for its own pool)\ttrue\n'
      .. 'false\tcannot schedule new futures after shutdown\nend\n', out)
  end)

  it('lets a done-callback in the manager wait for a later future of the pool: a worker completes it', function()
    -- unlike the process pool's, this manager only runs callbacks: a wait
    -- there is a plain wait (a spec that fails by timing out, never hangs)
    local ex <close> = futures.InterpreterPoolExecutor { max_workers = 1 }
    local spin = ex:submit(function() while true do end end)
    local later = ex:submit(function() return 'later' end)  -- queued behind spin
    local called, res = thread.Event(), nil
    spin:add_done_callback(function()
      res = { thread.current().name, pcall(later.result, later, T) }
      called:set()
    end)
    while not spin:running() do thread.sleep(0.002) end
    spin:cancel { interrupt = true }
    assert.is_true(called:wait(T))
    assert.are.same({ 'InterpreterPoolManager', true, 'later' }, res)
  end)

  it('reclaims the threads of pools dropped without shutdown', function()
    collectgarbage()
    local start = os_threads()
    for i = 1, 20 do
      local ex = futures.InterpreterPoolExecutor { max_workers = 3 }
      assert.are.equal(i, ex:submit(function(x) return x end, i):result(T))
    end
    collectgarbage()
    collectgarbage()
    local deadline = require('host.time').monotonic() + T
    while os_threads() > start and require('host.time').monotonic() < deadline do
      thread.sleep(0.01)
      collectgarbage()
    end
    assert.is_true(os_threads() <= start)
  end)
  it('interrupts a runaway initializer on shutdown{interrupt = true}; the pool breaks', function()
    local out, err, code = run_script [[
      local futures = require 'host.futures'
      local ex = futures.InterpreterPoolExecutor { max_workers = 2, initializer = function() while true do end end }
      local f = ex:submit(function() return 1 end)
      ex:shutdown { cancel_futures = true, interrupt = true }
      local ok, e = pcall(f.result, f, 10)
      print(ok, e:is('CancelledError') or e:is('BrokenInterpreterPool'))
      local g = futures.InterpreterPoolExecutor { max_workers = 1, initializer = function() while true do end end }
      g:shutdown { interrupt = true }
      print(select(2, pcall(g.submit, g, print)))
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, code)
    assert.matches('^false\ttrue\n', out)
    assert.matches('\nBrokenInterpreterPool: an interpreter initializer failed: [^\n]*interrupted!', out)
  end)

  it('interrupts a task whatever it catches with: xpcall handlers, __close, callbacks, hooks', function()
    local out, err, code = run_script [[
      local futures = require 'host.futures'
      local thread = require 'host.thread'
      local ex = futures.InterpreterPoolExecutor { max_workers = 4 }
      local tasks = {
        handler = function() xpcall(function() while true do end end, function() while true do end end) end,
        close = function()
          local x <close> = setmetatable({}, { __close = function() while true do end end })
          while true do end
        end,
        callback = function()
          local futures = require 'host.futures'
          while true do
            local f = futures.Future()
            f:add_done_callback(function() while true do end end)
            f:set_result(1)
          end
        end,
        sethook = function() debug.sethook(function() end, '', 1e8); while true do end end,
      }
      for _, name in ipairs { 'handler', 'close', 'callback', 'sethook' } do
        local f = ex:submit(tasks[name])
        while not f:running() do thread.sleep(0.002) end
        f:cancel { interrupt = true }
        local ok, e = pcall(f.result, f, 10)
        print(name, ok, tostring(e):match('interrupted!') or tostring(e))
      end
      print(ex:submit(function() return 'served' end):result(10))
      ex:shutdown()
    ]]
    assert.are.equal(0, code)
    assert.are.equal('handler\tfalse\tinterrupted!\nclose\tfalse\tinterrupted!\n'
      .. 'callback\tfalse\tinterrupted!\nsethook\tfalse\tinterrupted!\nserved\n', out)
  end)

  it("keeps a worker's xpcall yieldable and its message handler called", function()
    local ex <close> = assert(futures.InterpreterPoolExecutor { max_workers = 1 })
    assert.are.same({ n = 5, 'y', true, 'r', false, 'handled: boom' }, table.pack(ex:submit(function()
      local co = coroutine.wrap(function()
        return xpcall(function() coroutine.yield('y') return 'r' end, debug.traceback)
      end)
      local y = co()
      local ok, r = co()
      return y, ok, r, xpcall(error, function(m) return 'handled: ' .. m end, 'boom', 0)
    end):result(T)))
  end)

  it('interrupts the pools a task made when shutdown{interrupt = true} closes its worker', function()
    local out, err, code = run_script [[
      local futures = require 'host.futures'
      local thread = require 'host.thread'
      local ex = futures.InterpreterPoolExecutor { max_workers = 1 }
      local f = ex:submit(function()
        local futures = require 'host.futures'
        local inner = futures.InterpreterPoolExecutor { max_workers = 1 }
        return inner:submit(function() while true do end end):result()
      end)
      while not f:running() do thread.sleep(0.002) end
      print(f:cancel { interrupt = true })
      print(pcall(f.result, f, 10) == false)
      ex:shutdown { cancel_futures = true, interrupt = true }
      print('shut down')
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, code)
    assert.are.equal('true\ntrue\nshut down\n', out)
  end)

  it('ends only the thread that calls os.exit outside the task thread, blaming no task', function()
    local out, err, code = run_script [[
      local futures = require 'host.futures'
      local ex = futures.InterpreterPoolExecutor { max_workers = 1 }
      print(ex:submit(function()
        local thread = require 'host.thread'
        GO = thread.Event()
        LEFT = thread.Thread { target = function() GO:wait(10); os.exit(9) end, daemon = true }
        LEFT:start()
        return 'task 1 done'
      end):result(10))
      print(ex:submit(function()
        GO:set()
        local ok, e = LEFT:join(10)
        return 'task 2 done', ok, e.code, e.message
      end):result(10))
      ex:shutdown()
      print('the script goes on')
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, code)
    assert.are.equal('task 1 done\ntask 2 done\tfalse\t9\t'
      .. "os.exit(9) in a thread of an interpreter pool's worker ends only that thread\n"
      .. 'the script goes on\n', out)
  end)

  it("starts its workers with the creator's package.path and package.cpath", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute('mkdir ' .. sh.quote(dir)))
    local f = assert(io.open(dir .. '/misuse_pool_mod.lua', 'w'))
    f:write("return { answer = 42 }")
    f:close()
    local path, cpath = package.path, package.cpath
    package.path = dir .. '/?.lua;' .. path
    package.cpath = dir .. '/?.so;' .. cpath
    local ok, ex = pcall(futures.InterpreterPoolExecutor, { max_workers = 1 })
    package.path, package.cpath = path, cpath
    assert(ok, ex)
    local r = { ex:submit(function()
      return require('misuse_pool_mod').answer, package.path, package.cpath
    end):result(T) }
    ex:shutdown()
    os.remove(dir .. '/misuse_pool_mod.lua')
    os.remove(dir)
    assert.are.same({ 42, dir .. '/?.lua;' .. path, dir .. '/?.so;' .. cpath }, r)
  end)
end)

describe('the codec caches the pools rely on', function()
  local serialize = require 'host.serialize'

  it('finds a C function by where package.loaded holds it now, not where it was', function()
    local it = string.gmatch('a', 'a')  -- a C closure that no module holds
    local function roundtrip() return serialize.loads(serialize.dumps(it), { functions = true }) end
    assert.is_true(serialize.loads(serialize.dumps(math.abs), { functions = true }) == math.abs)
    assert.has_error(roundtrip, 'cannot serialize function at [1] (C function not found in package.loaded)')
    package.loaded.codec_cache_probe = { it = it }
    local ok, got = pcall(roundtrip)
    package.loaded.codec_cache_probe = nil
    assert(ok, got)
    assert.is_true(got == it)
    package.loaded.codec_cache_probe2 = { moved = it }
    ok, got = pcall(roundtrip)
    package.loaded.codec_cache_probe2 = nil
    assert(ok, got)
    assert.is_true(got == it)
    assert.has_error(roundtrip, 'cannot serialize function at [1] (C function not found in package.loaded)')
  end)

  it('decodes again, as new closures, functions with up to 254 upvalues', function()
    -- a function of n upvalues, over two levels of locals (200 at most each)
    local function make(n)
      local outer, inner, refs = {}, {}, {}
      for i = 1, n do
        table.insert(i <= n // 2 and outer or inner, ('local x%d = %d'):format(i, i))
        refs[i] = 'x' .. i
      end
      return assert(load(table.concat(outer, '\n') .. '\nreturn (function()\n' .. table.concat(inner, '\n')
        .. '\nreturn function() x1 = x1 + 1000 return ' .. table.concat(refs, ' + ') .. ' end end)()'))()
    end
    for _, n in ipairs { 1, 249, 250, 251, 254 } do
      local f = make(n)
      local sum = n * (n + 1) // 2 + 1000
      local a = serialize.loads(serialize.dumps(f), { functions = true })
      local b = serialize.loads(serialize.dumps(f), { functions = true })
      assert.are.same({ sum, sum + 1000, sum }, { a(), a(), b() }, 'n = ' .. n)
      assert.are.equal(n, debug.getinfo(b, 'u').nups)
    end
  end)

  -- Each pool with one worker, so one universe decodes every task.
  for _, kind in ipairs { 'InterpreterPoolExecutor', 'ProcessPoolExecutor' } do
    describe('a function sent again to a ' .. kind, function()
      local ex
      before_each(function() ex = assert(futures[kind] { max_workers = 1 }) end)
      after_each(function() ex:shutdown() end)

      it('gets fresh upvalues each time', function()
        local k, t = 0, { n = 0 }
        local function inc() k = k + 1; t.n = t.n + 1; return k, t.n end
        for _ = 1, 3 do assert.are.same({ 1, 1 }, { ex:submit(inc):result(T) }) end
      end)

      it('is a new closure each time, and one a task kept keeps its own upvalues', function()
        local function make(tag)
          local self
          self = function(ask)
            if ask then return tag end
            if KEPT_BY_TASK == nil then KEPT_BY_TASK = self end
            return KEPT_BY_TASK == self, KEPT_BY_TASK(true)
          end
          return self
        end
        assert.are.same({ true, 'a' }, { ex:submit(make('a')):result(T) })
        assert.are.same({ false, 'a' }, { ex:submit(make('b')):result(T) })
      end)

      it('keeps apart two functions of the same source, and recursion', function()
        local src = 'local n = ... return function() n = n + 1 return n end'
        local a, b = load(src)(10), load(src)(20)
        assert.are.equal(string.dump(a), string.dump(b))
        assert.are.same({ 11, 21, 11 }, { ex:submit(a):result(T), ex:submit(b):result(T), ex:submit(a):result(T) })
        local function sum(n) if n == 0 then return 0 end return n + sum(n - 1) end
        assert.are.equal(55, ex:submit(sum, 10):result(T))
        assert.are.equal(15, ex:submit(sum, 5):result(T))
      end)

      it('works past the cache bounds: 300 distinct functions, twice', function()
        local fns = {}
        for i = 1, 300 do fns[i] = load('return ' .. i .. ', ...') end
        for _ = 1, 2 do
          for i = 1, 300, 7 do assert.are.same({ i, 'x' }, { ex:submit(fns[i], 'x'):result(T) }) end
        end
        local big = load('local t = {' .. string.rep('1,', 40000) .. '} return #t')
        assert.are.equal(40000, ex:submit(big):result(T))
        assert.are.equal(40000, ex:submit(big):result(T))
      end)
    end)
  end
end)

-- The waits of a round trip (a worker's for work, the caller's on the
-- Future) spin before they sleep, and a wake-up is claimed by the waiter
-- that spins: these look for a lost or misdirected wake-up, each wait
-- with a timeout so that one fails instead of hanging.
describe('InterpreterPoolExecutor in a dump', function()
  it('names what its idle manager thread waits for', function()
    local ex <close> = assert(futures.InterpreterPoolExecutor { max_workers = 1 })
    assert.are.equal(1, ex:submit(function() return 1 end):result(T))
    local path = os.tmpname()
    local deadline = require('host.time').monotonic() + T
    local text
    repeat  -- the manager reports the completion, then waits again
      local f <close> = assert(io.open(path, 'w'))
      thread.dump_tracebacks(f)
      f:close()
      text = assert(io.open(path)):read('a')
      if text:find('manager: no task done', 1, true) then break end
      thread.sleep(0.002)
    until require('host.time').monotonic() > deadline
    os.remove(path)
    assert.matches('thread %d+ "InterpreterPoolManager" %(ident %d+%): waiting for ' ..
                   'host%.InterpreterPoolExecutor 0x%x+ %(manager: no task done%)', text)
  end)
end)

describe('InterpreterPoolExecutor round trips', function()
  it('answers every submit when several threads submit and wait at once', function()
    local ex <close> = assert(futures.InterpreterPoolExecutor { max_workers = 2 })
    local sums = {}
    local threads = {}
    for t = 1, 4 do
      threads[t] = thread.start(function()
        local s = 0
        for i = 1, 300 do s = s + ex:submit(function(x) return x end, i):result(T) end
        sums[t] = s
      end)
    end
    for t = 1, 4 do assert.is_true(threads[t]:join(60)) end
    assert.are.same({ 45150, 45150, 45150, 45150 }, sums)
  end)

  it('serves bursts queued while a worker waits, one worker and two', function()
    for workers = 1, 2 do
      local ex <close> = assert(futures.InterpreterPoolExecutor { max_workers = workers })
      for _ = 1, 50 do
        local fs = {}
        for i = 1, 5 do fs[i] = ex:submit(function(x) return x * 2 end, i) end
        for i = 5, 1, -1 do assert.are.equal(2 * i, fs[i]:result(T)) end
      end
    end
  end)

  it('times out a wait on a running task, then delivers its result', function()
    -- The task runs until the file exists (at most 30 s), which is made only
    -- after the wait timed out: no timing, so valgrind's pace cannot break it.
    local flag = os.tmpname()
    os.remove(flag)
    local ex <close> = assert(futures.InterpreterPoolExecutor { max_workers = 1 })
    local go = ex:submit(function(path)
      local time = require 'host.time'
      local t0 = time.monotonic()
      while not io.open(path) and time.monotonic() - t0 < 30 do time.sleep(0.001) end
      return 'late'
    end, flag)
    local ok, err = pcall(go.result, go, 0.001)
    assert.is_false(ok)
    assert.is_true(herror.is(err, 'TimeoutError'))
    assert(io.open(flag, 'w')):close()
    assert.are.equal('late', go:result(T))
    os.remove(flag)
  end)
end)

describe('InterpreterPoolExecutor when threads run out', function()
  it('returns nil, "cannot start thread: ...", errno, as thread.start does', function()
    -- Under an address-space limit thread stacks run out.
    local why = sh.cannot_limit_memory()
    if why then pending(why) return end
    local f = sh.tempfile(sh.EXHAUST_THREADS .. [[
      local futures = require 'host.futures'
      local ex, msg, code = futures.InterpreterPoolExecutor { max_workers = 2 }
      go:set()
      for _, t in ipairs(started) do assert(t:join(10)) end
      -- before: "pthread_create: ...", unlike every other thread start
      print(ex, msg:match('^(cannot start thread: ).'), math.type(code))
    ]])
    local out, err, code = sh.run('ulimit -v 400000 && exec ' .. sh.quote(sh.host) .. ' ' .. sh.quote(f), 30)
    os.remove(f)
    assert.are.equal('', err)
    assert.are.equal(0, code)
    assert.are.equal('nil\tcannot start thread: \tinteger\n', out)
  end)
end)

describe('InterpreterPoolExecutor short of memory', function()
  it('fails loudly at every address-space limit: no crash, no stuck task, no nil error', function()
    -- Each run limits its own address space (prlimit) to its size plus
    -- extra KiB, then makes a pool of 1 and runs one task. Somewhere in the
    -- range the thread, the worker's Lua state or the task runs out. Before:
    -- "PANIC: unprotected error in call to Lua API", a task never done (the
    -- worker ended silently), a result() raising nil, a constructor raising.
    local why = sh.cannot_limit_memory(true)
    if why then pending(why) return end
    local f = sh.tempfile([[
      local futures = require 'host.futures'
      local thread = require 'host.thread'
      if arg[2] == 'cached' then thread.start(function() end):join(5) end  -- the manager's OS thread, reused
    ]] .. sh.LIMIT_SELF .. [[
      local ex, msg = futures.InterpreterPoolExecutor { max_workers = 1 }
      if not ex then print('refused', msg) return end
      local ok, err = pcall(function() return ex:submit(function() return 42 end):result(10) end)
      print(ok and 'ok' or 'failed', tostring(err))
      ex:shutdown()
    ]])
    local allowed = {
      '^ok\t42\n$',
      '^refused\tcannot start thread: [^\n]+\n$',
      '^failed\tBrokenInterpreterPool: an interpreter pool worker could not open its Lua state: not enough memory\n$',
      '^failed\tthe future failed, but its error was lost %(not enough memory%)\n$',
      '^failed\t[^\n]*not enough memory[^\n]*\n$',
    }
    -- the worker's universe may run short again as it closes: said on
    -- stderr (glibc's per-thread malloc arenas, made or not as the threads
    -- contend, move the limit from run to run)
    local exit_said = {
      '^host: cannot run the exit handlers: not enough memory\n$',
      '^host: error in exit handler: [^\n]*not enough memory[^\n]*\n$',
    }
    local seen = {}
    for _, mode in ipairs { 'cached', 'fresh' } do
      for extra_kb = 4000, 24000, 1000 do
        local out, err, code = sh.run(sh.quote(sh.host) .. ' ' .. sh.quote(f) .. ' ' .. extra_kb .. ' ' .. mode, 30)
        local fits, said = false, err == ''
        for _, pattern in ipairs(allowed) do fits = fits or out:find(pattern) ~= nil end
        for _, pattern in ipairs(exit_said) do
          said = said or (err:find(pattern) ~= nil and out:find('^failed') ~= nil)
        end
        assert(fits and said and code == 0,
               ('%s %d KiB: exit %s, stdout %q, stderr %q'):format(mode, extra_kb, code, out, err))
        seen[out:match('^%a+')] = true
      end
    end
    assert.is_true(seen.ok)  -- the range reaches a limit where all of it fits
  end)

  it('never aborts while a worker encodes a result or an error short of memory', function()
    -- Each run limits its address space, then runs 40 tasks returning up to
    -- 40 KB on 2 workers. Somewhere in the range a worker's universe runs
    -- out as it encodes a task's result or error, outside the task's own
    -- call. Before: "PANIC: unprotected error in call to Lua API (not
    -- enough memory)", and the process aborted.
    local why = sh.cannot_limit_memory(true)
    if why then pending(why) return end
    local f = sh.tempfile(sh.LIMIT_SELF .. [[
      local futures = require 'host.futures'
      local ex = futures.InterpreterPoolExecutor { max_workers = 2 }
      if not ex then print('refused') return end
      local called, t = 0, {}
      local ok = pcall(function()
        for i = 1, 40 do
          t[i] = ex:submit(function(x) return string.rep('x', x * 1000) end, i)
          t[i]:add_done_callback(function() called = called + 1 end)
        end
        for i = 1, 40 do
          local ok, err = pcall(t[i].result, t[i], 10)
          assert(ok or not tostring(err):find('TimeoutError'), err)
        end
      end)
      ex:shutdown()
      local done = 0
      for i = 1, #t do if t[i]:done() then done = done + 1 end end
      print(ok and 'ok' or 'failed', done == #t and 'done' or 'not done')
    ]])
    for extra_kb = 25000, 31000, 500 do
      local out, err, code = sh.run(sh.quote(sh.host) .. ' ' .. sh.quote(f) .. ' ' .. extra_kb, 50)
      assert(not err:find('PANIC') and not err:find('Fatal'), ('%d KiB: %s'):format(extra_kb, err))
      assert((code == 0 and (out == 'ok\tdone\n' or out == 'refused\n' or out:find('^failed'))) or
             (code == 1 and err:find('memory')),
             ('%d KiB: exit %s, stdout %q, stderr %q'):format(extra_kb, code, out, err))
    end
  end)
end)
