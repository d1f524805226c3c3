--- support.postgres: a private PostgreSQL server on a loopback port, for specs.
--
--   local pgs = require "support.postgres"
--   local srv = pgs.start()         -- initdb into a temp dir, pg_ctl start
--   srv:url()                        -- "postgresql://postgres@127.0.0.1:PORT/postgres"
--   srv:psql("SELECT 1")             -- psql -At output, or nil, stderr
--   srv:stop(); srv:restart()        -- pg_ctl -m fast stop / start, same data
--   srv:shutdown()                   -- stop and remove the directory
--
-- Debian's binaries (/usr/lib/postgresql/15/bin). PostgreSQL refuses to run
-- as root: as root, initdb and the server run as the `postgres` system user
-- (runuser), which owns the data directory. Trust authentication, user
-- postgres, the unix socket in the temp dir, TCP on 127.0.0.1 only.
-- Starting blocks the loop while pg_ctl waits (a second or two).
local _M = {}

math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16) % 100000)

local BIN = "/usr/lib/postgresql/15/bin/"

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

local function as_owner(cmd)
  if capture("id -u"):match("^0") then
    return "runuser -u postgres -- " .. cmd
  end
  return cmd
end

local Server = {}
Server.__index = Server

local function port_free(p)
  -- nothing listening: bash's /dev/tcp connect fails
  return not sh(("bash -c 'exec 3<>/dev/tcp/127.0.0.1/%d' 2>/dev/null"):format(p))
end

function _M.start()
  local dir = capture("mktemp -d /tmp/sluice-pg.XXXXXX"):match("%S+")
  assert(dir, "mktemp failed")
  local root = capture("id -u"):match("^0")
  if root then assert(sh("chown postgres:postgres " .. dir)) end
  local data = dir .. "/data"
  assert(sh(as_owner(("%sinitdb -D %s -A trust -U postgres -E UTF8 --no-sync >%s/initdb.log 2>&1")
    :format(BIN, data, dir))), "initdb failed: see " .. dir .. "/initdb.log")
  for _ = 1, 20 do
    local port = math.random(20000, 32000) -- below the ephemeral range
    if port_free(port) then
      local self = setmetatable({ dir = dir, data = data, port = port }, Server)
      if self:_start() then return self end
    end
  end
  error("could not start postgres (see " .. dir .. "/server.log)")
end

function Server:_start()
  return sh(as_owner(("%spg_ctl -D %s -l %s/server.log -w -t 30 -o \"-p %d -k %s -c listen_addresses=127.0.0.1"
    .. " -c fsync=off -c synchronous_commit=off -c full_page_writes=off\" start >/dev/null 2>&1")
    :format(BIN, self.data, self.dir, self.port, self.dir)))
end

function Server:url(db)
  return ("postgresql://postgres@127.0.0.1:%d/%s"):format(self.port, db or "postgres")
end

--- psql(sql) -> output of psql -At (rows with | between fields), or nil, err
function Server:psql(sql, extra)
  local f = os.tmpname()
  local h = io.open(f, "w")
  h:write(sql)
  h:close()
  local err = f .. ".err"
  local out = capture(("%spsql -X -At -v ON_ERROR_STOP=1 %s -h 127.0.0.1 -p %d -U postgres -d postgres -f %s 2>%s")
    :format(BIN, extra or "", self.port, f, err))
  local e = io.open(err):read("*a")
  os.remove(f)
  os.remove(err)
  if e:match("ERROR") or e:match("FATAL") then return nil, e end
  return out
end

function Server:stop(mode)
  return sh(as_owner(("%spg_ctl -D %s -m %s -w stop >/dev/null 2>&1"):format(BIN, self.data, mode or "fast")))
end

function Server:restart()
  assert(self:_start(), "postgres did not restart (see " .. self.dir .. "/server.log)")
end

function Server:shutdown()
  self:stop("immediate")
  sh("rm -rf " .. self.dir)
end

return _M
