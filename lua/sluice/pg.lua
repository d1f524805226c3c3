--- sluice.pg: PostgreSQL for tasks, on libpq's asynchronous API and the loop.
--
--   local pg = require "sluice.pg"
--   local conn, err, kind = pg.connect{ url = "postgresql://postgres@127.0.0.1:5432/postgres" }
--   local res = conn:query("SELECT $1::int8 AS n, $2::numeric AS p", { 2^53 + 0LL, "0.10" })
--   res.rows[1].n  --> 9007199254740992LL     res.rows[1].p  --> json.numeral "0.10"
--   conn:copy("COPY t (a, b) FROM STDIN", { { 1, "x" }, { 2, nil } }, 2)  --> 2
--   conn:close()
--
-- Nothing blocks the loop: connect, query and copy yield the calling task
-- (they must run in one) until the server answers; the socket is watched
-- by libevent (runtime/core/pg.c). No operation outlives its task: a task
-- killed while it waits has its statement cancelled on the server and the
-- connection dropped.
--
-- pg.connect{url=, connect_timeout=5, timeout=30} -> conn | nil, err, kind
--   url: a libpq URI or "key=value" connection string. kind "connect" (the
--   server refused or is not there; err is libpq's message) or "timeout".
-- conn:query(sql [, params [, n]] [, {timeout=}]) -> res | nil, err, kind [, sqlstate]
--   One statement; $1..$n are params[1..n] (n defaults to #params; give it
--   when a parameter is nil). Parameters are sent as text: strings as they
--   are, nil and json.null as NULL, booleans as true/false, numbers as
--   sluice.json writes them (nan, inf, -inf as NaN, Infinity, -Infinity),
--   int64/uint64 cdata as their digits, json.numeral as its text, tables as
--   JSON (sluice.json.encode: for json/jsonb parameters).
--   res = { rows = { {column = value, ...}, ... }, fields = { names in
--   order }, types = { type oids }, command = "INSERT 0 3", count = 3 }.
--   Values are exact: bool -> boolean; int2/int4/oid -> number; int8 ->
--   number within +-(2^53-1), int64_t cdata beyond (as sluice.json and the
--   store give integers); float4/float8 -> number (NaN, +-inf too);
--   numeric -> json.numeral (its text exactly: "0.10" stays "0.10"; "NaN"
--   and the infinities as strings); everything else (text, json/jsonb,
--   timestamps, ...) -> the server's text. SQL NULL -> nil (absent).
-- conn:copy(sql, rows, ncols [, {timeout=}]) -> count | nil, err, kind [, sqlstate]
--   sql is a COPY ... FROM STDIN; rows a list of arrays of ncols values
--   (formatted as query's parameters; nil is NULL), or one string already
--   in COPY's text format. count: the rows the server took. sql may also
--   be several statements around one COPY FROM STDIN ("COPY tmp FROM
--   STDIN; INSERT INTO t SELECT * FROM tmp"): sent by the simple query
--   protocol, they run as one implicit transaction (all or nothing) in one
--   round trip besides the data's, and the result is the last statement's
--   as query gives it (a res table; count when the COPY is last).
-- Failure kinds: "server" (the server refused the statement; sqlstate is
--   the SQLSTATE: pg.data_error(sqlstate) is true for classes 22 and 23,
--   data and constraint errors; the connection is still usable),
--   "timeout" (the statement was cancelled and the connection closed),
--   "closed" (the connection was lost or closed: err says why; reconnecting
--   is the caller's: pg.connect again), "busy" (another task's operation is
--   in flight on this connection: one at a time).
-- conn:status() -> "connecting" | "idle" | "busy" | "closed", reason (why it
--   closed), server_version (150018), backend pid.
-- conn:close() is idempotent (and done by __gc); a task waiting on the
-- connection gets nil, "connection closed: closed", "closed".
-- pg.quote_ident(name) -> "name" (double quotes doubled), pg.literal(v) ->
-- v as query formats it (nil for NULL), pg.copy_text(rows, ncols) -> the
-- COPY text of rows.
local native = require "sluice._pg"
local json = require "sluice.json"
local options = require "sluice.options"
local ffi = require "ffi"

local type, tonumber, error, setmetatable = type, tonumber, error, setmetatable
local concat, huge = table.concat, math.huge
local istype = ffi.istype
local int64_t, uint64_t = ffi.typeof("int64_t"), ffi.typeof("uint64_t")
local null, numeral, numeral_text, int64_text = json.null, json.numeral, json.numeral_text, json.int64_text
local copy_escape = native.copy_escape

local _M = {}
local Conn = {}
Conn.__index = Conn

local OID_INT8, OID_NUMERIC = 20, 1700
local TWO53 = 2 ^ 53

local CONNECT = {
  url = { type = "string", required = true },
  connect_timeout = { type = "number", gt = 0 },
  timeout = { type = "number", gt = 0 },
}
local CALL = { timeout = { type = "number", gt = 0 } }

--- literal(v) -> the text of a parameter, or nil for NULL.
local function literal(v)
  local t = type(v)
  if t == "string" then return v end
  if v == nil or v == null then return nil end
  if t == "boolean" then return v and "true" or "false" end
  if t == "number" then
    if v ~= v then return "NaN" end
    if v == huge then return "Infinity" end
    if v == -huge then return "-Infinity" end
    return (json.number(v))
  end
  if t == "cdata" and (istype(int64_t, v) or istype(uint64_t, v)) then return int64_text(v) end
  local n = numeral_text(v)
  if n then return n end
  if t == "table" then
    local s, err = json.encode(v)
    if not s then error("sluice.pg: parameter: " .. err, 3) end
    return s
  end
  error("sluice.pg: cannot send a " .. t .. " as a parameter", 3)
end
_M.literal = literal

-- The digits of an int8 as a number within +-(2^53-1), else int64_t
-- (tonumber rounds 2^53+1 to 2^53: the bound is strict).
local function int8_value(s)
  local n = tonumber(s)
  if n and n > -TWO53 and n < TWO53 then return n end
  local neg, v = s:sub(1, 1) == "-", 0LL
  for i = neg and 2 or 1, #s do
    local d = s:byte(i) - 48
    v = neg and (v * 10 - d) or (v * 10 + d)
  end
  return v
end

local function numeric_value(s)
  if s == "NaN" or s == "Infinity" or s == "-Infinity" then return s end
  return numeral(s)
end

-- Exact values for the columns the binding leaves as text.
local function convert(res)
  local types, fields, rows = res.types, res.fields, res.rows
  for j = 1, #types do
    local conv = types[j] == OID_INT8 and int8_value or types[j] == OID_NUMERIC and numeric_value
    if conv then
      local name = fields[j]
      for i = 1, #rows do
        local v = rows[i][name]
        if v ~= nil then rows[i][name] = conv(v) end
      end
    end
  end
  return res
end

function _M.connect(opts)
  options.check("sluice.pg.connect", opts, CONNECT)
  local h, err, kind = native.connect(opts.url, opts.connect_timeout or 5)
  if not h then return nil, err, kind end
  return setmetatable({ h = h, timeout = opts.timeout or 30 }, Conn)
end

function Conn:query(sql, params, n, opts)
  if type(sql) ~= "string" then error("sluice.pg: query: sql must be a string", 2) end
  if type(n) == "table" then n, opts = nil, n end
  if params ~= nil and type(params) ~= "table" then error("sluice.pg: query: params must be a table", 2) end
  options.check("sluice.pg query", opts, CALL)
  params = params or {}
  n = n or #params
  local texts = {}
  for i = 1, n do
    local s = literal(params[i])
    texts[i] = s == nil and false or s
  end
  local res, err, kind, state = self.h:query(sql, texts, n, opts and opts.timeout or self.timeout)
  if not res then return nil, err, kind, state end
  return convert(res)
end

--- copy_text(rows, ncols) -> COPY's text format of rows
local function copy_text(rows, ncols)
  local lines, fields = {}, {}
  for i = 1, #rows do
    local r = rows[i]
    for j = 1, ncols do
      local s = literal(r[j])
      fields[j] = s == nil and "\\N" or copy_escape(s)
    end
    lines[i] = concat(fields, "\t", 1, ncols)
  end
  lines[#lines + 1] = ""
  return concat(lines, "\n")
end
_M.copy_text = copy_text

function Conn:copy(sql, rows, ncols, opts)
  if type(sql) ~= "string" then error("sluice.pg: copy: sql must be a string", 2) end
  local data = rows
  if type(rows) == "table" then
    if type(ncols) ~= "number" or ncols < 1 then error("sluice.pg: copy: ncols must be a positive number", 2) end
    data = copy_text(rows, ncols)
  elseif type(rows) ~= "string" then
    error("sluice.pg: copy: rows must be a table or a string", 2)
  else
    if type(ncols) == "table" then opts = ncols end
  end
  options.check("sluice.pg copy", opts, CALL)
  return self.h:copy(sql, data, opts and opts.timeout or self.timeout)
end

function Conn:status() return self.h:status() end

function Conn:close() self.h:close() end

function _M.quote_ident(name)
  if type(name) ~= "string" then error("sluice.pg: quote_ident: string expected", 2) end
  return native.quote_ident(name)
end

--- data_error(sqlstate) -> true for classes 22 (data exception) and 23
-- (integrity constraint violation): the data was refused, not the link.
function _M.data_error(sqlstate)
  return type(sqlstate) == "string" and (sqlstate:sub(1, 2) == "22" or sqlstate:sub(1, 2) == "23")
end

_M.cancels_sent = native.cancels_sent

return _M
