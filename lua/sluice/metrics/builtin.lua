--- sluice.metrics.builtin: sluice's own state as metrics, the families
-- sluice.metrics documents as built in: the running app's collectors,
-- breakers, the outbox's sinks, limiters, response cache, backfill jobs, tasks, the log, the process and the
-- HTTP client.
--
-- Loading it registers the HTTP client's two recorded families; install()
-- (sluice.metrics calls it when it is loaded; later calls do nothing) adds
-- one source per area to sluice.metrics.registry and http_request as an
-- observer of sluice.http. It owns nothing else: every source reads its
-- area's state when render() runs.
--
-- The app, breakers, limiters and backfills are read only once something
-- else has loaded their module (package.loaded): a source reports what is
-- there and never loads a module to look (sluice.app would bring the whole
-- runtime in). Nothing here yields.
local sluice = require "sluice"
local http = require "sluice.http"
local core_log = require "sluice._log"
local procinfo = require "sluice.procinfo"
local registry = require "sluice.metrics.registry"

local _M = {}

local pairs, ipairs, tostring, type = pairs, ipairs, tostring, type

-- The module of that name when something has loaded it, else nil.
local function loaded(name)
  return package.loaded[name]
end

-- --- the HTTP client's metrics (recorded by the observer) -----------------

local http_requests = registry.counter("sluice_http_requests_total",
  "HTTP client requests, by host, method and status code (or failure kind: timeout, connect, dns, "
    .. "tls, too_large, protocol, aborted).",
  { labels = { "host", "method", "code" } })
local http_duration = registry.histogram("sluice_http_request_duration_seconds",
  "HTTP client request duration in seconds (completed requests), by host.",
  { labels = { "host" } })

--- host_of(url) -> the URL's host[:port], lower case, without user info.
local function host_of(url)
  local authority = type(url) == "string" and url:match("^%a[%w+.-]*://([^/?#]*)")
  if not authority then return "unknown" end
  authority = authority:match("@([^@]*)$") or authority
  return authority:lower()
end
_M.host_of = host_of

--- http_request(url, method, code, seconds): one request of the HTTP
-- client ended, with an HTTP status or a failure kind; seconds (total time)
-- when it completed. The observer install() adds to sluice.http.
function _M.http_request(url, method, code, seconds)
  local host = host_of(url)
  http_requests:inc(1, host, method or "GET", code or "error")
  if type(seconds) == "number" and seconds == seconds then
    http_duration:observe(seconds, host)
  end
end

-- --- the families read from live state at render time ---------------------

local COLLECTORS = {
  { "counter", "sluice_collection_requests_total",
    "Collections run, by collector and outcome (success: rows stored; error: collect or storing failed).",
    { "collector", "status" } },
  { "summary", "sluice_collection_duration_seconds",
    "Time spent in collections, in seconds, by collector.", { "collector" } },
  { "counter", "sluice_collector_requests_total",
    "API requests made by a collector's request pipeline, by outcome.", { "collector", "status" } },
  { "counter", "sluice_records_processed_total",
    "Data points (rows) collected and stored, by collector.", { "collector" } },
  { "gauge", "sluice_active_collections",
    "Collections in progress, by collector (one per dataset at most).", { "collector" } },
  { "gauge", "sluice_collector_up",
    "1 when the collector is running and healthy or degraded, 0 when stopped, failed or its circuit is open.",
    { "collector" } },
  { "gauge", "sluice_collector_health",
    "The collector's health, one series per status (1 for the current one).", { "collector", "status" } },
  { "gauge", "sluice_collector_consecutive_failures",
    "Collections failed in a row, by collector.", { "collector" } },
  { "gauge", "sluice_collector_last_success_timestamp_seconds",
    "When the collector last completed a collection (epoch seconds).", { "collector" } },
}

