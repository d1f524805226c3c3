--- sluice.app: runs a configuration (what `sluice run config.lua` does when
-- the file returns a table): opens the store, loads and starts every
-- collector, and stops them cleanly at shutdown.
local sluice = require "sluice"
local log = require "sluice.log"
local config_mod = require "sluice.config"
local collector = require "sluice.collector"
local store = require "sluice.store"

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

--- build(config, file, opts) -> app {collectors = {name = instance},
-- order = {...}, store}: the configuration prepared and every collector
-- built, none started. Raises "file: key: message" on a bad configuration.
function _M.build(config, file, opts)
  local c = config_mod.prepare(config, file, opts)
  if c.log then
    if c.log.level then log.level(c.log.level) end
    if c.log.format then log.format(c.log.format) end
    if c.log.output then assert(log.output(c.log.output)) end
    if c.log.ring_size then log.ring_size(c.log.ring_size) end
  end
  if c.shutdown_timeout then sluice.shutdown_timeout(c.shutdown_timeout) end
  local db, err = store.open(c.store or "sluice.db")
  if not db then error(file .. ": store: " .. tostring(err), 0) end
  local app = { store = db, collectors = {}, order = {}, config = c }
  -- build everything first, so a bad entry fails before anything runs
  for i, entry in ipairs(c.collectors or {}) do
    local spec = load_spec(entry, i, file)
    local overrides = {}
    for k, v in pairs(entry) do overrides[k] = v end
    overrides.name = overrides.name or (entry.use and spec.name) or spec.name
    local ok, inst = pcall(collector.new, spec, overrides, { store = db })
    if not ok then
      error(file .. ": collectors[" .. i .. "]: " .. tostring(inst):gsub("^[^:]+:%d+: ", ""), 0)
    end
    app.collectors[inst.name] = inst
    app.order[#app.order + 1] = inst
  end
  sluice.on_shutdown(function()
    for _, inst in ipairs(app.order) do inst:stop() end
    db:close()
  end)
  _M.current = app
  return app
end

--- run(config, file, opts) -> app: build, then start every enabled
-- collector; they run until shutdown.
function _M.run(config, file, opts)
  local app = _M.build(config, file, opts)
  for _, inst in ipairs(app.order) do
    if inst.config.enabled ~= false then inst:start() end
  end
  log.info("sluice started", { collectors = #app.order, store = app.config.store or "sluice.db" })
  return app
end

return _M
