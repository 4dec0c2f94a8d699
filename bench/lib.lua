-- bench/lib.lua: the benchmark harness. Every figure is a sample (median of
-- several runs, with min-max) and may have a reference measured in the same
-- run (CPython, stock lua5.4, a C loop) and a goal, stated either on the
-- figure itself in its own unit ("<= 120 ns") or on the ratio to its
-- reference ("<= 0.25x CPython"). bench.figure prints one line per figure
-- and, under bench/run.lua (make bench), appends it as a JSON record to
-- $HOST_BENCH_RECORDS; run.lua prints the summary and writes the JSON and
-- the chart. Nothing here fails on time.
package.path = 'scripts/lib/?.lua;' .. package.path
local measure = require 'measure'
local json = require 'json'
local bench = { measure = measure }

bench.host = arg and arg[-1] or 'host'

-- Sample of seconds per operation of f(n), over `runs` runs (default 5).
function bench.per_op(f, n, runs)
  local t = {}
  for i = 1, runs or 5 do t[i] = measure.time(f, n) / n end
  return measure.summary(t)
end

-- A sample of one value (a figure measured once, such as a memory size).
function bench.once(v)
  return measure.summary { v }
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

-- What every Python twin starts with: per_op, the twin of bench.per_op
-- (it returns the runs' values, for `print(name, per_op(...))`), and the
-- book's gcd.
local python_prelude = [[
import time
def per_op(f, n, runs=5):
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter(); f(n); ts.append((time.perf_counter() - t0) / n)
    return ' '.join(repr(t) for t in ts)
def gcd(pair):
    a, b = pair
    low = min(a, b)
    for i in range(low, 0, -1):
        if a % i == 0 and b % i == 0:
            return i
numbers = [(1963309, 2265973), (2030677, 3814172), (1551645, 2229620), (2039045, 2020802)]
]]

-- Parses lines "name v1 v2 ..." into { name = sample }.
function bench.parse(out)
  local r = {}
  for name, rest in out:gmatch '([%w_]+) ([^\n]+)' do
    local v = {}
    for x in rest:gmatch '%S+' do v[#v + 1] = tonumber(x) end
    if #v > 0 then r[name] = measure.summary(v) end
  end
  return r
end

-- Runs Python source `code` (after the prelude above) with python3 and
-- returns its "name v1 v2 ..." lines as samples ({} without python3).
function bench.python(code, args)
  if not bench.have 'python3' then return {} end
  local file = os.tmpname()
  local f = assert(io.open(file, 'w'))
  f:write(python_prelude, code)
  f:close()
  local ok, out = pcall(bench.capture, 'python3 ' .. file .. ' ' .. (args or ''))
  os.remove(file)
  assert(ok, out)
  return bench.parse(out)
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

-- A number in 3 significant digits (whole above 100).
local function fmt(x)
  if math.abs(x) >= 100 then return ('%.0f'):format(x) end
  return ('%.3g'):format(x)
end
bench.fmt = fmt

-- Whether `v` meets `op goal`.
local function meets(v, op, goal)
  if op == '<=' then return v <= goal end
  if op == '>=' then return v >= goal end
  error('bench: unknown goal operator ' .. tostring(op))
end

-- The floor under a figure's goal, measured in the same run: what the
-- cheapest possible version of the same work costs (a C loop, a bare
-- system call). Recorded with its ratio to the reference, and whether the
-- goal is out of reach: the floor itself misses it and host does not beat
-- the floor (a floor host beats, such as a sleeping round trip under a
-- spinning one, bounds nothing).
local function floor_record(f, rec, scale)
  local fl = f.floor
  local v = measure.scale(fl.value, fl.scale or scale)
  local r = { name = fl.name, value = v.median, spread = { v.min, v.max } }
  if rec.reference then r.ratio = v.median / rec.reference.value end
  if rec.goal then  -- out of reach: the floor misses the goal, and host does not beat the floor
    local x = rec.goal.on == 'ratio' and r.ratio or r.value
    r.blocks_goal = x ~= nil and not meets(x, rec.goal.op, rec.goal.value)
                    and meets(rec.value, rec.goal.op == '<=' and '>=' or '<=', r.value)
  end
  return r
end

-- Records one figure and prints its line.
-- f = { name =, value = sample, unit =, scale = (default 1),
--       ref = sample, ref_name = 'CPython', ref_scale = (default scale),
--       goal = { op = '<=' | '>=', value =, on = 'ratio' | 'value' },
--       floor = { name =, value = sample, scale = (default scale) } }
-- Samples are in seconds (or the figure's base unit); value * scale is in `unit`.
function bench.figure(f)
  local scale = f.scale or 1
  local v = measure.scale(f.value, scale)
  local rec = { name = f.name, value = v.median, unit = f.unit, spread = { v.min, v.max }, runs = v.n }
  local u = f.unit == 'x' and 'x' or ' ' .. f.unit
  local line = ('%-52s %8s%s (%s-%s)'):format(f.name, fmt(v.median), u, fmt(v.min), fmt(v.max))
  if f.ref then
    local r = measure.scale(f.ref, f.ref_scale or scale)
    local ratio = measure.ratio(v, r)
    rec.reference = { name = f.ref_name, value = r.median, spread = { r.min, r.max } }
    rec.ratio, rec.ratio_spread = ratio.median, { ratio.min, ratio.max }
    line = line .. ('  %s %s%s  = %sx'):format(f.ref_name, fmt(r.median), u, fmt(ratio.median))
  end
  local g = f.goal
  if g then
    local on_ratio = g.on == 'ratio'
    assert(not on_ratio or rec.ratio, 'bench: a ratio goal needs a reference')
    rec.goal = { op = g.op, value = g.value, on = on_ratio and 'ratio' or 'value',
                 unit = on_ratio and ('x ' .. f.ref_name) or f.unit }
    rec.goal.text = on_ratio and ('%s %sx %s'):format(g.op, fmt(g.value), f.ref_name)
                             or ('%s %s%s'):format(g.op, fmt(g.value), f.unit == 'x' and 'x' or ' ' .. f.unit)
    rec.met = meets(on_ratio and rec.ratio or rec.value, g.op, g.value)
    line = line .. ('  (goal %s: %s)'):format(rec.goal.text, rec.met and 'met' or 'MISSED')
  end
  if f.floor then
    rec.floor = floor_record(f, rec, scale)
    line = line .. ('\n%52s floor: %s %s%s%s%s'):format('', rec.floor.name, fmt(rec.floor.value), u,
      rec.floor.ratio and ('  = %sx %s'):format(fmt(rec.floor.ratio), f.ref_name) or '',
      rec.floor.blocks_goal and ', so the goal is out of reach' or '')
  end
  if f.note then rec.note = f.note end
  print(line)
  local out = os.getenv 'HOST_BENCH_RECORDS'
  if out then
    local file = assert(io.open(out, 'a'))
    file:write(json.encode(rec), '\n')
    file:close()
  end
  return rec
end

return bench
