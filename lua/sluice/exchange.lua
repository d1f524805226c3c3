--- sluice.exchange: the exchange-collector kit. define(adapter) turns an
-- exchange adapter (what sluice.exchange.<name> returns: its markets, base
-- URLs, candles, limits, error map and one function per kind of data) into
-- a collector spec with the unified tables (sluice.exchange.tables), ccxt's
-- unified symbols (sluice.exchange.symbols), validated order books with
-- their metrics (sluice.exchange.book) and per-exchange statistics
-- (sluice.exchange.stats):
--
--   -- collectors/bybit.lua
--   return require("sluice.exchange").define(require("sluice.exchange.bybit"))
--
--   -- a configuration entry
--   { use = "bybit", symbols = { "BTC/USDT", "BTC/USDT:USDT" }, markets = { "linear" },
--     datasets = { order_book = { interval = 1 } }, depth = 50, candle = "1m" }
--
-- The spec: name and upstream = adapter.name (one limiter and one breaker
-- for every dataset: the quota is per IP, a ban stops them all), the
-- adapter's limiter, breaker and retry (defaults below), its classify, the
-- options symbols, markets, depth, candle, first_candles, concurrency
-- and backfill_datasets (checked when the instance starts or backfills), four
-- datasets -- tickers (5 s), funding (60 s, perpetuals only), order_book
-- (5 s) and klines (60 s) -- and a backfill of klines and funding history,
-- per symbol (the partitions are the unified symbols).
--
-- A dataset whose adapter function is absent is declared disabled, and a
-- configuration that enables it is refused when the instance starts
-- ("bitget has no funding data: its adapter has no funding function"). A
-- dataset no configured symbol applies to (funding with spot symbols only)
-- runs without a request and stores nothing; /status says why
-- (sluice.exchange.stats: idle).
--
-- The adapter's data functions get ex, this module's helper for one
-- instance: ex.base(c, market) -> the base URL (the configuration's
-- base_url, else the adapter's base_urls[market]); ex.skip(c, sym, why)
-- -> logs once per (symbol, why) that a symbol is skipped and lists it in
-- /status; ex.skipped(c, sym) -> whether ex.skip was called for sym (a
-- batch request can leave it out); ex.row(sym, fields) -> fields with
-- exchange, market, symbol and raw_symbol filled; ex.name, ex.options
-- (the instance's options) and ex.symbols (the resolved symbol records)
-- for reading. They return rows (or a book), or nil, err [, kind]. A
-- per-symbol call (order_book, klines, a backfill's) that returns nil,
-- why, "ignored", or nil after calling ex.skip for its symbol, skipped the
-- symbol: no failure, logged once (the kit calls ex.skip(c, sym, why)
-- when the adapter did not). A call that fails otherwise is logged and
-- the others go on; a run where every call not skipped failed fails.
-- A run's calls go up to the option concurrency (default 8) at once, each
-- in a task of its own (all through the one limiter); a run over its
-- budget takes them with it (its budget region kills the tasks it spawned),
-- and so does a task that ends.
--
-- The module owns the per-instance state (ex, the resolved symbols) in a
-- table weak by instance; collectors' runs yield (requests), define does
-- not.
local sluice = require "sluice"
local json = require "sluice.json"
local collector = require "sluice.collector"
local symbols_mod = require "sluice.exchange.symbols"
local tables_mod = require "sluice.exchange.tables"
local book_mod = require "sluice.exchange.book"
local stats = require "sluice.exchange.stats"

local _M = {}

--- DATASETS: the kit's datasets, the adapter function each calls, and its
-- default interval in seconds.
_M.DATASETS = {
  tickers = { fn = "tickers", interval = 5, table = "tickers", what = "ticker data" },
  funding = { fn = "funding", interval = 60, table = "funding_current", what = "funding data",
    perpetual = true },
  order_book = { fn = "order_book", interval = 5, table = "order_books", what = "order books" },
  klines = { fn = "klines", interval = 60, table = "klines", what = "klines" },
}

--- BACKFILLS: what a backfill can fetch, and the adapter function of each.
_M.BACKFILLS = { klines = "klines", funding_history = "funding_history" }

local UNITS = { s = 1, m = 60, h = 3600, d = 86400, w = 604800, M = 2592000 }

--- candle_seconds(candle) -> seconds of a unified candle ("1m" 60, "4h"
-- 14400, "1M" a 30-day month), or nil.
function _M.candle_seconds(candle)
  local n, u = tostring(candle):match("^(%d+)([smhdwM])$")
  if not n or tonumber(n) == 0 then return nil end
  return tonumber(n) * UNITS[u]
end

local DEFAULT_BREAKER = { failure_threshold = 5, timeout = 60 }
local DEFAULT_RETRY = { strategy = "adaptive", max_attempts = 3, base_delay = 1, max_delay = 30 }

-- --- the adapter ---------------------------------------------------------

local ADAPTER_FIELDS = {
  name = "string", base_urls = "table", markets = "table", candles = "table", limiter = "table",
  breaker = "table", retry = "table", raw_symbol = "function", classify = "function",
  tickers = "function", funding = "function", order_book = "function", klines = "function",
  funding_history = "function", description = "string", beginning_date = "string|number",
  timeout = "number",
}

local function check_adapter(a)
  if type(a) ~= "table" then
    error("sluice.exchange.define: bad argument #1 (an adapter table expected, got " .. type(a) .. ")", 3)
  end
  for k, v in pairs(a) do
    local want = ADAPTER_FIELDS[k]
    if not want then
      error("sluice.exchange.define: adapter has an unknown field '" .. tostring(k) .. "'", 3)
    end
    if not want:find(type(v), 1, true) then
      error("sluice.exchange.define: adapter field '" .. k .. "' must be a " .. want .. ", got "
        .. type(v), 3)
    end
  end
  for _, k in ipairs({ "name", "markets", "base_urls", "raw_symbol" }) do
    if a[k] == nil then error("sluice.exchange.define: adapter field '" .. k .. "' is required", 3) end
  end
  if not a.name:match("^[%a_][%w_]*$") then
    error("sluice.exchange.define: adapter field 'name' must be an identifier, got " .. a.name, 3)
  end
  for m in pairs(a.markets) do
    if m ~= "spot" and m ~= "linear" and m ~= "inverse" then
      error("sluice.exchange.define: adapter.markets: unknown market '" .. tostring(m)
        .. "' (spot, linear, inverse)", 3)
    end
    if type(a.base_urls[m]) ~= "string" then
      error("sluice.exchange.define: adapter.base_urls has no URL for its " .. m .. " market", 3)
    end
  end
end

-- --- one instance's state --------------------------------------------------

-- instance -> {ex, symbols, by_symbol, skipped}
local states = setmetatable({}, { __mode = "k" })

local function sorted_keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out)
  return out
end

-- Checks c's options against the adapter; raises the first problem.
local function check_options(adapter, o)
  local syms, err = symbols_mod.resolve(adapter, o.symbols, o.markets)
  if not syms then error(err, 0) end
  if not (type(o.depth) == "number" and o.depth >= 1 and o.depth <= 5000 and o.depth == math.floor(o.depth)) then
    error("option 'depth' must be an integer in [1, 5000], got " .. tostring(o.depth), 0)
  end
  if adapter.klines or adapter.candles then
    if not (adapter.candles or {})[o.candle] then
      error("option 'candle': " .. adapter.name .. " has no candle " .. tostring(o.candle) .. " (it has "
        .. table.concat(sorted_keys(adapter.candles or {}), ", ") .. ")", 0)
    end
    if not _M.candle_seconds(o.candle) then
      error("option 'candle' must be a unified candle such as 1m, 1h, 1d, got " .. tostring(o.candle), 0)
    end
  end
  if not (type(o.concurrency) == "number" and o.concurrency >= 1 and o.concurrency <= 100
      and o.concurrency == math.floor(o.concurrency)) then
    error("option 'concurrency' must be an integer in [1, 100], got " .. tostring(o.concurrency), 0)
  end
  if not (o.first_candles >= 1 and o.first_candles <= 100000 and o.first_candles == math.floor(o.first_candles)) then
    error("option 'first_candles' must be an integer in [1, 100000], got " .. tostring(o.first_candles), 0)
  end
  for i, b in ipairs(o.backfill_datasets) do
    if not _M.BACKFILLS[b] then
      error("option 'backfill_datasets'[" .. i .. "] must be klines or funding_history, got " .. tostring(b), 0)
    end
    if not adapter[_M.BACKFILLS[b]] then
      error("option 'backfill_datasets'[" .. i .. "]: " .. adapter.name .. " has no " .. b
        .. " (its adapter has no " .. _M.BACKFILLS[b] .. " function)", 0)
    end
  end
  return syms
end

-- The helper handed to the adapter's functions for instance c.
local function make_ex(adapter, opts, st)
  local ex = { name = adapter.name, options = opts, symbols = st.symbols }
  function ex.base(inst, market)
    local url = inst.config.base_url
    if url then return (url:gsub("/$", "")) end
    return adapter.base_urls[market]
  end
  function ex.skip(inst, sym, why)
    local s = states[inst] or st
    local u = sym and sym.unified
    if u then s.skips[u] = (s.skips[u] or 0) + 1 end
    local key = tostring(u) .. "\0" .. tostring(why)
    if s.skipped[key] then return end
    s.skipped[key] = true
    inst.log.warning("symbol skipped", { symbol = sym and sym.unified, raw_symbol = sym and sym.raw,
      reason = tostring(why) })
    stats.skipped(inst, sym and sym.unified, why)
  end
  function ex.skipped(inst, sym)
    local s = states[inst] or st
    return (s.skips[sym and sym.unified or false] or 0) > 0
  end
  function ex.row(sym, fields)
    fields.exchange, fields.market = adapter.name, sym.market
    fields.symbol, fields.raw_symbol = sym.unified, sym.raw
    return fields
  end
  return ex
end

-- c's state, resolved from its options on first use (init, or a backfill,
-- which does not call init); raises for bad options.
local function state(adapter, c)
  local st = states[c]
  if st then return st end
  local syms = check_options(adapter, c.options)
  st = { symbols = syms, by_symbol = {}, by_market = {}, skipped = {}, skips = {} }
  for _, s in ipairs(syms) do
    st.by_symbol[s.unified] = s
    st.by_market[s.market] = st.by_market[s.market] or {}
    table.insert(st.by_market[s.market], s)
  end
  st.ex = make_ex(adapter, c.options, st)
  states[c] = st
  stats.register(c, adapter.name)
  return st
end

-- --- the datasets ----------------------------------------------------------

local function now_ms()
  return math.floor(sluice.time() * 1000)
end

-- task -> the set of worker tasks of its runs still live (see run_calls)
local workers_of = setmetatable({}, { __mode = "k" })

-- The workers of the running task, watched: when the task ends (done,
-- failed, or killed -- a run over its budget, a stop) its live workers are
-- killed, their requests cancelled: none outlives the run. One watcher per
-- task, for all the runs it makes.
local function workers_of_current()
  local parent = sluice.current()
  local set = workers_of[parent]
  if set then return set end
  set = {}
  workers_of[parent] = set
  sluice.spawn(function()
    sluice.wait(parent)
    workers_of[parent] = nil
    for w in pairs(set) do sluice.kill(w, "its run ended") end
  end)
  return set
end

-- Runs each(i, call) for every call, up to n at once: in worker tasks when
-- more than one runs at once, else in the calling task. Returns when every
-- call is done.
local function run_calls(calls, n, each)
  if n <= 1 or #calls <= 1 or not sluice.current() then
    for i, k in ipairs(calls) do each(i, k) end
    return
  end
  local last = 0
  local function worker()
    while last < #calls do
      last = last + 1
      each(last, calls[last])
    end
  end
  local set, mine = workers_of_current(), {}
  for w = 1, math.min(n, #calls) do
    mine[w] = sluice.spawn(worker)
    set[mine[w]] = true
  end
  for _, w in ipairs(mine) do
    sluice.wait(w)
    set[w] = nil
  end
end

-- fn(...), a call for symbol sym: got | nil, err | nil, why, true when
-- it skipped sym (returned nil, why, "ignored", or nil after ex.skip of
-- sym; logged once by ex.skip, called here when the adapter did not).
local function call_symbol(c, st, sym, fn, ...)
  local before = st.skips[sym.unified] or 0
  local got, why, kind = fn(...)
  if got ~= nil then return got end
  local after = st.skips[sym.unified] or 0
  if kind == "ignored" or after > before then
    if after == before then st.ex.skip(c, sym, why) end
    return nil, why, true
  end
  return nil, why
end

-- Collects the rows of each call in calls ({label, sym, fn, args}), up to
-- the option concurrency at once: the call's result goes through
-- on_result(rows, got, call), in the order of calls. A call for a symbol
-- that returns nil, err, "ignored", or nil after ex.skip of its symbol,
-- skipped it: no failure (logged once, by ex.skip; the kit calls it when
-- the adapter did not). A call that returns nil, err or raises otherwise
-- is logged and the others go on. Raises when every call not skipped
-- failed (an open breaker refusing them all: a skipped run).
local function gather(c, dataset, calls, on_result)
  local st = states[c]
  local outs = {}
  run_calls(calls, c.options.concurrency, function(i, k)
    local ok, got, why, skipped
    if k.sym then
      ok, got, why, skipped = pcall(call_symbol, c, st, k.sym, k.fn, unpack(k.args))
    else
      ok, got, why = pcall(k.fn, unpack(k.args))
    end
    if not ok then
      outs[i] = { err = got }
    elseif skipped then
      outs[i] = { skipped = true }
    elseif got == nil then
      outs[i] = { err = why }
    else
      outs[i] = { got = got }
    end
  end)
  local rows, errs, skipped = {}, {}, 0
  for i, k in ipairs(calls) do
    local o = outs[i] or { err = "not run" }
    if o.skipped then
      skipped = skipped + 1
    elseif o.got ~= nil then
      local ok, err = pcall(on_result, rows, o.got, k)
      if not ok then o.err = err end
    end
    if o.err ~= nil then errs[#errs + 1] = k.label .. ": " .. tostring(o.err) end
  end
  if #errs > 0 and #errs == #calls - skipped then error(table.concat(errs, "; "), 0) end
  if #errs > 0 then
    c.log.warning("some requests of the dataset failed", { dataset = dataset, errors = table.concat(errs, "; ") })
  end
  return rows
end

local function append(rows, got)
  if type(got) ~= "table" then error("the adapter returned " .. type(got) .. ", not a list of rows", 0) end
  for _, r in ipairs(got) do rows[#rows + 1] = r end
end

-- The newest value of field among rows (for the lag statistics).
local function newest(rows, field)
  local n
  for _, r in ipairs(rows) do
    local v = tonumber(r[field])
    if v and (not n or v > n) then n = v end
  end
  return n
end

-- The markets of st that the dataset applies to, with their symbols.
local function markets_for(st, perpetual)
  local out = {}
  for _, m in ipairs(symbols_mod.MARKETS) do
    if st.by_market[m] and not (perpetual and m == "spot") then out[#out + 1] = m end
  end
  return out
end

local function batch_dataset(adapter, name)
  local d = _M.DATASETS[name]
  return function(c)
    local st = state(adapter, c)
    local ms = markets_for(st, d.perpetual)
    if #ms == 0 then
      stats.idle(c, name, "no configured symbol is a perpetual (linear or inverse)")
      return { [d.table] = {} }
    end
    local calls = {}
    for _, m in ipairs(ms) do
      calls[#calls + 1] = { label = m, fn = adapter[d.fn], args = { st.ex, c, m, st.by_market[m] } }
    end
    local rows = gather(c, name, calls, append)
    stats.observe(c, name, newest(rows, "ts"))
    return { [d.table] = rows }
  end
end

--- book_row(ex, sym, book) -> an order_books row: the book's sides as
-- exact [price, size] text, and its metrics when book.check accepts it
-- (else the row carries the sides alone, and the table's validate
-- rejects it with the reason).
function _M.book_row(ex, sym, book)
  local row = ex.row(sym, { ts = book.ts or now_ms(), sequence = book.sequence })
  local bids, berr = book_mod.levels(book.bids, "bids")
  local asks, aerr = book_mod.levels(book.asks, "asks")
  row.bids = bids and json.array(bids) or (type(book.bids) == "table" and book.bids or { malformed = true })
  row.asks = asks and json.array(asks) or (type(book.asks) == "table" and book.asks or { malformed = true })
  if berr or aerr or not book_mod.check(bids, asks) then return row end
  for k, v in pairs(book_mod.metrics(bids, asks)) do row[k] = v end
  return row
end

local function order_book_dataset(adapter)
  return function(c)
    local st = state(adapter, c)
    local calls = {}
    for _, s in ipairs(st.symbols) do
      calls[#calls + 1] = { label = s.unified, sym = s, fn = adapter.order_book,
        args = { st.ex, c, s.market, s, c.options.depth } }
    end
    local rows = gather(c, "order_book", calls, function(out, got, k)
      if type(got) ~= "table" then error("the adapter returned " .. type(got) .. ", not a book", 0) end
      out[#out + 1] = _M.book_row(st.ex, k.sym, got)
    end)
    stats.observe(c, "order_book", newest(rows, "ts"))
    return { order_books = rows }
  end
end

-- The open time of the newest candle stored for sym, or nil.
local function last_candle(c, sym, candle)
  if not c.store then return nil end
  local r = c.store:query("SELECT MAX(open_time) AS t FROM klines WHERE exchange = ? AND market = ? "
    .. "AND symbol = ? AND interval = ?", c.spec.name, sym.market, sym.unified, candle)
  return r and r[1] and r[1].t
end

local function klines_dataset(adapter)
  return function(c)
    local st = state(adapter, c)
    local candle = c.options.candle
    local step = _M.candle_seconds(candle) * 1000
    local now = now_ms()
    local calls = {}
    for _, s in ipairs(st.symbols) do
      -- since the last candle stored (again: it may still have been open),
      -- or the latest first_candles on the first run
      local from = last_candle(c, s, candle)
        or (math.floor(now / step) - c.options.first_candles + 1) * step
      calls[#calls + 1] = { label = s.unified, sym = s, fn = adapter.klines,
        args = { st.ex, c, s.market, s, candle, from, now + 1 } }
    end
    local rows = gather(c, "klines", calls, function(out, got, k)
      append(out, got)
      for i = #out - #got + 1, #out do out[i].interval = out[i].interval or candle end
      return k
    end)
    stats.observe(c, "klines", newest(rows, "open_time"))
    return { klines = rows }
  end
end

-- --- backfill --------------------------------------------------------------

-- Rows of got whose field is in [from_ms, to_ms): the window's own.
local function within(got, field, from_ms, to_ms)
  if type(got) ~= "table" then error("the adapter returned " .. type(got) .. ", not a list of rows", 0) end
  local out = {}
  for _, r in ipairs(got) do
    local t = tonumber(r[field])
    if t and t >= from_ms and t < to_ms then out[#out + 1] = r end
  end
  return out
end

local function backfill(adapter)
  return function(c, from, to, partition)
    local st = state(adapter, c)
    local sym = st.by_symbol[partition]
    if not sym then error("backfill: no configured symbol " .. tostring(partition), 0) end
    local from_ms, to_ms = math.floor(from * 1000), math.floor(to * 1000)
    local out = {}
    for _, b in ipairs(c.options.backfill_datasets) do
      if b == "klines" then
        local candle = c.options.candle
        local got, err, skipped = call_symbol(c, st, sym, adapter.klines, st.ex, c, sym.market, sym,
          candle, from_ms, to_ms)
        if skipped then got = {} end
        if not got then error("klines of " .. sym.unified .. ": " .. tostring(err), 0) end
        got = within(got, "open_time", from_ms, to_ms)
        for _, r in ipairs(got) do r.interval = r.interval or candle end
        out.klines = got
      elseif sym.market ~= "spot" then
        local got, err, skipped = call_symbol(c, st, sym, adapter.funding_history, st.ex, c, sym.market,
          sym, from_ms, to_ms)
        if skipped then got = {} end
        if not got then error("funding history of " .. sym.unified .. ": " .. tostring(err), 0) end
        out.funding_rates = within(got, "funding_time", from_ms, to_ms)
      end
    end
    return out
  end
end

-- --- define ----------------------------------------------------------------

local function dataset_fn(adapter, name)
  if name == "order_book" then return order_book_dataset(adapter) end
  if name == "klines" then return klines_dataset(adapter) end
  return batch_dataset(adapter, name)
end

local function absent(adapter, name)
  local d = _M.DATASETS[name]
  return adapter.name .. " has no " .. d.what .. ": its adapter has no " .. d.fn .. " function"
end

--- define(adapter) -> a collector spec (collector.define's). Raises for
-- an adapter that is not one (a missing or mistyped field, a market
-- without a base URL).
function _M.define(adapter)
  check_adapter(adapter)
  local datasets = {}
  for name, d in pairs(_M.DATASETS) do
    if adapter[d.fn] then
      datasets[name] = { interval = d.interval, table = d.table, collect = dataset_fn(adapter, name) }
    else
      local why = absent(adapter, name)
      datasets[name] = { interval = d.interval, table = d.table, enabled = false, description = why,
        collect = function() error(why, 0) end }
    end
  end
  local backfills = {}
  for b, fn in pairs(_M.BACKFILLS) do
    if adapter[fn] then backfills[#backfills + 1] = b end
  end
  table.sort(backfills)
  local spec = {
    name = adapter.name,
    description = adapter.description or (adapter.name .. ": tickers, funding, order books and klines"),
    upstream = adapter.name,
    timeout = adapter.timeout or 10,
    jitter = 0.05,
    limiter = adapter.limiter or { rate = 10 },
    breaker = adapter.breaker or DEFAULT_BREAKER,
    retry = adapter.retry or DEFAULT_RETRY,
    classify = adapter.classify,
    tables = tables_mod.tables(),
    -- binance_klines' klines of before the unified tables, migrated in place
    migrate = function(db) tables_mod.migrate(db) end,
    options = { symbols = {}, markets = {}, depth = 20, candle = "1m", first_candles = 100, concurrency = 8,
      backfill_datasets = backfills },
    datasets = datasets,
    init = function(c)
      for name, d in pairs(_M.DATASETS) do
        if not adapter[d.fn] and c.config.datasets[name].enabled ~= false then
          error("dataset " .. name .. ": " .. absent(adapter, name), 0)
        end
      end
      local st = state(adapter, c)
      if #markets_for(st, true) == 0 and adapter.funding then
        stats.idle(c, "funding", "no configured symbol is a perpetual (linear or inverse)")
      end
    end,
  }
  if #backfills > 0 then
    spec.partitions = function(c)
      local out = {}
      for i, s in ipairs(state(adapter, c).symbols) do out[i] = s.unified end
      return out
    end
    spec.backfill = backfill(adapter)
    -- a window holds 1000 candles (most exchanges' page), at least a day
    spec.backfill_step = function(c)
      return math.max(86400, (_M.candle_seconds(c.options.candle) or 60) * 1000)
    end
    spec.expect = function(c)
      local every = _M.candle_seconds(c.options.candle)
      local kl = false
      for _, b in ipairs(c.options.backfill_datasets) do kl = kl or b == "klines" end
      if not kl or not every or c.options.candle:find("M", 1, true) then return nil end
      return { every = every, time_column = "open_time", unit = "ms", partition = "symbol",
        where = { exchange = adapter.name, interval = c.options.candle }, table = "klines" }
    end
    spec.beginning_date = adapter.beginning_date or "2019-09-01"
  end
  return collector.define(spec)
end

return _M
