--- soak/mock.lua -- the upstream the soak's collectors poll, in a sluice
-- process of its own (so its memory is not the soak's). Run it with
-- `sluice run tests/bench/soak/mock.lua`; MOCK_FILE in the environment
-- names where to write its URL (written whole, by a rename, once it
-- listens); MOCK_PERIOD (seconds, default 60) is the length of one fault
-- cycle. It runs until SIGTERM.
--
-- GET /item/<id> -> {"id": id, "seq": n, "value": x} (about 100 bytes),
-- except while a fault phase of the cycle is on (phase = where the wall
-- clock is in the cycle, as a fraction):
--   0.55-0.65  5xx storm: every request 503
--   0.65-0.75  429 with Retry-After: 1 for half the ids
--   0.75-0.85  timeouts: one request in three held 3 s (the collectors
--              give up after 1 s)
--   0.85-0.95  resets: one request in three closed unanswered
--   otherwise  one request in a hundred answers 500
-- GET /stats -> {"ok": n, "e500": n, "e503": n, "e429": n, "held": n,
-- "reset": n}: what it has answered.
local sluice = require "sluice"
local server = require "sluice.server"

local out = os.getenv("MOCK_FILE")
if not out or out == "" then error("soak/mock.lua: set MOCK_FILE (where to write the URL)", 0) end
local period = tonumber(os.getenv("MOCK_PERIOD") or "60")

local srv = assert(server.listen({ port = 0, max_connections = 4096, max_in_flight = 4096 }))
local counts = { ok = 0, e500 = 0, e503 = 0, e429 = 0, held = 0, reset = 0 }
local seq = 0

-- a cheap hash of the id, so a fault picks the same half of the ids
local function hash(s)
  local h = 0
  for i = 1, #s do h = (h * 31 + s:byte(i)) % 65536 end
  return h
end

srv:route("GET", "/item/*", function(req)
  seq = seq + 1
  local id = req.path:sub(7)
  local phase = (sluice.time() % period) / period
  if phase >= 0.55 and phase < 0.65 then
    counts.e503 = counts.e503 + 1
    return 503, { error = "storm" }
  elseif phase >= 0.65 and phase < 0.75 and hash(id) % 2 == 0 then
    counts.e429 = counts.e429 + 1
    return 429, { error = "slow down" }, { ["Retry-After"] = "1" }
  elseif phase >= 0.75 and phase < 0.85 and seq % 3 == 0 then
    counts.held = counts.held + 1
    sluice.sleep(3)
  elseif phase >= 0.85 and phase < 0.95 and seq % 3 == 0 then
    counts.reset = counts.reset + 1
    req:abort()
    return
  elseif seq % 100 == 0 then
    counts.e500 = counts.e500 + 1
    return 500, { error = "oops" }
  end
  counts.ok = counts.ok + 1
  return 200, { id = id, seq = seq, value = (seq % 1000) / 10 }
end)

srv:route("GET", "/stats", function() return 200, counts end)

local f = assert(io.open(out .. ".tmp", "w"))
f:write("http://127.0.0.1:", srv.port, "\n")
f:close()
assert(os.rename(out .. ".tmp", out))

sluice.on_shutdown(function() srv:close() end)
