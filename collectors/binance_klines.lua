--- collectors.binance_klines: Binance spot candles (GET /api/v3/klines).
--
--   { use = "binance_klines", symbols = { "BTCUSDT", "ETHUSDT" }, candle = "1m" }
--
-- Every run fetches, per symbol, the candles since the last one stored (the
-- last one again, since it may still have been open), or the latest
-- `limit` on the first run, into the unified table `klines` of the
-- exchange collectors (sluice.exchange.tables), keyed by (exchange,
-- market, symbol, interval, open_time): exchange "binance", market "spot",
-- symbol ccxt's unified form ("BTC/USDT"), raw_symbol Binance's
-- ("BTCUSDT"); `interval` holds the candle string ("1m"), open_time and
-- close_time Binance's milliseconds; prices and volumes are decimals, the
-- text Binance sent. Re-fetching a candle updates it in place.
--
-- A database written before the unified tables (klines keyed by symbol,
-- interval, open_time, real columns) is migrated in place when the
-- collector starts, every row kept (sluice.exchange.tables.migrate).
--
-- Binance counts request weight per IP and minute (X-MBX-USED-WEIGHT-1M,
-- 6000 per minute for spot; klines weigh 2): the limiter declares that pool
-- and follows the header; a 429 pauses for Retry-After, a 418 (IP ban)
-- opens the breaker until the ban ends. base_url points the collector at
-- any Binance-compatible server (a testnet, a mirror, the mock exchange).
local collector = require "sluice.collector"
local xtables = require "sluice.exchange.tables"

local CANDLES = {
  ["1s"] = 1, ["1m"] = 60, ["3m"] = 180, ["5m"] = 300, ["15m"] = 900, ["30m"] = 1800,
  ["1h"] = 3600, ["2h"] = 7200, ["4h"] = 14400, ["6h"] = 21600, ["8h"] = 28800,
  ["12h"] = 43200, ["1d"] = 86400, ["3d"] = 259200, ["1w"] = 604800,
}

local KLINE_WEIGHT = 2

local function to_row(symbol, candle, k)
  return {
    exchange = "binance",
    market = "spot",
    symbol = xtables.unified_binance(symbol),
    raw_symbol = symbol,
    interval = candle,
    open_time = k[1],
    open = k[2],
    high = k[3],
    low = k[4],
    close = k[5],
    volume = k[6],
    close_time = k[7],
    quote_volume = k[8],
    trades = k[9],
    taker_buy_base_volume = k[10],
    taker_buy_quote_volume = k[11],
  }
end

local function check_options(self)
  local o = self.options
  if type(o.symbols) ~= "table" or #o.symbols == 0 then
    error("option 'symbols' must be a non-empty list of symbols", 0)
  end
  for i, s in ipairs(o.symbols) do
    if type(s) ~= "string" or not s:match("^[A-Z0-9]+$") then
      error("option 'symbols'[" .. i .. "] must be an upper-case symbol like BTCUSDT, got "
        .. tostring(s), 0)
    end
  end
  if not CANDLES[o.candle] then
    error("option 'candle' must be a Binance interval (1s, 1m, 3m, 5m, 15m, 30m, 1h, 2h, "
      .. "4h, 6h, 8h, 12h, 1d, 3d, 1w), got " .. tostring(o.candle), 0)
  end
  if not (o.limit >= 1 and o.limit <= 1000 and o.limit == math.floor(o.limit)) then
    error("option 'limit' must be an integer in [1, 1000], got " .. tostring(o.limit), 0)
  end
end

