--- soak/scale.lua -- the operator surface at N collectors: GET /metrics's
-- render and a reload, timed in one process (no network: the collectors
-- are started with their first run an hour away, so only their state is
-- there). `sluice run --lua-path tests/lua tests/bench/soak/scale.lua
-- --control none -- [N (500)] [ROUNDS (5)]`.
--
-- Figures (ratios to anchors measured in the same run):
--   soak.metrics_ms          metrics.render() at N collectors, median, ms
--                            of CPU time (os.clock), as the anchors
--   soak.metrics_vs_concat   that / table.concat of the same lines (the
--                            least any renderer of those bytes does)
--   soak.reload_ms           app.reload() of the same N collectors, median
--   soak.reload_stall_ms     the longest the loop went without turning
--                            during a reload (a task asking to wake every
--                            5 ms measures the gaps)
--   soak.reload_vs_build     reload / building the N instances once
--                            (collector.new of an already compiled spec)
local sluice = require "sluice"
local metrics = require "sluice.metrics"
local app_mod = require "sluice.app"
local log = require "sluice.log"
local figure = require("support.bench").figure

local N = tonumber(arg[1]) or 500
local ROUNDS = tonumber(arg[2]) or 5
-- run from the worktree's root (as tests/bench/run.sh does)
local root = assert(os.getenv("PWD"), "scale.lua: PWD is not set")
local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p " .. dir) == 0)
local file = dir .. "/scale.lua"

log.level("error")
local f = assert(io.open(file, "w"))
f:write(string.format([[
local collectors = {}
for i = 1, %d do
  collectors[i] = { file = %q, name = string.format("c%%04d", i), base_url = "http://127.0.0.1:9" }
end
return { store = %q, log = { level = "warning" }, collectors = collectors }
]], N, root .. "/tests/bench/soak/collector.lua", dir .. "/scale.db"))
f:close()

-- CPU time (os.clock): the machine is shared, and what a render costs the
-- loop is its CPU; the reload's and the stall's are wall clock
local clock = os.clock

local function median(xs)
  table.sort(xs)
  return xs[math.ceil(#xs / 2)]
end

local app = app_mod.build(dofile(file), file)
for _, inst in ipairs(app.order) do inst:start({ first_delay = 3600 }) end

-- /metrics: the render, then the anchor (the same lines joined)
local text = metrics.render()
local lines = {}
for line in text:gmatch("[^\n]*\n") do lines[#lines + 1] = line end
local render_ms, concat_ms = {}, {}
for _ = 1, ROUNDS do
  collectgarbage()
  local t0 = clock()
  local out = metrics.render()
  render_ms[#render_ms + 1] = (clock() - t0) * 1000
  assert(#out > 0)
  t0 = clock()
  local bytes = 0
  for _ = 1, 10 do bytes = bytes + #table.concat(lines) end
  concat_ms[#concat_ms + 1] = (clock() - t0) * 100
  assert(bytes == 10 * #text)
end
local rm, cm = median(render_ms), median(concat_ms)
print(string.format("GET /metrics at %d collectors: %d bytes, %d lines; render %.1f ms median (%.1f-%.1f),"
  .. " table.concat of its lines %.2f ms", N, #text, #lines, rm, render_ms[1], render_ms[#render_ms], cm))
figure("soak.metrics_ms", rm, "ms")
figure("soak.metrics_vs_concat", rm / cm, "ratio")

-- a reload of the same configuration, and the loop's longest gap meanwhile
local stall, ticking = 0, true
local ticker = sluice.spawn(function()
  local last = sluice.now()
  while ticking do
    sluice.sleep(0.005)
    local now = sluice.now()
    if now - last > stall then stall = now - last end
    last = now
  end
end)
local reload_ms, stalls = {}, {}
for _ = 1, ROUNDS do
  collectgarbage()
  sluice.sleep(0.05)
  stall = 0
  local t0 = sluice.now()
  assert(app_mod.reload("bench"))
  reload_ms[#reload_ms + 1] = (sluice.now() - t0) * 1000
  sluice.sleep(0.05)
  stalls[#stalls + 1] = stall * 1000
end
ticking = false
sluice.wait(ticker)
-- the anchor: building the instances once from the compiled spec
local collector = require "sluice.collector"
local spec = dofile(root .. "/tests/bench/soak/collector.lua")
local t0 = clock()
local built = {}
for i = 1, N do
  built[#built + 1] = collector.new(spec, { name = string.format("b%04d", i), base_url = "http://127.0.0.1:9" },
    { store = app.store, cache = app.cache })
end
local build_ms = (clock() - t0) * 1000
assert(#built == N)
local rl, st = median(reload_ms), median(stalls)
print(string.format("reload of %d collectors: %.0f ms median (%.0f-%.0f); loop stalled %.0f ms median (%.0f-%.0f);"
  .. " building %d instances of a compiled spec %.0f ms", N, rl, reload_ms[1], reload_ms[#reload_ms], st, stalls[1],
  stalls[#stalls], N, build_ms))
figure("soak.reload_ms", rl, "ms")
figure("soak.reload_stall_ms", st, "ms")
figure("soak.reload_vs_build", rl / build_ms, "ratio")

for _, inst in ipairs(app.order) do inst:stop() end
app.store:close()
app_mod.current = nil
os.execute("rm -rf " .. dir)
sluice.shutdown(0)
