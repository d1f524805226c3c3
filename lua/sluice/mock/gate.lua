--- sluice.mock.gate: a mock Gate (gate.io) API v4 on sluice.server, for the
-- gate collector's specs and offline demos (no internet).
--
--   local mock = require "sluice.mock.gate"
--   local m = mock.start{ now = function() return 1710327648000 end,
--                         fixtures = "tests/fixtures/ccxt/gate.json" }
--   http.get(m.url .. "/api/v4/spot/tickers", { query = { currency_pair = "BTC_USDT" } })
--   m:inject{ status = 500, count = 3 }    -- a 5xx storm for the next 3 requests
--   m:stop()
--
-- mock.start(opts) -> m   (raises when it cannot listen)
--   host, port   where to listen (default "127.0.0.1", 0 = a free port)
--   seed         integer mixed into every synthetic number (default 1)
--   now          function returning epoch milliseconds (default the wall
--                clock): drives candles, funding, books, quota windows, bans
--   symbols      ccxt unified symbols the exchange lists (default BTC/USDT,
--                ETH/USDT, BTC/USDT:USDT, ETH/USDT:USDT, BTC/USD:BTC): spot
--                pairs, USDT-settled and BTC-settled perpetuals
--   fixtures     a ccxt fixture file (tests/fixtures/ccxt/gate.json): its
--                recorded httpResponse bodies are served byte for byte (the
--                recorded JSON text, whitespace between tokens removed) where
--                a request matches the recording: fetchTicker's pair
--                (/spot/tickers?currency_pair=, and its element in the list
--                of all), fetchOHLCV's candles (by pair, interval and time,
--                also inside a longer window), fetchFundingRates' contract
--                list (/futures/{settle}/contracts)
--   limit        requests per endpoint per 10 s window (default 200)
--   ban_after    429s answered in one window before the next over-limit
--                request is refused with a WAF 403 (default 3)
--   ban_seconds  length of that IP block (default 120)
-- m.port, m.url, m.requests (count), m.log (list of {method, path, query,
-- headers, status, now = the mock's clock then, ms}), m:stop(), m:reset()
-- m:inject{status, body, headers, count = 1, path, delay, abort, malformed,
--   crossed}: faults queued and consumed in order by the requests they match
--   (path: exact, optional). status answers it with `body` or Gate's own
--   body for it; malformed cuts the real body short; abort closes the
--   connection; delay sleeps first; crossed answers an order book whose
--   best bid is above its best ask. Faulted requests use no quota.
--
-- Endpoints (GET, under /api/v4): /spot/tickers [currency_pair],
-- /spot/order_book (currency_pair, limit <= 1000, with_id),
-- /spot/candlesticks (currency_pair, interval, from/to or limit; <= 1000
-- points), /futures/{settle}/tickers [contract], /futures/{settle}/order_book
-- (contract, limit, with_id), /futures/{settle}/candlesticks (contract,
-- interval, from/to or limit; <= 2000 points), /futures/{settle}/contracts
-- (limit <= 1000, offset), /futures/{settle}/contracts/{contract},
-- /futures/{settle}/funding_rate (contract, from, to, limit <= 1000; newest
-- first; one record per 8 h). Errors as Gate writes them: {"label", "message"}
-- (INVALID_CURRENCY_PAIR, CONTRACT_NOT_FOUND, INVALID_PARAM_VALUE,
-- MISSING_REQUIRED_PARAM: 400; TOO_MANY_REQUESTS: 429). Every answer has
-- X-Gate-RateLimit-Requests-Remain, -Limit and -Reset-Timestamp (ms: the
-- window's end once the quota is used up, else now) and X-In-Time/X-Out-Time
-- (us).
local sluice = require "sluice"
local server = require "sluice.server"
local options = require "sluice.options"
local json = require "sluice.json"
local mockhash = require "sluice.mock.hash"

local floor, max, min, exp, ceil = math.floor, math.max, math.min, math.exp, math.ceil
local fmt, concat = string.format, table.concat

local _M = {}

local INTERVALS = { ["10s"] = 10, ["1m"] = 60, ["5m"] = 300, ["15m"] = 900, ["30m"] = 1800,
  ["1h"] = 3600, ["4h"] = 14400, ["8h"] = 28800, ["1d"] = 86400, ["7d"] = 604800 }
local FUNDING_INTERVAL = 28800
local DEFAULT_SYMBOLS = { "BTC/USDT", "ETH/USDT", "BTC/USDT:USDT", "ETH/USDT:USDT", "BTC/USD:BTC" }
local PROFILES = { BTC = { 43000, 0.1 }, ETH = { 2300, 0.01 }, SOL = { 100, 0.01 } }
local OCTAVES = { { 60, 0.0005 }, { 3600, 0.004 }, { 86400, 0.02 }, { 2592000, 0.08 } }
local JSON = "application/json"
local WAF_403 = "<html><head><title>403 Forbidden</title></head>"
  .. "<body><center><h1>403 Forbidden</h1></center></body></html>"

-- ---------------------------------------------------------------------
-- deterministic numbers

local hash, str_hash = mockhash.hash, mockhash.str_hash

-- price at t seconds: value noise around the profile's price
local function price(sym, t)
  local sum = 0
  for k, o in ipairs(OCTAVES) do
    local g = t / o[1]
    local i = floor(g)
    local a = hash(sym.h, i, k) * 2 - 1
    local b = hash(sym.h, i + 1, k) * 2 - 1
    sum = sum + (a + (b - a) * (g - i)) * o[2]
  end
  return sym.price * exp(sum)
end

local function px(sym, x) return fmt(sym.pfmt, floor(x / sym.tick + 0.5) * sym.tick) end

-- ---------------------------------------------------------------------
-- the fixture file's JSON text: spans of values, whitespace removed

local function skip_ws(s, i)
  return s:find("[^ \t\r\n]", i) or #s + 1
end

-- the end of the string starting at s[i] == '"'
local function string_end(s, i)
  local j = i + 1
  while true do
    local c = s:sub(j, j)
    if c == "\\" then j = j + 2
    elseif c == '"' then return j
    elseif c == "" then error("sluice.mock.gate: unterminated string in fixtures", 0)
    else j = j + 1 end
  end
end

-- scan(s, i) -> node {s = start, e = end, kind, items | members}
local function scan(s, i)
  i = skip_ws(s, i)
  local c = s:sub(i, i)
  if c == "{" or c == "[" then
    local node = { s = i, kind = c, items = {}, members = {} }
    local j = skip_ws(s, i + 1)
    local close = c == "{" and "}" or "]"
    if s:sub(j, j) == close then node.e = j; return node end
    while true do
      local key
      if c == "{" then
        j = skip_ws(s, j)
        local ke = string_end(s, j)
        key = json.decode(s:sub(j, ke))
        j = skip_ws(s, ke + 1) + 1             -- past ':'
      end
      local child = scan(s, j)
      if key then node.members[key] = child else node.items[#node.items + 1] = child end
      j = skip_ws(s, child.e + 1)
      local d = s:sub(j, j)
      if d == close then node.e = j; return node end
      j = j + 1                                 -- past ','
    end
  elseif c == '"' then
    return { s = i, e = string_end(s, i), kind = '"' }
  end
  local e = (s:find("[,%]} \t\r\n]", i) or #s + 1) - 1
  return { s = i, e = e, kind = "n" }
end

-- the node's text without whitespace between tokens
local function compact(s, node)
  local out, i, e = {}, node.s, node.e
  while i <= e do
    local c = s:sub(i, i)
    if c == '"' then
      local j = string_end(s, i)
      out[#out + 1] = s:sub(i, j)
      i = j + 1
    elseif c:match("[ \t\r\n]") then
      i = i + 1
    else
      out[#out + 1] = c
      i = i + 1
    end
  end
  return concat(out)
end

-- recorded = { ticker = {pair = {body, element}}, candles = {pair = {interval = {t = text}}},
--              contracts = {settle = body} }
local function load_fixtures(path)
  local f, err = io.open(path, "rb")
  if not f then error("sluice.mock.gate: cannot read fixtures: " .. err, 3) end
  local s = f:read("*a")
  f:close()
  local ok, root = pcall(scan, s, 1)
  local doc = ok and json.decode(s)
  if not ok or type(doc) ~= "table" or not root.members.entries then
    error("sluice.mock.gate: bad fixtures " .. path .. (ok and "" or ": " .. tostring(root)), 3)
  end
  local rec = { ticker = {}, candles = {}, contracts = {} }
  for n, node in ipairs(root.members.entries.items) do
    local e, hr = doc.entries[n], node.members.httpResponse
    local input = e.input
    if hr and type(input) == "table" then
      if e.method == "fetchTicker" and type(input[1]) == "string" and hr.items[1] then
        local pair = input[1]:gsub("/", "_")
        rec.ticker[pair] = { compact(s, hr), compact(s, hr.items[1]) }
      elseif e.method == "fetchOHLCV" and type(input[1]) == "string"
          and not input[1]:find(":") then
        local pair, iv = input[1]:gsub("/", "_"), input[2] or "1m"
        rec.candles[pair] = rec.candles[pair] or {}
        rec.candles[pair][iv] = rec.candles[pair][iv] or {}
        for k, row in ipairs(hr.items) do
          rec.candles[pair][iv][tonumber(e.httpResponse[k][1])] = compact(s, row)
        end
      elseif e.method == "fetchFundingRates" and type(e.request) == "table" then
        local settle = tostring(e.request.url):match("/futures/(%w+)/contracts")
        if settle then rec.contracts[settle] = compact(s, hr) end
      end
    end
  end
  return rec
end

-- ---------------------------------------------------------------------
-- the exchange's answers

local function gate_error(status, label, message)
  return status, fmt('{"label":"%s","message":%s}', label, json.encode(message))
end

local function int_param(q, name, lo, hi)
  local v = q[name]
  if v == nil or v == "" then return nil end
  local n = v:match("^%-?%d+$") and tonumber(v)
  if not n or (lo and n < lo) or (hi and n > hi) then
    return nil, gate_error(400, "INVALID_PARAM_VALUE", "Invalid parameter " .. name .. ": " .. v)
  end
  return n
end

local Mock = {}
Mock.__index = Mock

function Mock:_pair(q, settle)
  local key = settle and "contract" or "currency_pair"
  local raw = q[key]
  if raw == nil or raw == "" then
    return nil, gate_error(400, "MISSING_REQUIRED_PARAM", "Missing required parameter: " .. key)
  end
  local sym = self._markets[settle or "spot"][raw]
  if not sym then
    if settle then return nil, gate_error(400, "CONTRACT_NOT_FOUND", "Contract not found") end
    return nil, gate_error(400, "INVALID_CURRENCY_PAIR", "Invalid currency pair " .. raw)
  end
  return sym
end

local function spot_ticker(sym, t)
  local last = price(sym, t)
  local open = price(sym, t - 86400)
  return fmt('{"currency_pair":"%s","last":"%s","lowest_ask":"%s","lowest_size":"%s",'
    .. '"highest_bid":"%s","highest_size":"%s","change_percentage":"%.2f","base_volume":"%.4f",'
    .. '"quote_volume":"%.2f","high_24h":"%s","low_24h":"%s"}', sym.raw, px(sym, last),
    px(sym, last + sym.tick), fmt("%.4f", 0.01 + hash(sym.h, t, 1)), px(sym, last),
    fmt("%.4f", 0.01 + hash(sym.h, t, 2)), (last / open - 1) * 100, 1000 * (1 + hash(sym.h, t, 3)),
    1000 * (1 + hash(sym.h, t, 3)) * last, px(sym, max(last, open) * 1.01), px(sym, min(last, open) * 0.99))
end

local function funding_rate(sym, t)
  return fmt("%.6f", (hash(sym.h, floor(t / FUNDING_INTERVAL), 9) - 0.3) * 0.0003)
end

local function futures_ticker(sym, t)
  local last = price(sym, t)
  local next_t = (floor(t / FUNDING_INTERVAL) + 1) * FUNDING_INTERVAL
  return fmt('{"contract":"%s","last":"%s","change_percentage":"%.2f","total_size":"%d",'
    .. '"low_24h":"%s","high_24h":"%s","volume_24h":"%d","volume_24h_base":"%.4f",'
    .. '"volume_24h_quote":"%.2f","volume_24h_settle":"%.2f","mark_price":"%s",'
    .. '"funding_rate":"%s","funding_rate_indicative":"%s","index_price":"%s",'
    .. '"lowest_ask":"%s","lowest_size":"%d","highest_bid":"%s","highest_size":"%d"}',
    sym.raw, px(sym, last), (last / price(sym, t - 86400) - 1) * 100,
    floor(1e6 * (1 + hash(sym.h, t, 4))), px(sym, last * 0.98), px(sym, last * 1.02),
    floor(1e5 * (1 + hash(sym.h, t, 5))), 500 * (1 + hash(sym.h, t, 5)),
    500 * (1 + hash(sym.h, t, 5)) * last, 500 * (1 + hash(sym.h, t, 5)) * last,
    px(sym, last * 1.0001), funding_rate(sym, t), funding_rate(sym, next_t),
    px(sym, last * 0.9999), px(sym, last + sym.tick), 1 + floor(500 * hash(sym.h, t, 6)),
    px(sym, last), 1 + floor(500 * hash(sym.h, t, 7)))
end

local function contract(sym, t)
  local last = price(sym, t)
  local next_t = (floor(t / FUNDING_INTERVAL) + 1) * FUNDING_INTERVAL
  return fmt('{"name":"%s","type":"%s","quanto_multiplier":"%s","mark_price":"%s",'
    .. '"index_price":"%s","last_price":"%s","funding_rate":"%s","funding_rate_indicative":"%s",'
    .. '"funding_interval":%d,"funding_next_apply":%d,"funding_offset":0,"in_delisting":false}',
    sym.raw, sym.settle == "btc" and "inverse" or "direct", sym.settle == "btc" and "0" or "0.0001",
    px(sym, last * 1.0001), px(sym, last * 0.9999), px(sym, last), funding_rate(sym, t),
    funding_rate(sym, next_t), FUNDING_INTERVAL, next_t)
end

-- one synthetic candle opening at t (seconds); an open one is cut at now
local function candle(sym, iv, t, now, futures)
  local stop = min(t + iv, now)
  local o, c = price(sym, t), price(sym, stop)
  local hi = max(o, c) * (1 + 0.001 * hash(sym.h, t, iv, 1))
  local lo = min(o, c) * (1 - 0.001 * hash(sym.h, t, iv, 2))
  local vol = max(1, stop - t) * 0.01 * (0.5 + hash(sym.h, t, iv, 3))
  if futures then
    local v = floor(vol * 10000)
    return fmt('{"t":%d,"v":%d,"c":"%s","h":"%s","l":"%s","o":"%s","sum":"%.4f"}',
      t, v, px(sym, c), px(sym, hi), px(sym, lo), px(sym, o), v * 0.0001 * (o + c) / 2)
  end
  return fmt('["%d","%.8f","%s","%s","%s","%s","%.8f","%s"]', t, vol * (o + c) / 2, px(sym, c),
    px(sym, hi), px(sym, lo), px(sym, o), vol, t + iv <= now and "true" or "false")
end

function Mock:_tickers(q, now_s, settle)
  local key = settle and "contract" or "currency_pair"
  local function one(sym)
    local rec = not settle and self._rec.ticker[sym.raw]
    if rec then return rec[2] end
    return settle and futures_ticker(sym, now_s) or spot_ticker(sym, now_s)
  end
  if q[key] then
    local sym, s, body = self:_pair(q, settle)
    if not sym then return s, body end
    local rec = not settle and self._rec.ticker[sym.raw]
    if rec then return 200, rec[1] end
    return 200, "[" .. one(sym) .. "]"
  end
  local out = {}
  for _, sym in ipairs(self._lists[settle or "spot"]) do out[#out + 1] = one(sym) end
  return 200, "[" .. concat(out, ",") .. "]"
end

function Mock:_book(q, now_ms, settle, crossed)
  local sym, s, body = self:_pair(q, settle)
  if not sym then return s, body end
  local limit, st, b2 = int_param(q, "limit", 1, settle and 300 or 1000)
  if st then return st, b2 end
  limit = limit or 10
  local t = now_ms / 1000
  local mid = price(sym, t)
  local bids, asks = {}, {}
  for k = 1, limit do
    -- crossed: the bids start 3 ticks above the asks' start (still descending)
    local bp = mid - (k - (crossed and 3.5 or 0.5)) * sym.tick
    local ap = mid + (k - 0.5) * sym.tick
    local bs, as = hash(sym.h, floor(t), k, 1), hash(sym.h, floor(t), k, 2)
    if settle then
      bids[k] = fmt('{"p":"%s","s":%d}', px(sym, bp), 1 + floor(bs * 1000))
      asks[k] = fmt('{"p":"%s","s":%d}', px(sym, ap), 1 + floor(as * 1000))
    else
      bids[k] = fmt('["%s","%.4f"]', px(sym, bp), 0.0001 + bs * 2)
      asks[k] = fmt('["%s","%.4f"]', px(sym, ap), 0.0001 + as * 2)
    end
  end
  local id = q.with_id == "true" and fmt('"id":%d,', floor(now_ms / 100)) or ""
  local cur = settle and fmt("%.3f", now_ms / 1000) or fmt("%d", now_ms)
  return 200, fmt('{%s"current":%s,"update":%s,"asks":[%s],"bids":[%s]}', id, cur, cur,
    concat(asks, ","), concat(bids, ","))
end

function Mock:_candles(q, now_s, settle)
  local sym, s, body = self:_pair(q, settle)
  if not sym then return s, body end
  local name = q.interval or (settle and "5m" or "30m")
  local iv = INTERVALS[name]
  if not iv then return gate_error(400, "INVALID_PARAM_VALUE", "Invalid interval " .. name) end
  local p = {}
  for _, n in ipairs{ "from", "to", "limit" } do
    local v, st, b2 = int_param(q, n, 0)
    if st then return st, b2 end
    p[n] = v
  end
  if p.limit and (p.from or p.to) then
    return gate_error(400, "INVALID_PARAM_VALUE", "limit conflicts with from and to")
  end
  local most = settle and 2000 or 1000
  local to = min(p.to or now_s, now_s)
  local last = floor(to / iv) * iv
  local first
  if p.from then
    first = ceil(p.from / iv) * iv
  else
    first = last - ((p.limit or 100) - 1) * iv
  end
  if (last - first) / iv + 1 > most then
    return gate_error(400, "INVALID_PARAM_VALUE",
      fmt("Too many points requested: at most %d points in one query", most))
  end
  local rec = not settle and self._rec.candles[sym.raw]
  rec = rec and rec[name] or {}
  local rows = {}
  for t = first, last, iv do rows[#rows + 1] = rec[t] or candle(sym, iv, t, now_s, settle) end
  return 200, "[" .. concat(rows, ",") .. "]"
end

function Mock:_contracts(q, now_s, settle, one)
  if one then
    local sym, s, body = self:_pair({ contract = one }, settle)
    if not sym then return s, body end
    return 200, contract(sym, now_s)
  end
  local p = {}
  for _, n in ipairs{ "limit", "offset" } do
    local v, st, b2 = int_param(q, n, 0, n == "limit" and 1000 or nil)
    if st then return st, b2 end
    p[n] = v
  end
  local offset, limit = p.offset or 0, p.limit or 100
  if offset == 0 and self._rec.contracts[settle] then return 200, self._rec.contracts[settle] end
  local out = {}
  for k = offset + 1, min(offset + limit, #self._lists[settle]) do
    out[#out + 1] = contract(self._lists[settle][k], now_s)
  end
  return 200, "[" .. concat(out, ",") .. "]"
end

function Mock:_funding(q, now_s, settle)
  local sym, s, body = self:_pair(q, settle)
  if not sym then return s, body end
  local p = {}
  for _, n in ipairs{ "from", "to", "limit" } do
    local v, st, b2 = int_param(q, n, 0, n == "limit" and 1000 or nil)
    if st then return st, b2 end
    p[n] = v
  end
  local limit = p.limit or 100
  local last = floor(min(p.to or now_s, now_s) / FUNDING_INTERVAL) * FUNDING_INTERVAL
  local out = {}
  local t = last
  while #out < limit and t >= (p.from or 0) do
    out[#out + 1] = fmt('{"t":%d,"r":"%s"}', t, funding_rate(sym, t))
    t = t - FUNDING_INTERVAL
  end
  return 200, "[" .. concat(out, ",") .. "]"
end

-- route(path) -> handler(self, q, now_ms, fault) or nil
function Mock:_route(path)
  local what = path:match("^/api/v4/spot/([%w_]+)$")
  if what == "tickers" then
    return function(m, q, ms) return m:_tickers(q, floor(ms / 1000)) end
  elseif what == "order_book" then
    return function(m, q, ms, f) return m:_book(q, ms, nil, f and f.crossed) end
  elseif what == "candlesticks" then
    return function(m, q, ms) return m:_candles(q, floor(ms / 1000)) end
  end
  local settle, rest = path:match("^/api/v4/futures/(%w+)/(.+)$")
  if not settle or not self._lists[settle] then return nil end
  if rest == "tickers" then
    return function(m, q, ms) return m:_tickers(q, floor(ms / 1000), settle) end
  elseif rest == "order_book" then
    return function(m, q, ms, f) return m:_book(q, ms, settle, f and f.crossed) end
  elseif rest == "candlesticks" then
    return function(m, q, ms) return m:_candles(q, floor(ms / 1000), settle) end
  elseif rest == "contracts" then
    return function(m, q, ms) return m:_contracts(q, floor(ms / 1000), settle) end
  elseif rest == "funding_rate" then
    return function(m, q, ms) return m:_funding(q, floor(ms / 1000), settle) end
  end
  local one = rest:match("^contracts/([%w_]+)$")
  if one then
    return function(m, q, ms) return m:_contracts(q, floor(ms / 1000), settle, one) end
  end
end

-- The quota: nil to go on, or status, body. Per endpoint (path) and 10 s
-- window; after ban_after 429s in a window the WAF blocks the IP.
function Mock:_quota(path, now)
  if self._banned_until and now >= self._banned_until then self._banned_until = nil end
  if self._banned_until then return 403, WAF_403 end
  local used = (self._used[path] or 0) + 1
  if used <= self._opts.limit then
    self._used[path] = used
    return nil
  end
  if self._refused < self._opts.ban_after then
    self._refused = self._refused + 1
    self._over[path] = true
    return gate_error(429, "TOO_MANY_REQUESTS", "Request Rate limit Exceeded")
  end
  self._banned_until = now + self._opts.ban_seconds * 1000
  return 403, WAF_403
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
  [500] = '{"label":"SERVER_ERROR","message":"Internal server error"}',
  [502] = "<html><head><title>502 Bad Gateway</title></head>"
    .. "<body><center><h1>502 Bad Gateway</h1></center></body></html>",
  [503] = '{"label":"TOO_BUSY","message":"Server is too busy, please try again later"}',
}

function Mock:_handle(req)
  local entry = { method = req.method, path = req.path, query = req.query, headers = req.headers }
  self.requests = self.requests + 1
  self.log[#self.log + 1] = entry
  local fault = self:_take_fault(req.path)
  if fault and fault.delay then sluice.sleep(fault.delay) end
  local now = floor(self._now())
  entry.now = now
  local window = floor(now / 10000)
  if window ~= self._window then
    self._window, self._used, self._over, self._refused = window, {}, {}, 0
  end
  if fault and fault.abort then
    entry.status = "abort"
    req:abort()
    return
  end
  local status, body
  local handler = self:_route(req.path)
  if fault and fault.status then
    status, body = fault.status, fault.body
    if not body then
      if status == 429 then
        body = '{"label":"TOO_MANY_REQUESTS","message":"Request Rate limit Exceeded"}'
      elseif status == 403 then
        body = WAF_403
      else
        body = FAULT_BODIES[status] or fmt('{"label":"SERVER_ERROR","message":"HTTP %d"}', status)
      end
    end
  elseif not handler then
    status, body = 404, '{"label":"NOT_FOUND","message":"Not found"}'
  elseif req.method ~= "GET" and req.method ~= "HEAD" then
    status, body = 405, '{"label":"METHOD_NOT_ALLOWED","message":"Method not allowed"}'
  else
    if not fault then status, body = self:_quota(req.path, now) end
    if not status then status, body = handler(self, req.query or {}, now, fault) end
  end
  if fault and fault.malformed and not fault.status then
    status, body = 200, body:sub(1, max(1, floor(#body / 2)))
  end
  entry.status = status
  local used = self._used[req.path] or 0
  local headers = {
    ["Content-Type"] = status == 403 and not (fault and fault.body) and "text/html" or JSON,
    ["X-Gate-RateLimit-Limit"] = tostring(self._opts.limit),
    ["X-Gate-RateLimit-Requests-Remain"] = tostring(max(0, self._opts.limit - used)),
    ["X-Gate-RateLimit-Reset-Timestamp"] = tostring((self._over[req.path]
      or used >= self._opts.limit) and (window + 1) * 10000 or now),
    ["X-In-Time"] = fmt("%d", now * 1000), ["X-Out-Time"] = fmt("%d", now * 1000 + 250),
  }
  for k, v in pairs(fault and fault.headers or {}) do headers[k] = v end
  return status, body, headers
end

local FAULT = { status = { integer = true, min = 200, max = 599 }, count = "number",
  body = "string", headers = "table", delay = "number", malformed = "boolean",
  abort = "boolean", crossed = "boolean", path = "string" }

function Mock:inject(spec)
  if type(spec) ~= "table" then
    error("sluice.mock.gate.inject: bad argument #1 'fault' (table expected, got "
      .. type(spec) .. ")", 2)
  end
  options.check("sluice.mock.gate.inject", spec, FAULT)
  if not (spec.status or spec.malformed or spec.abort or spec.delay or spec.crossed) then
    error("sluice.mock.gate.inject: a fault needs status, malformed, abort, delay or crossed", 2)
  end
  local f = {}
  for k, v in pairs(spec) do f[k] = v end
  f.left = spec.count or 1
  self._faults[#self._faults + 1] = f
  return self
end

function Mock:reset()
  self.requests, self.log, self._faults = 0, {}, {}
  self._window, self._used, self._over, self._refused, self._banned_until = nil, {}, {}, 0, nil
  return self
end

function Mock:stop()
  return self._srv:close()
end

local OPTIONS = { host = "string", port = "number", seed = "number", now = "function",
  symbols = "table", fixtures = "string", limit = "number", ban_after = "number",
  ban_seconds = "number" }

function _M.start(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("sluice.mock.gate.start: bad argument #1 'opts' (table expected, got " .. type(opts) .. ")", 2)
  end
  opts = options.check("sluice.mock.gate.start", opts, OPTIONS) or {}
  local m = setmetatable({
    _rec = opts.fixtures and load_fixtures(opts.fixtures) or { ticker = {}, candles = {}, contracts = {} },
    _markets = { spot = {} }, _lists = { spot = {} },
    _opts = { limit = opts.limit or 200, ban_after = opts.ban_after or 3,
              ban_seconds = opts.ban_seconds or 120 },
    _now = opts.now or function() return floor(sluice.time() * 1000) end }, Mock)
  for i, u in ipairs(opts.symbols or DEFAULT_SYMBOLS) do
    local base, quote, settle = tostring(u):match("^(%w+)/(%w+):?(%w*)$")
    if not base then
      error("sluice.mock.gate.start: symbols[" .. i .. "] must be a unified symbol (BTC/USDT, "
        .. "BTC/USDT:USDT, BTC/USD:BTC), got " .. tostring(u), 2)
    end
    local market = settle == "" and "spot" or settle:lower()
    local prof = PROFILES[base]
    local h = str_hash(opts.seed or 1, u)
    local tick = prof and prof[2] or 0.0001
    local sym = { raw = base .. "_" .. quote, h = h, settle = settle ~= "" and market or nil,
      price = prof and prof[1] or 1 + 99 * hash(h, 7), tick = tick,
      pfmt = "%." .. max(0, -floor(math.log10(tick) + 0.5)) .. "f" }
    -- scale the synthetic path through a recorded candle's open, so that
    -- the neighbours of a recorded candle do not jump by thousands
    local anchor
    for _, by_t in pairs(market == "spot" and m._rec.candles[sym.raw] or {}) do
      for t, text in pairs(by_t) do anchor = anchor or { t, tonumber(json.decode(text)[6]) } end
    end
    if anchor and anchor[2] then sym.price = sym.price * anchor[2] / price(sym, anchor[1]) end
    m._markets[market] = m._markets[market] or {}
    m._lists[market] = m._lists[market] or {}
    m._markets[market][sym.raw] = sym
    local l = m._lists[market]
    l[#l + 1] = sym
  end
  local srv, err = server.listen{ host = opts.host or "127.0.0.1", port = opts.port or 0 }
  if not srv then error("sluice.mock.gate: " .. err, 2) end
  m._srv, m.port, m.url = srv, srv.port,
    "http://" .. (srv.host:find(":") and "[" .. srv.host .. "]" or srv.host) .. ":" .. srv.port
  m:reset()
  srv:route("*", "/*", function(req) return m:_handle(req) end)
  return m
end

return _M
