-- spec/map_spec.lua: what executor.c gives every pool: Executor.map at its
-- boundaries (many tables, results released as the loop goes, the timeout,
-- argument errors), on a ThreadPoolExecutor, and the checks of the options
-- every pool's constructor shares. Every wait has a timeout.
local futures = require 'host.futures'
local thread = require 'host.thread'
local herror = require 'host.error'
local sh = require 'spec.support.sh'

local T = 10

describe('Executor.map', function()
  it('maps over 100 and 300 tables, with and without chunks', function()
    -- a stack overflow in C is a crash: run it in a subprocess
    local f = sh.tempfile [[
      local futures = require 'host.futures'
      local ex = futures.ThreadPoolExecutor { max_workers = 2 }
      local function count_and_sum(...)
        local s = 0
        for _, v in ipairs { ... } do s = s + v end
        return select('#', ...), s
      end
      for _, k in ipairs { 100, 300 } do
        for _, chunksize in ipairs { 1, 2 } do
          local args = {}
          for j = 1, k do args[j] = { j, j + 1, j + 2 } end
          args[k + 1] = { chunksize = chunksize, timeout = 10 }
          local line = {}
          for i, n, s in ex:map(count_and_sum, table.unpack(args, 1, k + 1)) do
            line[#line + 1] = i .. ':' .. n .. ':' .. s
          end
          print(k, chunksize, table.concat(line, ' '))
        end
      end
      ex:shutdown()
    ]]
    local out, err, code = sh.host_run(sh.quote(f))
    os.remove(f)
    assert.are.equal(0, code, err)
    local expected = {}
    for _, k in ipairs { 100, 300 } do
      for _, chunksize in ipairs { 1, 2 } do
        local line = {}
        for i = 1, 3 do line[i] = i .. ':' .. k .. ':' .. (k * (k + 1) // 2 + k * (i - 1)) end
        expected[#expected + 1] = k .. '\t' .. chunksize .. '\t' .. table.concat(line, ' ')
      end
    end
    assert.are.equal(table.concat(expected, '\n') .. '\n', out)
  end)

  -- Runs a map of 4 items whose results are fresh tables and reports, when
  -- item 3 is given, which results are still alive somewhere.
  local function alive_at_third(ex, options)
    local alive = setmetatable({}, { __mode = 'k' })
    local seen
    for i, result in ex:map(function(x) return { x } end, { 1, 2, 3, 4 }, options) do
      alive[result] = i
      result = nil  -- luacheck: ignore (the loop keeps nothing of item i)
      if i == 3 then
        collectgarbage()
        collectgarbage()
        seen = {}
        for _, v in pairs(alive) do seen[v] = true end
      end
    end
    return seen
  end

  it('lets a result be collected once the loop has moved past it (bpo-14406)', function()
    local ex <close> = futures.ThreadPoolExecutor { max_workers = 2 }
    local seen = alive_at_third(ex, { timeout = T })
    assert.is_nil(seen[1])
    assert.is_nil(seen[2])
    seen = alive_at_third(ex, { timeout = T, chunksize = 4 })  -- inside one chunk too
    assert.is_nil(seen[1])
    assert.is_nil(seen[2])
  end)

  it('cancels the item whose wait timed out, and names the timeout it was given', function()
    local ex = futures.ThreadPoolExecutor { max_workers = 1 }
    local gate = thread.Event()
    local blocker = ex:submit(function() gate:wait(T) end)  -- keeps the map's items pending
    local ran = {}
    local ok, err = pcall(function()
      for _ in ex:map(function(x) ran[#ran + 1] = x end, { 1, 2, 3 }, { timeout = 0.05 }) do end
    end)
    gate:set()
    blocker:result(T)
    local t = thread.start(function() ex:shutdown() end)
    assert.is_true(t:join(T))
    assert.is_false(ok)
    assert.is_true(herror.is(err, 'TimeoutError'))
    assert.are.equal('map timed out after 0.05 seconds', err.message)
    assert.are.same({}, ran)
  end)

  it('cancels the items after one that raised', function()
    local ex = futures.ThreadPoolExecutor { max_workers = 1 }
    local gate = thread.Event()
    local ran, given = {}, {}
    local ok, err = pcall(function()
      for i in ex:map(function(x)
        ran[#ran + 1] = x
        if x == 1 then error('item one') end
        gate:wait(T)  -- item 2 holds the only worker: item 3 is still pending
      end, { 1, 2, 3 }) do
        given[#given + 1] = i
      end
    end)
    gate:set()
    local t = thread.start(function() ex:shutdown() end)
    assert.is_true(t:join(T))
    assert.is_false(ok)
    assert.matches('item one', err, 1, true)
    assert.are.same({}, given)
    assert.is_nil(ran[3])
  end)

  it('names the argument in its errors', function()
    local ex <close> = futures.ThreadPoolExecutor { max_workers = 1 }
    assert.has_error(function() ex:map(print, { 1 }, { timeout = 'soon' }) end,
      "bad argument #3 to 'map' ('timeout' must be a number, got string)")
    assert.has_error(function() ex:map(print, { 1 }, { timeout = -1 }) end,
      "bad argument #3 to 'map' ('timeout' must be a non-negative number)")
    assert.has_error(function() ex:map(print, { 1 }, { chunksize = 'big' }) end,
      "bad argument #3 to 'map' ('chunksize' must be an integer, got string)")
    assert.has_error(function() ex:map(print, { 1 }, { chunksize = 0 }) end,
      "bad argument #3 to 'map' ('chunksize' must be >= 1)")
    assert.has_error(function() ex:map(print, { 1 }, 5) end,
      "bad argument #3 to 'map' (table expected, got number)")
    assert.has_error(function() ex.map(5, print, { 1 }) end,
      "bad argument #1 to 'map' (host.ThreadPoolExecutor expected, got number)")
  end)

  it('takes a chunksize and a __len of math.maxinteger, and refuses a finalized pool', function()
    local ex <close> = futures.ThreadPoolExecutor { max_workers = 1 }
    local got = {}
    for i, v in ex:map(function(x) return x end, { 1, 2, 3 }, { chunksize = math.maxinteger, timeout = 10 }) do
      got[i] = v
    end
    assert.are.same({ 1, 2, 3 }, got)
    local huge = setmetatable({}, { __len = function() return math.maxinteger end })
    local n = 0
    for _ in ex:map(function(x) return x end, { 'a', 'b' }, huge, { chunksize = math.maxinteger - 1, timeout = 10 }) do
      n = n + 1
    end
    assert.are.equal(2, n)
    local dropped = futures.ThreadPoolExecutor { max_workers = 1 }
    getmetatable(dropped).__gc(dropped)
    assert.has_error(function() dropped:map(print, { 1 }) end,
      'attempt to use a finalized host.ThreadPoolExecutor')
  end)

  it('carries 30 and 300 results per task through every pool, by submit and by map', function()
    local function many(r) return table.unpack({}, 1, r) end
    for _, name in ipairs { 'ThreadPoolExecutor', 'InterpreterPoolExecutor', 'ProcessPoolExecutor' } do
      local ex <close> = assert(futures[name] { max_workers = 1 })
      for _, r in ipairs { 30, 300 } do
        assert.are.equal(r, select('#', ex:submit(many, r):result(10)), name)
        for _, chunksize in ipairs { 1, 2 } do
          local it = ex:map(many, { r, r }, { chunksize = chunksize, timeout = 10 })
          assert.are.same({ r, r }, { select('#', it()) - 1, select('#', it()) - 1 }, name)
          assert.is_nil(it())
        end
      end
    end
  end)

  it('gives each item of a chunk its own results when their counts differ after a run of equal ones', function()
    -- item i returns i % 3 values: a table, nil, true or a number; the
    -- chunk counts its results per item only from the first that differs
    local function vary(i)
      if i % 3 == 0 then return end
      if i % 3 == 1 then return { i } end
      return nil, i > 4 or i
    end
    local items = { 1, 4, 7, 2, 5, 3, 6, 8, 9, 10, 11 }
    for _, name in ipairs { 'ThreadPoolExecutor', 'InterpreterPoolExecutor', 'ProcessPoolExecutor' } do
      local ex <close> = assert(futures[name] { max_workers = 2 })
      for _, chunksize in ipairs { 3, 4, 100 } do
        local got, it = {}, ex:map(vary, items, { chunksize = chunksize, timeout = T })
        for _ = 1, #items + 1 do
          local r = table.pack(it())
          got[#got + 1] = { r.n - 1, r[1], type(r[2]) == 'table' and r[2][1] or r[2], r[3] }
        end
        local want = {}
        for i, x in ipairs(items) do
          local r = table.pack(vary(x))
          want[i] = { r.n, i, type(r[1]) == 'table' and r[1][1] or r[1], r[2] }
        end
        want[#items + 1] = { -1 }
        assert.are.same(want, got, name .. ' ' .. chunksize)
      end
    end
  end)

  it('raises an error mid-chunk where its chunk begins, after the chunks before it, on every pool', function()
    -- as CPython: a chunk runs whole in the worker, so its error fails the
    -- chunk; the items of earlier chunks come first
    for _, name in ipairs { 'ThreadPoolExecutor', 'InterpreterPoolExecutor', 'ProcessPoolExecutor' } do
      local ex <close> = assert(futures[name] { max_workers = 1 })
      local given = {}
      local ok, err = pcall(function()
        for i, v in ex:map(function(x) if x == 6 then error('item six') end return x * 10 end,
                           { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, { chunksize = 4, timeout = T }) do
          given[#given + 1] = v
          assert(v == i * 10)
        end
      end)
      assert.is_false(ok, name)
      assert.matches('item six', tostring(err), 1, true)
      assert.are.same({ 10, 20, 30, 40 }, given, name)
      assert.are.equal(7, ex:submit(function() return 7 end):result(T), name)
    end
  end)

  -- Runs ex:map(fn, items, options) and returns what the loop was given
  -- (`i:values`, in order) and the error it ended with (nil for none).
  local function given_and_error(ex, fn, items, options)
    local given = {}
    local ok, err = pcall(function()
      for i, a, b in ex:map(fn, items, options) do
        given[#given + 1] = i .. ':' .. tostring(a) .. (b ~= nil and ',' .. tostring(b) or '')
      end
    end)
    return given, not ok and err or nil
  end

  it('raises a result that cannot come back at its own item, after the items before it, '
     .. 'and names it as without chunks, on the pools that encode', function()
    -- the worker makes the coroutine: item 3 returns it (or holds it), 5 is
    -- the first item of a later chunk when chunksize is 4
    local function fn(x)
      if x == 3 then return coroutine.create(print) end
      if x == 13 then return { 1, coroutine.create(print) } end
      if x == 23 then return x, coroutine.create(print) end
      if x == 5 then return { a = { coroutine.create(print) } } end
      return x * 10
    end
    local cases = {  -- items, the results given first, the error
      { { 1, 2, 3, 4 }, { '1:10', '2:20' }, 'cannot send the result back: cannot serialize thread (coroutine)' },
      { { 1, 2, 13, 4 }, { '1:10', '2:20' },
        'cannot send the result back: cannot serialize thread at [2] (coroutine)' },
      { { 1, 2, 23, 4 }, { '1:10', '2:20' }, 'cannot send result #2 back: cannot serialize thread (coroutine)' },
      { { 1, 2, 4, 6, 5, 3 }, { '1:10', '2:20', '3:40', '4:60' },
        'cannot send the result back: cannot serialize thread at .a[1] (coroutine)' },
    }
    for _, name in ipairs { 'InterpreterPoolExecutor', 'ProcessPoolExecutor' } do
      local ex <close> = assert(futures[name] { max_workers = 1 })
      for _, case in ipairs(cases) do
        for _, chunksize in ipairs { 1, 2, 4, 100 } do
          local given, err = given_and_error(ex, fn, case[1], { chunksize = chunksize, timeout = T })
          local where = name .. ' ' .. table.concat(case[1], ',') .. ' chunksize ' .. chunksize
          assert.are.same(case[2], given, where)
          assert.are.equal(case[3], err, where)
        end
      end
      assert.are.same({ '1:10', '2:20' }, (given_and_error(ex, fn, { 1, 2 }, { chunksize = 2, timeout = T })))
    end
  end)

  it('names an argument that cannot be sent as submit does, with and without chunks', function()
    local co = coroutine.create(print)
    local function fn(x) return x end
    local cases = {  -- the map's tables, submit's arguments for the same call, the error
      { { { 1, 2, co, 4 } }, { co }, 'cannot submit argument #1: cannot serialize thread (coroutine)' },
      { { { 1, 2, 3, { 1, co } } }, { { 1, co } },
        'cannot submit argument #1: cannot serialize thread at [2] (coroutine)' },
      { { { 1, 2, 3 }, { 'a', 'b', { out = io.stdout } } }, { 3, { out = io.stdout } },
        'cannot submit argument #2: cannot serialize userdata at .out (FILE*)' },
    }
    for _, name in ipairs { 'InterpreterPoolExecutor', 'ProcessPoolExecutor' } do
      local ex <close> = assert(futures[name] { max_workers = 1 })
      for _, case in ipairs(cases) do
        assert.has_error(function() ex:submit(fn, table.unpack(case[2])) end, case[3])
        for _, chunksize in ipairs { 1, 2, 4 } do
          local args = { table.unpack(case[1]) }
          args[#args + 1] = { chunksize = chunksize, timeout = T }
          assert.has_error(function() ex:map(fn, table.unpack(args)) end, case[3],
            name .. ' chunksize ' .. chunksize)
        end
      end
      local message = 'cannot submit the function: cannot serialize thread at <upvalue co> (coroutine)'
      local function holds_co() return co end
      assert.has_error(function() ex:submit(holds_co) end, message)
      for _, chunksize in ipairs { 1, 3 } do
        assert.has_error(function() ex:map(holds_co, { 1, 2 }, { chunksize = chunksize, timeout = T }) end,
          message)
      end
      if name == 'InterpreterPoolExecutor' then  -- (a forked worker inherits them)
        assert.has_error(function() futures[name] { initializer = print, initargs = { 1, co } } end,
          'cannot send initargs[2]: cannot serialize thread (coroutine)')
      end
      assert.are.same({ '1:1', '2:2' }, (given_and_error(ex, fn, { 1, 2 }, { chunksize = 2, timeout = T })))
    end
  end)

  it('cancels the chunks not started when a chunked loop is left early, on every pool', function()
    local items = {}
    for i = 1, 200 do items[i] = i end
    for _, name in ipairs { 'ThreadPoolExecutor', 'InterpreterPoolExecutor', 'ProcessPoolExecutor' } do
      local ex = assert(futures[name] { max_workers = 1 })
      local gate, ran = thread.Event(), 0
      local fn = function(x) return x end
      if name == 'ThreadPoolExecutor' then  -- shared upvalues: chunk 3 holds the worker
        fn = function(x) ran = ran + 1 if x > 4 then gate:wait(T) end return x end
      end
      local seen = 0
      for i in ex:map(fn, items, { chunksize = 2, timeout = T }) do
        seen = i
        if i == 3 then break end
      end
      gate:set()
      assert.are.equal(3, seen)
      local t = thread.start(function() ex:shutdown() end)
      assert.is_true(t:join(T), name)
      if name == 'ThreadPoolExecutor' then assert.are.equal(6, ran) end
    end
  end)

  it('keeps working when the iterator is called again after the end', function()
    local ex <close> = futures.ThreadPoolExecutor { max_workers = 1 }
    local it = ex:map(function(x) return x * 2 end, { 1, 2 })
    assert.are.same({ 1, 2 }, { it() })
    assert.are.same({ 2, 4 }, { it() })
    assert.is_nil(it())
    assert.is_nil(it())
  end)
end)

describe('executor options', function()
  it('name the option and the type it got', function()
    for _, name in ipairs { 'ThreadPoolExecutor', 'ProcessPoolExecutor', 'InterpreterPoolExecutor' } do
      local new = futures[name]
      local function message(options)
        return select(2, pcall(new, options)):match('%((.*)%)$')
      end
      assert.are.equal("'max_workers' must be an integer, got string", message { max_workers = 'x' })
      assert.are.equal("'max_workers' must be an integer, got number", message { max_workers = 1.5 })
      assert.are.equal("'max_workers' must be in [1, 1024]", message { max_workers = 0 })
      assert.are.equal("'initializer' must be a function, got number", message { initializer = 1 })
      assert.are.equal("'initargs' must be a table, got number", message { initargs = 5 })
      for _, n in ipairs { -1, 1.5, math.maxinteger, 500001 } do
        assert.are.equal("'initargs.n' must be an integer in [0, 500000]",
          message { initializer = print, initargs = { n = n } })
      end
    end
  end)
end)
