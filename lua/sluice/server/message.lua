--- sluice.server.message: the HTTP messages of sluice.server -- the request
-- object a handler gets and the reply built from what it returns. Internal
-- to sluice.server (the documentation is in its header); pure Lua over the
-- exchange userdata of sluice._server, it owns no state and never yields.
local header_table = require "sluice.headers"
local json = require "sluice.json"

local _M = {}

local function is_integer(v)
  return type(v) == "number" and v == math.floor(v) and v > -math.huge and v < math.huge
end

-- --- requests ----------------------------------------------------------------
local function unescape(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function decode_query(qs)
  local q, all = {}, {}
  for pair in qs:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=(.*)$")
    if not k then
      k, v = pair, ""
    end
    k, v = unescape(k), unescape(v)
    if k ~= "" then
      q[k] = v
      local list = all[k]
      if list then
        list[#list + 1] = v
      else
        all[k] = { v }
      end
    end
  end
  return q, all
end

local TOKEN = "^[%w!#$%%&'*+%-.^_`|~]+$"

-- Flattens a headers table into { name, value, ... }; returns the list and
-- whether it names a content-type. Raises on a bad name or value.
local function flatten_headers(headers, where)
  local flat, has_type = {}, false
  if headers == nil then
    return flat, false
  end
  if type(headers) ~= "table" then
    error(where .. ": headers must be a table (got " .. type(headers) .. ")", 0)
  end
  local function add(k, v)
    local tv = type(v)
    if tv == "number" or tv == "boolean" then
      v = tostring(v)
    elseif tv ~= "string" then
      error(where .. ": header '" .. k .. "' has a " .. tv .. " value", 0)
    end
    if v:find("[%z\r\n]") then
      error(where .. ": header '" .. k .. "' has a control character in its value", 0)
    end
    flat[#flat + 1] = k
    flat[#flat + 1] = v
  end
  for k, v in pairs(headers) do
    if type(k) ~= "string" or not k:find(TOKEN) then
      error(where .. ": bad header name " .. tostring(k), 0)
    end
    if k:lower() == "content-type" then
      has_type = true
    end
    if type(v) == "table" then
      for _, item in ipairs(v) do
        add(k, item)
      end
    else
      add(k, v)
    end
  end
  return flat, has_type
end

local function check_status(status, where)
  if status == nil then
    return 200
  end
  if not is_integer(status) or status < 100 or status > 599 then
    error(where .. ": status must be an integer in [100, 599] (got "
      .. tostring(status) .. ")", 0)
  end
  return status
end

local Request = {}
Request.__index = Request

function Request:json()
  if not self._json_done then
    self._json, self._json_err = json.decode(self.body)
    self._json_done = true
  end
  return self._json, self._json_err
end

function Request:state()
  return self._x:state()
end

function Request:abort()
  return self._x:abort()
end

function Request:start(status, headers)
  local ok, err = pcall(function()
    status = check_status(status, "req:start")
    headers = flatten_headers(headers, "req:start")
  end)
  if not ok then
    error("sluice.server: " .. err, 2)
  end
  return self._x:start(status, headers)
end

function Request:write(chunk)
  local tc = type(chunk)
  if tc == "number" then
    chunk = tostring(chunk)
  elseif tc ~= "string" then
    error("sluice.server: req:write: bad argument #1 'chunk' (string expected, got "
      .. tc .. ")", 2)
  end
  if self._x:state() == "new" then
    self._x:start(200)
  end
  return self._x:write(chunk)
end

function Request:finish()
  if self._x:state() == "new" then
    self._x:start(200)
  end
  return self._x:finish()
end

-- The req a handler gets for the exchange x (info: what the binding parsed).
local function new_request(x, info)
  local query, query_all = decode_query(info.query)
  return setmetatable({
    method = info.method,
    path = info.path,
    uri = info.uri,
    query = query,
    query_all = query_all,
    query_string = info.query,
    headers = header_table.new(info.headers),
    body = info.body,
    remote_addr = info.remote_addr,
    remote_ip = info.remote_ip,
    remote_port = info.remote_port,
    _x = x,
  }, Request)
end

-- --- replies -----------------------------------------------------------------
local JSON = "application/json"
local REPLACEMENT = "\239\191\189" -- U+FFFD

-- s with every byte that does not belong to a well-formed UTF-8 sequence
-- (RFC 3629: no overlongs, surrogates or code points past U+10FFFF)
-- replaced by U+FFFD. cjson copies bytes >= 0x80 into its output as they
-- are, so request data echoed in a JSON body could make it invalid.
local function valid_utf8(s)
  if not s:find("[\128-\255]") then
    return s
  end
  local out, i, n = {}, 1, #s
  local byte = string.byte
  while i <= n do
    local c = byte(s, i)
    local len, lo, hi = 0, 0x80, 0xBF
    if c < 0x80 then -- a run of ASCII at once
      len = (s:find("[\128-\255]", i + 1) or n + 1) - i
    elseif c >= 0xC2 and c <= 0xDF then len = 2
    elseif c >= 0xE0 and c <= 0xEF then
      len = 3
      if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
    elseif c >= 0xF0 and c <= 0xF4 then
      len = 4
      if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
    end
    local ok = len > 0 and i + len - 1 <= n
    for k = 1, c < 0x80 and 0 or len - 1 do
      if not ok then break end
      local b = byte(s, i + k)
      if k == 1 then ok = b >= lo and b <= hi else ok = b >= 0x80 and b <= 0xBF end
    end
    if ok then
      out[#out + 1] = s:sub(i, i + len - 1)
      i = i + len
    else
      out[#out + 1] = REPLACEMENT
      i = i + 1
    end
  end
  return table.concat(out)
end

local function encode_json(v)
  local s, err = json.encode(v)
  if not s then
    return nil, err
  end
  return valid_utf8(s)
end

-- Turns a handler's results into status, flat headers, body. Raises (with a
-- plain message) on a bad value.
local function build_reply(status, body, headers)
  local ts = type(status)
  if (ts == "string" or ts == "table") and body == nil and headers == nil then
    status, body = 200, status -- return "body" or return { json }
  end
  status = check_status(status, "handler")
  local flat, has_type = flatten_headers(headers, "handler")
  local tb = type(body)
  if body == nil then
    body = ""
  elseif tb == "table" then
    local s, err = encode_json(body)
    if not s then
      error("handler: cannot encode the body as JSON: " .. tostring(err), 0)
    end
    body = s
    if not has_type then
      flat[#flat + 1] = "Content-Type"
      flat[#flat + 1] = JSON
    end
  elseif tb ~= "string" then
    error("handler: body must be a string or a table (got " .. tb .. ")", 0)
  end
  return status, flat, body
end

-- Answers x with status and the JSON body {"error": message}; extra: more
-- flat headers. Returns status.
local function reply_error(x, status, message, extra)
  local flat = { "Content-Type", JSON }
  if extra then
    for i = 1, #extra do flat[#flat + 1] = extra[i] end
  end
  x:respond(status, flat, encode_json({ error = message }))
  return status
end

_M.new_request = new_request
_M.valid_utf8 = valid_utf8
_M.build_reply = build_reply
_M.reply_error = reply_error

return _M
