-- bench/pools_bench.lua: the parallel pools. ProcessPoolExecutor against
-- CPython's (fork), InterpreterPoolExecutor against host's ThreadPool, and
-- Item 41's speedup with 2 workers, in the same run. Goals from issues 8,
-- 9 and 17.
local bench = dofile 'bench/lib.lua'
local measure = bench.measure
local futures = require 'host.futures'

local python = [[
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
def noop(): pass
if __name__ == '__main__':
    ctx = multiprocessing.get_context('fork')
    ex = ProcessPoolExecutor(max_workers=2, mp_context=ctx)
    ex.submit(noop).result()
    def tiny(n):
        for _ in range(n): ex.submit(noop).result()
    def mapped(n):
        for _ in ex.map(abs, range(n), chunksize=100): pass
    print("submit_result", per_op(tiny, 2000, 3))
    print("map_chunk100", per_op(mapped, 100000, 3))
    ex.shutdown()
    def cycle(n):
        for _ in range(n):
            p = ProcessPoolExecutor(max_workers=2, mp_context=ctx); p.submit(noop).result(); p.shutdown()
    print("start_one_shutdown", per_op(cycle, 10, 3))
]]

local py = bench.python(python)
local per_op = bench.per_op
local noop = function() end

local function tiny_on(ex)
  ex:submit(noop):result()
  return function(n) for _ = 1, n do ex:submit(noop):result() end end
end
local items = {}
for i = 1, 100000 do items[i] = -i end
local function mapped_on(ex)
  return function(n) for _ in ex:map(math.abs, table.move(items, 1, n, 1, {}), { chunksize = 100 }) do end end
end

local tp = assert(futures.ThreadPoolExecutor { max_workers = 2 })
local pp = assert(futures.ProcessPoolExecutor { max_workers = 2 })
local ip = assert(futures.InterpreterPoolExecutor { max_workers = 2 })
local tp_tiny, pp_tiny, ip_tiny = per_op(tiny_on(tp), 2000, 3), per_op(tiny_on(pp), 2000, 3), per_op(tiny_on(ip), 2000, 3)
-- The C floors under the process pool (bench/process_floor.c, built by
-- make bench): its ratio to CPython is the lowest ratio host could reach.
local floor_bin = os.getenv 'HOST_BENCH_PROCESS_FLOOR' or 'build/bench/process_floor'
local have_floor = io.open(floor_bin) ~= nil
-- A sample of seconds from the floor program's "name v1 v2 ..." (in us).
local function floor_run(args, name)
  local s = bench.parse(bench.capture(floor_bin .. ' ' .. args))[name]
  return measure.scale(s, 1e-6)
end
if not have_floor then print('  (no ' .. floor_bin .. ': make bench builds it from bench/process_floor.c)') end
bench.figure { name = 'ProcessPool(2) submit + result, tiny task', value = pp_tiny, unit = 'us', scale = 1e6,
               ref = py.submit_result, ref_name = 'CPython',
               goal = py.submit_result and { op = '<=', value = 0.12, on = 'ratio' },
               floor = have_floor and { name = 'C round trip between 2 processes',
                                        value = floor_run('roundtrip 20000 3', 'roundtrip_us') } or nil }
bench.figure { name = 'InterpreterPool(2) submit + result, tiny task', value = ip_tiny, unit = 'us', scale = 1e6,
               ref = tp_tiny, ref_name = "host's ThreadPool(2)", goal = { op = '<=', value = 1.2, on = 'ratio' } }
bench.figure { name = 'ProcessPool(2) map chunksize 100, per task', value = per_op(mapped_on(pp), 100000, 3),
               unit = 'us', scale = 1e6, ref = py.map_chunk100, ref_name = 'CPython',
               goal = py.map_chunk100 and { op = '<=', value = 0.3, on = 'ratio' } }
