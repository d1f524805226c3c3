-- sluice.outbox.codec: a queued row's text is exactly sluice.json.encode's.
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
end)
