-- What a collector instance allocates only when used (memory at scale,
-- tests/bench/collectors.lua): its logger, its list of sinks, its run
-- slot's list of waiters.
local sluice = require "sluice"
local collector = require "sluice.collector"
local slot = require "sluice.collector.slot"
local logs = require "support.logs"
local log = require "sluice.log"
local store = require "sluice.store"
local wait_for = require("support.wait").wait_for

describe("a collector instance", function()
  local restore
  before_each(function()
    log.output("/dev/null")
    restore = logs.capture("info")
  end)
  after_each(function() restore() log.output("stderr") end)

  it("has no logger of its own until self.log is read; runs log through the module's", function()
    local c = collector.new(collector.define({
      name = "lazy_log", limiter = false, breaker = false, retry = false, interval = 3600,
      tables = { t = { columns = { id = "integer" }, key = { "id" } } },
      collect = function() return { { id = 1 }, { id = 2 } } end,
    }))
    assert.is_nil(rawget(c, "log"))
    c:start()
    finally(function() c:stop() end)
    wait_for("a run", function() return c:counters().collections_completed == 1 end)
    assert.is_nil(rawget(c, "log"))
    local done = logs.logged("collection done")
    assert.equal(1, #done)
    assert.equal("lazy_log", done[1].collector)
    assert.equal(2, done[1].rows)
    assert.is_nil(done[1].dataset)
    -- read, it is made once and kept, and its entries name the collector
    local l = c.log
    assert.equal("table", type(l))
    assert.equal(l, rawget(c, "log"))
    assert.equal(l, c.log)
    l.info("hello")
    local hello = logs.logged("hello")
    assert.equal(1, #hello)
    assert.equal("lazy_log", hello[1].collector)
    -- unknown fields are still nil, methods still methods
    assert.is_nil(c.no_such_field)
    assert.equal(collector.Collector.health, c.health)
  end)

  it("names the dataset in a dataset's collection done", function()
    local c = collector.new(collector.define({
      name = "lazy_ds", limiter = false, breaker = false, retry = false,
      datasets = { a = { interval = 3600, collect = function() return {} end } },
    }))
    assert.same({ true, 0 }, { c:run_once("a") })
    local done = logs.logged("collection done")
    assert.equal(1, #done)
    assert.equal("lazy_ds", done[1].collector)
    assert.equal("a", done[1].dataset)
    assert.equal(0, done[1].rows)
  end)

  it("keeps the sinks of each instance its own", function()
    local spec = collector.define({ name = "lazy_sinks", limiter = false, breaker = false,
      retry = false, tables = { t = { columns = { x = "integer" }, key = { "x" } } },
      collect = function() return {} end })
    local db = assert(store.open(":memory:"))
    finally(function() db:close() end)
    local a = collector.new(spec, nil, { store = db })
    local b = collector.new(spec, { name = "lazy_sinks_b" }, { store = db })
    local got = {}
    a:add_sink({ publish = function(_, t, rows) got[#got + 1] = { "a", t, #rows } end })
    a:store_rows({ { x = 1 } })
    b:store_rows({ { x = 1 } })
    b:add_sink({ publish = function(_, t, rows) got[#got + 1] = { "b", t, #rows } end })
    b:store_rows({ { x = 1 }, { x = 2 } })
    assert.same({ { "a", "t", 1 }, { "b", "t", 2 } }, got)
  end)
end)

describe("collector.new", function()
  -- a store of the test's own that counts what is defined in it
  local function counting_store()
    local defined = {}
    return {
      define = function(_, def)
        defined[#defined + 1] = def.name
        return true
      end,
      load_state = function() return nil end,
    }, defined
  end

  it("defines a spec's tables in a store once for all its instances", function()
    local spec = collector.define({ name = "once", limiter = false, breaker = false, retry = false,
      tables = { t = { columns = { x = "integer" }, key = { "x" } } },
      collect = function() return {} end })
    local db, defined = counting_store()
    for i = 1, 3 do collector.new(spec, { name = "once_" .. i }, { store = db }) end
    assert.same({ "t" }, defined)
    -- another store gets them too, and so does another spec's table of the same name
    local db2, defined2 = counting_store()
    collector.new(spec, nil, { store = db2 })
    assert.same({ "t" }, defined2)
    local other = collector.define({ name = "once_other", limiter = false, breaker = false,
      retry = false, tables = { t = { columns = { x = "integer", y = "real" }, key = { "x" } } },
      collect = function() return {} end })
    collector.new(other, nil, { store = db })
    assert.same({ "t", "t" }, defined)
  end)

  it("defines them again for each instance of a spec with migrate", function()
    local migrated = 0
    local spec = collector.define({ name = "mig", limiter = false, breaker = false, retry = false,
      tables = { t = { columns = { x = "integer" }, key = { "x" } } },
      migrate = function() migrated = migrated + 1 end,
      collect = function() return {} end })
    local db, defined = counting_store()
    collector.new(spec, nil, { store = db })
    collector.new(spec, { name = "mig_2" }, { store = db })
    assert.equal(2, migrated)
    assert.same({ "t", "t" }, defined)
  end)

  it("defines them again after a definition failed", function()
    local spec = collector.define({ name = "failing", limiter = false, breaker = false, retry = false,
      tables = { t = { columns = { x = "integer" }, key = { "x" } } },
      collect = function() return {} end })
    local calls = 0
    local db = { define = function() calls = calls + 1 return nil, "disk full" end,
      load_state = function() return nil end }
    for _ = 1, 2 do
      local ok, err = pcall(collector.new, spec, nil, { store = db })
      assert.is_false(ok)
      assert.matches("table 't': disk full", err, 1, true)
    end
    assert.equal(2, calls)
  end)
end)

describe("a run slot", function()
  it("hands a run's results to every waiter, and to none after the release", function()
    local s = slot.new()
    assert.equal(0, s:waiting())
    s:take()
    local got = {}
    local function waiter()
      local r = { s:wait() } -- (got[#got + 1] = ... would take the index before waiting)
      got[#got + 1] = r
    end
    local t1, t2 = sluice.spawn(waiter), sluice.spawn(waiter)
    wait_for("two waiters", function() return s:waiting() == 2 end)
    s:release(true, 7)
    sluice.wait(t1)
    sluice.wait(t2)
    assert.same({ { true, true, 7 }, { true, true, 7 } }, got)
    assert.equal(0, s:waiting())
    s:take()
    s:release(false, "x") -- nobody waits
    assert.equal(0, s:waiting())
    assert.same({ true }, { s:wait() }) -- free: returns at once
  end)
end)
