--- sluice.metrics: Prometheus metrics, in the text exposition format 0.0.4.
--
--   local metrics = require "sluice.metrics"
--   local rows = metrics.counter("binance_rows_total", "Rows stored.", { labels = { "symbol" } })
--   rows:inc(12, "BTCUSDT")                  -- or rows:inc(12, { symbol = "BTCUSDT" })
--   local lag = metrics.gauge("binance_lag_seconds", "Seconds behind the exchange.")
--   lag:set(3.5)                             -- also lag:inc(n), lag:dec(n)
--   local h = metrics.histogram("binance_page_seconds", "Time per page.",
--                               { labels = { "symbol" }, buckets = { 0.1, 1, 10 } })
--   h:observe(0.42, "BTCUSDT")
--   srv:route("GET", "/metrics", metrics.handler)   -- or metrics.render(), metrics.CONTENT_TYPE
--
-- Names match [a-zA-Z_:][a-zA-Z0-9_:]*; a counter's name ends in _total and
-- no other metric's does (nor in _bucket, _count or _sum); label names match
-- [a-zA-Z_][a-zA-Z0-9_]* and do not start with "__" ("le" is reserved for
-- histograms). Registering a name again with the same type and labels
-- returns the metric already registered; anything else raises. Labels are
-- given as values in the declared order (m:inc(1, "a", "b"), or as a list)
-- or as a table by name (m:inc(1, {x = "a", y = "b"})). m:value(labels)
-- reads a series (a histogram gives {count, sum, buckets = {[le] = n}}),
-- m:remove(labels) drops one, m:reset() drops them all, m:render() gives
-- its text alone.
--
-- render() also reports sluice's own state, read when it is called (see
-- "built-in families" below): collectors of the running app (sluice.app),
-- breakers, limiters, backfill jobs, tasks, the process and the HTTP client
-- (whose requests sluice.http records here as they complete).
local redact = require "sluice.redact"

local _M = {}

local type, tostring, tonumber, pairs, ipairs, select, next = type, tostring, tonumber, pairs, ipairs, select, next
local format, concat, sort = string.format, table.concat, table.sort
local floor, huge = math.floor, math.huge

_M.CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_M.DEFAULT_BUCKETS = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 }

-- --- formatting -----------------------------------------------------------

--- format_value(v) -> the exposition's spelling of a number: integers
-- without a decimal point, +Inf, -Inf, NaN, and the shortest %g that reads
-- back exactly otherwise.
local function fmt(v)
  if v ~= v then return "NaN" end
  if v == huge then return "+Inf" end
  if v == -huge then return "-Inf" end
  if v == floor(v) and v > -2 ^ 53 and v < 2 ^ 53 then return format("%d", v) end
  local s = format("%.15g", v)
  if tonumber(s) ~= v then
    s = format("%.16g", v)
    if tonumber(s) ~= v then s = format("%.17g", v) end
  end
  return s
end
_M.format_value = fmt

local LABEL_ESC = { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }
local HELP_ESC = { ["\\"] = "\\\\", ["\n"] = "\\n" }

--- escape_label(s) -> s with backslash, double quote and newline escaped.
local function escape_label(s)
  return (s:gsub('[\\"\n]', LABEL_ESC))
end
_M.escape_label = escape_label

local function escape_help(s)
  return (s:gsub("[\\\n]", HELP_ESC))
end

local function label_string(v)
  if type(v) == "number" then return fmt(v) end
  return tostring(v)
end

-- --- metrics ----------------------------------------------------------------

local NAME = "^[a-zA-Z_:][a-zA-Z0-9_:]*$"
local LABEL = "^[a-zA-Z_][a-zA-Z0-9_]*$"

local Metric = {}
Metric.__index = Metric

local registry = {} -- name -> metric registered by register()
local reserved = {} -- names of the built-in families computed at render time

local function where(m, fname)
  return "sluice.metrics." .. m.type .. "." .. fname .. " '" .. m.name .. "'"
end

