-- spec/sync_spec.lua: Lock, RLock, Condition, Semaphore, BoundedSemaphore,
-- Event and Barrier of host.thread, with Python's semantics.
local thread = require 'host.thread'
local herror = require 'host.error'

local T = 10

-- Starts f in a thread and returns a function that joins it (with a timeout)
-- and returns what f returned, failing the spec if f raised.
local function spawn(f, ...)
  local t = thread.start(f, ...)
  return function()
    local r = table.pack(t:join(T))
    assert(r[1], r[2])
    return table.unpack(r, 2, r.n)
  end
end

describe('Lock', function()
  it('acquires, reports and releases', function()
    local lk = thread.Lock()
    assert.is_false(lk:locked())
    assert.are.equal(lk, lk:acquire(T))
    assert.is_true(lk:locked())
    assert.is_false(lk:acquire(0))
    assert.is_false(lk:acquire(false))
    lk:release()
    assert.is_false(lk:locked())
    assert.matches('^host.Lock: ', tostring(lk))
  end)

  it('times out, or not, while another thread holds it', function()
    local lk = thread.Lock()
    lk:acquire(T)
    local join = spawn(function()
      local a = lk:acquire(0.05)        -- passes: still held
      local b = lk:acquire(T)           -- does not pass: released below
      return a, b == lk
    end)
    thread.sleep(0.2)
    lk:release()
    local timed_out, got = join()
    assert.is_false(timed_out)
    assert.is_true(got)
  end)

  it('is released at scope exit by <close>, on error too', function()
    local lk = thread.Lock()
    do
      local _ <close> = lk:acquire(T)
      assert.is_true(lk:locked())
    end
    assert.is_false(lk:locked())
    pcall(function()
      local _ <close> = lk:acquire(T)
      error('oops')
    end)
    assert.is_false(lk:locked())
  end)

  it('stays held after an error without <close>, as in Python', function()
    local lk = thread.Lock()
    pcall(function() lk:acquire(T); error('oops') end)
    assert.is_true(lk:locked())
    lk:release()
  end)

  it('refuses to release an unheld lock', function()
    assert.has_error(function() thread.Lock():release() end, 'cannot release un-acquired lock')
  end)

  it('can be released by another thread, as in Python', function()
    local lk = thread.Lock()
    lk:acquire(T)
    spawn(function() lk:release() end)()
    assert.is_false(lk:locked())
  end)

  it('rejects bad arguments', function()
    assert.has_error(function() thread.Lock().acquire(nil) end,
      "bad argument #1 to 'acquire' (host.Lock expected, got nil)")
    assert.has_error(function() thread.Lock():acquire(-1) end)
    assert.has_error(function() thread.Lock():acquire('x') end)
  end)

  it('makes 5 threads x 10^4 locked increments exact', function()
    local lk, counter = thread.Lock(), { n = 0 }
    local joins = {}
    for i = 1, 5 do
      joins[i] = spawn(function()
        for _ = 1, 10000 do
          local _ <close> = lk:acquire(T)
          local v = counter.n
          counter.n = v + 1
        end
      end)
    end
    for i = 1, 5 do joins[i]() end
    assert.are.equal(50000, counter.n)
  end)
end)

describe('RLock', function()
  it('is reentrant for its owner and counts', function()
    local rl = thread.RLock()
    assert.are.equal(rl, rl:acquire(T))
    assert.are.equal(rl, rl:acquire(T))
    rl:release()
    assert.is_true(rl:locked())
    rl:release()
    assert.is_false(rl:locked())
  end)

  it('refuses a release by a thread that does not own it', function()
    local rl = thread.RLock()
    rl:acquire(T)
    local ok, err = spawn(function() return pcall(rl.release, rl) end)()
    assert.is_false(ok)
    assert.matches('cannot release un-acquired lock', err, 1, true)
    assert.is_false(spawn(function() return rl:acquire(0.01) end)())
    rl:release()
    assert.has_error(function() rl:release() end, 'cannot release un-acquired lock')
  end)
end)

