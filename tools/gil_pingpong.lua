-- tools/gil_pingpong.lua: the GIL's hand-off between two threads, the twin
-- of tools/pingpong.c (a C futex ping-pong): two threads pass a turn back
-- and forth through two Events, each pass a notify (a direct hand-off of
-- the GIL) and a wait. Prints ns per round trip, the median of 5 runs of
-- n (default 20000): `host tools/gil_pingpong.lua [n]`.
local thread = require 'host.thread'
local time = require 'host.time'
local n = tonumber(arg[1]) or 20000
local res = {}
for r = 1, 5 do
  local ping, pong = thread.Event(), thread.Event()
  local t = thread.start(function()
    for _ = 1, n do assert(ping:wait(10)) ping:clear() pong:set() end
  end)
  local t0 = time.monotonic()
  for _ = 1, n do ping:set() assert(pong:wait(10)) pong:clear() end
  res[r] = (time.monotonic() - t0) / n * 1e9
  assert(t:join(10))
end
table.sort(res)
print(string.format('GIL ping-pong %.0f ns per round trip', res[3]))
