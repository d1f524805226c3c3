--- sluice.outbox.queue: the outbox's SQLite tables and every statement on
-- them.
--
-- Owns the internal tables (created by ensure_schema on the db the outbox
-- was opened on):
--   sluice_outbox_chunks one row per chunk: the rows a commit queued for a
--                        table, cut to at most the smallest `batch` of the
--                        sinks taking them: id (AUTOINCREMENT: never reused,
--                        so a row's id below stays its own), rows (a JSON
--                        array of the rows as the store accepted them, each
--                        exactly sluice.json's text), n (its rows), refs
--                        (the entries still pointing at it: deleted with
--                        the last one)
--   sluice_outbox        one entry per (sink, chunk queued for it): id
--                        (AUTOINCREMENT: an id is never reused while a
--                        batch holding it is in flight), sink, table_name,
--                        chunk, lo..hi (the chunk's rows, 1-based, still
--                        queued for the sink: drop_oldest may take the
--                        first ones), at (wall-clock seconds it was queued)
--   sluice_outbox_sinks  per sink: depth (ROWS queued), forwarded, dropped
--                        (on_full = "drop_oldest"), dead (dead-lettered),
--                        all changed in the transaction that changes the rows
--   sluice_outbox_tables table_name -> def (JSON: name, columns, key,
--                        required), what sink:ensure and sink:write get,
--                        also for rows queued by an earlier process
--   sluice_outbox_meta   key -> value: "id", this database's outbox id (16
--                        random hex digits, made once), the first part of
--                        every row's id (row_id)
--   sluice_dead_letters  rows a sink refused, one per row: sink,
--                        table_name, row, error, at
-- A commit's rows are encoded once for all its sinks (one chunk, an entry
-- per sink): the outbox's cost on the collection path is a few statements
-- per commit and table, not one per row and sink.
-- The schema before chunks (sluice_outbox with one row per queued row and
-- sink) is migrated by ensure_schema, in one transaction: each old row
-- becomes a chunk of one row with the old id, so ids, order and row ids
-- carry over.
-- Everything the outbox knows is in these tables, so a process killed at
-- any moment restarts from them. No call yields (plain SQL on the loop
-- thread); enqueue and drop_oldest run inside the rows' transaction, the
-- others open their own (db:transaction; a savepoint inside an open one).
local json = require "sluice.json"
local sluice = require "sluice"

local ipairs, tostring, error, pcall = ipairs, tostring, error, pcall
local decode, encode = json.decode, json.encode

local _M = {}

