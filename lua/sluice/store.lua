--- sluice.store: SQLite, the embedded default store.
--
--   local store = require "sluice.store"
--   local db = assert(store.open("sluice.db"))
--   db:define{ name = "klines",
--     columns = { symbol = "text", open_time = "integer", close = "real", meta = "json" },
--     key = { "symbol", "open_time" }, required = { "close" },
--     validate = function(row) return row.close >= 0, "negative close" end }
--   local inserted, updated, unchanged, rejected = db:upsert("klines", rows)
--
-- All calls are synchronous on the loop thread: they block it while SQLite
-- works, so write in batches (one upsert = one transaction). None yields,
-- except db:upsert where the table's validate function does (it runs before
-- the transaction opens), and a write that finds SQLite's write lock held
-- by another connection (BEGIN of db:upsert and db:transaction, db:exec
-- and db:query outside a transaction): called from a task that may wait,
-- it waits in the task (sluice.store.sql has how). fn in
-- db:transaction(fn) cannot wait: sleep, HTTP, Redis, limiter waits (any
-- call that would let other tasks run, and join the open transaction with
-- their writes) raise "... cannot wait inside db:transaction ...", which
-- rolls the transaction back.
--
-- This module opens databases and owns the db object's lifetime and its
-- method table; the methods live in one part each, documented there:
--   sluice.store.schema  db:define (tables, reconciled with the database)
--   sluice.store.rows    db:upsert, db:upsert_accepted, db:select,
--                        db:quality, db:reset_quality, db:rejects
--   sluice.store.sql     db:query, db:exec, db:script, db:transaction,
--                        db:last_insert_id
--   sluice.store.state   db:save_state, db:load_state, db:states,
--                        db:delete_state, db:set_checkpoint,
--                        db:get_checkpoint, db:checkpoints
--   sluice.store.handle  the db object's fields and the misuse checks
--   sluice.json          the exact JSON encoder all of them write with
--
-- Integers are exact up to int64 (sluice.store.rows has the rules): an
-- integer column takes decimal strings and int64_t/uint64_t cdata, and
-- rejects a Lua number beyond 2^53 (a double there may be rounded); every
-- read (db:select, db:query) returns an integer within +-(2^53-1) as
-- a Lua number and one beyond as an int64_t cdata, which sluice.json
-- writes as its digits and which binds back as the same integer. Beyond
-- int64, the uint256 and decimal column types hold exact numbers as text
-- compared by value (the collation sluice_decimal, registered on every
-- connection open makes; sluice.store.numbers has what they take).
--
-- store.open(path [, {busy_timeout = 5, checkpoint = "background"}]) -> db | nil, err
--   ":memory:" allowed. WAL journal (file databases), synchronous=NORMAL,
--   busy timeout (seconds in [0, 2147483], default 5; the longest wait
--   for another connection's lock, in the task or, for callers that
--   cannot wait, blocking the loop), foreign keys on. Creates the internal tables
--   sluice_state, sluice_checkpoints, sluice_rejects, sluice_quality.
--   checkpoint: "background" (the default) copies the WAL into the database
--   file on a thread with its own connection (runtime/core/checkpoint.h),
--   so no commit on the loop runs a checkpoint; "inline" leaves it to
--   SQLite's autocheckpoint in the commit that fills the WAL to 1000 pages
--   (a stall of one copy and fsync). Either way synchronous=NORMAL: a
--   committed row survives a crash of sluice; a power loss may lose the
--   last commits but never corrupts the file. When the thread cannot start
--   (SQLite without thread support) the db logs a warning and is inline.
--   journal_size_limit is 64 MiB: a WAL that started over is cut back to it.
--   With the background checkpointer, setting PRAGMA wal_autocheckpoint
--   (db:exec, db:script) fails with "PRAGMA wal_autocheckpoint is refused:
--   ..." (it would replace the hook that wakes the thread: checkpoints
--   would stop); reading it is allowed (0). With "inline" it works as in
--   SQLite. Prometheus (sluice.metrics.render): sluice_store_checkpoint_
--   errors_total and sluice_store_checkpoint_restarts_total {path} per open
--   db with the background checkpointer.
-- store.blob(s) -> a marker binding s as a BLOB in query/exec parameters
--   (plain strings bind as TEXT; both keep embedded NUL bytes).
-- store.encode_json(v [, lenient]) -> s | nil, err (sluice.json.encode);
--   store.decode_json(s) -> v | nil, err (sluice.json.decode).
--   The encoder writes numbers so that they read back exactly (cjson keeps
--   14 digits) and sorts object keys, so equal tables encode to equal text
--   (which is what makes "unchanged" work for json columns).
-- store.sqlite_version: the linked SQLite's version string.
--
-- The handle: db:name() -> the path it was opened with (":memory:" for an
--   in-memory database). db:stats() -> a new plain table {name, path, open,
--   closed, tables (the names of the tables defined on this db, sorted),
--   in_transaction, checkpoint}; it runs no query. checkpoint (open
--   databases with the background checkpointer only): {checkpoints
--   (passive ones run), restarts (RESTART ones: the WAL passed its bound
--   of 16384 pages under writes that never paused), busy, errors (failed
--   checkpoints; also logged at error level by the next commit, at most
--   once a minute), last_error, wal_pages, copied_pages (of the WAL, after
--   the last checkpoint), wal_frames (in the WAL after the last commit)}. db:close() -> true, or false when
--   it was already closed; any other call on a closed db but name(),
--   stats(), is_open() and close() raises "sluice.store: database is
--   closed". db:is_open(), db.path.
-- db:check() -> true | nil, reason: false once the database file has been
--   deleted or replaced while open ("database file <path> was deleted ...");
--   logged once at error level. upsert, save_state and set_checkpoint then
--   return nil, that reason instead of writing into the unlinked file.
local core = require "sluice._store"
local json = require "sluice.json"
local handle = require "sluice.store.handle"
local sql = require "sluice.store.sql"
local schema = require "sluice.store.schema"
local rows = require "sluice.store.rows"
local state = require "sluice.store.state"
local options = require "sluice.options"
local log = require "sluice.log"
local metrics_registry = require "sluice.metrics.registry"

