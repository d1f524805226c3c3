--- sluice.redact: what the operator surface may show of configuration and text.
--
-- Two layers, so a secret is hidden by construction and, should one reach
-- free text anyway, scrubbed there too:
--
--   classify(config) walks a configuration once when it is loaded: it
--   builds the view shown by /status (an allow-listed projection: URLs
--   without user info, header values outside HEADER_ALLOW, auth values,
--   collector.env values and settings named like secrets replaced), and
--   remembers the secret strings it met (URL passwords, credential-like
--   header values, auth values, revealed collector.env values, values of
--   settings named token, password, secret, api_key, credential...).
--   remember(config) walks a table nobody shows the same way, for its
--   secrets only, keeping no view (a collector's settings).
--
--   text(s) scrubs free text (log lines, errors, metric labels): user info
--   of any URL, values of query parameters named like credentials, and
--   every remembered secret (of at least MIN_SECRET bytes) become
--   "<redacted>".
--
-- The remembered secrets live as long as the process (a reload adds the new
-- ones; an old value may still appear in old log lines, so it stays hidden).
local core_log = require "sluice._log"
local secret_mod = require "sluice.collector.secret"
local json = require "sluice.json"
local numeral_text = json.numeral_text

local _M = {}

local REDACTED = "<redacted>"
local SECRET = "<secret>"
-- Shorter remembered values are not scrubbed from free text: a two-letter
-- value would mangle every line. Views hide them regardless of length.
local MIN_SECRET = 4

--- header names whose values views show; every other value is redacted.
local HEADER_ALLOW = {
  accept = true, ["accept-encoding"] = true, ["accept-language"] = true,
  ["cache-control"] = true, connection = true, ["content-type"] = true,
  ["content-encoding"] = true, ["user-agent"] = true, ["x-requested-with"] = true,
}
_M.HEADER_ALLOW = HEADER_ALLOW

-- setting names (lower case, any part) whose string values are secrets
local SECRET_WORDS = { "token", "password", "passwd", "secret", "key", "credential",
  "bearer", "signature", "auth", "cookie", "private", "session" }

-- names whose string values are also scrubbed from free text: narrower, so
-- `key = "symbol"` in a table definition does not blank "symbol" in every line
local STRONG_WORDS = { "token", "password", "passwd", "secret", "api_key", "apikey",
  "private_key", "credential", "bearer" }

local function named(k, words)
  if type(k) ~= "string" then return false end
  k = k:lower()
  for _, w in ipairs(words) do
    if k:find(w, 1, true) then return true end
  end
  return false
end

--- secret_name(k) -> whether a setting or parameter named k holds a secret.
local function secret_name(k) return named(k, SECRET_WORDS) end
_M.secret_name = secret_name

local known, list = {}, {} -- remembered secrets: set, and longest first

--- register(s): remember a secret string so text() never shows it.
function _M.register(s)
  if type(s) ~= "string" or #s < MIN_SECRET or known[s] then return end
  known[s] = true
  core_log.redact(s) -- lines written from C too (a task's error, ...)
  list[#list + 1] = s
  table.sort(list, function(a, b) return #a > #b end)
end

-- the secret wrapper's own module requires nothing, so it loads here
-- without the collector framework (which logs through this module)
local function is_secret_value(v)
  return type(v) == "table" and secret_mod.is_secret(v)
end

local function reveal(v)
  return secret_mod.reveal(v)
end

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- "scheme://user:pass@host/..." -> "scheme://<redacted>@host/..."; the
-- user info runs to the last "@" of the authority (an unescaped "@" in a
-- password is common).
local function strip_userinfo(s)
  return (s:gsub("(%a[%w+.-]*://)([^/?#%s\"'<>]*)", function(scheme, authority)
    local host = authority:match("^.*@(.-)$")
    if not host then return nil end
    return scheme .. REDACTED .. "@" .. host
  end))
end

-- "?api_key=abc&x=1" -> "?api_key=<redacted>&x=1"
local function strip_query(s)
  return (s:gsub("([?&;])([%w_.%-]+)=([^&#;%s\"']*)", function(sep, name, value)
    if value == "" or value == REDACTED or not secret_name(name) then return nil end
    return sep .. name .. "=" .. REDACTED
  end))
end

--- url(s) -> s without user info or credential-like query values.
function _M.url(s)
  if type(s) ~= "string" then return s end
  return strip_query(strip_userinfo(s))
end

--- text(s) -> s with URL user info, credential-like query values and every
-- remembered secret replaced by "<redacted>". Non-strings pass through.
function _M.text(s)
  if type(s) ~= "string" then return s end
  for _, secret in ipairs(list) do
    if s:find(secret, 1, true) then
      local parts, i = {}, 1
      while true do
        local a, b = s:find(secret, i, true)
        if not a then break end
        parts[#parts + 1] = s:sub(i, a - 1)
        parts[#parts + 1] = REDACTED
        i = b + 1
      end
      parts[#parts + 1] = s:sub(i)
      s = table.concat(parts)
    end
  end
  if s:find("://", 1, true) then s = strip_userinfo(s) end
  if s:find("=", 1, true) then s = strip_query(s) end
  return s
end

--- scrub(value) -> a copy with every string (keys too) through text();
-- functions and userdata other than cjson.null dropped.
function _M.scrub(v, seen)
  local t = type(v)
  if t == "string" then return _M.text(v) end
  if is_secret_value(v) then return SECRET end
  if t ~= "table" or numeral_text(v) then
    if t == "function" or t == "thread" then return nil end
    return v -- numbers, cdata, json numerals: values, kept as they are
  end
  seen = seen or {}
  if seen[v] then return "<cycle>" end
  seen[v] = true
  local out = {}
  for k, x in pairs(v) do
    out[type(k) == "string" and _M.text(k) or k] = _M.scrub(x, seen)
  end
  seen[v] = nil
  local mt = getmetatable(v) -- keeps cjson's array marker, and sluice.json's
  if type(mt) == "table" then
    setmetatable(out, mt)
  elseif mt == "sluice.json.array" then
    json.array(out)
  end
  return out
end

-- Schemes whose user info without a ":" is a user NAME, never a
-- credential (the password comes from elsewhere: .pgpass, a certificate,
-- trust). Remembering "postgres" from postgresql://postgres@db would blank
-- every "postgres" in every line -- the sink's name, its kind, the scheme.
-- Elsewhere a lone user is often the credential itself
-- (https://TOKEN@host), so it is remembered.
local USER_IS_NAME = {
  postgres = true, postgresql = true, mysql = true, mariadb = true, amqp = true, amqps = true,
  clickhouse = true, mongodb = true, ["mongodb+srv"] = true,
}

-- the password (or lone user) of a URL's user info, raw and unescaped
local function remember_userinfo(s)
  for scheme, authority in s:gmatch("(%a[%w+.-]*)://([^/?#%s\"'<>]*)") do
    local info = authority:match("^(.*)@")
    if info then
      local pass = info:match("^[^:]*:(.*)$")
      if pass or not USER_IS_NAME[scheme:lower()] then
        pass = pass or info
        _M.register(pass)
        _M.register(unescape(pass))
        _M.register(info)
      end
    end
  end
end

-- view of one value under key k; registers what it hides
local project

local function project_headers(h, seen)
  if type(h) ~= "table" then return project(h, nil, seen) end
  local out = {}
  for name, v in pairs(h) do
    if type(name) == "string" and HEADER_ALLOW[name:lower()] and type(v) == "string" then
      out[name] = _M.text(v)
    else
      -- every value is hidden here; free text is scrubbed of the values of
      -- credential-like headers (X-Api-Key, Authorization, Cookie) and of
      -- collector.env ones ("X-Client: sluice" must not blank every line)
      if is_secret_value(v) then
        _M.register(reveal(v))
      elseif secret_name(name) and type(v) == "string" then
        _M.register(v)
      end
      out[name] = REDACTED
    end
  end
  return out
end

local function project_auth(a, seen)
  if type(a) ~= "table" or is_secret_value(a) then return project(a, "auth", seen) end
  local out = {}
  for k, v in pairs(a) do
    if (k == "header" or k == "query") and type(v) == "string" then
      out[k] = v -- the name of the header or parameter, not its value
    else
      if is_secret_value(v) then v = reveal(v) end
      _M.register(type(v) == "string" and v or nil)
      out[k] = v ~= nil and SECRET or nil
    end
  end
  return out
end

function project(v, k, seen)
  if is_secret_value(v) then
    _M.register(reveal(v))
    return SECRET
  end
  local t = type(v)
  if t == "function" or t == "thread" or t == "userdata" then return nil end
  if t == "string" then
    remember_userinfo(v)
    if secret_name(k) then
      if named(k, STRONG_WORDS) then _M.register(v) end
      return REDACTED
    end
    return _M.text(v)
  end
  if t ~= "table" or numeral_text(v) then return v end
  if k == "headers" then return project_headers(v, seen) end
  if k == "auth" then return project_auth(v, seen) end
  if seen[v] then return "<cycle>" end
  seen[v] = true
  local out = {}
  for key, x in pairs(v) do out[key] = project(x, key, seen) end
  seen[v] = nil
  if getmetatable(v) == "sluice.json.array" then json.array(out) end
  return out
end

local views = setmetatable({}, { __mode = "k" })

--- classify(config) -> the view of a configuration (or of a collector's
-- settings): computed once per table, remembering every secret it hides.
-- The view is shared: callers must not change it.
function _M.classify(config)
  if type(config) ~= "table" then
    error("sluice.redact.classify: bad argument #1 (table expected, got " .. type(config) .. ")", 2)
  end
  local v = views[config]
  if not v then
    v = project(config, nil, {})
    views[config] = v
  end
  return v
end

--- remember(config): registers the secrets classify(config) would meet,
-- keeping no view: for tables nobody shows (a collector's settings, which
-- the app walks for the script's own secrets; a view of each of a
-- thousand collectors' settings was ~0.7 MB kept for nothing).
function _M.remember(config)
  if type(config) ~= "table" then
    error("sluice.redact.remember: bad argument #1 (table expected, got " .. type(config) .. ")", 2)
  end
  if not views[config] then project(config, nil, {}) end
end

_M.REDACTED = REDACTED
return _M
