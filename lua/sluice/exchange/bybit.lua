--- sluice.exchange.bybit: the Bybit v5 market API as a sluice.exchange adapter.
--
--   { use = "bybit", symbols = { "BTC/USDT", "BTC/USDT:USDT", "BTC/USD:BTC" } }
--
-- Markets and raw symbols (Bybit v5 "category"): spot "BTC/USDT" ->
-- BTCUSDT; linear "BTC/USDT:USDT" -> BTCUSDT, USDC perpetuals "BTC/USDC:USDC"
-- -> BTCPERP (Bybit's names for them); inverse "BTC/USD:BTC" -> BTCUSD.
-- Endpoints (all GET, public):
--   /v5/market/tickers          tickers (one request per market when more than
--                               one symbol is wanted: Bybit answers a whole
--                               category) and funding (fundingRate,
--                               nextFundingTime, fundingIntervalHour)
--   /v5/market/orderbook        order_book (limit = depth, at most 1000)
--   /v5/market/kline            klines, by start/end windows of `limit`
--                               candles; Bybit lists them newest first
--   /v5/market/funding/history  funding_history, paged backwards by endTime
-- Every reply is HTTP 200 with retCode/retMsg (the recordings ccxt keeps
-- write retCode as the string "0"): 10006 "Too many visits!" is the rate
-- limit (throttled: the limiter backs off as for a 429); 10001 about the
-- symbol ("params error: Symbol Is Invalid", "Not supported symbols") and
-- 170121 "Invalid symbol." are an unknown symbol (ignored: the symbol is
-- skipped, logged once, and no breaker failure); 10000 (server timeout) and
-- 10016 (server error) are retried failures; any other code a failure not
-- retried. HTTP 403 is Bybit's IP ban ("access too frequent": 600 requests
-- per 5 s per IP, lifted after 10 minutes): banned, the breaker stays open.
-- X-Bapi-Limit, -Status and -Reset-Timestamp are read by the limiter itself.
--
-- Volumes: Bybit gives linear volumes in base coin and turnover in quote
-- coin, but inverse volumes in contracts (USD) and turnover in the base coin;
-- rows keep the unified meaning (base_volume in the base coin), so inverse
-- rows swap the two. Every price, size and rate is the text Bybit sent.
local json = require "sluice.json"

local null = json.null
local tonumber, tostring, type, ipairs = tonumber, tostring, type, ipairs
local floor, min, max = math.floor, math.min, math.max

local _M = {
  name = "bybit",
  base_urls = { spot = "https://api.bybit.com", linear = "https://api.bybit.com",
                inverse = "https://api.bybit.com" },
  markets = { spot = true, linear = true, inverse = true },
  -- unified candle -> Bybit's interval (monthly "M" candles are left out:
  -- they cannot be paged by fixed windows)
  candles = { ["1m"] = "1", ["3m"] = "3", ["5m"] = "5", ["15m"] = "15", ["30m"] = "30",
              ["1h"] = "60", ["2h"] = "120", ["4h"] = "240", ["6h"] = "360",
              ["12h"] = "720", ["1d"] = "D", ["1w"] = "W" },
  -- Bybit's public quota is per IP: 600 requests in any 5 s. Go at a
  -- fifth of it by default, one request per call (market data weighs 1).
  -- X-Bapi-Limit counts per second (window = 1 s, how the limiter reads
  -- a quota header that states no window of its own).
  -- A 403 ban is lifted after 10 minutes: the breaker stays open that long.
  limiter = { rate = 20, max_rate = 100, window = 1, ban_time = 600,
              pools = { { name = "ip", limit = 600, window = 5 } } },
}

local MS = { ["1m"] = 60e3, ["3m"] = 180e3, ["5m"] = 300e3, ["15m"] = 900e3, ["30m"] = 1800e3,
             ["1h"] = 3600e3, ["2h"] = 7200e3, ["4h"] = 14400e3, ["6h"] = 21600e3,
             ["12h"] = 43200e3, ["1d"] = 86400e3, ["1w"] = 604800e3 }
-- Weekly candles open on Monday 00:00 UTC; the epoch was a Thursday.
local OFFSET = { ["1w"] = 4 * 86400e3 }

local KLINE_LIMIT = 1000      -- Bybit's maximum page of candles
local FUNDING_LIMIT = 200     -- and of settled funding rates
local BOOK_LIMIT = 1000       -- and of levels a side

--- raw_symbol(market, unified) -> Bybit's symbol, or nil, err
function _M.raw_symbol(market, unified)
  if type(unified) ~= "string" then
    error("sluice.exchange.bybit.raw_symbol: bad argument #2 (string expected, got "
      .. type(unified) .. ")", 2)
  end
  local base, quote, settle = unified:match("^([%w]+)/([%w]+):?([%w]*)$")
  if not base then return nil, "not a unified symbol: " .. unified end
  if market == "spot" and settle == "" then return base .. quote end
  if market == "linear" and settle == quote and quote ~= "USD" then
    return quote == "USDC" and base .. "PERP" or base .. quote
  end
  if market == "inverse" and quote == "USD" and settle == base then return base .. quote end
  return nil, "not a Bybit " .. tostring(market) .. " perpetual or pair: " .. unified
