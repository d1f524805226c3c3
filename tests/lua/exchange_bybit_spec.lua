-- collectors.bybit (sluice.exchange.bybit on the kit) against sluice.mock.bybit:
-- every recorded response of tests/fixtures/ccxt/bybit.json a dataset covers,
-- served byte for byte and compared with ccxt's parsedResponse field by
-- field; Bybit's error answers and their verdicts; the rate-limit headers;
-- the IP ban; a crossed book; a 90-day backfill of klines and funding.
local http = require "sluice.http"
local json = require "sluice.json"
local bignum = require "sluice.bignum"
local testing = require "sluice.testing"
local mock = require "sluice.mock.bybit"
local stats = require "sluice.exchange.stats"
local sluice = require "sluice"
local bybit = require "sluice.exchange.bybit"

local FIXTURES = "tests/fixtures/ccxt/bybit.json"
local RECORDINGS = mock.recordings(FIXTURES)
local PATHS = { "/v5/market/tickers", "/v5/market/orderbook", "/v5/market/kline",
  "/v5/market/funding/history" }
local DATASETS = { "tickers", "funding", "order_book", "klines" }

local function recording(method, description)
  for _, r in ipairs(RECORDINGS) do
    if r.entry.method == method and (description == nil or r.entry.description == description) then
      return r
    end
  end
  error("no recording " .. method .. " " .. tostring(description))
end

-- The mock's clock (ms), which a spec sets.
local now_ms

