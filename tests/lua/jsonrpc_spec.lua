-- sluice.jsonrpc: calls and batches over a collector's pipeline, against a
-- sluice.server on loopback acting as a JSON-RPC node whose replies each
-- test scripts; exact envelopes on the wire, verdict effects on the
-- limiter, breaker and retry, id matching, hex quantities.
local server = require "sluice.server"
local collector = require "sluice.collector"
local json = require "sluice.json"
local jsonrpc = require "sluice.jsonrpc"

-- A node: records every request body; answers from a queue of
-- {status, body text}, or 200 with a result of "0x1" for each call.
local function node()
  local n = { queue = {}, bodies = {} }
  n.srv = assert(server.listen({ port = 0 }))
  n.url = "http://127.0.0.1:" .. n.srv.port
  n.srv:route("POST", "/*", function(req)
    n.bodies[#n.bodies + 1] = req.body
    n.paths = n.paths or {}
    n.paths[#n.paths + 1] = req.path
    local a = table.remove(n.queue, 1)
    if a then return a[1], a[2], { ["content-type"] = "application/json" } end
    local call = json.decode(req.body)
    return 200, '{"jsonrpc":"2.0","id":' .. call.id .. ',"result":"0x1"}',
      { ["content-type"] = "application/json" }
  end)
  function n:push(status, body) self.queue[#self.queue + 1] = { status, body } end
  return n
end

local function instance(url, overrides)
  local s = {
    name = "rpc_node", base_url = url, interval = 3600,
    retry = { strategy = "fixed", base_delay = 0.01, max_attempts = 3, budget = false },
    limiter = { rate = 50 },
    collect = function() return {} end,
  }
  for k, v in pairs(overrides or {}) do s[k] = v end
  return collector.new(collector.define(s))
end

local function failures(c) return c.breaker:status().statistics.total_failures end

describe("sluice.jsonrpc call", function()
  local n
  before_each(function() n = node() end)
  after_each(function() n.srv:close() end)

  it("sends JSON-RPC 2.0 envelopes with params [] and increasing ids", function()
    local c = instance(n.url)
    local rpc = jsonrpc.new(c, { path = "/rpc" })
    n:push(200, '{"jsonrpc":"2.0","id":1,"result":"0x12a61f2"}')
    assert.equal("0x12a61f2", rpc:call("eth_blockNumber"))
    n:push(200, '{"jsonrpc":"2.0","id":2,"result":{"number":"0x1b4","hash":"0xdc0818"}}')
    local block = rpc:call("eth_getBlockByNumber", { "0x1b4", false })
    assert.same({ number = "0x1b4", hash = "0xdc0818" }, block)
    n:push(200, '{"jsonrpc":"2.0","id":3,"result":null}')
    assert.equal(json.null, rpc:call("eth_getTransactionByHash", { "0xabc" }))
    assert.same({
      '{"id":1,"jsonrpc":"2.0","method":"eth_blockNumber","params":[]}',
      '{"id":2,"jsonrpc":"2.0","method":"eth_getBlockByNumber","params":["0x1b4",false]}',
      '{"id":3,"jsonrpc":"2.0","method":"eth_getTransactionByHash","params":["0xabc"]}',
    }, n.bodies)
    assert.same({ "/rpc", "/rpc", "/rpc" }, n.paths)
    assert.equal(3, c:stats().successful_requests)
  end)

  it("refuses params that are not a table and a method that is not a string", function()
    local rpc = jsonrpc.new(instance(n.url))
    assert.error_matches(function() rpc:call("eth_call", "0x1") end,
      "sluice.jsonrpc.call: bad argument #2 'params' (table expected, got string)", 1, true)
    assert.error_matches(function() rpc:call(7) end,
      "sluice.jsonrpc.call: bad argument #1 'method' (string expected, got number)", 1, true)
    assert.error_matches(function() jsonrpc.new({}) end,
      "sluice.jsonrpc.new: bad argument #1 (a collector instance expected, got table)", 1, true)
    assert.error_matches(function() jsonrpc.new(instance(n.url), { paht = "/" }) end,
      "sluice.jsonrpc.new: unknown option 'paht'", 1, true)
    assert.equal(0, #n.bodies)
  end)

  it("takes -32005 limit exceeded in a 200 as throttled: the limiter backs off, the call is retried", function()
    local c = instance(n.url)
    local rpc = jsonrpc.new(c)
    n:push(200, '{"jsonrpc":"2.0","id":1,"error":{"code":-32005,'
      .. '"message":"daily request count exceeded, request rate limited"}}')
    n:push(200, '{"jsonrpc":"2.0","id":1,"result":"0x2a"}')
    assert.equal("0x2a", rpc:call("eth_chainId"))
    assert.equal(2, #n.bodies)
    assert.equal(n.bodies[1], n.bodies[2]) -- the same envelope, the same id
    local st = c.limiter:stats()
    assert.equal(1, st.total_violations)
    assert.equal(2, c.limiter:metrics().backoff_multiplier)
    assert.equal(1, failures(c))
    assert.equal(1, c.retry:stats().retries)
  end)

  it("takes an HTTP 429 with Alchemy's code 429 as throttled, with the node's message once retries are spent", function()
    local c = instance(n.url, { retry = { strategy = "fixed", base_delay = 0.01, max_attempts = 2, budget = false } })
    local rpc = jsonrpc.new(c)
    local body = '{"jsonrpc":"2.0","id":1,"error":{"code":429,"message":'
      .. '"Your app has exceeded its compute units per second capacity."}}'
    n:push(429, body)
    n:push(429, body)
    local r, err, kind, e = rpc:call("eth_blockNumber")
    assert.is_nil(r)
    assert.equal("eth_blockNumber: JSON-RPC error 429: Your app has exceeded its compute units "
      .. "per second capacity.", err)
    assert.equal("throttled", kind)
    assert.same({ code = 429, message = "Your app has exceeded its compute units per second capacity." }, e)
    assert.equal(2, #n.bodies)
    assert.equal(2, c.limiter:stats().total_violations)
  end)

  it("takes a rate-limit message under another code as throttled (QuickNode -32007)", function()
    local c = instance(n.url, { retry = false })
    n:push(200, '{"jsonrpc":"2.0","id":1,"error":{"code":-32007,"message":"100/second request limit reached"}}')
    local _, err, kind = jsonrpc.new(c):call("eth_blockNumber")
    assert.equal("throttled", kind)
    assert.equal("eth_blockNumber: JSON-RPC error -32007: 100/second request limit reached", err)
    assert.equal(1, c.limiter:stats().total_violations)
  end)

  it("fails -32601 method not found at once: one request, a breaker failure, not retried", function()
    local c = instance(n.url)
    n:push(200, '{"jsonrpc":"2.0","id":1,"error":{"code":-32601,'
      .. '"message":"the method eth_foo does not exist/is not available"}}')
    local r, err, kind, e = jsonrpc.new(c):call("eth_foo")
    assert.is_nil(r)
    assert.equal("eth_foo: JSON-RPC error -32601: the method eth_foo does not exist/is not available", err)
    assert.equal("failure", kind)
    assert.equal(-32601, e.code)
    assert.equal(1, #n.bodies)
    assert.equal(1, failures(c))
    assert.equal(0, c.limiter:stats().total_violations)
  end)

  it("fails -32602, -32600, -32700 and -32004 without retrying", function()
    for _, code in ipairs({ -32602, -32600, -32700, -32004 }) do
      local c = instance(n.url)
      local before = #n.bodies
      n:push(200, '{"jsonrpc":"2.0","id":1,"error":{"code":' .. code .. ',"message":"no"}}')
      local _, _, kind = jsonrpc.new(c):call("eth_x")
      assert.equal("failure", kind)
      assert.equal(before + 1, #n.bodies)
    end
  end)

  it("retries -32603 internal error and HTTP 5xx", function()
    local c = instance(n.url)
    n:push(200, '{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"internal error"}}')
    n:push(502, '{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"bad gateway"}}')
    n:push(200, '{"jsonrpc":"2.0","id":1,"result":"0x10"}')
    assert.equal("0x10", jsonrpc.new(c):call("eth_gasPrice"))
    assert.equal(3, #n.bodies)
    assert.equal(2, failures(c))
  end)

  it("returns a reverted eth_call as the call's error: the node is healthy (a breaker success, no retry)", function()
    local c = instance(n.url)
    n:push(200, '{"jsonrpc":"2.0","id":1,"error":{"code":3,"message":"execution reverted: not owner",'
      .. '"data":"0x08c379a0"}}')
    local r, err, kind, e = jsonrpc.new(c):call("eth_call", { { to = "0x01" }, "latest" })
    assert.is_nil(r)
    assert.equal("eth_call: JSON-RPC error 3: execution reverted: not owner (0x08c379a0)", err)
    assert.equal("rpc", kind)
    assert.same({ code = 3, message = "execution reverted: not owner", data = "0x08c379a0" }, e)
    assert.equal(1, #n.bodies)
    assert.equal(0, failures(c))
    assert.equal(1, c.breaker:status().statistics.total_successes)
    assert.equal(1, c:stats().successful_requests)
    -- geth's -32000 form the same way (ids count per rpc object: 1 again)
    n:push(200, '{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"execution reverted"}}')
    assert.equal("rpc", select(3, jsonrpc.new(c):call("eth_call", { { to = "0x01" }, "latest" })))
    assert.equal(2, #n.bodies)
    assert.equal(0, failures(c))
  end)

  it("fails a reply with another id, or no JSON-RPC envelope, without retrying", function()
    local c = instance(n.url)
    local rpc = jsonrpc.new(c)
    n:push(200, '{"jsonrpc":"2.0","id":9,"result":"0x1"}')
    local r, err, kind = rpc:call("eth_blockNumber")
    assert.is_nil(r)
    assert.equal("eth_blockNumber: the reply's id 9 is not the request's (1)", err)
    assert.equal("failure", kind)
    n:push(200, '{"result":"0x1"}')
    assert.equal("eth_blockNumber: the reply is no JSON-RPC 2.0 response", select(2, rpc:call("eth_blockNumber")))
    assert.equal(2, #n.bodies)
    assert.equal(2, failures(c))
  end)

  it("lets the collector's classify have the last word after the JSON-RPC one", function()
    -- a provider whose -32099 means "slow down": the collector says so
    local c = instance(n.url, { retry = false, classify = function(_, res)
      local b = res:json()
      if type(b) == "table" and type(b.error) == "table" and b.error.code == -32099 then
        return "throttled", "provider busy"
      end
    end })
    n:push(200, '{"jsonrpc":"2.0","id":1,"error":{"code":-32099,"message":"busy"}}')
    local _, err, kind = jsonrpc.new(c):call("eth_blockNumber")
    assert.equal("throttled", kind)
    assert.equal("provider busy", err)
    assert.equal(1, c.limiter:stats().total_violations)
  end)
end)

describe("sluice.jsonrpc batch", function()
  local n
  before_each(function() n = node() end)
  after_each(function() n.srv:close() end)

  it("matches replies in any order to the calls by id, with each entry's result or error", function()
    local c = instance(n.url)
    local rpc = jsonrpc.new(c)
    assert.equal("0x1", rpc:call("net_version")) -- id 1: the batch's ids follow
    n:push(200, '[{"jsonrpc":"2.0","id":4,"error":{"code":-32601,"message":"the method eth_foo does not exist"}},'
      .. '{"jsonrpc":"2.0","id":2,"result":"0x12a61f2"},'
      .. '{"jsonrpc":"2.0","id":3,"result":"0x1"}]')
    local out, err = rpc:batch{ { "eth_blockNumber" }, { "eth_chainId", {} }, { "eth_foo", { 1 } } }
    assert.is_nil(err)
    assert.same({
      { result = "0x12a61f2" },
      { result = "0x1" },
      { error = "eth_foo: JSON-RPC error -32601: the method eth_foo does not exist", kind = "rpc", code = -32601 },
    }, out)
    assert.equal('[{"id":2,"jsonrpc":"2.0","method":"eth_blockNumber","params":[]},'
      .. '{"id":3,"jsonrpc":"2.0","method":"eth_chainId","params":{}},'
      .. '{"id":4,"jsonrpc":"2.0","method":"eth_foo","params":[1]}]', n.bodies[2])
    assert.equal(2, #n.bodies)
    assert.equal(0, failures(c)) -- the batch was answered
  end)

  it("makes a missing, unknown or repeated id an error of that entry", function()
    local rpc = jsonrpc.new(instance(n.url))
    n:push(200, '[{"jsonrpc":"2.0","id":3,"result":"0x3"},{"jsonrpc":"2.0","id":77,"result":"0x4"},'
      .. '{"jsonrpc":"2.0","id":2,"result":"0x5"},{"jsonrpc":"2.0","id":2,"result":"0x6"}]')
    local out = rpc:batch{ { "a" }, { "b" }, { "c" } }
    assert.same({
      { kind = "protocol", error = "a: no reply carries id 1" },
      { kind = "protocol", error = "b: two replies carry id 2" },
      { result = "0x3" },
    }, out)
  end)

  it("fails a batch whose reply is not an array, and throttles on one rate-limit error object", function()
    local c = instance(n.url, { retry = false })
    local rpc = jsonrpc.new(c)
    n:push(200, '{"jsonrpc":"2.0","id":1,"result":"0x1"}')
    local out, err, kind = rpc:batch{ { "a" }, { "b" } }
    assert.is_nil(out)
    assert.equal("JSON-RPC batch: the reply is not an array", err)
    assert.equal("failure", kind)
    n:push(200, '"nope"')
    out, err, kind = rpc:batch{ { "a" } }
    assert.is_nil(out)
    assert.equal("JSON-RPC batch: the reply is not an array", err)
    assert.equal("failure", kind)
    n:push(200, '{"jsonrpc":"2.0","id":null,"error":{"code":-32005,"message":"limit exceeded"}}')
    out, err, kind = rpc:batch{ { "a" } }
    assert.is_nil(out)
    assert.equal("JSON-RPC error -32005: limit exceeded", err)
    assert.equal("throttled", kind)
    assert.equal(1, c.limiter:stats().total_violations)
    assert.equal(3, #n.bodies)
  end)

  it("retries the whole batch, with the same ids, when an entry is throttled", function()
    local c = instance(n.url)
    local rpc = jsonrpc.new(c)
    n:push(200, '[{"jsonrpc":"2.0","id":2,"result":"0x2"},'
      .. '{"jsonrpc":"2.0","id":1,"error":{"code":429,"message":"rate limit exceeded"}}]')
    n:push(200, '[{"jsonrpc":"2.0","id":2,"result":"0x2"},{"jsonrpc":"2.0","id":1,"result":"0x1"}]')
    local out = rpc:batch{ { "a" }, { "b" } }
    assert.same({ { result = "0x1" }, { result = "0x2" } }, out)
    assert.equal(2, #n.bodies)
    assert.equal(n.bodies[1], n.bodies[2])
    assert.equal(1, c.limiter:stats().total_violations)
  end)

  it("refuses an empty batch and a call that is not {method, params}", function()
    local rpc = jsonrpc.new(instance(n.url))
    assert.error_matches(function() rpc:batch{} end,
      "sluice.jsonrpc.batch: bad argument #1 (a non-empty list of {method, params} expected)", 1, true)
    assert.error_matches(function() rpc:batch{ { "a" }, "b" } end,
      "sluice.jsonrpc.batch: bad argument #1 (call 2 is not {method [, params]})", 1, true)
    assert.equal(0, #n.bodies)
  end)
end)

describe("sluice.jsonrpc quantities", function()
  local ffi = require "ffi"
  local bignum = require "sluice.bignum"

  it("reads hex quantities as numbers up to 2^53 and uint64_t beyond", function()
    assert.equal(0, jsonrpc.quantity("0x0"))
    assert.equal(19554802, jsonrpc.quantity("0x12a61f2"))
    assert.equal(2 ^ 53, jsonrpc.quantity("0x20000000000000"))
    local u = jsonrpc.quantity("0x20000000000001")
    assert.is_true(ffi.istype("uint64_t", u))
    assert.equal("9007199254740993", json.int64_text(u))
    assert.equal("2000000000000000000", json.int64_text(jsonrpc.quantity("0x1bc16d674ec80000")))
    assert.equal("18446744073709551615", json.int64_text(jsonrpc.quantity("0xFFFFFFFFFFFFFFFF")))
  end)

  it("reads quantities beyond 2^64-1 as json numerals of their digits, and refuses what is no hex quantity", function()
    local n = jsonrpc.quantity("0x10000000000000000")
    assert.equal("18446744073709551616", json.numeral_text(n))
    local max = string.rep("f", 64)
    assert.equal(bignum.UINT256_MAX, json.numeral_text(jsonrpc.quantity("0x" .. max)))
    assert.equal("0x" .. max, jsonrpc.to_quantity(jsonrpc.quantity("0x" .. max)))
    assert.error_matches(function() jsonrpc.quantity("12") end,
      'sluice.jsonrpc.quantity: bad argument #1 ("0x" and hex digits expected, got "12")', 1, true)
    assert.error_matches(function() jsonrpc.quantity("0x") end, "hex digits expected", 1, true)
    assert.error_matches(function() jsonrpc.quantity(12) end,
      "sluice.jsonrpc.quantity: bad argument #1 (hex string expected, got number)", 1, true)
  end)

  it("writes quantities without leading zeros", function()
    assert.equal("0x0", jsonrpc.to_quantity(0))
    assert.equal("0x12a61f2", jsonrpc.to_quantity(19554802))
    assert.equal("0x20000000000000", jsonrpc.to_quantity(2 ^ 53))
    assert.equal("0x20000000000001", jsonrpc.to_quantity(jsonrpc.quantity("0x20000000000001")))
    assert.equal("0xffffffffffffffff", jsonrpc.to_quantity("18446744073709551615"))
    assert.equal("0x1bc16d674ec80000", jsonrpc.to_quantity(json.numeral("2000000000000000000")))
    assert.equal("0x7fffffffffffffff", jsonrpc.to_quantity(ffi.new("int64_t", 2 ^ 62) * 2 - 1))
  end)

  it("refuses what would round, is negative or is beyond 2^256-1", function()
    assert.error_matches(function() jsonrpc.to_quantity(2 ^ 53 + 2) end,
      "sluice.jsonrpc.to_quantity: bad argument #1 (an integer 0..2^53 expected, got 9007199254740994; "
      .. "beyond 2^53 pass a uint64_t cdata or decimal digits)", 1, true)
    assert.error_matches(function() jsonrpc.to_quantity(1.5) end, "got 1.5;", 1, true)
    assert.error_matches(function() jsonrpc.to_quantity(ffi.new("int64_t", -1)) end,
      "a quantity is >= 0, got -1LL", 1, true)
    assert.equal("0x10000000000000000", jsonrpc.to_quantity("18446744073709551616"))
    assert.error_matches(function() jsonrpc.to_quantity(bignum.add(bignum.UINT256_MAX, 1)) end,
      "sluice.jsonrpc.to_quantity: bad argument #1 (beyond 2^256-1: 1157920892373161954235", 1, true)
    assert.error_matches(function() jsonrpc.to_quantity("0x10") end,
      'got "0x10")', 1, true)
  end)
end)
