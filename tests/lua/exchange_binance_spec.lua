-- sluice.exchange.binance: the recorded responses of
-- tests/fixtures/ccxt/binance.json served byte for byte by sluice.mock.binance
-- and parsed by the adapter, compared with ccxt's parsedResponse field by
-- field; Binance's error bodies as verdicts; the mock's futures APIs, weights
-- and funding history pages.
local sluice = require "sluice"
local http = require "sluice.http"
local json = require "sluice.json"
local mock = require "sluice.mock.binance"
local binance = require "sluice.exchange.binance"
local parse = require "sluice.exchange.binance.parse"
local testing = require "sluice.testing"
local wait_for = require("support.wait").wait_for
local xstats = require "sluice.exchange.stats"

local FIXTURES = "tests/fixtures/ccxt/binance.json"
local NOW = 1706641200000 + 1234 -- 2024-01-30 19:00:01.234 UTC

local function fixture()
  local f = assert(io.open(FIXTURES, "rb"))
  local text = f:read("*a")
  f:close()
  local doc = assert(json.decode(text))
  local bodies = mock.raw_bodies(text)
  for i, e in ipairs(doc.entries) do e.body = bodies[i] end
  return doc.entries
end

local function entry(description)
  for _, e in ipairs(fixture()) do
    if e.description == description then return e end
  end
  error("no fixture entry " .. description)
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
  local res = assert(http.get(m.url .. path, { query = query }))
  return res:json(), res
end

-- A decimal text equal to ccxt's float (ccxt parses Binance's text with
-- parseFloat: the double nearest the text). nil and JSON null agree.
local function same_number(text, parsed, what)
  if parsed == nil or parsed == json.null then
    assert.is_nil(text, what)
    return
  end
  assert.is_string(text, what)
  assert.equal(parsed, tonumber(text), what)
end

