--- sluice.gcra: a rate limit shared by several processes, as a GCRA
-- (generic cell rate algorithm) run atomically in Redis.
--
--   local g = gcra.new{ redis = "redis://127.0.0.1:6379/0", name = "binance",
--                       rate = 100, burst = 1 }
--   local waited, err = g:wait()        -- yields until admitted
--   if not waited and err ~= "timeout" then ... end  -- "redis: ...": fall back
--
-- Options (defaults):
--   redis     a sluice.redis client, or a redis:// url (a client is made)
--   key       the Redis key holding the state, or
--   name      ... giving key = "gcra:{name}" (one of key/name is required)
--   rate      requests per second (> 0), in aggregate over every process
--             using the key
--   burst     cells that may go at once (>= 1; default 1)
--   max_wait  seconds wait() may wait in all (default 30)
--   horizon   seconds ahead a waiter may reserve its slot (default 1; see
--             wait())
-- Options are checked by sluice.options: unknown options, or options of
-- the wrong type or out of range, raise naming them.
--
-- Every decision is one EVALSHA (client:eval_script) of a server-side script
-- with KEYS = {key}, ARGV = {emission interval T = 1/rate s, burst tolerance
-- = burst * T s, cost, max_delay s}. The script takes `now` from Redis TIME
-- (no client clock skew), reads the theoretical arrival time TAT (a float
-- string, in microseconds), computes new_tat = max(tat, now) + cost * T and
-- delay = new_tat - now - burst * T, the time until the request conforms.
-- When delay <= max_delay it SETs the new TAT with a PEXPIRE of a little more
-- than new_tat - now (after which a missing key means "idle") and replies
-- {1, max(delay, 0)}: the request is admitted at now + delay, and that slot
-- is its own. Otherwise it changes nothing and replies {0, delay -
-- max_delay}, when to ask again. Times travel as integer microseconds
-- (Redis turns Lua numbers into integers).
--
-- g:take([cost=1]) -> true, 0 | false, retry_after_seconds | nil, "redis: <err>"
--   One attempt with max_delay 0: now or never; never waits (but must run
--   in a task: the call yields for the round trip). A cost above burst can
--   never be admitted at once and raises.
-- g:wait([cost=1 [, max_wait]]) -> seconds waited | nil, "timeout",
--   retry_after | nil, "redis: <err>" | nil, "shutdown"
--   Reserves the next free slot and sleeps until it. Because slots are
--   handed out in the order Redis runs the script, waiters form one FIFO
--   queue across processes, and a late timer only delays that request,
--   never the ones behind it: the aggregate rate is exact. A slot is
--   reserved at most `horizon` seconds ahead (or the request's own
--   (cost - burst) * T, if longer): a waiter whose slot is further away is
--   told when it would come within the horizon, sleeps until then and asks
--   again; only one waiter per object does that (the others wait in a
--   local FIFO queue, and each reservation hands the asking to the next),
--   so a long queue costs about one refused EVALSHA per slot and process,
--   not one per waiter. A process that dies with many waiters leaves at
--   most a horizon of reserved slots unused for the others, not max_wait's
--   worth; with a queue shorter than the horizon each admission is one
--   EVALSHA.
--   "timeout" (with the retry_after Redis gave) at once when the slot
--   would fall after max_wait (default g.max_wait). When Redis cannot be
--   reached it returns nil, "redis: <err>" at once: the caller decides
--   whether to fall back to a local limiter.
-- g:set_rate(rate): the emission interval of this object's later requests
--   (processes may use different rates on one key: each request advances
--   the TAT by its own cost * T).
-- g.key, g.rate, g.burst, g.max_wait, g.client are readable.
--
-- The handle: g:name() -> the name option (the key when only key was
-- given). g:stats() -> a new plain table {name, key, rate, burst, max_wait,
-- horizon, admitted (wait() and take() admissions), waited_total (seconds
-- waited by admitted wait()s), timeouts (wait()s that gave up), refused
-- (take()s refused), errors (calls Redis did not answer), queued (waiters
-- parked in the local queue), closed}. g:close() -> true, or false when it
-- was already closed: it closes the Redis client the object made from a
-- url (not one it was given). A closed object still answers name() and
-- stats(); take(), wait() and set_rate() raise "sluice.gcra: gcra '<name>'
-- is closed". Calls that yield (must run in a task): take(), wait().
local sluice = require "sluice"
local redis = require "sluice.redis"
local options = require "sluice.options"

local _M = {}

local G = {}
local mt = { __index = G }

