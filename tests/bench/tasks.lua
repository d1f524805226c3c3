-- tasks.lua -- spawn+complete rate and concurrent sleep wall time.
--   sluice run tests/bench/tasks.lua [-- N_SPAWN N_SLEEP]
local sluice = require "sluice"
local arg1, arg2 = ...
local n_spawn = tonumber(arg1) or 1000000
local n_sleep = tonumber(arg2) or 10000

local function noop() end

-- 1. spawn N trivial tasks in batches and wait for the last of each batch
collectgarbage()
local t0 = sluice.now()
local batch = 10000
for _ = 1, n_spawn / batch do
  local last
  for _ = 1, batch do
    last = sluice.spawn(noop)
  end
  sluice.wait(last)
end
local dt = sluice.now() - t0
print(string.format("spawn+complete: %d tasks in %.3f s = %.0f tasks/s (%.2f us/task)",
  n_spawn, dt, n_spawn / dt, dt / n_spawn * 1e6))
print(string.format("@figure tasks.spawn_complete_rate %.6g tasks/s", n_spawn / dt))

-- 2. N tasks each sleeping 100 ms at once
collectgarbage()
local tasks = {}
t0 = sluice.now()
for i = 1, n_sleep do
  tasks[i] = sluice.spawn(sluice.sleep, 0.1)
end
for i = 1, n_sleep do
  sluice.wait(tasks[i])
end
dt = sluice.now() - t0
print(string.format("sleep: %d tasks x 100 ms concurrently: wall %.3f s (overhead %.1f ms)",
  n_sleep, dt, (dt - 0.1) * 1000))
print(string.format("@figure tasks.sleep_overhead %.6g ms", (dt - 0.1) * 1000))
print(string.format("lua heap after: %.1f MiB", collectgarbage("count") / 1024))