-- A tester of the shipped collector whose server hands every request to
-- the mock m (the tester's base_url is always its own server).
local function tester(m, config)
  local rules = {}
  for i, path in ipairs(PATHS) do
    rules[i] = { path = path, respond = function(req)
      local q = req.query_string ~= "" and "?" .. req.query_string or ""
      local res = assert(http.get(m.url .. req.path .. q))
      local headers = {}
      for k, v in pairs(res.headers) do headers[k] = v end
      return res.status, res.body, headers
    end }
  end
  return testing.new{ collector = "bybit", config = config, responses = rules }
end

-- A configuration running only the named dataset.
local function only(name, config)
  config.datasets = {}
  for _, d in ipairs(DATASETS) do
    config.datasets[d] = { enabled = d == name }
  end
  return config
end

-- Equal values: the stored decimal text and ccxt's number.
local function same(stored, parsed, what)
  assert(stored ~= nil, what .. ": nothing stored (ccxt: " .. tostring(parsed) .. ")")
  assert.are.equal(bignum.normalize(parsed), bignum.normalize(stored), what)
end

-- The bodies the mock served from the recordings, by entry index.
local function served(m)
  local out = {}
  for _, e in ipairs(m.log) do
    if e.recorded then out[#out + 1] = e.recorded end
  end
  return out
end

local function with_mock(opts, fn)
  opts.now = opts.now or function() return now_ms end
  local m = mock.start(opts)
  local ok, err = pcall(fn, m)
  m:stop()
  if not ok then error(err, 0) end
end

describe("sluice.exchange.bybit", function()
  it("maps unified symbols to Bybit's by market", function()
    assert.are.equal("BTCUSDT", bybit.raw_symbol("spot", "BTC/USDT"))
    assert.are.equal("BTCUSDT", bybit.raw_symbol("linear", "BTC/USDT:USDT"))
    assert.are.equal("BTCPERP", bybit.raw_symbol("linear", "BTC/USDC:USDC"))
    assert.are.equal("BTCUSD", bybit.raw_symbol("inverse", "BTC/USD:BTC"))
    local raw, err = bybit.raw_symbol("inverse", "BTC/USDT:USDT")
    assert.is_nil(raw)
    assert.are.equal("not a Bybit inverse perpetual or pair: BTC/USDT:USDT", err)
  end)
end)

describe("collectors.bybit on the recorded responses", function()
  it("stores both recorded order books as ccxt parsed them", function()
    for _, desc in ipairs{ "swap orderbook", "Spot orderbook" } do
      local r = recording("fetchOrderBook", desc)
      local http_res, parsed = r.entry.httpResponse, r.entry.parsedResponse
      now_ms = tonumber(http_res.time)
      with_mock({ fixtures = FIXTURES }, function(m)
        local t = tester(m, only("order_book", { symbols = { parsed.symbol }, depth = 2 }))
        local rows, run = t:collect()
        t:close()
        assert(rows, run)
        assert.are.same({ r.index }, served(m))
        -- byte for byte: the text of the fixture file's httpResponse
        local again = assert(http.get(m.url .. "/v5/market/orderbook", { query = m.log[1].query }))
        assert.are.equal(r.body, again.body)
        assert.are.equal(json.encode(http_res), json.encode(assert(json.decode(again.body))))
        local row = rows.order_books[1]
        assert.are.equal(1, #rows.order_books)
        assert.are.equal(parsed.symbol, row.symbol)
        assert.are.equal("BTCUSDT", row.raw_symbol)
        assert.are.equal(parsed.symbol:find(":") and "linear" or "spot", row.market)
        assert.are.equal(parsed.timestamp, row.ts)
        assert.are.equal(tonumber(http_res.result.u), row.sequence)
        local bids, asks = row.bids, row.asks
        for side, levels in pairs{ bids = bids, asks = asks } do
          assert.are.equal(#parsed[side], #levels)
          for i, l in ipairs(levels) do
            -- exact text as Bybit sent it, equal to ccxt's numbers
            local raw = http_res.result[side == "bids" and "b" or "a"][i]
            assert.are.same({ raw[1], raw[2] }, { l[1], l[2] })
            same(l[1], parsed[side][i][1], side .. " price " .. i)
            same(l[2], parsed[side][i][2], side .. " size " .. i)
          end
        end
        same(row.best_bid, parsed.bids[1][1], "best bid")
        same(row.best_ask, parsed.asks[1][1], "best ask")
      end)
    end
  end)

  it("stores the recorded linear ticker as ccxt parsed it", function()
    local r = recording("fetchTicker", "swap ticker")
    local http_res, parsed = r.entry.httpResponse, r.entry.parsedResponse
    local raw = http_res.result.list[1]
    now_ms = tonumber(http_res.time)
    with_mock({ fixtures = FIXTURES }, function(m)
      local t = tester(m, only("tickers", { symbols = { parsed.symbol } }))
      local rows, run = t:collect()
      t:close()
      assert(rows, run)
      assert.are.same({ r.index }, served(m))
      assert.are.equal(1, #rows.tickers)
      local row = rows.tickers[1]
      assert.are.same({ "bybit", "linear", "BTC/USDT:USDT", "BTCUSDT" },
        { row.exchange, row.market, row.symbol, row.raw_symbol })
      for col, field in pairs{ last = "last", bid = "bid", ask = "ask", bid_size = "bidVolume",
          ask_size = "askVolume", open = "open", high = "high", low = "low",
          base_volume = "baseVolume", quote_volume = "quoteVolume", mark = "markPrice",
          index = "indexPrice" } do
        same(row[col], parsed[field], col)
      end
      -- the text as Bybit wrote it, trailing zeros and all
      assert.are.same({ "51444.40", "51444.30", "51444.40", "47293.8870", "225766.793" },
        { row.last, row.bid, row.ask, row.base_volume, row.open_interest })
      -- ccxt's oddities (tests/fixtures/README.md): no timestamp for a Bybit
      -- ticker (the row's ts is the reply's time), no open interest
      assert.are.equal(json.null, parsed.timestamp)
      assert.are.equal(1707905549267, row.ts)
      assert.is_nil(parsed.openInterest)
      assert.are.equal(raw.openInterest, row.open_interest)
    end)
  end)

  it("stores both recorded funding rates as ccxt parsed them", function()
    for _, method in ipairs{ "fetchFundingRates", "fetchFundingRate" } do
      local r = recording(method)
      local http_res = r.entry.httpResponse
      local parsed = r.entry.parsedResponse
      if method == "fetchFundingRates" then parsed = parsed["BTC/USDT:USDT"] end
      now_ms = tonumber(http_res.time)
      with_mock({ fixtures = FIXTURES }, function(m)
        local t = tester(m, only("funding", { symbols = { "BTC/USDT:USDT" } }))
        local rows, run = t:collect()
        t:close()
        assert(rows, run)
        assert.are.same({ r.index }, served(m))
        assert.are.equal(1, #rows.funding_current)
        local row = rows.funding_current[1]
        assert.are.same({ "bybit", "linear", "BTC/USDT:USDT", "BTCUSDT" },
          { row.exchange, row.market, row.symbol, row.raw_symbol })
        assert.are.equal(parsed.timestamp, row.ts)
        same(row.rate, parsed.fundingRate, "rate")
        assert.are.equal(parsed.fundingTimestamp, row.next_funding_time)
        same(row.mark, parsed.markPrice, "mark")
        same(row.index, parsed.indexPrice, "index")
        assert.are.equal(json.null, parsed.nextFundingRate)
        assert.is_nil(row.predicted_rate)
        -- ccxt's "8h" comes from its market list (instruments-info), not
        -- from this reply, which has no fundingIntervalHour
        assert.are.equal("8h", parsed.interval)
        -- the recording's own: retCode and time as strings, and a list item
        -- with the reply's time as `timestamp`, which Bybit does not send
        assert.are.same({ "0", tostring(parsed.timestamp) }, { http_res.retCode, http_res.time })
        assert.are.equal(parsed.timestamp, http_res.result.list[1].timestamp)
        assert.is_nil(parsed.info.timestamp)
        assert.is_nil(http_res.result.list[1].fundingIntervalHour)
        assert.is_nil(row.interval_hours)
      end)
    end
  end)

  it("stores the recorded hourly candles as ccxt parsed them (a backfill)", function()
    local r = recording("fetchOHLCV")
    local http_res, parsed = r.entry.httpResponse, r.entry.parsedResponse
    now_ms = tonumber(http_res.time)
    with_mock({ fixtures = FIXTURES }, function(m)
      local t = tester(m, { symbols = { "BTC/USDT:USDT" }, candle = "1h",
        backfill_datasets = { "klines" } })
      -- ccxt asked since 1706628191000 (limit 3): the candles opening from
      -- the next hour on; the backfill covers exactly those three
      local from, to = parsed[1][1] / 1000, (parsed[3][1] + 3600e3) / 1000
      local rows, run = t:backfill(from, to)
      t:close()
      assert(rows, run)
      assert.are.same({ r.index }, served(m))
      assert.are.equal(1, #run.requests)
      assert.are.same({ category = "linear", symbol = "BTCUSDT", interval = "60",
        start = "1706630400000", ["end"] = "1706637600000", limit = "1000" }, run.requests[1].query)
      assert.are.equal(3, #rows.klines)
      for i, row in ipairs(rows.klines) do
        local p = parsed[i]
        assert.are.same({ "bybit", "linear", "BTC/USDT:USDT", "BTCUSDT", "1h" },
          { row.exchange, row.market, row.symbol, row.raw_symbol, row.interval })
        assert.are.equal(p[1], row.open_time)
        assert.are.equal(p[1] + 3600e3 - 1, row.close_time)
        same(row.open, p[2], "open")
        same(row.high, p[3], "high")
        same(row.low, p[4], "low")
        same(row.close, p[5], "close")
        same(row.volume, p[6], "volume")
        -- ccxt keeps no turnover: the row's quote volume is Bybit's list[6]
        local raw = http_res.result.list[4 - i]
        assert.are.equal(raw[7], row.quote_volume)
        assert.is_nil(row.trades)
      end
    end)
  end)
end)

-- Fast retries for the error specs (the shipped default waits seconds).
local RETRY = { strategy = "fixed", max_attempts = 3, base_delay = 0.01, max_delay = 0.05,
  budget = false }

local function skipped_of(c)
  local view = stats.exchanges({ c }).exchanges.bybit
  return view.skipped_symbols
end

describe("collectors.bybit on Bybit's error answers", function()
  before_each(function() now_ms = 1706803948569 end)

  it("skips an unknown symbol once (retCode 10001), the others stored, no breaker failure", function()
    with_mock({}, function(m)
      local t = tester(m, only("order_book", { symbols = { "BTC/USDT:USDT", "NOPE/USDT:USDT" },
        depth = 5 }))
      local logs = {}
      for run = 1, 2 do
        now_ms = now_ms + 1000
        local rows, err = t:collect()
        assert(rows, err)
        assert.are.equal(run, #rows.order_books)
        assert.are.equal("BTC/USDT:USDT", rows.order_books[run].symbol)
        logs[run] = #m.log
      end
      -- the unknown symbol is asked on every run, answered 10001 and skipped
      assert.are.same({ 2, 4 }, logs)
      assert.are.equal("NOPEUSDT", m.log[2].query.symbol)
      assert.are.equal(200, m.log[2].status)
      local cb = t.collector.breaker:status()
      assert.are.equal("closed", cb.state)
      assert.are.equal(0, cb.failure_count)
      assert.are.same({ { symbol = "NOPE/USDT:USDT",
        reason = "Bybit error 10001: params error: Symbol Is Invalid" } }, skipped_of(t.collector))
      t:close()
    end)
  end)

  it("skips a symbol missing from a category's tickers and one asked alone", function()
    with_mock({}, function(m)
      local t = tester(m, only("tickers", { symbols = { "BTC/USDT", "NOPE/USDT", "BTC/USD:BTC" } }))
      local rows, err = t:collect()
      assert(rows, err)
      local got = {}
      for i, r in ipairs(rows.tickers) do got[i] = r.symbol end
      table.sort(got)
      assert.are.same({ "BTC/USD:BTC", "BTC/USDT" }, got)
      -- spot: one request for the whole category; inverse: the one symbol
      local asked = {}
      for _, e in ipairs(m.log) do asked[e.query.category] = e.query.symbol or "*" end
      assert.are.same({ spot = "*", inverse = "BTCUSD" }, asked)
      -- inverse: Bybit's volume24h counts contracts (USD), turnover24h the
      -- base coin; the row keeps the unified meaning
      local raw = assert(http.get(m.url .. "/v5/market/tickers",
        { query = { category = "inverse", symbol = "BTCUSD" } })):json().result.list[1]
      local inverse = rows.tickers[1].market == "inverse" and rows.tickers[1] or rows.tickers[2]
      assert.are.same({ raw.turnover24h, raw.volume24h }, { inverse.base_volume, inverse.quote_volume })
      assert.are_not.equal(raw.turnover24h, raw.volume24h)
      assert.are.same({ { symbol = "NOPE/USDT", reason = "Bybit does not list NOPEUSDT in spot" } },
        skipped_of(t.collector))
      t:close()
    end)
  end)

  it("backs the limiter off on retCode 10006 and retries", function()
    with_mock({}, function(m)
      m:inject{ ret_code = 10006 }
      local t = tester(m, only("tickers", { symbols = { "BTC/USDT:USDT" }, retry = RETRY }))
      local rows, err = t:collect()
      assert(rows, err)
      assert.are.equal(1, #rows.tickers)
      assert.are.equal(2, #m.log)
      local lim = t.collector.limiter:stats()
      assert.are.equal(1, lim.total_violations)
      assert.are.equal(1, lim.endpoints["/v5/market/tickers"].violations)
      assert.are.equal("closed", t.collector.breaker:status().state)
      t:close()
    end)
  end)

  it("retries a 5xx and 10016, not a parameter error", function()
    with_mock({}, function(m)
      local t = tester(m, only("tickers", { symbols = { "BTC/USDT:USDT" }, retry = RETRY }))
      m:inject{ status = 502 }
      m:inject{ ret_code = 10016 }
      local rows, err = t:collect()
      assert(rows, err)
      assert.are.equal(1, #rows.tickers)
      assert.are.equal(3, #m.log)
      assert.are.same({ 502, 200, 200 }, { m.log[1].status, m.log[2].status, m.log[3].status })
      m:inject{ ret_code = 10001, ret_msg = "params error: category invalid" }
      now_ms = now_ms + 1000
      local none, why = t:collect()
      assert.is_nil(none)
      assert.matches("Bybit error 10001: params error: category invalid", why, 1, true)
      assert.are.equal(4, #m.log)
      t:close()
    end)
  end)

  it("stops every dataset on a 403 (IP ban) until it ends", function()
    with_mock({}, function(m)
      local t = tester(m, { symbols = { "BTC/USDT:USDT" }, retry = RETRY, candle = "1h",
        first_candles = 2 })
      m:ban(600)
      local c = t.collector
      local ok = c:run_once("tickers")
      assert.is_false(ok)
      assert.are.equal(1, #m.log)
      assert.are.equal(403, m.log[1].status)
      assert.are.equal("open", c.breaker:status().state)
      -- for the 10 minutes Bybit's ban lasts (the adapter's limiter ban_time)
      local left = c.breaker:metrics().open_until - sluice.time()
      assert.is_true(left > 590 and left <= 600, tostring(left))
      for _, d in ipairs{ "funding", "order_book", "klines" } do
        assert.is_false((c:run_once(d)))
      end
      assert.are.equal(1, #m.log)   -- nothing more was sent
      t:close()
    end)
  end)

  it("rejects a crossed book with its reason", function()
    with_mock({}, function(m)
      local t = tester(m, only("order_book", { symbols = { "BTC/USDT:USDT" }, depth = 3 }))
      t.strict_ = false
      m:inject{ crossed = true, path = "/v5/market/orderbook" }
      local _, run = t:collect()
      local rejects = run.rejects.order_books
      assert.are.equal(1, #rejects)
      assert.matches("best bid", rejects[1].reason, 1, true)
      assert.are.equal(0, #t:rows("order_books"))
      t:close()
    end)
  end)

  it("sets the endpoint's rate from X-Bapi-Limit and -Status", function()
    -- the exchange's clock is the wall clock in whole seconds: the
    -- X-Bapi-Limit-Reset-Timestamp of a reply while the quota lasts (its
    -- time) is then never after its Date header, as the limiter reads it
    with_mock({ endpoint_limit = 10, now = function() return math.floor(sluice.time()) * 1000 end },
      function(m)
        local t = tester(m, only("tickers", { symbols = { "BTC/USDT:USDT" } }))
        assert(t:collect())
        assert.are.equal(1, #m.log)
        assert.are.same({ "10", "9" }, { m.log[1].reply_headers["X-Bapi-Limit"],
          m.log[1].reply_headers["X-Bapi-Limit-Status"] })
        local ep = t.collector.limiter:stats().endpoints["/v5/market/tickers"]
        -- 10 a second (the adapter's window), used at 0.9 of it: 9/s
        -- where the adapter's own default is 20/s
        assert.are.equal(9, ep.rate)
        assert.are.equal(9, ep.rate_limit_remaining)
        assert.are.equal(0, ep.violations)
        t:close()
      end)
  end)
end)

describe("collectors.bybit klines", function()
  it("polls the latest candles; inverse volumes in the base coin", function()
    -- the exchange's clock stands still, so a re-fetch answers the same;
    -- daily candles, so the kit's clock (a little later) is in the same one
    now_ms = math.floor(sluice.time() * 1000)
    with_mock({}, function(m)
      local t = tester(m, only("klines", { symbols = { "BTC/USD:BTC" }, candle = "1d",
        first_candles = 3 }))
      local rows, err = t:collect()
      assert(rows, err)
      assert.are.equal(1, #m.log)
      local q = m.log[1].query
      assert.are.same({ "inverse", "BTCUSD", "D" }, { q.category, q.symbol, q.interval })
      local doc = assert(http.get(m.url .. "/v5/market/kline", { query = q })):json()
      local list = doc.result.list
      -- three candles, the newest (still open) included, oldest first
      assert.are.equal(3, #rows.klines)
      assert.are.equal(3, #list)
      for i, row in ipairs(rows.klines) do
        local k = list[4 - i]
        assert.are.equal(tonumber(k[1]), row.open_time)
        assert.are.same({ k[2], k[3], k[4], k[5], k[7], k[6] },
          { row.open, row.high, row.low, row.close, row.volume, row.quote_volume })
      end
      t:close()
    end)
  end)
end)

describe("collectors.bybit backfill", function()
  it("fetches 90 days of hourly klines and funding once per page, rows exact", function()
    now_ms = 1706803948569
    with_mock({}, function(m)
      local t = tester(m, { symbols = { "BTC/USDT:USDT" }, candle = "1h",
        backfill_datasets = { "klines", "funding_history" } })
      local to = math.floor(now_ms / 3600e3) * 3600          -- seconds, an hour boundary
      local from = to - 90 * 86400
      local rows, run = t:backfill(from, to)
      assert(rows, run)
      local log = {}
      for i, e in ipairs(m.log) do log[i] = e end
      local pages = { ["/v5/market/kline"] = {}, ["/v5/market/funding/history"] = {} }
      for _, e in ipairs(log) do
        assert.are.equal(0, e.ret_code)
        table.insert(pages[e.path], e.query)
      end
      -- klines: windows of at most 1000 candles tiling [from, to) exactly
      local kp = pages["/v5/market/kline"]
      table.sort(kp, function(a, b) return tonumber(a.start) < tonumber(b.start) end)
      local expect = from * 1000
      for _, q in ipairs(kp) do
        assert.are.equal(expect, tonumber(q.start))
        assert.is_true(tonumber(q["end"]) - tonumber(q.start) <= 999 * 3600e3)
        expect = tonumber(q["end"]) + 3600e3
      end
      assert.are.equal(to * 1000, expect)
      assert.are.equal(2160, #rows.klines)
      -- funding history: one page a window, each endTime asked once
      local fp = pages["/v5/market/funding/history"]
      local ends = {}
      for _, q in ipairs(fp) do
        assert.is_nil(ends[q.endTime])
        ends[q.endTime] = true
      end
      assert.are.equal(#kp, #fp)
      assert.are.equal(270, #rows.funding_rates)
      -- rows exact: every candle and rate is the text the mock answered
      local want_k, want_f = {}, {}
      for _, q in ipairs(kp) do
        local doc = assert(http.get(m.url .. "/v5/market/kline", { query = q })):json()
        for _, k in ipairs(doc.result.list) do want_k[tonumber(k[1])] = k end
      end
      for _, q in ipairs(fp) do
        local doc = assert(http.get(m.url .. "/v5/market/funding/history", { query = q })):json()
        for _, f in ipairs(doc.result.list) do want_f[tonumber(f.fundingRateTimestamp)] = f end
      end
      for i, row in ipairs(rows.klines) do
        local k = want_k[row.open_time]
        assert.are.equal(from * 1000 + (i - 1) * 3600e3, row.open_time)
        assert.are.same({ k[2], k[3], k[4], k[5], k[6], k[7] },
          { row.open, row.high, row.low, row.close, row.volume, row.quote_volume })
      end
      for i, row in ipairs(rows.funding_rates) do
        assert.are.equal(from * 1000 + (i - 1) * 8 * 3600e3, row.funding_time)
        assert.are.equal(want_f[row.funding_time].fundingRate, row.rate)
      end
      -- a second backfill of the range fetches nothing: it is covered
      local before = #m.log
      assert(t:backfill(from, to))
      assert.are.equal(before, #m.log)
      t:close()
    end)
  end)
end)
