-- bench/thread_bench.lua: host.thread and host.queue against CPython's
-- threading and queue, measured in the same run; the GIL hand-off against
-- a C futex ping-pong (bench/futex_pingpong.c). Goals from issue 17.
local bench = dofile 'bench/lib.lua'
local thread = require 'host.thread'
local queue = require 'host.queue'

-- The Python twins: each prints "name seconds-per-op of each run".
local python = [[
import threading, queue, time
def spawn(n):
    for _ in range(n):
        t = threading.Thread(target=lambda: None); t.start(); t.join()
lock = threading.Lock()
def plain(n):
    for _ in range(n):
        lock.acquire(); lock.release()
def with_lock(n):
    for _ in range(n):
        with lock: pass
class LockingCounter:
    def __init__(self): self.lock = threading.Lock(); self.count = 0
    def increment(self, offset):
        with self.lock: self.count += offset
def locked(n):
    c = LockingCounter()
    def worker():
        for _ in range(n // 5): c.increment(1)
    ts = [threading.Thread(target=worker) for _ in range(5)]
    for t in ts: t.start()
    for t in ts: t.join()
def qthroughput(n):
    q = queue.Queue()
    def consumer():
        for _ in range(n): q.get()
    t = threading.Thread(target=consumer); t.start()
    for i in range(n): q.put(i)
    t.join()
def notify_herd(n):
    c = threading.Condition(); st = {'ready': 0, 'tokens': 0}
    def waiter():
        with c:
            st['ready'] += 1; c.notify_all()
            while st['tokens'] == 0: assert c.wait(20)
            st['tokens'] -= 1
    ts = [threading.Thread(target=waiter) for _ in range(n)]
    for t in ts: t.start()
    with c:
        while st['ready'] < n: c.wait(20)
    t0 = time.perf_counter()
    for _ in range(n):
        with c:
            st['tokens'] += 1; c.notify()
        time.sleep(0)
    for t in ts: t.join()
    return (time.perf_counter() - t0) / n
def lock_herd(n, k):
    l = threading.Lock(); go = threading.Event()
    def worker():
        go.wait(20)
        for _ in range(k):
            assert l.acquire(timeout=20); time.sleep(0); l.release()
    ts = [threading.Thread(target=worker) for _ in range(n)]
    for t in ts: t.start()
    time.sleep(0.05)
    t0 = time.perf_counter(); go.set()
    for t in ts: t.join()
    return (time.perf_counter() - t0) / (n * k)
print("spawn", per_op(spawn, 2000))
print("notify_herd", ' '.join(repr(notify_herd(200)) for _ in range(5)))
print("lock_herd", ' '.join(repr(lock_herd(200, 20)) for _ in range(5)))
print("acquire_release", per_op(plain, 1000000))
print("with_lock", per_op(with_lock, 1000000))
print("locked_increment", per_op(locked, 500000, 3))
print("queue_message", per_op(qthroughput, 200000, 3))
]]

local per_op = bench.per_op

local function spawn(n)
  local noop = function() end
  for _ = 1, n do assert(thread.start(noop):join(10)) end
end

local lock = thread.Lock()
local function plain(n)
  for _ = 1, n do lock:acquire(); lock:release() end
end
local function with_close(n)
  for _ = 1, n do local _ <close> = lock:acquire() end
end

-- Item 38; with `each`, every thread has a counter and Lock of its own:
-- the same work and GIL switches, without contention.
local function locked(n, each)
  local counter = { count = 0, lock = thread.Lock() }
  local function increment(self, offset)
    local _ <close> = self.lock:acquire()
    self.count = self.count + offset
  end
  local ts = {}
  for i = 1, 5 do
    local c = each and { count = 0, lock = thread.Lock() } or counter
    ts[i] = thread.start(function() for _ = 1, n // 5 do increment(c, 1) end end)
  end
  for i = 1, 5 do assert(ts[i]:join(60)) end
  assert(each or counter.count == n // 5 * 5)
end

local function qthroughput(n)
  local q = queue.Queue()
  local t = thread.start(function() for _ = 1, n do q:get() end end)
  for i = 1, n do q:put(i) end
  assert(t:join(60))
end

-- GIL hand-off: two threads pass a turn through one Condition, n times
-- each way; every pass wakes the other thread, which must take the
-- condition's lock and the GIL before it runs. Per op = per hand-off.
local function handoff(n)
  local cv = thread.Condition(thread.Lock())
  local turn = 0
  local function play(me)
    cv:acquire()
    for _ = 1, n // 2 do
      while turn ~= me do assert(cv:wait(10), 'hand-off stuck') end
      turn = 1 - me
      cv:notify()
    end
    cv:release()
  end
  local other = thread.start(play, 1)
  play(0)
  assert(other:join(60))
end

-- Many waiters (the herd): a notify or a release that one waiter can use
-- must wake that one alone. Each returns seconds per notify (per
-- acquisition), timed from the first to the last waiter's end: starting
-- the 200 threads is not counted.
local clock = require('host.time').monotonic
local function notify_herd(n)
  local c = thread.Condition()
  local ready, tokens = 0, 0
  local ts = {}
  for i = 1, n do
    ts[i] = thread.start(function()
      c:acquire()
      ready = ready + 1
      c:notify_all()
      while tokens == 0 do assert(c:wait(20), 'notify herd stuck') end
      tokens = tokens - 1
      c:release()
    end)
  end
  c:acquire()
  while ready < n do assert(c:wait(20)) end
  c:release()
  local t0 = clock()
  for _ = 1, n do
    c:acquire(); tokens = tokens + 1; c:notify(); c:release()
    thread.sleep(0)
  end
  for i = 1, n do assert(ts[i]:join(60)) end
  return (clock() - t0) / n
end
local function lock_herd(n, k)
  local l, go = thread.Lock(), thread.Event()
  local ts = {}
  for i = 1, n do
    ts[i] = thread.start(function()
      assert(go:wait(20))
      for _ = 1, k do assert(l:acquire(20)); thread.sleep(0); l:release() end
    end)
  end
  thread.sleep(0.05)  -- they wait for go (a late one costs less, not more)
  local t0 = clock()
  go:set()
  for i = 1, n do assert(ts[i]:join(60)) end
  return (clock() - t0) / (n * k)
end
-- A sample of `runs` values of f(...).
local function runs_of(runs, f, ...)
  local t = {}
  for i = 1, runs do t[i] = f(...) end
  return bench.measure.summary(t)
end

-- The floor under Lock acquire + release: two empty C methods of a
-- userdata (bench/floor_udata.c, built by make bench).
local floor_dir = (os.getenv 'HOST_BENCH_PINGPONG' or 'build/bench/futex_pingpong'):match '^(.*)/' or '.'
local open_udata = package.loadlib(floor_dir .. '/floor_udata.so', 'luaopen_floor_udata')
local empty_pair = open_udata and (function()
  local obj = open_udata().new()
  return function(n) for _ = 1, n do obj:acquire(); obj:release() end end
end)()

-- The floor under the 5-thread locked increment: the same loop in one thread.
local function locked_alone(n)
  local counter = { count = 0, lock = thread.Lock() }
  local function increment(self, offset)
    local _ <close> = self.lock:acquire()
    self.count = self.count + offset
  end
  for _ = 1, n do increment(counter, 1) end
  assert(counter.count == n)
end

-- The C floors of spawn + join (bench/thread_floors.c).
local floors_bin = floor_dir .. '/thread_floors'
local c_floors = io.open(floors_bin) and bench.parse(bench.capture(floors_bin .. ' 2000 5')) or {}

local py = bench.python(python)
local CPY = 'CPython'
-- One figure against CPython, with the floor measured under it, if any.
local function figure(name, key, f, n, runs, unit, scale, goal, floor)
  local v = per_op(f, n, runs)
  bench.figure { name = name, value = v, unit = unit, scale = scale,
                 ref = py[key], ref_name = py[key] and CPY, goal = py[key] and goal, floor = floor }
  return v
end

local spawned = figure('thread spawn + join', 'spawn', spawn, 2000, 5, 'us', 1e6,
                       { op = '<=', value = 0.15, on = 'ratio' },
                       c_floors.cached_ns and { name = 'C cached thread + join', value = c_floors.cached_ns,
                                                scale = 1e-3 })
if c_floors.spawn_ns then
  bench.figure { name = 'thread spawn + join, against a new C thread', value = spawned, unit = 'us', scale = 1e6,
                 ref = c_floors.spawn_ns, ref_name = 'C pthread_create+join', ref_scale = 1e-3 }
end
figure('Lock acquire + release', 'acquire_release', plain, 1000000, 5, 'ns', 1e9,
       { op = '<=', value = 0.84, on = 'ratio' },
       empty_pair and { name = 'two empty C methods', value = per_op(empty_pair, 1000000) })
figure('Lock acquire with <close> (CPython: with lock)', 'with_lock', with_close, 1000000, 5, 'ns', 1e9)
figure('Item 38 locked increment, 5 threads', 'locked_increment', locked, 500000, 3, 'ns', 1e9,
       { op = '<=', value = 0.525, on = 'ratio' },
       { name = 'the same in 1 thread', value = per_op(locked_alone, 500000, 3) })
-- What contention adds: a thread preempted inside the Lock makes each
-- other thread take the GIL, find the Lock held and hand the GIL on.
local function switches_of(f, ...)
  local s0 = thread.switches()
  f(...)
  return thread.switches() - s0
end
figure('Item 38 increment, 5 threads with a Lock each', nil, function(n) locked(n, true) end,
       500000, 3, 'ns', 1e9)
print(('%52s GIL hand-offs in 10^6 increments: %d with one Lock, %d with a Lock each'):format('',
      switches_of(locked, 1000000), switches_of(locked, 1000000, true)))
figure('Queue message thread to thread', 'queue_message', qthroughput, 200000, 3, 'ns', 1e9,
       { op = '<=', value = 0.105, on = 'ratio' })

bench.figure { name = 'Condition notify, 200 waiters, per notify', value = runs_of(5, notify_herd, 200),
               unit = 'us', scale = 1e6, ref = py.notify_herd, ref_name = py.notify_herd and CPY }
bench.figure { name = 'Lock, 200 contenders, per acquisition', value = runs_of(5, lock_herd, 200, 20),
               unit = 'us', scale = 1e6, ref = py.lock_herd, ref_name = py.lock_herd and CPY }

-- The C floor: bench/futex_pingpong (built by make bench), one run of it
-- then one of ours, 5 rounds, so both see the same load.
local pingpong = os.getenv 'HOST_BENCH_PINGPONG' or 'build/bench/futex_pingpong'
local have_floor = io.open(pingpong) ~= nil
local floor, ours = {}, {}
for i = 1, 5 do
  if have_floor then floor[i] = bench.parse(bench.capture(pingpong .. ' 20000 1')).handoff_ns.median end
  ours[i] = bench.measure.time(handoff, 20000) / 20000
end
floor = have_floor and bench.measure.summary(floor) or nil
bench.figure { name = 'GIL hand-off, Condition ping-pong, per hand-off', value = bench.measure.summary(ours),
               unit = 'us', scale = 1e6, ref = floor, ref_name = floor and 'C futex ping-pong', ref_scale = 1e-3,
               goal = floor and { op = '<=', value = 1.5, on = 'ratio' } }
if not floor then print('  (no ' .. pingpong .. ': make bench builds it from bench/futex_pingpong.c)') end

-- Serial gcd with 4 idle (daemon) threads alive, against stock lua5.4:
-- both run bench/gcd_kernel.lua in a fresh process, alternating.
local idle = [[-e "local t = require 'host.thread' IDLE = t.Event()
  for i = 1, 4 do t.Thread{ target = function() IDLE:wait() end, daemon = true }:start() end"]]
local hs, ls = {}, {}
for i = 1, 7 do
  hs[i] = tonumber(bench.capture(bench.host .. ' ' .. idle .. ' bench/gcd_kernel.lua 3'))
  ls[i] = tonumber(bench.capture('lua5.4 bench/gcd_kernel.lua 3'))
end
bench.figure { name = 'serial gcd x3, 4 idle threads alive (CPU time)', value = bench.measure.summary(hs), unit = 's',
               ref = bench.measure.summary(ls), ref_name = 'lua5.4', goal = { op = '<=', value = 1.02, on = 'ratio' } }
