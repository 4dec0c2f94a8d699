-- bench/readme_table.lua: the README's "What it costs" table, generated
-- from the JSON that `make bench` writes, so the two cannot drift.
--   host bench/readme_table.lua [build/bench.json]
-- prints a Markdown table: every figure that has a reference or a goal,
-- with its median and min-max, the reference, the ratio, the goal and
-- whether it was met; then the machine it ran on.
package.path = 'scripts/lib/?.lua;' .. package.path
local json = require 'json'

local path = arg[1] or 'build/bench.json'
local f = assert(io.open(path), path .. ': no such file (run make bench first)')
local doc = json.decode(f:read 'a')
f:close()

local function fmt(x)
  if math.abs(x) >= 100 then return ('%.0f'):format(x) end
  return ('%.3g'):format(x)
end
-- A table cell: | escaped, and < before a letter (<close>) kept from reading as HTML.
local function cell(s) return (tostring(s):gsub('|', '\\|'):gsub('<(%a)', '&lt;%1')) end

-- For a missed goal that its floor puts out of reach: what that floor is.
local function floor_text(fig, unit)
  local fl = fig.floor
  if fig.met or not (fl and fl.blocks_goal) then return '' end
  return (' (floor: %s %s%s%s)'):format(fl.name, fmt(fl.value), unit,
    fl.ratio and (' = %sx'):format(fmt(fl.ratio)) or '')
end

print('| figure | host (median, min–max) | reference | host / reference | goal |')
print('|---|---|---|---|---|')
for _, fig in ipairs(doc.figures) do
  if fig.reference or fig.goal then
    local unit = fig.unit == 'x' and 'x' or (' ' .. fig.unit)
    print(('| %s | %s%s (%s–%s) | %s | %s | %s |'):format(
      cell(fig.name), fmt(fig.value), unit, fmt(fig.spread[1]), fmt(fig.spread[2]),
      fig.reference and cell(('%s %s%s'):format(fig.reference.name, fmt(fig.reference.value), unit)) or '',
      fig.ratio and (fmt(fig.ratio) .. 'x') or '',
      fig.goal and cell(fig.goal.text .. (fig.met and ': met' or ': **MISSED**') .. floor_text(fig, unit)) or ''))
  end
end
local m = doc.machine
print()
print(('Measured %s on %d cores (%s), load average %.2f at start and %.2f at end; other processes used %.2f '
  .. 'cores%s.'):format(doc.date, m.cores, m.model, m.load_start, m.load_end, m.others,
  m.busy and ' (the machine was busy: these figures are unreliable)' or ''))
