--- sluice.exchange.htx: the HTX (Huobi) adapter of sluice.exchange.
--
--   { use = "htx", symbols = { "BTC/USDT", "BTC/USDT:USDT", "BTC/USD:BTC" } }
--
-- Markets and hosts (HTX's REST documentation, spot v1, USDT-margined and
-- coin-margined swaps):
--   spot     https://api.huobi.pro  symbol "btcusdt"
--            /market/detail/merged (one symbol) or /market/tickers (all),
--            /market/depth, /market/history/kline (the latest 2000 candles;
--            no time range)
--   linear   https://api.hbdm.com   contract_code "BTC-USDT"
--            /linear-swap-ex/market/detail/merged or
--            /v2/linear-swap-ex/market/detail/batch_merged, /linear-swap-ex/
--            market/depth, /linear-swap-ex/market/history/kline (from/to in
--            seconds), /linear-swap-api/v1/swap_funding_rate or
--            swap_batch_funding_rate, swap_historical_funding_rate (pages of
--            at most 50, newest first)
--   inverse  https://api.hbdm.com   contract_code "BTC-USD": the same under
--            /swap-ex/market/... and /swap-api/v1/...
-- A dataset of one symbol asks for that symbol; of several, one batch
-- request (tickers, funding) answers them all.
--
-- Values are stored as HTX wrote them (a string, or the number json.decode
-- gives for a JSON number), never through tonumber; a "null" string (HTX's
-- deprecated estimated_rate/next_funding_time) is absent. Contract sizes
-- (book levels, bid/ask sizes) are HTX's: contracts ("cont."), as ccxt
-- keeps them; volume is the base amount ("amount"), quote_volume the quote
-- ("vol" on spot, "trade_turnover" on contracts).
--
-- Funding: rate is funding_rate, next_funding_time HTX's funding_time (when
-- the current rate settles: ccxt's fundingTimestamp), interval_hours the
-- distance to HTX's next_funding_time (the settlement after) when it is
-- given; predicted_rate is estimated_rate where not "null".
--
-- Errors: HTX answers HTTP 200 with {"status":"error","err-code":...,
-- "err-msg":...} (spot and the swap market endpoints) or {"status":"error",
-- "err_code":1014,"err_msg":...} (the swap api endpoints), and some swap
-- endpoints {"code":..,"message":..} with a code other than 200. classify
-- maps them: rate limit (err_code 1032, any code naming too many requests
-- or a limit, HTTP 429) -> "throttled"; an unknown symbol or contract and
-- other invalid parameters (invalid-parameter, bad-request, 1013, 1014,
-- 1030, base-symbol-error) -> "ignored" (no breaker failure; the dataset
-- skips the symbol once with ex.skip, or fails on a parameter of its own);
-- HTTP 403 (the WAF's IP block) -> "banned"; system errors (1000-1004)
-- -> a failure, retried. Rate-limit headers X-HB-RateLimit-Requests-Remain
-- and -Expire are read by the limiter (runtime/core/rlheaders.c).
local sluice = require "sluice"
local json = require "sluice.json"

local null = json.null
local floor, min, max, ceil = math.floor, math.min, math.max, math.ceil
local fmt = string.format

local _M = {
  name = "htx",
  base_urls = {
    spot = "https://api.huobi.pro",
    linear = "https://api.hbdm.com",
    inverse = "https://api.hbdm.com",
  },
  markets = { spot = true, linear = true, inverse = true },
  candles = {
    ["1m"] = "1min", ["5m"] = "5min", ["15m"] = "15min", ["30m"] = "30min",
    ["1h"] = "60min", ["4h"] = "4hour", ["1d"] = "1day", ["1w"] = "1week",
  },
  -- Spot market endpoints allow 4500 requests per 5 minutes each (15/s);
  -- swap market endpoints 800/s and the swap api (funding) 240 per 3 s per
  -- IP. One limiter for all: the spot quota is the tightest.
  limiter = { rate = 10, max_rate = 15, window = 300 },
  retry = { strategy = "exponential", max_attempts = 3 },
}

-- Candle lengths in milliseconds.
local CANDLE_MS = {
  ["1m"] = 60e3, ["5m"] = 300e3, ["15m"] = 900e3, ["30m"] = 1800e3,
  ["1h"] = 3600e3, ["4h"] = 14400e3, ["1d"] = 86400e3, ["1w"] = 604800e3,
}

local KLINE_MAX = 2000          -- candles per kline request (size, or a from/to range)
local FUNDING_PAGE = 50         -- rows per swap_historical_funding_rate page, at most

local PATHS = {
  spot = { ticker = "/market/detail/merged", tickers = "/market/tickers",
           depth = "/market/depth", kline = "/market/history/kline" },
  linear = { ticker = "/linear-swap-ex/market/detail/merged",
             tickers = "/v2/linear-swap-ex/market/detail/batch_merged",
             depth = "/linear-swap-ex/market/depth",
             kline = "/linear-swap-ex/market/history/kline",
             funding = "/linear-swap-api/v1/swap_funding_rate",
             fundings = "/linear-swap-api/v1/swap_batch_funding_rate",
             history = "/linear-swap-api/v1/swap_historical_funding_rate" },
  inverse = { ticker = "/swap-ex/market/detail/merged",
              tickers = "/v2/swap-ex/market/detail/batch_merged",
              depth = "/swap-ex/market/depth",
              kline = "/swap-ex/market/history/kline",
              funding = "/swap-api/v1/swap_funding_rate",
              fundings = "/swap-api/v1/swap_batch_funding_rate",
              history = "/swap-api/v1/swap_historical_funding_rate" },
}

--- raw_symbol(market, unified) -> "btcusdt" (spot) or "BTC-USDT" (swaps)
function _M.raw_symbol(market, unified)
  local base, quote = unified:match("^([^/]+)/([^:]+)")
  if not base then return nil end
  if market == "spot" then return (base .. quote):lower() end
  return base .. "-" .. quote
end

-- A field as HTX sent it; nil for absent, JSON null, "null" and "".
local function val(v)
  if v == nil or v == null or v == "null" or v == "" then return nil end
  return v
end

-- An integer field (milliseconds, counts): HTX writes them as numbers or
-- digit strings; both are whole numbers well within 2^53.
local function int(v)
  v = val(v)
  if v == nil then return nil end
  if type(v) == "string" then
    if not v:find("^%-?%d+$") then return nil end
    return tonumber(v)
  end
  return tonumber(v)
end

-- error_of(data) -> code, message when data is one of HTX's error bodies.
local function error_of(data)
  if type(data) ~= "table" then return nil end
  if data.status == "error" then
    local code = val(data["err-code"]) or val(data.err_code) or "error"
    local msg = val(data["err-msg"]) or val(data.err_msg) or ""
    return code, msg
  end
  local code = val(data.code)
  if data.status == nil and code ~= nil and tostring(code) ~= "200" then
    return code, val(data.message) or val(data.msg) or ""
  end
  return nil
end

local THROTTLED = { ["1032"] = true, ["1006"] = true }
local IGNORED = { ["invalid-parameter"] = true, ["bad-request"] = true, ["base-symbol-error"] = true,
  ["1013"] = true, ["1014"] = true, ["1030"] = true, ["1332"] = true }
local SYSTEM = { ["1000"] = true, ["1001"] = true, ["1002"] = true, ["1003"] = true, ["1004"] = true }

local function throttle_code(code, msg)
  local c, m = tostring(code):lower(), tostring(msg):lower()
  return THROTTLED[c] or c:find("too%-many") or c:find("frequen") or c:find("rate%-limit")
    or m:find("too many request") or m:find("exceed[%a ]*limit") ~= nil
end

--- classify(c, res) -> verdict, message [, retryable]
function _M.classify(_, res)
  local s = res.status
  if s == 403 then return "banned", "HTX refused the request (HTTP 403: IP blocked)" end
  if s == 429 then return "throttled", "HTX rate limit (HTTP 429)" end
  local body = res.body
  if type(body) ~= "string" or not (body:find('"error"', 1, true) or body:find('"code"', 1, true)) then
    return nil
  end
  local data = json.decode(body)
  local code, msg = error_of(data)
  if not code then return nil end
  local message = "HTX error " .. tostring(code) .. ": " .. tostring(msg)
  if throttle_code(code, msg) then return "throttled", message end
  if IGNORED[tostring(code)] then return "ignored", message end
  if SYSTEM[tostring(code)] then return "failure", message, true end
  return "failure", message
end

-- Whether an error message is about the symbol (skip it) rather than a
-- parameter of the collector's own (fail the dataset).
local function about_symbol(code, msg)
  local c, m = tostring(code), tostring(msg):lower()
  return c == "1013" or c == "1014" or c == "1332" or c == "base-symbol-error"
    or m:find("symbol") ~= nil or m:find("contract") ~= nil
end

-- Checks a decoded answer: data, or nil, err after skipping the symbol
-- (skipped = true) when HTX says it does not know it.
local function answer(ex, c, sym, data, what)
  local code, msg = error_of(data)
  if code then
    if sym and about_symbol(code, msg) then
      ex.skip(c, sym, "HTX error " .. tostring(code) .. ": " .. tostring(msg))
      return nil, nil, true
    end
    return nil, "HTX error " .. tostring(code) .. ": " .. tostring(msg) .. " (" .. what .. ")"
  end
  if type(data) ~= "table" then return nil, "HTX " .. what .. ": not a JSON object" end
  return data
end

local function get(ex, c, market, key, query)
  return c:get(ex.base(c, market) .. PATHS[market][key], { query = query })
end

-- The query naming sym.
local function sym_query(sym, q)
  q = q or {}
  if sym.market == "spot" then q.symbol = sym.raw else q.contract_code = sym.raw end
  return q
end

-- A level's value: a [price, size] pair's entries as HTX wrote them.
local function level(l)
  if type(l) ~= "table" then return nil, nil end
  return val(l[1]), val(l[2])
end

---------------------------------------------------------------------------
-- Parsers: raw JSON -> unified fields (no ex, no requests; tested alone).
---------------------------------------------------------------------------
local parse = {}

--- parse.ticker(tick, market, ts) -> fields of a tickers row, from a
-- detail/merged tick, a /market/tickers entry or a batch_merged tick.
function parse.ticker(t, market, ts)
  local f = {
    ts = int(t.ts) or ts,
    last = val(t.close), open = val(t.open), high = val(t.high), low = val(t.low),
    base_volume = val(t.amount),
  }
  if market == "spot" then
    f.quote_volume = val(t.vol)
  elseif market == "linear" then
    -- batch_merged (v2) writes the quote turnover as "vol"; detail/merged
    -- as trade_turnover (vol is contracts there)
    f.quote_volume = val(t.trade_turnover) or (t.number_of ~= nil and val(t.vol) or nil)
  end
  if t.bid ~= nil and type(t.bid) == "table" then
    f.bid, f.bid_size = level(t.bid)
    f.ask, f.ask_size = level(t.ask)
  else
    f.bid, f.bid_size = val(t.bid), val(t.bidSize)
    f.ask, f.ask_size = val(t.ask), val(t.askSize)
  end
  return f
end

--- parse.funding(d, ts) -> fields of a funding_current row.
function parse.funding(d, ts)
  local at, after = int(d.funding_time), int(d.next_funding_time)
  local f = { ts = ts, rate = val(d.funding_rate), predicted_rate = val(d.estimated_rate),
    next_funding_time = at }
  if at and after and after > at then f.interval_hours = (after - at) / 3600e3 end
  return f
end

--- parse.settled(d) -> fields of a funding_rates row.
function parse.settled(d)
  return { funding_time = int(d.funding_time), rate = val(d.funding_rate) }
end

--- parse.kline(k, market, candle) -> fields of a klines row.
function parse.kline(k, market, candle)
  local t = int(k.id) * 1000
  local f = { interval = candle, open_time = t, close_time = t + CANDLE_MS[candle] - 1,
    open = val(k.open), high = val(k.high), low = val(k.low), close = val(k.close),
    volume = val(k.amount) }
  if market == "spot" then
    f.quote_volume, f.trades = val(k.vol), int(k.count)
  elseif market == "linear" then
    f.quote_volume = val(k.trade_turnover)
  end
  return f
end

--- parse.book(tick, depth) -> {ts, sequence, bids, asks}
function parse.book(tick, depth, ts)
  local bids, asks = {}, {}
  for i = 1, min(#(tick.bids or {}), depth) do bids[i] = { level(tick.bids[i]) } end
  for i = 1, min(#(tick.asks or {}), depth) do asks[i] = { level(tick.asks[i]) } end
  return { ts = int(tick.ts) or ts, sequence = int(tick.version) or int(tick.mrid),
    bids = bids, asks = asks }
end

---------------------------------------------------------------------------
-- Datasets.
---------------------------------------------------------------------------

local function by_raw(symbols, upper)
  local m = {}
  for _, s in ipairs(symbols) do m[upper and s.raw:upper() or s.raw] = s end
  return m
end

--- tickers(ex, c, market, symbols) -> rows
function _M.tickers(ex, c, market, symbols)
  local rows = {}
  if #symbols == 1 then
    local sym = symbols[1]
    local data, err, kind = get(ex, c, market, "ticker", sym_query(sym))
    if data == nil then return nil, err, kind end
    local d, aerr, skipped = answer(ex, c, sym, data, "ticker")
    if skipped then return rows end
    if not d then return nil, aerr end
    if type(d.tick) ~= "table" then return nil, "HTX ticker: no tick" end
    rows[1] = ex.row(sym, parse.ticker(d.tick, market, int(d.ts)))
    return rows
  end
  local q = market ~= "spot" and { business_type = "swap" } or nil
  local data, err, kind = get(ex, c, market, "tickers", q)
  if data == nil then return nil, err, kind end
  local d, aerr = answer(ex, c, nil, data, "tickers")
  if not d then return nil, aerr end
  local list = market == "spot" and d.data or d.ticks
  if type(list) ~= "table" then return nil, "HTX tickers: no list" end
  local want, seen = by_raw(symbols, market ~= "spot"), {}
  local ts = int(d.ts)
  for _, t in ipairs(list) do
    local raw = market == "spot" and t.symbol or t.contract_code
    local sym = raw and want[market == "spot" and raw or raw:upper()]
    if sym and not seen[sym] then
      seen[sym] = true
      rows[#rows + 1] = ex.row(sym, parse.ticker(t, market, ts))
    end
  end
  for _, sym in ipairs(symbols) do
    if not seen[sym] then ex.skip(c, sym, "not listed by HTX " .. PATHS[market].tickers) end
  end
  return rows
end

-- The entries of a funding answer: data as an object ({status, data: {}})
-- or a list (the batch endpoint, and the {code, data: [...]} envelope).
local function entries(d)
  local data = d.data
  if type(data) ~= "table" then return nil end
  if data.contract_code ~= nil or data.funding_rate ~= nil then return { data } end
  return data
end

--- funding(ex, c, market, symbols) -> funding_current rows
function _M.funding(ex, c, market, symbols)
  if market == "spot" then return nil, "HTX spot has no funding rate" end
  local rows = {}
  local one = #symbols == 1 and symbols[1] or nil
  local data, err, kind
  if one then
    data, err, kind = get(ex, c, market, "funding", sym_query(one))
  else
    data, err, kind = get(ex, c, market, "fundings")
  end
  if data == nil then return nil, err, kind end
  local d, aerr, skipped = answer(ex, c, one, data, "funding rate")
  if skipped then return rows end
  if not d then return nil, aerr end
  local list = entries(d)
  if not list then return nil, "HTX funding rate: no data" end
  local want, seen = by_raw(symbols, true), {}
  local ts = int(d.ts)
  for _, e in ipairs(list) do
    local sym = type(e.contract_code) == "string" and want[e.contract_code:upper()]
    if sym and not seen[sym] then
      seen[sym] = true
      rows[#rows + 1] = ex.row(sym, parse.funding(e, ts))
    end
  end
  for _, sym in ipairs(symbols) do
    if not seen[sym] then ex.skip(c, sym, "no funding rate from HTX") end
  end
  return rows
end

--- order_book(ex, c, market, sym, depth) -> {ts, sequence, bids, asks}
-- Spot: depth 5, 10 or 20 levels are asked for as such, more as step0's
-- 150; swaps: step6 gives 20 levels, step0 150.
function _M.order_book(ex, c, market, sym, depth)
  local q
  if market == "spot" then
    q = { type = "step0" }
    if depth <= 20 then q.depth = depth <= 5 and 5 or depth <= 10 and 10 or 20 end
  else
    q = { type = depth <= 20 and "step6" or "step0" }
  end
  local data, err, kind = get(ex, c, market, "depth", sym_query(sym, q))
  if data == nil then return nil, err, kind end
  local d, aerr, skipped = answer(ex, c, sym, data, "depth")
  if skipped then return nil, "HTX does not know " .. sym.raw, "ignored" end
  if not d then return nil, aerr end
  if type(d.tick) ~= "table" then return nil, "HTX depth: no tick" end
  return parse.book(d.tick, depth, int(d.ts))
end

local function now_ms()
  return floor(sluice.time() * 1000)
end

--- klines(ex, c, market, sym, candle, from_ms, to_ms) -> rows in [from, to)
-- Spot serves only the latest 2000 candles (size, no time range): a window
-- older than that is an error; one reaching into it gets the candles there
-- are. Swaps page the window by from/to (seconds, both inclusive), 2000
-- candles a request.
function _M.klines(ex, c, market, sym, candle, from_ms, to_ms)
  local period, iv = _M.candles[candle], CANDLE_MS[candle]
  if not period then return nil, "HTX has no candle " .. tostring(candle) end
  local rows = {}
  local function take(list)
    for _, k in ipairs(list) do
      local f = parse.kline(k, market, candle)
      if f.open_time >= from_ms and f.open_time < to_ms then rows[#rows + 1] = ex.row(sym, f) end
    end
  end
  if market == "spot" then
    local size = max(1, min(KLINE_MAX, floor((now_ms() - from_ms) / iv) + 2))
    local data, err, kind = get(ex, c, market, "kline",
      sym_query(sym, { period = period, size = size }))
    if data == nil then return nil, err, kind end
    local d, aerr, skipped = answer(ex, c, sym, data, "klines")
    if skipped then return rows end
    if not d then return nil, aerr end
    if type(d.data) ~= "table" then return nil, "HTX klines: no data" end
    take(d.data)
    local oldest
    for _, k in ipairs(d.data) do
      local t = int(k.id) * 1000
      oldest = oldest and min(oldest, t) or t
    end
    if #rows == 0 and oldest and to_ms <= oldest and #d.data >= KLINE_MAX then
      return nil, fmt("HTX spot klines reach back %d candles only (to %d): window [%d, %d) is older",
        KLINE_MAX, oldest, from_ms, to_ms)
    end
    table.sort(rows, function(a, b) return a.open_time < b.open_time end)
    return rows
  end
  -- swaps: from/to in whole seconds, both ends inclusive
  local first = ceil(from_ms / iv) * iv
  local t = first
  while t < to_ms do
    local last = min(t + (KLINE_MAX - 1) * iv, floor((to_ms - 1) / iv) * iv)
    local data, err, kind = get(ex, c, market, "kline", sym_query(sym, {
      period = period, from = floor(t / 1000), to = floor(last / 1000) }))
    if data == nil then return nil, err, kind end
    local d, aerr, skipped = answer(ex, c, sym, data, "klines")
    if skipped then return rows end
    if not d then return nil, aerr end
    if type(d.data) ~= "table" then return nil, "HTX klines: no data" end
    take(d.data)
    t = last + iv
  end
  table.sort(rows, function(a, b) return a.open_time < b.open_time end)
  return rows
end

-- Pages of the funding history already fetched, per instance (weak) and
-- contract, for the current hour: HTX pages newest first by index, so a
-- page holds the same rows until the next settlement; a backfill's windows
-- (a day each) share pages, and each page is fetched once.
local page_cache = setmetatable({}, { __mode = "k" })

-- Page i of sym's history: {rows = {{funding_time, rate}, ...} newest
-- first, last = true on the last page} | nil, err, kind [, skipped].
local function history_page(ex, c, market, sym, i)
  local hour = floor(now_ms() / 3600e3)
  local per = page_cache[c]
  if not per or per.hour ~= hour then
    per = { hour = hour }
    page_cache[c] = per
  end
  local key = market .. ":" .. sym.raw .. "#" .. i
  if per[key] then return per[key] end
  local data, err, kind = get(ex, c, market, "history",
    sym_query(sym, { page_index = i, page_size = FUNDING_PAGE }))
  if data == nil then return nil, err, kind end
  local d, aerr, skipped = answer(ex, c, sym, data, "funding history")
  if skipped then return nil, nil, nil, true end
  if not d then return nil, aerr end
  local list, pages = d.data, nil
  if type(list) == "table" and list.data ~= nil then     -- {status, data: {total_page, data}}
    pages = int(list.total_page)
    list = list.data
  end
  if type(list) ~= "table" then return nil, "HTX funding history: no data" end
  local rows = {}
  for _, e in ipairs(list) do
    local f = parse.settled(e)
    if f.funding_time then rows[#rows + 1] = f end
  end
  table.sort(rows, function(a, b) return a.funding_time > b.funding_time end)
  local p = { rows = rows, last = #list < FUNDING_PAGE or (pages ~= nil and i >= pages) }
  per[key] = p
  return p
end

--- funding_history(ex, c, market, sym, from_ms, to_ms) -> funding_rates rows
-- Pages of 50, newest first: page 1 gives the newest settlement and the
-- interval, which place the window's first page; the walk goes on to older
-- pages until one reaches before from_ms, or the last.
function _M.funding_history(ex, c, market, sym, from_ms, to_ms)
  if market == "spot" then return nil, "HTX spot has no funding rate" end
  local out = {}
  local function fetch(i)
    local p, err, kind, skipped = history_page(ex, c, market, sym, i)
    if skipped then return nil, nil, nil, true end
    return p, err, kind
  end
  local first, err, kind, skipped = fetch(1)
  if skipped then return out end
  if not first then return nil, err, kind end
  local r = first.rows
  if #r == 0 then return out end
  local iv = #r >= 2 and (r[1].funding_time - r[2].funding_time) or 8 * 3600e3
  local i = max(1, floor((r[1].funding_time - (to_ms - 1)) / iv / FUNDING_PAGE) + 1)
  -- find the page holding the newest row before to_ms
  local tried = {}
  while true do
    tried[i] = true
    local p
    p, err, kind = fetch(i)
    if not p then return nil, err, kind end
    local rows = p.rows
    if #rows > 0 and rows[#rows].funding_time >= to_ms and not p.last and not tried[i + 1] then
      i = i + 1                                   -- all newer than the window
    elseif i > 1 and not tried[i - 1] and (#rows == 0 or rows[1].funding_time + iv < to_ms) then
      i = i - 1                                   -- the window starts on a newer page
    else
      break
    end
  end
  while true do
    local p
    p, err, kind = fetch(i)
    if not p then return nil, err, kind end
    for _, f in ipairs(p.rows) do
      if f.funding_time >= from_ms and f.funding_time < to_ms then
        out[#out + 1] = ex.row(sym, { funding_time = f.funding_time, rate = f.rate })
      end
    end
    local rows = p.rows
    if p.last or #rows == 0 or rows[#rows].funding_time < from_ms then break end
    i = i + 1
  end
  table.sort(out, function(a, b) return a.funding_time < b.funding_time end)
  return out
end

return _M
