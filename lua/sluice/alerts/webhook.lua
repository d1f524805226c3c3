--- sluice.alerts.webhook: one alert webhook -- its bounded queue of
-- deliveries, the task that sends them in order, and its breaker.
--
--   local w = webhook.new(n, settings, context)  -- breaker "alerts:<n>"
--   w:start()                 -- the sending task
--   w:push(events)            -- queue one delivery (never yields)
--   w:configure(settings)     -- a reload: new settings, the queue kept
--   w:status()                -- what /status shows of it
--   w:stop(deadline)          -- send what is queued until deadline; yields
--
-- The queue holds at most settings.queue deliveries; pushing onto a full
-- one drops the oldest queued delivery (counted; the next one sent says
-- how many were dropped before it). One delivery is sent at a time, in
-- queue order: a failure that can pass (no connection, a timeout, 5xx,
-- 408, 429) is retried after settings.retry[attempt] seconds (the last
-- delay repeating, a 429's Retry-After respected up to MAX_RETRY_AFTER)
-- and behind the breaker (while it is open, the task waits for its next
-- attempt time) until it goes through, so a receiver down for a while gets
-- everything queued once it is back, in order; any other answer (3xx, 4xx)
-- is final: the delivery is counted failed and dropped.
--
-- The webhook owns its queue, its sending task (ended by stop) and its
-- breaker (closed by stop). The URL is shown only as scheme://host:port
-- with its path and query replaced (safe_url): Slack's and most hooks'
-- secrets are in the path.
local sluice = require "sluice"
local http = require "sluice.http"
local log = require "sluice.log"
local breaker = require "sluice.breaker"
local redact = require "sluice.redact"
local secret = require "sluice.collector.secret"
local format = require "sluice.alerts.format"

local _M = {}
local mt = { __index = _M }

local RECENT = 10 -- deliveries and failures kept for status()
local MAX_RETRY_AFTER = 300
_M.DEFAULT_RETRY = { 1, 2, 5, 10, 30, 60 }
_M.DEFAULT_QUEUE = 1000
_M.DEFAULT_TIMEOUT = 10
local BREAKER_DEFAULTS = { failure_threshold = 5, timeout = 30, max_timeout = 300 }

--- safe_url(url) -> "scheme://host:port/<redacted>" (user info, path and
-- query never shown), or "scheme://host:port" for a URL without a path.
function _M.safe_url(url)
  if secret.is_secret(url) then return tostring(url) end
  local scheme, rest = tostring(url):match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then return redact.REDACTED end
  local authority = rest:match("^[^/?#]*")
  local host = authority:match("^.*@(.*)$") or authority
  local tail = rest:sub(#authority + 1)
  if tail == "" or tail == "/" then return scheme .. "://" .. host .. tail end
  return scheme .. "://" .. host .. "/" .. redact.REDACTED
end

local function breaker_options(n, settings)
  local o = { name = "alerts:" .. n }
  for k, v in pairs(BREAKER_DEFAULTS) do o[k] = v end
  for k, v in pairs(settings.breaker or {}) do o[k] = v end
  return o
end

local function same_table(a, b)
  for k, v in pairs(a or {}) do if (b or {})[k] ~= v then return false end end
  for k, v in pairs(b or {}) do if (a or {})[k] ~= v then return false end end
  return true
end

local function apply(self, settings)
  self.settings = settings
  self.url = settings.url
  self.format = settings.format or "json"
  self.timeout = settings.timeout or _M.DEFAULT_TIMEOUT
  self.retry = settings.retry or _M.DEFAULT_RETRY
  self.max_queue = settings.queue or _M.DEFAULT_QUEUE
  self.events = nil
  if settings.events then
    self.events = {}
    for _, e in ipairs(settings.events) do self.events[e] = true end
  end
  self.safe = _M.safe_url(settings.url)
  self.log = log.with({ webhook = self.name, url = self.safe })
end

--- new(n, settings, context) -> webhook n of the configuration (settings
-- checked by sluice.alerts.check); context = {service = fn -> name, host}.
function _M.new(n, settings, context)
  local self = setmetatable({
    n = n, name = "alerts:" .. n, context = context,
    queue = {}, head = 1, tail = 0, sequence = 0,
    delivered = 0, failed = 0, dropped = 0, attempts = 0,
    deliveries = {}, failures = {},
  }, mt)
  apply(self, settings)
  self.breaker = breaker.new(breaker_options(n, settings))
  return self
end

--- wants(event_type) -> whether this webhook takes events of that type.
function _M:wants(t)
  return self.events == nil or self.events[t] == true
end

function _M:queued()
  return self.tail - self.head + 1
end

local function wake(self)
  if self.parked then sluice.unpark(self.parked) end
end

-- Drops the oldest queued delivery (there is one behind it): the next
-- one says how many went before it.
local function drop_oldest(self)
  local d = self.queue[self.head]
  self.queue[self.head] = nil
  self.head = self.head + 1
  self.dropped = self.dropped + 1
  local nxt = self.queue[self.head]
  nxt.dropped = nxt.dropped + d.dropped + 1
  return d
end

--- push(events): one delivery of these events at the tail of the queue.
function _M:push(events)
  if self.closed then return end
  self.sequence = self.sequence + 1
  self.tail = self.tail + 1
  self.queue[self.tail] = { sequence = self.sequence, events = events, dropped = 0 }
  while self:queued() > self.max_queue do
    local d = drop_oldest(self)
    self.log.warning("alert queue full: oldest delivery dropped", { sequence = d.sequence,
      events = #d.events, queue = self.max_queue, dropped = self.dropped })
  end
  wake(self)
end

local function remember(list, entry)
  list[#list + 1] = entry
  if #list > RECENT then table.remove(list, 1) end
end

local function retryable(res)
  if not res then return true end
  local s = res.status
  return s >= 500 or s == 408 or s == 429
end

-- Seconds left before stop's deadline (math.huge while not stopping).
local function left(self)
  return self.deadline and self.deadline - sluice.now() or math.huge
end

-- Waits s seconds unless that passes stop's deadline (false when it
-- would); stop() cuts the wait short (so does shutdown): the caller looks
-- again.
local function pause(self, s)
  if s >= left(self) then return false end
  self.pausing = sluice.current()
  sluice.park(s)
  self.pausing = nil
  return true
end

-- Reports an attempt's outcome to the breaker that gave its permit, unless
-- a reload replaced (and closed) that breaker meanwhile.
local function record(self, cb, ok, permit, took)
  if cb ~= self.breaker then return end
  if ok then cb:success(permit, took) else cb:failure(permit, took) end
end

-- Sends d until it goes through or fails for good (true), or until stop's
-- deadline comes (nil).
local function deliver(self, d)
  local attempt = 0
  while true do
    if left(self) <= 0 then return end
    local cb = self.breaker
    local permit = cb:allow()
    if not permit then
      local open_until = cb:metrics().open_until or (sluice.time() + 1)
      if not pause(self, math.min(math.max(open_until - sluice.time(), 0.01), 60)) then return end
    else
      attempt = attempt + 1
      self.attempts = self.attempts + 1
      local ctx = { service = self.context.service(), host = self.context.host }
      local body = format.render(self.format, d, ctx)
      local headers = { ["Content-Type"] = "application/json", ["User-Agent"] = "sluice/" .. sluice._VERSION }
      for k, v in pairs(self.settings.headers or {}) do headers[k] = secret.reveal(v) end
      local t0 = sluice.now()
      local res, err = http.request({ method = "POST", url = secret.reveal(self.url), headers = headers,
        body = body, redirects = false, timeout = math.max(0.001, math.min(self.timeout, left(self))),
        connect_timeout = math.max(0.001, math.min(self.timeout, 5, left(self))) })
      local took = sluice.now() - t0
      if res and res.status >= 200 and res.status < 300 then
        record(self, cb, true, permit, took)
        self.delivered = self.delivered + 1
        remember(self.deliveries, { sequence = d.sequence, events = #d.events, status = res.status,
          attempts = attempt, at = sluice.iso8601(sluice.time()), seconds = took })
        if self.failing then
          self.failing = nil
          self.log.info("alert webhook reachable again", { sequence = d.sequence })
        end
        return true
      end
      local why = res and ("HTTP " .. res.status) or redact.text(tostring(err))
      local final = not retryable(res)
      -- a final answer came from a receiver that is up
      record(self, cb, final, permit, took)
      remember(self.failures, { sequence = d.sequence, error = why, attempt = attempt,
        final = final or nil, at = sluice.iso8601(sluice.time()) })
      self.last_error = why
      if final then
        self.failed = self.failed + 1
        self.log.error("alert delivery refused: dropped", { sequence = d.sequence, error = why })
        return true
      end
      if not self.failing then
        self.failing = true
        self.log.warning("alert delivery failed: retrying", { sequence = d.sequence, error = why })
      end
      local delay = self.retry[math.min(attempt, #self.retry)]
      local ra = res and tonumber(res.headers["retry-after"])
      if ra and ra > delay then delay = math.min(ra, MAX_RETRY_AFTER) end
      if not pause(self, delay) then return end
    end
  end
end

local function run(self)
  while true do
    if self.head > self.tail then
      if self.deadline or self.closed then return end
      self.parked = sluice.current()
      sluice.park()
      self.parked = nil
    else
      local d = self.queue[self.head]
      self.queue[self.head] = nil
      self.head = self.head + 1
      self.sending = d
      -- a bug here must not end the webhook's sending for good
      local ok, done = xpcall(deliver, debug.traceback, self, d)
      self.sending = nil
      if not ok then
        self.failed = self.failed + 1
        self.log.error("alert delivery failed: dropped", { sequence = d.sequence, error = tostring(done) })
      elseif not done then
        -- stop's deadline: it stays queued (counted as not delivered)
        self.head = self.head - 1
        self.queue[self.head] = d
        return
      end
    end
  end
end

--- start(): the sending task.
function _M:start()
  if not self.task then self.task = sluice.spawn(run, self) end
  return self
end

--- configure(settings): a reload's settings for webhook n; the queue and
-- counters stay (trimmed to a smaller bound), the breaker too unless its
-- options changed.
function _M:configure(settings)
  local old = self.settings
  apply(self, settings)
  if not same_table(old.breaker, settings.breaker) then
    self.breaker:close()
    self.breaker = breaker.new(breaker_options(self.n, settings))
  end
  while self:queued() > self.max_queue do drop_oldest(self) end
end

--- status() -> {name, url (redacted), format, events, queued, sending
-- (the sequence being sent), delivered, failed, dropped, attempts,
-- breaker, last_error, deliveries (the last few), failures (the last few)}
function _M:status()
  local events
  if self.settings.events then
    events = {}
    for i, e in ipairs(self.settings.events) do events[i] = e end
  end
  local copy = function(list)
    local out = {}
    for i, x in ipairs(list) do out[i] = x end
    return out
  end
  return {
    name = self.name, url = self.safe, format = self.format, events = events,
    queued = self:queued(), queue_max = self.max_queue, sending = self.sending and self.sending.sequence or nil,
    delivered = self.delivered, failed = self.failed, dropped = self.dropped, attempts = self.attempts,
    breaker = self.breaker:stats().state, last_error = self.last_error,
    deliveries = copy(self.deliveries), failures = copy(self.failures),
  }
end

--- stop(deadline): sends what is queued until sluice.now() passes
-- deadline (none when it has passed), then ends the task and closes the
-- breaker. Yields (call it in a task) unless the deadline has passed.
function _M:stop(deadline)
  if self.closed then return end
  self.deadline = deadline
  wake(self)
  if self.pausing then sluice.unpark(self.pausing) end
  local t = self.task
  local st = t and sluice.status(t)
  if t and st ~= "done" and st ~= "failed" and st ~= "killed" then
    local grace = deadline - sluice.now()
    if grace > 0 and sluice.current() then
      -- (a task, not a timer: timers made during shutdown fire at once)
      local killer = sluice.spawn(function()
        sluice.sleep(grace)
        sluice.kill(t, "alerts stopped")
      end)
      sluice.wait(t)
      sluice.kill(killer)
    else
      sluice.kill(t, "alerts stopped")
    end
  end
  self.closed = true
  local lost = self:queued() + (self.sending and 1 or 0)
  if lost > 0 then
    self.log.warning("alerts not delivered at stop", { deliveries = lost })
  end
  self.breaker:close()
end

return _M
