--- sluice.alerts: webhook alerts on what an operator must know about --
-- breakers opening and closing, collectors' health changing, backfills
-- ending, Redis going away and coming back, sink outboxes filling up.
--
-- The configuration's `alerts` (README "## Alerts"):
--
--   alerts = {
--     webhooks = {
--       { url = collector.env("SLACK_WEBHOOK"), format = "slack",
--         events = { "breaker_opened", "collector_health_changed" } },
--       { url = "https://ops.example.com/hooks/sluice", headers = { Authorization = "..." } },
--     },
--     group_window = 5,     -- seconds: events within it go in one delivery
--     check_interval = 5,   -- seconds between looks at health, backfills, Redis, outboxes
--   }
--
-- A webhook: url (http/https, or collector.env(...)), format "json" (the
-- default) or "slack", events (default: all of EVENTS), headers, timeout
-- (10 s a request), queue (1000 deliveries), retry (the seconds between
-- attempts, the last one repeating: {1, 2, 5, 10, 30, 60}), breaker
-- (sluice.breaker options of its breaker "alerts:<n>"; failure_threshold
-- 5, timeout 30, max_timeout 300). Sending is sluice.alerts.webhook's;
-- the bodies are sluice.alerts.format's; where events come from is
-- sluice.alerts.watch's.
--
-- Each transition is one event; events are grouped: the first one opens a
-- window of group_window seconds and every event in it goes, in order, in
-- one delivery per webhook that takes any of them (50 collectors failing
-- together are one delivery listing 50 events). Nothing here blocks
-- collection: emitting queues, and each webhook's task sends.
--
--   local m = alerts.start(settings, { current = function() return app end })
--   m:configure(settings)   -- a reload (nil: no alerts now)
--   m:emit(type, source, message [, details [, status]])
--   m:send{message, severity, source, details} -- an operator's alert (POST /alert)
--   m:flush()               -- close the group now
--   m:status()              -- /status's "alerts"
--   m:stop(grace)           -- send what is queued for up to grace seconds; yields
--   alerts.check(settings) -> nil | key, message   (sluice.config's check)
--
-- The manager owns its webhooks, the watcher, its timers and the events
-- not yet grouped. Misuse raises; a bad configuration is check's message.
local sluice = require "sluice"
local log = require "sluice.log"
local options = require "sluice.options"
local redact = require "sluice.redact"
local secret = require "sluice.collector.secret"
local webhook = require "sluice.alerts.webhook"
local watch = require "sluice.alerts.watch"

local _M = {}
local mt = { __index = _M }

--- EVENTS: the event types, as webhooks' events lists name them.
_M.EVENTS = { "breaker_opened", "breaker_closed", "collector_health_changed", "backfill_finished",
  "backfill_failed", "redis_degraded", "redis_recovered", "outbox_full", "outbox_recovered", "alert" }

-- type -> status, severity (collector_health_changed: by the new health)
local KIND = {
  breaker_opened = { "firing", "error" }, breaker_closed = { "resolved", "info" },
  backfill_finished = { "info", "info" }, backfill_failed = { "firing", "error" },
  redis_degraded = { "firing", "warning" }, redis_recovered = { "resolved", "info" },
  outbox_full = { "firing", "error" }, outbox_recovered = { "resolved", "info" },
}
local HEALTH_SEVERITY = { failed = "error", degraded = "warning", circuit_open = "warning" }

_M.DEFAULT_GROUP_WINDOW = 5
_M.DEFAULT_CHECK_INTERVAL = 5
local RECENT_EVENTS = 20

local POSITIVE = { type = "number", gt = 0, finite = true }
local WEBHOOK = {
  url = { type = "string|table", required = true, what = "a URL string or collector.env(\"NAME\")" },
  format = { one_of = { "json", "slack" } },
  events = { type = "table", items = { one_of = _M.EVENTS } },
  headers = "table",
  timeout = POSITIVE,
  queue = { integer = true, min = 1, max = 1e6 },
  retry = { type = "table", items = POSITIVE },
  breaker = { type = "table", fields = {
    failure_threshold = { integer = true, min = 1 }, timeout = POSITIVE,
    max_timeout = POSITIVE, backoff_multiplier = { finite = true, min = 1 },
  } },
}
local SCHEMA = {
  webhooks = { type = "table", required = true, items = { type = "table", fields = WEBHOOK } },
  group_window = { type = "number", min = 0, max = 3600, finite = true },
  check_interval = { type = "number", gt = 0, max = 3600, finite = true },
}

local function is_list(t)
  local n = #t
  for k in pairs(t) do
    if type(k) ~= "number" or k < 1 or k > n or k % 1 ~= 0 then return false end
  end
  return true
end

local function check_url(key, url)
  local u = url
  if secret.is_secret(url) then
    u = secret.reveal(url)
    if type(u) ~= "string" then
      return key, "environment variable " .. tostring(url.env) .. " is not set"
    end
  elseif type(url) ~= "string" then
    return key, "must be a URL string or collector.env(\"NAME\"), got a table"
  end
  if not u:match("^[hH][tT][tT][pP][sS]?://[^/?#%s]+") or u:find("%s") then
    return key, "must be an http:// or https:// URL, got '" .. webhook.safe_url(u) .. "'"
  end
  -- the whole URL is a secret (a hook's path is its key): never in a log
  -- line or a view (redact.classify runs after this check)
  redact.register(u)
  return nil
end

local function check_webhook(key, w)
  local at, msg = check_url(key .. ".url", w.url)
  if at then return at, msg end
  if w.events then
    if not is_list(w.events) or #w.events == 0 then
      return key .. ".events", "must be a non-empty list of event names (" .. table.concat(_M.EVENTS, ", ") .. ")"
    end
  end
  if w.retry and (not is_list(w.retry) or #w.retry == 0) then
    return key .. ".retry", "must be a non-empty list of seconds between attempts, e.g. {1, 5, 30}"
  end
  for name, v in pairs(w.headers or {}) do
    if type(name) ~= "string" or not name:match("^[%w!#$%%&'*+%-.^_`|~]+$") then
      return key .. ".headers", "bad header name " .. options.value(name)
    end
    if not (type(v) == "string" and not v:find("[\r\n]")) and not secret.is_secret(v) then
      return key .. ".headers." .. name, "must be a string (one line) or collector.env(\"NAME\")"
    end
  end
  return nil
end

--- check(settings) -> nil | key, message: the configuration's `alerts`
-- checked (key relative to it: "webhooks[2].format"). Remembers each
-- webhook URL as a secret (sluice.redact), so no log line shows it.
function _M.check(a)
  if type(a) ~= "table" then return "", "must be a table { webhooks = { { url = ... } } }" end
  local where, kind, text = options.problem(a, SCHEMA)
  if where then return where, kind == "unknown" and "unknown setting" or text end
  if not is_list(a.webhooks) or #a.webhooks == 0 then
    return "webhooks", "must be a non-empty list of webhooks { url = ..., format = \"json\" | \"slack\" }"
  end
  for i, w in ipairs(a.webhooks) do
    local at, msg = check_webhook("webhooks[" .. i .. "]", w)
    if at then return at, msg end
  end
  return nil
end

local function hostname()
  local f = io.open("/proc/sys/kernel/hostname")
  local h = f and f:read("*l")
  if f then f:close() end
  return h
end
local HOST = hostname()

local function current(self)
  return self.source and self.source.current() or nil
end

local function emit(self, t, source, message, details, status, severity)
  if self.stopped or #self.webhooks == 0 then return end
  local kind = KIND[t]
  if severity then
    status = status or (severity == "info" and "info" or "firing")
  elseif kind then
    status, severity = status or kind[1], kind[2]
  else
    status = status or "firing"
    severity = status == "resolved" and "info" or HEALTH_SEVERITY[details and details.to] or "warning"
  end
  self.next_id = self.next_id + 1
  local now = sluice.time()
  local e = { id = self.next_id, event = t, status = status, severity = severity, source = source,
    message = message, timestamp = sluice.iso8601(now), details = details }
  self.pending[#self.pending + 1] = e
  self.events = self.events + 1
  self.recent[#self.recent + 1] = { id = e.id, event = t, source = source, status = status,
    timestamp = e.timestamp }
  if #self.recent > RECENT_EVENTS then table.remove(self.recent, 1) end
  if not self.group_timer then
    -- (during shutdown a timer fires at once: the group goes out then)
    self.group_timer = sluice.after(self.group_window, function()
      self.group_timer = nil
      self:flush()
    end)
  end
end

local function apply(self, settings)
  settings = settings or {}
  self.group_window = settings.group_window or _M.DEFAULT_GROUP_WINDOW
  local interval = settings.check_interval or _M.DEFAULT_CHECK_INTERVAL
  local list = settings.webhooks or {}
  -- alerts off until now: what changed meanwhile is no event
  local resumed = #self.webhooks == 0
  for i, ws in ipairs(list) do
    local w = self.webhooks[i]
    if w then
      w:configure(ws)
    else
      w = webhook.new(i, ws, self.context)
      self.webhooks[i] = w
      if self.started then w:start() end
    end
  end
  for i = #self.webhooks, #list + 1, -1 do
    local w = table.remove(self.webhooks, i)
    w:stop(sluice.now()) -- removed: what it still held is dropped (logged)
  end
  if self.started then
    if self.timer and (interval ~= self.check_interval or #list == 0) then
      self.timer:cancel()
      self.timer = nil
    end
    self.check_interval = interval
    if not self.timer and #list > 0 then
      self.watch:poll(current(self), resumed)
      self.timer = sluice.every(interval, function(premature)
        if not premature and not self.stopped then
          self.watch:poll(current(self))
          self.checks = self.checks + 1
        end
      end)
    end
  end
  self.check_interval = interval
end

--- new(settings, source) -> a manager, not started. settings: checked by
-- check() (nil: no webhooks); source.current() -> the running app
-- ({order, shared, outbox, store, config}) or nil.
function _M.new(settings, source)
  if settings ~= nil then
    local at, msg = _M.check(settings)
    if at then error("sluice.alerts.new: alerts." .. at .. ": " .. msg, 2) end
  end
  if source ~= nil and (type(source) ~= "table" or type(source.current) ~= "function") then
    error("sluice.alerts.new: bad argument #2 (table with a function 'current' expected)", 2)
  end
  local self = setmetatable({ source = source, webhooks = {}, pending = {}, recent = {},
    next_id = 0, events = 0, groups = 0, checks = 0 }, mt)
  self.context = {
    host = HOST,
    service = function()
      local app = current(self)
      return app and app.config and app.config.name or "sluice"
    end,
  }
  self.watch = watch.new(function(...) emit(self, ...) end)
  apply(self, settings)
  return self
end

--- start(settings, source) -> a started manager: its webhooks' tasks, the
-- breakers watched and the other sources polled every check_interval
-- (their readings now are the baseline).
function _M.start(settings, source)
  local self = _M.new(settings, source)
  self.started = true
  for _, w in ipairs(self.webhooks) do w:start() end
  self.watch:attach()
  apply(self, settings)
  return self
end

--- m:configure(settings): a reload's alerts (nil: none). Webhook n keeps
-- its queue and counters; removed ones drop what they held.
function _M:configure(settings)
  if settings ~= nil then
    local at, msg = _M.check(settings)
    if at then error("sluice.alerts.configure: alerts." .. at .. ": " .. msg, 2) end
  end
  apply(self, settings)
  self.watch:attach()
end

--- m:emit(type, source, message [, details [, status]]): one event (an
-- event of another type than EVENTS goes to webhooks taking every event).
function _M:emit(t, source, message, details, status)
  if type(t) ~= "string" or type(message) ~= "string" then
    error("sluice.alerts.emit: bad arguments (type and message strings expected)", 2)
  end
  emit(self, t, source, message, details, status)
end

local SEND_FIELDS = { message = true, severity = true, source = true, details = true }
local SEVERITIES = { info = true, warning = true, error = true, critical = true }

--- m:send(body) -> id | nil, err, kind: an "alert" event an operator sends
-- (POST /alert): body = {message, severity ("info", "warning" (default),
-- "error", "critical"), source (default "api"), details (a table)}. kind
-- "invalid" for a malformed body, "unavailable" without webhooks.
function _M:send(body)
  if type(body) ~= "table" then return nil, "the alert must be an object {message = ...}", "invalid" end
  for k in pairs(body) do
    if not SEND_FIELDS[k] then
      return nil, "unknown field '" .. tostring(k) .. "' (message, severity, source, details)", "invalid"
    end
  end
  if type(body.message) ~= "string" or body.message == "" then
    return nil, "field 'message' (a non-empty string) is required", "invalid"
  end
  local severity = body.severity or "warning"
  if not SEVERITIES[severity] then
    return nil, "field 'severity' must be info, warning, error or critical", "invalid"
  end
  if body.source ~= nil and type(body.source) ~= "string" then
    return nil, "field 'source' must be a string", "invalid"
  end
  if body.details ~= nil and type(body.details) ~= "table" then
    return nil, "field 'details' must be an object", "invalid"
  end
  if self.stopped or #self.webhooks == 0 then
    return nil, "no alert webhooks are configured (alerts.webhooks)", "unavailable"
  end
  emit(self, "alert", body.source or "api", body.message, body.details, nil, severity)
  return self.next_id
end

--- m:flush(): the events gathered go out now (one delivery per webhook).
function _M:flush()
  if self.group_timer then
    self.group_timer:cancel()
    self.group_timer = nil
  end
  local events = self.pending
  if #events == 0 then return end
  self.pending = {}
  self.groups = self.groups + 1
  for _, w in ipairs(self.webhooks) do
    local mine = {}
    for _, e in ipairs(events) do
      if w:wants(e.event) then mine[#mine + 1] = e end
    end
    if #mine > 0 then w:push(mine) end
  end
end

--- m:status() -> {webhooks = {webhook status...}, group_window,
-- check_interval, pending (events not grouped yet), events (emitted),
-- groups, checks (looks at the polled sources so far), recent (the last events: id, event, source, status, timestamp)}
function _M:status()
  local hooks = {}
  for i, w in ipairs(self.webhooks) do hooks[i] = w:status() end
  local recent = {}
  for i, e in ipairs(self.recent) do recent[i] = e end
  return { webhooks = hooks, group_window = self.group_window, check_interval = self.check_interval,
    pending = #self.pending, events = self.events, groups = self.groups, checks = self.checks,
    recent = recent }
end

--- m:stop([grace = 2]): no more events; the gathered ones go out and the
-- webhooks send what they hold for up to grace seconds (yields), then
-- their tasks end and their breakers close.
function _M:stop(grace)
  if self.stopped then return end
  self:flush()
  self.stopped = true
  self.watch:stop()
  if self.timer then
    self.timer:cancel()
    self.timer = nil
  end
  local deadline = sluice.now() + (grace or 2)
  for _, w in ipairs(self.webhooks) do w:stop(deadline) end
  log.debug("alerts stopped", { events = self.events })
end

return _M
