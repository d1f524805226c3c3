-- exchanges.lua -- the five exchange collectors against their mocks:
-- rows/s stored, CPU, RSS and the lag from a run's due time to its commit.
--   sluice run --lua-path tests/lua tests/bench/exchanges.lua [-- SECONDS SYMBOLS LIMITER PATH]
-- binance, bybit, bitget, gate and htx, SYMBOLS symbols each (default 20:
-- half spot BASE/USDT, half linear BASE/USDT:USDT), tickers every 1 s and
-- order books (depth 50) every 1 s, funding and klines off, into a fresh
-- SQLite file (PATH), measured for SECONDS (default 30) after 5 s of
-- warm-up. LIMITER "default" keeps each exchange's own limiter (what a
-- user gets); "open" raises it to 1000 req/s, to see the runtime alone
-- (the mocks still answer their exchange's limits).
-- The mocks run in a second sluice process (this file with "mocks" as its
-- first argument), so that they do not share the collectors' CPU; it also
-- serves a second set with the rate limits lifted, for the anchor below.
-- The lag of a run: sluice.now() when its rows are committed (a sink's
-- publish, right after the commit) minus collector:due(dataset), the time
-- the run was due (jitter and overrun delays included).
-- Anchors, measured in the same run: the requests the collectors made,
-- replayed by 10 tasks with plain http.get + json.decode against the
-- unlimited mocks (the mocks' capacity, and the client's CPU per request);
-- the rows stored, upserted again through db:upsert into a fresh file in
-- batches of the runs' size (the store's share of the collectors' CPU).
-- Prints figures; not a test.
local sluice = require "sluice"
local collector = require "sluice.collector"
local store = require "sluice.store"
local http = require "sluice.http"
local json = require "sluice.json"
local log = require "sluice.log"
local procinfo = require "sluice.procinfo"
local tables = require "sluice.exchange.tables"
local options = require "sluice.options"
local fx = require "support.store"

local EXCHANGES = { "binance", "bybit", "bitget", "gate", "htx" }
local BASES = { "BTC", "ETH", "BNB", "SOL", "XRP", "ADA", "DOGE", "TRX", "DOT", "LTC", "LINK", "AVAX",
  "MATIC", "ATOM", "UNI", "FIL", "ETC", "APT", "NEAR", "OP" }
local WARMUP = 5
local DATASET_OF = { tickers = "tickers", order_books = "order_book" }

local a1, a2, a3, a4 = ...

-- The unified symbols of n: the first half spot, the rest linear.
local function unified(n)
  local out, spot = {}, math.ceil(n / 2)
  for i = 1, spot do out[#out + 1] = BASES[i] .. "/USDT" end
  for i = 1, n - spot do out[#out + 1] = BASES[i] .. "/USDT:USDT" end
  return out
end

-- Each mock's `symbols` (and binance's `linear`) for those symbols.
local function mock_options(name, n)
  local spot, raw = math.ceil(n / 2), {}
  for i = 1, math.max(spot, n - spot) do raw[i] = BASES[i] .. "USDT" end
  if name == "binance" then return { symbols = raw, linear = raw } end
  if name == "bybit" then return { symbols = raw } end
  return { symbols = unified(n) }
end

-- Rate limits lifted, for the anchor's plain loop.
local UNLIMITED = {
  binance = { weight_limit = 1e9, futures_weight_limit = 1e9 },
  bybit = { endpoint_limit = 1e9, ip_limit = 1e9 },
  bitget = { endpoint_limit = 1e9, ip_limit = 1e9 },
  gate = { limit = 1e9 },
  htx = { limit = 1e9 },
}

local function read(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- user + system CPU seconds of process pid (procinfo's reading, for another process).
local function cpu_of(pid)
  local rest = (read("/proc/" .. pid .. "/stat") or ""):match(".*%) (.*)$")
  local f = {}
  for w in (rest or ""):gmatch("%S+") do f[#f + 1] = w end
  return (tonumber(f[12]) + tonumber(f[13])) / procinfo.USER_HZ
end

local function mem_kib(pid, field)
  return tonumber((read("/proc/" .. pid .. "/status") or ""):match(field .. ":%s*(%d+) kB"))
end

local function my_pid()
  return tonumber(read("/proc/self/stat"):match("^(%d+)"))
end

-- --- the mocks' process ----------------------------------------------------

if a1 == "mocks" then
  local n, lifetime = tonumber(a2), tonumber(a3)
  log.output("/dev/null")
  local urls = {}
  for _, name in ipairs(EXCHANGES) do
    local mock = require("sluice.mock." .. name)
    local o = mock_options(name, n)
    urls[#urls + 1] = name .. "=" .. mock.start(o).url
    for k, v in pairs(UNLIMITED[name]) do o[k] = v end
    urls[#urls + 1] = name .. "_open=" .. mock.start(o).url
  end
  io.stdout:write("ready ", my_pid(), " ", table.concat(urls, " "), "\n")
  io.stdout:flush()
  sluice.sleep(lifetime) -- the collectors' process kills it sooner
  os.exit(0)
end

-- --- the collectors' process -------------------------------------------------

local seconds = tonumber(a1) or 30
local nsym = tonumber(a2) or 20
local limits = a3 or "default"
local path = a4 or fx.tmpdb()
assert(limits == "default" or limits == "open", "LIMITER must be default or open")
fx.remove_db(path)

local exe = io.popen("readlink /proc/" .. my_pid() .. "/exe"):read("*l")
local script = debug.getinfo(1, "S").source:sub(2)
local mocks_proc = assert(io.popen(string.format("%s run --lua-path tests/lua %s -- mocks %d %d",
  exe, script, nsym, seconds + WARMUP + 120)))
local line = mocks_proc:read("*l")
local mock_pid = tonumber(line and line:match("^ready (%d+)"))
assert(mock_pid, "the mocks' process did not start: " .. tostring(line))
local URL = {}
for name, url in line:gmatch("(%S+)=(%S+)") do URL[name] = url end

log.output("/dev/null")
local db = assert(store.open(path))
local syms = unified(nsym)

-- What the sinks see, from the start of the measured window.
local measuring = false
local window_rows = {}      -- exchange -> table -> rows
local lags = {}             -- exchange.dataset -> {seconds}
local batches = {}          -- table -> {batch sizes}
local requests = {}         -- every URL the collectors requested in the window, in order
local port_exchange = {}
for _, name in ipairs(EXCHANGES) do port_exchange[URL[name]:match(":(%d+)$")] = name end

http.add_observer(function(url)
  if measuring then requests[#requests + 1] = url end
end)

local instances = {}
for _, name in ipairs(EXCHANGES) do
  local cfg = {
    base_url = URL[name], symbols = syms, depth = 50,
    datasets = { tickers = { interval = 1 }, order_book = { interval = 1 },
      funding = { enabled = false }, klines = { enabled = false } },
  }
  if limits == "open" then cfg.limiter = { rate = 1000, max_rate = 1000 } end
  local c = collector.new(require("collectors." .. name), cfg, { store = db })
  window_rows[name] = { tickers = 0, order_books = 0 }
  c:add_sink({ publish = function(_, tname, rows)
    if not measuring then return end
    local lag = sluice.now() - c:due(DATASET_OF[tname])
    local key = name .. "." .. DATASET_OF[tname]
    lags[key] = lags[key] or {}
    table.insert(lags[key], lag)
    window_rows[name][tname] = window_rows[name][tname] + #rows
    batches[tname] = batches[tname] or {}
    table.insert(batches[tname], #rows)
  end })
  instances[name] = c
end

local function counters()
  local out = {}
  for name, c in pairs(instances) do
    local cn = c:counters()
    out[name] = { requests = cn.total_requests, failed = cn.failed_requests,
      runs_failed = cn.collections_failed, runs_skipped = cn.collections_skipped }
  end
  return out
end

for _, name in ipairs(EXCHANGES) do instances[name]:start() end
sluice.sleep(WARMUP)
local c0, cpu0, mcpu0, t0 = counters(), procinfo.cpu_seconds(), cpu_of(mock_pid), sluice.now()
measuring = true
sluice.sleep(seconds)
measuring = false
local wall = sluice.now() - t0
local cpu, mcpu, c1 = procinfo.cpu_seconds() - cpu0, cpu_of(mock_pid) - mcpu0, counters()
local rss, hwm = mem_kib("self", "VmRSS"), mem_kib("self", "VmHWM")
local mrss = mem_kib(mock_pid, "VmRSS")
for _, name in ipairs(EXCHANGES) do instances[name]:stop() end
for _, name in ipairs(EXCHANGES) do instances[name]:drain() end

-- --- anchor 1: the same requests, plain http.get + json.decode -----------------

-- The URLs requested, aimed at the unlimited mocks.
local replay = {}
for i, url in ipairs(requests) do
  local port = url:match("^http://[^/]+:(%d+)")
  local name = port_exchange[port]
  replay[i] = URL[name .. "_open"] .. url:match("^http://[^/]+(/.*)$")
end
local LOOP_SECONDS, LOOP_TASKS = 5, 10
local done, bad, next_i = 0, 0, 1
local lcpu0, lt0 = procinfo.cpu_seconds(), sluice.now()
local lmcpu0 = cpu_of(mock_pid)
local deadline = lt0 + LOOP_SECONDS
local tasks = {}
for k = 1, LOOP_TASKS do
  tasks[k] = sluice.spawn(function()
    while sluice.now() < deadline do
      local url = replay[next_i]
      next_i = next_i % #replay + 1
      local res = http.get(url)
      if res and res.status == 200 and json.decode(res.body) then done = done + 1 else bad = bad + 1 end
    end
  end)
end
for _, t in ipairs(tasks) do sluice.wait(t) end
local lwall = sluice.now() - lt0
local lcpu, lmcpu = procinfo.cpu_seconds() - lcpu0, cpu_of(mock_pid) - lmcpu0

-- --- anchor 2: the rows stored, upserted again ---------------------------------

local adb_path = fx.tmpdb()
local adb = assert(store.open(adb_path))
local defs = tables.tables()
local stored, store_seconds = {}, {}
for _, tname in ipairs({ "tickers", "order_books" }) do
  assert(adb:define(options.merge(defs[tname], { name = tname })))
  local all = db:query("SELECT * FROM " .. tname)
  stored[tname] = #all
  -- the mean batch of the collectors' commits
  local sizes, sum = batches[tname] or { 1 }, 0
  for _, s in ipairs(sizes) do sum = sum + s end
  local size = math.max(1, math.floor(sum / #sizes + 0.5))
  local st0 = sluice.now()
  for i = 1, #all, size do
    local b = {}
    for j = i, math.min(#all, i + size - 1) do b[#b + 1] = all[j] end
    assert(adb:upsert(tname, b))
  end
  store_seconds[tname] = (sluice.now() - st0) / math.max(1, #all)
end
adb:close()
fx.remove_db(adb_path)

os.execute("kill " .. mock_pid)
mocks_proc:close()
db:close()
fx.remove_db(path)

-- --- the figures ------------------------------------------------------------

local function pct(list, p)
  if not list or #list == 0 then return 0 / 0 end
  table.sort(list)
  return list[math.max(1, math.ceil(#list * p))]
end

local commit = (io.popen("git rev-parse --short HEAD 2>/dev/null"):read("*l")) or "?"
print(string.format("exchange collectors benchmark: %d exchanges x %d symbols (%d spot, %d linear), "
  .. "tickers and order books (depth 50) every 1 s, limiter %s, %.1f s measured after %d s, commit %s",
  #EXCHANGES, nsym, math.ceil(nsym / 2), nsym - math.ceil(nsym / 2), limits, wall, WARMUP, commit))
print(string.format("%-8s %-10s %6s %8s %8s %8s %8s %6s %6s %6s", "exchange", "dataset", "runs",
  "rows/s", "lag p50", "lag p99", "lag max", "reqs/s", "failed", "runs!"))
local all_lags, total = { tickers = {}, order_book = {} }, { tickers = 0, order_books = 0 }
local total_req = 0
for _, name in ipairs(EXCHANGES) do
  local d0, d1 = c0[name], c1[name]
  local req = d1.requests - d0.requests
  total_req = total_req + req
  for _, tname in ipairs({ "tickers", "order_books" }) do
    local ds = DATASET_OF[tname]
    local l = lags[name .. "." .. ds] or {}
    for _, v in ipairs(l) do table.insert(all_lags[ds], v) end
    total[tname] = total[tname] + window_rows[name][tname]
    print(string.format("%-8s %-10s %6d %8.1f %7.0fms %7.0fms %7.0fms %6s %6s %6s", name, ds, #l,
      window_rows[name][tname] / wall, pct(l, 0.5) * 1000, pct(l, 0.99) * 1000, pct(l, 1) * 1000,
      tname == "tickers" and string.format("%.1f", req / wall) or "",
      tname == "tickers" and tostring(d1.failed - d0.failed) or "",
      tname == "tickers" and tostring((d1.runs_failed - d0.runs_failed) + (d1.runs_skipped - d0.runs_skipped)) or ""))
  end
end
for _, tname in ipairs({ "tickers", "order_books" }) do
  local ds = DATASET_OF[tname]
  print(string.format("%-8s %-10s %6d %8.1f %7.0fms %7.0fms %7.0fms", "all", ds, #all_lags[ds],
    total[tname] / wall, pct(all_lags[ds], 0.5) * 1000, pct(all_lags[ds], 0.99) * 1000,
    pct(all_lags[ds], 1) * 1000))
  require("support.bench").figure("exchanges." .. ds .. "_lag_p99", pct(all_lags[ds], 0.99) * 1000, "ms")
end
local rows_s = (total.tickers + total.order_books) / wall
print(string.format("  rows/s stored           %.1f (expected %d: %d symbols x 5 x 2 datasets)",
  rows_s, 2 * 5 * nsym, nsym))
require("support.bench").figure("exchanges.rows_vs_expected", rows_s / (2 * 5 * nsym), "ratio")
print(string.format("  requests/s              %.1f (%d requests)", total_req / wall, total_req))
print(string.format("  collector CPU           %.1f%% of one core (%.2f s); %.0f us per request, %.0f us per row",
  cpu / wall * 100, cpu, cpu / total_req * 1e6, cpu / (rows_s * wall) * 1e6))
print(string.format("  mocks' process CPU      %.1f%% of one core", mcpu / wall * 100))
print(string.format("  collector RSS           %.1f MiB (peak %.1f MiB); mocks' process %.1f MiB",
  rss / 1024, hwm / 1024, mrss / 1024))
require("support.bench").figure("exchanges.cpu_per_request", cpu / total_req * 1e6, "us")
require("support.bench").figure("exchanges.rss", rss / 1024, "MiB")
print(string.format("anchor: the %d requests replayed, plain http.get + json.decode, %d tasks, %.1f s, "
  .. "unlimited mocks", #replay, LOOP_TASKS, lwall))
print(string.format("  %.0f req/s (%d ok, %d not); collectors' rate / this = %.3f", done / lwall, done, bad,
  (total_req / wall) / (done / lwall)))
print(string.format("  client CPU %.0f us per request; collectors' CPU per request / this = %.2f; "
  .. "mocks %.0f us per request", lcpu / math.max(1, done) * 1e6,
  (cpu / total_req) / (lcpu / math.max(1, done)), lmcpu / math.max(1, done) * 1e6))
require("support.bench").figure("exchanges.cpu_per_request_vs_plain_get",
  (cpu / total_req) / (lcpu / math.max(1, done)), "ratio")
print(string.format("anchor: the %d + %d rows stored, upserted again into a fresh file in the runs' batch sizes",
  stored.tickers, stored.order_books))
for _, tname in ipairs({ "tickers", "order_books" }) do
  print(string.format("  %-12s %.0f us per row; at the collectors' rate %.1f%% of a core, %.2f of their CPU",
    tname, store_seconds[tname] * 1e6, store_seconds[tname] * total[tname] / wall * 100,
    store_seconds[tname] * total[tname] / cpu))
  require("support.bench").figure("exchanges.store_share_" .. tname, store_seconds[tname] * total[tname] / cpu, "ratio")
end
