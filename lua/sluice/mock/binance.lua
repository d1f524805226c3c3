--- sluice.mock.binance: a mock Binance spot REST API on sluice.server, so
-- collector specs and the offline quick-start never touch the internet.
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
--   symbols         list of known symbols (default BTCUSDT ETHUSDT BNBUSDT SOLUSDT)
--   fixtures        path of a ccxt fixture file (tests/fixtures/ccxt/binance.json):
--                   its spot fetchOHLCV rows are served exactly as recorded,
--                   and the synthetic prices around them are scaled to match
--   weight_limit    request weight per minute (default 6000)
--   ban_after       429s answered in a minute before the next over-limit
--                   request bans (default 3)
--   ban_seconds     length of a 418 ban (default 120)
-- m.port, m.url, m.requests (count), m.log (list of {method, path, query,
-- headers, status}), m.weight (used this minute), m:stop(), m:reset()
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
-- Endpoints (GET; weight in brackets): /api/v3/ping [1], /api/v3/time [1],
-- /api/v3/ticker/price [2, 4 without symbol], /api/v3/klines [2].
-- Klines are synthetic but deterministic per (seed, symbol, interval,
-- openTime): the price is a sum of hashed value-noise octaves (1 s .. 1 year)
-- so any time can be priced without walking from an origin, and a candle's
-- close is the next candle's open. limit is clamped to [1, 1000].
local sluice = require "sluice"
local server = require "sluice.server"
local options = require "sluice.options"
local cjson = require "cjson.safe"
local bit = require "bit"

local band, bxor, rshift, tobit = bit.band, bit.bxor, bit.rshift, bit.tobit
local floor, max, min, exp, sqrt = math.floor, math.max, math.min, math.exp, math.sqrt
local fmt, concat = string.format, table.concat

local _M = {}

local INTERVALS = {
  ["1s"] = 1e3, ["1m"] = 60e3, ["3m"] = 180e3, ["5m"] = 300e3, ["15m"] = 900e3,
  ["30m"] = 1800e3, ["1h"] = 3600e3, ["2h"] = 7200e3, ["4h"] = 14400e3,
  ["6h"] = 21600e3, ["8h"] = 28800e3, ["12h"] = 43200e3, ["1d"] = 86400e3,
  ["3d"] = 259200e3, ["1w"] = 604800e3,
}
-- Weekly candles open on Monday 00:00 UTC; the epoch was a Thursday.
local OFFSET = { ["1w"] = 4 * 86400e3 }

-- Rough real magnitudes so demo output looks plausible: price, tick, lot
-- step, base volume and trades per second.
local PROFILES = {
  BTCUSDT = { 43000, 0.01, 0.00001, 0.006, 1.2 },
  ETHUSDT = { 2300, 0.01, 0.0001, 0.08, 0.9 },
  BNBUSDT = { 300, 0.1, 0.001, 0.2, 0.3 },
  SOLUSDT = { 100, 0.01, 0.001, 2.0, 0.6 },
}
local DEFAULT_SYMBOLS = { "BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT" }
-- Value-noise octaves: grid spacing in seconds and amplitude (log price),
-- amplitude ~ sqrt(spacing) as for a random walk, capped for the long ones.
local OCTAVES = { { 1, 0.00007 }, { 60, 0.0005 }, { 900, 0.002 }, { 14400, 0.008 },
  { 259200, 0.03 }, { 2592000, 0.08 }, { 31536000, 0.25 } }

local JSON = "application/json;charset=UTF-8"
local MSG_429 = "Too much request weight used; current limit is %d request weight per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API."
local MSG_418 = "Way too much request weight used; IP banned until %d. Please use WebSocket Streams for live updates to avoid bans."
local FAULT_BODIES = {
  [500] = '{"code":-1000,"msg":"An unknown error occurred while processing the request."}',
  [502] = "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>",
  [503] = '{"code":-1008,"msg":"Server is currently overloaded with other requests. Please try again in a few minutes."}',
  [504] = '{"code":-1007,"msg":"Timeout waiting for response from backend server. Send status unknown; execution status unknown."}',
}

-- 32-bit multiply modulo 2^32 without losing bits to doubles.
local function imul(a, b)
  return tobit(tobit(rshift(a, 16) * b) * 65536 + band(a, 0xffff) * b)
end

local function mix(h, x)
  h = imul(bxor(h, tobit(x % 4294967296)), -1640531535)   -- 0x9e3779b1
  h = bxor(h, rshift(h, 15))
  return imul(h, -2048144789)                             -- 0x85ebca6b
