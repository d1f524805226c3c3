--- sluice.shared: breaker and limiter state shared through Redis.
--
-- With `redis = "redis://..."` in a configuration, every collector's
-- breaker snapshot lives under `cb_state:{name}` (24 h TTL) and its limiter
-- snapshot under `rate_limiter:{name}` (24 h TTL):
--  - at start, a collector takes the newer of its local (SQLite) and shared
--    state;
--  - every breaker transition is written at once and announced on the
--    pub/sub channel sluice:cb_state (the message is the key); each
--    instance listens there (its own subscription connection) and takes the
--    stored snapshot when told, so a breaker that one instance opened is
--    open in the others within milliseconds: an upstream that failed for
--    one is not hammered by the rest. The stored key stays the source of
--    truth: an instance reads it when it attaches a collector, when its
--    subscription is (re)made, and every 5 s (for messages lost while its
--    subscription was down);
--  - limiter snapshots are written every 5 s and at stop;
--  - leases (leases(ttl)): each collector runs in one instance at a time.
--    The holder renews its lease every ttl/3 and also before each run, and
--    a run that Redis says is not ours does not start: a holder frozen
--    past the TTL (or that lost its lease any other way) stands by instead
--    of collecting beside the new holder. A stopping holder (shutdown,
--    reload) gives its lease up only when its run in flight has ended,
--    renewing it meanwhile. A killed holder's lease expires after at most
--    ttl, and a standby takes it within ttl/3 (or its next run) after
--    that. What no lease can exclude: a holder frozen longer than the TTL
--    between its check and its requests (only fencing at the upstream
--    could); so keep the TTL well above a loop stall;
--  - stream_sink(opts): committed rows appended to Redis Streams.
-- When Redis is unreachable everything goes on with local state; that is
-- logged once, reported by degraded(), and sharing resumes by itself when
-- Redis is back.
local sluice = require "sluice"
local log = require "sluice.log"
local cjson = require "cjson.safe"

local _M = {}
local mt = { __index = _M }

-- collector -> the shared object it is attached to (owner())
local owners = setmetatable({}, { __mode = "k" })

local TTL = 86400
local CHANNEL = "sluice:cb_state"
local POLL = 5 -- seconds between reads of the stored snapshots (fallback)

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

local function instance_id()
  local f = io.open("/proc/sys/kernel/random/uuid")
  local id = f and f:read("*l")
  if f then f:close() end
  return id or string.format("%x-%x", math.floor(sluice.time() * 1e6), math.random(1, 2 ^ 30))
end

--- new(client) -> shared state over a sluice.redis client.
function _M.new(client)
  return setmetatable({ redis = client, id = instance_id(), collectors = {},
    applied = {}, down = false,
    attached_breakers = setmetatable({}, { __mode = "k" }),
    -- collector -> {held = nil | true | false, runs = n, guarded = bool}
    leases_ = setmetatable({}, { __mode = "k" }) }, mt)
end

--- owner(c) -> the shared object collector c is attached to, or nil.
function _M.owner(c)
  return owners[c]
end

function _M:degraded()
  return self.down
end

-- Tracks reachability from a call's outcome (logged on each change).
local function track(self, v, err)
  if err == "disconnected" or err == "timeout" or err == "closed" then
    if not self.down then
      self.down = true
      log.warning("redis unreachable: using local state until it is back", { error = err })
    end
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

local function encode(snap, id, seq)
  return cjson.encode({ by = id, seq = seq, at = sluice.time(), snapshot = snap })
end

function _M:publish_breaker(cb)
  self.seq = (self.seq or 0) + 1
  local key = "cb_state:" .. cb:name()
  local doc = encode(cb:snapshot(), self.id, self.seq)
  self.applied[key] = doc
  local ok, err = self:call("SET", key, doc, "EX", TTL)
  if not ok then return nil, err end
  return self:call("PUBLISH", CHANNEL, key)
end

function _M:publish_limiter(c)
  local name = c.limiter:stats().limiter_name
  return self:call("SET", "rate_limiter:" .. name, encode(c.limiter:snapshot(), self.id, 0), "EX", TTL)
end

