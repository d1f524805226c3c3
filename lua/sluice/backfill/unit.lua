--- sluice.backfill.unit: what a backfill's windows count in.
--
-- A collector declares backfill_unit: "seconds" (the default: epoch
-- seconds, and dates like 2024-01-31 are read as UTC), or an integer unit,
-- "blocks", "slots" or "integers" (block heights, beacon slots, any other
-- integer cursor: ledger sequence, round, id). The unit's name is what logs,
-- status and `sluice backfill` print ("blocks 19000000..19001000"). An
-- integer unit's positions and steps are integers from 0 to 2^53, every
-- one exact in a Lua number; windows are [from, to) in every unit, so that
-- adjacent windows share no position and nothing is fetched twice.
--
-- The arithmetic here is exact for such integers: floor(x / step) of two
-- doubles can round up to the next integer for large x, and a window
-- boundary one off would skip or repeat a block, so the quotients are
-- corrected with exact products. Pure functions; owns no state; nothing
-- yields.
local sluice = require "sluice"

local _M = {}

--- MAX: the largest integer position (2^53: every integer up to it is
-- exact in a double).
_M.MAX = 2 ^ 53

--- NAMES: the units a collector may declare; true for the integer ones.
_M.NAMES = { seconds = false, blocks = true, slots = true, integers = true }

--- LIST: their names as messages list them.
_M.LIST = "seconds, blocks, slots, integers"

local floor = math.floor

--- is_integer(unit) -> true for an integer unit.
function _M.is_integer(unit)
  return _M.NAMES[unit] == true
end

--- of(c) -> the unit of collector c's backfill (its backfill_unit option,
-- "seconds" by default).
function _M.of(c)
  return c.config.backfill_unit or "seconds"
end

--- floor_div(a, b) -> floor(a / b), exact for integers a, b within 2^53
-- (b > 0); for other numbers as floor(a / b).
function _M.floor_div(a, b)
  local q = floor(a / b)
  local r = a - q * b
  if r < 0 then
    q = q - 1
  elseif r >= b then
    q = q + 1
  end
  return q
end

--- ceil_div(a, b) -> ceil(a / b), as floor_div.
function _M.ceil_div(a, b)
  return -_M.floor_div(-a, b)
end

--- align(x, step) -> the multiple of step at or before x.
function _M.align(x, step)
  return _M.floor_div(x, step) * step
end

-- a date like 2024-01-31[T12:00:00][Z] as epoch seconds (UTC), or nil
local function date_seconds(v)
  local y, m, d, H, M, S = v:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)[T ]?(%d?%d?):?(%d?%d?):?(%d?%d?)Z?$")
  if not y then return nil end
  -- os.time reads the table as local time: days from the civil date by
  -- hand (H. Hinnant's algorithm), for UTC
  local yy, mm, dd = tonumber(y), tonumber(m), tonumber(d)
  if mm <= 2 then yy = yy - 1 end
  local era = floor(yy / 400)
  local yoe = yy - era * 400
  local doy = floor((153 * (mm + (mm > 2 and -3 or 9)) + 2) / 5) + dd - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + (tonumber(H) or 0) * 3600 + (tonumber(M) or 0) * 60 + (tonumber(S) or 0)
end

-- An integer position, exactly, or nil: a whole number, an int64_t or
-- uint64_t cdata, decimal digits or a 0x hex quantity, from 0 to 2^53.
local function integer_of(v)
  local n
  if type(v) == "cdata" then
    -- an int64_t or uint64_t by its digits ("19000000LL"): exact
    v = tostring(v):match("^(%-?%d+)U?LL$")
  end
  if type(v) == "number" then
    n = v
  elseif type(v) == "string" then
    -- digits beyond 2^53 would round in tonumber: compared as text first
    -- (equal lengths compare as numbers)
    local dec, hex = v:match("^0*(%d*)$"), v:match("^0x0*(%x*)$")
    if dec and v ~= "" and (#dec < 16 or #dec == 16 and dec <= "9007199254740992") then
      n = tonumber(v, 10)
    elseif hex and #v > 2 and (#hex < 14 or #hex == 14 and hex:lower() <= "20000000000000") then
      n = tonumber(hex, 16) or 0
    else
      return nil
    end
  else
    return nil
  end
  if n ~= n or n < 0 or n > _M.MAX or n ~= floor(n) then return nil end
  return n
end

--- integer(v) -> v as an exact integer position, or nil (see parse).
_M.integer = integer_of

--- parse(v, unit, what [, level]) -> a position in unit: for seconds, a
-- number as it is or a date like 2024-01-31[T12:00:00][Z] read as UTC; for
-- an integer unit, an integer from 0 to 2^53 given as a number, an
-- int64_t/uint64_t cdata, decimal digits or a 0x hex quantity. Anything
-- else raises naming what and the unit, at level (as error() counts it
-- from parse; 3 by default: the caller of parse's caller).
function _M.parse(v, unit, what, level)
  level = level or 3
  if not _M.is_integer(unit) then
    if type(v) == "number" then return v end
    local t = type(v) == "string" and date_seconds(v)
    if t then return t end
    error("sluice.backfill: '" .. tostring(what) .. "' must be epoch seconds or a date like 2024-01-31, got "
      .. tostring(v), level)
  end
  local n = integer_of(v)
  if n then return n end
  local shown = type(v) == "string" and ("'" .. v .. "'") or tostring(v)
  local hint = type(v) == "string" and date_seconds(v) and " (a date: this collector backfills by "
    .. unit .. ", not by time)" or ""
  error("sluice.backfill: '" .. tostring(what) .. "' must be a number of " .. unit
    .. " (an integer from 0 to 2^53), got " .. shown .. hint, level)
end

--- parse_time(v, what) -> parse(v, "seconds", what): epoch seconds.
function _M.parse_time(v, what)
  local t = _M.parse(v, "seconds", what, 4)
  return t
end

--- step(v, unit) -> the window length, or nil, what it must be: a number
-- > 0 of seconds, or an integer from 1 to 2^53 of an integer unit.
function _M.step(v, unit)
  if _M.is_integer(unit) then
    if type(v) == "number" and v >= 1 and v <= _M.MAX and v == floor(v) then return v end
    return nil, "an integer number of " .. unit .. " from 1 to 2^53"
  end
  if type(v) == "number" and v > 0 then return v end
  return nil, "a number of seconds > 0"
end

local function digits(x)
  return string.format("%d", x)
end

--- range(unit, from, to) -> "blocks 19000000..19001000" ([from, to) in
-- unit), or, for seconds, "2024-01-01T00:00:00Z..2024-01-02T00:00:00Z".
function _M.range(unit, from, to)
  if _M.is_integer(unit) then return unit .. " " .. digits(from) .. ".." .. digits(to) end
  return sluice.iso8601(from) .. ".." .. sluice.iso8601(to)
end

return _M
