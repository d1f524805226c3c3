--- support.ws_peer: python3-websockets servers and a fault proxy for specs.
--
--   local peer = require "support.ws_peer"
--   local srv = peer.start()                       -- ws://127.0.0.1:<port>
--   local c = ws.connect(srv:url("/echo"))
--   local px = peer.proxy(srv)                     -- faults: see ws_server.py
--   ws.connect(px:url("/echo?fault=stall"))
--   local ca = peer.make_ca()                      -- throw-away CA + server cert
--   local tls = peer.start{ tls = ca }             -- wss://, cert for localhost/127.0.0.1
--   px:stop(); srv:stop(); ca:remove()
--
-- The servers are /usr/bin/python3 (Debian's, which has python3-websockets)
-- running support/ws_server.py in the background; start() waits (bounded,
-- from the calling task) until it has written its port. Each process also
-- exits by itself after `lifetime` seconds (600), so a failed spec leaves
-- nothing behind. Must run in a task.
local wait_for = require("support.wait").wait_for

local _M = {}

local HERE = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local SCRIPT = HERE .. "ws_server.py"

local function sh(cmd)
  local rc = os.execute(cmd)
  return rc == 0 or rc == true
end

local function read_file(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function tmpdir(tag)
  local p = io.popen("mktemp -d /tmp/sluice-ws-" .. tag .. ".XXXXXX")
  local dir = p:read("*l")
  p:close()
  assert(dir and dir ~= "", "mktemp failed")
  return dir
end

local Server = {}
Server.__index = Server

--- srv:url(path) -> "ws://127.0.0.1:<port><path>" (wss:// with tls)
function Server:url(path, host)
  return ("%s://%s:%d%s"):format(self.tls and "wss" or "ws", host or "127.0.0.1", self.port, path or "/")
end

--- srv:stop(): kills the process (SIGKILL) and removes its directory.
function Server:stop()
  if self.pid then sh("kill -9 " .. self.pid .. " 2>/dev/null") end
  self.pid = nil
  sh("rm -rf " .. self.dir)
end

local function launch(tag, args, opts)
  local dir = tmpdir(tag)
  local portfile = dir .. "/port"
  sh(("/usr/bin/python3 %s %s --portfile %s --lifetime %d >%s/log 2>&1 &"):format(
    SCRIPT, args, portfile, opts.lifetime or 600, dir))
  local line = wait_for(tag .. " to listen", function() return read_file(portfile) end, 20, 0.02)
  local pid, port = line:match("^(%d+) (%d+)")
  return setmetatable({ dir = dir, pid = tonumber(pid), port = tonumber(port), tls = opts.tls ~= nil }, Server)
end

--- start{tls = ca (make_ca's), lifetime = s} -> server
function _M.start(opts)
  opts = opts or {}
  local args = "serve"
  if opts.tls then args = args .. " --tls " .. opts.tls.cert .. " " .. opts.tls.key end
  return launch("server", args, opts)
end

--- proxy(server, opts) -> a fault proxy in front of server (plain ws://)
function _M.proxy(server, opts)
  return launch("proxy", "proxy --upstream " .. server.port, opts or {})
end

--- make_ca() -> { dir, ca (PEM path), cert, key, remove = fn }
-- A throw-away CA and a server certificate it signed, for localhost and
-- 127.0.0.1, made by the openssl command (blocks the loop ~50 ms).
function _M.make_ca()
  local dir = tmpdir("ca")
  local ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
  local f = assert(io.open(dir .. "/ext", "w"))
  f:write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
  f:close()
  assert(sh(("cd %s && openssl req -x509 %s -subj /CN=sluice-test-ca -days 2 -keyout ca.key -out ca.pem"
    .. " 2>/dev/null && openssl req %s -subj /CN=localhost -keyout srv.key -out srv.csr 2>/dev/null"
    .. " && openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2"
    .. " -extfile ext -out srv.pem 2>/dev/null"):format(dir, ec, ec)), "openssl could not make the certificates")
  return { dir = dir, ca = dir .. "/ca.pem", cert = dir .. "/srv.pem", key = dir .. "/srv.key",
    remove = function() sh("rm -rf " .. dir) end }
end

--- sanitized() -> true in the ASan build, whose quarantine keeps freed
-- memory resident (up to 256 MiB): RSS there says nothing about our bounds.
function _M.sanitized()
  return (read_file("/proc/self/maps") or ""):find("libasan", 1, true) ~= nil
end

--- rss_kb() -> this process's resident set size in KiB
function _M.rss_kb()
  return tonumber(read_file("/proc/self/status"):match("VmRSS:%s*(%d+)"))
end


return _M
