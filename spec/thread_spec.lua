-- spec/thread_spec.lua: host.thread's Thread objects and module functions.
-- Every join and wait has a timeout, so a bug fails instead of hanging.
local thread = require 'host.thread'
local herror = require 'host.error'
local sh = require 'spec.support.sh'

local T = 10  -- seconds: the limit of every wait below

describe('host.thread', function()
  it('runs f(...) on another OS thread and joins its results, nils included', function()
    local t = thread.start(function(a, b, c) return a + b, nil, c end, 1, 2, 'x')
    assert.are.same({ true, 3, nil, 'x', n = 4 }, table.pack(t:join(T)))
    assert.are_not.equal(thread.ident(), t.ident)
  end)

  it('shares globals, tables, closures and upvalues with its creator', function()
    local shared = { n = 0 }
    local up = 0
    SHARED_GLOBAL_FOR_SPEC = 1
    local t = thread.start(function()
      shared.n = shared.n + 1
      up = up + 1
      SHARED_GLOBAL_FOR_SPEC = SHARED_GLOBAL_FOR_SPEC + 1
    end)
    assert.is_true(t:join(T))
    assert.are.equal(1, shared.n)
    assert.are.equal(1, up)
    assert.are.equal(2, SHARED_GLOBAL_FOR_SPEC)
    SHARED_GLOBAL_FOR_SPEC = nil
  end)

  it('returns false and the error, with its traceback, when f raises', function()
    local t = thread.start(function() error('broken here') end)
    local ok, err = t:join(T)
    assert.is_false(ok)
    assert.matches('broken here', err, 1, true)
    assert.matches('stack traceback:', err, 1, true)
    -- joining again gives the same outcome
    local ok2, err2 = t:join(T)
    assert.is_false(ok2)
    assert.are.equal(err, err2)
  end)

  it('keeps an error object as it is, with a traceback field', function()
    local t = thread.start(function() error(herror.new('ValueError', 'bad')) end)
    local ok, err = t:join(T)
    assert.is_false(ok)
    assert.is_true(herror.is(err, 'ValueError'))
    assert.matches('stack traceback', err.traceback, 1, true)
  end)

  it("ends a thread's tracebacks with its target, as the excepthook's does", function()
    -- The traceback of a thread's error, and of an excepthook's, lists the
    -- target (the hook) last, as before the target ran under a protected
    -- setup call: that added a line '[C]: in ?' to each.
    local ok, err = thread.start(function() error('at the end') end):join(T)
    assert.is_false(ok)
    assert.matches("in function <[^\n]*>$", err)
    local e = select(2, thread.start(function() error(herror.new('ValueError', 'bad')) end):join(T))
    assert.matches("in function <[^\n]*>$", e.traceback)
    local f = sh.tempfile [[
      local thread = require 'host.thread'
      thread.excepthook = function(info)
        io.stdout:write(info.traceback, '\n')
        error('the hook fails')
      end
      thread.start(function() error('reported') end):join(5)
      local t = thread.start(function() error('reported') end)
      while t:is_alive() do thread.sleep(0.01) end
    ]]
    local out, errout = sh.run(sh.quote(sh.host) .. ' ' .. sh.quote(f), 20)
    assert.matches("in function <[^\n]*>\n$", out)
    assert.matches("in function 'host.thread.excepthook'\n", errout)
    assert.is_nil(errout:find('in ?', 1, true), errout)
  end)

  it('returns nil, "timeout" when the timeout passes, and then joins', function()
    local ev = thread.Event()
    local t = thread.start(function() return ev:wait(T) end)
    assert.are.same({ nil, 'timeout' }, { t:join(0.05) })
    assert.is_true(t:is_alive())
    ev:set()
    assert.are.same({ true, true }, { t:join(T) })
    assert.is_false(t:is_alive())
  end)

  it('makes named and daemon threads with thread.Thread{...}', function()
    local t = thread.Thread { target = function(...) return select('#', ...), ... end,
                              args = table.pack(1, nil, 3), name = 'worker-1', daemon = true }
    assert.are.equal('worker-1', t.name)
    assert.is_true(t.daemon)
    assert.is_nil(t.ident)
    assert.is_false(t:is_alive())
    assert.has_error(function() t:join(1) end, 'cannot join thread before it is started')
    t:start()
    assert.are.same({ true, 3, 1, nil, 3 }, { t:join(T) })
    assert.has_error(function() t:start() end, 'threads can only be started once')
    assert.matches('^Thread%-%d+$', thread.start(function() end).name)
  end)

  it('refuses to join the current thread', function()
    assert.has_error(function() thread.current():join(1) end, 'cannot join current thread')
    local t = thread.start(function()
      return pcall(function() return thread.current():join(1) end)
    end)
    local ok, inner_ok, err = t:join(T)
    assert.is_true(ok)
    assert.is_false(inner_ok)
    assert.matches('cannot join current thread', err, 1, true)
  end)

  it('gives thread.current() one identity per thread', function()
    local main = thread.current()
    assert.are.equal(main, thread.current())
    assert.are.equal('MainThread', main.name)
    local t
    t = thread.start(function() return thread.current() == t, thread.current().ident end)
    local ok, same, ident = t:join(T)
    assert.is_true(ok)
    assert.is_true(same)
    assert.are.equal(t.ident, ident)
  end)

  it('counts the running threads', function()
    local before = thread.count()
    local ev = thread.Event()
    local t = thread.start(function() ev:wait(T) end)
    assert.are.equal(before + 1, thread.count())
    ev:set()
    t:join(T)
    assert.are.equal(before, thread.count())
  end)

  it('sleeps without holding the GIL', function()
    -- Another thread must make progress WHILE main is inside sleep. With a
    -- 0.5 s switch interval, preemption cannot explain progress within the
    -- 0.2 s that main sleeps at most (in slices, so a loaded machine that
    -- is slow to run the other thread still passes).
    local saved = thread.getswitchinterval()
    thread.setswitchinterval(0.5)
    local ticks = 0
    local started, stop = thread.Event(), thread.Event()
    local t = thread.start(function()
      started:set()
      while not stop:is_set() do ticks = ticks + 1 end
    end)
    assert.is_true(started:wait(T))
    local before = ticks
    local advanced = false
    for _ = 1, 20 do
      thread.sleep(0.01)
      if ticks > before then advanced = true break end
    end
    stop:set()
    assert.is_true(t:join(T))
    thread.setswitchinterval(saved)
    assert.is_true(advanced)
    assert.has_error(function() thread.sleep(-1) end)
    assert.has_error(function() thread.sleep('x') end)
    assert.has_error(function() thread.sleep(0 / 0) end)
  end)

  it('keeps thread.local() fields per thread', function()
    local loc = thread['local']()
    loc.x = 'main'
    local t = thread.start(function()
      local before = loc.x
      loc.x = 'worker'
      return before, loc.x
    end)
    assert.are.same({ true, nil, 'worker' }, { t:join(T) })
    assert.are.equal('main', loc.x)
  end)

  it('shares one thread.local() table across the coroutines of a thread', function()
    local loc = thread['local']()
    loc.v = 1
    local co = coroutine.wrap(function() return loc.v end)
    assert.are.equal(1, co())
  end)

  it('resumes in one thread a coroutine created and suspended in another', function()
    local co = coroutine.create(function(a)
      local b = coroutine.yield(a + 1)
      return b * 2
    end)
    local t = thread.start(function() return coroutine.resume(co, 1) end)
    assert.are.same({ true, true, 2 }, { t:join(T) })
    local t2 = thread.start(function() return coroutine.resume(co, 5) end)
    assert.are.same({ true, true, 10 }, { t2:join(T) })
    assert.are.equal('dead', coroutine.status(co))
  end)

  it('refuses to resume a coroutine that another thread is running', function()
    local ev, go = thread.Event(), thread.Event()
    local co = coroutine.create(function()
      ev:set()
      go:wait(T)
      return 'done'
    end)
    local t = thread.start(function() return coroutine.resume(co) end)
    assert.is_true(ev:wait(T))
    local ok, err = coroutine.resume(co)
    go:set()
    assert.is_false(ok)
    assert.matches('non%-suspended', err)
    assert.are.same({ true, true, 'done' }, { t:join(T) })
  end)

  it('sets and reports the switch interval and the instruction policy', function()
    local before = thread.getswitchinterval()
    assert.are.equal(0.005, before)
    thread.setswitchinterval(0.001)
    assert.are.equal(0.001, thread.getswitchinterval())
    thread.setswitchinterval { instructions = 500 }
    assert.are.same({ 0.001, 500 }, { thread.getswitchinterval() })
    thread.setswitchinterval(before)
    assert.are.same({ before }, { thread.getswitchinterval() })
    assert.has_error(function() thread.setswitchinterval(0) end,
      "bad argument #1 to 'setswitchinterval' (interval must be in (0, 3600] seconds)")
    assert.has_error(function() thread.setswitchinterval(-1) end,
      "bad argument #1 to 'setswitchinterval' (interval must be in (0, 3600] seconds)")
    assert.has_error(function() thread.setswitchinterval { instructions = 0 } end,
      "bad argument #1 to 'setswitchinterval' ('instructions' must be an integer in [1, 1e9])")
    assert.has_error(function() thread.setswitchinterval('x') end,
      "bad argument #1 to 'setswitchinterval' (number expected, got string)")
  end)

  it('preempts a busy thread so a waiting one runs (interval policy)', function()
    local flag = false
    local t = thread.start(function() flag = true end)
    local spins = 0
    while not flag do spins = spins + 1 end  -- only preemption can end this
    assert.is_true(t:join(T))
    assert.is_true(flag)
  end)

  it('preempts a thread that runs inside a coroutine', function()
    local flag = false
    local co = coroutine.wrap(function() while not flag do end return 'out' end)
    local t = thread.start(function() flag = true end)
    assert.are.equal('out', co())
    assert.is_true(t:join(T))
  end)

  it('rejects bad arguments with Lua-style messages', function()
    assert.has_error(function() thread.start(42) end,
      "bad argument #1 to 'start' (function expected, got number)")
    assert.has_error(function() thread.Thread { target = 1 } end,
      "bad argument #1 to 'Thread' ('target' must be a function, got number)")
    assert.has_error(function() thread.Thread(1) end,
      "bad argument #1 to 'Thread' (table expected, got number)")
    local t = thread.start(function() end)
    assert.has_error(function() t:join(-1) end)
    assert.has_error(function() t:join('soon') end)
    assert.has_error(function() t.join(nil) end)
    t:join(T)
  end)

  it('describes a thread with tostring', function()
    local t = thread.Thread { target = function() end, name = 'w' }
    assert.are.equal('host.Thread "w" (initial)', tostring(t))
  end)
end)

