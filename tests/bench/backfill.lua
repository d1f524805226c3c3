-- backfill.lua -- sluice.backfill throughput against the in-process mock
-- Binance, with the collector's limiter pinned at a request rate.
--   /usr/bin/time -f "%M KiB" build/sluice run --lua-path tests/lua tests/bench/backfill.lua \
--     [-- CANDLES SYMBOLS RATE PARALLEL PATH]
-- Backfills CANDLES 1m candles (default 100,000) split over SYMBOLS
-- (default 2) with binance_klines (1000 candles per request and window)
-- into a fresh SQLite file, the limiter at RATE req/s (rate = max_rate,
-- default 200), PARALLEL windows at once (default 4). Prints the wall time
-- against the quota-limited minimum (requests / RATE), rows/s and the peak
-- RSS so far (VmHWM; /usr/bin/time's figure covers the whole process).
-- Prints figures; not a test.
local sluice = require "sluice"
local collector = require "sluice.collector"
local store = require "sluice.store"
local mock = require "sluice.mock.binance"
local backfill = require "sluice.backfill"
local log = require "sluice.log"
local fx = require "support.store"

local a1, a2, a3, a4, a5 = ...
local candles = tonumber(a1) or 100000
local nsym = tonumber(a2) or 2
local rate = tonumber(a3) or 200
local parallel = tonumber(a4) or 4
local path = a5 or fx.tmpdb()
local remove_db = fx.remove_db
remove_db(path)

local ALL = { "BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT" }
local symbols = {}
for i = 1, nsym do symbols[i] = ALL[i] end
local per_symbol = math.floor(candles / nsym)
local from = 1704060000                             -- 2023-12-31T22:40Z, a window boundary
local to = from + per_symbol * 60

local function vm_hwm()
  local f = io.open("/proc/self/status")
  if not f then return nil end
  local kb = f:read("*a"):match("VmHWM:%s*(%d+)")
  f:close()
  return tonumber(kb)
end

log.output("/dev/null")
local m = mock.start({ seed = 1 })
local db = assert(store.open(path))
local c = collector.new(require "collectors.binance_klines", {
  base_url = m.url, symbols = symbols, candle = "1m",
  limiter = { rate = rate, max_rate = rate },
}, { store = db })

local plan = backfill.plan({ collector = c, from = from, to = to })
local rss0 = vm_hwm()
local t0 = sluice.now()
local st = backfill.wait(backfill.start({ collector = c, from = from, to = to, parallel = parallel }))
local wall = sluice.now() - t0
local stored = db:query("SELECT COUNT(*) AS n FROM klines")[1].n
m:stop()
db:close()
log.output("-")

local min = st.requests / rate
print(string.format("sluice.backfill benchmark: %d x %d 1m candles from the in-process mock, "
  .. "limiter %d req/s, parallel %d, SQLite file %s", nsym, per_symbol, rate, parallel, path))
print(string.format("  plan: %d windows, estimate %d requests, %d rows, %.2f s",
  #plan.windows, plan.estimate.requests, plan.estimate.rows or 0, plan.estimate.seconds or 0))
print(string.format("  result: %s, %d windows done, %d failed, %d rows (%d stored), %d requests",
  st.state, st.windows_done, st.windows_failed, st.rows, stored, st.requests))
print(string.format("  wall time            %.3f s", wall))
print(string.format("  quota-limited min    %.3f s  (%d requests / %d req/s)", min, st.requests, rate))
print(string.format("  wall / min           %.2f", wall / min))
print(string.format("  rows/s               %.0f", st.rows / wall))
print(string.format("  requests/s           %.1f", st.requests / wall))
require("support.bench").figure("backfill.wall_vs_quota_min", wall / min, "ratio")
require("support.bench").figure("backfill.rows_per_s", st.rows / wall, "rows/s")
if rss0 then
  print(string.format("  peak RSS (VmHWM)     %.1f MiB (%.1f MiB before the backfill)", vm_hwm() / 1024, rss0 / 1024))
  require("support.bench").figure("backfill.peak_rss", vm_hwm() / 1024, "MiB")
end
remove_db(path)
