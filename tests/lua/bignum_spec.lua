-- sluice.bignum: exact arithmetic on text: hex quantities, wei/gwei/ether,
-- 2^256-1, negative and fractional values, every input form, and misuse
-- that names the argument.
local bignum = require "sluice.bignum"
local json = require "sluice.json"
local ffi = require "ffi"

local MAX = "115792089237316195423570985008687907853269984665640564039457584007913129639935" -- 2^256-1
local MAX_HEX = "0x" .. string.rep("f", 64)

local function raises(pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok)
  assert.is_truthy(tostring(err):find(pattern, 1, true), "message was: " .. tostring(err))
end

describe("sluice.bignum", function()
  describe("hex", function()
    it("reads JSON-RPC quantities exactly", function()
      assert.equal("2000000000000000000", bignum.from_hex("0x1bc16d674ec80000"))
      assert.equal("0", bignum.from_hex("0x0"))
      assert.equal("255", bignum.from_hex("0xFF"))
      assert.equal("1", bignum.from_hex("0x0001"))
      assert.equal(MAX, bignum.from_hex(MAX_HEX))
    end)

    it("writes quantities without leading zeros, 0x0 for zero", function()
      assert.equal("0x1bc16d674ec80000", bignum.to_hex("2000000000000000000"))
      assert.equal("0x0", bignum.to_hex(0))
      assert.equal("0x0", bignum.to_hex("0.000"))
      assert.equal("0xa", bignum.to_hex("10.00"))
      assert.equal("0x10", bignum.to_hex(16LL))
      assert.equal(MAX_HEX, bignum.to_hex(MAX))
      assert.equal("0x10000000000000000000000000000000000000000000000000000000000000000",
        bignum.to_hex(bignum.add(MAX, 1)))
    end)

    it("refuses bad hex, a signed hex and hex of a negative or fractional value", function()
      raises('from_hex: bad argument #1 (a number expected, got "0xzz": invalid hex digit)', bignum.from_hex, "0xzz")
      raises('from_hex: bad argument #1 (a number expected, got "0x": no digits after 0x)', bignum.from_hex, "0x")
      raises('from_hex: bad argument #1 (a "0x" hex string expected, got "ff")', bignum.from_hex, "ff")
      raises('from_hex: bad argument #1 (a "0x" hex string expected, got "-0x1")', bignum.from_hex, "-0x1")
      raises("from_hex: bad argument #1 (string expected, got number)", bignum.from_hex, 16)
      raises('to_hex: bad argument #1 (a non-negative integer expected, got "-1": negative)', bignum.to_hex, -1)
      raises('to_hex: bad argument #1 (a non-negative integer expected, got "1.5": not an integer)', bignum.to_hex, "1.5")
      raises('add: bad argument #1 (a number expected, got "0x1.8": invalid hex digit)', bignum.add, "0x1.8", 1)
    end)

    it("takes hex wherever a number is meant", function()
      assert.equal("2000000000000000001", bignum.add("0x1bc16d674ec80000", 1))
      assert.equal(1, bignum.cmp("0x10", "15.99"))
    end)
  end)

  describe("normalize", function()
    it("writes canonical text", function()
      assert.equal("-12.34", bignum.normalize("-12.3400"))
      assert.equal("0", bignum.normalize("-0"))
      assert.equal("0", bignum.normalize("-0.000"))
      assert.equal("7.5", bignum.normalize("+007.50"))
      assert.equal("0.5", bignum.normalize(".5"))
      assert.equal("5", bignum.normalize("5."))
      assert.equal("100", bignum.normalize("100"))
      assert.equal("-100", bignum.normalize("-100.0"))
      assert.equal(MAX, bignum.normalize(MAX))
    end)

    it("reads exponents exactly", function()
      assert.equal("0.00000001", bignum.normalize("1e-8"))
      assert.equal("1500", bignum.normalize("1.5E3"))
      assert.equal("-0.0015", bignum.normalize("-1.5e-3"))
      assert.equal("1" .. string.rep("0", 80), bignum.normalize("1e+80"))
      raises('normalize: bad argument #1 (a number expected, got "1e10001": exponent out of range)',
        bignum.normalize, "1e10001")
    end)

    it("takes exact Lua numbers, int64/uint64 cdata and json numerals", function()
      assert.equal("42", bignum.normalize(42))
      assert.equal("-3", bignum.normalize(-3))
      assert.equal("0", bignum.normalize(-0.0))
      assert.equal("9007199254740991", bignum.normalize(2 ^ 53 - 1))
      assert.equal("0.00001234", bignum.normalize(0.00001234))
      assert.equal("0.1", bignum.normalize(0.1))
      assert.equal("0.30000000000000004", bignum.normalize(0.1 + 0.2))
      assert.equal("1730729903.941123", bignum.normalize(1730729903.941123))
      assert.equal("9223372036854775807", bignum.normalize(9223372036854775807LL))
      assert.equal("-9223372036854775808", bignum.normalize(ffi.new("int64_t", -2 ^ 63)))
      assert.equal("18446744073709551615", bignum.normalize(18446744073709551615ULL))
      assert.equal(MAX, bignum.normalize(json.numeral(MAX)))
      assert.equal("-1250", bignum.normalize(json.numeral("-12.5e2")))
    end)

    it("refuses Lua numbers a double may have rounded, nan, inf and other types", function()
      raises("normalize: bad argument #1 (a number expected, got a number beyond 2^53", bignum.normalize, 2 ^ 53)
      raises("normalize: bad argument #1 (a number expected, got a number beyond 2^53", bignum.normalize, -1e20)
      raises("normalize: bad argument #1 (a number expected, got nan)", bignum.normalize, 0 / 0)
      raises("normalize: bad argument #1 (a number expected, got inf)", bignum.normalize, math.huge)
      raises("normalize: bad argument #1 (a number expected, got -inf)", bignum.normalize, -math.huge)
      raises("normalize: bad argument #1 (a number expected, got table)", bignum.normalize, {})
      raises("normalize: bad argument #1 (a number expected, got nil)", bignum.normalize, nil)
      raises("normalize: bad argument #1 (a number expected, got boolean)", bignum.normalize, true)
      raises("normalize: bad argument #1 (a number expected, got cdata)", bignum.normalize, ffi.new("double", 1))
    end)

    it("refuses text that is not a number, quoting it", function()
      for _, s in ipairs({ "", "abc", "1.2.3", " 1", "1 ", "1e", "1e+", "--1", "+-1", ".", "-", "1,5",
        "nan", "inf", "0x", "1\0" }) do
        raises("normalize: bad argument #1 (a number expected, got ", bignum.normalize, s)
      end
      raises('(a number expected, got "12abc": not a number)', bignum.normalize, "12abc")
      raises('(a number expected, got "' .. string.rep("9", 40) .. '...": not a number)',
        bignum.normalize, string.rep("9", 50) .. "x")
      raises("text too long", bignum.normalize, string.rep("1", 100001))
      assert.equal(string.rep("1", 100000), bignum.normalize(string.rep("1", 100000)))
    end)

    it("points misuse at the caller's line", function()
      local calls = {
        add = function() bignum.add("x", 1) end,
        scale = function() bignum.scale(1, 0.5) end,
        from_hex = function() bignum.from_hex("12") end,
        to_hex = function() bignum.to_hex(-1) end,
        normalize = function() bignum.normalize({}) end,
        div = function() bignum.div(1, 0, 1) end,
      }
      for name, fn in pairs(calls) do
        local ok, err = pcall(fn)
        assert.is_false(ok)
        assert.matches("^[^:]*bignum_spec.lua:%d+: sluice.bignum." .. name, err)
      end
    end)
  end)

  describe("parse", function()
    it("answers nil, err instead of raising", function()
      assert.equal("-12.34", bignum.parse("-12.3400"))
      assert.same({ nil, 'not a number: "abc" (not a number)' }, { bignum.parse("abc") })
      assert.same({ nil, "not a number (nan)" }, { bignum.parse(0 / 0) })
      assert.same({ nil, "not a number (table)" }, { bignum.parse({}) })
      assert.same({ nil, 'not a number: "0xq" (invalid hex digit)' }, { bignum.parse("0xq") })
    end)
  end)

  describe("arithmetic", function()
    it("adds, subtracts and multiplies exactly", function()
      assert.equal("0.3", bignum.add("0.1", "0.2"))
      assert.equal("0.3", bignum.add(0.1, 0.2))
      assert.equal("-0.0001", bignum.sub("1", "1.0001"))
      assert.equal("0", bignum.sub("1.50", "1.5"))
      assert.equal("-3", bignum.mul("-1.5", "2"))
      assert.equal("115792089237316195423570985008687907853269984665640564039457584007913129639936",
        bignum.add(MAX, 1))
      assert.equal(MAX, bignum.sub(bignum.add(MAX, 1), 1))
      -- (2^256-1)^2 = 2^512 - 2^257 + 1
      assert.equal("13407807929942597099574024998205846127479365820592393377723561443721764030073"
        .. "315392623399665776056285720014482370779510884422601683867654778417822746804225",
        bignum.mul(MAX, MAX))
      assert.equal("-18446744073709551616", bignum.mul(-1, bignum.add(18446744073709551615ULL, 1)))
      assert.equal("1.0000000000000000000000000001", bignum.add("1", "1e-28"))
    end)

    it("compares by value", function()
      assert.equal(0, bignum.cmp("1.50", "1.5"))
      assert.equal(1, bignum.cmp("10", "9"))
      assert.equal(-1, bignum.cmp("-2", "1"))
      assert.equal(-1, bignum.cmp("-2", "-1.99"))
      assert.equal(0, bignum.cmp("-0", "0.00"))
      assert.equal(1, bignum.cmp(bignum.add(MAX, 1), MAX))
      assert.equal(-1, bignum.cmp("0.00001234", "0.0000124"))
      assert.equal(1, bignum.cmp(MAX_HEX, 18446744073709551615ULL))
    end)

    it("scales wei to gwei and ether and back", function()
      assert.equal("1.5", bignum.scale("1500000000000000000", -18))
      assert.equal("1500000000", bignum.scale("1500000000000000000", -9))
      assert.equal("1500000000000000000", bignum.scale("1.5", 18))
      assert.equal("0.000000000000000001", bignum.scale(1, -18))
      assert.equal("115792089237316195423570985008687907853269984665640564039457.584007913129639935",
        bignum.scale(MAX, -18))
      assert.equal("-12.5", bignum.scale("-1250", -2))
      assert.equal("42", bignum.scale("42", 0))
      raises("scale: bad argument #2 ('k' must be an integer in [-10000, 10000], got 0.5)", bignum.scale, 1, 0.5)
      raises("scale: bad argument #2 ('k' must be an integer in [-10000, 10000], got 10001)", bignum.scale, 1, 10001)
      raises("scale: bad argument #2 ('k' must be an integer in [-10000, 10000], got string)", bignum.scale, 1, "2")
    end)

    it("divides, truncating toward zero to the places asked", function()
      assert.equal("0.6666", bignum.div("2", "3", 4))
      assert.equal("0", bignum.div("2", "3", 0))
      assert.equal("-3", bignum.div("-7", "2", 0))
      assert.equal("-3.5", bignum.div("7", "-2", 1))
      assert.equal("3.5", bignum.div("-7", "-2", 5))
      assert.equal("1.5", bignum.div("1500000000000000000", "1e18", 18))
      assert.equal("2.5", bignum.div("0.5", "0.2", 3))
      assert.equal("0.333333333333333333333333333333", bignum.div(1, 3, 30))
      raises("sluice.bignum.div: division by zero", bignum.div, 1, "0.000", 2)
      raises("div: bad argument #3 ('places' must be an integer in [0, 10000], got -1)", bignum.div, 1, 2, -1)
      raises("div: bad argument #3 ('places' must be an integer in [0, 10000], got nil)", bignum.div, 1, 2)
    end)

    it("names the argument at fault", function()
      raises('add: bad argument #2 (a number expected, got "x": not a number)', bignum.add, 1, "x")
      raises('sub: bad argument #1 (a number expected, got "x": not a number)', bignum.sub, "x", 1)
      raises("mul: bad argument #2 (a number expected, got nil)", bignum.mul, 1)
      raises('cmp: bad argument #2 (a number expected, got "": empty text)', bignum.cmp, 1, "")
      raises('div: bad argument #2 (a number expected, got "y": not a number)', bignum.div, 1, "y", 2)
    end)
  end)
end)
