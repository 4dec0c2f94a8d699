-- spec/serialize_spec.lua: the codec (host.serialize), its errors, its
-- behaviour on corrupt input, and closures rebuilt in a second universe made
-- through host.h by the test helper spec/support/universe.c.
local serialize = require 'host.serialize'
local herror = require 'host.error'

local valgrind = os.getenv 'HOST_UNDER_VALGRIND' ~= nil
local universe = assert(package.loadlib(assert(os.getenv 'HOST_SPEC_UNIVERSE',
  'HOST_SPEC_UNIVERSE is unset: run the specs with make'), 'luaopen_universe'))()

-- Tags of the wire format (bindings/serialize.c), for crafting payloads.
local T = { NIL = 0, INT = 3, FLT = 4, STR = 5, REF = 7, TBL = 8, MTBL = 9, UDATA = 13 }
local HEADER = 'HS\1'

local function rt(...) return serialize.loads(serialize.dumps(...)) end
local function rt_fn(...) return serialize.loads(serialize.dumps(...), { functions = true }) end

-- The message of the error that f(...) raises.
local function error_of(f, ...)
  local ok, e = pcall(f, ...)
  assert(not ok, 'expected an error')
  return e
end

-- A payload: the header, a count, then raw bytes.
local function payload(count, ...) return HEADER .. string.char(count) .. table.concat { ... } end
local function u32(n) return string.pack('<I4', n) end
local function lstr(s) return string.char(#s) .. s end

describe('host.serialize', function()
  describe('round trips', function()
    it('every argument, nils included', function()
      assert.are.equal(0, select('#', rt()))
      assert.are.equal(3, select('#', rt(nil, nil, nil)))
      local a, b, c, d = rt(nil, true, false, nil)
      assert.is_nil(a)
      assert.is_true(b)
      assert.is_false(c)
      assert.is_nil(d)
      assert.are.equal(4, select('#', rt(nil, true, false, nil)))
    end)

    it('integers and floats exactly, subtype kept', function()
      local ints = { 0, 1, -1, 63, 64, -64, -65, 127, 128, 300, 2 ^ 31 | 0, math.maxinteger, math.mininteger }
      local got = { rt(table.unpack(ints)) }
      for i, v in ipairs(ints) do
        assert.are.equal(v, got[i])
        assert.are.equal('integer', math.type(got[i]))
      end
      local floats = { 0.0, 0.1, -2.5, 3.0, 2 ^ 53, 1e308, 5e-324, math.huge, -math.huge, math.pi }
      got = { rt(table.unpack(floats)) }
      for i, v in ipairs(floats) do
        assert.are.equal(v, got[i])
        assert.are.equal('float', math.type(got[i]))
      end
      local nan, negzero = rt(0 / 0, -0.0)
      assert.is_true(nan ~= nan)
      assert.are.equal(-math.huge, 1 / negzero)
    end)

    it('binary strings, short and long, the same one twice', function()
      local bytes = {}
      for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
      local all = table.concat(bytes)
      local long = string.rep('long\0', 20000)
      local e, a, l1, l2 = rt('', all, long, long)
      assert.are.equal('', e)
      assert.are.equal(all, a)
      assert.are.equal(long, l1)
      assert.are.equal(long, l2)
    end)

    it('tables: array, hash, holes and keys of every kind', function()
      local k = {}
      local t = { 1, 2, 3, nil, 5, x = 'y', [0] = 'zero', [-1] = 'neg', [2.5] = 'half',
                  [true] = 'yes', [false] = 'no', [k] = 'table key', ['1'] = 'string one',
                  nested = { { { 'deep' } } } }
      local r = rt(t)
      for _, key in ipairs { 1, 2, 3, 5, 'x', 0, -1, 2.5, true, false, '1' } do
        assert.are.equal(t[key], r[key])
      end
      assert.is_nil(r[4])
      assert.are.equal('deep', r.nested[1][1][1])
      local found
      for key, v in pairs(r) do
        if type(key) == 'table' then found = v end
      end
      assert.are.equal('table key', found)
    end)

    it('keeps shared references and cycles, in values, keys and across arguments', function()
      local shared = { 'shared' }
      local a = { name = 'a' }
      local b = { name = 'b', a = a }
      a.b = b
      local t = { shared, shared, s = shared, a = a, self = nil }
      t.self = t
      t[t] = t
      local r, r_shared = rt(t, shared)
      assert.are.equal(r, r.self)
      assert.are.equal(r, r[r])
      assert.are.equal(r[1], r[2])
      assert.are.equal(r[1], r.s)
      assert.are.equal(r[1], r_shared)
      assert.are_not.equal(shared, r_shared)
      assert.are.equal(r.a, r.a.b.a)
      assert.are.equal('b', r.a.b.name)
    end)

    it('sets the metatable registered under the same name', function()
      local Vec = { __index = {} }
      function Vec.__index.len(v) return math.sqrt(v.x ^ 2 + v.y ^ 2) end
      assert.are.equal(Vec, serialize.register('spec.Vec', Vec))
      assert.are.equal(Vec, serialize.register('spec.Vec', Vec))  -- again: fine
      local v = setmetatable({ x = 3, y = 4 }, Vec)
      local r1, r2 = rt(v, v)
      assert.are.equal(Vec, getmetatable(r1))
      assert.are.equal(5, r1:len())
      assert.are.equal(r1, r2)
    end)

    it('refuses a taken name or metatable at registration', function()
      local A, B = {}, {}
      serialize.register('spec.A', A)
      assert.matches("type name 'spec.A' is already registered", error_of(serialize.register, 'spec.A', B))
      assert.matches("metatable is already registered as 'spec.A'", error_of(serialize.register, 'spec.B', A))
      assert.matches('bad argument #2', error_of(serialize.register, 'spec.C'))
    end)

    it('carries host error objects', function()
      local e = herror.new('TimeoutError', 'too slow', herror.new('Cause', 'inner'))
      local r = rt(e)
      assert.is_true(herror.is(r, 'TimeoutError'))
      assert.is_true(herror.is(r.cause, 'Cause'))
      assert.are.equal(tostring(e), tostring(r))
    end)

    it('registered userdata, through their dump and load functions', function()
      local p = universe.point(1.5, -2)
      local r1, r2 = rt({ p = p }, p)
      assert.are.equal(1.5, r1.p.x)
      assert.are.equal(-2, r1.p.y)
      assert.are.equal(r1.p, r2)
      assert.are_not.equal(p, r2)
    end)
  end)

  describe('deep values, with no recursion in C', function()
    local depth = valgrind and 10 ^ 5 or 10 ^ 6

    it('a ' .. depth .. '-deep nested table, both ways', function()
      local root = {}
      local c = root
      for _ = 1, depth do
        local n = {}
        c[1] = n
        c = n
      end
      c.bottom = true
      local r = rt(root)
      local n = 0
      while r[1] do
        r = r[1]
        n = n + 1
      end
      assert.are.equal(depth, n)
      assert.is_true(r.bottom)
    end)

    it('a deep chain of table keys and of closures', function()
      local key = { 'innermost' }
      for _ = 1, 10 ^ 4 do key = { [key] = true } end
      local r = rt(key)
      local n = 0
      while r[1] == nil do
        r = next(r)
        n = n + 1
      end
      assert.are.equal(10 ^ 4, n)
      local f = function() return 0 end
      for _ = 1, 2000 do
        local g = f
        f = function() return g() + 1 end
      end
      assert.are.equal(2000, rt_fn(f)())
    end)
  end)

  describe('functions', function()
    it('carries a closure by value, its upvalues copied', function()
      local total = 10
      local function add(x)
        total = total + x
        return total
      end
      local copy = rt_fn(add)
      assert.are.equal(11, copy(1))
      assert.are.equal(13, copy(2))
      assert.are.equal(10, total)
    end)

    it('keeps upvalues shared between closures shared', function()
      local n = 0
      local function inc() n = n + 1 end
      local function get() return n end
      local inc2, get2 = rt_fn(inc, get)
      inc2()
      inc2()
      assert.are.equal(2, get2())
      assert.are.equal(0, n)
    end)

    it('keeps a recursive local function working', function()
      local function fact(n) return n <= 1 and 1 or n * fact(n - 1) end
      assert.are.equal(120, rt_fn(fact)(5))
    end)

    it('keeps debug info, so errors name the source line', function()
      local line = debug.getinfo(1, 'l').currentline + 1
      local function boom() error('boom') end
      local copy = rt_fn(boom)
      local src = debug.getinfo(1, 'S').short_src
      assert.matches(src .. ':' .. line .. ': boom', error_of(copy), 1, true)
      local _, trace = xpcall(copy, debug.traceback)
      assert.matches(src .. ':' .. line .. ':', trace, 1, true)
    end)

    it('carries C functions by their path in package.loaded', function()
      local time = require 'host.time'
      local f, p, m = rt_fn(string.format, print, time.monotonic)
      assert.are.equal(string.format, f)
      assert.are.equal(print, p)
      assert.are.equal(time.monotonic, m)
    end)

    it('refuses functions and the globals table unless asked', function()
      for _, v in ipairs { print, function() end, { _G } } do
        local s = serialize.dumps(v)
        assert.matches('pass {functions = true}', error_of(serialize.loads, s), 1, true)
        assert.is_not_nil(serialize.loads(s, { functions = true }))
      end
      assert.are.equal(_G, rt_fn(_G))
    end)
  end)

  describe('errors name the path and the type', function()
    local co = coroutine.create(print)
    local cases = {
      { 'userdata at [2].out (FILE*)', 1, { out = io.stdout } },
      { 'thread at [1].co (coroutine)', { co = co } },
      { 'thread at [1][3] (coroutine)', { 1, 2, co } },
      { 'thread at [1]["a b"][1.5][true] (coroutine)', { ['a b'] = { [1.5] = { [true] = co } } } },
      { 'thread at [1].list<key> (coroutine)', { list = { [co] = 1 } } },
      { 'thread at [1]<key>[1] (coroutine)', { [{ co }] = 1 } },
      { 'thread at [1]<upvalue co> (coroutine)', function() return co end },
      { 'function at [1].iter (C function not found in package.loaded)', { iter = ('x'):gmatch '.' } },
      { 'table at [1] (unregistered metatable)', setmetatable({}, {}) },
      { 'table at [1].p (unregistered metatable spec.Point)', { p = setmetatable({}, { __name = 'spec.Point' }) } },
    }
    for _, case in ipairs(cases) do
      it(case[1], function()
        assert.are.equal('cannot serialize ' .. case[1],
          error_of(serialize.dumps, table.unpack(case, 2)))
      end)
    end

    it('shortens the path of a very deep value', function()
      local root = {}
      local c = root
      for _ = 1, 1000 do
        c[1] = {}
        c = c[1]
      end
      c[1] = co
      local msg = error_of(serialize.dumps, root)
      assert.matches('^cannot serialize thread at %[1%]%[1%][%[%]1]*%.%.%.%(969 more%)%.%.%.[%[%]1]+ %(coroutine%)$', msg)
      assert.is_true(#msg < 300)
    end)

    it('checks the arguments of loads', function()
      assert.matches('bad argument #1', error_of(serialize.loads))
      assert.matches('bad argument #2', error_of(serialize.loads, serialize.dumps(1), 5))
    end)
  end)

  describe('corrupt input', function()
    local sample = serialize.dumps(1, -2.5, 'str', string.rep('m', 40), string.rep('m', 40),
      { 1, 2, { x = true, [{}] = false }, setmetatable({}, herror.metatable) }, nil)

    it('refuses what is not a payload, and other format versions', function()
      for _, s in ipairs { '', 'H', 'HSx', 'not a payload at all' } do
        assert.is_false(pcall(serialize.loads, s))
      end
      assert.matches('no \'HS\' header', error_of(serialize.loads, 'junk'))
      assert.are.equal('serialized data has format version 2; this host reads 1',
        error_of(serialize.loads, 'HS\2' .. sample:sub(4)))
    end)

    it('fails on every truncation and on trailing bytes', function()
      for i = 0, #sample - 1 do
        assert.is_false(pcall(serialize.loads, sample:sub(1, i)), 'prefix of ' .. i)
      end
      assert.matches('trailing bytes', error_of(serialize.loads, sample .. '\0'))
    end)

    it('returns or raises, never more, on corrupted bytes', function()
      local seed = 12345
      local function rand(n)  -- a small LCG: the same cases every run
        seed = (seed * 1103515245 + 12345) % 2147483648
        return seed % n
      end
      for _ = 1, valgrind and 300 or 5000 do
        local b = { sample:byte(1, -1) }
        for _ = 1, 1 + rand(3) do b[1 + rand(#b)] = rand(256) end
        local ok, e = pcall(serialize.loads, string.char(table.unpack(b)))
        assert(ok or type(e) == 'string', e)
      end
    end)

    it('refuses huge lengths and counts before allocating', function()
      local before = collectgarbage 'count'
      local huge = '\128\128\128\128\128\128\128\128\64'  -- varint 2^62
      for _, s in ipairs {
        payload(1, string.char(T.STR), huge),
        payload(1, string.char(T.TBL), u32(0xffffffff), u32(0)),
        payload(1, string.char(T.TBL), u32(0), u32(0x7fffffff)),
        HEADER .. huge,
      } do
        local msg = error_of(serialize.loads, s)
        assert(msg:find 'truncated' or msg:find 'counts exceed the input', msg)
      end
      assert.is_true(collectgarbage 'count' - before < 1024)
      assert.matches('varint overflows', error_of(serialize.loads,
        payload(1, string.char(T.INT), string.rep('\255', 10), '\1')))
    end)

    it('refuses bad references, keys, tags and type names', function()
      local function fails(pattern, s) assert.matches(pattern, error_of(serialize.loads, s)) end
      fails('reference to an unknown object', payload(1, string.char(T.REF, 1)))
      fails('nil table key', payload(1, string.char(T.TBL), u32(0), u32(1), string.char(T.NIL, T.NIL)))
      fails('NaN table key', payload(1, string.char(T.TBL), u32(0), u32(1),
        string.char(T.FLT), string.pack('<d', 0 / 0), string.char(T.NIL)))
      fails('unknown tag', payload(1, '\99'))
      fails("cannot load type 'no.Such'", payload(1, string.char(T.MTBL), lstr 'no.Such', u32(0), u32(0)))
      fails('userdata type used for a table', payload(1, string.char(T.MTBL), lstr 'spec.Point', u32(0), u32(0)))
      fails('table type used for a userdata', payload(1, string.char(T.UDATA), lstr 'host.Error', lstr ''))
      fails('cannot load spec.Point: a point is 16 bytes, not 3',
        payload(1, string.char(T.UDATA), lstr 'spec.Point', lstr 'abc'))
    end)
  end)

  describe('in a second universe made through host.h', function()
    local u
    before_each(function() u = universe.new() end)
    after_each(function() u:close() end)

    -- Runs `code` in u on the values, returns what it returned.
    local function run(code, ...)
      local out = assert(u:run(code, serialize.dumps(...)))
      return serialize.loads(out, { functions = true })
    end

    it('rebuilds a closure: upvalues copied, _ENV its globals, lines kept', function()
      -- busted runs this file under an environment of its own: that _ENV
      -- does not travel, the other universe's globals take its place.
      local count = 0
      local function counter(step)
        count = count + step
        return count, marker
      end
      local line = debug.getinfo(1, 'l').currentline + 1
      local function boom() error('boom') end
      local n, seen, err = run([[
        marker = 'there'
        local counter, boom = ...
        counter(1)
        local n, seen = counter(2)
        local _, err = xpcall(boom, debug.traceback)
        return n, seen, err
      ]], counter, boom)
      assert.are.equal(3, n)
      assert.are.equal('there', seen)
      assert.are.equal(0, count)
      local src = debug.getinfo(1, 'S').short_src
      assert.matches(src .. ':' .. line .. ': boom', err, 1, true)
      assert.matches('stack traceback', err, 1, true)
    end)

    it('keeps shared upvalues shared and finds C functions there', function()
      local n = 0
      local function inc() n = n + 1 end
      local function get() return n end
      local got, same = run([[
        local inc, get, fmt = ...
        inc(); inc(); inc()
        return get(), fmt == string.format
      ]], inc, get, string.format)
      assert.are.equal(3, got)
      assert.is_true(same)
    end)

    it('carries registered userdata there and back', function()
      local x, p = run('local p = ... return p.x + p.y, p', universe.point(2, 3))
      assert.are.equal(5, x)
      assert.are.equal(3, p.y)
    end)

    it('reports what fails there as a message', function()
      local out, err = u:run('return coroutine.create(print)', serialize.dumps())
      assert.is_nil(out)
      assert.are.equal('cannot serialize thread at [1] (coroutine)', err)
      out, err = u:run('return ...', 'junk')
      assert.is_nil(out)
      assert.matches("no 'HS' header", err)
      out, err = u:run('error "inside"', serialize.dumps())
      assert.is_nil(out)
      assert.matches('inside', err)
    end)
  end)

  describe('the C API (host.h)', function()
    it('encodes like dumps and decodes like loads', function()
      local t = { 1, 'two', { 3 } }
      assert.are.equal(serialize.dumps(1, nil, t, 'x'), universe.encode(1, nil, t, 'x'))
      local a, b, c = universe.decode(serialize.dumps('a', nil, t))
      assert.are.equal('a', a)
      assert.is_nil(b)
      assert.are.equal('two', c[2])
      assert.matches('pass {functions = true}', error_of(universe.decode, serialize.dumps(print)), 1, true)
      assert.are.equal(print, universe.decode(serialize.dumps(print), true))
    end)

    it('carries as many values as a stack holds, and refuses more with a message', function()
      local n = valgrind and 10000 or 500000
      local t = {}
      for i = 1, n do t[i] = i end
      local p = serialize.dumps(table.unpack(t, 1, n))
      local r = table.pack(serialize.loads(p))
      assert.are.equal(n, r.n)
      assert.are.equal(n, r[n])
      assert.are.equal(n, select('#', universe.decode(p)))
      -- a million nils: more values than one Lua stack holds
      local nils = HEADER .. '\192\132\61' .. string.rep('\0', 1000000)
      assert.are.equal('stack overflow (too many values to decode)', error_of(serialize.loads, nils))
      assert.matches('too many values to decode', error_of(universe.decode, nils))
    end)

    it("names a registered type's dump or load error, its __tostring run protected", function()
      -- before: a dump error that is not a string read "dump returned no
      -- string"; a load error's raising __tostring escaped as its own error
      assert.are.equal('cannot serialize userdata at [1] (spec.Bad: bad dump)',
        error_of(serialize.dumps, universe.bad('dump')))
      local p = serialize.dumps(universe.bad('load'))
      assert.are.equal('cannot load spec.Bad: (error object is a table value)',
        error_of(serialize.loads, p))
      assert.are.equal('cannot load spec.Bad: (error object is a table value)',
        error_of(universe.decode, p))
      assert.are.equal('userdata', type(serialize.loads(serialize.dumps(universe.bad('ok')))))
    end)

    it('reports memory that runs out while decoding as LUA_ERRMEM, never as bad data', function()
      -- decode_failing refuses the n-th allocation of one decoding, in a
      -- state of its own (with an empty prototype cache): every n a
      -- decoding of each payload makes is tried. Before: bytecode that
      -- could not load for want of memory read "corrupt serialized data at
      -- byte N: bad function: not enough memory", a registered type's load
      -- "cannot load spec.Point: not enough memory", a stack that could not
      -- grow for 300 values "stack overflow (too many values to decode)",
      -- all LUA_ERRRUN.
      local items, many = {}, {}
      for i = 1, valgrind and 6 or 60 do
        local k = i
        items[i] = { ('s'):rep(i), i + 0.5, { x = i, [{}] = true }, function() return k end,
                     universe.point(i, -i) }
      end
      for i = 1, 300 do many[i] = i end
      for _, case in ipairs { { serialize.dumps(items, function(a) return items, a end), 2 },
                              { serialize.dumps(table.unpack(many)), #many } } do
        local p = case[1]
        local status, count, requests = universe.decode_failing(p, 0)
        assert.are.same({ 0, case[2] }, { status, count })
        local refused = 0
        for n = 1, requests do
          local status, msg = universe.decode_failing(p, n)
          assert(status == 0 or (status == 4 and msg == 'not enough memory'),
            ('allocation %d of %d refused: status %d, %s'):format(n, requests, status, msg))
          if status == 4 then refused = refused + 1 end
        end
        assert.is_true(refused > requests / 2)  -- most refusals fail the decoding
      end
    end)

    it('returns errors as messages, without raising through the caller', function()
      assert.are.equal('cannot serialize thread at [2] (coroutine)',
        error_of(universe.encode, 1, coroutine.create(print)))
      assert.matches('corrupt serialized data', error_of(universe.decode, HEADER .. '\1'))
    end)
  end)
end)
