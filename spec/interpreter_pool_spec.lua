-- spec/interpreter_pool_spec.lua: futures.InterpreterPoolExecutor, one
-- isolated universe per worker thread. Every wait has a timeout.
local futures = require 'host.futures'
local thread = require 'host.thread'
local herror = require 'host.error'

local T = 10

describe('InterpreterPoolExecutor', function()
  it('runs tasks in other universes and returns all their values', function()
    local ex <close> = assert(futures.InterpreterPoolExecutor { max_workers = 2 })
    local f = ex:submit(function(a, b) return a + b, nil, 'z' end, 1, 2)
    assert.are.same({ n = 3, 3, nil, 'z' }, table.pack(f:result(T)))
    local factor = 6
    assert.are.equal(42, ex:submit(function(x) return x * factor end, 7):result(T))
  end)

  it('isolates globals: a worker sees neither the caller\'s nor another worker\'s', function()
    local set = load('ISOLATION_PROBE = ...')  -- busted's own environment aside
    set('main')
    local ex <close> = assert(futures.InterpreterPoolExecutor { max_workers = 2 })
    local gate = thread.Barrier(2)
    -- two tasks that run at once, on the two workers
    local a = ex:submit(function()
      local before = ISOLATION_PROBE
      ISOLATION_PROBE = 'a'
      return before
    end)
    assert.is_nil(a:result(T))
    local seen = {}
    for i = 1, 4 do seen[i] = ex:submit(function() return ISOLATION_PROBE end):result(T) end
    for _, v in ipairs(seen) do assert.is_true(v == nil or v == 'a') end
    assert.are.equal('main', load('return ISOLATION_PROBE')())
    set(nil)
    gate:abort()
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
    assert.matches('in a worker', err, 1, true)
    assert.matches('stack traceback:', err, 1, true)
    local e = ex:submit(function() error(require('host.error').new('ValueError', 'typed')) end)
    ok, err = pcall(e.result, e, T)
    assert.is_true(herror.is(err, 'ValueError'))
  end)

  it('gives the clear errors for values that cannot cross', function()
    local ex <close> = assert(futures.InterpreterPoolExecutor { max_workers = 1 })
    assert.has_error(function() ex:submit(print, { io.stdout }) end,
      'cannot submit: cannot serialize userdata at [2][1] (FILE*)')
    local f = ex:submit(function() return io.stdout end)
    local ok, err = pcall(f.result, f, T)
    assert.is_false(ok)
    assert.matches('cannot send the result back: cannot serialize userdata at [1] (FILE*)', err, 1, true)
    assert.are.equal(1, ex:submit(function() return 1 end):result(T))
  end)

  it('breaks when the initializer fails', function()
    local ex = assert(futures.InterpreterPoolExecutor { max_workers = 1, initializer = function() error('no init') end })
    -- the worker may have failed already: then submit itself raises
    local ok, err = pcall(function() return ex:submit(function() return 1 end):result(T) end)
    assert.is_false(ok)
    assert.is_true(herror.is(err, 'BrokenInterpreterPool'))
    assert.matches('no init', err.message, 1, true)
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
    assert.has_error(function() futures.InterpreterPoolExecutor { max_workers = 0 } end)
    assert.has_error(function() futures.InterpreterPoolExecutor { initializer = 5 } end)
    assert.has_error(function() futures.InterpreterPoolExecutor { initializer = function() end, initargs = { io.stdout } } end)
  end)
end)
