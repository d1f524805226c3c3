-- collectors.bitget (sluice.exchange + sluice.exchange.bitget) against
-- sluice.mock.bitget on a sluice.testing server: every v2 recording of
-- tests/fixtures/ccxt/bitget.json a dataset covers, compared with ccxt's
-- parsedResponse; Bitget's error bodies; a ban; a crossed book; 90-day
-- backfills of klines and funding history, each page requested once.
local json = require "sluice.json"
local testing = require "sluice.testing"
local mock = require "sluice.mock.bitget"
local sluice = require "sluice"

local FIXTURES = "tests/fixtures/ccxt/bitget.json"
local H, D = 3600e3, 86400e3

local function entry(description)
  local f = assert(io.open(FIXTURES, "rb"))
  local doc = assert(json.decode(f:read("*a")))
  f:close()
  for _, e in ipairs(doc.entries) do
    if e.description == description then return e end
  end
  error("no fixture entry " .. description)
end

-- A tester of the shipped collector whose every Bitget path is answered by
-- a mock (opts: the mock's); quick retries. Returns t, m.
local function tester(config, mock_opts)
  local m = mock.start(mock_opts or { fixtures = FIXTURES })
  local rules = {}
  for _, p in ipairs(m.paths) do
    rules[#rules + 1] = { path = p, respond = function(req) return m:handle(req) end }
  end
  local c = { retry = { strategy = "fixed", base_delay = 0.01, max_attempts = 3, budget = false } }
  for k, v in pairs(config) do c[k] = v end
  local ok, t = pcall(testing.new, { collector = "bitget", config = c, responses = rules,
    strict = false })
  if not ok then
    m:stop()
    error(t, 0)
  end
  return t, m
end

local function with(config, mock_opts, fn)
  local t, m = tester(config, mock_opts)
  local ok, err = pcall(fn, t, m)
  t:close()
  m:stop()
  if not ok then error(err, 0) end
end

-- A decimal column read back: its text.
local function text(v)
  return json.numeral_text(v) or (v ~= nil and tostring(v) or nil)
end

-- Asserts a stored decimal holds the exchange's text exactly and equals
-- ccxt's parsed number.
local function same_decimal(raw, parsed, stored, what)
  assert.equal(raw, text(stored), what)
  if parsed ~= nil then assert.equal(parsed, tonumber(text(stored)), what) end
end

local function requests_to(t, p)
  local out = {}
  for _, r in ipairs(t:requests()) do
    if r.path == p then out[#out + 1] = r end
  end
  return out
end

describe("collectors.bitget: recorded responses against ccxt's parsedResponse", function()
  it("public spot ticker: /api/v2/spot/market/tickers?symbol=BTCUSDT", function()
    local e = entry("public spot ticker")
    local raw, p = e.httpResponse.data[1], e.parsedResponse
    with({ symbols = { "BTC/USDT" } }, nil, function(t)
      assert(t.collector:run_once("tickers"))
      local reqs = requests_to(t, "/api/v2/spot/market/tickers")
      assert.equal(1, #reqs)
      assert.equal("BTCUSDT", reqs[1].query.symbol)
      local rows = t:rows("tickers")
      assert.equal(1, #rows)
      local r = rows[1]
      assert.same({ "bitget", "spot", "BTC/USDT", "BTCUSDT" }, { r.exchange, r.market, r.symbol, r.raw_symbol })
      assert.equal(p.timestamp, r.ts)
      same_decimal(raw.lastPr, p.last, r.last, "last")
      same_decimal(raw.bidPr, p.bid, r.bid, "bid")
      same_decimal(raw.askPr, p.ask, r.ask, "ask")
      same_decimal(raw.bidSz, p.bidVolume, r.bid_size, "bid_size")
      same_decimal(raw.askSz, p.askVolume, r.ask_size, "ask_size")
      same_decimal(raw.open, p.open, r.open, "open")
      same_decimal(raw.high24h, p.high, r.high, "high")
      same_decimal(raw.low24h, p.low, r.low, "low")
      same_decimal(raw.baseVolume, p.baseVolume, r.base_volume, "base_volume")
      same_decimal(raw.quoteVolume, p.quoteVolume, r.quote_volume, "quote_volume")
      -- ccxt: markPrice and indexPrice null on spot; so are ours
      assert.is_nil(r.mark)
      assert.is_nil(r.index)
      assert.is_nil(r.open_interest)
    end)
  end)

  it("spot orderbook: /api/v2/spot/market/orderbook, depth 2", function()
    local e = entry("spot orderbook")
    local raw, p = e.httpResponse.data, e.parsedResponse
    with({ symbols = { "BTC/USDT" }, depth = 2 }, nil, function(t)
      assert(t.collector:run_once("order_book"))
      local q = requests_to(t, "/api/v2/spot/market/orderbook")[1].query
      assert.same({ symbol = "BTCUSDT", type = "step0", limit = "2" }, q)
      local rows = t:rows("order_books")
      assert.equal(1, #rows)
      local r = rows[1]
      assert.equal(p.timestamp, r.ts)
      assert.is_nil(r.sequence)                 -- ccxt's nonce: null
      local bids, asks = r.bids, r.asks
      if type(bids) == "string" then bids, asks = json.decode(bids), json.decode(asks) end
      for i = 1, 2 do
        same_decimal(raw.bids[i][1], p.bids[i][1], bids[i][1], "bid price " .. i)
        same_decimal(raw.bids[i][2], p.bids[i][2], bids[i][2], "bid size " .. i)
        same_decimal(raw.asks[i][1], p.asks[i][1], asks[i][1], "ask price " .. i)
        same_decimal(raw.asks[i][2], p.asks[i][2], asks[i][2], "ask size " .. i)
      end
      assert.equal(2, #bids)
      assert.equal(2, #asks)
      same_decimal("42604.36", nil, r.best_bid, "best_bid")
      same_decimal("42604.37", nil, r.best_ask, "best_ask")
    end)
  end)

  it("Fetch the funding rate: /api/v2/mix/market/current-fund-rate", function()
    local e = entry("Fetch the funding rate")
    local raw, p = e.httpResponse.data[1], e.parsedResponse
    local now = 1745500986108
    with({ symbols = { "BTC/USDT:USDT" } }, { fixtures = FIXTURES, now = function() return now end },
      function(t, m)
        assert(t.collector:run_once("funding"))
        local q = requests_to(t, "/api/v2/mix/market/current-fund-rate")[1].query
        assert.same({ symbol = "BTCUSDT", productType = "USDT-FUTURES" }, q)
        local rows = t:rows("funding_current")
        assert.equal(1, #rows)
        local r = rows[1]
        same_decimal(raw.fundingRate, p.fundingRate, r.rate, "rate")
        -- ccxt calls nextUpdate its fundingTimestamp (the next settlement)
        assert.equal(p.fundingTimestamp, r.next_funding_time)
        assert.equal(p.interval, r.interval_hours .. "h")
        assert.is_nil(r.predicted_rate)
        -- mark and index (null in ccxt's answer) from the mix ticker
        assert.equal(now, r.ts)
        local tk = requests_to(t, "/api/v2/mix/market/ticker")
        assert.equal(1, #tk)
        assert.equal(1, m:count("/api/v2/mix/market/ticker"))
        assert.is_string(text(r.mark))
        assert.is_string(text(r.index))
      end)
  end)

  it("fetchFundingRate history with a limit argument: /api/v2/mix/market/history-fund-rate", function()
    local e = entry("fetchFundingRate history with a limit argument")
    local raw, p = e.httpResponse.data[1], e.parsedResponse[1]
    local now = 1750435573219
    with({ symbols = { "BTC/USDT:USDT" }, backfill_datasets = { "funding_history" } },
      { fixtures = FIXTURES, now = function() return now end }, function(t)
        local day = math.floor(p.timestamp / D) * D
        assert(t:backfill(day / 1000, (day + D) / 1000))
        local rows = t:rows("funding_rates")
        local r
        for _, x in ipairs(rows) do if x.funding_time == p.timestamp then r = x end end
        assert.is_table(r)
        same_decimal(raw.fundingRate, p.fundingRate, r.rate, "rate")
        assert.equal(p.timestamp, r.funding_time)
        assert.equal(3, #rows)                   -- that day's three settlements
      end)
  end)

  for _, c in ipairs{
    { "Spot ohlcv", "BTC/USDT", "/api/v2/spot/market/history-candles", "1min" },
    { "linear ohlcv", "BTC/USDT:USDT", "/api/v2/mix/market/history-candles", "1m" },
    { "Inverse market ohlcv", "BTC/USD:BTC", "/api/v2/mix/market/history-candles", "1m" },
  } do
    it(c[1] .. ": " .. c[3], function()
      local e = entry(c[1])
      local raw, p = e.httpResponse.data[1], e.parsedResponse[1]
      with({ symbols = { c[2] }, candle = "1m", backfill_datasets = { "klines" } }, nil, function(t)
        local t0 = p[1]
        -- the backfill window of that day; the recorded candle's page ends with it
        assert(t:backfill(math.floor(t0 / D) * D / 1000, (math.floor(t0 / D) * D + D) / 1000))
        local r
        for _, x in ipairs(t:rows("klines")) do if x.open_time == t0 then r = x end end
        assert.is_table(r)
        assert.equal(1440, #t:rows("klines"))
        for _, q in ipairs(requests_to(t, c[3])) do assert.equal(c[4], q.query.granularity) end
        assert.equal("1m", r.interval)
        assert.equal(t0, r.open_time)
        assert.equal(t0 + 59999, r.close_time)
        same_decimal(raw[2], p[2], r.open, "open")
        same_decimal(raw[3], p[3], r.high, "high")
        same_decimal(raw[4], p[4], r.low, "low")
        same_decimal(raw[5], p[5], r.close, "close")
        same_decimal(raw[6], nil, r.volume, "volume")
        if c[2] == "BTC/USD:BTC" then
          -- ccxt oddity (fixtures README): its inverse volume is the quote volume
          assert.equal(p[6], tonumber(text(r.quote_volume)))
          assert.equal(raw[7], text(r.quote_volume))
        else
          assert.equal(p[6], tonumber(text(r.volume)))
          assert.equal(c[2] == "BTC/USDT" and raw[8] or raw[7], text(r.quote_volume))
        end
      end)
    end)
  end

  it("the page that holds only the recorded candle is its httpResponse, byte for byte", function()
    local e = entry("linear ohlcv")
    local m = mock.start{ fixtures = FIXTURES }
    local ok, err = pcall(function()
      local res = assert(require("sluice.http").get(m.url .. "/api/v2/mix/market/history-candles", {
        query = { symbol = "BTCUSDT", productType = "USDT-FUTURES", granularity = "1m",
          endTime = e.parsedResponse[1][1] + 1, limit = 1 } }))
      assert.equal(200, res.status)
      assert.equal(json.encode(e.httpResponse), res.body)
    end)
    m:stop()
    if not ok then error(err, 0) end
  end)
end)

describe("collectors.bitget: errors, limits and bans", function()
  it("skips an unknown symbol (40034) once; the others are stored, the breaker untouched", function()
    with({ symbols = { "BTC/USDT", "DOGE/USDT" } }, nil, function(t)
      assert(t.collector:run_once("order_book"))
      local books = t:rows("order_books")
      assert.equal(1, #books)
      assert.equal("BTC/USDT", books[1].symbol)
      assert(t.collector:run_once("order_book"))   -- skipped again, logged once
      local asked = requests_to(t, "/api/v2/spot/market/orderbook")
      assert.equal(4, #asked)
      assert.equal("DOGEUSDT", asked[4].query.symbol)
      assert.equal(400, asked[4].status)
      assert.equal(0, t.collector.breaker:status().failure_count)
      local st = require("sluice.exchange.stats").exchanges({ t.collector })
      assert.same({ { symbol = "DOGE/USDT", reason = "unknown symbol" } },
        st.exchanges.bitget.skipped_symbols)
      -- tickers asked for both at once: DOGE is not in the list
      assert(t.collector:run_once("tickers"))
      local rows = t:rows("tickers")
      assert.equal(1, #rows)
      assert.equal("BTC/USDT", rows[1].symbol)
      assert.equal(nil, requests_to(t, "/api/v2/spot/market/tickers")[1].query.symbol)
    end)
  end)

  it("the mock: x-mbx-used-remain-limit counts an endpoint's requests left this second", function()
    local now = 1710328245000
    local m = mock.start{ now = function() return now end, endpoint_limit = 3 }
    local ok, err = pcall(function()
      local http = require "sluice.http"
      local function get(p, q)
        local res = assert(http.get(m.url .. p, { query = q }))
        return { res.status, res.headers["x-mbx-used-remain-limit"] }, res:json()
      end
      local q = { symbol = "BTCUSDT" }
      assert.same({ 200, "2" }, (get("/api/v2/spot/market/tickers", q)))
      assert.same({ 200, "1" }, (get("/api/v2/spot/market/tickers", q)))
      assert.same({ 200, "2" }, (get("/api/v2/spot/market/orderbook", q)))  -- its own count
      assert.same({ 200, "0" }, (get("/api/v2/spot/market/tickers", q)))
      local got, body = get("/api/v2/spot/market/tickers", q)
      assert.same({ 429, "0", "429", "Too Many Requests" }, { got[1], got[2], body.code, body.msg })
      now = now + 1000
      assert.same({ 200, "2" }, (get("/api/v2/spot/market/tickers", q)))
      got, body = get("/api/v2/spot/market/tickers", { symbol = "NOPEUSDT" })
      assert.same({ 400, "40034", "Parameter NOPEUSDT does not exist" }, { got[1], body.code, body.msg })
    end)
    m:stop()
    if not ok then error(err, 0) end
  end)

  it("x-mbx-used-remain-limit drives the limiter: an endpoint with none left this second pauses", function()
    with({ symbols = { "BTC/USDT" } }, { fixtures = FIXTURES, endpoint_limit = 1 }, function(t)
      assert(t.collector:run_once("tickers"))
      local ep = t.collector.limiter:stats().endpoints["/api/v2/spot/market/tickers"]
      assert.equal(0, ep.rate_limit_remaining)
      assert.is_true(ep.in_backoff)
      -- for the rest of Bitget's one-second window, not the limiter's minute
      local left = ep.backoff_until - require("sluice").time()
      assert.is_true(left > 0 and left <= 1, tostring(left))
    end)
  end)

  it("a 429 (code 429) is throttled: the limiter backs off, the request is retried", function()
    with({ symbols = { "BTC/USDT" } }, nil, function(t, m)
      m:inject{ status = 429, path = "/api/v2/spot/market/tickers" }
      assert(t.collector:run_once("tickers"))
      assert.equal(2, m:count("/api/v2/spot/market/tickers"))
      assert.equal(1, #t:rows("tickers"))
      local ep = t.collector.limiter:stats().endpoints["/api/v2/spot/market/tickers"]
      assert.is_table(ep)
      assert.equal(1, t.collector.limiter:stats().total_violations)
    end)
  end)

  it("code 30007 in a 200 is throttled as well", function()
    with({ symbols = { "BTC/USDT" } }, nil, function(t, m)
      m:inject{ status = 200, code = "30007", msg = "request over limit",
        path = "/api/v2/spot/market/tickers" }
      assert(t.collector:run_once("tickers"))
      assert.equal(2, m:count("/api/v2/spot/market/tickers"))
      assert.equal(1, t.collector.limiter:stats().total_violations)
    end)
  end)

  it("a 5xx is retried", function()
    with({ symbols = { "BTC/USDT" } }, nil, function(t, m)
      m:inject{ status = 500, count = 2 }
      assert(t.collector:run_once("tickers"))
      assert.equal(3, m:count("/api/v2/spot/market/tickers"))
      assert.equal(1, #t:rows("tickers"))
    end)
  end)

  it("a parameter error (40017 on HTTP 400) fails without a retry", function()
    with({ symbols = { "BTC/USDT" } }, nil, function(t, m)
      m:inject{ code = "40017", msg = "Parameter verification failed" }
      local ok, err = t.collector:run_once("tickers")
      assert.is_false(ok)
      assert.matches("Bitget error 40017: Parameter verification failed", err, 1, true)
      assert.equal(1, m:count("/api/v2/spot/market/tickers"))
    end)
  end)

  it("a gateway ban (HTTP 403) opens the shared breaker: every dataset stops", function()
    with({ symbols = { "BTC/USDT", "BTC/USDT:USDT" } }, { fixtures = FIXTURES, ip_limit = 3 },
      function(t, m)
        local c = t.collector
        assert(c:run_once("tickers"))        -- 2 requests (spot, linear)
        local ok = c:run_once("order_book")  -- the third passes, the fourth is banned
        assert.is_true(ok)
        assert.equal("open", c.breaker:state())
        -- for the 5 minutes Bitget's ban lasts (the adapter's limiter ban_time)
        local left = c.breaker:metrics().open_until - sluice.time()
        assert.is_true(left > 290 and left <= 300, tostring(left))
        local n = m.requests
        local ok2, err = c:run_once("funding")
        assert.is_false(ok2)
        assert.equal("skipped: circuit breaker bitget is open", err)
        assert.equal(n, m.requests)
        assert.equal(403, m.log[#m.log].status)
      end)
  end)

  it("rejects a crossed book with its reason", function()
    with({ symbols = { "BTC/USDT" } }, nil, function(t, m)
      m:inject{ status = 200, path = "/api/v2/spot/market/orderbook",
        body = '{"code":"00000","msg":"success","requestTime":1706804094599,"data":'
          .. '{"asks":[["100.5","1"]],"bids":[["101","2"]],"ts":"1706804094602"}}' }
      assert(t.collector:run_once("order_book"))
      assert.equal(0, #t:rows("order_books"))
      local rej = t.store:rejects("order_books")
      assert.equal(1, #rej)
      assert.equal("validation failed: crossed book: best bid 101 >= best ask 100.5", rej[1].reason)
    end)
  end)
end)

describe("collectors.bitget: 90-day backfills", function()
  it("klines: 1h candles, recent ones from candles and older ones from history-candles, each once",
    function()
      with({ symbols = { "BTC/USDT:USDT" }, candle = "1h", backfill_datasets = { "klines" } }, nil,
        function(t, m)
          local to = math.floor(sluice.time() * 1000 / H) * H - D
          local from = to - 90 * D
          assert(t:backfill(from / 1000, to / 1000))
          local rows = t:rows("klines")
          assert.equal(2160, #rows)
          for i, r in ipairs(rows) do
            local want = m.kline("linear", "BTCUSDT", "1H", from + (i - 1) * H)
            assert.equal(from + (i - 1) * H, r.open_time)
            assert.same({ want[2], want[3], want[4], want[5], want[6], want[7] },
              { text(r.open), text(r.high), text(r.low), text(r.close), text(r.volume),
                text(r.quote_volume) })
          end
          -- every page asked once, the pages together exactly the 2160 candles
          local seen, candles = {}, 0
          local recent, history = 0, 0
          for _, q in ipairs(t:requests()) do
            local key = q.path .. "?" .. q.query_string
            assert.is_nil(seen[key], key)
            seen[key] = true
            candles = candles + tonumber(q.query.limit)
            if q.path == "/api/v2/mix/market/candles" then recent = recent + 1 else history = history + 1 end
            assert.equal("1H", q.query.granularity)
          end
          assert.equal(2160, candles)
          assert.is_true(recent >= 2 and history >= 4, recent .. " recent, " .. history .. " history")
          assert.equal(#t:requests(), m.requests)
        end)
    end)

  it("funding history: settlements 8 h apart, every page of 100 requested once", function()
    with({ symbols = { "BTC/USDT:USDT" }, candle = "1h", backfill_datasets = { "funding_history" } },
      nil, function(t, m)
        local now = sluice.time() * 1000
        local to = math.floor(now / (8 * H)) * 8 * H - D
        local from = to - 90 * D
        assert(t:backfill(from / 1000, to / 1000))
        local rows = t:rows("funding_rates")
        assert.equal(270, #rows)
        for i, r in ipairs(rows) do
          local ft = from + (i - 1) * 8 * H
          assert.equal(ft, r.funding_time)
          assert.equal(m.funding_rate("linear", "BTCUSDT", ft), text(r.rate))
        end
        local pages = {}
        for _, q in ipairs(t:requests()) do
          assert.equal("/api/v2/mix/market/history-fund-rate", q.path)
          assert.equal("100", q.query.pageSize)
          local n = tonumber(q.query.pageNo)
          assert.is_nil(pages[n], "page " .. n .. " twice")
          pages[n] = true
        end
        -- the newest settlement is page 1's first row: the oldest wanted is on page
        local newest = math.floor(now / (8 * H)) * 8 * H
        local last_page = math.floor((newest - from) / (8 * H) / 100) + 1
        assert.equal(last_page, #t:requests())
        for n = 1, last_page do assert.is_true(pages[n]) end
      end)
  end)
end)
