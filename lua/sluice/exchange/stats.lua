--- sluice.exchange.stats: statistics per exchange collector, in the shape
-- of the reference's exchange-manager statistics, and per dataset the
-- data's lag.
--
-- The kit (sluice.exchange) tells it, per collector instance:
--   register(c, exchange)            the instance is an exchange collector
--   observe(c, dataset, newest_ms)   a run of dataset stored data whose
--                                    newest time is newest_ms (epoch ms;
--                                    nil: nothing new)
--   idle(c, dataset, reason)         dataset has nothing to do (no symbol
--                                    it applies to)
--   skipped(c, symbol, why)          a symbol is skipped (unknown to the
--                                    exchange)
-- and the operator views read it:
--   exchanges(instances) -> {total_exchanges, healthy_exchanges,
--     degraded_exchanges, failed_exchanges, exchanges = {name = {status,
--     status_reason, healthy, total_requests, successful_requests,
--     failed_requests, success_rate (percent, nil before any request),
--     average_response_time (seconds, nil before any answer), last_error,
--     last_success, circuit_breaker (its state), skipped_symbols = {{symbol,
--     reason}}, datasets = {name = {status, enabled, rows, last_success,
--     lag_seconds, idle}}}}} over the instances given (the app's, in
--     order); the others are not exchange collectors and are left out.
--     healthy counts status "healthy", degraded "degraded", failed
--     "failed" and "circuit_open"; a disabled one counts in the total only.
--   lag(c, dataset) -> seconds from the newest data dataset stored to
--     now, or nil.
--   each(instances, fn) -> fn(c, exchange) for each exchange collector.
-- The counters that exist elsewhere are read there (the collector's
-- counters() and stats(), its breaker), never copied. State: a table weak
-- by instance. Nothing here yields.
local sluice = require "sluice"

local _M = {}

-- instance -> {exchange, datasets = {name = {newest_ms, idle}}, skipped = {...}}
local registry = setmetatable({}, { __mode = "k" })

local function dataset_state(c, dataset)
  local r = registry[c]
  if not r then return nil end
  local d = r.datasets[dataset]
  if not d then
    d = {}
    r.datasets[dataset] = d
  end
  return d
end

function _M.register(c, exchange)
  if not registry[c] then registry[c] = { exchange = exchange, datasets = {}, skipped = {} } end
end

function _M.observe(c, dataset, newest_ms)
  local d = dataset_state(c, dataset)
  if not d then return end
  d.idle = nil
  if newest_ms and (not d.newest_ms or newest_ms > d.newest_ms) then d.newest_ms = newest_ms end
end

function _M.idle(c, dataset, reason)
  local d = dataset_state(c, dataset)
  if d then d.idle = reason end
end

function _M.skipped(c, symbol, why)
  local r = registry[c]
  if r then r.skipped[#r.skipped + 1] = { symbol = symbol, reason = tostring(why) } end
end

function _M.lag(c, dataset)
  local d = registry[c] and registry[c].datasets[dataset]
  if not (d and d.newest_ms) then return nil end
  return math.max(0, sluice.time() - d.newest_ms / 1000)
end

function _M.each(instances, fn)
  for _, c in ipairs(instances or {}) do
    local r = registry[c]
    if r then fn(c, r.exchange) end
  end
end

local function iso(t)
  return t and sluice.iso8601(math.floor(t))
end

local function one(c)
  local r = registry[c]
  local cn, st = c:counters(), c:stats()
  local ds = {}
  for name, d in pairs(st.datasets or {}) do
    local own = r.datasets[name] or {}
    ds[name] = { status = d.status, enabled = d.enabled, rows = d.data_points_collected,
      last_success = d.last_success, lag_seconds = _M.lag(c, name), idle = own.idle }
  end
  local skipped = {}
  for i, s in ipairs(r.skipped) do skipped[i] = { symbol = s.symbol, reason = s.reason } end
  return {
    status = st.status, status_reason = st.status_reason, healthy = st.status == "healthy",
    total_requests = cn.total_requests, successful_requests = cn.successful_requests,
    failed_requests = cn.failed_requests,
    success_rate = cn.total_requests > 0 and cn.successful_requests / cn.total_requests * 100 or nil,
    average_response_time = cn.latency_count > 0 and cn.latency_total / cn.latency_count or nil,
    last_error = cn.last_error, last_success = iso(cn.last_success),
    circuit_breaker = c.breaker and c.breaker:state() or nil,
    skipped_symbols = skipped, datasets = ds,
  }
end

function _M.exchanges(instances)
  local out = { total_exchanges = 0, healthy_exchanges = 0, degraded_exchanges = 0, failed_exchanges = 0,
    exchanges = {} }
  _M.each(instances, function(c)
    local e = one(c)
    out.exchanges[c.name] = e
    out.total_exchanges = out.total_exchanges + 1
    if e.status == "healthy" then
      out.healthy_exchanges = out.healthy_exchanges + 1
    elseif e.status == "degraded" then
      out.degraded_exchanges = out.degraded_exchanges + 1
    elseif e.status == "failed" or e.status == "circuit_open" then
      out.failed_exchanges = out.failed_exchanges + 1
    end
  end)
  return out
end

return _M
