-- sluice.app: enablement, reload hand-over (no overlap, no extra run, old
-- instances freed), refused builds and reloads (file:line, the running
-- configuration kept), one run in flight per collector through POST
-- /collect, overdue health in /health, the start-up spread (first_delays)
-- and the sinks added to every collector, with collectors from temp files
-- that report to a probe module instead of doing HTTP.
local sluice = require "sluice"
local http = require "sluice.http"
local log = require "sluice.log"
local breaker = require "sluice.breaker"
local app_mod = require "sluice.app"
local files = require "support.files"
local wait_for = require("support.wait").wait_for
local logs = require "support.logs"

local write, tmpdir = files.write, files.tmpdir

-- The collectors below report here; probe.hold parks their runs until
-- release().
local probe = { hold = false, parked = {} }
package.loaded["app_spec_probe"] = probe

local function reset_probe()
  for k in pairs(probe) do probe[k] = nil end
  probe.hold, probe.parked = false, {}
end

local function release()
  probe.hold = false
  local parked = probe.parked
  probe.parked = {}
  for _, t in ipairs(parked) do sluice.unpark(t) end
end

local FEED = [[
local sluice = require "sluice"
local collector = require "sluice.collector"
local probe = require "app_spec_probe"
return collector.define({
  name = "feed", interval = %s, timeout = %s, limiter = %s, breaker = %s, retry = false, %s
  collect = function(self)
    local p = probe[self.name]
    if not p then
      p = { runs = 0, active = 0, max_active = 0, starts = {} }
      probe[self.name] = p
    end
    p.runs = p.runs + 1
    p.active = p.active + 1
    if p.active > p.max_active then p.max_active = p.active end
    p.starts[#p.starts + 1] = sluice.now()
    if probe.hold then
      probe.parked[#probe.parked + 1] = sluice.current()
      sluice.park()
    end
    p.active = p.active - 1
    return {}
  end,
})
]]

local function feed(opts)
  opts = opts or {}
  return FEED:format(opts.interval or 3600, opts.timeout or 30, tostring(opts.limiter or false),
    tostring(opts.breaker or false), opts.enabled == false and "enabled = false," or "")
end

-- Writes cfg (a Lua table constructor's text, %s = the dir) to dir and
-- runs it.
local function run(dir, cfg)
  write(dir .. "/sluice.lua", cfg:gsub("%%DIR%%", dir))
  local chunk = assert(loadfile(dir .. "/sluice.lua"))
  return app_mod.run(chunk(), dir .. "/sluice.lua")
end

local function rewrite(dir, cfg)
  write(dir .. "/sluice.lua", cfg:gsub("%%DIR%%", dir))
end

local function stop(app)
  for _, c in ipairs(app.order) do c:stop() end
  if app.admin then app.admin:close() end
  release()
  for _, c in ipairs(app.order) do c:drain() end
  if app.outbox then app.outbox:stop(0) end
  app.store:close()
  app_mod.current = nil
end

-- A collector storing one row a run into ticks, {src = its name, n = its
-- run count}, counted in probe[name].
local ROWS = [[
local collector = require "sluice.collector"
local probe = require "app_spec_probe"
return collector.define({
  name = "rows", interval = 3600, limiter = false, breaker = false, retry = false,
  tables = { ticks = { columns = { src = "text", n = "integer" }, key = { "src", "n" } } },
  collect = function(self)
    probe[self.name] = (probe[self.name] or 0) + 1
    return { { src = self.name, n = probe[self.name] } }
  end,
})
]]

-- A loopback port nothing listens on (the kernel's pick).
local function free_port()
  local srv = assert(require("sluice.server").listen({ host = "127.0.0.1", port = 0 }))
  local port = srv.port
  srv:close()
  return port
end

local function call(app, method, path, body)
  local res = assert(http.request({ method = method, url = "http://127.0.0.1:" .. app.admin.port .. path,
    headers = { ["Content-Type"] = "application/json" }, body = body and require("cjson").encode(body) or nil }))
  return res.status, res:json()
end

describe("sluice.app", function()
  setup(function() log.output("/dev/null") end)
  teardown(function()
    log.output("-")
    files.cleanup()
  end)
  before_each(reset_probe)

  it("honours enabled = false in the configuration, shows it, and reloads flips", function()
    local dir = tmpdir()
    write(dir .. "/feed.lua", feed())
    local CFG = [[return { store = "%DIR%/db.sqlite", admin = { port = 0, insecure_loopback_mutations = true }, collectors = {
      { file = "feed.lua", name = "off", enabled = $1 },
      { file = "feed.lua", name = "on", enabled = $2 } } }]]
    local function cfg(a, b) return (CFG:gsub("%$(%d)", { ["1"] = a, ["2"] = b })) end
    local app = run(dir, cfg("false", "true"))
    finally(function() stop(app) end)
    wait_for("the enabled collector's first run", function() return probe.on and probe.on.runs == 1 end)
    -- the disabled one was never scheduled: no first run is due, ever
    -- (rather than none having come in the tenth of a second waited here
    -- before)
    assert.is_nil(probe.off)
    assert.same({ false, nil }, { app.collectors.off.running, app.collectors.off.first_due_ })
    local status, body = call(app, "GET", "/status")
    assert.equal(200, status)
    assert.same({ "disabled", false, "disabled in the configuration" },
      { body.collectors.off.status, body.collectors.off.enabled, body.collectors.off.status_reason })
    assert.same({ "healthy", true }, { body.collectors.on.status, body.collectors.on.enabled })
    local hs, hb = call(app, "GET", "/health")
    assert.same({ 200, "healthy" }, { hs, hb.status })
    local cs, cb = call(app, "POST", "/collect", { collector = "off" })
    assert.same({ 409, "disabled" }, { cs, cb.status })
    assert.is_nil(probe.off)

    -- flip both
    rewrite(dir, cfg("true", "false"))
    assert(app_mod.reload())
    wait_for("the newly enabled one's first run", function() return probe.off and probe.off.runs == 1 end)
    assert.is_true(app.collectors.off.running)
    assert.is_false(app.collectors.on.running)
    assert.equal("disabled", (app.collectors.on:health()))
    assert.equal(1, probe.on.runs)
  end)

  it("sets the Lua GC from gc_pause and gc_stepmul, and back to the runtime's 120 and 200 on a reload "
    .. "without them", function()
    local function get(what) -- setpause/setstepmul return the previous value
      local p = collectgarbage(what, 200)
      collectgarbage(what, p)
      return p
    end
    assert.equal(120, get("setpause"))
    assert.equal(200, get("setstepmul"))
    local dir = tmpdir()
    write(dir .. "/feed.lua", feed())
    local app = run(dir, [[return { store = "%DIR%/db.sqlite", gc_pause = 300, gc_stepmul = 100,
      collectors = { { file = "feed.lua", name = "one" } } }]])
    finally(function()
      stop(app)
      collectgarbage("setpause", 120)
      collectgarbage("setstepmul", 200)
    end)
    assert.equal(300, get("setpause"))
    assert.equal(100, get("setstepmul"))
    rewrite(dir, [[return { store = "%DIR%/db.sqlite", collectors = { { file = "feed.lua", name = "one" } } }]])
    assert(app_mod.reload())
    assert.equal(120, get("setpause"))
    assert.equal(200, get("setstepmul"))
  end)

  it("honours enabled = false in a collector's spec; the configuration entry overrides it", function()
    local dir = tmpdir()
    write(dir .. "/feed_off.lua", feed({ enabled = false }))
    local CFG = [[return { store = "%DIR%/db.sqlite", collectors = {
      { file = "feed_off.lua", name = "spec_off" },
      { file = "feed_off.lua", name = "spec_on", enabled = true } } }]]
    local app = run(dir, CFG)
    finally(function() stop(app) end)
    wait_for("the overridden one's first run", function() return probe.spec_on and probe.spec_on.runs == 1 end)
    assert.is_nil(probe.spec_off)
    assert.same({ false, "disabled" }, { app.collectors.spec_off.running, (app.collectors.spec_off:health()) })
    assert.is_nil(app.collectors.spec_off.first_due_) -- never scheduled
  end)

  it("refuses a redis URL that does not parse instead of running without Redis", function()
    local dir = tmpdir()
    write(dir .. "/feed.lua", feed({}))
    local file = dir .. "/sluice.lua"
    for url, why in pairs({ ["redis://:hunter2@127.0.0.1:99999/0"] = "bad port",
                            ["redis://127.0.0.1:6379/x"] = "bad database number in url" }) do
      write(file, ([[return { store = "%DIR%/db.sqlite", redis = "]] .. url
        .. [[", collectors = { { file = "feed.lua", name = "a" } } }]]):gsub("%%DIR%%", dir))
      local ok, err = pcall(app_mod.build, assert(loadfile(file))(), file)
      assert.is_false(ok)
      assert.equal(file .. ": redis: " .. why, err)
      assert.is_nil(app_mod.current)
    end
  end)

  it("refuses two entries whose collectors get one name, naming both (by-name views would see one)", function()
    -- two files whose specs both say name = "feed": the configuration's own
    -- check sees the entries as "one" and "two" (their files), not what
    -- the instances are called
    local dir = tmpdir()
    write(dir .. "/one.lua", feed({}))
    write(dir .. "/two.lua", feed({}))
    local file = dir .. "/sluice.lua"
    write(file, ([[return { store = "%DIR%/db.sqlite", collectors = {
      { file = "one.lua" }, { file = "two.lua" } } }]]):gsub("%%DIR%%", dir))
    local ok, err = pcall(app_mod.build, assert(loadfile(file))(), file)
    assert.is_false(ok)
    assert.equal(file .. ": collectors[2]: collector name 'feed' is already used by collectors[1]; "
      .. 'give one of them its own name = "..."', err)
    assert.is_nil(app_mod.current)
  end)

  it("hands a reload over without an extra run or overlap, and frees the old instances", function()
    local dir = tmpdir()
    write(dir .. "/feed.lua", feed({ breaker = true, limiter = true }))
    local CFG = [[return { store = "%DIR%/db.sqlite", collectors = {
      { file = "feed.lua", name = "a" }, { file = "feed.lua", name = "b" } } }]]
    local app = run(dir, CFG)
    finally(function() stop(app) end)
    wait_for("first runs", function() return probe.a and probe.b and probe.a.runs == 1 and probe.b.runs == 1 end)
    local weak = setmetatable({}, { __mode = "k" })
    for _, c in ipairs(app.order) do weak[c] = true end
    -- 50 reloads (50 SIGHUPs) start no run: the schedule carries over
    -- (each one's next run is still the first one's plus the interval)
    local due = { a = app.collectors.a.next_due_, b = app.collectors.b.next_due_ }
    for _ = 1, 50 do assert(app_mod.reload()) end
    -- (within a tenth of a second: each hand-over reads the clock anew)
    for name, at in pairs(due) do
      local now_due = app.collectors[name].first_due_
      assert.is_true(math.abs(now_due - at) < 0.1 and at - sluice.now() > 3500, name .. ": " .. now_due)
    end
    sluice.sleep(0) -- a run started at once would have begun
    assert.same({ 1, 1 }, { probe.a.runs, probe.b.runs })
    -- every instance replaced so far is collected; memory stays bounded.
    -- Measure after 1,000 reloads: the heap levels off only after several
    -- hundred (measured on the split modules: +169, +235, +386, +362, +361,
    -- +361 KB after 300, 600, ... 1,800 reloads), a leak keeps growing
    for _ = 1, 1000 do assert(app_mod.reload()) end
    collectgarbage(); collectgarbage()
    local before = collectgarbage("count")
    for _ = 1, 300 do assert(app_mod.reload()) end
    collectgarbage(); collectgarbage()
    local grown = collectgarbage("count") - before
    assert.is_true(grown < 150, string.format("heap grew %.0f KB over 300 reloads", grown))
    local alive = 0
    for _ in pairs(weak) do alive = alive + 1 end
    assert.equal(0, alive)
    assert.same({ 1, 1 }, { probe.a.runs, probe.b.runs })
  end)

  it("frees the old instances at a reload with Redis configured too (shared breakers, leases)", function()
    local rs = require "support.redis_server"
    local srv = rs.start()
    local app
    -- one finally (busted keeps only the last one a test sets)
    finally(function()
      if app then
        stop(app)
        if app.shared then app.shared:stop() end
      end
      srv:stop(true, true)
    end)
    local dir = tmpdir()
    write(dir .. "/feed.lua", feed({ breaker = true, limiter = true }))
    local CFG = [[return { store = "%DIR%/db.sqlite", redis = "]] .. srv:url(0) .. [[",
      collectors = { { file = "feed.lua", name = "a" }, { file = "feed.lua", name = "b" } } }]]
    app = run(dir, CFG)
    wait_for("first runs", function() return probe.a and probe.b and probe.a.runs == 1 and probe.b.runs == 1 end)
    local weak = setmetatable({}, { __mode = "k" })
    for _, c in ipairs(app.order) do weak[c] = true end
    for _ = 1, 20 do assert(app_mod.reload()) end
    collectgarbage(); collectgarbage()
    local alive = 0
    for _ in pairs(weak) do alive = alive + 1 end
    assert.equal(0, alive)
    -- a transition of the live breaker is still published (once)
    local red = require("sluice.redis").connect({ url = srv:url(0) })
    local sub = assert(red:subscribe("sluice:cb_state"))
    app.collectors.a.breaker:force_open()
    local m = assert(sub:receive(2))
    assert.equal("cb_state:" .. app.collectors.a.breaker:name(), m.payload)
    assert.same({ nil, "timeout" }, { sub:receive(0.2) })
    sub:close()
    red:close()
  end)

  it("keeps a collector's lease through a reload: never released, so no other instance takes it meanwhile", function()
    -- The old instances were detached (their leases released when no run
    -- was in flight, the new one not attached yet) before the new ones were
    -- attached: for a moment the lease was free for any other instance.
    local rs = require "support.redis_server"
    local srv = rs.start()
    local app, red, sub
    finally(function()
      if sub then sub:close() end
      if red then red:close() end
      if app then
        stop(app)
        if app.shared then app.shared:stop() end
      end
      srv:stop(true, true)
    end)
    local dir = tmpdir()
    -- a limiter: detaching publishes its state (a Redis call, the loop turns)
    write(dir .. "/feed.lua", feed({ limiter = true, breaker = true }))
    app = run(dir, [[return { store = "%DIR%/db.sqlite", redis = "]] .. srv:url(0) .. [[",
      collectors = { { file = "feed.lua", name = "z" }, { file = "feed.lua", name = "a" } } }]])
    wait_for("the first runs", function() return probe.a and probe.a.runs == 1 and probe.z and probe.z.runs == 1 end)
    red = require("sluice.redis").connect({ url = srv:url(0) })
    assert.equal(app.shared.id, red:call("GET", "lease:collector:a"))
    assert.equal("OK", red:call("CONFIG", "SET", "notify-keyspace-events", "Kg"))
    sub = assert(red:subscribe("__keyspace@0__:lease:collector:a"))
    assert(app_mod.reload())
    -- the renewal after the reload is an "expire" event; a release would
    -- be a "del" before it
    local events = {}
    repeat
      local m = sub:receive(1)
      if m then events[#events + 1] = m.payload end
    until not m or m.payload == "expire"
    assert.same({ "expire" }, events)
    assert.equal(app.shared.id, red:call("GET", "lease:collector:a"))
  end)

  it("starts a reloaded instance's first run after the old instance's run in flight", function()
    local dir = tmpdir()
    write(dir .. "/feed.lua", feed({ interval = 0.3 }))
    local CFG = [[return { store = "%DIR%/db.sqlite", collectors = { { file = "feed.lua", name = "slow" } } }]]
    probe.hold = true
    local app = run(dir, CFG)
    finally(function() stop(app) end)
    wait_for("the first run parked", function() return #probe.parked == 1 end)
    for _ = 1, 5 do assert(app_mod.reload()) end
    -- the newest instance's next run comes due and waits for the old run
    local newest = app.collectors.slow
    wait_for("the new instance's run waiting", function()
      return (newest:stats().run_waiters or 0) >= 1 or probe.slow.runs > 1
    end)
    assert.same({ 1, 1 }, { probe.slow.runs, probe.slow.active })
    release()
    wait_for("the second run", function() return probe.slow.runs >= 2 end)
    assert.equal(1, probe.slow.max_active)
  end)

  it("runs a collector once for 30 concurrent POST /collect: the others join it", function()
    local dir = tmpdir()
    write(dir .. "/feed.lua", feed())
    local app = run(dir, [[return { store = "%DIR%/db.sqlite", admin = { port = 0, insecure_loopback_mutations = true },
      collectors = { { file = "feed.lua", name = "one" } } }]])
    finally(function() stop(app) end)
    wait_for("the first run", function() return probe.one and probe.one.runs == 1 end)
    probe.hold = true
    local tasks = {}
    for i = 1, 30 do
      tasks[i] = sluice.spawn(function() return call(app, "POST", "/collect", { collector = "one" }) end)
    end
    local one = app.collectors.one
    -- (the run's collect starts in a task of its own: wait for it too)
    wait_for("29 requests joined", function()
      return (one:stats().run_waiters == 29 and probe.one.active == 1) or probe.one.active > 1
    end)
    assert.same({ 2, 1 }, { probe.one.runs, probe.one.active })
    release()
    local joined = 0
    for i = 1, 30 do
      local ok, status, body = sluice.wait(tasks[i])
      assert.is_true(ok)
      assert.same({ 200, "ok", 0 }, { status, body.status, body.records })
      if body.joined then joined = joined + 1 end
    end
    assert.equal(29, joined)
    assert.same({ 2, 1 }, { probe.one.runs, probe.one.max_active })
  end)

  it("reports a collector stuck in collect() in /health and /status, with the reason", function()
    local dir = tmpdir()
    write(dir .. "/feed.lua", feed({ interval = 0.05, timeout = 0.05 }))
    probe.hold = true
    local app = run(dir, [[return { store = "%DIR%/db.sqlite", admin = { port = 0, insecure_loopback_mutations = true },
      collectors = { { file = "feed.lua", name = "stuck" } } }]])
    finally(function() stop(app) end)
    local status, body
    wait_for("/health to say degraded", function()
      status, body = call(app, "GET", "/health")
      return status ~= 200
    end)
    assert.same({ 503, "unhealthy" }, { status, body.status })
    assert.matches("^stuck is degraded: a run has been in flight for %d+ s %(over 2 × 0 s%)$", body.reasons[1])
    wait_for("/health to say failed", function()
      status, body = call(app, "GET", "/health")
      return body.reasons and body.reasons[1]:find("failed", 1, true)
    end)
    assert.matches("^stuck is failed: no successful collection for %d+ s %(over 3 × 0 s%)$", body.reasons[1])
    local _, st = call(app, "GET", "/status")
    assert.equal("failed", st.collectors.stuck.status)
    assert.matches("^no successful collection for", st.collectors.stuck.status_reason)
    assert.is_true(st.collectors.stuck.run_in_flight_seconds > 0.1)
    assert.equal(1, probe.stuck.runs)
  end)

  it("spreads first runs at start-up and keeps the admin API answering", function()
    local N, RATE = 3000, 1000 -- a 3 s start window
    local dir = tmpdir()
    write(dir .. "/feed.lua", feed({ breaker = true, limiter = true }))
    local parts = { "return { store = '" .. dir .. "/db.sqlite', admin = { port = 0, insecure_loopback_mutations = true }, start_rate = "
      .. RATE .. ", collectors = {" }
    for i = 1, N do parts[#parts + 1] = ("{ file = 'feed.lua', name = 'c%d' },"):format(i) end
    parts[#parts + 1] = "} }"
    write(dir .. "/sluice.lua", table.concat(parts, "\n"))
    local t0 = sluice.now()
    local runner = sluice.spawn(function()
      return app_mod.run(assert(loadfile(dir .. "/sluice.lua"))(), dir .. "/sluice.lua")
    end)
    wait_for("the admin API", function() return app_mod.current and app_mod.current.admin end)
    local app = app_mod.current
    finally(function() stop(app) end)
    local answered_starting, slowest = 0, 0
    while app.starting do
      local s = sluice.now()
      local status, body = call(app, "GET", "/health")
      slowest = math.max(slowest, sluice.now() - s)
      assert.equal(200, status)
      if body.starting then answered_starting = answered_starting + 1 end
      assert.is_true(sluice.now() - t0 < 60, "start-up took over 60 s")
    end
    assert.is_true(sluice.wait(runner))
    assert.is_true(answered_starting >= 1)
    assert.is_true(slowest < 2, ("/health took %.2f s during start-up"):format(slowest))
    assert.equal(N, #app.order)
    -- first runs were scheduled uniformly over the window: each tenth of
    -- it holds 300 ± 150 of them (a uniform draw is 300 ± ~16)
    local lo = math.huge
    for _, c in ipairs(app.order) do lo = math.min(lo, c.first_due_) end
    local window = N / RATE
    local bins = {}
    for i = 1, 10 do bins[i] = 0 end
    for _, c in ipairs(app.order) do
      local off = c.first_due_ - lo
      assert.is_true(off >= 0 and off < window + 1, "offset " .. off)
      local b = math.min(10, math.floor(off / window * 10) + 1)
      bins[b] = bins[b] + 1
    end
    for i = 1, 10 do
      assert.is_true(bins[i] >= 150 and bins[i] <= 450, "bin " .. i .. ": " .. bins[i])
    end
    -- and they all ran, once each
    wait_for("every first run", function()
      for i = 1, N do
        if not probe["c" .. i] then return false end
      end
      return true
    end, 60)
    for i = 1, N do assert.equal(1, probe["c" .. i].runs) end
  end)

  it("refuses a reload that does not build, naming file:line, and keeps the running configuration", function()
    local dir = tmpdir()
    local file = dir .. "/sluice.lua"
    write(dir .. "/feed.lua", feed({ breaker = true, limiter = true }))
    write(dir .. "/zed.lua", feed())
    -- a is built before z: a failing z must not leave a's new breaker registered
    local CFG = [[return { store = "%DIR%/db.sqlite", collectors = {
      { file = "feed.lua", name = "a" }, { file = "zed.lua", name = "z" } } }]]
    local app = run(dir, CFG)
    local restore = function() end
    finally(function()
      restore()
      stop(app)
    end)
    wait_for("the first runs", function() return probe.a and probe.z and probe.a.runs == 1 and probe.z.runs == 1 end)
    local a, z, cb = app.collectors.a, app.collectors.z, app.collectors.a.breaker
    assert.equal(cb, breaker.get("a"))
    cb:force_open()
    restore = logs.capture("error")
    local problems = {}
    local function refused(want)
      assert.same({ nil, want }, { app_mod.reload() })
      problems[#problems + 1] = want
      -- the running configuration is untouched: the same instances,
      -- running, and a's breaker still the one registered by its name
      assert.same({ a, z, { a, z }, true, true, cb },
        { app.collectors.a, app.collectors.z, app.order, a.running, z.running, breaker.get("a") })
    end
    -- a collector file that does not parse
    write(dir .. "/zed.lua", "local collector = require 'sluice.collector'\nreturn collector.define({\n"
      .. "  name = 'feed',\n  interval 60,\n})\n")
    refused(file .. ": collectors[2].file: " .. dir .. "/zed.lua:4: '}' expected (to close '{' at line 2) near '60'")
    -- one that raises as it runs
    write(dir .. "/zed.lua", "local collector = require 'sluice.collector'\nlocal spec\nreturn spec.feed\n")
    refused(file .. ": collectors[2].file: " .. dir .. "/zed.lua:3: attempt to index local 'spec' (a nil value)")
    -- one that returns something else than a collector
    write(dir .. "/zed.lua", "return { name = 'feed' }\n")
    refused(file .. ": collectors[2].file: " .. dir .. "/zed.lua must return collector.define{...}")
    -- the configuration itself: does not parse, returns no table, moves the store
    write(dir .. "/zed.lua", feed())
    write(file, "return {\n  store = ,\n}\n")
    refused(file .. ":2: unexpected symbol near ','")
    write(file, "return 'sluice.lua'\n")
    refused(file .. ": must return a configuration table")
    rewrite(dir, CFG:gsub("db%.sqlite", "other.sqlite"))
    refused(file .. ": store: cannot change while running (restart to move the database)")
    -- each refusal logged once, with its error
    local refusals = logs.logged("reload refused")
    assert.equal(#problems, #refusals)
    for i, e in ipairs(refusals) do
      assert.same({ "error", problems[i], "reload()" }, { e.level, e.error, e.by })
    end
    assert.same({ 1, 1 }, { probe.a.runs, probe.z.runs }) -- no run came of them
    -- and once the files are right again, the reload goes through: new
    -- instances, a's with the old one's breaker state, and no extra run
    rewrite(dir, CFG)
    assert.same({ true }, { app_mod.reload() })
    assert.is_true(app.collectors.a ~= a and app.collectors.z ~= z)
    assert.same({ false, true, "open" }, { a.running, app.collectors.a.running, app.collectors.a.breaker:state() })
    assert.equal(app.collectors.a.breaker, breaker.get("a"))
    assert.same({ 1, 1 }, { probe.a.runs, probe.z.runs })
  end)

  it("fails to build or run a configuration with a broken collector file, naming file:line, and keeps nothing", function()
    local dir = tmpdir()
    local file = dir .. "/sluice.lua"
    local port = free_port()
    write(dir .. "/good.lua", feed())
    write(dir .. "/bad.lua", "local collector = require 'sluice.collector'\nlocal spec\nreturn spec.bad\n")
    write(file, ([[return { store = "%s/db.sqlite", admin = { port = %d },
      collectors = { { file = "good.lua", name = "g" }, { file = "bad.lua", name = "b" } } }]]):format(dir, port))
    local want = file .. ": collectors[2].file: " .. dir .. "/bad.lua:3: attempt to index local 'spec' (a nil value)"
    local running = {} -- as if a configuration were running
    app_mod.current = running
    finally(function() app_mod.current = nil end)
    assert.same({ false, want }, { pcall(app_mod.build, dofile(file), file) })
    assert.equal(running, app_mod.current)
    -- run() had started the admin API (it answers during start-up): it is
    -- closed again, its port free
    assert.same({ false, want }, { pcall(app_mod.run, dofile(file), file) })
    assert.equal(running, app_mod.current)
    local again = assert(require("sluice.server").listen({ host = "127.0.0.1", port = port }))
    again:close()
    assert.is_nil(probe.g) -- nothing ran
  end)

  it("first_delays: each enabled collector at a uniform offset in n / start_rate s, capped by its interval", function()
    local a, off, b, c = { enabled = true, interval = 60 }, { enabled = false, interval = 60 },
      { enabled = true, interval = 0.5 }, { enabled = true, interval = 3600 }
    finally(function() math.randomseed(os.time() + sluice.now() * 1e6) end)
    math.randomseed(15)
    local r = { math.random(), math.random(), math.random() }
    -- 3 enabled collectors at 1 a second: a 3 s window (b's interval is shorter)
    math.randomseed(15)
    assert.same({ [a] = r[1] * 3, [b] = r[2] * 0.5, [c] = r[3] * 3 }, app_mod.first_delays({ a, off, b, c }, 1))
    -- at 1000 a second: 3 ms
    math.randomseed(15)
    assert.same({ [a] = r[1] * 0.003, [b] = r[2] * 0.003, [c] = r[3] * 0.003 },
      app_mod.first_delays({ a, off, b, c }, 1000))
    assert.same({}, app_mod.first_delays({ off }, 100))
    assert.same({}, app_mod.first_delays({}, 100))
  end)

  it("adds the configured sinks to every collector, and once to each new instance at a reload", function()
    local srv = require("support.redis_server").start()
    local red
    local app
    finally(function()
      if red then red:close() end
      if app then
        stop(app)
        app.shared:stop()
      end
      srv:stop(true, true)
    end)
    local dir = tmpdir()
    write(dir .. "/rows.lua", ROWS)
    app = run(dir, [[return { store = "%DIR%/db.sqlite", redis = "]] .. srv:url(0) .. [[",
      sinks = { redis_stream = { stream = "spec:{table}", maxlen = 100 } },
      collectors = { { file = "rows.lua", name = "r1" }, { file = "rows.lua", name = "r2" } } }]])
    red = require("sluice.redis").connect({ url = srv:url(0) })
    local function entries()
      local out = {}
      for i, e in ipairs(red:call("XRANGE", "spec:ticks", "-", "+")) do out[i] = table.concat(e[2], " ") end
      table.sort(out)
      return out
    end
    wait_for("both first runs", function() return probe.r1 == 1 and probe.r2 == 1 end)
    wait_for("both rows in the stream", function() return #entries() == 2 end)
    assert.same({ "n 1 src r1", "n 1 src r2" }, entries())
    for _ = 1, 3 do assert(app_mod.reload()) end
    assert.same({ true, 1 }, { app.collectors.r1:run_once() })
    assert.same({ true, 1 }, { app.collectors.r2:run_once() })
    -- queued in the outbox with the rows, forwarded by its task (each row once: one route a collector)
    wait_for("the new rows in the stream", function() return #entries() == 4 end)
    assert.same({ "n 1 src r1", "n 1 src r2", "n 2 src r1", "n 2 src r2" }, entries())
    assert.equal(0, app.outbox:status().redis_stream.depth)
  end)
end)
