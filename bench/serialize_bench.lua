-- bench/serialize_bench.lua: host.serialize round trips (loads(dumps(x)))
-- against CPython's pickle, protocol 5, on the same data in the same run:
-- a table of 1000 short strings, both readings (k1 = 'v1'... as a dict, and
-- 'v1'... as a list), a 1 MiB string (bytes), an array of 2^18 integers (a
-- list), a nested table 4 levels by 10 (lists, 10^4 integer leaves) and a
-- closure with 3 upvalues.
-- Each figure carries its floor (bench/floor_codec.c, built by make bench):
-- a deep copy of the same value through Lua's C API, the least a codec that
-- reads Lua values and makes new ones must do.
-- pickle carries functions only by name, so the closure's reference is
-- what cloudpickle does by hand: marshal the code object, pickle the cell
-- contents, rebuild with types.FunctionType.
local bench = dofile 'bench/lib.lua'
local serialize = require 'host.serialize'
local time = require 'host.time'

-- Seconds per call of f(x), over enough calls for at least 50 ms.
local function per_call(f, x)
  local n = 1
  while true do
    local t0 = time.monotonic()
    for _ = 1, n do f(x) end
    local t = time.monotonic() - t0
    if t > 0.05 then return t / n end
    n = n * 2
  end
end

local PY = [[
import marshal, pickle, sys, time, types

def per_call(f, x):
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n): f(x)
        t = time.perf_counter() - t0
        if t > 0.05: return t / n
        n *= 2

def rt(x): return pickle.loads(pickle.dumps(x, protocol=5))

def make_closure():
    a, b, c = 1, 'two', [3]
    def f(x): return a + x, b, c
    return f

def rt_closure(f):
    code = marshal.dumps(f.__code__)
    cells = pickle.dumps(tuple(c.cell_contents for c in f.__closure__), protocol=5)
    g = types.FunctionType(marshal.loads(code), globals(), f.__name__, None,
                           tuple(types.CellType(v) for v in pickle.loads(cells)))
    assert g(1) == (2, 'two', [3])
    return g

work = {
    'strings': ({'k%d' % i: 'v%d' % i for i in range(1, 1001)}, rt),
    'strlist': (['v%d' % i for i in range(1, 1001)], rt),
    'mib': (b'x' * (1 << 20), rt),
    'ints': (list(range(1, 2**18 + 1)), rt),
    'nested': ([[[[i for i in range(10)] for _ in range(10)] for _ in range(10)] for _ in range(10)], rt),
    'closure': (make_closure(), rt_closure),
}
for name in sys.argv[1:]:
    x, f = work[name]
    print(name, per_call(f, x))
]]

local function rt(x) return serialize.loads(serialize.dumps(x)) end
local function rt_fn(f) return serialize.loads(serialize.dumps(f), { functions = true }) end

local strings, strlist = {}, {}
for i = 1, 1000 do
  strings['k' .. i] = 'v' .. i
  strlist[i] = 'v' .. i
end
local ints = {}
for i = 1, 2 ^ 18 do ints[i] = i end
local function nest(level)
  local t = {}
  for i = 1, 10 do t[i] = level == 1 and i - 1 or nest(level - 1) end
  return t
end
local a, b, c = 1, 'two', { 3 }
local function closure(x) return a + x, b, c end
assert(rt_fn(closure)(1) == 2)

local cases = {
  { 'strings', 'table of 1000 short strings (dict)', strings, rt, 0.5 },
  { 'strlist', 'table of 1000 short strings (list)', strlist, rt, 0.5 },
  { 'mib', '1 MiB string', string.rep('x', 1 << 20), rt, 0.5 },
  { 'ints', 'array of 2^18 integers', ints, rt, 0.333 },
  { 'nested', 'nested table 4 levels by 10', nest(4), rt },
  { 'closure', 'closure with 3 upvalues', closure, rt_fn },
}

-- The machines are noisy: 5 rounds, each one python3 run of every case and
-- one run of ours, so both sides see the same noise; medians are reported.
local script = os.tmpname()
local f = assert(io.open(script, 'w'))
f:write(PY)
f:close()
local names = {}
for i, case in ipairs(cases) do names[i] = case[1] end
local floor_dir = (os.getenv 'HOST_BENCH_PINGPONG' or 'build/bench/futex_pingpong'):match '^(.*)/' or '.'
local open_floor = package.loadlib(floor_dir .. '/floor_codec.so', 'luaopen_floor_codec')
local floor_copy = open_floor and open_floor().copy
if not floor_copy then print('  (no ' .. floor_dir .. '/floor_codec.so: make bench builds it)') end
local ref, ours, floors = {}, {}, {}
for _ = 1, 5 do
  local ok, out = pcall(bench.capture, 'python3 ' .. script .. ' ' .. table.concat(names, ' '))
  if not ok then os.remove(script) error(out) end
  for name, secs in out:gmatch '(%S+) (%S+)' do
    ref[name] = ref[name] or {}
    table.insert(ref[name], tonumber(secs))
  end
  for _, case in ipairs(cases) do
    ours[case[1]] = ours[case[1]] or {}
    table.insert(ours[case[1]], per_call(case[4], case[3]))
    if floor_copy and case[4] == rt then
      floors[case[1]] = floors[case[1]] or {}
      table.insert(floors[case[1]], per_call(floor_copy, case[3]))
    end
  end
end
os.remove(script)

for _, case in ipairs(cases) do
  local key, label, _, _, goal = table.unpack(case)
  bench.figure { name = 'serialize round trip, ' .. label, value = bench.measure.summary(ours[key]), unit = 'us',
                 scale = 1e6, ref = ref[key] and bench.measure.summary(ref[key]), ref_name = 'pickle',
                 goal = goal and ref[key] and { op = '<=', value = goal, on = 'ratio' },
                 floor = floors[key] and { name = 'deep copy through the C API',
                                           value = bench.measure.summary(floors[key]) } }
end
