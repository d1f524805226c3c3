--- sluice.collector.report: a collector's health, statistics and counters.
--
-- health(c [, u]), stats(c) and counters(c) are what the instance's
-- health(), stats() and counters() return (sluice.collector documents the
-- shapes): they judge and copy what its runs counted. They read the
-- instance c -- enabled, running, breaker, config, stats_ (the totals),
-- its targets (c:targets(), c:target(name)),
-- datasets_ and units_ -- and its run units (the instance, or each
-- dataset: dataset, interval, enabled, disabled_reason, stats_, slot_,
-- started_mono_, next_due_), and
-- write nothing on them; the module owns no state. Nothing here yields.
local sluice = require "sluice"

local _M = {}

-- The run counters of a dataset (counters().datasets[name]).
local RUN_COUNTERS = {
  "last_collection", "last_success", "last_error", "last_error_time", "data_points_collected",
  "total_runtime", "collections_completed", "collections_failed", "collections_skipped",
  "consecutive_failures",
}

local STALL_FACTOR, OVERDUE_FACTOR = 2, 3

local function secs(x) return string.format("%.0f s", x) end

-- Seconds since unit u's last success (or its start, or its last run
-- standing by) while the collector runs; nil when it is not running.
local function since_success(c, u)
  if not (c.running and u.started_mono_) then return nil end
  local st, now = u.stats_, sluice.now()
  local since = u.started_mono_
  local ok_at = st.last_success and (now - (sluice.time() - st.last_success))
  if ok_at and ok_at > since then since = ok_at end
  if st.standby_at and st.standby_at > since then since = st.standby_at end
  return now - since
end

-- The health of unit u's runs: status, reason (the collector's enabled
-- and breaker checks apart).
local function unit_health(c, u)
  local st = u.stats_
  if st.consecutive_failures >= 3 then
    return "failed", st.consecutive_failures .. " collections failed in a row: " .. tostring(st.last_error)
  end
  local span = math.max(u.interval, c.config.timeout or 30)
  local late = since_success(c, u)
  if late and late > OVERDUE_FACTOR * span then
    return "failed", "no successful collection for " .. secs(late)
      .. " (over " .. OVERDUE_FACTOR .. " × " .. secs(span) .. ")"
  end
  if st.consecutive_failures > 0 then
    return "degraded", "the last collection failed: " .. tostring(st.last_error)
  end
  local started = u.slot_:started()
  if started and sluice.now() - started > STALL_FACTOR * span then
    return "degraded", "a run has been in flight for " .. secs(sluice.now() - started)
      .. " (over " .. STALL_FACTOR .. " × " .. secs(span) .. ")"
  end
  return "healthy"
end

local RANK = { healthy = 0, degraded = 1, failed = 2 }

-- Why unit u is disabled (nil when it is not): disable_dataset's reason,
-- or the configuration's enabled = false.
local function why_disabled(u)
  if u.enabled then return nil end
  return u.disabled_reason or "dataset disabled in the configuration"
end

