--- sluice.store.numbers: the values of uint256 and decimal columns.
--
-- Both are stored as TEXT (declared "U256 TEXT" and "DECIMAL TEXT", with
-- the collation sluice_decimal that sluice._store registers on every
-- connection: text compares by numeric value, so ORDER BY, =, <, indexes
-- and primary keys are numeric). Owns nothing; nothing here yields.
--
-- uint256(v) -> the canonical decimal digits of v, or nil, what (for
--   "wrong type for field: f (uint256 expected, got <what>)"). v: a
--   decimal string holding a whole number in 0 .. 2^256-1 ("42", "042",
--   "4.2e1", "1.0"), a "0x" hex string, a whole Lua number in 0 .. 2^53-1,
--   an int64_t/uint64_t cdata >= 0, or a sluice.json numeral. what:
--   "negative number", "non-integral number", "out-of-range number" (at or
--   beyond 2^256), "number beyond 2^53, ..." (a Lua number a double may
--   have rounded), "nan", "inf", "-inf", or the type ("string" for text
--   that is no number, "boolean", ...).
-- decimal(v) -> the text to store, or nil, what. A string that is already
--   a plain decimal (-?D+ or -?D+.D+, at most MAX_DECIMAL characters) is
--   kept exactly as written: "0.00001234", "1.50" and "007" stay so (the
--   collation makes "1.50" equal "1.5"). Another decimal spelling ("1e-8",
--   "+1.5", ".5", a numeral "1.5e3") is stored canonical (bignum.normalize:
--   "0.00000001", "1.5", "0.5", "1500"). A Lua number within +-2^53 is
--   written as the shortest text that reads back as the same double, in
--   plain notation (0.00001234 -> "0.00001234", 0.1 -> "0.1"); beyond
--   2^53 it is refused as in integer columns. int64_t/uint64_t cdata are
--   their digits. what: "nan", "inf", "-inf", "number beyond 2^53, ...",
--   "hex string" (hex is for uint256 columns), "decimal longer than 1000
--   characters", or the type ("string" for text that is no number).
-- canonical(v) -> the canonical text of a stored decimal (for comparing
--   keys in Lua as the collation does).
local bignum = require "sluice.bignum"
local json = require "sluice.json"

local type, floor, huge = type, math.floor, math.huge
local parse, normalize = bignum.parse, bignum.normalize
local int64_text, numeral_text = json.int64_text, json.numeral_text

local _M = { MAX_DECIMAL = 1000 }

local UINT256_MAX = bignum.UINT256_MAX
local NDIGITS = #UINT256_MAX -- 78
local TWO53 = 2 ^ 53
local BEYOND = "number beyond 2^53, which a double cannot hold exactly: pass a decimal string or an int64_t"

-- nan, inf, -inf, or nil for a finite number
local function nonfinite(v)
  if v ~= v then return "nan" end
  if v == huge then return "inf" end
  if v == -huge then return "-inf" end
  return nil
end

-- The canonical digits r (already bignum text) as a uint256, or nil, what.
local function uint256_of(r)
  if r:find("-", 1, true) then return nil, "negative number" end
  if r:find(".", 1, true) then return nil, "non-integral number" end
  if #r > NDIGITS or (#r == NDIGITS and r > UINT256_MAX) then return nil, "out-of-range number" end
  return r
end

function _M.uint256(v)
  local tv = type(v)
  local s
  if tv == "string" then
    -- the common case, canonical digits well below 2^256, needs no parse
    if #v < NDIGITS and v:find("^[1-9]%d*$") or v == "0" then return v end
    s = v
  elseif tv == "number" then
    local why = nonfinite(v)
    if why then return nil, why end
    if v ~= floor(v) then return nil, "non-integral number" end
    if v < 0 then return nil, "negative number" end
    if v >= TWO53 then return nil, BEYOND end
    return (string.format("%d", v))
  elseif tv == "cdata" then
    s = int64_text(v)
    if not s then return nil, tv end
    return uint256_of(s)
  elseif tv == "table" then
    s = numeral_text(v)
    if not s then return nil, tv end
  else
    return nil, tv
  end
  local r = parse(s)
  if not r then return nil, "string" end
  return uint256_of(r)
end

local MAX_DECIMAL = _M.MAX_DECIMAL

local function plain(s)
  return s:find("^%-?%d+$") or s:find("^%-?%d+%.%d+$")
end

-- The stored text of decimal text s, or nil, what.
local function decimal_text(s)
  if #s > MAX_DECIMAL then return nil, "decimal longer than 1000 characters" end
  if plain(s) then return s end
  if s:find("^0[xX]") then return nil, "hex string" end
  local r = parse(s)
  if not r then return nil, "string" end
  if #r > MAX_DECIMAL then return nil, "decimal longer than 1000 characters" end
  return r
end

function _M.decimal(v)
  local tv = type(v)
  if tv == "string" then return decimal_text(v) end
  if tv == "number" then
    local why = nonfinite(v)
    if why then return nil, why end
    if v <= -TWO53 or v >= TWO53 then return nil, BEYOND end
    return normalize(v)
  end
  local s
  if tv == "cdata" then
    s = int64_text(v)
  elseif tv == "table" then
    s = numeral_text(v)
  end
  if not s then return nil, tv end
  return decimal_text(s)
end

function _M.canonical(s)
  return normalize(s)
end

return _M
