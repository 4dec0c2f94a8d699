-- spec/experiments_spec.lua: the experiment scripts (make demo) in quick
-- mode (HOST_DEMO_QUICK=1): each runs, prints its machine and a conclusion,
-- and writes SVG pictures that Debian's rsvg-convert renders and that hold
-- the expected bars and labels. Nothing here looks at a time.
local sh = require 'spec.support.sh'
local q = sh.quote

package.path = 'scripts/lib/?.lua;' .. package.path
local measure = require 'measure'
local chart = require 'chart'
local json = require 'json'

-- A fresh directory for pictures.
local function tempdir()
  local name = os.tmpname()
  os.remove(name)
  assert(os.execute('mkdir -p ' .. q(name)))
  return name
end

local slurp = sh.slurp

-- Renders `svg_path` to PNG with rsvg-convert; returns the PNG bytes.
local function render(svg_path)
  local png = svg_path .. '.png'
  local _, err, code = sh.run('rsvg-convert ' .. q(svg_path) .. ' -o ' .. q(png))
  assert(code == 0, 'rsvg-convert failed on ' .. svg_path .. ': ' .. err)
  local bytes = slurp(png)
  os.remove(png)
  return bytes
end

local count = sh.count  -- matches of a plain string

-- Runs a script in quick mode, pictures into `dir`; returns its stdout.
local function run(script, dir)
  local out, err, code = sh.run(('HOST_DEMO_QUICK=1 HOST_DEMO_OUT=%s %s %s'):format(q(dir), q(sh.host), q(script)), 60)
  assert(code == 0, script .. ' failed: ' .. err)
  return out
end

