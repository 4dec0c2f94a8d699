-- bench/pools_bench.lua: the parallel pools. ProcessPoolExecutor against
-- CPython's (fork), InterpreterPoolExecutor against the process pool, and
-- Item 41's speedup with 2 workers, in the same run. Goals from issues 8, 9.
local bench = dofile 'bench/lib.lua'
local futures = require 'host.futures'
local time = require 'host.time'

local python = [[
import time, multiprocessing
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

local function figure(...) bench.figure(py, ...) end

local pp = assert(futures.ProcessPoolExecutor { max_workers = 2 })
local ip = assert(futures.InterpreterPoolExecutor { max_workers = 2 })
local pp_tiny, ip_tiny = per_op(tiny_on(pp), 2000, 3), per_op(tiny_on(ip), 2000, 3)
figure('submit_result', 'ProcessPool(2) submit + result, tiny task', pp_tiny, 'us', 1e6, '<= 20 us')
bench.report('InterpreterPool(2) submit + result, tiny task', ip_tiny * 1e6, 'us')
bench.ratio('InterpreterPool/ProcessPool submit + result', ip_tiny, pp_tiny, 'InterpreterPool <= 10 us')
figure('map_chunk100', 'ProcessPool(2) map chunksize 100, per task', per_op(mapped_on(pp), 100000, 3),
       'us', 1e6, '<= 0.5 us')
bench.report('InterpreterPool(2) map chunksize 100, per task', per_op(mapped_on(ip), 100000, 3) * 1e6, 'us')
pp:shutdown()
ip:shutdown()

local function cycle(make) return function(n)
  for _ = 1, n do local ex = assert(make()) ex:submit(noop):result() ex:shutdown() end
end end
figure('start_one_shutdown', 'ProcessPool(2) start + 1 task + shutdown',
       per_op(cycle(function() return futures.ProcessPoolExecutor { max_workers = 2 } end), 10, 3),
       'ms', 1e3, '<= 2 ms')
local start = per_op(cycle(function() return futures.InterpreterPoolExecutor { max_workers = 1 } end), 20, 3)
bench.report('InterpreterPool(1) start + 1 task + shutdown (one universe)', start * 1e6, 'us')
print('  (LuaLanes, REFERENCE.md: 111 us per lane without stdlib, 395 us with all)')

-- Item 41 on 2 workers: the book's gcd, its pairs repeated 24 times (pool start included).
local gcd, work = bench.gcd, {}
for _ = 1, 24 do
  for _, p in ipairs(bench.numbers) do work[#work + 1] = p end
end
local function serial() for _, p in ipairs(work) do gcd(p) end end
local function on(make) return function()
  local ex <close> = assert(make())
  for _ in ex:map(gcd, work) do end
end end
local s = bench.median(serial, 3)
local p2 = bench.median(on(function() return futures.ProcessPoolExecutor { max_workers = 2 } end), 3)
local i2 = bench.median(on(function() return futures.InterpreterPoolExecutor { max_workers = 2 } end), 3)
bench.report('Item 41 x24 serial', s, 's')
bench.report('Item 41 x24 ProcessPool(2)', p2, 's')
bench.report('Item 41 x24 InterpreterPool(2)', i2, 's')
bench.ratio('Item 41 ProcessPool(2) speedup', s, p2, '>= 1.8x')
bench.ratio('Item 41 InterpreterPool(2) speedup', s, i2, '>= 1.8x')
