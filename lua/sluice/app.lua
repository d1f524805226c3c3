--- sluice.app: runs a configuration (what `sluice run config.lua` does when
-- the file returns a table): opens the store, loads and starts every
-- collector, and stops them cleanly at shutdown.
local sluice = require "sluice"
local log = require "sluice.log"
local config_mod = require "sluice.config"
local collector = require "sluice.collector"
local store = require "sluice.store"
local breaker = require "sluice.breaker"
local limiter = require "sluice.limiter"

local _M = {}

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

-- Loads a collector spec: a shipped one (use) or a file relative to the
-- configuration's directory. Errors name the configuration file and entry.
local function load_spec(entry, i, file)
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
  local chunk, err = loadfile(path)
  if not chunk then error(key .. ".file: " .. err, 0) end
  local ok, spec = pcall(chunk)
  if not ok then error(key .. ".file: " .. tostring(spec), 0) end
  if type(spec) ~= "table" or not spec._is_collector_spec then
    error(key .. ".file: " .. path .. " must return collector.define{...}", 0)
  end
  return spec
end

-- Builds the collector instances of a prepared configuration against db,
-- starting none. Raises "file: key: message".
local function build_collectors(c, file, db, fresh, red)
  local built = { collectors = {}, order = {} }
  for i, entry in ipairs(c.collectors or {}) do
    if fresh and entry.use then package.loaded["collectors." .. entry.use] = nil end
    local spec = load_spec(entry, i, file)
    local overrides = {}
    for k, v in pairs(entry) do overrides[k] = v end
    overrides.name = overrides.name or (entry.use and spec.name) or spec.name
    local ok, inst = pcall(collector.new, spec, overrides, { store = db, redis = red })
    if not ok then
      error(file .. ": collectors[" .. i .. "]: " .. tostring(inst):gsub("^[^:]+:%d+: ", ""), 0)
    end
    require("sluice.redact").classify(inst.config) -- the script's own secrets too
    built.collectors[inst.name] = inst
    built.order[#built.order + 1] = inst
  end
  return built
end

local function apply_log(c)
  if c.log then
    if c.log.level then log.level(c.log.level) end
    if c.log.format then log.format(c.log.format) end
    if c.log.output then assert(log.output(c.log.output)) end
    if c.log.ring_size then log.ring_size(c.log.ring_size) end
  end
end

--- build(config, file, opts) -> app {collectors = {name = instance},
-- order = {...}, store}: the configuration prepared and every collector
-- built, none started. Raises "file: key: message" on a bad configuration.
function _M.build(config, file, opts)
  local c = config_mod.prepare(config, file, opts)
  apply_log(c)
  if c.shutdown_timeout then sluice.shutdown_timeout(c.shutdown_timeout) end
  local db, err = store.open(c.store or "sluice.db")
  if not db then error(file .. ": store: " .. tostring(err), 0) end
  local red = c.redis and require("sluice.redis").connect({ url = c.redis })
  local okb, built = pcall(build_collectors, c, file, db, false, red)
  if not okb then
    if red then red:close() end
    db:close()
    error(built, 0)
  end
  local app = { store = db, collectors = built.collectors, order = built.order, config = c,
    file = file, opts = opts or {} }
  if red then
    local shared = require "sluice.shared"
    app.shared = shared.new(red)
    if c.sinks and c.sinks.redis_stream then
      app.sinks = { app.shared:stream_sink(c.sinks.redis_stream) }
    end
    for _, inst in ipairs(app.order) do
      app.shared:attach(inst)
      inst.sinks = app.sinks
    end
  end
  sluice.on_shutdown(function()
    if app.admin then app.admin:close() end
    for _, inst in ipairs(app.order) do inst:stop() end
    if app.shared then app.shared:stop() end
    -- runs in flight store their rows before the store closes (the
    -- shutdown deadline bounds the wait)
    for _, inst in ipairs(app.order) do inst:drain() end
    db:close()
  end)
  _M.current = app
  return app
end

--- run(config, file, opts) -> app: build, start every enabled collector
-- (they run until shutdown) and the admin API when configured.
function _M.run(config, file, opts)
  local app = _M.build(config, file, opts)
  -- leases only for running collectors: a `sluice backfill` that builds
  -- the same configuration must not keep the collectors from running
  if app.shared then app.shared:leases(app.config.lease_ttl) end
  if app.config.admin and app.config.admin.enabled ~= false then
    local srv, err = require("sluice.admin").start(app, app.config.admin)
    if not srv then error(file .. ": " .. err, 0) end
    app.admin = srv
  end
  for _, inst in ipairs(app.order) do
    if inst.config.enabled ~= false then inst:start() end
  end
  if app.shared then app.shared:start() end
  sluice.on_reload(function()
    local ok, err = _M.reload()
    if not ok then log.error("reload refused", { error = err }) end
  end)
  log.info("sluice started", { collectors = #app.order, store = app.config.store or "sluice.db" })
  return app
end

--- reload() -> true | nil, err. Re-reads the configuration file and the
-- collector scripts, builds and validates the whole new set before
-- touching the running one; on any error nothing changes and the error
-- (file:line: message) is returned. Breaker and limiter state and
-- statistics carry over by collector name; removed or replaced collectors
-- stop gracefully (a run in progress finishes).
function _M.reload()
  local app = _M.current
  if not app then return nil, "no configuration is running" end
  local old_breakers, old_limiters = breaker.all(), limiter.all()
  local ok, err = pcall(function()
    local chunk, lerr = loadfile(app.file)
    if not chunk then error(lerr, 0) end
    local okc, config = pcall(chunk)
    if not okc then error(tostring(config), 0) end
    if type(config) ~= "table" then error(app.file .. ": must return a configuration table", 0) end
    local c = config_mod.prepare(config, app.file, app.opts)
    if (c.store or "sluice.db") ~= (app.config.store or "sluice.db") then
      error(app.file .. ": store: cannot change while running (restart to move the database)", 0)
    end
    if (c.redis or false) ~= (app.config.redis or false) then
      error(app.file .. ": redis: cannot change while running (restart to use another server)", 0)
    end
    local built = build_collectors(c, app.file, app.store, true, app.shared and app.shared.redis)
    -- nothing failed: carry state over and swap
    for name, new in pairs(built.collectors) do
      local old = app.collectors[name]
      if old then
        if old.breaker and new.breaker then new.breaker:restore(old.breaker:snapshot()) end
        if old.limiter and new.limiter then new.limiter:restore(old.limiter:snapshot()) end
        new.stats_ = old.stats_
      end
    end
    for _, old in ipairs(app.order) do
      old:stop()
      if app.shared then app.shared:detach(old) end
    end
    if app.shared then
      for _, inst in ipairs(built.order) do
        app.shared:attach(inst)
        inst.sinks = app.sinks
        app.shared:renew(inst)
      end
    end
    apply_log(c)
    app.config, app.collectors, app.order = c, built.collectors, built.order
    for _, inst in ipairs(app.order) do
      if inst.config.enabled ~= false then inst:start() end
    end
  end)
  if not ok then
    -- building registered new breakers and limiters by name: put the
    -- running ones back
    for _, cb in pairs(old_breakers) do breaker.register(cb) end
    for _, lim in pairs(old_limiters) do limiter.register(lim) end
    return nil, tostring(err)
  end
  log.info("configuration reloaded", { collectors = #app.order })
  return true
end

return _M
