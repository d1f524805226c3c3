--- sluice.json: exact JSON text for Lua values.
--
-- Owns no state; no call yields (plain functions, safe anywhere, also
-- inside db:transaction). The store writes json columns, rejected rows,
-- state and checkpoints with it; anything that must write a number so
-- that it reads back as the same double can use json.number.
--
--   local json = require "sluice.json"
--   json.number(0.1 + 0.2)                 --> "0.30000000000000004"
--   json.encode({ b = 1, a = { 0.1, true } })  --> '{"a":[0.1,true],"b":1}'
--
-- json.int64_text(v) -> the digits of an int64_t/uint64_t cdata, or nil.
-- json.number(v) -> text | nil, err
--   An int64_t or uint64_t cdata (1LL, 2^64-1 as 18446744073709551615ULL,
--   what db:select returns beyond 2^53) as its decimal digits, exactly and
--   without the LL/ULL suffix tostring adds. A finite number as JSON writes it: an integral value within +-2^53
--   as an integer ("%d"; -0 as "-0", which reads back as -0), any other
--   as the shortest of %.15g, %.16g and %.17g that reads back as the same
--   double (cjson keeps 14 digits, which loses the last ones of a
--   millisecond timestamp in seconds). Distinct doubles give distinct
--   text. nan, inf and -inf have no JSON spelling: nil, "cannot encode
--   <nan|inf|-inf>". Raises when v is neither. This is sluice's one
--   formatter of numbers that are stored or sent (metrics, query strings).
-- json.encode(v [, lenient]) -> text | nil, err
--   nil and json.null -> null; booleans; numbers and int64/uint64 cdata as
--   json.number; strings as cjson escapes them; json.empty_array and a
--   table marked by json.array -> an array; a table with keys 1..n only
--   (n > 0) -> an array, any other table (the empty one too) -> an object
--   with its keys sorted,
--   so equal tables encode to equal text. Object keys: strings, and numbers
--   as json.number writes them. Fails, with the reason, on nan/inf, a
--   function/userdata/thread, a key of another type or an inf key, two
--   keys that write the same text (the number 1 and the string "1"),
--   a json.array table with a key other than 1..n, or tables nested deeper
--   than 64 (a cycle). lenient = true writes those instead: nan/inf as
--   null, other values and keys as their tostring (both of two keys that
--   write the same, the string key first), a json.array table with other
--   keys as an unmarked table, a table too deep as "<nested too deep>".
-- json.empty_array: a value that encodes as [] (an empty table encodes as
--   {}): { method = "eth_blockNumber", params = json.empty_array }. It is a
--   read-only table; writing into it raises.
-- json.array([t]) -> t: marks t (a new empty table when nil) as a JSON
--   array, so that it encodes as [] while empty, and returns it; raises
--   when t is not a table or already has another metatable. Elements are
--   added as to any table: local p = json.array(); p[1] = addr.
-- json.numeral(text) -> n: a JSON number kept as its text, for numbers no
--   Lua number or int64 cdata holds exactly (2^256-1, a price with 20
--   digits). text must be a JSON number ("-12.5e3"); raises otherwise. n is
--   read-only; json.encode writes the text as it is, tostring(n) gives it,
--   and two numerals of the same text are ==. The store's uint256 and
--   decimal columns take numerals as they take decimal strings.
-- json.numeral_text(v) -> the text of a numeral, or nil for any other value.
-- json.decode(s) -> v | nil, err: exact (yajl, in C). Nothing is rounded:
--   an integer within +-(2^53-1) -> a number; beyond that within int64 ->
--   int64_t cdata, a positive one within uint64 -> uint64_t cdata; larger
--   ones, and fractions or exponents with more than 15 significant digits
--   or beyond a double's normal range (1e400, 1e-400) -> json.numeral(text);
--   other numbers -> numbers ("-0" -> -0). null -> json.null; arrays ->
--   tables marked by json.array (so [] encodes back as []); objects ->
--   tables, the last of duplicate keys wins. Strings must be strict UTF-8,
--   and \u escapes of surrogates must pair. Bad text (also "", trailing
--   garbage, nesting deeper than 1000) -> nil, "invalid JSON at byte N:
--   reason", N counted from 1 as s:sub(N, N) (#s + 1: the text ended too
--   soon). Raises when s is not a string.
-- json.null: cjson.null, the value that stands for JSON null.
local cjson = require "cjson.safe"
local ffi = require "ffi"

