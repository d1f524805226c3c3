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
--     partitions = function(self) return self.options.symbols end, -- backfill's
--     collect = function(self) return { klines = rows } end,
--   }
--
-- Instead of collect, datasets: several schedules in one collector, each
-- with its own interval, run slot, statistics and health, all sharing the
-- collector's limiter, breaker, retry, store, sinks, run guard and
-- request pipeline (collect and datasets together are refused):
--
--     datasets = {
--       tickers = { interval = 5, table = "tickers", collect = function(self) ... end },
--       funding = { interval = 60, jitter = 0.1, collect = function(self) ... end },
--     },
--
-- Instead of one breaker and limiter, targets: a collector that reads
-- several independent services of the same API (six MEV-Boost relays)
-- gives each its own, named "<collector>.<target>" and made from the
-- collector's breaker and limiter settings, so that one service down opens
-- its breaker alone. Every request names its target:
--
--     targets = function(self) return self.options.relays end,
--     ... self:get(url, { target = "flashbots" }) ...
--
-- They are listed by breakers() and limiters() (/circuit-breaker-status,
-- /limiters, /metrics) under those names and in stats().targets (/status);
-- their state is saved and restored as the collector's own would be; one
-- open breaker makes the collector degraded, not circuit_open.
-- self:targets() and self:target(name) read them.
--
-- The request pipeline, self:get(path, opts) / self:post / self:request:
-- limiter wait -> breaker permit -> HTTP -> classify -> limiter observe ->
-- breaker record -> retry; its verdicts (and a collector's classify) are
-- described in sluice.collector.request, which implements it.
--
-- The instance is closed: other modules use its methods, never write its
-- fields. It owns its state (counters, run slot, sinks, run guard,
-- schedule, and each dataset's run unit); name, spec, config, options,
-- store, log, breaker, limiter, retry, interval (with datasets: the
-- smallest enabled dataset's), enabled and running are for reading. What others hook
-- in goes through methods: add_sink(sink) (where committed rows go too),
-- set_run_guard(enter, leave) (whether a run may start; leases), adopt(old)
-- (a reload's hand-over of counters and run slot); counters() and stats()
-- are the statistics.
--
-- Calls that yield, so must run in a task: get, post, request; run_once;
-- store_rows when a sink yields (the stream sink does); drain; and a run
-- guard's enter and leave when they do. start() calls the spec's init in
-- the calling task and schedules the runs on sluice.collector.clock,
-- whose worker tasks make them; stop() calls its close, which must not
-- yield. define, new, health, stats,
-- counters, health_check, add_sink, set_run_guard, adopt, datasets, due,
-- disable_dataset and partitions do not yield.
local sluice = require "sluice"
local log = require "sluice.log"
local breaker = require "sluice.breaker"
local retry = require "sluice.retry"
local limiter = require "sluice.limiter"
local options = require "sluice.options"
local cjson = require "cjson.safe"
local spec_mod = require "sluice.collector.spec"
local request = require "sluice.collector.request"
local secret = require "sluice.collector.secret"
local slot = require "sluice.collector.slot"
local rows = require "sluice.collector.rows"
local persist = require "sluice.collector.persist"
local cache = require "sluice.collector.cache"
local report = require "sluice.collector.report"
local targets = require "sluice.collector.targets"
local stream = require "sluice.collector.stream"
local runs = require "sluice.collector.runs"

local bit = require "bit"

local bxor, lshift, tobit, byte = bit.bxor, bit.lshift, bit.tobit, string.byte

local _M = {}
local Collector = {}
-- An instance's logger (log.with{collector = name}: nine closures, about
-- 1.4 KB) is made on first use: a collector that logs nothing of its own
-- (the framework's "collection done" goes through the module's logger)
-- never has one. Methods are looked up first.
local instance_mt = {
  __index = function(self, k)
    local m = Collector[k]
    if m ~= nil or k ~= "log" then return m end
    local l = log.with({ collector = rawget(self, "name") })
    rawset(self, "log", l)
    return l
  end,
}

--- env(name [, default]) -> a secret resolved from the environment when
-- used. It prints as "<secret>" so it cannot leak into logs or status.
_M.env = secret.env

-- The sinks of an instance that has none: shared, never written (add_sink
-- gives an instance a list of its own).
local NO_SINKS = setmetatable({}, { __newindex = function() error("NO_SINKS is read-only", 2) end })

-- --- the spec -----------------------------------------------------------

-- The specs define() has validated (weak keys: a spec goes with its file).
local specs = setmetatable({}, { __mode = "k" })

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
  if spec.collect and spec.datasets then
    error("sluice.collector.define: a collector has collect or datasets, not both "
      .. "(make collect a dataset of its own)", 2)
  end
  if not spec.collect and not spec.datasets and not spec.backfill and not spec.stream then
    error("sluice.collector.define: a collector needs collect, datasets or stream (and/or backfill)", 2)
  end
  spec_mod.no_jit(spec)
  specs[spec] = true
  return spec
end

--- phase(name, interval) -> seconds in [0, interval): the offset within
-- each period at which a collector of that name runs when started with
-- phase = true (start): FNV-1a (32 bits) of the name as a fraction of
-- 2^32, times interval. The same name always gets the same phase, in
-- every process; ten thousand names spread evenly over the period (by
-- their hash), so that collectors of the same interval are not all due in
-- the same millisecond. A dataset's name here is "collector/dataset".
function _M.phase(name, interval)
  if type(name) ~= "string" then
    error("sluice.collector.phase: bad argument #1 (string expected, got " .. type(name) .. ")", 2)
  end
  if type(interval) ~= "number" or not (interval > 0) or interval == math.huge then
    error("sluice.collector.phase: bad argument #2 (finite number > 0 expected, got "
      .. tostring(interval) .. ")", 2)
  end
  local h = 2166136261
  for i = 1, #name do
    h = bxor(h, byte(name, i))
    -- h * 16777619 mod 2^32, kept exact in doubles: 2^24 * h + 403 * h
    h = tobit(lshift(h, 24) + h * 403)
  end
  if h < 0 then h = h + 4294967296 end
  return h / 4294967296 * interval
end

--- is_spec(v) -> whether v is a spec collector.define returned.
function _M.is_spec(v)
  return specs[v] == true
end

-- --- the instance (its run units: sluice.collector.runs) -------------------

local merge = options.merge

-- The table definitions (a spec's, by identity) each store has taken from
-- collector.new, and under which name: the thousand instances of one spec
-- define its tables once (store:define compares the whole schema, about
-- 100 us, each time). Weak both ways: it goes with the store and the spec.
-- A spec with migrate defines every time (its migration may change them).
local defined = setmetatable({}, { __mode = "k" })

local function defined_in(store)
  local d = defined[store]
  if not d then
    d = setmetatable({}, { __mode = "k" })
    defined[store] = d
  end
  return d
end

--- new(spec, overrides, context) -> instance
-- overrides: the configuration entry (name, base_url, interval, auth,
-- limiter, breaker, retry, and the collector's own options); context:
-- {store = db, redis = client, cache = store, upstreams = registry} (all
-- optional; without a store, collect's rows are counted but not stored;
-- redis is the configuration's sluice.redis client, which `limiter = {
-- shared = true }` shares its quota through; cache, the process' response
-- cache (sluice.collector.cache; without it the instance has one of its
-- own); upstreams, the registry of limiters and breakers shared by
-- upstream name (sluice.collector.upstreams)).
function _M.new(spec, overrides, context)
  if not specs[spec] then
    error("sluice.collector.new: bad argument #1 (a spec from collector.define expected)", 2)
  end
  context = context or {}
  local cfg, own = spec_mod.configure(spec, overrides or {}, 3)
  local self = setmetatable({
    name = cfg.name,
    spec = spec,
    config = cfg,
    options = own,
    store = context.store,
    -- the process' response cache (self:get(path, {cache = seconds})), or one of its own
    cache = context.cache or cache.new(),
    base_url = cfg.base_url,
    interval = cfg.interval or 60,
    running = false,
    enabled = cfg.enabled ~= false,
    -- one run in flight per collector: shared with the instances that
    -- replace this one at a reload (adopt)
    slot_ = slot.new(),
    sinks_ = NO_SINKS,  -- add_sink (a list of its own from the first)
    run_guard_ = nil,   -- set_run_guard: {enter, leave}
    -- the counters (counters()), shared with the instances that replace
    -- this one at a reload (adopt)
    stats_ = {
      started_at = nil, last_collection = nil, last_success = nil, last_error = nil,
      total_requests = 0, successful_requests = 0, failed_requests = 0,
      data_points_collected = 0, total_runtime = 0, collections_completed = 0,
      consecutive_failures = 0, collections_failed = 0, collections_skipped = 0,
    },
    refusals_ = 0, -- requests the breaker refused, ever
  }, instance_mt)
  self.run_budget = spec_mod.run_budget(cfg, self.interval)
  -- the run units (see "datasets and their runs" above): the instance,
  -- or its datasets
  self.collect_fn_, self.jitter_, self.first_delay_ = spec.collect, cfg.jitter, 0
  if cfg.datasets then
    self.datasets_, self.units_ = runs.dataset_units(self, cfg)
    -- the most frequent schedule: start-up spreads first runs within it
    local min
    for _, u in ipairs(self.units_) do
      if u.enabled and (not min or u.interval < min) then min = u.interval end
    end
    self.interval = min or self.interval
  else
    self.units_ = { self }
  end
  local function new_breaker(bopts)
    return breaker.new(bopts)
  end
  local function new_limiter(lopts)
    if lopts.shared == true then
      -- the quota is shared through the configuration's Redis connection
      if not context.redis then
        error("collector '" .. cfg.name .. "': limiter.shared = true needs redis = \"redis://...\" "
          .. "in the configuration", 3)
      end
      lopts = merge(lopts, { shared = context.redis })
    end
    return limiter.new(lopts)
  end
  local fresh -- persist.restore: the objects this instance made (all of its own)
  if cfg.targets then
    if cfg.upstream then
      error("collector '" .. cfg.name .. "': targets and upstream do not go together "
        .. "(each target has a breaker and a limiter of its own)", 2)
    end
    self.targets_, self.target_names_ = targets.make(self, cfg, context, new_breaker, new_limiter)
  elseif cfg.upstream and context.upstreams then
    -- one limiter and breaker per upstream (sluice.collector.upstreams)
    self.breaker, self.limiter, fresh = context.upstreams:take(cfg, new_breaker, new_limiter)
  else
    local up = cfg.upstream -- alone, nothing to share with: its own, named after the upstream
    if cfg.breaker ~= false then
      local bopts = merge(type(cfg.breaker) == "table" and cfg.breaker or {}, nil)
      bopts.name = up or bopts.name or cfg.name
      if context.upstreams then context.upstreams:claim(bopts.name, cfg.name) end
      self.breaker = new_breaker(bopts)
    end
    if cfg.limiter ~= false then
      local lopts = merge(type(cfg.limiter) == "table" and cfg.limiter or {}, nil)
      lopts.name = up or lopts.name or cfg.name
      if context.upstreams then context.upstreams:claim(lopts.name, cfg.name) end
      self.limiter = new_limiter(lopts)
    end
  end
  if cfg.retry ~= false then
    local ropts = merge(type(cfg.retry) == "table" and cfg.retry or {}, nil)
    ropts.name = ropts.name or cfg.name
    self.retry = retry.new(ropts)
  end
  if self.store and spec.migrate then
    -- an older layout of the collector's tables, brought to the current one
    -- before they are defined (a changed key cannot be reconciled)
    local ok, err = pcall(spec.migrate, self.store, self)
    if not ok then error("collector '" .. self.name .. "': migration failed: " .. tostring(err), 2) end
  end
  if self.store and cfg.tables then
    local done = not spec.migrate and defined_in(self.store)
    for tname, def in pairs(cfg.tables) do
      if not (done and done[def] == tname) then
        local ok, err = self.store:define(merge(def, { name = tname }))
        if not ok then
          error("collector '" .. self.name .. "': table '" .. tname .. "': " .. tostring(err), 2)
        end
        if done then done[def] = tname end
      end
    end
  end
  -- an open breaker, a limiter's pause or a ban survive restarts
  persist.restore(self, fresh)
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
--   pools, timeout, redirects, max_body} -> data, res | nil, err, kind, res
-- A path may be an absolute URL; on another origin than base_url's it gets
-- neither auth nor the configured headers (only opts.headers). Redirects
-- follow http.request's rules (default: same origin only, 5 hops).
function Collector:request(opts)
  if type(opts) ~= "table" or type(opts.path) ~= "string" then
    error("collector:request: bad argument #1 (table with a path expected)", 2)
  end
  return request.run(self, opts, tally)
end

-- opts with path and method set, as a table of its own (the caller's is
-- not written).
local function with_path(opts, path, method)
  local o = { path = path, method = method }
  if opts then
    for k, v in pairs(opts) do
      if k ~= "path" and k ~= "method" then o[k] = v end
    end
  end
  return o
end

function Collector:get(path, opts)
  return self:request(with_path(opts, path, "GET"))
end

function Collector:post(path, opts)
  return self:request(with_path(opts, path, "POST"))
end

-- --- running ------------------------------------------------------------

--- self:targets() -> the names of the collector's targets (its targets
-- option), in the order given, or nil for a collector without.
function Collector:targets()
  if not self.target_names_ then return nil end
  local out = {}
  for i, t in ipairs(self.target_names_) do out[i] = t end
  return out
end

--- self:target(name) -> breaker | nil, limiter | nil: target name's (nil
-- where the collector's breaker or limiter option is false). Raises for a
-- target the collector does not have.
function Collector:target(name)
  local g = self.targets_ and self.targets_[name]
  if not g then
    error("collector:target: bad argument #1 (collector '" .. self.name .. "' has no target "
      .. options.value(name) .. ")", 2)
  end
  return g.breaker, g.limiter
end

--- self:store_rows(result [, opts]) -> count
-- Stores what collect (or backfill) returned, as sluice.collector.rows
-- says: nil, a list of rows (the collector's one table) or {table_name =
-- rows}, validated, upserted and handed to the sinks; raises when it
-- cannot. opts.what names the function in errors ("collect");
-- opts.within(count) runs in one transaction with the upserts (a backfill
-- window and its coverage record). Yields when a sink does.
local STORE_ROWS_OPTIONS = { what = "string", within = "function" }

function Collector:store_rows(result, opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("collector:store_rows: bad argument #2 (table of options expected, got " .. type(opts) .. ")", 2)
  end
  options.check("collector:store_rows", opts, STORE_ROWS_OPTIONS)
  local within = opts and opts.within
  if within and not self.store then error("collector:store_rows: option 'within' needs a store", 2) end
  return rows.store(self, result, self.sinks_, opts and opts.what or "collect", within)
end

--- self:add_sink(sink): the rows this collector commits (its collections'
-- and its backfills') go to sink:publish(table_name, rows) too.
function Collector:add_sink(sink)
  if type(sink) ~= "table" or type(sink.publish) ~= "function" then
    error("collector:add_sink: bad argument #1 (a sink with a publish method expected)", 2)
  end
  if self.sinks_ == NO_SINKS then self.sinks_ = {} end
  self.sinks_[#self.sinks_ + 1] = sink
  return self
end

--- self:set_run_guard(enter, leave): a hook around every run_once (a
-- scheduled run, a manual one, one that joins the run in flight): enter(c)
-- is called first, and unless it returns true the collector stands by
-- (run_once returns true, 0 without running, and health does not count
-- the collector overdue from then, as after a success); leave(c) is
-- called once after each
-- enter, when run_once returns, whatever its outcome. Either may yield.
-- Leases use it (sluice.shared). One guard at a time: set_run_guard()
-- removes it; a run in flight keeps the guard it entered.
function Collector:set_run_guard(enter, leave)
  if enter == nil and leave == nil then
    self.run_guard_ = nil
    return self
  end
  if type(enter) ~= "function" or type(leave) ~= "function" then
    error("collector:set_run_guard: bad arguments (two functions, enter and leave, expected)", 2)
  end
  self.run_guard_ = { enter = enter, leave = leave }
  return self
end

-- The names of self's datasets, for messages: "(a, b)".
local function names_of(self)
  local out = {}
  for _, u in ipairs(self.units_) do out[#out + 1] = u.dataset end
  return "(" .. table.concat(out, ", ") .. ")"
end

-- The unit of self's dataset named dataset; raises (blaming the caller of
-- fname's caller) when there is none.
local function unit_named(self, dataset, fname)
  local u = self.datasets_ and type(dataset) == "string" and self.datasets_[dataset]
  if u then return u end
  if not self.datasets_ then
    error(fname .. ": bad argument #1 (collector '" .. self.name .. "' has no datasets)", 3)
  end
  error(fname .. ": bad argument #1 (no dataset " .. options.value(dataset) .. " in collector '"
    .. self.name .. "' " .. names_of(self) .. ")", 3)
end

-- old's unit for u, a unit of self (a reload's hand-over): the instance
-- for the instance, the dataset of the same name for a dataset.
local function unit_of(self, old, u)
  if u == self then return not old.datasets_ and old or nil end
  return old.datasets_ and old.datasets_[u.dataset]
end

--- self:run_once([dataset]) -> true, rows | false, err. One collection:
-- collect runs in a task of its own under the run budget, which the
-- calling task waits for; errors in collect are caught, logged and
-- counted. At most one run of a collector (of each dataset) is in flight
-- (across a reload too): a call made while one is going waits for it and
-- returns its result, with a third value "joined", instead of starting
-- another. With a run guard (set_run_guard), the guard decides first
-- whether the run starts. A collector with datasets: run_once(name) runs
-- that dataset (enabled or not); run_once() runs every enabled dataset at
-- once and returns the rows of all, or false and each failure as
-- "dataset NAME: error", joined by "; ". An unknown dataset raises.
function Collector:run_once(dataset)
  if dataset ~= nil then return runs.guarded(self, unit_named(self, dataset, "collector:run_once")) end
  if not self.datasets_ then return runs.guarded(self, self) end
  return runs.run_all(self)
end

--- self:datasets() -> the names of the collector's datasets, sorted, or
-- nil for a collector with collect.
function Collector:datasets()
  if not self.datasets_ then return nil end
  local out = {}
  for i, u in ipairs(self.units_) do out[i] = u.dataset end
  return out
end

local START_OPTIONS = {
  first_delay = { finite = true, min = 0 },
  phase = "boolean",
  after = {
    type = "table", what = "an instance of the same collector",
    check = function(v) return getmetatable(v) == instance_mt end,
  },
}

--- self:start([opts]): init, then run_once every interval (with jitter)
-- until stop() or shutdown; a collector with datasets runs each enabled
-- dataset on its own schedule (its interval, jitter, first_delay), the
-- datasets concurrently. Runs of one collector (one dataset) never
-- overlap. opts.first_delay: seconds until the first run (0: at once; a
-- dataset's first_delay comes on top); opts.phase: true to run at a
-- fixed offset within each period, the same for the same name in every
-- process (collector.phase(name, interval)): the first run is at the
-- first wall-clock time t, first_delay or more from now, where t mod
-- interval is the phase, the next ones an interval apart (jitter, if
-- any, still moves each period), and a run that overran its period is
-- followed by the next instant of its phase instead of at once;
-- opts.after: the instance this one
-- replaces (a reload), whose schedule it continues: its first run (each
-- dataset's, for the datasets both have) is the old instance's next one,
-- and waits for a run of the old one still in flight.
function Collector:start(opts)
  if self.running then return self end
  opts = opts or {}
  if type(opts) ~= "table" then
    error("collector:start: bad argument #1 (table of options expected, got " .. type(opts) .. ")", 2)
  end
  options.check("collector:start", opts, START_OPTIONS)
  local delay = opts.first_delay or 0
  local old = opts.after
  if old ~= nil then
    -- by hand: "the same" is about self, which a schema does not see
    if old.name ~= self.name then
      error("collector:start: option 'after' must be an instance of the same collector, got "
        .. "collector '" .. old.name .. "'", 2)
    end
  end
  local now, wall, delays = sluice.now(), sluice.time(), {}
  for _, u in ipairs(self.units_) do
    local ou = old and unit_of(self, old, u)
    delays[u] = delay + (u.first_delay_ or 0)
    u.phase_ = opts.phase and _M.phase(u == self and self.name or (self.name .. "/" .. u.dataset),
      u.interval) or nil
    if u.phase_ then delays[u] = runs.phase_wait(u, wall, delays[u]) end
    if ou then
      u.slot_ = ou.slot_
      if ou.next_due_ then delays[u] = math.max(0, ou.next_due_ - now) end
    end
    -- the overdue clock of health() runs across a reload
    u.started_mono_ = ou and ou.started_mono_ or now
  end
  self.running = true
  self.stats_.started_at = sluice.time()
  if self.spec.init then
    local ok, err = xpcall(self.spec.init, debug.traceback, self)
    if not ok then
      self.running = false
      error("collector '" .. self.name .. "': init failed: " .. tostring(err), 0)
    end
  end
  -- a stream alone has no scheduled runs (sluice.collector.stream)
  local stream_only = self.spec.stream and not self.collect_fn_ and not self.datasets_
  for _, u in ipairs(self.units_) do
    if not stream_only and (u == self or u.enabled) then runs.schedule(self, u, delays[u]) end
  end
  if self.spec.stream then
    stream.start(self, function(n)
      local st = self.stats_
      st.data_points_collected, st.last_success = st.data_points_collected + n, sluice.time()
    end)
  end
  log.info("collector started", { collector = self.name, interval = self.interval, first_run_in = delay,
    datasets = self.datasets_ and table.concat(self:datasets(), ",") or nil })
  return self
end

--- self:disable_dataset(name, reason): the dataset stops for the life of
-- this instance (a node lacks the method it calls): no next scheduled run
-- (one in flight ends normally), enabled = false with disabled_reason in
-- counters() and stats(), health "disabled" with reason, out of the
-- collector's health; one warning. A reload's new instance has it enabled
-- again. Disabling a disabled dataset does nothing. run_once(name) still
-- runs it. Does not yield.
function Collector:disable_dataset(dataset, reason)
  local u = unit_named(self, dataset, "collector:disable_dataset")
  if type(reason) ~= "string" or reason == "" then
    error("collector:disable_dataset: bad argument #2 (a reason, a non-empty string, expected)", 2)
  end
  if not u.enabled then return self end
  u.enabled, u.disabled_reason = false, reason
  runs.unschedule(u)
  u.log.warning("dataset disabled", { reason = reason })
  return self
end

--- self:runs_in_flight() -> how many of its runs are in progress now: 0 or
-- 1 for a collector, up to one per dataset for one with datasets.
function Collector:runs_in_flight()
  local n = 0
  for _, u in ipairs(self.units_) do
    if u.slot_:busy() then n = n + 1 end
  end
  return n
end

--- self:due([dataset]) -> the time (sluice.now() seconds) the latest
-- scheduled run of the collector (of that dataset) was due, its jitter
-- and any delay from an overrun before it included, or nil before the
-- first; run_once by hand does not change it. Read while a run is in
-- flight (from a sink's publish), it is that run's: the schedule lag of
-- its rows is sluice.now() - due (tests/bench/exchanges.lua measures it).
function Collector:due(dataset)
  local u = dataset ~= nil and unit_named(self, dataset, "collector:due") or self
  if u == self and self.datasets_ then
    error("collector:due: bad argument #1 (collector '" .. self.name .. "' has datasets: name one "
      .. names_of(self) .. ")", 2)
  end
  return u.due_
end

--- self:drain(): waits (in a task) until no run of this collector (of
-- any of its datasets) is in progress, the replaced instance's included;
-- shutdown's deadline bounds it.
function Collector:drain()
  stream.drain(self)
  for _, u in ipairs(self.units_) do
    local g = u.slot_
    while g:busy() and not g:dead() do sluice.sleep(0.05) end
  end
end

--- self:stop(): no new runs (of any dataset); a run in progress finishes.
-- Saves the breaker.
function Collector:stop()
  if not self.running then return self end
  self.running = false
  -- each unit's schedule ends (a run in flight finishes first)
  for _, u in ipairs(self.units_) do runs.unschedule(u) end
  stream.stop(self)
  if self.spec.close then
    local ok, err = xpcall(self.spec.close, debug.traceback, self)
    if not ok then self.log.error("close failed", { error = tostring(err) }) end
  end
  persist.save(self)
  targets.save(self)
  log.info("collector stopped", { collector = self.name })
  return self
end

--- self:health([dataset]) -> status, reason. status: "disabled" |
-- "circuit_open" | "failed" | "degraded" | "healthy"; reason says why when
-- not healthy. disabled: enabled = false. circuit_open: the breaker is
-- open. failed: the last 3 collections (or more) failed in a row, or a
-- started collector has had no successful collection for 3 ×
-- max(interval, timeout) (since its last success, its start, or its last
-- scheduled run skipped because another instance holds its lease).
-- degraded: the last collection failed, a run has been in flight for more
-- than 2 × max(interval, timeout), or fewer than 90% of requests succeeded
-- (with at least 10 made). healthy: otherwise. (timeout defaults to 30 s.)
-- A collector with datasets: each enabled dataset's runs are judged so,
-- with its own interval; the collector's health is the worst of them, the
-- reason naming each dataset at it ("dataset funding: ..."), and disabled
-- when every dataset is. health(name): that dataset's (disabled when it is
-- or the collector is, with disable_dataset's reason; circuit_open while
-- the shared breaker is open; the request share is the collector's alone).
function Collector:health(dataset)
  if dataset == nil and self.spec.stream then return stream.health(self, report.health) end
  return report.health(self, dataset ~= nil and unit_named(self, dataset, "collector:health") or nil)
end

--- self:stats() -> the reference statistics shape (timestamps ISO 8601):
-- the collector's totals, next_run (its next scheduled run, the earliest
-- dataset's; absent while it is not running), and for a collector with datasets, datasets =
-- {name = {status, status_reason, enabled, disabled_reason (why not
-- enabled), interval, overdue (no success for 3 × max(interval,
-- timeout)), run_in_flight_seconds, last_collection, last_success,
-- last_error, data_points_collected, total_runtime, collections_completed,
-- collections_failed, collections_skipped}}.
function Collector:stats()
  local st = report.stats(self)
  st.stream = stream.stats(self)
  if self.spec.stream then st.status, st.status_reason = self:health() end
  return st
end

--- self:counters() -> a copy of the collector's counters, for the
-- operator views (admin, metrics) and backfill's request count: times as
-- sluice.time() seconds, nil until they happen -- started_at (the last
-- start), last_collection (a run's start), last_success, last_error_time;
-- last_error (its message's first line); numbers -- total_requests,
-- successful_requests, failed_requests (requests sent, and their
-- verdicts), latency_total, latency_count (seconds over answered
-- requests), data_points_collected (rows stored), total_runtime (seconds
-- in runs), collections_completed, collections_failed,
-- collections_skipped (runs refused by the open breaker) and
-- consecutive_failures. stats() is the reference shape built from them.
-- A collector with datasets: the run counters are the totals of its
-- datasets (last_error "dataset NAME: ...", consecutive_failures the
-- most of any dataset's), and datasets = {name = {interval, enabled,
-- disabled_reason and the run counters: last_collection, last_success,
-- last_error, last_error_time, data_points_collected, total_runtime,
-- collections_completed, collections_failed, collections_skipped,
-- consecutive_failures}}; requests are the collector's only.
function Collector:counters()
  return report.counters(self)
end

--- self:adopt(old): a reload's hand-over, before self starts: self takes
-- over the counters of old, the instance it replaces (shared from then on,
-- so that a run of old still in flight counts in them), and its run slot
-- (one run in flight per collector across the swap) -- per dataset, for
-- the datasets of the same name in both (a dataset new in self starts
-- afresh; one that old had alone is gone once its run in flight ends).
function Collector:adopt(old)
  if getmetatable(old) ~= instance_mt or old.name ~= self.name then
    error("collector:adopt: bad argument #1 (an instance of the same collector expected)", 2)
  end
  self.stats_ = old.stats_
  for _, u in ipairs(self.units_) do
    local ou = unit_of(self, old, u)
    if ou then u.slot_ = ou.slot_ end
    if ou and u ~= self then u.stats_ = ou.stats_ end
  end
  return self
end

--- self:partitions() -> the partitions the collector declares (its
-- partitions option: a list, or a function(self) returning one), or nil
-- when it declares none. A backfill plans its windows per partition and
-- passes the partition to backfill(self, from, to, partition).
function Collector:partitions()
  local p = self.config.partitions
  if type(p) == "function" then p = p(self) end
  if p ~= nil and type(p) ~= "table" then
    error("collector '" .. self.name .. "': partitions must be a list, got " .. type(p), 2)
  end
  return p
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
