-- spec/cli_spec.lua: the `host` program as lua5.4's lua.c is at the prompt
-- and on the command line (issue 16), its own options, its man page and
-- `make install`.
local sh = require 'spec.support.sh'
local q = sh.quote

-- Errors start with the program's name as it was run (argv[0]).
local P = sh.host:gsub('%p', '%%%0')

-- Runs the prompt (-i) on `input` read from a pipe, with empty prompts
-- unless `args` says otherwise; returns stdout, stderr, exit code.
local function prompt(input, args)
  return sh.host_run((args or [[-e "_PROMPT='' _PROMPT2=''"]]) .. ' -i', 10, input)
end

-- Makes a new temporary directory, removed when the running spec ends
-- (passed or failed), and returns its name.
local function tempdir()
  local dir = sh.run 'mktemp -d':gsub('\n$', '')
  assert(dir:match '^/tmp/', dir)
  finally(function() sh.run('rm -rf ' .. q(dir)) end)
  return dir
end

describe('host at the prompt', function()
  it('prints the value of =expr', function()
    -- before: "return =1+2" was a syntax error
    local out, err = prompt '=1 + 2\n=math.max(4, 5), "x"\n'
    assert.are.equal('', err)
    assert.matches('\n3\n', out, 1, true)
    assert.matches('\n5\tx\n', out, 1, true)
  end)

  it('tries a line as "return <line>;" first, so a call with ; prints nothing', function()
    -- before: "return math.max(1, 2);" printed 2
    local out, err = prompt 'math.max(1, 2);\nmath.max(3, 4)\n'
    assert.are.equal('', err)
    assert.is_nil(out:find('\n2\n', 1, true))
    assert.matches('\n4\n', out, 1, true)
  end)

  it('shows _PROMPT and _PROMPT2 through tostring and echoes lines read from a pipe', function()
    -- before: always "> " and ">> ", and no echo (main.lua's test)
    local set = [[-e "local C = 0; _PROMPT = setmetatable({}, {__tostring = function() ]] ..
      [[C = C + 1; return C end}); _PROMPT2 = setmetatable({}, {__tostring = function() return 'more:' end})"]]
    local out, err = prompt(' --\na = 2\nfor i = 1, 2 do\nend\n', set)
    assert.are.equal('', err)
    assert.matches('1 --\n2a = 2\n3for i = 1, 2 do\nmore:end\n4\n', out, 1, true)
  end)

  it('reports a _PROMPT whose __tostring fails and goes on with the default', function()
    local set = [[-e "_PROMPT = setmetatable({}, {__tostring = function() error('no prompt', 0) end})"]]
    local out, err, code = prompt('print(6 * 7)\n', set)
    assert.are.equal(0, code)
    assert.matches('> print(6 * 7)\n42\n', out, 1, true)
    assert.matches('error in prompt (no prompt)', err, 1, true)
  end)

  it('reads a 5000-character line as one line', function()
    -- before: the line was cut at 4095 characters
    local out, err = prompt('x = "' .. ('a'):rep(5000) .. '"\n#x\n')
    assert.are.equal('', err)
    assert.matches('\n5000\n', out, 1, true)
  end)

  it('edits lines with readline: the up arrow recalls the last line', function()
    -- before: the arrow's escape sequence was compiled ("bad binary format")
    local out = sh.run('TERM=dumb script -qec ' .. q(q(sh.host) .. ' -i') .. ' /dev/null', 10,
                       'print(40 + 2)\n\027[A\n')
    local _, n = out:gsub('\n42\r?\n', '')
    assert.are.equal(2, n, out)
    assert.is_nil(out:find('binary', 1, true), out)
  end)

  it('gives the terminal back when a thread exits while the prompt reads', function()
    -- before: os.exit in another thread left the terminal without echo
    local script = sh.tempfile [[
      local thread = require 'host.thread'
      thread.start(function() thread.sleep(0.3) os.exit(3) end)
    ]]
    local inner = 'stty -a | grep -o -- "-*echo " | head -1; ' .. q(sh.host) .. ' -i ' .. q(script) ..
                  '; echo rc=$?; stty -a | grep -o -- "-*echo " | head -1'
    local out = sh.run('(sleep 3) | TERM=dumb script -qec ' .. q('sh -c ' .. q(inner)) .. ' /dev/null', 20)
    os.remove(script)
    assert.matches('rc=3', out, 1, true)
    local before, after = out:match '^(%-*echo) .*rc=3%s+(%-*echo)'
    assert.are.equal('echo', before, out)
    assert.are.equal('echo', after, out)
  end)

  it('lets other threads run while it waits for a line', function()
    -- before: the prompt read with the GIL held, so the thread never ran
    -- and the shell waited on the FIFO until the time limit
    local dir = tempdir()
    local fifo = dir .. '/f'
    local line = ("t = require'host.thread'.start(function() local f = io.open(%q, 'w') " ..
                  "f:write('x') f:close() end)"):format(fifo)
    local out = sh.run(('mkfifo %s && { echo %s; read l < %s; echo "print(\'joined\', t:join(5))"; } | %s -i')
      :format(q(fifo), q(line), q(fifo), q(sh.host)), 10)
    assert.matches('joined\ttrue\n', out, 1, true)
  end)

  it('prints errors with lua.c\'s message handler, without a program name', function()
    local out, err = prompt(table.concat({
      'error(42)',
      'error(setmetatable({}, {__tostring = function() return "obj" end}))',
      'error({})', '' }, '\n'))
    assert.matches('\n\n$', out)
    -- before: a number had no traceback, and __tostring got one
    assert.are.equal('42\nstack traceback:\n\t[C]: in function \'error\'\n\tstdin:1: in main chunk\n\t[C]: in ?\n' ..
      'obj\n' ..
      '(error object is a table value)\nstack traceback:\n\t[C]: in function \'error\'\n\tstdin:1: in main chunk\n\t[C]: in ?\n',
      err)
  end)
end)

describe('host on the command line', function()
  it('takes LUA_PATH and LUA_CPATH without ";;" as the whole path, as lua5.4 does', function()
    -- Lua 5.4.4's testes/main.lua checks this; host's own module entries
    -- go only where the user's path keeps the defaults (";;")
    local out, err, code = sh.run('LUA_INIT= LUA_PATH=x LUA_CPATH=xuxu ' .. q(sh.host)
      .. [[ -e 'print(package.path) print(package.cpath)']])
    assert.are.equal(0, code, err)
    assert.are.equal('x\nxuxu\n', out)
    out = sh.run('LUA_INIT= LUA_PATH_5_4=y LUA_PATH=x ' .. q(sh.host) .. [[ -e 'print(package.path)']])
    assert.are.equal('y\n', out)
  end)

  it('starts error messages with argv[0], as lua.c does', function()
    -- before: always "host: "
    local dir = tempdir()
    local link = dir .. '/my-lua'
    sh.run('ln -s ' .. q(sh.host) .. ' ' .. q(link))
    local _, err, code = sh.run(q(link) .. [[ -e 'error("boom")']])
    local _, uerr = sh.run(q(link) .. ' -z')
    assert.are.equal(1, code)
    assert.matches('^' .. link:gsub('%p', '%%%0') .. ': %(command line%):1: boom\nstack traceback:\n', err)
    assert.matches('usage: ' .. link, uerr, 1, true)
    local _, perr = sh.host_run([[-e 'error("x", 0)']])
    assert.matches('^' .. P .. ': x\n', perr)
  end)

  it('gives a number error a traceback, a __tostring object its string alone', function()
    -- before: error(42) had no traceback; a __tostring object got one
    local _, err = sh.host_run "-e 'error(42)'"
    assert.matches('^' .. P .. ': 42\nstack traceback:\n', err)
    _, err = sh.host_run [[-e 'error(setmetatable({}, {__tostring = function() return "custom!" end}))']]
    assert.are.equal(sh.host .. ': custom!\n', err)
    _, err = sh.host_run [[-e 'error(setmetatable({}, {__tostring = function() error("again") end}))']]
    assert.matches('^' .. P .. ': %(error object is a table value%)\nstack traceback:\n', err)
    _, err = sh.host_run [[-e 'error(require("host.error").new("K", "m"))']]
    assert.matches('^' .. P .. ': K: m\nstack traceback:\n', err)
    -- main.lua: __tostring runs at the level lua.c runs it
    local script = sh.tempfile [[
m = setmetatable({}, {__tostring = function() return tostring(debug.getinfo(4).currentline) end})
error(m)
]]
    _, err = sh.host_run(q(script))
    os.remove(script)
    assert.are.equal(sh.host .. ': 2\n', err)
  end)

  it('prints exactly lua5.4\'s line for -v', function()
    -- before: "... PUC-Rio (host)"
    local ref = sh.run 'lua5.4 -v'
    assert.are.equal(ref, (sh.host_run '-v'))
    assert.are.equal(ref .. 'hello\n', (sh.host_run [[-v -e"print'hello'"]]))
  end)

  it('prints its own version for --version, as require("host").version', function()
    -- before: --version was an unknown option, and there was no "host" module
    local out, err, code = sh.host_run '--version'
    assert.are.equal(0, code, err)
    local version = out:match '^host (%d+%.%d+[%w.]*)\n'
    assert.truthy(version, out)
    assert.are.equal('host ' .. version .. '\n' .. sh.run 'lua5.4 -v', out)
    assert.are.equal(version .. '\n', (sh.host_run [[-e 'print(require "host".version)']]))
  end)

  it('--help lists the options, the environment variables and the documentation', function()
    -- before: no environment, no --version, no word of the man page
    local out, _, code = sh.host_run '--help'
    assert.are.equal(0, code)
    for _, s in ipairs { '-e stat', '-i', '-l mod', '-l g=mod', '-v', '-E', '-W', '--  ', '-  ',
                         '--switch-interval S', '--switch-instructions N', '--version', '--help',
                         'LUA_INIT_5_4', 'LUA_INIT ', 'LUA_PATH_5_4', 'LUA_PATH ', 'LUA_CPATH_5_4',
                         'LUA_CPATH ', 'INPUTRC', 'man host', 'README' } do
      assert.matches(s, out, 1, true)
    end
    -- -h stays an unknown option, as in lua5.4 (main.lua checks it), and
    -- the usage that follows lists the same
    local out2, err2, code2 = sh.host_run '-h'
    assert.are.same({ '', 1 }, { out2, code2 })
    assert.are.equal(sh.host .. ": unrecognized option '-h'\n" .. out, err2)
  end)

  it('takes --switch-* values after a space as after =', function()
    -- before: "0.25" became the script's name
    local get = [[ -e 'print(require("host.thread").getswitchinterval())']]
    assert.are.same({ '0.25\n', '', 0 }, { sh.host_run('--switch-interval 0.25' .. get) })
    assert.are.same({ '0.005\t1000\n', '', 0 }, { sh.host_run('--switch-instructions 1000' .. get) })
    local script = sh.tempfile 'print(require("host.thread").getswitchinterval(), ...)'
    assert.are.same({ '0.5\ta\n', '', 0 }, { sh.host_run('--switch-interval 0.5 ' .. q(script) .. ' a') })
    os.remove(script)
    local out, err, code = sh.host_run '--switch-interval 0 -e "print(1)"'
    assert.are.same({ '', 1 }, { out, code })
    assert.are.equal(sh.host .. ": --switch-interval must be a number of seconds in (0, 3600], not '0'\n", err)
    for _, opt in ipairs { '--switch-interval', '--switch-instructions' } do
      out, err, code = sh.host_run(opt)
      assert.are.same({ '', 1 }, { out, code })
      assert.matches('^' .. P .. ": '" .. opt:gsub('%p', '%%%0') .. "' needs argument\nusage:", err)
    end
    out, err, code = sh.host_run '--switch-intervals=1'
    assert.are.same({ '', 1 }, { out, code })
    assert.matches('^' .. P .. ": unrecognized option '%-%-switch%-intervals=1'\n", err)
  end)
end)

describe('the man page', function()
  it('renders without warnings and names every option and module', function()
    -- plain ASCII, no bold or underline, one line per paragraph, no hyphenation
    local out, err, code = sh.run 'groff -man -Tascii -P-cbou -rLL=500n -rHY=0 -ww host/host.1'
    assert.are.same({ '', 0 }, { err, code })
    for _, s in ipairs { '-e stat', '-i', '-l mod', '-l g=mod', '-v', '-E', '-W', '--switch-interval S',
                         '--switch-instructions N', '--version', '--help', 'EXIT STATUS', 'ENVIRONMENT',
                         'LUA_INIT_5_4', 'LUA_PATH', 'LUA_CPATH', 'INPUTRC', 'DIFFERENCES FROM LUA5.4',
                         'host.thread', 'host.queue', 'host.futures', 'host.generator', 'host.serialize',
                         'host.time', 'host.error', 'bind9-host', 'readline' } do
      assert.matches(s, out, 1, true)
    end
  end)
end)

describe('make install', function()
  it('installs the man page, warns of another host on PATH, and uninstall leaves nothing', function()
    -- before: no man page, no warning, and uninstall left bin/, lib/...
    local dir = tempdir()
    local prefix = dir .. '/h'
    sh.run('mkdir ' .. q(dir .. '/other') .. ' && printf "#!/bin/sh\\n" > ' .. q(dir .. '/other/host') ..
           ' && chmod +x ' .. q(dir .. '/other/host'))
    local build = sh.host:match '^(.*)/host$'
    local make = 'env -u MAKEFLAGS -u MAKELEVEL -u MFLAGS make -s BUILD=' .. q(build) ..
                 ' PREFIX=' .. q(prefix) .. ' '
    local out, err, code = sh.run('PATH=' .. q(dir .. '/other:' .. prefix .. '/bin:/usr/bin:/bin') ..
                                  ' ' .. make .. 'install', 60)
    assert.are.equal(0, code, err)
    assert.matches('warning: ' .. dir .. '/other/host comes first on PATH', out, 1, true)
    local man = assert(io.open(prefix .. '/share/man/man1/host.1')):read 'a'
    assert.are.equal(assert(io.open 'host/host.1'):read 'a', man)
    assert.are.equal(0, select(3, sh.run(q(prefix .. '/bin/host') .. ' -e "assert(require(\'host\').version)"')))
    -- host.mpi (the module or the stub) and host.mpi.run are found under the prefix, no LUA_PATH needed
    out, err, code = sh.run('env -u LUA_PATH_5_4 -u LUA_CPATH_5_4 -u LUA_PATH -u LUA_CPATH ' .. q(prefix .. '/bin/host')
      .. [[ -e 'print(package.searchpath("host.mpi.run", package.path))
print(package.searchpath("host.mpi", package.cpath) or package.searchpath("host.mpi", package.path))']])
    assert.are.equal(0, code, err)
    local run, mod = out:match '^([^\n]*)\n([^\n]*)\n$'
    assert.are.equal(prefix .. '/share/lua/5.4/host/mpi/run.lua', run)
    assert.is_true(mod == prefix .. '/lib/lua/5.4/host/mpi.so' or mod == prefix .. '/share/lua/5.4/host/mpi.lua', mod)
    out = sh.run('PATH=' .. q(prefix .. '/bin:' .. dir .. '/other:/usr/bin:/bin') .. ' ' .. make .. 'install', 60)
    assert.matches('warning: ' .. prefix .. '/bin/host hides ' .. dir .. '/other/host on PATH', out, 1, true)
    _, err, code = sh.run(make .. 'uninstall', 60)
    assert.are.equal(0, code, err)
    local left = sh.run('find ' .. q(dir) .. ' | sort')
    assert.are.equal(dir .. '\n' .. dir .. '/other\n' .. dir .. '/other/host\n', left)
  end)

  it('refuses a PREFIX with a blank, which would remove other files', function()
    -- before: `make uninstall PREFIX="<dir>/victim x"` ran `rm -f <dir>/victim x/bin/host ...`
    local dir = tempdir()
    assert(io.open(dir .. '/victim', 'w')):close()
    local build = sh.host:match '^(.*)/host$'
    for _, target in ipairs { 'uninstall', 'install' } do
      local _, err, code = sh.run('env -u MAKEFLAGS -u MAKELEVEL -u MFLAGS make -s BUILD=' .. q(build) ..
                                  ' PREFIX=' .. q(dir .. '/victim x') .. ' ' .. target, 60)
      assert.are_not.equal(0, code)
      assert.matches('must not contain blanks', err, 1, true)
    end
    assert.are.equal(dir .. '\n' .. dir .. '/victim\n', sh.run('find ' .. q(dir) .. ' | sort'))
  end)
end)
