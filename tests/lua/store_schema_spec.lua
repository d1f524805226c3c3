-- sluice.store.schema: db:define, reconciling a definition with the table.
local store = require "sluice.store"
local fx = require "support.store"

local err_of, tmpdb, remove_db, count, raised_at = fx.err_of, fx.tmpdb, fx.remove_db, fx.count, fx.raised_at
local KLINES, kline, klines = fx.KLINES, fx.kline, fx.klines

describe("sluice.store.schema", function()
  local db

  before_each(function()
    db = assert(store.open(":memory:"))
  end)

  after_each(function()
    db:close()
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
      assert.equal("sluice.store.define: option 'name' must be an identifier ([A-Za-z_][A-Za-z0-9_]*), got 'bad name'",
        def{ name = "bad name" })
      assert.equal("sluice.store.define: option 'name' is required",
        err_of(db.define, db, { columns = { a = "text" }, key = { "a" } }))
      assert.equal("sluice.store.define: name 'sluice_x' is reserved (sluice_ and sqlite_ prefixes)",
        def{ name = "sluice_x" })
      assert.equal("sluice.store.define: option 'columns' must be a non-empty table, got {}",
        def{ columns = {} })
      assert.equal("sluice.store.define: table 't': column 'a-b' is not an identifier",
        def{ columns = { ["a-b"] = "text", a = "text" } })
      assert.equal("sluice.store.define: table 't': column 'b' has unknown type 'float' "
        .. "(expected text, integer, real, blob, json, uint256 or decimal)",
        def{ columns = { a = "text", b = "float" } })
      assert.equal("sluice.store.define: table 't': columns 'A' and 'a' differ only in case",
        def{ columns = { a = "text", A = "text" } }:gsub("'a' and 'A'", "'A' and 'a'"))
      assert.equal("sluice.store.define: option 'key' must be a non-empty list of column names, got {}",
        def{ key = {} })
      assert.equal("sluice.store.define: table 't': key column 'c' is not in columns",
        def{ key = { "a", "c" } })
      assert.equal("sluice.store.define: table 't': key column 'a' is listed twice",
        def{ key = { "a", "a" } })
      assert.equal("sluice.store.define: table 't': required column 'z' is not in columns",
        def{ required = { "z" } })
      assert.equal("sluice.store.define: option 'validate' must be a function, got boolean",
        def{ validate = true })
      assert.equal("sluice.store.define: option 'unknown' must be 'reject' or 'ignore', got 'drop'",
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

  describe("misuse", function()
    it("blames the caller's line, from define and from its helpers", function()
      local line = debug.getinfo(1, "l").currentline + 1
      assert.same({ "store_schema_spec.lua:" .. (line + 1), "sluice.store.define: bad argument #1 (table expected, got nil)" },
        { raised_at(function() db:define() end) })
      assert.same({ "store_schema_spec.lua:" .. (line + 3), "sluice.store.define: table 't': key column 'c' is not in columns" },
        { raised_at(function() db:define{ name = "t", columns = { a = "text" }, key = { "c" } } end) })
      db:define(KLINES)
      local v2 = { name = "klines", key = { "symbol" }, columns = KLINES.columns }
      assert.same({ "store_schema_spec.lua:" .. (line + 8), "sluice.store.define: table 'klines': key is "
        .. "(symbol, open_time), the new definition says (symbol) (changing the key is refused)" },
        { raised_at(function() db:define(v2) end) })
      db:close()
      assert.same({ "store_schema_spec.lua:" .. (line + 11), "sluice.store: database is closed" },
        { raised_at(function() db:define(KLINES) end) })
    end)
  end)
end)
