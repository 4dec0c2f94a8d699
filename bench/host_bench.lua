-- bench/host_bench.lua: what the program itself costs. Startup of
-- `host -e ''` against `lua5.4 -e ''`, and the seed's serial gcd run under
-- host against stock lua5.4 (goal: host adds nothing, ratio <= 1.03).
local bench = dofile 'bench/lib.lua'
local host = bench.host

-- Wall seconds per start of `cmd`, over `n` starts in one shell loop.
local function startup(cmd, n)
  local loop = ('for i in $(seq %d); do %s -e "" || exit 1; done'):format(n, cmd)
  return bench.median(function() bench.capture(loop) end, 5) / n
end

local n = 200
local t_host, t_lua = startup(host, n), startup('lua5.4', n)
bench.report('startup host -e ""', t_host * 1e6, 'us')
bench.report('startup lua5.4 -e ""', t_lua * 1e6, 'us')
bench.ratio('startup host/lua5.4', t_host, t_lua)

-- Median CPU seconds of the gcd kernel under `interp`, alternating runs.
local function gcd_seconds(interp)
  return tonumber(bench.capture(interp .. ' bench/gcd_kernel.lua 3'))
end
local hs, ls = {}, {}
for i = 1, 7 do
  hs[i] = gcd_seconds(host)
  ls[i] = gcd_seconds('lua5.4')
end
table.sort(hs)
table.sort(ls)
bench.report('serial gcd x3 under host', hs[4], 's')
bench.report('serial gcd x3 under lua5.4', ls[4], 's')
bench.ratio('serial gcd host/lua5.4', hs[4], ls[4], '<= 1.03')