bench.figure { name = 'InterpreterPool(2) map chunksize 100, per task', value = per_op(mapped_on(ip), 100000, 3),
               unit = 'us', scale = 1e6 }
tp:shutdown()
pp:shutdown()
ip:shutdown()

local function cycle(make) return function(n)
  for _ = 1, n do local ex = assert(make()) ex:submit(noop):result() ex:shutdown() end
end end
-- host's cycles alternate with the C floor's: a parent of host's resident
-- size forking a child that answers one message, then reaping it (fork and
-- exit cost grow with the pages the parent has). The pool forks its workers
-- on demand, as CPython does: one task, one fork (CPython, forking, starts
-- max_workers at the first submit).
local function resident_kb()
  local f = assert(io.open '/proc/self/status')
  local kb = f:read('a'):match 'VmRSS:%s*(%d+) kB'
  f:close()
  return assert(tonumber(kb), 'no VmRSS in /proc/self/status')
end
local pp_cycle = cycle(function() return futures.ProcessPoolExecutor { max_workers = 2 } end)
local host_cycles, floor_cycles, rss = {}, {}, resident_kb()
for i = 1, 3 do
  host_cycles[i] = measure.time(pp_cycle, 10) / 10
  if have_floor then floor_cycles[i] = floor_run(('cycle %d 10 1 1'):format(rss), 'cycle_us').median end
end
bench.figure { name = 'ProcessPool(2) start + 1 task + shutdown', unit = 'ms', scale = 1e3,
               value = measure.summary(host_cycles), ref = py.start_one_shutdown, ref_name = 'CPython',
               goal = py.start_one_shutdown and { op = '<=', value = 0.1, on = 'ratio' },
               floor = have_floor and { name = ('C fork 1 + 1 message + reap, %.0f MB RSS'):format(rss / 1024),
                                        value = measure.summary(floor_cycles) } or nil }
-- What fork costs grows with what a page fault costs here (a few tenths
-- of a microsecond on most machines, tens on some virtual ones): the C
-- figures that explain the start + shutdown figure across machines.
if have_floor then
  bench.figure { name = 'C page fault, first write to a fresh page', unit = 'us', scale = 1e6,
                 value = floor_run('fault 2000 3', 'fault_us') }
  bench.figure { name = 'C page fault, first write in a forked child (copy-on-write)', unit = 'us', scale = 1e6,
                 value = floor_run('fault 2000 3', 'cow_fault_us') }
end
bench.figure { name = 'InterpreterPool(1) start + 1 task + shutdown', unit = 'us', scale = 1e6,
               value = per_op(cycle(function() return futures.InterpreterPoolExecutor { max_workers = 1 } end), 20, 3) }

-- Item 41 on 2 workers: the book's gcd, its pairs repeated 24 times (pool
-- start included); speedup = serial time over pool time, round by round.
local gcd, work = bench.gcd, {}
for _ = 1, 24 do
  for _, p in ipairs(bench.numbers) do work[#work + 1] = p end
end
local function serial() for _, p in ipairs(work) do gcd(p) end end
local function on(make) return function()
  local ex <close> = assert(make())
  for _ in ex:map(gcd, work) do end
end end
local run_pp = on(function() return futures.ProcessPoolExecutor { max_workers = 2 } end)
local run_ip = on(function() return futures.InterpreterPoolExecutor { max_workers = 2 } end)
local sp, si = {}, {}
for i = 1, 3 do
  local s = measure.time(serial)
  sp[i] = s / measure.time(run_pp)
  si[i] = s / measure.time(run_ip)
end
bench.figure { name = 'Item 41 x24 ProcessPool(2) speedup', value = measure.summary(sp), unit = 'x',
               goal = { op = '>=', value = 1.8, on = 'value' } }
bench.figure { name = 'Item 41 x24 InterpreterPool(2) speedup', value = measure.summary(si), unit = 'x',
               goal = { op = '>=', value = 1.8, on = 'value' } }
