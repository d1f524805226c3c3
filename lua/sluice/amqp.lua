--- sluice.amqp: RabbitMQ (AMQP 0-9-1) for tasks: publish with confirms, declare, consume.
--
--   local amqp = require "sluice.amqp"
--   local conn, err, kind = amqp.connect{ url = "amqp://guest:guest@127.0.0.1:5672/%2f" }
--   conn:declare{ exchange = "sluice", type = "topic", durable = true }
--   local n, err, kind = conn:publish("sluice", {
--     { routing_key = "sluice.trades", body = '{"id":1}', message_id = "a1", type = "trades" },
--   })                                       --> 1 (confirmed by the broker)
--   conn:close()
--
-- rabbitmq-c (Debian's librabbitmq) is a blocking client, so each
-- connection has a worker thread that owns it (runtime/core/amqp_client.c);
-- the loop only queues operations (at most queue_max per connection) and is
-- handed each result. connect, declare, publish and consume yield the
-- calling task (they must run in one) until the worker finished. No
-- operation outlives its task: a task killed while it waits has its
-- operation abandoned (not run, or stopped at its next wait with the
-- connection dropped) and is never resumed.
--
-- amqp.connect{url=, connect_timeout=5, timeout=30, queue_max=8,
--              ca_file=, cert_file=, key_file=, verify=true} -> conn | nil, err, kind
--   url: amqp://user:password@host:port/vhost (percent-encoded; the vhost
--   "/" is %2f; an empty path is "/"), or amqps://... for TLS (port 5671
--   by default). Connects, logs in, opens a channel in confirm mode.
--   timeout bounds each broker answer and a publish's wait for its
--   confirms.
--   TLS (amqps:// only; misuse raises): the broker's certificate chain is
--   checked against ca_file (PEM), or the system's trust store without
--   one, and its host name against the URL's host (a DNS name or an IP
--   address), during the handshake. cert_file and key_file (PEM, the key
--   not encrypted; together): a client certificate. verify = false (only
--   when given) checks neither, and logs a warning once, when the handle
--   is made. The files are read by the worker thread at each connect. A
--   failed check is an error of kind "closed" naming it: "connect to
--   HOST:PORT: TLS: certificate verify failed: self-signed certificate in
--   certificate chain (its CA is not in ca_file)", "...: hostname
--   mismatch: the certificate does not name HOST", "TLS: ca_file PATH: No
--   such file or directory", "login: a SSL error occurred (tlsv13 alert
--   certificate required)" or "... (the broker reset the connection)" (the
--   broker wants a client certificate, or another one).
-- amqp.new{...} -> conn | nil, err: the same without connecting (the first
--   operation connects).
-- conn:declare{exchange=, type=, durable=, queue=, binding_key=, arguments=}
--   -> true | nil, err, kind, code
--   Declares the exchange when type is given ("topic", "direct", "fanout",
--   "headers"), and the queue when given, bound to exchange with
--   binding_key; arguments = {["x-max-length"] = 10, ["x-overflow"] =
--   "reject-publish", ...} (integers or strings). code: the broker's reply
--   code of a refusal (406: declared before with other settings).
-- conn:publish(exchange, messages [, {mandatory=, timeout=}]) -> confirmed | nil, err, kind, confirmed
--   messages: a list of {routing_key=, body=, message_id=, type=}; each is
--   sent persistent (delivery_mode 2), content_type application/json,
--   app_id "sluice". Returns once the broker confirmed every one.
--   Failure kinds: "nack" (the broker refused some: confirmed counts the
--   rest), "returned" (mandatory and unroutable: no queue bound),
--   "server" (the broker closed the channel: an unknown exchange, ...),
--   "closed" (no connection or it was lost), "timeout" (confirms did not
--   come in time), "busy" (queue_max operations pending). After any
--   failure but nack and returned the connection was dropped; the next
--   operation connects again.
-- conn:consume(queue, max, wait) -> messages | nil, err, kind
--   Up to max messages of queue (waiting at most wait seconds for the
--   first), each acknowledged once received: {body, routing_key,
--   message_id, type, content_type, delivery_mode, redelivered}. {} when
--   none came. A confirming consumer for tests and tools (prefetch 1000).
-- conn:status() -> {connected, pending, connects}
-- conn:close() is idempotent (and done by __gc); tasks waiting on it get
--   nil, "connection closed", "closed".
-- amqp.parse_url(url) -> {host, port, user, vhost, tls} | nil, err: never
--   the password (for display); tls: an amqps:// URL.
-- Errors never quote the URL.
local native = require "sluice._amqp"
local options = require "sluice.options"
local log = require "sluice.log"

local type, error, setmetatable, pairs, sort = type, error, setmetatable, pairs, table.sort

local _M = {}
local Conn = {}
Conn.__index = Conn

