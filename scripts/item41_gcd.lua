-- scripts/item41_gcd.lua: Effective Python, Item 41, "Consider
-- concurrent.futures for true parallelism", in Lua on host.
--
-- The book's brute-force gcd over four big pairs, run serially, on a
-- ThreadPoolExecutor (no gain: one GIL), on a ProcessPoolExecutor (real
-- gain: each worker process has its own interpreter) and on host's
-- InterpreterPoolExecutor (real gain without fork: one universe per worker
-- thread). Then CPython runs the book's own code in the same run.
local futures = require 'host.futures'
local time = require 'host.time'

local function gcd(pair)
  local a, b = pair[1], pair[2]
  local low = math.min(a, b)
  for i = low, 1, -1 do
    if a % i == 0 and b % i == 0 then
      return i
    end
  end
end

local numbers = { { 1963309, 2265973 }, { 2030677, 3814172 },
                  { 1551645, 2229620 }, { 2039045, 2020802 } }
local expected = { 1, 1, 5, 1 }  -- gcd of each pair

-- Lua runs this gcd ~6x faster than CPython: repeat the pairs until the
-- serial run takes about a second, so the pools have work worth timing.
local function serial_seconds(list)
  local start = time.monotonic()
  for _, pair in ipairs(list) do gcd(pair) end
  return time.monotonic() - start
end
local repeats = math.max(1, math.floor(1.0 / serial_seconds(numbers) + 0.5))
local work = {}
for _ = 1, repeats do
  for _, pair in ipairs(numbers) do work[#work + 1] = pair end
end
print(('Item 41: gcd of the book\'s 4 pairs, repeated %d times (%d pairs) so that the\n' ..
       'serial run takes about a second (Lua is ~6x faster than CPython here).\n')
      :format(repeats, #work))

-- Checks a result list against the expected gcds.
local function check(results)
  for i, r in ipairs(results) do
    assert(r == expected[(i - 1) % 4 + 1], ('wrong gcd for pair %d: %s'):format(i, r))
  end
  assert(#results == #work, 'results missing')
end

local function run_serial()
  local results = {}
  for i, pair in ipairs(work) do results[i] = gcd(pair) end
  return results
end

-- Runs the work on a pool made by `make`, as the book does with pool.map.
local function run_pool(make)
  return function()
    local pool <close> = assert(make())
    local results = {}
    for i, r in pool:map(gcd, work) do results[i] = r end
    return results
  end
end

local runs = {
  { 'serial', run_serial },
  { 'ThreadPoolExecutor(max_workers=2)', run_pool(function() return futures.ThreadPoolExecutor { max_workers = 2 } end) },
  { 'ProcessPoolExecutor(max_workers=2)', run_pool(function() return futures.ProcessPoolExecutor { max_workers = 2 } end) },
  { 'InterpreterPoolExecutor(max_workers=2)', run_pool(function() return futures.InterpreterPoolExecutor { max_workers = 2 } end) },
}
local took = {}
for _, run in ipairs(runs) do
  local start = time.monotonic()
  check(run[2]())
  took[run[1]] = time.monotonic() - start
  print(('%-40s Took %.3f seconds'):format(run[1], took[run[1]]))
end
local serial = took.serial
print()
for i = 2, #runs do
  print(('%-40s speedup %.2fx'):format(runs[i][1], serial / took[runs[i][1]]))
end

-- CPython runs the book's code on the same repeated work, in this run.
local python = ([[
from concurrent.futures import ThreadPoolExecutor, ProcessPoolExecutor
from time import time
import multiprocessing
def gcd(pair):
    a, b = pair
    low = min(a, b)
    for i in range(low, 0, -1):
        if a %% i == 0 and b %% i == 0:
            return i
numbers = [(1963309, 2265973), (2030677, 3814172), (1551645, 2229620), (2039045, 2020802)] * %d
if __name__ == '__main__':
    start = time(); results = list(map(gcd, numbers)); print('serial', time() - start)
    start = time(); pool = ThreadPoolExecutor(max_workers=2); results = list(pool.map(gcd, numbers)); print('thread', time() - start)
    ctx = multiprocessing.get_context('fork')
    start = time(); pool = ProcessPoolExecutor(max_workers=2, mp_context=ctx); results = list(pool.map(gcd, numbers)); print('process', time() - start)
]]):format(repeats)
local ok_py = os.execute('command -v python3 >/dev/null 2>&1')
if not ok_py then
  print('\n(python3 not found: no CPython comparison)')
  return
end
local file = os.tmpname()
local f = assert(io.open(file, 'w'))
f:write(python)
f:close()
local p = assert(io.popen('python3 ' .. file))
local py = {}
for name, seconds in p:read('a'):gmatch('(%a+) (%S+)') do py[name] = tonumber(seconds) end
p:close()
os.remove(file)
print('\nCPython 3 running the book\'s code on the same work, in this run:')
local rows = { { 'serial', 'serial' }, { 'thread', 'ThreadPoolExecutor(max_workers=2)' },
               { 'process', 'ProcessPoolExecutor(max_workers=2)' } }
for _, row in ipairs(rows) do
  local seconds = py[row[1]]
  if seconds then
    print(('%-40s Took %.3f seconds (host is %.1fx faster)'):format(row[2], seconds, seconds / took[row[2]]))
  end
end
if py.serial and py.thread and py.process then
  print(('CPython speedups: threads %.2fx, processes %.2fx'):format(py.serial / py.thread, py.serial / py.process))
end
