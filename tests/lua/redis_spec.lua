-- sluice.redis against real redis-server processes on loopback ports.
local sluice = require "sluice"
local redis = require "sluice.redis"

local redis_server = require "support.redis_server"
local start_server = redis_server.start
local wait = require "support.wait"
local wait_for, within = wait.wait_for, wait.within

-- A task parked in a call or a receive (its request is out).
local function parked(t) return sluice.status(t) == "waiting" end

-- Full collections in a task of its own, over a few turns of the loop (the
-- sleeps are the point: whatever runs between them is collected too).
local function collect_for_a_while()
  assert.same({ true }, { sluice.wait(sluice.spawn(function()
    for _ = 1, 5 do
      collectgarbage("collect")
      sluice.sleep(0.01)
    end
  end)) })
end

-- A nameserver of our own on a loopback UDP port (LuaJIT FFI, polled by a
-- task), so that resolution is tested without the network:
-- answers[name] = { ip = "127.0.0.1", delay = s } | "nxdomain" | "drop".
-- Names other than those get NXDOMAIN; AAAA queries for an A name get an
-- empty answer. dns.queries lists {name, qtype} as received; dns.sent
-- counts the answers sent.
local ffi = require "ffi"
for _, decl in ipairs {
  "struct sluice_spec_sin { uint16_t family; uint8_t port[2]; uint8_t addr[4]; uint8_t zero[8]; };",
  "int socket(int domain, int type, int protocol);",
  "int bind(int fd, const void *addr, uint32_t len);",
  "int getsockname(int fd, void *addr, uint32_t *len);",
  "long recvfrom(int fd, void *buf, size_t n, int flags, void *addr, uint32_t *len);",
  "long sendto(int fd, const void *buf, size_t n, int flags, const void *addr, uint32_t len);",
  "int close(int fd);",
} do pcall(ffi.cdef, decl) end
local C = ffi.C
local AF_INET, SOCK_DGRAM, MSG_DONTWAIT = 2, 2, 0x40

local function u16(n) return string.char(math.floor(n / 256), n % 256) end

