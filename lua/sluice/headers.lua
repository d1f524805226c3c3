--- sluice.headers: HTTP header tables, case-insensitive by name.
--
--   local headers = require "sluice.headers"
--   local h = headers.new({ ["Content-Type"] = "text/plain" })
--   h["content-type"]          --> "text/plain"
--   h["CONTENT-TYPE"] = "a/b"  -- replaces it, under the name it has
--   for name, value in pairs(h) do ... end  --> "Content-Type", "a/b"
--
-- The one header table of sluice: the HTTP client's res.headers and
-- res.headers_all, the server's req.headers. It owns, per table, the map
-- from lower-case names to the names the entries are kept under (a weak
-- table, so a header table is collected as any other). Nothing yields.
--
-- headers.new([t]) -> h: a new header table holding t's entries (t is
--   copied, not kept). Names are strings; values anything (a string, or
--   a list of them for headers_all). Two names of t that differ only in
--   case are misuse and raise.
-- h[name] reads the entry whatever the case of name; h[name] = v sets it,
--   keeping the name it was first set under (a new entry keeps name as
--   given); h[name] = nil removes it. pairs(h) and next(h) walk the
--   entries under their names. A key that is not a string is not a header
--   name: reading one gives nil, setting one raises.
-- headers.is(v) -> whether v is a header table made here.
local type, pairs, rawget, rawset, setmetatable, getmetatable, tostring, error =
  type, pairs, rawget, rawset, setmetatable, getmetatable, tostring, error

local _M = {}

-- h -> { [lower-case name] = the name the entry is kept under }
local names = setmetatable({}, { __mode = "k" })

local mt = {}

function mt.__index(h, k)
  if type(k) ~= "string" then return nil end
  local name = names[h][k:lower()]
  if name == nil then return nil end
  return rawget(h, name)
end

-- Called only for a name h has no entry under as written.
function mt.__newindex(h, k, v)
  if type(k) ~= "string" then
    error("sluice.headers: a header name must be a string, got " .. type(k), 2)
  end
  local index, lower = names[h], k:lower()
  local name = index[lower]
  if name ~= nil and rawget(h, name) ~= nil then
    rawset(h, name, v)
    if v == nil then index[lower] = nil end
  elseif v ~= nil then
    index[lower] = k
    rawset(h, k, v)
  end
end

function _M.new(t)
  if t ~= nil and type(t) ~= "table" then
    error("sluice.headers.new: bad argument #1 (table expected, got " .. type(t) .. ")", 2)
  end
  local h, index = {}, {}
  for k, v in pairs(t or {}) do
    if type(k) ~= "string" then
      error("sluice.headers.new: a header name must be a string, got " .. type(k), 2)
    end
    local lower = k:lower()
    if index[lower] ~= nil then
      error("sluice.headers.new: '" .. tostring(index[lower]) .. "' and '" .. k
        .. "' are the same header", 2)
    end
    index[lower] = k
    h[k] = v
  end
  names[h] = index
  return setmetatable(h, mt)
end

function _M.is(v)
  return type(v) == "table" and getmetatable(v) == mt
end

return _M
