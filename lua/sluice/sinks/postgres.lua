--- sluice.sinks.postgres: the PostgreSQL sink of the outbox (kind "postgres").
--
--   sinks = { postgres = { url = "postgresql://user@127.0.0.1:5432/market" } }
--
-- Loading this module registers the kind with sluice.outbox (which loads
-- it by itself the first time a sink of kind "postgres" is configured).
-- new(name, settings, ctx) -> sink; settings (besides the outbox's own):
--   url              libpq URI or connection string (required)
--   schema           the schema of the tables (default "public"; created
--                    when missing)
--   connect_timeout  seconds (default 5)
--   timeout          seconds per statement (default 30)
--   method           how a batch is upserted, all with the effect of INSERT
--                    ... ON CONFLICT (key) DO UPDATE in one transaction:
--                    "copy" (default: a plain COPY into the table while its
--                    batches are all new rows, else COPY into a temporary
--                    table and INSERT ... SELECT, see Sink:copy; the fastest
--                    in tests/bench/sink_postgres.lua),
--                    "unnest" (one statement, one array parameter per
--                    column: INSERT ... SELECT FROM unnest($1::bigint[],
--                    ...)) or "values" (multi-row VALUES with a parameter
--                    per value: the server parses 10,000 parameters slowly).
--
-- sink:ensure(table, def) creates the table from the store definition with
-- exact types (TYPES below; the key as PRIMARY KEY) and adds the columns
-- the definition gained since (ALTER TABLE ... ADD COLUMN IF NOT EXISTS).
-- A column the sink has with another type is an error (nil, err).
-- sink:write(table, rows, def) upserts the batch in one transaction: a row
-- sent twice is one row, the later values win. A refusal of the data
-- (SQLSTATE class 22 or 23: a value out of range, a constraint) -> nil,
-- err, "rejected" (the outbox dead-letters the batch); anything else (no
-- connection, a timeout, a server shutting down) -> nil, err, kind (the
-- outbox retries). A connection that failed is dropped and made again at
-- the next call (the outbox's backoff paces it).
-- sink:write_batch(table, batch, def) the same for the outbox's batch
-- (sluice._outbox.batch): its COPY text written in C from the queued text.
-- sink:stats() -> {connected, batches, rows, copies (batches written by a
-- plain COPY), reconnects, server_version}.
-- Misuse raises; operational failure returns nil, err, kind.
local pg = require "sluice.pg"
local json = require "sluice.json"
local options = require "sluice.options"

local type, pairs, ipairs, tostring, error, setmetatable = type, pairs, ipairs, tostring, error, setmetatable
local sort, concat, min, floor, huge = table.sort, table.concat, math.min, math.floor, math.huge
local format, byte, gsub = string.format, string.byte, string.gsub
local quote = pg.quote_ident
local buffer = require "string.buffer"
local encode_value = require("sluice.outbox.codec").encode_value
local copy_escape = require("sluice._pg").copy_escape
local null, find, TWO53 = json.null, string.find, 2 ^ 53
local number, numeral_text, int64_text = json.number, json.numeral_text, json.int64_text
local encode_string = require("cjson.safe").encode
local next, getmetatable = next, getmetatable
local copy_text -- (below)

local _M = {}
local Sink = {}
Sink.__index = Sink

--- The store's column types -> PostgreSQL's, exact both ways: numeric
-- keeps 2^256-1 and a decimal's digits as written ("1.50" stays "1.50");
-- jsonb keeps the numbers of a JSON value exactly (it stores them as
-- numeric) and compares by value.
local TYPES = {
  integer = "bigint", real = "double precision", text = "text", blob = "bytea",
  json = "jsonb", uint256 = "numeric(78,0)", decimal = "numeric", boolean = "boolean",
}
_M.TYPES = TYPES
-- information_schema's data_type of each, for the reconciliation.
local INFO = {
  bigint = "bigint", ["double precision"] = "double precision", text = "text", bytea = "bytea",
  jsonb = "jsonb", ["numeric(78,0)"] = "numeric", numeric = "numeric", boolean = "boolean",
}

local SETTINGS = {
  url = { type = "string", required = true },
  schema = "string",
  connect_timeout = { type = "number", gt = 0 },
  timeout = { type = "number", gt = 0 },
  method = { one_of = { "unnest", "values", "copy" } },
}
local MAX_PARAMS = 65535

function _M.new(name, settings, ctx)
  options.check("sinks." .. tostring(name), settings, SETTINGS, 2)
  return setmetatable({
    name = name, url = settings.url, schema = settings.schema or "public",
    connect_timeout = settings.connect_timeout or 5, timeout = settings.timeout or 30,
    method = settings.method or "copy", log = ctx and ctx.log,
    conn = nil, plans = {}, temps = {}, direct = {}, batches = 0, rows = 0, copies = 0, connects = 0,
    server_version = nil,
    batch = 5000, -- the outbox's default for this kind: half the per-row cost of updates of 1000
  }, Sink)
end

-- The connection, made (again) when there is none or it closed.
function Sink:connection()
  local c = self.conn
  if c and c:status() ~= "closed" then return c end
  self.conn = nil
  local err, kind
  c, err, kind = pg.connect { url = self.url, connect_timeout = self.connect_timeout, timeout = self.timeout }
  if not c then return nil, "postgres: " .. err, kind end
  self.connects = self.connects + 1
  self.server_version = select(3, c:status())
  self.conn = c
  return c
end

-- One statement; failures become the outbox's kinds.
function Sink:exec(sql, params, n)
  local c, err, kind = self:connection()
  if not c then return nil, err, kind end
  local res, state
  res, err, kind, state = c:query(sql, params, n)
  if res then return res end
  if kind == "server" and pg.data_error(state) then kind = "rejected" end
  if kind ~= "server" and kind ~= "rejected" then
    c:close() -- lost, timed out or busy: start afresh next time
    self.conn = nil
  end
  return nil, ("postgres: %s%s"):format(state and (state .. " ") or "", err), kind, state
end

-- What another client creating the same object at the same moment makes
-- IF NOT EXISTS fail with, once it commits (PostgreSQL checks the catalog
-- before it waits on the other transaction's lock, then trips over the
-- row it committed): unique_violation on pg_type/pg_namespace,
-- duplicate_table, duplicate_schema, duplicate_column. The object is there
-- then, so the statement is run again and finds it.
local DDL_RACE = { ["23505"] = true, ["42P07"] = true, ["42P06"] = true, ["42701"] = true }

-- A statement of ensure(): a lost race run once more; and a failure is
-- never "rejected", which would dead-letter a batch of good rows for it:
-- the outbox retries the batch instead.
function Sink:ddl(sql)
  local ok, err, kind, state = self:exec(sql)
  if not ok and DDL_RACE[state] then ok, err, kind, state = self:exec(sql) end
  if ok then return ok end
  if kind == "rejected" then kind = "server" end
  return nil, err, kind, state
end

local function columns_of(def)
  local names = {}
  for col in pairs(def.columns or {}) do names[#names + 1] = col end
  sort(names)
  local types = {}
  for _, col in ipairs(names) do
    local t = def.columns[col]
    if type(t) == "table" then t = t.type end
    local pt = TYPES[t]
    if not pt then
      error("sluice.sinks.postgres: column " .. col .. ": no PostgreSQL type for '" .. tostring(t) .. "'", 3)
    end
    types[col] = pt
  end
  local key = def.key or {}
  if type(key) == "string" then key = { key } end
  return names, types, key
end

function Sink:qualified(tname)
  return quote(self.schema) .. "." .. quote(tname)
end

function Sink:ensure(tname, def)
  local names, types, key = columns_of(def)
  if #names == 0 then return nil, "postgres: table " .. tname .. " has no columns" end
  local cols = {}
  for i, col in ipairs(names) do cols[i] = quote(col) .. " " .. types[col] end
  if #key > 0 then
    local k = {}
    for i, col in ipairs(key) do k[i] = quote(col) end
    cols[#cols + 1] = "PRIMARY KEY (" .. concat(k, ", ") .. ")"
  end
  local ok, err, kind = self:ddl("CREATE SCHEMA IF NOT EXISTS " .. quote(self.schema))
  if not ok then return nil, err, kind end
  ok, err, kind = self:ddl("CREATE TABLE IF NOT EXISTS " .. self:qualified(tname) .. " (" .. concat(cols, ", ") .. ")")
  if not ok then return nil, err, kind end
  local res
  res, err, kind = self:exec("SELECT column_name, data_type FROM information_schema.columns"
    .. " WHERE table_schema = $1 AND table_name = $2", { self.schema, tname })
  if not res then return nil, err, kind end
  local have = {}
  for _, r in ipairs(res.rows) do have[r.column_name] = r.data_type end
  for _, col in ipairs(names) do
    if not have[col] then
      ok, err, kind = self:ddl("ALTER TABLE " .. self:qualified(tname) .. " ADD COLUMN IF NOT EXISTS "
        .. quote(col) .. " " .. types[col])
      if not ok then return nil, err, kind end
    elseif have[col] ~= INFO[types[col]] then
      return nil, ("postgres: %s.%s is %s on the sink, %s expected"):format(tname, col, have[col], types[col])
    end
  end
  self.plans[tname] = nil -- the statements follow the definition
  if self.temps[tname] then -- and copy's temporary table the sink's
    self.temps[tname] = nil
    ok, err, kind = self:exec("DROP TABLE IF EXISTS pg_temp." .. quote("sluice_in_" .. tname))
    if not ok then return nil, err, kind end
  end
  return true
end

-- The statements of a table's upsert (cached per definition).
function Sink:plan(tname, def)
  local p = self.plans[tname]
  if p and p.def == def then return p end
  local names, types, key = columns_of(def)
  local qcols, sets, iskey = {}, {}, {}
  for _, col in ipairs(key) do iskey[col] = true end
  for i, col in ipairs(names) do
    qcols[i] = quote(col)
    if not iskey[col] then sets[#sets + 1] = quote(col) .. " = EXCLUDED." .. quote(col) end
  end
  local qkey = {}
  for i, col in ipairs(key) do qkey[i] = quote(col) end
  local conflict = ""
  if #key > 0 then
    conflict = " ON CONFLICT (" .. concat(qkey, ", ") .. ") DO "
      .. (#sets > 0 and ("UPDATE SET " .. concat(sets, ", ")) or "NOTHING")
  end
  local casts, arrays = {}, {}
  for i, col in ipairs(names) do
    casts[i] = types[col]
    arrays[i] = "$" .. i .. "::" .. types[col] .. "[]"
  end
  p = {
    def = def, names = names, casts = casts, ncols = #names, conflict = conflict,
    head = "INSERT INTO " .. self:qualified(tname) .. " (" .. concat(qcols, ", ") .. ") ",
    temp = quote("sluice_in_" .. tname),
    unnest = "INSERT INTO " .. self:qualified(tname) .. " (" .. concat(qcols, ", ") .. ") SELECT * FROM unnest("
      .. concat(arrays, ", ") .. ")" .. conflict,
    per = floor(MAX_PARAMS / #names),
  }
  local list = concat(qcols, ", ")
  p.copy = "COPY " .. self:qualified(tname) .. " (" .. list .. ") FROM STDIN"
  if #key > 0 then
    p.create_temp = "CREATE TEMP TABLE IF NOT EXISTS " .. p.temp .. " (LIKE " .. self:qualified(tname)
      .. " INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    p.upsert = "COPY " .. p.temp .. " (" .. list .. ") FROM STDIN; WITH r AS (" .. p.head .. "SELECT " .. list
      .. " FROM " .. p.temp .. conflict .. " RETURNING xmax) SELECT count(*) FILTER (WHERE xmax::text = '0')::int"
      .. " AS inserted FROM r"
  end
  self.plans[tname] = p
  return p
end

local function hex_byte(ch) return format("%02x", byte(ch)) end

-- A value as the sink stores it: json columns as JSON text, blobs as hex.
-- (No closure is made here: a function that creates one is never compiled
-- by LuaJIT, and this one runs per value.)
local function value(v, cast)
  if v == nil or v == json.null then return nil end
  if cast == "jsonb" then
    local s, err = json.encode(v)
    if not s then return nil, err end
    return s
  end
  if cast == "bytea" and type(v) == "string" then
    return "\\x" .. gsub(v, ".", hex_byte)
  end
  return pg.literal(v)
end

-- Positional values of rows[from..to] (a later duplicate of a key in the
-- same statement would make ON CONFLICT fail: the outbox gives one row per key).
local function flatten(p, rows, from, to)
  local params, n = {}, 0
  local names, casts, ncols = p.names, p.casts, p.ncols
  for i = from, to do
    local r = rows[i]
    for j = 1, ncols do
      n = n + 1
      local v, err = value(r[names[j]], casts[j])
      if err then return nil, err end
      params[n] = v == nil and false or v
    end
  end
  return params, n
end

-- An element of an array literal: always quoted, \ and " escaped.
local function element(s)
  if s:find('[\\"]') then s = s:gsub('[\\"]', "\\%0") end
  return '"' .. s .. '"'
end

function Sink:unnest(p, rows)
  local params, names, casts = {}, p.names, p.casts
  for j = 1, p.ncols do
    local col, cast, items = names[j], casts[j], {}
    for i = 1, #rows do
      local v, err = value(rows[i][col], cast)
      if err then return nil, "postgres: " .. err, "rejected" end
      items[i] = v == nil and "NULL" or element(v)
    end
    params[j] = "{" .. concat(items, ",") .. "}"
  end
  return self:exec(p.unnest, params, p.ncols)
end

function Sink:values(p, rows)
  local ncols = p.ncols
  for from = 1, #rows, p.per do
    local to = min(from + p.per - 1, #rows)
    local params, n = flatten(p, rows, from, to)
    if not params then return nil, "postgres: " .. n, "rejected" end
    local tuples, k = {}, 0
    for i = 1, to - from + 1 do
      local ph = {}
      for j = 1, ncols do
        k = k + 1
        ph[j] = "$" .. k .. "::" .. p.casts[j]
      end
      tuples[i] = "(" .. concat(ph, ", ") .. ")"
    end
    local ok, err, kind = self:exec(p.head .. "VALUES " .. concat(tuples, ", ") .. p.conflict, params, n)
    if not ok then return nil, err, kind end
  end
  return true
end

-- Appends s to b as a COPY text field: backslash, tab, newline and carriage
-- return escaped (plain finds: LuaJIT compiles those, not a pattern's).
local function put_field(b, s)
  if find(s, "\\", 1, true) or find(s, "\t", 1, true) or find(s, "\n", 1, true) or find(s, "\r", 1, true) then
    s = copy_escape(s)
  end
  b:put(s)
end

-- A json column's value as jsonb input: a plain object whose keys are
-- strings and whose values are scalars (a json column's usual value) is
-- written here, in pairs order (jsonb orders and compares keys itself),
-- numbers as sluice.json writes them (jsonb keeps them as numeric: 0.1
-- must stay "0.1"); anything else through encode_value. -> text | nil, err.
local jbuf = buffer.new(256)
local function jsonb_text(v)
  if type(v) ~= "table" or getmetatable(v) ~= nil or next(v) == nil then return encode_value(v) end
  local b = jbuf
  b:reset()
  local sep = "{"
  for k, x in pairs(v) do
    if type(k) ~= "string" then return encode_value(v) end
    b:put(sep, encode_string(k), ":")
    sep = ","
    local tx = type(x)
    if tx == "string" then
      b:put(encode_string(x))
    elseif tx == "number" and x == floor(x) and x > -TWO53 and x < TWO53 then
      b:putf("%d", x)
    elseif tx == "number" and x == x and x ~= huge and x ~= -huge then
      b:put(number(x))
    elseif tx == "boolean" then
      b:put(x and "true" or "false")
    elseif x == null then
      b:put("null")
    else
      local t = numeral_text(x) or int64_text(x)
      if not t then return encode_value(v) end
      b:put(t)
    end
  end
  b:put("}")
  return b:tostring()
end

-- The batch in COPY's text format (what pg.copy_text writes for value()'s
-- texts), built in one buffer: a field's text goes in without a string
-- of its own when it can (an integer, a string that needs no escape), a
-- double precision value as %.17g (PostgreSQL reads any decimal text to
-- the nearest double: 17 digits are that double exactly, where the
-- shortest text json.number finds costs up to three formats and three
-- reads back), a jsonb value through sluice.outbox.codec's encode_value
-- (sluice.json's bytes; the server parses them). -> text | nil, err.
function copy_text(p, rows)
  local b = buffer.new(128 * #rows)
  local names, casts, ncols = p.names, p.casts, p.ncols
  for i = 1, #rows do
    local r = rows[i]
    for j = 1, ncols do
      if j > 1 then b:put("\t") end
      local v, cast = r[names[j]], casts[j]
      local tv = type(v)
      if v == nil or v == null then
        b:put("\\N")
      elseif cast == "jsonb" then
        local s, err = jsonb_text(v)
        if not s then return nil, err end
        put_field(b, s)
      elseif tv == "string" and cast ~= "bytea" then
        put_field(b, v)
      elseif tv == "number" and v == floor(v) and v > -TWO53 and v < TWO53 and (v ~= 0 or 1 / v > 0) then
        b:putf("%d", v)
      elseif tv == "number" and cast == "double precision" and v == v and v ~= huge and v ~= -huge then
        b:putf("%.17g", v)
      else
        local s, err = value(v, cast)
        if err then return nil, err end
        put_field(b, s)
      end
    end
    b:put("\n")
  end
  return b:tostring()
end
_M.copy_text = copy_text

-- A failed COPY: the outbox's kind (a data error is "rejected"; a link
-- lost or timed out drops the connection).
function Sink:copy_failed(c, err, kind, state)
  if kind == "server" and pg.data_error(state) then kind = "rejected" end
  if kind ~= "server" and kind ~= "rejected" then
    c:close()
    self.conn = nil
  end
  return nil, ("postgres: %s%s"):format(state and (state .. " ") or "", err), kind, state
end

-- The batch by COPY, in at most two statements' time:
-- * a table whose last batch was all new rows (or that has no key) gets a
--   plain COPY into itself, the server's bulk path (what `psql \copy`
--   does): a key it already holds fails it (23505; the COPY is undone) and
--   the batch goes the second way at once;
-- * otherwise one string (one round trip besides the data, one implicit
--   transaction): COPY into the session's temporary table (created in the
--   same string the first time on a connection: no DDL per batch), then
--   INSERT ... SELECT ... ON CONFLICT DO UPDATE from it, which counts the
--   rows it inserted (xmax = 0: not an update); all of them new -> the next
--   batch tries the plain COPY again. Appended rows (a backfill, candles)
--   take the first way, a table whose rows change the second, and a switch
--   costs one refused COPY.
function Sink:copy(p, tname, rows, text, nrows)
  local c, err, kind = self:connection()
  if not c then return nil, err, kind end
  if not text then
    local terr
    text, terr = copy_text(p, rows)
    if not text then return nil, "postgres: " .. terr, "rejected" end
    nrows = #rows
  end
  local res, state
  if not p.upsert or self.direct[tname] ~= false then
    res, err, kind, state = c:copy(p.copy, text)
    if res then
      self.copies = self.copies + 1
      return true
    end
    if kind ~= "server" or not p.upsert then return self:copy_failed(c, err, kind, state) end
    self.direct[tname] = false -- a key it has (or bad data: the upsert tells)
  end
  local sql = p.upsert
  if self.temps[tname] ~= c then sql = p.create_temp .. "; " .. sql end
  res, err, kind, state = c:copy(sql, text)
  if not res then
    self.temps[tname] = nil -- undone with the transaction, or the connection gone
    return self:copy_failed(c, err, kind, state)
  end
  self.temps[tname] = c -- temporary tables live as long as their session
  local r = res.rows and res.rows[1]
  if r and r.inserted == nrows then self.direct[tname] = true end
  return true
end

function Sink:write(tname, rows, def)
  if #rows == 0 then return true end
  local p = self:plan(tname, def)
  local ok, err, kind
  if self.method == "copy" then -- one implicit transaction per statement
    ok, err, kind = self:copy(p, tname, rows)
  else
    ok, err, kind = self:exec("BEGIN")
    if not ok then return nil, err, kind end
    if self.method == "values" then
      ok, err, kind = self:values(p, rows)
    else
      ok, err, kind = self:unnest(p, rows)
    end
    if ok then ok, err, kind = self:exec("COMMIT") end
    if not ok and self.conn then self:exec("ROLLBACK") end
  end
  if not ok then return nil, err, kind end
  self.batches = self.batches + 1
  self.rows = self.rows + #rows
  return true
end

-- The outbox's batch (sluice._outbox.batch) without rows as Lua tables:
-- with method "copy", its COPY text is written in C from the queued rows'
-- text (what copy_text writes for their decoded values: a string's
-- characters, a number's digits as queued, a jsonb value's JSON text,
-- bytea as hex); the other methods take the rows decoded.
function Sink:write_batch(tname, batch, def, meta)
  local n = batch:count()
  if n == 0 then return true end
  if self.method ~= "copy" then
    local rows, err = json.decode(batch:json())
    if rows == nil then return nil, "postgres: the batch's rows: " .. tostring(err), "rejected" end
    return self:write(tname, rows, def, meta)
  end
  local p = self:plan(tname, def)
  local text, terr = batch:copy_text(p.names, p.casts)
  if not text then return nil, "postgres: " .. terr, "rejected" end
  local ok, err, kind = self:copy(p, tname, nil, text, n)
  if not ok then return nil, err, kind end
  self.batches = self.batches + 1
  self.rows = self.rows + n
  return true
end

--- query(sql [, params]) -> res | nil, err, kind: for `sluice sql --sink`.
function Sink:query(sql, params)
  return self:exec(sql, params)
end

function Sink:stats()
  return {
    connected = self.conn ~= nil and self.conn:status() ~= "closed",
    batches = self.batches, rows = self.rows, copies = self.copies,
    reconnects = self.connects > 0 and self.connects - 1 or 0,
    server_version = self.server_version,
  }
end

function Sink:close()
  if self.conn then self.conn:close() end
  self.conn = nil
end

require("sluice.outbox").register_kind("postgres", _M.new)

return _M
