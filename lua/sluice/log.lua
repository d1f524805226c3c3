--- sluice.log: structured logging.
-- log.info("fetched", { rows = 12 }) writes one JSON line (or a console line
-- on a terminal) and keeps it in a ring of recent entries. log.with{...}
-- returns a logger whose fields are added to every entry. Messages and
-- field values go through sluice.redact.text: URL user info, credential-like
-- query values and the configuration's secrets never reach a line.
local core = require "sluice._log"
local redact = require "sluice.redact"

local levels = { "trace", "debug", "info", "warning", "error", "critical" }

local function merge(ctx, fields)
  if not fields then
    return ctx
  end
  if not ctx then
    return fields
  end
  local out = {}
  for k, v in pairs(ctx) do
    out[k] = v
  end
  for k, v in pairs(fields) do
    out[k] = v
  end
  return out
end

-- fields are flat (a table value logs as its tostring): scrub the strings
local function scrubbed(fields)
  if not fields then return nil end
  local out = {}
  for k, v in pairs(fields) do
    if type(v) == "string" then v = redact.text(v)
    elseif type(v) == "table" then v = redact.text(tostring(v)) end
    out[k] = v
  end
  return out
end

local function check_fields(fields, name)
  if fields ~= nil and type(fields) ~= "table" then
    error("sluice.log." .. name .. ": bad argument #2 'fields' (table expected, got "
      .. type(fields) .. ")", 3)
  end
end

-- The function of level `name` logging with ctx's fields.
local function level_fn(name, ctx)
  return function(msg, fields)
    check_fields(fields, name)
    if core.enabled(name) then
      core.write(name, redact.text(tostring(msg)), scrubbed(merge(ctx, fields)))
    end
  end
end

local is_level = { warn = "warning" }
for _, name in ipairs(levels) do is_level[name] = name end

local logger

-- A logger of log.with is a table holding its fields (ctx_) under one
-- shared metatable: its functions (info, warning, ..., with) are made on
-- first use, each once per logger, so that a logger nobody logs through
-- (a collector's, most of the time) costs two small tables, not the nine
-- closures made up front before (1.4 KB). l.info(msg) keeps working as a
-- plain function (the fields are its upvalue, not a self argument).
local logger_mt = {
  __index = function(l, k)
    local ctx = rawget(l, "ctx_")
    local fn
    if k == "with" then
      --- with(fields) -> a logger adding these fields (and the parent's)
      -- to every entry.
      fn = function(fields)
        if type(fields) ~= "table" then
          error("sluice.log.with: bad argument #1 'fields' (table expected, got "
            .. type(fields) .. ")", 2)
        end
        return logger(merge(ctx, fields))
      end
    elseif is_level[k] then
      if k == "warn" then
        fn = l.warning
      else
        fn = level_fn(k, ctx)
      end
    else
      return nil
    end
    rawset(l, k, fn)
    return fn
  end,
}

logger = function(ctx)
  return setmetatable({ ctx_ = ctx }, logger_mt)
end

local _M = {}
for _, name in ipairs(levels) do _M[name] = level_fn(name, nil) end
_M.warn = _M.warning
_M.with = logger(nil).with

_M.level = core.level         -- level([name]) -> current level name
_M.format = core.format       -- format(["json"|"console"]) -> current format
_M.enabled = core.enabled     -- enabled(level) -> boolean
_M.ring_size = core.ring_size -- ring_size([n]) -> capacity
_M.output = core.output       -- output(path | "-" | "stderr") -> true | nil, err
_M.is_terminal = core.is_terminal -- is_terminal() -> whether stdout is a terminal
-- dropped() -> lines, bytes the output did not keep up with (or failed on):
-- writing never blocks the loop, a full queue (1 MiB) drops the line instead.
_M.dropped = core.dropped
_M.flush = core.flush -- flush([timeout=1]) -> whether every queued line went out

--- recent([n]) -> the newest n kept entries (all by default), oldest first,
-- each decoded into a table.
function _M.recent(n)
  local decode = require("sluice.json").decode
  local out = {}
  for i, line in ipairs(core.recent(n)) do
    out[i] = decode(line) or { msg = line }
  end
  return out
end

return _M
