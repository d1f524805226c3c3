--- sluice.operator: the operator's views of a running process and the
-- operations on it, written once for the two front ends: the admin API
-- (sluice.admin: HTTP routing and access policy over it) and the REPL
-- (sluice.repl: helpers at the prompt over it).
--
--   local ops = operator.new{
--     current = function() return app end, -- the running app, or nil
--     reload = app_mod.reload,              -- reload(by) -> true | nil, err
--   }
--
-- It owns no state of its own beyond the clock of started_at and
-- uptime_seconds (this module's loading, with the admin API at start-up).
-- It reads breakers, limiters, collectors, backfill jobs, the store and
-- the log ring through their modules, and never requires sluice.app: the
-- app and its reload come in through new(), so the front ends carry no
-- require cycle. Nothing here is redacted: each front end scrubs what it
-- shows.
--
-- Failure convention: a view returns its table; an operation returns its
-- result. Input the operator got wrong or a state that forbids the
-- operation is not an error raised but nil, message, kind:
--   "invalid"      the request is malformed (a bad argument, field, level)
--   "not_found"    no collector, breaker or backfill job of that name/id
--   "disabled"     the collector is disabled in the configuration
--   "unavailable"  no configuration is running
--   "refused"      a reload was refused (the running set is unchanged)
-- A collection that ran and failed is a result (run.ok false), not nil.
-- Only misuse raises (new() without a function giving the app).
--
-- Every view and operation is a method (ops:name(...)); those that need
-- no app ignore the object.
--
-- Views (fresh tables each call):
--   ops:health() -> body, up               the reference /health shape; status
--                                          "unhealthy" (up false) without the
--                                          database or with no enabled collector
--                                          healthy, "degraded" when some are not
--                                          (reasons name them), Redis is away or
--                                          a sink's outbox is full or its breaker
--                                          open (degraded lists those)
--   ops:status() -> body                   collectors' statistics, tasks, config view,
--                                          exchanges (sluice.exchange.stats) when any,
--                                          sinks (the outbox's status) when any
--                                          alerts (sluice.alerts' status) when running,
--                                          configuration (the live one: id,
--                                          applied_at, by, how, sha256), backfills
--                                          (as ops:backfills()) when any
--   ops:performance() -> body              the reference /performance shape
--   ops:quality() -> { table = report }    the store's data-quality report
--   ops:logs{level, limit, since} -> entries | nil, err, "invalid"
--   ops:breakers() -> { name = cb:status() }
--   ops:breakers_brief() -> { name = {state, failures, next_attempt, health_score} }
--   ops:limiters() -> { name = lim:stats() }
--   ops:limiters_brief() -> { name = {rate, total_requests, violations, waiting} }
--   ops:collectors_brief() -> { name = {status, running, interval, last_success,
--     last_error, collections, rows, requests, datasets = {name = {status,
--     interval, last_success, last_error, disabled_reason}} (collectors
--     with datasets)} }
--     | nil, err, "unavailable"
--   ops:backfills() -> { id = status without the list of failed windows }
--   ops:backfill(id) -> status | nil, err, "not_found"
-- Operations:
--   ops:breaker(name, action) -> cb:status() after it | nil, err, kind
--     action "open" (force open: trip), "close" (force close), "reset"
--   ops:collect(name [, opts]) -> run | nil, err, kind. run = {collector,
--     dataset, ok, records (ok) | error (not ok), joined (true: it waited
--     for the run in flight)}. A disabled collector (or dataset) is refused
--     unless opts.run_disabled. opts.dataset: run that dataset of a
--     collector with datasets (not_found for one it does not have);
--     without it, every enabled dataset runs.
--   ops:start_backfill(request) -> id, plan | nil, err, kind. request:
--     collector (a name; default the one collector that can backfill),
--     start_date, end_date, symbols, force, lookback, parallel
--   ops:cancel_backfill(id) -> status | nil, err, "not_found"
--   ops:alert(body) -> id | nil, err, kind: an "alert" event to the
--     webhooks (sluice.alerts send: invalid, unavailable)
--   ops:reload(by) -> true | nil, err, "refused" (refused too when new()
--     was given no reload: "no configuration is running")
--   ops:rollback(by [, steps]) -> the live configuration's summary (as
--     ops:configs() shows it) once the one `steps` (1) before it is live
--     again | nil, err, "refused" (nothing that far back, or it did not
--     build: the live one stays) or "invalid" (bad steps). new()'s
--     source.rollback(by, steps) does it (sluice.app's rollback).
--   ops:configs() -> {live, history}: sluice.app.configs' view (newest
--     first) | nil, err, "unavailable"
--   ops:history() -> sluice.history's view of the last hour (breakers'
--     transitions, limiters, collectors, sinks) | nil, err, "unavailable"
--   operator.iso(epoch) -> "2024-01-31T12:00:00Z" | nil: the views' times,
--     whole seconds by sluice.iso8601
--
-- Yields (must run in a task): collect (waits for the run), reload, and
-- start_backfill when Redis is configured (the plan asks it). The views
-- and the other operations do not yield.
local sluice = require "sluice"
local log = require "sluice.log"
local breaker = require "sluice.breaker"
local limiter = require "sluice.limiter"
local backfill = require "sluice.backfill"
local redact = require "sluice.redact"
local procinfo = require "sluice.procinfo"
local options = require "sluice.options"

local _M = {}
local mt = { __index = _M }

local started_wall = sluice.time()
local started_mono = sluice.now()

local NO_APP = "no configuration is running (collectors come from `sluice run CONFIG.lua`)"

--- iso(epoch) -> "2024-01-31T12:00:00Z", or nil: the views show whole
-- seconds (the second it falls in), spelt by sluice.iso8601.
local function iso(t)
  return t and sluice.iso8601(math.floor(t))
end
_M.iso = iso

local NEW_OPTIONS = { current = { type = "function", required = true }, reload = "function",
  rollback = "function" }

--- new(source) -> ops. source.current: a function returning the running
-- app ({collectors, order, store, config, shared, starting}) or nil;
-- source.reload: reload(by) -> true | nil, err, or nil when there is
-- nothing to reload.
function _M.new(source)
  if type(source) ~= "table" or type(source.current) ~= "function" then
    error("sluice.operator.new: bad argument #1 (table with a function 'current' expected)", 2)
  end
  options.check("sluice.operator.new", source, NEW_OPTIONS)
  return setmetatable({ current_ = source.current, reload_ = source.reload, rollback_ = source.rollback }, mt)
end

-- --- views --------------------------------------------------------------------

function _M:health()
  local a = self.current_()
  local reasons, last, last_ok, errors = {}, nil, nil, 0
  local well = 0
  for _, c in ipairs(a.order) do
    local h, why = c:health()
    if h == "healthy" then
      well = well + 1
    elseif h ~= "disabled" then
      -- the breaker's own state says it all; other states say why
      reasons[#reasons + 1] = c.name .. " is " .. h .. (h ~= "circuit_open" and why and (": " .. why) or "")
    end
    local st = c:counters()
    if st.last_collection and (not last or st.last_collection > last) then last = st.last_collection end
    if st.last_success and (not last_ok or st.last_success > last_ok) then last_ok = st.last_success end
    errors = errors + st.collections_failed
  end
  local db_ok, db_why = a.store and a.store:query("SELECT 1 AS one") ~= nil, nil
  if db_ok then db_ok, db_why = a.store:check() end -- a deleted file answers SELECT 1
  if not db_ok then reasons[#reasons + 1] = db_why or "database is not reachable" end
  -- Down: no database, or no enabled collector healthy. Some collectors
  -- failing (one exchange of five) is degraded: the others still collect,
  -- and a supervisor must not restart the process for one upstream's
  -- outage. Without Redis, sluice goes on with local state: degraded too.
  local down = not db_ok or (#reasons > 0 and well == 0)
  local redis_down = a.shared and a.shared:degraded()
  -- a sink's outbox full (its tables' collections stop) or its breaker
  -- open: degraded, the rest collects
  local sink_reasons = a.outbox and db_ok and a.outbox:health() or {}
  local degraded = redis_down and { "redis is unreachable: state is local" } or nil
  for _, r in ipairs(sink_reasons) do
    degraded = degraded or {}
    degraded[#degraded + 1] = r
  end
  local body = {
    status = down and "unhealthy" or (#reasons > 0 or degraded) and "degraded" or "healthy",
    degraded = degraded,
    timestamp = iso(sluice.time()),
    service = a.config and a.config.name or "sluice",
    version = sluice._VERSION,
    uptime_seconds = sluice.now() - started_mono,
    database_connected = db_ok == true,
    last_collection = iso(last),
    last_successful_collection = iso(last_ok),
    collection_errors = errors,
    reasons = #reasons > 0 and reasons or nil,
    starting = a.starting, -- true while the collectors are being built and started
  }
  return body, not down
end

function _M:status()
  local a = self.current_()
  local cs = {}
  for _, c in ipairs(a.order) do cs[c.name] = c:stats() end
  -- exchange collectors (sluice.exchange): the reference's exchange-manager statistics
  local xstats = package.loaded["sluice.exchange.stats"]
  local ex = xstats and xstats.exchanges(a.order)
  return {
    service = a.config and a.config.name or "sluice", version = sluice._VERSION,
    started_at = iso(started_wall), uptime_seconds = sluice.now() - started_mono,
    exchanges = ex and ex.total_exchanges > 0 and ex or nil,
    collectors = cs, tasks = sluice.tasks(), config = a.config and redact.classify(a.config) or {},
    sinks = a.outbox and a.store and a.store:is_open() and a.outbox:status() or nil, -- sluice.outbox
    alerts = a.alerts and a.alerts:status() or nil, -- sluice.alerts: webhooks, last deliveries, failures
    -- the live configuration (sluice.app.configs) and this process' backfill jobs
    configuration = a.configs and a.configs:view().live,
    backfills = next(backfill.jobs()) and self:backfills() or nil,
  }
end

function _M:performance()
  local a = self.current_()
  local runtime, runs, ok, failed, lat, nlat = 0, 0, 0, 0, 0, 0
  for _, c in ipairs(a.order) do
    local st = c:counters()
    runtime = runtime + st.total_runtime
    runs = runs + st.collections_completed + st.collections_failed
    ok = ok + st.successful_requests
    failed = failed + st.failed_requests
    lat = lat + (st.latency_total or 0)
    nlat = nlat + (st.latency_count or 0)
  end
  local t0 = sluice.now()
  a.store:query("SELECT 1 AS one")
  local db_ms = (sluice.now() - t0) * 1000
  local rss = procinfo.memory()
  local cpu = procinfo.cpu_seconds()
  local total = ok + failed
  return {
    avg_collection_time = runs > 0 and runtime / runs or 0,
    success_rate = total > 0 and 100 * ok / total or 100,
    error_rate = total > 0 and 100 * failed / total or 0,
    database_latency = db_ms,
    api_latency = nlat > 0 and 1000 * lat / nlat or 0,
    memory_usage_mb = rss and rss / 1048576,
    cpu_usage_percent = cpu and 100 * cpu / math.max(sluice.now() - started_mono, 1e-3) or nil,
  }
end

function _M:quality()
  return self.current_().store:quality()
end

local LEVELS = { trace = 0, debug = 1, info = 2, warning = 3, error = 4, critical = 5 }

-- filter: level (the least shown), limit (the newest N, default 100),
-- since (entries whose ts sorts at or after it); oldest first.
function _M.logs(_, filter)
  local min = 0
  if filter.level then
    min = LEVELS[filter.level]
    if not min then return nil, "unknown level '" .. tostring(filter.level) .. "'", "invalid" end
  end
  local limit = tonumber(filter.limit or "100")
  if not limit or limit < 0 then return nil, "limit must be a number >= 0", "invalid" end
  local out = {}
  for _, e in ipairs(log.recent()) do
    if (LEVELS[e.level] or 0) >= min and (not filter.since or (e.ts or "") >= filter.since) then
      out[#out + 1] = e
    end
  end
  while #out > limit do table.remove(out, 1) end
  return out
end

function _M.breakers(_)
  local out = {}
  for name, cb in pairs(breaker.all()) do out[name] = cb:status() end
  return out
end

function _M.breakers_brief(_)
  local out = {}
  for name, cb in pairs(breaker.all()) do
    local st, m = cb:status(), cb:metrics()
    out[name] = {
      state = st.state,
      failures = st.failure_count,
      next_attempt = st.state ~= "closed" and iso(m.open_until) or nil,
      health_score = st.health_score,
    }
  end
  return out
end

function _M.limiters(_)
  local out = {}
  for name, lim in pairs(limiter.all()) do out[name] = lim:stats() end
  return out
end

function _M.limiters_brief(_)
  local out = {}
  for name, lim in pairs(limiter.all()) do
    local st, m = lim:stats(), lim:metrics()
    out[name] = {
      rate = st.current_global_rate,
      total_requests = st.total_requests,
      violations = st.total_violations,
      waiting = m.waiting,
    }
  end
  return out
end

function _M:collectors_brief()
  local a = self.current_()
  if not a then return nil, NO_APP, "unavailable" end
  local out = {}
  for name, inst in pairs(a.collectors) do
    local st = inst:stats()
    out[name] = {
      status = st.status,
      running = inst.running and true or false,
      interval = inst.interval,
      last_success = st.last_success,
      last_error = st.last_error,
      collections = st.collections_completed,
      rows = st.data_points_collected,
      requests = st.total_requests,
    }
    if st.datasets then
      local ds = {}
      for dname, d in pairs(st.datasets) do
        ds[dname] = { status = d.status, interval = d.interval, last_success = d.last_success,
          last_error = d.last_error, disabled_reason = d.disabled_reason }
      end
      out[name].datasets = ds
    end
  end
  return out
end

function _M.backfills(_)
  local out = {}
  for id, st in pairs(backfill.jobs()) do
    local copy = {}
    for k, v in pairs(st) do copy[k] = v end
    copy.failed = nil -- the failed windows' list; windows_failed counts them
    out[id] = copy
  end
  return out
end

function _M.backfill(_, id)
  local st, err = backfill.status(id)
  if not st then return nil, err, "not_found" end
  return st
end

-- --- operations -----------------------------------------------------------------

local ACTIONS = {
  open = function(cb) cb:force_open() end,
  close = function(cb) cb:force_close() end,
  reset = function(cb) cb:reset() end,
}

function _M.breaker(_, name, action)
  if type(name) ~= "string" then
    return nil, "breaker name expected, got " .. type(name), "invalid"
  end
  local cb = breaker.get(name)
  if not cb then return nil, "no breaker named '" .. name .. "'", "not_found" end
  local act = ACTIONS[action]
  if not act then
    return nil, "unknown action '" .. tostring(action) .. "' (open, close, reset)", "not_found"
  end
  act(cb)
  return cb:status()
end

function _M:collect(name, opts)
  local a = self.current_()
  if not a then return nil, NO_APP, "unavailable" end
  local c = a.collectors[name]
  if not c then return nil, "no collector named '" .. tostring(name) .. "'", "not_found" end
  if not c.enabled and not (opts and opts.run_disabled) then
    return nil, "collector '" .. c.name .. "' is disabled", "disabled"
  end
  local dataset = opts and opts.dataset
  if dataset ~= nil then
    local names = c:datasets()
    if type(dataset) ~= "string" then return nil, "dataset name expected, got " .. type(dataset), "invalid" end
    local known = false
    for _, n in ipairs(names or {}) do known = known or n == dataset end
    if not known then
      return nil, "collector '" .. c.name .. "' has no dataset '" .. dataset .. "'"
        .. (names and (" (" .. table.concat(names, ", ") .. ")") or ""), "not_found"
    end
    local d = c:counters().datasets[dataset]
    if not d.enabled and not opts.run_disabled then
      return nil, "dataset '" .. dataset .. "' of collector '" .. c.name .. "' is disabled ("
        .. d.disabled_reason .. ")", "disabled"
    end
  end
  -- one run in flight per collector (per dataset): a call made while one
  -- is going waits for it and gets its result (joined)
  local ok, result, joined = c:run_once(dataset)
  return {
    collector = c.name, dataset = dataset, ok = ok,
    records = ok and result or nil, error = not ok and result or nil,
    joined = joined == "joined" or nil,
  }
end

local BACKFILL_FIELDS = { collector = true, start_date = true, end_date = true,
  symbols = true, force = true, lookback = true, parallel = true }

function _M:start_backfill(req)
  for k in pairs(req) do
    if not BACKFILL_FIELDS[k] then return nil, "unknown field '" .. tostring(k) .. "'", "invalid" end
  end
  local a = self.current_()
  if not a then return nil, NO_APP, "unavailable" end
  local c
  if req.collector ~= nil then
    if type(req.collector) ~= "string" then return nil, "field 'collector' must be a string", "invalid" end
    c = a.collectors[req.collector]
    if not c then return nil, "no collector named '" .. req.collector .. "'", "not_found" end
  else
    for _, x in ipairs(a.order) do
      if x.spec.backfill then
        if c then return nil, "several collectors can backfill: name one in 'collector'", "invalid" end
        c = x
      end
    end
    if not c then return nil, "no collector here can backfill", "invalid" end
  end
  if req.symbols ~= nil and type(req.symbols) ~= "table" then
    return nil, "field 'symbols' must be a list", "invalid"
  end
  if req.force ~= nil and type(req.force) ~= "boolean" then
    return nil, "field 'force' must be true or false", "invalid"
  end
  local bopts = { collector = c, from = req.start_date, to = req.end_date, symbols = req.symbols,
    force = req.force, lookback = req.lookback, parallel = req.parallel }
  local okp, plan = pcall(backfill.plan, bopts)
  if not okp then return nil, (tostring(plan):gsub("^.-sluice%.backfill: ", "")), "invalid" end
  return backfill.start(bopts), plan
end

function _M.cancel_backfill(_, id)
  local ok, err = backfill.cancel(id)
  if not ok then return nil, err, "not_found" end
  return backfill.status(id)
end

function _M:alert(body)
  local a = self.current_()
  if not (a and a.alerts) then return nil, "alerts are not running: " .. NO_APP, "unavailable" end
  return a.alerts:send(body)
end

function _M:reload(by)
  if not self.reload_ then return nil, "no configuration is running", "refused" end
  local ok, err = self.reload_(by)
  if not ok then return nil, err, "refused" end
  return true
end

function _M:rollback(by, steps)
  if not self.rollback_ then return nil, "no configuration is running", "refused" end
  if steps ~= nil and (type(steps) ~= "number" or steps < 1 or steps ~= math.floor(steps)) then
    return nil, "steps must be a whole number >= 1", "invalid"
  end
  local entry, err = self.rollback_(by, steps)
  if not entry then return nil, err, "refused" end
  local a = self.current_()
  return a.configs:view().live
end

function _M:configs()
  local a = self.current_()
  if not (a and a.configs) then return nil, NO_APP, "unavailable" end
  return a.configs:view()
end

function _M:history()
  local a = self.current_()
  if not (a and a.history) then return nil, "no history is kept (it runs with `sluice run CONFIG.lua`)",
    "unavailable" end
  return a.history:view()
end

return _M
