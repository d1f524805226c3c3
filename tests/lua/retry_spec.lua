-- sluice.retry: policies, delays, the budget, with injected clock and sleep.
local retry = require "sluice.retry"

local function fake()
  local f = { t = 0, slept = {} }
  f.clock = function() return f.t end
  f.sleep = function(s) f.slept[#f.slept + 1] = s; f.t = f.t + s end
  return f
end

describe("sluice.retry", function()
  it("passes the arguments after fn on to every attempt", function()
    local f = fake()
    local p = retry.new{ strategy = "fixed", base_delay = 1, max_attempts = 3, budget = false,
      clock = f.clock, sleep = f.sleep }
    local seen = {}
    local r = {}
    local value, err, info = p:run(function(attempt, a, b, c)
      seen[#seen + 1] = { attempt, a, b, c }
      if attempt < 3 then return nil, "no", { retryable = true } end
      return "yes"
    end, r, "x", nil)
    assert.same({ "yes", nil, { attempts = 3 } }, { value, err, info })
    assert.equal(3, #seen)
    for i = 1, 3 do
      assert.equal(i, seen[i][1])
      assert.equal(r, seen[i][2])
      assert.equal("x", seen[i][3])
      assert.is_nil(seen[i][4])
    end
    assert.same({ 1, 1 }, f.slept)
  end)

  it("computes deterministic delays per strategy, capped at max_delay", function()
    local p = retry.new({ strategy = "exponential", base_delay = 0.5, max_delay = 3 })
    assert.same({ 0.5, 1, 2, 3, 3 }, { p:delay(1), p:delay(2), p:delay(3), p:delay(4), p:delay(5) })
    p = retry.new({ strategy = "linear", base_delay = 2, max_delay = 5 })
    assert.same({ 2, 4, 5 }, { p:delay(1), p:delay(2), p:delay(3) })
    p = retry.new({ strategy = "fixed", base_delay = 1.5 })
    assert.same({ 1.5, 1.5 }, { p:delay(1), p:delay(7) })
  end)

  it("spreads full-jitter delays over [0, cap)", function()
    local p = retry.new({ base_delay = 1, max_delay = 30 })
    local lo, hi = math.huge, 0
    for _ = 1, 2000 do
      local d = p:delay(3)
      lo, hi = math.min(lo, d), math.max(hi, d)
      assert.is_true(d >= 0 and d < 4)
    end
    assert.is_true(lo < 0.1 and hi > 3.9)
  end)

  it("adaptive waits exactly what Retry-After says, up to max_retry_after", function()
    local p = retry.new({ strategy = "adaptive", max_retry_after = 120 })
    assert.equal(45, p:delay(1, 45))
    assert.equal(120, p:delay(1, 9999))
    assert.is_true(p:delay(1) < 1)
  end)

  it("retries retryable failures up to max_attempts, sleeping in between", function()
    local f = fake()
    local p = retry.new({ strategy = "exponential", base_delay = 1, max_attempts = 4,
      clock = f.clock, sleep = f.sleep, budget = false })
    local calls = 0
    local v, err, info = p:run(function(attempt)
      calls = calls + 1
      assert.equal(calls, attempt)
      return nil, "503", { retryable = true }
    end)
    assert.is_nil(v)
    assert.equal("503", err)
    assert.same({ attempts = 4 }, info)
    assert.same({ 1, 2, 4 }, f.slept)
  end)

  it("returns at once on success and on a non-retryable failure", function()
    local f = fake()
    local p = retry.new({ clock = f.clock, sleep = f.sleep })
    assert.same({ "ok", nil, { attempts = 1 } }, { p:run(function() return "ok" end) })
    local n = 0
    local v, err, info = p:run(function() n = n + 1; return nil, "400 bad request" end)
    assert.same({ nil, "400 bad request", { attempts = 1 } }, { v, err, info })
    assert.equal(1, n)
    -- succeeds on the third attempt
    n = 0
    p = retry.new({ clock = f.clock, sleep = f.sleep, budget = false })
    v = p:run(function() n = n + 1; if n < 3 then return nil, "x", { retryable = true } end; return n end)
    assert.equal(3, v)
  end)

  it("honours Retry-After with the adaptive strategy", function()
    local f = fake()
    local p = retry.new({ strategy = "adaptive", clock = f.clock, sleep = f.sleep, budget = false })
    p:run(function(a) if a == 1 then return nil, "429", { retryable = true, retry_after = 7 } end; return true end)
    assert.same({ 7 }, f.slept)
  end)

  it("stops a retry storm with the budget", function()
    local f = fake()
    local p = retry.new({ strategy = "fixed", base_delay = 0, max_attempts = 5,
      clock = f.clock, sleep = f.sleep, budget = { ratio = 0.1, min_per_second = 1 } })
    local attempts = 0
    for _ = 1, 100 do
      p:run(function() attempts = attempts + 1; return nil, "down", { retryable = true } end)
    end
    -- without a budget: 500 attempts; with it: 100 + 10 deposited + 1 floor
    assert.equal(111, attempts)
    assert.equal(100, p:refused()) -- every call ended on a refused retry
  end)

  it("name(), stats() and close(): counts calls, attempts, retries and refusals", function()
    local f = fake()
    local p = retry.new({ name = "r_handle", strategy = "fixed", base_delay = 0.5, max_attempts = 3,
      clock = f.clock, sleep = f.sleep, budget = { ratio = 0, min_per_second = 1, ttl = 10 } })
    assert.equal("r_handle", p:name())
    assert.equal("retry", retry.new():name())
    p:run(function() return "ok" end)
    -- 1 retry allowed per second: the second is refused
    p:run(function() return nil, "down", { retryable = true } end)
    local want = { name = "r_handle", strategy = "fixed", max_attempts = 3, base_delay = 0.5,
      max_delay = 30, max_retry_after = 300, budget = true, calls = 2, attempts = 3, retries = 1,
      refused = 1 }
    assert.same(want, p:stats())
    assert.is_true(p:close())
    assert.is_false(p:close())
    assert.equal("r_handle", p:name())
    assert.same(want, p:stats())
    for _, call in ipairs({
      function() p:run(function() return 1 end) end, function() p:delay(1) end,
      function() p:refused() end,
    }) do
      assert.has_error(call, "sluice.retry: policy 'r_handle' is closed")
    end
    assert.same({ name = "retry", strategy = "exponential_jitter", max_attempts = 3, base_delay = 1,
      max_delay = 30, max_retry_after = 300, budget = false, calls = 0, attempts = 0, retries = 0,
      refused = 0 }, retry.new({ budget = false }):stats())
  end)

  it("validates options, naming the bad one", function()
    assert.has_error(function() retry.new({ strategy = "exponentail" }) end,
      "sluice.retry.new: option 'strategy' must be 'fixed', 'linear', 'exponential', 'exponential_jitter' or 'adaptive', got 'exponentail'")
    assert.has_error(function() retry.new({ max_attempts = 0 }) end,
      "sluice.retry.new: option 'max_attempts' must be an integer >= 1, got 0")
    assert.has_error(function() retry.new({ retries = 3 }) end,
      "sluice.retry.new: unknown option 'retries'")
    assert.has_error(function() retry.new({ budget = { ratoi = 1 } }) end,
      "sluice.retry.new: unknown option 'budget.ratoi'")
  end)
end)
