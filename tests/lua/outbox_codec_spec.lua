-- sluice.outbox.codec: a row's text is exactly sluice.json.encode's; sluice._outbox.rows: a
-- chunk from the store's values, which sluice.json decodes to those values.
local json = require "sluice.json"
local codec = require "sluice.outbox.codec"

local COLUMNS = {
  id = "integer", symbol = "text", price = "decimal", big = "uint256", qty = "real",
  meta = "json", ts = "integer", side = "text", flag = "boolean", seq = { type = "integer" },
}

describe("sluice.outbox.codec", function()
  local plan = codec.plan(COLUMNS)

  it("writes the bytes sluice.json.encode writes, value by value", function()
    local values = {
      0, 1, -1, 42, 2 ^ 53 - 1, -(2 ^ 53 - 1), 2 ^ 53, 1e300, -0.0, 0.1, 1 / 3, 1700000000000.5, 5e-324,
      "", "plain", 'q"uote', "back\\slash", "sl/ash", "tab\t", "nl\n", "\127", "caf\195\169", "\0",
      true, false, json.null, 9007199254740993LL, -9223372036854775807LL - 1, 18446744073709551615ULL,
      json.numeral("115792089237316195423570985008687907853269984665640564039457584007913129639935"),
      json.numeral("0.10"), { a = 1, b = { 1, 2 } }, json.empty_array, json.array(), { 1, "x", json.null },
    }
    for _, v in ipairs(values) do
      for _, col in ipairs { "id", "symbol", "meta", "qty" } do
        local row = { id = 1, [col] = v }
        local want = assert(json.encode(row))
        assert.are.equal(want, (codec.encode_row(row, plan)))
      end
    end
    local full = { id = 7, symbol = "SYM7", price = "7.08", big = "7000000000000000000000000000000", qty = 1 / 7,
      meta = { n = 7, rev = 1 }, ts = 1700000000007, side = "sell", flag = true, seq = 3 }
    assert.are.equal('{"big":"7000000000000000000000000000000","flag":true,"id":7,"meta":{"n":7,"rev":1},'
      .. '"price":"7.08","qty":0.14285714285714285,"seq":3,"side":"sell","symbol":"SYM7","ts":1700000000007}',
      codec.encode_row(full, plan))
  end)

  it("takes a json column's text from the store and nothing else from it", function()
    local row = { id = 1, meta = { b = 2, a = 1 }, symbol = "s" }
    local asked = {}
    local function stored(r, col)
      asked[#asked + 1] = r .. ":" .. col
      return '{"a":1,"b":2}'
    end
    assert.are.equal('{"id":1,"meta":{"a":1,"b":2},"symbol":"s"}', codec.encode_row(row, plan, stored, 5))
    assert.are.same({ "5:meta" }, asked)
  end)

  it("encodes a row with a field that is no column whole, and fails as json.encode fails", function()
    local row = { id = 1, extra = { z = 1 }, symbol = "s" }
    assert.are.equal(json.encode(row), codec.encode_row(row, plan))
    assert.are.equal("{}", codec.encode_row({}, plan))
    local text, err = codec.encode_row({ id = 1, qty = 0 / 0 }, plan)
    assert.is_nil(text)
    assert.are.equal(select(2, json.encode({ qty = 0 / 0 })), err)
    text, err = codec.encode_row({ id = 1, qty = math.huge }, plan)
    assert.is_nil(text)
    assert.are.equal("cannot encode inf", err)
  end)

  it("gets the store's values of the accepted rows through upsert_accepted's hook", function()
    local store = require "sluice.store"
    local db = assert(store.open(":memory:"))
    db:define { name = "t", columns = { id = "integer", meta = "json", n = "integer" }, key = { "id" } }
    local seen
    local ins = db:upsert_accepted("t", { { id = 1, meta = { b = 1, a = { 2 } } }, { id = "x" },
      { id = 3, meta = '{"raw": true}', n = "12" } }, function(accepted, stored)
      seen = { #accepted, stored(1, "meta"), stored(2, "meta"), stored(2, "n"), stored(2, "id"), stored(1, "nope") }
    end)
    assert.are.equal(2, ins)
    assert.are.same({ 2, '{"a":[2],"b":1}', '{"raw": true}', 12, 3 }, seen)
    db:close()
  end)

  it("encode_rows: the JSON array of the rows, each encode_row's text", function()
    local rows = { { id = 1, symbol = "a" }, { id = 2, meta = { x = 1 } }, { id = 3, qty = 0.5 } }
    assert.are.equal('[{"id":1,"symbol":"a"},{"id":2,"meta":{"x":1}},{"id":3,"qty":0.5}]',
      codec.encode_rows(rows, plan, nil, 1, 3))
    assert.are.equal('[{"id":2,"meta":{"x":1}}]', codec.encode_rows(rows, plan, nil, 2, 2))
    assert.are.same({ nil, "cannot encode inf", 2 },
      { codec.encode_rows({ { id = 1 }, { id = 2, qty = math.huge } }, plan, nil, 1, 2) })
  end)
end)

describe("sluice._outbox.rows (a chunk from the store's values)", function()
  local native = require "sluice._outbox"
  -- two columns per row: a (flat index 1), b (2), written as "a" then "b"
  local function rows(kind_a, kind_b, flat, n)
    return native.rows(flat, 2, 1, n or #flat / 2, { '"a":', '"b":' }, { 1, 2 }, kind_a .. kind_b)
  end

  it("writes numbers as sluice.json does, and decodes to the same values", function()
    local flat = { 0, 1 / 3, -5, 0.1, 2 ^ 53 - 1, 1e300, -0.0, 1e-300, 1700000000000.5, -2.5 }
    local text = rows("n", "n", flat)
    assert.are.equal('[{"a":0,"b":0.3333333333333333},{"a":-5,"b":0.1},{"a":9007199254740991,"b":1e+300},'
      .. '{"a":0,"b":1e-300},{"a":1700000000000.5,"b":-2.5}]', text)
    for _, v in ipairs { 1 / 3, 0.1, 1e300, 1e-300, 1700000000000.5 } do -- sluice.json's texts
      local t = ":" .. json.number(v)
      assert.truthy(text:find(t .. ",", 1, true) or text:find(t .. "}", 1, true), t)
    end
    local back = json.decode(text)
    for i = 1, #flat / 2 do
      assert.are.same({ flat[2 * i - 1] == 0 and 0 or flat[2 * i - 1], flat[2 * i] == 0 and 0 or flat[2 * i] },
        { back[i].a, back[i].b })
    end
    -- the store's integers beyond 2^53 (digits) and booleans
    assert.are.equal('[{"a":9223372036854775807,"b":1}]', rows("n", "n", { "9223372036854775807", true }))
    assert.are.equal(9223372036854775807LL, json.decode(rows("n", "n", { "9223372036854775807", true }))[1].a)
  end)

  it("escapes strings, keeps JSON text, leaves absent values out", function()
    local s = 'q"\\/\t\n\r\b\f\1\31 caf\195\169'
    local text = rows("s", "j", { s, '{"k":[1,2.5]}', "x", "not json", nil, '"str"' }, 3)
    assert.are.equal('[{"a":"q\\"\\\\/\\t\\n\\r\\b\\f\\u0001\\u001f caf\195\169","b":{"k":[1,2.5]}},'
      .. '{"a":"x","b":"not json"},{"b":"str"}]', text)
    local back = json.decode(text)
    assert.are.same({ s, { k = { 1, 2.5 } }, "not json", "str" }, { back[1].a, back[1].b, back[2].b, back[3].b })
    assert.is_nil(back[3].a)
    assert.are.equal("[{}]", rows("s", "s", {}, 1))
  end)

  it("refuses what JSON cannot hold, naming the column and the row", function()
    assert.are.same({ nil, 'column "b": cannot be written as JSON', 2 },
      { rows("n", "n", { 1, 2, 3, math.huge }) })
    assert.are.same({ nil, 'column "a": cannot be written as JSON', 1 }, { rows("s", "s", { "\255", "x" }) })
    assert.are.same({ nil, 'column "a": cannot be written as JSON', 1 }, { rows("n", "s", { "12a", "x" }) })
    assert.are.same({ nil, 'column "a": cannot be written as JSON', 1 }, { rows("s", "s", { 1, "x" }) })
    assert.has_error(function() native.rows({}, 2, 1, 1, { '"a":' }, { 1 }, "nn") end)
  end)
end)