local NEW = {
  url = { type = "string", required = true },
  connect_timeout = { type = "number", gt = 0 },
  timeout = { type = "number", gt = 0 },
  queue_max = { integer = true, min = 1 },
  ca_file = "string",
  cert_file = "string",
  key_file = "string",
  verify = "boolean",
}
local DECLARE = {
  exchange = "string", type = "string", durable = "boolean", queue = "string",
  binding_key = "string", arguments = "table",
}
local PUBLISH = { mandatory = "boolean", timeout = { type = "number", gt = 0 } }

-- The TLS options of opts for native.new (nil: none); misuse raises,
-- blaming the caller of fname.
local function tls_of(fname, opts)
  if opts.ca_file == nil and opts.cert_file == nil and opts.key_file == nil and opts.verify == nil then
    return nil
  end
  if not opts.url:find("^amqps://") then
    error(fname .. ": ca_file, cert_file, key_file and verify need an amqps:// URL", 3)
  end
  if (opts.cert_file == nil) ~= (opts.key_file == nil) then
    error(fname .. ": cert_file and key_file go together (a client certificate and its key)", 3)
  end
  return { ca_file = opts.ca_file, cert_file = opts.cert_file, key_file = opts.key_file, verify = opts.verify }
end

local function make(opts, tls)
  local h, err = native.new(opts.url, opts.connect_timeout or 5, opts.timeout or 30, opts.queue_max or 8, 0, tls)
  if not h then return nil, err end
  if opts.verify == false then
    local host, port = native.parse_url(opts.url)
    log.warning("sluice.amqp: TLS verification is off (verify = false): the broker's certificate and host name"
      .. " are not checked", { broker = host .. ":" .. port })
  end
  return setmetatable({ h = h }, Conn)
end

function _M.new(opts)
  options.check("sluice.amqp.new", opts, NEW, 2)
  return make(opts, tls_of("sluice.amqp.new", opts))
end

function _M.connect(opts)
  options.check("sluice.amqp.connect", opts, NEW, 2)
  local c, err = make(opts, tls_of("sluice.amqp.connect", opts))
  if not c then return nil, err, "connect" end
  local ok, kind
  ok, err, kind = c.h:connect()
  if not ok then
    c:close()
    return nil, err, kind
  end
  return c
end

function _M.parse_url(url)
  if type(url) ~= "string" then error("sluice.amqp.parse_url: bad argument #1 (string expected)", 2) end
  local host, port, user, vhost, tls = native.parse_url(url)
  if not host then return nil, port end
  return { host = host, port = port, user = user, vhost = vhost, tls = tls }
end

function Conn:declare(opts)
  options.check("sluice.amqp declare", opts, DECLARE, 2)
  if opts.queue == nil and opts.type == nil then
    error("sluice.amqp declare: type (an exchange) or queue expected", 2)
  end
  local args = {}
  if opts.arguments then
    for k, v in pairs(opts.arguments) do
      if type(k) ~= "string" or (type(v) ~= "string" and type(v) ~= "number") then
        error("sluice.amqp declare: arguments: string keys and number or string values expected", 2)
      end
      args[#args + 1] = { k, v }
    end
    sort(args, function(a, b) return a[1] < b[1] end)
  end
  return self.h:declare {
    exchange = opts.exchange or "", type = opts.type, durable = opts.durable ~= false,
    queue = opts.queue, binding_key = opts.binding_key or "", args = args,
  }
end

function Conn:publish(exchange, messages, opts)
  if type(exchange) ~= "string" then error("sluice.amqp publish: bad argument #1 (exchange name expected)", 2) end
  if type(messages) ~= "table" then error("sluice.amqp publish: bad argument #2 (list of messages expected)", 2) end
  opts = opts or {}
  options.check("sluice.amqp publish", opts, PUBLISH, 2)
  for i = 1, #messages do
    local m = messages[i]
    if type(m) ~= "table" or type(m.body) ~= "string" or type(m.routing_key) ~= "string"
      or (m.message_id ~= nil and type(m.message_id) ~= "string") or (m.type ~= nil and type(m.type) ~= "string") then
      error("sluice.amqp publish: message " .. i .. ": {routing_key = string, body = string,"
        .. " message_id = string?, type = string?} expected", 2)
    end
  end
  return self.h:publish(exchange, messages, #messages, opts.mandatory or false, opts.timeout)
end

function Conn:consume(queue, max, wait)
  if type(queue) ~= "string" then error("sluice.amqp consume: bad argument #1 (queue name expected)", 2) end
  if type(max) ~= "number" or max < 1 or max % 1 ~= 0 then
    error("sluice.amqp consume: bad argument #2 (a count >= 1 expected)", 2)
  end
  if type(wait) ~= "number" or wait < 0 then error("sluice.amqp consume: bad argument #3 (seconds expected)", 2) end
  return self.h:consume(queue, max, wait)
end

function Conn:status()
  local connected, pending, connects = self.h:status()
  return { connected = connected, pending = pending, connects = connects }
end

function Conn:close()
  self.h:close()
end

return _M
