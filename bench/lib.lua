-- bench/lib.lua: the benchmark harness. Figures print as "name value unit";
-- a figure with a reference measured in the same run also prints
-- "ratio name value (goal)". Nothing here passes or fails on time.
local time = require 'host.time'
local bench = {}

bench.host = arg and arg[-1] or 'host'

-- Seconds of wall time that `f` takes.
function bench.time(f, ...)
  local t0 = time.monotonic()
  f(...)
  return time.monotonic() - t0
end

-- Median of `runs` timings of `f` (default 5).
function bench.median(f, runs)
  local t = {}
  for i = 1, runs or 5 do t[i] = bench.time(f) end
  table.sort(t)
  return t[(#t + 1) // 2]
end

-- Prints one figure.
function bench.report(name, value, unit)
  print(string.format('%-44s %12.4g %s', name, value, unit))
end

-- Prints the ratio ours/reference, with the goal when there is one.
function bench.ratio(name, ours, ref, goal)
  print(string.format('ratio %-38s %12.3f%s', name, ours / ref,
                      goal and ('  (goal: ' .. goal .. ')') or ''))
end

-- Runs a shell command and returns its stdout; fails loudly if it fails.
function bench.capture(cmd)
  local p = assert(io.popen(cmd, 'r'))
  local out = p:read 'a'
  local ok, how, code = p:close()
  assert(ok, ('%s: %s %s'):format(cmd, how, code))
  return out
end

-- True when a command is on the PATH.
function bench.have(cmd)
  return os.execute('command -v ' .. cmd .. ' >/dev/null 2>&1') == true
end

-- What every Python twin starts with: per_op, the twin of bench.per_op, and
-- the book's gcd.
local python_prelude = [[
import time
def per_op(f, n, runs=5):
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter(); f(n); ts.append((time.perf_counter() - t0) / n)
    ts.sort(); return ts[len(ts) // 2]
def gcd(pair):
    a, b = pair
    low = min(a, b)
    for i in range(low, 0, -1):
        if a % i == 0 and b % i == 0:
            return i
numbers = [(1963309, 2265973), (2030677, 3814172), (1551645, 2229620), (2039045, 2020802)]
]]

-- Runs Python source `code` (after the prelude above) with python3 and
-- returns its "name value" lines as a table of numbers ({} without python3).
function bench.python(code)
  if not bench.have('python3') then return {} end
  local file = os.tmpname()
  local f = assert(io.open(file, 'w'))
  f:write(python_prelude, code)
  f:close()
  local out = bench.capture('python3 ' .. file)
  os.remove(file)
  local r = {}
  for name, v in out:gmatch('(%S+) (%S+)') do r[name] = tonumber(v) end
  return r
end

-- The book's brute-force gcd and its four pairs (Item 41).
function bench.gcd(pair)
  local a, b = pair[1], pair[2]
  local low = math.min(a, b)
  for i = low, 1, -1 do
    if a % i == 0 and b % i == 0 then return i end
  end
end
bench.numbers = { { 1963309, 2265973 }, { 2030677, 3814172 },
                  { 1551645, 2229620 }, { 2039045, 2020802 } }

-- Prints a figure, and with the Python twin's value `py[name]` both that
-- value and the ratio ours/python3.
function bench.figure(py, name, label, ours, unit, scale, goal)
  bench.report(label, ours * scale, unit)
  if py[name] then
    bench.report(label .. ' (python3)', py[name] * scale, unit)
    bench.ratio(label .. ' host/python3', ours, py[name], goal)
  end
end

-- Median seconds per operation of f(n) over `runs` runs (default 5).
function bench.per_op(f, n, runs)
  return bench.median(function() f(n) end, runs or 5) / n
end

return bench
