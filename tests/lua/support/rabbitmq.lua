--- support.rabbitmq: a private RabbitMQ broker on loopback ports, for specs.
--
--   local rmq = require "support.rabbitmq"
--   local srv = rmq.start()          -- a node in a temp dir, ready to take connections
--   srv:url()                        -- "amqp://guest:guest@127.0.0.1:PORT"
--   srv:stop(); srv:restart()        -- stop the node (kill -9 with hard = true) / start it again, same data
--   srv:shutdown()                   -- stop it and remove the directory
--
-- Debian's rabbitmq-server 3.10 run directly (/usr/lib/rabbitmq/bin, not the
-- /usr/sbin wrapper that switches to the rabbitmq user): as root that works
-- once HOME is the temp dir (the Erlang cookie is written there). The node is
-- sluice-test-<port>@localhost; its AMQP port and distribution port are free
-- loopback ports; mnesia, logs, config, plugins file and pid file live in the
-- temp dir. epmd (Erlang's port mapper) is started by the first node and
-- shared, as Erlang intends. Readiness: an AMQP login (sluice.amqp) polled
-- from the calling task, bounded (a node boots in a few seconds).
local amqp = require "sluice.amqp"
local within = require("support.wait").within

local _M = {}

math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16) % 100000)

local BIN = "/usr/lib/rabbitmq/bin/"

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

local Server = {}
Server.__index = Server

function _M.start()
  local dir = capture("mktemp -d /tmp/sluice-rmq.XXXXXX"):match("%S+")
  assert(dir, "mktemp failed")
  for _ = 1, 20 do
    local port = math.random(20000, 40999)
    local dist = port + 20000
    if port_free(port) and port_free(dist) then
      local self = setmetatable({ dir = dir, port = port, dist = dist,
        node = ("sluice-test-%d@localhost"):format(port) }, Server)
      local f = assert(io.open(dir .. "/rabbitmq.conf", "w"))
      f:write(("listeners.tcp.1 = 127.0.0.1:%d\ndisk_free_limit.absolute = 1MB\n"):format(port))
      f:close()
      f = assert(io.open(dir .. "/enabled_plugins", "w"))
      f:write("[].\n")
      f:close()
      if self:_start() then return self end
      self:stop(true)
    end
  end
  error("could not start rabbitmq-server (see " .. dir .. "/server.log)")
end

function Server:env()
  local d = self.dir
  return ("HOME=%s RABBITMQ_NODENAME=%s RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=%d"
    .. " RABBITMQ_DIST_PORT=%d RABBITMQ_MNESIA_BASE=%s/mnesia RABBITMQ_LOG_BASE=%s/log"
    .. " RABBITMQ_CONFIG_FILE=%s/rabbitmq.conf RABBITMQ_ENABLED_PLUGINS_FILE=%s/enabled_plugins"
    .. " RABBITMQ_PID_FILE=%s/pid"):format(d, self.node, self.port, self.dist, d, d, d, d, d)
end

-- Starts the node and waits (bounded) until it takes an AMQP login.
function Server:_start()
  os.remove(self.dir .. "/pid")
  local cmd = ("env %s setsid %srabbitmq-server >>%s/server.log 2>&1 </dev/null &"):format(self:env(), BIN, self.dir)
  if not sh(cmd) then
    return false
  end
  return within(60, function()
    local c = amqp.connect { url = self:url(), connect_timeout = 1, timeout = 5 }
    if not c then return false end
    c:close()
    return true
  end, 0.2)
end

function Server:url()
  return ("amqp://guest:guest@127.0.0.1:%d"):format(self.port)
end

-- The node's OS pid (its pid file), or nil.
function Server:pid()
  local f = io.open(self.dir .. "/pid")
  if not f then return nil end
  local pid = tonumber(f:read("*a"):match("%d+"))
  f:close()
  return pid
end

--- stop(hard): rabbitmqctl stop (waits until the node is down), or kill -9
-- the node's process when hard; then waits until the port is closed.
function Server:stop(hard)
  local pid = self:pid()
  if hard then
    if pid then sh("kill -9 " .. pid .. " 2>/dev/null") end
  else
    sh(("env %s %srabbitmqctl -n %s stop >/dev/null 2>&1"):format(self:env(), BIN, self.node))
  end
  return within(30, function()
    if pid and sh("kill -0 " .. pid .. " 2>/dev/null") then return false end
    return port_free(self.port)
  end, 0.1)
end

function Server:restart()
  assert(self:_start(), "rabbitmq-server did not restart (see " .. self.dir .. "/server.log)")
end

--- ctl(args) -> rabbitmqctl's output for this node (e.g. "list_queues name messages")
function Server:ctl(args)
  return capture(("env %s %srabbitmqctl -n %s -q %s 2>&1"):format(self:env(), BIN, self.node, args))
end

function Server:shutdown()
  self:stop(true)
  sh("rm -rf " .. self.dir)
end

return _M
