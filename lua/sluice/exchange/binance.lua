--- sluice.exchange.binance: the Binance adapter of sluice.exchange (spot,
-- USDⓈ-M perpetuals as "linear", COIN-M perpetuals as "inverse").
--
--   { use = "binance", symbols = { "BTC/USDT", "BTC/USDT:USDT", "BTC/USD:BTC" } }
--
-- Endpoints (public, GET), request weight in brackets as Binance documents it:
--   spot     api.binance.com  /api/v3/ticker/24hr [2 for 1-20 symbols, 40 for
--            21-100, 80 for more], /api/v3/depth [5 up to 100 levels, 25 to
--            500, 50 to 1000, 250 to 5000], /api/v3/klines [2]
--   linear   fapi.binance.com /fapi/v1/ticker/24hr [1, 40 without symbol],
--            /fapi/v1/ticker/bookTicker [2, 5], /fapi/v1/premiumIndex [1, 10],
--            /fapi/v1/depth [2 up to 50 levels, 5 for 100, 10 for 500, 20 for
--            1000], /fapi/v1/klines [1 below 100 rows, 2 below 500, 5 to
--            1000], /fapi/v1/fundingRate [1]
--   inverse  dapi.binance.com /dapi/v1/... as linear (premiumIndex: 10)
-- One limiter for all three, with a weight pool per API: Binance counts
-- weight per IP and minute for each of them (6000 for spot, 2400 for each
-- futures API) and every one answers X-MBX-USED-WEIGHT-1M with its own
-- figure, which updates only the pool its request was charged in. Errors are
-- {"code": -1121, "msg": "Invalid symbol."}: -1121 is an unknown symbol
-- (ignored: logged once and skipped), 429/-1003 throttled, 418 (IP ban) and
-- 403 (the WAF) banned.
--
-- Rows take every price, size, volume and rate from Binance's own text.
-- Where Binance does not say a field it is absent: spot tickers have no
-- mark/index; open_interest is not polled (one request per symbol);
-- inverse tickers and klines have no quote volume (Binance counts COIN-M
-- volume in contracts; the base volume is its baseVolume); a spot book has
-- no time (ts is when its answer arrived).
local json = require "sluice.json"
local paginate = require "sluice.paginate"
local parse = require "sluice.exchange.binance.parse"

local is_error = parse.is_error

local _M = {
  name = "binance",
  base_urls = { spot = "https://api.binance.com", linear = "https://fapi.binance.com",
                inverse = "https://dapi.binance.com" },
  markets = { spot = true, linear = true, inverse = true },
  candles = {},
  limiter = {
    rate = 20,
    pools = { { name = "spot_weight", limit = 6000, window = 60, weight_window = 60 },
              { name = "usdm_weight", limit = 2400, window = 60, weight_window = 60 },
              { name = "coinm_weight", limit = 2400, window = 60, weight_window = 60 } },
  },
  breaker = { failure_threshold = 5, timeout = 300 },
  retry = { strategy = "adaptive", max_attempts = 3, base_delay = 1, max_delay = 30 },
  description = "Binance: tickers, funding, order books and klines (spot, USDⓈ-M, COIN-M)",
  beginning_date = "2017-08-17", -- spot's first candles; futures answer empty pages before theirs
}

-- Binance's kline intervals are the unified candle strings themselves.
for _, iv in ipairs{ "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h",
                     "1d", "3d", "1w" } do
  _M.candles[iv] = iv
end

local PATHS = {
  spot = { ticker = "/api/v3/ticker/24hr", depth = "/api/v3/depth", klines = "/api/v3/klines" },
  linear = { ticker = "/fapi/v1/ticker/24hr", book = "/fapi/v1/ticker/bookTicker",
             premium = "/fapi/v1/premiumIndex", depth = "/fapi/v1/depth",
             klines = "/fapi/v1/klines", funding = "/fapi/v1/fundingRate" },
  inverse = { ticker = "/dapi/v1/ticker/24hr", book = "/dapi/v1/ticker/bookTicker",
              premium = "/dapi/v1/premiumIndex", depth = "/dapi/v1/depth",
              klines = "/dapi/v1/klines", funding = "/dapi/v1/fundingRate" },
}

