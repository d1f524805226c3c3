--- sluice.retry: retry policies with backoff and a retry budget.
--
--   local policy = retry.new{ strategy = "exponential_jitter", max_attempts = 3,
--                             base_delay = 1, max_delay = 30 }
--   local value, err, info = policy:run(function(attempt)
--     local res, err, kind = http.get(url)
--     if res and res.status == 200 then return res end
--     return nil, err or res.status, { retryable = true, retry_after = ... }
--   end)
--
-- Strategies: "fixed" (base_delay), "linear" (base_delay * n),
-- "exponential" (base_delay * 2^(n-1)), "exponential_jitter" (the default:
-- uniform in [0, base_delay * 2^(n-1)), AWS's "full jitter"), "adaptive"
-- (the server's Retry-After when it sent one, up to max_retry_after; full
-- jitter otherwise). Every delay is capped at max_delay.
--
-- The budget (on by default) bounds retries across all calls of a policy:
-- each first attempt deposits `ratio` of a retry, each retry spends one, and
-- `min_per_second` retries per second are always allowed. When a whole
-- upstream is down, a collector then sends about (1 + ratio) requests per
-- call instead of max_attempts. budget = false turns it off.
--
-- The handle: policy:name() is the name option ("retry" by default).
-- policy:stats() is a new plain table {name, strategy, max_attempts,
-- base_delay, max_delay, max_retry_after, budget (true when on), calls
-- (run()s), attempts (calls of fn), retries (attempts after a first),
-- refused (retries the budget refused)}. policy:close() -> true, or false
-- when it was already closed: it lets go of the budget (and its clock). A
-- closed policy still answers name() and stats(); run(), delay() and
-- refused() raise "sluice.retry: policy '<name>' is closed".
--
-- policy:run() yields when fn does or between attempts (sleep), so it runs
-- in a task unless both fn and the injected sleep return at once.
local core = require "sluice._retry"
local sluice = require "sluice"
local options = require "sluice.options"

local _M = {}
local mt = { __index = _M }

local DELAY = { finite = true, min = 0 }
local SCHEMA = {
  strategy = { one_of = { "fixed", "linear", "exponential", "exponential_jitter", "adaptive" } },
  -- math.huge is allowed: no limit but the budget's
  max_attempts = { min = 1, what = "an integer >= 1",
    check = function(v) return v == math.floor(v) end },
  base_delay = DELAY, max_delay = DELAY, max_retry_after = DELAY,
  budget = {
    type = "table|boolean", what = "a table or false", check = function(v) return v ~= true end,
    fields = { ratio = { min = 0 }, min_per_second = { min = 0 }, ttl = { min = 0 } },
  },
  clock = "function", sleep = "function", name = "string",
}

--- new(opts) -> policy. Defaults: strategy "exponential_jitter",
-- max_attempts 3 (the first try included), base_delay 1 s, max_delay 30 s,
-- max_retry_after 300 s, budget {ratio = 0.2, min_per_second = 1, ttl = 10},
-- name "retry". clock and sleep may be injected for tests.
function _M.new(opts)
  opts = opts or {}
  if type(opts) ~= "table" then
    error("sluice.retry.new: bad argument #1 (table expected, got " .. type(opts) .. ")", 2)
  end
  options.check("sluice.retry.new", opts, SCHEMA)
  local self = setmetatable({
    strategy = opts.strategy or "exponential_jitter",
    max_attempts = opts.max_attempts or 3,
    base_delay = opts.base_delay or 1,
    max_delay = opts.max_delay or 30,
    max_retry_after = opts.max_retry_after or 300,
    clock = opts.clock or sluice.now,
    sleep = opts.sleep or sluice.sleep,
    _name = opts.name or "retry", _closed = false,
    _calls = 0, _attempts = 0, _refused = 0,
  }, mt)
  local b = opts.budget
  if b ~= false then
    b = b or {}
    self.budget = core.budget(b.ratio or 0.2, b.min_per_second or 1, b.ttl or 10, opts.clock)
  end
  self._budget_on = self.budget ~= nil
  return self
end

local function check_open(self)
  if self._closed then error("sluice.retry: policy '" .. self._name .. "' is closed", 3) end
end

--- policy:delay(n [, retry_after]) -> seconds to wait before retry n (n >= 1).
function _M:delay(n, retry_after)
  check_open(self)
  return core.delay(self.strategy, n, self.base_delay, self.max_delay, retry_after,
    self.max_retry_after)
end

--- policy:run(fn, ...) -> value, err, info
-- Calls fn(attempt, ...) until it returns a non-nil value, or fails in a way
-- that must not be retried, or the attempts or the budget run out. fn
-- returns value on success, or nil, err [, hint] where hint.retryable
-- (default false) allows a retry and hint.retry_after (seconds) is the
-- server's word for adaptive; the arguments after fn are passed on to it
-- (a caller needs no closure per call). info = {attempts = n,
-- budget_exhausted = bool}.
function _M:run(fn, ...)
  check_open(self)
  self._calls = self._calls + 1
  if self.budget then self.budget:deposit() end
  local attempt = 0
  while true do
    attempt = attempt + 1
    self._attempts = self._attempts + 1
    local value, err, hint = fn(attempt, ...)
    if value ~= nil then
      return value, nil, { attempts = attempt }
    end
    local retryable = type(hint) == "table" and hint.retryable
    if not retryable or attempt >= self.max_attempts then
      return nil, err, { attempts = attempt }
    end
    if self.budget and not self.budget:withdraw() then
      return nil, err, { attempts = attempt, budget_exhausted = true }
    end
    local d = self:delay(attempt, type(hint) == "table" and hint.retry_after or nil)
    if d > 0 then self.sleep(d) end
  end
end

--- policy:refused() -> retries the budget has refused so far.
function _M:refused()
  check_open(self)
  return self.budget and self.budget:refused() or 0
end

--- policy:name() -> the name option, "retry" by default
function _M:name()
  return self._name
end

--- policy:stats() -> a plain table; see the header.
function _M:stats()
  return { name = self._name, strategy = self.strategy, max_attempts = self.max_attempts,
    base_delay = self.base_delay, max_delay = self.max_delay,
    max_retry_after = self.max_retry_after, budget = self._budget_on,
    calls = self._calls, attempts = self._attempts, retries = self._attempts - self._calls,
    refused = self.budget and self.budget:refused() or self._refused }
end

--- policy:close() -> true | false (already closed)
function _M:close()
  if self._closed then return false end
  self._closed = true
  if self.budget then
    self._refused = self.budget:refused()
    self.budget = nil
  end
  return true
end

return _M
