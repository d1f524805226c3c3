-- sluice.collector.upstreams: collectors naming one upstream share one
-- limiter and one breaker (a 429 to one backs off all, a breaker opened by
-- one refuses the others), shown once under the upstream's name; a reload
-- keeps their state; settings that differ are a load error naming both.
local sluice = require "sluice"
local server = require "sluice.server"
local collector = require "sluice.collector"
local upstreams = require "sluice.collector.upstreams"
local breaker = require "sluice.breaker"
local limiter = require "sluice.limiter"
local operator = require "sluice.operator"
local log = require "sluice.log"
local files = require "support.files"

-- An upstream answering what its queue says ({status, body}), else 200.
local function upstream()
  local u = { hits = 0, queue = {} }
  u.srv = assert(server.listen({ host = "127.0.0.1", port = 0 }))
  u.url = "http://127.0.0.1:" .. u.srv.port
  u.srv:route("*", "/*", function()
    u.hits = u.hits + 1
    local a = table.remove(u.queue, 1)
    if a then return a[1], a[2] end
    return 200, { ok = true }
  end)
  return u
end

local FEED = [[
local collector = require "sluice.collector"
return collector.define({ name = "feed", base_url = %q, interval = 3600, retry = false,
  limiter = { rate = 50, burst = 50 }, breaker = { failure_threshold = 2, timeout = 600 },
  collect = function() return {} end })
]]

local function sample(text, series)
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, #series + 1) == series .. " " then return tonumber(line:sub(#series + 2)) end
  end
end

local function count(text, prefix)
  local n = 0
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, #prefix) == prefix then n = n + 1 end
  end
  return n
end

