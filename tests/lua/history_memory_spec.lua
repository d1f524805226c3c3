-- sluice.history's memory: flat over its span. Its rings are made whole
-- when a series is first seen; filled as samples came, they grew by
-- doubling through the first hour (at 500 collectors, 10 MiB of Lua heap
-- over an hour: a slope in the soak's RSS that only ended after an hour).
local history = require "sluice.history"
local log = require "sluice.log"

local function fake(name)
  local c = { name = name }
  function c.counters() return { data_points_collected = 1, failed_requests = 0, total_requests = 1 } end
  function c.health() return "healthy" end
  return c
end

local function live_kib()
  collectgarbage()
  collectgarbage()
  return collectgarbage("count")
end

describe("sluice.history memory", function()
  setup(function() log.output("/dev/null") end)
  teardown(function() log.output("-") end)

  it("takes what its span needs at the first sample, and nothing more over the span", function()
    local app = { order = {} }
    for i = 1, 200 do app.order[i] = fake(string.format("c%03d", i)) end
    local now = 1000
    local h = history.new({ current = function() return app end, clock = function() return now end,
      interval = 10, span = 3600 })
    h:sample()
    local first = live_kib()
    for _ = 2, 360 do
      now = now + 10
      h:sample()
    end
    local full = live_kib()
    -- 200 collectors x 4 rings x 360 slots: before, ~2.5 MiB more by the
    -- end of the span than after the first sample
    assert.is_true(full - first < 256, string.format("grew %.0f KiB over the span", full - first))
    assert.equal(360, #h:view().times)
    h:stop()
  end)
end)