-- Weights: {one symbol, every symbol} per futures endpoint.
local FUTURES_WEIGHT = {
  linear = { ticker = { 1, 40 }, book = { 2, 5 }, premium = { 1, 10 } },
  inverse = { ticker = { 1, 40 }, book = { 2, 5 }, premium = { 10, 10 } },
}

local KLINE_LIMIT = 1000       -- rows per klines page (spot's maximum)
local FUNDING_LIMIT = 1000     -- rows per fundingRate page (the maximum)
local MAX_PAGES = 1000000      -- a backfill's range bounds the pages
local FUTURES_DEPTHS = { 5, 10, 20, 50, 100, 500, 1000 }

-- ---- symbols and verdicts --------------------------------------------------

--- raw_symbol(market, unified) -> raw | nil, err
-- "BTC/USDT" (spot) and "BTC/USDT:USDT" (linear) -> "BTCUSDT";
-- "BTC/USD:BTC" (inverse) -> "BTCUSD_PERP".
function _M.raw_symbol(market, unified)
  local base, quote, settle = tostring(unified):match("^([%w]+)/([%w]+):?([%w]*)$")
  if not base then return nil, "not a unified symbol: " .. tostring(unified) end
  if market == "spot" and settle == "" then return base .. quote end
  if market == "linear" and settle == quote then return base .. quote end
  if market == "inverse" and settle == base and quote == "USD" then return base .. "USD_PERP" end
  return nil, unified .. " is not a Binance " .. tostring(market) .. " perpetual symbol"
end

--- classify(c, res) -> verdict, message: Binance's error bodies.
function _M.classify(_, res)
  local s = res.status
  local body = res:json()
  local msg
  if is_error(body) then
    msg = "Binance error " .. tostring(body.code) .. ": " .. tostring(body.msg)
  end
  if s == 418 then return "banned", msg end
  if s == 403 then return "banned", msg or "HTTP 403 (WAF limit)" end
  if s == 429 or (msg and body.code == -1003) then return "throttled", msg end
  if msg and body.code == -1121 then return "ignored", msg end
  if msg and s < 400 then return "failure", msg end
  return nil, msg
end

-- ---- requests ----------------------------------------------------------------

-- GET base..path: data | nil, err, kind. An unknown symbol's answer (the
-- verdict "ignored") comes back as data with .code = -1121.
-- A request's weight in its API's pool only ({pool = cost}: a pool left
-- out would be charged the cost too).
local POOL = { spot = "spot_weight", linear = "usdm_weight", inverse = "coinm_weight" }
local function pools(market, cost)
  local out = { spot_weight = 0, usdm_weight = 0, coinm_weight = 0 }
  out[POOL[market]] = cost
  return out
end

local function get(ex, c, market, path, query, cost)
  return c:get(ex.base(c, market) .. path, { query = query, cost = cost, pools = pools(market, cost) })
end

local function spot_ticker_weight(n)
  if n <= 20 then return 2 elseif n <= 100 then return 40 end
  return 80
end

local function spot_depth(depth)
  local limit = math.max(1, math.min(5000, depth))
  local w = limit <= 100 and 5 or limit <= 500 and 25 or limit <= 1000 and 50 or 250
  return limit, w
end

local function futures_depth(depth)
  local limit = 1000
  for _, l in ipairs(FUTURES_DEPTHS) do
    if l >= depth then limit = l break end
  end
  local w = limit <= 50 and 2 or limit == 100 and 5 or limit == 500 and 10 or 20
  return limit, w
end

local function futures_klines_weight(limit)
  if limit < 100 then return 1 elseif limit < 500 then return 2 elseif limit <= 1000 then return 5 end
  return 10