describe('host.thread at the boundaries', function()
  local function run(code, limit)
    local f = sh.tempfile(code)
    local out, err, rc = sh.host_run(sh.quote(f), limit or 20)
    os.remove(f)
    return out, err, rc
  end

  it('joins a thread that returned 5000 and 100000 values', function()
    local out, err, rc = run [[
      local thread = require 'host.thread'
      for _, n in ipairs { 5000, 100000 } do
        local t = thread.start(function() return table.unpack({}, 1, n) end)
        local r = table.pack(t:join(10))
        print(n, r.n, r[1], select('#', t:join(10)))
      end
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, rc)
    assert.are.equal('5000\t5001\ttrue\t5001\n100000\t100001\ttrue\t100001\n', out)
  end)

  it('starts a thread with thousands of arguments', function()
    local out, err, rc = run [[
      local thread = require 'host.thread'
      local args = {}
      for i = 1, 5000 do args[i] = i end
      local t = thread.start(function(...) return select('#', ...), (select(5000, ...)) end,
                             table.unpack(args))
      print(t:join(10))
      args.n = 5000
      t = thread.Thread { target = function(...) return select('#', ...) end, args = args }
      t:start()
      print(t:join(10))
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, rc)
    assert.are.equal('true\t5000\t5000\ntrue\t5000\n', out)
  end)

  it('checks args.n: an integer in [0, 500000], half the stack limit', function()
    local out, err, rc = run [[
      local thread = require 'host.thread'
      local f = function(...) return select('#', ...) end
      for _, n in ipairs { -1, 2.5, 'x', math.mininteger, math.maxinteger, 1e6, 500001 } do
        print(pcall(thread.Thread, { target = f, args = { n = n } }))
      end
      -- the most it takes: start never fails on the count
      local big = thread.Thread { target = function(a) return a end, args = { 'first', n = 500000 } }
      big:start()
      print(big:join(10))
      -- changed after construction: checked again by start
      local args = { n = 1 }
      local t = thread.Thread { target = f, args = args }
      args.n = -5
      print(pcall(t.start, t))
      args.n = 2
      t:start()
      print(t:join(10))
      t = thread.Thread { target = f, args = { 1, 2, 3 } }  -- no n: #args
      t:start()
      print(t:join(10))
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, rc)
    local lines = {}
    for line in out:gmatch '[^\n]+' do lines[#lines + 1] = line end
    assert.are.equal(11, #lines)
    for i = 1, 7 do
      assert.matches("^false\t.*bad argument #1 to '[%w.]*Thread' %('args.n' %(or #args%) must be an integer in %[0, 500000%]%)",
                     lines[i])
    end
    assert.are.equal('true\tfirst', lines[8])
    assert.matches("^false\t.*'args.n' %(or #args%) must be an integer in %[0, 500000%]", lines[9])
    assert.are.equal('true\t2', lines[10])
    assert.are.equal('true\t3', lines[11])
  end)

  it('raises "attempt to use a finalized host.Thread" after __gc', function()
    -- The keeper is marked for finalization before the Thread, so the
    -- Thread's __gc runs first and the keeper resurrects a finalized one.
    local out, err, rc = run [[
      local thread = require 'host.thread'
      local saved
      do
        local keeper = setmetatable({}, { __gc = function(o) saved = o.t end })
        keeper.t = thread.Thread { target = function() end, name = 'gone' }
        keeper.t:start()
        keeper.t:join(10)
      end
      collectgarbage() collectgarbage()
      print(pcall(saved.join, saved, 1))
      print(pcall(saved.is_alive, saved))
      print(pcall(saved.start, saved))
      print(saved.name, tostring(saved):match '^host.Thread %(finalized%)' ~= nil)
      getmetatable(saved).__gc(saved)  -- again, by hand: nothing happens
      print('alive')
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, rc)
    local msg = 'attempt to use a finalized host.Thread'
    assert.are.equal(('false\t%s\nfalse\t%s\nfalse\t%s\ngone\ttrue\nalive\n'):format(msg, msg, msg),
                     out:gsub('\t[^\t\n]*:%d+: ', '\t'))
  end)

  it('refuses bad selves and keys without crashing', function()
    local t = thread.Thread { target = function() end }
    assert.has_error(function() t.join(42) end)
    assert.has_error(function() t.start({}) end)
    assert.has_error(function() t.is_alive(io.stdout) end)
    assert.is_nil(t[1])
    assert.is_nil(t[t])
    local loc = thread['local']()
    local mt = getmetatable(loc)
    assert.has_error(function() mt.__index(42, 'x') end,
      "bad argument #1 to '__index' (host.local expected, got number)")
    assert.has_error(function() mt.__newindex({}, 'x', 1) end,
      "bad argument #1 to '__newindex' (host.local expected, got table)")
    assert.has_error(function() loc[nil] = 1 end,
      "bad argument #2 to 'newindex' (index is nil)")
    assert.matches('^host.local: ', tostring(loc))
    assert.has_error(function() thread.Thread { target = print, name = {} } end,
      "bad argument #1 to 'Thread' ('name' must be a string)")
    assert.has_error(function() thread.Thread { target = print, args = 3 } end,
      "bad argument #1 to 'Thread' ('args' must be a table, got number)")
    assert.has_error(function() thread.setswitchinterval(1 / 0) end,
      "bad argument #1 to 'setswitchinterval' (interval must be in (0, 3600] seconds)")
    assert.has_error(function() thread.setswitchinterval(-1 / 0) end,
      "bad argument #1 to 'setswitchinterval' (interval must be in (0, 3600] seconds)")
    assert.has_error(function() thread.setswitchinterval(0 / 0) end,
      "bad argument #1 to 'setswitchinterval' (interval must be in (0, 3600] seconds)")
    assert.has_error(function() thread.setswitchinterval(1e308) end,
      "bad argument #1 to 'setswitchinterval' (interval must be in (0, 3600] seconds)")
    assert.has_error(function() thread.setswitchinterval { instructions = math.maxinteger } end,
      "bad argument #1 to 'setswitchinterval' ('instructions' must be an integer in [1, 1e9])")
    assert.has_error(function() thread.setswitchinterval { instructions = 1.5 } end,
      "bad argument #1 to 'setswitchinterval' ('instructions' must be an integer in [1, 1e9])")
    assert.has_error(function() thread.setswitchinterval { instructions = -1 } end,
      "bad argument #1 to 'setswitchinterval' ('instructions' must be an integer in [1, 1e9])")
    assert.has_error(function() thread.setswitchinterval {} end,
      "bad argument #1 to 'setswitchinterval' ('instructions' must be an integer in [1, 1e9])")
    assert.are.equal(0.005, thread.getswitchinterval())
    thread.setswitchinterval(1e-300)  -- clamped to 1 us, not 0 ns
    assert.is_true(math.abs(thread.getswitchinterval() - 1e-6) < 1e-12)
    thread.setswitchinterval(0.005)
  end)

  it('wakes a joiner with an error when __gc is called by hand on a running thread', function()
    local ev = thread.Event()
    local t = thread.start(function() return ev:wait(T) end)
    local waiting = thread.Event()
    local j = thread.start(function()
      waiting:set()
      return pcall(t.join, t, T)
    end)
    assert.is_true(waiting:wait(T))
    thread.sleep(0.05)  -- let it block in join (it raises the same either way)
    getmetatable(t).__gc(t)
    local ok, joined, err = j:join(T)
    ev:set()
    assert.is_true(ok)
    assert.is_false(joined)
    assert.matches('attempt to use a finalized host.Thread', err, 1, true)
    assert.matches('^host.Thread %(finalized%)', tostring(t))
  end)

  it('reports an unjoined error whose __tostring raises, with the fallback', function()
    local _, err, rc = run [[
      local thread = require 'host.thread'
      local bad = setmetatable({}, { __tostring = function() error('no string for you') end })
      thread.start(function() error(bad) end)
    ]]
    assert.are.equal(0, rc)
    assert.matches("^Exception in thread Thread%-%d+ %(ident %d+%):\n%(error object is a table value%)\n", err)
  end)

  it('lets another thread join the main thread once the main chunk ends', function()
    -- CPython's threading._shutdown stops the main thread before it waits
    -- for the others, so main_thread().join() returns there.
    local out, err, rc = run [[
      local thread = require 'host.thread'
      local main = thread.current()
      thread.start(function()
        local r = table.pack(main:join(10))
        print('joined', r.n, r[1], main:is_alive(), tostring(main):match 'stopped' ~= nil)
      end)
      print('main done', main:is_alive())
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, rc)
    assert.are.equal('main done\ttrue\njoined\t1\ttrue\tfalse\ttrue\n', out)
  end)

  it('keeps daemon threads from running while the state closes', function()
    -- Finalizers at close that sleep or join release the GIL no more to
    -- daemon threads: these park for good, as CPython's do at shutdown.
    local out, err, rc = run [[
      io.stdout:setvbuf 'no'
      local thread = require 'host.thread'
      local closing = false
      local spinner = thread.Thread { daemon = true, target = function()
        while true do
          if closing then io.stderr:write('daemon ran during close\n') os.exit(9) end
        end
      end }
      spinner:start()
      local sleeper = thread.Thread { daemon = true, target = function() thread.sleep(30) end }
      sleeper:start()
      KEEP = setmetatable({}, { __gc = function()
        closing = true
        thread.sleep(0.1)
        print('join at close', sleeper:join(0.1))
      end })
      print('main done')
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, rc)
    assert.are.equal('main done\njoin at close\tnil\ttimeout\n', out)
  end)
end)

describe('host threads at exit', function()
  local function run(code)
    local f = sh.tempfile(code)
    local out, err, rc = sh.host_run(sh.quote(f), 20)
    os.remove(f)
    return out, err, rc
  end

  it('waits for non-daemon threads before closing the state', function()
    local out, _, rc = run [[
      local thread = require 'host.thread'
      thread.start(function() thread.sleep(0.2); print('worker done') end)
      print('main done')
    ]]
    assert.are.equal(0, rc)
    assert.are.equal('main done\nworker done\n', out)
  end)

  it('does not wait for daemon threads', function()
    local out, _, rc = run [[
      local thread = require 'host.thread'
      thread.Thread{ target = function() thread.sleep(30) print('never') end, daemon = true }:start()
      thread.Thread{ target = function() while true do end end, daemon = true }:start()
      print('main done')
    ]]
    assert.are.equal(0, rc)
    assert.are.equal('main done\n', out)
  end)

  it('reports an error in a thread nobody joins on stderr', function()
    local _, err, rc = run [[
      local thread = require 'host.thread'
      thread.start(function() error('lost in thread') end)
    ]]
    assert.are.equal(0, rc)
    assert.matches('Exception in thread Thread-1 (ident ', err, 1, true)
    assert.matches('lost in thread', err, 1, true)
  end)

  it('keeps running a thread whose Thread object was collected', function()
    local out = run [[
      local thread = require 'host.thread'
      local q = require('host.queue').Queue()
      thread.start(function() q:get(10) print('still ran') end)
      collectgarbage() collectgarbage()
      q:put(1)
    ]]
    assert.are.equal('still ran\n', out)
  end)

  it('exits from a thread with os.exit without closing the state under others', function()
    local out, _, rc = run [[
      io.stdout:setvbuf 'no'
      local thread = require 'host.thread'
      thread.Thread{ target = function() while true do end end, daemon = true }:start()
      local t = thread.start(function() print('bye') os.exit(3, true) end)
      t:join(10)
      print('not reached')
    ]]
    assert.are.equal(3, rc)
    assert.are.equal('bye\n', out)
  end)

  it('forks, popens and exits while another thread is blocked reading stdin', function()
    -- stdin is a FIFO opened read-write: it never gets data, never ends.
    local f = sh.tempfile [[
      io.stdout:setvbuf 'no'
      local thread = require 'host.thread'
      local reading = thread.Event()
      thread.Thread { daemon = true, target = function()
        reading:set()
        return io.read 'l'
      end }:start()
      assert(reading:wait(10))
      thread.sleep(0.1)  -- let it block inside read
      local p = assert(io.popen('echo from-popen'))
      print(p:read 'l', p:close())
      local t = thread.start(function()
        local q = assert(io.popen('echo from-thread'))
        return q:read 'l', q:close()
      end)
      print(t:join(10))
      local ex = require('host.futures').ProcessPoolExecutor { max_workers = 1 }
      print(ex:submit(function() return 'from-pool' end):result(10))
      ex:shutdown()
      print('exiting')
      os.exit(3)
    ]]
    local out = sh.run('d=$(mktemp -d); mkfifo "$d/in"; timeout 10 ' .. sh.quote(sh.host) .. ' ' ..
      sh.quote(f) .. ' 0<>"$d/in"; echo "rc=$?"; rm -rf "$d"', 20)
    os.remove(f)
    assert.are.equal('from-popen\ttrue\texit\t0\ntrue\tfrom-thread\ttrue\texit\t0\n' ..
                     'from-pool\nexiting\nrc=3\n', out)
  end)

  it('ends with SIGPIPE when a spawned thread prints into a closed pipe', function()
    local f = sh.tempfile [[
      local thread = require 'host.thread'
      local t = thread.start(function() while true do print('line') end end)
      t:join(30)
    ]]
    local out, err = sh.run('(timeout 10 ' .. sh.quote(sh.host) .. ' ' .. sh.quote(f) ..
      '; echo "rc=$?" >&2) | head -1', 20)
    local ref_f = sh.tempfile 'while true do print("line") end'
    local _, ref_err = sh.run('(timeout 10 lua5.4 ' .. sh.quote(ref_f) .. '; echo "rc=$?" >&2) | head -1', 20)
    os.remove(f)
    os.remove(ref_f)
    assert.are.equal('line\n', out)
    assert.are.equal('rc=141\n', ref_err)
    assert.are.equal(ref_err, err)
  end)

  it('runs the script with --switch-instructions for the whole run', function()
    local f = sh.tempfile [[print(require('host.thread').getswitchinterval())]]
    local out = sh.host_run('--switch-instructions=777 ' .. sh.quote(f))
    local out2 = sh.host_run('--switch-interval=0.002 ' .. sh.quote(f))
    os.remove(f)
    assert.are.equal('0.005\t777\n', out)
    assert.are.equal('0.002\n', out2)
  end)

  it('turns Ctrl-C into "interrupted!" in a main thread blocked in join', function()
    local f = sh.tempfile [[
      io.stdout:setvbuf 'no'
      local thread = require 'host.thread'
      local t = thread.Thread{ target = function() thread.sleep(30) end, daemon = true }
      t:start()
      print 'ready'
      local ok, e = pcall(t.join, t)
      print('caught', e)
    ]]
    local out = sh.run('o=$(mktemp); ' .. sh.quote(sh.host) .. ' ' .. sh.quote(f) ..
      ' > "$o" & p=$!; for i in $(seq 200); do grep -q ready "$o" 2>/dev/null && break; sleep 0.05; done;' ..
      ' kill -INT $p; wait $p; echo "rc=$?"; cat "$o"; rm -f "$o"', 20)
    os.remove(f)
    assert.matches('rc=0\n', out, 1, true)
    assert.matches('caught\t[^\n]*interrupted!', out)
  end)
end)

describe('host threads in a forked child', function()
  it("count the parent's other threads as stopped, as CPython's _after_fork", function()
    -- A worker of a process pool inherits the Thread objects: RUNNING was
    -- running at the fork, DONE had finished, MAIN is the main thread and
    -- FORKER the spawned thread that made and used the pool (stopped in the
    -- worker too: the pool's manager thread forks, and is the worker's
    -- current thread). The untimed join runs only once a timed one raised,
    -- so a bug fails the spec and never leaves a stuck worker behind.
    local out, err, rc = sh.host_script([[
      local thread = require 'host.thread'
      local futures = require 'host.futures'
      GO = thread.Event()
      RUNNING = thread.start(function() GO:wait(20) end)
      DONE = thread.start(function() return 'kept', 42 end)
      DONE:join(10)
      MAIN = thread.current()
      local s = thread.start(function()
        FORKER = thread.current()
        local ex = futures.ProcessPoolExecutor { max_workers = 1 }
        local r = ex:submit(function()
          local th = require 'host.thread'
          local out = {}
          local function add(...) for i = 1, select('#', ...) do out[#out + 1] = tostring((select(i, ...))) end end
          add(RUNNING:is_alive(), (tostring(RUNNING):match('stopped')))
          local ok, e = pcall(RUNNING.join, RUNNING, 1)
          add(ok, e)
          if not ok then add(pcall(RUNNING.join, RUNNING)) end
          add(DONE:is_alive(), DONE:join(1))
          add(MAIN:is_alive(), pcall(MAIN.join, MAIN, 1))
          add(FORKER:is_alive(), th.current() == FORKER, th.current().name, th.count())
          return table.concat(out, ' ')  -- (no new thread here: TSan forbids it after such a fork)
        end):result(10)
        ex:shutdown()
        return r
      end)
      print(select(2, s:join(20)))
      print(RUNNING:is_alive(), MAIN:is_alive())
      GO:set()
      print(RUNNING:join(10))
    ]], 30)
    assert.are.equal('', err)
    assert.are.equal(0, rc)
    local E = 'cannot join a thread of the parent process %(inherited by fork%)'
    assert.matches('^false stopped false [^\n]*' .. E .. ' false [^\n]*' .. E ..
      ' false true kept 42 false false [^\n]*' .. E .. ' false false ProcessPoolManager 1\n' ..
      'true\ttrue\ntrue\n$', out)
  end)
end)

describe('host threads while host closes the state', function()
  it('refuses to start one from a finalizer at close, which could never run', function()
    local out, err, rc = sh.host_script([[
      local thread = require 'host.thread'
      FIN = setmetatable({}, { __gc = function()
        local ok, t = pcall(thread.start, function() return 'ran' end)
        if ok then print('joined', t:join(2)) else print(t) end
        local t2 = thread.Thread { target = function() return 'ran' end }
        ok, t = pcall(t2.start, t2)
        if ok then print('joined', t2:join(2)) else print(t) end
      end })
      print 'main chunk done'
    ]], 20)
    assert.are.equal('', err)
    assert.are.equal(0, rc)
    assert.are.equal('main chunk done\n' ..
      'cannot start a thread while host closes the state\n' ..
      'cannot start a thread while host closes the state\n', out)
  end)
end)

describe('host thread creation failures', function()
  it('return nil, message, errno from thread.start and t:start(), and the program goes on', function()
    -- Under an address-space limit thread stacks run out; 0.4 GB is far more
    -- than host needs. A sanitizer build cannot start under it: skipped.
    local probe = sh.run('ulimit -v 400000 && exec ' .. sh.quote(sh.host) .. ' -e "print(1)"', 20)
    if probe ~= '1\n' then pending('host does not start under ulimit -v (a sanitizer build?)') return end
    local f = sh.tempfile [[
      local thread = require 'host.thread'
      local go = thread.Event()
      local started, fail = {}, nil
      for _ = 1, 5000 do
        local t, msg, code = thread.start(function() go:wait(20) end)
        if t == nil then fail = table.pack(t, msg, code) break end
        started[#started + 1] = t
      end
      local t2 = thread.Thread { target = function() return 'late' end }
      local fail2 = table.pack(t2:start())
      go:set()
      for _, t in ipairs(started) do assert(t:join(10)) end
      for _, r in ipairs { fail, fail2 } do
        print(r.n, r[1], r[2]:match('^(cannot start thread: ).'), math.type(r[3]))
      end
      print(t2:start() == t2, t2:join(10))
    ]]
    local out, err, code = sh.run('ulimit -v 400000 && exec ' .. sh.quote(sh.host) .. ' ' .. sh.quote(f), 30)
    os.remove(f)
    assert.are.equal('', err)
    assert.are.equal(0, code)
    assert.are.equal('3\tnil\tcannot start thread: \tinteger\n' ..
      '3\tnil\tcannot start thread: \tinteger\n' ..
      'true\ttrue\tlate\n', out)
  end)
end)

describe('host.Thread fields', function()
  it('set name at any time and daemon before start, as Python', function()
    local t = thread.Thread { target = function() return thread.current().name end, name = 'a' }
    t.name = 'b'
    t.daemon = true
    assert.are.equal('b', t.name)
    assert.is_true(t.daemon)
    t.daemon = false
    assert.is_false(t.daemon)
    t.name = 12
    assert.are.equal('12', t.name)
    assert.has_error(function() t.name = {} end, "'name' must be a string, got table")
    t:start()
    assert.are.same({ true, '12' }, { t:join(T) })
    t.name = 'after'
    assert.are.equal('after', t.name)
    assert.has_error(function() t.daemon = true end, 'cannot set daemon status of active thread')
    assert.is_false(t.daemon)
    assert.has_error(function() t.ident = 1 end, "cannot set field 'ident' of a host.Thread")
    assert.has_error(function() t.x = 1 end, "cannot set field 'x' of a host.Thread")
    assert.has_error(function() t[1] = 1 end, 'cannot set a number field of a host.Thread')
    assert.is_nil(rawget(getmetatable(t), 'x'))
    local main = thread.current()
    assert.has_error(function() main.daemon = true end, 'cannot set daemon status of active thread')
  end)
end)

describe('host threads on reused OS threads', function()
  -- What the scripts below use: the kernel's id of the calling OS thread,
  -- and the number of OS threads of the process.
  local PROLOGUE = [[
    local thread = require 'host.thread'
    local function tid() return assert(io.open('/proc/thread-self/stat')):read('n') end
    local function nthreads()
      for l in io.lines('/proc/self/status') do
        local n = l:match('^Threads:%s*(%d+)')
        if n then return tonumber(n) end
      end
    end
    local function until_threads(n)  -- polls: a worker ends on its own
      for _ = 1, 400 do
        if nthreads() <= n then return true end
        thread.sleep(0.025)
      end
      return false
    end
  ]]
  local function script(code, limit)
    return sh.host_script(PROLOGUE .. code, limit or 20)
  end

  it('runs threads started one after another on one cached OS thread', function()
    local out, err, rc = script [[
      local base = nthreads()
      local tids = {}
      for i = 1, 20 do
        local t = thread.start(function() return tid() end)
        tids[select(2, assert(t:join(10)))] = true
      end
      local n = 0
      for k in pairs(tids) do n = n + 1; assert(k ~= tid()) end
      print(n, nthreads() - base)
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, rc)
    assert.are.equal('1\t1\n', out)
  end)

  it('keeps at most 8 idle OS threads, and ends idle ones after a while', function()
    local out, err, rc = script [[
      local base = nthreads()
      local go = thread.Event()
      local ts = {}
      for i = 1, 12 do ts[i] = thread.start(function() go:wait(10) end) end
      print(nthreads() - base)
      go:set()
      for i = 1, 12 do assert(ts[i]:join(10)) end
      print(until_threads(base + 8))
      print(until_threads(base))  -- each waited a second, idle, and ended
      print(thread.start(function() return 'still starts' end):join(10))
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, rc)
    assert.are.equal('12\ntrue\ntrue\ntrue\tstill starts\n', out)
  end)

  it('gives each thread its own locals, identity, name and error report', function()
    local loc = thread['local']()
    local reports, reported = {}, thread.Event()
    local saved = thread.excepthook
    thread.excepthook = function(info)
      reports[#reports + 1] = info
      reported:set()
    end
    local function tid() return assert(io.open('/proc/thread-self/stat')):read('n') end
    local first = thread.Thread { name = 'first', target = function()
      loc.x = 'first'
      FIRST_TID = tid()
      error('first failed')
    end }
    first:start()
    assert.is_true(reported:wait(T))
    assert.is_false((first:join(T)))
    local waiting, go = thread.Event(), thread.Event()
    local second
    second = thread.Thread { name = 'second', target = function()
      waiting:set()
      go:wait(T)
      return tid(), loc.x, thread.current() == second, thread.current().name
    end }
    second:start()
    assert.is_true(waiting:wait(T))
    local f = io.tmpfile()
    thread.dump_tracebacks(f)
    f:seek 'set'
    local dump = f:read 'a'
    go:set()
    local ok, second_tid, x, same, name = second:join(T)
    thread.excepthook = saved
    assert.is_true(ok)
    assert.are.equal(FIRST_TID, second_tid)  -- one OS thread ran both
    FIRST_TID = nil
    assert.are.equal(first.ident, second.ident)
    assert.is_nil(x)
    assert.is_true(same)
    assert.are.equal('second', name)
    assert.are.equal(1, #reports)
    assert.are.equal(first, reports[1].thread)
    assert.matches('thread %d+ "second" %(ident ' .. second.ident .. '%): waiting for host%.Event', dump)
    assert.is_nil(dump:find('"first"', 1, true))
  end)

  it('does not wait for idle OS threads at exit, and ends them when the state closes', function()
    local out, err, rc = script [[
      local base = nthreads()
      local go = thread.Event()
      local ts = {}
      for i = 1, 3 do ts[i] = thread.start(function() go:wait(10) end) end
      go:set()
      for i = 1, 3 do assert(ts[i]:join(10)) end
      print(nthreads() - base)
      thread.Thread { daemon = true, target = function() thread.Event():wait() end }:start()
      print 'main done'
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, rc)
    assert.are.equal('3\nmain done\n', out)
    out, err, rc = script [[
      for i = 1, 3 do thread.start(function() end):join(10) end
      os.exit(5, true)
    ]]
    assert.are.equal('', err)
    assert.are.equal(5, rc)
  end)

  it('starts threads in a forked child, where the idle OS threads of the parent are gone', function()
    if os.getenv 'TSAN_OPTIONS' then
      pending('TSan forbids a new thread in a child forked by a multithreaded process')
      return
    end
    local out, err, rc = script [[
      local futures = require 'host.futures'
      local base = nthreads()
      local go = thread.Event()
      local ts = {}
      for i = 1, 2 do ts[i] = thread.start(function() go:wait(10) end) end
      go:set()
      for i = 1, 2 do assert(ts[i]:join(10)) end
      print(nthreads() - base)
      local ex = futures.ProcessPoolExecutor { max_workers = 1 }
      print(ex:submit(function()
        local th = require 'host.thread'
        local t = th.start(function() return 'ran in the child' end)
        return (select(2, t:join(5)))
      end):result(10))
      ex:shutdown()
      print(thread.start(function() return 'ran in the parent' end):join(10))
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, rc)
    assert.are.equal('2\nran in the child\ntrue\tran in the parent\n', out)
  end)

  it('keeps one cache per universe, and a closed universe ends its OS threads', function()
    local out, err, rc = script [[
      local futures = require 'host.futures'
      local ex = futures.InterpreterPoolExecutor { max_workers = 2 }
      local task = function()
        local th = require 'host.thread'
        local tids = {}
        for i = 1, 5 do
          tids[i] = select(2, th.start(function()
            return assert(io.open('/proc/thread-self/stat')):read('n')
          end):join(10))
        end
        return tids[1], tids[5]
      end
      local seen = {}
      for i = 1, 4 do
        local a, b = ex:submit(task):result(10)
        assert(a == b, 'one OS thread per universe')
        seen[a] = true
      end
      local own = select(2, thread.start(tid):join(10))
      print(seen[own] == nil)
      local function alive()
        local n = 0
        for t in pairs(seen) do
          local f = io.open('/proc/self/task/' .. t .. '/stat')
          if f then n = n + 1; f:close() end
        end
        return n
      end
      print(alive() > 0)  -- idle in their universes' caches
      ex:shutdown()  -- closes the universes
      print(alive())
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, rc)
    assert.are.equal('true\ntrue\n0\n', out)
  end)
end)
