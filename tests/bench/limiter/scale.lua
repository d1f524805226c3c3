-- scale.lua -- what the limiter costs per tracked endpoint and per limiter,
-- and whether lim:wait() stays flat as endpoints grow.
--   sluice run --lua-path tests/lua tests/bench/limiter/scale.lua [-- CALLS REPS]
--
-- Memory is read three ways in the same process: malloc'd bytes in use
-- (glibc mallinfo2, through the FFI: the limiter's C state), the Lua heap
-- (collectgarbage "count": handles, registry entries) and RSS
-- (/proc/self/statm). The anchor is a plain Lua table of 100,000 small
-- tables built in the same run. wait() runs outside a task at a rate no
-- pool ever refuses, so every call is admitted at once: the figure is the
-- bookkeeping (endpoint lookup, charging, history), cycling through N
-- endpoint names, as a ratio to the cost with 10 endpoints.
local ffi = require "ffi"
local sluice = require "sluice"
local limiter = require "sluice.limiter"
local figure = require("support.bench").figure

local CALLS = tonumber((select(1, ...))) or 2000000
local REPS = tonumber((select(2, ...))) or 3

ffi.cdef [[
struct sl_bench_mallinfo2 { size_t arena, ordblks, smblks, hblks, hblkhd,
  usmblks, fsmblks, uordblks, fordblks, keepcost; };
struct sl_bench_mallinfo2 mallinfo2(void);
int malloc_trim(size_t pad);
]]

local function rss()
  local f = assert(io.open("/proc/self/statm"))
  local _, res = f:read("*n", "*n")
  f:close()
  return res * 4096
end

local function settle()
  collectgarbage()
  collectgarbage()
  ffi.C.malloc_trim(0)
end

-- {c = malloc'd bytes, lua = Lua heap bytes, rss = bytes}
local function mem()
  settle()
  local mi = ffi.C.mallinfo2() -- heap chunks in use + mmap'd blocks
  return { c = tonumber(mi.uordblks) + tonumber(mi.hblkhd), lua = collectgarbage("count") * 1024, rss = rss() }
end

local function delta(a, b, n)
  return { c = (b.c - a.c) / n, lua = (b.lua - a.lua) / n, rss = (b.rss - a.rss) / n }
end

local function line(what, d)
  print(string.format("%-44s %9.1f B C  %9.1f B Lua  %9.1f B total  %9.1f B RSS", what, d.c, d.lua,
    d.c + d.lua, d.rss))
end

local seq = 0
local function new_limiter(max_endpoints)
  seq = seq + 1
  return limiter.new({ name = "scale" .. seq, rate = 1e9, max_rate = 1e9, burst = 1e11,
    max_endpoints = max_endpoints })
end

print(string.format("limiter scale: %d wait() calls per figure, best of %d", CALLS, REPS))
local start = mem()
print(string.format("process before: %.1f MiB RSS, %.1f MiB malloc'd, %.1f MiB Lua heap", start.rss / 1048576,
  start.c / 1048576, start.lua / 1048576))

-- the anchor: 100,000 small Lua tables
local anchor
do
  local a = mem()
  local t = {}
  for i = 1, 100000 do t[i] = { rate = 10, debt = 0, t = 0, requests = i } end
  local d = delta(a, mem(), 100000)
  line("anchor: a Lua table of 100,000 small tables", d)
  anchor = d.c + d.lua
  figure("limiter.anchor_table_bytes", anchor, "B")
  assert(#t == 100000) -- alive until measured
end

local NAMES = {}
for i = 1, 100000 do NAMES[i] = "/api/v3/ep/" .. i end

-- one empty limiter (the average of 100 of them, so RSS pages show)
local empty
do
  local a = mem()
  local keep = {}
  for i = 1, 100 do keep[i] = new_limiter(1) end
  local d = delta(a, mem(), 100)
  line("one empty limiter", d)
  empty = d.c + d.lua
  figure("limiter.empty_bytes", empty, "B")
  for i = 1, 100 do keep[i]:close() end
end

for _, n in ipairs({ 1000, 10000 }) do
  local a = mem()
  local keep = {}
  for i = 1, n do keep[i] = new_limiter(1) end
  local b = mem()
  local d = delta(a, b, n)
  line(string.format("%d limiters, per limiter", n), d)
  figure(string.format("limiter.limiters_%d_bytes", n), (b.c - a.c) + (b.lua - a.lua), "B")
  figure(string.format("limiter.limiters_%d_rss", n), b.rss - a.rss, "B")
  for i = 1, n do keep[i]:close() end
end

-- per tracked endpoint, and wait() over N endpoints
local base_ns, lua_base
for _, n in ipairs({ 10, 1000, 100000 }) do
  local lim = new_limiter(n)
  local e = mem()
  for i = 1, n do assert(lim:wait(NAMES[i])) end
  local b = mem()
  assert(lim:stats().endpoints_tracked == n)
  local d = delta(e, b, n)
  line(string.format("%d endpoints, per endpoint", n), d)
  figure(string.format("limiter.endpoint_bytes_%d", n), d.c + d.lua, "B")
  figure(string.format("limiter.endpoint_rss_%d", n), d.rss, "B")
  local best = math.huge
  local wait = lim.wait
  for _ = 1, REPS do
    local k = 0
    local t0 = sluice.now()
    for _ = 1, CALLS do
      k = k + 1
      if k > n then k = 1 end
      wait(lim, NAMES[k])
    end
    best = math.min(best, (sluice.now() - t0) / CALLS * 1e9)
  end
  base_ns = base_ns or best
  print(string.format("%-44s %9.1f ns  (%.2fx the 10-endpoint cost)", string.format("wait() over %d endpoints", n),
    best, best / base_ns))
  -- the same walk over a plain Lua table keyed by the same names (one
  -- counter bumped): what the memory hierarchy costs Lua itself
  local tbl, lbest = {}, math.huge
  for i = 1, n do tbl[NAMES[i]] = { requests = 0 } end
  for _ = 1, REPS do
    local k = 0
    local t0 = sluice.now()
    for _ = 1, CALLS do
      k = k + 1
      if k > n then k = 1 end
      local rec = tbl[NAMES[k]]
      rec.requests = rec.requests + 1
    end
    lbest = math.min(lbest, (sluice.now() - t0) / CALLS * 1e9)
  end
  lua_base = lua_base or lbest
  print(string.format("%-44s %9.1f ns  (%.2fx its 10-name cost)", string.format("  Lua table lookup over %d names", n),
    lbest, lbest / lua_base))
  figure(string.format("limiter.table_lookup_ratio_%d", n), lbest / lua_base, "ratio")
  figure(string.format("limiter.wait_ns_%d", n), best, "ns")
  figure(string.format("limiter.wait_ratio_%d", n), best / base_ns, "ratio")
  lim:close()
end
print(string.format("an empty limiter costs %.2f anchor tables; see tests/bench/README.md", empty / anchor))