-- Fetches candles of one symbol with open_time in [from_ms, to_ms] (either
-- may be nil), following pages of `limit` (default: the option).
local function fetch(self, symbol, from_ms, to_ms, limit)
  local o = self.options
  limit = limit or o.limit
  local step = CANDLES[o.candle] * 1000
  local rows = {}
  local cursor = from_ms
  repeat
    local data, err = self:get("/api/v3/klines", {
      query = { symbol = symbol, interval = o.candle, limit = limit,
        startTime = cursor, endTime = to_ms },
      cost = KLINE_WEIGHT,
    })
    if not data then
      return nil, symbol .. ": " .. tostring(err)
    end
    if type(data) ~= "table" then
      return nil, symbol .. ": unexpected response (not a list of klines)"
    end
    for _, k in ipairs(data) do
      rows[#rows + 1] = to_row(symbol, o.candle, k)
    end
    -- a full page means there may be more after it (only when a start is
    -- given: without one, Binance returns the latest page)
    local last = data[#data]
    cursor = last and last[1] + step
  until not from_ms or #data < limit or (to_ms and cursor > to_ms)
  return rows
end

return collector.define({
  name = "binance_klines",
  description = "Binance spot klines (candles) for a list of symbols",
  base_url = "https://api.binance.com",
  interval = 60,
  jitter = 0.05,
  timeout = 10,
  limiter = {
    rate = 10,
    pools = { { name = "ip_weight", limit = 6000, window = 60, weight_window = 60 } },
  },
  breaker = { failure_threshold = 5, timeout = 300 },
  retry = { strategy = "adaptive", max_attempts = 3, base_delay = 1, max_delay = 30 },
  options = { symbols = { "BTCUSDT" }, candle = "1m", limit = 500 },
  -- the exchange collectors' unified klines (high below low is a reject)
  tables = { klines = xtables.tables().klines },
  migrate = function(db) xtables.migrate(db) end,

  -- Binance reports errors as {"code": -1121, "msg": "Invalid symbol."}:
  -- the status decides what happens (429 waits, 418 opens the breaker), the
  -- body says why; an error body on a 2xx is a failure.
  classify = function(_, res)
    local body = res:json()
    if type(body) == "table" and body.code and body.msg and body[1] == nil then
      local msg = "Binance error " .. tostring(body.code) .. ": " .. tostring(body.msg)
      return res.status < 400 and "failure" or nil, msg
    end
  end,

  init = function(self)
    check_options(self)
  end,

  collect = function(self)
    local rows, errors = {}, {}
    for _, symbol in ipairs(self.options.symbols) do
      local since
      if self.store then
        local last = self.store:query("SELECT MAX(open_time) AS t FROM klines WHERE exchange = 'binance' "
          .. "AND market = 'spot' AND symbol = ? AND interval = ?",
          xtables.unified_binance(symbol), self.options.candle)
        since = last and last[1] and last[1].t
      end
      local got, err = fetch(self, symbol, since, nil)
      if got then
        for _, r in ipairs(got) do rows[#rows + 1] = r end
      else
        errors[#errors + 1] = err
      end
    end
    if #errors > 0 and #errors == #self.options.symbols then
      error(table.concat(errors, "; "), 0)
    elseif #errors > 0 then
      self.log.warning("some symbols failed", { errors = table.concat(errors, "; ") })
    end
    return { klines = rows }
  end,

  -- Backfill: one window of history per request (1000 candles, Binance's
  -- maximum page), one symbol per window (the symbols are the partitions),
  -- and one row expected per candle.
  partitions = function(self)
    return self.options.symbols
  end,
  backfill_step = function(self)
    return CANDLES[self.options.candle] * 1000
  end,
  expect = function(self)
    return { every = CANDLES[self.options.candle], time_column = "open_time", unit = "ms",
      partition = "raw_symbol", where = { exchange = "binance", market = "spot", interval = self.options.candle },
      table = "klines" }
  end,
  beginning_date = "2017-08-17", -- Binance spot's first candles

  backfill = function(self, from, to, symbol)
    local rows = {}
    for _, s in ipairs(symbol and { symbol } or self.options.symbols) do
      local got, err = fetch(self, s, math.floor(from * 1000), math.floor(to * 1000) - 1, 1000)
      if not got then error(err, 0) end
      for _, r in ipairs(got) do rows[#rows + 1] = r end
    end
    return { klines = rows }
  end,
})
