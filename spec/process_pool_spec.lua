-- spec/process_pool_spec.lua: futures.ProcessPoolExecutor over fork(): the
-- futures API on worker processes, and its faults (a killed worker, a task
-- that raises or exits, values that cannot cross, Ctrl-C, the parent
-- leaving). Every wait has a timeout.
local futures = require 'host.futures'
local thread = require 'host.thread'
local herror = require 'host.error'
local sh = require 'spec.support.sh'

local T = 10

-- The number of open descriptors of this process.
local function fd_count()
  local n = 0
  local p = io.popen('ls /proc/' .. tostring(require('host.spec_pid')) .. '/fd')
  for _ in p:lines() do n = n + 1 end
  p:close()
  return n
end

-- Is process pid still there (a zombie counts as there)?
local function exists(pid)
  local f = io.open('/proc/' .. pid .. '/stat')
  if not f then return false end
  f:close()
  return true
end

-- Waits up to `limit` seconds for every pid to be gone.
local function all_gone(pids, limit)
  local deadline = require('host.time').monotonic() + limit
  repeat
    local any = false
    for _, pid in ipairs(pids) do any = any or exists(pid) end
    if not any then return true end
    thread.sleep(0.02)
  until require('host.time').monotonic() > deadline
  return false
end

describe('ProcessPoolExecutor', function()
  setup(function()
    -- this process's pid, for /proc/<pid>/fd (io.popen's shell is a child)
    local f = assert(io.open('/proc/self/stat'))
    local pid = tonumber(f:read('a'):match('^(%d+)'))
    f:close()
    package.loaded['host.spec_pid'] = pid
  end)

  it('runs tasks in other processes and returns all their values', function()
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 2 })
    local me = require('host.spec_pid')
    local f = ex:submit(function(a, b) return a + b, nil, 'z' end, 1, 2)
    assert.are.same({ n = 3, 3, nil, 'z' }, table.pack(f:result(T)))
    local pid = ex:submit(function()
      local s = assert(io.open('/proc/self/stat')):read('a')
      return tonumber(s:match('^(%d+)'))
    end):result(T)
    assert.are_not.equal(me, pid)
    assert.is_true(#ex:pids() == 2)
  end)

  it('carries closures with upvalues; _ENV is the worker\'s globals', function()
    -- busted runs specs in an environment of its own: write the real globals
    local set_global = load('WORKER_TAG_FOR_SPEC = ...')
    local factor = 7
    local ex <close> = assert(futures.ProcessPoolExecutor {
      max_workers = 1, initializer = set_global, initargs = { 'worker' } })
    set_global('parent')  -- after the fork: the worker does not see it
    local f = ex:submit(function(x) return x * factor, WORKER_TAG_FOR_SPEC end, 6)
    assert.are.same({ 42, 'worker' }, { f:result(T) })
    set_global(nil)
  end)

  it('maps in order, with chunks', function()
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 2 })
    local got = {}
    for i, v in ex:map(function(x) return x * x end, { 1, 2, 3, 4, 5, 6, 7 }, { chunksize = 3 }) do got[i] = v end
    assert.are.same({ 1, 4, 9, 16, 25, 36, 49 }, got)
  end)

  it('raises a task error carrying the worker traceback', function()
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    local f = ex:submit(function() error('worker broke') end)
    local ok, err = pcall(f.result, f, T)
    assert.is_false(ok)
    assert.matches('worker broke', err, 1, true)
    assert.matches('stack traceback:', err, 1, true)
    assert.are.equal('fine', ex:submit(function() return 'fine' end):result(T))
  end)

  it('refuses an unserializable argument at submit, naming its path', function()
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    assert.has_error(function() ex:submit(print, { out = io.stdout }) end,
      'cannot submit: cannot serialize userdata at [2].out (FILE*)')
  end)

  it('fails only the future whose result cannot come back', function()
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    local f = ex:submit(function() return coroutine.create(print) end)
    local ok, err = pcall(f.result, f, T)
    assert.is_false(ok)
    assert.matches('cannot send the result back: cannot serialize thread', err, 1, true)
    assert.are.equal(2, ex:submit(function() return 2 end):result(T))
  end)

  it('breaks within 1 s when a worker is killed: running and pending fail, done ones keep results', function()
    local fds = fd_count()
    local ex = assert(futures.ProcessPoolExecutor { max_workers = 2 })
    local done = ex:submit(function() return 'kept' end)
    assert.are.equal('kept', done:result(T))
    local pids = ex:pids()
    local running = {}
    for i = 1, 2 do running[i] = ex:submit(function() while true do end end) end
    local pending = {}
    for i = 1, 4 do pending[i] = ex:submit(function() return i end) end
    thread.sleep(0.1)  -- let the busy tasks start
    os.execute('kill -KILL ' .. pids[1])
    local all = { running[1], running[2], table.unpack(pending) }
    local _, not_done = futures.wait(all, { timeout = 1 })
    assert.are.equal(0, #not_done)
    for _, f in ipairs(all) do
      local ok, err = pcall(f.result, f, 0)
      assert.is_false(ok)
      assert.is_true(herror.is(err, 'BrokenProcessPool'))
    end
    assert.matches('killed by signal 9', select(2, pcall(running[1].result, running[1], 0)).message, 1, true)
    assert.are.equal('kept', done:result(0))
    local ok, err = pcall(ex.submit, ex, print)
    assert.is_false(ok)
    assert.is_true(herror.is(err, 'BrokenProcessPool'))
    ex:shutdown()
    assert.is_true(all_gone(pids, T))  -- reaped: no zombie either
    assert.are.equal(fds, fd_count())
  end)

  it('breaks, saying so, when a task calls os.exit', function()
    local ex = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    local f = ex:submit(function() os.exit(3) end)
    local ok, err = pcall(f.result, f, T)
    assert.is_false(ok)
    assert.is_true(herror.is(err, 'BrokenProcessPool'))
    -- under valgrind a worker's exit status is valgrind's (its leak check of the fork)
    local status = os.getenv('HOST_UNDER_VALGRIND') and '%d+' or '3'
    assert.matches('exited with status ' .. status, err.message)
    ex:shutdown()
  end)

  it('breaks when the initializer fails', function()
    local ex = assert(futures.ProcessPoolExecutor { max_workers = 1, initializer = function() error('no setup') end })
    local f = ex:submit(function() return 1 end)
    local ok, err = pcall(f.result, f, T)
    assert.is_false(ok)
    assert.is_true(herror.is(err, 'BrokenProcessPool'))
    assert.matches('no setup', err.message, 1, true)
    ex:shutdown()
  end)

  it('cannot cancel work in the call queue (workers + 1), only pending work', function()
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    local first = ex:submit(function() local t = os.clock() while os.clock() - t < 0.5 do end return 1 end)
    local queued = ex:submit(function() return 2 end)
    local pending = ex:submit(function() return 3 end)
    thread.sleep(0.2)
    assert.is_false(queued:cancel())
    assert.is_true(pending:cancel())
    assert.are.same({ 1, 2 }, { first:result(T), queued:result(T) })
  end)

  it('replaces workers after max_tasks_per_child without losing tasks', function()
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 2, max_tasks_per_child = 2 })
    local fs, pids = {}, {}
    for i = 1, 10 do
      fs[i] = ex:submit(function(x)
        local s = assert(io.open('/proc/self/stat')):read('a')
        return x, tonumber(s:match('^(%d+)'))
      end, i)
    end
    local distinct = 0
    for i = 1, 10 do
      local x, pid = fs[i]:result(T)
      assert.are.equal(i, x)
      if not pids[pid] then distinct = distinct + 1 end
      pids[pid] = true
    end
    assert.is_true(distinct >= 5)
  end)

  it('forks while other host threads run: the child has only the forking thread', function()
    local stop = thread.Event()
    local t = thread.start(function() stop:wait(T) end)
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    assert.are.equal(1, ex:submit(function() return require('host.thread').count() end):result(T))
    stop:set()
    t:join(T)
  end)

  it('refuses submits after shutdown and bad arguments', function()
    local ex = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    ex:shutdown()
    assert.has_error(function() ex:submit(print) end, 'cannot schedule new futures after shutdown')
    assert.has_error(function() futures.ProcessPoolExecutor { max_workers = 0 } end)
    assert.has_error(function() futures.ProcessPoolExecutor { max_tasks_per_child = -1 } end)
    assert.has_error(function() futures.ProcessPoolExecutor { initializer = 'x' } end)
  end)
