-- sluice.paginate: the three cursor shapes against paged APIs served by a
-- sluice.server on loopback from recorded responses (tests/fixtures):
-- Binance spot klines (time cursor), Bybit v5 option tickers paged by an
-- opaque cursor, MEV-Boost relay bid traces paged backwards by slot.
local server = require "sluice.server"
local collector = require "sluice.collector"
local json = require "sluice.json"
local paginate = require "sluice.paginate"

local function read_json(path)
  local f = assert(io.open(path))
  local doc = assert(json.decode(f:read("*a")))
  f:close()
  return doc
end

local function entry(file, method, first_input)
  for _, e in ipairs(read_json(file).entries) do
    local i1 = e.input[1]
    if type(i1) == "table" then i1 = i1[1] end
    if e.method == method and i1 == first_input then return e end
  end
  error("fixture not found: " .. method)
end

-- Binance: the recorded 1h spot candles of BTC/USDT (3 rows, opens
-- 1706630400000, 1706634000000, 1706637600000).
local KLINES = entry("tests/fixtures/ccxt/binance.json", "fetchOHLCV", "BTC/USDT").httpResponse
-- Bybit: the recorded option tickers (3 rows) and their envelope.
local TICKERS = entry("tests/fixtures/ccxt/bybit.json", "fetchTickers", "BTC/USDT:USDT-250530-70000-C").httpResponse
-- Relay: the recorded bid traces, of one slot; the relay's ledger below
-- gives each of the first ten a slot of its own, as proposer_payload_delivered
-- lists one payload per delivered slot (6214253 and 6214249 missed).
local TRACES = read_json("tests/fixtures/mev-relays/builder_blocks_received_slot_6214255.json").response
local SLOTS = { 6214255, 6214254, 6214252, 6214251, 6214250, 6214248, 6214247, 6214246, 6214245, 6214244 }

