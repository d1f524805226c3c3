-- fuzz_store: JSON -> Lua -> store rows (sluice.store upsert) on an
-- in-memory database, with a table holding a column of every type.
--
-- Input: JSON, an array of rows (any value; a row is normally an object).
-- Invariants, with the table emptied before each input:
--   upsert never raises for data and returns four counts that add up to
--   the rows offered; every reject is in sluice_rejects with a non-empty
--   reason; inserted is the number of distinct keys accepted; and what
--   reads back for each key is the last accepted row with that key, as
--   the type rules coerce it (integers exactly: a Lua number within
--   +-(2^53-1), an int64_t cdata beyond).
local cjson = require "cjson.safe"
local ffi = require "ffi"
local store = require "sluice.store"

local null = cjson.null
local db = assert(store.open(":memory:"))
local COLUMNS = {
  k = "text", t = "text", i = "integer", r = "real", b = "blob", j = "json",
  n = { type = "real", nonfinite = true },
}
assert(db:define({
  name = "fz", columns = COLUMNS, key = { "k" },
  validate = function(row)
    if row.t == "raise" then error("raised on purpose") end
    if row.t == "reject" then return false, "rejected on purpose" end
    if row.t == "reject-silently" then return false end
    return true
  end,
}))
local TYPE = { k = "text", t = "text", i = "integer", r = "real", b = "blob", j = "json", n = "real" }
local ORDER = { "k", "t", "i", "r", "b", "j", "n" }
local SELECT = "SELECT k, t, i, r, b, j, n FROM fz WHERE k = ?"

local function finding(msg, detail)
  error("invariant broken: " .. msg .. (detail ~= nil and (": " .. tostring(detail)) or ""), 0)
end

-- What an accepted value must read back as (nil: NULL).
local function expected(col, v)
  if v == nil or v == null then return nil end
  local t = TYPE[col]
  if t == "text" or t == "blob" then
    if type(v) ~= "string" then finding("accepted a " .. type(v) .. " for " .. t .. " column " .. col) end
    return v
  elseif t == "integer" then
    if type(v) == "boolean" then return v and 1 or 0 end
    if type(v) == "number" then
      -- a double beyond 2^53 may be rounded already: never accepted
      if v ~= math.floor(v) or v <= -2 ^ 53 or v >= 2 ^ 53 then
        finding("accepted a number that is not an exact integer for column i", v)
      end
      return v
    end
    local n = type(v) == "string" and tonumber(v)
    if not n or n ~= math.floor(n) or n < -2 ^ 63 or n > 2 ^ 63 then
      finding("accepted a non-integer for column i", v)
    end
    local sign, digits = v:match("^([-+]?)0*(%d+)$")
    if digits and (#digits > 19 or (#digits == 19
        and digits > (sign == "-" and "9223372036854775808" or "9223372036854775807"))) then
      finding("accepted an integer beyond int64 for column i", v)
    end
    if digits then
      -- plain digits: the int64 they spell, built digit by digit (negative
      -- so that -2^63 fits)
      local acc = ffi.new("int64_t", 0)
      for i = 1, #digits do acc = acc * 10 - (digits:byte(i) - 48) end
      if sign ~= "-" then acc = -acc end
      if acc > -2 ^ 53 and acc < 2 ^ 53 then return tonumber(acc) end
      return acc
    end
    if n > -2 ^ 53 and n < 2 ^ 53 then return n end
    return { near = n } -- an exponent beyond 2^53: an int64_t as near as a double says
  elseif t == "real" then
    local n = type(v) == "string" and tonumber(v) or v
    if type(n) ~= "number" or n ~= n or (col == "r" and n - n ~= 0) then
      finding("accepted a bad real for column " .. col, v)
    end
    return n
  end
  if type(v) == "string" then return v end
  local s, err = store.encode_json(v)
  if not s then finding("accepted a json value that does not encode", err) end
  return s
end

local function same(a, b)
  if type(b) == "table" then
    return ffi.istype("int64_t", a) and tonumber(a) == b.near
  end
  -- exact integers: small ones as numbers, beyond 2^53 as int64_t cdata
  if type(a) ~= type(b) then return false end
  if a == b then return true end
  return type(a) == "number" and type(b) == "number" and a ~= a and b ~= b
end

return function(input)
  local rows = cjson.decode(input)
  if type(rows) ~= "table" then return end
  assert(db:exec("DELETE FROM fz"))
  assert(db:exec("DELETE FROM sluice_rejects"))
  assert(db:reset_quality("fz"))
  local n = #rows
  local ok, ins, upd, unch, rej, accepted = pcall(db.upsert_accepted, db, "fz", rows)
  if not ok then finding("upsert raised", ins) end
  if ins == nil then finding("upsert failed", upd) end
  for _, c in ipairs({ ins, upd, unch, rej }) do
    if type(c) ~= "number" or c < 0 or c ~= math.floor(c) then finding("a count is not a count", c) end
  end
  if ins + upd + unch + rej ~= n then
    finding(string.format("counts %d+%d+%d+%d ~= %d rows", ins, upd, unch, rej, n))
  end
  if #accepted ~= n - rej then finding("accepted rows " .. #accepted .. " ~= " .. (n - rej)) end
  local rejects = db:rejects("fz", n + 1)
  if #rejects ~= rej then finding("sluice_rejects has " .. #rejects .. " rows, " .. rej .. " rejected") end
  for _, r in ipairs(rejects) do
    if type(r.reason) ~= "string" or r.reason == "" then finding("a reject without a reason", r.reason) end
  end
  -- the last accepted row per key wins
  local last, keys = {}, 0
  for _, row in ipairs(accepted) do
    local k = expected("k", row.k)
    if k == nil then finding("accepted a row without its key") end
    if not last[k] then keys = keys + 1 end
    last[k] = row
  end
  if ins ~= keys then finding("inserted " .. ins .. ", distinct keys " .. keys) end
  for k, row in pairs(last) do
    local got = db:query(SELECT, k)
    if not got or #got ~= 1 then finding("key not stored", k) end
    for _, col in ipairs(ORDER) do
      local want = expected(col, row[col])
      if not same(got[1][col], want) then
        finding(string.format("column %s of key %q reads back %s, offered %s", col, k,
          tostring(got[1][col]), tostring(want)))
      end
    end
  end
  local q = db:quality("fz")
  if q.total_records ~= n or q.invalid_records ~= rej or q.inserted_records ~= ins then
    finding("quality report disagrees with the counts")
  end
end
