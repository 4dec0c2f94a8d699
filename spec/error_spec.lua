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

  it('refuses a missing kind', function()
    assert.has_error(function() herror.new() end,
      "bad argument #1 to 'new' (string expected, got no value)")
  end)
end)
