-- collectors.binance_klines on sluice.testing: the recorded responses of
-- tests/fixtures/ccxt/binance.json, klines computed per request for the
-- runs that follow the clock, and Binance's error answers.
local sluice = require "sluice"
local cjson = require "cjson"
local json = require "sluice.json"
local log = require "sluice.log"
local testing = require "sluice.testing"
local store = require "sluice.store"
local bignum = require "sluice.bignum"
local xtables = require "sluice.exchange.tables"

local FIXTURES = "tests/fixtures/ccxt/binance.json"
local KLINES = "/api/v3/klines"

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

local CANDLE_MS = { ["1m"] = 60e3, ["1h"] = 3600e3 }
local SYMBOLS = { BTCUSDT = 43000, ETHUSDT = 2300 }

-- The exchange's clock (ms), which a spec moves.
local now_ms

-- One candle opening at t, as Binance writes it. A candle still open at
-- now_ms is cut there: its close and volume grow with the clock.
local function kline(symbol, iv, t)
  local base = SYMBOLS[symbol] + (t / iv) % 97
  local elapsed = math.min(iv, now_ms - t) / iv
  local o, c = base, base + 5 * elapsed
  local vol = 10 * elapsed
  return string.format('[%d,"%.8f","%.8f","%.8f","%.8f","%.8f",%d,"%.8f",%d,"%.8f","%.8f","0"]',
    t, o, c + 1, o - 1, c, vol, t + iv - 1, vol * o, math.floor(100 * elapsed), vol / 2, vol * o / 2)
end

local function binance_error(status, code, msg)
  return status, string.format('{"code":%d,"msg":"%s"}', code, msg)
end