local function api()
  local a = { queries = {}, fail = {} }
  a.srv = assert(server.listen({ port = 0 }))
  a.url = "http://127.0.0.1:" .. a.srv.port
  local function seen(req)
    a.queries[#a.queries + 1] = req.query
    local f = a.fail[#a.queries]
    if f then return f end
  end
  -- Binance: open time >= startTime, <= endTime, at most limit rows
  -- (a.overlap = 1 answers from startTime - 1: a server that repeats the
  -- boundary row)
  a.srv:route("GET", "/api/v3/klines", function(req)
    local f = seen(req)
    if f then return f[1], f[2] end
    local q = req.query
    local from, to, limit = tonumber(q.startTime) - (a.overlap or 0), tonumber(q.endTime), tonumber(q.limit)
    local out = json.array()
    for _, k in ipairs(KLINES) do
      if k[1] >= from and (not to or k[1] <= to) and #out < limit then out[#out + 1] = k end
    end
    return 200, assert(json.encode(out)), { ["content-type"] = "application/json" }
  end)
  -- Bybit v5: limit rows per page, nextPageCursor opaque ("" on the last)
  a.srv:route("GET", "/v5/market/instruments-info", function(req)
    local f = seen(req)
    if f then return f[1], f[2] end
    local q = req.query
    local at = q.cursor and tonumber(q.cursor:match("^p(%d+)$")) - (a.overlap or 0) or 1
    local limit = tonumber(q.limit)
    local list = json.array()
    for i = at, math.min(at + limit - 1, #TICKERS.result.list) do list[#list + 1] = TICKERS.result.list[i] end
    local nxt = at + limit <= #TICKERS.result.list and ("p" .. (at + limit)) or ""
    if a.stuck then nxt = "p1" end
    return 200, assert(json.encode({ retCode = TICKERS.retCode, retMsg = TICKERS.retMsg,
      result = { category = TICKERS.result.category, list = list, nextPageCursor = nxt },
      retExtInfo = TICKERS.retExtInfo, time = TICKERS.time })), { ["content-type"] = "application/json" }
  end)
  -- the relay: slot <= cursor (a.overlap = 1: <= cursor + 1), newest first
  a.srv:route("GET", "/relay/v1/data/bidtraces/proposer_payload_delivered", function(req)
    local f = seen(req)
    if f then return f[1], f[2] end
    local q = req.query
    local cursor, limit = q.cursor and tonumber(q.cursor) + (a.overlap or 0), tonumber(q.limit)
    local out = json.array()
    for i, slot in ipairs(SLOTS) do
      if (not cursor or slot <= cursor) and #out < limit then
        local t = {}
        for k, v in pairs(TRACES[i]) do t[k] = v end
        t.slot, t.timestamp, t.timestamp_ms = tostring(slot), nil, nil
        out[#out + 1] = t
      end
    end
    return 200, assert(json.encode(out)), { ["content-type"] = "application/json" }
  end)
  return a
end

local function instance(url)
  return collector.new(collector.define{
    name = "paged", base_url = url, interval = 3600, limiter = false,
    retry = { strategy = "fixed", base_delay = 0.01, max_attempts = 2, budget = false },
    collect = function() return {} end,
  })
end

local function times(rows)
  local out = {}
  for i, r in ipairs(rows) do out[i] = r[1] end
  return out
end

describe("sluice.paginate.time", function()
  local a, c
  before_each(function() a = api(); c = instance(a.url) end)
  after_each(function() a.srv:close() end)

  local OPTS = { query = { symbol = "BTCUSDT", interval = "1h" }, from = 1706628191000, limit = 2 }

  it("advances startTime past the last row until a short page", function()
    local rows, info = paginate.time(c, "/api/v3/klines", OPTS)
    assert.same(KLINES, rows)
    assert.same({ pages = 2 }, info)
    assert.same({
      { symbol = "BTCUSDT", interval = "1h", startTime = "1706628191000", limit = "2" },
      { symbol = "BTCUSDT", interval = "1h", startTime = "1706634000001", limit = "2" },
    }, a.queries)
  end)

  it("sends endTime and stops there", function()
    local rows = paginate.time(c, "/api/v3/klines", {
      query = OPTS.query, from = OPTS.from, to = 1706637599999, limit = 2 })
    assert.same({ 1706630400000, 1706634000000 }, times(rows))
    assert.same({ "1706637599999", "1706637599999" }, { a.queries[1].endTime, a.queries[2].endTime })
    assert.equal(2, #a.queries)
    -- a to reached by the cursor ends the walk without another request
    a.queries = {}
    rows = paginate.time(c, "/api/v3/klines", {
      query = OPTS.query, from = OPTS.from, to = 1706634000000, limit = 2 })
    assert.same({ 1706630400000, 1706634000000 }, times(rows))
    assert.equal(1, #a.queries)
  end)

  it("keeps no row twice when the server repeats the boundary row", function()
    a.overlap = 1
    local rows, info = paginate.time(c, "/api/v3/klines", OPTS)
    assert.same({ 1706630400000, 1706634000000, 1706637600000 }, times(rows))
    -- page 2 is full (rows 2 and 3), page 3 brings row 3 again, short: the end
    assert.same({ pages = 3 }, info)
    assert.same({ "1706628191000", "1706634000001", "1706637600001" },
      { a.queries[1].startTime, a.queries[2].startTime, a.queries[3].startTime })
  end)

  it("fails when a page fails, with the rows before only as partial", function()
    a.fail[2] = { 400, '{"code":-1121,"msg":"Invalid symbol."}' }
    local rows, err, kind, partial = paginate.time(c, "/api/v3/klines", OPTS)
    assert.is_nil(rows)
    assert.equal("HTTP 400", err)
    assert.equal("failure", kind)
    assert.same({ rows = { KLINES[1], KLINES[2] }, pages = 1, cursor = 1706634000001 }, partial)
    assert.equal(2, #a.queries)
  end)

  it("stops at max_pages with an error, not as if done", function()
    local rows, err, kind, partial = paginate.time(c, "/api/v3/klines",
      { query = OPTS.query, from = OPTS.from, limit = 1, max_pages = 2 })
    assert.is_nil(rows)
    assert.equal("paginate: /api/v3/klines: stopped after 2 pages (max_pages) before the last page", err)
    assert.equal("max_pages", kind)
    assert.same({ rows = { KLINES[1], KLINES[2] }, pages = 2, cursor = 1706634000001 }, partial)
    assert.equal(2, #a.queries)
  end)

  it("refuses a missing from or limit, and unknown options", function()
    assert.error_matches(function() paginate.time(c, "/api/v3/klines", { limit = 2 }) end,
      "sluice.paginate.time: option 'from' is required", 1, true)
    assert.error_matches(function() paginate.time(c, "/api/v3/klines", { from = 1 }) end,
      "sluice.paginate.time: option 'limit' is required", 1, true)
    assert.error_matches(function() paginate.time(c, "/api/v3/klines", { from = 1, limit = 2, maxpages = 1 }) end,
      "sluice.paginate.time: unknown option 'maxpages'", 1, true)
    assert.equal(0, #a.queries)
  end)
end)

describe("sluice.paginate.cursor", function()
  local a, c
  before_each(function() a = api(); c = instance(a.url) end)
  after_each(function() a.srv:close() end)

  local OPTS = { query = { category = "option" }, limit = 2, rows = "result.list", next = "result.nextPageCursor" }

  it("follows nextPageCursor until it is empty", function()
    local rows, info = paginate.cursor(c, "/v5/market/instruments-info", OPTS)
    assert.same(TICKERS.result.list, rows)
    assert.same({ pages = 2 }, info)
    assert.same({ { category = "option", limit = "2" }, { category = "option", limit = "2", cursor = "p3" } },
      a.queries)
  end)

  it("fails on a cursor that comes back (the API would loop)", function()
    a.stuck = true
    local rows, err, kind, partial = paginate.cursor(c, "/v5/market/instruments-info", OPTS)
    assert.is_nil(rows)
    assert.equal("paginate: /v5/market/instruments-info: the cursor p1 came back (the API would loop)", err)
    assert.equal("protocol", kind)
    -- the first page only: the page that repeated the cursor is not counted
    assert.same({ rows = { TICKERS.result.list[1], TICKERS.result.list[2] }, pages = 1, cursor = "p1" }, partial)
    assert.equal(2, #a.queries)
  end)

  it("drops rows whose key came already", function()
    a.overlap = 1 -- page 2 starts with page 1's last row again
    local list = TICKERS.result.list
    local rows = paginate.cursor(c, "/v5/market/instruments-info",
      { query = OPTS.query, limit = 2, rows = function(d) return d.result.list end,
        next = function(d) return d.result.nextPageCursor end, key = "symbol" })
    assert.same(list, rows)
    -- without a key, the rows are as the pages brought them
    rows = paginate.cursor(c, "/v5/market/instruments-info", OPTS)
    assert.same({ list[1], list[2], list[2], list[3] }, rows)
  end)

  it("fails on a page without a list of rows", function()
    local rows, err, kind = paginate.cursor(c, "/v5/market/instruments-info",
      { query = OPTS.query, limit = 2, rows = "result.items", next = "result.nextPageCursor" })
    assert.is_nil(rows)
    assert.equal("paginate: /v5/market/instruments-info: page 1 has no list of rows", err)
    assert.equal("protocol", kind)
  end)
end)

describe("sluice.paginate.descending", function()
  local a, c
  before_each(function() a = api(); c = instance(a.url) end)
  after_each(function() a.srv:close() end)

  local PATH = "/relay/v1/data/bidtraces/proposer_payload_delivered"

  local function slots(rows)
    local out = {}
    for i, r in ipairs(rows) do out[i] = tonumber(r.slot) end
    return out
  end

  it("pages backwards from the newest: cursor = lowest slot seen - 1, until a short page", function()
    local rows, info = paginate.descending(c, PATH, { limit = 4, key = "slot" })
    assert.same(SLOTS, slots(rows))
    assert.same({ pages = 3 }, info)
    assert.same({ { limit = "4" }, { limit = "4", cursor = "6214250" }, { limit = "4", cursor = "6214245" } },
      a.queries)
    assert.equal(TRACES[1].block_hash, rows[1].block_hash)
    assert.equal("38256216383786968", rows[1].value) -- wei, as the relay wrote it
  end)

  it("starts at from and stops below floor", function()
    local rows, info = paginate.descending(c, PATH, { limit = 3, key = "slot", from = 6214254, floor = 6214248 })
    assert.same({ 6214254, 6214252, 6214251, 6214250, 6214248 }, slots(rows))
    assert.same({ pages = 2 }, info)
    assert.same({ { limit = "3", cursor = "6214254" }, { limit = "3", cursor = "6214250" } }, a.queries)
  end)

  it("keeps no slot twice when the relay answers from above the cursor", function()
    a.overlap = 1
    local rows = paginate.descending(c, PATH, { limit = 4, key = "slot" })
    assert.same(SLOTS, slots(rows))
  end)

  it("fails when a page fails, after the retries, with the rows before only as partial", function()
    a.fail[2] = { 503, "busy" }
    a.fail[3] = { 503, "busy" }
    local rows, err, kind, partial = paginate.descending(c, PATH, { limit = 4, key = "slot" })
    assert.is_nil(rows)
    assert.equal("HTTP 503", err)
    assert.equal("failure", kind)
    assert.same({ 6214255, 6214254, 6214252, 6214251 }, slots(partial.rows))
    assert.equal(6214250, partial.cursor)
    assert.equal(3, #a.queries) -- the failed page was tried twice
  end)

  it("fails on a row without an integer key", function()
    local rows, err, kind = paginate.descending(c, PATH, { limit = 4, key = "slots" })
    assert.is_nil(rows)
    assert.equal("paginate: " .. PATH .. ": page 1 row 1 has no integer key", err)
    assert.equal("protocol", kind)
  end)
end)