-- A collector's datasets (collector.define{datasets = ...}), each with
-- its own schedule: the collector's families above are their totals.
local DATASETS = {
  { "counter", "sluice_dataset_collections_total",
    "Collections of a collector's dataset, by outcome (success, error, skipped).",
    { "collector", "dataset", "status" } },
  { "counter", "sluice_dataset_records_processed_total",
    "Data points (rows) a collector's dataset collected and stored.", { "collector", "dataset" } },
  { "gauge", "sluice_dataset_health",
    "A dataset's health, one series per status (1 for the current one).", { "collector", "dataset", "status" } },
  { "gauge", "sluice_dataset_interval_seconds", "A dataset's interval, in seconds.", { "collector", "dataset" } },
  { "gauge", "sluice_dataset_last_success_timestamp_seconds",
    "When the dataset last completed a collection (epoch seconds).", { "collector", "dataset" } },
}

local BREAKERS = {
  { "gauge", "sluice_breaker_state",
    "Circuit breaker state, one series per state (1 for the current one).", { "breaker", "state" } },
  { "counter", "sluice_breaker_opens_total", "Times the circuit breaker opened.", { "breaker" } },
  { "counter", "sluice_breaker_recoveries_total",
    "Half-open trials that ended, by result (success: closed again; failure: reopened).",
    { "breaker", "result" } },
  { "counter", "sluice_breaker_failures_total", "Calls the breaker recorded as failed.", { "breaker" } },
  { "counter", "sluice_breaker_successes_total", "Calls the breaker recorded as successful.", { "breaker" } },
  { "counter", "sluice_breaker_rejected_total", "Calls the breaker refused.", { "breaker" } },
  { "counter", "sluice_breaker_slow_calls_total", "Calls slower than slow_call_duration.", { "breaker" } },
  { "counter", "sluice_breaker_open_seconds_total",
    "Seconds the breaker has spent open.", { "breaker" } },
  { "gauge", "sluice_breaker_consecutive_failures",
    "Failures counted towards the threshold (kept while open).", { "breaker" } },
  { "gauge", "sluice_breaker_health_score",
    "Share of the calls the breaker recorded that succeeded (0 to 1; 1 before any).", { "breaker" } },
}

-- The durable outbox's sinks (sluice.outbox), by sink name.
local OUTBOX = {
  { "gauge", "sluice_outbox_depth", "Rows queued in the outbox for a sink.", { "sink" } },
  { "gauge", "sluice_outbox_oldest_age_seconds",
    "Age of the oldest row queued for a sink, in seconds (0 when none is).", { "sink" } },
  { "gauge", "sluice_outbox_max_rows", "The bound on the rows queued for a sink (max_rows).", { "sink" } },
  { "counter", "sluice_outbox_forwarded_rows_total", "Rows a sink acknowledged.", { "sink" } },
  { "gauge", "sluice_outbox_rows_per_second",
    "Rows a sink acknowledged a second, over the last 10 seconds.", { "sink" } },
  { "counter", "sluice_outbox_errors_total",
    "Failed writes to a sink (retried) and batches it refused (dead-lettered).", { "sink" } },
  { "counter", "sluice_outbox_dead_letters_total", "Rows a sink refused, moved to sluice_dead_letters.", { "sink" } },
  { "counter", "sluice_outbox_dropped_rows_total",
    "Rows dropped unsent because the outbox was full (on_full = drop_oldest).", { "sink" } },
  { "counter", "sluice_outbox_refused_total",
    "Commits refused because the outbox was full (on_full = stop).", { "sink" } },
  { "gauge", "sluice_outbox_breaker_state",
    "A sink's circuit breaker state, one series per state (1 for the current one).", { "sink", "state" } },
}

