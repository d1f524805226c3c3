-- sluice.collector datasets: several schedules in one collector, sharing
-- its limiter, breaker, retry and store; their statistics, health,
-- configuration, reload hand-over, and the operator views of them.
local sluice = require "sluice"
local server = require "sluice.server"
local collector = require "sluice.collector"
local store = require "sluice.store"
local log = require "sluice.log"
local operator = require "sluice.operator"
local metrics = require "sluice.metrics"
local app_mod = require "sluice.app"
local admin = require "sluice.admin"
local http = require "sluice.http"
local wait_for = require("support.wait").wait_for
local files = require "support.files"

-- An upstream answering 200 {"ok":true}, or what a test queued.
local function upstream()
  local u = { queue = {}, hits = 0 }
  u.srv = assert(server.listen({ port = 0 }))
  u.url = "http://127.0.0.1:" .. u.srv.port
  u.srv:route("*", "/*", function()
    u.hits = u.hits + 1
    local a = table.remove(u.queue, 1)
    if not a then return 200, { ok = true } end
    return a[1], a[2]
  end)
  function u:push(n, status, body)
    for _ = 1, n do self.queue[#self.queue + 1] = { status, body } end
  end
  return u
end

local function feed(overrides)
  local s = {
    name = "feed", interval = 3600,
    retry = false, limiter = false,
    datasets = {
      tickers = { interval = 3600, collect = function() return {} end },
      funding = { interval = 3600, collect = function() return {} end },
    },
  }
  for k, v in pairs(overrides or {}) do s[k] = v end
  return collector.define(s)
end

local function quiet()
  log.output("/dev/null")
  finally(function() log.output("-") end)
end

describe("sluice.collector datasets: schedules", function()
  it("runs each dataset at its own interval", function()
    local at = { fast = {}, slow = {} }
    local c = collector.new(feed({ datasets = {
      fast = { interval = 0.02, collect = function() at.fast[#at.fast + 1] = sluice.now() end },
      slow = { interval = 3600, collect = function() at.slow[#at.slow + 1] = sluice.now() end },
    } }))
    finally(function() c:stop() end)
    assert.equal(0.02, c.interval) -- the most frequent schedule
    c:start()
    wait_for("6 runs of fast", function() return c:counters().datasets.fast.collections_completed >= 6 end)
    c:stop()
    c:drain()
    local cn = c:counters()
    -- slow ran once, at start; fast on its own 0.02 s grid, never ahead
    -- of it (a run the loop delayed does not shift the grid)
    assert.equal(1, #at.slow)
    assert.same({ 1, #at.fast }, { cn.datasets.slow.collections_completed, cn.datasets.fast.collections_completed })
    assert.equal(#at.fast + 1, cn.collections_completed) -- the collector's totals
    for i = 2, #at.fast do
      assert.is_true(at.fast[i] - at.fast[1] >= (i - 1) * 0.02 - 0.005, "run " .. i .. " came early")
    end
    assert.same({ 0.02, 3600 }, { c:stats().datasets.fast.interval, c:stats().datasets.slow.interval })
  end)

  it("keeps a dataset collecting while another's run is slow", function()
    local parked, fast = nil, 0
    local c = collector.new(feed({ datasets = {
      book = { interval = 0.02, collect = function() fast = fast + 1 end },
      funding = { interval = 0.02, collect = function()
        parked = sluice.current()
        sluice.park() -- a slow upstream, until the test lets it go
      end },
    } }))
    c:start()
    wait_for("funding's run in flight", function() return parked end)
    local before = fast
    wait_for("5 more runs of book", function() return fast >= before + 5 end)
    local st = c:stats()
    assert.is_number(st.datasets.funding.run_in_flight_seconds)
    assert.equal(0, st.datasets.funding.collections_completed)
    c:stop()
    -- drain waits for every dataset's run in flight
    local drained = false
    local d = sluice.spawn(function() c:drain() drained = true end)
    sluice.sleep(0) -- drain's first look at the slots
    assert.is_false(drained)
    sluice.unpark(parked)
    sluice.wait(d)
    assert.is_true(drained)
    assert.equal(1, c:counters().datasets.funding.collections_completed)
  end)

  it("runs one dataset, or every enabled one at once, by run_once", function()
    local runs = { a = 0, b = 0, off = 0 }
    local gate = {}
    local function ds(name, n)
      return { collect = function()
        runs[name] = runs[name] + 1
        gate[#gate + 1] = sluice.current()
        sluice.park()
        local rows = {}
        for i = 1, n do rows[i] = { id = i } end
        return rows
      end }
    end
    local c = collector.new(feed({ tables = { t = { columns = { id = "integer" } } },
      datasets = { a = ds("a", 2), b = ds("b", 3), off = ds("off", 1) } }),
      { datasets = { off = { enabled = false } } })
    assert.same({ "a", "b", "off" }, c:datasets())
    local all = sluice.spawn(function() return c:run_once() end)
    -- both enabled datasets are in flight together
    wait_for("a and b in flight", function() return #gate == 2 end)
    assert.same({ 1, 1, 0 }, { runs.a, runs.b, runs.off })
    local joiner = sluice.spawn(function() return c:run_once("a") end)
    wait_for("the joiner", function() return c:stats().run_waiters == 1 end)
    for _, t in ipairs(gate) do sluice.unpark(t) end
    assert.same({ true, true, 5 }, { sluice.wait(all) })
    assert.same({ true, true, 2, "joined" }, { sluice.wait(joiner) })
    -- a disabled dataset runs when named
    local off = sluice.spawn(function() return c:run_once("off") end)
    wait_for("off in flight", function() return #gate == 3 end)
    sluice.unpark(gate[3])
    assert.same({ true, true, 1 }, { sluice.wait(off) })
    assert.same({ 1, 1, 1 }, { runs.a, runs.b, runs.off })
    assert.has_error(function() c:run_once("nope") end,
      "collector:run_once: bad argument #1 (no dataset 'nope' in collector 'feed' (a, b, off))")
    local plain = collector.new(collector.define({ name = "plain", collect = function() end }))
    assert.is_nil(plain:datasets())
    assert.has_error(function() plain:run_once("a") end,
      "collector:run_once: bad argument #1 (collector 'plain' has no datasets)")
  end)

  it("asks the run guard (leases) before each dataset's run", function()
    local c = collector.new(feed())
    local entered, left, allow = 0, 0, true
    c:set_run_guard(function(inst) assert.equal(c, inst) entered = entered + 1 return allow end,
      function() left = left + 1 end)
    assert.same({ true, 0 }, { c:run_once() })
    assert.same({ 2, 2 }, { entered, left })
    allow = false
    assert.same({ true, 0 }, { c:run_once("funding") })
    assert.same({ 3, 3 }, { entered, left })
    assert.same({ 1, 1 }, { c:counters().datasets.funding.collections_completed,
      c:counters().datasets.tickers.collections_completed })
  end)
end)

describe("sluice.collector datasets: shared pipeline", function()
  local up
  before_each(function() up = upstream() end)
  after_each(function() up.srv:close() end)

  it("shares one breaker and one limiter: an open breaker skips every dataset", function()
    quiet()
    local function getter(path) return function(self) return { (assert(self:get(path))) } end end
    local c = collector.new(feed({ base_url = up.url, breaker = { failure_threshold = 2 },
      limiter = { rate = 50 }, tables = { t = { columns = { ok = "integer" } } },
      datasets = { tickers = { collect = getter("/tickers") }, funding = { collect = getter("/funding") } } }))
    assert.same({ true, 2 }, { c:run_once() })
    assert.equal(2, c.limiter:stats().total_requests) -- one limiter for both
    up:push(1, 500, "boom")
    assert.is_false((c:run_once("tickers")))
    up:push(1, 500, "boom")
    assert.is_false((c:run_once("funding")))
    assert.equal("open", c.breaker:state())
    local hits = up.hits
    assert.same({ false, "skipped: circuit breaker feed is open" }, { c:run_once("tickers") })
    assert.same({ false, "skipped: circuit breaker feed is open" }, { c:run_once("funding") })
    assert.equal(hits, up.hits)
    local cn = c:counters()
    assert.same({ 1, 1, 1, 1, 2 }, { cn.datasets.tickers.collections_skipped, cn.datasets.funding.collections_skipped,
      cn.datasets.tickers.collections_failed, cn.datasets.funding.collections_failed, cn.collections_skipped })
    assert.same({ 4, 2, 2 }, { cn.total_requests, cn.successful_requests, cn.failed_requests })
    assert.same({ "circuit_open", "circuit breaker feed is open" }, { c:health() })
    assert.equal("circuit_open", (c:health("funding")))
  end)

  it("stores a dataset's list in the table it names, and {table = rows} anywhere", function()
    local db = assert(store.open(":memory:"))
    finally(function() db:close() end)
    local c = collector.new(feed({
      tables = {
        tickers = { columns = { symbol = "text", price = "real" }, key = { "symbol" } },
        funding = { columns = { symbol = "text", rate = "real" }, key = { "symbol" } },
      },
      datasets = {
        tickers = { table = "tickers", collect = function() return { { symbol = "BTC", price = 2.5 } } end },
        funding = { collect = function() return { funding = { { symbol = "BTC", rate = 0.001 } } } end },
        loose = { collect = function() return { { symbol = "ETH", price = 1 } } end },
      },
    }), nil, { store = db })
    assert.same({ true, 1 }, { c:run_once("tickers") })
    assert.same({ true, 1 }, { c:run_once("funding") })
    assert.same({ { symbol = "BTC", price = 2.5 } }, db:query("SELECT symbol, price FROM tickers"))
    assert.same({ { symbol = "BTC", rate = 0.001 } }, db:query("SELECT symbol, rate FROM funding"))
    quiet()
    local ok, err = c:run_once("loose")
    assert.is_false(ok)
    assert.matches(": collect of dataset 'loose' returned a list of rows but the collector declares "
      .. "several tables; return {table_name = rows}$", err)
    assert.has_error(function()
      feed({ datasets = { x = { table = "nope", collect = print } }, tables = { t = { columns = { a = "text" } } } })
    end, "sluice.collector.define: option 'datasets.x.table' names table 'nope', which the collector does not "
      .. "declare in tables")
  end)
end)

describe("sluice.collector datasets: health and statistics", function()
  it("judges each dataset on its own and names the worst in the collector's reason", function()
    quiet()
    local fail = { funding = false, book = false }
    local function ds(name)
      return { collect = function() if fail[name] then error(name .. " exploded", 0) end end }
    end
    local c = collector.new(feed({ datasets = { tickers = ds("tickers"), funding = ds("funding"), book = ds("book") } }))
    assert.same({ true, 0 }, { c:run_once() })
    assert.equal("healthy", (c:health()))
    fail.funding = true
    assert.same({ false, "dataset funding: funding exploded" }, { c:run_once() })
    assert.same({ "degraded", "dataset funding: the last collection failed: funding exploded" }, { c:health() })
    assert.equal("healthy", (c:health("tickers")))
    c:run_once("funding")
    c:run_once("funding")
    assert.same({ "failed", "dataset funding: 3 collections failed in a row: funding exploded" }, { c:health() })
    fail.book = true
    c:run_once("book")
    -- the worst wins; book, only degraded, is not named
    assert.same({ "failed", "dataset funding: 3 collections failed in a row: funding exploded" }, { c:health() })
    c:run_once("book") c:run_once("book")
    assert.same({ "failed", "dataset book: 3 collections failed in a row: book exploded; "
      .. "dataset funding: 3 collections failed in a row: funding exploded" }, { c:health() })
    local st = c:stats()
    assert.same({ "failed", "book exploded", "healthy", false },
      { st.datasets.book.status, st.datasets.book.last_error, st.datasets.tickers.status, st.datasets.tickers.overdue })
    assert.equal("dataset book: book exploded", st.last_error)
    local cn = c:counters()
    assert.same({ 3, 0, 6, 5 }, { cn.consecutive_failures, cn.datasets.tickers.consecutive_failures,
      cn.collections_failed, cn.collections_completed })
    assert.has_error(function() c:health("nope") end,
      "collector:health: bad argument #1 (no dataset 'nope' in collector 'feed' (book, funding, tickers))")
  end)

  it("counts a dataset overdue on its own interval", function()
    local parked
    local c = collector.new(feed({ timeout = 0.05, datasets = {
      fast = { interval = 0.05, collect = function() parked = sluice.current() sluice.park() end },
      slow = { interval = 3600, collect = function() end },
    } }), { datasets = { slow = { interval = 1800 } } })
    c:start()
    wait_for("fast to be overdue", function() return c:health() == "failed" end)
    local status, reason = c:health()
    assert.equal("failed", status)
    assert.matches("^dataset fast: no successful collection for %d+ s %(over 3 × 0 s%)$", reason)
    local st = c:stats()
    assert.same({ true, false, "healthy", 1800 },
      { st.datasets.fast.overdue, st.datasets.slow.overdue, st.datasets.slow.status, st.datasets.slow.interval })
    c:stop()
    sluice.kill(parked)
  end)

  it("is disabled when every dataset is", function()
    local c = collector.new(feed(), { datasets = { tickers = { enabled = false }, funding = { enabled = false } } })
    assert.same({ "disabled", "every dataset is disabled in the configuration" }, { c:health() })
    assert.same({ "disabled", "dataset disabled in the configuration" }, { c:health("funding") })
    assert.same({ true, 0 }, { c:run_once() }) -- runs none
    assert.equal(0, c:counters().collections_completed)
  end)
end)

describe("sluice.collector datasets: definition and configuration", function()
  it("takes per-dataset overrides from the configuration, checked and named", function()
    local c = collector.new(feed(), { datasets = { funding = { interval = 120, jitter = 0.1, enabled = false } } })
    local cn = c:counters()
    assert.same({ 120, false, 3600, true },
      { cn.datasets.funding.interval, cn.datasets.funding.enabled, cn.datasets.tickers.interval,
        cn.datasets.tickers.enabled })
    assert.equal(3600, c.interval)
    assert.has_error(function() collector.new(feed(), { datasets = { fundng = { interval = 1 } } }) end,
      "collector 'feed': unknown option 'datasets.fundng'")
    assert.has_error(function() collector.new(feed(), { datasets = { funding = { interval = "1" } } }) end,
      "collector 'feed': option 'datasets.funding.interval' must be a finite number > 0, got string")
    assert.has_error(function() collector.new(feed(), { datasets = { funding = { collect = print } } }) end,
      "collector 'feed': unknown option 'datasets.funding.collect'")
    assert.has_error(function() collector.new(feed(), { datasets = { funding = 5 } }) end,
      "collector 'feed': option 'datasets.funding' must be a table, got number")
    local plain = collector.define({ name = "plain", collect = print })
    assert.has_error(function() collector.new(plain, { datasets = { a = {} } }) end,
      "collector 'plain': unknown option 'datasets.a'")
    -- an empty table names no dataset: nothing to override
    assert.is_nil(collector.new(plain, { datasets = {} }):datasets())
  end)

  it("refuses ambiguous or malformed definitions, naming the option", function()
    assert.has_error(function() feed({ collect = print }) end,
      "sluice.collector.define: a collector has collect or datasets, not both (make collect a dataset of its own)")
    assert.has_error(function() feed({ datasets = {} }) end,
      "sluice.collector.define: option 'datasets' is empty: declare at least one dataset")
    assert.has_error(function() feed({ datasets = { a = { interval = 5 } } }) end,
      "sluice.collector.define: option 'datasets.a.collect' is required")
    assert.has_error(function() feed({ datasets = { a = { collect = print, every = 5 } } }) end,
      "sluice.collector.define: unknown option 'datasets.a.every'")
    assert.has_error(function() feed({ datasets = { ["bad name"] = { collect = print } } }) end,
      "sluice.collector.define: option 'datasets' names a dataset 'bad name': names are identifiers "
        .. "(letters, digits, _)")
  end)

  it("gives each dataset its own run budget, labelled with its name", function()
    quiet()
    local c = collector.new(feed({ datasets = {
      spin = { run_budget = { cpu = 0.05, wall = false }, collect = function() while true do end end },
      calm = { collect = function() end },
    } }))
    local ok, err = c:run_once("spin")
    assert.is_false(ok)
    assert.equal("collector feed: dataset spin: run exceeded its CPU budget of 0.05 s", err)
    assert.same({ true, 0 }, { c:run_once("calm") })
  end)
end)

describe("sluice.collector datasets: reload hand-over", function()
  it("continues each dataset's schedule and run slot: no overlap, no extra run", function()
    local active, most, runs, parked, hold = 0, 0, { a = 0, b = 0 }, nil, true
    local s = feed({ datasets = {
      a = { interval = 0.05, collect = function()
        runs.a = runs.a + 1
        active = active + 1
        most = math.max(most, active)
        if hold then parked = sluice.current() sluice.park() end
        active = active - 1
      end },
      b = { interval = 3600, collect = function() runs.b = runs.b + 1 end },
    } })
    local old = collector.new(s)
    old:start()
    wait_for("a's first run parked, b's done", function() return parked and runs.b == 1 end)
    local new = collector.new(s)
    new:adopt(old)
    old:stop()
    new:start({ after = old })
    finally(function() new:stop() end)
    -- b's schedule carries over: its next run is an hour after the first
    local due = new.units_[2].first_due_
    assert.is_true(math.abs(due - old.units_[2].next_due_) < 0.1 and due - sluice.now() > 3500)
    -- a is due, and waits for the old instance's run in flight
    sluice.sleep(0.1) -- a run of new's a would have started by now: none must
    assert.same({ 1, 1, 1 }, { runs.a, runs.b, most })
    hold = false
    sluice.unpark(parked)
    wait_for("3 runs of a", function() return runs.a >= 3 end)
    new:stop()
    new:drain()
    assert.same({ 1, 1 }, { most, runs.b })
    -- the counters are the old instance's, carried on
    local cn = new:counters()
    assert.same({ 1, runs.a, runs.a + 1 }, { cn.datasets.b.collections_completed,
      cn.datasets.a.collections_completed, cn.collections_completed })
  end)

  it("hands datasets over at a configuration reload, with a dataset's override changed", function()
    local dir = files.tmpdir()
    local probe = { a = 0, b = 0 }
    package.loaded["datasets_spec_probe"] = probe
    files.write(dir .. "/feed.lua", [[
      local collector = require "sluice.collector"
      local probe = require "datasets_spec_probe"
      return collector.define{ name = "ds_feed", retry = false, limiter = false,
        datasets = {
          a = { interval = 3600, collect = function() probe.a = probe.a + 1 end },
          b = { interval = 3600, collect = function() probe.b = probe.b + 1 end },
        } }
    ]])
    local function config(extra)
      files.write(dir .. "/config.lua", "return { store = '" .. dir .. "/db.sqlite', "
        .. "collectors = { { file = 'feed.lua'" .. extra .. " } } }")
    end
    config("")
    quiet()
    local cfg = assert(loadfile(dir .. "/config.lua"))()
    local app = app_mod.run(cfg, dir .. "/config.lua")
    finally(function()
      for _, c in ipairs(app.order) do c:stop() end
      for _, c in ipairs(app.order) do c:drain() end
      app.store:close()
      app_mod.current = nil
      package.loaded["datasets_spec_probe"] = nil
      files.cleanup()
    end)
    wait_for("first runs", function() return app.collectors.ds_feed:counters().collections_completed == 2 end)
    assert.same({ 1, 1 }, { probe.a, probe.b })
    config(", datasets = { b = { enabled = false } }")
    assert(app_mod.reload())
    local c = app.collectors.ds_feed
    assert.same({ true, false }, { c:counters().datasets.a.enabled, c:counters().datasets.b.enabled })
    assert.same({ 1, 1 }, { c:counters().datasets.a.collections_completed, c:counters().collections_completed / 2 })
    sluice.sleep(0) -- a run started at once would have begun
    assert.same({ 1, 1 }, { probe.a, probe.b })
    config(", datasets = { b = { enabled = 'no' } }")
    local ok, err = app_mod.reload()
    assert.is_nil(ok)
    assert.equal(dir .. "/config.lua: collectors[1]: collector 'ds_feed': option 'datasets.b.enabled' must be a "
      .. "boolean, got string", err)
  end)
end)

describe("sluice.collector datasets: operator views", function()
  it("shows datasets in /status, the brief, /health reasons and /metrics, and runs one by name", function()
    quiet()
    local bad = false
    local c = collector.new(feed({ name = "ds_ops", datasets = {
      tickers = { interval = 5, collect = function() return {} end },
      funding = { interval = 60, collect = function() if bad then error("no funding", 0) end return {} end },
    } }))
    local saved = app_mod.current
    local app = { collectors = { ds_ops = c }, order = { c }, config = {}, store = assert(store.open(":memory:")) }
    app_mod.current = app
    finally(function() app_mod.current = saved app.store:close() end)
    local ops = operator.new({ current = function() return app end })
    assert.same({ collector = "ds_ops", dataset = "funding", ok = true, records = 0 },
      ops:collect("ds_ops", { dataset = "funding" }))
    assert.same({ nil, "collector 'ds_ops' has no dataset 'nope' (funding, tickers)", "not_found" },
      { ops:collect("ds_ops", { dataset = "nope" }) })
    bad = true
    assert.same({ collector = "ds_ops", ok = false, error = "dataset funding: no funding" }, ops:collect("ds_ops"))
    local body = ops:health()
    assert.same({ "ds_ops is degraded: dataset funding: the last collection failed: no funding" }, body.reasons)
    local st = ops:status().collectors.ds_ops
    assert.same({ "degraded", 60, 5, "no funding" },
      { st.datasets.funding.status, st.datasets.funding.interval, st.datasets.tickers.interval,
        st.datasets.funding.last_error })
    local brief = ops:collectors_brief().ds_ops
    assert.same({ status = "degraded", interval = 60, last_error = "no funding",
      last_success = brief.datasets.funding.last_success }, brief.datasets.funding)
    assert.equal(5, brief.interval)
    local text = metrics.render()
    local function sample(name)
      return tonumber(text:match("\n" .. name:gsub("[%p]", "%%%0") .. " (%S+)"))
    end
    assert.equal(1, sample('sluice_dataset_collections_total{collector="ds_ops",dataset="funding",status="success"}'))
    assert.equal(1, sample('sluice_dataset_collections_total{collector="ds_ops",dataset="funding",status="error"}'))
    assert.equal(1, sample('sluice_dataset_collections_total{collector="ds_ops",dataset="tickers",status="success"}'))
    assert.equal(1, sample('sluice_dataset_health{collector="ds_ops",dataset="funding",status="degraded"}'))
    assert.equal(1, sample('sluice_dataset_health{collector="ds_ops",dataset="tickers",status="healthy"}'))
    assert.equal(60, sample('sluice_dataset_interval_seconds{collector="ds_ops",dataset="funding"}'))
    assert.equal(2, sample('sluice_collection_requests_total{collector="ds_ops",status="success"}'))
    assert.equal(0, sample('sluice_active_collections{collector="ds_ops"}'))
    -- both datasets in flight at once: two collections in progress
    local hold, entered = true, 0
    local slow = collector.new(feed({ name = "ds_slow", datasets = {
      a = { interval = 60, collect = function() entered = entered + 1 while hold do sluice.sleep(0.01) end return {} end },
      b = { interval = 60, collect = function() entered = entered + 1 while hold do sluice.sleep(0.01) end return {} end },
    } }))
    app.collectors.ds_slow, app.order[2] = slow, slow
    local runs = { sluice.spawn(function() return slow:run_once("a") end),
      sluice.spawn(function() return slow:run_once("b") end) }
    require("support.wait").wait_for("both datasets running", function() return entered == 2 end)
    assert.equal(2, slow:runs_in_flight())
    text = metrics.render()
    assert.equal(2, sample('sluice_active_collections{collector="ds_slow"}'))
    hold = false
    for _, r in ipairs(runs) do assert.is_true((sluice.wait(r))) end
    assert.equal(0, slow:runs_in_flight())
    app.collectors.ds_slow, app.order[2] = nil, nil
    -- POST /collect with a dataset
    local srv = assert(admin.start(app, { port = 0, insecure_loopback_mutations = true }))
    finally(function() srv:close() end)
    local function post(payload)
      local res = assert(http.post("http://127.0.0.1:" .. srv.port .. "/collect",
        { body = payload, headers = { ["Content-Type"] = "application/json" } }))
      return res.status, res:json()
    end
    bad = false
    assert.same({ 200, { collector = "ds_ops", dataset = "funding", status = "ok", records = 0 } },
      { post('{"collector":"ds_ops","dataset":"funding"}') })
    assert.same({ 404, { error = "collector 'ds_ops' has no dataset 'nope' (funding, tickers)" } },
      { post('{"collector":"ds_ops","dataset":"nope"}') })
    assert.same({ 400, { error = "field 'dataset' must be a name" } }, { post('{"collector":"ds_ops","dataset":1}') })
    assert.same({ 200, { collector = "ds_ops", status = "ok", records = 0 } }, { post('{"collector":"ds_ops"}') })
  end)
end)
