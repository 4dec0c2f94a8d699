-- spec/thread_api_spec.lua: what a Python user expects from `threading`:
-- a thread's error reported when it ends (thread.excepthook), enumerate,
-- main_thread, active_count, get_ident, Timer, Thread{} without a target,
-- and the state in tostring.
local thread = require 'host.thread'
local sh = require 'spec.support.sh'

local T = 5  -- every blocking call's timeout

-- How many times `pat` occurs in s.
local function count(s, pat)
  local n = 0
  for _ in s:gmatch(pat) do n = n + 1 end
  return n
end

describe('a thread error is reported when the thread ends', function()
  it('prints name, ident and traceback at once, even if the script then calls os.exit', function()
    -- before: printed only when the Thread was collected or at close, so
    -- never after os.exit
    local out, err, rc = sh.host_script([[
      local thread = require 'host.thread'
      local t = thread.Thread { name = 'worker', target = function() error('lost in worker') end }
      t:start()
      local d = os.time() + 5
      while t:is_alive() and os.time() <= d do thread.sleep(0.01) end
      print(t.ident)
      io.stdout:flush()
      os.exit(0)
    ]])
    assert.are.equal(0, rc)
    local ident = out:match '^(%d+)\n$'
    assert(ident, out)
    assert.matches('^Exception in thread worker %(ident ' .. ident .. '%):\n[^\n]*: lost in worker\n' ..
      'stack traceback:\n', err)
  end)

  it('is said once; a later join still returns false, err; the exit status stays 0', function()
    local out, err, rc = sh.host_script([[
      local thread = require 'host.thread'
      local t = thread.start(function() error('once only') end)
      local d = os.time() + 5
      while t:is_alive() and os.time() <= d do thread.sleep(0.01) end
      local ok, e = t:join(5)
      print(ok, (tostring(e):match 'once only'))
      t = nil
      collectgarbage()
      collectgarbage()
    ]])
    assert.are.equal(0, rc)
    assert.are.equal('false\tonce only\n', out)
    assert.are.equal(1, count(err, 'Exception in thread'))
    assert.are.equal(1, count(err, 'once only'))
  end)

  it('is not printed when a join waits for the thread: the join returns it', function()
    -- The setter's sleep makes "main is inside join" all but certain; a
    -- late join only makes the error be printed too, so a busy machine gets
    -- three tries, and a host that always prints fails all three.
    local out, err, rc
    for _ = 1, 3 do
      out, err, rc = sh.host_script([[
        local thread = require 'host.thread'
        local go = thread.Event()
        local t = thread.start(function() assert(go:wait(5)) error('joined error') end)
        thread.start(function() thread.sleep(0.2) go:set() end)
        local ok, e = t:join(5)
        print(ok, (tostring(e):match 'joined error'))
      ]])
      if err == '' then break end
    end
    assert.are.equal(0, rc)
    assert.are.equal('false\tjoined error\n', out)
    assert.are.equal('', err)
  end)

  it('goes to thread.excepthook, called in the failed thread with thread, error, traceback', function()
    local q = require('host.queue').Queue()
    local saved = thread.excepthook
    thread.excepthook = function(info)
      q:put({ info = info, current = thread.current(), alive = info.thread:is_alive() })
    end
    local ok, err = pcall(function()
      local e = setmetatable({}, { __tostring = function() return 'custom error' end })
      local t = thread.start(function() error(e) end)
      local got = q:get(T)
      assert.are.equal(t, got.info.thread)
      assert.are.equal(t, got.current)
      assert.is_true(got.alive)  -- as CPython: the hook runs before the thread stops
      assert.are.equal(e, got.info.error)
      assert.matches('^stack traceback:\n', got.info.traceback)
      local joined, je = t:join(T)
      assert.is_false(joined)
      assert.are.equal(e, je)
    end)
    thread.excepthook = saved
    assert(ok, err)
    assert.are.equal(thread.__excepthook__, thread.excepthook)
  end)

  it('reports an excepthook that raises, and the error itself, and goes on', function()
    local out, err, rc = sh.host_script([[
      local thread = require 'host.thread'
      thread.excepthook = function(info) error('hook failed') end
      local t = thread.start(function() error('original error') end)
      local d = os.time() + 5
      while t:is_alive() and os.time() <= d do thread.sleep(0.01) end
      thread.excepthook = 42
      t = thread.start(function() error('second error') end)
      while t:is_alive() and os.time() <= d do thread.sleep(0.01) end
      thread.excepthook = nil  -- the default, as CPython's None
      t = thread.start(function() error('third error') end)
      while t:is_alive() and os.time() <= d do thread.sleep(0.01) end
      print(select('#', t:join(5)), 'went on')
    ]])
    assert.are.equal(0, rc)
    assert.are.equal('2\twent on\n', out)
    assert.matches('Exception in thread.excepthook:\n[^\n]*hook failed\n', err)
    assert.matches('Exception in thread Thread%-1 %(ident %d+%):\n[^\n]*original error\n', err)
    assert.matches('Exception in thread.excepthook:\n[^\n]*attempt to call a number value', err)
    assert.matches('Exception in thread Thread%-2 %(ident %d+%):\n[^\n]*second error\n', err)
    assert.matches('Exception in thread Thread%-3 %(ident %d+%):\n[^\n]*third error\n', err)
  end)

  it('is silent for SystemExit (os.exit in a thread of an interpreter pool worker), as CPython', function()
    local out, err, rc = sh.host_script([[
      local futures = require 'host.futures'
      local ex <close> = futures.InterpreterPoolExecutor { max_workers = 1 }
      print(ex:submit(function()
        local thread = require 'host.thread'
        local t = thread.start(function() os.exit(3) end)
        local d = os.time() + 5
        while t:is_alive() and os.time() <= d do thread.sleep(0.01) end
        local ok, e = t:join(5)
        return ok, (tostring(e):match '^SystemExit')
      end):result(10))
    ]], 30)
    assert.are.equal('', err)
    assert.are.equal(0, rc)
    assert.are.equal('false\tSystemExit\n', out)
  end)

  it('gives the traceback of an error value that carries none', function()
    local _, err, rc = sh.host_script([[
      local thread = require 'host.thread'
      local function deep() error(setmetatable({}, { __tostring = function() return 'a table error' end })) end
      thread.start(function() deep() end)
    ]])
    assert.are.equal(0, rc)
    assert.matches('^Exception in thread Thread%-1 %(ident %d+%):\na table error\nstack traceback:\n.*in [^\n]*deep', err)
  end)

  it('goes to thread.excepthook when reported late, after an interrupted join', function()
    -- before: __gc printed it with the default hook's words, bypassing the user's hook
    local out, err, rc = sh.host_script([[
      local thread = require 'host.thread'
      thread.excepthook = function(info) io.stderr:write('CUSTOM HOOK: ', tostring(info.error), '\n') end
      local pid = assert(io.open('/proc/self/stat')):read('n')
      local t = thread.start(function() thread.sleep(0.5) error('late', 0) end)
      thread.start(function() thread.sleep(0.1) io.popen('kill -INT ' .. pid):close() end)
      print(pcall(t.join, t, 10))
      thread.sleep(1)  -- t ends meanwhile; nobody reports it at its end
      t = nil
      collectgarbage()
      collectgarbage()
      print('end')
    ]], 20)
    assert.are.equal(0, rc, err)
    assert.are.equal('false\tinterrupted!\nend\n', out)
    assert.matches('^CUSTOM HOOK: late\n', err)
    assert.are.equal(1, count(err, 'CUSTOM HOOK'))
    assert.is_nil(err:find('Exception in thread', 1, true))
  end)
end)

