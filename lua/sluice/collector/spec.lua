--- sluice.collector.spec: the options of a collector spec and their checks.
--
-- collector.define{} and collector.new() validate a spec, and a
-- configuration entry's overrides of it, here: OPTIONS names every
-- framework option and the types it takes; check() raises an error naming
-- the option at fault; configure() resolves a configuration entry's
-- overrides; no_jit() keeps a collector's own functions out of
-- LuaJIT's compiled code so that the run budget's watchdog can stop them.
-- It owns no state. Nothing here yields.
local sluice = require "sluice"
local options = require "sluice.options"
local secret = require "sluice.collector.secret"

local _M = {}

-- sluice.collector.stream's stream_batch option (rows, age), checked with
-- the other framework options
local stream_batch = {
  type = "table",
  fields = {
    rows = { finite = true, min = 1, what = "an integer >= 1", check = function(v) return v == math.floor(v) end },
    age = { finite = true, gt = 0 },
  },
}

local FINITE_POSITIVE = { finite = true, gt = 0 }

local RUN_BUDGET = {
  type = "table|boolean", what = "a table or false", check = function(v) return v ~= true end,
  fields = { cpu = sluice.BUDGET_LIMIT, wall = sluice.BUDGET_LIMIT },
}

-- A dataset's options (datasets = { name = {...} }): its schedule, its
-- collect and the table a list of its rows goes to. DATASET_OVERRIDES: the
-- ones a configuration entry may change, per dataset.
local DATASET_OVERRIDES = {
  interval = FINITE_POSITIVE, jitter = { min = 0, lt = 1 }, first_delay = { finite = true, min = 0 },
  enabled = "boolean", run_budget = RUN_BUDGET,
}
local DATASET = { collect = { type = "function", required = true }, table = "string",
  description = "string" }
for k, v in pairs(DATASET_OVERRIDES) do DATASET[k] = v end

--- OPTIONS: the schema (sluice.options) of the framework options.
_M.OPTIONS = {
  name = {
    type = "string", what = "an identifier (letters, digits, _)",
    check = function(v) return v:match("^[%a_][%w_]*$") ~= nil end,
  },
  base_url = "string", interval = FINITE_POSITIVE, jitter = { min = 0, lt = 1 },
  timeout = FINITE_POSITIVE, auth = "table", limiter = "table|boolean", breaker = "table|boolean",
  max_body = FINITE_POSITIVE, -- bytes of an answer (sluice.collector.request)
  retry = "table|boolean", tables = "table", options = "table", collect = "function",
  classify = "function", init = "function", close = "function", backfill = "function",
  backfill_step = "number|function", expect = "table|function", headers = "table",
  description = "string", endpoint = "function", backfill_requests = "number|function",
  beginning_date = "string|number", enabled = "boolean",
  run_budget = RUN_BUDGET,
  partitions = "table|function",
  -- several independent services behind one collector (six MEV relays):
  -- a breaker and a limiter per target (sluice.collector, "targets")
  targets = "table|function",
  -- migrate(store, self): brings an older layout of the collector's tables
  -- to the current one, before they are defined (sluice.collector.new)
  migrate = "function",
  -- a long-lived stream (sluice.collector.stream) and the batches its
  -- rows are committed in
  stream = "function",
  stream_batch = stream_batch,
  -- collectors naming the same upstream share one limiter and one breaker
  -- (sluice.collector.upstreams); a spec's function(options) -> name
  -- names it per instance from the instance's own options (configure)
  upstream = {
    type = "string|function", what = "an upstream name (letters, digits, _, -, .) or a function",
    check = function(v) return type(v) == "function" or v:match("^[%w_.%-]+$") ~= nil end,
  },
  -- backfill's unit (sluice.backfill.unit) and its default range
  backfill_unit = { type = "string", one_of = { "seconds", "blocks", "slots", "integers" } },
  backfill_from = "number|string|cdata|function", backfill_to = "number|string|cdata|function",
  datasets = { type = "table", values = { type = "table", fields = DATASET } },
}

-- What a schema cannot say: auth takes exactly one way, and a value with
-- a header or a query name.
local function check_auth(a, where, level)
  local n = (a.bearer ~= nil and 1 or 0) + (a.header ~= nil and 1 or 0) + (a.query ~= nil and 1 or 0)
  if n ~= 1 then
    error(where .. ": option 'auth' needs exactly one of bearer = <token>, header = <name>, query = <name>", level)
  end
  if (a.header or a.query) and a.value == nil then
    error(where .. ": option 'auth' needs a value (a string or collector.env(\"NAME\"))", level)
  end
end

