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

  it('describes itself with tostring: size, maxsize and unfinished tasks', function()
    assert.matches('^host.Queue %(size=0, unfinished=0%): 0x', tostring(queue.Queue()))
    local q = queue.Queue(10)
    q:put(1); q:put(2)
    assert.matches('^host.Queue %(size=2/10, unfinished=2%): 0x', tostring(q))
    q:get(); q:task_done()
    assert.matches('^host.Queue %(size=1/10, unfinished=1%): 0x', tostring(q))
    q:shutdown()
    assert.matches('^host.Queue %(size=1/10, unfinished=1, shut down%): 0x', tostring(q))
    assert.matches('^host.LifoQueue %(size=0, unfinished=0%)', tostring(queue.LifoQueue()))
    assert.matches('^host.PriorityQueue %(size=0/3, unfinished=0%)', tostring(queue.PriorityQueue(3)))
    local s = queue.SimpleQueue()
    s:put(1)
    assert.matches('^host.SimpleQueue %(size=1%): 0x', tostring(s))
  end)

  describe('PriorityQueue with a Lua __lt', function()
    -- Items that compare through a Lua __lt, which records any non-item it sees.
    local function item_maker()
      local seen_bad = {}
      local mt = {}
      mt.__lt = function(a, b)
        if getmetatable(a) ~= mt or getmetatable(b) ~= mt then seen_bad[#seen_bad + 1] = true end
        if mt.fail == 'all' or (mt.fail and (a.v == mt.fail or b.v == mt.fail)) then
          error('no order', 0)
        end
        return a.v < b.v
      end
      return function(v) return setmetatable({ v = v }, mt) end, mt, seen_bad
    end

    it('gives 4 producers x 2 consumers every item exactly once under preemption', function()
      local saved = thread.getswitchinterval()
      thread.setswitchinterval { instructions = 100 }
      local ok, err = pcall(function()
        local item, _, seen_bad = item_maker()
        local q = queue.PriorityQueue()
        local producers, consumers = {}, {}
        local N = os.getenv 'HOST_UNDER_VALGRIND' and 500 or 5000  -- valgrind runs ~50x slower
        for p = 1, 4 do
          producers[p] = thread.start(function()
            for i = 1, N do assert(q:put(item((p - 1) * N + i), T)) end
          end)
        end
        local counts = {}
        for c = 1, 2 do
          consumers[c] = thread.start(function()
            for _ = 1, 2 * N do
              local it = q:get(5)
              if it == nil then return 'lost' end
              counts[it.v] = (counts[it.v] or 0) + 1
            end
            return 'done'
          end)
        end
        for p = 1, 4 do assert.is_true((producers[p]:join(6 * T))) end
        for c = 1, 2 do assert.are.same({ true, 'done' }, { consumers[c]:join(6 * T) }) end
        for v = 1, 4 * N do
          if counts[v] ~= 1 then error(('item %d got %s times'):format(v, tostring(counts[v]))) end
        end
        assert.are.equal(0, #seen_bad)
        assert.are.equal(0, q:qsize())
      end)
      thread.setswitchinterval(saved)
      assert(ok, err)
    end)

    it('stays intact when __lt raises in put or get: the error comes out, no item is lost', function()
      local item, mt = item_maker()
      local q = queue.PriorityQueue()
      for _, v in ipairs { 5, 3, 8, 1, 9, 2, 7, 4, 6, 10 } do q:put(item(v)) end
      mt.fail = 0
      local ok, err = pcall(q.put, q, item(0))
      assert.is_false(ok)
      assert.are.equal('no order', err)
      assert.are.equal(10, q:qsize())
      mt.fail = 'all'
      ok, err = pcall(q.get, q, 0)
      assert.is_false(ok)
      assert.are.equal('no order', err)
      assert.are.equal(10, q:qsize())
      mt.fail = nil
      for v = 1, 10 do assert.are.equal(v, q:get(0).v) end
      assert.is_true(q:empty())
      assert.is_true(q:put(item(1), 0))  -- not left busy
    end)

    it('refuses to be used from inside its own __lt', function()
      local q = queue.PriorityQueue()
      local mt = {}
      mt.__lt = function(a, b)
        q:put_nowait(setmetatable({ v = 0 }, mt))
        return a.v < b.v
      end
      q:put(setmetatable({ v = 1 }, mt))
      local ok, err = pcall(q.put, q, setmetatable({ v = 2 }, mt))
      assert.is_false(ok)
      assert.matches('cannot use a PriorityQueue from inside its own comparison', err, 1, true)
      assert.are.equal(1, q:qsize())
    end)
  end)

  describe('a finalized queue', function()
    local kinds = {
      { 'host.Queue', queue.Queue }, { 'host.Queue', queue.LifoQueue },
      { 'host.Queue', queue.PriorityQueue }, { 'host.SimpleQueue', queue.SimpleQueue },
    }

    it('raises "attempt to use a finalized ..." from every method, and says so in tostring', function()
      for _, k in ipairs(kinds) do
        local tname, q = k[1], k[2]()
        q:put(1)
        local mt = getmetatable(q)
        mt.__gc(q)
        mt.__gc(q)
        for name, f in pairs(mt.__index) do
          local ok, err = pcall(f, q, 1)
          assert.is_false(ok, tname .. ':' .. name)
          assert.matches('attempt to use a finalized ' .. tname, err, 1, true)
        end
        assert.matches('^' .. tname:gsub('%.', '%%.') .. ' %(finalized%): ', tostring(q))
      end
    end)

    it('wakes a getter parked on it, which raises', function()
      local q = queue.Queue()
      local started = thread.Event()
      local t = thread.start(function()
        started:set()
        return pcall(q.get, q, T)
      end)
      assert.is_true(started:wait(T))
      thread.sleep(0.02)  -- let it park (if not, it raises at once: same result)
      getmetatable(q).__gc(q)
      local joined, ok, err = t:join(T)
      assert.is_true(joined)
      assert.is_false(ok)
      assert.matches('attempt to use a finalized host.Queue', err, 1, true)
    end)

    it('does not crash a finalizer that uses one in a collection or at exit', function()
      local sh = require 'spec.support.sh'
      local script = sh.tempfile [[
        warn '@on'
        local queue = require 'host.queue'
        local function use_all(qs, tag)
          for _, q in ipairs(qs) do
            for _, m in ipairs { 'put', 'get', 'qsize', 'put_nowait', 'get_nowait' } do
              local ok, err = pcall(q[m], q, 1)
              if ok or not tostring(err):find('attempt to use a finalized', 1, true) then
                io.write(tag, ' ', m, ' ', tostring(err), '\n')
              end
            end
          end
          io.write(tag, ' ok\n')
        end
        local function make_all()
          local qs = { queue.Queue(), queue.LifoQueue(), queue.PriorityQueue(), queue.SimpleQueue() }
          for _, q in ipairs(qs) do q:put(2) end
          return qs
        end
        do
          local holder = {}
          setmetatable({}, { __gc = function() use_all(holder.qs, 'cycle') end })
          holder.qs = make_all()
        end
        collectgarbage(); collectgarbage()
        local later = {}
        setmetatable({}, { __gc = function() use_all(later.qs, 'exit') end })
        later.qs = make_all()
      ]]
      local out, err, code = sh.host_run(sh.quote(script))
      os.remove(script)
      assert.are.equal('cycle ok\nexit ok\n', out)
      assert.are.equal('', err)
      assert.are.equal(0, code)
    end)
  end)
end)

-- The herd: a put wakes one getter, a get one putter, counted in switches of
-- the GIL (thread.switches), not time. One wait queue for every waiter made
-- each item wake every consumer: about N switches per item for N of them.
describe('many waiters (no thundering herd)', function()
  it('a put wakes one getter', function()
    local N, K = 100, 10
    local q = queue.Queue()
    local ts = {}
    for i = 1, N do
      ts[i] = thread.start(function()
        for _ = 1, K do assert(q:get(T) ~= nil) end
      end)
    end
    thread.sleep(0)  -- they start (a getter that comes late costs less, not more)
    local before = thread.switches()
    for i = 1, N * K do
      q:put(i)
      if i % 4 == 0 then thread.sleep(0) end
    end
    for i = 1, N do assert(ts[i]:join(T)) end
    assert.is_true(q:empty())
    local switches = thread.switches() - before
    assert.is_true(switches < 4 * N * K, 'switches: ' .. switches)
  end)

  it('a get wakes one putter', function()
    local N, K = 100, 10
    local q = queue.Queue(1)
    local ts = {}
    for i = 1, N do
      ts[i] = thread.start(function()
        for k = 1, K do assert(q:put(k, T)) end
      end)
    end
    thread.sleep(0)
    local before = thread.switches()
    for i = 1, N * K do
      assert(q:get(T) ~= nil)
      if i % 4 == 0 then thread.sleep(0) end
    end
    for i = 1, N do assert(ts[i]:join(T)) end
    assert.is_true(q:empty())
    local switches = thread.switches() - before
    assert.is_true(switches < 4 * N * K, 'switches: ' .. switches)
  end)

  it('a putter woken alone whose __lt raises wakes the next putter', function()
    local boom = false  -- the next comparison raises, once
    local mt = { __lt = function(a, b)
      if boom then boom = false; error('boom') end
      return a.v < b.v
    end }
    local function item(v) return setmetatable({ v = v }, mt) end
    local q = queue.PriorityQueue(3)
    for v = 1, 3 do assert(q:put(item(v))) end
    local function waiting(n)  -- until n threads wait to put, says a dump
      for _ = 1, 10000 do
        local f = io.tmpfile()
        thread.dump_tracebacks(f)
        f:seek('set')
        local _, k = f:read('a'):gsub('%(put: full%)', '')
        f:close()
        if k >= n then return end
        thread.sleep(0.001)
      end
      error('the putters never came')
    end
    local first = thread.start(function() return pcall(q.put, q, item(4), T) end)
    waiting(1)
    -- a long timeout: one that ends the wait puts in the slot left
    local second = thread.start(function() return q:put(item(5), 6 * T) end)
    waiting(2)
    assert.are.equal(1, q:get(T).v)  -- wakes the first putter alone
    boom = true
    local ok1, ok, err = first:join(T)
    assert.is_true(ok1)
    assert.is_false(ok)
    assert.matches('boom', tostring(err))
    local ok2, put = second:join(T)
    if not ok2 then  -- never woken: wake it, so that it does not outlive the spec
      q:get(T)
      second:join(T)
    end
    assert.is_true(ok2, 'the second putter was never woken')
    assert.is_true(put)
    assert.are.equal(3, q:qsize())
  end)

  it('join waits for every task_done, on its own wait queue', function()
    local q = queue.Queue()
    local joined = queue.Queue()
    local joiners = {}
    for i = 1, 3 do
      joiners[i] = thread.start(function() joined:put(q:join(T)) end)
    end
    for i = 1, 5 do q:put(i) end
    local getter = thread.start(function()
      for _ = 1, 5 do
        q:get(T)
        thread.sleep(0)
        q:task_done()
      end
    end)
    for _ = 1, 3 do assert.is_true(joined:get(T)) end
    assert(getter:join(T))
    for i = 1, 3 do assert(joiners[i]:join(T)) end
  end)
end)
