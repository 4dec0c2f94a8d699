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

return bench
