-- spec/trace_svg_spec.lua: host.trace.svg, the renderer of traces
-- (TRACE_FORMAT.md) as SVG timelines, its JSON reader, and
-- tools/trace2svg.lua. Pictures must render with Debian's rsvg-convert;
-- the specs count the elements by their classes.
local svg = require 'host.trace.svg'
local sh = require 'spec.support.sh'
local gen = require 'spec.support.trace_gen'
local q = sh.quote

local count = sh.count  -- matches of a plain string

-- The bytes of a file that must exist.
local function slurp(path)
  return assert(sh.slurp(path), 'cannot read ' .. path)
end

-- Renders the SVG text with rsvg-convert; fails on any error it reports.
local function rsvg(text)
  local path = sh.tempfile(text)
  local png = path .. '.png'
  local _, err, code = sh.run('rsvg-convert ' .. q(path) .. ' -o ' .. q(png), 60)
  os.remove(path)
  local bytes = code == 0 and slurp(png) or ''
  os.remove(png)
  assert(code == 0, 'rsvg-convert failed: ' .. err)
  assert.are.equal('', err)
  assert.are.equal('\137PNG', bytes:sub(1, 4))
end

-- The message of the error that f(...) raises.
local function error_of(f, ...)
  local ok, e = pcall(f, ...)
  assert(not ok, 'expected an error')
  return tostring(e)
end

local function M(pid, tid, name, value, key)
  return { ph = 'M', pid = pid, tid = tid, name = name, args = { [key or 'name'] = value } }
end
local function B(tid, ts, cat, name, args) return { ph = 'B', pid = 100, tid = tid, ts = ts, cat = cat, name = name, args = args } end
local function E(tid, ts, cat, name, args) return { ph = 'E', pid = 100, tid = tid, ts = ts, cat = cat, name = name, args = args } end
local function I(tid, ts, cat, name, args) return { ph = 'i', s = 't', pid = 100, tid = tid, ts = ts, cat = cat, name = name, args = args } end

-- Two threads of one process: main submits task #1, is asked to switch,
-- hands the GIL to the worker and waits on the future; the worker runs the
-- task, marks half way, sets a counter; main takes the GIL back. 1200 µs.
local function two_threads()
  return {
    traceEvents = {
      M(100, 0, 'process_name', 'host script.lua'),
      M(100, 1, 'thread_name', 'main'),
      M(100, 2, 'thread_name', 'worker'),
      B(1, 1000, 'thread', 'run'),
      B(1, 1000, 'gil', 'GIL'),
      I(1, 1100, 'task', 'submit #1', { future = 1, pool = 'ThreadPool' }),
      I(1, 1400, 'switch', 'switch request'),
      I(1, 1500, 'switch', 'hand-off', { to = 2 }),
      E(1, 1500, 'gil', 'GIL'),
      B(1, 1500, 'wait', 'wait host.Future #1', { object = 'host.Future #1' }),
      B(2, 1200, 'thread', 'run'),
      B(2, 1500, 'gil', 'GIL'),
      B(2, 1510, 'task', 'task #1', { future = 1, pool = 'ThreadPool' }),
      I(2, 1700, 'mark', 'half way', gen.array),
      { ph = 'C', pid = 100, tid = 2, ts = 1700, name = 'queue length', args = { value = 3 } },
      { ph = 'C', pid = 100, tid = 2, ts = 1800, name = 'queue length', args = { value = 1 } },
      E(2, 1990, 'task', 'task #1', { outcome = 'ok' }),
      E(2, 2000, 'gil', 'GIL'),
      E(2, 2000, 'thread', 'run'),
      E(1, 2000, 'wait', 'wait host.Future #1', { timed_out = false }),
      B(1, 2000, 'gil', 'GIL'),
      B(1, 2050, 'wait', 'wait host.Lock "L"', { object = 'host.Lock "L"' }),
      E(1, 2150, 'wait', 'wait host.Lock "L"', { timed_out = true }),
      E(1, 2200, 'gil', 'GIL'),
      E(1, 2200, 'thread', 'run'),
    },
    displayTimeUnit = 'ms',
    otherData = { program = 'host', version = 'test', dropped_events = 0 },
  }
