--- sluice.stream.exchange: stream collectors of an exchange's trades and
-- order books, on the collector framework's stream (sluice.collector.stream)
-- and one protocol module per exchange (sluice.stream.binance,
-- sluice.stream.bybit).
--
--   -- collectors/binance_stream.lua
--   return require("sluice.stream.exchange").define(require("sluice.stream.binance"))
--   -- a configuration entry
--   { use = "binance_stream", symbols = { "BTC/USDT", "ETH/USDT" }, depth = 20, book_interval = 10 }
--
-- One instance keeps one connection, for symbols of one market (a second
-- market is a second entry). Each session (connection): connect, subscribe
-- (paced by the limiter), fetch the trades missed since the last one stored
-- (REST, the protocol's trades_since; the store's key makes an overlap
-- harmless: exactly once), then read: every trade is a `trades` row
-- (exchange, market, symbol, raw_symbol, trade_id, ts, price, size, side;
-- key exchange, symbol, trade_id), every diff goes to the symbol's book
-- (sluice.stream.book). A book with no snapshot or with a gap resyncs: a
-- REST snapshot (Binance), or its topic subscribed again (Bybit, whose
-- reply is a snapshot). Every book_interval seconds the top `depth` levels
-- of each synced book are an `order_books` row (sluice.exchange.tables';
-- metrics from sluice.exchange.book; sequence = its last update id); a
-- book not synced is never written. A book unsynced for resync_grace
-- seconds degrades health. stats().stream.books (/status, the REPL's
-- books()) has each book's status.
--
-- Options: symbols (unified, one market), ws_url (the stream's base URL;
-- the protocol's by default), base_url (REST; the adapter's), trades and
-- books (true), depth (20 levels a snapshot row), book_interval (10 s),
-- backfill_pages (10 REST pages of trades at most after a reconnect),
-- resync_grace (10 s), max_buffer (64 MiB: sluice.ws's bound on messages
-- received and not yet handled; at half of it the connection stops
-- reading, and the exchange's writes wait: a store slower than the stream
-- holds memory at that, never more). The state of an instance is its stream handle's
-- s.state; nothing here yields but the stream function.
local sluice = require "sluice"
local collector = require "sluice.collector"
local book_mod = require "sluice.stream.book"
local symbols_mod = require "sluice.exchange.symbols"
local tables_mod = require "sluice.exchange.tables"
local kit = require "sluice.exchange"

local _M = {}

--- TRADES: the trades table.
_M.TRADES = {
  columns = { exchange = "text", market = "text", symbol = "text", raw_symbol = "text", trade_id = "text",
    ts = "integer", price = "decimal", size = "decimal", side = "text" },
  key = { "exchange", "symbol", "trade_id" },
  required = { "raw_symbol", "ts", "price", "size" },
}

local function now_ms()
  return math.floor(sluice.time() * 1000)
end

local function check(proto, o)
  local adapter = { name = proto.name, markets = proto.markets, raw_symbol = proto.adapter.raw_symbol }
  local syms, err = symbols_mod.resolve(adapter, o.symbols, {})
  if not syms then error(err, 0) end
  for _, s in ipairs(syms) do
    if s.market ~= syms[1].market then
      error("option 'symbols': " .. syms[1].unified .. " is " .. syms[1].market .. " and " .. s.unified .. " is "
        .. s.market .. ": one market per stream (configure one entry per market)", 0)
    end
  end
  if not (o.depth >= 1 and o.depth <= 1000 and o.depth == math.floor(o.depth)) then
    error("option 'depth' must be an integer in [1, 1000], got " .. tostring(o.depth), 0)
  end
  if not (o.book_interval > 0) then error("option 'book_interval' must be > 0", 0) end
  if not (o.max_buffer >= 65536 and o.max_buffer == math.floor(o.max_buffer)) then
    error("option 'max_buffer' must be an integer >= 65536 (bytes), got " .. tostring(o.max_buffer), 0)
  end
  if not (o.trades or o.books) then error("options 'trades' and 'books' are both false: nothing to stream", 0) end
  return syms
end

-- The instance's state, made on the first session.
local function state(proto, c, s)
  local st = s.state
  if st.syms then return st end
  st.syms = check(proto, c.options)
  st.market = st.syms[1].market
  st.by_raw, st.books, st.last_trade, st.resyncs, st.unsynced_since, st.fetched = {}, {}, {}, {}, {}, {}
  for _, sym in ipairs(st.syms) do st.by_raw[sym.raw] = sym end
  -- the last trade stored, per symbol: where the REST backfill starts
  if c.store and c.options.trades then
    for _, sym in ipairs(st.syms) do
      local r = c.store:query("SELECT trade_id, ts FROM trades WHERE exchange = ? AND symbol = ? "
        .. "ORDER BY ts DESC, LENGTH(trade_id) DESC, trade_id DESC LIMIT 1", proto.name, sym.unified)
      if r and r[1] then st.last_trade[sym.raw] = { id = r[1].trade_id, ts = r[1].ts } end
    end
  end
  s:view("books", function()
    local out = {}
    for raw, b in pairs(st.books) do
      local v = b:status()
      v.resyncs = st.resyncs[raw] or 0
      out[st.by_raw[raw].unified] = v
    end
    return out
  end)
  return st
