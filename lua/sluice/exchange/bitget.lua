--- sluice.exchange.bitget: the Bitget adapter of sluice.exchange (REST API v2).
--
--   { use = "bitget", symbols = { "BTC/USDT", "BTC/USDT:USDT", "BTC/USD:BTC" } }
--
-- Markets: spot (/api/v2/spot/...), linear = USDT-margined perpetuals and
-- inverse = coin-margined perpetuals (/api/v2/mix/..., productType
-- USDT-FUTURES and COIN-FUTURES). Raw symbols have no separator: BTC/USDT,
-- BTC/USDT:USDT -> BTCUSDT, BTC/USD:BTC -> BTCUSD.
--
-- Endpoints (Bitget's documentation, "Market" pages of spot and contract):
--   tickers       GET /api/v2/spot/market/tickers [symbol]: one symbol asked
--                 by name, several by one call for all and kept by name;
--                 GET /api/v2/mix/market/ticker?symbol&productType, and
--                 /api/v2/mix/market/tickers?productType for several
--   funding       GET /api/v2/mix/market/current-fund-rate [symbol]&productType
--                 (rate, next settlement, interval in hours) and the mix
--                 tickers for mark and index price (two requests per market)
--   order_book    GET /api/v2/spot/market/orderbook?symbol&type=step0&limit
--                 (at most 150 levels; prices and sizes as strings);
--                 GET /api/v2/mix/market/merge-depth?symbol&productType&limit
--                 (limit one of 1, 5, 15, 50, max; prices and sizes as JSON
--                 numbers, kept as json.decode gives them); no sequence
--   klines        GET /api/v2/{spot,mix}/market/candles?startTime&endTime&limit
--                 (1000 a page) while the window is within the endpoint's
--                 reach (30 days of 1m..30m candles, 60 of 1h, 90 of longer
--                 ones), older windows from .../history-candles?endTime&limit
--                 (200 a page). Pages are windows of exactly `limit` candles
--                 ([startTime, endTime] inclusive, endTime the last open time
--                 + 1), so whichever end Bitget counts a short answer from,
--                 each page is fetched once; rows outside the window are
--                 dropped. Spot rows are [ts, o, h, l, c, base volume, USDT
--                 volume, quote volume], mix rows [ts, o, h, l, c, base
--                 volume, quote volume].
--   funding_history GET /api/v2/mix/market/history-fund-rate?pageSize=100&pageNo:
--                 newest first and no time filter, so pages are walked from
--                 pageNo 1 until one reaches past from_ms (or is short);
--                 pages are kept 60 s in the response cache, so the windows
--                 of one backfill request each page once.
--
-- Errors: {"code": "<not 00000>", "msg": ..., "data": null} on HTTP 400/429/
-- 5xx (and possibly 200). 40034 "Parameter X does not exist" (unknown
-- symbol) and 40309 (contract removed) -> ignored, the symbol skipped;
-- HTTP 429 / code 429 and 30007 -> throttled; HTTP 403 (the WAF's IP ban)
-- -> banned; 40015, 40725, 40808, 45001 (the weekly release window, which
-- Bitget says to retry) -> failure, retried; any other code -> failure,
-- retried only on a 5xx.
-- Rate limits: each public market endpoint 20 requests/s per IP, all of them
-- 6000/min per IP (Bitget FAQ: "after the rate limit is triggered, it takes
-- 5 minutes to recover"); every answer carries x-mbx-used-remain-limit, the
-- requests left this second on that endpoint, which the limiter follows
-- (runtime/core/rlheaders.c).
local sluice = require "sluice"

local _M = {}

_M.name = "bitget"

local URL = "https://api.bitget.com"
_M.base_urls = { spot = URL, linear = URL, inverse = URL }
_M.markets = { spot = true, linear = true, inverse = true }

local PRODUCT = { linear = "USDT-FUTURES", inverse = "COIN-FUTURES" }

-- unified candle -> spot granularity, mix granularity, milliseconds, days
-- the candles endpoint reaches back (older: history-candles). 6h and longer
-- are Bitget's UTC-aligned candles (ccxt's choice too); spot has no 2h.
local CANDLES = {
  ["1m"] = { "1min", "1m", 60e3, 30 },
  ["3m"] = { "3min", "3m", 180e3, 30 },
  ["5m"] = { "5min", "5m", 300e3, 30 },
  ["15m"] = { "15min", "15m", 900e3, 30 },
  ["30m"] = { "30min", "30m", 1800e3, 30 },
  ["1h"] = { "1h", "1H", 3600e3, 60 },
  ["2h"] = { false, "2H", 7200e3, 90 },
  ["4h"] = { "4h", "4H", 14400e3, 90 },
  ["6h"] = { "6Hutc", "6Hutc", 21600e3, 90 },
  ["12h"] = { "12Hutc", "12Hutc", 43200e3, 90 },
  ["1d"] = { "1Dutc", "1Dutc", 86400e3, 90 },
  ["1w"] = { "1Wutc", "1Wutc", 604800e3, 90 },
}
-- Weekly candles open on Monday 00:00 UTC; the epoch was a Thursday.
local OFFSET = { ["1w"] = 4 * 86400e3 }

_M.candles = {}
for k, v in pairs(CANDLES) do _M.candles[k] = v[2] end

local RECENT_PAGE, HISTORY_PAGE, FUNDING_PAGE = 1000, 200, 100
-- A backfill asks funding history window by window, and Bitget pages it
-- from the newest settlement only (pageNo, no time filter): each window
-- walks from page 1, and the pages a window before fetched answer from the
-- response cache for this long, so each page is requested once.
local FUNDING_CACHE = 60

-- One pool for the IP's 6000 a minute; each market endpoint its own 20/s.
-- A ban (the WAF's 403) takes 5 minutes to recover: the breaker stays open
-- that long.
_M.limiter = {
  rate = 20, max_rate = 40, ban_time = 300,
  pools = { { name = "ip", limit = 6000, window = 60 } },
  endpoints = {},
}
for _, p in ipairs{ "/api/v2/spot/market/tickers", "/api/v2/spot/market/orderbook",
    "/api/v2/spot/market/candles", "/api/v2/spot/market/history-candles",
    "/api/v2/mix/market/ticker", "/api/v2/mix/market/tickers",
    "/api/v2/mix/market/merge-depth", "/api/v2/mix/market/candles",
    "/api/v2/mix/market/history-candles", "/api/v2/mix/market/current-fund-rate",
    "/api/v2/mix/market/history-fund-rate" } do
  _M.limiter.endpoints[p] = { rate = 20, burst = 20 }
end
_M.breaker = { failure_threshold = 5, timeout = 300 }
_M.retry = { strategy = "adaptive", max_attempts = 3, base_delay = 1, max_delay = 30 }

local IGNORED = { ["40034"] = true, ["40309"] = true }
local THROTTLED = { ["429"] = true, ["30007"] = true }
local RETRY = { ["40015"] = true, ["40725"] = true, ["40808"] = true, ["45001"] = true }

-- BASE/QUOTE -> BASEQUOTE; nil for a form Bitget's v2 symbols do not take
-- (linear perpetuals here are USDT-margined, inverse ones BASE/USD:BASE).
function _M.raw_symbol(market, unified)
  local base, quote, settle = tostring(unified):match("^(%w+)/(%w+):?(%w*)$")
  if not base then return nil end
  if market == "spot" and settle == ""
      or market == "linear" and quote == "USDT" and settle == "USDT"
      or market == "inverse" and quote == "USD" and settle == base then
    return base .. quote
  end
  return nil
end

-- The error code of a Bitget body, or nil for a success ("00000") or a
-- body that is not Bitget's envelope.
local function error_code(body)
  if type(body) ~= "table" then return nil end
  local code = body.code
  if code == nil then return nil end
  code = tostring(code)
  if code == "00000" then return nil end
  return code
end

function _M.classify(_, res)
  if res.status == 403 then
    return "banned", "Bitget: HTTP 403 (IP blocked by the gateway)"
  end
  local body = res:json()
  local code = error_code(body)
  if not code then
    if res.status == 429 then return "throttled", "Bitget: HTTP 429 Too Many Requests" end
    return nil
  end
  local msg = "Bitget error " .. code .. ": " .. tostring(body.msg)
  if IGNORED[code] then return "ignored", msg end
  if THROTTLED[code] or res.status == 429 then return "throttled", msg end
  if RETRY[code] then return "failure", msg, true end
  return "failure", msg, res.status >= 500
end

-- "" and JSON null are "not given"; anything else is kept as it came.
local function val(v)
  if v == nil or v == "" or type(v) == "userdata" then return nil end
  return v
end

local function int(v)
  v = val(v)
  if v == nil then return nil end
  return tonumber(v)
end

local function list_of(data, what)
  if type(data) ~= "table" or error_code(data) or type(data.data) ~= "table" then
    return nil, "bitget " .. what .. ": unexpected response"
  end
  return data.data
end

---------------------------------------------------------------------------
-- Parsers: raw JSON (decoded) -> unified fields.
---------------------------------------------------------------------------
local parse = {}

function parse.ticker(market, t)
  local spot = market == "spot"
  return {
    ts = int(t.ts),
    last = val(t.lastPr), bid = val(t.bidPr), ask = val(t.askPr),
    bid_size = val(t.bidSz), ask_size = val(t.askSz),
    open = val(spot and t.open or t.open24h), high = val(t.high24h), low = val(t.low24h),
    base_volume = val(t.baseVolume), quote_volume = val(t.quoteVolume),
    mark = not spot and val(t.markPrice) or nil,
    index = not spot and val(t.indexPrice) or nil,
    open_interest = not spot and val(t.holdingAmount) or nil,
  }
end

function parse.funding_current(f, t, fallback_ts)
  return {
    ts = t and int(t.ts) or fallback_ts,
    rate = val(f.fundingRate),
    next_funding_time = int(f.nextUpdate),
    interval_hours = int(f.fundingRateInterval),
    mark = t and val(t.markPrice) or nil,
    index = t and val(t.indexPrice) or nil,
  }
end

function parse.funding_rate(f)
  return { funding_time = int(f.fundingTime), rate = val(f.fundingRate) }
end

local function levels(list, depth)
  local out = {}
  for i = 1, math.min(#list, depth or #list) do
    local l = list[i]
    out[i] = { l[1], l[2] }
  end
  return out
end

function parse.book(d, depth)
  return { ts = int(d.ts), sequence = nil, bids = levels(d.bids or {}, depth),
    asks = levels(d.asks or {}, depth) }
end

function parse.kline(market, candle, k)
  local t = tonumber(k[1])
  return {
    interval = candle, open_time = t, close_time = t + CANDLES[candle][3] - 1,
    open = k[2], high = k[3], low = k[4], close = k[5], volume = k[6],
    quote_volume = market == "spot" and k[8] or k[7],
  }
end

---------------------------------------------------------------------------
-- Datasets
---------------------------------------------------------------------------
local function path(market, what)
  return (market == "spot" and "/api/v2/spot/market/" or "/api/v2/mix/market/") .. what
end

-- GET base .. p; the decoded body, or nil, err, kind. An error body the
-- classify called "ignored" comes back as data; callers check its code.
local function get(ex, c, market, p, query, cache)
  local data, res_or_err, kind = c:get(ex.base(c, market) .. p,
    { query = query, endpoint = p, cache = cache })
  if data == nil then return nil, res_or_err, kind end
  return data
end

-- The symbols of a batch answer, in the order asked; the missing ones
-- skipped (an unknown symbol: logged once by the kit).
local function pick(ex, c, symbols, list, by)
  local found = {}
  for _, item in ipairs(list) do
    if type(item) == "table" and item.symbol then found[item.symbol] = item end
  end
  local out = {}
  for _, sym in ipairs(symbols) do
    local item = found[sym.raw]
    if item then
      out[#out + 1] = { sym, item, by and by[sym.raw] }
    else
      ex.skip(c, sym, "unknown symbol")
    end
  end
  return out
end

local function ticker_list(ex, c, market, symbols)
  local p, q
  if market == "spot" then
    p, q = path(market, "tickers"), {}
    if #symbols == 1 then q.symbol = symbols[1].raw end
  else
    q = { productType = PRODUCT[market] }
    if #symbols == 1 then
      p, q.symbol = path(market, "ticker"), symbols[1].raw
    else
      p = path(market, "tickers")
    end
  end
  local data, err, kind = get(ex, c, market, p, q)
  if not data then return nil, err, kind end
  if q.symbol and IGNORED[error_code(data) or ""] then
    ex.skip(c, symbols[1], "unknown symbol")
    return {}
  end
  return list_of(data, "tickers")
end

function _M.tickers(ex, c, market, symbols)
  local list, err, kind = ticker_list(ex, c, market, symbols)
  if not list then return nil, err, kind end
  local rows = {}
  for _, m in ipairs(pick(ex, c, symbols, list)) do
    rows[#rows + 1] = ex.row(m[1], parse.ticker(market, m[2]))
  end
  return rows
end

function _M.funding(ex, c, market, symbols)
  if market == "spot" then return nil, "bitget: no funding on spot" end
  local q = { productType = PRODUCT[market] }
  if #symbols == 1 then q.symbol = symbols[1].raw end
  local data, err, kind = get(ex, c, market, path(market, "current-fund-rate"), q)
  if not data then return nil, err, kind end
  if q.symbol and IGNORED[error_code(data) or ""] then
    ex.skip(c, symbols[1], "unknown symbol")
    return {}
  end
  local list, lerr = list_of(data, "current-fund-rate")
  if not list then return nil, lerr end
  local tickers, terr, tkind = ticker_list(ex, c, market, symbols)
  if not tickers then return nil, terr, tkind end
  local by = {}
  for _, t in ipairs(tickers) do
    if type(t) == "table" and t.symbol then by[t.symbol] = t end
  end
  local rows = {}
  for _, m in ipairs(pick(ex, c, symbols, list, by)) do
    rows[#rows + 1] = ex.row(m[1], parse.funding_current(m[2], m[3], int(data.requestTime)))
  end
  return rows
end

-- The smallest merge-depth limit Bitget accepts that holds `depth` levels.
local function mix_limit(depth)
  for _, n in ipairs{ 1, 5, 15, 50 } do
    if depth <= n then return tostring(n) end
  end
  return "max"
end

function _M.order_book(ex, c, market, sym, depth)
  local p, q
  if market == "spot" then
    p, q = path(market, "orderbook"), { symbol = sym.raw, type = "step0",
      limit = math.min(depth, 150) }
  else
    p, q = path(market, "merge-depth"), { symbol = sym.raw, productType = PRODUCT[market],
      limit = mix_limit(depth) }
  end
  local data, err, kind = get(ex, c, market, p, q)
  if not data then return nil, err, kind end
  if IGNORED[error_code(data) or ""] then
    ex.skip(c, sym, "unknown symbol")
    return nil, "unknown symbol", "ignored"
  end
  if type(data.data) ~= "table" or error_code(data) then
    return nil, "bitget order book: unexpected response", "protocol"
  end
  return parse.book(data.data, depth)
end

local function align(candle, t, up)
  local step, off = CANDLES[candle][3], OFFSET[candle] or 0
  local a = math.floor((t - off) / step) * step + off
  if up and a < t then a = a + step end
  return a
end

-- The pages of [from_ms, to_ms): {first open time, last open time, history?}.
local function kline_pages(candle, from_ms, to_ms, now_ms)
  local spec = CANDLES[candle]
  local step = spec[3]
  local first, last = align(candle, from_ms, true), align(candle, to_ms - 1)
  -- the candles endpoint serves opens from here on (an hour to spare)
  local reach = align(candle, now_ms - spec[4] * 86400e3 + 3600e3, true)
  local pages = {}
  local t = first
  while t <= last do
    local history = t < reach
    local n = history and HISTORY_PAGE or RECENT_PAGE
    local stop = t + (n - 1) * step
    if history and stop >= reach then stop = reach - step end
    if stop > last then stop = last end
    pages[#pages + 1] = { t, stop, history }
    t = stop + step
  end
  return pages
end

function _M.klines(ex, c, market, sym, candle, from_ms, to_ms)
  local spec = CANDLES[candle]
  if not spec then return nil, "bitget: unknown candle " .. tostring(candle) end
  local gran = market == "spot" and spec[1] or spec[2]
  if not gran then return nil, "bitget: spot has no " .. candle .. " candles" end
  local step = spec[3]
  local rows = {}
  local now_ms = math.floor(sluice.time() * 1000)
  for _, pg in ipairs(kline_pages(candle, from_ms, to_ms, now_ms)) do
    local n = math.floor((pg[2] - pg[1]) / step) + 1
    local q = { symbol = sym.raw, granularity = gran, endTime = pg[2] + 1, limit = n }
    if market ~= "spot" then q.productType = PRODUCT[market] end
    if not pg[3] then q.startTime = pg[1] end
    local data, err, kind = get(ex, c, market,
      path(market, pg[3] and "history-candles" or "candles"), q)
    if not data then return nil, err, kind end
    if IGNORED[error_code(data) or ""] then
      ex.skip(c, sym, "unknown symbol")
      return {}
    end
    local list, lerr = list_of(data, "candles")
    if not list then return nil, lerr, "protocol" end
    for _, k in ipairs(list) do
      local t = type(k) == "table" and tonumber(k[1])
      if not t then return nil, "bitget candles: a row without a time", "protocol" end
      if t >= pg[1] and t <= pg[2] then
        rows[#rows + 1] = ex.row(sym, parse.kline(market, candle, k))
      end
    end
  end
  table.sort(rows, function(a, b) return a.open_time < b.open_time end)
  return rows
end

function _M.funding_history(ex, c, market, sym, from_ms, to_ms)
  if market == "spot" then return nil, "bitget: no funding on spot" end
  local rows = {}
  local page = 1
  while true do
    local data, err, kind = get(ex, c, market, path(market, "history-fund-rate"),
      { symbol = sym.raw, productType = PRODUCT[market], pageSize = FUNDING_PAGE,
        pageNo = page }, FUNDING_CACHE)
    if not data then return nil, err, kind end
    if IGNORED[error_code(data) or ""] then
      ex.skip(c, sym, "unknown symbol")
      return {}
    end
    local list, lerr = list_of(data, "history-fund-rate")
    if not list then return nil, lerr, "protocol" end
    local oldest
    for _, f in ipairs(list) do
      local r = parse.funding_rate(f)
      if not r.funding_time then
        return nil, "bitget history-fund-rate: a row without fundingTime", "protocol"
      end
      if r.funding_time >= from_ms and r.funding_time < to_ms then
        rows[#rows + 1] = ex.row(sym, r)
      end
      oldest = math.min(oldest or r.funding_time, r.funding_time)
    end
    if #list < FUNDING_PAGE or (oldest and oldest < from_ms) then break end
    page = page + 1
    if page > 1000 then return nil, "bitget history-fund-rate: over 1000 pages", "protocol" end
  end
  table.sort(rows, function(a, b) return a.funding_time < b.funding_time end)
  return rows
end

return _M
