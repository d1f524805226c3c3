-- client.lua -- N tasks, each looping http.get + res:json() for D seconds.
--   sluice run tests/bench/http/client.lua -- URL CONNECTIONS SECONDS [h2]
-- h2: an https URL to a server with HTTP/2 (a self-signed certificate):
-- the N tasks share one connection, as N streams.
local sluice = require "sluice"
local http = require "sluice.http"
local url, conns, secs, mode = ...
conns, secs = tonumber(conns) or 50, tonumber(secs) or 10
-- BENCH_GCPAUSE=N: the Lua GC's pause (the runtime's default otherwise)
local pause = tonumber(os.getenv("BENCH_GCPAUSE") or "")
if pause then collectgarbage("setpause", pause) end
local opts = nil
if mode == "h2" then
  http.configure({ max_host_connections = 1 })
  opts = { insecure = true }
else
  http.configure({ max_host_connections = conns })
end

local done, failed, h2 = 0, 0, 0
local deadline = sluice.now() + secs
local function worker()
  while sluice.now() < deadline do
    local res = http.get(url, opts)
    if res and res.status == 200 and res:json() then
      done = done + 1
      if res.http_version == "2" then h2 = h2 + 1 end
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
print(string.format("sluice: %d requests in %.2f s = %.0f req/s (%d failed, %d over HTTP/2)",
  done, dt, done / dt, failed, h2))
