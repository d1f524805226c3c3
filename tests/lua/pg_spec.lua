-- sluice.pg against a real PostgreSQL server started on a loopback port.
local sluice = require "sluice"
local pg = require "sluice.pg"
local json = require "sluice.json"
local pgs = require "support.postgres"
local wait_for = require("support.wait").wait_for

describe("sluice.pg", function()
  local srv, conn

  setup(function()
    srv = pgs.start()
    conn = assert(pg.connect { url = srv:url() })
  end)

  teardown(function()
    if conn then conn:close() end
    if srv then srv:shutdown() end
  end)

  it("connects without blocking the loop and reports the server", function()
    local ticks, done = 0, false
    local ticker = sluice.spawn(function()
      while not done do
        ticks = ticks + 1
        sluice.sleep(0)
      end
    end)
    local c = assert(pg.connect { url = srv:url() })
    done = true
    sluice.wait(ticker)
    assert.is_true(ticks >= 1) -- other tasks ran while it connected
    local state, reason, version, pid = c:status()
    assert.equal("idle", state)
    assert.equal("", reason)
    assert.equal(15, math.floor(version / 10000))
    assert.is_true(pid > 0)
    c:close()
    assert.equal("closed", (c:status()))
  end)

  it("returns exact values by type", function()
    local res = assert(conn:query([[SELECT 1::int2 AS a, 2147483647::int4 AS b,
      9007199254740993::int8 AS c, '-9223372036854775808'::int8 AS d, 42::int8 AS e,
      0.1::float8 AS f, 'NaN'::float8 AS g, true AS h, false AS i,
      '115792089237316195423570985008687907853269984665640564039457584007913129639935'::numeric(78,0) AS j,
      '0.10'::numeric AS k, 'NaN'::numeric AS l, 'héllo	"x"'::text AS m, NULL::text AS n,
      '{"a": 1.10, "b": 12345678901234567890}'::jsonb AS o]]))
    local r = res.rows[1]
    assert.equal(1, r.a)
    assert.equal(2147483647, r.b)
    assert.equal("int64_t", tostring(require("ffi").typeof(r.c)):match("int64_t"))
    assert.equal("9007199254740993", json.int64_text(r.c))
    assert.equal("-9223372036854775808", json.int64_text(r.d))
    assert.equal(42, r.e)
    assert.equal(0.1, r.f)
    assert.is_true(r.g ~= r.g)
    assert.equal(true, r.h)
    assert.equal(false, r.i)
    assert.equal("115792089237316195423570985008687907853269984665640564039457584007913129639935",
      json.numeral_text(r.j))
    assert.equal("0.10", json.numeral_text(r.k))
    assert.equal("NaN", r.l)
    assert.equal('héllo\t"x"', r.m)
    assert.is_nil(r.n)
    -- jsonb keeps numbers exactly (numeric inside)
    assert.equal('{"a": 1.10, "b": 12345678901234567890}', r.o)
    assert.same({ "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o" }, res.fields)
    assert.equal(20, res.types[3])
    assert.equal("SELECT 1", res.command)
    assert.equal(1, res.count)
  end)

  it("sends parameters as text, exactly", function()
    local res = assert(conn:query("SELECT $1::int8 AS a, $2::numeric AS b, $3::text AS c, $4::bool AS d,"
      .. " $5::float8 AS e, $6::jsonb AS f, $7::numeric AS g",
      { 9007199254740993LL, json.numeral("1e-30"), nil, true, 0.1, { x = 1, y = { 2, 3 } }, "0.50" }, 7))
    local r = res.rows[1]
    assert.equal("9007199254740993", json.int64_text(r.a))
    assert.equal("0.000000000000000000000000000001", json.numeral_text(r.b))
    assert.is_nil(r.c)
    assert.equal(true, r.d)
    assert.equal(0.1, r.e)
    assert.equal('{"x": 1, "y": [2, 3]}', r.f)
    assert.equal("0.50", json.numeral_text(r.g))
  end)

  it("copies rows in bulk with COPY FROM STDIN and escapes every special byte", function()
    assert(conn:query("CREATE TABLE copied (id int8 PRIMARY KEY, s text, p numeric)"))
    local rows = {}
    for i = 1, 20000 do rows[i] = { i, "a\tb\nc\\d\re " .. i, i % 7 ~= 0 and "1." .. i or nil } end
    assert.equal(20000, conn:copy("COPY copied (id, s, p) FROM STDIN", rows, 3))
    local res = assert(conn:query("SELECT count(*) AS n, count(p) AS np, sum(id) AS s FROM copied"))
    assert.equal(20000, res.rows[1].n)
    assert.equal(20000 - 2857, res.rows[1].np)
    assert.equal("200010000", json.numeral_text(res.rows[1].s))
    local r = assert(conn:query("SELECT s, p FROM copied WHERE id = $1", { 14 })).rows[1]
    assert.equal("a\tb\nc\\d\re 14", r.s)
    assert.is_nil(r.p)
  end)

  it("reports a server error with its SQLSTATE and stays usable", function()
    assert(conn:query("CREATE TABLE uniq (id int PRIMARY KEY)"))
    assert(conn:query("INSERT INTO uniq VALUES (1)"))
    local res, err, kind, state = conn:query("INSERT INTO uniq VALUES (1)")
    assert.is_nil(res)
    assert.equal("server", kind)
    assert.equal("23505", state)
    assert.truthy(err:match("duplicate key"))
    assert.is_true(pg.data_error(state))
    res, err, kind, state = conn:query("SELECT $1::int", { "x" })
    assert.is_nil(res)
    assert.equal("server", kind)
    assert.equal("22P02", state)
    assert.truthy(err:match("invalid input syntax"))
    res, err, kind, state = conn:query("SELEC 1")
    assert.is_nil(res)
    assert.equal("server", kind)
    assert.truthy(err:match("syntax error"))
    assert.equal("42601", state)
    assert.is_false(pg.data_error(state))
    -- a bad row in a COPY: the whole COPY is refused, the connection lives
    res, err, kind, state = conn:copy("COPY uniq (id) FROM STDIN", { { 2 }, { "zz" } }, 1)
    assert.is_nil(res)
    assert.equal("server", kind)
    assert.equal("22P02", state)
    assert.truthy(err:match("invalid input syntax"))
    assert.equal(1, conn:query("SELECT count(*) AS n FROM uniq").rows[1].n)
  end)

  it("runs several statements around one COPY as one transaction, the last one's result", function()
    assert(conn:query("CREATE TABLE piped (id int8 PRIMARY KEY, s text)"))
    assert(conn:query("CREATE TEMP TABLE piped_in (LIKE piped)"))
    local res = assert(conn:copy("COPY piped_in (id, s) FROM STDIN; INSERT INTO piped SELECT * FROM piped_in"
      .. " ON CONFLICT (id) DO UPDATE SET s = EXCLUDED.s; SELECT count(*)::int AS n FROM piped",
      { { 1, "a" }, { 2, "b\tc" } }, 2))
    assert.same({ { n = 2 } }, res.rows)
    -- the statement after the COPY fails: the COPY's rows are undone too
    local r2, err, kind, state = conn:copy("COPY piped_in (id, s) FROM STDIN; INSERT INTO piped (id, s)"
      .. " SELECT id, s FROM piped_in WHERE id = 3; INSERT INTO piped VALUES (1, 'dup')", { { 3, "x" } }, 2)
    assert.is_nil(r2)
    assert.equal("server", kind)
    assert.equal("23505", state)
    assert.truthy(err:match("duplicate key"), err)
    assert.equal("idle", (conn:status()))
    assert.same({ { n = 2, m = 2 } }, assert(conn:query("SELECT (SELECT count(*)::int FROM piped) AS n,"
      .. " (SELECT count(*)::int FROM piped_in) AS m")).rows)
    -- one COPY per string: a second one fails the statement
    r2, err, kind, state = conn:copy("COPY piped_in (id, s) FROM STDIN; COPY piped_in (id, s) FROM STDIN",
      "5\ty\n")
    assert.is_nil(r2)
    assert.equal("server", kind)
    assert.equal("57014", state)
    assert.truthy(err:match("one COPY FROM STDIN per copy%(%)"), err)
    assert.equal(2, conn:query("SELECT count(*)::int AS n FROM piped_in").rows[1].n)
    -- a COPY last: its count
    assert.equal(1, conn:copy("DELETE FROM piped_in; COPY piped_in (id, s) FROM STDIN", "7\tz\n"))
  end)

  it("refuses a COPY sent as a query without hanging", function()
    local res, _, kind, state = conn:query("COPY uniq (id) FROM STDIN")
    assert.is_nil(res)
    assert.equal("server", kind)
    assert.equal("57014", state)
    assert.equal("idle", (conn:status()))
  end)

  it("refuses a second operation while one is in flight", function()
    local t = sluice.spawn(function() return conn:query("SELECT pg_sleep(0.3)") end)
    wait_for("the query to start", function() return conn:status() == "busy" end)
    local res, err, kind = conn:query("SELECT 1")
    assert.is_nil(res)
    assert.equal("connection is busy", err)
    assert.equal("busy", kind)
    local ok, r = sluice.wait(t)
    assert.is_true(ok)
    assert.equal(1, r.count)
  end)

  it("times out a statement: cancelled on the server, connection closed", function()
    local c = assert(pg.connect { url = srv:url() })
    local pid = select(4, c:status())
    local cancels = pg.cancels_sent()
    local t0 = sluice.now()
    local res, err, kind = c:query("SELECT pg_sleep(30)", nil, nil, { timeout = 0.2 })
    assert.is_nil(res)
    assert.equal("timeout", kind)
    assert.equal("timeout: statement cancelled", err)
    assert.is_true(sluice.now() - t0 < 5)
    assert.equal(cancels + 1, pg.cancels_sent())
    -- the backend's query is gone (cancelled, and its connection dropped)
    wait_for("the backend to go", function()
      local r = assert(conn:query("SELECT count(*) AS n FROM pg_stat_activity WHERE pid = $1", { pid }))
      return r.rows[1].n == 0
    end)
    assert.equal("closed", (c:status()))
    res, err, kind = c:query("SELECT 1")
    assert.is_nil(res)
    assert.equal("connection closed: timeout: statement cancelled", err)
    assert.equal("closed", kind)
  end)

  it("cancels the statement of a killed task", function()
    local c = assert(pg.connect { url = srv:url() })
    local pid = select(4, c:status())
    local t = sluice.spawn(function() return c:query("SELECT pg_sleep(30)") end)
    wait_for("the query to run", function()
      local r = assert(conn:query("SELECT count(*) AS n FROM pg_stat_activity WHERE pid = $1"
        .. " AND query LIKE 'SELECT pg_sleep%'", { pid }))
      return r.rows[1].n == 1
    end)
    sluice.kill(t)
    wait_for("the backend to go", function()
      local r = assert(conn:query("SELECT count(*) AS n FROM pg_stat_activity WHERE pid = $1", { pid }))
      return r.rows[1].n == 0
    end)
    local state, reason = c:status()
    assert.equal("closed", state)
    assert.equal("statement cancelled: its task ended", reason)
  end)

  it("fails to connect with kind 'connect' and libpq's reason", function()
    local c, err, kind = pg.connect { url = "postgresql://postgres@127.0.0.1:1/postgres" }
    assert.is_nil(c)
    assert.equal("connect", kind)
    assert.truthy(err:match("Connection refused"))
    c, err, kind = pg.connect { url = "postgresql://x:y:z" }
    assert.is_nil(c)
    assert.equal("connect", kind)
    assert.truthy(err:match("invalid"))
  end)

  it("reports a connection lost under it as closed", function()
    local c = assert(pg.connect { url = srv:url() })
    local pid = select(4, c:status())
    assert(conn:query("SELECT pg_terminate_backend($1)", { pid }))
    local res, err, kind = c:query("SELECT 1")
    assert.is_nil(res)
    assert.equal("closed", kind)
    assert.truthy(err:match("terminat") or err:match("closed"), err)
    assert.equal("closed", (c:status()))
  end)

  it("raises on misuse", function()
    assert.has_error(function() pg.connect {} end, "sluice.pg.connect: option 'url' is required")
    assert.has_error(function() conn:query(1) end, "sluice.pg: query: sql must be a string")
    assert.has_error(function() conn:query("SELECT $1", { print }) end,
      "sluice.pg: cannot send a function as a parameter")
  end)
end)
