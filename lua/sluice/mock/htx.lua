--- sluice.mock.htx: a mock HTX (Huobi) REST API -- spot, USDT-margined and
-- coin-margined swaps on one sluice.server -- for the htx collector's
-- specs; no test touches the internet.
--
--   local mock = require "sluice.mock.htx"
--   local m = mock.start{ now = function() return 1710328245889 end,
--     fixtures = "tests/fixtures/ccxt/htx.json" }
--   http.get(m.url .. "/market/depth", { query = { symbol = "btcusdt", type = "step0" } })
--   m:inject{ status = 500, count = 3 }      -- the next three requests fail
--   m:stop()
--
-- mock.start(opts) -> m   (raises when it cannot listen)
--   host, port    where to listen (default "127.0.0.1", 0 = a free port)
--   now           function -> epoch milliseconds (default the wall clock):
--                 drives candles, funding times, rate-limit windows, bans
--   seed          integer mixed into every synthetic number (default 1)
--   symbols       unified symbols it lists (default BTC/USDT, ETH/USDT,
--                 BTC/USDT:USDT, ETH/USDT:USDT, BTC/USD:BTC, ETH/USD:ETH)
--   fixtures      a ccxt fixture file (tests/fixtures/ccxt/htx.json): its
--                 recorded responses answer the requests that name the
--                 recorded symbol (and period) on the path the adapter
--                 calls, re-encoded by sluice.json (exact numbers, keys
--                 sorted): fetchTicker (spot detail/merged), fetchOHLCV
--                 (spot kline, also on /market/history/candles, the path
--                 the recording names), fetchFundingRate and
--                 fetchFundingRateHistory (page 1)
--   limit         requests per window per client (default 800)
--   window        the rate-limit window in seconds (default 3)
--   ban_after     answers over the limit in one window before the IP is
--                 banned (default 3)
--   ban_seconds   length of a ban (default 120)
--   listed        epoch ms the contracts' funding history starts (default
--                 now - 200 days)
-- m.url, m.port, m.requests, m.log ({method, path, query, status}),
-- m:reset(), m:stop(), m:count(path) -> requests logged on path,
-- m:paths() -> the paths it serves, m:handle(req) -> status, body, headers
-- (the answer to a sluice.server request: for sluice.testing's respond)
-- m:inject{status, body, headers, count = 1, path, delay, abort}: faults
--   consumed in order by the requests they match (path exact, optional);
--   status without body answers HTX's body for it (429: the spot limit
--   body; 403: the WAF's HTML page; 5xx: a gateway error), status 200 with
--   body answers that body (a crossed book, an error object).
--
-- Endpoints (GET): spot /market/detail/merged, /market/tickers,
-- /market/depth (depth 5/10/20, else 150 levels), /market/history/kline
-- (size 1..2000, newest first); swaps (linear "/linear-swap-ex",
-- "/linear-swap-api", inverse "/swap-ex", "/swap-api"):
-- market/detail/merged, /v2/...-ex/market/detail/batch_merged,
-- market/depth (type step0: 150 levels, step6: 20), market/history/kline
-- (size, or from/to seconds inclusive, at most 2000 candles, ascending),
-- v1/swap_funding_rate, v1/swap_batch_funding_rate,
-- v1/swap_historical_funding_rate (page_index, page_size <= 50, newest
-- first, funding every 8 h at 00/08/16 UTC). Every answer carries
-- X-HB-RateLimit-Requests-Remain and X-HB-RateLimit-Requests-Expire (epoch
-- ms when the window ends). Errors are HTX's shapes: an unknown symbol
-- {"status":"error","err-code":"invalid-parameter","err-msg":"invalid
-- symbol"} (swap market endpoints: "invalid contract code"; swap api:
-- {"status":"error","err_code":1014,"err_msg":"This contract doesn't
-- exist."}); over the limit, spot answers HTTP 429, swaps HTTP 200 with
-- err_code 1032; a ban is a 403.
local sluice = require "sluice"
local server = require "sluice.server"
local options = require "sluice.options"
local json = require "sluice.json"
local htx = require "sluice.exchange.htx"   -- raw_symbol and candles: HTX's names
local mockhash = require "sluice.mock.hash"

local floor, max, min, exp = math.floor, math.max, math.min, math.exp
local fmt, concat = string.format, table.concat

local _M = {}

local DEFAULT_SYMBOLS = { "BTC/USDT", "ETH/USDT", "BTC/USDT:USDT", "ETH/USDT:USDT",
  "BTC/USD:BTC", "ETH/USD:ETH" }
local PRICES = { BTC = 43000, ETH = 2300, SOL = 100 }
local PERIODS = { ["1min"] = 60, ["5min"] = 300, ["15min"] = 900, ["30min"] = 1800,
  ["60min"] = 3600, ["1hour"] = 3600, ["4hour"] = 14400, ["1day"] = 86400, ["1week"] = 604800 }
local FUNDING_MS = 8 * 3600e3
local JSON_TYPE = "application/json;charset=utf-8"
local BAN_PAGE = "<html><head><title>403 Forbidden</title></head><body><h1>Access denied</h1></body></html>"

local hash, str_hash = mockhash.hash, mockhash.str_hash

-- Value noise over a few octaves (seconds between grid points, amplitude).
local OCTAVES = { { 60, 0.0005 }, { 3600, 0.004 }, { 86400, 0.02 }, { 2592000, 0.08 } }

local function price(sym, t)
  local s, sum = t / 1000, 0
  for k, o in ipairs(OCTAVES) do
    local g = s / o[1]
    local i = floor(g)
    local f = g - i
    local a, b = hash(sym.h, i, k) * 2 - 1, hash(sym.h, i + 1, k) * 2 - 1
    sum = sum + (a + (b - a) * f) * o[2]
  end
  return sym.price * exp(sum)
end

local function round(x, step) return floor(x / step + 0.5) * step end
local function num(x, places) return fmt("%." .. places .. "f", x) end

local function ok(fields, now)
  return 200, '{"status":"ok",' .. fields .. ',"ts":' .. fmt("%d", now) .. "}"
end

-- The paths HTX serves, per market.
local PATHS = {
  spot = { ticker = "/market/detail/merged", tickers = "/market/tickers",
           depth = "/market/depth", kline = "/market/history/kline" },
  linear = { ticker = "/linear-swap-ex/market/detail/merged",
             tickers = "/v2/linear-swap-ex/market/detail/batch_merged",
             depth = "/linear-swap-ex/market/depth", kline = "/linear-swap-ex/market/history/kline",
             funding = "/linear-swap-api/v1/swap_funding_rate",
             fundings = "/linear-swap-api/v1/swap_batch_funding_rate",
             history = "/linear-swap-api/v1/swap_historical_funding_rate" },
  inverse = { ticker = "/swap-ex/market/detail/merged", tickers = "/v2/swap-ex/market/detail/batch_merged",
              depth = "/swap-ex/market/depth", kline = "/swap-ex/market/history/kline",
              funding = "/swap-api/v1/swap_funding_rate", fundings = "/swap-api/v1/swap_batch_funding_rate",
              history = "/swap-api/v1/swap_historical_funding_rate" },
}

local Mock = {}
Mock.__index = Mock

-- The symbol a request names: sym, or nil plus HTX's answer.
function Mock:_sym(q, market, api, now)
  local raw = market == "spot" and q.symbol or q.contract_code
  local sym = raw and self._raw[market][market == "spot" and raw or raw:upper()]
  if sym then return sym end
  if api then
    return nil, 200, fmt('{"status":"error","err_code":1014,"err_msg":"This contract doesn\'t exist.","ts":%d}', now)
  end
  return nil, 200, fmt('{"status":"error","err-code":"invalid-parameter","err-msg":"%s","data":null,"ts":%d}',
    market == "spot" and "invalid symbol" or "invalid contract code", now)
end

local function bad(msg, now)
  return 200, fmt('{"status":"error","err-code":"invalid-parameter","err-msg":"%s","data":null,"ts":%d}', msg, now)
end

function Mock:_recorded(path, sym, extra)
  local r = self._fixtures[path .. "?" .. sym.raw .. (extra and ("&" .. extra) or "")]
  return r
end

-- The 24 h summary of sym at now (numbers).
local function summary(sym, now)
  local p = price(sym, now)
  local o = price(sym, now - 86400e3)
  local u = function(k) return hash(sym.h, floor(now / 1000), k) end
  local amount = sym.vol * (0.5 + u(1))
  return { close = round(p, sym.tick), open = round(o, sym.tick),
    high = round(max(p, o) * (1 + 0.01 * u(2)), sym.tick), low = round(min(p, o) * (1 - 0.01 * u(3)), sym.tick),
    amount = amount, vol = amount * p, count = floor(50000 * (0.5 + u(4))),
    bid = round(p, sym.tick) - sym.tick, ask = round(p, sym.tick), bid_size = 1 + floor(100 * u(5)),
    ask_size = 1 + floor(100 * u(6)) }
end

function Mock:_merged(q, now, market)
  local sym, s, b = self:_sym(q, market, false, now)
  if not sym then return s, b end
  local rec = self:_recorded(PATHS[market].ticker, sym)
  if rec then return 200, rec end
  local m = summary(sym, now)
  local tick
  if market == "spot" then
    tick = fmt('"id":%d,"version":%d,"open":%s,"close":%s,"low":%s,"high":%s,"amount":%s,"vol":%s,'
      .. '"count":%d,"bid":[%s,%s],"ask":[%s,%s]', floor(now / 1000), floor(now / 1000), num(m.open, 2),
      num(m.close, 2), num(m.low, 2), num(m.high, 2), num(m.amount, 6), num(m.vol, 8), m.count,
      num(m.bid, 2), num(m.bid_size / 1000, 6), num(m.ask, 2), num(m.ask_size / 1000, 6))
  else
    tick = fmt('"id":%d,"ts":%d,"open":"%s","close":"%s","low":"%s","high":"%s","amount":"%s","vol":"%s",'
      .. '"trade_turnover":"%s","count":%d,"bid":[%s,%d],"ask":[%s,%d]', floor(now / 1000), now,
      num(m.open, 1), num(m.close, 1), num(m.low, 1), num(m.high, 1), num(m.amount, 3),
      num(m.amount * 1000, 0), num(m.vol, 4), m.count, num(m.bid, 1), m.bid_size, num(m.ask, 1), m.ask_size)
  end
  return ok(fmt('"ch":"market.%s.detail.merged","tick":{%s}', sym.raw, tick), now)
end

function Mock:_tickers(_, now, market)
  local out = {}
  for _, sym in ipairs(self._list[market]) do
    local m = summary(sym, now)
    if market == "spot" then
      out[#out + 1] = fmt('{"symbol":"%s","open":%s,"high":%s,"low":%s,"close":%s,"amount":%s,"vol":%s,'
        .. '"count":%d,"bid":%s,"bidSize":%s,"ask":%s,"askSize":%s}', sym.raw, num(m.open, 2),
        num(m.high, 2), num(m.low, 2), num(m.close, 2), num(m.amount, 6), num(m.vol, 8), m.count,
        num(m.bid, 2), num(m.bid_size / 1000, 6), num(m.ask, 2), num(m.ask_size / 1000, 6))
    else
      out[#out + 1] = fmt('{"id":%d,"ts":%d,"ask":[%s,%d],"bid":[%s,%d],"business_type":"swap",'
        .. '"contract_code":"%s","open":"%s","close":"%s","low":"%s","high":"%s","amount":"%s",'
        .. '"count":%d,"vol":"%s","number_of":"%s"}', floor(now / 1000), now, num(m.ask, 1), m.ask_size,
        num(m.bid, 1), m.bid_size, sym.raw, num(m.open, 1), num(m.close, 1), num(m.low, 1),
        num(m.high, 1), num(m.amount, 3), m.count, num(m.vol, 4), num(m.amount * 1000, 0))
    end
  end
  local key = market == "spot" and "data" or "ticks"
  return ok('"' .. key .. '":[' .. concat(out, ",") .. "]", now)
end

function Mock:_depth(q, now, market)
  local sym, s, b = self:_sym(q, market, false, now)
  if not sym then return s, b end
  local n
  if market == "spot" then
    if q.type and not q.type:find("^step[0-5]$") then return bad("invalid type", now) end
    if q.depth == nil then
      n = 150
    elseif q.depth == "5" or q.depth == "10" or q.depth == "20" then
      n = tonumber(q.depth)
    else
      return bad("invalid depth", now)
    end
  else
    if q.type == "step0" then n = 150 elseif q.type == "step6" then n = 20 else return bad("invalid type", now) end
  end
  local p = round(price(sym, now), sym.tick)
  local places = market == "spot" and 2 or 1
  local bids, asks = {}, {}
  for i = 1, n do
    local bs, as = hash(sym.h, now, i, 1), hash(sym.h, now, i, 2)
    if market == "spot" then
      bs, as = num(0.001 + bs, 6), num(0.001 + as, 6)
    else
      bs, as = fmt("%d", 1 + floor(500 * bs)), fmt("%d", 1 + floor(500 * as))
    end
    bids[i] = "[" .. num(p - i * sym.tick, places) .. "," .. bs .. "]"
    asks[i] = "[" .. num(p + (i - 1) * sym.tick, places) .. "," .. as .. "]"
  end
  local step = market == "spot" and (q.type or "step0") or q.type
  return ok(fmt('"ch":"market.%s.depth.%s","tick":{"ts":%d,"version":%d,"bids":[%s],"asks":[%s]}',
    sym.raw, step, now, floor(now / 100), concat(bids, ","), concat(asks, ",")), now)
end

-- One synthetic candle as HTX's JSON object.
local function candle(sym, market, iv, t, now)
  local stop = min(t + iv, now)
  local o, c = round(price(sym, t), sym.tick), round(price(sym, stop), sym.tick)
  local u = function(k) return hash(sym.h, t, iv, k) end
  local hi = round(max(o, c) * (1 + 0.0005 * u(1)), sym.tick)
  local lo = round(min(o, c) * (1 - 0.0005 * u(2)), sym.tick)
  local secs = max(1, (stop - t) / 1000)
  local amount = sym.vol / 86400 * secs * (0.4 + 1.2 * u(3))
  local count = max(1, floor(secs * (0.2 + u(4))))
  local vwap = (o + hi + lo + c) / 4
  if market == "spot" then
    return fmt('{"id":%d,"open":%s,"close":%s,"low":%s,"high":%s,"amount":%s,"vol":%s,"count":%d}',
      floor(t / 1000), num(o, 2), num(c, 2), num(lo, 2), num(hi, 2), num(amount, 8), num(amount * vwap, 8), count)
  end
  return fmt('{"id":%d,"open":%s,"close":%s,"low":%s,"high":%s,"amount":%s,"vol":%d,"trade_turnover":%s,"count":%d}',
    floor(t / 1000), num(o, 1), num(c, 1), num(lo, 1), num(hi, 1), num(amount, 4),
    floor(amount * 1000), num(amount * vwap, 4), count)
end

function Mock:_kline(q, now, market)
  local sym, s, b = self:_sym(q, market, false, now)
  if not sym then return s, b end
  local secs = PERIODS[q.period or ""]
  if not secs or (market == "spot" and q.period == "1hour") then return bad("invalid period", now) end
  local rec = self:_recorded(PATHS[market].kline, sym, "period=" .. q.period)
  if rec then return 200, rec end
  local iv = secs * 1000
  local size = q.size and tonumber(q.size)
  if q.size and (not size or size < 1 or size > 2000 or size % 1 ~= 0) then
    return bad("invalid size,valid range: [1, 2000]", now)
  end
  local last = floor(now / iv) * iv
  local list = {}
  if market == "spot" or size or not (q.from and q.to) then
    if market ~= "spot" and not size and not (q.from and q.to) then
      return bad("invalid size", now)
    end
    size = size or 150
    for i = 0, size - 1 do list[#list + 1] = candle(sym, market, iv, last - i * iv, now) end
    if market ~= "spot" then       -- swaps answer oldest first
      local r = {}
      for i = #list, 1, -1 do r[#r + 1] = list[i] end
      list = r
    end
  else
    local from, to = tonumber(q.from), tonumber(q.to)
    if not from or not to or from > to then return bad("invalid from/to", now) end
    local first = math.ceil(from * 1000 / iv) * iv
    local stop = min(last, floor(to * 1000 / iv) * iv)
    if (stop - first) / iv + 1 > 2000 then return bad("invalid size,valid range: [1, 2000]", now) end
    for t = first, stop, iv do list[#list + 1] = candle(sym, market, iv, t, now) end
  end
  return ok(fmt('"ch":"market.%s.kline.%s","data":[%s]', sym.raw, q.period, concat(list, ",")), now)
end

-- The rate settled at funding time t, as HTX's 18-place text.
local function rate(sym, t)
  return num((hash(sym.h, t, 8) - 0.3) * 0.0004, 18)
end

local function funding_entry(sym, now)
  local at = (floor(now / FUNDING_MS) + 1) * FUNDING_MS
  local quote = sym.raw:match("%-(%w+)$")
  if sym.market == "linear" then
    return fmt('{"symbol":"%s","contract_code":"%s","fee_asset":"%s","funding_time":"%d","funding_rate":"%s",'
      .. '"estimated_rate":null,"next_funding_time":"%d"}', sym.base, sym.raw, quote, at, rate(sym, at),
      at + FUNDING_MS)
  end
  return fmt('{"symbol":"%s","contract_code":"%s","fee_asset":"%s","funding_time":"%d","funding_rate":"%s",'
    .. '"estimated_rate":null,"next_funding_time":null}', sym.base, sym.raw, sym.base, at, rate(sym, at))
end

function Mock:_funding(q, now, market)
  local sym, s, b = self:_sym(q, market, true, now)
  if not sym then return s, b end
  local rec = self:_recorded(PATHS[market].funding, sym)
  if rec then return 200, rec end
  return ok('"data":' .. funding_entry(sym, now), now)
end

function Mock:_fundings(q, now, market)
  local list = {}
  for _, sym in ipairs(self._list[market]) do
    if q.contract_code == nil or q.contract_code:upper() == sym.raw then
      list[#list + 1] = funding_entry(sym, now)
    end
  end
  return ok('"data":[' .. concat(list, ",") .. "]", now)
end

function Mock:_history(q, now, market)
  local sym, s, b = self:_sym(q, market, true, now)
  if not sym then return s, b end
  local page, size = tonumber(q.page_index or "1"), tonumber(q.page_size or "20")
  if not page or page < 1 or page % 1 ~= 0 or not size or size < 1 or size > 50 or size % 1 ~= 0 then
    return 200, fmt('{"status":"error","err_code":1030,"err_msg":"Input error.","ts":%d}', now)
  end
  if page == 1 then
    local rec = self:_recorded(PATHS[market].history, sym)
    if rec then return 200, rec end
  end
  local newest = floor(now / FUNDING_MS) * FUNDING_MS
  local oldest = math.ceil(self._listed / FUNDING_MS) * FUNDING_MS
  local total = max(0, floor((newest - oldest) / FUNDING_MS) + 1)
  local pages = max(1, math.ceil(total / size))
  local list = {}
  for i = (page - 1) * size, min(total, page * size) - 1 do
    local t = newest - i * FUNDING_MS
    list[#list + 1] = fmt('{"avg_premium_index":"%s","funding_rate":"%s","realized_rate":null,'
      .. '"funding_time":"%d","contract_code":"%s","symbol":"%s","fee_asset":"%s"}',
      num(hash(sym.h, t, 9) * 0.0002, 18), rate(sym, t), t, sym.raw, sym.base,
      sym.market == "linear" and sym.quote or sym.base)
  end
  return ok(fmt('"data":{"total_page":%d,"current_page":%d,"total_size":%d,"data":[%s]}',
    pages, page, total, concat(list, ",")), now)
end

local ROUTES = {}
for market, p in pairs(PATHS) do
  ROUTES[p.ticker] = { market, Mock._merged }
  ROUTES[p.tickers] = { market, Mock._tickers }
  ROUTES[p.depth] = { market, Mock._depth }
  ROUTES[p.kline] = { market, Mock._kline }
  if p.funding then
    ROUTES[p.funding] = { market, Mock._funding, true }
    ROUTES[p.fundings] = { market, Mock._fundings, true }
    ROUTES[p.history] = { market, Mock._history, true }
  end
end
ROUTES["/market/history/candles"] = ROUTES["/market/history/kline"]

-- The limit: nil to go on, or status and body (429 / 1032 over the limit,
-- 403 once banned).
function Mock:_limit(market, now)
  if self._banned_until and now >= self._banned_until then self._banned_until = nil end
  if self._banned_until then return 403, BAN_PAGE end
  local w = self._opts.window * 1000
  local start = floor(now / w) * w
  if start ~= self._window then self._window, self.used, self._refused = start, 0, 0 end
  if self.used < self._opts.limit then
    self.used = self.used + 1
    return nil
  end
  self._refused = self._refused + 1
  if self._refused > self._opts.ban_after then
    self._banned_until = now + self._opts.ban_seconds * 1000
    return 403, BAN_PAGE
  end
  if market == "spot" then
    return 429, '{"status":"error","err-code":"too-many-request","err-msg":"Too many requests","data":null}'
  end
  return 200, fmt('{"status":"error","err_code":1032,"err_msg":"The number of access exceeded the limit.",'
    .. '"ts":%d}', now)
end

function Mock:_take_fault(path)
  for i, f in ipairs(self._faults) do
    if f.path == nil or f.path == path then
      f.left = f.left - 1
      if f.left <= 0 then table.remove(self._faults, i) end
      return f
    end
  end
end

local FAULT_BODIES = {
  [429] = '{"status":"error","err-code":"too-many-request","err-msg":"Too many requests","data":null}',
  [403] = BAN_PAGE,
  [500] = '{"status":"error","err-code":"gateway-internal-error","err-msg":"Timeout","data":null}',
  [502] = "<html><head><title>502 Bad Gateway</title></head><body>502 Bad Gateway</body></html>",
  [503] = '{"status":"error","err-code":"service-unavailable","err-msg":"Service unavailable","data":null}',
}

function Mock:_handle(req)
  local entry = { method = req.method, path = req.path, query = req.query }
  self.requests = self.requests + 1
  self.log[#self.log + 1] = entry
  local fault = self:_take_fault(req.path)
  if fault and fault.delay then sluice.sleep(fault.delay) end
  if fault and fault.abort then
    entry.status = "abort"
    req:abort()
    return
  end
  local now = floor(self._now())
  local status, body
  local route = ROUTES[req.path]
  if fault and fault.status then
    status, body = fault.status, fault.body or FAULT_BODIES[fault.status]
      or fmt('{"status":"error","err-code":"http-%d","err-msg":"HTTP %d","data":null}', fault.status, fault.status)
  elseif not route then
    status, body = 404, '{"status":"error","err-code":"invalid-parameter","err-msg":"404 Not Found","data":null}'
  elseif req.method ~= "GET" then
    status, body = 405, '{"status":"error","err-code":"bad-request","err-msg":"method not allowed","data":null}'
  else
    status, body = self:_limit(route[1], now)
    if not status then status, body = route[2](self, req.query, now, route[1]) end
  end
  entry.status = status
  local w = self._opts.window * 1000
  local headers = { ["Content-Type"] = status == 403 and "text/html" or JSON_TYPE,
    ["X-HB-RateLimit-Requests-Remain"] = tostring(max(0, self._opts.limit - self.used)),
    ["X-HB-RateLimit-Requests-Expire"] = fmt("%d", (floor(now / w) + 1) * w) }
  for k, v in pairs(fault and fault.headers or {}) do headers[k] = v end
  return status, body, headers
end

--- m:handle(req) -> status, body, headers: answers a sluice.server request
-- as the mock does (logged and counted), e.g. from a sluice.testing rule's
-- respond, so a collector under sluice.testing talks to the mock.
function Mock:handle(req)
  return self:_handle(req)
end

--- m:paths() -> every path the mock serves, sorted.
function Mock.paths()
  local out = {}
  for p in pairs(ROUTES) do out[#out + 1] = p end
  table.sort(out)
  return out
end

--- m:count(path) -> the requests logged on path
function Mock:count(path)
  local n = 0
  for _, e in ipairs(self.log) do if e.path == path then n = n + 1 end end
  return n
end

local FAULT = { status = { integer = true, min = 200, max = 599 }, count = "number", body = "string",
  headers = "table", delay = "number", abort = "boolean", path = "string" }

function Mock:inject(spec)
  if type(spec) ~= "table" then
    error("sluice.mock.htx.inject: bad argument #1 'fault' (table expected, got " .. type(spec) .. ")", 2)
  end
  options.check("sluice.mock.htx.inject", spec, FAULT)
  if not (spec.status or spec.abort or spec.delay) then
    error("sluice.mock.htx.inject: a fault needs status, abort or delay", 2)
  end
  local f = {}
  for k, v in pairs(spec) do f[k] = v end
  f.left = spec.count or 1
  self._faults[#self._faults + 1] = f
  return self
end

function Mock:reset()
  self.requests, self.log, self._faults = 0, {}, {}
  self.used, self._window, self._refused, self._banned_until = 0, nil, 0, nil
  return self
end

function Mock:stop()
  return self._srv:close()
end

-- recorded["<path>?<raw>[&period=p]"] = the response re-encoded.
local function load_fixtures(path)
  local f, err = io.open(path, "rb")
  if not f then error("sluice.mock.htx: cannot read fixtures: " .. err, 3) end
  local doc, derr = json.decode(f:read("*a"))
  f:close()
  if type(doc) ~= "table" then error("sluice.mock.htx: bad fixtures " .. path .. ": " .. tostring(derr), 3) end
  local out = {}
  for _, e in ipairs(doc.entries or {}) do
    local input = e.input
    local unified = type(input) == "table" and input[1]
    if type(unified) == "string" and type(e.httpResponse) == "table" then
      local market = not unified:find(":") and "spot"
        or (unified:match(":(%w+)$") == unified:match("/(%w+)") and "linear" or "inverse")
      local raw, p = htx.raw_symbol(market, unified), PATHS[market]
      local body = assert(json.encode(e.httpResponse))
      if e.method == "fetchTicker" then
        out[p.ticker .. "?" .. raw] = body
      elseif e.method == "fetchOHLCV" and market == "spot" then
        local period = htx.candles[input[2] or "1m"]
        out[p.kline .. "?" .. raw .. "&period=" .. period] = body
        out["/market/history/candles?" .. raw .. "&period=" .. period] = body
      elseif e.method == "fetchFundingRate" and p.funding then
        out[p.funding .. "?" .. raw] = body
      elseif e.method == "fetchFundingRateHistory" and p.history then
        out[p.history .. "?" .. raw] = body
      end
    end
  end
  return out
end

local OPTIONS = { host = "string", port = "number", seed = "number", now = "function",
  symbols = "table", fixtures = "string", limit = "number", window = "number",
  ban_after = "number", ban_seconds = "number", listed = "number" }

function _M.start(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("sluice.mock.htx.start: bad argument #1 'opts' (table expected, got " .. type(opts) .. ")", 2)
  end
  opts = options.check("sluice.mock.htx.start", opts, OPTIONS) or {}
  local now = opts.now or function() return floor(sluice.time() * 1000) end
  local m = setmetatable({
    _fixtures = opts.fixtures and load_fixtures(opts.fixtures) or {},
    _raw = { spot = {}, linear = {}, inverse = {} }, _list = { spot = {}, linear = {}, inverse = {} },
    _opts = { limit = opts.limit or 800, window = opts.window or 3, ban_after = opts.ban_after or 3,
              ban_seconds = opts.ban_seconds or 120 },
    _now = now, _listed = opts.listed or (now() - 200 * 86400e3),
  }, Mock)
  local seed = opts.seed or 1
  for _, unified in ipairs(opts.symbols or DEFAULT_SYMBOLS) do
    local base, quote, settle = unified:match("^(%w+)/(%w+):?(%w*)$")
    if not base then error("sluice.mock.htx.start: bad symbol " .. tostring(unified), 2) end
    local market = settle == "" and "spot" or settle == quote and "linear" or "inverse"
    local raw = htx.raw_symbol(market, unified)
    local h = str_hash(seed, raw)
    local sym = { unified = unified, market = market, raw = raw, base = base, quote = quote, h = h,
      price = PRICES[base] or (1 + 99 * hash(h, 7)), tick = market == "spot" and 0.01 or 0.1,
      vol = 20000 / (PRICES[base] or 10) }
    m._raw[market][raw] = sym
    m._list[market][#m._list[market] + 1] = sym
  end
  local srv, err = server.listen{ host = opts.host or "127.0.0.1", port = opts.port or 0 }
  if not srv then error("sluice.mock.htx: " .. err, 2) end
  m._srv, m.port = srv, srv.port
  m.url = "http://" .. (srv.host:find(":") and "[" .. srv.host .. "]" or srv.host) .. ":" .. srv.port
  m:reset()
  srv:route("*", "/*", function(req) return m:_handle(req) end)
  return m
end

return _M
