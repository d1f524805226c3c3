-- sluice.shared: leases through the collector's run guard (one instance
-- runs a collector, the other stands by; a lease is given up only when
-- the run in flight has ended, and then taken over), owner(), and the
-- Redis Streams sink, against a private redis-server on a loopback port.
-- Two instances are two shared objects with their own connections in
-- this process, each with its own instance of the same collector.
local sluice = require "sluice"
local redis = require "sluice.redis"
local collector = require "sluice.collector"
local shared = require "sluice.shared"
local log = require "sluice.log"

local redis_server = require "support.redis_server"

local function wait_for(what, pred, limit)
  local deadline = sluice.now() + (limit or 5)
  while not pred() do
    if sluice.now() > deadline then error("timed out waiting for " .. what, 2) end
    sluice.sleep(0.01)
  end
end

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
    a.sh:detach(a.c)
    assert.is_nil(shared.owner(a.c))
    -- still a's while its run is in flight, whatever b asks
    sluice.sleep(0.1)
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
    sluice.sleep(0.2) -- the old instance's release has looked (it waits in steps of 0.05 s)
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
end)