end

-- Rows of a futures endpoint for `symbols`: one request per symbol, or one
-- for every symbol when that weighs less. -> {raw = item} | nil, err, kind
local function futures_items(ex, c, market, what, symbols)
  local w = FUTURES_WEIGHT[market][what]
  local path = PATHS[market][what]
  local out = {}
  local function take(data)
    if type(data) == "table" and data[1] == nil and data.symbol then data = { data } end
    if type(data) ~= "table" then return nil, path .. ": not a list" end
    for _, item in ipairs(data) do
      if type(item) == "table" and item.symbol then out[item.symbol] = item end
    end
    return true
  end
  if #symbols * w[1] > w[2] then
    local data, err, kind = get(ex, c, market, path, nil, w[2])
    if data == nil then return nil, err, kind end
    local ok, terr = take(data)
    if not ok then return nil, terr, "protocol" end
    return out
  end
  for _, sym in ipairs(symbols) do
    local data, err, kind = get(ex, c, market, path, { symbol = sym.raw }, w[1])
    if data == nil then return nil, err, kind end
    if not is_error(data) then
      local ok, terr = take(data)
      if not ok then return nil, terr, "protocol" end
    end
  end
  return out
end

-- ---- datasets ----------------------------------------------------------------

local function spot_tickers(ex, c, all)
  local path = PATHS.spot.ticker
  -- symbols already known unknown are left out: one of them fails the batch
  local symbols, raws = {}, {}
  for _, s in ipairs(all) do
    if not ex.skipped(c, s) then
      symbols[#symbols + 1] = s
      raws[#raws + 1] = s.raw
    end
  end
  if #symbols == 0 then return {} end
  -- one symbol: symbol=X (the same weight); several: symbols=["X","Y"]
  local query = #raws == 1 and { symbol = raws[1] } or { symbols = json.encode(raws) }
  local data, err, kind = get(ex, c, "spot", path, query, spot_ticker_weight(#raws))
  if data == nil then return nil, err, kind end
  local by = {}
  if is_error(data) and #symbols == 1 then
    ex.skip(c, symbols[1], data.msg)
  elseif is_error(data) then
    -- one unknown symbol fails the batch: ask one by one, skip the unknown
    for _, s in ipairs(symbols) do
      local one, oerr, okind = get(ex, c, "spot", path, { symbol = s.raw }, 2)
      if one == nil then return nil, oerr, okind end
      if is_error(one) then ex.skip(c, s, one.msg) else by[s.raw] = one end
    end
  else
    if type(data) == "table" and data.symbol then data = { data } end
    if type(data) ~= "table" then return nil, path .. ": not a list", "protocol" end
    for _, t in ipairs(data) do
      if type(t) == "table" and t.symbol then by[t.symbol] = t end
    end
  end
  local rows = {}
  for _, s in ipairs(symbols) do
    if by[s.raw] then rows[#rows + 1] = ex.row(s, parse.ticker("spot", by[s.raw])) end
  end
  return rows
end

function _M.tickers(ex, c, market, symbols)
  if market == "spot" then return spot_tickers(ex, c, symbols) end
  local ts, err, kind = futures_items(ex, c, market, "ticker", symbols)
  if not ts then return nil, err, kind end
  local books, berr, bkind = futures_items(ex, c, market, "book", symbols)
  if not books then return nil, berr, bkind end
  local prem, perr, pkind = futures_items(ex, c, market, "premium", symbols)
  if not prem then return nil, perr, pkind end
  local rows = {}
  for _, s in ipairs(symbols) do
    if ts[s.raw] then
      rows[#rows + 1] = ex.row(s, parse.ticker(market, ts[s.raw], books[s.raw], prem[s.raw]))
    else
      ex.skip(c, s, "Invalid symbol.")
    end
  end
  return rows
end

function _M.funding(ex, c, market, symbols)
  local prem, err, kind = futures_items(ex, c, market, "premium", symbols)
  if not prem then return nil, err, kind end
  local rows = {}
  for _, s in ipairs(symbols) do
    local p = prem[s.raw]
    if p then rows[#rows + 1] = ex.row(s, parse.funding_current(p))
    else ex.skip(c, s, "Invalid symbol.") end
  end
  return rows
end

function _M.order_book(ex, c, market, sym, depth)
  local limit, w
  if market == "spot" then limit, w = spot_depth(depth) else limit, w = futures_depth(depth) end
  local data, err, kind = get(ex, c, market, PATHS[market].depth,
    { symbol = sym.raw, limit = limit }, w)
  if data == nil then return nil, err, kind end
  if is_error(data) then
    ex.skip(c, sym, data.msg)
    return nil, "Binance error " .. tostring(data.code) .. ": " .. tostring(data.msg), "ignored"
  end
  local book, perr = parse.book(market, data)
  if not book then return nil, perr, "protocol" end
  for _, side in ipairs{ "bids", "asks" } do
    for i = #book[side], depth + 1, -1 do book[side][i] = nil end
  end
  return book
end

-- Every page of [from_ms, to_ms) of a time-paged endpoint: the list of raw
-- rows, or nil and an error; an unknown symbol is skipped (no rows).
-- step: the least gap between two rows' times (a candle: the next opens
-- that much later, so a page ending at the range's end is the last).
local function pages(ex, c, market, sym, path, query, time_key, limit, cost, from_ms, to_ms, step)
  local unknown
  local rows, err, kind = paginate.time(c, ex.base(c, market) .. path, {
    query = query, from = from_ms, to = to_ms and to_ms - 1, limit = limit, time = time_key,
    step = step,
    max_pages = MAX_PAGES, request = { cost = cost, pools = pools(market, cost) },
    rows = function(data)
      if is_error(data) then unknown = data.msg return {} end
      return data
    end,
  })
  if rows == nil then return nil, err, kind end
  if unknown then ex.skip(c, sym, unknown) return {} end
  return rows
end

function _M.klines(ex, c, market, sym, candle, from_ms, to_ms)
  local iv = _M.candles[candle]
  if not iv then return nil, "Binance has no " .. tostring(candle) .. " candle", "config" end
  local cost = market == "spot" and 2 or futures_klines_weight(KLINE_LIMIT)
  local query = { symbol = sym.raw, interval = iv }
  local raw, err, kind
  if from_ms then
    raw, err, kind = pages(ex, c, market, sym, PATHS[market].klines, query, 1, KLINE_LIMIT,
      cost, from_ms, to_ms, require("sluice.exchange").candle_seconds(candle) * 1000)
  else
    query.limit, query.endTime = KLINE_LIMIT, to_ms and to_ms - 1
    raw, err, kind = get(ex, c, market, PATHS[market].klines, query, cost)
    if raw and is_error(raw) then ex.skip(c, sym, raw.msg) raw = {} end
  end
  if raw == nil then return nil, err, kind end
  local rows = {}
  for _, k in ipairs(raw) do
    if type(k) ~= "table" then return nil, "klines: a row is not a list", "protocol" end
    rows[#rows + 1] = ex.row(sym, parse.kline(market, candle, k))
  end
  return rows
end

function _M.funding_history(ex, c, market, sym, from_ms, to_ms)
  if market == "spot" then return nil, "spot has no funding", "config" end
  local raw, err, kind = pages(ex, c, market, sym, PATHS[market].funding, { symbol = sym.raw },
    "fundingTime", FUNDING_LIMIT, 1, from_ms or 0, to_ms)
  if raw == nil then return nil, err, kind end
  local rows = {}
  for _, r in ipairs(raw) do
    if type(r) ~= "table" then return nil, "fundingRate: a row is not an object", "protocol" end
    rows[#rows + 1] = ex.row(sym, parse.funding_rate(r))
  end
  return rows
end

return _M
