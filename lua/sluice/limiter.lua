--- sluice.limiter: adaptive rate limiting (the core is C: runtime/core/limiter.c).
--
--   local lim = limiter.new{ name = "binance", rate = 10,
--     pools = { { name = "weight", limit = 6000, window = 60, weight_window = 60 } } }
--   local waited, err = lim:wait("/api/v3/klines", 2)  -- yields until allowed
--   local res = http.get(url)
--   local verdict = lim:observe("/api/v3/klines", res.status, res.headers, res.timings.total)
--
-- Every request is charged `cost` in the global pool, its endpoint's pool
-- and each declared pool; it goes only when all of them allow it. Rates
-- adapt to quota headers (X-RateLimit-*, RateLimit-*, the IETF RateLimit /
-- RateLimit-Policy fields, Retry-After, Binance X-MBX-USED-WEIGHT-*, Bybit
-- X-Bapi-*), to 429s (the backoff multiplier doubles up to 16x, the rate
-- halves, then climbs back to just under the limit it learned) and to
-- latency. A 418 stops everything until the ban ends; observe() reports it
-- (verdict.banned, verdict.ban_until) so a breaker can open_until it.
--
-- Options (defaults): name, rate (10 req/s), burst (1), window (60 s),
-- max_rate (100), min_rate (0.1), utilization (0.9 of a stated quota),
-- max_backoff (3600 s), max_wait (300 s; wait() gives up with nil,
-- "timeout"), ban_time (120 s for a 418 without Retry-After), quiet (300 s
-- without violations before recovering), slow_latency (2 s), fast_latency
-- (0.5 s), max_endpoints (1024), reset ("auto" | "epoch" | "epoch_ms" |
-- "delta": how X-RateLimit-Reset is read), pools = { {name, limit, window,
-- burst, weight_window}, ... }, endpoints = { [endpoint] = {rate, burst} }.
local core = require "sluice._limiter"

local _M = {}
local methods = core.methods

local OPTIONS = {
  name = "string", rate = "number", burst = "number", window = "number",
  max_rate = "number", min_rate = "number", utilization = "number",
  max_backoff = "number", max_wait = "number", ban_time = "number", quiet = "number",
  slow_latency = "number", fast_latency = "number", max_endpoints = "number",
  reset = "string", pools = "table", endpoints = "table", headers = "string",
}
local POOL = { name = "string", limit = "number", window = "number", burst = "number",
  weight_window = "number" }
local RESETS = { auto = true, epoch = true, epoch_ms = true, delta = true }

local registry = setmetatable({}, { __mode = "v" })

local function bad(msg)
  error("sluice.limiter.new: " .. msg, 3)
end

--- new(opts) -> limiter
function _M.new(opts)
  opts = opts or {}
  if type(opts) ~= "table" then
    error("sluice.limiter.new: bad argument #1 (table expected, got " .. type(opts) .. ")", 2)
  end
  for k, v in pairs(opts) do
    local want = OPTIONS[k]
    if not want then bad("unknown option '" .. tostring(k) .. "'") end
    if type(v) ~= want then bad("option '" .. k .. "' must be a " .. want .. ", got " .. type(v)) end
    if want == "number" and not (v >= 0) then bad("option '" .. k .. "' must be >= 0") end
  end
  if opts.reset and not RESETS[opts.reset] then
    bad("option 'reset' must be auto, epoch, epoch_ms or delta, got '" .. opts.reset .. "'")
  end
  if opts.headers and opts.headers ~= "auto" then
    bad("option 'headers' must be auto, got '" .. opts.headers .. "'")
  end
  for i, p in ipairs(opts.pools or {}) do
    if type(p) ~= "table" then bad("pools[" .. i .. "] must be a table") end
    for k, v in pairs(p) do
      if not POOL[k] then bad("unknown option 'pools[" .. i .. "]." .. tostring(k) .. "'") end
      if type(v) ~= POOL[k] then
        bad("option 'pools[" .. i .. "]." .. k .. "' must be a " .. POOL[k] .. ", got " .. type(v))
      end
    end
    if not p.name then bad("pools[" .. i .. "] needs a name") end
    if not (p.limit and p.limit > 0) then bad("pools[" .. i .. "] needs a limit > 0") end
  end
  local ok, lim = pcall(core.new, opts)
  if not ok then error(lim, 2) end
  registry[opts.name or "unknown"] = lim
  return lim
end

function _M.get(name) return registry[name] end

--- register(lim): make lim the limiter limiter.get(its name) returns.
function _M.register(lim)
  registry[lim:stats().limiter_name] = lim
  return lim
end

function _M.all()
  local out = {}
  for k, v in pairs(registry) do out[k] = v end
  return out
end

--- restore(snapshot) -> the limiter named snapshot.name, with that state.
function _M.restore(snapshot)
  if type(snapshot) ~= "table" or type(snapshot.name) ~= "string" then
    error("sluice.limiter.restore: bad argument #1 (snapshot table with a name expected)", 2)
  end
  local lim = registry[snapshot.name]
  if not lim then return nil, "no limiter named '" .. snapshot.name .. "'" end
  return lim:restore(snapshot)
end

local wait = methods.wait
--- lim:wait([endpoint [, cost [, opts]]]) -> seconds waited | nil, "timeout" |
-- "banned", seconds until it could go. opts: max_wait (seconds), pools
-- ({pool_name = cost}, default: cost in every declared pool). Outside a
-- task it never waits: it answers at once.
function methods:wait(endpoint, cost, opts)
  if endpoint ~= nil and type(endpoint) ~= "string" then
    error("sluice.limiter.wait: bad argument #1 'endpoint' (string expected, got " .. type(endpoint) .. ")", 2)
  end
  if cost ~= nil and (type(cost) ~= "number" or not (cost > 0)) then
    error("sluice.limiter.wait: bad argument #2 'cost' (number > 0 expected)", 2)
  end
  if opts ~= nil then
    return wait(self, endpoint, cost, opts.max_wait, opts.pools)
  end
  return wait(self, endpoint, cost)
end

-- The reference names.
function methods:parse_rate_limit_headers(headers, endpoint)
  return self:observe(endpoint, 0, headers)
end
methods.get_stats = methods.stats

return _M
