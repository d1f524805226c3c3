--- sluice.mock.binance: a mock Binance REST API (spot /api/v3, USDⓈ-M
-- futures /fapi/v1, COIN-M futures /dapi/v1) on sluice.server, so collector
-- specs and the offline quick-start never touch the internet.
--
--   local mock = require "sluice.mock.binance"
--   local m = mock.start{ now = function() return 1706641200000 end }
--   http.get(m.url .. "/api/v3/klines", { query = { symbol = "BTCUSDT", interval = "1h" } })
--   m:inject{ status = 500, count = 5 }     -- a 5xx storm for the next 5 requests
--   m:stop()
--
-- mock.start(opts) -> m   (raises when it cannot listen)
--   host, port      where to listen (default "127.0.0.1", 0 = a free port)
--   seed            integer mixed into every synthetic number (default 1)
--   now             function returning epoch milliseconds (default the wall
--                   clock); drives candles, weight minutes and bans
--   symbols         spot symbols (default BTCUSDT ETHUSDT BNBUSDT SOLUSDT)
--   linear          USDⓈ-M perpetuals (default: the spot symbols)
--   inverse         COIN-M perpetuals (default BTCUSD_PERP ETHUSD_PERP)
--   fixtures        path of a ccxt fixture file (tests/fixtures/ccxt/binance.json):
--                   its fetchOHLCV rows are served exactly as recorded (the
--                   synthetic prices around them scaled to match), and its
--                   tickers and books byte for byte where a request asks
--                   what the recording did (below)
--   weight_limit    spot request weight per minute (default 6000)
--   futures_weight_limit  fapi's and dapi's, each (default 2400)
--   ban_after       429s answered in a minute before the next over-limit
--                   request bans (default 3)
--   ban_seconds     length of a 418 ban (default 120)
-- m.port, m.url, m.requests (count), m.log (list of {method, path, query,
-- headers, status}), m.weight (spot weight used this minute), m.weights
-- ({api =, fapi =, dapi =}: each API's), m:stop(), m:reset()
-- m:answer(req) -> status, body, headers: the mock's answer to a
--   sluice.server request (for a sluice.testing `respond`); counted and
--   logged as one the mock received.
-- m:inject{status, count = 1, retry_after, body, headers, delay, malformed,
--   abort, path}: faults are queued and consumed in order by the requests
--   they match (path: exact, optional). delay sleeps first; abort closes the
--   connection unanswered; malformed answers 200 with the real body cut
--   short; status answers it with `body` or Binance's own body for it.
--   Faulted requests are logged and counted but use no weight. libcurl
--   silently resends a request whose reused keep-alive connection closed
--   before any reply, so an abort on a reused connection can look like
--   success to the client: inject count = 2 to be sure the client sees it.
--
-- Endpoints (GET; weight in brackets, as Binance documents them):
--   /api/v3/ping [1], /api/v3/time [1], /api/v3/ticker/price [2],
--   /api/v3/klines [2], /api/v3/ticker/24hr [2 per symbol; symbols=[...]
--   2 up to 20, 40 up to 100, 80 beyond; none 80], /api/v3/ticker/bookTicker
--   [2, 4 without symbol], /api/v3/depth [limit <= 100: 5, 500: 25, 1000:
--   50, 5000: 250; default 100];
--   /fapi/v1 and /dapi/v1: ticker/24hr [1, 40 without symbol],
--   ticker/bookTicker [2, 5], premiumIndex [fapi 1, 10 without symbol; dapi
--   10], depth [limit 5|10|20|50: 2, 100: 5, 500: 10, 1000: 20; default
--   500], klines [limit < 100: 1, < 500: 2, <= 1000: 5, more 10; max 1500],
--   fundingRate [1; limit default 100, max 1000, funding every 8 h].
--   dapi answers lists for ticker/24hr, bookTicker and premiumIndex even
--   for one symbol, as Binance's COIN-M API does.
-- Each API counts its weight per minute (X-MBX-USED-WEIGHT-1M); one over its
-- limit answers 429 with Retry-After until the minute ends; after ban_after
-- of those the IP is banned (418) on every API. Errors are Binance's
-- bodies: {"code":-1121,"msg":"Invalid symbol."}, -1102 missing, -1100 bad
-- parameter, -1120 bad interval, -1023 start after end.
-- Recorded answers (with fixtures): fetchTicker's at ticker/24hr?symbol=S,
-- fetchTickers' at ticker/24hr?symbols=[...] (compact JSON, in recorded
-- order), fetchOrderBook's at depth?symbol=S&limit=N (N its input), and a
-- klines request whose candles are exactly a recording's gets its text.
local sluice = require "sluice"
local server = require "sluice.server"
local options = require "sluice.options"
local cjson = require "cjson.safe"
local data = require "sluice.mock.binance.data"

