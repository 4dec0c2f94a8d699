-- spec/thread_pool_spec.lua: futures.ThreadPoolExecutor at its boundaries:
-- use after __gc, many initargs, error objects that cannot be printed, and
-- pools the program drops. (Its everyday behaviour is in futures_spec.)
-- Every wait has a timeout.
local futures = require 'host.futures'
local thread = require 'host.thread'
local herror = require 'host.error'
local sh = require 'spec.support.sh'

local T = 10

-- Runs a Lua script in a host subprocess (at most 20 s); returns out, err, code.
local function run_script(text)
  local f = sh.tempfile(text)
  local out, err, code = sh.host_run(sh.quote(f), 20)
  os.remove(f)
  return out, err, code
end

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

  it('breaks, and keeps its worker, when gathering the initargs raises', function()
    local args = setmetatable({}, { __len = function() error('no length') end })
    local ex = futures.ThreadPoolExecutor { max_workers = 1, initargs = args, initializer = print }
    local ok, err = pcall(function() return ex:submit(print):result(T) end)
    assert.is_false(ok)
    assert.is_true(herror.is(err, 'BrokenThreadPool'))
    assert.matches('no length', err.message, 1, true)
    ex:shutdown()  -- returns: the worker ended, it did not die
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
end)
