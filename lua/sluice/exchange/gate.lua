--- sluice.exchange.gate: the Gate (gate.io) API v4 adapter of sluice.exchange.
--
--   return require("sluice.exchange").define(require("sluice.exchange.gate"))
--
-- Markets: spot (currency pairs, "BTC/USDT" -> BTC_USDT), linear perpetuals
-- settled in USDT ("BTC/USDT:USDT" -> settle usdt, contract BTC_USDT) and
-- inverse perpetuals settled in BTC ("BTC/USD:BTC" -> settle btc, contract
-- BTC_USD). Endpoints (public, GET, under https://api.gateio.ws/api/v4):
--   tickers          /spot/tickers, /futures/{settle}/tickers: one request
--                    per market for all symbols (?currency_pair= /
--                    ?contract= when there is only one: Gate gives the best
--                    bid/ask sizes of spot only to a single-pair query)
--   funding          /futures/{settle}/contracts (the contract list, 1000 a
--                    page by offset): funding_rate, funding_rate_indicative,
--                    funding_next_apply, funding_interval, mark and index
--   order_book       /spot/order_book?currency_pair&limit&with_id=true,
--                    /futures/{settle}/order_book?contract&limit&with_id=true
--   klines           /spot/candlesticks (1000 a page), /futures/{settle}/
--                    candlesticks (2000 a page), by from/to windows in seconds
--                    (Gate refuses limit together with from/to)
--   funding_history  /futures/{settle}/funding_rate?contract&from&to&limit,
--                    newest first, paged backwards by `to`
-- Every decimal is Gate's own text (a JSON string, or the digits of a JSON
-- integer such as a futures size); times are milliseconds. Futures sizes,
-- open interest (total_size) and futures candle volume (v) are in contracts,
-- as Gate (and ccxt) give them. Gate's tickers carry no time: ts is the
-- gateway's X-Out-Time (microseconds) of the answer, else the local clock.
--
-- Errors are {"label": ..., "message": ...}: INVALID_CURRENCY_PAIR,
-- INVALID_CURRENCY and CONTRACT_NOT_FOUND are an unknown symbol ("ignored",
-- skipped once, the others go on); TOO_MANY_REQUESTS (HTTP 429) is
-- throttled; a 403 (the WAF's IP block) is a ban; 5xx (SERVER_ERROR,
-- TOO_BUSY) are failures, retried. Quota: 200 requests per 10 s per public
-- endpoint and IP, reported by X-Gate-RateLimit-* headers (read by the
-- limiter).
local json = require "sluice.json"
local bignum = require "sluice.bignum"
local sluice = require "sluice"

local type, tostring, tonumber, ipairs = type, tostring, tonumber, ipairs
local floor, ceil, min = math.floor, math.ceil, math.min
local null, numeral_text, jnumber = json.null, json.numeral_text, json.number

local _M = {
  name = "gate",
  base_urls = { spot = "https://api.gateio.ws", linear = "https://api.gateio.ws",
                inverse = "https://api.gateio.ws" },
  markets = { spot = true, linear = true, inverse = true },
  -- unified candle -> Gate's interval (the same words; "1w" is Gate's 7d:
  -- seven days counted from the epoch)
  candles = { ["10s"] = "10s", ["1m"] = "1m", ["5m"] = "5m", ["15m"] = "15m",
    ["30m"] = "30m", ["1h"] = "1h", ["4h"] = "4h", ["8h"] = "8h", ["1d"] = "1d",
    ["1w"] = "7d" },
  -- 200 requests per 10 s per endpoint and IP: 18/s keeps 10 % in hand on
  -- the busiest endpoint; the headers correct it
  limiter = { rate = 18, burst = 5, window = 10 },
  breaker = { failure_threshold = 5, timeout = 60 },
  retry = { strategy = "exponential", max_attempts = 3, base_delay = 0.5, max_delay = 10 },
}

local API = "/api/v4"
local SPOT_PAGE, FUTURES_PAGE = 1000, 2000      -- candles one query may return
local CONTRACTS_PAGE, FUNDING_PAGE = 1000, 1000

local CANDLE_MS = { ["10s"] = 10e3, ["1m"] = 60e3, ["5m"] = 300e3, ["15m"] = 900e3,
  ["30m"] = 1800e3, ["1h"] = 3600e3, ["4h"] = 14400e3, ["8h"] = 28800e3,
  ["1d"] = 86400e3, ["1w"] = 604800e3 }

