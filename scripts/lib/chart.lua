-- scripts/lib/chart.lua: SVG charts in plain Lua, for the experiment
-- scripts and the benchmarks. Two kinds:
--   chart.bars{...}   horizontal bars in groups, each with a min-max whisker
--   chart.lines{...}  lines of points (x, y) with min-max whiskers
-- Each returns the SVG text; chart.write(path, svg) saves it. Every bar and
-- point carries a <title> and a class ("bar", "point") so a reader or a
-- spec can find them in the text.
local chart = {}

local PALETTE = { '#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#76b7b2', '#edc948', '#b07aa1' }
chart.PALETTE = PALETTE

-- Text safe inside an XML element or attribute.
local function esc(s)
  return (tostring(s):gsub('[&<>"]', { ['&'] = '&amp;', ['<'] = '&lt;', ['>'] = '&gt;', ['"'] = '&quot;' }))
end
chart.escape = esc

-- A number for an SVG attribute.
local function n(x) return ('%.1f'):format(x) end

-- A short label for a value: 3 significant digits.
local function num(x)
  local a = math.abs(x)
  if x == math.floor(x) and a < 1e9 then return ('%d'):format(x) end
  if a >= 1000 then return ('%.0f'):format(x) end
  if a >= 100 then return ('%.0f'):format(x) end
  if a >= 10 then return ('%.1f'):format(x) end
  if a >= 1 then return ('%.2f'):format(x) end
  return ('%.3g'):format(x)
end
chart.num = num

-- A "nice" upper bound and tick step for an axis from 0 to `max`.
local function axis(max)
  if not (max > 0) then max = 1 end
  local step = 10 ^ math.floor(math.log(max, 10))
  for _, k in ipairs { 1, 2, 5, 10 } do
    if max / (step * k) <= 6 then step = step * k break end
  end
  return math.ceil(max / step) * step, step
end