end

describe('host.trace.svg', function()
  it('is preloaded from the binary: no file beside it is needed', function()
    local out, err, code = sh.run(('cd / && %s -e %s'):format(q(sh.host), q(
      "package.path = '' package.cpath = '' local s = require 'host.trace.svg' "
      .. "io.write(s.render('{\"traceEvents\":[]}'):sub(1, 5))")))
    assert.are.equal(0, code, err)
    assert.are.equal('<svg ', out)
  end)

  describe('draws', function()
    local text = gen.encode(two_threads())
    local picture = svg.render(text)

    it('a picture rsvg-convert renders', function()
      assert.matches('^<svg ', picture)
      rsvg(picture)
    end)

    it('one lane per thread, named from the metadata, in order, under its process', function()
      assert.are.equal(2, count(picture, '<g class="lane"'))
      local main = picture:find('data-name="main"', 1, true)
      local worker = picture:find('data-name="worker"', 1, true)
      assert.is_truthy(main and worker and main < worker)
      assert.are.equal(1, count(picture, '<g class="process"'))
      assert.is_truthy(picture:find('>host script.lua (pid 100)<', 1, true))
    end)

    it('GIL spans, waits, tasks, switch requests, hand-offs, submits, marks, counters', function()
      assert.are.equal(3, count(picture, 'class="gil"'))
      assert.are.equal(1, count(picture, 'class="wait"'))
      assert.are.equal(1, count(picture, 'class="wait timed-out"'))
      assert.are.equal(1, count(picture, 'class="task"'))
      assert.are.equal(1, count(picture, 'class="switch-request"'))
      assert.are.equal(1, count(picture, 'class="hand-off"'))
      assert.are.equal(1, count(picture, 'class="hand-off-link"'))
      assert.are.equal(1, count(picture, 'class="submit"'))
      assert.are.equal(1, count(picture, 'class="mark"'))
      assert.are.equal(1, count(picture, 'class="counter"'))
      assert.are.equal(2, count(picture, 'class="run"'))
      assert.are.equal(0, count(picture, ' merged"'))
    end)

    it('labels waits with their object and tasks with #id; tooltips say the rest', function()
      assert.is_truthy(picture:find('class="wait%-label"[^>]*>host.Future #1<'))
      assert.is_truthy(picture:find('class="task%-label"[^>]*>#1<'))
      assert.is_truthy(picture:find('<title>main waited on host.Future #1 for 500 µs (from 500 µs), not timed out</title>',
        1, true))
      assert.is_truthy(picture:find('<title>main waited on host.Lock &quot;L&quot; for 100 µs (from 1.05 ms), timed out</title>',
        1, true))
      assert.is_truthy(picture:find('<title>task #1 (ThreadPool) ran 480 µs on worker (from 510 µs), outcome ok</title>',
        1, true))
      assert.is_truthy(picture:find('hand-off: main gave the GIL to worker at 500 µs', 1, true))
      assert.is_truthy(picture:find('>half way<', 1, true))
    end)

    it('a summary: duration, threads, GIL switches, each lane\'s share of the GIL', function()
      assert.is_truthy(picture:find('>1.20 ms · 1 process · 2 threads · 2 GIL switches · GIL held: main 58 %, worker 42 %<',
        1, true))
      assert.is_truthy(picture:find('tid 1 · GIL 58 %', 1, true))
    end)

    it('a time axis with nice ticks, and a legend', function()
      for _, t in ipairs { '>0<', '>0.2 ms<', '>0.6 ms<', '>1.2 ms<' } do
        assert.is_truthy(picture:find(t, 1, true), t)
      end
      assert.are.equal(1, count(picture, '<g class="legend"'))
    end)

    it('a decoded trace as well as its JSON text, and the same picture', function()
      assert.are.equal(picture, svg.render(svg.decode(text)))
      assert.are.equal(picture, svg.render(two_threads()))
    end)

    it('a time window and a width', function()
      local w = svg.render(text, { from = 400, to = 750, width = 800, title = 'window' })
      rsvg(w)
      assert.matches('^<svg [^>]*width="800"', w)
      assert.is_truthy(w:find('>window<', 1, true))
      assert.is_truthy(w:find('>350 µs (from 400 µs) ·', 1, true))
      assert.are.equal(2, count(w, 'class="gil"'))     -- main's first, worker's
      assert.are.equal(0, count(w, 'class="submit"'))  -- at 100 µs, outside
      -- nothing drawn right of the plot (800 - 40 pixels of margin)
      for d in w:gmatch 'class="counter" d="([^"]*)"' do
        for x in d:gmatch '[MH](%d+%.?%d*)' do assert.is_true(tonumber(x) <= 760.05, x) end
      end
      for x, width in w:gmatch 'class="[%a-]+" x="([%d.]+)" y="[%d.]+" width="([%d.]+)"' do
        assert.is_true(tonumber(x) + tonumber(width) <= 760.05 and tonumber(x) >= 200, x .. ' ' .. width)
      end
    end)
  end)

  describe('edge cases', function()
    it('an empty trace, in each form', function()
      for _, text in ipairs { '{"traceEvents":[]}', '[]', '{}', ' { "traceEvents" : [ ] } \n' } do
        local picture = svg.render(text)
        rsvg(picture)
        assert.are.equal(0, count(picture, '<g class="lane"'))
        assert.is_truthy(picture:find('the trace holds no lanes: nothing to draw', 1, true))
      end
    end)

    it('a trace with only metadata: its lanes, named and empty', function()
      local picture = svg.render(gen.encode { traceEvents = {
        M(7, 0, 'process_name', 'p'), M(7, 1, 'thread_name', 'a'), M(7, 2, 'thread_name', 'b'),
        M(7, 2, 'thread_sort_index', 0, 'sort_index'),
      } })
      rsvg(picture)
      assert.are.equal(2, count(picture, '<g class="lane"'))
      assert.is_truthy(picture:find('data%-name="b".*data%-name="a"'))  -- b sorts first
      assert.are.equal(0, count(picture, 'class="gil"'))
      assert.is_truthy(picture:find('0 µs · 1 process · 2 threads · 0 GIL switches', 1, true))
    end)

    it('unbalanced input: a B without its E is drawn to the end; an E without a B is ignored', function()
      local picture = svg.render(gen.encode { traceEvents = {
        M(100, 1, 'thread_name', 'main'),
        B(1, 0, 'gil', 'GIL'),
        B(1, 10, 'task', 'task #3', { future = 3 }),
        E(2, 20, 'wait', 'wait io.read'),
        I(2, 100, 'mark', 'late'),
      } })
      rsvg(picture)
      assert.are.equal(1, count(picture, 'class="gil"'))
      assert.are.equal(1, count(picture, 'class="task"'))
      assert.is_truthy(picture:find('<title>main held the GIL 100 µs (from 0 µs), no end in the trace (drawn to its end)</title>',
        1, true))
      assert.is_truthy(picture:find('2 spans without an end (B without E): drawn to the end of the trace', 1, true))
      assert.is_truthy(picture:find('1 end without a begin ignored', 1, true))
    end)

    it('events it does not understand are counted, not fatal', function()
      local picture = svg.render(gen.encode { traceEvents = {
        B(1, 0, 'gil', 'GIL'), E(1, 10, 'gil', 'GIL'),
        42, 'x', { ph = 'B' }, { ph = 'Q', pid = 1, tid = 1, ts = 1 }, { ph = 'B', pid = 1, tid = 1, ts = 'soon' },
        { ph = 'E', pid = {}, tid = 1, ts = 1 },
      } })
      rsvg(picture)
      assert.are.equal(1, count(picture, 'class="gil"'))
      assert.is_truthy(picture:find('6 events not understood, ignored', 1, true))
    end)

    it('extreme timestamps: a picture or a clear error, never a hang or NaN', function()
      local function gil(a, b)
        return gen.encode { traceEvents = { B(1, a, 'gil', 'GIL'), E(1, b, 'gil', 'GIL') } }
      end
      local p = svg.render(gil(1e300, 1.5e300))
      rsvg(p)
      assert.is_nil(p:find('nan', 1, true))
      assert.is_truthy(p:find('>5e+293 s · 1 process', 1, true))
      assert.matches('host.trace.svg: cannot draw a time window of 0.0 µs from 1e%+17 µs', error_of(svg.render, gil(1e17, 1e17)))
      assert.matches('cannot draw a time window of inf µs', error_of(svg.render, gil(-1e308, 1e308)))
      rsvg(svg.render('[]', { from = 0, to = 5e-324 }))
    end)

    it('the dropped events the recorder reports', function()
      local t = two_threads()
      t.otherData.dropped_events = 12
      t.otherData.note = 'size bound <1 MB>'
      local picture = svg.render(t)
      assert.is_truthy(picture:find('the recorder dropped the 12 oldest events: size bound &lt;1 MB&gt;', 1, true))
    end)
  end)

  describe('escapes all text', function()
    local hostile = '<script>alert("&")</script>\'\n\t\0' .. '\255\254' .. ' \237\160\128 end'
    local t = two_threads()
    t.traceEvents[1].args.name = hostile
    t.traceEvents[2].args.name = hostile
    t.traceEvents[10].args.object = hostile
    t.traceEvents[14].name = hostile
    t.traceEvents[13].args.pool = hostile
    t.traceEvents[15].name = hostile
    local text = gen.encode(t)
    local picture = svg.render(text, { title = hostile })

    it('hostile names come out as text, and the picture renders', function()
      rsvg(picture)
      assert.is_nil(picture:find('<script', 1, true))
      assert.is_truthy(picture:find('&lt;script&gt;alert(&quot;&amp;&quot;)&lt;/script&gt;&#39;', 1, true))
    end)

    it('the output is valid UTF-8 without control characters', function()
      assert.is_truthy(utf8.len(picture))
      assert.is_nil(picture:find('[%z\1-\9\11-\31]'))
      assert.is_truthy(picture:find('\u{FFFD}\u{FFFD}', 1, true))
      assert.is_nil(picture:find('\237\160\128', 1, true)) -- a surrogate is no UTF-8
    end)

    it('in ids and attributes too (pids and tids that are strings)', function()
      local p = svg.render(gen.encode { traceEvents = {
        { ph = 'B', pid = '"><x', tid = '<&>', ts = 0, cat = 'gil', name = 'GIL' },
        { ph = 'E', pid = '"><x', tid = '<&>', ts = 5, cat = 'gil', name = 'GIL' },
      } })
      rsvg(p)
      assert.is_truthy(p:find('data-pid="&quot;&gt;&lt;x" data-tid="&lt;&amp;&gt;"', 1, true))
    end)

    it('a huge name is cut, not repeated in every tooltip', function()
      local big = ('x'):rep(1000000)
      local t = { traceEvents = { M(100, 1, 'thread_name', big) } }
      for i = 1, 200 do t.traceEvents[#t.traceEvents + 1] = (i % 2 == 1 and B or E)(1, i, 'wait', 'wait', { object = big }) end
      local p = svg.render(t)
      rsvg(p)
      assert.are.equal(100, count(p, 'class="wait"'))
      assert.is_true(#p < 200000, #p)
      assert.is_truthy(p:find(('x'):rep(119) .. '…', 1, true))
    end)

    it('\\u escapes in the JSON: surrogate pairs, lone surrogates, NUL', function()
      local p = svg.render('{"traceEvents":[{"ph":"M","name":"thread_name","pid":1,"tid":1,'
        .. '"args":{"name":"a\\ud83d\\ude00b\\ud800c\\u0000d\\u00e9"}}]}')
      rsvg(p)
      assert.is_truthy(p:find('data-name="a😀b\u{FFFD}c dé"', 1, true))
    end)
  end)

  describe('a huge trace', function()
    local text, counts = gen.pingpong(100000)
    local trace = svg.decode(text)

    it('merges what is narrower than a pixel and stays under the default cap', function()
      local picture = svg.render(trace)
      rsvg(picture)
      assert.is_true(#picture <= 2000000)
      assert.is_truthy(picture:find('spans or marks narrower than a pixel merged', 1, true))
      assert.is_true(count(picture, 'class="gil merged"') > 0)
      assert.is_true(count(picture, 'class="gil"') < counts.gil / 10)
      assert.are.equal(5, count(picture, '<g class="lane"'))
      -- the lane still knows how many spans it stands for
      assert.is_truthy(picture:find(('data-gil="%d"'):format(counts.gil // 4), 1, true))
    end)

    it('aggregates more to fit a smaller cap, and says so', function()
      local picture = svg.render(trace, { max_bytes = 60000 })
      rsvg(picture)
      assert.is_true(#picture <= 60000, #picture)
      assert.is_truthy(picture:find('aggregated to fit 60000 bytes', 1, true))
      assert.are.equal(5, count(picture, '<g class="lane"'))
    end)

    it('leaves out lanes that do not fit at all, and says how many', function()
      local many, c = gen.pingpong(20000, { threads = 400, slice = 50 })
      local picture = svg.render(many, { max_bytes = 100000 })
      rsvg(picture)
      assert.is_true(#picture <= 100000, #picture)
      local drawn = count(picture, '<g class="lane"')
      assert.is_true(drawn > 0 and drawn < 401)
      assert.is_truthy(picture:find(('size cap (100000 bytes) reached: %d lanes not drawn'):format(401 - drawn), 1, true))
      assert.is_truthy(c.events > 0)
    end)

    it('stops at a height renderers draw when there are more lanes than fit it', function()
      local many = gen.pingpong(2000, { threads = 1000, slice = 50 })
      local picture = svg.render(many)
      rsvg(picture)
      local h = tonumber(picture:match '^<svg [^>]- height="(%d+)"')
      assert.is_true(h <= 32767, h)
      local drawn = count(picture, '<g class="lane"')
      assert.is_true(drawn > 0 and drawn < 1001)
      assert.is_truthy(picture:find(('height cap (30000 pixels of lanes) reached: %d lanes not drawn')
        :format(1001 - drawn), 1, true))
    end)
  end)

  describe('JSON', function()
    it('decodes every kind of value', function()
      local v = svg.decode ' {"a": [1, -0, 2.5, 1e3, -1.5E-2, true, false, null, "x\\"\\\\\\/\\b\\f\\n\\r\\t\\u0041"], "b": {}} '
      assert.are.same({ 1, 0, 2.5, 1000.0, -0.015, true, false, svg.null, 'x"\\/\b\f\n\r\tA' }, v.a)
      assert.are.equal('integer', math.type(v.a[1]))
      assert.are.same({}, v.b)
      assert.are.equal('null', tostring(svg.null))
    end)

    it('malformed JSON: a clear error naming line, column and byte', function()
      local cases = {
        { '{"traceEvents":[{"ph":"B",}]}', 'line 1, column 27 %(byte 27%): a string key expected in an object, got \'}\'' },
        { '{"traceEvents":[\n  {"ph" "B"}]}', 'line 2, column 9 %(byte 26%): \':\' expected after an object key, got \'"\'' },
        { '{"traceEvents":[', 'a JSON value expected, got the end of the input' },
        { '{"a":"abc', 'unterminated string' },
        { '{"a":1} x', 'byte 9%): the end of the input expected after the JSON value, got \'x\'' },
        { '[01]', 'byte 3%): \',\' or \']\' expected in an array, got \'1\'' },
        { '[1.]', 'a digit expected after the decimal point' },
        { '[1.e5]', 'a digit expected after the decimal point' },
        { '[1e]', 'a digit expected in the exponent' },
        { '[NaN]', 'a JSON value expected, got \'N\'' },
        { "['a']", "a JSON value expected, got '''" },
        { '["a\tb"]', 'raw control character in a string, got byte 0x09' },
        { '["\\x"]', 'bad escape in a string, got \'x\'' },
        { '["\\u12"]', 'bad \\u escape' },
        { '[1,]', 'a JSON value expected, got \']\'' },
        { '', 'line 1, column 1 %(byte 1%): a JSON value expected, got the end of the input' },
        { '\255', 'got byte 0xFF' },
        { ('['):rep(100000), 'nesting deeper than 500 levels' },
      }
      for _, c in ipairs(cases) do
        local e = error_of(svg.render, c[1])
        assert.matches('host.trace.svg: malformed JSON at line %d+, column %d+ %(byte %d+%): ', e)
        assert.matches(c[2], e)
        assert.matches(c[2], error_of(svg.decode, c[1]))
      end
    end)

    it('errors point at the caller', function()
      local e = error_of(function() local s = svg.render('[') return s end)
      assert.matches('^spec/trace_svg_spec.lua:%d+: host.trace.svg: malformed JSON', e)
    end)
  end)

  describe('bad input and options', function()
    it('input that is not a trace', function()
      assert.matches("bad argument #1 to 'render' %(JSON text or trace table expected, got number%)",
        error_of(svg.render, 42))
      assert.matches("bad argument #1 to 'render' %(JSON text or trace table expected, got nil%)",
        error_of(svg.render))
      assert.matches("bad argument #1 to 'decode' %(string expected, got table%)", error_of(svg.decode, {}))
      assert.matches('a trace is a JSON object with "traceEvents" %(or an array of events%), got number',
        error_of(svg.render, '42'))
      assert.matches('got null', error_of(svg.render, 'null'))
      assert.matches('the trace object has no "traceEvents"', error_of(svg.render, '{"events":[]}'))
      assert.matches('"traceEvents" must be an array of events', error_of(svg.render, '{"traceEvents":{"a":1}}'))
      assert.matches('"traceEvents" must be an array of events', error_of(svg.render, '{"traceEvents":"x"}'))
    end)

    it('bad options', function()
      local t = '[]'
      assert.matches("bad argument #2 to 'render' %(table expected, got number%)", error_of(svg.render, t, 5))
      assert.matches("bad argument #2 to 'render' %(unknown option 'colour'%)", error_of(svg.render, t, { colour = 1 }))
      assert.matches("option 'width' must be a number in %[400, 100000%], got 10", error_of(svg.render, t, { width = 10 }))
      assert.matches("option 'width' must be a number", error_of(svg.render, t, { width = 'wide' }))
      assert.matches("option 'width' must be a number", error_of(svg.render, t, { width = 0 / 0 }))
      assert.matches("option 'from' %(5%) must be less than 'to' %(1%)", error_of(svg.render, t, { from = 5, to = 1 }))
      assert.matches("option 'to' must be a number", error_of(svg.render, t, { to = -1 }))
      assert.matches("option 'title' must be a string, got number", error_of(svg.render, t, { title = 1 }))
      assert.matches("option 'max_bytes' must be a number", error_of(svg.render, t, { max_bytes = 10 }))
      assert.matches("^spec/trace_svg_spec.lua:%d+: bad argument #2", error_of(function() svg.render(t, 5) end))
    end)
  end)

  describe('tools/trace2svg.lua', function()
    it('turns a trace file into a picture beside it', function()
      local json = os.tmpname() .. '.json'
      local f = assert(io.open(json, 'wb'))
      f:write(gen.encode(two_threads()))
      f:close()
      local out_svg = json:gsub('%.json$', '.svg')
      local _, err, code = sh.host_run('tools/trace2svg.lua --width=900 ' .. q(json))
      assert.are.equal(0, code, err)
      assert.matches('wrote .*%.svg', err)
      local picture = slurp(out_svg)
      assert.matches('^<svg [^>]*width="900"', picture)
      assert.are.equal(2, count(picture, '<g class="lane"'))
      os.remove(json)
      os.remove(out_svg)
    end)

    it('fails with a message on a bad file, bad JSON or a bad option', function()
      local _, err, code = sh.host_run('tools/trace2svg.lua /nonexistent/x.json')
      assert.are.equal(1, code)
      assert.matches('trace2svg: /nonexistent/x.json', err)
      _, err, code = sh.host_run('tools/trace2svg.lua - -', nil, '{"traceEvents":[')
      assert.are.equal(1, code)
      assert.matches('trace2svg: %-: host.trace.svg: malformed JSON at line 1, column 17', err)
      _, err, code = sh.host_run('tools/trace2svg.lua --colour=red x.json')
      assert.are.equal(1, code)
      assert.matches('unknown option %-%-colour=red', err)
      local out
      out, err, code = sh.host_run('tools/trace2svg.lua - -', nil, '[]')
      assert.are.equal(0, code, err)
      assert.matches('^<svg ', out)
    end)
  end)
end)
