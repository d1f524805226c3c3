--- sluice.outbox.queue: the outbox's SQLite tables and every statement on
-- them.
--
-- Owns the internal tables (created by ensure_schema on the db the outbox
-- was opened on):
--   sluice_outbox        one row per (sink, row queued): id (AUTOINCREMENT,
--                        so an id is never reused while a batch holding it
--                        is in flight), sink, table_name, row (sluice.json
--                        text of the row as the store accepted it), at
--                        (wall-clock seconds it was queued)
--   sluice_outbox_sinks  per sink: depth (rows queued), forwarded, dropped
--                        (on_full = "drop_oldest"), dead (dead-lettered),
--                        all changed in the transaction that changes the rows
--   sluice_outbox_tables table_name -> def (JSON: name, columns, key,
--                        required), what sink:ensure and sink:write get,
--                        also for rows queued by an earlier process
--   sluice_dead_letters  rows a sink refused: sink, table_name, row, error, at
-- Everything the outbox knows is in these tables, so a process killed at
-- any moment restarts from them. No call yields (plain SQL on the loop
-- thread); enqueue runs inside the rows' transaction, the others open
-- their own (db:transaction; a savepoint inside an open one).
local json = require "sluice.json"
local sluice = require "sluice"

local ipairs, tostring, error, unpack = ipairs, tostring, error, unpack
local decode = json.decode

local _M = {}

