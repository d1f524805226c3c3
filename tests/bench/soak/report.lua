--- soak/report.lua -- the soak's figures and plot, from what soak.sh
-- sampled. `sluice run tests/bench/soak/report.lua -- OUT LOAD_START
-- LOAD_END COLLECTORS EXIT_CODE` reads OUT/samples.csv, OUT/events.csv,
-- OUT/sluice.log (JSON lines) and OUT/mock_stats.json; prints the figures
-- (and @figure soak.* lines), writes OUT/soak.svg (one panel per series,
-- events as vertical lines) and OUT/summary.txt (key=value, for
-- tests/integration/soak_short.sh).
local json = require "sluice.json"
local bench_ok, bench = pcall(require, "support.bench")

local out, load_start, load_end, n, exit_code = arg[1], tonumber(arg[2]), tonumber(arg[3]), arg[4], arg[5]
if not (out and load_start and load_end) then
  error("usage: report.lua OUT LOAD_START LOAD_END COLLECTORS EXIT_CODE", 0)
end

local function figure(name, value, unit)
  if bench_ok then return bench.figure(name, value, unit) end
  io.write(string.format("@figure %s %.6g %s\n", name, value, unit))
end

local function read_csv(path)
  local rows, header = {}, nil
  for line in io.lines(path) do
    local cells = {}
    for cell in (line .. ","):gmatch("([^,]*),") do cells[#cells + 1] = cell end
    if not header then
      header = cells
    else
      local row = {}
      for i, name in ipairs(header) do row[name] = tonumber(cells[i]) or cells[i] end
      rows[#rows + 1] = row
    end
  end
  return rows
end

local samples = read_csv(out .. "/samples.csv")
local events = read_csv(out .. "/events.csv")

-- least-squares slope of y over t (seconds) in [from, to], per minute
local function slope(key, from, to)
  local sx, sy, sxx, sxy, k = 0, 0, 0, 0, 0
  for _, s in ipairs(samples) do
    if s.t >= from and s.t <= to and type(s[key]) == "number" then
      local x = s.t / 60
      sx, sy, sxx, sxy, k = sx + x, sy + s[key], sxx + x * x, sxy + x * s[key], k + 1
    end
  end
  if k < 2 or k * sxx - sx * sx == 0 then return 0, k end
  return (k * sxy - sx * sy) / (k * sxx - sx * sx), k
end

-- the last sample before t (with a number for key, when given)
local function last_before(t, key)
  local found
  for _, s in ipairs(samples) do
    if s.t < t and (not key or type(s[key]) == "number") then found = s end
  end
  return found
end

local function max_in(key, from, to)
  local m = 0
  for _, s in ipairs(samples) do
    if s.t >= from and s.t <= to and type(s[key]) == "number" and s[key] > m then m = s[key] end
  end
  return m
end

local base = last_before(load_start) or samples[1]
local final = samples[#samples]
local mid = (load_start + load_end) / 2
local rss_slope = slope("rss_kib", load_start, load_end)
local rss_slope2, k2 = slope("rss_kib", mid, load_end)
-- the fd counts soak.sh wrote at the end of the baseline and of the idle
-- tail, each with the connections to the mock libcurl keeps idle in its
-- connection cache (bounded by the cache, not a leak): own = fds - those
local function fd_dump(name)
  local counts = {}
  local f = io.open(out .. "/" .. name)
  if f then
    for line in f:lines() do
      local key, v = line:match("^(%a[%a_]*) (%d+)$")
      if key then counts[key] = tonumber(v) end
    end
    f:close()
  end
  return counts.fds or 0, counts.mock_connections or 0
end
local fds_base, pooled_base = fd_dump("fds_baseline.txt")
local fds_after, pooled_after = fd_dump("fds_after.txt")
local fd_delta = (fds_after - pooled_after) - (fds_base - pooled_base)
-- live tasks: the last reading before the load, and the last one of all
local tasks_base = (last_before(load_start, "tasks") or {}).tasks
local tasks_after = (last_before(math.huge, "tasks") or {}).tasks
local task_delta = tasks_base and tasks_after and tasks_after - tasks_base
local at_end = last_before(load_end + 0.5) or final

-- the log: warnings and errors, injected or not. A line is an injected
-- fault's when its message and error are what the mock's faults cause
-- (its statuses, a request held past the timeout, a connection closed
-- unanswered, the breaker they open) or Redis being away while stopped.
-- A connect timeout is one too: when the collectors whose connections the
-- reset phase closed all reconnect at once, the mock's listen backlog (128,
-- libevent's) overflows, the kernel drops the SYN and retries it after 1 s,
-- past the collectors' 1 s timeout (TcpExtListenOverflows in `nstat`).
local INJECTED = {
  { "^collection failed$", "HTTP 50[03]$" }, { "^collection failed$", "HTTP 429$" },
  { "^collection failed$", "Empty reply from server$" },
  { "^collection failed$", "Operation timed out after %d+ milliseconds with 0 bytes received$" },
  { "^collection failed$", "Connection timed out after %d+ milliseconds$" },
  { "^collection failed$", "Connection reset by peer" }, { "^collection failed$", "Recv failure" },
  { "^collection failed$", "circuit breaker c%d+ is open$" },
  { "^circuit breaker state change$" }, { "^collection skipped: circuit breaker open$" },
  { "^redis unreachable: using local state until it is back$" },
}
local function injected(entry)
  local msg, err = tostring(entry.msg), tostring(entry.error)
  for _, p in ipairs(INJECTED) do
    if msg:find(p[1]) and (not p[2] or err:find(p[2])) then return true end
  end
  return false
end
local levels, unexpected, unexpected_n, injected_n = {}, {}, 0, 0
local lf = io.open(out .. "/sluice.log")
if lf then
  for line in lf:lines() do
    local entry = json.decode(line)
    if type(entry) ~= "table" then
      unexpected_n = unexpected_n + 1
      if #unexpected < 20 then unexpected[#unexpected + 1] = "(not JSON) " .. line:sub(1, 300) end
    else
      local level = tostring(entry.level)
      levels[level] = (levels[level] or 0) + 1
      if level == "warning" or level == "warn" or level == "error" or level == "fatal" then
        if injected(entry) then
          injected_n = injected_n + 1
        else
          unexpected_n = unexpected_n + 1
          if #unexpected < 20 then unexpected[#unexpected + 1] = line:sub(1, 300) end
        end
      end
    end
  end
  lf:close()
end

local function fmt(x) return string.format("%.1f", x) end
print(string.format("samples: %d, load %d s (%s collectors), sluice exited %s", #samples,
  load_end - load_start, n, exit_code))
print(string.format("RSS: baseline %.1f MiB, end of load %.1f MiB, peak %.1f MiB, after %.1f MiB",
  base.rss_kib / 1024, at_end.rss_kib / 1024, max_in("rss_kib", 0, 1e12) / 1024, final.rss_kib / 1024))
print(string.format("RSS slope over the load: %s KiB/min; its second half: %s KiB/min (%d samples)",
  fmt(rss_slope), fmt(rss_slope2), k2))
-- the last sample, after soak.sh's full collection and malloc_trim: the
-- floor, against the baseline
local settled
for _, e in ipairs(events) do
  if e.event == "settled" then settled = e.t end
end
if settled and final.t >= settled and type(final.lua_kib) == "number" then
  print(string.format("settled (full GC, malloc_trim): RSS %.1f MiB, Lua heap %.1f MiB, malloc in use %.1f MiB,"
    .. " free %.1f MiB (baseline: RSS %.1f, Lua %.1f, malloc %.1f + %.1f free)", final.rss_kib / 1024,
    final.lua_kib / 1024, (final.c_kib or 0) / 1024, (final.c_free_kib or 0) / 1024, base.rss_kib / 1024,
    (base.lua_kib or 0) / 1024, (base.c_kib or 0) / 1024, (base.c_free_kib or 0) / 1024))
  figure("soak.settled_rss", final.rss_kib / 1024, "MiB")
  figure("soak.settled_lua", final.lua_kib / 1024, "MiB")
  if type(final.c_kib) == "number" then figure("soak.settled_malloc", final.c_kib / 1024, "MiB") end
  -- soak.sh flushes the JIT's traces after that sample: the heap they held
  for _, e in ipairs(events) do
    local traces, kib = tostring(e.event):match("^jit (%d+) traces (%-?%d+) KiB$")
    if traces then
      print(string.format("  of the settled Lua heap, %.1f MiB is the JIT's %s compiled traces (freed by jit.flush)",
        tonumber(kib) / 1024, traces))
      figure("soak.settled_lua_traces", tonumber(kib) / 1024, "MiB")
    end
  end
end
local c_slope2, c_k2 = slope("c_kib", mid, load_end)
if c_k2 > 1 then
  print(string.format("malloc in use, slope over the second half: %s KiB/min (peak %.1f MiB; free in its arenas"
    .. " peak %.1f MiB)", fmt(c_slope2), max_in("c_kib", 0, 1e12) / 1024, max_in("c_free_kib", 0, 1e12) / 1024))
end
local lua_slope2, lua_k2 = slope("lua_kib", mid, load_end)
if lua_k2 > 1 then
  print(string.format("Lua heap slope over the second half: %s KiB/min (peak %.1f MiB)", fmt(lua_slope2),
    max_in("lua_kib", 0, 1e12) / 1024))
end
print(string.format("fds: baseline %d (%d of them idle connections to the mock), peak %d, after %d (%d);"
  .. " delta without those: %d", fds_base, pooled_base, max_in("fds", 0, 1e12), fds_after, pooled_after, fd_delta))
print(string.format("tasks: baseline %s, peak %d, after %s (delta %s)", tostring(tasks_base),
  max_in("tasks", 0, 1e12), tostring(tasks_after), tostring(task_delta)))
print(string.format("collections during the load: %d succeeded; %d error lines in the log", max_in("collections_ok", 0,
  1e12), final.log_errors))
print(string.format("SQLite: file peak %d KiB, WAL peak %d KiB; at the end %d + %d KiB",
  max_in("db_kib", 0, 1e12), max_in("wal_kib", 0, 1e12), final.db_kib, final.wal_kib))
local reload_ms = {}
for _, e in ipairs(events) do
  local ms = tostring(e.event):match("^reload %d took (%d+) ms$")
  if ms then reload_ms[#reload_ms + 1] = tonumber(ms) end
end
table.sort(reload_ms)
if #reload_ms > 0 then
  print(string.format("reloads: %d, POST /reload answered in %d ms median, %d ms at most", #reload_ms,
    reload_ms[math.ceil(#reload_ms / 2)], reload_ms[#reload_ms]))
end
local mf = io.open(out .. "/mock_stats.json")
if mf then
  print("mock answered: " .. mf:read("*a"):gsub("%s+$", ""))
  mf:close()
end
local by_level = {}
for level, count in pairs(levels) do by_level[#by_level + 1] = level .. " " .. count end
table.sort(by_level)
print(string.format("log: %d warnings/errors from injected faults, %d not (lines by level: %s)", injected_n,
  unexpected_n, table.concat(by_level, ", ")))
for _, u in ipairs(unexpected) do print("  unexpected: " .. u) end

figure("soak.rss_slope", rss_slope, "KiB/min")
figure("soak.rss_slope_second_half", rss_slope2, "KiB/min")
figure("soak.rss_peak", max_in("rss_kib", 0, 1e12) / 1024, "MiB")
figure("soak.fd_delta", fd_delta, "fds")
if task_delta then figure("soak.task_delta", task_delta, "tasks") end
figure("soak.unexpected_errors", unexpected_n, "lines")
if #reload_ms > 0 then figure("soak.reload_max", reload_ms[#reload_ms], "ms") end

local sf = assert(io.open(out .. "/summary.txt", "w"))
for _, kv in ipairs({
  { "rss_slope_kib_min", rss_slope }, { "rss_slope2_kib_min", rss_slope2 },
  { "rss_base_kib", base.rss_kib }, { "rss_peak_kib", max_in("rss_kib", 0, 1e12) },
  { "fds_base", fds_base }, { "fds_after", fds_after }, { "pooled_base", pooled_base },
  { "pooled_after", pooled_after }, { "fd_delta", fd_delta }, { "fds_peak", max_in("fds", 0, 1e12) },
  { "task_delta", task_delta or "unknown" }, { "tasks_base", tasks_base or "unknown" },
  { "tasks_after", tasks_after or "unknown" },
  { "tasks_peak", max_in("tasks", 0, 1e12) },
  { "collections_ok", max_in("collections_ok", 0, 1e12) }, { "log_errors", final.log_errors },
  { "injected_lines", injected_n }, { "unexpected_lines", unexpected_n }, { "exit_code", exit_code },
}) do
  sf:write(kv[1], "=", type(kv[2]) == "number" and string.format("%.6g", kv[2]) or tostring(kv[2]), "\n")
end
sf:close()

-- the plot: one panel per series, time in minutes along the bottom
local SERIES = {
  { key = "rss_kib", label = "RSS (MiB)", scale = 1 / 1024, color = "#c0392b" },
  { key = "lua_kib", label = "Lua heap (MiB)", scale = 1 / 1024, color = "#b7950b" },
  { key = "c_kib", label = "malloc in use (MiB)", scale = 1 / 1024, color = "#1abc9c" },
  { key = "c_free_kib", label = "malloc free, kept (MiB)", scale = 1 / 1024, color = "#5d6d7e" },
  { key = "fds", label = "open fds", scale = 1, color = "#2471a3" },
  { key = "tasks", label = "live tasks", scale = 1, color = "#229954" },
  { key = "db_kib", label = "SQLite file (MiB)", scale = 1 / 1024, color = "#7d3c98" },
  { key = "wal_kib", label = "SQLite WAL (MiB)", scale = 1 / 1024, color = "#ca6f1e" },
}
local W, PH, L, R, TOP, GAP = 900, 130, 70, 20, 40, 30
local H = TOP + #SERIES * (PH + GAP) + 30
local tmax = math.max(final.t, 1)
local svg = {
  string.format('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif"'
    .. ' font-size="11">', W, H),
  string.format('<rect width="%d" height="%d" fill="white"/>', W, H),
  string.format('<text x="%d" y="20" font-size="13">sluice soak: %s collectors, %d s of load, a sample every'
    .. ' %.0f s (grey: reloads; red: Redis stopped and started)</text>', L, n, load_end - load_start,
    (final.t - samples[1].t) / math.max(#samples - 1, 1)),
}
local function x_of(t) return L + (W - L - R) * t / tmax end
for i, series in ipairs(SERIES) do
  local y0 = TOP + (i - 1) * (PH + GAP)
  local vmax = 0
  for _, s in ipairs(samples) do vmax = math.max(vmax, (tonumber(s[series.key]) or 0) * series.scale) end
  vmax = vmax > 0 and vmax * 1.1 or 1
  local function y_of(v) return y0 + PH - PH * v / vmax end
  svg[#svg + 1] = string.format('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#999"/>',
    L, y0, W - L - R, PH)
  for _, e in ipairs(events) do
    local colour = tostring(e.event):find("redis") and "#e74c3c" or "#ccc"
    if tostring(e.event):find("reload") or tostring(e.event):find("redis") then
      svg[#svg + 1] = string.format('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s" stroke-width="0.6"/>',
        x_of(e.t), y0, x_of(e.t), y0 + PH, colour)
    end
  end
  local points = {}
  for _, s in ipairs(samples) do
    if type(s[series.key]) == "number" then
      points[#points + 1] = string.format("%.1f,%.1f", x_of(s.t), y_of(s[series.key] * series.scale))
    end
  end
  svg[#svg + 1] = string.format('<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>',
    series.color, table.concat(points, " "))
  svg[#svg + 1] = string.format('<text x="%d" y="%d" font-size="12">%s</text>', L + 5, y0 - 4, series.label)
  for _, frac in ipairs({ 0, 0.5, 1 }) do
    local v = vmax * frac
    svg[#svg + 1] = string.format('<text x="%d" y="%.1f" text-anchor="end">%s</text>', L - 4, y_of(v) + 4,
      v >= 100 and string.format("%.0f", v) or string.format("%.1f", v))
  end
end
local ybot = TOP + #SERIES * (PH + GAP) - GAP + 14
local step = tmax > 1200 and 300 or (tmax > 300 and 60 or (tmax > 60 and 15 or 5))
for t = 0, tmax, step do
  svg[#svg + 1] = string.format('<text x="%.1f" y="%d" text-anchor="middle">%s</text>', x_of(t), ybot,
    string.format("%g", t / 60))
end
svg[#svg + 1] = string.format('<text x="%d" y="%d" text-anchor="middle">time (minutes)</text>', math.floor((W + L) / 2),
  ybot + 16)
svg[#svg + 1] = "</svg>"
local f = assert(io.open(out .. "/soak.svg", "w"))
f:write(table.concat(svg, "\n"), "\n")
f:close()
print("plot: " .. out .. "/soak.svg")
