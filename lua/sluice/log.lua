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

local function logger(ctx)
  local l = {}
  for _, name in ipairs(levels) do
    l[name] = function(msg, fields)
      check_fields(fields, name)
      if core.enabled(name) then
        core.write(name, redact.text(tostring(msg)), scrubbed(merge(ctx, fields)))
      end
    end
  end
  l.warn = l.warning
  --- with(fields) -> a logger adding these fields (and the parent's) to
  -- every entry.
  function l.with(fields)
    if type(fields) ~= "table" then
      error("sluice.log.with: bad argument #1 'fields' (table expected, got "
        .. type(fields) .. ")", 2)
    end
    return logger(merge(ctx, fields))
  end
  return l
end

local _M = logger(nil)

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
