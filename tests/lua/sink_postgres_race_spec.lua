-- sluice.sinks.postgres when another client creates the sink's table at the
-- same moment: a fleet of instances (tests/integration/fleet_postgres.sh),
-- or a migration, runs CREATE TABLE for the same new table concurrently.
-- PostgreSQL then makes CREATE TABLE IF NOT EXISTS wait for the other
-- transaction and fail with 23505 (unique violation on
-- pg_type_typname_nsp_index) once it commits: the sink reported that as a
-- refusal of the data, and the outbox dead-lettered a batch of good rows.
-- Made deterministic here: the other transaction holds its CREATE TABLE
-- uncommitted until the sink's statement waits on it.
--
-- ensure() now runs such a statement once more (it finds the table) and
-- never calls a DDL failure "rejected".
local sluice = require "sluice"
local pg = require "sluice.pg"
local sinkpg = require "sluice.sinks.postgres"
local wait_for = require("support.wait").wait_for
local pgs = require "support.postgres"

describe("sluice.sinks.postgres ensure() racing another CREATE TABLE", function()
  local srv, conn, other

  setup(function()
    srv = pgs.start()
    conn = assert(pg.connect { url = srv:url() })
    other = assert(pg.connect { url = srv:url() })
  end)

  teardown(function()
    if other then other:close() end
    if conn then conn:close() end
    if srv then srv:shutdown() end
  end)

  it("succeeds when the table appears while it creates it", function()
    local def = { name = "race", columns = { id = "integer", p = "decimal" }, key = { "id" } }
    assert(other:query("BEGIN"))
    assert(other:query("CREATE TABLE public.race (id bigint, p numeric, PRIMARY KEY (id))"))
    local sink = sinkpg.new("pg", { url = srv:url() })
    local result
    local t = sluice.spawn(function()
      result = { sink:ensure("race", def) }
    end)
    -- the sink's CREATE TABLE waits for the other transaction's lock
    wait_for("the sink's CREATE TABLE waiting", function()
      local res = assert(conn:query("SELECT count(*) AS n FROM pg_stat_activity"
        .. " WHERE wait_event_type = 'Lock' AND query LIKE 'CREATE TABLE IF NOT EXISTS%'"))
      return res.rows[1].n == 1
    end)
    assert(other:query("COMMIT"))
    sluice.wait(t)
    assert.same({ true }, result)
    -- and a batch goes through
    assert.is_true(sink:write("race", { { id = 1, p = "1.50" } }, def))
    assert.same({ { id = 1, p = "1.50" } },
      (assert(conn:query("SELECT id, p::text AS p FROM race")).rows))
    sink:close()
  end)
end)
