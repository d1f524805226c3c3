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
-- works, so write in batches (one upsert = one transaction). fn in
-- db:transaction(fn) cannot wait: sleep, HTTP, Redis, limiter waits (any
-- call that would let other tasks run, and join the open transaction with
-- their writes) raise "... cannot wait inside db:transaction ...", which
-- rolls the transaction back.
--
-- store.open(path [, {busy_timeout = 5}]) -> db | nil, err
--   ":memory:" allowed. WAL journal (file databases), synchronous=NORMAL,
--   busy timeout (seconds, default 5; while waiting for another process's
--   lock the loop is blocked), foreign keys on. Creates the internal tables
--   sluice_state, sluice_checkpoints, sluice_rejects, sluice_quality.
-- store.blob(s) -> a marker binding s as a BLOB in query/exec parameters
--   (plain strings bind as TEXT; both keep embedded NUL bytes).
-- store.encode_json(v [, lenient]) -> s | nil, err (sluice.json.encode);
--   store.decode_json(s) -> v | nil, err (sluice.json.decode). The encoder
--   writes numbers so that they read back exactly (cjson keeps 14 digits)
--   and sorts object keys, so equal tables encode to equal text (which is
--   what makes "unchanged" work for json columns).
--
-- db:define{name, columns, key, required, validate, unknown, without_rowid}
--   -> db, or nil, err on an SQL failure. Creates table `name` (an
--   identifier; the sluice_ and sqlite_ prefixes are reserved) with `key`
--   as its PRIMARY KEY: WITHOUT ROWID, except for a single integer key,
--   which becomes the rowid (without_rowid = true|false overrides).
--   Column types: text, integer, real, blob, json (declared "JSON TEXT").
--   A column is its type name, or { type = t, nonfinite = true } for a
--   real column that stores inf and -inf (other real columns reject them).
--   On an existing table, new columns are added (ALTER TABLE ADD COLUMN);
--   a dropped column, a changed type or a changed key raises. The schema is
--   what PRAGMA table_info says; nothing else is stored. Key columns are
--   always required. validate(row) must return a true value to accept the
--   row; false|nil [, reason] rejects it, and so does raising.
--   unknown = "reject" (default) | "ignore": what a row field that is not a
--   column does. Rejecting is the default because such a field is almost
--   always a misspelt column, which would otherwise store NULL without a
--   word; "ignore" drops such fields and counts them (quality.ignored_fields).
-- db:upsert(name, rows) -> inserted, updated, unchanged, rejected | nil, err
--   (db:upsert_accepted also returns the rows that passed validation)
--   rows is a sequence of tables; one transaction for the whole batch
--   (a SAVEPOINT when a transaction is already open). inserted: new key;
--   updated: the key existed and some value differed; unchanged: the key
--   existed with identical values (nothing written). A key repeated within
--   the batch counts against the earlier row (updated or unchanged; the last
--   one wins). Every row is counted exactly once. Invalid rows are written
--   to sluice_rejects (row as JSON, reason) in the same transaction.
--   Values: cjson.null counts as absent. integer: an integral number within
--   +-2^63, a boolean (1/0), or a decimal string ("42", "4.2e1") holding
--   one; real: a finite number or a decimal string holding one (inf and
--   -inf too when the column says nonfinite = true; NaN never); text and blob:
--   strings; json: a table, number or boolean (encoded) or a string (taken
--   as JSON text as is). Anything else is rejected. Reasons:
--     "row is not a table (got <type>)", "unknown field: <f>",
--     "missing key field: <f>", "missing required field: <f>",
--     "wrong type for field: <f> (<type> expected, got <what>)",
--     "validation failed: <reason or 'validate returned false'>",
--     "validate raised: <message>", "invalid row: <error>" (anything else
--     that raised while checking the row). A failure with one row rejects
--     that row only; a row too deep to encode is kept with "<nested too
--     deep>" in place of the deepest tables.
--   Change detection: per row, INSERT ... ON CONFLICT DO NOTHING; when it
--   inserted nothing, UPDATE ... WHERE key = ... AND (a IS NOT ?a OR ...),
--   so an identical row costs two index probes and no write, and
--   sqlite3_changes() says which of the three happened. Both statements are
--   prepared once per table and bound straight from a flat value array in C.
-- db:select(name [, clause, ...]) -> rows | nil, err: SELECT * FROM name
--   <clause> (e.g. "WHERE symbol = ? ORDER BY open_time") with json columns
--   decoded.
-- db:quality([name]) -> report (or {name = report} for every table)
--   report: total_records (rows offered), valid_records, invalid_records,
--   duplicate_records (valid rows whose key an earlier row of the same
--   batch already had: the upstream sent one record twice; a row re-polled
--   unchanged or updated in a later batch is not a duplicate, it is
--   counted in unchanged_records/updated_records), validation_errors (distinct
--   reasons, most frequent first), validation_error_counts {reason = n},
--   inserted_records, updated_records, unchanged_records, ignored_fields,
--   data_quality_score = (total - invalid - duplicate) / total * 100
--   (100 when total is 0), as in the reference /data-quality example
--   (10000 total, 50 invalid, 25 duplicate -> 99.25).
-- db:reset_quality(name) -> true; db:rejects(name [, limit=100]) -> newest
--   first, { {id, table_name, row (decoded), reason, at}, ... }
-- db:query(sql, ...) -> { {col = value}, ... } | nil, err (NULL -> absent)
-- db:exec(sql, ...) -> rows changed | nil, err
-- db:script(sql) -> true | nil, err (several statements, no parameters)
-- db:transaction(fn, ...) -> fn's results; commits when fn returns (nil,
--   err if the commit fails), rolls back and re-raises when fn raises.
--   Nests (SAVEPOINT). fn must not wait (see above).
--   Parameters are positional: nil -> NULL, booleans -> 1/0, numbers ->
--   INTEGER when integral, else REAL; strings -> TEXT; store.blob(s) -> BLOB.
--   Statements are prepared once and cached by their SQL text. INTEGER
--   values come back as Lua numbers (doubles): exact up to 2^53.
-- db:save_state(kind, name, tbl) -> true | nil, err
-- db:load_state(kind, name) -> tbl | nil; db:states(kind) -> {name = tbl}
-- db:delete_state(kind, name) -> true
-- db:set_checkpoint(collector, key, value) -> true | nil, err (value: any
--   JSON-encodable value; nil deletes); db:get_checkpoint(collector, key)
--   -> value | nil; db:checkpoints(collector) -> {key = value}
-- db:close() -> true, idempotent; any other call on a closed db raises
--   "sluice.store: database is closed". db:is_open(), db.path.
-- db:check() -> true | nil, reason: false once the database file has been
--   deleted or replaced while open ("database file <path> was deleted ...");
--   logged once at error level. upsert, save_state and set_checkpoint then
--   return nil, that reason instead of writing into the unlinked file.
local core = require "sluice._store"
local log = require "sluice.log"
local task = require "sluice._task"
local cjson = require "cjson.safe"
local json = require "sluice.json"

