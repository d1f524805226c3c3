-- sluice.store.state: state snapshots and checkpoints.
local store = require "sluice.store"
local fx = require "support.store"

local err_of, tmpdb, remove_db, raised_at = fx.err_of, fx.tmpdb, fx.remove_db, fx.raised_at

describe("sluice.store.state", function()
  local db

  before_each(function()
    db = assert(store.open(":memory:"))
  end)

  after_each(function()
    db:close()
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

  describe("misuse", function()
    it("blames the caller's line", function()
      local line = debug.getinfo(1, "l").currentline + 1
      assert.same({ "store_state_spec.lua:" .. (line + 1), "sluice.store.save_state: cannot encode state: cannot encode a function" },
        { raised_at(function() db:save_state("k", "n", { f = print }) end) })
      assert.same({ "store_state_spec.lua:" .. (line + 3), "sluice.store.load_state: bad argument #2 (string expected, got nil)" },
        { raised_at(function() db:load_state("k") end) })
      assert.same({ "store_state_spec.lua:" .. (line + 5), "sluice.store.set_checkpoint: cannot encode value: cannot encode inf" },
        { raised_at(function() db:set_checkpoint("c", "k", math.huge) end) })
      assert.same({ "store_state_spec.lua:" .. (line + 7), "sluice.store.checkpoints: bad argument #1 (string expected, got number)" },
        { raised_at(function() db:checkpoints(1) end) })
      db:close()
      assert.same({ "store_state_spec.lua:" .. (line + 10), "sluice.store: database is closed" },
        { raised_at(function() db:delete_state("k", "n") end) })
    end)
  end)
end)
