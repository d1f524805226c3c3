-- sluice.store: uint256 and decimal columns: exact round trips (2^256-1,
-- "0.00001234"), numeric ordering and equality through the sluice_decimal
-- collation (ORDER BY, WHERE, primary keys), what each column takes and
-- the reasons of what it rejects.
local store = require "sluice.store"
local bignum = require "sluice.bignum"
local json = require "sluice.json"
local ffi = require "ffi"
local files = require "support.files"

local MAX = "115792089237316195423570985008687907853269984665640564039457584007913129639935" -- 2^256-1
local TOO_BIG = "115792089237316195423570985008687907853269984665640564039457584007913129639936"
local BEYOND = "number beyond 2^53, which a double cannot hold exactly: pass a decimal string or an int64_t"

local function column(rows, name)
  local out = {}
  for i, r in ipairs(rows) do out[i] = r[name] end
  return out
end

describe("store uint256 and decimal columns", function()
  local db

  before_each(function()
    db = assert(store.open(":memory:"))
  end)

  after_each(function()
    db:close()
  end)

  describe("uint256", function()
    before_each(function()
      assert(db:define{ name = "balances", columns = { id = "integer", wei = "uint256" }, key = { "id" } })
    end)

    it("round-trips 2^256-1 and zero digit for digit, as strings", function()
      assert.same({ 2, 0, 0, 0 }, { db:upsert("balances", { { id = 1, wei = MAX }, { id = 2, wei = "0" } }) })
      local rows = db:select("balances", "ORDER BY id")
      assert.same({ MAX, "0" }, column(rows, "wei"))
      assert.equal("string", type(rows[1].wei))
      assert.equal(MAX, db:query("SELECT wei FROM balances WHERE id = 1")[1].wei)
      assert.equal("text", db:query("SELECT typeof(wei) AS t FROM balances WHERE id = 1")[1].t)
      -- the same row again is unchanged
      assert.same({ 0, 0, 2, 0 }, { db:upsert("balances", { { id = 1, wei = MAX }, { id = 2, wei = 0 } }) })
    end)

    it("takes hex, exact Lua integers, int64/uint64 cdata and numerals, stored as canonical digits", function()
      assert.same({ 9, 0, 0, 0 }, { db:upsert("balances", {
        { id = 1, wei = "0x1bc16d674ec80000" },
        { id = 2, wei = "0X0" },
        { id = 3, wei = "0x" .. string.rep("f", 64) },
        { id = 4, wei = 2 ^ 53 - 1 },
        { id = 5, wei = 18446744073709551615ULL },
        { id = 6, wei = 9223372036854775807LL },
        { id = 7, wei = json.numeral(MAX) },
        { id = 8, wei = "000123" },
        { id = 9, wei = "1.5e3" },
      }) })
      assert.same({ "2000000000000000000", "0", MAX, "9007199254740991", "18446744073709551615",
        "9223372036854775807", MAX, "123", "1500" }, column(db:select("balances", "ORDER BY id"), "wei"))
    end)

    it("rejects negatives, fractions, 2^256 and beyond, doubles beyond 2^53 and junk, with the reason", function()
      local bad = {
        { -1, "negative number" },
        { "-1", "negative number" },
        { ffi.new("int64_t", -5), "negative number" },
        { 1.5, "non-integral number" },
        { "1.5", "non-integral number" },
        { TOO_BIG, "out-of-range number" },
        { "0x1" .. string.rep("0", 64), "out-of-range number" },
        { "1e78", "out-of-range number" },
        { 2 ^ 53, BEYOND },
        { 0 / 0, "nan" },
        { math.huge, "inf" },
        { "abc", "string" },
        { "0xq", "string" },
        { "", "string" },
        { " 1", "string" },
        { true, "boolean" },
        { {}, "table" },
      }
      local rows = {}
      for i, b in ipairs(bad) do rows[i] = { id = i, wei = b[1] } end
      assert.same({ 0, 0, 0, #bad }, { db:upsert("balances", rows) })
      local rejects = db:rejects("balances")
      assert.equal(#bad, #rejects)
      for i, b in ipairs(bad) do
        -- newest first
        assert.equal("wrong type for field: wei (uint256 expected, got " .. b[2] .. ")", rejects[#bad + 1 - i].reason)
      end
      assert.equal(0, #db:select("balances"))
    end)

    it("orders numerically over mixed lengths", function()
      local values = { "10", "9", MAX, "0", "100", "99", "18446744073709551616", "1" }
      local rows = {}
      for i, v in ipairs(values) do rows[i] = { id = i, wei = v } end
      db:upsert("balances", rows)
      assert.same({ "0", "1", "9", "10", "99", "100", "18446744073709551616", MAX },
        column(db:select("balances", "ORDER BY wei"), "wei"))
      assert.same({ MAX, "18446744073709551616", "100" },
        column(db:select("balances", "WHERE wei > ? ORDER BY wei DESC", "99"), "wei"))
      assert.equal(MAX, db:query("SELECT max(wei) AS m FROM balances")[1].m)
    end)
  end)

  describe("decimal", function()
    before_each(function()
      assert(db:define{ name = "prices", columns = { id = "integer", price = "decimal" }, key = { "id" } })
    end)

    it("keeps a plain decimal exactly as written", function()
      local written = { "0.00001234", "1.50", "-2", "007", "-0", "0.000", "123456789012345678901234567890.123456789" }
      local rows = {}
      for i, v in ipairs(written) do rows[i] = { id = i, price = v } end
      assert.same({ #written, 0, 0, 0 }, { db:upsert("prices", rows) })
      assert.same(written, column(db:select("prices", "ORDER BY id"), "price"))
    end)

    it("writes Lua numbers as their shortest text in plain notation, and other spellings canonical", function()
      assert.same({ 9, 0, 0, 0 }, { db:upsert("prices", {
        { id = 1, price = 0.00001234 },
        { id = 2, price = 0.1 },
        { id = 3, price = -42 },
        { id = 4, price = 1730729903.941123 },
        { id = 5, price = "1e-8" },
        { id = 6, price = "+1.5" },
        { id = 7, price = json.numeral("1.5e3") },
        { id = 8, price = json.numeral("0.00001234") },
        { id = 9, price = ffi.new("int64_t", -9007199254740993LL) },
      }) })
      assert.same({ "0.00001234", "0.1", "-42", "1730729903.941123", "0.00000001", "1.5", "1500",
        "0.00001234", "-9007199254740993" }, column(db:select("prices", "ORDER BY id"), "price"))
    end)

    it("rejects nan, inf, hex, junk, doubles beyond 2^53 and absurd lengths, with the reason", function()
      local bad = {
        { 0 / 0, "nan" },
        { math.huge, "inf" },
        { -math.huge, "-inf" },
        { 1e300, BEYOND },
        { "0x10", "hex string" },
        { "nan", "string" },
        { "inf", "string" },
        { "1.2.3", "string" },
        { "1,5", "string" },
        { "", "string" },
        { "1" .. string.rep("0", 1000), "decimal longer than 1000 characters" },
        { "1e-1000", "decimal longer than 1000 characters" },
        { false, "boolean" },
      }
      local rows = {}
      for i, b in ipairs(bad) do rows[i] = { id = i, price = b[1] } end
      assert.same({ 0, 0, 0, #bad }, { db:upsert("prices", rows) })
      local rejects = db:rejects("prices")
      for i, b in ipairs(bad) do
        assert.equal("wrong type for field: price (decimal expected, got " .. b[2] .. ")", rejects[#bad + 1 - i].reason)
      end
      -- the longest accepted
      local long = "0." .. string.rep("1", 998)
      assert.same({ 1, 0, 0, 0 }, { db:upsert("prices", { { id = 100, price = long } }) })
      assert.equal(long, db:select("prices", "WHERE id = 100")[1].price)
    end)

    it("orders and compares by value: negatives, mixed lengths, trailing zeros", function()
      local values = { "10", "9.99", "-2", "-10.5", "1.5", "-0.001", "0", "100.00", "0.00001234", "-1e0" }
      local rows = {}
      for i, v in ipairs(values) do rows[i] = { id = i, price = v } end
      db:upsert("prices", rows)
      assert.same({ "-10.5", "-2", "-1", "-0.001", "0", "0.00001234", "1.5", "9.99", "10", "100.00" },
        column(db:select("prices", "ORDER BY price"), "price"))
      assert.same({ "1.5" }, column(db:select("prices", "WHERE price = ?", "1.50"), "price"))
      assert.same({ "-10.5", "-2", "-1" }, column(db:select("prices", "WHERE price < ? ORDER BY price", "-0.5"), "price"))
      assert.same({ "100.00" }, column(db:select("prices", "WHERE price = '100'"), "price"))
      assert.equal("100.00", db:query("SELECT max(price) AS m FROM prices")[1].m)
    end)

    it("orders as bignum.cmp does, also through an index", function()
      local values = { "0", "-0.0", "1", "1.0", "01", "-1", "0.1", "0.10", "-0.1", "123", "122.999", "-123",
        "1e-3", "0.0009", "99999999999999999999999.5", "-99999999999999999999999.5", "5", "50", "0.5", "-5" }
      local rows = {}
      for i, v in ipairs(values) do rows[i] = { id = i, price = v } end
      db:upsert("prices", rows)
      assert(db:exec("CREATE INDEX prices_by_price ON prices (price)"))
      local got = column(db:select("prices", "ORDER BY price, id"), "price")
      -- every neighbour pair in order, ties (equal values) by id
      for i = 2, #got do
        assert.is_true(bignum.cmp(got[i - 1], got[i]) <= 0, got[i - 1] .. " before " .. got[i])
      end
      local plan = db:query("EXPLAIN QUERY PLAN SELECT id FROM prices WHERE price > '0.5' ORDER BY price")
      assert.is_truthy(plan[1].detail:find("prices_by_price", 1, true))
      local by_index = column(db:query("SELECT price FROM prices WHERE price > '0.5' ORDER BY price, id"), "price")
      assert.same({ "1", "1.0", "01", "5", "50", "122.999", "123", "99999999999999999999999.5" }, by_index)
    end)

    it("sorts text that is no decimal after every decimal, bytewise, as a total order", function()
      -- written past the upsert's checks, as another program could
      for i, v in ipairs({ "b", "2", "1e5", "a", "", " 1", "-1", "ab", "+3", ".5", "5." }) do
        assert(db:exec("INSERT INTO prices (id, price) VALUES (?, ?)", i, v))
      end
      assert.same({ "-1", ".5", "2", "+3", "5.", "", " 1", "1e5", "a", "ab", "b" },
        column(db:select("prices", "ORDER BY price"), "price"))
    end)
  end)

  describe("as a primary key", function()
    before_each(function()
      assert(db:define{ name = "book", columns = { side = "text", price = "decimal", size = "decimal" },
        key = { "side", "price" } })
    end)

    it("finds \"1.50\" and \"1.5\" the same key: an upsert replaces the row and its text", function()
      assert.same({ 1, 0, 0, 0 }, { db:upsert("book", { { side = "bid", price = "1.50", size = "3" } }) })
      assert.same({ 0, 0, 1, 0 }, { db:upsert("book", { { side = "bid", price = "1.50", size = "3" } }) })
      -- the same value written another way: the row, key text included, is rewritten
      assert.same({ 0, 1, 0, 0 }, { db:upsert("book", { { side = "bid", price = "1.5", size = "3.000" } }) })
      local rows = db:select("book")
      assert.equal(1, #rows)
      assert.same({ side = "bid", price = "1.5", size = "3.000" }, rows[1])
      assert.same({ 0, 0, 1, 0 }, { db:upsert("book", { { side = "bid", price = "1.5", size = "3.000" } }) })
      -- another value is another row
      assert.same({ 1, 0, 0, 0 }, { db:upsert("book", { { side = "bid", price = "1.05", size = "1" } }) })
      assert.same({ "1.05", "1.5" }, column(db:select("book", "ORDER BY price"), "price"))
    end)

    it("counts \"1.5\" after \"1.50\" in one batch as a duplicate; the last one wins", function()
      assert.same({ 1, 1, 0, 0 }, { db:upsert("book", {
        { side = "ask", price = "1.50", size = "1" },
        { side = "ask", price = "1.5", size = "2" },
      }) })
      assert.equal(1, db:quality("book").duplicate_records)
      assert.same({ { side = "ask", price = "1.5", size = "2" } }, db:select("book"))
    end)

    it("keys a uint256 by value: hex and decimal of one number are one row", function()
      assert(db:define{ name = "blocks", columns = { number = "uint256", hash = "text" }, key = { "number" } })
      assert.same({ 1, 1, 0, 0 }, { db:upsert("blocks", {
        { number = "0x10", hash = "a" }, { number = "16", hash = "b" } }) })
      assert.same({ { number = "16", hash = "b" } }, db:select("blocks"))
    end)
  end)

  describe("schema", function()
    it("declares the types with the collation and knows them again on an existing table", function()
      local dir = files.tmpdir()
      local path = dir .. "/n.db"
      local d1 = assert(store.open(path))
      assert(d1:define{ name = "t", columns = { id = "uint256", p = "decimal" }, key = { "id" } })
      local info = d1:query("SELECT name, type FROM pragma_table_info('t') ORDER BY cid")
      assert.same({ { name = "id", type = "U256 TEXT" }, { name = "p", type = "DECIMAL TEXT" } }, info)
      d1:upsert("t", { { id = "10", p = "2" }, { id = "9", p = "1" } })
      d1:close()
      local d2 = assert(store.open(path))
      finally(function() d2:close(); files.cleanup() end)
      -- the same definition again is accepted; a changed type is refused
      assert(d2:define{ name = "t", columns = { id = "uint256", p = "decimal" }, key = { "id" } })
      assert.same({ "9", "10" }, column(d2:select("t", "ORDER BY id"), "id"))
      local ok, err = pcall(d2.define, d2, { name = "t", columns = { id = "uint256", p = "text" }, key = { "id" } })
      assert.is_false(ok)
      assert.is_truthy(err:find("table 't': column 'p' is decimal, the new definition says text "
        .. "(changing a type is refused)", 1, true))
      ok, err = pcall(d2.define, d2, { name = "t", columns = { id = "text", p = "decimal" }, key = { "id" } })
      assert.is_false(ok)
      assert.is_truthy(err:find("column 'id' is uint256, the new definition says text", 1, true))
      -- a column added later gets the collation too
      assert(d2:define{ name = "t", columns = { id = "uint256", p = "decimal", q = "decimal" }, key = { "id" } })
      d2:upsert("t", { { id = "1", p = "0", q = "10" }, { id = "2", p = "0", q = "9.5" } })
      assert.same({ "9.5", "10" }, column(d2:select("t", "WHERE q IS NOT NULL ORDER BY q"), "q"))
    end)
  end)
end)
