-- spec/generator_spec.lua: host.generator, Python's generator protocol on
-- Lua coroutines, and Item 40's Game of Life built on it.
local generator = require 'host.generator'
local herror = require 'host.error'
local yield, yield_from = coroutine.yield, generator.yield_from

-- Calls f(...) and returns the error it raises (fails if it raises none).
local function error_of(f, ...)
  local ok, err = pcall(f, ...)
  assert(not ok, 'expected an error')
  return err
end

-- Asserts that `err` is an error object of `kind` with `message`.
local function assert_kind(err, kind, message)
  assert.is_true(herror.is(err, kind), 'not a ' .. kind .. ': ' .. tostring(err))
  if message then assert.are.equal(message, err.message) end
end

-- A generator function that yields 1..n, then returns 'done'.
local count = generator.wrap(function(n)
  for i = 1, n do yield(i) end
  return 'done'
end)

-- A generator function that echoes what it is sent, and says what ended it.
local function echo_with_log(log)
  return generator.wrap(function()
    local sent = 'ready'
    while true do
      local ok, err = pcall(yield, sent)
      if not ok then
        log[#log + 1] = err
        error(err, 0)
      end
      sent = err
    end
  end)
end

describe('host.generator', function()
  describe('generator functions', function()
    it('make a generator per call, whose body waits for the first next', function()
      local ran = false
      local gen = generator.wrap(function(a, b)
        ran = true
        yield(a + b)
      end)
      local g = gen(2, 3)
      assert.is_true(generator.isgenerator(g))
      assert.is_false(generator.isgenerator({}))
      assert.are.equal('created', g:status())
      assert.is_false(ran)
      assert.are.equal(5, g:next())
      assert.is_true(ran)
      assert.are.equal('suspended', g:status())
      assert.are_not.equal(g, gen(2, 3))
    end)

    it('say what they are with tostring', function()
      local g = count(1)
      assert.matches('^host%.Generator: 0x%x+ %(created%)$', tostring(g))
      for _ in g do end
      assert.matches('%(dead%)$', tostring(g))
    end)

    it('treat coroutine.yield and generator.yield alike', function()
      local g = generator.wrap(function()
        local a = coroutine.yield(1)
        local b = generator.yield(a + 1)
        return b
      end)()
      assert.are.equal(1, g:next())
      assert.are.equal(11, g:send(10))
      assert.are.equal('r', error_of(g.send, g, 'r').value)
    end)
  end)

  describe('at the boundaries', function()
    local many = {}
    for i = 1, 5000 do many[i] = i end

    it('returns 5000 values through StopIteration and result()', function()
      local gen = generator.wrap(function(...) return ... end)(table.unpack(many))
      local err = error_of(gen.next, gen)
      assert_kind(err, 'StopIteration', 'generator returned')
      assert.are.equal(5000, err.values.n)
      assert.are.equal(5000, err.values[5000])
      assert.are.equal(5000, select('#', gen:result()))
    end)

    it('yields and is sent 5000 values', function()
      local gen = generator.wrap(function() return yield(yield(table.unpack(many))) end)()
      assert.are.equal(5000, select('#', gen:next()))
      assert.are.equal(5000, select('#', gen:send(table.unpack(many))))
    end)

    it('throws an error object whose __tostring raises, unchanged', function()
      local bad = setmetatable({}, { __tostring = function() error('tostring raises') end })
      local gen = generator.wrap(function() yield(1) end)()
      gen:next()
      assert.are.equal(bad, error_of(gen.throw, gen, bad))
      assert.are.equal('dead', gen:status())
    end)
  end)

  describe('send and next', function()
    it('return what the generator yields, several values included', function()
      local g = generator.wrap(function()
        local a, b = yield(1, 2, 3)
        yield(b, a)
      end)()
      assert.are.same({ 1, 2, 3 }, { g:next() })
      assert.are.same({ 'y', 'x' }, { g:send('x', 'y') })
    end)

    it('end with StopIteration carrying the return values', function()
      local g = generator.wrap(function()
        yield 'only'
        return 'a', nil, 'c'
      end)()
      g:next()
      local err = error_of(g.next, g)
      assert_kind(err, 'StopIteration', 'generator returned')
      assert.are.equal('a', err.value)
      assert.are.same({ n = 3, 'a', nil, 'c' }, err.values)
      assert.are.equal('dead', g:status())
    end)

    it('give the return values without pcall through result()', function()
      local g = count(2)
      for _ in g do end
      assert.are.equal('done', g:result())
      local h = count(1)
      assert.has_error(function() h:result() end, 'generator is created, it has not returned')
    end)

    it('raise StopIteration without a value on a dead generator', function()
      local g = count(0)
      assert.are.equal('done', error_of(g.next, g).value)
      local err = error_of(g.send, g, 1)
      assert_kind(err, 'StopIteration', 'cannot resume dead generator')
      assert.is_nil(err.value)
      assert.are.same({ n = 0 }, err.values)
    end)

    it('refuse a non-nil send to a just-started generator, which stays unstarted', function()
      local g = count(3)
      assert_kind(error_of(g.send, g, 1), 'TypeError',
                  "can't send non-nil value to a just-started generator")
      assert_kind(error_of(g.send, g, nil, 2), 'TypeError')
      assert.are.equal('created', g:status())
      assert.are.equal(1, g:send(nil))
    end)

    it('refuse to re-enter a running generator', function()
      local g
      g = generator.wrap(function()
        assert.are.equal('running', g:status())
        for _, op in ipairs { 'next', 'send', 'close' } do
          assert_kind(error_of(g[op], g), 'ValueError', 'generator already executing')
        end
        assert_kind(error_of(g.throw, g, 'x'), 'ValueError', 'generator already executing')
        yield 'fine'
      end)()
      assert.are.equal('fine', g:next())
    end)

    it('pass errors of the body through unchanged and close its <close> variables', function()
      local closed, boom = false, herror.new('ValueError', 'boom')
      local g = generator.wrap(function()
        local _ <close> = setmetatable({}, { __close = function() closed = true end })
        yield(1)
        error(boom)
      end)()
      g:next()
      assert.are.equal(boom, error_of(g.next, g))
      assert.is_true(closed)
      assert.are.equal('dead', g:status())
      assert_kind(error_of(g.next, g), 'StopIteration')
    end)

    it('turn a StopIteration leaking out of the body into RuntimeError (PEP 479)', function()
      local inner = count(0)
      local g = generator.wrap(function()
        inner:next()
        inner:next()
      end)()
      local err = error_of(g.next, g)
      assert_kind(err, 'RuntimeError', 'generator raised StopIteration')
      assert_kind(err.cause, 'StopIteration')
    end)
  end)

  describe('the for loop', function()
    it('iterates until the generator returns', function()
      local seen = {}
      local g = count(4)
      for v in g do seen[#seen + 1] = v end
      assert.are.same({ 1, 2, 3, 4 }, seen)
      assert.are.equal('dead', g:status())
      for _ in g do error('a dead generator yields nothing') end
    end)

    it('stops at a nil value like any generic for; enumerate() goes on', function()
      local gen = generator.wrap(function()
        yield(1)
        yield(nil)
        yield(3)
      end)
      local seen = {}
      for v in gen() do seen[#seen + 1] = v end
      assert.are.same({ 1 }, seen)
      seen = {}
      for i, v in gen():enumerate() do seen[i] = tostring(v) end
      assert.are.same({ '1', 'nil', '3' }, seen)
    end)

    it('passes the errors of the body to the loop', function()
      local g = generator.wrap(function()
        yield(1)
        error('broken', 0)
      end)()
      assert.has_error(function() for _ in g do end end, 'broken')
    end)
  end)

  describe('throw', function()
    it('raises where the generator is suspended, which may catch it and yield', function()
      local log = {}
      local g = echo_with_log(log)()
      g:next()
      local g2 = generator.wrap(function()
        local ok, err = pcall(yield, 'ready')
        assert.is_false(ok)
        yield('caught ' .. err)
        return 'end'
      end)()
      g2:next()
      assert.are.equal('caught oops', g2:throw('oops'))
      assert.are.equal('end', error_of(g2.next, g2).value)
      local e = herror.new('ValueError', 'bad')
      assert.are.equal(e, error_of(g.throw, g, e))
      assert.are.same({ e }, log)
      assert.are.equal('dead', g:status())
    end)

    it('raises at the start of a just-started generator, whose body never runs', function()
      local ran = false
      local g = generator.wrap(function() ran = true end)()
      assert.are.equal('x', error_of(g.throw, g, 'x'))
      assert.is_false(ran)
      assert.are.equal('dead', g:status())
    end)

    it('raises in the caller on a dead generator', function()
      local g = count(0)
      pcall(g.next, g)
      assert.are.equal('late', error_of(g.throw, g, 'late'))
    end)

    it('needs a value', function()
      assert.has_error(function() count(1):throw() end,
        "bad argument #1 to 'throw' (value expected)")
    end)

    it('works at a coroutine.yield inside pcall and keeps the debug hook', function()
      local hook = function() end
      local g = generator.wrap(function()
        local co = coroutine.running()
        debug.sethook(co, hook, 'r')
        local ok, err = pcall(coroutine.yield, 1)
        local h, mask = debug.gethook(co)
        debug.sethook(co)
        yield(ok, err, h, mask)
      end)()
      g:next()
      local ok, err, h, mask = g:throw('e')
      assert.is_false(ok)
      assert.are.equal('e', err)
      assert.are.equal(hook, h)
      assert.are.equal('r', mask)
    end)
  end)

  describe('close', function()
    it('raises GeneratorExit at the yield and runs the cleanup', function()
      local log, closed = {}, false
      local g = generator.wrap(function()
        local _ <close> = setmetatable({}, { __close = function() closed = true end })
        local ok, err = pcall(yield, 1)
        log[#log + 1] = err
        error(err, 0)
      end)()
      g:next()
      assert.is_nil(g:close())
      assert_kind(log[1], 'GeneratorExit', 'generator closed')
      assert.is_true(closed)
      assert.are.equal('dead', g:status())
      assert.is_nil(g:close())
    end)

    it('is a no-op on a just-started or finished generator', function()
      local ran = false
      local g = generator.wrap(function() ran = true end)()
      g:close()
      assert.is_false(ran)
      assert.are.equal('dead', g:status())
      assert_kind(error_of(g.next, g), 'StopIteration')
      local done = count(0)
      pcall(done.next, done)
      done:close()
      assert.are.equal('done', done:result())
    end)

    it('refuses a generator that yields while closing', function()
      local g = generator.wrap(function()
        while true do pcall(yield, 1) end
      end)()
      g:next()
      assert_kind(error_of(g.close, g), 'RuntimeError', 'generator ignored GeneratorExit')
      assert.are.equal('suspended', g:status())
    end)

    it('re-raises another error raised while closing', function()
      local g = generator.wrap(function()
        pcall(yield, 1)
        error('cleanup failed', 0)
      end)()
      g:next()
      assert.are.equal('cleanup failed', error_of(g.close, g))
      assert.are.equal('dead', g:status())
    end)

    it('returns what a generator returns instead of letting GeneratorExit through', function()
      local g = generator.wrap(function()
        pcall(yield, 1)
        return 'partial'
      end)()
      g:next()
      assert.are.equal('partial', g:close())
      assert.are.equal('partial', g:result())
    end)

    it('of a generator nothing can see it from ends its coroutine all the same', function()
      local co
      local g = generator.wrap(function()
        co = coroutine.running()
        local x = yield(1)
        return x
      end)()
      g:next()
      assert.is_nil(g:close())
      assert.are.equal('dead', g:status())
      assert.are.equal('dead', coroutine.status(co))
      assert.is_false(coroutine.resume(co))
      assert_kind(error_of(g.next, g), 'StopIteration')
    end)

    it('reaches a generic for\'s closing value and a <close> variable of a caller frame', function()
      local seen = {}
      local function closer(name)
        return setmetatable({}, { __close = function(_, e) seen[#seen + 1] = name .. ':' .. tostring(herror.is(e, 'GeneratorExit')) end })
      end
      local function inner()
        for x in function(_, i) if not i then return 1 end end, nil, nil, closer('for') do
          yield(x)
        end
      end
      local g = generator.wrap(inner)()
      g:next()
      g:close()
      local h = generator.wrap(function()
        local _ <close> = closer('outer')
        local function deeper() yield(1) end
        deeper()
      end)()
      h:next()
      h:close()
      assert.are.same({ 'for:true', 'outer:true' }, seen)
    end)

    it('happens at the end of a <close> variable', function()
      local closed = false
      do
        local g <close> = generator.wrap(function()
          local _ <close> = setmetatable({}, { __close = function() closed = true end })
          yield(1)
        end)()
        g:next()
      end
      assert.is_true(closed)
    end)
  end)

  describe('yield_from', function()
    local inner = generator.wrap(function(tag)
      local a = yield(tag .. '1')
      local b = yield(tag .. '2 ' .. tostring(a))
      return 'inner got ' .. tostring(b), 'second'
    end)

    it('forwards yields and sends, and returns what the subgenerator returned', function()
      local outer = generator.wrap(function()
        local r, r2 = yield_from(inner('i'))
        yield(r, r2)
        return 'outer done'
      end)
      local g = outer()
      assert.are.equal('i1', g:next())
      assert.are.equal('i2 A', g:send('A'))
      assert.are.same({ 'inner got B', 'second' }, { g:send('B') })
      assert.are.equal('outer done', error_of(g.next, g).value)
    end)

    it('nests, and returns nothing for a finished subgenerator', function()
      local done = count(0)
      pcall(done.next, done)
      local g = generator.wrap(function()
        assert.are.equal(0, select('#', yield_from(done)))
        local r = yield_from(generator.wrap(function()
          return (yield_from(inner('deep')))
        end)())
        yield(r)
      end)()
      assert.are.equal('deep1', g:next())
      assert.are.equal('deep2 x', g:send('x'))
      assert.are.equal('inner got y', g:send('y'))
    end)

    it('forwards throw: the subgenerator may catch it', function()
      local sub = generator.wrap(function()
        local ok, err = pcall(yield, 'sub ready')
        yield('sub caught ' .. tostring(err))
        return 'sub end'
      end)
      local g = generator.wrap(function()
        yield(yield_from(sub()))
      end)()
      assert.are.equal('sub ready', g:next())
      assert.are.equal('sub caught boom', g:throw('boom'))
      assert.are.equal('sub end', g:next())
    end)

    it('forwards throw: an uncaught error reaches the delegating generator', function()
      local log = {}
      local g = generator.wrap(function()
        local ok, err = pcall(yield_from, echo_with_log(log)())
        yield(ok, err)
      end)()
      assert.are.equal('ready', g:next())
      assert.are.same({ false, 'bang' }, { g:throw('bang') })
      assert.are.same({ 'bang' }, log)
    end)

    it('delivers an error of the subgenerator, raised on send, to the delegating one', function()
      local g = generator.wrap(function()
        local ok, err = pcall(yield_from, generator.wrap(function()
          yield(1)
          error('sub failed', 0)
        end)())
        yield(ok, err)
      end)()
      g:next()
      assert.are.same({ false, 'sub failed' }, { g:next() })
    end)

    it('forwards close: the subgenerator is closed, then GeneratorExit is raised', function()
      local log, sub_closed = {}, false
      local sub = generator.wrap(function()
        local _ <close> = setmetatable({}, { __close = function() sub_closed = true end })
        yield 'sub'
      end)
      local g = generator.wrap(function()
        local ok, err = pcall(yield_from, sub())
        log[#log + 1] = err
        error(err, 0)
      end)()
      assert.are.equal('sub', g:next())
      g:close()
      assert.is_true(sub_closed)
      assert_kind(log[1], 'GeneratorExit')
      assert.are.equal('dead', g:status())
    end)

    it('passes on an error the subgenerator raises while closing', function()
      local g = generator.wrap(function()
        yield_from(generator.wrap(function()
          pcall(yield, 1)
          error('sub cleanup failed', 0)
        end)())
      end)()
      g:next()
      assert.are.equal('sub cleanup failed', error_of(g.close, g))
    end)

    it('refuses to delegate to itself', function()
      local g
      g = generator.wrap(function() yield_from(g) end)()
      assert_kind(error_of(g.next, g), 'ValueError', 'generator already executing')
    end)
  end)

  describe('yield_from of a generator that has not started (its body runs inline)', function()
    -- Calls f(...) under 70 more frames: yield_from then takes the path of
    -- a coroutine per subgenerator (bindings/generator.c, INLINE_LEVELS).
    local function deep(n, f, ...)
      if n == 0 then return f(...) end
      local r = table.pack(deep(n - 1, f, ...))  -- not a tail call: a frame
      return table.unpack(r, 1, r.n)
    end
    local function inline(f, ...) return f(...) end
    local function in_coroutine(f, ...) return deep(70, f, ...) end

    -- Runs scenario(via, log) on both paths; their logs must be equal, and
    -- equal to `want`.
    local function both_paths(want, scenario)
      for _, via in ipairs { inline, in_coroutine } do
        local log = {}
        scenario(via, log)
        assert.are.same(want, log)
      end
    end

    -- A one-line summary of an error for the logs.
    local function describe_error(err)
      if herror.is(err) then return err.kind .. ': ' .. err.message end
      return tostring(err)
    end

    it('returns what the body returned, and the subgenerator reads as if it ran alone', function()
      both_paths({ 'a1', 'a2 x', 'got y', 'nil 2', 'dead', 'got y,nil,2', 'suspended' }, function(via, log)
        local sub = generator.wrap(function(tag)
          local a = yield(tag .. '1')
          local b = yield(tag .. '2 ' .. a)
          return 'got ' .. b, nil, 2
        end)('a')
        local g = generator.wrap(function()
          local r = table.pack(via(yield_from, sub))
          yield(r[1])
          yield(tostring(r[2]) .. ' ' .. r[3])
        end)()
        log[#log + 1] = g:next()
        log[#log + 1] = g:send('x')
        log[#log + 1] = g:send('y')
        log[#log + 1] = g:next()
        log[#log + 1] = sub:status()
        local res = table.pack(sub:result())
        log[#log + 1] = ('%s,%s,%s'):format(res[1], res[2], res[3])
        log[#log + 1] = g:status()
      end)
    end)

    it('passes on an error of the body with its position; the subgenerator is dead', function()
      local line = debug.getinfo(1, 'l').currentline + 5
      both_paths({ 1, ('false spec/generator_spec.lua:%d: inner failed'):format(line), 'dead', 'dead' },
        function(via, log)
          local sub = generator.wrap(function()
            yield(1)
            error('inner failed')
          end)()
          local g = generator.wrap(function()
            local ok, err = pcall(via, yield_from, sub)
            yield(tostring(ok) .. ' ' .. tostring(err))
          end)()
          log[#log + 1] = g:next()
          log[#log + 1] = g:next()
          log[#log + 1] = sub:status()
          assert.are.equal(0, select('#', sub:result()))
          g:close()
          log[#log + 1] = g:status()
        end)
    end)

    it('turns a StopIteration raised by the body into RuntimeError at its boundary (PEP 479)', function()
      both_paths({ 'RuntimeError: generator raised StopIteration', 'StopIteration', 'dead' }, function(via, log)
        local sub = generator.wrap(function()
          yield(1)
          local done = count(0)
          done:next()  -- raises StopIteration inside the body
        end)()
        local g = generator.wrap(function()
          local ok, err = pcall(via, yield_from, sub)
          yield(describe_error(err))
          yield(err.cause.kind)
        end)()
        g:next()
        log[#log + 1] = g:next()
        log[#log + 1] = g:next()
        log[#log + 1] = sub:status()
      end)
    end)

    it('on close: GeneratorExit at the yield inside, then in the delegating generator even if the body returned', function()
      both_paths({ 'sub', 'inner saw GeneratorExit: generator closed', 'outer saw GeneratorExit', 'dead', 'dead',
                   'inner result' }, function(via, log)
        local sub = generator.wrap(function()
          local ok, err = pcall(yield, 'sub')
          log[#log + 1] = 'inner saw ' .. describe_error(err)
          return 'inner result'
        end)()
        local g = generator.wrap(function()
          local ok, err = pcall(via, yield_from, sub)
          log[#log + 1] = 'outer saw ' .. err.kind
          error(err, 0)
        end)()
        log[#log + 1] = g:next()
        g:close()
        log[#log + 1] = g:status()
        log[#log + 1] = sub:status()
        log[#log + 1] = sub:result()
      end)
    end)

    it('on close through two levels: each delegating generator gets GeneratorExit', function()
      both_paths({ 'bottom', 'bottom saw GeneratorExit', 'middle saw GeneratorExit', 'top saw GeneratorExit',
                   'dead', 'dead', 'dead' }, function(via, log)
        local bottom = generator.wrap(function()
          local ok, err = pcall(yield, 'bottom')
          log[#log + 1] = 'bottom saw ' .. err.kind
          return 'bottom returned'
        end)()
        local middle = generator.wrap(function()
          local ok, err = pcall(via, yield_from, bottom)
          log[#log + 1] = 'middle saw ' .. (ok and 'a return' or err.kind)
          return 'middle returned'
        end)()
        local g = generator.wrap(function()
          local ok, err = pcall(via, yield_from, middle)
          log[#log + 1] = 'top saw ' .. (ok and 'a return' or err.kind)
        end)()
        log[#log + 1] = g:next()
        g:close()
        log[#log + 1] = g:status()
        log[#log + 1] = middle:status()
        log[#log + 1] = bottom:status()
      end)
    end)

    it('on close, passes on another error the body raises', function()
      both_paths({ 1, 'cleanup failed', 'dead', 'dead' }, function(via, log)
        local sub = generator.wrap(function()
          pcall(yield, 1)
          error('cleanup failed', 0)
        end)()
        local g = generator.wrap(function() via(yield_from, sub) end)()
        log[#log + 1] = g:next()
        log[#log + 1] = error_of(g.close, g)
        log[#log + 1] = g:status()
        log[#log + 1] = sub:status()
      end)
    end)

    it('on close, a body that yields instead makes the delegating generator raise (PEP 380)', function()
      both_paths({ 'sub', 'sub saw GeneratorExit', 'outer saw RuntimeError: generator ignored GeneratorExit',
                   'RuntimeError: generator ignored GeneratorExit', 'dead', 'suspended' }, function(via, log)
        local sub = generator.wrap(function()
          local ok, err = pcall(yield, 'sub')
          log[#log + 1] = 'sub saw ' .. err.kind
          yield('ignoring')
        end)()
        local g = generator.wrap(function()
          local ok, err = pcall(via, yield_from, sub)
          log[#log + 1] = 'outer saw ' .. describe_error(err)
          error(err, 0)
        end)()
        log[#log + 1] = g:next()
        local err = error_of(g.close, g)
        log[#log + 1] = describe_error(err)
        log[#log + 1] = g:status()
        log[#log + 1] = sub:status()
      end)
    end)

    it('on a thrown GeneratorExit: the body gets a new one, the delegating generator the one thrown', function()
      both_paths({ 'bottom saw generator closed', 'middle saw generator closed', 'top saw mine', 'mine' },
        function(via, log)
          local bottom = generator.wrap(function()
            local ok, err = pcall(yield, 'bottom')
            log[#log + 1] = 'bottom saw ' .. err.message
            return 'bottom returned'
          end)()
          local middle = generator.wrap(function()
            local ok, err = pcall(via, yield_from, bottom)
            log[#log + 1] = 'middle saw ' .. err.message
            return 'middle returned'
          end)()
          local mine = herror.new('GeneratorExit', 'mine')
          local g = generator.wrap(function()
            local ok, err = pcall(via, yield_from, middle)
            log[#log + 1] = 'top saw ' .. err.message
            assert.are.equal(mine, err)
            yield(err)
          end)()
          g:next()
          local thrown = g:throw(mine)
          log[#log + 1] = thrown.message
        end)
    end)

    it('with nothing around it: an error of the body reaches the caller, and both die', function()
      local line = debug.getinfo(1, 'l').currentline + 5
      both_paths({ 1, ('spec/generator_spec.lua:%d: inner failed'):format(line), 'dead', 'dead' },
        function(via, log)
          local sub = generator.wrap(function()
            yield(1)
            error('inner failed')
          end)()
          local g = generator.wrap(function() via(yield_from, sub) end)()
          log[#log + 1] = g:next()
          log[#log + 1] = error_of(g.next, g)
          log[#log + 1] = g:status()
          log[#log + 1] = sub:status()
        end)
    end)

    it('with nothing around it: a StopIteration of the body reaches the caller as RuntimeError (PEP 479)', function()
      both_paths({ 1, 'RuntimeError: generator raised StopIteration', 'StopIteration', 'dead', 'dead' },
        function(via, log)
          local sub = generator.wrap(function()
            yield(1)
            count(0):next()
          end)()
          local g = generator.wrap(function() via(yield_from, sub) end)()
          log[#log + 1] = g:next()
          local err = error_of(g.next, g)
          log[#log + 1] = describe_error(err)
          log[#log + 1] = err.cause.kind
          log[#log + 1] = g:status()
          log[#log + 1] = sub:status()
        end)
    end)

    it('with nothing around it: on close the body may return, and both die quietly', function()
      both_paths({ 'sub', 'sub saw GeneratorExit', 'dead', 'dead', 'sub result' }, function(via, log)
        local sub = generator.wrap(function()
          local ok, err = pcall(yield, 'sub')
          log[#log + 1] = 'sub saw ' .. err.kind
          return 'sub result'
        end)()
        local g = generator.wrap(function()
          via(yield_from, sub)
          log[#log + 1] = 'never'
        end)()
        log[#log + 1] = g:next()
        g:close()
        log[#log + 1] = g:status()
        log[#log + 1] = sub:status()
        log[#log + 1] = sub:result()
      end)
    end)

    it('with nothing around it: on close through two levels, every one dies', function()
      both_paths({ 'bottom', 'bottom saw GeneratorExit', 'dead dead dead', 'bottom returned' }, function(via, log)
        local bottom = generator.wrap(function()
          local ok, err = pcall(yield, 'bottom')
          log[#log + 1] = 'bottom saw ' .. err.kind
          return 'bottom returned'
        end)()
        local middle = generator.wrap(function()
          via(yield_from, bottom)
          log[#log + 1] = 'never'
        end)()
        local g = generator.wrap(function()
          via(yield_from, middle)
          log[#log + 1] = 'never'
        end)()
        log[#log + 1] = g:next()
        g:close()
        log[#log + 1] = ('%s %s %s'):format(g:status(), middle:status(), bottom:status())
        log[#log + 1] = bottom:result()
      end)
    end)

    it('with nothing around it: a body that ignores GeneratorExit stays suspended and goes on alone', function()
      both_paths({ 'sub', 'sub saw GeneratorExit', 'RuntimeError: generator ignored GeneratorExit',
                   'dead suspended', 'sub got x', 'dead', 'sub got x' }, function(via, log)
        local sub = generator.wrap(function()
          local ok, err = pcall(yield, 'sub')
          log[#log + 1] = 'sub saw ' .. err.kind
          return 'sub got ' .. yield('ignoring')
        end)()
        local g = generator.wrap(function()
          via(yield_from, sub)
          log[#log + 1] = 'never'
        end)()
        log[#log + 1] = g:next()
        local err = describe_error(error_of(g.close, g))
        log[#log + 1] = err
        log[#log + 1] = g:status() .. ' ' .. sub:status()
        local stop = error_of(sub.send, sub, 'x')
        log[#log + 1] = stop.value
        log[#log + 1] = sub:status()
        log[#log + 1] = sub:result()
        assert_kind(error_of(g.next, g), 'StopIteration')
      end)
    end)

    it('with nothing around it: one that ignores a thrown GeneratorExit two levels down goes on alone', function()
      both_paths({ 'bottom', 'RuntimeError: generator ignored GeneratorExit', 'dead dead suspended',
                   'bottom sent v', 'again', 'dead' }, function(via, log)
        local bottom = generator.wrap(function()
          pcall(yield, 'bottom')
          local ok, err = pcall(yield, 'ignoring')
          log[#log + 1] = 'bottom ' .. (ok and 'sent ' .. tostring(err) or err.kind)
          yield('again')
        end)()
        local middle = generator.wrap(function() via(yield_from, bottom) end)()
        local g = generator.wrap(function() via(yield_from, middle) end)()
        log[#log + 1] = g:next()
        local err = describe_error(error_of(g.throw, g, herror.new('GeneratorExit', 'mine')))
        log[#log + 1] = err
        log[#log + 1] = ('%s %s %s'):format(g:status(), middle:status(), bottom:status())
        local again = bottom:send('v')
        log[#log + 1] = again
        bottom:close()
        log[#log + 1] = bottom:status()
      end)
    end)

    it('with nothing around it: one that ignores GeneratorExit is closed when collected', function()
      local closed = 0
      do
        local sub = generator.wrap(function()
          local _ <close> = setmetatable({}, { __close = function() closed = closed + 1 end })
          pcall(yield, 1)
          yield(2)
        end)()
        local g = generator.wrap(function() yield_from(sub) end)()
        g:next()
        error_of(g.close, g)
        assert.are.equal('suspended', sub:status())
        assert.are.equal(0, closed)
      end
      collectgarbage()
      collectgarbage()
      assert.are.equal(1, closed)
    end)

    it('on throw: raised at the yield inside, which may catch it, yield and return', function()
      both_paths({ 'ready', 'caught boom', 'sub end', 'suspended', 'dead', 'bang', 'dead' }, function(via, log)
        local sub = generator.wrap(function()
          local ok, err = pcall(yield, 'ready')
          yield('caught ' .. tostring(err))
          return 'sub end'
        end)()
        local g = generator.wrap(function()
          yield(via(yield_from, sub))
          yield('never')
        end)()
        log[#log + 1] = g:next()
        log[#log + 1] = g:throw('boom')
        log[#log + 1] = g:next()
        log[#log + 1] = g:status()
        log[#log + 1] = sub:status()
        log[#log + 1] = error_of(g.throw, g, 'bang')
        log[#log + 1] = g:status()
      end)
    end)

    it('refuses a direct send, throw or close while the delegating generator waits inside it', function()
      local sub = generator.wrap(function()
        local g = yield(1)
        assert.are.equal('running', g:status())
        assert_kind(error_of(g.send, g), 'ValueError', 'generator already executing')
        yield(2)
        return 3
      end)()
      local g = generator.wrap(function() return yield_from(sub) end)()
      assert.are.equal(1, g:next())
      assert.are.equal('suspended', sub:status())
      local why = "generator is running inside another generator's yield_from"
      assert_kind(error_of(sub.send, sub, 'x'), 'ValueError', why)
      assert_kind(error_of(sub.next, sub), 'ValueError', why)
      assert_kind(error_of(sub.throw, sub, 'x'), 'ValueError', why)
      assert_kind(error_of(sub.close, sub), 'ValueError', why)
      assert.matches('generator is suspended, it has not returned', error_of(sub.result, sub), 1, true)
      assert.are.equal(2, g:send(sub))
      assert.are.equal(3, error_of(g.next, g).value)
      assert.are.equal('dead', sub:status())
      assert.are.equal(3, sub:result())
    end)

    it('runs the body in the coroutine of the delegating generator, with no coroutine of its own', function()
      local sub = generator.wrap(function() yield(coroutine.running()) end)()
      local outer_co
      local g = generator.wrap(function()
        outer_co = coroutine.running()
        yield_from(sub)
      end)()
      local co = g:next()
      assert.are.equal(outer_co, co)
      assert.are.equal(outer_co, debug.getuservalue(sub, 1))
    end)

    it('is dead, its <close> variables run, when the coroutine it runs in is closed behind its back', function()
      local closed = false
      local sub = generator.wrap(function()
        local _ <close> = setmetatable({}, { __close = function() closed = true end })
        yield(coroutine.running())
      end)()
      local g = generator.wrap(function() yield_from(sub) end)()
      local co = g:next()
      assert.are.equal('suspended', sub:status())
      assert.is_true(coroutine.close(co))
      assert.is_true(closed)
      assert.are.equal('dead', sub:status())
      assert_kind(error_of(sub.next, sub), 'StopIteration', 'cannot resume dead generator')
    end)

    it('is closed with the delegating generator when that one is collected', function()
      local closed = false
      do
        local g = generator.wrap(function()
          yield_from(generator.wrap(function()
            local _ <close> = setmetatable({}, { __close = function() closed = true end })
            yield(1)
          end)())
        end)()
        g:next()
      end
      collectgarbage()
      collectgarbage()
      assert.is_true(closed)
    end)

    it('takes the coroutine path for a body that is a C function', function()
      local sub = generator.wrap(coroutine.yield)('from C')
      local g = generator.wrap(function() return yield_from(sub) end)()
      assert.are.equal('from C', g:next())
      assert.are.equal('suspended', sub:status())
      assert.are.equal('thread', type(debug.getuservalue(sub, 1)))
      assert.are.equal('back', error_of(sub.send, sub, 'back').value)
      assert_kind(error_of(g.next, g), 'StopIteration')
    end)

    it('recurses 250 deep with a C stack overflow as before, and 190 deep without', function()
      local depth_of
      depth_of = generator.wrap(function(n)
        if n == 0 then return (yield('bottom')) end
        return (yield_from(depth_of(n - 1))) + 1
      end)
      local g = depth_of(190)
      assert.are.equal('bottom', g:next())
      assert.are.equal(190 + 7, error_of(g.send, g, 7).value)
      g = depth_of(250)
      assert.matches('C stack overflow', error_of(g.next, g))
      assert.are.equal('dead', g:status())
    end)

    it("leaves the coroutine it did not use to the next generator made, with its maker's hook", function()
      local one = generator.wrap(function(a) yield(a) end)
      -- made under a call hook: its coroutine has that hook, as lua_newthread gives it
      debug.sethook(function() end, 'c')
      local sub = one('sub')
      debug.sethook()
      local unused = debug.getuservalue(sub, 1)
      assert.are.equal('c', select(2, debug.gethook(unused)))
      local g = generator.wrap(function() return yield_from(sub) end)()
      assert.are.equal('sub', g:next())
      -- made with no hook: it gets that coroutine, without the stale hook
      local h = one('h')
      assert.are.equal(unused, debug.getuservalue(h, 1))
      assert.is_nil(debug.gethook(unused))
      assert.are.equal('h', h:next())
      assert_kind(error_of(h.next, h), 'StopIteration')
      -- and the other way round
      sub = one('sub')
      unused = debug.getuservalue(sub, 1)
      g = generator.wrap(function() return yield_from(sub) end)()
      assert.are.equal('sub', g:next())
      debug.sethook(function() end, 'c')
      h = one('h')
      debug.sethook()
      assert.are.equal(unused, debug.getuservalue(h, 1))
      assert.are.equal('c', select(2, debug.gethook(unused)))
      assert.are.equal('h', h:next())
    end)
    -- The frames below a yield_from are looked at before a body runs
    -- inline; the plain bodies' are skipped (bindings/generator.c,
    -- quiet_below), the others' still read: many rounds, so that what is
    -- learnt of each body (read the second time) is used.
    it('keeps a delegating body\'s <close> variable and PEP 380 close over many rounds', function()
      for _, closing_body in ipairs { false, true } do
        local log = {}
        local leaf = generator.wrap(function(i)
          local _ <close> = setmetatable({}, { __close = function() log[#log + 1] = 'leaf ' .. i end })
          yield(i)
          return i
        end)
        local mid = generator.wrap(function(i) return (yield_from(leaf(i))) end)
        local outer = generator.wrap(closing_body and function()
          local _ <close> = setmetatable({}, { __close = function() log[#log + 1] = 'outer' end })
          for i = 1, 10 do
            local r = yield_from(mid(i))
            log[#log + 1] = r
          end
        end or function()
          for i = 1, 10 do
            local r = yield_from(mid(i))
            log[#log + 1] = r
          end
        end)
        local g = outer()
        assert.are.equal(1, g:next())
        for i = 2, 4 do assert.are.equal(i, g:next()) end
        g:close()
        local want = { 'leaf 1', 1, 'leaf 2', 2, 'leaf 3', 3, 'leaf 4' }
        if closing_body then want[#want + 1] = 'outer' end
        assert.are.same(want, log)
        assert.are.equal('dead', g:status())
      end
    end)

  end)

  describe('whose coroutine is reached behind their back', function()
    it('fail cleanly when it was closed before they started', function()
      local g = generator.wrap(function(a) return a end)(5)
      assert.is_true(coroutine.close(debug.getuservalue(g, 1)))
      local ok, err = pcall(g.next, g)
      assert.is_false(ok)
      assert.are.equal('cannot resume dead coroutine', err)
      assert.are.equal('dead', g:status())
    end)

    it('fail cleanly when it was resumed to its end, and stay dead', function()
      local g = generator.wrap(function()
        local co = coroutine.running()
        yield(co)
        yield('never seen')
      end)()
      local co = g:next()
      assert.is_true(coroutine.resume(co))
      assert.is_true(coroutine.resume(co))
      assert.are.equal('dead', coroutine.status(co))
      local ok, err = pcall(g.next, g)
      assert.is_false(ok)
      assert.are.equal('cannot resume dead coroutine', err)
      assert.are.equal('dead', g:status())
      assert_kind(error_of(g.next, g), 'StopIteration')
      g:close()
    end)
  end)

  describe('in numbers and depth', function()
    it('keep 20000 suspended generators apart, then close them all', function()
      local gens = {}
      for i = 1, 20000 do
        gens[i] = count(3)
        assert.are.equal(1, gens[i]:next())
      end
      for i = 1, 20000, 2 do assert.are.equal(2, gens[i]:send()) end
      for i = 1, 20000 do
        gens[i]:close()
        assert.are.equal('dead', gens[i]:status())
      end
    end)

    it('recurse 150 deep through yield_from, sends reaching the innermost', function()
      local depth_of
      depth_of = generator.wrap(function(n)
        if n == 0 then
          local got = yield('bottom')
          return got
        end
        return (yield_from(depth_of(n - 1))) + 1
      end)
      local g = depth_of(150)
      assert.are.equal('bottom', g:next())
      assert.are.equal(150 + 7, error_of(g.send, g, 7).value)
    end)

    it('carry the position of an error raised two yield_from deep', function()
      local failing = generator.wrap(function()
        yield(1)
        error('deep failure')
      end)
      local line = debug.getinfo(1, 'l').currentline - 2
      local mid = generator.wrap(function() yield_from(failing()) end)
      local outer = generator.wrap(function() yield_from(mid()) end)
      local g = outer()
      g:next()
      local err = error_of(g.next, g)
      assert.are.equal(('spec/generator_spec.lua:%d: deep failure'):format(line), err)
      assert.are.equal('dead', g:status())
      local ok, tb = xpcall(g.next, debug.traceback, g)
      assert.is_false(ok)
      assert.matches('cannot resume dead generator', tostring(tb), 1, true)
    end)
  end)

  describe('bad arguments', function()
    it('are refused with the usual messages', function()
      assert.has_error(function() generator.wrap(42) end,
        "bad argument #1 to 'wrap' (function expected, got number)")
      local g = count(1)
      assert.has_error(function() g.send({}) end,
        "bad argument #1 to 'send' (host.Generator expected, got table)")
      assert.has_error(function() g.next() end,
        "bad argument #1 to 'next' (host.Generator expected, got no value)")
      assert.has_error(function() generator.yield_from(io.stdout) end,
        "bad argument #1 to 'yield_from' (host.Generator expected, got FILE*)")
    end)
  end)

  describe('Item 40', function()
    local item40 = require 'scripts.item40_coroutines'

    -- Life without generators: the same rules on a copy of the grid.
    local function plain_generation(grid)
      local next_grid = item40.Grid.new(grid.height, grid.width)
      for y = 0, grid.height - 1 do
        for x = 0, grid.width - 1 do
          local n = 0
          for dy = -1, 1 do
            for dx = -1, 1 do
              if (dy ~= 0 or dx ~= 0) and grid:query(y + dy, x + dx) == item40.ALIVE then
                n = n + 1
              end
            end
          end
          next_grid:assign(y, x, item40.game_logic(grid:query(y, x), n))
        end
      end
      return next_grid
    end

    it('minimize gives 10, 4, 4, -1', function()
      local it = item40.minimize()
      it:next()
      local got = {}
      for _, v in ipairs { 10, 4, 22, -1 } do got[#got + 1] = it:send(v) end
      assert.are.same({ 10, 4, 4, -1 }, got)
    end)

    it('the generator Life equals plain Life after 4 generations', function()
      local grid, plain = item40.glider(), item40.glider()
      local sim = item40.simulate(grid.height, grid.width)
      for _ = 1, 4 do
        grid = item40.live_a_generation(grid, sim)
        plain = plain_generation(plain)
      end
      assert.are.equal(tostring(plain), tostring(grid))
      assert.are.equal('---------\n----*----\n-----*---\n---***---\n---------\n', tostring(grid))
    end)

    it('the benchmarks\' Life with plain calls for yield_from equals the book\'s, generation by generation', function()
      local grid, calls = item40.glider(), item40.glider()
      local sim, sim_calls = item40.simulate(grid.height, grid.width), item40.simulate_calls(grid.height, grid.width)
      for _ = 1, 6 do
        grid = item40.live_a_generation(grid, sim)
        calls = item40.live_a_generation(calls, sim_calls)
        assert.are.equal(tostring(grid), tostring(calls))
      end
      for _, kernel in ipairs { 'create_resume_resume', 'life_calls' } do item40.kernels[kernel](3) end
    end)
  end)
end)

describe('a generator dropped without close', function()
  local thread = require 'host.thread'
  local sh = require 'spec.support.sh'

  -- Drops every reference the caller gave up: two full cycles, as the
  -- generator and its coroutine die together.
  local function collect()
    collectgarbage()
    collectgarbage()
  end

  it('is closed when collected: GeneratorExit where it waits, so its <close> lock is released', function()
    local lock = thread.Lock()
    local seen = {}
    local g = generator.wrap(function()
      local _ <close> = lock:acquire()
      local ok, err = pcall(yield, 1)
      seen[#seen + 1] = not ok and herror.is(err, 'GeneratorExit')
      error(err)
    end)()
    assert.are.equal(1, g:next())
    assert.is_true(lock:locked())
    g = nil
    collect()
    assert.is_false(lock:locked())
    assert.are.same({ true }, seen)
    assert.is_true(lock:acquire(5) ~= false)  -- another user gets it
    lock:release()
  end)

  it('is closed when collected after its function made others: a <close> in its body, a generic for, a tail call', function()
    -- From the second generator of a function on, its code is read once:
    -- this holds whatever it finds there.
    local closed = {}
    local function closer(name)
      return setmetatable({}, { __close = function() closed[#closed + 1] = name end })
    end
    local once = function(_, done) if not done then return true end end
    local bodies = {
      tbc = function() local _ <close> = closer('tbc'); yield(1) end,
      generic_for = function()
        for _ in once, nil, nil, closer('generic_for') do yield(1) end
      end,
      tail_call = function()
        return (function() local _ <close> = closer('tail_call'); yield(1) end)()
      end,
    }
    for _, body in pairs(bodies) do
      local make = generator.wrap(body)
      for _ = 1, 3 do
        local g = make()
        assert.are.equal(1, g:next())
        g = nil
        collect()
      end
    end
    table.sort(closed)
    assert.are.same({ 'generic_for', 'generic_for', 'generic_for', 'tail_call', 'tail_call', 'tail_call',
                      'tbc', 'tbc', 'tbc' }, closed)
  end)

  it('whose function has none of those is closed by close() as before, the same values returned', function()
    local make = generator.wrap(function(a)
      local held = setmetatable({}, { __close = function() error('not a <close> variable') end })
      local got = yield(a)
      yield(got, held ~= nil)
      return 'unreached'
    end)
    for i = 1, 3 do
      local g = make(i)
      assert.are.equal(i, g:next())
      local got, held = g:send('x')
      assert.are.same({ 'x', true }, { got, held })
      assert.are.same({}, { g:close() })
      assert.are.equal('dead', g:status())
      assert.are.same({}, { g:result() })
      assert_kind(error_of(g.next, g), 'StopIteration', 'cannot resume dead generator')
    end
  end)

  it('with nothing to close is dropped without growing the heap', function()
    -- In a fresh state, as the effect is relative to the heap's size:
    -- resetting each coroutine inside its finalizer postponed Lua's cycles
    -- until the heap held tens of MB of them.
    local out, err, rc = sh.host_script([[
      local generator = require 'host.generator'
      local gen = generator.wrap(function()
        local current = generator.yield()
        while true do current = math.min(generator.yield(current), current) end
      end)
      local peak = 0
      for round = 1, 20 do
        for i = 1, 5000 do
          local g = gen()
          g:next()
          g:send(i)
        end
        peak = math.max(peak, collectgarbage 'count')
      end
      print(peak < 4 * 1024, peak)
    ]])
    assert.are.equal('', err)
    assert.are.equal(0, rc)
    assert.matches('^true\t', out)
  end)

  it('where closing it runs nothing of its own is freed by one collection: it needs no finalizer', function()
    local quiet = generator.wrap(function(n)
      local x = yield(n)
      while true do x = yield(x + 1) end
    end)
    local seen = setmetatable({}, { __mode = 'k' })
    for i = 1, 3 do
      local g = quiet(i)
      g:next()
      g:send(i)
      seen[g] = true
    end
    collectgarbage()
    assert.is_nil(next(seen))
  end)

  it('is closed when it stops in a pcall only after many quiet yields', function()
    local closed = {}
    local late = generator.wrap(function(n)
      for i = 1, n do yield(i) end
      local ok, err = pcall(yield, 'in pcall')
      closed[#closed + 1] = not ok and herror.is(err, 'GeneratorExit')
      error(err)
    end)
    for _, n in ipairs { 0, 1, 2, 3, 4, 5, 9 } do
      local g = late(n)
      for _ = 1, n do g:next() end
      assert.are.equal('in pcall', g:next())
    end
    collect()
    assert.are.same({ true, true, true, true, true, true, true }, closed)
  end)

  it('is closed when it stops at a <close> variable after yielding quietly, and not once it has left it', function()
    local log = {}
    local function closer(name)
      return setmetatable({}, { __close = function() log[#log + 1] = name end })
    end
    local g1 = generator.wrap(function()
      yield(1)
      do
        local _ <close> = closer('held')
        yield(2)
      end
      yield(3)
    end)
    local a, b = g1(), g1()
    a:next() a:next()
    b:next() b:next() b:next()
    assert.are.same({ 'held' }, log)
    a, b = nil, nil
    collect()
    assert.are.same({ 'held', 'held' }, log)
  end)

  describe('that another delegates to, when it stops in a pcall after a quiet first yield', function()
    local log
    local inner = generator.wrap(function()
      yield(1)
      local ok, err = pcall(yield, 2)
      log[#log + 1] = not ok and herror.is(err, 'GeneratorExit')
      error(err)
    end)
    before_each(function() log = {} end)

    it('is closed with the generator that delegates to it', function()
      local g = generator.wrap(function() yield_from(inner()) end)()
      assert.are.equal(1, g:next())
      assert.are.equal(2, g:next())
      g = nil
      collect()
      assert.are.same({ true }, log)
    end)

    it('is closed when the generator that delegates to it is collected, even if kept', function()
      local sub = inner()
      local g = generator.wrap(function() yield_from(sub) end)()
      assert.are.equal(1, g:next())
      assert.are.equal(2, g:next())
      g = nil
      collect()
      assert.are.same({ true }, log)
      assert.are.equal('dead', sub:status())
    end)

    it('is closed through the generator that delegates to it when both are collected, whose guard came first', function()
      local seen = {}
      local c = generator.wrap(function() yield('c') end)
      local b = generator.wrap(function()
        local ok, e = pcall(function() return yield_from(c()) end)
        seen[#seen + 1] = 'b ' .. e.kind
        error(herror.new('KeyError', 'from b'))
      end)
      local g = generator.wrap(function()
        pcall(yield, 'pre')  -- g stops where closing it runs code: it gets its guard before b exists
        local ok, e = pcall(function() return yield_from(b()) end)
        seen[#seen + 1] = 'a ' .. e.kind
      end)()
      assert.are.equal('pre', g:next())
      assert.are.equal('c', g:next())
      g = nil
      collect()
      collect()
      assert.are.same({ 'b GeneratorExit', 'a KeyError' }, seen)  -- CPython: b's close raises KeyError in a
    end)

    it('is closed when a plain coroutine delegates to it', function()
      local co = coroutine.wrap(function() yield_from(inner()) end)
      assert.are.equal(1, co())
      assert.are.equal(2, co())
      co = nil
      collect()
      assert.are.same({ true }, log)
    end)
  end)

  it('closes what a generator it delegates to holds, and nothing of one not started or finished', function()
    local closed = {}
    local function closer(name)
      return setmetatable({}, { __close = function() closed[#closed + 1] = name end })
    end
    local inner = generator.wrap(function() local _ <close> = closer('inner') yield(1) end)
    local outer = generator.wrap(function() local _ <close> = closer('outer') yield_from(inner()) end)
    local g = outer()
    assert.are.equal(1, g:next())
    local fresh = generator.wrap(function() closed[#closed + 1] = 'fresh ran' end)()
    local done = generator.wrap(function() local _ <close> = closer('done') end)()
    assert.has_error(function() done:next() end)
    assert.are.same({ 'done' }, closed)
    g, fresh, done = nil, nil, nil
    collect()
    assert.are.same({ 'done', 'inner', 'outer' }, closed)
  end)

  it('that yields while closing, or whose close raises, is a warning, and its <close> variables still run', function()
    local out, err, rc = sh.host_script([[
      local generator = require 'host.generator'
      warn('@on')
      local stubborn = generator.wrap(function()
        local _ <close> = setmetatable({}, { __close = function(_, e) print('stubborn closed', e) end })
        while true do pcall(generator.yield, 1) end
      end)()
      stubborn:next()
      local raising = generator.wrap(function()
        local _ <close> = setmetatable({}, { __close = function() error('close failed') end })
        generator.yield(1)
      end)()
      raising:next()
      stubborn, raising = nil, nil
      collectgarbage() collectgarbage()
      print('went on')
    ]])
    assert.are.equal(0, rc)
    assert.are.equal('stubborn closed\tnil\nwent on\n', out)
    assert.matches('Lua warning: error closing a collected host.Generator: RuntimeError: generator ignored GeneratorExit\n', err, 1, true)
    assert.matches('Lua warning: error closing a collected host.Generator: [^\n]*close failed\n', err)
  end)

  it('is closed when the state closes at exit, and a lock it holds is released then', function()
    local out, err, rc = sh.host_script([[
      local thread = require 'host.thread'
      local generator = require 'host.generator'
      LOCK = thread.Lock()
      KEEP = generator.wrap(function()
        local _ <close> = LOCK:acquire()
        local _ <close> = setmetatable({}, { __close = function() print('closing at exit') end })
        generator.yield()
      end)()
      KEEP:next()
      print('main done', LOCK:locked())
    ]])
    assert.are.equal('', err)
    assert.are.equal(0, rc)
    assert.are.equal('main done\ttrue\nclosing at exit\n', out)
  end)

  describe('collection after guards were reused (hostile review)', function()
    local sh = require 'spec.support.sh'

    it('closes every collected generator, also after a dropped yield_from chain', function()
      local closed = {}
      local function closer(name) return setmetatable({}, { __close = function() closed[name] = true end }) end
      local gen = generator.wrap(function(name) local _ <close> = closer(name); yield(1) end)
      local outer = generator.wrap(function(sub) return yield_from(sub) end)
      do local o = outer(gen('inner')); o:next() end
      collectgarbage(); collectgarbage()
      assert.is_true(closed.inner)
      for i = 1, 3 do
        do local g = gen('next' .. i); g:next() end
        collectgarbage(); collectgarbage(); collectgarbage()
        assert.is_true(closed['next' .. i], 'next' .. i .. ' was not closed')
      end
    end)

    it('never runs a finalizer on a suspended generator while checking where it waits', function()
      local out, err, code = sh.host_script([[
        local generator = require 'host.generator'
        local G
        local gen = generator.wrap(function()
          local m = setmetatable({}, {})
          local t = {}
          for i = 1, 100000 do t[i] = i end
          coroutine.yield(1)
        end)
        local hits = 0
        local mt = { __gc = function()
          local _, ismain = coroutine.running()
          if not ismain and G:status() == 'suspended' then
            hits = hits + 1
            pcall(G.next, G)
          end
        end }
        for _ = 1, 50 do
          G = gen()
          for _ = 1, 100 do setmetatable({}, mt) end
          G:next()
        end
        print('hits', hits)
      ]], 60)
      assert.are.equal('', err)
      assert.are.equal(0, code)
      assert.are.equal('hits\t0\n', out)
    end)
  end)
end)

describe('throw into a generator that has not started', function()
  it('turns a thrown StopIteration into RuntimeError, as CPython does (PEP 479)', function()
    local g = generator.wrap(function() yield(1) end)()
    local err = error_of(g.throw, g, herror.new('StopIteration', 'x'))
    assert_kind(err, 'RuntimeError', 'generator raised StopIteration')
    assert.are.equal('dead', g:status())
    local other = generator.wrap(function() yield(1) end)()
    assert_kind(error_of(other.throw, other, herror.new('KeyError', 'k')), 'KeyError', 'k')
  end)
end)