-- The worst health of c's enabled datasets, with the reasons of those
-- that have it ("dataset NAME: reason; ..."); "disabled" when none is
-- enabled.
local function datasets_health(c)
  local worst, reasons, any = "healthy", {}, false
  for _, u in ipairs(c.units_) do
    if u.enabled then
      any = true
      local s, why = unit_health(c, u)
      if RANK[s] > RANK[worst] then worst, reasons = s, {} end
      if s == worst and s ~= "healthy" then reasons[#reasons + 1] = "dataset " .. u.dataset .. ": " .. why end
    end
  end
  if not any then
    local at_run_time = false
    for _, u in ipairs(c.units_) do
      at_run_time = at_run_time or u.disabled_reason ~= nil
      reasons[#reasons + 1] = "dataset " .. u.dataset .. ": " .. why_disabled(u)
    end
    if not at_run_time then return "disabled", "every dataset is disabled in the configuration" end
    return "disabled", "every dataset is disabled: " .. table.concat(reasons, "; ")
  end
  if worst == "healthy" then return worst end
  return worst, table.concat(reasons, "; ")
end

--- health(c [, u]) -> status, reason: the collector's, or that of its run
-- unit u (a dataset's).
function _M.health(c, u)
  local st = c.stats_
  if not c.enabled then return "disabled", "disabled in the configuration" end
  if u and not u.enabled then return "disabled", why_disabled(u) end
  if c.breaker and c.breaker:state() == "open" then
    return "circuit_open", "circuit breaker " .. c.breaker:name() .. " is open"
  end
  if u then return unit_health(c, u) end
  local status, reason
  if c.datasets_ then
    status, reason = datasets_health(c)
  else
    status, reason = unit_health(c, c)
  end
  if status ~= "healthy" then return status, reason end
  -- a collector with targets: one target's open breaker (one relay of six
  -- down) leaves the others collecting, so it degrades the collector
  local open = {}
  for _, t in ipairs(c:targets() or {}) do
    local cb = c:target(t)
    if cb and cb:state() == "open" then
      open[#open + 1] = "target " .. t .. ": circuit breaker " .. cb:name() .. " is open"
    end
  end
  if #open > 0 then return "degraded", table.concat(open, "; ") end
  if st.total_requests >= 10 and st.successful_requests / st.total_requests < 0.9 then
    return "degraded", string.format("%d of %d requests failed", st.failed_requests, st.total_requests)
  end
  return "healthy"
end

local function iso(t) return t and sluice.iso8601(t) end

-- stats() of one dataset.
local function dataset_stats(c, u)
  local st = u.stats_
  local status, reason = _M.health(c, u)
  local started = u.slot_:started()
  local late = u.enabled and since_success(c, u)
  return {
    status = status, status_reason = reason, enabled = u.enabled, interval = u.interval,
    disabled_reason = why_disabled(u),
    run_in_flight_seconds = started and sluice.now() - started or nil,
    overdue = (late and late > OVERDUE_FACTOR * math.max(u.interval, c.config.timeout or 30)) or false,
    last_collection = iso(st.last_collection), last_success = iso(st.last_success),
    last_error = st.last_error, data_points_collected = st.data_points_collected,
    total_runtime = st.total_runtime, collections_completed = st.collections_completed,
    collections_failed = st.collections_failed, collections_skipped = st.collections_skipped,
  }
end


-- stats() of a collector's targets: {name = {breaker = its name, state,
-- limiter = its name, rate}}, or nil without targets.
local function targets_stats(c)
  local names = c:targets()
  if not names then return nil end
  local out = {}
  for _, t in ipairs(names) do
    local cb, lim = c:target(t)
    out[t] = { breaker = cb and cb:name(), state = cb and cb:state(),
      limiter = lim and lim:name(), rate = lim and lim:rate() }
  end
  return out
end

--- stats(c) -> the reference statistics shape, with datasets and targets.
function _M.stats(c)
  local st = c.stats_
  local status, reason = _M.health(c)
  local started, waiters
  for _, u in ipairs(c.units_) do
    local s = u.slot_:started()
    if s and (not started or s < started) then started = s end
    if u.slot_:busy() then waiters = (waiters or 0) + u.slot_:waiting() end
  end
  -- the next scheduled run (the earliest dataset's): wall clock
  local due
  for _, u in ipairs(c.units_) do
    if c.running and u.enabled and u.next_due_ and (not due or u.next_due_ < due) then due = u.next_due_ end
  end
  local ds
  if c.datasets_ then
    ds = {}
    for _, u in ipairs(c.units_) do ds[u.dataset] = dataset_stats(c, u) end
  end
  return {
    collector_name = c.name,
    status = status,
    status_reason = reason,
    enabled = c.enabled,
    run_in_flight_seconds = started and sluice.now() - started or nil,
    run_waiters = waiters, -- calls waiting for (joining) a run in flight
    started_at = iso(st.started_at),
    last_collection = iso(st.last_collection),
    last_success = iso(st.last_success),
    last_error = st.last_error,
    total_requests = st.total_requests,
    successful_requests = st.successful_requests,
    failed_requests = st.failed_requests,
    data_points_collected = st.data_points_collected,
    total_runtime = st.total_runtime,
    collections_completed = st.collections_completed,
    collections_skipped = st.collections_skipped,
    datasets = ds,
    targets = targets_stats(c),
    next_run = due and iso(sluice.time() + math.max(0, due - sluice.now())) or nil,
  }
end

local COUNTERS = {
  "started_at", "last_collection", "last_success", "last_error", "last_error_time",
  "total_requests", "successful_requests", "failed_requests", "latency_total", "latency_count",
  "data_points_collected", "total_runtime", "collections_completed", "collections_failed",
  "collections_skipped", "consecutive_failures",
}


--- counters(c) -> a copy of the counters, with datasets.
function _M.counters(c)
  local st, out = c.stats_, {}
  for _, k in ipairs(COUNTERS) do out[k] = st[k] end
  out.latency_total, out.latency_count = st.latency_total or 0, st.latency_count or 0
  if c.datasets_ then
    out.datasets, out.consecutive_failures = {}, 0
    for _, u in ipairs(c.units_) do
      local d = { interval = u.interval, enabled = u.enabled, disabled_reason = why_disabled(u) }
      for _, k in ipairs(RUN_COUNTERS) do d[k] = u.stats_[k] end
      out.datasets[u.dataset] = d
      out.consecutive_failures = math.max(out.consecutive_failures, d.consecutive_failures)
    end
  end
  return out
end

return _M