_M.SCRIPT = [[
local interval = tonumber(ARGV[1]) * 1e6
local tolerance = tonumber(ARGV[2]) * 1e6
local cost = tonumber(ARGV[3])
local max_delay = tonumber(ARGV[4]) * 1e6
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1e6 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '') or now
if tat < now then tat = now end
local new_tat = tat + cost * interval
local delay = new_tat - now - tolerance
if delay <= max_delay then
  redis.call('SET', KEYS[1], string.format('%.3f', new_tat),
    'PX', math.ceil((new_tat - now) / 1000) + 1000)
  if delay < 0 then delay = 0 end
  return {1, math.ceil(delay)}
end
return {0, math.ceil(delay - max_delay)}
]]

local SCHEMA = {
  redis = {
    type = "string|table", required = true, what = "a redis:// url or a sluice.redis client",
    check = function(v) return type(v) == "string" or type(v.eval_script) == "function" end,
  },
  key = "string", name = "string",
  rate = { finite = true, gt = 0, required = true },
  burst = { finite = true, min = 1 },
  max_wait = { min = 0 },
  horizon = { finite = true, gt = 0 },
}

local function bad(msg)
  error("sluice.gcra.new: " .. msg, 3)
end

--- new(opts) -> g
function _M.new(opts)
  if type(opts) ~= "table" then
    error("sluice.gcra.new: bad argument #1 (table expected, got " .. type(opts) .. ")", 2)
  end
  options.check("sluice.gcra.new", opts, SCHEMA)
  -- By hand: one of two keys required (a schema requires each on its own).
  local key = opts.key or (opts.name and "gcra:" .. opts.name)
  if not key or key == "" then bad("option 'key' or 'name' is required") end
  local client = opts.redis
  local owns_client = type(client) == "string"
  if owns_client then
    local c, err = redis.connect({ url = client })
    if not c then bad("option 'redis': " .. err) end
    client = c
  end
  local rate, burst = opts.rate, opts.burst or 1
  local max_wait, horizon = opts.max_wait or 30, opts.horizon or 1
  return setmetatable({
    client = client, key = key, rate = rate, burst = burst, max_wait = max_wait, horizon = horizon,
    _interval = 1 / rate, _tolerance = burst / rate,
    _queue = { head = 1, tail = 0 }, _queued = {}, _poller = nil,
    _name = opts.name or key, _owns_client = owns_client, _closed = false,
    _admitted = 0, _waited = 0, _timeouts = 0, _refused = 0, _errors = 0,
  }, mt)
end

local function check_open(self)
  if self._closed then error("sluice.gcra: gcra '" .. self._name .. "' is closed", 3) end
end

local function check_cost(fname, cost)
  if cost == nil then return 1 end
  if type(cost) ~= "number" or not (cost > 0 and cost < math.huge) then
    error("sluice.gcra." .. fname .. ": bad argument #1 'cost' (number > 0 expected)", 3)
  end
  return cost
end

-- One decision: admitted, seconds | refused, retry_after | nil, err.
local function decide(self, cost, max_delay)
  local res, err = self.client:eval_script(_M.SCRIPT, { self.key },
    { self._interval, self._tolerance, cost, max_delay })
  if type(res) ~= "table" then
    return nil, "redis: " .. tostring(err or "unexpected reply")
  end
  return res[1] == 1, (tonumber(res[2]) or 0) / 1e6
end

--- g:take([cost]) -> true, 0 | false, retry_after | nil, "redis: <err>"
function G:take(cost)
  check_open(self)
  cost = check_cost("take", cost)
  if cost > self.burst then
    error("sluice.gcra.take: cost " .. cost .. " exceeds burst " .. self.burst
      .. " and can never be admitted", 2)
  end
  local ok, v = decide(self, cost, 0)
  if ok then
    self._admitted = self._admitted + 1
    return true, 0
  end
  if ok == false then
    self._refused = self._refused + 1
  else
    self._errors = self._errors + 1
  end
  return ok, v
end

-- --- the local queue ------------------------------------------------------
-- When the horizon is full, one waiter of this object (the poller) asks
-- Redis again when its slot comes within reach; the others park here in
-- FIFO order, and each reservation the poller gets hands the role to the
-- next. Without this every waiter beyond the horizon would ask at the same
-- moment, one would win and the rest ask again: a herd of refused EVALSHAs.

local function gone(task)
  local st = sluice.status(task)
  return st == "done" or st == "failed" or st == "killed"
end

-- The poller is done polling: the oldest queued waiter still parked polls
-- next.
local function hand_over(self)
  self._poller = nil
  local q = self._queue
  while q.head <= q.tail do
    local t = q[q.head]
    q[q.head] = nil
    q.head = q.head + 1
    if self._queued[t] then
      self._queued[t] = nil
      if sluice.unpark(t) then
        self._poller = t
        return
      end
    end
  end
  q.head, q.tail = 1, 0