local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber
local error, pcall, select, next, unpack = error, pcall, select, next, unpack
local floor = math.floor
local concat, sort, format = table.concat, table.sort, string.format
local null = cjson.null
local now = task.time

local ok_new, tnew = pcall(require, "table.new")
if not ok_new then tnew = function() return {} end end

local _M = { blob = core.blob, sqlite_version = core.version() }
local db_methods = {}
local db_mt = { __index = db_methods }

local TYPES = { text = "TEXT", integer = "INTEGER", real = "REAL", blob = "BLOB", json = "JSON TEXT" }
local TYPE_OF_DECL = { TEXT = "text", INTEGER = "integer", REAL = "real", BLOB = "blob", ["JSON TEXT"] = "json" }
local TYPE_CHAR = { text = "t", integer = "i", real = "r", blob = "b", json = "j" }
local MAX_REASONS = 100 -- distinct validation error reasons kept per table
local TWO63 = 2 ^ 63

-- --- JSON ------------------------------------------------------------------

local encode_json = json.encode
_M.encode_json = encode_json
_M.decode_json = json.decode

local function decode_or_nil(s)
  if s == nil then return nil end
  return (cjson.decode(s))
end

-- --- helpers ---------------------------------------------------------------

local function quote(id)
  return '"' .. id:gsub('"', '""') .. '"'
end

local function is_identifier(s)
  return type(s) == "string" and s:find("^[%a_][%w_]*$") ~= nil
end

-- Raises "sluice.store.<fname>: <msg>" at `level` relative to fail's caller
-- (2, the default: the caller of the function calling fail).
local function fail(fname, msg, level)
  error("sluice.store." .. fname .. ": " .. msg, (level or 2) + 1)
end

-- For the helpers of define: blames define's caller.
local function dfail(msg)
  error("sluice.store.define: " .. msg, 4)
end

local function check_type(fname, n, v, want)
  if type(v) ~= want then
    fail(fname, format("bad argument #%d (%s expected, got %s)", n, want, type(v)), 3)
  end
end

local function live(self)
  if self._closed then error("sluice.store: database is closed", 3) end
  return self._c
end

local function pack(...) return { n = select("#", ...), ... } end

-- nil while the database file is where it was opened; once it is deleted or
-- replaced, the reason (for good: the handle writes into an unlinked file).
-- Said once, loudly, at error level.
local function file_gone(self, c)
  if self._gone then return self._gone end
  local ok, why = c:file_check()
  if ok then return nil end
  self._gone = why .. " (rows written now are lost at exit; restart sluice)"
  log.error("store: " .. why, { path = self.path })
  return self._gone
end

-- --- transactions ----------------------------------------------------------

-- begin/commit/rollback: a real transaction when none is open, else a
-- savepoint inside the caller's. Return nil, err on SQL failure.
local function tx_begin(c)
  if c:in_transaction() then
    local ok, err = c:exec("SAVEPOINT sluice_tx")
    if not ok then return nil, err end
    return "savepoint"
  end
  local ok, err = c:exec("BEGIN IMMEDIATE")
  if not ok then return nil, err end
  return "tx"
end

local function tx_commit(c, kind)
  return c:exec(kind == "tx" and "COMMIT" or "RELEASE sluice_tx")
end

local function tx_rollback(c, kind)
  if kind == "tx" then
    if c:in_transaction() then c:exec("ROLLBACK") end
  else
    c:exec("ROLLBACK TO sluice_tx")
    c:exec("RELEASE sluice_tx")
  end
end

-- --- open ------------------------------------------------------------------

