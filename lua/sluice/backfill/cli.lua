--- sluice.backfill.cli: `sluice backfill CONFIG.lua COLLECTOR ...`.
--
-- cli(chunk, file, args...) is what the host runs as the command's main
-- task (runtime/host/main.c): it reads the flags, builds the configuration
-- (sluice.app.build; nothing is started, and no lease is taken), plans or
-- runs the backfill of one collector (sluice.backfill), prints the outcome
-- and shuts the process down with its exit code. A leaf: nothing requires
-- it but the host. It yields (run it as a task).
local sluice = require "sluice"
local app_mod = require "sluice.app"
local backfill = require "sluice.backfill"
local units = require "sluice.backfill.unit"

local _M = {}

local USAGE = [[
usage: sluice backfill CONFIG.lua COLLECTOR --from FROM [--to TO] [options]

Backfills COLLECTOR (a collector of the configuration) over [FROM, TO),
skipping windows already stored, and exits 0 when every window is done (1
if some failed; run it again to retry them). FROM and TO are in the
collector's backfill unit: for time (seconds), epoch seconds or a date
2024-01-31[T12:00:00] (UTC), TO by default now; for blocks, slots or
integers, integers (19000000, or 0x121eac0), TO by default the collector's
backfill_to. FROM defaults to its backfill_from (or beginning_date).

options:
  --symbols A,B     only these symbols (default: the collector's)
  --force           refetch windows already done (idempotent upserts)
  --lookback N      also refetch the last N seconds (blocks, ...) before --to
  --parallel N      windows fetched at once (default 4)
  --plan            print the plan and its estimate, fetch nothing
  --claim-ttl S     with Redis: how long a window claim lives unrenewed,
                    so how soon a dead instance's windows are taken over
                    (default 30)

With `redis = "redis://..."` in the configuration, instances backfilling
the same range share it: each window is claimed in Redis before it is
fetched (backfill:COLLECTOR:PARTITION:WINDOW_START), a window another
instance holds is waited for, and one it has done is skipped and reported
as done elsewhere (its rows are in that instance's store and streams).
]]

local function usage_error(msg)
  io.stderr:write("sluice: backfill: ", msg, " (see sluice backfill --help)\n")
  os.exit(2)
end

-- A usage error found once the configuration is built (it depends on the
-- collector's unit): said the same way, but the process shuts down
-- cleanly (exit 2) rather than exiting past what it has opened.
local function late_usage_error(app, msg)
  app.store:close()
  io.stderr:write("sluice: backfill: ", msg, " (see sluice backfill --help)\n")
  sluice.shutdown(2)
end

--- cli(chunk, file, args...): `sluice backfill`.
function _M.cli(chunk, file, ...)
  local args = { ... }
  local o = { parallel = 4 }
  local name
  local i = 1
  local function value(flag)
    i = i + 1
    if args[i] == nil then usage_error(flag .. " needs a value") end
    return args[i]
  end
  while i <= #args do
    local a = args[i]
    if a == "--help" or a == "-h" then
      io.stdout:write(USAGE)
      os.exit(0)
    elseif a == "--from" then o.from = value(a)
    elseif a == "--to" then o.to = value(a)
    elseif a == "--symbols" then
      o.symbols = {}
      for s in value(a):gmatch("[^,]+") do o.symbols[#o.symbols + 1] = s end
    elseif a == "--force" then o.force = true
    elseif a == "--plan" then o.plan_only = true
    elseif a == "--lookback" then o.lookback = tonumber(value(a)) or usage_error("--lookback needs seconds")
    elseif a == "--parallel" then o.parallel = tonumber(value(a)) or usage_error("--parallel needs a number")
    elseif a == "--claim-ttl" then
      o.claim_ttl = tonumber(value(a)) or usage_error("--claim-ttl needs seconds")
      if not (o.claim_ttl > 0) then usage_error("--claim-ttl needs seconds > 0") end
    elseif a:sub(1, 1) == "-" then usage_error("unknown option '" .. a .. "'")
    elseif not name then name = a
    else usage_error("unexpected argument '" .. a .. "'") end
    i = i + 1
  end
  if not name then usage_error("missing COLLECTOR") end
  -- a configuration that cannot start is one line on stderr, exit 1
  local tb
  local okc, app = xpcall(function()
    local config = chunk()
    if type(config) ~= "table" then
      error(file .. ": a backfill needs a configuration (a file returning a table)", 0)
    end
    return app_mod.build(config, file)
  end, function(e)
    tb = debug.traceback(tostring(e), 2)
    return e
  end)
  if not okc then return app_mod.startup_failed(app, tb) end
  local c = app.collectors[name]
  if not c then
    local names = {}
    for n in pairs(app.collectors) do names[#names + 1] = n end
    table.sort(names)
    app.store:close()
    return app_mod.startup_failed(file .. ": no collector named '" .. name .. "' (there are: "
      .. table.concat(names, ", ") .. ")")
  end
  o.collector = c
  -- --from and --to in the collector's unit: dates or epoch seconds for
  -- time, integers for blocks, slots and integers
  local unit = units.of(c)
  for _, k in ipairs({ "from", "to" }) do
    if o[k] then
      local v = units.is_integer(unit) and o[k] or tonumber(o[k]) or o[k]
      local okp, pos = pcall(units.parse, v, unit, k)
      if not okp then
        if units.is_integer(unit) then
          return late_usage_error(app, "--" .. k .. " '" .. o[k] .. "': collector '" .. name
            .. "' backfills by " .. unit .. ": expected an integer from 0 to 2^53"
            .. (pcall(units.parse_time, o[k], k) and tonumber(o[k]) == nil and ", not a date" or ""))
        end
        return late_usage_error(app, "--" .. k .. " '" .. o[k] .. "': expected epoch seconds or a date"
          .. " like 2024-01-31")
      end
      o[k] = pos
    end
  end
  -- what the plan refuses (no --to for blocks, --to before --from): a
  -- usage error, one line
  local function refusal(err)
    return (tostring(err):gsub("^.-sluice%.backfill[%w_.]*: ", ""))
  end
  if o.plan_only then
    local okp, p = pcall(backfill.plan, o)
    if not okp then return late_usage_error(app, refusal(p)) end
    local e = p.estimate
    print(string.format("%s: %d windows to fetch, %d already done", name, #p.windows, p.skipped))
    print(string.format("  range    %s, windows of %s %s", units.range(p.unit, p.from, p.to),
      units.is_integer(p.unit) and string.format("%d", p.step) or tostring(p.step), p.unit))
    local reasons = {}
    for _, w in ipairs(p.windows) do reasons[w.reason] = (reasons[w.reason] or 0) + 1 end
    if #p.elsewhere > 0 then reasons.elsewhere = #p.elsewhere end
    for r, n in pairs(reasons) do print(string.format("  %-8s %d", r, n)) end
    print(string.format("estimate: %d requests, %s rows, %s at %s req/s", e.requests,
      e.rows and tostring(e.rows) or "?", e.seconds and string.format("%.1f s", e.seconds) or "?",
      e.rate and string.format("%.1f", e.rate) or "?"))
    sluice.shutdown(0)
    return
  end
  local oks, id = pcall(backfill.start, o)
  if not oks then return late_usage_error(app, refusal(id)) end
  local st = backfill.wait(id)
  print(string.format("%s: %s; %d of %d windows done, %d failed, %d skipped; %d rows, %d requests in %.1f s",
    name, st.state, st.windows_done, st.windows_total, st.windows_failed, st.windows_skipped,
    st.rows, st.requests, st.elapsed))
  if st.windows_elsewhere > 0 then
    print(string.format("  elsewhere: %d windows done by other instances (%d rows, not in this store)",
      st.windows_elsewhere, st.rows_elsewhere))
  end
  if st.claims == "degraded" then
    print("  redis was unreachable: some windows were claimed locally only")
  end
  for _, f in ipairs(st.failed) do
    print(string.format("  failed: %s %s: %s", f.partition, units.is_integer(st.unit)
      and units.range(st.unit, f.from, f.to) or string.format("%d..%d", f.from, f.to), f.error))
  end
  if st.interrupted then
    local nw = st.next_window
    print(string.format("  stopped by shutdown after %d of %d windows%s; run the same command again "
      .. "to resume (done windows are skipped)", st.windows_done, st.windows_total,
      nw and (units.is_integer(st.unit)
        and string.format("; next window: %s %s", nw.partition, units.range(st.unit, nw.from, nw.to))
        or string.format("; next window: %s from %s (%d)", nw.partition, sluice.iso8601(nw.from), nw.from))
      or ""))
  end
  sluice.shutdown(st.windows_failed > 0 and 1 or 0)
end

return _M
