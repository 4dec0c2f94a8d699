-- spec/deadlock_spec.lua: hangs explain themselves. Deadlock detection (a
-- DeadlockError in the main thread naming the wait-for cycle, or a report
-- and exit status 1 at exit), the programs it must never flag, and the
-- dumps of every thread: thread.dump_tracebacks, SIGQUIT, the delayed dump.
-- Each scenario runs in a subprocess under a time limit, so a detector that
-- misses fails instead of hanging the run.
local sh = require 'spec.support.sh'

-- Runs `body` after a prelude that loads the libraries; returns out, err, rc.
local function run(body, limit, stdin)
  return sh.host_script([[
    local thread = require 'host.thread'
    local queue = require 'host.queue'
    local futures = require 'host.futures'
    local herror = require 'host.error'
  ]] .. body, limit or 15, stdin)
end

-- The pattern of a literal string.
local function lit(s) return (s:gsub('%p', '%%%0')) end

describe('deadlock detection', function()
  it('raises DeadlockError in the main thread for an A/B lock cycle, naming it', function()
    local out, err, rc = run [[
      local A, B = thread.Lock(), thread.Lock()
      local ready = thread.Event()
      local t = thread.Thread{ name = 'worker', target = function()
        B:acquire(); ready:set(); A:acquire()
      end, daemon = true }
      t:start()
      A:acquire()
      assert(ready:wait(10))
      local ok, e = pcall(B.acquire, B)
      print(ok, herror.is(e, 'DeadlockError'))
      print(e.message)
      print(('%p %p'):format(A, B))
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, rc)
    local ok, msg, a, b = out:match '^(.-)\n(.-)\n(%S+) (%S+)\n$'
    assert.are.equal('false\ttrue', ok)
    assert.are.equal('deadlock: thread 1 "MainThread" waits for host.Lock ' .. b ..
      ' (locked by thread 2 "worker"), which waits for host.Lock ' .. a ..
      ' (locked by thread 1 "MainThread")', msg)
  end)

  it('finds a thread joining a thread that joins it', function()
    local out, err, rc = run [[
      local main = thread.current()
      local t = thread.start(function() main:join() end)
      local ok, e = pcall(t.join, t)
      print(herror.is(e, 'DeadlockError'), e.message)
      os.exit(0)
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, rc)
    assert.matches('^true\tdeadlock: thread 1 "MainThread" waits for host%.Thread 0x%x+ ' ..
      '%(join of thread 2 "Thread%-1"%), which waits for host%.Thread 0x%x+ ' ..
      '%(join of thread 1 "MainThread"%)\n$', out)
  end)

  it('finds a queue that nobody feeds, and an event nobody sets', function()
    local out, err, rc = run [[
      local q = queue.Queue()
      local ev = thread.Event()
      local t = thread.start(function() ev:wait() end)
      local ok, e = pcall(q.get, q)
      print(herror.is(e, 'DeadlockError'), e.message)
      os.exit(0)
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, rc)
    assert.matches('^true\tdeadlock: every thread waits and none can wake another: ' ..
      'thread 1 "MainThread" waits for host%.Queue 0x%x+ %(get: empty%) at [^\n]+:8; ' ..
      'thread 2 "Thread%-1" waits for host%.Event 0x%x+ %(unset%) at [^\n]+:7\n$', out)
  end)

  it('reports an acquire of a Lock that a suspended coroutine of the same thread holds', function()
    local out, err, rc = run [[
      local lock = thread.Lock()
      local co = coroutine.wrap(function()
        local _ <close> = lock:acquire()
        coroutine.yield()
      end)
      co()
      local ok, e = pcall(lock.acquire, lock)
      print(herror.is(e, 'DeadlockError'), e.message)
      print(lock:acquire(0.01))  -- a timed acquire is never flagged
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, rc)
    assert.matches('^true\tdeadlock: thread 1 "MainThread" waits for host%.Lock 0x%x+ ' ..
      '%(locked by thread 1 "MainThread"%), which it holds itself %(a coroutine of that ' ..
      'thread took it, and no other thread can release it%)\nfalse\n$', out)
  end)

  it('names a cycle the main thread waits for from outside it', function()
    local out, err, rc = run [[
      local A, B = thread.Lock(), thread.Lock()
      local e1, e2 = thread.Event(), thread.Event()
      local a = thread.Thread{ name = 'a', daemon = true, target = function()
        A:acquire(); e1:set(); e2:wait(10); B:acquire()
      end }
      local b = thread.Thread{ name = 'b', daemon = true, target = function()
        B:acquire(); e2:set(); e1:wait(10); A:acquire()
      end }
      a:start(); b:start()
      local ok, e = pcall(a.join, a)
      print(herror.is(e, 'DeadlockError'), e.message)
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, rc)
    assert.matches('^true\tdeadlock: thread %d "%a" waits for host%.Lock 0x%x+ %(locked by ' ..
      'thread %d "%a"%), which waits for host%.Lock 0x%x+ %(locked by thread %d "%a"%); ' ..
      'thread 1 "MainThread" waits for host%.Thread 0x%x+ %(join of thread 2 "a"%) at [^\n]+:14\n$', out)
  end)

  it('counts idle pool workers as blocked: only a submit wakes them', function()
    local out, err, rc = run [[
      local ex = futures.ThreadPoolExecutor{ max_workers = 2 }
      assert(ex:submit(function() return 1 end):result(10) == 1)
      local q = queue.Queue()
      local ok, e = pcall(q.get, q)
      print(herror.is(e, 'DeadlockError'), e.message)
      ex:shutdown()
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, rc)
    assert.matches('^true\tdeadlock: every thread waits and none can wake another: ' ..
      'thread 1 "MainThread" waits for host%.Queue 0x%x+ %(get: empty%) at [^\n]+:8; ' ..
      'thread 2 "[^"]+" waits for host%.ThreadPoolExecutor 0x%x+ %(idle worker: no work%)', out)
  end)

  it("finds a thread pool's future whose task waits for the lock its waiter holds", function()
    -- before: a future's result() never counted as blocked, so this hung
    local out, err, rc = run [[
      local lock = thread.Lock()
      local ex = futures.ThreadPoolExecutor{ max_workers = 1 }
      lock:acquire()
      local f = ex:submit(function() lock:acquire() lock:release() return 'ran' end)
      local ok, e = pcall(f.result, f)
      print(ok, herror.is(e, 'DeadlockError'))
      print(e.message)
      lock:release()
      print(f:result(10))
      ex:shutdown()
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, rc)
    local ok, msg, ran = out:match '^(.-)\n(.-)\n(.-)\n$'
    assert.are.equal('false\ttrue', ok)
    assert.matches('^deadlock: every thread waits and none can wake another: thread 1 "MainThread" ' ..
      'waits for host%.Future 0x%x+ %(pending%) at [^;]*; thread 2 "ThreadPoolExecutor%-0_0" waits ' ..
      'for host%.Lock 0x%x+ %(locked by thread 1 "MainThread"%)', msg)
    assert.are.equal('ran', ran)
  end)

  it('finds the deadlock again when the last thread to block waits on what main waits on', function()
    -- before: that thread's wake of main marked it awake too, so the second
    -- result() hung and so did exit
    local out, err, rc = run [[
      local e = thread.Event()
      local ex = futures.ThreadPoolExecutor{ max_workers = 1 }
      local f = ex:submit(function() e:wait() return 'done' end)
      thread.start(function() return f:result() end)
      for i = 1, 2 do
        local ok, x = pcall(f.result, f)
        print(i, ok, herror.is(x, 'DeadlockError'))
      end
    ]]
    assert.are.equal(1, rc)  -- and at exit: the report, status 1
    assert.are.equal('1\tfalse\ttrue\n2\tfalse\ttrue\n', out)
    assert.matches('host: deadlock: every thread waits', err, 1, true)
  end)

  it('ends an uncaught DeadlockError with its traceback and status 1', function()
    local out, err, rc = run [[
      local lock = thread.Lock()
      lock:acquire()
      lock:acquire()
    ]]
    assert.are.equal('', out)
    assert.are.equal(1, rc)
    assert.matches('DeadlockError: deadlock: thread 1 "MainThread" waits for host.Lock', err, 1, true)
    assert.matches("in method 'acquire'", err, 1, true)
  end)

  it('at exit, prints the report and the dump and exits 1 when non-daemon threads can never end', function()
    local out, err, rc = run [[
      local q = queue.Queue()
      thread.Thread{ name = 'consumer', target = function() q:get() end }:start()
      print 'main done'
    ]]
    assert.are.equal('main done\n', out)
    assert.are.equal(1, rc)
    assert.matches('^host: deadlock: every thread waits and none can wake another: ' ..
      'thread 1 "MainThread" waits for the non%-daemon threads to end %(at exit%); ' ..
      'thread 2 "consumer" waits for host%.Queue 0x%x+ %(get: empty%) at [^\n]+:6\n', err)
    assert.matches('host: tracebacks of 2 threads', err, 1, true)
    assert.matches('thread 2 "consumer" (ident ', err, 1, true)
    assert.matches("in method 'get'", err, 1, true)
  end)

  describe('never fires on a program that would progress', function()
    it('a timed wait', function()
      local out, err, rc = run [[
        local q = queue.Queue()
        print(q:get(0.05))
        local lock = thread.Lock()
        lock:acquire()
        print(lock:acquire(0.05), thread.Event():wait(0.05))
      ]]
      assert.are.equal('', err)
      assert.are.equal(0, rc)
      assert.are.equal('nil\ttimeout\nfalse\tfalse\n', out)
    end)

    it('a thread blocked in io.read', function()
      local script = sh.tempfile [[
        local thread = require 'host.thread'
        local t = thread.start(function() return io.read 'l' end)
        print(t:join())
      ]]
      local out, err, rc = sh.run('(sleep 0.3; echo line) | ' .. sh.quote(sh.host) .. ' ' ..
                                  sh.quote(script), 15)
      os.remove(script)
      assert.are.equal('', err)
      assert.are.equal(0, rc)
      assert.are.equal('true\tline\n', out)
    end)

    it('a sleeping thread', function()
      local out, err, rc = run [[
        local q = queue.Queue()
        thread.start(function() thread.sleep(0.1); q:put 'late' end)
        print(q:get())
      ]]
      assert.are.equal('', err)
      assert.are.equal(0, rc)
      assert.are.equal('late\n', out)
    end)

    it('a busy pool worker, with idle ones beside it', function()
      local out, err, rc = run [[
        local q = queue.Queue()
        local ex <close> = futures.ThreadPoolExecutor{ max_workers = 3 }
        ex:submit(function()
          local x, t0 = 0, os.clock()
          while os.clock() - t0 < 0.2 do x = x + 1 end
          q:put 'done'
        end)
        print(q:get())
      ]]
      assert.are.equal('', err)
      assert.are.equal(0, rc)
      assert.are.equal('done\n', out)
    end)

    it('a future that a process pool or an interpreter pool worker completes', function()
      local out, err, rc = run [[
        local q = queue.Queue()
        local pp <close> = futures.ProcessPoolExecutor{ max_workers = 1 }
        local ip <close> = futures.InterpreterPoolExecutor{ max_workers = 1 }
        local f1 = pp:submit(function() local t0 = os.time() repeat until os.clock() > 0.2 return 6 end)
        local f2 = ip:submit(function() local x = 0 for i = 1, 3e6 do x = x + i end return 7 end)
        thread.start(function() q:put(f1:result() * f2:result()) end)
        print(q:get())
      ]]
      assert.are.equal('', err)
      assert.are.equal(0, rc)
      assert.are.equal('42\n', out)
    end)

    it("a thread pool's future whose task sleeps, or waits for a thread that sleeps", function()
      local out, err, rc = run [[
        local ev = thread.Event()
        local ex <close> = futures.ThreadPoolExecutor{ max_workers = 2 }
        local f1 = ex:submit(function() thread.sleep(0.1) return 1 end)
        local f2 = ex:submit(function() ev:wait() return 2 end)
        thread.start(function() thread.sleep(0.2) ev:set() end)
        print(f1:result(), f2:result())
        local f3 = ex:submit(function() return 3 end)
        print(f3:result(), futures.wait({ f1, f2, f3 }) ~= nil)
      ]]
      assert.are.equal('', err)
      assert.are.equal(0, rc)
      assert.are.equal('1\t2\n3\ttrue\n', out)
    end)

    it('many waiters on barriers, semaphores and conditions, notified in turn', function()
      local out, err, rc = run [[
        local n = 6
        local bar = thread.Barrier(n)
        local sem = thread.Semaphore(0)
        local cond = thread.Condition()
        local round = 0
        local ts = {}
        for i = 1, n - 1 do
          ts[i] = thread.start(function()
            for r = 1, 200 do
              bar:wait()
              sem:acquire()
              cond:acquire()
              while round < r do cond:wait() end
              cond:release()
            end
          end)
        end
        for r = 1, 200 do
          bar:wait()
          sem:release(n - 1)
          cond:acquire()
          round = r
          cond:notify_all()
          cond:release()
        end
        for i = 1, n - 1 do assert(ts[i]:join()) end
        print('rounds', round)
      ]]
      assert.are.equal('', err)
      assert.are.equal(0, rc)
      assert.are.equal('rounds\t200\n', out)
    end)

    it('waiters that were notified but have not run yet (ping-pong)', function()
      local out, err, rc = run [[
        local a, b = queue.Queue(), queue.Queue()
        local cond = thread.Condition()
        local turn = 0
        local t = thread.start(function()
          for i = 1, 3000 do b:put(a:get()) end
          for i = 1, 300 do
            cond:acquire()
            while turn % 2 == 0 do cond:wait() end
            turn = turn + 1
            cond:notify()
            cond:release()
          end
        end)
        for i = 1, 3000 do a:put(i); b:get() end
        for i = 1, 300 do
          cond:acquire()
          turn = turn + 1
          cond:notify()
          while turn % 2 == 1 do cond:wait() end
          cond:release()
        end
        print(t:join(), turn)
      ]]
      assert.are.equal('', err)
      assert.are.equal(0, rc)
      assert.are.equal('true\t600\n', out)
    end)
  end)
end)

describe('dumps of every thread', function()
  it('thread.dump_tracebacks(file) names each thread, where it waits and on what', function()
    local out, err, rc = run [[
      local lock = thread.Lock()
      lock:acquire()
      local waiting = thread.Event()
      local t = thread.Thread{ name = 'worker', daemon = true, target = function()
        waiting:set()
        lock:acquire()
      end }
      t:start()
      waiting:wait(10)
      local text
      for _ = 1, 1000 do  -- until the worker waits
        local f = io.tmpfile()
        thread.dump_tracebacks(f)
        f:seek 'set'
        text = f:read 'a'
        if text:find 'waiting for host.Lock' then break end
        thread.sleep(0.005)
      end
      io.write(text)
    ]]
    assert.are.equal('', err)
    assert.are.equal(0, rc)
    assert.matches('^host: tracebacks of 2 threads\n\nthread 1 "MainThread" %(ident %d+%): ' ..
      'running %(this thread%)\nstack traceback:\n\t[^\n]+:17: in main chunk', out)
    assert.matches('\n\nthread 2 "worker" %(ident %d+%): waiting for host%.Lock 0x%x+ ' ..
      '%(locked by thread 1 "MainThread"%) at [^\n]+:10\nstack traceback:\n' ..
      "\t%[C%]: in method 'acquire'\n\t[^\n]+:10: in function", out)
  end)

  it('refuses what is not an open file, and a delay out of range', function()
    local thread = require 'host.thread'
    assert.has_error(function() thread.dump_tracebacks(42) end,
                     "bad argument #1 to 'dump_tracebacks' (FILE* expected, got number)")
    local f = io.tmpfile()
    f:close()
    assert.has_error(function() thread.dump_tracebacks(f) end, 'attempt to use a closed file')
    assert.has_error(function() thread.dump_tracebacks_later(-1) end,
                     "bad argument #1 to 'dump_tracebacks_later' (seconds must be in [0, 1e9])")
  end)

  it('SIGQUIT prints the dump on stderr and the program goes on, blocked or spinning', function()
    local out, err, rc = run [[
      local pid = io.popen('echo $PPID'):read 'l'
      local lock = thread.Lock()
      lock:acquire()
      thread.Thread{ name = 'worker', daemon = true, target = function() lock:acquire() end }:start()
      io.popen('(sleep 0.1; kill -QUIT ' .. pid .. '; sleep 0.8; kill -QUIT ' .. pid ..
               ') >/dev/null 2>&1 &'):close()
      thread.Event():wait(0.5)  -- every thread blocked: the GIL is free
      local t0 = os.clock()
      while os.clock() - t0 < 1.5 do end  -- spins: the dump takes the GIL at a switch
      print 'went on'
    ]]
    assert.are.equal(0, rc)
    assert.are.equal('went on\n', out)
    local _, dumps = err:gsub('host: tracebacks of 2 threads', '')
    assert.are.equal(2, dumps)
    assert.matches('thread 2 "worker" %(ident %d+%): waiting for host%.Lock 0x%x+ ' ..
      '%(locked by thread 1 "MainThread"%) at [^\n]+:8\n', err)
    assert.matches('thread 1 "MainThread" %(ident %d+%): waiting for host%.Event 0x%x+ ' ..
      '%(unset%) at [^\n]+:11, with a timeout\n', err)
    assert.matches('thread 1 "MainThread" %(ident %d+%): runnable %(waiting for the GIL%) ' ..
      'at [^\n]+:13\n', err)
  end)

  it('thread.dump_tracebacks_later dumps once after the delay; cancel forgets it', function()
    local out, err, rc = run [[
      thread.dump_tracebacks_later(0.05)
      thread.Event():wait(0.5)
      thread.dump_tracebacks_later(0.05)
      thread.cancel_dump_tracebacks_later()
      thread.Event():wait(0.3)
      print 'end'
    ]]
    assert.are.equal(0, rc)
    assert.are.equal('end\n', out)
    local _, dumps = err:gsub('host: tracebacks of 1 thread\n', '')
    assert.are.equal(1, dumps)
    assert.matches('waiting for host%.Event 0x%x+ %(unset%) at [^\n]+:6, with a timeout', err)
  end)

  it('--dump-tracebacks-after=S dumps once after S seconds', function()
    local script = sh.tempfile [[
      local thread = require 'host.thread'
      thread.Event():wait(0.5)
      print 'end'
    ]]
    local out, err, rc = sh.host_run('--dump-tracebacks-after=0.05 ' .. sh.quote(script), 15)
    assert.are.equal(0, rc)
    assert.are.equal('end\n', out)
    assert.matches('^host: tracebacks of 1 thread\n\nthread 1 "MainThread"', err)
    _, err, rc = sh.host_run('--dump-tracebacks-after=soon ' .. sh.quote(script), 15)
    os.remove(script)
    assert.are.equal(1, rc)
    assert.matches("--dump-tracebacks-after must be a number of seconds in [0, 1e9], not 'soon'",
                   err, 1, true)
  end)

  it('Ctrl-C while exit waits for non-daemon threads says which hold it up, and where', function()
    local out, err, rc = run [[
      local pid = io.popen('echo $PPID'):read 'l'
      local main = thread.current()
      thread.Thread{ name = 'slow', target = function()
        while main:is_alive() do thread.sleep(0.01) end  -- the main chunk has ended
        io.popen('(sleep 0.2; kill -INT ' .. pid .. ') >/dev/null 2>&1 &'):close()
        thread.sleep(5)  -- where the dump finds it
      end }:start()
      print 'main done'
    ]]
    assert.are.equal('main done\n', out)
    assert.are.equal(1, rc)
    assert.matches('host: interrupted while waiting for non-daemon threads at exit:\n' ..
      'host: tracebacks of 2 threads', err, 1, true)
    assert.matches('thread 2 "slow" %(ident %d+%): sleeping at [^\n]+:10\n', err)
  end)
end)
