-- spec/support/io_cases.lua: runs the standard library's blocking io and os
-- calls through every format, error and end-of-file path, and prints what
-- each returned or raised. spec/iowrap_spec.lua runs it under lua5.4 and
-- under host: the two outputs must be identical.
local dir = assert(arg[1], 'usage: io_cases.lua TMPDIR')
local name = dir .. '/cases.txt'
local out = {}

-- Prints the results (or the error) of f(...), one line per case.
local function show(label, f, ...)
  local r = table.pack(pcall(f, ...))
  local parts = {}
  for i = 1, r.n do
    local v = r[i]
    if io.type(v) then v = io.type(v) end
    parts[#parts + 1] = type(v) == 'string' and ('%q'):format(v) or tostring(v)
  end
  out[#out + 1] = label .. ': ' .. table.concat(parts, ' ')
end

local function write(text)
  local f = assert(io.open(name, 'wb'))
  f:write(text)
  f:close()
end

write '12 0x1F -3.5e2 .5 abc\nline2\n\nlast\0with nul'
local f = assert(io.open(name, 'rb'))
show('numbers', f.read, f, 'n', 'n', 'n', 'n', 'n')
show('after bad number', f.read, f, 'l')
show('l L', f.read, f, 'l', 'L')
show('counts', f.read, f, 0, 2, 100)
show('at eof', f.read, f, 0)
show('at eof l', f.read, f, 'l')
show('at eof a', f.read, f, 'a', 'a')
show('at eof n', f.read, f, 'n')
show('at eof count', f.read, f, 3)
f:seek('set', 0)
show('compat *l *n', f.read, f, '*l', '*a')
f:seek('set', 0)
show('no format', f.read, f)
show('bad format', f.read, f, 'x')
show('bad format after one', f.read, f, 'l', 'q')
show('bad type', f.read, f, {})
show('bad count', f.read, f, 1.5)
show('method bad format', function() return f:read('l', 'x') end)
show('method bad type', function() return f:read(true) end)
show('method bad self', function() return f.read(io) end)
show('method lines bad self', function() return f.lines(1) end)
show('not a file', f.read, nil)
show('not a file either', f.read, io)
f:close()
show('closed', f.read, f)
show('closed lines', f.lines, f)
show('closed method', function() return f:read 'a' end)

write(('9'):rep(250) .. '\n' .. ('x'):rep(5000) .. '\n')
f = assert(io.open(name, 'rb'))
show('too long numeral', f.read, f, 'n')
f:seek('set', 0)
f:read 'l'
local long = f:read 'L'
show('long line', function() return #long, long:sub(-2) end)
f:close()

write 'a\nbb\nccc'
io.input(name)
show('io.read', io.read, 'L', 'l', 'n')
show('io.read again', io.read)
io.input():close()
show('io.read closed', io.read)
io.input(io.stdin)

local lines = {}
for l in io.lines(name, 'L') do lines[#lines + 1] = l end
show('io.lines L', function() return table.concat(lines, '|') end)
lines = {}
for a, b in io.lines(name, 1, 'l') do lines[#lines + 1] = a .. '/' .. tostring(b) end
show('io.lines 1 l', function() return table.concat(lines, '|') end)
show('io.lines results', function()
  local it, s, c, file = io.lines(name)
  local r = { type(it), s, c, io.type(file), it(), it(), it(), it() }
  return r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], io.type(file)
end)
show('io.lines after close', function()
  local it = io.lines(name)
  while it() do end
  return it()
end)
show('io.lines missing', io.lines, dir .. '/no/such/file')
show('io.lines bad name', io.lines, {})
show('io.lines too many', io.lines, name, table.unpack((function()
  local t = {} for i = 1, 251 do t[i] = 'l' end return t end)()))
show('io.lines bad format', function() for l in io.lines(name, 'z') do end end)
f = assert(io.open(name))
lines = {}
for l in f:lines() do lines[#lines + 1] = l end
show('f:lines', function() return table.concat(lines, '|'), io.type(f) end)
f:seek('set', 0)
show('f:lines n', function() local it = f:lines('n') return it() end)
f:close()
show('f:lines closed later', function()
  local g = assert(io.open(name))
  local it = g:lines()
  g:close()
  return it()
end)

local d = assert(io.open(dir))
show('read a directory', d.read, d, 'l')
show('read a directory a', d.read, d, 'a')
show('read a directory count', d.read, d, 5)
d:close()

local p = io.popen('printf "one\\ntwo\\n"; exit 3')
show('popen read', p.read, p, 'l', 'a')
show('popen close', p.close, p)
p = io.popen('kill -9 $$')
show('popen killed', function() p:read 'a' return p:close() end)
show('popen lines', function()
  local t = {}
  for l in io.popen('printf "a\\nb"'):lines() do t[#t + 1] = l end
  return table.concat(t, ',')
end)
show('popen bad mode', io.popen, 'true', 'rw')
show('popen bad prog', io.popen, {})
p = io.popen('cat > /dev/null', 'w')
show('popen write', function() return io.type(p:write('x')), p:close() end)
show('popen gc close', function()
  local q = io.popen('exit 5')
  return io.type(q)
end)
show('popen closed twice', function()
  local q = io.popen('true')
  q:close()
  return q:close()
end)
show('execute none', os.execute)
show('execute ok', os.execute, 'true')
show('execute code', os.execute, 'exit 7')
show('execute signal', os.execute, 'kill -9 $$')
show('execute bad', os.execute, {})

os.remove(name)
io.write(table.concat(out, '\n'), '\n')
