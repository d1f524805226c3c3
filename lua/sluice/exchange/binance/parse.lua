--- sluice.exchange.binance.parse: Binance's answers -> the unified tables'
-- fields (sluice.exchange.tables), for sluice.exchange.binance. Decimals
-- are Binance's own text (never through a double); times integer ms.
-- Pure functions; owns no state.
local json = require "sluice.json"

local numeral_text, json_number = json.numeral_text, json.number

local parse = {}

-- ---- values ----------------------------------------------------------------

--- text(v): Binance's text of a decimal: the string it sent (a JSON number as
-- json.decode kept it), or nil when absent or empty.
function parse.text(v)
  local tv = type(v)
  if tv == "string" then return v ~= "" and v or nil end
  if tv == "number" then return json_number(v) end
  return numeral_text(v)
end

--- int(v): an integer (epoch ms, an id, a count) sent as a number or as digits.
function parse.int(v)
  if type(v) == "number" then return v end
  if type(v) == "string" and v:match("^%-?%d+$") and #v <= 16 then return tonumber(v) end
  if type(v) == "cdata" then return tonumber(v) end
  return nil
end

--- is_error(data): whether a decoded answer is Binance's error object
-- {"code": -1121, "msg": "Invalid symbol."}.
function parse.is_error(data)
  return type(data) == "table" and data.code ~= nil and data.msg ~= nil and data[1] == nil
end

local text, int = parse.text, parse.int

-- ---- parsers (raw JSON -> unified fields) ------------------------------------

--- ticker(market, t24 [, book [, premium]]) -> the tickers fields: the
-- 24 h ticker, the best bid/ask (futures' bookTicker) and mark/index
-- (premiumIndex).
function parse.ticker(market, t, book, premium)
  local f = {
    ts = int(t.closeTime), last = text(t.lastPrice), open = text(t.openPrice),
    high = text(t.highPrice), low = text(t.lowPrice),
    bid = text(t.bidPrice), ask = text(t.askPrice),
    bid_size = text(t.bidQty), ask_size = text(t.askQty),
  }
  if market == "inverse" then
    f.base_volume = text(t.baseVolume)   -- "volume" counts contracts
  else
    f.base_volume, f.quote_volume = text(t.volume), text(t.quoteVolume)
  end
  if book then
    f.bid, f.ask = text(book.bidPrice), text(book.askPrice)
    f.bid_size, f.ask_size = text(book.bidQty), text(book.askQty)
  end
  if premium then
    f.mark, f.index = text(premium.markPrice), text(premium.indexPrice)
  end
  return f
end

--- funding_current(premium) -> the funding_current fields.
function parse.funding_current(p)
  return { ts = int(p.time), rate = text(p.lastFundingRate),
           next_funding_time = int(p.nextFundingTime),
           mark = text(p.markPrice), index = text(p.indexPrice) }
end

--- funding_rate(item) -> the funding_rates fields.
function parse.funding_rate(r)
  return { funding_time = int(r.fundingTime), rate = text(r.fundingRate),
           mark = text(r.markPrice) }
end

--- kline(market, candle, k) -> the klines fields.
-- Spot and linear: [open time, o, h, l, c, base volume, close time, quote
-- volume, trades, taker buy base, taker buy quote, ignore]. Inverse: the
-- volumes at 6 and 10 are contracts, the base ones at 8 and 11.
function parse.kline(market, candle, k)
  local f = { interval = candle, open_time = int(k[1]), close_time = int(k[7]),
              open = text(k[2]), high = text(k[3]), low = text(k[4]), close = text(k[5]),
              trades = int(k[9]) }
  if market == "inverse" then
    f.volume, f.taker_buy_base_volume = text(k[8]), text(k[11])
  else
    f.volume, f.quote_volume = text(k[6]), text(k[8])
    f.taker_buy_base_volume, f.taker_buy_quote_volume = text(k[10]), text(k[11])
  end
  return f
end

local function levels(list)
  local out = {}
  if type(list) ~= "table" then return nil end
  for i, l in ipairs(list) do
    if type(l) ~= "table" then return nil end
    out[i] = { text(l[1]), text(l[2]) }
  end
  return out
end

--- book(market, d) -> {ts, sequence, bids, asks} | nil, err
-- Futures books carry T (the transaction time); a spot book has no time
-- (ts nil: the kit stamps it when it arrived).
function parse.book(market, d)
  if type(d) ~= "table" then return nil, "depth: not an object" end
  local bids, asks = levels(d.bids), levels(d.asks)
  if not bids or not asks then return nil, "depth: no bids/asks lists" end
  local ts = market ~= "spot" and int(d.T) or nil
  return { ts = ts, sequence = int(d.lastUpdateId), bids = bids, asks = asks }
end

return parse
