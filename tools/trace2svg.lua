-- tools/trace2svg.lua: draws a trace file as an SVG timeline with the
-- host's own renderer (host.trace.svg), for traces recorded elsewhere or
-- earlier:
--   host tools/trace2svg.lua [options] run.json [run.svg]
-- options: --width=PIXELS --title=TEXT --from=US --to=US (the time window,
-- in microseconds since the first event) --max-bytes=N (the output cap).
-- Without run.svg it writes run.json's name with .svg for .json ("-" for
-- either end: standard input or output). Exits 1 with a message on error.
local svg = require 'host.trace.svg'

local USAGE = 'usage: host tools/trace2svg.lua [--width=PIXELS] [--title=TEXT] [--from=US] [--to=US] '
  .. '[--max-bytes=N] run.json [run.svg]'

local function die(msg)
  io.stderr:write('trace2svg: ', msg, '\n')
  os.exit(1)
end

local options, files = {}, {}
local NUMERIC = { width = 'width', from = 'from', to = 'to', ['max-bytes'] = 'max_bytes' }
for _, a in ipairs(arg) do
  local k, v = a:match '^%-%-([%w-]+)=(.*)$'
  if a == '--help' or a == '-h' then
    print(USAGE)
    os.exit(0)
  elseif k == 'title' then
    options.title = v
  elseif k and NUMERIC[k] then
    options[NUMERIC[k]] = tonumber(v) or die(('--%s wants a number, got %q'):format(k, v))
  elseif a:match '^%-%-?.' then
    die('unknown option ' .. a .. '\n' .. USAGE)
  else
    files[#files + 1] = a
  end
end
if #files < 1 or #files > 2 then die(USAGE) end

local input, output = files[1], files[2]
if not output then
  output = input == '-' and '-' or (input:gsub('%.json$', '') .. '.svg')
end

local text
if input == '-' then
  text = io.stdin:read 'a'
else
  local f, err = io.open(input, 'rb')
  if not f then die(err) end
  text = f:read 'a'
  f:close()
end

local ok, picture = pcall(svg.render, text, options)
if not ok then die(input .. ': ' .. tostring(picture)) end

if output == '-' then
  io.stdout:write(picture)
else
  local f, err = io.open(output, 'wb')
  if not f then die(err) end
  local wrote, werr = f:write(picture)
  local closed, cerr = f:close()
  if not (wrote and closed) then die(output .. ': ' .. tostring(werr or cerr)) end
  io.stderr:write(('trace2svg: wrote %s (%d bytes)\n'):format(output, #picture))
end
