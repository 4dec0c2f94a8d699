-- scripts/item41_trace.lua: Item 41's schedule as a picture. The book's gcd
-- over its four pairs (each number divided by 4, so a phase takes a
-- fraction of a second) runs on a ThreadPoolExecutor, then on a
-- ProcessPoolExecutor, both with 2 workers, while host.trace records the
-- run. The SVG shows why one pool gains nothing and the other does: the
-- thread pool's workers pass the one GIL back and forth (only one lane is
-- solid at any time), the process pool's two worker processes hold a GIL
-- each, both busy at once.
-- Picture: item41_trace.svg in $HOST_DEMO_OUT (default build/demo).
local here = debug.getinfo(1, 'S').source:match '^@(.*)[/\\]' or '.'
package.path = here .. '/lib/?.lua;' .. package.path
local measure = require 'measure'
local futures = require 'host.futures'
local trace = require 'host.trace'

local DIVISOR = measure.quick() and 40 or 4

local function gcd(pair)
  local a, b = pair[1], pair[2]
  for i = math.min(a, b), 1, -1 do
    if a % i == 0 and b % i == 0 then return i end
  end
end

local numbers = { { 1963309, 2265973 }, { 2030677, 3814172 },
                  { 1551645, 2229620 }, { 2039045, 2020802 } }
for _, p in ipairs(numbers) do p[1], p[2] = p[1] // DIVISOR, p[2] // DIVISOR end

-- Runs the pairs on `pool` and shuts it down (a process pool's workers
-- hand their events to the trace as they exit, so before trace.stop).
local function run(name, pool)
  trace.mark(name)
  local results = {}
  for r in pool:map(gcd, numbers, { timeout = 60 }) do results[#results + 1] = r end
  pool:shutdown()
  return #results
end

local path = os.getenv("I41_TRACE") or (measure.outdir() .. "/item41_trace.svg")
if trace.enabled() then trace.stop() end  -- run under --trace: this picture is ours
trace.start(path)
local n = run('ThreadPoolExecutor(2)', futures.ThreadPoolExecutor { max_workers = 2 })
n = n + run('ProcessPoolExecutor(2)', futures.ProcessPoolExecutor { max_workers = 2 })
trace.stop()
print(('Item 41 schedule: %d gcd tasks on a thread pool, then on a process pool.'):format(n))
print('  Thread pool: its two workers take turns on the one GIL, one solid lane at a time.')
print('  Process pool: each worker process has its own GIL, two lanes busy at once.')
print('Picture: ' .. path)
