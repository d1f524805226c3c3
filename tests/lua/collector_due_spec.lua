-- collector:due(): the due time of the latest scheduled run, as a sink sees
-- it while that run commits (the schedule lag tests/bench/exchanges.lua
-- measures).
local sluice = require "sluice"
local collector = require "sluice.collector"
local store = require "sluice.store"
local wait_for = require("support.wait").wait_for

local TABLES = { ticks = { columns = { id = "integer" }, key = { "id" } } }

describe("collector:due", function()
  it("is the committing run's due time: the start plus first_delay, then one interval more", function()
    local db = assert(store.open(":memory:"))
    finally(function() db:close() end)
    local slow = false
    local c = collector.new(collector.define({
      name = "due_feed", limiter = false, breaker = false, retry = false, tables = TABLES,
      datasets = {
        a = { interval = 0.2, jitter = 0, first_delay = 0.05, table = "ticks", collect = function()
          if slow then sluice.sleep(0.3) end -- overruns its 0.2 s period
          return { { id = 1 } }
        end },
        b = { interval = 3600, table = "ticks", enabled = false, collect = function() return {} end },
      },
    }), nil, { store = db })
    local seen = {}
    c:add_sink({ publish = function()
      seen[#seen + 1] = { due = c:due("a"), at = sluice.now() }
    end })
    assert.is_nil(c:due("a"))
    local t0 = sluice.now()
    c:start()
    local t1 = sluice.now()
    finally(function() c:stop() end)
    wait_for("two runs", function() return #seen >= 2 end)
    local d1, d2 = seen[1].due, seen[2].due
    assert.is_true(d1 >= t0 + 0.05 and d1 <= t1 + 0.05, string.format("%.6f in [%.6f, %.6f]", d1, t0, t1))
    assert.equal(d1 + 0.2, d2) -- jitter 0: exactly one interval later
    assert.is_true(seen[1].at >= d1 and seen[2].at >= d2)
    -- a run by hand has no due time of its own
    assert.same({ true, 1 }, { c:run_once("a") })
    assert.equal(d2, c:due("a"))
    assert.is_nil(c:due("b"))
    -- a run that overran its period delays the next one to its end
    slow = true
    local n = #seen
    wait_for("two slow runs", function() return #seen >= n + 2 end)
    local prev, cur = seen[n + 1], seen[n + 2]
    assert.is_true(cur.due >= prev.at and cur.due > prev.due + 0.2,
      string.format("due %.6f after the previous commit %.6f", cur.due, prev.at))
  end)

  it("names the dataset of a collector with datasets, and none of one with collect", function()
    local c = collector.new(collector.define({ name = "due_ds", limiter = false,
      datasets = { a = { collect = function() return {} end } } }))
    assert.has_error(function() c:due() end,
      "collector:due: bad argument #1 (collector 'due_ds' has datasets: name one (a))")
    assert.has_error(function() c:due("x") end,
      "collector:due: bad argument #1 (no dataset 'x' in collector 'due_ds' (a))")
    local plain = collector.new(collector.define({ name = "due_plain", limiter = false,
      interval = 3600, collect = function() return {} end }))
    assert.is_nil(plain:due())
    plain:start()
    finally(function() plain:stop() end)
    wait_for("the first run", function() return plain:counters().collections_completed == 1 end)
    assert.is_number(plain:due())
    assert.has_error(function() plain:due("a") end,
      "collector:due: bad argument #1 (collector 'due_plain' has no datasets)")
  end)
end)