local LIMITERS = {
  { "gauge", "sluice_limiter_rate", "Current global rate of the limiter, in requests per second.",
    { "limiter" } },
  { "gauge", "sluice_limiter_endpoint_rate", "Current rate per endpoint, in requests per second.",
    { "limiter", "endpoint" } },
  { "gauge", "sluice_limiter_quota_remaining",
    "Requests left in the provider's quota, as its headers last said, per endpoint.",
    { "limiter", "endpoint" } },
  { "gauge", "sluice_limiter_endpoint_backoff", "1 while the endpoint is backing off.",
    { "limiter", "endpoint" } },
  { "counter", "sluice_limiter_requests_total", "Requests the limiter let through.", { "limiter" } },
  { "counter", "sluice_limiter_violations_total", "Rate limit violations (429s, 418s) seen.", { "limiter" } },
  { "counter", "sluice_limiter_wait_seconds_total", "Seconds tasks spent waiting in the limiter.",
    { "limiter" } },
  { "counter", "sluice_limiter_rate_adjustments_total", "Times the limiter changed its rate.",
    { "limiter" } },
  { "gauge", "sluice_limiter_backoff_multiplier", "Current backoff multiplier (1 when not backing off).",
    { "limiter" } },
  { "gauge", "sluice_limiter_waiting_tasks", "Tasks waiting in the limiter now.", { "limiter" } },
  { "gauge", "sluice_limiter_shared_up",
    "1 while a shared limiter takes its slots from Redis, 0 while Redis is away and it limits locally.",
    { "limiter" } },
  { "counter", "sluice_limiter_shared_admissions_total", "Requests a shared limiter admitted through Redis.",
    { "limiter" } },
  { "counter", "sluice_limiter_shared_timeouts_total",
    "Requests a shared limiter refused because their slot was past max_wait.", { "limiter" } },
  { "counter", "sluice_limiter_shared_errors_total",
    "Requests a shared limiter let through on local limits alone because Redis could not be reached.",
    { "limiter" } },
}

local CACHE = {
  { "counter", "sluice_cache_hits_total",
    "Requests with cache = seconds answered from memory (a kept answer, or that of the same request in flight)." },
  { "counter", "sluice_cache_misses_total",
    "Requests with cache = seconds that went to the network (or shared the failure of the same request in flight)." },
  { "counter", "sluice_cache_evictions_total",
    "Answers dropped, least recently used first, to keep the response cache within max_bytes." },
  { "counter", "sluice_cache_expirations_total", "Answers freed when their time was up." },
  { "gauge", "sluice_cache_bytes", "Bytes the response cache holds (its answers' keys, bodies and headers)." },
  { "gauge", "sluice_cache_entries", "Answers the response cache holds." },
  { "gauge", "sluice_cache_max_bytes", "The response cache's bound, in bytes (cache.max_bytes)." },
}

local BACKFILLS = {
  { "gauge", "sluice_backfill_jobs", "Backfill jobs of this process, by state.", { "state" } },
  { "counter", "sluice_backfill_operations_total",
    "Backfill windows finished, by collector and outcome (success, error, elsewhere: done by another instance).",
    { "collector", "status" } },
  { "counter", "sluice_backfill_rows_total", "Rows stored by backfills, by collector.", { "collector" } },
}

local TASKS = {
  { "gauge", "sluice_tasks",
    "Tasks by state, as sluice.tasks() counts them (running: every live task, waiting and ready included).",
    { "state" } },
  { "counter", "sluice_tasks_created_total", "Tasks created." },
  { "counter", "sluice_tasks_failed_total", "Tasks that ended with an error." },
  { "counter", "sluice_tasks_killed_total", "Tasks killed." },
}

local HTTP = {
  { "gauge", "sluice_http_requests_in_flight", "HTTP client requests started and not yet finished." },
}

local PROCESS = {
  { "gauge", "sluice_build_info", "sluice's version, as a label; always 1.", { "version" } },
  { "gauge", "sluice_process_resident_memory_bytes", "Resident memory size in bytes." },
  { "gauge", "sluice_process_virtual_memory_bytes", "Virtual memory size in bytes." },
  { "counter", "sluice_process_cpu_seconds_total", "User and system CPU time spent, in seconds." },
  { "gauge", "sluice_process_start_time_seconds", "Start time of the process since the epoch, in seconds." },
  { "gauge", "sluice_lua_memory_bytes", "Memory used by the Lua VM, in bytes." },
}

local LOG = {
  { "counter", "sluice_log_dropped_total",
    "Log lines dropped because the log output did not keep up (a stalled reader of stdout) or failed." },
  { "counter", "sluice_log_dropped_bytes_total", "Bytes of the log lines dropped." },
}

local HEALTH = { "healthy", "degraded", "failed", "circuit_open" }

