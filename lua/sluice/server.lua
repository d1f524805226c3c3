--- sluice.server: an HTTP/1.1 server on libevent's evhttp; handlers run as tasks.
--
--   local server = require "sluice.server"
--   local srv = assert(server.listen{ host = "127.0.0.1", port = 0 })
--   srv:route("GET", "/ping", function(req) return 200, "pong" end)
--   srv:route("POST", "/items/*", function(req)
--     local item, err = req:json()
--     if not item then return 400, { error = err } end
--     sluice.sleep(0.1)                 -- handlers may yield
--     return 201, { id = 7 }, { ["x-request"] = "abc" }
--   end)
--   print(srv.port)                     -- the bound port (port = 0 picks one)
--   srv:close()
--
-- server.listen(opts) -> srv | nil, err
--   opts.host      address to bind (default "127.0.0.1"; "0.0.0.0", "::1" work)
--   opts.port      0..65535 (default 0: a free port, see srv.port)
--   opts.max_body  largest request body in bytes (default 8 MiB); larger ->
--                  413 without calling a handler: {"error":"request body too
--                  large"} on a declared Content-Length, before the body is
--                  read; for a chunked body, from evhttp itself (an HTML
--                  page). Either closes the connection. Request headers are
--                  limited to 64 KiB in all (larger -> 400 from evhttp).
--   opts.timeout   seconds of idle I/O while reading a request or writing a
--                  reply, and for idle keep-alive connections (default 60).
--                  It does not limit how long a handler runs.
--   opts.max_connections  open connections (default 1024; 0: no limit).
--                  One more is accepted, answered 503 {"error":"too many
--                  connections"} (Retry-After: 1) and closed at once.
--   opts.max_in_flight  requests being handled at once (default 256; 0: no
--                  limit); more get 503 {"error":"too many requests in
--                  flight"} and Connection: close, without a handler.
--   opts.request_timeout  seconds a connection has to deliver a whole request
--                  (headers and body), counted from accept or from its
--                  previous reply (default 60; 0: none); then it is closed
--                  without an answer. Unlike timeout, a client trickling
--                  bytes does not extend it.
--   opts.auth      { token = "...", methods = { "POST", "DELETE" } }: a
--                  request with one of these methods needs the header
--                  "Authorization: Bearer <token>" (compared in constant
--                  time). Without it, it is answered 401 {"error":
--                  "unauthorized"} (WWW-Authenticate: Bearer) on its
--                  headers alone, before any of its body is read, and the
--                  connection is closed. Default: none.
--   opts.name      what srv:name() returns (default "host:port", the bound
--                  port: "127.0.0.1:8080", "[::1]:8080").
--   Requests are checked on their headers, before their body is read: a
--   declared Content-Length over max_body gets 413 at once, conflicting
--   Content-Length headers get 400, and a malformed chunk size in a chunked
--   body gets 400; each answer closes the connection.
--   Options are checked by sluice.options: an unknown option or a wrong
--   type raises an error naming the option;
--   failing to listen (port in use, bad address) returns nil, err.
--   A listening server keeps the process running until srv:close(); at
--   shutdown (SIGTERM, sluice.shutdown) every server is closed.
--
-- srv.host, srv.port
-- srv:route(method, path, handler) -> srv
--   method: "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS",
--   "TRACE" (any case), or "*" for any method. CONNECT is not routable: it
--   is answered 405 (a JSON body, Allow: the routed methods) and closed. path: starts with
--   "/"; it matches exactly, or, when it ends in "*", every path that starts
--   with what comes before the "*" ("/api/*" matches "/api/" and "/api/a/b",
--   not "/api"). The most specific route that accepts the method wins: an
--   exact path before prefixes, longer prefixes before shorter ones, and
--   within a path a named method before "*". A HEAD request uses the GET
--   route when there is no HEAD route (the body is not sent). Routing the
--   same method and path again replaces the handler.
--   No route for the path -> 404; routes for the path, none for the method
--   -> 405 with an Allow header. Both have a JSON body {"error": "..."}.
-- srv:close() -> true if it was listening, false when it was already
--   closed (idempotent). Stops accepting at once; requests in flight run to
--   the end (their replies say Connection: close), then the server releases
--   the loop. A closed server still answers name() and stats(); route()
--   raises "sluice.server: server '<name>' is closed".
-- srv:name() -> opts.name, or "host:port"
-- srv:stats() -> a new table { requests = n, active = n, connections = n,
--   refused = n, open = bool, closed = bool } (refused: over
--   max_connections; open: accepting; closed: close() was called and every
--   request in flight has finished)
--
-- No call of this module yields; handlers run as tasks and may.
--
-- The request and reply objects are sluice.server.message's.
--
-- handler(req) runs as a task and returns status, body, headers:
--   status  integer 100..599, default 200 (a handler may also return just
--           a body: `return "pong"` or `return { ok = true }`)
--   body    string, nil (empty), or a table sent as JSON (content-type
--           application/json unless headers set one; invalid UTF-8 in it
--           becomes U+FFFD). A string body gets
--           text/plain; charset=utf-8 unless headers set a content-type.
--   headers table name -> string (or number, or a list of strings for a
--           repeated header)
--   An error in the handler (or an invalid return value) is logged with a
--   traceback and answered with 500 {"error":"internal server error"}; the
--   server goes on. A handler task that is killed is answered with 500.
--
-- The request:
--   req.method       "GET", ...
--   req.path         the path, percent-decoded, without the query
--   req.uri          the request target as received (raw)
--   req.query        decoded query parameters ("+" is a space); for a
--                    repeated key the last value wins; req.query_all[key]
--                    is the list of all its values, in order. A key without
--                    "=" has the value "".
--   req.query_string the raw query ("" if none)
--   req.headers      a sluice.headers table: lookup is case-insensitive
--                    (req.headers["content-type"] == req.headers["Content-Type"]);
--                    names are lower case; repeated headers are joined with ", "
--   req.body         the body, "" if none
--   req:json()       the body decoded (sluice.json.decode): value | nil, err
--   req.remote_addr  "ip:port" of the peer ("[ip]:port" for IPv6);
--                    req.remote_ip, req.remote_port separately
--
-- Fault injection and streaming (for tests that need a misbehaving server):
--   req:abort()            close the connection without (finishing) the
--                          reply; what was already written is flushed first
--   req:start(status, headers)  send the status line and headers now; the
--                          body follows with write(). Without a
--                          Content-Length header the body is chunked.
--   req:write(chunk)       send a part of the body now (starts a 200 reply
--                          first if start() was not called)
--   req:finish()           end the body. With a declared Content-Length
--                          that was not reached, finish() closes the
--                          connection instead (the client sees a truncated
--                          body) and returns nil, err.
--   req:state()            "new", "streaming", "answered" or "closed"
--   Each returns true, or nil, "closed" (the connection is gone, or the
--   server was torn down) / nil, "answered" (a reply was already sent, or
--   start() was called twice).
--   They never raise for a vanished client, so a handler can keep a req
--   across sleeps. A handler may sluice.sleep between writes. Once a reply
--   has been started, whatever the handler returns is ignored (nothing more
--   is sent) except that an unfinished stream is finished for it; an error
--   in a streaming handler closes the connection.
--   Chunks are queued, not awaited: write() does not wait for the client.
local sluice = require "sluice"
local core = require "sluice._server"
local log = require "sluice.log"
local message = require "sluice.server.message"
local options = require "sluice.options"

local _M = {}

local DEFAULTS = {
  host = "127.0.0.1",
  port = 0,
  max_body = 8 * 1024 * 1024,
  timeout = 60,
  max_connections = 1024,
  max_in_flight = 256,
  request_timeout = 60,
}

local METHODS = {
  GET = true, POST = true, PUT = true, DELETE = true, PATCH = true,
  HEAD = true, OPTIONS = true, TRACE = true, ["*"] = true,
}

local open_servers = setmetatable({}, { __mode = "k" })
local shutdown_hooked = false

local new_request, build_reply, reply_error = message.new_request, message.build_reply,
  message.reply_error
_M.valid_utf8 = message.valid_utf8

-- --- options -----------------------------------------------------------------
local NON_EMPTY = {
  type = "string", what = "a non-empty string", check = function(v) return v ~= "" end,
}
-- The core keeps counts and seconds in C ints and doubles: bounded below 1e9.
local SCHEMA = {
  host = NON_EMPTY,
  name = NON_EMPTY,
  port = { integer = true, min = 0, max = 65535 },
  max_body = { integer = true, min = 0 },
  timeout = { finite = true, gt = 0 },
  max_connections = { integer = true, min = 0, lt = 1e9, what = "an integer >= 0 (0: no limit)" },
  max_in_flight = { integer = true, min = 0, lt = 1e9, what = "an integer >= 0 (0: no limit)" },
  request_timeout = { min = 0, lt = 1e9, what = "a finite number >= 0 (0: none)" },
  auth = {
    type = "table",
    fields = {
      token = { type = "string", required = true, what = "a non-empty string",
        check = function(v) return v ~= "" end },
      methods = {
        type = "table", required = true,
        items = { type = "string", what = "an HTTP method (not \"*\")",
          check = function(m) return m ~= "*" and METHODS[m:upper()] ~= nil end },
      },
    },
  },
}

-- opts checked, with the defaults filled in (a new table).
local function check_options(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("sluice.server.listen: bad argument #1 'opts' (table expected, got "
      .. type(opts) .. ")", 3)
  end
  options.check("sluice.server.listen", opts, SCHEMA, 3)
  local out = { name = opts and opts.name, auth = opts and opts.auth }
  for k, default in pairs(DEFAULTS) do
    local v = opts and opts[k]
    if v == nil then v = default end
    out[k] = v
  end
  return out
end

-- --- routing -----------------------------------------------------------------
local Server = {}
Server.__index = Server

-- The handler for method on path, or nil and the set of methods the
-- matching routes accept (nil when no route matches the path).
local function find_handler(srv, method, path)
  local allowed
  local function try(entry)
    local m = entry.methods
    local h = m[method] or (method == "HEAD" and m.GET) or m["*"]
    if h then
      return h
    end
    allowed = allowed or {}
    for name in pairs(m) do
      allowed[name] = true
    end
  end
  local entry = srv._exact[path]
  if entry then
    local h = try(entry)
    if h then return h end
  end
  for _, p in ipairs(srv._prefixes) do
    if path:sub(1, #p.prefix) == p.prefix then
      local h = try(p)
      if h then return h end
    end
  end
  return nil, allowed
end

local function allow_header(allowed)
  if allowed.GET then
    allowed.HEAD = true
  end
  local list = {}
  for name in pairs(allowed) do
    list[#list + 1] = name
  end
  table.sort(list)
  return table.concat(list, ", ")
end

function Server:route(method, path, handler)
  if self._closed then
    error("sluice.server: server '" .. self._name .. "' is closed", 2)
  end
  if type(method) ~= "string" or not METHODS[method:upper()] then
    error("sluice.server.route: bad argument #1 'method' (an HTTP method or \"*\" expected, got "
      .. (type(method) == "string" and ("'" .. method .. "'") or type(method)) .. ")", 2)
  end
  if type(path) ~= "string" or path:sub(1, 1) ~= "/" then
    error("sluice.server.route: bad argument #2 'path' (string starting with \"/\" expected, got "
      .. (type(path) == "string" and ("'" .. path .. "'") or type(path)) .. ")", 2)
  end
  if type(handler) ~= "function" then
    error("sluice.server.route: bad argument #3 'handler' (function expected, got "
      .. type(handler) .. ")", 2)
  end
  method = method:upper()
  if method ~= "*" then
    self._methods[method] = true
  end
  if path:sub(-1) == "*" then
    local prefix = path:sub(1, -2)
    for _, p in ipairs(self._prefixes) do
      if p.prefix == prefix then
        p.methods[method] = handler
        return self
      end
    end
    self._prefixes[#self._prefixes + 1] = { prefix = prefix, methods = { [method] = handler } }
    table.sort(self._prefixes, function(a, b) return #a.prefix > #b.prefix end)
  else
    local entry = self._exact[path]
    if not entry then
      entry = { methods = {} }
      self._exact[path] = entry
    end
    entry.methods[method] = handler
  end
  return self
end

function Server:close()
  open_servers[self] = nil
  self._closed = true
  return self._core:close()
end

function Server:name()
  return self._name
end

function Server:stats()
  return self._core:stats()
end

function Server:__tostring()
  return tostring(self._core)
end

-- --- dispatch ----------------------------------------------------------------
local function trace(err)
  return { error = tostring(err), traceback = debug.traceback("", 2):sub(2) }
end

local function dispatch(srv, x, info)
  local t0 = sluice.now()
  local req = new_request(x, info)
  local handler, allowed
  if req.method == "CONNECT" then
    allowed = {} -- not routable: no tunnels here
    for m in pairs(srv._methods) do allowed[m] = true end
  else
    handler, allowed = find_handler(srv, req.method, req.path)
  end
  local status
  if not handler then
    if allowed then
      status = reply_error(x, 405, "method not allowed", { "Allow", allow_header(allowed) })
    else
      status = reply_error(x, 404, "not found")
    end
  else
    local ok, st, body, headers = xpcall(handler, trace, req)
    local state = x:state()
    if not ok then
      log.error("sluice.server: handler failed", {
        method = req.method, path = req.path, port = srv.port,
        error = st.error, traceback = st.traceback,
      })
      if state == "new" then
        status = reply_error(x, 500, "internal server error")
      elseif state == "streaming" then
        x:abort()
      end
    elseif state == "new" then
      local flat
      ok, status, flat, body = pcall(build_reply, st, body, headers)
      if ok then
        x:respond(status, flat, body)
      else
        log.error("sluice.server: bad reply from handler", {
          method = req.method, path = req.path, port = srv.port, error = status,
        })
        status = reply_error(x, 500, "internal server error")
      end
    elseif state == "streaming" then
      if body ~= nil then
        log.warning("sluice.server: handler returned a body after streaming; ignored",
          { method = req.method, path = req.path, port = srv.port })
      end
      x:finish()
    end
  end
  if log.enabled("debug") then
    log.debug("sluice.server: request", {
      method = req.method, path = req.path, port = srv.port, status = status,
      state = x:state(), seconds = sluice.now() - t0, remote = req.remote_addr,
    })
  end
end

-- --- listen ------------------------------------------------------------------
local function upper_all(list)
  local out = {}
  for i, m in ipairs(list) do out[i] = m:upper() end
  return out
end

function _M.listen(opts)
  opts = check_options(opts)
  local srv = setmetatable({ host = opts.host, _exact = {}, _prefixes = {}, _methods = {} },
    Server)
  local c, port = core.listen(opts.host, opts.port, {
    max_body = opts.max_body, timeout = opts.timeout,
    max_connections = opts.max_connections, max_in_flight = opts.max_in_flight,
    request_timeout = opts.request_timeout,
    auth_token = opts.auth and opts.auth.token,
    auth_methods = opts.auth and upper_all(opts.auth.methods),
  }, function(x, info) return dispatch(srv, x, info) end)
  if not c then
    return nil, port
  end
  srv._core, srv.port = c, port
  srv._name = opts.name or ((opts.host:find(":", 1, true) and "[" .. opts.host .. "]" or opts.host)
    .. ":" .. port)
  open_servers[srv] = true
  if not shutdown_hooked then
    shutdown_hooked = true
    sluice.on_shutdown(function()
      local list = {}
      for s in pairs(open_servers) do list[#list + 1] = s end
      for _, s in ipairs(list) do s:close() end
    end)
  end
  return srv
end

return _M
