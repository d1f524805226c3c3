--- sluice.exchange.book: order-book snapshots -- their checks and their
-- metrics, exact (sluice.bignum, never a double).
--
-- A book is { bids = {{price, size}, ...}, asks = {{price, size}, ...} },
-- best level first; a price or size is the exchange's text ("64000.50"),
-- a Lua number, an int64 cdata or a sluice.json numeral.
--
-- levels(side) -> {{price_text, size_text}, ...} | nil, reason: the side
--   with each value as text (a string as the exchange wrote it, anything
--   else as bignum's canonical text), for the order_books row's exact
--   JSON arrays. Extra fields of a level (an order count) are dropped.
-- check(bids, asks) -> true | false, reason. Reasons:
--   "malformed book: bids is not a list of levels" (asks likewise)
--   "malformed level bids[3]: ..." (not a [price, size] pair, a value that
--     is no number)
--   "empty book: no bids" (or asks)
--   "non-positive price at bids[2]: 0", "non-positive size at asks[1]: -1"
--   "bids not strictly descending at bids[2]: 100 after 100"
--   "asks not strictly ascending at asks[4]: 99 after 101"
--   "crossed book: best bid 101 >= best ask 100"
-- metrics(bids, asks) -> {best_bid, best_ask, spread_bps, bid_depth_10bps,
--   ask_depth_10bps, bid_depth_1pct, ask_depth_1pct, imbalance}, for a
--   book check() accepted, as decimal text:
--   mid = (best_bid + best_ask) / 2;
--   spread_bps = (best_ask - best_bid) / mid * 10000;
--   bid_depth_Xbps = the sum of the sizes of the bids priced >= mid * (1 -
--     X/10000); ask_depth_Xbps, the asks priced <= mid * (1 + X/10000)
--     (10 bps and 1 % = 100 bps; the bands include their bounds);
--   imbalance = (bid_depth_1pct - ask_depth_1pct) / (bid_depth_1pct +
--     ask_depth_1pct), in [-1, 1] (absent when both are 0).
--   Sums are exact; the two ratios are truncated toward zero to 8 decimal
--   places (RATIO_PLACES).
-- Owns no state; nothing here yields.
local bignum = require "sluice.bignum"

local _M = {}

_M.RATIO_PLACES = 8

local cmp, add, sub, mul, div = bignum.cmp, bignum.add, bignum.sub, bignum.mul, bignum.div

-- The text of one level value, or nil, why.
local function value_text(v)
  local canon, err = bignum.parse(v)
  if not canon then return nil, err end
  if type(v) == "string" then return v end
  return canon
end

--- levels(side, name) -> {{price_text, size_text}, ...} | nil, reason
function _M.levels(side, name)
  name = name or "side"
  if type(side) ~= "table" then
    return nil, "malformed book: " .. name .. " is not a list of levels"
  end
  local out = {}
  for i, lv in ipairs(side) do
    if type(lv) ~= "table" or lv[1] == nil or lv[2] == nil then
      return nil, "malformed level " .. name .. "[" .. i .. "]: not a [price, size] pair"
    end
    local p, perr = value_text(lv[1])
    if not p then return nil, "malformed level " .. name .. "[" .. i .. "]: price " .. perr end
    local s, serr = value_text(lv[2])
    if not s then return nil, "malformed level " .. name .. "[" .. i .. "]: size " .. serr end
    out[i] = { p, s }
  end
  if next(side) ~= nil and #out == 0 then
    return nil, "malformed book: " .. name .. " is not a list of levels"
  end
  return out
end

-- Checks one side: order (dir 1: descending, -1: ascending) and signs.
local function check_side(side, name, dir, order)
  if #side == 0 then return false, "empty book: no " .. name end
  for i, lv in ipairs(side) do
    if cmp(lv[1], 0) <= 0 then
      return false, "non-positive price at " .. name .. "[" .. i .. "]: " .. lv[1]
    end
    if cmp(lv[2], 0) <= 0 then
      return false, "non-positive size at " .. name .. "[" .. i .. "]: " .. lv[2]
    end
    if i > 1 and cmp(side[i - 1][1], lv[1]) ~= dir then
      return false, name .. " not strictly " .. order .. " at " .. name .. "[" .. i .. "]: "
        .. lv[1] .. " after " .. side[i - 1][1]
    end
  end
  return true
end

--- check(bids, asks) -> true | false, reason
function _M.check(bids, asks)
  local b, berr = _M.levels(bids, "bids")
  if not b then return false, berr end
  local a, aerr = _M.levels(asks, "asks")
  if not a then return false, aerr end
  local ok, why = check_side(b, "bids", 1, "descending")
  if not ok then return false, why end
  ok, why = check_side(a, "asks", -1, "ascending")
  if not ok then return false, why end
  if cmp(b[1][1], a[1][1]) >= 0 then
    return false, "crossed book: best bid " .. b[1][1] .. " >= best ask " .. a[1][1]
  end
  return true
end

-- The sum of the sizes of the levels within bps of the mid: with sum2 =
-- best_bid + best_ask (2 × mid), a bid p is in when 2p × 10000 >= sum2 ×
-- (10000 - bps), an ask when 2p × 10000 <= sum2 × (10000 + bps): integers
-- scaled, no division, so the band's bounds are exact.
local function depth(side, sum2, bps, dir)
  local bound = mul(sum2, 10000 - dir * bps)
  local total = "0"
  for _, lv in ipairs(side) do
    local c = cmp(mul(lv[1], 20000), bound)
    if c ~= 0 and c ~= dir then break end
    total = add(total, lv[2])
  end
  return total
end

--- metrics(bids, asks) -> the metrics of a book check() accepted
function _M.metrics(bids, asks)
  local b = assert(_M.levels(bids, "bids"))
  local a = assert(_M.levels(asks, "asks"))
  local bb, ba = b[1][1], a[1][1]
  local sum2 = add(bb, ba)
  local m = {
    best_bid = bb, best_ask = ba,
    spread_bps = div(mul(sub(ba, bb), 20000), sum2, _M.RATIO_PLACES),
    bid_depth_10bps = depth(b, sum2, 10, 1), ask_depth_10bps = depth(a, sum2, 10, -1),
    bid_depth_1pct = depth(b, sum2, 100, 1), ask_depth_1pct = depth(a, sum2, 100, -1),
  }
  local total = add(m.bid_depth_1pct, m.ask_depth_1pct)
  if cmp(total, 0) ~= 0 then
    m.imbalance = div(sub(m.bid_depth_1pct, m.ask_depth_1pct), total, _M.RATIO_PLACES)
  end
  return m
end

return _M
