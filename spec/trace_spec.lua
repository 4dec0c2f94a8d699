-- spec/trace_spec.lua: `host --trace` and `host.trace` (issue 19). Each case
-- runs host on a small script in a subprocess and reads the Chrome trace
-- JSON it wrote: it parses, every B has its E on the same lane in proper
-- nesting, every lane is named, the GIL is never held by two lanes of one
-- process at once, waits name their object, pool tasks have submit, start
-- and end with future ids. Nothing here looks at a duration.
local sh = require 'spec.support.sh'
local q = sh.quote

package.path = 'scripts/lib/?.lua;' .. package.path
local json = require 'json'

-- A fresh file name for a trace.
local function tracefile(ext)
  local name = os.tmpname()
  os.remove(name)
  return name .. (ext or '.json')
end

local slurp = sh.slurp

-- Runs `script` with host --trace=<file> (plus `args`); returns the decoded
-- trace (or nil), stdout, stderr, exit code and the file's text.
local function traced(script, args, env)
  local path = tracefile()
  local name = sh.tempfile(script)
  local out, err, code = sh.run((env or '') .. ' ' .. q(sh.host) .. ' --trace=' .. q(path) ..
                                ' ' .. (args or '') .. ' ' .. q(name), 30)
  os.remove(name)
  local text = slurp(path)
  os.remove(path)
  local doc = text and json.decode(text)
  return doc, out, err, code, text
end

-- The lane key of an event.
local function lane(e) return e.pid .. ':' .. string.format('%.0f', e.tid) end

