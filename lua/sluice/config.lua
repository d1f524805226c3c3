--- sluice.config: configuration files, profiles and environment overrides.
--
-- A configuration is what a file given to `sluice run` returns when it
-- returns a table:
--
--   return {
--     store = "sluice.db",                    -- SQLite file (default sluice.db)
--     log = { level = "info", format = "json", output = "-" },
--     shutdown_timeout = 10,
--     start_rate = 100,                       -- first runs a second at start-up (sluice.app)
--     gc_pause = 150,                         -- Lua GC pause, % (lower: less memory, more CPU)
--     gc_stepmul = 200,                       -- Lua GC step multiplier, % (lower: work spread thinner)
--     cache = { max_bytes = 64 * 1024 * 1024 }, -- the response cache (sluice.collector.cache)
--     sinks = { redis_stream = { stream = "sluice:{table}" } }, -- (sluice.outbox)
--     collectors = {
--       { use = "binance_klines", symbols = { "BTCUSDT" }, interval = 60,
--         sinks = { "redis_stream" } },            -- some sinks only (default all)
--       { file = "collectors/my_feed.lua", name = "my_feed", enabled = false },
--     },
--     profiles = { production = { log = { level = "warning" } } },
--   }
--
-- Order of precedence, lowest first: the file, the selected profile
-- (`--profile NAME` merges profiles[NAME] over it, tables merged key by key,
-- lists replaced), then the environment: SLUICE_<KEY>__<NESTED>=value, with
-- keys upper case and "__" between levels; a collector is addressed by its
-- name, e.g. SLUICE_COLLECTORS__BINANCE_KLINES__INTERVAL=30 or
-- SLUICE_LOG__LEVEL=debug. Values read as numbers or booleans when the
-- setting they replace is one. Every error names the file and the key.
local redact = require "sluice.redact"
local options = require "sluice.options"
local outbox = require "sluice.outbox"
local alerts = require "sluice.alerts"

local _M = {}

