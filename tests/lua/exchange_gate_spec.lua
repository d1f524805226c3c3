-- The gate exchange collector: Gate API v4's recorded answers (ccxt's
-- fixtures) parsed field by field against ccxt's parsedResponse, the mock's
-- protocol (recorded bodies byte for byte, errors, quota headers, bans), and
-- the collector's datasets run against the mock through sluice.exchange.
local http = require "sluice.http"
local json = require "sluice.json"
local bignum = require "sluice.bignum"
local gate = require "sluice.exchange.gate"
local mock = require "sluice.mock.gate"

local FIXTURES = "tests/fixtures/ccxt/gate.json"
local NOW = 1710327648000 -- 2024-03-13 11:00:48 UTC: the recorded trade's second

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local DOC = assert(json.decode(read(FIXTURES)))

local function entry(method)
  for _, e in ipairs(DOC.entries) do
    if e.method == method then return e end
  end
  error("no fixture entry " .. method)
end

-- The fixture file without whitespace between tokens: a body served byte
-- for byte is a substring of it.
local function compact(s)
  local out, i = {}, 1
  while i <= #s do
    local c = s:sub(i, i)
    if c == '"' then
      local j = i + 1
      while s:sub(j, j) ~= '"' do j = j + (s:sub(j, j) == "\\" and 2 or 1) end
      out[#out + 1] = s:sub(i, j)
      i = j + 1
    else
      if not c:match("%s") then out[#out + 1] = c end
      i = i + 1
    end
  end
  return table.concat(out)
end
local COMPACT = compact(read(FIXTURES))

-- a decimal text equal in value to ccxt's number
local function same_value(ccxt, text)
  assert.is_string(text)
  assert.equal(0, bignum.cmp(text, ccxt), text .. " vs " .. tostring(ccxt))
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
  return assert(http.get(m.url .. path, { query = query }))
end

describe("gate adapter parsers, against ccxt's recorded responses", function()
  it("fetchTicker (spot): every field ccxt parsed from the raw ticker", function()
    local e = entry("fetchTicker")
    local p = e.parsedResponse
    local f = gate.parse_ticker("spot", e.httpResponse[1], 1710327648250)
    assert.equal("73373.9", f.last)
    same_value(p.last, f.last)
    same_value(p.bid, f.bid)
    same_value(p.ask, f.ask)
    same_value(p.high, f.high)
    same_value(p.low, f.low)
    same_value(p.baseVolume, f.base_volume)
    same_value(p.quoteVolume, f.quote_volume)
    assert.equal("3410.0783503636", f.base_volume)
    -- bidVolume/askVolume null: Gate sends no sizes in this answer
    assert.equal(json.null, p.bidVolume)
    assert.is_nil(f.bid_size)
    assert.is_nil(f.ask_size)
    -- ccxt's oddities (tests/fixtures/README.md): open derived from
    -- change_percentage (a double), timestamp null; Gate sends neither
    assert.equal(72140.30085537312, p.open)
    assert.is_nil(f.open)
    assert.equal(json.null, p.timestamp)
    assert.equal(1710327648250, f.ts)
    assert.is_nil(f.mark)
    assert.is_nil(f.index)
  end)

  it("fetchOHLCV (spot): Gate's [t, quote_volume, close, high, low, open, base_volume, closed]", function()
    local e = entry("fetchOHLCV")
    local raw, p = e.httpResponse[1], e.parsedResponse[1]
    local f = gate.parse_candle("spot", raw, "1h")
    assert.equal(p[1], f.open_time)
    assert.equal(1710327600000, f.open_time)
    assert.equal(1710331199999, f.close_time)
    same_value(p[2], f.open)
    same_value(p[3], f.high)
    same_value(p[4], f.low)
    same_value(p[5], f.close)
    same_value(p[6], f.volume)
    assert.same({ "73236.9", "73435.8", "73236.3", "73408.9", "13.53020576", "992134.61604178" },
      { f.open, f.high, f.low, f.close, f.volume, f.quote_volume })
    assert.equal("1h", f.interval)
  end)

  it("fetchFundingRates (inverse): rate, predicted rate, next funding time, mark, index, interval", function()
    local e = entry("fetchFundingRates")
    local p = e.parsedResponse["BTC/USD:BTC"]
    local f = gate.parse_contract(e.httpResponse[1], 1741356000000)
    same_value(p.fundingRate, f.rate)
    same_value(p.nextFundingRate, f.predicted_rate)
    -- ccxt names funding_next_apply fundingTimestamp (nextFundingTimestamp null)
    assert.equal(p.fundingTimestamp, f.next_funding_time)
    assert.equal(1741363200000, f.next_funding_time)
    same_value(p.markPrice, f.mark)
    assert.equal("8h", p.interval)
    assert.equal("8", f.interval_hours)
    -- ccxt's oddity: index_price "89025.82000000001" read as a double is 89025.82
    assert.equal("89025.82000000001", f.index)
    assert.equal(p.indexPrice, tonumber(f.index))
    assert.equal(1, bignum.cmp(f.index, p.indexPrice))
  end)

  it("futures order book levels {p, s} keep Gate's text; current is seconds", function()
    local b = gate.parse_book("linear", assert(json.decode(
      '{"id":7,"current":1710327648.123,"update":1710327648.1,'
      .. '"asks":[{"p":"73364.2","s":12}],"bids":[{"p":"73364.1","s":3}]}')))
    assert.same({ ts = 1710327648123, sequence = 7, bids = { { "73364.1", "3" } },
      asks = { { "73364.2", "12" } } }, b)
    local s = gate.parse_book("spot", assert(json.decode(
      '{"id":9,"current":1710327648123,"update":1710327648100,'
      .. '"asks":[["73364.2","0.50"]],"bids":[["73364.1","1.0"]]}')))
    assert.same({ ts = 1710327648123, sequence = 9, bids = { { "73364.1", "1.0" } },
      asks = { { "73364.2", "0.50" } } }, s)
  end)

  it("maps unified symbols to Gate's", function()
    assert.equal("BTC_USDT", gate.raw_symbol("spot", "BTC/USDT"))
    assert.equal("BTC_USDT", gate.raw_symbol("linear", "BTC/USDT:USDT"))
    assert.equal("BTC_USD", gate.raw_symbol("inverse", "BTC/USD:BTC"))
  end)
end)

describe("gate classify", function()
  local function res(status, body)
    return { status = status, body = body, headers = {},
      json = function(self) return json.decode(self.body) end }
  end
  it("maps Gate's labels to verdicts", function()
    assert.same({ "ignored", "Gate error INVALID_CURRENCY_PAIR: Invalid currency pair XXX_USDT" },
      { gate.classify(nil, res(400, '{"label":"INVALID_CURRENCY_PAIR","message":"Invalid currency pair XXX_USDT"}')) })
    assert.same({ "ignored", "Gate error CONTRACT_NOT_FOUND: Contract not found" },
      { gate.classify(nil, res(400, '{"label":"CONTRACT_NOT_FOUND","message":"Contract not found"}')) })
    assert.same({ "throttled", "Gate error TOO_MANY_REQUESTS: Request Rate limit Exceeded" },
      { gate.classify(nil, res(429, '{"label":"TOO_MANY_REQUESTS","message":"Request Rate limit Exceeded"}')) })
    assert.same({ "banned", "Gate HTTP 403 (IP blocked)" },
      { gate.classify(nil, res(403, "<html>403 Forbidden</html>")) })
    -- the status decides (retried 5xx, a 4xx not); the label explains
    assert.same({ nil, "Gate error SERVER_ERROR: Internal server error" },
      { gate.classify(nil, res(500, '{"label":"SERVER_ERROR","message":"Internal server error"}')) })
    assert.same({ nil, "Gate error INVALID_PARAM_VALUE: bad" },
      { gate.classify(nil, res(400, '{"label":"INVALID_PARAM_VALUE","message":"bad"}')) })
    assert.same({}, { gate.classify(nil, res(200, '[]')) })
  end)
end)

describe("sluice.mock.gate", function()
  it("serves the recorded bodies byte for byte", function()
    local m = start{ fixtures = FIXTURES }
    local r = get(m, "/api/v4/spot/tickers", { currency_pair = "BTC_USDT" })
    assert.equal(200, r.status)
    assert.equal(json.encode(entry("fetchTicker").httpResponse), json.encode(json.decode(r.body)))
    assert.truthy(COMPACT:find('"httpResponse":' .. r.body .. ',', 1, true))
    r = get(m, "/api/v4/spot/candlesticks",
      { currency_pair = "BTC_USDT", interval = "1h", from = 1710327600, to = 1710327600 })
    assert.equal('[["1710327600","992134.61604178","73408.9","73435.8","73236.3","73236.9",'
      .. '"13.53020576","false"]]', r.body)
    assert.truthy(COMPACT:find('"httpResponse":' .. r.body .. ',', 1, true))
    r = get(m, "/api/v4/futures/btc/contracts", { limit = 1000, offset = 0 })
    assert.equal(json.encode(entry("fetchFundingRates").httpResponse), json.encode(json.decode(r.body)))
    assert.truthy(COMPACT:find('"httpResponse":' .. r.body .. ',', 1, true))
  end)

  it("answers Gate's error bodies and quota headers", function()
    local m = start{ limit = 2, ban_after = 1, ban_seconds = 30 }
    local r = get(m, "/api/v4/spot/tickers", { currency_pair = "XXX_USDT" })
    assert.equal(400, r.status)
    assert.equal('{"label":"INVALID_CURRENCY_PAIR","message":"Invalid currency pair XXX_USDT"}', r.body)
    assert.equal("2", r.headers["x-gate-ratelimit-limit"])
    assert.equal("1", r.headers["x-gate-ratelimit-requests-remain"])
    assert.equal("1710327648000", r.headers["x-gate-ratelimit-reset-timestamp"])
    r = get(m, "/api/v4/futures/usdt/order_book", { contract = "NOPE_USDT" })
    assert.equal(400, r.status)
    assert.equal('{"label":"CONTRACT_NOT_FOUND","message":"Contract not found"}', r.body)
    r = get(m, "/api/v4/spot/tickers")
    assert.equal(200, r.status)
    assert.equal("0", r.headers["x-gate-ratelimit-requests-remain"])
    r = get(m, "/api/v4/spot/tickers")
    assert.equal(429, r.status)
    assert.equal('{"label":"TOO_MANY_REQUESTS","message":"Request Rate limit Exceeded"}', r.body)
    assert.equal("1710327650000", r.headers["x-gate-ratelimit-reset-timestamp"])
    r = get(m, "/api/v4/spot/tickers")
    assert.equal(403, r.status)
    -- the block covers every endpoint
    assert.equal(403, get(m, "/api/v4/futures/usdt/tickers").status)
    r = get(m, "/api/v4/spot/candlesticks", { currency_pair = "BTC_USDT", interval = "1m",
      from = 1, to = 2, limit = 3 })
    assert.equal(403, r.status)
  end)

  it("refuses limit with from/to and windows over 1000 spot points", function()
    local m = start()
    local r = get(m, "/api/v4/spot/candlesticks", { currency_pair = "BTC_USDT", interval = "1m",
      from = 1710000000, to = 1710000600, limit = 3 })
    assert.equal(400, r.status)
    assert.equal("INVALID_PARAM_VALUE", json.decode(r.body).label)
    r = get(m, "/api/v4/spot/candlesticks", { currency_pair = "BTC_USDT", interval = "1m",
      from = 1710000000, to = 1710000000 + 1000 * 60 })
    assert.equal(400, r.status)
    r = get(m, "/api/v4/spot/candlesticks", { currency_pair = "BTC_USDT", interval = "1m",
      from = 1710000000, to = 1710000000 + 999 * 60 })
    assert.equal(200, r.status)
    assert.equal(1000, #json.decode(r.body))
  end)
end)