end

-- A uniform number in [0, 1) from a 32-bit state and up to three integers.
local function hash(h, a, b, c)
  h = mix(mix(mix(mix(h, a), floor(a / 4294967296)), b or 0), c or 0)
  h = bxor(h, rshift(h, 13))
  h = imul(h, -1028477387)                                -- 0xc2b2ae35
  h = bxor(h, rshift(h, 16))
  return (h % 4294967296) / 4294967296
end

local function str_hash(seed, s)
  local h = tobit(seed)
  for i = 1, #s do h = mix(h, s:byte(i)) end
  return h
end

local function round(x, step) return floor(x / step + 0.5) * step end
local function dec(x) return fmt("%.8f", x) end

-- log price offset at t ms: value noise, linear between hashed grid points.
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

local function new_symbol(seed, name)
  local h = str_hash(seed, name)
  local p = PROFILES[name] or { 1 + 999 * hash(h, 7), 0.0001, 0.01, 5, 0.2 }
  return { name = name, h = h, price = p[1], tick = p[2], step = p[3],
           vol = p[4], trades = p[5] }
end

-- One synthetic kline as a JSON array. A candle still open at `now` is cut
-- at now: its close is the price now and its volume covers the time elapsed.
local function kline(sym, iv, t, now)
  local stop = min(t + iv, now)
  local o, c = round(price(sym, t), sym.tick), round(price(sym, stop), sym.tick)
  local u = function(k) return hash(sym.h, t, iv, k) end
  local sigma = 0.0005 * sqrt(iv / 60e3)
  local hi = round(max(o, c) * (1 + sigma * u(1)), sym.tick)
  local lo = round(min(o, c) * (1 - sigma * u(2)), sym.tick)
  local secs = max(1, (stop - t) / 1000)
  local vol = max(sym.step, round(sym.vol * secs * (0.4 + 1.2 * u(3)), sym.step))
  local trades = max(1, floor(sym.trades * secs * (0.4 + 1.2 * u(4))))
  local vwap = (o + hi + lo + c) / 4
  local taker = round(vol * (0.3 + 0.4 * u(5)), sym.step)
  return fmt('[%d,"%s","%s","%s","%s","%s",%d,"%s",%d,"%s","%s","0"]', t, dec(o), dec(hi),
    dec(lo), dec(c), dec(vol), t + iv - 1, dec(vol * vwap), trades, dec(taker), dec(taker * vwap))
end

-- A recorded row re-encoded as Binance sent it (integers stay integers).
local function encode_row(row)
  local out = {}
  for i, v in ipairs(row) do
    out[i] = type(v) == "number" and fmt("%d", v) or cjson.encode(v)
  end
  return "[" .. concat(out, ",") .. "]"
end

-- recorded[symbol][interval][openTime] = encoded row, from ccxt fixtures'
-- spot fetchOHLCV entries ("BTC/USDT", not "BTC/USDT:USDT" contracts).
local function load_fixtures(path)
  local f, err = io.open(path, "rb")
  if not f then error("sluice.mock.binance: cannot read fixtures: " .. err, 3) end
  local doc, derr = require("sluice.json").decode(f:read("*a"))
  f:close()
  if type(doc) ~= "table" then
    error("sluice.mock.binance: bad fixtures " .. path .. ": " .. tostring(derr), 3)
  end
  local recorded, anchors = {}, {}
  for _, e in ipairs(doc.entries or {}) do
    local input = e.input
    if e.method == "fetchOHLCV" and type(input) == "table" and type(input[1]) == "string"
        and not input[1]:find(":") and type(e.httpResponse) == "table" then
      local sym, iv = input[1]:gsub("/", ""), input[2] or "1m"
      recorded[sym] = recorded[sym] or {}
      recorded[sym][iv] = recorded[sym][iv] or {}
      for _, row in ipairs(e.httpResponse) do
        recorded[sym][iv][row[1]] = encode_row(row)
        anchors[sym] = anchors[sym] or { row[1], tonumber(row[2]) }
      end
    end
  end
  return recorded, anchors
end

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

local Mock = {}
Mock.__index = Mock

function Mock:_symbol(q)
  local name = q.symbol
  if name == nil or name == "" then return nil, missing("symbol") end
  local sym = self._symbols[name]
  if not sym then return nil, api_error(-1121, "Invalid symbol.") end
  return sym
end

