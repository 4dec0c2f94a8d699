-- scripts/item38_race.lua: Effective Python, Item 38, "Use Lock to prevent
-- data races in threads", in Lua on host's threads.
--
-- Five OS threads share one Counter (a plain Lua table) in one Lua heap.
-- `self.count = self.count + offset` is a read, an add and a write: a thread
-- switch between them loses updates. host.thread.Lock fixes it.
-- Each policy runs a fixed number of times; every run's lost updates and
-- thread switches are printed and drawn in item38_lost.svg in
-- $HOST_DEMO_OUT (default build/demo). HOST_DEMO_QUICK=1: 10^4 increments
-- per thread, 2 runs per policy.
local here = debug.getinfo(1, 'S').source:match '^@(.*)[/\\]' or '.'
package.path = here .. '/lib/?.lua;' .. package.path
local measure = require 'measure'
local chart = require 'chart'
local thread = require 'host.thread'
local time = require 'host.time'

local quick = measure.quick()

-- The book's Counter.
local Counter = {}
Counter.__index = Counter
function Counter.new() return setmetatable({ count = 0 }, Counter) end
function Counter:increment(offset)
  self.count = self.count + offset
end

-- A Counter whose read-modify-write calls a function in the middle: with
-- signal-armed preemption (like CPython 3.10+), a switch lands only at a
-- call, a return or a loop's back edge, so only this shape can split.
local CallingCounter = setmetatable({}, { __index = Counter })
CallingCounter.__index = CallingCounter
function CallingCounter.new() return setmetatable({ count = 0 }, CallingCounter) end
local function add(a, b) return a + b end
function CallingCounter:increment(offset)
  local value = self.count
  self.count = add(value, offset)
end

-- The book's LockingCounter: `with self.lock:` is a to-be-closed acquire.
local LockingCounter = setmetatable({}, { __index = Counter })
LockingCounter.__index = LockingCounter
function LockingCounter.new()
  return setmetatable({ count = 0, lock = thread.Lock() }, LockingCounter)
end
function LockingCounter:increment(offset)
  local _ <close> = self.lock:acquire()
  self.count = self.count + offset
end

local function worker(sensor_index, how_many, counter)
  for _ = 1, how_many do
    -- Read from the sensor (sensor_index) ...
    counter:increment(1)
  end
end

local function run_threads(func, how_many, counter)
  local threads = {}
  for i = 1, 5 do
    threads[i] = thread.start(func, i, how_many, counter)
  end
  for _, t in ipairs(threads) do assert(t:join(60)) end
end

local how_many = quick and 10000 or 100000  -- 10^5, as in the book
local expected = 5 * how_many
local RUNS = quick and 2 or 5

local watch = measure.watch(quick and 0.1)
local machine = watch.machine
print(('Item 38: 5 threads x %d increments of one shared counter, %d runs per policy'):format(how_many, RUNS))
print(('on %d cores (%s), load average %.2f at start'):format(machine.cores, machine.model, machine.load[1]))

-- Runs the experiment RUNS times under the current switch policy; prints
-- one line per run and a summary. Returns { lost = {per run}, wrong =
-- runs that lost updates, ns = sample of ns per increment, switches = {} }.
local function experiment(title, new_counter)
  print(('\n%s'):format(title))
  local r = { lost = {}, switches = {}, wrong = 0 }
  local ns = {}
  for i = 1, RUNS do
    local counter = new_counter()
    local s0, t0 = thread.switches(), time.monotonic()
    run_threads(worker, how_many, counter)
    ns[i] = (time.monotonic() - t0) / expected * 1e9
    r.switches[i] = thread.switches() - s0
    r.lost[i] = expected - counter.count
    if r.lost[i] ~= 0 then r.wrong = r.wrong + 1 end
    print(('  Counter should be %d, found %d (%d lost, %d thread switches)')
      :format(expected, counter.count, r.lost[i], r.switches[i]))
  end
  r.ns = measure.summary(ns)
  local lost = measure.summary(r.lost)
  print(('  %d of %d runs lost updates (median %.0f lost, %.2f %%); %s ns per increment')
    :format(r.wrong, RUNS, lost.median, 100 * lost.median / expected, measure.format(r.ns, '%.0f')))
  return r
