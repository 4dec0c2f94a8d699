-- spec/readme_spec.lua: the examples of README.md run as written and print
-- what the README says they print.
--
-- Lua blocks. Every fenced block whose info string is exactly `lua` runs on
-- its own, as a script: `HOST_BIN <file>` in a subprocess from the
-- repository's root, stdin /dev/null, at most 20 s. A block is not run when
-- the line right before its fence is exactly `<!-- not run -->` (invisible
-- on GitHub): that marks a list of signatures, which is not Lua, and the
-- spec checks that such a block does not compile (a block that does should
-- run). Other info strings that start with `lua` (```Lua, ```lua-sig...)
-- are refused, so the marker is the only way to skip a block. A run passes
-- when host exits 0, writes nothing to stderr, and its stdout is exactly
-- the lines that the block's `-->` comments show:
--  * The first `-->` on a source line starts an expected output line: the
--    rest of the source line is its text. Expected lines are taken in the
--    order they appear in the block. A statement that prints several lines
--    shows the first on its own line and each further one on a line that
--    holds only a `-->` comment, right below.
--  * Every output line must have its `-->` and every `-->` its output line:
--    a block with no `-->` must print nothing.
--  * Both sides are compared with each run of spaces and tabs made one
--    space and none at either end (print separates values by a tab; the
--    README aligns them with spaces).
--  * `...` in an expected line matches any text of at least one character
--    there: a value that varies from run to run (an ident, an address).
--    So `...` cannot stand for three literal dots in an expected line.
--
-- The C snippet. The one ```c block is written to crc.c in a new temporary
-- directory, and the ```sh block that comes next in the README is run
-- there with `sh -e`, after two replacements: `$(pkg-config --cflags host)`
-- becomes host's headers in this tree (`-I bindings` plus `pkg-config
-- --cflags lua5.4`, what host.pc gives once installed) with `-std=c11 -Wall
-- -Wextra -Werror`, and `host` at the start of a line becomes HOST_BIN.
-- LUA_CPATH and LUA_CPATH_5_4 are unset, so Lua's default package.cpath
-- (which ends with `./?.so`) finds the module. The run passes when it exits
-- 0 and its stdout is the lines its `# prints TEXT` comments show, in order.
local sh = require 'spec.support.sh'
local q = sh.quote

local README = 'README.md'
local LIMIT = 20    -- seconds: the limit of each block's run

