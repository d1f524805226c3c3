-- sluice.limiter with shared = url: the local limiter first, then a slot of
-- the GCRA quota in a private redis-server on a loopback port.
local sluice = require "sluice"
local limiter = require "sluice.limiter"
local collector = require "sluice.collector"
local metrics = require "sluice.metrics"

local redis_server = require "support.redis_server"
local wait_for = require("support.wait").wait_for

local SLACK = 0.003

local function sample(series)
  for line in metrics.render():gmatch("[^\n]+") do
    if line:sub(1, #series + 1) == series .. " " then return tonumber(line:sub(#series + 2)) end
  end
  return nil
end

describe("sluice.limiter shared", function()
  local srv, red, url
  local n = 0
  local function name()
    n = n + 1
    return "shared_" .. n
  end

  setup(function()
    srv, red = redis_server.with_client()
    url = srv:url()
  end)

  teardown(function() if srv then srv:shutdown(red) end end)

  it("rejects bad shared options, naming them", function()
    assert.has_error(function() limiter.new { name = "x", shared = true } end,
      "sluice.limiter.new: option 'shared' = true needs a configuration with redis set"
      .. " (in a script pass shared = \"redis://...\")")
    assert.has_error(function() limiter.new { name = "x", shared = 5 } end,
      "sluice.limiter.new: option 'shared' must be a redis:// url or a sluice.redis client, got number")
    assert.has_error(function() limiter.new { name = "x", shared = "http://h" } end,
      "sluice.limiter.new: option 'shared': option 'redis': url must start with redis://")
  end)

  it("two limiters on two connections share one quota: 20 waits at 50/s take 19/50 s", function()
    local nm = name()
    local a = limiter.new { name = nm, rate = 50, shared = url }
    local b = limiter.new { name = nm, rate = 50, shared = url }
    finally(function() a:close() b:close() end)
    local t0 = sluice.now()
    local tasks = {}
    for i, lim in ipairs { a, b } do
      tasks[i] = sluice.spawn(function()
        for _ = 1, 10 do assert.is_number(lim:wait("/x")) end
        return true
      end)
    end
    for i = 1, 2 do assert.same({ true, true }, { sluice.wait(tasks[i]) }) end
    local took = sluice.now() - t0
    -- each alone would take 9/50 s; together they pace as one
    assert.is_true(took >= 19 / 50 - SLACK, "took " .. took)
    assert.is_true(took < 20 / 50 + 0.3, "took " .. took)
    assert.same({ key = "gcra:" .. nm, rate = 50, burst = 1, state = "shared", admitted = 10,
      timeouts = 0, errors = 0, waited_total = a:stats().shared.waited_total }, a:stats().shared)
    assert.equal(10, b:stats().shared.admitted)
    assert.is_true(a:stats().shared.waited_total + b:stats().shared.waited_total >= 0.3)
  end)

  it("gives up with timeout and a retry_after when the shared slot is past max_wait", function()
    local nm = name()
    local a = limiter.new { name = nm, rate = 2, shared = url }
    local b = limiter.new { name = nm, rate = 2, max_wait = 0.2, shared = url }
    finally(function() a:close() b:close() end)
    assert.is_number(a:wait())
    local t0 = sluice.now()
    local w, err, retry = b:wait() -- b's own limiter is fresh: only the pool says no
    assert.is_nil(w)
    assert.equal("timeout", err)
    assert.is_true(retry > 0.2 and retry <= 0.3 + SLACK, "retry_after " .. tostring(retry))
    assert.is_true(sluice.now() - t0 < 0.1, "at once")
    assert.equal(1, b:stats().shared.timeouts)
    -- a per-call max_wait long enough waits for the slot
    w = b:wait(nil, nil, { max_wait = 1 })
    assert.is_true(w >= 0.4, "waited " .. tostring(w))
  end)

  it("close() closes the connection it made from a url; stats() still answers", function()
    local function clients()
      return tonumber(red:call("INFO", "clients"):match("connected_clients:(%d+)"))
    end
    local before = clients()
    local nm = name()
    local lim = limiter.new { name = nm, rate = 40, shared = url }
    assert.is_number(lim:wait())
    assert.equal(before + 1, clients())
    assert.is_true(lim:close())
    assert.is_false(lim:close())
    wait_for("its connection closed", function() return clients() == before end)
    assert.same({ "gcra:" .. nm, 1, 1 },
      { lim:stats().shared.key, lim:stats().shared.admitted, lim:stats().total_requests })
  end)

  it("asks the pool at the limiter's current rate, which a 429 lowers", function()
    local lim = limiter.new { name = name(), rate = 40, shared = url }
    finally(function() lim:close() end)
    assert.is_number(lim:wait("/x"))
    assert.equal(40, lim:stats().shared.rate)
    lim:observe("/x", 429, { ["retry-after"] = "0" })
    local rate = lim:rate()
    assert.is_true(rate < 40, "rate " .. rate)
    assert.is_number(lim:wait("/x"))
    -- (the rate climbs back as time passes: it was read during the wait)
    local shared_rate = lim:stats().shared.rate
    assert.is_true(shared_rate >= rate and shared_rate <= lim:rate() and shared_rate < 40,
      rate .. " <= " .. shared_rate .. " <= " .. lim:rate())
  end)

  it("goes on locally while Redis is away, and shares again when it is back", function()
    local own, lim = redis_server.start(), nil
    -- (busted keeps one finally per test: the last one given)
    finally(function()
      if lim then lim:close() end
      own:stop(true, true)
    end)
    lim = limiter.new { name = name(), rate = 200, max_rate = 200, shared = own:url() }
    assert.is_number(lim:wait())
    own:stop(true)
    for _ = 1, 3 do assert.is_number(lim:wait()) end
    local st = lim:stats().shared
    assert.equal("local", st.state)
    assert.equal(3, st.errors)
    assert.equal(1, st.admitted)
    local nm = lim:stats().limiter_name
    assert.equal(0, sample('sluice_limiter_shared_up{limiter="' .. nm .. '"}'))
    assert.equal(3, sample('sluice_limiter_shared_errors_total{limiter="' .. nm .. '"}'))
    assert.equal(1, sample('sluice_limiter_shared_admissions_total{limiter="' .. nm .. '"}'))
    own:restart()
    -- asking now and then (every 0.1 s) until a request is shared again
    wait_for("shared again after the restart", function()
      assert.is_number(lim:wait())
      return lim:stats().shared.state == "shared"
    end, 10, 0.1)
    assert.equal(1, sample('sluice_limiter_shared_up{limiter="' .. nm .. '"}'))
  end)

  it("a collector's limiter = { shared = true } uses the configuration's Redis", function()
    local spec = collector.define { name = "c_shared", collect = function() return {} end }
    assert.has_error(function() collector.new(spec, { limiter = { shared = true } }, {}) end,
      "collector 'c_shared': limiter.shared = true needs redis = \"redis://...\" in the configuration")
    local c = collector.new(spec, { limiter = { rate = 5, shared = true } }, { redis = red })
    assert.is_number(c.limiter:wait())
    local st = c.limiter:stats().shared
    assert.equal("gcra:c_shared", st.key)
    assert.equal(1, st.admitted)
    c.limiter:close() -- not its connection: red stays open
    assert.equal("PONG", red:call("PING"))
  end)
end)
