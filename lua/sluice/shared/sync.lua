--- sluice.shared.sync: breaker and limiter state kept in step through Redis.
--
-- Every attached collector's breaker snapshot lives under `cb_state:{name}`
-- (24 h TTL) and its limiter snapshot under `rate_limiter:{name}` (24 h
-- TTL):
--  - when a collector is attached it takes the newer of its local (SQLite)
--    and shared state;
--  - every breaker transition is written at once and announced on the
--    pub/sub channel sluice:cb_state (the message is the key); each
--    instance listens there (its own subscription connection) and takes the
--    stored snapshot when told, so a breaker that one instance opened is
--    open in the others within milliseconds: an upstream that failed for
--    one is not hammered by the rest. The stored key stays the source of
--    truth: an instance reads it when it attaches a collector, when its
--    subscription is (re)made, and every 5 s (for messages lost while its
--    subscription was down);
--  - limiter snapshots are written every 5 s, at detach and at stop.
-- A sync object belongs to one sluice.shared object (sh), whose call(),
-- id, redis and collectors (the attached ones) it uses; it owns the
-- snapshots it applied, its subscription, listener task and poll timer.
-- Calls that talk to Redis yield (attach, detach, publish_*, pull_breaker,
-- stop): call them in a task; start() spawns its listener.
local sluice = require "sluice"
local json = require "sluice.json"

local _M = {}
local Sync = {}
local mt = { __index = Sync }

local TTL = 86400
local CHANNEL = "sluice:cb_state"
local POLL = 5 -- seconds between reads of the stored snapshots (fallback)

--- new(sh) -> the state sync of shared object sh.
function _M.new(sh)
  return setmetatable({ sh = sh, seq = 0,
    -- "cb_state:{name}" -> the stored snapshot last applied or written,
    -- while a collector with a breaker of that name is attached
    applied = {},
    -- breaker name -> how many attached collectors use a breaker of it
    names = {},
    -- breaker -> how many attached collectors use it (its transitions are
    -- published while any does); hooked: breakers given the publishing
    -- callback, once each, whether attached now or not (both weak: see
    -- attach)
    attached = setmetatable({}, { __mode = "k" }),
    hooked = setmetatable({}, { __mode = "k" }) }, mt)
end

local function encode(snap, id, seq)
  -- sluice.json: times exact (cjson writes 14 digits: 0.1 ms off an epoch)
  return json.encode({ by = id, seq = seq, at = sluice.time(), snapshot = snap })
end

--- sync:publish_breaker(cb): writes cb's snapshot and announces it.
function Sync:publish_breaker(cb)
  self.seq = self.seq + 1
  local key = "cb_state:" .. cb:name()
  local doc = encode(cb:snapshot(), self.sh.id, self.seq)
  self.applied[key] = doc
  local ok, err = self.sh:call("SET", key, doc, "EX", TTL)
  if not ok then return nil, err end
  return self.sh:call("PUBLISH", CHANNEL, key)
end

--- sync:publish_limiter(c): writes c's limiter snapshot.
function Sync:publish_limiter(c)
  local name = c.limiter:name()
  return self.sh:call("SET", "rate_limiter:" .. name, encode(c.limiter:snapshot(), self.sh.id, 0), "EX", TTL)
end

