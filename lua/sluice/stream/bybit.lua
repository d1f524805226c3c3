--- sluice.stream.bybit: Bybit v5's public streams, for
-- sluice.stream.exchange (collectors/bybit_stream.lua).
--
-- One connection to <ws_url>/v5/public/<market> (spot, linear, inverse),
-- subscribed with {"op": "subscribe", "args": ["orderbook.50.BTCUSDT",
-- "publicTrade.BTCUSDT"], "req_id": "n"} (at most 10 args a message),
-- answered {"success": true, "ret_msg": "", "op": "subscribe", "req_id": "n",
-- "conn_id": ...}; Bybit drops a connection without a {"op": "ping"} every
-- 20 s (answered {"success": true, "ret_msg": "pong", "op": "ping"}).
--   orderbook.N.SYM  {"topic", "type": "snapshot" | "delta", "ts": ms,
--                    "data": {"s", "b": [[p, q]], "a": [[p, q]], "u", "seq"},
--                    "cts"}: a snapshot replaces the book (u = 1 after a
--                    restart of Bybit's service); each delta's u is the last
--                    one + 1 (sluice.stream.book's rules with first = last =
--                    u). A gap resubscribes the topic: the reply is a new
--                    snapshot.
--   publicTrade.SYM  {"topic", "type": "snapshot", "ts", "data": [{"T": ms, "s",
--                    "S": "Buy" | "Sell", "v": size, "p": price, "i": id,
--                    "BT": block trade}]}
-- Trades missed while disconnected: GET /v5/market/recent-trade?category=
-- &symbol=&limit= (60 for spot, 1000 for the others): Bybit keeps no older
-- public trades, so a gap longer than that page stays a gap (logged).
-- Owns no state; parse does not yield, trades_since does.
local json = require "sluice.json"

local _M = {
  name = "bybit",
  adapter = require "sluice.exchange.bybit",
  markets = { spot = true, linear = true, inverse = true },
  ws_urls = { spot = "wss://stream.bybit.com", linear = "wss://stream.bybit.com",
              inverse = "wss://stream.bybit.com" },
  resync = "resubscribe",  -- a book with a gap subscribes its topic again
  BOOK_DEPTH = 50,
  ARGS_PER_MESSAGE = 10,
  ping = { every = 20, message = '{"op":"ping"}' },
}

function _M.url(base, market)
  return base .. "/v5/public/" .. market
end

local function topics(syms, opts)
  local out = {}
  for _, s in ipairs(syms) do
    if opts.books then out[#out + 1] = "orderbook." .. _M.BOOK_DEPTH .. "." .. s.raw end
    if opts.trades then out[#out + 1] = "publicTrade." .. s.raw end
  end
  return out
end

local function messages(op, args, id)
  local out = {}
  for i = 1, #args, _M.ARGS_PER_MESSAGE do
    local part = {}
    for j = i, math.min(#args, i + _M.ARGS_PER_MESSAGE - 1) do part[#part + 1] = args[j] end
    out[#out + 1] = json.encode({ op = op, args = json.array(part), req_id = tostring(id) .. "." .. i })
  end
  return out
end

--- subscribe(syms, opts, id) -> the messages subscribing syms' topics
function _M.subscribe(syms, opts, id)
  return messages("subscribe", topics(syms, opts), id)
end

--- resubscribe(sym, id) -> the messages that make Bybit send sym's book again
function _M.resubscribe(sym, id)
  local topic = { "orderbook." .. _M.BOOK_DEPTH .. "." .. sym.raw }
  local out = messages("unsubscribe", topic, id)
  out[2] = messages("subscribe", topic, id)[1]
  return out
end

function _M.parse(text)
  local m, err = json.decode(text)
  if type(m) ~= "table" then return nil, "not JSON: " .. tostring(err) end
  if m.op ~= nil then
    if m.op == "ping" or m.op == "pong" then return { { kind = "pong" } } end
    if m.success == false then
      return { { kind = "reply", ok = false, err = "Bybit refused " .. tostring(m.op) .. ": " .. tostring(m.ret_msg) } }
    end
    return { { kind = "reply", ok = true } }
  end
  local topic = m.topic
  if type(topic) ~= "string" then return {} end
  local d = m.data
  if topic:sub(1, 12) == "publicTrade." then
    local out = {}
    for _, t in ipairs(type(d) == "table" and d or {}) do
      out[#out + 1] = { kind = "trade", raw = t.s, id = tostring(t.i), ts = tonumber(t.T), price = tostring(t.p),
        size = tostring(t.v), side = t.S == "Sell" and "sell" or "buy" }
    end
    return out
  elseif topic:sub(1, 10) == "orderbook." and type(d) == "table" then
    local u = tonumber(d.u)
    if m.type == "snapshot" then
      return { { kind = "book_snapshot", raw = d.s, id = u, bids = d.b, asks = d.a, ts = tonumber(m.ts),
        seq = tonumber(d.seq) } }
    end
    return { { kind = "depth", raw = d.s, first = u, last = u, bids = d.b, asks = d.a, ts = tonumber(m.ts) } }
  end
  return {}
end

--- trades_since(c, base, sym, last) -> the trades of Bybit's recent page
-- at or after last.ts, as events, oldest first | nil, err
function _M.trades_since(c, base, sym, last)
  local limit = sym.market == "spot" and 60 or 1000
  local data, err = c:get(base .. "/v5/market/recent-trade", { query = { category = sym.market, symbol = sym.raw,
    limit = limit }, endpoint = "/v5/market/recent-trade" })
  if data == nil then return nil, err end
  if type(data) ~= "table" or tonumber(data.retCode) ~= 0 or type(data.result) ~= "table" then
    return nil, "Bybit: recent-trade: " .. tostring(type(data) == "table" and data.retMsg or data)
  end
  local out = {}
  for _, t in ipairs(data.result.list or {}) do
    local ts = tonumber(t.time)
    if ts and ts >= last.ts then
      out[#out + 1] = { kind = "trade", raw = sym.raw, id = tostring(t.execId), ts = ts, price = tostring(t.price),
        size = tostring(t.size), side = t.side == "Sell" and "sell" or "buy" }
    end
  end
  table.sort(out, function(a, b) return a.ts < b.ts end)
  return out
end

return _M
