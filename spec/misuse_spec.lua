-- spec/misuse_spec.lua: mistakes get a clear error where they are made: a
-- value that cannot be called given to a pool, and an unknown option key
-- (with the closest known one suggested). Every wait has a timeout.
local futures = require 'host.futures'
local thread = require 'host.thread'
local serialize = require 'host.serialize'

local T = 10

-- The message of the error that f raises (it must raise), without the
-- position of the caller that luaL_error puts first.
local function error_of(f)
  local ok, err = pcall(f)
  assert.is_false(ok, 'expected an error')
  return (tostring(err):gsub('^[^\n]-:%d+: ', '', 1))
end

local pools = { 'ThreadPoolExecutor', 'ProcessPoolExecutor', 'InterpreterPoolExecutor' }

describe('submit and map', function()
  for _, name in ipairs(pools) do
    it('refuse a value that cannot be called, at the call, in ' .. name, function()
      local ex <close> = assert(futures[name] { max_workers = 1 })
      assert.are.equal("bad argument #1 to 'submit' (function expected, got number)",
        error_of(function() ex:submit(42) end))
      assert.are.equal("bad argument #1 to 'submit' (function expected, got string)",
        error_of(function() ex:submit('print') end))
      assert.are.equal("bad argument #1 to 'submit' (function expected, got nil)",
        error_of(function() ex:submit(nil, 1) end))
      assert.are.equal("bad argument #1 to 'submit' (function expected, got table)",
        error_of(function() ex:submit({}) end))
      assert.are.equal("bad argument #1 to 'submit' (function expected, got no value)",
        error_of(function() ex:submit() end))
      assert.are.equal("bad argument #1 to 'map' (function expected, got number)",
        error_of(function() ex:map(42, { 1, 2 }) end))
      -- the pool still works, functions as before
      assert.are.equal(3, ex:submit(function(a, b) return a + b end, 1, 2):result(T))
      local got = {}
      for i, v in ex:map(function(x) return -x end, { 1, 2 }) do got[i] = v end
      assert.are.same({ -1, -2 }, got)
    end)
  end

  it('accept a table with __call in the thread pool, as before', function()
    local ex <close> = futures.ThreadPoolExecutor { max_workers = 1 }
    local callable = setmetatable({}, { __call = function(_, x) return x * 2 end })
    assert.are.equal(8, ex:submit(callable, 4):result(T))
  end)

  it('accept a table with __call whose metatable the codec carries, in the process pool', function()
    local mt = { __call = function(self, x) return self.k * x end }
    serialize.register('misuse_spec.Mul', mt)
    local ex <close> = assert(futures.ProcessPoolExecutor { max_workers = 1 })
    assert.are.equal(15, ex:submit(setmetatable({ k = 3 }, mt), 5):result(T))
    local got = {}
    for i, v in ex:map(setmetatable({ k = 2 }, mt), { 1, 2 }) do got[i] = v end
    assert.are.same({ 2, 4 }, got)
  end)
end)

