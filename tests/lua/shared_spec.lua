-- sluice.shared: leases through the collector's run guard (one instance
-- runs a collector, the other stands by; a lease is given up only when
-- the run in flight has ended, and then taken over), owner(), the Redis
-- Streams sink, the state sync at attach and detach (the newer breaker
-- state, limiter snapshots), and the degraded mode while Redis is away,
-- against a private redis-server on a loopback port. (Breaker transitions
-- announced on pub/sub are shared_breaker_spec's.) Two instances are two
-- shared objects with their own connections in this process, each with
-- its own instance of the same collector.
local sluice = require "sluice"
local cjson = require "cjson"
local redis = require "sluice.redis"
local collector = require "sluice.collector"
local shared = require "sluice.shared"
local log = require "sluice.log"

local redis_server = require "support.redis_server"
local wait_for = require("support.wait").wait_for
local logs = require "support.logs"
local logged = logs.logged

describe("sluice.shared", function()
  local srv, red
  local made = {}

  setup(function()
    log.output("/dev/null")
    srv = redis_server.start()
    red = redis.connect { url = srv:url() }
  end)

  teardown(function()
    if red then red:close() end
    if srv then srv:stop(false, true) end
    log.output("-")
  end)

  after_each(function()
    for _, x in ipairs(made) do x.sh:stop() end
    made = {}
    red:call("FLUSHDB")
  end)

  -- One instance: its own shared object and its own instance of the
  -- collector lease_feed, whose runs park while hold.parked is set.
  local function instance(tag, hold)
    local x = { runs = 0 }
    local spec = collector.define({
      name = "lease_feed", interval = 3600, limiter = false, breaker = false, retry = false,
      collect = function()
        x.runs = x.runs + 1
        if hold and hold.on then
          hold.parked = sluice.current()
          sluice.park()
        end
        return {}
      end,
    })
    x.c = collector.new(spec)
    x.sh = shared.new(redis.connect { url = srv:url() })
    x.tag = tag
    x.sh:attach(x.c)
    made[#made + 1] = x
    return x
  end

  local function holder()
    return red:call("GET", "lease:collector:lease_feed")
  end

  it("runs a collector in the instance holding its lease; the other stands by", function()
    local a = instance("a")
    a.sh:leases(2)
    assert.equal(a.sh.id, holder())
    local b = instance("b")
    b.sh:leases(2)
    assert.equal(a.sh.id, holder())
    assert.same({ true, 0 }, { a.c:run_once() })
    assert.same({ true, 0 }, { b.c:run_once() })
    assert.same({ 1, 0 }, { a.runs, b.runs })
    assert.equal(a.sh.id, holder())
    assert.equal(a.sh, shared.owner(a.c))
    assert.equal(b.sh, shared.owner(b.c))
  end)

  it("gives a lease up only once the run in flight has ended, and the other takes it over", function()
    local hold = { on = true }
    local a = instance("a", hold)
    a.sh:leases(2)
    local b = instance("b")
    b.sh:leases(2)
    b.c:start({ first_delay = 3600 }) -- running (a takeover collects at once), no run of its own yet
    finally(function() b.c:stop() end)
    local run = sluice.spawn(function() return a.c:run_once() end)
    wait_for("a's run", function() return hold.parked ~= nil end)
    local t0, ttl0 = sluice.now(), red:call("PTTL", "lease:collector:lease_feed")
    a.sh:detach(a.c)
    assert.is_nil(shared.owner(a.c))
    -- still a's while its run is in flight, whatever b asks: the release
    -- looks every 0.05 s and renews the lease every ttl/3 meanwhile (its
    -- TTL then stands well above what it would be untouched)
    wait_for("a's release renewing the lease", function()
      local ttl = red:call("PTTL", "lease:collector:lease_feed") -- (-2: gone)
      return ttl > 0 and ttl > ttl0 - (sluice.now() - t0) * 1000 + 300
    end)
    b.sh:renew(b.c)
    assert.equal(a.sh.id, holder())
    assert.equal(0, b.runs)
    hold.on = false
    sluice.unpark(hold.parked)
    assert.same({ true, true, 0 }, { sluice.wait(run) })
    wait_for("a's release", function() return holder() == nil end)
    b.sh:renew(b.c)
    assert.equal(b.sh.id, holder())
    wait_for("b's collection on takeover", function() return b.runs == 1 end)
    assert.same({ 1, 1 }, { a.runs, b.runs })
  end)

  it("keeps a lease at detach when a collector of that name is attached again (a reload)", function()
    local hold = { on = true }
    local a = instance("a", hold)
    a.sh:leases(2)
    local waiting = sluice.tasks().waiting
    local run = sluice.spawn(function() return a.c:run_once() end)
    wait_for("a's run", function() return hold.parked ~= nil end)
    local replacement = collector.new(collector.define({ name = "lease_feed", limiter = false, breaker = false,
      retry = false, collect = function() return {} end }))
    a.sh:detach(a.c)
    a.sh:attach(replacement)
    a.sh:renew(replacement)
    hold.on = false
    sluice.unpark(hold.parked)
    assert.same({ true, true, 0 }, { sluice.wait(run) })
    -- the old instance's release (a task of its own, waiting in steps of
    -- 0.05 s while the run was in flight) has looked and ended: no more
    -- tasks wait than before the run
    wait_for("the old instance's release to end", function() return sluice.tasks().waiting <= waiting end)
    assert.equal(a.sh.id, holder())
    assert.same({ true, 0 }, { replacement:run_once() })
  end)

  it("appends committed rows to a stream, fields flattened", function()
    local x = instance("a")
    local sink = x.sh:stream_sink({ stream = "spec:{table}", maxlen = 100 })
    assert.is_true(sink:publish("ticks", { { id = 1, v = 1.5, tags = { "x" } }, { id = 2, v = 2.5 } }))
    assert.is_true(sink:publish("ticks", {}))
    local entries = red:call("XRANGE", "spec:ticks", "-", "+")
    assert.equal(2, #entries)
    assert.same({ "id", "1", "tags", '["x"]', "v", "1.5" }, entries[1][2])
    assert.same({ "id", "2", "v", "2.5" }, entries[2][2])
    assert.is_false(x.sh:degraded())
  end)

  it("publishes numbers exactly: the text reads back as the same double", function()
    local x = instance("a")
    local sink = x.sh:stream_sink({ stream = "spec:{table}" })
    assert.is_true(sink:publish("ticks", { {
      price = 0.12345678901234568, ts = 1732291234.567891, big = 2 ^ 53 + 2, ok = true,
      doc = { p = 0.1 + 0.2, n = 1e21 },
    } }))
    local entries = red:call("XRANGE", "spec:ticks", "-", "+")
    assert.same({ "big", "9007199254740994", "doc", '{"n":1e+21,"p":0.30000000000000004}',
      "ok", "true", "price", "0.12345678901234568", "ts", "1732291234.567891" }, entries[1][2])
  end)

  it("takes the newer of its local and the shared breaker state at attach", function()
    local spec = collector.define({ name = "lease_feed", interval = 3600, limiter = false, retry = false,
      collect = function() return {} end })
    local function instance_cb()
      local x = { c = collector.new(spec), sh = shared.new(redis.connect { url = srv:url() }) }
      x.sh:attach(x.c)
      made[#made + 1] = x
      return x
    end
    -- b's breaker predates a's opening, c's does not
    local b = instance_cb()
    local a = instance_cb()
    a.c.breaker:force_open()
    wait_for("a's open breaker in Redis", function()
      local doc = red:call("GET", "cb_state:lease_feed")
      return doc and cjson.decode(doc).snapshot.state == "open"
    end)
    local doc = cjson.decode(red:call("GET", "cb_state:lease_feed"))
    assert.same({ a.sh.id, "lease_feed", 1 }, { doc.by, doc.snapshot.name, doc.snapshot.statistics.circuit_opens })
    local ttl = red:call("TTL", "cb_state:lease_feed")
    assert.is_true(ttl > 86390 and ttl <= 86400, "TTL " .. ttl)
    local c = instance_cb() -- attached with a breaker newer than the shared state
    assert.same({ "closed", "closed" }, { b.c.breaker:state(), c.c.breaker:state() })
    b.sh:detach(b.c)
    b.sh:attach(b.c) -- attached again: the shared state is newer
    assert.same({ "open", "closed" }, { b.c.breaker:state(), c.c.breaker:state() })
    -- an instance's own announcement is not taken back
    a.sh:pull_breaker(a.c)
    assert.equal("open", a.c.breaker:state())
  end)

  -- A reload detaches every old instance: what the sync keeps for a
  -- breaker's name must go with the last of them (the soak's settled heap
  -- held a snapshot for each of 500 removed collectors), and a breaker
  -- attached again must publish a transition once, not once per attach.
  it("lets a detached breaker's snapshot go and publishes once after a re-attach", function()
    local spec = collector.define({ name = "sync_once", interval = 3600, limiter = false, retry = false,
      collect = function() return {} end })
    local x = { c = collector.new(spec), sh = shared.new(redis.connect { url = srv:url() }) }
    made[#made + 1] = x
    x.sh:attach(x.c)
    x.c.breaker:force_open()
    wait_for("the open breaker in Redis", function()
      local doc = red:call("GET", "cb_state:sync_once")
      return doc and cjson.decode(doc).snapshot.state == "open"
    end)
    local replacement = collector.new(spec) -- as a reload does: the new one first
    x.sh:attach(replacement)
    x.sh:detach(x.c)
    assert.is_not_nil(x.sh.sync_.applied["cb_state:sync_once"], "kept while a breaker of the name is attached")
    x.sh:detach(replacement)
    assert.same({}, x.sh.sync_.applied)
    assert.same({}, x.sh.sync_.names)
  end)

  it("publishes a breaker's transition once after it was detached and attached again", function()
    -- a shared object stand-in whose calls return at once: the callbacks
    -- of one transition then all run in one go of its dispatch task
    local calls = {}
    local sh = { id = "me", collectors = {}, call = function(_, cmd, key)
      calls[#calls + 1] = cmd .. " " .. tostring(key)
      if cmd ~= "GET" then return "OK" end
    end }
    local sync = require("sluice.shared.sync").new(sh)
    local c = collector.new(collector.define({ name = "sync_twice", interval = 3600, limiter = false,
      retry = false, collect = function() return {} end }))
    sync:attach(c)
    sync:detach(c)
    sync:attach(c)
    -- callbacks run in the order given: once this one has run for a
    -- transition, every publishing callback before it has too
    local seen = 0
    c.breaker:on_change(function() seen = seen + 1 end)
    calls = {}
    c.breaker:force_open()
    wait_for("the open transition dispatched", function() return seen == 1 end)
    assert.same({ "SET cb_state:sync_twice", "PUBLISH sluice:cb_state" }, calls)
    sync:detach(c)
    c.breaker:force_close()
    wait_for("the close transition dispatched", function() return seen == 2 end)
    assert.same({ "SET cb_state:sync_twice", "PUBLISH sluice:cb_state" }, calls) -- detached: none
  end)

  it("writes the limiter's state, takes it at attach, and writes the final state at detach", function()
    local spec = collector.define({ name = "sync_feed", interval = 3600, breaker = false, retry = false,
      limiter = { rate = 10, max_rate = 100 }, collect = function() return {} end })
    local a = { c = collector.new(spec), sh = shared.new(redis.connect { url = srv:url() }) }
    made[#made + 1] = a
    a.sh:attach(a.c)
    assert.is_nil(red:call("GET", "rate_limiter:sync_feed")) -- nothing to take, nothing written yet
    a.c.limiter:observe("/x", 429, {}, 0.01) -- halves the rates
    assert.equal("OK", a.sh:publish_limiter(a.c))
    local doc = cjson.decode(red:call("GET", "rate_limiter:sync_feed"))
    local function shape(snap)
      return { snap.total_violations, snap.rate_adjustments, snap.global.backoff_multiplier, snap.global.ceiling,
        snap.endpoints[1] and snap.endpoints[1].endpoint }
    end
    assert.same({ a.sh.id, 0 }, { doc.by, doc.seq })
    assert.same({ 1, 2, 2, 10, "/x" }, shape(doc.snapshot))
    local ttl = red:call("TTL", "rate_limiter:sync_feed")
    assert.is_true(ttl > 86390 and ttl <= 86400, "TTL " .. ttl)
    -- another instance's fresh collector takes it
    local b = { c = collector.new(spec), sh = shared.new(redis.connect { url = srv:url() }) }
    made[#made + 1] = b
    assert.same({ 0, 0, 1, 0 }, shape(b.c.limiter:snapshot()))
    b.sh:attach(b.c)
    assert.same({ 1, 2, 2, 10, "/x" }, shape(b.c.limiter:snapshot()))
    -- a's second 429, written when a is detached
    a.c.limiter:observe("/x", 429, {}, 0.01)
    a.sh:detach(a.c)
    local final = shape(cjson.decode(red:call("GET", "rate_limiter:sync_feed")).snapshot)
    -- (the new ceiling is the rate at the 429: 5 a second, recovering since)
    assert.is_true(final[4] >= 5 and final[4] < 6, "ceiling " .. final[4])
    final[4] = nil
    assert.same({ 2, 4, 4, nil, "/x" }, final)
  end)

  it("goes on with local state while Redis is away, says so once, and shares again when it is back", function()
    local own = redis_server.start()
    local x
    local restore = logs.capture("info")
    finally(function()
      restore()
      if x then x.sh:stop() end
      own:stop(true, true)
    end)
    x = { runs = 0 }
    x.c = collector.new(collector.define({ name = "away_feed", interval = 3600, limiter = false, retry = false,
      collect = function() x.runs = x.runs + 1 return { { id = x.runs } } end,
      tables = { ticks = { columns = { id = "integer" }, key = { "id" } } } }))
    x.sh = shared.new(redis.connect { url = own:url() })
    x.sh:attach(x.c)
    x.sh:leases(2)
    local sink = x.sh:stream_sink({ stream = "away:{table}" })
    assert.same({ false, "PONG" }, { x.sh:degraded(), x.sh:call("PING") })
    own:stop(true) -- SIGKILL
    wait_for("the client to notice", function() return x.sh.redis:status() ~= "connected" end)
    assert.same({ nil, "disconnected" }, { x.sh:call("PING") })
    assert.is_true(x.sh:degraded())
    -- the collector still runs (its lease cannot be asked for), its
    -- breaker still works here, the sink keeps its rows to itself
    assert.same({ true, 1 }, { x.c:run_once() })
    assert.equal(1, x.runs)
    x.c.breaker:force_open()
    assert.equal("open", x.c.breaker:state())
    assert.same({ nil, "disconnected" }, { sink:publish("ticks", { { id = 1 } }) })
    assert.same({ nil, "disconnected" }, { x.sh:publish_breaker(x.c.breaker) })
    -- said once for the whole outage
    local warned = logged("redis unreachable: using local state until it is back")
    assert.same({ 1, "warning", "disconnected" }, { #warned, warned[1].level, warned[1].error })
    assert.same({}, logged("redis unreachable: rows are not published to streams"))
    -- back: the next call that reaches it ends the outage
    own:restart()
    wait_for("the client to reconnect", function() return x.sh.redis:status() == "connected" end, 20)
    assert.same({ "PONG", false }, { x.sh:call("PING"), x.sh:degraded() })
    assert.equal(1, #logged("redis reachable again: sharing state"))
    x.c.breaker:force_close()
    wait_for("the closed breaker in Redis", function()
      local doc = x.sh:call("GET", "cb_state:away_feed")
      return doc and cjson.decode(doc).snapshot.state == "closed"
    end)
    assert.is_true(sink:publish("ticks", { { id = 2 } }))
    assert.equal(1, x.sh:call("XLEN", "away:ticks"))
    assert.equal(1, #logged("redis unreachable: using local state until it is back"))
  end)
end)