-- Reads README.md into an array of lines.
local function readme_lines()
  local f = assert(io.open(README, 'rb'))
  local lines = {}
  for line in f:lines() do lines[#lines + 1] = line end
  f:close()
  return lines
end

-- Splits README.md into its fenced blocks: {info, text, line (of the
-- opening fence), not_run}, in order. Raises on a fence left open.
local function blocks_of(lines)
  local blocks, open = {}, nil
  for i, line in ipairs(lines) do
    if open then
      if line:match '^```%s*$' then
        open.text = table.concat(open.body, '\n') .. '\n'
        blocks[#blocks + 1], open = open, nil
      else
        open.body[#open.body + 1] = line
      end
    else
      local info = line:match '^```%s*(%S*)%s*$'
      if info then
        open = { info = info, line = i, body = {}, not_run = lines[i - 1] == '<!-- not run -->',
                 mpi = lines[i - 1] == '<!-- run by spec/mpi_spec.lua under mpiexec -->' }
      end
    end
  end
  assert(not open, ('%s:%d: a fence is never closed'):format(README, open and open.line or 0))
  return blocks
end

-- One line as compared: runs of blanks made one space, none at the ends.
local function squeeze(s)
  return (s:gsub('[ \t]+', ' '):gsub('^ ', ''):gsub(' $', ''))
end

-- The expected output lines of a Lua block: the text after each `-->`.
local function expected_of(text)
  local want = {}
  for line in text:gmatch '([^\n]*)\n' do
    local shown = line:match '%-%->(.*)$'
    if shown then want[#want + 1] = squeeze(shown) end
  end
  return want
end

-- The lines of `out` (each ended by a newline, the last one maybe not).
local function lines_of(out)
  local got = {}
  for line in out:gmatch '([^\n]*)\n' do got[#got + 1] = line end
  local tail = out:match '[^\n]+$'
  if tail then got[#got + 1] = tail end
  return got
end

-- Does the output line `got` match the expected `want` (where `...` is any
-- text of one character or more)?
local function matches(want, got)
  local parts = {}
  for part in (want .. '...'):gmatch '(.-)%.%.%.' do
    parts[#parts + 1] = part:gsub('%p', '%%%0')
  end
  return squeeze(got):match('^' .. table.concat(parts, '.+') .. '$') ~= nil
end

-- Compares output lines with expected ones; returns nil or a message saying
-- where they first differ, with both in full.
local function compare(want, got)
  for i = 1, math.max(#want, #got) do
    if not (want[i] and got[i] and matches(want[i], got[i])) then
      return ('output line %d: expected %s, got %s\n-- expected:\n%s\n-- got:\n%s'):format(i,
        want[i] and ('%q'):format(want[i]) or 'no more lines',
        got[i] and ('%q'):format(got[i]) or 'no more lines',
        table.concat(want, '\n'), table.concat(got, '\n'))
    end
  end
end

local blocks = blocks_of(readme_lines())

describe('README.md', function()
  describe('conventions of the spec itself', function()
    it('maps -->, blanks and ... as its header says', function()
      assert.are.same({ 'true done 1', 'hi' },
        expected_of('print(t:join(5))   --> true  done  1  \n  x()  -- no output\n   --> hi\n'))
      assert.are.same({}, expected_of('local x = 1 -- a comment\n'))
      assert.is_true(matches('w ... true', 'w\t139780509218496\ttrue'))
      assert.is_false(matches('w ... true', 'w\t\ttrue'))
      assert.is_false(matches('a (b)', 'a b'))
      assert.is_nil(compare({ '1 2' }, { '1\t2' }))
      assert.matches('output line 2: expected no more lines, got "extra"',
        compare({ '1' }, { '1', 'extra' }), 1, true)
      assert.matches('output line 1: expected "1", got no more lines', compare({ '1' }, {}), 1, true)
      assert.are.same({ 'a', '', 'b' }, lines_of 'a\n\nb')
    end)
  end)

  local runs = 0
  for _, b in ipairs(blocks) do
    if b.info == 'lua' and b.mpi then
      it(('compiles the block at line %d (spec/mpi_spec.lua runs it under mpiexec)'):format(b.line), function()
        assert(load(b.text), ('%s:%d: the MPI example does not compile'):format(README, b.line))
      end)
    elseif b.info == 'lua' and b.not_run then
      it(('marks the block at line %d as not run, and it is not Lua'):format(b.line), function()
        assert(not load(b.text), ('%s:%d: a block marked <!-- not run --> compiles: run it'):format(README, b.line))
      end)
    elseif b.info == 'lua' then
      runs = runs + 1
      it(('runs the lua block at line %d and prints what its --> show'):format(b.line), function()
        local out, err, code = sh.host_script(b.text, LIMIT)
        local where = ('%s:%d: '):format(README, b.line)
        assert(code == 0 and err == '',
          ('%sexit %s, stderr:\n%s\nstdout:\n%s'):format(where, tostring(code), err, out))
        local diff = compare(expected_of(b.text), lines_of(out))
        assert(not diff, diff and where .. diff)
      end)
    end
  end

  it('has lua blocks to run, and marks no Lua block any other way', function()
    assert.is_true(runs >= 1)
    for _, b in ipairs(blocks) do
      assert(b.info == 'lua' or not b.info:lower():match '^lua',
        ('%s:%d: ```%s: write ```lua (and <!-- not run --> before it if it is not code)'):format(README, b.line, b.info))
    end
  end)

  it('shows a C module that builds as shown, loads into host and works', function()
    local c, build
    for i, b in ipairs(blocks) do
      if b.info == 'c' then
        assert(not c, 'more than one ```c block: say which one to build')
        c, build = b, blocks[i + 1]
      end
    end
    assert(c, 'no ```c block')
    assert(build and build.info == 'sh', ('%s:%d: the ```c block is not followed by a ```sh block'):format(README, c.line))
    local root = assert(sh.run 'pwd'):match '^(.-)\n$'
    local host = sh.host:sub(1, 1) == '/' and sh.host or root .. '/' .. sh.host
    local script, n = build.text:gsub('%$%(pkg%-config %-%-cflags host%)', function()
      return '-std=c11 -Wall -Wextra -Werror -I' .. q(root .. '/bindings') .. ' $(pkg-config --cflags lua5.4)'
    end)
    assert.are.equal(1, n, 'the build line has no $(pkg-config --cflags host)')
    script, n = ('\n' .. script):gsub('\nhost ', function() return '\n' .. q(host) .. ' ' end)
    assert.is_true(n >= 1, 'the ```sh block runs no host')
    local want = {}
    for shown in build.text:gmatch '# prints ([^\n]*)' do want[#want + 1] = squeeze(shown) end
    assert.is_true(#want >= 1, 'the ```sh block shows no "# prints" output')

    local dir = os.tmpname()
    os.remove(dir)
    assert.are.equal(0, select(3, sh.run('mkdir ' .. q(dir))))
    local f = assert(io.open(dir .. '/crc.c', 'wb'))
    f:write(c.text)
    f:close()
    local out, err, code = sh.run(('cd %s && env -u LUA_CPATH -u LUA_CPATH_5_4 sh -e -c %s'):format(q(dir), q(script)), 60)
    sh.run('rm -rf ' .. q(dir))
    assert(code == 0 and err == '', ('%s:%d: exit %s\n%s\nstderr:\n%s\nstdout:\n%s'):format(README,
      build.line, tostring(code), script, err, out))
    local diff = compare(want, lines_of(out))
    assert(not diff, diff and ('%s:%d: %s'):format(README, build.line, diff))
  end)
end)
