-- sluice.backfill: planning (holes, row-level gaps, force, lookback,
-- estimates), backfills of the binance_klines collector against the mock
-- Binance (every candle exactly once, nothing refetched, the same table
-- through 429s, 5xx storms, timeouts and dropped connections), failed
-- windows reported and retried by the next run, and cancel/resume.
--
-- Times are epoch seconds given as numbers, so every test but the
-- parse_time ones is independent of date parsing. binance_klines windows
-- are 1000 candles (60000 s for 1m) aligned to multiples of the step.
local sluice = require "sluice"
local collector = require "sluice.collector"
local store = require "sluice.store"
local mock = require "sluice.mock.binance"
local backfill = require "sluice.backfill"
local log = require "sluice.log"
local wait_for = require("support.wait").wait_for
local klines = require "support.klines"

local T0, S, A, SYMBOLS = klines.T0, klines.S, klines.A, klines.SYMBOLS
local new_collector, one, figures, checksum, coverage =
  klines.backfiller, klines.one, klines.figures, klines.checksum, klines.coverage

local function run(opts)
  local id = backfill.start(opts)
  return backfill.wait(id), id
end

-- Asserts the table holds exactly the n 1m candles of symbol from t0 (s).
local function assert_candles(db, symbol, t0, n)
  local f = figures(db, symbol)
  assert.equal(n, f.n)
  assert.equal(n, f.d)                                  -- no duplicates
  assert.equal(t0 * 1000, f.lo)                         -- first exact
  assert.equal((t0 + (n - 1) * 60) * 1000, f.hi)        -- last exact
  assert.equal(f.n * 60000, f.hi - f.lo + 60000)        -- every minute present
end

