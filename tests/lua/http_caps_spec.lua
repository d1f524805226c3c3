-- sluice.http's connection caps (http.configure): their defaults, the
-- cache they bound, and requests queued under them. A file of its own: the
-- first test needs a connection cache no other test has filled.
local sluice = require "sluice"
local http = require "sluice.http"
local server = require "sluice.server"

describe("sluice.http connection caps", function()
  local nginx

  setup(function()
    nginx = require("support.nginx").start({
      locations = [[
        location = /conn { default_type text/plain; return 200 "$connection"; }
      ]],
    })
  end)

  teardown(function()
    http.configure({ defaults = true })
    if nginx then nginx:stop() end
  end)

  -- n concurrent GETs of /conn -> the number of distinct connections that
  -- carried them, and how many of them were reused ones.
  local function burst(n)
    local tasks = {}
    for i = 1, n do
      tasks[i] = sluice.spawn(function()
        local res = assert(http.get(nginx:url("/conn")))
        return res.body, res.reused
      end)
    end
    local seen, distinct, reused = {}, 0, 0
    for i = 1, n do
      local ok, conn, was_reused = sluice.wait(tasks[i])
      assert.is_true(ok)
      if not seen[conn] then seen[conn], distinct = true, distinct + 1 end
      if was_reused then reused = reused + 1 end
    end
    return distinct, reused
  end

  -- A server whose /hold handler keeps each request until let go (or 2 s).
  local function holding_server()
    local srv = assert(server.listen({ port = 0 }))
    local held = {}
    srv:route("GET", "/hold", function()
      held[#held + 1] = sluice.current()
      sluice.park(2)
      return 200, "held"
    end)
    return srv, held, "http://127.0.0.1:" .. srv.port .. "/hold"
  end

  local function wait_for(cond)
    for _ = 1, 1000 do
      if cond() then return true end
      sluice.sleep(0.005)
    end
    return cond()
  end

  -- first: the cache must hold only this test's connections
  it("keep no more than max_cached_connections open once requests end", function()
    local srv, held, url = holding_server()
    http.configure({ max_host_connections = 8, max_cached_connections = 2 })
    finally(function()
      for _, h in ipairs(held) do sluice.unpark(h) end
      http.configure({ defaults = true })
      srv:close()
    end)
    -- n requests held by the server at once (so on n connections), then
    -- let go -> the set of client ports, and how many were reused ones
    local function held_burst(n)
      local before, tasks = #held, {}
      for i = 1, n do tasks[i] = sluice.spawn(function() return assert(http.get(url)) end) end
      assert.is_true(wait_for(function() return #held == before + n end))
      for i = before + 1, before + n do sluice.unpark(held[i]) end
      local reused = 0
      for i = 1, n do
        local ok, res = sluice.wait(tasks[i])
        assert.is_true(ok)
        if res.reused then reused = reused + 1 end
      end
      return reused
    end
    assert.equal(0, held_burst(8))
    -- 8 were open; as the burst ended all but 2 were closed (and under load
    -- past the cache's size, each request that ends closes one:
    -- max_cached_connections caps what stays open, it is not a pool)
    assert.equal(2, held_burst(3))
  end)

  it("are on by default: 64 per host, 1024 in all, 256 kept open", function()
    assert.same({ max_host_connections = 64, max_total_connections = 1024, max_cached_connections = 256 },
      http.configure())
    -- 100 requests at once to one host ride on 64 connections, not 100
    local distinct = burst(100)
    assert.equal(64, distinct)
  end)

  it("keeps the timeout of a request queued for a connection", function()
    local srv, held, url = holding_server()
    http.configure({ max_host_connections = 1 })
    finally(function()
      for _, h in ipairs(held) do sluice.unpark(h) end
      http.configure({ defaults = true })
      srv:close()
    end)
    local first = sluice.spawn(function() return http.get(url) end)
    assert.is_true(wait_for(function() return #held == 1 end))
    -- the one connection is busy: this request waits in sluice's per-origin queue (http_queue.c)
    local t0 = sluice.now()
    local res, err, kind = http.get(url, { timeout = 0.3 })
    local waited = sluice.now() - t0
    assert.is_nil(res)
    assert.equal("timed out after 300 milliseconds waiting for a connection (http.configure caps them)", err)
    assert.equal("timeout", kind)
    assert.is_true(waited >= 0.3 and waited < 1.5, "waited " .. waited)
    assert.equal(1, http.in_flight())
    sluice.unpark(held[1])
    local ok, first_res = sluice.wait(first)
    assert.is_true(ok)
    assert.equal(200, first_res.status)
    assert.equal(0, http.in_flight())
  end)

  it("count a request's time in the queue against its timeout", function()
    local srv, held, url = holding_server()
    http.configure({ max_host_connections = 1 })
    finally(function()
      for _, h in ipairs(held) do sluice.unpark(h) end
      http.configure({ defaults = true })
      srv:close()
    end)
    local first = sluice.spawn(function() return http.get(url) end)
    assert.is_true(wait_for(function() return #held == 1 end))
    local t0 = sluice.now()
    local second = sluice.spawn(function() return http.get(url, { timeout = 0.6 }) end)
    sluice.sleep(0.3)
    sluice.unpark(held[1])
    assert.equal(200, select(2, sluice.wait(first)).status)
    -- the second now has the connection, and 0.3 s of its 0.6 left
    assert.is_true(wait_for(function() return #held == 2 end))
    local ok, res, err, kind = sluice.wait(second)
    local waited = sluice.now() - t0
    assert.is_true(ok)
    assert.is_nil(res)
    assert.equal("timeout", kind)
    assert.matches("^Operation timed out after %d+ milliseconds", err)
    assert.is_true(waited >= 0.6 and waited < 1.2, "waited " .. waited)
  end)

  it("drop a queued request whose task is killed; the queue moves on", function()
    local srv, held, url = holding_server()
    http.configure({ max_host_connections = 1 })
    finally(function()
      for _, h in ipairs(held) do sluice.unpark(h) end
      http.configure({ defaults = true })
      srv:close()
    end)
    local first = sluice.spawn(function() return http.get(url) end)
    assert.is_true(wait_for(function() return #held == 1 end))
    local queued = sluice.spawn(function() return http.get(url) end)
    local third = sluice.spawn(function() return http.get(url) end)
    assert.is_true(wait_for(function() return http.in_flight() == 3 end))
    assert.is_true(sluice.kill(queued))
    assert.equal(2, http.in_flight())
    sluice.unpark(held[1])
    -- the third, not the killed one, gets the connection next
    assert.is_true(wait_for(function() return #held == 2 end))
    sluice.unpark(held[2])
    local ok, res = sluice.wait(third)
    assert.is_true(ok)
    assert.equal(200, res.status)
    assert.equal(200, select(2, sluice.wait(first)).status)
    assert.equal("killed", sluice.status(queued))
    assert.equal(2, #held)
    assert.equal(0, http.in_flight())
  end)

  it("configure{defaults = true} puts every cap back", function()
    assert.same({ max_host_connections = 2, max_total_connections = 0, max_cached_connections = 0 },
      http.configure({ max_host_connections = 2, max_total_connections = 0, max_cached_connections = 0 }))
    assert.same({ max_host_connections = 64, max_total_connections = 1024, max_cached_connections = 7 },
      http.configure({ defaults = true, max_cached_connections = 7 }))
    assert.same({ max_host_connections = 64, max_total_connections = 1024, max_cached_connections = 256 },
      http.configure({ defaults = true }))
  end)
end)
