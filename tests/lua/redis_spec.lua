-- sluice.redis against real redis-server processes on loopback ports.
local sluice = require "sluice"
local redis = require "sluice.redis"

local redis_server = require "support.redis_server"
local start_server = redis_server.start

local function wait_for(pred, limit)
  local deadline = sluice.now() + (limit or 5)
  while not pred() do
    if sluice.now() > deadline then return false end
    sluice.sleep(0.01)
  end
  return true
end

describe("sluice.redis", function()
  local srv, red

  setup(function()
    math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16) % 100000)
    srv = start_server()
    red = redis.connect { url = srv:url(0) }
  end)

  teardown(function()
    if red then red:close() end
    if srv then srv:stop(false, true) end
  end)

  it("rejects bad options and urls, naming them", function()
    assert.has_error(function() redis.connect { url = srv:url(), timeout = 1 } end,
      "sluice.redis.connect: unknown option 'timeout'")
    assert.has_error(function() redis.connect { url = "http://x" } end,
      "sluice.redis.connect: url must start with redis://")
    assert.has_error(function() redis.connect { url = srv:url(), command_timeout = 0 } end,
      "sluice.redis.connect: command_timeout must be > 0")
    assert.same({ host = "127.0.0.1", port = 6380, db = 4, password = "p@ss" },
      redis.parse_url("redis://:p%40ss@localhost:6380/4"))
    assert.same({ host = "10.0.0.1", port = 6379, db = 0 }, redis.parse_url("redis://10.0.0.1"))
  end)

  it("connects in the background and the first call waits for it", function()
    local c = redis.connect { url = srv:url(0) }
    assert.equal("connecting", c:status())
    assert.equal("PONG", c:call("PING"))
    assert.equal("connected", c:status())
    c:close()
  end)

  it("converts every reply type", function()
    assert.equal("OK", red:call("SET", "str", "hello"))          -- status
    assert.equal("PONG", red:call("PING"))
    assert.equal("hello", red:call("GET", "str"))                 -- bulk
    assert.is_nil(red:call("GET", "missing"))                     -- nil
    assert.is_nil(select(2, red:call("GET", "missing")))
    red:call("SET", "n", 5)
    assert.equal(1, red:call("DEL", "n"))
    assert.equal(0, red:call("DEL", "n"))
    assert.equal(41, red:call("INCRBY", "n", 41))                 -- integer
    assert.equal(42, red:call("INCR", "n"))
    assert.equal(-7, red:call("DECRBY", "n", 49))
    assert.equal("OK", red:call("SET", "big", 2 ^ 40))            -- numbers as integers
    assert.equal("1099511627776", red:call("GET", "big"))
    assert.equal("OK", red:call("SET", "bin", "a\0b\r\n"))
    assert.equal("a\0b\r\n", red:call("GET", "bin"))
    assert.same({}, red:call("LRANGE", "nolist", 0, -1))          -- empty array
    assert.same({ "hello", redis.null, "1099511627776" }, red:call("MGET", "str", "missing", "big"))
    assert.equal(require("cjson").null, redis.null)
    -- nested arrays, statuses, nils and errors inside arrays
    local v = red:call("EVAL", [[return {1, 'two', {3, {'four'}}, redis.status_reply('FINE'),
      redis.error_reply('ERR inner')}]], 0)
    assert.same({ 1, "two", { 3, { "four" } }, "FINE", { err = "ERR inner" } }, v)
    red:call("DEL", "mx")
    assert.equal("OK", red:call("MULTI"))
    assert.equal("QUEUED", red:call("GET", "missing"))
    assert.equal("QUEUED", red:call("SET", "mx", "1"))
    assert.same({ redis.null, "OK" }, red:call("EXEC"))
    -- error replies
    local r, err = red:call("NOSUCHCMD", "x")
    assert.is_nil(r)
    assert.matches("^ERR unknown command", err)
    red:call("RPUSH", "alist", "a")
    r, err = red:call("INCR", "alist")
    assert.is_nil(r)
    assert.matches("^WRONGTYPE", err)
    assert.has_error(function() red:call("SET", "k", {}) end)
  end)

  it("sends AUTH and SELECT from the url before anything else", function()
    local sec = start_server(nil, "--requirepass s3cret")
    local c3 = redis.connect { url = sec:url(3, "s3cret") }
    local c0 = redis.connect { url = sec:url(0), password = "s3cret" }
    local bad = redis.connect { url = sec:url(0, "wrong") }
    local none = redis.connect { url = sec:url(0) }
    finally(function() c3:close() c0:close() bad:close() none:close() sec:stop(nil, true) end)
    assert.equal("OK", c3:call("SET", "where", "db3"))
    assert.is_nil(c0:call("GET", "where"))
    assert.equal("OK", c0:call("SELECT", 3))
    assert.equal("db3", c0:call("GET", "where"))
    assert.equal(3, c3:call("CLIENT", "INFO"):match("db=(%d+)") + 0)
    local r, err = bad:call("GET", "where")
    assert.is_nil(r)
    assert.matches("NOAUTH", err)
    assert.matches("WRONGPASS", bad:info().last_error)
    r, err = none:call("GET", "where")
    assert.is_nil(r)
    assert.matches("NOAUTH", err)
  end)

  it("serves 10,000 concurrent calls from 1,000 tasks, each reply to its caller", function()
    red:call("DEL", "counter")
    local tasks, bad = {}, 0
    for i = 1, 1000 do
      tasks[i] = sluice.spawn(function()
        for j = 1, 5 do
          local key = "k:" .. i .. ":" .. j
          if red:call("SET", key, key .. "!") ~= "OK" then bad = bad + 1 end
          if red:call("GET", key) ~= key .. "!" then bad = bad + 1 end
        end
        return true
      end)
    end
    for i = 1, 1000 do
      assert.same({ true, true }, { sluice.wait(tasks[i]) })
    end
    assert.equal(0, bad)
    assert.equal(5000, red:call("EVAL", "return #redis.call('KEYS', 'k:*')", 0))
    assert.equal(0, red:info().in_flight)
  end)

  it("pipelines a list of commands", function()
    red:call("DEL", "p1")
    local res = red:pipeline {
      { "SET", "p1", "a" }, { "GET", "p1" }, { "RPUSH", "p1", 1 }, { "GET", "nope" }, { "ECHO", 12.5 },
    }
    assert.equal(5, #res)
    assert.same({ "OK" }, res[1])
    assert.same({ "a" }, res[2])
    assert.equal(false, res[3][1])
    assert.matches("^WRONGTYPE", res[3][2])
    assert.same({}, res[4])
    assert.same({ "12.5" }, res[5])
    assert.has_error(function() red:pipeline {} end)
    assert.has_error(function() red:pipeline { { "GET", true } } end)
  end)

  it("runs scripts by EVALSHA and falls back to EVAL on NOSCRIPT", function()
    local function stat(name)
      local info = red:call("INFO", "commandstats")
      return tonumber(info:match("cmdstat_" .. name .. ":calls=(%d+)") or 0)
    end
    local src = "return {KEYS[1], ARGV[1] + ARGV[2]}"
    assert.equal("OK", red:call("CONFIG", "RESETSTAT"))
    assert.same({ "key", 5 }, red:eval_script(src, { "key" }, { 2, 3 }))
    assert.same({ "key", 7 }, red:eval_script(src, { "key" }, { 3, 4 }))
    assert.equal(2, stat("evalsha"))
    assert.equal(0, stat("eval"))
    assert.equal("OK", red:call("SCRIPT", "FLUSH"))
    assert.same({ "x", 3 }, red:eval_script(src, { "x" }, { 1, 2 }))
    assert.equal(3, stat("evalsha"))
    assert.equal(1, stat("eval"))
    local r, err = red:eval_script("return redis.call('NOPE')", {}, {})
    assert.is_nil(r)
    assert.matches("Unknown Redis command", err)
  end)

  it("times a slow command out and keeps replies in order afterwards", function()
    local c = redis.connect { url = srv:url(), command_timeout = 0.2 }
    finally(function() c:close() end)
    assert.equal("OK", c:call("SET", "after", "yes"))
    local t0 = sluice.now()
    local r, err = c:call("DEBUG", "SLEEP", 1)
    local took = sluice.now() - t0
    assert.is_nil(r)
    assert.equal("timeout", err)
    assert.is_true(took >= 0.18 and took < 0.5, "took " .. took)
    sluice.sleep(1)
    assert.equal("yes", c:call("GET", "after")) -- the late reply was dropped
    assert.equal("connected", c:status())
  end)

  it("does not resume a killed task when its reply arrives", function()
    local resumed = false
    local t = sluice.spawn(function()
      red:call("DEBUG", "SLEEP", 0.3)
      resumed = true
    end)
    sluice.sleep(0.05)
    assert.equal("waiting", sluice.status(t))
    assert.is_true(sluice.kill(t))
    assert.equal("killed", sluice.status(t))
    assert.equal("OK", red:call("SET", "killed", "1")) -- queued behind the sleep
    sluice.sleep(0.1)
    assert.is_false(resumed)
    assert.equal("1", red:call("GET", "killed"))
  end)

  it("fails on a server crash, fails fast while down and reconnects by itself", function()
    local c = redis.connect { url = srv:url() }
    finally(function() c:close() end)
    assert.equal("PONG", c:call("PING"))
    local t = sluice.spawn(function() return c:call("DEBUG", "SLEEP", 2) end)
    sluice.sleep(0.1)
    srv:stop(true) -- SIGKILL mid-command
    local ok, r, err = sluice.wait(t)
    assert.is_true(ok)
    assert.is_nil(r)
    assert.equal("disconnected", err)
    assert.is_true(wait_for(function() return c:status() ~= "connected" end, 2))
    local t0 = sluice.now()
    for _ = 1, 20 do
      r, err = c:call("GET", "x")
      assert.is_nil(r)
      assert.equal("disconnected", err)
    end
    assert.is_true(sluice.now() - t0 < 0.1)
    sluice.sleep(0.5) -- a few reconnect attempts fail
    assert.is_not.equal("connected", c:status())
    srv:restart()
    assert.is_true(wait_for(function() return c:status() == "connected" end, 8), c:status())
    assert.equal("OK", c:call("SET", "back", "1"))
    assert.equal("1", c:call("GET", "back"))
    assert.equal(1, c:info().reconnects)
    -- the shared client came back too
    assert.is_true(wait_for(function() return red:status() == "connected" end, 8))
    assert.equal("PONG", red:call("PING"))
  end)

  it("fails fast when nothing listens", function()
    local port = srv.port == 60999 and 20000 or srv.port + 1
    local c = redis.connect { url = "redis://127.0.0.1:" .. port }
    finally(function() c:close() end)
    local t0 = sluice.now()
    local r, err = c:call("PING")
    assert.is_nil(r)
    assert.equal("disconnected", err)
    assert.is_true(sluice.now() - t0 < 0.5)
  end)

  it("closes idempotently, failing calls in flight and later", function()
    local c = redis.connect { url = srv:url() }
    assert.equal("PONG", c:call("PING"))
    local t = sluice.spawn(function() return c:call("DEBUG", "SLEEP", 0.2) end)
    sluice.sleep(0.05)
    c:close()
    c:close()
    assert.same({ true, nil, "closed" }, { sluice.wait(t) })
    assert.equal("closed", c:status())
    assert.same({ nil, "closed" }, { c:call("PING") })
    assert.matches("^redis client", tostring(c))
    sluice.sleep(0.3)
  end)

  it("must be called from a task", function()
    local co = coroutine.create(function() return red:call("PING") end)
    local ok, err = coroutine.resume(co)
    assert.is_false(ok)
    assert.matches("sluice.redis call", err)
  end)
end)