-- Applies another instance's breaker snapshot when it is new to us.
function _M:pull_breaker(c)
  local key = "cb_state:" .. c.breaker:name()
  local doc = self:call("GET", key)
  if type(doc) ~= "string" or doc == self.applied[key] then return end
  self.applied[key] = doc
  local v = cjson.decode(doc)
  if type(v) ~= "table" or v.by == self.id or type(v.snapshot) ~= "table" then return end
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

--- attach(c): load the shared state of collector c and keep it in sync.
function _M:attach(c)
  self.collectors[#self.collectors + 1] = c
  if c.breaker then
    self:pull_breaker(c)
    -- The callback must not capture c: the breaker module keeps callbacks
    -- in a table weak in its keys (the breakers), and a value reaching its
    -- own key keeps both alive, so every replaced instance would leak.
    -- Only a breaker still attached here publishes.
    self.attached_breakers[c.breaker] = true
    c.breaker:on_change(function(cb)
      if self.attached_breakers[cb] then self:publish_breaker(cb) end
    end)
  end
  if c.limiter then
    local doc = self:call("GET", "rate_limiter:" .. c.limiter:stats().limiter_name)
    local v = type(doc) == "string" and cjson.decode(doc)
    if type(v) == "table" and type(v.snapshot) == "table" then
      pcall(c.limiter.restore, c.limiter, v.snapshot)
    end
  end
  owners[c] = self
end

local function lease_key(c)
  return "lease:collector:" .. c.name
end

local function lease_eval(self, c, src)
  return self:eval(src, { lease_key(c) },
    src == LEASE and { self.id, tostring(math.floor(self.lease_ttl * 1000)) } or { self.id })
end

-- This instance's view of c's lease: held (nil: never asked), and the
-- runs of c in flight (counted by the run guard).
local function lease_of(self, c)
  local l = self.leases_[c]
  if not l then
    l = { held = nil, runs = 0, guarded = false }
    self.leases_[c] = l
  end
  return l
end

-- Asks Redis for c's lease (taking or renewing it) and updates its held;
-- returns true when the lease was just taken over. With Redis away the
-- collector keeps running on its own (degraded): collection must not
-- stop because Redis did.
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
    if self.lease_ttl and not self.down then take(self, inst) end
    return li.held ~= false
  end, function(inst)
    local li = lease_of(self, inst)
    li.runs = li.runs - 1
  end)
end

local function attached(self, name)
  for _, x in ipairs(self.collectors) do
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
    if sluice.now() - renewed >= self.lease_ttl / 3 then
      renewed = sluice.now()
      lease_eval(self, c, LEASE)
    end
    sluice.sleep(0.05)
  end
  if not (unless_attached and attached(self, c.name)) then lease_eval(self, c, RELEASE) end
end

--- detach(c): write the final limiter state; stop syncing c (its lease
-- is released once its run in flight ends, unless c's name is attached
-- again).
function _M:detach(c)
  if c.limiter then self:publish_limiter(c) end
  if c.breaker then self.attached_breakers[c.breaker] = nil end
  if owners[c] == self then owners[c] = nil end
  for i, x in ipairs(self.collectors) do
    if x == c then table.remove(self.collectors, i) break end
  end
  if self.lease_ttl and lease_of(self, c).held then sluice.spawn(release, self, c, true) end
end

-- Updates c's lease; on a takeover, collects at once (unless a run is
-- already going).
function _M:renew(c)
  guard(self, c)
  if take(self, c) and c.running and lease_of(self, c).runs == 0 then
    sluice.spawn(c.run_once, c)
  end
end

--- leases(ttl): each collector runs in one instance at a time: a lease key
-- lease:collector:{name} with a TTL of ttl seconds (15), renewed every
-- ttl/3 and before each run; when its holder dies, another instance takes
-- over once it expires.
function _M:leases(ttl)
  self.lease_ttl = ttl or 15
  for _, c in ipairs(self.collectors) do self:renew(c) end
end

local function pull_all(self, key)
  for _, c in ipairs(self.collectors) do
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
    local sub = self.redis:subscribe(CHANNEL, { max_pending = 10000 })
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

