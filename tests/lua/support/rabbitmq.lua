--- support.rabbitmq: a private RabbitMQ broker on loopback ports, for specs.
--
--   local rmq = require "support.rabbitmq"
--   local srv = rmq.start()          -- a node in a temp dir, ready to take connections
--   srv:url()                        -- "amqp://guest:guest@127.0.0.1:PORT"
--   srv:stop(); srv:restart()        -- stop the node (kill -9 with hard = true) / start it again, same data
--   srv:shutdown()                   -- stop it and remove the directory
--   local tsrv = rmq.start { tls = true } -- and a TLS listener (amqps):
--   tsrv:tls_url("localhost")        -- "amqps://guest:guest@localhost:TLSPORT"
--   tsrv.tls                         -- {port, ca, cert, key, other_ca}: PEM files
--
-- With tls, a throw-away CA made by the openssl command in the temp dir
-- signs the broker's certificate (its only name: IP 127.0.0.1, so
-- "localhost" is a host name mismatch) and a client certificate
-- (tls.cert, tls.key); tls.other_ca is a CA that signed neither. The
-- broker requires a client certificate signed by its CA (verify_peer,
-- fail_if_no_peer_cert).
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

-- A CA (ca.pem, ca.key), the broker's certificate signed by it
-- (server.pem, server.key: IP 127.0.0.1), a client certificate (client.pem,
-- client.key) and an unrelated CA (other_ca.pem), in dir; EC P-256 keys,
-- valid two days.
local function make_certs(dir)
  assert(sh("mkdir -p " .. dir), "mkdir " .. dir)
  local key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
  local function ca(name)
    return ("openssl req -x509 %s -days 2 -subj '/CN=sluice test %s' -keyout %s/%s.key -out %s/%s.pem"
      .. " -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign")
      :format(key, name, dir, name, dir, name)
  end
  local function leaf(name, cn, ext)
    local f = assert(io.open(("%s/%s.ext"):format(dir, name), "w"))
    f:write(ext, "\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n")
    f:close()
    return ("openssl req %s -subj '/CN=%s' -keyout %s/%s.key -out %s/%s.csr && openssl x509 -req -days 2"
      .. " -in %s/%s.csr -CA %s/ca.pem -CAkey %s/ca.key -CAcreateserial -extfile %s/%s.ext -out %s/%s.pem")
      :format(key, cn, dir, name, dir, name, dir, name, dir, dir, dir, name, dir, name)
  end
  local cmds = {
    ca("ca"), ca("other_ca"),
    leaf("server", "sluice test broker", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
    leaf("client", "sluice test client", "extendedKeyUsage=clientAuth"),
  }
  for _, cmd in ipairs(cmds) do
    assert(sh(cmd .. " >>" .. dir .. "/openssl.log 2>&1"), "failed: " .. cmd)
  end
end

local Server = {}
Server.__index = Server

--- start([{tls = true}]) -> a running broker (see above)
function _M.start(opts)
  local dir = capture("mktemp -d /tmp/sluice-rmq.XXXXXX"):match("%S+")
  assert(dir, "mktemp failed")
  local tls
  if opts and opts.tls then
    local d = dir .. "/tls"
    local ok, err = pcall(make_certs, d)
    if not ok then
      local log = capture("cat " .. d .. "/openssl.log 2>/dev/null")
      sh("rm -rf " .. dir)
      error(tostring(err) .. "\n" .. log, 2)
    end
    tls = { ca = d .. "/ca.pem", cert = d .. "/client.pem", key = d .. "/client.key",
      other_ca = d .. "/other_ca.pem" }
  end
  for _ = 1, 20 do
    -- all three below the ephemeral range (32768+): a port from there can
    -- be taken by any outgoing connection while the node is down for a
    -- restart (seen: dist_port_already_used, with 500 collectors' traffic
    -- on the machine)
    local port = math.random(12000, 17999)
    local dist = port + 12000
    local tport = port + 6000
    if port_free(port) and port_free(dist) and (not tls or port_free(tport)) then
      local self = setmetatable({ dir = dir, port = port, dist = dist,
        node = ("sluice-test-%d@localhost"):format(port) }, Server)
      local f = assert(io.open(dir .. "/rabbitmq.conf", "w"))
      f:write(("listeners.tcp.1 = 127.0.0.1:%d\ndisk_free_limit.absolute = 1MB\n"):format(port))
      if tls then
        tls.port = tport
        self.tls = tls
        local d = dir .. "/tls"
        f:write(("listeners.ssl.1 = 127.0.0.1:%d\n"):format(tport),
          ("ssl_options.cacertfile = %s/ca.pem\nssl_options.certfile = %s/server.pem\n"):format(d, d),
          ("ssl_options.keyfile = %s/server.key\n"):format(d),
          "ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n")
      end
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
  local function login(opts)
    return function()
      local c = amqp.connect(opts)
      if not c then return false end
      c:close()
      return true
    end
  end
  if not within(60, login { url = self:url(), connect_timeout = 1, timeout = 5 }, 0.2) then
    return false
  end
  -- the TLS listener comes up with the TCP one: bounded all the same
  return not self.tls or within(20, login { url = self:tls_url(), connect_timeout = 1, timeout = 5,
    ca_file = self.tls.ca, cert_file = self.tls.cert, key_file = self.tls.key }, 0.2)
end

function Server:url()
  return ("amqp://guest:guest@127.0.0.1:%d"):format(self.port)
end

--- tls_url([host [, userinfo]]) -> the amqps:// URL of the TLS listener;
-- host "127.0.0.1" (the certificate's name) by default, userinfo
-- "guest:guest".
function Server:tls_url(host, userinfo)
  return ("amqps://%s@%s:%d"):format(userinfo or "guest:guest", host or "127.0.0.1", self.tls.port)
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
    return port_free(self.port) and (not self.tls or port_free(self.tls.port))
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
