-- sluice.breaker: the Lua API over the C state machine, with an injected clock.
local sluice = require "sluice"
local breaker = require "sluice.breaker"
local wait_for = require("support.wait").wait_for

local T0 = 1763115825 -- 2025-11-14T10:23:45Z

local function fake_clock()
  local c = { t = T0 }
  c.fn = function() return c.t end
  return c
end

describe("sluice.breaker", function()
  it("has the reference defaults and the exact get_status() shape when closed", function()
    local clock = fake_clock()
    local cb = breaker.new({ name = "binance_api", clock = clock.fn })
    assert.same({
      state = "closed",
      collector_name = "binance_api",
      failure_count = 0,
      consecutive_successes = 0,
      failure_threshold = 5,
      timeout_seconds = 300,
      last_state_change = "2025-11-14T10:23:45Z",
      statistics = {
        total_failures = 0, total_successes = 0, circuit_opens = 0,
        successful_recoveries = 0, failed_recoveries = 0, time_in_open_state = 0,
      },
      health_score = 1.0,
    }, cb:status())
    assert.same(cb:status(), cb:get_status())
  end)

  it("opens after 5 consecutive failures and refuses until the timeout", function()
    local clock = fake_clock()
    local cb = breaker.new({ name = "t_open", clock = clock.fn })
    for _ = 1, 4 do cb:failure(cb:allow()) end
    assert.equal("closed", cb:state())
    cb:failure(cb:allow())
    assert.equal("open", cb:state())
    local p, why = cb:allow()
    assert.is_nil(p)
    assert.equal("open", why)
    assert.is_false(cb:can_attempt())
    clock.t = clock.t + 299.9
    assert.is_nil(cb:allow())
    clock.t = clock.t + 0.1
    assert.is_number(cb:allow())
    assert.equal("half-open", cb:state())
  end)

  it("reports the half_open sub-table only while half-open, and recovers", function()
    local clock = fake_clock()
    local cb = breaker.new({ name = "t_recover", clock = clock.fn })
    for _ = 1, 5 do cb:failure(cb:allow()) end
    clock.t = clock.t + 300
    local p1 = cb:allow()
    assert.is_true(cb:success(p1))
    local st = cb:status()
    assert.same({ attempts = 1, successes = 1, max_calls = 3, success_threshold = 2, success_rate = 1.0 },
      st.half_open)
    assert.equal("half-open", st.state)
    assert.equal("2025-11-14T10:28:45Z", st.last_state_change)
    assert.equal("2025-11-14T10:23:45Z", st.last_failure_time)
    cb:success(cb:allow())
    st = cb:status()
    assert.equal("closed", st.state)
    assert.is_nil(st.half_open)
    assert.equal(1, st.statistics.successful_recoveries)
    assert.equal(1, st.statistics.circuit_opens)
    assert.equal(300, st.statistics.time_in_open_state)
    assert.equal("2025-11-14T10:23:45Z", st.statistics.last_open_time)
    assert.equal(2 / 7, st.health_score)
  end)

  it("backs off 300 -> 450 -> 675 -> 1012.5 ... capped at 3600 on failed recoveries", function()
    local clock = fake_clock()
    local cb = breaker.new({ name = "t_backoff", clock = clock.fn })
    for _ = 1, 5 do cb:failure(cb:allow()) end
    local expected = { 450, 675, 1012.5, 1518.75, 2278.125, 3417.1875, 3600, 3600 }
    local timeout = 300
    for _, want in ipairs(expected) do
      clock.t = clock.t + timeout
      cb:failure(cb:allow()) -- a half-open trial fails: reopen, back off
      assert.equal("open", cb:state())
      timeout = cb:status().timeout_seconds
      assert.equal(want, timeout)
    end
    assert.equal(#expected, cb:status().statistics.failed_recoveries)
    clock.t = clock.t + timeout
    cb:success(cb:allow())
    cb:success(cb:allow())
    assert.equal("closed", cb:state())
    assert.equal(300, cb:status().timeout_seconds)
  end)

  it("ignores a result from a permit issued before the last state change", function()
    local clock = fake_clock()
    local cb = breaker.new({ name = "t_gen", clock = clock.fn })
    local slow = cb:allow() -- a call starts while closed
    for _ = 1, 5 do cb:failure(cb:allow()) end
    clock.t = clock.t + 300
    local trial = cb:allow()
    assert.is_false(cb:failure(slow)) -- stale: not a half-open trial
    assert.equal("half-open", cb:state())
    assert.is_true(cb:success(trial))
  end)

  it("counts an unreported trial permit as failed after permit_timeout", function()
    local clock = fake_clock()
    local cb = breaker.new({ name = "t_permit", clock = clock.fn, permit_timeout = 10 })
    for _ = 1, 5 do cb:failure(cb:allow()) end
    clock.t = clock.t + 300
    assert.is_number(cb:allow()) -- never reported
    clock.t = clock.t + 10
    assert.equal("open", cb:status().state) -- status() settles expired trials
    assert.equal(1, cb:metrics().permit_timeouts)
  end)

  it("trips on a failure rate over a count window, and on slow calls", function()
    local clock = fake_clock()
    local cb = breaker.new({ name = "t_rate", clock = clock.fn,
      window = { type = "count", size = 10, min_calls = 10, failure_rate = 0.5 } })
    for i = 1, 10 do
      local p = cb:allow()
      if i % 2 == 0 then cb:failure(p) else cb:success(p) end
    end
    assert.equal("open", cb:state())
    local slow = breaker.new({ name = "t_slow", clock = clock.fn, slow_call_duration = 2,
      slow_call_rate = 0.8, window = { size = 5, min_calls = 5 } })
    for _ = 1, 5 do slow:success(slow:allow(), 3) end
    assert.equal("open", slow:state())
    assert.equal(5, slow:metrics().slow_calls)
  end)

  it("stays open until open_until, and force/reset work", function()
    local clock = fake_clock()
    local cb = breaker.new({ name = "t_until", clock = clock.fn })
    cb:open_until(T0 + 3600)
    clock.t = T0 + 3599
    assert.is_nil(cb:allow())
    clock.t = T0 + 3600
    assert.is_number(cb:allow())
    cb:force_open()
    assert.equal("open", cb:state())
    cb:force_close()
    assert.equal("closed", cb:state())
    cb:failure(cb:allow())
    cb:reset()
    local st = cb:status()
    assert.equal(0, st.failure_count)
    assert.equal(1, st.statistics.total_failures) -- lifetime statistics kept
  end)

  it("metrics_only never refuses; disabled records nothing", function()
    local m = breaker.new({ name = "t_metrics", mode = "metrics_only" })
    for _ = 1, 5 do m:failure(m:allow()) end
    assert.equal("open", m:state())
    assert.is_number(m:allow())
    local d = breaker.new({ name = "t_disabled", mode = "disabled" })
    for _ = 1, 10 do d:failure(d:allow()) end
    assert.equal("closed", d:state())
    assert.equal(0, d:status().statistics.total_failures)
  end)

  it("supports the reference method names", function()
    local clock = fake_clock()
    local cb = breaker.new({ name = "t_ref", clock = clock.fn })
    assert.is_true(cb:can_attempt())
    cb:record_success()
    for _ = 1, 5 do cb:record_failure() end
    assert.is_false(cb:can_attempt())
    assert.equal("open", cb:get_status().state)
    assert.equal(5, cb:get_status().statistics.total_failures)
  end)

  it("snapshots and restores an open breaker that stays open until its deadline", function()
    local clock = fake_clock()
    local cb = breaker.new({ name = "t_snap", clock = clock.fn })
    for _ = 1, 5 do cb:failure(cb:allow()) end
    local snap = cb:snapshot()
    assert.equal("open", snap.state)
    assert.equal(T0 + 300, snap.open_until)
    assert.equal(5, snap.statistics.total_failures)
    -- a "restart": a new breaker of the same name, 100 s later
    clock.t = T0 + 100
    local again = breaker.new({ name = "t_snap", clock = clock.fn })
    assert.equal(again, breaker.get("t_snap"))
    assert.equal(again, breaker.restore(snap))
    assert.equal("open", again:state())
    clock.t = T0 + 299
    assert.is_nil(again:allow())
    clock.t = T0 + 300
    assert.is_number(again:allow())
    assert.equal(1, again:status().statistics.circuit_opens)
  end)

  it("runs on_change callbacks as tasks and lists breakers", function()
    local cb = breaker.new({ name = "t_change", failure_threshold = 1 })
    local seen = {}
    cb:on_change(function(b, from, to, reason)
      sluice.sleep(0) -- callbacks may yield: they are tasks
      seen[#seen + 1] = { b:name(), from, to, reason }
    end)
    cb:failure(cb:allow())
    assert.same({}, seen) -- not run inline
    wait_for("the callback", function() return #seen > 0 end)
    assert.same({ { "t_change", "closed", "open", "failure_threshold" } }, seen)
    assert.equal(cb, breaker.all().t_change)
  end)

  it("name(), stats() and close(): a closed breaker answers name and stats, raises otherwise", function()
    local clock = fake_clock()
    local cb = breaker.new({ name = "t_handle", clock = clock.fn })
    local changes = 0
    cb:on_change(function() changes = changes + 1 end)
    assert.equal("t_handle", cb:name())
    assert.equal("unknown", breaker.new({}):name())
    for _ = 1, 5 do cb:failure(cb:allow()) end
    local st = cb:stats()
    -- status() and metrics() in one table, with the name
    local want = cb:status()
    for k, v in pairs(cb:metrics()) do want[k] = v end
    want.name = "t_handle"
    assert.same(want, st)
    assert.same({ "open", 5, T0 + 300, 1 },
      { st.state, st.statistics.total_failures, st.open_until, st.statistics.circuit_opens })
    assert.equal(cb, breaker.get("t_handle"))
    assert.is_true(cb:close())
    assert.is_false(cb:close())
    assert.is_nil(breaker.get("t_handle")) -- out of the registry
    assert.equal("t_handle", cb:name())
    clock.t = T0 + 1000 -- the clock is let go: time stands still for a closed breaker
    assert.same(st, cb:stats())
    for _, call in ipairs({
      function() cb:allow() end, function() cb:success() end, function() cb:status() end,
      function() cb:metrics() end, function() cb:reset() end, function() cb:snapshot() end,
      function() cb:can_attempt() end, function() cb:on_change(print) end,
    }) do
      assert.has_error(call, "sluice.breaker: breaker 't_handle' is closed")
    end
    wait_for("the callback", function() return changes > 0 end)
    assert.equal(1, changes) -- closed -> open, before close(); nothing after
  end)

  it("validates options, naming the bad one", function()
    assert.has_error(function() breaker.new({ failure_treshold = 5 }) end,
      "sluice.breaker.new: unknown option 'failure_treshold'")
    assert.has_error(function() breaker.new({ timeout = "300" }) end,
      "sluice.breaker.new: option 'timeout' must be a finite number > 0, got string")
    assert.has_error(function() breaker.new({ failure_threshold = 2.5 }) end,
      "sluice.breaker.new: option 'failure_threshold' must be an integer >= 1, got 2.5")
    assert.has_error(function() breaker.new({ mode = "off" }) end,
      "sluice.breaker.new: option 'mode' must be 'normal', 'metrics_only' or 'disabled', got 'off'")
    assert.has_error(function() breaker.new({ window = { kind = "count" } }) end,
      "sluice.breaker.new: unknown option 'window.kind'")
    assert.has_error(function() breaker.new({ failure_threshold = 0 }) end,
      "sluice.breaker.new: option 'failure_threshold' must be an integer >= 1, got 0")
    assert.has_error(function() breaker.new({ window = { failure_rate = 0 } }) end,
      "sluice.breaker.new: option 'window.failure_rate' must be a number in (0, 1], got 0")
    assert.has_error(function() breaker.new({ half_open_max_calls = 5000 }) end,
      "sluice.breaker.new: option 'half_open_max_calls' must be an integer in [1, 1024], got 5000")
    -- the checks across options are the core's, naming both
    assert.has_error(function() breaker.new({ timeout = 20, max_timeout = 10 }) end,
      "sluice.breaker.new: max_timeout must be finite and >= timeout")
    assert.has_error(function() breaker.new("x") end)
  end)
end)
