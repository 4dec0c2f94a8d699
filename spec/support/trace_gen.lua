-- spec/support/trace_gen.lua: traces in the format of TRACE_FORMAT.md, made
-- up for the specs of host.trace.svg (spec/trace_svg_spec.lua).
--   gen.encode(trace_table) -> JSON text (a small encoder for the fixtures)
--   gen.pingpong(n, options) -> JSON text of about n events: `threads` lanes
--     of one process pass the GIL round-robin (switch request, hand-off, a
--     wait on a Lock between turns), a process-pool worker runs tasks, a
--     counter and marks; every B has its E. Returns the text and the counts
--     of what it wrote (gil, waits, tasks, switch, handoff, marks).
local gen = {}

local function encode_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return ({ ['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\t'] = '\\t' })[c] or ('\\u%04x'):format(c:byte())
  end) .. '"'
end

-- JSON of plain values: arrays are tables with [1] (or the empty gen.array).
gen.array = setmetatable({}, { __name = 'empty array' })
function gen.encode(v)
  local t = type(v)
  if t == 'string' then return encode_string(v)
  elseif t == 'number' then
    if math.type(v) == 'integer' then return tostring(v) end
    return ('%.17g'):format(v)
  elseif t == 'boolean' then return tostring(v)
  elseif t == 'table' then
    if v == gen.array then return '[]' end
    local parts = {}
    if v[1] ~= nil then
      for i, x in ipairs(v) do parts[i] = gen.encode(x) end
      return '[' .. table.concat(parts, ',') .. ']'
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys)
    for i, k in ipairs(keys) do parts[i] = encode_string(k) .. ':' .. gen.encode(v[k]) end
    return '{' .. table.concat(parts, ',') .. '}'
  end
  error('cannot encode ' .. t)
end

function gen.pingpong(n, o)
  o = o or {}
  local threads, pid, wpid = o.threads or 4, 4242, 4243
  local out, counts = {}, { gil = 0, waits = 0, tasks = 0, switch = 0, handoff = 0, marks = 0 }
  local function ev(s) out[#out + 1] = s end
  local fmt = string.format
  ev(fmt('{"ph":"M","name":"process_name","pid":%d,"tid":0,"args":{"name":"host gen.lua"}}', pid))
  ev(fmt('{"ph":"M","name":"process_name","pid":%d,"tid":0,"args":{"name":"process-pool worker 1"}}', wpid))
  ev(fmt('{"ph":"M","name":"thread_name","pid":%d,"tid":1,"args":{"name":"process-pool worker 1"}}', wpid))
  for t = 1, threads do
    ev(fmt('{"ph":"M","name":"thread_name","pid":%d,"tid":%d,"args":{"name":"thread %d"}}', pid, t, t))
  end
  local ts, holder, step, task, in_task = 1000.0, 1, 0, 0, false
  local waiting = {}
  while #out < n do
    step = step + 1
    if waiting[holder] then
      ev(fmt('{"ph":"E","cat":"wait","name":"wait host.Lock \\"L\\"","pid":%d,"tid":%d,"ts":%.3f,"args":{"timed_out":false}}',
        pid, holder, ts))
      waiting[holder] = nil
    end
    ev(fmt('{"ph":"B","cat":"gil","name":"GIL","pid":%d,"tid":%d,"ts":%.3f}', pid, holder, ts))
    counts.gil = counts.gil + 1
    ts = ts + (o.slice or 5)
    ev(fmt('{"ph":"i","s":"t","cat":"switch","name":"switch request","pid":%d,"tid":%d,"ts":%.3f}', pid, holder, ts))
    counts.switch = counts.switch + 1
    ts = ts + 0.5
    local to = holder % threads + 1
    ev(fmt('{"ph":"i","s":"t","cat":"switch","name":"hand-off","pid":%d,"tid":%d,"ts":%.3f,"args":{"to":%d}}',
      pid, holder, ts, to))
    counts.handoff = counts.handoff + 1
    ev(fmt('{"ph":"E","cat":"gil","name":"GIL","pid":%d,"tid":%d,"ts":%.3f}', pid, holder, ts))
    ev(fmt('{"ph":"B","cat":"wait","name":"wait host.Lock \\"L\\"","pid":%d,"tid":%d,"ts":%.3f,"args":{"object":"host.Lock \\"L\\""}}',
      pid, holder, ts))
    counts.waits = counts.waits + 1
    waiting[holder] = true
    if step % 5 == 0 then
      if in_task then
        ev(fmt('{"ph":"E","cat":"task","name":"task #%d","pid":%d,"tid":1,"ts":%.3f,"args":{"outcome":"ok"}}', task, wpid, ts))
      end
      task = task + 1
      ev(fmt('{"ph":"B","cat":"task","name":"task #%d","pid":%d,"tid":1,"ts":%.3f,"args":{"future":%d,"pool":"ProcessPool"}}',
        task, wpid, ts, task))
      counts.tasks = counts.tasks + 1
      in_task = true
    end
    if step % 50 == 0 then
      ev(fmt('{"ph":"C","name":"queue","pid":%d,"tid":1,"ts":%.3f,"args":{"value":%d}}', pid, ts, step % 7))
    end
    if step % 1000 == 0 then
      ev(fmt('{"ph":"i","s":"t","cat":"mark","name":"step %d","pid":%d,"tid":1,"ts":%.3f,"args":{}}', step, pid, ts))
      counts.marks = counts.marks + 1
    end
    holder = to
  end
  if in_task then
    ev(fmt('{"ph":"E","cat":"task","name":"task #%d","pid":%d,"tid":1,"ts":%.3f,"args":{"outcome":"ok"}}', task, wpid, ts))
  end
  for t = 1, threads do
    if waiting[t] then
      ev(fmt('{"ph":"E","cat":"wait","name":"wait host.Lock \\"L\\"","pid":%d,"tid":%d,"ts":%.3f,"args":{"timed_out":true}}',
        pid, t, ts))
    end
  end
  counts.events = #out
  return '{"traceEvents":[\n' .. table.concat(out, ',\n') .. '\n],"displayTimeUnit":"ms",'
    .. '"otherData":{"program":"host","version":"test","dropped_events":0}}\n', counts
end

return gen
