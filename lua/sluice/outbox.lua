--- sluice.outbox: the durable outbox between the store and the sinks.
--
--   local outbox = require "sluice.outbox"
--   outbox.register_kind("mine", function(name, settings, ctx) return sink end)
--   local box = assert(outbox.new(db, { pg = { kind = "postgres", url = ... } }, ctx))
--   c:add_sink(box:route(c, {"pg"}))   -- the collector's rows are queued
--   box:start()                        -- a forwarder task per sink
--   ... box:stop(5)                    -- at shutdown, before db:close()
--
-- Rows a collection (or a backfill window) commits are queued for each of
-- its sinks in the SAME SQLite transaction as their upsert (the route's
-- enqueue, which sluice.collector.rows calls inside it), so a row is in
-- the local table if and only if it is queued: written once for all the
-- sinks (a chunk per table and `batch` rows, by sluice._outbox in C),
-- with an entry per sink. A forwarder task per sink
-- (sluice.outbox.forwarder) ships them in batches and deletes them once the
-- sink acknowledged; everything is in SQLite (sluice.outbox.queue), so a
-- process killed at any moment resumes from what is there: at-least-once
-- delivery, an exactly-once effect through the sink's upsert by key.
--
-- The sink interface (a kind's factory returns such an object):
--   sink:ensure(table_name, def) -> true | nil, err [, kind]
--     create or reconcile the table on the sink; def = {name, columns, key,
--     required} as store:define took it (columns: name -> type or
--     {type = t, ...}); called (it may yield) before the first batch of a
--     table in this process.
--   sink:write(table_name, rows, def, meta) -> true | nil, err, kind
--     ship one batch: rows are the rows the store accepted, as it holds
--     them, decoded exactly (sluice.json: int64 cdata, json.numeral,
--     uint256/decimal as text, json columns as tables), at most one per
--     key (the latest), oldest first. meta.ids[i]: the id of rows[i]
--     (sluice.outbox.queue's row_id: the same on every send, unique across
--     databases); meta.at[i]: the wall-clock time it was queued.
--     kind "rejected": the sink refused the DATA (constraint, type): the
--     batch goes to sluice_dead_letters with err and the rest flows on; any
--     other failure (connection, timeout, 5xx) is retried with backoff
--     behind the sink's breaker. A sink upserts by key: a batch may come
--     twice. A sink that raises counts as a failure to retry.
--   sink:close() (optional; no yield) when the outbox stops;
--   sink:stats() (optional) -> a table merged into the sink's status.
--   sink.batch (optional): the batch size the kind works best with (the
--     engine's own bulk path wants more rows per insert than 1000), the
--     default when the sink's configuration gives no batch.
-- A kind: register_kind(kind, factory), factory(name, settings, ctx) ->
--   sink | nil, err; settings are the sink's configuration without the
--   outbox's own keys; ctx = {db, redis (sluice.redis client or nil),
--   shared (sluice.shared or nil), log}. A kind not registered is looked
--   up once as the module sluice.sinks.<kind>, which registers it when
--   loaded. redis_stream (sluice.shared.stream) is built in.
--
-- Configuration of a sink (new's second argument, config.sinks):
--   kind      the sink kind (default: the sink's name when it names a kind)
--   tables    list of table names it takes (default: all)
--   batch     rows per write (default: the kind's sink.batch, else 1000; whole chunks, which enqueue
--             cuts at the smallest batch of the sinks taking them)
--   max_age   seconds a row may wait for a batch to fill (default 1)
--   max_rows  bound on the rows queued for it (default 1e6)
--   on_full   "stop" (default): a commit that would pass the bound fails
--             with an error naming the sink (that table's collection fails,
--             nothing is stored, /health is degraded); "drop_oldest": the
--             oldest queued rows are dropped and counted
--   retry     {base_delay = 0.5, max_delay = 30}: the full-jitter backoff
--   breaker   sluice.breaker options for its breaker "sink:<name>"
--             (default failure_threshold 5, timeout 30, max_timeout 300)
--
-- The outbox object owns its sinks (closed by stop), their breakers and
-- forwarder tasks; the db is the caller's and must outlive stop(). Views:
-- box:status() -> {name = {...}} (see status below), box:health() ->
-- reasons (a list, empty when all is well), box:dead_letters(name [, n]).
-- Misuse raises; operational failure returns nil, err.
local sluice = require "sluice"
local json = require "sluice.json"
local log = require "sluice.log"
local breaker = require "sluice.breaker"
local retry = require "sluice.retry"
local options = require "sluice.options"
local queue = require "sluice.outbox.queue"
local codec = require "sluice.outbox.codec"
local forwarder = require "sluice.outbox.forwarder"
local native = require "sluice._outbox"

local type, pairs, ipairs, tostring, error, pcall = type, pairs, ipairs, tostring, error, pcall
local sort, concat, floor = table.sort, table.concat, math.floor

local _M = {}
local mt = { __index = _M }
local route_mt = {}
route_mt.__index = route_mt

local kinds = {} -- kind -> factory (register_kind)

-- The outbox's own settings of a sink; the rest are the kind's.
local COMMON = {
  kind = "string", tables = "table",
  batch = { integer = true, min = 1 },
  max_age = { finite = true, min = 0 },
  max_rows = { integer = true, min = 1 },
  on_full = { one_of = { "stop", "drop_oldest" } },
  retry = { type = "table", fields = { base_delay = { finite = true, gt = 0 },
    max_delay = { finite = true, gt = 0 } } },
  breaker = "table",
}
_M.COMMON = COMMON

--- register_kind(kind, factory): sinks of that kind are made by
-- factory(name, settings, ctx) -> sink | nil, err. A second registration
-- of a kind replaces the first.
function _M.register_kind(kind, factory)
  if type(kind) ~= "string" or kind == "" then
    error("sluice.outbox.register_kind: bad argument #1 (kind name expected)", 2)
  end
  if type(factory) ~= "function" then
    error("sluice.outbox.register_kind: bad argument #2 (function expected, got " .. type(factory) .. ")", 2)
  end
  kinds[kind] = factory
end

--- kind(kind) -> the factory of a kind, loading sluice.sinks.<kind> when
-- it is not registered yet; nil when there is none.
function _M.kind(kind)
  if kinds[kind] then return kinds[kind] end
  if type(kind) == "string" and kind:find("^[%w_]+$") then
    local ok = pcall(require, "sluice.sinks." .. kind)
    if ok then return kinds[kind] end
  end
  return nil
end

--- kind_of(name, settings) -> the kind a sink configuration names.
function _M.kind_of(name, settings)
  return settings.kind or name
end

--- check(name, settings) -> nil | key, message: the outbox's settings of
-- one sink checked (the kind's are checked by its factory).
function _M.check(name, settings)
  if type(settings) ~= "table" then return name, "must be a table" end
  local common = {}
  for k in pairs(COMMON) do common[k] = settings[k] end
  local where, _, text = options.problem(common, COMMON)
  if where then return name .. "." .. where, text end
  for i, t in pairs(settings.tables or {}) do
    if type(i) ~= "number" or type(t) ~= "string" then
      return name .. ".tables", "must be a list of table names"
    end
  end
  if not _M.kind(_M.kind_of(name, settings)) then
    local known = {}
    for k in pairs(kinds) do known[#known + 1] = k end
    sort(known)
    return name .. (settings.kind and ".kind" or ""), "unknown sink kind '" .. tostring(_M.kind_of(name, settings))
      .. "' (" .. concat(known, ", ") .. "; or set kind = ...)"
  end
  return nil
end

local SINK_BREAKER = { failure_threshold = 5, timeout = 30, max_timeout = 300 }

-- The state of one sink: its settings, the sink, breaker and backoff, the
-- forwarder's fields (sluice.outbox.forwarder) and the enqueue's.
-- A sink's own default batch (sink.batch), when it is a usable one.
local function kind_batch(sink)
  local b = rawget(sink, "batch")
  if type(b) == "number" and b >= 1 and b == math.floor(b) then return b end
  return nil
end

local function sink_state(name, settings, ctx)
  local kind = _M.kind_of(name, settings)
  local factory = _M.kind(kind)
  local own = {}
  for k, v in pairs(settings) do
    if COMMON[k] == nil then own[k] = v end
  end
  local ok, sink, err = pcall(factory, name, own, ctx)
  if not ok then return nil, tostring(sink) end
  if not sink then return nil, tostring(err) end
  local bopts = {}
  for k, v in pairs(SINK_BREAKER) do bopts[k] = v end
  for k, v in pairs(settings.breaker or {}) do bopts[k] = v end
  bopts.name = "sink:" .. name
  local okb, cb = pcall(breaker.new, bopts)
  if not okb then
    if sink.close then pcall(sink.close, sink) end
    return nil, "breaker: " .. tostring(cb):gsub("^[^:]+:%d+: ", "")
  end
  local r = settings.retry or {}
  local tables
  if settings.tables then
    tables = {}
    for _, t in ipairs(settings.tables) do tables[t] = true end
  end
  return {
    name = name, kind = kind, sink = sink, breaker = cb, tables = tables,
    batch = settings.batch or kind_batch(sink) or 1000, max_age = settings.max_age or 1,
    max_rows = settings.max_rows or 1000000, on_full = settings.on_full or "stop",
    backoff = retry.new({ strategy = "exponential_jitter", base_delay = r.base_delay or 0.5,
      max_delay = r.max_delay or 30, budget = false, name = "sink:" .. name }),
    retry_max = r.max_delay or 30,
    -- the forwarder's (dropgen: the enqueue's count of drop_oldest runs,
    -- which a batch read ahead is checked against)
    task = nil, parked = false, stopping = false, retry_at = nil, attempt = 0,
    ensured = {}, defs = {}, dropgen = 0, errors = 0, last_error = nil, last_error_at = nil, batches = 0, samples = {},
    -- the enqueue's: refusing = the message while a commit was refused
    -- (on_full = "stop") and none went through since; refused = count
    refusing = nil, refused = 0,
  }
end

--- new(db, sinks, ctx) -> outbox | nil, err. sinks: {name = settings}
-- (an empty table: an outbox with no sink). ctx: {redis, shared} for the
-- kinds. Creates the outbox tables on db and every sink (none is started).
function _M.new(db, sinks, ctx)
  if type(db) ~= "table" or type(db.transaction) ~= "function" then
    error("sluice.outbox.new: bad argument #1 (a sluice.store db expected)", 2)
  end
  if type(sinks) ~= "table" then
    error("sluice.outbox.new: bad argument #2 (table of sinks expected, got " .. type(sinks) .. ")", 2)
  end
  ctx = ctx or {}
  local names = {}
  for name, settings in pairs(sinks) do
    local where, msg = _M.check(name, settings)
    if where then error("sluice.outbox.new: sinks." .. where .. ": " .. msg, 2) end
    names[#names + 1] = name
  end
  sort(names)
  local ok, err = queue.ensure_schema(db, names)
  if not ok then return nil, err end
  local self = setmetatable({ db = db, sinks = {}, names = names, started = false }, mt)
  for _, name in ipairs(names) do
    local s, serr = sink_state(name, sinks[name], {
      db = db, redis = ctx.redis, shared = ctx.shared, log = log.with({ sink = name }) })
    if not s then
      self:close()
      return nil, "sink '" .. name .. "': " .. serr
    end
    self.sinks[name] = s
  end
  return self
end

--- box:start(): a forwarder task per sink (once).
function _M:start()
  if self.started then return self end
  self.started = true
  for _, name in ipairs(self.names) do
    local s = self.sinks[name]
    s.task = sluice.spawn(forwarder.run, self.db, s)
  end
  return self
end

--- box:stop([grace = 5]): the forwarders end: each one's write in flight
-- gets up to grace seconds, then it is cancelled (its rows stay queued);
-- then the sinks are closed and the breakers let go. Yields while it
-- waits (call it in a task, before the db closes).
function _M:stop(grace)
  grace = grace or 5
  for _, name in ipairs(self.names) do
    local s = self.sinks[name]
    s.stopping = true
    forwarder.wake(s)
  end
  for _, name in ipairs(self.names) do
    local s = self.sinks[name]
    local t = s.task
    if t and sluice.current() and sluice.status(t) ~= "done" and sluice.status(t) ~= "failed"
      and sluice.status(t) ~= "killed" then
      if grace > 0 and sluice.status(t) == "waiting" then
        sluice.budget(t, { wall = grace, label = "sink '" .. name .. "' forwarder" })
      elseif grace <= 0 then
        sluice.kill(t, "outbox stopped")
      end
      sluice.wait(t)
    end
  end
  self:close()
end

--- box:close(): closes the sinks and breakers without waiting (stop() ends
-- with it; also for an outbox never started).
function _M:close()
  if self.closed then return end
  self.closed = true
  for _, name in ipairs(self.names) do
    local s = self.sinks[name]
    if s then
      s.stopping = true
      if s.task and sluice.status(s.task) == "waiting" then sluice.kill(s.task, "outbox closed") end
      if s.sink.close then pcall(s.sink.close, s.sink) end
      s.breaker:close()
      s.backoff:close()
    end
  end
end

-- --- the enqueue ---------------------------------------------------------------

-- The definition a sink gets: what store:define takes, without validate.
local function plain_def(tname, def)
  def = def or {}
  return { name = tname, columns = def.columns or {}, key = def.key or {}, required = def.required }
end

--- box:route(c [, names]) -> a sink for c:add_sink queueing c's rows for
-- the sinks named (default: all of the outbox's). Raises on a name that is
-- not a sink. The route reads c.config.tables (the definitions) and never
-- writes on c.
function _M:route(c, names)
  local list = {}
  for _, name in ipairs(names or self.names) do
    local s = self.sinks[name]
    if not s then
      error("sluice.outbox.route: no sink named '" .. tostring(name) .. "' (" .. concat(self.names, ", ") .. ")", 2)
    end
    list[#list + 1] = s
  end
  return setmetatable({ box = self, targets = list, tables = c.config and c.config.tables or {}, defs = {} },
    route_mt)
end

-- Rows published after the commit: the route has nothing to do then (it
-- queued them inside the transaction).
function route_mt.publish()
  return true
end

-- The fields sluice._outbox writes for a table's rows, given the store's
-- column index (name -> position in its flat array): the plan's names in
-- its order, each one's '"name":', position and kind (n: integer and real,
-- j: json, s: the rest). Kept in t while the store's index is the same.
local NUMERIC = { integer = "n", real = "n", json = "j" }
local function fields_of(t, index)
  local f = t.fields
  if f and f.source == index then return f end
  f = { source = index, prefix = {}, index = {} }
  local letters = {}
  for i, name in ipairs(t.plan.names) do
    if index[name] then
      f.prefix[#f.prefix + 1] = t.plan.prefix[i]
      f.index[#f.index + 1] = index[name]
      local ty = t.columns[name]
      if type(ty) == "table" then ty = ty.type end
      letters[#letters + 1] = NUMERIC[ty] or "s"
    end
  end
  f.kinds = concat(letters)
  t.fields = f
  return f
end

--- route:enqueue(table_name, rows [, stored, layout]): queues rows (those
-- the store accepted) for every sink of the route that takes the table.
-- Call inside the rows' transaction; stored(r, col) and layout are
-- db:upsert_accepted's views of the values it wrote: with layout, the rows
-- are queued as the store holds them (sluice._outbox writes them from
-- layout.flat, in C: the values db:select reads back); without it, the
-- rows as given (sluice.outbox.codec; stored gives json columns' text).
-- Raises (rolling the transaction back) when a sink with on_full = "stop"
-- has no room for them, when a row cannot be written as JSON (a real that
-- is not finite, text that is not UTF-8), or on an SQL failure.
function route_mt:enqueue(tname, rows, stored, layout)
  local n = #rows
  if n == 0 then return end
  local targets = {}
  for _, s in ipairs(self.targets) do
    if not s.tables or s.tables[tname] then targets[#targets + 1] = s end
  end
  if #targets == 0 then return end
  local box = self.box
  local db = box.db
  local depths = {}
  for i, s in ipairs(targets) do
    local depth = queue.depth(db, s.name)
    depths[i] = depth
    if s.on_full == "stop" and depth + n > s.max_rows then
      s.refused = s.refused + 1
      s.refusing = "sink '" .. s.name .. "': outbox full (" .. depth .. " rows queued, max_rows "
        .. s.max_rows .. "): " .. n .. " rows of '" .. tname .. "' refused (on_full = stop)"
      error(s.refusing, 0)
    end
  end
  -- the definition, its plan and its text: made once per table and route
  local tdef = self.tables[tname]
  local t = self.defs[tname]
  if not t or t.source ~= tdef then
    local def = plain_def(tname, tdef)
    local text, err = json.encode(def)
    if not text then error("sluice.outbox: the definition of '" .. tname .. "' cannot be recorded: " .. err, 0) end
    t = { source = tdef, plan = codec.plan(def.columns), columns = def.columns, text = text }
    self.defs[tname] = t
  end
  queue.save_def(db, tname, t.text)
  -- encoded once for all the sinks: chunks of at most the smallest batch
  -- of theirs (a batch is whole chunks), each queued for every one
  local size, names = targets[1].batch, {}
  for i, s in ipairs(targets) do
    if s.batch < size then size = s.batch end
    names[i] = s.name
  end
  local at = sluice.time()
  local fields = layout and fields_of(t, layout.index)
  for from = 1, n, size do
    local to = from + size - 1
    if to > n then to = n end
    local text, err, r
    if fields then
      text, err, r = native.rows(layout.flat, layout.ncols, from, to, fields.prefix, fields.index, fields.kinds)
    else
      text, err, r = codec.encode_rows(rows, t.plan, stored, from, to)
    end
    if not text then error("sluice.outbox: row " .. r .. " of '" .. tname .. "' cannot be queued: " .. err, 0) end
    queue.enqueue(db, names, tname, text, to - from + 1, at)
  end
  for i, s in ipairs(targets) do
    queue.added(db, s.name, n)
    local over = depths[i] + n - s.max_rows
    if over > 0 and queue.drop_oldest(db, s.name, over, s.in_flight) > 0 then
      s.dropgen = s.dropgen + 1 -- a batch read ahead may hold rows that are gone
    end
    s.refusing = nil
    forwarder.wake(s)
  end
end

-- --- views -------------------------------------------------------------------

--- box:status() -> {name = {kind, depth, oldest_age (seconds, nil when
-- empty), forwarded, rows_per_second (over the last 10 s), batches,
-- errors, last_error, last_error_at (ISO 8601), dead_letters, dropped,
-- refused (commits refused while full), full, breaker (its state),
-- batch, max_age, max_rows, on_full, tables, sink (sink:stats())}}
function _M:status()
  local out = {}
  for _, name in ipairs(self.names) do
    local s = self.sinks[name]
    local st = {}
    if self.db:is_open() then
      local cn = queue.counters(self.db, name)
      local head = queue.head(self.db, name)
      st.depth, st.forwarded, st.dead_letters, st.dropped = cn.depth, cn.forwarded, cn.dead, cn.dropped
      st.oldest_age = head and math.max(sluice.time() - head.at, 0) or nil
    end
    st.kind, st.rows_per_second, st.batches = s.kind, forwarder.rate(s), s.batches
    st.errors, st.last_error = s.errors, s.last_error
    st.last_error_at = s.last_error_at and sluice.iso8601(s.last_error_at) or nil
    st.refused = s.refused
    st.full = (st.depth or 0) >= s.max_rows or s.refusing ~= nil
    st.breaker = s.breaker:status().state
    st.batch, st.max_age, st.max_rows, st.on_full = s.batch, s.max_age, s.max_rows, s.on_full
    if s.tables then
      local t = {}
      for tn in pairs(s.tables) do t[#t + 1] = tn end
      sort(t)
      st.tables = t
    end
    if s.sink.stats then
      local ok, x = pcall(s.sink.stats, s.sink)
      if ok and type(x) == "table" then st.sink = x end
    end
    out[name] = st
  end
  return out
end

--- box:health() -> reasons: one line per sink whose outbox is full with
-- on_full = "stop" (its tables' collections fail) or whose breaker is open.
function _M:health()
  local reasons = {}
  for _, name in ipairs(self.names) do
    local s = self.sinks[name]
    local depth = self.db:is_open() and queue.depth(self.db, name) or 0
    if s.on_full == "stop" and (s.refusing or depth >= s.max_rows) then
      reasons[#reasons + 1] = s.refusing or ("sink '" .. name .. "': outbox full (" .. depth
        .. " rows queued, max_rows " .. s.max_rows .. "): collection of its tables stops")
    end
    local state = s.breaker:status().state
    if state == "open" then
      reasons[#reasons + 1] = "sink '" .. name .. "' is unreachable (breaker open): rows are queued"
        .. (s.last_error and (": " .. s.last_error) or "")
    end
  end
  return reasons
end

--- box:dead_letters(name [, limit = 100]) -> newest first, {{id, sink,
-- table_name, row, error, at}} | nil, err
function _M:dead_letters(name, limit)
  if not self.sinks[name] then
    error("sluice.outbox.dead_letters: bad argument #1 (no sink named '" .. tostring(name) .. "')", 2)
  end
  return queue.dead_letters(self.db, name, limit and floor(limit) or nil)
end

_M.register_kind("redis_stream", function(name, settings, ctx)
  return require("sluice.outbox.redis_stream").new(name, settings, ctx)
end)

return _M