-- Finds (or with create, makes) the series of the label values given.
local function series_of(m, level, create, ...)
  local n = m.nlabels
  local first = ...
  if n == 0 then
    if first ~= nil and not (type(first) == "table" and next(first) == nil) then
      error(where(m, "labels") .. " has no labels", level)
    end
    local s = m.series[""]
    if not s and create then
      s = m.new_series("")
      m.series[""] = s
    end
    return s
  end
  local key, parts
  if n == 1 and type(first) ~= "table" and first ~= nil and select("#", ...) == 1 then
    key = label_string(first) -- the common case: one label, given as a value
    parts = { key }
  else
    local values, count
    if type(first) ~= "table" then
      values, count = { ... }, select("#", ...)
    elseif first[1] ~= nil then
      values, count = first, #first
    else
      values, count = {}, n
      for k in pairs(first) do
        if not m.label_index[k] then
          error(where(m, "labels") .. ": unknown label '" .. tostring(k) .. "' (labels: "
            .. concat(m.labels, ", ") .. ")", level)
        end
      end
      for i = 1, n do
        local v = first[m.labels[i]]
        if v == nil then
          error(where(m, "labels") .. ": missing label '" .. m.labels[i] .. "'", level)
        end
        values[i] = v
      end
    end
    if count ~= n then
      error(format("%s: expected %d label value%s (%s), got %d", where(m, "labels"), n,
        n == 1 and "" or "s", concat(m.labels, ", "), count), level)
    end
    parts = {}
    for i = 1, n do
      local v = values[i]
      if v == nil then
        error(where(m, "labels") .. ": label '" .. m.labels[i] .. "' is nil", level)
      end
      parts[i] = label_string(v)
    end
    key = n == 1 and parts[1] or concat(parts, "\0")
  end
  local s = m.series[key]
  if not s and create then
    local pairs_ = {}
    for i = 1, n do
      -- a label shows no credentials (URL user info, configured secrets)
      pairs_[i] = m.labels[i] .. '="' .. escape_label(redact.text(parts[i])) .. '"'
    end
    s = m.new_series("{" .. concat(pairs_, ",") .. "}")
    m.series[key] = s
  end
  return s
end

local function check_number(m, fname, v, level)
  if type(v) ~= "number" or v ~= v then
    error(where(m, fname) .. ": bad value (number expected, got " .. (type(v) == "number"
      and "nan" or type(v)) .. ")", level)
  end
end

--- c:inc([n = 1,] labels...) adds n (>= 0 for a counter) to the series.
function Metric:inc(n, ...)
  if n == nil then
    n = 1
  elseif type(n) ~= "number" then
    return self:inc(1, n, ...)
  end
  check_number(self, "inc", n, 3)
  if self.type == "counter" and n < 0 then
    error(where(self, "inc") .. ": a counter cannot decrease (got " .. fmt(n) .. ")", 2)
  end
  local s = series_of(self, 3, true, ...)
  s.value = s.value + n
  return s.value
end

--- g:dec([n = 1,] labels...) (gauges).
function Metric:dec(n, ...)
  if n == nil then
    n = 1
  elseif type(n) ~= "number" then
    return self:dec(1, n, ...)
  end
  check_number(self, "dec", n, 3)
  local s = series_of(self, 3, true, ...)
  s.value = s.value - n
  return s.value
end

--- g:set(v, labels...) (gauges).
function Metric:set(v, ...)
  if type(v) ~= "number" then
    error(where(self, "set") .. ": bad value (number expected, got " .. type(v) .. ")", 2)
  end
  local s = series_of(self, 3, true, ...)
  s.value = v
  return v
end

--- h:observe(v, labels...) (histograms).
function Metric:observe(v, ...)
  check_number(self, "observe", v, 3)
  local s = series_of(self, 3, true, ...)
  local b = self.buckets
  local counts = s.counts
  for i = 1, #b do
    if v <= b[i] then
      counts[i] = counts[i] + 1
      break
    end
  end
  s.count = s.count + 1
  s.sum = s.sum + v
end

--- m:value(labels...) -> the series' value (nil when it has none yet); a
-- histogram's is {count, sum, buckets = {[le] = cumulative count}}.
function Metric:value(...)
  local s = series_of(self, 3, false, ...)
  if not s then return nil end
  if self.type ~= "histogram" then return s.value end
  local out, acc = { count = s.count, sum = s.sum, buckets = {} }, 0
  for i, le in ipairs(self.le) do
    acc = acc + s.counts[i]
    out.buckets[le] = acc
  end
  out.buckets["+Inf"] = s.count
  return out
