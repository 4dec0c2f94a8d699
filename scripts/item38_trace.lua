-- scripts/item38_trace.lua: Item 38's race as a picture. Five threads add
-- to one counter without a lock, then five add with a Lock, while
-- host.trace records the run. In the picture the GIL moves between the
-- five lanes at each switch request (the red marks): a thread can lose the
-- GIL between reading the count and writing it back, which is how the
-- unlocked run loses updates. With the Lock, a thread that takes the GIL
-- while another holds the Lock waits for it (a hatched "wait host.Lock"
-- span) and no update is lost.
-- Picture: item38_trace.svg in $HOST_DEMO_OUT (default build/demo).
local here = debug.getinfo(1, 'S').source:match '^@(.*)[/\\]' or '.'
package.path = here .. '/lib/?.lua;' .. package.path
local measure = require 'measure'
local thread = require 'host.thread'
local trace = require 'host.trace'

local HOW_MANY = measure.quick() and 20000 or 100000  -- increments per thread

-- The read-modify-write with a call in its middle (item38_race.lua's
-- CallingCounter): host preempts at a call, a return or a loop's back
-- edge, as CPython 3.10+ does, so this is where a switch splits it.
local function add(a, b) return a + b end

-- Five threads add 1 to counter.count HOW_MANY times each; returns the count.
local function race(label, lock)
  trace.mark(label)
  local counter = { count = 0 }
  local threads = {}
  for i = 1, 5 do
    threads[i] = thread.Thread { name = label .. ' ' .. i, target = function()
      for _ = 1, HOW_MANY do
        if lock then
          local _ <close> = lock:acquire(60)
          local value = counter.count
          counter.count = add(value, 1)
        else
          local value = counter.count
          counter.count = add(value, 1)
        end
      end
    end }
    threads[i]:start()
  end
  for i = 1, 5 do assert(threads[i]:join(60)) end
  return counter.count
end

local path = os.getenv 'I38_TRACE' or (measure.outdir() .. '/item38_trace.svg')
if trace.enabled() then trace.stop() end  -- run under --trace: this picture is ours
-- a short switch interval: more switches, more chances to lose an update
thread.setswitchinterval(0.001)
trace.start(path)
local unlocked = race('unlocked')
local locked = race('locked', thread.Lock())
trace.stop()
local want = 5 * HOW_MANY
print(('Item 38 schedule: 5 threads x %d increments, switch interval 1 ms.'):format(HOW_MANY))
print(('  Without a lock: %d of %d (%d lost).'):format(unlocked, want, want - unlocked))
print(('  With a Lock:    %d of %d (%d lost).'):format(locked, want, want - locked))
print('Picture: ' .. path)