describe('thread introspection', function()
  it('enumerate lists the live Threads, main first, then in start order', function()
    local go = thread.Event()
    local a = thread.start(function() go:wait(T) end)
    local b = thread.Thread { target = function() go:wait(T) end }
    local unstarted = thread.Thread {}
    local done = thread.start(function() end)
    done:join(T)
    b:start()
    local list = thread.enumerate()
    go:set()
    assert.are.equal(thread.main_thread(), list[1])
    local pos = {}
    for i, t in ipairs(list) do pos[t] = i end
    assert.is_true(pos[a] ~= nil and pos[b] ~= nil and pos[a] < pos[b])
    assert.is_nil(pos[unstarted])
    assert.is_nil(pos[done])
    assert.is_true(a:join(T))
    assert.is_true(b:join(T))
    assert.are.equal(#thread.enumerate(), thread.active_count())
  end)

  it('main_thread is the same Thread from every thread, with the main ident', function()
    local main = thread.main_thread()
    local t = thread.start(function()
      return thread.main_thread(), thread.get_ident(), thread.current().ident
    end)
    local ok, m, ident, cur = t:join(T)
    assert.is_true(ok)
    assert.are.equal(main, m)
    assert.are.equal(ident, cur)
    assert.are.equal(t.ident, ident)
    assert.are.equal(thread.get_ident(), main.ident)
    assert.are.equal(thread.current(), main)
    assert.is_true(main:is_alive())
  end)

  it('main_thread made first from another thread has the main ident', function()
    local out, err, rc = sh.host_script([[
      local thread = require 'host.thread'
      local t = thread.start(function() local m = thread.main_thread() return m.ident, m.name, m:is_alive() end)
      print(select(2, t:join(5)))
      print(thread.get_ident(), thread.current() == thread.main_thread())
    ]])
    assert.are.equal('', err)
    assert.are.equal(0, rc)
    local id1, rest, id2 = out:match '^(%d+)\t(MainThread\ttrue)\n(%d+)\ttrue\n$'
    assert(id1, out)
    assert.are.equal(id1, id2)
  end)
end)

describe('thread.Timer', function()
  it('calls f(...) after the interval, in its own thread', function()
    local tm = thread.Timer(0.01, function(a, b) return a + b, thread.current() end, 1, 2)
    assert.matches('^host.Timer "Thread%-%d+" %(initial%)$', tostring(tm))
    tm:start()
    local ok, sum, cur = tm:join(T)
    assert.is_true(ok)
    assert.are.equal(3, sum)
    assert.are.equal(tm, cur)
  end)

  it('never calls f when cancelled before it fires, and its join then returns at once', function()
    local ran = false
    local tm = thread.Timer(60, function() ran = true end)
    tm:start()
    tm:cancel()
    assert.are.same({ true }, { tm:join(T) })
    assert.is_false(ran)
    assert.matches('^host.Timer "Thread%-%d+" %(stopped, cancelled, ident %d+%)$', tostring(tm))
    local early = thread.Timer(0, function() ran = true end)
    early:cancel()  -- before start: runs nothing
    early:start()
    assert.is_true(early:join(T))
    assert.is_false(ran)
    local fired = thread.Timer(0, function() return 'fired' end)
    fired:start()
    assert.are.same({ true, 'fired' }, { fired:join(T) })
    fired:cancel()  -- after it fired: nothing to cancel
    assert.is_nil(tostring(fired):match 'cancelled')
  end)

  it('checks its interval and function', function()
    for _, bad in ipairs { -1, 0 / 0, 'soon' } do
      assert.has_error(function() thread.Timer(bad, print) end)
    end
    assert.matches('interval must be a non%-negative number',
      select(2, pcall(thread.Timer, -0.5, print)))
    assert.matches('function expected', select(2, pcall(thread.Timer, 1, 42)))
    assert.is_nil(thread.start(function() end).cancel)  -- only Timers have cancel
  end)
end)

describe('Thread{} without a target', function()
  it('runs nothing', function()
    local t = thread.Thread {}
    assert.are.equal(t, t:start())
    assert.are.same({ true }, { t:join(T) })
  end)

  it('runs the run function set on it, called with the Thread', function()
    local t = thread.Thread { name = 'custom' }
    function t:run() return self.name, thread.current() == self end
    t:start()
    assert.are.same({ true, 'custom', true }, { t:join(T) })
    assert.has_error(function() t.run = function() end end, "cannot set 'run' of a started thread")
    assert.has_error(function() thread.Thread {}.run = 42 end, "'run' must be a function, got number")
  end)

  it('t:run() calls the target in the calling thread, once, as CPython', function()
    local t = thread.Thread { target = function(a, b) return a, b, thread.current() end, args = { 1, 2 } }
    assert.are.same({ 1, 2, thread.current() }, { t:run() })
    assert.are.same({}, { t:run() })
  end)
end)

describe('tostring of a Thread', function()
  it('shows name, state, daemon, ident and whether it raised', function()
    local go = thread.Event()
    local t = thread.Thread { name = 'worker', daemon = true, target = function() go:wait(T) end }
    assert.are.equal('host.Thread "worker" (initial, daemon)', tostring(t))
    t:start()
    assert.are.equal('host.Thread "worker" (started, daemon, ident ' .. t.ident .. ')', tostring(t))
    go:set()
    t:join(T)
    assert.are.equal('host.Thread "worker" (stopped, daemon, ident ' .. t.ident .. ')', tostring(t))
    local saved = thread.excepthook
    thread.excepthook = function() end
    local bad = thread.start(function() error('x') end)
    bad:join(T)
    thread.excepthook = saved
    assert.matches('^host.Thread "Thread%-%d+" %(stopped, raised, ident %d+%)$', tostring(bad))
  end)
end)
