--- sluice.collector: the collector framework.
--
-- A collector is a spec (collector.define{...}, usually what a collector
-- file returns) turned into a running instance by collector.new(spec,
-- options, context). The instance owns a breaker, a limiter, a retry policy
-- and the request pipeline, runs `collect` every `interval` seconds as a
-- task, stores the rows it returns, and keeps the reference statistics and
-- health.
--
--   return collector.define{
--     name = "binance_klines", base_url = "https://api.binance.com",
--     interval = 60, jitter = 0.1, timeout = 10,
--     auth = { header = "X-MBX-APIKEY", value = collector.env("BINANCE_KEY") },
--     limiter = { rate = 10 }, breaker = { failure_threshold = 5 },
--     retry = { strategy = "exponential_jitter", max_attempts = 3 },
--     tables = { klines = { columns = {...}, key = {...} } },
--     options = { symbols = { "BTCUSDT" } },       -- the collector's own, with defaults
--     collect = function(self) return { klines = rows } end,
--   }
--
-- The request pipeline, self:get(path, opts) / self:post / self:request:
-- limiter wait -> breaker permit -> HTTP -> classify -> limiter observe ->
-- breaker record -> retry. Classification: 2xx success; 429 throttled (the
-- limiter backs off, the breaker counts a failure, retried after
-- Retry-After); 418 banned (the breaker stays open until the ban ends; not
-- retried); 5xx, timeout, connect and other transport errors are failures,
-- retried; other 4xx are failures, not retried. A collector's
-- classify(self, res) sees every response and may return a verdict
-- ("success", "failure", "ignored", "throttled", "banned") and a message,
-- e.g. for an HTTP 200 carrying an error object, or just a message (nil,
-- "Binance error -1121: Invalid symbol.") that explains the default
-- verdict. A failure it declares on a 2xx is not retried; "throttled" on
-- any status (Bybit retCode 10006, JSON-RPC -32005 in a 200) backs the
-- limiter off as a 429 does and is retried. Returns data (decoded JSON
-- when the response is JSON, the body otherwise) and the response, or nil,
-- err, kind.
local sluice = require "sluice"
local log = require "sluice.log"
local breaker = require "sluice.breaker"
local retry = require "sluice.retry"
local cjson = require "cjson.safe"
local spec_mod = require "sluice.collector.spec"
local request = require "sluice.collector.request"
local secret = require "sluice.collector.secret"
local slot = require "sluice.collector.slot"

local _M = {}
local Collector = {}
local instance_mt = { __index = Collector }

local OPTIONS = spec_mod.OPTIONS

--- env(name [, default]) -> a secret resolved from the environment when
-- used. It prints as "<secret>" so it cannot leak into logs or status.
_M.env = secret.env

-- --- the spec -----------------------------------------------------------

--- define(spec) -> spec, validated. Unknown options and wrong types raise
-- errors naming them.
function _M.define(spec)
  if type(spec) ~= "table" then
    error("sluice.collector.define: bad argument #1 (table expected, got " .. type(spec) .. ")", 2)
  end
  spec_mod.check(spec, "sluice.collector.define", 3)
  if not spec.name then
    error("sluice.collector.define: option 'name' is required", 2)
  end
  if not spec.collect and not spec.backfill then
    error("sluice.collector.define: a collector needs collect (and/or backfill)", 2)
  end
  spec_mod.no_jit(spec)
  spec._is_collector_spec = true
  return spec
end

-- --- the instance --------------------------------------------------------

local function iso(t)
  if not t then return nil end
  local secs = math.floor(t)
  return os.date("!%Y-%m-%dT%H:%M:%S", secs) .. string.format(".%06d", math.floor((t - secs) * 1e6)) .. "+00:00"
end

local function merge(base, over)
  local out = {}
  for k, v in pairs(base or {}) do out[k] = v end
  for k, v in pairs(over or {}) do out[k] = v end
  return out
