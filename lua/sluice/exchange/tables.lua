--- sluice.exchange.tables: the unified tables every exchange collector
-- writes, so that one query compares exchanges.
--
-- Every row has exchange (the adapter's name), market ("spot", "linear",
-- "inverse"), symbol (ccxt's unified form: "BTC/USDT:USDT") and raw_symbol
-- (the exchange's: "BTCUSDT"). Prices, sizes, volumes and rates are
-- decimal columns (exact: the exchange's own text, never a double); times
-- are integer epoch milliseconds; a field the exchange does not give is
-- absent (NULL).
--
--   tickers          (exchange, market, symbol, ts): last, bid, ask,
--                    bid_size, ask_size, open, high, low, base_volume,
--                    quote_volume, mark, index, open_interest
--   funding_rates    (exchange, market, symbol, funding_time): settled
--                    rates -- rate, mark, index
--   funding_current  (exchange, market, symbol, ts): the polled rate --
--                    rate, predicted_rate, next_funding_time, mark, index,
--                    interval_hours
--   order_books      (exchange, market, symbol, ts): one snapshot -- sequence,
--                    bids, asks (JSON [[price, size], ...], exact text),
--                    best_bid, best_ask, spread_bps, bid/ask_depth_10bps,
--                    bid/ask_depth_1pct, imbalance (sluice.exchange.book);
--                    a book that fails book.check is a reject with its reason
--   klines           (exchange, market, symbol, interval, open_time):
--                    close_time, open, high, low, close, volume (base),
--                    quote_volume, trades, taker_buy_base_volume,
--                    taker_buy_quote_volume; high below low is a reject
--
-- tables() -> a fresh {name = definition} for collector.define's tables.
-- Owns no state; nothing here yields.
local bignum = require "sluice.bignum"
local json = require "sluice.json"
local book = require "sluice.exchange.book"

local _M = {}

local KEY = { "exchange", "market", "symbol" }

local function with_key(extra)
  local k = {}
  for i, v in ipairs(KEY) do k[i] = v end
  for _, v in ipairs(extra) do k[#k + 1] = v end
  return k
end

local function columns(specific)
  local c = { exchange = "text", market = "text", symbol = "text", raw_symbol = "text" }
  for k, v in pairs(specific) do c[k] = v end
  return c
end

local function decimals(c, names)
  for _, n in ipairs(names) do c[n] = "decimal" end
  return c
end

-- A side of a row's book: the table given, or JSON text (a row upserted
-- from elsewhere).
local function side(v)
  if type(v) == "string" then return json.decode(v) end
  return v
end

local function check_book(row)
  return book.check(side(row.bids), side(row.asks))
end

local function check_kline(row)
  if bignum.cmp(row.high, row.low) < 0 then
    return false, "high " .. tostring(row.high) .. " below low " .. tostring(row.low)
  end
  return true
end

function _M.tables()
  return {
    tickers = {
      columns = decimals(columns({ ts = "integer" }), { "last", "bid", "ask", "bid_size", "ask_size",
        "open", "high", "low", "base_volume", "quote_volume", "mark", "index", "open_interest" }),
      key = with_key({ "ts" }),
      required = { "raw_symbol" },
    },
    funding_rates = {
      columns = decimals(columns({ funding_time = "integer" }), { "rate", "mark", "index" }),
      key = with_key({ "funding_time" }),
      required = { "raw_symbol", "rate" },
    },
    funding_current = {
      columns = decimals(columns({ ts = "integer", next_funding_time = "integer" }),
        { "rate", "predicted_rate", "mark", "index", "interval_hours" }),
      key = with_key({ "ts" }),
      required = { "raw_symbol" },
    },
    order_books = {
      columns = decimals(columns({ ts = "integer", sequence = "integer", bids = "json", asks = "json" }),
        { "best_bid", "best_ask", "spread_bps", "bid_depth_10bps", "ask_depth_10bps",
          "bid_depth_1pct", "ask_depth_1pct", "imbalance" }),
      key = with_key({ "ts" }),
      required = { "raw_symbol", "bids", "asks" },
      validate = check_book,
    },
    klines = {
      columns = decimals(columns({ interval = "text", open_time = "integer", close_time = "integer",
        trades = "integer" }), { "open", "high", "low", "close", "volume", "quote_volume",
        "taker_buy_base_volume", "taker_buy_quote_volume" }),
      key = with_key({ "interval", "open_time" }),
      required = { "raw_symbol", "open", "high", "low", "close" },
      validate = check_kline,
    },
  }
end

--- NAMES: the unified tables' names, sorted.
_M.NAMES = { "funding_current", "funding_rates", "klines", "order_books", "tickers" }

return _M
