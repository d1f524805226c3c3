-- The htx adapter (sluice.exchange.htx) and its mock (sluice.mock.htx): the
-- recorded responses of tests/fixtures/ccxt/htx.json served as recorded and
-- compared with ccxt's parsedResponse field by field, HTX's error bodies ->
-- verdicts, its rate-limit answers and bans, crossed books, and backfills
-- over 90 days against the mock, counting pages.
local json = require "sluice.json"
local collector = require "sluice.collector"
local testing = require "sluice.testing"
local htx = require "sluice.exchange.htx"
local mock = require "sluice.mock.htx"

local FIXTURES = "tests/fixtures/ccxt/htx.json"

local function fixture(method, description)
  local f = assert(io.open(FIXTURES))
  local doc = assert(json.decode(f:read("*a")))
  f:close()
  for _, e in ipairs(doc.entries) do
    if e.method == method and e.description == description then
      return e, assert(json.encode(e.httpResponse))
    end
  end
  error("fixture not found: " .. method .. " " .. description)
end

local function sym(unified)
  local market = not unified:find(":") and "spot"
    or (unified:match(":(%w+)$") == unified:match("/(%w+)") and "linear" or "inverse")
  return { unified = unified, market = market, raw = htx.raw_symbol(market, unified) }
end

-- The kit's per-instance helper, as EXCHANGE.md describes it: base URL,
-- skip (recorded here) and row.
local function fake_ex(base)
  local ex = { skipped = {} }
  function ex.base(c) return base or c.base_url end
  function ex.skip(_, s, why) ex.skipped[#ex.skipped + 1] = { s.unified, why } end
  function ex.row(s, f)
    f.exchange, f.market, f.symbol, f.raw_symbol = "htx", s.market, s.unified, s.raw
    return f
  end
  return ex
end

-- A collector whose run calls fn(self) (an adapter function) through the
-- real request pipeline (limiter, breaker, retry, the adapter's classify);
-- its results are kept in out.
local function harness(out, fn, extra)
  local spec = {
    name = "htx_adapter", base_url = "http://127.0.0.1:9", interval = 60,
    classify = htx.classify,
    tables = { none = { columns = { k = "text" }, key = { "k" } } },
    collect = function(self)
      out.r = { fn(self) }
      return {}
    end,
  }
  for k, v in pairs(extra or {}) do spec[k] = v end
  return collector.define(spec)
end

local function run(opts, fn)
  local out = {}
  return testing.with({ collector = harness(out, fn, opts.spec), responses = opts.responses or {},
    config = opts.config, strict = false }, function(t)
    local rows, err = t:collect()
    assert(rows, err)
    return out.r, t
  end)
end

describe("htx adapter", function()
  it("names symbols as HTX does", function()
    assert.equal("btcusdt", htx.raw_symbol("spot", "BTC/USDT"))
    assert.equal("BTC-USDT", htx.raw_symbol("linear", "BTC/USDT:USDT"))
    assert.equal("BTC-USD", htx.raw_symbol("inverse", "BTC/USD:BTC"))
  end)

  describe("recorded responses, compared with ccxt's parsedResponse", function()
    it("spot fetchTicker: /market/detail/merged", function()
      local e, body = fixture("fetchTicker", "public spot ticker")
      local p = e.parsedResponse
      local ex = fake_ex()
      local r, t = run({ responses = { { path = "/market/detail/merged", query = { symbol = "btcusdt" },
        body = body } } }, function(c) return htx.tickers(ex, c, "spot", { sym("BTC/USDT") }) end)
      local row = r[1][1]
      assert.equal(1, #r[1])
      assert.equal(p.timestamp, row.ts)
      assert.equal("73360.54", row.last)              -- ccxt last/close 73360.54
      assert.equal(p.last, tonumber(row.last))
      assert.equal(p.open, tonumber(row.open))
      assert.equal("73635.99", row.high)
      assert.equal("68640.0", row.low)                -- ccxt 68640: the text is kept
      assert.equal(p.low, tonumber(row.low))
      assert.equal(p.bid, row.bid)                    -- a JSON number: the number json.decode gives
      assert.equal(p.bidVolume, row.bid_size)
      assert.equal(p.ask, row.ask)
      assert.equal(p.askVolume, row.ask_size)
      assert.equal("2314.593946077937", row.base_volume)
      assert.equal(p.baseVolume, tonumber(row.base_volume))
      assert.equal("1.6575393849546936E8", row.quote_volume)   -- HTX's exponent text, stored exact
      assert.equal(p.quoteVolume, tonumber(row.quote_volume))
      assert.is_nil(row.mark)
      assert.is_nil(row.index)
      assert.equal(1, #t:requests())
      assert.same({}, ex.skipped)
    end)

    it("spot fetchOHLCV (1h): /market/history/kline", function()
      local e, body = fixture("fetchOHLCV", "public spot ohlcv")
      local p = e.parsedResponse[1]
      local ex = fake_ex()
      local r = run({ responses = { { path = "/market/history/kline",
        query = { symbol = "btcusdt", period = "60min" }, body = body } } }, function(c)
        return htx.klines(ex, c, "spot", sym("BTC/USDT"), "1h", p[1], p[1] + 3600e3)
      end)
      local rows = r[1]
      assert.equal(1, #rows)
      local k = rows[1]
      assert.equal(p[1], k.open_time)
      assert.equal(p[1] + 3600e3 - 1, k.close_time)
      assert.equal("1h", k.interval)
      assert.same({ p[2], p[3], p[4], p[5], p[6] },
        { tonumber(k.open), tonumber(k.high), tonumber(k.low), tonumber(k.close), tonumber(k.volume) })
      assert.same({ "73239.67", "73429.87", "73225.45", "73394.27", "7.878463990783707" },
        { k.open, k.high, k.low, k.close, k.volume })
      assert.equal("577530.94600318", k.quote_volume)   -- ccxt keeps no quote volume in OHLCV
      assert.equal(497, k.trades)
    end)

    it("linear fetchFundingRate: the {code, data: [...]} envelope recorded", function()
      local e, body = fixture("fetchFundingRate", "Linear swap fetch funding rate")
      local p = e.parsedResponse
      local ex = fake_ex()
      local r = run({ responses = { { path = "/linear-swap-api/v1/swap_funding_rate",
        query = { contract_code = "BTC-USDT" }, body = body } } }, function(c)
        return htx.funding(ex, c, "linear", { sym("BTC/USDT:USDT") })
      end)
      local f = r[1][1]
      assert.equal(1, #r[1])
      assert.equal("0.000081913965631512", f.rate)
      assert.equal(p.fundingRate, tonumber(f.rate))
      assert.equal(p.fundingTimestamp, f.next_funding_time)  -- when the current rate settles
      assert.equal(8, f.interval_hours)                       -- ccxt interval "8h"
      assert.equal("8h", p.interval)
      assert.is_nil(f.predicted_rate)                         -- ccxt nextFundingRate null
      assert.equal(json.null, p.nextFundingRate)
      assert.equal(1781235566039, f.ts)                       -- the response's ts (ccxt: none)
      assert.equal("BTC/USDT:USDT", f.symbol)
    end)

    it("inverse fetchFundingRate: /swap-api/v1/swap_funding_rate", function()
      local e, body = fixture("fetchFundingRate", "Inverse swap fetch funding rate")
      local p = e.parsedResponse
      local ex = fake_ex()
      local r = run({ responses = { { path = "/swap-api/v1/swap_funding_rate",
        query = { contract_code = "BTC-USD" }, body = body } } }, function(c)
        return htx.funding(ex, c, "inverse", { sym("BTC/USD:BTC") })
      end)
      local f = r[1][1]
      assert.equal("0.000100000000000000", f.rate)
      assert.equal(p.fundingRate, tonumber(f.rate))
      assert.equal(p.fundingTimestamp, f.next_funding_time)
      assert.is_nil(f.interval_hours)                          -- next_funding_time null; ccxt interval null
      assert.equal(json.null, p.interval)
      assert.is_nil(f.predicted_rate)
      assert.equal(1781254404101, f.ts)
    end)

    for _, case in ipairs{
      { "Linear swap fetch funding rate history", "linear", "BTC/USDT:USDT",
        "/linear-swap-api/v1/swap_historical_funding_rate", "0.0001" },
      { "Inverse swap fetch funding rate history", "inverse", "BTC/USD:BTC",
        "/swap-api/v1/swap_historical_funding_rate", "0.000100000000000000" },
    } do
      it(case[2] .. " fetchFundingRateHistory", function()
        local e, body = fixture("fetchFundingRateHistory", case[1])
        local p = e.parsedResponse[1]
        local ex = fake_ex()
        local s = sym(case[3])
        local r, t = run({ responses = { { path = case[4], query = { contract_code = s.raw,
          page_index = "1" }, body = body } } }, function(c)
          return htx.funding_history(ex, c, case[2], s, p.timestamp, p.timestamp + 1)
        end)
        assert.equal(1, #r[1])
        local f = r[1][1]
        assert.equal(p.timestamp, f.funding_time)
        assert.equal(case[5], f.rate)
        assert.equal(p.fundingRate, tonumber(f.rate))
        assert.equal(1, #t:requests())     -- a page shorter than 50 is the last
      end)
    end
  end)

  describe("error bodies -> verdicts", function()
    local function classify(status, body)
      return htx.classify(nil, { status = status, body = body, headers = {} })
    end

    it("maps HTX's codes", function()
      assert.equal("ignored", (classify(200,
        '{"status":"error","err-code":"invalid-parameter","err-msg":"invalid symbol","data":null}')))
      assert.equal("ignored", (classify(200,
        '{"status":"error","err_code":1014,"err_msg":"This contract doesn\'t exist.","ts":1}')))
      assert.equal("throttled", (classify(200,
        '{"status":"error","err_code":1032,"err_msg":"The number of access exceeded the limit.","ts":1}')))
      assert.equal("throttled", (classify(429, '{"status":"error","err-code":"too-many-request"}')))
      assert.equal("banned", (classify(403, "<html>Access denied</html>")))
      local v, msg, again = classify(200, '{"status":"error","err_code":1004,"err_msg":"System busy.","ts":1}')
      assert.same({ "failure", "HTX error 1004: System busy.", true }, { v, msg, again })
      assert.equal("failure", (classify(200, '{"code":"500","message":"Internal","data":null}')))
      assert.is_nil((classify(200, '{"code":"200","message":"Success","data":[]}')))
      assert.is_nil((classify(200, '{"status":"ok","data":[]}')))
    end)
  end)
end)

describe("htx adapter against sluice.mock.htx", function()
  local m, clock
  before_each(function()
    clock = 1710328245889
    m = mock.start{ now = function() return clock end, listed = clock - 120 * 86400e3 }
  end)
  after_each(function() m:stop() end)

  it("skips an unknown symbol once and keeps the others (batch and single)", function()
    local ex = fake_ex(m.url)
    local r = run({}, function(c)
      return htx.tickers(ex, c, "spot", { sym("BTC/USDT"), sym("NOPE/USDT"), sym("ETH/USDT") })
    end)
    assert.equal(2, #r[1])
    assert.same({ "BTC/USDT", "ETH/USDT" }, { r[1][1].symbol, r[1][2].symbol })
    assert.same({ { "NOPE/USDT", "not listed by HTX /market/tickers" } }, ex.skipped)
    ex = fake_ex(m.url)
    r = run({}, function(c) return htx.order_book(ex, c, "linear", sym("NOPE/USDT:USDT"), 20) end)
    assert.is_nil(r[1])
    assert.equal("ignored", r[3])
    assert.same({ { "NOPE/USDT:USDT", "HTX error invalid-parameter: invalid contract code" } }, ex.skipped)
    ex = fake_ex(m.url)
    r = run({}, function(c) return htx.funding(ex, c, "inverse", { sym("NOPE/USD:NOPE") }) end)
    assert.same({}, r[1])
    assert.same({ { "NOPE/USD:NOPE", "HTX error 1014: This contract doesn't exist." } }, ex.skipped)
  end)

  it("serves books of the depth asked for, best first", function()
    local ex = fake_ex(m.url)
    local r = run({}, function(c) return htx.order_book(ex, c, "spot", sym("BTC/USDT"), 10) end)
    local b = r[1]
    assert.equal(10, #b.bids)
    assert.equal(10, #b.asks)
    assert.equal(clock, b.ts)
    assert.equal("10", m.log[1].query.depth)
    assert.is_true(b.bids[1][1] < b.asks[1][1])
    r = run({}, function(c) return htx.order_book(ex, c, "inverse", sym("BTC/USD:BTC"), 50) end)
    assert.equal(50, #r[1].bids)
    assert.equal("step0", m.log[2].query.type)
  end)

  it("backfills 90 days of linear klines, each page once, rows exact", function()
    local ex = fake_ex(m.url)
    local to = math.floor(clock / 3600e3) * 3600e3
    local from = to - 90 * 86400e3
    local r = run({}, function(c) return htx.klines(ex, c, "linear", sym("BTC/USDT:USDT"), "1h", from, to) end)
    local rows = r[1]
    assert.equal(90 * 24, #rows)
    assert.equal(from, rows[1].open_time)
    assert.equal(to - 3600e3, rows[#rows].open_time)
    for i = 2, #rows do assert.equal(rows[i - 1].open_time + 3600e3, rows[i].open_time) end
    -- 2160 candles: pages of 2000 and 160, each asked for once
    assert.equal(2, m:count("/linear-swap-ex/market/history/kline"))
    assert.same({ tostring(from / 1000), tostring((from + 1999 * 3600e3) / 1000) },
      { m.log[1].query.from, m.log[1].query.to })
    assert.same({ tostring((from + 2000 * 3600e3) / 1000), tostring((to - 3600e3) / 1000) },
      { m.log[2].query.from, m.log[2].query.to })
  end)

  it("backfills 90 days of funding history, each page once, rows exact", function()
    local ex = fake_ex(m.url)
    local to = clock
    local from = to - 90 * 86400e3
    local r = run({}, function(c) return htx.funding_history(ex, c, "linear", sym("BTC/USDT:USDT"), from, to) end)
    local rows = r[1]
    assert.equal(270, #rows)                         -- 3 a day
    assert.equal(0, rows[1].funding_time % (8 * 3600e3))
    for i = 2, #rows do assert.equal(rows[i - 1].funding_time + 8 * 3600e3, rows[i].funding_time) end
    local pages = {}
    for _, e in ipairs(m.log) do pages[#pages + 1] = e.query.page_index end
    assert.same({ "1", "2", "3", "4", "5", "6" }, pages)   -- 270 rows + 1 older: 6 pages of 50
  end)

  it("answers over the limit as HTX does, then bans", function()
    m:stop()
    m = mock.start{ now = function() return clock end, limit = 2, ban_after = 1 }
    local http = require "sluice.http"
    local function get(path, q) return http.get(m.url .. path, { query = q }) end
    local a = get("/market/tickers")
    assert.equal("1", a.headers["x-hb-ratelimit-requests-remain"])
    assert.equal(string.format("%d", (math.floor(clock / 3000) + 1) * 3000),
      a.headers["x-hb-ratelimit-requests-expire"])
    get("/market/tickers")
    local over = get("/market/tickers")
    assert.equal(429, over.status)
    local swap = get("/linear-swap-api/v1/swap_funding_rate", { contract_code = "BTC-USDT" })
    assert.equal(403, swap.status)                    -- the second over the limit: banned
    assert.equal("banned", (htx.classify(nil, swap)))
  end)
end)

-- The shipped collector (collectors/htx.lua on sluice.exchange) under
-- sluice.testing: every request answered by the mock (or a recording).
describe("collectors.htx", function()
  local ONLY = function(name)
    local d = {}
    for _, n in ipairs{ "tickers", "funding", "order_book", "klines" } do d[n] = { enabled = n == name } end
    return d
  end

  local function mock_rules(m)
    local rules = {}
    for _, p in ipairs(m:paths()) do
      rules[#rules + 1] = { path = p, respond = function(req) return m:handle(req) end }
    end
    return rules
  end

  it("stores the recorded spot ticker as ccxt parsed it", function()
    local e, body = fixture("fetchTicker", "public spot ticker")
    local p = e.parsedResponse
    testing.with({ collector = "htx", config = { symbols = { "BTC/USDT" }, datasets = ONLY("tickers") },
      responses = { { path = "/market/detail/merged", query = { symbol = "btcusdt" }, body = body } } },
      function(t)
        local rows = assert(t:collect())
        local r = rows.tickers[1]
        assert.equal(1, #rows.tickers)
        assert.same({ "htx", "spot", "BTC/USDT", "btcusdt", p.timestamp },
          { r.exchange, r.market, r.symbol, r.raw_symbol, r.ts })
        for col, field in pairs{ last = "last", open = "open", high = "high", low = "low", bid = "bid",
          ask = "ask", bid_size = "bidVolume", ask_size = "askVolume", base_volume = "baseVolume",
          quote_volume = "quoteVolume" } do
          assert.equal(p[field], tonumber(r[col]), col)
        end
        assert.equal("165753938.49546936", r.quote_volume)   -- "1.6575393849546936E8", exact
      end)
  end)

  it("stores the recorded funding rates", function()
    local lin, lbody = fixture("fetchFundingRate", "Linear swap fetch funding rate")
    local inv, ibody = fixture("fetchFundingRate", "Inverse swap fetch funding rate")
    testing.with({ collector = "htx", config = { symbols = { "BTC/USDT:USDT", "BTC/USD:BTC" },
      datasets = ONLY("funding") }, responses = {
        -- two symbols of two markets: one request per market, each for its one symbol
        { path = "/linear-swap-api/v1/swap_funding_rate", query = { contract_code = "BTC-USDT" }, body = lbody },
        { path = "/swap-api/v1/swap_funding_rate", query = { contract_code = "BTC-USD" }, body = ibody } } },
      function(t)
        local rows = assert(t:collect()).funding_current
        assert.equal(2, #rows)
        local by = {}
        for _, r in ipairs(rows) do by[r.symbol] = r end
        local l, i = by["BTC/USDT:USDT"], by["BTC/USD:BTC"]
        assert.equal(lin.parsedResponse.fundingRate, tonumber(l.rate))
        assert.equal(lin.parsedResponse.fundingTimestamp, l.next_funding_time)
        assert.equal(8, tonumber(l.interval_hours))
        assert.equal(inv.parsedResponse.fundingRate, tonumber(i.rate))
        assert.equal(inv.parsedResponse.fundingTimestamp, i.next_funding_time)
        assert.is_nil(i.interval_hours)
      end)
  end)

  it("rejects a crossed book with its reason", function()
    local crossed = '{"ch":"market.btcusdt.depth.step0","status":"ok","ts":1710328245889,"tick":{"ts":1710328245800,'
      .. '"version":1,"bids":[[73361.0,0.5],[73360.0,1]],"asks":[[73360.5,0.2],[73362.0,1]]}}'
    testing.with({ collector = "htx", strict = false, config = { symbols = { "BTC/USDT" },
      datasets = ONLY("order_book") }, responses = { { path = "/market/depth", body = crossed } } },
      function(t)
        local _, info = t:collect()
        local rej = info.rejects.order_books
        assert.equal(1, #rej)
        assert.equal("validation failed: crossed book: best bid 73361 >= best ask 73360.5", rej[1].reason)
        assert.same({ { "73361", "0.5" }, { "73360", "1" } }, rej[1].row.bids)
      end)
  end)

  it("lands rows of every dataset for spot, linear and inverse symbols", function()
    local m = mock.start{}                             -- the wall clock: the kit's klines window
    local ok, err = pcall(testing.with, { collector = "htx", config = { symbols = { "BTC/USDT", "ETH/USDT",
      "BTC/USDT:USDT", "ETH/USDT:USDT", "BTC/USD:BTC" }, depth = 50, candle = "1h", first_candles = 3 },
      responses = mock_rules(m) },
      function(t)
        local rows = assert(t:collect())
        assert.equal(5, #rows.tickers)
        assert.equal(3, #rows.funding_current)
        assert.equal(5, #rows.order_books)
        for _, b in ipairs(rows.order_books) do assert.equal(50, #b.bids) end
        assert.is_true(#rows.klines >= 15, "klines: " .. #rows.klines)   -- 3 or 4 candles of 5 symbols
        for _, r in ipairs(rows.tickers) do
          assert.is_truthy(r.last and r.bid and r.ask and r.bid_size and r.base_volume)
        end
        -- batch endpoints for several symbols of a market, one request each
        assert.equal(1, m:count("/market/tickers"))
        assert.equal(1, m:count("/v2/linear-swap-ex/market/detail/batch_merged"))
        assert.equal(1, m:count("/swap-ex/market/detail/merged"))
        assert.equal(1, m:count("/linear-swap-api/v1/swap_batch_funding_rate"))
      end)
    m:stop()
    assert(ok, err)
  end)

  it("a ban (HTTP 403) stops every dataset; HTX's 1032 backs the limiter off", function()
    local clock = 1710328245889
    local m = mock.start{ now = function() return clock end }
    local ok, err = pcall(testing.with, { collector = "htx", strict = false,
      config = { symbols = { "BTC/USDT", "BTC/USDT:USDT" }, retry = { max_attempts = 1 } },
      responses = mock_rules(m) },
      function(t)
        local c = t.collector
        m:inject{ status = 200, count = 1, path = "/market/detail/merged",
          body = '{"status":"error","err_code":1032,"err_msg":"The number of access exceeded the limit.","ts":1}' }
        t:collect()
        assert.equal(1, c.limiter:stats().total_violations)   -- a 1032 in a 200 counts as a 429
        assert.is_true(c.limiter:stats().current_global_rate < 10)
        assert.equal("closed", c.breaker:status().state)
        m:inject{ status = 403, count = 1 }
        t:collect()
        assert.equal("open", c.breaker:status().state)
        local before = m.requests
        t:collect()
        assert.equal(before, m.requests)              -- no dataset sends anything while banned
      end)
    m:stop()
    assert(ok, err)
  end)

  it("backfills 90 days of klines and funding history from the mock, each page once", function()
    local clock = 1781235566039
    local m = mock.start{ now = function() return clock end, listed = clock - 120 * 86400e3 }
    local ok, err = pcall(testing.with, { collector = "htx",
      config = { symbols = { "BTC/USDT:USDT" }, candle = "1h" }, responses = mock_rules(m) },
      function(t)
        local to = math.floor(clock / 86400e3) * 86400
        local from = to - 90 * 86400
        local rows = assert(t:backfill(from, to))
        assert.equal(90 * 24, #rows.klines)
        assert.equal(from * 1000, rows.klines[1].open_time)
        assert.equal(to * 1000 - 3600e3, rows.klines[#rows.klines].open_time)
        assert.equal(270, #rows.funding_rates)
        assert.equal(from * 1000, rows.funding_rates[1].funding_time)
        local pages, klines = {}, 0
        for _, e in ipairs(m.log) do
          if e.path == "/linear-swap-api/v1/swap_historical_funding_rate" then
            pages[#pages + 1] = e.query.page_index
          elseif e.path == "/linear-swap-ex/market/history/kline" then
            klines = klines + 1
          end
        end
        table.sort(pages)
        assert.same({ "1", "2", "3", "4", "5", "6" }, pages)   -- each page once
        -- windows of 1000 candles (the kit's backfill_step), one request each
        assert.equal(3, klines)
      end)
    m:stop()
    assert(ok, err)
  end)
end)
