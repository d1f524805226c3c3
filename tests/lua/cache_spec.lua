-- sluice.collector.cache: self:get(path, { cache = seconds }) through the
-- response cache, against a sluice.server on loopback that counts the
-- requests it answers: hits send nothing, expiry, single flight (and tasks
-- killed while in it), the byte bound (LRU), failures not kept, hits that
-- cannot corrupt each other, the key (auth), and the /metrics families.
local sluice = require "sluice"
local server = require "sluice.server"
local collector = require "sluice.collector"
local cache = require "sluice.collector.cache"
local log = require "sluice.log"
local wait_for = require("support.wait").wait_for
local files = require "support.files"

-- An upstream: answers {n = its request count, path, list = {1, 2, 3}},
-- or what the queue says ({status, body}); requests for /slow* park until
-- release() while hold is set.
local function upstream()
  local u = { hits = 0, queue = {}, held = {}, hold = false, auths = {} }
  u.srv = assert(server.listen({ host = "127.0.0.1", port = 0 }))
  u.url = "http://127.0.0.1:" .. u.srv.port
  u.srv:route("*", "/*", function(req)
    u.hits = u.hits + 1
    u.auths[#u.auths + 1] = req.headers["x-key"]
    if u.hold and req.path:match("^/slow") then
      u.held[#u.held + 1] = sluice.current()
      sluice.park(30)
    end
    local a = table.remove(u.queue, 1)
    if a then return a[1], a[2] end
    return 200, { n = u.hits, path = req.path, list = { 1, 2, 3 }, pad = req.query.pad }
  end)
  function u:release()
    self.hold = false
    local held = self.held
    self.held = {}
    for _, t in ipairs(held) do sluice.unpark(t) end
  end
  return u
end

local function feed(base_url, overrides)
  local s = {
    name = "cache_feed", base_url = base_url, interval = 3600, retry = false,
    limiter = { rate = 100, burst = 100 }, breaker = { failure_threshold = 5 },
    collect = function() return {} end,
  }
  for k, v in pairs(overrides or {}) do s[k] = v end
  return collector.define(s)
end

describe("sluice.collector response cache", function()
  local up
  setup(function() log.output("/dev/null") end)
  teardown(function()
    log.output("-")
    files.cleanup()
  end)
  before_each(function() up = upstream() end)
  after_each(function()
    up:release()
    up.srv:close()
  end)

  it("answers a repeated request within its TTL from memory: no request, no token, no permit", function()
    local store = cache.new()
    local c = collector.new(feed(up.url), {}, { cache = store })
    local a, ra = c:get("/v1/ticker", { query = { symbol = "BTC" }, cache = 60 })
    local b, rb = c:get("/v1/ticker", { query = { symbol = "BTC" }, cache = 60 })
    assert.equal(1, up.hits)
    assert.same({ n = 1, path = "/v1/ticker", list = { 1, 2, 3 } }, a)
    assert.same(a, b)
    assert.is_nil(ra.cached)
    assert.is_true(rb.cached)
    assert.equal(200, rb.status)
    assert.equal("application/json", rb.headers["Content-Type"]:match("^[^;]+"))
    assert.same(b, rb:json())
    -- the hit took no limiter token and no breaker permit, and counts as
    -- no request of the collector
    assert.equal(1, c.limiter:stats().total_requests)
    assert.equal(1, c.breaker:status().statistics.total_successes)
    assert.equal(1, c:stats().total_requests)
    -- another query is another request
    c:get("/v1/ticker", { query = { symbol = "ETH" }, cache = 60 })
    assert.equal(2, up.hits)
    -- without cache, always the network
    c:get("/v1/ticker", { query = { symbol = "BTC" } })
    assert.equal(3, up.hits)
    local st = store:stats()
    assert.same({ 1, 2, 2 }, { st.hits, st.misses, st.entries })
    -- an open breaker refuses requests, not answers kept in memory
    c.breaker:force_open()
    assert.same(a, (c:get("/v1/ticker", { query = { symbol = "BTC" }, cache = 60 })))
    assert.equal(3, up.hits)
  end)

  it("goes to the network again once the answer is older than the TTL, and frees it", function()
    local store = cache.new()
    local c = collector.new(feed(up.url), {}, { cache = store })
    local t0 = sluice.now()
    assert.equal(1, c:get("/v1/x", { cache = 0.2 }).n)
    assert.equal(1, c:get("/v1/x", { cache = 0.2 }).n)
    -- a request wanting fresher answers than the kept one is a miss
    wait_for("the answer to be 0.1 s old", function() return sluice.now() - t0 > 0.1 end)
    assert.equal(2, c:get("/v1/x", { cache = 0.05 }).n)
    local t1 = sluice.now()
    wait_for("the answer to expire", function() return sluice.now() - t1 > 0.25 end)
    local st = store:stats()
    assert.same({ 0, 0, 1 }, { st.entries, st.bytes, st.expirations })
    assert.equal(3, c:get("/v1/x", { cache = 0.2 }).n)
    assert.equal(3, up.hits)
    st = store:stats()
    assert.same({ 1, 3, 1 }, { st.hits, st.misses, st.entries })
  end)

  it("sends concurrent identical misses to the network once (single flight)", function()
    local store = cache.new()
    local c = collector.new(feed(up.url), {}, { cache = store })
    up.hold = true
    local tasks, results = {}, {}
    for i = 1, 5 do
      tasks[i] = sluice.spawn(function()
        local data, res = c:get("/slow", { cache = 60 })
        results[i] = { data = data, cached = res and res.cached }
      end)
    end
    wait_for("the first request to arrive", function() return #up.held == 1 end)
    sluice.sleep(0) -- (the others are parked by now; nothing else may arrive)
    assert.equal(1, store:stats().in_flight)
    up:release()
    for i = 1, 5 do assert.is_true((sluice.wait(tasks[i]))) end
    assert.equal(1, up.hits)
    local cached = 0
    for i = 1, 5 do
      assert.same({ n = 1, path = "/slow", list = { 1, 2, 3 } }, results[i].data)
      if results[i].cached then cached = cached + 1 end
      for j = i + 1, 5 do assert.is_false(rawequal(results[i].data, results[j].data)) end
    end
    assert.equal(4, cached)
    local st = store:stats()
    assert.same({ 4, 1, 0 }, { st.hits, st.misses, st.in_flight })
  end)

  it("leaves nothing behind when a waiting task is killed, and a killed leader's waiter takes over", function()
    local store = cache.new()
    local c = collector.new(feed(up.url), {}, { cache = store })
    up.hold = true
    local leader = sluice.spawn(function() return c:get("/slow/a", { cache = 60 }) end)
    wait_for("the leader's request", function() return #up.held == 1 end)
    local waiter = sluice.spawn(function() return c:get("/slow/a", { cache = 60 }) end)
    wait_for("the waiter to park", function() return sluice.status(waiter) == "waiting" end)
    assert.is_true(sluice.kill(waiter))
    up:release()
    local ok, data = sluice.wait(leader)
    assert.is_true(ok)
    assert.equal(1, data.n)
    assert.equal("killed", sluice.status(waiter))
    local st = store:stats()
    assert.same({ 0, 1, 0, 1 }, { st.hits, st.misses, st.in_flight, st.entries })

    -- the leader killed: its waiter notices and asks the network itself
    up.hold = true
    local leader2 = sluice.spawn(function() return c:get("/slow/b", { cache = 60 }) end)
    wait_for("the second leader's request", function() return #up.held == 1 end)
    local waiter2 = sluice.spawn(function() return c:get("/slow/b", { cache = 60 }) end)
    wait_for("the second waiter to park", function() return sluice.status(waiter2) == "waiting" end)
    up.hold = false
    assert.is_true(sluice.kill(leader2))
    local ok2, data2, res2 = sluice.wait(waiter2)
    assert.is_true(ok2)
    assert.equal(3, data2.n) -- the second request to /slow/b: the 3rd the server saw
    assert.is_nil(res2.cached)
    up:release()
    st = store:stats()
    assert.same({ 0, 2, 0, 2 }, { st.hits, st.misses, st.in_flight, st.entries })
  end)

  it("stays within max_bytes, evicting the least recently used answer", function()
    local pad = string.rep("x", 1000)
    local store = cache.new({ max_bytes = 1 })
    local c = collector.new(feed(up.url), {}, { cache = store })
    -- one answer's size, measured
    c:get("/size", { query = { pad = pad }, cache = 60 })
    assert.same({ 0, 0 }, { store:stats().entries, store:stats().bytes }) -- too big: not kept
    store:resize(100000)
    c:get("/size", { query = { pad = pad }, cache = 60 })
    local one = store:stats().bytes
    assert.is_true(one > 1000 and one < 1400, tostring(one))
    store:clear()
    -- room for two answers, not three
    store:resize(2 * one + 50)
    local function get(path) return c:get(path, { query = { pad = pad }, cache = 60 }) end
    get("/a"); get("/b")
    local hits = up.hits
    get("/a") -- a hit: /a is now the most recently used
    assert.equal(hits, up.hits)
    get("/c") -- evicts /b
    assert.equal(hits + 1, up.hits)
    local st = store:stats()
    assert.same({ 2, 1 }, { st.entries, st.evictions })
    assert.is_true(st.bytes <= st.max_bytes)
    get("/a"); get("/c")
    assert.equal(hits + 1, up.hits)
    get("/b")
    assert.equal(hits + 2, up.hits)
    assert.equal(2, store:stats().evictions)
  end)

  it("keeps only successes: an HTTP failure or a classify failure goes to the network again", function()
    local store = cache.new()
    local c = collector.new(feed(up.url, {
      classify = function(_, res)
        local body = res:json()
        if type(body) == "table" and body.error then return "failure", "api error" end
      end,
    }), {}, { cache = store })
    up.queue = { { 500, "down" }, { 200, { error = "busy" } } }
    local data, err, kind = c:get("/f", { cache = 60 })
    assert.same({ nil, "HTTP 500", "failure" }, { data, err, kind })
    data, err = c:get("/f", { cache = 60 })
    assert.same({ nil, "api error" }, { data, err })
    assert.equal(3, c:get("/f", { cache = 60 }).n)
    assert.equal(3, c:get("/f", { cache = 60 }).n)
    assert.equal(3, up.hits)
    local st = store:stats()
    assert.same({ 1, 3, 1 }, { st.hits, st.misses, st.entries })
  end)

  it("decodes every hit afresh: changing a result does not change the next", function()
    local store = cache.new()
    local c = collector.new(feed(up.url), {}, { cache = store })
    local first = c:get("/m", { cache = 60 })
    first.list[1] = 99
    first.n = "changed"
    local second = c:get("/m", { cache = 60 })
    assert.same({ n = 1, path = "/m", list = { 1, 2, 3 } }, second)
    second.list[2] = 42
    local _, res = c:get("/m", { cache = 60 })
    assert.same({ n = 1, path = "/m", list = { 1, 2, 3 } }, res:json())
    res.headers["content-type"] = "text/plain"
    assert.equal("application/json", select(2, c:get("/m", { cache = 60 })).headers["content-type"]:match("^[^;]+"))
    assert.equal(1, up.hits)
  end)

  it("keys on the credentials: collectors with different keys never share an answer", function()
    local store = cache.new()
    local function keyed(name, key)
      return collector.new(feed(up.url, { name = name, auth = { header = "X-Key", value = key } }), {},
        { cache = store })
    end
    local a, b, a2 = keyed("ka", "alpha"), keyed("kb", "beta"), keyed("ka2", "alpha")
    assert.equal(1, a:get("/private", { cache = 60 }).n)
    assert.equal(2, b:get("/private", { cache = 60 }).n)
    assert.equal(1, a2:get("/private", { cache = 60 }).n) -- same request, same key: shared
    assert.same({ "alpha", "beta" }, up.auths)
  end)

  it("is the app's, one for its collectors, kept across a reload, and in /metrics", function()
    local app_mod = require "sluice.app"
    local metrics = require "sluice.metrics"
    local dir = files.tmpdir()
    files.write(dir .. "/feed.lua", ([[
local collector = require "sluice.collector"
return collector.define({ name = "feed", base_url = %q, interval = 3600, retry = false,
  collect = function() return {} end })
]]):format(up.url))
    local CFG = [[return { store = "%s/db.sqlite", cache = { max_bytes = %d },
      collectors = { { file = "feed.lua", name = "one" }, { file = "feed.lua", name = "two" } } }]]
    files.write(dir .. "/sluice.lua", CFG:format(dir, 100000))
    local app = app_mod.build(assert(loadfile(dir .. "/sluice.lua"))(), dir .. "/sluice.lua")
    finally(function()
      for _, c in ipairs(app.order) do c:stop() end
      app.store:close()
      app_mod.current = nil
    end)
    assert.equal(app.cache, app.collectors.one.cache)
    assert.equal(app.cache, app.collectors.two.cache)
    app.collectors.one:get("/shared", { cache = 60 })
    app.collectors.two:get("/shared", { cache = 60 }) -- the other collector's answer
    app.collectors.two:get("/other", { cache = 60 })
    assert.equal(2, up.hits)
    local st = app.cache:stats()
    local function sample(text, series)
      for line in text:gmatch("[^\n]+") do
        if line:sub(1, #series + 1) == series .. " " then return tonumber(line:sub(#series + 2)) end
      end
    end
    local text = metrics.render()
    assert.equal(1, sample(text, "sluice_cache_hits_total"))
    assert.equal(2, sample(text, "sluice_cache_misses_total"))
    assert.equal(0, sample(text, "sluice_cache_evictions_total"))
    assert.equal(0, sample(text, "sluice_cache_expirations_total"))
    assert.equal(2, sample(text, "sluice_cache_entries"))
    assert.equal(st.bytes, sample(text, "sluice_cache_bytes"))
    assert.equal(100000, sample(text, "sluice_cache_max_bytes"))
    -- a reload keeps the answers, with the new bound: one answer fits
    files.write(dir .. "/sluice.lua", CFG:format(dir, math.floor(st.bytes / 2) + 10))
    assert(app_mod.reload())
    assert.equal(app.cache, app.collectors.one.cache)
    text = metrics.render()
    assert.equal(1, sample(text, "sluice_cache_entries"))
    assert.equal(1, sample(text, "sluice_cache_evictions_total"))
    app.collectors.one:get("/other", { cache = 60 }) -- the most recently used one stayed
    assert.equal(2, up.hits)
    assert.equal(2, sample(metrics.render(), "sluice_cache_hits_total"))
  end)

  it("refuses a cache setting that is not a byte count", function()
    local config = require "sluice.config"
    assert.has_error(function() config.prepare({ cache = { max_bytes = -1 } }, "c.lua", { env = {} }) end)
    assert.has_error(function() config.prepare({ cache = { size = 1 } }, "c.lua", { env = {} }) end,
      "c.lua: cache.size: unknown setting")
    assert.has_error(function() cache.new({ max_bytes = 1.5 }) end)
    local c = collector.new(feed(up.url), {}, { cache = cache.new() })
    assert.has_error(function() c:get("/x", { cache = true }) end,
      "collector:request: option 'cache' must be seconds (a finite number > 0), got true")
    assert.equal(0, up.hits)
  end)
end)
