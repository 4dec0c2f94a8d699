-- scripts/item40_coroutines.lua: Effective Python, Item 40 ("Consider
-- coroutines to run many functions concurrently") on host.generator.
-- The book's my_coroutine and minimize, its Game of Life written its way
-- (cells are generators yielding Query and Transition, composed with
-- yield_from), then what a generator costs here.
--
-- `require 'scripts.item40_coroutines'` returns the pieces without running
-- anything (spec/generator_spec.lua and bench/generator_bench.lua use them).
local generator = require 'host.generator'
local time = require 'host.time'

local yield, yield_from = coroutine.yield, generator.yield_from
local item40 = {}

-- The book's first coroutine: prints what it is sent.
item40.my_coroutine = generator.wrap(function()
  while true do
    local received = yield()
    print('Received: ' .. tostring(received))
  end
end)

-- The running minimum of the values sent in. A plain function, so the
-- benchmarks can run the very same body as a raw coroutine.
function item40.minimize_body()
  local current = yield()
  while true do
    local value = yield(current)
    current = math.min(value, current)
  end
end
item40.minimize = generator.wrap(item40.minimize_body)

-- ---- The Game of Life, the book's way ----

local ALIVE, EMPTY = '*', '-'
item40.ALIVE, item40.EMPTY = ALIVE, EMPTY

-- namedtuple's twins: records that share a metatable, so that
-- `getmetatable(item) == Query` plays isinstance.
local Query = { __name = 'Query' }
local function query(y, x)
  return setmetatable({ y = y, x = x }, Query)
end
local Transition = { __name = 'Transition' }
local function transition(y, x, state)
  return setmetatable({ y = y, x = x, state = state }, Transition)
end
local TICK = setmetatable({}, { __name = 'TICK' })

-- Asks for the 8 neighbours' states one Query at a time; returns how many live.
local function count_neighbors_body(y, x)
  local n_ = yield(query(y + 1, x + 0))  -- North
  local ne = yield(query(y + 1, x + 1))  -- Northeast
  local e_ = yield(query(y + 0, x + 1))  -- East
  local se = yield(query(y - 1, x + 1))  -- Southeast
  local s_ = yield(query(y - 1, x + 0))  -- South
  local sw = yield(query(y - 1, x - 1))  -- Southwest
  local w_ = yield(query(y + 0, x - 1))  -- West
  local nw = yield(query(y + 1, x - 1))  -- Northwest
  local count = 0
  for _, state in ipairs { n_, ne, e_, se, s_, sw, w_, nw } do
    if state == ALIVE then count = count + 1 end
  end
  return count
end
local count_neighbors = generator.wrap(count_neighbors_body)

-- The rules of Life for one cell.
local function game_logic(state, neighbors)
  if state == ALIVE then
    if neighbors < 2 then return EMPTY      -- Die: Too few
    elseif neighbors > 3 then return EMPTY  -- Die: Too many
    end
  elseif neighbors == 3 then
    return ALIVE                            -- Regenerate
  end
  return state
end
item40.game_logic = game_logic

-- One cell: its state, its neighbours (delegated), then its Transition.
local step_cell = generator.wrap(function(y, x)
  local state = yield(query(y, x))
  local neighbors = yield_from(count_neighbors(y, x))
  local next_state = game_logic(state, neighbors)
  yield(transition(y, x, next_state))
end)

-- Every cell of the grid, then TICK, forever.
item40.simulate = generator.wrap(function(height, width)
  while true do
    for y = 0, height - 1 do
      for x = 0, width - 1 do
        yield_from(step_cell(y, x))
      end
    end
    yield(TICK)
  end
end)

-- Not the book's: the same cells with each yield_from replaced by a plain
-- call. A Lua coroutine is stackful, so a function that its body calls can
-- yield for it: one generator in all instead of two more per cell. The
-- benchmarks run it to show what the delegation costs.
local function step_cell_calls(y, x)
  local state = yield(query(y, x))
  local neighbors = count_neighbors_body(y, x)
  local next_state = game_logic(state, neighbors)
  yield(transition(y, x, next_state))
end

item40.simulate_calls = generator.wrap(function(height, width)
  while true do
    for y = 0, height - 1 do
      for x = 0, width - 1 do
        step_cell_calls(y, x)
      end
    end
    yield(TICK)
  end
end)

-- The grid the simulation runs on; coordinates wrap around.
local Grid = {}
Grid.__index = Grid
item40.Grid = Grid

function Grid.new(height, width)
  local rows = {}
  for y = 1, height do
    rows[y] = {}
    for x = 1, width do rows[y][x] = EMPTY end
  end
  return setmetatable({ height = height, width = width, rows = rows }, Grid)
end

function Grid:query(y, x)
  return self.rows[y % self.height + 1][x % self.width + 1]
end

function Grid:assign(y, x, state)
  self.rows[y % self.height + 1][x % self.width + 1] = state
end

function Grid:__tostring()
  local lines = {}
  for y, row in ipairs(self.rows) do lines[y] = table.concat(row) .. '\n' end
  return table.concat(lines)
end

-- Drives the simulation for one generation: answers Queries from `grid`,
-- applies Transitions to a new grid, stops at TICK.
function item40.live_a_generation(grid, sim)
  local progeny = Grid.new(grid.height, grid.width)
  local item = sim:next()
  while item ~= TICK do
    if getmetatable(item) == Query then
      local state = grid:query(item.y, item.x)
      item = sim:send(state)
    else  -- Must be a Transition
      progeny:assign(item.y, item.x, item.state)
      item = sim:next()
    end
  end
  return progeny
end

-- The book's 5x9 grid with a glider.
function item40.glider()
  local grid = Grid.new(5, 9)
  grid:assign(0, 3, ALIVE)
  grid:assign(1, 4, ALIVE)
  grid:assign(2, 2, ALIVE)
  grid:assign(2, 3, ALIVE)
  grid:assign(2, 4, ALIVE)
  return grid
end

-- The book's ColumnPrinter: grids side by side under their numbers.
local function columns(texts)
  local split = {}
  local row_count = 1
  for i, text in ipairs(texts) do
    split[i] = {}
    for line in text:gmatch '[^\n]+' do split[i][#split[i] + 1] = line end
    row_count = math.max(row_count, #split[i] + 1)
  end
  local rows = {}
  for j = 0, row_count - 1 do
    local parts = {}
    for i, lines in ipairs(split) do
      local line = lines[math.max(1, j)]
      if j == 0 then
        local padding = (' '):rep(#line // 2)
        parts[i] = padding .. (i - 1) .. padding
      else
        parts[i] = line
      end
    end
    rows[#rows + 1] = table.concat(parts, ' | ')
  end
  return table.concat(rows, '\n')
end
item40.columns = columns

-- ---- What it costs ----
-- Each kernel runs `n` operations; the caller times it.
item40.kernels = {}

-- Create a generator, prime it, send it one value.
function item40.kernels.create_prime_send(n)
  local minimize = item40.minimize
  for i = 1, n do
    local it = minimize()
    it:next()
    it:send(i)
  end
end

-- `send` to a live generator.
function item40.kernels.send(n)
  local it = item40.minimize()
  it:next()
  for i = 1, n do it:send(i) end
end

-- The same body as a raw coroutine, resumed with coroutine.resume.
function item40.kernels.resume(n)
  local co = coroutine.create(item40.minimize_body)
  coroutine.resume(co)
  for i = 1, n do coroutine.resume(co, i) end
end

-- create_prime_send with a raw coroutine over the same body: the floor
-- under it (a generator is a coroutine plus its wrapper).
function item40.kernels.create_resume_resume(n)
  local create, resume, body = coroutine.create, coroutine.resume, item40.minimize_body
  for i = 1, n do
    local co = create(body)
    resume(co)
    resume(co, i)
  end
end

-- `n` generations of the glider.
function item40.kernels.life(n)
  local grid, sim = item40.glider(), item40.simulate(5, 9)
  for _ = 1, n do grid = item40.live_a_generation(grid, sim) end
end

-- `n` generations of the glider on simulate_calls (no yield_from).
function item40.kernels.life_calls(n)
  local grid, sim = item40.glider(), item40.simulate_calls(5, 9)
  for _ = 1, n do grid = item40.live_a_generation(grid, sim) end
end

-- Bytes per object that `make` returns, over `n` of them alive at once.
function item40.bytes_per(make, n)
  local keep = {}
  for i = 1, n do keep[i] = false end
  collectgarbage()
  collectgarbage()
  local before = collectgarbage 'count'
  for i = 1, n do keep[i] = make() end
  collectgarbage()
  collectgarbage()
  local bytes = (collectgarbage 'count' - before) * 1024 / n
  keep = nil
  collectgarbage()
  return bytes
end

-- A suspended generator (primed minimize), for bytes_per.
function item40.suspended_generator()
  local it = item40.minimize()
  it:next()
  return it
end

-- A suspended raw coroutine over the same body, for bytes_per.
function item40.suspended_coroutine()
  local co = coroutine.create(item40.minimize_body)
  coroutine.resume(co)
  return co
end

-- Samples of seconds per operation of each kernel(n), over `rounds` rounds
-- that alternate the kernels (so a busy machine slows them alike): one
-- { median =, min =, max =, n =, values = } per kernel.
function item40.samples(n, rounds, ...)
  local kernels, times = { ... }, {}
  for j = 1, #kernels do times[j] = {} end
  for i = 1, rounds do
    for j, kernel in ipairs(kernels) do
      local t0 = time.monotonic()
      kernel(n)
      times[j][i] = (time.monotonic() - t0) / n
    end
  end
  for j = 1, #kernels do
    local t = table.move(times[j], 1, rounds, 1, {})
    table.sort(t)
    times[j] = { median = t[(rounds + 1) // 2], min = t[1], max = t[rounds], n = rounds, values = times[j] }
  end
  return table.unpack(times)
end

if select('#', ...) > 0 and tostring((...)):match 'item40_coroutines$' then
  return item40
end

-- ---- Run as a script: the book's outputs, then the figures ----

local it = item40.my_coroutine()
it:next()  -- Prime the coroutine
it:send 'First'
it:send 'Second'

it = item40.minimize()
it:next()  -- Prime the generator
print(it:send(10))
print(it:send(4))
print(it:send(22))
print(it:send(-1))

local grid = item40.glider()
print(grid)
local texts = {}
local sim = item40.simulate(grid.height, grid.width)
for i = 1, 5 do
  texts[i] = tostring(grid)
  grid = item40.live_a_generation(grid, sim)
end
print(columns(texts))
print()

-- The figures: medians of ROUNDS rounds with min-max, on a watched machine.
local here = debug.getinfo(1, 'S').source:match '^@(.*)[/\\]' or '.'
package.path = here .. '/lib/?.lua;' .. package.path
local measure = require 'measure'
local chart = require 'chart'
local quick = measure.quick()
local ROUNDS = quick and 3 or 7
local N_SEND, N_CREATE, N_LIFE = quick and 20000 or 500000, quick and 5000 or 100000, quick and 10 or 100
local ALIVE_N, THREADS = quick and 10000 or 100000, quick and 100 or 2000

local watch = measure.watch(quick and 0.1)
local machine = watch.machine
print(('What it costs, on %d cores (%s), load average %.2f at start; median of %d rounds (min-max):')
  :format(machine.cores, machine.model, machine.load[1], ROUNDS))
local k, samples = item40.kernels, item40.samples
local send, resume = samples(N_SEND, ROUNDS, k.send, k.resume)
local create = samples(N_CREATE, ROUNDS, k.create_prime_send)
local life = samples(N_LIFE, ROUNDS, k.life)
local gen_bytes = item40.bytes_per(item40.suspended_generator, ALIVE_N)
local co_bytes = item40.bytes_per(item40.suspended_coroutine, ALIVE_N)
print(('create + prime + first send       %s ns'):format(measure.format(measure.scale(create, 1e9), '%.0f')))
print(('send to a live generator          %s ns  (coroutine.resume: %s ns, %.2fx)')
  :format(measure.format(measure.scale(send, 1e9), '%.0f'), measure.format(measure.scale(resume, 1e9), '%.0f'),
          send.median / resume.median))
print(('memory per suspended generator    %7.0f B   (a raw coroutine: %.0f B; %d alive)')
  :format(gen_bytes, co_bytes, ALIVE_N))
print(('Game of Life, 5x9, per generation %s us'):format(measure.format(measure.scale(life, 1e6), '%.1f')))

-- OS threads for comparison: start up to THREADS host threads that block on
-- one Event, and read the process's RSS and virtual size before and after.
local function status_kb(field)
  local f = assert(io.open('/proc/self/status'))
  local text = f:read 'a'
  f:close()
  return tonumber(text:match(field .. ':%s*(%d+) kB'))
end
local thread = require 'host.thread'
local gate = thread.Event()
local rss0, vm0 = status_kb 'VmRSS', status_kb 'VmSize'
local threads, refused = {}, nil
for i = 1, THREADS do
  local ok, t = pcall(thread.start, function() gate:wait(60) end)
  if not ok then refused = t break end
  threads[i] = t
end
local rss1, vm1 = status_kb 'VmRSS', status_kb 'VmSize'
gate:set()
for _, t in ipairs(threads) do t:join(60) end
local n = #threads
local rss_kb, vm_mb = (rss1 - rss0) / n, (vm1 - vm0) / n / 1024
print(('OS threads: %d blocked at once%s'):format(n, refused and (' (the machine refused more: ' .. refused .. ')') or ''))
print(('memory per blocked OS thread      %7.1f KB RSS, %.1f MB virtual (a generator: %.2f KB)')
  :format(rss_kb, vm_mb, gen_bytes / 1024))

-- The verdict, from this run: the book's point is that a coroutine costs
-- about a kilobyte where a thread costs megabytes, so thousands are cheap.
local report = watch.stop()
print('\n' .. measure.describe(report))
local reasons = report.reasons
for _, x in ipairs { { 'create + prime + send', create }, { 'send', send }, { 'Game of Life', life } } do
  local name, s = x[1], x[2]
  if measure.spread(s) > measure.WIDE then
    reasons[#reasons + 1] = ('the %s times spread %.0f %% around their median'):format(name, measure.spread(s) * 100)
  end
end
local verdict
if gen_bytes < rss_kb * 1024 then
  verdict = ('as the book says: a suspended generator takes %.0f B, %.0fx less than the %.1f KB of resident '
    .. 'memory (and %.1f MB of address space) a blocked OS thread takes.'):format(gen_bytes, rss_kb * 1024 / gen_bytes,
    rss_kb, vm_mb)
else
  verdict = ('this run does NOT agree with the book: a suspended generator took %.0f B, a blocked OS thread only '
    .. '%.1f KB of resident memory.'):format(gen_bytes, rss_kb)
end
print('Conclusion: ' .. verdict)
if #reasons > 0 then
  print('The times above are unreliable: the machine was too busy to tell (' .. table.concat(reasons, '; ')
    .. '). Memory figures do not depend on load.')
end

local path = chart.write(measure.outdir() .. '/item40_memory.svg', chart.bars {
  title = 'Item 40: memory per suspended generator and per blocked OS thread',
  subtitle = ('%d generators, %d threads alive at once; %d cores, load %.2f -> %.2f'):format(ALIVE_N, n,
    machine.cores, report.load_start, report.load_end),
  unit = 'KB', label_width = 240,
  groups = {
    { label = 'suspended generator', bars = { { label = 'generator', value = gen_bytes / 1024 } } },
    { label = 'suspended raw coroutine', bars = { { label = 'coroutine', value = co_bytes / 1024 } } },
    { label = 'blocked OS thread (RSS)', bars = { { label = 'thread', value = rss_kb,
      text = ('%.1f KB RSS (+%.1f MB virtual)'):format(rss_kb, vm_mb) } } },
  },
})
print(('\nPicture: %s'):format(path))
