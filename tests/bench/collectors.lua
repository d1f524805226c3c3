-- collectors.lua -- N collectors at 1 s on one process: RSS, schedule lateness, CPU.
--   sluice run --lua-path tests/lua tests/bench/collectors.lua [-- N SECONDS TABLES START INTERVAL WORK]
--   sluice run --lua-path tests/lua tests/bench/collectors.lua -- part NAME N
--
-- Run mode: nginx (1 worker) serves a 300-byte JSON document on loopback;
-- N collectors (default 1,000), each with its breaker, limiter and retry
-- and one table, GET it every second and store one row, for SECONDS
-- (default 20) after a warm-up of 3 s. Built as the app builds them
-- (collector.new with the store, one response cache, one upstreams
-- registry) and started as the app starts them (app.first_delays: first
-- runs spread over the first second). TABLES: "shared" (default; every
-- collector upserts its row into one table keyed by collector) or "own"
-- (a table per collector) or "none" (no store: rows are counted only).
-- START: "random" (default: as the app starts them, app.first_delays,
-- first runs at random over the first second) or "phase" (start{phase =
-- true}: each at its name's phase, collector.phase). INTERVAL: seconds
-- between a collector's runs (default 1; 10 measures 10,000 collectors'
-- memory at a rate a loaded 2-core machine keeps up with). WORK: "get"
-- (default: the GET above) or "memory" (collect returns its row from
-- memory, no HTTP: with TABLES "none" a run is the framework alone, so
-- that the scheduler's own lateness at 10,000 collectors is measured
-- apart from the work, which one loop thread cannot do 10,000 times a
-- second). Environment: BENCH_GCPAUSE=N and BENCH_GCSTEPMUL=N set the Lua
-- GC's pause and step multiplier, BENCH_NOBUDGET=1 runs the collectors without a run budget (what its
-- region costs a run), SKIP_PARTS=1 skips the part mode.
--
-- Figures (the anchor is the idle RSS of this same process before any
-- collector exists, measured in the same run):
--   collectors.rss_total        the most RSS sampled (each second, no forced
--                               GC) while N collectors run (MiB)
--   collectors.rss_per          (RSS - idle RSS) / N (KiB)
--   collectors.rss_vs_idle      RSS / idle RSS (ratio)
--   collectors.lua_heap_max     the most Lua heap sampled so (MiB), and
--   collectors.lua_heap_live    the Lua heap after a full GC at the end
--   collectors.late_p50/p99/max lateness of a collection's start (collect
--                               entered) vs its due time (ms)
--   collectors.starved          collectors that missed a period in the window
--   collectors.workers          the clock's worker tasks at the window's end
--                               (as many as runs were ever in flight at once)
--   collectors.cpu_per          CPU (user+sys) per collection (us)
--   collectors.cpu_vs_get       that / the CPU of one bare http.get +
--                               res:json() + one-row upsert, measured in
--                               the same run (ratio)
--   collectors.timer_late_p50/p99  the same of a bare 10 ms sluice.after
--                               chain in the same loop and window: the
--                               floor the machine and the loop give (ms)
-- Part mode (run by the run mode in a child process per part, so that no
-- part reuses memory another freed): builds N of one part alone and prints
-- its RSS and Lua-heap cost per item:
--   collectors.part.<name>.rss / .lua (bytes per collector)
-- Parts: breaker, limiter, retry, log (the per-collector logger), timer
-- (an armed sluice.after with two arguments, as a collector's schedule),
-- task (a parked task: a run in flight), instance (collector.new without
-- breaker, limiter, retry or table: the framework's tables), full
-- (collector.new with all of them and one table, started: timer armed),
-- store (one table defined and one row upserted per collector), curl (one
-- pooled easy handle and its keep-alive connection: min(N, 1000)
-- concurrent GETs, then idle; the per-collector figure is per handle).
local sluice = require "sluice"
local procinfo = require "sluice.procinfo"
local bench = require "support.bench"

local a1, a2, a3, a4, a5, a6 = ...

local function rss()
  collectgarbage()
  collectgarbage()
  return (procinfo.memory())
end

local function lua_bytes()
  collectgarbage()
  collectgarbage()
  return collectgarbage("count") * 1024
end

local DOC = '{"symbol":"BTCUSDT","price":"97123.45","qty":"0.012","time":1733400000000,'
  .. '"bids":[["97123.40","1.2"],["97123.30","0.7"]],"asks":[["97123.50","0.9"],["97123.60","2.1"]],'
  .. '"status":"TRADING","source":"bench"}'

-- every nginx this run started: stopped on the way out, also when the run
-- fails (an nginx left running outlives the benchmark and skews the next)
local started = {}
local function start_nginx()
  local ng = require("support.nginx").start{
    files = { ["doc.json"] = DOC },
    locations = "    location = /doc.json { default_type application/json; }",
  }
  started[#started + 1] = ng
  return ng
end

local function tmpdb()
  return require("support.store").tmpdb()
end

local function remove_db(p)
  require("support.store").remove_db(p)
end

local spec_cache = {}
local probe -- run mode: called at the start of every collection
-- The spec of the bench's collector: one table (own: its own name).
local interval = tonumber(a5) or 1
local work = a6 or "get"
local function spec_for(tname)
  if spec_cache[tname] then return spec_cache[tname] end
  local collector = require "sluice.collector"
  local def = {
    name = "bench",
    interval = interval,
    tables = { [tname] = { columns = { collector = "text", price = "real", at = "real" },
      key = { "collector" } } },
    collect = function(self)
      if probe then probe(self) end
      if work == "memory" then return { { collector = self.name, price = 1, at = sluice.time() } } end
      local data = assert(self:get("/doc.json"))
      return { { collector = self.name, price = tonumber(data.price), at = sluice.time() } }
    end,
  }
  if os.getenv("BENCH_NOBUDGET") == "1" then def.run_budget = false end
  local s = collector.define(def)
  spec_cache[tname] = s
  return s
end

-- ---------------------------------------------------------------- parts

local PARTS = {}

function PARTS.breaker(n, keep)
  local breaker = require "sluice.breaker"
  for i = 1, n do keep[i] = breaker.new{ name = "c" .. i } end
end

function PARTS.limiter(n, keep)
  local limiter = require "sluice.limiter"
  for i = 1, n do keep[i] = limiter.new{ name = "c" .. i } end
end

function PARTS.retry(n, keep)
  local retry = require "sluice.retry"
  for i = 1, n do keep[i] = retry.new{ name = "c" .. i } end
end

function PARTS.log(n, keep)
  local log = require "sluice.log"
  for i = 1, n do keep[i] = log.with({ collector = "c" .. i }) end
end

function PARTS.timer(n, keep)
  local function tick() end
  for i = 1, n do keep[i] = sluice.after(3600, tick, keep, i) end
end

function PARTS.task(n, keep)
  for i = 1, n do keep[i] = sluice.spawn(sluice.park) end
  sluice.sleep(0) -- each runs up to its park
end

local function new_collectors(n, keep, overrides, ctx)
  local collector = require "sluice.collector"
  local s = spec_for("samples")
  for i = 1, n do
    local o = { name = "c" .. i, base_url = "http://127.0.0.1:1" }
    for k, v in pairs(overrides) do o[k] = v end
    keep[i] = collector.new(s, o, ctx)
  end
end

function PARTS.instance(n, keep)
  local cache = require("sluice.collector.cache").new()
  new_collectors(n, keep, { breaker = false, limiter = false, retry = false },
    { cache = cache, upstreams = require("sluice.collector.upstreams").new() })
end

function PARTS.full(n, keep, ctx)
  new_collectors(n, keep, {}, ctx)
  for i = 1, n do keep[i]:start({ first_delay = 3600 }) end
end

function PARTS.store(n, keep, ctx)
  local db = ctx.store
  for i = 1, n do
    local t = "t" .. i
    assert(db:define{ name = t, columns = { collector = "text", price = "real", at = "real" },
      key = { "collector" } })
    assert(db:upsert(t, { { collector = t, price = 1, at = 2 } }))
  end
  keep[1] = db
end

function PARTS.curl(n, keep, ctx)
  local http = require "sluice.http"
  local k = math.min(n, 1000)
  local url = ctx.nginx:url("/doc.json")
  local tasks = {}
  for i = 1, k do
    tasks[i] = sluice.spawn(function()
      for _ = 1, 3 do assert(http.get(url)):json() end
    end)
  end
  for i = 1, k do assert(sluice.wait(tasks[i])) end
  keep[1] = k
  return k
end

-- Setup a part needs that is not its own cost (measured before).
local function part_context(name)
  local ctx = {}
  if name == "store" or name == "full" then
    ctx.path = tmpdb()
    ctx.store = assert(require("sluice.store").open(ctx.path))
    ctx.cache = require("sluice.collector.cache").new()
    ctx.upstreams = require("sluice.collector.upstreams").new()
    if name == "full" then
      -- the shared table exists before: full's own cost is what a collector adds
      new_collectors(1, {}, {}, ctx)
    end
  elseif name == "curl" then
    ctx.nginx = start_nginx()
    require("sluice.http").get(ctx.nginx:url("/doc.json")) -- the module's first use
  elseif name == "instance" then
    new_collectors(1, {}, { breaker = false, limiter = false, retry = false },
      { cache = require("sluice.collector.cache").new() })
  end
  return ctx
end

local function run_part(name, n)
  local fn = PARTS[name]
  if not fn then error("unknown part " .. tostring(name)) end
  local ctx = part_context(name)
  local keep = {}
  for i = 1, n do keep[i] = false end -- the list itself is not the part's cost
  local r0, l0 = rss(), lua_bytes()
  local per = fn(n, keep, ctx) or n
  local r1, l1 = rss(), lua_bytes()
  print(string.format("@part %s %d %.1f %.1f", name, per, (r1 - r0) / per, (l1 - l0) / per))
  if ctx.nginx then ctx.nginx:stop() end
  if ctx.path then
    ctx.store:close()
    remove_db(ctx.path)
  end
  sluice.shutdown(0)
end

-- ---------------------------------------------------------------- run

local PART_ORDER = { "breaker", "limiter", "retry", "log", "timer", "task", "instance", "store",
  "curl", "full" }

local function parts(n)
  local out = {}
  for _, name in ipairs(PART_ORDER) do
    -- A fresh process per part, of this very binary: popen's shell is the child, so its
    -- /proc/self/exe would be the shell; its parent's exe link names sluice.
    local p = io.popen(string.format(
      '"$(readlink /proc/$PPID/exe)" run --lua-path tests/lua tests/bench/collectors.lua -- part %s %d 2>&1',
      name, n))
    local text = p:read("*a")
    p:close()
    local per, r, l = text:match("@part " .. name .. " (%d+) (%S+) (%S+)")
    if not r then
      io.stderr:write("part ", name, " failed:\n", text, "\n")
    else
      out[#out + 1] = { name = name, per = tonumber(per), rss = tonumber(r), lua = tonumber(l) }
    end
  end
  print(string.format("\nper-collector cost of each part alone (N = %d; curl: per pooled handle)", n))
  print(string.format("  %-10s %12s %12s", "part", "RSS B", "Lua heap B"))
  for _, p in ipairs(out) do
    print(string.format("  %-10s %12.0f %12.0f", p.name, p.rss, p.lua))
    bench.figure("collectors.part." .. p.name .. ".rss", p.rss, "B")
    bench.figure("collectors.part." .. p.name .. ".lua", p.lua, "B")
  end
end

local function percentile(hist, total, q)
  local want, seen = math.ceil(total * q), 0
  for i = 0, #hist do
    seen = seen + hist[i]
    if seen >= want then return i / 10 end
  end
  return #hist / 10
end

local function run(n, seconds, tables, start)
  local idle = rss()
  -- BENCH_GCPAUSE: the Lua GC's pause (default 200: the heap grows to
  -- twice what is live before a cycle), to measure what it costs
  local pause = tonumber(os.getenv("BENCH_GCPAUSE") or "")
  if pause then collectgarbage("setpause", pause) end
  local stepmul = tonumber(os.getenv("BENCH_GCSTEPMUL") or "")
  if stepmul then collectgarbage("setstepmul", stepmul) end
  local collector = require "sluice.collector"
  local store = require "sluice.store"
  local app = require "sluice.app"
  local http = require "sluice.http"
  local log = require "sluice.log"
  log.level("warning") -- 10,000 "collection done" lines a second are not the subject
  local ng = start_nginx()
  local base = ng:url(""):gsub("/$", "")
  local path = tmpdb()
  local db = assert(store.open(path))
  local ctx = { store = db, cache = require("sluice.collector.cache").new(),
    upstreams = require("sluice.collector.upstreams").new() }

  -- the anchor: CPU of a bare GET + json + one-row upsert, same run
  db:define{ name = "anchor", columns = { k = "text", price = "real", at = "real" }, key = { "k" } }
  local url = ng:url("/doc.json")
  local reps = 3000
  local c0 = procinfo.cpu_seconds()
  for i = 1, reps do
    local d = assert(http.get(url)):json()
    db:upsert("anchor", { { k = "k" .. (i % 100), price = tonumber(d.price), at = sluice.time() } })
  end
  local get_cpu = (procinfo.cpu_seconds() - c0) / reps
  local base_rss = rss()
  local base_heap = collectgarbage("count") * 1024

  -- the probe: lateness histogram in 0.1 ms buckets, per-collector gaps
  local measuring = false
  local hist, HMAX = {}, 20000
  for i = 0, HMAX do hist[i] = 0 end
  local total, latemax = 0, 0
  local last, maxgap, count = {}, {}, {}
  local index = {}
  probe = function(self)
    local now = sluice.now()
    local late = now - self:due()
    if not measuring then return end
    local i = index[self]
    local b = math.floor(late * 1e4)
    if b > HMAX then b = HMAX end
    if b < 0 then b = 0 end
    hist[b] = hist[b] + 1
    total = total + 1
    if late > latemax then latemax = late end
    if last[i] then
      local gap = now - last[i]
      if gap > maxgap[i] then maxgap[i] = gap end
    end
    last[i] = now
    count[i] = count[i] + 1
  end

  local insts = {}
  local s = spec_for("samples")
  local t_build = sluice.now()
  for i = 1, n do
    local tname = tables == "own" and ("t" .. i) or nil
    local sp = tname and spec_for(tname) or s
    insts[i] = collector.new(sp, { name = "c" .. i, base_url = base }, tables == "none"
      and { cache = ctx.cache, upstreams = ctx.upstreams } or ctx)
    index[insts[i]] = i
    maxgap[i], count[i] = 0, 0
    if i % 200 == 0 then sluice.sleep(0) end
  end
  local delays = app.first_delays(insts, 100)
  local t0 = sluice.now()
  for i, inst in ipairs(insts) do
    if start == "phase" then
      inst:start({ phase = true })
    else
      inst:start({ first_delay = math.max(0, t0 + delays[inst] - sluice.now()) })
    end
    if i % 200 == 0 then sluice.sleep(0) end
  end
  local built = sluice.now() - t_build
  sluice.sleep(3)
  measuring = true
  local t_from = sluice.now()
  local cpu0 = procinfo.cpu_seconds()
  -- the anchor for lateness: a bare 10 ms timer chain in the same loop
  -- (what the machine and the loop give any timer, framework or not)
  local ahist, atotal = {}, 0
  for i = 0, HMAX do ahist[i] = 0 end
  local function anchor_tick(_, due)
    if not measuring then return end
    local b = math.max(0, math.min(HMAX, math.floor((sluice.now() - due) * 1e4)))
    ahist[b], atotal = ahist[b] + 1, atotal + 1
    sluice.after(0.01, anchor_tick, sluice.now() + 0.01)
  end
  sluice.after(0.01, anchor_tick, sluice.now() + 0.01)
  -- RSS and the Lua heap as they are while running (no forced GC), each second
  local rss_max, heap_max, deadline = 0, 0, t_from + seconds
  while sluice.now() < deadline do
    sluice.sleep(math.min(1, deadline - sluice.now()))
    rss_max = math.max(rss_max, (procinfo.memory()))
    heap_max = math.max(heap_max, collectgarbage("count") * 1024)
  end
  measuring = false
  local window = sluice.now() - t_from
  local cpu = procinfo.cpu_seconds() - cpu0
  local total_rss = rss_max
  local heap_live = lua_bytes()
  local clock = require("sluice.collector.clock").stats()
  for _, inst in ipairs(insts) do inst:stop() end
  for _, inst in ipairs(insts) do inst:drain() end
  local starved = 0
  local expect = math.floor(window / interval) - 1
  for i = 1, n do
    if maxgap[i] > 1.5 * interval or count[i] < expect then starved = starved + 1 end
  end

  print(string.format("%d collectors at %g s, %.1f s window (built and started in %.1f s), tables %s, "
    .. "first runs %s", n, interval, window, built, tables, start))
  print(string.format("idle RSS %.1f MiB; with modules, store, nginx client %.1f MiB (Lua heap %.1f MiB)",
    idle / 2^20, base_rss / 2^20, base_heap / 2^20))
  bench.figure("collectors.idle_rss", idle / 2^20, "MiB")
  bench.figure("collectors.rss_total", total_rss / 2^20, "MiB")
  bench.figure("collectors.rss_per", (total_rss - idle) / n / 1024, "KiB")
  bench.figure("collectors.rss_vs_idle", total_rss / idle, "ratio")
  bench.figure("collectors.lua_heap_max", heap_max / 2^20, "MiB")
  bench.figure("collectors.lua_heap_live", heap_live / 2^20, "MiB")
  print(string.format("collections %d (%.0f/s, expected %.0f/s)", total, total / window, n / interval))
  bench.figure("collectors.collections_per_s", total / window, "1/s")
  bench.figure("collectors.late_p50", percentile(hist, total, 0.50), "ms")
  bench.figure("collectors.late_p99", percentile(hist, total, 0.99), "ms")
  bench.figure("collectors.late_max", latemax * 1000, "ms")
  bench.figure("collectors.timer_late_p50", percentile(ahist, atotal, 0.50), "ms")
  bench.figure("collectors.timer_late_p99", percentile(ahist, atotal, 0.99), "ms")
  bench.figure("collectors.starved", starved, "collectors")
  bench.figure("collectors.cpu_per", cpu / math.max(total, 1) * 1e6, "us")
  bench.figure("collectors.cpu_share", cpu / window, "cores")
  bench.figure("collectors.workers", clock.workers, "tasks")
  bench.figure("collectors.cpu_vs_get", cpu / math.max(total, 1) / get_cpu, "ratio")
  print(string.format("anchor: bare http.get + json + upsert %.1f us CPU", get_cpu * 1e6))
  ng:stop()
  sluice.sleep(0.1)
  db:close()
  remove_db(path)
end

local ok, err = xpcall(function()
  if a1 == "part" then
    run_part(a2, tonumber(a3) or 1000)
  else
    local n = tonumber(a1) or 1000
    local seconds = tonumber(a2) or 20
    local tables = a3 or "shared"
    if work ~= "get" and work ~= "memory" then error("WORK: get or memory, got " .. work) end
    run(n, seconds, tables, a4 or "random")
    if os.getenv("SKIP_PARTS") ~= "1" then parts(n) end
    sluice.shutdown(0)
  end
end, debug.traceback)
for _, ng in ipairs(started) do ng:stop() end -- stop() again is a no-op
if not ok then error(err, 0) end
