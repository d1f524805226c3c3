--- support.market: a scripted market for the stream collectors' specs: a
-- true order book moved by numbered diff events, and numbered trades, so
-- that a spec can compare what a collector stored with the full sequence.
--
--   local m = market.new()
--   local ev = m:diff()            -- the next diff: {first, last, bids, asks, ts}, applied to the truth
--   local t = m:trade()            -- the next trade: {id, ts, price, size, buyer_maker}
--   m:levels("bids")               -- the true side, best first, [price, size] text
--   m.id                           -- the true book's last update id
local _M = {}
local M = {}
local mt = { __index = M }

function _M.new()
  local m = setmetatable({ id = 100, n = 0, bids = {}, asks = {}, trades = {}, t0 = 1700000000000 }, mt)
  for i = 0, 4 do
    m.bids[string.format("%.2f", 100 - i)] = "1.5"
    m.asks[string.format("%.2f", 101 + i)] = "2.25"
  end
  return m
end

-- Event n: a few levels change (one removed now and then); ids advance 3 an event.
function M:diff()
  self.n = self.n + 1
  local n = self.n
  local bids = { { string.format("%.2f", 100 - n % 5), tostring(n) .. ".5" } }
  local asks = { { string.format("%.2f", 101 + n % 5), tostring(n) .. ".125" } }
  if n % 4 == 0 then bids[#bids + 1] = { string.format("%.2f", 96 - n % 3), "0.00000000" } end
  if n % 3 == 0 then asks[#asks + 1] = { string.format("%.2f", 106 + n % 2), "3" } end
  local ev = { first = self.id + 1, last = self.id + 3, bids = bids, asks = asks, ts = self.t0 + n }
  for _, side in ipairs({ "bids", "asks" }) do
    for _, lv in ipairs(ev[side]) do
      if tonumber(lv[2]) == 0 then self[side][lv[1]] = nil else self[side][lv[1]] = lv[2] end
    end
  end
  self.id = ev.last
  return ev
end

function M:trade()
  local id = #self.trades + 1
  local t = { id = id, ts = self.t0 + 1000 + id, price = string.format("%.2f", 100 + id % 7 / 100),
    size = "0.00" .. id, buyer_maker = id % 2 == 0 }
  self.trades[id] = t
  return t
end

function M:levels(side)
  local out = {}
  for p, s in pairs(self[side]) do out[#out + 1] = { p, s } end
  table.sort(out, function(a, b)
    if side == "bids" then return tonumber(a[1]) > tonumber(b[1]) end
    return tonumber(a[1]) < tonumber(b[1])
  end)
  return out
end

return _M
