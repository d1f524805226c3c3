-- The gate exchange collector: Gate API v4's recorded answers (ccxt's
-- fixtures) parsed field by field against ccxt's parsedResponse, the mock's
-- protocol (recorded bodies byte for byte, errors, quota headers, bans), and
-- the collector's datasets run against the mock through sluice.exchange.
local http = require "sluice.http"
local json = require "sluice.json"
local bignum = require "sluice.bignum"
local testing = require "sluice.testing"
local xstats = require "sluice.exchange.stats"
local gate = require "sluice.exchange.gate"
local mock = require "sluice.mock.gate"

local FIXTURES = "tests/fixtures/ccxt/gate.json"
local NOW = 1710327648000 -- 2024-03-13 11:00:48 UTC: the recorded trade's second

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local DOC = assert(json.decode(read(FIXTURES)))

local function entry(method)
  for _, e in ipairs(DOC.entries) do
    if e.method == method then return e end
  end
  error("no fixture entry " .. method)
end

-- The fixture file without whitespace between tokens: a body served byte
-- for byte is a substring of it.
local function compact(s)
  local out, i = {}, 1
  while i <= #s do
    local c = s:sub(i, i)
    if c == '"' then
      local j = i + 1
      while s:sub(j, j) ~= '"' do j = j + (s:sub(j, j) == "\\" and 2 or 1) end
      out[#out + 1] = s:sub(i, j)
      i = j + 1
    else
      if not c:match("%s") then out[#out + 1] = c end
      i = i + 1
    end
  end
  return table.concat(out)
end
local COMPACT = compact(read(FIXTURES))

-- a decimal text equal in value to ccxt's number
local function same_value(ccxt, text)
  assert.is_string(text)
  assert.equal(0, bignum.cmp(text, ccxt), text .. " vs " .. tostring(ccxt))
end

local mocks = {}
local function start(opts)
  opts = opts or {}
  opts.now = opts.now or function() return NOW end
  local m = mock.start(opts)
  mocks[#mocks + 1] = m
  return m
end

after_each(function()
  for _, m in ipairs(mocks) do m:stop() end
  mocks = {}
end)

local function get(m, path, query)
  return assert(http.get(m.url .. path, { query = query }))
end

describe("gate classify", function()
  local function res(status, body)
    return { status = status, body = body, headers = {},
      json = function(self) return json.decode(self.body) end }
  end
  it("maps Gate's labels to verdicts", function()
    assert.same({ "ignored", "Gate error INVALID_CURRENCY_PAIR: Invalid currency pair XXX_USDT" },
      { gate.classify(nil, res(400, '{"label":"INVALID_CURRENCY_PAIR","message":"Invalid currency pair XXX_USDT"}')) })
    assert.same({ "ignored", "Gate error CONTRACT_NOT_FOUND: Contract not found" },
      { gate.classify(nil, res(400, '{"label":"CONTRACT_NOT_FOUND","message":"Contract not found"}')) })
    assert.same({ "throttled", "Gate error TOO_MANY_REQUESTS: Request Rate limit Exceeded" },
      { gate.classify(nil, res(429, '{"label":"TOO_MANY_REQUESTS","message":"Request Rate limit Exceeded"}')) })
    assert.same({ "banned", "Gate HTTP 403 (IP blocked)" },
      { gate.classify(nil, res(403, "<html>403 Forbidden</html>")) })
    -- the status decides (retried 5xx, a 4xx not); the label explains
    assert.same({ nil, "Gate error SERVER_ERROR: Internal server error" },
      { gate.classify(nil, res(500, '{"label":"SERVER_ERROR","message":"Internal server error"}')) })
    assert.same({ nil, "Gate error INVALID_PARAM_VALUE: bad" },
      { gate.classify(nil, res(400, '{"label":"INVALID_PARAM_VALUE","message":"bad"}')) })
    assert.same({}, { gate.classify(nil, res(200, '[]')) })
  end)
end)

describe("sluice.mock.gate", function()
  it("serves the recorded bodies byte for byte", function()
    local m = start{ fixtures = FIXTURES }
    local r = get(m, "/api/v4/spot/tickers", { currency_pair = "BTC_USDT" })
    assert.equal(200, r.status)
    assert.equal(json.encode(entry("fetchTicker").httpResponse), json.encode(json.decode(r.body)))
    assert.truthy(COMPACT:find('"httpResponse":' .. r.body .. ',', 1, true))
    r = get(m, "/api/v4/spot/candlesticks",
      { currency_pair = "BTC_USDT", interval = "1h", from = 1710327600, to = 1710327600 })
    assert.equal('[["1710327600","992134.61604178","73408.9","73435.8","73236.3","73236.9",'
      .. '"13.53020576","false"]]', r.body)
    assert.truthy(COMPACT:find('"httpResponse":' .. r.body .. ',', 1, true))
    r = get(m, "/api/v4/futures/btc/contracts", { limit = 1000, offset = 0 })
    assert.equal(json.encode(entry("fetchFundingRates").httpResponse), json.encode(json.decode(r.body)))
    assert.truthy(COMPACT:find('"httpResponse":' .. r.body .. ',', 1, true))
  end)

  it("answers Gate's error bodies and quota headers", function()
    local m = start{ limit = 2, ban_after = 1, ban_seconds = 30 }
    local r = get(m, "/api/v4/spot/tickers", { currency_pair = "XXX_USDT" })
    assert.equal(400, r.status)
    assert.equal('{"label":"INVALID_CURRENCY_PAIR","message":"Invalid currency pair XXX_USDT"}', r.body)
    assert.equal("2", r.headers["x-gate-ratelimit-limit"])
    assert.equal("1", r.headers["x-gate-ratelimit-requests-remain"])
    assert.equal("1710327648000", r.headers["x-gate-ratelimit-reset-timestamp"])
    r = get(m, "/api/v4/futures/usdt/order_book", { contract = "NOPE_USDT" })
    assert.equal(400, r.status)
    assert.equal('{"label":"CONTRACT_NOT_FOUND","message":"Contract not found"}', r.body)
    r = get(m, "/api/v4/spot/tickers")
    assert.equal(200, r.status)
    assert.equal("0", r.headers["x-gate-ratelimit-requests-remain"])
    r = get(m, "/api/v4/spot/tickers")
    assert.equal(429, r.status)
    assert.equal('{"label":"TOO_MANY_REQUESTS","message":"Request Rate limit Exceeded"}', r.body)
    assert.equal("1710327650000", r.headers["x-gate-ratelimit-reset-timestamp"])
    r = get(m, "/api/v4/spot/tickers")
    assert.equal(403, r.status)
    -- the block covers every endpoint
    assert.equal(403, get(m, "/api/v4/futures/usdt/tickers").status)
    r = get(m, "/api/v4/spot/candlesticks", { currency_pair = "BTC_USDT", interval = "1m",
      from = 1, to = 2, limit = 3 })
    assert.equal(403, r.status)
  end)

  it("refuses limit with from/to and windows over 1000 spot points", function()
    local m = start()
    local r = get(m, "/api/v4/spot/candlesticks", { currency_pair = "BTC_USDT", interval = "1m",
      from = 1710000000, to = 1710000600, limit = 3 })
    assert.equal(400, r.status)
    assert.equal("INVALID_PARAM_VALUE", json.decode(r.body).label)
    r = get(m, "/api/v4/spot/candlesticks", { currency_pair = "BTC_USDT", interval = "1m",
      from = 1710000000, to = 1710000000 + 1000 * 60 })
    assert.equal(400, r.status)
    r = get(m, "/api/v4/spot/candlesticks", { currency_pair = "BTC_USDT", interval = "1m",
      from = 1710000000, to = 1710000000 + 999 * 60 })
    assert.equal(200, r.status)
    assert.equal(1000, #json.decode(r.body))
  end)
end)

-- --- the collector against the mock ---------------------------------------
-- sluice.testing's server forwards every request to the mock, unchanged
-- both ways (bodies, statuses, Gate's headers), so the tester's store,
-- request log and backfill planning work on the mock's answers.

local PATHS = { "/api/v4/spot/tickers", "/api/v4/spot/order_book", "/api/v4/spot/candlesticks" }
for _, settle in ipairs({ "usdt", "btc" }) do
  for _, what in ipairs({ "tickers", "order_book", "candlesticks", "contracts", "funding_rate" }) do
    PATHS[#PATHS + 1] = "/api/v4/futures/" .. settle .. "/" .. what
  end
end

local function forward(m)
  local rules = {}
  for i, path in ipairs(PATHS) do
    rules[i] = { path = path, respond = function(req)
      local res = assert(http.get(m.url .. req.path, { query = req.query }))
      local h = {}
      for k, v in pairs(res.headers) do
        if k ~= "content-length" and k ~= "date" then h[k] = v end
      end
      return res.status, res.body, h
    end }
  end
  return rules
end

local function with_gate(mock_opts, config, fn, strict)
  local m = start(mock_opts)
  return testing.with({ collector = "gate", config = config, responses = forward(m), strict = strict },
    function(t) return fn(t, m) end)
end

local function count(requests, path)
  local n = 0
  for _, r in ipairs(requests) do if r.path == path then n = n + 1 end end
  return n
end

describe("the gate collector, recorded answers", function()
  it("tickers (spot): the stored row is ccxt's parsed ticker, field by field", function()
    with_gate({ fixtures = FIXTURES }, { symbols = { "BTC/USDT" } }, function(t)
      local ok, err = t.collector:run_once("tickers")
      assert.is_true(ok, err)
      local rows = t:rows("tickers")
      assert.equal(1, #rows)
      local r, p = rows[1], entry("fetchTicker").parsedResponse
      assert.same({ exchange = "gate", market = "spot", symbol = "BTC/USDT", raw_symbol = "BTC_USDT",
        ts = 1710327648000, last = "73373.9", bid = "73364.1", ask = "73364.2", high = "73636.3",
        low = "68629.9", base_volume = "3410.0783503636", quote_volume = "243764368.46418" }, r)
      assert.equal(p.symbol, r.symbol)
      same_value(p.last, r.last)
      same_value(p.close, r.last)
      same_value(p.bid, r.bid)
      same_value(p.ask, r.ask)
      same_value(p.high, r.high)
      same_value(p.low, r.low)
      same_value(p.baseVolume, r.base_volume)
      same_value(p.quoteVolume, r.quote_volume)
      -- bidVolume/askVolume, markPrice, indexPrice null: absent here too
      assert.same({ json.null, json.null, json.null, json.null },
        { p.bidVolume, p.askVolume, p.markPrice, p.indexPrice })
      -- ccxt's oddities (tests/fixtures/README.md): open derived from
      -- change_percentage as a double (Gate sends no open), timestamp null
      -- (ts is Gate's X-Out-Time)
      assert.equal(72140.30085537312, p.open)
      assert.equal(json.null, p.timestamp)
      local q = t:requests()[1]
      assert.same({ "/api/v4/spot/tickers", "BTC_USDT" }, { q.path, q.query.currency_pair })
    end)
  end)

  it("klines (spot 1h): the recorded candle, field by field", function()
    with_gate({ fixtures = FIXTURES }, { symbols = { "BTC/USDT" }, candle = "1h",
        backfill_datasets = { "klines" } }, function(t)
      local rows, run = assert(t:backfill(1710327600, 1710331200))
      assert.equal(1, #run.requests)
      assert.same({ currency_pair = "BTC_USDT", interval = "1h", from = "1710327600", to = "1710327600" },
        run.requests[1].query)
      local k, p = rows.klines[1], entry("fetchOHLCV").parsedResponse[1]
      assert.equal(1, #rows.klines)
      assert.same({ exchange = "gate", market = "spot", symbol = "BTC/USDT", raw_symbol = "BTC_USDT",
        interval = "1h", open_time = 1710327600000, close_time = 1710331199999, open = "73236.9",
        high = "73435.8", low = "73236.3", close = "73408.9", volume = "13.53020576",
        quote_volume = "992134.61604178" }, k)
      assert.equal(p[1], k.open_time)
      same_value(p[2], k.open)
      same_value(p[3], k.high)
      same_value(p[4], k.low)
      same_value(p[5], k.close)
      same_value(p[6], k.volume)
    end)
  end)

  it("funding (inverse): the contract's rates and times, field by field", function()
    with_gate({ fixtures = FIXTURES }, { symbols = { "BTC/USD:BTC" } }, function(t)
      local ok, err = t.collector:run_once("funding")
      assert.is_true(ok, err)
      local rows = t:rows("funding_current")
      assert.equal(1, #rows)
      local f, p = rows[1], entry("fetchFundingRates").parsedResponse["BTC/USD:BTC"]
      assert.same({ exchange = "gate", market = "inverse", symbol = "BTC/USD:BTC", raw_symbol = "BTC_USD",
        ts = 1710327648000, rate = "0.0001", predicted_rate = "0.0001", next_funding_time = 1741363200000,
        mark = "89029.86", index = "89025.82000000001", interval_hours = "8" }, f)
      same_value(p.fundingRate, f.rate)
      same_value(p.nextFundingRate, f.predicted_rate)
      same_value(p.markPrice, f.mark)
      -- ccxt names funding_next_apply fundingTimestamp (its nextFundingTimestamp is null)
      assert.equal(p.fundingTimestamp, f.next_funding_time)
      assert.equal(json.null, p.nextFundingTimestamp)
      assert.equal("8h", p.interval)
      -- ccxt's oddity: index_price "89025.82000000001" as a double is 89025.82
      assert.equal(p.indexPrice, tonumber(f.index))
      assert.equal(1, bignum.cmp(f.index, p.indexPrice))
      local q = t:requests()[1]
      assert.same({ "/api/v4/futures/btc/contracts", "1000", "0" }, { q.path, q.query.limit, q.query.offset })
    end)
  end)
end)

describe("the gate collector, every market against the mock", function()
  it("stores tickers, funding, books and klines of spot, linear and inverse exactly", function()
    with_gate({}, { symbols = { "BTC/USDT", "ETH/USDT", "BTC/USDT:USDT", "BTC/USD:BTC" }, depth = 3 },
        function(t, m)
      for _, d in ipairs({ "tickers", "funding", "order_book" }) do
        local ok, err = t.collector:run_once(d)
        assert.is_true(ok, err)
      end
      -- one request per market for tickers, one per settle for funding
      local reqs = t:requests()
      assert.equal(1, count(reqs, "/api/v4/spot/tickers"))
      assert.equal(1, count(reqs, "/api/v4/futures/usdt/tickers"))
      assert.equal(1, count(reqs, "/api/v4/futures/btc/tickers"))
      assert.equal(1, count(reqs, "/api/v4/futures/usdt/contracts"))
      assert.equal(1, count(reqs, "/api/v4/futures/btc/contracts"))
      -- the linear ticker is the mock's text, field by field
      local raw
      for _, x in ipairs(json.decode(get(m, "/api/v4/futures/usdt/tickers").body)) do
        if x.contract == "BTC_USDT" then raw = x end
      end
      local tk
      for _, r in ipairs(t:rows("tickers")) do if r.symbol == "BTC/USDT:USDT" then tk = r end end
      assert.same({ exchange = "gate", market = "linear", symbol = "BTC/USDT:USDT", raw_symbol = "BTC_USDT",
        ts = 1710327648000, last = raw.last, bid = raw.highest_bid, ask = raw.lowest_ask,
        bid_size = raw.highest_size, ask_size = raw.lowest_size, high = raw.high_24h, low = raw.low_24h,
        base_volume = raw.volume_24h_base, quote_volume = raw.volume_24h_quote, mark = raw.mark_price,
        index = raw.index_price, open_interest = raw.total_size }, tk)
      assert.equal(4, #t:rows("tickers"))
      assert.equal(2, #t:rows("funding_current"))
      -- books: futures levels {p, s} with integer sizes, stored as text
      local books = t:rows("order_books")
      assert.equal(4, #books)
      local lb
      for _, b in ipairs(books) do if b.symbol == "BTC/USDT:USDT" then lb = b end end
      local rb = json.decode(get(m, "/api/v4/futures/usdt/order_book",
        { contract = "BTC_USDT", limit = 3, with_id = "true" }).body)
      assert.equal(1710327648000, lb.ts)
      assert.equal(rb.id, lb.sequence)
      assert.same({ rb.bids[1].p, tostring(rb.bids[1].s) }, lb.bids[1])
      assert.same({ rb.asks[3].p, tostring(rb.asks[3].s) }, lb.asks[3])
      assert.equal(rb.bids[1].p, lb.best_bid)
      assert.equal(rb.asks[1].p, lb.best_ask)
    end)
  end)

  it("polls klines of each market since the last candle (the wall clock)", function()
    local m = start{ now = function() return math.floor(require("sluice").time() * 1000) end }
    testing.with({ collector = "gate", responses = forward(m),
      config = { symbols = { "BTC/USDT", "BTC/USDT:USDT" }, candle = "1m", first_candles = 5 } }, function(t)
      local ok, err = t.collector:run_once("klines")
      assert.is_true(ok, err)
      local rows = t:rows("klines")
      assert.is_true(#rows >= 10 and #rows <= 12, tostring(#rows))
      for _, r in ipairs(rows) do
        assert.equal(r.open_time + 59999, r.close_time)
        assert.equal(0, r.open_time % 60000)
      end
    end)
  end)
end)

describe("the gate collector, errors and limits", function()
  it("skips an unknown symbol once; the others are stored and the breaker counts nothing", function()
    with_gate({}, { symbols = { "BTC/USDT", "DOGE/USDT" } }, function(t)
      -- tickers: one list for both, DOGE_USDT not in it
      assert.is_true((t.collector:run_once("tickers")))
      -- books: Gate answers 400 INVALID_CURRENCY_PAIR for DOGE_USDT, twice
      assert.is_true((t.collector:run_once("order_book")))
      assert.is_true((t.collector:run_once("order_book")))
      assert.equal(1, #t:rows("tickers"))
      assert.equal(1, #t:rows("order_books"))
      assert.equal("BTC/USDT", t:rows("order_books")[1].symbol)
      assert.equal(0, t.collector.breaker:status().failure_count)
      local st = xstats.exchanges({ t.collector })
      assert.same({ { symbol = "DOGE/USDT", reason = "unknown symbol" } }, st.exchanges.gate.skipped_symbols)
    end, false)
  end)

  it("an unknown contract (CONTRACT_NOT_FOUND) is skipped too", function()
    with_gate({}, { symbols = { "BTC/USDT:USDT", "NOPE/USDT:USDT" }, backfill_datasets = { "funding_history" } },
        function(t)
      assert.is_true((t.collector:run_once("order_book")))
      assert.equal(1, #t:rows("order_books"))
      assert.equal(0, t.collector.breaker:status().failure_count)
    end, false)
  end)

  it("retries a 5xx", function()
    with_gate({}, { symbols = { "BTC/USDT" } }, function(t, m)
      m:inject{ status = 500, path = "/api/v4/spot/order_book" }
      assert.is_true((t.collector:run_once("order_book")))
      assert.equal(2, #t:requests())
      assert.same({ 500, 200 }, { t:requests()[1].status, t:requests()[2].status })
      assert.equal(1, #t:rows("order_books"))
    end)
  end)

  it("TOO_MANY_REQUESTS backs the limiter off and is retried", function()
    with_gate({}, { symbols = { "BTC/USDT" } }, function(t, m)
      m:inject{ status = 429, path = "/api/v4/spot/tickers" }
      assert.is_true((t.collector:run_once("tickers")))
      assert.same({ 429, 200 }, { t:requests()[1].status, t:requests()[2].status })
      local ls = t.collector.limiter:stats()
      assert.equal(1, ls.total_violations)
      assert.is_true(ls.current_global_rate < 18)
    end)
  end)

  it("X-Gate-RateLimit-* headers drive the limiter: a used-up quota pauses the endpoint until its reset", function()
    local sluice = require "sluice"
    local m = start{ limit = 1, now = function() return math.floor(sluice.time() * 1000) end }
    testing.with({ collector = "gate", responses = forward(m), config = { symbols = { "BTC/USDT" } } }, function(t)
      assert.is_true((t.collector:run_once("tickers")))
      local ep = t.collector.limiter:stats().endpoints["/api/v4/spot/tickers"]
      assert.equal(0, ep.rate_limit_remaining)
      assert.is_true(ep.in_backoff)
      -- until the mock's 10 s window ends (the limiter's clock: within a second)
      local ends = (math.floor(m.log[1].now / 10000) + 1) * 10
      assert.is_true(math.abs(ep.backoff_until - ends) < 1, tostring(ep.backoff_until) .. " vs " .. ends)
    end)
  end)

  it("a 403 (the WAF's IP block) opens the shared breaker: every dataset stops", function()
    with_gate({ limit = 1, ban_after = 0 }, { symbols = { "BTC/USDT", "BTC/USDT:USDT" } }, function(t)
      local c = t.collector
      assert.is_true((c:run_once("tickers")))      -- one request per endpoint: within quota
      -- a second tickers run exceeds the one-request quota: 403, a ban
      assert.is_false((c:run_once("tickers")))
      assert.equal("open", c.breaker:state())
      local n = #t:requests()
      for _, d in ipairs({ "order_book", "funding", "klines" }) do
        local ok, err = c:run_once(d)
        assert.is_false(ok)
        assert.equal("skipped: circuit breaker gate is open", err)
      end
      assert.equal(n, #t:requests())
    end, false)
  end)

  it("rejects a crossed book with its reason", function()
    with_gate({}, { symbols = { "BTC/USDT" }, depth = 3 }, function(t, m)
      m:inject{ crossed = true, path = "/api/v4/spot/order_book" }
      assert.is_true((t.collector:run_once("order_book")))
      assert.equal(0, #t:rows("order_books"))
      local rej = t.store:rejects("order_books")
      assert.equal(1, #rej)
      assert.matches("^validation failed: crossed book: best bid %d+%.%d >= best ask %d+%.%d$", rej[1].reason)
    end, false)
  end)
end)

describe("the gate collector, backfill", function()
  local TO = 1710288000 -- 2024-03-13 00:00 UTC, before the mock's now
  local FROM = TO - 90 * 86400

  it("90 days of 1h klines (spot and linear) and funding history: each page once, rows exact", function()
    with_gate({}, { symbols = { "BTC/USDT", "BTC/USDT:USDT" }, candle = "1h" }, function(t, m)
      local rows, run = assert(t:backfill(FROM, TO))
      -- spot: 2160 candles in pages of 1000; linear: pages of 2000
      local seen = {}
      for _, r in ipairs(run.requests) do
        assert.is_nil(seen[r.path .. "?" .. r.query_string], r.query_string)
        seen[r.path .. "?" .. r.query_string] = true
      end
      -- windows of 1000 candles aligned to the epoch (backfill_step): 80, 1000,
      -- 1000 and 80 candles, one page each (spot pages hold 1000, linear 2000);
      -- funding history one request per window (< 1000 settlements)
      assert.equal(4, count(run.requests, "/api/v4/spot/candlesticks"))
      assert.equal(4, count(run.requests, "/api/v4/futures/usdt/candlesticks"))
      assert.equal(4, count(run.requests, "/api/v4/futures/usdt/funding_rate"))
      assert.equal(12, #run.requests)
      local by = { spot = {}, linear = {} }
      for _, k in ipairs(rows.klines) do
        local l = by[k.market]
        l[#l + 1] = k
      end
      for _, market in ipairs({ "spot", "linear" }) do
        local l = by[market]
        assert.equal(2160, #l)
        for i, k in ipairs(l) do assert.equal((FROM + (i - 1) * 3600) * 1000, k.open_time) end
      end
      -- rows exact: a page asked of the mock directly
      local raw = json.decode(get(m, "/api/v4/spot/candlesticks", { currency_pair = "BTC_USDT",
        interval = "1h", from = FROM + 1000 * 3600, to = FROM + 1000 * 3600 }).body)[1]
      local k = by.spot[1001]
      assert.same({ raw[6], raw[4], raw[5], raw[3], raw[7], raw[2] },
        { k.open, k.high, k.low, k.close, k.volume, k.quote_volume })
      local fr = json.decode(get(m, "/api/v4/futures/usdt/candlesticks", { contract = "BTC_USDT",
        interval = "1h", from = FROM + 2001 * 3600, to = FROM + 2001 * 3600 }).body)[1]
      k = by.linear[2002]
      assert.same({ fr.o, fr.h, fr.l, fr.c, tostring(fr.v), fr.sum },
        { k.open, k.high, k.low, k.close, k.volume, k.quote_volume })
      -- funding: one settlement every 8 h, oldest first in the store
      assert.equal(270, #rows.funding_rates)
      local hist = json.decode(get(m, "/api/v4/futures/usdt/funding_rate", { contract = "BTC_USDT",
        from = FROM, to = FROM, limit = 1 }).body)[1]
      assert.same({ FROM * 1000, hist.r }, { rows.funding_rates[1].funding_time, rows.funding_rates[1].rate })
      for i, f in ipairs(rows.funding_rates) do
        assert.equal((FROM + (i - 1) * 28800) * 1000, f.funding_time)
      end
      -- covered: a second backfill asks nothing
      local _, again = assert(t:backfill(FROM, TO))
      assert.equal(0, #again.requests)
    end)
  end)

  it("a day of 1m spot klines: two pages (1000 + 440) of one window", function()
    with_gate({}, { symbols = { "BTC/USDT" }, backfill_datasets = { "klines" } }, function(t)
      local rows, run = assert(t:backfill(TO - 86400, TO))
      assert.equal(2, #run.requests)
      assert.same({ tostring(TO - 86400), tostring(TO - 86400 + 999 * 60) },
        { run.requests[1].query.from, run.requests[1].query.to })
      assert.same({ tostring(TO - 86400 + 1000 * 60), tostring(TO - 60) },
        { run.requests[2].query.from, run.requests[2].query.to })
      assert.equal(1440, #rows.klines)
      for i, k in ipairs(rows.klines) do assert.equal((TO - 86400 + (i - 1) * 60) * 1000, k.open_time) end
    end)
  end)

  it("funding history alone: windows of a day (1m candles), one request each", function()
    with_gate({}, { symbols = { "BTC/USD:BTC" }, backfill_datasets = { "funding_history" } }, function(t)
      local rows, run = assert(t:backfill(FROM, TO))
      assert.equal(270, #rows.funding_rates)
      assert.equal(90, #run.requests)
      assert.equal("inverse", rows.funding_rates[1].market)
    end)
  end)
end)
