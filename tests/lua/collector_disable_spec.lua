-- sluice.collector: disabling a dataset at run time (c:disable_dataset),
-- e.g. when the node lacks the method it calls: its schedule, statistics,
-- health, the log, the operator views and /metrics, and a reload.
local collector = require "sluice.collector"
local store = require "sluice.store"
local log = require "sluice.log"
local operator = require "sluice.operator"
local metrics = require "sluice.metrics"
local app_mod = require "sluice.app"
local logs = require "support.logs"
local wait_for = require("support.wait").wait_for

local REASON = "the node has no txpool_content (JSON-RPC error -32601: method not found)"

-- Cleanups for the running test, last first, after it (busted keeps one
-- finally per test: the last registered).
local cleanups = {}
local function defer(fn) cleanups[#cleanups + 1] = fn end
local function run_cleanups()
  for i = #cleanups, 1, -1 do cleanups[i]() end
  cleanups = {}
end

local function quiet()
  log.output("/dev/null")
  local restore = logs.capture("info")
  defer(function()
    restore()
    log.output("-")
  end)
end

-- A collector with a fast dataset `ticks` and a dataset `pool` whose
-- collect does what the test says (a function of self and its run count).
local function feed(name, pool)
  local runs = { ticks = 0, pool = 0 }
  local spec = collector.define{
    name = name, interval = 3600, retry = false, limiter = false,
    datasets = {
      ticks = { interval = 0.02, collect = function()
        runs.ticks = runs.ticks + 1
        return {}
      end },
      pool = { interval = 0.02, collect = function(self)
        runs.pool = runs.pool + 1
        return pool(self, runs.pool)
      end },
    },
  }
  return spec, runs
end

describe("collector:disable_dataset", function()
  after_each(run_cleanups)
  it("stops the dataset's schedule after the run in flight, which ends normally", function()
    quiet()
    local spec, runs = feed("dis_sched", function(self, n)
      if n == 1 then error("txpool_content: JSON-RPC error -32601", 0) end
      self:disable_dataset("pool", REASON)
      self:disable_dataset("pool", "a second reason") -- already disabled: nothing
      return {} -- the run that disabled it completes
    end)
    local c = collector.new(spec)
    defer(function() c:stop() end)
    c:start()
    wait_for("pool disabled, its run ended", function()
      local d = c:counters().datasets.pool
      return d.enabled == false and d.collections_completed == 1
    end)
    -- the other dataset keeps its schedule; pool's stopped
    local ticks = runs.ticks
    wait_for("5 more runs of ticks", function() return runs.ticks >= ticks + 5 end)
    assert.equal(2, runs.pool)
    local d = c:counters().datasets.pool
    assert.same({ false, REASON, 1, 1 },
      { d.enabled, d.disabled_reason, d.collections_completed, d.collections_failed })
    assert.same({ true }, { c:counters().datasets.ticks.enabled, c:counters().datasets.ticks.disabled_reason })
    -- health: the dataset is disabled with the reason and no longer
    -- degrades the collector (its last run had failed before)
    assert.same({ "disabled", REASON }, { c:health("pool") })
    assert.same({ "healthy" }, { c:health() })
    local st = c:stats().datasets.pool
    assert.same({ "disabled", REASON, false, REASON },
      { st.status, st.status_reason, st.enabled, st.disabled_reason })
    -- logged once, at warning level
    local warned = logs.logged("dataset disabled")
    assert.equal(1, #warned)
    assert.same({ "warning", "dis_sched", "pool", REASON },
      { warned[1].level, warned[1].collector, warned[1].dataset, warned[1].reason })
    -- run_once(name) still runs it; run_once() runs the enabled ones only
    assert.same({ true, 0 }, { c:run_once("pool") })
    assert.equal(3, runs.pool)
    local before = runs.ticks
    assert.is_true((c:run_once()))
    assert.equal(3, runs.pool)
    assert.is_true(runs.ticks > before)
    assert.equal(1, #logs.logged("dataset disabled"))
  end)

  it("makes the collector disabled when every dataset is, naming the reasons", function()
    quiet()
    local spec = feed("dis_all", function() return {} end)
    local c = collector.new(spec, { datasets = { ticks = { enabled = false } } })
    c:disable_dataset("pool", REASON)
    assert.same({ "disabled", "every dataset is disabled: dataset pool: " .. REASON
      .. "; dataset ticks: dataset disabled in the configuration" }, { c:health() })
    assert.same({ "disabled", "dataset disabled in the configuration" }, { c:health("ticks") })
    assert.equal("dataset disabled in the configuration", c:counters().datasets.ticks.disabled_reason)
  end)

  it("refuses misuse, naming the argument", function()
    local spec = feed("dis_misuse", function() return {} end)
    local c = collector.new(spec)
    local ok, err = pcall(c.disable_dataset, c, "nope", "why")
    assert.is_false(ok)
    assert.matches("collector:disable_dataset: bad argument #1 (no dataset 'nope' in collector 'dis_misuse' "
      .. "(pool, ticks))", err, 1, true)
    ok, err = pcall(c.disable_dataset, c, "pool")
    assert.is_false(ok)
    assert.matches("collector:disable_dataset: bad argument #2 (a reason, a non-empty string, expected)", err, 1, true)
    assert.is_true(c:counters().datasets.pool.enabled)
    local plain = collector.new(collector.define{ name = "dis_plain", retry = false, limiter = false,
      collect = function() return {} end })
    ok, err = pcall(plain.disable_dataset, plain, "pool", "why")
    assert.is_false(ok)
    assert.matches("collector:disable_dataset: bad argument #1 (collector 'dis_plain' has no datasets)", err, 1, true)
  end)

  it("shows in /status, the brief, /health, POST /collect and /metrics", function()
    quiet()
    local spec = feed("dis_ops", function() return {} end)
    local c = collector.new(spec)
    local saved = app_mod.current
    local app = { collectors = { dis_ops = c }, order = { c }, config = {}, store = assert(store.open(":memory:")) }
    app_mod.current = app
    defer(function()
      app_mod.current = saved
      app.store:close()
    end)
    local ops = operator.new({ current = function() return app end })
    c:disable_dataset("pool", REASON)
    local st = ops:status().collectors.dis_ops
    assert.same({ "disabled", REASON, false, REASON },
      { st.datasets.pool.status, st.datasets.pool.status_reason, st.datasets.pool.enabled,
        st.datasets.pool.disabled_reason })
    assert.equal("healthy", st.status)
    assert.same({ "disabled", REASON }, { ops:collectors_brief().dis_ops.datasets.pool.status,
      ops:collectors_brief().dis_ops.datasets.pool.disabled_reason })
    assert.same({ nil, "dataset 'pool' of collector 'dis_ops' is disabled (" .. REASON .. ")", "disabled" },
      { ops:collect("dis_ops", { dataset = "pool" }) })
    assert.same({ collector = "dis_ops", dataset = "pool", ok = true, records = 0 },
      ops:collect("dis_ops", { dataset = "pool", run_disabled = true }))
    local text = metrics.render()
    local function sample(name)
      return tonumber(text:match("\n" .. name:gsub("[%p]", "%%%0") .. " (%S+)"))
    end
    assert.equal(1, sample('sluice_dataset_health{collector="dis_ops",dataset="pool",status="disabled"}'))
    assert.equal(0, sample('sluice_dataset_health{collector="dis_ops",dataset="pool",status="healthy"}'))
    assert.equal(1, sample('sluice_dataset_health{collector="dis_ops",dataset="ticks",status="healthy"}'))
    assert.equal(0, sample('sluice_dataset_health{collector="dis_ops",dataset="ticks",status="disabled"}'))
    assert.equal(1, sample('sluice_collector_health{collector="dis_ops",status="healthy"}'))
    c:disable_dataset("ticks", "not needed")
    text = metrics.render()
    assert.equal(1, sample('sluice_collector_health{collector="dis_ops",status="disabled"}'))
    assert.equal(0, sample('sluice_collector_health{collector="dis_ops",status="healthy"}'))
  end)

  it("is enabled again in the instance a reload builds", function()
    quiet()
    local spec, runs = feed("dis_reload", function(self)
      self:disable_dataset("pool", REASON)
      return {}
    end)
    local old = collector.new(spec)
    defer(function() old:stop() end)
    old:start()
    wait_for("pool disabled", function() return old:counters().datasets.pool.enabled == false end)
    old:stop()
    old:drain()
    local new = collector.new(spec):adopt(old)
    defer(function() new:stop() end)
    assert.same({ true, nil }, { new:counters().datasets.pool.enabled, new:counters().datasets.pool.disabled_reason })
    assert.equal("healthy", (new:health("pool")))
    new:start({ after = old })
    wait_for("pool runs (and disables itself) again", function() return runs.pool >= 2 end)
    -- (the run that disabled it is counted when it ends, after the call)
    wait_for("pool's run ended", function() return new:counters().datasets.pool.collections_completed == 2 end)
    assert.is_false(new:counters().datasets.pool.enabled) -- the counters carried on
    assert.equal(2, #logs.logged("dataset disabled"))
  end)
end)
