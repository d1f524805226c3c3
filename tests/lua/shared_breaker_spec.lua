-- sluice.shared: breaker transitions reach the other instances by pub/sub,
-- against a private redis-server on a loopback port.
local sluice = require "sluice"
local redis = require "sluice.redis"
local breaker = require "sluice.breaker"
local shared = require "sluice.shared"
local cjson = require "cjson"

local redis_server = require "support.redis_server"
local wait_for = require("support.wait").wait_for

describe("sluice.shared breakers", function()
  local srv, red
  local made = {}

  setup(function() srv, red = redis_server.with_client() end)
  teardown(function() if srv then srv:shutdown(red) end end)

  after_each(function()
    for _, x in ipairs(made) do x.sh:stop() end
    made = {}
    red:call("FLUSHDB")
  end)

  local function numsub() return red:call("PUBSUB", "NUMSUB", "sluice:cb_state")[2] end

  -- One instance: its own client and shared state, one collector-like
  -- table with a breaker.
  local function instance(name)
    local x = { logs = {} }
    x.c = { name = name, breaker = breaker.new { name = "shared_cb", timeout = 300 },
      log = { warning = function(msg) x.logs[#x.logs + 1] = msg end, info = function() end } }
    x.sh = shared.new(redis.connect { url = srv:url() })
    x.sh:attach(x.c)
    made[#made + 1] = x
    return x
  end

  it("announces each transition; the others take the stored state at once", function()
    local spy = assert(red:subscribe("sluice:cb_state"))
    finally(function() spy:close() end)
    local a, b = instance("a"), instance("b")
    b.sh:start()
    wait_for("both subscribed", function() return numsub() == 2 end)
    local t0 = sluice.now()
    a.c.breaker:force_open()
    assert.same({ kind = "message", channel = "sluice:cb_state", payload = "cb_state:shared_cb" },
      spy:receive(2))
    wait_for("B's breaker open", function() return b.c.breaker:state() == "open" end)
    local lag = sluice.now() - t0
    print(string.format("\n# B took A's open breaker after %.1f ms", lag * 1000))
    assert.is_true(lag < 0.25, lag)
    assert.same({ "breaker state taken from another instance" }, b.logs)
    -- and back: B closes it, A (not started: it only polls) is told nothing
    -- until it reads the key, which is the source of truth
    b.c.breaker:force_close()
    wait_for("the stored state closed", function()
      local doc = red:call("GET", "cb_state:shared_cb")
      return doc and cjson.decode(doc).snapshot.state == "closed"
    end)
    assert.equal("open", a.c.breaker:state())
    a.sh:pull_breaker(a.c)
    assert.equal("closed", a.c.breaker:state())
    -- the document carries B's times exactly (cjson's 14 digits rounded
    -- an epoch to 0.1 ms)
    local doc = cjson.decode(red:call("GET", "cb_state:shared_cb"))
    local mine = b.c.breaker:snapshot()
    assert.equal(mine.last_state_change, doc.snapshot.last_state_change)
    assert.equal(mine.last_state_change, a.c.breaker:snapshot().last_state_change)
  end)

  it("reads the stored state when it subscribes (what it missed before)", function()
    local a, b = instance("a"), instance("b")
    a.c.breaker:force_open()
    wait_for("the stored state", function() return red:call("EXISTS", "cb_state:shared_cb") == 1 end)
    assert.equal("closed", b.c.breaker:state())
    local t0 = sluice.now()
    b.sh:start()
    wait_for("B's breaker open", function() return b.c.breaker:state() == "open" end)
    assert.is_true(sluice.now() - t0 < 1) -- not the 5 s poll
  end)

  it("reads the stored state after its subscription reconnects", function()
    local a, b = instance("a"), instance("b")
    b.sh:start()
    wait_for("B subscribed", function() return numsub() == 1 end)
    -- B's subscription is cut; what A announces meanwhile is lost
    local t0 = sluice.now()
    assert.equal(1, red:call("CLIENT", "KILL", "TYPE", "pubsub"))
    a.c.breaker:force_open()
    wait_for("B's breaker open", function() return b.c.breaker:state() == "open" end)
    assert.is_true(sluice.now() - t0 < 4, sluice.now() - t0) -- not the 5 s poll
    assert.equal(1, numsub())
  end)

  it("stop ends the listener and its subscription", function()
    local b = instance("b")
    b.sh:start()
    wait_for("B subscribed", function() return numsub() == 1 end)
    b.sh:stop()
    made = {}
    wait_for("no subscriber", function() return numsub() == 0 end)
    assert.is_true(sluice.status(b.sh.listener) == "killed" or sluice.status(b.sh.listener) == "done")
  end)
end)
