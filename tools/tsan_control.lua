-- tools/tsan_control.lua: the negative control of `make tsan`. Two threads
-- increment one table field. Under the real GIL this is race-free for
-- ThreadSanitizer; in the HOST_NO_GIL_CONTROL build TSan must report it.
local thread = require 'host.thread'
local counter = { n = 0 }
local function work() for _ = 1, 100000 do counter.n = counter.n + 1 end end
local a, b = thread.start(work), thread.start(work)
assert(a:join(60))
assert(b:join(60))
print('counter', counter.n)
