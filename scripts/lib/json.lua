-- scripts/lib/json.lua: the JSON the benchmarks write and read
-- (build/bench.json): encode and decode of nil/null, booleans, finite
-- numbers, strings, arrays (tables with n or 1..#t) and objects (other
-- tables, keys sorted so output is stable). Bad input raises.
local json = {}

local escapes = { ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
                  ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }

local function encode_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return escapes[c] or ('\\u%04x'):format(c:byte())
  end) .. '"'
end

-- True when t is a non-empty sequence 1..#t with no other keys.
local function is_array(t)
  local n = #t
  if n == 0 then return false end
  local count = 0
  for _ in pairs(t) do count = count + 1 end
  return count == n
end

-- Encodes v; `indent` (a string) pretty-prints objects one key a line.
function json.encode(v, indent, depth)
  depth = depth or 0
  local kind = type(v)
  if v == nil or v == json.null then return 'null'
  elseif kind == 'boolean' then return tostring(v)
  elseif kind == 'number' then
    assert(v == v and v ~= math.huge and v ~= -math.huge, 'json: cannot encode ' .. tostring(v))
    if math.type(v) == 'integer' then return tostring(v) end
    return ('%.17g'):format(v):gsub(',', '.')
  elseif kind == 'string' then return encode_string(v)
  elseif kind == 'table' then
    local nl = indent and ('\n' .. indent:rep(depth + 1)) or ''
    local close = indent and ('\n' .. indent:rep(depth)) or ''
    local parts = {}
    if is_array(v) then
      for i = 1, #v do parts[i] = json.encode(v[i], indent, depth + 1) end
      return '[' .. table.concat(parts, ', ') .. ']'
    end
    local keys = {}
    for k in pairs(v) do
      assert(type(k) == 'string', 'json: object keys must be strings')
      keys[#keys + 1] = k
    end
    if #keys == 0 then return '{}' end
    table.sort(keys)
    for i, k in ipairs(keys) do
      parts[i] = nl .. encode_string(k) .. ': ' .. json.encode(v[k], indent, depth + 1)
    end
    return '{' .. table.concat(parts, indent and ',' or ', ') .. close .. '}'
  end
  error('json: cannot encode a ' .. kind)
end

-- The JSON null, as a value distinct from a missing key.
json.null = setmetatable({}, { __name = 'json.null', __tostring = function() return 'null' end })

-- Decodes one JSON text; null becomes nil inside objects and json.null at top level.
function json.decode(s)
  local pos = 1
  local function fail(what) error(('json: %s at character %d'):format(what, pos), 0) end
  local function skip() pos = s:find('[^ \t\r\n]', pos) or #s + 1 end
  local value
  local function str()
    local out = {}
    pos = pos + 1
    while true do
      local c = s:sub(pos, pos)
      if c == '' then fail 'unfinished string' end
      if c == '"' then pos = pos + 1 return table.concat(out) end
      if c == '\\' then
        local e = s:sub(pos + 1, pos + 1)
        local simple = { b = '\b', f = '\f', n = '\n', r = '\r', t = '\t', ['"'] = '"', ['\\'] = '\\', ['/'] = '/' }
        if simple[e] then out[#out + 1] = simple[e] pos = pos + 2
        elseif e == 'u' then
          local hex = s:match('^%x%x%x%x', pos + 2) or fail 'bad \\u escape'
          out[#out + 1] = utf8.char(tonumber(hex, 16))
          pos = pos + 6
        else fail 'bad escape' end
      else
        out[#out + 1] = c
        pos = pos + 1
      end
    end
  end
  function value()
    skip()
    local c = s:sub(pos, pos)
    if c == '{' then
      local t = {}
      pos = pos + 1
      skip()
      if s:sub(pos, pos) == '}' then pos = pos + 1 return t end
      while true do
        skip()
        if s:sub(pos, pos) ~= '"' then fail 'object key expected' end
        local k = str()
        skip()
        if s:sub(pos, pos) ~= ':' then fail "':' expected" end
        pos = pos + 1
        local v = value()
        if v ~= json.null then t[k] = v end
        skip()
        local d = s:sub(pos, pos)
        pos = pos + 1
        if d == '}' then return t end
        if d ~= ',' then fail "',' or '}' expected" end
      end
    elseif c == '[' then
      local t = {}
      pos = pos + 1
      skip()
      if s:sub(pos, pos) == ']' then pos = pos + 1 return t end
      while true do
        local v = value()
        t[#t + 1] = v ~= json.null and v or nil
        skip()
        local d = s:sub(pos, pos)
        pos = pos + 1
        if d == ']' then return t end
        if d ~= ',' then fail "',' or ']' expected" end
      end
    elseif c == '"' then return str()
    elseif s:match('^true', pos) then pos = pos + 4 return true
    elseif s:match('^false', pos) then pos = pos + 5 return false
    elseif s:match('^null', pos) then pos = pos + 4 return json.null
    else
      local num = s:match('^-?%d+%.?%d*[eE]?[-+]?%d*', pos)
      if not num or num == '' or not tonumber(num) then fail 'value expected' end
      pos = pos + #num
      return tonumber(num)
    end
  end
  local v = value()
  skip()
  if pos <= #s then fail 'trailing text' end
  return v
end

return json
