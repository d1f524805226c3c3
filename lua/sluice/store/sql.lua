--- sluice.store.sql: raw SQL on a db, and the transactions the other parts
-- of sluice.store write in.
--
-- Owns nothing beyond the statements it runs (sluice._store caches the
-- prepared statements by their SQL text). fn in db:transaction(fn) cannot
-- wait (see below).
--
-- Waiting for the write lock: while another connection holds it (the
-- checkpoint thread's RESTART, another process), a statement that takes it
-- outside a transaction (BEGIN IMMEDIATE, which every transaction here
-- opens with; db:exec and db:query in autocommit) waits in its task, not on
-- the loop: when the caller is a task that may wait, SQLite does not wait
-- (the busy handler refuses: SQLITE_BUSY, nothing done), and the task
-- sleeps 1 ms and tries again until the busy timeout has passed (then
-- "database is locked", as before). Other tasks and timers run meanwhile.
-- Callers that cannot wait (not a task, a no-wait region, a callback Lua
-- cannot yield across) and statements inside a transaction (which
-- holds the lock already, or took it as a deferred BEGIN) wait on the loop
-- in SQLite's busy handler as before. db:script never waits in its task
-- (several statements: retrying it could run the first ones twice).
--
-- db:query(sql, ...) -> { {col = value}, ... } | nil, err (NULL -> absent)
-- db:exec(sql, ...) -> rows changed | nil, err
-- db:script(sql) -> true | nil, err (several statements, no parameters)
-- db:transaction(fn, ...) -> fn's results; commits when fn returns (nil,
--   err if the commit fails), rolls back and re-raises when fn raises.
--   Nests (SAVEPOINT). fn cannot wait: sleep, HTTP, Redis, limiter waits
--   (any call that would let other tasks run, and join the open transaction
--   with their writes) raise "... cannot wait inside db:transaction ...",
--   which rolls the transaction back.
--   Parameters are positional: nil -> NULL, booleans -> 1/0, numbers ->
--   INTEGER when integral, else REAL; int64_t/uint64_t cdata -> INTEGER,
--   exactly (a uint64_t beyond 2^63-1 raises); strings -> TEXT;
--   store.blob(s) -> BLOB. Statements are prepared once and cached by their
--   SQL text. INTEGER values come back as Lua numbers within +-(2^53-1),
--   where a double is exact, and as int64_t cdata beyond (aggregates too:
--   a SUM past 2^53 is an int64_t; tostring spells it "...LL").
-- db:last_insert_id() -> the rowid of the last INSERT.
--
-- For the other parts: begin(c) -> "tx" | "savepoint" | nil, err;
-- commit(c, kind) -> true | nil, err; rollback(c, kind); quote(identifier);
-- exec(c, sql, ...) and run(c, try, plain, sql, ...): a statement outside
-- a transaction that waits for the write lock in its task (below).
local core = require "sluice._store"
local handle = require "sluice.store.handle"
local task = require "sluice._task"

local error, select, unpack = error, select, unpack
local can_wait, sleep, now = core.can_wait, task.sleep, task.now

-- The pause between tries while another connection holds the write lock.
local RETRY_S = 0.001

local conn, check_type, is_closed = handle.conn, handle.check_type, handle.is_closed

local _M = {}
local methods = {}
_M.methods = methods

--- quote(id) -> id as an SQL identifier in double quotes.
function _M.quote(id)
  return '"' .. id:gsub('"', '""') .. '"'
end

--- run(c, try, plain, sql, ...) -> what c:exec or c:query return: one
-- statement that may wait for the write lock (above). try is c.try_exec or
-- c.try_query, plain c.exec or c.query. A statement refused with
-- SQLITE_BUSY in autocommit did nothing (SQLite rolls it back whole), so
-- trying it again is safe. The sleep is an ordinary task wait: a task
-- killed meanwhile leaves nothing open. A db closed meanwhile: nil, err.
local function run(c, try, plain, sql, ...)
  if c:in_transaction() or not can_wait() then return plain(c, sql, ...) end
  local res, err, busy = try(c, sql, ...)
  if not busy then return res, err end
  local deadline = now() + c:busy_timeout() / 1000
  while now() < deadline do
    sleep(RETRY_S)
    if not c:is_open() then return nil, "sluice.store: database is closed" end
    -- another task of this loop may have opened a transaction meanwhile
    -- (db:exec("BEGIN")): inside it, the statement waits as it did
    if c:in_transaction() then return plain(c, sql, ...) end
    res, err, busy = try(c, sql, ...)
    if not busy then return res, err end
  end
  return nil, err
end
_M.run = run

--- exec(c, sql, ...) -> c:exec's results, waiting for the write lock in
-- the calling task when it can (run above).
function _M.exec(c, sql, ...)
  return run(c, c.try_exec, c.exec, sql, ...)
end

-- begin/commit/rollback: a real transaction when none is open, else a
-- savepoint inside the caller's. Return nil, err on SQL failure. begin may
-- wait in the calling task for the write lock (above).
local function begin(c)
  if c:in_transaction() then
    local ok, err = c:exec("SAVEPOINT sluice_tx")
    if not ok then return nil, err end
    return "savepoint"
  end
  local ok, err = run(c, c.try_exec, c.exec, "BEGIN IMMEDIATE")
  if not ok then return nil, err end
  return "tx"
end
_M.begin = begin

local function commit(c, kind)
  return c:exec(kind == "tx" and "COMMIT" or "RELEASE sluice_tx")
end
_M.commit = commit

local function rollback(c, kind)
  if kind == "tx" then
    if c:in_transaction() then c:exec("ROLLBACK") end
  else
    c:exec("ROLLBACK TO sluice_tx")
    c:exec("RELEASE sluice_tx")
  end
end
_M.rollback = rollback

local function pack(...) return { n = select("#", ...), ... } end

function methods:query(sql, ...)
  local c = conn(self)
  check_type("query", 1, sql, "string")
  return run(c, c.try_query, c.query, sql, ...)
end

function methods:exec(sql, ...)
  local c = conn(self)
  check_type("exec", 1, sql, "string")
  return run(c, c.try_exec, c.exec, sql, ...)
end

function methods:script(sql)
  local c = conn(self)
  check_type("script", 1, sql, "string")
  return c:script(sql)
end

function methods:transaction(fn, ...)
  local c = conn(self)
  check_type("transaction", 1, fn, "function")
  local kind, err = begin(c)
  if not kind then return nil, err end
  local res = pack(core.pcall_nowait(fn, ...))
  if is_closed(self) then
    if not res[1] then error(res[2], 0) end
    error("sluice.store: database is closed", 2)
  end
  if not res[1] then
    rollback(c, kind)
    error(res[2], 0)
  end
  local ok, e = commit(c, kind)
  if not ok then
    rollback(c, kind)
    return nil, e
  end
  return unpack(res, 2, res.n)
end

function methods:last_insert_id()
  return conn(self):last_insert_rowid()
end

return _M
