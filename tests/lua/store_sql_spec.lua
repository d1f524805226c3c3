-- sluice.store.sql: query, exec, script, transactions.
local store = require "sluice.store"
local fx = require "support.store"

local err_of, count, raised_at = fx.err_of, fx.count, fx.raised_at
local KLINES, kline, klines = fx.KLINES, fx.kline, fx.klines

describe("sluice.store.sql", function()
  local db

  before_each(function()
    db = assert(store.open(":memory:"))
  end)

  after_each(function()
    db:close()
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

  describe("misuse", function()
    it("blames the caller's line", function()
      local line = debug.getinfo(1, "l").currentline + 1
      assert.same({ "store_sql_spec.lua:" .. (line + 1), "sluice.store.query: bad argument #1 (string expected, got number)" },
        { raised_at(function() db:query(1) end) })
      assert.same({ "store_sql_spec.lua:" .. (line + 3), "sluice.store.script: bad argument #1 (string expected, got nil)" },
        { raised_at(function() db:script() end) })
      assert.same({ "store_sql_spec.lua:" .. (line + 5), "sluice.store.transaction: bad argument #1 (function expected, got nil)" },
        { raised_at(function() db:transaction() end) })
      assert.same({ "store_sql_spec.lua:" .. (line + 7), "sluice.store: database is closed" },
        { raised_at(function() db:transaction(function() db:close() end) end) })
      assert.same({ "store_sql_spec.lua:" .. (line + 9), "sluice.store: database is closed" },
        { raised_at(function() db:last_insert_id() end) })
    end)
  end)
end)
