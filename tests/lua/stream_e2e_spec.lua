-- The shipped stream collectors (collectors/binance_stream, bybit_stream)
-- end to end: the real sluice.ws client against a mock exchange
-- (support/exchange_ws.py, python3-websockets) speaking Binance's and
-- Bybit's documented stream and REST protocols. The mock keeps the true
-- book at every update id (the book rebuilt from the full sequence, dropped
-- events included) and every trade, so each check compares with it.
local sluice = require "sluice"
local json = require "sluice.json"
local bignum = require "sluice.bignum"
local collector = require "sluice.collector"
local store = require "sluice.store"
local mockmod = require "support.exchange_ws"
local wait_for = require("support.wait").wait_for

local canon, levels = mockmod.canon, mockmod.levels

describe("stream collectors against a mock exchange", function()
  local mock, c, db, dbfile

  setup(function()
    mock = mockmod.start{ levels = 40 }
  end)

  teardown(function()
    if mock then mock:stop() end
  end)

  after_each(function()
    if c then c:stop() end
    if db then db:close() end
    if dbfile then os.remove(dbfile); os.remove(dbfile .. "-wal"); os.remove(dbfile .. "-shm") end
    c, db, dbfile = nil, nil, nil
  end)

  local function start(name, options, context)
    db = db or assert(store.open(":memory:"))
    local cfg = { ws_url = mock:ws(), base_url = mock:base(), limiter = false,
      retry = { strategy = "fixed", base_delay = 0.05 }, stream_batch = { age = 0.02 } }
    for k, v in pairs(options) do cfg[k] = v end
    c = collector.new(require("collectors." .. name), cfg, context or { store = db })
    c:start()
    return c
  end

  local function stream() return c:stats().stream end
  local function subs(key) return mock:control("state").subscriptions[key] or 0 end
  local function count(sql, ...) return db:query(sql, ...)[1].n end

  -- The live book (its /status view) equals the true book at id.
  local function check_status(sym, ex, raw, id, category)
    local b = stream().books[sym]
    local t = mock:control("book", { ex = ex, symbol = raw, id = id, category = category })
    assert.same({ true, id, canon(t.bids[1][1]), canon(t.asks[1][1]), #t.bids, #t.asks },
      { b.synced, b.last_update_id, canon(b.best_bid), canon(b.best_ask), b.bid_levels, b.ask_levels })
    assert.equal(canon(bignum.sub(t.asks[1][1], t.bids[1][1])), canon(b.spread))
  end

  -- An order_books row (every level: depth 1000) equals the true book at
  -- its sequence.
  local function check_row(ex, row, category)
    local t = mock:control("book", { ex = ex, symbol = row.raw_symbol, id = row.sequence, category = category })
    assert.same(levels(t.bids), levels(json.decode(row.bids)), "bids at " .. tostring(row.sequence))
    assert.same(levels(t.asks), levels(json.decode(row.asks)), "asks at " .. tostring(row.sequence))
    assert.equal(canon(t.bids[1][1]), canon(row.best_bid))
  end

  local function book_at(sym, id)
    return function()
      local b = stream().books[sym]
      return b and b.synced and b.last_update_id == id
    end
  end

  local function row_at(id)
    return function() return db:query("SELECT * FROM order_books WHERE sequence = ? LIMIT 1", id)[1] end
  end

  it("binance: REST snapshot + diffs; a dropped diff resyncs; at every step the book is the true one", function()
    start("binance_stream", { symbols = { "BTC/USDT" }, depth = 1000, book_interval = 0.05 })
    wait_for("the subscribe", function() return subs("binance:btcusdt@depth@100ms") == 1 end)
    assert.equal(1, subs("binance:btcusdt@trade"))
    local step = mock:control("step", { ex = "binance", diffs = 3 })
    wait_for("the first snapshot", book_at("BTC/USDT", step.id))
    check_status("BTC/USDT", "binance", "BTCUSDT", step.id)
    -- its row too, before the next step moves the book on (under load the
    -- next step came before the schedule wrote one: 10 rows, not 11)
    check_row("binance", wait_for("the order_books row of the first snapshot", row_at(step.id)))
    -- step 4 drops its 2nd diff (the 3rd shows the gap, the 4th asks for a
    -- snapshot); step 8 its 4th, so the gap shows on the step's last diff
    -- and no diff follows: the snapshot must come at once all the same
    local drops = { [4] = 2, [8] = 4 }
    for k = 1, 10 do
      step = mock:control("step", { ex = "binance", diffs = 5, drop = drops[k] or "" })
      assert.equal(drops[k] and 1 or 0, #step.dropped)
      wait_for("step " .. k, book_at("BTC/USDT", step.id))
      check_status("BTC/USDT", "binance", "BTCUSDT", step.id)
      check_row("binance", wait_for("the order_books row of step " .. k, row_at(step.id)))
    end
    local b = stream().books["BTC/USDT"]
    assert.equal(2, b.resyncs)
    -- one snapshot at the start, one after each gap
    assert.equal(3, mock:control("state").counts.depth)
    -- no row was written from a book known wrong: each equals the truth at its sequence
    local all = db:query("SELECT * FROM order_books ORDER BY ts")
    assert.is_true(#all >= 11, #all)
    for _, r in ipairs(all) do check_row("binance", r) end
    assert.equal("healthy", c:stats().status)
  end)

  it("binance: a REST snapshot older than the buffered diffs is fetched again; no gap is counted", function()
    -- history the collector never sees, so the lagging snapshot has somewhere to come from
    mock:control("step", { ex = "binance", symbol = "ETHUSDT", diffs = 10 })
    mock:control("config", { ex = "binance", symbol = "ETHUSDT", snapshot_lag = 6 })
    local depth0 = mock:control("state").counts.depth
    start("binance_stream", { symbols = { "ETH/USDT" }, trades = false, depth = 1000, book_interval = 0.05 })
    wait_for("the subscribe", function() return subs("binance:ethusdt@depth@100ms") == 1 end)
    local step = mock:control("step", { ex = "binance", symbol = "ETHUSDT", diffs = 3 })
    -- REST answers the book of 6 diffs ago: older than the first diff buffered
    wait_for("the old snapshot refused, every diff kept", function()
      return mock:control("state").counts.depth > depth0 and stream().books["ETH/USDT"].buffered == 3
    end)
    local b = stream().books["ETH/USDT"]
    assert.same({ false, 0 }, { b.synced, b.resyncs })
    assert.is_true(b.old_snapshots >= 1)
    assert.truthy(b.reason:match("^snapshot %d+ older than the buffered update %d+$"), b.reason)
    -- REST catches up; no diff comes, the collector asks again by itself
    mock:control("config", { ex = "binance", symbol = "ETHUSDT", snapshot_lag = 0 })
    wait_for("the book", book_at("ETH/USDT", step.id))
    check_status("ETH/USDT", "binance", "ETHUSDT", step.id)
    check_row("binance", wait_for("an order_books row", row_at(step.id)))
    assert.equal(0, stream().books["ETH/USDT"].resyncs)
    assert.is_true(mock:control("state").counts.depth - depth0 >= 2)
  end)

  it("binance: trades across 3 forced reconnects stored exactly once (historicalTrades backfill)", function()
    start("binance_stream", { symbols = { "BTC/USDT" }, books = false })
    wait_for("the subscribe", function() return subs("binance:btcusdt@trade") == 1 end)
    local before = mock:control("state").counts
    mock:control("step", { ex = "binance", trades = 5 })
    wait_for("5 trades", function() return count("SELECT COUNT(*) AS n FROM trades") == 5 end)
    for k = 1, 3 do
      -- the connection ends abruptly; 4 trades happen while no one listens
      assert.equal(1, mock:control("disconnect", { ex = "binance", trades = 4 }).closed)
      wait_for("reconnect " .. k, function()
        return stream().reconnects == k and subs("binance:btcusdt@trade") == 1
          and mock:control("state").counts.historical == before.historical + k
      end)
      -- then each trade twice on the stream (and maybe in the backfill too)
      mock:control("step", { ex = "binance", trades = 2, dup = 1 })
    end
    local truth = mock:control("trades", { ex = "binance" })
    assert.equal(23, #truth)
    wait_for("every trade", function() return count("SELECT COUNT(*) AS n FROM trades") == #truth end)
    local got = db:query("SELECT trade_id, ts, price, size, side FROM trades ORDER BY trade_id")
    for i, t in ipairs(truth) do
      local r = got[i]
      assert.same({ t.id, t.ts, canon(t.price), canon(t.size), t.side },
        { r.trade_id, r.ts, canon(r.price), canon(r.size), r.side })
    end
    local st = stream()
    assert.same({ 3, 4, true, 0 }, { st.reconnects, st.connects, st.connected, st.rows_dropped })
    assert.is_true(st.rows >= 23 and st.messages >= 5 + 3 * 4, json.encode(st))
    assert.is_true(st.messages_per_second > 0 and st.rows_per_second > 0, json.encode(st))
    -- the lag: commit time minus the trade's time at the exchange (the mock's clock is this machine's)
    assert.is_true(st.lag_seconds >= 0 and st.lag_seconds < 5, st.lag_seconds)
    assert.is_true(st.last_message_age >= 0 and st.last_message_age < 30, st.last_message_age)
    assert.equal("healthy", c:stats().status)
  end)

  it("bybit: subscribe reply, snapshot + deltas, a dropped delta resubscribes, trades once across 3 reconnects",
    function()
      start("bybit_stream", { symbols = { "BTC/USDT:USDT" }, depth = 1000, book_interval = 0.05 })
      wait_for("the subscribe", function()
        return subs("bybit:orderbook.50.BTCUSDT") == 1 and subs("bybit:publicTrade.BTCUSDT") == 1
      end)
      local first = mock:control("state").counts
      -- the snapshot came with the subscribe: the book is synced at the truth's id
      local step = mock:control("step", { ex = "bybit", diffs = 0 })
      wait_for("the snapshot", book_at("BTC/USDT:USDT", step.id))
      for k = 1, 6 do
        step = mock:control("step", { ex = "bybit", diffs = 5, drop = k == 3 and 2 or "", trades = 1 })
        wait_for("step " .. k, book_at("BTC/USDT:USDT", step.id))
        check_status("BTC/USDT:USDT", "bybit", "BTCUSDT", step.id)
        check_row("bybit", wait_for("the order_books row of step " .. k, row_at(step.id)))
      end
      assert.equal(1, stream().books["BTC/USDT:USDT"].resyncs)
      -- the gap resubscribed the book's topic on the same connection
      assert.equal(first.subscribes.bybit + 1, mock:control("state").counts.subscribes.bybit)
      for _, r in ipairs(db:query("SELECT * FROM order_books")) do check_row("bybit", r) end
      for k = 1, 3 do
        assert.equal(1, mock:control("disconnect", { ex = "bybit", trades = 3 }).closed)
        wait_for("reconnect " .. k, function()
          return stream().reconnects == k and subs("bybit:publicTrade.BTCUSDT") == 1
            and mock:control("state").counts.recent_trade == first.recent_trade + k
        end)
        mock:control("step", { ex = "bybit", trades = 2, dup = 1 })
      end
      local truth = mock:control("trades", { ex = "bybit" })
      assert.equal(6 + 3 * 5, #truth)
      wait_for("every trade", function() return count("SELECT COUNT(*) AS n FROM trades") == #truth end)
      local got = db:query("SELECT trade_id, ts, price, size, side FROM trades ORDER BY trade_id")
      for i, t in ipairs(truth) do
        local r = got[i]
        assert.same({ t.id, t.ts, canon(t.price), canon(t.size), t.side },
          { r.trade_id, r.ts, canon(r.price), canon(r.size), r.side })
      end
      -- each new connection started a new book from its snapshot
      wait_for("the book after the reconnects", function()
        local b = stream().books["BTC/USDT:USDT"]
        return b.synced and b.snapshots == 1
      end)
      local st = stream()
      assert.same({ 3, 4 }, { st.reconnects, st.connects })
      assert.is_true(st.lag_seconds >= 0 and st.lag_seconds < 5, st.lag_seconds)
    end)

  it("a flood faster than the store: backpressure to the server, bounded memory, every trade stored", function()
    local peer = require "support.ws_peer"
    -- the ASan build keeps freed memory in quarantine and runs slower: a smaller flood, no RSS bound
    local sanitized = peer.sanitized()
    local total = sanitized and 16 * 2 ^ 20 or 100 * 2 ^ 20
    dbfile = os.tmpname()
    db = assert(store.open(dbfile))
    -- the store takes at most ~1,000 rows per 10 ms: slower than the stream brings them
    local upserts = 0
    local slow = setmetatable({}, { __index = function(_, k)
      local v = db[k]
      if type(v) ~= "function" then return v end
      if k == "upsert_accepted" then
        return function(_, ...)
          upserts = upserts + 1
          sluice.sleep(0.01)
          return db:upsert_accepted(...)
        end
      end
      return function(_, ...) return v(db, ...) end
    end })
    -- the buffer bound a small part of the flood in both builds (4 MiB of 100, 1 MiB of 16)
    local max_buffer = sanitized and 2 ^ 20 or 4 * 2 ^ 20
    start("bybit_stream", { symbols = { "ETH/USDT:USDT" }, books = false, max_buffer = max_buffer,
      stream_batch = { rows = 1000, age = 0.05 } },
      { store = slow })
    wait_for("the subscribe", function() return subs("bybit:publicTrade.ETHUSDT") == 1 end)
    collectgarbage()
    local rss0, peak = mockmod.rss_kb(), 0
    local flood
    local t = sluice.spawn(function()
      flood = mock:control("flood", { ex = "bybit", symbol = "ETHUSDT", kind = "trades", per = 50, bytes = total }, 600)
    end)
    local t0 = sluice.now()
    wait_for("the flood to be written", function()
      peak = math.max(peak, mockmod.rss_kb())
      return flood ~= nil
    end, 600, 0.01)
    local written = sluice.now() - t0
    assert(sluice.wait(t))
    wait_for("every trade stored", function()
      peak = math.max(peak, mockmod.rss_kb())
      return stream().rows == flood.trades and stream().rows_pending == 0
    end, 600, 0.01)
    local took = sluice.now() - t0
    assert.equal(flood.trades, count("SELECT COUNT(*) AS n FROM trades"))
    local st = stream()
    assert.same({ 0, 1, 0 }, { st.reconnects, st.connects, st.rows_dropped })
    assert.is_true(st.messages >= flood.messages and st.messages <= flood.messages + 5, st.messages) -- + replies, pongs
    print(("\n  flood: %d messages, %.1f MB, %d trades; written in %.1f s (the server waited for the socket), "
      .. "stored in %.1f s (%.0f rows/s, %d batches); RSS %d -> peak %d KiB (+%.1f MiB)"):format(flood.messages,
      flood.bytes / 2 ^ 20, flood.trades, written, took, flood.trades / took, upserts, rss0, peak,
      (peak - rss0) / 1024))
    -- the server could not write faster than the store took rows: it finished late
    -- (without backpressure it writes the flood in a fraction of the store's
    -- time; the kernel's socket buffers are a bigger share of the ASan build's
    -- smaller flood, which ended at 0.67 of the store's time there)
    local late = sanitized and 0.5 or 0.75
    assert.is_true(written > took * late, ("written in %.1f s, stored in %.1f s"):format(written, took))
    if not sanitized then
      assert.is_true(peak - rss0 < 24 * 1024, ("RSS grew by %d KiB"):format(peak - rss0))
    end
  end)
end)
