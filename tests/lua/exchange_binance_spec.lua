-- sluice.exchange.binance: the recorded responses of
-- tests/fixtures/ccxt/binance.json served byte for byte by sluice.mock.binance
-- and parsed by the adapter, compared with ccxt's parsedResponse field by
-- field; Binance's error bodies as verdicts; the mock's futures APIs, weights
-- and funding history pages.
local http = require "sluice.http"
local json = require "sluice.json"
local mock = require "sluice.mock.binance"
local binance = require "sluice.exchange.binance"

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
    local t = binance.parse.ticker("spot", assert(json.decode(e.body)))
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
      local t = binance.parse.ticker("spot", raw)
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
        local r = binance.parse.kline(market, "1h", k)
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
    local k = binance.parse.kline("spot", "1h", assert(json.decode(entry("Spot OHLCV with since and limit").body))[1])
    assert.same({ interval = "1h", open_time = 1706630400000, close_time = 1706633999999,
      open = "43519.34000000", high = "43936.00000000", low = "43171.00000000",
      close = "43488.71000000", volume = "20.55495000", quote_volume = "891428.42858070",
      trades = 3743, taker_buy_base_volume = "10.91428000",
      taker_buy_quote_volume = "473782.95739920" }, k)
    -- inverse: the base volume is column 8, Binance's "volume" counts contracts
    local inv = binance.parse.kline("inverse", "1d", assert(json.decode(entry("inverse index price").body))[3])
    assert.equal("0", inv.volume)
    assert.is_nil(inv.quote_volume)
    assert.equal(31378, inv.trades)
  end)

  it("parses the recorded books as ccxt does", function()
    for desc, market in pairs{ ["spot orderbook"] = "spot", ["swap orderbook"] = "linear" } do
      local e = entry(desc)
      local b = assert(binance.parse.book(market, assert(json.decode(e.body)), 1234))
      local p = e.parsedResponse
      assert.equal(p.nonce, b.sequence, desc)
      assert.equal(p.timestamp == json.null and 1234 or p.timestamp, b.ts, desc)
      for _, side in ipairs{ "bids", "asks" } do
        assert.equal(#p[side], #b[side])
        for i, l in ipairs(b[side]) do
          same_number(l[1], p[side][i][1], desc)
          same_number(l[2], p[side][i][2], desc)
        end
      end
    end
    local b = binance.parse.book("linear", assert(json.decode(entry("swap orderbook").body)))
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
