--- sluice.stream.binance: Binance spot's market streams, for
-- sluice.stream.exchange (collectors/binance_stream.lua).
--
-- One connection to <ws_url>/stream (combined streams: every message is
-- {"stream": "btcusdt@trade", "data": {...}}), subscribed with
-- {"method": "SUBSCRIBE", "params": ["btcusdt@trade", "btcusdt@depth@100ms"],
-- "id": n}, answered {"result": null, "id": n} (an error: {"error": {code,
-- msg}, "id": n}). Binance limits incoming messages to 5 a second per
-- connection (the collector's limiter paces them) and 1024 streams a
-- connection.
--   trade        {"e":"trade","E":ms,"s":"BTCUSDT","t":id,"p":"price","q":"qty",
--                "T":trade ms,"m":buyer is the maker} -> a trade (m: the taker
--                sold, side "sell")
--   depthUpdate  {"e":"depthUpdate","E":ms,"s":"BTCUSDT","U":first,"u":last,
--                "b":[[p, q]],"a":[[p, q]]} -> a diff; the book's snapshot is
--                GET /api/v3/depth?symbol=&limit=1000 {lastUpdateId, bids, asks}
--                (weight 50), fetched when a book needs one (sluice.stream.book
--                has the rules: "How to manage a local order book correctly").
-- Trades missed while disconnected: GET /api/v3/historicalTrades?symbol=
-- &fromId=&limit=1000 (weight 25), from the id after the last one stored.
-- Owns no state; parse does not yield, snapshot and trades_since do
-- (requests through the collector).
local json = require "sluice.json"
local bignum = require "sluice.bignum"

local _M = {
  name = "binance",
  adapter = require "sluice.exchange.binance",
  markets = { spot = true },
  ws_urls = { spot = "wss://stream.binance.com:9443" },
  resync = "snapshot",     -- a book with a gap fetches a new REST snapshot
  SNAPSHOT_LIMIT = 1000,
  TRADES_LIMIT = 1000,
}

function _M.url(base)
  return base .. "/stream"
end

--- subscribe(syms, opts, id) -> the messages subscribing syms' streams
function _M.subscribe(syms, opts, id)
  local params = {}
  for _, s in ipairs(syms) do
    local l = s.raw:lower()
    if opts.trades then params[#params + 1] = l .. "@trade" end
    if opts.books then params[#params + 1] = l .. "@depth@100ms" end
  end
  return { json.encode({ method = "SUBSCRIBE", params = json.array(params), id = id }) }
end

local function str(v)
  if v == nil or v == json.null then return nil end
  if type(v) == "string" then return v end
  return bignum.normalize(v) -- an int64 id: its digits, no "LL"
end

--- parse(text) -> a list of events (sluice.stream.exchange's shapes), or
-- nil, err for a message that is not Binance's.
function _M.parse(text)
  local m, err = json.decode(text)
  if type(m) ~= "table" then return nil, "not JSON: " .. tostring(err) end
  if m.stream == nil and m.id ~= nil then
    if m.error ~= nil and m.error ~= json.null then
      local e = m.error
      return { { kind = "reply", ok = false, err = "Binance error " .. tostring(e.code) .. ": " .. tostring(e.msg) } }
    end
    return { { kind = "reply", ok = true } }
  end
  local d = m.data
  if type(d) ~= "table" then return {} end
  if d.e == "trade" then
    return { { kind = "trade", raw = d.s, id = str(d.t), ts = tonumber(d.T), price = str(d.p), size = str(d.q),
      side = d.m and "sell" or "buy" } }
  elseif d.e == "depthUpdate" then
    return { { kind = "depth", raw = d.s, first = tonumber(d.U), last = tonumber(d.u), prev = tonumber(d.pu),
      bids = d.b, asks = d.a, ts = tonumber(d.E) } }
  end
  return {}
end

--- snapshot(c, base, sym) -> {id, bids, asks} | nil, err
function _M.snapshot(c, base, sym)
  local data, err = c:get(base .. "/api/v3/depth", { query = { symbol = sym.raw, limit = _M.SNAPSHOT_LIMIT },
    cost = 50, endpoint = "/api/v3/depth" })
  if data == nil then return nil, err end
  if type(data) ~= "table" or data.lastUpdateId == nil then return nil, "Binance: depth without lastUpdateId" end
  return { id = tonumber(data.lastUpdateId), bids = data.bids, asks = data.asks }
end

--- trades_since(c, base, sym, last, pages) -> trades after last ({id, ts})
-- as events, oldest first, up to pages pages | nil, err
function _M.trades_since(c, base, sym, last, pages)
  local out, from = {}, tonumber(last.id) + 1
  for _ = 1, pages do
    local data, err = c:get(base .. "/api/v3/historicalTrades", { query = { symbol = sym.raw, fromId = from,
      limit = _M.TRADES_LIMIT }, cost = 25, endpoint = "/api/v3/historicalTrades" })
    if data == nil then return nil, err end
    if type(data) ~= "table" then return nil, "Binance: historicalTrades is not a list" end
    for _, t in ipairs(data) do
      out[#out + 1] = { kind = "trade", raw = sym.raw, id = str(t.id), ts = tonumber(t.time), price = str(t.price),
        size = str(t.qty), side = t.isBuyerMaker and "sell" or "buy" }
      from = tonumber(t.id) + 1
    end
    if #data < _M.TRADES_LIMIT then break end
  end
  return out
end

return _M