end

--- new(spec, overrides, context) -> instance
-- overrides: the configuration entry (name, base_url, interval, auth,
-- limiter, breaker, retry, and the collector's own options); context:
-- {store = db, redis = client} (both optional; without a store, collect's
-- rows are counted but not stored; redis is the configuration's sluice.redis
-- client, which `limiter = { shared = true }` shares its quota through).
function _M.new(spec, overrides, context)
  if type(spec) ~= "table" or not spec._is_collector_spec then
    error("sluice.collector.new: bad argument #1 (a spec from collector.define expected)", 2)
  end
  overrides = overrides or {}
  context = context or {}
  -- overrides split: framework options vs the collector's own options
  local own = merge(spec.options, nil)
  local framework = {}
  local BOOKKEEPING = { use = true, file = true } -- the config's, not ours
  for k, v in pairs(overrides) do
    if BOOKKEEPING[k] then
      framework[k] = nil
    elseif OPTIONS[k] and k ~= "options" then
      framework[k] = v
    elseif spec.options and spec.options[k] ~= nil then
      if type(v) ~= type(spec.options[k]) then
        error(string.format("collector '%s': option '%s' must be a %s, got %s",
          overrides.name or spec.name, k, type(spec.options[k]), type(v)), 2)
      end
      own[k] = v
    else
      error(string.format("collector '%s': unknown option '%s'", overrides.name or spec.name, tostring(k)), 2)
    end
  end
  spec_mod.check(framework, "collector '" .. (overrides.name or spec.name) .. "'", 3)
  local cfg = merge(spec, framework)
  local self = setmetatable({
    name = cfg.name,
    spec = spec,
    config = cfg,
    options = own,
    store = context.store,
    base_url = cfg.base_url,
    interval = cfg.interval or 60,
    log = log.with({ collector = cfg.name }),
    running = false,
    enabled = cfg.enabled ~= false,
    -- one run in flight per collector: shared with the instances that
    -- replace this one at a reload (app.lua hands it over)
    slot_ = slot.new(),
    stats_ = {
      started_at = nil, last_collection = nil, last_success = nil, last_error = nil,
      total_requests = 0, successful_requests = 0, failed_requests = 0,
      data_points_collected = 0, total_runtime = 0, collections_completed = 0,
      consecutive_failures = 0, collections_failed = 0, collections_skipped = 0,
    },
    refusals_ = 0, -- requests the breaker refused, ever
  }, instance_mt)
  if cfg.run_budget ~= false then
    local b = type(cfg.run_budget) == "table" and cfg.run_budget or {}
    -- wall: ten request timeouts, or two intervals for slow collectors
    local wall = math.max(10 * (cfg.timeout or 30), 2 * self.interval)
    local cpu = b.cpu == nil and 5 or b.cpu
    wall = b.wall == nil and wall or b.wall
    if cpu or wall then
      self.run_budget = { cpu = cpu, wall = wall, label = "collector " .. cfg.name .. ": run" }
    end
  end
  if cfg.breaker ~= false then
    local bopts = merge(type(cfg.breaker) == "table" and cfg.breaker or {}, nil)
    bopts.name = bopts.name or cfg.name
    self.breaker = breaker.new(bopts)
  end
  if cfg.limiter ~= false then
    local lopts = merge(type(cfg.limiter) == "table" and cfg.limiter or {}, nil)
    lopts.name = lopts.name or cfg.name
    if lopts.shared == true then
      -- the quota is shared through the configuration's Redis connection
      if not context.redis then
        error("collector '" .. cfg.name .. "': limiter.shared = true needs redis = \"redis://...\" "
          .. "in the configuration", 2)
      end
      lopts.shared = context.redis
    end
    self.limiter = require("sluice.limiter").new(lopts)
  end
  if cfg.retry ~= false then
    self.retry = retry.new(type(cfg.retry) == "table" and cfg.retry or {})
  end
  if self.store and cfg.tables then
    for tname, def in pairs(cfg.tables) do
      local d = merge(def, { name = tname })
      local ok, err = self.store:define(d)
      if not ok then
        error("collector '" .. self.name .. "': table '" .. tname .. "': " .. tostring(err), 2)
      end
    end
  end
  -- A limiter's pauses and bans survive restarts too.
  if self.store and self.limiter then
    local snap = self.store:load_state("limiter", self.limiter:stats().limiter_name)
    if snap then
      local ok, err = pcall(self.limiter.restore, self.limiter, snap)
      if not ok then
        self.log.warning("ignoring saved limiter state", { error = tostring(err) })
      end
    end
  end
  -- An open breaker survives restarts: restore its saved state.
  if self.store and self.breaker then
    local snap = self.store:load_state("breaker", self.breaker:name())
    if snap then
      local ok, err = pcall(self.breaker.restore, self.breaker, snap)
      if not ok then
        self.log.warning("ignoring saved breaker state", { error = tostring(err) })
      end
    end
    -- the callback holds the store, not the instance: the breaker's
    -- callback list is weak-keyed, and LuaJIT has no ephemerons, so a
    -- callback reaching its breaker through the instance would keep both
    -- alive for ever after a reload
    local db = self.store
    self.breaker:on_change(function(cb)
      db:save_state("breaker", cb:name(), cb:snapshot())
    end)
  end
  return self
end

-- --- the request pipeline ------------------------------------------------

-- What the pipeline (sluice.collector.request) reports, counted here.
local function tally(self, event, latency)
  local st = self.stats_
  if event == "refused" then
    self.refusals_ = self.refusals_ + 1 -- run_once tells a skipped run by it
  elseif event == "sent" then
    st.total_requests = st.total_requests + 1
  elseif event == "answered" then
    st.latency_total = (st.latency_total or 0) + latency
    st.latency_count = (st.latency_count or 0) + 1
  elseif event == "succeeded" then
    st.successful_requests = st.successful_requests + 1
  elseif event == "failed" then
    st.failed_requests = st.failed_requests + 1
  end
end

--- self:request{method, path, query, headers, body | json, endpoint, cost,
--   pools, timeout, redirects} -> data, res | nil, err, kind, res
-- A path may be an absolute URL; on another origin than base_url's it gets
-- neither auth nor the configured headers (only opts.headers). Redirects
-- follow http.request's rules (default: same origin only, 5 hops).
function Collector:request(opts)
  if type(opts) ~= "table" or type(opts.path) ~= "string" then
    error("collector:request: bad argument #1 (table with a path expected)", 2)
  end
  return request.run(self, opts, tally)
end

function Collector:get(path, opts)
  return self:request(merge(opts, { path = path, method = "GET" }))
end

function Collector:post(path, opts)
  return self:request(merge(opts, { path = path, method = "POST" }))
end

-- --- running ------------------------------------------------------------

local function store_rows(self, result)
  if result == nil then return 0 end
  if type(result) ~= "table" then
    error("collect must return a table of rows (or {table = rows}), got " .. type(result))
  end
  local tables = self.config.tables or {}
  local per_table
  if result[1] ~= nil or next(result) == nil then
    local only = next(tables)
    if not only or next(tables, only) ~= nil then
      if next(result) == nil then return 0 end
      error("collect returned a list of rows but the collector declares "
        .. (only and "several tables" or "no table") .. "; return {table_name = rows}")
    end
    per_table = { [only] = result }
  else
    per_table = result
  end
  local count = 0
  for tname, rows in pairs(per_table) do
    if not tables[tname] then
      error("collect returned rows for undeclared table '" .. tostring(tname) .. "'", 0)
    end
    if not self.store then count = count + #rows end
    if self.store then
      local ins, upd, same, rej, accepted = self.store:upsert_accepted(tname, rows)
      if not ins then
        error("storing rows in '" .. tname .. "' failed: " .. tostring(upd), 0)
      end
      count = count + ins + upd + same -- what was stored; rejects are not data points
      self.log.debug("stored", { table = tname, inserted = ins, updated = upd,
        unchanged = same, rejected = rej })
      -- sinks see what was committed, in commit order; a sink that fails
      -- says so itself and never fails the collection
      for _, sink in ipairs(self.sinks or {}) do
        sink:publish(tname, accepted)
      end
    end
  end
  return count
end

-- collect(self) in a task of its own under the run budget, waited for;
-- a run over budget fails with the budget's error. Returns what xpcall does.
local function collect_within_budget(self)
  if not self.run_budget then
    return xpcall(self.spec.collect, debug.traceback, self)
  end
  local run = sluice.budget(sluice.spawn(xpcall, self.spec.collect, debug.traceback, self),
    self.run_budget)
  local done, ok, result = sluice.wait(run)
  if not done then return false, ok end
  return ok, result
end

--- self:run_once() -> true, rows | false, err. One collection: collect
-- runs in a task of its own under the run budget, which the calling task
-- waits for; errors in collect are caught, logged and counted. At most one
-- run of a collector is in flight (across a reload too): a call made while
-- one is going waits for it and returns its result, with a third value
-- "joined", instead of starting another.
function Collector:run_once()
  if self.lease_held == false then
    -- another instance holds this collector's lease: standing by is not
    -- being overdue (health)
    self.stats_.standby_at = sluice.now()
    return true, 0
  end
  local g = self.slot_
  if g:busy() then
    local ok, a, b = g:wait()
    if ok then return a, b, "joined" end
    return false, a
  end
  g:take()
  local st = self.stats_
  local t0 = sluice.now()
  st.last_collection = sluice.time()
  self.in_flight = (self.in_flight or 0) + 1
  local refusals = self.refusals_
  local ok, result = collect_within_budget(self)
  local count
  if ok then
    ok, count = pcall(store_rows, self, result)
    if not ok then result = count end
  end
  self.in_flight = self.in_flight - 1
  st.total_runtime = st.total_runtime + (sluice.now() - t0)
  if ok then
    st.last_success = sluice.time()
    st.collections_completed = st.collections_completed + 1
    st.data_points_collected = st.data_points_collected + count
    st.consecutive_failures = 0
    self.log.info("collection done", { rows = count, seconds = sluice.now() - t0 })
    g:release(true, count)
    return true, count
  end
  local msg = tostring(result)
  if self.refusals_ > refusals and self.breaker and self.breaker:state() == "open" then
    -- The run failed because the open breaker refused its requests (the
    -- assert(self:get(...)) idiom): a skipped run, not a new failure. One
    -- warning per opening, no traceback, so the log stays readable.
    st.collections_skipped = st.collections_skipped + 1
    local opened = self.breaker:status().last_state_change
    if self.skip_warned_ ~= opened then
      self.skip_warned_ = opened
      self.log.warning("collection skipped: circuit breaker open", {
        breaker = self.breaker:name(), next_attempt = iso(self.breaker:metrics().open_until),
        error = msg:match("^[^\n]*") })
    end
    g:release(false, "skipped: circuit breaker " .. self.breaker:name() .. " is open")
    return false, "skipped: circuit breaker " .. self.breaker:name() .. " is open"
  end
  st.last_error = msg:match("^[^\n]*")
  st.last_error_time = sluice.time()
  st.collections_failed = st.collections_failed + 1
  st.consecutive_failures = st.consecutive_failures + 1
  self.log.error("collection failed", { error = st.last_error, traceback = msg })
  g:release(false, st.last_error)
  return false, st.last_error
end

local function next_period(self)
  local j = self.config.jitter or 0
  if j <= 0 then return self.interval end
  return self.interval * (1 + j * (2 * math.random() - 1))
end

-- One scheduled run, as a timer's task; schedules the next. A run still
-- in flight (a manual one, or the replaced instance's after a reload) is
-- waited for, never overlapped; a run that overran its period delays the
-- next one to its end, and missed ticks are not replayed.
local function tick(premature, self)
  if premature or not self.running then return end
  self.timer = nil
  local due = self.next_due_
  -- the next tick's due time is set before running, so that an instance
  -- taking over at a reload continues this schedule
  self.next_due_ = due + next_period(self)
  while self.slot_:busy() do
    if not self.slot_:wait() or not self.running then return end
  end
  if not self.running then return end
  self:run_once()
  if not self.running then return end
  local now = sluice.now()
  if self.next_due_ < now then self.next_due_ = now end
  self.timer = sluice.after(self.next_due_ - now, tick, self)
end

--- self:start([opts]): init, then run_once every interval (with jitter)
-- until stop() or shutdown. Runs never overlap. opts.first_delay: seconds
-- until the first run (0: at once); opts.after: the instance this one
-- replaces (a reload), whose schedule it continues: its first run is the
-- old instance's next one, and waits for a run of the old one still in
-- flight.
function Collector:start(opts)
  if self.running then return self end
  opts = opts or {}
  if type(opts) ~= "table" then
    error("collector:start: bad argument #1 (table of options expected, got " .. type(opts) .. ")", 2)
  end
  for k in pairs(opts) do
    if k ~= "first_delay" and k ~= "after" then
      error("collector:start: unknown option '" .. tostring(k) .. "'", 2)
    end
  end
  local delay = opts.first_delay or 0
  if type(delay) ~= "number" or not (delay >= 0 and delay < math.huge) then
    error("collector:start: option 'first_delay' must be a finite number >= 0", 2)
  end
  local old = opts.after
  if old ~= nil then
    if getmetatable(old) ~= instance_mt or old.name ~= self.name then
      error("collector:start: option 'after' must be an instance of the same collector", 2)
    end
    self.slot_ = old.slot_
    if old.next_due_ then delay = math.max(0, old.next_due_ - sluice.now()) end
  end
  self.running = true
  self.stats_.started_at = sluice.time()
  -- the overdue clock of health() runs across a reload
  self.started_mono_ = old and old.started_mono_ or sluice.now()
  if self.spec.init then
    local ok, err = xpcall(self.spec.init, debug.traceback, self)
    if not ok then
      self.running = false
      error("collector '" .. self.name .. "': init failed: " .. tostring(err), 0)
    end
  end
  self.next_due_ = sluice.now() + delay
  self.first_due_ = self.next_due_
  if delay <= 0 then
    self.first_run = sluice.spawn(tick, false, self)
  else
    self.timer = sluice.after(delay, tick, self)
  end
  self.log.info("collector started", { interval = self.interval, first_run_in = delay })
  return self
end

--- self:drain(): waits (in a task) until no run of this collector is in
-- progress, the replaced instance's included; shutdown's deadline bounds it.
function Collector:drain()
  local g = self.slot_
  while g:busy() and not g:dead() do sluice.sleep(0.05) end
end

--- self:stop(): no new runs; a run in progress finishes. Saves the breaker.
function Collector:stop()
  if not self.running then return self end
  self.running = false
  -- dropping the timer also breaks the cycle timer -> callback arguments
  -- -> instance -> timer that kept stopped instances alive
  if self.timer then self.timer:cancel() end
  self.timer = nil
  if self.spec.close then
    local ok, err = xpcall(self.spec.close, debug.traceback, self)
    if not ok then self.log.error("close failed", { error = tostring(err) }) end
  end
  if self.store and self.breaker then
    self.store:save_state("breaker", self.breaker:name(), self.breaker:snapshot())
  end
  if self.store and self.limiter then
    self.store:save_state("limiter", self.limiter:stats().limiter_name, self.limiter:snapshot())
  end
  self.log.info("collector stopped")
  return self
end

local STALL_FACTOR, OVERDUE_FACTOR = 2, 3

local function secs(x) return string.format("%.0f s", x) end

--- self:health() -> status, reason. status: "disabled" | "circuit_open"
-- | "failed" | "degraded" | "healthy"; reason says why when not healthy.
-- disabled: enabled = false. circuit_open: the breaker is open. failed:
-- the last 3 collections (or more) failed in a row, or a started
-- collector has had no successful collection for 3 × max(interval,
-- timeout) (since its last success, its start, or its last scheduled
-- run skipped because another instance holds its lease). degraded: the last
-- collection failed, a run has been in flight for more than 2 ×
-- max(interval, timeout), or fewer than 90% of requests succeeded (with
-- at least 10 made). healthy: otherwise. (timeout defaults to 30 s.)
function Collector:health()
  local st = self.stats_
  if not self.enabled then return "disabled", "disabled in the configuration" end
  if self.breaker and self.breaker:state() == "open" then
    return "circuit_open", "circuit breaker " .. self.breaker:name() .. " is open"
  end
  if st.consecutive_failures >= 3 then
    return "failed", st.consecutive_failures .. " collections failed in a row: " .. tostring(st.last_error)
  end
  local span = math.max(self.interval, self.config.timeout or 30)
  if self.running and self.started_mono_ then
    local now = sluice.now()
    local since = self.started_mono_
    local ok_at = st.last_success and (now - (sluice.time() - st.last_success))
    if ok_at and ok_at > since then since = ok_at end
    if st.standby_at and st.standby_at > since then since = st.standby_at end
    if now - since > OVERDUE_FACTOR * span then
      return "failed", "no successful collection for " .. secs(now - since)
        .. " (over " .. OVERDUE_FACTOR .. " × " .. secs(span) .. ")"
    end
  end
  if st.consecutive_failures > 0 then
    return "degraded", "the last collection failed: " .. tostring(st.last_error)
  end
  local started = self.slot_:started()
  if started and sluice.now() - started > STALL_FACTOR * span then
    return "degraded", "a run has been in flight for " .. secs(sluice.now() - started)
      .. " (over " .. STALL_FACTOR .. " × " .. secs(span) .. ")"
  end
  if st.total_requests >= 10 and st.successful_requests / st.total_requests < 0.9 then
    return "degraded", string.format("%d of %d requests failed", st.failed_requests, st.total_requests)
  end
  return "healthy"
end

--- self:stats() -> the reference statistics shape (timestamps ISO 8601).
function Collector:stats()
  local st = self.stats_
  local status, reason = self:health()
  local g = self.slot_
  local started = g:started()
  return {
    collector_name = self.name,
    status = status,
    status_reason = reason,
    enabled = self.enabled,
    run_in_flight_seconds = started and sluice.now() - started or nil,
    run_waiters = g:busy() and g:waiting() or nil, -- calls waiting for (joining) the run in flight
    started_at = iso(st.started_at),
    last_collection = iso(st.last_collection),
    last_success = iso(st.last_success),
    last_error = st.last_error,
    total_requests = st.total_requests,
    successful_requests = st.successful_requests,
    failed_requests = st.failed_requests,
    data_points_collected = st.data_points_collected,
    total_runtime = st.total_runtime,
    collections_completed = st.collections_completed,
    collections_skipped = st.collections_skipped,
  }
end

--- self:health_check() -> the reference health_check() shape.
function Collector:health_check()
  local status = self:health()
  return {
    healthy = status == "healthy",
    status = status,
    collector_name = self.name,
    is_running = self.running,
    circuit_breaker = self.breaker and self.breaker:status() or nil,
    rate_limiter = self.limiter and self.limiter:stats() or nil,
    statistics = self:stats(),
  }
end

_M.Collector = Collector
_M.reveal = secret.reveal
_M.is_secret = secret.is_secret
_M.json_null = cjson.null
return _M
