--- exchange_mocks.lua: the five exchange mocks (sluice.mock.<name>) in one
-- process, for the integration scripts (exchanges.sh): run it with
-- `sluice run tests/integration/exchange_mocks.lua`, MOCKS_FILE in the
-- environment naming where to write the URLs. Each mock listens on
-- 127.0.0.1 port 0 with its default symbols and the wall clock; a control
-- server beside them steers them. MOCKS_FILE gets one line per server,
-- "<name> <url>" (binance, bybit, bitget, gate, htx, then control), written
-- whole (a rename) once every server listens. It runs until SIGTERM.
--
-- Control routes (GET, on the control URL):
--   /inject?exchange=gate&status=503&count=100000 -> m:inject{status, count}:
--       that mock answers its next `count` requests with `status`
--   /reset?exchange=gate -> m:reset() (its faults dropped, its log cleared)
--   /requests -> {"binance": n, ...}: the requests each mock has answered
local sluice = require "sluice"
local server = require "sluice.server"

local NAMES = { "binance", "bybit", "bitget", "gate", "htx" }

local out = os.getenv("MOCKS_FILE")
if not out or out == "" then error("exchange_mocks.lua: set MOCKS_FILE (where to write the URLs)", 0) end

local mocks, lines = {}, {}
for _, name in ipairs(NAMES) do
  local m = require("sluice.mock." .. name).start({ seed = 7 })
  mocks[name] = m
  lines[#lines + 1] = name .. " " .. m.url
end

local control = assert(server.listen({ port = 0 }))

-- the mock a request names, or nil and the 400 answer
local function target(req)
  local m = mocks[req.query.exchange or ""]
  if not m then return nil, { error = "exchange must be one of " .. table.concat(NAMES, ", ") } end
  return m
end

control:route("GET", "/inject", function(req)
  local m, err = target(req)
  if not m then return 400, err end
  local status, count = tonumber(req.query.status), tonumber(req.query.count or "1")
  if not status or not count then return 400, { error = "status and count must be numbers" } end
  m:inject({ status = status, count = count })
  return 200, { injected = req.query.exchange, status = status, count = count }
end)

control:route("GET", "/reset", function(req)
  local m, err = target(req)
  if not m then return 400, err end
  m:reset()
  return 200, { reset = req.query.exchange }
end)

control:route("GET", "/requests", function()
  local counts = {}
  for name, m in pairs(mocks) do counts[name] = m.requests end
  return 200, counts
end)

lines[#lines + 1] = "control http://127.0.0.1:" .. control.port
local f = assert(io.open(out .. ".tmp", "w"))
f:write(table.concat(lines, "\n"), "\n")
f:close()
assert(os.rename(out .. ".tmp", out))

sluice.on_shutdown(function()
  for _, m in pairs(mocks) do m:stop() end
  control:close()
end)