--- sync:pull_breaker(c): applies another instance's breaker snapshot of
-- c when it is new to us (and newer than c's own state).
function Sync:pull_breaker(c)
  local key = "cb_state:" .. c.breaker:name()
  local doc = self.sh:call("GET", key)
  if type(doc) ~= "string" or doc == self.applied[key] then return end
  self.applied[key] = doc
  local v = json.decode(doc)
  if type(v) ~= "table" or v.by == self.sh.id or type(v.snapshot) ~= "table" then return end
  local mine = c.breaker:snapshot()
  if (v.snapshot.last_state_change or 0) <= (mine.last_state_change or 0) then return end
  if v.snapshot.state == mine.state then return end
  local ok, err = pcall(c.breaker.restore, c.breaker, v.snapshot)
  if ok then
    c.log.warning("breaker state taken from another instance", { state = v.snapshot.state })
  else
    c.log.warning("ignoring a shared breaker snapshot", { error = tostring(err) })
  end
end

--- sync:attach(c): takes c's shared state and publishes its breaker's
-- transitions from now on.
function Sync:attach(c)
  if c.breaker then
    self:pull_breaker(c)
    -- The callback must not capture c: the breaker module keeps callbacks
    -- in a table weak in its keys (the breakers), and a value reaching its
    -- own key keeps both alive, so every replaced instance would leak.
    -- Only a breaker still attached here publishes; a breaker that
    -- collectors of one upstream share publishes once, and one detached
    -- and attached again is not given a second callback.
    if not self.hooked[c.breaker] then
      self.hooked[c.breaker] = true
      c.breaker:on_change(function(cb)
        if self.attached[cb] then self:publish_breaker(cb) end
      end)
    end
    self.attached[c.breaker] = (self.attached[c.breaker] or 0) + 1
    local name = c.breaker:name()
    self.names[name] = (self.names[name] or 0) + 1
  end
  if c.limiter then
    local doc = self.sh:call("GET", "rate_limiter:" .. c.limiter:name())
    local v = type(doc) == "string" and json.decode(doc)
    if type(v) == "table" and type(v.snapshot) == "table" then
      pcall(c.limiter.restore, c.limiter, v.snapshot)
    end
  end
end

local function release(counts, k)
  local n = (counts[k] or 1) - 1
  if n > 0 then counts[k] = n else counts[k] = nil end
  return n > 0
end

--- sync:detach(c): writes c's final limiter state; its breaker's
-- transitions are no longer published (once no attached collector shares
-- it), and the snapshot applied for its name is let go (once none has a
-- breaker of that name: a reload attaches the new instances before it
-- detaches the old).
function Sync:detach(c)
  if c.breaker and self.attached[c.breaker] then
    release(self.attached, c.breaker)
    local name = c.breaker:name()
    if not release(self.names, name) then self.applied["cb_state:" .. name] = nil end
  end
  if c.limiter then self:publish_limiter(c) end
end

local function pull_all(self, key)
  for _, c in ipairs(self.sh.collectors) do
    if c.breaker and (not key or key == "cb_state:" .. c.breaker:name()) then self:pull_breaker(c) end
  end
end

-- The listener task: subscribed to CHANNEL, pulls the breaker each message
-- names. Without a subscription (Redis away) it tries again after POLL
-- seconds; an established one resubscribes by itself after a reconnect,
-- and then the listener reads every stored snapshot (what was announced
-- while it was away). stop() closes the subscription and ends the task.
local function listen(self)
  while not self.stopped do
    local sub = self.sh.redis:subscribe(CHANNEL, { max_pending = 10000 })
    if sub then
      self.sub = sub
      if self.stopped then break end
      pull_all(self) -- what was announced before we listened
      local seen = sub:info().reconnects
      while true do
        local m, err = sub:receive(1)
        if not m and err ~= "timeout" then break end -- closed by stop()
        if m then pull_all(self, m.payload) end
        local info = sub:info()
        if info.reconnects ~= seen and info.subscribed > 0 then
          seen = info.reconnects
          pull_all(self)
        end
      end
    elseif sluice.sleep(POLL) == false then
      break -- shutdown
    end
  end
  if self.sub then self.sub:close() end
end

--- sync:start() -> the listener task: breakers on each announcement and
-- every 5 s, limiters every 5 s.
function Sync:start()
  self.listener = sluice.spawn(listen, self)
  self.timer = sluice.every(POLL, function(premature)
    if premature then return end
    for _, c in ipairs(self.sh.collectors) do
      if c.breaker then self:pull_breaker(c) end
      if c.limiter then self:publish_limiter(c) end
    end
  end)
  return self.listener
end

--- sync:stop(): ends the listener and the poll; writes every attached
-- collector's limiter state.
function Sync:stop()
  self.stopped = true
  if self.sub then self.sub:close() end
  -- (still subscribing while Redis is away, it would wait its timeout)
  if self.listener then sluice.kill(self.listener) end
  if self.timer then self.timer:cancel() end
  for _, c in ipairs(self.sh.collectors) do
    if c.limiter then self:publish_limiter(c) end
  end
end

return _M
