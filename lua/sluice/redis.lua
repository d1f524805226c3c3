--- sluice.redis: an async Redis client for tasks, on hiredis and the loop.
--
--   local red = redis.connect{ url = "redis://:secret@127.0.0.1:6379/2" }
--   local ok, err = red:call("SET", "k", 42)
--   local v = red:call("GET", "k")            --> "42"
--
-- connect{url=, password=, connect_timeout=2, command_timeout=5} returns a
-- client at once; the connection (then AUTH and SELECT) is made in the
-- background and the first calls wait for it up to connect_timeout. The host
-- should be an IP literal ("localhost" means 127.0.0.1): any other name is
-- resolved by hiredis with a blocking getaddrinfo on the loop thread.
--
-- client:call(cmd, ...) must run in a task; it yields until the reply:
--   status, bulk -> string; integer -> number; nil -> nil;
--   array -> table, nested, where a nil element is `redis.null` (a NULL light
--   userdata, the same value as cjson.null) and an error element is
--   {err = "ERR ..."};
--   error reply -> nil, "ERR ..."; no reply within command_timeout ->
--   nil, "timeout"; no connection -> nil, "disconnected" (at once: calls
--   never wait for a reconnect); after close -> nil, "closed".
-- Calls from many tasks share the connection and are pipelined by hiredis.
-- client:pipeline(cmds) sends a list of commands ({ {"SET", "a", 1}, ... })
-- together and returns a list of {value} or {false, err}, one per command
-- (or nil, err when nothing could be sent or the batch timed out).
-- client:eval_script(source, keys, args) runs a Lua script by EVALSHA (the
-- SHA1 is obtained once per client with SCRIPT LOAD), falling back to EVAL
-- on NOSCRIPT.
-- The client reconnects by itself with jittered exponential backoff (0.1 s
-- doubling to 5 s); calls in flight when the connection drops get
-- nil, "disconnected". client:status() -> "connecting" | "connected" |
-- "disconnected" | "closed"; client:info() adds in_flight, reconnects and
-- last_error; client:close() is idempotent (and done by __gc).
local core = require "sluice._redis"

local _M = { null = core.null }

local Client = {}
local mt = { __index = Client }

local OPTIONS = {
  url = "string", password = "string", connect_timeout = "number", command_timeout = "number",
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
  if host == "localhost" then host = "127.0.0.1" end
  port = port ~= "" and tonumber(port) or 6379
  if port < 1 or port > 65535 then return nil, "bad port" end
  local db = 0
  if path ~= "" and path ~= "/" then
    db = tonumber(path:match("^/(%d+)$"))
    if not db then return nil, "bad database number in url" end
  end
  return { host = host, port = port, db = db, password = password }
end

--- connect(opts) -> client
function _M.connect(opts)
  if type(opts) ~= "table" then fail("connect", "options table expected") end
  for k, v in pairs(opts) do
    local want = OPTIONS[k]
    if not want then fail("connect", "unknown option '" .. tostring(k) .. "'") end
    if type(v) ~= want then fail("connect", "option '" .. k .. "' must be a " .. want) end
  end
  local u, err = _M.parse_url(opts.url or "redis://127.0.0.1:6379/0")
  if not u then fail("connect", err) end
  local ct, cmdt = opts.connect_timeout or 2, opts.command_timeout or 5
  if not (ct > 0) then fail("connect", "connect_timeout must be > 0") end
  if not (cmdt > 0) then fail("connect", "command_timeout must be > 0") end
  local c = core.connect(u.host, u.port, u.db, opts.password or u.password, ct, cmdt)
  return setmetatable({ _c = c, _sha = {} }, mt)
end

local ccall, cpipeline = core.call, core.pipeline

--- client:call(cmd, ...) -> reply | nil, err
function Client:call(...)
  return ccall(self._c, ...)
end

local function arg_string(v, fname)
  local tv = type(v)
  if tv == "string" then return v end
  if tv == "number" then
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return string.format("%d", v) end
    return string.format("%.17g", v)
  end
  fail(fname, "command arguments must be strings or numbers, got " .. tv)
end

--- client:pipeline(cmds) -> { {value} | {false, err}, ... } | nil, err
function Client:pipeline(cmds)
  if type(cmds) ~= "table" or #cmds == 0 then fail("pipeline", "non-empty list of commands expected") end
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

function Client:status() return core.status(self._c) end
function Client:info() return core.info(self._c) end
function Client:close() core.close(self._c) end
mt.__tostring = function(self) return tostring(self._c) end

return _M
