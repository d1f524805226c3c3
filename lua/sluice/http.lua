--- sluice.http: an async HTTP client for tasks, on libcurl's multi interface.
--
--   local res, err, kind = http.get("https://api.example.com/v1/ticker",
--                                   { query = { symbol = "BTCUSDT" }, timeout = 5 })
--
-- A request yields the calling task until the response is complete; any
-- number of tasks may have requests in flight on the one loop thread.
-- Result: res.status, res.headers (case-insensitive; repeated headers joined
-- with ", "), res.headers_all[name] (every value, in order), res.body,
-- res:json(), res.timings {dns, connect, tls, ttfb, total} (seconds),
-- res.http_version ("1.1", "2"), res.url (after redirects), res.reused
-- (true when an existing connection carried the request).
-- Failure: nil, message, kind with kind one of "timeout", "connect", "dns",
-- "tls", "too_large", "protocol", "aborted". An HTTP 4xx/5xx is a result.
-- Options timeout (30 s, the whole transfer) and connect_timeout (10 s):
-- math.huge means no timeout (no limit on the transfer; a connection
-- attempt still ends when the system gives up on it).
local core = require "sluice._http"
local cjson = require "cjson.safe"
local metrics = require "sluice.metrics"

local _M = {}

local DEFAULTS = {
  timeout = 30,
  connect_timeout = 10,
  max_body = 64 * 1024 * 1024,
  follow_redirects = true,
  insecure = false,
}

local OPTION_TYPES = {
  method = "string", url = "string", query = "table", headers = "table",
  body = "string", json = "any", timeout = "number", connect_timeout = "number",
  max_body = "number", follow_redirects = "boolean", insecure = "boolean",
}

local function fail(fname, msg)
  error("sluice.http." .. fname .. ": " .. msg, 3)
end

--- escape(s) -> s percent-encoded per RFC 3986 (only A-Z a-z 0-9 - _ . ~
-- stay as they are).
function _M.escape(s)
  if type(s) ~= "string" then
    if type(s) == "number" or type(s) == "boolean" then
      s = tostring(s)
    else
      error("sluice.http.escape: bad argument #1 (string expected, got " .. type(s) .. ")", 2)
    end
  end
  return (s:gsub("[^%w%-_%.~]", function(c)
    return string.format("%%%02X", c:byte())
  end))
end
local escape = _M.escape

local function scalar(v)
  local tv = type(v)
  if tv == "string" then return v end
  if tv == "number" then
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then
      return string.format("%d", v)
    end
    return string.format("%.17g", v)
  end
  if tv == "boolean" then return tostring(v) end
  return nil
end

