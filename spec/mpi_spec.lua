-- spec/mpi_spec.lua: host.mpi in world mode (issue 20). Each world is a
-- `mpiexec -n 3 host -l host.mpi.run script.lua` run under `timeout`; the
-- specs run under `make test-mpi` (which installs Debian's Open MPI and
-- builds the module) and are pending under plain `make test`.
local sh = require 'spec.support.sh'
local q = sh.quote

-- Without the module, require "host.mpi" says why, whatever the build.
describe('host.mpi where host was built without MPI', function()
  it('raises a clear error, not a search list', function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute('mkdir -p ' .. q(dir .. '/host') .. ' && cp bindings/mpi/stub.lua '
      .. q(dir .. '/host/mpi.lua')))
    local _, err, code = sh.run('LUA_PATH_5_4=' .. q(dir .. '/?.lua') .. ' LUA_CPATH_5_4= '
      .. q(sh.host) .. [[ -e 'require "host.mpi"']], 10)
    os.execute('rm -rf ' .. q(dir))
    assert.are.equal(1, code)
    assert.matches('host.mpi: this host was built without MPI support', err, 1, true)
    assert.matches('openmpi-bin libopenmpi-dev', err, 1, true)
  end)
end)

-- host finds the modules it builds beside itself, after the user's own entries.
describe('host.mpi on the paths of host itself', function()
  local build = sh.host:match '^(.*)/host$'
  it('finds host.mpi and host.mpi.run in the build tree without LUA_PATH or LUA_CPATH', function()
    local out, err, code = sh.run('env -u LUA_PATH_5_4 -u LUA_CPATH_5_4 -u LUA_PATH -u LUA_CPATH '
      .. q(sh.host) .. [[ -e 'print(package.searchpath("host.mpi.run", package.path))
print(package.searchpath("host.mpi", package.cpath) or package.searchpath("host.mpi", package.path))']], 10)
    assert.are.equal(0, code, err)
    local run, mod = out:match '^([^\n]*)\n([^\n]*)\n$'
    assert.are.equal(build .. '/lua/host/mpi/run.lua', run)
    assert.is_true(mod == build .. '/lua/host/mpi.so' or mod == build .. '/lua/host/mpi.lua', mod)
  end)
  it("keeps the user's own entries first and Lua's defaults after, and a path without ';;' as it is", function()
    local out, err, code = sh.run("LUA_CPATH_5_4='/mine/?.so;;' LUA_PATH_5_4='/mine/?.lua' "
      .. q(sh.host) .. [[ -e 'print(package.cpath) print(package.path)']], 10)
    assert.are.equal(0, code, err)
    local cpath, path = out:match '^([^\n]*)\n([^\n]*)\n$'
    assert.are.equal('/mine/?.so;' .. build .. '/lua/?.so;/usr/local/lib/lua/5.4/?.so;',
      cpath:sub(1, #('/mine/?.so;' .. build .. '/lua/?.so;/usr/local/lib/lua/5.4/?.so;')))
    assert.are.equal('/mine/?.lua', path)  -- no ';;': the whole path, as lua5.4 has it
  end)
end)

if not os.getenv 'HOST_MPI' then
  describe('host.mpi (MPI worlds)', function()
    pending('needs Open MPI: run `make test-mpi`')
  end)
  return
end

local MPIEXEC = os.getenv 'HOST_MPIEXEC' or 'mpiexec --allow-run-as-root --oversubscribe --bind-to none'
-- host finds host.mpi beside itself (build/lua/): no LUA_PATH or LUA_CPATH.
local ENV = 'env -u LUA_PATH_5_4 -u LUA_CPATH_5_4 -u LUA_PATH -u LUA_CPATH'

-- Runs the script `text` in a world of `n` ranks (default 3) under timeout,
-- in world mode unless `every` (then every rank runs the script); returns
-- stdout, stderr, exit code (124 when it hung).
local function world(text, n, every)
  local name = sh.tempfile(text)
  local out, err, code = sh.run(ENV .. ' ' .. MPIEXEC .. ' -n ' .. (n or 3) .. ' '
    .. q(sh.host) .. (every and ' ' or ' -l host.mpi.run ') .. q(name), 60)
  os.remove(name)
  return out, err, code
end

-- The prelude of every world's script.
local PRE = [[
local futures = require 'host.futures'
local mpi = require 'host.mpi'
]]

describe('host.mpi world mode', function()
  it("runs the README's example as written and prints what its --> show", function()
    local f = assert(io.open('README.md', 'rb'))
    local readme = f:read 'a'
    f:close()
    local block = readme:match '<!%-%- run by spec/mpi_spec.lua under mpiexec %-%->\n```lua\n(.-)```'
    assert.is_string(block, 'README.md has the MPI example')
    local want = {}
    for line in block:gmatch '[^\n]*' do
      local shown = line:match '%-%->%s?(.*)$'
      if shown then want[#want + 1] = shown end
    end
    local out, err, code = world(block)
    assert.are.equal(0, code, err)
    local got = {}
    for line in out:gmatch '([^\n]*)\n' do got[#got + 1] = line end
    for i, w in ipairs(want) do
      if w == '...' then break end  -- the traceback's frames vary
      assert.are.equal(w, got[i], 'output line ' .. i)
    end
  end)

  it('runs tasks on the worker ranks and gives their results', function()
    local out, err, code = world(PRE .. [[
assert(mpi.rank() == 0 and mpi.size() == 3)
assert(futures.MPIPoolExecutor == mpi.PoolExecutor)
local ex <close> = futures.MPIPoolExecutor()
local f = ex:submit(function(a, b) return a + b, require('host.mpi').rank(), nil end, 2, 3)
local n = select('#', f:result(10))
local sum, rank = f:result(10)
print('result', sum, rank >= 1 and rank <= 2, n)
local big = ex:submit(function(s) return s:upper() end, string.rep('a', 1 << 20)):result(10)
print('big', #big, big:sub(1, 3))
local capped <close> = futures.MPIPoolExecutor{max_workers = 5}
print('capped', tostring(capped):match('%(2 workers') ~= nil)
print('option', pcall(futures.MPIPoolExecutor, {maxworkers = 1}))
]])
    assert.are.equal(0, code, err)
    assert.matches('capped\ttrue\n', out, 1, true)
    assert.matches("option\tfalse\t[^\n]*unknown option 'maxworkers' %(did you mean 'max_workers'%?%)", out)
    assert.matches('result\t5\ttrue\t3\n', out, 1, true)
    assert.matches('big\t1048576\tAAA\n', out, 1, true)
  end)

  it('runs many tasks over both workers, and map in order', function()
    local out, err, code = world(PRE .. [[
local ex <close> = futures.MPIPoolExecutor()
local fs, ranks = {}, {}
for i = 1, 2000 do
  fs[i] = ex:submit(function(x) return x * 2, require('host.mpi').rank() end, i)
end
local sum = 0
for i = 1, #fs do
  local v, r = fs[i]:result(30)
  sum = sum + v
  ranks[r] = true
end
print('sum', sum, ranks[1] and ranks[2])
local got = {}
for i, v in ex:map(function(x) return x * x end, {1, 2, 3, 4, 5, 6, 7}) do got[i] = v end
print('map', table.concat(got, ','))
got = {}
for i, a, b in ex:map(function(x, y) return x + y, x - y end, {10, 20, 30}, {1, 2, 3},
                      {chunksize = 2, timeout = 30}) do
  got[i] = a .. '/' .. b
end
print('chunks', table.concat(got, ','))
]])
    assert.are.equal(0, code, err)
    assert.matches('sum\t4002000\ttrue\n', out, 1, true)
    assert.matches('map\t1,4,9,16,25,36,49\n', out, 1, true)
    assert.matches('chunks\t11/9,22/18,33/27\n', out, 1, true)
  end)

  -- the worker ranks' universes are shared too: each initializer sets its own global
  it('shares the worker ranks among several executors, each with its own initializer', function()
    local out, err, code = world(PRE .. [[
local a <close> = futures.MPIPoolExecutor{initializer = function(v) A = v end, initargs = {'a'}}
local b <close> = futures.MPIPoolExecutor{max_workers = 1, initializer = function(v) B = v end,
                                          initargs = {'b'}}
local fa, fb = {}, {}
for i = 1, 50 do
  fa[i] = a:submit(function() return A end)
  fb[i] = b:submit(function() return B end)
end
local ok = true
for i = 1, 50 do
  ok = ok and fa[i]:result(30) == 'a' and fb[i]:result(30) == 'b'
end
print('tags', ok)
]])
    assert.are.equal(0, code, err)
    assert.matches('tags\ttrue\n', out, 1, true)
  end)

  it("gives a task's error with the worker's traceback and rank", function()
    local out, err, code = world(PRE .. [[
local ex <close> = futures.MPIPoolExecutor()
local function inner() error('boom in task') end
local f = ex:submit(function() inner() end)
local e = f:exception(10)
print('E[' .. tostring(e) .. ']')
local ok, e2 = pcall(f.result, f, 10)
print('R[' .. tostring(e2) .. ']')
local g = ex:submit(function() error(require('host.error').new('ValueError', 'bad value')) end)
local ok3, e3 = pcall(g.result, g, 10)
print('K', ok3, require('host.error').is(e3, 'ValueError'), e3.message)
print('T[' .. tostring(e3.remote_traceback) .. ']')
]])
    assert.are.equal(0, code, err)
    assert.matches('E%[[^\n]*boom in task\nremote traceback %(MPI worker rank [12]%):\n', out)
    assert.matches("in upvalue 'inner'", out, 1, true)
    assert.matches('R%[[^\n]*boom in task\nremote traceback %(MPI worker rank [12]%)', out)
    assert.matches('K\tfalse\ttrue\tbad value\n', out, 1, true)
    assert.matches('T%[remote traceback %(MPI worker rank [12]%)', out)
  end)

  it('refuses an argument that cannot cross at submit, and a result at its own item, naming their paths', function()
    local out, err, code = world(PRE .. [[
local ex <close> = futures.MPIPoolExecutor()
local ok, e = pcall(ex.submit, ex, function(t) return t end, {out = io.stdout})
print('S', ok, e)
local f = ex:submit(function() return io.stdout end)
local ok2, e2 = pcall(f.result, f, 10)
print('B', ok2, e2)
local it = ex:map(function(x) if x == 3 then return coroutine.create(print) end return x end,
                  {1, 2, 3, 4}, {chunksize = 4, timeout = 10})
print('M', it())
print('M', it())
print('M', pcall(it))
print('after', ex:submit(function() return 42 end):result(10))
]])
    assert.are.equal(0, code, err)
    assert.matches('S\tfalse\t[^\n]*cannot submit argument #1: cannot serialize userdata at %.out %(FILE%*%)', out)
    assert.matches('B\tfalse\t[^\n]*cannot send the result back: cannot serialize userdata %(FILE%*%)', out)
    -- a chunk's items before the one whose result cannot come back, then its error
    assert.matches('M\t1\t1\nM\t2\t2\nM\tfalse\tcannot send the result back: cannot serialize thread '
      .. '(coroutine)\n', out, 1, true)
    assert.matches('after\t42\n', out, 1, true)
  end)

  it('breaks the executor when its initializer fails, and only that one', function()
    local out, err, code = world(PRE .. [[
local ex = futures.MPIPoolExecutor{initializer = function() error('init went wrong') end}
local f = ex:submit(function() return 1 end)
local ok, e = pcall(f.result, f, 10)
print('F', ok, require('host.error').is(e, 'BrokenProcessPool'))
print('M[' .. tostring(e) .. ']')
local ok2, e2 = pcall(ex.submit, ex, function() end)
print('S', ok2, require('host.error').is(e2, 'BrokenProcessPool'))
ex:shutdown()
local good <close> = futures.MPIPoolExecutor()
print('good', good:submit(function() return 'fine' end):result(10))
]])
    assert.are.equal(0, code, err)
    assert.matches('F\tfalse\ttrue\n', out, 1, true)
    assert.matches('M%[[^\n]*an MPI initializer failed on rank [12]: [^\n]*init went wrong', out)
    assert.matches('S\tfalse\ttrue\n', out, 1, true)
    assert.matches('good\tfine\n', out, 1, true)
  end)

  it('shuts down: waits, refuses new work, cancels queued work on request', function()
    local out, err, code = world(PRE .. [[
local thread = require 'host.thread'
local ex = futures.MPIPoolExecutor()
local fs = {}
for i = 1, 20 do
  fs[i] = ex:submit(function() require('host.thread').sleep(0.05); return i end)
end
ex:shutdown{cancel_futures = true}
local done, cancelled = 0, 0
for i = 1, 20 do
  if fs[i]:cancelled() then cancelled = cancelled + 1
  elseif fs[i]:done() and fs[i]:result(0) == i then done = done + 1 end
end
print('shutdown', done + cancelled == 20, cancelled > 0)
local ok, e = pcall(ex.submit, ex, function() end)
print('refused', ok, e)
local ex2 = futures.MPIPoolExecutor()
local called = {}
local f = ex2:submit(function() return 'cb' end)
f:add_done_callback(function(g) called[#called + 1] = g:result() end)
ex2:shutdown()
print('callback', called[1])
]])
    assert.are.equal(0, code, err)
    assert.matches('shutdown\ttrue\ttrue\n', out, 1, true)
    assert.matches('refused\tfalse\t[^\n]*cannot schedule new futures after shutdown', out)
    assert.matches('callback\tcb\n', out, 1, true)
  end)

  it('leaves no item behind in an executor that another thread shut down while submit encoded it', function()
    -- the codec runs under lua_pcall, where the hook may hand the GIL to a
    -- thread that shuts the executor down, then to its collector, which
    -- ends: submit raises then (the item used to run with no collector
    -- left, so its done-callbacks never ran: one submit in 20-30 here)
    local out, err, code = world(PRE .. [[
local thread = require 'host.thread'
thread.setswitchinterval(1e-6)
local box = { running = true }
local closer = dofile('spec/support/shutdown_race.lua')(box)
local queued, refused = 0, 0
for i = 1, 200 do
  local ex = futures.MPIPoolExecutor()
  box.ex = ex
  local submitted, f = pcall(ex.submit, ex, function() return i end)
  if submitted then
    local called = thread.Event()
    f:add_done_callback(function() called:set() end)
    local ok, got = pcall(f.result, f, 10)
    if not ok or got ~= i then print('lost', i, tostring(got)) break end
    if not called:wait(5) then print('no callback', i) break end
    queued = queued + 1
  elseif tostring(f):find('cannot schedule new futures after shutdown', 1, true) then
    refused = refused + 1
  else
    print('error', i, tostring(f))
    break
  end
end
box.running = false
assert(closer:join(10))
print('end', queued + refused)
]])
    assert.are.equal(0, code, err)
    assert.matches('end\t200\n', out, 1, true)
  end)

  it('sends each worker rank one task ahead, which then runs: cancel cannot stop it', function()
    -- as ProcessPoolExecutor's call queue: a task sent ahead is running; before
    -- it was not, and a worker waited for rank 0 between tasks
    local flag = os.tmpname()
    os.remove(flag)
    local out, err, code = world(PRE .. ([[
local thread, time = require 'host.thread', require 'host.time'
local flag = %q
-- runs until rank 0 makes the file `path`
local function hold(path)
  local t = require('host.time').monotonic()
  while require('host.time').monotonic() - t < 20 do
    local f = io.open(path)
    if f then f:close() return 'held' end
    require('host.thread').sleep(0.01)
  end
  return 'timeout'
end
local ex = futures.MPIPoolExecutor()
local fs = {ex:submit(hold, flag), ex:submit(hold, flag)}
for i = 3, 6 do fs[i] = ex:submit(function() return i end) end
local t0 = time.monotonic()
while not (fs[3]:running() and fs[4]:running()) and time.monotonic() - t0 < 20 do thread.sleep(0.01) end
print('ahead', fs[3]:running(), fs[4]:running(), fs[5]:running(), fs[3]:cancel())
ex:shutdown{wait = false, cancel_futures = true}
io.open(flag, 'w'):close()
print('results', fs[1]:result(20), fs[2]:result(20), fs[3]:result(20), fs[4]:result(20),
      fs[5]:cancelled(), fs[6]:cancelled())
]]):format(flag))
    os.remove(flag)
    assert.are.equal(0, code, err)
    assert.matches('ahead\ttrue\ttrue\tfalse\tfalse\n', out, 1, true)
    assert.matches('results\theld\theld\t3\t4\ttrue\ttrue\n', out, 1, true)
  end)

  it('sends no task ahead behind a long one, where another worker may be free first', function()
    -- before: the third task went ahead behind the first, which ran until
    -- rank 0 had the third's result, and the script waited 20 s for nothing
    local flag = os.tmpname()
    os.remove(flag)
    local out, err, code = world(PRE .. ([[
local flag = %q
-- runs until rank 0 makes the file `path`
local function hold(path)
  local t = require('host.time').monotonic()
  while require('host.time').monotonic() - t < 20 do
    local f = io.open(path)
    if f then f:close() return 'held' end
    require('host.thread').sleep(0.01)
  end
  return 'timeout'
end
local ex <close> = futures.MPIPoolExecutor()
ex:submit(function() require('host.thread').sleep(0.5) end):result(20)  -- its tasks are long
local long = ex:submit(hold, flag)
local short = ex:submit(function() return 'short' end)
local third = ex:submit(function() return 'third' end)
print('third', third:result(15), short:result(0))
io.open(flag, 'w'):close()
print('long', long:result(20))
]]):format(flag))
    os.remove(flag)
    assert.are.equal(0, code, err)
    assert.matches('third\tthird\tshort\n', out, 1, true)
    assert.matches('long\theld\n', out, 1, true)
  end)

  it('ends the job when the script on rank 0 raises, without hanging', function()
    local out, err, code = world(PRE .. [[
local ex = futures.MPIPoolExecutor()
local f = ex:submit(function() require('host.thread').sleep(0.2); return 'late' end)
f:add_done_callback(function(g) print('finished', g:result()) io.stdout:flush() end)
error('the script failed')
]])
    assert.are_not.equal(0, code)
    assert.are_not.equal(124, code)
    assert.matches('the script failed', err, 1, true)
    assert.matches('finished\tlate\n', out, 1, true)  -- exit waited for the running task
  end)

  it('ends the job with a message when rank 0 exits with tasks still running', function()
    local _, err, code = world(PRE .. [[
local ex = futures.MPIPoolExecutor()
ex:submit(function() require('host.thread').sleep(30) end)
require('host.thread').sleep(0.3)
os.exit(3)
]])
    assert.are_not.equal(0, code)
    assert.are_not.equal(124, code)
    assert.matches('host.mpi: rank 0 is exiting while 1 task still runs on worker ranks', err,
      1, true)
  end)

  it('ends the job with a message when a worker rank dies', function()
    local _, err, code = world(PRE .. [[
local ex = futures.MPIPoolExecutor()
local f = ex:submit(function()
  local pid = io.open('/proc/self/stat'):read('n')
  os.execute('kill -KILL ' .. pid)
  require('host.thread').sleep(10)
end)
f:result(30)
print('not reached')
]])
    assert.are_not.equal(0, code)
    assert.are_not.equal(124, code)
    assert.matches('rank [12] with PID %d+ on node [^\n]* exited on signal 9', err)
  end)

  it("refuses to run under another MPI's launcher", function()
    local name = sh.tempfile(PRE .. 'print("ran")')
    local out, err, code = sh.run(ENV .. ' PMI_SIZE=3 PMI_RANK=0 ' .. q(sh.host)
      .. ' -l host.mpi.run ' .. q(name), 30)
    os.remove(name)
    assert.are.equal(1, code)
    assert.are.equal('', out)
    assert.matches("host.mpi was built with Open MPI but launched by another MPI's mpiexec", err,
      1, true)
  end)

  it('says how to launch when the world has no worker ranks', function()
    local out, err, code = world(PRE .. [[
local ok, e = pcall(futures.MPIPoolExecutor)
print(ok, e)
]], 1)
    assert.are.equal(0, code, err)
    assert.matches('no worker ranks %(the world has 1 rank%): run the script with mpiexec %-n N', out)
  end)

  it('refuses mpi.serve in a task on a worker rank, which would hang the job', function()
    -- before: the task served inside itself, never returned, and the job hung at exit
    local out, err, code = world(PRE .. [[
local ex <close> = futures.MPIPoolExecutor()
local f = ex:submit(function() return require('host.mpi').serve() end)
print('serve', pcall(f.result, f, 10))
print('after', ex:submit(function() return 1 end):result(10))
]])
    assert.are.equal(0, code, err)
    assert.matches("serve\tfalse\t[^\n]*mpi.serve: rank [12] serves rank 0's tasks already", out)
    assert.matches('after\t1\n', out, 1, true)
  end)

  it("lets the universe's other threads run while MPI starts", function()
    -- before: require held the GIL through MPI_Init (~0.3 s as a singleton): 1 tick
    local out, err, code = sh.run(ENV .. ' ' .. q(sh.host) .. [[ -e '
local thread = require "host.thread"
local n, stop = 0, false
local t = thread.start(function() while not stop do n = n + 1 thread.sleep(0.001) end end)
thread.sleep(0.05)
local before = n
require "host.mpi"
local during = n - before
stop = true
t:join(5)
print("ticks", during >= 3, during)']], 30)
    assert.are.equal(0, code, err)
    assert.matches('^ticks\ttrue\t', out)
  end)

  it('runs as a singleton outside mpiexec, and says so when MPI_Init fails', function()
    local out, err, code = sh.run(ENV .. ' ' .. q(sh.host) .. [[ -e '
local mpi = require "host.mpi"
print(mpi.rank(), mpi.size(), pcall(require("host.futures").MPIPoolExecutor))']], 30)
    assert.are.equal(0, code, err)
    assert.matches('^0\t1\tfalse\t[^\n]*no worker ranks %(the world has 1 rank%)', out)
    -- Open MPI ends the process at a failed MPI_Init (its errors are fatal
    -- there), with its own messages on stderr (which vary from run to run)
    out, err, code = sh.run(ENV .. ' OMPI_MCA_pml=bogus ' .. q(sh.host)
      .. [[ -e 'print(pcall(require, "host.mpi")) print "after"']], 30)
    assert.are.equal(1, code, err)
    assert.are.equal('', out)
    assert.are_not.equal('', err)
  end)

  it('ends the job with a message when a task calls os.exit on a worker rank', function()
    local _, err, code = world(PRE .. [[
local ex = futures.MPIPoolExecutor()
ex:submit(function() os.exit(5) end):result(30)
print('not reached')
]])
    assert.are_not.equal(0, code)
    assert.are_not.equal(124, code)
    assert.matches('host.mpi: worker rank [12] is exiting while rank 0 still runs', err)
  end)

  it('refuses host.mpi in a process forked from a rank', function()
    local out, err, code = world(PRE .. [[
local pp <close> = futures.ProcessPoolExecutor{max_workers = 1}
print('forked', select(2, pcall(function()
  return pp:submit(function() return require('host.mpi').rank() end):result(10)
end)))
]])
    assert.are.equal(0, code, err)
    assert.matches('forked\t[^\n]*host.mpi cannot be used in a process forked from an MPI rank', out)
  end)

  it('refuses host.mpi in a child of a rank that never loaded it', function()
    -- before: the child ran MPI_Init in its parent's place; the job ended
    -- with exit 1 and "mpiexec has exited due to process rank 0 ... exiting improperly"
    local out, err, code = world([[
local futures = require 'host.futures'
local pp <close> = futures.ProcessPoolExecutor{max_workers = 1}
print('forked', select(2, pcall(function()
  return pp:submit(function() return require('host.mpi').rank() end):result(10)
end)))
]], 2, true)
    assert.are.equal(0, code, err)
    assert.matches('forked\t[^\n]*host.mpi cannot be used in a process forked from an MPI rank', out)
  end)
end)

-- What a hostile script does to host.mpi (these pass: they keep it so).
describe('host.mpi under hostile use', function()
  it('keeps nil holes, thousands of results, errors, cancel and timeouts straight', function()
    local out, err, code = world(PRE .. [[
local thread = require 'host.thread'
assert(require 'host.mpi' == mpi)
local ex <close> = futures.MPIPoolExecutor()
print('holes', ex:submit(function(...) return select('#', ...), ... end, 1, nil, 3, nil):result(10))
print('many', select('#', ex:submit(function(n)
  local t = {} for i = 1, n do t[i] = i end return table.unpack(t) end, 5000):result(10)))
local f = ex:submit(function() error(setmetatable({}, {__tostring = function() error('boom') end})) end)
print('tostring', select(2, pcall(f.result, f, 10)):match '^[^\n]*')
local slow = ex:submit(function() require('host.thread').sleep(0.3) return 'slow' end)
local slow2 = ex:submit(function() require('host.thread').sleep(0.3) return 'slow' end)
-- each worker rank gets one task ahead (running, past cancel): the fifth waits
for _ = 1, 2 do ex:submit(function() return 'ahead' end) end
local queued = ex:submit(function() return 'queued' end)
print('timeout', select(2, pcall(slow.result, slow, 0.01)).kind)
print('cancel', queued:cancel(), queued:cancelled(), select(2, pcall(queued.result, queued, 10)).kind)
print('slow', slow:result(10), slow2:result(10))
local t = thread.start(function() return ex:submit(function() return 'from a thread' end):result(10) end)
print('thread', t:join(10))
local ex2 = futures.MPIPoolExecutor()
ex2:shutdown()
print('after shutdown', thread.start(function() return pcall(ex2.submit, ex2, print) end):join(10))
for i = 1, 300 do
  local e = futures.MPIPoolExecutor()
  if i % 2 == 0 then e:submit(function() return i end) end
  if i % 3 == 0 then e:shutdown() end
end
collectgarbage()
local left = futures.MPIPoolExecutor()  -- collected without shutdown at the end
left:submit(function() require('host.thread').sleep(0.2) return 1 end)
]])
    assert.are.equal(0, code, err)
    assert.matches('holes\t4\t1\tnil\t3\tnil\n', out, 1, true)
    assert.matches('many\t5000\n', out, 1, true)
    assert.matches('tostring\t(error object is a table value)\n', out, 1, true)
    assert.matches('timeout\tTimeoutError\n', out, 1, true)
    assert.matches('cancel\ttrue\ttrue\tCancelledError\n', out, 1, true)
    assert.matches('slow\tslow\tslow\n', out, 1, true)
    assert.matches('thread\ttrue\tfrom a thread\n', out, 1, true)
    assert.matches('after shutdown\ttrue\tfalse\tcannot schedule new futures after shutdown\n', out, 1, true)
  end)

  it('runs done-callbacks while the main thread spins in Lua (the manager never takes the GIL)', function()
    local out, err, code = world(PRE .. [[
local time = require 'host.time'
local ex <close> = futures.MPIPoolExecutor()
local n = 0
for i = 1, 200 do ex:submit(function() return i end):add_done_callback(function() n = n + 1 end) end
local t0 = time.monotonic()
while n < 200 and time.monotonic() - t0 < 30 do end
print('callbacks', n)
]])
    assert.are.equal(0, code, err)
    assert.matches('callbacks\t200\n', out, 1, true)
  end)

  -- Starts a world in the background, waits for rank 0 to print "ready",
  -- sends `sig` to mpiexec; returns its output and whether a rank was left.
  local function signal_world(text, sig)
    local name = sh.tempfile("io.stdout:setvbuf 'no'\n" .. PRE .. text)
    local out = sh.run('o=$(mktemp); ' .. ENV .. ' ' .. MPIEXEC .. ' -n 3 ' .. q(sh.host)
      .. ' -l host.mpi.run ' .. q(name) .. ' > "$o" 2>&1 & p=$!;'
      .. ' for i in $(seq 400); do grep -q ready "$o" 2>/dev/null && break; sleep 0.05; done;'
      .. ' kill -' .. sig .. ' $p; wait $p; echo "rc=$?"; cat "$o"; rm -f "$o"', 60)
    -- ranks still running ('[-]l' keeps pgrep from matching its own shell)
    local left = sh.run('sleep 1; pgrep -f ' .. q('[-]l host.mpi.run ' .. name) .. ' || true')
    os.remove(name)
    return out, left
  end

  it('ends every rank on Ctrl-C while rank 0 waits at exit for a task that never ends', function()
    local out, left = signal_world([[
futures.MPIPoolExecutor():submit(function() while true do end end)
print 'ready'
]], 'INT')
    assert.matches('^rc=[1-9]', out)
    assert.are.equal('', left)
  end)

  it('ends every rank on SIGTERM to mpiexec while rank 0 waits for a result', function()
    local out, left = signal_world([[
local ex <close> = futures.MPIPoolExecutor()
local f = ex:submit(function() while true do end end)
print 'ready'
f:result()
]], 'TERM')
    assert.matches('^rc=[1-9]', out)
    assert.are.equal('', left)
  end)
end)

describe('host.mpi CommExecutor', function()
  it('gives the root an executor over the other ranks, which then go on', function()
    local out, err, code = world([[
local mpi = require 'host.mpi'
print('before', mpi.rank())
do
  local ex <close> = mpi.CommExecutor{root = 0}
  if ex then
    local t = {}
    for i, v, r in ex:map(function(x) return x + 100, require('host.mpi').rank() end, {1, 2, 3, 4}) do
      t[i] = v .. '@' .. tostring(r > 0)
    end
    print('comm', table.concat(t, ','))
  end
end
print('after', mpi.rank())
]], 3, true)
    assert.are.equal(0, code, err)
    assert.matches('comm\t101@true,102@true,103@true,104@true\n', out, 1, true)
    for r = 0, 2 do
      assert.matches('before\t' .. r .. '\n', out, 1, true)
      assert.matches('after\t' .. r .. '\n', out, 1, true)
    end
  end)

  it('breaks the executor, instead of hanging, when a rank ends without calling it', function()
    -- before: rank 0 waited forever for the task it gave rank 1, and rank 2 for release
    local out, err, code = world([[
local mpi = require 'host.mpi'
if mpi.rank() == 1 then return end
do
  local ex <close> = mpi.CommExecutor()
  if ex then
    -- the break may come before a submit (which raises it then) or after
    local fs, broken = {}, nil
    for i = 1, 4 do
      local ok, f = pcall(ex.submit, ex, function() return require('host.mpi').rank() end)
      if not ok then broken = f break end
      fs[i] = f
    end
    for i = 1, #fs do
      if broken then break end
      local ok, e = pcall(fs[i].result, fs[i], 20)
      if not ok then broken = e end
    end
    if broken then print('broken', broken.kind, broken.message) end
    print('again', pcall(ex.submit, ex, print))
  end
end
print('done', mpi.rank())
]], 3, true)
    assert.are.equal(0, code, err)
    assert.matches('broken\tBrokenProcessPool\ta rank ended its script without calling '
      .. 'mpi.CommExecutor (every rank must call it)\n', out, 1, true)
    assert.matches('again\tfalse\t', out, 1, true)
    assert.matches('done\t0\n', out, 1, true)
    assert.matches('done\t2\n', out, 1, true)
  end)

  it('breaks a later executor, instead of hanging, once every other rank has ended', function()
    -- before: with both byes taken, round 3's task waited for a rank forever (2 of 4 runs hung)
    local out, err, code = world([[
local mpi = require 'host.mpi'
local function round(k)
  local ex <close> = mpi.CommExecutor()
  if ex then
    local f = ex:submit(function() return 'r' .. require('host.mpi').rank() end)
    local ok, e = pcall(f.result, f, 20)
    print('round', k, ok, ok and e or e.kind)
  end
end
round(1)
if mpi.rank() == 0 then for k = 2, 4 do round(k) end end
print('done', mpi.rank())
]], 3, true)
    assert.are.equal(0, code, err)
    assert.matches('round\t1\ttrue\tr[12]\n', out)
    for k = 2, 4 do assert.matches('round\t' .. k .. '\tfalse\tBrokenProcessPool\n', out, 1, true) end
    for r = 0, 2 do assert.matches('done\t' .. r .. '\n', out, 1, true) end
  end)

  it('refuses a root other than 0', function()
    local out, err, code = world([[
local mpi = require 'host.mpi'
local ok, e = pcall(mpi.CommExecutor, {root = 1})
print(mpi.rank(), ok, e)
]], 2, true)
    assert.are.equal(0, code, err)
    assert.matches("'root' must be 0", out, 1, true)
  end)
end)
