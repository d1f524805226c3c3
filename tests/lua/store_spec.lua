-- sluice.store: SQLite storage, validation, quality counters, state.
local store = require "sluice.store"
local cjson = require "cjson"

-- The message of the error fn raises, without its "file:line: " prefix.
local function err_of(fn, ...)
  local ok, e = pcall(fn, ...)
  assert(not ok, "expected an error")
  return (tostring(e):gsub("^[^:]+:%d+: ", ""))
end

local function tmpdb()
  local path = os.tmpname()
  os.remove(path)
  return path .. ".db"
end

local function remove_db(path)
  for _, suffix in ipairs({ "", "-wal", "-shm", "-journal" }) do os.remove(path .. suffix) end
end

local function count(db, name)
  return db:query("SELECT count(*) AS n FROM " .. name)[1].n
end

local KLINES = {
  name = "klines",
  columns = { symbol = "text", open_time = "integer", open = "real", close = "real",
    volume = "real", trades = "integer" },
  key = { "symbol", "open_time" },
  required = { "close" },
}

local function kline(i, close)
  return { symbol = "BTCUSDT", open_time = 1700000000000 + i * 60000, open = 100 + i,
    close = close or 101 + i, volume = i * 0.5, trades = i }
end

local function klines(n)
  local rows = {}
  for i = 1, n do rows[i] = kline(i) end
  return rows
end

