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
    local ffi = require "ffi"
    local MAX256 = "115792089237316195423570985008687907853269984665640564039457584007913129639935"

    -- the value's Lua type, the type of cdata, and its text as encode writes it
    local function kind(v)
      if type(v) == "cdata" then
        return ffi.istype("int64_t", v) and "int64_t" or ffi.istype("uint64_t", v) and "uint64_t" or "cdata"
      end
      if json.numeral_text(v) then return "numeral" end
      return type(v)
    end

    it("returns the value, json.null for null, and nil, err for bad text", function()
      assert.same({ a = { 1, json.null } }, json.decode('{"a":[1,null]}'))
      assert.equal(json.null, json.decode('{"a":[1,null]}').a[2])
      assert.equal(0.1 + 0.2, json.decode(json.encode(0.1 + 0.2)))
      assert.same({ nil, "invalid JSON at byte 2: invalid char in json text" }, { json.decode("{x") })
    end)

    it("keeps every integer exactly: number within 2^53-1, int64_t, uint64_t, else a numeral", function()
      local cases = {
        { "9007199254740991", "number" },
        { "-9007199254740991", "number" },
        { "9007199254740992", "int64_t" },
        { "9223372036854775807", "int64_t" },   -- 2^63-1: cjson reads 9223372036854775808
        { "-9223372036854775808", "int64_t" },  -- -2^63
        { "9223372036854775808", "uint64_t" },
        { "18446744073709551615", "uint64_t" }, -- 2^64-1
        { "18446744073709551616", "numeral" },  -- 2^64
        { "-9223372036854775809", "numeral" },
        { MAX256, "numeral" },                  -- 2^256-1
      }
      for _, c in ipairs(cases) do
        local v = json.decode(c[1])
        assert.equal(c[2], kind(v), c[1])
        assert.equal(c[1], json.encode(v))
      end
      assert.equal(9223372036854775807LL, json.decode("9223372036854775807"))
      assert.equal(-9223372036854775807LL - 1, json.decode("-9223372036854775808"))
      assert.equal(18446744073709551615ULL, json.decode("18446744073709551615"))
      assert.equal(json.numeral(MAX256), json.decode(MAX256))
      assert.equal(json.numeral("18446744073709551616"), json.decode("[18446744073709551616]")[1])
    end)

    it("keeps decimals a double would round as numerals, the others as numbers", function()
      local d = json.decode('[0.123456789012345678,1e400,1e-400,4.9e-324,1.5,-2.5e-3,0.123456789012345,1.50000000000000000000]')
      assert.equal(json.numeral("0.123456789012345678"), d[1]) -- 18 digits
      assert.equal(json.numeral("1e400"), d[2])               -- beyond a double
      assert.equal(json.numeral("1e-400"), d[3])              -- would be 0
      assert.equal(json.numeral("4.9e-324"), d[4])            -- subnormal: fewer digits
      assert.equal(1.5, d[5])
      assert.equal(-2.5e-3, d[6])
      assert.equal(0.123456789012345, d[7])                   -- 15 digits: a number
      assert.equal(1.5, d[8])                                 -- zeros at the end are not digits
      assert.equal("[0.123456789012345678,1e400,1e-400,4.9e-324,1.5,-0.0025,0.123456789012345,1.5]",
        json.encode(d))
    end)

    it("reads 16 and 17 digits as a number only when json.number writes that double back so", function()
      local d = json.decode("[0.30000000000000004,1732291234.567891,9.223372036854776e+18,0.10000000000000001]")
      assert.equal(0.1 + 0.2, d[1])
      assert.equal(1732291234.567891, d[2])
      assert.equal(2 ^ 63, d[3])
      assert.equal(json.numeral("0.10000000000000001"), d[4]) -- reads as 0.1, written "0.1"
      for _, v in ipairs({ 0.1 + 0.2, 1 / 3, 123456789012.34567, 2 ^ 63, 1e300, -1e-300, math.pi }) do
        assert.equal(v, json.decode(json.number(v)))
      end
    end)

    it("keeps the sign of zero", function()
      assert.equal(-math.huge, 1 / json.decode("-0"))
      assert.equal(-math.huge, 1 / json.decode("-0.0"))
      assert.equal(math.huge, 1 / json.decode("0"))
      assert.equal("[-0,0]", json.encode(json.decode("[-0,0]")))
    end)

    it("marks arrays, so [] encodes back as []; objects take the last duplicate key", function()
      local v = json.decode('{"a":[],"b":[[]],"c":{},"d":[1,{"e":[]}]}')
      assert.equal('{"a":[],"b":[[]],"c":{},"d":[1,{"e":[]}]}', json.encode(v))
      assert.equal("sluice.json.array", getmetatable(v.a))
      assert.is_nil(getmetatable(v.c))
      assert.same({ 1, { e = {} } }, v.d)
      assert.same({ a = 3, b = json.null }, json.decode('{"a":1,"b":2,"a":3,"b":null}'))
      assert.equal("[]", json.encode(json.decode("[]")))
    end)

    it("decodes escapes and surrogate pairs; refuses unpaired surrogates and bad UTF-8", function()
      assert.equal("\240\159\152\128", json.decode('"\\ud83d\\ude00"'))
      assert.equal("a\0b\195\169\n\"/", json.decode('"a\\u0000b\\u00e9\\n\\"\\/"'))
      assert.same({ ["k\240\159\152\128"] = "\226\130\172" }, json.decode('{"k\\uD83D\\uDE00":"\226\130\172"}'))
      local bad = {
        { '"\\ud800"', "invalid JSON at byte 2: unpaired surrogate in a \\u escape" },
        { '"ab\\ud800\\u0041"', "invalid JSON at byte 4: unpaired surrogate in a \\u escape" },
        { '["\\\\", "\\udc00"]', "invalid JSON at byte 9: unpaired surrogate in a \\u escape" },
        { '{"\\ude00":1}', "invalid JSON at byte 3: unpaired surrogate in a \\u escape" },
        { '"a\255"', "invalid JSON at byte 3: invalid UTF-8" },
        { '["ok","\192\128"]', "invalid JSON at byte 8: invalid UTF-8" },    -- overlong
        { '"\237\160\128"', "invalid JSON at byte 2: invalid UTF-8" },       -- a surrogate
        { '"\244\144\128\128"', "invalid JSON at byte 2: invalid UTF-8" },   -- past U+10FFFF
        { '"\226\130"', "invalid JSON at byte 2: invalid UTF-8" },           -- cut short
      }
      for _, c in ipairs(bad) do
        assert.same({ nil, c[2] }, { json.decode(c[1]) })
      end
    end)

    it("names the byte where bad text goes wrong (from 1, #s + 1 at its end)", function()
      local bad = {
        { "", "invalid JSON at byte 1: empty input" },
        { "  ", "invalid JSON at byte 3: premature EOF" },
        { "[1,2", "invalid JSON at byte 5: premature EOF" },
        { "[1,x]", "invalid JSON at byte 4: invalid char in json text" },
        { "[1] x", "invalid JSON at byte 5: trailing garbage" },
        { "[1,]", "invalid JSON at byte 4: unallowed token at this point in JSON text" },
        { '{"a" 1}', "invalid JSON at byte 6: object key and value must be separated by a colon (':')" },
        { "[1.]", "invalid JSON at byte 3: malformed number, a digit is required after the decimal point" },
        { "[NaN]", "invalid JSON at byte 2: invalid char in json text" },
      }
      for _, c in ipairs(bad) do
        assert.same({ nil, c[2] }, { json.decode(c[1]) })
      end
    end)

    it("refuses nesting deeper than 1000 with an error, not a crash", function()
      local ok = json.decode(string.rep("[", 1000) .. string.rep("]", 1000))
      local depth = 0
      while type(ok) == "table" do ok, depth = ok[1], depth + 1 end
      assert.equal(1000, depth)
      assert.same({ nil, "invalid JSON at byte 1001: nested deeper than 1000" },
        { json.decode(string.rep("[", 1001) .. string.rep("]", 1001)) })
      assert.same({ nil, "invalid JSON at byte 1005: nested deeper than 1000" },
        { json.decode('{"a":' .. string.rep("[", 1000) .. "{}" .. string.rep("]", 1000) .. "}") })
      assert.same({ nil, "invalid JSON at byte 1001: nested deeper than 1000" },
        { json.decode(string.rep("[", 100000) .. "{") })
    end)

    it("an error raised while yajl parses unwinds it and leaks nothing (ASan checks)", function()
      local native = require "sluice._json"
      local decode = native.decoder(json.null, {}, function() error("boom", 0) end,
        ffi.typeof("int64_t"), ffi.typeof("uint64_t"))
      for _ = 1, 3 do
        local ok, err = pcall(decode, '{"a":[1,2,{"b":"' .. string.rep("x", 100) .. '"}],"c":1e400}')
        assert.same({ false, "boom" }, { ok, err })
      end
      collectgarbage()
      assert.same({ a = 1 }, decode('{"a":1}'))
    end)

    it("raises when s is not a string", function()
      for _, v in ipairs({ 1, true, {} }) do
        assert.has_error(function() json.decode(v) end,
          "sluice.json.decode: bad argument #1 (string expected, got " .. type(v) .. ")")
      end
      assert.has_error(function() json.decode() end,
        "sluice.json.decode: bad argument #1 (string expected, got nil)")
    end)

    it("reads recorded exchange and relay responses back to the text encode wrote", function()
      local files = { "ccxt/binance.json", "ccxt/bitget.json", "ccxt/bybit.json", "ccxt/gate.json",
        "ccxt/htx.json", "mev-relays/builder_blocks_received_slot_6214255.json" }
      for _, name in ipairs(files) do
        local f = assert(io.open("tests/fixtures/" .. name))
        local text = assert(json.encode(assert(json.decode(f:read("*a")))))
        f:close()
        assert.equal(text, json.encode(json.decode(text)), name)
      end
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
