-- spec/native_spec.lua: Debian's own Lua C modules (lua-lpeg, lua-filesystem;
-- `make test` installs them), required and used from several threads at
-- once. Their C functions run under the GIL and are never preempted, so a
-- pattern shared by every thread is compiled and matched safely.
local thread = require 'host.thread'

local T = 10
local THREADS = 6

-- Requires `name` from THREADS threads released together by a Barrier;
-- returns what each got.
local function require_together(name)
  package.loaded[name] = nil
  local barrier = thread.Barrier(THREADS)
  local ts = {}
  for i = 1, THREADS do
    ts[i] = thread.start(function()
      barrier:wait(T)
      return require(name)
    end)
  end
  local got = {}
  for i = 1, THREADS do
    local ok, m = ts[i]:join(T)
    assert(ok, m)
    got[i] = m
  end
  return got
end

-- Runs f(i) in THREADS threads under the jittered instruction policy (so
-- the threads switch often, anywhere in Lua code); returns their results.
local function in_threads(f)
  local saved = thread.getswitchinterval()
  thread.setswitchinterval { instructions = 100 }
  local ts, results = {}, {}
  for i = 1, THREADS do ts[i] = thread.start(f, i) end
  for i = 1, THREADS do
    local ok, r = ts[i]:join(T * 3)
    assert(ok, r)
    results[i] = r
  end
  thread.setswitchinterval(saved)
  return results
end

describe('Debian Lua C modules in threads', function()
  it('lpeg: one module for every thread that requires it at once', function()
    local got = require_together 'lpeg'
    assert.is_function(got[1].match)
    for i = 2, THREADS do assert.are.equal(got[1], got[i]) end
    assert.are.equal(got[1], package.loaded.lpeg)
  end)

  it('lpeg: a pattern shared by every thread matches right in each', function()
    local lpeg = require 'lpeg'
    local number = lpeg.C(lpeg.R '09' ^ 1) / tonumber
    local list = lpeg.Ct(number * (',' * number) ^ 0) * -1  -- compiled at first match
    local results = in_threads(function(i)
      local sum = 0
      for k = 1, 2000 do
        local t = assert(list:match(('%d,%d,%d'):format(i, k, i * k)))
        assert(#t == 3 and t[1] == i and t[2] == k and t[3] == i * k)
        sum = sum + t[3]
      end
      return sum
    end)
    for i = 1, THREADS do assert.are.equal(i * 2000 * 2001 // 2, results[i]) end
  end)

  it('lfs: required at once, then directory iterators in every thread', function()
    local got = require_together 'lfs'
    for i = 2, THREADS do assert.are.equal(got[1], got[i]) end
    local lfs = got[1]
    local results = in_threads(function()
      local n = 0
      for _ = 1, 20 do
        for entry in lfs.dir 'spec' do
          if entry:match '_spec%.lua$' then
            assert(lfs.attributes('spec/' .. entry, 'mode') == 'file')
            n = n + 1
          end
        end
      end
      return n
    end)
    local expected = 0
    for entry in lfs.dir 'spec' do
      if entry:match '_spec%.lua$' then expected = expected + 20 end
    end
    for i = 1, THREADS do assert.are.equal(expected, results[i]) end
  end)
end)

-- The public C API (bindings/host.h), through the test helper
-- spec/support/universe.c (13.7).
describe('host.h', function()
  local universe = assert(package.loadlib(assert(os.getenv 'HOST_SPEC_UNIVERSE',
    'HOST_SPEC_UNIVERSE is unset: run the specs with make'), 'luaopen_universe'))()

  it('host_openlibs refuses a state not made by host_newstate', function()
    -- before, it preloaded the libraries, and thread.count() or
    -- thread.start() then used a NULL universe (SIGSEGV)
    local ok, msg = universe.plain_openlibs()
    assert.is_false(ok)
    assert.are.equal('host_openlibs: the lua_State was not made by host_newstate', msg)
  end)

  it('host_openlibs opens a state made by host_newstate', function()
    local u <close> = universe.new()
    local got = universe.decode(assert(u:run(
      'return require("host.thread").count()', universe.encode())))
    assert.are.equal(1, got)
  end)

  it('host_codec_encode refuses a negative or too large count with a message', function()
    assert.are.same({ 0, 6 }, { universe.encode_count(2, true, false) })
    assert.are.same({ 2, 'host_codec_encode: negative count of values' },
      { universe.encode_count(-1, true) })
    assert.are.same({ 4, 'stack overflow (too many values to encode)' },
      { universe.encode_count(math.maxinteger >> 33, true) })
  end)

  it('host_codec_decode pushes its message when the stack cannot grow', function()
    local status, type, msg = universe.decode_full(universe.encode(1, 2))
    assert.are.equal(4, status)  -- LUA_ERRMEM
    assert.are.equal('string', type)
    assert.are.equal('not enough memory', msg)
  end)
end)
