-- spec/error_spec.lua: the one error object type (host.error).
local herror = require 'host.error'

describe('host.error', function()
  it('makes error objects with a kind, a message and a cause', function()
    local cause = herror.new('ValueError', 'inner')
    local e = herror.new('TimeoutError', 'too slow', cause)
    assert.are.equal('TimeoutError', e.kind)
    assert.are.equal('too slow', e.message)
    assert.are.equal(cause, e.cause)
    assert.is_true(e:is 'TimeoutError')
    assert.is_false(e:is 'CancelledError')
    assert.is_true(herror.is(e, 'TimeoutError'))
    assert.is_true(herror.is(e))
  end)

  it('says what it is with tostring, cause included', function()
    local e = herror.new('TimeoutError', 'too slow', 'disk')
    assert.are.equal('TimeoutError: too slow\ncaused by: disk', tostring(e))
  end)

  it('says a remote traceback before its own, a blank line between', function()
    local e = herror.new('ValueError', 'bad')
    e.remote_traceback = 'remote traceback (worker process 1):\n\tw.lua:1: in main chunk'
    assert.are.equal('ValueError: bad\nremote traceback (worker process 1):\n\tw.lua:1: in main chunk',
      tostring(e))
    e.traceback = 'stack traceback:\n\tc.lua:2: in main chunk'
    assert.are.equal('ValueError: bad\nremote traceback (worker process 1):\n\tw.lua:1: in main chunk' ..
      '\n\nstack traceback:\n\tc.lua:2: in main chunk', tostring(e))
  end)

  it('is told apart from other values', function()
    assert.is_false(herror.is({ kind = 'TimeoutError' }, 'TimeoutError'))
    assert.is_false(herror.is('TimeoutError: x', 'TimeoutError'))
    assert.is_false(herror.is(nil))
  end)

  it('travels through error and pcall, keeping its identity', function()
    local e = herror.new('Empty', 'nothing')
    local ok, got = pcall(error, e)
    assert.is_false(ok)
    assert.are.equal(e, got)
  end)

  it('says a 2 KB message with a cause, itself with a long message and a cause', function()
    local long = string.rep('x', 2048)
    local inner = herror.new('ValueError', long, herror.new('OSError', long))
    local e = herror.new('RuntimeError', long, inner)
    local want = 'RuntimeError: ' .. long .. '\ncaused by: ValueError: ' .. long
      .. '\ncaused by: OSError: ' .. long
    assert.are.equal(want, tostring(e))
  end)

  it('says a cause whose __tostring returns a long string, and one that raises', function()
    local long = string.rep('y', 4000)
    local e = herror.new('RuntimeError', 'outer', setmetatable({}, { __tostring = function() return long end }))
    assert.are.equal('RuntimeError: outer\ncaused by: ' .. long, tostring(e))
    local bad = herror.new('RuntimeError', 'outer', setmetatable({}, { __tostring = function() error('no way') end }))
    local ok, err = pcall(tostring, bad)
    assert.is_false(ok)
    assert.matches('no way', err, 1, true)
  end)

  it('says a chain of causes that loops back, once', function()
    local a = herror.new('A', 'one')
    a.cause = herror.new('B', 'two', a)
    assert.are.equal('A: one\ncaused by: B: two\ncaused by: (an error said above: the causes form a cycle)',
      tostring(a))
    local self = herror.new('X', 'self')
    self.cause = self
    assert.are.equal('X: self\ncaused by: (an error said above: the causes form a cycle)', tostring(self))
  end)

  it('refuses a missing kind', function()
    assert.has_error(function() herror.new() end,
      "bad argument #1 to 'new' (string expected, got no value)")
  end)
end)