local pairs, ipairs, tostring = pairs, ipairs, tostring
local floor = math.floor

local check_type, conn, file_gone = handle.check_type, handle.conn, handle.file_gone

local _M = {
  blob = core.blob, sqlite_version = core.version(),
  encode_json = json.encode, decode_json = json.decode,
}
local db_methods = {}
local db_mt = { __index = db_methods }

for _, part in ipairs({ sql, schema, rows, state }) do
  for name, fn in pairs(part.methods) do
    assert(db_methods[name] == nil, "sluice.store: two parts define db:" .. name)
    db_methods[name] = fn
  end
end

-- --- open ------------------------------------------------------------------

local SCHEMA = state.SCHEMA .. rows.SCHEMA

-- busy_timeout: seconds; SQLite takes an int of milliseconds.
local OPEN_OPTIONS = {
  busy_timeout = { type = "number", min = 0, max = 2147483 },
  checkpoint = { type = "string", one_of = { "background", "inline" } },
}

-- The background checkpointer: wake it at 1000 WAL pages (SQLite's own
-- autocheckpoint), RESTART past 16384 (64 MiB of 4 KiB pages), retry an
-- incomplete passive checkpoint every 50 ms, wait 100 ms at most for locks.
local CKPT_WAKE, CKPT_LIMIT, CKPT_RETRY_MS, CKPT_BUSY_MS = 1000, 16384, 50, 100
local JOURNAL_SIZE_LIMIT = 64 * 2 ^ 20

-- The dbs opened and not yet closed (weak: one the program dropped
-- unclosed goes with its __gc), for the metrics source below.
local open_dbs = setmetatable({}, { __mode = "k" })

-- Prometheus: the background checkpointer's failures and RESTARTs of every
-- open db, read at each render (the thread counts them; db:stats() and
-- the log say the same).
metrics_registry.add_source({
  { "counter", "sluice_store_checkpoint_errors_total",
    "Background WAL checkpoints that failed, per database (db:stats().checkpoint.errors).", { "path" } },
  { "counter", "sluice_store_checkpoint_restarts_total",
    "RESTART checkpoints the WAL's bound forced under writes that never paused (each holds the next write back).",
    { "path" } },
}, function(f)
  for db in pairs(open_dbs) do
    local st = not handle.is_closed(db) and conn(db):checkpoint_stats()
    if st then
      f.sluice_store_checkpoint_errors_total:inc(st.errors, db.path)
      f.sluice_store_checkpoint_restarts_total:inc(st.restarts, db.path)
    end
  end
end)

function _M.open(path, opts)
  check_type("open", 1, path, "string")
  local busy, ckpt = 5, "background"
  if opts ~= nil then
    check_type("open", 2, opts, "table")
    options.check("sluice.store.open", opts, OPEN_OPTIONS)
    busy = opts.busy_timeout or busy
    ckpt = opts.checkpoint or ckpt
  end
  local c, err = core.open(path, floor(busy * 1000))
  if not c then return nil, err end
  local function bail(e)
    c:close()
    return nil, path .. ": " .. tostring(e)
  end
  local mode, e = c:query("PRAGMA journal_mode = WAL")
  if not mode then return bail(e) end
  for _, stmt in ipairs({ "PRAGMA synchronous = NORMAL", "PRAGMA foreign_keys = ON",
    "PRAGMA journal_size_limit = " .. JOURNAL_SIZE_LIMIT }) do
    local ok, e2 = c:exec(stmt)
    if not ok then return bail(e2) end
  end
  local ok, e3 = c:script(SCHEMA)
  if not ok then return bail(e3) end
  if ckpt == "background" and mode[1] and mode[1].journal_mode == "wal" then
    local started, e4 = c:start_checkpointer(CKPT_WAKE, CKPT_LIMIT, CKPT_RETRY_MS, CKPT_BUSY_MS)
    if not started then
      log.warning("store: checkpoints stay inline: " .. tostring(e4), { path = path })
    end
  end
  local db = handle.new(c, path, db_mt)
  open_dbs[db] = true
  return db
end

-- --- lifetime -------------------------------------------------------------------

function db_methods:close()
  open_dbs[self] = nil
  return handle.close(self)
end

function db_methods:name()
  return self.path
end

function db_methods:stats()
  local closed = handle.is_closed(self)
  return { name = self.path, path = self.path, open = not closed, closed = closed,
    tables = handle.table_names(self), in_transaction = handle.in_transaction(self),
    checkpoint = not closed and conn(self):checkpoint_stats() or nil }
end

function db_methods:is_open()
  return not handle.is_closed(self)
end

function db_methods:check()
  local gone = file_gone(self, conn(self))
  if gone then return nil, gone end
  return true
end

function db_mt:__tostring()
  return handle.is_closed(self) and "sluice.store.db (closed)" or "sluice.store.db (" .. self.path .. ")"
end

return _M
