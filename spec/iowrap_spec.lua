-- spec/iowrap_spec.lua: the standard library's blocking calls release the
-- GIL while they block, and return exactly what Lua 5.4's own do.
--
-- How "another thread progressed meanwhile" is shown, without a clock: the
-- blocking call waits for a command that waits for a flag file, and only the
-- main thread creates the flag, after counting to N in Lua while the other
-- thread blocks. The command prints (or exits 0) only if the flag came, and
-- the blocked thread reads the count the moment its call returns: it must
-- see N, counted by the main thread while it was inside the call. Had the
-- call kept the GIL, the main thread could not have run: the command gives
-- up after T seconds (exit 124, no output), the blocked thread sees the
-- count still at 0, and the spec fails instead of hanging.
local thread = require 'host.thread'
local sh = require 'spec.support.sh'

local T = 10     -- seconds: the limit of every wait below
local N = 1000   -- increments the main thread makes while the other blocks

-- A shell command that succeeds once `flag` exists, or fails after T seconds.
local function wait_for(flag)
  return ('timeout %d sh -c %s'):format(T, sh.quote(('until [ -e %s ]; do sleep 0.01; done'):format(sh.quote(flag))))
end

-- Runs block(flag) in a thread: it prepares and returns the blocking call.
-- The main thread waits until that call is about to start, counts to N,
-- creates the flag, and joins. Returns the count the blocking thread saw
-- as soon as its call returned, and the call's results (packed).
local function progress_while(block)
  local flag = os.tmpname()
  os.remove(flag)
  local state = { count = 0 }
  local about_to_block = thread.Event()
  local t = thread.start(function()
    local run = block(flag)
    about_to_block:set()
    local results = table.pack(run())
    return state.count, results
  end)
  assert(about_to_block:wait(T))
  for _ = 1, N do state.count = state.count + 1 end
  assert(io.open(flag, 'w')):close()
  local ok, seen, results = t:join(T + 5)
  os.remove(flag)
  assert(ok, seen)
  return seen, results
end