-- What went wrong, for assertion messages.
local function failures(st)
  local out = {}
  for _, f in ipairs(st.failed or {}) do
    out[#out + 1] = string.format("%s %d..%d: %s", f.partition, f.from, f.to, f.error)
  end
  return "failed windows: " .. (#out > 0 and table.concat(out, "; ") or "none")
end

local function keys_of(plan, partition)
  local out = {}
  for _, w in ipairs(plan.windows) do
    if w.partition == partition then out[#out + 1] = w.key end
  end
  return out
end

describe("sluice.backfill", function()
  local m, dbs

  local function new_db()
    local db = assert(store.open(":memory:"))
    dbs[#dbs + 1] = db
    return db
  end

  before_each(function()
    log.output("/dev/null")
    m = mock.start({ seed = 7 })
    dbs = {}
  end)

  after_each(function()
    m:stop()
    for _, db in ipairs(dbs) do db:close() end
    log.output("-")
  end)

  describe("parse_time", function()
    -- (found broken at 53c87eb: every date landed 1 or 2 days late,
    -- "2024-01-01" -> 2024-01-03; fixed in 716bb7b)
    it("reads dates and date-times as UTC", function()
      assert.equal(0, backfill.parse_time("1970-01-01"))
      assert.equal(T0, backfill.parse_time("2024-01-01"))
      assert.equal(1709164800, backfill.parse_time("2024-02-29"))
      assert.equal(1709251200, backfill.parse_time("2024-03-01"))
      assert.equal(1735603200, backfill.parse_time("2024-12-31"))
      assert.equal(1502928000, backfill.parse_time("2017-08-17"))
      assert.equal(T0 + 12 * 3600 + 30 * 60 + 15, backfill.parse_time("2024-01-01T12:30:15Z"))
      assert.equal(T0 + 12 * 3600 + 30 * 60 + 15, backfill.parse_time("2024-01-01 12:30:15"))
    end)

    it("takes epoch seconds as they are and refuses anything else", function()
      assert.equal(T0, backfill.parse_time(T0))
      assert.has_error(function() backfill.parse_time("yesterday", "from") end)
      assert.has_error(function() backfill.parse_time("2024/01/01", "from") end)
    end)
  end)

  describe("plan", function()
    it("plans every window of an empty store, aligned to the step, with estimates", function()
      local c = new_collector(m, new_db())
      -- an aligned range: partitions x span / step windows, each a whole step
      local p = backfill.plan({ collector = c, from = A, to = A + 10 * S })
      assert.equal(S, p.step)
      assert.equal(2 * 10, #p.windows)
      assert.equal(0, p.skipped)
      for i, w in ipairs(p.windows) do
        local k = (i - 1) % 10
        assert.equal(SYMBOLS[math.floor((i - 1) / 10) + 1], w.partition)
        assert.equal("missing", w.reason)
        assert.equal(A + k * S, w.key)
        assert.equal(A + k * S, w.from)
        assert.equal(A + (k + 1) * S, w.to)
        assert.equal(0, w.key % S)
      end
      local e = p.estimate
      assert.equal(20, e.windows)
      assert.equal(20, e.requests)                -- binance: 1 request per window
      assert.equal(20 * 1000, e.rows)             -- one candle per minute
      assert.equal(c.limiter:rate(), e.rate)
      assert.equal(200, e.rate)
      assert.near(20 / 200, e.seconds, 1e-9)

      -- an unaligned range: the first and last windows are cut to it, keys
      -- stay aligned, ceil(to/step) - floor(from/step) windows per symbol
      local to = T0 + 25000 * 60
      p = backfill.plan({ collector = c, from = T0, to = to })
      local per = math.ceil(to / S) - math.floor(T0 / S)
      assert.equal(26, per)
      assert.equal(2 * per, #p.windows)
      for _, sym in ipairs(SYMBOLS) do
        local ws, candles = {}, 0
        for _, w in ipairs(p.windows) do
          if w.partition == sym then
            ws[#ws + 1] = w
            candles = candles + (w.to - w.from) / 60
            assert.equal(0, w.key % S)
            assert.equal("missing", w.reason)
          end
        end
        assert.equal(per, #ws)
        assert.equal(T0, ws[1].from)
        assert.equal(A, ws[1].key)
        assert.equal(A + S, ws[1].to)
        assert.equal(to, ws[#ws].to)
        for i = 2, #ws do assert.equal(ws[i - 1].to, ws[i].from) end
        assert.equal(25000, candles)
      end
      assert.equal(2 * per, p.estimate.requests)
      assert.equal(50000, p.estimate.rows)
      assert.near(2 * per / c.limiter:rate(), p.estimate.seconds, 1e-9)

      -- symbols= narrows the partitions
      p = backfill.plan({ collector = c, from = A, to = A + 10 * S, symbols = { "ETHUSDT" } })
      assert.equal(10, #p.windows)
      assert.same({ A, A + S, A + 2 * S, A + 3 * S, A + 4 * S, A + 5 * S, A + 6 * S, A + 7 * S,
        A + 8 * S, A + 9 * S }, keys_of(p, "ETHUSDT"))
    end)

    it("plans only the holes after a partial backfill", function()
      local db = new_db()
      local c = new_collector(m, db)
      local st = run({ collector = c, from = A + 2 * S, to = A + 5 * S, symbols = { "BTCUSDT" } })
      assert.equal("done", st.state)
      assert.equal(3, st.windows_done)
      st = run({ collector = c, from = A + 7 * S, to = A + 9 * S, symbols = { "BTCUSDT" } })
      assert.equal(2, st.windows_done)
      assert.equal(5000, one(db, "SELECT COUNT(*) AS n FROM klines").n)

      local p = backfill.plan({ collector = c, from = A, to = A + 10 * S })
      assert.equal(5 + 10, #p.windows)
      assert.equal(5, p.skipped)
      assert.same({ A, A + S, A + 5 * S, A + 6 * S, A + 9 * S }, keys_of(p, "BTCUSDT"))
      assert.equal(10, #keys_of(p, "ETHUSDT"))
      for _, w in ipairs(p.windows) do
        assert.equal("missing", w.reason)
        assert.equal(w.key, w.from)
        assert.equal(w.key + S, w.to)
      end
      assert.equal(15, p.estimate.requests)
      assert.equal(15000, p.estimate.rows)

      -- a window done only up to an earlier `to` is planned again, as "extended"
      run({ collector = c, from = A, to = A + S / 2, symbols = { "BTCUSDT" } })
      p = backfill.plan({ collector = c, from = A, to = A + 10 * S, symbols = { "BTCUSDT" } })
      assert.same({ A, A + S, A + 5 * S, A + 6 * S, A + 9 * S }, keys_of(p, "BTCUSDT"))
      assert.equal("extended", p.windows[1].reason)
      assert.equal(A, p.windows[1].from)
      assert.equal(A + S, p.windows[1].to)
      -- but not when the range still ends there
      p = backfill.plan({ collector = c, from = A, to = A + S / 2, symbols = { "BTCUSDT" } })
      assert.equal(0, #p.windows)
      assert.equal(1, p.skipped)
    end)

    it("refuses an expect that names no table of a collector with several, and a count that fails", function()
      local function define(expect, tables)
        return collector.define({ name = "two_tables", interval = 60, limiter = false, breaker = false,
          retry = false, collect = function() return {} end, backfill = function() return {} end,
          backfill_step = 3600, expect = expect,
          tables = tables or { a = { columns = { t = "integer" }, key = { "t" } },
                               b = { columns = { t = "integer" }, key = { "t" } } } })
      end
      -- a table is a load error (define), a function is resolved by the plan
      assert.has_error(function() define({ time_column = "t", every = 60 }) end,
        "sluice.collector.define: option 'expect' names no table, and the collector declares several (a, b):"
        .. " set expect.table")
      assert.has_error(function() define({ time_column = "t", every = 60, table = "c" }) end,
        "sluice.collector.define: option 'expect' table 'c' is not one of the collector's tables (a, b)")
      local c = collector.new(define(function() return { time_column = "t", every = 60 } end), nil,
        { store = new_db() })
      assert.has_error(function() backfill.plan({ collector = c, from = A, to = A + 2 * 3600 }) end,
        "sluice.backfill: collector 'two_tables': expect names no table, and the collector declares several"
        .. " (a, b): set expect.table")
      -- named: planned (nothing stored yet: every window missing)
      local db = new_db()
      c = collector.new(define({ time_column = "t", every = 60, table = "b" }), nil, { store = db })
      assert.equal(2, #backfill.plan({ collector = c, from = A, to = A + 2 * 3600 }).windows)
      -- a count that fails (no such column) fails the plan instead of
      -- finding every covered window short and refetching it forever
      c = collector.new(define({ time_column = "ts", every = 60, table = "b" }), nil, { store = db })
      assert.equal(1, c.store:exec("INSERT INTO sluice_backfill (collector, partition, window_start,"
        .. " window_end, covered_from, updated_at, status) VALUES ('two_tables', '*', ?, ?, ?, ?, 'done')",
        A, A + 3600, A, A))
      local ok, err = pcall(backfill.plan, { collector = c, from = A, to = A + 3600 })
      assert.is_false(ok)
      assert.equal("sluice.backfill: collector 'two_tables': gap detection in table b failed: no such column: ts",
        err)
    end)

    it("finds a row missing inside a covered window (expect)", function()
      local db = new_db()
      local c = new_collector(m, db, { symbols = { "BTCUSDT" } })
      run({ collector = c, from = A, to = A + 3 * S })
      local p = backfill.plan({ collector = c, from = A, to = A + 3 * S })
      assert.equal(0, #p.windows)
      assert.equal(3, p.skipped)

      local lost = (A + S + 17 * 60) * 1000             -- a candle of window 2
      assert.equal(1, db:exec("DELETE FROM klines WHERE raw_symbol = 'BTCUSDT' AND open_time = ?", lost))
      -- a candle of another interval at that time does not fill the gap
      assert(db:upsert("klines", { { exchange = "binance", market = "spot", symbol = "BTC/USDT",
        raw_symbol = "BTCUSDT", interval = "5m", open_time = lost,
        open = 1, high = 1, low = 1, close = 1, volume = 1, close_time = lost + 299999 } }))
      p = backfill.plan({ collector = c, from = A, to = A + 3 * S })
      assert.equal(1, #p.windows)
      assert.same({ partition = "BTCUSDT", from = A + S, to = A + 2 * S, key = A + S, reason = "gap" },
        p.windows[1])
      assert.equal(2, p.skipped)
      assert.equal(1, p.estimate.requests)

      -- the next run refetches that window alone and the gap is gone
      local before = m.requests
      local st = run({ collector = c, from = A, to = A + 3 * S })
      assert.equal("done", st.state)
      assert.equal(1, st.windows_total)
      assert.equal(1, m.requests - before)
      assert_candles(db, "BTCUSDT", A, 3000)
      assert.equal(0, #backfill.plan({ collector = c, from = A, to = A + 3 * S }).windows)
    end)

    -- Regression: the rows present were counted from the window's aligned
    -- start (`first`), not from `from`, so candles stored before `from` in
    -- the same window hid a gap after it: here the window holds 999 of its
    -- 1000 candles, 500 are wanted for [from, window end), and the missing
    -- one was never planned.
    it("finds a missing row when `from` is inside the covered window", function()
      local db = new_db()
      local c = new_collector(m, db, { symbols = { "BTCUSDT" } })
      run({ collector = c, from = A, to = A + 2 * S })
      local lost = (A + 900 * 60) * 1000
      assert.equal(1, db:exec("DELETE FROM klines WHERE open_time = ?", lost))
      local p = backfill.plan({ collector = c, from = A + 500 * 60, to = A + 2 * S })
      assert.equal(1, #p.windows)
      assert.equal("gap", p.windows[1].reason)
      assert.equal(A + 500 * 60, p.windows[1].from)
    end)

    -- Regression (the plan's `want`): with `from` between two candle
    -- opens (here 00:00:30), the first window wanted ceil((to - from) / 60)
    -- candles, one more than can exist in [from, to) (the 00:00 candle opens
    -- before `from` and is rightly not fetched), so that window was planned
    -- as a "gap" on every later run, refetched, and never done. The wanted
    -- count is the number of cadence points in [from, to):
    -- ceil(to / every) - ceil(from / every).
    it("does not plan a window again when `from` falls between two candles", function()
      local db = new_db()
      local c = new_collector(m, db, { symbols = { "BTCUSDT" } })
      local from, to = T0 + 30, T0 + 2000 * 60
      local st = run({ collector = c, from = from, to = to })
      assert.equal("done", st.state)
      assert_candles(db, "BTCUSDT", T0 + 60, 1999)
      local p = backfill.plan({ collector = c, from = from, to = to })
      assert.equal(0, #p.windows)
    end)

    it("force plans every window; lookback the windows ending within it of `to`", function()
      local db = new_db()
      local c = new_collector(m, db)
      local st = run({ collector = c, from = A, to = A + 10 * S })
      assert.equal(20, st.windows_done)
      local sums = { checksum(db, "BTCUSDT"), checksum(db, "ETHUSDT") }
      local p = backfill.plan({ collector = c, from = A, to = A + 10 * S })
      assert.equal(0, #p.windows)
      assert.equal(20, p.skipped)

      p = backfill.plan({ collector = c, from = A, to = A + 10 * S, force = true })
      assert.equal(20, #p.windows)
      assert.equal(0, p.skipped)
      for _, w in ipairs(p.windows) do assert.equal("force", w.reason) end
      assert.equal(20, p.estimate.requests)

      p = backfill.plan({ collector = c, from = A, to = A + 10 * S, lookback = 1.5 * S })
      assert.equal(4, #p.windows)
      assert.equal(16, p.skipped)
      for _, sym in ipairs(SYMBOLS) do assert.same({ A + 8 * S, A + 9 * S }, keys_of(p, sym)) end
      for _, w in ipairs(p.windows) do assert.equal("lookback", w.reason) end
      p = backfill.plan({ collector = c, from = A, to = A + 10 * S, lookback = S })
      assert.equal(2, #p.windows)
      for _, sym in ipairs(SYMBOLS) do assert.same({ A + 9 * S }, keys_of(p, sym)) end
      p = backfill.plan({ collector = c, from = A, to = A + 10 * S, lookback = 60 })
      assert.equal(2, #p.windows)

      -- forced and lookback runs refetch and upsert: no duplicates, same table
      local before = m.requests
      st = run({ collector = c, from = A, to = A + 10 * S, force = true })
      assert.equal("done", st.state)
      assert.equal(20, st.windows_done)
      assert.equal(20, m.requests - before)
      before = m.requests
      st = run({ collector = c, from = A, to = A + 10 * S, lookback = 1.5 * S })
      assert.equal(4, st.windows_done)
      assert.equal(4, m.requests - before)
      for i, sym in ipairs(SYMBOLS) do
        assert_candles(db, sym, A, 10000)
        assert.equal(sums[i], checksum(db, sym))
      end
      assert.equal(20, coverage(db, "done").n)
      assert.equal(20000, coverage(db, "done").rows)
    end)

    it("plans and fetches the partitions the collector declares, not an option's", function()
      local function feed(extra)
        local def = { name = "parts", interval = 3600, limiter = false, retry = false,
          tables = { ticks = { columns = { p = "text", t = "integer" }, key = { "p", "t" } } },
          options = { symbols = { "NOT", "THESE" } },
          backfill_step = 100,
          backfill = function(_, from, _, part) return { { p = tostring(part), t = from } } end }
        for k, v in pairs(extra) do def[k] = v end
        return collector.new(collector.define(def), nil, { store = new_db() })
      end
      local function parts_of(plan)
        local out = {}
        for _, w in ipairs(plan.windows) do out[#out + 1] = w.partition .. "@" .. w.key end
        return out
      end
      local c = feed({ partitions = function(self) return { "p1", self.name } end })
      assert.same({ "p1@0", "p1@100", "parts@0", "parts@100" },
        parts_of(backfill.plan({ collector = c, from = 0, to = 200 })))
      assert.same({ "p1@0", "p1@100" },
        parts_of(backfill.plan({ collector = c, from = 0, to = 200, symbols = { "p1" } })))
      local st = run({ collector = c, from = 0, to = 200 })
      assert.same({ "done", 4 }, { st.state, st.windows_done })
      assert.same({ { p = "p1", t = 0 }, { p = "p1", t = 100 }, { p = "parts", t = 0 }, { p = "parts", t = 100 } },
        c.store:query("SELECT p, t FROM ticks ORDER BY p, t"))
      -- none declared: one partition, and backfill gets nil
      local one_part = feed({})
      assert.same({ "*@0", "*@100" }, parts_of(backfill.plan({ collector = one_part, from = 0, to = 200 })))
      st = run({ collector = one_part, from = 0, to = 200 })
      assert.equal("done", st.state)
      assert.same({ { p = "nil", t = 0 }, { p = "nil", t = 100 } },
        one_part.store:query("SELECT p, t FROM ticks ORDER BY p, t"))
    end)

    it("refuses bad arguments", function()
      local c = new_collector(m, new_db())
      assert.has_error(function() backfill.plan({}) end)
      assert.has_error(function() backfill.plan({ collector = c, from = A + S, to = A }) end)
      assert.has_error(function() backfill.start({ collector = c, from = A, to = A + S, parallel = 0 }) end)
      local nostore = new_collector(m, nil)
      assert.has_error(function() backfill.plan({ collector = nostore, from = A, to = A + S }) end)
      local st, err = backfill.status("bf-nope")
      assert.is_nil(st)
      assert.equal("no such backfill 'bf-nope'", err)
      assert.is_nil((backfill.cancel("bf-nope")))
    end)
  end)

  describe("against the mock Binance", function()
    it("lands 50,000 candles exactly once, then fetches nothing", function()
      local db = new_db()
      local c = new_collector(m, db)
      local to = T0 + 25000 * 60
      local p = backfill.plan({ collector = c, from = T0, to = to })
      local st, id = run({ collector = c, from = T0, to = to, parallel = 4 })
      assert.equal("done", st.state)
      assert.equal(52, st.windows_total)
      assert.equal(52, st.windows_done)
      assert.equal(0, st.windows_failed)
      assert.equal(0, st.errors)
      assert.same({}, st.failed)
      assert.equal(50000, st.rows)
      -- the estimate was right
      assert.equal(p.estimate.windows, st.windows_done)
      assert.equal(p.estimate.requests, st.requests)
      assert.equal(p.estimate.rows, st.rows)
      assert.equal(52, m.requests)

      local all = one(db, "SELECT COUNT(*) AS n, COUNT(DISTINCT raw_symbol || '/' || open_time) AS d FROM klines")
      assert.equal(50000, all.n)
      assert.equal(50000, all.d)
      for _, sym in ipairs(SYMBOLS) do assert_candles(db, sym, T0, 25000) end
      assert.equal(0, one(db, "SELECT COUNT(*) AS n FROM klines WHERE open_time < ? OR open_time >= ?",
        T0 * 1000, to * 1000).n)
      assert.equal(52, coverage(db, "done").n)
      assert.equal(50000, coverage(db, "done").rows)
      assert.equal(0, coverage(db, "failed").n)
      -- the status of a finished job stays readable
      assert.equal("done", backfill.status(id).state)
      assert.equal(52, backfill.status(id).windows_done)

      -- a second run plans nothing and sends nothing
      local before = m.requests
      p = backfill.plan({ collector = c, from = T0, to = to })
      assert.equal(0, #p.windows)
      assert.equal(52, p.skipped)
      assert.equal(0, p.estimate.requests)
      st = run({ collector = c, from = T0, to = to })
      assert.equal("done", st.state)
      assert.equal(0, st.windows_total)
      assert.equal(52, st.windows_skipped)
      assert.equal(0, st.requests)
      assert.equal(before, m.requests)
      assert.equal(50000, one(db, "SELECT COUNT(*) AS n FROM klines").n)
    end)

    it("completes with the same table through 429s, 5xx storms, timeouts and dropped connections", function()
      local to = T0 + 30000 * 60                      -- 2 x 31 windows
      local clean = new_db()
      local st = run({ collector = new_collector(m, clean), from = T0, to = to })
      assert.equal("done", st.state, failures(st))

      m:reset()
      local db = new_db()
      -- the collector's own retries (3 attempts), with short backoffs, and
      -- a client timeout the delayed reply outlasts
      -- paced (the mock answers in well under a millisecond) so that most
      -- storms meet the job; how many do depends on the machine's speed
      local c = new_collector(m, db, { timeout = 0.5, limiter = { rate = 30, max_rate = 30 } })
      local stages = {
        { status = 429, retry_after = 1 },
        { status = 503, count = 2 },
        { status = 500, count = 2 },
        { delay = 1.5 },                              -- the client gives up after 0.5 s
        { abort = true, count = 2 },
        { status = 502 },
        { status = 504 },
      }
      local faults = 0
      for _, f in ipairs(stages) do faults = faults + (f.count or 1) end
      -- Each storm is queued once the previous one is over: its faults all
      -- served, and every window they hit answered 200 since. So no window
      -- meets two storms, and a storm of 2 fits in 3 attempts.
      local function settled(want)
        local bad, pending = 0, {}
        for _, e in ipairs(m.log) do
          local k = e.query.symbol .. "/" .. tostring(e.query.startTime)
          if e.status == 200 then pending[k] = nil else bad, pending[k] = bad + 1, true end
        end
        return bad >= want and next(pending) == nil
      end
      local t0 = sluice.now()
      local id = backfill.start({ collector = c, from = T0, to = to, parallel = 4 })
      local injected, queued = 0, 0
      local function left()
        local now = backfill.status(id)
        return now.windows_total - now.windows_done - now.windows_failed
      end
      for i, f in ipairs(stages) do
        while not settled(queued) and backfill.status(id).state == "running" do sluice.sleep(0.002) end
        -- enough windows left for the storm to be met and absorbed
        if left() < 12 then break end
        m:inject(f)
        injected, queued = i, queued + (f.count or 1)
      end
      st = backfill.wait(id)
      assert.is_true(injected >= 4, "storms injected: " .. injected) -- the first ones at least
      faults = 0
      local want = {}
      for i = 1, injected do
        local f = stages[i]
        faults = faults + (f.count or 1)
        local k = f.abort and "abort" or f.status
        if k then want[k] = (want[k] or 0) + (f.count or 1) end
      end
      assert.equal("done", st.state, failures(st))
      assert.equal(62, st.windows_done)
      assert.equal(0, st.windows_failed)
      assert.equal(60000, st.rows)
      assert.is_true(sluice.now() - t0 >= 1)            -- Retry-After was waited
      local seen = {}
      for _, e in ipairs(m.log) do seen[e.status or "none"] = (seen[e.status or "none"] or 0) + 1 end
      -- the delayed reply (stage 4): never sent (its client left), or sent
      -- too late to count, so one more 200 than windows
      assert.equal(injected >= 4 and 1 or 0, (seen.none or 0) + seen[200] - 62)
      seen.none, seen[200] = nil, nil
      assert.same(want, seen)
      -- each fault cost the client a failed attempt, but an abort on a
      -- reused connection may be resent by libcurl unseen
      local counted = c:counters()
      assert.is_true(counted.failed_requests >= faults - 2,
        "failed attempts: " .. counted.failed_requests .. " of " .. counted.total_requests)
      assert.equal(st.requests, counted.total_requests)
      assert.equal(62, counted.successful_requests)
      for _, sym in ipairs(SYMBOLS) do
        assert_candles(db, sym, T0, 30000)
        assert.equal(checksum(clean, sym), checksum(db, sym))
      end
      assert.equal(62, coverage(db, "done").n)
      assert.equal(0, coverage(db, "failed").n)
    end)
  end)

  describe("failed windows", function()
    it("are reported and recorded with their error, and retried by the next run", function()
      local db = new_db()
      local c = new_collector(m, db, { breaker = false })
      -- one worker, so the faults hit the first windows in plan order: a
      -- 400 (not retried), a 500 storm longer than the 3 attempts, and a
      -- 200 with a body cut short
      m:inject({ status = 400, path = "/api/v3/klines" })
      m:inject({ status = 500, count = 3, path = "/api/v3/klines" })
      m:inject({ malformed = true, path = "/api/v3/klines" })
      local st, id = run({ collector = c, from = A, to = A + 5 * S, parallel = 1 })
      assert.equal("failed", st.state)
      assert.equal(10, st.windows_total)
      assert.equal(7, st.windows_done)
      assert.equal(3, st.windows_failed)
      assert.equal(3, st.errors)
      assert.equal(7000, st.rows)
      assert.equal(3, #st.failed)
      assert.same({ partition = "BTCUSDT", from = A, to = A + S,
        error = "BTCUSDT: Binance error -1000: HTTP 400" }, st.failed[1])
      assert.same({ partition = "BTCUSDT", from = A + S, to = A + 2 * S,
        error = "BTCUSDT: Binance error -1000: An unknown error occurred while processing the request." },
        st.failed[2])
      assert.equal("BTCUSDT", st.failed[3].partition)
      assert.equal(A + 2 * S, st.failed[3].from)
      assert.equal(A + 3 * S, st.failed[3].to)
      assert.matches("^BTCUSDT: ", st.failed[3].error)
      local again = backfill.status(id)
      for _, k in ipairs({ "state", "windows_total", "windows_done", "windows_failed", "rows",
        "requests", "errors" }) do
        assert.equal(st[k], again[k])
      end
      assert.same(st.failed, again.failed)
      assert.equal(1 + 3 + 1 + 7, m.requests)

      local failed = assert(db:query("SELECT partition, window_start, window_end, rows, error"
        .. " FROM sluice_backfill WHERE status = 'failed' ORDER BY window_start"))
      assert.equal(3, #failed)
      for i, f in ipairs(failed) do
        assert.equal("BTCUSDT", f.partition)
        assert.equal(A + (i - 1) * S, f.window_start)
        assert.equal(A + i * S, f.window_end)
        assert.equal(0, f.rows)
        assert.equal(st.failed[i].error, f.error)
      end
      assert.equal(7, coverage(db, "done").n)
      -- a failed window stores nothing
      assert.equal(2000, figures(db, "BTCUSDT").n)
      assert.equal(0, one(db, "SELECT COUNT(*) AS n FROM klines WHERE raw_symbol = 'BTCUSDT' AND open_time < ?",
        (A + 3 * S) * 1000).n)

      -- the fault is gone: the next run plans exactly those windows
      local p = backfill.plan({ collector = c, from = A, to = A + 5 * S })
      assert.equal(3, #p.windows)
      assert.equal(7, p.skipped)
      assert.same({ A, A + S, A + 2 * S }, keys_of(p, "BTCUSDT"))
      for _, w in ipairs(p.windows) do assert.equal("missing", w.reason) end
      local before = m.requests
      st = run({ collector = c, from = A, to = A + 5 * S })
      assert.equal("done", st.state)
      assert.equal(3, st.windows_done)
      assert.equal(0, st.windows_failed)
      assert.equal(3, m.requests - before)
      for _, sym in ipairs(SYMBOLS) do assert_candles(db, sym, A, 5000) end
      assert.equal(10, coverage(db, "done").n)
      assert.equal(0, coverage(db, "failed").n)
    end)
  end)

  describe("status", function()
    -- (a regression: status_of took the elapsed time of a job that had
    -- ended from the clock, so it kept growing, and the rate shrinking)
    it("of a finished job stays as it ended", function()
      local c = new_collector(m, new_db(), { symbols = { "BTCUSDT" } })
      local st, id = run({ collector = c, from = A, to = A + S })
      assert.equal("done", st.state)
      sluice.sleep(0.2) -- time passing after the end is what is under test
      local later = backfill.status(id)
      assert.equal(1, later.windows_done)
      assert.equal(st.elapsed, later.elapsed)
    end)
  end)

  describe("cancel", function()
    it("starts no new window, and a later start resumes with the rest", function()
      local db = new_db()
      -- 20 windows at 20 requests per second: about a second of work
      local c = new_collector(m, db, { limiter = { rate = 20, max_rate = 20 } })
      local id = backfill.start({ collector = c, from = A, to = A + 10 * S, parallel = 2 })
      assert.equal("running", backfill.status(id).state)
      assert.is_not_nil(backfill.jobs()[id])
      wait_for("4 windows done", function() return backfill.status(id).windows_done >= 4 end, 10, 0.005)
      local at_cancel = backfill.status(id).windows_done
      assert.is_true(at_cancel >= 4 and at_cancel < 20, "done at cancel: " .. at_cancel)
      assert.is_true(backfill.cancel(id))
      assert.equal("cancelled", backfill.status(id).state)
      local st = backfill.wait(id)
      assert.equal("cancelled", st.state)
      local done = st.windows_done
      -- only the windows in flight (at most `parallel`) finished
      assert.is_true(done >= at_cancel and done <= at_cancel + 2)
      assert.equal(0, st.windows_failed)
      assert.equal(done, m.requests)
      -- and none later: no event marks a request that is not sent, so this
      -- one looks for a while (three windows' worth at 20 requests a second)
      sluice.sleep(0.3)
      assert.equal(done, m.requests)
      assert.equal(done, backfill.status(id).windows_done)
      assert.equal(done, coverage(db, "done").n)
      assert.equal(done * 1000, one(db, "SELECT COUNT(*) AS n FROM klines").n)
      assert.is_true(backfill.cancel(id))               -- again: harmless
      assert.equal("cancelled", backfill.status(id).state)

      local p = backfill.plan({ collector = c, from = A, to = A + 10 * S })
      assert.equal(20 - done, #p.windows)
      assert.equal(done, p.skipped)
      st = run({ collector = c, from = A, to = A + 10 * S, parallel = 2 })
      assert.equal("done", st.state)
      assert.equal(20 - done, st.windows_total)
      assert.equal(20 - done, st.windows_done)
      assert.equal(20, m.requests)
      for _, sym in ipairs(SYMBOLS) do assert_candles(db, sym, A, 10000) end
      assert.equal(20, coverage(db, "done").n)
    end)
  end)

  describe("storing", function()
    -- (found in review, issue 15: backfill stored rows with its own copy of
    -- the collector's store path, which sent a bare list to next(tables),
    -- any one of several, and rows for an undeclared table to whatever table
    -- of that name the store had; backfilled rows are stored as collect's are)
    local function two_tables(db, backfill_fn)
      return collector.new(collector.define({
        name = "two_tables", interval = 3600, limiter = false, retry = false,
        tables = { a = { columns = { t = "integer" }, key = { "t" } },
          b = { columns = { t = "integer" }, key = { "t" } } },
        backfill_step = 100,
        collect = function(self) return backfill_fn(self, 0) end,
        backfill = backfill_fn,
      }), nil, { store = db })
    end

    local function without_position(msg)
      return (msg:gsub("^[^:\n]*:%d+: ", ""))
    end

    it("refuses a bare list of rows when the collector declares several tables, as collect does", function()
      local db = new_db()
      local c = two_tables(db, function(_, from) return { { t = from } } end)
      local st = run({ collector = c, from = 0, to = 200 })
      assert.equal("failed", st.state)
      assert.same({ 0, 2, 0 }, { st.windows_done, st.windows_failed, st.rows })
      local want = "list of rows but the collector declares several tables; return {table_name = rows}"
      for _, f in ipairs(st.failed) do
        assert.equal("backfill returned a " .. want, without_position(f.error))
      end
      assert.equal(0, one(db, "SELECT COUNT(*) AS n FROM a").n)
      assert.equal(0, one(db, "SELECT COUNT(*) AS n FROM b").n)
      assert.equal(2, coverage(db, "failed").n)
      local ok, err = c:run_once()
      assert.is_false(ok)
      assert.equal("collect returned a " .. want, without_position(err))
    end)

    it("refuses rows for a table the collector does not declare, even one the store has", function()
      local db = new_db()
      collector.new(collector.define({ name = "owner", interval = 3600, limiter = false, retry = false,
        tables = { theirs = { columns = { t = "integer" }, key = { "t" } } },
        collect = function() return {} end }), nil, { store = db })
      local c = two_tables(db, function(_, from) return { theirs = { { t = from } } } end)
      local st = run({ collector = c, from = 0, to = 100 })
      assert.equal("failed", st.state)
      assert.same({ 0, 1, 0 }, { st.windows_done, st.windows_failed, st.rows })
      assert.equal("backfill returned rows for undeclared table 'theirs'", st.failed[1].error)
      assert.equal(0, one(db, "SELECT COUNT(*) AS n FROM theirs").n)
      assert.same({ false, "collect returned rows for undeclared table 'theirs'" }, { c:run_once() })
    end)
  end)

  describe("counting", function()
    it("counts the rows stored, not the rows a window returned: rejects are not rows", function()
      local db = assert(store.open(":memory:"))
      local c = collector.new(collector.define({
        name = "nf_feed", interval = 3600, limiter = false, retry = false,
        tables = { ticks = { columns = { t = "integer", v = "real" }, key = { "t" } } },
        backfill_step = 100,
        backfill = function(_, from, to)
          local rows = {}
          for t = from, to - 10, 10 do rows[#rows + 1] = { t = t, v = t % 20 == 0 and t or 1 / 0 } end
          return rows
        end,
      }), nil, { store = db })
      local st = run({ collector = c, from = 0, to = 300 })
      assert.equal("done", st.state)
      assert.equal(3, st.windows_done)
      assert.equal(15, st.rows)                               -- 30 returned, 15 of them inf
      assert.equal(15, one(db, "SELECT COUNT(*) AS n FROM ticks").n)
      assert.equal(15, one(db, "SELECT COUNT(*) AS n FROM sluice_rejects").n)
      assert.equal(15, one(db, "SELECT SUM(rows) AS n FROM sluice_backfill WHERE status = 'done'").n)
      db:close()
    end)
  end)
end)
