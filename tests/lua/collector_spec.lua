-- sluice.collector: the request pipeline, lifecycle, statistics and health,
-- against a fault-injecting sluice.server on loopback.
local sluice = require "sluice"
local server = require "sluice.server"
local collector = require "sluice.collector"
local store = require "sluice.store"
local log = require "sluice.log"
local fx = require "support.store"
local wait_for = require("support.wait").wait_for
local logs = require "support.logs"

-- An upstream whose answers a test scripts: a queue of {status, body,
-- headers}; when empty it answers 200 {"ok":true}.
local function upstream()
  local u = { queue = {}, hits = 0, seen = {} }
  u.srv = assert(server.listen({ port = 0 }))
  u.url = "http://127.0.0.1:" .. u.srv.port
  u.srv:route("*", "/*", function(req)
    u.hits = u.hits + 1
    u.seen[#u.seen + 1] = { path = req.path, headers = req.headers, query = req.query }
    local a = table.remove(u.queue, 1)
    if not a then return 200, { ok = true } end
    return a[1], a[2], a[3]
  end)
  function u:push(n, status, body, headers)
    for _ = 1, n do self.queue[#self.queue + 1] = { status, body, headers } end
  end
  return u
end

local function spec(overrides)
  local s = {
    name = "test_feed",
    interval = 3600,
    retry = { strategy = "fixed", base_delay = 0.01, max_attempts = 3, budget = false },
    limiter = false,
    collect = function() return {} end,
  }
  for k, v in pairs(overrides or {}) do s[k] = v end
  return collector.define(s)
end

describe("sluice.collector request pipeline", function()
  local up

  before_each(function() up = upstream() end)
  after_each(function() up.srv:close() end)

  it("returns decoded JSON and the response on success", function()
    local c = collector.new(spec({ base_url = up.url }))
    local data, res = c:get("/api/v3/ping", { query = { a = 1 } })
    assert.same({ ok = true }, data)
    assert.equal(200, res.status)
    assert.equal("1", up.seen[1].query.a)
    assert.same({ total = 1, ok = 1, failed = 0 },
      { total = c:stats().total_requests, ok = c:stats().successful_requests, failed = c:stats().failed_requests })
  end)

  it("opens the breaker after 5 consecutive 500s and then short-circuits", function()
    local c = collector.new(spec({ base_url = up.url, retry = false }))
    up:push(5, 500, "boom")
    for _ = 1, 5 do
      local data, err, kind = c:get("/x")
      assert.is_nil(data)
      assert.equal("HTTP 500", err)
      assert.equal("failure", kind)
    end
    assert.equal("open", c.breaker:state())
    local data, err, kind = c:get("/x")
    assert.is_nil(data)
    assert.equal("circuit_open", kind)
    assert.matches("circuit breaker test_feed is open", err, 1, true)
    assert.equal(5, up.hits) -- the sixth call never reached the server
    assert.equal("circuit_open", c:health())
  end)

  it("retries 5xx with backoff and succeeds", function()
    local c = collector.new(spec({ base_url = up.url }))
    up:push(2, 503, "busy")
    local data = c:get("/x")
    assert.same({ ok = true }, data)
    assert.equal(3, up.hits)
  end)

  it("does not retry other 4xx", function()
    local c = collector.new(spec({ base_url = up.url }))
    up:push(1, 404, { code = -1, msg = "nope" })
    local data, err = c:get("/x")
    assert.is_nil(data)
    assert.equal("HTTP 404", err)
    assert.equal(1, up.hits)
  end)

  it("honours Retry-After on 429 with the adaptive strategy", function()
    local c = collector.new(spec({ base_url = up.url,
      retry = { strategy = "adaptive", max_attempts = 2, budget = false } }))
    up:push(1, 429, "slow down", { ["Retry-After"] = "1" })
    local t0 = sluice.now()
    local data = c:get("/x")
    assert.same({ ok = true }, data)
    assert.is_true(sluice.now() - t0 >= 0.99)
    assert.equal(2, up.hits)
  end)

  it("keeps the breaker open until a 418 ban ends", function()
    local c = collector.new(spec({ base_url = up.url }))
    up:push(1, 418, { code = -1003, msg = "banned" }, { ["Retry-After"] = "600" })
    local before = sluice.time()
    local data, _, kind = c:get("/x")
    assert.is_nil(data)
    assert.equal("banned", kind)
    assert.equal(1, up.hits) -- a ban is not retried
    assert.equal("open", c.breaker:state())
    local until_ = c.breaker:metrics().open_until
    assert.is_true(until_ >= before + 599 and until_ <= sluice.time() + 601)
  end)

  it("caps retries with the retry budget", function()
    local c = collector.new(spec({ base_url = up.url, breaker = false,
      retry = { strategy = "fixed", base_delay = 0, max_attempts = 5,
        budget = { ratio = 0.1, min_per_second = 1 } } }))
    up:push(1000, 503, "down")
    for _ = 1, 20 do c:get("/x") end
    -- 20 first attempts + 2 deposited retries + 1 from the floor (one
    -- more should a second pass), not 100
    assert.is_true(up.hits >= 22 and up.hits <= 24, "hits: " .. up.hits)
    -- every call ends on a refused retry: none gets its 4 retries
    assert.equal(20, c.retry:refused())
  end)

  it("lets classify turn a 200 into a failure", function()
    local c = collector.new(spec({ base_url = up.url, retry = false,
      classify = function(_, res)
        local body = res:json()
        if body and body.status == "0" then return "failure", "API error: " .. body.message end
      end }))
    up:push(1, 200, { status = "0", message = "NOTOK" })
    local data, err = c:get("/x")
    assert.is_nil(data)
    assert.equal("API error: NOTOK", err)
    assert.equal(1, c.breaker:status().statistics.total_failures)
  end)

  it("backs the limiter off on a throttled verdict in a 200 as on a 429", function()
    -- Bybit answers "too many visits" with HTTP 200 and retCode 10006
    local function bybit(name)
      return collector.new(spec({ name = name, base_url = up.url, retry = false,
        limiter = { rate = 10 },
        classify = function(_, res)
          local body = res:json()
          if body and body.retCode == 10006 then return "throttled", body.retMsg end
        end }))
    end
    local c = bybit("bybit_feed")
    up:push(1, 200, { retCode = 10006, retMsg = "Too many visits!" })
    local data, err, kind = c:get("/v5/market/tickers")
    assert.is_nil(data)
    assert.equal("Too many visits!", err)
    assert.equal("throttled", kind)
    local st = c.limiter:stats()
    assert.equal(1, st.total_violations)
    assert.equal(2, st.rate_adjustments) -- halved: global and endpoint
    assert.equal(5, st.min_rate_seen)
    assert.equal(10, st.max_rate_seen)
    local ep = st.endpoints["/v5/market/tickers"]
    assert.equal(1, ep.violations)
    assert.equal(1, ep.requests_made)
    assert.is_true(ep.in_backoff)
    assert.equal(2, c.limiter:metrics().backoff_multiplier)
    assert.equal(1, c.breaker:status().statistics.total_failures)
    -- a real 429 does exactly the same
    local ref = bybit("bybit_ref")
    up:push(1, 429, "slow down")
    assert.equal("throttled", select(3, ref:get("/v5/market/tickers")))
    local rst = ref.limiter:stats()
    assert.same({ 1, 2, 5, 10, 1, true },
      { rst.total_violations, rst.rate_adjustments, rst.min_rate_seen, rst.max_rate_seen,
        rst.endpoints["/v5/market/tickers"].violations,
        rst.endpoints["/v5/market/tickers"].in_backoff })
    -- the same 200 without the code is a success and changes nothing
    local calm = bybit("bybit_calm")
    up:push(1, 200, { retCode = 0, result = {} })
    assert.same({ retCode = 0, result = {} }, (calm:get("/v5/market/tickers")))
    local cst = calm.limiter:stats()
    assert.same({ 0, 0, 10 }, { cst.total_violations, cst.rate_adjustments, cst.min_rate_seen })
  end)

  it("sends auth on the wire and never shows it in logs or status", function()
    log.output("/dev/null")
    local restore = logs.capture("trace")
    local c = collector.new(spec({ base_url = up.url,
      auth = { header = "X-MBX-APIKEY", value = "s3cr3t-key" } }))
    up:push(1, 500, "boom")
    c:get("/x")
    c:run_once()
    assert.equal("s3cr3t-key", up.seen[1].headers["x-mbx-apikey"])
    local dump = require("cjson").encode({ c:health_check(), require("sluice._log").recent() })
    assert.is_nil(dump:find("s3cr3t", 1, true))
    assert.equal("<secret>", tostring(collector.env("NOPE")))
    restore()
    log.output("-")
  end)

  it("skips runs while the breaker is open: one warning per opening, no error, no traceback", function()
    log.output("/dev/null")
    local restore = logs.capture("info")
    local c = collector.new(spec({ base_url = up.url, retry = false, breaker = { failure_threshold = 2 },
      collect = function(self) return { assert(self:get("/x")) } end }))
    up:push(2, 500, "boom")
    for _ = 1, 2 do assert.is_false((c:run_once())) end -- real failures: the breaker opens
    assert.equal("open", c.breaker:state())
    for _ = 1, 5 do
      local ok, err = c:run_once()
      assert.same({ false, "skipped: circuit breaker test_feed is open" }, { ok, err })
    end
    c.breaker:force_close()
    up:push(2, 500, "boom")
    for _ = 1, 2 do assert.is_false((c:run_once())) end -- open again
    for _ = 1, 3 do assert.is_false((c:run_once())) end
    local st = c:stats()
    assert.same({ 8, 2 }, { st.collections_skipped, up.hits - 2 })
    local skips = logs.logged("collection skipped: circuit breaker open")
    for _, e in ipairs(skips) do
      assert.is_nil(e.traceback)
      assert.equal("test_feed", e.breaker)
    end
    -- the four real failures; one warning per opening
    assert.same({ 4, 2 }, { #logs.logged("collection failed"), #skips })
    assert.equal(4, c:counters().collections_failed)
    restore()
    log.output("-")
  end)

  it("sends auth and its headers to base_url's origin only", function()
    local other = upstream()
    local c = collector.new(spec({ base_url = up.url, headers = { ["X-Team"] = "t1" },
      auth = { header = "X-MBX-APIKEY", value = "s3cr3t-key" } }))
    -- a redirect to another origin is not followed, and not retried
    up:push(1, 302, "", { Location = other.url .. "/x" })
    local data, err, kind = c:get("/moved")
    assert.is_nil(data)
    assert.equal("redirect", kind)
    assert.equal("redirect to another origin (http://127.0.0.1:" .. other.srv.port
      .. ") not followed: redirects.cross_origin is false", err)
    assert.same({ 1, 0 }, { up.hits, other.hits })
    -- followed when asked, without the credentials
    up:push(1, 302, "", { Location = other.url .. "/x" })
    assert.same({ ok = true }, (c:get("/moved", { redirects = { cross_origin = true } })))
    assert.same({ 2, 1 }, { up.hits, other.hits })
    assert.equal("s3cr3t-key", up.seen[2].headers["x-mbx-apikey"])
    assert.same({}, { other.seen[1].headers["x-mbx-apikey"], other.seen[1].headers["x-team"] })
    -- an absolute URL on another origin (or one the path turns into
    -- another host) gets neither; per-call headers still go
    assert(c:get(other.url .. "/abs", { headers = { ["X-Call"] = "c1" } }))
    assert.same({ "c1" }, { other.seen[2].headers["x-call"], other.seen[2].headers["x-mbx-apikey"],
      other.seen[2].headers["x-team"] })
    local q = collector.new(spec({ base_url = up.url, auth = { query = "apikey", value = "s3cr3t-key" } }))
    assert(q:get("@127.0.0.1:" .. other.srv.port .. "/q")) -- userinfo "127.0.0.1:<port>", then the host
    assert.same({ "/q" }, { other.seen[3].path, other.seen[3].query.apikey })
    -- the same origin spelled out in full is base_url's
    assert(c:get(up.url .. "/abs"))
    assert.same({ "s3cr3t-key", "t1" }, { up.seen[3].headers["x-mbx-apikey"], up.seen[3].headers["x-team"] })
    other.srv:close()
  end)

  it("reads secrets from the environment when used", function()
    local c = collector.new(spec({ base_url = up.url,
      auth = { bearer = collector.env("HOME") } }))
    c:get("/x")
    assert.equal("Bearer " .. os.getenv("HOME"), up.seen[1].headers.authorization)
  end)
end)

describe("sluice.collector lifecycle", function()
  it("collects on start, stores rows idempotently and reports statistics", function()
    local db = assert(store.open(":memory:"))
    local n = 0
    local c = collector.new(spec({
      tables = { ticks = { columns = { id = "integer", v = "real" }, key = { "id" } } },
      collect = function()
        n = n + 1
        return { { id = 1, v = 1.5 }, { id = 2, v = 2.5 } }
      end,
    }), nil, { store = db })
    c:start()
    wait_for("the first run", function() return c:counters().collections_completed == 1 end)
    assert.equal(1, n)
    assert.is_true(c:run_once())
    assert.equal(2, #db:query("SELECT * FROM ticks"))
    local st = c:stats()
    assert.equal("test_feed", st.collector_name)
    assert.equal("healthy", st.status)
    assert.equal(2, st.collections_completed)
    assert.equal(4, st.data_points_collected)
    assert.equal(sluice.iso8601(c:counters().started_at), st.started_at)
    local hc = c:health_check()
    assert.is_true(hc.healthy)
    assert.is_true(hc.is_running)
    assert.equal("closed", hc.circuit_breaker.state)
    c:stop()
    assert.is_false(c:health_check().is_running)
    db:close()
  end)

  it("counts the rows stored, not the rows offered: rejects are not data points", function()
    local db = assert(store.open(":memory:"))
    local c = collector.new(spec({
      tables = { ticks = { columns = { id = "integer", v = "real" }, key = { "id" } } },
      collect = function()
        local rows = {}
        for i = 1, 15 do rows[i] = { id = i, v = i <= 4 and i or math.huge } end
        return rows
      end,
    }), nil, { store = db })
    assert.same({ true, 4 }, { c:run_once() })
    assert.equal(4, db:query("SELECT count(*) AS n FROM ticks")[1].n)
    assert.equal(11, db:query("SELECT count(*) AS n FROM sluice_rejects")[1].n)
    assert.equal(4, c:stats().data_points_collected)
    db:close()
  end)

  it("stops gracefully: a request in flight completes and is counted", function()
    local up = upstream()
    local arrived = false
    up.srv:route("GET", "/slow", function()
      arrived = true
      sluice.sleep(0.3) -- the slow upstream under test: still answering at stop()
      return 200, { { id = 1, v = 2 } }
    end)
    local db = assert(store.open(":memory:"))
    local c = collector.new(spec({ base_url = up.url,
      tables = { ticks = { columns = { id = "integer", v = "real" }, key = { "id" } } },
      collect = function(self) return (assert(self:get("/slow"))) end,
    }), nil, { store = db })
    c:start()
    wait_for("the first run waiting on /slow", function() return arrived end)
    c:stop()
    assert.is_false(c.running)
    c:drain()
    assert.equal(1, c:stats().collections_completed)
    assert.equal(1, #db:query("SELECT * FROM ticks"))
    up.srv:close()
    db:close()
  end)

  it("keeps one collector collecting while another fails every run", function()
    local good_runs = 0
    local bad = collector.new(spec({ name = "bad_feed", interval = 0.02,
      collect = function() error("parser exploded") end }))
    local good = collector.new(spec({ name = "good_feed", interval = 0.02,
      collect = function() good_runs = good_runs + 1; return {} end }))
    log.output("/dev/null")
    bad:start(); good:start()
    wait_for("3 runs of each", function()
      return good_runs >= 3 and bad:counters().collections_failed >= 3
    end)
    bad:stop(); good:stop()
    -- a run in flight at stop() finishes: count after it (good_runs is
    -- counted as collect starts, collections_completed as the run ends)
    bad:drain(); good:drain()
    log.output("-")
    assert.equal("failed", bad:health())
    assert.matches("parser exploded", bad:stats().last_error)
    assert.equal(0, bad:counters().collections_completed)
    assert.equal("healthy", good:health())
    assert.same({ good_runs, 0 }, { good:counters().collections_completed, good:counters().collections_failed })
  end)

  it("persists each breaker transition as it happens, and restores an open breaker after a restart", function()
    local path = fx.tmpdb()
    finally(function() fx.remove_db(path) end)
    local db = assert(store.open(path))
    local c = collector.new(spec({ name = "restart_feed" }), nil, { store = db })
    c:start()
    assert.is_nil(db:load_state("breaker", "restart_feed"))
    c.breaker:force_open()
    -- on_change saves the snapshot in a task of its own while the
    -- collector runs (a running collector's stop() saves too: look before)
    local saved = wait_for("the open breaker in the store", function()
      local snap = db:load_state("breaker", "restart_feed")
      return snap and snap.state == "open" and snap
    end)
    assert.same({ "restart_feed", 1 }, { saved.name, saved.statistics.circuit_opens })
    -- (open_until is worked out from the monotonic clock at each snapshot)
    local until_ = c.breaker:snapshot().open_until
    assert.is_true(math.abs(saved.open_until - until_) < 0.01, saved.open_until .. " ~= " .. until_)
    c.breaker:force_close()
    wait_for("the closed breaker in the store", function()
      return db:load_state("breaker", "restart_feed").state == "closed"
    end)
    c.breaker:force_open()
    wait_for("the breaker open again in the store", function()
      return db:load_state("breaker", "restart_feed").state == "open"
    end)
    c:stop()
    db:close()
    db = assert(store.open(path))
    local again = collector.new(spec({ name = "restart_feed" }), nil, { store = db })
    assert.equal("open", again.breaker:state())
    until_ = c.breaker:snapshot().open_until
    assert.is_true(math.abs(again.breaker:snapshot().open_until - until_) < 0.01)
    db:close()
  end)

  it("notices a run stuck in collect(): degraded while in flight, then failed when overdue", function()
    local stuck
    local c = collector.new(spec({ name = "stuck_feed", interval = 0.05, timeout = 0.05,
      collect = function()
        stuck = sluice.current()
        sluice.sleep(1e9) -- the run under test never ends
      end }))
    c:start()
    wait_for("the run to look stuck", function() return c:health() ~= "healthy" end)
    local status, reason = c:health()
    assert.equal("degraded", status)
    assert.matches("^a run has been in flight for %d+ s %(over 2 × 0 s%)$", reason)
    wait_for("the run to be overdue", function() return c:health() == "failed" end)
    status, reason = c:health()
    assert.equal("failed", status)
    assert.matches("^no successful collection for %d+ s %(over 3 × 0 s%)$", reason)
    local st = c:stats()
    assert.same({ "failed", reason }, { st.status, st.status_reason })
    assert.is_false(c:health_check().healthy)
    assert.equal(0, st.collections_completed)
    c:stop()
    sluice.kill(stuck)
  end)

  it("is not overdue while another instance holds its lease (standing by)", function()
    local c = collector.new(spec({ name = "standby_feed", interval = 0.05, timeout = 0.05 }))
    -- as sluice.shared's leases do for a collector whose lease another instance holds
    local entered, left = 0, 0
    c:set_run_guard(function() entered = entered + 1 return false end, function() left = left + 1 end)
    c:start()
    local t0 = sluice.now()
    -- healthy throughout 8 standing-by runs and over 0.4 s (3 × 0.05 s
    -- would be overdue): the time passing is what is under test
    wait_for("8 runs standing by, over 0.4 s", function()
      assert.equal("healthy", (c:health()))
      return entered >= 8 and sluice.now() - t0 > 0.4
    end)
    c:stop()
    assert.equal(0, c:stats().collections_completed)
    assert.equal(entered, left)
  end)

  it("runs one collection at a time: a call during a run joins it", function()
    local runs, gate = 0, {}
    local c = collector.new(spec({ collect = function()
      runs = runs + 1
      gate[#gate + 1] = sluice.current()
      sluice.park()
      return {}
    end }))
    local first = sluice.spawn(function() return c:run_once() end)
    local joiner = sluice.spawn(function() return c:run_once() end)
    wait_for("the joiner", function() return (c:stats().run_waiters or 0) >= 1 end)
    assert.same({ 1, 1 }, { runs, c:stats().run_waiters })
    sluice.unpark(gate[1])
    assert.same({ true, true, 0 }, { sluice.wait(first) })
    assert.same({ true, true, 0, "joined" }, { sluice.wait(joiner) })
    assert.equal(1, runs)
    assert.equal(1, c:stats().collections_completed)
  end)

  it("frees a stopped instance (its timer and breaker callback do not hold it)", function()
    local db = assert(store.open(":memory:"))
    local weak = setmetatable({}, { __mode = "k" })
    do
      local c = collector.new(spec({ name = "freed_feed" }), nil, { store = db })
      c:start()
      wait_for("its first run", function() return c:counters().collections_completed == 1 end)
      c:stop()
      weak[c] = true
    end
    for _ = 1, 3 do collectgarbage() end
    assert.is_nil(next(weak))
    db:close()
  end)

  it("validates specs and overrides, naming the option", function()
    assert.has_error(function() collector.define({ name = "x", collect = print, intervl = 5 }) end,
      "sluice.collector.define: unknown option 'intervl'")
    assert.has_error(function() collector.define({ name = "x", collect = print, interval = "5" }) end,
      "sluice.collector.define: option 'interval' must be a finite number > 0, got string")
    assert.has_error(function() collector.define({ name = "bad name", collect = print }) end)
    assert.has_error(function() collector.define({ collect = print }) end,
      "sluice.collector.define: option 'name' is required")
    local s = spec({ options = { symbols = { "BTCUSDT" } } })
    assert.has_error(function() collector.new(s, { symbls = {} }) end,
      "collector 'test_feed': unknown option 'symbls'")
    assert.has_error(function() collector.new(s, { symbols = "BTCUSDT" }) end,
      "collector 'test_feed': option 'symbols' must be a table, got string")
    local c = collector.new(s, { symbols = { "ETHUSDT" }, interval = 30 })
    assert.same({ "ETHUSDT" }, c.options.symbols)
    assert.equal(30, c.interval)
  end)

  -- Specs alike share the schema their overrides are checked against (the
  -- app runs a file once per entry: a thousand specs of one file); one
  -- that differs in an option's type or in its datasets has its own.
  it("checks each spec's overrides against its own options and datasets, alike or not", function()
    local a1 = spec({ options = { symbols = { "BTCUSDT" }, depth = 5 } })
    local a2 = spec({ options = { depth = 10, symbols = { "ETHUSDT" } } })
    local b = spec({ options = { symbols = "BTCUSDT", depth = 5 } })
    local d = collector.define({ name = "test_feed", options = { symbols = { "BTCUSDT" }, depth = 5 },
      datasets = { trades = { collect = function() return {} end, interval = 5 } } })
    assert.equal(7, collector.new(a1, { depth = 7 }).options.depth)
    assert.equal(7, collector.new(a2, { depth = 7 }).options.depth)
    assert.has_error(function() collector.new(a2, { symbols = "ETHUSDT" }) end,
      "collector 'test_feed': option 'symbols' must be a table, got string")
    assert.equal("ETHUSDT", collector.new(b, { symbols = "ETHUSDT" }).options.symbols)
    assert.has_error(function() collector.new(b, { symbols = { "ETHUSDT" } }) end)
    assert.has_error(function() collector.new(a1, { datasets = { trades = { interval = 10 } } }) end)
    assert.equal(10, collector.new(d, { datasets = { trades = { interval = 10 } } }).config.datasets.trades.interval)
  end)
end)

describe("sluice.collector hooks and accessors", function()
  it("asks its run guard before every run and tells it when each ends", function()
    local runs, gate = 0, {}
    local c = collector.new(spec({ collect = function()
      runs = runs + 1
      gate[#gate + 1] = sluice.current()
      sluice.park()
      return {}
    end }))
    local calls, allow = {}, true
    c:set_run_guard(function(inst)
      assert.equal(c, inst)
      calls[#calls + 1] = "enter"
      return allow
    end, function(inst)
      assert.equal(c, inst)
      calls[#calls + 1] = "leave"
    end)
    local first = sluice.spawn(function() return c:run_once() end)
    local joiner = sluice.spawn(function() return c:run_once() end)
    wait_for("the joiner", function() return (c:stats().run_waiters or 0) >= 1 end)
    assert.same({ "enter", "enter" }, calls)
    sluice.unpark(gate[1])
    assert.same({ true, true, 0 }, { sluice.wait(first) })
    assert.same({ true, true, 0, "joined" }, { sluice.wait(joiner) })
    assert.same({ "enter", "enter", "leave", "leave" }, calls)
    -- a guard saying no: the run stands by, and is left all the same
    allow = false
    assert.same({ true, 0 }, { c:run_once() })
    assert.equal(1, runs)
    assert.same({ "enter", "enter", "leave", "leave", "enter", "leave" }, calls)
    -- only true lets a run start
    allow = nil
    assert.same({ true, 0 }, { c:run_once() })
    assert.equal(1, runs)
    -- removed: runs go on without it
    c:set_run_guard()
    local t = sluice.spawn(function() return c:run_once() end)
    wait_for("the unguarded run", function() return #gate == 2 end)
    sluice.unpark(gate[2])
    assert.same({ true, true, 0 }, { sluice.wait(t) })
    assert.equal(8, #calls)
    assert.equal(2, c:counters().collections_completed)
    assert.has_error(function() c:set_run_guard(print) end,
      "collector:set_run_guard: bad arguments (two functions, enter and leave, expected)")
  end)

  it("publishes committed rows to the sinks added, in commit order", function()
    local db = assert(store.open(":memory:"))
    finally(function() db:close() end)
    local c = collector.new(spec({
      tables = { ticks = { columns = { id = "integer", v = "real" }, key = { "id" } } },
      collect = function() return { { id = 1, v = 1 }, { id = 2, v = 1 / 0 }, { id = 3, v = 3 } } end,
    }), nil, { store = db })
    local got = {}
    local function sink(tag)
      return { publish = function(_, tname, rows)
        local ids = {}
        for i, r in ipairs(rows) do ids[i] = r.id end
        got[#got + 1] = { tag, tname, ids }
        return true
      end }
    end
    assert.equal(c, c:add_sink(sink("a")))
    c:add_sink(sink("b"))
    assert.same({ true, 2 }, { c:run_once() })
    assert.same({ { "a", "ticks", { 1, 3 } }, { "b", "ticks", { 1, 3 } } }, got)
    assert.has_error(function() c:add_sink({}) end,
      "collector:add_sink: bad argument #1 (a sink with a publish method expected)")
  end)

  it("reports its counters as a copy, and hands them and its run slot over at a reload", function()
    local u = upstream()
    finally(function() u.srv:close() end)
    local hold, parked = false, nil
    local s = spec({ base_url = u.url, collect = function(self)
      assert(self:get("/x"))
      if hold then parked = sluice.current() sluice.park() end
      return {}
    end })
    local old = collector.new(s)
    local t0 = sluice.time()
    assert.same({ true, 0 }, { old:run_once() })
    local cn = old:counters()
    assert.same({ 1, 1, 0, 1, 0, 0, 0, 0, 1 }, { cn.total_requests, cn.successful_requests,
      cn.failed_requests, cn.collections_completed, cn.collections_failed, cn.collections_skipped,
      cn.consecutive_failures, cn.data_points_collected, cn.latency_count })
    assert.is_true(cn.last_success >= t0 and cn.last_success <= sluice.time(), tostring(cn.last_success))
    assert.is_nil(cn.last_error)
    cn.total_requests = 99 -- a copy: the collector's own are untouched
    assert.equal(1, old:counters().total_requests)
    -- a run of the old instance in flight at the hand-over
    hold = true
    local running = sluice.spawn(function() return old:run_once() end)
    wait_for("the old instance's run", function() return parked end)
    local new = collector.new(s)
    assert.equal(new, new:adopt(old))
    assert.equal(2, new:counters().total_requests)
    hold = false
    local joiner = sluice.spawn(function() return new:run_once() end) -- joins old's run
    wait_for("the joiner", function() return (new:stats().run_waiters or 0) >= 1 end)
    assert.equal(1, new:stats().run_waiters)
    sluice.unpark(parked)
    assert.same({ true, true, 0 }, { sluice.wait(running) })
    assert.same({ true, true, 0, "joined" }, { sluice.wait(joiner) })
    assert.equal(2, new:counters().collections_completed)
    assert.has_error(function() new:adopt(collector.new(spec({ name = "other_feed" }))) end,
      "collector:adopt: bad argument #1 (an instance of the same collector expected)")
  end)

  it("declares its partitions: a list, a function of the instance, or none", function()
    assert.is_nil(collector.new(spec()):partitions())
    assert.same({ "a", "b" }, collector.new(spec({ partitions = { "a", "b" } })):partitions())
    local s = spec({ options = { pairs = { "x" } }, partitions = function(self) return self.options.pairs end })
    assert.same({ "y", "z" }, collector.new(s, { pairs = { "y", "z" } }):partitions())
    assert.has_error(function() spec({ partitions = "a" }) end,
      "sluice.collector.define: option 'partitions' must be a table or a function, got string")
    assert.has_error(function() collector.new(spec({ partitions = function() return "a" end })):partitions() end,
      "collector 'test_feed': partitions must be a list, got string")
  end)
end)