local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber
local error, pcall, getmetatable, setmetatable = error, pcall, getmetatable, setmetatable
local istype, int64_t, uint64_t = ffi.istype, ffi.typeof("int64_t"), ffi.typeof("uint64_t")
local floor, huge = math.floor, math.huge
local concat, sort, format = table.concat, table.sort, string.format
local null = cjson.null
local encode_string = cjson.encode

-- The metatable of json.array tables: private, so that only json.array
-- marks a table (getmetatable shows the string, not this table).
local ARRAY_MT = { __metatable = "sluice.json.array" }

local empty_array = setmetatable({}, {
  __metatable = "sluice.json.empty_array",
  __newindex = function() error("sluice.json.empty_array is read-only", 2) end,
  __tostring = function() return "sluice.json.empty_array" end,
})

local _M = { null = null, empty_array = empty_array }

-- numerals: the object -> its text (weak keys: the text goes with it)
local numeral_texts = setmetatable({}, { __mode = "k" })
local NUMERAL_MT
NUMERAL_MT = {
  __metatable = "sluice.json.numeral",
  __newindex = function() error("a sluice.json.numeral is read-only", 2) end,
  __tostring = function(n) return numeral_texts[n] end,
  __eq = function(a, b) return numeral_texts[a] ~= nil and numeral_texts[a] == numeral_texts[b] end,
}

