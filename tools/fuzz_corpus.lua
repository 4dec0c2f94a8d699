-- tools/fuzz_corpus.lua DIR: writes the seed corpus of `make fuzz` into DIR,
-- one valid host.serialize payload per file, covering every tag the
-- decoder reads with default options (and a few it must refuse).
local serialize = require 'host.serialize'
local herror = require 'host.error'
local dir = assert(arg[1], 'usage: fuzz_corpus.lua DIR')

local FT, T2 = {}, {}
serialize.register('fuzz.T', FT)   -- the fuzzer registers this name too
serialize.register('fuzz.T2', T2)  -- it does not know this one: refused

local shared = { 'shared' }
local cycle = { name = 'cycle' }
cycle.self = cycle
local keyed = {}
keyed[keyed] = keyed
local deep = {}
local c = deep
for _ = 1, 50 do
  c[1] = { k = 'v' }
  c = c[1]
end
local long = string.rep('long string, memoized ', 4)

local P = table.pack
local seeds = {
  P(),
  P(nil),
  P(nil, true, false, nil),
  P(0, 1, -1, 127, 128, 300, -300, math.maxinteger, math.mininteger),
  P(0.5, -0.0, 1 / 0, -1 / 0, 0 / 0, 1e308, 2 ^ 53),
  P('', 'a', 'hello', '\0\1\2\255', long, long, { long, long }),
  P({ 1, 2, 3 }),
  P({ a = 1, b = 'two', [3] = 3.5, [true] = false }),
  P({ 1, 2, nil, 4, x = 'y' }),
  P({ shared, shared, s = shared }),
  P(cycle),
  P(keyed),
  P(deep),
  P(setmetatable({ x = 1 }, FT)),
  P(setmetatable({ 1, 2 }, T2)),
  P(herror.new('TimeoutError', 'too slow', herror.new('Cause', 'inner'))),
  P({ [{}] = {}, [1.5] = -2, [-7] = 'neg' }),
  P({ { { { 'nested' } } } }, 'after'),
  P(_G),
  P(print),
  P(function(x) return x end),
}
for i, values in ipairs(seeds) do
  local okd, payload = pcall(serialize.dumps, table.unpack(values, 1, values.n))
  if okd then
    local f = assert(io.open(('%s/seed-%02d'):format(dir, i), 'wb'))
    f:write(payload)
    f:close()
  end
end
-- A userdata of the fuzzer's own type (unknown to host): UDATA tag 13, the
-- type name, the payload; an empty payload loads as nil.
local f = assert(io.open(dir .. '/seed-udata', 'wb'))
f:write('HS\1\2', '\13\9fuzz.Blob\3abc', '\13\9fuzz.Blob\0')
f:close()
