--- sluice.store.sql: raw SQL on a db, and the transactions the other parts
-- of sluice.store write in.
--
-- Owns nothing beyond the statements it runs (sluice._store caches the
-- prepared statements by their SQL text). No call yields: fn in
-- db:transaction(fn) cannot wait either (see below).
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
-- commit(c, kind) -> true | nil, err; rollback(c, kind); quote(identifier).
local core = require "sluice._store"
local handle = require "sluice.store.handle"

local error, select, unpack = error, select, unpack

local conn, check_type, is_closed = handle.conn, handle.check_type, handle.is_closed

local _M = {}
local methods = {}
_M.methods = methods

--- quote(id) -> id as an SQL identifier in double quotes.
function _M.quote(id)
  return '"' .. id:gsub('"', '""') .. '"'
end

-- begin/commit/rollback: a real transaction when none is open, else a
-- savepoint inside the caller's. Return nil, err on SQL failure.
local function begin(c)
  if c:in_transaction() then
    local ok, err = c:exec("SAVEPOINT sluice_tx")
    if not ok then return nil, err end
    return "savepoint"
  end
  local ok, err = c:exec("BEGIN IMMEDIATE")
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
  return c:query(sql, ...)
end

function methods:exec(sql, ...)
  local c = conn(self)
  check_type("exec", 1, sql, "string")
  return c:exec(sql, ...)
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
