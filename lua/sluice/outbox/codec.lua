--- sluice.outbox.codec: a row's JSON text (sluice.json.encode's), written
-- fast for the rows of a defined table: how the outbox queues rows given
-- without the store's layout (route:enqueue without it; with it, the
-- rows are written in C by sluice._outbox from the values the store bound).
--
--   local codec = require "sluice.outbox.codec"
--   local plan = codec.plan(columns)          -- once per table definition
--   local text, err = codec.encode_row(row, plan [, stored, r])
--   local array, err, i = codec.encode_rows(rows, plan, stored, from, to)
--
-- encode_row gives exactly the text sluice.json.encode(row) gives (the same
-- bytes, so the same values when decoded: int64 cdata, json.numeral, json
-- columns' tables), or its nil, err. It writes the row's fields in the
-- sorted order of the plan's column names, each scalar directly (strings
-- through cjson's escaping, numbers as sluice.json.number writes them); a
-- json column's table is the text the store wrote for it (stored(r, col),
-- the store's upsert hook gives it: sluice.json.encode's text of that
-- value), or without stored, sluice.json.encode's. A row with a field that
-- is not a column (the store ignores those unless the table rejects
-- unknown fields) is encoded by sluice.json.encode whole. (One difference:
-- a json value nested 64 deep, which the store took, is kept; encoding the
-- whole row failed at that depth.) json.encode sorts an object's keys and
-- walks every value generically (its recursion leaves it interpreted): it
-- was most of the outbox's cost on the collection path
-- (tests/bench/outbox.lua). Owns no state; no call yields.
local json = require "sluice.json"
local cjson = require "cjson.safe"
local ffi = require "ffi"

local buffer = require "string.buffer"

local type, pairs, ipairs, getmetatable = type, pairs, ipairs, getmetatable
local tonumber = tonumber
local floor, format, huge = math.floor, string.format, math.huge
local sort, find = table.sort, string.find
local encode, number, numeral_text = json.encode, json.number, json.numeral_text
local encode_string, null, empty_array = cjson.encode, json.null, json.empty_array
local istype, int64_t, uint64_t = ffi.istype, ffi.typeof("int64_t"), ffi.typeof("uint64_t")

local _M = {}

local TWO53 = 2 ^ 53

