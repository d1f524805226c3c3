--- sluice.app: runs a configuration (what `sluice run config.lua` does when
-- the file returns a table): opens the store, loads and starts every
-- collector, and stops them cleanly at shutdown.
--
-- It owns the app table (_M.current: store, collectors by name, order,
-- config, file, the shared object with Redis, the outbox with sinks
-- (sluice.outbox, stopped by the shutdown handler before the store
-- closes), the admin server,
-- starting, the response cache (kept across reloads), the upstreams
-- registry (one per build), the alerts (sluice.alerts, run() only; stopped
-- by the shutdown handler), configs (sluice.app.configs: the last
-- configurations applied, for rollback), history (sluice.history, the
-- last hour sampled for the status page while the admin API listens;
-- run() only)) and what it opened for it (store, Redis
-- client, shared object), closed by its shutdown handler. It wires the collectors through
-- their methods only: add_sink (an outbox route), adopt at a reload, and the shared object's
-- attach/detach/renew. build(), run() and reload() yield (Redis calls
-- when collectors are attached; run() builds and starts them in batches
-- with a turn of the loop between): call them in a task.
local sluice = require "sluice"
local log = require "sluice.log"
local config_mod = require "sluice.config"
local collector = require "sluice.collector"
local store = require "sluice.store"
local breaker = require "sluice.breaker"
local limiter = require "sluice.limiter"
local redact = require "sluice.redact"
local redis = require "sluice.redis"
local shared = require "sluice.shared"
local admin = require "sluice.admin"
local response_cache = require "sluice.collector.cache"
local upstreams = require "sluice.collector.upstreams"
local outbox = require "sluice.outbox"
local json = require "sluice.json"
local alerts = require "sluice.alerts"
local configs = require "sluice.app.configs"
local history = require "sluice.history"

local _M = {}

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

-- A file's text, or nil, "cannot open PATH: why" (loadfile's words).
local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, "cannot open " .. err end
  local text = f:read("*a")
  f:close()
  return text
end

