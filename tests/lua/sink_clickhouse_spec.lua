-- sluice.sinks.clickhouse against a real ClickHouse server (Debian 12's 18.16):
-- exact types, 100,000 rows equal value by value to the local SQLite table
-- under FINAL, convergence by version, a server restarted mid-run, refused
-- batches, authentication.
local store = require "sluice.store"
local json = require "sluice.json"
local sinkch = require "sluice.sinks.clickhouse"
local collector = require "sluice.collector"
local outbox = require "sluice.outbox"
local wait_for = require("support.wait").wait_for
local chs = require "support.clickhouse"
local sink_rows = require "support.sink_rows"
local U256MAX, TRADES, trade = sink_rows.U256MAX, sink_rows.TRADES, sink_rows.trade

-- A value as text, the same for SQLite's and ClickHouse's readings.
local function canon(v, col)
  if v == nil or v == json.null then return "NULL" end
  if col == "meta" then
    if type(v) == "string" then v = assert(json.decode(v)) end
    return assert(json.encode(v))
  end
  if type(v) == "number" then return json.number(v) end
  return json.int64_text(v) or json.numeral_text(v) or tostring(v)
end

-- The rows of a SELECT on the server (FORMAT JSONEachRow appended).
local function ch_rows(srv, sql)
  local body = assert(srv:query(sql .. " FORMAT JSONEachRow"))
  local rows = {}
  for line in body:gmatch("[^\n]+") do rows[#rows + 1] = assert(json.decode(line)) end
  return rows
end

local function equal_tables(db, srv, tname, database)
  local cols = {}
  for col in pairs(TRADES.columns) do cols[#cols + 1] = col end
  table.sort(cols)
  local lrows = assert(db:query("SELECT * FROM " .. tname .. " ORDER BY id"))
  local crows = ch_rows(srv, "SELECT * FROM " .. (database or "market") .. "." .. tname .. " FINAL ORDER BY id")
  assert.equal(#lrows, #crows)
  for i = 1, #lrows do
    for _, col in ipairs(cols) do
      local a, b = canon(lrows[i][col], col), canon(crows[i][col], col)
      if a ~= b then
        error(("row %d column %s: sqlite %s, clickhouse %s"):format(i, col, a, b))
      end
    end
  end
  return #lrows
end

local function scalar(srv, sql)
  return (assert(srv:query(sql)):gsub("\n$", ""))
end

describe("sluice.sinks.clickhouse", function()
  local srv

  setup(function()
    srv = chs.start()
    assert(srv:query("CREATE DATABASE market"))
  end)

  teardown(function()
    if srv then srv:shutdown() end
  end)

  local function new(settings)
    local s = { url = srv:url(), database = "market" }
    for k, v in pairs(settings or {}) do s[k] = v end
    return sinkch.new("ch", s)
  end

  local function types_of(tname)
    local got = {}
    for _, r in ipairs(ch_rows(srv, "SELECT name, type FROM system.columns WHERE database = 'market' AND table = '"
        .. tname .. "'")) do
      got[r.name] = r.type
    end
    return got
  end

  it("creates the table with exact types, the key and a version column, and reconciles added columns", function()
    local sink = new()
    assert.is_true(sink:ensure("trades", TRADES))
    assert.is_true(sink:ensure("trades", TRADES)) -- idempotent
    assert.same({
      big = "Nullable(String)", fee = "Nullable(String)", id = "Int64", meta = "Nullable(String)",
      price = "Nullable(String)", qty = "Nullable(Float64)", seq = "Nullable(Int64)", side = "Nullable(String)",
      symbol = "Nullable(String)", ts = "Nullable(Int64)", _version = "UInt64",
    }, types_of("trades"))
    assert.equal("ReplacingMergeTree(_version) ORDER BY id SETTINGS index_granularity = 8192",
      scalar(srv, "SELECT engine_full FROM system.tables WHERE database = 'market' AND name = 'trades'"))
    assert.equal("18.16.1", sink:stats().server_version)
    assert.equal("String", sink:stats().types.uint256) -- no UInt256 before 21.6
    -- required columns and a composite key are not Nullable
    local k2 = { name = "k2", columns = { a = "text", b = "integer", v = "real", w = "decimal", f = "boolean" },
      key = { "a", "b" }, required = { "v" } }
    assert.is_true(sink:ensure("k2", k2))
    assert.same({ a = "String", b = "Int64", v = "Float64", w = "Nullable(String)", f = "Nullable(UInt8)",
      _version = "UInt64" }, types_of("k2"))
    assert.equal("ReplacingMergeTree(_version) ORDER BY (a, b) SETTINGS index_granularity = 8192",
      scalar(srv, "SELECT engine_full FROM system.tables WHERE database = 'market' AND name = 'k2'"))
    -- a column added to the definition is added on the sink
    local more = { name = "trades", columns = {}, key = { "id" } }
    for k, v in pairs(TRADES.columns) do more.columns[k] = v end
    more.columns.venue = { type = "text" }
    assert.is_true(sink:ensure("trades", more))
    assert.equal("Nullable(String)", types_of("trades").venue)
    -- a column of another type on the sink is an error, not a silent loss
    assert(srv:query("CREATE TABLE market.clash (id Int64, price Float64, _version UInt64)"
      .. " ENGINE = ReplacingMergeTree(_version) ORDER BY id"))
    local ok, err = sink:ensure("clash", { name = "clash", columns = { id = "integer", price = "decimal" }, key = { "id" } })
    assert.is_nil(ok)
    assert.equal("clickhouse: clash.price is Float64 on the sink, Nullable(String) expected", err)
    -- decimal = "Decimal(P, S)": numeric columns
    local dsink = new { decimal = "Decimal(38, 8)" }
    assert.is_true(dsink:ensure("dec", { name = "dec", columns = { id = "integer", p = "decimal" }, key = { "id" } }))
    assert.equal("Nullable(Decimal(38, 8))", types_of("dec").p)
    local bad = new { decimal = "Decimal(40, 8)" }
    ok, err = bad:ensure("dec2", { name = "dec2", columns = { id = "integer", p = "decimal" }, key = { "id" } })
    assert.is_nil(ok)
    assert.equal('clickhouse: 18.16.1: decimal = "Decimal(40, 8)" exceeds this server\'s 38 digits', err)
    -- the database made when asked
    local mk = new { database = "made_here", create_database = true }
    assert.is_true(mk:ensure("t", { name = "t", columns = { id = "integer" }, key = { "id" } }))
    assert.equal("1", scalar(srv, "SELECT count() FROM system.tables WHERE database = 'made_here' AND name = 't'"))
  end)

  it("writes 20,000 rows equal value by value to SQLite, and updates converge under FINAL", function()
    local def = { name = "direct", columns = TRADES.columns, key = TRADES.key }
    local db = assert(store.open(":memory:"))
    db:define(def)
    local sink = new()
    assert.is_true(sink:ensure("direct", def))
    local N, B = 20000, 1000
    for from = 1, N, B do
      local batch = {}
      for i = from, from + B - 1 do batch[#batch + 1] = trade(i) end
      assert.equal(B, (db:upsert("direct", batch)))
      assert(sink:write("direct", batch, def))
    end
    local again = {}
    for i = 1, 3000 do again[i] = trade(i, i % 3 == 0 and 1 or 0) end
    db:upsert("direct", again)
    for from = 1, #again, B do
      assert(sink:write("direct", { unpack(again, from, from + B - 1) }, def))
    end
    assert.equal(N, equal_tables(db, srv, "direct"))
    local r = ch_rows(srv, "SELECT big, seq, price FROM market.direct FINAL WHERE id IN (1, 2, 3) ORDER BY id")
    assert.same({ U256MAX, "1.01" }, { r[1].big, r[1].price })
    assert.equal("9007199254740993", r[2].seq)
    assert.equal("3.04", r[3].price) -- the second write
    assert.equal(N + 3000, sink:stats().rows)
    db:close()
  end)

  it("keeps versions above the table's across sinks: the newest write wins", function()
    local def = { name = "ver", columns = { id = "integer", v = "text" }, key = { "id" } }
    local s1 = new()
    assert.is_true(s1:ensure("ver", def))
    -- a version from a clock far ahead (another instance, a clock stepped back since)
    assert(srv:query("INSERT INTO market.ver (id, v, _version) VALUES (1, 'ahead', 99999999999999999)"))
    local s2 = new() -- a new process: only the table tells it
    assert.is_true(s2:ensure("ver", def))
    assert.is_true(s2:write("ver", { { id = 1, v = "newest" } }, def))
    assert.is_true(s2:write("ver", { { id = 2, v = "a" } }, def))
    assert.is_true(s2:write("ver", { { id = 2, v = "b" } }, def))
    assert.same({ { id = "1", v = "newest" }, { id = "2", v = "b" } },
      ch_rows(srv, "SELECT id, v FROM market.ver FINAL ORDER BY id"))
    assert.equal("100000000000000002", scalar(srv, "SELECT max(_version) FROM market.ver"))
  end)

  for _, format in ipairs { "RowBinary", "JSONEachRow" } do
    it("versions rows by the time they were queued when the outbox says it: a late backlog loses ("
        .. format .. ")", function()
      local tname = "queued_" .. format
      local def = { name = tname, columns = { id = "integer", v = "text" }, key = { "id" } }
      local a, b = new({ format = format }), new({ format = format }) -- two instances of a fleet
      assert.is_true(a:ensure(tname, def))
      assert.is_true(b:ensure(tname, def))
      local t0 = 1700000000.25 -- (in the past: a write without meta gets now)
      -- b collected later and ships at once; a's backlog, queued before, arrives after it
      assert.is_true(b:write(tname, { { id = 1, v = "new" }, { id = 2, v = "new" } }, def,
        { ids = { "b1", "b2" }, at = { t0 + 10, t0 + 10.000001 } }))
      assert.is_true(a:write(tname, { { id = 1, v = "old" }, { id = 2, v = "old" }, { id = 3, v = "old" } }, def,
        { ids = { "a1", "a2", "a3" }, at = { t0, t0 + 0.5, t0 + 1 } }))
      -- the same backlog sent again (at least once): the same versions
      assert.is_true(a:write(tname, { { id = 3, v = "old" } }, def, { ids = { "a3" }, at = { t0 + 1 } }))
      assert.same({ { id = "1", v = "new", _version = "1700000010250000" },
        { id = "2", v = "new", _version = "1700000010250001" }, { id = "3", v = "old", _version = "1700000001250000" } },
        ch_rows(srv, "SELECT id, v, _version FROM market." .. tname .. " FINAL ORDER BY id"))
      assert.equal("4", scalar(srv, "SELECT count() FROM market." .. tname .. " WHERE v = 'old'"))
      -- without meta: the write's time, above every version the sink gave
      assert.is_true(a:write(tname, { { id = 1, v = "latest" } }, def))
      assert.same({ { id = "1", v = "latest" } }, ch_rows(srv, "SELECT id, v FROM market." .. tname
        .. " FINAL WHERE id = 1"))
      -- a row without its time in meta gets the batch's version
      assert.is_true(b:write(tname, { { id = 2, v = "b2" }, { id = 3, v = "b3" } }, def, { at = { t0 } }))
      assert.same({ { id = "2", v = "new" }, { id = "3", v = "b3" } }, ch_rows(srv, "SELECT id, v FROM market."
        .. tname .. " FINAL WHERE id IN (2, 3) ORDER BY id"))
    end)
  end

  it("stores inf, json text, booleans and nulls exactly", function()
    local def = { name = "odd", key = { "id" }, columns = {
      id = "integer", r = { type = "real", nonfinite = true }, j = "json", b = "boolean", t = "text" } }
    local sink = new()
    assert.is_true(sink:ensure("odd", def))
    assert.is_true(sink:write("odd", {
      { id = 1, r = math.huge, j = { a = json.numeral("1.10"), b = json.empty_array }, b = true, t = "é\0x" },
      { id = 2, r = -math.huge, j = json.null, b = false },
      { id = 3, r = 0.1 },
    }, def))
    assert.equal("1\tinf\t{\"a\":1.10,\"b\":[]}\t1\té\\0x\n2\t-inf\t\\N\t0\t\\N\n3\t0.1\t\\N\t\\N\t\\N\n",
      assert(srv:query("SELECT id, r, j, b, t FROM market.odd FINAL ORDER BY id")))
  end)

  it("refuses a batch of bad data as 'rejected' and goes on with the next (RowBinary)", function()
    local def = { name = "small", columns = { id = "integer", v = "decimal" }, key = { "id" } }
    local sink = new { decimal = "Decimal(18, 2)" }
    assert.is_true(sink:ensure("small", def))
    -- more decimals than the column's scale, or integral digits: refused, never rounded
    local ok, err, kind = sink:write("small", { { id = 1, v = "1.5" }, { id = 2, v = "1.005" } }, def)
    assert.same({ nil, "clickhouse: row 2 column v: 1.005 has more than 2 decimals (Decimal(18, 2))", "rejected" },
      { ok, err, kind })
    ok, err, kind = sink:write("small", { { id = 3, v = "-12345678901234567.5" } }, def)
    assert.same({ nil, "clickhouse: row 1 column v: -12345678901234567.5 has more than 16 integral digits"
      .. " (Decimal(18, 2))", "rejected" }, { ok, err, kind })
    assert.is_true(sink:write("small", { { id = 4, v = "2.50" }, { id = 5, v = "-0.10" }, { id = 6, v = "1.000" },
      { id = 7, v = "-9999999999999999.99" } }, def))
    assert.same({ { id = "4", v = 2.50 }, { id = "5", v = -0.10 }, { id = "6", v = 1.00 },
      { id = "7", v = json.numeral("-9999999999999999.99") } },
      ch_rows(srv, "SELECT id, v FROM market.small FINAL ORDER BY id"))
  end)

  it("classifies the server's data errors as 'rejected' (JSONEachRow)", function()
    local def = { name = "smallj", columns = { id = "integer", v = "decimal", s = "text" }, key = { "id" } }
    local sink = new { decimal = "Decimal(18, 2)", format = "JSONEachRow" }
    assert.is_true(sink:ensure("smallj", def))
    -- more decimals than the column's scale: the server's Code 69
    local ok, err, kind = sink:write("smallj", { { id = 1, v = "1.5" }, { id = 2, v = "1.005" } }, def)
    assert.is_nil(ok)
    assert.equal("rejected", kind)
    assert.truthy(err:match("^clickhouse: HTTP 500: Code: 69, .*Decimal value is too small"), err)
    -- the column changed under the sink: text no longer parses (Code 27)
    assert(srv:query("ALTER TABLE market.smallj MODIFY COLUMN s Nullable(Int64)"))
    ok, err, kind = sink:write("smallj", { { id = 3, v = "1", s = "x" } }, def)
    assert.is_nil(ok)
    assert.equal("rejected", kind)
    assert.truthy(err:match("^clickhouse: HTTP 500: Code: 27, .*Cannot parse input"), err)
    assert.is_true(sink:write("smallj", { { id = 4, v = "2.50", s = "7" } }, def))
    assert.same({ { id = "4", v = 2.50, s = "7" } }, ch_rows(srv, "SELECT id, v, s FROM market.smallj FINAL"))
    -- a table that is not there is no data error: retried
    ok, err, kind = sink:write("nosuch", { { id = 1, v = "1", s = "1" } }, def)
    assert.same({ nil, "server" }, { ok, kind })
    assert.truthy(err:match("Code: 60,"), err)
  end)

  it("authenticates with headers, and a wrong password is an error without the secret", function()
    local def = { name = "authd", columns = { id = "integer" }, key = { "id" } }
    local sink = new { user = "sluice", password = chs.PASSWORD }
    assert.is_true(sink:ensure("authd", def))
    assert.is_true(sink:write("authd", { { id = 1 } }, def))
    local url = srv:url():gsub("^http://", "http://sluice:" .. chs.PASSWORD .. "@")
    local viaurl = sinkch.new("ch", { url = url, database = "market" })
    assert.is_true(viaurl:write("authd", { { id = 2 } }, def))
    assert.equal("2", scalar(srv, "SELECT count() FROM market.authd FINAL"))
    local wrong = new { user = "sluice", password = "not-the-" .. chs.PASSWORD }
    local ok, err, kind = wrong:write("authd", { { id = 3 } }, def)
    assert.is_nil(ok)
    assert.equal("auth", kind)
    assert.truthy(err:match("^clickhouse: HTTP 401: Code: 193, .*Wrong password for user sluice"), err)
    assert.is_nil(err:find(chs.PASSWORD, 1, true))
  end)

  describe("through the outbox", function()
    local function run(tname, sink_settings)
      local db = assert(store.open(":memory:"))
      local c = collector.new(collector.define {
        name = "ch_feed_" .. tname, interval = 3600, limiter = false, retry = false, breaker = false,
        tables = { [tname] = { columns = TRADES.columns, key = TRADES.key } }, collect = function() return {} end,
      }, nil, { store = db })
      local settings = { kind = "clickhouse", url = srv:url(), database = "market", batch = 5000, max_age = 0.05,
        retry = { base_delay = 0.05, max_delay = 0.5 }, breaker = { failure_threshold = 1000 }, timeout = 10,
        connect_timeout = 2 }
      for k, v in pairs(sink_settings or {}) do settings[k] = v end
      local box = assert(outbox.new(db, { ch = settings }))
      c:add_sink(box:route(c))
      box:start()
      finally(function()
        box:stop(0)
        db:close()
      end)
      return db, c, box
    end

    local function drained(box)
      return wait_for("the outbox to drain", function() return box:status().ch.depth == 0 end, 180)
    end

    local function rows(from, to, rev)
      local batch = {}
      for i = from, to do batch[#batch + 1] = trade(i, rev) end
      return batch
    end

    it("forwards 100,000 rows equal value by value to the local table, 2^256-1 and decimals included", function()
      local db, c, box = run("ob_trades")
      for from = 1, 100000, 5000 do
        assert.equal(5000, c:store_rows(rows(from, from + 4999)))
      end
      c:store_rows(rows(1, 5000, 1)) -- sent again, changed
      drained(box)
      assert.equal(100000, equal_tables(db, srv, "ob_trades"))
      assert.equal("100000", scalar(srv, "SELECT count() FROM market.ob_trades FINAL"))
      assert.equal(U256MAX, ch_rows(srv, "SELECT big FROM market.ob_trades FINAL WHERE id = 1")[1].big)
      assert.equal("1.02", ch_rows(srv, "SELECT price FROM market.ob_trades FINAL WHERE id = 1")[1].price)
      local st = box:status().ch
      assert.same({ 0, 105000, 0 }, { st.depth, st.forwarded, st.dead_letters })
    end)

    it("loses and doubles nothing while clickhouse is stopped and restarted mid-run", function()
      local db, c, box = run("ob_restart")
      c:store_rows(rows(1, 10000))
      wait_for("some rows forwarded", function() return box:status().ch.forwarded > 0 end)
      assert(srv:stop())
      c:store_rows(rows(10001, 20000)) -- collection goes on: rows wait in the outbox
      c:store_rows(rows(5001, 15000, 1)) -- overlaps: upserts
      wait_for("a failure noticed", function() return box:status().ch.errors > 0 end)
      assert.is_true(box:status().ch.depth > 0)
      srv:restart()
      drained(box)
      assert.equal("20000", scalar(srv, "SELECT count() FROM market.ob_restart FINAL"))
      assert.equal("20000", scalar(srv, "SELECT uniqExact(id) FROM market.ob_restart"))
      assert.equal(20000, equal_tables(db, srv, "ob_restart"))
      assert.equal(0, box:status().ch.dead_letters)
    end)

    it("dead-letters a batch the server refuses and forwards the rest", function()
      local db, c, box = run("ob_refused", { batch = 100, decimal = "Decimal(38, 8)" })
      c:store_rows({ trade(1) })
      drained(box)
      local bad = { trade(2), trade(3) }
      bad[2].fee = "0.000000001" -- nine decimals: more than Decimal(38, 8) holds
      c:store_rows(bad)
      wait_for("the dead letters", function() return box:status().ch.dead_letters == 2 end)
      c:store_rows(rows(4, 500))
      drained(box)
      assert.equal("498", scalar(srv, "SELECT count() FROM market.ob_refused FINAL"))
      local dl = box:dead_letters("ch")
      assert.equal(2, #dl)
      assert.equal("clickhouse: row 2 column fee: 0.000000001 has more than 8 decimals (Decimal(38, 8))", dl[1].error)
      assert.equal(498, box:status().ch.forwarded)
      assert.equal(0, #db:query("SELECT id FROM sluice_outbox"))
    end)
  end)

  it("reads sink tables back with `sluice sql --sink`", function()
    local ffi = require "ffi"
    pcall(ffi.cdef, "int getpid(void);")
    local exe = "/proc/" .. ffi.C.getpid() .. "/exe" -- this sluice binary
    assert(srv:query("CREATE TABLE market.readback (id Int64, p Nullable(String), s String, big UInt64)"
      .. " ENGINE = MergeTree ORDER BY id"))
    assert(srv:query("INSERT INTO market.readback VALUES (1, '0.10', 'a|b', 18446744073709551615), (2, NULL, '', 0)"))
    local config = os.tmpname() .. ".lua"
    local f = io.open(config, "w")
    f:write(("return { sinks = { clickhouse = { url = %q, database = 'market', user = 'sluice', password = %q } } }")
      :format(srv:url(), chs.PASSWORD))
    f:close()
    local function sql(args)
      local p = io.popen(exe .. " sql " .. args .. " 2>&1; echo \"rc=$?\"")
      local out = p:read("*a")
      p:close()
      return out
    end
    assert.equal("id|p|s|big\n1|0.10|a|b|18446744073709551615\n2|||0\nrc=0\n",
      sql(config .. " --sink clickhouse 'SELECT id, p, s, big FROM readback ORDER BY id'"))
    assert.equal("OK\nrc=0\n", sql(config .. " --sink clickhouse \"INSERT INTO readback VALUES (3, '1', 'x', 1)\""))
    assert.equal("3\nrc=0\n", sql(config .. " --sink clickhouse 'SELECT count() AS n FROM readback'"):gsub("^n\n", ""))
    local out = sql(config .. " --sink clickhouse 'SELECT * FROM nope'")
    assert.truthy(out:match("^sluice sql: clickhouse: HTTP 404: Code: 60, .*Table market.nope doesn't exist.*\nrc=1\n$"), out)
    assert.is_nil(out:find(chs.PASSWORD, 1, true))
    os.remove(config)
  end)
end)
