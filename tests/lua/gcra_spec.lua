-- sluice.gcra against a private redis-server on a loopback port.
local sluice = require "sluice"
local redis = require "sluice.redis"
local gcra = require "sluice.gcra"

local redis_server = require "support.redis_server"
local start_server = redis_server.start
local dead_port = redis_server.dead_port
local wait_for = require("support.wait").wait_for

local MS = 0.001
local SLACK = 3 * MS -- a few ms for time passing between our clock and Redis TIME

describe("sluice.gcra", function()
  local srv, red
  local n = 0
  local function key()
    n = n + 1
    return "gcra:test" .. n
  end

  setup(function() srv, red = redis_server.with_client() end)
  teardown(function() if srv then srv:shutdown(red) end end)

  it("rejects bad options, naming them", function()
    assert.has_error(function() gcra.new { redis = red, name = "x", rate = 1, brust = 2 } end,
      "sluice.gcra.new: unknown option 'brust'")
    assert.has_error(function() gcra.new { redis = red, name = "x" } end,
      "sluice.gcra.new: option 'rate' is required")
    assert.has_error(function() gcra.new { redis = red, name = "x", rate = "5" } end,
      "sluice.gcra.new: option 'rate' must be a finite number > 0, got string")
    assert.has_error(function() gcra.new { redis = red, name = "x", rate = 0 } end,
      "sluice.gcra.new: option 'rate' must be a finite number > 0, got 0")
    assert.has_error(function() gcra.new { redis = red, name = "x", rate = 1, burst = 0.5 } end,
      "sluice.gcra.new: option 'burst' must be a finite number >= 1, got 0.5")
    assert.has_error(function() gcra.new { redis = red, name = "x", rate = 1, max_wait = -1 } end,
      "sluice.gcra.new: option 'max_wait' must be a number >= 0, got -1")
    assert.has_error(function() gcra.new { redis = red, rate = 1 } end,
      "sluice.gcra.new: option 'key' or 'name' is required")
    assert.has_error(function() gcra.new { redis = 5, name = "x", rate = 1 } end,
      "sluice.gcra.new: option 'redis' must be a redis:// url or a sluice.redis client, got number")
    assert.has_error(function() gcra.new { redis = "http://x", name = "x", rate = 1 } end,
      "sluice.gcra.new: option 'redis': url must start with redis://")
    assert.has_error(function() gcra.new() end)
    local g = gcra.new { redis = red, name = "opts", rate = 4 }
    assert.equal("gcra:opts", g.key)
    assert.equal(1, g.burst)
    assert.equal(30, g.max_wait)
    assert.equal("k", gcra.new { redis = red, key = "k", rate = 4 }.key)
    assert.has_error(function() g:take(2) end,
      "sluice.gcra.take: cost 2 exceeds burst 1 and can never be admitted")
    assert.has_error(function() g:wait(0) end,
      "sluice.gcra.wait: bad argument #1 'cost' (number > 0 expected)")
  end)

  it("rate 2, burst 1: of 20 immediate takes exactly one goes, the rest wait out the interval", function()
    -- A 500 ms interval: the 19 refused takes (one Redis round trip each)
    -- fit in it even on a loaded machine, where 20 ms did not.
    local INTERVAL = 500 * MS
    local g = gcra.new { redis = red, key = key(), rate = 2 }
    local t0 = sluice.now()
    local ok, ra = g:take()
    assert.is_true(ok)
    assert.equal(0, ra)
    local admitted, prev = 1, math.huge
    for _ = 2, 20 do
      ok, ra = g:take()
      local elapsed = sluice.now() - t0
      if ok then admitted = admitted + 1 else
        assert.is_false(ok)
        -- the TAT is t0 + 500 ms; a refusal changes nothing: retry = TAT - now
        assert.is_true(ra <= INTERVAL + 1e-6, "retry_after " .. ra)
        assert.is_true(ra >= INTERVAL - elapsed - SLACK, "retry_after " .. ra .. " after " .. elapsed)
        assert.is_true(ra <= prev, "retry_after never grows")
        prev = ra
      end
    end
    assert.is_true(sluice.now() - t0 < INTERVAL, "the takes were immediate")
    assert.equal(1, admitted)
    -- once the interval has passed, the next one goes
    sluice.sleep(prev + MS)
    assert.is_true((g:take()))
    assert.is_false((g:take()))
  end)

  it("the TAT is stored with an expiry a little past the burst window", function()
    local k = key()
    local g = gcra.new { redis = red, key = k, rate = 2, burst = 3 }
    assert.is_true((g:take(2)))
    local ttl = red:call("PTTL", k)
    assert.is_true(ttl > 1000 and ttl <= 2000, "pttl " .. ttl)
    local t = red:call("TIME")
    local now_us = tonumber(t[1]) * 1e6 + tonumber(t[2])
    local tat = tonumber(red:call("GET", k))
    assert.is_true(math.abs(tat - now_us - 1e6) < 50000, "tat is now + 2 cells")
  end)

  it("burst 5: five go at once, then take(k) must wait k intervals", function()
    local g = gcra.new { redis = red, key = key(), rate = 50, burst = 5 }
    local t0 = sluice.now()
    local admitted = 0
    for _ = 1, 8 do
      if g:take() then admitted = admitted + 1 end
    end
    assert.equal(5, admitted)
    for k = 1, 5 do
      local ok, ra = g:take(k)
      local elapsed = sluice.now() - t0
      assert.is_false(ok)
      assert.is_true(ra <= k * 20 * MS + 1e-6, k .. ": " .. ra)
      assert.is_true(ra >= k * 20 * MS - elapsed - SLACK, k .. ": " .. ra)
    end
  end)

  it("a cost of 3 consumes three cells", function()
    local g = gcra.new { redis = red, key = key(), rate = 50, burst = 5 }
    local t0 = sluice.now()
    assert.is_true((g:take(3)))
    local ok, ra = g:take(3) -- 6 cells > 5
    assert.is_false(ok)
    assert.is_true(ra <= 20 * MS + 1e-6 and ra >= 20 * MS - (sluice.now() - t0) - SLACK, ra)
    assert.is_true((g:take(2))) -- 3 + 2 = 5: the burst is used up
    ok, ra = g:take(1)
    assert.is_false(ok)
    assert.is_true(ra <= 20 * MS + 1e-6 and ra >= 20 * MS - (sluice.now() - t0) - SLACK, ra)
    ok, ra = g:take(3)
    assert.is_false(ok)
    assert.is_true(ra <= 60 * MS + 1e-6 and ra >= 60 * MS - (sluice.now() - t0) - SLACK, ra)
  end)

  it("wait() paces N requests at rate r over (N - 1) / r", function()
    local g = gcra.new { redis = red, key = key(), rate = 20 }
    local t0 = sluice.now()
    for _ = 1, 11 do
      assert.is_number(g:wait())
    end
    local took = sluice.now() - t0
    assert.is_true(took >= 0.5 - SLACK, "took " .. took)
    assert.is_true(took < 0.5 + 1.5, "took " .. took)
    -- from several tasks at once: the same pace, each admitted once
    local tasks = {}
    t0 = sluice.now()
    for i = 1, 10 do tasks[i] = sluice.spawn(function() return g:wait() end) end
    for i = 1, 10 do
      local ok, waited = sluice.wait(tasks[i])
      assert.is_true(ok)
      assert.is_number(waited)
    end
    took = sluice.now() - t0
    -- the previous pacing left the TAT about now: ten more cells span ~ 10 intervals
    assert.is_true(took >= 0.45 - SLACK, "took " .. took)
    assert.is_true(took < 0.5 + 0.3, "took " .. took)
  end)

  it("wait() gives up with timeout when the next chance is past max_wait", function()
    local g = gcra.new { redis = red, key = key(), rate = 1, max_wait = 0.2 }
    assert.is_number(g:wait())
    local t0 = sluice.now()
    local w, err = g:wait()
    assert.is_nil(w)
    assert.equal("timeout", err)
    assert.is_true(sluice.now() - t0 < 0.1, "gave up at once")
  end)

  it("two objects on two clients share the quota of one key", function()
    local k = key()
    local red2 = redis.connect { url = srv:url() }
    finally(function() red2:close() end)
    local g1 = gcra.new { redis = red, key = k, rate = 50, burst = 2 }
    local g2 = gcra.new { redis = red2, key = k, rate = 50, burst = 2 }
    assert.is_true((g1:take()))
    assert.is_true((g2:take()))
    assert.is_false((g1:take()))
    assert.is_false((g2:take()))
    -- paced together: 2 x 10 waits at 50/s take ~ (20 - 2) / 50 s
    local t0 = sluice.now()
    local tasks = {}
    for i = 1, 2 do
      local g = i == 1 and g1 or g2
      tasks[i] = sluice.spawn(function()
        for _ = 1, 10 do assert(g:wait()) end
        return true
      end)
    end
    for i = 1, 2 do assert.same({ true, true }, { sluice.wait(tasks[i]) }) end
    local took = sluice.now() - t0
    assert.is_true(took >= 18 / 50 - SLACK, "took " .. took)
    assert.is_true(took < 20 / 50 + 0.25, "took " .. took)
  end)

  it("a url makes its own client", function()
    local g = gcra.new { redis = srv:url(), key = key(), rate = 10 }
    assert.is_true((g:take()))
    assert.is_false((g:take()))
    g.client:close()
  end)

  it("name(), stats() and close(): close closes the client it made, not one it was given", function()
    red:call("DEL", "gcra:g_handle")
    local g = gcra.new { redis = srv:url(), name = "g_handle", rate = 10 }
    assert.equal("g_handle", g:name())
    assert.same({ true, 0 }, { g:take() })
    assert.is_false((g:take()))
    local none, why = g:wait(1, 0) -- the next slot is 0.1 s away
    assert.same({ nil, "timeout" }, { none, why })
    local w = g:wait()
    assert.is_number(w)
    assert.same({ name = "g_handle", key = "gcra:g_handle", rate = 10, burst = 1, max_wait = 30,
      horizon = 1, admitted = 2, waited_total = w, timeouts = 1, refused = 1, errors = 0, queued = 0,
      closed = false }, g:stats())
    local client = g.client
    assert.is_true(g:close())
    assert.is_false(g:close())
    assert.equal("closed", client:status())
    assert.equal("g_handle", g:name())
    assert.is_true(g:stats().closed)
    for _, call in ipairs({ function() g:take() end, function() g:wait() end,
      function() g:set_rate(5) end }) do
      assert.has_error(call, "sluice.gcra: gcra 'g_handle' is closed")
    end
    local k = key()
    local given = gcra.new { redis = red, key = k, rate = 10 }
    assert.equal(k, given:name()) -- no name: the key
    assert.is_true(given:close())
    assert.equal("PONG", red:call("PING"))
  end)

  it("with Redis unreachable, take and wait fail fast with redis: <err>", function()
    local c, c2, s2
    -- (busted keeps one finally per test: the last one given)
    finally(function()
      if c then c:close() end
      if c2 then c2:close() end
      if s2 then s2:stop(true, true) end
    end)
    c = redis.connect { url = ("redis://127.0.0.1:%d/0"):format(dead_port()), connect_timeout = 0.3 }
    local g = gcra.new { redis = c, key = key(), rate = 10 }
    local t0 = sluice.now()
    local ok, err = g:take()
    assert.is_nil(ok)
    assert.matches("^redis: ", err)
    local w, err2 = g:wait()
    assert.is_nil(w)
    assert.matches("^redis: ", err2)
    assert.is_true(sluice.now() - t0 < 0.8, "fast")
    local st = g:stats()
    assert.same({ 0, 2 }, { st.admitted, st.errors })
    -- a server that dies under a working limiter
    s2 = start_server()
    c2 = redis.connect { url = s2:url() }
    local g2 = gcra.new { redis = c2, key = key(), rate = 1000 }
    assert.is_number(g2:wait())
    s2:stop(true, true)
    t0 = sluice.now()
    w, err2 = g2:wait()
    assert.is_nil(w)
    assert.matches("^redis: ", err2)
    assert.is_true(sluice.now() - t0 < 0.5, "fast")
  end)
  it("wait() reserves slots: 50 waiters, one EVALSHA each, admitted in order at the rate", function()
    local function evalsha_calls()
      local info = red:call("INFO", "commandstats")
      return tonumber(info:match("cmdstat_evalsha:calls=(%d+)") or 0)
    end
    local g = gcra.new { redis = red, key = key(), rate = 100 }
    -- no later than the cell taken below (taking it after the INFO round
    -- trip put it up to that round trip late on a loaded machine)
    local t0 = sluice.now()
    assert.is_true((g:take())) -- loads the script
    local before = evalsha_calls()
    local at, tasks = {}, {}
    for i = 1, 50 do
      tasks[i] = sluice.spawn(function()
        assert.is_number(g:wait())
        at[#at + 1] = sluice.now() - t0
      end)
    end
    for i = 1, 50 do assert.is_true((sluice.wait(tasks[i]))) end
    assert.equal(50, evalsha_calls() - before)
    assert.equal(50, #at)
    -- the k-th admission is no earlier than k intervals after the cell
    -- taken first: 10 ms apart, whatever the timers did
    for k = 1, 50 do
      assert.is_true(at[k] >= k * 0.01 - SLACK, k .. ": " .. at[k])
    end
    assert.is_true(at[50] < 0.5 + 0.3, "took " .. at[50])
  end)

  it("wait() with a cost above burst waits for the cells; timeout says when to ask again", function()
    local g = gcra.new { redis = red, key = key(), rate = 50, max_wait = 1 }
    local t0 = sluice.now()
    assert.is_number(g:wait(3)) -- 3 cells, 1 of tolerance: goes after 2 intervals
    local took = sluice.now() - t0
    assert.is_true(took >= 0.04 - SLACK and took < 0.04 + 0.1, "took " .. took)
    local w, err, retry = g:wait(1, 0.01) -- the next cell is 20 ms away
    assert.is_nil(w)
    assert.equal("timeout", err)
    assert.is_true(retry > 0 and retry <= 0.01 + SLACK, "retry_after " .. retry)
    assert.has_error(function() g:wait(1, -1) end,
      "sluice.gcra.wait: bad argument #2 'max_wait' (number >= 0 expected)")
    assert.has_error(function() g:set_rate(0) end,
      "sluice.gcra.set_rate: bad argument #1 'rate' (number > 0 expected)")
    g:set_rate(25)
    assert.equal(25, g.rate)
  end)
  it("reserves at most a horizon ahead: the rest of the queue waits its turn locally", function()
    local k = key()
    local g = gcra.new { redis = red, key = k, rate = 50, horizon = 0.2 }
    local t0 = sluice.now()
    local tasks = {}
    for i = 1, 20 do tasks[i] = sluice.spawn(function() return g:wait() end) end
    -- the first asks answered: those in reach reserved, one refused is
    -- the poller and the rest line up locally
    wait_for("waiters queued", function() return g:stats().queued > 0 end)
    -- 20 waiters, but only ~0.2 s (+ the one cell of burst) reserved in Redis
    local t = red:call("TIME")
    local ahead = tonumber(red:call("GET", k)) - (tonumber(t[1]) * 1e6 + tonumber(t[2]))
    assert.is_true(ahead <= (0.2 + 0.02) * 1e6 + 5000, "TAT " .. ahead / 1e6 .. " s ahead")
    for i = 1, 20 do
      local ok, waited = sluice.wait(tasks[i])
      assert.is_true(ok)
      assert.is_number(waited)
    end
    local took = sluice.now() - t0
    assert.is_true(took >= 19 / 50 - SLACK and took < 20 / 50 + 0.3, "took " .. took)
    assert.has_error(function() gcra.new { redis = red, key = k, rate = 1, horizon = 0 } end,
      "sluice.gcra.new: option 'horizon' must be a finite number > 0, got 0")
    -- a slot past max_wait is refused at once, even beyond the horizon
    g = gcra.new { redis = red, key = key(), rate = 1, horizon = 0.1, max_wait = 3 }
    assert.is_number(g:wait())
    assert.is_number(g:wait(1, 1.5)) -- the next cell, a second away
    t0 = sluice.now()
    local w, err, retry = g:wait(1, 0.5)
    assert.is_nil(w)
    assert.equal("timeout", err)
    assert.is_true(retry > 0.4 and retry <= 0.5 + SLACK, "retry_after " .. retry)
    assert.is_true(sluice.now() - t0 < 0.1, "at once")
  end)
  it("beyond the horizon one waiter asks for all; a killed asker is replaced", function()
    local function evalsha_calls()
      return tonumber(red:call("INFO", "commandstats"):match("cmdstat_evalsha:calls=(%d+)") or 0)
    end
    local g = gcra.new { redis = red, key = key(), rate = 20, horizon = 0.1 }
    assert.is_true((g:take()))
    local before = evalsha_calls()
    local tasks = {}
    for i = 1, 10 do tasks[i] = sluice.spawn(function() return g:wait() end) end
    for i = 1, 10 do
      local ok, w = sluice.wait(tasks[i])
      assert.is_true(ok)
      assert.is_number(w)
    end
    -- 10 slots 50 ms apart with a 100 ms horizon: the 2 or 3 in reach are
    -- reserved at once, then one waiter asks about once a slot (waiters
    -- each asking on their own would take ~ 10 x 10 / 2)
    local calls = evalsha_calls() - before
    assert.is_true(calls >= 10 and calls <= 25, calls .. " EVALSHA for 10 admissions")
    -- the asker is killed while it waits for its slot to come within reach
    g = gcra.new { redis = red, key = key(), rate = 10, horizon = 0.15 }
    for i = 1, 6 do tasks[i] = sluice.spawn(function() return g:wait() end) end
    local asker = wait_for("an asker, the others queued", function()
      return g:stats().queued > 0 and g._poller
    end)
    assert.is_true(sluice.kill(asker))
    local t0 = sluice.now()
    local admitted = 0
    for i = 1, 6 do
      if tasks[i] ~= asker then
        local ok, w = sluice.wait(tasks[i])
        assert.is_true(ok)
        assert.is_number(w)
        admitted = admitted + 1
      end
    end
    assert.equal(5, admitted)
    assert.is_true(sluice.now() - t0 < 1.5, "took " .. (sluice.now() - t0))
  end)
end)
