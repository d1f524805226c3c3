--- sluice.stream.book: a local order book kept from a snapshot and the
-- exchange's diffs, with the sequence rules that tell a complete book from
-- one that missed an update. Pure Lua, exact (prices and sizes stay
-- decimal text; sluice.bignum where two prices must be compared exactly).
--
--   local book = require "sluice.stream.book"
--   local b = book.new{ symbol = "BTC/USDT" }
--   b:update{ first = 157, last = 160, bids = {{"0.0024", "10"}}, asks = {} } --> "buffered"
--   b:snapshot(158, bids, asks)       -- REST lastUpdateId 158: the buffer replays
--   b:update{ first = 161, last = 161, prev = 160, bids = ..., asks = ... } --> "applied"
--   b:top(20)                         --> {bids = {{p, s}, ...}, asks = ..., id = 161, ts}
--
-- The rules (one set serves Binance's diff depth stream and Bybit's
-- orderbook.N deltas, whose update id u is an event with first = last = u):
--   - before a snapshot, events are buffered (at most max_buffer; more
--     drops the buffer: the snapshot will be older than what is lost);
--   - snapshot(id, ...) replaces every level and replays the buffer; a
--     snapshot that came on the stream itself (Bybit's: snapshot(id, bids,
--     asks, ts, {stream = true})) follows every event buffered before it,
--     so those are stale, never replayed (after a service restart its
--     u starts again at 1, below them all);
--   - an event whose last <= the book's id is stale: dropped ("stale");
--   - the first event applied after a snapshot straddles it: first <= id + 1
--     (Binance: U <= lastUpdateId + 1 <= u);
--   - every later event continues it: first == id + 1, and prev (Binance
--     futures' pu) == id when the event has one;
--   - anything else is a gap: the book is invalidated (levels dropped,
--     resyncs + 1, the reason kept) and update returns nil, "gap: ...":
--     the caller fetches a new snapshot (Binance: after giving the event
--     back to update, which buffers it: the snapshot may be older than it)
--     or subscribes again (Bybit). A book crossed after an event (best bid
--     >= best ask) is known wrong and invalidated the same way;
--   - a snapshot older than the buffer (the first event after it has
--     first > id + 1: the stream missed nothing, the snapshot came from
--     before it) is refused and the buffer kept whole: Binance says to
--     fetch another (nil, "snapshot N older than ...", "old"); no resync
--     is counted.
-- A level whose size is zero is removed (removing a level the book does
-- not have is normal: Binance says so). The book is served (top, best,
-- levels) only while synced: a book known wrong, or not yet complete,
-- answers nil, "not synced: <why>".
--
-- book.new{symbol, max_buffer = 10000}; b:snapshot(id, bids, asks [, ts])
-- -> true | nil, err (a gap in the replayed buffer, a crossed book) | nil,
-- err, "old" (the snapshot is older than the buffer); b:update(ev) ->
-- "applied" | "stale" | "buffered" | nil, "gap: ..."; ev = {first, last,
-- prev, bids, asks, ts} with ids as Lua numbers or int64 cdata (compared
-- as numbers: exchange ids are far below 2^53); b:invalidate(why);
-- b:synced() -> bool, why; b:top(n) -> {bids, asks, id, ts} | nil, why;
-- b:best() -> bid, ask (price text) | nil, why; b:status() -> the view for
-- /status and the REPL (see status). A book owns its levels; nothing here
-- yields.
local bignum = require "sluice.bignum"

local _M = {}
local Book = {}
local mt = { __index = Book }

local DEFAULT_BUFFER = 10000

-- The canonical text of a price (the key of its level): plain decimal text
-- is cut of leading and trailing zeros here, anything else goes through
-- bignum (a number, an exponent, a numeral).
local function canon(p)
  if type(p) == "string" and p:match("^%d+%.?%d*$") then
    local c = p:gsub("^0+", "")
    if c:find(".", 1, true) then c = c:gsub("0+$", ""):gsub("%.$", "") end
    if c == "" or c:sub(1, 1) == "." then c = "0" .. c end
    return c
  end
  return bignum.normalize(p)
end

local function is_zero(s)
  if type(s) == "string" and s:match("^[0.]+$") then return true end
  return bignum.cmp(s, 0) == 0
end

-- a < b for canonical prices: by double first, exactly when the doubles tie
local function less(a, na, b, nb)
  if na ~= nb then return na < nb end
  return a ~= b and bignum.cmp(a, b) < 0
end

-- A side: prices (canonical text) sorted best first, sizes and numbers by
-- price. desc: bids (highest first).
local function new_side(desc)
  return { desc = desc, prices = {}, size = {}, num = {} }
end

-- The index where price p is or would go.
local function find(side, p, n)
  local lo, hi = 1, #side.prices
  local prices, num, desc = side.prices, side.num, side.desc
  while lo <= hi do
    local mid = math.floor((lo + hi) / 2)
    local q = prices[mid]
    if q == p then return mid, true end
    local before -- q comes before p on this side
    if desc then before = less(p, n, q, num[q]) else before = less(q, num[q], p, n) end
    if before then lo = mid + 1 else hi = mid - 1 end
  end
  return lo, false
end

local function set_level(side, price, size)
  local p = canon(price)
  local zero = is_zero(size)
  if side.size[p] ~= nil then
    if zero then
      local i = find(side, p, side.num[p])
      table.remove(side.prices, i)
      side.size[p], side.num[p] = nil, nil
    else
      side.size[p] = type(size) == "string" and size or bignum.normalize(size)
    end
    return
  end
  if zero then return end
  local n = tonumber(p)
  local i = find(side, p, n)
  table.insert(side.prices, i, p)
  side.size[p] = type(size) == "string" and size or bignum.normalize(size)
  side.num[p] = n
end

local function check_levels(levels, what)
  if type(levels) ~= "table" then error("sluice.stream.book: " .. what .. " must be a list of levels", 3) end
  for i, lv in ipairs(levels) do
    if type(lv) ~= "table" or lv[1] == nil or lv[2] == nil then
      error("sluice.stream.book: " .. what .. "[" .. i .. "] is not a [price, size] pair", 3)
    end
  end
end

--- new(opts) -> book
function _M.new(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("sluice.stream.book.new: bad argument #1 (table expected)", 2) end
  local mb = opts.max_buffer or DEFAULT_BUFFER
  if type(mb) ~= "number" or mb < 0 or mb ~= math.floor(mb) then
    error("sluice.stream.book.new: option 'max_buffer' must be an integer >= 0", 2)
  end
  return setmetatable({
    symbol = opts.symbol, max_buffer_ = mb,
    bids_ = new_side(true), asks_ = new_side(false),
    synced_ = false, why_ = "no snapshot yet", id_ = nil, first_ = false, ts_ = nil,
    buffer_ = {}, resyncs_ = 0, updates_ = 0, stale_ = 0, snapshots_ = 0, dropped_buffer_ = 0, old_snapshots_ = 0,
    since_ = nil, last_gap_ = nil,
  }, mt)
end

local function num(v, what)
  local n = tonumber(v)
  if n == nil then error("sluice.stream.book: event field '" .. what .. "' must be a number", 4) end
  return n
end

-- Applies event ev's levels (its sequence already checked).
local function apply(self, ev)
  for _, lv in ipairs(ev.bids or {}) do set_level(self.bids_, lv[1], lv[2]) end
  for _, lv in ipairs(ev.asks or {}) do set_level(self.asks_, lv[1], lv[2]) end
end

--- b:invalidate(why): the book is known wrong: levels dropped, not served
-- until the next snapshot; counts a resync when it was synced.
function Book:invalidate(why)
  if self.synced_ or self.id_ ~= nil then self.resyncs_ = self.resyncs_ + 1 end
  self.synced_, self.why_, self.id_, self.first_ = false, why, nil, false
  self.bids_, self.asks_ = new_side(true), new_side(false)
  self.last_gap_ = why
end

local function crossed(self)
  local b, a = self.bids_.prices[1], self.asks_.prices[1]
  if b and a and not less(b, self.bids_.num[b], a, self.asks_.num[a]) then
    return "crossed book: best bid " .. b .. " >= best ask " .. a
  end
end

-- The sequence check and application of one event on a synced book.
local function step(self, ev, first, last)
  local id = self.id_
  if last <= id then
    self.stale_ = self.stale_ + 1
    return "stale"
  end
  local ok
  if self.first_ then
    ok = first <= id + 1
  else
    ok = first == id + 1 and (ev.prev == nil or num(ev.prev, "prev") == id)
  end
  if not ok then
    local why = "gap: book at update " .. string.format("%.0f", id) .. ", event " .. string.format("%.0f", first)
      .. ".." .. string.format("%.0f", last)
      .. (ev.prev ~= nil and (" (prev " .. string.format("%.0f", num(ev.prev, "prev")) .. ")") or "")
    self:invalidate(why)
    return nil, why
  end
  apply(self, ev)
  self.id_, self.first_ = last, false
  self.ts_ = ev.ts or self.ts_
  self.updates_ = self.updates_ + 1
  local x = crossed(self)
  if x then
    self:invalidate(x)
    return nil, x
  end
  return "applied"
end

--- b:update(ev) -> "applied" | "stale" | "buffered" | nil, "gap: ..."
function Book:update(ev)
  if type(ev) ~= "table" then error("sluice.stream.book: update: bad argument #1 (an event table expected)", 2) end
  local first, last = num(ev.first, "first"), num(ev.last, "last")
  check_levels(ev.bids or {}, "bids")
  check_levels(ev.asks or {}, "asks")
  if not self.synced_ then
    if #self.buffer_ >= self.max_buffer_ then
      self.dropped_buffer_ = self.dropped_buffer_ + #self.buffer_
      self.buffer_ = {}
    end
    self.buffer_[#self.buffer_ + 1] = ev
    return "buffered"
  end
  return step(self, ev, first, last)
end

--- b:snapshot(id, bids, asks [, ts [, opts]]) -> true | nil, "gap: ..."
-- opts.stream: the snapshot came on the stream, after what is buffered.
function Book:snapshot(id, bids, asks, ts, opts)
  id = tonumber(id)
  if id == nil then error("sluice.stream.book: snapshot: bad argument #1 (an update id expected)", 2) end
  check_levels(bids, "bids")
  check_levels(asks, "asks")
  self.bids_, self.asks_ = new_side(true), new_side(false)
  for _, lv in ipairs(bids) do set_level(self.bids_, lv[1], lv[2]) end
  for _, lv in ipairs(asks) do set_level(self.asks_, lv[1], lv[2]) end
  self.id_, self.first_, self.ts_ = id, true, ts
  self.synced_, self.why_ = true, nil
  self.snapshots_ = self.snapshots_ + 1
  self.since_ = nil
  local x = crossed(self)
  if x then
    self:invalidate("snapshot: " .. x)
    return nil, "snapshot: " .. x
  end
  local buffered = self.buffer_
  self.buffer_ = {}
  if opts and opts.stream then
    self.stale_ = self.stale_ + #buffered
    return true
  end
  for i, ev in ipairs(buffered) do
    local first, last = num(ev.first, "first"), num(ev.last, "last")
    if self.first_ and last > id and first > id + 1 then
      -- older than what the stream buffered: not a gap in the stream;
      -- the whole buffer waits for a newer snapshot
      local why = "snapshot " .. string.format("%.0f", id) .. " older than the buffered update "
        .. string.format("%.0f", first)
      self.synced_, self.why_, self.id_, self.first_ = false, why, nil, false
      self.bids_, self.asks_ = new_side(true), new_side(false)
      self.old_snapshots_ = self.old_snapshots_ + 1
      for j = i, #buffered do self.buffer_[#self.buffer_ + 1] = buffered[j] end
      return nil, why, "old"
    end
    local ok, why = step(self, ev, first, last)
    if not ok then
      -- the rest of the buffer waits for the next snapshot
      for j = i + 1, #buffered do self.buffer_[#self.buffer_ + 1] = buffered[j] end
      return nil, why
    end
  end
  return true
end

--- b:synced() -> true | false, why
function Book:synced()
  if self.synced_ then return true end
  return false, self.why_
end

--- b:id() -> the last update id applied (the snapshot's at first), or nil
function Book:id()
  return self.synced_ and self.id_ or nil
end

local function side_levels(side, n)
  local out = {}
  for i = 1, math.min(n or #side.prices, #side.prices) do
    local p = side.prices[i]
    out[i] = { p, side.size[p] }
  end
  return out
end

--- b:top(n) -> {bids, asks, id, ts} (best first, [price, size] text) |
-- nil, "not synced: why"
function Book:top(n)
  if n ~= nil and (type(n) ~= "number" or n < 1) then
    error("sluice.stream.book: top: bad argument #1 (a number of levels >= 1 expected)", 2)
  end
  if not self.synced_ then return nil, "not synced: " .. tostring(self.why_) end
  return { bids = side_levels(self.bids_, n), asks = side_levels(self.asks_, n), id = self.id_, ts = self.ts_ }
end

--- b:best() -> best bid price, best ask price (text; nil for an empty
-- side) | nil, "not synced: why"
function Book:best()
  if not self.synced_ then return nil, "not synced: " .. tostring(self.why_) end
  return self.bids_.prices[1], self.asks_.prices[1]
end

--- b:status() -> {symbol, synced, reason, best_bid, best_ask, spread,
-- bid_levels, ask_levels, last_update_id, resyncs, snapshots,
-- old_snapshots, updates, stale, buffered, last_gap, ts}: best_bid,
-- best_ask and spread (decimal text) only while synced.
function Book:status()
  local s = {
    symbol = self.symbol, synced = self.synced_, reason = self.why_, resyncs = self.resyncs_,
    snapshots = self.snapshots_, old_snapshots = self.old_snapshots_, updates = self.updates_, stale = self.stale_,
    buffered = #self.buffer_,
    last_gap = self.last_gap_, ts = self.ts_,
  }
  if self.synced_ then
    local b, a = self.bids_.prices[1], self.asks_.prices[1]
    s.best_bid, s.best_ask = b, a
    if b and a then s.spread = bignum.sub(a, b) end
    s.bid_levels, s.ask_levels = #self.bids_.prices, #self.asks_.prices
    s.last_update_id = self.id_
  end
  return s
end

return _M
