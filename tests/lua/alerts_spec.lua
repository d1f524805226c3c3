-- sluice.alerts: one event per transition (breakers, collectors' health,
-- backfills, Redis, outboxes), grouped into one delivery per window,
-- delivered in order through a bounded queue with retries and a breaker of
-- its own, to a receiver that is a sluice.server in this spec; the slack
-- format; the webhook URL never shown; the configuration's errors.
local sluice = require "sluice"
local server = require "sluice.server"
local json = require "sluice.json"
local log = require "sluice.log"
local breaker = require "sluice.breaker"
local config = require "sluice.config"
local redact = require "sluice.redact"
local alerts = require "sluice.alerts"
local app_mod = require "sluice.app"
local backfill = require "sluice.backfill"
local outbox = require "sluice.outbox"
local files = require "support.files"
local wait_for = require("support.wait").wait_for

local PATH = "/hooks/T000/B000/s3cr3tT0ken"

-- A receiver of alert deliveries on a loopback port: got = {{body, decoded,
-- headers}}; status: what it answers (200).
local function receiver(port)
  local r = { got = {}, status = 200 }
  function r.listen()
    r.srv = assert(server.listen({ host = "127.0.0.1", port = port or 0 }))
    r.port = r.srv.port
    r.srv:route("POST", PATH, function(req)
      r.got[#r.got + 1] = { body = req.body, decoded = json.decode(req.body), headers = req.headers }
      return r.status, "ok", r.headers
    end)
    return r
  end
  function r.close() r.srv:close() end
  function r.url() return "http://127.0.0.1:" .. r.port .. PATH end
  return r.listen()
end

-- What a test leaves to stop, run after it.
local cleanups = {}
local function defer(fn) cleanups[#cleanups + 1] = fn end

local function start(settings, source)
  local m = alerts.start(settings, source)
  defer(function() m:stop(0) end)
  return m
end

local function events_of(delivery)
  local out = {}
  for i, a in ipairs(delivery.decoded.alerts) do out[i] = a.event .. " " .. a.source end
  return out
end

-- Every event emitted so far has gone out (or failed for good) and
-- nothing is queued or being sent.
local function settled(m)
  local st = m:status()
  if st.pending > 0 then return false end
  for _, w in ipairs(st.webhooks) do
    if w.queued > 0 or w.sending then return false end
  end
  return true
end

-- Waits for n more looks of the watcher at its sources (so that a
-- transition not yet seen would have been).
local function polls(m, n)
  local target = m:status().checks + n
  wait_for(n .. " checks", function() return m:status().checks >= target end)
end

-- The collectors of the app below fail while probe.fail[name]; their
-- backfill windows while probe.backfill_fail. The memory sink's writes
-- wait while probe.hold.
local probe = { fail = {} }
package.loaded["alerts_spec_probe"] = probe

outbox.register_kind("alerts_spec_mem", function()
  return {
    ensure = function() return true end,
    write = function()
      while probe.hold do sluice.sleep(0.005) end
      return true
    end,
  }
end)

local FEED = [[
local collector = require "sluice.collector"
local probe = require "alerts_spec_probe"
local runs = 0
return collector.define({
  name = "feed", interval = 3600, limiter = false, breaker = false, retry = false,
  tables = { ticks = { columns = { src = "text", n = "integer" }, key = { "src", "n" } } },
  backfill_step = 100,
  collect = function(self)
    if probe.fail[self.name] then error("upstream down") end
    runs = runs + 1
    return { { src = self.name, n = runs } }
  end,
  backfill = function(self, from)
    if probe.backfill_fail then error("window failed") end
    return { { src = "bf", n = from } }
  end,
})
]]

local CONFIG = [[return { store = "%DIR%/db.sqlite", admin = { port = 0, insecure_loopback_mutations = true },
  sinks = { mem = { kind = "alerts_spec_mem", max_rows = 3, max_age = 0.01 } },
  collectors = { { file = "feed.lua", name = "a" }, { file = "feed.lua", name = "b" } },
  alerts = { webhooks = { { url = "%URL%", format = "%FORMAT%" } }, group_window = 0, check_interval = 0.02 } }]]

local function write_config(dir, url, format)
  files.write(dir .. "/sluice.lua", (CONFIG:gsub("%%(%u+)%%", { DIR = dir, URL = url, FORMAT = format })))
end

local function stop_app(app)
  for _, c in ipairs(app.order) do c:stop() end
  if app.admin then app.admin:close() end
  for _, c in ipairs(app.order) do c:drain() end
  probe.hold = false
  if app.outbox then app.outbox:stop(0) end
  if app.alerts then app.alerts:stop(0) end
  app.store:close()
  app_mod.current = nil
end

describe("sluice.alerts", function()
  setup(function() log.output("/dev/null") end)
  teardown(function()
    log.output("-")
    files.cleanup()
  end)
  after_each(function()
    for i = #cleanups, 1, -1 do cleanups[i]() end
    cleanups = {}
  end)

  describe("configuration", function()
    local function prep(alerts_cfg)
      local ok, err = pcall(config.prepare, { alerts = alerts_cfg }, "sluice.lua", { env = {} })
      return ok and "ok" or err
    end

    it("names the key and the problem", function()
      local url = "https://hooks.example.com/services/T1/B2/xyz"
      assert.equal("ok", prep({ webhooks = { { url = url } } }))
      assert.equal("ok", prep({ webhooks = { { url = url, format = "slack", events = { "breaker_opened" },
        headers = { Authorization = "Bearer abcdef" }, timeout = 3, queue = 10, retry = { 0.5, 2 },
        breaker = { failure_threshold = 2, timeout = 5 } } }, group_window = 0, check_interval = 1 }))
      assert.equal("sluice.lua: alerts: must be a table, got string", prep("yes"))
      assert.equal("sluice.lua: alerts.webhooks: is required", prep({}))
      assert.equal("sluice.lua: alerts.hooks: unknown setting", prep({ hooks = {} }))
      assert.equal("sluice.lua: alerts.webhooks: must be a non-empty list of webhooks "
        .. "{ url = ..., format = \"json\" | \"slack\" }", prep({ webhooks = {} }))
      assert.equal("sluice.lua: alerts.webhooks[1].url: is required", prep({ webhooks = { {} } }))
      assert.equal("sluice.lua: alerts.webhooks[1].url: must be an http:// or https:// URL, got "
        .. "'ftp://h/<redacted>'", prep({ webhooks = { { url = "ftp://h/x/y" } } }))
      assert.equal("sluice.lua: alerts.webhooks[1].format: must be 'json' or 'slack', got 'xml'",
        prep({ webhooks = { { url = url, format = "xml" } } }))
      assert.equal("sluice.lua: alerts.webhooks[1].events[2]: must be 'breaker_opened', 'breaker_closed', "
        .. "'collector_health_changed', 'backfill_finished', 'backfill_failed', "
        .. "'redis_degraded', 'redis_recovered', 'outbox_full', 'outbox_recovered' or 'alert', got 'breaker_open'",
        prep({ webhooks = { { url = url, events = { "breaker_opened", "breaker_open" } } } }))
      assert.equal("sluice.lua: alerts.webhooks[1].retry[1]: must be a finite number > 0, got 0",
        prep({ webhooks = { { url = url, retry = { 0 } } } }))
      assert.equal("sluice.lua: alerts.webhooks[1].retry: must be a non-empty list of seconds between "
        .. "attempts, e.g. {1, 5, 30}", prep({ webhooks = { { url = url, retry = {} } } }))
      assert.equal("sluice.lua: alerts.webhooks[1].headers.X-Key: must be a string (one line) or "
        .. "collector.env(\"NAME\")", prep({ webhooks = { { url = url, headers = { ["X-Key"] = "a\nb" } } } }))
      assert.equal("sluice.lua: alerts.webhooks[1].queue: must be an integer in [1, 1000000], got 0",
        prep({ webhooks = { { url = url, queue = 0 } } }))
      assert.equal("sluice.lua: alerts.webhooks[1].breaker.timeout: must be a finite number > 0, got -1",
        prep({ webhooks = { { url = url, breaker = { timeout = -1 } } } }))
      assert.equal("sluice.lua: alerts.group_window: must be a finite number in [0, 3600], got -1",
        prep({ webhooks = { { url = url } }, group_window = -1 }))
      assert.equal("sluice.lua: alerts.webhooks[1].url: environment variable ALERTS_SPEC_UNSET is not set",
        prep({ webhooks = { { url = require("sluice.collector").env("ALERTS_SPEC_UNSET") } } }))
    end)

    it("refuses an operator's alert without webhooks", function()
      local m = alerts.start(nil)
      assert.same({ nil, "no alert webhooks are configured (alerts.webhooks)", "unavailable" },
        { m:send({ message = "x" }) })
      m:stop(0)
    end)

    it("never shows a webhook URL: /status's view, log lines, the alerts' status", function()
      local url = "https://hooks.slack.com/services/T9/B9/v3ryS3cret"
      local c = config.prepare({ alerts = { webhooks = { { url = url, format = "slack" } } } }, "sluice.lua",
        { env = {} })
      local view = json.encode(redact.classify(c))
      assert.is_nil(view:find("v3ryS3cret", 1, true))
      assert.equal("<redacted>", redact.classify(c).alerts.webhooks[1].url)
      assert.equal("failed to reach <redacted>: refused", redact.text("failed to reach " .. url .. ": refused"))
      local m = alerts.new(c.alerts)
      assert.equal("https://hooks.slack.com/<redacted>", m:status().webhooks[1].url)
      m:stop(0)
    end)
  end)

  describe("delivery", function()
    it("sends one delivery per breaker transition, none for half-open trials", function()
      local r = receiver()
      defer(r.close)
      local cb = breaker.new({ name = "spec_upstream", failure_threshold = 1, timeout = 0.05,
        half_open_success_threshold = 1 })
      defer(function() cb:close() end)
      local m = start({ webhooks = { { url = r.url() } }, group_window = 0, check_interval = 0.05 })
      cb:failure(cb:allow())
      wait_for("the opened delivery", function() return #r.got == 1 end)
      local d = r.got[1].decoded
      assert.same({ "breaker_opened spec_upstream" }, events_of(r.got[1]))
      assert.same({ "firing", "error", "failure_threshold", 1 }, { d.alerts[1].status, d.alerts[1].severity,
        d.alerts[1].details.reason, d.alerts[1].details.failure_count })
      assert.same({ "sluice", 1, 0, "firing", "1 alert: 1 breaker_opened" },
        { d.service, d.sequence, d.dropped, d.status, d.summary })
      assert.equal("application/json", r.got[1].headers["content-type"])
      -- half-open, a failed trial: open again -- the same outage, no event
      local p = wait_for("a half-open trial", function() return cb:allow() end)
      cb:failure(p)
      assert.equal("open", cb:status().state)
      p = wait_for("a second trial", function() return cb:allow() end)
      cb:success(p)
      assert.equal("closed", cb:status().state)
      wait_for("the closed delivery", function() return #r.got == 2 end)
      assert.same({ "breaker_closed spec_upstream" }, events_of(r.got[2]))
      assert.same({ "resolved", 2 }, { r.got[2].decoded.alerts[1].status, r.got[2].decoded.sequence })
      wait_for("the alerts settled", function() return settled(m) end)
      assert.equal(2, #r.got)
      local st = m:status().webhooks[1]
      assert.same({ 2, 0, 0, "closed" }, { st.delivered, st.failed, st.dropped, st.breaker })
      assert.same({ 1, 2 }, { st.deliveries[1].sequence, st.deliveries[2].sequence })
    end)

    it("groups a storm: 50 breakers opening at once are one delivery", function()
      local r = receiver()
      defer(r.close)
      local cbs = {}
      for i = 1, 50 do
        cbs[i] = breaker.new({ name = ("storm_%02d"):format(i) })
        defer(function() cbs[i]:close() end)
      end
      local m = start({ webhooks = { { url = r.url() } }, group_window = 0.2, check_interval = 60 })
      for i = 1, 50 do cbs[i]:force_open() end
      wait_for("the delivery", function() return #r.got == 1 end)
      wait_for("the alerts settled", function() return settled(m) end)
      assert.equal(1, #r.got)
      local names = {}
      for i, a in ipairs(r.got[1].decoded.alerts) do
        assert.same({ "breaker_opened", "force_open" }, { a.event, a.details.reason })
        names[i] = a.source
      end
      table.sort(names)
      assert.equal(50, #names)
      assert.same({ "storm_01", "storm_50" }, { names[1], names[50] })
      assert.equal("50 alerts: 50 breaker_opened", r.got[1].decoded.summary)
    end)

    it("holds deliveries while the receiver is down and sends them afterwards, in order", function()
      local r = receiver()
      local port = r.port
      r.close() -- down: nothing listens on the port
      local m = start({ webhooks = { { url = "http://127.0.0.1:" .. port .. PATH, retry = { 0.02, 0.05 },
        breaker = { failure_threshold = 3, timeout = 0.2, max_timeout = 0.2 } } },
        group_window = 0, check_interval = 60 })
      -- the default bound holds far more than a minute's worth of groups
      assert.equal(1000, m:status().webhooks[1].queue_max)
      for i = 1, 30 do
        m:emit("backfill_finished", "feed", "backfill " .. i .. " finished", { n = i })
        m:flush()
      end
      -- the outage lasts long enough for the breaker to open and retry
      wait_for("the breaker of the webhook open", function()
        local w = m:status().webhooks[1]
        return w.breaker == "open" and #w.failures >= 3
      end)
      local w = m:status().webhooks[1]
      assert.equal(0, w.delivered)
      assert.equal(29, w.queued)
      assert.equal(1, w.sending)
      assert.truthy(w.failures[1].error:find("connect", 1, true) or w.failures[1].error:find("refused", 1, true))
      r = receiver(port) -- back
      defer(r.close)
      wait_for("every delivery", function() return #r.got == 30 end)
      for i, g in ipairs(r.got) do
        assert.same({ i, 0, "backfill " .. i .. " finished", i }, { g.decoded.sequence, g.decoded.dropped,
          g.decoded.alerts[1].message, g.decoded.alerts[1].details.n })
      end
      wait_for("the alerts settled", function() return settled(m) end)
      w = m:status().webhooks[1]
      assert.same({ 30, 0, 0, 0 }, { w.delivered, w.failed, w.dropped, w.queued })
    end)

    it("drops the oldest queued delivery when the queue is full, counted, and says so", function()
      local r = receiver()
      r.status = 503
      defer(r.close)
      local m = start({ webhooks = { { url = r.url(), queue = 2, retry = { 0.02 },
        breaker = { failure_threshold = 1000 } } }, group_window = 0, check_interval = 60 })
      m:emit("redis_degraded", "redis", "outage 1")
      m:flush()
      wait_for("the first delivery being sent", function() return m:status().webhooks[1].sending == 1 end)
      for i = 2, 5 do
        m:emit("redis_degraded", "redis", "outage " .. i)
        m:flush()
      end
      -- 1 being sent (retried on 503), 4 and 5 queued, 2 and 3 dropped
      wait_for("retries", function() return #r.got >= 2 end)
      local w = m:status().webhooks[1]
      assert.same({ 1, 2, 2 }, { w.sending, w.queued, w.dropped })
      r.status = 200
      wait_for("the alerts settled", function() return settled(m) end)
      local seqs, msgs = {}, {}
      for _, g in ipairs(r.got) do
        if g.decoded.sequence ~= seqs[#seqs] then
          seqs[#seqs + 1] = g.decoded.sequence
          msgs[#msgs + 1] = g.decoded.alerts[1].message .. "/" .. g.decoded.dropped
        end
      end
      assert.same({ 1, 4, 5 }, seqs)
      -- the first one sent after the drops says how many went before it
      assert.same({ "outage 1/0", "outage 4/2", "outage 5/0" }, msgs)
      w = m:status().webhooks[1]
      assert.same({ 3, 0, 2 }, { w.delivered, w.failed, w.dropped })
    end)

    it("drops a delivery the receiver refuses (4xx) and goes on", function()
      local r = receiver()
      r.status = 400
      defer(r.close)
      local m = start({ webhooks = { { url = r.url(), retry = { 0.01 } } }, group_window = 0, check_interval = 60 })
      m:emit("outbox_full", "pg", "full")
      m:flush()
      wait_for("the refusal", function() return m:status().webhooks[1].failed == 1 end)
      r.status = 200
      m:emit("outbox_recovered", "pg", "room again")
      m:flush()
      wait_for("the alerts settled", function() return settled(m) end)
      assert.equal(2, #r.got)
      local w = m:status().webhooks[1]
      assert.same({ 1, 1, "HTTP 400", true }, { w.delivered, w.failed, w.failures[1].error, w.failures[1].final })
      assert.equal("closed", w.breaker)
    end)

    it("formats for Slack: {text} with a summary line and one line per event", function()
      local r = receiver()
      defer(r.close)
      local m = start({ webhooks = { { url = r.url(), format = "slack" } }, group_window = 60, check_interval = 60 })
      m:emit("breaker_opened", "binance", "circuit breaker 'binance' opened (failure_threshold, 5 failures)")
      m:emit("breaker_closed", "bybit", "circuit breaker 'bybit' closed (recovered)")
      m:emit("backfill_finished", "feed", "backfill bf-1 of 'feed' finished: 4 of 4 windows done, 0 failed, 9 rows")
      m:flush()
      wait_for("the delivery", function() return #r.got == 1 end)
      local host = m.context.host
      assert.same({ text = "*[sluice]* 3 alerts: 1 breaker_opened, 1 breaker_closed, 1 backfill_finished"
        .. (host and (" (" .. host .. ")") or "") .. "\n"
        .. "• :rotating_light: circuit breaker 'binance' opened (failure_threshold, 5 failures)\n"
        .. "• :white_check_mark: circuit breaker 'bybit' closed (recovered)\n"
        .. "• :information_source: backfill bf-1 of 'feed' finished: 4 of 4 windows done, 0 failed, 9 rows" },
        r.got[1].decoded)
    end)

    it("sends what is gathered and queued at stop, within the grace; then gives up", function()
      local r = receiver()
      defer(r.close)
      local hang = {}
      r.srv:route("POST", "/hang", function()
        hang[#hang + 1] = sluice.current()
        sluice.park()
        return 200
      end)
      defer(function() for _, t in ipairs(hang) do sluice.unpark(t) end end)
      local hung = "http://127.0.0.1:" .. r.port .. "/hang"
      local m = alerts.start({ webhooks = { { url = r.url() }, { url = hung } }, group_window = 60,
        check_interval = 60 })
      m:emit("redis_degraded", "redis", "down")
      -- the group window is a minute: stop sends it now
      local t0 = sluice.now()
      m:stop(0.3)
      local took = sluice.now() - t0
      assert.equal(1, #r.got)
      assert.same({ "redis_degraded redis" }, events_of(r.got[1]))
      -- the hung receiver held its delivery until the grace ran out
      assert.equal(1, #hang)
      assert.is_true(took >= 0.3 and took < 2, "stop took " .. took)
      local st = m:status().webhooks
      assert.same({ 1, 0, "closed" }, { st[1].delivered, st[2].delivered, st[1].breaker })
      -- emitting after stop does nothing (and never yields or raises)
      m:emit("redis_recovered", "redis", "up")
      assert.equal(0, m:status().pending)
    end)

    it("stops without waiting out a retry delay past the grace; the delivery stays counted", function()
      local r = receiver()
      r.status = 503
      defer(r.close)
      local m = alerts.start({ webhooks = { { url = r.url(), retry = { 30 } } }, group_window = 0,
        check_interval = 60 })
      m:emit("outbox_full", "pg", "full")
      m:flush()
      -- (the failure is recorded just before the retry wait starts)
      wait_for("the first attempt failed", function() return #m:status().webhooks[1].failures == 1 end)
      local t0 = sluice.now()
      m:stop(1)
      assert.is_true(sluice.now() - t0 < 0.5, "stop waited " .. (sluice.now() - t0))
      -- stop cut the retry wait short for one last attempt
      local w = m:status().webhooks[1]
      assert.same({ 1, 0, 0, 2 }, { w.queued, w.delivered, w.failed, #r.got })
    end)

    it("never makes collection wait: emitting returns at once while a receiver hangs", function()
      local r = receiver()
      defer(r.close)
      local hang = {}
      r.srv:route("POST", PATH, function()
        hang[#hang + 1] = sluice.current()
        sluice.park()
        return 200
      end)
      defer(function() for _, t in ipairs(hang) do sluice.unpark(t) end end)
      local m = start({ webhooks = { { url = r.url(), timeout = 30 } }, group_window = 0, check_interval = 60 })
      m:emit("outbox_full", "pg", "full 1")
      m:flush()
      wait_for("the hung request", function() return #hang == 1 end)
      -- a coroutine that may not yield: emit and flush never do
      for i = 2, 100 do
        local co = coroutine.create(function()
          m:emit("outbox_full", "pg", "full " .. i)
          m:flush()
        end)
        assert.is_true(coroutine.resume(co))
        assert.equal("dead", coroutine.status(co))
      end
      assert.same({ 1, 99 }, { m:status().webhooks[1].sending, m:status().webhooks[1].queued })
    end)

    it("sends the configured headers, collector.env values revealed at send time", function()
      local r = receiver()
      defer(r.close)
      local env = require("sluice.collector").env
      local m = start({ webhooks = { { url = r.url(), headers = { ["X-Team"] = "ops",
        Authorization = env("ALERTS_SPEC_AUTH", "Bearer from-default") } } }, group_window = 0, check_interval = 60 })
      m:emit("breaker_closed", "x", "closed")
      m:flush()
      wait_for("the delivery", function() return #r.got == 1 end)
      assert.same({ "ops", "Bearer from-default", "sluice/" .. sluice._VERSION },
        { r.got[1].headers["x-team"], r.got[1].headers["authorization"], r.got[1].headers["user-agent"] })
    end)

    it("keeps sending across a reload that replaces the webhook's breaker mid-request", function()
      local r = receiver()
      defer(r.close)
      local held = {}
      r.srv:route("POST", "/slow", function()
        held[#held + 1] = sluice.current()
        sluice.park()
        return 200, "ok"
      end)
      defer(function() for _, t in ipairs(held) do sluice.unpark(t) end end)
      local url = "http://127.0.0.1:" .. r.port .. "/slow"
      local m = start({ webhooks = { { url = url, breaker = { failure_threshold = 100 } } }, group_window = 0,
        check_interval = 60 })
      local old = breaker.get("alerts:1")
      m:emit("outbox_full", "pg", "full")
      m:flush()
      wait_for("the request in flight", function() return #held == 1 end)
      -- a reload with other breaker options: a new breaker "alerts:1"
      m:configure({ webhooks = { { url = url, breaker = { failure_threshold = 50 } } }, group_window = 0,
        check_interval = 60 })
      local new = breaker.get("alerts:1")
      assert.is_not.equal(old, new)
      assert.equal(50, new:status().failure_threshold)
      sluice.unpark(held[1])
      wait_for("the delivery", function() return m:status().webhooks[1].delivered == 1 end)
      m:emit("outbox_recovered", "pg", "room")
      m:flush()
      wait_for("the next request", function() return #held == 2 end)
      sluice.unpark(held[2])
      wait_for("the next delivery", function() return m:status().webhooks[1].delivered == 2 end)
      assert.same({ "closed", 1 }, { m:status().webhooks[1].breaker, new:status().statistics.total_successes })
    end)

    it("sends each webhook only the events it takes", function()
      local a, b = receiver(), receiver()
      defer(a.close)
      defer(b.close)
      local m = start({ webhooks = { { url = a.url(), events = { "redis_degraded" } }, { url = b.url() } },
        group_window = 60, check_interval = 60 })
      m:emit("redis_degraded", "redis", "down")
      m:emit("outbox_full", "pg", "full")
      m:flush()
      wait_for("the deliveries", function() return #a.got == 1 and #b.got == 1 end)
      assert.same({ "redis_degraded redis" }, events_of(a.got[1]))
      assert.same({ "redis_degraded redis", "outbox_full pg" }, events_of(b.got[1]))
      assert.same({ "alerts:1", "alerts:2" }, { m:status().webhooks[1].name, m:status().webhooks[2].name })
    end)
  end)

  describe("sources", function()
    it("sees Redis going and coming back once each (the shared object's degraded())", function()
      local rs = require "support.redis_server"
      local srv, red = rs.with_client()
      defer(function() srv:shutdown(red) end)
      local sh = require("sluice.shared").new(red)
      assert(sh:call("PING"))
      local r = receiver()
      defer(r.close)
      local app = { order = {}, shared = sh }
      local m = start({ webhooks = { { url = r.url() } }, group_window = 0, check_interval = 0.02 },
        { current = function() return app end })
      -- what the shared object does when a call finds Redis away
      sh:unreachable("redis unreachable: using local state until it is back", "disconnected")
      assert.is_true(sh:degraded())
      wait_for("the degraded delivery", function() return #r.got == 1 end)
      polls(m, 3)
      assert(sh:call("PING")) -- a call that reaches it ends the outage
      assert.is_false(sh:degraded())
      wait_for("the recovered delivery", function() return #r.got == 2 end)
      polls(m, 3)
      assert.equal(2, #r.got)
      assert.same({ "redis_degraded redis" }, events_of(r.got[1]))
      assert.same({ "redis_recovered redis" }, events_of(r.got[2]))
      assert.same({ "firing", "warning", false }, { r.got[1].decoded.alerts[1].status,
        r.got[1].decoded.alerts[1].severity, r.got[1].decoded.alerts[1].details.reachable })
      assert.same({ "resolved", "info", true }, { r.got[2].decoded.alerts[1].status,
        r.got[2].decoded.alerts[1].severity, r.got[2].decoded.alerts[1].details.reachable })
    end)

    it("forgets the reading of a breaker name no breaker has any more", function()
      local events = {}
      local w = require("sluice.alerts.watch").new(function(kind, source) events[#events + 1] = kind .. " " .. source end)
      local cb = breaker.new { name = "watch_gone", failure_threshold = 1 }
      w:attach()
      assert.is_false(w.open.watch_gone)
      cb:close()
      w:attach() -- (a reload attaches after it swapped the breakers)
      assert.is_nil(w.open.watch_gone)
      local again = breaker.new { name = "watch_gone", failure_threshold = 1 }
      w:attach()
      again:force_open()
      wait_for("the opening seen", function() return #events == 1 end)
      assert.same({ "breaker_opened watch_gone" }, events)
      w:stop()
      again:close()
    end)

    it("takes a new baseline when alerts come back after a reload without them", function()
      local r = receiver()
      defer(r.close)
      -- the watcher reads c.name and c:health() of the app's collectors
      local health = "healthy"
      local app = { order = { { name = "x", health = function() return health end } } }
      local on = { webhooks = { { url = r.url() } }, group_window = 0, check_interval = 0.02 }
      local m = start(on, { current = function() return app end })
      health = "failed"
      wait_for("the delivery", function() return #r.got == 1 end)
      assert.same({ "collector_health_changed x" }, events_of(r.got[1]))
      m:configure(nil) -- a reload without alerts
      health = "healthy"
      m:configure(on) -- and one with them again: healthy is the baseline now
      local checks = m:status().checks
      wait_for("more checks", function() return m:status().checks >= checks + 3 end)
      assert.equal(1, #r.got)
      health = "degraded"
      wait_for("the next delivery", function() return #r.got == 2 end)
      assert.same({ "healthy", "degraded" }, { r.got[2].decoded.alerts[1].details.from,
        r.got[2].decoded.alerts[1].details.to })
    end)

    it("sees a running app's collectors, backfills and outbox; /status shows the deliveries; reload", function()
      local r = receiver()
      defer(r.close)
      local dir = files.tmpdir()
      files.write(dir .. "/feed.lua", FEED)
      write_config(dir, r.url(), "json")
      local file = dir .. "/sluice.lua"
      local app = app_mod.run(assert(loadfile(file))(), file)
      defer(function() stop_app(app) end)
      local m = app.alerts
      local n = 0
      -- each step's delivery, then no other: the watcher has looked
      -- again and found nothing new
      local function step(what, want)
        n = n + 1
        wait_for(what, function() return #r.got >= n end)
        polls(m, 3)
        wait_for("the alerts settled", function() return settled(m) end)
        assert.equal(n, #r.got)
        assert.same(want, events_of(r.got[n]))
        return r.got[n].decoded.alerts[1]
      end
      local a, b = app.collectors.a, app.collectors.b

      probe.fail.a = true
      a:run_once()
      local e = step("degraded", { "collector_health_changed a" })
      assert.same({ "healthy", "degraded", "firing", "warning" },
        { e.details.from, e.details.to, e.status, e.severity })
      a:run_once()
      a:run_once()
      e = step("failed", { "collector_health_changed a" })
      assert.same({ "degraded", "failed", "error" }, { e.details.from, e.details.to, e.severity })
      probe.fail.a = false
      a:run_once()
      e = step("healthy", { "collector_health_changed a" })
      assert.same({ "failed", "healthy", "resolved", "collector 'a' is healthy (was failed)" },
        { e.details.from, e.details.to, e.status, e.message })

      backfill.wait(backfill.start({ collector = b, from = 0, to = 200 }))
      e = step("backfill finished", { "backfill_finished b" })
      assert.same({ "done", 2, 2, 0 }, { e.details.state, e.details.windows_total, e.details.windows_done,
        e.details.windows_failed })
      probe.backfill_fail = true
      backfill.wait(backfill.start({ collector = b, from = 200, to = 300 }))
      probe.backfill_fail = false
      e = step("backfill failed", { "backfill_failed b" })
      assert.same({ "failed", 1 }, { e.details.state, e.details.windows_failed })

      -- the sink takes nothing: three rows fill its outbox (max_rows 3)
      wait_for("the outbox empty", function() return app.outbox:status().mem.depth == 0 end)
      probe.hold = true
      for _ = 1, 3 do b:run_once() end
      e = step("outbox full", { "outbox_full mem" })
      assert.same({ 3, 3, "stop" }, { e.details.depth, e.details.max_rows, e.details.on_full })
      probe.hold = false
      step("outbox recovered", { "outbox_recovered mem" })

      -- /status: the webhook, its deliveries, its URL without its path
      local res = assert(require("sluice.http").get("http://127.0.0.1:" .. app.admin.port .. "/status"))
      local st = res:json().alerts
      assert.same({ "alerts:1", "http://127.0.0.1:" .. r.port .. "/<redacted>", n, 0, 0 },
        { st.webhooks[1].name, st.webhooks[1].url, st.webhooks[1].delivered, st.webhooks[1].failed,
          st.webhooks[1].queued })
      assert.is_nil(res.body:find("s3cr3tT0ken", 1, true))
      for _, entry in ipairs(log.recent()) do
        assert.is_nil(json.encode(entry, true):find("s3cr3tT0ken", 1, true))
      end

      -- POST /alert: the reference's operation, an operator's alert
      local http = require "sluice.http"
      local function post_alert(body)
        local pres = assert(http.post("http://127.0.0.1:" .. app.admin.port .. "/alert", {
          headers = { ["Content-Type"] = "application/json" }, body = body }))
        return pres.status, pres:json()
      end
      assert.same({ 400, { error = "field 'message' (a non-empty string) is required" } },
        { post_alert('{"severity": "error"}') })
      assert.same({ 400, { error = "unknown field 'msg' (message, severity, source, details)" } },
        { post_alert('{"msg": "x"}') })
      assert.same({ 400, { error = "field 'severity' must be info, warning, error or critical" } },
        { post_alert('{"message": "x", "severity": "fatal"}') })
      local ps, pb = post_alert('{"message": "disk 91% full", "severity": "error", "source": "ops",'
        .. ' "details": {"disk": "/var"}}')
      assert.same({ 202, "queued" }, { ps, pb.status })
      e = step("the operator's alert", { "alert ops" })
      assert.same({ pb.id, "disk 91% full", "error", "firing", "/var" },
        { e.id, e.message, e.severity, e.status, e.details.disk })

      -- a reload: the same webhook, now in Slack's format; its counters stay
      write_config(dir, r.url(), "slack")
      assert(app_mod.reload())
      assert.equal(m, app.alerts)
      probe.fail.b = true
      b:run_once()
      n = n + 1
      wait_for("the slack delivery", function() return #r.got >= n end)
      assert.same({ "text" }, (function()
        local keys = {}
        for k in pairs(r.got[n].decoded) do keys[#keys + 1] = k end
        return keys
      end)())
      assert.truthy(r.got[n].decoded.text:find("collector 'b' is degraded (was healthy): ", 1, true))
      -- (the receiver has it before the sender has its answer)
      wait_for("the delivery counted", function() return m:status().webhooks[1].delivered == n end)
      assert.equal(n, #r.got)
    end)
  end)
end)
