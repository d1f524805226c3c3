-- collectors.binance_klines against the mock Binance (sluice.mock.binance),
-- with the recorded responses of tests/fixtures/ccxt/binance.json.
local sluice = require "sluice"
local cjson = require "cjson"
local store = require "sluice.store"
local mock = require "sluice.mock.binance"
local log = require "sluice.log"

local FIXTURES = "tests/fixtures/ccxt/binance.json"

local function recorded_ohlcv()
  local f = assert(io.open(FIXTURES))
  local doc = cjson.decode(f:read("*a"))
  f:close()
  for _, e in ipairs(doc.entries) do
    if e.method == "fetchOHLCV" and e.description == "Spot OHLCV with since and limit" then
      return e
    end
  end
  error("fixture not found")
end

local new_collector = require("support.klines").collector

describe("collectors.binance_klines", function()
  local m, db

  before_each(function()
    log.output("/dev/null")
    m = mock.start({ fixtures = FIXTURES })
    db = assert(store.open(":memory:"))
  end)

  after_each(function()
    m:stop()
    db:close()
    log.output("-")
  end)

  it("stores the recorded candles exactly as ccxt parsed them", function()
    local e = recorded_ohlcv()
    -- input: symbol, timeframe, since, limit
    local c = new_collector(m, db, { symbols = { "BTCUSDT" }, candle = e.input[2], limit = e.input[4] })
    local since = e.input[3]
    local data = assert(c:get("/api/v3/klines", { query = { symbol = "BTCUSDT",
      interval = e.input[2], startTime = since, limit = e.input[4] } }))
    assert.same(e.httpResponse, data)
    -- through the collector's own backfill path, into the store
    local step = 3600
    local from = math.floor(e.httpResponse[1][1] / 1000)
    local rows = c.spec.backfill(c, from, from + step * #e.httpResponse)
    local ins = db:upsert("klines", rows.klines)
    assert.equal(#e.parsedResponse, ins)
    local stored = db:query("SELECT * FROM klines ORDER BY open_time")
    assert.equal(#e.parsedResponse, #stored)
    for i, p in ipairs(e.parsedResponse) do
      local r = stored[i]
      assert.equal("BTCUSDT", r.symbol)
      assert.equal("1h", r.interval)
      assert.equal(p[1], r.open_time) -- timestamp (ms)
      assert.equal(p[2], r.open)
      assert.equal(p[3], r.high)
      assert.equal(p[4], r.low)
      assert.equal(p[5], r.close)
      assert.equal(p[6], r.volume)
      local raw = e.httpResponse[i]
      assert.equal(raw[7], r.close_time)
      assert.equal(tonumber(raw[8]), r.quote_volume)
      assert.equal(raw[9], r.trades)
      assert.equal(tonumber(raw[10]), r.taker_buy_base_volume)
      assert.equal(tonumber(raw[11]), r.taker_buy_quote_volume)
    end
  end)

  it("collects the latest candles, then only new ones, idempotently", function()
    local c = new_collector(m, db, { symbols = { "BTCUSDT", "ETHUSDT" }, candle = "1m", limit = 5 })
    c.spec.init(c)
    assert.is_true(c:run_once())
    local n1 = db:query("SELECT COUNT(*) AS n FROM klines")[1].n
    assert.equal(10, n1)
    local before = m.requests
    local newest = {}
    for _, r in ipairs(db:query("SELECT symbol, MAX(open_time) AS t FROM klines GROUP BY symbol")) do
      newest[r.symbol] = r.t
    end
    assert.is_true(c:run_once())
    -- the second run asks from the last stored candle on, per symbol
    assert.equal(before + 2, m.requests)
    local asked = {}
    for i = #m.log - 1, #m.log do asked[m.log[i].query.symbol] = tonumber(m.log[i].query.startTime) end
    assert.same(newest, asked)
    local q = db:quality("klines")
    assert.equal(0, q.invalid_records)
    -- the re-fetched last candles (one per symbol, whether or not a new
    -- minute began) are re-reads, not duplicates
    assert.equal(2, q.unchanged_records + q.updated_records)
    assert.equal(0, q.duplicate_records)
    assert.equal(db:query("SELECT COUNT(*) AS n FROM klines")[1].n,
      n1 + (q.inserted_records - n1))
  end)

  it("retries a 5xx storm shorter than its attempts, and opens the breaker on a longer one", function()
    local c = new_collector(m, db, { symbols = { "BTCUSDT" }, limit = 2 })
    m:inject({ status = 503, count = 2 })
    assert.is_true(c:run_once())
    m:inject({ status = 500, count = 15 })
    for _ = 1, 2 do c:run_once() end
    assert.equal("open", c.breaker:state())
    local before = m.requests
    local ok, err = c:run_once()
    assert.is_false(ok)
    assert.matches("circuit breaker binance_klines is open", err, 1, true)
    assert.equal(before, m.requests) -- short-circuited
    assert.equal("circuit_open", c:health_check().status)
  end)

  it("opens the breaker until a 418 ban ends", function()
    local c = new_collector(m, db, { symbols = { "BTCUSDT" }, limit = 2 })
    m:inject({ status = 418, retry_after = 300 })
    local ok = c:run_once()
    assert.is_false(ok)
    assert.equal("open", c.breaker:state())
    local until_ = c.breaker:metrics().open_until
    assert.is_true(until_ > sluice.time() + 290)
  end)

  it("waits out a 429's Retry-After and then succeeds", function()
    local c = new_collector(m, db, { symbols = { "BTCUSDT" }, limit = 2 })
    m:inject({ status = 429, retry_after = 1 })
    local t0 = sluice.now()
    assert.is_true(c:run_once())
    assert.is_true(sluice.now() - t0 >= 0.9)
    assert.equal(1, c.limiter:stats().total_violations)
  end)

  it("fails a run on malformed JSON without storing anything", function()
    local c = new_collector(m, db, { symbols = { "BTCUSDT" }, limit = 2 })
    m:inject({ malformed = true })
    local ok, err = c:run_once()
    assert.is_false(ok)
    assert.matches("JSON", err)
    assert.equal(0, db:query("SELECT COUNT(*) AS n FROM klines")[1].n)
  end)

  it("reports Binance error bodies with their code", function()
    local c = new_collector(m, db, { symbols = { "NOSUCHPAIR" }, limit = 2 })
    local ok, err = c:run_once()
    assert.is_false(ok)
    assert.matches("-1121", err, 1, true)
  end)

  it("rejects bad options when it starts", function()
    local c = new_collector(m, db, { candle = "7m" })
    assert.has_error(function() c:start() end)
    local ok, err = pcall(c.start, c)
    assert.is_false(ok)
    assert.matches("option 'candle' must be a Binance interval", err, 1, true)
  end)
end)
