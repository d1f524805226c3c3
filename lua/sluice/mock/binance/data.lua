--- sluice.mock.binance.data: the synthetic market of sluice.mock.binance —
-- prices, candles, 24 h tickers, books, premium index and funding rates as
-- Binance's JSON text, deterministic per (seed, symbol, time).
--
-- Prices are a sum of hashed value-noise octaves (1 s .. 1 year) so any
-- time can be priced without walking from an origin, and a candle's close is
-- the next candle's open. Pure functions; owns no state.
local mockhash = require "sluice.mock.hash"

local floor, max, min, exp, sqrt = math.floor, math.max, math.min, math.exp, math.sqrt
local fmt, concat = string.format, table.concat

local _M = {}

-- Rough real magnitudes so demo output looks plausible: price, tick, lot
-- step, base volume and trades per second.
local PROFILES = {
  BTCUSDT = { 43000, 0.01, 0.00001, 0.006, 1.2 },
  ETHUSDT = { 2300, 0.01, 0.0001, 0.08, 0.9 },
  BNBUSDT = { 300, 0.1, 0.001, 0.2, 0.3 },
  SOLUSDT = { 100, 0.01, 0.001, 2.0, 0.6 },
}
-- Value-noise octaves: grid spacing in seconds and amplitude (log price),
-- amplitude ~ sqrt(spacing) as for a random walk, capped for the long ones.
local OCTAVES = { { 1, 0.00007 }, { 60, 0.0005 }, { 900, 0.002 }, { 14400, 0.008 },
  { 259200, 0.03 }, { 2592000, 0.08 }, { 31536000, 0.25 } }

local DAY = 86400e3
_M.FUNDING_EVERY = 8 * 3600e3 -- funding settles at 00:00, 08:00 and 16:00 UTC

local hash, str_hash = mockhash.hash, mockhash.str_hash

local function round(x, step) return floor(x / step + 0.5) * step end
local function dec(x) return fmt("%.8f", x) end
_M.round, _M.dec = round, dec

--- price(sym, t) -> the price at t ms: value noise in log price, linear
-- between hashed grid points.
local function price(sym, t)
  local s, sum = t / 1000, 0
  for k = 1, #OCTAVES do
    local o = OCTAVES[k]
    local g = s / o[1]
    local i = floor(g)
    local f = g - i
    local a = hash(sym.h, i, k) * 2 - 1
    local b = hash(sym.h, i + 1, k) * 2 - 1
    sum = sum + (a + (b - a) * f) * o[2]
  end
  return sym.price * exp(sum)
end
_M.price = price

--- symbol(seed, name [, profile_name]) -> a synthetic instrument. A
-- futures symbol takes the profile of its spot twin (BTCUSD_PERP: BTCUSDT)
-- and a hash of its own name.
function _M.symbol(seed, name, profile_name)
  local h = str_hash(seed, name)
  local p = PROFILES[profile_name or name] or { 1 + 999 * hash(h, 7), 0.0001, 0.01, 5, 0.2 }
  return { name = name, h = h, price = p[1], tick = p[2], step = p[3],
           vol = p[4], trades = p[5] }
end

--- kline(sym, iv, t, now) -> one candle as Binance's JSON array. A candle
-- still open at `now` is cut at now: its close is the price now and its
-- volume covers the time elapsed.
function _M.kline(sym, iv, t, now)
  local stop = min(t + iv, now)
  local o, c = round(price(sym, t), sym.tick), round(price(sym, stop), sym.tick)
  local u = function(k) return hash(sym.h, t, iv, k) end
  local sigma = 0.0005 * sqrt(iv / 60e3)
  local hi = round(max(o, c) * (1 + sigma * u(1)), sym.tick)
  local lo = round(min(o, c) * (1 - sigma * u(2)), sym.tick)
  local secs = max(1, (stop - t) / 1000)
  local vol = max(sym.step, round(sym.vol * secs * (0.4 + 1.2 * u(3)), sym.step))
  local trades = max(1, floor(sym.trades * secs * (0.4 + 1.2 * u(4))))
  local vwap = (o + hi + lo + c) / 4
  local taker = round(vol * (0.3 + 0.4 * u(5)), sym.step)
  return fmt('[%d,"%s","%s","%s","%s","%s",%d,"%s",%d,"%s","%s","0"]', t, dec(o), dec(hi),
    dec(lo), dec(c), dec(vol), t + iv - 1, dec(vol * vwap), trades, dec(taker), dec(taker * vwap))
end

-- The 24 h window ending at now: open, high, low, last, volume, trades.
local function day(sym, now)
  local o, last = round(price(sym, now - DAY), sym.tick), round(price(sym, now), sym.tick)
  local hi, lo = max(o, last), min(o, last)
  for t = now - DAY + 3600e3, now - 1, 3600e3 do
    local p = round(price(sym, t), sym.tick)
    hi, lo = max(hi, p), min(lo, p)
  end
  local u = hash(sym.h, floor(now / 60e3), 24)
  local vol = round(sym.vol * 86400 * (0.6 + 0.8 * u), sym.step)
  local trades = floor(sym.trades * 86400 * (0.6 + 0.8 * u))
  return o, hi, lo, last, vol, trades
end

-- The best bid and ask at now: one tick apart around the price.
local function top(sym, now)
  local p = round(price(sym, now), sym.tick)
  return p, p + sym.tick, round(sym.step * (1 + 500 * hash(sym.h, now, 1)), sym.step),
    round(sym.step * (1 + 500 * hash(sym.h, now, 2)), sym.step)
