-- sluice.redis: numbers as command arguments, in the exact text Redis gets
-- (ECHO sends it back), through call() (the C binding) and through
-- pipeline() and eval_script() (sluice.redis' own to_arg): one spelling.
local redis_server = require "support.redis_server"

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
end)
