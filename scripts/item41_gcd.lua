-- scripts/item41_gcd.lua: Effective Python, Item 41, "Consider
-- concurrent.futures for true parallelism", in Lua on host.
--
-- The book's brute-force gcd over its four big pairs, run serially, on a
-- ThreadPoolExecutor (no gain: one GIL), on a ProcessPoolExecutor (real
-- gain: each worker process has its own interpreter) and on host's
-- InterpreterPoolExecutor (real gain without fork: one universe per worker
-- thread); then CPython runs the book's own code on the same work.
--
-- Every time is the median of several rounds (min-max after it); the rounds
-- alternate the four ways so that a change in load hits them alike. The
-- script watches the machine while it runs and draws no conclusion when
-- other processes took CPU from it or the spread is wide.
-- Pictures: item41_times.svg and item41_speedup.svg in $HOST_DEMO_OUT
-- (default build/demo). HOST_DEMO_QUICK=1: a small workload, one round.
local here = debug.getinfo(1, 'S').source:match '^@(.*)[/\\]' or '.'
package.path = here .. '/lib/?.lua;' .. package.path
local measure = require 'measure'
local chart = require 'chart'
local futures = require 'host.futures'

local quick = measure.quick()
local ROUNDS = quick and 1 or 5         -- rounds of the four ways
local SWEEP_ROUNDS = quick and 1 or 3   -- rounds per point of the speedup curve
local PY_ROUNDS = quick and 1 or 3      -- rounds of CPython's twins
local REPEATS = quick and 1 or 3        -- times over the book's 4 pairs
local WORKERS = 2                       -- max_workers, as in the book

local function gcd(pair)
  local a, b = pair[1], pair[2]
  local low = math.min(a, b)
  for i = low, 1, -1 do
    if a % i == 0 and b % i == 0 then
      return i
    end
  end
end

-- The book's pairs (quick mode: each number divided by 100).
local numbers = { { 1963309, 2265973 }, { 2030677, 3814172 },
                  { 1551645, 2229620 }, { 2039045, 2020802 } }
if quick then
  for _, p in ipairs(numbers) do p[1], p[2] = p[1] // 100, p[2] // 100 end
end

-- Euclid's gcd, to check the brute force.
local function euclid(a, b)
  while b ~= 0 do a, b = b, a % b end
  return a
end

local watch = measure.watch(quick and 0.1)
local machine = watch.machine
print(('Item 41 on %d cores (%s), load average %.2f at start'):format(machine.cores, machine.model,
  machine.load[1]))

