--- sluice.admin: the operator's HTTP API, on sluice.server: its routes,
-- request decoding and access policy. What a route shows or does is
-- sluice.operator's (the REPL serves the same views and operations); this
-- module owns its server (start() returns it; the caller closes it) and
-- the policy. Each request runs in a task of the server: POST /collect and
-- /reload yield while they wait, and so does POST /backfill with Redis
-- (its plan asks it); the reads answer without yielding.
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
--   GET  /health                   reference shape; 200 healthy or degraded, 503
--                                  unhealthy (with reasons)
--   GET  /status                   collectors' statistics and health, redacted config
--   GET  /circuit-breaker-status   { name = get_status() }
--   GET  /limiters                 { name = get_stats() }
--   GET  /data-quality             { table = quality report }
--   GET  /performance              reference shape
--   GET  /logs?level=&limit=&since= entries from the log ring, oldest first
--   GET  /metrics                  Prometheus text format
--   POST /collect                  {"collector": name [, "dataset": name]} -> one
--                                  collection now (joins a run in flight: "joined":
--                                  true; 409 if disabled)
--   POST /backfill                 reference request -> {task_id, status, ...}
--   GET  /backfill/{id}            progress;  DELETE /backfill/{id} cancels
--   POST /breakers/{name}/open | close | reset
--   POST /alert                    {"message", "severity", "source", "details"} -> 202
--                                  {status = "queued", id}: to the alert webhooks
--   POST /reload                   re-read the configuration; {"rollback": true [, "steps": n]}:
--                                  apply the one before the live one (sluice.app.configs)
--   GET  /, /history               the status page (sluice.admin.page); the last hour
--                                  it draws (sluice.history)
local server = require "sluice.server"
local log = require "sluice.log"
local json = require "sluice.json"
local collector = require "sluice.collector"
local redact = require "sluice.redact"
local operator = require "sluice.operator"
local metrics = require "sluice.metrics"
local page = require "sluice.admin.page"

local _M = {}

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

local function json_body(req)
  if req.body == "" then return {} end
  local v, err = json.decode(req.body)
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

-- The operations' failure kinds (sluice.operator) as HTTP statuses.
local STATUS = { invalid = 400, not_found = 404, disabled = 409, refused = 422, unavailable = 503 }

local function failed(err, kind)
  return STATUS[kind] or 500, { error = err }
end

