-- sluice.store and sluice.store.handle: open, encode_json, lifetime (close,
-- check for a deleted or replaced file), misuse blamed on the caller's line.
local sluice = require "sluice"
local store = require "sluice.store"
local fx = require "support.store"

local err_of, tmpdb, remove_db = fx.err_of, fx.tmpdb, fx.remove_db
local KLINES, kline, klines = fx.KLINES, fx.kline, fx.klines

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
      local names = {}
      for _, r in ipairs(fdb:query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")) do
        names[#names + 1] = r.name
      end
      assert.same({ "sluice_checkpoints", "sluice_quality", "sluice_rejects", "sluice_state" }, names)
      assert.is_true(fdb:close())
      -- opening again finds the tables and keeps WAL
      fdb = assert(store.open(path, { busy_timeout = 0.25 }))
      assert.equal("wal", fdb:query("PRAGMA journal_mode")[1].journal_mode)
      fdb:close()
      remove_db(path)
    end)

    -- The busy handler is sluice's own (it polls every 0.2 ms rather than
    -- SQLite's 1, 2, 5, 10 ms... steps), so PRAGMA busy_timeout reads 0:
    -- the timeout shows in how long a write waits for another
    -- connection's lock before "database is locked".
    it("waits busy_timeout seconds for another connection's write lock", function()
      local path = tmpdb()
      local fdb = assert(store.open(path, { busy_timeout = 0.25 }))
      local other = assert(require("sluice._store").open(path, 0))
      assert(other:exec("BEGIN IMMEDIATE"))
      local t0 = sluice.now()
      local n, err = fdb:exec("CREATE TABLE t (x)")
      local waited = sluice.now() - t0
      assert.is_nil(n)
      assert.equal("database is locked", err)
      assert.is_true(waited >= 0.25 and waited < 4, "waited " .. waited)
      assert(other:exec("ROLLBACK"))
      assert.equal(0, fdb:exec("CREATE TABLE t (x)"))
      other:close()
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
      assert.equal("sluice.store.open: option 'busy_timeout' must be a number in [0, 2147483], got string",
        err_of(store.open, ":memory:", { busy_timeout = "5" }))
      assert.equal("sluice.store.open: option 'busy_timeout' must be a number in [0, 2147483], got -1",
        err_of(store.open, ":memory:", { busy_timeout = -1 }))
      -- milliseconds in a C int: inf and nan used to reach SQLite as 0 (no
      -- waiting at all), 1e10 as 1316134912
      assert.equal("sluice.store.open: option 'busy_timeout' must be a number in [0, 2147483], got inf",
        err_of(store.open, ":memory:", { busy_timeout = math.huge }))
      assert.equal("sluice.store.open: option 'busy_timeout' must be a number in [0, 2147483], got nan",
        err_of(store.open, ":memory:", { busy_timeout = 0 / 0 }))
      assert.equal("sluice.store.open: option 'busy_timeout' must be a number in [0, 2147483], got 10000000000",
        err_of(store.open, ":memory:", { busy_timeout = 1e10 }))
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

  describe("encode_json and decode_json", function()
    it("are sluice.json's encoder and decoder", function()
      local json = require "sluice.json"
      assert.equal(json.encode, store.encode_json)
      assert.equal(json.decode, store.decode_json)
      assert.same({ nil, "cannot encode a function" }, { store.encode_json({ f = print }) })
      assert.truthy(store.encode_json({ f = print }, true):find('^{"f":"function: '))
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
      assert.is_false(db:close())
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
