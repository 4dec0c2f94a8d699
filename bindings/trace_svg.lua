-- host.trace.svg: draws a trace (Chrome's Trace Event Format, the JSON that
-- `host --trace` writes; TRACE_FORMAT.md) as one self-contained SVG
-- timeline: a lane per (pid, tid) grouped by process, the GIL holder as
-- coloured spans, waits hatched and labelled with their object, pool tasks
-- as `#id` spans, switch requests, hand-offs, submits and user marks as
-- marks, counters as step lines, a time axis, a legend and a summary.
--
--   svg.render(json_text_or_table [, options]) -> svg text
--   svg.decode(json_text) -> value        (the strict JSON reader it uses)
--   svg.null                              (what JSON null decodes to)
--
-- options: width (pixels, default 1200), title, from / to (microseconds
-- since the first event: the time window), max_bytes (output cap, default
-- 2 000 000). Spans narrower than a pixel are merged into their lane's
-- coverage; when the output would exceed max_bytes, wider ones are merged
-- too (the picture says so). The module stands alone: the host embeds this
-- file into its binary (bindings/trace_svg.c).
local M = {}

local byte, char, find, sub, format = string.byte, string.char, string.find, string.sub, string.format
local concat, sort = table.concat, table.sort
local floor, ceil, huge = math.floor, math.ceil, math.huge
local setmetatable, getmetatable, type, tostring, tonumber, pairs, next, error, pcall =
  setmetatable, getmetatable, type, tostring, tonumber, pairs, next, error, pcall
local ulen, uchar, uoffset = utf8.len, utf8.char, utf8.offset

-- Errors the module raises on bad input carry this metatable; render()
-- re-raises their message at its caller's level.
local FAIL = {}
local function fail(msg) error(setmetatable({ msg = 'host.trace.svg: ' .. msg }, FAIL), 0) end

-- What JSON null decodes to: a unique, empty, read-only table.
local NULL = setmetatable({}, { __name = 'json.null', __tostring = function() return 'null' end,
                                __newindex = function() error('json.null is read-only', 2) end })
M.null = NULL

---------------------------------------------------------------------------
-- JSON reader (RFC 8259, strict): no comments, no trailing commas, no
-- NaN; strings must not hold raw control characters. \u escapes become
-- UTF-8; a lone surrogate becomes U+FFFD. Errors name line, column, byte.
---------------------------------------------------------------------------

local MAX_DEPTH = 500

-- Raises "malformed JSON at line L, column C (byte B): what, got X".
local function json_error(s, at, what)
  local line, last = 1, 0
  for nl in sub(s, 1, at - 1):gmatch '()\n' do line, last = line + 1, nl end
  local c = byte(s, at)
  local got
  if not c then got = 'the end of the input'
  elseif c >= 32 and c < 127 then got = "'" .. char(c) .. "'"
  else got = format('byte 0x%02X', c) end
  fail(format('malformed JSON at line %d, column %d (byte %d): %s, got %s', line, at - last, at, what, got))
end

local ESCAPES = { [34] = '"', [92] = '\\', [47] = '/', [98] = '\b', [102] = '\f', [110] = '\n',
                  [114] = '\r', [116] = '\t' }
local STRING_STOP = '["\\%z\1-\31]'

