--- sluice.options: the one checker of option tables, and the words of the
-- misuse messages about them (docs/lua-api.md, Options).
--
--   local options = require "sluice.options"
--   local EVERY = { jitter = { type = "number", min = 0, lt = 1 } }
--   options.check("sluice.every", opts, EVERY)
--   --> raises "sluice.every: option 'jitter' must be a number in [0, 1), got 2"
--
-- Owns nothing but a cache of parsed type strings. Pure Lua; no call
-- yields (a spec's check function must not either).
--
-- options.check(fname, opts, schema [, level]) -> opts
--   Raises, at `level` (as the caller would pass it to error(): 2, the
--   default, blames the caller's caller), the first problem found:
--     <fname>: unknown option '<path>'
--     <fname>: option '<path>' must be <what>, got <type or value>
--     <fname>: option '<path>' is required
--   Unknown keys are looked for first, then values, then missing required
--   keys; among several problems of one kind, the smallest path is named,
--   so the message does not depend on table order. A value of the wrong
--   type is told by its type ("got string"), any other by its value ("got
--   0", "got inf", "got 'drop'", "got {}" for an empty table). opts may be
--   nil (no options: only required keys can fail); any other non-table
--   raises "<fname>: options must be a table, got <type>".
-- options.problem(opts, schema) -> nil | path, kind, text
--   The same search without raising, for callers whose messages have their
--   own frame (sluice.config's "file: key: message"): kind is "unknown"
--   (text "unknown option"), "invalid" (text "must be <what>, got <...>")
--   or "required" (text "is required").
-- options.describe(spec) -> <what>, as the messages say it ("a number in
--   [0, 1)", "a string or a table", "'reject' or 'ignore'").
-- options.value(v) -> v as the messages write a value ("'x'", "0.1", "{}").
-- options.merge(base, over) -> a new table: base's keys, then over's (both
--   may be nil; neither is changed). Shallow: layering a call's options
--   over configured defaults.
--
-- A schema maps each accepted key to a spec: a type string, or a table:
--   type      "number", "string|table", ... (Lua type names joined by |;
--             "any": any non-nil value). Default "any", or "number" when
--             the spec has a number constraint below
--   required  true: the key must be present
--   finite    numbers: not nan, inf or -inf
--   integer   numbers: a whole finite number
--   min, max  numbers: closed bounds (v >= min, v <= max)
--   gt, lt    numbers: open bounds (v > gt, v < lt); nan fails every bound
--   one_of    a list of the accepted values
--   check     fn(v) -> truthy when v is acceptable (called once the type
--             and the constraints above hold)
--   what      the description the message uses instead of the generated
--             one (give it with check, which the generator cannot read)
--   fields    for a table value: the schema of its keys ('<key>.<sub>')
--   items     for a table value: the spec of each element 1..#v ('<key>[i]')
--   values    for a table value: the spec of every value ('<key>.<name>',
--             or '<key>[k]' for a key that is not a string)
local json = require "sluice.json"

local type, pairs, ipairs, tostring, error, next = type, pairs, ipairs, tostring, error, next
local floor, huge = math.floor, math.huge
local concat = table.concat

local _M = {}

local TYPE_NAMES = {
  ["nil"] = true, boolean = true, number = true, string = true, table = true,
  ["function"] = true, thread = true, userdata = true, cdata = true, any = true,
}

-- "string|table" -> { string = true, table = true, list = { "string", "table" } }
local parsed = {}

local function types_of(t)
  local p = parsed[t]
  if p then return p end
  p = { list = {} }
  for name in t:gmatch("[^|]+") do
    if not TYPE_NAMES[name] then
      error("sluice.options: a schema names an unknown type '" .. name .. "' (in '" .. t .. "')", 0)
    end
    p[name] = true
    p.list[#p.list + 1] = name
  end
  parsed[t] = p
  return p
end

-- A spec given as a type string, as a table.
local simple = {}

-- The spec's type string (see the header for the default).
local function type_of(spec)
  if spec.type then return spec.type end
  if spec.finite or spec.integer or spec.min ~= nil or spec.max ~= nil or spec.gt ~= nil
      or spec.lt ~= nil then
    return "number"
  end
  return "any"
end

local function spec_of(s)
  if type(s) == "table" then return s end
  local t = simple[s]
  if not t then
    if type(s) ~= "string" then
      error("sluice.options: a schema entry must be a type string or a table, got " .. type(s), 0)
    end
    t = { type = s }
    simple[s] = t
  end
  return t
end

--- value(v) -> v as a message writes it.
local function value_text(v)
  local tv = type(v)
  if tv == "number" then
    return json.number(v) or tostring(v)
  elseif tv == "string" then
    if #v > 40 then v = v:sub(1, 37) .. "..." end
    return "'" .. v .. "'"
  elseif tv == "boolean" or tv == "nil" then
    return tostring(v)
  elseif tv == "table" and next(v) == nil then
    return "{}"
  end
  return tv
end
_M.value = value_text

local function article(noun)
  return (noun:find("^[aeiou]") and "an " or "a ") .. noun
end

local function either(list)
  if #list == 1 then return list[1] end
  return concat(list, ", ", 1, #list - 1) .. " or " .. list[#list]
end

local function number_words(spec)
  local words = spec.integer and "an integer" or (spec.finite and "a finite number" or "a number")
  local lo, hi = spec.min, spec.max
  local lo_open, hi_open = lo == nil and spec.gt ~= nil, hi == nil and spec.lt ~= nil
  if lo == nil then lo = spec.gt end
  if hi == nil then hi = spec.lt end
  if lo ~= nil and hi ~= nil then
    return words .. " in " .. (lo_open and "(" or "[") .. value_text(lo) .. ", " .. value_text(hi)
      .. (hi_open and ")" or "]")
  elseif lo ~= nil then
    return words .. (lo_open and " > " or " >= ") .. value_text(lo)
  elseif hi ~= nil then
    return words .. (hi_open and " < " or " <= ") .. value_text(hi)
  end
  return words
end

--- describe(spec) -> what the spec accepts, in the messages' words.
local function describe(spec)
  spec = spec_of(spec)
  if spec.what then return spec.what end
  if spec.one_of then
    local list = {}
    for i, v in ipairs(spec.one_of) do list[i] = value_text(v) end
    return either(list)
  end
  local words = {}
  for _, name in ipairs(types_of(type_of(spec)).list) do
    if name == "number" then
      words[#words + 1] = number_words(spec)
    elseif name == "any" then
      words[#words + 1] = "a value"
    elseif name == "nil" then
      words[#words + 1] = "nil"
    else
      words[#words + 1] = article(name)
    end
  end
  return either(words)
end
_M.describe = describe

-- Whether the number v meets spec's constraints.
local function number_ok(spec, v)
  if (spec.finite or spec.integer) and not (v > -huge and v < huge) then return false end
  if spec.integer and v ~= floor(v) then return false end
  if spec.min ~= nil and not (v >= spec.min) then return false end
  if spec.max ~= nil and not (v <= spec.max) then return false end
  if spec.gt ~= nil and not (v > spec.gt) then return false end
  if spec.lt ~= nil and not (v < spec.lt) then return false end
  return true
end

local function member(list, v)
  for _, x in ipairs(list) do
    if x == v then return true end
  end
  return false
end

local function sub_path(path, k)
  if type(k) == "string" then return path .. "." .. k end
  return path .. "[" .. value_text(k) .. "]"
end

-- Problems are { path, kind, text }; better(a, b) keeps the one to name.
local function better(best, path, kind, text)
  if best == nil or path < best[1] then return { path, kind, text } end
  return best
end

local find

-- The problem with v (not nil) at path under spec, or nil.
local function value_problem(spec, v, path)
  spec = spec_of(spec)
  local tv = type(v)
  local types = types_of(type_of(spec))
  if not (types.any or types[tv]) then
    return { path, "invalid", "must be " .. describe(spec) .. ", got " .. tv }
  end
  if (tv == "number" and not number_ok(spec, v))
      or (spec.one_of and not member(spec.one_of, v))
      or (spec.check and not spec.check(v)) then
    return { path, "invalid", "must be " .. describe(spec) .. ", got " .. value_text(v) }
  end
  if tv ~= "table" then return nil end
  if spec.fields then
    local p = find(v, spec.fields, path)
    if p then return p end
  end
  local best
  if spec.items then
    for i = 1, #v do
      local x = v[i]
      local p = x == nil and { path .. "[" .. i .. "]", "invalid", "must be " .. describe(spec.items) .. ", got nil" }
        or value_problem(spec.items, x, path .. "[" .. i .. "]")
      if p then best = better(best, p[1], p[2], p[3]) end
    end
  end
  if spec.values then
    for k, x in pairs(v) do
      local p = value_problem(spec.values, x, sub_path(path, k))
      if p then best = better(best, p[1], p[2], p[3]) end
    end
  end
  return best
end

-- The problem to name in opts under schema (prefix: opts's own path, or nil).
function find(opts, schema, prefix)
  local best
  for k in pairs(opts) do
    if schema[k] == nil then
      best = better(best, prefix and sub_path(prefix, k) or tostring(k), "unknown", "unknown option")
    end
  end
  if best then return best end
  for k, v in pairs(opts) do
    local p = value_problem(schema[k], v, prefix and sub_path(prefix, k) or tostring(k))
    if p then best = better(best, p[1], p[2], p[3]) end
  end
  if best then return best end
  for k, s in pairs(schema) do
    if type(s) == "table" and s.required and opts[k] == nil then
      best = better(best, prefix and sub_path(prefix, k) or tostring(k), "required", "is required")
    end
  end
  return best
end

local EMPTY = {}

function _M.problem(opts, schema)
  if type(schema) ~= "table" then
    error("sluice.options.problem: bad argument #2 'schema' (table expected, got " .. type(schema) .. ")", 2)
  end
  local p = find(opts == nil and EMPTY or opts, schema, nil)
  if p then return p[1], p[2], p[3] end
  return nil
end

function _M.check(fname, opts, schema, level)
  if type(fname) ~= "string" then
    error("sluice.options.check: bad argument #1 'fname' (string expected, got " .. type(fname) .. ")", 2)
  end
  if type(schema) ~= "table" then
    error("sluice.options.check: bad argument #3 'schema' (table expected, got " .. type(schema) .. ")", 2)
  end
  level = (level or 2) + 1
  if opts ~= nil and type(opts) ~= "table" then
    error(fname .. ": options must be a table, got " .. type(opts), level)
  end
  local p = find(opts == nil and EMPTY or opts, schema, nil)
  if not p then return opts end
  if p[2] == "unknown" then
    error(fname .. ": unknown option '" .. p[1] .. "'", level)
  end
  error(fname .. ": option '" .. p[1] .. "' " .. p[3], level)
end

function _M.merge(base, over)
  local out = {}
  for k, v in pairs(base or {}) do out[k] = v end
  for k, v in pairs(over or {}) do out[k] = v end
  return out
end

return _M