local function collectors(f)
  local app = loaded("sluice.app")
  local current = app and app.current
  if not current or type(current.collectors) ~= "table" then return end
  for name, inst in pairs(current.collectors) do
    local st = type(inst.counters) == "function" and inst:counters()
    if st then
      local c = inst.name or name
      f.sluice_collection_requests_total:inc(st.collections_completed or 0, c, "success")
      f.sluice_collection_requests_total:inc(st.collections_failed or 0, c, "error")
      f.sluice_collection_requests_total:inc(st.collections_skipped or 0, c, "skipped")
      f.sluice_collector_requests_total:inc(st.successful_requests or 0, c, "success")
      f.sluice_collector_requests_total:inc(st.failed_requests or 0, c, "failure")
      f.sluice_records_processed_total:inc(st.data_points_collected or 0, c)
      f.sluice_collection_duration_seconds:set_totals(st.total_runtime or 0,
        (st.collections_completed or 0) + (st.collections_failed or 0), c)
      -- runs in progress: one per dataset at most (the totals' timestamps
      -- cannot tell, with datasets running side by side)
      f.sluice_active_collections:set(inst:runs_in_flight(), c)
      local health = inst.health and inst:health() or "healthy"
      for _, h in ipairs(HEALTH) do
        f.sluice_collector_health:set(h == health and 1 or 0, c, h)
      end
      local up = inst.running and (health == "healthy" or health == "degraded")
      f.sluice_collector_up:set(up and 1 or 0, c)
      f.sluice_collector_consecutive_failures:set(st.consecutive_failures or 0, c)
      if st.last_success then
        f.sluice_collector_last_success_timestamp_seconds:set(st.last_success, c)
      end
    end
  end
end

local function datasets(f)
  local app = loaded("sluice.app")
  local current = app and app.current
  if not current or type(current.collectors) ~= "table" then return end
  for name, inst in pairs(current.collectors) do
    local st = type(inst.counters) == "function" and inst:counters()
    for dname, d in pairs(st and st.datasets or {}) do
      local c = inst.name or name
      f.sluice_dataset_collections_total:inc(d.collections_completed, c, dname, "success")
      f.sluice_dataset_collections_total:inc(d.collections_failed, c, dname, "error")
      f.sluice_dataset_collections_total:inc(d.collections_skipped, c, dname, "skipped")
      f.sluice_dataset_records_processed_total:inc(d.data_points_collected, c, dname)
      f.sluice_dataset_interval_seconds:set(d.interval, c, dname)
      local health = inst:health(dname)
      for _, h in ipairs(HEALTH) do
        f.sluice_dataset_health:set(h == health and 1 or 0, c, dname, h)
      end
      if d.last_success then f.sluice_dataset_last_success_timestamp_seconds:set(d.last_success, c, dname) end
    end
  end
end

-- Exchange collectors (sluice.exchange): the reference's exchange-manager
-- statistics, and each dataset's data lag (sluice.exchange.stats).
local EXCHANGES = {
  { "gauge", "sluice_exchanges",
    "Exchange collectors by health: total, healthy, degraded, failed (failed or circuit open).", { "status" } },
  { "gauge", "sluice_exchange_success_rate",
    "Share of an exchange collector's requests that succeeded, in percent.", { "exchange" } },
  { "summary", "sluice_exchange_response_time_seconds",
    "Response time of an exchange collector's requests, in seconds.", { "exchange" } },
  { "gauge", "sluice_dataset_lag_seconds",
    "Seconds from the newest data an exchange collector's dataset stored to now.", { "collector", "dataset" } },
}

local function exchanges(f)
  local xstats = loaded("sluice.exchange.stats")
  local app = loaded("sluice.app")
  local current = app and app.current
  if not xstats or not current or type(current.order) ~= "table" then return end
  local st = xstats.exchanges(current.order)
  f.sluice_exchanges:set(st.total_exchanges, "total")
  f.sluice_exchanges:set(st.healthy_exchanges, "healthy")
  f.sluice_exchanges:set(st.degraded_exchanges, "degraded")
  f.sluice_exchanges:set(st.failed_exchanges, "failed")
  xstats.each(current.order, function(c)
    local cn = c:counters()
    if cn.total_requests > 0 then
      f.sluice_exchange_success_rate:set(cn.successful_requests / cn.total_requests * 100, c.name)
    end
    f.sluice_exchange_response_time_seconds:set_totals(cn.latency_total, cn.latency_count, c.name)
    for _, dname in ipairs(c:datasets() or {}) do
      local lag = xstats.lag(c, dname)
      if lag then f.sluice_dataset_lag_seconds:set(lag, c.name, dname) end
    end
  end)
