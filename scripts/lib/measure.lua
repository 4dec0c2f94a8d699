-- scripts/lib/measure.lua: repeated measurements and the machine they ran
-- on, for the experiment scripts (scripts/) and the benchmarks (bench/).
-- Plain Lua 5.4 plus /proc: no host module is needed except host.time.
--
-- A sample is { median =, min =, max =, n =, values = } (seconds or any
-- unit); a watch records the machine's load and the CPU time the rest of
-- the machine used while it ran, and says whether figures taken meanwhile
-- can be trusted.
local time = require 'host.time'
local measure = {}

-- Reads a whole file, or nil.
local function slurp(path)
  local f = io.open(path)
  if not f then return nil end
  local text = f:read 'a'
  f:close()
  return text
end

-- Median, min and max of a list of numbers (the list is not changed).
function measure.summary(values)
  local t = table.move(values, 1, #values, 1, {})
  table.sort(t)
  local n = #t
  local median = n % 2 == 1 and t[(n + 1) // 2] or (t[n // 2] + t[n // 2 + 1]) / 2
  return { median = median, min = t[1], max = t[n], n = n, values = values }
end

-- Relative spread of a sample: (max - min) / median.
function measure.spread(s)
  if s.median == 0 then return 0 end
  return (s.max - s.min) / math.abs(s.median)
end

-- Seconds that f(...) takes.
function measure.time(f, ...)
  local t0 = time.monotonic()
  f(...)
  return time.monotonic() - t0
end

-- Runs each function of `fs` (a list) once per round for `rounds` rounds,
-- alternating them so that a change in the machine's load hits all alike.
-- Returns one sample of seconds per function, in order.
function measure.rounds(fs, rounds)
  local t = {}
  for j = 1, #fs do t[j] = {} end
  for i = 1, rounds do
    for j, f in ipairs(fs) do t[j][i] = measure.time(f) end
  end
  for j = 1, #fs do t[j] = measure.summary(t[j]) end
  return table.unpack(t)
end

-- A sample scaled by k (seconds to microseconds, per-op, ...).
function measure.scale(s, k)
  local v = {}
  for i, x in ipairs(s.values) do v[i] = x * k end
  return measure.summary(v)
end

-- The ratio of two samples, a / b, with the widest range it can have.
function measure.ratio(a, b)
  return { median = a.median / b.median, min = a.min / b.max, max = a.max / b.min, n = math.min(a.n, b.n) }
end

-- "1.23 (1.10-1.40)" with `fmt` for each number.
function measure.format(s, fmt)
  fmt = fmt or '%.3g'
  return (fmt .. ' (' .. fmt .. '-' .. fmt .. ')'):format(s.median, s.min, s.max)
end

-- The machine: { cores =, model =, load = {1, 5, 15 min} }.
function measure.machine()
  local cores = 0
  local info = slurp '/proc/cpuinfo' or ''
  for _ in info:gmatch '\nprocessor%s*:' do cores = cores + 1 end
  if info:match '^processor%s*:' then cores = cores + 1 end
  local p = io.popen('nproc 2>/dev/null')
  local n = p and tonumber(p:read 'a')
  if p then p:close() end
  cores = n or (cores > 0 and cores) or 1
  local model = info:match 'model name%s*:%s*([^\n]+)' or 'unknown CPU'
  return { cores = cores, model = model, load = measure.loadavg() }
end

-- The 1, 5 and 15 minute load averages.
function measure.loadavg()
  local a, b, c = (slurp '/proc/loadavg' or '0 0 0'):match '(%S+) (%S+) (%S+)'
  return { tonumber(a), tonumber(b), tonumber(c) }
end

-- Clock ticks the whole machine spent busy and in total (all CPUs), and
-- ticks this process spent (its threads and its reaped children).
local function ticks()
  local stat = slurp '/proc/stat' or ''
  local f = {}
  for n in (stat:match '^cpu%s+([^\n]+)' or ''):gmatch '%d+' do f[#f + 1] = tonumber(n) end
  local busy = (f[1] or 0) + (f[2] or 0) + (f[3] or 0) + (f[6] or 0) + (f[7] or 0) + (f[8] or 0)
  local total = busy + (f[4] or 0) + (f[5] or 0)
  -- /proc/self/stat: fields after the ")" of the command name; utime is field 14.
  local rest = (slurp '/proc/self/stat' or ''):match '%)%s(.*)$' or ''
  local g = {}
  for v in rest:gmatch '%S+' do g[#g + 1] = v end
  local own = 0
  for i = 12, 15 do own = own + (tonumber(g[i]) or 0) end
  return busy, total, own
end

-- Cores that the rest of the machine kept busy between two tick readings.
local function others_between(a, b, cores)
  local dtotal = b[2] - a[2]
  if dtotal <= 0 then return 0 end
  return math.max(0, (b[1] - a[1]) - (b[3] - a[3])) / dtotal * cores
end

-- Starts watching the machine: first a probe of `probe` seconds (default
-- 0.5) of what other processes use right now, then the run. The 1-minute
-- load average is reported but not judged: it still counts this program's
-- own work of the last minute. watch:stop() returns a report:
-- { machine =, load_start =, load_end =, others_start = cores other
--   processes used during the probe, others = cores they used on average
--   during the run, seconds =, busy = bool, reasons = {...} }.
function measure.watch(probe)
  local m = measure.machine()
  local p0 = { ticks() }
  time.sleep(probe or 0.5)
  local t0, p1 = time.monotonic(), { ticks() }
  local others_start = others_between(p0, p1, m.cores)
  local w = { machine = m }
  function w.stop()
    local p2 = { ticks() }
    local r = { machine = m, load_start = m.load[1], load_end = measure.loadavg()[1], others_start = others_start,
                others = others_between(p1, p2, m.cores), seconds = time.monotonic() - t0, reasons = {} }
    if r.others_start > measure.BUSY_CORES then
      r.reasons[#r.reasons + 1] = ('other processes were using %.2f of the %d cores when it began')
        :format(r.others_start, m.cores)
    end
    if r.others > measure.BUSY_CORES then
      r.reasons[#r.reasons + 1] = ('other processes kept %.2f of the %d cores busy meanwhile')
        :format(r.others, m.cores)
    end
    r.busy = #r.reasons > 0
    return r
  end
  return w
end

-- Other processes using more than this many cores make a machine busy.
measure.BUSY_CORES = 0.5
-- A sample whose spread is above this is too wide to conclude from.
measure.WIDE = 0.3

-- Prints the machine line of a watch report.
function measure.describe(r)
  return ('machine: %d cores, %s; load average %.2f at start, %.2f at end; '
    .. 'other processes used %.2f cores when it began, %.2f during the run')
    :format(r.machine.cores, r.machine.model, r.load_start, r.load_end, r.others_start, r.others)
end

-- Directory where the pictures go: $HOST_DEMO_OUT, else build/demo. Made if missing.
function measure.outdir()
  local dir = os.getenv 'HOST_DEMO_OUT' or 'build/demo'
  os.execute(('mkdir -p %q'):format(dir))
  return dir
end

-- True in quick mode (HOST_DEMO_QUICK=1): small workloads, few runs, for specs.
function measure.quick()
  local q = os.getenv 'HOST_DEMO_QUICK'
  return q ~= nil and q ~= '' and q ~= '0'
end

return measure