describe('blocking stdlib calls', function()
  it('return what lua5.4 returns: every format, error and end of file', function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute('mkdir ' .. sh.quote(dir)))
    local cases = 'spec/support/io_cases.lua ' .. sh.quote(dir)
    local ref, referr, refcode = sh.run('lua5.4 ' .. cases, 60)
    local out, err, code = sh.host_run(cases, 60)
    os.execute('rm -rf ' .. sh.quote(dir))
    assert.are.equal(0, refcode, referr)
    assert.are.equal('', err)
    assert.are.equal(0, code)
    assert.are.equal(ref, out)
    assert.matches('popen close: true nil "exit" 3', out, 1, true)
  end)

  it('file:read on a pipe lets other threads run while it blocks', function()
    local seen, r = progress_while(function(flag)
      local p = io.popen(wait_for(flag) .. ' && echo ready; echo rest')
      return function()
        local line, rest = p:read('l', 'a')
        return line, rest, p:close()
      end
    end)
    assert.are.equal(N, seen)
    assert.are.same({ 'ready', 'rest\n', true, 'exit', 0, n = 5 }, r)
  end)

  it('io.read on a pipe lets other threads run while it blocks', function()
    local saved = io.input()
    local seen, r = progress_while(function(flag)
      io.input(io.popen(wait_for(flag) .. ' && printf "7 x\\n"'))
      return function() return io.read('n', 'L') end
    end)
    io.input():close()
    io.input(saved)
    assert.are.equal(N, seen)
    assert.are.same({ 7, ' x\n', n = 2 }, r)
  end)

  it('io.lines on a pipe lets other threads run while it blocks', function()
    local saved = io.input()
    local seen, r = progress_while(function(flag)
      io.input(io.popen(wait_for(flag) .. ' && printf "a\\nb"'))
      return function()
        local got = {}
        for l in io.lines() do got[#got + 1] = l end
        return table.concat(got, ',')
      end
    end)
    io.input():close()
    io.input(saved)
    assert.are.equal(N, seen)
    assert.are.same({ 'a,b', n = 1 }, r)
  end)

  it('file:lines on a pipe lets other threads run while it blocks', function()
    local seen, r = progress_while(function(flag)
      local p = io.popen(wait_for(flag) .. ' && printf "1 2\\n3 4\\n"')
      return function()
        local sum = 0
        for a, b in p:lines('n', 'n') do sum = sum + a * b end
        return sum, p:close()
      end
    end)
    assert.are.equal(N, seen)
    assert.are.same({ 14, true, 'exit', 0, n = 4 }, r)
  end)

  it('os.execute lets other threads run while the command runs', function()
    local seen, r = progress_while(function(flag)
      return function() return os.execute(wait_for(flag) .. ' && exit 3') end
    end)
    assert.are.equal(N, seen)
    assert.are.same({ nil, 'exit', 3, n = 3 }, r)
  end)

  it("closing io.popen's file lets other threads run while the command ends", function()
    local seen, r = progress_while(function(flag)
      local p = io.popen(wait_for(flag))
      return function() return p:close() end
    end)
    assert.are.equal(N, seen)
    assert.are.same({ true, 'exit', 0, n = 3 }, r)
  end)

  it('gives each of several threads reading one pipe whole lines', function()
    local p = io.popen('seq 1 20000')
    local threads = {}
    for i = 1, 4 do
      threads[i] = thread.start(function()
        local mine = {}  -- one table per thread: `got[#got + 1] = l` would race
        for l in p:lines() do mine[#mine + 1] = l end
        return mine
      end)
    end
    local got = {}
    for i = 1, 4 do
      local ok, mine = threads[i]:join(T)
      assert.is_true(ok)
      table.move(mine, 1, #mine, #got + 1, got)
    end
    assert.are.same({ true, 'exit', 0 }, { p:close() })
    assert.are.equal(20000, #got)
    local seen = {}
    for _, l in ipairs(got) do
      local n = assert(math.tointeger(tonumber(l)), l)
      assert.is_nil(seen[n])
      seen[n] = true
    end
    for n = 1, 20000 do assert.is_true(seen[n]) end
  end)

  it('makes a close wait for a thread that is reading the file', function()
    local flag = os.tmpname()
    os.remove(flag)
    local p = io.popen(wait_for(flag) .. ' && echo data')
    local about_to_read = thread.Event()
    local reader = thread.start(function()
      about_to_read:set()
      return p:read 'a'
    end)
    assert(about_to_read:wait(T))
    thread.sleep(0.05)  -- only makes "reader is inside read" likely; both orders are checked
    local closer = thread.start(function() return p:close() end)
    thread.sleep(0.05)
    assert(io.open(flag, 'w')):close()
    local cok, a, b, c = closer:join(T + 5)
    local rok, data = reader:join(T + 5)
    os.remove(flag)
    assert.is_true(cok)
    assert.are.same({ true, 'exit', 0 }, { a, b, c })
    if rok then
      assert.are.equal('data\n', data)        -- the close waited for the read
    else
      assert.matches('attempt to use a closed file', data, 1, true)  -- it came first
    end
    assert.are.equal('closed file', io.type(p))
  end)
end)

-- Closing a file that another thread reads with several formats (13.6).
-- Run in a subprocess: before the fix the close called through a NULL
-- pointer (SIGSEGV). The decision (iowrap.c): the close waits for the
-- format being read, then closes; the reader raises at its next format.
describe('closing a file while another thread reads it', function()
  -- The reader blocks in its first format on a FIFO: for 'popen', `cat` of
  -- the FIFO; for 'file', the FIFO opened with io.open (liolib's own close
  -- function), fed by a `cat` the script writes to. The closer starts
  -- while the reader waits; the data comes after. The sleeps only make
  -- "the reader is inside its read" likely: every order has one outcome
  -- allowed below, and none may hang.
  local script = [[
    local thread = require 'host.thread'
    thread.excepthook = function() end  -- the reader's error is checked by its join
    local kind, how, fifo = ...
    local T = 10
    local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
    assert(os.execute('mkfifo ' .. q(fifo)))
    local f, w
    if kind == 'popen' then
      f = assert(io.popen('exec cat ' .. q(fifo)))
      w = assert(io.open(fifo, 'w'))
    else
      w = assert(io.popen('exec cat > ' .. q(fifo), 'w'))
      f = assert(io.open(fifo, 'r'))
    end
    local started = thread.Event()
    local reader = thread.start(function()
      started:set()
      if how == 'read' then return f:read('l', 'l') end
      local got = {}
      for a, b in f:lines('l', 'l') do got[#got + 1] = a .. '+' .. b end
      return table.concat(got, ',')
    end)
    assert(started:wait(T))
    thread.sleep(0.05)
    local closing = thread.Event()
    local closer = thread.start(function() closing:set() return f:close() end)
    assert(closing:wait(T))
    thread.sleep(0.05)
    w:write('one\ntwo\n')
    w:close()
    print('close', closer:join(T))
    local r = table.pack(reader:join(T))
    print('read', r[1], (tostring(r[2]):gsub('\n.*', '')), r[3])
    print(io.type(f))
    os.remove(fifo)
  ]]

  local function run(kind, how)
    local file = sh.tempfile(script)
    local fifo = os.tmpname()
    os.remove(fifo)
    local out, err, code = sh.host_run(sh.quote(file) .. ' ' .. kind .. ' ' .. how .. ' ' .. sh.quote(fifo), 30)
    os.remove(file)
    os.remove(fifo)
    assert.are.equal('', err)
    assert.are.equal(0, code)
    local close, read, closed = out:match('^close\t([^\n]*)\nread\t([^\n]*)\n([^\n]*)\n$')
    assert(close, out)
    assert.are.equal(kind == 'popen' and 'true\ttrue\texit\t0' or 'true\ttrue', close)
    assert.are.equal('closed file', closed)
    return read
  end

  for _, kind in ipairs { 'popen', 'file' } do
    it(('f:read("l", "l") on a %s: the close waits, the read raises'):format(kind), function()
      local read = run(kind, 'read')
      -- closed before its second format; or, had the closer come late,
      -- both lines and then the close
      if read ~= 'true\tone\ttwo' then
        assert.matches('^false\t[^\t]*: attempt to use a closed file\tnil$', read)
      end
    end)

    it(('f:lines("l", "l") on a %s: the close waits, the loop raises'):format(kind), function()
      local read = run(kind, 'lines')
      if read ~= 'true\tone+two\tnil' then
        assert.matches('^false\t[^\t]*: file is already closed\tnil$', read)
      end
    end)
  end

  it('regular file: threads reading with two formats while it is closed', function()
    -- A race, many times over: each reader ends with the error of a read
    -- of a closed file, at its next call or its next format (or, had it
    -- won the race, at the end of the file).
    local file = sh.tempfile [[
      local thread = require 'host.thread'
      thread.excepthook = function() end  -- each reader's error is checked by its join
      local name = ...
      local w = assert(io.open(name, 'w'))
      w:write(('line\n'):rep(100000))
      w:close()
      local outcomes = {}
      for _ = 1, 50 do
        local f = assert(io.open(name))
        local go = thread.Event()
        local ts = {}
        for j = 1, 2 do
          ts[j] = thread.start(function()
            go:set()
            if j == 1 then
              while f:read('l', 'l') do end
            else
              for _ in f:lines('l', 'L') do end
            end
          end)
        end
        assert(go:wait(10))
        assert(f:close())
        for j = 1, 2 do
          local ok, e = ts[j]:join(10)
          local k = ok and 'finished' or tostring(e):match('[%w ]*closed[%w ]*') or tostring(e)
          outcomes[k] = true
        end
      end
      local keys = {}
      for k in pairs(outcomes) do keys[#keys + 1] = k end
      table.sort(keys)
      print(table.concat(keys, '|'))
    ]]
    local name = os.tmpname()
    local out, err, code = sh.host_run(sh.quote(file) .. ' ' .. sh.quote(name), 60)
    os.remove(file)
    os.remove(name)
    assert.are.equal('', err)
    assert.are.equal(0, code)
    assert.matches('^[^\n]+\n$', out)
    for k in out:gsub('\n$', ''):gmatch('[^|]+') do
      assert(k == ' attempt to use a closed file' or k == ' file is already closed'
             or k == 'finished', out)
    end
  end)
end)

describe('reading at the boundaries', function()
  local name
  before_each(function() name = sh.tempfile 'abc\ndef\n' end)
  after_each(function() os.remove(name) end)

  it('a huge count reads what the file holds, without allocating the count', function()
    -- before: "not enough memory" (liolib allocates n bytes up front; under
    -- ASan the allocation itself aborts)
    local f <close> = assert(io.open(name))
    assert.are.same({ 'abc\ndef\n', n = 1 }, table.pack(f:read(math.maxinteger)))
    f:seek('set', 0)
    assert.are.same({ 'ab', 'c\ndef\n', nil, n = 3 }, table.pack(f:read(2, 1e9, 5)))
    local pieces = {}
    for piece in io.lines(name, 1e9) do pieces[#pieces + 1] = piece end
    assert.are.same({ 'abc\ndef\n' }, pieces)
  end)

  it('a negative count is a bad argument', function()
    local f <close> = assert(io.open(name))
    local ok, err = pcall(f.read, f, 'l', -1)
    assert.is_false(ok)
    assert.matches("bad argument #3 to '.*' %(negative count%)", err)
    assert.are.equal('def', f:read 'l')  -- the formats before it were read
    io.input(name)
    ok, err = pcall(io.read, -5)
    io.input():close()
    io.input(io.stdin)
    assert.matches('bad argument #1 .*negative count', err)
  end)

  it('takes 300 formats in io.read and file:read, and 250 in lines', function()
    local formats = {}
    for i = 1, 300 do formats[i] = 0 end
    local f <close> = assert(io.open(name))
    local r = table.pack(f:read(table.unpack(formats)))
    assert.are.equal(300, r.n)
    assert.are.equal('', r[300])
    io.input(name)
    r = table.pack(io.read(table.unpack(formats)))
    io.input():close()
    io.input(io.stdin)
    assert.are.equal(300, r.n)
    local it = io.lines(name, table.unpack(formats, 1, 250))
    r = table.pack(it())
    assert.are.equal(250, r.n)
    assert.are.equal('', r[250])
    formats[2] = 'a'
    it = io.lines(name, table.unpack(formats, 1, 250))
    assert.are.same({ '', 'abc\ndef\n', nil, n = 3 }, table.pack(it()))
    assert.has_error(function() io.lines(name, table.unpack(formats, 1, 251)) end,
      "bad argument #252 to 'lines' (too many arguments)")
  end)

  it('reads nothing from a command that fails, and close reports it', function()
    local p = io.popen('exec /nonexistent/command 2>/dev/null')
    assert.are.same({ '', nil, n = 2 }, table.pack(p:read('a', 'l')))
    assert.are.same({ nil, 'exit', 127 }, { p:close() })
    assert.has_error(function() p:read 'l' end, 'attempt to use a closed file')
    assert.has_error(function() p:lines() end, 'attempt to use a closed file')
  end)
end)

describe('closing a standard file while another thread reads it', function()
  it('answers "cannot close standard file" at once, and the read goes on', function()
    -- before: the close waited for the reader of stdin (here, until the
    -- shell gives up waiting for "closed" and feeds the lines), and the
    -- reader's second format then raised "attempt to use a closed file"
    local script = sh.tempfile [[
      local thread = require 'host.thread'
      io.stdout:setvbuf 'no'
      local started = thread.Event()
      local t = thread.start(function() started:set() return io.stdin:read('l', 'l') end)
      assert(started:wait(10))
      thread.sleep(0.05)  -- only makes "the reader is inside its read" likely
      print('close', io.stdin:close())
      print('closed', io.type(io.stdin))
      print('read', t:join(10))
    ]]
    local out, err = sh.run(([[
      d=$(mktemp -d); mkfifo "$d/in"
      %s %s < "$d/in" > "$d/out" & p=$!
      exec 3> "$d/in"
      for i in $(seq 200); do grep -q closed "$d/out" && break; sleep 0.05; done
      grep -q closed "$d/out" || echo "no close in 10 s"
      printf 'one\ntwo\n' >&3; exec 3>&-
      wait $p; echo "rc=$?"; cat "$d/out"; rm -rf "$d"
    ]]):format(sh.quote(sh.host), sh.quote(script)), 30)
    os.remove(script)
    assert.are.equal('', err)
    assert.are.equal('rc=0\nclose\tnil\tcannot close standard file\nclosed\tfile\nread\ttrue\tone\ttwo\n', out)
  end)
end)

-- The iterator of io.lines(name) closes its file at the end of the file,
-- and its fourth value (the for loop's closing value) closes it when the
-- loop ends; another thread may be reading the same file meanwhile. Run in
-- a subprocess: before the fix, the second of two closes called through a
-- NULL pointer (SIGSEGV): the iterator at the end of the file closed again
-- a file whose close (by another thread) waited for this very read.
describe('io.lines(name) shared by threads', function()
  -- Runs `text` with host (arguments: a file of `lines` numbered lines,
  -- then a free temporary name); returns its output, after checking that
  -- it ended cleanly.
  local function run(text, lines)
    local script = sh.tempfile(text)
    local name = os.tmpname()
    local w = assert(io.open(name, 'w'))
    for i = 1, lines or 0 do w:write(i, '\n') end
    w:close()
    local spare = os.tmpname()
    os.remove(spare)
    local out, err, code = sh.host_run(('%s %s %s'):format(sh.quote(script), sh.quote(name), sh.quote(spare)), 30)
    os.remove(script)
    os.remove(name)
    os.remove(spare)
    assert.are.equal('', err)
    assert.are.equal(0, code)
    return out
  end

  -- Reads lines with `it` until it ends or raises; counts them in
  -- counts[j] and marks each line number in `seen` (a line seen twice is
  -- an error). Returns how it ended: 'end' or the error's text.
  local drain = [[
    local function drain(it, j, counts, seen)
      counts[j] = 0
      local ok, e = pcall(function()
        for l in it do
          local i = tonumber(l)
          assert(not seen[i], 'line seen twice: ' .. l)
          seen[i] = true
          counts[j] = counts[j] + 1
        end
      end)
      return ok and 'end' or (tostring(e):match('file is already closed') or tostring(e))
    end
  ]]

  it('a close while another thread waits in the read: the close waits, the loop ends', function()
    -- the reader waits on a FIFO whose writer writes nothing, then ends
    local out = run([[
      local thread = require 'host.thread'
      local _, fifo = ...
      assert(os.execute("mkfifo '" .. fifo .. "'"))
      local writer = io.popen("sleep 0.5 > '" .. fifo .. "'")
      local it, _, _, f = io.lines(fifo)
      local started = thread.Event()
      local t = thread.start(function()
        started:set()
        local n = 0
        for _ in it do n = n + 1 end
        return n
      end)
      assert(started:wait(10))
      thread.sleep(0.1)  -- only makes "t waits in the read" likely
      print('close', pcall(f.close, f))
      local ok, r = t:join(10)
      print('join', ok, (tostring(r):gsub('^.*: ', '')))
      print(io.type(f))
      writer:close()
    ]])
    local close, join = out:match('^close\t([^\n]*)\njoin\t([^\n]*)\nclosed file\n$')
    assert(close, out)
    -- the close came while t waited (the usual order): it waited for the
    -- read, t's loop ended at the end of the file; or t came first
    if close == 'true\ttrue' then
      assert(join == 'true\t0' or join == 'false\tfile is already closed', out)
    else
      assert.are.equal('false\tattempt to use a closed file', close)
      assert.are.equal('true\t0', join)
    end
  end)

  it('two threads reach the end of the file: each ends cleanly or with the documented error', function()
    local out = run(drain .. [[
      local thread = require 'host.thread'
      local name = ...
      local outcomes = {}
      for _ = 1, 5 do
        local it, _, _, f = io.lines(name)
        local counts, seen = {}, {}
        local ts = {}
        for j = 1, 2 do ts[j] = thread.start(drain, it, j, counts, seen) end
        for j = 1, 2 do
          local ok, how = ts[j]:join(10)
          assert(ok, how)
          assert(how == 'end' or how == 'file is already closed', how)
          outcomes[how] = true
        end
        assert(counts[1] + counts[2] == 100000, counts[1] + counts[2])
        assert(io.type(f) == 'closed file')
      end
      print(outcomes['end'])
    ]], 100000)
    assert.are.equal('true\n', out)
  end)

  it('a thread leaves the loop (its closing value closes the file) while another reads', function()
    local out = run(drain .. [[
      local thread = require 'host.thread'
      local name = ...
      for round = 1, 5 do
        local it, _, _, f = io.lines(name)
        local counts, seen = {}, {}
        local b = thread.start(drain, it, 2, counts, seen)
        -- the main thread's own for loop, which breaks: its closing value
        -- closes the file (unless b reached the end of the file first)
        local n, how = 0, 'end'
        local ok, e = pcall(function()
          for l in it, nil, nil, f do
            local i = tonumber(l)
            assert(not seen[i], 'line seen twice: ' .. l)
            seen[i] = true
            n = n + 1
            if n == 50000 + round * 10000 then how = 'break' break end
          end
        end)
        if not ok then how = tostring(e):match('file is already closed') or tostring(e) end
        local bok, bhow = b:join(10)
        assert(bok, bhow)
        assert(bhow == 'end' or bhow == 'file is already closed', bhow)
        assert(how == 'end' or how == 'break' or how == 'file is already closed', how)
        assert(io.type(f) == 'closed file')
      end
      print('done')
    ]], 200000)
    assert.are.equal('done\n', out)
  end)

  it('several threads share one iterator over a big file: every line once, no crash', function()
    local out = run(drain .. [[
      local thread = require 'host.thread'
      local name = ...
      local outcomes = {}
      for _ = 1, 10 do
        local it, _, _, f = io.lines(name)
        local counts, seen = {}, {}
        local ts = {}
        for j = 1, 6 do ts[j] = thread.start(drain, it, j, counts, seen) end
        local total = 0
        for j = 1, 6 do
          local ok, how = ts[j]:join(10)
          assert(ok, how)
          assert(how == 'end' or how == 'file is already closed', how)
          outcomes[how] = true
          total = total + counts[j]
        end
        assert(total == 50000, total)
        assert(io.type(f) == 'closed file')
      end
      print(outcomes['end'])
    ]], 50000)
    assert.are.equal('true\n', out)
  end)
end)
