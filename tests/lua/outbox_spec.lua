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
-- true), calls (write calls).
local mem = {}

outbox.register_kind("spec_mem", function(name, settings)
  if settings.bad then return nil, "bad setting" end
  local m = { ensured = {}, tables = {}, batches = {}, script = {}, calls = 0, closed = false }
  mem[name] = m
  return {
    ensure = function(_, tname, def)
      m.ensured[tname] = def
      m.tables[tname] = m.tables[tname] or {}
      return true
    end,
    write = function(_, tname, rows, def)
      m.calls = m.calls + 1
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

-- A store, a collector on it and an outbox with the sinks given, started.
local function setup(sinks, overrides)
  local db = assert(store.open(":memory:"))
  local c = collector.new(spec(overrides), nil, { store = db })
  local box = assert(outbox.new(db, sinks))
  c:add_sink(box:route(c))
  box:start()
  finally(function()
    box:stop(0)
    db:close()
  end)
  return db, c, box
end

local function queued(db, sink)
  return db:query("SELECT COUNT(*) AS n FROM sluice_outbox WHERE sink = ?", sink)[1].n
end

describe("sluice.outbox", function()
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
end)