describe('an unknown option', function()
  it('is refused by every pool, with the closest option suggested', function()
    local suggestion = "(unknown option 'maxworkers' (did you mean 'max_workers'?))"
    assert.are.equal("bad argument #1 to 'ThreadPoolExecutor' " .. suggestion,
      error_of(function() futures.ThreadPoolExecutor { maxworkers = 2 } end))
    assert.are.equal("bad argument #1 to 'ProcessPoolExecutor' " .. suggestion,
      error_of(function() futures.ProcessPoolExecutor { maxworkers = 2 } end))
    assert.are.equal("bad argument #1 to 'InterpreterPoolExecutor' " .. suggestion,
      error_of(function() futures.InterpreterPoolExecutor { maxworkers = 2 } end))
    assert.matches("unknown option 'thread_prefix' (did you mean 'thread_name_prefix'?)",
      error_of(function() futures.ThreadPoolExecutor { thread_prefix = 'x' } end), 1, true)
    assert.matches("unknown option 'max_task_per_child' (did you mean 'max_tasks_per_child'?)",
      error_of(function() futures.ProcessPoolExecutor { max_task_per_child = 1 } end), 1, true)
  end)

  it('refuses a known name followed by a NUL and more', function()
    -- before: compared with strcmp, "max_workers\0junk" passed for max_workers
    assert.matches("unknown option 'max_workers\\0...' (did you mean 'max_workers'?)",
      error_of(function() futures.ThreadPoolExecutor { ['max_workers\0junk'] = 2 } end), 1, true)
  end)

  it('lists the options when none is close', function()
    assert.matches("unknown option 'colour' (known options: 'max_workers', 'initializer', " ..
      "'initargs')", error_of(function() futures.InterpreterPoolExecutor { colour = 1 } end),
      1, true)
    assert.matches("unknown option [1]",
      error_of(function() futures.ThreadPoolExecutor { 2 } end), 1, true)
  end)

  it('is refused by shutdown, map, wait, cancel, Thread and loads', function()
    local ex <close> = futures.ThreadPoolExecutor { max_workers = 1 }
    assert.are.equal("bad argument #1 to 'shutdown' (unknown option 'cancel' " ..
      "(did you mean 'cancel_futures'?))",
      error_of(function() ex:shutdown { cancel = true } end))
    assert.matches("unknown option 'timout' (did you mean 'timeout'?)",
      error_of(function() ex:map(print, { 1 }, { timout = 1 }) end), 1, true)
    local f = ex:submit(function() return 1 end)
    assert.matches("unknown option 'returnwhen' (did you mean 'return_when'?)",
      error_of(function() futures.wait({ f }, { returnwhen = 'ALL_COMPLETED' }) end), 1, true)
    assert.matches("unknown option 'Interrupt' (did you mean 'interrupt'?)",
      error_of(function() f:cancel { Interrupt = true } end), 1, true)
    assert.matches("bad argument #1 to 'Thread' (unknown option 'targt' (did you mean 'target'?))",
      error_of(function() thread.Thread { targt = print } end), 1, true)
    assert.matches("unknown option 'function' (did you mean 'functions'?)",
      error_of(function() serialize.loads(serialize.dumps(1), { ['function'] = true }) end), 1, true)
    assert.are.equal(1, f:result(T))
  end)

  it('leaves the documented keys alone', function()
    local ex <close> = futures.ThreadPoolExecutor {
      max_workers = 1, thread_name_prefix = 'p', initializer = function() end,
      initargs = { n = 2, nil, 1 },
    }
    local got = {}
    for i, v in ex:map(function(x) return x end, { 5 }, { timeout = T, chunksize = 1 }) do got[i] = v end
    assert.are.same({ 5 }, got)
    local done = futures.wait({ ex:submit(function() return 1 end) }, { timeout = T, return_when = 'ALL_COMPLETED' })
    assert.are.equal(1, #done)
    assert.are.equal(1, serialize.loads(serialize.dumps(1), { functions = false }))
    local t = thread.Thread { target = function() end, name = 'n', args = { n = 0 }, daemon = false }
    t:start()
    assert.is_true(t:join(T))
    ex:shutdown { wait = true, cancel_futures = false, interrupt = false }
  end)
end)

describe('print', function()
  local sh = require 'spec.support.sh'

  it('never mixes two lines printed at once by several worker universes', function()
    local workers, lines = 3, 4000
    local out, err, code = sh.host_script(([[
      local futures = require 'host.futures'
      local ex = futures.InterpreterPoolExecutor { max_workers = %d }
      local fs = {}
      for w = 1, %d do
        fs[w] = ex:submit(function(id, n)
          local pad = string.rep(string.char(96 + id), 40)
          for i = 1, n do print('w', id, i, pad, pad) end
        end, w, %d)
      end
      for _, f in ipairs(fs) do f:result(60) end
      ex:shutdown()
    ]]):format(workers, workers, lines), 60)
    assert.are.equal(0, code, err)
    local whole, seen = 0, {}
    for line in out:gmatch '[^\n]*\n' do
      local id, i, a, b = line:match '^w\t(%d+)\t(%d+)\t(%l+)\t(%l+)\n$'
      local pad = id and string.rep(string.char(96 + tonumber(id)), 40)
      if not (pad and a == pad and b == pad) then error('a mixed line: ' .. line, 0) end
      seen[id .. ':' .. i] = true
      whole = whole + 1
    end
    assert.are.equal(workers * lines, whole)
    for w = 1, workers do assert.is_true(seen[w .. ':' .. lines]) end
  end)

  it('prints as Lua 5.4 does: tostring, __tostring, __name, tabs, newline, errors', function()
    local script = sh.tempfile [[
      print()
      print(nil, true, 1, 2.5, 'a\0b', -0.0, 1e300 * 10)
      print(setmetatable({}, { __tostring = function() return 'T' end }), 'x')
      print(setmetatable({}, { __name = 'My.Type' }), {})
      print(pcall(print, setmetatable({}, { __tostring = function() return 1 end })))
      print(pcall(print, setmetatable({}, { __tostring = function() error('boom', 0) end })))
      io.write('no newline')
      print('then a line')
    ]]
    local got, _, code = sh.host_run(sh.quote(script))
    local want = sh.run('lua5.4 ' .. sh.quote(script))
    os.remove(script)
    assert.are.equal(0, code)
    assert.are.equal(want:gsub('0x%x+', 'ADDR'), (got:gsub('0x%x+', 'ADDR')))
  end)
end)
