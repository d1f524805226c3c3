--- sluice.shared: state shared between sluice instances through Redis.
--
-- With `redis = "redis://..."` in a configuration, app.lua makes one
-- shared object over the configuration's sluice.redis client and attaches
-- every collector to it. Its parts, each in a module of its own:
--  - sluice.shared.sync: breaker and limiter state kept in step (the
--    newer of local and shared state at attach, breaker transitions
--    announced on pub/sub and taken by the others within milliseconds,
--    limiter snapshots every 5 s);
--  - sluice.shared.leases (leases(ttl)): each collector runs in one
--    instance at a time, checked before each run by the collector's run
--    guard;
--  - sluice.shared.stream (stream_sink(opts)): committed rows appended to
--    Redis Streams.
-- (Backfill window claims, which go through a shared object too, are
-- sluice.backfill.claims.) When Redis is unreachable everything goes on
-- with local state; that is logged once, reported by degraded(), and
-- sharing resumes by itself when Redis is back.
--
-- The shared object owns the client (closed by stop()), this instance's
-- id, the list of attached collectors, the reachability state and its
-- parts' objects; redis, id, collectors and listener (the sync's listener
-- task, once started) are for reading. owner(c) says which shared object
-- a collector is attached to, from a table of the module's own. Calls that
-- talk to Redis yield (call, eval, attach, detach, renew, leases,
-- publish_*, pull_breaker, stop): call them in a task; start() spawns its
-- tasks and timers.
local sluice = require "sluice"
local log = require "sluice.log"
local sync = require "sluice.shared.sync"
local leases = require "sluice.shared.leases"
local stream = require "sluice.shared.stream"

local _M = {}
local mt = { __index = _M }

-- collector -> the shared object it is attached to (owner())
local owners = setmetatable({}, { __mode = "k" })

local function instance_id()
  local f = io.open("/proc/sys/kernel/random/uuid")
  local id = f and f:read("*l")
  if f then f:close() end
  return id or string.format("%x-%x", math.floor(sluice.time() * 1e6), math.random(1, 2 ^ 30))
end

--- new(client) -> shared state over a sluice.redis client.
function _M.new(client)
  local self = setmetatable({ redis = client, id = instance_id(), collectors = {}, down = false }, mt)
  self.sync_ = sync.new(self)
  self.leases_ = leases.new(self)
  return self
end

--- is_shared(v) -> whether v is a shared object.
function _M.is_shared(v)
  return getmetatable(v) == mt
end

--- owner(c) -> the shared object collector c is attached to, or nil.
function _M.owner(c)
  return owners[c]
end

--- degraded() -> true while Redis is unreachable.
function _M:degraded()
  return self.down
end

--- unreachable(message, err): Redis could not be reached (message is
-- logged, once per outage); a call that reaches it again ends the outage.
function _M:unreachable(message, err)
  if not self.down then
    self.down = true
    log.warning(message, { error = err })
  end
end

-- Tracks reachability from a call's outcome (logged on each change).
local function track(self, v, err)
  if err == "disconnected" or err == "timeout" or err == "closed" then
    self:unreachable("redis unreachable: using local state until it is back", err)
    return nil, err
  end
  if self.down then
    self.down = false
    log.info("redis reachable again: sharing state")
  end
  return v, err
end

--- call(cmd, ...): one Redis call, tracking reachability.
function _M:call(...)
  return track(self, self.redis:call(...))
end

--- eval(src, keys, args): a script (EVALSHA, EVAL after NOSCRIPT),
-- tracking reachability.
function _M:eval(src, keys, args)
  return track(self, self.redis:eval_script(src, keys, args))
end

--- publish_breaker(cb), publish_limiter(c), pull_breaker(c): one step of
-- the state sync by hand (sluice.shared.sync).
function _M:publish_breaker(cb)
  return self.sync_:publish_breaker(cb)
end

function _M:publish_limiter(c)
  return self.sync_:publish_limiter(c)
end

function _M:pull_breaker(c)
  return self.sync_:pull_breaker(c)
end

--- attach(c): load the shared state of collector c and keep it in sync.
function _M:attach(c)
  self.collectors[#self.collectors + 1] = c
  self.sync_:attach(c)
  owners[c] = self
end

--- detach(c): write the final limiter state; stop syncing c (its lease
-- is released once its run in flight ends, unless c's name is attached
-- again).
function _M:detach(c)
  self.sync_:detach(c)
  if owners[c] == self then owners[c] = nil end
  for i, x in ipairs(self.collectors) do
    if x == c then table.remove(self.collectors, i) break end
  end
  self.leases_:detach(c)
end

--- renew(c): takes or renews c's lease (registering its run guard); on a
-- takeover, collects at once (unless a run is already going).
function _M:renew(c)
  return self.leases_:renew(c)
end

--- leases(ttl): each collector runs in one instance at a time: a lease key
-- lease:collector:{name} with a TTL of ttl seconds (15), renewed every
-- ttl/3 and before each run; when its holder dies, another instance takes
-- over once it expires.
function _M:leases(ttl)
  return self.leases_:enable(ttl)
end

--- start(): the background sync (breakers on each announcement and every
-- 5 s, limiters every 5 s, leases every ttl/3).
function _M:start()
  self.leases_:start()
  self.listener = self.sync_:start()
end

--- stream_sink{stream = "sluice:{table}", maxlen = 1e6} -> a sink whose
-- publish(table, rows) appends each row to the stream (sluice.shared.stream).
function _M:stream_sink(opts)
  return stream.sink(self, opts)
end

--- stop(): ends the sync and the renewals, writes the limiters' state,
-- gives up the leases held once their runs in flight have ended (the store
-- is closed after this, so those runs still store their rows), and closes
-- the client. Yields.
function _M:stop()
  self.leases_:stop()
  self.sync_:stop()
  self.leases_:release_all()
  self.redis:close()
end

return _M
