--- sluice.http: an async HTTP client for tasks, on libcurl's multi interface.
--
--   local res, err, kind = http.get("https://api.example.com/v1/ticker",
--                                   { query = { symbol = "BTCUSDT" }, timeout = 5 })
--
-- A request yields the calling task until the response is complete; any
-- number of tasks may have requests in flight on the one loop thread.
-- Result: res.status, res.headers (a sluice.headers table: case-insensitive;
-- names lower case; repeated headers joined with ", "), res.headers_all[name]
-- (the same kind of table: every value, in order), res.body,
-- res:json(), res.timings {dns, connect, tls, ttfb, total} (seconds),
-- res.http_version ("1.1", "2"), res.url (after redirects), res.redirects
-- (hops followed), res.reused (true when an existing connection carried
-- the request).
-- Failure: nil, message, kind with kind one of "timeout", "connect", "dns",
-- "tls", "too_large", "protocol", "aborted", "redirect". An HTTP 4xx/5xx is
-- a result. Options timeout (30 s, the whole transfer, all redirect hops
-- included) and connect_timeout (10 s): math.huge means no timeout (no
-- limit on the transfer; a connection attempt still ends when the system
-- gives up on it). Options are checked by sluice.options (misuse raises,
-- naming the option). Numbers in query strings and header values are
-- written exactly, as sluice.json.number writes them (0.1 -> "0.1").
--
-- Redirects are followed here, not by curl, one request per hop, so that
-- credentials stay with the origin (scheme, host, port) they were given
-- for. Option redirects = {max = 5, cross_origin = false} (or false: none):
-- a hop to another origin is not followed unless cross_origin is true, and
-- then only the headers in CROSS_ORIGIN_HEADERS go with it, on that hop and
-- every later one; https -> http and other schemes are never followed, nor
-- a 307/308 that would resend a body to another origin. Not following for
-- any of these reasons is a failure of kind "redirect".
--
-- Observers: add_observer(fn) has fn(url, method, outcome, seconds) called
-- as each request ends, once per hop (a redirect followed is two): outcome
-- is the HTTP status, or the failure kind; seconds is the hop's total time
-- when a response came, else nil. An observer runs in the requesting task,
-- after the hop and before the request returns; it must be quick and not
-- raise (its error would be the request's). sluice.metrics adds one (the
-- sluice_http_* families); this module needs nothing of sluice but the
-- task runtime and its own native half.
local sluice = require "sluice"
local core = require "sluice._http"
local json = require "sluice.json"
local options = require "sluice.options"
local headers = require "sluice.headers"

local _M = {}

local DEFAULTS = {
  timeout = 30,
  connect_timeout = 10,
  max_body = 64 * 1024 * 1024,
  insecure = false,
}
local MAX_REDIRECTS = 5
local FEATURES = core.version()

-- The options of request (and get, post): sluice.options checks them.
local TIMEOUT = { type = "number", gt = 0 } -- math.huge: no timeout
local REQUEST_OPTIONS = {
  method = "string", url = { type = "string", required = true }, query = "table",
  headers = "table", body = "string", json = "any", timeout = TIMEOUT,
  connect_timeout = TIMEOUT, max_body = { type = "number", gt = 0, finite = true },
  redirects = {
    type = "boolean|table", what = "false or a table {max = n, cross_origin = boolean}",
    check = function(r) return r ~= true end,
    fields = { max = { type = "number", integer = true, min = 0, max = 2 ^ 31 - 1 }, cross_origin = "boolean" },
  },
  insecure = "boolean",
  http_version = { type = "string", one_of = { "1.1", "2", "2-prior-knowledge" } },
}

-- get and post take the url (and a default method) as arguments: the
-- same options, url not required (and, as before, not used).
local URL_OPTIONS = {}
for k, v in pairs(REQUEST_OPTIONS) do URL_OPTIONS[k] = v end
URL_OPTIONS.url = "string"

-- The statuses whose Location is followed (RFC 9110 15.4).
local REDIRECT = { [301] = true, [302] = true, [303] = true, [307] = true, [308] = true }

-- Caller-supplied headers that may go to another origin: they describe
-- what the client accepts, never who it is. Everything else (Authorization,
-- Cookie, X-MBX-APIKEY, any custom header) stays with the first origin.
local CROSS_ORIGIN_HEADERS = {
  accept = true, ["accept-encoding"] = true, ["accept-language"] = true,
  ["user-agent"] = true,
}