describe("collectors sharing an upstream", function()
  local up, dir, app_mod
  setup(function()
    log.output("/dev/null")
    app_mod = require "sluice.app"
  end)
  teardown(function()
    log.output("-")
    files.cleanup()
  end)
  before_each(function()
    up = upstream()
    dir = files.tmpdir()
    files.write(dir .. "/feed.lua", FEED:format(up.url))
  end)
  after_each(function() up.srv:close() end)

  -- Builds the configuration text cfg (%DIR% is dir); returns the app.
  local function build(cfg)
    files.write(dir .. "/sluice.lua", (cfg:gsub("%%DIR%%", dir)))
    local app = app_mod.build(assert(loadfile(dir .. "/sluice.lua"))(), dir .. "/sluice.lua")
    finally(function()
      for _, c in ipairs(app.order) do c:stop() end
      app.store:close()
      app_mod.current = nil
    end)
    return app
  end

  local SHARED = [[return { store = "%DIR%/db.sqlite", collectors = {
    { file = "feed.lua", name = "tickers", upstream = "exch" },
    { file = "feed.lua", name = "books", upstream = "exch" },
    { file = "feed.lua", name = "alone" } } }]]

  it("share one limiter: a 429 to one backs the other off", function()
    local app = build(SHARED)
    local a, b = app.collectors.tickers, app.collectors.books
    assert.is_true(rawequal(a.limiter, b.limiter))
    assert.is_true(rawequal(a.breaker, b.breaker))
    assert.equal("exch", a.limiter:name())
    assert.equal("exch", a.breaker:name())
    assert.is_false(rawequal(a.limiter, app.collectors.alone.limiter))
    up.queue = { { 429, "slow down" } }
    local data, err, kind = a:get("/t")
    assert.same({ nil, "HTTP 429", "throttled" }, { data, err, kind })
    -- the other collector's limiter has backed off: half the rate, twice the backoff
    local s = b.limiter:stats()
    assert.equal(1, s.total_violations)
    assert.is_true(s.current_global_rate < 26, tostring(s.current_global_rate))
    assert.equal(2, b.limiter:metrics().backoff_multiplier)
    assert.equal(50, app.collectors.alone.limiter:stats().current_global_rate)
    assert.same({ ok = true }, (b:get("/b")))
    assert.equal(2, b.limiter:stats().total_requests)
  end)

  it("share one breaker: opened by one, it refuses the other", function()
    local app = build(SHARED)
    local a, b = app.collectors.tickers, app.collectors.books
    up.queue = { { 500, "down" }, { 500, "down" } }
    a:get("/t"); a:get("/t")
    assert.equal("open", b.breaker:state())
    local hits = up.hits
    assert.same({ nil, "circuit breaker exch is open", "circuit_open" }, { b:get("/b") })
    assert.equal(hits, up.hits)
    assert.equal("circuit_open", b:health())
    assert.equal("healthy", app.collectors.alone:health())
    -- listed once, under the upstream's name: operator views and /metrics
    local ops = operator.new({ current = function() return app end })
    local names = {}
    for name in pairs(ops:breakers()) do names[#names + 1] = name end
    table.sort(names)
    assert.same({ "alone", "exch" }, names)
    names = {}
    for name in pairs(ops:limiters()) do names[#names + 1] = name end
    table.sort(names)
    assert.same({ "alone", "exch" }, names)
    local text = require("sluice.metrics").render()
    assert.equal(1, sample(text, 'sluice_breaker_state{breaker="exch",state="open"}'))
    assert.equal(2, sample(text, 'sluice_breaker_failures_total{breaker="exch"}'))
    assert.equal(3, count(text, 'sluice_breaker_state{breaker="exch"'))
    assert.equal(0, count(text, 'sluice_breaker_state{breaker="tickers"'))
    assert.equal(0, count(text, 'sluice_limiter_rate{limiter="books"'))
  end)

  it("keeps the shared state across a reload, and lets go of an upstream no collector names", function()
    local app = build(SHARED)
    up.queue = { { 500, "down" }, { 500, "down" }, { 429, "slow" } }
    app.collectors.tickers:get("/t"); app.collectors.tickers:get("/t")
    assert.equal("open", app.collectors.books.breaker:state())
    app.collectors.alone:get("/x") -- (the alone collector's own 429)
    local old = app.collectors.tickers.limiter
    old:observe("/t", 429, {}, 0.01) -- the upstream's limiter backs off
    local weak = setmetatable({ old = old, cb = app.collectors.tickers.breaker }, { __mode = "v" })
    old = nil -- luacheck: ignore
    assert(app_mod.reload())
    -- (in a function: a dead local's register would keep them alive)
    local function check()
      local a, b = app.collectors.tickers, app.collectors.books
      assert.is_true(rawequal(a.breaker, b.breaker))
      assert.is_true(rawequal(a.limiter, b.limiter))
      assert.is_false(rawequal(a.breaker, weak.cb))
      assert.equal("open", b.breaker:state())
      assert.equal(1, b.limiter:stats().total_violations)
      assert.equal(1, app.collectors.alone.limiter:stats().total_violations)
      assert.equal(breaker.get("exch"), a.breaker)
      assert.equal(limiter.get("exch"), a.limiter)
    end
    check()
    -- the old upstream objects are freed once no collector uses them
    collectgarbage(); collectgarbage()
    assert.is_nil(weak.old)
    assert.is_nil(weak.cb)
    -- a reload where nobody names the upstream: its objects go
    files.write(dir .. "/sluice.lua", (([[return { store = "%DIR%/db.sqlite", collectors = {
      { file = "feed.lua", name = "tickers" }, { file = "feed.lua", name = "books" } } }]]):gsub("%%DIR%%", dir)))
    local function remember() weak.cb = app.collectors.tickers.breaker end
    remember()
    assert(app_mod.reload())
    assert.same({}, app.upstreams:names())
    assert.is_false(rawequal(app.collectors.tickers.breaker, app.collectors.books.breaker))
    -- a collector leaving an upstream does not take its state along
    assert.equal("closed", app.collectors.tickers.breaker:state())
    -- (the on_change task of the restore at the first reload, queued with
    -- the breaker as its argument, runs at the next turn of the loop)
    require("support.wait").wait_for("the queued tasks", function() return sluice.tasks().ready == 0 end)
    collectgarbage(); collectgarbage()
    assert.is_nil(weak.cb)
    assert.is_nil(breaker.get("exch"))
  end)

  it("refuses settings that differ for one upstream, naming both collectors", function()
    local CFG = [[return { store = "%DIR%/db.sqlite", collectors = {
      { file = "feed.lua", name = "tickers", upstream = "exch", limiter = { rate = 5 } },
      { file = "feed.lua", name = "books", upstream = "exch", limiter = { rate = 10 } } } }]]
    files.write(dir .. "/sluice.lua", (CFG:gsub("%%DIR%%", dir)))
    local file = dir .. "/sluice.lua"
    local ok, err = pcall(app_mod.build, assert(loadfile(file))(), file)
    assert.is_false(ok)
    assert.equal(file .. ": collectors[2]: collectors 'tickers' and 'books' share upstream 'exch' but set its "
      .. "limiter differently (limiter.rate: 5 vs 10): give both the same limiter settings", err)
    assert.is_nil(app_mod.current)
    -- false against a table is a difference too
    CFG = CFG:gsub("limiter = { rate = 5 }", "breaker = false"):gsub("limiter = { rate = 10 }", "")
    files.write(file, (CFG:gsub("%%DIR%%", dir)))
    ok, err = pcall(app_mod.build, assert(loadfile(file))(), file)
    assert.is_false(ok)
    assert.matches("collectors 'tickers' and 'books' share upstream 'exch' but set its breaker differently "
      .. "(breaker: false vs table)", err, 1, true)
    -- an upstream named as a collector outside it
    CFG = [[return { store = "%DIR%/db.sqlite", collectors = {
      { file = "feed.lua", name = "exch" }, { file = "feed.lua", name = "books", upstream = "exch" } } }]]
    files.write(file, (CFG:gsub("%%DIR%%", dir)))
    ok, err = pcall(app_mod.build, assert(loadfile(file))(), file)
    assert.is_false(ok)
    assert.equal(file .. ": collectors[2]: the name 'exch' is both collector 'exch' and upstream 'exch': "
      .. "breakers and limiters are listed by name (rename one)", err)
    -- a reload with differing settings is refused, the running set kept
    local app = build(SHARED)
    local cb = app.collectors.tickers.breaker
    files.write(file, (([[return { store = "%DIR%/db.sqlite", collectors = {
      { file = "feed.lua", name = "tickers", upstream = "exch", breaker = { timeout = 5 } },
      { file = "feed.lua", name = "books", upstream = "exch" } } }]]):gsub("%%DIR%%", dir)))
    local rok, rerr = app_mod.reload()
    assert.is_nil(rok)
    -- (an entry's breaker replaces the file's: failure_threshold is unset in one)
    assert.matches("share upstream 'exch' but set its breaker differently (breaker.failure_threshold: nil vs 2)",
      rerr, 1, true)
    assert.equal(cb, app.collectors.tickers.breaker)
    assert.equal(cb, breaker.get("exch"))
  end)

  it("without a registry, a collector has nothing to share with: its own, named after the upstream", function()
    local spec = assert(loadfile(dir .. "/feed.lua"))()
    local a = collector.new(spec, { name = "x", upstream = "solo" })
    assert.equal("solo", a.breaker:name())
    local reg = upstreams.new()
    local b = collector.new(spec, { name = "y", upstream = "pair" }, { upstreams = reg })
    local c = collector.new(spec, { name = "z", upstream = "pair" }, { upstreams = reg })
    assert.is_true(rawequal(b.limiter, c.limiter))
    assert.same({ "pair" }, reg:names())
    assert.has_error(function() collector.new(spec, { name = "w", upstream = "a b" }) end)
    assert.has_error(function()
      collector.new(spec, { name = "v", upstream = "pair", limiter = { name = "other" } }, { upstreams = reg })
    end, "collector 'v': limiter.name: the limiter of upstream 'pair' is named after it (remove name = 'other')")
    assert.is_true(sluice.now() > 0)
  end)
end)
