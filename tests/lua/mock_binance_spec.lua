-- sluice.mock.binance: Binance's kline format, deterministic data, the
-- recorded fixture candles, errors, weight limits and bans, fault injection
-- and the request log, exercised with the sluice.http client in-process.
local sluice = require "sluice"
local http = require "sluice.http"
local cjson = require "cjson"
local mock = require "sluice.mock.binance"

-- Relative to the repository root, where the specs run.
local FIXTURES = "tests/fixtures/ccxt/binance.json"
local HOUR = 3600000
local NOW = 1706641200000 + 1234 -- 2024-01-30 19:00:01.234 UTC, after the recorded candles

local mocks = {}
local clock
local function start(opts)
  opts = opts or {}
  if opts.now == nil then
    clock = NOW
    opts.now = function() return clock end
  end
  local m = mock.start(opts)
  mocks[#mocks + 1] = m
  return m
end

after_each(function()
  for _, m in ipairs(mocks) do m:stop() end
  mocks = {}
end)

local function get(m, path, query, opts)
  opts = opts or {}
  opts.query = query
  return http.get(m.url .. path, opts)
end

local function klines(m, query)
  local res = assert(get(m, "/api/v3/klines", query))
  assert.equal(200, res.status, res.body)
  return assert(res:json()), res
end

local function fixture_rows(description)
  local f = assert(io.open(FIXTURES, "rb"))
  local doc = cjson.decode(f:read("*a"))
  f:close()
  for _, e in ipairs(doc.entries) do
    if e.description == description then return e.httpResponse end
  end
  error("no fixture entry " .. description)
end

local DECIMAL = "^%d+%.%d%d%d%d%d%d%d%d$"

describe("sluice.mock.binance klines", function()
  it("returns rows in Binance's exact format", function()
    local m = start()
    local rows, res = klines(m, { symbol = "BTCUSDT", interval = "1h", limit = 5 })
    assert.equal("application/json;charset=UTF-8", res.headers["content-type"])
    assert.equal(5, #rows)
    for i, r in ipairs(rows) do
      assert.equal(12, #r)
      assert.equal("number", type(r[1]))
      assert.equal(0, r[1] % HOUR)
      for _, k in ipairs{ 2, 3, 4, 5, 6, 8, 10, 11 } do
        assert.equal("string", type(r[k]))
        assert.matches(DECIMAL, r[k])
      end
      assert.equal(r[1] + HOUR - 1, r[7])
      assert.equal("number", type(r[9]))
      assert.equal(math.floor(r[9]), r[9])
      assert.is_true(r[9] >= 1)
      assert.equal("0", r[12])
      local o, h, l, c = tonumber(r[2]), tonumber(r[3]), tonumber(r[4]), tonumber(r[5])
      assert.is_true(h >= math.max(o, c) and l <= math.min(o, c) and l > 0)
      assert.is_true(tonumber(r[10]) <= tonumber(r[6]))
      assert.is_true(tonumber(r[11]) <= tonumber(r[8]))
      if i > 1 then assert.equal(rows[i - 1][5], r[2]) end -- close carries into the next open
    end
    -- the raw body is compact integers and quoted decimals, like Binance's
    assert.matches('^%[%[%d+,"%d+%.%d+","', res.body)
  end)

  it("is deterministic per seed, symbol, interval and open time", function()
    local m = start()
    local q = { symbol = "ETHUSDT", interval = "15m", startTime = NOW - 10 * HOUR, limit = 20 }
    local a = assert(get(m, "/api/v3/klines", q)).body
    local b = assert(get(m, "/api/v3/klines", q)).body
    assert.equal(a, b)
    local other = start{ seed = 1, now = function() return NOW end }
    assert.equal(a, assert(get(other, "/api/v3/klines", q)).body)
    local reseeded = start{ seed = 2, now = function() return NOW end }
    assert.not_equal(a, assert(get(reseeded, "/api/v3/klines", q)).body)
    -- an overlapping window gives the same candles for the same open times
    local all = cjson.decode(a)                -- opens 09:15 .. 14:00
    q.startTime, q.limit = NOW - 8 * HOUR, 4    -- opens 11:15 .. 12:00
    assert.same({ all[9], all[10], all[11], all[12] }, klines(m, q))
  end)

  it("selects by startTime/endTime on open times, aligned to the interval", function()
    local m = start()
    -- startTime mid-candle: the first candle is the next aligned one
    local rows = klines(m, { symbol = "BTCUSDT", interval = "1h", startTime = 1706628191000, limit = 3 })
    assert.same({ 1706630400000, 1706634000000, 1706637600000 }, { rows[1][1], rows[2][1], rows[3][1] })
    -- startTime on a boundary and endTime are inclusive
    rows = klines(m, { symbol = "BTCUSDT", interval = "5m", startTime = 1706630400000,
                       endTime = 1706630400000 + 30 * 60000 })
    assert.equal(7, #rows)
    assert.equal(1706630400000, rows[1][1])
    assert.equal(1706630400000 + 30 * 60000, rows[7][1])
    assert.equal(1706630400000 + 35 * 60000 - 1, rows[7][7])
    -- endTime alone: the latest `limit` candles opening at or before it
    rows = klines(m, { symbol = "BTCUSDT", interval = "1m", endTime = 1706630459999, limit = 3 })
    assert.same({ 1706630280000, 1706630340000, 1706630400000 }, { rows[1][1], rows[2][1], rows[3][1] })
    -- 1w candles open on Mondays, 1d at midnight UTC
    rows = klines(m, { symbol = "BTCUSDT", interval = "1w", limit = 2 })
    assert.equal(1, os.date("!*t", rows[2][1] / 1000).wday - 1) -- Monday
    rows = klines(m, { symbol = "BTCUSDT", interval = "1d", limit = 1 })
    assert.equal(0, rows[1][1] % 86400000)
  end)

  it("ends at the current candle, never in the future", function()
    local m = start()
    local rows = klines(m, { symbol = "SOLUSDT", interval = "1h" })
    assert.equal(500, #rows) -- the default limit
    assert.equal(NOW - 1234, rows[500][1]) -- the candle open now
    for i = 2, #rows do assert.equal(rows[i - 1][1] + HOUR, rows[i][1]) end
    assert.same({}, klines(m, { symbol = "SOLUSDT", interval = "1h", startTime = NOW + 1 }))
    rows = klines(m, { symbol = "SOLUSDT", interval = "1m", startTime = NOW - 2 * 60000 })
    assert.same({ NOW - 1234 - 60000, NOW - 1234 }, { rows[1][1], rows[2][1] }) -- 18:59, 19:00
    assert.equal(2, #rows)
    -- the open candle reflects the time elapsed: it grows as the clock runs
    local before = tonumber(klines(m, { symbol = "SOLUSDT", interval = "1h", limit = 1 })[1][6])
    clock = NOW + 30 * 60000
    local after = tonumber(klines(m, { symbol = "SOLUSDT", interval = "1h", limit = 1 })[1][6])
    assert.is_true(after > before)
  end)

  it("clamps limit to 1000 and serves every interval", function()
    local m = start()
    assert.equal(1000, #klines(m, { symbol = "BNBUSDT", interval = "1s", limit = 5000 }))
    assert.equal(1, #klines(m, { symbol = "BNBUSDT", interval = "1s", limit = 0 }))
    for _, iv in ipairs{ "1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h",
                         "12h", "1d", "3d", "1w" } do
      local rows = klines(m, { symbol = "BNBUSDT", interval = iv, limit = 2 })
      assert.equal(2, #rows, iv)
      assert.equal(rows[1][7] + 1, rows[2][1], iv)
    end
  end)

  it("serves the recorded fixture candles exactly", function()
    local m = start{ fixtures = FIXTURES, now = function() return NOW end }
    local recorded = fixture_rows("Spot OHLCV with since and limit")
    local res = assert(get(m, "/api/v3/klines",
      { symbol = "BTCUSDT", interval = "1h", startTime = 1706628191000, limit = 3 }))
    assert.equal(200, res.status)
    assert.same(recorded, res:json())
    assert.equal(cjson.encode(recorded), res.body)
    -- synthetic neighbours are scaled to the recorded prices
    local rows = klines(m, { symbol = "BTCUSDT", interval = "1h", startTime = 1706626800000, limit = 5 })
    assert.same(recorded, { rows[2], rows[3], rows[4] })
    assert.is_true(math.abs(tonumber(rows[1][5]) / 43519.34 - 1) < 0.05)
    -- contract fixtures (swap, inverse) are not spot data; without the
    -- fixture file the same request is synthetic
    local plain = start{ now = function() return NOW end }
    assert.are_not.same(recorded, klines(plain, { symbol = "BTCUSDT", interval = "1h",
      startTime = 1706628191000, limit = 3 }))
  end)
end)

describe("sluice.mock.binance errors and other endpoints", function()
  local function err(m, path, query)
    local res = assert(get(m, path, query))
    return res.status, res:json()
  end

  it("answers bad requests like Binance", function()
    local m = start()
    assert.same({ 400, { code = -1121, msg = "Invalid symbol." } },
      { err(m, "/api/v3/klines", { symbol = "DOGEBTC", interval = "1m" }) })
    assert.same({ 400, { code = -1120, msg = "Invalid interval." } },
      { err(m, "/api/v3/klines", { symbol = "BTCUSDT", interval = "7m" }) })
    assert.same({ 400, { code = -1102,
      msg = "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed." } },
      { err(m, "/api/v3/klines", { interval = "1m" }) })
    assert.same({ 400, { code = -1102,
      msg = "Mandatory parameter 'interval' was not sent, was empty/null, or malformed." } },
      { err(m, "/api/v3/klines", { symbol = "BTCUSDT" }) })
    assert.same({ 400, { code = -1023, msg = "Start time is greater than end time." } },
      { err(m, "/api/v3/klines", { symbol = "BTCUSDT", interval = "1m", startTime = 2, endTime = 1 }) })
    assert.same({ 400, { code = -1100,
      msg = "Illegal characters found in parameter 'limit'; legal range is '^[0-9]{1,20}$'." } },
      { err(m, "/api/v3/klines", { symbol = "BTCUSDT", interval = "1m", limit = "ten" }) })
    local status, body = err(m, "/api/v3/nope")
    assert.equal(404, status)
    assert.equal(-1000, body.code)
  end)

  it("knows a configurable list of symbols", function()
    local m = start{ symbols = { "DOGEUSDT" } }
    assert.equal(1, #klines(m, { symbol = "DOGEUSDT", interval = "1m", limit = 1 }))
    assert.equal(400, assert(get(m, "/api/v3/klines", { symbol = "BTCUSDT", interval = "1m" })).status)
  end)

  it("answers ping, time and ticker/price", function()
    local m = start()
    local res = assert(get(m, "/api/v3/ping"))
    assert.same({ 200, "{}" }, { res.status, res.body })
    res = assert(get(m, "/api/v3/time"))
    assert.equal('{"serverTime":1706641201234}', res.body)
    local t = assert(get(m, "/api/v3/ticker/price", { symbol = "BTCUSDT" })):json()
    assert.equal("BTCUSDT", t.symbol)
    assert.matches(DECIMAL, t.price)
    -- the price is the open candle's close
    assert.equal(klines(m, { symbol = "BTCUSDT", interval = "1m", limit = 1 })[1][5], t.price)
    local all = assert(get(m, "/api/v3/ticker/price")):json()
    assert.equal(4, #all)
    assert.same(t, all[1])
    assert.same({ 400, { code = -1121, msg = "Invalid symbol." } },
      { err(m, "/api/v3/ticker/price", { symbol = "NOPE" }) })
  end)

  it("raises on misuse at the caller's line", function()
    local line = debug.getinfo(1, "l").currentline + 1
    local ok, e = pcall(function() mock.start{ prot = 1 } end)
    assert.is_false(ok)
    assert.matches("mock_binance_spec%.lua:" .. line .. ": sluice%.mock%.binance%.start: unknown option 'prot'$", e)
    ok, e = pcall(mock.start, { fixtures = "/nonexistent.json" })
    assert.is_false(ok)
    assert.matches("cannot read fixtures", e)
    local m = start()
    ok, e = pcall(function() m:inject{ status = 700 } end)
    assert.is_false(ok)
    assert.matches("sluice%.mock%.binance%.inject: option 'status' must be an integer in %[200, 599%], got 700$", e)
    ok, e = pcall(function() m:inject{ count = 2 } end)
    assert.is_false(ok)
    assert.matches("a fault needs status, malformed, abort or delay", e)
    ok, e = pcall(function() m:inject{ stauts = 500 } end)
    assert.is_false(ok)
    assert.matches("sluice%.mock%.binance%.inject: unknown option 'stauts'$", e)
  end)
end)

describe("sluice.mock.binance weight", function()
  local function used(res) return tonumber(res.headers["x-mbx-used-weight-1m"]) end

  it("counts request weight per minute in X-MBX-USED-WEIGHT-1M", function()
    local m = start()
    local q = { symbol = "BTCUSDT", interval = "1m", limit = 1 }
    assert.equal(2, used(assert(get(m, "/api/v3/klines", q))))
    assert.equal(4, used(assert(get(m, "/api/v3/klines", q))))
    assert.equal(5, used(assert(get(m, "/api/v3/ping"))))
    local res = assert(get(m, "/api/v3/time"))
    assert.equal(6, used(res))
    assert.equal("6", res.headers["x-mbx-used-weight"])
    -- errors weigh too, as on Binance
    assert.equal(8, used(assert(get(m, "/api/v3/klines", { symbol = "X", interval = "1m" }))))
    clock = NOW - 1234 + 60000 -- the next minute starts afresh, even for a 404
    assert.equal(0, used(assert(get(m, "/api/v3/nope"))))
    assert.equal(2, used(assert(get(m, "/api/v3/klines", q))))
  end)

  it("answers 429 with Retry-After past the limit, then bans with 418", function()
    local m = start{ weight_limit = 10, ban_seconds = 120 }
    local q = { symbol = "BTCUSDT", interval = "1m", limit = 1 }
    for i = 1, 5 do assert.equal(200, assert(get(m, "/api/v3/klines", q)).status, i) end
    clock = NOW + 20000 -- 19:00:21.234: 38.766 s to the next minute
    for _ = 1, 3 do
      local res = assert(get(m, "/api/v3/klines", q))
      assert.equal(429, res.status)
      assert.equal("39", res.headers["retry-after"])
      assert.equal(10, used(res))
      assert.same({ code = -1003, msg = "Too much request weight used; current limit is 10 request "
        .. "weight per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API." },
        res:json())
    end
    local res = assert(get(m, "/api/v3/klines", q))
    assert.equal(418, res.status)
    assert.equal("120", res.headers["retry-after"])
    local until_ms = NOW + 20000 + 120000
    assert.same({ code = -1003, msg = "Way too much request weight used; IP banned until "
      .. until_ms .. ". Please use WebSocket Streams for live updates to avoid bans." }, res:json())
    -- the ban outlasts the minute, for every endpoint
    clock = NOW + 100000
    res = assert(get(m, "/api/v3/ping"))
    assert.equal(418, res.status)
    assert.equal("40", res.headers["retry-after"])
    clock = until_ms
    res = assert(get(m, "/api/v3/klines", q))
    assert.equal(200, res.status)
    assert.equal(2, used(res))
  end)
end)

describe("sluice.mock.binance fault injection and log", function()
  it("records every request with its query and headers", function()
    local m = start()
    get(m, "/api/v3/klines", { symbol = "BTCUSDT", interval = "1m", limit = 2 },
      { headers = { ["X-MBX-APIKEY"] = "k3y" } })
    get(m, "/api/v3/ping")
    assert.equal(2, m.requests)
    assert.equal(2, #m.log)
    local e = m.log[1]
    assert.equal("GET", e.method)
    assert.equal("/api/v3/klines", e.path)
    assert.same({ symbol = "BTCUSDT", interval = "1m", limit = "2" }, e.query)
    assert.equal("k3y", e.headers["x-mbx-apikey"])
    assert.equal("k3y", e.headers["X-MBX-APIKEY"])
    assert.equal(200, e.status)
    assert.is_nil(m.log[2].headers["x-mbx-apikey"])
    m:reset()
    assert.equal(0, m.requests)
    assert.same({}, m.log)
  end)

  it("serves a 5xx storm, then recovers", function()
    local m = start()
    m:inject{ status = 500, count = 5 }
    for _ = 1, 5 do
      local res = assert(get(m, "/api/v3/klines", { symbol = "BTCUSDT", interval = "1m" }))
      assert.equal(500, res.status)
      assert.same({ code = -1000, msg = "An unknown error occurred while processing the request." },
        res:json())
      assert.equal("0", res.headers["x-mbx-used-weight-1m"]) -- faults use no weight
    end
    assert.equal(200, assert(get(m, "/api/v3/klines", { symbol = "BTCUSDT", interval = "1m" })).status)
    assert.equal(6, m.requests)
    assert.same({ 500, 500, 500, 500, 500, 200 },
      { m.log[1].status, m.log[2].status, m.log[3].status, m.log[4].status, m.log[5].status, m.log[6].status })
  end)

  it("consumes faults in order, for the paths they name", function()
    local m = start()
    m:inject{ status = 503, path = "/api/v3/klines" }
    m:inject{ status = 429, retry_after = 7 }
    m:inject{ status = 418, retry_after = 30, body = '{"code":-1003,"msg":"banned"}' }
    m:inject{ status = 502 }
    local res = assert(get(m, "/api/v3/ping")) -- skips the klines-only 503
    assert.equal(429, res.status)
    assert.equal("7", res.headers["retry-after"])
    assert.equal(-1003, res:json().code)
    res = assert(get(m, "/api/v3/klines", { symbol = "BTCUSDT", interval = "1m" }))
    assert.equal(503, res.status)
    assert.equal(-1008, res:json().code)
    res = assert(get(m, "/api/v3/ping"))
    assert.same({ 418, "30", '{"code":-1003,"msg":"banned"}' },
      { res.status, res.headers["retry-after"], res.body })
    res = assert(get(m, "/api/v3/ping"))
    assert.equal(502, res.status)
    assert.is_nil(res:json())
    assert.equal(200, assert(get(m, "/api/v3/ping")).status)
  end)

  it("answers 200 with truncated JSON when malformed", function()
    local m = start()
    m:inject{ malformed = true }
    local res = assert(get(m, "/api/v3/klines", { symbol = "BTCUSDT", interval = "1m", limit = 3 }))
    assert.equal(200, res.status)
    assert.matches("^%[%[", res.body)
    local value, e = res:json()
    assert.is_nil(value)
    assert.is_string(e)
    assert.equal(3, #klines(m, { symbol = "BTCUSDT", interval = "1m", limit = 3 }))
  end)

  it("closes the connection without answering on abort", function()
    local m = start()
    m:inject{ abort = true, count = 2 } -- 2: libcurl resends once on a reused connection
    local res, _, kind = get(m, "/api/v3/ping")
    assert.is_nil(res)
    assert.equal("aborted", kind)
    assert.equal("abort", m.log[1].status)
    m:reset()
    assert.equal(200, assert(get(m, "/api/v3/ping")).status)
  end)

  it("delays answers, alone or before a fault", function()
    local m = start()
    m:inject{ delay = 0.2 }
    m:inject{ delay = 0.1, status = 500 }
    local t0 = sluice.now()
    assert.equal(200, assert(get(m, "/api/v3/ping")).status)
    assert.is_true(sluice.now() - t0 >= 0.19)
    t0 = sluice.now()
    assert.equal(500, assert(get(m, "/api/v3/ping")).status)
    assert.is_true(sluice.now() - t0 >= 0.09)
    -- a client timeout during the delay sees a timeout; the request is logged
    m:inject{ delay = 0.5 }
    local res, _, kind = get(m, "/api/v3/ping", nil, { timeout = 0.1 })
    assert.is_nil(res)
    assert.equal("timeout", kind)
    assert.equal(3, m.requests)
  end)
end)
