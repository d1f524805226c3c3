-- quickstart.lua -- the Binance klines collector, end to end.
--
--   sluice run examples/quickstart.lua            # offline: a mock exchange
--   SLUICE_LIVE=1 sluice run examples/quickstart.lua   # api.binance.com
--
-- This file is a configuration: it returns a table listing collectors, and
-- `sluice run` runs them until shutdown. Offline (the default) it first
-- starts sluice's mock Binance in this same process, on a free loopback
-- port, and points the collector at it, so the demo needs no network. It
-- collects 1-second candles for two symbols every 2 seconds into
-- quickstart.db (SQLite), prints what landed, and stops after 7 seconds
-- (Ctrl-C stops it earlier; run it again and it continues where it left off).
local sluice = require "sluice"
local log = require "sluice.log"

local live = os.getenv("SLUICE_LIVE") == "1"
local base_url = "https://api.binance.com"
if not live then
  local mock = require("sluice.mock.binance").start({})
  base_url = mock.url
  log.info("offline demo: collecting from sluice's mock Binance", { url = base_url })
  sluice.on_shutdown(function() mock:stop() end)
end

local db_path = os.getenv("SLUICE_QUICKSTART_DB") or "quickstart.db"

-- Once the collector has run a few times, show what is in the database.
sluice.after(7, function(premature)
  local app = require("sluice.app").current
  local rows = app.store:query([[
    SELECT raw_symbol AS symbol, COUNT(*) AS candles, MIN(open_time) AS first, MAX(open_time) AS last,
           ROUND(AVG(close), 2) AS avg_close
    FROM klines GROUP BY raw_symbol ORDER BY raw_symbol]])
  for _, r in ipairs(rows or {}) do
    print(string.format("%-8s %4d candles  %s .. %s  avg close %.2f", r.symbol, r.candles,
      os.date("!%H:%M:%S", r.first / 1000), os.date("!%H:%M:%S", r.last / 1000), r.avg_close))
  end
  local health = app.collectors.binance_klines:health_check()
  print(string.format("health: %s; requests: %d ok / %d total; breaker %s; db %s",
    health.status, health.statistics.successful_requests, health.statistics.total_requests,
    health.circuit_breaker.state, db_path))
  if not premature then sluice.shutdown() end
end)

return {
  store = db_path,
  log = { level = "info" },
  collectors = {
    {
      use = "binance_klines",
      base_url = base_url,
      symbols = { "BTCUSDT", "ETHUSDT" },
      candle = "1s",
      limit = 60,
      interval = 2,
    },
  },
}
