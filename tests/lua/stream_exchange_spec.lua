-- sluice.stream.exchange with the Binance and Bybit protocols, the stream
-- fed by a fake connection (support.fake_ws) speaking each exchange's
-- documented messages and the REST endpoints served by sluice.server: the
-- subscribe messages, trades stored exactly once across 3 forced
-- reconnects (REST backfill of the gap), the book resynced after a dropped
-- event and equal to the scripted market's, order_books rows, stats.
local json = require "sluice.json"
local collector = require "sluice.collector"
local server = require "sluice.server"
local store = require "sluice.store"
local exchange = require "sluice.stream.exchange"
local fake_ws = require "support.fake_ws"
local market = require "support.market"
local wait_for = require("support.wait").wait_for

local function binance_depth(ev)
  return json.encode({ stream = "btcusdt@depth@100ms", data = { e = "depthUpdate", E = ev.ts, s = "BTCUSDT",
    U = ev.first, u = ev.last, b = ev.bids, a = ev.asks } })
end

local function binance_trade(t)
  return json.encode({ stream = "btcusdt@trade", data = { e = "trade", E = t.ts, s = "BTCUSDT", t = t.id,
    p = t.price, q = t.size, T = t.ts, m = t.buyer_maker, M = true } })
end

describe("stream collectors", function()
  local c, db, srv
  after_each(function()
    if c then c:stop() end
    if srv then srv:close() end
    if db then db:close() end
    c, db, srv = nil, nil, nil
  end)

  local function rows(sql, ...) return db:query(sql, ...) end

  it("binance: subscribe, book snapshot + diffs, a dropped diff resyncs, trades once across 3 reconnects", function()
    local m = market.new()
    local snapshots = 0
    srv = server.listen{ host = "127.0.0.1", port = 0 }
    srv:route("GET", "/api/v3/depth", function(req)
      assert(req.query.symbol == "BTCUSDT" and req.query.limit == "1000")
      snapshots = snapshots + 1
      return 200, json.encode({ lastUpdateId = m.id, bids = m:levels("bids"), asks = m:levels("asks") }),
        { ["content-type"] = "application/json" }
    end)
    srv:route("GET", "/api/v3/historicalTrades", function(req)
      local from, limit = tonumber(req.query.fromId), tonumber(req.query.limit)
      local out = {}
      for id = from, math.min(#m.trades, from + limit - 1) do
        local t = m.trades[id]
        out[#out + 1] = { id = t.id, price = t.price, qty = t.size, quoteQty = "0", time = t.ts,
          isBuyerMaker = t.buyer_maker, isBestMatch = true }
      end
      return 200, json.encode(json.array(out)), { ["content-type"] = "application/json" }
    end)
    local fake = fake_ws.new()
    fake.on_send = function(conn, data)
      local msg = json.decode(data)
      if msg.method == "SUBSCRIBE" then conn:push(json.encode({ result = json.null, id = msg.id })) end
    end
    db = assert(store.open(":memory:"))
    local spec = exchange.define(require("sluice.stream.binance"), { connector = fake:connector() })
    c = collector.new(spec, { symbols = { "BTC/USDT" }, ws_url = "ws://127.0.0.1:1",
      base_url = "http://127.0.0.1:" .. srv.port, book_interval = 0.05, depth = 5, limiter = false,
      retry = { strategy = "fixed", base_delay = 0.02 }, stream_batch = { rows = 1000, age = 0.02 } },
      { store = db })
    c:start()
    wait_for("the subscribe", function() return #fake.sent == 1 end)
    assert.equal("ws://127.0.0.1:1/stream", fake.urls[1])
    assert.same({ method = "SUBSCRIBE", params = { "btcusdt@trade", "btcusdt@depth@100ms" }, id = 1 },
      json.decode(fake.sent[1]))
    local function book_status() return c:stats().stream.books["BTC/USDT"] end
    local function book_equals_market()
      local b = book_status()
      return b and b.synced and b.last_update_id == m.id and b.best_bid == tostring(tonumber(m:levels("bids")[1][1]))
        and b.best_ask == tostring(tonumber(m:levels("asks")[1][1]))
    end
    -- diffs before the snapshot: the first buffers and fetches it (at the market's id then)
    fake:push(binance_depth(m:diff()))
    wait_for("the snapshot", function() return snapshots == 1 end)
    fake:push(binance_depth(m:diff()))
    fake:push(binance_depth(m:diff()))
    wait_for("the synced book", book_equals_market)
    -- a dropped diff: the next one is a gap, which fetches a snapshot at once
    m:diff()
    fake:push(binance_depth(m:diff()))
    wait_for("the gap and the resync", function() return book_status().resyncs == 1 and snapshots == 2 end)
    wait_for("the resynced book", book_equals_market)
    fake:push(binance_depth(m:diff()))
    wait_for("the book after one more diff", book_equals_market)
    -- the order_books rows written now equal the market's top 5 levels
    local function top(side)
      local out = {}
      for i, lv in ipairs(m:levels(side)) do
        if i > 5 then break end
        out[i] = { tostring(tonumber(lv[1])), lv[2] }
      end
      return out
    end
    local want_bids, want_asks = top("bids"), top("asks")
    local row = wait_for("an order_books row at the market's id", function()
      local r = rows("SELECT * FROM order_books WHERE sequence = ? ORDER BY ts DESC LIMIT 1", m.id)[1]
      return r
    end)
    local function norm(side)
      local out = {}
      for i, lv in ipairs(json.decode(side)) do out[i] = { tostring(tonumber(lv[1])), lv[2] } end
      return out
    end
    assert.same(want_bids, norm(row.bids))
    assert.same(want_asks, norm(row.asks))
    assert.equal(want_bids[1][1], tostring(tonumber(row.best_bid)))
    assert.equal("binance", row.exchange)
    assert.equal("BTCUSDT", row.raw_symbol)
    -- no row was ever written from a book known wrong: every row's sequence is an id the market had
    for _, r in ipairs(rows("SELECT sequence FROM order_books")) do
      assert.equal(1, (r.sequence - 100) % 3 == 0 and 1 or 0, "sequence " .. tostring(r.sequence))
    end
    -- trades: some on the stream, then 3 forced reconnects with trades in between
    for _ = 1, 5 do fake:push(binance_trade(m:trade())) end
    wait_for("5 trades", function() return rows("SELECT COUNT(*) AS n FROM trades")[1].n == 5 end)
    for k = 1, 3 do
      local before = #fake.conns
      fake:drop("connection reset")
      for _ = 1, 4 do m:trade() end           -- missed: only REST has them
      wait_for("reconnect " .. k, function() return #fake.conns == before + 1 and #fake.sent == before + 1 end)
      -- the stream resumes with a trade the backfill may also have fetched
      fake:push(binance_trade(m:trade()))
      fake:push(binance_trade(m.trades[#m.trades]))  -- and a duplicate on the stream itself
    end
    local total = #m.trades
    wait_for("every trade", function() return rows("SELECT COUNT(*) AS n FROM trades")[1].n == total end)
    local got = rows("SELECT trade_id, price, size, side, ts FROM trades ORDER BY ts")
    assert.equal(total, #got)
    for i, t in ipairs(got) do
      local want = m.trades[i]
      assert.same({ tostring(want.id), tonumber(want.price), tonumber(want.size), want.buyer_maker and "sell" or "buy",
        want.ts }, { t.trade_id, tonumber(t.price), tonumber(t.size), t.side, t.ts })
    end
    local st = c:stats()
    assert.equal(3, st.stream.reconnects)
    assert.equal(4, st.stream.connects)
    assert.is_true(st.stream.connected)
    assert.equal("healthy", st.status)
  end)

  it("bybit: snapshot + deltas, a dropped delta resubscribes, trades backfilled from the recent page", function()
    local m = market.new()
    srv = server.listen{ host = "127.0.0.1", port = 0 }
    srv:route("GET", "/v5/market/recent-trade", function(req)
      assert(req.query.category == "linear" and req.query.symbol == "BTCUSDT")
      local list = {}
      for i = #m.trades, math.max(1, #m.trades - 59), -1 do
        local t = m.trades[i]
        list[#list + 1] = { execId = "e-" .. t.id, symbol = "BTCUSDT", price = t.price, size = t.size,
          side = t.buyer_maker and "Sell" or "Buy", time = tostring(t.ts), isBlockTrade = false }
      end
      return 200, json.encode({ retCode = 0, retMsg = "OK", result = { category = "linear", list = json.array(list) },
        time = 1 }), { ["content-type"] = "application/json" }
    end)
    local fake = fake_ws.new()
    local function snapshot(conn)
      conn:push(json.encode({ topic = "orderbook.50.BTCUSDT", type = "snapshot", ts = m.t0, data = { s = "BTCUSDT",
        b = m:levels("bids"), a = m:levels("asks"), u = m.id, seq = 7 }, cts = m.t0 }))
    end
    fake.on_send = function(conn, data)
      local msg = json.decode(data)
      if msg.op == "ping" then return end
      conn:push(json.encode({ success = true, ret_msg = "", conn_id = "c1", req_id = msg.req_id, op = msg.op }))
      if msg.op == "subscribe" then
        for _, a in ipairs(msg.args) do
          if a:find("^orderbook") then snapshot(conn) end
        end
      end
    end
    local function delta(ev)
      -- Bybit: one u per delta
      return json.encode({ topic = "orderbook.50.BTCUSDT", type = "delta", ts = ev.ts, data = { s = "BTCUSDT",
        b = ev.bids, a = ev.asks, u = ev.last, seq = 8 }, cts = ev.ts })
    end
    local function trade(t)
      return json.encode({ topic = "publicTrade.BTCUSDT", type = "snapshot", ts = t.ts, data = { { T = t.ts,
        s = "BTCUSDT", S = t.buyer_maker and "Sell" or "Buy", v = t.size, p = t.price, L = "PlusTick",
        i = "e-" .. t.id, BT = false } } })
    end
    -- Bybit's u advances one a delta: the market's events as single updates
    local function diff()
      local ev = m:diff()
      m.id = ev.first
      ev.last = ev.first
      return ev
    end
    db = assert(store.open(":memory:"))
    local spec = exchange.define(require("sluice.stream.bybit"), { connector = fake:connector() })
    c = collector.new(spec, { symbols = { "BTC/USDT:USDT" }, ws_url = "ws://127.0.0.1:1",
      base_url = "http://127.0.0.1:" .. srv.port, book_interval = 0.05, limiter = false,
      retry = { strategy = "fixed", base_delay = 0.02 }, stream_batch = { age = 0.02 } }, { store = db })
    c:start()
    wait_for("the subscribe", function() return #fake.sent >= 1 end)
    assert.equal("ws://127.0.0.1:1/v5/public/linear", fake.urls[1])
    assert.same({ op = "subscribe", args = { "orderbook.50.BTCUSDT", "publicTrade.BTCUSDT" }, req_id = "1.1" },
      json.decode(fake.sent[1]))
    local function book_status() return c:stats().stream.books["BTC/USDT:USDT"] end
    wait_for("the synced book", function() return book_status().synced and book_status().last_update_id == m.id end)
    fake:push(delta(diff()))
    fake:push(delta(diff()))
    wait_for("two deltas", function() return book_status().last_update_id == m.id end)
    diff() -- dropped
    fake:push(delta(diff()))
    wait_for("the resubscribe", function() return #fake.sent == 3 end)
    assert.same({ "unsubscribe", "subscribe" }, { json.decode(fake.sent[2]).op, json.decode(fake.sent[3]).op })
    wait_for("the resynced book", function()
      local b = book_status()
      return b.synced and b.last_update_id == m.id and b.resyncs == 1
    end)
    assert.equal(tostring(tonumber(m:levels("bids")[1][1])), book_status().best_bid)
    -- the REPL's books() and /status show the live book
    local app_mod = require "sluice.app"
    app_mod.current = { order = { c }, collectors = { [c.name] = c } }
    local ok, err = pcall(function()
      local v = require("sluice.repl").helpers.books().bybit_stream["BTC/USDT:USDT"]
      assert.same({ true, m.id, 1 }, { v.synced, v.last_update_id, v.resyncs })
      assert.equal(tostring(tonumber(m:levels("asks")[1][1])), v.best_ask)
      local status = require("sluice.operator").new({ current = function() return app_mod.current end }):status()
      local sv = status.collectors.bybit_stream
      assert.equal(m.id, sv.stream.books["BTC/USDT:USDT"].last_update_id)
      assert.equal("healthy", sv.status)
    end)
    app_mod.current = nil
    assert(ok, err)
    -- trades across 3 reconnects
    for _ = 1, 3 do fake:push(trade(m:trade())) end
    for k = 1, 3 do
      local before = #fake.conns
      fake:drop("connection reset")
      for _ = 1, 2 do m:trade() end
      wait_for("reconnect " .. k, function() return #fake.conns == before + 1 end)
      fake:push(trade(m:trade()))
    end
    local total = #m.trades
    wait_for("every trade", function() return db:query("SELECT COUNT(*) AS n FROM trades")[1].n == total end)
    local ids = db:query("SELECT trade_id FROM trades ORDER BY ts")
    for i, r in ipairs(ids) do assert.equal("e-" .. i, r.trade_id) end
    assert.equal(3, c:stats().stream.reconnects)
  end)

  it("refuses symbols of two markets, and a market the exchange does not stream", function()
    local spec = exchange.define(require("sluice.stream.bybit"))
    local cc = collector.new(spec, { symbols = { "BTC/USDT", "BTC/USDT:USDT" } })
    local ok, err = pcall(spec.init, cc)
    assert.is_false(ok)
    assert.equal("option 'symbols': BTC/USDT is spot and BTC/USDT:USDT is linear: one market per stream "
      .. "(configure one entry per market)", err)
    local bspec = exchange.define(require("sluice.stream.binance"))
    ok, err = pcall(bspec.init, collector.new(bspec, { symbols = { "BTC/USDT:USDT" } }))
    assert.is_false(ok)
    assert.equal("option 'symbols'[1]: BTC/USDT:USDT is a linear symbol and binance has no linear market", err)
  end)
end)