--- expect_table(expect, tables) -> the table gap detection counts rows
-- in, or nil, err: expect.table when it is one of tables (the collector's
-- {name = definition}), else the collector's only table. Several tables
-- and no expect.table is an error rather than a guess: counting in the
-- wrong table finds every window short and refetches it forever.
function _M.expect_table(expect, tables)
  local names = {}
  for name in pairs(tables or {}) do names[#names + 1] = name end
  table.sort(names)
  local listed = "(" .. table.concat(names, ", ") .. ")"
  if expect.table ~= nil then
    if type(expect.table) == "string" and (tables or {})[expect.table] then return expect.table end
    return nil, "table " .. options.value(expect.table) .. " is not one of the collector's tables " .. listed
  end
  if #names == 1 then return names[1] end
  if #names == 0 then return nil, "has no table to count rows in: the collector declares none" end
  return nil, "names no table, and the collector declares several " .. listed .. ": set expect.table"
end

local function check_expect(spec, where, level)
  local _, err = _M.expect_table(spec.expect, spec.tables)
  if err then error(where .. ": option 'expect' " .. err, level) end
end

-- An integer backfill unit counts windows in whole steps of its own: no
-- default step (a day of seconds means nothing in blocks), and an integer.
local function check_integer_unit(spec, where, level)
  local step = spec.backfill_step
  if step == nil and spec.backfill then
    error(where .. ": option 'backfill_step' is required with backfill_unit = '" .. spec.backfill_unit
      .. "' (the window length in " .. spec.backfill_unit .. ")", level)
  end
  if type(step) == "number" and not (step >= 1 and step <= 2 ^ 53 and step == math.floor(step)) then
    error(where .. ": option 'backfill_step' must be an integer number of " .. spec.backfill_unit
      .. " from 1 to 2^53, got " .. options.value(step), level)
  end
end

-- What a schema cannot say about datasets: at least one, named by
-- identifiers, and a table each names is one the collector declares.
local function check_datasets(spec, where, level)
  if next(spec.datasets) == nil then
    error(where .. ": option 'datasets' is empty: declare at least one dataset", level)
  end
  for name, ds in pairs(spec.datasets) do
    if type(name) ~= "string" or not name:match("^[%a_][%w_]*$") then
      error(where .. ": option 'datasets' names a dataset " .. options.value(name)
        .. ": names are identifiers (letters, digits, _)", level)
    end
    if ds.table ~= nil and not (spec.tables or {})[ds.table] then
      error(where .. ": option 'datasets." .. name .. ".table' names table '" .. ds.table
        .. "', which the collector does not declare in tables", level)
    end
  end
end

--- check(spec, where, level): raises "where: ..." for an unknown option,
-- a wrong type or a value out of range; level as error() counts it from
-- check (3: the caller of check's caller). An expect function is checked
-- when a backfill is planned (sluice.backfill.plan).
function _M.check(spec, where, level)
  options.check(where, spec, _M.OPTIONS, level)
  if spec.auth then check_auth(spec.auth, where, level + 1) end
  if spec.backfill_unit and spec.backfill_unit ~= "seconds" then check_integer_unit(spec, where, level + 1) end
  if spec.datasets then check_datasets(spec, where, level + 1) end
  if type(spec.expect) == "table" then check_expect(spec, where, level + 1) end
end

local merge = options.merge

local BOOKKEEPING = { use = true, file = true } -- the configuration's, not ours

-- A collector's own option whose default is a string takes a string or a
-- secret (collector.env("NAME"): an API key, a URL with a key in it),
-- which the collector reveals when it uses it. (Messages say "a string",
-- as for any string option.)
local STRING_OR_SECRET = {
  type = "string|table", what = "a string",
  check = function(v) return type(v) == "string" or secret.is_secret(v) end,
}

-- The upstream a spec's upstream(options) function names for an instance
-- with the own options own; raises "where: ..." with its error, or for a
-- result that is no upstream name (nil: none).
local function upstream_of(fn, own, where, level)
  local ok, up = pcall(fn, own)
  if not ok then error(where .. ": " .. tostring(up), level + 1) end
  if up ~= nil and (type(up) ~= "string" or not up:match("^[%w_.%-]+$")) then
    error(where .. ": the spec's upstream(options) must return an upstream name (letters, digits, _, -, .) "
      .. "or nil, got " .. options.value(up), level + 1)
  end
  return up
end

--- configure(spec, overrides, level) -> cfg, own. A configuration entry's
-- overrides split into framework options (cfg: the spec with them merged
-- over it) and the collector's own options (own: spec.options with the
-- overrides of them, each of the type of its default; a string's may be
-- a collector.env secret). A spec's upstream given as function(own) ->
-- name | nil, when the entry sets no upstream, is called here and cfg
-- gets its result: one upstream per instance from its options (the EVM
-- kit's per chain); an error it raises refuses the options. Raises for an
-- unknown option or a wrong type; level as error() counts it from
-- configure (3: the caller of configure's caller).
-- The schema of a spec's overrides, made once per spec (weak keys: it
-- goes with the spec): ten thousand instances of one spec share it. It
-- depends only on the types of the spec's own options and the names of
-- its datasets, so specs alike share one too (by_shape, weak values): the
-- app runs a collector's file once per entry, and a thousand entries of
-- one file are a thousand specs (a schema is ~1.2 KB).
local schemas = setmetatable({}, { __mode = "k" })
local by_shape = setmetatable({}, { __mode = "v" })

local function own_type(v)
  return type(v) == "string" and STRING_OR_SECRET or type(v)
end

local function shape_of(spec)
  local parts = {}
  for k, v in pairs(spec.options or {}) do
    parts[#parts + 1] = "o" .. k .. "=" .. (own_type(v) == STRING_OR_SECRET and "secret" or type(v))
  end
  for name in pairs(spec.datasets or {}) do parts[#parts + 1] = "d" .. name end
  table.sort(parts)
  return table.concat(parts, "\0")
end

local function schema_of(spec)
  local schema = schemas[spec]
  if schema then return schema end
  local shape = shape_of(spec)
  schema = by_shape[shape]
  if schema then
    schemas[spec] = schema
    return schema
  end
  -- the collector's own options take the type of their defaults; a
  -- framework option of the same name is the framework's
  schema = {}
  for k, v in pairs(spec.options or {}) do schema[k] = own_type(v) end
  for k, v in pairs(_M.OPTIONS) do
    if k ~= "options" then schema[k] = v end
  end
  for k in pairs(BOOKKEEPING) do schema[k] = "any" end
  -- datasets: per dataset of the spec, its schedule's options
  local per_dataset = {}
  for name in pairs(spec.datasets or {}) do
    per_dataset[name] = { type = "table", fields = DATASET_OVERRIDES }
  end
  schema.datasets = { type = "table", fields = per_dataset }
  schemas[spec] = schema
  by_shape[shape] = schema
  return schema
end

function _M.configure(spec, overrides, level)
  local where = "collector '" .. (overrides.name or spec.name) .. "'"
  options.check(where, overrides, schema_of(spec), level)
  local own, framework = merge(spec.options, nil), {}
  for k, v in pairs(overrides) do
    if BOOKKEEPING[k] then
      framework[k] = nil
    elseif _M.OPTIONS[k] and k ~= "options" then
      framework[k] = v
    else
      own[k] = v
    end
  end
  if framework.auth then check_auth(framework.auth, where, level + 1) end
  if framework.datasets then
    -- (an empty table is all a collector without datasets lets through)
    local merged = spec.datasets and {}
    for name, ds in pairs(spec.datasets or {}) do merged[name] = merge(ds, framework.datasets[name]) end
    framework.datasets = merged
  end
  local cfg = merge(spec, framework)
  if type(cfg.upstream) == "function" then cfg.upstream = upstream_of(cfg.upstream, own, where, level + 1) end
  return cfg, own
end

--- run_budget(cfg, interval [, dataset, ds]) -> {cpu, wall, label} | nil:
-- a run's budget (sluice.budget) from the run_budget option. By default 5 s
-- of CPU, and a wall clock of ten request timeouts or two intervals for
-- slow collectors; false turns a limit off, or both. For the dataset
-- named dataset (options ds), its own run_budget, else the collector's.
function _M.run_budget(cfg, interval, dataset, ds)
  local rb = cfg.run_budget
  if ds and ds.run_budget ~= nil then rb = ds.run_budget end
  if rb == false then return nil end
  local b = type(rb) == "table" and rb or {}
  local wall = math.max(10 * (cfg.timeout or 30), 2 * interval)
  local cpu = b.cpu == nil and 5 or b.cpu
  wall = b.wall == nil and wall or b.wall
  if cpu or wall then
    return { cpu = cpu, wall = wall, label = "collector " .. cfg.name
      .. (dataset and (": dataset " .. dataset) or "") .. ": run" }
  end
  return nil
end

--- no_jit(spec): the run budget's watchdog (sluice.budget) acts through
-- a hook, which LuaJIT never runs inside compiled loops: the collector's
-- own functions -- the spec's, and those of its file they reach through
-- upvalues -- run interpreted. Collectors spend their time waiting on the network, so
-- this costs little (README, "Run budget").
function _M.no_jit(spec)
  if not jit then return end
  local sources, seen, pending = {}, {}, {}
  local function push(v)
    if not seen[v] then seen[v] = true; pending[#pending + 1] = v end
  end
  local function root(v)
    if type(v) == "function" then
      local info = debug.getinfo(v, "S")
      if info.what ~= "C" then sources[info.source] = true; push(v) end
    end
  end
  for _, v in pairs(spec) do root(v) end
  for _, ds in pairs(spec.datasets or {}) do root(ds.collect) end
  while #pending > 0 do
    local v = table.remove(pending)
    if type(v) == "table" then
      for _, f in pairs(v) do
        if type(f) == "function" then push(f) end
      end
    elseif sources[debug.getinfo(v, "S").source] then
      jit.off(v, true)
      for i = 1, math.huge do
        local name, up = debug.getupvalue(v, i)
        if not name then break end
        if type(up) == "function" or type(up) == "table" then push(up) end
      end
    end
  end
end

return _M
