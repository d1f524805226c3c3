-- sluice.sinks.postgres against a real PostgreSQL server: exact types, 100,000
-- rows equal value by value to the local SQLite table, convergence, a server
-- restarted mid-run, refused batches.
local sluice = require "sluice"
local store = require "sluice.store"
local json = require "sluice.json"
local pg = require "sluice.pg"
local sinkpg = require "sluice.sinks.postgres"
local collector = require "sluice.collector"
local outbox = require "sluice.outbox"
local wait_for = require("support.wait").wait_for
local pgs = require "support.postgres"
local sink_rows = require "support.sink_rows"
local U256MAX, TRADES, trade = sink_rows.U256MAX, sink_rows.TRADES, sink_rows.trade

-- A value as text, the same for SQLite's and PostgreSQL's readings.
local function canon(v, col)
  if v == nil then return "NULL" end
  if col == "meta" then
    if type(v) == "string" then v = assert(json.decode(v)) end
    return assert(json.encode(v))
  end
  if type(v) == "number" then return json.number(v) end
  return json.int64_text(v) or json.numeral_text(v) or tostring(v)
end

local function equal_tables(db, conn, tname, ncols_expected)
  local cols = {}
  for col in pairs(TRADES.columns) do cols[#cols + 1] = col end
  table.sort(cols)
  assert.equal(ncols_expected or 10, #cols)
  local lrows = assert(db:query("SELECT * FROM " .. tname .. " ORDER BY id"))
  local prows = assert(conn:query("SELECT * FROM " .. tname .. " ORDER BY id")).rows
  assert.equal(#lrows, #prows)
  for i = 1, #lrows do
    for _, col in ipairs(cols) do
      local a, b = canon(lrows[i][col], col), canon(prows[i][col], col)
      if a ~= b then
        error(("row %d column %s: sqlite %s, postgres %s"):format(i, col, a, b))
      end
    end
  end
  return #lrows
end

describe("sluice.sinks.postgres", function()
  local srv, conn

  setup(function()
    srv = pgs.start()
    conn = assert(pg.connect { url = srv:url() })
  end)

  teardown(function()
    if conn then conn:close() end
    if srv then srv:shutdown() end
  end)

  it("creates the table with exact types and the key, and reconciles added columns", function()
    local sink = sinkpg.new("pg", { url = srv:url() })
    assert.is_true(sink:ensure("trades", TRADES))
    assert.is_true(sink:ensure("trades", TRADES)) -- idempotent
    local res = assert(conn:query([[SELECT column_name AS c, format_type(atttypid, atttypmod) AS t
      FROM information_schema.columns JOIN pg_attribute ON attrelid = 'trades'::regclass AND attname = column_name
      WHERE table_name = 'trades' ORDER BY column_name]]))
    local got = {}
    for _, r in ipairs(res.rows) do got[r.c] = r.t end
    assert.same({
      big = "numeric(78,0)", fee = "numeric", id = "bigint", meta = "jsonb", price = "numeric",
      qty = "double precision", seq = "bigint", side = "text", symbol = "text", ts = "bigint",
    }, got)
    local pk = assert(conn:query([[SELECT a.attname AS c FROM pg_index i
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
      WHERE i.indrelid = 'trades'::regclass AND i.indisprimary]]))
    assert.same({ { c = "id" } }, pk.rows)
    -- a column added to the definition is added on the sink
    local more = { name = "trades", columns = {}, key = { "id" } }
    for k, v in pairs(TRADES.columns) do more.columns[k] = v end
    more.columns.venue = { type = "text" }
    assert.is_true(sink:ensure("trades", more))
    assert.equal("text", assert(conn:query([[SELECT data_type AS t FROM information_schema.columns
      WHERE table_name = 'trades' AND column_name = 'venue']])).rows[1].t)
    assert(conn:query("ALTER TABLE trades DROP COLUMN venue"))
    -- a column of another type on the sink is an error, not a silent loss
    assert(conn:query("CREATE TABLE clash (id bigint PRIMARY KEY, price real)"))
    local ok, err = sink:ensure("clash", { name = "clash", columns = { id = "integer", price = "decimal" }, key = { "id" } })
    assert.is_nil(ok)
    assert.equal("postgres: clash.price is real on the sink, numeric expected", err)
    sink:close()
  end)

  for _, method in ipairs { "unnest", "values", "copy" } do
    it("writes 20,000 rows equal value by value to SQLite, and updates converge (" .. method .. ")", function()
      local tname = "trades_" .. method
      local def = { name = tname, columns = TRADES.columns, key = TRADES.key }
      local db = assert(store.open(":memory:"))
      db:define(def)
      local sink = sinkpg.new("pg", { url = srv:url(), method = method })
      assert.is_true(sink:ensure(tname, def))
      local N, B = 20000, 1000
      for from = 1, N, B do
        local batch = {}
        for i = from, from + B - 1 do batch[#batch + 1] = trade(i) end
        assert.equal(B, (db:upsert(tname, batch)))
        local ok, err = sink:write(tname, batch, def)
        assert(ok, err)
      end
      -- the same rows again, some changed: one row per key, the new values
      local again = {}
      for i = 1, 3000 do again[i] = trade(i, i % 3 == 0 and 1 or 0) end
      db:upsert(tname, again)
      for from = 1, #again, B do
        assert(sink:write(tname, { unpack(again, from, from + B - 1) }, def))
      end
      assert.equal(N, equal_tables(db, conn, tname))
      local r = assert(conn:query("SELECT big, seq, price FROM " .. tname .. " WHERE id IN (1, 2) ORDER BY id")).rows
      assert.equal(U256MAX, json.numeral_text(r[1].big))
      assert.equal("9007199254740993", json.int64_text(r[2].seq))
      assert.equal("1.01", json.numeral_text(r[1].price))
      assert.equal(N + 3000, sink:stats().rows)
      db:close()
      sink:close()
    end)
  end

  it("copies through a temporary table that follows a column added to the definition", function()
    local def = { name = "grows", columns = { id = "integer", a = "text" }, key = { "id" } }
    local sink = sinkpg.new("pg", { url = srv:url(), method = "copy" })
    assert.is_true(sink:ensure("grows", def))
    assert.is_true(sink:write("grows", { { id = 1, a = "x" } }, def))
    local def2 = { name = "grows", columns = { id = "integer", a = "text", b = "decimal" }, key = { "id" } }
    assert.is_true(sink:ensure("grows", def2))
    assert.is_true(sink:write("grows", { { id = 1, a = "y", b = "2.50" }, { id = 2, a = "z" } }, def2))
    local r = assert(conn:query("SELECT id, a, b FROM grows ORDER BY id")).rows
    assert.equal(2, #r)
    assert.same({ 1, "y", "2.50" }, { r[1].id, r[1].a, json.numeral_text(r[1].b) })
    assert.same({ 2, "z" }, { r[2].id, r[2].a })
    assert.is_nil(r[2].b)
    sink:close()
  end)

  it("copies new rows straight into the table, falls back to the upsert on a key it has, and comes back", function()
    local def = { name = "adapt", columns = { id = "integer", v = "text" }, key = { "id" } }
    local sink = sinkpg.new("pg", { url = srv:url() })
    assert.is_true(sink:ensure("adapt", def))
    local function batch(from, to, v)
      local t = {}
      for i = from, to do t[#t + 1] = { id = i, v = v } end
      return t
    end
    local function temp_tables() -- the sink's session's temporary tables
      return assert(conn:query("SELECT count(*)::int AS n FROM pg_class WHERE relname = 'sluice_in_adapt'")).rows[1].n
    end
    assert.is_true(sink:write("adapt", batch(1, 100, "a"), def)) -- new rows: a plain COPY
    assert.equal(1, sink:stats().copies)
    assert.equal(0, temp_tables())
    assert.is_true(sink:write("adapt", batch(51, 150, "b"), def)) -- 51..100 there: refused, upserted
    assert.equal(1, sink:stats().copies)
    assert.equal(1, temp_tables())
    assert.is_true(sink:write("adapt", batch(140, 160, "c"), def)) -- upserted again (some were there)
    assert.is_true(sink:write("adapt", batch(161, 170, "d"), def)) -- upserted, all new: back to COPY
    assert.equal(1, sink:stats().copies)
    assert.is_true(sink:write("adapt", batch(171, 180, "e"), def))
    assert.equal(2, sink:stats().copies)
    assert.equal(5, sink:stats().batches)
    local r = assert(conn:query("SELECT count(*)::int AS n, count(DISTINCT id)::int AS k, min(id)::int AS lo,"
      .. " max(id)::int AS hi, string_agg(DISTINCT v, '' ORDER BY v) AS vs FROM adapt")).rows[1]
    assert.same({ n = 180, k = 180, lo = 1, hi = 180, vs = "abcde" }, r)
    local by = {}
    for _, x in ipairs(assert(conn:query("SELECT v, count(*)::int AS n FROM adapt GROUP BY v")).rows) do by[x.v] = x.n end
    assert.same({ a = 50, b = 89, c = 21, d = 10, e = 10 }, by)
    sink:close()
  end)

  it("writes reals, json values and escapes exactly through COPY", function()
    local def = { name = "exact", columns = { id = "integer", r = "real", j = "json", s = "text" }, key = { "id" } }
    local sink = sinkpg.new("pg", { url = srv:url() })
    assert.is_true(sink:ensure("exact", def))
    local reals = { 0.1, 1 / 3, 2 / 7, 1e300, 5e-324, -2.5e-10, 2 ^ 53 + 2, -0.0, 1 / 0, -1 / 0 }
    local rows = {}
    for i, x in ipairs(reals) do
      rows[i] = { id = i, r = x, s = "t\tab\n\\" .. i,
        j = { a = 0.1, b = "q\"uo\\te\t", n = 2 ^ 53 + 0LL + i, m = json.numeral("1.50"), t = true, z = json.null } }
    end
    rows[#rows + 1] = { id = 100, j = { 1, { x = 2 } } } -- not a flat object: sluice.json's text
    assert.is_true(sink:write("exact", rows, def))
    local got = assert(conn:query("SELECT id, r, j::text AS j, s FROM exact ORDER BY id")).rows
    assert.equal(#reals + 1, #got)
    for i, x in ipairs(reals) do
      assert.equal(x, got[i].r)
      assert.equal(1 / x, 1 / got[i].r) -- -0 stays -0
      assert.equal("t\tab\n\\" .. i, got[i].s)
      assert.equal(('{"a": 0.1, "b": "q\\"uo\\\\te\\t", "m": 1.50, "n": %s, "t": true, "z": null}')
        :format(json.int64_text(2 ^ 53 + 0LL + i)), got[i].j)
    end
    assert.equal('[1, {"x": 2}]', got[#got].j)
    sink:close()
  end)

  it("refuses a batch of bad data as 'rejected' and goes on with the next", function()
    local def = { name = "small", columns = { id = "integer", v = "decimal" }, key = { "id" } }
    local sink = sinkpg.new("pg", { url = srv:url() })
    assert.is_true(sink:ensure("small", def))
    assert(conn:query("ALTER TABLE small ADD CONSTRAINT positive CHECK (v > 0)"))
    local ok, err, kind = sink:write("small", { { id = 1, v = "1.5" }, { id = 2, v = "-1" } }, def)
    assert.is_nil(ok)
    assert.equal("rejected", kind)
    assert.truthy(err:match("^postgres: 23514 "), err)
    -- a value the column type refuses: class 22
    ok, err, kind = sink:write("small", { { id = 3, v = "NaN" .. "x" } }, def)
    assert.is_nil(ok)
    assert.equal("rejected", kind)
    assert.truthy(err:match("^postgres: 22P02 "), err)
    assert.is_true(sink:write("small", { { id = 4, v = "2" } }, def))
    assert.same({ { id = 4 } }, assert(conn:query("SELECT id FROM small ORDER BY id")).rows)
    sink:close()
  end)

  it("survives the server stopping and restarting: retried batches, no row lost or doubled", function()
    local def = { name = "restart", columns = { id = "integer", v = "text" }, key = { "id" } }
    local sink = sinkpg.new("pg", { url = srv:url(), connect_timeout = 2, timeout = 5 })
    assert.is_true(sink:ensure("restart", def))
    local function batch(b)
      local rows = {}
      for i = 1, 500 do rows[i] = { id = b * 250 + i, v = "b" .. b } end -- keys overlap the last batch's
      return rows
    end
    local kinds = {}
    for b = 0, 19 do
      if b == 8 then
        assert(srv:stop("fast"))
        for _ = 1, 3 do -- down: every write fails, none is taken for data
          local ok, err, kind = sink:write("restart", batch(b), def)
          assert.is_nil(ok)
          assert.are_not.equal("rejected", kind, err)
          kinds[kind] = true
        end
        srv:restart()
      end
      local attempts = 0
      while true do -- as the outbox retries
        attempts = attempts + 1
        local ok, err, kind = sink:write("restart", batch(b), def)
        if ok then break end
        assert.are_not.equal("rejected", kind, err)
        assert.is_true(attempts < 100, "never recovered: " .. tostring(err))
        sluice.sleep(0.05)
      end
    end
    assert.same({ closed = true, connect = true }, kinds) -- lost, then refused until the restart
    conn:close()
    conn = assert(pg.connect { url = srv:url() })
    local r = assert(conn:query("SELECT count(*) AS n, count(DISTINCT id) AS d, min(id) AS lo, max(id) AS hi FROM restart")).rows[1]
    assert.same({ n = 19 * 250 + 500, d = 19 * 250 + 500, lo = 1, hi = 19 * 250 + 500 }, r)
    assert.equal("b19", assert(conn:query("SELECT v FROM restart WHERE id = $1", { 19 * 250 + 500 })).rows[1].v)
    assert.equal("b7", assert(conn:query("SELECT v FROM restart WHERE id = $1", { 8 * 250 })).rows[1].v)
    assert.equal(1, sink:stats().reconnects)
    sink:close()
  end)

  describe("through the outbox", function()
    -- A collector storing TRADES rows, an outbox with the postgres sink.
    local function run(tname, sink_settings, columns)
      local db = assert(store.open(":memory:"))
      local c = collector.new(collector.define {
        name = "pg_feed_" .. tname, interval = 3600, limiter = false, retry = false, breaker = false,
        tables = { [tname] = { columns = columns or TRADES.columns, key = TRADES.key } },
        collect = function() return {} end,
      }, nil, { store = db })
      local settings = { kind = "postgres", url = srv:url(), batch = 1000, max_age = 0.05,
        retry = { base_delay = 0.05, max_delay = 0.2 }, breaker = { failure_threshold = 1000 } }
      for k, v in pairs(sink_settings or {}) do settings[k] = v end
      local box = assert(outbox.new(db, { pg = settings }))
      c:add_sink(box:route(c))
      box:start()
      finally(function()
        box:stop(0)
        db:close()
      end)
      return db, c, box
    end

    local function drained(box)
      return wait_for("the outbox to drain", function() return box:status().pg.depth == 0 end, 120)
    end

    it("forwards 100,000 rows equal value by value to the local table, 2^256-1 and decimals included", function()
      local db, c, box = run("ob_trades")
      for from = 1, 100000, 5000 do
        local batch = {}
        for i = from, from + 4999 do batch[#batch + 1] = trade(i) end
        assert.equal(5000, c:store_rows(batch))
      end
      -- sent twice, some changed: one row per key, the latest values
      local again = {}
      for i = 1, 5000 do again[i] = trade(i, 1) end
      c:store_rows(again)
      drained(box)
      assert.equal(100000, equal_tables(db, conn, "ob_trades"))
      assert.equal(U256MAX, json.numeral_text(
        assert(conn:query("SELECT big FROM ob_trades WHERE id = 1")).rows[1].big))
      local st = box:status().pg
      assert.same({ 0, 105000, 0 }, { st.depth, st.forwarded, st.dead_letters })
    end)

    it("loses and doubles nothing while postgres is stopped and restarted mid-run", function()
      local db, c, box = run("ob_restart")
      local function rows(from, to)
        local batch = {}
        for i = from, to do batch[#batch + 1] = trade(i) end
        return batch
      end
      c:store_rows(rows(1, 10000))
      wait_for("some rows forwarded", function() return box:status().pg.forwarded > 0 end)
      assert(srv:stop("fast"))
      -- collection goes on while the sink is down: rows wait in the outbox
      c:store_rows(rows(10001, 20000))
      c:store_rows(rows(5001, 15000)) -- overlaps: upserts
      wait_for("a failure noticed", function() return box:status().pg.errors > 0 end)
      assert.is_true(box:status().pg.depth > 0)
      srv:restart()
      drained(box)
      conn:close()
      conn = assert(pg.connect { url = srv:url() })
      local r = assert(conn:query("SELECT count(*) AS n, count(DISTINCT id) AS d FROM ob_restart")).rows[1]
      assert.same({ n = 20000, d = 20000 }, r)
      assert.equal(20000, equal_tables(db, conn, "ob_restart"))
      assert.equal(0, box:status().pg.dead_letters)
    end)

    it("writes every store type exactly from the queued text (the C batch's COPY)", function()
      -- the forwarder hands the sink the chunks' text (sluice._outbox.batch),
      -- not decoded rows: escapes, unicode, blobs, booleans, reals, json,
      -- absent fields and the latest row of a key as sink:write had them
      local cols = { id = "integer", t = "text", b = "blob", r = "real", j = "json",
        d = "decimal", u = "uint256" }
      local _, c, box = run("ob_types", { batch = 100 }, cols)
      local text = 'tab\tnl\ncr\rbs\\q"ctl\1\31 \u{e9} \u{2603} \u{1F600} /sl'
      assert.equal(3, c:store_rows({
        { id = 1, t = "first" },
        { id = 2, t = "", r = -1e300, j = { 1, { x = "y", f = false } } },
        { id = 3 },
      }))
      assert.equal(1, c:store_rows({
        { id = 1, t = text, b = "AB\1\u{e9}\\", r = 0.1, j = { x = "a\tb\\", n = 2 ^ 53 + 1LL, t = true },
          d = "1.50", u = U256MAX },
      }))
      wait_for("the outbox to drain", function() return box:status().pg.depth == 0 end, 30)
      local got = assert(conn:query("SELECT id, t, encode(b, 'hex') AS b, r, j::text AS j, d::text AS d,"
        .. " u::text AS u FROM ob_types ORDER BY id")).rows
      assert.same({
        { id = 1, t = text, b = "4142" .. "01" .. "c3a9" .. "5c", r = 0.1,
          j = '{"n": 9007199254740993, "t": true, "x": "a\\tb\\\\"}', d = "1.50", u = U256MAX },
        { id = 2, t = "", r = -1e300, j = '[1, {"f": false, "x": "y"}]' },
        { id = 3 },
      }, got)
      -- a NUL PostgreSQL text cannot hold: the batch is refused, dead-lettered
      assert.equal(1, c:store_rows({ { id = 4, t = "a\0b" } }))
      wait_for("the dead letter", function() return box:status().pg.dead_letters == 1 end)
      assert.truthy(tostring(box:dead_letters("pg")[1].error):match("NUL"), tostring(box:dead_letters("pg")[1].error))
      assert.equal(3, assert(conn:query("SELECT count(*) AS n FROM ob_types")).rows[1].n)
      -- one batch of 4 queued rows, one per key: 3 forwarded
      assert.same({ 0, 3 }, { box:status().pg.depth, box:status().pg.forwarded })
    end)

    it("dead-letters a batch the server refuses and forwards the rest", function()
      local db, c, box = run("ob_refused", { batch = 100 })
      c:store_rows({ trade(1) })
      drained(box)
      assert(conn:query("ALTER TABLE ob_refused ADD CONSTRAINT small_ids CHECK (id < 1000000)"))
      c:store_rows({ trade(1000001), trade(1000002) }) -- refused by the constraint
      wait_for("the dead letters", function() return box:status().pg.dead_letters == 2 end)
      local more = {}
      for i = 2, 500 do more[#more + 1] = trade(i) end
      c:store_rows(more)
      drained(box)
      assert.equal(500, assert(conn:query("SELECT count(*) AS n FROM ob_refused")).rows[1].n)
      local dl = box:dead_letters("pg")
      assert.equal(2, #dl)
      assert.truthy(tostring(dl[1].error):match("23514"), tostring(dl[1].error))
      assert.equal(500, box:status().pg.forwarded)
      assert.equal(0, #db:query("SELECT id FROM sluice_outbox"))
    end)
  end)

  it("reads sink tables back with `sluice sql`", function()
    local ffi = require "ffi"
    pcall(ffi.cdef, "int getpid(void);")
    local exe = "/proc/" .. ffi.C.getpid() .. "/exe" -- this sluice binary
    assert(conn:query("CREATE TABLE readback (id bigint PRIMARY KEY, p numeric, s text)"))
    assert(conn:query("INSERT INTO readback VALUES (1, 0.10, 'a|b'), (2, NULL, NULL)"))
    local config = os.tmpname() .. ".lua"
    local f = io.open(config, "w")
    f:write(("return { sinks = { postgres = { url = %q } } }"):format(srv:url()))
    f:close()
    local function sql(args)
      local p = io.popen(exe .. " sql " .. args .. " 2>&1; echo \"rc=$?\"")
      local out = p:read("*a")
      p:close()
      return out
    end
    assert.equal("id|p|s\n1|0.10|a|b\n2||\nrc=0\n",
      sql(config .. " --sink postgres 'SELECT id, p, s FROM readback ORDER BY id'"))
    assert.equal("INSERT 0 1\nrc=0\n", sql("--url " .. srv:url() .. " \"INSERT INTO readback VALUES (3, 1, 'x')\""))
    assert.equal("sluice sql: 42P01 relation \"nope\" does not exist\nrc=1\n", sql(config .. " --sink postgres 'SELECT * FROM nope'"))
    assert.equal("sluice sql: " .. config .. ": no sink named 'pg'\nrc=1\n", sql(config .. " --sink pg 'SELECT 1'"))
    os.remove(config)
  end)
end)
