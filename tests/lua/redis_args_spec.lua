-- sluice.redis: numbers as command arguments, in the exact text Redis gets
-- (ECHO sends it back), through call() (the C binding) and through
-- pipeline() and eval_script() (sluice.redis' own to_arg): one spelling.
local redis_server = require "support.redis_server"
local json = require "sluice.json"

-- value -> the text Redis receives: sluice.json.number's, but -0 is "0"
-- (INCRBY k -0 is refused by Redis) and nan/inf are spelt out.
local CASES = {
  { 42, "42" },
  { -7, "-7" },
  { -0.0, "0" },
  { 0.1, "0.1" },                      -- %.17g: 0.10000000000000001
  { 0.1 + 0.2, "0.30000000000000004" }, -- 17 digits are needed
  { 1 / 3, "0.3333333333333333" },      -- 16
  { 1.5, "1.5" },
  { -2.75e-7, "-2.75e-07" },
  { 2 ^ 53, "9007199254740992" },
  { 1e300, "1e+300" },
  { 2 ^ 53 - 1, "9007199254740991" },
  { math.huge, "inf" },
  { -math.huge, "-inf" },
  { 0 / 0, "nan" },
}

describe("sluice.redis number arguments", function()
  local srv, red

  setup(function() srv, red = redis_server.with_client() end)
  teardown(function() if srv then srv:shutdown(red) end end)

  it("call() sends the shortest text that reads back as the same double", function()
    for _, c in ipairs(CASES) do
      assert.equal(c[2], red:call("ECHO", c[1]))
    end
  end)

  it("pipeline() and eval_script() send the same text as call()", function()
    local cmds = {}
    for i, c in ipairs(CASES) do cmds[i] = { "ECHO", c[1] } end
    local res = assert(red:pipeline(cmds))
    for i, c in ipairs(CASES) do
      assert.same({ c[2] }, res[i])
      assert.equal(c[2], red:eval_script("return ARGV[1]", {}, { c[1] }))
    end
  end)

  it("-0 works where Redis wants an integer", function()
    assert.equal(0, red:call("INCRBY", "redis_args:n", -0.0))
    assert.equal(0, red:eval_script("return redis.call('INCRBY', KEYS[1], ARGV[1])",
      { "redis_args:n" }, { -0.0 }))
  end)

  it("int64_t/uint64_t cdata and json numerals go as their digits, through call, pipeline and eval_script", function()
    local MAX256 = "115792089237316195423570985008687907853269984665640564039457584007913129639935"
    local big = {
      { 9223372036854775807LL, "9223372036854775807" },
      { -9223372036854775807LL - 1, "-9223372036854775808" },
      { 18446744073709551615ULL, "18446744073709551615" },
      { json.numeral(MAX256), MAX256 },
      { json.numeral("0.123456789012345678"), "0.123456789012345678" },
      -- what json.decode gives for numbers a double would round
      { json.decode("9007199254740993"), "9007199254740993" },
      { json.decode("[1e400]")[1], "1e400" },
    }
    for _, c in ipairs(big) do
      assert.equal(c[2], red:call("ECHO", c[1]))
      assert.same({ { c[2] } }, red:pipeline({ { "ECHO", c[1] } }))
      assert.same({ { c[2] } }, red:pipeline(function(p) p:call("ECHO", c[1]) end))
      assert.equal(c[2], red:eval_script("return ARGV[1]", {}, { c[1] }))
    end
    assert.equal("OK", red:call("SET", "redis_args:big", 9223372036854775806LL))
    assert.equal("OK", red:call("SET", "redis_args:big", json.decode("9223372036854775806")))
    red:call("INCRBY", "redis_args:big", 1LL)
    assert.equal("9223372036854775807", red:call("GET", "redis_args:big"))
  end)

  it("other tables and cdata are refused, naming what is taken", function()
    local ffi = require "ffi"
    for _, v in ipairs({ {}, ffi.new("int[1]"), json.null }) do
      local ok, err = pcall(red.call, red, "ECHO", v)
      assert.is_false(ok)
      assert.matches("string, number, int64_t/uint64_t cdata or sluice.json numeral expected", err, 1, true)
    end
  end)

  it("integer replies beyond 2^53 come back as int64_t cdata, digit for digit", function()
    local ffi = require "ffi"
    assert.equal("OK", red:call("SET", "redis_args:big", "9223372036854775806"))
    local v = red:call("INCR", "redis_args:big")
    assert.is_true(ffi.istype("int64_t", v))
    assert.equal("9223372036854775807", json.int64_text(v))
    assert.equal("OK", red:call("SET", "redis_args:big", "-9007199254740993"))
    assert.equal("-9007199254740992", json.int64_text(red:call("INCR", "redis_args:big")))
    -- within 2^53 an integer reply stays a number
    assert.equal("OK", red:call("SET", "redis_args:big", "9007199254740990"))
    assert.equal(9007199254740991, red:call("INCR", "redis_args:big"))
    local res = assert(red:pipeline({ { "SET", "redis_args:big", "9223372036854775800" },
      { "INCRBY", "redis_args:big", 1 } }))
    assert.equal("9223372036854775801", json.int64_text(res[2][1]))
    assert.equal("OK", red:call("SET", "redis_args:big", "-9223372036854775807"))
    assert.equal("-9223372036854775808", json.int64_text(
      red:eval_script("return redis.call('DECR', KEYS[1])", { "redis_args:big" }, {})))
  end)
end)
