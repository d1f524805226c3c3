-- sluice.store: the db object as a handle (docs/lua-api.md, Handles):
-- name(), stats() and close() -> true | false, as every handle answers them.
local store = require "sluice.store"
local fx = require "support.store"

describe("sluice.store handle", function()
  it("name() is the path it was opened with", function()
    local db = assert(store.open(":memory:"))
    assert.equal(":memory:", db:name())
    db:close()
    local path = fx.tmpdb()
    local fdb = assert(store.open(path))
    assert.equal(path, fdb:name())
    fdb:close()
    assert.equal(path, fdb:name()) -- a closed db still answers name()
    fx.remove_db(path)
  end)

  it("stats() is a plain snapshot: path, open/closed, tables, transaction", function()
    local db = assert(store.open(":memory:"))
    assert.same({ name = ":memory:", path = ":memory:", open = true, closed = false, tables = {},
      in_transaction = false }, db:stats())
    assert(db:define(fx.KLINES))
    assert(db:define({ name = "ticks", columns = { id = "integer" }, key = { "id" } }))
    local inside
    assert(db:transaction(function() inside = db:stats(); return true end))
    assert.same({ name = ":memory:", path = ":memory:", open = true, closed = false,
      tables = { "klines", "ticks" }, in_transaction = true }, inside)
    local before = db:stats()
    assert.is_true(db:close())
    assert.is_false(before.closed) -- a snapshot, not a view
    assert.same({ name = ":memory:", path = ":memory:", open = false, closed = true,
      tables = { "klines", "ticks" }, in_transaction = false }, db:stats())
  end)

  it("close() is true the first time and false after", function()
    local db = assert(store.open(":memory:"))
    assert.is_true(db:close())
    assert.is_false(db:close())
    assert.is_false(db:is_open())
    assert.has_error(function() db:query("SELECT 1") end, "sluice.store: database is closed")
  end)
end)