function Mock:_klines(q, now)
  local sym, e1, e2 = self:_symbol(q)
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
  local limit = min(1000, max(1, params.limit or 500))
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
  local recorded = self._recorded[sym.name]
  recorded = recorded and recorded[q.interval] or {}
  local rows = {}
  for t = first, last, iv do
    rows[#rows + 1] = recorded[t] or kline(sym, iv, t, now)
  end
  return 200, "[" .. concat(rows, ",") .. "]"
end

function Mock:_ticker(q, now)
  local list = {}
  if q.symbol == nil then
    for _, name in ipairs(self._names) do list[#list + 1] = self._symbols[name] end
  else
    local sym, s, body = self:_symbol(q)
    if not sym then return s, body end
    list[1] = sym
  end
  local out = {}
  for i, sym in ipairs(list) do
    out[i] = fmt('{"symbol":"%s","price":"%s"}', sym.name, dec(round(price(sym, now), sym.tick)))
  end
  return 200, q.symbol and out[1] or "[" .. concat(out, ",") .. "]"
end

local ENDPOINTS = {
  ["/api/v3/ping"] = { 1, function() return 200, "{}" end },
  ["/api/v3/time"] = { 1, function(_, _, now) return 200, fmt('{"serverTime":%d}', now) end },
  ["/api/v3/klines"] = { 2, Mock._klines },
  ["/api/v3/ticker/price"] = { 2, Mock._ticker },
}

-- Answer the weight limits: nil to go on, or status, body, retry_after.
-- Over the limit: 429 until the minute ends; after ban_after of those, an
-- IP ban (418) that outlasts the minute, as Binance escalates.
function Mock:_limit(weight, now)
  local minute = self._minute
  if self._banned_until and now >= self._banned_until then self._banned_until = nil end
  if not self._banned_until and self.weight + weight <= self._opts.weight_limit then
    self.weight = self.weight + weight
    return nil
  end
  if not self._banned_until and self._refused < self._opts.ban_after then
    self._refused = self._refused + 1
    return 429, fmt('{"code":-1003,"msg":"' .. MSG_429 .. '"}', self._opts.weight_limit),
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
    self._minute, self.weight, self._refused = minute, 0, 0
  end
  if fault and fault.abort then
    entry.status = "abort"
    req:abort()
    return
  end
  local status, body, retry_after
  local ep = ENDPOINTS[req.path]
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
    status, body, retry_after = self:_limit(ep[1], now)
    if not status then
      status, body = ep[2](self, req.query, now)
    end
  end
  if fault and fault.malformed and not fault.status then
    status, body = 200, body:sub(1, max(1, floor(#body / 2)))   -- cut mid-value
  end
  entry.status = status
  local headers = { ["Content-Type"] = JSON, ["X-MBX-USED-WEIGHT"] = tostring(self.weight),
                    ["X-MBX-USED-WEIGHT-1M"] = tostring(self.weight) }
  if retry_after then headers["Retry-After"] = tostring(retry_after) end
  for k, v in pairs(fault and fault.headers or {}) do headers[k] = v end
  return status, body, headers
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
  return self
end

function Mock:stop()
  return self._srv:close()
end

local OPTIONS = { host = "string", port = "number", seed = "number", now = "function",
  symbols = "table", fixtures = "string", weight_limit = "number", ban_after = "number",
  ban_seconds = "number" }

function _M.start(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("sluice.mock.binance.start: bad argument #1 'opts' (table expected, got " .. type(opts) .. ")", 2)
  end
  opts = options.check("sluice.mock.binance.start", opts, OPTIONS) or {}
  local recorded, anchors = {}, {}
  if opts.fixtures then recorded, anchors = load_fixtures(opts.fixtures) end
  local m = setmetatable({ _symbols = {}, _names = {}, _recorded = recorded,
    _opts = { weight_limit = opts.weight_limit or 6000, ban_after = opts.ban_after or 3,
              ban_seconds = opts.ban_seconds or 120 },
    _now = opts.now or function() return floor(sluice.time() * 1000) end }, Mock)
  for _, name in ipairs(opts.symbols or DEFAULT_SYMBOLS) do
    local sym, a = new_symbol(opts.seed or 1, name), anchors[name]
    -- Scale the synthetic path through a recorded open, so synthetic
    -- neighbours of recorded candles do not jump by thousands.
    if a and a[2] then sym.price = sym.price * a[2] / price(sym, a[1]) end
    m._symbols[name] = sym
    m._names[#m._names + 1] = name
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
