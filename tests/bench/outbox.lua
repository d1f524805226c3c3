-- outbox.lua -- the outbox's cost on the collection path, and its forwarding rate
--
--   sluice run --lua-path tests/lua tests/bench/outbox.lua [-- ROWS BATCH PROFILE MODE]
--
-- A trivial sink kind ("bench_null": write acknowledges at once, or after
-- `latency` seconds) so that only the outbox is measured. ROWS (100,000) rows of 10 columns (integer,
-- text, decimal, uint256, real, json, ...) stored by a collector's
-- store_rows in calls of BATCH (1,000) rows, as a collection does:
--   1. store_rows with no sink, with one sink and with two (the forwarders
--      not started: the upsert plus the queueing, in one transaction), each
--      into a fresh table of a database of its own, then again with every
--      row changed (updates): steady state is the second pass; the three
--      take turns call by call,
--      each timed in CPU seconds of the process (os.clock: user + system,
--      SQLite's writes included), which other jobs on the machine disturb
--      less than the wall clock;
--   2. forwarding: the rows queued for one sink (ROWS of them) shipped by
--      its forwarder (queue -> sink:write -> delete on the ack) until the
--      outbox is empty, with batch = BATCH; then again with a sink taking
--      5 ms a write (the forwarder reads and decodes the next batch while
--      a write is in flight: what it adds to the 5 ms is printed);
--   3. both at once: store_rows with one sink while its forwarder runs.
-- PROFILE = "store" (the steady state with one sink) or "forward" runs
-- LuaJIT's profiler (jit.p) over that part, MODE its options (default
-- "F1": functions; "l1" lines, "z" VM states).
local sluice = require "sluice"
local store = require "sluice.store"
local collector = require "sluice.collector"
local outbox = require "sluice.outbox"

local ROWS = tonumber(arg and arg[1]) or 100000
local BATCH = tonumber(arg and arg[2]) or 1000
local PROFILE = arg and arg[3]
local MODE = arg and arg[4] or "F1"

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

