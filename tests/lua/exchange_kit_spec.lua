-- sluice.exchange (the kit) with a small fake exchange: symbols, book
-- checks and metrics, define's spec, every dataset against a
-- sluice.testing server, unknown symbols, backfill by page, statistics.
local json = require "sluice.json"
local testing = require "sluice.testing"
local store = require "sluice.store"
local exchange = require "sluice.exchange"
local symbols = require "sluice.exchange.symbols"
local book = require "sluice.exchange.book"
local xstats = require "sluice.exchange.stats"
local operator = require "sluice.operator"
local metrics = require "sluice.metrics"
local app = require "sluice.app"
local sluice = require "sluice"
local log = require "sluice.log"

-- --- the fake exchange ------------------------------------------------------
-- GET /tickers?market=M        [{s, last, bid, ask, ts}] for every symbol it knows
-- GET /funding?market=M        [{s, rate, next, ts}]
-- GET /book?s=S&limit=N        {ts, seq, bids, asks}; an unknown s: 400 {"code":"UNKNOWN_SYMBOL"}
-- GET /klines?s=S&c=C&from=&to= 5 candles a page from `from`, [from, to)
-- GET /fundinghist?s=S&from=&to= 2 settlements a page (8 h apart), [from, to)

local KNOWN = { BTCUSDT = true, ["BTC-PERP"] = true }
local KLINE_PAGE, FUNDING_PAGE = 5, 2
local H8 = 8 * 3600 * 1000