end

local function breakers(f)
  local breaker = loaded("sluice.breaker")
  if not breaker then return end
  for name, cb in pairs(breaker.all()) do
    local s = cb:status()
    local m = cb:metrics()
    local stats = s.statistics or {}
    for _, state in ipairs({ "closed", "open", "half-open" }) do
      f.sluice_breaker_state:set(s.state == state and 1 or 0, name, state)
    end
    f.sluice_breaker_opens_total:inc(stats.circuit_opens or 0, name)
    f.sluice_breaker_recoveries_total:inc(stats.successful_recoveries or 0, name, "success")
    f.sluice_breaker_recoveries_total:inc(stats.failed_recoveries or 0, name, "failure")
    f.sluice_breaker_failures_total:inc(stats.total_failures or 0, name)
    f.sluice_breaker_successes_total:inc(stats.total_successes or 0, name)
    f.sluice_breaker_rejected_total:inc(m.rejected or 0, name)
    f.sluice_breaker_slow_calls_total:inc(m.slow_calls or 0, name)
    f.sluice_breaker_open_seconds_total:inc(stats.time_in_open_state or 0, name)
    f.sluice_breaker_consecutive_failures:set(s.failure_count or 0, name)
    f.sluice_breaker_health_score:set(s.health_score or 0, name)
  end
end

local function outbox(f)
  local app = loaded("sluice.app")
  local current = app and app.current
  local box = current and current.outbox
  if not box or not current.store:is_open() then return end
  for name, st in pairs(box:status()) do
    f.sluice_outbox_depth:set(st.depth or 0, name)
    f.sluice_outbox_oldest_age_seconds:set(st.oldest_age or 0, name)
    f.sluice_outbox_max_rows:set(st.max_rows, name)
    f.sluice_outbox_forwarded_rows_total:inc(st.forwarded or 0, name)
    f.sluice_outbox_rows_per_second:set(st.rows_per_second, name)
    f.sluice_outbox_errors_total:inc(st.errors, name)
    f.sluice_outbox_dead_letters_total:inc(st.dead_letters or 0, name)
    f.sluice_outbox_dropped_rows_total:inc(st.dropped or 0, name)
    f.sluice_outbox_refused_total:inc(st.refused, name)
    for _, state in ipairs({ "closed", "open", "half-open" }) do
      f.sluice_outbox_breaker_state:set(st.breaker == state and 1 or 0, name, state)
    end
  end
end

local function limiters(f)
  local limiter = loaded("sluice.limiter")
  if not limiter then return end
  for _, lim in pairs(limiter.all()) do
    local s = lim:stats()
    local m = lim:metrics()
    local name = s.limiter_name
    f.sluice_limiter_rate:set(s.current_global_rate or 0, name)
    f.sluice_limiter_requests_total:inc(s.total_requests or 0, name)
    f.sluice_limiter_violations_total:inc(s.total_violations or 0, name)
    f.sluice_limiter_wait_seconds_total:inc(s.total_wait_time or 0, name)
    f.sluice_limiter_rate_adjustments_total:inc(s.rate_adjustments or 0, name)
    f.sluice_limiter_backoff_multiplier:set(m.backoff_multiplier or 1, name)
    f.sluice_limiter_waiting_tasks:set(m.waiting or 0, name)
    local sh = s.shared
    if sh then
      f.sluice_limiter_shared_up:set(sh.state == "shared" and 1 or 0, name)
      f.sluice_limiter_shared_admissions_total:inc(sh.admitted, name)
      f.sluice_limiter_shared_timeouts_total:inc(sh.timeouts, name)
      f.sluice_limiter_shared_errors_total:inc(sh.errors, name)
    end
    for endpoint, e in pairs(s.endpoints or {}) do
      f.sluice_limiter_endpoint_rate:set(e.rate or 0, name, endpoint)
      f.sluice_limiter_endpoint_backoff:set(e.in_backoff and 1 or 0, name, endpoint)
      if e.rate_limit_remaining then
        f.sluice_limiter_quota_remaining:set(e.rate_limit_remaining, name, endpoint)
      end
    end
  end
