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
-- Unknown options, or options of the wrong type, raise naming them.
--
-- Every decision is one EVALSHA (client:eval_script) of a server-side script
-- with KEYS = {key}, ARGV = {emission interval T = 1/rate s, burst tolerance
-- = burst * T s, cost}. The script takes `now` from Redis TIME (no client
-- clock skew), reads the theoretical arrival time TAT (a float string, in
-- microseconds), computes new_tat = max(tat, now) + cost * T and admits when
-- new_tat - now <= burst * T: it then SETs the new TAT with a PEXPIRE of a
-- little more than new_tat - now (after which a missing key means "idle")
-- and replies {1, 0}. Otherwise it changes nothing and replies
-- {0, retry_after} in integer microseconds (Redis turns Lua numbers into
-- integers), where retry_after = new_tat - now - burst * T.
--
-- g:take([cost=1]) -> true, 0 | false, retry_after_seconds | nil, "redis: <err>"
--   One attempt; never waits (but must run in a task: the call yields for the
--   round trip). A cost above burst can never be admitted and raises.
-- g:wait([cost=1]) -> seconds waited | nil, "timeout" | nil, "redis: <err>"
--   | nil, "shutdown"
--   Takes, and on a refusal sleeps (sluice.sleep) for retry_after and tries
--   again, until admitted. Gives up with "timeout" at once when the next
--   attempt would fall after max_wait. It sleeps a little less than
--   retry_after (by the timer lateness it has measured, up to 10 ms, plus
--   1 ms) and then retries at once, so that waiters are on time: with
--   burst 1 a late waiter wastes the cell. The price is extra refused
--   EVALSHAs near each cell (measured: ~56 per admission with 8 waiting
--   tasks, ~190 with 100). When Redis cannot be reached it
--   returns nil, "redis: <err>" at once: the caller decides whether to fall
--   back to a local limiter.
-- g.key, g.rate, g.burst, g.max_wait, g.client are readable.
local sluice = require "sluice"
local redis = require "sluice.redis"

local _M = {}

local MAX_LAG = 0.01 -- the most timer lateness wait() compensates, in seconds
local LEAD = 0.001 -- and this much more: an early waiter only costs a round trip

local G = {}
local mt = { __index = G }

_M.SCRIPT = [[
local interval = tonumber(ARGV[1]) * 1e6
local tolerance = tonumber(ARGV[2]) * 1e6
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1e6 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '') or now
if tat < now then tat = now end
local new_tat = tat + cost * interval
local ahead = new_tat - now
if ahead <= tolerance then
  redis.call('SET', KEYS[1], string.format('%.3f', new_tat),
    'PX', math.ceil(ahead / 1000) + 1000)
  return {1, 0}
end
return {0, math.ceil(ahead - tolerance)}
]]

local OPTIONS = {
  redis = true, key = "string", name = "string", rate = "number", burst = "number",
  max_wait = "number",
}

local function bad(msg)
  error("sluice.gcra.new: " .. msg, 3)
end

--- new(opts) -> g
function _M.new(opts)
  if type(opts) ~= "table" then
    error("sluice.gcra.new: bad argument #1 (table expected, got " .. type(opts) .. ")", 2)
  end
  for k, v in pairs(opts) do
    local want = OPTIONS[k]
    if not want then bad("unknown option '" .. tostring(k) .. "'") end
    if want ~= true and type(v) ~= want then
      bad("option '" .. k .. "' must be a " .. want .. ", got " .. type(v))
    end
  end
  local client = opts.redis
  if type(client) == "string" then
    local ok, c = pcall(redis.connect, { url = client })
    if not ok then bad("option 'redis': " .. tostring(c):gsub("^.-: ", "", 1)) end
    client = c
  elseif type(client) ~= "table" or type(client.eval_script) ~= "function" then
    bad("option 'redis' must be a redis:// url or a sluice.redis client")
  end
  local key = opts.key or (opts.name and "gcra:" .. opts.name)
  if not key or key == "" then bad("option 'key' or 'name' is required") end
  local rate = opts.rate
  if not rate then bad("option 'rate' is required") end
  if not (rate > 0 and rate < math.huge) then bad("option 'rate' must be > 0") end
  local burst = opts.burst or 1
  if not (burst >= 1 and burst < math.huge) then bad("option 'burst' must be >= 1") end
  local max_wait = opts.max_wait or 30
  if not (max_wait >= 0) then bad("option 'max_wait' must be >= 0") end
  return setmetatable({
    client = client, key = key, rate = rate, burst = burst, max_wait = max_wait,
    _interval = 1 / rate, _tolerance = burst / rate, _lag = 0,
  }, mt)
end

local function check_cost(fname, cost, burst)
  if cost == nil then return 1 end
  if type(cost) ~= "number" or not (cost > 0) then
    error("sluice.gcra." .. fname .. ": bad argument #1 'cost' (number > 0 expected)", 3)
  end
  if cost > burst then
    error("sluice.gcra." .. fname .. ": cost " .. cost .. " exceeds burst " .. burst
      .. " and can never be admitted", 3)
  end
  return cost
end

local function take(self, cost)
  local res, err = self.client:eval_script(_M.SCRIPT, { self.key },
    { self._interval, self._tolerance, cost })
  if type(res) ~= "table" then
    return nil, "redis: " .. tostring(err or "unexpected reply")
  end
  if res[1] == 1 then return true, 0 end
  return false, (tonumber(res[2]) or 0) / 1e6
end

--- g:take([cost]) -> true, 0 | false, retry_after | nil, "redis: <err>"
function G:take(cost)
  return take(self, check_cost("take", cost, self.burst))
end

--- g:wait([cost]) -> seconds waited | nil, "timeout" | nil, "redis: <err>"
function G:wait(cost)
  cost = check_cost("wait", cost, self.burst)
  local start = sluice.now()
  local deadline = start + self.max_wait
  while true do
    local ok, retry = take(self, cost)
    if ok then return sluice.now() - start end
    if ok == nil then return nil, retry end
    local now = sluice.now()
    if now + retry > deadline then return nil, "timeout" end
    -- Timers fire a little late; a late waiter wastes cells (burst 1 has no
    -- slack to catch up), so sleep less by the lateness seen so far.
    local nap = retry - self._lag - LEAD
    if nap > 0 then
      local slept, why = sluice.sleep(nap)
      if not slept then return nil, why or "shutdown" end
      local late = sluice.now() - now - nap
      if late < 0 then late = 0 elseif late > MAX_LAG then late = MAX_LAG end
      self._lag = self._lag * 0.9 + late * 0.1
    else
      sluice.yield()
    end
  end
end

return _M
