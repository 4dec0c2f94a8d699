-- spec/host_spec.lua: the `host` program run as a subprocess, compared with
-- what lua5.4 does for the same command line.
local sh = require 'spec.support.sh'
local q = sh.quote
-- Errors start with the program's name as it was run (argv[0]), as in lua.c.
local P = sh.host:gsub('%p', '%%%0')

describe('host', function()
  it('exits 0 after a script that succeeds, 1 after one that fails', function()
    local _, _, code = sh.host_run("-e 'x = 1'")
    assert.are.equal(0, code)
    _, _, code = sh.host_run("-e 'error(1)'")
    assert.are.equal(1, code)
  end)

  it('passes os.exit codes through', function()
    local _, _, code = sh.host_run("-e 'os.exit(7)'")
    assert.are.equal(7, code)
  end)

  it('sets arg and ... exactly as lua5.4 does', function()
    local script = sh.tempfile [[
      local t = {}
      for i = -3, #arg do t[#t + 1] = i .. '=' .. tostring(arg[i]) end
      print(table.concat(t, ' '))
      print(select('#', ...), ...)
    ]]
    local out = sh.host_run('-W ' .. q(script) .. ' a "b c" -e')
    local ref = sh.run('lua5.4 -W ' .. q(script) .. ' a "b c" -e')
    os.remove(script)
    local host_pattern = sh.host:gsub('%p', '%%%0')  -- a path is not a pattern
    assert.are.equal(ref:gsub('lua5%.4', 'HOST'), out:gsub(host_pattern, 'HOST'))
    assert.matches('0=' .. script, out, 1, true)
    assert.matches('3\ta\tb c\t%-e', out)
  end)

  it('runs -e chunks in order, before the script', function()
    local script = sh.tempfile 'print("script", x)'
    local out = sh.host_run("-e 'x = 1' -e 'x = x + 1; print(x)' " .. q(script))
    os.remove(script)
    assert.are.equal('2\nscript\t2\n', out)
  end)

  it('loads libraries with -l mod and -l g=mod', function()
    local out = sh.host_run("-l string -l s=string -e 'print(s == string, string.rep(\"x\", 2))'")
    assert.are.equal('true\txx\n', out)
    local _, err, code = sh.host_run("-l no_such_module_here -e 'print(1)'")
    assert.are.equal(1, code)
    assert.matches("module 'no_such_module_here' not found", err, 1, true)
  end)

  it('reads the script from stdin with - and with no script on a pipe', function()
    local out = sh.host_run('- x y', 10, 'print("in", ...)')
    assert.are.equal('in\tx\ty\n', out)
    out = sh.host_run('', 10, 'print("piped")')
    assert.are.equal('piped\n', out)
  end)

  it('stops handling options after --', function()
    local script = sh.tempfile 'print(...)'
    local out = sh.host_run('-- ' .. q(script) .. ' -e')
    os.remove(script)
    assert.are.equal('-e\n', out)
  end)

  it('prints the version with -v and runs the prompt with -i', function()
    local out = sh.host_run('-v')
    assert.matches('^Lua 5%.4', out)
    out = sh.host_run('-i', 10, '1 + 1\nx = 3\nx * 2\n')
    assert.matches('2\n', out, 1, true)
    assert.matches('6\n', out, 1, true)
  end)

  it("names an error of print at the prompt like any error", function()
    -- before: "error calling 'print' ((null))" for a non-string error
    local out, err = sh.host_run('-i', 10, table.concat({
      'print = function() error(setmetatable({}, {__tostring = function() return "obj" end})) end',
      '1', 'print = function() error({}) end', '2', 'print = function() error("s") end', '3' }, '\n'))
    assert.matches('^Lua 5%.4', out)
    assert.are.equal("error calling 'print' (obj)\nerror calling 'print' ((error object is a table value))\n" ..
      "error calling 'print' (stdin:1: s)\n", err)
  end)

  it('continues an unfinished statement at the prompt', function()
    local out = sh.host_run('-i', 10, 'for i = 1, 2 do\nprint(i * 10)\nend\n')
    assert.matches('10\n', out, 1, true)
    assert.matches('20\n', out, 1, true)
  end)

  it('ignores LUA_INIT with -E and runs it without', function()
    local out = sh.run('LUA_INIT="print(\'init\')" ' .. q(sh.host) .. " -e 'print(1)'")
    assert.are.equal('init\n1\n', out)
    out = sh.run('LUA_INIT="print(\'init\')" ' .. q(sh.host) .. " -E -e 'print(1)'")
    assert.are.equal('1\n', out)
  end)

  it('turns warnings on with -W', function()
    local _, err = sh.host_run("-W -e 'warn(\"careful\")'")
    assert.matches('Lua warning: careful', err, 1, true)
    _, err = sh.host_run("-e 'warn(\"careful\")'")
    assert.are.equal('', err)
  end)

  it('reports an uncaught error with host: and a traceback', function()
    local script = sh.tempfile 'local function f() error("boom") end\nf()\n'
    local _, err, code = sh.host_run(q(script))
    os.remove(script)
    assert.are.equal(1, code)
    assert.matches('^' .. P .. ': [^\n]*:1: boom\nstack traceback:\n', err)
    assert.matches("in local 'f'", err, 1, true)
  end)

  it('prints a non-string error with __tostring, or names its type', function()
    local _, err = sh.host_run([[-e 'error(setmetatable({}, {__tostring = function() return "custom!" end}))']])
    assert.matches('^' .. P .. ': custom!\n', err)
    _, err = sh.host_run("-e 'error({})'")
    assert.matches('^' .. P .. ': %(error object is a table value%)', err)
    _, err = sh.host_run("-e 'error(nil)'")
    assert.matches('^' .. P .. ': %(error object is a nil value%)', err)
  end)

  it('refuses unknown options with the usage text and exit 1', function()
    local _, err, code = sh.host_run('-z')
    assert.are.equal(1, code)
    assert.matches("unrecognized option '-z'", err, 1, true)
    assert.matches('usage:', err, 1, true)
    _, err, code = sh.host_run('-e')
    assert.are.equal(1, code)
    assert.matches("'-e' needs argument", err, 1, true)
    _, err, code = sh.host_run('--switch-interval=abc')
    assert.are.equal(1, code)
    assert.matches("--switch-interval must be a number of seconds in (0, 3600], not 'abc'", err, 1, true)
  end)

  -- 13.8: the ranges of thread.setswitchinterval; before, 1e10 seconds
  -- became a negative interval and 4294967297 instructions wrapped to 1.
  it('refuses --switch-* values out of range, naming the option and the range', function()
    for _, v in ipairs { '1e10', '1e400', 'nan', '-nan', 'inf', '-1', '0', '3600.001', '', '1x' } do
      local out, err, code = sh.host_run(q('--switch-interval=' .. v) .. " -e 'print(1)'")
      assert.are.equal(1, code, v)
      assert.are.equal('', out)
      assert.are.equal(sh.host .. (": --switch-interval must be a number of seconds in (0, 3600], not '%s'\n"):format(v), err)
    end
    for _, v in ipairs { '4294967297', '1000000001', '0', '-1', '1.5', '', '99999999999999999999999' } do
      local out, err, code = sh.host_run(q('--switch-instructions=' .. v) .. " -e 'print(1)'")
      assert.are.equal(1, code, v)
      assert.are.equal('', out)
      assert.are.equal(sh.host .. (": --switch-instructions must be an integer in [1, 1000000000], not '%s'\n"):format(v), err)
    end
  end)

  it('takes --switch-* values at the ends of their ranges', function()
    local get = " -e 'print(require(\"host.thread\").getswitchinterval())'"
    local cases = {
      { '--switch-interval=3600', '3600.0\n' },
      { '--switch-interval=1e-6', '1e-06\n' },
      { '--switch-instructions=1', '0.005\t1\n' },
      { '--switch-instructions=1000000000', '0.005\t1000000000\n' },
    }
    for _, c in ipairs(cases) do
      local out, err, code = sh.host_run(c[1] .. get)
      assert.are.equal(0, code, err)
      assert.are.equal(c[2], out, c[1])
    end
  end)

  it('treats odd command lines as lua5.4 does: exit code, output, first error line', function()
    local cases = { "-e", "-e -e", "-el", "-l", "-e x -e", "-e ''", "-z", "-ez", "--x",
                    "-- -e", "- -e", "-E -W", "''", "-e 'error()'", "-e 'os.exit(300)'",
                    "-i -x", "-vx", "-", "-e 'error(\"boom\", 0)'", "-l string -l", "-Wx",
                    "-E -", "-l=string -e 'print(_G[\"\"] == string)'", "-e 'print(...)' -",
                    "-e 'print(#arg, arg[1])' -- - x" }
    for _, args in ipairs(cases) do
      local out, err, code = sh.host_run(args)
      local rout, rerr, rcode = sh.run('lua5.4 ' .. args)
      assert.are.equal(rcode, code, args)
      assert.are.equal(rout, out, args)
      assert.are.equal(rerr:match('^lua5%.4:([^\n]*)'), err:match('^' .. P .. ':([^\n]*)'), args)
    end
  end)

  it('passes a script #arg arguments whatever __len -e gave arg', function()
    -- before: a length of 2^31 + 1 became a negative int (SIGSEGV), -1 an
    -- invalid stack index ("attempt to call a number value")
    local script = sh.tempfile 'print("script", select("#", ...), ...)'
    local function run(len)
      return sh.host_run(q(("arg = setmetatable({'a', 'b'}, {__len = function() return %s end})"):format(len))
        :gsub('^', '-e ') .. ' ' .. q(script) .. ' x')
    end
    for _, len in ipairs { '-5', '-1', 'math.mininteger', '0' } do
      local out, err, code = run(len)
      assert.are.same({ 'script\t0\n', '', 0 }, { out, err, code }, len)
    end
    assert.are.same({ 'script\t3\ta\tb\tnil\n', '', 0 }, { run('3') })
    for _, len in ipairs { '2^31 + 1', '2^40', 'math.maxinteger' } do
      local out, err, code = run(len)
      assert.are.equal(1, code, len)
      assert.are.equal('', out)
      assert.matches('^' .. P .. ': stack overflow %(too many arguments to script%)', err)
    end
    os.remove(script)
  end)

  it('reports a closed stdin for - and for no script, with exit 1', function()
    -- CI runs without a stdin; lua5.4 exits 0 after the same message when
    -- no script is given (it ignores that error), host exits 1
    for _, args in ipairs { '-', '', '-E -' } do
      local out, err, code = sh.host_run(args .. ' <&-')
      assert.are.equal(1, code, args)
      assert.are.equal('', out)
      assert.are.equal(sh.host .. ': cannot read stdin: Bad file descriptor\n', err)
    end
    local out, _, code = sh.host_run('-i <&-')
    assert.are.equal(0, code)
    assert.matches('^Lua 5%.4', out)
  end)

  it('lists every option with --help', function()
    local out, _, code = sh.host_run('--help')
    assert.are.equal(0, code)
    for _, opt in ipairs { '-e stat', '-i', '-l mod', '-l g=mod', '-v', '-E', '-W',
                           '--switch-interval', '--switch-instructions', '--help', '--', '-  ' } do
      assert.matches(opt, out, 1, true)
    end
  end)

  it('preloads the host libraries', function()
    local out = sh.host_run("-e 'print(package.preload[\"host.error\"] ~= nil, require(\"host.error\").new(\"K\", \"m\"))'")
    assert.are.equal('true\tK: m\n', out)
  end)

  it('still loads Debian Lua C modules through package.cpath', function()
    local out, err = sh.host_run("-e 'print(require(\"lfs\")._VERSION ~= nil)'")
    assert.are.equal('true\n', out, err)
  end)

  -- Starts `script` in the background, waits for it to print "ready", sends
  -- SIGINT, and returns its output, stderr and exit code.
  local function interrupt(body)
    local script = sh.tempfile("io.stdout:setvbuf 'no'\nprint 'ready'\n" .. body)
    local out, err = sh.run('o=$(mktemp); ' .. q(sh.host) .. ' ' .. q(script) ..
      ' > "$o" & p=$!; for i in $(seq 200); do grep -q ready "$o" 2>/dev/null && break; sleep 0.05; done;' ..
      ' kill -INT $p; wait $p; echo "rc=$?"; cat "$o"; rm -f "$o"', 15)
    os.remove(script)
    return out, err
  end

  it('turns SIGINT into "interrupted!" inside the script, which can clean up', function()
    local out = interrupt [[
      local ok, e = pcall(function() while true do end end)
      print('caught', e)
    ]]
    assert.matches('rc=0\n', out, 1, true)
    assert.matches('caught\tinterrupted!', out, 1, true)
  end)

  it('reports an uncaught interrupt with exit 1', function()
    local out, err = interrupt 'while true do end'
    assert.matches('rc=1\n', out, 1, true)
    assert.matches(sh.host .. ': interrupted!', err, 1, true)
  end)
end)
