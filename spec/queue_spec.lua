-- spec/queue_spec.lua: host.queue's Queue, LifoQueue, PriorityQueue and
-- SimpleQueue, between threads of one universe.
local queue = require 'host.queue'
local thread = require 'host.thread'
local herror = require 'host.error'

local T = 10

describe('host.queue', function()
  it('is first in, first out', function()
    local q = queue.Queue()
    for i = 1, 5 do assert.is_true(q:put(i)) end
    assert.are.equal(5, q:qsize())
    for i = 1, 5 do assert.are.equal(i, q:get(T)) end
    assert.is_true(q:empty())
  end)

  it('LifoQueue is last in, first out; PriorityQueue smallest first', function()
    local l = queue.LifoQueue()
    for i = 1, 3 do l:put(i) end
    assert.are.same({ 3, 2, 1 }, { l:get(T), l:get(T), l:get(T) })
    local p = queue.PriorityQueue()
    for _, v in ipairs { 5, 1, 4, 2, 3, 9, 0 } do p:put(v) end
    local out = {}
    while not p:empty() do out[#out + 1] = p:get(T) end
    assert.are.same({ 0, 1, 2, 3, 4, 5, 9 }, out)
  end)

  it('answers nil, "timeout" / "empty" / "full" instead of blocking forever', function()
    local q = queue.Queue(1)
    assert.are.same({ nil, 'timeout' }, { q:get(0.02) })
    assert.are.same({ nil, 'empty' }, { q:get_nowait() })
    q:put('a')
    assert.is_true(q:full())
    assert.are.same({ nil, 'full' }, { q:put_nowait('b') })
    assert.are.same({ nil, 'timeout' }, { q:put('b', 0.02) })
    assert.are.equal('a', q:get_nowait())
  end)

  it('hands items from one thread to another, blocking on full and empty', function()
    local q = queue.Queue(2)
    local t = thread.start(function()
      local sum = 0
      for _ = 1, 1000 do sum = sum + assert(q:get(T)) end
      return sum
    end)
    for i = 1, 1000 do assert(q:put(i, T)) end
    assert.are.same({ true, 500500 }, { t:join(T) })
  end)

  it('joins once every item is marked done', function()
    local q = queue.Queue()
    for i = 1, 3 do q:put(i) end
    assert.are.same({ nil, 'timeout' }, { q:join(0.02) })
    local t = thread.start(function()
      for _ = 1, 3 do q:get(T); q:task_done() end
    end)
    assert.is_true(q:join(T))
    t:join(T)
    assert.has_error(function() q:task_done() end, 'task_done() called too many times')
  end)

  it('shuts down: puts raise, gets drain then raise, waiters wake', function()
    local q = queue.Queue()
    q:put(1)
    local t = thread.start(function()
      q:get(T)
      return pcall(q.get, q, T)
    end)
    thread.sleep(0.05)
    q:shutdown()
    local _, ok, err = t:join(T)
    assert.is_false(ok)
    assert.is_true(herror.is(err, 'ShutDown'))
    assert.has_error(function() q:put(2) end)
    local q2 = queue.Queue()
    q2:put(1); q2:put(2)
    q2:shutdown(true)
    assert.are.equal(0, q2:qsize())
    assert.is_true(q2:join(0))
    assert.has_error(function() q2:get(0) end)
  end)

  it('SimpleQueue puts and gets, without task tracking', function()
    local s = queue.SimpleQueue()
    s:put('x')
    assert.are.equal(1, s:qsize())
    assert.are.equal('x', s:get(T))
    assert.is_nil(s.task_done)
  end)

  it('refuses a nil item and bad arguments', function()
    local q = queue.Queue()
    assert.has_error(function() q:put(nil) end,
      "bad argument #1 to 'put' (non-nil value expected, got nil)")  -- self is not counted
    assert.has_error(function() q:put(1, -1) end)
    assert.has_error(function() queue.Queue('big') end)
    assert.has_error(function() q.get(nil) end)
    local p = queue.PriorityQueue()
    p:put(1)
    assert.has_error(function() p:put({}) end)
  end)

  it('describes itself with tostring', function()
    assert.matches('^host.Queue %(0 items%)', tostring(queue.Queue()))
  end)
end)
