--- sluice.ws: a WebSocket client (RFC 6455) for tasks, on the loop.
--
--   local ws = require "sluice.ws"
--   local conn, err = ws.connect("wss://stream.example.com/ws?streams=x", { timeout = 5 })
--   conn:send('{"op":"subscribe"}')
--   local data, kind = conn:receive(30)    --> '{"e":"trade",...}', "text"
--   conn:close()
--
-- ws.connect(url, opts) -> conn | nil, err   (yields; must run in a task)
--   url: ws://host[:port][/path][?query] or wss://... (host may be [ipv6];
--   a name resolves without blocking the loop). A url that does not parse is
--   data, not a programming error: nil, err. opts (all optional; a wrong
--   one raises):
--     headers       { name = value } sent with the upgrade request (not the
--                   upgrade's own: Host, Upgrade, Connection, Sec-WebSocket-*)
--     protocols     { "a", "b" } -> Sec-WebSocket-Protocol; conn:info().protocol
--                   is the server's choice ("" when none)
--     timeout       seconds for resolve + connect + TLS + upgrade (10)
--     max_message   bytes (16 MiB): a bigger message ends the connection,
--                   close 1009 sent, err "message too big: ..."
--     max_buffer    bytes of received messages not yet taken by receive
--                   (64 MiB). At half of it the connection stops reading its
--                   socket (backpressure: the server's sends block) until
--                   receive has taken it under a quarter; a message that
--                   would take it beyond max_buffer ends the connection with
--                   "slow consumer: ..." (close 1008). Also the bound on
--                   bytes sent but not yet written ("send buffer full").
--     ping_interval seconds between keepalive pings (20; 0: none)
--     ping_timeout  seconds: a ping after which nothing at all arrives for
--                   this long ends the connection, "dead peer: no pong
--                   within Ns" (20)
--     close_timeout seconds close() waits for the server's close frame (2)
--     ca_file       PEM file of the CAs to trust (default: the system's)
--     verify        false skips certificate and host name checks (true)
--     server_name   the name sent as SNI and verified (default: the host)
-- conn:receive([timeout]) -> data, "text" | "binary"
--   A whole message (fragments reassembled). nil, "timeout" after timeout
--   seconds (none: no limit; 0: only a message already there); the
--   connection stays usable. nil, err once it has ended: "closed: <code>
--   <reason>" after a close handshake (the reason, or the code's name:
--   "closed: 1000 normal"), else "connection reset", "connection lost:
--   ...", "dead peer: ...", "slow consumer: ...", "protocol error: ...",
--   "message too big: ...", "tls: ...". Messages received before the end
--   come first; after it every receive returns the same nil, err at once.
--   One task receives at a time (a second raises).
-- conn:send(data [, "text" | "binary"]) -> true | nil, err (text by default;
--   queued to the socket without waiting; nil, err once ended or when the
--   send buffer is full). Pings are answered with pongs by the library.
-- conn:close([code [, reason]]) -> true: the closing handshake (1000, ""),
--   waiting at most close_timeout for the server's close; messages not yet
--   received are dropped. Again: nothing, false. Outside a task (or where it
--   cannot wait) it starts the handshake and returns. Like a Redis client's,
--   a closed connection's calls do not raise: receive and send return
--   nil, err (the end reason), stats and info still answer.
-- conn:name() -> the url with credentials redacted (info().url).
-- conn:stats() -> { messages_in, bytes_in, messages_out, bytes_out,
--   buffered, queued, pings, pongs, pings_in, stalls, connected_at } (pings:
--   keepalive pings sent; pongs: received; pings_in: the server's pings;
--   stalls: times reading stopped for backpressure; connected_at: epoch s)
-- conn:info() -> { url (credentials redacted), state ("open" | "closing" |
--   "closed"), protocol, error (the end reason, when ended) }
--
-- Ownership: a connection belongs to the task that connected. When that task
-- ends (returns, fails, is killed) its open connections get the closing
-- handshake (1001, "closed: 1001 going away"; bounded, nobody waits for it);
-- an unreachable connection is closed and freed by the GC. The url
-- is not kept on the handle (it may hold a secret): info() has it redacted.
local sluice = require "sluice"
local core = require "sluice._ws"
local options = require "sluice.options"
local redact = require "sluice.redact"

local type, pairs, ipairs, tostring, error = type, pairs, ipairs, tostring, error
local concat = table.concat

local _M = {}

local Conn = {}
local mt = { __index = Conn }

local OPTIONS = {
  headers = { type = "table", values = "string|number" },
  protocols = { type = "table", items = "string" },
  timeout = { gt = 0 },
  max_message = { integer = true, min = 1 },
  max_buffer = { integer = true, min = 1 },
  ping_interval = { min = 0, finite = true },
  ping_timeout = { gt = 0 },
  close_timeout = { gt = 0 },
  ca_file = "string",
  verify = "boolean",
  server_name = "string",
}

-- Headers the upgrade itself writes, or that would break it.
local RESERVED = {
  host = true, upgrade = true, connection = true, ["sec-websocket-key"] = true,
  ["sec-websocket-version"] = true, ["sec-websocket-extensions"] = true,
  ["sec-websocket-protocol"] = true, ["content-length"] = true, ["transfer-encoding"] = true,
}

local function fail(fname, msg, level)
  error("sluice.ws." .. fname .. ": " .. msg, level or 3)
end

--- parse_url(url) -> {tls, host, port, path} | nil, err
function _M.parse_url(url)
  local scheme, rest = url:match("^(wss?)://(.*)$")
  if not scheme then return nil, "url must start with ws:// or wss://" end
  rest = rest:gsub("#.*$", "")
  local hostport, path = rest:match("^([^/?]*)(.*)$")
  if hostport:find("@", 1, true) then return nil, "url must not hold user info" end
  local host, port = hostport:match("^%[([%x:.]+)%]:?(%d*)$")
  if not host then host, port = hostport:match("^([^:%[%]]*):?(%d*)$") end
  if not host or host == "" then return nil, "url has no host" end
  local tls = scheme == "wss"
  port = port ~= "" and tonumber(port) or (tls and 443 or 80)
  if port < 1 or port > 65535 then return nil, "bad port" end
  if path == "" then path = "/" elseif path:sub(1, 1) == "?" then path = "/" .. path end
  if path:find("[%s%c]") then return nil, "url has spaces or control characters" end
  return { tls = tls, host = host, port = port, path = path }
end

local function header_block(headers)
  if not headers then return nil end
  local names = {}
  for k in pairs(headers) do
    if type(k) ~= "string" or not k:match("^[%w!#$%%&'*+.^_`|~-]+$") then
      fail("connect", "option 'headers' has a bad header name " .. options.value(k), 4)
    end
    if RESERVED[k:lower()] then
      fail("connect", "option 'headers' may not set " .. k .. " (the upgrade writes it)", 4)
    end
    names[#names + 1] = k
  end
  table.sort(names)
  local lines = {}
  for i, k in ipairs(names) do
    local v = tostring(headers[k])
    if v:find("[\r\n%z]") then fail("connect", "option 'headers." .. k .. "' holds a line break", 4) end
    lines[i] = k .. ": " .. v .. "\r\n"
  end
  return #lines > 0 and concat(lines) or nil
end

local function protocol_list(list)
  if not list or #list == 0 then return nil end
  for i, p in ipairs(list) do
    if not p:match("^[%w!#$%%&'*+.^_`|~-]+$") then
      fail("connect", "option 'protocols[" .. i .. "]' is not a token: " .. options.value(p), 4)
    end
  end
  return concat(list, ", ")
end

-- task -> weak set of the connections it made; a watcher task per owner
-- closes them when the owner ends (no connection outlives its task).
local owned = setmetatable({}, { __mode = "k" })
local cabort = core.abort

local function own(conn)
  local t = sluice.current()
  local set = owned[t]
  if not set then
    set = setmetatable({}, { __mode = "k" })
    owned[t] = set
    sluice.spawn(function()
      sluice.wait(t)
      owned[t] = nil
      for c in pairs(set) do cabort(c._c) end
    end)
  end
  set[conn] = true
end

--- connect(url, opts) -> conn | nil, err
function _M.connect(url, opts)
  if type(url) ~= "string" then
    fail("connect", "bad argument #1 'url' (string expected, got " .. type(url) .. ")")
  end
  options.check("sluice.ws.connect", opts, OPTIONS)
  opts = opts or {}
  local headers = header_block(opts.headers)
  local protocols = protocol_list(opts.protocols)
  local u, err = _M.parse_url(url)
  if not u then return nil, err end
  local ping_interval = opts.ping_interval or 20
  local c, cerr = core.connect(u.host, u.port, u.path, u.tls, headers, protocols,
    opts.timeout or 10, opts.max_message or 16 * 2 ^ 20, opts.max_buffer or 64 * 2 ^ 20,
    ping_interval, opts.ping_timeout or 20, opts.ca_file, opts.verify ~= false,
    opts.server_name)
  if not c then return nil, cerr end
  local conn = setmetatable({ _c = c, _url = redact.url(url),
    _close_timeout = opts.close_timeout or 2 }, mt)
  own(conn)
  return conn
end

local creceive, csend = core.receive, core.send

--- conn:receive([timeout]) -> data, kind | nil, err
function Conn:receive(timeout)
  if timeout ~= nil and (type(timeout) ~= "number" or not (timeout >= 0)) then
    fail("receive", "timeout must be a number >= 0, got " .. options.value(timeout))
  end
  return creceive(self._c, timeout)
end

--- conn:send(data [, kind]) -> true | nil, err
function Conn:send(data, kind)
  if type(data) ~= "string" then
    fail("send", "bad argument #1 'data' (string expected, got " .. type(data) .. ")")
  end
  if kind ~= nil and kind ~= "text" and kind ~= "binary" then
    fail("send", "kind must be 'text' or 'binary', got " .. options.value(kind))
  end
  return csend(self._c, data, kind == "binary")
end

-- Codes an endpoint may send (RFC 6455 7.4): 1000-1003, 1007-1014, 3000-4999.
local function sendable(code)
  return (code >= 1000 and code <= 1003) or (code >= 1007 and code <= 1014)
    or (code >= 3000 and code <= 4999)
end

--- conn:close([code [, reason]]) -> true, or false when already closed
function Conn:close(code, reason)
  code = code or 1000
  reason = reason or ""
  if type(code) ~= "number" or code % 1 ~= 0 or not sendable(code) then
    fail("close", "code must be 1000-1003, 1007-1014 or 3000-4999, got " .. options.value(code))
  end
  if type(reason) ~= "string" or #reason > 123 then
    fail("close", "reason must be a string of at most 123 bytes")
  end
  if self._closed then return false end
  self._closed = true
  return core.close(self._c, code, reason, self._close_timeout)
end

--- conn:name() -> the url, credentials redacted (as info().url)
function Conn:name()
  return self._url
end

--- conn:stats() -> a new table (see above)
function Conn:stats()
  return core.stats(self._c)
end

--- conn:info() -> { url, state, protocol, error }
function Conn:info()
  local i = core.info(self._c)
  i.url = self._url
  return i
end

mt.__tostring = function(self)
  return "websocket " .. self._url .. " (" .. core.info(self._c).state .. ")"
end

return _M
