--- exchanges_probe.lua: reads a running sluice's admin API for
-- exchanges.sh and prints what it says as lines a shell script greps:
--
--   sluice run exchanges_probe.lua --control none -- status http://127.0.0.1:PORT
--     <exchange> breaker <closed|open|half_open>
--     <exchange> status <healthy|degraded|failed|circuit_open>
--     <exchange> <dataset> rows <n>
--     <collector> <dataset> runs <completed> failed <failed>
--     summary <total|healthy|degraded|failed>_exchanges <n>
--   sluice run exchanges_probe.lua --control none -- health http://127.0.0.1:PORT
--     http <code>
--     status <status>
--     reason <text>            (one line each)
--
-- Lines are sorted, so two runs compare line by line. It exits 1 (with the
-- error on stderr) when the admin API does not answer as expected.
local http = require "sluice.http"
local json = require "sluice.json"

local what, base = ...
if not (what == "status" or what == "health") or not base then
  error("usage: exchanges_probe.lua status|health ADMIN_URL", 0)
end

local res, err = http.get(base .. "/" .. what, { timeout = 5 })
if not res then error(what .. ": " .. tostring(err), 0) end
local body, derr = json.decode(res.body)
if type(body) ~= "table" then error(what .. ": not JSON: " .. tostring(derr or res.body), 0) end

local lines = {}
local function add(...)
  local parts = { ... }
  for i, p in ipairs(parts) do parts[i] = tostring(p) end
  lines[#lines + 1] = table.concat(parts, " ")
end

if what == "health" then
  add("http", res.status)
  add("status", body.status)
  for _, r in ipairs(body.reasons or {}) do add("reason", r) end
else
  if res.status ~= 200 then error("status: HTTP " .. res.status, 0) end
  local ex = body.exchanges
  if type(ex) ~= "table" or type(ex.exchanges) ~= "table" then error("status: no exchanges", 0) end
  for _, k in ipairs({ "total_exchanges", "healthy_exchanges", "degraded_exchanges", "failed_exchanges" }) do
    add("summary", k, ex[k])
  end
  for name, e in pairs(ex.exchanges) do
    add(name, "breaker", e.circuit_breaker)
    add(name, "status", e.status)
    for ds, d in pairs(e.datasets or {}) do add(name, ds, "rows", d.rows) end
  end
  for name, c in pairs(body.collectors or {}) do
    for ds, d in pairs(c.datasets or {}) do
      add(name, ds, "runs", d.collections_completed or 0, "failed", d.collections_failed or 0)
    end
  end
end
table.sort(lines)
io.write(table.concat(lines, "\n"), "\n")