-- rows first..first+BATCH-1 (made per call, so that the heap holds only
-- what a collection would: a big live heap makes every allocation's GC
-- work dearer and would be charged to whoever allocates most)
local function chunk_of(first, rev)
  local t = {}
  for i = first, math.min(first + BATCH - 1, ROWS) do t[#t + 1] = row(i, rev) end
  return t
end

local forwarded = 0
outbox.register_kind("bench_null", function(_, settings)
  local latency = settings.latency or 0
  return {
    ensure = function() return true end,
    write = function(_, _, rows)
      if latency > 0 then sluice.sleep(latency) end
      forwarded = forwarded + #rows
      return true
    end,
  }
end)

local function report(what, n, secs)
  print(("%-62s %8d rows %7.3f s %9.0f rows/s"):format(what, n, secs, n / secs))
  return n / secs
end

local function profiled(part, fn)
  if PROFILE ~= part then return fn() end
  local prof = require "jit.p"
  prof.start(MODE, os.getenv("PROFILE_OUT") or "/dev/stderr")
  local r = fn()
  prof.stop()
  return r
end

-- Every case has a database of its own: a WAL checkpoint is paid by the
-- commit that crosses its threshold, which on a shared file would charge
-- one case for the others' writes.
local paths = {}
local function open_db()
  local path = os.tmpname()
  os.remove(path)
  paths[#paths + 1] = path
  return assert(store.open(path))
end

local function collector_on(db, tname)
  return collector.new(collector.define {
    name = "bench_" .. tname, interval = 3600, limiter = false, retry = false, breaker = false,
    tables = { [tname] = { columns = COLUMNS, key = { "id" } } }, collect = function() return {} end,
  }, nil, { store = db })
end

local function store_all(c, rev)
  for from = 1, ROWS, BATCH do c:store_rows(chunk_of(from, rev)) end
end

local function box_of(db, names, extra)
  local sinks = {}
  for _, name in ipairs(names) do
    sinks[name] = { kind = "bench_null", batch = BATCH, max_age = 0.05, max_rows = 10 * ROWS }
    for k, v in pairs(extra or {}) do sinks[name][k] = v end
  end
  return assert(outbox.new(db, sinks))
end

print(("sluice outbox benchmark: %d rows of 10 columns, store_rows of %d rows, SQLite %s"):format(
  ROWS, BATCH, store.sqlite_version))
-- the three cases take turns, one store_rows call each (in a rotating
-- order), so that a change in the machine's load weighs on all of them
-- alike; the outboxes are
-- never started (the queueing alone)
local cases = { { "no sink", {} }, { "one sink", { "a" } }, { "two sinks", { "a", "b" } } }
local boxes = {}
for _, case in ipairs(cases) do
  case.db = open_db()
  local c = collector_on(case.db, "t")
  if #case[2] > 0 then
    local box = box_of(case.db, case[2])
    boxes[#boxes + 1] = box
    c:add_sink(box:route(c))
  end
  case.c = c
end
for pass = 1, 2 do
  local secs = { 0, 0, 0 }
  profiled(pass == 2 and "store" or "-", function()
    for from = 1, ROWS, BATCH do
      local chunk = chunk_of(from, pass - 1)
      -- each case in each place of the turn as often: the one after
      -- another pays for some of its garbage (LuaJIT's collector works
      -- as it allocates), which a fixed order charged to the same case
      local turn = (from - 1) / BATCH
      for j = 0, #cases - 1 do
        local k = (turn + j) % #cases + 1
        local case = cases[k]
        if PROFILE == "store" and k ~= 2 then goto next end
        local t0 = os.clock()
        case.c:store_rows(chunk)
        secs[k] = secs[k] + os.clock() - t0
        ::next::
      end
    end
  end)
  local rate = {}
  for k, case in ipairs(cases) do
    rate[k] = report(("store_rows, %s, %s"):format(case[1],
      pass == 1 and "new rows" or "every row changed (steady state)"), ROWS, secs[k])
    if k > 1 then print(("%-62s %8.2f x no sink"):format("", rate[k] / rate[1])) end
    if k > 1 then
      require("support.bench").figure(
        ("outbox.store_rows_%d_sinks_%s_vs_none"):format(k - 1, pass == 1 and "new" or "changed"),
        rate[k] / rate[1], "ratio")
    end
  end
end

-- forwarding: ROWS rows queued for one sink, shipped until the outbox is
-- empty; the sink acknowledging at once (the forwarder's own rate), then
-- taking LATENCY seconds a write, as a sink on the network does (the
-- forwarder reads and decodes the next batch meanwhile: its own time per
-- batch is what the figure loses against LATENCY alone)
local LATENCY = 0.005
local function forward(label, latency, part)
  local db = open_db()
  local c = collector_on(db, "t")
  local box = box_of(db, { "fwd" }, { latency = latency })
  c:add_sink(box:route(c))
  store_all(c, 0)
  assert(box:status().fwd.depth == ROWS)
  local secs = profiled(part, function()
    forwarded = 0
    local t0 = sluice.now()
    box:start()
    while box:status().fwd.depth > 0 do sluice.sleep(0.002) end
    return sluice.now() - t0
  end)
  report(label, forwarded, secs)
  box:stop(1)
  return secs
end
require("support.bench").figure("outbox.forward_rate",
  ROWS / forward("forwarded (queue -> sink:write -> delete on ack)", 0, "forward"), "rows/s")
local secs = forward(("forwarded to a sink taking %g ms a write"):format(LATENCY * 1000), LATENCY, "-")
local batches = math.ceil(ROWS / BATCH)
print(("%-62s %8.2f ms a batch beyond the sink's %g ms"):format("", (secs / batches - LATENCY) * 1000,
  LATENCY * 1000))
require("support.bench").figure("outbox.batch_cost_beyond_sink", (secs / batches - LATENCY) * 1000, "ms")

-- both at once
local ldb = open_db()
local cl = collector_on(ldb, "t")
local lbox = box_of(ldb, { "live" })
cl:add_sink(lbox:route(cl))
lbox:start()
forwarded = 0
local t0 = sluice.now()
for from = 1, ROWS, BATCH do
  cl:store_rows(chunk_of(from, 0))
  sluice.yield() -- a collection ends, the forwarder gets the loop
end
while lbox:status().live.depth > 0 do sluice.sleep(0.005) end
report("store_rows with one sink while it forwards (stored -> acked)", ROWS, sluice.now() - t0)

lbox:stop(1)
for _, box in ipairs(boxes) do box:close() end
for _, case in ipairs(cases) do case.db:close() end
ldb:close()
for _, path in ipairs(paths) do
  os.remove(path)
  os.remove(path .. "-wal")
  os.remove(path .. "-shm")
end
