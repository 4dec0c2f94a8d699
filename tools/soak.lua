-- tools/soak.lua [ROUNDS]: the pools under faults, counted. `make soak` runs
-- it under --switch-instructions, so preemption lands anywhere.
--
-- Each round drives the three pools with tasks that return, raise (plain
-- strings, error objects, and objects whose __tostring raises), get
-- cancelled while pending, get interrupted while running (the interpreter
-- pool), plus one process-pool round whose worker is killed mid-run. Every
-- future has a done-callback. At the end every submitted future must be
-- done, every callback must have run exactly once, and each outcome must be
-- one its task could give: anything else is a lost or stuck task. Prints
-- the counts and exits 1 when something was lost.
local futures = require "host.futures"
local thread = require "host.thread"
local herror = require "host.error"

local ROUNDS = tonumber(arg[1]) or 3
local TASKS = 400          -- per pool and round
local WAIT = 60            -- seconds any single wait may take

local counts = {
  submitted = 0, ok = 0, raised = 0, cancelled = 0, interrupted = 0,
  broken = 0, callbacks = 0, lost = 0, wrong = 0,
}
local callback_lock = thread.Lock()

-- The tasks: kind k of task i. They run in other universes and processes
-- too, so they use nothing but their arguments and the standard library.
local function task(kind, i)
  if kind == 0 then return i, i * 2 end
  if kind == 1 then error("plain " .. i) end
  if kind == 2 then error(setmetatable({}, { __tostring = function() error("tostring raises") end })) end
  if kind == 3 then local x = 0; for j = 1, 2000 do x = x + j end; return x end
  if kind == 4 then  -- long enough to be interrupted or cancelled
    local deadline = os.clock() + 0.05
    while os.clock() < deadline do end
    return "slow"
  end
end

local function on_done(f)
  callback_lock:acquire(WAIT)
  counts.callbacks = counts.callbacks + 1
  callback_lock:release()
end

-- Submits TASKS tasks to ex; returns the futures with what each did.
local function drive(ex, can_interrupt)
  local fs = {}
  for i = 1, TASKS do
    local kind = i % 5
    local f = ex:submit(task, kind, i)
    f:add_done_callback(on_done)
    counts.submitted = counts.submitted + 1
    fs[#fs + 1] = { f = f, kind = kind, i = i }
    if i % 17 == 0 then f:cancel() end
  end
  if can_interrupt then  -- the slow tasks running now fail with "interrupted!"
    for _, e in ipairs(fs) do
      if e.kind == 4 and e.f:running() then e.f:cancel { interrupt = true } end
    end
  end
  return fs
end

-- Checks each future's outcome against its task; counts.
local function settle(fs)
  for _, e in ipairs(fs) do
    local f = e.f
    local ok, a, b = pcall(f.result, f, WAIT)
    if not f:done() then
      counts.lost = counts.lost + 1
    elseif f:cancelled() then
      counts.cancelled = counts.cancelled + 1
    elseif ok then
      local right = (e.kind == 0 and a == e.i and b == e.i * 2) or (e.kind == 3 and a == 2001000)
          or (e.kind == 4 and a == "slow")
      if right then counts.ok = counts.ok + 1 else counts.wrong = counts.wrong + 1 end
    elseif herror.is(a, "BrokenProcessPool") then
      counts.broken = counts.broken + 1
    elseif tostring(select(2, pcall(tostring, a))):find("interrupted!", 1, true) then
      counts.interrupted = counts.interrupted + 1
    elseif e.kind == 1 or e.kind == 2 then
      counts.raised = counts.raised + 1
    else
      counts.wrong = counts.wrong + 1
      io.stderr:write("soak: unexpected outcome of task ", e.i, ": ", tostring(select(2, pcall(tostring, a))), "\n")
    end
  end
end

local start = os.time()
for round = 1, ROUNDS do
  do
    local ex <close> = futures.ThreadPoolExecutor { max_workers = 4 }
    settle(drive(ex, false))
  end
  do
    local ex <close> = futures.InterpreterPoolExecutor { max_workers = 2 }
    settle(drive(ex, true))
  end
  do
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 2, max_tasks_per_child = 50 })
    settle(drive(ex, false))
  end
  do  -- a worker killed while the pool is busy: everything still ends
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 2 })
    local fs = drive(ex, false)
    os.execute("kill -KILL " .. ex:pids()[1] .. " 2>/dev/null")
    settle(fs)
  end
  io.stderr:write(string.format("soak: round %d of %d done\n", round, ROUNDS))
end

-- Callbacks run on the pools' own threads: give the last ones a moment.
local deadline = os.time() + WAIT
while counts.callbacks < counts.submitted and os.time() < deadline do thread.sleep(0.01) end

print(string.format("soak: %d rounds in %d s, %d tasks submitted: %d ok, %d raised, "
  .. "%d cancelled, %d interrupted, %d broken pool; %d callbacks; %d lost, %d wrong",
  ROUNDS, os.time() - start, counts.submitted, counts.ok, counts.raised, counts.cancelled,
  counts.interrupted, counts.broken, counts.callbacks, counts.lost, counts.wrong))
local fine = counts.lost == 0 and counts.wrong == 0 and counts.callbacks == counts.submitted
os.exit(fine and 0 or 1)