-- Labels that say "no such symbol": the symbol is skipped, never a failure.
local UNKNOWN = { INVALID_CURRENCY_PAIR = true, INVALID_CURRENCY = true,
  CONTRACT_NOT_FOUND = true }

-- dec(v) -> the exchange's text of a decimal, or nil when absent/empty.
-- A JSON string as sent; a JSON number as json.decode gave it (an integer's
-- digits, a numeral's text, or the shortest text of that double).
local function dec(v)
  local tv = type(v)
  if tv == "string" then return v ~= "" and v or nil end
  if tv == "number" then return (jnumber(v)) end
  local n = numeral_text(v)
  if n then return n end
  if tv == "cdata" then return (jnumber(v)) end
  return nil
end

-- An integer time in seconds (number or digits) -> milliseconds.
local function secs_ms(v)
  local n = type(v) == "string" and tonumber(v) or v
  if type(n) ~= "number" then return nil end
  return floor(n * 1000 + 0.5)
end

local function settle_of(unified)
  local s = unified:match(":(%w+)$")
  return s and s:lower()
end

--- raw_symbol(market, unified) -> "BTC_USDT" (a pair or a contract)
function _M.raw_symbol(_, unified)
  local base, quote = unified:match("^([%w]+)/([%w]+)")
  if not base then return nil end
  return base .. "_" .. quote
end

--- classify(c, res) -> verdict, message [, retryable]
function _M.classify(_, res)
  local body = res.status >= 400 and res:json() or nil
  local label = type(body) == "table" and type(body.label) == "string" and body.label or nil
  local msg = label and ("Gate error " .. label .. ": " .. tostring(body.message or ""))
  if res.status == 403 then
    return "banned", msg or "Gate HTTP 403 (IP blocked)"
  end
  if not label then return nil end
  if UNKNOWN[label] then return "ignored", msg end
  if label == "TOO_MANY_REQUESTS" then return "throttled", msg end
  return nil, msg
end

-- The error body of an "ignored" answer, or nil for data.
local function unknown_label(data)
  if type(data) == "table" and type(data.label) == "string" and UNKNOWN[data.label] then
    return data.label
  end
end

-- The answer's time in ms: Gate's gateway stamps X-Out-Time (microseconds).
local function answer_ms(res)
  local us = res and res.headers and tonumber(res.headers["x-out-time"] or "")
  if us then return floor(us / 1000) end
  return floor(sluice.time() * 1000)
end

local function path_for(market, sym, what)
  if market == "spot" then return API .. "/spot/" .. what end
  return API .. "/futures/" .. settle_of(sym.unified) .. "/" .. what
end

-- ---------------------------------------------------------------------
-- Parsers: raw JSON -> unified rows (no I/O; the spec feeds them fixtures)

-- parse_ticker(market, t, ts) -> fields of a tickers row
local function parse_ticker(market, t, ts)
  local f = {
    ts = ts, last = dec(t.last), bid = dec(t.highest_bid), ask = dec(t.lowest_ask),
    bid_size = dec(t.highest_size), ask_size = dec(t.lowest_size),
    high = dec(t.high_24h), low = dec(t.low_24h),
  }
  if market == "spot" then
    f.base_volume, f.quote_volume = dec(t.base_volume), dec(t.quote_volume)
  else
    f.base_volume, f.quote_volume = dec(t.volume_24h_base), dec(t.volume_24h_quote)
    f.mark, f.index, f.open_interest = dec(t.mark_price), dec(t.index_price), dec(t.total_size)
  end
  return f
end

-- parse_contract(c, ts) -> fields of a funding_current row
local function parse_contract(k, ts)
  local iv = tonumber(k.funding_interval)
  return {
    ts = ts, rate = dec(k.funding_rate), predicted_rate = dec(k.funding_rate_indicative),
    next_funding_time = secs_ms(k.funding_next_apply),
    mark = dec(k.mark_price), index = dec(k.index_price),
    interval_hours = iv and bignum.div(jnumber(iv), "3600", 4) or nil,
  }
end

-- A futures level {p, s} or a spot level [p, s] -> {price, size}.
local function level(lv)
  if type(lv) ~= "table" then return lv end
  if lv.p ~= nil then return { dec(lv.p) or lv.p, dec(lv.s) or lv.s } end
  return { dec(lv[1]) or lv[1], dec(lv[2]) or lv[2] }
end

-- parse_book(market, b) -> {ts, sequence, bids, asks}
-- Spot's current is milliseconds; futures' is seconds with a fraction.
local function parse_book(market, b)
  local bids, asks = {}, {}
  for i, lv in ipairs(type(b.bids) == "table" and b.bids or {}) do bids[i] = level(lv) end
  for i, lv in ipairs(type(b.asks) == "table" and b.asks or {}) do asks[i] = level(lv) end
  local cur = b.current
  local ts
  if type(cur) == "number" then
    ts = market == "spot" and floor(cur) or floor(cur * 1000 + 0.5)
  end
  local seq = b.id
  if seq == null then seq = nil end
  return { ts = ts, sequence = seq, bids = type(b.bids) == "table" and bids or b.bids,
           asks = type(b.asks) == "table" and asks or b.asks }
end

-- parse_candle(market, k, candle) -> fields of a klines row
-- Spot: [t, quote_volume, close, high, low, open, base_volume, closed];
-- futures: {t, v (contracts), c, h, l, o, sum (quote volume)}.
local function parse_candle(market, k, candle)
  local f
  if market == "spot" then
    f = { open_time = secs_ms(k[1]), quote_volume = dec(k[2]), close = dec(k[3]),
          high = dec(k[4]), low = dec(k[5]), open = dec(k[6]), volume = dec(k[7]) }
  else
    f = { open_time = secs_ms(k.t), volume = dec(k.v), close = dec(k.c), high = dec(k.h),
          low = dec(k.l), open = dec(k.o), quote_volume = dec(k.sum) }
  end
  f.interval = candle
  f.close_time = f.open_time and f.open_time + CANDLE_MS[candle] - 1
  return f
end

-- parse_funding(r) -> fields of a funding_rates row
local function parse_funding(r)
  return { funding_time = secs_ms(r.t), rate = dec(r.r) }
end

-- ---------------------------------------------------------------------
-- Datasets

local function get(ex, c, market, path, query)
  return c:get(ex.base(c, market) .. path, { query = query, endpoint = path })
end

local function is_list(v) return type(v) == "table" and (v[1] ~= nil or next(v) == nil) end

--- tickers(ex, c, market, symbols) -> rows
function _M.tickers(ex, c, market, symbols)
  local key = market == "spot" and "currency_pair" or "contract"
  local query
  if #symbols == 1 then query = { [key] = symbols[1].raw } end
  local data, res, kind = get(ex, c, market, path_for(market, symbols[1], "tickers"), query)
  if not data then return nil, res, kind end
  if unknown_label(data) then
    ex.skip(c, symbols[1], "unknown symbol")
    return {}
  end
  if not is_list(data) then return nil, "Gate tickers: not a list", "protocol" end
  local ts = answer_ms(res)
  local by = {}
  for _, t in ipairs(data) do
    if type(t) == "table" and t[key] then by[t[key]] = t end
  end
  local rows = {}
  for _, sym in ipairs(symbols) do
    local t = by[sym.raw]
    if t then
      rows[#rows + 1] = ex.row(sym, parse_ticker(market, t, ts))
    else
      ex.skip(c, sym, "unknown symbol")
    end
  end
  return rows
end

--- funding(ex, c, market, symbols) -> rows (funding_current)
-- The contract list of each settle currency the symbols name.
function _M.funding(ex, c, market, symbols)
  local by_settle, order = {}, {}
  for _, sym in ipairs(symbols) do
    local s = settle_of(sym.unified)
    if not by_settle[s] then by_settle[s] = {}; order[#order + 1] = s end
    local l = by_settle[s]
    l[#l + 1] = sym
  end
  local rows = {}
  for _, s in ipairs(order) do
    local path = API .. "/futures/" .. s .. "/contracts"
    local found, offset = {}, 0
    local ts
    repeat
      local data, res, kind = get(ex, c, market, path, { limit = CONTRACTS_PAGE, offset = offset })
      if not data then return nil, res, kind end
      if not is_list(data) then return nil, "Gate contracts: not a list", "protocol" end
      ts = ts or answer_ms(res)
      for _, k in ipairs(data) do
        if type(k) == "table" and k.name then found[k.name] = k end
      end
      offset = offset + #data
    until #data < CONTRACTS_PAGE
    for _, sym in ipairs(by_settle[s]) do
      local k = found[sym.raw]
      if k then
        rows[#rows + 1] = ex.row(sym, parse_contract(k, ts))
      else
        ex.skip(c, sym, "unknown symbol")
      end
    end
  end
  return rows
end

--- order_book(ex, c, market, sym, depth) -> book
function _M.order_book(ex, c, market, sym, depth)
  local query = { limit = depth, with_id = "true" }
  query[market == "spot" and "currency_pair" or "contract"] = sym.raw
  local data, res, kind = get(ex, c, market, path_for(market, sym, "order_book"), query)
  if not data then return nil, res, kind end
  if unknown_label(data) then
    ex.skip(c, sym, "unknown symbol")
    return nil, "unknown symbol", "ignored"
  end
  if type(data) ~= "table" then return nil, "Gate order book: not an object", "protocol" end
  local b = parse_book(market, data)
  b.ts = b.ts or answer_ms(res)
  return b
end

--- klines(ex, c, market, sym, candle, from_ms, to_ms) -> rows of [from, to)
-- Windows of one page of candles each, by from/to (inclusive, seconds).
function _M.klines(ex, c, market, sym, candle, from_ms, to_ms)
  local iv = CANDLE_MS[candle]
  if not iv or not _M.candles[candle] then
    return nil, "gate has no candle " .. tostring(candle), "config"
  end
  local first = ceil(from_ms / iv) * iv               -- the first open >= from
  local last = ceil(to_ms / iv) * iv - iv              -- the last open < to
  local page = market == "spot" and SPOT_PAGE or FUTURES_PAGE
  local path = path_for(market, sym, "candlesticks")
  local key = market == "spot" and "currency_pair" or "contract"
  local rows = {}
  local a = first
  while a <= last do
    local b = min(a + (page - 1) * iv, last)
    local data, res, kind = get(ex, c, market, path, { [key] = sym.raw,
      interval = _M.candles[candle], from = floor(a / 1000), to = floor(b / 1000) })
    if not data then return nil, res, kind end
    if unknown_label(data) then
      ex.skip(c, sym, "unknown symbol")
      return {}
    end
    if not is_list(data) then return nil, "Gate candlesticks: not a list", "protocol" end
    for _, k in ipairs(data) do
      local f = parse_candle(market, k, candle)
      if f.open_time and f.open_time >= from_ms and f.open_time < to_ms then
        rows[#rows + 1] = ex.row(sym, f)
      end
    end
    a = b + iv
  end
  return rows
end

--- funding_history(ex, c, market, sym, from_ms, to_ms) -> rows of [from, to)
-- Gate answers the newest `limit` records of [from, to] (seconds), newest
-- first: a full page continues below its oldest record.
function _M.funding_history(ex, c, market, sym, from_ms, to_ms)
  if market == "spot" then return nil, "gate: spot has no funding", "config" end
  local path = path_for(market, sym, "funding_rate")
  local from_s, to_s = ceil(from_ms / 1000), ceil(to_ms / 1000) - 1
  local rows, seen = {}, {}
  while to_s >= from_s do
    local data, res, kind = get(ex, c, market, path, { contract = sym.raw, from = from_s,
      to = to_s, limit = FUNDING_PAGE })
    if not data then return nil, res, kind end
    if unknown_label(data) then
      ex.skip(c, sym, "unknown symbol")
      return {}
    end
    if not is_list(data) then return nil, "Gate funding_rate: not a list", "protocol" end
    local oldest
    for _, r in ipairs(data) do
      local f = parse_funding(r)
      local t = f.funding_time
      if t and t >= from_ms and t < to_ms and not seen[t] then
        seen[t] = true
        rows[#rows + 1] = ex.row(sym, f)
      end
      local ts = tonumber(r.t)
      if ts and (not oldest or ts < oldest) then oldest = ts end
    end
    if #data < FUNDING_PAGE or not oldest then break end
    to_s = oldest - 1
  end
  return rows
end

return _M
