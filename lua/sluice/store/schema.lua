--- sluice.store.schema: db:define, a table's definition reconciled with
-- what the database holds, compiled for the upsert.
--
-- Owns the user tables' DDL (CREATE TABLE, ALTER TABLE ADD COLUMN) and the
-- compiled definitions it records on the db (sluice.store.handle keeps
-- them). No call yields.
--
-- db:define{name, columns, key, required, validate, unknown, without_rowid}
--   -> db, or nil, err on an SQL failure. Creates table `name` (an
--   identifier; the sluice_ and sqlite_ prefixes are reserved) with `key`
--   as its PRIMARY KEY: WITHOUT ROWID, except for a single integer key,
--   which becomes the rowid (without_rowid = true|false overrides).
--   Column types: text, integer, real, blob, json (declared "JSON TEXT"),
--   uint256 and decimal (declared "U256 TEXT" and "DECIMAL TEXT", both
--   COLLATE sluice_decimal: stored as text, compared by numeric value; see
--   sluice.store.numbers).
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
--   The table's shape is checked by sluice.options (DEFINE_OPTIONS below:
--   "sluice.store.define: option 'key' must be ..."), what it means after.
--
-- The compiled definition (what sluice.store.rows reads; columns in table
-- order, i = 1 .. ncols): name; cols[i] (names); types[i] ("text" ...);
-- index[col] -> i; nonfinite[i]; typechars (one of "tirbj" per column, for
-- sluice._store's upsert_rows; uint256 and decimal bind as text, "t");
-- key (names); key_idx, req_idx (column numbers of the key and of the
-- other required columns); req_names;
-- validate; reject_unknown; ins_sql (INSERT ... ON CONFLICT DO NOTHING)
-- and upd_sql (UPDATE ... WHERE key AND some value differs; nil when every
-- column is in the key and none is a decimal, whose text may change), both
-- with ?i bound to column i.
local handle = require "sluice.store.handle"
local sql = require "sluice.store.sql"
local options = require "sluice.options"

local type, pairs, ipairs, tostring, error, next = type, pairs, ipairs, tostring, error, next
local concat, sort, format = table.concat, table.sort, string.format

local conn, set_table_def = handle.conn, handle.set_table_def
local quote, tx_begin, tx_commit, tx_rollback = sql.quote, sql.begin, sql.commit, sql.rollback

local _M = {}
local methods = {}
_M.methods = methods

-- uint256 and decimal are TEXT (the declared names avoid "INT", which would
-- give the column integer affinity) compared by the collation
-- sluice_decimal, which sluice._store registers on every connection.
local TYPES = {
  text = "TEXT", integer = "INTEGER", real = "REAL", blob = "BLOB", json = "JSON TEXT",
  uint256 = "U256 TEXT COLLATE sluice_decimal", decimal = "DECIMAL TEXT COLLATE sluice_decimal",
}
local TYPE_OF_DECL = {
  TEXT = "text", INTEGER = "integer", REAL = "real", BLOB = "blob", ["JSON TEXT"] = "json",
  ["U256 TEXT"] = "uint256", ["DECIMAL TEXT"] = "decimal",
}
local TYPE_CHAR = { text = "t", integer = "i", real = "r", blob = "b", json = "j", uint256 = "t", decimal = "t" }

local function is_identifier(s)
  return type(s) == "string" and s:find("^[%a_][%w_]*$") ~= nil
end

-- For the helpers of define: blames define's caller.
local function dfail(msg)
  error("sluice.store.define: " .. msg, 4)
end

local function non_empty(t) return next(t) ~= nil end

-- The shapes of define's table (sluice.options checks them first); what
-- they mean (identifiers, column types, key columns) is checked after.
local DEFINE_OPTIONS = {
  name = {
    type = "string", required = true, check = is_identifier,
    what = "an identifier ([A-Za-z_][A-Za-z0-9_]*)",
  },
  columns = {
    type = "table", required = true, check = non_empty, what = "a non-empty table",
    -- each column: its type name, or { type = t, nonfinite = true }
    values = { type = "string|table", fields = { type = "string", nonfinite = "boolean" } },
  },
  key = {
    type = "table", required = true, check = function(k) return #k > 0 end,
    what = "a non-empty list of column names",
  },
  required = { type = "table", what = "a list of column names" },
  validate = "function",
  unknown = { one_of = { "reject", "ignore" } },
  without_rowid = "boolean",
}

local function check_definition(def)
  if type(def) ~= "table" then
    dfail("bad argument #1 (table expected, got " .. type(def) .. ")")
  end
  options.check("sluice.store.define", def, DEFINE_OPTIONS, 3)
  local name = def.name
  local lname = name:lower()
  if lname:find("^sluice_") or lname:find("^sqlite_") then
    dfail("name '" .. name .. "' is reserved (sluice_ and sqlite_ prefixes)")
  end
  local lower_seen = {}
  for col, spec in pairs(def.columns) do
    if not is_identifier(col) then
      dfail("table '" .. name .. "': column " ..
        (type(col) == "string" and "'" .. col .. "'" or tostring(col)) .. " is not an identifier")
    end
    local t = spec
    if type(spec) == "table" then
      t = spec.type
      if spec.nonfinite and t ~= "real" then
        dfail(format("table '%s': column '%s': nonfinite is for real columns", name, col))
      end
    end
    if not TYPES[t] then
      dfail(format("table '%s': column '%s' has unknown type '%s' "
        .. "(expected text, integer, real, blob, json, uint256 or decimal)", name, col, tostring(t)))
    end
    local l = col:lower()
    if lower_seen[l] then
      dfail(format("table '%s': columns '%s' and '%s' differ only in case", name, lower_seen[l], col))
    end
    lower_seen[l] = col
  end
  local seen = {}
  for _, k in ipairs(def.key) do
    if def.columns[k] == nil then
      dfail(format("table '%s': key column '%s' is not in columns", name, tostring(k)))
    end
    if seen[k] then dfail(format("table '%s': key column '%s' is listed twice", name, k)) end
    seen[k] = true
  end
  for _, k in ipairs(def.required or {}) do
    if def.columns[k] == nil then
      dfail(format("table '%s': required column '%s' is not in columns", name, tostring(k)))
    end
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
    -- a decimal is kept as written: "1.5" after "1.50" is a change of
    -- text (BINARY), though the collation finds them equal; in a key
    -- column too, which the WHERE finds by value and the SET rewrites
    local binary = types[i] == "decimal"
    if iskey[col] then
      wheres[#wheres + 1] = qcols[i] .. " = ?" .. i
    end
    if not iskey[col] or binary then
      sets[#sets + 1] = qcols[i] .. " = ?" .. i
      diffs[#diffs + 1] = qcols[i] .. " IS NOT ?" .. i .. (binary and " COLLATE BINARY" or "")
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

function methods:define(def)
  local c = conn(self)
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
  set_table_def(self, name, compile(def, order))
  return self
end

return _M
