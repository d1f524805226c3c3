--- support.klines: the binance_klines collector against the mock Binance
-- (sluice.mock.binance), and the questions the backfill specs, benches and
-- integration checks ask of the candles it stored.
--
--   local klines = require "support.klines"
--   local m = require("sluice.mock.binance").start({ seed = 7 })
--   local c = klines.backfiller(m, db, { symbols = { "BTCUSDT" } })
--   klines.figures(db, "BTCUSDT")     -- {n, d (distinct), lo, hi} of its 1m candles
--   klines.checksum(db, "BTCUSDT")    -- every stored value summed, as text
--   klines.coverage(db, "done")       -- {n, rows} of sluice_backfill windows
--
-- binance_klines windows are 1000 candles (S = 60000 s for 1m) aligned to
-- multiples of the step; T0 is 2024-01-01T00:00:00Z and A the window
-- boundary before it. Nothing here yields.
local collector = require "sluice.collector"

local _M = {}

_M.T0 = 1704067200                    -- 2024-01-01T00:00:00Z
_M.S = 60000                          -- one backfill window: 1000 1m candles
_M.A = math.floor(_M.T0 / _M.S) * _M.S -- 1704060000, the window boundary before T0
_M.SYMBOLS = { "BTCUSDT", "ETHUSDT" }

local function merged(base, extra)
  local o = {}
  for k, v in pairs(base) do o[k] = v end
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

--- collector(m, db, opts) -> a binance_klines instance fetching from mock m
-- into store db (nil: none): opts over base_url = m.url and quick retries
-- (adaptive, 3 attempts, 10 to 50 ms apart, no budget).
function _M.collector(m, db, opts)
  return collector.new(require "collectors.binance_klines", merged({
    base_url = m.url,
    retry = { strategy = "adaptive", max_attempts = 3, base_delay = 0.01, max_delay = 0.05, budget = false },
  }, opts), { store = db })
end

--- backfiller(m, db, extra) -> collector(m, db, ...) with both SYMBOLS, 1m
-- candles and a limiter at 200 requests a second (up to 1000), extra over
-- those: what the backfill specs run.
function _M.backfiller(m, db, extra)
  return _M.collector(m, db, merged({ symbols = _M.SYMBOLS, candle = "1m",
    limiter = { rate = 200, max_rate = 1000 } }, extra))
end

--- one(db, sql, ...) -> the first row of a query (raises when it fails).
function _M.one(db, sql, ...)
  local rows = assert(db:query(sql, ...))
  return rows[1]
end

--- figures(db, symbol) -> {n, d, lo, hi}: the count of symbol's stored 1m
-- candles, of distinct ones, the first and last open_time (ms).
function _M.figures(db, symbol)
  local r = _M.one(db, [[SELECT COUNT(*) AS n, COUNT(DISTINCT raw_symbol || '/' || open_time) AS d,
      MIN(open_time) AS lo, MAX(open_time) AS hi FROM klines WHERE raw_symbol = ? AND interval = '1m']],
    symbol)
  return { n = r.n, d = r.d, lo = r.lo, hi = r.hi }
end

--- checksum(db, symbol) -> the sums of every column stored for symbol, as
-- text (same values, same order -> the same text to the last bit).
function _M.checksum(db, symbol)
  local r = _M.one(db, [[SELECT COUNT(*) AS n, SUM(open_time) AS t, SUM(close_time) AS ct,
      SUM(open) AS o, SUM(high) AS h, SUM(low) AS l, SUM(close) AS c, SUM(volume) AS v,
      SUM(quote_volume) AS qv, SUM(trades) AS tr, SUM(taker_buy_base_volume) AS tb,
      SUM(taker_buy_quote_volume) AS tq FROM klines WHERE raw_symbol = ?]], symbol)
  local parts = {}
  for _, k in ipairs({ "n", "t", "ct", "o", "h", "l", "c", "v", "qv", "tr", "tb", "tq" }) do
    -- a sum beyond 2^53 comes back as an exact int64_t cdata ("...LL")
    local v = r[k] or 0
    parts[#parts + 1] = type(v) == "cdata" and tostring(v) or string.format("%.17g", v)
  end
  return table.concat(parts, " ")
end

--- coverage(db, status) -> {n, rows}: the backfill windows recorded with
-- that status and the rows they hold.
function _M.coverage(db, status)
  return _M.one(db, "SELECT COUNT(*) AS n, COALESCE(SUM(rows), 0) AS rows FROM sluice_backfill"
    .. " WHERE status = ?", status)
end

return _M