end

--- ticker24(family, sym, now) -> a /ticker/24hr object's JSON. family
-- "api" (spot: with prevClosePrice and the best bid/ask), "fapi", or
-- "dapi" (with pair; volume in contracts, baseVolume in the coin).
function _M.ticker24(family, sym, now)
  local o, hi, lo, last, vol, trades = day(sym, now)
  local vwap = (o + hi + lo + last) / 4
  local first = floor(now / 1000) * 7
  local out = { fmt('{"symbol":"%s"', sym.name) }
  if family == "dapi" then out[#out + 1] = fmt('"pair":"%s"', sym.name:match("^(.-)_")) end
  out[#out + 1] = fmt('"priceChange":"%s","priceChangePercent":"%.3f","weightedAvgPrice":"%s"',
    dec(last - o), (last - o) / o * 100, dec(vwap))
  if family == "api" then
    local bid, ask, bq, aq = top(sym, now)
    out[#out + 1] = fmt('"prevClosePrice":"%s","lastPrice":"%s","lastQty":"%s","bidPrice":"%s",'
      .. '"bidQty":"%s","askPrice":"%s","askQty":"%s"', dec(o), dec(last), dec(sym.step), dec(bid),
      dec(bq), dec(ask), dec(aq))
  else
    out[#out + 1] = fmt('"lastPrice":"%s","lastQty":"%s"', dec(last), dec(sym.step))
  end
  out[#out + 1] = fmt('"openPrice":"%s","highPrice":"%s","lowPrice":"%s"', dec(o), dec(hi), dec(lo))
  if family == "dapi" then
    out[#out + 1] = fmt('"volume":"%d","baseVolume":"%s"', floor(vol * vwap / 100), dec(vol))
  else
    out[#out + 1] = fmt('"volume":"%s","quoteVolume":"%s"', dec(vol), dec(vol * vwap))
  end
  out[#out + 1] = fmt('"openTime":%d,"closeTime":%d,"firstId":%d,"lastId":%d,"count":%d}',
    now - DAY, now, first, first + trades - 1, trades)
  return concat(out, ",")
end

--- book_ticker(family, sym, now) -> a /ticker/bookTicker object's JSON.
function _M.book_ticker(family, sym, now)
  local bid, ask, bq, aq = top(sym, now)
  local pair = family == "dapi" and fmt('"pair":"%s",', sym.name:match("^(.-)_")) or ""
  local tail = family == "api" and "}" or fmt(',"time":%d}', now)
  return fmt('{"symbol":"%s",%s"bidPrice":"%s","bidQty":"%s","askPrice":"%s","askQty":"%s"%s',
    sym.name, pair, dec(bid), dec(bq), dec(ask), dec(aq), tail)
end

--- depth(family, sym, now, limit) -> a /depth answer's JSON: limit levels
-- a side, 1 to 3 ticks apart, sizes hashed (a valid book: bids strictly
-- descending, asks ascending, bid < ask); lastUpdateId grows with time.
function _M.depth(family, sym, now, limit)
  local bid, ask = top(sym, now)
  local bids, asks, gap = {}, {}, 0
  for i = 1, limit do
    if i > 1 then gap = gap + sym.tick * (1 + floor(3 * hash(sym.h, now, i, 3))) end
    local q1 = round(sym.step * (1 + 2000 * hash(sym.h, now, i, 4)), sym.step)
    local q2 = round(sym.step * (1 + 2000 * hash(sym.h, now, i, 5)), sym.step)
    bids[i] = fmt('["%s","%s"]', dec(round(bid - gap, sym.tick)), dec(q1))
    asks[i] = fmt('["%s","%s"]', dec(round(ask + gap, sym.tick)), dec(q2))
  end
  local id = floor(now / 100)
  local times = family == "api" and "" or fmt('"E":%d,"T":%d,', now, now - 3)
  return fmt('{"lastUpdateId":%d,%s"bids":[%s],"asks":[%s]}', id, times, concat(bids, ","),
    concat(asks, ","))
end

--- funding_rate(sym, t) -> the rate settled at funding time t, as text.
function _M.funding_rate(sym, t)
  return fmt("%.8f", floor((hash(sym.h, t, 77) * 4 - 1) * 1e4) / 1e8)
end

--- premium(family, sym, now) -> a /premiumIndex object's JSON.
function _M.premium(family, sym, now)
  local mark = round(price(sym, now), sym.tick)
  local index = round(price(sym, now - 1000), sym.tick)
  local nxt = (floor(now / _M.FUNDING_EVERY) + 1) * _M.FUNDING_EVERY
  local pair = family == "dapi" and fmt('"pair":"%s",', sym.name:match("^(.-)_")) or ""
  return fmt('{"symbol":"%s",%s"markPrice":"%s","indexPrice":"%s","estimatedSettlePrice":"%s",'
    .. '"lastFundingRate":"%s","interestRate":"0.00010000","nextFundingTime":%d,"time":%d}',
    sym.name, pair, dec(mark), dec(index), dec(index), _M.funding_rate(sym, nxt), nxt, now)
end

--- funding(family, sym, t) -> one /fundingRate row's JSON (fapi with the
-- mark price it settled at).
function _M.funding(family, sym, t)
  local mark = family == "fapi" and fmt(',"markPrice":"%s"', dec(round(price(sym, t), sym.tick))) or ""
  return fmt('{"symbol":"%s","fundingTime":%d,"fundingRate":"%s"%s}', sym.name, t,
    _M.funding_rate(sym, t), mark)
end

return _M