local floor, max, min = math.floor, math.max, math.min
local fmt, concat = string.format, table.concat
local price, round, dec, kline = data.price, data.round, data.dec, data.kline

local _M = {}

local INTERVALS = {
  ["1s"] = 1e3, ["1m"] = 60e3, ["3m"] = 180e3, ["5m"] = 300e3, ["15m"] = 900e3,
  ["30m"] = 1800e3, ["1h"] = 3600e3, ["2h"] = 7200e3, ["4h"] = 14400e3,
  ["6h"] = 21600e3, ["8h"] = 28800e3, ["12h"] = 43200e3, ["1d"] = 86400e3,
  ["3d"] = 259200e3, ["1w"] = 604800e3,
}
-- Weekly candles open on Monday 00:00 UTC; the epoch was a Thursday.
local OFFSET = { ["1w"] = 4 * 86400e3 }

local DEFAULT_SYMBOLS = { "BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT" }
local DEFAULT_INVERSE = { "BTCUSD_PERP", "ETHUSD_PERP" }
local FUTURES_DEPTHS = { [5] = 2, [10] = 2, [20] = 2, [50] = 2, [100] = 5, [500] = 10, [1000] = 20 }

local JSON = "application/json;charset=UTF-8"
local MSG_429 = "Too much request weight used; current limit is %d request weight per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API."
local MSG_418 = "Way too much request weight used; IP banned until %d. Please use WebSocket Streams for live updates to avoid bans."
local FAULT_BODIES = {
  [500] = '{"code":-1000,"msg":"An unknown error occurred while processing the request."}',
  [502] = "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>",
  [503] = '{"code":-1008,"msg":"Server is currently overloaded with other requests. Please try again in a few minutes."}',
  [504] = '{"code":-1007,"msg":"Timeout waiting for response from backend server. Send status unknown; execution status unknown."}',
}

-- ---- fixtures ------------------------------------------------------------------

-- A recorded row re-encoded as Binance sent it (integers stay integers).
local function encode_row(row)
  local out = {}
  for i, v in ipairs(row) do
    out[i] = type(v) == "number" and fmt("%d", v) or cjson.encode(v)
  end
  return "[" .. concat(out, ",") .. "]"
end

