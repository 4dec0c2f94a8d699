-- bench/gcd_kernel.lua: the book's brute-force gcd over its four pairs,
-- repeated; prints the CPU seconds it took. Runs under host and lua5.4 alike.
local function gcd(pair)
  local a, b = pair[1], pair[2]
  local low = math.min(a, b)
  for i = low, 1, -1 do
    if a % i == 0 and b % i == 0 then return i end
  end
end

local numbers = { {1963309, 2265973}, {2030677, 3814172},
                  {1551645, 2229620}, {2039045, 2020802} }
local repeats = tonumber(... or 1)
local t0 = os.clock()
for _ = 1, repeats do
  for _, pair in ipairs(numbers) do gcd(pair) end
end
print(os.clock() - t0)
