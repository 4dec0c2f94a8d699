-- bench/generator_bench.lua: what host.generator costs. `send` against a
-- raw coroutine.resume of the same body (goal: <= 1.15x); create + prime +
-- send, memory per suspended generator (goal: <= 1.2 KB) and the Game of
-- Life per generation against python3 running the book's own code in the
-- same invocation. The Lua side is scripts/item40_coroutines.lua.
local bench = dofile 'bench/lib.lua'
local item40 = require 'scripts.item40_coroutines'

-- The Python twin: Item 40's minimize and Game of Life as the book writes
-- them, timed the way the Lua kernels are. Prints "name seconds-or-bytes".
local PYTHON = [==[
import gc, sys, time, tracemalloc
from collections import namedtuple

def minimize():
    current = yield
    while True:
        value = yield current
        current = min(value, current)

Query = namedtuple('Query', ('y', 'x'))
Transition = namedtuple('Transition', ('y', 'x', 'state'))
ALIVE, EMPTY, TICK = '*', '-', object()

def count_neighbors(y, x):
    n_ = yield Query(y + 1, x + 0)  # North
    ne = yield Query(y + 1, x + 1)  # Northeast
    e_ = yield Query(y + 0, x + 1)  # East
    se = yield Query(y - 1, x + 1)  # Southeast
    s_ = yield Query(y - 1, x + 0)  # South
    sw = yield Query(y - 1, x - 1)  # Southwest
    w_ = yield Query(y + 0, x - 1)  # West
    nw = yield Query(y + 1, x - 1)  # Northwest
    neighbor_states = [n_, ne, e_, se, s_, sw, w_, nw]
    count = 0
    for state in neighbor_states:
        if state == ALIVE:
            count += 1
    return count

def game_logic(state, neighbors):
    if state == ALIVE:
        if neighbors < 2:
            return EMPTY
        elif neighbors > 3:
            return EMPTY
    else:
        if neighbors == 3:
            return ALIVE
    return state

def step_cell(y, x):
    state = yield Query(y, x)
    neighbors = yield from count_neighbors(y, x)
    next_state = game_logic(state, neighbors)
    yield Transition(y, x, next_state)

def simulate(height, width):
    while True:
        for y in range(height):
            for x in range(width):
                yield from step_cell(y, x)
        yield TICK

class Grid:
    def __init__(self, height, width):
        self.height = height
        self.width = width
        self.rows = []
        for _ in range(self.height):
            self.rows.append([EMPTY] * self.width)

    def query(self, y, x):
        return self.rows[y % self.height][x % self.width]

    def assign(self, y, x, state):
        self.rows[y % self.height][x % self.width] = state

def live_a_generation(grid, sim):
    progeny = Grid(grid.height, grid.width)
    item = next(sim)
    while item is not TICK:
        if isinstance(item, Query):
            state = grid.query(item.y, item.x)
            item = sim.send(state)
        else:
            progeny.assign(item.y, item.x, item.state)
            item = next(sim)
    return progeny

def glider():
    grid = Grid(5, 9)
    for y, x in ((0, 3), (1, 4), (2, 2), (2, 3), (2, 4)):
        grid.assign(y, x, ALIVE)
    return grid

def create_prime_send(n):
    for i in range(n):
        it = minimize()
        next(it)
        it.send(i)

def send(n):
    it = minimize()
    next(it)
    for i in range(n):
        it.send(i)

def life(n):
    grid, sim = glider(), simulate(5, 9)
    for _ in range(n):
        grid = live_a_generation(grid, sim)

def per_op(kernel, n):
    t = []
    for _ in range(7):
        t0 = time.monotonic()
        kernel(n)
        t.append((time.monotonic() - t0) / n)
    t.sort()
    return t[3]

def bytes_per_generator(n):
    keep = [None] * n
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        it = minimize()
        next(it)
        keep[i] = it
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / n

n_create, n_send, n_life = (int(a) for a in sys.argv[1:4])
print('create_prime_send', per_op(create_prime_send, n_create))
print('send', per_op(send, n_send))
print('life', per_op(life, n_life))
print('bytes', bytes_per_generator(100000))
]==]

local N_CREATE, N_SEND, N_LIFE = 100000, 500000, 100

-- Median of a list of numbers.
local function median(t)
  table.sort(t)
  return t[(#t + 1) // 2]
end

-- Three rounds, each: python3 once (its own medians), then the Lua kernels.
local script = os.tmpname()
local f = assert(io.open(script, 'w'))
f:write(PYTHON)
f:close()
local py = { create_prime_send = {}, send = {}, life = {}, bytes = {} }
local lua = { create = {}, send = {}, resume = {}, life = {} }
local k = item40.kernels
-- Medians of seconds per op of each kernel over 7 alternating rounds.
local function per_op(n, ...)
  local s = { item40.samples(n, 7, ...) }
  for i, x in ipairs(s) do s[i] = x.median end
  return table.unpack(s)
end
for round = 1, 3 do
  local out = bench.capture(('python3 %s %d %d %d'):format(script, N_CREATE, N_SEND, N_LIFE))
  for name, value in out:gmatch '(%S+) (%S+)\n' do
    py[name][round] = tonumber(value)
  end
  lua.send[round], lua.resume[round] = per_op(N_SEND, k.send, k.resume)
  lua.create[round] = per_op(N_CREATE, k.create_prime_send)
  lua.life[round] = per_op(N_LIFE, k.life)
end
os.remove(script)
for _, t in pairs(py) do t.m = median(t) end
for _, t in pairs(lua) do t.m = median(t) end

bench.report('send to a live generator', lua.send.m * 1e9, 'ns')
bench.report('coroutine.resume, same body', lua.resume.m * 1e9, 'ns')
bench.report('python3 generator.send, same body', py.send.m * 1e9, 'ns')
bench.ratio('send/coroutine.resume', lua.send.m, lua.resume.m, '<= 1.15')
bench.ratio('send host/python3', lua.send.m, py.send.m)

bench.report('create + prime + send', lua.create.m * 1e9, 'ns')
bench.report('python3 create + prime + send', py.create_prime_send.m * 1e9, 'ns')
bench.ratio('create + prime + send host/python3', lua.create.m, py.create_prime_send.m)

local gen_bytes = item40.bytes_per(item40.suspended_generator, 100000)
local co_bytes = item40.bytes_per(item40.suspended_coroutine, 100000)
bench.report('memory per suspended generator', gen_bytes, 'B')
bench.report('raw coroutine suspended, same body', co_bytes, 'B')
bench.report('python3 memory per suspended generator', py.bytes.m, 'B')
bench.ratio('memory per generator / 1.2 KB', gen_bytes, 1.2 * 1024, '<= 1')
print('note: a coroutine is a whole lua_State with its own stack (40 slots of 16 B'
  .. ' at the least) and CallInfo list; a CPython generator holds one frame sized'
  .. ' to its code')

bench.report('Game of Life 5x9 per generation', lua.life.m * 1e6, 'us')
bench.report('python3 Game of Life 5x9 per generation', py.life.m * 1e6, 'us')
bench.ratio('Game of Life host/python3', lua.life.m, py.life.m)