-- -> name (lower case), qtype, the question section
local function parse_query(q)
  local i, labels = 13, {}
  while true do
    local len = q:byte(i)
    if not len or len == 0 then break end
    labels[#labels + 1] = q:sub(i + 1, i + len):lower()
    i = i + 1 + len
  end
  local qtype = q:byte(i + 1) * 256 + q:byte(i + 2)
  return table.concat(labels, "."), qtype, q:sub(13, i + 4)
end

local function dns_reply(q, answer)
  local _, qtype, question = parse_query(q)
  local rcode, records = 3, ""
  if type(answer) == "table" then
    rcode = 0
    if qtype == 1 then
      local a, b, c, d = answer.ip:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
      records = "\192\012" .. u16(1) .. u16(1) .. "\0\0\0\60" .. u16(4)
        .. string.char(tonumber(a), tonumber(b), tonumber(c), tonumber(d))
    end
  end
  return q:sub(1, 2) .. string.char(0x81, 0x80 + rcode) .. u16(1) .. u16(records == "" and 0 or 1)
    .. u16(0) .. u16(0) .. question .. records
end

local function dns_server(answers)
  local fd = C.socket(AF_INET, SOCK_DGRAM, 0)
  assert(fd >= 0, "socket")
  local sin = ffi.new("struct sluice_spec_sin")
  sin.family = AF_INET
  sin.addr[0], sin.addr[3] = 127, 1
  local len = ffi.new("uint32_t[1]", ffi.sizeof(sin))
  assert(C.bind(fd, sin, len[0]) == 0, "bind")
  assert(C.getsockname(fd, sin, len) == 0, "getsockname")
  local dns = { answers = answers, queries = {}, sent = 0, running = true,
    address = "127.0.0.1:" .. (sin.port[0] * 256 + sin.port[1]) }
  function dns.count(name, qtype)
    local n = 0
    for _, q in ipairs(dns.queries) do
      if q[1] == name and q[2] == qtype then n = n + 1 end
    end
    return n
  end
  function dns.stop()
    dns.running = false
    sluice.wait(dns.task)
  end
  dns.task = sluice.spawn(function()
    local buf, from = ffi.new("uint8_t[512]"), ffi.new("struct sluice_spec_sin")
    local later = {}
    while dns.running do
      while true do
        len[0] = ffi.sizeof(from)
        local n = tonumber(C.recvfrom(fd, buf, 512, MSG_DONTWAIT, from, len))
        if n <= 12 then break end
        local q = ffi.string(buf, n)
        local name, qtype = parse_query(q)
        dns.queries[#dns.queries + 1] = { name, qtype }
        local answer = dns.answers[name]
        if answer ~= "drop" then
          later[#later + 1] = { at = sluice.now() + (type(answer) == "table" and answer.delay or 0),
            data = dns_reply(q, answer), to = ffi.new("struct sluice_spec_sin", from) }
        end
      end
      for i = #later, 1, -1 do
        local r = later[i]
        if r.at <= sluice.now() then
          C.sendto(fd, r.data, #r.data, 0, r.to, ffi.sizeof(r.to))
          table.remove(later, i)
          dns.sent = dns.sent + 1
        end
      end
      sluice.sleep(0.005)
    end
    C.close(fd)
  end)
  return dns
end

describe("sluice.redis", function()
  local srv, red

  setup(function() srv, red = redis_server.with_client() end)
  teardown(function() if srv then srv:shutdown(red) end end)

  -- clients the server holds in a blocking command (BLPOP)
  local function blocked_clients()
    return tonumber(red:call("INFO", "clients"):match("blocked_clients:(%d+)"))
  end

  it("rejects bad options (raising) and urls (nil, err), naming them", function()
    assert.has_error(function() redis.connect { url = srv:url(), timeout = 1 } end,
      "sluice.redis.connect: unknown option 'timeout'")
    assert.has_error(function() redis.connect() end, "sluice.redis.connect: bad argument #1 'opts' (table expected, got nil)")
    assert.has_error(function() redis.connect { url = 6379 } end,
      "sluice.redis.connect: option 'url' must be a string, got number")
    -- a url is data from a configuration: an operational failure, not a misuse
    assert.same({ nil, "url must start with redis://" }, { redis.connect { url = "http://x" } })
    assert.same({ nil, "url has no host" }, { redis.connect { url = "redis://:pw@/2" } })
    assert.same({ nil, "bad port" }, { redis.connect { url = "redis://h:70000" } })
    assert.same({ nil, "bad database number in url" }, { redis.connect { url = "redis://h/x" } })
    assert.has_error(function() redis.connect { url = srv:url(), command_timeout = 0 } end,
      "sluice.redis.connect: option 'command_timeout' must be a number > 0, got 0")
    assert.same({ host = "localhost", port = 6380, db = 4, password = "p@ss" },
      redis.parse_url("redis://:p%40ss@localhost:6380/4"))
    assert.same({ host = "::1", port = 6379, db = 0 }, redis.parse_url("redis://[::1]"))
    assert.has_error(function() redis.connect { url = srv:url(), _nameserver = "not an address" } end)
    assert.same({ host = "10.0.0.1", port = 6379, db = 0 }, redis.parse_url("redis://10.0.0.1"))
  end)

  it("connects in the background and the first call waits for it", function()
    local c = redis.connect { url = srv:url(0) }
    assert.equal("connecting", c:status())
    assert.equal("PONG", c:call("PING"))
    assert.equal("connected", c:status())
    c:close()
  end)

  it("resolves localhost from /etc/hosts through the resolver", function()
    local c = redis.connect { url = ("redis://localhost:%d/0"):format(srv.port) }
    finally(function() c:close() end)
    assert.equal("connecting", c:status())
    assert.equal("PONG", c:call("PING"))
    local info = c:info()
    assert.equal("localhost", info.host)
    assert.equal("127.0.0.1", info.address)
    assert.equal(srv.port, info.port)
  end)

  it("resolves a name without blocking the loop, then connects to its address", function()
    local dns = dns_server { ["redis.sluice.test"] = { ip = "127.0.0.1", delay = 0.3 } }
    local ticks = 0
    local timer = sluice.every(0.02, function() ticks = ticks + 1 end)
    local c = redis.connect { url = ("redis://redis.sluice.test:%d/0"):format(srv.port), _nameserver = dns.address }
    local lit = redis.connect { url = srv:url(0), _nameserver = dns.address }
    finally(function() timer:cancel() c:close() lit:close() dns.stop() end)
    assert.equal("connecting", c:status())
    assert.equal("", c:info().address)
    local t0 = sluice.now()
    -- calls made while resolving wait, in order, and see each other
    local set = sluice.spawn(function() return c:call("SET", "resolved", "yes") end)
    sluice.yield() -- the SET is queued first
    assert.equal("connecting", c:status())
    assert.equal("yes", c:call("GET", "resolved"))
    assert.same({ true, "OK" }, { sluice.wait(set) })
    local took = sluice.now() - t0
    assert.is_true(took >= 0.28 and took < 1.5, "took " .. took)
    assert.is_true(ticks >= 5, "ticks " .. ticks) -- the timer ran while resolving
    assert.equal("connected", c:status())
    assert.equal("127.0.0.1", c:info().address)
    assert.equal(1, dns.count("redis.sluice.test", 1)) -- one A query
    assert.equal("PONG", lit:call("PING"))              -- IP literals skip resolution
    assert.equal("127.0.0.1", lit:info().address)
    for _, q in ipairs(dns.queries) do assert.equal("redis.sluice.test", q[1]) end
  end)

  it("fails the first calls when the name does not resolve, and re-resolves on each reconnect", function()
    local dns = dns_server { ["nowhere.sluice.test"] = "nxdomain" }
    local c = redis.connect { url = ("redis://nowhere.sluice.test:%d/0"):format(srv.port), _nameserver = dns.address }
    finally(function() c:close() dns.stop() end)
    local msg = "dns: cannot resolve 'nowhere.sluice.test': nodename nor servname provided, or not known"
    local t0 = sluice.now()
    local t = sluice.spawn(function() return c:call("SET", "nowhere", 1) end)
    assert.same({ nil, msg }, { c:call("PING") })
    assert.same({ true, nil, msg }, { sluice.wait(t) })
    assert.is_true(sluice.now() - t0 < 0.5)
    assert.equal(msg, c:info().last_error)
    assert.equal("", c:info().address)
    assert.equal(0, c:info().in_flight)
    -- backoff from 0.1 s: a few more attempts, each asking again
    assert.is_true(within(10, function() return dns.count("nowhere.sluice.test", 1) >= 3 end),
      "A queries: " .. dns.count("nowhere.sluice.test", 1))
    assert.is_not.equal("connected", c:status())
    dns.answers["nowhere.sluice.test"] = { ip = "127.0.0.1" }
    assert.is_true(within(10, function() return c:status() == "connected" end), c:status())
    assert.equal("PONG", c:call("PING"))
    assert.equal("127.0.0.1", c:info().address)
    assert.equal(0, c:info().reconnects) -- the first connection that worked
    assert.is_nil(c:call("GET", "nowhere"))
  end)

  it("bounds the resolution by connect_timeout", function()
    local dns = dns_server { ["silent.sluice.test"] = "drop" }
    local c = redis.connect { url = ("redis://silent.sluice.test:%d/0"):format(srv.port), _nameserver = dns.address,
      connect_timeout = 0.3 }
    finally(function() c:close() dns.stop() end)
    local t0 = sluice.now()
    assert.same({ nil, "timeout" }, { c:call("PING") })
    local took = sluice.now() - t0
    assert.is_true(took >= 0.28 and took < 0.8, "took " .. took)
    assert.equal("dns: resolving 'silent.sluice.test' timed out", c:info().last_error)
    assert.equal(0, c:info().in_flight)
    assert.is_true(dns.count("silent.sluice.test", 1) >= 1)
  end)

  it("cancels a resolution under way on close and on collection", function()
    local dns = dns_server { ["slow.sluice.test"] = { ip = "127.0.0.1", delay = 0.2 } }
    finally(function() dns.stop() end)
    local url = ("redis://slow.sluice.test:%d/0"):format(srv.port)
    local c = redis.connect { url = url, _nameserver = dns.address }
    local t = sluice.spawn(function() return c:call("PING") end)
    wait_for("the query", function() return dns.count("slow.sluice.test", 1) == 1 end)
    assert.is_true(parked(t))
    assert.equal("connecting", c:status())
    c:close()
    assert.same({ true, nil, "closed" }, { sluice.wait(t) })
    assert.equal("closed", c:status())
    assert.same({ nil, "closed" }, { c:call("PING") })
    -- collected while resolving: the late answer must not touch the client
    local weak = setmetatable({}, { __mode = "v" })
    weak[1] = redis.connect { url = url, _nameserver = dns.address }
    wait_for("the second query", function() return dns.count("slow.sluice.test", 1) == 2 end)
    collectgarbage("collect")
    collectgarbage("collect")
    assert.is_nil(weak[1])
    -- every query answered (A and any AAAA: sent may pass 2 between polls)
    wait_for("the answers sent", function() return dns.sent >= 2 and dns.sent == #dns.queries end)
    -- nothing to wait for: the check is that the late answers, now at the
    -- cancelled resolutions' sockets, touch nothing (a crash here, or an
    -- ASan report) and ask nothing again
    sluice.sleep(0.05)
    assert.equal(2, dns.count("slow.sluice.test", 1))
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

  it("pipelines the commands a function queues", function()
    red:call("DEL", "fp")
    local idx = {}
    local res = red:pipeline(function(p)
      idx[1] = p:call("SET", "fp", 1)
      idx[2] = p:call("INCRBY", "fp", 41)
      idx[3] = p:call("RPUSH", "fp", "x")
      idx[4] = p:call("GET", "fp")
      idx[5] = p:call("MGET", "fp", "nope")
    end)
    assert.same({ 1, 2, 3, 4, 5 }, idx)
    assert.equal(5, #res)
    assert.same({ "OK" }, res[1])
    assert.same({ 42 }, res[2])
    assert.same({ false, "WRONGTYPE Operation against a key holding the wrong kind of value" }, res[3])
    assert.same({ "42" }, res[4])
    assert.same({ { "42", redis.null } }, res[5])
    -- the same shape as the list form
    assert.same(red:pipeline { { "GET", "fp" }, { "NOSUCHCMD" } },
      red:pipeline(function(p) p:call("GET", "fp") p:call("NOSUCHCMD") end))
    -- misuse raises, naming it, and sends nothing
    assert.has_error(function() red:pipeline(function() end) end,
      "sluice.redis.pipeline: the function queued no commands")
    assert.has_error(function() red:pipeline(function(p) p:call() end) end,
      "sluice.redis.pipeline: p:call needs a command")
    assert.has_error(function() red:pipeline(function(p) p:call("SET", "fp", {}) end) end,
      "sluice.redis.pipeline: command arguments must be strings, numbers, int64_t/uint64_t cdata or json numerals, got table")
    assert.has_error(function() red:pipeline(function(p) p.call("GET", "fp") end) end,
      "sluice.redis.pipeline: use p:call(...), not p.call(...)")
    assert.has_error(function() red:pipeline(function() error("mine", 0) end) end, "mine")
    assert.has_error(function() red:pipeline(42) end,
      "sluice.redis.pipeline: a function or a non-empty list of commands expected")
    local kept
    red:pipeline(function(p) kept = p p:call("PING") end)
    assert.has_error(function() kept:call("PING") end,
      "sluice.redis.pipeline: p:call after the pipeline was sent")
    assert.equal("42", red:call("GET", "fp"))
    assert.equal(0, red:info().in_flight)
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
    -- the late reply arrives (the request is counted until then) and is dropped
    wait_for("the late reply", function() return c:info().in_flight == 0 end)
    assert.equal("yes", c:call("GET", "after"))
    assert.equal("connected", c:status())
  end)

  it("counts a command timeout from the call, however long the loop turn ran before it", function()
    local c = redis.connect { url = srv:url(), command_timeout = 0.3 }
    finally(function() c:close() end)
    assert.equal("PONG", c:call("PING"))
    -- 0.15 s of work in this turn of the loop before the call: a timer
    -- armed from the time the turn began would fire 0.15 s early
    local busy = sluice.now() + 0.15
    while sluice.now() < busy do end
    local t0 = sluice.now()
    assert.same({ nil, "timeout" }, { c:call("DEBUG", "SLEEP", 1) })
    local took = sluice.now() - t0
    assert.is_true(took >= 0.295, "took " .. took)
    wait_for("the late reply", function() return c:info().in_flight == 0 end)
  end)

  it("does not resume a killed task when its reply arrives", function()
    local resumed = false
    local t = sluice.spawn(function()
      red:call("DEBUG", "SLEEP", 0.3)
      resumed = true
    end)
    wait_for("the call out", function() return parked(t) and red:info().in_flight == 1 end)
    assert.is_true(sluice.kill(t))
    assert.equal("killed", sluice.status(t))
    assert.equal("OK", red:call("SET", "killed", "1")) -- queued behind the sleep
    -- replies come in order: the sleep's reply was handled before the SET's
    -- woke us, and a task it wrongly woke would have run first (the run
    -- queue is FIFO); one more turn of the loop for good measure
    sluice.yield()
    assert.is_false(resumed)
    assert.equal("1", red:call("GET", "killed"))
  end)

  it("fails on a server crash, fails fast while down and reconnects by itself", function()
    local c = redis.connect { url = srv:url() }
    finally(function() c:close() end)
    assert.equal("PONG", c:call("PING"))
    local t = sluice.spawn(function() return c:call("DEBUG", "SLEEP", 2) end)
    wait_for("the call out", function() return parked(t) and c:info().in_flight == 1 end)
    srv:stop(true) -- SIGKILL mid-command
    local ok, r, err = sluice.wait(t)
    assert.is_true(ok)
    assert.is_nil(r)
    assert.equal("disconnected", err)
    wait_for("the client to notice", function() return c:status() ~= "connected" end)
    local t0 = sluice.now()
    for _ = 1, 20 do
      r, err = c:call("GET", "x")
      assert.is_nil(r)
      assert.equal("disconnected", err)
    end
    assert.is_true(sluice.now() - t0 < 0.1)
    -- a reconnect attempt fails
    wait_for("a refused reconnect", function() return c:info().last_error == "Connection refused" end)
    assert.is_not.equal("connected", c:status())
    srv:restart()
    assert.is_true(within(10, function() return c:status() == "connected" end), c:status())
    assert.equal("OK", c:call("SET", "back", "1"))
    assert.equal("1", c:call("GET", "back"))
    assert.equal(1, c:info().reconnects)
    -- the shared client came back too
    wait_for("the shared client back", function() return red:status() == "connected" end)
    assert.equal("PONG", red:call("PING"))
  end)

  it("fails fast when nothing listens", function()
    local port = redis_server.dead_port()
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
    wait_for("the call out", function() return parked(t) and c:info().in_flight == 1 end)
    c:close()
    c:close()
    assert.same({ true, nil, "closed" }, { sluice.wait(t) })
    assert.equal("closed", c:status())
    assert.same({ nil, "closed" }, { c:call("PING") })
    assert.matches("^redis client", tostring(c))
    -- the server answers red only once the sleep is over: the sleep's reply
    -- has gone to the closed connection by then, and must have touched nothing
    assert.equal("PONG", red:call("PING"))
    sluice.yield()
  end)

  it("name() is the url without its password, or opts.name; stats() is info() and the name", function()
    local c = redis.connect { url = srv:url(3, "secret") }
    assert.equal("redis://127.0.0.1:" .. srv.port .. "/3", c:name())
    for url, name in pairs({ [srv:url()] = "cache", ["redis://[::1]"] = false }) do
      local other = redis.connect { url = url, name = name or nil }
      assert.equal(name or "redis://[::1]:6379/0", other:name())
      other:close()
    end
    assert.has_error(function() redis.connect { url = srv:url(), name = 1 } end,
      "sluice.redis.connect: option 'name' must be a string, got number")
    local sub = assert(c:subscribe("handles"))
    assert.equal(c:name(), sub:name())
    c:call("PING") -- a round trip: nothing of the connection's set-up still in flight
    local st = c:stats()
    assert.same({ "connected", 0, 0, "127.0.0.1", srv.port, "127.0.0.1", c:name() },
      { st.status, st.in_flight, st.reconnects, st.host, st.port, st.address, st.name })
    local info = c:info()
    info.name = c:name()
    assert.same(info, st)
    local sst = sub:stats()
    assert.same({ 1, c:name() }, { sst.subscribed, sst.name })
    assert.is_true(sub:close())
    assert.is_false(sub:close())
    assert.is_true(c:close())
    assert.is_false(c:close())
    -- a closed client answers name() and stats() too
    assert.same({ "closed", c:name() }, { c:stats().status, c:name() })
  end)

  it("keeps a client that only a waiting call refers to until the reply", function()
    red:call("DEL", "anchored")
    local t = sluice.spawn(function()
      return redis.connect { url = srv:url() }:call("BLPOP", "anchored", 5)
    end)
    wait_for("the BLPOP blocked", function() return blocked_clients() == 1 end)
    assert.equal("waiting", sluice.status(t))
    collect_for_a_while()
    assert.equal(1, red:call("RPUSH", "anchored", "v"))
    assert.same({ true, { "anchored", "v" } }, { sluice.wait(t) })
    -- and once the call is done, nothing keeps it: collected and closed
    local w = setmetatable({}, { __mode = "v" })
    local t2 = sluice.spawn(function()
      local c = redis.connect { url = srv:url() }
      w[1] = c
      return c:call("PING")
    end)
    assert.same({ true, "PONG" }, { sluice.wait(t2) })
    collectgarbage("collect")
    collectgarbage("collect")
    assert.is_nil(w[1])
  end)

  it("wakes every waiting call with nil, closed on close", function()
    local c = redis.connect { url = srv:url() }
    c:call("DEL", "closing")
    local tasks = {}
    for i = 1, 3 do
      tasks[i] = sluice.spawn(function() return c:call("BLPOP", "closing", 5) end)
    end
    local pending = sluice.spawn(function() return c:call("PING") end)
    wait_for("the first BLPOP blocked, the others queued", function()
      return c:info().in_flight == 4 and blocked_clients() == 1
    end)
    for i = 1, 3 do assert.equal("waiting", sluice.status(tasks[i])) end
    c:close()
    for i = 1, 3 do assert.same({ true, nil, "closed" }, { sluice.wait(tasks[i]) }) end
    assert.same({ true, nil, "closed" }, { sluice.wait(pending) })
    collectgarbage("collect")
  end)

  it("refuses SUBSCRIBE, PSUBSCRIBE and MONITOR in call and pipeline", function()
    for _, cmd in ipairs { "SUBSCRIBE", "subscribe", "PSubscribe", "MONITOR", "monitor",
      "SSUBSCRIBE", "UNSUBSCRIBE", "punsubscribe" } do
      local ok, err = pcall(red.call, red, cmd, "ch")
      assert.is_false(ok)
      assert.matches("sluice.redis: " .. cmd:upper() .. " cannot be sent with call or pipeline; "
        .. "use client:subscribe%(channel, ...%) or client:psubscribe%(pattern, ...%)", err)
      ok, err = pcall(red.pipeline, red, { { "PING" }, { cmd, "ch" } })
      assert.is_false(ok)
      assert.matches(cmd:upper() .. " cannot be sent with call or pipeline", err)
    end
    -- the connection was not touched
    assert.equal(0, red:call("PUBLISH", "ch", "x"))
    assert.equal("PONG", red:call("PING"))
  end)

  it("must be called from a task", function()
    local co = coroutine.create(function() return red:call("PING") end)
    local ok, err = coroutine.resume(co)
    assert.is_false(ok)
    assert.matches("sluice.redis call", err)
  end)

  describe("pub/sub", function()
    local function numsub(ch) return red:call("PUBSUB", "NUMSUB", ch)[2] end

    it("delivers published messages to a subscription", function()
      local sub = assert(red:subscribe("news", "other", "news"))
      finally(function() sub:close() end)
      assert.matches("^redis subscription", tostring(sub))
      assert.equal(2, sub:info().subscribed)
      assert.equal("connected", sub:status())
      assert.equal(1, red:call("PUBLISH", "news", "hello"))
      assert.equal(1, red:call("PUBLISH", "other", "a\0b"))
      assert.same({ kind = "message", channel = "news", payload = "hello" }, sub:receive(2))
      assert.same({ kind = "message", channel = "other", payload = "a\0b" }, sub:receive(2))
      -- a receiver waiting before the message arrives
      local t = sluice.spawn(function() return sub:receive(2) end)
      wait_for("the receiver", function() return parked(t) end)
      assert.equal(1, red:call("PUBLISH", "news", "later"))
      assert.same({ true, { kind = "message", channel = "news", payload = "later" } }, { sluice.wait(t) })
      local info = sub:info()
      assert.same({ 2, 0, 3, 0, 1000 }, { info.subscribed, info.pending, info.received, info.dropped, info.max_pending })
    end)

    it("delivers messages matching a pattern", function()
      local sub = assert(red:psubscribe("ev.*", "x.?"))
      finally(function() sub:close() end)
      assert.equal(1, red:call("PUBLISH", "ev.a", "1"))
      assert.equal(1, red:call("PUBLISH", "x.y", "2"))
      assert.equal(0, red:call("PUBLISH", "nomatch", "3"))
      assert.same({ kind = "pmessage", pattern = "ev.*", channel = "ev.a", payload = "1" }, sub:receive(2))
      assert.same({ kind = "pmessage", pattern = "x.?", channel = "x.y", payload = "2" }, sub:receive(2))
      assert.same({ nil, "timeout" }, { sub:receive(0) })
    end)

    it("times a receive out", function()
      local sub = assert(red:subscribe("quiet"))
      finally(function() sub:close() end)
      local t0 = sluice.now()
      assert.same({ nil, "timeout" }, { sub:receive(0.2) })
      local dt = sluice.now() - t0
      assert.is_true(dt >= 0.19 and dt < 1, dt)
      t0 = sluice.now()
      assert.same({ nil, "timeout" }, { sub:receive(0) })
      assert.is_true(sluice.now() - t0 < 0.05)
      assert.equal(1, red:call("PUBLISH", "quiet", "now"))
      assert.equal("now", sub:receive(1).payload)
    end)

    it("unsubscribes, waking the receiver with nil, closed", function()
      local sub = assert(red:subscribe("gone"))
      assert.equal(1, numsub("gone"))
      local t = sluice.spawn(function() return sub:receive() end)
      wait_for("the receiver", function() return parked(t) end)
      sub:unsubscribe()
      sub:close()
      assert.same({ true, nil, "closed" }, { sluice.wait(t) })
      assert.same({ nil, "closed" }, { sub:receive(1) })
      assert.equal("closed", sub:status())
      wait_for("no subscriber to gone", function() return numsub("gone") == 0 end)
      assert.equal(0, red:call("PUBLISH", "gone", "x"))
    end)

    it("closes with queued messages and a waiter", function()
      local sub = assert(red:subscribe("q"))
      red:call("PUBLISH", "q", "1")
      wait_for("the message queued", function() return sub:info().pending == 1 end)
      sub:close()
      assert.equal(0, sub:info().pending)
      assert.same({ nil, "closed" }, { sub:receive() })
    end)

    it("lets one task receive at a time; a killed receiver leaves no waiter", function()
      local sub = assert(red:subscribe("k"))
      finally(function() sub:close() end)
      local t = sluice.spawn(function() return sub:receive() end)
      wait_for("the receiver", function() return parked(t) end)
      assert.has_error(function() sub:receive(1) end,
        "sluice.redis: another task is already waiting on this subscription")
      assert.is_true(sluice.kill(t))
      assert.equal("killed", sluice.status(t))
      assert.equal(1, red:call("PUBLISH", "k", "after"))
      assert.same({ kind = "message", channel = "k", payload = "after" }, sub:receive(2))
      -- a killed receiver of a subscription nobody else holds: collected, unsubscribed
      local t2 = sluice.spawn(function() return assert(red:subscribe("orphan")):receive() end)
      wait_for("the subscription", function() return numsub("orphan") == 1 end)
      wait_for("its receiver", function() return parked(t2) end)
      collectgarbage("collect")
      collectgarbage("collect")
      -- nothing to wait for: the check is that the collection closed nothing
      -- (a closing subscription would be gone from NUMSUB after a short while)
      sluice.sleep(0.05)
      assert.equal(1, numsub("orphan")) -- anchored by its waiter
      assert.is_true(sluice.kill(t2))
      collectgarbage("collect")
      collectgarbage("collect")
      wait_for("no subscriber to orphan", function() return numsub("orphan") == 0 end)
    end)

    it("closes a subscription at once when the subscribing task is killed", function()
      local c = redis.connect { url = srv:url() }
      finally(function() c:close() end)
      assert.equal("PONG", c:call("PING")) -- connected: the sleep alone in flight
      local sleeper = sluice.spawn(function() return c:call("DEBUG", "SLEEP", 0.3) end)
      wait_for("the sleep out", function() return parked(sleeper) and c:info().in_flight == 1 end)
      local t = sluice.spawn(function() return red:subscribe("abandoned") end)
      wait_for("the subscribe out", function() return parked(t) end)
      assert.is_true(sluice.kill(t))
      assert.same({ true, "OK" }, { sluice.wait(sleeper) })
      wait_for("no subscriber", function() return numsub("abandoned") == 0 end)
      -- nothing to wait for: the check is that no late SUBSCRIBE follows
      sluice.sleep(0.1)
      assert.equal(0, numsub("abandoned"))
    end)

    it("ends with its client", function()
      local c = redis.connect { url = srv:url() }
      local sub = assert(c:subscribe("owned"))
      local t = sluice.spawn(function() return sub:receive() end)
      wait_for("the receiver", function() return parked(t) end)
      c:close()
      assert.same({ true, nil, "closed" }, { sluice.wait(t) })
      assert.equal("closed", sub:status())
      assert.same({ nil, "closed" }, { c:subscribe("owned") })
      wait_for("no subscriber to owned", function() return numsub("owned") == 0 end)
    end)

    it("keeps a subscription that only its waiting receiver refers to", function()
      local t = sluice.spawn(function() return assert(red:subscribe("held")):receive(5) end)
      wait_for("the subscription", function() return numsub("held") == 1 end)
      wait_for("its receiver", function() return parked(t) end)
      collect_for_a_while()
      assert.equal(1, red:call("PUBLISH", "held", "kept"))
      assert.same({ true, { kind = "message", channel = "held", payload = "kept" } }, { sluice.wait(t) })
      collectgarbage("collect")
      collectgarbage("collect")
      wait_for("no subscriber to held", function() return numsub("held") == 0 end)
    end)

    it("receives 10,000 messages in order", function()
      local sub = assert(red:subscribe("bulk", { max_pending = 10000 }))
      finally(function() sub:close() end)
      for base = 0, 9000, 1000 do
        local cmds = {}
        for i = 1, 1000 do cmds[i] = { "PUBLISH", "bulk", base + i } end
        local res = assert(red:pipeline(cmds))
        assert.same({ 1 }, res[1000])
      end
      for i = 1, 10000 do
        local m, err = sub:receive(5)
        assert(m, err)
        if m.payload ~= tostring(i) then assert.equal(tostring(i), m.payload) end
      end
      assert.same({ nil, "timeout" }, { sub:receive(0) })
      assert.same({ 10000, 0 }, { sub:info().received, sub:info().dropped })
    end)

    it("drops the oldest messages past max_pending and counts them", function()
      local sub = assert(red:subscribe("flood", { max_pending = 10 }))
      finally(function() sub:close() end)
      local cmds = {}
      for i = 1, 100 do cmds[i] = { "PUBLISH", "flood", i } end
      assert(red:pipeline(cmds))
      wait_for("100 messages", function() return sub:info().received == 100 end)
      assert.same({ 10, 90 }, { sub:info().pending, sub:info().dropped })
      for i = 91, 100 do assert.equal(tostring(i), sub:receive(0).payload) end
      assert.same({ nil, "timeout" }, { sub:receive(0) })
    end)

    it("subscribes again after a reconnect", function()
      local sub = assert(red:subscribe("again"))
      finally(function() sub:close() end)
      assert.is_true(red:call("CLIENT", "KILL", "TYPE", "pubsub") >= 1)
      wait_for("the subscription back", function()
        return sub:info().reconnects == 1 and sub:info().subscribed == 1
      end)
      assert.equal(1, red:call("PUBLISH", "again", "back"))
      assert.same({ kind = "message", channel = "again", payload = "back" }, sub:receive(2))
    end)

    it("fails when the subscription is not confirmed in time", function()
      -- not dead_port(): its blocking redis-cli would shorten the timers
      -- armed next (libevent arms them from the time its loop turn began)
      local port = srv.port == 60999 and 20000 or srv.port + 1
      local c = redis.connect { url = "redis://127.0.0.1:" .. port, connect_timeout = 0.2, command_timeout = 0.1 }
      finally(function() c:close() end)
      local t0 = sluice.now()
      assert.same({ nil, "timeout" }, { c:subscribe("x") })
      local dt = sluice.now() - t0
      assert.is_true(dt >= 0.29 and dt < 1, dt)
    end)

    it("checks its arguments and runs in tasks", function()
      assert.has_error(function() red:subscribe() end, "sluice.redis.subscribe: a channel expected")
      assert.has_error(function() red:psubscribe({}) end, "sluice.redis.psubscribe: a pattern expected")
      assert.has_error(function() red:subscribe("a", 1) end,
        "sluice.redis.subscribe: names must be strings, got number")
      assert.has_error(function() red:subscribe("a", { max = 1 }) end,
        "sluice.redis.subscribe: unknown option 'max'")
      assert.has_error(function() red:subscribe("a", { max_pending = 0 }) end,
        "sluice.redis.subscribe: option 'max_pending' must be an integer >= 1, got 0")
      local co = coroutine.create(function() return red:subscribe("a") end)
      local ok, err = coroutine.resume(co)
      assert.is_false(ok)
      assert.matches("sluice.redis subscribe", err)
      local sub = assert(red:subscribe("a"))
      finally(function() sub:close() end)
      assert.has_error(function() sub:receive(-1) end, "sluice.redis.receive: timeout must be a number >= 0")
    end)
  end)
end)