local SCHEMA = [[
CREATE TABLE IF NOT EXISTS sluice_state (
  kind TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL,
  updated_at REAL NOT NULL, PRIMARY KEY (kind, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sluice_checkpoints (
  collector TEXT NOT NULL, key TEXT NOT NULL, value TEXT,
  updated_at REAL NOT NULL, PRIMARY KEY (collector, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sluice_rejects (
  id INTEGER PRIMARY KEY, table_name TEXT NOT NULL, row TEXT,
  reason TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS sluice_rejects_by_table ON sluice_rejects (table_name, id);
CREATE TABLE IF NOT EXISTS sluice_quality (
  table_name TEXT PRIMARY KEY,
  total_records INTEGER NOT NULL DEFAULT 0,
  valid_records INTEGER NOT NULL DEFAULT 0,
  invalid_records INTEGER NOT NULL DEFAULT 0,
  duplicate_records INTEGER NOT NULL DEFAULT 0,
  inserted_records INTEGER NOT NULL DEFAULT 0,
  updated_records INTEGER NOT NULL DEFAULT 0,
  unchanged_records INTEGER NOT NULL DEFAULT 0,
  ignored_fields INTEGER NOT NULL DEFAULT 0,
  validation_errors TEXT NOT NULL DEFAULT '{}',
  updated_at REAL);
]]

local OPEN_OPTIONS = { busy_timeout = "number" }

function _M.open(path, opts)
  check_type("open", 1, path, "string")
  local busy = 5
  if opts ~= nil then
    check_type("open", 2, opts, "table")
    for k, v in pairs(opts) do
      if not OPEN_OPTIONS[k] then fail("open", "unknown option '" .. tostring(k) .. "'") end
      if type(v) ~= OPEN_OPTIONS[k] then
        fail("open", format("option '%s' (%s expected, got %s)", k, OPEN_OPTIONS[k], type(v)))
      end
    end
    busy = opts.busy_timeout or busy
    if busy < 0 then fail("open", "option 'busy_timeout' must be >= 0") end
  end
  local c, err = core.open(path, floor(busy * 1000))
  if not c then return nil, err end
  local function bail(e)
    c:close()
    return nil, path .. ": " .. tostring(e)
  end
  local mode, e = c:query("PRAGMA journal_mode = WAL")
  if not mode then return bail(e) end
  for _, sql in ipairs({ "PRAGMA synchronous = NORMAL", "PRAGMA foreign_keys = ON" }) do
    local ok, e2 = c:exec(sql)
    if not ok then return bail(e2) end
  end
  local ok, e3 = c:script(SCHEMA)
  if not ok then return bail(e3) end
  return setmetatable({ _c = c, _defs = {}, path = path }, db_mt)
end

-- --- define ----------------------------------------------------------------

local DEFINE_OPTIONS = {
  name = true, columns = true, key = true, required = true, validate = true,
  unknown = true, without_rowid = true,
}

local function check_definition(def)
  if type(def) ~= "table" then
    dfail("bad argument #1 (table expected, got " .. type(def) .. ")")
  end
  for k in pairs(def) do
    if not DEFINE_OPTIONS[k] then dfail("unknown option '" .. tostring(k) .. "'") end
  end
  local name = def.name
  if not is_identifier(name) then
    dfail("name must be an identifier ([A-Za-z_][A-Za-z0-9_]*), got "
      .. (type(name) == "string" and "'" .. name .. "'" or type(name)))
  end
  local lname = name:lower()
  if lname:find("^sluice_") or lname:find("^sqlite_") then
    dfail("name '" .. name .. "' is reserved (sluice_ and sqlite_ prefixes)")
  end
  if type(def.columns) ~= "table" or next(def.columns) == nil then
    dfail("table '" .. name .. "': columns must be a non-empty table")
  end
  local lower_seen = {}
  for col, spec in pairs(def.columns) do
    if not is_identifier(col) then
      dfail("table '" .. name .. "': column " ..
        (type(col) == "string" and "'" .. col .. "'" or tostring(col)) .. " is not an identifier")
    end
    local t = spec
    if type(spec) == "table" then
      for k in pairs(spec) do
        if k ~= "type" and k ~= "nonfinite" then
          dfail(format("table '%s': column '%s' has unknown option '%s'", name, col, tostring(k)))
        end
      end
      t = spec.type
      if spec.nonfinite ~= nil and type(spec.nonfinite) ~= "boolean" then
        dfail(format("table '%s': column '%s': nonfinite must be a boolean", name, col))
      end
      if spec.nonfinite and t ~= "real" then
        dfail(format("table '%s': column '%s': nonfinite is for real columns", name, col))
      end
    end
    if not TYPES[t] then
      dfail(format("table '%s': column '%s' has unknown type '%s' "
        .. "(expected text, integer, real, blob or json)", name, col, tostring(t)))
    end
    local l = col:lower()
    if lower_seen[l] then
      dfail(format("table '%s': columns '%s' and '%s' differ only in case", name, lower_seen[l], col))
    end
    lower_seen[l] = col
  end
  if type(def.key) ~= "table" or #def.key == 0 then
    dfail("table '" .. name .. "': key must be a non-empty list of column names")
  end
  local seen = {}
  for _, k in ipairs(def.key) do
    if def.columns[k] == nil then
      dfail(format("table '%s': key column '%s' is not in columns", name, tostring(k)))
    end
    if seen[k] then dfail(format("table '%s': key column '%s' is listed twice", name, k)) end
    seen[k] = true
  end
  if def.required ~= nil then
    if type(def.required) ~= "table" then
      dfail("table '" .. name .. "': required must be a list of column names")
    end
    for _, k in ipairs(def.required) do
      if def.columns[k] == nil then
        dfail(format("table '%s': required column '%s' is not in columns", name, tostring(k)))
      end
    end
  end
  if def.validate ~= nil and type(def.validate) ~= "function" then
    dfail("table '" .. name .. "': validate must be a function")
  end
  if def.unknown ~= nil and def.unknown ~= "reject" and def.unknown ~= "ignore" then
    dfail("table '" .. name .. "': unknown must be \"reject\" or \"ignore\"")
  end
  if def.without_rowid ~= nil and type(def.without_rowid) ~= "boolean" then
    dfail("table '" .. name .. "': without_rowid must be a boolean")
  end
end

-- The definition with every column's type as a string, plus the set of
-- columns that accept inf and -inf ({ type = "real", nonfinite = true }).
local function normalize(def)
  local out, columns, nonfinite = {}, {}, {}
  for k, v in pairs(def) do out[k] = v end
  for col, spec in pairs(def.columns) do
    if type(spec) == "table" then
      columns[col] = spec.type
      nonfinite[col] = spec.nonfinite or nil
    else
      columns[col] = spec
    end
  end
  out.columns, out.nonfinite = columns, nonfinite
  return out
end

local function key_text(list)
  return "(" .. concat(list, ", ") .. ")"
end

-- Reads the table's columns: { {name, type (ours or the declared one), pk} }
-- in table order, or an empty list when the table does not exist.
local function table_columns(c, name)
  local rows, err = c:query("SELECT name, type, pk FROM pragma_table_info(?) ORDER BY cid", name)
  if not rows then return nil, err end
  for _, r in ipairs(rows) do
    r.type = TYPE_OF_DECL[(r.type or ""):upper()] or (r.type or "")
  end
  return rows
end

-- Compares the existing table with the definition; raises on a destructive
-- change. Returns the column order (existing first) and the new columns.
local function reconcile(name, existing, def)
  local order, new = {}, {}
  local defcols = {}
  for col, t in pairs(def.columns) do defcols[col:lower()] = { col, t } end
  local pks = {}
  local present = {}
  for _, r in ipairs(existing) do
    local d = defcols[r.name:lower()]
    if not d then
      dfail(format("table '%s': column '%s' is missing from the new definition "
        .. "(dropping a column is refused)", name, r.name))
    end
    if d[2] ~= r.type then
      dfail(format("table '%s': column '%s' is %s, the new definition says %s "
        .. "(changing a type is refused)", name, r.name, r.type, d[2]))
    end
    if r.pk > 0 then pks[r.pk] = r.name end
    present[r.name:lower()] = true
    order[#order + 1] = d[1]
  end
  local old_key, same = {}, #pks == #def.key
  for i, k in ipairs(pks) do
    old_key[i] = k
    if not def.key[i] or def.key[i]:lower() ~= k:lower() then same = false end
  end
  if not same then
    dfail(format("table '%s': key is %s, the new definition says %s "
      .. "(changing the key is refused)", name, key_text(old_key), key_text(def.key)))
  end
  for col in pairs(def.columns) do
    if not present[col:lower()] then new[#new + 1] = col end
  end
  sort(new)
  for _, col in ipairs(new) do order[#order + 1] = col end
  return order, new
end

local function compile(def, order)
  local name = def.name
  local cols, types, qcols, params, index = {}, {}, {}, {}, {}
  local iskey = {}
  for _, k in ipairs(def.key) do iskey[k] = true end
  for i, col in ipairs(order) do
    cols[i], types[i], qcols[i], params[i], index[col] = col, def.columns[col], quote(col), "?" .. i, i
  end
  local typechars, nonfinite = {}, {}
  for i, t in ipairs(types) do
    typechars[i] = TYPE_CHAR[t]
    nonfinite[i] = def.nonfinite[cols[i]] or false
  end
  local sets, wheres, diffs = {}, {}, {}
  for i, col in ipairs(cols) do
    if iskey[col] then
      wheres[#wheres + 1] = qcols[i] .. " = ?" .. i
    else
      sets[#sets + 1] = qcols[i] .. " = ?" .. i
      diffs[#diffs + 1] = qcols[i] .. " IS NOT ?" .. i
    end
  end
  local qname = quote(name)
  local key_idx, req_idx, req_names = {}, {}, {}
  for _, k in ipairs(def.key) do key_idx[#key_idx + 1] = index[k] end
  for _, k in ipairs(def.required or {}) do
    if not iskey[k] then
      req_idx[#req_idx + 1] = index[k]
      req_names[#req_names + 1] = k
    end
  end
  return {
    name = name, cols = cols, types = types, index = index, ncols = #cols, nonfinite = nonfinite,
    typechars = concat(typechars), key = def.key, key_idx = key_idx,
    req_idx = req_idx, req_names = req_names, validate = def.validate,
    reject_unknown = def.unknown ~= "ignore",
    ins_sql = format("INSERT INTO %s (%s) VALUES (%s) ON CONFLICT DO NOTHING",
      qname, concat(qcols, ", "), concat(params, ", ")),
    upd_sql = #sets > 0 and format("UPDATE %s SET %s WHERE %s AND (%s)", qname,
      concat(sets, ", "), concat(wheres, " AND "), concat(diffs, " OR ")) or nil,
  }
end

local function create_sql(def, order)
  local parts = {}
  local single_int = #def.key == 1 and def.columns[def.key[1]] == "integer"
  local without_rowid = def.without_rowid
  if without_rowid == nil then without_rowid = not single_int end
  local inline_pk = single_int and not without_rowid
  for _, col in ipairs(order) do
    local p = quote(col) .. " " .. TYPES[def.columns[col]]
    if inline_pk and col == def.key[1] then p = p .. " PRIMARY KEY" end
    parts[#parts + 1] = p
  end
  if not inline_pk then
    local q = {}
    for i, k in ipairs(def.key) do q[i] = quote(k) end
    parts[#parts + 1] = "PRIMARY KEY (" .. concat(q, ", ") .. ")"
  end
  return format("CREATE TABLE %s (%s)%s", quote(def.name), concat(parts, ", "),
    without_rowid and " WITHOUT ROWID" or "")
end

function db_methods:define(def)
  local c = live(self)
  check_definition(def)
  def = normalize(def)
  local name = def.name
  local existing, err = table_columns(c, name)
  if not existing then return nil, err end
  local order
  if #existing == 0 then
    order = {}
    local rest = {}
    for _, k in ipairs(def.key) do order[#order + 1] = k end
    local iskey = {}
    for _, k in ipairs(def.key) do iskey[k] = true end
    for col in pairs(def.columns) do
      if not iskey[col] then rest[#rest + 1] = col end
    end
    sort(rest)
    for _, col in ipairs(rest) do order[#order + 1] = col end
    local ok, e = c:exec(create_sql(def, order))
    if not ok then return nil, "table '" .. name .. "': " .. e end
  else
    local new
    order, new = reconcile(name, existing, def)
    if #new > 0 then
      local kind, e = tx_begin(c)
      if not kind then return nil, "table '" .. name .. "': " .. e end
      for _, col in ipairs(new) do
        local ok, e2 = c:exec(format("ALTER TABLE %s ADD COLUMN %s %s", quote(name),
          quote(col), TYPES[def.columns[col]]))
        if not ok then
          tx_rollback(c, kind)
          return nil, "table '" .. name .. "': " .. e2
        end
      end
      local ok, e3 = tx_commit(c, kind)
      if not ok then
        tx_rollback(c, kind)
        return nil, "table '" .. name .. "': " .. e3
      end
    end
  end
  self._defs[name] = compile(def, order)
  return self
end

-- --- upsert ----------------------------------------------------------------

-- A decimal number in a string: "42", "-1.5", ".5", "1e3". Not hex, not
-- "inf"/"nan", no surrounding space (tonumber accepts all of those).
local function parse_decimal(s)
  local m = s:match("^[-+]?(%d*%.?%d*)$") or s:match("^[-+]?(%d*%.?%d*)[eE][-+]?%d+$")
  if m and m:find("%d") then return tonumber(s) end
  return nil
end

local function describe(v)
  local tv = type(v)
  if tv == "number" and v - v ~= 0 then
    return v ~= v and "nan" or v > 0 and "inf" or "-inf"
  end
  return tv
end

-- Returns the value to store, or nil, reason. nonfinite: a real column that
-- takes inf and -inf (NaN never: SQLite would store it as NULL).
local function coerce(t, v, field, nonfinite)
  local tv = type(v)
  if t == "text" or t == "blob" then
    if tv == "string" then return v end
  elseif t == "integer" then
    local n = v
    if tv == "string" then
      n = parse_decimal(v)
    elseif tv == "boolean" then
      return v and 1 or 0
    elseif tv ~= "number" then
      n = nil
    end
    if n then
      if n == floor(n) and n >= -TWO63 and n < TWO63 then return n end
      return nil, "wrong type for field: " .. field .. " (integer expected, got "
        .. (n ~= n and "nan" or n ~= floor(n) and "non-integral number" or "out-of-range number") .. ")"
    end
  elseif t == "real" then
    local n = v
    if tv == "string" then
      n = parse_decimal(v)
    elseif tv ~= "number" then
      n = nil
    end
    if n and (n - n == 0 or (nonfinite and n == n)) then return n end
    if n then return nil, "wrong type for field: " .. field .. " (real expected, got " .. describe(n) .. ")" end
  else -- json
    if tv == "string" then return v end
    local s, err = encode_json(v)
    if s then return s end
    return nil, "wrong type for field: " .. field .. " (json expected, " .. err .. ")"
  end
  return nil, "wrong type for field: " .. field .. " (" .. t .. " expected, got " .. describe(v) .. ")"
end

-- Checks one row into flat[base+1 .. base+ncols]. Returns nil (valid) or
-- the reject reason; counts ignored fields in acc.
local function check_row(d, row, flat, base, acc)
  if type(row) ~= "table" then
    return "row is not a table (got " .. type(row) .. ")"
  end
  local index, types = d.index, d.types
  for k, v in pairs(row) do
    local i = index[k]
    if i == nil then
      if d.reject_unknown then return "unknown field: " .. tostring(k) end
      acc.ignored = acc.ignored + 1
    elseif v ~= null then
      local t = types[i]
      local tv = type(v)
      -- the common, already right cases first; coerce handles the rest
      if (t == "real" and tv == "number" and v - v == 0)
        or (tv == "string" and (t == "text" or t == "blob" or t == "json")) then
        flat[base + i] = v
      elseif t == "integer" and tv == "number" and v == floor(v) and v >= -TWO63 and v < TWO63 then
        flat[base + i] = v
      else
        local cv, why = coerce(t, v, k, d.nonfinite[i])
        if cv == nil then return why end
        flat[base + i] = cv
      end
    end
  end
  local key_idx, cols = d.key_idx, d.cols
  for j = 1, #key_idx do
    if flat[base + key_idx[j]] == nil then return "missing key field: " .. cols[key_idx[j]] end
  end
  local req_idx = d.req_idx
  for j = 1, #req_idx do
    if flat[base + req_idx[j]] == nil then return "missing required field: " .. cols[req_idx[j]] end
  end
  local validate = d.validate
  if validate then
    local ok, res, why = pcall(validate, row)
    if not ok then return "validate raised: " .. tostring(res) end
    if not res then
      return "validation failed: " .. (why ~= nil and tostring(why) or "validate returned false")
    end
  end
  return nil
end

-- The rejected row as JSON text, or nil (stored as NULL) when even the
-- lenient encoder fails; the reject itself is never lost.
local function reject_json(row)
  local ok, s = pcall(encode_json, row, true)
  if ok then return s end
  return nil
end

local REJECT_SQL = "INSERT INTO sluice_rejects (table_name, row, reason, at) VALUES (?, ?, ?, ?)"
local QUALITY_SQL = [[
INSERT INTO sluice_quality (table_name, total_records, valid_records, invalid_records,
  duplicate_records, inserted_records, updated_records, unchanged_records, ignored_fields,
  updated_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
ON CONFLICT (table_name) DO UPDATE SET
  total_records = total_records + excluded.total_records,
  valid_records = valid_records + excluded.valid_records,
  invalid_records = invalid_records + excluded.invalid_records,
  duplicate_records = duplicate_records + excluded.duplicate_records,
  inserted_records = inserted_records + excluded.inserted_records,
  updated_records = updated_records + excluded.updated_records,
  unchanged_records = unchanged_records + excluded.unchanged_records,
  ignored_fields = ignored_fields + excluded.ignored_fields,
  updated_at = excluded.updated_at]]
local ERRORS_GET_SQL = "SELECT validation_errors FROM sluice_quality WHERE table_name = ?"
local ERRORS_SET_SQL = "UPDATE sluice_quality SET validation_errors = ? WHERE table_name = ?"

-- Adds this batch's reasons to the table's counts, keeping at most
-- MAX_REASONS distinct ones (later newcomers count under "other").
local function merge_reasons(c, name, counts)
  local rows, err = c:query(ERRORS_GET_SQL, name)
  if not rows then return nil, err end
  local all = (rows[1] and decode_or_nil(rows[1].validation_errors)) or {}
  local distinct = 0
  for _ in pairs(all) do distinct = distinct + 1 end
  for reason, n in pairs(counts) do
    if all[reason] == nil and distinct >= MAX_REASONS then reason = "other" end
    if all[reason] == nil then distinct = distinct + 1 end
    all[reason] = (all[reason] or 0) + n
  end
  return c:exec(ERRORS_SET_SQL, encode_json(all), name)
end

-- How many of the nvalid rows in flat repeat the key of an earlier one.
local function batch_duplicates(d, flat, nvalid)
  if nvalid < 2 then return 0 end
  local key_idx, nk, ncols = d.key_idx, #d.key_idx, d.ncols
  local seen, parts, dups = {}, {}, 0
  for r = 0, nvalid - 1 do
    local base, k = r * ncols
    if nk == 1 then
      k = flat[base + key_idx[1]]
    else
      for j = 1, nk do parts[j] = tostring(flat[base + key_idx[j]]) end
      k = concat(parts, "\0", 1, nk)
    end
    if seen[k] then dups = dups + 1 else seen[k] = true end
  end
  return dups
end

local function write_batch(c, d, flat, nvalid, nrows, rejects, reasons, ignored)
  local inserted, updated, unchanged = 0, 0, 0
  if nvalid > 0 then
    inserted, updated, unchanged = c:upsert_rows(d.ins_sql, d.upd_sql, d.typechars, d.ncols, flat, nvalid)
    if not inserted then return nil, updated end
  end
  local at = now()
  local name = d.name
  if rejects then
    for i = 1, #rejects do
      local ok, err = c:exec(REJECT_SQL, name, rejects[i][1], rejects[i][2], at)
      if not ok then return nil, err end
    end
  end
  local nrej = nrows - nvalid
  local ok, err = c:exec(QUALITY_SQL, name, nrows, nvalid, nrej, batch_duplicates(d, flat, nvalid),
    inserted, updated, unchanged, ignored, at)
  if not ok then return nil, err end
  if reasons then
    ok, err = merge_reasons(c, name, reasons)
    if not ok then return nil, err end
  end
  return inserted, updated, unchanged, nrej
end

local function upsert(self, name, rows, want_accepted)
  local c = live(self)
  check_type("upsert", 1, name, "string")
  local d = self._defs[name]
  if not d then fail("upsert", "table '" .. name .. "' is not defined (call db:define first)") end
  check_type("upsert", 2, rows, "table")
  local gone = file_gone(self, c)
  if gone then return nil, gone end
  local n = #rows
  if n == 0 then return 0, 0, 0, 0, want_accepted and {} or nil end
  local ncols = d.ncols
  local flat = tnew(n * ncols, 0)
  local nvalid, base = 0, 0
  local rejects, reasons
  local valid = {}
  local acc = { ignored = 0 }
  for r = 1, n do
    local row = rows[r]
    -- whatever goes wrong with one row (an encoder or a metamethod raising)
    -- rejects that row, never the batch
    local ok_row, reason = pcall(check_row, d, row, flat, base, acc)
    if not ok_row then
      reason = "invalid row: " .. tostring(reason)
    elseif reason == "" then
      reason = "invalid row"
    end
    if reason == nil then
      nvalid = nvalid + 1
      valid[nvalid] = row
      base = base + ncols
    else
      for i = base + 1, base + ncols do flat[i] = nil end
      rejects = rejects or {}
      rejects[#rejects + 1] = { reject_json(row), reason }
      reasons = reasons or {}
      reasons[reason] = (reasons[reason] or 0) + 1
    end
  end
  if self._closed then error("sluice.store: database is closed", 2) end -- validate may yield
  local kind, err = tx_begin(c)
  if not kind then return nil, err end
  local res = pack(pcall(write_batch, c, d, flat, nvalid, n, rejects, reasons, acc.ignored))
  if not res[1] then
    tx_rollback(c, kind)
    error(res[2], 0)
  end
  if res[2] == nil then
    tx_rollback(c, kind)
    return nil, res[3]
  end
  local ok, e = tx_commit(c, kind)
  if not ok then
    tx_rollback(c, kind)
    return nil, e
  end
  if want_accepted then return res[2], res[3], res[4], res[5], valid end
  return res[2], res[3], res[4], res[5]
end

-- (tail calls, so that misuse errors still name the caller's line)
function db_methods:upsert(name, rows)
  return upsert(self, name, rows, false)
end

--- db:upsert_accepted(name, rows) -> as upsert, plus the list of rows that
-- passed validation (what sinks publish).
function db_methods:upsert_accepted(name, rows)
  return upsert(self, name, rows, true)
end

function db_methods:select(name, clause, ...)
  local c = live(self)
  check_type("select", 1, name, "string")
  if clause ~= nil then check_type("select", 2, clause, "string") end
  local rows, err = c:query("SELECT * FROM " .. quote(name) .. (clause and " " .. clause or ""), ...)
  if not rows then return nil, err end
  local d = self._defs[name]
  if d then
    local jcols = {}
    for i, t in ipairs(d.types) do
      if t == "json" then jcols[#jcols + 1] = d.cols[i] end
    end
    if #jcols > 0 then
      for _, row in ipairs(rows) do
        for _, col in ipairs(jcols) do
          local s = row[col]
          if type(s) == "string" then
            local v = cjson.decode(s)
            if v ~= nil then row[col] = v end
          end
        end
      end
    end
  end
  return rows
end

-- --- quality and rejects -----------------------------------------------------

local function report(r)
  local total = r.total_records or 0
  local invalid = r.invalid_records or 0
  local dup = r.duplicate_records or 0
  local counts = decode_or_nil(r.validation_errors) or {}
  local list = {}
  for reason in pairs(counts) do list[#list + 1] = reason end
  sort(list, function(a, b)
    if counts[a] ~= counts[b] then return counts[a] > counts[b] end
    return a < b
  end)
  return {
    total_records = total,
    valid_records = r.valid_records or 0,
    invalid_records = invalid,
    duplicate_records = dup,
    validation_errors = list,
    validation_error_counts = counts,
    inserted_records = r.inserted_records or 0,
    updated_records = r.updated_records or 0,
    unchanged_records = r.unchanged_records or 0,
    ignored_fields = r.ignored_fields or 0,
    data_quality_score = total == 0 and 100.0 or (total - invalid - dup) / total * 100,
    updated_at = r.updated_at,
  }
end

function db_methods:quality(name)
  local c = live(self)
  if name == nil then
    local rows, err = c:query("SELECT * FROM sluice_quality ORDER BY table_name")
    if not rows then return nil, err end
    local all = {}
    for _, r in ipairs(rows) do all[r.table_name] = report(r) end
    return all
  end
  check_type("quality", 1, name, "string")
  local rows, err = c:query("SELECT * FROM sluice_quality WHERE table_name = ?", name)
  if not rows then return nil, err end
  return report(rows[1] or {})
end

function db_methods:reset_quality(name)
  local c = live(self)
  check_type("reset_quality", 1, name, "string")
  local ok, err = c:exec("DELETE FROM sluice_quality WHERE table_name = ?", name)
  if not ok then return nil, err end
  return true
end

function db_methods:rejects(name, limit)
  local c = live(self)
  check_type("rejects", 1, name, "string")
  if limit ~= nil then check_type("rejects", 2, limit, "number") end
  local rows, err = c:query("SELECT id, table_name, row, reason, at FROM sluice_rejects "
    .. "WHERE table_name = ? ORDER BY id DESC LIMIT ?", name, limit or 100)
  if not rows then return nil, err end
  for _, r in ipairs(rows) do
    local v = decode_or_nil(r.row)
    if v ~= nil then r.row = v end
  end
  return rows
end

-- --- SQL ---------------------------------------------------------------------

function db_methods:query(sql, ...)
  local c = live(self)
  check_type("query", 1, sql, "string")
  return c:query(sql, ...)
end

function db_methods:exec(sql, ...)
  local c = live(self)
  check_type("exec", 1, sql, "string")
  return c:exec(sql, ...)
end

function db_methods:script(sql)
  local c = live(self)
  check_type("script", 1, sql, "string")
  return c:script(sql)
end

function db_methods:transaction(fn, ...)
  local c = live(self)
  check_type("transaction", 1, fn, "function")
  local kind, err = tx_begin(c)
  if not kind then return nil, err end
  local res = pack(core.pcall_nowait(fn, ...))
  if self._closed then
    if not res[1] then error(res[2], 0) end
    error("sluice.store: database is closed", 2)
  end
  if not res[1] then
    tx_rollback(c, kind)
    error(res[2], 0)
  end
  local ok, e = tx_commit(c, kind)
  if not ok then
    tx_rollback(c, kind)
    return nil, e
  end
  return unpack(res, 2, res.n)
end

function db_methods:last_insert_id()
  return live(self):last_insert_rowid()
end

-- --- state and checkpoints ----------------------------------------------------

function db_methods:save_state(kind, name, tbl)
  local c = live(self)
  check_type("save_state", 1, kind, "string")
  check_type("save_state", 2, name, "string")
  check_type("save_state", 3, tbl, "table")
  local gone = file_gone(self, c)
  if gone then return nil, gone end
  local data, err = encode_json(tbl)
  if not data then fail("save_state", "cannot encode state: " .. err) end
  local ok, e = c:exec("INSERT INTO sluice_state (kind, name, data, updated_at) VALUES (?, ?, ?, ?) "
    .. "ON CONFLICT (kind, name) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
    kind, name, data, now())
  if not ok then return nil, e end
  return true
end

function db_methods:load_state(kind, name)
  local c = live(self)
  check_type("load_state", 1, kind, "string")
  check_type("load_state", 2, name, "string")
  local rows, err = c:query("SELECT data FROM sluice_state WHERE kind = ? AND name = ?", kind, name)
  if not rows then return nil, err end
  if not rows[1] then return nil end
  return decode_or_nil(rows[1].data)
end

function db_methods:states(kind)
  local c = live(self)
  check_type("states", 1, kind, "string")
  local rows, err = c:query("SELECT name, data FROM sluice_state WHERE kind = ?", kind)
  if not rows then return nil, err end
  local out = {}
  for _, r in ipairs(rows) do out[r.name] = decode_or_nil(r.data) end
  return out
end

function db_methods:delete_state(kind, name)
  local c = live(self)
  check_type("delete_state", 1, kind, "string")
  check_type("delete_state", 2, name, "string")
  local ok, err = c:exec("DELETE FROM sluice_state WHERE kind = ? AND name = ?", kind, name)
  if not ok then return nil, err end
  return true
end

function db_methods:set_checkpoint(collector, key, value)
  local c = live(self)
  check_type("set_checkpoint", 1, collector, "string")
  check_type("set_checkpoint", 2, key, "string")
  local gone = file_gone(self, c)
  if gone then return nil, gone end
  local ok, err
  if value == nil then
    ok, err = c:exec("DELETE FROM sluice_checkpoints WHERE collector = ? AND key = ?", collector, key)
  else
    local data, e = encode_json(value)
    if not data then fail("set_checkpoint", "cannot encode value: " .. e) end
    ok, err = c:exec("INSERT INTO sluice_checkpoints (collector, key, value, updated_at) "
      .. "VALUES (?, ?, ?, ?) ON CONFLICT (collector, key) DO UPDATE SET "
      .. "value = excluded.value, updated_at = excluded.updated_at", collector, key, data, now())
  end
  if not ok then return nil, err end
  return true
end

function db_methods:get_checkpoint(collector, key)
  local c = live(self)
  check_type("get_checkpoint", 1, collector, "string")
  check_type("get_checkpoint", 2, key, "string")
  local rows, err = c:query("SELECT value FROM sluice_checkpoints WHERE collector = ? AND key = ?",
    collector, key)
  if not rows then return nil, err end
  if not rows[1] then return nil end
  return decode_or_nil(rows[1].value)
end

function db_methods:checkpoints(collector)
  local c = live(self)
  check_type("checkpoints", 1, collector, "string")
  local rows, err = c:query("SELECT key, value FROM sluice_checkpoints WHERE collector = ?", collector)
  if not rows then return nil, err end
  local out = {}
  for _, r in ipairs(rows) do out[r.key] = decode_or_nil(r.value) end
  return out
end

-- --- lifetime -------------------------------------------------------------------

function db_methods:close()
  if not self._closed then
    self._closed = true
    self._c:close()
  end
  return true
end

function db_methods:is_open()
  return not self._closed
end

--- db:check() -> true | nil, reason: whether the database file is still the
-- one opened (not deleted or replaced under the running process).
function db_methods:check()
  local gone = file_gone(self, live(self))
  if gone then return nil, gone end
  return true
end

function db_mt:__tostring()
  return self._closed and "sluice.store.db (closed)" or "sluice.store.db (" .. self.path .. ")"
end

return _M
