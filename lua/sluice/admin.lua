--- sluice.admin: the operator's HTTP API, on sluice.server.
--
-- Started by a configuration's `admin = {host = "127.0.0.1", port = 8080,
-- token = collector.env("SLUICE_ADMIN_TOKEN")}`. Binding beyond loopback
-- without a token is refused. When a token is set, every mutating endpoint
-- (POST, DELETE) requires `Authorization: Bearer <token>` (401 otherwise).
--
--   GET  /health                   reference shape; 200 healthy, 503 not (with reasons)
--   GET  /status                   collectors' statistics and health, redacted config
--   GET  /circuit-breaker-status   { name = get_status() }
--   GET  /limiters                 { name = get_stats() }
--   GET  /data-quality             { table = quality report }
--   GET  /performance              reference shape
--   GET  /logs?level=&limit=&since= entries from the log ring, oldest first
--   GET  /metrics                  Prometheus text format
--   POST /collect                  {"collector": name} -> one collection now
--   POST /backfill                 reference request -> {task_id, status, ...}
--   GET  /backfill/{id}            progress;  DELETE /backfill/{id} cancels
--   POST /breakers/{name}/open | close | reset
--   POST /reload                   re-read the configuration
local sluice = require "sluice"
local server = require "sluice.server"
local log = require "sluice.log"
local cjson = require "cjson.safe"
local breaker = require "sluice.breaker"
local limiter = require "sluice.limiter"
local collector = require "sluice.collector"

local _M = {}

local started_wall = sluice.time()
local started_mono = sluice.now()

local function iso(t)
  if not t then return nil end
  return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t))
end

local function loopback(host)
  return host == "127.0.0.1" or host == "::1" or host == "localhost" or host:match("^127%.")
end

-- Compares in time independent of where the first difference is.
local function same(a, b)
  if type(a) ~= "string" or type(b) ~= "string" then return false end
  local diff = bit.bxor(#a, #b)
  for i = 1, #b do
    diff = bit.bor(diff, bit.bxor(a:byte(i) or 0, b:byte(i)))
  end
  return diff == 0
end

local SECRET_KEYS = { token = true, password = true, secret = true, key = true, value = true,
  bearer = true, api_key = true, apikey = true }

local function redact(v, key, seen)
  if collector.is_secret(v) then return "<secret>" end
  if type(v) == "function" then return nil end
  if type(v) ~= "table" then
    if key and SECRET_KEYS[tostring(key):lower()] and type(v) == "string" then return "<redacted>" end
    return v
  end
  seen = seen or {}
  if seen[v] then return "<cycle>" end
  seen[v] = true
  local out = {}
  for k, x in pairs(v) do out[k] = redact(x, k, seen) end
  return out
end

local function read_proc()
  local rss_mb, cpu
  local f = io.open("/proc/self/statm")
  if f then
    local _, rss = f:read("*n", "*n")
    f:close()
    if rss then rss_mb = rss * 4096 / 1048576 end
  end
  f = io.open("/proc/self/stat")
  if f then
    local line = f:read("*l") or ""
    f:close()
    local rest = line:match("%) (.*)$") or ""
    local fields = {}
    for x in rest:gmatch("%S+") do fields[#fields + 1] = x end
    local ticks = (tonumber(fields[12]) or 0) + (tonumber(fields[13]) or 0)
    cpu = ticks / 100
  end
  return rss_mb, cpu
end

local function json_body(req)
  if req.body == "" then return {} end
  local v, err = cjson.decode(req.body)
  if type(v) ~= "table" then
    return nil, "request body must be a JSON object" .. (err and (": " .. err) or "")
  end
  return v
end

local function check_fields(body, allowed)
  for k in pairs(body) do
    if not allowed[k] then return "unknown field '" .. tostring(k) .. "'" end
  end
end

local function bad(msg) return 400, { error = msg } end

-- The admin server's limits (see sluice.server.listen): every admin request
-- body is a small JSON object; an operator needs a handful of connections.
_M.LIMITS = {
  max_body = 16 * 1024,
  max_connections = 64,
  max_in_flight = 32,
  timeout = 30,
  request_timeout = 10,
}

--- start(app, opts) -> srv | nil, err. opts: host, port, token.
function _M.start(app, opts)
  opts = opts or {}
  local host = opts.host or "127.0.0.1"
  local token = collector.reveal(opts.token)
  if token == "" then token = nil end
  if not loopback(host) and not token then
    return nil, "admin: refusing to listen on " .. host
      .. " without a token (set admin.token, e.g. collector.env(\"SLUICE_ADMIN_TOKEN\"))"
  end
  local limits = {}
  for k, v in pairs(_M.LIMITS) do limits[k] = v end
  limits.host, limits.port = host, opts.port or 8080
  -- checked on the headers, before a body is read; guarded() below stays
  if token then limits.auth = { token = token, methods = { "POST", "DELETE" } } end
  local srv, listen_err = server.listen(limits)
  if not srv then return nil, "admin: " .. listen_err end

  local function guarded(handler)
    return function(req)
      if token then
        local auth = req.headers.authorization or ""
        if not same(auth:match("^Bearer (.+)$"), token) then
          return 401, { error = "unauthorized" }, { ["WWW-Authenticate"] = "Bearer" }
        end
      end
      return handler(req)
    end
  end

  -- a reload swaps the collectors inside the same app table
  local function collectors() return app.order end
  local function get_app() return app end

  srv:route("GET", "/health", function()
    local a = get_app()
    local reasons, last, last_ok, errors = {}, nil, nil, 0
    for _, c in ipairs(a.order) do
      local h = c:health()
      if h ~= "healthy" then reasons[#reasons + 1] = c.name .. " is " .. h end
      local st = c.stats_
      if st.last_collection and (not last or st.last_collection > last) then last = st.last_collection end
      if st.last_success and (not last_ok or st.last_success > last_ok) then last_ok = st.last_success end
      errors = errors + st.collections_failed
    end
    local db_ok, db_why = a.store and a.store:query("SELECT 1 AS one") ~= nil, nil
    if db_ok then db_ok, db_why = a.store:check() end -- a deleted file answers SELECT 1
    if not db_ok then reasons[#reasons + 1] = db_why or "database is not reachable" end
    -- without Redis, sluice goes on with local state: degraded, not down
    local degraded = a.shared and a.shared:degraded()
    local body = {
      status = #reasons > 0 and "unhealthy" or degraded and "degraded" or "healthy",
      degraded = degraded and { "redis is unreachable: state is local" } or nil,
      timestamp = iso(sluice.time()),
      service = a.config and a.config.name or "sluice",
      version = sluice._VERSION,
      uptime_seconds = sluice.now() - started_mono,
      database_connected = db_ok == true,
      last_collection = iso(last),
      last_successful_collection = iso(last_ok),
      collection_errors = errors,
      reasons = #reasons > 0 and reasons or nil,
    }
    return #reasons == 0 and 200 or 503, body
  end)

  srv:route("GET", "/status", function()
    local a = get_app()
    local cs = {}
    for _, c in ipairs(a.order) do cs[c.name] = c:stats() end
    return 200, {
      service = a.config and a.config.name or "sluice", version = sluice._VERSION,
      started_at = iso(started_wall), uptime_seconds = sluice.now() - started_mono,
      collectors = cs, tasks = sluice.tasks(), config = redact(a.config or {}),
    }
  end)

  srv:route("GET", "/circuit-breaker-status", function()
    local out = {}
    for name, cb in pairs(breaker.all()) do out[name] = cb:status() end
    return 200, out
  end)

  srv:route("GET", "/limiters", function()
    local out = {}
    for name, lim in pairs(limiter.all()) do out[name] = lim:stats() end
    return 200, out
  end)

  srv:route("GET", "/data-quality", function()
    return 200, get_app().store:quality()
  end)

  srv:route("GET", "/performance", function()
    local runtime, runs, ok, failed, lat, nlat = 0, 0, 0, 0, 0, 0
    for _, c in ipairs(collectors()) do
      local st = c.stats_
      runtime = runtime + st.total_runtime
      runs = runs + st.collections_completed + st.collections_failed
      ok = ok + st.successful_requests
      failed = failed + st.failed_requests
      lat = lat + (st.latency_total or 0)
      nlat = nlat + (st.latency_count or 0)
    end
    local t0 = sluice.now()
    get_app().store:query("SELECT 1 AS one")
    local db_ms = (sluice.now() - t0) * 1000
    local rss, cpu = read_proc()
    local total = ok + failed
    return 200, {
      avg_collection_time = runs > 0 and runtime / runs or 0,
      success_rate = total > 0 and 100 * ok / total or 100,
      error_rate = total > 0 and 100 * failed / total or 0,
      database_latency = db_ms,
      api_latency = nlat > 0 and 1000 * lat / nlat or 0,
      memory_usage_mb = rss,
      cpu_usage_percent = cpu and 100 * cpu / math.max(sluice.now() - started_mono, 1e-3) or nil,
    }
  end)

  local LEVELS = { trace = 0, debug = 1, info = 2, warning = 3, error = 4, critical = 5 }
  srv:route("GET", "/logs", function(req)
    local q = req.query
    local min = 0
    if q.level then
      min = LEVELS[q.level]
      if not min then return bad("unknown level '" .. q.level .. "'") end
    end
    local limit = tonumber(q.limit or "100")
    if not limit or limit < 0 then return bad("limit must be a number >= 0") end
    local out = {}
    for _, e in ipairs(log.recent()) do
      if (LEVELS[e.level] or 0) >= min and (not q.since or (e.ts or "") >= q.since) then
        out[#out + 1] = e
      end
    end
    while #out > limit do table.remove(out, 1) end
    -- cjson (2.1.0) encodes an empty table as {}
    if #out == 0 then return 200, "[]", { ["content-type"] = "application/json" } end
    return 200, out
  end)

  srv:route("GET", "/metrics", function()
    local ok, metrics = pcall(require, "sluice.metrics")
    if not ok then return 501, { error = "metrics are not available" } end
    return 200, metrics.render(), { ["content-type"] = metrics.CONTENT_TYPE }
  end)

  srv:route("POST", "/collect", guarded(function(req)
    local body, err = json_body(req)
    if not body then return bad(err) end
    err = check_fields(body, { collector = true })
    if err then return bad(err) end
    if type(body.collector) ~= "string" then return bad("field 'collector' (a name) is required") end
    local c = get_app().collectors[body.collector]
    if not c then return 404, { error = "no collector named '" .. body.collector .. "'" } end
    local ok, result = c:run_once()
    if ok then return 200, { collector = c.name, status = "ok", records = result } end
    return 502, { collector = c.name, status = "failed", error = result }
  end))

  srv:route("POST", "/backfill", guarded(function(req)
    local body, err = json_body(req)
    if not body then return bad(err) end
    err = check_fields(body, { collector = true, start_date = true, end_date = true,
      symbols = true, force = true, lookback = true, parallel = true })
    if err then return bad(err) end
    local a = get_app()
    local c
    if body.collector ~= nil then
      if type(body.collector) ~= "string" then return bad("field 'collector' must be a string") end
      c = a.collectors[body.collector]
      if not c then return 404, { error = "no collector named '" .. body.collector .. "'" } end
    else
      for _, x in ipairs(a.order) do
        if x.spec.backfill then
          if c then return bad("several collectors can backfill: name one in 'collector'") end
          c = x
        end
      end
      if not c then return bad("no collector here can backfill") end
    end
    if body.symbols ~= nil and type(body.symbols) ~= "table" then return bad("field 'symbols' must be a list") end
    if body.force ~= nil and type(body.force) ~= "boolean" then return bad("field 'force' must be true or false") end
    local backfill = require "sluice.backfill"
    local bopts = { collector = c, from = body.start_date, to = body.end_date, symbols = body.symbols,
      force = body.force, lookback = body.lookback, parallel = body.parallel }
    local okp, plan = pcall(backfill.plan, bopts)
    if not okp then return bad(tostring(plan):gsub("^.-sluice%.backfill: ", "")) end
    local id = backfill.start(bopts)
    return 202, {
      task_id = id, status = "started", message = "Backfill operation started",
      estimated_records = plan.estimate.rows or plan.estimate.windows,
      estimated_requests = plan.estimate.requests, windows = plan.estimate.windows,
      start_date = iso(plan.from), end_date = iso(plan.to),
    }
  end))

  srv:route("*", "/backfill/*", function(req)
    local id = req.path:match("^/backfill/([^/]+)$")
    if not id then return 404, { error = "not found" } end
    local backfill = require "sluice.backfill"
    if req.method == "GET" then
      local st, err = backfill.status(id)
      if not st then return 404, { error = err } end
      return 200, st
    elseif req.method == "DELETE" then
      return guarded(function()
        local ok, err = backfill.cancel(id)
        if not ok then return 404, { error = err } end
        return 200, backfill.status(id)
      end)(req)
    end
    return 405, { error = "method not allowed" }, { Allow = "GET, DELETE" }
  end)

  srv:route("POST", "/breakers/*", guarded(function(req)
    local name, action = req.path:match("^/breakers/([^/]+)/(%a+)$")
    if not name then return 404, { error = "not found" } end
    local cb = breaker.get(name)
    if not cb then return 404, { error = "no breaker named '" .. name .. "'" } end
    if action == "open" then cb:force_open()
    elseif action == "close" then cb:force_close()
    elseif action == "reset" then cb:reset()
    else return 404, { error = "unknown action '" .. action .. "' (open, close, reset)" } end
    return 200, cb:status()
  end))

  srv:route("POST", "/reload", guarded(function()
    local reload = require("sluice.app").reload
    local ok, err = reload()
    if not ok then return 422, { status = "refused", error = err } end
    return 200, { status = "reloaded", collectors = #get_app().order }
  end))

  log.info("admin API listening", { host = host, port = srv.port, token = token and true or false })
  return srv
end

return _M
