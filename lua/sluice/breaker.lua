--- sluice.breaker: circuit breakers (the state machine is C: runtime/core/breaker.c).
--
--   local cb = breaker.new{ name = "binance", failure_threshold = 5, timeout = 300 }
--   local permit, why = cb:allow()          -- nil, "open" | "half-open" when refused
--   ... call ...
--   cb:success(permit, seconds) / cb:failure(permit, seconds) / cb:release(permit)
--
-- States "closed", "open", "half-open", with the reference defaults. A
-- permit from before the last state change is ignored when reported, so a
-- slow call started while closed cannot pass for a half-open trial.
-- cb:status() is the reference get_status() shape (a reference None is
-- absent); cb:metrics() has what goes beyond it; cb:snapshot() and
-- breaker.restore(snapshot) persist a breaker. The reference names
-- can_attempt, record_success, record_failure and get_status work too.
--
-- The handle: cb:name() is the configured name ("unknown" by default).
-- cb:stats() is a new plain table: the fields of status() (the reference
-- shape: state, collector_name, failure_count, consecutive_successes,
-- failure_threshold, timeout_seconds, last_failure_time and
-- last_state_change as ISO 8601, half_open while half-open, statistics,
-- health_score), those of metrics() (mode, open_until as epoch seconds
-- while open, rejected, ignored_results, permit_timeouts, slow_calls,
-- window_calls, window_failures, window_slow_calls, half_open_outstanding,
-- generation) and name. cb:close() -> true, or false when it was already
-- closed: it stops state-change logging and on_change callbacks for later
-- changes (earlier ones are still delivered), lets go of the clock and
-- takes the breaker out of breaker.get/all. A closed breaker still answers
-- name() and stats(); any other method raises "sluice.breaker: breaker
-- '<name>' is closed".
--
-- No call yields: a breaker works inside or outside a task. on_change
-- callbacks run as tasks of their own.
local core = require "sluice._breaker"
local log = require "sluice.log"
local options = require "sluice.options"

local _M = {}
local methods = core.methods

-- Each option's type and range; the checks across options (max_timeout >=
-- timeout, half_open_success_threshold <= half_open_max_calls, min_calls
-- <= size for a count window, slow_call_duration only with a window) are
-- the C core's, whose message names the options.
local RATE = { gt = 0, max = 1 }
local SCHEMA = {
  name = "string",
  failure_threshold = { integer = true, min = 1 },
  timeout = { finite = true, gt = 0 },
  half_open_max_calls = { integer = true, min = 1, max = core.MAX_TRIALS },
  half_open_success_threshold = { integer = true, min = 1 },
  backoff_multiplier = { finite = true, min = 1 },
  max_timeout = { finite = true, gt = 0 },
  permit_timeout = { finite = true, min = 0 },
  window = {
    type = "table",
    fields = {
      type = { one_of = { "count", "time" } },
      size = { integer = true, min = 1, max = core.MAX_WINDOW },
      min_calls = { integer = true, min = 1 },
      failure_rate = RATE,
    },
  },
  slow_call_duration = { finite = true, min = 0 }, slow_call_rate = RATE,
  mode = { one_of = { "normal", "metrics_only", "disabled" } },
  jitter = { min = 0, max = 1 }, seed = { integer = true }, clock = "function",
}

local registry = setmetatable({}, { __mode = "v" }) -- name -> breaker
local callbacks = setmetatable({}, { __mode = "k" }) -- breaker -> { fn, ... }
local closed = setmetatable({}, { __mode = "k" }) -- breaker -> true once closed

-- opts checked and flattened into the options of sluice._breaker.new.
local function check_options(opts)
  if type(opts) ~= "table" then
    error("sluice.breaker.new: bad argument #1 (table of options expected, got " .. type(opts) .. ")", 3)
  end
  options.check("sluice.breaker.new", opts, SCHEMA, 3)
  local flat = {}
  for k, v in pairs(opts) do flat[k] = v end
  local window = opts.window
  if window then
    flat.window = nil
    flat.window_type = window.type or "count"
    flat.window_size = window.size
    flat.window_min_calls = window.min_calls
    flat.failure_rate = window.failure_rate
  end
  return flat
end

--- new(opts) -> breaker. Options (reference defaults): name ("unknown"),
-- failure_threshold (5), timeout (300 s), half_open_max_calls (3),
-- half_open_success_threshold (2), backoff_multiplier (1.5), max_timeout
-- (3600 s), permit_timeout (60 s; 0 = never), window = {type = "count" |
-- "time", size (100), min_calls (10), failure_rate (0.5)}, slow_call_duration
-- (s; 0 = off), slow_call_rate (1.0), mode ("normal" | "metrics_only" |
-- "disabled"), jitter (0: each open period lasts timeout * (1 + jitter*U)),
-- clock (a function returning seconds, for deterministic tests).
-- The newest breaker of a name is the one breaker.get(name) returns.
function _M.new(opts)
  local flat = check_options(opts)
  local ok, cb = pcall(core.new, flat)
  if not ok then
    error(cb, 2) -- a range error from the C validation, naming the option
  end
  registry[cb:name()] = cb
  return cb
end

--- register(cb): make cb the breaker breaker.get(cb:name()) returns (a
-- reload that fails puts the running breakers back with this).
function _M.register(cb)
  registry[cb:name()] = cb
  return cb
end

--- get(name) -> the breaker of that name, or nil.
function _M.get(name)
  return registry[name]
end

--- all() -> { name = breaker, ... } for every live breaker.
function _M.all()
  local out = {}
  for name, cb in pairs(registry) do
    out[name] = cb
  end
  return out
end

--- restore(snapshot) -> the breaker named snapshot.name, with that state.
-- An open breaker restored before its deadline stays open until it.
function _M.restore(snapshot)
  if type(snapshot) ~= "table" or type(snapshot.name) ~= "string" then
    error("sluice.breaker.restore: bad argument #1 (snapshot table with a name expected)", 2)
  end
  local cb = registry[snapshot.name]
  if not cb then
    return nil, "no breaker named '" .. snapshot.name .. "'"
  end
  return cb:restore(snapshot)
end

--- cb:on_change(fn): fn(cb, from, to, reason) runs as a task after every
-- state change. Returns cb.
function methods:on_change(fn)
  if type(fn) ~= "function" then
    error("sluice.breaker.on_change: bad argument #1 (function expected, got " .. type(fn) .. ")", 2)
  end
  if closed[self] then error("sluice.breaker: breaker '" .. self:name() .. "' is closed", 2) end
  local list = callbacks[self]
  if not list then
    list = {}
    callbacks[self] = list
  end
  list[#list + 1] = fn
  return self
end

core.set_dispatcher(function(cb, from, to, reason)
  local list = callbacks[cb]
  if not list then return end
  for _, fn in ipairs(list) do
    local ok, err = xpcall(fn, debug.traceback, cb, from, to, reason)
    if not ok then
      log.error("breaker on_change callback failed", { breaker = cb:name(), error = tostring(err) })
    end
  end
end)

-- The reference API: can_attempt() takes a permit the reference way (the
-- result applies to the current state), record_* report without one.
function methods:can_attempt()
  return self:allow() ~= nil
end

function methods:record_success(duration)
  return self:success(nil, duration)
end

function methods:record_failure(duration)
  return self:failure(nil, duration)
end

methods.get_status = methods.status

local close = methods.close
--- cb:close() -> true | false (already closed); see the header.
function methods:close()
  closed[self] = true -- (changes before it are still delivered to on_change)
  local name = self:name()
  if registry[name] == self then registry[name] = nil end
  return close(self)
end

return _M