end

local function enqueue(self, me)
  local q = self._queue
  q.tail = q.tail + 1
  q[q.tail] = me
  self._queued[me] = true
end

-- Parks `me` until it is the poller -> true | nil, "timeout" | "shutdown".
-- Parks at most a horizon at a time, so that a poller killed without
-- handing over is replaced.
local function queue(self, me, deadline)
  enqueue(self, me)
  while true do
    local left = deadline - sluice.now()
    if left <= 0 then
      self._queued[me] = nil
      return nil, "timeout"
    end
    local ok, why = sluice.park(math.min(left, self.horizon))
    if ok then return true end -- handed the role (and taken off the queue)
    if why == "shutdown" then
      self._queued[me] = nil
      return nil, why
    end
    local p = self._poller
    if not p or gone(p) then
      self._queued[me] = nil
      self._poller = me
      return true
    end
    -- (a hand-over that found us timing out passed us by: line up again)
    if not self._queued[me] then enqueue(self, me) end
  end
end

-- The wait proper (arguments checked): see g:wait.
local function wait(self, me, cost, max_wait)
  local start = sluice.now()
  local deadline = start + (max_wait or self.max_wait)
  local polling = false
  local function done(...)
    if polling then hand_over(self) end
    return ...
  end
  if self._poller and self._poller ~= me then
    -- the horizon is full and one of ours already asks: line up
    local ok, why = queue(self, me, deadline)
    if not ok then return nil, why end
    polling = true
  end
  while true do
    local left = deadline - sluice.now()
    if left < 0 then left = 0 end
    local reach = math.max(self.horizon, (cost - self.burst) * self._interval)
    local ahead = math.min(left, reach)
    local ok, v = decide(self, cost, ahead)
    if ok == nil then return done(nil, v) end
    if ok then
      done()
      -- the delay counts from Redis' clock half a round trip ago: sleeping
      -- it all from here errs on the late (safe) side by that half trip
      if v > 0 then
        local slept, why = sluice.sleep(v)
        if not slept then return nil, why or "shutdown" end
      end
      return sluice.now() - start
    end
    -- refused: the slot is v + ahead away, if nobody else reserves first
    if v + ahead > left then return done(nil, "timeout", v + ahead - left) end
    if not polling and self._poller and self._poller ~= me then
      local okq, why = queue(self, me, deadline)
      if not okq then return nil, why end
      polling = true -- handed the role: ask again at once
    else
      polling = true
      self._poller = me
      local slept, why = sluice.sleep(v)
      if not slept then return done(nil, why or "shutdown") end
    end
  end
end

--- g:wait([cost [, max_wait]]) -> seconds waited | nil, "timeout", retry_after
-- | nil, "redis: <err>" | nil, "shutdown"
function G:wait(cost, max_wait)
  check_open(self)
  cost = check_cost("wait", cost)
  if max_wait ~= nil and (type(max_wait) ~= "number" or not (max_wait >= 0)) then
    error("sluice.gcra.wait: bad argument #2 'max_wait' (number >= 0 expected)", 2)
  end
  local me = sluice.current()
  if not me then error("sluice.gcra.wait: must be called from a task", 2) end
  local waited, err, retry = wait(self, me, cost, max_wait)
  if waited then
    self._admitted = self._admitted + 1
    self._waited = self._waited + waited
  elseif err == "timeout" then
    self._timeouts = self._timeouts + 1
  elseif err ~= "shutdown" then
    self._errors = self._errors + 1
  end
  return waited, err, retry
end

--- g:set_rate(rate): later requests from this object use rate.
function G:set_rate(rate)
  check_open(self)
  if type(rate) ~= "number" or not (rate > 0 and rate < math.huge) then
    error("sluice.gcra.set_rate: bad argument #1 'rate' (number > 0 expected)", 2)
  end
  self.rate, self._interval, self._tolerance = rate, 1 / rate, self.burst / rate
end

--- g:name() -> the name (or the key)
function G:name()
  return self._name
end

--- g:stats() -> a plain table; see the header.
function G:stats()
  local q = 0
  for _ in pairs(self._queued) do q = q + 1 end
  return { name = self._name, key = self.key, rate = self.rate, burst = self.burst,
    max_wait = self.max_wait, horizon = self.horizon, admitted = self._admitted,
    waited_total = self._waited, timeouts = self._timeouts, refused = self._refused,
    errors = self._errors, queued = q, closed = self._closed }
end

--- g:close() -> true | false (already closed)
function G:close()
  if self._closed then return false end
  self._closed = true
  if self._owns_client then self.client:close() end
  return true
end

return _M
