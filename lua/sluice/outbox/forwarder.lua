--- sluice.outbox.forwarder: the task that ships one sink's queued rows.
--
-- run(db, s) is the body of a sink's forwarder task (sluice.outbox spawns
-- it; s is the outbox's state of that sink, which this module reads and
-- whose forwarding fields it owns: parked, retry_at, attempt, ensured,
-- defs, errors, last_error, last_error_at, batches, samples, in_flight,
-- outbox_id, seq, ahead, ahead_token, acked_token). The loop:
--  - waits (sluice.park) until a batch is due: `batch` rows queued, or the
--    oldest queued max_age seconds ago; enqueue wakes it (wake(s)), a timer
--    (park's timeout) makes the age bound;
--  - takes the oldest row's table's oldest entries (whole, at most `batch`
--    rows; one row per key, the latest, when the definition has a key),
--    behind the sink's breaker ("sink:<name>"), read from the chunks'
--    text in C (sluice._outbox.batch: no Lua table per row);
--  - sink:ensure(table, def) before the first batch of a table in this
--    process, then sink:write_batch(table, batch, def, meta) when the sink
--    has that method (batch: the C batch, whose copy_text/json write the
--    rows straight from the chunks), else sink:write(table, rows, def,
--    meta) with the rows decoded (meta: {ids, at} of the rows, made when
--    first read); during the write a task spawned for it (read_ahead)
--    reads the next batch, which is sent after the ack when
--    it is still the one to send (take_ahead); the read-ahead task never
--    yields, so it ends within the write's first wait;
--  - acknowledged: the rows deleted and counted in one transaction; kind
--    "rejected": the batch moved to sluice_dead_letters with the error,
--    the rest flows on; any other failure (or a sink raising): breaker
--    failure, the rows stay, retried after an exponential full-jitter
--    delay (sluice.retry's, capped at retry_max seconds).
-- It ends at shutdown (park and sleep return false) or when s.stopping is
-- set (sluice.outbox:stop wakes it); a write in flight then ends or is
-- cancelled by the outbox's stop, which bounds the wait. Rows are deleted
-- only after an acknowledgement, so a process killed at any moment sends
-- the rows in flight again: at-least-once.
local sluice = require "sluice"
local json = require "sluice.json"
local log = require "sluice.log"
local queue = require "sluice.outbox.queue"
local new_batch = require("sluice._outbox").batch

local ipairs, pcall, tostring, type = ipairs, pcall, tostring, type
local setmetatable, rawset = setmetatable, rawset
local max, min = math.max, math.min
local decode = json.decode

local _M = {}

local RATE_WINDOW = 10 -- seconds over which rows_per_second is measured

--- wake(s): the sink's forwarder parked and waiting for rows goes on.
function _M.wake(s)
  if s.parked and s.task then
    s.parked = false
    sluice.unpark(s.task)
  end
end

-- Parks for at most timeout seconds (nil: until woken) -> false at
-- shutdown.
local function park(s, timeout)
  s.parked = true
  local ok, why = sluice.park(timeout and max(timeout, 0.001) or nil)
  s.parked = false
  return ok or why ~= "shutdown"
end

--- rate(s [, now]) -> rows forwarded a second over the last RATE_WINDOW
-- seconds.
function _M.rate(s, now)
  now = now or sluice.now()
  local n = 0
  for _, smp in ipairs(s.samples) do
    if smp[1] > now - RATE_WINDOW then n = n + smp[2] end
  end
  return n / RATE_WINDOW
end

local function record_rate(s, n)
  local now = sluice.now()
  local keep = {}
  for _, smp in ipairs(s.samples) do
    if smp[1] > now - RATE_WINDOW then keep[#keep + 1] = smp end
  end
  keep[#keep + 1] = { now, n }
  s.samples = keep
end

-- A batch's meta ({ids, at} per kept row) is made when a sink first
-- reads it: the PostgreSQL sink never does, and 5000 ids a batch cost
-- more than its COPY text. origin[meta] = what it is made from.
local origin = setmetatable({}, { __mode = "k" })
local Meta = {}
function Meta.__index(m, k)
  local o = origin[m]
  if not o or (k ~= "ids" and k ~= "at") then return nil end
  origin[m] = nil
  local es, rs = o.batch:origins()
  local entries, prefixes = o.entries, {}
  local ids, ats = {}, {}
  for n = 1, #es do
    local en = es[n]
    local prefix = prefixes[en]
    if not prefix then
      prefix = queue.row_id(o.oid, entries[en].chunk, "")
      prefixes[en] = prefix
    end
    ids[n], ats[n] = prefix .. rs[n], entries[en].at
  end
  rawset(m, "ids", ids)
  rawset(m, "at", ats)
  return m[k]
end

-- A batch read from the queue: the oldest entry's table's oldest entries
-- (none of skip, the range in flight), at most s.batch rows, with one row
-- per key (the latest wins, in the place of the first) ->
-- {tname, def, data (the C batch), n (its rows), meta = {ids, at}, first,
-- last (entry ids), full (no more rows would fit), head_at, dropgen} | nil
-- (nothing queued) | false, err (the database failed, or a chunk's text).
local function read_batch(db, s, skip)
  local head = queue.head(db, s.name, skip)
  if not head then return nil end
  local tname = head.table_name
  local entries, more = queue.take(db, s.name, tname, s.batch, skip)
  if not entries then return false, more end
  if #entries == 0 then return nil end
  local def = queue.def(db, tname, s.defs) or { name = tname, columns = {}, key = {} }
  local key = def.key or {}
  if type(key) == "string" then key = { key } end
  local oid = s.outbox_id
  if not oid then
    oid = queue.outbox_id(db)
    s.outbox_id = oid
  end
  local b = new_batch(key)
  for n, e in ipairs(entries) do
    local ok, err = b:add(e.rows, e.lo, e.hi, n)
    if not ok then
      b:free()
      return false, "outbox chunk " .. e.chunk .. ": " .. tostring(err)
    end
  end
  local meta = setmetatable({}, Meta)
  origin[meta] = { batch = b, entries = entries, oid = oid }
  local count = b:queued()
  return { tname = tname, def = def, data = b, n = b:count(), meta = meta, queued = count,
    first = entries[1].id, last = entries[#entries].id, full = more or count >= s.batch, head_at = head.at,
    dropgen = s.dropgen }
end

-- A sink call that may raise -> ok, err, kind.
local function call(sink, method, ...)
  local ok, a, b, c = pcall(sink[method], sink, ...)
  if not ok then return nil, "sink " .. method .. " raised: " .. tostring(a), "error" end
  if a then return true end
  return nil, tostring(b or "failed"), c
end

-- The batch to the sink: as the C batch when it takes one, else as rows.
local function write(sink, batch)
  if sink.write_batch then return call(sink, "write_batch", batch.tname, batch.data, batch.def, batch.meta) end
  local rows, err = decode(batch.data:json())
  if rows == nil then return nil, "outbox: the batch's rows: " .. tostring(err), "error" end
  return call(sink, "write", batch.tname, rows, batch.def, batch.meta)
end

local function failed(s, err)
  s.errors = s.errors + 1
  s.last_error, s.last_error_at = err, sluice.time()
  s.attempt = s.attempt + 1
  local d = min(s.backoff:delay(s.attempt), s.retry_max)
  s.retry_at = sluice.now() + d
  log.warning("sink write failed", { sink = s.name, error = err, retry_in = d, attempt = s.attempt })
end

-- The body of the read-ahead task: the batch after the one in flight read
-- while the sink works on that one (it runs when the write
-- yields, and never yields itself: one resume, then done). token says the
-- forwarder still wants it; the result goes to s.ahead.
local function read_ahead(db, s, token, skip)
  if s.ahead_token ~= token or s.stopping or not db:is_open() then return end
  local ok, batch = pcall(read_batch, db, s, skip)
  if ok and batch and s.ahead_token == token then
    batch.token = token
    s.ahead = batch
  end
end

-- The batch read ahead, when it is still the one to send: read for the
-- batch just acknowledged, nothing dropped since, and full (a partial one
-- waits for its age, read again then).
local function take_ahead(s)
  local b = s.ahead
  s.ahead, s.ahead_token = nil, nil
  if b and b.token == s.acked_token and b.dropgen == s.dropgen and b.full then return b end
  return nil
end

-- Ships one batch. Returns nil, err when the database failed (the loop
-- waits a little and tries again).
local function ship(db, s, batch, permit)
  local tname, nrows, def = batch.tname, batch.n, batch.def
  local first, last = batch.first, batch.last
  local t0 = sluice.now()
  local ok, err, kind = true, nil, nil
  -- drop_oldest leaves the rows being written alone (the sink gets them)
  s.in_flight = { tname, first, last }
  if not s.ensured[tname] then
    ok, err, kind = call(s.sink, "ensure", tname, def)
    if ok then s.ensured[tname] = true end
  end
  if ok then
    -- the next batch is read while this one is written
    s.seq = (s.seq or 0) + 1
    local token = s.seq
    s.ahead, s.ahead_token = nil, token
    sluice.spawn(read_ahead, db, s, token, s.in_flight)
    ok, err, kind = write(s.sink, batch)
    s.acked_token = nil
    if ok then
      s.acked_token = token
    else
      s.ahead, s.ahead_token = nil, nil
    end
  end
  s.in_flight = nil
  if not db:is_open() then -- the rows stay queued
    s.breaker:release(permit)
    return nil, "the store closed during the write"
  end
  if s.stopping and not ok then
    s.breaker:release(permit) -- cancelled by the stop: no verdict on the sink
    return true
  end
  if ok then
    s.breaker:success(permit, sluice.now() - t0)
    s.attempt, s.retry_at = 0, nil
    s.batches = s.batches + 1
    local aok, aerr = queue.ack(db, s.name, tname, first, last, nrows)
    if not aok then
      s.ahead, s.ahead_token = nil, nil
      return nil, aerr
    end
    record_rate(s, nrows)
  elseif kind == "rejected" then
    -- the sink is up and refused this data: the rest flows on
    s.breaker:success(permit, sluice.now() - t0)
    s.attempt, s.retry_at = 0, nil
    s.errors = s.errors + 1
    s.last_error, s.last_error_at = err, sluice.time()
    local n, derr = queue.dead_letter(db, s.name, tname, first, last, err)
    if not n then return nil, derr end
    log.error("sink refused a batch: rows dead-lettered", { sink = s.name, table = tname, rows = n, error = err })
  else
    s.breaker:failure(permit, sluice.now() - t0)
    failed(s, err)
  end
  return true
end

-- Seconds until the breaker lets a call through (at least a little).
local function breaker_wait(s)
  local m = s.breaker:metrics()
  if m.open_until then return max(m.open_until - sluice.time(), 0.05) end
  return 0.05
end

--- run(db, s): the forwarder loop (see the header).
function _M.run(db, s)
  s.in_flight = nil -- a write a killed forwarder left is no longer in flight
  s.ahead, s.ahead_token, s.acked_token = nil, nil, nil
  while not s.stopping do
    local now = sluice.now()
    local wait
    local ahead = take_ahead(s)
    if s.retry_at and now < s.retry_at then
      wait = s.retry_at - now
    else
      local due = 0
      if not ahead then
        local head = db:is_open() and queue.head(db, s.name)
        if not head then
          if not park(s, nil) then return end -- until rows come
          goto continue
        end
        due = head.at + s.max_age - sluice.time()
        if due > 0 and queue.depth(db, s.name) >= s.batch then due = 0 end
      end
      if due > 0 then
        wait = due
      else
        local permit = s.breaker:allow()
        if not permit then
          wait = breaker_wait(s)
        else
          local batch, err = ahead, nil
          if not batch then batch, err = read_batch(db, s) end
          local ok = batch ~= false
          if batch then
            ok, err = ship(db, s, batch, permit)
          else
            s.breaker:release(permit)
          end
          if not ok then
            if not db:is_open() or s.stopping then return end
            log.error("outbox: database failed", { sink = s.name, error = err })
            wait = 1
          else
            goto continue
          end
        end
      end
    end
    if not park(s, wait) then return end
    ::continue::
  end
end

return _M
