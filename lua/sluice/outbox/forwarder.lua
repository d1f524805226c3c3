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
--    behind the sink's breaker ("sink:<name>");
--  - sink:ensure(table, def) before the first batch of a table in this
--    process, then sink:write(table, rows, def, meta) (meta: {ids, at}
--    of the rows); during the write a task spawned for it (read_ahead)
--    reads and decodes the next batch, which is sent after the ack when
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

local ipairs, pcall, tostring, type = ipairs, pcall, tostring, type
local max, min, floor, format = math.max, math.min, math.floor, string.format
local decode, encode = json.decode, json.encode

local _M = {}

local RATE_WINDOW = 10 -- seconds over which rows_per_second is measured
local TWO53 = 2 ^ 53

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

-- A key part's text: a string as it is, anything else as sluice.json
-- writes it (an integer, the common case, without the general encoder).
local function part(v)
  local tv = type(v)
  if tv == "string" then return v end
  if tv == "number" and v == floor(v) and v > -TWO53 and v < TWO53 and (v ~= 0 or 1 / v > 0) then
    return format("%d", v)
  end
  return encode(v, true) or tostring(v)
end

-- The key of a row as text ("\0" between parts), or nil without a key.
local function key_of(row, key)
  local nk = key and #key or 0
  if nk == 0 then return nil end
  if nk == 1 then return part(row[key[1]]) end
  local parts = {}
  for i = 1, nk do parts[i] = part(row[key[i]]) end
  return table.concat(parts, "\0", 1, nk)
end

-- A batch read from the queue: the oldest entry's table's oldest entries
-- (none of skip, the range in flight), at most s.batch rows, decoded with
-- one row per key (the latest wins, in the place of the first) ->
-- {tname, def, rows, meta = {ids, at}, first, last (entry ids), full (no
-- more rows would fit), head_at, dropgen} | nil (nothing queued) | false,
-- err (the database failed).
local function read_batch(db, s, skip)
  local head = queue.head(db, s.name, skip)
  if not head then return nil end
  local tname = head.table_name
  local entries, more = queue.take(db, s.name, tname, s.batch, skip)
  if not entries then return false, more end
  if #entries == 0 then return nil end
  local def = queue.def(db, tname, s.defs) or { name = tname, columns = {}, key = {} }
  local key = def.key
  if type(key) == "string" then key = { key } end
  local oid = s.outbox_id
  if not oid then
    oid = queue.outbox_id(db)
    s.outbox_id = oid
  end
  local rows, ids, ats, pos, count = {}, {}, {}, {}, 0
  for _, e in ipairs(entries) do
    local list, err = decode(e.rows)
    if list == nil then return false, "outbox chunk " .. e.chunk .. ": " .. tostring(err) end
    local at, prefix = e.at, queue.row_id(oid, e.chunk, "")
    for i = e.lo, e.hi do
      local row = list[i]
      count = count + 1
      local k = key_of(row, key)
      local at_k = k and pos[k]
      if not at_k then
        at_k = #rows + 1
        if k then pos[k] = at_k end
      end
      rows[at_k], ids[at_k], ats[at_k] = row, prefix .. i, at
    end
  end
  return { tname = tname, def = def, rows = rows, meta = { ids = ids, at = ats }, queued = count,
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

local function failed(s, err)
  s.errors = s.errors + 1
  s.last_error, s.last_error_at = err, sluice.time()
  s.attempt = s.attempt + 1
  local d = min(s.backoff:delay(s.attempt), s.retry_max)
  s.retry_at = sluice.now() + d
  log.warning("sink write failed", { sink = s.name, error = err, retry_in = d, attempt = s.attempt })
end

-- The body of the read-ahead task: the batch after the one in flight read
-- and decoded while the sink works on that one (it runs when the write
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
  local tname, rows, def = batch.tname, batch.rows, batch.def
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
    ok, err, kind = call(s.sink, "write", tname, rows, def, batch.meta)
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
    local aok, aerr = queue.ack(db, s.name, tname, first, last, #rows)
    if not aok then
      s.ahead, s.ahead_token = nil, nil
      return nil, aerr
    end
    record_rate(s, #rows)
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