_M.SCHEMA = [[
CREATE TABLE IF NOT EXISTS sluice_outbox_chunks (
  id INTEGER PRIMARY KEY AUTOINCREMENT, rows TEXT NOT NULL, n INTEGER NOT NULL, refs INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sluice_outbox (
  id INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL, table_name TEXT NOT NULL,
  chunk INTEGER NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS sluice_outbox_by_sink ON sluice_outbox (sink, id);
CREATE INDEX IF NOT EXISTS sluice_outbox_by_table ON sluice_outbox (sink, table_name, id);
CREATE TABLE IF NOT EXISTS sluice_outbox_sinks (
  sink TEXT PRIMARY KEY, depth INTEGER NOT NULL DEFAULT 0,
  forwarded INTEGER NOT NULL DEFAULT 0, dropped INTEGER NOT NULL DEFAULT 0,
  dead INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS sluice_outbox_tables (table_name TEXT PRIMARY KEY, def TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sluice_outbox_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO sluice_outbox_meta (key, value) VALUES ('id', lower(hex(randomblob(8))))
  ON CONFLICT (key) DO NOTHING;
CREATE TABLE IF NOT EXISTS sluice_dead_letters (
  id INTEGER PRIMARY KEY, sink TEXT NOT NULL, table_name TEXT NOT NULL, row TEXT,
  error TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS sluice_dead_letters_by_sink ON sluice_dead_letters (sink, id);
]]

-- The previous schema's table renamed out of the way, its indexes dropped
-- (their names are the new table's); then SCHEMA, then the rows moved.
local MIGRATE_BEFORE = [[
DROP INDEX IF EXISTS sluice_outbox_by_sink;
DROP INDEX IF EXISTS sluice_outbox_by_table;
ALTER TABLE sluice_outbox RENAME TO sluice_outbox_v1;
]]
local MIGRATE_AFTER = [[
INSERT INTO sluice_outbox_chunks (id, rows, n, refs) SELECT id, '[' || row || ']', 1, 1 FROM sluice_outbox_v1;
INSERT INTO sluice_outbox (id, sink, table_name, chunk, lo, hi, at)
  SELECT id, sink, table_name, id, 1, 1, at FROM sluice_outbox_v1;
DROP TABLE sluice_outbox_v1;
]]

-- Raises err (an SQL failure inside a transaction rolls it back).
local function must(ok, err)
  if ok == nil then error(tostring(err), 0) end
  return ok
end

-- db:transaction(fn) -> fn's result | nil, err (fn raising included).
local function atomically(db, fn)
  local ok, res, err = pcall(db.transaction, db, fn)
  if not ok then return nil, res end
  if res == nil then return nil, err end
  return res
end

-- True when sluice_outbox is the previous schema's (a row per queued row).
local function old_schema(db)
  local cols = must(db:query("PRAGMA table_info(sluice_outbox)"))
  for _, c in ipairs(cols) do
    if c.name == "row" then return true end
  end
  return false
end

--- ensure_schema(db, sinks) -> true | nil, err: the tables (the previous
-- schema migrated), a counters row per sink name, and each sink's depth
-- recounted from its entries (a process killed between a statement and
-- its counter cannot exist, the counters being written in the same
-- transactions; the recount is a check that costs one indexed sum at
-- start).
function _M.ensure_schema(db, names)
  return atomically(db, function()
    if old_schema(db) then
      must(db:script(MIGRATE_BEFORE))
      must(db:script(_M.SCHEMA))
      must(db:script(MIGRATE_AFTER))
    else
      must(db:script(_M.SCHEMA))
    end
    for _, name in ipairs(names) do
      must(db:exec("INSERT INTO sluice_outbox_sinks (sink) VALUES (?) ON CONFLICT (sink) DO NOTHING", name))
      must(db:exec("UPDATE sluice_outbox_sinks SET depth = "
        .. "(SELECT COALESCE(SUM(hi - lo + 1), 0) FROM sluice_outbox WHERE sink = ?1) WHERE sink = ?1", name))
    end
    return true
  end)
end

--- outbox_id(db) -> this database's outbox id (hex text).
function _M.outbox_id(db)
  return must(db:query("SELECT value FROM sluice_outbox_meta WHERE key = 'id'"))[1].value
end

--- row_id(outbox_id, chunk, index) -> the id of a queued row: the same
-- for every sink and every send of it, unique across databases (the
-- outbox id is random) and within one (chunk ids are never reused).
function _M.row_id(oid, chunk, index)
  return oid .. "-" .. chunk .. "-" .. index
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

-- An entry of sink is spared when it is in the range {table_name, first,
-- last} (the batch in flight; "", 1, 0 when none): those are exactly the
-- table's entries with an id from first to last.
local SPARED = "NOT (table_name = ?2 AND id BETWEEN ?3 AND ?4)"

local function range_of(r)
  if r then return r[1], r[2], r[3] end
  return "", 1, 0
end

--- head(db, sink [, skip]) -> {id, table_name, at} of the oldest entry
-- queued (not in skip, a range as SPARED takes), or nil.
function _M.head(db, sink, skip)
  local t, first, last = range_of(skip)
  local rows = db:query("SELECT id, table_name, at FROM sluice_outbox WHERE sink = ?1 AND " .. SPARED
    .. " ORDER BY id LIMIT 1", sink, t, first, last)
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

--- enqueue(db, sinks, table_name, text, n, at): queues a chunk (text, a
-- JSON array of n rows) for every sink named in the list sinks. Call
-- inside the rows' transaction; raises on an SQL failure.
function _M.enqueue(db, sinks, tname, text, n, at)
  local ns = #sinks
  must(db:exec("INSERT INTO sluice_outbox_chunks (rows, n, refs) VALUES (?, ?, ?)", text, n, ns))
  local chunk = db:last_insert_id()
  for i = 1, ns do
    must(db:exec("INSERT INTO sluice_outbox (sink, table_name, chunk, lo, hi, at) VALUES (?, ?, ?, 1, ?, ?)",
      sinks[i], tname, chunk, n, at))
  end
end

--- added(db, sink, n): n rows more queued for sink (its depth), inside
-- the transaction that queued them.
function _M.added(db, sink, n)
  must(db:exec("UPDATE sluice_outbox_sinks SET depth = depth + ? WHERE sink = ?", n, sink))
end

-- Deletes the entries of sink in the range (table, first, last) and the
-- chunks no other entry needs -> rows those entries held. Raises.
local RANGE = "sink = ?1 AND table_name = ?2 AND id BETWEEN ?3 AND ?4"
local function delete_range(db, sink, tname, first, last)
  local held = must(db:query("SELECT COALESCE(SUM(hi - lo + 1), 0) AS n FROM sluice_outbox WHERE " .. RANGE,
    sink, tname, first, last))[1].n
  -- the chunks these entries held last deleted first, then the others'
  -- counts lowered: an UPDATE rewrites the whole row, its rows text with it
  -- (a 5000-row chunk is about a megabyte), so one about to be deleted is
  -- not updated first
  must(db:exec("DELETE FROM sluice_outbox_chunks WHERE refs <= 1 AND id IN "
    .. "(SELECT chunk FROM sluice_outbox WHERE " .. RANGE .. ")", sink, tname, first, last))
  must(db:exec("UPDATE sluice_outbox_chunks SET refs = refs - 1 WHERE id IN "
    .. "(SELECT chunk FROM sluice_outbox WHERE " .. RANGE .. ")", sink, tname, first, last))
  must(db:exec("DELETE FROM sluice_outbox WHERE " .. RANGE, sink, tname, first, last))
  return held
end

--- drop_oldest(db, sink, n [, in_flight]): removes sink's n oldest rows
-- (inside the enqueue's transaction; the first rows of an entry when
-- fewer than all of them are to go) -> rows removed. in_flight
-- {table_name, first, last}: the entries of the batch being written, left
-- alone -- the sink gets those rows, so counting them as dropped would
-- overstate what is missing (and the queue then stays over its bound by at
-- most that batch until the ack).
function _M.drop_oldest(db, sink, n, in_flight)
  local t, first, last = range_of(in_flight)
  local gone = 0
  while gone < n do
    local entries = must(db:query("SELECT id, table_name, lo, hi FROM sluice_outbox WHERE sink = ?1 AND "
      .. SPARED .. " ORDER BY id LIMIT 64", sink, t, first, last))
    if #entries == 0 then break end
    for _, e in ipairs(entries) do
      local held = e.hi - e.lo + 1
      if held <= n - gone then
        gone = gone + delete_range(db, sink, e.table_name, e.id, e.id)
      else
        must(db:exec("UPDATE sluice_outbox SET lo = lo + ? WHERE id = ?", n - gone, e.id))
        gone = n
      end
      if gone >= n then break end
    end
  end
  must(db:exec("UPDATE sluice_outbox_sinks SET depth = depth - ?1, dropped = dropped + ?1 WHERE sink = ?2",
    gone, sink))
  return gone
end

--- take(db, sink, table_name, max_rows [, skip]) -> the oldest entries of
-- the table queued for sink (none in skip), whole, holding at most
-- max_rows rows (at least one entry: an entry queued while the sink's
-- batch was larger goes whole), oldest first: { {id, chunk, lo, hi, at,
-- rows (the chunk's text)}, ... }, more (true when an entry of the table
-- was left for a later batch) | nil, err.
function _M.take(db, sink, tname, max_rows, skip)
  local _, first, last = range_of(skip)
  if not skip or skip[1] ~= tname then first, last = 1, 0 end
  -- the entries' sizes first (no chunk text), then the ones that fit
  local sizes, err = db:query("SELECT id, lo, hi FROM sluice_outbox WHERE sink = ?1 AND table_name = ?2 "
    .. "AND id NOT BETWEEN ?3 AND ?4 ORDER BY id LIMIT ?5", sink, tname, first, last, max_rows + 1)
  if not sizes then return nil, err end
  if #sizes == 0 then return {}, false end
  local rows, upto = 0, 0
  for i, e in ipairs(sizes) do
    local held = e.hi - e.lo + 1
    if i > 1 and rows + held > max_rows then break end
    rows, upto = rows + held, i
    if rows >= max_rows then break end
  end
  local entries
  entries, err = db:query("SELECT o.id, o.chunk, o.lo, o.hi, o.at, c.rows FROM sluice_outbox o "
    .. "JOIN sluice_outbox_chunks c ON c.id = o.chunk WHERE o.sink = ?1 AND o.table_name = ?2 "
    .. "AND o.id BETWEEN ?3 AND ?4 AND o.id NOT BETWEEN ?5 AND ?6 ORDER BY o.id",
    sink, tname, sizes[1].id, sizes[upto].id, first, last)
  if not entries then return nil, err end
  return entries, upto < #sizes
end

--- ack(db, sink, table_name, first_id, last_id, n) -> true | nil, err:
-- the batch delivered: its entries (the table's entries of sink with an id
-- from first to last) deleted and n (the rows the sink got) counted as
-- forwarded, in one transaction.
function _M.ack(db, sink, tname, first, last, n)
  return atomically(db, function()
    local gone = delete_range(db, sink, tname, first, last)
    must(db:exec("UPDATE sluice_outbox_sinks SET depth = depth - ?, forwarded = forwarded + ? WHERE sink = ?",
      gone, n, sink))
    return true
  end)
end

--- dead_letter(db, sink, table_name, first_id, last_id, error) -> rows
-- moved | nil, err: the batch the sink refused, each of its queued rows
-- moved to sluice_dead_letters with the sink's error (as sluice.json text),
-- in one transaction.
function _M.dead_letter(db, sink, tname, first, last, why)
  return atomically(db, function()
    local now = sluice.time()
    local entries = must(db:query("SELECT o.lo, o.hi, c.rows FROM sluice_outbox o "
      .. "JOIN sluice_outbox_chunks c ON c.id = o.chunk "
      .. "WHERE o.sink = ?1 AND o.table_name = ?2 AND o.id BETWEEN ?3 AND ?4 ORDER BY o.id", sink, tname, first, last))
    for _, e in ipairs(entries) do
      local list = must(decode(e.rows))
      for i = e.lo, e.hi do
        must(db:exec("INSERT INTO sluice_dead_letters (sink, table_name, row, error, at) VALUES (?, ?, ?, ?, ?)",
          sink, tname, must(encode(list[i])), why, now))
      end
    end
    local gone = delete_range(db, sink, tname, first, last)
    must(db:exec("UPDATE sluice_outbox_sinks SET depth = depth - ?1, dead = dead + ?1 WHERE sink = ?2",
      gone, sink))
    return gone
  end)
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