describe('Condition', function()
  it('wakes a waiter on notify and holds the lock again after wait', function()
    local cond = thread.Condition()
    local items = {}
    local join = spawn(function()
      local _ <close> = cond:acquire(T)
      while #items == 0 do
        if not cond:wait(T) then return 'timeout' end
      end
      return table.remove(items)
    end)
    thread.sleep(0.05)
    do
      local _ <close> = cond:acquire(T)
      items[1] = 'x'
      cond:notify()
    end
    assert.are.equal('x', join())
  end)

  it('returns false when wait times out, with the lock held again', function()
    local lk = thread.Lock()
    local cond = thread.Condition(lk)
    cond:acquire(T)
    assert.is_false(cond:wait(0.02))
    assert.is_true(lk:locked())
    cond:release()
    assert.is_false(lk:locked())
  end)

  it('notifies n waiters, then all', function()
    local cond = thread.Condition()
    local woken = { n = 0 }
    local joins = {}
    for i = 1, 4 do
      joins[i] = spawn(function()
        local _ <close> = cond:acquire(T)
        woken.ready = (woken.ready or 0) + 1
        if cond:wait(T) then woken.n = woken.n + 1 end
      end)
    end
    while (woken.ready or 0) < 4 do thread.sleep(0.01) end
    do
      local _ <close> = cond:acquire(T)
      cond:notify(2)
    end
    local deadline = require('host.time').monotonic() + T
    while woken.n < 2 and require('host.time').monotonic() < deadline do thread.sleep(0.01) end
    thread.sleep(0.05)  -- a third wake-up, if notify(2) woke too many, shows here
    assert.are.equal(2, woken.n)
    do
      local _ <close> = cond:acquire(T)
      cond:notify_all()
    end
    for i = 1, 4 do joins[i]() end
    assert.are.equal(4, woken.n)
  end)

  it('waits for a predicate with wait_for', function()
    local cond = thread.Condition()
    local state = { ready = false }
    local join = spawn(function()
      local _ <close> = cond:acquire(T)
      return cond:wait_for(function() return state.ready end, T)
    end)
    thread.sleep(0.02)
    do
      local _ <close> = cond:acquire(T)
      state.ready = 'yes'
      cond:notify_all()
    end
    assert.are.equal('yes', join())
    cond:acquire(T)
    assert.is_false(cond:wait_for(function() return false end, 0.02))
    cond:release()
  end)

  it('restores an RLock acquired several times', function()
    local rl = thread.RLock()
    local cond = thread.Condition(rl)
    rl:acquire(T)
    rl:acquire(T)
    assert.is_false(cond:wait(0.01))
    rl:release()
    rl:release()
    assert.is_false(rl:locked())
  end)

  it('refuses wait and notify without the lock, and a bad lock', function()
    local cond = thread.Condition(thread.Lock())
    assert.has_error(function() cond:wait(0.01) end, 'cannot wait on un-acquired lock')
    assert.has_error(function() cond:notify() end, 'cannot notify on un-acquired lock')
    assert.has_error(function() thread.Condition({}) end)
  end)
end)

describe('Semaphore', function()
  it('counts down and blocks at zero', function()
    local s = thread.Semaphore(2)
    assert.are.equal(s, s:acquire(T))
    assert.are.equal(s, s:acquire(T))
    assert.is_false(s:acquire(0.02))
    s:release()
    assert.are.equal(1, s:value())
    s:release(2)
    assert.are.equal(3, s:value())
  end)

  it('lets a waiter through on release from another thread', function()
    local s = thread.Semaphore(0)
    local join = spawn(function() return s:acquire(T) == s end)
    thread.sleep(0.02)
    s:release()
    assert.is_true(join())
  end)

  it('works with <close>', function()
    local s = thread.Semaphore(1)
    do local _ <close> = s:acquire(T) assert.are.equal(0, s:value()) end
    assert.are.equal(1, s:value())
  end)

  it('BoundedSemaphore refuses to be released above its start', function()
    local b = thread.BoundedSemaphore(1)
    b:acquire(T)
    b:release()
    assert.has_error(function() b:release() end, 'semaphore released too many times')
    assert.has_error(function() thread.Semaphore(-1) end)
  end)
end)

describe('Event', function()
  it('is set, cleared and waited for', function()
    local e = thread.Event()
    assert.is_false(e:is_set())
    assert.is_false(e:wait(0.01))
    local join = spawn(function() return e:wait(T) end)
    e:set()
    assert.is_true(join())
    assert.is_true(e:wait(0))
    e:clear()
    assert.is_false(e:is_set())
  end)
end)

describe('Barrier', function()
  it('releases all parties together, with distinct indexes, and runs the action once', function()
    local ran = 0
    local b = thread.Barrier(3, function() ran = ran + 1 end)
    assert.are.equal(3, b.parties)
    local joins = {}
    for i = 1, 2 do joins[i] = spawn(function() return b:wait(T) end) end
    local mine = b:wait(T)
    local seen = { [mine] = true }
    for i = 1, 2 do seen[joins[i]()] = true end
    assert.are.same({ [0] = true, [1] = true, [2] = true }, seen)
    assert.are.equal(1, ran)
    assert.are.equal(0, b.n_waiting)
  end)

  it('releases all parties without an action', function()
    local b = thread.Barrier(2)
    local join = spawn(function() return b:wait(T) end)
    local mine = b:wait(T)
    assert.are.equal(1, mine + join())
    assert.is_false(b.broken)
  end)

  it('breaks on a timeout, for every waiter', function()
    local b = thread.Barrier(3)
    local join = spawn(function() return pcall(b.wait, b, T) end)
    local ok, err = pcall(b.wait, b, 0.05)
    assert.is_false(ok)
    assert.is_true(herror.is(err, 'BrokenBarrierError'))
    local ok2, err2 = join()
    assert.is_false(ok2)
    assert.is_true(herror.is(err2, 'BrokenBarrierError'))
    assert.is_true(b.broken)
    b:reset()
    assert.is_false(b.broken)
  end)

  it('breaks on abort, and on an error in the action', function()
    local b = thread.Barrier(2)
    local join = spawn(function() return pcall(b.wait, b, T) end)
    thread.sleep(0.02)
    b:abort()
    assert.is_false((join()))
    local b2 = thread.Barrier(1, function() error('action failed') end)
    assert.has_error(function() b2:wait(T) end)
    assert.is_true(b2.broken)
    assert.has_error(function() thread.Barrier(0) end)
  end)
end)
