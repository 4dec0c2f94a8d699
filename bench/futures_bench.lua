-- bench/futures_bench.lua: host.futures' ThreadPoolExecutor against
-- CPython's, in the same run. Goals from issue 7.
local bench = dofile 'bench/lib.lua'
local futures = require 'host.futures'

local python = [[
import time
from concurrent.futures import ThreadPoolExecutor
ex = ThreadPoolExecutor(max_workers=2)
def tiny(n):
    for _ in range(n): ex.submit(int).result()
def mapped(n):
    for _ in ex.map(abs, range(n)): pass
def serial(_): list(map(gcd, numbers))
def pooled(_): list(ex.map(gcd, numbers))
print("submit_result", per_op(tiny, 20000))
print("map_item", per_op(mapped, 50000, 3))
print("gcd_serial", per_op(serial, 1, 3))
print("gcd_pool", per_op(pooled, 1, 3))
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

local gcd, numbers = bench.gcd, bench.numbers
local function serial() for _, p in ipairs(numbers) do gcd(p) end end
local function pooled() for _ in ex:map(gcd, numbers) do end end

local function figure(...) bench.figure(py, ...) end

figure('submit_result', 'ThreadPool(2) submit + result, tiny task', per_op(tiny, 20000), 'us', 1e6, '<= 4 us')
figure('map_item', 'ThreadPool(2) map, per item', per_op(mapped, 50000, 3), 'us', 1e6)
local s, p = per_op(serial, 1, 3), per_op(pooled, 1, 3)
bench.report('Item 41 gcd serial', s, 's')
bench.report('Item 41 gcd ThreadPool(2)', p, 's')
bench.ratio('Item 41 ThreadPool(2) speedup over serial', s, p, 'about 1.0 under the GIL')
if py.gcd_serial then
  bench.ratio('Item 41 ThreadPool(2) speedup (python3)', py.gcd_serial, py.gcd_pool)
  bench.ratio('Item 41 gcd ThreadPool(2) host/python3', p, py.gcd_pool)
end
ex:shutdown()
