-- sluice.repl's sql() helper: reading a postgres sink's tables back from
-- the REPL, against a real PostgreSQL server (support.postgres).
local repl = require "sluice.repl"
local app_mod = require "sluice.app"
local json = require "sluice.json"
local pg = require "sluice.pg"
local pgs = require "support.postgres"

local U256MAX = "115792089237316195423570985008687907853269984665640564039457584007913129639935"

describe("sluice.repl sql()", function()
  local srv, conn
  local sql = repl.helpers.sql

  setup(function()
    srv = pgs.start()
    conn = assert(pg.connect { url = srv:url() })
    assert(conn:query("CREATE TABLE ticks (id bigint PRIMARY KEY, u numeric(78,0), p numeric, s text)"))
    assert(conn:query("INSERT INTO ticks VALUES (1, " .. U256MAX .. ", 1.50, 'a|b'), "
      .. "(9223372036854775807, 0, -0.000001, NULL)"))
  end)

  teardown(function()
    app_mod.current = nil
    if conn then conn:close() end
    if srv then srv:shutdown() end
  end)

  -- the running configuration as the REPL sees it (app_mod.current)
  local function running(sinks)
    app_mod.current = { config = { sinks = sinks } }
  end

  it("says when no configuration, no sink or no postgres sink runs", function()
    app_mod.current = nil
    assert.has_error(function() sql("SELECT 1") end, "sql: the running configuration has no sinks")
    running({ stream = { kind = "redis_stream" } })
    assert.has_error(function() sql("SELECT 1") end, "sql: the running configuration has no postgres sink")
    assert.has_error(function() sql("SELECT 1", { sink = "stream" }) end,
      "sql: sink 'stream' is not of kind postgres")
    assert.has_error(function() sql("SELECT 1", { sink = "nope" }) end, "sql: no sink named 'nope'")
    assert.has_error(function() sql(42) end, "sql: bad argument #1 (string expected, got number)")
    assert.has_error(function() sql("SELECT 1", "pg") end, "sql: bad argument #2 (table expected, got string)")
  end)

  it("returns the rows of the only postgres sink, values exact", function()
    running({ postgres = { url = srv:url() }, stream = { kind = "redis_stream" } })
    local rows = sql("SELECT id, u, p, s FROM ticks ORDER BY id")
    assert.equal(2, #rows)
    assert.equal(1, rows[1].id)
    assert.equal(U256MAX, json.numeral_text(rows[1].u))
    assert.equal("1.50", json.numeral_text(rows[1].p))
    assert.equal("a|b", rows[1].s)
    assert.equal("9223372036854775807", json.int64_text(rows[2].id))
    assert.equal("-0.000001", json.numeral_text(rows[2].p))
    assert.is_nil(rows[2].s)
  end)

  it("picks a sink by name, says a statement's tag, and fails with the SQLSTATE", function()
    running({ a = { kind = "postgres", url = srv:url() }, b = { kind = "postgres", url = srv:url() } })
    assert.has_error(function() sql("SELECT 1") end, "sql: several postgres sinks: give {sink = name}")
    assert.same({ { n = 2 } }, sql("SELECT count(*)::int AS n FROM ticks", { sink = "b" }))
    assert.equal("UPDATE 1", tostring(sql("UPDATE ticks SET s = 'c' WHERE id = 1", { sink = "a" })))
    local ok, err = pcall(sql, "SELECT * FROM nope", { sink = "a" })
    assert.is_false(ok)
    assert.matches('^sql: 42P01 relation "nope" does not exist', err)
  end)

  it("runs from a session, shown by the pretty printer", function()
    running({ postgres = { url = srv:url() } })
    local r = repl.eval(repl.session(), [[sql("SELECT id, 'x' AS s FROM ticks WHERE id = 1")]])
    assert.is_true(r.ok)
    assert.equal('{\n  { id = 1, s = "x" }\n}\n', r.output)
  end)
end)
