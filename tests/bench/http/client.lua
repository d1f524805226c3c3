-- client.lua -- N tasks, each looping http.get + res:json() for D seconds.
--   sluice run tests/bench/http/client.lua -- URL CONNECTIONS SECONDS
local sluice = require "sluice"
local http = require "sluice.http"
local url, conns, secs = ...
conns, secs = tonumber(conns) or 50, tonumber(secs) or 10
http.configure({ max_host_connections = conns })

local done, failed = 0, 0
local deadline = sluice.now() + secs
local function worker()
  while sluice.now() < deadline do
    local res = http.get(url)
    if res and res.status == 200 and res:json() then
      done = done + 1
    else
      failed = failed + 1
    end
  end
end

local t0 = sluice.now()
local tasks = {}
for i = 1, conns do tasks[i] = sluice.spawn(worker) end
for i = 1, conns do sluice.wait(tasks[i]) end
local dt = sluice.now() - t0
print(string.format("sluice: %d requests in %.2f s = %.0f req/s (%d failed)", done, dt, done / dt, failed))
