-- spec/support/counting.lua: busted's utfTerminal output, plus a count of the
-- results written to $HOST_TEST_COUNTS as "passed failed" for .ci/run.
return function(options)
  local busted = require 'busted'
  local handler = require 'busted.outputHandlers.utfTerminal'(options)
  local subscribe = handler.subscribe
  handler.subscribe = function(self, opts)
    subscribe(self, opts)
    busted.subscribe({ 'suite', 'end' }, function()
      local path = os.getenv 'HOST_TEST_COUNTS'
      if path then
        local f = assert(io.open(path, 'a'))
        f:write(handler.successesCount, ' ',
                handler.failuresCount + handler.errorsCount, '\n')
        f:close()
      end
      return nil, true
    end, { priority = 2 })
  end
  return handler
end