end

local function response_cache(f)
  local app = loaded("sluice.app")
  local current = app and app.current
  local store = current and current.cache
  if not store then return end
  local s = store:stats()
  f.sluice_cache_hits_total:inc(s.hits)
  f.sluice_cache_misses_total:inc(s.misses)
  f.sluice_cache_evictions_total:inc(s.evictions)
  f.sluice_cache_expirations_total:inc(s.expirations)
  f.sluice_cache_bytes:set(s.bytes)
  f.sluice_cache_entries:set(s.entries)
  f.sluice_cache_max_bytes:set(s.max_bytes)
end

local function backfills(f)
  local jobs = f.sluice_backfill_jobs
  for _, state in ipairs({ "running", "done", "failed", "cancelled" }) do jobs:set(0, state) end
  local backfill = loaded("sluice.backfill")
  if not backfill then return end
  for _, st in pairs(backfill.jobs()) do
    jobs:inc(1, st.state)
    f.sluice_backfill_operations_total:inc(st.windows_done or 0, st.collector, "success")
    f.sluice_backfill_operations_total:inc(st.windows_failed or 0, st.collector, "error")
    if (st.windows_elsewhere or 0) > 0 then
      f.sluice_backfill_operations_total:inc(st.windows_elsewhere, st.collector, "elsewhere")
    end
    f.sluice_backfill_rows_total:inc(st.rows or 0, st.collector)
  end
end

local function tasks(f)
  local t = sluice.tasks()
  for _, state in ipairs({ "running", "waiting", "ready" }) do
    f.sluice_tasks:set(t[state] or 0, state)
  end
  f.sluice_tasks_created_total:inc(t.created or 0)
  f.sluice_tasks_failed_total:inc(t.failed or 0)
  f.sluice_tasks_killed_total:inc(t.killed or 0)
end

local function http_client(f)
  f.sluice_http_requests_in_flight:set(http.in_flight())
end

local function process(f)
  f.sluice_build_info:set(1, tostring(sluice._VERSION or "unknown"))
  f.sluice_lua_memory_bytes:set(collectgarbage("count") * 1024)
  local rss, vsz = procinfo.memory()
  if rss then
    f.sluice_process_resident_memory_bytes:set(rss)
    f.sluice_process_virtual_memory_bytes:set(vsz)
  end
  local cpu = procinfo.cpu_seconds()
  if cpu then f.sluice_process_cpu_seconds_total:inc(cpu) end
  local t0 = procinfo.start_time()
  if t0 then f.sluice_process_start_time_seconds:set(t0) end
end

local function log_output(f)
  local lines, bytes = core_log.dropped()
  f.sluice_log_dropped_total:inc(lines)
  f.sluice_log_dropped_bytes_total:inc(bytes)
end

local ALL = { COLLECTORS, DATASETS, EXCHANGES, BREAKERS, OUTBOX, LIMITERS, CACHE, BACKFILLS, TASKS, HTTP, PROCESS,
  LOG }

--- names() -> the names of the built-in families, in the order declared
-- (besides sluice_http_requests_total and sluice_http_request_duration_seconds,
-- which are registered).
function _M.names()
  local out = {}
  for _, fams in ipairs(ALL) do
    for _, d in ipairs(fams) do out[#out + 1] = d[2] end
  end
  return out
end

local installed = false

--- install(): adds the built-in sources and the HTTP client's observer;
-- once.
function _M.install()
  if installed then return end
  installed = true
  registry.add_source(COLLECTORS, collectors)
  registry.add_source(DATASETS, datasets)
  registry.add_source(EXCHANGES, exchanges)
  registry.add_source(BREAKERS, breakers)
  registry.add_source(OUTBOX, outbox)
  registry.add_source(LIMITERS, limiters)
  registry.add_source(CACHE, response_cache)
  registry.add_source(BACKFILLS, backfills)
  registry.add_source(TASKS, tasks)
  registry.add_source(HTTP, http_client)
  registry.add_source(PROCESS, process)
  registry.add_source(LOG, log_output)
  http.add_observer(_M.http_request)
end

return _M