--- start(): the background sync (breakers on each announcement and every
-- 5 s, limiters every 5 s, leases every ttl/3).
function _M:start()
  if self.lease_ttl then
    self.lease_timer = sluice.every(self.lease_ttl / 3, function(premature)
      if premature then return end
      for _, c in ipairs(self.collectors) do self:renew(c) end
    end)
  end
  self.listener = sluice.spawn(listen, self)
  self.timer = sluice.every(POLL, function(premature)
    if premature then return end
    for _, c in ipairs(self.collectors) do
      if c.breaker then self:pull_breaker(c) end
      if c.limiter then self:publish_limiter(c) end
    end
  end)
  return self.timer
end

--- stream_sink{stream = "sluice:{table}", maxlen = 1e6} -> a sink whose
-- publish(table, rows) appends each row to the stream (XADD with
-- approximate MAXLEN trimming, one pipeline per batch), fields flattened
-- (tables as JSON). With Redis away the rows are not published (they are
-- in SQLite); that is logged once per outage.
function _M:stream_sink(opts)
  local pattern = opts.stream or "sluice:{table}"
  local maxlen = tostring(math.floor(opts.maxlen or 1e6))
  local shared = self
  return {
    publish = function(_, tname, rows)
      if #rows == 0 then return true end
      local stream = pattern:gsub("{table}", tname)
      local cmds = {}
      for i, row in ipairs(rows) do
        local cmd = { "XADD", stream, "MAXLEN", "~", maxlen, "*" }
        local keys = {}
        for k in pairs(row) do keys[#keys + 1] = k end
        table.sort(keys)
        for _, k in ipairs(keys) do
          local v = row[k]
          cmd[#cmd + 1] = k
          cmd[#cmd + 1] = type(v) == "table" and (cjson.encode(v) or "") or tostring(v)
        end
        cmds[i] = cmd
      end
      local res, err = shared.redis:pipeline(cmds)
      if not res then
        if not shared.down then
          shared.down = true
          log.warning("redis unreachable: rows are not published to streams", { error = err })
        end
        return nil, err
      end
      return true
    end,
  }
end

function _M:stop()
  self.stopped = true
  if self.sub then self.sub:close() end
  -- (still subscribing while Redis is away, it would wait its timeout)
  if self.listener then sluice.kill(self.listener) end
  if self.timer then self.timer:cancel() end
  if self.lease_timer then self.lease_timer:cancel() end
  local leaving = {}
  for _, c in ipairs(self.collectors) do
    if c.limiter then self:publish_limiter(c) end
    if self.lease_ttl and lease_of(self, c).held then leaving[#leaving + 1] = c end
  end
  -- released once the runs in flight have ended: the store is closed
  -- after this, so those runs still store their rows
  for _, c in ipairs(leaving) do release(self, c) end
  self.redis:close()
end

-- --- backfill window claims ------------------------------------------------
-- A backfill window is claimed under backfill:{collector}:{partition}:{start}
-- before it is fetched, so that instances sharing one backfill fetch each
-- window once. The value is JSON:
--   {"state":"claimed","by":instance,"token":job token,"at":t}  PX claim TTL,
--     renewed by its holder while the window is fetched;
--   {"state":"done","by":instance,"job":id,"rows":n,"from":s,"to":s,"at":t}
--     EX done TTL (7 days by default), once its rows are committed.
-- A failed window's claim is deleted by its holder; a dead holder's claim
-- expires. All of these return nil, err when Redis cannot be reached (and
-- the outage is tracked as by call()).

-- Claims KEYS[1] for the token ARGV[1] for ARGV[2] ms (ARGV[3] is the claim
-- document) unless another live token holds it or it is done covering
-- [ARGV[4], ARGV[5]) at or after ARGV[6]. Returns {verdict, old value}.
local CLAIM = [[
local v = redis.call('GET', KEYS[1])
if v then
  local ok, d = pcall(cjson.decode, v)
  if ok and type(d) == 'table' then
    if d.state == 'claimed' then
      if d.token == ARGV[1] then
        redis.call('PEXPIRE', KEYS[1], ARGV[2])
        return {'claimed', v}
      end
      return {'held', v}
    end
    if d.state == 'done' and type(d.from) == 'number' and type(d.to) == 'number'
        and type(d.at) == 'number' and d.from <= tonumber(ARGV[4])
        and d.to >= tonumber(ARGV[5]) and d.at >= tonumber(ARGV[6]) then
      return {'done', v}
    end
  end
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
if v then return {'claimed', v} end
return {'claimed'}]]
-- Renews (ARGV[3] = "renew", PEXPIRE ARGV[2] ms) or releases the claim of
-- token ARGV[1]: DEL, or back to the done mark ARGV[4] it replaced (EX
-- ARGV[5]); 1 when it was ours, 0 when not (any more).
local UNCLAIM = [[
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local ok, d = pcall(cjson.decode, v)
if not ok or type(d) ~= 'table' or d.state ~= 'claimed' or d.token ~= ARGV[1] then return 0 end
if ARGV[3] == 'renew' then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if ARGV[4] and ARGV[4] ~= '' then
  redis.call('SET', KEYS[1], ARGV[4], 'EX', ARGV[5])
  return 1
end
return redis.call('DEL', KEYS[1])]]

local function ms(seconds)
  return string.format("%d", math.max(1, math.floor(seconds * 1000 + 0.5)))
end

local function decode_doc(v)
  local d = type(v) == "string" and cjson.decode(v)
  if type(d) == "table" then return d end
  return nil
end

--- window_key(collector, partition, window_start) -> the claim key.
function _M.window_key(collector, partition, start)
  return string.format("backfill:%s:%s:%d", collector, partition, start)
end

--- window_claim(key, token, ttl, win) -> verdict, doc, raw | nil, err.
-- win = {from, to, since}: the part of the window wanted, and the oldest
-- done mark that counts (0: any). verdict "claimed" (ours for ttl seconds;
-- doc: the value it replaced, if any, e.g. an older or shorter done mark),
-- "held" (another token's live claim, doc) or "done" (doc: the done mark
-- covering win); raw is doc as stored.
function _M:window_claim(key, token, ttl, win)
  local claim = cjson.encode({ state = "claimed", by = self.id, token = token, at = sluice.time() })
  local v, err = self:eval(CLAIM, { key }, { token, ms(ttl), claim,
    string.format("%.17g", win.from), string.format("%.17g", win.to),
    string.format("%.17g", win.since or 0) })
  if type(v) ~= "table" then return nil, err or "bad reply" end
  return v[1], decode_doc(v[2]), v[2]
end

--- window_renew(key, token, ttl) -> true (still ours, for ttl seconds
-- more) | false (lost: expired or taken) | nil, err.
function _M:window_renew(key, token, ttl)
  local v, err = self:eval(UNCLAIM, { key }, { token, ms(ttl), "renew" })
  if v == nil then return nil, err end
  return v == 1
end

--- window_release(key, token, restore, ttl) -> true (released) | false
-- (not ours) | nil, err. restore: the raw done mark the claim replaced, put
-- back for ttl seconds (else the key is deleted).
function _M:window_release(key, token, restore, ttl)
  local v, err = self:eval(UNCLAIM, { key }, { token, "0", "release", restore or "",
    string.format("%d", math.ceil(ttl or 1)) })
  if v == nil then return nil, err end
  return v == 1
end

--- window_done(key, doc, ttl) -> true | nil, err: marks the window done
-- for ttl seconds; doc = {job, rows, from, to} (by and at are added).
function _M:window_done(key, doc, ttl)
  local d = { state = "done", by = self.id, at = sluice.time() }
  for k, v in pairs(doc) do d[k] = v end
  local v, err = self:call("SET", key, cjson.encode(d), "EX", string.format("%d", math.ceil(ttl)))
  if v == nil then return nil, err end
  return true
end

--- window_states(keys) -> {key = doc} of the keys that exist | nil, err,
-- by MGET in batches of 500.
function _M:window_states(keys)
  local out = {}
  for i = 1, #keys, 500 do
    local batch = { unpack(keys, i, math.min(i + 499, #keys)) }
    local vals, err = self:call("MGET", unpack(batch))
    if type(vals) ~= "table" then return nil, err or "bad reply" end
    for j, k in ipairs(batch) do
      local d = decode_doc(vals[j])
      if d then out[k] = d end
    end
  end
  return out
end

return _M