-- Splits `text` into lines of at most `width` characters, at spaces.
local function wrap(text, width)
  local lines, line = {}, ''
  for word in text:gmatch '%S+' do
    if #line > 0 and #line + 1 + #word > width then
      lines[#lines + 1] = line
      line = word
    else
      line = #line > 0 and (line .. ' ' .. word) or word
    end
  end
  if #line > 0 then lines[#lines + 1] = line end
  return lines
end

-- The note under a chart, one <text> per wrapped line, from baseline y.
local function note(out, text, y, width)
  for i, l in ipairs(wrap(text, width // 7)) do
    out[#out + 1] = ('<text class="note" x="10" y="%s" fill="#555">%s</text>'):format(n(y + (i - 1) * 16), esc(l))
  end
end

local function header(w, h, title, subtitle)
  local out = {
    ('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
      .. 'font-family="DejaVu Sans, Arial, sans-serif" font-size="12">'):format(w, h, w, h),
    ('<rect width="%d" height="%d" fill="white"/>'):format(w, h),
    ('<text class="title" x="10" y="20" font-size="15" font-weight="bold">%s</text>'):format(esc(title or '')),
  }
  if subtitle then
    out[#out + 1] = ('<text class="subtitle" x="10" y="38" fill="#555">%s</text>'):format(esc(subtitle))
  end
  return out
end

-- Horizontal grouped bars.
-- spec = { title =, subtitle =, unit = 'seconds', note =, log = true for a
--   logarithmic axis (values > 0), headings = true to head every group,
--   groups = { { label =, bars = { { label =, value =, min =, max =, color =,
--                                     goal = a red tick at this value,
--                                     text = label printed after the bar } } } },
--   marks = { { value =, label = } }  -- vertical reference lines }
function chart.bars(spec)
  local label_w, bar_h, gap, width = spec.label_width or 300, 18, 12, spec.width or 860
  local top = spec.subtitle and 56 or 40
  local plot_w = width - label_w - (spec.right or 210)
  local max = 0
  local rows = 0
  for _, g in ipairs(spec.groups) do
    for _, b in ipairs(g.bars) do
      max = math.max(max, b.max or b.value, b.value, b.goal or 0)
      rows = rows + 1
    end
    if (#g.bars > 1 or spec.headings) and g.label then rows = rows + 1 end
  end
  for _, m in ipairs(spec.marks or {}) do max = math.max(max, m.value) end
  local hi, step = axis(max)
  local note_lines = spec.note and #wrap(spec.note, width // 7) or 0
  local height = top + rows * (bar_h + 4) + #spec.groups * gap + 60 + note_lines * 16
  local out = header(width, height, spec.title, spec.subtitle)
  local ticks = {}
  local xof
  if spec.log then
    -- A logarithmic axis from the decade below the smallest value to the
    -- decade above the largest, ticks at 1, 2 and 5 of each decade.
    local least = math.huge
    for _, g in ipairs(spec.groups) do
      for _, b in ipairs(g.bars) do
        for _, v in ipairs { b.value, b.min or b.value, b.goal or b.value } do
          if v > 0 then least = math.min(least, v) end
        end
      end
    end
    local lo = 10 ^ math.floor(math.log(least < math.huge and least or 1, 10))
    local top_ = 10 ^ math.ceil(math.log(max > 0 and max or 1, 10))
    if top_ <= lo then top_ = lo * 10 end
    local span = math.log(top_ / lo, 10)
    xof = function(v) return label_w + math.log(math.max(v, lo) / lo, 10) / span * plot_w end
    local d = lo
    while d <= top_ * 1.001 do
      for _, k in ipairs { 1, 2, 5 } do
        if d * k <= top_ * 1.001 then ticks[#ticks + 1] = d * k end
      end
      d = d * 10
    end
  else
    xof = function(v) return label_w + v / hi * plot_w end
    local v = 0
    while v <= hi + step / 2 do
      ticks[#ticks + 1] = v
      v = v + step
    end
  end
  local y = top
  local plot_top = y
  for gi, g in ipairs(spec.groups) do
    local heading = (#g.bars > 1 or spec.headings) and g.label
    if heading then
      out[#out + 1] = ('<text class="group" x="10" y="%s" font-weight="bold">%s</text>')
        :format(n(y + 13), esc(g.label))
      y = y + 18
    end
    for bi, b in ipairs(g.bars) do
      local label = heading and b.label or (g.label or b.label)
      local color = b.color or PALETTE[((heading and bi or gi) - 1) % #PALETTE + 1]
      local w = math.max(0, xof(b.value) - label_w)
      out[#out + 1] = ('<text class="label" x="%d" y="%s" text-anchor="end">%s</text>')
        :format(label_w - 6, n(y + 13), esc(label))
      out[#out + 1] = ('<rect class="bar" x="%d" y="%s" width="%s" height="%d" fill="%s">'
        .. '<title>%s: %s %s</title></rect>'):format(label_w, n(y), n(w), bar_h, color,
        esc(heading and (g.label .. ', ' .. b.label) or label), num(b.value), esc(spec.unit or ''))
      if b.min and b.max then
        local x1, x2, cy = xof(b.min), xof(b.max), y + bar_h / 2
        out[#out + 1] = ('<path class="whisker" d="M%s %sH%s M%s %sV%s M%s %sV%s" stroke="#222" '
          .. 'stroke-width="1.2" fill="none"/>'):format(n(x1), n(cy), n(x2), n(x1), n(cy - 5), n(cy + 5),
          n(x2), n(cy - 5), n(cy + 5))
      end
      if b.goal then
        local gx = xof(b.goal)
        out[#out + 1] = ('<path class="goal" d="M%s %sV%s" stroke="#c00" stroke-width="2.5"><title>goal %s</title></path>')
          :format(n(gx), n(y - 2), n(y + bar_h + 2), num(b.goal))
      end
      out[#out + 1] = ('<text class="value" x="%s" y="%s">%s</text>')
        :format(n(math.max(xof(b.value), b.max and xof(b.max) or 0) + 6), n(y + 13),
                esc(b.text or (num(b.value) .. ' ' .. (spec.unit or ''))))
      y = y + bar_h + 4
    end
    y = y + gap
  end
  -- The axis, its ticks and the reference marks.
  local base = y
  out[#out + 1] = ('<path d="M%d %dV%s H%s" stroke="#444" fill="none"/>'):format(label_w, plot_top - 4, n(base),
    n(label_w + plot_w))
  for _, v in ipairs(ticks) do
    local x = xof(v)
    out[#out + 1] = ('<path d="M%s %sV%s" stroke="#444"/><text class="tick" x="%s" y="%s" text-anchor="middle">%s</text>')
      :format(n(x), n(base), n(base + 4), n(x), n(base + 16), num(v))
  end
  out[#out + 1] = ('<text class="unit" x="%s" y="%s" text-anchor="middle">%s</text>')
    :format(n(label_w + plot_w / 2), n(base + 32), esc(spec.unit or ''))
  for _, m in ipairs(spec.marks or {}) do
    local x = xof(m.value)
    out[#out + 1] = ('<path class="mark" d="M%s %dV%s" stroke="#c00" stroke-dasharray="4 3"/>'
      .. '<text class="mark" x="%s" y="%d" fill="#c00" text-anchor="middle">%s</text>')
      :format(n(x), plot_top - 4, n(base), n(x), plot_top - 6, esc(m.label or num(m.value)))
  end
  if spec.note then note(out, spec.note, base + 52, width) end
  out[#out + 1] = '</svg>\n'
  return table.concat(out, '\n')
end

-- Lines of points.
-- spec = { title =, subtitle =, xlabel =, ylabel =, note =,
--   series = { { label =, color =, dashed = bool,
--                points = { { x =, y =, min =, max = } } } } }
function chart.lines(spec)
  local width, height = spec.width or 700, spec.height or 440
  local note_lines = spec.note and #wrap(spec.note, width // 7) or 0
  height = height + note_lines * 16
  local left, right, top, bottom = 70, 190, spec.subtitle and 60 or 44, 60 + note_lines * 16
  local xmax, ymax, xmin = 0, 0, math.huge
  for _, s in ipairs(spec.series) do
    for _, p in ipairs(s.points) do
      xmax, xmin = math.max(xmax, p.x), math.min(xmin, p.x)
      ymax = math.max(ymax, p.max or p.y, p.y)
    end
  end
  if xmin == math.huge then xmin = 0 end
  local yhi, ystep = axis(ymax)
  local xlo, xhi = math.min(0, xmin), xmax > 0 and xmax or 1
  local pw, ph = width - left - right, height - top - bottom
  local function X(x) return left + (x - xlo) / (xhi - xlo) * pw end
  local function Y(y) return top + ph - y / yhi * ph end
  local out = header(width, height, spec.title, spec.subtitle)
  out[#out + 1] = ('<path d="M%d %dV%d H%d" stroke="#444" fill="none"/>'):format(left, top, top + ph, left + pw)
  local v = 0
  while v <= yhi + ystep / 2 do
    out[#out + 1] = ('<path d="M%d %sH%d" stroke="#ddd"/><text class="tick" x="%d" y="%s" text-anchor="end">%s</text>')
      :format(left, n(Y(v)), left + pw, left - 6, n(Y(v) + 4), num(v))
    v = v + ystep
  end
  local xs = {}
  for _, s in ipairs(spec.series) do for _, p in ipairs(s.points) do xs[p.x] = true end end
  for x in pairs(xs) do
    out[#out + 1] = ('<path d="M%s %dV%d" stroke="#444"/><text class="tick" x="%s" y="%d" text-anchor="middle">%s</text>')
      :format(n(X(x)), top + ph, top + ph + 4, n(X(x)), top + ph + 18, num(x))
  end
  out[#out + 1] = ('<text class="xlabel" x="%s" y="%d" text-anchor="middle">%s</text>')
    :format(n(left + pw / 2), top + ph + 38, esc(spec.xlabel or ''))
  out[#out + 1] = ('<text class="ylabel" x="14" y="%s" text-anchor="middle" transform="rotate(-90 14 %s)">%s</text>')
    :format(n(top + ph / 2), n(top + ph / 2), esc(spec.ylabel or ''))
  for i, s in ipairs(spec.series) do
    local color = s.color or PALETTE[(i - 1) % #PALETTE + 1]
    local d = {}
    for j, p in ipairs(s.points) do d[j] = (j == 1 and 'M' or 'L') .. n(X(p.x)) .. ' ' .. n(Y(p.y)) end
    out[#out + 1] = ('<path class="line" d="%s" stroke="%s" stroke-width="2" fill="none"%s/>')
      :format(table.concat(d, ' '), color, s.dashed and ' stroke-dasharray="6 4"' or '')
    for _, p in ipairs(s.points) do
      if p.min and p.max then
        out[#out + 1] = ('<path class="whisker" d="M%s %sV%s" stroke="%s"/>'):format(n(X(p.x)), n(Y(p.min)),
          n(Y(p.max)), color)
      end
      if not s.dashed then
        out[#out + 1] = ('<circle class="point" cx="%s" cy="%s" r="3.5" fill="%s"><title>%s: %s, %s</title></circle>')
          :format(n(X(p.x)), n(Y(p.y)), color, esc(s.label), num(p.x), num(p.y))
      end
    end
    local ly = top + 10 + (i - 1) * 20
    out[#out + 1] = ('<path d="M%d %dH%d" stroke="%s" stroke-width="2"%s/><text class="legend" x="%d" y="%d">%s</text>')
      :format(left + pw + 12, ly, left + pw + 34, color, s.dashed and ' stroke-dasharray="6 4"' or '',
              left + pw + 40, ly + 4, esc(s.label))
  end
  if spec.note then note(out, spec.note, height - note_lines * 16 + 4, width) end
  out[#out + 1] = '</svg>\n'
  return table.concat(out, '\n')
end

-- Writes `svg` to `path`; returns path.
function chart.write(path, svg)
  local f = assert(io.open(path, 'w'))
  f:write(svg)
  f:close()
  return path
end

return chart
