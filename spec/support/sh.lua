-- spec/support/sh.lua: runs shell commands from specs, always under a time
-- limit, and returns what they printed and how they ended.
local sh = {}

-- The host binary under test (set by `make`), and lua5.4 for comparisons.
sh.host = os.getenv 'HOST_BIN' or './build/host'

-- Why specs that starve host of memory or threads cannot run here, or nil:
-- they need host to start under `ulimit -v 400000` (0.4 GB, far more than
-- it needs; a sanitizer build cannot) and, with `prlimit`, util-linux's
-- prlimit(1).
function sh.cannot_limit_memory(prlimit)
  local probe = sh.run('ulimit -v 400000 && exec ' .. sh.quote(sh.host) .. ' -e "print(1)"', 20)
  if probe ~= '1\n' then return 'host does not start under ulimit -v (a sanitizer build?)' end
  if prlimit and select(3, sh.run('prlimit --version', 10)) ~= 0 then return 'no prlimit' end
  return nil
end

-- Lua code that limits the address space of the host running it to its
-- size now plus arg[1] KiB (prlimit on its own pid): a script's preamble.
sh.LIMIT_SELF = [[
  do
    local statm = io.open('/proc/self/statm')
    local vsz = statm:read('n') * 4096
    statm:close()
    local pid = io.open('/proc/self/stat'):read('n')
    assert(os.execute(('prlimit --pid %d --as=%d'):format(pid, vsz + tonumber(arg[1]) * 1024)))
  end
]]

-- Lua code that starts threads (each waiting on the Event `go`, kept in
-- `started`) until no more can start: under ulimit -v, stacks run out.
sh.EXHAUST_THREADS = [[
  local go, started = require('host.thread').Event(), {}
  repeat
    local t = require('host.thread').start(function() go:wait(20) end)
    started[#started + 1] = t
  until not t or #started > 5000
]]

-- Quotes one word for /bin/sh.
function sh.quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Runs `cmd` (a shell command line) with at most `limit` seconds (default 20).
-- Returns stdout, stderr, exit code.
function sh.run(cmd, limit, stdin)
  local errfile = os.tmpname()
  local infile
  if stdin then
    infile = os.tmpname()
    local f = assert(io.open(infile, 'wb'))
    f:write(stdin)
    f:close()
  end
  local line = string.format('timeout -k 2 %d sh -c %s 2>%s <%s; echo "<rc=$?>"',
    limit or 20, sh.quote(cmd), sh.quote(errfile), infile and sh.quote(infile) or '/dev/null')
  local p = assert(io.popen(line, 'r'))
  local out = p:read 'a'
  p:close()
  local f = assert(io.open(errfile, 'rb'))
  local err = f:read 'a'
  f:close()
  os.remove(errfile)
  if infile then os.remove(infile) end
  local body, code = out:match '^(.-)<rc=(%d+)>\n$'
  return body, err, tonumber(code)
end

-- Runs host with the given shell-quoted argument string.
function sh.host_run(args, limit, stdin)
  return sh.run(sh.quote(sh.host) .. ' ' .. args, limit, stdin)
end

-- Writes `text` to a new temporary file and returns its name.
function sh.tempfile(text)
  local name = os.tmpname()
  local f = assert(io.open(name, 'wb'))
  f:write(text)
  f:close()
  return name
end

-- Runs the Lua source `text` as a script with host, at most `limit` seconds
-- (default 20); returns stdout, stderr, exit code.
function sh.host_script(text, limit, stdin)
  local name = sh.tempfile(text)
  local out, err, code = sh.host_run(sh.quote(name), limit, stdin)
  os.remove(name)
  return out, err, code
end

-- The bytes of the file at `path`, or nil when it cannot be read.
function sh.slurp(path)
  local f = io.open(path, 'rb')
  if not f then return nil end
  local s = f:read 'a'
  f:close()
  return s
end

-- How many times the plain string `plain` occurs in s.
function sh.count(s, plain)
  local n, i = 0, 1
  while true do
    local j = s:find(plain, i, true)
    if not j then return n end
    n, i = n + 1, j + 1
  end
end

return sh