end

local function rest_base(proto, c, market)
  local url = c.config.base_url
  if url then return (url:gsub("/$", "")) end
  return proto.adapter.base_urls[market]
end

local function trade_row(proto, sym, t)
  return { exchange = proto.name, market = sym.market, symbol = sym.unified, raw_symbol = sym.raw,
    trade_id = t.id, ts = t.ts, price = t.price, size = t.size, side = t.side }
end

local function on_trade(proto, st, s, t)
  local sym = st.by_raw[t.raw]
  if not sym or not t.id then return end
  s:emit("trades", trade_row(proto, sym, t), t.ts)
  local last = st.last_trade[t.raw]
  if not last or (t.ts or 0) >= (last.ts or 0) then st.last_trade[t.raw] = { id = t.id, ts = t.ts } end
end

-- The trades missed since the last one seen, per symbol (after a reconnect).
local function backfill(proto, c, s, st)
  for _, sym in ipairs(st.syms) do
    local last = st.last_trade[sym.raw]
    if last then
      local got, err = proto.trades_since(c, rest_base(proto, c, sym.market), sym, last, c.options.backfill_pages)
      if not got then
        s.log.warning("trades not backfilled after a reconnect", { symbol = sym.unified, error = tostring(err) })
      else
        for _, t in ipairs(got) do on_trade(proto, st, s, t) end
        s.log.info("trades backfilled", { symbol = sym.unified, trades = #got })
      end
    end
  end
end

local function unsynced(st, raw)
  st.unsynced_since[raw] = st.unsynced_since[raw] or sluice.now()
end

-- A new snapshot for the book of raw (Binance: REST; Bybit: resubscribe).
local function resync(proto, c, s, st, raw)
  local b = st.books[raw]
  local sym = st.by_raw[raw]
  unsynced(st, raw)
  if proto.resync == "resubscribe" then
    st.req = st.req + 1
    for _, m in ipairs(proto.resubscribe(sym, st.req)) do
      local ok, err = s:send(m)
      if not ok then return nil, err end
    end
    return true
  end
  local snap, err = proto.snapshot(c, rest_base(proto, c, sym.market), sym)
  if not snap then
    s.log.warning("book snapshot failed", { symbol = sym.unified, error = tostring(err) })
    return true -- the next diff tries again
  end
  local ok, why, kind = b:snapshot(snap.id, snap.bids, snap.asks)
  if ok then
    st.unsynced_since[raw] = nil
  elseif kind == "old" then
    -- the stream is ahead of the REST snapshot: another one, at most once
    -- a second (the next diff or the every-second ticker asks)
    s.log.info("book snapshot older than the stream: fetching another", { symbol = sym.unified, reason = why })
  else
    st.resyncs[raw] = (st.resyncs[raw] or 0) + 1
    s.log.warning("book gap after its snapshot: resyncing", { symbol = sym.unified, reason = why })
  end
  return true
end

-- A REST snapshot for each book that waits for one with diffs buffered
-- and has not asked for one within a second (Binance, every second: a
-- quiet symbol sends no diff to ask).
local function refetch(proto, c, s, st)
  for raw, b in pairs(st.books) do
    local last = st.fetched[raw]
    if not b:synced() and b:status().buffered > 0 and (not last or sluice.now() - last >= 1) then
      st.fetched[raw] = sluice.now()
      resync(proto, c, s, st, raw)
    end
  end
end

local function on_depth(proto, c, s, st, ev)
  local b = st.books[ev.raw]
  if not b then return true end
  local r, why = b:update(ev)
  if r == nil then
    st.resyncs[ev.raw] = (st.resyncs[ev.raw] or 0) + 1
    s.log.warning("book gap: resyncing", { symbol = st.by_raw[ev.raw].unified, reason = why })
    if proto.resync == "snapshot" then
      -- the event that showed the gap waits in the (now unsynced) book's
      -- buffer: the new snapshot may be older than it; and the snapshot is
      -- fetched at once (on a quiet symbol no next diff would ask for it)
      b:update(ev)
      st.fetched[ev.raw] = sluice.now()
    end
    return resync(proto, c, s, st, ev.raw)
  end
  if r == "buffered" and proto.resync == "snapshot" then
    unsynced(st, ev.raw)
    -- the snapshot is fetched once the stream has an event buffered
    -- (Binance: open the stream, buffer, then get the snapshot; more
    -- events wait in the connection meanwhile), and again, at most once
    -- a second, while it is older than the first event buffered
    local last = st.fetched[ev.raw]
    if not last or sluice.now() - last >= 1 then
      st.fetched[ev.raw] = sluice.now()
      return resync(proto, c, s, st, ev.raw)
    end
  end
  return true
end

local function on_snapshot(st, s, ev)
  local b = st.books[ev.raw]
  if not b then return end
  -- a snapshot on the stream follows whatever the book buffered
  local ok, why = b:snapshot(ev.id, ev.bids, ev.asks, ev.ts, { stream = true })
  if ok then
    st.unsynced_since[ev.raw] = nil
  else
    s.log.warning("book snapshot refused", { symbol = st.by_raw[ev.raw].unified, reason = why })
  end
end

-- The order_books rows of every synced book.
local function snapshot_rows(proto, c, s, st)
  local ts = now_ms()
  local ex = { row = function(sym, fields)
    fields.exchange, fields.market, fields.symbol, fields.raw_symbol = proto.name, sym.market, sym.unified, sym.raw
    return fields
  end }
  for raw, b in pairs(st.books) do
    local top = b:top(c.options.depth)
    if top and #top.bids > 0 and #top.asks > 0 then
      s:emit("order_books", kit.book_row(ex, st.by_raw[raw], { ts = ts, sequence = top.id, bids = top.bids,
        asks = top.asks }), top.ts)
    end
  end
end

local function check_books(c, s, st)
  for raw, since in pairs(st.books) do
    local t = st.unsynced_since[raw]
    local key = "book " .. st.by_raw[raw].unified
    if t and sluice.now() - t > c.options.resync_grace then
      local _, why = since:synced()
      s:problem(key, string.format("book %s not synced for %.0f s: %s", st.by_raw[raw].unified, sluice.now() - t,
        tostring(why)))
    else
      s:problem(key, nil)
    end
  end
end

-- One session: see the header.
local function stream_fn(proto, connector)
  return function(c, s)
    local st = state(proto, c, s)
    st.req = (st.req or 0) + 1
    local base = c.options.ws_url ~= "" and c.options.ws_url:gsub("/$", "") or proto.ws_urls[st.market]
    local conn, err = s:connect(proto.url(base, st.market), { timeout = c.config.timeout,
      max_buffer = c.options.max_buffer, connector = connector })
    if not conn then return nil, err end
    for _, m in ipairs(proto.subscribe(st.syms, c.options, st.req)) do
      local ok, serr = s:send(m)
      if not ok then return nil, serr end
    end
    -- new books each session: what the stream said before is not continued
    if c.options.books then
      for _, sym in ipairs(st.syms) do
        st.books[sym.raw] = book_mod.new{ symbol = sym.unified }
        unsynced(st, sym.raw)
      end
      s:every(c.options.book_interval, function() snapshot_rows(proto, c, s, st) end)
      s:every(1, function() check_books(c, s, st) end)
      if proto.resync == "snapshot" then s:every(1, function() refetch(proto, c, s, st) end) end
    end
    if proto.ping then s:every(proto.ping.every, function() s:send(proto.ping.message) end) end
    if c.options.trades then backfill(proto, c, s, st) end
    while true do
      local data, why = s:receive()
      if not data then return nil, why end
      local events, perr = proto.parse(data)
      if not events then
        s.log.warning("message not understood", { error = perr })
        events = {}
      end
      for _, ev in ipairs(events) do
        local k = ev.kind
        if k == "trade" then
          on_trade(proto, st, s, ev)
        elseif k == "depth" then
          local ok, rerr = on_depth(proto, c, s, st, ev)
          if not ok then return nil, rerr end
        elseif k == "book_snapshot" then
          on_snapshot(st, s, ev)
        elseif k == "reply" and not ev.ok then
          return nil, ev.err
        end
      end
    end
  end
end

--- define(proto [, opts]) -> a collector spec streaming proto's exchange.
-- opts.connector: a function with sluice.ws.connect's contract that the
-- spec connects with instead (specs without a network).
function _M.define(proto, opts)
  opts = opts or {}
  local tables = { trades = _M.TRADES, order_books = tables_mod.tables().order_books }
  return collector.define{
    name = proto.name .. "_stream",
    description = proto.name .. ": trades and order books from its market streams",
    timeout = 10,
    limiter = { rate = 5 },
    breaker = { failure_threshold = 5, timeout = 60 },
    retry = { strategy = "exponential_jitter", base_delay = 1, max_delay = 30 },
    tables = tables,
    options = { symbols = {}, ws_url = "", trades = true, books = true, depth = 20, book_interval = 10,
      backfill_pages = 10, resync_grace = 10, max_buffer = 64 * 2 ^ 20 },
    init = function(c) check(proto, c.options) end,
    stream = stream_fn(proto, opts.connector),
  }
end

return _M
