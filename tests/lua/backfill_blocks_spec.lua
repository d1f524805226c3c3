-- sluice.backfill by an integer unit (backfill_unit = "blocks"): windows
-- are exact integer ranges [from, to) aligned to the step, up to 2^53;
-- an evm_blocks collector backfills a node (support.blocks, a
-- sluice.server) with every block stored exactly once, each window asked
-- for by its exact bounds; a rerun fetches nothing; a deleted block is a
-- gap (expect) that the next run refetches alone; partitions (chains) are
-- planned and fetched apart; a failed window and a run cancelled mid-way
-- resume with no block missing and no window fetched twice; and dates
-- given to a block collector are refused naming the unit.
local collector = require "sluice.collector"
local store = require "sluice.store"
local backfill = require "sluice.backfill"
local units = require "sluice.backfill.unit"
local log = require "sluice.log"
local blocks = require "support.blocks"
local wait_for = require("support.wait").wait_for

local B = 19000000
local MAX = 2 ^ 53

local function run(opts)
  local id = backfill.start(opts)
  return backfill.wait(id), id
end

local function one(db, sql, ...)
  return assert(db:query(sql, ...))[1]
end

-- {"partition@from..to"} of a plan's windows, in order.
local function windows(p)
  local out = {}
  for _, w in ipairs(p.windows) do
    out[#out + 1] = string.format("%s@%d..%d", w.partition, w.from, w.to)
  end
  return out
end

-- Asserts the store holds exactly the blocks [from, to) of chain, each
-- with the node's hash.
local function assert_blocks(db, chain, from, to)
  local r = one(db, "SELECT COUNT(*) AS n, COUNT(DISTINCT number) AS d, MIN(number) AS lo, MAX(number) AS hi,"
    .. " SUM(hash = ? || ':' || number) AS good FROM blocks WHERE chain = ?", chain, chain)
  assert.same({ n = to - from, d = to - from, lo = from, hi = to - 1, good = to - from }, r)
end

-- {"chain@from..to" = n} of the node's 200 answers.
local function answered(node)
  local out = {}
  for _, e in ipairs(node.log) do
    if e.status == 200 then
      local k = string.format("%s@%d..%d", e.chain, e.from, e.to)
      out[k] = (out[k] or 0) + 1
    end
  end
  return out
end

describe("sluice.backfill by blocks", function()
  local node, dbs

  local function new_db()
    local db = assert(store.open(":memory:"))
    dbs[#dbs + 1] = db
    return db
  end

  before_each(function()
    log.output("/dev/null")
    node = blocks.node()
    dbs = {}
  end)

  after_each(function()
    node:stop()
    for _, db in ipairs(dbs) do db:close() end
    log.output("-")
  end)

  describe("units", function()
    it("parses integer positions exactly up to 2^53 and refuses the rest naming the unit", function()
      assert.equal(B, units.parse(B, "blocks", "from"))
      assert.equal(B, units.parse("19000000", "blocks", "from"))
      assert.equal(B, units.parse("0x121eac0", "blocks", "from"))
      assert.equal(MAX, units.parse("9007199254740992", "blocks", "to"))
      assert.equal(MAX - 1, units.parse("9007199254740991", "slots", "to"))
      assert.equal(MAX, units.parse(require("ffi").new("uint64_t", 2 ^ 53), "blocks", "to"))
      assert.equal(0, units.parse(0, "integers", "from"))
      assert.equal(MAX, units.parse("0x20000000000000", "blocks", "to"))
      assert.equal(MAX, units.parse("00009007199254740992", "blocks", "to"))
      for _, bad in ipairs({ "9007199254740993", "9999999999999999", "18446744073709551615", "0x", "0x2000000000000A", 1.5, -1, "-1", "1e6", "", " 12",
        "0x20000000000001", 0 / 0, math.huge }) do
        assert.has_error(function() units.parse(bad, "blocks", "from") end)
      end
      assert.has_error(function() units.parse("9007199254740993", "blocks", "from") end,
        "sluice.backfill: 'from' must be a number of blocks (an integer from 0 to 2^53), got '9007199254740993'")
      assert.has_error(function() units.parse("2024-01-31", "slots", "to") end,
        "sluice.backfill: 'to' must be a number of slots (an integer from 0 to 2^53), got '2024-01-31'"
        .. " (a date: this collector backfills by slots, not by time)")
      -- seconds as before: numbers as they are, dates as UTC
      assert.equal(1704067200, units.parse("2024-01-01", "seconds", "from"))
      assert.equal(1.5, units.parse(1.5, "seconds", "from"))
      assert.equal(1704067200, backfill.parse_time("2024-01-01"))
      assert.equal("blocks 19000000..19001000", units.range("blocks", B, B + 1000))
      assert.equal("slots 9007199254740991..9007199254740992", units.range("slots", MAX - 1, MAX))
      assert.equal("2024-01-01T00:00:00Z..2024-01-01T00:01:00Z", units.range("seconds", 1704067200, 1704067260))
    end)

    it("divides exactly near 2^53", function()
      assert.equal(9007199254740, units.floor_div(MAX - 8, 1000))
      assert.equal(9007199254740000, units.align(MAX - 1, 1000))
      assert.equal(9007199254741, units.ceil_div(MAX - 991, 1000))
      assert.equal(9007199254740, units.ceil_div(9007199254740000, 1000))
      assert.equal(-2, units.floor_div(-3, 2))
      assert.equal(3, units.floor_div(7, 2))
      assert.equal(MAX - 1, units.floor_div(MAX - 1, 1))
    end)
  end)

  describe("define", function()
    it("takes backfill_unit, and wants an integer step of it", function()
      local function define(extra)
        local def = { name = "b", interval = 60, backfill = function() return {} end,
          tables = { t = { columns = { n = "integer" }, key = { "n" } } } }
        for k, v in pairs(extra) do def[k] = v end
        return collector.define(def)
      end
      assert.equal("blocks", define({ backfill_unit = "blocks", backfill_step = 100 }).backfill_unit)
      assert.has_error(function() define({ backfill_unit = "block", backfill_step = 100 }) end,
        "sluice.collector.define: option 'backfill_unit' must be 'seconds', 'blocks', 'slots' or 'integers',"
        .. " got 'block'")
      assert.has_error(function() define({ backfill_unit = "slots" }) end,
        "sluice.collector.define: option 'backfill_step' is required with backfill_unit = 'slots'"
        .. " (the window length in slots)")
      assert.has_error(function() define({ backfill_unit = "blocks", backfill_step = 0.5 }) end,
        "sluice.collector.define: option 'backfill_step' must be an integer number of blocks from 1 to 2^53,"
        .. " got 0.5")
      -- a step function is checked by the plan
      local c = collector.new(define({ backfill_unit = "integers", backfill_step = function() return 2.5 end }),
        nil, { store = new_db() })
      assert.has_error(function() backfill.plan({ collector = c, from = 0, to = 10 }) end,
        "sluice.backfill: collector 'b': backfill_step must be an integer number of integers from 1 to 2^53")
    end)
  end)

  describe("plan", function()
    it("plans exact integer windows [from, to) aligned to the step, per chain", function()
      local c = blocks.collector(node, new_db(), { chains = { "eth", "base" } })
      local p = backfill.plan({ collector = c, from = B, to = B + 3000 })
      assert.equal("blocks", p.unit)
      assert.equal(1000, p.step)
      assert.same({ "eth@19000000..19001000", "eth@19001000..19002000", "eth@19002000..19003000",
        "base@19000000..19001000", "base@19001000..19002000", "base@19002000..19003000" }, windows(p))
      assert.equal(3000 * 2, p.estimate.rows)
      -- unaligned: the first and last windows cut to the range, keys aligned
      p = backfill.plan({ collector = c, from = B + 500, to = B + 2001, partitions = { "eth" } })
      assert.same({ "eth@19000500..19001000", "eth@19001000..19002000", "eth@19002000..19002001" }, windows(p))
      assert.same({ B, B + 1000, B + 2000 }, { p.windows[1].key, p.windows[2].key, p.windows[3].key })
      assert.equal(1501, p.estimate.rows)
      -- near 2^53, every bound exact
      p = backfill.plan({ collector = c, from = MAX - 2500, to = MAX, partitions = { "eth" } })
      assert.same({ "eth@9007199254738492..9007199254739000", "eth@9007199254739000..9007199254740000",
        "eth@9007199254740000..9007199254740992" }, windows(p))
      assert.equal(2500, p.estimate.rows)
      -- strings and hex as the CLI and JSON give them
      p = backfill.plan({ collector = c, from = "19000000", to = "0x121f290", partitions = { "eth" } })
      assert.same({ "eth@19000000..19001000", "eth@19001000..19002000" }, windows(p))
    end)

    it("refuses dates, a missing end and a backwards range, naming the unit", function()
      local c = blocks.collector(node, new_db())
      assert.has_error(function() backfill.plan({ collector = c, from = "2024-01-01", to = B }) end,
        "sluice.backfill: 'from' must be a number of blocks (an integer from 0 to 2^53), got '2024-01-01'"
        .. " (a date: this collector backfills by blocks, not by time)")
      assert.has_error(function() backfill.plan({ collector = c, from = B }) end,
        "sluice.backfill: collector 'evm_blocks' backfills by blocks: 'to' is required (or declare backfill_to)")
      assert.has_error(function() backfill.plan({ collector = c, to = B }) end,
        "sluice.backfill: collector 'evm_blocks' has no start: 'from' is required (or declare backfill_from)")
      assert.has_error(function() backfill.plan({ collector = c, from = B, to = B }) end,
        "sluice.backfill: 'to' must be after 'from'")
      -- backfill_from and backfill_to (a function: the chain's head + 1, say)
      local d = blocks.collector(node, new_db(), { backfill_from = "19000000",
        backfill_to = function(self) return B + 1000 + #self.options.chains end })
      assert.same({ "eth@19000000..19001000", "eth@19001000..19001001" },
        windows(backfill.plan({ collector = d })))
    end)
  end)

  describe("against a node", function()
    it("stores every block once, asks for exact window bounds, then fetches nothing", function()
      local db = new_db()
      local c = blocks.collector(node, db, { chains = { "eth", "base" } })
      local st, id = run({ collector = c, from = B, to = B + 10000, parallel = 4 })
      assert.equal("done", st.state)
      assert.same({ "blocks", B, B + 10000, 1000 }, { st.unit, st.from, st.to, st.step })
      assert.same({ 20, 20, 0, 20000 }, { st.windows_total, st.windows_done, st.windows_failed, st.rows })
      assert_blocks(db, "eth", B, B + 10000)
      assert_blocks(db, "base", B, B + 10000)
      local want = {}
      for _, chain in ipairs({ "eth", "base" }) do
        for i = 0, 9 do want[string.format("%s@%d..%d", chain, B + i * 1000, B + (i + 1) * 1000)] = 1 end
      end
      assert.same(want, answered(node))
      assert.equal(20, #node.log)
      -- coverage keyed by block numbers
      assert.same({ n = 20, rows = 20000, lo = B, hi = B + 10000 }, one(db, "SELECT COUNT(*) AS n, SUM(rows) AS rows,"
        .. " MIN(window_start) AS lo, MAX(window_end) AS hi FROM sluice_backfill WHERE status = 'done'"))
      assert.equal("done", backfill.status(id).state)

      -- a rerun plans nothing and asks nothing
      local p = backfill.plan({ collector = c, from = B, to = B + 10000 })
      assert.same({ 0, 20 }, { #p.windows, p.skipped })
      st = run({ collector = c, from = B, to = B + 10000 })
      assert.same({ "done", 0, 20 }, { st.state, st.windows_total, st.windows_skipped })
      assert.equal(20, #node.log)
      -- an overlapping later range fetches only what is new
      st = run({ collector = c, from = B + 9500, to = B + 10500, partitions = { "eth" } })
      assert.same({ 1, 500 }, { st.windows_done, st.rows })
      assert.same({ chain = "eth", from = B + 10000, to = B + 10500, status = 200 }, node.log[21])
      assert_blocks(db, "eth", B, B + 10500)
    end)

    it("passes integers to backfill, exact near 2^53", function()
      local db = new_db()
      local c = blocks.collector(node, db)
      local st = run({ collector = c, from = MAX - 1500, to = MAX })
      assert.equal("done", st.state)
      -- (windows aligned to multiples of 1000: 9007199254740000 is one)
      assert.same({ { chain = "eth", from = MAX - 1500, to = 9007199254740000, status = 200 },
        { chain = "eth", from = 9007199254740000, to = MAX, status = 200 } }, node.log)
      local r = one(db, "SELECT COUNT(*) AS n, MIN(number) AS lo, MAX(number) AS hi FROM blocks")
      assert.equal(1500, r.n)
      assert.equal(MAX - 1500, r.lo)
      assert.equal(MAX - 1, r.hi)
      assert.equal(0, #backfill.plan({ collector = c, from = MAX - 1500, to = MAX }).windows)
    end)

    it("refetches the window of a missing block alone (expect)", function()
      local db = new_db()
      local c = blocks.collector(node, db, { chains = { "eth", "base" } })
      assert.equal("done", run({ collector = c, from = B, to = B + 5000 }).state)
      assert.equal(1, db:exec("DELETE FROM blocks WHERE chain = 'base' AND number = ?", B + 3017))
      -- the same block of another chain does not fill it
      local p = backfill.plan({ collector = c, from = B, to = B + 5000 })
      assert.same({ "base@19003000..19004000" }, windows(p))
      assert.equal("gap", p.windows[1].reason)
      assert.equal(9, p.skipped)
      local st = run({ collector = c, from = B, to = B + 5000 })
      assert.same({ "done", 1, 1000 }, { st.state, st.windows_done, st.rows })
      assert.same({ chain = "base", from = B + 3000, to = B + 4000, status = 200 }, node.log[#node.log])
      assert_blocks(db, "base", B, B + 5000)
      assert.equal(0, #backfill.plan({ collector = c, from = B, to = B + 5000 }).windows)

      -- a block the node lacks: stored short, so planned again as a gap
      node.missing["eth/19005500"] = true
      st = run({ collector = c, from = B + 5000, to = B + 6000, partitions = { "eth" } })
      assert.same({ "done", 999 }, { st.state, st.rows })
      p = backfill.plan({ collector = c, from = B + 5000, to = B + 6000, partitions = { "eth" } })
      assert.same({ "eth@19005000..19006000" }, windows(p))
      assert.equal("gap", p.windows[1].reason)
    end)
  end)

  describe("resuming", function()
    it("retries a failed window on the next run: no block missing, no window fetched twice", function()
      local db = new_db()
      local c = blocks.collector(node, db, { chains = { "eth", "base" } })
      -- window 3 of eth fails both attempts (retry: 2)
      node:inject({ status = 500, count = 2, chain = "eth", from = B + 3000 })
      local st = run({ collector = c, from = B, to = B + 6000, parallel = 3 })
      assert.equal("failed", st.state)
      assert.same({ 12, 11, 1, 11000 }, { st.windows_total, st.windows_done, st.windows_failed, st.rows })
      assert.same({ partition = "eth", from = B + 3000, to = B + 4000 },
        { partition = st.failed[1].partition, from = st.failed[1].from, to = st.failed[1].to })
      -- nothing of it stored, recorded failed under its block number
      assert.equal(0, one(db, "SELECT COUNT(*) AS n FROM blocks WHERE chain = 'eth' AND number >= ? AND number < ?",
        B + 3000, B + 4000).n)
      assert.same({ status = "failed", window_end = B + 4000 }, one(db, "SELECT status, window_end FROM"
        .. " sluice_backfill WHERE partition = 'eth' AND window_start = ?", B + 3000))
      local p = backfill.plan({ collector = c, from = B, to = B + 6000 })
      assert.same({ "eth@19003000..19004000" }, windows(p))
      st = run({ collector = c, from = B, to = B + 6000 })
      assert.same({ "done", 1, 1000 }, { st.state, st.windows_done, st.rows })
      assert_blocks(db, "eth", B, B + 6000)
      assert_blocks(db, "base", B, B + 6000)
      local counts = answered(node)
      for k, n in pairs(counts) do assert.equal(1, n, k) end
      assert.equal(12, (function() local n = 0 for _ in pairs(counts) do n = n + 1 end return n end)())
    end)

    it("resumes a run stopped mid-way where it stopped", function()
      local db = new_db()
      -- 40 windows at 40 requests a second: about a second of work
      local c = blocks.collector(node, db, { limiter = { rate = 40, max_rate = 40 } })
      local id = backfill.start({ collector = c, from = B, to = B + 40000, parallel = 2 })
      wait_for("5 windows done", function() return backfill.status(id).windows_done >= 5 end, 10, 0.005)
      backfill.cancel(id)
      local st = backfill.wait(id)
      assert.equal("cancelled", st.state)
      local done = st.windows_done
      assert.is_true(done >= 5 and done < 40, "done: " .. done)
      assert.equal(done * 1000, one(db, "SELECT COUNT(*) AS n FROM blocks").n)
      -- every committed window holds exactly its blocks, and no block lies
      -- outside a committed window (rows and coverage: one transaction)
      assert.equal(0, one(db, "SELECT COUNT(*) AS n FROM sluice_backfill w WHERE status = 'done' AND rows <>"
        .. " (SELECT COUNT(*) FROM blocks b WHERE b.number >= w.covered_from AND b.number < w.window_end)").n)
      assert.equal(0, one(db, "SELECT COUNT(*) AS n FROM blocks b WHERE NOT EXISTS (SELECT 1 FROM sluice_backfill w"
        .. " WHERE w.status = 'done' AND b.number >= w.window_start AND b.number < w.window_end)").n)
      local p = backfill.plan({ collector = c, from = B, to = B + 40000 })
      assert.same({ 40 - done, done }, { #p.windows, p.skipped })
      st = run({ collector = c, from = B, to = B + 40000, parallel = 2 })
      assert.same({ "done", 40 - done }, { st.state, st.windows_done })
      assert_blocks(db, "eth", B, B + 40000)
      assert.equal(40, #node.log)
      for k, n in pairs(answered(node)) do assert.equal(1, n, k) end
    end)
  end)
end)