-- The routes over ops; app is the running app (a reload swaps the
-- collectors inside the same table).
local function add_routes(route, ops, app)
  route("GET", "/health", "read", function()
    local body, healthy = ops:health()
    return healthy and 200 or 503, body
  end)

  route("GET", "/status", "config", function() return 200, ops:status() end)
  route("GET", "/circuit-breaker-status", "read", function() return 200, ops:breakers() end)
  route("GET", "/limiters", "read", function() return 200, ops:limiters() end)
  route("GET", "/data-quality", "read", function() return 200, ops:quality() end)
  route("GET", "/performance", "read", function() return 200, ops:performance() end)

  route("GET", "/logs", "config", function(req)
    local q = req.query
    local out, err, kind = ops:logs({ level = q.level, limit = q.limit, since = q.since })
    if not out then return failed(err, kind) end
    -- cjson (2.1.0) encodes an empty table as {}
    if #out == 0 then return 200, "[]", { ["content-type"] = "application/json" } end
    return 200, out
  end)

  route("GET", "/metrics", "read", function()
    return 200, metrics.render(), { ["content-type"] = metrics.CONTENT_TYPE }
  end)

  route("POST", "/collect", "mutation", function(req)
    local body, err = json_body(req)
    if not body then return bad(err) end
    err = check_fields(body, { collector = true, dataset = true })
    if err then return bad(err) end
    if type(body.collector) ~= "string" then return bad("field 'collector' (a name) is required") end
    if body.dataset ~= nil and type(body.dataset) ~= "string" then return bad("field 'dataset' must be a name") end
    local run, why, kind = ops:collect(body.collector, { dataset = body.dataset })
    if not run then
      if kind == "disabled" then
        return 409, { collector = body.collector, dataset = body.dataset, status = "disabled", error = why }
      end
      return failed(why, kind)
    end
    -- a request made while a run is going joins it ("joined": true)
    if run.ok then
      return 200, { collector = run.collector, dataset = run.dataset, status = "ok", records = run.records,
        joined = run.joined }
    end
    return 502, { collector = run.collector, dataset = run.dataset, status = "failed", error = run.error,
      joined = run.joined }
  end)

  route("POST", "/backfill", "mutation", function(req)
    local body, err = json_body(req)
    if not body then return bad(err) end
    local id, plan, kind = ops:start_backfill(body)
    if not id then return failed(plan, kind) end
    local iso = operator.iso
    return 202, {
      task_id = id, status = "started", message = "Backfill operation started",
      estimated_records = plan.estimate.rows or plan.estimate.windows,
      estimated_requests = plan.estimate.requests, windows = plan.estimate.windows,
      -- (a backfill by blocks, slots or integers has no dates: its range)
      start_date = plan.unit == "seconds" and iso(plan.from) or nil,
      end_date = plan.unit == "seconds" and iso(plan.to) or nil,
      unit = plan.unit, from = plan.unit ~= "seconds" and plan.from or nil,
      to = plan.unit ~= "seconds" and plan.to or nil,
    }
  end)

  route("*", "/backfill/*", function(req)
    return req.method == "GET" and "read" or "mutation"
  end, function(req)
    local id = req.path:match("^/backfill/([^/]+)$")
    if not id then return 404, { error = "not found" } end
    local st, err, kind
    if req.method == "GET" then
      st, err, kind = ops:backfill(id)
    elseif req.method == "DELETE" then
      st, err, kind = ops:cancel_backfill(id)
    else
      return 405, { error = "method not allowed" }, { Allow = "GET, DELETE" }
    end
    if not st then return failed(err, kind) end
    return 200, st
  end)

  route("POST", "/breakers/*", "mutation", function(req)
    local name, action = req.path:match("^/breakers/([^/]+)/(%a+)$")
    if not name then return 404, { error = "not found" } end
    local st, err, kind = ops:breaker(name, action)
    if not st then return failed(err, kind) end
    return 200, st
  end)

  route("POST", "/alert", "mutation", function(req)
    local body, err = json_body(req)
    if not body then return bad(err) end
    local id, why, kind = ops:alert(body)
    if not id then return failed(why, kind) end
    return 202, { status = "queued", id = id }
  end)

  route("POST", "/reload", "mutation", function(req)
    local body, berr = json_body(req)
    if not body then return bad(berr) end
    berr = check_fields(body, { rollback = true, steps = true })
    if berr then return bad(berr) end
    if body.rollback ~= nil and type(body.rollback) ~= "boolean" then
      return bad("field 'rollback' must be true or false")
    end
    if body.steps ~= nil and not body.rollback then return bad("field 'steps' goes with \"rollback\": true") end
    if body.rollback then -- the configuration before the live one (sluice.app.configs)
      local live, err, kind = ops:rollback("POST /reload", body.steps)
      if kind == "invalid" then return bad(err) end
      if not live then return 422, { status = "refused", error = err } end
      return 200, { status = "rolled_back", collectors = #app.order, configuration = live }
    end
    local ok, err = ops:reload("POST /reload")
    if not ok then return 422, { status = "refused", error = err } end
    return 200, { status = "reloaded", collectors = #app.order, configuration = (ops:configs() or {}).live }
  end)

  page.routes(route, ops) -- GET / (the status page), its script and style, GET /history
end

--- start(app, opts [, reload [, rollback]]) -> srv | nil, err. app: the running app
-- (what sluice.app's build and run return); opts: host, port, token,
-- hosts, insecure_loopback_mutations (see the access policy above);
-- reload(by) -> true | nil, err: what POST /reload calls (sluice.app's
-- reload; without it, POST /reload is refused); rollback(by, steps) ->
-- entry | nil, err: what it calls with "rollback": true (sluice.app's).
function _M.start(app, opts, reload, rollback)
  if reload ~= nil and type(reload) ~= "function" then
    error("sluice.admin.start: bad argument #3 (function expected, got " .. type(reload) .. ")", 2)
  end
  if rollback ~= nil and type(rollback) ~= "function" then
    error("sluice.admin.start: bad argument #4 (function expected, got " .. type(rollback) .. ")", 2)
  end
  opts = opts or {}
  local host = opts.host or "127.0.0.1"
  local token = collector.reveal(opts.token)
  if token == "" then token = nil end
  if not loopback(host) and not token then
    return nil, "admin: refusing to listen on " .. host
      .. " without a token (set admin.token, e.g. collector.env(\"SLUICE_ADMIN_TOKEN\"))"
  end
  local ops = operator.new({ current = function() return app end, reload = reload, rollback = rollback })
  redact.register(token)
  local limits = {}
  for k, v in pairs(_M.LIMITS) do limits[k] = v end
  limits.host, limits.port, limits.name = host, opts.port or 8080, "admin"
  -- checked on the headers, before a body is read; check() below stays
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
  add_routes(function(method, path, kind, handler)
    srv:route(method, path, function(req)
      local k = type(kind) == "function" and kind(req) or kind
      local status, body, headers = check(policy, req, k)
      if status then return status, body, headers end
      return scrubbed(handler(req))
    end)
  end, ops, app)

  log.info("admin API listening", { host = host, port = srv.port, token = token and true or false,
    mutations = token and "token" or policy.insecure_loopback_mutations and "loopback without a token"
      or "refused (no token)" })
  return srv
end

return _M