-- Loads a collector spec: a shipped one (use) or a file relative to the
-- configuration's directory, its text taken from files[path] when there
-- (a rollback's) and otherwise read and recorded there. Errors name the
-- configuration file and entry. chunks: the scripts compiled so far in
-- this build, by path (each entry still runs its script: what a script
-- keeps in its locals is its entry's own).
local function load_spec(entry, i, file, files, chunks)
  local key = file .. ": collectors[" .. i .. "]"
  if entry.use then
    local ok, spec = pcall(require, "collectors." .. entry.use)
    if not ok then
      if tostring(spec):find("module 'collectors." .. entry.use .. "' not found", 1, true) then
        error(key .. ".use: no shipped collector named '" .. entry.use .. "'", 0)
      end
      error(key .. ": " .. tostring(spec), 0)
    end
    return spec
  end
  local path = entry.file
  if path:sub(1, 1) ~= "/" then path = dirname(file) .. "/" .. path end
  local chunk = chunks[path]
  if not chunk then
    local text = files[path]
    if not text then
      local rerr
      text, rerr = read_file(path)
      if not text then error(key .. ".file: " .. rerr, 0) end
    end
    local err
    chunk, err = loadstring(text, "@" .. path)
    if not chunk then error(key .. ".file: " .. err, 0) end
    files[path] = text
    chunks[path] = chunk
  end
  local ok, spec = pcall(chunk)
  if not ok then error(key .. ".file: " .. tostring(spec), 0) end
  if not collector.is_spec(spec) then
    error(key .. ".file: " .. path .. " must return collector.define{...}", 0)
  end
  return spec
end

-- Start-up spreads the collectors' work so the loop (and the admin API)
-- stays responsive: instances are built and started BATCH at a time with
-- a turn of the loop in between, and first runs are spread (see run()).
local BATCH = 200
local START_RATE = 100 -- first runs per second at start-up, by default

-- Lets the loop turn (timers, sockets, other tasks) when called in a task.
local function breathe()
  if sluice.current() then sluice.sleep(0) end
end

-- A reload builds, stops and starts hundreds of collectors while the
-- running ones keep collecting: pace() lets the loop turn whenever the
-- reload has worked for its slice, so no run waits on a reload for longer
-- than that (500 collectors took 0.3-1 s of loop on an idle machine, 5-12 s
-- in the soak, with runs missing their deadline meanwhile). The slice is
-- SLICE, or as long as the loop took to come back the last time when that
-- was longer: a loop busy with hundreds of collectors gives the reload half
-- of its time, not 10 ms a turn (a reload that took half a minute).
local SLICE = 0.01
local function pacer()
  local last, slice = sluice.now(), SLICE
  return function()
    local now = sluice.now()
    if now - last >= slice then
      breathe()
      last = sluice.now()
      slice = math.max(SLICE, last - now)
    end
  end
end

-- Builds the collector instances of a prepared configuration against db,
-- starting none. Raises "file: key: message". With batched, yields to
-- the loop every BATCH collectors, or, when it is a function (a pacer),
-- calls it after each one. files: the collector scripts' texts by path,
-- used and completed (see load_spec); built.files has them.
local function build_collectors(c, file, db, fresh, red, batched, cache, files)
  -- the limiters and breakers shared by upstream name: one registry per
  -- build (a reload carries the state over from the running one)
  local built = { collectors = {}, order = {}, upstreams = upstreams.new(), sinks_of = {}, files = files }
  local seen = {} -- collector name -> the entry's index
  local chunks, seen_use = {}, {}
  local pace = type(batched) == "function" and batched
  for i, entry in ipairs(c.collectors or {}) do
    if pace then
      pace()
      if sluice.stopping() then error(file .. ": shutdown during the reload", 0) end
    elseif batched and i % BATCH == 0 then
      breathe()
      -- build() closes what it opened
      if sluice.stopping() then error(file .. ": shutdown during start-up", 0) end
    end
    if fresh and entry.use and not seen_use[entry.use] then
      -- a reload reads a shipped collector's module again, once
      package.loaded["collectors." .. entry.use] = nil
      seen_use[entry.use] = true
    end
    local spec = load_spec(entry, i, file, files, chunks)
    local overrides = {}
    for k, v in pairs(entry) do overrides[k] = v end
    overrides.name = overrides.name or (entry.use and spec.name) or spec.name
    -- Every by-name view (/status, admin actions, reload hand-over, the
    -- store's state) would see only the second of two namesakes.
    local first = seen[overrides.name]
    if first then
      error(("%s: collectors[%d]: collector name '%s' is already used by collectors[%d]; "
        .. "give one of them its own name = \"...\""):format(file, i, tostring(overrides.name), first), 0)
    end
    seen[overrides.name] = i
    overrides.sinks = nil -- the app's (routes to the outbox), not the collector's
    local ok, inst = pcall(collector.new, spec, overrides,
      { store = db, redis = red, cache = cache, upstreams = built.upstreams })
    if not ok then
      error(file .. ": collectors[" .. i .. "]: " .. tostring(inst):gsub("^[^:]+:%d+: ", ""), 0)
    end
    redact.remember(inst.config) -- the script's own secrets too
    built.collectors[inst.name] = inst
    built.order[#built.order + 1] = inst
    built.sinks_of[inst] = entry.sinks
  end
  return built
end

-- The process' GC settings before any configuration applied its own (the
-- runtime's pause of 120, LuaJIT's step multiplier of 200): what a reload
-- that drops a setting puts back. (setpause/setstepmul return the old value.)
local GC_PAUSE = collectgarbage("setpause", 150)
collectgarbage("setpause", GC_PAUSE)
local GC_STEPMUL = collectgarbage("setstepmul", 200)
collectgarbage("setstepmul", GC_STEPMUL)

-- The process' Lua heap: how far it grows past what was live before the
-- collector runs again (gc_pause), and how much collecting each step does
-- against what was allocated (gc_stepmul).
local function apply_gc(c)
  collectgarbage("setpause", c.gc_pause or GC_PAUSE)
  collectgarbage("setstepmul", c.gc_stepmul or GC_STEPMUL)
end

-- shutdown_timeout: the configuration's, at start and at each reload; a
-- reload that drops it puts back what the process had before any
-- configuration set it (--shutdown-timeout, or the built-in default).
local base_shutdown_timeout
local function apply_shutdown_timeout(c)
  base_shutdown_timeout = base_shutdown_timeout or sluice.shutdown_timeout()
  sluice.shutdown_timeout(c.shutdown_timeout or base_shutdown_timeout)
end

local function apply_log(c)
  if c.log then
    if c.log.level then log.level(c.log.level) end
    if c.log.format then log.format(c.log.format) end
    if c.log.output then assert(log.output(c.log.output)) end
    if c.log.ring_size then log.ring_size(c.log.ring_size) end
  end
end

-- The steps of build(): with early(app), called once the store is open
-- and before any collector is built (run() starts the admin API there),
-- and collectors built in batches that yield to the loop.
local function build(config, file, opts, early)
  local c = config_mod.prepare(config, file, opts)
  apply_log(c)
  apply_shutdown_timeout(c)
  apply_gc(c)
  local db, err = store.open(c.store or "sluice.db")
  if not db then error(file .. ": store: " .. tostring(err), 0) end
  local red, rerr
  if c.redis then
    red, rerr = redis.connect({ url = c.redis })
    if not red then
      db:close()
      error(file .. ": redis: " .. redact.text(tostring(rerr)), 0)
    end
  end
  local app = { store = db, collectors = {}, order = {}, config = c,
    file = file, opts = opts or {}, starting = early ~= nil,
    -- one response cache for the process' collectors, kept across reloads
    cache = response_cache.new({ max_bytes = c.cache and c.cache.max_bytes }) }
  local prev = _M.current
  local okb, built = pcall(function()
    if early then
      _M.current = app -- the admin API and the REPL see it starting
      early(app)
    end
    return build_collectors(c, file, db, false, red, early ~= nil, app.cache, {})
  end)
  if not okb then
    _M.current = prev
    if app.admin then app.admin:close() end
    if red then red:close() end
    db:close()
    error(built, 0)
  end
  app.collectors, app.order, app.upstreams = built.collectors, built.order, built.upstreams
  -- the configuration history (sluice.app.configs): this one, as read now
  app.configs = configs.new()
  app.configs:applied({ config = config, source = read_file(file), files = built.files, by = "start" })
  if red then
    app.shared = shared.new(red)
    for _, inst in ipairs(app.order) do app.shared:attach(inst) end
  end
  if c.sinks and next(c.sinks) then
    -- the durable outbox: every collector's committed rows are queued for
    -- its sinks (all, or the entry's sinks = {...}) and forwarded
    local box, berr = outbox.new(db, c.sinks, { redis = red, shared = app.shared })
    if not box then
      if app.admin then app.admin:close() end
      if app.shared then app.shared:stop() elseif red then red:close() end
      db:close()
      error(file .. ": sinks: " .. tostring(berr), 0)
    end
    app.outbox = box
    for _, inst in ipairs(app.order) do inst:add_sink(box:route(inst, built.sinks_of[inst])) end
    box:start()
  end
  sluice.on_shutdown(function()
    if app.admin then app.admin:close() end
    if app.history then app.history:stop() end
    for _, inst in ipairs(app.order) do inst:stop() end
    if app.shared then app.shared:stop() end
    -- runs in flight store their rows before the store closes (the
    -- shutdown deadline bounds the wait)
    for _, inst in ipairs(app.order) do inst:drain() end
    -- then the forwarders: a write in flight ends or is cancelled
    if app.outbox then app.outbox:stop(math.min(5, sluice.shutdown_timeout())) end
    -- what the alerts hold goes out (bounded), then their breakers close
    if app.alerts then app.alerts:stop(math.min(2, sluice.shutdown_timeout())) end
    db:close()
  end)
  _M.current = app
  return app
end

--- build(config, file, opts) -> app {collectors = {name = instance},
-- order = {...}, store}: the configuration prepared and every collector
-- built, none started. Raises "file: key: message" on a bad configuration.
function _M.build(config, file, opts)
  return build(config, file, opts)
end

--- first_delays(order, start_rate) -> { [instance] = seconds }: when each
-- enabled collector runs first. n enabled collectors start over a window
-- of n / start_rate seconds (capped by each one's interval), each at a
-- uniformly random offset in it: about start_rate first runs a second
-- instead of n at once. A few collectors start within milliseconds.
function _M.first_delays(order, start_rate)
  local n = 0
  for _, inst in ipairs(order) do
    if inst.enabled then n = n + 1 end
  end
  local out = {}
  for _, inst in ipairs(order) do
    if inst.enabled then
      out[inst] = math.random() * math.min(inst.interval, n / start_rate)
    end
  end
  return out
end

--- startup_failed(err [, traceback]): a configuration or start-up error,
-- said once on stderr as one line ("sluice: FILE: KEY: problem"; the
-- traceback goes to the debug log only); the process then exits 1.
function _M.startup_failed(err, traceback)
  local msg = tostring(err)
  io.stderr:write("sluice: ", (msg:gsub("\n.*", "")), "\n")
  if traceback then log.debug("start-up failed", { error = msg, traceback = traceback }) end
  sluice.shutdown(1)
end

--- run(config, file, opts) -> app: build, start every enabled collector
-- (they run until shutdown) and the admin API when configured. The admin
-- API answers from the start (app.starting is true until every collector
-- is started); building and starting yield to the loop in batches, and
-- first runs are spread (first_delays, start_rate).
function _M.run(config, file, opts)
  local app = build(config, file, opts, function(a)
    -- before the collectors, so that it answers while they are built
    if a.config.admin and a.config.admin.enabled ~= false then
      local srv, err = admin.start(a, a.config.admin, _M.reload, _M.rollback)
      if not srv then error(file .. ": " .. err, 0) end
      a.admin = srv
    end
  end)
  -- leases only for running collectors: a `sluice backfill` that builds
  -- the same configuration must not keep the collectors from running
  if app.shared then app.shared:leases(app.config.lease_ttl) end
  -- alerts (sluice.alerts): the breakers built are watched from here on
  app.alerts = alerts.start(app.config.alerts, { current = function() return app end })
  local delays = _M.first_delays(app.order, app.config.start_rate or START_RATE)
  -- the offsets count from here, not from each start: starting takes
  -- turns of the loop (longer on a busy machine), which must not bunch the
  -- first runs up behind the last batches
  local t0 = sluice.now()
  for i, inst in ipairs(app.order) do
    if i % BATCH == 0 then
      breathe()
      if sluice.stopping() then break end -- the shutdown handler stopped the started ones
    end
    if inst.enabled then
      inst:start({ first_delay = math.max(0, t0 + delays[inst] - sluice.now()) })
    end
  end
  app.starting = nil
  if app.shared then app.shared:start() end
  -- the last hour, for the status page (GET /history): while the admin API
  -- listens (a closed one stops it)
  if app.admin then
    app.history = history.new({ current = function() return app end,
      alive = function() return app.admin:stats().open end }):start()
  end
  sluice.on_reload(function() _M.reload("SIGHUP") end)
  log.info("sluice started", { collectors = #app.order, store = app.config.store or "sluice.db" })
  -- under systemd (Type=notify), started means every collector is
  local _, nerr = require("sluice._task").notify("READY=1")
  if nerr then log.warning("cannot notify systemd", { error = nerr }) end
  return app
end

local apply, apply_now

--- reload([by]) -> true | nil, err. Re-reads the configuration file and the
-- collector scripts, builds and validates the whole new set before
-- touching the running one; on any error nothing changes and the error
-- (file:line: message) is returned -- and logged, whoever asked (by: "SIGHUP",
-- "POST /reload", "repl", ...). Breaker and limiter state and statistics
-- carry over by collector name; removed or replaced collectors stop
-- gracefully (a run in progress finishes). Applied, it becomes the newest
-- entry of app.configs (unless its text and scripts are the live ones').
function _M.reload(by)
  local ok, err = apply(nil, by or "reload()")
  if not ok then log.error("reload refused", { error = err, by = by or "reload()" }) end
  return ok, err
end

--- rollback([by [, steps]]) -> entry | nil, err. Applies the configuration
-- applied `steps` (1) before the live one, as it was then (its table and
-- its collector scripts' texts, not the files on disk now), the way a
-- reload does: built and validated first, nothing changes on an error.
-- Done, the entries after it are dropped from app.configs and it is live,
-- applied now; so a second rollback goes one further back. The file on
-- disk is not touched: a later reload (SIGHUP) reads it again.
function _M.rollback(by, steps)
  local app = _M.current
  if not app then return nil, "no configuration is running" end
  local target, err = app.configs:target(steps)
  if target then
    local ok
    ok, err = apply(target, by or "rollback()")
    if ok then return app.configs:live() end
  end
  log.error("rollback refused", { error = err, by = by or "rollback()" })
  return nil, err
end

-- apply(entry, by) -> true | nil, err: the configuration file (entry nil)
-- or a history entry built, validated and swapped in.
local applying = false -- a reload or rollback is under way (it yields)

apply = function(entry, by)
  local app = _M.current
  if not app then return nil, "no configuration is running" end
  if app.starting then return nil, "still starting: reload once every collector has started" end
  if applying then return nil, "a reload is under way: try again once it is done" end
  applying = true
  local ran, ok, err = pcall(apply_now, app, entry, by)
  applying = false
  if not ran then error(ok, 0) end
  return ok, err
end

apply_now = function(app, entry, by)
  local old_breakers, old_limiters = breaker.all(), limiter.all()
  local pace = pacer()
  local source, files, config = nil, {}, nil
  local ok, err = pcall(function()
    if entry then
      config = entry.config
      for p, text in pairs(entry.files) do files[p] = text end
    else
      local rerr
      source, rerr = read_file(app.file)
      if not source then error(rerr, 0) end
      local chunk, lerr = loadstring(source, "@" .. app.file)
      if not chunk then error(lerr, 0) end
      local okc
      okc, config = pcall(chunk)
      if not okc then error(tostring(config), 0) end
      if type(config) ~= "table" then error(app.file .. ": must return a configuration table", 0) end
    end
    local c = config_mod.prepare(config, app.file, app.opts)
    if (c.store or "sluice.db") ~= (app.config.store or "sluice.db") then
      error(app.file .. ": store: cannot change while running (restart to move the database)", 0)
    end
    if (c.redis or false) ~= (app.config.redis or false) then
      error(app.file .. ": redis: cannot change while running (restart to use another server)", 0)
    end
    if json.encode(c.sinks or {}, true) ~= json.encode(app.config.sinks or {}, true) then
      error(app.file .. ": sinks: cannot change while running (restart to change the sinks)", 0)
    end
    local built = build_collectors(c, app.file, app.store, true, app.shared and app.shared.redis, pace,
      app.cache, files)
    -- nothing failed: carry state over and swap. A collector's own breaker
    -- and limiter by its name, an upstream's by the upstream's name.
    built.upstreams:carry_over(app.upstreams)
    for name, new in pairs(built.collectors) do
      local old = app.collectors[name]
      if old then
        if old.breaker and new.breaker and not old.config.upstream and not new.config.upstream then
          new.breaker:restore(old.breaker:snapshot())
        end
        if old.limiter and new.limiter and not old.config.upstream and not new.config.upstream then
          new.limiter:restore(old.limiter:snapshot())
        end
        -- its counters, and one run in flight per collector across the swap
        new:adopt(old)
      end
    end
    local running = {}
    -- (the new instances share each old one's counters and slot since
    -- adopt: a run the old one makes until it is stopped counts)
    for _, old in ipairs(app.order) do
      if old.running then running[old.name] = old end
      old:stop()
      pace()
    end
    if app.shared then
      -- the new instances first: an old one's lease is kept only if one of
      -- its name is attached when its release looks (detaching yields, and
      -- a lease released meanwhile is free for any other instance)
      for _, inst in ipairs(built.order) do
        app.shared:attach(inst)
        app.shared:renew(inst)
      end
      for _, old in ipairs(app.order) do app.shared:detach(old) end
    end
    if app.outbox then
      for _, inst in ipairs(built.order) do inst:add_sink(app.outbox:route(inst, built.sinks_of[inst])) end
    end
    apply_log(c)
    apply_gc(c)
    apply_shutdown_timeout(c)
    app.config, app.collectors, app.order = c, built.collectors, built.order
    if app.alerts then app.alerts:configure(c.alerts) end
    app.upstreams = built.upstreams
    app.cache:resize(c.cache and c.cache.max_bytes or response_cache.DEFAULT_MAX_BYTES)
    -- an instance replacing a running one continues its schedule (no
    -- extra run now) and its first run waits for the old one's run in
    -- flight; one enabled by this reload starts within its start window
    local delays = _M.first_delays(app.order, c.start_rate or START_RATE)
    for _, inst in ipairs(app.order) do
      local prev = running[inst.name]
      if inst.enabled then inst:start({ first_delay = delays[inst], after = prev }) end
      pace()
    end
  end)
  if not ok then
    -- building registered new breakers and limiters by name: put the
    -- running ones back
    for _, cb in pairs(old_breakers) do breaker.register(cb) end
    for _, lim in pairs(old_limiters) do limiter.register(lim) end
    return nil, tostring(err)
  end
  if app.history then app.history:watch() end -- the new breakers' transitions
  -- live now: the newest entry of the history
  local live = entry and app.configs:rolled_back(entry, by)
    or app.configs:applied({ config = config, source = source, files = files, by = by, how = "reload" })
  log.info(entry and "configuration rolled back" or "configuration reloaded",
    { collectors = #app.order, by = by, id = live.id, sha256 = live.sha256 })
  return true
end

return _M