-- GET /api/v3/klines as Binance answers it (symbol, interval, startTime,
-- endTime, limit; the latest `limit` candles without startTime).
local function klines(req)
  local q = req.query
  if not SYMBOLS[q.symbol] then return binance_error(400, -1121, "Invalid symbol.") end
  local iv = CANDLE_MS[q.interval]
  if not iv then return binance_error(400, -1120, "Invalid interval.") end
  local limit = math.min(1000, tonumber(q.limit) or 500)
  local last = math.floor(now_ms / iv) * iv
  if q.endTime then last = math.min(last, math.floor(tonumber(q.endTime) / iv) * iv) end
  local first
  if q.startTime then
    first = math.ceil(tonumber(q.startTime) / iv) * iv
    last = math.min(last, first + (limit - 1) * iv)
  else
    first = last - (limit - 1) * iv
  end
  local rows = {}
  for t = first, last, iv do rows[#rows + 1] = kline(q.symbol, iv, t) end
  return 200, "[" .. table.concat(rows, ",") .. "]"
end

-- A tester of binance_klines answering klines as above, with quick retries
-- (adaptive, 3 attempts, 10 to 50 ms apart, no budget); config over that.
local function tester(config, responses, db)
  local c = { retry = { strategy = "adaptive", max_attempts = 3, base_delay = 0.01, max_delay = 0.05,
    budget = false } }
  for k, v in pairs(config or {}) do c[k] = v end
  local rules = {}
  for _, r in ipairs(responses or {}) do rules[#rules + 1] = r end
  rules[#rules + 1] = { path = KLINES, method = "GET", respond = klines }
  return testing.new({ collector = "binance_klines", config = c, responses = rules, store = db })
end

local function count(t)
  return #t:rows("klines")
end

describe("collectors.binance_klines", function()
  local t

  before_each(function()
    log.output("/dev/null")
    now_ms = 1706641230000 -- 2024-01-30T18:00:30Z, 30 s into a minute
  end)

  after_each(function()
    if t then t:close() end
    t = nil
    log.output("-")
  end)

  it("stores the recorded candles exactly as ccxt parsed them", function()
    local e = recorded_ohlcv()
    -- input: symbol, timeframe, since, limit
    local since, candle, limit = e.input[3], e.input[2], e.input[4]
    local from = math.floor(e.httpResponse[1][1] / 1000)
    local to = from + 3600 * #e.httpResponse
    local body = assert(json.encode(e.httpResponse))
    t = tester({ symbols = { "BTCUSDT" }, candle = candle, limit = limit }, {
      { path = KLINES, query = { symbol = "BTCUSDT", interval = candle, startTime = since, limit = limit },
        body = body },
      -- the backfill window's one page
      { path = KLINES, query = { symbol = "BTCUSDT", interval = candle, startTime = from * 1000,
        endTime = to * 1000 - 1, limit = 1000 }, body = body },
    })
    local c = t.collector
    local data = assert(c:get(KLINES, { query = { symbol = "BTCUSDT", interval = candle, startTime = since,
      limit = limit } }))
    assert.same(e.httpResponse, data)
    -- through the collector's own backfill path (sluice.backfill), into the store
    local rows, run = t:backfill(from, to)
    assert.is_table(rows, run)
    assert.equal(#e.parsedResponse, run.stored)
    assert.equal(1, run.status.windows_done)
    assert.equal(1, #run.requests)
    assert.same({ symbol = "BTCUSDT", interval = candle, limit = "1000", startTime = tostring(from * 1000),
      endTime = tostring(to * 1000 - 1) }, run.requests[1].query)
    local stored = rows.klines
    assert.equal(#e.parsedResponse, #stored)
    for i, p in ipairs(e.parsedResponse) do
      local r = stored[i]
      local raw = e.httpResponse[i]
      -- the unified shape: exchange, market, unified and raw symbols
      assert.equal("binance", r.exchange)
      assert.equal("spot", r.market)
      assert.equal("BTC/USDT", r.symbol)
      assert.equal("BTCUSDT", r.raw_symbol)
      assert.equal("1h", r.interval)
      assert.equal(p[1], r.open_time) -- timestamp (ms)
      -- decimals: Binance's text exactly, the value ccxt parsed
      for k, name in ipairs({ "open", "high", "low", "close", "volume" }) do
        assert.equal(raw[k + 1], r[name])
        assert.equal(p[k + 1], tonumber(r[name]))
      end
      assert.equal(raw[7], r.close_time)
      assert.equal(raw[8], r.quote_volume)
      assert.equal(raw[9], r.trades)
      assert.equal(raw[10], r.taker_buy_base_volume)
      assert.equal(raw[11], r.taker_buy_quote_volume)
    end
  end)

  it("collects the latest candles, then only new ones, idempotently", function()
    t = tester({ symbols = { "BTCUSDT", "ETHUSDT" }, candle = "1m", limit = 5 })
    local rows, run = t:collect()
    assert.is_table(rows, run)
    assert.equal(10, #rows.klines)
    -- the first run asks for the latest candles: no startTime
    assert.equal(2, #run.requests)
    for _, r in ipairs(run.requests) do
      assert.same({ symbol = r.query.symbol, interval = "1m", limit = "5" }, r.query)
    end
    local n1 = #rows.klines
    local newest = {}
    for _, r in ipairs(rows.klines) do
      newest[r.raw_symbol] = math.max(newest[r.raw_symbol] or 0, r.open_time)
    end
    assert.same({ BTCUSDT = 1706641200000, ETHUSDT = 1706641200000 }, newest)
    now_ms = now_ms + 60e3 -- the open candle closes, a new one opens
    local rows2, run2 = t:collect()
    assert.is_table(rows2, run2)
    -- the second run asks from the last stored candle on, per symbol
    assert.equal(2, #run2.requests)
    local asked = {}
    for _, r in ipairs(run2.requests) do asked[r.query.symbol] = tonumber(r.query.startTime) end
    assert.same(newest, asked)
    local q = t.store:quality("klines")
    assert.equal(0, q.invalid_records)
    -- the re-fetched last candles (one per symbol) are re-reads, not
    -- duplicates: updated, as they were still open
    assert.equal(2, q.unchanged_records + q.updated_records)
    assert.equal(2, q.updated_records)
    assert.equal(0, q.duplicate_records)
    assert.equal(n1 + 2, #rows2.klines)
    assert.equal(#rows2.klines, n1 + (q.inserted_records - n1))
  end)

  it("retries a 5xx storm shorter than its attempts, and opens the breaker on a longer one", function()
    t = tester({ symbols = { "BTCUSDT" }, limit = 2 })
    t:respond({ path = KLINES, status = 503, times = 2,
      body = '{"code":-1008,"msg":"Server is currently overloaded with other requests."}' })
    local rows, run = t:collect()
    assert.is_table(rows, run)
    assert.same({ 503, 503, 200 }, { run.requests[1].status, run.requests[2].status, run.requests[3].status })
    t:respond({ path = KLINES, status = 500, times = 15,
      body = '{"code":-1000,"msg":"An unknown error occurred while processing the request."}' })
    for _ = 1, 2 do assert.is_nil(t:collect()) end
    local c = t.collector
    assert.equal("open", c.breaker:state())
    local before = #t:requests()
    local ok, err = t:collect()
    assert.is_nil(ok)
    assert.matches("circuit breaker binance_klines is open", err, 1, true)
    assert.equal(before, #t:requests()) -- short-circuited
    assert.equal("circuit_open", c:health_check().status)
  end)

  it("opens the breaker until a 418 ban ends", function()
    t = tester({ symbols = { "BTCUSDT" }, limit = 2 })
    t:respond({ path = KLINES, status = 418, times = 1, headers = { ["Retry-After"] = "300" },
      body = '{"code":-1003,"msg":"Way too much request weight used; IP banned until 1706641530000."}' })
    local ok = t:collect()
    assert.is_nil(ok)
    local c = t.collector
    assert.equal("open", c.breaker:state())
    local until_ = c.breaker:metrics().open_until
    assert.is_true(until_ > sluice.time() + 290)
    assert.equal(1, #t:requests()) -- banned: not retried
  end)

  it("waits out a 429's Retry-After and then succeeds", function()
    t = tester({ symbols = { "BTCUSDT" }, limit = 2 })
    t:respond({ path = KLINES, status = 429, times = 1, headers = { ["Retry-After"] = "1" },
      body = '{"code":-1003,"msg":"Too much request weight used."}' })
    local t0 = sluice.now()
    local rows, run = t:collect()
    assert.is_table(rows, run)
    assert.is_true(sluice.now() - t0 >= 0.9)
    assert.equal(1, t.collector.limiter:stats().total_violations)
    assert.same({ 429, 200 }, { run.requests[1].status, run.requests[2].status })
    assert.equal(2, #rows.klines)
  end)

  it("fails a run on malformed JSON without storing anything", function()
    t = tester({ symbols = { "BTCUSDT" }, limit = 2 })
    local _, whole = klines({ query = { symbol = "BTCUSDT", interval = "1m", limit = "2" } })
    t:respond({ path = KLINES, times = 1, body = whole:sub(1, math.floor(#whole / 2)) })
    local ok, err = t:collect()
    assert.is_nil(ok)
    assert.matches("JSON", err)
    assert.equal(0, count(t))
  end)

  it("reports Binance error bodies with their code", function()
    t = tester({ symbols = { "NOSUCHPAIR" }, limit = 2 })
    local ok, err = t:collect()
    assert.is_nil(ok)
    assert.matches("-1121", err, 1, true)
    assert.matches("Binance error -1121: Invalid symbol.", err, 1, true)
    assert.equal(1, #t:requests()) -- a 400 is not retried
  end)

  it("rejects bad options when it starts", function()
    t = tester({ candle = "7m" })
    local c = t.collector
    assert.has_error(function() c:start() end)
    local ok, err = pcall(c.start, c)
    assert.is_false(ok)
    assert.matches("option 'candle' must be a Binance interval", err, 1, true)
    -- a tester's collection starts with init too
    local rows, err2 = t:collect()
    assert.is_nil(rows)
    assert.matches("^init failed: .*option 'candle' must be a Binance interval", err2)
    assert.equal(0, #t:requests())
  end)

  -- tests/fixtures/binance_klines_v0.sql: `sqlite3 .dump` of a database the
  -- build before the unified tables wrote (backfill 2024-01-28..30 of
  -- BTCUSDT and ETHUSDT 1h candles from sluice.mock.binance, then one
  -- collection): klines keyed by (symbol, interval, open_time), real
  -- columns, and its backfill coverage.
  it("migrates a database of the old klines layout in place, every row kept", function()
    local path = os.tmpname()
    local db = assert(store.open(path))
    local f = assert(io.open("tests/fixtures/binance_klines_v0.sql"))
    -- the store made its own tables already: the dump's are the same
    local script = f:read("*a"):gsub("CREATE TABLE sluice_", "CREATE TABLE IF NOT EXISTS sluice_")
      :gsub("CREATE INDEX sluice_", "CREATE INDEX IF NOT EXISTS sluice_")
    f:close()
    assert(db:script(script))
    local old = db:query("SELECT * FROM klines ORDER BY symbol, interval, open_time")
    assert.equal(136, #old)
    t = tester({ symbols = { "BTCUSDT", "ETHUSDT" }, candle = "1h" }, nil, db)
    local new = t:rows("klines")
    assert.equal(#old, #new)
    local by = {}
    for _, r in ipairs(new) do by[r.raw_symbol .. " " .. r.interval .. " " .. r.open_time] = r end
    for _, o in ipairs(old) do
      local r = by[o.symbol .. " " .. o.interval .. " " .. o.open_time]
      assert.is_table(r, o.symbol .. " " .. o.open_time)
      assert.equal("binance", r.exchange)
      assert.equal("spot", r.market)
      assert.equal(o.symbol == "BTCUSDT" and "BTC/USDT" or "ETH/USDT", r.symbol)
      assert.equal(o.close_time, r.close_time)
      assert.equal(o.trades, r.trades)
      for _, k in ipairs({ "open", "high", "low", "close", "volume", "quote_volume", "taker_buy_base_volume",
        "taker_buy_quote_volume" }) do
        -- the stored double as the shortest decimal that reads back as it
        assert.equal(bignum.normalize(o[k]), r[k])
        assert.equal(o[k], tonumber(r[k]))
      end
    end
    assert.equal(0, #db:query("SELECT name FROM sqlite_master WHERE name = 'klines_before_unified'"))
    -- the old coverage still counts: the same backfill asks Binance nothing
    local rows, run = t:backfill("2024-01-28", "2024-01-30")
    assert.is_table(rows, run)
    assert.equal(0, #run.requests)
    assert.equal(2, run.status.windows_skipped)
    -- and collecting goes on from the last stored candle
    now_ms = 1706641230000
    local rows2, run2 = t:collect()
    assert.is_table(rows2, run2)
    for _, r in ipairs(run2.requests) do assert.equal("1706641200000", r.query.startTime) end
    assert.equal(#old, #rows2.klines)
    -- already unified: nothing more to do
    assert.is_false(xtables.migrate(db))
    t:close()
    t = nil
    db:close()
    os.remove(path)
  end)
end)
