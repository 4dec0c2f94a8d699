-- spec/futures_spec.lua: host.futures (Future, wait, as_completed) and the
-- ThreadPoolExecutor, after the behaviours CPython's test_concurrent_futures
-- checks. Every wait has a timeout.
local futures = require 'host.futures'
local thread = require 'host.thread'
local herror = require 'host.error'
local sh = require 'spec.support.sh'

local T = 10

describe('Future', function()
  it('cancels while pending, not while running or done', function()
    local f = futures.Future()
    assert.is_true(f:cancel())
    assert.is_true(f:cancelled())
    assert.is_true(f:done())
    assert.is_true(f:cancel())  -- cancelling twice still answers true
    local r = futures.Future()
    assert.is_true(r:set_running_or_notify_cancel())
    assert.is_true(r:running())
    assert.is_false(r:cancel())
    r:set_result(1)
    assert.is_false(r:cancel())
    assert.is_false(r:cancelled())
  end)

  it('raises CancelledError and TimeoutError objects from result()', function()
    local f = futures.Future()
    local ok, err = pcall(f.result, f, 0.01)
    assert.is_false(ok)
    assert.is_true(herror.is(err, 'TimeoutError'))
    f:cancel()
    ok, err = pcall(f.result, f, 0.01)
    assert.is_true(herror.is(err, 'CancelledError'))
    ok, err = pcall(f.exception, f, 0)
    assert.is_true(herror.is(err, 'CancelledError'))
  end)

  it('gives every value back, nils included, and exception() is nil', function()
    local f = futures.Future()
    f:set_result(nil, 2, nil)
    assert.are.same({ n = 3, nil, 2, nil }, table.pack(f:result(0)))
    assert.is_nil(f:exception(0))
    assert.has_error(function() f:set_result(3) end)
  end)

  it('runs callbacks in the order added, and at once when already done', function()
    local f = futures.Future()
    local order = {}
    f:add_done_callback(function(x) order[#order + 1] = 'a' assert(x == f) end)
    f:add_done_callback(function() order[#order + 1] = 'b' end)
    assert.are.same({}, order)
    f:set_result(true)
    assert.are.same({ 'a', 'b' }, order)
    f:add_done_callback(function() order[#order + 1] = 'c' end)
    assert.are.same({ 'a', 'b', 'c' }, order)
    local c = futures.Future()
    c:add_done_callback(function(x) order[#order + 1] = x:cancelled() end)
    c:cancel()
    assert.are.equal(true, order[4])
  end)

  it('reports an error in a callback on stderr and runs the next one', function()
    local f = sh.tempfile [[
      local futures = require 'host.futures'
      local fut = futures.Future()
      fut:add_done_callback(function() error('callback broke') end)
      fut:add_done_callback(function() print('second ran') end)
      fut:set_result(1)
      print(fut:result(0))
    ]]
    local out, err, code = sh.host_run(sh.quote(f))
    os.remove(f)
    assert.are.equal(0, code)
    assert.are.equal('second ran\n1\n', out)
    assert.matches('exception calling callback', err, 1, true)
    assert.matches('callback broke', err, 1, true)
  end)

  it('rejects what is not a future', function()
    assert.has_error(function() futures.Future().result(nil) end)
    assert.has_error(function() futures.wait({ 1 }) end)
    assert.has_error(function() futures.wait({}, { return_when = 'SOMETIMES' }) end)
    assert.has_error(function() futures.Future():add_done_callback(1) end)
  end)
end)

describe('futures.wait and as_completed', function()
  it('waits in each mode and returns done, not_done', function()
    local a, b, c = futures.Future(), futures.Future(), futures.Future()
    a:set_result(1)
    local done, not_done = futures.wait({ a, b, c }, { timeout = 0.02, return_when = futures.FIRST_COMPLETED })
    assert.are.same({ a }, done)
    assert.are.same({ b, c }, not_done)
    done, not_done = futures.wait({ a, b, c }, { timeout = 0.02 })
    assert.are.equal(1, #done)
    assert.are.equal(2, #not_done)
    b:set_exception('boom')
    done = futures.wait({ b, c }, { timeout = T, return_when = futures.FIRST_EXCEPTION })
    assert.are.same({ b }, done)
    local t = thread.start(function() thread.sleep(0.02) c:set_result(3) end)
    done, not_done = futures.wait({ a, b, c }, { timeout = T, return_when = futures.ALL_COMPLETED })
    assert.are.equal(3, #done)
    assert.are.equal(0, #not_done)
    t:join(T)
  end)

  it('yields futures as they complete and raises TimeoutError when time is up', function()
    local a, b, c = futures.Future(), futures.Future(), futures.Future()
    b:set_result('b')
    local t = thread.start(function() thread.sleep(0.02) a:set_result('a') end)
    local seen = {}
    local ok, err = pcall(function()
      for f in futures.as_completed({ a, b, c, b }, 0.5) do seen[#seen + 1] = f:result(0) end
    end)
    assert.is_false(ok)
    assert.is_true(herror.is(err, 'TimeoutError'))
    assert.are.same({ 'b', 'a' }, seen)
    t:join(T)
  end)
end)

describe('ThreadPoolExecutor', function()
  it('runs tasks on worker threads and returns all their values', function()
    local ex <close> = futures.ThreadPoolExecutor { max_workers = 2 }
    local f = ex:submit(function(a, b) return a + b, nil, thread.current().name end, 1, 2)
    local sum, none, name = f:result(T)
    assert.are.equal(3, sum)
    assert.is_nil(none)
    assert.matches('^ThreadPoolExecutor%-%d+_0$', name)
    assert.are.equal(0, select('#', ex:submit(function() end):result(T)))
  end)

  it('names workers with thread_name_prefix and runs the initializer once per worker', function()
    local inits = {}
    local ex <close> = futures.ThreadPoolExecutor {
      max_workers = 1, thread_name_prefix = 'crunch',
      initializer = function(tag) inits[#inits + 1] = tag end, initargs = { 'ready' } }
    assert.are.equal('crunch_0', ex:submit(function() return thread.current().name end):result(T))
    ex:submit(function() end):result(T)
    assert.are.same({ 'ready' }, inits)
  end)

  it('breaks when an initializer fails: futures and later submits raise BrokenThreadPool', function()
    local ex = futures.ThreadPoolExecutor { max_workers = 1, initializer = function() error('no init') end }
    local f = ex:submit(function() return 1 end)
    local ok, err = pcall(f.result, f, T)
    assert.is_false(ok)
    assert.is_true(herror.is(err, 'BrokenThreadPool'))
    assert.matches('no init', err.message, 1, true)
    ok, err = pcall(ex.submit, ex, print)
    assert.is_true(herror.is(err, 'BrokenThreadPool'))
    ex:shutdown()
  end)

  it('re-raises a task error with the task traceback', function()
    local ex <close> = futures.ThreadPoolExecutor { max_workers = 1 }
    local function failing_task() error('task broke') end
    local f = ex:submit(failing_task)
    local ok, err = pcall(f.result, f, T)
    assert.is_false(ok)
    assert.matches('task broke', err, 1, true)
    assert.matches('stack traceback:\n[^\n]*\n%s*spec/futures_spec.lua:%d+', err)
    assert.are.equal(err, f:exception(T))
  end)

  it('cancels a pending task but not a running one', function()
    local ex <close> = futures.ThreadPoolExecutor { max_workers = 1 }
    local gate, started = thread.Event(), thread.Event()
    local running = ex:submit(function() started:set() gate:wait(T) return 'ran' end)
    local pending = ex:submit(function() return 'never' end)
    assert.is_true(started:wait(T))
    assert.is_false(running:cancel())
    assert.is_true(pending:cancel())
    gate:set()
    assert.are.equal('ran', running:result(T))
    assert.is_true(herror.is(select(2, pcall(pending.result, pending, T)), 'CancelledError'))
  end)

  it('shuts down with cancel_futures, and refuses submits afterwards', function()
    local ex = futures.ThreadPoolExecutor { max_workers = 1 }
    local gate, started = thread.Event(), thread.Event()
    local first = ex:submit(function() started:set() gate:wait(T) return 1 end)
    local queued = {}
    for i = 1, 5 do queued[i] = ex:submit(function() return i end) end
    assert.is_true(started:wait(T))
    local t = thread.start(function() ex:shutdown { wait = true, cancel_futures = true } end)
    thread.sleep(0.05)
    gate:set()
    assert.is_true(t:join(T))
    assert.are.equal(1, first:result(T))
    for i = 1, 5 do assert.is_true(queued[i]:cancelled()) end
    assert.has_error(function() ex:submit(print) end, 'cannot schedule new futures after shutdown')
  end)

  it('finishes queued work on a plain shutdown', function()
    local ex = futures.ThreadPoolExecutor { max_workers = 2 }
    local fs = {}
    for i = 1, 20 do fs[i] = ex:submit(function() thread.sleep(0.001) return i end) end
    ex:shutdown()
    for i = 1, 20 do assert.are.equal(i, fs[i]:result(0)) end
  end)

  it('maps in order, over uneven inputs, with chunks', function()
    local ex <close> = futures.ThreadPoolExecutor { max_workers = 3 }
    local got = {}
    for i, v in ex:map(function(a, b) return a * b end, { 1, 2, 3, 4 }, { 10, 20, 30 }) do got[i] = v end
    assert.are.same({ 10, 40, 90 }, got)
    got = {}
    for i, v in ex:map(function(x) return -x end, { 1, 2, 3, 4, 5 }, { chunksize = 2 }) do got[i] = v end
    assert.are.same({ -1, -2, -3, -4, -5 }, got)
    got = {}  -- chunks whose items return different numbers of values, nils too
    for i, a, b in ex:map(function(x) if x % 2 == 0 then return nil, x end return x end,
                          { 1, 2, 3, 4, 5 }, { chunksize = 2 }) do
      got[i] = { a, b }
    end
    assert.are.same({ { 1 }, { nil, 2 }, { 3 }, { nil, 4 }, { 5 } }, got)
    local n = 0
    for i, a, b in ex:map(function() return nil, 'x' end, { 1, 2 }) do
      n = n + 1
      assert.is_nil(a)
      assert.are.equal('x', b)
    end
    assert.are.equal(2, n)
  end)

  it('counts the map timeout from the call and raises a task error at its turn', function()
    local ex <close> = futures.ThreadPoolExecutor { max_workers = 2 }
    local ok, err = pcall(function()
      for _ in ex:map(function(s) thread.sleep(s) end, { 0.01, 0.3, 0.01 }, { timeout = 0.1 }) do end
    end)
    assert.is_false(ok)
    assert.is_true(herror.is(err, 'TimeoutError'))
    local seen = {}
    ok, err = pcall(function()
      for i in ex:map(function(x) if x == 2 then error('item two') end return x end, { 1, 2, 3 }) do
        seen[#seen + 1] = i
      end
    end)
    assert.is_false(ok)
    assert.matches('item two', err, 1, true)
    assert.are.same({ 1 }, seen)
  end)

  it('cancels what has not started when the loop is left early', function()
    local ex = futures.ThreadPoolExecutor { max_workers = 1 }
    local ran = 0
    for i in ex:map(function() ran = ran + 1 thread.sleep(0.01) end, { 1, 2, 3, 4, 5, 6, 7, 8 }) do
      if i == 2 then break end
    end
    ex:shutdown()
    assert.is_true(ran < 8)
  end)

  it('lets a task submit to its own pool', function()
    local ex <close> = futures.ThreadPoolExecutor { max_workers = 2 }
    local outer = ex:submit(function()
      return ex:submit(function() return 'inner' end):result(T)
    end)
    assert.are.equal('inner', outer:result(T))
  end)

  it('refuses a task waiting for its own pool to shut down', function()
    local ex <close> = futures.ThreadPoolExecutor { max_workers = 1 }
    local f = ex:submit(function() return pcall(ex.shutdown, ex) end)
    local ok, err = f:result(T)
    assert.is_false(ok)
    assert.matches('cannot join current thread', err, 1, true)
  end)

  it('waits a thousand futures from several threads', function()
    local ex <close> = futures.ThreadPoolExecutor { max_workers = 4 }
    local fs = {}
    for i = 1, 1000 do fs[i] = ex:submit(function() return i end) end
    local waiters = {}
    for w = 1, 3 do
      waiters[w] = thread.start(function()
        local done = futures.wait(fs, { timeout = T })
        local sum = 0
        for _, f in ipairs(done) do sum = sum + f:result(0) end
        return #done, sum
      end)
    end
    local n = 0
    for _ in futures.as_completed(fs, T) do n = n + 1 end
    assert.are.equal(1000, n)
    for w = 1, 3 do assert.are.same({ true, 1000, 500500 }, { waiters[w]:join(T) }) end
  end)

  it('starts workers lazily and reuses idle ones', function()
    local ex <close> = futures.ThreadPoolExecutor { max_workers = 4 }
    local before = thread.count()
    for _ = 1, 20 do ex:submit(function() end):result(T) end
    assert.are.equal(before + 1, thread.count())
  end)

  it('rejects bad arguments', function()
    assert.has_error(function() futures.ThreadPoolExecutor { max_workers = 0 } end)
    assert.has_error(function() futures.ThreadPoolExecutor { initializer = 1 } end)
    assert.has_error(function() futures.ThreadPoolExecutor(5) end)
    local ex <close> = futures.ThreadPoolExecutor()
    assert.has_error(function() ex:submit() end)
    assert.has_error(function() ex:map(print) end)
    assert.has_error(function() ex:map(print, 1) end)
    assert.has_error(function() ex:map(print, { 1 }, { chunksize = 0 }) end)
    assert.matches('^host.ThreadPoolExecutor', tostring(ex))
  end)

  it('runs queued work at exit, and idle workers do not hold exit up', function()
    local f = sh.tempfile [[
      local futures = require 'host.futures'
      local ex = futures.ThreadPoolExecutor { max_workers = 1 }
      ex:submit(function() require('host.thread').sleep(0.1) print('queued work ran') end)
      local idle = futures.ThreadPoolExecutor { max_workers = 2 }
      idle:submit(function() end):result(5)
      print('main done')
    ]]
    local out, _, code = sh.host_run(sh.quote(f), 20)
    os.remove(f)
    assert.are.equal(0, code)
    assert.are.equal('main done\nqueued work ran\n', out)
  end)
end)