-- The settings and their types, as sluice.options schemas (validate turns
-- its problems into "file: key: unknown setting" and "file: key: must be a
-- <type>, got <type>"); what the values mean is checked after.
local ADMIN = { host = "string", port = "number", token = "any", enabled = "boolean",
  hosts = "table", insecure_loopback_mutations = "boolean" }
local LOG = { level = "string", format = "string", output = "string", ring_size = "number" }
local TOP = {
  store = "string", log = { type = "table", fields = LOG }, collectors = "table", profiles = "table",
  shutdown_timeout = "number", name = "string", admin = { type = "table", fields = ADMIN }, redis = "string",
  sinks = "table", lease_ttl = "number", start_rate = "number", gc_pause = "number",
  gc_stepmul = "number",
  cache = { type = "table", fields = { max_bytes = { integer = true, min = 0 } } },
  alerts = "table",
}
local LEVELS = { trace = 1, debug = 1, info = 1, warning = 1, warn = 1, error = 1, critical = 1, none = 1 }

local function fail(file, key, msg)
  error(file .. ": " .. key .. ": " .. msg, 0)
end

local function deep_merge(base, over)
  -- lists and objects (secrets have a metatable) replace, tables merge
  if type(base) ~= "table" or type(over) ~= "table" or over[1] ~= nil or getmetatable(over) then
    return over
  end
  local out = {}
  for k, v in pairs(base) do out[k] = v end
  for k, v in pairs(over) do out[k] = deep_merge(base[k], v) end
  return out
end

--- the name a collector entry is addressed by (env overrides, logs).
function _M.entry_name(entry)
  if entry.name then return entry.name end
  if entry.use then return entry.use end
  if entry.file then return (entry.file:match("([^/]+)%.lua$") or entry.file) end
  return nil
end

local function parse_value(raw, current)
  if type(current) == "number" then
    return tonumber(raw), "a number"
  elseif type(current) == "boolean" then
    if raw == "true" or raw == "1" then return true end
    if raw == "false" or raw == "0" then return false end
    return nil, "true or false"
  elseif type(current) == "table" then
    return nil, "a table (set its keys instead)"
  end
  local n = tonumber(raw)
  if current == nil and n then return n end
  if current == nil and (raw == "true" or raw == "false") then return raw == "true" end
  return raw
end

--- apply_env(config, env, file) -> config with SLUICE_* overrides applied.
function _M.apply_env(config, env, file)
  local names = {}
  for name in pairs(env) do
    if name:match("^SLUICE_[%u%d_]+$") then
      names[#names + 1] = name
    end
  end
  table.sort(names) -- deterministic when two variables touch one key
  for _, name in ipairs(names) do
    local path = {}
    for part in (name:sub(8) .. "__"):gmatch("(.-)__") do
      path[#path + 1] = part:lower()
    end
    local key = "SLUICE_" .. name:sub(8)
    -- only configuration keys; other SLUICE_* variables are left alone
    if TOP[path[1]] and #path >= 1 then
      local node = config
      local ok = true
      for i = 1, #path - 1 do
        local k = path[i]
        if node == config.collectors then
          local found
          for _, entry in ipairs(node) do
            if type(entry) == "table" and _M.entry_name(entry) == k then found = entry end
          end
          if not found then
            fail(file, key, "no collector named '" .. k .. "'")
          end
          node = found
        else
          if node[k] == nil then node[k] = {} end
          if type(node[k]) ~= "table" then ok = false break end
          node = node[k]
        end
      end
      if not ok then fail(file, key, "is not a table") end
      local leaf = path[#path]
      local value, want = parse_value(env[name], node[leaf])
      if value == nil then
        fail(file, key, "must be " .. want .. ", got '" .. env[name] .. "'")
      end
      node[leaf] = value
    end
  end
  return config
end

--- validate(config, file) -> config; raises "file: key: message".
function _M.validate(config, file)
  local where, kind, text = options.problem(config, TOP)
  if where then fail(file, where, kind == "unknown" and "unknown setting" or text) end
  if config.log then
    if config.log.level and not LEVELS[config.log.level] then
      fail(file, "log.level", "must be trace, debug, info, warning, error, critical or none, got '"
        .. config.log.level .. "'")
    end
    if config.log.format and config.log.format ~= "json" and config.log.format ~= "console" then
      fail(file, "log.format", "must be json or console, got '" .. config.log.format .. "'")
    end
  end
  if config.redis and not config.redis:match("^redis://") then
    fail(file, "redis", "must be a redis:// URL, got '" .. redact.url(config.redis) .. "'")
  end
  if config.start_rate and not (config.start_rate > 0 and config.start_rate < math.huge) then
    fail(file, "start_rate", "must be a finite number > 0 (first runs per second at start-up)")
  end
  if config.gc_pause and not (config.gc_pause >= 100 and config.gc_pause <= 1000) then
    fail(file, "gc_pause", "must be a number from 100 to 1000 (the Lua heap's growth before a collection, %)")
  end
  if config.gc_stepmul and not (config.gc_stepmul >= 50 and config.gc_stepmul <= 1000) then
    fail(file, "gc_stepmul", "must be a number from 50 to 1000 (the Lua GC's work per step against what was "
      .. "allocated, %)")
  end
  if config.lease_ttl and not (config.lease_ttl >= 1 and config.lease_ttl < math.huge) then
    fail(file, "lease_ttl", "must be a number of seconds >= 1")
  end
  if config.sinks then
    for k, v in pairs(config.sinks) do
      if type(k) ~= "string" or not k:find("^[%w_%-]+$") then
        fail(file, "sinks." .. tostring(k), "a sink name is a word (letters, digits, _ and -)")
      end
      local at, msg = outbox.check(k, v)
      if at then fail(file, "sinks." .. at, msg) end
      if outbox.kind_of(k, v) == "redis_stream" and not config.redis then
        fail(file, "sinks." .. k, "a redis_stream sink needs redis = \"redis://...\"")
      end
    end
  end
  if config.alerts ~= nil then
    local at, msg = alerts.check(config.alerts)
    if at then fail(file, "alerts" .. (at ~= "" and ("." .. at) or ""), msg) end
  end
  if config.admin then
    local port = config.admin.port
    if port and not (port >= 0 and port <= 65535 and port == math.floor(port)) then
      fail(file, "admin.port", "must be an integer in [0, 65535]")
    end
    local token = config.admin.token
    if token ~= nil and type(token) ~= "string" and not (type(token) == "table" and token.env) then
      fail(file, "admin.token", "must be a string or collector.env(\"NAME\")")
    end
    for i, h in pairs(config.admin.hosts or {}) do
      if type(i) ~= "number" or type(h) ~= "string" or h == "" then
        fail(file, "admin.hosts", "must be a list of host names (\"name\" or \"name:port\")")
      end
    end
  end
  if config.shutdown_timeout and not (config.shutdown_timeout >= 0 and config.shutdown_timeout < math.huge) then
    fail(file, "shutdown_timeout", "must be a finite number >= 0")
  end
  local seen = {}
  for i, entry in ipairs(config.collectors or {}) do
    local key = "collectors[" .. i .. "]"
    if type(entry) ~= "table" then fail(file, key, "must be a table, got " .. type(entry)) end
    if (entry.use == nil) == (entry.file == nil) then
      fail(file, key, "needs exactly one of use = \"<shipped collector>\" or file = \"path.lua\"")
    end
    if entry.use ~= nil and type(entry.use) ~= "string" then fail(file, key .. ".use", "must be a string") end
    if entry.file ~= nil and type(entry.file) ~= "string" then fail(file, key .. ".file", "must be a string") end
    if entry.name ~= nil and type(entry.name) ~= "string" then
      fail(file, key .. ".name", "must be a string, got " .. type(entry.name))
    end
    if entry.sinks ~= nil then
      if type(entry.sinks) ~= "table" then fail(file, key .. ".sinks", "must be a list of sink names") end
      for j, sname in pairs(entry.sinks) do
        if type(j) ~= "number" or not (config.sinks or {})[sname] then
          fail(file, key .. ".sinks", "no sink named " .. options.value(sname) .. " in sinks")
        end
      end
    end
    if entry.enabled ~= nil and type(entry.enabled) ~= "boolean" then
      fail(file, key .. ".enabled", "must be true or false, got " .. type(entry.enabled))
    end
    local name = _M.entry_name(entry)
    if seen[name] then fail(file, key, "a second collector named '" .. name .. "' (set name = ...)") end
    seen[name] = true
  end
  for k in pairs(config.collectors or {}) do
    if type(k) ~= "number" then fail(file, "collectors." .. tostring(k), "collectors must be a list") end
  end
  return config
end

--- prepare(config, file, opts) -> the effective configuration: profile
-- merged, environment applied, validated. opts.profile, opts.env (default:
-- the process environment).
function _M.prepare(config, file, opts)
  opts = opts or {}
  local c = deep_merge({}, config)
  if opts.profile then
    local profiles = config.profiles or {}
    if type(profiles) ~= "table" then fail(file, "profiles", "must be a table, got " .. type(profiles)) end
    if type(profiles[opts.profile]) ~= "table" then
      fail(file, "profiles." .. opts.profile, "no such profile")
    end
    c = deep_merge(c, profiles[opts.profile])
  end
  c.profiles = nil
  -- the env may address collectors by name: validate their shape first
  _M.validate(c, file)
  _M.apply_env(c, opts.env or require("sluice").environ(), file)
  _M.validate(c, file)
  -- classified once: views show redact's projection, and the secrets met
  -- here are scrubbed from logs from now on
  redact.classify(c)
  return c
end

return _M