end

--- m:remove(labels...) drops one series; m:reset() drops them all.
function Metric:remove(...)
  local s = series_of(self, 3, false, ...)
  if not s then return false end
  for k, v in pairs(self.series) do
    if v == s then self.series[k] = nil end
  end
  return true
end

function Metric:reset()
  self.series = {}
end

local OPTIONS = { labels = true, buckets = true }

local function check_labels(fname, labels, kind)
  if labels == nil then return {} end
  if type(labels) ~= "table" then
    error(fname .. ": option 'labels' must be a list of strings, got " .. type(labels), 4)
  end
  local seen, out = {}, {}
  for i, l in ipairs(labels) do
    if type(l) ~= "string" or not l:match(LABEL) or l:sub(1, 2) == "__" then
      error(fname .. ": bad label name '" .. tostring(l)
        .. "' (must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __)", 4)
    end
    if kind == "histogram" and l == "le" then
      error(fname .. ": label name 'le' is reserved for histogram buckets", 4)
    end
    if seen[l] then error(fname .. ": label '" .. l .. "' given twice", 4) end
    seen[l] = true
    out[i] = l
  end
  return out
end

local function check_buckets(fname, buckets)
  if buckets == nil then buckets = _M.DEFAULT_BUCKETS end
  if type(buckets) ~= "table" or buckets[1] == nil then
    error(fname .. ": option 'buckets' must be a non-empty list of numbers", 4)
  end
  local out = {}
  for i, b in ipairs(buckets) do
    if type(b) ~= "number" or b ~= b then
      error(fname .. ": buckets[" .. i .. "] must be a number", 4)
    end
    if i > 1 and not (b > buckets[i - 1]) then
      error(fname .. ": buckets must be strictly increasing (buckets[" .. i .. "] = "
        .. fmt(b) .. ")", 4)
    end
    if b ~= huge then out[#out + 1] = b end
  end
  return out
end

local function same_list(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do
    if a[i] ~= b[i] then return false end
  end
  return true
end

local function make(kind, name, help, labels, buckets)
  local m = setmetatable({
    name = name, help = help, type = kind, labels = labels, nlabels = #labels,
    label_index = {}, series = {},
  }, Metric)
  for i, l in ipairs(labels) do m.label_index[l] = i end
  if kind == "histogram" then
    m.buckets = buckets
    m.le = {}
    for i, b in ipairs(buckets) do m.le[i] = fmt(b) end
    local nb = #buckets
    m.new_series = function(ls)
      local counts = {}
      for i = 1, nb do counts[i] = 0 end
      return { labels = ls, counts = counts, count = 0, sum = 0 }
    end
  elseif kind == "summary" then
    m.new_series = function(ls) return { labels = ls, count = 0, sum = 0 } end
  else
    m.new_series = function(ls) return { labels = ls, value = 0 } end
  end
  return m
end

local function register(kind, name, help, opts)
  local fname = "sluice.metrics." .. kind
  if type(name) ~= "string" or not name:match(NAME) then
    error(fname .. ": bad metric name '" .. tostring(name) .. "' (must match [a-zA-Z_:][a-zA-Z0-9_:]*)", 3)
  end
  if type(help) ~= "string" or help == "" then
    error(fname .. ": metric '" .. name .. "' needs a help string", 3)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error(fname .. ": bad argument #3 'opts' (table expected, got " .. type(opts) .. ")", 3)
  end
  opts = opts or {}
  for k in pairs(opts) do
    if not OPTIONS[k] or (k == "buckets" and kind ~= "histogram") then
      error(fname .. ": unknown option '" .. tostring(k) .. "'", 3)
    end
  end
  local old = registry[name]
  if old and old.type ~= kind then
    error(fname .. ": '" .. name .. "' is already registered as a " .. old.type, 3)
  end
  if kind == "counter" then
    if not name:match("_total$") then
      error(fname .. ": counter name '" .. name .. "' must end in _total", 3)
    end
  else
    for _, suffix in ipairs({ "_total", "_bucket", "_count", "_sum" }) do
      if name:sub(-#suffix) == suffix then
        error(fname .. ": a " .. kind .. " name must not end in " .. suffix .. " (got '" .. name .. "')", 3)
      end
    end
  end
  if reserved[name] then
    error(fname .. ": '" .. name .. "' is a built-in sluice metric", 3)
  end
  local labels = check_labels(fname, opts.labels, kind)
  local buckets = kind == "histogram" and check_buckets(fname, opts.buckets) or nil
  if old then
    if not same_list(old.labels, labels) then
      error(fname .. ": '" .. name .. "' is already registered with labels ("
        .. concat(old.labels, ", ") .. ")", 3)
    end
    if buckets and not same_list(old.buckets, buckets) then
      error(fname .. ": '" .. name .. "' is already registered with other buckets", 3)
    end
    return old
  end
  local m = make(kind, name, help, labels, buckets)
  registry[name] = m
  return m
end

--- counter(name, help [, {labels = {...}}]) -> counter (inc)
function _M.counter(name, help, opts) return register("counter", name, help, opts) end
--- gauge(name, help [, {labels = {...}}]) -> gauge (set, inc, dec)
function _M.gauge(name, help, opts) return register("gauge", name, help, opts) end
--- histogram(name, help [, {labels = {...}, buckets = {...}}]) -> histogram
-- (observe); buckets default to DEFAULT_BUCKETS, +Inf is implied.
function _M.histogram(name, help, opts) return register("histogram", name, help, opts) end

--- get(name) -> the registered metric of that name, or nil.
function _M.get(name) return registry[name] end

--- unregister(name) -> whether a metric of that name was registered.
function _M.unregister(name)
  local had = registry[name] ~= nil
  registry[name] = nil
  return had
end

-- --- the HTTP client's metrics (recorded by sluice.http) ------------------

local http_requests = _M.counter("sluice_http_requests_total",
  "HTTP client requests, by host, method and status code (or failure kind: timeout, connect, dns, "
    .. "tls, too_large, protocol, aborted).",
  { labels = { "host", "method", "code" } })
local http_duration = _M.histogram("sluice_http_request_duration_seconds",
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
-- when it completed.
function _M.http_request(url, method, code, seconds)
  local host = host_of(url)
  http_requests:inc(1, host, method or "GET", code or "error")
  if type(seconds) == "number" and seconds == seconds then
    http_duration:observe(seconds, host)
  end
end

-- --- built-in families, read from live state at render time ---------------
--
-- A family is made fresh on every render and never registered.

local builtin = {} -- name -> {type, help, labels}
local builtin_order = {}

local function def(kind, name, help, labels)
  builtin[name] = { kind, help, labels or {} }
  builtin_order[#builtin_order + 1] = name
  reserved[name] = true
end

-- collectors (of the running app)
def("counter", "sluice_collection_requests_total",
  "Collections run, by collector and outcome (success: rows stored; error: collect or storing failed).",
  { "collector", "status" })
def("summary", "sluice_collection_duration_seconds",
  "Time spent in collections, in seconds, by collector.", { "collector" })
def("counter", "sluice_collector_requests_total",
  "API requests made by a collector's request pipeline, by outcome.", { "collector", "status" })
def("counter", "sluice_records_processed_total",
  "Data points (rows) collected and stored, by collector.", { "collector" })
def("gauge", "sluice_active_collections",
  "Collections in progress, by collector.", { "collector" })
def("gauge", "sluice_collector_up",
  "1 when the collector is running and healthy or degraded, 0 when stopped, failed or its circuit is open.",
  { "collector" })
def("gauge", "sluice_collector_health",
  "The collector's health, one series per status (1 for the current one).", { "collector", "status" })
def("gauge", "sluice_collector_consecutive_failures",
  "Collections failed in a row, by collector.", { "collector" })
def("gauge", "sluice_collector_last_success_timestamp_seconds",
  "When the collector last completed a collection (epoch seconds).", { "collector" })
-- breakers
def("gauge", "sluice_breaker_state",
  "Circuit breaker state, one series per state (1 for the current one).", { "breaker", "state" })
def("counter", "sluice_breaker_opens_total", "Times the circuit breaker opened.", { "breaker" })
def("counter", "sluice_breaker_recoveries_total",
  "Half-open trials that ended, by result (success: closed again; failure: reopened).",
  { "breaker", "result" })
def("counter", "sluice_breaker_failures_total", "Calls the breaker recorded as failed.", { "breaker" })
def("counter", "sluice_breaker_successes_total", "Calls the breaker recorded as successful.", { "breaker" })
def("counter", "sluice_breaker_rejected_total", "Calls the breaker refused.", { "breaker" })
def("counter", "sluice_breaker_slow_calls_total", "Calls slower than slow_call_duration.", { "breaker" })
def("counter", "sluice_breaker_open_seconds_total",
  "Seconds the breaker has spent open.", { "breaker" })
def("gauge", "sluice_breaker_consecutive_failures",
  "Failures counted towards the threshold (kept while open).", { "breaker" })
def("gauge", "sluice_breaker_health_score",
  "Share of the calls the breaker recorded that succeeded (0 to 1; 1 before any).", { "breaker" })
-- limiters
def("gauge", "sluice_limiter_rate", "Current global rate of the limiter, in requests per second.",
  { "limiter" })
def("gauge", "sluice_limiter_endpoint_rate", "Current rate per endpoint, in requests per second.",
  { "limiter", "endpoint" })
def("gauge", "sluice_limiter_quota_remaining",
  "Requests left in the provider's quota, as its headers last said, per endpoint.",
  { "limiter", "endpoint" })
def("gauge", "sluice_limiter_endpoint_backoff", "1 while the endpoint is backing off.",
  { "limiter", "endpoint" })
def("counter", "sluice_limiter_requests_total", "Requests the limiter let through.", { "limiter" })
def("counter", "sluice_limiter_violations_total", "Rate limit violations (429s, 418s) seen.", { "limiter" })
def("counter", "sluice_limiter_wait_seconds_total", "Seconds tasks spent waiting in the limiter.",
  { "limiter" })
def("counter", "sluice_limiter_rate_adjustments_total", "Times the limiter changed its rate.",
  { "limiter" })
def("gauge", "sluice_limiter_backoff_multiplier", "Current backoff multiplier (1 when not backing off).",
  { "limiter" })
def("gauge", "sluice_limiter_waiting_tasks", "Tasks waiting in the limiter now.", { "limiter" })
def("gauge", "sluice_limiter_shared_up",
  "1 while a shared limiter takes its slots from Redis, 0 while Redis is away and it limits locally.",
  { "limiter" })
def("counter", "sluice_limiter_shared_admissions_total", "Requests a shared limiter admitted through Redis.",
  { "limiter" })
def("counter", "sluice_limiter_shared_timeouts_total",
  "Requests a shared limiter refused because their slot was past max_wait.", { "limiter" })
def("counter", "sluice_limiter_shared_errors_total",
  "Requests a shared limiter let through on local limits alone because Redis could not be reached.",
  { "limiter" })
-- backfills
def("gauge", "sluice_backfill_jobs", "Backfill jobs of this process, by state.", { "state" })
def("counter", "sluice_backfill_operations_total",
  "Backfill windows finished, by collector and outcome (success, error, elsewhere: done by another instance).",
  { "collector", "status" })
def("counter", "sluice_backfill_rows_total", "Rows stored by backfills, by collector.", { "collector" })
-- tasks
def("gauge", "sluice_tasks",
  "Tasks by state, as sluice.tasks() counts them (running: every live task, waiting and ready included).",
  { "state" })
def("counter", "sluice_tasks_created_total", "Tasks created.")
def("counter", "sluice_tasks_failed_total", "Tasks that ended with an error.")
def("counter", "sluice_tasks_killed_total", "Tasks killed.")
-- HTTP client
def("gauge", "sluice_http_requests_in_flight", "HTTP client requests started and not yet finished.")
-- process
def("gauge", "sluice_build_info", "sluice's version, as a label; always 1.", { "version" })
def("gauge", "sluice_process_resident_memory_bytes", "Resident memory size in bytes.")
def("gauge", "sluice_process_virtual_memory_bytes", "Virtual memory size in bytes.")
def("counter", "sluice_process_cpu_seconds_total", "User and system CPU time spent, in seconds.")
def("gauge", "sluice_process_start_time_seconds", "Start time of the process since the epoch, in seconds.")
def("gauge", "sluice_lua_memory_bytes", "Memory used by the Lua VM, in bytes.")
def("counter", "sluice_log_dropped_total",
  "Log lines dropped because the log output did not keep up (a stalled reader of stdout) or failed.")
def("counter", "sluice_log_dropped_bytes_total", "Bytes of the log lines dropped.")

--- builtin_names() -> the names of the built-in families render() computes
-- (besides sluice_http_requests_total and sluice_http_request_duration_seconds).
function _M.builtin_names()
  local out = {}
  for i, n in ipairs(builtin_order) do out[i] = n end
  return out
end

local function read_file(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local CLK_TCK = 100
do
  local ok, ffi = pcall(require, "ffi")
  if ok then
    pcall(ffi.cdef, "long sysconf(int name);")
    local ok2, v = pcall(function() return tonumber(ffi.C.sysconf(2)) end) -- _SC_CLK_TCK
    if ok2 and v and v > 0 then CLK_TCK = v end
  end
end

local start_time
local function process_start_time()
  if start_time ~= nil then return start_time or nil end
  start_time = false
  local stat, procstat = read_file("/proc/self/stat"), read_file("/proc/stat")
  local btime = procstat and tonumber(procstat:match("\nbtime (%d+)"))
  local rest = stat and stat:match("%) (.*)$")
  if btime and rest then
    local fields = {}
    for w in rest:gmatch("%S+") do fields[#fields + 1] = w end
    local ticks = tonumber(fields[20]) -- field 22, starttime
    if ticks then start_time = btime + ticks / CLK_TCK end
  end
  return start_time or nil
end

local function lazy(name)
  return package.loaded[name]
end

local sources = {}

sources[#sources + 1] = function(f)
  local app = lazy("sluice.app")
  local current = app and app.current
  if not current or type(current.collectors) ~= "table" then return end
  local HEALTH = { "healthy", "degraded", "failed", "circuit_open" }
  for name, inst in pairs(current.collectors) do
    local st = inst:counters()
    if st then
      local c = inst.name or name
      f.sluice_collection_requests_total:inc(st.collections_completed or 0, c, "success")
      f.sluice_collection_requests_total:inc(st.collections_failed or 0, c, "error")
      f.sluice_collection_requests_total:inc(st.collections_skipped or 0, c, "skipped")
      f.sluice_collector_requests_total:inc(st.successful_requests or 0, c, "success")
      f.sluice_collector_requests_total:inc(st.failed_requests or 0, c, "failure")
      f.sluice_records_processed_total:inc(st.data_points_collected or 0, c)
      local d = series_of(f.sluice_collection_duration_seconds, 2, true, c)
      d.sum = st.total_runtime or 0
      d.count = (st.collections_completed or 0) + (st.collections_failed or 0)
      -- run_once stamps last_collection when it starts and last_success or
      -- last_error_time when it ends: a later start is one in progress
      local started, ended = st.last_collection, math.max(st.last_success or 0, st.last_error_time or 0)
      f.sluice_active_collections:set((started and started > ended) and 1 or 0, c)
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

sources[#sources + 1] = function(f)
  local breaker = lazy("sluice.breaker")
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

sources[#sources + 1] = function(f)
  local limiter = lazy("sluice.limiter")
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

sources[#sources + 1] = function(f)
  local jobs = f.sluice_backfill_jobs
  for _, state in ipairs({ "running", "done", "failed", "cancelled" }) do jobs:set(0, state) end
  local backfill = lazy("sluice.backfill")
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

sources[#sources + 1] = function(f)
  local sluice = require "sluice"
  local t = sluice.tasks()
  for _, state in ipairs({ "running", "waiting", "ready" }) do
    f.sluice_tasks:set(t[state] or 0, state)
  end
  f.sluice_tasks_created_total:inc(t.created or 0)
  f.sluice_tasks_failed_total:inc(t.failed or 0)
  f.sluice_tasks_killed_total:inc(t.killed or 0)
  f.sluice_build_info:set(1, tostring(sluice._VERSION or "unknown"))
  local http = lazy("sluice.http")
  f.sluice_http_requests_in_flight:set(http and http.in_flight() or 0)
end

sources[#sources + 1] = function(f)
  local lines, bytes = require("sluice._log").dropped()
  f.sluice_log_dropped_total:inc(lines)
  f.sluice_log_dropped_bytes_total:inc(bytes)
end

sources[#sources + 1] = function(f)
  f.sluice_lua_memory_bytes:set(collectgarbage("count") * 1024)
  local status = read_file("/proc/self/status")
  if status then
    local rss = tonumber(status:match("VmRSS:%s*(%d+) kB"))
    local vsz = tonumber(status:match("VmSize:%s*(%d+) kB"))
    if rss then f.sluice_process_resident_memory_bytes:set(rss * 1024) end
    if vsz then f.sluice_process_virtual_memory_bytes:set(vsz * 1024) end
  end
  local stat = read_file("/proc/self/stat")
  local rest = stat and stat:match("%) (.*)$")
  if rest then
    local fields = {}
    for w in rest:gmatch("%S+") do fields[#fields + 1] = w end
    local utime, stime = tonumber(fields[12]), tonumber(fields[13]) -- fields 14, 15
    if utime and stime then
      f.sluice_process_cpu_seconds_total:inc((utime + stime) / CLK_TCK)
    end
  end
  local t0 = process_start_time()
  if t0 then f.sluice_process_start_time_seconds:set(t0) end
end

-- --- rendering -------------------------------------------------------------

local function by_labels(a, b) return a.labels < b.labels end

local function render_family(m, out)
  local n = #out
  local name = m.name
  out[n + 1] = "# HELP " .. name .. " " .. escape_help(m.help) .. "\n"
  out[n + 2] = "# TYPE " .. name .. " " .. m.type .. "\n"
  n = n + 2
  local list = {}
  for _, s in pairs(m.series) do list[#list + 1] = s end
  sort(list, by_labels)
  local kind = m.type
  for _, s in ipairs(list) do
    local ls = s.labels
    if kind == "histogram" then
      local prefix = ls == "" and "{le=\"" or (ls:sub(1, -2) .. ",le=\"")
      local acc = 0
      for i, le in ipairs(m.le) do
        acc = acc + s.counts[i]
        n = n + 1
        out[n] = name .. "_bucket" .. prefix .. le .. "\"} " .. fmt(acc) .. "\n"
      end
      out[n + 1] = name .. "_bucket" .. prefix .. "+Inf\"} " .. fmt(s.count) .. "\n"
      out[n + 2] = name .. "_sum" .. ls .. " " .. fmt(s.sum) .. "\n"
      out[n + 3] = name .. "_count" .. ls .. " " .. fmt(s.count) .. "\n"
      n = n + 3
    elseif kind == "summary" then
      out[n + 1] = name .. "_sum" .. ls .. " " .. fmt(s.sum) .. "\n"
      out[n + 2] = name .. "_count" .. ls .. " " .. fmt(s.count) .. "\n"
      n = n + 2
    else
      n = n + 1
      out[n] = name .. ls .. " " .. fmt(s.value) .. "\n"
    end
  end
end

--- m:render() -> the exposition text of this metric alone.
function Metric:render()
  local out = {}
  render_family(self, out)
  return concat(out)
end

local function by_name(a, b) return a.name < b.name end

--- render([opts]) -> the exposition text of every family, sorted by name.
-- opts.builtin = false leaves out the built-in families read from live
-- state (the HTTP client's, which are recorded, stay).
function _M.render(opts)
  local fams = {}
  for _, m in pairs(registry) do fams[#fams + 1] = m end
  if not (opts and opts.builtin == false) then
    local f = {}
    for _, name in ipairs(builtin_order) do
      local d = builtin[name]
      local m = make(d[1], name, d[2], d[3], nil)
      f[name] = m
      fams[#fams + 1] = m
    end
    for _, source in ipairs(sources) do
      local ok, err = pcall(source, f)
      if not ok then
        local log = lazy("sluice.log")
        if log then log.warning("metrics: a built-in source failed", { error = tostring(err) }) end
      end
    end
  end
  sort(fams, by_name)
  local out = {}
  for _, m in ipairs(fams) do render_family(m, out) end
  return concat(out)
end

--- handler(req) -> 200, the exposition, its content type: a sluice.server
-- route handler, srv:route("GET", "/metrics", metrics.handler).
function _M.handler()
  return 200, _M.render(), { ["content-type"] = _M.CONTENT_TYPE }
end

return _M