--- encode_query(t) -> "a=1&b=x%20y" with keys sorted, so the same table
-- always gives the same string (cache keys, request signing). An array value
-- repeats its key (k=1&k=2), in array order.
function _M.encode_query(t)
  if type(t) ~= "table" then
    error("sluice.http.encode_query: bad argument #1 (table expected, got " .. type(t) .. ")", 2)
  end
  local keys = {}
  for k in pairs(t) do
    if type(k) ~= "string" then
      error("sluice.http.encode_query: query keys must be strings, got " .. type(k), 2)
    end
    keys[#keys + 1] = k
  end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do
    local v = t[k]
    local ek = escape(k)
    if type(v) == "table" then
      for i = 1, #v do
        local s = scalar(v[i])
        if not s then
          error("sluice.http.encode_query: bad value in list '" .. k .. "' (" .. type(v[i]) .. ")", 2)
        end
        parts[#parts + 1] = ek .. "=" .. escape(s)
      end
    else
      local s = scalar(v)
      if not s then
        error("sluice.http.encode_query: bad value for '" .. k .. "' (" .. type(v) .. ")", 2)
      end
      parts[#parts + 1] = ek .. "=" .. escape(s)
    end
  end
  return table.concat(parts, "&")
end

-- Case-insensitive header lookup; names are stored lower case.
local headers_mt = {
  __index = function(t, k)
    if type(k) == "string" then
      return rawget(t, k:lower())
    end
  end,
}

local response = {}
local response_mt = { __index = response }

--- res:json() -> the decoded body (decoded once, then cached), or nil, err.
function response:json()
  local cached = rawget(self, "_json")
  if cached ~= nil then
    return cached
  end
  local value, err = cjson.decode(self.body)
  if value == nil then
    return nil, "invalid JSON in response body: " .. tostring(err)
  end
  rawset(self, "_json", value)
  return value
end

local function check_options(fname, opts)
  for k, v in pairs(opts) do
    local want = OPTION_TYPES[k]
    if not want then
      fail(fname, "unknown option '" .. tostring(k) .. "'")
    end
    if want ~= "any" and type(v) ~= want then
      fail(fname, "option '" .. k .. "' must be a " .. want .. ", got " .. type(v))
    end
  end
  for _, k in ipairs({ "timeout", "connect_timeout" }) do
    local v = opts[k]
    if v ~= nil and not (v > 0) then
      fail(fname, "option '" .. k .. "' must be a number > 0 (math.huge: no timeout)")
    end
  end
  if opts.max_body ~= nil and not (opts.max_body > 0 and opts.max_body < math.huge) then
    fail(fname, "option 'max_body' must be a finite number > 0")
  end
  if opts.body ~= nil and opts.json ~= nil then
    fail(fname, "options 'body' and 'json' are exclusive")
  end
end

local function do_request(fname, opts)
  if type(opts) ~= "table" then
    fail(fname, "bad argument #1 (table of options expected, got " .. type(opts) .. ")")
  end
  check_options(fname, opts)
  local url = opts.url
  if not url then
    fail(fname, "option 'url' is required")
  end
  local method = (opts.method or "GET"):upper()
  if not method:match("^[A-Z]+$") then
    fail(fname, "bad method '" .. opts.method .. "'")
  end
  if opts.query then
    local q = _M.encode_query(opts.query)
    if q ~= "" then
      url = url .. (url:find("?", 1, true) and "&" or "?") .. q
    end
  end
  local body = opts.body
  local lines, has_type = {}, false
  if opts.headers then
    for name, value in pairs(opts.headers) do
      if type(name) ~= "string" or not name:match("^[%w!#$%%&'*+%-.^_`|~]+$") then
        fail(fname, "bad header name '" .. tostring(name) .. "'")
      end
      if value == false then
        lines[#lines + 1] = name .. ":" -- removes a header curl would send
      else
        local s = scalar(value)
        if not s or s:find("[\r\n]") then
          fail(fname, "bad value for header '" .. name .. "'")
        end
        lines[#lines + 1] = name .. ": " .. s
      end
      if name:lower() == "content-type" then has_type = true end
    end
  end
  if opts.json ~= nil then
    local encoded, err = cjson.encode(opts.json)
    if not encoded then
      fail(fname, "option 'json' cannot be encoded: " .. tostring(err))
    end
    body = encoded
    if not has_type then
      lines[#lines + 1] = "Content-Type: application/json"
    end
  end
  if body and method == "GET" and opts.method == nil then
    method = "POST"
  end
  -- Tell curl not to wait for "100 Continue" on large bodies: APIs rarely
  -- send it and the wait costs a second.
  if body then
    lines[#lines + 1] = "Expect:"
  end
  local function opt(k)
    local v = opts[k]
    if v == nil then return DEFAULTS[k] end
    return v
  end
  local res, err, kind = core.request(method, url, lines, body, opt("timeout"),
    opt("connect_timeout"), opt("max_body"), opt("follow_redirects"), opt("insecure"))
  if not res then
    metrics.http_request(url, method, kind)
    return nil, err, kind
  end
  metrics.http_request(url, method, res.status, res.timings and res.timings.total)
  setmetatable(res.headers, headers_mt)
  setmetatable(res.headers_all, headers_mt)
  return setmetatable(res, response_mt)
end

--- request{method, url, query, headers, body | json, timeout,
--   connect_timeout, max_body, follow_redirects, insecure}
-- -> res | nil, err, kind. Must be called from a task.
function _M.request(opts)
  return do_request("request", opts)
end

local function with_url(fname, method, url, opts)
  if type(url) ~= "string" then
    fail(fname, "bad argument #1 'url' (string expected, got " .. type(url) .. ")")
  end
  if opts ~= nil and type(opts) ~= "table" then
    fail(fname, "bad argument #2 'opts' (table expected, got " .. type(opts) .. ")")
  end
  local o = {}
  if opts then
    for k, v in pairs(opts) do o[k] = v end
  end
  o.url = url
  o.method = o.method or method
  return do_request(fname, o)
end

--- get(url [, opts]) -> res | nil, err, kind
function _M.get(url, opts)
  return with_url("get", "GET", url, opts)
end

--- post(url [, opts]) -> res | nil, err, kind
function _M.post(url, opts)
  return with_url("post", "POST", url, opts)
end

local CONFIG_KEYS = { max_host_connections = true, max_total_connections = true }
local config = { max_host_connections = 0, max_total_connections = 0 }

--- configure{max_host_connections = n, max_total_connections = n}
-- Caps on open connections, per host and in all (0 = no cap; the default).
-- Requests over a cap wait in libcurl's queue. Returns the settings in force.
function _M.configure(opts)
  if opts == nil then
    return { max_host_connections = config.max_host_connections,
             max_total_connections = config.max_total_connections }
  end
  if type(opts) ~= "table" then
    error("sluice.http.configure: bad argument #1 (table expected, got " .. type(opts) .. ")", 2)
  end
  for k, v in pairs(opts) do
    if not CONFIG_KEYS[k] then
      error("sluice.http.configure: unknown option '" .. tostring(k) .. "'", 2)
    end
    if type(v) ~= "number" or v < 0 or v ~= math.floor(v) then
      error("sluice.http.configure: option '" .. k .. "' must be an integer >= 0", 2)
    end
    config[k] = v
  end
  core.configure(config.max_host_connections, config.max_total_connections)
  return _M.configure()
end

--- in_flight() -> the number of requests started and not yet finished.
_M.in_flight = core.in_flight

--- features() -> {curl, tls, http2, brotli, gzip}: what this libcurl can do.
_M.features = core.version

return _M
