-- Huge and infinite timeouts given to natives that arm timers: math.huge
-- means "no timeout", a huge finite value is clamped (runtime/core/timeout.c;
-- its C test has the edge cases). Converting such seconds to an integer used
-- to be undefined and came out as "immediately".
local sluice = require "sluice"
local http = require "sluice.http"
local redis = require "sluice.redis"
local server = require "sluice.server"
local redis_server = require "support.redis_server"

describe("huge timeouts", function()
  it("HTTP: math.huge is no timeout, 1e19 is a long one, a tiny one is not none", function()
    local srv = assert(server.listen {})
    finally(function() srv:close() end)
    srv:route("GET", "/slow", function() sluice.sleep(0.1); return 200, "late" end)
    local url = "http://127.0.0.1:" .. srv.port .. "/slow"
    for _, opts in ipairs({
      { timeout = math.huge }, { timeout = 1e19 }, { connect_timeout = math.huge },
      { connect_timeout = 1e300, timeout = math.huge },
    }) do
      local res, err = http.get(url, opts)
      assert.is_nil(err)
      assert.equal("late", res.body)
    end
    -- 0.0001 s used to truncate to 0 ms, which curl reads as "no timeout".
    local res, _, kind = http.get(url, { timeout = 0.0001 })
    assert.is_nil(res)
    assert.equal("timeout", kind)
    assert.equal(0, http.in_flight())
    assert.has_error(function() http.get(url, { timeout = 0 / 0 }) end,
      "sluice.http.get: option 'timeout' must be a number > 0, got nan")
    assert.has_error(function() http.get(url, { max_body = math.huge }) end,
      "sluice.http.get: option 'max_body' must be a finite number > 0, got inf")
  end)

  it("Redis: command_timeout = math.huge or 1e19 does not time out at once", function()
    local rs = redis_server.start()
    finally(function() rs:stop(true, true) end)
    for _, opts in ipairs({
      { command_timeout = math.huge }, { command_timeout = 1e19 },
      { connect_timeout = math.huge, command_timeout = math.huge },
    }) do
      opts.url = "redis://127.0.0.1:" .. rs.port .. "/0"
      local red = redis.connect(opts)
      local t0 = sluice.now()
      -- BLPOP blocks for its own 0.2 s and answers a nil: no timeout of ours.
      local v, err = red:call("BLPOP", "timeouts_spec:none", "0.2")
      assert.is_nil(err)
      assert.is_nil(v)
      assert.is_true(sluice.now() - t0 >= 0.19)
      assert.equal("PONG", red:call("PING"))
      red:close()
    end
  end)
end)