describe("sluice.store", function()
  local db

  before_each(function()
    db = assert(store.open(":memory:"))
  end)

  after_each(function()
    db:close()
  end)

  describe("open", function()
    it("opens a file database in WAL mode with synchronous=NORMAL, foreign keys and a busy timeout", function()
      local path = tmpdb()
      local fdb = assert(store.open(path))
      assert.equal("wal", fdb:query("PRAGMA journal_mode")[1].journal_mode)
      assert.equal(1, fdb:query("PRAGMA synchronous")[1].synchronous) -- NORMAL
      assert.equal(1, fdb:query("PRAGMA foreign_keys")[1].foreign_keys)
      assert.equal(5000, fdb:query("PRAGMA busy_timeout")[1].timeout)
      local names = {}
      for _, r in ipairs(fdb:query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")) do
        names[#names + 1] = r.name
      end
      assert.same({ "sluice_checkpoints", "sluice_quality", "sluice_rejects", "sluice_state" }, names)
      assert.is_true(fdb:close())
      -- opening again finds the tables and keeps WAL
      fdb = assert(store.open(path, { busy_timeout = 0.25 }))
      assert.equal("wal", fdb:query("PRAGMA journal_mode")[1].journal_mode)
      assert.equal(250, fdb:query("PRAGMA busy_timeout")[1].timeout)
      fdb:close()
      remove_db(path)
    end)

    it("returns nil, err when the file cannot be opened", function()
      local d, err = store.open("/nonexistent-dir/sub/x.db")
      assert.is_nil(d)
      assert.equal("/nonexistent-dir/sub/x.db: unable to open database file", err)
    end)

    it("raises on misuse, naming the argument or option", function()
      assert.equal("sluice.store.open: bad argument #1 (string expected, got number)",
        err_of(store.open, 42))
      assert.equal("sluice.store.open: unknown option 'timeout'",
        err_of(store.open, ":memory:", { timeout = 1 }))
      assert.equal("sluice.store.open: option 'busy_timeout' (number expected, got string)",
        err_of(store.open, ":memory:", { busy_timeout = "5" }))
    end)

    it("blames the caller's line for misuse", function()
      local ok, e = pcall(store.open, 42)
      assert.is_false(ok)
      assert.truthy(e:find("^sluice.store.open:") or e:find("store_spec.lua:%d+: sluice.store.open:"))
      ok, e = pcall(function() db:upsert("nope", {}) end)
      assert.is_false(ok)
      assert.truthy(e:find("store_spec.lua:%d+: sluice.store.upsert: table 'nope' is not defined"))
    end)
  end)

  describe("define", function()
    it("creates the table with the natural key as PRIMARY KEY, WITHOUT ROWID", function()
      assert.equal(db, db:define(KLINES))
      local cols = db:query("SELECT name, type, pk, \"notnull\" AS nn FROM pragma_table_info('klines') ORDER BY cid")
      assert.same({
        { name = "symbol", type = "TEXT", pk = 1, nn = 1 },
        { name = "open_time", type = "INTEGER", pk = 2, nn = 1 },
        { name = "close", type = "REAL", pk = 0, nn = 0 },
        { name = "open", type = "REAL", pk = 0, nn = 0 },
        { name = "trades", type = "INTEGER", pk = 0, nn = 0 },
        { name = "volume", type = "REAL", pk = 0, nn = 0 },
      }, cols)
      local sql = db:query("SELECT sql FROM sqlite_master WHERE name = 'klines'")[1].sql
      assert.equal('CREATE TABLE "klines" ("symbol" TEXT, "open_time" INTEGER, "close" REAL, '
        .. '"open" REAL, "trades" INTEGER, "volume" REAL, PRIMARY KEY ("symbol", "open_time")) '
        .. 'WITHOUT ROWID', sql)
    end)

    it("makes a single integer key the rowid, and json columns TEXT", function()
      db:define{ name = "events", columns = { id = "integer", payload = "json", raw = "blob" }, key = { "id" } }
      assert.equal('CREATE TABLE "events" ("id" INTEGER PRIMARY KEY, "payload" JSON TEXT, "raw" BLOB)',
        db:query("SELECT sql FROM sqlite_master WHERE name = 'events'")[1].sql)
    end)

    it("is idempotent for the same definition", function()
      db:define(KLINES)
      db:upsert("klines", klines(3))
      db:define(KLINES)
      assert.equal(3, count(db, "klines"))
    end)

    it("validates the definition with exact messages", function()
      local function def(over)
        local d = { name = "t", columns = { a = "text", b = "integer" }, key = { "a" } }
        for k, v in pairs(over) do d[k] = v end
        return err_of(db.define, db, d)
      end
      assert.equal("sluice.store.define: bad argument #1 (table expected, got string)",
        err_of(db.define, db, "klines"))
      assert.equal("sluice.store.define: name must be an identifier ([A-Za-z_][A-Za-z0-9_]*), got 'bad name'",
        def{ name = "bad name" })
      assert.equal("sluice.store.define: name must be an identifier ([A-Za-z_][A-Za-z0-9_]*), got nil",
        err_of(db.define, db, { columns = { a = "text" }, key = { "a" } }))
      assert.equal("sluice.store.define: name 'sluice_x' is reserved (sluice_ and sqlite_ prefixes)",
        def{ name = "sluice_x" })
      assert.equal("sluice.store.define: table 't': columns must be a non-empty table",
        def{ columns = {} })
      assert.equal("sluice.store.define: table 't': column 'a-b' is not an identifier",
        def{ columns = { ["a-b"] = "text", a = "text" } })
      assert.equal("sluice.store.define: table 't': column 'b' has unknown type 'float' "
        .. "(expected text, integer, real, blob or json)",
        def{ columns = { a = "text", b = "float" } })
      assert.equal("sluice.store.define: table 't': columns 'A' and 'a' differ only in case",
        def{ columns = { a = "text", A = "text" } }:gsub("'a' and 'A'", "'A' and 'a'"))
      assert.equal("sluice.store.define: table 't': key must be a non-empty list of column names",
        def{ key = {} })
      assert.equal("sluice.store.define: table 't': key column 'c' is not in columns",
        def{ key = { "a", "c" } })
      assert.equal("sluice.store.define: table 't': key column 'a' is listed twice",
        def{ key = { "a", "a" } })
      assert.equal("sluice.store.define: table 't': required column 'z' is not in columns",
        def{ required = { "z" } })
      assert.equal("sluice.store.define: table 't': validate must be a function",
        def{ validate = true })
      assert.equal("sluice.store.define: table 't': unknown must be \"reject\" or \"ignore\"",
        def{ unknown = "drop" })
      assert.equal("sluice.store.define: unknown option 'colums'", def{ colums = {} })
      -- nothing was created
      assert.same({}, db:query("SELECT name FROM sqlite_master WHERE name = 't'"))
    end)

    it("adds new columns to an existing table, keeping its rows", function()
      local path = tmpdb()
      local fdb = assert(store.open(path))
      fdb:define(KLINES)
      assert.same({ 3, 0, 0, 0 }, { fdb:upsert("klines", klines(3)) })
      fdb:close()
      fdb = assert(store.open(path))
      local v2 = { name = "klines", key = KLINES.key, required = KLINES.required, columns = {} }
      for k, v in pairs(KLINES.columns) do v2.columns[k] = v end
      v2.columns.quote_volume = "real"
      v2.columns.interval = "text"
      fdb:define(v2)
      local names = {}
      for _, r in ipairs(fdb:query("SELECT name, type FROM pragma_table_info('klines') ORDER BY cid")) do
        names[#names + 1] = r.name .. ":" .. r.type
      end
      assert.same({ "symbol:TEXT", "open_time:INTEGER", "close:REAL", "open:REAL", "trades:INTEGER",
        "volume:REAL", "interval:TEXT", "quote_volume:REAL" }, names)
      local r1 = fdb:query("SELECT * FROM klines WHERE open_time = ?", 1700000060000)[1]
      assert.is_nil(r1.quote_volume)
      assert.equal(102, r1.close)
      local row = kline(1)
      row.quote_volume = 12.5
      row.interval = "1m"
      assert.same({ 0, 1, 0, 0 }, { fdb:upsert("klines", { row }) })
      assert.same({ { quote_volume = 12.5, interval = "1m" } },
        fdb:query("SELECT quote_volume, interval FROM klines WHERE open_time = ?", 1700000060000))
      fdb:close()
      remove_db(path)
    end)

    it("refuses destructive changes with a message naming the table and column", function()
      db:define(KLINES)
      local function changed(f)
        local d = { name = "klines", key = { "symbol", "open_time" }, columns = {} }
        for k, v in pairs(KLINES.columns) do d.columns[k] = v end
        f(d)
        return err_of(db.define, db, d)
      end
      assert.equal("sluice.store.define: table 'klines': column 'trades' is missing from the new "
        .. "definition (dropping a column is refused)",
        changed(function(d) d.columns.trades = nil end))
      assert.equal("sluice.store.define: table 'klines': column 'volume' is real, the new definition "
        .. "says text (changing a type is refused)",
        changed(function(d) d.columns.volume = "text" end))
      assert.equal("sluice.store.define: table 'klines': key is (symbol, open_time), the new definition "
        .. "says (symbol) (changing the key is refused)",
        changed(function(d) d.key = { "symbol" } end))
      assert.equal("sluice.store.define: table 'klines': key is (symbol, open_time), the new definition "
        .. "says (open_time, symbol) (changing the key is refused)",
        changed(function(d) d.key = { "open_time", "symbol" } end))
      -- the table is untouched
      assert.equal(6, #db:query("SELECT * FROM pragma_table_info('klines')"))
    end)
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
      assert.equal("sluice.store.define: table 'nf2': column 'i' has unknown option 'finite'",
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

  describe("query and exec", function()
    it("binds nil, booleans, numbers, text and blobs with NUL bytes", function()
      local bin = "a\0b\0\255"
      local r = db:query("SELECT ? AS n, typeof(?) AS tn, ? AS t, ? AS f, ? AS i, typeof(?) AS ti, ? AS x, "
        .. "? AS s, typeof(?) AS ts, length(CAST(? AS BLOB)) AS ls, ? AS b, typeof(?) AS tb, length(?) AS lb",
        nil, nil, true, false, 7, 7, 2.5, bin, bin, bin, store.blob(bin), store.blob(bin), store.blob(bin))
      assert.same({ { tn = "null", t = 1, f = 0, i = 7, ti = "integer", x = 2.5, s = bin, ts = "text", ls = 5,
        b = bin, tb = "blob", lb = 5 } }, r)
      assert.equal("real", db:query("SELECT typeof(?) AS t", 0.5)[1].t)
      assert.equal("integer", db:query("SELECT typeof(?) AS t", 2 ^ 53)[1].t)
      assert.equal("real", db:query("SELECT typeof(?) AS t", 2 ^ 63)[1].t)
      assert.equal("", db:query("SELECT ? AS e", store.blob(""))[1].e)
    end)

    it("exec returns the number of rows changed; query returns rows in order", function()
      assert.equal(0, db:exec("CREATE TABLE t (a INTEGER, b TEXT)"))
      assert.equal(1, db:exec("INSERT INTO t VALUES (?, ?)", 1, "one"))
      assert.equal(1, db:exec("INSERT INTO t VALUES (?, ?)", 2, nil))
      assert.equal(2, db:exec("UPDATE t SET b = 'x'"))
      assert.equal(0, db:exec("SELECT * FROM t"))
      assert.same({ { a = 1, b = "x" }, { a = 2, b = "x" } }, db:query("SELECT * FROM t ORDER BY a"))
      assert.same({}, db:query("SELECT * FROM t WHERE a > ?", 5))
      assert.equal(2, db:last_insert_id())
    end)

    it("returns nil, err for SQL errors", function()
      assert.same({ nil, "no such table: nope" }, { db:query("SELECT * FROM nope") })
      assert.same({ nil, "near \"SELEC\": syntax error" }, { db:exec("SELEC 1") })
      db:exec("CREATE TABLE u (a INTEGER PRIMARY KEY)")
      db:exec("INSERT INTO u VALUES (1)")
      assert.same({ nil, "UNIQUE constraint failed: u.a" }, { db:exec("INSERT INTO u VALUES (?)", 1) })
    end)

    it("raises on misuse", function()
      assert.equal("sluice.store.query: 2 parameters expected, got 1",
        err_of(db.query, db, "SELECT ?, ?", 1))
      assert.equal("sluice.store.exec: 0 parameters expected, got 1",
        err_of(db.exec, db, "SELECT 1", 1))
      assert.equal("sluice.store.query: bad parameter #1 (table cannot be bound)",
        err_of(db.query, db, "SELECT ?", {}))
      assert.equal("sluice.store.exec: one SQL statement expected (use db:script for several)",
        err_of(db.exec, db, "SELECT 1; SELECT 2"))
      assert.equal("sluice.store.query: bad argument #1 (string expected, got number)",
        err_of(db.query, db, 1))
      -- and the statement works again afterwards
      assert.same({ { x = 1 } }, db:query("SELECT ? AS x", 1))
    end)

    it("survives more distinct statements than the cache holds", function()
      for i = 1, 600 do
        assert.equal(i, db:query("SELECT " .. i .. " AS v")[1].v)
      end
      db:define(KLINES)
      assert.same({ 3, 0, 0, 0 }, { db:upsert("klines", klines(3)) })
      for i = 1, 300 do db:query("SELECT " .. i .. " AS v") end
      assert.same({ 0, 0, 3, 0 }, { db:upsert("klines", klines(3)) })
    end)

    it("runs a transaction: commits on return, rolls back and re-raises on error", function()
      db:define(KLINES)
      assert.same({ "ok", 3 }, { db:transaction(function(n)
        db:upsert("klines", klines(n))
        return "ok", n
      end, 3) })
      assert.equal(3, count(db, "klines"))
      local ok, e = pcall(db.transaction, db, function()
        db:upsert("klines", { kline(10) })
        db:exec("DELETE FROM klines WHERE open_time = ?", 1700000060000)
        error("changed my mind", 0)
      end)
      assert.is_false(ok)
      assert.equal("changed my mind", e)
      assert.equal(3, count(db, "klines"))
      assert.equal(3, db:quality("klines").total_records)
      assert.is_false(db._c:in_transaction())
    end)

    it("refuses to wait inside a transaction, which then rolls back", function()
      local sluice = require "sluice"
      db:define(KLINES)
      -- Another task's write must not join the transaction while fn waits.
      local writer = sluice.spawn(function() return db:upsert("klines", { kline(20) }) end)
      local ok, e = pcall(db.transaction, db, function()
        db:upsert("klines", klines(2))
        sluice.sleep(0.01)
      end)
      assert.is_false(ok)
      assert.is_truthy(tostring(e):find("sluice.sleep: cannot wait inside db:transaction", 1, true), e)
      assert.is_false(db._c:in_transaction())
      assert.equal(0, count(db, "klines"))
      assert.same({ true, 1, 0, 0, 0 }, { sluice.wait(writer) })
      assert.equal(1, count(db, "klines"))
      -- Nested transactions, sluice.yield and coroutine.yield are refused too.
      for _, wait in ipairs({
        function() db:transaction(function() sluice.sleep(0) end) end,
        function() sluice.yield() end,
        function() coroutine.yield() end,
        function() sluice.park(0.01) end,
      }) do
        ok, e = pcall(db.transaction, db, function()
          db:exec("DELETE FROM klines")
          wait()
        end)
        assert.is_false(ok)
        assert.is_truthy(tostring(e):find("cannot wait inside db:transaction", 1, true)
          or tostring(e):find("attempt to yield across C-call boundary", 1, true), e)
        assert.is_false(db._c:in_transaction())
        assert.equal(1, count(db, "klines"))
      end
      -- Outside the transaction the task waits as usual.
      assert.is_true(sluice.sleep(0.01))
      assert.same({ "done" }, { db:transaction(function() return "done" end) })
    end)
  end)

  describe("state and checkpoints", function()
    it("round-trip and survive close and reopen", function()
      local path = tmpdb()
      local fdb = assert(store.open(path))
      local snap = { state = "open", failures = 5, opened_at = 1732291234.567891, ratio = 0.1 + 0.2,
        history = { 1, 2, 3 }, nested = { ok = false } }
      assert.is_true(fdb:save_state("breaker", "binance", snap))
      assert.is_true(fdb:save_state("breaker", "coinbase", { state = "closed" }))
      assert.is_true(fdb:save_state("limiter", "binance", { rate = 10 }))
      assert.is_true(fdb:set_checkpoint("binance_klines", "BTCUSDT", 1700000060000))
      assert.is_true(fdb:set_checkpoint("binance_klines", "cursor", "abc"))
      assert.is_true(fdb:set_checkpoint("binance_klines", "window", { from = 1, to = 2 }))
      assert.is_true(fdb:set_checkpoint("binance_klines", "gone", 1))
      assert.is_true(fdb:set_checkpoint("binance_klines", "gone", nil))
      fdb:close()
      fdb = assert(store.open(path))
      assert.same(snap, fdb:load_state("breaker", "binance"))
      assert.equal(0.1 + 0.2, fdb:load_state("breaker", "binance").ratio)
      assert.is_nil(fdb:load_state("breaker", "kraken"))
      assert.same({ binance = snap, coinbase = { state = "closed" } }, fdb:states("breaker"))
      assert.same({}, fdb:states("nothing"))
      assert.equal(1700000060000, fdb:get_checkpoint("binance_klines", "BTCUSDT"))
      assert.equal("abc", fdb:get_checkpoint("binance_klines", "cursor"))
      assert.is_nil(fdb:get_checkpoint("binance_klines", "gone"))
      assert.same({ BTCUSDT = 1700000060000, cursor = "abc", window = { from = 1, to = 2 } },
        fdb:checkpoints("binance_klines"))
      -- overwrite
      assert.is_true(fdb:save_state("breaker", "binance", { state = "closed" }))
      assert.same({ state = "closed" }, fdb:load_state("breaker", "binance"))
      assert.is_true(fdb:delete_state("breaker", "binance"))
      assert.is_nil(fdb:load_state("breaker", "binance"))
      fdb:close()
      remove_db(path)
    end)

    it("raises on misuse", function()
      assert.equal("sluice.store.save_state: bad argument #3 (table expected, got string)",
        err_of(db.save_state, db, "k", "n", "x"))
      assert.equal("sluice.store.save_state: cannot encode state: cannot encode a function",
        err_of(db.save_state, db, "k", "n", { f = print }))
      assert.equal("sluice.store.set_checkpoint: bad argument #2 (string expected, got number)",
        err_of(db.set_checkpoint, db, "c", 1, 2))
      assert.equal("sluice.store.set_checkpoint: cannot encode value: cannot encode nan",
        err_of(db.set_checkpoint, db, "c", "k", 0 / 0))
    end)
  end)

  describe("a deleted database file", function()
    it("is detected: check, upsert and the state writers fail with the reason, logged once", function()
      local log = require "sluice.log"
      local path = tmpdb()
      local fdb = assert(store.open(path))
      assert(fdb:define(KLINES))
      assert.same({ 2, 0, 0, 0 }, { fdb:upsert("klines", klines(2)) })
      assert.is_true(fdb:check())
      log.output("/dev/null")
      local level = log.level()
      log.level("info")
      remove_db(path)
      local why = "database file " .. path .. " was deleted (rows written now are lost at exit; restart sluice)"
      assert.same({ nil, why }, { fdb:check() })
      assert.same({ nil, why }, { fdb:upsert("klines", klines(3)) })
      assert.same({ nil, why }, { fdb:save_state("k", "n", {}) })
      assert.same({ nil, why }, { fdb:set_checkpoint("c", "k", 1) })
      local said = {}
      for _, e in ipairs(log.recent()) do
        if e.msg:find("was deleted", 1, true) then said[#said + 1] = e end
      end
      log.level(level)
      log.output("-")
      assert.equal(1, #said)
      assert.equal("error", said[1].level)
      assert.equal("store: database file " .. path .. " was deleted", said[1].msg)
      assert.equal(path, said[1].path)
      fdb:close()
    end)

    it("is told apart from a file replaced at the same path; memory databases always pass", function()
      local path = tmpdb()
      local fdb = assert(store.open(path))
      remove_db(path)
      local other = assert(store.open(path))
      local ok, why = fdb:check()
      assert.is_nil(ok)
      assert.equal("database file " .. path .. " was replaced by another file "
        .. "(rows written now are lost at exit; restart sluice)", why)
      assert.is_true(other:check())
      other:close()
      fdb:close()
      remove_db(path)
      assert.is_true(db:check())
    end)
  end)

  describe("close", function()
    it("is idempotent and makes every later call raise", function()
      db:define(KLINES)
      assert.is_true(db:close())
      assert.is_true(db:close())
      assert.is_false(db:is_open())
      assert.equal("sluice.store.db (closed)", tostring(db))
      local calls = {
        function() return db:query("SELECT 1") end,
        function() return db:exec("SELECT 1") end,
        function() return db:script("SELECT 1") end,
        function() return db:upsert("klines", { kline(1) }) end,
        function() return db:define(KLINES) end,
        function() return db:quality("klines") end,
        function() return db:select("klines") end,
        function() return db:transaction(function() end) end,
        function() return db:save_state("a", "b", {}) end,
        function() return db:load_state("a", "b") end,
        function() return db:states("a") end,
        function() return db:set_checkpoint("a", "b", 1) end,
        function() return db:get_checkpoint("a", "b") end,
        function() return db:rejects("klines") end,
      }
      for _, f in ipairs(calls) do
        assert.equal("sluice.store: database is closed", err_of(f))
      end
      -- the primitive refuses too
      assert.equal("sluice.store: database is closed", err_of(db._c.query, db._c, "SELECT 1"))
    end)

    it("closes on garbage collection", function()
      local path = tmpdb()
      do
        local fdb = assert(store.open(path))
        fdb:exec("CREATE TABLE g (a)")
      end
      collectgarbage()
      collectgarbage()
      local fdb = assert(store.open(path))
      assert.same({}, fdb:query("SELECT * FROM g"))
      fdb:close()
      remove_db(path)
    end)
  end)
end)
