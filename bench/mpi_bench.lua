-- bench/mpi_bench.lua: host.mpi's MPIPoolExecutor in world mode (issue 20)
-- against host's ProcessPoolExecutor, in the same run: per-task round trip
-- (submit + result, one at a time), pipelined per-task cost (submit them
-- all, then wait), and Item 41's speedup over 2 worker ranks (with the
-- process pool's, measured in rank 0 on the same rounds, beside it), and
-- how long a worker stands idle between two of those tasks (what sending
-- each worker its next task ahead cuts; a figure the machine's load moves
-- far less than the speedup). The MPI
-- figures come from a world of 3 ranks (`mpiexec -n 3 host -l host.mpi.run
-- bench/mpi_bench.lua --world`) whose rank 0 prints its samples; this
-- process measures the process pool and records every figure. Skipped,
-- with a line saying why, where mpiexec or the module is missing.
local bench = dofile 'bench/lib.lua'
local measure = bench.measure
local futures = require 'host.futures'

local TINY, PIPED, ROUNDS = 2000, 5000, 3
local noop = function() end

local function tiny_on(ex)
  ex:submit(noop):result()
  return function(n) for _ = 1, n do ex:submit(noop):result() end end
end
local function piped_on(ex)
  return function(n)
    local fs = {}
    for i = 1, n do fs[i] = ex:submit(noop) end
    for i = 1, n do fs[i]:result() end
  end
end

-- Item 41 x24: the book's gcd over its pairs, pool start included.
local gcd, work = bench.gcd, {}
for _ = 1, 24 do
  for _, p in ipairs(bench.numbers) do work[#work + 1] = p end
end
local function serial() for _, p in ipairs(work) do gcd(p) end end

-- Rank 0 of the world: prints "name v1 v2 ..." lines (bench.parse).
if arg[1] == '--world' then
  local function say(name, s) io.write(name, ' ', table.concat(s.values, ' '), '\n') end
  local ex <close> = futures.MPIPoolExecutor { max_workers = 2 }
  say('tiny', bench.per_op(tiny_on(ex), TINY, ROUNDS))
  say('piped', bench.per_op(piped_on(ex), PIPED, ROUNDS))
  -- the process pool's speedup in the same rank, round by round, as a reference
  local function on(make) return function()
    local pool <close> = assert(make())
    for _ in pool:map(gcd, work) do end
  end end
  local run_mpi = on(function() return futures.MPIPoolExecutor { max_workers = 2 } end)
  local run_pp = on(function() return futures.ProcessPoolExecutor { max_workers = 2 } end)
  local sp, spp = {}, {}
  for i = 1, ROUNDS do
    local s = measure.time(serial)
    sp[i] = s / measure.time(run_mpi)
    spp[i] = s / measure.time(run_pp)
  end
  say('speedup', measure.summary(sp))
  say('pp_speedup', measure.summary(spp))
  -- a worker's mean idle time between two tasks: each task returns its
  -- process id, start and end (CLOCK_MONOTONIC: one clock for every process here)
  local function stamped(pair)
    local time = require 'host.time'
    local t0 = time.monotonic()
    gcd(pair)
    local stat = io.open '/proc/self/stat'
    local pid = stat:read 'n'
    stat:close()
    return pid, t0, time.monotonic()
  end
  local function idle(make)
    local pool <close> = assert(make())
    local by = {}
    for _, pid, t0, t1 in pool:map(stamped, work) do
      by[pid] = by[pid] or {}
      table.insert(by[pid], { t0, t1 })
    end
    local sum, n = 0, 0
    for _, s in pairs(by) do
      table.sort(s, function(a, b) return a[1] < b[1] end)
      for i = 2, #s do sum, n = sum + s[i][1] - s[i - 1][2], n + 1 end
    end
    return sum / n
  end
  local gap, pp_gap = {}, {}
  for i = 1, ROUNDS do
    gap[i] = idle(function() return futures.MPIPoolExecutor { max_workers = 2 } end)
    pp_gap[i] = idle(function() return futures.ProcessPoolExecutor { max_workers = 2 } end)
  end
  say('idle', measure.summary(gap))
  say('pp_idle', measure.summary(pp_gap))
  return
end

local dir = bench.host:match '^(.*)/[^/]*$' or '.'
local lua = dir .. '/lua'
local built = io.open(lua .. '/host/mpi.so')
if built then built:close() end
if not bench.have 'mpiexec' or not (built or package.searchpath('host.mpi', package.cpath)) then
  print('skipped: no mpiexec or no host.mpi module (make test-mpi installs Open MPI and builds it)')
  return
end
local mpiexec = os.getenv 'HOST_MPIEXEC' or 'mpiexec --allow-run-as-root --oversubscribe --bind-to none'
local env = built and ("LUA_PATH_5_4='%s/?.lua;;' LUA_CPATH_5_4='%s/?.so;;' "):format(lua, lua) or ''
local world = bench.parse(bench.capture(('%s%s -n 3 %s -l host.mpi.run bench/mpi_bench.lua --world')
  :format(env, mpiexec, bench.host)))
assert(world.tiny and world.piped and world.speedup and world.idle,
       'the MPI world printed no figures')

local pp = assert(futures.ProcessPoolExecutor { max_workers = 2 })
local pp_tiny = bench.per_op(tiny_on(pp), TINY, ROUNDS)
local pp_piped = bench.per_op(piped_on(pp), PIPED, ROUNDS)
pp:shutdown()
bench.figure { name = 'MPIPool(2 ranks) submit + result, tiny task', value = world.tiny, unit = 'us',
               scale = 1e6, ref = pp_tiny, ref_name = "host's ProcessPool(2)" }
bench.figure { name = 'MPIPool(2 ranks) pipelined submit, per tiny task', value = world.piped,
               unit = 'us', scale = 1e6, ref = pp_piped, ref_name = "host's ProcessPool(2)" }
bench.figure { name = 'Item 41 x24 MPIPool(2 ranks) speedup', value = world.speedup, unit = 'x',
               ref = world.pp_speedup, ref_name = "host's ProcessPool(2) in rank 0",
               goal = { op = '>=', value = 1.8, on = 'value' } }
bench.figure { name = 'Item 41 MPIPool(2 ranks) worker idle between tasks', value = world.idle,
               unit = 'us', scale = 1e6, ref = world.pp_idle,
               ref_name = "host's ProcessPool(2) in rank 0" }