--- plan(columns) -> the plan of a table whose columns are the keys of
-- columns (a def's columns: name -> type): the names sorted as
-- sluice.json sorts an object's keys, each one's '"name":' text, the set
-- of names, and which are json columns.
function _M.plan(columns)
  local names = {}
  for name in pairs(columns or {}) do
    if type(name) == "string" then names[#names + 1] = name end
  end
  sort(names)
  local prefix, set, isjson = {}, {}, {}
  for i, name in ipairs(names) do
    prefix[i] = encode_string(name) .. ":"
    set[name] = true
    local t = columns[name]
    if type(t) == "table" then t = t.type end
    isjson[i] = t == "json"
  end
  return { names = names, prefix = prefix, set = set, json = isjson, n = #names }
end

-- One buffer for every row (no call yields between its reset and its
-- tostring): the fields go into it without a string each.
local buf = buffer.new(256)

-- Appends to b the text of a scalar value as sluice.json writes it ->
-- true, or false when v is not one the fast path knows (nothing appended).
local function put_scalar(b, v)
  local tv = type(v)
  if tv == "string" then
    if find(v, '[%c"/\\]') then -- what cjson escapes
      b:put(encode_string(v))
    else
      b:put('"', v, '"')
    end
    return true
  end
  if tv == "number" then
    -- integral within +-2^53 (not -0): "%d", as sluice.json writes them
    if v == floor(v) and v > -TWO53 and v < TWO53 and (v ~= 0 or 1 / v > 0) then
      b:putf("%d", v)
      return true
    end
    if v ~= v or v == huge or v == -huge or v == 0 then return false end
    -- the shortest of %.15g, %.16g, %.17g that reads back as v (json's)
    local s = format("%.15g", v)
    if tonumber(s) ~= v then
      s = format("%.16g", v)
      if tonumber(s) ~= v then s = format("%.17g", v) end
    end
    b:put(s)
    return true
  end
  if tv == "boolean" then
    b:put(v and "true" or "false")
    return true
  end
  if v == null then
    b:put("null")
    return true
  end
  if tv == "table" then
    local s = numeral_text(v)
    if s then b:put(s) end
    return s ~= nil
  end
  if tv == "cdata" and (istype(int64_t, v) or istype(uint64_t, v)) then
    b:put((number(v)))
    return true
  end
  return false
end

-- Appends row's text to b -> true | nil, err (b then holds a part of it).
local function put_row(b, row, plan, stored, r)
  if type(row) ~= "table" or getmetatable(row) ~= nil then
    local s, err = encode(row)
    if s == nil then return nil, err end
    b:put(s)
    return true
  end
  local set = plan.set
  local count = 0
  for k in pairs(row) do
    if not set[k] then -- a field that is no column
      local s, err = encode(row)
      if s == nil then return nil, err end
      b:put(s)
      return true
    end
    count = count + 1
  end
  if count == 0 then
    b:put((encode(row)))
    return true
  end
  local names, prefix, isjson = plan.names, plan.prefix, plan.json
  local sep = "{"
  for i = 1, plan.n do
    local v = row[names[i]]
    if v ~= nil then
      b:put(sep, prefix[i])
      sep = ","
      if not put_scalar(b, v) then
        local s
        if stored and isjson[i] and type(v) == "table" then s = stored(r, names[i]) end
        if type(s) ~= "string" then
          local err
          s, err = encode(v)
          if s == nil then return nil, err end
        end
        b:put(s)
      end
    end
  end
  b:put("}")
  return true
end

--- encode_row(row, plan [, stored, r]) -> text | nil, err:
-- sluice.json.encode(row); stored(r, col) -> the text the store wrote for a
-- json column's table (row r of the batch the store's hook gave).
function _M.encode_row(row, plan, stored, r)
  buf:reset()
  local ok, err = put_row(buf, row, plan, stored, r)
  if not ok then return nil, err end
  return buf:tostring()
end

--- encode_rows(rows, plan, stored, from, to) -> text | nil, err, i: the
-- JSON array of rows[from..to], each row's text encode_row's (so the array
-- decodes to exactly those rows); i is the row that cannot be written.
-- stored(r, col) as encode_row's, r the row's index in rows.
function _M.encode_rows(rows, plan, stored, from, to)
  buf:reset()
  buf:put("[")
  for r = from, to do
    if r > from then buf:put(",") end
    local ok, err = put_row(buf, rows[r], plan, stored, r)
    if not ok then return nil, err, r end
  end
  buf:put("]")
  return buf:tostring()
end

--- encode_value(v) -> text | nil, err: sluice.json.encode(v), the same
-- bytes; an object with string keys or an array whose values are all
-- scalars (a json column's usual value) written directly, anything else by
-- sluice.json.encode.
local vbuf = buffer.new(128)
function _M.encode_value(v)
  if type(v) ~= "table" or v == empty_array or numeral_text(v) then return encode(v) end
  local mt = getmetatable(v)
  if mt ~= nil and mt ~= "sluice.json.array" then return encode(v) end
  local n, count, strings = #v, 0, true
  for k in pairs(v) do
    count = count + 1
    if type(k) ~= "string" then strings = false end
  end
  vbuf:reset()
  local ok = true
  if (mt ~= nil or (n > 0 and count == n)) and count == n then
    vbuf:put("[")
    for i = 1, n do
      if i > 1 then vbuf:put(",") end
      if not put_scalar(vbuf, v[i]) then ok = false break end
    end
    vbuf:put("]")
  elseif mt == nil and strings then
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    sort(keys)
    vbuf:put("{")
    for i = 1, #keys do
      vbuf:put(i > 1 and "," or "", encode_string(keys[i]), ":")
      if not put_scalar(vbuf, v[keys[i]]) then ok = false break end
    end
    vbuf:put("}")
  else
    ok = false
  end
  if not ok then return encode(v) end
  return vbuf:tostring()
end

return _M
