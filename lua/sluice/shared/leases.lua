--- sluice.shared.leases: each collector runs in one instance at a time.
--
-- A lease key lease:collector:{name} holds the id of the instance that
-- runs the collector, with a TTL of ttl seconds. The holder renews its
-- lease every ttl/3 and also before each run, and a run that Redis says is
-- not ours does not start: a holder frozen past the TTL (or that lost its
-- lease any other way) stands by instead of collecting beside the new
-- holder. A stopping holder (shutdown, reload) gives its lease up only
-- when its run in flight has ended, renewing it meanwhile. A killed
-- holder's lease expires after at most ttl, and a standby takes it within
-- ttl/3 (or its next run) after that. What no lease can exclude: a holder
-- frozen longer than the TTL between its check and its requests (only
-- fencing at the upstream could); so keep the TTL well above a loop stall.
-- With Redis away a collector keeps running on its own (degraded):
-- collection must not stop because Redis did.
--
-- The check before each run is the collector's run guard
-- (collector:set_run_guard), registered by renew(). A leases object
-- belongs to one sluice.shared object (sh), whose eval(), id, degraded()
-- and collectors (the attached ones) it uses; it owns the TTL, its renewal
-- timer and each collector's lease state (held or not, runs in flight),
-- in a table of its own keyed by collector. Calls that talk to Redis yield
-- (enable, renew, the run guard, release_all; detach spawns its release):
-- call them in a task.
local sluice = require "sluice"

local _M = {}
local Leases = {}
local mt = { __index = Leases }

-- Takes or renews a lease: ours if free or already ours, for ttl ms.
local LEASE = [[
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0]]
local RELEASE = [[
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0]]

--- new(sh) -> the leases of shared object sh, off until enable().
function _M.new(sh)
  return setmetatable({ sh = sh, ttl = nil,
    -- collector -> {held = nil | true | false, runs = n, guarded = bool}
    state = setmetatable({}, { __mode = "k" }) }, mt)
end

local function lease_eval(self, c, src)
  return self.sh:eval(src, { "lease:collector:" .. c.name },
    src == LEASE and { self.sh.id, tostring(math.floor(self.ttl * 1000)) } or { self.sh.id })
end

-- This instance's view of c's lease: held (nil: never asked), and the
-- runs of c in flight (counted by the run guard).
local function lease_of(self, c)
  local l = self.state[c]
  if not l then
    l = { held = nil, runs = 0, guarded = false }
    self.state[c] = l
  end
  return l
end

-- Asks Redis for c's lease (taking or renewing it) and updates its held;
-- returns true when the lease was just taken over.
local function take(self, c)
  local v, err = lease_eval(self, c, LEASE)
  local l = lease_of(self, c)
  local was = l.held
  if v == nil and (err == "disconnected" or err == "timeout" or err == "closed") then
    l.held = true
  else
    l.held = v == 1
  end
  if l.held and was == false then
    c.log.info("collector lease taken over: collecting here now")
    return true
  elseif not l.held and was ~= false then
    c.log.info("another instance holds the collector lease: standing by")
  end
  return false
end

-- Every run of c first asks Redis for the lease (c's run guard) and counts
-- itself among c's runs while it runs: a holder that was frozen past the
-- TTL, or lost its lease in any other way, learns it before it collects
-- rather than at its next renewal, and the lease is given up only once
-- the runs have ended. A run the lease is not ours for stands by.
local function guard(self, c)
  local l = lease_of(self, c)
  if l.guarded then return end
  l.guarded = true
  c:set_run_guard(function(inst)
    local li = lease_of(self, inst)
    li.runs = li.runs + 1
    if self.ttl and not self.sh:degraded() then take(self, inst) end
    return li.held ~= false
  end, function(inst)
    local li = lease_of(self, inst)
    li.runs = li.runs - 1
  end)
end

local function attached(self, name)
  for _, x in ipairs(self.sh.collectors) do
    if x.name == name then return true end
  end
  return false
end

-- Gives c's lease up once its runs in flight have ended (renewing it
-- meanwhile), so that no other instance starts while this one still
-- collects; with `unless_attached`, kept when a collector of that name is
-- attached again (a reload). Yields. At shutdown a run that outlives the
-- deadline is killed with the process, and the lease then expires by
-- itself.
local function release(self, c, unless_attached)
  local renewed = sluice.now()
  while lease_of(self, c).runs > 0 do
    if sluice.now() - renewed >= self.ttl / 3 then
      renewed = sluice.now()
      lease_eval(self, c, LEASE)
    end
    sluice.sleep(0.05)
  end
  if not (unless_attached and attached(self, c.name)) then lease_eval(self, c, RELEASE) end
end

--- leases:renew(c): registers c's run guard (once), then takes or renews
-- c's lease; on a takeover, collects at once (unless a run is already
-- going).
function Leases:renew(c)
  guard(self, c)
  if take(self, c) and c.running and lease_of(self, c).runs == 0 then
    sluice.spawn(c.run_once, c)
  end
end

--- leases:enable(ttl): leases on, with a TTL of ttl seconds (15), for
-- every attached collector.
function Leases:enable(ttl)
  self.ttl = ttl or 15
  for _, c in ipairs(self.sh.collectors) do self:renew(c) end
end

--- leases:start(): renews every attached collector's lease every ttl/3.
function Leases:start()
  if not self.ttl then return end
  self.timer = sluice.every(self.ttl / 3, function(premature)
    if premature then return end
    for _, c in ipairs(self.sh.collectors) do self:renew(c) end
  end)
end

--- leases:detach(c): c's lease is released once its runs in flight end
-- (in a task of its own), unless a collector of c's name is attached
-- again by then.
function Leases:detach(c)
  if self.ttl and lease_of(self, c).held then sluice.spawn(release, self, c, true) end
end

--- leases:stop(): no more renewals.
function Leases:stop()
  if self.timer then self.timer:cancel() end
end

--- leases:release_all(): gives up every lease held by an attached
-- collector, each once its runs in flight have ended. Yields.
function Leases:release_all()
  if not self.ttl then return end
  local leaving = {}
  for _, c in ipairs(self.sh.collectors) do
    if lease_of(self, c).held then leaving[#leaving + 1] = c end
  end
  for _, c in ipairs(leaving) do release(self, c) end
end

return _M
