-- spec/support/shutdown_race.lua: the other side of the specs that race
-- submit against shutdown. Returns start(box): a started host.Thread that
-- shuts down, without waiting, each pool put in box.ex, until box.running
-- is false. The specs load it with dofile, from the repository's root, and
-- so do the scripts they run.
local thread = require 'host.thread'

return function(box)
  local closer = thread.Thread { target = function()
    while box.running do
      local ex = box.ex
      if ex then
        box.ex = nil
        ex:shutdown { wait = false }
      end
    end
  end }
  closer:start()
  return closer
end