-- Raises misuse at the caller of the function calling fail (level 2, the
-- default), or `level` above that function.
local function fail(fname, msg, level)
  error("sluice.http." .. fname .. ": " .. msg, (level or 2) + 1)
end

-- The observers, in the order added. Adding and removing make a new list,
-- so a request ending while an observer adds or removes one walks the list
-- it started with.
local observers = {}

--- add_observer(fn): fn(url, method, outcome, seconds) is called as each
-- request (each hop) ends (see the header). Adding one already added does
-- nothing.
function _M.add_observer(fn)
  if type(fn) ~= "function" then
    error("sluice.http.add_observer: bad argument #1 (function expected, got " .. type(fn) .. ")", 2)
  end
  local list = {}
  for i, o in ipairs(observers) do
    if o == fn then return end
    list[i] = o
  end
  list[#list + 1] = fn
  observers = list
end

--- remove_observer(fn) -> whether fn was an observer.
function _M.remove_observer(fn)
  local list, found = {}, false
  for _, o in ipairs(observers) do
    if o == fn then found = true else list[#list + 1] = o end
  end
  observers = list
  return found
end

local function observe(url, method, outcome, seconds)
  local list = observers
  for i = 1, #list do list[i](url, method, outcome, seconds) end
end

-- A query or header value as text: a number as sluice.json.number writes
-- it (the shortest text that reads back as the same double; nan, inf and
-- -inf as "nan", "inf", "-inf"), a boolean as "true"/"false". nil for
-- other types.
local function scalar(v)
  local tv = type(v)
  if tv == "string" then return v end
  if tv == "number" then return json.number(v) or tostring(v) end
  if tv == "boolean" then return tostring(v) end
  if tv == "cdata" then return json.int64_text(v) end -- int64_t/uint64_t: its digits
  return nil
end

local function percent(c)
  return string.format("%%%02X", c:byte())
end

--- escape(s) -> s percent-encoded per RFC 3986 (only A-Z a-z 0-9 - _ . ~
-- stay as they are). A number or a boolean is written as a query value is
-- (numbers exactly, as sluice.json.number writes them).
function _M.escape(s)
  if type(s) ~= "string" then
    local text = scalar(s)
    if not text then
      error("sluice.http.escape: bad argument #1 (string expected, got " .. type(s) .. ")", 2)
    end
    s = text
  end
  return (s:gsub("[^%w%-_%.~]", percent))
end
local escape = _M.escape

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

local response = {}

-- What a response keeps that is not one of its fields (so that pairs(res)
-- shows only what the header comment names): the header lines as they came,
-- until res.headers or res.headers_all is first read, and the decoded body
-- once res:json() has run. Weak keys: they go with their response.
local head_of = setmetatable({}, { __mode = "k" })
local json_of = setmetatable({}, { __mode = "k" })

-- res.headers and res.headers_all are made from the header lines on first
-- use: most callers read the body only.
local function response_index(res, k)
  if k == "headers" or k == "headers_all" then
    local h, all = core.parse_headers(head_of[res] or "")
    h, all = headers.new(h), headers.new(all)
    rawset(res, "headers", h)
    rawset(res, "headers_all", all)
    head_of[res] = nil
    if k == "headers" then return h end
    return all
  end
  return response[k]
end
local response_mt = { __index = response_index }

--- res:json() -> the decoded body (decoded once, then cached), or nil, err.
function response:json()
  local cached = json_of[self]
  if cached ~= nil then
    return cached
  end
  local value, err = json.decode(self.body)
  if value == nil then
    return nil, "invalid JSON in response body: " .. tostring(err)
  end
  json_of[self] = value
  return value
end

-- Called by do_request: blames do_request's caller (request, get and post
-- tail-call it, so that is the user's line).
local function check_options(fname, opts, schema)
  if opts.follow_redirects ~= nil then
    fail(fname, "option 'follow_redirects' is gone: use redirects = false or {max = n, cross_origin = true}", 3)
  end
  options.check("sluice.http." .. fname, opts, schema, 3)
  if opts.body ~= nil and opts.json ~= nil then
    fail(fname, "options 'body' and 'json' are exclusive", 3)
  end
end

-- The redirects option (checked) -> max hops, cross_origin.
local function redirect_policy(r)
  if r == nil then return MAX_REDIRECTS, false end
  if r == false then return 0, false end
  return r.max or MAX_REDIRECTS, r.cross_origin == true
end

--- origin(url) -> scheme, host, port (lower case; port a number, the
-- scheme's default when the URL has none), or nil, err.
function _M.origin(url)
  if type(url) ~= "string" then
    error("sluice.http.origin: bad argument #1 (string expected, got " .. type(url) .. ")", 2)
  end
  local u, scheme, host, port = core.parse_url(url)
  if not u then return nil, scheme end
  if not host then return nil, "no host in URL" end
  return scheme, host, port
end

local function origin_string(scheme, host, port)
  return scheme .. "://" .. host .. ":" .. string.format("%d", port)
end

-- The header lines that may follow a request to another origin.
local function cross_origin_lines(lines, names)
  local keep, keep_names = {}, {}
  for i, line in ipairs(lines) do
    -- "Name:" sends nothing (it removes a header curl would add)
    if CROSS_ORIGIN_HEADERS[names[i]] or line:sub(-1) == ":" then
      keep[#keep + 1], keep_names[#keep_names + 1] = line, names[i]
    end
  end
  return keep, keep_names
end

-- Lines without those that describe a body, for a hop that drops it.
local function bodiless_lines(lines, names)
  local keep, keep_names = {}, {}
  for i, line in ipairs(lines) do
    local n = names[i]
    if n ~= "content-type" and n ~= "content-length" and n ~= "content-encoding"
        and n ~= "expect" then
      keep[#keep + 1], keep_names[#keep_names + 1] = line, n
    end
  end
  return keep, keep_names
end

-- Decides one hop: res (a 3xx with a Location) from url. Returns the next
-- url and whether it is of another origin, or nil, err for a hop that must
-- not be followed.
local function next_hop(url, res, location, cross_origin, has_body)
  local to, scheme, host, port = core.parse_url(url, location)
  if not to then
    return nil, "bad Location in a " .. res.status .. " redirect: " .. tostring(scheme)
  end
  if scheme ~= "http" and scheme ~= "https" then
    return nil, "redirect to an unsupported scheme (" .. tostring(scheme) .. ") not followed"
  end
  if not host or not port then
    return nil, "bad Location in a " .. res.status .. " redirect: no host"
  end
  local _, s0, h0, p0 = core.parse_url(url)
  local target = origin_string(scheme, host, port)
  if s0 == "https" and scheme == "http" then
    return nil, "redirect from https to http (" .. target .. ") refused"
  end
  local other = not (scheme == s0 and host == h0 and port == p0)
  if other and not cross_origin then
    return nil, "redirect to another origin (" .. target .. ") not followed: redirects.cross_origin is false"
  end
  if other and has_body then
    return nil, "a " .. res.status .. " redirect to another origin (" .. target
      .. ") would resend the request body: not followed"
  end
  return to, other
end

local NO_OPTIONS = {}

local function opt(opts, k)
  local v = opts[k]
  if v == nil then return DEFAULTS[k] end
  return v
end

-- url and method are get's and post's (opts then may be NO_OPTIONS), or
-- nil for request, which finds them in opts.
local function do_request(fname, opts, url, method)
  if type(opts) ~= "table" then
    fail(fname, "bad argument #1 (table of options expected, got " .. type(opts) .. ")")
  end
  check_options(fname, opts, url and URL_OPTIONS or REQUEST_OPTIONS)
  if opts.http_version == "2-prior-knowledge" and not FEATURES.h2c then
    fail(fname, "http_version '2-prior-knowledge' needs libcurl 8.0.0 or later (this is "
      .. FEATURES.curl .. ", which breaks reused h2c connections)")
  end
  url = url or opts.url
  local named = opts.method or method -- nil: GET, or POST with a body
  method = (named or "GET"):upper()
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
  local max_hops, cross_origin = redirect_policy(opts.redirects)
  local lines, names, has_type = {}, {}, false
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
      names[#lines] = name:lower()
      if names[#lines] == "content-type" then has_type = true end
    end
  end
  if opts.json ~= nil then
    local encoded, err = json.encode(opts.json)
    if not encoded then
      fail(fname, "option 'json' cannot be encoded: " .. tostring(err))
    end
    body = encoded
    if not has_type then
      lines[#lines + 1] = "Content-Type: application/json"
      names[#lines] = "content-type"
    end
  end
  if body and method == "GET" and named == nil then
    method = "POST"
  end
  -- Tell curl not to wait for "100 Continue" on large bodies: APIs rarely
  -- send it and the wait costs a second.
  if body then
    lines[#lines + 1] = "Expect:"
    names[#lines] = "expect"
  end
  local timeout = opt(opts, "timeout")
  local deadline = timeout < math.huge and sluice.now() + timeout or nil
  local hops, redirect_time = 0, 0
  local res, err, kind
  while true do
    local left = timeout
    if deadline then
      left = deadline - sluice.now()
      if not (left > 0) then
        observe(url, method, "timeout")
        return nil, string.format("timed out after %g seconds (following redirects)", timeout),
          "timeout"
      end
    end
    res, err, kind = core.request(method, url, lines, body, left,
      opt(opts, "connect_timeout"), opt(opts, "max_body"), opt(opts, "insecure"),
      opts.http_version)
    if not res then
      observe(url, method, kind)
      return nil, err, kind
    end
    head_of[res] = err -- the header lines
    setmetatable(res, response_mt)
    observe(url, method, res.status, res.timings and res.timings.total)
    local location = REDIRECT[res.status] and max_hops > 0 and res.headers_all.location
    if not location then break end
    if hops >= max_hops then
      return nil, "too many redirects (more than " .. max_hops .. ")", "redirect"
    end
    local status = res.status
    -- 303 asks for a GET (HEAD stays HEAD); 301 and 302 turn a POST into
    -- a GET as browsers and curl do. The body goes in both cases.
    local drop_body = status == 303 and method ~= "HEAD"
      or (status == 301 or status == 302) and method == "POST"
    local to, other = next_hop(url, res, location[1], cross_origin, body ~= nil and not drop_body)
    if not to then
      return nil, other, "redirect"
    end
    if drop_body then
      method, body = "GET", nil
      lines, names = bodiless_lines(lines, names)
    end
    if other then
      lines, names = cross_origin_lines(lines, names)
    end
    hops = hops + 1
    redirect_time = redirect_time + res.timings.total
    url = to
  end
  res.redirects = hops
  res.timings.redirect = redirect_time
  res.timings.total = res.timings.total + redirect_time
  return res
end

--- request{method, url, query, headers, body | json, timeout,
--   connect_timeout, max_body, redirects, insecure}
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
  return do_request(fname, opts or NO_OPTIONS, url, method)
end

--- get(url [, opts]) -> res | nil, err, kind
function _M.get(url, opts)
  return with_url("get", "GET", url, opts)
end

--- post(url [, opts]) -> res | nil, err, kind
function _M.post(url, opts)
  return with_url("post", "POST", url, opts)
end

local CAP = { type = "number", integer = true, min = 0 }
local CONFIG_OPTIONS = {
  max_host_connections = CAP, max_total_connections = CAP, max_cached_connections = CAP,
  defaults = "boolean",
}
-- The native half starts with the same values (lua_http.c).
local CONFIG_DEFAULTS = {
  max_host_connections = 64, max_total_connections = 1024, max_cached_connections = 256,
}
local config = {}
for k, v in pairs(CONFIG_DEFAULTS) do config[k] = v end

--- configure{max_host_connections = n, max_total_connections = n,
--   max_cached_connections = n}
-- Caps (0 = no cap): requests in flight to one origin (64; an HTTP/2
-- origin takes 100 per connection), connections open in all (1024), and
-- connections kept open once their requests end (256: past it the longest
-- idle is closed). Requests over the origin cap wait in the native half's
-- queue, first come first served, their timeout running. Options left out
-- keep their value; defaults = true first puts every cap back to its
-- default. Returns the settings in force.
function _M.configure(opts)
  if opts == nil then
    local copy = {}
    for k, v in pairs(config) do copy[k] = v end
    return copy
  end
  if type(opts) ~= "table" then
    error("sluice.http.configure: bad argument #1 (table expected, got " .. type(opts) .. ")", 2)
  end
  options.check("sluice.http.configure", opts, CONFIG_OPTIONS)
  if opts.defaults then
    for k, v in pairs(CONFIG_DEFAULTS) do config[k] = v end
  end
  for k, v in pairs(opts) do
    if k ~= "defaults" then config[k] = v end
  end
  core.configure(config.max_host_connections, config.max_total_connections,
    config.max_cached_connections)
  return _M.configure()
end

--- in_flight() -> the number of requests started and not yet finished.
_M.in_flight = core.in_flight

--- features() -> {curl, tls, http2, h2c, brotli, gzip}: what this libcurl
-- can do (h2c: http_version = "2-prior-knowledge" works).
_M.features = core.version

return _M
