-- bench/generator_bench.lua: what host.generator costs. `send` against a
-- raw coroutine.resume of the same body (goal: <= 1.15x); create + prime +
-- send (goal: <= 1.0x CPython's), memory per suspended generator (goal: no
-- more than 1128 B, issue 17) and the Game of Life per generation (goal:
-- <= 0.8x CPython's) against python3 running the book's own code in the
-- same invocation. The Lua side is scripts/item40_coroutines.lua. The
-- create and Life figures carry the floor measured under them: a raw
-- coroutine created and resumed twice, and Life with yield_from as plain
-- calls.
local bench = dofile 'bench/lib.lua'
local item40 = require 'scripts.item40_coroutines'

-- The Python twin: Item 40's minimize and Game of Life as the book writes
-- them, timed the way the Lua kernels are. Prints "name value-of-each-run"
-- (seconds per op; bytes per generator once).
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
    return ' '.join(repr(x) for x in t)

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

-- python3 runs its 7 rounds of each kernel, then ours run 7 alternating rounds.
local py = {}
if bench.have 'python3' then
  local script = os.tmpname()
  local f = assert(io.open(script, 'w'))
  f:write(PYTHON)
  f:close()
  local ok, out = pcall(bench.capture, ('python3 %s %d %d %d'):format(script, N_CREATE, N_SEND, N_LIFE))
  os.remove(script)
  assert(ok, out)
  py = bench.parse(out)
end
local k, samples = item40.kernels, item40.samples
local send, resume = samples(N_SEND, 7, k.send, k.resume)
local create, raw_create = samples(N_CREATE, 7, k.create_prime_send, k.create_resume_resume)
local life, life_calls = samples(N_LIFE, 7, k.life, k.life_calls)

bench.figure { name = 'generator send, against coroutine.resume', value = send, unit = 'ns', scale = 1e9,
               ref = resume, ref_name = 'coroutine.resume', goal = { op = '<=', value = 1.15, on = 'ratio' } }
bench.figure { name = "generator send, against CPython's", value = send, unit = 'ns', scale = 1e9,
               ref = py.send, ref_name = 'CPython' }
-- The floor under it: a raw coroutine over the same body, created and
-- resumed twice, with no generator around it (a coroutine is a whole
-- lua_State with its own stack; a generator adds its userdata and two
-- checks of where it waits, which spare it a finalizer).
bench.figure { name = 'generator create + prime + first send', value = create, unit = 'ns', scale = 1e9,
               ref = py.create_prime_send, ref_name = 'CPython',
               goal = py.create_prime_send and { op = '<=', value = 1.0, on = 'ratio' },
               floor = { name = 'raw coroutine create + resume + resume', value = raw_create } }
local gen_bytes = item40.bytes_per(item40.suspended_generator, 100000)
local co_bytes = item40.bytes_per(item40.suspended_coroutine, 100000)
-- One suspended for the third time carries a guard (bindings/generator.c).
local guarded_bytes = item40.bytes_per(function()
  local it = item40.suspended_generator()
  it:send(1)
  it:send(2)
  return it
end, 100000)
bench.figure { name = 'memory per suspended generator', value = bench.once(gen_bytes), unit = 'B',
               ref = py.bytes, ref_name = 'CPython', goal = { op = '<=', value = 1128, on = 'value' },
               note = ('a raw coroutine over the same body: %.0f B; a coroutine is a whole lua_State with its own '
                 .. 'stack and CallInfo list, a CPython generator one frame sized to its code; one suspended '
                 .. 'a third time, or where closing it runs code, carries the guard of its finalizer: %.0f B')
                 :format(co_bytes, guarded_bytes) }
-- Under it: the same cells with yield_from as plain calls inside one
-- generator; the book's form makes, starts and ends two generators per
-- cell, each a coroutine.
bench.figure { name = 'Item 40 Game of Life 5x9, per generation', value = life, unit = 'us', scale = 1e6,
               ref = py.life, ref_name = 'CPython', goal = py.life and { op = '<=', value = 0.8, on = 'ratio' },
               floor = { name = 'the same cells, yield_from as plain calls', value = life_calls } }
