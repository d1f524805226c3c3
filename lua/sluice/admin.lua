--- sluice.admin: the operator's HTTP API, on sluice.server.
--
-- Started by a configuration's `admin = {host = "127.0.0.1", port = 8080,
-- token = collector.env("SLUICE_ADMIN_TOKEN")}`. Binding beyond loopback
-- without a token is refused. The access policy (checked in this order):
--
--   Host        every request's Host must name this server: the listen
--               address, localhost, 127.0.0.1 or [::1] with the port, any
--               IP literal with the port when bound to 0.0.0.0/::, or an
--               entry of admin.hosts ("name" any port, "name:port") -- 403
--               otherwise, so a DNS-rebound name cannot read anything.
--   mutations   (POST, DELETE) a foreign Origin (or "null", or
--               Sec-Fetch-Site: cross-site) -> 403; a POST without
--               Content-Type: application/json -> 415 (no HTML form or
--               text/plain fetch can send one without a CORS preflight);
--               then `Authorization: Bearer <token>` (401). Without a
--               token configured, mutations are refused (403, naming what to
--               set) unless admin.insecure_loopback_mutations = true.
--   /status, /logs  (they show configuration and log lines) need the token
--               when one is configured; the other reads do not.
--
-- Every response body goes through sluice.redact (the configuration shown
-- is its classified view; strings are scrubbed of URL user info and of the
-- configuration's secrets).
--
--   GET  /health                   reference shape; 200 healthy, 503 not (with reasons)
--   GET  /status                   collectors' statistics and health, redacted config
--   GET  /circuit-breaker-status   { name = get_status() }
--   GET  /limiters                 { name = get_stats() }
--   GET  /data-quality             { table = quality report }
--   GET  /performance              reference shape
--   GET  /logs?level=&limit=&since= entries from the log ring, oldest first
--   GET  /metrics                  Prometheus text format
--   POST /collect                  {"collector": name} -> one collection now (joins
--                                  a run in flight: "joined": true; 409 if disabled)
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
local redact = require "sluice.redact"

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

local WILDCARD = { ["0.0.0.0"] = true, ["::"] = true, ["*"] = true }

-- "name:port", "[v6]:port" or "name" -> lower-case name (IPv6 unbracketed),
-- port string or nil
local function split_host(h)
  h = h:lower()
  local name, port = h:match("^%[([%x:.]+)%]:?(%d*)$")
  if not name then name, port = h:match("^([^:%[%]/@]+):?(%d*)$") end
  if not name then return nil end
  return name, port ~= "" and port or nil
end

local function ip_literal(name)
  return name:match("^%d+%.%d+%.%d+%.%d+$") ~= nil or name:find(":", 1, true) ~= nil
end

-- names: name -> true (any port) | {port = true}
local function host_names(host, port, extra)
  local names = {}
  for _, n in ipairs({ host, "localhost", "127.0.0.1", "::1" }) do
    names[n:lower():gsub("^%[(.*)%]$", "%1")] = { [tostring(port)] = true }
  end
  for _, h in ipairs(extra or {}) do
    local name, p = split_host(h)
    if name then
      if not p then names[name] = true
      elseif names[name] ~= true then
        names[name] = names[name] or {}
        names[name][p] = true
      end
    end
  end
  return names
end

local function host_ok(policy, h, default_port)
  local name, port = split_host(h)
  if not name then return false end
  port = port or default_port
  local entry = policy.names[name]
  if entry == true or (entry and entry[port]) then return true end
  -- an IP literal cannot be DNS-rebound
  return policy.wildcard and ip_literal(name) and port == tostring(policy.port)
end

local JSON_TYPE = "application/json"

local function refuse(status, msg, headers)
  return status, { error = "admin: " .. msg }, headers
end

-- check(policy, req, kind) -> nil when allowed, else status, body, headers.
-- kind: "read", "config" (a read showing configuration or logs), "mutation".
local function check(policy, req, kind)
  local h = req.headers.host
  if h and h ~= "" and not host_ok(policy, h, "80") then
    return refuse(403, "Host '" .. h .. "' is not a name of this server (add it to admin.hosts)")
  end
  local function bearer()
    local auth = req.headers.authorization or ""
    if not same(auth:match("^Bearer (.+)$"), policy.token) then
      return refuse(401, "unauthorized: send Authorization: Bearer <admin.token>",
        { ["WWW-Authenticate"] = "Bearer" })
    end
  end
  if kind == "config" then
    if policy.token then return bearer() end
    return nil
  end
  if kind ~= "mutation" then return nil end
  local origin = req.headers.origin
  if origin then
    local scheme, authority = origin:lower():match("^(https?)://([^/]+)$")
    if not (scheme and host_ok(policy, authority, scheme == "https" and "443" or "80")) then
      return refuse(403, "cross-origin request refused (Origin '" .. origin .. "')")
    end
  end
  if (req.headers["sec-fetch-site"] or ""):lower() == "cross-site" then
    return refuse(403, "cross-site request refused")
  end
  if req.method == "POST" then
    local ctype = (req.headers["content-type"] or ""):lower()
    if ctype:match("^%s*([^;%s]+)") ~= JSON_TYPE then
      return refuse(415, "POST needs Content-Type: " .. JSON_TYPE .. " (a defence against cross-site requests)")
    end
  end
  if policy.token then return bearer() end
  if not policy.insecure_loopback_mutations then
    return refuse(403, "mutations need a token: set admin.token = collector.env(\"SLUICE_ADMIN_TOKEN\")"
      .. " in the configuration and send Authorization: Bearer <token>; or, to allow them"
      .. " without one on loopback, set admin.insecure_loopback_mutations = true")
  end
  return nil
end

-- the response through redact: tables scrubbed, text scrubbed
local function scrubbed(status, body, headers)
  if type(body) == "table" then body = redact.scrub(body)
  elseif type(body) == "string" then body = redact.text(body) end
  return status, body, headers
end

-- The admin server's limits (see sluice.server.listen): every admin request
-- body is a small JSON object; an operator needs a handful of connections.
_M.LIMITS = {
  max_body = 16 * 1024,
  max_connections = 64,
  max_in_flight = 32,
  timeout = 30,
  request_timeout = 10,
}

--- start(app, opts) -> srv | nil, err. opts: host, port, token, hosts,
-- insecure_loopback_mutations (see the access policy above).
function _M.start(app, opts)
  opts = opts or {}
  local host = opts.host or "127.0.0.1"
  local token = collector.reveal(opts.token)
  if token == "" then token = nil end
  if not loopback(host) and not token then
    return nil, "admin: refusing to listen on " .. host
      .. " without a token (set admin.token, e.g. collector.env(\"SLUICE_ADMIN_TOKEN\"))"
  end
  redact.register(token)
  local limits = {}
  for k, v in pairs(_M.LIMITS) do limits[k] = v end
  limits.host, limits.port = host, opts.port or 8080
  -- checked on the headers, before a body is read; guarded() below stays
  if token then limits.auth = { token = token, methods = { "POST", "DELETE" } } end
  local srv, listen_err = server.listen(limits)
  if not srv then return nil, "admin: " .. listen_err end
  local policy = {
    token = token, port = srv.port, wildcard = WILDCARD[host] or false,
    names = host_names(host, srv.port, opts.hosts),
    insecure_loopback_mutations = opts.insecure_loopback_mutations == true and loopback(host),
  }

  -- route(method, path, kind, handler): kind as check() has it, or a
  -- function of the request giving it
  local function route(method, path, kind, handler)
    srv:route(method, path, function(req)
      local k = type(kind) == "function" and kind(req) or kind
      local status, body, headers = check(policy, req, k)
      if status then return status, body, headers end
      return scrubbed(handler(req))
    end)
  end

  -- a reload swaps the collectors inside the same app table
  local function collectors() return app.order end
  local function get_app() return app end

  route("GET", "/health", "read", function()
    local a = get_app()
    local reasons, last, last_ok, errors = {}, nil, nil, 0
    for _, c in ipairs(a.order) do
      local h, why = c:health()
      if h ~= "healthy" and h ~= "disabled" then
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
      starting = a.starting, -- true while the collectors are being built and started
    }
    return #reasons == 0 and 200 or 503, body
  end)

  route("GET", "/status", "config", function()
    local a = get_app()
    local cs = {}
    for _, c in ipairs(a.order) do cs[c.name] = c:stats() end
    return 200, {
      service = a.config and a.config.name or "sluice", version = sluice._VERSION,
      started_at = iso(started_wall), uptime_seconds = sluice.now() - started_mono,
      collectors = cs, tasks = sluice.tasks(), config = a.config and redact.classify(a.config) or {},
    }
  end)

  route("GET", "/circuit-breaker-status", "read", function()
    local out = {}
    for name, cb in pairs(breaker.all()) do out[name] = cb:status() end
    return 200, out
  end)

  route("GET", "/limiters", "read", function()
    local out = {}
    for name, lim in pairs(limiter.all()) do out[name] = lim:stats() end
    return 200, out
  end)

  route("GET", "/data-quality", "read", function()
    return 200, get_app().store:quality()
  end)

  route("GET", "/performance", "read", function()
    local runtime, runs, ok, failed, lat, nlat = 0, 0, 0, 0, 0, 0
    for _, c in ipairs(collectors()) do
      local st = c:counters()
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
  route("GET", "/logs", "config", function(req)
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

  route("GET", "/metrics", "read", function()
    local ok, metrics = pcall(require, "sluice.metrics")
    if not ok then return 501, { error = "metrics are not available" } end
    return 200, metrics.render(), { ["content-type"] = metrics.CONTENT_TYPE }
  end)

  route("POST", "/collect", "mutation", function(req)
    local body, err = json_body(req)
    if not body then return bad(err) end
    err = check_fields(body, { collector = true })
    if err then return bad(err) end
    if type(body.collector) ~= "string" then return bad("field 'collector' (a name) is required") end
    local c = get_app().collectors[body.collector]
    if not c then return 404, { error = "no collector named '" .. body.collector .. "'" } end
    if not c.enabled then
      return 409, { collector = c.name, status = "disabled", error = "collector '" .. c.name .. "' is disabled" }
    end
    -- one run in flight per collector: a request made while one is going
    -- waits for it and answers with its result ("joined": true)
    local ok, result, joined = c:run_once()
    joined = joined == "joined" or nil
    if ok then return 200, { collector = c.name, status = "ok", records = result, joined = joined } end
    return 502, { collector = c.name, status = "failed", error = result, joined = joined }
  end)

  route("POST", "/backfill", "mutation", function(req)
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
  end)

  route("*", "/backfill/*", function(req)
    return req.method == "GET" and "read" or "mutation"
  end, function(req)
    local id = req.path:match("^/backfill/([^/]+)$")
    if not id then return 404, { error = "not found" } end
    local backfill = require "sluice.backfill"
    if req.method == "GET" then
      local st, err = backfill.status(id)
      if not st then return 404, { error = err } end
      return 200, st
    elseif req.method == "DELETE" then
      local ok, err = backfill.cancel(id)
      if not ok then return 404, { error = err } end
      return 200, backfill.status(id)
    end
    return 405, { error = "method not allowed" }, { Allow = "GET, DELETE" }
  end)

  route("POST", "/breakers/*", "mutation", function(req)
    local name, action = req.path:match("^/breakers/([^/]+)/(%a+)$")
    if not name then return 404, { error = "not found" } end
    local cb = breaker.get(name)
    if not cb then return 404, { error = "no breaker named '" .. name .. "'" } end
    if action == "open" then cb:force_open()
    elseif action == "close" then cb:force_close()
    elseif action == "reset" then cb:reset()
    else return 404, { error = "unknown action '" .. action .. "' (open, close, reset)" } end
    return 200, cb:status()
  end)

  route("POST", "/reload", "mutation", function()
    local reload = require("sluice.app").reload
    local ok, err = reload("POST /reload")
    if not ok then return 422, { status = "refused", error = err } end
    return 200, { status = "reloaded", collectors = #get_app().order }
  end)

  log.info("admin API listening", { host = host, port = srv.port, token = token and true or false,
    mutations = token and "token" or policy.insecure_loopback_mutations and "loopback without a token"
      or "refused (no token)" })
  return srv
end

return _M