-- Checks what every trace must hold (nothing dropped, unless `may_drop`);
-- returns a summary: lanes (key -> name), pids, events by cat.
local function check(doc, may_drop)
  assert.is_table(doc.traceEvents)
  assert.equals('host', doc.otherData.program)
  assert.is_number(doc.otherData.dropped_events)
  if not may_drop then
    assert.equals(0, doc.otherData.dropped_events, doc.otherData.note)
  end
  local names, pids, bycat = {}, {}, {}
  local seen_event, last_ts = false, -math.huge
  local stacks = {}
  for i, e in ipairs(doc.traceEvents) do
    assert.is_string(e.ph, 'event ' .. i)
    assert.is_number(e.pid)
    assert.is_number(e.tid)
    if e.ph == 'M' then
      assert.is_false(seen_event, 'metadata comes first')
      if e.name == 'thread_name' then names[lane(e)] = e.args.name end
      if e.name == 'process_name' then pids[e.pid] = e.args.name end
    else
      seen_event = true
      assert.is_number(e.ts)
      assert.is_string(e.cat)
      assert.is_string(e.name)
      assert.is_true(e.ts >= last_ts, 'sorted by ts at event ' .. i)
      last_ts = e.ts
      bycat[e.cat] = bycat[e.cat] or {}
      table.insert(bycat[e.cat], e)
      local st = stacks[lane(e)] or {}
      stacks[lane(e)] = st
      if e.ph == 'B' then
        table.insert(st, e)
      elseif e.ph == 'E' then
        local b = table.remove(st)
        assert.is_table(b, 'an E without its B: ' .. e.name .. ' on ' .. lane(e))
        assert.equals(b.cat, e.cat, 'proper nesting on ' .. lane(e))
        assert.equals(b.name, e.name, 'proper nesting on ' .. lane(e))
      end
    end
  end
  for key, st in pairs(stacks) do
    assert.equals(0, #st, 'every B has its E on ' .. key)
    assert.is_string(names[key], 'lane ' .. key .. ' has a thread_name')
  end
  for _, e in ipairs(doc.traceEvents) do
    if e.ph ~= 'M' then assert.is_string(pids[e.pid], 'process ' .. e.pid .. ' is named') end
  end
  -- the GIL: at most one holder per process at any time (an E at the same
  -- instant as a B counts first: the giver stamps before it serves)
  local held = {}
  local gil = {}
  for _, e in ipairs(bycat.gil or {}) do table.insert(gil, e) end
  table.sort(gil, function(a, b)
    if a.ts ~= b.ts then return a.ts < b.ts end
    return a.ph == 'E' and b.ph == 'B'
  end)
  for _, e in ipairs(gil) do
    held[e.pid] = (held[e.pid] or 0) + (e.ph == 'B' and 1 or -1)
    assert.is_true(held[e.pid] <= 1, 'two lanes of pid ' .. e.pid .. ' hold the GIL at ' .. e.ts)
  end
  return {names = names, pids = pids, bycat = bycat}
end

local function count(list, pred)
  local n = 0
  for _, e in ipairs(list or {}) do if pred(e) then n = n + 1 end end
  return n
end

describe('host --trace', function()
  it('records threads, the GIL and waits, with a lane per thread', function()
    local doc, out, err, code = traced([[
      local thread = require 'host.thread'
      local lk, ev = thread.Lock(), thread.Event()
      local n = 0
      local ts = {}
      for i = 1, 3 do
        ts[i] = thread.Thread{name = 'worker' .. i, target = function()
          for _ = 1, 100 do lk:acquire(); n = n + 1; lk:release() end
          local x = 0 for k = 1, 2e5 do x = x + k end
        end}
        ts[i]:start()
      end
      assert(not ev:wait(0.01))  -- times out
      local qq = require('host.queue').Queue() assert(qq:get(0.01) == nil)
      for i = 1, 3 do assert(ts[i]:join(10)) end
      print(n)
    ]])
    assert.equals(0, code, err)
    assert.equals('300\n', out)
    local s = check(doc)
    local lanes = {}
    for _, name in pairs(s.names) do lanes[#lanes + 1] = name end
    local all = table.concat(lanes, ' | ')
    for _, want in ipairs{'main', 'worker1', 'worker2', 'worker3'} do
      assert.matches(want, all, 1, true)
    end
    assert.is_true(#s.bycat.gil > 6)
    assert.equals(3, count(s.bycat.thread, function(e) return e.name == 'thread start' end))
    -- the Event's wait timed out and says so; every wait names its object
    local timed_out = 0
    for _, e in ipairs(s.bycat.wait) do
      if e.ph == 'B' then assert.is_string(e.args.object) end
      if e.ph == 'E' then
        assert.is_boolean(e.args.timed_out)
        if e.name == 'wait host.Event' and e.args.timed_out then timed_out = timed_out + 1 end
      end
    end
    assert.equals(1, timed_out)
    assert.equals(1, count(s.bycat.wait, function(e)
      return e.ph == 'E' and e.name == 'wait host.Queue' and e.args.timed_out
    end))
  end)

  it('gives each thread a lane of its own, also when host reuses its OS thread', function()
    -- the threads run one after another: host hands the second the first's
    -- OS thread (same pthread id), yet each keeps its lane and its name
    local doc, out, err, code = traced([[
      local thread = require 'host.thread'
      local ids = {}
      for i = 1, 3 do
        local t = thread.Thread{name = 'seq' .. i, target = function() end}
        t:start()
        assert(t:join(10))
        ids[t.ident] = true
      end
      local n = 0 for _ in pairs(ids) do n = n + 1 end
      print(n)
    ]])
    assert.equals(0, code, err)
    local s = check(doc)
    local by_name = {}
    for key, name in pairs(s.names) do
      assert.is_nil(by_name[name], 'one lane per name: ' .. name)
      by_name[name] = key
      assert.is_nil(name:find(',', 1, true), 'a lane holds one thread: ' .. name)
    end
    for _, want in ipairs{'main', 'seq1', 'seq2', 'seq3'} do assert.is_string(by_name[want], want) end
    -- lanes are the threads' numbers, as locks and dumps show them
    assert.equals(1, tonumber(by_name.main:match(':(%d+)$')))
    assert.is_true(tonumber(out) >= 1)
  end)

  it('draws the run as SVG when the path ends in .svg, with a lane per thread', function()
    local path = tracefile('.svg')
    local script = sh.tempfile([[
      local thread = require 'host.thread'
      local t = thread.Thread{name = 'drawn <&> worker', target = function()
        local x = 0 for k = 1, 1e5 do x = x + k end
      end}
      t:start()
      assert(t:join(10))
    ]])
    local _, err, code = sh.run(q(sh.host) .. ' --trace=' .. q(path) .. ' ' .. q(script), 30)
    os.remove(script)
    assert.equals(0, code, err)
    local svg = assert(slurp(path))
    assert.matches('^<svg', svg)
    assert.matches('drawn &lt;&amp;&gt; worker', svg, 1, true)
    assert.matches('class="gil', svg, 1, true)
    local png = path .. '.png'
    local _, rerr, rcode = sh.run('rsvg-convert ' .. q(path) .. ' -o ' .. q(png))
    assert.equals(0, rcode, rerr)
    assert.is_true(#assert(slurp(png)) > 1000)
    os.remove(png)
    os.remove(path)
    -- and from a script: trace.start(x.svg) ... trace.stop()
    local out2, err2, code2 = sh.host_script(([[
      local trace = require 'host.trace'
      trace.start(%q)
      trace.mark('from a script')
      print(trace.stop())
    ]]):format(path))
    assert.equals(0, code2, err2)
    assert.equals(path .. '\n', out2)
    assert.matches('from a script', assert(slurp(path)), 1, true)
    os.remove(path)
  end)

  it('records the switch interval asking a busy holder to yield', function()
    local doc, _, err, code = traced([[
      local thread = require 'host.thread'
      local b = thread.Barrier(2)
      local function spin() b:wait(10) local x = 0 for i = 1, 3e6 do x = x + i end end
      local t1, t2 = thread.start(spin), thread.start(spin)
      assert(t1:join(30) and t2:join(30))
    ]], '--switch-interval=0.001')
    assert.equals(0, code, err)
    local s = check(doc)
    assert.is_true(count(s.bycat.switch, function(e) return e.name == 'switch request' end) >= 1)
    -- and the GIL went back and forth between the two spinners
    local lanes = {}
    for _, e in ipairs(s.bycat.gil) do
      if e.ph == 'B' and s.names[lane(e)] ~= 'main' then lanes[lane(e)] = (lanes[lane(e)] or 0) + 1 end
    end
    local n, most = 0, 0
    for _, k in pairs(lanes) do n = n + 1 most = math.max(most, k) end
    assert.equals(2, n)
    assert.is_true(most >= 2)
  end)

  it('keeps a preempted pool task\'s span around the GIL spans of its run', function()
    local doc, _, err, code = traced([[
      local futures = require 'host.futures'
      local function work(n) local x = 0 for i = 1, n do x = x + i end return x end
      local ex <close> = futures.ThreadPoolExecutor{max_workers = 2}
      local fs = {}
      for i = 1, 4 do fs[i] = ex:submit(work, 3e6) end
      for i = 1, 4 do assert(fs[i]:result(30)) end
    ]], '--switch-interval=0.001')
    assert.equals(0, code, err)
    local s = check(doc)
    assert.equals(4, count(s.bycat.task, function(e) return e.ph == 'E' end))
  end)

  it('records the tasks of the three pools with future ids, each worker on its lane', function()
    local doc, _, err, code = traced([[
      local futures = require 'host.futures'
      local function work(n) local x = 0 for i = 1, n do x = x + i end return x end
      for _, kind in ipairs{'ThreadPoolExecutor', 'InterpreterPoolExecutor', 'ProcessPoolExecutor'} do
        local ex = futures[kind]{max_workers = 2}
        local fs = {}
        for i = 1, 4 do fs[i] = ex:submit(work, 1000) end
        local bad = ex:submit(error, 'no')
        for i = 1, 4 do assert(fs[i]:result(20)) end
        assert(bad:exception(20))
        ex:shutdown{wait = true}
      end
    ]])
    assert.equals(0, code, err)
    local s = check(doc)
    local main_pid = doc.traceEvents[#doc.traceEvents].pid
    for _, e in ipairs(doc.traceEvents) do
      if e.ph == 'M' and e.name == 'process_name' and e.args.name:match '^host ' then main_pid = e.pid end
    end
    local by_pool = {}
    local submitted = {}
    for _, e in ipairs(s.bycat.task) do
      if e.ph == 'i' then
        assert.equals('submit #' .. e.args.future, e.name)
        assert.equals(main_pid, e.pid, 'submits are on the submitting lane')
        submitted[e.args.future] = e.args.pool
      elseif e.ph == 'B' then
        assert.equals('task #' .. e.args.future, e.name)
        local pool = e.args.pool
        assert.equals(submitted[e.args.future], pool, 'task #' .. e.args.future .. ' was submitted first')
        by_pool[pool] = by_pool[pool] or {n = 0, lanes = {}, pids = {}, raised = 0}
        by_pool[pool].n = by_pool[pool].n + 1
        by_pool[pool].lanes[lane(e)] = s.names[lane(e)]
        by_pool[pool].pids[e.pid] = true
      end
    end
    for _, pool in ipairs{'ThreadPool', 'InterpreterPool', 'ProcessPool'} do
      assert.equals(5, by_pool[pool] and by_pool[pool].n, pool)
    end
    assert.equals(5, count(s.bycat.task, function(e) return e.ph == 'E' and e.args.outcome == 'raised' end) + 2)
    -- the waits for results name their future
    assert.is_true(count(s.bycat.wait, function(e)
      return e.ph == 'B' and e.args.object:match '^host%.Future #%d+'
    end) >= 1)
    for _, name in pairs(by_pool.InterpreterPool.lanes) do
      assert.matches('^interpreter%-pool worker %d$', name)
    end
    for pid in pairs(by_pool.ProcessPool.pids) do
      assert.are_not.equal(main_pid, pid, 'a process-pool task runs on its worker\'s pid')
      assert.matches('^process%-pool worker ' .. pid .. '$', s.pids[pid])
    end
    for _, name in pairs(by_pool.ThreadPool.lanes) do
      assert.matches('ThreadPoolExecutor', name, 1, true)
    end
  end)

  it('records io.read and os.execute as waits, and coroutines only with --trace-coroutines', function()
    local script = [[
      local thread = require 'host.thread'
      local co = coroutine.wrap(function()
        for i = 1, 3 do thread.sleep(0.001) coroutine.yield(i) end
      end)
      co() co() co()
      os.execute('true')
      io.read()
    ]]
    local doc, _, err, code = traced(script, '--trace-coroutines')
    assert.equals(0, code, err)
    local s = check(doc)
    -- three resumes, each split where its sleep gives the GIL up (check()
    -- has seen every span nested)
    assert.is_true(count(s.bycat.coroutine, function(e)
      return e.ph == 'B' and e.name == 'resume coroutine'
    end) >= 3)
    for _, what in ipairs{'os.execute', 'io.read'} do
      assert.equals(1, count(s.bycat.wait, function(e)
        return e.ph == 'B' and e.name == 'wait ' .. what and e.args.object == what
      end), what)
    end
    doc = traced(script)
    s = check(doc)
    assert.is_nil(s.bycat.coroutine)
  end)

  it('is written after an error, on os.exit and with HOST_TRACE', function()
    local doc, _, err, code = traced("require('host.trace').mark('before') error('boom')")
    assert.equals(1, code)
    assert.matches('boom', err, 1, true)
    local s = check(doc)
    assert.equals('before', s.bycat.mark[1].name)
    doc, _, _, code = traced("require('host.trace').mark('x') os.exit(3)")
    assert.equals(3, code)
    check(doc)
    doc, _, _, code = traced("require('host.trace').mark('x') os.exit(true, true)")
    assert.equals(0, code)
    check(doc)
    local path = tracefile()
    local _, err2, code2 = sh.run('HOST_TRACE=' .. q(path) .. ' ' .. q(sh.host) .. " -e 'print(1)'")
    assert.equals(0, code2, err2)
    check(json.decode(assert(slurp(path))))
    os.remove(path)
  end)

  it('is written after Ctrl-C', function()
    local path, ready = tracefile(), tracefile('.ready')
    -- a wait has ended before `ready` is written: a Ctrl-C that comes
    -- before the long wait begins still finds one in the trace
    local script = sh.tempfile(([[
      local thread = require 'host.thread'
      local event = thread.Event()
      event:wait(0.001)
      local f = assert(io.open(%q, 'w')) f:write('1') f:close()
      event:wait(20)
    ]]):format(ready))
    local _, _, code = sh.run(q(sh.host) .. ' --trace=' .. q(path) .. ' ' .. q(script) ..
      ' & pid=$!; while [ ! -s ' .. q(ready) .. ' ]; do sleep 0.02; done; kill -INT $pid; wait $pid', 30)
    os.remove(script)
    os.remove(ready)
    assert.are_not.equal(0, code)
    local s = check(json.decode(assert(slurp(path), 'no trace after SIGINT')))
    os.remove(path)
    assert.is_true(count(s.bycat.wait, function(e) return e.name == 'wait host.Event' end) >= 1)
  end)

  it('keeps the newest events within --trace-limit, balanced, and says what it dropped', function()
    local doc, _, err, code, text = traced([[
      local trace = require 'host.trace'
      local thread = require 'host.thread'
      for i = 1, 4000 do trace.mark('m' .. i) thread.sleep(0) end
      trace.mark('last')
    ]], '--trace-limit=0.05')
    assert.equals(0, code, err)
    assert.is_true(#text <= 50000, #text .. ' bytes')
    local s = check(doc, true)
    assert.is_true(doc.otherData.dropped_events > 0)
    assert.matches('dropped', doc.otherData.note, 1, true)
    local marks = s.bycat.mark
    assert.equals('last', marks[#marks].name)
    assert.is_not.equal('m1', marks[1].name)
  end)

  it('refuses bad options with a clear message', function()
    local _, err, code = sh.host_run("--trace-limit=0 --trace=/tmp/x.json -e 'print(1)'")
    assert.equals(1, code)
    assert.matches('--trace-limit must be a number of megabytes', err, 1, true)
    _, err, code = sh.host_run("--trace= -e 'print(1)'")
    assert.equals(1, code)
    assert.matches('--trace needs a file name', err, 1, true)
    _, err, code = sh.host_run("--trace=/nonexistent/dir/t.json -e 'print(1)'")
    assert.matches('cannot write /nonexistent/dir/t.json', err, 1, true)
    local out
    out, err, code = sh.host_run("--help")
    assert.matches('--trace=PATH', out, 1, true)
  end)
end)

describe('host.trace', function()
  it('starts, marks, counts and stops from a script', function()
    local path = tracefile()
    local out, err, code = sh.host_script(([[
      local trace = require 'host.trace'
      print(trace.enabled())
      trace.start(%q)
      print(trace.enabled())
      trace.mark('here')
      trace.counter('items', 42)
      print(trace.stop() == %q, trace.enabled())
    ]]):format(path, path))
    assert.equals(0, code, err)
    assert.equals('false\ntrue\ntrue\tfalse\n', out)
    local s = check(json.decode(assert(slurp(path))))
    os.remove(path)
    assert.equals('here', s.bycat.mark[1].name)
    assert.equals(42, s.bycat.counter[1].args.value)
    assert.equals('C', s.bycat.counter[1].ph)
  end)

  it('marks from an interpreter-pool worker land on its lane; start and stop stay the parent\'s', function()
    local doc, out, err, code = traced([[
      local futures = require 'host.futures'
      local ex <close> = futures.InterpreterPoolExecutor{max_workers = 1}
      print(ex:submit(function()
        local trace = require 'host.trace'
        trace.mark('in worker')
        local ok, e = pcall(trace.start, '/tmp/never.json')
        return trace.enabled(), e
      end):result(30))
    ]])
    assert.equals(0, code, err)
    assert.matches("^true\t.*an interpreter%-pool worker records into its parent's trace", out)
    local s = check(doc)
    assert.equals('in worker', s.bycat.mark[1].name)
    assert.equals('interpreter-pool worker 1', s.names[lane(s.bycat.mark[1])])
  end)

  it('writes valid UTF-8 where names, marks and counters hold invalid bytes', function()
    local doc, out, err, code, text = traced([[
      local trace = require 'host.trace'
      local thread = require 'host.thread'
      trace.mark('bad \255\254 "q" \n \237\160\128 \192\175 end\240\159')
      trace.counter('c\255', 1)
      local t = thread.Thread{name = 'n\255"', target = function() trace.mark('\226\130\172') end}
      t:start() assert(t:join(5))
    ]])
    assert.equals(0, code, err)
    assert.is_not_nil(utf8.len(text), 'the file is UTF-8')
    local s = check(doc)
    local marks = {}
    for _, e in ipairs(s.bycat.mark) do marks[#marks + 1] = e.name end
    table.sort(marks)
    assert.same({'bad \u{FFFD}\u{FFFD} "q" \n \u{FFFD}\u{FFFD}\u{FFFD} \u{FFFD}\u{FFFD} end\u{FFFD}\u{FFFD}',
                 '\u{20AC}'}, marks)
    assert.equals('c\u{FFFD}', s.bycat.counter[1].name)
    local named = false
    for _, name in pairs(s.names) do named = named or name == 'n\u{FFFD}"' end
    assert.is_true(named)
  end)

  it('refuses a path it cannot write at start, before the script runs', function()
    local out, err, code = sh.host_run("--trace=/nonexistent/dir/t.json -e 'print(1)'")
    assert.equals(1, code)
    assert.equals('', out)
    assert.matches('host.trace: cannot write /nonexistent/dir/t.json: No such file', err, 1, true)
    out, err, code = sh.host_script([[
      local trace = require 'host.trace'
      print(pcall(trace.start, '/tmp'))
      print(trace.enabled())
    ]])
    assert.equals(0, code, err)
    assert.equals('false\thost.trace: cannot write /tmp: Is a directory\nfalse\n', out)
  end)

  it('closes a process-pool task whose worker exits inside it under the task\'s id', function()
    local doc, out, err, code = traced([[
      local futures = require 'host.futures'
      local ex = futures.ProcessPoolExecutor{max_workers = 1}
      local f = ex:submit(function() os.exit(3) end)
      print(pcall(f.result, f, 10))
    ]])
    assert.equals(0, code, err)
    assert.matches('^false\tBrokenProcessPool', out)
    local s = check(doc)
    local ends = 0
    for _, e in ipairs(s.bycat.task) do
      if e.ph == 'E' then
        assert.matches('^task #%d+$', e.name)
        ends = ends + 1
      end
    end
    assert.equals(1, ends)
  end)

  it('forgets the resume spans open at stop when it starts again', function()
    local path = tracefile()
    local out, err, code = sh.host_script(([[
      local trace = require 'host.trace'
      local thread = require 'host.thread'
      for round = 1, 3 do
        trace.start(%q, {coroutines = true})
        coroutine.wrap(function() trace.stop() coroutine.yield() end)()
      end
      trace.start(%q, {coroutines = true})
      for _ = 1, 3 do thread.sleep(0.001) end
      trace.stop()
    ]]):format(path, path, path))
    assert.equals(0, code, err)
    local s = check(json.decode(assert(slurp(path))))
    os.remove(path)
    assert.is_nil(s.bycat.coroutine)
  end)

  it('names the lanes of threads that started before the trace, and of the thread that starts it', function()
    local path = tracefile()
    local out, err, code = sh.host_script(([[
      local thread = require 'host.thread'
      local trace = require 'host.trace'
      local ready, go = thread.Event(), thread.Event()
      local early = thread.Thread{name = 'early', target = function()
        ready:set() assert(go:wait(5))
      end}
      early:start() assert(ready:wait(5))
      local starter = thread.Thread{name = 'starter', target = function() trace.start(%q) end}
      starter:start() assert(starter:join(5))
      go:set() assert(early:join(5))
      trace.stop()
    ]]):format(path))
    assert.equals(0, code, err)
    local s = check(json.decode(assert(slurp(path))))
    os.remove(path)
    local names = {}
    for _, name in pairs(s.names) do names[#names + 1] = name end
    table.sort(names)
    assert.same({'early', 'main', 'starter'}, names)
  end)

  it('merges the process-pool workers\' events when $TMPDIR holds glob characters, and leaves no file there', function()
    local dir = os.tmpname()
    os.remove(dir)
    dir = dir .. ' [1]*?'
    assert(os.execute('mkdir ' .. q(dir)))
    local doc, out, err, code = traced([[
      local futures = require 'host.futures'
      local ex = futures.ProcessPoolExecutor{max_workers = 2, max_tasks_per_child = 1}
      local fs = {}
      for i = 1, 4 do fs[i] = ex:submit(function(x) return x end, i) end
      for i = 1, 4 do assert(fs[i]:result(10) == i) end
      ex:shutdown()
    ]], nil, 'TMPDIR=' .. q(dir))
    local left = sh.run('ls -A ' .. q(dir))
    os.execute('rm -rf ' .. q(dir))
    assert.equals(0, code, err)
    assert.equals('', left)
    local s = check(doc)
    local pids = 0
    for _ in pairs(s.pids) do pids = pids + 1 end
    assert.is_true(pids >= 5, 'a process per task and the parent')
  end)

  it('raises what _G\'s __index raises for arg, and keeps nothing it allocated', function()
    local out, err, code = sh.host_script([[
      local trace = require 'host.trace'
      arg = nil
      setmetatable(_G, {__index = function(_, k) error('no global ' .. k, 0) end})
      local path = os.tmpname()
      print(pcall(trace.start, path))
      print(trace.enabled())
      os.remove(path)
    ]])
    assert.equals(0, code, err)
    assert.equals('false\tno global arg\nfalse\n', out)
  end)

  it('leaves out what a process-pool worker did before this trace started', function()
    local path1, path2 = tracefile(), tracefile()
    local out, err, code = sh.host_script(([[
      local futures = require 'host.futures'
      local trace = require 'host.trace'
      trace.start(%q)
      local ex = futures.ProcessPoolExecutor{max_workers = 2}
      local fs = {}
      for i = 1, 6 do fs[i] = ex:submit(function(x) return x end, i) end
      for i = 1, 6 do assert(fs[i]:result(10) == i) end
      trace.stop()
      trace.start(%q)
      ex:shutdown()  -- the workers write what they recorded as they exit
      trace.stop()
    ]]):format(path1, path2))
    assert.equals(0, code, err)
    local doc = json.decode(assert(slurp(path2)))
    os.remove(path1)
    os.remove(path2)
    local s = check(doc)
    assert.equals(0, count(s.bycat.task, function(e) return e.ph == 'B' end))
  end)

  it('keeps the process-pool workers\' events when $TMPDIR is no writable directory', function()
    local doc, out, err, code = traced([[
      local futures = require 'host.futures'
      local ex = futures.ProcessPoolExecutor{max_workers = 2}
      assert(ex:submit(function() return 1 end):result(10) == 1)
      ex:shutdown()
    ]], nil, 'TMPDIR=/nonexistent/dir')
    assert.equals(0, code, err)
    local s = check(doc)
    local pids = 0
    for _ in pairs(s.pids) do pids = pids + 1 end
    assert.is_true(pids >= 2, 'the parent and a worker')
    assert.equals(1, count(s.bycat.task, function(e) return e.ph == 'B' end))
  end)

  it('raises clear errors for bad arguments', function()
    local out, err, code = sh.host_script([[
      local trace = require 'host.trace'
      local function msg(...) local ok, e = pcall(...) assert(not ok) print(e) end
      msg(trace.start)
      msg(trace.start, '')
      msg(trace.start, '/tmp/x.json', 5)
      msg(trace.start, '/tmp/x.json', {limit = -1})
      msg(trace.stop)
      msg(trace.mark)
      msg(trace.counter, 'c', 'x')
      msg(trace.counter, 'c', 0/0)
      trace.start(os.tmpname())
      msg(trace.start, '/tmp/y.json')
      os.remove(trace.stop())
    ]])
    assert.equals(0, code, err)
    local lines = {}
    for l in out:gmatch '[^\n]+' do lines[#lines + 1] = l end
    assert.matches("bad argument #1 .*string expected, got no value", lines[1])
    assert.matches("bad argument #1 .*empty path", lines[2])
    assert.matches("bad argument #2 .*table expected, got number", lines[3])
    assert.matches("limit must be a number of megabytes", lines[4], 1, true)
    assert.matches("not tracing", lines[5], 1, true)
    assert.matches("bad argument #1 .*string expected", lines[6])
    assert.matches("bad argument #2 .*number expected, got string", lines[7])
    assert.matches("bad argument #2 .*finite number", lines[8])
    assert.matches("already tracing", lines[9], 1, true)
  end)
end)