_M.SCHEMA = [[
CREATE TABLE IF NOT EXISTS sluice_outbox (
  id INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL, table_name TEXT NOT NULL,
  row TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS sluice_outbox_by_sink ON sluice_outbox (sink, id);
CREATE INDEX IF NOT EXISTS sluice_outbox_by_table ON sluice_outbox (sink, table_name, id);
CREATE TABLE IF NOT EXISTS sluice_outbox_sinks (
  sink TEXT PRIMARY KEY, depth INTEGER NOT NULL DEFAULT 0,
  forwarded INTEGER NOT NULL DEFAULT 0, dropped INTEGER NOT NULL DEFAULT 0,
  dead INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS sluice_outbox_tables (table_name TEXT PRIMARY KEY, def TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sluice_dead_letters (
  id INTEGER PRIMARY KEY, sink TEXT NOT NULL, table_name TEXT NOT NULL, row TEXT,
  error TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS sluice_dead_letters_by_sink ON sluice_dead_letters (sink, id);
]]

-- Raises err (an SQL failure inside a transaction rolls it back).
local function must(ok, err)
  if ok == nil then error(tostring(err), 0) end
  return ok
end

--- ensure_schema(db, sinks) -> true | nil, err: the tables, a counters row
-- per sink name, and each sink's depth recounted from its rows (a process
-- killed between a statement and its counter cannot exist, the counters
-- being written in the same transactions; the recount is a check that
-- costs one indexed count at start).
function _M.ensure_schema(db, names)
  local ok, err = db:script(_M.SCHEMA)
  if not ok then return nil, err end
  local okt, res, terr = pcall(db.transaction, db, function()
    for _, name in ipairs(names) do
      must(db:exec("INSERT INTO sluice_outbox_sinks (sink) VALUES (?) ON CONFLICT (sink) DO NOTHING", name))
      must(db:exec("UPDATE sluice_outbox_sinks SET depth = "
        .. "(SELECT COUNT(*) FROM sluice_outbox WHERE sink = ?1) WHERE sink = ?1", name))
    end
    return true
  end)
  if not okt then return nil, res end
  if res == nil then return nil, terr end
  return true
end

--- counters(db, sink) -> {depth, forwarded, dropped, dead} (zeros when
-- the sink has no row yet).
function _M.counters(db, sink)
  local rows = db:query("SELECT depth, forwarded, dropped, dead FROM sluice_outbox_sinks WHERE sink = ?", sink)
  local r = rows and rows[1] or {}
  return { depth = r.depth or 0, forwarded = r.forwarded or 0, dropped = r.dropped or 0, dead = r.dead or 0 }
end

--- depth(db, sink) -> rows queued for sink.
function _M.depth(db, sink)
  local rows = db:query("SELECT depth FROM sluice_outbox_sinks WHERE sink = ?", sink)
  return rows and rows[1] and rows[1].depth or 0
end

--- head(db, sink) -> {id, table_name, at} of the oldest row queued, or nil.
function _M.head(db, sink)
  local rows = db:query("SELECT id, table_name, at FROM sluice_outbox WHERE sink = ? ORDER BY id LIMIT 1", sink)
  return rows and rows[1]
end

--- save_def(db, table_name, text): records the table's definition (JSON
-- text; inside the rows' transaction): written when it is not the one
-- recorded (a read costs less than a write on every commit).
function _M.save_def(db, tname, text)
  local rows = must(db:query("SELECT def FROM sluice_outbox_tables WHERE table_name = ?", tname))
  if rows[1] and rows[1].def == text then return end
  must(db:exec("INSERT INTO sluice_outbox_tables (table_name, def) VALUES (?, ?) "
    .. "ON CONFLICT (table_name) DO UPDATE SET def = excluded.def", tname, text))
end

--- def(db, table_name [, cache]) -> the definition recorded, or nil.
-- cache (the caller's table: text -> definition) keeps the one decoded
-- while the text stays the same, so a sink sees the same def table batch
-- after batch (and keeps what it derived from it).
function _M.def(db, tname, cache)
  local rows = db:query("SELECT def FROM sluice_outbox_tables WHERE table_name = ?", tname)
  local text = rows and rows[1] and rows[1].def
  if not text then return nil end
  if cache and cache[text] then return cache[text] end
  local def = decode(text)
  if cache and def then cache[text] = def end
  return def
end

-- Multi-row INSERTs of CHUNKS[i] rows each (?1 sink, ?2 table, ?3 at, then
-- the rows' texts): a batch is cut into these sizes, largest first, so
-- that a handful of statements is prepared and cached, and one statement
-- step inserts up to 256 rows (a statement per row through db:exec cost
-- more than the rows' SQLite work).
local CHUNKS = { 256, 64, 16, 4, 1 }
local INSERTS = {}
for _, size in ipairs(CHUNKS) do
  local values = {}
  for i = 1, size do values[i] = "(?1, ?2, ?" .. (i + 3) .. ", ?3)" end
  INSERTS[size] = "INSERT INTO sluice_outbox (sink, table_name, row, at) VALUES " .. table.concat(values, ", ")
end

--- enqueue(db, sink, table_name, texts, at): queues the rows (JSON texts)
-- for sink, in their order (ids grow with it). Call inside the rows'
-- transaction; raises on an SQL failure.
function _M.enqueue(db, sink, tname, texts, at)
  local n, from = #texts, 1
  for _, size in ipairs(CHUNKS) do
    local sql = INSERTS[size]
    while n - from + 1 >= size do
      must(db:exec(sql, sink, tname, at, unpack(texts, from, from + size - 1)))
      from = from + size
    end
  end
  must(db:exec("UPDATE sluice_outbox_sinks SET depth = depth + ? WHERE sink = ?", n, sink))
end

--- drop_oldest(db, sink, n [, in_flight]): removes sink's n oldest rows
-- (inside the enqueue's transaction) -> rows removed. in_flight {table_name,
-- first, last}: the batch being written, left alone -- the sink gets those
-- rows, so counting them as dropped would overstate what is missing (and
-- the queue then stays over its bound by at most that batch until the ack).
function _M.drop_oldest(db, sink, n, in_flight)
  local t, first, last = "", 1, 0 -- an empty range when nothing is in flight
  if in_flight then t, first, last = in_flight[1], in_flight[2], in_flight[3] end
  local gone = must(db:exec("DELETE FROM sluice_outbox WHERE id IN "
    .. "(SELECT id FROM sluice_outbox WHERE sink = ?1 AND NOT (table_name = ?3 AND id BETWEEN ?4 AND ?5) "
    .. "ORDER BY id LIMIT ?2)", sink, n, t, first, last))
  must(db:exec("UPDATE sluice_outbox_sinks SET depth = depth - ?1, dropped = dropped + ?1 WHERE sink = ?2",
    gone, sink))
  return gone
end

--- take(db, sink, table_name, n) -> up to n rows {id, row (text)} of the
-- table, oldest first, | nil, err.
function _M.take(db, sink, tname, n)
  return db:query("SELECT id, row FROM sluice_outbox WHERE sink = ? AND table_name = ? ORDER BY id LIMIT ?",
    sink, tname, n)
end

-- The batch's rows are exactly the table's rows of sink with an id from
-- the first to the last taken: take() read the oldest ones, ids only grow
-- (AUTOINCREMENT), and drop_oldest only removes some of them.
local RANGE = "sink = ?1 AND table_name = ?2 AND id BETWEEN ?3 AND ?4"

--- ack(db, sink, table_name, first_id, last_id, n) -> true | nil, err:
-- the batch delivered: its rows deleted and counted as forwarded (n, the
-- rows the sink got), in one transaction.
function _M.ack(db, sink, tname, first, last, n)
  local ok, res, err = pcall(db.transaction, db, function()
    local gone = must(db:exec("DELETE FROM sluice_outbox WHERE " .. RANGE, sink, tname, first, last))
    must(db:exec("UPDATE sluice_outbox_sinks SET depth = depth - ?, forwarded = forwarded + ? WHERE sink = ?",
      gone, n, sink))
    return true
  end)
  if not ok then return nil, res end
  if res == nil then return nil, err end
  return true
end

--- dead_letter(db, sink, table_name, first_id, last_id, error) -> rows
-- moved | nil, err: the batch the sink refused, moved to
-- sluice_dead_letters with the sink's error, in one transaction.
function _M.dead_letter(db, sink, tname, first, last, why)
  local ok, res, err = pcall(db.transaction, db, function()
    must(db:exec("INSERT INTO sluice_dead_letters (sink, table_name, row, error, at) "
      .. "SELECT sink, table_name, row, ?5, ?6 FROM sluice_outbox WHERE " .. RANGE .. " ORDER BY id",
      sink, tname, first, last, why, sluice.time()))
    local gone = must(db:exec("DELETE FROM sluice_outbox WHERE " .. RANGE, sink, tname, first, last))
    must(db:exec("UPDATE sluice_outbox_sinks SET depth = depth - ?1, dead = dead + ?1 WHERE sink = ?2",
      gone, sink))
    return gone
  end)
  if not ok then return nil, res end
  if res == nil then return nil, err end
  return res
end

--- dead_letters(db, sink [, limit = 100]) -> newest first,
-- { {id, sink, table_name, row (decoded), error, at}, ... } | nil, err
function _M.dead_letters(db, sink, limit)
  local rows, err = db:query("SELECT id, sink, table_name, row, error, at FROM sluice_dead_letters "
    .. "WHERE sink = ? ORDER BY id DESC LIMIT ?", sink, limit or 100)
  if not rows then return nil, err end
  for _, r in ipairs(rows) do
    local v = r.row and decode(r.row)
    if v ~= nil then r.row = v end
  end
  return rows
end

return _M
