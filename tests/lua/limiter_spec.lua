-- sluice.limiter: the Lua API over the C core (whose deterministic tests
-- are tests/c/test_limiter.c). Real time here, so only lower bounds and
-- orders are asserted exactly.
local sluice = require "sluice"
local limiter = require "sluice.limiter"
local wait_for = require("support.wait").wait_for

describe("sluice.limiter", function()
  it("spaces N waits at rate r by (N-1)/r", function()
    local lim = limiter.new({ name = "l_rate", rate = 50 })
    local t0 = sluice.now()
    for _ = 1, 6 do lim:wait("/a") end
    local dt = sluice.now() - t0
    assert.is_true(dt >= 5 / 50 - 0.002, "took " .. dt)
    assert.is_true(dt < 1)
  end)

  it("charges cost: a request of cost 3 delays the next by 3/r", function()
    local lim = limiter.new({ name = "l_cost", rate = 100 })
    -- t0 before the first wait: it is admitted at once, so the second one is
    -- admitted 3/r after t0 at the earliest. (Taking t0 after the first wait
    -- made the bound depend on how long the first wait took to return.)
    local t0 = sluice.now()
    lim:wait("/a", 3)
    lim:wait("/a", 1)
    local dt = sluice.now() - t0
    assert.is_true(dt >= 0.029, "took " .. dt)
  end)

  it("admits only when every pool allows, and per-pool costs apply", function()
    local lim = limiter.new({ name = "l_pools", rate = 1000, max_rate = 1000, utilization = 1,
      pools = { { name = "weight", limit = 20, window = 1 } } })
    local t0 = sluice.now()
    lim:wait("/heavy", 1, { pools = { weight = 10 } }) -- 10 of 20 per second
    lim:wait("/heavy", 1, { pools = { weight = 10 } })
    assert.is_true(sluice.now() - t0 >= 0.49) -- the weight pool, not the rate
    t0 = sluice.now()
    lim:wait("/free", 1, { pools = { weight = 0 } }) -- not charged in the pool
    assert.is_true(sluice.now() - t0 < 0.1)
  end)

  it("serves waiters in FIFO order and gives a killed waiter's place back", function()
    local lim = limiter.new({ name = "l_fifo", rate = 20 })
    lim:wait("/q")
    local order = {}
    local tasks = {}
    for i = 1, 4 do
      tasks[i] = sluice.spawn(function() lim:wait("/q"); order[#order + 1] = i end)
    end
    sluice.yield()
    assert.equal(4, lim:metrics().waiting)
    assert.is_true(sluice.kill(tasks[2]))
    assert.equal(3, lim:metrics().waiting)
    for _, i in ipairs({ 1, 3, 4 }) do sluice.wait(tasks[i]) end
    assert.same({ 1, 3, 4 }, order)
  end)

  it("backs off on 429 and waits out Retry-After on that endpoint only", function()
    local lim = limiter.new({ name = "l_429", rate = 100 })
    lim:wait("/x")
    local v = lim:observe("/x", 429, { ["retry-after"] = "0.3" }, 0.05)
    assert.is_true(v.throttled)
    assert.equal(0.3, v.retry_after)
    local t0 = sluice.now()
    lim:wait("/other") -- not held up by /x's pause
    assert.is_true(sluice.now() - t0 < 0.1)
    t0 = sluice.now()
    lim:wait("/x")
    assert.is_true(sluice.now() - t0 >= 0.25)
    local ep = lim:stats().endpoints["/x"]
    assert.equal(1, ep.violations)
    -- the rate was halved at the 429 (and climbs back after the pause)
    assert.is_true(lim:stats().min_rate_seen <= 50)
    assert.equal(1, lim:stats().total_violations)
  end)

  it("stops everything on a 418 ban and reports when it ends", function()
    local lim = limiter.new({ name = "l_418", rate = 100 })
    local before = sluice.time()
    local v = lim:observe("/x", 418, { ["Retry-After"] = "120" }, 0.05)
    assert.is_true(v.banned)
    assert.is_true(v.ban_until >= before + 119 and v.ban_until <= sluice.time() + 121)
    local waited, why, in_ = lim:wait("/y", 1, { max_wait = 0.1 })
    assert.is_nil(waited)
    assert.equal("banned", why)
    assert.is_true(in_ > 100)
  end)

  it("gives up with timeout past max_wait", function()
    local lim = limiter.new({ name = "l_maxwait", rate = 1 })
    lim:wait("/a")
    local waited, why = lim:wait("/a", 1, { max_wait = 0.05 })
    assert.is_nil(waited)
    assert.equal("timeout", why)
  end)

  it("follows quota headers: remaining spread over the reset", function()
    local lim = limiter.new({ name = "l_hdr", rate = 100, utilization = 1 })
    lim:observe("/q", 200, { ["x-ratelimit-limit"] = "100", ["x-ratelimit-remaining"] = "10",
      ["x-ratelimit-reset"] = "5" }, 0.1)
    local r = lim:rate("/q")
    assert.is_true(r > 1.5 and r <= 2.5, "rate " .. r) -- 10 left over 5 s
  end)

  it("handles a response observed with the verdict \"throttled\" as a 429", function()
    local lim = limiter.new({ name = "l_throttled", rate = 10 })
    lim:wait("/t")
    local v = lim:observe("/t", 200, { ["retry-after"] = "0.5" }, 0.01, nil, "throttled")
    assert.is_true(v.throttled)
    assert.equal(0.5, v.retry_after)
    local st = lim:stats()
    assert.same({ 1, 2, 5 }, { st.total_violations, st.rate_adjustments, st.min_rate_seen })
    assert.equal(1, st.endpoints["/t"].violations)
    assert.has_error(function() lim:observe("/t", 200, nil, 0.01, nil, "slow") end,
      "sluice.limiter.observe: bad argument #6 'verdict' (\"throttled\" or nil expected)")
  end)

  it("returns the reference get_stats() shape with numbers", function()
    local lim = limiter.new({ name = "l_stats", rate = 10 })
    lim:wait("/a")
    local st = lim:get_stats()
    local keys = {}
    for k in pairs(st) do keys[#keys + 1] = k end
    table.sort(keys)
    assert.same({ "current_global_rate", "default_rate", "endpoints", "endpoints_tracked",
      "limiter_name", "max_rate_seen", "min_rate_seen", "rate_adjustments", "total_requests",
      "total_violations", "total_wait_time" }, keys)
    assert.equal("l_stats", st.limiter_name)
    assert.equal(10, st.default_rate)
    assert.equal(1, st.total_requests)
    assert.same({ rate = 10, requests_made = 1, violations = 0, in_backoff = false },
      st.endpoints["/a"])
  end)

  it("snapshots and restores a pause across a restart", function()
    local lim = limiter.new({ name = "l_snap", rate = 10 })
    lim:record_429("/x", 60)
    local snap = lim:snapshot()
    local again = limiter.new({ name = "l_snap", rate = 10 })
    assert.equal(again, limiter.restore(snap))
    local waited, why = again:wait("/x", 1, { max_wait = 0.05 })
    assert.is_nil(waited)
    assert.equal("timeout", why)
    assert.is_true(again:stats().endpoints["/x"].in_backoff)
  end)

  it("a limiter reachable only through its waiters stays alive and wakes them", function()
    local weak = setmetatable({}, { __mode = "v" })
    local tasks = {}
    -- The only references: the waiters' own (a yielding C function drops
    -- its arguments, and lim:wait is a tail call), and a weak one.
    local function start()
      local lim = limiter.new({ name = "l_orphan", rate = 20 })
      weak[1] = lim
      for i = 1, 4 do tasks[i] = sluice.spawn(function() return lim:wait() end) end
    end
    start()
    sluice.yield() -- every task takes its ticket
    collectgarbage()
    collectgarbage()
    assert.is_not_nil(weak[1])
    -- One waiter is killed (its ticket cancelled), the others are woken.
    assert.is_true(sluice.kill(tasks[4]))
    for i = 1, 3 do
      wait_for("waiter " .. i, function() return sluice.status(tasks[i]) == "done" end)
      assert.equal("done", sluice.status(tasks[i]))
      local ok, waited = sluice.wait(tasks[i])
      assert.is_true(ok)
      assert.is_number(waited)
    end
    -- No waiter left: no anchor either.
    collectgarbage()
    collectgarbage()
    assert.is_nil(weak[1])
  end)

  it("name(), stats() and close(): close wakes waiters with nil, \"closed\" and is idempotent", function()
    local lim = limiter.new({ name = "l_handle", rate = 1 })
    assert.equal("l_handle", lim:name())
    assert.equal("unknown", limiter.new({}):name())
    assert.equal(lim, limiter.get("l_handle"))
    lim:wait("/a")
    local waiter = sluice.spawn(function() return lim:wait("/a") end)
    sluice.yield()
    assert.equal(1, lim:metrics().waiting)
    assert.is_true(lim:close())
    assert.is_false(lim:close())
    assert.same({ true, nil, "closed" }, { sluice.wait(waiter) })
    assert.is_nil(limiter.get("l_handle")) -- out of the registry
    -- a closed limiter still says its name and its statistics ...
    assert.equal("l_handle", lim:name())
    local st = lim:stats()
    assert.same({ "l_handle", 1, 0 }, { st.limiter_name, st.total_requests, st.endpoints["/a"].violations })
    -- ... and raises on any other use
    for _, call in ipairs({
      function() lim:wait("/a") end, function() lim:observe("/a", 200) end,
      function() lim:rate() end, function() lim:metrics() end, function() lim:snapshot() end,
    }) do
      assert.has_error(call, "sluice.limiter: limiter 'l_handle' is closed")
    end
  end)

  it("validates options, naming the bad one", function()
    assert.has_error(function() limiter.new({ rte = 5 }) end, "sluice.limiter.new: unknown option 'rte'")
    assert.has_error(function() limiter.new({ rate = "5" }) end,
      "sluice.limiter.new: option 'rate' must be a number >= 0, got string")
    assert.has_error(function() limiter.new({ reset = "unix" }) end,
      "sluice.limiter.new: option 'reset' must be 'auto', 'epoch', 'epoch_ms' or 'delta', got 'unix'")
    assert.has_error(function() limiter.new({ pools = { { name = "w" } } }) end,
      "sluice.limiter.new: option 'pools[1].limit' is required")
    local lim = limiter.new({ name = "l_args" })
    assert.has_error(function() lim:wait("/a", -1) end,
      "sluice.limiter.wait: bad argument #2 'cost' (number > 0 expected)")
  end)
end)

describe("sluice.limiter with an injected clock", function()
  local T0 = 1700000000 -- epoch seconds: the clock stands for both clocks

  local function fake_clock()
    local c = { t = T0 }
    c.fn = function() return c.t end
    return c
  end

  -- A probe that never waits: seconds waited, or nil, why, seconds to go.
  local function probe(lim, endpoint)
    return { lim:wait(endpoint, 1, { max_wait = 0 }) }
  end

  it("spaces requests by exactly 1/rate of the clock's time", function()
    local clock = fake_clock()
    local lim = limiter.new({ name = "lc_rate", rate = 4, clock = clock.fn })
    assert.same({ 0 }, probe(lim, "/a"))
    assert.same({ nil, "timeout", 0.25 }, probe(lim, "/a"))
    clock.t = T0 + 0.125
    assert.same({ nil, "timeout", 0.125 }, probe(lim, "/a"))
    clock.t = T0 + 0.25
    assert.same({ 0 }, probe(lim, "/a"))
    local st = lim:stats()
    assert.same({ 2, 0, 4 }, { st.total_requests, st.total_violations, st.current_global_rate })
  end)

  it("waits out Retry-After to the second and reports deadlines on the clock", function()
    local clock = fake_clock()
    local lim = limiter.new({ name = "lc_429", rate = 4, clock = clock.fn })
    assert.same({ 0 }, probe(lim, "/a"))
    clock.t = T0 + 0.25
    local v = lim:observe("/a", 429, { ["retry-after"] = "30" }, 0.1)
    assert.same({ throttled = true, banned = false, retry_after = 30, pause_for = 30 }, v)
    assert.same({ nil, "timeout", 30 }, probe(lim, "/a"))
    -- the rate halved, everywhere: /b goes, and the next one 1/2 s later
    assert.same({ 2, 2 }, { lim:rate("/a"), lim:rate() })
    assert.same({ 0 }, probe(lim, "/b"))
    assert.same({ nil, "timeout", 0.5 }, probe(lim, "/b"))
    local ep = lim:stats().endpoints["/a"]
    -- in backoff until the pause (30 s) and the climb back (5 time
    -- constants of 0.1 s x multiplier 2) are over
    assert.same({ true, T0 + 0.25 + 30 + 1, 1 }, { ep.in_backoff, ep.backoff_until, ep.violations })
    clock.t = T0 + 29.75
    assert.same({ nil, "timeout", 0.5 }, probe(lim, "/a"))
    clock.t = T0 + 30.25
    assert.same({ 0 }, probe(lim, "/a"))
  end)

  it("stops everything on a 418 until the clock's time + Retry-After", function()
    local clock = fake_clock()
    local lim = limiter.new({ name = "lc_418", rate = 4, clock = clock.fn })
    local v = lim:observe("/x", 418, { ["Retry-After"] = "120" }, 0.05)
    assert.same({ throttled = false, banned = true, ban_until = T0 + 120, retry_after = 120,
      pause_for = 120 }, v)
    assert.same({ nil, "banned", 120 }, probe(lim, "/y"))
    clock.t = T0 + 119
    assert.same({ nil, "banned", 1 }, probe(lim, "/y"))
    clock.t = T0 + 120
    assert.same({ 0 }, probe(lim, "/y"))
  end)

  it("snapshots on the clock and restores what is left of a pause", function()
    local clock = fake_clock()
    local lim = limiter.new({ name = "lc_snap", rate = 4, clock = clock.fn })
    lim:record_429("/x", 60)
    local snap = lim:snapshot()
    assert.equal(T0, snap.saved_at)
    clock.t = T0 + 10 -- a "restart" 10 s later
    local again = limiter.new({ name = "lc_snap", rate = 4, clock = clock.fn })
    assert.equal(again, limiter.restore(snap))
    assert.same({ nil, "timeout", 50 }, probe(again, "/x"))
  end)

  it("wakes a waiting task once the clock has moved, with the clock's wait", function()
    local clock = fake_clock()
    local lim = limiter.new({ name = "lc_task", rate = 4, clock = clock.fn })
    assert.same({ 0 }, probe(lim, "/a"))
    local t = sluice.spawn(function() return lim:wait("/a") end)
    sluice.yield()
    assert.equal(1, lim:metrics().waiting)
    clock.t = T0 + 0.25
    -- the timer fires 0.25 real seconds after it was armed
    wait_for("the waiter", function() return sluice.status(t) == "done" end)
    assert.same({ true, 0.25 }, { sluice.wait(t) })
    assert.equal(0.25, lim:stats().total_wait_time)
  end)

  it("keeps the last reading when the clock fails", function()
    local clock = fake_clock()
    local fail = false
    local lim = limiter.new({ name = "lc_fail", rate = 4,
      clock = function() if fail then error("clock broke") end return clock.t end })
    assert.same({ 0 }, probe(lim, "/a"))
    clock.t, fail = T0 + 1, true
    assert.same({ nil, "timeout", 0.25 }, probe(lim, "/a")) -- still at T0
    fail = false
    assert.same({ 0 }, probe(lim, "/a"))
    assert.has_error(function() limiter.new({ clock = 5 }) end,
      "sluice.limiter.new: option 'clock' must be a function, got number")
  end)
end)
