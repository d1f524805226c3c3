--- support.clickhouse: a private ClickHouse server on loopback ports, for specs.
--
--   local chs = require "support.clickhouse"
--   local srv = chs.start()          -- config into a temp dir, server started, /ping polled
--   srv:url()                         -- "http://127.0.0.1:PORT" (the HTTP interface)
--   srv:query("SELECT 1")             -- the body of a 200 response, or nil, body/err
--   srv:client("SELECT 1" [, stdin])  -- clickhouse-client on the TCP port: output, or nil, stderr
--   srv:stop(); srv:restart()         -- SIGTERM and wait for the exit / start again, same data
--   srv:shutdown()                    -- SIGKILL, wait, and remove the directory
--
-- Debian 12's clickhouse-server (18.16) runs as root with a config.xml and
-- users.xml generated into the temp dir: HTTP, TCP and interserver ports
-- chosen free, listening on 127.0.0.1 only, path, tmp_path, user_files and
-- the logs in the dir. Users: "default" without a password and "sluice"
-- with the password PASSWORD (for the sink's authentication). Readiness is
-- /ping answering "Ok." (polled, bounded: 60 s). start blocks the calling
-- task only between polls (sluice.sleep), stop while it waits for the exit.
local sluice = require "sluice"
local http = require "sluice.http"

local _M = { PASSWORD = "s3cret-ch" }

math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16) % 100000)

local function sh(cmd)
  local rc = os.execute(cmd)
  return rc == 0 or rc == true
end

local function capture(cmd)
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  return out
end

local function port_free(p)
  return not sh(("bash -c 'exec 3<>/dev/tcp/127.0.0.1/%d' 2>/dev/null"):format(p))
end

local function free_port(taken)
  for _ = 1, 100 do
    -- below the kernel's ephemeral range (32768-60999), which the
    -- machine's client sockets take from at any moment
    local p = math.random(20000, 32000)
    if not taken[p] and port_free(p) then
      taken[p] = true
      return p
    end
  end
  error("no free port found")
end

local CONFIG = [[<?xml version="1.0"?>
<yandex>
  <logger>
    <level>information</level>
    <log>%s/server.log</log>
    <errorlog>%s/server.err.log</errorlog>
    <size>100M</size>
    <count>1</count>
  </logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>%d</http_port>
  <tcp_port>%d</tcp_port>
  <interserver_http_port>%d</interserver_http_port>
  <interserver_http_host>127.0.0.1</interserver_http_host>
  <path>%s/data/</path>
  <tmp_path>%s/tmp/</tmp_path>
  <user_files_path>%s/user_files/</user_files_path>
  <format_schema_path>%s/format_schemas/</format_schema_path>
  <users_config>%s/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>67108864</mark_cache_size>
  <uncompressed_cache_size>67108864</uncompressed_cache_size>
  <max_concurrent_queries>50</max_concurrent_queries>
  <mlock_executable>false</mlock_executable>
</yandex>
]]

local USERS = [[<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>2000000000</max_memory_usage></default></profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
    <sluice>
      <password>%s</password>
      <networks><ip>127.0.0.1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </sluice>
  </users>
  <quotas><default></default></quotas>
</yandex>
]]

local Server = {}
Server.__index = Server

-- Whether process pid runs (a zombie left for a parent that does not reap
-- does not).
local function alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local stat = f:read("*a")
  f:close()
  return stat:match("^%d+ %b() (%a)") ~= "Z"
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

function _M.start()
  local dir = capture("mktemp -d /tmp/sluice-ch.XXXXXX"):match("%S+")
  assert(dir, "mktemp failed")
  local taken = {}
  local self = setmetatable({ dir = dir }, Server)
  write(dir .. "/users.xml", USERS:format(_M.PASSWORD))
  -- a port found free can be taken before the server binds it (other
  -- tests' servers start too): new ports, a few times
  for attempt = 1, 5 do
    self.http_port, self.tcp_port, self.inter_port = free_port(taken), free_port(taken), free_port(taken)
    write(dir .. "/config.xml", CONFIG:format(dir, dir, self.http_port, self.tcp_port, self.inter_port,
      dir, dir, dir, dir, dir))
    local ok, err = pcall(self._start, self)
    if ok then return self end
    local f = io.open(dir .. "/server.err.log")
    local log = f and f:read("*a") or ""
    if f then f:close() end
    if attempt == 5 or not log:find("Address already in use", 1, true) then error(err, 0) end
    os.remove(dir .. "/server.err.log")
  end
end

function Server:_start()
  local pid = capture(("cd %s && (clickhouse-server --config-file=%s/config.xml >>%s/stdout.log 2>&1 & echo $!)")
    :format(self.dir, self.dir, self.dir)):match("%d+")
  assert(pid, "clickhouse-server did not start")
  self.pid = pid
  local deadline = sluice.now() + 60
  while sluice.now() < deadline do
    local res = http.get(self:url() .. "/ping", { timeout = 2, connect_timeout = 1 })
    if res and res.status == 200 and res.body == "Ok.\n" then return true end
    if not alive(pid) then
      error("clickhouse-server exited (see " .. self.dir .. "/server.err.log)")
    end
    sluice.sleep(0.1)
  end
  error("clickhouse-server not ready in 60 s (see " .. self.dir .. "/server.err.log)")
end

function Server:url()
  return ("http://127.0.0.1:%d"):format(self.http_port)
end

--- query(sql [, body]) -> the response body of a 200, or nil, the error
function Server:query(sql, body)
  local url = self:url() .. "/"
  local opts = { timeout = 60 }
  if body then
    url = url .. "?" .. http.encode_query { query = sql }
    opts.body = body
  else
    opts.body = sql
  end
  local res, err = http.post(url, opts)
  if not res then return nil, err end
  if res.status ~= 200 then return nil, res.body end
  return res.body
end

--- client(sql [, stdin_file]) -> clickhouse-client's output, or nil, its stderr
function Server:client(sql, stdin_file)
  local err = os.tmpname()
  local out = capture(("clickhouse-client --host 127.0.0.1 --port %d --query %q %s 2>%s")
    :format(self.tcp_port, sql, stdin_file and ("< " .. stdin_file) or "", err))
  local f = io.open(err)
  local e = f:read("*a")
  f:close()
  os.remove(err)
  if e:match("%S") then return nil, e end
  return out
end

--- stop([signal]): SIGTERM (or signal, "KILL"), then waits (bounded: 60 s,
-- then SIGKILL) for the exit. 18.16 takes a few seconds to stop on TERM.
function Server:stop(signal)
  if not self.pid then return true end
  sh("kill -" .. (signal or "TERM") .. " " .. self.pid .. " 2>/dev/null")
  local deadline = sluice.now() + 60
  local killed = false
  while alive(self.pid) do
    if sluice.now() > deadline then
      assert(not killed, "clickhouse-server " .. self.pid .. " survived SIGKILL")
      sh("kill -KILL " .. self.pid .. " 2>/dev/null")
      killed, deadline = true, sluice.now() + 10
    end
    sluice.sleep(0.05)
  end
  self.pid = nil
  return true
end

function Server:restart()
  return self:_start()
end

function Server:shutdown()
  self:stop("KILL")
  sh("rm -rf " .. self.dir)
end

return _M