end)

describe('ProcessPoolExecutor and the parent process', function()
  it('takes its workers with it when the parent exits without shutdown', function()
    local f = sh.tempfile [[
      local futures = require 'host.futures'
      local ex = futures.ProcessPoolExecutor { max_workers = 2 }
      print(table.concat(ex:pids(), ' '))
      print(ex:submit(function() return 'ok' end):result(5))
    ]]
    local out, _, code = sh.host_run(sh.quote(f), 20)
    os.remove(f)
    assert.are.equal(0, code)
    local pids = {}
    for pid in out:match('^[^\n]*'):gmatch('%d+') do pids[#pids + 1] = pid end
    assert.are.equal(2, #pids)
    assert.matches('\nok\n$', out)
    assert.is_true(all_gone(pids, T))
  end)

  it('stops within 1 s on Ctrl-C during map, and the workers are gone', function()
    local f = sh.tempfile [[
      io.stdout:setvbuf 'no'
      local futures = require 'host.futures'
      local ex = futures.ProcessPoolExecutor { max_workers = 2 }
      print(table.concat(ex:pids(), ' '))
      for _ in ex:map(function() while true do end end, { 1, 2, 3, 4 }) do end
    ]]
    -- Ctrl-C reaches the terminal's whole process group: so does this.
    -- A watchdog kills the group after 3 s, so a failure leaves nothing behind.
    local out = sh.run('o=$(mktemp); setsid ' .. sh.quote(sh.host) .. ' ' .. sh.quote(f) ..
      ' > "$o" 2>&1 & p=$!; for i in $(seq 200); do [ -s "$o" ] && break; sleep 0.05; done; sleep 0.2;' ..
      ' kill -INT -$p; s=$(date +%s%N); (sleep 3; kill -KILL -$p 2>/dev/null) & w=$!;' ..
      ' wait $p; rc=$?; ms=$(( ($(date +%s%N) - s) / 1000000 )); kill $w 2>/dev/null;' ..
      ' echo "rc=$rc ms=$ms"; cat "$o"; rm -f "$o"', 20)
    os.remove(f)
    local ms = tonumber(out:match('ms=(%d+)'))
    assert.matches('rc=1 ', out, 1, true)
    assert.is_true(ms < 1000, out)
    assert.matches('interrupted!', out, 1, true)
    local pids = {}
    for pid in out:match('\n(%d+ %d+)\n'):gmatch('%d+') do pids[#pids + 1] = pid end
    assert.is_true(all_gone(pids, T))
  end)
end)