-- The work: the pairs REPEATS times over, a fixed size (about half a second
-- serially on this project's 2-vCPU machines; the run prints what it took).
local work = {}
for _ = 1, REPEATS do
  for _, pair in ipairs(numbers) do work[#work + 1] = pair end
end
print(('The book\'s 4 pairs, %d times over (%d pairs).\n'):format(REPEATS, #work))

-- Checks a result list against Euclid.
local function check(results)
  assert(#results == #work, 'results missing')
  for i, r in ipairs(results) do
    assert(r == euclid(work[i][1], work[i][2]), ('wrong gcd for pair %d: %s'):format(i, r))
  end
end

local function run_serial()
  local results = {}
  for i, pair in ipairs(work) do results[i] = gcd(pair) end
  check(results)
end

local makers = {
  threads = function(n) return futures.ThreadPoolExecutor { max_workers = n } end,
  processes = function(n) return futures.ProcessPoolExecutor { max_workers = n } end,
  interpreters = function(n) return futures.InterpreterPoolExecutor { max_workers = n } end,
}

-- Runs the work on a pool of `kind` with n workers, as the book does with
-- pool.map (starting and shutting down the pool is part of the time).
local function run_pool(kind, n)
  return function()
    local pool <close> = assert(makers[kind](n))
    local results = {}
    for i, r in pool:map(gcd, work) do results[i] = r end
    check(results)
  end
end

local ways = {
  { key = 'serial', label = 'serial', run = run_serial },
  { key = 'threads', label = ('ThreadPoolExecutor(max_workers=%d)'):format(WORKERS), run = run_pool('threads', WORKERS) },
  { key = 'processes', label = ('ProcessPoolExecutor(max_workers=%d)'):format(WORKERS), run = run_pool('processes', WORKERS) },
  { key = 'interpreters', label = ('InterpreterPoolExecutor(max_workers=%d)'):format(WORKERS),
    run = run_pool('interpreters', WORKERS) },
}
-- Under mpiexec with host.mpi (mpiexec -n 3 host -l host.mpi.run
-- scripts/item41_gcd.lua): an MPI row, the work on 2 worker ranks.
local mpi = package.loaded['host.mpi']
if mpi and futures.MPIPoolExecutor and mpi.size() > WORKERS then
  makers.mpi = function(n) return futures.MPIPoolExecutor { max_workers = n } end
  ways[#ways + 1] = { key = 'mpi', label = ('MPIPoolExecutor(max_workers=%d)'):format(WORKERS),
                      run = run_pool('mpi', WORKERS) }
end
local fs = {}
for i, w in ipairs(ways) do fs[i] = w.run end
local samples = { measure.rounds(fs, ROUNDS) }
local took = {}
for i, w in ipairs(ways) do
  took[w.key] = samples[i]
  print(('%-40s Took %s seconds'):format(w.label, measure.format(samples[i], '%.3f')))
end
print(('(median of %d rounds, min-max in brackets)\n'):format(ROUNDS))
local speedup = {}
for i = 2, #ways do
  local w = ways[i]
  -- Speedup per round: the serial median over that round's time.
  local v = {}
  for j, t in ipairs(took[w.key].values) do v[j] = took.serial.median / t end
  speedup[w.key] = measure.summary(v)
  print(('%-40s speedup %s'):format(w.label, measure.format(speedup[w.key], '%.2fx')))
end

-- Speedup against the number of workers, 1 .. 2 x cores.
local max_workers = quick and 2 or 2 * machine.cores
local curve = { threads = {}, processes = {}, interpreters = {} }
local kinds = { 'threads', 'processes', 'interpreters' }
for n = 1, max_workers do
  local runs = {}
  for i, kind in ipairs(kinds) do runs[i] = run_pool(kind, n) end
  local s = { measure.rounds(runs, SWEEP_ROUNDS) }
  for i, kind in ipairs(kinds) do
    local v = {}
    for j, t in ipairs(s[i].values) do v[j] = took.serial.median / t end
    local sp = measure.summary(v)
    curve[kind][n] = { x = n, y = sp.median, min = sp.min, max = sp.max }
  end
end
print(('\nSpeedup over serial against workers (median of %d rounds each):'):format(SWEEP_ROUNDS))
print(('%-8s %10s %10s %13s'):format('workers', 'threads', 'processes', 'interpreters'))
for n = 1, max_workers do
  print(('%-8d %9.2fx %9.2fx %12.2fx'):format(n, curve.threads[n].y, curve.processes[n].y, curve.interpreters[n].y))
end

-- CPython runs the book's code on the same work, alternating its three
-- ways for PY_ROUNDS rounds; it prints "way t1 t2 ...".
local py
if os.execute 'command -v python3 >/dev/null 2>&1' then
  local pairs_py = {}
  for i, p in ipairs(numbers) do pairs_py[i] = ('(%d, %d)'):format(p[1], p[2]) end
  local python = ([[
from concurrent.futures import ThreadPoolExecutor, ProcessPoolExecutor
from time import perf_counter
import multiprocessing
def gcd(pair):
    a, b = pair
    low = min(a, b)
    for i in range(low, 0, -1):
        if a %% i == 0 and b %% i == 0:
            return i
numbers = [%s] * %d
def serial(): return list(map(gcd, numbers))
def threads():
    with ThreadPoolExecutor(max_workers=%d) as pool: return list(pool.map(gcd, numbers))
def processes():
    ctx = multiprocessing.get_context('fork')
    with ProcessPoolExecutor(max_workers=%d, mp_context=ctx) as pool: return list(pool.map(gcd, numbers))
if __name__ == '__main__':
    t = {'serial': [], 'threads': [], 'processes': []}
    for _ in range(%d):
        for name, f in (('serial', serial), ('threads', threads), ('processes', processes)):
            start = perf_counter(); f(); t[name].append(perf_counter() - start)
    for name, v in t.items(): print(name, *v)
]]):format(table.concat(pairs_py, ', '), REPEATS, WORKERS, WORKERS, PY_ROUNDS)
  local file = os.tmpname()
  local f = assert(io.open(file, 'w'))
  f:write(python)
  f:close()
  local p = assert(io.popen('python3 ' .. file))
  local out = p:read 'a'
  p:close()
  os.remove(file)
  py = {}
  for name, rest in out:gmatch '(%a+) ([^\n]+)' do
    local v = {}
    for x in rest:gmatch '%S+' do v[#v + 1] = tonumber(x) end
    py[name] = measure.summary(v)
  end
  if not (py.serial and py.threads and py.processes) then py = nil end
end
if py then
  print(('\nCPython 3 running the book\'s code on the same work (median of %d rounds):'):format(PY_ROUNDS))
  for _, w in ipairs(ways) do
    if py[w.key] then
      print(('%-40s Took %s seconds (host %.1fx faster)')
        :format(w.label, measure.format(py[w.key], '%.3f'), py[w.key].median / took[w.key].median))
    end
  end
  print(('CPython speedups: threads %.2fx, processes %.2fx'):format(py.serial.median / py.threads.median,
    py.serial.median / py.processes.median))
else
  print('\n(python3 not found: no CPython comparison)')
end

-- The verdict, from this run only.
local report = watch.stop()
print('\n' .. measure.describe(report))
local reasons = report.reasons
for _, w in ipairs(ways) do
  local sp = measure.spread(took[w.key])
  if sp > measure.WIDE then
    reasons[#reasons + 1] = ('the %s times spread %.0f %% around their median (over %.0f %% is too wide)')
      :format(w.key, sp * 100, measure.WIDE * 100)
  end
end
local parallel = math.min(WORKERS, machine.cores)
local need = 1 + 0.6 * (parallel - 1)   -- a pool with real parallelism reaches this
local th, pr, ip = speedup.threads.median, speedup.processes.median, speedup.interpreters.median
local verdict
if quick then
  verdict = 'quick mode (HOST_DEMO_QUICK): too little work to conclude anything.'
elseif #reasons > 0 then
  verdict = 'the machine was too busy to tell (' .. table.concat(reasons, '; ') .. '). '
    .. 'These figures are unreliable: run again when the machine is quiet.'
elseif th < 1.25 and pr >= need and ip >= need then
  verdict = ('as the book says: threads gave no real speedup (%.2fx, one GIL), processes did '
    .. '(%.2fx with %d workers on %d cores), and so did isolated interpreters (%.2fx).')
    :format(th, pr, WORKERS, machine.cores, ip)
else
  verdict = ('this run does NOT agree with the book: threads %.2fx (expected about 1x), processes %.2fx and '
    .. 'interpreters %.2fx (expected at least %.2fx with %d workers on %d cores).')
    :format(th, pr, ip, need, WORKERS, machine.cores)
end
print('Conclusion: ' .. verdict)

-- Pictures.
local dir = measure.outdir()
local caption = ('%d cores, load %.2f -> %.2f, others used %.2f cores%s'):format(machine.cores,
  report.load_start, report.load_end, report.others, #reasons > 0 and ' (TOO BUSY: unreliable)' or '')
local groups = {}
for _, w in ipairs(ways) do
  local g = { label = w.key, bars = { { label = 'host', value = took[w.key].median, min = took[w.key].min,
                                        max = took[w.key].max, color = chart.PALETTE[1] } } }
  if py and py[w.key] then
    g.bars[2] = { label = 'CPython', value = py[w.key].median, min = py[w.key].min, max = py[w.key].max,
                  color = chart.PALETTE[2] }
  end
  groups[#groups + 1] = g
end
local times = chart.write(dir .. '/item41_times.svg', chart.bars {
  title = ('Item 41: gcd of %d pairs, %d workers (median, min-max)'):format(#work, WORKERS),
  subtitle = caption, unit = 'seconds', groups = groups, label_width = 200, headings = true,
  note = 'Conclusion: ' .. verdict,
})
local series = { { label = 'ideal', dashed = true, color = '#999', points = {} } }
for n = 1, max_workers do series[1].points[n] = { x = n, y = math.min(n, machine.cores) } end
for _, kind in ipairs(kinds) do series[#series + 1] = { label = kind, points = curve[kind] } end
local speed = chart.write(dir .. '/item41_speedup.svg', chart.lines {
  title = 'Item 41: speedup over serial against workers', subtitle = caption,
  xlabel = 'workers', ylabel = 'speedup (serial median / pool time)', series = series,
})
print(('\nPictures: %s, %s'):format(times, speed))
