-- gcra.lua -- shared-quota admissions/s from one process: N tasks calling
-- sluice.gcra's wait() and a shared limiter's wait() on a rate too high to
-- bind, so each admission is one EVALSHA round trip through the pipeline.
--   sluice run --lua-path tests/lua tests/bench/gcra.lua [-- SECONDS TASKS]
-- A private redis-server is started on a free port and stopped.
local sluice = require "sluice"
local redis = require "sluice.redis"
local gcra = require "sluice.gcra"
local limiter = require "sluice.limiter"
local redis_server = require "support.redis_server"
local arg1, arg2 = ...
local seconds = tonumber(arg1) or 3
local ntasks = tonumber(arg2) or 100

math.randomseed(os.time())
local srv = redis_server.start()
local red = redis.connect { url = srv:url() }
assert(red:call("PING") == "PONG")

local function run(label, wait)
  local stop, count, failed = false, 0, 0
  local tasks = {}
  local t0 = sluice.now()
  for i = 1, ntasks do
    tasks[i] = sluice.spawn(function()
      while not stop do
        if wait() then count = count + 1 else failed = failed + 1 end
      end
    end)
  end
  sluice.sleep(seconds)
  stop = true
  for i = 1, ntasks do sluice.wait(tasks[i]) end
  local dt = sluice.now() - t0
  print(string.format("%s: %d admissions from %d tasks in %.2f s = %.0f/s (%d failed)",
    label, count, ntasks, dt, count / dt, failed))
  require("support.bench").figure("gcra." .. label:match("^%a+") .. "_rate", count / dt, "admissions/s")
end

local g = gcra.new { redis = red, name = "bench", rate = 1e7, burst = 1e3 }
run("gcra:wait()", function() return g:wait() end)
local lim = limiter.new { name = "bench_lim", rate = 1e6, max_rate = 1e6, burst = 1e3, shared = red }
run("limiter:wait() shared", function() return lim:wait() end)

red:close()
srv:stop(false, true)
