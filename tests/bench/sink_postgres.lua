-- sink_postgres.lua -- rows/s forwarded to PostgreSQL against `psql \copy`
--
--   sluice run --lua-path tests/lua tests/bench/sink_postgres.lua [-- ROWS BATCH METHODS]
--
-- Starts a private PostgreSQL (support.postgres), makes ROWS (100,000) rows
-- of 10 columns (integer, text, decimal, uint256, real, json, ...), then in
-- the same run:
--   1. psql \copy of those rows (COPY's text format, from a file): the
--      engine's own bulk path, the baseline;
--   2. sink:write in batches of BATCH (1000), by each of METHODS (a comma
--      list, default "copy,unnest"; "values" is the third, and slow), into
--      an empty table (inserts) and again (every row an update): steady
--      state;
--   3. through the outbox: rows committed by a collector (store_rows) and
--      forwarded by the forwarder task until the outbox is empty;
--   4. the outbox's cost on the collection path: store_rows rows/s with and
--      without the sink configured (the forwarder stopped, so only the
--      queueing is measured).
local sluice = require "sluice"
local store = require "sluice.store"
local collector = require "sluice.collector"
local outbox = require "sluice.outbox"
local pg = require "sluice.pg"
local sinkpg = require "sluice.sinks.postgres"
local json = require "sluice.json"
local pgs = require "support.postgres"

local ROWS = tonumber(arg and arg[1]) or 100000
local BATCH = tonumber(arg and arg[2]) or 1000
local METHODS = {}
for m in ((arg and arg[3]) or "copy,unnest"):gmatch("[^,]+") do METHODS[#METHODS + 1] = m end

local COLUMNS = {
  id = "integer", symbol = "text", price = "decimal", big = "uint256", qty = "real",
  meta = "json", ts = "integer", side = "text", fee = "decimal", seq = "integer",
}
local NAMES = { "big", "fee", "id", "meta", "price", "qty", "seq", "side", "symbol", "ts" }

local function row(i, rev)
  return {
    id = i, symbol = "SYM" .. (i % 97), price = ("%d.%02d"):format(i % 100000, (i + rev) % 100),
    big = tostring(i) .. "000000000000000000000000000000", qty = i / 7,
    meta = { n = i, rev = rev }, ts = 1700000000000 + i, side = i % 2 == 0 and "buy" or "sell",
    fee = "0.000" .. (i % 10), seq = rev,
  }
end

-- rows[from..to] as a new list (unpack stops at a few thousand values)
local function slice(rows, from, to)
  local t = {}
  for i = from, math.min(to, #rows) do t[#t + 1] = rows[i] end
  return t
end

local function rows_of(rev)
  local t = {}
  for i = 1, ROWS do t[i] = row(i, rev) end
  return t
end

local function report(what, n, secs)
  print(("%-58s %9d rows %8.3f s %10.0f rows/s"):format(what, n, secs, n / secs))
  return n / secs
end

local srv = pgs.start()
local ok, err = pcall(function()
  local conn = assert(pg.connect { url = srv:url() })
  local rows = rows_of(0)
  print(("PostgreSQL %s, %d rows of 10 columns, batches of %d"):format(
    select(3, conn:status()), ROWS, BATCH))

  -- 1. psql \copy
  local def = { name = "baseline", columns = COLUMNS, key = { "id" } }
  local s0 = sinkpg.new("pg", { url = srv:url() })
  assert(s0:ensure("baseline", def))
  local lines = {}
  for i, r in ipairs(rows) do
    local v = {}
    for j, c in ipairs(NAMES) do v[j] = c == "meta" and assert(json.encode(r[c])) or r[c] end
    lines[i] = v
  end
  local file = os.tmpname()
  local f = io.open(file, "w")
  f:write(pg.copy_text(lines, #NAMES))
  f:close()
  os.execute("chmod 644 " .. file)
  local t0 = sluice.now()
  assert(srv:psql(("\\copy baseline (%s) FROM '%s'"):format(table.concat(NAMES, ", "), file)))
  local base = report("psql \\copy (baseline)", ROWS, sluice.now() - t0)
  os.remove(file)
  assert(assert(conn:query("SELECT count(*) AS n FROM baseline")).rows[1].n == ROWS, "baseline count")

  -- 2. the sink's write, both methods
  for _, method in ipairs(METHODS) do
    local tname = "direct_" .. method
    local d = { name = tname, columns = COLUMNS, key = { "id" } }
    local sink = sinkpg.new("pg", { url = srv:url(), method = method })
    assert(sink:ensure(tname, d))
    for pass, data in ipairs { rows, rows_of(1) } do
      t0 = sluice.now()
      for from = 1, ROWS, BATCH do
        assert(sink:write(tname, slice(data, from, from + BATCH - 1), d))
      end
      local r = report(("sink:write, %s, %s"):format(method, pass == 1 and "new rows" or "updates"),
        ROWS, sluice.now() - t0)
      print(("%-58s %9.2f x baseline"):format("", r / base))
      require("support.bench").figure(
        ("sink_postgres.%s_%s_vs_copy"):format(method, pass == 1 and "insert" or "update"),
        r / base, "ratio")
    end
    sink:close()
  end

  -- 3. through the outbox, and 4. the collection path with and without it
  local function collector_on(db, tname)
    return collector.new(collector.define {
      name = "bench_" .. tname, interval = 3600, limiter = false, retry = false, breaker = false,
      tables = { [tname] = { columns = COLUMNS, key = { "id" } } }, collect = function() return {} end,
    }, nil, { store = db })
  end
  local function store_all(c, data)
    for from = 1, ROWS, 5000 do c:store_rows(slice(data, from, from + 4999)) end
  end
  local path = os.tmpname()
  os.remove(path)
  local db = assert(store.open(path))
  local c = collector_on(db, "plain")
  t0 = sluice.now()
  store_all(c, rows)
  local plain = report("store_rows, no sink (local upsert only)", ROWS, sluice.now() - t0)

  local c2 = collector_on(db, "ob")
  local box = assert(outbox.new(db, { pg = { kind = "postgres", url = srv:url(), batch = BATCH, max_age = 0.05 } }))
  c2:add_sink(box:route(c2))
  t0 = sluice.now()
  store_all(c2, rows)
  local queued = report("store_rows with the postgres sink (upsert + queue)", ROWS, sluice.now() - t0)
  print(("%-58s %9.2f x without"):format("", queued / plain))
  require("support.bench").figure("sink_postgres.store_rows_with_sink_vs_without", queued / plain, "ratio")
  t0 = sluice.now()
  box:start()
  while box:status().pg.depth > 0 do sluice.sleep(0.01) end
  local fwd = report("forwarded by the outbox (queued -> acknowledged)", ROWS, sluice.now() - t0)
  print(("%-58s %9.2f x baseline"):format("", fwd / base))
  require("support.bench").figure("sink_postgres.outbox_vs_copy", fwd / base, "ratio")
  box:stop(1)
  db:close()
  os.remove(path)
  os.remove(path .. "-wal")
  os.remove(path .. "-shm")
  conn:close()
end)
srv:shutdown()
if not ok then error(err, 0) end
