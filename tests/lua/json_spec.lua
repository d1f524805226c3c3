-- sluice.json: exact JSON text (numbers that read back, sorted keys).
local json = require "sluice.json"

describe("sluice.json", function()
  describe("number", function()
    it("writes integral values within 2^53 as integers", function()
      assert.equal("42", json.number(42))
      assert.equal("-7", json.number(-7))
      assert.equal("0", json.number(0))
      assert.equal("1700000060000", json.number(1700000060000))
      assert.equal("9007199254740991", json.number(2 ^ 53 - 1))
      assert.equal("-9007199254740991", json.number(-(2 ^ 53 - 1)))
    end)

    it("writes any other finite number as the shortest %.15g, %.16g or %.17g that reads back", function()
      local cases = {
        { 0.1, "0.1" },                                   -- %.15g
        { -1.5, "-1.5" },
        { 1e300, "1e+300" },
        { 4.94065645841247e-324, "4.94065645841247e-324" },
        { 1732291234.567891, "1732291234.567891" },       -- %.16g
        { 1 / 3, "0.3333333333333333" },
        { 2 ^ 53, "9007199254740992" },
        { 2 ^ 63, "9.223372036854776e+18" },
        { 0.1 + 0.2, "0.30000000000000004" },             -- %.17g
        { 123456789012.34567, "123456789012.34567" },
      }
      for _, c in ipairs(cases) do
        local s = json.number(c[1])
        assert.equal(c[2], s)
        assert.equal(c[1], tonumber(s))
      end
    end)

    it("writes -0 as -0, which reads back as -0 (cjson's decoder keeps the sign)", function()
      assert.equal("-0", json.number(-0.0))
      assert.equal("0", json.number(0))
      assert.equal(-math.huge, 1 / json.decode(json.number(-0.0)))
      assert.equal("[-0,0]", json.encode({ -0.0, 0 }))
      assert.equal(-math.huge, 1 / json.decode(json.encode({ -0.0 }))[1])
    end)

    it("returns nil, err for nan, inf and -inf, and raises for a non-number", function()
      assert.same({ nil, "cannot encode nan" }, { json.number(0 / 0) })
      assert.same({ nil, "cannot encode inf" }, { json.number(math.huge) })
      assert.same({ nil, "cannot encode -inf" }, { json.number(-math.huge) })
      local ok, e = pcall(json.number, "1")
      assert.is_false(ok)
      assert.equal("sluice.json.number: bad argument #1 (number or int64_t/uint64_t cdata expected, got string)",
        (tostring(e):gsub("^[^:]+:%d+: ", "")))
    end)
  end)

  describe("encode", function()
    it("sorts object keys, writes arrays, exact numbers, null and escaped strings", function()
      assert.equal('{"1.5":false,"2":"x","a":[0.1,true,null],"b":1,"e":{},"s":"q\\"\\n\\u0001\\/"}',
        json.encode({ b = 1, a = { 0.1, true, json.null }, [2] = "x", [1.5] = false, e = {}, s = 'q"\n\1/' }))
      assert.equal('{"1":1,"2":2,"x":1}', json.encode({ 1, 2, x = 1 }))
      assert.equal('{"2":"x"}', json.encode({ [2] = "x" }))
      assert.equal("[1,[2,[3]]]", json.encode({ 1, { 2, { 3 } } }))
      assert.equal('"\195\169\\u0000"', json.encode("\195\169\0"))
      assert.equal("null", json.encode(nil))
      assert.equal("0.30000000000000004", json.encode(0.1 + 0.2))
      -- equal tables built in another order give equal text
      local a, b = {}, {}
      for i = 1, 20 do a["k" .. i] = i end
      for i = 20, 1, -1 do b["k" .. i] = i end
      assert.equal(json.encode(a), json.encode(b))
    end)

    it("fails with the reason on what JSON cannot hold", function()
      assert.same({ nil, "cannot encode a function" }, { json.encode({ f = print }) })
      assert.same({ nil, "cannot encode a thread" }, { json.encode(coroutine.create(print)) })
      assert.same({ nil, "cannot encode a boolean key" }, { json.encode({ [true] = 1 }) })
      assert.same({ nil, "cannot encode nan" }, { json.encode({ 0 / 0 }) })
      assert.same({ nil, "cannot encode -inf" }, { json.encode(-math.huge) })
      local cycle = {}
      cycle.c = cycle
      assert.same({ nil, "cannot encode: nested too deep (a cycle?)" }, { json.encode(cycle) })
      local deep = {}
      local t = deep
      for _ = 1, 64 do t.x = {}; t = t.x end
      assert.equal(string.rep('{"x":', 64) .. "{}" .. string.rep("}", 64), json.encode(deep))
      t.x = {}
      assert.same({ nil, "cannot encode: nested too deep (a cycle?)" }, { json.encode(deep) })
    end)

    it("writes a number key as json.number writes it: distinct keys, distinct text", function()
      -- whole numbers outside +-2^53 were written with %d, all of 2^63 and
      -- beyond as -9223372036854775808: duplicate keys, a value lost
      assert.equal('{"1.8446744073709552e+19":2,"9.223372036854776e+18":1}',
        json.encode({ [2 ^ 63] = 1, [2 ^ 64] = 2 }))
      assert.equal('{"-9.223372036854776e+18":1,"9.223372036854776e+18":2}',
        json.encode({ [-2 ^ 63] = 1, [2 ^ 63] = 2 }))
      assert.equal('{"9007199254740992":1,"9007199254740994":2}',
        json.encode({ [2 ^ 53] = 1, [2 ^ 53 + 2] = 2 }))
      assert.equal('{"-1":2,"0.1":3,"1e+300":4,"7":1}', json.encode({ [7] = 1, [-1] = 2, [0.1] = 3, [1e300] = 4 }))
      local decoded = json.decode(json.encode({ [2 ^ 63] = "a", [2 ^ 63 + 2048] = "b" }))
      assert.same({ ["9.223372036854776e+18"] = "a", ["9.223372036854778e+18"] = "b" }, decoded)
    end)

    it("fails on an inf key and on two keys written the same; lenient writes both", function()
      assert.same({ nil, "cannot encode the key inf" }, { json.encode({ [math.huge] = 1 }) })
      assert.same({ nil, "cannot encode the key -inf" }, { json.encode({ [-math.huge] = 1 }) })
      assert.same({ nil, 'cannot encode: two keys are written "1"' },
        { json.encode({ [1] = "number", ["1"] = "string", x = 0 }) })
      assert.equal('{"1":"string","1":"number","x":0}',
        json.encode({ [1] = "number", ["1"] = "string", x = 0 }, true))
      assert.equal('{"inf":1}', json.encode({ [math.huge] = 1 }, true))
      assert.equal('{"true":"string","true":"boolean"}', json.encode({ [true] = "boolean", ["true"] = "string" }, true))
    end)

    it("lenient: writes nan and inf as null, other values and keys as text, a table too deep as a marker", function()
      local s = json.encode({ f = print, n = 0 / 0, i = math.huge, [true] = 1 }, true)
      assert.truthy(s:find('^{"f":"function: [^"]+","i":null,"n":null,"true":1}$'), s)
      local cycle = {}
      cycle.c = cycle
      assert.equal(string.rep('{"c":', 65) .. '"<nested too deep>"' .. string.rep("}", 65),
        json.encode(cycle, true))
    end)

    it("lets an error raised by a metamethod through", function()
      local bad = setmetatable({}, { __tostring = function() error("no tostring", 0) end })
      assert.same({ false, "no tostring" }, { pcall(json.encode, { [bad] = 1 }, true) })
    end)
  end)

  describe("int64_t and uint64_t cdata", function()
    local ffi = require "ffi"

    it("number writes their digits exactly, without LL/ULL", function()
      assert.equal("9223372036854775807", json.number(9223372036854775807LL))
      assert.equal("-9223372036854775808", json.number(-9223372036854775807LL - 1))
      assert.equal("18446744073709551615", json.number(18446744073709551615ULL))
      assert.equal("9007199254740993", json.number(ffi.new("int64_t", 2 ^ 53) + 1))
      assert.equal("0", json.number(0ULL))
      assert.equal("-1", json.number(-1LL))
    end)

    it("encode writes them as numbers, as values in arrays and objects", function()
      assert.equal('{"max":9223372036854775807,"min":-9223372036854775808,"u":[18446744073709551615,1]}',
        json.encode({ max = 9223372036854775807LL, min = -9223372036854775807LL - 1,
          u = { 18446744073709551615ULL, 1ULL } }))
      assert.equal("9007199254740993", json.encode(ffi.new("uint64_t", 9007199254740993ULL)))
    end)

    it("other cdata stay unencodable", function()
      assert.same({ nil, "cannot encode a cdata" }, { json.encode({ ffi.new("int32_t", 1) }) })
      assert.has_error(function() json.number(ffi.new("double", 1)) end,
        "sluice.json.number: bad argument #1 (number or int64_t/uint64_t cdata expected, got cdata)")
    end)
  end)

  describe("arrays", function()
    it("empty_array encodes as [], alone, nested and inside objects; {} stays an object", function()
      assert.equal("[]", json.encode(json.empty_array))
      assert.equal('{"id":1,"method":"eth_blockNumber","params":[]}',
        json.encode({ id = 1, method = "eth_blockNumber", params = json.empty_array }))
      assert.equal('[[],{},[[]]]', json.encode({ json.empty_array, {}, { json.empty_array } }))
      assert.equal("{}", json.encode({}))
    end)

    it("empty_array is read-only and not taken by json.array", function()
      assert.has_error(function() json.empty_array[1] = 1 end, "sluice.json.empty_array is read-only")
      assert.is_nil(next(json.empty_array))
      assert.has_error(function() json.array(json.empty_array) end,
        "sluice.json.array: bad argument #1 (the table already has a metatable)")
    end)

    it("array marks a table: [] while empty, its elements once filled", function()
      local p = json.array()
      assert.equal("[]", json.encode(p))
      assert.equal('{"params":[]}', json.encode({ params = p }))
      p[1] = "0x1b4"
      p[2] = false
      assert.equal('{"params":["0x1b4",false]}', json.encode({ params = p }))
      local t = {}
      assert.equal(t, json.array(t))
      assert.equal(t, json.array(t))
      assert.equal('[[],[1,[]]]', json.encode(json.array({ json.array(), json.array({ 1, json.array() }) })))
    end)

    it("array refuses what it cannot mark; encode refuses a marked table with other keys", function()
      assert.has_error(function() json.array(1) end, "sluice.json.array: bad argument #1 (table expected, got number)")
      assert.has_error(function() json.array(setmetatable({}, {})) end,
        "sluice.json.array: bad argument #1 (the table already has a metatable)")
      assert.same({ nil, "cannot encode: a json.array table has the key x" },
        { json.encode(json.array({ 1, x = 2 })) })
      assert.same({ nil, "cannot encode: a json.array table has the key 0" },
        { json.encode({ a = json.array({ [0] = 1 }) }) })
      assert.equal('{"1":1,"x":2}', json.encode(json.array({ 1, x = 2 }), true))
    end)
  end)

  describe("decode", function()
    it("returns the value, json.null for null, and nil, err for bad text", function()
      assert.same({ a = { 1, json.null } }, json.decode('{"a":[1,null]}'))
      assert.equal(json.null, json.decode('{"a":[1,null]}').a[2])
      assert.equal(0.1 + 0.2, json.decode(json.encode(0.1 + 0.2)))
      assert.same({ nil, "Expected object key string but found invalid token at character 2" },
        { json.decode("{x") })
    end)
  end)

  describe("numeral", function()
    local MAX256 = "115792089237316195423570985008687907853269984665640564039457584007913129639935"

    it("keeps a number's text and writes it as it is", function()
      local n = json.numeral(MAX256)
      assert.equal(MAX256, tostring(n))
      assert.equal(MAX256, json.numeral_text(n))
      assert.equal('{"a":' .. MAX256 .. ',"b":[0.00001234,-1.5e-3]}',
        json.encode({ a = n, b = { json.numeral("0.00001234"), json.numeral("-1.5e-3") } }))
    end)

    it("compares by text and is read-only", function()
      assert.is_true(json.numeral("12.50") == json.numeral("12.50"))
      assert.is_false(json.numeral("12.50") == json.numeral("12.5"))
      local n = json.numeral("1")
      assert.has_error(function() n.x = 1 end, "a sluice.json.numeral is read-only")
      assert.equal("sluice.json.numeral", getmetatable(n))
    end)

    it("refuses what is not a JSON number", function()
      for _, bad in ipairs({ "01", "1.", "+1", "1e", ".5", "1.5e+", "", "0x10", " 1", "1 " }) do
        assert.has_error(function() json.numeral(bad) end,
          "sluice.json.numeral: bad argument #1 (the text of a JSON number expected, got "
          .. json.encode(bad) .. ")")
      end
      assert.has_error(function() json.numeral(1) end,
        "sluice.json.numeral: bad argument #1 (the text of a JSON number expected, got number)")
    end)

    it("numeral_text is nil for anything else", function()
      assert.is_nil(json.numeral_text("1"))
      assert.is_nil(json.numeral_text({}))
      assert.is_nil(json.numeral_text(1))
    end)
  end)
end)