-- Checks a picture: it renders, and holds each label of `labels` as text.
local function check_picture(path, labels)
  local svg = assert(slurp(path), 'no picture at ' .. path)
  assert.matches('^<svg ', svg)
  local png = render(path)
  assert.is_true(#png > 100)
  assert.are.equal('\137PNG', png:sub(1, 4))
  for _, label in ipairs(labels) do
    assert.is_truthy(svg:find('>' .. chart.escape(label), 1, true), 'no label "' .. label .. '" in ' .. path)
  end
  return svg
end

local have_python = os.execute 'command -v python3 >/dev/null 2>&1'

describe('experiments', function()
  it('rsvg-convert is there (make test installs librsvg2-bin)', function()
    local _, _, code = sh.run 'command -v rsvg-convert'
    assert.are.equal(0, code)
  end)

  it('Item 41 prints its machine and conclusion and draws times and speedups', function()
    local dir = tempdir()
    local out = run('scripts/item41_gcd.lua', dir)
    assert.matches('machine: %d+ cores, .*; load average [%d.]+ at start, [%d.]+ at end', out)
    assert.matches('\nConclusion: quick mode', out)
    assert.matches('Pictures: ' .. dir:gsub('%p', '%%%0') .. '/item41_times.svg', out)
    local svg = check_picture(dir .. '/item41_times.svg',
      { 'serial', 'threads', 'processes', 'interpreters', 'host' })
    -- One bar per way for host, and CPython's twins for three of them.
    assert.are.equal(have_python and 7 or 4, count(svg, 'class="bar"'))
    if have_python then assert.is_truthy(svg:find('>CPython<', 1, true)) end
    svg = check_picture(dir .. '/item41_speedup.svg', { 'threads', 'processes', 'interpreters', 'ideal', 'workers' })
    assert.are.equal(3 * 2, count(svg, 'class="point"'))  -- quick mode: 1 and 2 workers
    os.execute('rm -rf ' .. q(dir))
  end)

  it('Item 38 draws the lost updates of each run of each policy', function()
    local dir = tempdir()
    local out = run('scripts/item38_race.lua', dir)
    assert.matches('machine: %d+ cores', out)
    assert.matches('\nConclusion: ', out)
    assert.matches('LockingCounter, default interval policy:\n.-0 of 2 runs lost updates', out)
    local policies = { 'Counter, ~100 instructions', 'Counter, 5 ms', 'CallingCounter, 5 ms',
                       'CallingCounter, 20 us', 'LockingCounter, ~100 instructions', 'LockingCounter, 5 ms' }
    local labels = { 'run 1', 'run 2' }
    for _, p in ipairs(policies) do labels[#labels + 1] = p end
    local svg = check_picture(dir .. '/item38_lost.svg', labels)
    assert.are.equal(#policies * 2, count(svg, 'class="bar"'))
    os.execute('rm -rf ' .. q(dir))
  end)

  it('Item 41 and Item 38 draw their schedules: a lane per thread and worker process', function()
    local dir = tempdir()
    local out = run('scripts/item41_trace.lua', dir)
    assert.matches('8 gcd tasks on a thread pool, then on a process pool', out, 1, true)
    local svg = check_picture(dir .. '/item41_trace.svg',
      { 'main', 'ThreadPoolExecutor-0_0', 'ThreadPoolExecutor-0_1', 'process-pool worker' })
    assert.are.equal(2, count(svg, 'class="process-name"') - 1)  -- two worker processes
    assert.are.equal(8, count(svg, 'class="task"'))               -- each gcd, one box
    out = run('scripts/item38_trace.lua', dir)
    assert.matches('With a Lock:%s+(%d+) of %1 %(0 lost%)', out)
    local labels = { 'main' }
    for i = 1, 5 do labels[#labels + 1] = 'unlocked ' .. i; labels[#labels + 1] = 'locked ' .. i end
    svg = check_picture(dir .. '/item38_trace.svg', labels)
    assert.are.equal(11, count(svg, 'class="lane"'))
    os.execute('rm -rf ' .. q(dir))
  end)

  it('Item 40 draws memory per generator against per blocked OS thread', function()
    local dir = tempdir()
    local out = run('scripts/item40_coroutines.lua', dir)
    assert.matches('Received: First\nReceived: Second\n10\n4\n4\n%-1\n', out)
    assert.matches('machine: %d+ cores', out)
    assert.matches('\nConclusion: ', out)
    local svg = check_picture(dir .. '/item40_memory.svg',
      { 'suspended generator', 'suspended raw coroutine', 'blocked OS thread (RSS)' })
    assert.are.equal(3, count(svg, 'class="bar"'))
    os.execute('rm -rf ' .. q(dir))
  end)
end)

describe('scripts/lib/measure.lua', function()
  it('gives median, min and max of a sample', function()
    local s = measure.summary { 5, 1, 4, 2, 3 }
    assert.are.same({ 3, 1, 5, 5 }, { s.median, s.min, s.max, s.n })
    assert.are.equal(2.5, measure.summary({ 4, 1, 2, 3 }).median)
    assert.are.equal(4 / 3, measure.spread(s))
  end)

  it('calls the machine busy, and says why, when others use more than BUSY_CORES', function()
    local saved = measure.BUSY_CORES
    measure.BUSY_CORES = -1  -- any use at all by other processes is too much
    local ok, r = pcall(function() return measure.watch(0.05).stop() end)
    measure.BUSY_CORES = saved
    assert(ok, r)
    assert.is_true(r.busy)
    assert.matches('other processes kept [%d.]+ of the %d+ cores busy meanwhile', table.concat(r.reasons, '; '))
    assert.matches('^machine: %d+ cores', measure.describe(r))
  end)
end)

describe('scripts/lib/chart.lua', function()
  it('escapes labels and draws one bar per value with its whisker', function()
    local svg = chart.bars { title = 'a < b & c', unit = 'ms',
      groups = { { label = 'g', bars = { { label = 'x', value = 1, min = 0.5, max = 2 }, { label = 'y', value = 3 } } } } }
    assert.is_truthy(svg:find('a &lt; b &amp; c', 1, true))
    assert.are.equal(2, count(svg, 'class="bar"'))
    assert.are.equal(1, count(svg, 'class="whisker"'))
    local dir = tempdir()
    chart.write(dir .. '/c.svg', svg)
    assert.are.equal('\137PNG', render(dir .. '/c.svg'):sub(1, 4))
    os.execute('rm -rf ' .. q(dir))
  end)
end)

describe('make bench (bench/run.lua)', function()
  -- Two fake benchmarks with fixed figures, and one that fails.
  local fake = [[
    local bench = dofile 'bench/lib.lua'
    local s = bench.measure.summary
    bench.figure { name = 'fast thing', value = s { 1e-6, 2e-6, 3e-6 }, unit = 'us', scale = 1e6,
                   ref = s { 8e-6, 10e-6, 12e-6 }, ref_name = 'CPython', goal = { op = '<=', value = 0.25, on = 'ratio' } }
    bench.figure { name = 'slow thing', value = s { 5e-9, 6e-9, 7e-9 }, unit = 'ns', scale = 1e9,
                   goal = { op = '<=', value = 4, on = 'value' } }
    bench.figure { name = 'speedup', value = s { 1.5, 1.9, 2 }, unit = 'x', goal = { op = '>=', value = 1.8, on = 'value' } }
    bench.figure { name = 'plain figure', value = bench.once(3), unit = 'B' }
    bench.figure { name = 'walled thing', value = s { 4e-6, 5e-6, 6e-6 }, unit = 'us', scale = 1e6,
                   ref = s { 10e-6 }, ref_name = 'CPython', goal = { op = '<=', value = 0.25, on = 'ratio' },
                   floor = { name = 'C round trip', value = s { 3e-6, 4e-6, 5e-6 } } }
    bench.figure { name = 'slack thing', value = s { 4e-6 }, unit = 'us', scale = 1e6,
                   ref = s { 10e-6 }, ref_name = 'CPython', goal = { op = '<=', value = 0.25, on = 'ratio' },
                   floor = { name = 'C call', value = s { 1e-6 } } }
    bench.figure { name = 'beaten thing', value = s { 3e-6 }, unit = 'us', scale = 1e6,
                   ref = s { 10e-6 }, ref_name = 'CPython', goal = { op = '<=', value = 0.25, on = 'ratio' },
                   floor = { name = 'C sleep', value = s { 4e-6 } } }
  ]]

  it('prints a summary of the goals, writes bench.json and bench.svg, and says where', function()
    local dir = tempdir()
    local good = dir .. '/good_bench.lua'
    local bad = dir .. '/bad_bench.lua'
    local f = assert(io.open(good, 'w')) f:write(fake) f:close()
    f = assert(io.open(bad, 'w')) f:write 'error("broken bench")' f:close()
    local out, _, code = sh.run(('%s bench/run.lua %s %s %s'):format(q(sh.host), q(dir), q(good), q(bad)), 60)
    assert.are.equal(1, code)  -- one benchmark failed
    assert.matches('FAILED: ' .. bad:gsub('%p', '%%%0'), out)
    local summary = out:match '== Summary: figures with a goal\n(.*)$'
    assert.is_truthy(summary)
    assert.matches('machine: %d+ cores', summary)
    assert.matches('fast thing[^\n]* 2 us %(1%-3%)[^\n]*CPython 10 us[^\n]*0%.2x[^\n]*<= 0%.25x CPython%s+met', summary)
    assert.matches('slow thing[^\n]*6 ns %(5%-7%)[^\n]*<= 4 ns%s+MISSED', summary)
    assert.matches('speedup[^\n]*1%.9 x[^\n]*>= 1%.8x%s+met', summary)
    assert.is_falsy(summary:find('plain figure', 1, true))  -- no goal, not in the summary
    -- A missed goal under its floor says so; one above its floor does not.
    assert.matches('walled thing[^\n]*<= 0%.25x CPython%s+MISSED, floor 0%.4x', summary)
    assert.matches('slack thing[^\n]*<= 0%.25x CPython%s+MISSED *\n', summary)
    assert.matches('floor: C round trip 4 us  = 0%.4x CPython, so the goal is out of reach', out)
    assert.matches('floor: C call 1 us  = 0%.1x CPython\n', out)
    -- A floor that host beats bounds nothing.
    assert.matches('beaten thing[^\n]*<= 0%.25x CPython%s+MISSED *\n', summary)
    assert.matches('floor: C sleep 4 us  = 0%.4x CPython\n', out)
    assert.matches('6 goals: 2 met, 4 MISSED %(1 of them under a floor measured in the same run%)', summary)
    assert.matches('Wrote ' .. dir:gsub('%p', '%%%0') .. '/bench.json and ' .. dir:gsub('%p', '%%%0') .. '/bench.svg',
      summary)

    local doc = json.decode(assert(slurp(dir .. '/bench.json')))
    assert.are.equal(7, #doc.figures)
    assert.are.equal(false, doc.figures[7].floor.blocks_goal)
    assert.are.same({ 'C round trip', 4, 0.4, true }, { doc.figures[5].floor.name, doc.figures[5].floor.value,
      doc.figures[5].floor.ratio, doc.figures[5].floor.blocks_goal })
    assert.are.equal(false, doc.figures[6].floor.blocks_goal)
    local fast = doc.figures[1]
    assert.are.same({ 'fast thing', 2, 'us', 1, 3, 'CPython', 10, true },
      { fast.name, fast.value, fast.unit, fast.spread[1], fast.spread[2], fast.reference.name,
        fast.reference.value, fast.met })
    assert.are.same({ '<=', 0.25, 'ratio' }, { fast.goal.op, fast.goal.value, fast.goal.on })
    assert.are.equal(false, doc.figures[2].met)
    assert.is_number(doc.machine.cores)
    assert.is_boolean(doc.machine.busy)

    local svg = check_picture(dir .. '/bench.svg', { 'fast thing' })
    assert.are.equal(4, count(svg, 'class="bar"'))   -- four figures have a reference
    assert.are.equal(4, count(svg, 'class="goal"'))  -- and a goal on its ratio

    local table_md = sh.run(('%s bench/readme_table.lua %s'):format(q(sh.host), q(dir .. '/bench.json')))
    assert.matches('| fast thing | 2 us %(1–3%) | CPython 10 us | 0%.2x | <= 0%.25x CPython: met |', table_md)
    assert.matches('| slow thing | 6 ns %(5–7%) |  |  | <= 4 ns: %*%*MISSED%*%* |', table_md)
    assert.matches('| walled thing | 5 us %(4–6%) | CPython 10 us | 0%.5x | <= 0%.25x CPython: %*%*MISSED%*%* '
      .. '%(floor: C round trip 4 us = 0%.4x%) |', table_md)
    assert.matches('| slack thing | 4 us %(4–4%) | CPython 10 us | 0%.4x | <= 0%.25x CPython: %*%*MISSED%*%* |', table_md)
    os.execute('rm -rf ' .. q(dir))
  end)
end)
