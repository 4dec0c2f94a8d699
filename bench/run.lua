-- bench/run.lua: what `make bench` runs. host bench/run.lua OUTDIR [FILE...]
-- runs each benchmark (default bench/*_bench.lua) in its own host process,
-- collects the figures they record (bench/lib.lua's bench.figure), watches
-- the machine during each, then prints the summary table (every figure with
-- a goal, marked met or MISSED) and writes OUTDIR/bench.json and
-- OUTDIR/bench.svg. Exits 1 when a benchmark failed; a MISSED goal is a
-- result, not a failure.
package.path = 'scripts/lib/?.lua;' .. package.path
local measure = require 'measure'
local chart = require 'chart'
local json = require 'json'

local outdir = assert(arg[1], 'usage: host bench/run.lua OUTDIR [bench files]')
local files = table.move(arg, 2, #arg, 1, {})
if #files == 0 then
  local p = assert(io.popen 'ls bench/*_bench.lua')
  for line in p:lines() do files[#files + 1] = line end
  p:close()
end
os.execute(('mkdir -p %q'):format(outdir))
local records_path = outdir .. '/bench-records.jsonl'
os.remove(records_path)
local host = arg[-1]

local function read_records()
  local list = {}
  local f = io.open(records_path)
  if not f then return list end
  for line in f:lines() do list[#list + 1] = json.decode(line) end
  f:close()
  return list
end

local all_watch = measure.watch()
local machine = all_watch.machine
print(('bench on %d cores, %s; load average %.2f'):format(machine.cores, machine.model, machine.load[1]))
local failed, figures = {}, {}
for _, file in ipairs(files) do
  print('\n== ' .. file)
  io.stdout:flush()
  local w = measure.watch()
  local ok = os.execute(('HOST_BENCH_RECORDS=%q %q %q'):format(records_path, host, file))
  local r = w.stop()
  if not ok then failed[#failed + 1] = file end
  local records = read_records()
  for i = #figures + 1, #records do
    local rec = records[i]
    rec.bench, rec.busy, rec.others = file, r.busy, r.others
    figures[i] = rec
  end
  print(('   (%s: %.0f s; other processes used %.2f cores%s)'):format(file, r.seconds, r.others,
    r.busy and ', BUSY: its figures are unreliable' or ''))
end
os.remove(records_path)
local report = all_watch.stop()

-- The summary table: every figure with a goal.
local function fmt(x)
  if not x then return '' end
  local a = math.abs(x)
  if a >= 100 then return ('%.0f'):format(x) end
  return ('%.3g'):format(x)
end
-- The result cell: met, MISSED, or MISSED with the floor that stops it.
local function result(f)
  if f.met then return 'met' end
  if f.floor and f.floor.blocks_goal then
    return ('MISSED, floor %s'):format(f.floor.ratio and (fmt(f.floor.ratio) .. 'x') or (fmt(f.floor.value) .. ' ' .. f.unit))
  end
  return 'MISSED'
end
local rows, met, missed, floored = {}, 0, 0, 0
for _, f in ipairs(figures) do
  if f.goal then
    if f.met then met = met + 1 else missed = missed + 1 end
    if not f.met and f.floor and f.floor.blocks_goal then floored = floored + 1 end
    rows[#rows + 1] = {
      f.name .. (f.busy and ' *' or ''),
      ('%s %s (%s-%s)'):format(fmt(f.value), f.unit, fmt(f.spread[1]), fmt(f.spread[2])),
      f.reference and ('%s %s %s'):format(f.reference.name, fmt(f.reference.value), f.unit) or '',
      f.ratio and (fmt(f.ratio) .. 'x') or '',
      f.goal.text,
      result(f),
    }
  end
end
local head = { 'figure', 'host (median, min-max)', 'reference', 'ratio', 'goal', 'result' }
local width = {}
for i, h in ipairs(head) do
  width[i] = #h
  for _, row in ipairs(rows) do width[i] = math.max(width[i], utf8.len(row[i]) or #row[i]) end
end
local function line(row)
  local parts = {}
  for i, cell in ipairs(row) do parts[i] = cell .. (' '):rep(width[i] - (utf8.len(cell) or #cell)) end
  return table.concat(parts, '  ')
end
print('\n== Summary: figures with a goal')
print(measure.describe(report))
if report.busy then
  print('BUSY: ' .. table.concat(report.reasons, '; ') .. '. Figures taken now are unreliable.')
end
print(line(head))
for _, row in ipairs(rows) do print(line(row)) end
print(('%d goals: %d met, %d MISSED%s%s'):format(met + missed, met, missed,
  floored > 0 and (' (%d of them under a floor measured in the same run)'):format(floored) or '',
  (function()
    for _, f in ipairs(figures) do if f.busy and f.goal then return ' (* = measured while the machine was busy)' end end
    return ''
  end)()))

-- build/bench.json: the machine, then one record per figure.
local doc = {
  date = os.date '!%Y-%m-%dT%H:%M:%SZ',
  machine = { cores = machine.cores, model = machine.model, load_start = report.load_start,
              load_end = report.load_end, others = report.others, busy = report.busy, reasons = report.reasons },
  figures = figures,
}
local jpath = outdir .. '/bench.json'
local f = assert(io.open(jpath, 'w'))
f:write(json.encode(doc, '  '), '\n')
f:close()

-- build/bench.svg: host / reference for every figure with a reference,
-- min-max whiskers, the goal as a red tick, 1x as a dashed line.
local groups = {}
for _, fig in ipairs(figures) do
  if fig.ratio then
    groups[#groups + 1] = { label = fig.name, bars = { {
      label = fig.name, value = fig.ratio, min = fig.ratio_spread[1], max = fig.ratio_spread[2],
      goal = fig.goal and fig.goal.on == 'ratio' and fig.goal.value or nil,
      color = fig.goal and (fig.met and '#59a14f' or '#e15759') or '#4e79a7',
      text = ('%sx %s%s'):format(fmt(fig.ratio), fig.reference.name,
        fig.goal and (fig.met and ' (goal met)' or ' (goal MISSED)') or ''),
    } } }
  end
end
local spath = chart.write(outdir .. '/bench.svg', chart.bars {
  title = 'host against its references (time or size, host / reference; lower is better except speedups)',
  subtitle = ('%d cores, %s; load %.2f -> %.2f; others used %.2f cores%s'):format(machine.cores, machine.model,
    report.load_start, report.load_end, report.others, report.busy and ' (BUSY)' or ''),
  unit = 'x reference (log scale)', groups = groups, label_width = 400, width = 1100, right = 260, log = true,
  marks = { { value = 1, label = '1x' } },
  note = 'bars: median ratio; whiskers: the widest range from min-max of both; red tick: the goal',
})
print(('\nWrote %s and %s'):format(jpath, spath))
if #failed > 0 then
  print('FAILED: ' .. table.concat(failed, ', '))
  os.exit(1)
end