-- The text of every "httpResponse" value in the file, in order, without
-- the whitespace the fixture file indents it with: the body as Binance sent
-- it (compact), its keys in their order and its values as spelled.
local function raw_bodies(text)
  local out, pos = {}, 1
  while true do
    local _, e = text:find('"httpResponse"%s*:%s*', pos)
    if not e then return out end
    local i, depth, in_str, kept = e + 1, 0, false, {}
    repeat
      local ch = text:sub(i, i)
      if in_str then
        if ch == "\\" then
          kept[#kept + 1] = ch
          i = i + 1
          ch = text:sub(i, i)
        elseif ch == '"' then in_str = false end
      elseif ch == '"' then in_str = true
      elseif ch == "[" or ch == "{" then depth = depth + 1
      elseif ch == "]" or ch == "}" then depth = depth - 1
      elseif ch:match("%s") then ch = ""
      end
      kept[#kept + 1] = ch
      i = i + 1
    until (depth == 0 and not in_str) or i > #text
    out[#out + 1] = concat(kept)
    pos = i
  end
end
_M.raw_bodies = raw_bodies

-- The API family and raw symbol of a ccxt unified symbol.
local function family_of(unified)
  local base, quote, settle = unified:match("^(%w+)/(%w+):?(%w*)$")
  if not base then return nil end
  if settle == "" then return "api", base .. quote end
  if settle == quote then return "fapi", base .. quote end
  return "dapi", base .. "USD_PERP"
end

local function canonical(path, q)
  local keys = {}
  for k in pairs(q) do keys[#keys + 1] = k end
  table.sort(keys)
  for i, k in ipairs(keys) do keys[i] = k .. "=" .. tostring(q[k]) end
  return path .. "?" .. concat(keys, "&")
end

-- recorded.rows[family][symbol][interval][openTime] = encoded row;
-- recorded.klines[family][symbol][interval] = {first, last, count, text};
-- recorded.bodies[canonical request] = text; anchors[family][symbol] =
-- {openTime, open}.
local function load_fixtures(path)
  local f, err = io.open(path, "rb")
  if not f then error("sluice.mock.binance: cannot read fixtures: " .. err, 3) end
  local text = f:read("*a")
  f:close()
  local doc, derr = require("sluice.json").decode(text)
  if type(doc) ~= "table" then
    error("sluice.mock.binance: bad fixtures " .. path .. ": " .. tostring(derr), 3)
  end
  local raws = raw_bodies(text)
  local rec = { rows = { api = {}, fapi = {}, dapi = {} }, klines = { api = {}, fapi = {}, dapi = {} },
                bodies = {} }
  local anchors = { api = {}, fapi = {}, dapi = {} }
  local n = 0
  for _, e in ipairs(doc.entries or {}) do
    local input, resp = e.input, e.httpResponse
    if resp ~= nil then n = n + 1 end
    local raw = raws[n]
    local fam, sym
    if type(input) == "table" and type(input[1]) == "string" then fam, sym = family_of(input[1]) end
    local prefix = fam == "api" and "/api/v3" or fam == "fapi" and "/fapi/v1" or "/dapi/v1"
    if fam and e.method == "fetchOHLCV" and type(resp) == "table" and #resp > 0 then
      local iv = input[2] or "1m"
      local rows = rec.rows[fam]
      rows[sym] = rows[sym] or {}
      rows[sym][iv] = rows[sym][iv] or {}
      for _, row in ipairs(resp) do
        rows[sym][iv][row[1]] = encode_row(row)
        anchors[fam][sym] = anchors[fam][sym] or { row[1], tonumber(row[2]) }
      end
      rec.klines[fam][sym] = rec.klines[fam][sym] or {}
      rec.klines[fam][sym][iv] = { resp[1][1], resp[#resp][1], #resp, raw }
    elseif fam and e.method == "fetchTicker" then
      rec.bodies[canonical(prefix .. "/ticker/24hr", { symbol = sym })] = raw
    elseif fam and e.method == "fetchOrderBook" and input[2] then
      rec.bodies[canonical(prefix .. "/depth", { symbol = sym, limit = input[2] })] = raw
    elseif e.method == "fetchTickers" and type(input) == "table" and type(input[1]) == "table" then
      local names
      for i, u in ipairs(input[1]) do
        local f2, s2 = family_of(u)
        if f2 then fam, names = f2, names or {} names[i] = '"' .. s2 .. '"' end
      end
      if names then
        local p = (fam == "api" and "/api/v3" or fam == "fapi" and "/fapi/v1" or "/dapi/v1")
        rec.bodies[canonical(p .. "/ticker/24hr", { symbols = "[" .. concat(names, ",") .. "]" })] = raw
      end
    end
  end
  return rec, anchors
end

-- ---- requests ------------------------------------------------------------------

local function api_error(code, msg)
  return 400, fmt('{"code":%d,"msg":%s}', code, cjson.encode(msg))
end

local function missing(name)
  return api_error(-1102, "Mandatory parameter '" .. name .. "' was not sent, was empty/null, or malformed.")
end

-- A non-negative integer parameter: value, or nil plus Binance's reply.
local function int_param(q, name)
  local v = q[name]
  if v == nil or v == "" then return nil end
  if not v:match("^%d+$") or #v > 20 then
    return nil, api_error(-1100, "Illegal characters found in parameter '" .. name
      .. "'; legal range is '^[0-9]{1,20}$'.")
  end
  return tonumber(v)
end

-- symbols=["A","B"]: the list, or nil plus Binance's reply.
local function symbols_param(q)
  local v = q.symbols
  local list = v and v:match('^%[(.*)%]$')
  local out = {}
  if list then
    for item, sep in list:gmatch('"([A-Z0-9_.-]+)"(,?)') do
      out[#out + 1] = item
      if sep == "" then break end
    end
  end
  if not list or #out == 0 or fmt('["%s"]', concat(out, '","')) ~= v then
    return nil, api_error(-1100, "Illegal characters found in parameter 'symbols'; legal range is "
      .. "'^\\[(\"[A-Z0-9-_.]{1,20}\"(,\"[A-Z0-9-_.]{1,20}\"){0,}){0,1}\\]$'.")
  end
  return out
end

local Mock = {}
Mock.__index = Mock

function Mock:_symbol(q, family)
  local name = q.symbol
  if name == nil or name == "" then return nil, missing("symbol") end
  local sym = self._symbols[family or "api"][name]
  if not sym then return nil, api_error(-1121, "Invalid symbol.") end
  return sym
end

-- The candles of a klines request: status, body.
function Mock:_klines(q, now, family)
  family = family or "api"
  local sym, e1, e2 = self:_symbol(q, family)
  if not sym then return e1, e2 end
  if q.interval == nil or q.interval == "" then return missing("interval") end
  local iv, off = INTERVALS[q.interval], OFFSET[q.interval] or 0
  if not iv then return api_error(-1120, "Invalid interval.") end
  local params = {}
  for _, name in ipairs{ "startTime", "endTime", "limit" } do
    local v, s, body = int_param(q, name)
    if s then return s, body end
    params[name] = v
  end
  local start, stop = params.startTime, params.endTime
  if start and stop and start > stop then
    return api_error(-1023, "Start time is greater than end time.")
  end
  local limit = min(family == "api" and 1000 or 1500, max(1, params.limit or 500))
  local function align(t) return floor((t - off) / iv) * iv + off end
  local last = align(now)                      -- the candle open now
  if stop then last = min(last, align(stop)) end
  local first
  if start then
    first = align(start)
    if first < start then first = first + iv end
    last = min(last, first + (limit - 1) * iv)
  else
    first = last - (limit - 1) * iv
  end
  local whole = self._recorded.klines[family][sym.name]
  whole = whole and whole[q.interval]
  if whole and whole[1] == first and whole[2] == last and whole[3] == (last - first) / iv + 1 then
    return 200, whole[4]
  end
  local recorded = self._recorded.rows[family][sym.name]
  recorded = recorded and recorded[q.interval] or {}
  local rows = {}
  for t = first, last, iv do
    rows[#rows + 1] = recorded[t] or kline(sym, iv, t, now)
  end
  return 200, "[" .. concat(rows, ",") .. "]"
end

-- The symbols a ticker-like request names: list, single, or nil plus
-- Binance's reply. family's lists without a symbol are every symbol.
function Mock:_select(q, family)
  if q.symbol ~= nil then
    local sym, s, body = self:_symbol(q, family)
    if not sym then return nil, nil, s, body end
    return { sym }, true
  end
  local names = self._names[family]
  if q.symbols ~= nil and family == "api" then
    local list, s, body = symbols_param(q)
    if not list then return nil, nil, s, body end
    names = list
  end
  local out = {}
  for i, name in ipairs(names) do
    out[i] = self._symbols[family][name]
    if not out[i] then return nil, nil, api_error(-1121, "Invalid symbol.") end
  end
  return out, false
end

-- A list (or one object) of gen(family, sym, now) texts.
local function listing(gen)
  return function(self, q, now, family)
    local syms, single, s, body = self:_select(q, family)
    if not syms then return s, body end
    local out = {}
    for i, sym in ipairs(syms) do out[i] = gen(family, sym, now) end
    if single and family ~= "dapi" then return 200, out[1] end
    return 200, "[" .. concat(out, ",") .. "]"
  end
end

function Mock:_ticker_price(q, now)
  local syms, single, s, body = self:_select(q, "api")
  if not syms then return s, body end
  local out = {}
  for i, sym in ipairs(syms) do
    out[i] = fmt('{"symbol":"%s","price":"%s"}', sym.name, dec(round(price(sym, now), sym.tick)))
  end
  return 200, single and out[1] or "[" .. concat(out, ",") .. "]"
end

local function depth_limit(q, family)
  local v = q.limit
  if v == nil or v == "" then return family == "api" and 100 or 500 end
  local n = tonumber(v)
  if not n or not v:match("^%d+$") then return nil end
  if family == "api" then return min(5000, max(1, n)) end
  return FUTURES_DEPTHS[n] and n or nil
end

function Mock:_depth(q, now, family)
  local sym, s, body = self:_symbol(q, family)
  if not sym then return s, body end
  local limit = depth_limit(q, family)
  if not limit then return api_error(-1100, "Illegal characters found in parameter 'limit'.") end
  return 200, data.depth(family, sym, now, limit)
end

function Mock:_funding(q, now, family)
  local sym, s, body = self:_symbol(q, family)
  if not sym then return s, body end
  local params = {}
  for _, name in ipairs{ "startTime", "endTime", "limit" } do
    local v, st, b = int_param(q, name)
    if st then return st, b end
    params[name] = v
  end
  local start, stop = params.startTime, params.endTime
  if start and stop and start > stop then
    return api_error(-1023, "Start time is greater than end time.")
  end
  local every = data.FUNDING_EVERY
  local limit = min(1000, max(1, params.limit or 100))
  local last = floor(min(stop or now, now) / every) * every
  local first
  if start then
    first = math.ceil(start / every) * every
    last = min(last, first + (limit - 1) * every)
  else
    first = last - (limit - 1) * every
  end
  local rows = {}
  for t = first, last, every do rows[#rows + 1] = data.funding(family, sym, t) end
  return 200, "[" .. concat(rows, ",") .. "]"
end

local function spot_ticker_weight(q)
  if q.symbol then return 2 end
  local list = q.symbols and symbols_param(q)
  local n = list and #list or math.huge
  return n <= 20 and 2 or n <= 100 and 40 or 80
end

local function spot_depth_weight(q)
  local l = depth_limit(q, "api") or 100
  return l <= 100 and 5 or l <= 500 and 25 or l <= 1000 and 50 or 250
end

local function futures_depth_weight(q)
  return FUTURES_DEPTHS[depth_limit(q, "fapi") or 500]
end

local function futures_klines_weight(q)
  local l = tonumber(q.limit) or 500
  return l < 100 and 1 or l < 500 and 2 or l <= 1000 and 5 or 10
end

local function by_symbol(one, all)
  return function(q) return q.symbol and one or all end
end

-- path -> { family, weight (number or function(query)), handler }
local ENDPOINTS = {
  ["/api/v3/ping"] = { "api", 1, function() return 200, "{}" end },
  ["/api/v3/time"] = { "api", 1, function(_, _, now) return 200, fmt('{"serverTime":%d}', now) end },
  ["/api/v3/klines"] = { "api", 2, Mock._klines },
  ["/api/v3/ticker/price"] = { "api", 2, Mock._ticker_price },
  ["/api/v3/ticker/24hr"] = { "api", spot_ticker_weight, listing(data.ticker24) },
  ["/api/v3/ticker/bookTicker"] = { "api", by_symbol(2, 4), listing(data.book_ticker) },
  ["/api/v3/depth"] = { "api", spot_depth_weight, Mock._depth },
}
for _, family in ipairs{ "fapi", "dapi" } do
  local p = "/" .. family .. "/v1"
  ENDPOINTS[p .. "/ping"] = { family, 1, function() return 200, "{}" end }
  ENDPOINTS[p .. "/time"] = { family, 1, function(_, _, now) return 200, fmt('{"serverTime":%d}', now) end }
  ENDPOINTS[p .. "/ticker/24hr"] = { family, by_symbol(1, 40), listing(data.ticker24) }
  ENDPOINTS[p .. "/ticker/bookTicker"] = { family, by_symbol(2, 5), listing(data.book_ticker) }
  ENDPOINTS[p .. "/premiumIndex"] = { family, family == "fapi" and by_symbol(1, 10) or 10,
    listing(data.premium) }
  ENDPOINTS[p .. "/depth"] = { family, futures_depth_weight, Mock._depth }
  ENDPOINTS[p .. "/klines"] = { family, futures_klines_weight, Mock._klines }
  ENDPOINTS[p .. "/fundingRate"] = { family, 1, Mock._funding }
end

-- Answer the weight limits: nil to go on, or status, body, retry_after.
-- Over the limit: 429 until the minute ends; after ban_after of those, an
-- IP ban (418) on every API that outlasts the minute, as Binance escalates.
function Mock:_limit(family, weight, now)
  local minute = self._minute
  local limit = family == "api" and self._opts.weight_limit or self._opts.futures_weight_limit
  if self._banned_until and now >= self._banned_until then self._banned_until = nil end
  if not self._banned_until and self.weights[family] + weight <= limit then
    self.weights[family] = self.weights[family] + weight
    self.weight = self.weights.api
    return nil
  end
  if not self._banned_until and self._refused < self._opts.ban_after then
    self._refused = self._refused + 1
    return 429, fmt('{"code":-1003,"msg":"' .. MSG_429 .. '"}', limit),
      math.ceil(((minute + 1) * 60e3 - now) / 1000)
  end
  self._banned_until = self._banned_until or now + self._opts.ban_seconds * 1000
  return 418, fmt('{"code":-1003,"msg":"' .. MSG_418 .. '"}', self._banned_until),
    math.ceil((self._banned_until - now) / 1000)
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

function Mock:_handle(req)
  local entry = { method = req.method, path = req.path, query = req.query, headers = req.headers }
  self.requests = self.requests + 1
  self.log[#self.log + 1] = entry
  local fault = self:_take_fault(req.path)
  if fault and fault.delay then sluice.sleep(fault.delay) end
  local now = floor(self._now())
  -- Every reply reports this minute's weight, so roll the window even for
  -- replies that use none.
  local minute = floor(now / 60e3)
  if minute ~= self._minute then
    self._minute, self._refused = minute, 0
    self.weights = { api = 0, fapi = 0, dapi = 0 }
    self.weight = 0
  end
  if fault and fault.abort then
    entry.status = "abort"
    req:abort()
    return
  end
  local status, body, retry_after
  local ep = ENDPOINTS[req.path]
  local family = ep and ep[1] or req.path:match("^/(%a+)/") or "api"
  if not self.weights[family] then family = "api" end
  if fault and fault.status then
    status, body, retry_after = fault.status, fault.body, fault.retry_after
    if not body then
      if status == 429 or status == 418 then
        local until_ms = now + (retry_after or self._opts.ban_seconds) * 1000
        body = fmt('{"code":-1003,"msg":"' .. (status == 429 and MSG_429 or MSG_418) .. '"}',
          status == 429 and self._opts.weight_limit or until_ms)
      else
        body = FAULT_BODIES[status] or fmt('{"code":-1000,"msg":"HTTP %d"}', status)
      end
    end
  elseif not ep then
    status, body = 404, '{"code":-1000,"msg":"Unknown endpoint."}'
  elseif req.method ~= "GET" and req.method ~= "HEAD" then
    status, body = 405, '{"code":-1000,"msg":"Method not allowed."}'
  else
    local weight = type(ep[2]) == "function" and ep[2](req.query) or ep[2]
    status, body, retry_after = self:_limit(family, weight, now)
    if not status then
      local recorded = self._recorded.bodies[canonical(req.path, req.query)]
      if recorded then
        status, body = 200, recorded
      else
        status, body = ep[3](self, req.query, now, family)
      end
    end
  end
  if fault and fault.malformed and not fault.status then
    status, body = 200, body:sub(1, max(1, floor(#body / 2)))   -- cut mid-value
  end
  entry.status = status
  local used = tostring(self.weights[family])
  local headers = { ["Content-Type"] = JSON, ["X-MBX-USED-WEIGHT"] = used,
                    ["X-MBX-USED-WEIGHT-1M"] = used }
  if retry_after then headers["Retry-After"] = tostring(retry_after) end
  for k, v in pairs(fault and fault.headers or {}) do headers[k] = v end
  return status, body, headers
end

function Mock:answer(req)
  return self:_handle(req)
end

local FAULT = { status = { integer = true, min = 200, max = 599 }, count = "number",
  retry_after = "number", body = "string", headers = "table", delay = "number",
  malformed = "boolean", abort = "boolean", path = "string" }

function Mock:inject(spec)
  if type(spec) ~= "table" then
    error("sluice.mock.binance.inject: bad argument #1 'fault' (table expected, got " .. type(spec) .. ")", 2)
  end
  options.check("sluice.mock.binance.inject", spec, FAULT)
  -- by hand: one of four keys is needed (a schema requires each on its own)
  if not (spec.status or spec.malformed or spec.abort or spec.delay) then
    error("sluice.mock.binance.inject: a fault needs status, malformed, abort or delay", 2)
  end
  local f = {}
  for k, v in pairs(spec) do f[k] = v end
  f.left = spec.count or 1
  self._faults[#self._faults + 1] = f
  return self
end

function Mock:reset()
  self.requests, self.log, self._faults = 0, {}, {}
  self.weight, self._minute, self._refused, self._banned_until = 0, nil, 0, nil
  self.weights = { api = 0, fapi = 0, dapi = 0 }
  return self
end

function Mock:stop()
  return self._srv:close()
end

local OPTIONS = { host = "string", port = "number", seed = "number", now = "function",
  symbols = "table", linear = "table", inverse = "table", fixtures = "string",
  weight_limit = "number", futures_weight_limit = "number", ban_after = "number",
  ban_seconds = "number" }

function _M.start(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("sluice.mock.binance.start: bad argument #1 'opts' (table expected, got " .. type(opts) .. ")", 2)
  end
  opts = options.check("sluice.mock.binance.start", opts, OPTIONS) or {}
  local recorded, anchors = {
    rows = { api = {}, fapi = {}, dapi = {} }, klines = { api = {}, fapi = {}, dapi = {} },
    bodies = {} }, { api = {}, fapi = {}, dapi = {} }
  if opts.fixtures then recorded, anchors = load_fixtures(opts.fixtures) end
  local m = setmetatable({ _symbols = { api = {}, fapi = {}, dapi = {} },
    _names = { api = {}, fapi = {}, dapi = {} }, _recorded = recorded,
    _opts = { weight_limit = opts.weight_limit or 6000, ban_after = opts.ban_after or 3,
              futures_weight_limit = opts.futures_weight_limit or 2400,
              ban_seconds = opts.ban_seconds or 120 },
    _now = opts.now or function() return floor(sluice.time() * 1000) end }, Mock)
  local spot = opts.symbols or DEFAULT_SYMBOLS
  local lists = { api = spot, fapi = opts.linear or spot, dapi = opts.inverse or DEFAULT_INVERSE }
  for _, family in ipairs{ "api", "fapi", "dapi" } do
    for _, name in ipairs(lists[family]) do
      local twin = family == "dapi" and name:gsub("USD_.*$", "USDT") or name
      local sym, a = data.symbol(opts.seed or 1, name, twin), anchors[family][name]
      if family == "api" then sym = data.symbol(opts.seed or 1, name) end
      -- Scale the synthetic path through a recorded open, so synthetic
      -- neighbours of recorded candles do not jump by thousands.
      if a and a[2] then sym.price = sym.price * a[2] / price(sym, a[1]) end
      m._symbols[family][name] = sym
      m._names[family][#m._names[family] + 1] = name
    end
  end
  local srv, err = server.listen{ host = opts.host or "127.0.0.1", port = opts.port or 0 }
  if not srv then error("sluice.mock.binance: " .. err, 2) end
  m._srv, m.port, m.url = srv, srv.port,
    "http://" .. (srv.host:find(":") and "[" .. srv.host .. "]" or srv.host) .. ":" .. srv.port
  m:reset()
  srv:route("*", "/*", function(req) return m:_handle(req) end)
  return m
end

return _M
