-- examples/ticker_collector.lua on sluice.testing: the example spec of a
-- custom collector, with the prices Binance sent in a recorded ticker
-- response (tests/fixtures/ccxt/binance.json, "rolling tickers").
local sluice = require "sluice"
local cjson = require "cjson"
local json = require "sluice.json"
local log = require "sluice.log"
local testing = require "sluice.testing"

local COLLECTOR = "examples/ticker_collector.lua"

-- The recorded 24 h tickers of BTCUSDT and ETHUSDT (one moment) and what
-- ccxt parsed from them.
local function recorded()
  local f = assert(io.open("tests/fixtures/ccxt/binance.json"))
  local doc = cjson.decode(f:read("*a"))
  f:close()
  for _, e in ipairs(doc.entries) do
    if e.method == "fetchTickers" and e.description == "rolling tickers" then return e end
  end
  error("fixture not found")
end

-- /api/v3/ticker/price answers {"symbol", "price"}: the last price, which
-- the recording has as lastPrice; the text is served as Binance wrote it.
local function price_rules(e)
  local rules = {}
  for _, raw in ipairs(e.httpResponse) do
    rules[#rules + 1] = { path = "/api/v3/ticker/price", method = "GET", query = { symbol = raw.symbol },
      body = '{"symbol":"' .. raw.symbol .. '","price":"' .. raw.lastPrice .. '"}' }
  end
  return rules
end

describe("examples/ticker_collector.lua", function()
  local t

  before_each(function() log.output("/dev/null") end)
  after_each(function()
    if t then t:close() end
    t = nil
    log.output("-")
  end)

  it("stores one row per symbol with the recorded prices, field by field", function()
    local e = recorded()
    t = testing.new({ collector = COLLECTOR, responses = price_rules(e) })
    local t0 = math.floor(sluice.time())
    local rows, run = t:collect()
    local t1 = math.floor(sluice.time())
    assert.is_table(rows, run)
    assert.equal(2, run.stored)
    assert.same({}, run.unmatched)
    assert.same({}, run.rejects)
    local prices = rows.prices
    assert.equal(2, #prices)
    -- key order: symbol, at
    local want = { { "BTCUSDT", "BTC/USDT" }, { "ETHUSDT", "ETH/USDT" } }
    for i, w in ipairs(want) do
      local r = prices[i]
      assert.equal(w[1], r.symbol)
      assert.equal(e.parsedResponse[w[2]].last, r.price)
      assert.equal(tonumber(e.httpResponse[i].lastPrice), r.price)
      assert.is_true(r.at >= t0 and r.at <= t1)
      assert.equal(prices[1].at, r.at) -- one poll, one time
      local fields = {}
      for k in pairs(r) do fields[#fields + 1] = k end
      table.sort(fields)
      assert.same({ "at", "price", "symbol" }, fields)
    end
    assert.equal(118390.44, prices[1].price)
    assert.equal(3820.06, prices[2].price)
  end)

  it("asks exactly one GET per symbol, with only the symbol", function()
    t = testing.new({ collector = COLLECTOR, responses = price_rules(recorded()) })
    local _, run = assert(t:collect())
    assert.equal(2, #run.requests)
    for i, symbol in ipairs({ "BTCUSDT", "ETHUSDT" }) do
      local r = run.requests[i]
      assert.equal("GET", r.method)
      assert.equal("/api/v3/ticker/price", r.path)
      assert.same({ symbol = symbol }, r.query)
      assert.equal("symbol=" .. symbol, r.query_string)
      assert.equal("", r.body)
      assert.equal(200, r.status)
      assert.is_true(r.matched)
    end
    assert.same(run.requests, t:requests())
  end)

  it("takes its symbols from the configuration", function()
    local e = recorded()
    t = testing.new({ collector = COLLECTOR, config = { symbols = { "ETHUSDT" } }, responses = price_rules(e) })
    local rows = assert(t:collect())
    assert.equal(1, #rows.prices)
    assert.equal("ETHUSDT", rows.prices[1].symbol)
    assert.equal(3820.06, rows.prices[1].price)
    assert.equal(1, #t:requests())
  end)

  it("fails a collection on a symbol with no recorded answer, naming the request", function()
    t = testing.new({ collector = COLLECTOR, config = { symbols = { "BTCUSDT", "DOGEUSDT" } },
      responses = price_rules(recorded()) })
    local rows, err, run = t:collect()
    assert.is_nil(rows)
    -- the collector's own error (its assert on self:get), then what the server did not know
    assert.matches("HTTP 404", err, 1, true)
    assert.matches("1 request(s) with no recorded response (answered 404): "
      .. "GET /api/v3/ticker/price?symbol=DOGEUSDT", err, 1, true)
    assert.equal(1, #run.unmatched)
    assert.equal(404, run.unmatched[1].status)
    assert.same({ symbol = "DOGEUSDT" }, run.unmatched[1].query)
    assert.same(run.unmatched, t:unmatched())
    assert.equal(0, #t:rows("prices")) -- nothing stored: the run failed
    assert.equal(1, t.collector:counters().collections_failed)
  end)

  it("makes a rejected row fail the run (strict), and only reports it otherwise", function()
    local rules = {
      { path = "/api/v3/ticker/price", query = { symbol = "BTCUSDT" }, json = { symbol = "BTCUSDT", price = "0" } },
      { path = "/api/v3/ticker/price", query = { symbol = "ETHUSDT" },
        json = { symbol = "ETHUSDT", price = json.numeral("3820.06000000") } },
    }
    t = testing.new({ collector = COLLECTOR, responses = rules })
    local rows, err, run = t:collect()
    assert.is_nil(rows)
    assert.equal("1 row(s) rejected in prices, the first: validation failed: price must be positive"
      .. ' ({"at":' .. run.rejects.prices[1].row.at .. ',"price":0,"symbol":"BTCUSDT"})', err)
    assert.equal(1, run.stored) -- the good row is stored all the same
    assert.same({ "ETHUSDT" }, { t:rows("prices")[1].symbol })
    t:close()

    t = testing.new({ collector = COLLECTOR, responses = rules, strict = false })
    local rows2, run2 = assert(t:collect())
    assert.equal(1, #rows2.prices)
    assert.equal(3820.06, rows2.prices[1].price)
    assert.equal(1, #run2.rejects.prices)
    assert.equal("validation failed: price must be positive", run2.rejects.prices[1].reason)
    assert.equal("BTCUSDT", run2.rejects.prices[1].row.symbol)
  end)

  it("retries a 503 and stores the answer that follows it", function()
    t = testing.new({ collector = COLLECTOR, config = { symbols = { "BTCUSDT" },
      retry = { strategy = "fixed", max_attempts = 3, base_delay = 0.01, budget = false } },
      responses = price_rules(recorded()) })
    t:respond({ path = "/api/v3/ticker/price", status = 503, body = "busy", times = 1,
      headers = { ["Content-Type"] = "text/plain" } })
    local rows, run = assert(t:collect())
    assert.equal(118390.44, rows.prices[1].price)
    assert.equal(2, #run.requests)
    assert.equal(503, run.requests[1].status)
    assert.equal(200, run.requests[2].status)
  end)
end)
