--- sluice.collector.cache: the response cache of a collector's requests.
--
--   local cache = require "sluice.collector.cache"
--   local store = cache.new{ max_bytes = 64 * 1024 * 1024 }
--   -- the request pipeline (sluice.collector.request) uses it for
--   -- self:get(path, { cache = seconds }):
--   local hit, a, b, c, d = store:fetch(key, seconds, function() ... end)
--
-- One store per process: sluice.app makes it from the configuration's
-- `cache = { max_bytes = ... }` and hands it to every collector it builds
-- (context.cache of collector.new); a collector built without one gets one
-- of its own. The store owns its entries, its LRU list, its expiry heap,
-- the requests in flight (single-flight) and its counters; it keeps
-- successful answers as their bytes (status, headers, body), never a
-- decoded table, so every hit decodes its own copy.
--
-- Freshness: an answer is reused while it is younger than the asking
-- request's seconds and than the seconds of the request that stored it;
-- then it is a miss, and the new answer replaces it. Expired entries are
-- freed as time passes (checked at every fetch), and the least recently
-- used ones go when a new answer would take the store over max_bytes (an
-- entry's bytes: its key, body, header names and values, and 64 for the
-- rest). An answer bigger than max_bytes is not kept (max_bytes = 0 keeps
-- none; requests still share one flight).
--
-- Single flight: while a request for a key is going to the network (the
-- leader), the same request from other tasks waits for it (parked, not
-- polling the network) and is answered from its answer; when the leader
-- fails, the waiters get its failure; when the leader's task ends without
-- an answer (killed, or an error raised), the first waiter to notice
-- (within CHECK seconds) leads a new attempt. A waiter that is killed
-- leaves nothing behind once the leader ends. Counters: a hit is a request
-- answered from memory (an entry, or the leader's fresh answer); a miss is
-- one that went to the network or shared the leader's failure. fetch()
-- yields (call it in a task); the other methods do not.
local sluice = require "sluice"
local crypto = require "sluice.crypto"
local options = require "sluice.options"

local _M = {}
local Cache = {}
local mt = { __index = Cache }

_M.DEFAULT_MAX_BYTES = 64 * 1024 * 1024
local CHECK = 0.2   -- seconds between a waiter's looks at its leader
local OVERHEAD = 64 -- bytes an entry costs besides its strings

local NEW_OPTIONS = { max_bytes = { integer = true, min = 0 } }

--- new([opts]) -> an empty store. opts.max_bytes: the bound (default
-- 64 MiB).
function _M.new(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("sluice.collector.cache.new: bad argument #1 (table of options expected, got " .. type(opts) .. ")", 2)
  end
  options.check("sluice.collector.cache.new", opts, NEW_OPTIONS)
  return setmetatable({
    max_bytes_ = (opts and opts.max_bytes) or _M.DEFAULT_MAX_BYTES,
    entries_ = {}, -- key -> entry {key, status, headers, body, meta, bytes, stored_at, expires, prev, next, hi}
    head_ = nil, tail_ = nil, -- LRU list: head most recently used
    heap_ = {},      -- entries by expires (min-heap; entry.hi is its index)
    flights_ = {},   -- key -> {leader = task, waiters = {task...}}
    bytes_ = 0, count_ = 0,
    hits_ = 0, misses_ = 0, evictions_ = 0, expirations_ = 0,
  }, mt)
end

--- key(method, url, headers, body) -> the cache key of a request: a
-- SHA-256 of the method, the full URL (query included), every request
-- header (names lower case, sorted; values as sent, so the auth header's
-- value too) and the body. Two collectors share an answer only when they
-- send the same request with the same credentials; the key keeps no
-- secret readable.
function _M.key(method, url, headers, body)
  local names, lower = {}, {}
  for name, value in pairs(headers or {}) do
    local n = name:lower()
    names[#names + 1] = n
    lower[n] = tostring(value)
  end
  table.sort(names)
  local parts = { method, url }
  for _, n in ipairs(names) do parts[#parts + 1] = n .. ":" .. lower[n] end
  parts[#parts + 1] = body or ""
  -- lengths first: no two different requests join into the same text
  local framed = {}
  for i, p in ipairs(parts) do framed[i] = #p .. ":" .. p end
  return crypto.digest("sha256", table.concat(framed, "\n"))
end

-- --- the LRU list and the expiry heap -------------------------------------

local function unlink(self, e)
  if e.prev then e.prev.next = e.next else self.head_ = e.next end
  if e.next then e.next.prev = e.prev else self.tail_ = e.prev end
  e.prev, e.next = nil, nil
end

local function push_front(self, e)
  e.next = self.head_
  if self.head_ then self.head_.prev = e end
  self.head_ = e
  if not self.tail_ then self.tail_ = e end
end

local function heap_swap(h, i, j)
  h[i], h[j] = h[j], h[i]
  h[i].hi, h[j].hi = i, j
end

local function heap_up(h, i)
  while i > 1 do
    local p = math.floor(i / 2)
    if h[p].expires <= h[i].expires then return end
    heap_swap(h, i, p)
    i = p
  end
end

local function heap_down(h, i)
  local n = #h
  while true do
    local l, r, m = 2 * i, 2 * i + 1, i
    if l <= n and h[l].expires < h[m].expires then m = l end
    if r <= n and h[r].expires < h[m].expires then m = r end
    if m == i then return end
    heap_swap(h, i, m)
    i = m
  end
end

local function heap_remove(h, e)
  local i, n = e.hi, #h
  if i ~= n then
    heap_swap(h, i, n)
    h[n] = nil
    heap_up(h, i)
    heap_down(h, math.min(i, #h))
  else
    h[n] = nil
  end
  e.hi = nil
end

local function drop(self, e)
  unlink(self, e)
  heap_remove(self.heap_, e)
  self.entries_[e.key] = nil
  self.bytes_ = self.bytes_ - e.bytes
  self.count_ = self.count_ - 1
end

-- Frees the entries whose time is up.
local function expire(self, now)
  local h = self.heap_
  while h[1] and h[1].expires <= now do
    drop(self, h[1])
    self.expirations_ = self.expirations_ + 1
  end
end

-- Evicts least recently used entries until `need` more bytes fit.
local function make_room(self, need)
  while self.tail_ and self.bytes_ + need > self.max_bytes_ do
    drop(self, self.tail_)
    self.evictions_ = self.evictions_ + 1
  end
end

local function size_of(key, a)
  local n = OVERHEAD + #key + #a.body
  for name, value in pairs(a.headers) do n = n + #name + #tostring(value) end
  return n
end

-- Keeps answer a ({status, headers (plain table), body, meta}) under key
-- for ttl seconds; false when it cannot fit.
local function put(self, key, a, ttl, now)
  local old = self.entries_[key]
  if old then drop(self, old) end
  local bytes = size_of(key, a)
  if bytes > self.max_bytes_ then return false end
  make_room(self, bytes)
  local e = { key = key, status = a.status, headers = a.headers, body = a.body, url = a.url,
    meta = a.meta, bytes = bytes, stored_at = now, expires = now + ttl }
  self.entries_[key] = e
  push_front(self, e)
  local h = self.heap_
  h[#h + 1] = e
  e.hi = #h
  heap_up(h, #h)
  self.bytes_ = self.bytes_ + bytes
  self.count_ = self.count_ + 1
  return true
end

-- The fresh entry of key for a request wanting answers younger than ttl.
local function lookup(self, key, ttl, now)
  local e = self.entries_[key]
  if not e then return nil end
  if now - e.stored_at >= ttl then return nil end
  unlink(self, e)
  push_front(self, e)
  return e
end

local function alive(task)
  local st = sluice.status(task)
  return st ~= "done" and st ~= "failed" and st ~= "killed"
end

-- --- fetching -------------------------------------------------------------

--- store:fetch(key, ttl, fn) -> true, answer | false, ...
-- The answer of key when one younger than ttl seconds is kept, or is
-- being fetched by another task (then this one waits for it); otherwise
-- this task calls fn(), which goes to the network and returns true,
-- answer (a success: answer = {status, headers (a plain table), body,
-- url, meta}, kept for ttl seconds), false, ... (a failure: handed to the
-- waiters too) or nil (an answer neither kept nor shared: the waiters ask
-- for themselves). Returns true, answer (an entry or an answer: the caller
-- builds its own result from them and changes neither; an entry has
-- stored_at), or false and fn's failure values, or nil (fn's nil, to the
-- task that called it). An error fn raises ends the flight and is raised
-- again here. false, "shutdown", "aborted"
-- when shutdown begins while waiting.
function Cache:fetch(key, ttl, fn)
  if type(ttl) ~= "number" or not (ttl > 0) or ttl == math.huge then
    error("cache:fetch: bad argument #2 'ttl' (finite number of seconds > 0 expected)", 2)
  end
  local me = sluice.current()
  if not me then error("cache:fetch: must be called in a task", 2) end
  while true do
    local now = sluice.now()
    expire(self, now)
    local e = lookup(self, key, ttl, now)
    if e then
      self.hits_ = self.hits_ + 1
      return true, e
    end
    local flight = self.flights_[key]
    if flight and not alive(flight.leader) then
      self.flights_[key] = nil -- its leader was killed: lead a new one
      flight = nil
    end
    if not flight then
      flight = { leader = me, waiters = {} }
      self.flights_[key] = flight
      local res = { pcall(fn) }
      if self.flights_[key] == flight then self.flights_[key] = nil end
      local waiters = flight.waiters
      flight.waiters = {}
      if not res[1] then
        -- no answer: the waiters look again (one of them leads)
        for _, t in ipairs(waiters) do sluice.unpark(t, "again") end
        error(res[2], 0)
      end
      self.misses_ = self.misses_ + 1
      if res[2] == nil then
        -- an answer not to keep nor share: the waiters ask for themselves
        for _, t in ipairs(waiters) do sluice.unpark(t, "again") end
        return nil
      end
      if res[2] then
        put(self, key, res[3], ttl, sluice.now())
        for _, t in ipairs(waiters) do sluice.unpark(t, "answer", res[3]) end
        return true, res[3]
      end
      for _, t in ipairs(waiters) do sluice.unpark(t, "failure", unpack(res, 3, table.maxn(res))) end
      return unpack(res, 2, table.maxn(res))
    end
    -- another task is fetching it: wait for its answer
    local w = flight.waiters
    w[#w + 1] = me
    local r = { sluice.park(CHECK) }
    if r[1] then
      if r[2] == "answer" then
        self.hits_ = self.hits_ + 1
        return true, r[3]
      elseif r[2] == "failure" then
        self.misses_ = self.misses_ + 1
        return false, unpack(r, 3, table.maxn(r))
      end
      -- "again": the leader raised; look again
    else
      for i, t in ipairs(w) do
        if t == me then table.remove(w, i) break end
      end
      if r[2] == "shutdown" then return false, "shutdown", "aborted" end
      -- timeout: look again (a killed leader's flight is replaced above)
    end
  end
end

--- store:resize(max_bytes): a new bound; least recently used entries go
-- until the store fits it.
function Cache:resize(max_bytes)
  if type(max_bytes) ~= "number" or max_bytes < 0 or max_bytes ~= math.floor(max_bytes) then
    error("cache:resize: bad argument #1 (an integer number of bytes >= 0 expected)", 2)
  end
  self.max_bytes_ = max_bytes
  make_room(self, 0)
end

--- store:clear(): every entry goes (not counted as evictions).
function Cache:clear()
  while self.tail_ do drop(self, self.tail_) end
end

--- store:stats() -> {hits, misses, evictions (LRU, to fit max_bytes),
-- expirations (freed when their time was up), bytes, entries, max_bytes,
-- hit_rate (hits / (hits + misses), 0 before any), in_flight (requests
-- being fetched with others able to join)}. Expired entries are freed first.
function Cache:stats()
  expire(self, sluice.now())
  local in_flight = 0
  for key, f in pairs(self.flights_) do
    if alive(f.leader) then in_flight = in_flight + 1 else self.flights_[key] = nil end
  end
  local asked = self.hits_ + self.misses_
  return {
    hits = self.hits_, misses = self.misses_, evictions = self.evictions_,
    expirations = self.expirations_, bytes = self.bytes_, entries = self.count_,
    max_bytes = self.max_bytes_, hit_rate = asked > 0 and self.hits_ / asked or 0,
    in_flight = in_flight,
  }
end

--- cache.is(v) -> whether v is a store made by new().
function _M.is(v)
  return getmetatable(v) == mt
end

return _M
