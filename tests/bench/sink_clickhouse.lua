-- sink_clickhouse.lua -- rows/s forwarded to ClickHouse against clickhouse-client
--
--   sluice run --lua-path tests/lua tests/bench/sink_clickhouse.lua [-- ROWS BATCH]
--
-- Starts a private ClickHouse (support.clickhouse), makes ROWS (100,000)
-- rows of 10 columns (integer, text, decimal, uint256, real, json, ...),
-- then in the same run:
--   1. clickhouse-client --query "INSERT ... FORMAT JSONEachRow" < file of
--      those rows: the engine's own bulk path, the baseline (one insert);
--   2. sink:write in batches of BATCH (5000), per format (RowBinary,
--      JSONEachRow) and with compress = true: rows/s, bytes sent;
--   3. through the outbox: rows committed by a collector (store_rows) and
--      forwarded by the forwarder task until the outbox is empty.
local sluice = require "sluice"
local store = require "sluice.store"
local collector = require "sluice.collector"
local outbox = require "sluice.outbox"
local sinkch = require "sluice.sinks.clickhouse"
local chs = require "support.clickhouse"

local ROWS = tonumber(arg and arg[1]) or 100000
local BATCH = tonumber(arg and arg[2]) or 5000

local COLUMNS = {
  id = "integer", symbol = "text", price = "decimal", big = "uint256", qty = "real",
  meta = "json", ts = "integer", side = "text", fee = "decimal", seq = "integer",
}

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

local function report(what, n, secs, extra)
  print(("%-52s %8d rows %7.3f s %9.0f rows/s%s"):format(what, n, secs, n / secs, extra or ""))
  return n / secs
end

local srv = chs.start()
local ok, err = pcall(function()
  assert(srv:query("CREATE DATABASE bench"))
  local rows = rows_of(0)
  print(("ClickHouse %s, %d rows of 10 columns, batches of %d"):format(
    assert(srv:query("SELECT version()")):match("%S+"), ROWS, BATCH))

  -- 1. clickhouse-client, JSONEachRow from a file (the sink's JSON encoding)
  local def = { name = "baseline", columns = COLUMNS, key = { "id" } }
  local s0 = sinkch.new("ch", { url = srv:url(), database = "bench", format = "JSONEachRow" })
  assert(s0:ensure("baseline", def))
  local p = s0:plan("baseline", def)
  local file = os.tmpname()
  local f = io.open(file, "w")
  f:write(assert(sinkch.body_of(p, rows, 1ULL)))
  f:close()
  local t0 = sluice.now()
  assert(srv:client("INSERT INTO bench.baseline FORMAT JSONEachRow", file))
  local base = report("clickhouse-client JSONEachRow (baseline)", ROWS, sluice.now() - t0)
  os.remove(file)
  assert(srv:query("SELECT count() FROM bench.baseline") == ROWS .. "\n", "baseline count")

  -- 2. the sink's write
  for _, v in ipairs {
    { "RowBinary", false }, { "JSONEachRow", false }, { "RowBinary", true }, { "JSONEachRow", true },
  } do
    local tname = "direct_" .. v[1] .. (v[2] and "_z" or "")
    local d = { name = tname, columns = COLUMNS, key = { "id" } }
    local sink = sinkch.new("ch", { url = srv:url(), database = "bench", format = v[1], compress = v[2] })
    assert(sink:ensure(tname, d))
    t0 = sluice.now()
    for from = 1, ROWS, BATCH do
      assert(sink:write(tname, slice(rows, from, from + BATCH - 1), d))
    end
    local secs = sluice.now() - t0
    local r = report(("sink:write, %s%s"):format(v[1], v[2] and ", deflate" or ""), ROWS, secs,
      ("  %5.1f MB sent"):format(sink:stats().bytes / 1e6))
    print(("%-52s %9.2f x baseline"):format("", r / base))
    require("support.bench").figure(("sink_clickhouse.%s%s_vs_client"):format(v[1]:lower(), v[2] and "_deflate" or ""),
      r / base, "ratio")
  end

  -- 3. through the outbox
  local path = os.tmpname()
  os.remove(path)
  local db = assert(store.open(path))
  local c = collector.new(collector.define {
    name = "bench_ob", interval = 3600, limiter = false, retry = false, breaker = false,
    tables = { ob = { columns = COLUMNS, key = { "id" } } }, collect = function() return {} end,
  }, nil, { store = db })
  local box = assert(outbox.new(db, { ch = { kind = "clickhouse", url = srv:url(), database = "bench",
    batch = BATCH, max_age = 0.05 } }))
  c:add_sink(box:route(c))
  for from = 1, ROWS, 5000 do c:store_rows(slice(rows, from, from + 4999)) end
  t0 = sluice.now()
  box:start()
  while box:status().ch.depth > 0 do sluice.sleep(0.01) end
  local fwd = report("forwarded by the outbox (queued -> acknowledged)", ROWS, sluice.now() - t0)
  print(("%-52s %9.2f x baseline"):format("", fwd / base))
  require("support.bench").figure("sink_clickhouse.outbox_vs_client", fwd / base, "ratio")
  box:stop(1)
  db:close()
  os.remove(path)
  os.remove(path .. "-wal")
  os.remove(path .. "-shm")
end)
srv:shutdown()
if not ok then error(err, 0) end