local function fake_adapter(over)
  local a = {
    name = "fakex",
    base_urls = { spot = "https://spot.fakex.test", linear = "https://perp.fakex.test" },
    markets = { spot = true, linear = true },
    candles = { ["1m"] = "M1", ["1h"] = "H1" },
    limiter = { rate = 1000, max_rate = 1000 },
    retry = { strategy = "fixed", base_delay = 0.01, max_attempts = 2, budget = false },
    breaker = { failure_threshold = 3, timeout = 60 },
    raw_symbol = function(market, unified)
      local base, quote = unified:match("^(%w+)/(%w+)")
      if market == "spot" then return base .. quote end
      return base .. "-PERP"
    end,
    classify = function(_, res)
      local body = res:json()
      if type(body) == "table" and body.code == "UNKNOWN_SYMBOL" then return "ignored", "unknown symbol" end
      if res.status == 403 then return "banned", "WAF" end
    end,
  }
  a.tickers = function(ex, c, market, syms)
    local data = assert(c:get(ex.base(c, market) .. "/tickers", { query = { market = market } }))
    local by = {}
    for _, t in ipairs(data) do by[t.s] = t end
    local rows = {}
    for _, s in ipairs(syms) do
      local t = by[s.raw]
      if t then
        rows[#rows + 1] = ex.row(s, { ts = t.ts, last = t.last, bid = t.bid, ask = t.ask })
      else
        ex.skip(c, s, "not listed")
      end
    end
    return rows
  end
  a.funding = function(ex, c, market, syms)
    local data, err = c:get(ex.base(c, market) .. "/funding", { query = { market = market } })
    if not data then return nil, err end
    local rows = {}
    for _, s in ipairs(syms) do
      for _, f in ipairs(data) do
        if f.s == s.raw then
          rows[#rows + 1] = ex.row(s, { ts = f.ts, rate = f.rate, next_funding_time = f.next })
        end
      end
    end
    return rows
  end
  a.order_book = function(ex, c, market, sym, depth)
    local data, err = c:get(ex.base(c, market) .. "/book", { query = { s = sym.raw, limit = depth } })
    if not data then return nil, err end
    if data.code == "UNKNOWN_SYMBOL" then
      ex.skip(c, sym, "unknown symbol")
      return nil, "unknown symbol"
    end
    return { ts = data.ts, sequence = data.seq, bids = data.bids, asks = data.asks }
  end
  a.klines = function(ex, c, market, sym, candle, from_ms, to_ms)
    local rows, cursor = {}, from_ms
    while true do
      local data, err = c:get(ex.base(c, market) .. "/klines", { query = { s = sym.raw,
        c = a.candles[candle], from = cursor, to = to_ms } })
      if not data then return nil, err end
      for _, k in ipairs(data) do
        rows[#rows + 1] = ex.row(sym, { open_time = k[1], open = k[2], high = k[3], low = k[4],
          close = k[5], volume = k[6], close_time = k[1] + 59999 })
      end
      if #data < KLINE_PAGE then return rows end
      cursor = data[#data][1] + 60000
    end
  end
  a.funding_history = function(ex, c, market, sym, from_ms, to_ms)
    local rows, cursor = {}, from_ms
    while true do
      local data, err = c:get(ex.base(c, market) .. "/fundinghist", { query = { s = sym.raw,
        from = cursor, to = to_ms } })
      if not data then return nil, err end
      for _, f in ipairs(data) do
        rows[#rows + 1] = ex.row(sym, { funding_time = f.t, rate = f.r })
      end
      if #data < FUNDING_PAGE then return rows end
      cursor = data[#data].t + 1
    end
  end
  for k, v in pairs(over or {}) do
    if v == false then a[k] = nil else a[k] = v end
  end
  return a
end

local NOW = 1717200000000 -- 2024-06-01T00:00:00Z, where the fake's data ends

local function price(t) return string.format("%d.%02d", 60000 + (t / 60000) % 1000, (t / 60000) % 100) end

local book_answer -- the next /book answer (a spec may change it)

local function routes()
  return {
    { path = "/tickers", respond = function(req)
      if req.query.market == "spot" then
        return 200, '[{"s":"BTCUSDT","last":"64000.10","bid":"64000.00","ask":"64000.20","ts":1717199999000}]'
      end
      return 200, '[{"s":"BTC-PERP","last":"64010.5","bid":"64010.0","ask":"64011.0","ts":1717199999500}]'
    end },
    { path = "/funding", respond = function()
      return 200, '[{"s":"BTC-PERP","rate":"0.00012345","next":1717228800000,"ts":1717199999000}]'
    end },
    { path = "/book", respond = function(req)
      if not KNOWN[req.query.s] then return 400, '{"code":"UNKNOWN_SYMBOL"}' end
      return 200, book_answer
    end },
    { path = "/klines", respond = function(req)
      local from, to = tonumber(req.query.from), math.min(tonumber(req.query.to), NOW)
      local out = {}
      local t = math.ceil(from / 60000) * 60000
      while t < to and #out < KLINE_PAGE do
        local p = price(t)
        out[#out + 1] = string.format('[%d,"%s","%s","%s","%s","1.50"]', t, p, p, p, p)
        t = t + 60000
      end
      return 200, "[" .. table.concat(out, ",") .. "]"
    end },
    { path = "/fundinghist", respond = function(req)
      local from, to = tonumber(req.query.from), math.min(tonumber(req.query.to), NOW)
      local out = {}
      local t = math.ceil(from / H8) * H8
      while t < to and #out < FUNDING_PAGE do
        out[#out + 1] = string.format('{"t":%d,"r":"0.0001%d"}', t, (t / H8) % 10)
        t = t + H8
      end
      return 200, "[" .. table.concat(out, ",") .. "]"
    end },
  }
end

local BOOK = '{"ts":1717199999900,"seq":987654321,'
  .. '"bids":[["100.0","1"],["99.95","2"],["99.94995","0.25"],["99.5","3"],["98","4"]],'
  .. '"asks":[["100.1","1.5"],["100.2","0.5"],["101","2"],["102","7"]]}'

describe("sluice.exchange.symbols", function()
  it("parses ccxt's unified forms into markets", function()
    assert.same({ unified = "BTC/USDT", base = "BTC", quote = "USDT", market = "spot" }, symbols.parse("BTC/USDT"))
    assert.same({ unified = "BTC/USDT:USDT", base = "BTC", quote = "USDT", settle = "USDT", market = "linear" },
      symbols.parse("BTC/USDT:USDT"))
    assert.same({ unified = "BTC/USD:BTC", base = "BTC", quote = "USD", settle = "BTC", market = "inverse" },
      symbols.parse("BTC/USD:BTC"))
    local none, err = symbols.parse("BTCUSDT")
    assert.is_nil(none)
    assert.equal("unknown symbol form 'BTCUSDT': a symbol is BASE/QUOTE (spot), BASE/QUOTE:QUOTE (linear "
      .. "perpetual) or BASE/QUOTE:BASE (inverse perpetual), in upper case, e.g. BTC/USDT, BTC/USDT:USDT, "
      .. "BTC/USD:BTC", err)
    assert.matches("^unknown symbol form 'BTC/USDT:USDT%-240628'", select(2, symbols.parse("BTC/USDT:USDT-240628")))
    assert.matches("the settle currency ETH is neither", select(2, symbols.parse("BTC/USDT:ETH")), 1, true)
  end)

  it("resolves the configured symbols against what the exchange has", function()
    local a = fake_adapter()
    local got = assert(symbols.resolve(a, { "BTC/USDT", "BTC/USDT:USDT" }, {}))
    assert.equal(2, #got)
    assert.same({ "BTCUSDT", "spot" }, { got[1].raw, got[1].market })
    assert.same({ "BTC-PERP", "linear" }, { got[2].raw, got[2].market })
    got = assert(symbols.resolve(a, { "BTC/USDT", "BTC/USDT:USDT" }, { "linear" }))
    assert.equal(1, #got)
    assert.equal("BTC/USDT:USDT", got[1].unified)
    assert.same({ nil, "option 'symbols'[2]: BTC/USD:BTC is an inverse symbol and fakex has no inverse market" },
      { symbols.resolve(a, { "BTC/USDT", "BTC/USD:BTC" }, {}) })
    assert.same({ nil, "option 'markets'[1]: fakex has no inverse market" },
      { symbols.resolve(a, { "BTC/USDT" }, { "inverse" }) })
    assert.same({ nil, "option 'markets'[1] must be spot, linear or inverse, got futures" },
      { symbols.resolve(a, { "BTC/USDT" }, { "futures" }) })
    assert.same({ nil, "option 'symbols' must list at least one symbol of the markets asked for (option 'markets')" },
      { symbols.resolve(a, { "BTC/USDT" }, { "linear" }) })
    assert.same({ nil, "option 'symbols'[2]: BTC/USDT is listed twice" },
      { symbols.resolve(a, { "BTC/USDT", "BTC/USDT" }, {}) })
  end)
end)

describe("sluice.exchange.book", function()
  local bids = json.decode(BOOK).bids
  local asks = json.decode(BOOK).asks

  it("computes exact metrics (bands from the mid, bounds included)", function()
    assert.is_true(book.check(bids, asks))
    assert.same({
      best_bid = "100.0", best_ask = "100.1",
      spread_bps = "9.99500249",            -- 0.1 / 100.05 * 10000, truncated to 8 places
      bid_depth_10bps = "3.25",             -- >= 99.94995 (100.05 * 0.999): 1 + 2 + 0.25 (on the bound)
      ask_depth_10bps = "1.5",              -- <= 100.15005
      bid_depth_1pct = "6.25",              -- >= 99.0495
      ask_depth_1pct = "4",                 -- <= 101.0505
      imbalance = "0.21951219",             -- 2.25 / 10.25
    }, book.metrics(bids, asks))
  end)

  it("keeps the exchange's text and writes numbers exactly", function()
    assert.same({ { "64000.50", "0.00001234" }, { "1", "2" } },
      book.levels({ { "64000.50", "0.00001234" }, { 1, json.numeral("2") } }))
  end)

  it("rejects a book with its reason", function()
    local function why(b, a) local ok, r = book.check(b, a); assert.is_false(ok); return r end
    assert.equal("crossed book: best bid 100.2 >= best ask 100.1", why({ { "100.2", "1" } }, { { "100.1", "1" } }))
    assert.equal("crossed book: best bid 100.1 >= best ask 100.10", why({ { "100.1", "1" } }, { { "100.10", "1" } }))
    assert.equal("bids not strictly descending at bids[2]: 100 after 100.0",
      why({ { "100.0", "1" }, { "100", "1" } }, { { "101", "1" } }))
    assert.equal("asks not strictly ascending at asks[2]: 100.5 after 101",
      why({ { "100", "1" } }, { { "101", "1" }, { "100.5", "1" } }))
    assert.equal("non-positive size at bids[1]: 0", why({ { "100", "0" } }, { { "101", "1" } }))
    assert.equal("non-positive price at asks[1]: -1", why({ { "100", "1" } }, { { "-1", "1" } }))
    assert.equal("malformed level asks[1]: not a [price, size] pair", why({ { "100", "1" } }, { { "101" } }))
    assert.equal("malformed level bids[1]: price not a number: \"abc\" (not a number)",
      why({ { "abc", "1" } }, { { "101", "1" } }))
    assert.equal("empty book: no asks", why({ { "100", "1" } }, {}))
    assert.equal("malformed book: bids is not a list of levels", why("nope", {}))
  end)
end)

describe("sluice.exchange.define", function()
  it("makes a collector spec of an adapter", function()
    local spec = exchange.define(fake_adapter())
    assert.equal("fakex", spec.name)
    assert.equal("fakex", spec.upstream)
    assert.same({ "funding_current", "funding_rates", "klines", "order_books", "tickers" },
      (function() local t = {}; for k in pairs(spec.tables) do t[#t + 1] = k end; table.sort(t); return t end)())
    assert.equal(5, spec.datasets.tickers.interval)
    assert.equal(60, spec.datasets.funding.interval)
    assert.equal(5, spec.datasets.order_book.interval)
    assert.equal(60, spec.datasets.klines.interval)
    assert.same({ "funding_history", "klines" }, spec.options.backfill_datasets)
    assert.equal("decimal", spec.tables.tickers.columns.last)
    assert.equal("json", spec.tables.order_books.columns.bids)
  end)

  it("refuses what is not an adapter", function()
    assert.has_error(function() exchange.define(fake_adapter({ name = "fake-x" })) end,
      "sluice.exchange.define: adapter field 'name' must be an identifier, got fake-x")
    assert.has_error(function() exchange.define(fake_adapter({ tikers = function() end })) end,
      "sluice.exchange.define: adapter has an unknown field 'tikers'")
    assert.has_error(function() exchange.define(fake_adapter({ markets = { spot = true, inverse = true } })) end,
      "sluice.exchange.define: adapter.base_urls has no URL for its inverse market")
  end)

  local function init_error(config, over)
    local t = testing.new({ collector = exchange.define(fake_adapter(over)), config = config })
    local ok, err = t:collect()
    t:close()
    assert.is_nil(ok)
    return err
  end

  it("checks the options when it starts", function()
    assert.matches("init failed: option 'symbols'%[1%]: unknown symbol form 'btc/usdt'",
      init_error({ symbols = { "btc/usdt" } }))
    assert.matches("init failed: option 'candle': fakex has no candle 5m (it has 1h, 1m)",
      init_error({ symbols = { "BTC/USDT" }, candle = "5m" }), 1, true)
    assert.matches("init failed: option 'symbols' must list at least one symbol",
      init_error({}), 1, true)
    assert.matches("init failed: option 'depth' must be an integer in [1, 5000], got 0",
      init_error({ symbols = { "BTC/USDT" }, depth = 0 }), 1, true)
    -- a dataset the adapter cannot serve: disabled, and refused when enabled
    assert.matches("init failed: dataset funding: fakex has no funding data: its adapter has no funding function",
      init_error({ symbols = { "BTC/USDT" }, datasets = { funding = { enabled = true } } }, { funding = false }),
      1, true)
  end)
end)

describe("an exchange collector", function()
  before_each(function() book_answer = BOOK end)

  local function tester(config, over)
    return testing.new({ collector = exchange.define(fake_adapter(over)), config = config, responses = routes() })
  end

  it("stores every dataset in the unified tables, exactly", function()
    testing.with({ collector = exchange.define(fake_adapter()), responses = routes(),
      config = { symbols = { "BTC/USDT", "BTC/USDT:USDT" }, depth = 5, first_candles = 3 } }, function(t)
      local rows, run = assert(t:collect())
      local tk = rows.tickers
      assert.equal(2, #tk)
      assert.same({ exchange = "fakex", market = "linear", symbol = "BTC/USDT:USDT", raw_symbol = "BTC-PERP",
        ts = 1717199999500, last = "64010.5", bid = "64010.0", ask = "64011.0" }, tk[1])
      assert.same({ exchange = "fakex", market = "spot", symbol = "BTC/USDT", raw_symbol = "BTCUSDT",
        ts = 1717199999000, last = "64000.10", bid = "64000.00", ask = "64000.20" }, tk[2])
      assert.same({ { exchange = "fakex", market = "linear", symbol = "BTC/USDT:USDT", raw_symbol = "BTC-PERP",
        ts = 1717199999000, rate = "0.00012345", next_funding_time = 1717228800000 } }, rows.funding_current)
      local b = rows.order_books
      assert.equal(2, #b)
      assert.same({ exchange = "fakex", market = "linear", symbol = "BTC/USDT:USDT", raw_symbol = "BTC-PERP",
        ts = 1717199999900, sequence = 987654321,
        bids = { { "100.0", "1" }, { "99.95", "2" }, { "99.94995", "0.25" }, { "99.5", "3" }, { "98", "4" } },
        asks = { { "100.1", "1.5" }, { "100.2", "0.5" }, { "101", "2" }, { "102", "7" } },
        best_bid = "100.0", best_ask = "100.1", spread_bps = "9.99500249", bid_depth_10bps = "3.25",
        ask_depth_10bps = "1.5", bid_depth_1pct = "6.25", ask_depth_1pct = "4", imbalance = "0.21951219" }, b[1])
      -- the sides as stored: JSON text with the exchange's digits
      local raw = t.store:query("SELECT bids FROM order_books WHERE market = 'spot'")[1].bids
      assert.equal('[["100.0","1"],["99.95","2"],["99.94995","0.25"],["99.5","3"],["98","4"]]', raw)
      -- the requests: one per market (tickers, funding), one per symbol (books)
      local n = {}
      for _, r in ipairs(run.requests) do n[r.path] = (n[r.path] or 0) + 1 end
      assert.equal(2, n["/tickers"])
      assert.equal(1, n["/funding"])
      assert.equal(2, n["/book"])
      for _, r in ipairs(run.requests) do
        if r.path == "/book" then assert.equal("5", r.query.limit) end
      end
    end)
  end)

  it("polls klines since the last stored candle", function()
    testing.with({ collector = exchange.define(fake_adapter()), responses = routes(),
      config = { symbols = { "BTC/USDT" }, first_candles = 3 } }, function(t)
      -- candles stored up to one before the fake's end
      assert(t.store:upsert("klines", { { exchange = "fakex", market = "spot", symbol = "BTC/USDT",
        raw_symbol = "BTCUSDT", interval = "1m", open_time = NOW - 120000, open = "1", high = "1", low = "1",
        close = "1" } }))
      local ok, err = t.collector:run_once("klines")
      assert.is_true(ok, err)
      local got = t.store:query("SELECT open_time, close, volume FROM klines ORDER BY open_time")
      assert.equal(2, #got)
      assert.same({ open_time = NOW - 120000, close = price(NOW - 120000), volume = "1.50" }, got[1])
      assert.same({ open_time = NOW - 60000, close = price(NOW - 60000), volume = "1.50" }, got[2])
      local q = t:requests()[1].query
      assert.same({ s = "BTCUSDT", c = "M1", from = tostring(NOW - 120000) }, { s = q.s, c = q.c, from = q.from })
    end)
  end)

  it("skips an unknown symbol once and stores the others", function()
    local t = tester({ symbols = { "BTC/USDT", "DOGE/USDT" } })
    local ok, err = t.collector:run_once("order_book")
    assert.is_true(ok, err)
    ok = t.collector:run_once("order_book")
    assert.is_true(ok)
    local books = t:rows("order_books")
    assert.equal(1, #books)
    assert.equal("BTC/USDT", books[1].symbol)
    assert.equal(0, t.collector.breaker:status().failure_count)
    local st = xstats.exchanges({ t.collector })
    assert.same({ { symbol = "DOGE/USDT", reason = "unknown symbol" } }, st.exchanges.fakex.skipped_symbols)
    t:close()
  end)

  it("rejects a crossed book with its reason", function()
    book_answer = '{"ts":1717199999900,"bids":[["101","1"]],"asks":[["100","1"]]}'
    testing.with({ collector = exchange.define(fake_adapter()), responses = routes(), strict = false,
      config = { symbols = { "BTC/USDT" } } }, function(t)
      local ok, err = t.collector:run_once("order_book")
      assert.is_true(ok, err)
      assert.equal(0, #t:rows("order_books"))
      local rej = t.store:rejects("order_books")
      assert.equal(1, #rej)
      assert.equal("validation failed: crossed book: best bid 101 >= best ask 100", rej[1].reason)
    end)
  end)

  it("shares one breaker: a ban stops every dataset", function()
    testing.with({ collector = exchange.define(fake_adapter()), config = { symbols = { "BTC/USDT" } },
      responses = { { path = "/tickers", status = 403, body = "forbidden" } } }, function(t)
      local c = t.collector
      assert.is_false((c:run_once("tickers")))
      assert.equal("open", c.breaker:state())
      local n = #t:requests()
      local ok, err = c:run_once("order_book")
      assert.is_false(ok)
      assert.equal("skipped: circuit breaker fakex is open", err)
      assert.equal(n, #t:requests())
      assert.equal("circuit_open", (c:health()))
    end)
  end)

  it("backfills klines and funding history by page, each page once", function()
    testing.with({ collector = exchange.define(fake_adapter()), responses = routes(),
      config = { symbols = { "BTC/USDT:USDT" }, backfill_step = 600 } }, function(t)
      local from = NOW / 1000 - 3 * 600 -- three windows of 10 minutes
      local rows, run = assert(t:backfill(from, NOW / 1000))
      assert.equal(3, run.status.windows_done)
      assert.equal(30, #rows.klines)
      for i, k in ipairs(rows.klines) do
        assert.equal(from * 1000 + (i - 1) * 60000, k.open_time)
        assert.equal(price(k.open_time), k.close)
        assert.equal("1m", k.interval)
      end
      -- 10 candles a window, 5 a page: 2 full pages and an empty one, per window
      local pages, seen = 0, {}
      for _, r in ipairs(run.requests) do
        if r.path == "/klines" then
          pages = pages + 1
          assert.is_nil(seen[r.query_string])
          seen[r.query_string] = true
        end
      end
      assert.equal(9, pages)
      -- funding: no settlement in the range (the next is at NOW, excluded), one request a window
      assert.equal(0, #rows.funding_rates)
      local fh = 0
      for _, r in ipairs(run.requests) do if r.path == "/fundinghist" then fh = fh + 1 end end
      assert.equal(3, fh)
    end)
  end)

  it("backfills 90 days of settlements exactly", function()
    testing.with({ collector = exchange.define(fake_adapter()), responses = routes(),
      config = { symbols = { "BTC/USDT:USDT" }, backfill_datasets = { "funding_history" } } }, function(t)
      local to = NOW / 1000
      local rows, run = assert(t:backfill(to - 90 * 86400, to))
      assert.equal(90 * 3, #rows.funding_rates)
      for i, f in ipairs(rows.funding_rates) do
        assert.equal(NOW - 90 * 86400000 + (i - 1) * H8, f.funding_time)
      end
      -- a day a window: 3 settlements, pages of 2: 2 requests a window
      assert.equal(90 * 2, #run.requests)
      local _, again = assert(t:backfill(to - 90 * 86400, to))
      assert.equal(0, #again.requests)
    end)
  end)

  it("migrates binance_klines' old klines table before defining its tables", function()
    local path = os.tmpname()
    local db = assert(store.open(path))
    local f = assert(io.open("tests/fixtures/binance_klines_v0.sql"))
    assert(db:script((f:read("*a"):gsub("CREATE TABLE sluice_", "CREATE TABLE IF NOT EXISTS sluice_")
      :gsub("CREATE INDEX sluice_", "CREATE INDEX IF NOT EXISTS sluice_"))))
    f:close()
    local t = testing.new({ collector = exchange.define(fake_adapter()), store = db,
      config = { symbols = { "BTC/USDT" } } })
    local rows = t:rows("klines")
    assert.equal(136, #rows)
    assert.same({ "binance", "spot", "BTC/USDT", "BTCUSDT", "1h", 1706400000000, "48098.17" },
      { rows[1].exchange, rows[1].market, rows[1].symbol, rows[1].raw_symbol, rows[1].interval,
        rows[1].open_time, rows[1].close })
    t:close()
    db:close()
    os.remove(path)
  end)

  it("reports statistics per exchange and per dataset", function()
    testing.with({ collector = exchange.define(fake_adapter()), responses = routes(),
      config = { symbols = { "BTC/USDT" } } }, function(t)
      assert(t:collect())
      local st = xstats.exchanges({ t.collector })
      assert.equal(1, st.total_exchanges)
      assert.equal(1, st.healthy_exchanges)
      assert.equal(0, st.failed_exchanges)
      local e = st.exchanges.fakex
      assert.equal("healthy", e.status)
      assert.equal(#t:requests(), e.total_requests)
      assert.equal(100, e.success_rate)
      assert.is_true(e.average_response_time > 0)
      assert.equal("closed", e.circuit_breaker)
      assert.equal(1, e.datasets.tickers.rows)
      assert.is_string(e.datasets.tickers.last_success)
      assert.is_true(e.datasets.tickers.lag_seconds >= 0)
      -- spot symbols only: funding has nothing to do, and says so
      assert.equal("no configured symbol is a perpetual (linear or inverse)", e.datasets.funding.idle)
      assert.equal(0, e.datasets.funding.rows)

      -- /status and /metrics show them
      local c = t.collector
      local view = operator.new({ current = function() return { order = { c }, collectors = { fakex = c } } end })
      local body = view:status()
      assert.equal(1, body.exchanges.total_exchanges)
      assert.equal(#t:requests(), body.exchanges.exchanges.fakex.total_requests)
      local saved = app.current
      app.current = { order = { c }, collectors = { fakex = c } }
      local ok, text = pcall(metrics.render)
      app.current = saved
      assert(ok, text)
      assert.matches('\nsluice_exchanges{status="total"} 1\n', text)
      assert.matches('\nsluice_exchanges{status="healthy"} 1\n', text)
      assert.matches('\nsluice_exchange_success_rate{exchange="fakex"} 100\n', text)
      assert.matches('\nsluice_exchange_response_time_seconds_count{exchange="fakex"} ' .. #t:requests() .. '\n', text)
      assert.matches('\nsluice_dataset_lag_seconds{collector="fakex",dataset="tickers"} %d', text)
      assert.is_nil(text:find('sluice_dataset_lag_seconds{collector="fakex",dataset="funding"}', 1, true))
    end)
  end)
end)

-- How many entries of the log ring say msg (for collector name).
local function logged(msg, name)
  local n = 0
  for _, e in ipairs(log.recent()) do
    if e.msg == msg and e.collector == name then n = n + 1 end
  end
  return n
end

-- Waits (bounded) until cond() is true; returns whether it became so.
local function until_(cond, seconds)
  local deadline = sluice.now() + (seconds or 5)
  while not cond() do
    if sluice.now() > deadline then return false end
    sluice.sleep(0.005)
  end
  return true
end

describe("an exchange collector's skipped symbols", function()
  -- warnings kept in the log ring (logged() reads them), not printed
  local level
  before_each(function()
    book_answer = BOOK
    level = log.level()
    assert.is_true(log.output("/dev/null"))
    log.level("warning")
  end)
  after_each(function()
    log.level(level)
    log.output("-")
  end)

  it("runs fine when every symbol is unknown, and logs each once", function()
    testing.with({ collector = exchange.define(fake_adapter()), responses = routes(),
      config = { name = "fakex_unknown", symbols = { "DOGE/USDT", "XRP/USDT" } } }, function(t)
      for _ = 1, 3 do
        local ok, err = t.collector:run_once("order_book")
        assert.is_true(ok, err)
        assert.equal(0, err)
      end
      assert.equal(6, #t:requests())
      assert.equal(2, logged("symbol skipped", "fakex_unknown"))
      assert.equal(0, logged("some requests of the dataset failed", "fakex_unknown"))
      assert.equal(0, t.collector.breaker:status().failure_count)
    end)
  end)

  it("warns of no failure when a known and an unknown symbol are polled", function()
    testing.with({ collector = exchange.define(fake_adapter()), responses = routes(),
      config = { name = "fakex_mixed", symbols = { "BTC/USDT", "DOGE/USDT" } } }, function(t)
      for _ = 1, 2 do
        local ok, n = t.collector:run_once("order_book")
        assert.is_true(ok, n)
        assert.equal(1, n)
      end
      assert.equal(1, logged("symbol skipped", "fakex_mixed"))
      assert.equal(0, logged("some requests of the dataset failed", "fakex_mixed"))
    end)
  end)

  it("takes nil, why, \"ignored\" as a skip, logged once by the kit", function()
    local skipped_before, skipped_after
    local over = {
      order_book = function(ex, c, _, sym)
        skipped_before = ex.skipped(c, sym)
        local data = assert(c:get(ex.base(c, sym.market) .. "/book", { query = { s = sym.raw } }))
        skipped_after = ex.skipped(c, sym)
        if data.code == "UNKNOWN_SYMBOL" then return nil, "delisted", "ignored" end
        return { ts = data.ts, bids = data.bids, asks = data.asks }
      end,
      klines = function(_, _, _, sym)
        if sym.raw ~= "BTCUSDT" then return nil, "no candles for " .. sym.raw, "ignored" end
        return {}
      end,
    }
    testing.with({ collector = exchange.define(fake_adapter(over)), responses = routes(),
      config = { name = "fakex_ignored", symbols = { "DOGE/USDT" } } }, function(t)
      local ok, err = t.collector:run_once("order_book")
      assert.is_true(ok, err)
      assert.same({ false, false }, { skipped_before, skipped_after })
      ok, err = t.collector:run_once("order_book")
      assert.is_true(ok, err)
      assert.same({ true, true }, { skipped_before, skipped_after })
      assert.is_true(t.collector:run_once("klines"))
      assert.equal(2, logged("symbol skipped", "fakex_ignored"))
      local st = xstats.exchanges({ t.collector })
      local sk = st.exchanges.fakex_ignored.skipped_symbols
      table.sort(sk, function(a, b) return a.reason < b.reason end)
      assert.same({ { symbol = "DOGE/USDT", reason = "delisted" },
        { symbol = "DOGE/USDT", reason = "no candles for DOGEUSDT" } }, sk)
      -- a backfill of the symbol: no rows, no failure
      local rows, run = assert(t:backfill(NOW / 1000 - 86400, NOW / 1000, { partitions = { "DOGE/USDT" } }))
      assert.equal(0, #rows.klines)
      assert.equal(1, run.status.windows_done)
    end)
  end)
end)

describe("an exchange collector's bans and breaker", function()
  before_each(function() book_answer = BOOK end)

  it("keeps the breaker open for the limiter's ban_time on a ban without Retry-After", function()
    local a = fake_adapter()
    a.limiter = { rate = 1000, max_rate = 1000, ban_time = 600 }
    testing.with({ collector = exchange.define(a), config = { symbols = { "BTC/USDT" } },
      responses = { { path = "/tickers", status = 403, body = "forbidden" } } }, function(t)
      local before = sluice.time()
      assert.is_false((t.collector:run_once("tickers")))
      local until_t = t.collector.breaker:metrics().open_until
      assert.is_true(until_t >= before + 600 and until_t <= sluice.time() + 600, tostring(until_t - before))
    end)
    -- a configuration's limiter says it too
    testing.with({ collector = exchange.define(fake_adapter()),
      config = { symbols = { "BTC/USDT" }, limiter = { ban_time = 900 } },
      responses = { { path = "/tickers", status = 403, body = "forbidden" } } }, function(t)
      local before = sluice.time()
      assert.is_false((t.collector:run_once("tickers")))
      local until_t = t.collector.breaker:metrics().open_until
      assert.is_true(until_t >= before + 900 and until_t <= sluice.time() + 900, tostring(until_t - before))
    end)
  end)

  it("refuses at once while the breaker is open, without waiting in the limiter", function()
    local responses = routes()
    table.insert(responses, 1, { path = "/tickers", status = 418, headers = { ["Retry-After"] = "2" },
      body = "banned" })
    testing.with({ collector = exchange.define(fake_adapter()), config = { symbols = { "BTC/USDT" } },
      responses = responses },
      function(t)
        local c = t.collector
        assert.is_false((c:run_once("tickers")))
        assert.equal("open", c.breaker:state())
        local n = #t:requests()
        local t0 = sluice.now()
        local ok, err = c:run_once("order_book")
        assert.is_false(ok)
        assert.equal("skipped: circuit breaker fakex is open", err)
        assert.is_true(sluice.now() - t0 < 1, tostring(sluice.now() - t0))
        assert.equal(n, #t:requests())
        assert.equal(1, c:counters().collections_skipped)
        -- once the ban is over, the half-open trial is taken after the limiter's wait (one
        -- trial: the breaker check before the wait gave its permit back)
        local open_until = c.breaker:metrics().open_until
        assert.is_true(until_(function() return sluice.time() >= open_until end, 5))
        ok, err = c:run_once("order_book")
        assert.is_true(ok, err)
        assert.equal(1, err)
        local ho = c.breaker:status().half_open
        assert.same({ 1, 1 }, { ho.attempts, ho.successes })
        assert.equal(n + 1, #t:requests())
      end)
  end)
end)

describe("an exchange collector's concurrent calls", function()
  local SYMS = { "BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT" }

  it("fetches a run's books at once, up to the option concurrency", function()
    for _, case in ipairs{ { nil, 4 }, { 2, 2 }, { 1, 1 } } do
      local inflight, most = 0, 0
      local responses = { { path = "/book", respond = function()
        inflight = inflight + 1
        if inflight > most then most = inflight end
        -- held until as many as the run may ask at once are in flight (or 0.5 s)
        until_(function() return most >= case[2] end, 0.5)
        inflight = inflight - 1
        return 200, BOOK
      end } }
      testing.with({ collector = exchange.define(fake_adapter()), responses = responses,
        config = { symbols = SYMS, concurrency = case[1] } }, function(t)
        local t0 = sluice.now()
        local ok, n = t.collector:run_once("order_book")
        assert.is_true(ok, n)
        assert.equal(4, n)
        assert.equal(case[2], most)
        if case[2] == 4 then assert.is_true(sluice.now() - t0 < 0.5) end
        local got = {}
        for i, b in ipairs(t:rows("order_books")) do got[i] = b.symbol end
        assert.same({ "BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT" }, got)
      end)
    end
  end)

  it("checks the option concurrency", function()
    local tt = testing.new({ collector = exchange.define(fake_adapter()),
      config = { symbols = { "BTC/USDT" }, concurrency = 0 } })
    local ok, err = tt:collect()
    tt:close()
    assert.is_nil(ok)
    assert.matches("init failed: option 'concurrency' must be an integer in [1, 100], got 0", err, 1, true)
  end)

  it("kills a run's requests with the run", function()
    local arrived, held = 0, {}
    local responses = { { path = "/book", respond = function()
      arrived = arrived + 1
      held[#held + 1] = sluice.current()
      sluice.park(10)
      return 200, BOOK
    end } }
    testing.with({ collector = exchange.define(fake_adapter()), responses = responses, strict = false,
      config = { symbols = SYMS, concurrency = 2, run_budget = { wall = 0.3 } } }, function(t)
      local killed = sluice.tasks().killed
      local ok, err = t.collector:run_once("order_book")
      assert.is_false(ok)
      assert.matches("exceeded its wall%-clock deadline", err)
      assert.equal(2, arrived)
      -- its two workers: killed with the run's budget region, their
      -- requests cancelled (the run itself fails in its caller's task)
      assert.is_true(until_(function() return sluice.tasks().killed - killed >= 2 end, 2))
      assert.equal(2, sluice.tasks().killed - killed)
      -- answered now, nobody asks for the other two books
      for _, h in ipairs(held) do sluice.unpark(h) end
      held = {}
      local again = sluice.spawn(function() return t.collector:run_once("tickers") end)
      assert.is_true(until_(function() return sluice.status(again) ~= "waiting" and sluice.status(again) ~= "ready" end))
      assert.equal(2, arrived)
      assert.equal(0, #t:rows("order_books"))
    end)
  end)
end)