end

-- retCode as text: Bybit sends a number, ccxt's recordings a string.
local function code_of(doc)
  if type(doc) ~= "table" then return nil end
  local code = doc.retCode
  if code == nil or code == null then return nil end
  if type(code) == "number" then return ("%d"):format(code) end
  return tostring(code)
end

local function unknown_symbol(code, msg)
  if code == "170121" then return true end
  return code == "10001" and type(msg) == "string" and msg:lower():find("symbol", 1, true) ~= nil
end

local RETRIED = { ["10000"] = true, ["10016"] = true }

--- classify(c, res) -> verdict, message [, retryable] (sluice.collector.request)
function _M.classify(_, res)
  if res.status == 403 then
    return "banned", "Bybit HTTP 403: access too frequent (IP banned for at least 10 minutes)"
  end
  if res.status ~= 200 then return nil end
  local ctype = res.headers["content-type"] or ""
  if not ctype:find("json", 1, true) then return nil end
  local doc = res:json()
  local code = code_of(doc)
  if code == nil or code == "0" then return nil end
  local message = "Bybit error " .. code .. ": " .. tostring(doc.retMsg)
  if code == "10006" then return "throttled", message end
  if unknown_symbol(code, doc.retMsg) then return "ignored", message end
  return "failure", message, RETRIED[code] == true
end

-- A decimal value as Bybit wrote it, or nil where it said nothing ("").
local function dec(v)
  if v == nil or v == null or v == "" then return nil end
  return v
end

-- Milliseconds: Bybit writes them as digits in strings (or numbers).
local function ms(v)
  if v == nil or v == null or v == "" then return nil end
  local n = tonumber(v)
  if n == nil or n ~= floor(n) then return nil end
  return n
end

-- data, res from c:get: the result table, or nil, err, kind; an ignored
-- reply (unknown symbol) -> false, message.
local function result_of(data, err, kind)
  if data == nil then return nil, err, kind end
  if type(data) ~= "table" then return nil, "Bybit: reply is not JSON", "protocol" end
  local code = code_of(data)
  if code ~= nil and code ~= "0" then
    return false, "Bybit error " .. code .. ": " .. tostring(data.retMsg)
  end
  if type(data.result) ~= "table" then return nil, "Bybit: reply without result", "protocol" end
  return data.result
end

local function get(ex, c, market, path, query)
  query.category = market
  local data, err, kind = c:get(ex.base(c, market) .. path, { query = query, endpoint = path })
  local result, why, k = result_of(data, err, kind)
  return result, why, k, data
end

local function list_of(result)
  local list = result.list
  if type(list) ~= "table" then return nil, "Bybit: reply without result.list", "protocol" end
  return list
end

-- A ticker object (linear/inverse or spot shape) as a `tickers` row.
local function ticker_row(ex, sym, market, t, ts)
  local base_volume, quote_volume = dec(t.volume24h), dec(t.turnover24h)
  if market == "inverse" then base_volume, quote_volume = quote_volume, base_volume end
  return ex.row(sym, {
    ts = ts,
    last = dec(t.lastPrice), bid = dec(t.bid1Price), ask = dec(t.ask1Price),
    bid_size = dec(t.bid1Size), ask_size = dec(t.ask1Size),
    open = dec(t.prevPrice24h), high = dec(t.highPrice24h), low = dec(t.lowPrice24h),
    base_volume = base_volume, quote_volume = quote_volume,
    mark = dec(t.markPrice), index = dec(t.indexPrice), open_interest = dec(t.openInterest),
  })
end

local function funding_row(ex, sym, t, ts)
  return ex.row(sym, {
    ts = ts,
    rate = dec(t.fundingRate),
    next_funding_time = ms(t.nextFundingTime),
    mark = dec(t.markPrice), index = dec(t.indexPrice),
    interval_hours = dec(t.fundingIntervalHour),
  })
end

