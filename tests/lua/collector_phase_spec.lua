-- collector.phase and start{phase = true}: a deterministic offset within
-- each period per collector name, so that many collectors of one interval
-- are spread over it instead of all due in the same millisecond.
local sluice = require "sluice"
local collector = require "sluice.collector"
local wait_for = require("support.wait").wait_for

-- wall-clock time of a monotonic instant (the two clocks read together)
local function wall_of(mono)
  return sluice.time() + (mono - sluice.now())
end

describe("collector.phase", function()
  it("is FNV-1a of the name as a fraction of 2^32, times the interval", function()
    -- FNV-1a 32: c1 -> 2284445657, binance_klines -> 328592350, "" -> 2166136261
    assert.equal(2284445657 / 2^32 * 60, collector.phase("c1", 60))
    assert.equal(2284445657 / 2^32, collector.phase("c1", 1))
    assert.equal(2234112800 / 2^32, collector.phase("c2", 1))
    assert.equal(328592350 / 2^32 * 60, collector.phase("binance_klines", 60))
    assert.equal(2166136261 / 2^32 * 5, collector.phase("", 5))
    assert.equal(345756173 / 2^32 * 60, collector.phase("feed/a", 60))
  end)

  it("spreads 10,000 names over the period: 998 of the 1,000 ms of a 1 s period hold some, none more than 25", function()
    local per = {}
    for i = 1, 10000 do
      local ms = math.floor(collector.phase("c" .. i, 1) * 1000)
      per[ms] = (per[ms] or 0) + 1
    end
    local most, used = 0, 0
    for _, n in pairs(per) do
      used = used + 1
      if n > most then most = n end
    end
    -- 10 a millisecond on average; the values for these names (a uniform
    -- random draw: about 0.05 empty milliseconds, the fullest about 22)
    assert.equal(998, used)
    assert.equal(25, most)
  end)

  it("refuses what is not a name and a positive finite interval", function()
    assert.has_error(function() collector.phase(1, 1) end,
      "sluice.collector.phase: bad argument #1 (string expected, got number)")
    assert.has_error(function() collector.phase("a", 0) end,
      "sluice.collector.phase: bad argument #2 (finite number > 0 expected, got 0)")
    assert.has_error(function() collector.phase("a", math.huge) end,
      "sluice.collector.phase: bad argument #2 (finite number > 0 expected, got inf)")
  end)
end)

describe("collector:start{phase = true}", function()
  it("runs at the wall-clock instants where time mod interval is the phase", function()
    local runs = {}
    local c = collector.new(collector.define({
      name = "phase_feed", limiter = false, breaker = false, retry = false, interval = 0.25,
      collect = function(self) runs[#runs + 1] = self:due() return {} end,
    }))
    local ph = collector.phase("phase_feed", 0.25)
    c:start({ phase = true })
    finally(function() c:stop() end)
    wait_for("two runs", function() return #runs >= 2 end)
    for i = 1, 2 do
      local off = wall_of(runs[i]) % 0.25
      local d = math.min(math.abs(off - ph), 0.25 - math.abs(off - ph))
      assert.is_true(d < 1e-3, string.format("run %d at offset %.6f, phase %.6f", i, off, ph))
    end
    assert.near(0.25, runs[2] - runs[1], 1e-9)
  end)

  it("gives each dataset the phase of collector/dataset, after first_delay", function()
    local due = {}
    local c = collector.new(collector.define({
      name = "phase_ds", limiter = false, breaker = false, retry = false,
      datasets = {
        a = { interval = 0.3, collect = function(self) due.a = due.a or self:due("a") return {} end },
        b = { interval = 0.2, first_delay = 0.1, collect = function(self)
          due.b = due.b or self:due("b") return {} end },
      },
    }))
    local t0 = sluice.now()
    c:start({ phase = true, first_delay = 0.05 })
    finally(function() c:stop() end)
    wait_for("both datasets", function() return due.a and due.b end)
    for name, iv in pairs({ a = 0.3, b = 0.2 }) do
      local ph = collector.phase("phase_ds/" .. name, iv)
      local off = wall_of(due[name]) % iv
      local d = math.min(math.abs(off - ph), iv - math.abs(off - ph))
      assert.is_true(d < 1e-3, string.format("%s at offset %.6f, phase %.6f", name, off, ph))
    end
    -- not before the delays, and within one interval after them
    assert.is_true(due.a >= t0 + 0.05 and due.a < t0 + 0.05 + 0.3 + 0.01)
    assert.is_true(due.b >= t0 + 0.15 and due.b < t0 + 0.15 + 0.2 + 0.01)
  end)

  it("follows a run that overran its period by the next instant of its phase", function()
    local runs, slow = {}, true
    local c = collector.new(collector.define({
      name = "phase_slow", limiter = false, breaker = false, retry = false, interval = 0.2,
      collect = function(self)
        runs[#runs + 1] = { due = self:due() }
        if slow then slow = false sluice.sleep(0.3) end -- overruns its 0.2 s period
        runs[#runs].done = sluice.now()
        return {}
      end,
    }))
    local ph = collector.phase("phase_slow", 0.2)
    c:start({ phase = true })
    finally(function() c:stop() end)
    wait_for("two runs", function() return #runs >= 2 end)
    local off = wall_of(runs[2].due) % 0.2
    local d = math.min(math.abs(off - ph), 0.2 - math.abs(off - ph))
    assert.is_true(d < 1e-3, string.format("offset %.6f, phase %.6f", off, ph))
    assert.is_true(runs[2].due >= runs[1].done and runs[2].due < runs[1].done + 0.2)
  end)

  it("refuses a phase that is not a boolean", function()
    local c = collector.new(collector.define({ name = "phase_bad", limiter = false,
      collect = function() return {} end }))
    assert.has_error(function() c:start({ phase = 1 }) end)
  end)
end)