-- The string whose opening quote is at i; returns it and the index after.
local function decode_string(s, i)
  local j = i + 1
  local k = find(s, STRING_STOP, j)
  if not k then json_error(s, #s + 1, 'unterminated string') end
  if byte(s, k) == 34 then return sub(s, j, k - 1), k + 1 end
  local parts, n = {}, 0
  while true do
    local c = byte(s, k)
    n = n + 1
    parts[n] = sub(s, j, k - 1)
    if c == 34 then return concat(parts), k + 1 end
    if c ~= 92 then json_error(s, k, 'raw control character in a string') end
    local e = byte(s, k + 1)
    if ESCAPES[e] then
      n = n + 1
      parts[n] = ESCAPES[e]
      j = k + 2
    elseif e == 117 then
      local hex = s:match('^%x%x%x%x', k + 2)
      if not hex then json_error(s, k, 'bad \\u escape (4 hex digits expected)') end
      local cp = tonumber(hex, 16)
      j = k + 6
      if cp >= 0xD800 and cp <= 0xDBFF then
        local lo = s:match('^\\u([Dd][C-Fc-f]%x%x)', j)
        if lo then
          cp = 0x10000 + (cp - 0xD800) * 0x400 + (tonumber(lo, 16) - 0xDC00)
          j = j + 6
        else
          cp = 0xFFFD
        end
      elseif cp >= 0xDC00 and cp <= 0xDFFF then
        cp = 0xFFFD
      end
      n = n + 1
      parts[n] = uchar(cp)
    else
      json_error(s, k + 1, 'bad escape in a string')
    end
    k = find(s, STRING_STOP, j)
    if not k then json_error(s, #s + 1, 'unterminated string') end
  end
end

-- The number at i, checked digit by digit (the slow path, which also
-- names what is wrong); returns it and the index after.
local function decode_number_strict(s, i)
  local j = i
  if byte(s, j) == 45 then j = j + 1 end
  local c = byte(s, j)
  if c == 48 then
    j = j + 1
  elseif c and c >= 49 and c <= 57 then
    local _, e = find(s, '^%d*', j + 1)
    j = e + 1
  else
    json_error(s, j, 'a digit expected')
  end
  if byte(s, j) == 46 then
    local _, e = find(s, '^%d+', j + 1)
    if not e then json_error(s, j + 1, 'a digit expected after the decimal point') end
    j = e + 1
  end
  c = byte(s, j)
  if c == 101 or c == 69 then
    j = j + 1
    c = byte(s, j)
    if c == 43 or c == 45 then j = j + 1 end
    local _, e = find(s, '^%d+', j)
    if not e then json_error(s, j, 'a digit expected in the exponent') end
    j = e + 1
  end
  return tonumber(sub(s, i, j - 1)), j
end

-- The number at i; returns it and the index after. The fast path takes a
-- token of number characters and refuses what JSON refuses and tonumber
-- accepts (a leading zero, a point without digits after it).
local function decode_number(s, i)
  local _, e, tok = find(s, '^(-?%d+%.?%d*[eE]?[-+]?%d*)', i)
  local v = tok and tonumber(tok)
  if v and byte(tok, #tok) ~= 46 and not find(tok, '^%-?0%d') and not find(tok, '%.[eE]') then
    return v, e + 1
  end
  return decode_number_strict(s, i)
end

local decode_value
local BLANK = '[^ \t\n\r]'
local KEY = '^"([^"\\%z\1-\31]*)"[ \t\n\r]*:'
local PLAIN = '^"([^"\\%z\1-\31]*)"'

-- The index of the first non-blank character at or after i (#s + 1 if none).
local function skip(s, i)
  return find(s, BLANK, i) or #s + 1
end

-- The object whose '{' is at i.
local function decode_object(s, i, depth)
  local obj = {}
  i = i + 1
  if (byte(s, i) or 33) <= 32 then i = skip(s, i) end
  if byte(s, i) == 125 then return obj, i + 1 end
  while true do
    local _, e, key = find(s, KEY, i)
    if key then
      i = e + 1
    else
      if byte(s, i) ~= 34 then json_error(s, i, 'a string key expected in an object') end
      key, i = decode_string(s, i)
      i = skip(s, i)
      if byte(s, i) ~= 58 then json_error(s, i, "':' expected after an object key") end
      i = i + 1
    end
    local v
    v, i = decode_value(s, i, depth)
    obj[key] = v
    local c = byte(s, i)
    if c and c <= 32 then
      i = skip(s, i)
      c = byte(s, i)
    end
    if c == 44 then
      i = i + 1
      if (byte(s, i) or 33) <= 32 then i = skip(s, i) end
    elseif c == 125 then
      return obj, i + 1
    else
      json_error(s, i, "',' or '}' expected in an object")
    end
  end
end

-- The array whose '[' is at i.
local function decode_array(s, i, depth)
  local arr, n = {}, 0
  i = skip(s, i + 1)
  if byte(s, i) == 93 then return arr, i + 1 end
  while true do
    local v
    v, i = decode_value(s, i, depth)
    n = n + 1
    arr[n] = v
    local c = byte(s, i)
    if c and c <= 32 then
      i = skip(s, i)
      c = byte(s, i)
    end
    if c == 44 then
      i = i + 1
    elseif c == 93 then
      return arr, i + 1
    else
      json_error(s, i, "',' or ']' expected in an array")
    end
  end
end

-- The value at or after i (blanks skipped); returns it and the index after.
function decode_value(s, i, depth)
  local c = byte(s, i)
  if c and c <= 32 then
    i = skip(s, i)
    c = byte(s, i)
  end
  if c == 34 then
    local _, e, plain = find(s, PLAIN, i)
    if plain then return plain, e + 1 end
    return decode_string(s, i)
  elseif c == 45 or (c and c >= 48 and c <= 57) then
    return decode_number(s, i)
  elseif c == 123 or c == 91 then
    if depth >= MAX_DEPTH then json_error(s, i, format('nesting deeper than %d levels', MAX_DEPTH)) end
    if c == 123 then return decode_object(s, i, depth + 1) end
    return decode_array(s, i, depth + 1)
  elseif c == 116 and sub(s, i, i + 3) == 'true' then
    return true, i + 4
  elseif c == 102 and sub(s, i, i + 4) == 'false' then
    return false, i + 5
  elseif c == 110 and sub(s, i, i + 3) == 'null' then
    return NULL, i + 4
  end
  json_error(s, i, 'a JSON value expected')
end

-- Decodes one JSON text; raises a message naming the position on bad input.
local function decode(s)
  local v, i = decode_value(s, 1, 0)
  i = skip(s, i)
  if i <= #s then json_error(s, i, 'the end of the input expected after the JSON value') end
  return v
end

function M.decode(s)
  if type(s) ~= 'string' then
    error(format("bad argument #1 to 'decode' (string expected, got %s)", type(s)), 2)
  end
  local ok, v = pcall(decode, s)
  if ok then return v end
  if getmetatable(v) == FAIL then error(v.msg, 2) end
  error(v, 0)
end

---------------------------------------------------------------------------
-- Text for SVG: valid UTF-8 (bad bytes become U+FFFD), no control
-- characters (they become blanks: XML 1.0 refuses most of them), escaped.
---------------------------------------------------------------------------

local XML_ESCAPES = { ['&'] = '&amp;', ['<'] = '&lt;', ['>'] = '&gt;', ['"'] = '&quot;', ["'"] = '&#39;' }

-- s made valid UTF-8 without control characters, not yet escaped.
local function clean(s)
  if type(s) ~= 'string' then s = tostring(s) end
  if not ulen(s) then
    local parts, n, i = {}, 0, 1
    while true do
      local _, bad = ulen(s, i)
      if not _ then
        n = n + 1
        parts[n] = sub(s, i, bad - 1) .. '\u{FFFD}'
        i = bad + 1
      else
        n = n + 1
        parts[n] = sub(s, i)
        break
      end
    end
    s = concat(parts)
  end
  return (s:gsub('[%z\1-\31]', ' '):gsub('\239\191[\190\191]', '\u{FFFD}'))
end

-- s escaped for an SVG text node or attribute.
local function esc(s)
  return (clean(s):gsub('[&<>"\']', XML_ESCAPES))
end

-- A clean string cut to at most n characters, with an ellipsis if cut.
local function truncate(s, n)
  local len = ulen(s)
  if len <= n then return s end
  if n < 1 then return '' end
  return sub(s, 1, uoffset(s, n) - 1) .. '…'
end

-- A duration in microseconds, with a unit a person reads at once.
local function dur(us)
  local v, unit = us, 'µs'
  if us >= 1e6 then v, unit = us / 1e6, 's'
  elseif us >= 1e3 then v, unit = us / 1e3, 'ms' end
  local a = v < 0 and -v or v
  if a >= 1e6 then return format('%.3g %s', v, unit) end
  if a >= 100 or v == floor(v) then return format('%.0f %s', v, unit) end
  if a >= 10 then return format('%.1f %s', v, unit) end
  return format('%.2f %s', v, unit)
end

-- A number for an SVG attribute.
local function px(x) return format('%.1f', x) end

---------------------------------------------------------------------------
-- The model: processes, lanes, their spans, instants and counters.
---------------------------------------------------------------------------

-- A pid or tid as a string key (numbers and strings; else nil).
local function id_of(v)
  local t = type(v)
  if t == 'number' then
    if v == floor(v) and v > -2 ^ 63 and v < 2 ^ 63 then return format('%d', v) end
    return tostring(v)
  elseif t == 'string' then
    return v
  end
end

-- A finite number or nil.
local function finite(v)
  if type(v) == 'number' and v == v and v ~= huge and v ~= -huge then return v end
end

local function str(v) if type(v) == 'string' then return v end end

-- The phases it draws (B, E, X, instants, counters) or knows (flows).
local KNOWN_PH = { B = true, E = true, X = true, i = true, I = true, n = true, C = true, s = true, f = true, t = true }

-- Reads the decoded trace into processes with lanes; counts what it skips.
local function build(trace)
  if type(trace) ~= 'table' or trace == NULL then
    fail(format('a trace is a JSON object with "traceEvents" (or an array of events), got %s',
      trace == NULL and 'null' or type(trace)))
  end
  local events, other = trace.traceEvents, trace.otherData
  if events == nil then
    if trace[1] == nil and next(trace) ~= nil then fail('the trace object has no "traceEvents"') end
    events, other = trace, nil
  end
  if type(events) ~= 'table' or events == NULL or (events[1] == nil and next(events) ~= nil) then
    fail('"traceEvents" must be an array of events')
  end
  local m = { procs = {}, nprocs = 0, lanes = {}, nlanes = 0, tmin = huge, tmax = -huge, ignored = 0,
              unmatched = 0, unfinished = 0, gil_starts = {}, counters = 0 }
  if type(other) == 'table' then
    m.dropped = finite(other.dropped_events)
    m.drop_note = str(other.note)
    m.program = str(other.program)
  end
  local procs, lanes = m.procs, m.lanes

  local function proc_of(pid)
    local p = procs[pid]
    if not p then
      m.nprocs = m.nprocs + 1
      p = { pid = pid, order = m.nprocs, lanes = {}, counters = {} }
      procs[pid] = p
    end
    return p
  end
  local function lane_of(pid, tid)
    local key = pid .. '\0' .. tid
    local l = lanes[key]
    if not l then
      m.nlanes = m.nlanes + 1
      l = { pid = pid, tid = tid, order = m.nlanes, stack = {}, gil = {}, wait = {}, task = {}, other = {},
            run = {}, inst = {} }
      lanes[key] = l
      local p = proc_of(pid)
      p.lanes[#p.lanes + 1] = l
    end
    return l
  end

  -- A finished span goes to its lane's list for its category.
  local function close(l, b, ts, eargs, unfinished)
    local cat = b.cat
    local list = cat == 'gil' and l.gil or cat == 'wait' and l.wait or cat == 'task' and l.task
      or cat == 'thread' and l.run or l.other
    if ts < b.ts then ts = b.ts end
    list[#list + 1] = { b.ts, ts, b.name, b.args, eargs, unfinished }
    if cat == 'gil' then
      local g = m.gil_starts
      g[#g + 1] = { b.ts, l }
    end
  end

  for idx = 1, #events do
    local ev = events[idx]
    local ph = type(ev) == 'table' and ev.ph
    if ph == 'M' then
      local pid, args = id_of(ev.pid), ev.args
      if pid and type(args) == 'table' then
        local name = ev.name
        if name == 'process_name' and str(args.name) then
          proc_of(pid).name = args.name
        elseif name == 'process_sort_index' and finite(args.sort_index) then
          proc_of(pid).sort = args.sort_index
        elseif name == 'thread_name' and id_of(ev.tid) and str(args.name) then
          lane_of(pid, id_of(ev.tid)).name = args.name
        elseif name == 'thread_sort_index' and id_of(ev.tid) and finite(args.sort_index) then
          lane_of(pid, id_of(ev.tid)).sort = args.sort_index
        end
      else
        m.ignored = m.ignored + 1
      end
    else
      local ts, pid, tid = finite(type(ev) == 'table' and ev.ts), ph and id_of(ev.pid), ph and id_of(ev.tid)
      if not (ts and pid and tid and KNOWN_PH[ph]) then
        m.ignored = m.ignored + 1
      else
        if ts < m.tmin then m.tmin = ts end
        if ts > m.tmax then m.tmax = ts end
        local l = lane_of(pid, tid)
        if ph == 'B' then
          local st = l.stack
          st[#st + 1] = { ts = ts, name = str(ev.name), cat = str(ev.cat), args = ev.args }
        elseif ph == 'E' then
          local st = l.stack
          local b = st[#st]
          if b then
            st[#st] = nil
            close(l, b, ts, ev.args)
          else
            m.unmatched = m.unmatched + 1
          end
        elseif ph == 'X' then
          local d = finite(ev.dur) or 0
          if ts + d > m.tmax then m.tmax = ts + d end
          close(l, { ts = ts, name = str(ev.name), cat = str(ev.cat), args = ev.args }, ts + d, ev.args)
        elseif ph == 'i' or ph == 'I' or ph == 'n' then
          local cat, name = ev.cat, str(ev.name) or ''
          local kind
          if cat == 'switch' then
            kind = name == 'hand-off' and 'hand-off' or 'switch-request'
          elseif cat == 'task' then
            kind = 'submit'
          elseif cat ~= 'thread' then
            kind = 'mark'
          end
          if kind then
            local inst = l.inst
            inst[#inst + 1] = { ts, kind, name, ev.args }
          end
        elseif ph == 'C' then
          local args = ev.args
          if type(args) == 'table' then
            local p = proc_of(pid)
            for k, v in pairs(args) do
              v = finite(v)
              if v then
                local cname = (str(ev.name) or 'counter') .. (k == 'value' and '' or '.' .. tostring(k))
                local c = p.counters[cname]
                if not c then
                  c = { name = cname }
                  p.counters[cname] = c
                  m.counters = m.counters + 1
                end
                c[#c + 1] = { ts, v }
              end
            end
          end
        end
      end
    end
  end
  if m.tmin > m.tmax then m.tmin, m.tmax = 0, 0 end
  -- A B without its E is drawn to the end of the trace.
  for _, l in pairs(lanes) do
    local st = l.stack
    for i = #st, 1, -1 do
      close(l, st[i], m.tmax, nil, true)
      m.unfinished = m.unfinished + 1
    end
    l.stack = nil
  end
  return m
end

---------------------------------------------------------------------------
-- Drawing.
---------------------------------------------------------------------------

local LANE_COLORS = { '#4e79a7', '#f28e2b', '#59a14f', '#76b7b2', '#edc948', '#ff9da7', '#9c755f', '#bab0ac' }
local TASK = '#b07aa1'
local RED = '#e15759'
local MARK = '#7b3294'
local LABEL_W, RIGHT = 200, 40
local LANE_H, PROC_H, COUNTER_H = 40, 22, 30
-- Bands of a lane, as offsets from its top.
local TASK_Y, TASK_H, ACT_Y, ACT_H, OTHER_Y, OTHER_H = 3, 10, 15, 18, 35, 3
local CHAR_W = 6.2 -- the width of a character at font-size 10, roughly
-- pixels of lanes at most: librsvg refuses a picture taller than 32767
local LANES_MAX_H = 30000
local NAME_MAX = 120 -- characters of a name, object or label kept for tooltips

-- s cut to NAME_MAX characters and escaped.
local function short(s) return esc(truncate(clean(s), NAME_MAX)) end

-- Ticks of a time axis: a step of 1, 2 or 5 times a power of ten so that
-- about `n` ticks fit in `span`, the unit (µs, ms, s) that suits the
-- largest label `last`, its divisor, and the decimals the labels need.
local function ticks(span, n, last)
  local raw = span / n
  local p = 10 ^ floor(math.log(raw, 10))
  local step = p * 10
  for _, k in ipairs { 1, 2, 5 } do
    if p * k >= raw then step = p * k break end
  end
  local unit, div = 'µs', 1
  if last >= 1e6 then unit, div = 's', 1e6 elseif last >= 1e3 then unit, div = 'ms', 1e3 end
  local decimals = math.max(0, -floor(math.log(step / div, 10) + 1e-9))
  return step, unit, div, decimals
end

local KNOWN_OPTIONS = { width = true, title = true, from = true, to = true, max_bytes = true }

-- Checks the options; returns them as a table with defaults.
local function options_of(o)
  if o == nil then o = {} end
  if type(o) ~= 'table' then
    error(format("bad argument #2 to 'render' (table expected, got %s)", type(o)), 3)
  end
  for k in pairs(o) do
    if not KNOWN_OPTIONS[k] then
      error(format("bad argument #2 to 'render' (unknown option '%s')", clean(tostring(k))), 3)
    end
  end
  local function number(k, lo, hi)
    local v = o[k]
    if v == nil then return nil end
    if not finite(v) or v < lo or v > hi then
      error(format("bad argument #2 to 'render' (option '%s' must be a number in [%s, %s], got %s)",
        k, tostring(lo), tostring(hi), clean(tostring(v))), 4)
    end
    return v
  end
  local r = {
    width = floor(number('width', 400, 100000) or 1200),
    from = number('from', 0, huge),
    to = number('to', 0, huge),
    max_bytes = floor(number('max_bytes', 20000, 1e9) or 2e6),
  }
  if o.title ~= nil and type(o.title) ~= 'string' then
    error(format("bad argument #2 to 'render' (option 'title' must be a string, got %s)", type(o.title)), 3)
  end
  r.title = o.title
  if r.from and r.to and r.from >= r.to then
    error(format("bad argument #2 to 'render' (option 'from' (%s) must be less than 'to' (%s))",
      tostring(r.from), tostring(r.to)), 3)
  end
  return r
end

-- The ordered processes and, in each, its ordered lanes and counters.
local function layout_order(m)
  local procs = {}
  for _, p in pairs(m.procs) do procs[#procs + 1] = p end
  local function by_sort(a, b)
    local sa, sb = a.sort or huge, b.sort or huge
    if sa ~= sb then return sa < sb end
    return a.order < b.order
  end
  sort(procs, by_sort)
  for _, p in ipairs(procs) do
    sort(p.lanes, by_sort)
    local cs = {}
    for _, c in pairs(p.counters) do cs[#cs + 1] = c end
    sort(cs, function(a, b) return a.name < b.name end)
    p.counter_list = cs
  end
  return procs
end

-- Draws the spans of `list` on a lane: spans at least `minw` pixels wide one
-- by one (draw_one), narrower ones merged into their coverage of cells
-- `minw` pixels wide, drawn as runs of cells shaded by the share of time
-- covered (merged gets x0, x1, the shade in quarters, the count). Returns
-- how many spans were merged.
local function draw_spans(out, list, ctx, minw, draw_one, merged)
  local X, wa, wb, L = ctx.X, ctx.wa, ctx.wb, ctx.L
  local cw = minw < 1 and 1 or minw
  local cov, cnt, nmerged = nil, nil, 0
  for i = 1, #list do
    local sp = list[i]
    local s, e = sp[1], sp[2]
    if e >= wa and s <= wb then
      if s < wa then s = wa end
      if e > wb then e = wb end
      local x1, x2 = X(s), X(e)
      if x2 - x1 >= minw then
        draw_one(out, sp, x1, x2)
      else
        if not cov then cov, cnt = {}, {} end
        nmerged = nmerged + 1
        local c = floor((x1 - L) / cw)
        local mid = floor(((x1 + x2) / 2 - L) / cw)
        cnt[mid] = (cnt[mid] or 0) + 1
        cov[c] = cov[c] or 0
        while L + c * cw < x2 do
          local cs = L + c * cw
          local a, b = x1 > cs and x1 or cs, x2 < cs + cw and x2 or cs + cw
          cov[c] = (cov[c] or 0) + (b - a)
          c = c + 1
        end
      end
    end
  end
  if not cov then return 0 end
  -- Runs of cells with the same shade (a quarter of coverage each).
  local last = ceil(ctx.PW / cw)
  local run_start, run_level, run_count = nil, nil, 0
  local function flush(c)
    if run_start then
      local x0, x1 = L + run_start * cw, L + c * cw
      if x0 < L then x0 = L end
      if x1 > L + ctx.PW then x1 = L + ctx.PW end
      if x1 - x0 < 1 then x1 = x0 + 1 end
      merged(out, x0, x1, run_level, run_count)
    end
    run_start = nil
  end
  for c = -1, last do
    local v = cov[c]
    if v then
      v = v / cw
      if v > 1 then v = 1 end
      local level = ceil(v * 4)
      if level < 1 then level = 1 end
      if run_start and level ~= run_level then flush(c) end
      if not run_start then run_start, run_level, run_count = c, level, 0 end
      run_count = run_count + (cnt[c] or 0)
    else
      flush(c)
    end
  end
  flush(last + 1)
  return nmerged
end

-- Instants of a lane: one mark each, or one per `minw` (at least 6)
-- pixels where they crowd (its title says how many). draw_mark gets the
-- instant, its x, how many it stands for, and the room to the next mark of
-- the same kind (for a label). Returns how many instants were merged.
local function draw_instants(out, l, ctx, minw, draw_mark)
  local X, wa, wb = ctx.X, ctx.wa, ctx.wb
  local buckets, order, nmerged = {}, {}, 0
  local width = minw < 6 and 6 or minw
  for i = 1, #l.inst do
    local it = l.inst[i]
    local ts = it[1]
    if ts >= wa and ts <= wb then
      local key = it[2] .. '\0' .. floor(X(ts) / width)
      local b = buckets[key]
      if b then
        b.n = b.n + 1
        nmerged = nmerged + (b.n == 2 and 2 or 1)
      else
        b = { it = it, n = 1, x = X(ts) }
        buckets[key] = b
        order[#order + 1] = b
      end
    end
  end
  sort(order, function(a, b) if a.x ~= b.x then return a.x < b.x end return a.it[2] < b.it[2] end)
  local next_x = {}
  for i = #order, 1, -1 do
    local b = order[i]
    b.room = (next_x[b.it[2]] or ctx.L + ctx.PW + RIGHT) - b.x
    next_x[b.it[2]] = b.x
  end
  for _, b in ipairs(order) do draw_mark(out, b.it, b.x, b.n, b.room) end
  return nmerged
end

-- Renders the lanes of every process into `out` with merge threshold
-- `minw`; stops (and says how many lanes it left out) past `budget` bytes
-- or LANES_MAX_H pixels. Returns the byte count, the number of merged
-- spans, lanes left out, the bottom y, and whether the height stopped it.
local function draw_lanes(m, procs, ctx, minw, budget)
  local out, bytes, merged_total, left_out, tall = {}, 0, 0, 0, false
  local X, t0 = ctx.X, ctx.t0
  local y = ctx.top
  local function at(ts) return dur(ts - t0) end
  local full = false
  local ys, links = {}, {} -- each drawn lane's y; hand-offs to link
  -- Keeps what was drawn into out since `start` if it fits the budget and
  -- returns the next y; else drops it, and every lane after it.
  local function fits(start, y0, h, lane)
    local add = 0
    for i = start + 1, #out do add = add + #out[i] + 1 end
    local low = y0 + h - ctx.top <= LANES_MAX_H
    if bytes + add <= budget and low then
      bytes = bytes + add
      if lane then ys[lane] = y0 end
      return y0 + h
    end
    tall = not low
    for i = #out, start + 1, -1 do out[i] = nil end
    full, left_out = true, left_out + 1
    return y0
  end
  for _, p in ipairs(procs) do
    local pname = truncate(clean(p.name or ('pid ' .. p.pid)), NAME_MAX)
    if full then goto next_process end
    out[#out + 1] = format('<g class="process" data-pid="%s"><text class="process-name" x="8" y="%s" '
      .. 'font-weight="bold" font-size="13">%s</text><path d="M8 %sH%s" stroke="#999"/></g>',
      esc(p.pid), px(y + 15), esc(truncate(clean(pname) .. ' (pid ' .. clean(p.pid) .. ')', 80)),
      px(y + PROC_H - 1), px(ctx.W - RIGHT))
    y = y + PROC_H
    for li, l in ipairs(p.lanes) do
      if full then
        left_out = left_out + 1
      else
        local start = #out
        local color = LANE_COLORS[(li - 1) % #LANE_COLORS + 1]
        local lname = truncate(clean(l.name or ('tid ' .. l.tid)), NAME_MAX)
        local who = esc(lname)
        out[#out + 1] = format('<g class="lane" id="ts-lane-%d" data-pid="%s" data-tid="%s" data-name="%s" '
          .. 'data-gil="%d" data-waits="%d" data-tasks="%d" data-instants="%d">',
          l.order, esc(l.pid), esc(l.tid), who, #l.gil, #l.wait, #l.task, #l.inst)
        out[#out + 1] = format('<rect x="0" y="%s" width="%d" height="%d" fill="%s"/>', px(y), ctx.W, LANE_H,
          li % 2 == 0 and '#f7f7f7' or '#ffffff')
        local held = l.held / ctx.span * 100
        out[#out + 1] = format('<text class="lane-name" x="14" y="%s" font-size="12">%s<title>%s (pid %s, '
          .. 'tid %s)</title></text><text class="lane-info" x="14" y="%s" font-size="10" fill="#666">tid %s'
          .. ' · GIL %s %%</text>', px(y + 17), esc(truncate(lname, 28)), who, esc(l.pid), esc(l.tid),
          px(y + 31), esc(truncate(clean(l.tid), 12)), held >= 10 and format('%.0f', held) or format('%.1f', held))
        -- The thread's lifetime.
        merged_total = merged_total + draw_spans(out, l.run, ctx, 0, function(o, sp, x1, x2)
          o[#o + 1] = format('<rect class="run" x="%s" y="%s" width="%s" height="%d" fill="#e8edf3">'
            .. '<title>%s ran %s (from %s)</title></rect>', px(x1), px(y + ACT_Y - 1), px(x2 - x1), ACT_H + 2,
            who, dur(sp[2] - sp[1]), at(sp[1]))
        end, function() end)
        -- Waits, hatched, under the GIL spans.
        local labels = {}
        merged_total = merged_total + draw_spans(out, l.wait, ctx, minw, function(o, sp, x1, x2)
          local args, eargs = type(sp[4]) == 'table' and sp[4] or {}, type(sp[5]) == 'table' and sp[5] or {}
          local object = truncate(clean(str(args.object) or (sp[3] or 'wait'):gsub('^wait ', '')), NAME_MAX)
          local timed_out = eargs.timed_out == true
          o[#o + 1] = format('<rect class="wait%s" x="%s" y="%s" width="%s" height="%d" fill="url(#ts-hatch)" '
            .. 'stroke="%s" stroke-width="%s"><title>%s waited on %s for %s (from %s)%s%s</title></rect>',
            timed_out and ' timed-out' or '', px(x1), px(y + ACT_Y), px(x2 - x1), ACT_H,
            timed_out and RED or color, timed_out and '1.5' or '0.8', who, esc(object), dur(sp[2] - sp[1]),
            at(sp[1]), timed_out and ', timed out' or (eargs.timed_out == false and ', not timed out' or ''),
            sp[6] and ', no end in the trace (drawn to its end)' or '')
          local fit = floor((x2 - x1 - 6) / CHAR_W)
          if fit >= 4 then
            labels[#labels + 1] = format('<text class="wait-label" x="%s" y="%s" font-size="10" fill="#222" '
              .. 'stroke="#fff" stroke-width="3" paint-order="stroke">%s</text>', px(x1 + 3), px(y + ACT_Y + 13),
              esc(truncate(object, fit)))
          end
        end, function(o, c0, c1, level, n)
          o[#o + 1] = format('<rect class="wait merged" x="%s" y="%s" width="%s" height="%d" fill="#999" '
            .. 'fill-opacity="%.2f"><title>%d waits merged (%s to %s)</title></rect>', px(c0), px(y + ACT_Y + ACT_H / 2),
            px(c1 - c0), ACT_H // 2, level * 0.2, n, at(ctx.T(c0)), at(ctx.T(c1)))
        end)
        -- The GIL holder.
        merged_total = merged_total + draw_spans(out, l.gil, ctx, minw, function(o, sp, x1, x2)
          o[#o + 1] = format('<rect class="gil" x="%s" y="%s" width="%s" height="%d" fill="%s"><title>%s held '
            .. 'the GIL %s (from %s)%s</title></rect>', px(x1), px(y + ACT_Y), px(x2 - x1), ACT_H, color, who,
            dur(sp[2] - sp[1]), at(sp[1]), sp[6] and ', no end in the trace (drawn to its end)' or '')
        end, function(o, c0, c1, level, n)
          o[#o + 1] = format('<rect class="gil merged" x="%s" y="%s" width="%s" height="%d" fill="%s" '
            .. 'fill-opacity="%.2f"><title>%s: %d GIL spans merged (%s to %s), held about %d %% of it</title></rect>',
            px(c0), px(y + ACT_Y), px(c1 - c0), ACT_H, color, level * 0.25, who, n, at(ctx.T(c0)), at(ctx.T(c1)), level * 25)
        end)
        for i = 1, #labels do out[#out + 1] = labels[i] end
        -- Pool tasks.
        merged_total = merged_total + draw_spans(out, l.task, ctx, minw, function(o, sp, x1, x2)
          local args, eargs = type(sp[4]) == 'table' and sp[4] or {}, type(sp[5]) == 'table' and sp[5] or {}
          local id = id_of(args.future)
          local label = truncate(clean(id and ('#' .. id) or (sp[3] or 'task'):gsub('^task ', '')), NAME_MAX)
          local outcome = str(eargs.outcome)
          o[#o + 1] = format('<rect class="task" x="%s" y="%s" width="%s" height="%d" fill="%s" fill-opacity="0.35" '
            .. 'stroke="%s"><title>task %s%s ran %s on %s (from %s)%s%s</title></rect>', px(x1), px(y + TASK_Y),
            px(x2 - x1), TASK_H, TASK, outcome and outcome ~= 'ok' and RED or TASK, esc(label),
            str(args.pool) and (' (' .. short(args.pool) .. ')') or '', dur(sp[2] - sp[1]), who, at(sp[1]),
            outcome and (', outcome ' .. short(outcome)) or '', sp[6] and ', no end in the trace (drawn to its end)' or '')
          local fit = floor((x2 - x1 - 4) / (CHAR_W * 0.9))
          if fit >= ulen(label) then
            o[#o + 1] = format('<text class="task-label" x="%s" y="%s" font-size="9" fill="#4a2a45">%s</text>',
              px(x1 + 2), px(y + TASK_Y + 8.5), esc(label))
          end
        end, function(o, c0, c1, level, n)
          o[#o + 1] = format('<rect class="task merged" x="%s" y="%s" width="%s" height="%d" fill="%s" '
            .. 'fill-opacity="%.2f"><title>%s: %d tasks merged (%s to %s)</title></rect>', px(c0), px(y + TASK_Y),
            px(c1 - c0), TASK_H, TASK, level * 0.2, who, n, at(ctx.T(c0)), at(ctx.T(c1)))
        end)
        -- Coroutines and other spans: a thin strip.
        merged_total = merged_total + draw_spans(out, l.other, ctx, minw, function(o, sp, x1, x2)
          o[#o + 1] = format('<rect class="other" x="%s" y="%s" width="%s" height="%d" fill="#555"><title>%s: %s '
            .. '%s (from %s)</title></rect>', px(x1), px(y + OTHER_Y), px(x2 - x1), OTHER_H, who,
            short(sp[3] or 'span'), dur(sp[2] - sp[1]), at(sp[1]))
        end, function(o, c0, c1, level, n)
          o[#o + 1] = format('<rect class="other merged" x="%s" y="%s" width="%s" height="%d" fill="#555" '
            .. 'fill-opacity="%.2f"><title>%d spans merged</title></rect>', px(c0), px(y + OTHER_Y), px(c1 - c0), OTHER_H,
            level * 0.25, n)
        end)
        -- Marks.
        merged_total = merged_total + draw_instants(out, l, ctx, minw, function(o, it, x, n, room)
          local kind, name, args = it[2], truncate(clean(it[3]), NAME_MAX), type(it[4]) == 'table' and it[4] or {}
          local many = n > 1 and format(' (%d merged here)', n) or ''
          local cls = n > 1 and (kind .. ' merged') or kind
          if kind == 'switch-request' then
            o[#o + 1] = format('<path class="%s" d="M%s %sl-%s -%sh%sz" fill="%s"><title>switch request to %s at %s%s'
              .. '</title></path>', cls, px(x), px(y + ACT_Y + 2), n > 1 and '2' or '4', n > 1 and '3' or '6',
              n > 1 and '4' or '8', RED, who, at(it[1]), many)
          elseif kind == 'hand-off' then
            local to = id_of(args.to)
            local target = to and m.lanes[l.pid .. '\0' .. to]
            local tname = target and (target.name or ('tid ' .. to)) or (to and ('tid ' .. to)) or '?'
            if n == 1 and target and target ~= l then links[#links + 1] = { x, l, target } end
            o[#o + 1] = format('<path class="%s" d="%s" stroke="#222" stroke-width="%s" fill="none"><title>hand-off: '
              .. '%s gave the GIL to %s at %s%s</title></path>', cls, n > 1
              and format('M%s %sv4', px(x), px(y + ACT_Y + ACT_H - 4))
              or format('M%s %sv%dm0 0l4 -4m-4 4l-4 -4', px(x), px(y + ACT_Y - 2), ACT_H + 4),
              n > 1 and '1' or '1.5', who, short(tname), at(it[1]), many)
          elseif kind == 'submit' then
            o[#o + 1] = format('<path class="%s" d="M%s %sl4 4l-4 4l-4 -4z" fill="%s" stroke="#fff" stroke-width="0.5">'
              .. '<title>%s by %s%s at %s%s</title></path>', cls, px(x), px(y + TASK_Y), TASK, esc(name), who,
              str(args.pool) and (' to ' .. short(args.pool)) or '', at(it[1]), many)
          else
            o[#o + 1] = format('<g class="%s"><path d="M%s %sv%d" stroke="%s" stroke-width="1.5" '
              .. 'stroke-dasharray="3 2"/><title>mark %s on %s at %s%s</title></g>', cls, px(x), px(y + 1),
              LANE_H - 2, MARK, esc(name), who, at(it[1]), many)
            local fit = math.min(24, floor((room - 6) / (CHAR_W * 0.9)))
            if n == 1 and name ~= '' and fit >= math.min(ulen(name), 6) then
              o[#o + 1] = format('<text class="mark-label" x="%s" y="%s" font-size="9" fill="%s" stroke="#fff" '
                .. 'stroke-width="3" paint-order="stroke">%s</text>', px(x + 3), px(y + TASK_Y + 8.5), MARK,
                esc(truncate(name, fit)))
            end
          end
        end)
        out[#out + 1] = '</g>'
        y = fits(start, y, LANE_H, l)
      end
    end
    for _, c in ipairs(p.counter_list) do
      if full then
        left_out = left_out + 1
      else
        local start = #out
        local lo, hi = huge, -huge
        for i = 1, #c do
          local v = c[i][2]
          if v < lo then lo = v end
          if v > hi then hi = v end
        end
        if hi <= lo then hi = lo + 1 end
        local function Y(v) return y + COUNTER_H - 4 - (v - lo) / (hi - lo) * (COUNTER_H - 8) end
        -- A step line: per column (a pixel, or `minw` when merging) its
        -- first, lowest, highest and last value.
        local d, lastx, lasty, cols = {}, nil, nil, {}
        for i = 1, #c do
          local ts, v = c[i][1], c[i][2]
          local x = ts < ctx.wa and ctx.L or X(ts)
          if ts <= ctx.wb then
            local col = floor(x / (minw < 1 and 1 or minw))
            local k = cols[#cols]
            if k and k.col == col then
              if v < k.lo then k.lo = v end
              if v > k.hi then k.hi = v end
              k.last = v
            else
              cols[#cols + 1] = { col = col, x = x, first = v, lo = v, hi = v, last = v }
            end
          end
        end
        for _, k in ipairs(cols) do
          if lasty then d[#d + 1] = format('H%sV%s', px(k.x), px(Y(k.first))) else
            d[#d + 1] = format('M%s %s', px(k.x), px(Y(k.first)))
          end
          if k.lo ~= k.hi then d[#d + 1] = format('V%sV%s', px(Y(k.lo)), px(Y(k.hi))) end
          d[#d + 1] = format('V%s', px(Y(k.last)))
          lastx, lasty = k.x, Y(k.last)
        end
        if lasty and lastx < ctx.L + ctx.PW then d[#d + 1] = format('H%s', px(ctx.L + ctx.PW)) end
        out[#out + 1] = format('<g class="counter-lane" data-name="%s"><text class="counter-name" x="14" y="%s" '
          .. 'font-size="11" fill="#555">%s</text><text x="14" y="%s" font-size="9" fill="#888">%s … %s</text>'
          .. '<path class="counter" d="%s" stroke="#333" stroke-width="1.2" fill="none"><title>counter %s: %d values '
          .. 'from %s to %s</title></path></g>', short(c.name), px(y + 13), esc(truncate(clean(c.name), 30)),
          px(y + 25), esc(format('%.6g', lo)), esc(format('%.6g', hi)), concat(d), short(c.name), #c,
          esc(format('%.6g', lo)), esc(format('%.6g', hi)))
        y = fits(start, y, COUNTER_H)
      end
    end
    ::next_process::
  end
  -- A hand-off links the lane that gave the GIL to the one that took it.
  for _, k in ipairs(links) do
    local y1, y2 = ys[k[2]], ys[k[3]]
    if y1 and y2 then
      local down = y2 > y1
      local link = format('<path class="hand-off-link" d="M%s %sV%s" stroke="#222" stroke-opacity="0.45" '
        .. 'stroke-dasharray="2 2" fill="none"/>', px(k[1]), px(down and y1 + ACT_Y + ACT_H + 2 or y1 + ACT_Y - 2),
        px(down and y2 + ACT_Y or y2 + ACT_Y + ACT_H))
      if bytes + #link + 1 > budget then break end
      out[#out + 1] = link
      bytes = bytes + #link + 1
    end
  end
  return out, bytes, merged_total, left_out, y, tall
end

-- The legend, from baseline y down; returns its elements and its height.
local function draw_legend(W, y)
  local items = {
    { 'held the GIL', format('<rect x="0" y="-9" width="18" height="10" fill="%s"/>', LANE_COLORS[1]) },
    { 'alive, not holding the GIL', '<rect x="0" y="-10" width="18" height="12" fill="#e8edf3"/>' },
    { 'waits (label: the object)', '<rect x="0" y="-9" width="18" height="10" fill="url(#ts-hatch)" stroke="#888"/>' },
    { 'wait timed out', format('<rect x="0" y="-9" width="18" height="10" fill="url(#ts-hatch)" stroke="%s" '
      .. 'stroke-width="1.5"/>', RED) },
    { 'pool task #id', format('<rect x="0" y="-9" width="18" height="8" fill="%s" fill-opacity="0.35" stroke="%s"/>',
      TASK, TASK) },
    { 'submit', format('<path d="M9 -10l4 4l-4 4l-4 -4z" fill="%s"/>', TASK) },
    { 'switch request', format('<path d="M9 -2l-4 -6h8z" fill="%s"/>', RED) },
    { 'hand-off', '<path d="M9 -11v11m0 0l4 -4m-4 4l-4 -4" stroke="#222" stroke-width="1.5" fill="none"/>' },
    { 'mark', format('<path d="M9 -11v12" stroke="%s" stroke-width="1.5" stroke-dasharray="3 2"/>', MARK) },
    { 'merged: shade = share of time', format('<rect x="0" y="-9" width="18" height="10" fill="%s" '
      .. 'fill-opacity="0.5"/>', LANE_COLORS[1]) },
  }
  local out = { format('<g class="legend" transform="translate(10 %s)">', px(y)) }
  local lx, ly = 0, 0
  for _, it in ipairs(items) do
    local w = 24 + #it[1] * 6 + 16
    if lx > 0 and lx + w > W - 20 then lx, ly = 0, ly + 18 end
    out[#out + 1] = format('<g transform="translate(%s %d)">%s<text x="24" y="0" font-size="10">%s</text></g>',
      px(lx), ly, it[2], esc(it[1]))
    lx = lx + w
  end
  out[#out + 1] = '</g>'
  return out, ly + 18
end

-- The SVG text of a decoded trace.
local function render(trace, opts)
  local m = build(trace)
  local procs = layout_order(m)
  local W = opts.width
  local L, PW = LABEL_W, W - LABEL_W - RIGHT
  local t0 = m.tmin
  local wa, wb = t0 + (opts.from or 0), opts.to and (t0 + opts.to) or m.tmax
  local shown = wb > wa and wb - wa or 0
  if wb <= wa then wb = wa + 1 end
  local span = wb - wa
  if not finite(span) or not finite(wb) or span < (wa < 0 and -wa or wa) * 1e-15 then
    fail(format('cannot draw a time window of %s µs from %s µs', tostring(span), tostring(wa)))
  end
  local ctx = { W = W, L = L, PW = PW, wa = wa, wb = wb, span = span, t0 = t0 }
  ctx.X = function(t) return L + (t - wa) / span * PW end
  ctx.T = function(x) return wa + (x - L) / PW * span end

  -- Per lane: the time it held the GIL in the window; per pid: switches.
  local nlanes = 0
  for _, l in pairs(m.lanes) do
    nlanes = nlanes + 1
    local held = 0
    for i = 1, #l.gil do
      local s, e = l.gil[i][1], l.gil[i][2]
      if s < wa then s = wa end
      if e > wb then e = wb end
      if e > s then held = held + (e - s) end
    end
    l.held = held
  end
  local g = m.gil_starts
  sort(g, function(a, b) if a[1] ~= b[1] then return a[1] < b[1] end return a[2].order < b[2].order end)
  local last_holder, switches = {}, 0
  for i = 1, #g do
    local ts, l = g[i][1], g[i][2]
    if ts >= wa and ts <= wb then
      local prev = last_holder[l.pid]
      if prev and prev ~= l then switches = switches + 1 end
      last_holder[l.pid] = l
    end
  end

  -- Notes above the plot; the lanes are drawn first, to know what to say.
  local notes = {}
  if m.dropped and m.dropped > 0 then
    notes[#notes + 1] = format('the recorder dropped the %d oldest events%s', m.dropped,
      m.drop_note and (': ' .. clean(m.drop_note)) or '')
  end
  if m.unfinished > 0 then
    notes[#notes + 1] = format('%d span%s without an end (B without E): drawn to the end of the trace', m.unfinished,
      m.unfinished == 1 and '' or 's')
  end
  if m.unmatched > 0 then notes[#notes + 1] = format('%d end%s without a begin ignored', m.unmatched,
    m.unmatched == 1 and '' or 's') end
  if m.ignored > 0 then notes[#notes + 1] = format('%d event%s not understood, ignored', m.ignored,
    m.ignored == 1 and '' or 's') end
  if nlanes == 0 and m.counters == 0 then notes[#notes + 1] = 'the trace holds no lanes: nothing to draw' end

  -- Lanes (from y = 0; moved under the header later), merging more until
  -- the picture fits the size cap.
  ctx.top = 0
  local body, bytes, merged, left_out, bottom, tall
  local budget = opts.max_bytes - 10000 - PW * 3
  local minw = 1
  while true do
    body, bytes, merged, left_out, bottom, tall = draw_lanes(m, procs, ctx, minw, budget)
    if (bytes <= budget and (left_out == 0 or tall)) or minw > PW then break end
    minw = minw * 4
  end
  if merged > 0 then
    notes[#notes + 1] = minw == 1 and format('%d spans or marks narrower than a pixel merged: a shaded band '
      .. 'is their coverage', merged) or format('aggregated to fit %d bytes: %d spans or marks narrower than %d '
      .. 'pixels merged, a shaded band is their coverage', opts.max_bytes, merged, minw)
  end
  if left_out > 0 and tall then
    notes[#notes + 1] = format('height cap (%d pixels of lanes) reached: %d lanes not drawn', LANES_MAX_H,
      left_out)
  elseif left_out > 0 then
    notes[#notes + 1] = format('size cap (%d bytes) reached: %d lanes not drawn', opts.max_bytes, left_out)
  end

  local top = 46 + #notes * 15 + 30
  bottom = bottom + top
  local legend, legend_h = draw_legend(W, bottom + 26)
  local H = floor(bottom + 26 + legend_h)
  local out = {}
  local first = procs[1]
  local title = opts.title or ('Schedule of ' .. (first and first.name or m.program or 'a trace'))
  out[#out + 1] = format('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
    .. 'font-family="DejaVu Sans, Arial, sans-serif" font-size="12">', W, H, W, H)
  out[#out + 1] = '<defs><pattern id="ts-hatch" patternUnits="userSpaceOnUse" width="6" height="6" '
    .. 'patternTransform="rotate(45)"><rect width="6" height="6" fill="#f4f4f4"/><path d="M0 0V6" stroke="#b5b5b5" '
    .. 'stroke-width="2.5"/></pattern></defs>'
  out[#out + 1] = format('<rect width="%d" height="%d" fill="white"/>', W, H)
  out[#out + 1] = format('<text class="title" x="10" y="22" font-size="15" font-weight="bold">%s</text>',
    esc(truncate(clean(title), W // 8)))
  -- The summary: window, lanes, switches, each lane's share of the GIL.
  local nthreads = nlanes
  local shares = {}
  for _, p in ipairs(procs) do
    for _, l in ipairs(p.lanes) do
      if l.held > 0 then
        local pct = l.held / span * 100
        shares[#shares + 1] = format('%s %s %%', truncate(clean(l.name or ('tid ' .. l.tid)), 20),
          pct >= 10 and format('%.0f', pct) or format('%.1f', pct))
      end
    end
  end
  local summary = format('%s%s · %d process%s · %d thread%s · %d GIL switch%s', dur(shown),
    (opts.from or opts.to) and format(' (from %s)', dur(wa - t0)) or '', m.nprocs, m.nprocs == 1 and '' or 'es',
    nthreads, nthreads == 1 and '' or 's', switches, switches == 1 and '' or 'es')
  if #shares > 0 then
    local room, list = floor(W / 6.8) - ulen(summary) - 16, {}
    for i, s in ipairs(shares) do
      if ulen(s) + 2 > room then list[#list + 1] = format('… (%d more)', #shares - i + 1) break end
      list[#list + 1] = s
      room = room - ulen(s) - 2
    end
    summary = summary .. ' · GIL held: ' .. concat(list, ', ')
  end
  out[#out + 1] = format('<text class="summary" x="10" y="42" fill="#333">%s</text>', esc(summary))
  for i, n in ipairs(notes) do
    out[#out + 1] = format('<text class="note" x="10" y="%d" font-size="11" fill="#a0522d">%s</text>', 46 + i * 15,
      esc(truncate(n, floor(W / 6.2))))
  end
  -- The axis: ticks along the top, light lines down through the lanes.
  local step, unit, div, decimals = ticks(span, math.max(2, PW // 110), wb - t0)
  local axis_y = top - 6
  out[#out + 1] = format('<g class="axis"><path d="M%d %sH%d" stroke="#444"/>', L, px(axis_y), L + PW)
  local first_tick = ceil((wa - t0) / step - 1e-9)
  for k = first_tick, first_tick + 1000 do
    local tick = k * step
    if not (step > 0) or tick > wb - t0 + step * 1e-9 then break end
    local x = ctx.X(t0 + tick)
    out[#out + 1] = format('<path d="M%s %sV%s" stroke="#e2e2e2"/><path d="M%s %sV%s" stroke="#444"/>'
      .. '<text class="tick" x="%s" y="%s" text-anchor="middle" font-size="10">%s</text>', px(x), px(axis_y),
      px(bottom), px(x), px(axis_y - 4), px(axis_y), px(x), px(axis_y - 7),
      tick == 0 and '0' or format(tick / div >= 1e6 and '%.6g %s' or '%.' .. decimals .. 'f %s', tick / div, unit))
  end
  out[#out + 1] = '</g>'
  out[#out + 1] = format('<g class="lanes" transform="translate(0 %d)">', top)
  for i = 1, #body do out[#out + 1] = body[i] end
  out[#out + 1] = '</g>'
  for i = 1, #legend do out[#out + 1] = legend[i] end
  out[#out + 1] = '</svg>\n'
  return concat(out, '\n')
end

-- render(json_text_or_trace_table [, options]) -> svg text.
function M.render(trace, options)
  local t = type(trace)
  if t ~= 'string' and t ~= 'table' then
    error(format("bad argument #1 to 'render' (JSON text or trace table expected, got %s)", t), 2)
  end
  local opts = options_of(options)
  local ok, svg = pcall(function()
    if t == 'string' then trace = decode(trace) end
    return render(trace, opts)
  end)
  if ok then return svg end
  if getmetatable(svg) == FAIL then error(svg.msg, 2) end
  error(svg, 0)
end

return M
