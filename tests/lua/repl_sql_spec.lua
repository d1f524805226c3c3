-- sluice.repl's sql() helper: reading a postgres or clickhouse sink's tables
-- back from the REPL, against real servers (support.postgres,
-- support.clickhouse).
local repl = require "sluice.repl"
local app_mod = require "sluice.app"
local json = require "sluice.json"
local pg = require "sluice.pg"
local pgs = require "support.postgres"
local chs = require "support.clickhouse"

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

  it("says when no configuration, no sink or no postgres or clickhouse sink runs", function()
    app_mod.current = nil
    assert.has_error(function() sql("SELECT 1") end, "sql: the running configuration has no sinks")
    running({ stream = { kind = "redis_stream" } })
    assert.has_error(function() sql("SELECT 1") end, "sql: the running configuration has no postgres or clickhouse sink")
    assert.has_error(function() sql("SELECT 1", { sink = "stream" }) end,
      "sql: sink 'stream' is not of kind postgres or clickhouse")
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
    assert.has_error(function() sql("SELECT 1") end, "sql: several postgres or clickhouse sinks: give {sink = name}")
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

  describe("on a clickhouse sink", function()
    local ch

    setup(function()
      ch = chs.start()
      assert(ch:query("CREATE DATABASE market"))
      assert(ch:query("CREATE TABLE market.ticks (id Int64, big UInt64, u Nullable(String), p Nullable(Decimal(38, 8)),"
        .. " s String) ENGINE = MergeTree ORDER BY id"))
      assert(ch:query("INSERT INTO market.ticks VALUES (1, 18446744073709551615, '" .. U256MAX .. "', 1.5, 'a|b'),"
        .. " (-9223372036854775807, 7, NULL, NULL, '')"))
    end)

    teardown(function()
      if ch then ch:shutdown() end
    end)

    local function sinks(extra)
      local t = { clickhouse = { url = ch:url(), database = "market", user = "sluice", password = chs.PASSWORD } }
      for k, v in pairs(extra or {}) do t[k] = v end
      return t
    end

    it("returns the rows of the only clickhouse sink, integers exact", function()
      running(sinks({ stream = { kind = "redis_stream" } }))
      local rows = sql("SELECT id, big, u, p, s FROM ticks ORDER BY id")
      assert.equal(2, #rows)
      assert.equal("-9223372036854775807", json.int64_text(rows[1].id))
      assert.equal(7, rows[1].big)
      assert.is_nil(rows[1].u)
      assert.is_nil(rows[1].p)
      assert.equal("", rows[1].s)
      assert.equal(1, rows[2].id)
      assert.equal("18446744073709551615", json.int64_text(rows[2].big))
      assert.equal(U256MAX, rows[2].u)
      assert.equal("a|b", rows[2].s)
      assert.same({ { n = 2 } }, sql("SELECT toInt32(count()) AS n FROM ticks"))
    end)

    it("picks it among postgres sinks by name, says OK for a statement, and fails clearly without the password",
      function()
      running(sinks({ postgres = { url = srv:url() } }))
      assert.has_error(function() sql("SELECT 1") end, "sql: several postgres or clickhouse sinks: give {sink = name}")
      assert.equal("OK", tostring(sql("INSERT INTO ticks (id, big, s) VALUES (3, 3, 'c')", { sink = "clickhouse" })))
      assert.same({ { n = 3 } }, sql("SELECT toInt32(count()) AS n FROM ticks", { sink = "clickhouse" }))
      local ok, err = pcall(sql, "SELECT * FROM nope", { sink = "clickhouse" })
      assert.is_false(ok)
      assert.matches("^sql: clickhouse: HTTP 404: Code: 60, .*Table market.nope doesn't exist", err)
      assert.is_nil(err:find(chs.PASSWORD, 1, true))
      -- a wrong password: the server's refusal, never the password tried
      local bad = sinks()
      bad.clickhouse.password = "not-the-" .. chs.PASSWORD
      running(bad)
      ok, err = pcall(sql, "SELECT 1")
      assert.is_false(ok)
      assert.matches("^sql: clickhouse: HTTP %d+: Code: 193, ", err)
      assert.is_nil(err:find(chs.PASSWORD, 1, true))
    end)

    it("runs from a session, shown by the pretty printer", function()
      running(sinks())
      local r = repl.eval(repl.session(), [[sql("SELECT id, s FROM ticks WHERE id = 1")]])
      assert.is_true(r.ok)
      assert.equal('{\n  { id = 1, s = "a|b" }\n}\n', r.output)
    end)
  end)
end)
