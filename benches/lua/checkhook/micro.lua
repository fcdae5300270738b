-- The cost of LUAJIT_ENABLE_CHECKHOOK in compiled code: every looping trace checks the hook
-- flag once per iteration, so tight loops are where it shows. Run with a LuaJIT built with and
-- one built without the define (BENCHMARKS.md, "CPU budget"); prints ns per iteration of each
-- loop, best of `rounds`.
local rounds = tonumber(arg and arg[1]) or 5
local N = 20000000

local cases = {}

-- The tightest loop there is: an add per iteration.
cases[#cases + 1] = { "numeric for, sum", function()
  local s = 0
  for i = 1, N do s = s + i end
  return s
end }

-- A while loop with a compare and two adds.
cases[#cases + 1] = { "while, counter", function()
  local i, s = 0, 0
  while i < N do i = i + 1; s = s + i % 7 end
  return s
end }

-- Array reads and writes, as a game loop over its entities does.
local arr = {}
for i = 1, 1024 do arr[i] = i end
cases[#cases + 1] = { "array read/write", function()
  local s = 0
  for i = 1, N do
    local j = i % 1024 + 1
    arr[j] = arr[j] + 1
    s = s + arr[j]
  end
  return s
end }

-- Field access and a small function call per iteration (inlined by the JIT).
local function dist2(p, q) local dx, dy = p.x - q.x, p.y - q.y return dx * dx + dy * dy end
cases[#cases + 1] = { "calls + fields", function()
  local p, q, s = { x = 1, y = 2 }, { x = 3, y = 5 }, 0
  for i = 1, N / 4 do q.x = i s = s + dist2(p, q) end
  return s
end }

-- Nested loops: the inner loop's trace is entered N/64 times.
cases[#cases + 1] = { "nested loops", function()
  local s = 0
  for i = 1, N / 64 do
    for j = 1, 64 do s = s + j end
  end
  return s
end }

for _, case in ipairs(cases) do
  local name, f = case[1], case[2]
  local best = math.huge
  for _ = 1, rounds do
    local t = os.clock()
    f()
    local dt = os.clock() - t
    if dt < best then best = dt end
  end
  local iters = (name == "calls + fields") and N / 4 or N
  io.write(string.format("%-18s %7.3f ns/iter\n", name, best / iters * 1e9))
end