-- Whether s is a JSON number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
local function is_json_number(s)
  local int, rest = s:match("^%-?(%d+)(.*)$")
  if not int or (#int > 1 and int:sub(1, 1) == "0") then return false end
  rest = rest:gsub("^%.%d+", "", 1)
  rest = rest:gsub("^[eE][+-]?%d+", "", 1)
  return rest == ""
end

function _M.numeral(text)
  if type(text) ~= "string" or not is_json_number(text) then
    error("sluice.json.numeral: bad argument #1 (the text of a JSON number expected, got "
      .. (type(text) == "string" and encode_string(text) or type(text)) .. ")", 2)
  end
  local n = setmetatable({}, NUMERAL_MT)
  numeral_texts[n] = text
  return n
end

function _M.numeral_text(v)
  return type(v) == "table" and numeral_texts[v] or nil
end

-- The shortest of %.15g, %.16g, %.17g that reads back as the same double.
local function encode_double(v)
  local s = format("%.15g", v)
  if tonumber(s) ~= v then
    s = format("%.16g", v)
    if tonumber(s) ~= v then s = format("%.17g", v) end
  end
  return s
end

-- The text of a finite number v; nil for nan, inf and -inf.
local function number_text(v)
  if v ~= v or v == huge or v == -huge then return nil end
  if v == floor(v) and v > -2 ^ 53 and v < 2 ^ 53 then
    if v == 0 and 1 / v < 0 then return "-0" end
    return format("%d", v)
  end
  return encode_double(v)
end

-- The digits of an int64_t or uint64_t cdata (tostring adds LL or ULL);
-- nil for any other cdata.
local function cdata_text(v)
  if istype(int64_t, v) then return (tostring(v):sub(1, -3)) end
  if istype(uint64_t, v) then return (tostring(v):sub(1, -4)) end
  return nil
end

--- int64_text(v) -> the digits of an int64_t or uint64_t cdata, or nil
-- for any other value (for encoders of other formats: query strings).
_M.int64_text = cdata_text

function _M.number(v)
  if type(v) == "cdata" then
    local s = cdata_text(v)
    if s then return s end
  end
  if type(v) ~= "number" then
    error("sluice.json.number: bad argument #1 (number or int64_t/uint64_t cdata expected, got "
      .. type(v) .. ")", 2)
  end
  local s = number_text(v)
  if not s then return nil, "cannot encode " .. tostring(v) end
  return s
end

-- The order of keys written the same (lenient): the string first.
local KEY_RANK = { string = 0, number = 1 }

local function by_rank(a, b)
  return (KEY_RANK[type(a)] or 2) < (KEY_RANK[type(b)] or 2)
end

-- Appends v's text to buf. Raises { reason } for what JSON cannot hold
-- (unless lenient); anything else raised (a metamethod) passes through.
local function encode_into(v, buf, lenient, depth)
  local tv = type(v)
  if v == nil or v == null then
    buf[#buf + 1] = "null"
  elseif tv == "boolean" then
    buf[#buf + 1] = v and "true" or "false"
  elseif tv == "number" then
    local s = number_text(v)
    if not s then
      if not lenient then error({ "cannot encode " .. tostring(v) }) end
      s = "null"
    end
    buf[#buf + 1] = s
  elseif tv == "string" then
    buf[#buf + 1] = encode_string(v)
  elseif tv == "cdata" and cdata_text(v) then
    buf[#buf + 1] = cdata_text(v)
  elseif v == empty_array then
    buf[#buf + 1] = "[]"
  elseif tv == "table" and numeral_texts[v] then
    buf[#buf + 1] = numeral_texts[v]
  elseif tv == "table" then
    if depth > 64 then
      if not lenient then error({ "cannot encode: nested too deep (a cycle?)" }) end
      buf[#buf + 1] = '"<nested too deep>"'
      return
    end
    local n, count = #v, 0
    for _ in pairs(v) do count = count + 1 end
    local marked = getmetatable(v) == "sluice.json.array"
    if marked and count ~= n then
      -- a key other than 1..n: name one (the smallest number, else any)
      local bad
      for k in pairs(v) do
        if type(k) ~= "number" or k ~= floor(k) or k < 1 or k > n then
          if bad == nil or (type(k) == "number" and (type(bad) ~= "number" or k < bad)) then bad = k end
        end
      end
      if not lenient then
        error({ "cannot encode: a json.array table has "
          .. (bad == nil and "holes" or "the key " .. tostring(bad)) })
      end
      marked = false
    end
    if marked or (n > 0 and count == n) then
      buf[#buf + 1] = "["
      for i = 1, n do
        if i > 1 then buf[#buf + 1] = "," end
        encode_into(v[i], buf, lenient, depth + 1)
      end
      buf[#buf + 1] = "]"
    else
      -- a number key is written as json.number writes it, so distinct
      -- keys give distinct text unless a string spells a number key (or,
      -- lenient, another key's tostring): strs[text] -> key, dups[text]
      -- -> every key of that text when there are several
      local keys, strs, dups = {}, {}, nil
      for k in pairs(v) do
        local tk = type(k)
        local s
        if tk == "string" then
          s = k
        elseif tk == "number" then
          s = number_text(k)
          if not s then
            if not lenient then error({ "cannot encode the key " .. tostring(k) }) end
            s = tostring(k)
          end
        elseif lenient then
          s = tostring(k)
        else
          error({ "cannot encode a " .. tk .. " key" })
        end
        if strs[s] == nil then
          keys[#keys + 1] = s
          strs[s] = k
        elseif not lenient then
          error({ "cannot encode: two keys are written " .. encode_string(s) })
        else
          dups = dups or {}
          local d = dups[s] or { strs[s] }
          d[#d + 1] = k
          dups[s] = d
        end
      end
      sort(keys)
      buf[#buf + 1] = "{"
      local first = true
      for _, s in ipairs(keys) do
        local list = dups and dups[s]
        if list then sort(list, by_rank) end
        for i = 1, list and #list or 1 do
          if not first then buf[#buf + 1] = "," end
          first = false
          buf[#buf + 1] = encode_string(s)
          buf[#buf + 1] = ":"
          encode_into(v[list and list[i] or strs[s]], buf, lenient, depth + 1)
        end
      end
      buf[#buf + 1] = "}"
    end
  elseif lenient then
    buf[#buf + 1] = encode_string(tostring(v))
  else
    error({ "cannot encode a " .. tv })
  end
end

function _M.array(t)
  if t == nil then return setmetatable({}, ARRAY_MT) end
  if type(t) ~= "table" then
    error("sluice.json.array: bad argument #1 (table expected, got " .. type(t) .. ")", 2)
  end
  local mt = getmetatable(t)
  if mt == "sluice.json.array" then return t end
  if mt ~= nil or t == empty_array then
    error("sluice.json.array: bad argument #1 (the table already has a metatable)", 2)
  end
  return setmetatable(t, ARRAY_MT)
end

-- The native decoder, given what it builds values from.
local decode_native = require("sluice._json").decoder(null, ARRAY_MT, _M.numeral, int64_t, uint64_t)

function _M.decode(s)
  if type(s) ~= "string" then
    error("sluice.json.decode: bad argument #1 (string expected, got " .. type(s) .. ")", 2)
  end
  return decode_native(s)
end

function _M.encode(v, lenient)
  local buf = {}
  local ok, err = pcall(encode_into, v, buf, lenient, 0)
  if not ok then
    if type(err) == "table" then return nil, err[1] end
    error(err, 0)
  end
  return concat(buf)
end

return _M
