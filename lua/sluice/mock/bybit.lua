--- sluice.mock.bybit: a mock Bybit v5 market REST API on sluice.server, so
-- the bybit collector's specs never touch the internet.
--
--   local mock = require "sluice.mock.bybit"
--   local m = mock.start{ now = function() return 1706803948569 end,
--                         fixtures = "tests/fixtures/ccxt/bybit.json" }
--   http.get(m.url .. "/v5/market/orderbook",
--            { query = { category = "linear", symbol = "BTCUSDT", limit = 2 } })
--   m:inject{ ret_code = 10006, count = 2 }   -- "Too many visits!" twice
--   m:stop()
--
-- mock.start(opts) -> m   (raises when it cannot listen)
--   host, port      where to listen (default "127.0.0.1", 0 = a free port)
--   seed            integer mixed into every synthetic number (default 1)
--   now             function returning epoch milliseconds (default the wall
--                   clock): candles, funding times, tickers, bans
--   symbols         the raw symbols Bybit lists: a list (each is listed in
--                   every category its name fits: ...USD inverse, ...PERP
--                   linear, others spot and linear) or a table by category
--                   { spot = {...}, linear = {...}, inverse = {...} }
--                   (default: spot BTCUSDT ETHUSDT SOLUSDT, linear those and
--                   BTCPERP, inverse BTCUSD ETHUSD)
--   fixtures        path of a ccxt fixture file (tests/fixtures/ccxt/bybit.json)
--   endpoint_limit  requests per second per endpoint (default 50), reported
--                   in X-Bapi-Limit / -Status / -Reset-Timestamp; one more
--                   is answered retCode 10006 "Too many visits!"
--   ip_limit, ip_window  requests per IP in a rolling window (default 600
--                   in 5 s); one more bans the IP: HTTP 403 for ban_seconds
--                   (default 600), as Bybit's "access too frequent"
-- m.port, m.url, m.requests (count), m.log (list of {method, path, query,
-- headers, status, ret_code (of a synthetic JSON answer), reply_headers,
-- recorded = the fixture entry's index when its body was served}),
-- m:stop(), m:reset(), m:ban(seconds) (ban the IP now)
-- m:inject{status, ret_code, ret_msg, crossed, count = 1, body, headers,
--   delay, abort, path}: faults queued and consumed in order by the
--   requests they match (path: exact, optional). status answers with `body`
--   (JSON) or Bybit's own page for it (403 and 5xx: HTML); ret_code answers
--   HTTP 200 with that retCode and ret_msg (or Bybit's message for it);
--   crossed answers an order book whose asks start below the best bid.
--   Faulted requests use no quota, except crossed ones.
-- mock.recordings(path) -> list of { index, entry (decoded), body (the
--   entry's httpResponse exactly as the file has it) }
--
-- Recorded answers: where a request matches a ccxt recording, its
-- httpResponse is served byte for byte as the fixture file holds it (key
-- order and numbers as recorded): tickers (category, symbol or baseCoin)
-- and order books (category, symbol, limit = the levels recorded) during
-- the minute after the recording's `time` (the mock's clock says which);
-- klines whenever the candles answered are exactly the recorded ones (and,
-- within other answers, the recorded candles replace synthetic ones).
-- Everything else is synthetic and deterministic per (seed, symbol, time).
--
-- Endpoints (GET): /v5/market/time, /v5/market/tickers, /v5/market/orderbook,
-- /v5/market/kline (start/end/limit, newest first; with start alone the
-- `limit` candles from start, else the newest `limit` up to end or now),
-- /v5/market/funding/history (startTime/endTime/limit, newest first;
-- startTime alone is a parameter error; funding every 8 hours).
local sluice = require "sluice"
local server = require "sluice.server"
local options = require "sluice.options"
local json = require "sluice.json"
local cjson = require "cjson.safe"
local mockhash = require "sluice.mock.hash"

local floor, max, min, exp, abs = math.floor, math.max, math.min, math.exp, math.abs
local fmt, concat = string.format, table.concat

local _M = {}

local MS = { ["1"] = 60e3, ["3"] = 180e3, ["5"] = 300e3, ["15"] = 900e3, ["30"] = 1800e3,
             ["60"] = 3600e3, ["120"] = 7200e3, ["240"] = 14400e3, ["360"] = 21600e3,
             ["720"] = 43200e3, D = 86400e3, W = 604800e3 }
local OFFSET = { W = 4 * 86400e3 }          -- weekly candles open on Monday
local FUNDING_MS = 8 * 3600e3
local CATEGORIES = { spot = true, linear = true, inverse = true }

-- price, tick, lot step, base volume per second
local PROFILES = {
  BTCUSDT = { 43000, 0.1, 0.001, 0.6 }, BTCPERP = { 43000, 0.1, 0.001, 0.05 },
  BTCUSD = { 43000, 0.5, 1, 2000 }, ETHUSDT = { 2300, 0.01, 0.01, 8 },
  ETHUSD = { 2300, 0.05, 1, 500 }, SOLUSDT = { 100, 0.001, 0.1, 50 },
}
local DEFAULT_SYMBOLS = { spot = { "BTCUSDT", "ETHUSDT", "SOLUSDT" },
  linear = { "BTCUSDT", "ETHUSDT", "SOLUSDT", "BTCPERP" }, inverse = { "BTCUSD", "ETHUSD" } }
local OCTAVES = { { 1, 0.00007 }, { 60, 0.0005 }, { 900, 0.002 }, { 14400, 0.008 },
  { 259200, 0.03 }, { 2592000, 0.08 }, { 31536000, 0.25 } }

local JSON = "application/json; charset=utf-8"
local MESSAGES = { [10001] = "params error", [10006] = "Too many visits!",
  [10016] = "Server error.", [10000] = "Server Timeout" }
local BODY_403 = "<html><head><title>403 Forbidden</title></head><body>"
  .. "<h1>403 Forbidden</h1><p>access too frequent</p></body></html>"
local FAULT_BODIES = {
  [500] = "<html><head><title>500 Internal Server Error</title></head></html>",
  [502] = "<html><head><title>502 Bad Gateway</title></head></html>",
  [503] = "<html><head><title>503 Service Temporarily Unavailable</title></head></html>",
  [504] = "<html><head><title>504 Gateway Time-out</title></head></html>",
}

local hash, str_hash = mockhash.hash, mockhash.str_hash

local function round(x, step) return floor(x / step + 0.5) * step end

-- x rounded to step, as text with step's decimals ("43376.1", "0.001161")
local function text(x, step)
  local places = 0
  while step * 10 ^ places < 1 - 1e-9 do places = places + 1 end
  return fmt("%." .. places .. "f", round(x, step))
end

-- An integer count of 1e-8 as a decimal text: 10000 -> "0.0001".
local function e8(n)
  local s = fmt("%09d", abs(n))
  local frac = s:sub(-8):gsub("0+$", "")
  local out = s:sub(1, -9) .. (frac ~= "" and "." .. frac or "")
  return (n < 0 and "-" or "") .. out
end

local function price(sym, t)
  local s, sum = t / 1000, 0
  for k = 1, #OCTAVES do
    local o = OCTAVES[k]
    local g = s / o[1]
    local i = floor(g)
    local f = g - i
    local a = hash(sym.h, i, k) * 2 - 1
    local b = hash(sym.h, i + 1, k) * 2 - 1
    sum = sum + (a + (b - a) * f) * o[2]
  end
  return sym.price * exp(sum)
end

local function new_symbol(seed, category, name)
  local h = str_hash(seed, name)
  local p = PROFILES[name] or { 1 + 999 * hash(h, 7), 0.0001, 0.01, 5 }
  return { name = name, category = category, h = h, price = p[1], tick = p[2], step = p[3],
           vol = p[4] }
end

-- One synthetic candle: Bybit's string array [start, open, high, low,
-- close, volume, turnover]; a candle still open at now is cut at now.
local function kline(sym, iv, t, now)
  local stop = min(t + iv, now)
  local o, c = price(sym, t), price(sym, stop)
  local u = function(k) return hash(sym.h, t, iv, k) end
  local sigma = 0.0005 * math.sqrt(iv / 60e3)
  local hi = max(o, c) * (1 + sigma * u(1))
  local lo = min(o, c) * (1 - sigma * u(2))
  local vol = max(sym.step, round(sym.vol * max(1, (stop - t) / 1000) * (0.4 + 1.2 * u(3)),
    sym.step))
  local vwap = (o + hi + lo + c) / 4
  -- inverse: volume in contracts (USD), turnover in the base coin
  local turnover = sym.category == "inverse" and vol / vwap or vol * vwap
  return fmt('["%d","%s","%s","%s","%s","%s","%s"]', t, text(o, sym.tick), text(hi, sym.tick),
    text(lo, sym.tick), text(c, sym.tick), text(vol, sym.step), text(turnover, 0.0001))
end

local function funding_rate(sym, t)
  return e8(floor(hash(sym.h, t, 8) * 20000) - 5000)       -- -0.00005 .. 0.00015
end

local function envelope(result, now)
  return fmt('{"retCode":0,"retMsg":"OK","result":%s,"retExtInfo":{},"time":%d}', result, now)
end

local function api_error(code, msg, now)
  return 200, fmt('{"retCode":%d,"retMsg":%s,"result":{},"retExtInfo":{},"time":%d}', code,
    cjson.encode(msg or MESSAGES[code] or "error"), now)
end

-- The end of the JSON value that starts at s[i] (strings, arrays, objects
-- and scalars), or nil.
local function value_end(s, i)
  local c = s:sub(i, i)
  if c == '"' then
    local j = i + 1
    while true do
      local k = s:find('[\\"]', j)
      if not k then return nil end
      if s:sub(k, k) == '"' then return k end
      j = k + 2
    end
  elseif c == "{" or c == "[" then
    local depth, j = 0, i
    while true do
      local k = s:find('[][{}"]', j)
      if not k then return nil end
      local ch = s:sub(k, k)
      if ch == '"' then
        k = value_end(s, k)
        if not k then return nil end
      elseif ch == "{" or ch == "[" then
        depth = depth + 1
      else
        depth = depth - 1
        if depth == 0 then return k end
      end
      j = k + 1
    end
  end
  local _, e = s:find("^[^,%]}%s]+", i)
  return e
end

local function read_fixtures(path)
  local f, err = io.open(path, "rb")
  if not f then error("sluice.mock.bybit: cannot read fixtures: " .. err, 3) end
  local s = f:read("*a")
  f:close()
  local doc, derr = json.decode(s)
  if type(doc) ~= "table" or type(doc.entries) ~= "table" then
    error("sluice.mock.bybit: bad fixtures " .. path .. ": " .. tostring(derr), 3)
  end
  -- the httpResponse texts, in file order, paired with the entries
  local bodies, pos = {}, 1
  while true do
    local _, e = s:find('"httpResponse"%s*:%s*', pos)
    if not e then break end
    local stop = value_end(s, e + 1)
    if not stop then error("sluice.mock.bybit: bad fixtures " .. path, 3) end
    bodies[#bodies + 1] = s:sub(e + 1, stop)
    pos = stop + 1
  end
  local out = {}
  for i, entry in ipairs(doc.entries) do
    local body = bodies[i]
    if body == nil or json.encode(assert(json.decode(body))) ~= json.encode(entry.httpResponse) then
      error("sluice.mock.bybit: fixtures " .. path .. ": entry " .. i
        .. "'s httpResponse not found in file order", 3)
    end
    out[i] = { index = i, entry = entry, body = body }
  end
  return out
end

--- recordings(path) -> { {index, entry, body}, ... }
function _M.recordings(path)
  if type(path) ~= "string" then
    error("sluice.mock.bybit.recordings: bad argument #1 'path' (string expected, got "
      .. type(path) .. ")", 2)
  end
  return read_fixtures(path)
end

local function ms(v) return v ~= nil and tonumber(v) or nil end

-- Index the recordings by what a request must ask to be answered with them.
local function index_recordings(list)
  local r = { tickers = {}, books = {}, klines = {} }
  for _, rec in ipairs(list) do
    local e, http = rec.entry, rec.entry.httpResponse
    local result = type(http) == "table" and http.result
    if type(result) == "table" then
      local when = ms(http.time)
      if e.method == "fetchOHLCV" then
        local key = result.category .. " " .. result.symbol .. " " .. (({
          ["1m"] = "1", ["5m"] = "5", ["15m"] = "15", ["1h"] = "60", ["4h"] = "240", ["1d"] = "D",
        })[e.input[2]] or "?")
        local rows, set = {}, {}
        for _, k in ipairs(result.list) do
          set[ms(k[1])] = true
          rows[ms(k[1])] = json.encode(k)
        end
        r.klines[key] = { rec = rec, rows = rows, set = set, n = #result.list }
      elseif e.method == "fetchOrderBook" then
        local category = type(e.input[1]) == "string" and e.input[1]:find(":") and "linear" or "spot"
        local key = category .. " " .. result.s .. " " .. #result.b
        r.books[key] = r.books[key] or {}
        table.insert(r.books[key], { rec = rec, time = when })
      elseif e.method == "fetchTicker" or e.method == "fetchTickers"
          or e.method == "fetchFundingRate" or e.method == "fetchFundingRates" then
        local url = e.request and e.request.url
        local base_coin = url and url:match("[?&]baseCoin=([^&]+)")
        local key = result.category .. " " .. (base_coin and "baseCoin=" .. base_coin
          or "symbol=" .. tostring(result.list[1] and result.list[1].symbol))
        r.tickers[key] = r.tickers[key] or {}
        table.insert(r.tickers[key], { rec = rec, time = when })
      end
    end
  end
  return r
end

-- The recording made in the minute before now, if any.
local function recent(list, now)
  local best
  for _, x in ipairs(list or {}) do
    if x.time and now >= x.time and now - x.time < 60e3 and (not best or x.time > best.time) then
      best = x
    end
  end
  return best and best.rec
end

local Mock = {}
Mock.__index = Mock

-- The symbol a request names: sym, or nil and Bybit's error reply.
function Mock:_symbol(q, now)
  local category = q.category
  if category == nil or category == "" then category = "linear" end
  if not CATEGORIES[category] then return nil, api_error(10001, "Illegal category", now) end
  if q.symbol == nil or q.symbol == "" then
    return nil, api_error(10001, "params error: symbol is required", now)
  end
  local sym = self._symbols[category][q.symbol]
  if not sym then
    return nil, api_error(10001, category == "spot" and "Not supported symbols"
      or "params error: Symbol Is Invalid", now)
  end
  return sym
end

-- A non-negative integer parameter: value, or nil plus Bybit's reply.
local function int_param(q, name, now)
  local v = q[name]
  if v == nil or v == "" then return nil end
  if not v:match("^%d+$") or #v > 18 then
    return nil, api_error(10001, "params error: " .. name .. " invalid", now)
  end
  return tonumber(v)
end

local function ticker_json(sym, now)
  local p = price(sym, now)
  local ago = price(sym, now - 86400e3)
  local hi, lo = max(p, ago), min(p, ago)
  for k = 1, 23 do
    local x = price(sym, now - k * 3600e3)
    hi, lo = max(hi, x), min(lo, x)
  end
  local vol = sym.vol * 86400 * (0.6 + 0.8 * hash(sym.h, floor(now / 60e3), 3))
  local vwap = (p + ago) / 2
  local turnover = sym.category == "inverse" and vol / vwap or vol * vwap
  local t = sym.tick
  local f = {
    { "symbol", sym.name }, { "bid1Price", text(p - t, t) },
    { "bid1Size", text(sym.vol * (1 + 9 * hash(sym.h, now, 1)), sym.step) },
    { "ask1Price", text(p + t, t) },
    { "ask1Size", text(sym.vol * (1 + 9 * hash(sym.h, now, 2)), sym.step) },
    { "lastPrice", text(p, t) }, { "prevPrice24h", text(ago, t) },
    { "price24hPcnt", fmt("%.6f", (round(p, t) - round(ago, t)) / round(ago, t)) },
    { "highPrice24h", text(hi, t) }, { "lowPrice24h", text(lo, t) },
    { "turnover24h", text(turnover, 0.0001) }, { "volume24h", text(vol, sym.step) },
  }
  if sym.category == "spot" then
    f[#f + 1] = { "usdIndexPrice", text(p, t) }
  else
    local next_funding = (floor(now / FUNDING_MS) + 1) * FUNDING_MS
    local more = {
      { "indexPrice", text(p * (1 + 0.0002 * (hash(sym.h, now, 4) - 0.5)), t) },
      { "markPrice", text(p * (1 + 0.0001 * (hash(sym.h, now, 5) - 0.5)), t) },
      { "prevPrice1h", text(price(sym, now - 3600e3), t) },
      { "openInterest", text(sym.vol * 50000 * (0.9 + 0.2 * hash(sym.h, floor(now / 60e3), 6)),
        sym.step) },
      { "fundingRate", funding_rate(sym, next_funding) },
      { "nextFundingTime", fmt("%d", next_funding) }, { "fundingIntervalHour", "8" },
    }
    for _, kv in ipairs(more) do f[#f + 1] = kv end
  end
  local out = {}
  for i, kv in ipairs(f) do out[i] = fmt("%s:%s", cjson.encode(kv[1]), cjson.encode(kv[2])) end
  return "{" .. concat(out, ",") .. "}"
end

function Mock:_tickers(q, now)
  local category = q.category
  if not CATEGORIES[category or ""] and category ~= "option" then
    return api_error(10001, "Illegal category", now)
  end
  local key = category .. " " .. (q.baseCoin and "baseCoin=" .. q.baseCoin
    or "symbol=" .. tostring(q.symbol))
  local rec = recent(self._recorded.tickers[key], now)
  if rec then return 200, rec.body, rec.index end
  if category == "option" then return api_error(10001, "params error: option is not served", now) end
  local list = {}
  if q.symbol and q.symbol ~= "" then
    local sym, s, body = self:_symbol(q, now)
    if not sym then return s, body end
    list[1] = ticker_json(sym, now)
  else
    for _, name in ipairs(self._names[category]) do
      list[#list + 1] = ticker_json(self._symbols[category][name], now)
    end
  end
  return 200, envelope(fmt('{"category":"%s","list":[%s]}', category, concat(list, ",")), now)
end

function Mock:_orderbook(q, now, crossed)
  local limit, s, body = int_param(q, "limit", now)
  if s then return s, body end
  local sym, s2, body2 = self:_symbol(q, now)
  if not sym then return s2, body2 end
  local cap = 1000
  limit = min(cap, max(1, limit or (sym.category == "spot" and 1 or 25)))
  local rec = recent(self._recorded.books[sym.category .. " " .. sym.name .. " " .. limit], now)
  if rec then return 200, rec.body, rec.index end
  local p, t = price(sym, now), sym.tick
  local mid = round(p, t)
  local b, a = {}, {}
  for i = 1, limit do
    local sb = sym.vol * (0.1 + 3 * hash(sym.h, now, i, 1))
    local sa = sym.vol * (0.1 + 3 * hash(sym.h, now, i, 2))
    b[i] = fmt('["%s","%s"]', text(mid - i * t, t), text(max(sym.step, sb), sym.step))
    -- crossed (a fault): the asks start two ticks below the best bid
    a[i] = fmt('["%s","%s"]', text(mid + (crossed and i - 3 or i) * t, t),
      text(max(sym.step, sa), sym.step))
  end
  local seq = floor(now / 100)
  return 200, envelope(fmt('{"s":"%s","b":[%s],"a":[%s],"ts":%d,"u":%d,"seq":%d,"cts":%d}',
    sym.name, concat(b, ","), concat(a, ","), now, seq % 10000000, seq, now - 5), now)
end

function Mock:_kline(q, now)
  local sym, s, body = self:_symbol(q, now)
  if not sym then return s, body end
  local interval = q.interval
  if interval == nil or interval == "" then
    return api_error(10001, "params error: interval is required", now)
  end
  local iv, off = MS[interval], OFFSET[interval] or 0
  if not iv then return api_error(10001, "params error: Invalid period!", now) end
  local p = {}
  for _, name in ipairs{ "start", "end", "limit" } do
    local v, st, b = int_param(q, name, now)
    if st then return st, b end
    p[name] = v
  end
  local limit = min(1000, max(1, p.limit or 200))
  local function align(t) return floor((t - off) / iv) * iv + off end
  local first, last
  local newest = align(now)
  if p.start then
    first = align(p.start)
    if first < p.start then first = first + iv end
  end
  last = p["end"] and min(newest, align(p["end"])) or newest
  if p.start and not p["end"] then
    last = min(last, first + (limit - 1) * iv)
  else
    local lowest = last - (limit - 1) * iv
    first = first and max(first, lowest) or lowest
  end
  local rec = self._recorded.klines[sym.category .. " " .. sym.name .. " " .. interval]
  local rows, exact = {}, rec ~= nil
  for t = last, first, -iv do
    local r = rec and rec.rows[t]
    exact = exact and r ~= nil
    rows[#rows + 1] = r or kline(sym, iv, t, now)
  end
  if exact and #rows == rec.n then return 200, rec.rec.body, rec.rec.index end
  return 200, envelope(fmt('{"symbol":"%s","category":"%s","list":[%s]}', sym.name,
    sym.category, concat(rows, ",")), now)
end

function Mock:_funding_history(q, now)
  local sym, s, body = self:_symbol(q, now)
  if not sym then return s, body end
  if sym.category == "spot" then return api_error(10001, "Illegal category", now) end
  local p = {}
  for _, name in ipairs{ "startTime", "endTime", "limit" } do
    local v, st, b = int_param(q, name, now)
    if st then return st, b end
    p[name] = v
  end
  if p.startTime and not p.endTime then
    return api_error(10001, "params error: endTime is required when startTime is passed", now)
  end
  local limit = min(200, max(1, p.limit or 200))
  local last = floor(min(now, p.endTime or now) / FUNDING_MS) * FUNDING_MS
  local rows = {}
  local t = last
  while #rows < limit and (p.startTime == nil or t >= p.startTime) and t >= 0 do
    rows[#rows + 1] = fmt('{"symbol":"%s","fundingRate":"%s","fundingRateTimestamp":"%d"}',
      sym.name, funding_rate(sym, t), t)
    t = t - FUNDING_MS
  end
  return 200, envelope(fmt('{"category":"%s","list":[%s]}', sym.category, concat(rows, ",")),
    now)
end

local ENDPOINTS = {
  ["/v5/market/time"] = function(_, _, now)
    return 200, envelope(fmt('{"timeSecond":"%d","timeNano":"%d000000"}', floor(now / 1000), now),
      now)
  end,
  ["/v5/market/tickers"] = Mock._tickers,
  ["/v5/market/orderbook"] = Mock._orderbook,
  ["/v5/market/kline"] = Mock._kline,
  ["/v5/market/funding/history"] = Mock._funding_history,
}

function Mock:_take_fault(path)
  for i, f in ipairs(self._faults) do
    if f.path == nil or f.path == path then
      f.left = f.left - 1
      if f.left <= 0 then table.remove(self._faults, i) end
      return f
    end
  end
end

-- The IP quota and the endpoint's: nil and its headers to go on, or
-- status, body, headers.
function Mock:_limit(path, now)
  local o = self._opts
  if self._banned_until and now >= self._banned_until then self._banned_until = nil end
  if self._banned_until then return 403, BODY_403, { ["Content-Type"] = "text/html" } end
  -- the IP window: the request times of the last ip_window seconds
  local ip, keep = self._ip, {}
  for _, t in ipairs(ip) do
    if now - t < o.ip_window * 1000 then keep[#keep + 1] = t end
  end
  self._ip = keep
  if #keep >= o.ip_limit then
    self._banned_until = now + o.ban_seconds * 1000
    return 403, BODY_403, { ["Content-Type"] = "text/html" }
  end
  keep[#keep + 1] = now
  local second = floor(now / 1000)
  local used = self._used[path]
  if not used or used.second ~= second then
    used = { second = second, n = 0 }
    self._used[path] = used
  end
  local headers = { ["X-Bapi-Limit"] = tostring(o.endpoint_limit) }
  if used.n >= o.endpoint_limit then
    headers["X-Bapi-Limit-Status"] = "0"
    headers["X-Bapi-Limit-Reset-Timestamp"] = fmt("%d", (second + 1) * 1000)
    local st, body = api_error(10006, nil, now)
    return st, body, headers
  end
  used.n = used.n + 1
  headers["X-Bapi-Limit-Status"] = tostring(o.endpoint_limit - used.n)
  headers["X-Bapi-Limit-Reset-Timestamp"] = fmt("%d", now)
  return nil, headers
end

function Mock:_handle(req)
  local entry = { method = req.method, path = req.path, query = req.query, headers = req.headers }
  self.requests = self.requests + 1
  self.log[#self.log + 1] = entry
  local fault = self:_take_fault(req.path)
  if fault and fault.delay then sluice.sleep(fault.delay) end
  local now = floor(self._now())
  if fault and fault.abort then
    entry.status = "abort"
    req:abort()
    return
  end
  local status, body, extra
  local ep = ENDPOINTS[req.path]
  if fault and fault.status then
    status = fault.status
    body = fault.body
    if not body then
      body = (status == 403 and BODY_403) or FAULT_BODIES[status]
        or fmt("<html><head><title>%d</title></head></html>", status)
      extra = { ["Content-Type"] = "text/html" }
    end
  elseif fault and fault.ret_code then
    status, body = api_error(fault.ret_code, fault.ret_msg, now)
  elseif not ep then
    status, body = 404, "<html><head><title>404 Not Found</title></head></html>"
    extra = { ["Content-Type"] = "text/html" }
  elseif req.method ~= "GET" and req.method ~= "HEAD" then
    status, body = api_error(10001, "params error: method not allowed", now)
  else
    local limited, more, hdrs = self:_limit(req.path, now)
    if limited then
      status, body, extra = limited, more, hdrs
    else
      extra = more
      local recorded
      status, body, recorded = ep(self, req.query, now, fault and fault.crossed)
      entry.recorded = recorded
    end
  end
  entry.status = status
  entry.ret_code = status == 200 and tonumber(body:match('^{"retCode":(%-?%d+)')) or nil
  local headers = { ["Content-Type"] = JSON }
  for k, v in pairs(extra or {}) do headers[k] = v end
  for k, v in pairs(fault and fault.headers or {}) do headers[k] = v end
  entry.reply_headers = headers
  return status, body, headers
end

local FAULT = { status = { integer = true, min = 200, max = 599 }, ret_code = { integer = true },
  ret_msg = "string", count = "number", body = "string", headers = "table", delay = "number",
  abort = "boolean", crossed = "boolean", path = "string" }

function Mock:inject(spec)
  if type(spec) ~= "table" then
    error("sluice.mock.bybit.inject: bad argument #1 'fault' (table expected, got "
      .. type(spec) .. ")", 2)
  end
  options.check("sluice.mock.bybit.inject", spec, FAULT)
  if not (spec.status or spec.ret_code or spec.abort or spec.delay or spec.crossed) then
    error("sluice.mock.bybit.inject: a fault needs status, ret_code, crossed, abort or delay", 2)
  end
  local f = {}
  for k, v in pairs(spec) do f[k] = v end
  f.left = spec.count or 1
  self._faults[#self._faults + 1] = f
  return self
end

function Mock:ban(seconds)
  self._banned_until = floor(self._now()) + (seconds or self._opts.ban_seconds) * 1000
  return self
end

function Mock:reset()
  self.requests, self.log, self._faults = 0, {}, {}
  self._ip, self._used, self._banned_until = {}, {}, nil
  return self
end

function Mock:stop()
  return self._srv:close()
end

local OPTIONS = { host = "string", port = "number", seed = "number", now = "function",
  symbols = "table", fixtures = "string", endpoint_limit = { integer = true, min = 1 },
  ip_limit = { integer = true, min = 1 }, ip_window = { gt = 0 }, ban_seconds = { gt = 0 } }

-- {category = {names}} from the option's list or table.
local function categories(symbols)
  if symbols == nil then return DEFAULT_SYMBOLS end
  if symbols[1] == nil then return symbols end
  local out = { spot = {}, linear = {}, inverse = {} }
  for _, name in ipairs(symbols) do
    if name:match("USD$") then
      table.insert(out.inverse, name)
    elseif name:match("PERP$") then
      table.insert(out.linear, name)
    else
      table.insert(out.spot, name)
      table.insert(out.linear, name)
    end
  end
  return out
end

function _M.start(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("sluice.mock.bybit.start: bad argument #1 'opts' (table expected, got "
      .. type(opts) .. ")", 2)
  end
  opts = options.check("sluice.mock.bybit.start", opts, OPTIONS) or {}
  local recorded = index_recordings(opts.fixtures and read_fixtures(opts.fixtures) or {})
  local m = setmetatable({ _symbols = {}, _names = {}, _recorded = recorded,
    _opts = { endpoint_limit = opts.endpoint_limit or 50, ip_limit = opts.ip_limit or 600,
              ip_window = opts.ip_window or 5, ban_seconds = opts.ban_seconds or 600 },
    _now = opts.now or function() return floor(sluice.time() * 1000) end }, Mock)
  local by_category = categories(opts.symbols)
  for category in pairs(CATEGORIES) do
    m._symbols[category], m._names[category] = {}, {}
    for _, name in ipairs(by_category[category] or {}) do
      m._symbols[category][name] = new_symbol(opts.seed or 1, category, name)
      table.insert(m._names[category], name)
    end
  end
  -- scale each synthetic path through a recorded candle's open, so the
  -- synthetic neighbours of recorded candles do not jump by thousands
  for key, k in pairs(recorded.klines) do
    local category, name = key:match("^(%S+) (%S+)")
    local sym = m._symbols[category] and m._symbols[category][name]
    local t = next(k.set)
    if sym and t then
      local open = tonumber(json.decode(k.rows[t])[2])
      sym.price = sym.price * open / price(sym, t)
    end
  end
  local srv, err = server.listen{ host = opts.host or "127.0.0.1", port = opts.port or 0 }
  if not srv then error("sluice.mock.bybit: " .. err, 2) end
  m._srv, m.port, m.url = srv, srv.port,
    "http://" .. (srv.host:find(":") and "[" .. srv.host .. "]" or srv.host) .. ":" .. srv.port
  m:reset()
  srv:route("*", "/*", function(req) return m:_handle(req) end)
  return m
end

return _M
