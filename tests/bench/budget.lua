-- budget.lua -- what run budgets cost: per resume of a budgeted task, and a
-- collect-like workload run interpreted (as collectors' code is) or compiled.
--   sluice run tests/bench/budget.lua [-- N_TASKS ROWS]
local sluice = require "sluice"
local cjson = require "cjson.safe"
local arg1, arg2 = ...
local n_tasks = tonumber(arg1) or 20000
local n_rows = tonumber(arg2) or 1000

-- 1. tasks that yield 0 or 50 times, with and without a budget: the
-- difference between the two is the cost per resume, the rest per task
local function yielder(n) for _ = 1, n do sluice.yield() end end
local function run(budget, yields)
  collectgarbage()
  local t0 = sluice.now()
  local last
  for i = 1, n_tasks do
    last = sluice.spawn(yielder, yields)
    if budget then sluice.budget(last, { cpu = 5, wall = 300 }) end
    if i % 1000 == 0 then sluice.wait(last) end
  end
  sluice.wait(last)
  return (sluice.now() - t0) / n_tasks * 1e6 -- us per task
end
run(false, 50) -- warm up
local p0, p50, b0, b50 = run(false, 0), run(false, 50), run(true, 0), run(true, 50)
print(string.format("per task: %.2f us plain, %.2f us with a budget; per resume: %.3f us plain, %.3f us with a budget",
  p0, b0, (p50 - p0) / 50, (b50 - b0) / 50))
print(string.format("@figure budget.task_with_vs_without %.6g ratio", b0 / p0))
print(string.format("@figure budget.resume_cost %.6g us", (b50 - b0) / 50))

-- 2. a collect: decode a klines-like JSON array and reshape it into rows
local rows = {}
for i = 1, n_rows do
  rows[i] = { 1700000000000 + i * 60000, "42000.1", "42010.5", "41990.0", "42005.3", "12.5", 0, "0", 10 }
end
local body = cjson.encode(rows)
local function collect()
  local data = cjson.decode(body)
  local out = {}
  for i, k in ipairs(data) do
    out[i] = { symbol = "BTCUSDT", open_time = k[1], open = tonumber(k[2]), high = tonumber(k[3]),
      low = tonumber(k[4]), close = tonumber(k[5]), volume = tonumber(k[6]),
      key = string.format("%s:%d", "BTCUSDT", k[1]) }
  end
  return out
end
local function per_run(fn) -- ms, the best of 5 rounds of 50 runs
  for _ = 1, 20 do fn() end
  local best = math.huge
  for _ = 1, 5 do
    local t0 = sluice.now()
    for _ = 1, 50 do fn() end
    best = math.min(best, (sluice.now() - t0) / 50 * 1e3)
  end
  return best
end
local compiled = per_run(collect)
jit.off(collect, true)
local interpreted = per_run(collect)
print(string.format("collect of %d rows: %.3f ms compiled, %.3f ms interpreted (+%.3f ms per run)",
  n_rows, compiled, interpreted, interpreted - compiled))
print(string.format("@figure budget.collect_interpreted_vs_compiled %.6g ratio", interpreted / compiled))
