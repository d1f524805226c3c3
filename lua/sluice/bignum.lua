--- sluice.bignum: exact integers and decimals of any size, written as text.
--
-- For wei and token amounts (uint256), hex quantities from JSON-RPC and
-- prices as an exchange wrote them: arithmetic and comparison without a
-- double anywhere (OpenSSL's BIGNUM through sluice._bignum). Owns no state;
-- nothing here yields.
--
--   local bignum = require "sluice.bignum"
--   bignum.from_hex("0x1bc16d674ec80000")          --> "2000000000000000000"
--   bignum.scale("1500000000000000000", -18)        --> "1.5"  (wei -> ether)
--   bignum.add("0.1", "0.2")                        --> "0.3"
--
-- Every number argument may be
--   a string: a decimal ("42", "-12.3400", "+1.5", ".5", "1e-8", "1.5E3";
--     an exponent is read exactly, |exponent| <= 10000) or a "0x" hex
--     integer ("0x1bc16d674ec80000", "0x0", either case; no sign);
--   a Lua number within +-2^53 (exclusive): an integral one as its digits,
--     a fractional one as the shortest text that reads back as the same
--     double (what sluice.json.number writes: 0.1 is "0.1", 0.00001234 is
--     "0.00001234"); beyond 2^53 a double may already be rounded, so it is
--     refused (pass a string or an int64_t); nan and inf are refused;
--   an int64_t or uint64_t cdata (1LL, 2^64-1 as 18446744073709551615ULL);
--   a sluice.json numeral (json.numeral("1e-30"), json.numeral(uint256_text)).
-- Text is at most 100000 characters. Anything else (another type, text that
-- is not a number, "0x" with a sign or a fraction) is misuse and raises:
--   sluice.bignum.add: bad argument #2 (a number expected, got "12abc": not a number)
-- bignum.parse is the one function that answers nil, err instead, for
-- checking values that came from outside.
--
-- Results are canonical decimal text: no "+", no exponent, no leading
-- zeros, no trailing zeros after the point, no point in a whole number,
-- "0" for every zero ("-0", "0.000"): "-12.3400" -> "-12.34".
--
--   normalize(v)        -> canonical text
--   parse(v)            -> canonical text | nil, err (never raises)
--   from_hex(s)         -> the decimal text of a "0x" hex string
--   to_hex(v)           -> "0x..." of a non-negative integer: lower case, no
--                          leading zeros, "0x0" (a JSON-RPC quantity);
--                          raises for a negative or fractional value
--   add(a, b), sub(a, b), mul(a, b) -> a + b, a - b, a * b, exactly
--   cmp(a, b)           -> -1, 0 or 1 (by value: cmp("1.50", "1.5") == 0)
--   scale(v, k)         -> v * 10^k exactly, k an integer in [-10000, 10000]
--                          (scale(wei, -9) is gwei, scale(wei, -18) ether;
--                          scale("1.5", 18) -> "1500000000000000000")
--   div(a, b, places)   -> a / b truncated toward zero to `places` digits
--                          after the point (an integer in [0, 10000]):
--                          div("2", "3", 4) -> "0.6666", div("-7", "2", 0)
--                          -> "-3"; raises on division by zero
--   UINT256_MAX         -> "115792089237316195423570985008687907853269984665640564039457584007913129639935"
local native = require "sluice._bignum"
local json = require "sluice.json"

local type, tonumber, tostring, error = type, tonumber, tostring, error
local floor, huge = math.floor, math.huge
local format = string.format
local int64_text, numeral_text = json.int64_text, json.numeral_text

local _M = {
  UINT256_MAX = "115792089237316195423570985008687907853269984665640564039457584007913129639935",
}

local TWO53 = 2 ^ 53

-- The shortest of %.15g, %.16g, %.17g that reads back as the same double.
local function shortest(v)
  local s = format("%.15g", v)
  if tonumber(s) ~= v then
    s = format("%.16g", v)
    if tonumber(s) ~= v then s = format("%.17g", v) end
  end
  return s
end

-- The text of v, or nil and what is wrong with it (for a message).
local function text_of(v)
  local tv = type(v)
  if tv == "string" then return v end
  if tv == "number" then
    if v ~= v then return nil, "nan" end
    if v == huge or v == -huge then return nil, v > 0 and "inf" or "-inf" end
    if v <= -TWO53 or v >= TWO53 then
      return nil, "a number beyond 2^53, which a double cannot hold exactly: "
        .. "pass a decimal string or an int64_t"
    end
    if v == floor(v) then return format("%d", v) end
    return shortest(v)
  end
  if tv == "cdata" then
    local s = int64_text(v)
    if s then return s end
  elseif tv == "table" then
    local s = numeral_text(v)
    if s then return s end
  end
  return nil, tv
end

-- Quotes text for a message, cut to 40 characters.
local function quoted(s)
  if #s > 40 then s = s:sub(1, 40) .. "..." end
  return format("%q", s)
end

-- Raises "sluice.bignum.<fname>: bad argument #n (...)" at level (3 for
-- a function of _M calling it, 4 for a helper of theirs; helpers are never
-- tail-called, so that the levels hold).
local function bad(fname, n, what, level)
  error(format("sluice.bignum.%s: bad argument #%d (%s)", fname, n, what), level)
end

-- The text of argument n, raising misuse for a value of no number type.
local function arg_text(fname, n, v)
  local s, why = text_of(v)
  if not s then bad(fname, n, "a number expected, got " .. why, 4) end
  return s
end

-- Passes a native result through, raising for text that was not a number.
local function result(fname, args, r, why, n)
  if r == nil then
    bad(fname, n, "a number expected, got " .. quoted(args[n]) .. ": " .. why, 4)
  end
  return r
end

function _M.normalize(v)
  local s = arg_text("normalize", 1, v)
  local r = result("normalize", { s }, native.normalize(s))
  return r
end

function _M.parse(v)
  local s, why = text_of(v)
  if not s then return nil, "not a number (" .. why .. ")" end
  local r, err = native.normalize(s)
  if not r then return nil, "not a number: " .. quoted(s) .. " (" .. err .. ")" end
  return r
end

function _M.from_hex(s)
  if type(s) ~= "string" then bad("from_hex", 1, "string expected, got " .. type(s), 3) end
  if not s:find("^0[xX]") then bad("from_hex", 1, "a \"0x\" hex string expected, got " .. quoted(s), 3) end
  local r = result("from_hex", { s }, native.normalize(s))
  return r
end

function _M.to_hex(v)
  local s = arg_text("to_hex", 1, v)
  local r, why = native.to_hex(s)
  if not r then
    bad("to_hex", 1, "a non-negative integer expected, got " .. quoted(s) .. ": " .. why, 3)
  end
  return r
end

local function binary(fname, op)
  return function(a, b)
    local sa, sb = arg_text(fname, 1, a), arg_text(fname, 2, b)
    local r = result(fname, { sa, sb }, op(sa, sb))
    return r
  end
end

_M.add = binary("add", native.add)
_M.sub = binary("sub", native.sub)
_M.mul = binary("mul", native.mul)
_M.cmp = binary("cmp", native.cmp)

-- An integer argument in [lo, hi] (k of scale, places of div).
local function check_int(fname, n, name, v, lo, hi)
  if type(v) ~= "number" or v ~= floor(v) or v < lo or v > hi then
    bad(fname, n, format("'%s' must be an integer in [%d, %d], got %s", name, lo, hi,
      type(v) == "number" and tostring(v) or type(v)), 4)
  end
end

local MAX_EXP = native.MAX_EXP

function _M.scale(v, k)
  local s = arg_text("scale", 1, v)
  check_int("scale", 2, "k", k, -MAX_EXP, MAX_EXP)
  local r = result("scale", { s }, native.scale(s, k))
  return r
end

function _M.div(a, b, places)
  local sa, sb = arg_text("div", 1, a), arg_text("div", 2, b)
  check_int("div", 3, "places", places, 0, MAX_EXP)
  local r, why, n = native.div(sa, sb, places)
  if r == nil and why == "division by zero" then
    error("sluice.bignum.div: division by zero", 2)
  end
  r = result("div", { sa, sb }, r, why, n)
  return r
end

return _M
