--- sluice.sinks.rabbitmq: the RabbitMQ sink of the outbox (kind "rabbitmq").
--
--   sinks = { rabbitmq = { url = "amqp://user:pass@127.0.0.1:5672/%2f",
--                          exchange = "sluice", routing_key = "sluice.{table}" } }
--
-- Loading this module registers the kind with sluice.outbox (which loads
-- it by itself the first time a sink of kind "rabbitmq" is configured).
-- new(name, settings, ctx) -> sink; settings (besides the outbox's own):
--   url              amqp://user:password@host:port/vhost (required; see
--                    sluice.amqp: no path is the vhost "/"), amqps:// for TLS
--   ca_file, cert_file, key_file, verify
--                    TLS (amqps:// only), passed to sluice.amqp: the CAs
--                    to trust (default: the system's), a client certificate
--                    and its key, verify = false to check no certificate
--   exchange         the exchange messages go to (default "sluice")
--   exchange_type    its type when declared (default "topic")
--   declare          declare the exchange (durable) in ensure (default
--                    true); false: it is managed elsewhere and must exist
--   routing_key      template: {table} and {sink} are replaced (default
--                    "sluice.{table}")
--   mandatory        publish mandatory: a message no queue takes counts as
--                    a failure (default false: the broker drops it, as AMQP
--                    does for an exchange nothing is bound to)
--   connect_timeout  seconds (default 5)
--   timeout          seconds for a batch's confirms, and per broker answer
--                    (default 30)
--
-- One message per row: the body is the row as sluice.json writes it
-- (exact: int64 beyond 2^53, uint256 and decimals as the store keeps them,
-- keys sorted), persistent (delivery_mode 2), content_type
-- application/json, type = the table's name, app_id "sluice", and
-- message_id = the row's outbox id (meta.ids[i] of sink:write: the outbox
-- of this database, the chunk and the row's place in it): the same row
-- sent again (a batch retried after a crash or a failure) carries the same
-- id, so consumers drop re-sends by message_id; every row queued is a new
-- message, also one equal to an earlier one, and two sluice instances never
-- share an id. Called without meta (not through the outbox), message_id is
-- the hex SHA-256 of sink name, table name and body. sink:write publishes the batch and returns once the broker
-- confirmed every message (publisher confirms).
-- Verdicts: a row that cannot be written as JSON, or a message the broker
-- refuses for its size (406 on publish) -> "rejected" (the outbox
-- dead-letters the batch); a nack (the broker could not take a message: a
-- queue at its x-max-length with x-overflow reject-publish, a disk alarm,
-- ...), a mandatory message returned unroutable, no connection, a channel
-- closed (an exchange that does not exist), a timeout -> retried by the
-- outbox behind the sink's breaker: nothing is lost while the broker or its
-- configuration is fixed. A retried batch is published whole again:
-- consumers see some messages twice, with the same message_id.
-- sink:stats() -> {broker = "host:port/vhost" (the vhost percent-encoded:
-- "/" is "%2f"; never the user or password),
-- connected, batches, messages, nacked, returned, reconnects}.
local amqp = require "sluice.amqp"
local json = require "sluice.json"
local crypto = require "sluice.crypto"
local redact = require "sluice.redact"
local options = require "sluice.options"

local tostring, setmetatable, error = tostring, setmetatable, error
local encode, digest = json.encode, crypto.digest

local _M = {}
local Sink = {}
Sink.__index = Sink

local SETTINGS = {
  url = { type = "string", required = true },
  exchange = "string",
  exchange_type = { one_of = { "topic", "direct", "fanout", "headers" } },
  declare = "boolean",
  routing_key = "string",
  mandatory = "boolean",
  connect_timeout = { type = "number", gt = 0 },
  timeout = { type = "number", gt = 0 },
  ca_file = "string", cert_file = "string", key_file = "string", verify = "boolean",
}

function _M.new(name, settings, ctx)
  options.check("sinks." .. tostring(name), settings, SETTINGS, 2)
  local parts, err = amqp.parse_url(settings.url)
  if not parts then error("sinks." .. tostring(name) .. ": url: " .. err, 2) end
  -- the password, percent-encoded as written and decoded, never in a log line
  local pass = settings.url:match("^amqps?://[^/@]-:(.-)@")
  if pass then
    redact.register(pass)
    redact.register((pass:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)))
  end
  local conn
  conn, err = amqp.new { url = settings.url, connect_timeout = settings.connect_timeout or 5,
    timeout = settings.timeout or 30, queue_max = 2, ca_file = settings.ca_file, cert_file = settings.cert_file,
    key_file = settings.key_file, verify = settings.verify }
  if not conn then return nil, "rabbitmq: " .. err end
  return setmetatable({
    name = name, conn = conn, exchange = settings.exchange or "sluice",
    exchange_type = settings.exchange_type or "topic", declare = settings.declare ~= false,
    routing_key = settings.routing_key or "sluice.{table}", mandatory = settings.mandatory or false,
    broker = ("%s:%d/%s"):format(parts.host, parts.port,
      (parts.vhost:gsub("[^%w._~-]", function(ch) return ("%%%02x"):format(ch:byte()) end))), log = ctx and ctx.log,
    declared = false, keys = {}, batches = 0, messages = 0, nacked = 0, returned = 0,
  }, Sink)
end

-- The routing key of a table's messages.
function Sink:key_of(tname)
  local k = self.keys[tname]
  if not k then
    k = self.routing_key:gsub("{(%w+)}", function(w)
      if w == "table" then return tname end
      if w == "sink" then return self.name end
    end)
    self.keys[tname] = k
  end
  return k
end

function Sink:ensure(tname)
  self:key_of(tname)
  if not self.declare or self.declared then return true end
  local ok, err, kind = self.conn:declare { exchange = self.exchange, type = self.exchange_type, durable = true }
  if not ok then return nil, "rabbitmq: " .. err, kind end
  self.declared = true
  return true
end

--- message_id(sink, table, body) -> the id a row's message carries when
-- write is given no meta.ids.
function _M.message_id(sink, tname, body)
  return digest("sha256", sink .. "\0" .. tname .. "\0" .. body, "hex")
end

function Sink:write(tname, rows, _, meta)
  if #rows == 0 then return true end
  if self.declare and not self.declared then -- again after a channel error
    local ok, err, kind = self:ensure(tname)
    if not ok then return nil, err, kind end
  end
  local rk, msgs = self:key_of(tname), {}
  local ids = meta and meta.ids
  for i = 1, #rows do
    local body, err = encode(rows[i])
    if not body then return nil, "rabbitmq: row " .. i .. ": " .. tostring(err), "rejected" end
    msgs[i] = { routing_key = rk, body = body, type = tname,
      message_id = ids and ids[i] or _M.message_id(self.name, tname, body) }
  end
  local n, err, kind, confirmed, code = self.conn:publish(self.exchange, msgs, { mandatory = self.mandatory })
  if not n then
    if kind == "nack" then
      self.nacked = self.nacked + (#msgs - (confirmed or 0))
    elseif kind == "returned" then
      self.returned = self.returned + 1
    elseif kind == "server" and code == 406 then
      kind = "rejected" -- PRECONDITION_FAILED on publish: a message over the broker's size limit
    elseif kind == "server" then
      self.declared = false -- the exchange may have gone: declare it before the next batch
    end
    return nil, "rabbitmq: " .. err, kind
  end
  self.batches = self.batches + 1
  self.messages = self.messages + n
  return true
end

function Sink:stats()
  local st = self.conn:status()
  return {
    broker = self.broker, connected = st.connected, batches = self.batches, messages = self.messages,
    nacked = self.nacked, returned = self.returned, reconnects = st.connects > 0 and st.connects - 1 or 0,
  }
end

function Sink:close()
  self.conn:close()
end

require("sluice.outbox").register_kind("rabbitmq", _M.new)

return _M
