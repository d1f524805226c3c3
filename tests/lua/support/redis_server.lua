--- support.redis_server: a private redis-server on a loopback port, for specs.
--
--   local rs = require "support.redis_server"
--   local srv = rs.start()            -- a free port in 20000-32000
--   redis.connect{ url = srv:url(0) }
--   srv:stop(hard, cleanup)           -- SIGKILL when hard; rm its dir when cleanup
--
-- The fixture most specs share, one server and one client for a describe:
--   setup(function() srv, red = rs.with_client() end)
--   teardown(function() if srv then srv:shutdown(red) end end)
--
-- start(port, extra, dir): port nil picks a free one; extra is appended to
-- the command line ("--requirepass s3cret"). Starting blocks the loop for
-- the few milliseconds redis-server takes.
local _M = {}

-- Ports are picked at random: seed once per process, differently in each
-- (specs run one after another and may start servers in the same second).
math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16) % 100000)

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

function _M.ping(port, pass)
  local auth = pass and (" -a " .. pass .. " --no-auth-warning") or ""
  local p = io.popen("redis-cli -p " .. port .. auth .. " ping 2>/dev/null")
  local out = p:read("*a")
  p:close()
  return out:match("PONG") ~= nil
end

-- A redis-server of our own: start(port|nil, extra args) picks a free port
-- in 20000-32000 when port is nil; stop() kills it (SIGKILL when hard).
local Server = {}
Server.__index = Server

function _M.start(port, extra, dir)
  dir = dir or io.popen("mktemp -d /tmp/sluice-redis.XXXXXX"):read("*l")
  local pass = extra and extra:match("%-%-requirepass (%S+)")
  for _ = 1, 20 do
    local p = port or math.random(20000, 32000)
    if port or not _M.ping(p) then
      local pidfile = dir .. "/redis-" .. p .. ".pid"
      os.remove(pidfile)
      sh(("redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --enable-debug-command yes"
        .. " --pidfile %s --dir %s --logfile %s/redis.log %s"):format(p, pidfile, dir, dir, extra or ""))
      for _ = 1, 100 do
        if _M.ping(p, pass) then
          local pid = tonumber((read_file(pidfile) or ""):match("%d+"))
          if pid then
            return setmetatable({ port = p, dir = dir, pid = pid, extra = extra }, Server)
          end
        end
        sh("sleep 0.02")
      end
    end
    if port then break end
  end
  error("could not start redis-server")
end

--- with_client([db]) -> srv, red: start() and a sluice.redis client of the
-- server's db (0), connected (a PING answered).
function _M.with_client(db)
  local srv = _M.start()
  local red = require("sluice.redis").connect { url = srv:url(db) }
  assert(red:call("PING") == "PONG", "the client cannot reach redis-server")
  return srv, red
end

--- dead_port() -> a loopback port no redis-server answers on.
function _M.dead_port()
  for _ = 1, 50 do
    local p = math.random(20000, 32000)
    if not _M.ping(p) then return p end
  end
  error("no free port")
end

function Server:stop(hard, cleanup)
  if self.pid then
    sh("kill " .. (hard and "-9 " or "") .. self.pid .. " 2>/dev/null")
    for _ = 1, 100 do
      if not sh("kill -0 " .. self.pid .. " 2>/dev/null") then break end
      sh("sleep 0.02")
    end
    self.pid = nil
  end
  if cleanup then sh("rm -rf " .. self.dir) end
end

--- srv:shutdown(...): closes the clients given (nil ones skipped), stops the
-- server and removes its directory; the teardown of with_client.
function Server:shutdown(...)
  for i = 1, select("#", ...) do
    local c = select(i, ...)
    if c then c:close() end
  end
  self:stop(false, true)
end

function Server:restart()
  local s = _M.start(self.port, self.extra, self.dir)
  self.pid = s.pid
end

function Server:url(db, pass)
  return ("redis://%s127.0.0.1:%d/%d"):format(pass and (":" .. pass .. "@") or "", self.port, db or 0)
end

return _M
