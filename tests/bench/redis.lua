-- redis.lua -- round trips/s of client:call("PING") from N tasks on one
-- connection, next to redis-benchmark's PING figures on the same server.
--   sluice run --lua-path tests/lua tests/bench/redis.lua [-- SECONDS TASKS PORT]
-- Without PORT a private redis-server is started on a free port and stopped
-- (support.redis_server).
local sluice = require "sluice"
local redis = require "sluice.redis"
local redis_server = require "support.redis_server"
local arg1, arg2, arg3 = ...
local seconds = tonumber(arg1) or 3
local ntasks = tonumber(arg2) or 100
local port = tonumber(arg3)

local function capture(cmd)
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  return out
end

local own
if not port then
  own = redis_server.start()
  port = own.port
end

local red = redis.connect { url = "redis://127.0.0.1:" .. port .. "/0" }
assert(red:call("PING") == "PONG")

local stop, count, failed = false, 0, 0
local function worker()
  while not stop do
    if red:call("PING") == "PONG" then count = count + 1 else failed = failed + 1 end
  end
end

local tasks = {}
local t0 = sluice.now()
for i = 1, ntasks do tasks[i] = sluice.spawn(worker) end
sluice.sleep(seconds)
stop = true
for i = 1, ntasks do sluice.wait(tasks[i]) end
local dt = sluice.now() - t0
print(string.format("sluice.redis PING: %d round trips from %d tasks in %.2f s = %.0f/s (%d failed)",
  count, ntasks, dt, count / dt, failed))
require("support.bench").figure("redis.ping_rate", count / dt, "ops/s")
red:close()

-- redis-benchmark: 50 clients by default, each one request at a time
-- (no -P), so its figure is also a round-trip rate, spread over 50 sockets.
-- With -P 100 each client pipelines, as the 100 tasks do on our connection.
for _, opts in ipairs { "", " -P 100" } do
  local out = capture(("redis-benchmark -p %d -t ping -n 200000 -q%s 2>&1"):format(port, opts))
  for line in out:gmatch("[^\r\n]+") do
    local last = line:match("([^\r]*)$")
    if last:match("requests per second") then print("redis-benchmark" .. opts .. " " .. last) end
    if last:match("requests per second") then
      require("support.bench").figure(("redis.ping_vs_benchmark_%s%s"):format(last:match("^(%u[%u_]*)"):lower(),
        opts == "" and "" or "_p100"), count / dt / tonumber(last:match("([%d%.]+) requests per second")), "ratio")
    end
  end
end

if own then own:stop(false, true) end
