-- sluice.outbox: rows queued in the rows' transaction, forwarded in
-- batches by a task per sink, deleted on acknowledgement, retried behind a
-- breaker, dead-lettered when refused, bounded with a policy; the figures
-- in /status and /metrics. The sink is a kind registered here, keeping
-- rows in memory with failures injected by the spec.
local sluice = require "sluice"
local json = require "sluice.json"
local collector = require "sluice.collector"
local store = require "sluice.store"
local outbox = require "sluice.outbox"
local wait_for = require("support.wait").wait_for

-- name -> the memory sink's record: ensured {table = def}, tables {table
-- = {key text = row}}, batches {{table, n}}, script (a list of results
-- the next writes return: {nil, err, kind}), hold (a write waits while
-- true), calls (write calls), metas[call] (the meta write got), sent[call]
-- (the ids of the rows write got, in order).
local mem = {}

outbox.register_kind("spec_mem", function(name, settings)
  if settings.bad then return nil, "bad setting" end
  local m = { ensured = {}, tables = {}, batches = {}, script = {}, calls = 0, closed = false, metas = {},
    sent = {} }
  mem[name] = m
  return {
    ensure = function(_, tname, def)
      m.ensured[tname] = def
      m.tables[tname] = m.tables[tname] or {}
      return true
    end,
    write = function(_, tname, rows, def, meta)
      m.calls = m.calls + 1
      m.metas[m.calls] = meta
      m.sent[m.calls] = {}
      for i, row in ipairs(rows) do m.sent[m.calls][i] = row.id end
      while m.hold do sluice.sleep(0.005) end
      local r = table.remove(m.script, 1)
      if r then return nil, r[2], r[3] end
      for _, row in ipairs(rows) do
        local parts = {}
        for i, k in ipairs(def.key) do parts[i] = json.encode(row[k]) end
        m.tables[tname][table.concat(parts, ",")] = row
      end
      m.batches[#m.batches + 1] = { tname, #rows }
      return true
    end,
    close = function() m.closed = true end,
    stats = function() return { calls = m.calls } end,
    batch = settings.kind_batch,
  }
end)

local TICKS = { columns = { id = "integer", v = "real", big = "integer", u = "uint256", meta = "json" },
  key = { "id" }, validate = function(r) return (r.v or 0) >= 0, "negative" end }

local function spec(overrides)
  local s = { name = "ob_feed", interval = 3600, limiter = false, retry = false, breaker = false,
    tables = { ticks = TICKS }, collect = function() return {} end }
  for k, v in pairs(overrides or {}) do s[k] = v end
  return collector.define(s)
end

-- What a test leaves to close, run after it, last first (busted keeps one
-- finally per test: a second one replaces the first).
local cleanups = {}
local function defer(fn) cleanups[#cleanups + 1] = fn end

-- A store, a collector on it and an outbox with the sinks given, started
-- unless opts.idle.
local function setup(sinks, opts)
  opts = opts or {}
  local db = assert(store.open(opts.path or ":memory:"))
  local c = collector.new(spec(opts.spec), nil, { store = db })
  local box = assert(outbox.new(db, sinks))
  c:add_sink(box:route(c))
  if not opts.idle then box:start() end
  defer(function()
    box:stop(0)
    db:close()
  end)
  return db, c, box
end

-- Rows queued for sink, from its entries (each holds rows lo..hi of a chunk).
local function queued(db, sink)
  return db:query("SELECT COALESCE(SUM(hi - lo + 1), 0) AS n FROM sluice_outbox WHERE sink = ?", sink)[1].n
end

-- The ids of the rows queued for sink, in their order.
local function ids(db, sink)
  local out = {}
  for _, e in ipairs(db:query("SELECT o.lo, o.hi, c.rows FROM sluice_outbox o JOIN sluice_outbox_chunks c "
    .. "ON c.id = o.chunk WHERE o.sink = ? ORDER BY o.id", sink)) do
    local list = json.decode(e.rows)
    for i = e.lo, e.hi do out[#out + 1] = list[i].id end
  end
  return out
end

local function rows_of(n, from)
  local out = {}
  for i = 1, n do out[i] = { id = (from or 0) + i, v = i } end
  return out
end

local function sample(text, series)
  for line in text:gmatch("[^\n]+") do
    local name, value = line:match("^(.-) ([^ ]+)$")
    if name == series then return tonumber(value) end
  end
  return nil
end

describe("sluice.outbox", function()
  after_each(function()
    for i = #cleanups, 1, -1 do cleanups[i]() end
    cleanups = {}
  end)

  it("queues the accepted rows in the upsert's transaction and forwards them exactly", function()
    local db, c, box = setup({ m = { kind = "spec_mem", batch = 100, max_age = 0.05 } })
    local big = 9223372036854775807LL
    local u = "115792089237316195423570985008687907853269984665640564039457584007913129639935"
    assert.equal(2, c:store_rows({
      { id = 1, v = 1.5, big = big, u = u, meta = { a = { 1, 2 } } },
      { id = 2, v = -1 }, -- rejected: not forwarded
      { id = 3, v = 0.1 + 0.2 },
    }))
    -- in the outbox as soon as committed, with the rows
    assert.equal(2, queued(db, "m"))
    wait_for("the batch", function() return #mem.m.batches == 1 end)
    assert.same({ { "ticks", 2 } }, mem.m.batches)
    local got = mem.m.tables.ticks
    assert.equal(big, got["1"].big)
    assert.equal(u, got["1"].u)
    assert.same({ 1, 2 }, got["1"].meta.a)
    assert.equal(0.1 + 0.2, got["3"].v)
    assert.is_nil(got["2"])
    assert.same({ name = "ticks", columns = TICKS.columns, key = { "id" } }, mem.m.ensured.ticks)
    wait_for("the ack", function() return queued(db, "m") == 0 end)
    local st = box:status().m
    assert.same({ 0, 2, 0, 0, 1, "closed" }, { st.depth, st.forwarded, st.dead_letters, st.dropped, st.batches,
      st.breaker })
  end)

  it("queues nothing when the upsert fails, and stores nothing when queueing fails", function()
    local db, c = setup({ m = { kind = "spec_mem" } }, { idle = true })
    -- the rows' transaction raising after the upsert (a backfill window's record)
    assert.has_error(function()
      c:store_rows(rows_of(3), { within = function() error("coverage write failed", 0) end })
    end, "coverage write failed")
    assert.same({ 0, 0 }, { queued(db, "m"), #db:select("ticks") })
    -- the upsert itself failing (its statement refused): nothing queued
    db:exec("CREATE TRIGGER no_ticks BEFORE INSERT ON ticks BEGIN SELECT RAISE(ABORT, 'no ticks'); END")
    assert.has_error(function() c:store_rows(rows_of(2)) end)
    assert.same({ 0, 0 }, { queued(db, "m"), #db:select("ticks") })
    db:exec("DROP TRIGGER no_ticks")
    assert.equal(2, c:store_rows(rows_of(2)))
    assert.same({ 2, 2 }, { queued(db, "m"), #db:select("ticks") })
  end)

  it("sends a batch when it is full, and a partial one when its oldest row is max_age old", function()
    local db, c, box = setup({ m = { kind = "spec_mem", batch = 3, max_age = 0.3 } })
    c:store_rows(rows_of(7))
    wait_for("two full batches", function() return #mem.m.batches == 2 end)
    assert.same({ { "ticks", 3 }, { "ticks", 3 } }, mem.m.batches)
    assert.same({ 7 }, ids(db, "m"))
    local t0 = sluice.now()
    c:store_rows(rows_of(1, 7))
    wait_for("the partial batch", function() return #mem.m.batches == 3 end)
    -- row 7 was queued before t0: its age made the batch, rows 7 and 8
    assert.same({ "ticks", 2 }, mem.m.batches[3])
    local waited = sluice.now() - t0
    assert.is_true(waited < 0.3 + 0.25, "waited " .. waited)
    c:store_rows(rows_of(1, 20))
    local t1 = sluice.now()
    wait_for("the next partial batch", function() return #mem.m.batches == 4 end)
    assert.is_true(sluice.now() - t1 >= 0.3 - 0.02, "sent after " .. (sluice.now() - t1))
    assert.same({ "ticks", 1 }, mem.m.batches[4])
    wait_for("the ack", function() return box:status().m.depth == 0 end)
    assert.equal(9, box:status().m.forwarded)
  end)

  it("deletes the rows only once the sink acknowledged them; one row per key in a batch", function()
    local db, c, box = setup({ m = { kind = "spec_mem", batch = 10, max_age = 0 } })
    mem.m.hold = true
    c:store_rows({ { id = 1, v = 1 }, { id = 2, v = 2 }, { id = 1, v = 3 } })
    wait_for("the write in flight", function() return mem.m.calls == 1 end)
    assert.same({ 1, 2, 1 }, ids(db, "m"))
    mem.m.hold = false
    wait_for("the ack", function() return queued(db, "m") == 0 end)
    assert.same({ { "ticks", 2 } }, mem.m.batches)
    assert.equal(3, mem.m.tables.ticks["1"].v)
    assert.same({ 0, 2 }, { box:status().m.depth, box:status().m.forwarded })
  end)

  it("retries with backoff behind the sink's breaker, which opens and recovers", function()
    local db, c, box = setup({ m = { kind = "spec_mem", batch = 10, max_age = 0,
      retry = { base_delay = 0.01, max_delay = 0.02 },
      breaker = { failure_threshold = 3, timeout = 0.4, half_open_max_calls = 1,
        half_open_success_threshold = 1 } } })
    for _ = 1, 3 do mem.m.script[#mem.m.script + 1] = { nil, "connection refused", "connect" } end
    c:store_rows(rows_of(2))
    wait_for("the breaker open", function() return box:status().m.breaker == "open" end)
    local st = box:status().m
    assert.same({ 3, 3, "connection refused", 2, 0 }, { mem.m.calls, st.errors, st.last_error, st.depth,
      st.forwarded })
    assert.equal("open", require("sluice.breaker").get("sink:m"):status().state)
    assert.same({ "sink 'm' is unreachable (breaker open): rows are queued: connection refused" }, box:health())
    -- no call while open; the trial after timeout delivers
    wait_for("the delivery", function() return queued(db, "m") == 0 end)
    assert.same({ 4, "closed", 2, 3 }, { mem.m.calls, box:status().m.breaker, box:status().m.forwarded,
      box:status().m.errors })
    assert.same({}, box:health())
  end)

  it("dead-letters a batch the sink refuses, with its error, and the rest flows", function()
    local db, c, box = setup({ m = { kind = "spec_mem", batch = 2, max_age = 0 } })
    mem.m.script[1] = { nil, "value out of range for column v", "rejected" }
    c:store_rows(rows_of(4))
    wait_for("the rest delivered", function() return queued(db, "m") == 0 and #mem.m.batches == 1 end)
    assert.same({ { "ticks", 2 } }, mem.m.batches)
    assert.same({ 3, 4 }, { mem.m.tables.ticks["3"].id, mem.m.tables.ticks["4"].id })
    local dead = box:dead_letters("m")
    assert.equal(2, #dead)
    assert.same({ { id = 2, v = 2 }, "value out of range for column v", "ticks", "m" },
      { dead[1].row, dead[1].error, dead[1].table_name, dead[1].sink })
    assert.same({ id = 1, v = 1 }, dead[2].row)
    local st = box:status().m
    assert.same({ 0, 2, 2, 1, "closed" }, { st.depth, st.forwarded, st.dead_letters, st.errors, st.breaker })
  end)

  it("on_full = stop: a commit past max_rows fails naming the sink, nothing stored, health degraded", function()
    local db, c, box = setup({ m = { kind = "spec_mem", max_rows = 3 } }, { idle = true })
    assert.equal(3, c:store_rows(rows_of(3)))
    local msg = "sink 'm': outbox full (3 rows queued, max_rows 3): 1 rows of 'ticks' refused (on_full = stop)"
    assert.has_error(function() c:store_rows(rows_of(1, 3)) end, msg)
    assert.same({ 3, 3 }, { queued(db, "m"), #db:select("ticks") })
    assert.same({ msg }, box:health())
    -- a collection fails with it
    local c2 = collector.new(spec({ name = "ob_feed2", collect = function() return rows_of(1, 10) end }), nil,
      { store = db })
    c2:add_sink(box:route(c2))
    assert.same({ false, msg }, { c2:run_once() })
    local st = box:status().m
    assert.same({ 3, true, 2 }, { st.depth, st.full, st.refused })
  end)

  it("on_full = drop_oldest: the oldest rows make room, counted", function()
    local db, c, box = setup({ m = { kind = "spec_mem", max_rows = 3, on_full = "drop_oldest" } }, { idle = true })
    assert.equal(2, c:store_rows(rows_of(2)))
    assert.equal(3, c:store_rows(rows_of(3, 2)))
    assert.same({ 3, 4, 5 }, ids(db, "m"))
    assert.equal(5, #db:select("ticks"))
    local st = box:status().m
    assert.same({ 3, 2, true }, { st.depth, st.dropped, st.full })
    assert.same({}, box:health())
  end)

  it("on_full = drop_oldest leaves the batch being written alone: dropped is what the sink never got", function()
    -- dropping rows of the batch in flight counted them as dropped, then the
    -- write delivered them and the ack counted them as forwarded too
    local db, c, box = setup({ m = { kind = "spec_mem", batch = 3, max_age = 0, max_rows = 4,
      on_full = "drop_oldest" } })
    mem.m.hold = true
    c:store_rows(rows_of(3))                  -- ids 1..3: the batch in flight
    wait_for("the write in flight", function() return mem.m.calls == 1 end)
    c:store_rows(rows_of(3, 3))               -- ids 4..6: 6 queued, 2 over the bound
    assert.same({ 1, 2, 3, 6 }, ids(db, "m")) -- 4 and 5 dropped, not the batch
    assert.equal(2, box:status().m.dropped)
    mem.m.hold = false
    wait_for("the queue drained", function() return box:status().m.depth == 0 end)
    local got = {}
    for k in pairs(mem.m.tables.ticks) do got[#got + 1] = tonumber(k) end
    table.sort(got)
    assert.same({ 1, 2, 3, 6 }, got)          -- missing at the sink: exactly the 2 dropped
    local st = box:status().m
    assert.same({ 4, 2 }, { st.forwarded, st.dropped })
  end)

  it("forwards what an earlier process queued (everything is in SQLite)", function()
    local path = os.tmpname()
    defer(function() os.remove(path); os.remove(path .. "-wal"); os.remove(path .. "-shm") end)
    do
      local db = assert(store.open(path))
      local c = collector.new(spec(), nil, { store = db })
      local box = assert(outbox.new(db, { m = { kind = "spec_mem" } }))
      c:add_sink(box:route(c))
      c:store_rows(rows_of(5))
      box:close()
      db:close()
    end
    local db = assert(store.open(path))
    defer(function() db:close() end)
    local box = assert(outbox.new(db, { m = { kind = "spec_mem", max_age = 0 } }))
    defer(function() box:stop(0) end)
    assert.equal(5, box:status().m.depth)
    box:start()
    wait_for("the delivery", function() return box:status().m.depth == 0 end)
    assert.same({ { "ticks", 5 } }, mem.m.batches)
    -- the definition came from the outbox's record of it
    assert.same({ "id" }, mem.m.ensured.ticks.key)
  end)

  it("takes only the tables a sink lists, and only the sinks a route names", function()
    local db = assert(store.open(":memory:"))
    local c = collector.new(spec({ tables = { ticks = TICKS, other = { columns = { id = "integer" }, key = { "id" } } } }),
      nil, { store = db })
    local box = assert(outbox.new(db, { a = { kind = "spec_mem", tables = { "other" } }, b = { kind = "spec_mem" } }))
    defer(function() box:close(); db:close() end)
    c:add_sink(box:route(c, { "a" }))
    c:store_rows({ ticks = rows_of(2), other = { { id = 1 } } })
    assert.same({ 1, 0 }, { queued(db, "a"), queued(db, "b") })
    assert.has_error(function() box:route(c, { "nope" }) end, "sluice.outbox.route: no sink named 'nope' (a, b)")
  end)

  it("takes a kind's own default batch unless the configuration gives one", function()
    local _, _, box = setup({ a = { kind = "spec_mem", kind_batch = 7 }, b = { kind = "spec_mem", kind_batch = 7, batch = 3 },
      c = { kind = "spec_mem" } }, { idle = true })
    local st = box:status()
    assert.same({ 7, 3, 1000 }, { st.a.batch, st.b.batch, st.c.batch })
  end)

  it("reports exact figures in /status and /metrics, and the breaker where breakers are", function()
    local db, c, box = setup({ m = { kind = "spec_mem", batch = 4, max_age = 0, max_rows = 100 } })
    mem.m.script[1] = { nil, "bad row", "rejected" }
    c:store_rows(rows_of(4))
    wait_for("the dead letters", function() return box:status().m.dead_letters == 4 end)
    c:store_rows(rows_of(6, 4))
    wait_for("the delivery", function() return box:status().m.forwarded == 6 end)
    local app_mod = require "sluice.app"
    local prev = app_mod.current
    app_mod.current = { store = db, outbox = box, order = { c }, collectors = { [c.name] = c }, config = {} }
    defer(function() app_mod.current = prev end)
    local text = require("sluice.metrics").render()
    local function m(name, labels) return sample(text, name .. "{sink=\"m\"" .. (labels or "") .. "}") end
    assert.same({ 0, 0, 100, 6, 4, 4, 0, 0 }, { m("sluice_outbox_depth"), m("sluice_outbox_oldest_age_seconds"),
      m("sluice_outbox_max_rows"), m("sluice_outbox_forwarded_rows_total"), m("sluice_outbox_dead_letters_total"),
      m("sluice_outbox_errors_total") + 3, m("sluice_outbox_dropped_rows_total"), m("sluice_outbox_refused_total") })
    assert.equal(0.6, m("sluice_outbox_rows_per_second"))
    assert.same({ 1, 0, 0 }, { m("sluice_outbox_breaker_state", ',state="closed"'),
      m("sluice_outbox_breaker_state", ',state="open"'), m("sluice_outbox_breaker_state", ',state="half-open"') })
    assert.equal(1, sample(text, 'sluice_breaker_state{breaker="sink:m",state="closed"}'))
    local ops = require("sluice.operator").new({ current = function() return app_mod.current end })
    local st = ops:status().sinks.m
    assert.same({ kind = "spec_mem", depth = 0, forwarded = 6, dead_letters = 4, dropped = 0, refused = 0,
      errors = 1, last_error = "bad row", batches = 2, rows_per_second = 0.6, full = false, breaker = "closed",
      batch = 4, max_age = 0, max_rows = 100, on_full = "stop", sink = { calls = 3 } },
      (function() st.last_error_at = nil; return st end)())
    -- the oldest row's age while rows wait
    mem.m.hold = true
    c:store_rows(rows_of(1, 50))
    wait_for("the write in flight", function() return mem.m.calls == 4 end)
    local age = box:status().m.oldest_age
    assert.is_true(age >= 0 and age < 5, tostring(age))
    mem.m.hold = false
  end)

  it("checks the sinks' configuration", function()
    local config = require "sluice.config"
    local function prep(cfg) return config.prepare(cfg, "f.lua", { env = {} }) end
    assert.has_error(function() prep({ sinks = { nope = {} } }) end,
      "f.lua: sinks.nope: unknown sink kind 'nope' (redis_stream, spec_mem; or set kind = ...)")
    assert.has_error(function() prep({ sinks = { m = { kind = "spec_mem", on_full = "wait" } } }) end)
    assert.has_error(function() prep({ sinks = { m = { kind = "spec_mem", batch = 0 } } }) end)
    assert.has_error(function() prep({ sinks = { redis_stream = {} } }) end,
      "f.lua: sinks.redis_stream: a redis_stream sink needs redis = \"redis://...\"")
    assert.has_error(function()
      prep({ sinks = { m = { kind = "spec_mem" } }, collectors = { { use = "x", sinks = { "n" } } } })
    end, "f.lua: collectors[1].sinks: no sink named 'n' in sinks")
    local c = prep({ sinks = { m = { kind = "spec_mem", batch = 10 } }, collectors = { { use = "x", sinks = { "m" } } } })
    assert.equal(10, c.sinks.m.batch)
    local db = assert(store.open(":memory:"))
    defer(function() db:close() end)
    assert.same({ nil, "sink 'm': bad setting" }, { outbox.new(db, { m = { kind = "spec_mem", bad = true } }) })
  end)

  it("queues a commit's rows as one chunk per table, shared by its sinks, cut at the smallest batch", function()
    local db, c, box = setup({ a = { kind = "spec_mem", batch = 2, max_age = 0 },
      b = { kind = "spec_mem", batch = 3, max_age = 0 } }, { idle = true })
    c:store_rows(rows_of(5))
    local chunks = db:query("SELECT id, n, refs FROM sluice_outbox_chunks ORDER BY id")
    assert.same({ { id = 1, n = 2, refs = 2 }, { id = 2, n = 2, refs = 2 }, { id = 3, n = 1, refs = 2 } }, chunks)
    assert.same({ 5, 5 }, { queued(db, "a"), queued(db, "b") })
    assert.same({ 1, 2, 3, 4, 5 }, ids(db, "a"))
    -- a batch is whole chunks: b (batch 3) takes one of 2 rows, then 2 + 1
    box:start()
    wait_for("both drained", function() return queued(db, "a") + queued(db, "b") == 0 end)
    assert.same({ { "ticks", 2 }, { "ticks", 2 }, { "ticks", 1 } }, mem.a.batches)
    assert.same({ { "ticks", 2 }, { "ticks", 3 } }, mem.b.batches)
    -- a chunk goes with the last entry pointing at it
    assert.same({}, db:query("SELECT id FROM sluice_outbox_chunks"))
    assert.same({ 5, 5 }, { box:status().a.forwarded, box:status().b.forwarded })
  end)

  it("gives write meta.ids (stable, unique per database) and meta.at, the same on a re-send", function()
    local db, c, box = setup({ m = { kind = "spec_mem", batch = 10, max_age = 0,
      retry = { base_delay = 0.01, max_delay = 0.02 } } }, { idle = true })
    local oid = db:query("SELECT value FROM sluice_outbox_meta WHERE key = 'id'")[1].value
    assert.truthy(oid:match("^%x+$") and #oid == 16, oid)
    local other = assert(store.open(":memory:"))
    defer(function() other:close() end)
    assert(outbox.new(other, {}))
    assert.are_not.equal(oid, other:query("SELECT value FROM sluice_outbox_meta WHERE key = 'id'")[1].value)
    mem.m.script[1] = { nil, "connection reset", "connect" }
    c:store_rows({ { id = 1, v = 1 }, { id = 2, v = 2 }, { id = 1, v = 3 } })
    local at = db:query("SELECT at FROM sluice_outbox")[1].at
    box:start()
    wait_for("the re-send delivered", function() return queued(db, "m") == 0 end)
    assert.equal(2, mem.m.calls)
    -- one row per key, the latest: row 1 of the chunk is row 3's key
    local want = { ids = { oid .. "-1-3", oid .. "-1-2" }, at = { at, at } }
    assert.same(want, mem.m.metas[1])
    assert.same(want, mem.m.metas[2])
    assert.same({ 1, 2 }, mem.m.sent[2])
    -- the next commit's rows are new ids, also for a key sent before
    c:store_rows({ { id = 1, v = 4 } })
    wait_for("the second batch", function() return mem.m.calls == 3 end)
    assert.same({ oid .. "-2-1" }, mem.m.metas[3].ids)
  end)

  it("reads the next batch while a write is in flight, and sends it after the ack", function()
    local db, c, box = setup({ m = { kind = "spec_mem", batch = 3, max_age = 0 } })
    mem.m.hold = true
    c:store_rows(rows_of(6))                -- two chunks: 1..3, 4..6
    wait_for("the write in flight", function() return mem.m.calls == 1 end)
    -- read while the first write waits (the outbox's state of the sink)
    local ahead = box.sinks.m.ahead
    local read = json.decode(ahead.data:json())
    assert.same({ 4, 5, 6 }, { read[1].id, read[2].id, read[3].id })
    assert.same({ 1, 2, 3, 4, 5, 6 }, ids(db, "m")) -- nothing deleted before the ack
    mem.m.hold = false
    wait_for("the queue drained", function() return queued(db, "m") == 0 end)
    assert.same({ { 1, 2, 3 }, { 4, 5, 6 } }, mem.m.sent)
    assert.same({ 0, 6, 2 }, { box:status().m.depth, box:status().m.forwarded, box:status().m.batches })
  end)

  it("never sends a batch read ahead whose rows drop_oldest dropped since", function()
    -- the batch read during a write was sent after it even when a commit
    -- had dropped its rows meanwhile: counted dropped, and delivered
    local db, c, box = setup({ m = { kind = "spec_mem", batch = 3, max_age = 0, max_rows = 9,
      on_full = "drop_oldest" } })
    mem.m.hold = true
    c:store_rows(rows_of(6))                -- 1..3 in flight, 4..6 read ahead
    wait_for("the write in flight", function() return mem.m.calls == 1 end)
    assert.equal(4, json.decode(box.sinks.m.ahead.data:json())[1].id)
    c:store_rows(rows_of(9, 6))             -- 7..15: 15 queued, 6 over: 4..9 dropped
    assert.same({ 1, 2, 3, 10, 11, 12, 13, 14, 15 }, ids(db, "m"))
    mem.m.hold = false
    wait_for("the queue drained", function() return queued(db, "m") == 0 end)
    assert.same({ { 1, 2, 3 }, { 10, 11, 12 }, { 13, 14, 15 } }, mem.m.sent)
    local st = box:status().m
    assert.same({ 0, 9, 6 }, { st.depth, st.forwarded, st.dropped })
  end)

  it("drops the first rows of an entry when only some of them must go", function()
    local db, c, box = setup({ m = { kind = "spec_mem", max_rows = 4, on_full = "drop_oldest", max_age = 0 } },
      { idle = true })
    c:store_rows(rows_of(3))
    c:store_rows(rows_of(2, 3))
    assert.same({ 2, 3, 4, 5 }, ids(db, "m"))
    assert.same({ { lo = 2, hi = 3 }, { lo = 1, hi = 2 } }, db:query("SELECT lo, hi FROM sluice_outbox ORDER BY id"))
    assert.same({ 4, 1 }, { box:status().m.depth, box:status().m.dropped })
    box:start()
    wait_for("the delivery", function() return queued(db, "m") == 0 end)
    assert.same({ 2, 3, 4, 5 }, mem.m.sent[1])
    local oid = db:query("SELECT value FROM sluice_outbox_meta WHERE key = 'id'")[1].value
    assert.same({ oid .. "-1-2", oid .. "-1-3", oid .. "-2-1", oid .. "-2-2" }, mem.m.metas[1].ids)
  end)

  it("dead-letters every queued row of a refused batch, one per row", function()
    local _, c, box = setup({ m = { kind = "spec_mem", batch = 10, max_age = 0 } })
    mem.m.script[1] = { nil, "bad row", "rejected" }
    c:store_rows({ { id = 1, v = 1 }, { id = 2, v = 2 }, { id = 1, v = 3 } })
    wait_for("the dead letters", function() return box:status().m.dead_letters == 3 end)
    local dead = box:dead_letters("m")
    assert.same({ { id = 1, v = 3 }, { id = 2, v = 2 }, { id = 1, v = 1 } },
      { dead[1].row, dead[2].row, dead[3].row })
    assert.same({ 0, 3 }, { box:status().m.depth, box:status().m.dead_letters })
  end)

  it("queues the rows as the store holds them", function()
    local _, c = setup({ m = { kind = "spec_mem", max_age = 0 } })
    local u = "115792089237316195423570985008687907853269984665640564039457584007913129639935"
    c:store_rows({
      { id = "1", v = 2.5, big = "9223372036854775807", u = u, meta = '{"a":[1,2]}' },
      { id = 2, v = 0.1, big = true, meta = "not json" },
      { id = 3, v = 1e300, u = "0", meta = { s = "\"q\"\n\1 é" } },
    })
    wait_for("the batch", function() return #mem.m.batches == 1 end)
    local got = mem.m.tables.ticks
    assert.same({ 1, 2.5, 9223372036854775807LL, u, { a = { 1, 2 } } },
      { got["1"].id, got["1"].v, got["1"].big, got["1"].u, got["1"].meta })
    assert.same({ 2, 0.1, 1, "not json" }, { got["2"].id, got["2"].v, got["2"].big, got["2"].meta })
    assert.same({ 1e300, "0", "\"q\"\n\1 é" }, { got["3"].v, got["3"].u, got["3"].meta.s })
    assert.is_nil(got["3"].big)
  end)

  it("refuses a commit whose rows cannot be written as JSON, naming the row", function()
    local db = assert(store.open(":memory:"))
    local c = collector.new(spec({ tables = { t = { columns = { id = "integer", s = "text",
      x = { type = "real", nonfinite = true } }, key = { "id" } } } }), nil, { store = db })
    local box = assert(outbox.new(db, { m = { kind = "spec_mem" } }))
    defer(function() box:close(); db:close() end)
    c:add_sink(box:route(c))
    assert.has_error(function() c:store_rows({ { id = 1, x = 1 }, { id = 2, x = math.huge } }) end,
      "sluice.outbox: row 2 of 't' cannot be queued: column \"x\": cannot be written as JSON")
    assert.has_error(function() c:store_rows({ { id = 3, s = "\255" } }) end,
      "sluice.outbox: row 1 of 't' cannot be queued: column \"s\": cannot be written as JSON")
    assert.same({ 0, 0 }, { queued(db, "m"), #db:select("t") })
  end)

  it("migrates a database of the previous schema (a row per queued row) and drains it in order", function()
    local path = os.tmpname()
    defer(function() os.remove(path); os.remove(path .. "-wal"); os.remove(path .. "-shm") end)
    do
      local db = assert(store.open(path))
      assert(db:script([[
CREATE TABLE sluice_outbox (
  id INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL, table_name TEXT NOT NULL,
  row TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX sluice_outbox_by_sink ON sluice_outbox (sink, id);
CREATE INDEX sluice_outbox_by_table ON sluice_outbox (sink, table_name, id);
CREATE TABLE sluice_outbox_sinks (
  sink TEXT PRIMARY KEY, depth INTEGER NOT NULL DEFAULT 0,
  forwarded INTEGER NOT NULL DEFAULT 0, dropped INTEGER NOT NULL DEFAULT 0,
  dead INTEGER NOT NULL DEFAULT 0);
CREATE TABLE sluice_outbox_tables (table_name TEXT PRIMARY KEY, def TEXT NOT NULL);
INSERT INTO sluice_outbox_tables VALUES ('ticks', '{"columns":{"id":"integer","v":"real"},"key":["id"],"name":"ticks"}');
INSERT INTO sluice_outbox_tables VALUES ('other', '{"columns":{"id":"integer"},"key":["id"],"name":"other"}');
INSERT INTO sluice_outbox (sink, table_name, row, at) VALUES
  ('m', 'ticks', '{"id":1,"v":1.5}', 100), ('n', 'ticks', '{"id":1,"v":1.5}', 100),
  ('m', 'other', '{"id":7}', 101), ('m', 'ticks', '{"id":9007199254740993,"v":2}', 102),
  ('m', 'ticks', '{"id":1,"v":3}', 103);
INSERT INTO sluice_outbox_sinks (sink, depth, forwarded) VALUES ('m', 4, 10), ('n', 1, 0);
]]))
      db:close()
    end
    local db = assert(store.open(path))
    defer(function() db:close() end)
    local box = assert(outbox.new(db, { m = { kind = "spec_mem", max_age = 0 } }))
    defer(function() box:stop(0) end)
    -- every old row a chunk of one, with its id
    assert.same({ { id = 1, n = 1, refs = 1 }, { id = 2, n = 1, refs = 1 }, { id = 3, n = 1, refs = 1 },
      { id = 4, n = 1, refs = 1 }, { id = 5, n = 1, refs = 1 } },
      db:query("SELECT id, n, refs FROM sluice_outbox_chunks ORDER BY id"))
    assert.same({ 4, 1 }, { queued(db, "m"), queued(db, "n") })
    assert.same({ 4, 10 }, { box:status().m.depth, box:status().m.forwarded })
    assert.same({}, db:query("SELECT name FROM sqlite_master WHERE name = 'sluice_outbox_v1'"))
    box:start()
    wait_for("the delivery", function() return queued(db, "m") == 0 end)
    -- the oldest row's table first: ticks 1, 4, 5 (one per key), then other
    assert.same({ { "ticks", 2 }, { "other", 1 } }, mem.m.batches)
    assert.same({ 1, 9007199254740993LL }, mem.m.sent[1])
    assert.equal(3, mem.m.tables.ticks["1"].v)
    local oid = db:query("SELECT value FROM sluice_outbox_meta WHERE key = 'id'")[1].value
    assert.same({ ids = { oid .. "-5-1", oid .. "-4-1" }, at = { 103, 102 } }, mem.m.metas[1])
    assert.same({ 0, 13 }, { box:status().m.depth, box:status().m.forwarded })
    -- n's row is still queued; its chunk too; new rows queue after the old ids
    assert.same({ 1 }, ids(db, "n"))
    assert.same({ { id = 2 } }, db:query("SELECT id FROM sluice_outbox_chunks"))
    local c = collector.new(spec(), nil, { store = db })
    c:add_sink(box:route(c))
    c:store_rows(rows_of(1, 20))
    assert.same({ { id = 6 } }, db:query("SELECT chunk AS id FROM sluice_outbox WHERE sink = 'm'"))
  end)
end)

describe("sluice._outbox.batch", function()
  local native = require "sluice._outbox"

  it("reads rows from chunks' text, one per key, and writes them back", function()
    local b = native.batch({ "id" })
    assert.is_true(b:add('[{"id":1,"v":"a"},{"id":2,"v":"b\\tc"}]', 1, 2, 1))
    assert.is_true(b:add('[{"id":9},{"id":1,"v":null}]', 2, 2, 2))
    assert.same({ 2, 3 }, { b:count(), b:queued() })
    local entries, rows = b:origins()
    assert.same({ { 2, 1 }, { 2, 2 } }, { entries, rows })
    assert.same({ { id = 1, v = json.null }, { id = 2, v = "b\tc" } }, json.decode(b:json()))
    assert.equal("1\t\\N\n2\tb\\tc\n", b:copy_text({ "id", "v" }, { "bigint", "text" }))
    b:free()
    assert.has_error(function() b:count() end, "sluice._outbox: the batch was freed")
  end)

  it("takes names as strings only (a number converted would not be anchored)", function()
    assert.has_error(function() native.batch({ 1 }) end, "bad argument #1 to 'batch' (key names must be strings)")
    local b = native.batch({})
    assert.is_true(b:add('[{"a":1}]', 1, 1, 1))
    assert.has_error(function() b:copy_text({ 1 }, { "text" }) end,
      "bad argument #1 to 'copy_text' (column names and casts are strings)")
    assert.has_error(function() b:rowbinary({ { name = 1, type = "int64" } }, 1) end,
      "bad argument #1 to 'rowbinary' (a column's name or type)")
    assert.has_error(function() b:add('[{"a":1}]', 2, 1, 1) end, "bad argument #3 to 'add' (rows lo..hi expected)")
    assert.same({ nil, "1 rows, row 2 asked for" }, { b:add('[{"a":1}]', 1, 2, 1) })
  end)

  it("returns copy_text's and rowbinary's text, or nil and the encoder's message", function()
    local b = native.batch({})
    assert.is_true(b:add('[{"id":7,"v":"a\\u0000b"},{"id":8}]', 1, 2, 1))
    assert.same({ nil, "row 1 column v: a NUL character (PostgreSQL text cannot hold one)" },
      { b:copy_text({ "id", "v" }, { "bigint", "text" }) })
    assert.equal("7\n8\n", b:copy_text({ "id" }, { "bigint" }))
    local int64 = { name = "id", type = "int64" }
    assert.same({ nil, "row 2 column v: null in a column that is not Nullable" },
      { b:rowbinary({ int64, { name = "v", type = "string", nullable = false } }, 5) })
    assert.equal("\7\0\0\0\0\0\0\0\5\0\0\0\0\0\0\0\8\0\0\0\0\0\0\0\9\0\0\0\0\0\0\0",
      b:rowbinary({ int64 }, 5, { [2] = 9 }))
    local empty = native.batch({})
    assert.equal("", empty:copy_text({ "id" }, { "bigint" }))
    assert.equal("", empty:rowbinary({ int64 }, 5))
  end)
end)
