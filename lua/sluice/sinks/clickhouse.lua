--- sluice.sinks.clickhouse: the ClickHouse sink of the outbox (kind "clickhouse").
--
--   sinks = { clickhouse = { url = "http://127.0.0.1:8123", database = "market",
--                            user = "sluice", password = env.CH_PASSWORD } }
--
-- Loading this module registers the kind with sluice.outbox (which loads
-- it by itself the first time a sink of kind "clickhouse" is configured).
-- Everything goes through ClickHouse's HTTP interface with sluice.http
-- (non-blocking). new(name, settings, ctx) -> sink; settings (besides the
-- outbox's own):
--   url              the HTTP interface, "http[s]://host:port" (required);
--                    user:password@ in it is taken out of the URL and sent
--                    as the user and password below
--   database         the tables' database (default "default")
--   create_database  true: CREATE DATABASE IF NOT EXISTS before the first
--                    table (default false: the database must exist)
--   user, password   sent as X-ClickHouse-User / X-ClickHouse-Key headers
--                    (never in a URL, an error or a log line)
--   decimal          how decimal columns are stored: "String" (default: the
--                    exact text as collected, "1.50" stays "1.50", any scale
--                    and length) or "Decimal(P, S)" (P <= 38 before 21.6,
--                    76 after): numeric, but a value with more than S
--                    fractional digits or P - S integral ones is refused by
--                    the server (the batch is dead-lettered), and the text
--                    reads back with S decimals ("1.50" -> 1.50000000)
--   version_column   the ReplacingMergeTree version column (default
--                    "_version")
--   compress         true: batches are sent deflate-compressed
--                    (Content-Encoding: deflate, zlib through the FFI);
--                    default false: on a fast network the compression costs
--                    more than it saves (tests/bench/sink_clickhouse.lua)
--   connect_timeout  seconds (default 5); timeout seconds per request (30)
--
-- sink:ensure(table, def) asks the server's version once (SELECT version())
-- and creates the table from the store definition (TYPES below; the key
-- columns never Nullable, the others Nullable unless required):
--   ENGINE = ReplacingMergeTree(_version) ORDER BY (key...)
-- (a syntax 18.16, Debian 12's, accepts as today's servers do); it adds the
-- columns the definition gained since (ALTER TABLE ADD COLUMN) and refuses
-- (nil, err) a column the server has with another type. uint256 columns are
-- UInt256 from ClickHouse 21.6 (big integers out of experimental), a String
-- of the digits before. sink:stats().types shows what each store type
-- became on this server.
-- sink:write(table, rows, def [, meta]) sends the batch as one INSERT
-- (format RowBinary, the default: the values as the server holds them; or
-- JSONEachRow: exact numbers, int64 cdata as digits, reals as the shortest
-- text that reads back, inf as inf, uint256 and String decimals as JSON
-- strings), json columns as their exact JSON text (sluice.json's bytes).
-- The version of each row: with the outbox's meta (meta.at[i], the time
-- row i was queued, in seconds), that time in microseconds, so that the
-- newest collected value of a key wins at merges and under FINAL whichever
-- instance ships it and however late (a fleet's backlog, forwarded after
-- an outage, never overwrites what another instance collected since; a
-- batch sent again carries the same versions). Without meta (or a row
-- without its at), every row of the batch gets the same version, above
-- every version this sink gave before and above the table's max(_version)
-- read by ensure: newer writes of a key win, also across restarts (the
-- write's time in microseconds, or the last one + 1 when the clock is
-- behind it).
-- The batch is refused as data -> nil, err, "rejected" when the server
-- answers with a parsing or type error code (DATA_ERRORS; ClickHouse
-- answers 500 to those too); anything else (no connection, a timeout, 5xx
-- with another code, authentication) -> nil, err, kind: retried.
-- sink:write_batch(table, batch, def [, meta]) the same for the outbox's
-- batch (sluice._outbox.batch): RowBinary written in C from the queued text.
-- sink:query(sql) -> {fields, rows} | nil, err, kind (for `sluice sql`;
-- unqualified table names are the database's).
-- sink:stats() -> {batches, rows, bytes, server_version, types, decimal}.
-- Misuse raises; operational failure returns nil, err, kind.
local sluice = require "sluice"
local http = require "sluice.http"
local json = require "sluice.json"
local options = require "sluice.options"
local ffi = require "ffi"

local type, pairs, ipairs, tostring, tonumber, error, setmetatable =
  type, pairs, ipairs, tostring, tonumber, error, setmetatable
local sort, concat, floor, format = table.sort, table.concat, math.floor, string.format
local number, int64_text, numeral_text, encode = json.number, json.int64_text, json.numeral_text, json.encode
local huge = math.huge
local encode_value = require("sluice.outbox.codec").encode_value

local _M = {}
local Sink = {}
Sink.__index = Sink

-- ClickHouse error codes that mean "this data": the batch is refused, not
-- the server down. 6 CANNOT_PARSE_TEXT, 25/26 escape sequence/quoted
-- string, 27 CANNOT_PARSE_INPUT_ASSERTION_FAILED, 32/33 the row ended too
-- soon, 38/41 date/datetime, 53 TYPE_MISMATCH, 69 ARGUMENT_OUT_OF_BOUND
-- (a Decimal too big or too precise), 70 CANNOT_CONVERT_TYPE, 72
-- CANNOT_PARSE_NUMBER, 117 INCORRECT_DATA (an unknown field), 131
-- TOO_LARGE_STRING_SIZE, 349 CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN, 407
-- DECIMAL_OVERFLOW, 469 VIOLATED_CONSTRAINT (CHECK constraints, 19.14+).
local DATA_ERRORS = {
  [6] = true, [25] = true, [26] = true, [27] = true, [32] = true, [33] = true, [38] = true,
  [41] = true, [53] = true, [69] = true, [70] = true, [72] = true, [117] = true, [131] = true,
  [349] = true, [407] = true, [469] = true,
}
_M.DATA_ERRORS = DATA_ERRORS

local SETTINGS = {
  url = { type = "string", required = true, check = function(u) return u:find("^https?://") ~= nil end,
    what = "an http:// or https:// URL" },
  database = { type = "string", check = function(s) return s ~= "" end, what = "a database name" },
  create_database = "boolean",
  user = "string", password = "string",
  decimal = { type = "string", what = '"String" or "Decimal(P, S)"', check = function(s)
    if s == "String" then return true end
    local p, sc = s:match("^Decimal%((%d+),%s*(%d+)%)$")
    return p ~= nil and tonumber(p) >= 1 and tonumber(p) <= 76 and tonumber(sc) <= tonumber(p)
  end },
  version_column = { type = "string", check = function(s) return s:find("^[%a_][%w_]*$") ~= nil end,
    what = "an identifier" },
  compress = "boolean",
  format = { one_of = { "RowBinary", "JSONEachRow" } },
  connect_timeout = { type = "number", gt = 0 },
  timeout = { type = "number", gt = 0 },
}

--- quote(identifier) -> `identifier` (backquotes and backslashes escaped).
local function quote(s)
  return "`" .. s:gsub("[`\\]", "\\%0") .. "`"
end
_M.quote = quote

--- literal(s) -> 's' (quotes and backslashes escaped).
local function literal(s)
  return "'" .. s:gsub("['\\]", "\\%0") .. "'"
end
_M.literal = literal

-- "18.16.1" -> 18016 (major * 1000 + minor)
local function version_number(v)
  local a, b = tostring(v):match("^(%d+)%.(%d+)")
  if not a then return 0 end
  return tonumber(a) * 1000 + tonumber(b)
end

--- types_for(server_version, decimal) -> store type -> ClickHouse type, for
-- that server: UInt256 from 21.6, a lossless String before.
function _M.types_for(server_version, decimal)
  local big = version_number(server_version) >= 21006
  return {
    integer = "Int64", real = "Float64", text = "String", blob = "String", json = "String",
    boolean = "UInt8", uint256 = big and "UInt256" or "String", decimal = decimal or "String",
  }
end

-- Zlib through the FFI (the process links it through libcurl): compress2.
local zlib
local function deflate(s) -- (exported for the benchmark)
  if not zlib then
    ffi.cdef [[
      unsigned long compressBound(unsigned long sourceLen);
      int compress2(uint8_t *dest, unsigned long *destLen, const uint8_t *source,
                    unsigned long sourceLen, int level);
    ]]
    zlib = ffi.load("z")
  end
  local bound = zlib.compressBound(#s)
  local out = ffi.new("uint8_t[?]", bound)
  local len = ffi.new("unsigned long[1]", bound)
  if zlib.compress2(out, len, s, #s, 1) ~= 0 then return nil end
  return ffi.string(out, len[0])
end
_M.deflate = deflate

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

function _M.new(name, settings, ctx)
  options.check("sinks." .. tostring(name), settings, SETTINGS, 2)
  local url, user, password = settings.url, settings.user, settings.password
  local scheme, ui, rest = url:match("^(https?://)([^@/]*)@(.*)$")
  if scheme then -- credentials out of the URL: into headers
    url = scheme .. rest
    local u, p = ui:match("^([^:]*):(.*)$")
    user = user or unescape(u or ui)
    password = password or (p and unescape(p))
  end
  url = url:gsub("/+$", "")
  local headers = {}
  if user then headers["X-ClickHouse-User"] = user end
  if password then headers["X-ClickHouse-Key"] = password end
  return setmetatable({
    name = name, url = url, headers = headers, database = settings.database or "default",
    create_database = settings.create_database == true, decimal = settings.decimal or "String",
    version_column = settings.version_column or "_version", compress = settings.compress == true,
    format = settings.format or "RowBinary",
    connect_timeout = settings.connect_timeout or 5, timeout = settings.timeout or 30,
    log = ctx and ctx.log, server_version = nil, types = nil, db_made = false,
    plans = {}, version = ffi.new("uint64_t", 0), batches = 0, rows = 0, bytes = 0,
    batch = 20000, -- the outbox's default for this kind: a part per INSERT, so few large ones
  }, Sink)
end

-- Trims a server's error text to its first line(s), at most 500 bytes.
local function server_text(body)
  body = tostring(body or ""):gsub("%s+$", "")
  if #body > 500 then body = body:sub(1, 500) .. "..." end
  return body
end

-- One request: sql in the URL (with a body) or as the body. -> body | nil,
-- err, kind ("rejected" for DATA_ERRORS, "server" for another error code).
function Sink:request(sql, body, encoding, database)
  local url, opts = self.url .. "/", {
    timeout = self.timeout, connect_timeout = self.connect_timeout, redirects = false, headers = self.headers,
  }
  if body then
    url = url .. "?" .. http.encode_query { query = sql }
    opts.body = body
    if encoding then
      local h = { ["Content-Encoding"] = encoding }
      for k, v in pairs(self.headers) do h[k] = v end
      opts.headers = h
    end
  else
    opts.body = sql
    if database then url = url .. "?" .. http.encode_query { database = database } end
  end
  local res, err, kind = http.post(url, opts)
  if not res then return nil, "clickhouse: " .. tostring(err), kind end
  if res.status == 200 then return res.body end
  local code = tonumber(tostring(res.body):match("^Code: (%d+)"))
  local text = ("clickhouse: HTTP %d: %s"):format(res.status, server_text(res.body))
  if code and DATA_ERRORS[code] then return nil, text, "rejected" end
  local auth = res.status == 401 or res.status == 403 or code == 193 or code == 516
  return nil, text, auth and "auth" or "server"
end

-- The rows of a SELECT ... FORMAT JSONEachRow -> list of tables.
local function each_row(body)
  local rows = {}
  for line in body:gmatch("[^\n]+") do
    local r, err = json.decode(line)
    if not r then return nil, "clickhouse: bad JSONEachRow output: " .. err end
    rows[#rows + 1] = r
  end
  return rows
end

-- An integer column's value (JSONCompact quotes 64-bit ones): a number
-- within +-(2^53-1), int64_t or uint64_t cdata beyond (as sluice.pg and
-- the store give them); anything else as it came.
local function integer_value(v)
  if type(v) ~= "string" then return v end
  local neg, digits = v:match("^(%-?)(%d+)$")
  if not digits then return v end
  local n = tonumber(v)
  if n > -2 ^ 53 and n < 2 ^ 53 then return n end
  local x = neg == "-" and ffi.new("int64_t", 0) or ffi.new("uint64_t", 0)
  for k = 1, #digits do
    local d = digits:byte(k) - 48
    if neg == "-" then x = x * 10 - d else x = x * 10 + d end
  end
  return x
end

--- query(sql) -> {fields = {...}, rows = {...}} | nil, err, kind: one
-- statement (`sluice sql --sink`, the REPL's sql()). A SELECT's rows come
-- back exactly (FORMAT JSONCompact; integers as numbers, int64_t/uint64_t
-- cdata beyond 2^53); fields in select order.
function Sink:query(sql)
  local select_like = sql:match("^%s*[Ss][Ee][Ll][Ee][Cc][Tt]%s") or sql:match("^%s*[Ww][Ii][Tt][Hh]%s")
    or sql:match("^%s*[Ss][Hh][Oo][Ww]%s") or sql:match("^%s*[Dd][Ee][Ss][Cc]")
  if not select_like then
    local body, err, kind = self:request(sql, nil, nil, self.database)
    if not body then return nil, err, kind end
    return { fields = {}, rows = {}, command = "OK" }
  end
  local body, err, kind = self:request(sql:gsub("[%s;]+$", "") .. " FORMAT JSONCompact", nil, nil, self.database)
  if not body then return nil, err, kind end
  local doc, derr = json.decode(body)
  if not doc then return nil, "clickhouse: bad JSONCompact output: " .. derr end
  local fields, rows, conv = {}, {}, {}
  for i, m in ipairs(doc.meta or {}) do
    fields[i] = m.name
    local t = tostring(m.type):gsub("^Nullable%((.*)%)$", "%1")
    conv[i] = (t:find("^U?Int%d+$") and integer_value) or nil
  end
  for i, r in ipairs(doc.data or {}) do
    local row = {}
    for j, f in ipairs(fields) do
      local v = r[j]
      if v ~= json.null then
        if conv[j] then v = conv[j](v) end
        row[f] = v
      end
    end
    rows[i] = row
  end
  return { fields = fields, rows = rows }
end

-- The server's version and the type map, asked once.
function Sink:server()
  if self.types then return true end
  local body, err, kind = self:request("SELECT version()")
  if not body then return nil, err, kind end
  self.server_version = body:match("%S+")
  local dp = self.decimal:match("^Decimal%((%d+)")
  local limit = version_number(self.server_version) >= 21006 and 76 or 38
  if dp and tonumber(dp) > limit then
    return nil, ("clickhouse: %s: decimal = %q exceeds this server's %d digits"):format(
      self.server_version, self.decimal, limit)
  end
  self.types = _M.types_for(self.server_version, self.decimal)
  return true
end

function Sink:qualified(tname)
  return quote(self.database) .. "." .. quote(tname)
end

-- The columns of def (sorted), each's ClickHouse type, the key.
function Sink:columns_of(def)
  local key = def.key or {}
  if type(key) == "string" then key = { key } end
  local plain = {}
  for _, k in ipairs(key) do plain[k] = true end
  for _, r in ipairs(def.required or {}) do plain[r] = true end
  local names, types, base = {}, {}, {}
  for col in pairs(def.columns or {}) do names[#names + 1] = col end
  sort(names)
  for _, col in ipairs(names) do
    local t = def.columns[col]
    if type(t) == "table" then t = t.type end
    local ct = self.types[t]
    if not ct then
      error("sluice.sinks.clickhouse: column " .. col .. ": no ClickHouse type for '" .. tostring(t) .. "'", 3)
    end
    base[col] = t
    types[col] = plain[col] and ct or ("Nullable(" .. ct .. ")")
  end
  return names, types, key, base
end

-- ClickHouse writes a type back without the space after a comma.
local function same_type(a, b)
  return a:gsub("%s", "") == b:gsub("%s", "")
end

function Sink:ensure(tname, def)
  local ok, err, kind = self:server()
  if not ok then return nil, err, kind end
  local names, types, key = self:columns_of(def)
  if #names == 0 then return nil, "clickhouse: table " .. tname .. " has no columns" end
  if #key == 0 then return nil, "clickhouse: table " .. tname .. " has no key (ReplacingMergeTree needs one)" end
  local vc = self.version_column
  if types[vc] then return nil, "clickhouse: table " .. tname .. " has a column named " .. vc .. " (version_column)" end
  if self.create_database and not self.db_made then
    ok, err, kind = self:request("CREATE DATABASE IF NOT EXISTS " .. quote(self.database))
    if not ok then return nil, err, kind end
    self.db_made = true
  end
  local cols, qkey = {}, {}
  for i, col in ipairs(names) do cols[i] = quote(col) .. " " .. types[col] end
  cols[#cols + 1] = quote(vc) .. " UInt64"
  for i, col in ipairs(key) do qkey[i] = quote(col) end
  ok, err, kind = self:request("CREATE TABLE IF NOT EXISTS " .. self:qualified(tname) .. " (" .. concat(cols, ", ")
    .. ") ENGINE = ReplacingMergeTree(" .. quote(vc) .. ") ORDER BY (" .. concat(qkey, ", ") .. ")")
  if not ok then return nil, err, kind end
  local body
  body, err, kind = self:request("SELECT name, type FROM system.columns WHERE database = " .. literal(self.database)
    .. " AND table = " .. literal(tname) .. " FORMAT JSONEachRow")
  if not body then return nil, err, kind end
  local have = {}
  local rows, derr = each_row(body)
  if not rows then return nil, derr end
  for _, r in ipairs(rows) do have[r.name] = r.type end
  if have[vc] ~= "UInt64" then
    return nil, ("clickhouse: %s.%s is %s on the sink, UInt64 expected"):format(tname, vc, tostring(have[vc]))
  end
  for _, col in ipairs(names) do
    if not have[col] then
      ok, err, kind = self:request("ALTER TABLE " .. self:qualified(tname) .. " ADD COLUMN "
        .. quote(col) .. " " .. types[col])
      -- 44 ILLEGAL_COLUMN: another instance added it meanwhile (18.16 has no IF NOT EXISTS)
      if not ok and not tostring(err):find("Code: 44,", 1, true) then return nil, err, kind end
    elseif not same_type(have[col], types[col]) then
      return nil, ("clickhouse: %s.%s is %s on the sink, %s expected"):format(tname, col, have[col], types[col])
    end
  end
  body, err, kind = self:request("SELECT toString(max(" .. quote(vc) .. ")) FROM " .. self:qualified(tname))
  if not body then return nil, err, kind end
  local top = ffi.new("uint64_t", 0)
  for c in (body:match("%d+") or ""):gmatch("%d") do top = top * 10 + (c:byte() - 48) end
  if top > self.version then self.version = top end
  self.plans[tname] = nil
  return true
end

-- The value encoders, per store type: v (not nil) -> JSON text | nil, err.
local function text_of(v)
  if type(v) == "string" then return v end
  return numeral_text(v) or int64_text(v) or (type(v) == "number" and number(v)) or nil
end

local ENCODE = {
  integer = function(v) return number(v) end,
  real = function(v)
    if v == huge then return "inf" elseif v == -huge then return "-inf" end
    return number(v)
  end,
  text = function(v) return encode(tostring(v)) end,
  blob = function(v) return encode(v) end,
  json = function(v)
    local s, err = encode(v)
    if not s then return nil, err end
    return encode(s)
  end,
  boolean = function(v) return (v == true or v == 1) and "1" or "0" end,
  -- a String of the digits, or UInt256 (read from a JSON string too)
  uint256 = function(v)
    local s = text_of(v)
    if not s then return nil, "uint256 expected, got " .. type(v) end
    return encode(s)
  end,
}
local function decimal_string(v)
  local s = text_of(v)
  if not s then return nil, "decimal expected, got " .. type(v) end
  return encode(s)
end
local function decimal_number(v)
  local s = text_of(v)
  if not s then return nil, "decimal expected, got " .. type(v) end
  return s
end

-- RowBinary: the values as the server holds them, little-endian, into one
-- growing FFI buffer (exact Float64 on every server: 18.16 parses floats
-- in text formats with an error of an ulp or so, 2.857142857142857 reads
-- back as 2.8571428571428568).
local u8p, i64p, u64p, f64p, i32p =
  ffi.typeof("uint8_t *"), ffi.typeof("int64_t *"), ffi.typeof("uint64_t *"), ffi.typeof("double *"),
  ffi.typeof("int32_t *")
local Buf = {}
Buf.__index = Buf

local function buffer(size)
  local b = setmetatable({ size = size, n = 0 }, Buf)
  b.mem = ffi.new("uint8_t[?]", size)
  return b
end

function Buf:room(k)
  local need = self.n + k
  if need <= self.size then return end
  local size = self.size
  while size < need do size = size * 2 end
  local mem = ffi.new("uint8_t[?]", size)
  ffi.copy(mem, self.mem, self.n)
  self.mem, self.size = mem, size
end

function Buf:byte(v)
  self:room(1)
  self.mem[self.n] = v
  self.n = self.n + 1
end

function Buf:int64(v)
  self:room(8)
  ffi.cast(i64p, ffi.cast(u8p, self.mem) + self.n)[0] = v
  self.n = self.n + 8
end

function Buf:uint64(v)
  self:room(8)
  ffi.cast(u64p, ffi.cast(u8p, self.mem) + self.n)[0] = v
  self.n = self.n + 8
end

function Buf:float64(v)
  self:room(8)
  ffi.cast(f64p, ffi.cast(u8p, self.mem) + self.n)[0] = v
  self.n = self.n + 8
end

function Buf:int32(v)
  self:room(4)
  ffi.cast(i32p, ffi.cast(u8p, self.mem) + self.n)[0] = v
  self.n = self.n + 4
end

function Buf:string(v)
  local len = #v
  self:room(len + 10)
  local n, mem = self.n, self.mem
  local l = len
  while l >= 128 do -- LEB128 length
    mem[n] = l % 128 + 128
    n = n + 1
    l = floor(l / 128)
  end
  mem[n] = l
  ffi.copy(mem + n + 1, v, len)
  self.n = n + 1 + len
end

function Buf:bytes(t, k) -- t[1..k]: byte values
  self:room(k)
  for i = 1, k do self.mem[self.n + i - 1] = t[i] end
  self.n = self.n + k
end

function Buf:text()
  return ffi.string(self.mem, self.n)
end

--- le_bytes(digits, negative, nbytes) -> a list of nbytes byte values (the
-- two's complement little-endian integer), or nil when it does not fit.
local function le_bytes(digits, negative, nbytes)
  local limbs, nl = {}, nbytes / 4 -- base 2^32, least significant first
  for i = 1, nl do limbs[i] = 0 end
  for c = 1, #digits do
    local carry = digits:byte(c) - 48
    for i = 1, nl do
      local x = limbs[i] * 10 + carry
      carry = floor(x / 4294967296)
      limbs[i] = x - carry * 4294967296
    end
    if carry ~= 0 then return nil end
  end
  local out = {}
  for i = 1, nl do
    local x = limbs[i]
    for j = 0, 3 do
      out[(i - 1) * 4 + j + 1] = x % 256
      x = floor(x / 256)
    end
  end
  if negative then -- invert and add one
    local carry = 1
    for i = 1, nbytes do
      local x = 255 - out[i] + carry
      carry = x >= 256 and 1 or 0
      out[i] = x % 256
    end
  end
  -- (a Decimal's digits are bounded by its precision, which keeps them
  -- inside the signed range: 10^38 < 2^127, 10^76 < 2^255)
  return out
end
_M.le_bytes = le_bytes

-- A decimal's text as a Decimal(P, S)'s scaled integer digits: nil, why
-- when it does not fit losslessly (more than S decimals that are not
-- zeros, more than P - S integral digits).
local function scaled(s, p, sc)
  local neg, int, frac = s:match("^(%-?)(%d+)%.?(%d*)$")
  if not neg then return nil, "'" .. s .. "' is not a plain decimal" end
  int = int:gsub("^0+", "")
  frac = frac:gsub("0+$", "")
  if #frac > sc then return nil, ("%s has more than %d decimals"):format(s, sc) end
  if #int > p - sc then return nil, ("%s has more than %d integral digits"):format(s, p - sc) end
  local digits = (int .. frac .. ("0"):rep(sc - #frac)):gsub("^0+", "")
  return digits, neg == "-" and digits ~= ""
end

-- RowBinary writers per store type: (buf, v) with v not nil -> true | nil, err.
local function uint256_writer(v_text)
  return function(b, v)
    local s = v_text(v)
    if not s or not s:find("^%d+$") then return nil, "uint256 expected" end
    local t = le_bytes(s, false, 32)
    if not t then return nil, s .. " is beyond 2^256-1" end
    b:bytes(t, 32)
    return true
  end
end

local WRITE = {
  integer = function(b, v)
    if type(v) == "number" and (v ~= floor(v) or v ~= v) then return nil, "integer expected" end
    b:int64(v)
    return true
  end,
  real = function(b, v) b:float64(v) return true end,
  text = function(b, v) b:string(tostring(v)) return true end,
  blob = function(b, v) b:string(v) return true end,
  json = function(b, v) -- sluice.json.encode's bytes, written faster
    local s, err = encode_value(v)
    if not s then return nil, err end
    b:string(s)
    return true
  end,
  boolean = function(b, v) b:byte((v == true or v == 1) and 1 or 0) return true end,
  uint256_string = function(b, v)
    local s = text_of(v)
    if not s then return nil, "uint256 expected, got " .. type(v) end
    b:string(s)
    return true
  end,
  decimal_string = function(b, v)
    local s = text_of(v)
    if not s then return nil, "decimal expected, got " .. type(v) end
    b:string(s)
    return true
  end,
}
WRITE.uint256 = uint256_writer(text_of)

-- Decimal(P, S) writer: the scaled integer in 4, 8, 16 or 32 bytes.
local function decimal_writer(p, sc)
  local nbytes = p <= 9 and 4 or p <= 18 and 8 or p <= 38 and 16 or 32
  local what = ("Decimal(%d, %d)"):format(p, sc)
  return function(b, v)
    local s = text_of(v)
    if not s then return nil, "decimal expected, got " .. type(v) end
    local digits, neg = scaled(s, p, sc)
    if not digits then return nil, neg .. " (" .. what .. ")" end
    local t = le_bytes(digits, neg, nbytes)
    if not t then return nil, s .. " does not fit " .. what end
    b:bytes(t, nbytes)
    return true
  end
end

-- Store types -> sluice._outbox's RowBinary column types (uint256 and
-- decimal depend on the server and settings: Sink:plan).
local RB_TYPES = {
  integer = "int64", real = "float64", text = "string", blob = "string", json = "json", boolean = "uint8",
}

-- The INSERT of a table: its statement and the encoders, per definition.
function Sink:plan(tname, def)
  local p = self.plans[tname]
  if p and p.def == def then return p end
  local names, types, _, base = self:columns_of(def)
  local qcols, heads, encs, writers, nullable, rb = {}, {}, {}, {}, {}, {}
  local dp, ds = self.decimal:match("^Decimal%((%d+),%s*(%d+)%)$")
  local dwriter = dp and decimal_writer(tonumber(dp), tonumber(ds))
  for i, col in ipairs(names) do
    qcols[i] = quote(col)
    heads[i] = encode(col) .. ":"
    local t = base[col]
    encs[i] = ENCODE[t] or (self.decimal == "String" and decimal_string or decimal_number)
    if t == "decimal" then
      writers[i] = dwriter or WRITE.decimal_string
    elseif t == "uint256" then
      writers[i] = self.types.uint256 == "UInt256" and WRITE.uint256 or WRITE.uint256_string
    else
      writers[i] = WRITE[t]
    end
    nullable[i] = types[col]:find("^Nullable") ~= nil
    -- the same column for sluice._outbox's RowBinary writer (write_batch)
    local rt = RB_TYPES[t]
    if t == "uint256" then
      rt = self.types.uint256 == "UInt256" and "uint256" or "string"
    elseif t == "decimal" then
      rt = dp and "decimal" or "string"
    end
    rb[i] = { name = col, type = rt, nullable = nullable[i], precision = tonumber(dp), scale = tonumber(ds) }
  end
  qcols[#qcols + 1] = quote(self.version_column)
  p = {
    def = def, names = names, heads = heads, encs = encs, writers = writers, nullable = nullable, n = #names, rb = rb,
    vhead = encode(self.version_column) .. ":",
    sql = "INSERT INTO " .. self:qualified(tname) .. " (" .. concat(qcols, ", ") .. ") FORMAT " .. self.format,
  }
  self.plans[tname] = p
  return p
end

--- next_version() -> a version (uint64 cdata) above every one given before.
function Sink:next_version()
  local now = ffi.new("uint64_t", floor(sluice.time() * 1e6))
  local v = now > self.version and now or self.version + 1
  self.version = v
  return v
end

-- The rows' versions from the outbox's meta: at[i] (seconds) in whole
-- microseconds (below 2^53 for any date before the year 2255: exact as a
-- number), nil for a row without one; nil without meta.at. The sink's own
-- version counter stays above them (next_version without meta).
function Sink:versions_of(meta, n)
  local at = type(meta) == "table" and meta.at
  if type(at) ~= "table" then return nil end
  local versions, top = {}, 0
  for i = 1, n do
    local t = at[i]
    if type(t) == "number" and t > 0 and t < 9e9 then
      local v = floor(t * 1e6)
      versions[i] = v
      if v > top then top = v end
    end
  end
  if top > self.version then self.version = ffi.new("uint64_t", top) end
  return versions
end

-- The batch as RowBinary, or nil, err (a value that does not fit).
local function rowbinary(p, rows, version, versions)
  local b = buffer(64 * #rows + 64)
  local names, writers, nullable, n = p.names, p.writers, p.nullable, p.n
  for i = 1, #rows do
    local r = rows[i]
    for j = 1, n do
      local v = r[names[j]]
      if v == nil or v == json.null then
        if not nullable[j] then
          return nil, ("row %d column %s: null in a column that is not Nullable"):format(i, names[j])
        end
        b:byte(1)
      else
        if nullable[j] then b:byte(0) end
        local ok, err = writers[j](b, v)
        if not ok then return nil, ("row %d column %s: %s"):format(i, names[j], tostring(err)) end
      end
    end
    b:uint64(versions and versions[i] or version)
  end
  return b:text()
end
_M.rowbinary = rowbinary

-- The batch as JSONEachRow text, or nil, err (a value no encoder takes).
local function body_of(p, rows, version, versions)
  local lines, names, heads, encs, n = {}, p.names, p.heads, p.encs, p.n
  local vfield = p.vhead .. int64_text(version)
  local fields = {}
  for i = 1, #rows do
    local r = rows[i]
    for j = 1, n do
      local v = r[names[j]]
      local s, err
      if v == nil or v == json.null then
        s = "null"
      else
        s, err = encs[j](v)
        if not s then return nil, ("row %d column %s: %s"):format(i, names[j], tostring(err)) end
      end
      fields[j] = heads[j] .. s
    end
    local vi = versions and versions[i]
    fields[n + 1] = vi and p.vhead .. format("%d", vi) or vfield
    lines[i] = "{" .. concat(fields, ",") .. "}"
  end
  lines[#lines + 1] = ""
  return concat(lines, "\n")
end
_M.body_of = body_of

function Sink:write(tname, rows, def, meta)
  if #rows == 0 then return true end
  local ok, err, kind = self:server()
  if not ok then return nil, err, kind end
  local p = self:plan(tname, def)
  local body
  body, err = (self.format == "RowBinary" and rowbinary or body_of)(p, rows, self:next_version(),
    self:versions_of(meta, #rows))
  if not body then return nil, "clickhouse: " .. err, "rejected" end
  return self:send(p, body, #rows)
end

-- Sends a batch's body (compressed when set) -> true | nil, err, kind.
function Sink:send(p, body, n)
  local encoding
  if self.compress then
    local z = deflate(body)
    if z then body, encoding = z, "deflate" end
  end
  local ok, err, kind = self:request(p.sql, body, encoding)
  if not ok then return nil, err, kind end
  self.batches = self.batches + 1
  self.rows = self.rows + n
  self.bytes = self.bytes + #body
  return true
end

-- The outbox's batch (sluice._outbox.batch): in RowBinary its body is
-- written in C from the queued rows' text (the bytes rowbinary writes for
-- their decoded values, the same refusals); JSONEachRow takes the rows
-- decoded.
function Sink:write_batch(tname, batch, def, meta)
  local n = batch:count()
  if n == 0 then return true end
  if self.format ~= "RowBinary" then
    local rows, err = json.decode(batch:json())
    if rows == nil then return nil, "clickhouse: the batch's rows: " .. tostring(err), "rejected" end
    return self:write(tname, rows, def, meta)
  end
  local ok, err, kind = self:server()
  if not ok then return nil, err, kind end
  local p = self:plan(tname, def)
  local body
  body, err = batch:rowbinary(p.rb, tonumber(self:next_version()), self:versions_of(meta, n))
  if not body then return nil, "clickhouse: " .. err, "rejected" end
  return self:send(p, body, n)
end

function Sink:stats()
  return {
    batches = self.batches, rows = self.rows, bytes = self.bytes, server_version = self.server_version,
    types = self.types, decimal = self.decimal,
  }
end

function Sink:close() -- luacheck: ignore 212
  -- nothing to release: sluice.http owns the connections
end

require("sluice.outbox").register_kind("clickhouse", _M.new)

return _M
