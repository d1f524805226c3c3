--- sluice.alerts.watch: where alert events come from. Each source is read
-- through what its owning module offers, never by wrapping it:
--
--   breakers     cb:on_change (sluice.breaker's callbacks), attached to
--                every breaker in breaker.all() not yet seen (attach()),
--                except the alert webhooks' own ("alerts:<n>")
--   collectors   c:health() of the running app's collectors, compared at
--                each poll()
--   backfills    sluice.backfill.jobs(): a job's state at each poll()
--   Redis        app.shared:degraded() at each poll()
--   outboxes     app.outbox:status()[sink].full at each poll()
--
-- Each source's first reading is its baseline (no event): events are the
-- transitions after it, one each. A breaker counts as open from "open"
-- until "closed" (its half-open trials are not events); a collector's
-- health changes to or from "disabled" (a configuration change) are not
-- events either.
--
--   local w = watch.new(emit)   -- emit(type, source, message, details)
--   w:attach()                  -- on_change on breakers not yet attached
--   w:poll(app [, quiet])       -- compare the polled sources with before
--   w:stop()                    -- no more events (callbacks stay, inert)
--
-- The watcher owns its last readings. No call yields.
local sluice = require "sluice"
local breaker = require "sluice.breaker"
local backfill = require "sluice.backfill"

local _M = {}
local mt = { __index = _M }

local function iso(t)
  return t and sluice.iso8601(math.floor(t)) or nil
end

--- new(emit) -> a watcher; emit(type, source, message, details) gets each event.
function _M.new(emit)
  return setmetatable({
    emit = emit, attached = setmetatable({}, { __mode = "k" }),
    open = {}, health = nil, jobs = nil, redis = nil, sinks = nil,
  }, mt)
end

-- Passes an event on, unless this is a quiet poll (a new baseline).
local function say(self, ...)
  if not self.quiet then self.emit(...) end
end

local function breaker_changed(self, cb, to, reason)
  if self.stopped then return end
  local name = cb:name()
  if to == "open" and not self.open[name] then
    self.open[name] = true
    local st, m = cb:status(), cb:metrics()
    local next_attempt = iso(m.open_until)
    say(self, "breaker_opened", name, ("circuit breaker '%s' opened (%s, %d failures)%s"):format(name,
      reason, st.failure_count, next_attempt and ("; next attempt at " .. next_attempt) or ""),
      { breaker = name, reason = reason, failure_count = st.failure_count, next_attempt = next_attempt })
  elseif to == "closed" and self.open[name] then
    self.open[name] = false
    say(self, "breaker_closed", name, ("circuit breaker '%s' closed (%s)"):format(name, reason),
      { breaker = name, reason = reason })
  end
end

--- attach(): on_change on every breaker not attached yet; its state now
-- is the baseline of its name (a reload's new breaker of a known name
-- keeps the name's reading). The reading of a name no breaker has any
-- more is dropped (a name that comes back takes a new baseline): what is
-- kept is bounded by the breakers there are, not by every name seen.
function _M:attach()
  local all = breaker.all()
  for name, cb in pairs(all) do
    if not self.attached[cb] and not name:find("^alerts:") then
      self.attached[cb] = true
      if self.open[name] == nil then self.open[name] = cb:status().state ~= "closed" end
      cb:on_change(function(b, _, to, reason) breaker_changed(self, b, to, reason) end)
    end
  end
  for name in pairs(self.open) do
    if not all[name] then self.open[name] = nil end
  end
end

local FIRING = { failed = true, degraded = true, circuit_open = true }

local function poll_collectors(self, app)
  local now = {}
  for _, c in ipairs(app.order or {}) do
    local h, why = c:health()
    local prev = self.health and self.health[c.name]
    now[c.name] = h
    if prev and prev ~= h and h ~= "disabled" and prev ~= "disabled" then
      say(self, "collector_health_changed", c.name, ("collector '%s' is %s (was %s)%s"):format(c.name, h, prev,
        why and (": " .. why) or ""), { collector = c.name, from = prev, to = h, reason = why },
        FIRING[h] and "firing" or "resolved")
    end
  end
  self.health = now
end

local function poll_backfills(self)
  local first = self.jobs == nil
  self.jobs = self.jobs or {}
  for id, st in pairs(backfill.jobs()) do
    local prev = self.jobs[id]
    self.jobs[id] = st.state
    if not first and prev ~= st.state and st.state ~= "running" then
      local kind = st.state == "failed" and "backfill_failed" or "backfill_finished"
      say(self, kind, st.collector, ("backfill %s of '%s' %s: %d of %d windows done, %d failed, %d rows"):format(
        id, st.collector, st.state == "done" and "finished" or st.state, st.windows_done, st.windows_total,
        st.windows_failed, st.rows),
        { id = id, collector = st.collector, state = st.state, windows_total = st.windows_total,
          windows_done = st.windows_done, windows_failed = st.windows_failed, rows = st.rows,
          seconds = st.elapsed })
    end
  end
end

local function poll_redis(self, app)
  local down = app.shared and app.shared:degraded() and true or false
  if self.redis ~= nil and down ~= self.redis then
    if down then
      say(self, "redis_degraded", "redis", "redis is unreachable: shared state is local until it is back",
        { reachable = false })
    else
      say(self, "redis_recovered", "redis", "redis is reachable again: sharing state", { reachable = true })
    end
  end
  self.redis = down
end

local function poll_outbox(self, app)
  local box = app.outbox
  if not (box and app.store and app.store:is_open()) then return end
  local first = self.sinks == nil
  self.sinks = self.sinks or {}
  for name, st in pairs(box:status()) do
    local prev = self.sinks[name]
    self.sinks[name] = st.full
    if not first and prev ~= nil and prev ~= st.full then
      local d = { sink = name, depth = st.depth, max_rows = st.max_rows, on_full = st.on_full }
      if st.full then
        say(self, "outbox_full", name, ("outbox of sink '%s' is full (%s rows queued, max_rows %d, on_full = %s)")
          :format(name, tostring(st.depth), st.max_rows, st.on_full), d)
      else
        say(self, "outbox_recovered", name, ("outbox of sink '%s' has room again (%s rows queued)")
          :format(name, tostring(st.depth)), d)
      end
    elseif prev == nil then
      self.sinks[name] = st.full
    end
  end
end

--- poll(app [, quiet]): the polled sources of app ({order, shared,
-- outbox, store}; nil: the backfills only) against their last readings;
-- quiet: the readings are taken as a new baseline, without events.
function _M:poll(app, quiet)
  if self.stopped then return end
  self.quiet = quiet
  self:attach()
  poll_backfills(self)
  if app then
    poll_collectors(self, app)
    poll_redis(self, app)
    poll_outbox(self, app)
  end
  self.quiet = nil
end

function _M:stop()
  self.stopped = true
end

return _M
