--- sluice.redis: an async Redis client for tasks, on hiredis and the loop.
--
--   local red = redis.connect{ url = "redis://:secret@127.0.0.1:6379/2" }
--   local ok, err = red:call("SET", "k", 42)
--   local v = red:call("GET", "k")            --> "42"
--
-- connect{url=, password=, connect_timeout=2, command_timeout=5, name=}
-- returns a client at once; the connection (then AUTH and SELECT) is made in
-- the background and the first calls wait for it up to connect_timeout. A
-- url that does not parse is data from a configuration, not a programming
-- error: connect returns nil, err ("url must start with redis://", "url has
-- no host", "bad port", "bad database number in url"); a missing or
-- non-table argument, an unknown option, an option of the wrong type or a
-- timeout <= 0 raises (options are checked by sluice.options). The host
-- is an IP literal or a name. A name is resolved without blocking the loop
-- (libevent's evdns: /etc/hosts, then the nameservers of /etc/resolv.conf,
-- both read once, when the first name is resolved) on every connection
-- attempt, reconnects included; the client connects to the first IPv4
-- address, else the first IPv6 one ("localhost" -> 127.0.0.1 from
-- /etc/hosts). connect_timeout covers resolution and connection. Calls
-- waiting for the first connection get nil, "dns: cannot resolve 'name': ..."
-- when the name does not resolve, nil, "timeout" when connect_timeout
-- passes (info().last_error then says "dns: resolving 'name' timed out"),
-- and the client keeps retrying as below.
--
-- client:call(cmd, ...) must run in a task; it yields until the reply:
--   status, bulk -> string; integer -> number within +-(2^53-1), int64_t
--   cdata beyond (exact); nil -> nil;
--   array -> table, nested, where a nil element is `redis.null` (a NULL light
--   userdata, the same value as cjson.null) and an error element is
--   {err = "ERR ..."};
--   error reply -> nil, "ERR ..."; no reply within command_timeout ->
--   nil, "timeout"; no connection -> nil, "disconnected" (at once: calls
--   never wait for a reconnect); after close -> nil, "closed".
-- Command arguments are strings, numbers, int64_t/uint64_t cdata (sent as
-- their digits) or sluice.json numerals (their text); a number is sent as
-- sluice.json.number writes it (0.1 -> "0.1", 2^53 -> "9007199254740992"),
-- except -0, sent as "0" (Redis refuses "-0" as an integer), and nan, inf
-- and -inf, sent as "nan", "inf", "-inf".
-- Calls from many tasks share the connection and are pipelined by hiredis.
-- client:pipeline(cmds) sends a list of commands ({ {"SET", "a", 1}, ... })
-- together and returns a list of {value} or {false, err}, one per command
-- (or nil, err when nothing could be sent or the batch timed out).
-- client:pipeline(function(p) p:call("SET", "a", 1); p:call("GET", "a") end)
-- is the same with the list built by the function: p:call queues a command
-- (checked at once) and returns its index in the results; the batch is sent
-- when the function returns. Queuing nothing, or p:call after that, raises.
-- client:eval_script(source, keys, args) runs a Lua script by EVALSHA (the
-- SHA1 is obtained once per client with SCRIPT LOAD), falling back to EVAL
-- on NOSCRIPT.
-- The client reconnects by itself with jittered exponential backoff (0.1 s
-- doubling to 5 s); calls in flight when the connection drops get
-- nil, "disconnected". client:status() -> "connecting" | "connected" |
-- "disconnected" | "closed" (resolving counts as "connecting");
-- client:info() adds in_flight, reconnects, last_error, host, port and
-- address (the numeric address of the last attempt, "" when the name did not
-- resolve); client:close() is idempotent (and done by __gc) and cancels a
-- resolution under way.
-- The option _nameserver = "ip[:port]" is for tests: that client resolves
-- with that one nameserver and without /etc/hosts.
--
-- The handle: client:name() is the name option, by default the url without
-- its password ("redis://127.0.0.1:6379/0"). client:stats() is a new plain
-- table: info() (status, in_flight, reconnects, last_error, host, port,
-- address) and name. client:close() -> true, or false when it was already
-- closed. Unlike other handles, a closed client does not raise: its calls
-- return nil, "closed" (a client is shared by tasks, and one may close it
-- while another calls: an operational outcome, not a misuse).
-- Calls that yield (must run in a task): call, pipeline, eval_script,
-- subscribe, psubscribe, sub:receive.
--
-- Pub/sub: client:subscribe(channel, ... [, {max_pending = 1000}]) and
-- client:psubscribe(pattern, ... [, opts]) open a dedicated connection
-- (RESP2 allows no other command on a subscribed one), yield until Redis
-- has confirmed every channel or pattern (at most connect_timeout +
-- command_timeout) and return a subscription, or nil, err. sub:receive(
-- [timeout]) yields until a message: {kind = "message", channel, payload} or
-- {kind = "pmessage", pattern, channel, payload}; nil, "timeout" after
-- timeout seconds (none: no limit; 0: only what is already there);
-- nil, "closed" once closed. One task receives at a time. Messages not yet
-- received wait in a queue of at most max_pending; when it is full the
-- oldest is dropped and counted in sub:info().dropped (with subscribed,
-- pending, received and the client fields). The connection reconnects like
-- a client's and subscribes again; messages published while it is down are
-- lost. sub:unsubscribe() and sub:close() (the same; idempotent, also done
-- by __gc and by client:close(); true, or false when it was already closed)
-- end it and wake a waiting receiver with nil, "closed". sub:name() is its
-- client's name, sub:stats() its info() with name. A subscription is
-- anchored only while a task waits on it; killing the task that is
-- subscribing closes it at once. A closed client
-- subscribes to nothing: nil, "closed". call() and
-- pipeline() refuse SUBSCRIBE, PSUBSCRIBE, their UNSUBSCRIBEs and MONITOR.
local core = require "sluice._redis"
local redact = require "sluice.redact"
local json = require "sluice.json"
local options = require "sluice.options"

local _M = { null = core.null }

local Client = {}
local mt = { __index = Client }

local OPTIONS = {
  url = "string", password = "string", connect_timeout = { gt = 0 }, command_timeout = { gt = 0 },
  name = "string", _nameserver = "string",
}

local function fail(fname, msg)
  error("sluice.redis." .. fname .. ": " .. msg, 3)
end

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

--- parse_url(url) -> {host, port, db, password} | nil, err
-- redis://[[user]:password@]host[:port][/db]; host may be [ipv6].
function _M.parse_url(url)
  local rest = url:match("^redis://(.*)$")
  if not rest then return nil, "url must start with redis://" end
  local password
  local auth, after = rest:match("^([^@/]*)@(.*)$")
  if auth then
    rest = after
    password = auth:match("^[^:]*:(.*)$")
    if password then password = unescape(password) elseif auth ~= "" then password = unescape(auth) end
    if password == "" then password = nil end
  end
  local hostport, path = rest:match("^([^/]*)(.*)$")
  local host, port = hostport:match("^%[(.+)%]:?(%d*)$")
  if not host then host, port = hostport:match("^([^:]*):?(%d*)$") end
  if not host or host == "" then return nil, "url has no host" end
  port = port ~= "" and tonumber(port) or 6379
  if port < 1 or port > 65535 then return nil, "bad port" end
  local db = 0
  if path ~= "" and path ~= "/" then
    db = tonumber(path:match("^/(%d+)$"))
    if not db then return nil, "bad database number in url" end
  end
  return { host = host, port = port, db = db, password = password }
end

--- connect(opts) -> client | nil, err (a url that does not parse)
function _M.connect(opts)
  if type(opts) ~= "table" then
    fail("connect", "bad argument #1 'opts' (table expected, got " .. type(opts) .. ")")
  end
  options.check("sluice.redis.connect", opts, OPTIONS)
  local ct, cmdt = opts.connect_timeout or 2, opts.command_timeout or 5
  local u, err = _M.parse_url(opts.url or "redis://127.0.0.1:6379/0")
  if not u then return nil, err end
  redact.register(opts.password or u.password) -- never in a log line
  local args = { u.host, u.port, u.db, opts.password or u.password, ct, cmdt, opts._nameserver }
  local c = core.connect(unpack(args, 1, 7))
  local host = u.host:find(":", 1, true) and "[" .. u.host .. "]" or u.host
  local name = opts.name or ("redis://%s:%d/%d"):format(host, u.port, u.db)
  return setmetatable({ _c = c, _sha = {}, _args = args, _name = name,
    _subs = setmetatable({}, { __mode = "k" }) }, mt)
end

local ccall, cpipeline = core.call, core.pipeline

--- client:call(cmd, ...) -> reply | nil, err
function Client:call(...)
  return ccall(self._c, ...)
end

-- A command argument as text: a number as sluice.json.number writes it,
-- but -0 as "0" (Redis' integer parser refuses "-0") and nan, inf, -inf as
-- Redis' float parser reads them; int64_t/uint64_t cdata and json numerals
-- by their digits (the C binding's call() writes the same).
local function to_arg(v)
  local tv = type(v)
  if tv == "string" then return v end
  if tv == "number" then
    if v == 0 then return "0" end
    return json.number(v) or (v ~= v and "nan" or (v > 0 and "inf" or "-inf"))
  end
  return json.int64_text(v) or json.numeral_text(v)
end

local ARG_TYPES = "strings, numbers, int64_t/uint64_t cdata or json numerals"

local function arg_string(v, fname)
  local s = to_arg(v)
  if not s then fail(fname, "command arguments must be " .. ARG_TYPES .. ", got " .. type(v)) end
  return s
end

-- The p of client:pipeline(function(p) ... end): collects the commands.
local Batch = {}
local batch_mt = { __index = Batch }

--- p:call(cmd, ...) -> index of the command in the results
function Batch:call(...)
  if getmetatable(self) ~= batch_mt then fail("pipeline", "use p:call(...), not p.call(...)") end
  if self._sent then fail("pipeline", "p:call after the pipeline was sent") end
  local n = select("#", ...)
  if n == 0 then fail("pipeline", "p:call needs a command") end
  local cmd = { ... }
  for i = 1, n do
    local s = to_arg(cmd[i])
    if not s then
      fail("pipeline", "command arguments must be " .. ARG_TYPES .. ", got " .. type(cmd[i]))
    end
    cmd[i] = s
  end
  local cmds = self._cmds
  cmds[#cmds + 1] = cmd
  return #cmds
end

local function build(fn)
  local p = setmetatable({ _cmds = {}, _sent = false }, batch_mt)
  fn(p)
  p._sent = true
  return p._cmds
end

--- client:pipeline(cmds | fn) -> { {value} | {false, err}, ... } | nil, err
function Client:pipeline(cmds)
  if type(cmds) == "function" then
    local list = build(cmds)
    if #list == 0 then fail("pipeline", "the function queued no commands") end
    return cpipeline(self._c, list)
  end
  if type(cmds) ~= "table" or #cmds == 0 then
    fail("pipeline", "a function or a non-empty list of commands expected")
  end
  local norm = {}
  for i = 1, #cmds do
    local cmd = cmds[i]
    if type(cmd) ~= "table" or #cmd == 0 then fail("pipeline", "command #" .. i .. " must be a non-empty list") end
    local out = {}
    for j = 1, #cmd do out[j] = arg_string(cmd[j], "pipeline") end
    norm[i] = out
  end
  return cpipeline(self._c, norm)
end

local function list_of(t, what)
  if t == nil then return {} end
  if type(t) ~= "table" then fail("eval_script", what .. " must be a list") end
  return t
end

--- client:eval_script(source, keys, args) -> reply | nil, err
function Client:eval_script(source, keys, args)
  if type(source) ~= "string" then fail("eval_script", "script source expected") end
  keys, args = list_of(keys, "keys"), list_of(args, "args")
  local tail = { #keys }
  for i = 1, #keys do tail[#tail + 1] = arg_string(keys[i], "eval_script") end
  for i = 1, #args do tail[#tail + 1] = arg_string(args[i], "eval_script") end
  local sha = self._sha[source]
  if not sha then
    local err
    sha, err = ccall(self._c, "SCRIPT", "LOAD", source)
    if not sha then return nil, err end
    self._sha[source] = sha
  end
  local res, err = ccall(self._c, "EVALSHA", sha, unpack(tail))
  if res == nil and err and err:find("^NOSCRIPT") then
    return ccall(self._c, "EVAL", source, unpack(tail))
  end
  return res, err
end

-- The subscription of client:subscribe/psubscribe.
local Subscription = {}
local sub_mt = { __index = Subscription }
local SUB_OPTIONS = { max_pending = { integer = true, min = 1 } }

local function subscribe(self, fname, ...)
  if getmetatable(self) ~= mt then fail(fname, "use client:" .. fname .. "(...)") end
  local names, n = { ... }, select("#", ...)
  local opts = {}
  if type(names[n]) == "table" then
    opts = names[n]
    names[n] = nil
    n = n - 1
    options.check("sluice.redis." .. fname, opts, SUB_OPTIONS)
  end
  if n == 0 then fail(fname, (fname == "subscribe" and "a channel" or "a pattern") .. " expected") end
  local max = opts.max_pending or 1000
  local list, seen = {}, {}
  for i = 1, n do
    if type(names[i]) ~= "string" then fail(fname, "names must be strings, got " .. type(names[i])) end
    if not seen[names[i]] then
      seen[names[i]] = true
      list[#list + 1] = names[i]
    end
  end
  if core.status(self._c) == "closed" then return nil, "closed" end
  local a = self._args
  local ch, pat = {}, {}
  if fname == "subscribe" then ch = list else pat = list end
  local c, err, made = core.subscribe(a[1], a[2], a[3], a[4], a[5], a[6], a[7], ch, pat, max)
  if not c then
    if made then core.close(made) end
    return nil, err
  end
  local sub = setmetatable({ _c = c, _name = self._name }, sub_mt)
  self._subs[sub] = true
  return sub
end

--- client:subscribe(channel, ... [, opts]) -> subscription | nil, err
function Client:subscribe(...) return subscribe(self, "subscribe", ...) end

--- client:psubscribe(pattern, ... [, opts]) -> subscription | nil, err
function Client:psubscribe(...) return subscribe(self, "psubscribe", ...) end

local creceive = core.receive

--- sub:receive([timeout]) -> message | nil, "timeout" | nil, "closed"
function Subscription:receive(timeout)
  if getmetatable(self) ~= sub_mt then fail("receive", "use sub:receive(...)") end
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0 or timeout ~= timeout) then
    fail("receive", "timeout must be a number >= 0")
  end
  return creceive(self._c, timeout)
end

-- info() with the handle's name: the stats() of clients and subscriptions.
local function stats(self)
  local s = core.info(self._c)
  s.name = self._name
  return s
end

function Subscription:close()
  if core.status(self._c) == "closed" then return false end
  core.close(self._c)
  return true
end
Subscription.unsubscribe = Subscription.close
function Subscription:status() return core.status(self._c) end
function Subscription:info() return core.info(self._c) end
function Subscription:name() return self._name end
Subscription.stats = stats
sub_mt.__tostring = function(self) return tostring(self._c) end

function Client:status() return core.status(self._c) end
function Client:info() return core.info(self._c) end
function Client:name() return self._name end
Client.stats = stats
function Client:close()
  local was_open = core.status(self._c) ~= "closed"
  core.close(self._c)
  for sub in pairs(self._subs) do sub:close() end
  return was_open
end
mt.__tostring = function(self) return tostring(self._c) end

return _M
