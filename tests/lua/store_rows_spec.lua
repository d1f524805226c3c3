-- sluice.store.rows: upsert (checks, coercion, rejects), select, quality.
local store = require "sluice.store"
local cjson = require "cjson"
local fx = require "support.store"

local err_of, count, raised_at = fx.err_of, fx.count, fx.raised_at
local KLINES, kline, klines = fx.KLINES, fx.kline, fx.klines

describe("sluice.store.rows", function()
  local db

  before_each(function()
    db = assert(store.open(":memory:"))
  end)

  after_each(function()
    db:close()
  end)

  describe("upsert", function()
    before_each(function() db:define(KLINES) end)

    it("is idempotent: the same batch twice inserts once, then reports every row unchanged", function()
      local rows = klines(50)
      assert.same({ 50, 0, 0, 0 }, { db:upsert("klines", rows) })
      assert.same({ 0, 0, 50, 0 }, { db:upsert("klines", rows) })
      assert.equal(50, count(db, "klines"))
      assert.equal(50, db:query("SELECT count(DISTINCT open_time) AS n FROM klines")[1].n)
    end)

    it("counts updates and keeps the new values", function()
      db:upsert("klines", klines(10))
      local rows = klines(10)
      rows[3].close = 999.5
      rows[7].trades = 70
      rows[8].volume = nil -- a value becoming NULL is a change too
      assert.same({ 0, 3, 7, 0 }, { db:upsert("klines", rows) })
      assert.equal(999.5, db:query("SELECT close FROM klines WHERE open_time = ?", 1700000000000 + 3 * 60000)[1].close)
      assert.equal(70, db:query("SELECT trades FROM klines WHERE open_time = ?", 1700000000000 + 7 * 60000)[1].trades)
      assert.is_nil(db:query("SELECT volume FROM klines WHERE open_time = ?", 1700000000000 + 8 * 60000)[1].volume)
      -- a new key alongside
      rows[11] = kline(11)
      assert.same({ 1, 0, 10, 0 }, { db:upsert("klines", rows) })
    end)

    it("counts a key repeated within a batch against the earlier row; the last one wins", function()
      local a, b, c = kline(1, 10), kline(1, 20), kline(1, 20)
      assert.same({ 1, 1, 1, 0 }, { db:upsert("klines", { a, b, c }) })
      assert.equal(1, count(db, "klines"))
      assert.equal(20, db:query("SELECT close FROM klines")[1].close)
    end)

    it("returns 0, 0, 0, 0 for an empty batch and leaves the counters alone", function()
      assert.same({ 0, 0, 0, 0 }, { db:upsert("klines", {}) })
      assert.equal(0, db:quality("klines").total_records)
    end)

    it("rejects invalid rows into sluice_rejects with exact reasons and writes the valid ones", function()
      db:define{ name = "checked", columns = { id = "integer", v = "real", s = "text", j = "json", b = "blob" },
        key = { "id" }, required = { "v" },
        validate = function(row)
          if row.v == 13 then return false, "unlucky" end
          if row.v == 14 then return false end
          if row.v == 15 then error("boom", 0) end
          if row.v == 16 then return nil end
          return true
        end }
      local rows = {
        { id = 1, v = 1.5, s = "ok" },                -- valid
        { v = 2 },                                    -- missing key
        { id = 3 },                                   -- missing required
        { id = 4, v = 4, extra = 1 },                 -- unknown field
        { id = 5, v = "abc" },                        -- real from a non-numeric string
        { id = "6x", v = 6 },                         -- integer from a non-numeric string
        { id = 7.5, v = 7 },                          -- non-integral integer
        { id = 8, v = 8, s = 8 },                     -- number in a text column
        { id = 9, v = 0 / 0 },                        -- NaN
        { id = 10, v = 10, j = { f = print } },       -- unencodable json
        { id = 11, v = 11, b = true },                -- boolean in a blob column
        "not a row",                                  -- not a table
        { id = 13, v = 13 },                          -- validate: false, reason
        { id = 14, v = 14 },                          -- validate: false
        { id = 15, v = 15 },                          -- validate raises
        { id = 16, v = 16 },                          -- validate returns nil
        { id = 17, v = 17, s = "fine" },              -- valid
      }
      assert.same({ 2, 0, 0, 15 }, { db:upsert("checked", rows) })
      assert.same({ { id = 1 }, { id = 17 } }, db:query("SELECT id FROM checked ORDER BY id"))
      local got = db:query("SELECT table_name, row, reason FROM sluice_rejects ORDER BY id")
      local expect = {
        { '{"v":2}', "missing key field: id" },
        { '{"id":3}', "missing required field: v" },
        { '{"extra":1,"id":4,"v":4}', "unknown field: extra" },
        { '{"id":5,"v":"abc"}', "wrong type for field: v (real expected, got string)" },
        { '{"id":"6x","v":6}', "wrong type for field: id (integer expected, got string)" },
        { '{"id":7.5,"v":7}', "wrong type for field: id (integer expected, got non-integral number)" },
        { '{"id":8,"s":8,"v":8}', "wrong type for field: s (text expected, got number)" },
        { '{"id":9,"v":null}', "wrong type for field: v (real expected, got nan)" },
        { nil, "wrong type for field: j (json expected, cannot encode a function)" },
        { '{"b":true,"id":11,"v":11}', "wrong type for field: b (blob expected, got boolean)" },
        { '"not a row"', "row is not a table (got string)" },
        { '{"id":13,"v":13}', "validation failed: unlucky" },
        { '{"id":14,"v":14}', "validation failed: validate returned false" },
        { '{"id":15,"v":15}', "validate raised: boom" },
        { '{"id":16,"v":16}', "validation failed: validate returned false" },
      }
      assert.equal(#expect, #got)
      for i, e in ipairs(expect) do
        assert.equal("checked", got[i].table_name)
        assert.equal(e[2], got[i].reason)
        if e[1] then assert.equal(e[1], got[i].row) end
      end
      -- the unencodable value is stored as its tostring, not lost
      assert.truthy(got[9].row:find('^{"id":10,"j":{"f":"function: ', 1))
      -- db:rejects decodes, newest first
      local r = db:rejects("checked", 2)
      assert.equal(2, #r)
      assert.equal("validation failed: validate returned false", r[1].reason)
      assert.same({ id = 16, v = 16 }, r[1].row)
      assert.equal("validate raised: boom", r[2].reason)
      assert.equal("number", type(r[1].at))
    end)

    it("a json value nested deeper than 64, or a cycle, rejects that row only, with its reason", function()
      db:define{ name = "deep", columns = { id = "integer", doc = "json" }, key = { "id" } }
      local deep = {}
      local t = deep
      for _ = 1, 70 do t.x = {}; t = t.x end
      local cycle = {}
      cycle.self = cycle
      local rows = { { id = 1, doc = { a = 1 } }, { id = 2, doc = deep }, { id = 3, doc = cycle },
        { id = 4, doc = { b = 2 } } }
      assert.same({ 2, 0, 0, 2 }, { db:upsert("deep", rows) })
      assert.same({ { id = 1 }, { id = 4 } }, db:query("SELECT id FROM deep ORDER BY id"))
      local got = db:query("SELECT row, reason FROM sluice_rejects ORDER BY id")
      assert.equal(2, #got)
      local why = "wrong type for field: doc (json expected, cannot encode: nested too deep (a cycle?))"
      assert.equal(why, got[1].reason)
      assert.equal(why, got[2].reason)
      -- the row is kept, its deepest tables replaced by a marker
      assert.truthy(got[1].row:find('^{"doc":{"x":{"x":'))
      assert.truthy(got[2].row:find('"<nested too deep>"', 1, true))
      assert.same({ 2, 2, 0, 2 }, { db:quality("deep").valid_records, db:quality("deep").inserted_records,
        db:quality("deep").updated_records, db:quality("deep").invalid_records })
    end)

    it("a row whose checking raises (a metamethod) is a reject with a reason, never a batch failure", function()
      db:define{ name = "odd", columns = { id = "integer", s = "text" }, key = { "id" } }
      local bad = setmetatable({}, { __tostring = function() error("no tostring", 0) end })
      local rows = { { id = 1, s = "a" }, { id = 2, [bad] = 1 }, { id = 3, s = "c" } }
      assert.same({ 2, 0, 0, 1 }, { db:upsert("odd", rows) })
      local got = db:query("SELECT row, reason FROM sluice_rejects")
      assert.equal(1, #got)
      assert.equal("invalid row: no tostring", got[1].reason)
      assert.is_nil(got[1].row)
    end)

    it("rejects inf, -inf and nan in real columns unless the column says nonfinite = true", function()
      db:define{ name = "nf", columns = { id = "integer", r = "real", x = { type = "real", nonfinite = true } },
        key = { "id" } }
      local inf = math.huge
      local rows = {
        { id = 1, r = 1.5, x = inf },
        { id = 2, r = inf },
        { id = 3, r = -inf },
        { id = 4, r = "1e999" },
        { id = 5, r = 0 / 0 },
        { id = 6, x = -inf },
        { id = 7, x = 0 / 0 },
        { id = 8, r = require("cjson").decode("[1e999]")[1] },
      }
      assert.same({ 2, 0, 0, 6 }, { db:upsert("nf", rows) })
      assert.same({ { id = 1, r = 1.5, x = inf }, { id = 6, x = -inf } }, db:query("SELECT * FROM nf ORDER BY id"))
      local reasons = {}
      for _, r in ipairs(db:query("SELECT reason FROM sluice_rejects ORDER BY id")) do reasons[#reasons + 1] = r.reason end
      assert.same({
        "wrong type for field: r (real expected, got inf)",
        "wrong type for field: r (real expected, got -inf)",
        "wrong type for field: r (real expected, got inf)",
        "wrong type for field: r (real expected, got nan)",
        "wrong type for field: x (real expected, got nan)",
        "wrong type for field: r (real expected, got inf)",
      }, reasons)
      -- the option is checked at define
      assert.equal("sluice.store.define: table 'nf2': column 'i': nonfinite is for real columns",
        err_of(db.define, db, { name = "nf2", columns = { i = { type = "integer", nonfinite = true } }, key = { "i" } }))
      assert.equal("sluice.store.define: unknown option 'columns.i.finite'",
        err_of(db.define, db, { name = "nf2", columns = { i = { type = "real", finite = true } }, key = { "i" } }))
      -- a table column spec and the plain name are the same column on reopen
      assert.truthy(db:define{ name = "nf", columns = { id = "integer", r = "real", x = "real" }, key = { "id" } })
    end)

    it("a validate that accesses a missing field and raises is a reject, not a crash", function()
      db:define{ name = "v", columns = { id = "integer", x = "real" }, key = { "id" },
        validate = function(row) return row.x > 0 end }
      assert.same({ 1, 0, 0, 1 }, { db:upsert("v", { { id = 1, x = 1 }, { id = 2 } }) })
      local reason = db:rejects("v")[1].reason
      assert.truthy(reason:find("^validate raised: .*attempt to compare"))
    end)

    it("coerces decimal strings, booleans and cjson.null as documented", function()
      db:define{ name = "c", columns = { id = "integer", n = "integer", r = "real", f = "integer", t = "text" },
        key = { "id" } }
      local rows = {
        { id = "1", n = "42", r = "0.00001234", f = true, t = cjson.null },
        { id = 2, n = "4.2e1", r = "-1.5E2", f = false },
        { id = 3, n = "0x10" },       -- hex is not a decimal
        { id = 4, r = " 1" },         -- no surrounding space
        { id = 5, r = "inf" },        -- no inf/nan spelled out
        { id = 6, n = 2 ^ 63 },       -- beyond int64
        { id = cjson.null, n = 1 },   -- null key is missing
      }
      assert.same({ 2, 0, 0, 5 }, { db:upsert("c", rows) })
      assert.same({
        { id = 1, n = 42, r = 0.00001234, f = 1 },
        { id = 2, n = 42, r = -150, f = 0 },
      }, db:query("SELECT * FROM c ORDER BY id"))
      assert.same({ { n = "integer", r = "real", f = "integer" } },
        db:query("SELECT typeof(n) AS n, typeof(r) AS r, typeof(f) AS f FROM c WHERE id = 1"))
      local reasons = {}
      for _, r in ipairs(db:query("SELECT reason FROM sluice_rejects ORDER BY id")) do reasons[#reasons + 1] = r.reason end
      assert.same({
        "wrong type for field: n (integer expected, got string)",
        "wrong type for field: r (real expected, got string)",
        "wrong type for field: r (real expected, got string)",
        "wrong type for field: n (integer expected, got out-of-range number)",
        "missing key field: id",
      }, reasons)
    end)

    it("ignores unknown fields when asked, and counts them", function()
      db:define{ name = "lax", columns = { id = "integer", v = "real" }, key = { "id" }, unknown = "ignore" }
      assert.same({ 2, 0, 0, 0 }, { db:upsert("lax", { { id = 1, v = 1, junk = "x", more = 2 }, { id = 2, v = 2 } }) })
      assert.same({ { id = 1, v = 1 }, { id = 2, v = 2 } }, db:query("SELECT * FROM lax ORDER BY id"))
      assert.equal(2, db:quality("lax").ignored_fields)
    end)

    it("round-trips json columns: tables encoded with sorted keys, strings stored as JSON text", function()
      db:define{ name = "docs", columns = { id = "integer", doc = "json" }, key = { "id" } }
      local doc = { b = { 1, 2, { c = "x\"y\n" } }, a = 0.1 + 0.2, big = 1732291234.567891, t = true, z = {} }
      assert.same({ 3, 0, 0, 0 }, { db:upsert("docs", {
        { id = 1, doc = doc },
        { id = 2, doc = '{"raw": [1, 2]}' },
        { id = 3, doc = 42 },
      }) })
      assert.equal('{"a":0.30000000000000004,"b":[1,2,{"c":"x\\"y\\n"}],"big":1732291234.567891,"t":true,"z":{}}',
        db:query("SELECT doc FROM docs WHERE id = 1")[1].doc)
      assert.equal('{"raw": [1, 2]}', db:query("SELECT doc FROM docs WHERE id = 2")[1].doc)
      assert.equal("text", db:query("SELECT typeof(doc) AS t FROM docs WHERE id = 3")[1].t)
      local rows = db:select("docs", "WHERE id <= ? ORDER BY id", 3)
      assert.equal(0.1 + 0.2, rows[1].doc.a)
      assert.equal(1732291234.567891, rows[1].doc.big)
      assert.same({ 1, 2, { c = "x\"y\n" } }, rows[1].doc.b)
      assert.same({ raw = { 1, 2 } }, rows[2].doc)
      assert.equal(42, rows[3].doc)
      -- an equal table built in another order is unchanged
      local again = { z = {}, t = true, big = 1732291234.567891, a = 0.1 + 0.2, b = { 1, 2, { c = "x\"y\n" } } }
      assert.same({ 0, 0, 1, 0 }, { db:upsert("docs", { { id = 1, doc = again } }) })
    end)

    it("rolls back the whole batch on an SQL failure and returns nil, err", function()
      assert.is_true(db:script([[
        CREATE TRIGGER no_negative BEFORE INSERT ON klines WHEN NEW.close < 0
        BEGIN SELECT RAISE(ABORT, 'negative close'); END;]]))
      local rows = klines(5)
      rows[4].close = -1
      rows[6] = { symbol = "BTCUSDT" } -- a reject, rolled back too
      local a, err = db:upsert("klines", rows)
      assert.is_nil(a)
      assert.equal("negative close", err)
      assert.equal(0, count(db, "klines"))
      assert.equal(0, count(db, "sluice_rejects"))
      assert.equal(0, db:quality("klines").total_records)
      assert.is_false(db._c:in_transaction())
      -- and the connection is fine afterwards
      rows[4].close = 1
      rows[6] = nil
      assert.same({ 5, 0, 0, 0 }, { db:upsert("klines", rows) })
    end)

    it("raises on misuse", function()
      assert.equal("sluice.store.upsert: table 'nope' is not defined (call db:define first)",
        err_of(db.upsert, db, "nope", {}))
      assert.equal("sluice.store.upsert: bad argument #2 (table expected, got string)",
        err_of(db.upsert, db, "klines", "rows"))
      assert.equal("sluice.store.upsert: bad argument #1 (string expected, got nil)",
        err_of(db.upsert, db, nil, {}))
    end)
  end)

  describe("exact integers", function()
    local ffi = require "ffi"
    local json = require "sluice.json"
    local MAX, MIN = "9223372036854775807", "-9223372036854775808"

    local function reasons()
      local out = {}
      for _, r in ipairs(db:query("SELECT reason FROM sluice_rejects ORDER BY id")) do out[#out + 1] = r.reason end
      return out
    end

    before_each(function()
      db:define{ name = "big", columns = { id = "integer", n = "integer" }, key = { "id" } }
    end)

    it("stores every int64 exactly, from decimal strings and int64_t/uint64_t cdata", function()
      assert.same({ 8, 0, 0, 0 }, { db:upsert("big", {
        { id = 1, n = MAX },
        { id = 2, n = 9223372036854775807LL },
        { id = 3, n = MIN },
        { id = 4, n = "9007199254740993" },          -- 2^53 + 1: a double would say ...992
        { id = 5, n = ffi.new("uint64_t", 9223372036854775807ULL) },
        { id = 6, n = "+0009007199254740993e0" },
        { id = 7, n = "922337203685477580.7e1" },
        { id = 8, n = 2 ^ 53 - 1 },
      }) })
      local text = {}
      for _, r in ipairs(db:query("SELECT id, CAST(n AS TEXT) AS n, typeof(n) AS t FROM big ORDER BY id")) do
        text[r.id] = r.n .. " " .. r.t
      end
      assert.same({ MAX .. " integer", MAX .. " integer", MIN .. " integer", "9007199254740993 integer",
        MAX .. " integer", "9007199254740993 integer", MAX .. " integer", "9007199254740991 integer" }, text)
    end)

    it("reads integers beyond 2^53 back as int64_t cdata, smaller ones as numbers", function()
      db:upsert("big", { { id = 1, n = MAX }, { id = 2, n = MIN }, { id = 3, n = "9007199254740993" },
        { id = 4, n = 2 ^ 53 - 1 }, { id = 5, n = -(2 ^ 53 - 1) }, { id = 6, n = "9007199254740992" } })
      local rows = db:select("big", "ORDER BY id")
      assert.is_true(ffi.istype("int64_t", rows[1].n))
      assert.is_true(rows[1].n == 9223372036854775807LL)
      assert.is_true(rows[2].n == -9223372036854775807LL - 1)
      assert.is_true(rows[3].n == 9007199254740993LL)
      assert.equal("number", type(rows[4].n))
      assert.equal(2 ^ 53 - 1, rows[4].n)
      assert.equal(-(2 ^ 53 - 1), rows[5].n)
      assert.is_true(ffi.istype("int64_t", rows[6].n))
      assert.equal('[{"id":1,"n":9223372036854775807},{"id":2,"n":-9223372036854775808},'
        .. '{"id":3,"n":9007199254740993},{"id":4,"n":9007199254740991},{"id":5,"n":-9007199254740991},'
        .. '{"id":6,"n":9007199254740992}]', json.encode(rows))
      -- what comes back goes back in: as a row (unchanged) and as a query parameter
      assert.same({ 0, 0, 6, 0 }, { db:upsert("big", rows) })
      assert.same({ { id = 1 } }, db:query("SELECT id FROM big WHERE n = ?", rows[1].n))
    end)

    it("rejects what it cannot store exactly, with the reason, never a rounded row", function()
      assert.same({ 0, 0, 0, 8 }, { db:upsert("big", {
        { id = 1, n = "9223372036854775808" },       -- 2^63
        { id = 2, n = "-9223372036854775809" },
        { id = 3, n = 18446744073709551615ULL },     -- 2^64 - 1
        { id = 4, n = 2 ^ 53 + 2 },                  -- a double there may already be rounded
        { id = 5, n = 2 ^ 53 },
        { id = 6, n = -2 ^ 53 },
        { id = 7, n = "9007199254740993.5" },
        { id = 8, n = ffi.new("int32_t", 1) },
      }) })
      local BEYOND = "number beyond 2^53, which a double cannot hold exactly: pass a decimal string or an int64_t"
      assert.same({
        "wrong type for field: n (integer expected, got out-of-range number)",
        "wrong type for field: n (integer expected, got out-of-range number)",
        "wrong type for field: n (integer expected, got out-of-range number)",
        "wrong type for field: n (integer expected, got " .. BEYOND .. ")",
        "wrong type for field: n (integer expected, got " .. BEYOND .. ")",
        "wrong type for field: n (integer expected, got " .. BEYOND .. ")",
        "wrong type for field: n (integer expected, got non-integral number)",
        "wrong type for field: n (integer expected, got cdata)",
      }, reasons())
      assert.equal(0, count(db, "big"))
    end)

    it("sees an update beyond 2^53 that a double would miss", function()
      assert.same({ 1, 0, 0, 0 }, { db:upsert("big", { { id = 1, n = "9007199254740993" } }) })
      assert.same({ 0, 1, 0, 0 }, { db:upsert("big", { { id = 1, n = "9007199254740994" } }) })
      assert.same({ 0, 0, 1, 0 }, { db:upsert("big", { { id = 1, n = 9007199254740994LL } }) })
      assert.same({ 1, 1, 0, 0 }, { db:upsert("big", { { id = MAX, n = 1 }, { id = 9223372036854775807LL, n = 2 } }) })
      assert.equal(1, db:quality("big").duplicate_records)
    end)

    it("binds int64_t/uint64_t cdata in query parameters exactly, and refuses a uint64_t beyond int64", function()
      assert.same({ { v = MAX, t = "integer" } },
        db:query("SELECT CAST(? AS TEXT) AS v, typeof(?) AS t", 9223372036854775807LL, 1ULL))
      assert.has_error(function() db:query("SELECT ?", 18446744073709551615ULL) end,
        "sluice.store.query: bad parameter #1 (beyond int64)")
    end)
  end)

  describe("quality", function()
    before_each(function() db:define(KLINES) end)

    it("reports exact counters and the reference score", function()
      assert.same({
        total_records = 0, valid_records = 0, invalid_records = 0, duplicate_records = 0,
        validation_errors = {}, validation_error_counts = {}, inserted_records = 0,
        updated_records = 0, unchanged_records = 0, ignored_fields = 0, data_quality_score = 100,
      }, db:quality("klines"))
      db:upsert("klines", klines(6))                           -- 6 inserted
      local rows = klines(4)                                   -- 4 existing keys:
      rows[1].close = 1                                        --   1 updated, 3 unchanged
      rows[5] = { symbol = "BTCUSDT", open_time = 1 }          -- missing close
      rows[6] = { symbol = "BTCUSDT", open_time = 2 }          -- missing close
      rows[7] = { symbol = "BTCUSDT", close = 1 }              -- missing open_time
      rows[8] = kline(100)                                     -- 1 inserted
      rows[9] = kline(100)                                     -- its key again: a duplicate
      assert.same({ 1, 1, 4, 3 }, { db:upsert("klines", rows) })
      local q = db:quality("klines")
      q.updated_at = nil
      -- re-polled rows (updated or unchanged) are not duplicates; a key
      -- repeated within one batch is
      assert.same({
        total_records = 15, valid_records = 12, invalid_records = 3, duplicate_records = 1,
        validation_errors = { "missing required field: close", "missing key field: open_time" },
        validation_error_counts = { ["missing required field: close"] = 2, ["missing key field: open_time"] = 1 },
        inserted_records = 7, updated_records = 1, unchanged_records = 4, ignored_fields = 0,
        data_quality_score = (15 - 3 - 1) / 15 * 100,
      }, q)
      -- quality() with no name: every table
      local all = db:quality()
      assert.same({ "klines" }, (function() local k = {} for n in pairs(all) do k[#k + 1] = n end return k end)())
      assert.equal(15, all.klines.total_records)
      assert.is_true(db:reset_quality("klines"))
      assert.equal(0, db:quality("klines").total_records)
    end)

    it("matches the reference /data-quality example: 10000 rows, 50 invalid, 25 duplicates -> 99.25", function()
      local rows = {}
      for i = 1, 9925 do rows[i] = kline(i) end
      for i = 1, 50 do rows[#rows + 1] = { symbol = "BTCUSDT", open_time = -i } end -- no price
      for i = 1, 25 do rows[#rows + 1] = kline(i) end -- sent twice in the batch
      assert.same({ 9925, 0, 25, 50 }, { db:upsert("klines", rows) })
      local q = db:quality("klines")
      assert.equal(10000, q.total_records)
      assert.equal(9950, q.valid_records)
      assert.equal(50, q.invalid_records)
      assert.equal(25, q.duplicate_records)
      assert.same({ "missing required field: close" }, q.validation_errors)
      assert.equal(99.25, q.data_quality_score)
    end)

    it("scores a collector re-polling unchanged rows 100: re-reads are not duplicates", function()
      for _ = 1, 10 do db:upsert("klines", klines(6)) end
      local q = db:quality("klines")
      assert.same({ 60, 6, 54, 0, 100 }, { q.total_records, q.inserted_records, q.unchanged_records,
        q.duplicate_records, q.data_quality_score })
    end)

    it("keeps at most 100 distinct reasons, counting newer ones as 'other'", function()
      db:define{ name = "r", columns = { id = "integer" }, key = { "id" },
        validate = function(row) return false, "reason " .. row.id end }
      local rows = {}
      for i = 1, 105 do rows[i] = { id = i } end
      assert.same({ 0, 0, 0, 105 }, { db:upsert("r", rows) })
      local q = db:quality("r")
      assert.equal(101, #q.validation_errors)
      assert.equal(5, q.validation_error_counts.other)
      assert.equal("other", q.validation_errors[1])
      assert.equal(105, count(db, "sluice_rejects")) -- every row is still kept
    end)
  end)

  describe("misuse", function()
    it("blames the caller's line", function()
      local line = debug.getinfo(1, "l").currentline + 1
      assert.same({ "store_rows_spec.lua:" .. (line + 1), "sluice.store.upsert: bad argument #1 (string expected, got nil)" },
        { raised_at(function() db:upsert(nil, {}) end) })
      assert.same({ "store_rows_spec.lua:" .. (line + 3), "sluice.store.upsert: table 'nope' is not defined (call db:define first)" },
        { raised_at(function() db:upsert_accepted("nope", {}) end) })
      assert.same({ "store_rows_spec.lua:" .. (line + 5), "sluice.store.select: bad argument #2 (string expected, got number)" },
        { raised_at(function() db:select("klines", 1) end) })
      assert.same({ "store_rows_spec.lua:" .. (line + 7), "sluice.store.quality: bad argument #1 (string expected, got number)" },
        { raised_at(function() db:quality(1) end) })
      assert.same({ "store_rows_spec.lua:" .. (line + 9), "sluice.store.rejects: bad argument #2 (number expected, got string)" },
        { raised_at(function() db:rejects("klines", "10") end) })
      db:close()
      assert.same({ "store_rows_spec.lua:" .. (line + 12), "sluice.store: database is closed" },
        { raised_at(function() db:reset_quality("klines") end) })
    end)

    it("raises at the caller's line when validate closes the database", function()
      db:define{ name = "v", columns = { id = "integer" }, key = { "id" },
        validate = function() db:close() return true end }
      local line = debug.getinfo(1, "l").currentline + 1
      assert.same({ "store_rows_spec.lua:" .. (line + 1), "sluice.store: database is closed" },
        { raised_at(function() db:upsert("v", { { id = 1 } }) end) })
    end)
  end)
end)
