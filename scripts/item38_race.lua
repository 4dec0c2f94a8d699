-- scripts/item38_race.lua: Effective Python, Item 38, "Use Lock to prevent
-- data races in threads", in Lua on host's threads.
--
-- Five OS threads share one Counter (a plain Lua table) in one Lua heap.
-- `self.count = self.count + offset` is a read, an add and a write: a thread
-- switch between them loses updates. host.thread.Lock fixes it.
local thread = require 'host.thread'
local time = require 'host.time'

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

local how_many = 100000  -- 10^5, as in the book
local expected = 5 * how_many

-- Runs `runs` times; prints one line per run and a summary. Returns the
-- number of runs that lost updates.
local function experiment(title, new_counter, runs)
  print(('\n%s'):format(title))
  local wrong, lost_share, seconds = 0, 0, 0
  for _ = 1, runs do
    local counter = new_counter()
    local t0 = time.monotonic()
    run_threads(worker, how_many, counter)
    seconds = seconds + (time.monotonic() - t0)
    print(('  Counter should be %d, found %d'):format(expected, counter.count))
    if counter.count ~= expected then
      wrong = wrong + 1
      lost_share = lost_share + (expected - counter.count) / expected
    end
  end
  print(('  %d of %d runs lost updates%s; %.0f ns per increment'):format(
    wrong, runs, wrong > 0 and (', %.1f %% lost on average'):format(100 * lost_share / wrong) or '',
    seconds / (runs * expected) * 1e9))
  return wrong
end

print('Item 38: 5 threads x ' .. how_many .. ' increments of one shared counter')

thread.setswitchinterval { instructions = 100 }
experiment('Unlocked Counter, jittered instruction policy (a switch every ~100 VM instructions):',
           Counter.new, 5)

thread.setswitchinterval(0.005)
experiment('Unlocked Counter, default interval policy (switch requested after 5 ms):',
           Counter.new, 5)
print([[
  Why it differs: a waiting thread asks the holder to yield by a signal that
  arms a one-shot hook, and Lua's VM notices a hook armed that way only at a
  call, a return or a loop's back edge. The book's `self.count = self.count
  + offset` has none inside, so it never splits; CPython 3.11 hides the same
  race for the same reason (its eval breaker is checked at calls and
  back edges). The instruction policy above switches anywhere.]])
experiment('Unlocked CallingCounter (a call inside the read-modify-write), interval policy, 5 ms:',
           CallingCounter.new, 5)
print([[
  Lua runs a thread's 10^5 increments in about as long as one 5 ms interval,
  so few switches happen at all (CPython, ~10x slower per increment, gets
  dozens). With a 20 us interval the switches come often enough to land
  inside the call:]])
thread.setswitchinterval(0.00002)
experiment('Unlocked CallingCounter, interval policy, 20 us:', CallingCounter.new, 5)

thread.setswitchinterval { instructions = 100 }
local wrong = experiment('LockingCounter, jittered instruction policy:', LockingCounter.new, 5)
thread.setswitchinterval(0.005)
wrong = wrong + experiment('LockingCounter, default interval policy:', LockingCounter.new, 3)
assert(wrong == 0, 'a LockingCounter lost updates')
