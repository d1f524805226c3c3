--- sluice.mock.hash: the deterministic hashing the exchange mocks draw
-- their synthetic prices, sizes and times from, so that any instant of any
-- symbol can be priced without walking from an origin and every mock gives
-- the same answer to the same question in every run.
--
-- hash(h, a [, b [, c]]) -> a uniform number in [0, 1) from a 32-bit state h
--   and up to three integers (a may exceed 2^32: its high part is mixed in).
-- str_hash(seed, s) -> a 32-bit state from a seed and a string (a symbol).
-- Pure functions: no state, nothing yields.
local bit = require "bit"

local band, bxor, rshift, tobit = bit.band, bit.bxor, bit.rshift, bit.tobit
local floor = math.floor

local _M = {}

-- 32-bit multiply modulo 2^32 without losing bits to doubles.
local function imul(a, b)
  return tobit(tobit(rshift(a, 16) * b) * 65536 + band(a, 0xffff) * b)
end

local function mix(h, x)
  h = imul(bxor(h, tobit(x % 4294967296)), -1640531535)   -- 0x9e3779b1
  h = bxor(h, rshift(h, 15))
  return imul(h, -2048144789)                             -- 0x85ebca6b
end

function _M.hash(h, a, b, c)
  h = mix(mix(mix(mix(h, a), floor(a / 4294967296)), b or 0), c or 0)
  h = bxor(h, rshift(h, 13))
  h = imul(h, -1028477387)                                -- 0xc2b2ae35
  h = bxor(h, rshift(h, 16))
  return (h % 4294967296) / 4294967296
end

function _M.str_hash(seed, s)
  local h = tobit(seed)
  for i = 1, #s do h = mix(h, s:byte(i)) end
  return h
end

return _M
