--- sluice.mock.bitget: a mock Bitget REST API v2 (public market data) on
-- sluice.server, so the bitget collector's specs never touch the internet.
--
--   local mock = require "sluice.mock.bitget"
--   local m = mock.start{ fixtures = "tests/fixtures/ccxt/bitget.json" }
--   http.get(m.url .. "/api/v2/spot/market/tickers", { query = { symbol = "BTCUSDT" } })
--   m:inject{ status = 500, count = 3 }   -- a 5xx storm for the next 3 requests
--   m:stop()
--
-- mock.start(opts) -> m   (raises when it cannot listen)
--   host, port      where to listen (default "127.0.0.1", 0 = a free port)
--   seed            integer mixed into every synthetic number (default 1)
--   now             function returning epoch milliseconds (default the wall
--                   clock): tickers, books, open candles, settlements, limits
--   symbols         unified symbols it lists (default BTC/USDT, ETH/USDT,
--                   BTC/USDT:USDT, ETH/USDT:USDT, BTC/USD:BTC, ETH/USD:ETH);
--                   any other is unknown (40034)
--   fixtures        a ccxt fixture file (tests/fixtures/ccxt/bitget.json):
--                   its v2 recordings are served (below)
--   endpoint_limit  requests per second per endpoint (default 20; Bitget's
--                   public market endpoints), over it: HTTP 429 code "429"
--   ip_limit        requests per minute in all (default 6000), over it the
--                   gateway blocks the IP: HTTP 403 for ban_seconds (300)
-- m.port, m.url, m.requests (count), m.log (list of {method, path, query,
-- status}), m:stop(), m:reset(), m:count(path) (requests to a path),
-- m:handle(req) -> status, body, headers (answers a sluice.server request;
-- for a sluice.testing rule's respond), m.paths (the endpoints served),
-- m.kline(market, raw, granularity, open_time) -> the synthetic row as
-- served (a Lua list of strings), m.funding_rate(market, raw, time) -> text.
-- m:inject{status, code, msg, body, headers, count = 1, path, delay, abort,
--   retry_after}: faults consumed in order by the requests they match (path
--   exact, optional). status answers it, with `body`, or Bitget's envelope
--   {"code": code, "msg": msg, ...} when code is given, or Bitget's own body
--   for that status. A fault with code and no status answers HTTP 400.
--   delay sleeps first; abort closes the connection unanswered.
--
-- Recorded answers: the v2 entries of the fixture (spot ticker BTCUSDT, spot
-- order book BTCUSDT with 2 levels, candles of BTCUSDT spot 1min, BTCUSDT
-- USDT-FUTURES 1m and BTCUSD COIN-FUTURES 1m, current and settled funding of
-- BTCUSDT USDT-FUTURES). A request whose answer holds exactly the recorded
-- rows gets the recorded httpResponse (as sluice.json encodes it: the same
-- values, keys sorted); a bigger answer has the recorded rows in place of
-- the synthetic ones at the same times (symbol in a list, candle open time,
-- settlement time). v3 ("uta") and other entries are not served.
--
-- Every JSON answer carries x-mbx-used-remain-limit (requests left on that
-- endpoint this second). Errors are Bitget's envelope on HTTP 400:
-- 40034 "Parameter X does not exist" (unknown symbol), 40019 "Parameter X
-- cannot be empty", 40017 "Parameter verification failed"; 404 code 40404.
local sluice = require "sluice"
local server = require "sluice.server"
local options = require "sluice.options"
local json = require "sluice.json"
local mockhash = require "sluice.mock.hash"

local floor, max, min, exp, sqrt = math.floor, math.max, math.min, math.exp, math.sqrt
local fmt, concat = string.format, table.concat

local _M = {}

local H, D = 3600e3, 86400e3
-- granularity -> milliseconds, alignment offset, days /candles reaches back.
-- Bitget's plain day/6h/12h/week candles open at UTC+8 midnight; the
-- "utc" ones at UTC's; weeks on Monday (the epoch was a Thursday).
local function g(ms, off, reach) return { ms, off or 0, reach } end
local GRAN = {
  spot = {
    ["1min"] = g(60e3, 0, 30), ["3min"] = g(180e3, 0, 30), ["5min"] = g(300e3, 0, 30),
    ["15min"] = g(900e3, 0, 30), ["30min"] = g(1800e3, 0, 30), ["1h"] = g(H, 0, 60),
    ["4h"] = g(4 * H, 0, 90), ["6h"] = g(6 * H, -8 * H, 90), ["12h"] = g(12 * H, -8 * H, 90),
    ["1day"] = g(D, -8 * H, 90), ["3day"] = g(3 * D, -8 * H, 90), ["1week"] = g(7 * D, 4 * D - 8 * H, 90),
    ["6Hutc"] = g(6 * H, 0, 90), ["12Hutc"] = g(12 * H, 0, 90), ["1Dutc"] = g(D, 0, 90),
    ["3Dutc"] = g(3 * D, 0, 90), ["1Wutc"] = g(7 * D, 4 * D, 90),
  },
  mix = {
    ["1m"] = g(60e3, 0, 30), ["3m"] = g(180e3, 0, 30), ["5m"] = g(300e3, 0, 30),
    ["15m"] = g(900e3, 0, 30), ["30m"] = g(1800e3, 0, 30), ["1H"] = g(H, 0, 60),
    ["2H"] = g(2 * H, 0, 90), ["4H"] = g(4 * H, 0, 90), ["6H"] = g(6 * H, -8 * H, 90),
    ["12H"] = g(12 * H, -8 * H, 90), ["1D"] = g(D, -8 * H, 90), ["3D"] = g(3 * D, -8 * H, 90),
    ["1W"] = g(7 * D, 4 * D - 8 * H, 90), ["6Hutc"] = g(6 * H, 0, 90), ["12Hutc"] = g(12 * H, 0, 90),
    ["1Dutc"] = g(D, 0, 90), ["3Dutc"] = g(3 * D, 0, 90), ["1Wutc"] = g(7 * D, 4 * D, 90),
  },
}
local PRODUCTS = { ["USDT-FUTURES"] = "linear", ["COIN-FUTURES"] = "inverse" }
local DEFAULT_SYMBOLS = { "BTC/USDT", "ETH/USDT", "BTC/USDT:USDT", "ETH/USDT:USDT",
  "BTC/USD:BTC", "ETH/USD:ETH" }
-- price, tick, lot, base volume per second
local PROFILES = { BTC = { 43000, 0.1, 0.0001, 0.3 }, ETH = { 2300, 0.01, 0.001, 3 } }
local OCTAVES = { { 1, 0.00007 }, { 60, 0.0005 }, { 900, 0.002 }, { 14400, 0.008 },
  { 259200, 0.03 }, { 2592000, 0.08 }, { 31536000, 0.25 } }
local FUNDING_EVERY = 8 * H
local HISTORY_FROM = 1546300800000          -- 2019-01-01: the first settlement served
local JSON = "application/json"

local hash, str_hash = mockhash.hash, mockhash.str_hash

-- x rounded to a step, as text with the step's decimals (no exponent).
local function dec(x, step)
  local places = max(0, -floor(math.log10(step) + 1e-9))
  return fmt("%." .. places .. "f", floor(x / step + 0.5) * step)
end

local function price(sym, t)
  local s, sum = t / 1000, 0
  for k = 1, #OCTAVES do
    local o = OCTAVES[k]
    local gr = s / o[1]
    local i = floor(gr)
    local f = gr - i
    local a = hash(sym.h, i, k) * 2 - 1
    local b = hash(sym.h, i + 1, k) * 2 - 1
    sum = sum + (a + (b - a) * f) * o[2]
  end
  return sym.price * exp(sum)
end

local function new_symbol(seed, market, unified)
  local base, quote = unified:match("^(%w+)/(%w+)")
  local raw = base .. quote
  local p = PROFILES[base] or { 1 + 99 * hash(str_hash(seed, base), 7), 0.001, 0.01, 50 }
  return { market = market, raw = raw, unified = unified,
    h = str_hash(seed, market .. ":" .. raw), price = p[1], tick = p[2], lot = p[3], vol = p[4] }
end

local function market_of(unified)
  local _, quote, settle = unified:match("^(%w+)/(%w+):?(%w*)$")
  if not quote then error("sluice.mock.bitget: bad symbol " .. tostring(unified), 3) end
  if settle == "" then return "spot" end
  return quote == settle and "linear" or "inverse"
end

-- One synthetic candle (list of strings). Open at now: cut at now.
local function kline(sym, iv, t, now)
  local stop = min(t + iv, now)
  local o, c = price(sym, t), price(sym, stop)
  local u = function(k) return hash(sym.h, t, iv, k) end
  local sigma = 0.0005 * sqrt(iv / 60e3)
  local hi, lo = max(o, c) * (1 + sigma * u(1)), min(o, c) * (1 - sigma * u(2))
  local secs = max(1, (stop - t) / 1000)
  local vol = max(sym.lot, sym.vol * secs * (0.4 + 1.2 * u(3)))
  local vols = dec(vol, sym.lot)
  local quote = dec(tonumber(vols) * (o + hi + lo + c) / 4, 0.0001)
  local row = { fmt("%d", t), dec(o, sym.tick), dec(hi, sym.tick), dec(lo, sym.tick),
    dec(c, sym.tick), vols, quote }
  if sym.market == "spot" then row[8] = quote end   -- USDT volume, quote volume
  return row
end

-- A settlement's rate: whole millionths in [-0.0001, 0.0003).
local function funding_rate(sym, t)
  return fmt("%.6f", (floor(400 * hash(sym.h, t, 77)) - 100) / 1e6)
end

local Mock = {}
Mock.__index = Mock

local function envelope(now, data)
  return '{"code":"00000","msg":"success","requestTime":' .. fmt("%d", now)
    .. ',"data":' .. data .. "}"
end

local function api_error(now, code, msg, status)
  return status or 400, '{"code":' .. json.encode(code) .. ',"msg":' .. json.encode(msg)
    .. ',"requestTime":' .. fmt("%d", now) .. ',"data":null}'
end

function Mock:_symbol(q, market, now)
  if q.symbol == nil or q.symbol == "" then
    return nil, api_error(now, "40019", "Parameter symbol cannot be empty")
  end
  local sym = self._symbols[market][q.symbol]
  if not sym then
    return nil, api_error(now, "40034", "Parameter " .. q.symbol .. " does not exist")
  end
  return sym
end

-- The market of a mix request (productType), or nil and the error reply.
local function product(q, now)
  if q.productType == nil or q.productType == "" then
    return nil, api_error(now, "40019", "Parameter productType cannot be empty")
  end
  local market = PRODUCTS[q.productType:upper()]
  if not market then return nil, api_error(now, "40017", "Parameter verification failed") end
  return market
end

local function int_param(q, name, now)
  local v = q[name]
  if v == nil or v == "" then return nil end
  if not v:match("^%d+$") or #v > 15 then
    return false, api_error(now, "40017", "Parameter verification failed")
  end
  return tonumber(v)
end

-- The recorded answer for a key and the rows about to be served: the
-- whole recorded body when the rows are exactly its rows.
function Mock:_recorded_body(key, ids)
  local r = self._recorded[key]
  if not r or #ids ~= #r.ids then return nil end
  for i = 1, #ids do if ids[i] ~= r.ids[i] then return nil end end
  return r.body
end

function Mock:_recorded_row(key, id)
  local r = self._recorded[key]
  return r and r.rows[id]
end

function Mock:_ticker(sym, now)
  local rec = self:_recorded_row("ticker:" .. sym.market .. ":" .. sym.raw, sym.raw)
  if rec then return rec end
  local last = price(sym, now)
  local open = price(sym, now - D)
  local u = function(k) return hash(sym.h, floor(now / 1000), k) end
  local hi, lo = max(open, last) * (1 + 0.01 * u(1)), min(open, last) * (1 - 0.01 * u(2))
  local vol = sym.vol * 86400 * (0.5 + u(3))
  local t = { symbol = sym.raw, lastPr = dec(last, sym.tick), bidPr = dec(last - sym.tick, sym.tick),
    askPr = dec(last + sym.tick, sym.tick), bidSz = dec(sym.lot * (1 + 100 * u(4)), sym.lot),
    askSz = dec(sym.lot * (1 + 100 * u(5)), sym.lot), high24h = dec(hi, sym.tick),
    low24h = dec(lo, sym.tick), ts = fmt("%d", now), baseVolume = dec(vol, sym.lot),
    quoteVolume = dec(vol * (open + last) / 2, 0.0001), change24h = dec(last / open - 1, 0.0001) }
  if sym.market == "spot" then
    t.open, t.usdtVolume = dec(open, sym.tick), t.quoteVolume
  else
    t.open24h, t.markPrice = dec(open, sym.tick), dec(last * (1 + 0.0001 * (u(6) - 0.5)), sym.tick)
    t.indexPrice = dec(last * (1 + 0.0002 * (u(7) - 0.5)), sym.tick)
    t.holdingAmount = dec(vol / 10, sym.lot)
    t.fundingRate = funding_rate(sym, floor(now / FUNDING_EVERY) * FUNDING_EVERY + FUNDING_EVERY)
    t.usdtVolume = t.quoteVolume
  end
  return json.encode(t)
end

-- tickers: spot ?symbol (optional), mix ?productType [&symbol] (/ticker
-- needs the symbol, /tickers lists all)
function Mock:_tickers(q, now, market, need_symbol)
  if market ~= "spot" then
    local m, s, body = product(q, now)
    if not m then return s, body end
    market = m
  end
  local list = {}
  if (q.symbol and q.symbol ~= "") or need_symbol then
    local sym, s, body = self:_symbol(q, market, now)
    if not sym then return s, body end
    list[1] = sym
  else
    for _, sym in ipairs(self._list[market]) do list[#list + 1] = sym end
  end
  local out, ids = {}, {}
  for i, sym in ipairs(list) do
    out[i], ids[i] = self:_ticker(sym, now), sym.raw
  end
  local rec = self:_recorded_body("ticker:" .. market, ids)
  if rec then return 200, rec end
  return 200, envelope(now, "[" .. concat(out, ",") .. "]")
end

function Mock:_book(q, now, market)
  local limit
  if market ~= "spot" then
    local m, s2, b2 = product(q, now)
    if not m then return s2, b2 end
    market = m
    local l = q.limit
    if l and l ~= "" and l ~= "1" and l ~= "5" and l ~= "15" and l ~= "50" and l ~= "max" then
      return api_error(now, "40017", "Parameter verification failed")
    end
    limit = (l == nil or l == "") and 100 or l == "max" and 200 or tonumber(l)
  else
    local l, s, body = int_param(q, "limit", now)
    if l == false then return s, body end
    limit = min(150, max(1, l or 150))
  end
  local sym, s3, b3 = self:_symbol(q, market, now)
  if not sym then return s3, b3 end
  local rec = self._recorded["book:" .. market .. ":" .. sym.raw]
  if rec and rec.limit == limit then return 200, rec.body end
  local mid = price(sym, now)
  local sec = floor(now / 1000)
  local function side(sign)
    local out = {}
    for k = 1, limit do
      local p = (floor(mid / sym.tick) + (sign > 0 and k or 1 - k)) * sym.tick
      local sz = sym.lot * (1 + floor(500 * hash(sym.h, sec, k, sign + 2)))
      if market == "spot" then
        out[k] = '["' .. dec(p, sym.tick) .. '","' .. dec(sz, sym.lot) .. '"]'
      else                             -- merge-depth sends JSON numbers
        out[k] = "[" .. dec(p, sym.tick) .. "," .. dec(sz, sym.lot) .. "]"
      end
    end
    return "[" .. concat(out, ",") .. "]"
  end
  local extra = market == "spot" and "" or ',"precision":"scale0","scale":"' .. sym.tick
    .. '","isMaxPrecision":"NO"'
  return 200, envelope(now, '{"asks":' .. side(1) .. ',"bids":' .. side(-1) .. extra
    .. ',"ts":"' .. fmt("%d", now) .. '"}')
end

function Mock:_candles(q, now, market, history)
  local family = market == "spot" and "spot" or "mix"
  if market ~= "spot" then
    local m, s, body = product(q, now)
    if not m then return s, body end
    market = m
  end
  local sym, s, body = self:_symbol(q, market, now)
  if not sym then return s, body end
  if q.granularity == nil or q.granularity == "" then
    return api_error(now, "40019", "Parameter granularity cannot be empty")
  end
  local gr = GRAN[family][q.granularity]
  if not gr then return api_error(now, "40017", "Parameter verification failed") end
  local params = {}
  for _, name in ipairs{ "startTime", "endTime", "limit" } do
    local v, s2, b2 = int_param(q, name, now)
    if v == false then return s2, b2 end
    params[name] = v
  end
  local iv, off = gr[1], gr[2]
  local function align(t) return floor((t - off) / iv) * iv + off end
  local limit = min(history and 200 or 1000, max(1, params.limit or 100))
  local last = align(now)
  local first
  if history then
    -- the `limit` candles opening before endTime
    if params.endTime then last = min(last, align(params.endTime - 1)) end
    first = last - (limit - 1) * iv
  else
    if params.endTime then last = min(last, align(params.endTime)) end
    if params.startTime then
      first = align(params.startTime)
      if first < params.startTime then first = first + iv end
    end
    -- counted back from the end, as Bitget answers a range wider than limit
    first = max(first or -math.huge, last - (limit - 1) * iv)
    -- the candles endpoint reaches back gr[3] days only
    local reach = align(now - gr[3] * D)
    if reach < now - gr[3] * D then reach = reach + iv end
    first = max(first, reach)
  end
  local key = "candles:" .. market .. ":" .. sym.raw .. ":" .. q.granularity
  local rows, ids = {}, {}
  for t = first, last, iv do
    local id = fmt("%d", t)
    ids[#ids + 1] = id
    rows[#rows + 1] = self:_recorded_row(key, id) or json.encode(kline(sym, iv, t, now))
  end
  local rec = self:_recorded_body(key, ids)
  if rec then return 200, rec end
  return 200, envelope(now, "[" .. concat(rows, ",") .. "]")
end

function Mock:_current_funding(q, now)
  local market, s, body = product(q, now)
  if not market then return s, body end
  local list = {}
  if q.symbol and q.symbol ~= "" then
    local sym, s2, b2 = self:_symbol(q, market, now)
    if not sym then return s2, b2 end
    list[1] = sym
  else
    list = self._list[market]
  end
  local out, ids = {}, {}
  local nxt = floor(now / FUNDING_EVERY) * FUNDING_EVERY + FUNDING_EVERY
  for i, sym in ipairs(list) do
    ids[i] = sym.raw
    out[i] = self:_recorded_row("funding:" .. market, sym.raw) or json.encode{
      symbol = sym.raw, fundingRate = funding_rate(sym, nxt), fundingRateInterval = "8",
      nextUpdate = fmt("%d", nxt), minFundingRate = "-0.003", maxFundingRate = "0.003" }
  end
  local rec = self:_recorded_body("funding:" .. market, ids)
  if rec then return 200, rec end
  return 200, envelope(now, "[" .. concat(out, ",") .. "]")
end

-- settled rates, newest first, pageSize (default 20, at most 100) a page
function Mock:_funding_history(q, now)
  local market, s, body = product(q, now)
  if not market then return s, body end
  local sym, s2, b2 = self:_symbol(q, market, now)
  if not sym then return s2, b2 end
  local params = {}
  for _, name in ipairs{ "pageSize", "pageNo" } do
    local v, s3, b3 = int_param(q, name, now)
    if v == false then return s3, b3 end
    params[name] = v
  end
  local size = min(100, max(1, params.pageSize or 20))
  local page = max(1, params.pageNo or 1)
  local newest = floor(now / FUNDING_EVERY) * FUNDING_EVERY
  local key = "history:" .. market .. ":" .. sym.raw
  local rows, ids = {}, {}
  for i = (page - 1) * size, page * size - 1 do
    local t = newest - i * FUNDING_EVERY
    if t < HISTORY_FROM then break end
    local id = fmt("%d", t)
    ids[#ids + 1] = id
    rows[#rows + 1] = self:_recorded_row(key, id) or json.encode{ symbol = sym.raw,
      fundingRate = funding_rate(sym, t), fundingTime = id }
  end
  local rec = self:_recorded_body(key, ids)
  if rec then return 200, rec end
  return 200, envelope(now, "[" .. concat(rows, ",") .. "]")
end

local ENDPOINTS = {
  ["/api/v2/spot/market/tickers"] = function(m, q, now) return m:_tickers(q, now, "spot") end,
  ["/api/v2/mix/market/ticker"] = function(m, q, now) return m:_tickers(q, now, "mix", true) end,
  ["/api/v2/mix/market/tickers"] = function(m, q, now)
    q.symbol = nil
    return m:_tickers(q, now, "mix")
  end,
  ["/api/v2/spot/market/orderbook"] = function(m, q, now) return m:_book(q, now, "spot") end,
  ["/api/v2/mix/market/merge-depth"] = function(m, q, now) return m:_book(q, now, "mix") end,
  ["/api/v2/spot/market/candles"] = function(m, q, now) return m:_candles(q, now, "spot") end,
  ["/api/v2/spot/market/history-candles"] = function(m, q, now)
    return m:_candles(q, now, "spot", true)
  end,
  ["/api/v2/mix/market/candles"] = function(m, q, now) return m:_candles(q, now, "mix") end,
  ["/api/v2/mix/market/history-candles"] = function(m, q, now)
    return m:_candles(q, now, "mix", true)
  end,
  ["/api/v2/mix/market/current-fund-rate"] = Mock._current_funding,
  ["/api/v2/mix/market/history-fund-rate"] = Mock._funding_history,
}

local FAULT_BODIES = {
  [429] = { "429", "Too Many Requests" },
  [500] = { "40015", "System is abnormal, please try again later" },
}
local function html(title)
  return "<html><head><title>" .. title .. "</title></head><body><center><h1>" .. title
    .. "</h1></center></body></html>"
end
local HTML = { [403] = html("403 Forbidden"), [502] = html("502 Bad Gateway"),
  [503] = html("503 Service Temporarily Unavailable") }

function Mock:_take_fault(p)
  for i, f in ipairs(self._faults) do
    if f.path == nil or f.path == p then
      f.left = f.left - 1
      if f.left <= 0 then table.remove(self._faults, i) end
      return f
    end
  end
end

-- Bitget's limits: nil to go on, or status, body, headers.
function Mock:_limit(p, now)
  if self._banned_until and now >= self._banned_until then self._banned_until = nil end
  if self._banned_until then
    return 403, HTML[403], { ["Content-Type"] = "text/html" }
  end
  local minute, second = floor(now / 60e3), floor(now / 1000)
  if minute ~= self._minute then self._minute, self._ip_used = minute, 0 end
  if second ~= self._second then self._second, self._used = second, {} end
  if self._ip_used >= self._opts.ip_limit then
    self._banned_until = now + self._opts.ban_seconds * 1000
    return 403, HTML[403], { ["Content-Type"] = "text/html" }
  end
  self._ip_used = self._ip_used + 1
  local used = (self._used[p] or 0) + 1
  self._used[p] = used
  local remain = { ["x-mbx-used-remain-limit"] = tostring(max(0, self._opts.endpoint_limit - used)) }
  if used > self._opts.endpoint_limit then
    local s, body = api_error(now, "429", "Too Many Requests", 429)
    return s, body, remain
  end
  return nil, nil, remain
end

function Mock:_handle(req)
  local entry = { method = req.method, path = req.path, query = req.query }
  self.requests = self.requests + 1
  self.log[#self.log + 1] = entry
  self._counts[req.path] = (self._counts[req.path] or 0) + 1
  local fault = self:_take_fault(req.path)
  if fault and fault.delay then sluice.sleep(fault.delay) end
  local now = floor(self._now())
  if fault and fault.abort then
    entry.status = "abort"
    req:abort()
    return
  end
  local status, body, headers
  local ep = ENDPOINTS[req.path]
  if fault and (fault.status or fault.code) then
    status, body = fault.status or 400, fault.body
    if not body then
      local known = FAULT_BODIES[status]
      if fault.code or known then
        status, body = api_error(now, fault.code or known[1],
          fault.msg or (known and known[2]) or "error", status)
      else
        body = HTML[status] or fmt('{"code":"%d","msg":"HTTP %d","requestTime":%d,"data":null}',
          status, status, now)
      end
    end
    headers = {}
    if fault.retry_after then headers["Retry-After"] = tostring(fault.retry_after) end
    if body:sub(1, 1) == "<" then headers["Content-Type"] = "text/html" end
  elseif not ep then
    status, body = api_error(now, "40404", "Request URL NOT FOUND", 404)
  elseif req.method ~= "GET" then
    status, body = api_error(now, "40404", "Request URL NOT FOUND", 404)
  else
    status, body, headers = self:_limit(req.path, now)
    if not status then
      local q = {}
      for k, v in pairs(req.query) do q[k] = v end
      status, body = ep(self, q, now)
    end
  end
  entry.status = status
  headers = headers or {}
  if not headers["Content-Type"] then headers["Content-Type"] = JSON end
  for k, v in pairs(fault and fault.headers or {}) do headers[k] = v end
  return status, body, headers
end

local FAULT = { status = { integer = true, min = 200, max = 599 }, code = "string",
  msg = "string", count = "number", retry_after = "number", body = "string",
  headers = "table", delay = "number", abort = "boolean", path = "string" }

function Mock:inject(spec)
  if type(spec) ~= "table" then
    error("sluice.mock.bitget.inject: bad argument #1 'fault' (table expected, got "
      .. type(spec) .. ")", 2)
  end
  options.check("sluice.mock.bitget.inject", spec, FAULT)
  if not (spec.status or spec.code or spec.abort or spec.delay) then
    error("sluice.mock.bitget.inject: a fault needs status, code, abort or delay", 2)
  end
  local f = {}
  for k, v in pairs(spec) do f[k] = v end
  f.left = spec.count or 1
  self._faults[#self._faults + 1] = f
  return self
end

-- Answers req (sluice.server's) as the mock's own server would: for a
-- sluice.testing rule's respond, so a tester's server can stand in for it.
function Mock:handle(req)
  return self:_handle(req)
end

function Mock:count(p)
  return self._counts[p] or 0
end

function Mock:reset()
  self.requests, self.log, self._faults, self._counts = 0, {}, {}, {}
  self._minute, self._ip_used, self._second, self._used = nil, 0, nil, {}
  self._banned_until = nil
  return self
end

function Mock:stop()
  return self._srv:close()
end

-- The recordings the mock serves: ccxt fixture entries of API v2.
local function load_fixtures(m, p)
  local f, err = io.open(p, "rb")
  if not f then error("sluice.mock.bitget: cannot read fixtures: " .. err, 3) end
  local doc, derr = json.decode(f:read("*a"))
  f:close()
  if type(doc) ~= "table" then
    error("sluice.mock.bitget: bad fixtures " .. p .. ": " .. tostring(derr), 3)
  end
  local rec = m._recorded
  local function add(key, items, id_of, body)
    local r = { rows = {}, ids = {}, body = json.encode(body) }
    for i, item in ipairs(items) do
      local id = id_of(item)
      r.ids[i], r.rows[id] = id, json.encode(item)
    end
    rec[key] = r
  end
  for _, e in ipairs(doc.entries or {}) do
    local input, body = e.input, e.httpResponse
    local url = type(e.request) == "table" and e.request.url or ""
    local opts = type(input) == "table" and type(input[#input]) == "table" and input[#input] or {}
    if type(body) == "table" and type(input) == "table" and type(input[1]) == "string"
        and not opts.uta and not opts.method and type(body.data) == "table" then
      local market = market_of(input[1])
      local base, quote = input[1]:match("^(%w+)/(%w+)")
      local raw = base .. quote
      if e.method == "fetchTicker" and url:find("/api/v2/", 1, true) then
        add("ticker:" .. market, body.data, function(t) return t.symbol end, body)
        rec["ticker:" .. market .. ":" .. raw] = rec["ticker:" .. market]
      elseif e.method == "fetchOrderBook" and url:find("/api/v2/", 1, true) then
        rec["book:" .. market .. ":" .. raw] = { limit = #body.data.bids, body = json.encode(body) }
      elseif e.method == "fetchOHLCV" then
        local gran = market == "spot" and ({ ["1m"] = "1min" })[input[2]] or input[2]
        add("candles:" .. market .. ":" .. raw .. ":" .. gran, body.data,
          function(k) return k[1] end, body)
      elseif e.method == "fetchFundingRate" then
        add("funding:" .. market, body.data, function(x) return x.symbol end, body)
      elseif e.method == "fetchFundingRateHistory" then
        add("history:" .. market .. ":" .. raw, body.data, function(x) return x.fundingTime end, body)
      end
    end
  end
end

local OPTIONS = { host = "string", port = "number", seed = "number", now = "function",
  symbols = "table", fixtures = "string", endpoint_limit = "number", ip_limit = "number",
  ban_seconds = "number" }

function _M.start(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("sluice.mock.bitget.start: bad argument #1 'opts' (table expected, got "
      .. type(opts) .. ")", 2)
  end
  opts = options.check("sluice.mock.bitget.start", opts, OPTIONS) or {}
  local seed = opts.seed or 1
  local m = setmetatable({ _recorded = {},
    _symbols = { spot = {}, linear = {}, inverse = {} },
    _list = { spot = {}, linear = {}, inverse = {} },
    _opts = { endpoint_limit = opts.endpoint_limit or 20, ip_limit = opts.ip_limit or 6000,
              ban_seconds = opts.ban_seconds or 300 },
    _now = opts.now or function() return floor(sluice.time() * 1000) end }, Mock)
  for _, u in ipairs(opts.symbols or DEFAULT_SYMBOLS) do
    local market = market_of(u)
    local sym = new_symbol(seed, market, u)
    m._symbols[market][sym.raw] = sym
    table.insert(m._list[market], sym)
  end
  if opts.fixtures then load_fixtures(m, opts.fixtures) end
  m.kline = function(market, raw, gran, t)
    local sym = m._symbols[market][raw]
    local gr = GRAN[market == "spot" and "spot" or "mix"][gran]
    return kline(sym, gr[1], t, floor(m._now()))
  end
  m.funding_rate = function(market, raw, t) return funding_rate(m._symbols[market][raw], t) end
  local srv, err = server.listen{ host = opts.host or "127.0.0.1", port = opts.port or 0 }
  if not srv then error("sluice.mock.bitget: " .. err, 2) end
  m.paths = {}
  for p in pairs(ENDPOINTS) do m.paths[#m.paths + 1] = p end
  table.sort(m.paths)
  m._srv, m.port, m.url = srv, srv.port,
    "http://" .. (srv.host:find(":") and "[" .. srv.host .. "]" or srv.host) .. ":" .. srv.port
  m:reset()
  srv:route("*", "/*", function(req) return m:_handle(req) end)
  return m
end

return _M
