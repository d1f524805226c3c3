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
-- X-Bapi-*, Gate X-Gate-RateLimit-*, HTX X-HB-RateLimit-*, Bitget
-- X-MBX-USED-REMAIN-LIMIT), to 429s (the backoff multiplier doubles up to 16x, the rate
-- halves, then climbs back to just under the limit it learned) and to
-- latency. A 418 stops everything until the ban ends; observe() reports it
-- (verdict.banned, verdict.ban_until) so a breaker can open_until it.
-- lim:observe(endpoint, status, headers, latency, sent_at, verdict, pools):
-- sent_at (sluice.now() when wait() returned) keeps a 429 for a request
-- sent before the last one from escalating again; verdict "throttled" says
-- the caller classified the response as throttled whatever its status (an
-- API error code in a 200): it is handled exactly as a 429; pools, what the
-- request was charged per pool as wait() took it ({pool_name = cost}, an
-- absent pool the cost 1): a weight header (X-MBX-USED-WEIGHT-*) updates
-- only the pools charged, so APIs with quotas of their own answering with
-- the same header (Binance spot and futures) stay apart.
--
-- Options (defaults): name, rate (10 req/s), burst (1), window (60 s),
-- max_rate (100), min_rate (0.1), utilization (0.9 of a stated quota),
-- max_backoff (3600 s), max_wait (300 s; wait() gives up with nil,
-- "timeout"), ban_time (120 s for a 418 without Retry-After), quiet (300 s
-- without violations before recovering), slow_latency (2 s), fast_latency
-- (0.5 s), max_endpoints (1024; when full, a new endpoint replaces an idle
-- one that has learned nothing: limiter.h says when), reset ("auto" | "epoch" | "epoch_ms" |
-- "delta": how X-RateLimit-Reset is read), pools = { {name, limit, window,
-- burst, weight_window}, ... }, endpoints = { [endpoint] = {rate, burst} },
-- shared (a redis:// url or a sluice.redis client; see below), clock (a
-- function returning seconds, for deterministic tests: it stands for both
-- the monotonic and the wall clock, as the breaker's does; errors in it
-- leave its last reading in place; a waiting task is looked at again after
-- as many real seconds as the clock says are left; a shared quota keeps
-- Redis' clock).
--
-- A shared quota: with shared = "redis://...", every request also needs a
-- slot of a GCRA kept in Redis under gcra:{name} (sluice.gcra), so all
-- processes using the same name stay within `rate` in aggregate; one
-- EVALSHA per request, slots handed out in FIFO order across processes,
-- reserved at most a second ahead (waiters further back queue locally). The
-- local limiter still goes first (bans, 429 backoff, endpoint and pool
-- limits), and the shared slot is asked at the limiter's current global
-- rate, so a rate learned from headers or lowered after a 429 paces the
-- whole pool. In a configuration, `limiter = { shared = true }` uses the
-- configuration's `redis`. When Redis cannot be reached the limiter goes on
-- locally (each process at up to `rate`), logs that once, and shares again
-- when Redis answers; stats().shared tells which. Outside a task wait()
-- answers from the local limiter alone (a Redis call must yield).
--
-- The handle: lim:name() is the configured name ("unknown" by default);
-- lim:stats() is a new plain table (the reference get_stats() shape below);
-- lim:close() -> true, or false when it was already closed: it wakes the
-- tasks waiting in wait() with nil, "closed", closes the shared quota (and
-- the Redis connection it made from a url, not a client it was given),
-- lets go of the clock and takes the limiter out of limiter.get/all. A
-- closed limiter still answers name() and stats(); any other method raises
-- "sluice.limiter: limiter '<name>' is closed".
--
-- Calls that yield (must run in a task to wait): wait(); outside a task it
-- never waits. Everything else returns at once.
local core = require "sluice._limiter"
local log = require "sluice.log"
local options = require "sluice.options"
local current_task = require("sluice").current

local _M = {}
local methods = core.methods

-- The options' types and bounds; the core checks how they fit together.
local N = { min = 0 }
local SCHEMA = {
  name = "string", rate = N, burst = N, window = N, max_rate = N, min_rate = N,
  utilization = N, max_backoff = N, max_wait = N, ban_time = N, quiet = N,
  slow_latency = N, fast_latency = N, max_endpoints = N,
  reset = { one_of = { "auto", "epoch", "epoch_ms", "delta" } },
  pools = {
    type = "table",
    items = {
      type = "table",
      fields = {
        name = { type = "string", required = true }, limit = { gt = 0, required = true },
        window = "number", burst = "number", weight_window = "number",
      },
    },
  },
  endpoints = "table", headers = { one_of = { "auto" } },
  shared = {
    type = "string|table", what = "a redis:// url or a sluice.redis client",
    check = function(v) return type(v) == "string" or type(v.eval_script) == "function" end,
  },
  clock = "function",
}

local registry = setmetatable({}, { __mode = "v" })
-- limiter -> its shared quota state (weak keys: it lives as long as the limiter)
local shared_of = setmetatable({}, { __mode = "k" })

local function bad(msg)
  error("sluice.limiter.new: " .. msg, 3)
end

--- new(opts) -> limiter
function _M.new(opts)
  opts = opts or {}
  if type(opts) ~= "table" then
    error("sluice.limiter.new: bad argument #1 (table expected, got " .. type(opts) .. ")", 2)
  end
  -- shared = true is a configuration's word for "its redis"; a script
  -- that passes it is told where it belongs, not only that it is wrong.
  if opts.shared == true then
    bad("option 'shared' = true needs a configuration with redis set (in a script pass shared = \"redis://...\")")
  end
  options.check("sluice.limiter.new", opts, SCHEMA)
  local shared = opts.shared
  local ok, lim = pcall(core.new, opts)
  if not ok then error(lim, 2) end
  if shared then
    local okg, g = pcall(require("sluice.gcra").new, { redis = shared, name = opts.name or "unknown",
      rate = lim:rate(), burst = math.max(1, opts.burst or 1) })
    if not okg then bad("option 'shared': " .. tostring(g):gsub("^.-sluice%.gcra%.new: ", "")) end
    shared_of[lim] = { gcra = g, max_wait = opts.max_wait or 300, down = false,
      log = log.with({ limiter = opts.name or "unknown" }) }
  end
  registry[opts.name or "unknown"] = lim
  return lim
end

function _M.get(name) return registry[name] end

--- register(lim): make lim the limiter limiter.get(its name) returns.
function _M.register(lim)
  registry[lim:name()] = lim
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
local rate_of = methods.rate

-- After the local limiter let a request go: its slot in the shared quota.
local function shared_wait(self, sh, waited, cost, max_wait)
  if not current_task() then return waited end -- a Redis call must yield
  local g = sh.gcra
  local rate = rate_of(self)
  if rate and rate > 0 and rate ~= g.rate then g:set_rate(rate) end
  local left = (max_wait or sh.max_wait) - waited
  local w, err, retry = g:wait(cost, left > 0 and left or 0)
  if w then
    if sh.down then
      sh.down = false
      sh.log.info("shared quota reachable again", { key = g.key })
    end
    return waited + w
  end
  if err == "timeout" then return nil, "timeout", retry end
  if err == "shutdown" then return nil, err end
  -- Redis away: the local limiter has already paced this request
  if not sh.down then
    sh.down = true
    sh.log.warning("shared quota unreachable: limiting locally until Redis is back",
      { key = g.key, error = err })
  end
  return waited
end
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
  local sh = shared_of[self]
  if opts ~= nil then
    if not sh then return wait(self, endpoint, cost, opts.max_wait, opts.pools) end
    local waited, why, more = wait(self, endpoint, cost, opts.max_wait, opts.pools)
    if not waited then return waited, why, more end
    return shared_wait(self, sh, waited, cost or 1, opts.max_wait)
  end
  if not sh then return wait(self, endpoint, cost) end
  local waited, why, more = wait(self, endpoint, cost)
  if not waited then return waited, why, more end
  return shared_wait(self, sh, waited, cost or 1)
end

-- The reference names.
function methods:parse_rate_limit_headers(headers, endpoint)
  return self:observe(endpoint, 0, headers)
end
local stats = methods.stats
--- lim:stats() -> the reference get_stats() shape; a shared limiter adds
-- shared = {key, rate, burst, state = "shared" | "local", admitted,
-- timeouts, errors, waited_total}.
function methods:stats()
  local s = stats(self)
  local sh = shared_of[self]
  if sh then
    local g = sh.gcra:stats()
    s.shared = { key = g.key, rate = g.rate, burst = g.burst, state = sh.down and "local" or "shared",
      admitted = g.admitted, timeouts = g.timeouts, errors = g.errors, waited_total = g.waited_total }
  end
  return s
end
methods.get_stats = methods.stats

local close = methods.close
--- lim:close() -> true | false (already closed); see the header.
function methods:close()
  local sh = shared_of[self]
  if sh then sh.gcra:close() end
  local name = self:name()
  if registry[name] == self then registry[name] = nil end
  return close(self)
end

return _M
