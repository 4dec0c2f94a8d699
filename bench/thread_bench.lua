-- bench/thread_bench.lua: host.thread and host.queue against CPython's
-- threading and queue, measured in the same run. Goals from issue 4.
local bench = dofile 'bench/lib.lua'
local thread = require 'host.thread'
local queue = require 'host.queue'
local time = require 'host.time'

-- The Python twins: each prints "name seconds-per-op".
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
print("spawn", per_op(spawn, 2000))
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

local function locked(n)
  local counter = { count = 0, lock = thread.Lock() }
  local function increment(self, offset)
    local _ <close> = self.lock:acquire()
    self.count = self.count + offset
  end
  local ts = {}
  for i = 1, 5 do
    ts[i] = thread.start(function() for _ = 1, n // 5 do increment(counter, 1) end end)
  end
  for i = 1, 5 do assert(ts[i]:join(60)) end
  assert(counter.count == n // 5 * 5)
end

local function qthroughput(n)
  local q = queue.Queue()
  local t = thread.start(function() for _ = 1, n do q:get() end end)
  for i = 1, n do q:put(i) end
  assert(t:join(60))
end

-- GIL hand-off: two CPU-bound threads switching every ~1000 instructions,
-- against the same work done by one thread; the difference per switch.
local function handoff()
  local function work() local x = 0 for i = 1, 2e6 do x = x + i end return x end
  thread.setswitchinterval { instructions = 1000 }
  local t0 = time.monotonic()
  work() work()
  local alone = time.monotonic() - t0
  local s0 = thread.switches()
  t0 = time.monotonic()
  local a, b = thread.start(work), thread.start(work)
  a:join(60) b:join(60)
  local both = time.monotonic() - t0
  local switches = thread.switches() - s0
  thread.setswitchinterval(0.005)
  return math.max(both - alone, 0) / math.max(switches, 1), switches
end

local py = bench.python(python)
local function figure(...) bench.figure(py, ...) end

figure('spawn', 'thread spawn + join', per_op(spawn, 2000), 'us', 1e6, '<= 25 us')
figure('acquire_release', 'Lock acquire + release', per_op(plain, 1000000), 'ns', 1e9, '<= 80 ns')
figure('with_lock', 'Lock acquire with <close>', per_op(with_close, 1000000), 'ns', 1e9, '<= 120 ns')
figure('locked_increment', 'Item 38 locked increment, 5 threads', per_op(locked, 500000, 3), 'ns', 1e9,
       '<= 200 ns')
local q = per_op(qthroughput, 200000, 3)
figure('queue_message', 'Queue message thread to thread', q, 'ns', 1e9)
bench.report('Queue messages per second', 1 / q, 'msg/s')
if py.queue_message then bench.report('Queue messages per second (python3)', 1 / py.queue_message, 'msg/s') end
local cost, switches = handoff()
bench.report('GIL hand-off (' .. switches .. ' switches)', cost * 1e6, 'us')

-- Serial gcd with 4 idle (daemon) threads alive, against stock lua5.4:
-- both run bench/gcd_kernel.lua in a fresh process.
local idle = [[-e "local t = require 'host.thread' IDLE = t.Event()
  for i = 1, 4 do t.Thread{ target = function() IDLE:wait() end, daemon = true }:start() end"]]
local hs, ls = {}, {}
for i = 1, 7 do
  hs[i] = tonumber(bench.capture(bench.host .. ' ' .. idle .. ' bench/gcd_kernel.lua 3'))
  ls[i] = tonumber(bench.capture('lua5.4 bench/gcd_kernel.lua 3'))
end
table.sort(hs)
table.sort(ls)
bench.report('serial gcd x3, 4 idle threads alive (host)', hs[4], 's')
bench.report('serial gcd x3 (lua5.4)', ls[4], 's')
bench.ratio('serial gcd with idle threads host/lua5.4', hs[4], ls[4], '<= 1.03')
