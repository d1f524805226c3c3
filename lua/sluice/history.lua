--- sluice.history: the last hour of a running sluice, kept in memory for
-- the status page (GET /history): breakers' states and transitions,
-- limiters' rate against their quota with 429s and bans, collectors' rows
-- and errors, sinks' outbox depth, sampled every `interval` seconds.
--
--   local h = history.new{ current = function() return app end,
--                          interval = 10, span = 3600, max_series = 200 }
--   h:start()       -- samples now, then every interval (a timer on the loop)
--   h:sample()      -- one sample now (start's timer calls it)
--   h:watch()       -- records the transitions of breakers not seen yet
--   h:view()        -- the JSON view below
--   h:stop()
--
-- It owns its rings and nothing else: it reads breakers (breaker.all(),
-- cb:state(), and their on_change, to which it subscribes each breaker
-- once, so a transition is recorded when it happens, not at the next
-- sample), limiters (limiter.all(), lim:stats(), lim:snapshot()), the
-- app's collectors (counters(), health()) and its outbox (status()).
-- Memory is bounded: ceil(span / interval) slots (360 by default) per
-- series, at most max_series series of each kind (more are left out and
-- counted: view().untracked), at most MAX_TRANSITIONS transitions per
-- breaker; a series not seen for a whole span (a collector removed by a
-- reload) is dropped. Nothing here yields. clock (epoch seconds; sluice.time
-- by default) is for tests.
--
-- view() -> {
--   interval, span, now (epoch seconds),
--   times = {t, ...}                 the samples' epoch seconds, oldest first
--   breakers = {name = {state = now, states = {...}, transitions =
--     {{at, from, to, reason}, ...}}}
--   limiters = {name = {rate = {...} (allowed req/s), sent = {...} (req/s
--     sent since the previous sample), quota = {...} (learned: the rate a
--     429 proved too high, 0 when none is known), declared = {...} (the
--     configured rate), throttled = {...} (429s since the previous sample),
--     banned = {...} (true while banned)}}
--   collectors = {name = {status = {...}, rows = {...}, errors = {...},
--     requests = {...}} (since the previous sample)}
--   sinks = {name = {depth = {...}, max_rows}}
--   untracked = {breakers = n, ...} when series were left out }
-- Every list of a series is aligned with times; false where the series
-- had no value (it did not exist yet).
local sluice = require "sluice"
local breaker = require "sluice.breaker"
local limiter = require "sluice.limiter"
local json = require "sluice.json"
local options = require "sluice.options"
local table_new = require "table.new"

local _M = {}
local mt = { __index = _M }

_M.MAX_TRANSITIONS = 100

local NEW_OPTIONS = {
  current = { type = "function", required = true },
  interval = { finite = true, gt = 0 }, span = { finite = true, gt = 0 },
  max_series = { integer = true, min = 1 }, clock = "function", alive = "function",
}

--- new(opts) -> h. opts.current: a function giving the running app
-- ({order, outbox}) or nil; interval (10 s), span (3600 s), max_series
-- (200 of each kind), clock; alive: a function, false once whatever reads
-- the history is gone: the timer then stops (at its next tick), so that
-- the history never keeps the process running on its own.
function _M.new(opts)
  if type(opts) ~= "table" or type(opts.current) ~= "function" then
    error("sluice.history.new: bad argument #1 (table with a function 'current' expected)", 2)
  end
  options.check("sluice.history.new", opts, NEW_OPTIONS)
  local interval, span = opts.interval or 10, opts.span or 3600
  return setmetatable({
    current = opts.current, interval = interval, span = span, alive = opts.alive,
    slots = math.max(1, math.ceil(span / interval)), max_series = opts.max_series or 200,
    clock = opts.clock or sluice.time,
    n = 0,          -- samples taken
    times = {},     -- slot -> epoch seconds
    kinds = { breakers = {}, limiters = {}, collectors = {}, sinks = {} }, -- kind -> name -> series
    untracked = {}, -- kind -> names left out
    watched = setmetatable({}, { __mode = "k" }), -- breaker -> true once subscribed
  }, mt)
end

-- The series of name in kind, made on first sight (nil when kind is full).
local function series(h, kind, name)
  local all = h.kinds[kind]
  local s = all[name]
  if s then return s end
  local count = 0
  for _ in pairs(all) do count = count + 1 end
  if count >= h.max_series then
    local left = h.untracked[kind] or {}
    h.untracked[kind] = left
    left[name] = true
    return nil
  end
  s = { fields = {}, seen = 0 }
  all[name] = s
  return s
end

-- s.fields[field][slot] = v for the current sample
local function put(h, s, field, v)
  local ring = s.fields[field]
  if not ring then
    -- the whole span at once: a ring filled as samples came grew by
    -- doubling for its first hour (10 MiB of a 500-collector app's heap,
    -- a slope in RSS), and a series first seen mid-span went to the hash part
    ring = table_new(h.slots, 0)
    s.fields[field] = ring
  end
  ring[(h.n - 1) % h.slots + 1] = v
  s.seen = h.n
end

-- The growth of a counter since the previous sample (0 when it went back:
-- a counter that was replaced).
local function delta(s, key, v)
  s.last = s.last or {}
  local prev = s.last[key]
  s.last[key] = v
  if not prev then return 0 end
  return v >= prev and v - prev or v
end

local function transition(h, name, from, to, reason, at)
  local s = series(h, "breakers", name)
  if not s then return end
  -- a reload's new breaker restored to the state of the one it replaces:
  -- no change for the breaker of that name
  if reason == "restore" and to == s.state then return end
  -- a ring of four columns, whole at the breaker's first transition: a
  -- table a transition held up to 100 per breaker (~17 KB each, 3.4 MB at
  -- 200 flapping breakers), which a soak's heap grew by for its first
  -- 20 minutes; the view makes the tables
  local tr = s.transitions
  if not tr then
    local max = _M.MAX_TRANSITIONS
    tr = { n = 0, max = max, at = table_new(max, 0), from = table_new(max, 0), to = table_new(max, 0),
      reason = table_new(max, 0) }
    s.transitions = tr
  end
  local i = tr.n % tr.max + 1
  tr.at[i], tr.from[i], tr.to[i], tr.reason[i] = at, from, to, reason
  tr.n = tr.n + 1
  s.state = to
end

--- h:watch(): subscribes to the state changes of every breaker not seen yet.
function _M:watch()
  for name, cb in pairs(breaker.all()) do
    if not self.watched[cb] then
      self.watched[cb] = true
      -- (the callback runs as a task of its own, right after the change)
      cb:on_change(function(_, from, to, reason)
        if not self.stopped then transition(self, name, from, to, reason, self.clock()) end
      end)
      local s = series(self, "breakers", name)
      if s and not s.state then s.state = cb:state() end
    end
  end
end

local function sample_limiters(h, now, dt)
  for name, lim in pairs(limiter.all()) do
    local s = series(h, "limiters", name)
    if s then
      local st, snap = lim:stats(), lim:snapshot()
      local sent = delta(s, "requests", st.total_requests)
      put(h, s, "rate", st.current_global_rate)
      put(h, s, "sent", dt > 0 and sent / dt or 0)
      put(h, s, "quota", snap.global.ceiling or 0)
      put(h, s, "declared", st.default_rate)
      put(h, s, "throttled", delta(s, "violations", st.total_violations))
      local banned = (snap.global.ban_until or 0) > now
      for _, p in ipairs(snap.pools or {}) do banned = banned or (p.ban_until or 0) > now end
      put(h, s, "banned", banned)
    end
  end
end

local function sample_app(h)
  local a = h.current()
  if not a then return end
  for _, c in ipairs(a.order or {}) do
    local s = series(h, "collectors", c.name)
    if s then
      local st = c:counters()
      put(h, s, "status", (c:health()))
      put(h, s, "rows", delta(s, "rows", st.data_points_collected))
      put(h, s, "errors", delta(s, "errors", st.failed_requests))
      put(h, s, "requests", delta(s, "requests", st.total_requests))
    end
  end
  if a.outbox and a.store and a.store:is_open() then
    for name, st in pairs(a.outbox:status()) do
      local s = series(h, "sinks", name)
      if s then
        put(h, s, "depth", st.depth or false)
        s.max_rows = st.max_rows
      end
    end
  end
end

--- h:sample(): one sample of everything, now.
function _M:sample()
  local now = self.clock()
  local prev = self.times[(self.n - 1) % self.slots + 1]
  local dt = self.n > 0 and prev and now - prev or 0
  self.untracked = {}
  self.n = self.n + 1
  self.times[(self.n - 1) % self.slots + 1] = now
  self:watch()
  for name, cb in pairs(breaker.all()) do
    local s = series(self, "breakers", name)
    if s then
      -- (a change whose callback has not run yet is recorded by it)
      s.state = cb:state()
      put(self, s, "states", s.state)
    end
  end
  sample_limiters(self, now, dt)
  sample_app(self)
  -- series not seen for a whole span are gone (removed by a reload)
  for _, all in pairs(self.kinds) do
    for name, s in pairs(all) do
      if self.n - s.seen >= self.slots then all[name] = nil end
    end
  end
end

--- h:start() -> h: samples now and every interval, until h:stop().
function _M:start()
  if self.timer then return self end
  self.stopped = nil
  self:sample()
  self.timer = sluice.every(self.interval, function(premature)
    if self.alive and not self.alive() then
      self:stop()
    elseif not premature and not self.stopped then
      self:sample()
    end
  end)
  return self
end

--- h:stop(): no more samples or transitions recorded (idempotent).
function _M:stop()
  self.stopped = true
  if self.timer then
    self.timer:cancel()
    self.timer = nil
  end
end

-- The ring of a field, oldest first, false where absent.
local function linear(h, ring, first, count)
  local out = json.array()
  for i = 0, count - 1 do
    local v = ring and ring[(first + i - 1) % h.slots + 1]
    if v == nil then v = false end
    out[#out + 1] = v
  end
  return out
end

function _M:view()
  local count = math.min(self.n, self.slots)
  local first = self.n - count + 1 -- the oldest sample's number
  local out = { interval = self.interval, span = self.span, now = self.clock(),
    times = linear(self, self.times, first, count) }
  local since = self.clock() - self.span
  for kind, all in pairs(self.kinds) do
    local k = {}
    for name, s in pairs(all) do
      local v = {}
      for field, ring in pairs(s.fields) do v[field] = linear(self, ring, first, count) end
      if kind == "breakers" then
        v.state = s.state
        local list, tr = json.array(), s.transitions
        if tr then
          for n = math.max(0, tr.n - tr.max), tr.n - 1 do
            local i = n % tr.max + 1
            if tr.at[i] >= since then
              list[#list + 1] = { at = tr.at[i], from = tr.from[i], to = tr.to[i], reason = tr.reason[i] }
            end
          end
        end
        v.transitions = list
      elseif kind == "sinks" then
        v.max_rows = s.max_rows
      end
      k[name] = v
    end
    out[kind] = k
  end
  local left
  for kind, names in pairs(self.untracked) do
    local n = 0
    for _ in pairs(names) do n = n + 1 end
    left = left or {}
    left[kind] = n
  end
  out.untracked = left
  return out
end

return _M