describe("binance fixtures through the mock and the adapter", function()
  it("serves every recorded body byte for byte, compact, keys in recorded order", function()
    local e = entry("public spot ticker")
    assert.equal('{"symbol":"BTCUSDT","priceChange":"1188.75000000","priceChangePercent":"1.647",',
      e.body:sub(1, 79))
    local m = start{ fixtures = FIXTURES }
    local _, res = get(m, "/api/v3/ticker/24hr", { symbol = "BTCUSDT" })
    assert.equal(e.body, res.body)
    _, res = get(m, "/api/v3/ticker/24hr", { symbols = '["BTCUSDT","ETHUSDT"]' })
    assert.equal(entry("rolling tickers").body, res.body)
    _, res = get(m, "/api/v3/depth", { symbol = "BTCUSDT", limit = 2 })
    assert.equal(entry("spot orderbook").body, res.body)
    _, res = get(m, "/fapi/v1/depth", { symbol = "BTCUSDT", limit = 5 })
    assert.equal(entry("swap orderbook").body, res.body)
    _, res = get(m, "/api/v3/klines", { symbol = "BTCUSDT", interval = "1h",
      startTime = 1706628191000, limit = 3 })
    assert.equal(entry("Spot OHLCV with since and limit").body, res.body)
    m = start{ fixtures = FIXTURES, now = function() return 1712800000000 end } -- April 2024
    _, res = get(m, "/fapi/v1/klines", { symbol = "BTCUSDT", interval = "1m",
      startTime = 1712738460000, limit = 3 })
    assert.equal(entry("swap ohlcv").body, res.body)
    _, res = get(m, "/dapi/v1/klines", { symbol = "BTCUSD_PERP", interval = "1d",
      startTime = 1712534400000, endTime = 1712707200000 })
    assert.equal(entry("inverse index price").body, res.body)
  end)

  it("parses the spot ticker as ccxt does", function()
    local e = entry("public spot ticker")
    local t = parse.ticker("spot", assert(json.decode(e.body)))
    local p = e.parsedResponse
    assert.equal(p.timestamp, t.ts)
    assert.equal(1710328245391, t.ts)
    local pairs_ = { last = "last", bid = "bid", ask = "ask", bid_size = "bidVolume",
      ask_size = "askVolume", open = "open", high = "high", low = "low",
      base_volume = "baseVolume", quote_volume = "quoteVolume", mark = "markPrice",
      index = "indexPrice" }
    for ours, theirs in pairs(pairs_) do same_number(t[ours], p[theirs], ours) end
    -- exact text, not the float
    assert.equal("5167027510.68728707", t.quote_volume)
    assert.equal("73369.84000000", t.last)
    assert.is_nil(t.open_interest)
  end)

  it("parses the rolling tickers as ccxt does (no bid/ask in that answer)", function()
    local e = entry("rolling tickers")
    local list = assert(json.decode(e.body))
    assert.equal(2, #list)
    for _, raw in ipairs(list) do
      local t = parse.ticker("spot", raw)
      local p = e.parsedResponse[raw.symbol == "BTCUSDT" and "BTC/USDT" or "ETH/USDT"]
      assert.equal(p.timestamp, t.ts)
      for ours, theirs in pairs{ last = "last", bid = "bid", ask = "ask", open = "open",
          high = "high", low = "low", base_volume = "baseVolume", quote_volume = "quoteVolume" } do
        same_number(t[ours], p[theirs], ours)
      end
    end
  end)

  it("parses the recorded klines of spot, linear and inverse as ccxt does", function()
    for desc, market in pairs{ ["Spot OHLCV with since and limit"] = "spot",
        ["swap ohlcv"] = "linear", ["inverse index price"] = "inverse" } do
      local e = entry(desc)
      local raw = assert(json.decode(e.body))
      assert.equal(#e.parsedResponse, #raw)
      for i, k in ipairs(raw) do
        local r = parse.kline(market, "1h", k)
        local p = e.parsedResponse[i]
        assert.equal(p[1], r.open_time, desc)
        assert.equal(k[7], r.close_time, desc)
        same_number(r.open, p[2], desc)
        same_number(r.high, p[3], desc)
        same_number(r.low, p[4], desc)
        same_number(r.close, p[5], desc)
        same_number(r.volume, p[6], desc)
        assert.equal(k[9], r.trades)
      end
    end
    local k = parse.kline("spot", "1h", assert(json.decode(entry("Spot OHLCV with since and limit").body))[1])
    assert.same({ interval = "1h", open_time = 1706630400000, close_time = 1706633999999,
      open = "43519.34000000", high = "43936.00000000", low = "43171.00000000",
      close = "43488.71000000", volume = "20.55495000", quote_volume = "891428.42858070",
      trades = 3743, taker_buy_base_volume = "10.91428000",
      taker_buy_quote_volume = "473782.95739920" }, k)
    -- inverse: the base volume is column 8, Binance's "volume" counts contracts
    local inv = parse.kline("inverse", "1d", assert(json.decode(entry("inverse index price").body))[3])
    assert.equal("0", inv.volume)
    assert.is_nil(inv.quote_volume)
    assert.equal(31378, inv.trades)
  end)

  it("parses the recorded books as ccxt does", function()
    for desc, market in pairs{ ["spot orderbook"] = "spot", ["swap orderbook"] = "linear" } do
      local e = entry(desc)
      local b = assert(parse.book(market, assert(json.decode(e.body))))
      local p = e.parsedResponse
      assert.equal(p.nonce, b.sequence, desc)
      -- a spot book has no time (ccxt: null; the kit stamps its arrival)
      assert.equal(p.timestamp ~= json.null and p.timestamp or nil, b.ts, desc)
      for _, side in ipairs{ "bids", "asks" } do
        assert.equal(#p[side], #b[side])
        for i, l in ipairs(b[side]) do
          same_number(l[1], p[side][i][1], desc)
          same_number(l[2], p[side][i][2], desc)
        end
      end
    end
    local b = parse.book("linear", assert(json.decode(entry("swap orderbook").body)))
    assert.same({ "42651.10", "470.672" }, b.bids[1])
    assert.equal(35263532345, b.sequence)
    assert.equal(1706803917258, b.ts)
  end)
end)

describe("binance verdicts", function()
  local function res(status, body)
    return { status = status, json = function() return json.decode(body) end }
  end

  it("maps Binance's error bodies and statuses", function()
    assert.same({ "ignored", "Binance error -1121: Invalid symbol." },
      { binance.classify(nil, res(400, '{"code":-1121,"msg":"Invalid symbol."}')) })
    assert.same({ "throttled", "Binance error -1003: Too much request weight used." },
      { binance.classify(nil, res(429, '{"code":-1003,"msg":"Too much request weight used."}')) })
    assert.same({ "banned", "Binance error -1003: IP banned until 1." },
      { binance.classify(nil, res(418, '{"code":-1003,"msg":"IP banned until 1."}')) })
    assert.same({ "banned", "HTTP 403 (WAF limit)" }, { binance.classify(nil, res(403, "<html></html>")) })
    assert.same({ "failure", "Binance error -1000: odd" },
      { binance.classify(nil, res(200, '{"code":-1000,"msg":"odd"}')) })
    assert.same({ nil, "Binance error -1000: An unknown error occurred." },
      { binance.classify(nil, res(500, '{"code":-1000,"msg":"An unknown error occurred."}')) })
    assert.same({ nil, nil }, { binance.classify(nil, res(200, '[]')) })
  end)

  it("names raw symbols per market", function()
    assert.equal("BTCUSDT", binance.raw_symbol("spot", "BTC/USDT"))
    assert.equal("BTCUSDT", binance.raw_symbol("linear", "BTC/USDT:USDT"))
    assert.equal("BTCUSD_PERP", binance.raw_symbol("inverse", "BTC/USD:BTC"))
    assert.same({ nil, "BTC/USDT:USDT is not a Binance spot perpetual symbol" },
      { binance.raw_symbol("spot", "BTC/USDT:USDT") })
  end)
end)

describe("sluice.mock.binance futures", function()
  it("answers fapi and dapi tickers, books, premium index as Binance does", function()
    local m = start()
    local t = get(m, "/fapi/v1/ticker/24hr", { symbol = "BTCUSDT" })
    assert.equal("BTCUSDT", t.symbol)
    assert.equal(NOW, t.closeTime)
    local list = get(m, "/dapi/v1/ticker/24hr", { symbol = "BTCUSD_PERP" })
    assert.equal(1, #list)
    assert.equal("BTCUSD", list[1].pair)
    local all, res = get(m, "/fapi/v1/premiumIndex")
    assert.equal(4, #all)
    assert.equal("11", res.headers["x-mbx-used-weight-1m"]) -- ticker 1 + every premium 10
    local p = get(m, "/fapi/v1/premiumIndex", { symbol = "ETHUSDT" })
    assert.equal(1706659200000, p.nextFundingTime) -- the next 8-hour mark
    local d = get(m, "/fapi/v1/depth", { symbol = "ETHUSDT", limit = 10 })
    assert.equal(10, #d.bids)
    local body, r = get(m, "/fapi/v1/depth", { symbol = "ETHUSDT", limit = 7 })
    assert.equal(400, r.status)
    assert.equal(-1100, body.code)
    body, r = get(m, "/dapi/v1/premiumIndex", { symbol = "DOGEUSD_PERP" })
    assert.same({ 400, -1121, "Invalid symbol." }, { r.status, body.code, body.msg })
    -- weights are per API: spot's count is its own
    assert.equal(0, m.weights.api)
    -- ticker, premiumIndex all and one, depth 10, the refused depth (as 500)
    assert.equal(1 + 10 + 1 + 2 + 10, m.weights.fapi)
    assert.equal(1 + 10, m.weights.dapi)
  end)
end)

-- --- the shipped collector (sluice.exchange + the adapter) against the mock ---

-- sluice.testing rules that hand every request to mock m (its answer,
-- weights and faults), after `first` (rules of the spec's own).
local PATHS = { "/api/v3/ticker/24hr", "/api/v3/depth", "/api/v3/klines" }
for _, f in ipairs{ "fapi", "dapi" } do
  for _, e in ipairs{ "ticker/24hr", "ticker/bookTicker", "premiumIndex", "depth", "klines",
                      "fundingRate" } do
    PATHS[#PATHS + 1] = "/" .. f .. "/v1/" .. e
  end
end
local function routes(m, first)
  local out = {}
  for _, r in ipairs(first or {}) do out[#out + 1] = r end
  for _, p in ipairs(PATHS) do
    out[#out + 1] = { path = p, respond = function(req) return m:answer(req) end }
  end
  return out
end

local FAST_RETRY = { strategy = "fixed", base_delay = 0.01, max_attempts = 2, budget = false }

local function tester(m, config, first, strict)
  config.retry = config.retry or FAST_RETRY
  return testing.new{ collector = "binance", config = config, responses = routes(m, first),
                      strict = strict }
end

local function count(requests, path)
  local n = 0
  for _, r in ipairs(requests) do if r.path == path then n = n + 1 end end
  return n
end

describe("collectors.binance: the recordings through the collector", function()
  local TICKER_FIELDS = { last = "last", bid = "bid", ask = "ask", bid_size = "bidVolume",
    ask_size = "askVolume", open = "open", high = "high", low = "low",
    base_volume = "baseVolume", quote_volume = "quoteVolume", mark = "markPrice",
    index = "indexPrice" }

  it("stores the spot ticker and the rolling tickers as ccxt parses them", function()
    for _, case in ipairs{ { "public spot ticker", { "BTC/USDT" } },
                           { "rolling tickers", { "BTC/USDT", "ETH/USDT" } } } do
      local e = entry(case[1])
      local m = start{ fixtures = FIXTURES }
      local t = tester(m, { symbols = case[2] })
      assert(t.collector:run_once("tickers"))
      local rows = t:rows("tickers")
      assert.equal(#case[2], #rows)
      assert.equal(e.body, m.log[1] and assert(http.get(m.url .. m.log[1].path,
        { query = m.log[1].query })).body)
      for _, r in ipairs(rows) do
        local p = e.parsedResponse.symbol and e.parsedResponse or e.parsedResponse[r.symbol]
        assert.equal(p.symbol, r.symbol)
        assert.equal(r.symbol:gsub("/", ""), r.raw_symbol)
        assert.same({ "binance", "spot" }, { r.exchange, r.market })
        assert.equal(p.timestamp, r.ts)
        for ours, theirs in pairs(TICKER_FIELDS) do same_number(r[ours], p[theirs], case[1] .. " " .. ours) end
        assert.is_nil(r.open_interest)
      end
      t:close()
    end
    -- exact text as Binance sent it
    local m = start{ fixtures = FIXTURES }
    local t = tester(m, { symbols = { "BTC/USDT" } })
    assert(t.collector:run_once("tickers"))
    local r = t.store:query("SELECT last, quote_volume, base_volume FROM tickers")[1]
    assert.same({ last = "73369.84000000", quote_volume = "5167027510.68728707",
      base_volume = "72140.34862800" }, r)
    t:close()
  end)

  it("stores the recorded books level for level", function()
    for _, case in ipairs{ { "spot orderbook", "BTC/USDT", 2 }, { "swap orderbook", "BTC/USDT:USDT", 5 } } do
      local e = entry(case[1])
      local m = start{ fixtures = FIXTURES }
      local t = tester(m, { symbols = { case[2] }, depth = case[3] })
      local before = os.time() * 1000
      assert(t.collector:run_once("order_book"))
      local b = t:rows("order_books")[1]
      local p = e.parsedResponse
      assert.equal(p.nonce, b.sequence)
      if p.timestamp == json.null then
        assert.is_true(b.ts >= before and b.ts <= os.time() * 1000 + 1000) -- its arrival
      else
        assert.equal(p.timestamp, b.ts)
      end
      local bids, asks = b.bids, b.asks
      for side, list in pairs{ bids = bids, asks = asks } do
        assert.equal(#p[side], #list)
        for i, l in ipairs(list) do
          same_number(l[1], p[side][i][1], case[1])
          same_number(l[2], p[side][i][2], case[1])
        end
      end
      assert.equal(bids[1][1], b.best_bid)
      assert.equal(asks[1][1], b.best_ask)
      t:close()
    end
  end)

  it("stores the recorded klines of spot, linear and inverse as ccxt parses them", function()
    local cases = {
      { "Spot OHLCV with since and limit", "BTC/USDT", "spot", "BTCUSDT", "1h", "/api/v3/klines" },
      { "swap ohlcv", "BTC/USDT:USDT", "linear", "BTCUSDT", "1m", "/fapi/v1/klines" },
      { "inverse index price", "BTC/USD:BTC", "inverse", "BTCUSD_PERP", "1d", "/dapi/v1/klines" },
    }
    for _, case in ipairs(cases) do
      local e = entry(case[1])
      local first = e.parsedResponse[1][1]
      local m = start{ fixtures = FIXTURES }
      -- the recorded body, byte for byte, answers the poll that resumes at
      -- the first recorded candle
      local t = tester(m, { symbols = { case[2] }, candle = case[5] },
        { { path = case[6], query = { symbol = case[4], interval = case[5], startTime = first },
            body = e.body } })
      assert(t.store:upsert("klines", { { exchange = "binance", market = case[3], symbol = case[2],
        raw_symbol = case[4], interval = case[5], open_time = first, open = "1", high = "1",
        low = "1", close = "1" } }))
      assert(t.collector:run_once("klines"))
      local rows = t:rows("klines")
      assert.equal(#e.parsedResponse, #rows, case[1])
      assert.equal(1, #t:requests())
      for i, r in ipairs(rows) do
        local p = e.parsedResponse[i]
        assert.equal(p[1], r.open_time)
        same_number(r.open, p[2], case[1])
        same_number(r.high, p[3], case[1])
        same_number(r.low, p[4], case[1])
        same_number(r.close, p[5], case[1])
        same_number(r.volume, p[6], case[1])
        assert.equal(case[5], r.interval)
      end
      t:close()
    end
  end)
end)

describe("collectors.binance: errors, limits and bans", function()
  it("skips an unknown symbol once and stores the others", function()
    local m = start()
    local t = tester(m, { symbols = { "BTC/USDT", "DOGE/USDT", "BTC/USDT:USDT", "XRP/USDT:USDT" } })
    for _ = 1, 2 do
      assert(t.collector:run_once("tickers"))
      local ok, err = t.collector:run_once("order_book")
      assert.is_true(ok, err)
    end
    local function symbols_of(rows)
      local out, seen = {}, {}
      for _, r in ipairs(rows) do
        if not seen[r.symbol] then out[#out + 1], seen[r.symbol] = r.symbol, true end
      end
      table.sort(out)
      return out
    end
    assert.same({ "BTC/USDT", "BTC/USDT:USDT" }, symbols_of(t:rows("tickers")))
    assert.same({ "BTC/USDT", "BTC/USDT:USDT" }, symbols_of(t:rows("order_books")))
    assert.equal(0, t.collector.breaker:status().failure_count)
    local st = xstats.exchanges({ t.collector })
    local skipped = st.exchanges.binance.skipped_symbols
    table.sort(skipped, function(a, b) return a.symbol < b.symbol end)
    assert.same({ { symbol = "DOGE/USDT", reason = "Invalid symbol." },
                  { symbol = "XRP/USDT:USDT", reason = "Invalid symbol." } }, skipped)
    t:close()
  end)

  it("leaves a symbol known unknown out of the spot tickers' batch", function()
    local m = start()
    local t = tester(m, { symbols = { "BTC/USDT", "DOGE/USDT", "ETH/USDT" } })
    assert(t.collector:run_once("tickers"))
    -- the batch failed on DOGEUSDT (-1121), then one request per symbol
    assert.equal(4, count(t:requests(), "/api/v3/ticker/24hr"))
    local n = #t:requests()
    assert(t.collector:run_once("tickers"))
    local again = {}
    for i = n + 1, #t:requests() do again[#again + 1] = t:requests()[i] end
    assert.equal(1, #again)
    assert.equal('["BTCUSDT","ETHUSDT"]', again[1].query.symbols)
    local got = {}
    for _, r in ipairs(t:rows("tickers")) do got[r.symbol] = true end
    assert.same({ ["BTC/USDT"] = true, ["ETH/USDT"] = true }, got)
    t:close()
  end)

  it("retries a 5xx and stores the answer", function()
    local m = start()
    m:inject{ status = 500, path = "/api/v3/ticker/24hr" }
    local t = tester(m, { symbols = { "BTC/USDT" } })
    assert(t.collector:run_once("tickers"))
    assert.equal(1, #t:rows("tickers"))
    assert.same({ 500, 200 }, { m.log[1].status, m.log[2].status })
    t:close()
  end)

  it("feeds X-MBX-USED-WEIGHT-1M to the limiter", function()
    local m = start()
    local t = tester(m, { symbols = { "BTC/USDT:USDT" } })
    assert(t.collector:run_once("funding"))
    local lim = t.collector.limiter
    local waited = lim:wait("/probe", 1, { max_wait = 1 })
    assert.is_true(waited >= 0 and waited <= 1)
    -- the API says this minute's weight is spent: the pool waits for the
    -- next minute of the response's Date, so the two 1 s waits below time
    -- out only with more than that left of the wall clock's minute (in the
    -- minute's last second or two they saw it reopen)
    wait_for("6 s left in this minute", function() return 60 - sluice.time() % 60 > 6 end, 8, 0.05)
    m:inject{ status = 200, body = "[]", headers = { ["X-MBX-USED-WEIGHT-1M"] = "2400" },
              path = "/fapi/v1/premiumIndex" }
    assert(t.collector:run_once("funding"))
    local ok, why, left = lim:wait("/probe", 1, { max_wait = 1 })
    assert.same({ nil, "timeout" }, { ok, why })
    assert.is_true(left > 1 and left <= 60)
    -- the USDⓈ-M figure closes USDⓈ-M's pool only: spot and COIN-M have quotas of their own
    local function only(pool)
      local p = { spot_weight = 0, usdm_weight = 0, coinm_weight = 0 }
      p[pool] = 1
      return { max_wait = 1, pools = p }
    end
    local ok2, why2 = lim:wait("/probe", 1, only("usdm_weight"))
    assert.same({ nil, "timeout" }, { ok2, why2 })
    local w1 = lim:wait("/probe", 1, only("spot_weight"))
    assert.is_true(w1 ~= nil and w1 <= 1, tostring(w1))
    local w2 = lim:wait("/probe", 1, only("coinm_weight"))
    assert.is_true(w2 ~= nil and w2 <= 1, tostring(w2))
    t:close()
  end)

  it("backs off on a 429 (throttled)", function()
    local m = start()
    m:inject{ status = 429, retry_after = 1, path = "/api/v3/depth" }
    local t = tester(m, { symbols = { "BTC/USDT" }, retry = { strategy = "fixed", base_delay = 0.01,
      max_attempts = 1, budget = false } })
    local ok = t.collector:run_once("order_book")
    assert.is_false(ok)
    assert.equal(1, t.collector.limiter:stats().total_violations)
    t:close()
  end)

  it("stops every dataset on a 418 ban", function()
    local m = start()
    m:inject{ status = 418, retry_after = 120, path = "/fapi/v1/ticker/24hr" }
    local t = tester(m, { symbols = { "BTC/USDT", "BTC/USDT:USDT" } })
    local c = t.collector
    c:run_once("tickers") -- spot's request went first and was answered
    assert.equal("open", c.breaker:state())
    local n = m.requests
    -- no request is sent until the ban ends: the open breaker refuses at
    -- once, before any wait in the limiter (banned for the same 120 s)
    local t0 = sluice.now()
    for _, d in ipairs{ "order_book", "funding", "klines", "tickers" } do
      local ok, err = c:run_once(d)
      assert.is_false(ok)
      assert.equal("skipped: circuit breaker binance is open", err)
    end
    assert.is_true(sluice.now() - t0 < 1)
    assert.equal(n, m.requests)
    assert.equal(4, c:counters().collections_skipped)
    t:close()
  end)

  it("rejects a crossed book with its reason", function()
    local m = start()
    m:inject{ status = 200, path = "/fapi/v1/depth",
      body = '{"lastUpdateId":7,"E":1706641200000,"T":1706641200000,"bids":[["101.0","1"]],"asks":[["100.5","2"]]}' }
    local t = tester(m, { symbols = { "BTC/USDT:USDT" } }, nil, false)
    assert(t.collector:run_once("order_book"))
    assert.equal(0, #t:rows("order_books"))
    local rej = t.store:rejects("order_books")
    assert.equal(1, #rej)
    assert.equal("validation failed: crossed book: best bid 101.0 >= best ask 100.5", rej[1].reason)
    t:close()
  end)
end)

describe("collectors.binance: 90 days of backfill", function()
  it("fetches each page of klines and funding history once, exactly", function()
    local m = start()
    local t = tester(m, { symbols = { "BTC/USDT:USDT" }, candle = "1h" })
    local to = math.floor(NOW / 3600000) * 3600 -- s, on the hour
    local from = to - 90 * 86400
    local rows, run = assert(t:backfill(from, to))
    assert.equal(90 * 24, #rows.klines)
    assert.equal(90 * 3, #rows.funding_rates)
    -- each window: one klines page (at most 1000 candles) and one funding page
    local windows = run.status.windows_done
    local seen = {}
    for _, r in ipairs(run.requests) do
      assert.is_nil(seen[r.query_string], r.query_string)
      seen[r.query_string] = true
    end
    assert.equal(windows, count(run.requests, "/fapi/v1/klines"))
    assert.equal(windows, count(run.requests, "/fapi/v1/fundingRate"))
    assert.equal(2 * windows, #run.requests)
    -- exact: what the mock answers for the same range, text for text
    local direct = {}
    for p = 0, 2 do
      local page = get(m, "/fapi/v1/klines", { symbol = "BTCUSDT", interval = "1h", limit = 1000,
        startTime = from * 1000 + p * 1000 * 3600000, endTime = to * 1000 - 1 })
      for _, k in ipairs(page) do direct[#direct + 1] = k end
    end
    assert.equal(#rows.klines, #direct)
    for i, k in ipairs(rows.klines) do
      assert.same({ from * 1000 + (i - 1) * 3600000, direct[i][2], direct[i][5], direct[i][6], direct[i][8] },
        { k.open_time, k.open, k.close, k.volume, k.quote_volume })
    end
    local fr = get(m, "/fapi/v1/fundingRate", { symbol = "BTCUSDT", limit = 1000,
      startTime = from * 1000, endTime = to * 1000 - 1 })
    assert.equal(270, #fr)
    local H8 = 8 * 3600000
    for i, f in ipairs(rows.funding_rates) do
      assert.same({ math.ceil(from * 1000 / H8) * H8 + (i - 1) * H8, fr[i].fundingRate, fr[i].markPrice },
        { f.funding_time, f.rate, f.mark })
    end
    -- again: nothing to fetch
    local _, again = assert(t:backfill(from, to))
    assert.equal(0, #again.requests)
    t:close()
  end)
end)