-- The tickers of `symbols` in one market: one request with symbol= for a
-- single symbol, else the whole category once; a symbol Bybit does not
-- list is skipped.
local function each_ticker(ex, c, market, symbols, make)
  local query = {}
  if #symbols == 1 then query.symbol = symbols[1].raw end
  local result, err, kind, data = get(ex, c, market, "/v5/market/tickers", query)
  if result == false then
    if query.symbol then
      ex.skip(c, symbols[1], err)
      return {}
    end
    return nil, err, "failure"
  end
  if not result then return nil, err, kind end
  local list, lerr, lkind = list_of(result)
  if not list then return nil, lerr, lkind end
  local ts = ms(data.time)
  local by_raw = {}
  for _, t in ipairs(list) do
    if type(t) == "table" and t.symbol then by_raw[t.symbol] = t end
  end
  local rows = {}
  for _, sym in ipairs(symbols) do
    local t = by_raw[sym.raw]
    if t then
      rows[#rows + 1] = make(sym, t, ts)
    else
      ex.skip(c, sym, "Bybit does not list " .. sym.raw .. " in " .. market)
    end
  end
  return rows
end

function _M.tickers(ex, c, market, symbols)
  return each_ticker(ex, c, market, symbols, function(sym, t, ts)
    return ticker_row(ex, sym, market, t, ts)
  end)
end

function _M.funding(ex, c, market, symbols)
  if market == "spot" then return {} end
  return each_ticker(ex, c, market, symbols, function(sym, t, ts)
    return funding_row(ex, sym, t, ts)
  end)
end

local function levels(side)
  local out = {}
  if type(side) ~= "table" then return out end
  for i, l in ipairs(side) do out[i] = { l[1], l[2] } end
  return out
end

function _M.order_book(ex, c, market, sym, depth)
  local limit = min(BOOK_LIMIT, max(1, depth or 50))
  local result, err, kind = get(ex, c, market, "/v5/market/orderbook",
    { symbol = sym.raw, limit = limit })
  if result == false then
    ex.skip(c, sym, err)
    return nil, err, "ignored"
  end
  if not result then return nil, err, kind end
  if result.s ~= nil and result.s ~= sym.raw then
    return nil, "Bybit: book of " .. tostring(result.s) .. " for " .. sym.raw, "protocol"
  end
  return { ts = ms(result.ts), sequence = ms(result.u), bids = levels(result.b),
           asks = levels(result.a) }
end

local function align(candle, t)
  local iv, off = MS[candle], OFFSET[candle] or 0
  return floor((t - off) / iv) * iv + off
end

-- Candles opening in [from_ms, to_ms), a window of KLINE_LIMIT candles per
-- request (start and end both sent, so the page holds the whole window
-- whichever end Bybit counts from); each window is fetched once.
function _M.klines(ex, c, market, sym, candle, from_ms, to_ms)
  local iv = MS[candle]
  if not iv or not _M.candles[candle] then
    return nil, "Bybit has no " .. tostring(candle) .. " candles", "failure"
  end
  local rows = {}
  local start = align(candle, from_ms)
  if start < from_ms then start = start + iv end
  local swap = market == "inverse"
  while start < to_ms do
    local stop = min(start + (KLINE_LIMIT - 1) * iv, align(candle, to_ms - 1))
    local result, err, kind = get(ex, c, market, "/v5/market/kline", {
      symbol = sym.raw, interval = _M.candles[candle], start = start, ["end"] = stop,
      limit = KLINE_LIMIT })
    if result == false then
      ex.skip(c, sym, err)
      return rows
    end
    if not result then return nil, err, kind end
    local list, lerr, lkind = list_of(result)
    if not list then return nil, lerr, lkind end
    -- newest first: walk backwards so rows come out in time order
    for i = #list, 1, -1 do
      local k = list[i]
      local t = ms(k[1])
      if t and t >= start and t <= stop then
        local volume, turnover = dec(k[6]), dec(k[7])
        if swap then volume, turnover = turnover, volume end
        rows[#rows + 1] = ex.row(sym, {
          interval = candle, open_time = t, close_time = t + iv - 1,
          open = dec(k[2]), high = dec(k[3]), low = dec(k[4]), close = dec(k[5]),
          volume = volume, quote_volume = turnover,
        })
      end
    end
    start = stop + iv
  end
  return rows
end

-- Settled funding rates in [from_ms, to_ms): Bybit pages backwards from
-- endTime (newest first, FUNDING_LIMIT a page); the next page ends just
-- before the oldest rate seen, and a short page is the last.
function _M.funding_history(ex, c, market, sym, from_ms, to_ms)
  if market == "spot" then return {} end
  local out, stop = {}, to_ms - 1
  while stop >= from_ms do
    local result, err, kind = get(ex, c, market, "/v5/market/funding/history", {
      symbol = sym.raw, startTime = from_ms, endTime = stop, limit = FUNDING_LIMIT })
    if result == false then
      ex.skip(c, sym, err)
      return out
    end
    if not result then return nil, err, kind end
    local list, lerr, lkind = list_of(result)
    if not list then return nil, lerr, lkind end
    local oldest
    for _, f in ipairs(list) do
      local t = type(f) == "table" and ms(f.fundingRateTimestamp)
      if t and t >= from_ms and t <= stop and (oldest == nil or t < oldest) then
        oldest = t
        out[#out + 1] = ex.row(sym, { funding_time = t, rate = dec(f.fundingRate) })
      end
    end
    if #list < FUNDING_LIMIT or oldest == nil then break end
    stop = oldest - 1
  end
  -- oldest first, as every other dataset comes
  local rows = {}
  for i = #out, 1, -1 do rows[#rows + 1] = out[i] end
  return rows
end

return _M
