-- bench/futures_bench.lua: host.futures' ThreadPoolExecutor against
-- CPython's, in the same run. Goals from issue 17.
local bench = dofile 'bench/lib.lua'
local measure = bench.measure
local futures = require 'host.futures'

local python = [[
from concurrent.futures import ThreadPoolExecutor
ex = ThreadPoolExecutor(max_workers=2)
def tiny(n):
    for _ in range(n): ex.submit(int).result()
def mapped(n):
    for _ in ex.map(abs, range(n)): pass
numbers = numbers * 3
def serial(_): list(map(gcd, numbers))
def pooled(_): list(ex.map(gcd, numbers))
print("submit_result", per_op(tiny, 20000))
print("map_item", per_op(mapped, 50000, 3))
ts, tp = [], []
for _ in range(5):
    t0 = time.perf_counter(); serial(1); t1 = time.perf_counter(); pooled(1); t2 = time.perf_counter()
    ts.append(t1 - t0); tp.append(t2 - t1)
print("gcd_speedup", *(a / b for a, b in zip(ts, tp)))
ex.shutdown()
]]

local py = bench.python(python)
local per_op = bench.per_op

local ex = futures.ThreadPoolExecutor { max_workers = 2 }
local function tiny(n)
  local noop = function() end
  for _ = 1, n do ex:submit(noop):result() end
end
local function mapped(n)
  local items = {}
  for i = 1, n do items[i] = -i end
  for _ in ex:map(math.abs, items) do end
end

-- Item 41 on threads: the book's 4 pairs, 3 times over.
local gcd, numbers = bench.gcd, {}
for _ = 1, 3 do table.move(bench.numbers, 1, 4, #numbers + 1, numbers) end
local function serial() for _, p in ipairs(numbers) do gcd(p) end end
local function pooled() for _ in ex:map(gcd, numbers) do end end

-- The floor: a C round trip of two futex hand-offs (bench/thread_floors.c).
local floors_bin = ((os.getenv 'HOST_BENCH_PINGPONG' or 'build/bench/futex_pingpong'):match '^(.*)/' or '.')
                   .. '/thread_floors'
local c_floors = io.open(floors_bin) and bench.parse(bench.capture(floors_bin .. ' 20000 5')) or {}

local submitted = per_op(tiny, 20000)
bench.figure { name = 'ThreadPool(2) submit + result, tiny task', value = submitted, unit = 'us', scale = 1e6,
               ref = py.submit_result, ref_name = 'CPython',
               goal = py.submit_result and { op = '<=', value = 0.25, on = 'ratio' },
               floor = c_floors.roundtrip_ns and { name = 'C futex round trip, both sides sleeping',
                                                   value = c_floors.roundtrip_ns, scale = 1e-3 } }
bench.figure { name = 'ThreadPool(2) map, per item', value = per_op(mapped, 50000, 3), unit = 'us', scale = 1e6,
               ref = py.map_item, ref_name = 'CPython' }
-- Item 41 on threads: serial time over pool time, round by round.
local speedups = {}
for i = 1, 5 do
  local s = measure.time(serial)
  speedups[i] = s / measure.time(pooled)
end
bench.figure { name = 'Item 41 ThreadPool(2) speedup (one GIL: none)', value = measure.summary(speedups),
               unit = 'x', ref = py.gcd_speedup, ref_name = 'CPython' }
ex:shutdown()
