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
-- migrate(db) -> true when it migrated, false when there was nothing to do:
--   brings a `klines` table in the layout binance_klines wrote before the
--   unified tables (symbol, interval, open_time and real columns, Binance
--   spot only) to the unified one, in place and in one transaction, every
--   row kept: exchange "binance", market "spot", raw_symbol the stored
--   symbol, symbol its unified form (BTCUSDT -> BTC/USDT, by Binance's quote
--   assets; a symbol no quote asset ends is kept as it is), the doubles as
--   the shortest decimal that reads back as the same double. Raises (the
--   transaction rolled back, the old table intact) when a row would not fit
--   or the counts differ. Every exchange collector and binance_klines run
--   it before defining their tables (collector.define's migrate), so
--   whichever starts first migrates.
-- Owns no state; nothing here yields.
local bignum = require "sluice.bignum"
local json = require "sluice.json"
local book = require "sluice.exchange.book"
local log = require "sluice.log"

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

-- Binance's quote assets, longest first where one ends another (FDUSD
-- before USD...).
local QUOTES = { "FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USDP", "AEUR", "EURI", "DAI", "BTC", "ETH",
  "BNB", "EUR", "TRY", "BRL", "JPY", "GBP", "AUD", "RUB", "UAH", "ZAR", "IDR", "PLN", "RON", "ARS",
  "MXN", "COP", "CZK", "XRP", "TRX", "DOGE", "DOT", "SOL", "PAX", "UST" }

--- unified_binance(raw) -> "BASE/QUOTE" for a Binance spot symbol, or raw
-- when no quote asset ends it.
function _M.unified_binance(raw)
  for _, q in ipairs(QUOTES) do
    if #raw > #q and raw:sub(-#q) == q then return raw:sub(1, -#q - 1) .. "/" .. q end
  end
  return raw
end

local LEGACY = "klines_before_unified"
local BATCH = 5000
local LEGACY_DECIMALS = { "open", "high", "low", "close", "volume", "quote_volume",
  "taker_buy_base_volume", "taker_buy_quote_volume" }

local function copy_legacy(db)
  local total = db:query("SELECT COUNT(*) AS n FROM " .. LEGACY)[1].n
  local copied, last = 0, nil
  repeat
    local rows, err
    local sel = "SELECT * FROM " .. LEGACY
    if last then
      rows, err = db:query(sel .. " WHERE (symbol, interval, open_time) > (?, ?, ?)"
        .. " ORDER BY symbol, interval, open_time LIMIT " .. BATCH, last.symbol, last.interval, last.open_time)
    else
      rows, err = db:query(sel .. " ORDER BY symbol, interval, open_time LIMIT " .. BATCH)
    end
    if not rows then error("reading the old klines: " .. tostring(err), 0) end
    local out = {}
    for i, r in ipairs(rows) do
      local n = { exchange = "binance", market = "spot", symbol = _M.unified_binance(r.symbol),
        raw_symbol = r.symbol, interval = r.interval, open_time = r.open_time, close_time = r.close_time,
        trades = r.trades }
      for _, k in ipairs(LEGACY_DECIMALS) do n[k] = r[k] end
      out[i] = n
    end
    if #out > 0 then
      local inserted, _, _, rejected = db:upsert("klines", out)
      if not inserted then error("writing the unified klines: " .. tostring(rejected), 0) end
      if rejected > 0 then
        local first = db:rejects("klines")
        error(rejected .. " old kline(s) do not fit the unified table, the last: "
          .. tostring(first[#first] and first[#first].reason), 0)
      end
      copied = copied + #out
    end
    last = rows[#rows]
  until #rows < BATCH
  local now = db:query("SELECT COUNT(*) AS n FROM klines")[1].n
  if copied ~= total or now ~= total then
    error("migrating klines: " .. total .. " old rows, " .. now .. " in the unified table", 0)
  end
  return total
end

function _M.migrate(db)
  local cols = db:query("PRAGMA table_info(klines)")
  if not cols or #cols == 0 then return false end
  local has = {}
  for _, c in ipairs(cols) do has[c.name] = true end
  if has.exchange then return false end
  if not (has.symbol and has.interval and has.open_time and has.close) then
    error("table klines has a layout sluice does not know (neither binance_klines' old one nor the "
      .. "unified one): rename it", 0)
  end
  local n, err = db:transaction(function()
    assert(db:exec("ALTER TABLE klines RENAME TO " .. LEGACY))
    local def = _M.tables().klines
    def.name = "klines"
    assert(db:define(def))
    local total = copy_legacy(db)
    assert(db:exec("DROP TABLE " .. LEGACY))
    return total
  end)
  if not n then error("migrating klines: " .. tostring(err), 0) end
  log.info("table klines migrated to the unified layout", { rows = n })
  return true
end

--- NAMES: the unified tables' names, sorted.
_M.NAMES = { "funding_current", "funding_rates", "klines", "order_books", "tickers" }

return _M
