--- sluice.store.rows: the rows of defined tables: db:upsert with its
-- checks, rejects and quality counts, db:select, and the quality and
-- rejects reports.
--
-- Owns the internal tables sluice_rejects (rejected rows with their
-- reason) and sluice_quality (per-table counters); _M.SCHEMA creates them.
-- Calls yield only where a table's validate function yields: upsert runs
-- validate on every row before it opens its transaction (so other tasks
-- never write into it); everything else is synchronous.
--
-- db:upsert(name, rows) -> inserted, updated, unchanged, rejected | nil, err
--   (db:upsert_accepted also returns the rows that passed validation, and
--   runs its within(accepted) in the batch's transaction)
--   rows is a sequence of tables; one transaction for the whole batch
--   (a SAVEPOINT when a transaction is already open). inserted: new key;
--   updated: the key existed and some value differed; unchanged: the key
--   existed with identical values (nothing written). A key repeated within
--   the batch counts against the earlier row (updated or unchanged; the last
--   one wins). Every row is counted exactly once. Invalid rows are written
--   to sluice_rejects (row as JSON, reason) in the same transaction.
--   Values: cjson.null counts as absent. integer: exactly an int64, from
--   a whole Lua number within +-(2^53-1) (a double beyond that may already
--   be rounded, 2^53 + 1 reads as 2^53: rejected, "number beyond 2^53"),
--   an int64_t or uint64_t cdata (1LL, ffi.new("int64_t", ...)), a decimal
--   string holding a whole number ("42", "4.2e1", "-9223372036854775808":
--   read digit by digit, never through a double), or a boolean (1/0);
--   outside int64 is "out-of-range number", never a rounded row. Read back
--   (db:select, db:query) an integer within +-(2^53-1) is a Lua number, one
--   beyond is an int64_t cdata (exact; sluice.json writes its digits, it
--   binds back as the same integer; tostring adds "LL", and as a table key
--   two equal cdata are distinct keys). real: a finite number or a decimal string holding one (inf and
--   -inf too when the column says nonfinite = true; NaN never); text and blob:
--   strings; json: a table, number or boolean (encoded) or a string (taken
--   as JSON text as is); uint256 and decimal: exact numbers of any size,
--   stored as text and read back as strings (sluice.store.numbers has
--   what each takes and keeps). Anything else is rejected. Reasons:
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
local json = require "sluice.json"
local handle = require "sluice.store.handle"
local numbers = require "sluice.store.numbers"
local sql = require "sluice.store.sql"
local task = require "sluice._task"
local pcall_nowait = require("sluice._store").pcall_nowait

local ffi = require "ffi"

local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber
local error, pcall, select = error, pcall, select
local floor = math.floor
local concat, sort, rep = table.concat, table.sort, string.rep
local istype, int64_t, uint64_t = ffi.istype, ffi.typeof("int64_t"), ffi.typeof("uint64_t")
local null, encode_json, decode = json.null, json.encode, json.decode
local now = task.time

local conn, check_type, fail = handle.conn, handle.check_type, handle.fail
local file_gone, table_def, is_closed = handle.file_gone, handle.table_def, handle.is_closed
local quote, tx_begin, tx_commit, tx_rollback = sql.quote, sql.begin, sql.commit, sql.rollback

local ok_new, tnew = pcall(require, "table.new")
if not ok_new then tnew = function() return {} end end

local _M = {}
local methods = {}
_M.methods = methods

_M.SCHEMA = [[
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

local MAX_REASONS = 100 -- distinct validation error reasons kept per table
local TWO53 = 2 ^ 53

local function decode_or_nil(s)
  if s == nil then return nil end
  return (decode(s))
end

local function pack(...) return { n = select("#", ...), ... } end

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

-- The whole number a decimal string spells, read digit by digit: a Lua
-- number within +-(2^53-1), else its canonical text ("-9223372036854775808",
-- bound as INTEGER by the C side); nil, why ("non-integral number",
-- "out-of-range number" beyond int64); nil when s is no decimal.
local INT64_MAX, INT64_MIN = "9223372036854775807", "9223372036854775808"
local SAFE_LIMIT = "9007199254740992" -- 2^53: below it a double is exact

local function exact_integer(s)
  local sign, int, frac, e = s:match("^([-+]?)(%d*)%.?(%d*)[eE]([-+]?%d+)$")
  if not sign then
    sign, int, frac = s:match("^([-+]?)(%d*)%.?(%d*)$")
    e = "0"
  end
  if not sign or (int == "" and frac == "") then return nil end
  local digits = (int .. frac):gsub("^0+", "")
  if digits == "" then return 0 end
  local exp = tonumber(e) - #frac
  if exp < 0 then
    if -exp >= #digits or digits:find("[^0]", #digits + exp + 1) then
      return nil, "non-integral number"
    end
    digits = digits:sub(1, #digits + exp)
  elseif exp > 0 then
    if #digits + exp > 19 then return nil, "out-of-range number" end
    digits = digits .. rep("0", exp)
  end
  local n = #digits
  if n > 19 or (n == 19 and digits > (sign == "-" and INT64_MIN or INT64_MAX)) then
    return nil, "out-of-range number"
  end
  if n < 16 or (n == 16 and digits < SAFE_LIMIT) then
    local v = tonumber(digits)
    return sign == "-" and -v or v
  end
  return sign == "-" and "-" .. digits or digits
end

-- Returns the value to store, or nil, reason. nonfinite: a real column that
-- takes inf and -inf (NaN never: SQLite would store it as NULL).
local function coerce(t, v, field, nonfinite)
  local tv = type(v)
  if t == "text" or t == "blob" then
    if tv == "string" then return v end
  elseif t == "integer" then
    local why
    if tv == "boolean" then
      return v and 1 or 0
    elseif tv == "number" then
      if v ~= v then
        why = "nan"
      elseif v ~= floor(v) then
        why = "non-integral number"
      elseif v <= -TWO53 or v >= TWO53 then
        why = (v <= -2 ^ 63 or v >= 2 ^ 63) and "out-of-range number"
          or "number beyond 2^53, which a double cannot hold exactly: pass a decimal string or an int64_t"
      else
        return v
      end
    elseif tv == "string" or tv == "cdata" then
      local s = v
      if tv == "cdata" then
        -- tostring spells 1LL "1LL" and 1ULL "1ULL"
        s = istype(int64_t, v) and tostring(v):sub(1, -3) or istype(uint64_t, v) and tostring(v):sub(1, -4)
      end
      if s then
        local n
        n, why = exact_integer(s)
        if n ~= nil then return n end
      end
    end
    if why then return nil, "wrong type for field: " .. field .. " (integer expected, got " .. why .. ")" end
  elseif t == "real" then
    local n = v
    if tv == "string" then
      n = parse_decimal(v)
    elseif tv ~= "number" then
      n = nil
    end
    if n and (n - n == 0 or (nonfinite and n == n)) then return n end
    if n then return nil, "wrong type for field: " .. field .. " (real expected, got " .. describe(n) .. ")" end
  elseif t == "uint256" or t == "decimal" then
    local s, what = numbers[t](v)
    if s then return s end
    return nil, "wrong type for field: " .. field .. " (" .. t .. " expected, got " .. what .. ")"
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
      elseif t == "integer" and tv == "number" and v == floor(v) and v > -TWO53 and v < TWO53 then
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

-- How many of the nvalid rows in flat repeat the key of an earlier one
-- (a decimal key by value, as its collation compares it: "1.50" repeats
-- "1.5").
local function batch_duplicates(d, flat, nvalid)
  if nvalid < 2 then return 0 end
  local key_idx, nk, ncols, types = d.key_idx, #d.key_idx, d.ncols, d.types
  local seen, parts, dups = {}, {}, 0
  local function part(base, j)
    local v = flat[base + key_idx[j]]
    if types[key_idx[j]] == "decimal" then return numbers.canonical(v) end
    return v
  end
  for r = 0, nvalid - 1 do
    local base, k = r * ncols
    if nk == 1 then
      k = part(base, 1)
    else
      for j = 1, nk do parts[j] = tostring(part(base, j)) end
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

-- write_batch, then within(valid rows, stored, layout) in the same
-- transaction (the outbox's enqueue): what raises there rolls the batch
-- back. stored(r, col) is the value written for column col of valid row r
-- (a json column's text: the outbox reuses it instead of encoding again);
-- layout = {flat, ncols, index} the values written themselves (column i of
-- valid row r at flat[(r - 1) * ncols + i], index: name -> i), read by the
-- outbox's native encoder.
local function write_within(within, valid, stored, layout, ...)
  if ... ~= nil then within(valid, stored, layout) end
  return ...
end

local function upsert(self, name, rows, want_accepted, within)
  local c = conn(self)
  check_type("upsert", 1, name, "string")
  local d = table_def(self, name)
  if not d then fail("upsert", "table '" .. name .. "' is not defined (call db:define first)") end
  check_type("upsert", 2, rows, "table")
  local gone = file_gone(self, c)
  if gone then return nil, gone end
  local n = #rows
  if within ~= nil then check_type("upsert_accepted", 3, within, "function") end
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
  if is_closed(self) then error("sluice.store: database is closed", 2) end -- validate may yield
  local kind, err = tx_begin(c)
  if not kind then return nil, err end
  local res
  if within then
    local index = d.index
    local function stored(r, col)
      local i = index[col]
      return i and flat[(r - 1) * ncols + i]
    end
    res = pack(pcall_nowait(function()
      return write_within(within, valid, stored, { flat = flat, ncols = ncols, index = index },
        write_batch(c, d, flat, nvalid, n, rejects, reasons, acc.ignored))
    end))
  else
    res = pack(pcall(write_batch, c, d, flat, nvalid, n, rejects, reasons, acc.ignored))
  end
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
function methods:upsert(name, rows)
  return upsert(self, name, rows, false)
end

--- db:upsert_accepted(name, rows [, within]) -> as upsert, plus the list
-- of rows that passed validation (what sinks publish). within(accepted,
-- stored, layout), when given, runs inside the batch's transaction once
-- its rows are written (the outbox queues them there); it cannot wait, and
-- when it raises the batch is rolled back and the error re-raised.
-- stored(r, col) -> the value written for column col of accepted[r] (json
-- columns: the sluice.json text of a table); layout = {flat, ncols, index}
-- -> the same values as written: column index[col] of accepted[r] at
-- flat[(r - 1) * ncols + index[col]] (integers beyond 2^53 as their digits,
-- uint256 and decimal as their text, json as its text). Both are valid
-- while within runs and must not be changed.
function methods:upsert_accepted(name, rows, within)
  return upsert(self, name, rows, true, within)
end

function methods:select(name, clause, ...)
  local c = conn(self)
  check_type("select", 1, name, "string")
  if clause ~= nil then check_type("select", 2, clause, "string") end
  local rows, err = c:query("SELECT * FROM " .. quote(name) .. (clause and " " .. clause or ""), ...)
  if not rows then return nil, err end
  local d = table_def(self, name)
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
            local v = decode(s)
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

function methods:quality(name)
  local c = conn(self)
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

function methods:reset_quality(name)
  local c = conn(self)
  check_type("reset_quality", 1, name, "string")
  local ok, err = c:exec("DELETE FROM sluice_quality WHERE table_name = ?", name)
  if not ok then return nil, err end
  return true
end

function methods:rejects(name, limit)
  local c = conn(self)
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

return _M