end

local results = {}
local function run(key, title, new_counter)
  results[#results + 1] = { key = key, r = experiment(title, new_counter) }
  return results[#results].r
end

thread.setswitchinterval { instructions = 100 }
local unlocked = run('Counter, ~100 instructions',
  'Unlocked Counter, jittered instruction policy (a switch every ~100 VM instructions):', Counter.new)

thread.setswitchinterval(0.005)
run('Counter, 5 ms', 'Unlocked Counter, default interval policy (switch requested after 5 ms):', Counter.new)
print([[
  Why it differs: a waiting thread asks the holder to yield by a signal that
  arms a one-shot hook, and Lua's VM notices a hook armed that way only at a
  call, a return or a loop's back edge. The book's `self.count = self.count
  + offset` has none inside, so it never splits; CPython 3.11 hides the same
  race for the same reason (its eval breaker is checked at calls and
  back edges). The instruction policy above switches anywhere.]])
local calling = run('CallingCounter, 5 ms',
  'Unlocked CallingCounter (a call inside the read-modify-write), interval policy, 5 ms:', CallingCounter.new)
local thread_ms = calling.ns.median * how_many / 1e6
local switches = measure.summary(calling.switches)
print(([[
  At %.0f ns per increment a thread's %d increments take about %.1f ms, that is
  %.1f intervals of 5 ms: this run saw a median of %.0f switches per run, so few
  land inside the call. With a 20 us interval the switches come more often:]])
  :format(calling.ns.median, how_many, thread_ms, thread_ms / 5, switches.median))
thread.setswitchinterval(0.00002)
run('CallingCounter, 20 us', 'Unlocked CallingCounter, interval policy, 20 us:', CallingCounter.new)

thread.setswitchinterval { instructions = 100 }
local locked1 = run('LockingCounter, ~100 instructions', 'LockingCounter, jittered instruction policy:',
  LockingCounter.new)
thread.setswitchinterval(0.005)
local locked2 = run('LockingCounter, 5 ms', 'LockingCounter, default interval policy:', LockingCounter.new)
assert(locked1.wrong + locked2.wrong == 0, 'a LockingCounter lost updates')

-- The verdict, from this run only: the book says an unlocked counter loses
-- updates when threads switch inside its read-modify-write, and a locked one never does.
local report = watch.stop()
print('\n' .. measure.describe(report))
local verdict
local unlocked_switches = measure.summary(unlocked.switches).median
if unlocked.wrong > 0 then
  verdict = ('as the book says: the unlocked Counter lost updates in %d of %d runs when threads switched '
    .. 'anywhere (median %.0f lost of %d), the LockingCounter in none of %d runs.')
    :format(unlocked.wrong, RUNS, measure.summary(unlocked.lost).median, expected, 2 * RUNS)
elseif report.busy or unlocked_switches < 10 then
  verdict = ('the machine was too busy to tell: the unlocked Counter lost nothing, with a median of only %.0f '
    .. 'thread switches per run (%s).'):format(unlocked_switches,
    #report.reasons > 0 and table.concat(report.reasons, '; ') or 'the threads barely overlapped')
else
  verdict = ('this run does NOT agree with the book: the unlocked Counter lost no update in %d runs '
    .. 'despite a median of %.0f switches per run.'):format(RUNS, unlocked_switches)
end
print('Conclusion: ' .. verdict)

local groups = {}
for _, x in ipairs(results) do
  local g = { label = x.key, bars = {} }
  for i, lost in ipairs(x.r.lost) do
    g.bars[i] = { label = 'run ' .. i, value = lost, color = lost > 0 and '#e15759' or '#59a14f',
                  text = ('%d lost, %d switches'):format(lost, x.r.switches[i]) }
  end
  groups[#groups + 1] = g
end
local path = chart.write(measure.outdir() .. '/item38_lost.svg', chart.bars {
  title = ('Item 38: updates lost per run, 5 threads x %d increments'):format(how_many),
  subtitle = ('%d cores, load %.2f -> %.2f, others used %.2f cores'):format(machine.cores, report.load_start,
    report.load_end, report.others),
  unit = 'lost updates', groups = groups, label_width = 280,
})
print(('\nPicture: %s'):format(path))
