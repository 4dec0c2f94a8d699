-- bench/host_bench.lua: what the program itself costs. Startup of
-- `host -e ''` against `lua5.4 -e ''`, and the book's serial gcd under host
-- against stock lua5.4 (goal: host adds nothing, ratio <= 1.03).
local bench = dofile 'bench/lib.lua'
local measure = bench.measure
local host = bench.host

-- Wall seconds per start of `cmd`, over `n` starts in one shell loop.
local function startup(cmd, n)
  local loop = ('for i in $(seq %d); do %s -e "" || exit 1; done'):format(n, cmd)
  return measure.time(bench.capture, loop) / n
end

-- 5 rounds, alternating host and lua5.4.
local n, th, tl = 200, {}, {}
for i = 1, 5 do
  th[i], tl[i] = startup(host, n), startup('lua5.4', n)
end
bench.figure { name = 'startup host -e ""', value = measure.summary(th), unit = 'us', scale = 1e6,
               ref = measure.summary(tl), ref_name = 'lua5.4' }

-- CPU seconds of the gcd kernel under each, alternating runs.
local hs, ls = {}, {}
for i = 1, 7 do
  hs[i] = tonumber(bench.capture(host .. ' bench/gcd_kernel.lua 3'))
  ls[i] = tonumber(bench.capture('lua5.4 bench/gcd_kernel.lua 3'))
end
bench.figure { name = 'serial gcd x3 (CPU time)', value = measure.summary(hs), unit = 's',
               ref = measure.summary(ls), ref_name = 'lua5.4', goal = { op = '<=', value = 1.03, on = 'ratio' } }
