--- sluice.collector.stream: a collector's stream -- the long-lived task
-- that runs the spec's stream function, its connections, the batches of
-- rows it emits, its statistics and its health.
--
-- A collector spec may have stream = function(self, s) ... end (instead
-- of collect or datasets, or beside them). start(c) runs it in a task of
-- its own for as long as the collector runs: one call is one connection
-- (a session); when it returns or raises, the connection is closed, the
-- rows emitted are committed, and after a backoff delay the function is
-- called again. The delay is the collector's retry policy's delay(n) (1 s
-- exponential with jitter by default, at most 30 s) for the n-th session
-- in a row that did not last STABLE seconds connected, and at least until
-- the breaker lets a connect through; the limiter paces connects and sends.
--
-- s, the stream handle (one per instance, the same across sessions):
--   s:connect(url [, opts]) -> conn | nil, err: the limiter (endpoint
--     "ws:connect"), then a breaker permit (nil, "circuit breaker NAME is
--     open" without one), then sluice.ws.connect(url, opts) -- or
--     opts.connector, a function with its contract (tests); a failed
--     connect is a breaker failure, a connection a success. One connection
--     at a time: a connect closes the previous one.
--   s:receive([timeout]) -> data, kind | nil, err: the connection's next
--     message (nil, "timeout" after timeout seconds; nil, err when it
--     ended). While it waits, batches older than the batch age are
--     committed and the tickers of s:every run: call it often.
--   s:send(data [, kind]) -> true | nil, err: paced by the limiter
--     (endpoint "ws:send": exchanges limit subscribe messages too).
--   s:emit(table, row [, event_ms]): a row for the collector's table,
--     committed with the others of its batch when the batch holds
--     stream_batch.rows rows or its oldest is stream_batch.age seconds
--     old; event_ms (the exchange's event time, epoch ms) gives the lag.
--   s:flush() -> rows committed now (store_rows: validated, upserted, to
--     the sinks). A store failure is logged and its rows counted dropped.
--   s:every(seconds, fn): fn(s) every seconds while this session lasts,
--     from s:receive (a snapshot of the books on a schedule).
--   s:problem(key, why | nil): a condition that degrades health while set
--     ("book BTC/USDT not synced for 12 s"); nil clears it.
--   s:view(name, fn): fn() -> a table shown in stats().stream[name]
--     (/status, the REPL): the live books.
--   s:close([code, reason]); s:connected() -> bool; s.state (a table of
--     the stream function's own, kept across sessions); s.log.
--
-- Health while running (health(c, base)): failed after FAILED_AFTER
-- connects failed in a row; degraded while disconnected (why, and when the
-- next attempt is), or while a problem is set; else that of the
-- collector's collect or datasets when it has them (base), else healthy.
-- stats(c) -> {connected, connected_at, sessions, connects,
-- connect_failures, consecutive_failures, reconnects, last_error,
-- next_attempt_in, messages, bytes, messages_per_second, rows,
-- rows_per_second, rows_pending, batches, lag_seconds (commit time - the
-- newest event of the last batch), lag_max_seconds (- its oldest),
-- last_message_age, rows_dropped, problems, and each view}.
--
-- The module owns the per-instance state (a table weak by instance); it
-- reads the instance (spec, config, breaker, limiter, retry, log) and
-- writes nothing on it: committed rows go through c:store_rows, and the
-- collector's counters through the tally function it hands to start.
-- start, stop, health and stats do not yield; drain does (it commits).
local sluice = require "sluice"

local _M = {}

_M.STABLE = 30          -- seconds connected after which the backoff starts over
_M.FAILED_AFTER = 5     -- failed connects in a row: health failed
_M.DEFAULT_BATCH = { rows = 1000, age = 0.1 }
local RATE_WINDOW = 10  -- seconds the rates are averaged over

-- instance -> state
local states = setmetatable({}, { __mode = "k" })

-- --- rates ---------------------------------------------------------------

local function meter()
  return { ring = {}, since = sluice.now() }
end

local function mark(m, n)
  local sec = math.floor(sluice.now())
  local i = sec % RATE_WINDOW + 1
  local b = m.ring[i]
  if not b or b.sec ~= sec then
    b = { sec = sec, n = 0 }
    m.ring[i] = b
  end
  b.n = b.n + n
end

local function rate(m)
  local now = sluice.now()
  local sec, sum = math.floor(now), 0
  for _, b in pairs(m.ring) do
    if b.sec > sec - RATE_WINDOW then sum = sum + b.n end
  end
  local span = math.min(RATE_WINDOW, math.max(1, now - m.since))
  return sum / span
end

-- --- the handle ----------------------------------------------------------

local S = {}
local smt = { __index = S }

local function state_of(s)
  return s.st_
end

function S:connected()
  return state_of(self).conn ~= nil
end

function S:close(code, reason)
  local st = state_of(self)
  local conn = st.conn
  st.conn = nil
  if conn then
    st.disconnected_at = sluice.now()
    conn:close(code, reason)
  end
end

local CONNECT_OPTIONS = { connector = "function" }

function S:connect(url, opts)
  if type(url) ~= "string" then
    error("stream:connect: bad argument #1 (a ws:// or wss:// URL expected, got " .. type(url) .. ")", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("stream:connect: bad argument #2 (table of options expected, got " .. type(opts) .. ")", 2)
  end
  local st = state_of(self)
  local c = st.c
  local wsopts, connector = {}, nil
  for k, v in pairs(opts or {}) do
    if CONNECT_OPTIONS[k] then connector = v else wsopts[k] = v end
  end
  if self:connected() then self:close() end
  if not connector then connector = require("sluice.ws").connect end
  if c.limiter then c.limiter:wait("ws:connect") end
  local permit
  if c.breaker then
    permit = c.breaker:allow()
    if not permit then
      st.last_error = "circuit breaker " .. c.breaker:name() .. " is open"
      return nil, st.last_error
    end
  end
  st.connects = st.connects + 1
  local conn, err = connector(url, wsopts)
  if not conn then
    if c.breaker then c.breaker:failure(permit) end
    st.connect_failures = st.connect_failures + 1
    st.consecutive_failures = st.consecutive_failures + 1
    st.last_error = "connect: " .. tostring(err)
    return nil, err
  end
  if c.breaker then c.breaker:success(permit) end
  st.conn, st.connected_at, st.connected_mono = conn, sluice.time(), sluice.now()
  st.consecutive_failures = 0
  if st.ever_connected then st.reconnects = st.reconnects + 1 end
  st.ever_connected = true
  c.log.info("stream connected", { connects = st.connects })
  return conn
end

function S:send(data, kind)
  local st = state_of(self)
  if not st.conn then return nil, "not connected" end
  if st.c.limiter then st.c.limiter:wait("ws:send") end
  if not st.conn then return nil, "not connected" end
  return st.conn:send(data, kind)
end

-- Commits the batch (in the stream task or drain's).
local function flush(st)
  if st.pending_n == 0 then return 0 end
  local batch, newest, oldest = st.pending, st.newest_ms, st.oldest_ms
  local n = st.pending_n
  st.pending, st.pending_n, st.pending_since, st.newest_ms, st.oldest_ms = {}, 0, nil, nil, nil
  local ok, count = pcall(st.c.store_rows, st.c, batch, { what = "stream" })
  if not ok then
    st.rows_dropped = st.rows_dropped + n
    st.last_error = "commit: " .. tostring(count)
    st.c.log.error("stream rows not stored", { rows = n, error = tostring(count) })
    return 0
  end
  local now = sluice.time()
  st.rows, st.batches = st.rows + count, st.batches + 1
  mark(st.rows_meter, count)
  if newest then st.lag, st.lag_max = now - newest / 1000, now - oldest / 1000 end
  if st.tally then st.tally(count) end
  return count
end

function S:flush()
  return flush(state_of(self))
end

function S:emit(tname, row, event_ms)
  if type(tname) ~= "string" then error("stream:emit: bad argument #1 (a table name expected)", 2) end
  if type(row) ~= "table" then error("stream:emit: bad argument #2 (a row table expected)", 2) end
  local st = state_of(self)
  local list = st.pending[tname]
  if not list then
    list = {}
    st.pending[tname] = list
  end
  list[#list + 1] = row
  st.pending_n = st.pending_n + 1
  st.pending_since = st.pending_since or sluice.now()
  event_ms = tonumber(event_ms)
  if event_ms then
    if not st.newest_ms or event_ms > st.newest_ms then st.newest_ms = event_ms end
    if not st.oldest_ms or event_ms < st.oldest_ms then st.oldest_ms = event_ms end
  end
  if st.pending_n >= st.batch.rows then flush(st) end
end

function S:every(seconds, fn)
  if type(seconds) ~= "number" or not (seconds > 0) or seconds == math.huge then
    error("stream:every: bad argument #1 (seconds > 0 expected)", 2)
  end
  if type(fn) ~= "function" then error("stream:every: bad argument #2 (function expected)", 2) end
  local st = state_of(self)
  st.tickers[#st.tickers + 1] = { period = seconds, due = sluice.now() + seconds, fn = fn }
end

function S:problem(key, why)
  if type(key) ~= "string" then error("stream:problem: bad argument #1 (a key string expected)", 2) end
  state_of(self).problems[key] = why ~= nil and tostring(why) or nil
end

function S:view(name, fn)
  if type(name) ~= "string" or type(fn) ~= "function" then
    error("stream:view: bad arguments (a name and a function expected)", 2)
  end
  state_of(self).views[name] = fn
end

-- Commits an old batch and runs the tickers due; returns the seconds
-- until the next of them is due (nil: none).
local function run_due(s, st)
  local now = sluice.now()
  if st.pending_since and now - st.pending_since >= st.batch.age then flush(st) end
  for _, t in ipairs(st.tickers) do
    if now >= t.due then
      t.due = math.max(t.due + t.period, now)
      t.fn(s)
      now = sluice.now()
    end
  end
  local next_in
  if st.pending_since then next_in = st.pending_since + st.batch.age - now end
  for _, t in ipairs(st.tickers) do
    local d = t.due - now
    if not next_in or d < next_in then next_in = d end
  end
  return next_in
end

function S:receive(timeout)
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    error("stream:receive: bad argument #1 (seconds >= 0 expected)", 2)
  end
  local st = state_of(self)
  local deadline = timeout and sluice.now() + timeout
  while true do
    local conn = st.conn
    if not conn then return nil, "not connected" end
    local wait = run_due(self, st)
    if deadline then
      local left = deadline - sluice.now()
      if not wait or left < wait then wait = left end
    end
    if wait and wait < 0.001 then wait = 0.001 end
    if not st.conn then return nil, "not connected" end
    local data, kind = conn:receive(wait)
    if data ~= nil then
      st.messages, st.bytes = st.messages + 1, st.bytes + #data
      st.last_message = sluice.now()
      mark(st.msg_meter, 1)
      return data, kind
    end
    if kind ~= "timeout" then
      st.last_error = tostring(kind)
      return nil, kind
    end
    if deadline and sluice.now() >= deadline then
      run_due(self, st)
      return nil, "timeout"
    end
  end
end

-- --- the task -------------------------------------------------------------

local function session_ended(c, st, ok, a, b)
  local why
  if not ok then
    why = tostring(a)
    c.log.error("stream failed", { error = why:match("^[^\n]*"), traceback = why })
  elseif a == nil and b ~= nil then
    why = tostring(b)
  else
    why = st.last_error or "the stream function returned"
  end
  st.last_error = why:match("^[^\n]*")
  return st.last_error
end

local function loop(c, st)
  local s = st.handle
  local unstable = 0
  while st.running do
    st.sessions = st.sessions + 1
    st.tickers = {}
    st.session_mono = sluice.now()
    local ok, a, b = xpcall(c.spec.stream, debug.traceback, c, s)
    local lasted = st.connected_mono and sluice.now() - st.connected_mono or 0
    local was = st.conn ~= nil or st.connected_mono ~= nil
    if st.conn then pcall(S.close, s) end
    st.connected_mono = nil
    st.disconnected_at = sluice.now()
    local why = session_ended(c, st, ok, a, b)
    pcall(flush, st)
    if not st.running then break end
    if was and lasted >= _M.STABLE then unstable = 1 else unstable = unstable + 1 end
    local delay = c.retry and c.retry:delay(unstable) or math.min(30, 2 ^ (unstable - 1))
    if c.breaker and c.breaker:state() == "open" then
      local m = c.breaker:metrics()
      if m.open_until then delay = math.max(delay, m.open_until - sluice.time()) end
    end
    st.next_attempt = sluice.now() + delay
    c.log.warning("stream disconnected", { error = why, reconnect_in = delay, attempt = unstable })
    local slept = sluice.sleep(delay)
    st.next_attempt = nil
    if not slept then break end
  end
  pcall(flush, st)
end

--- start(c, tally): runs c's stream; tally(n) is told each commit's rows.
function _M.start(c, tally)
  local st = states[c]
  if st and st.running then return end
  local batch = {}
  for k, v in pairs(_M.DEFAULT_BATCH) do batch[k] = v end
  for k, v in pairs(c.config.stream_batch or {}) do batch[k] = v end
  st = st or {
    c = c, state = {}, views = {}, problems = {}, pending = {}, pending_n = 0,
    connects = 0, connect_failures = 0, consecutive_failures = 0, reconnects = 0, sessions = 0,
    messages = 0, bytes = 0, rows = 0, batches = 0, rows_dropped = 0,
    msg_meter = meter(), rows_meter = meter(), tickers = {},
  }
  st.batch, st.tally, st.running = batch, tally, true
  st.handle = st.handle or setmetatable({ st_ = st, state = st.state, log = c.log.with({ stream = true }) }, smt)
  states[c] = st
  st.task = sluice.spawn(loop, c, st)
end

--- stop(c): the stream ends (its task killed: the connection closes with
-- it); rows not yet committed wait for drain. Does not yield.
function _M.stop(c)
  local st = states[c]
  if not (st and st.running) then return end
  st.running = false
  local t = st.task
  st.task = nil
  if t and t ~= sluice.current() then sluice.kill(t, "collector stopped") end
  st.conn = nil
end

--- drain(c): commits the rows the stream emitted and has not committed
-- (after stop; in a task: sinks may yield).
function _M.drain(c)
  local st = states[c]
  if st then flush(st) end
end

local function disconnected_why(st)
  local why = "stream disconnected"
  if not st.ever_connected then why = "stream not connected yet" end
  if st.last_error then why = why .. ": " .. st.last_error end
  if st.next_attempt then
    why = why .. string.format(" (next attempt in %.1f s)", math.max(0, st.next_attempt - sluice.now()))
  end
  return why
end

--- health(c, base) -> status, reason. base(c) is the health of the
-- collector's collect or datasets (sluice.collector.report's).
function _M.health(c, base)
  local st = states[c]
  if not c.enabled then return "disabled", "disabled in the configuration" end
  if c.breaker and c.breaker:state() == "open" then
    return "circuit_open", "circuit breaker " .. c.breaker:name() .. " is open"
  end
  if st and st.running then
    if st.consecutive_failures >= _M.FAILED_AFTER then
      return "failed", st.consecutive_failures .. " stream connects failed in a row: " .. tostring(st.last_error)
    end
    if not st.conn then return "degraded", disconnected_why(st) end
    local keys = {}
    for k in pairs(st.problems) do keys[#keys + 1] = k end
    if #keys > 0 then
      table.sort(keys)
      for i, k in ipairs(keys) do keys[i] = st.problems[k] end
      return "degraded", table.concat(keys, "; ")
    end
  end
  if c.spec.collect or c.spec.datasets then return base(c) end
  return "healthy"
end

--- stats(c) -> the stream's statistics (see the header), or nil when c
-- has no stream running or ran.
function _M.stats(c)
  local st = states[c]
  if not st then return nil end
  local now = sluice.now()
  local problems
  for _, why in pairs(st.problems) do
    problems = problems or {}
    problems[#problems + 1] = why
  end
  if problems then table.sort(problems) end
  local out = {
    connected = st.conn ~= nil, running = st.running,
    connected_at = st.conn and st.connected_at and sluice.iso8601(st.connected_at) or nil,
    sessions = st.sessions, connects = st.connects, connect_failures = st.connect_failures,
    consecutive_failures = st.consecutive_failures, reconnects = st.reconnects, last_error = st.last_error,
    next_attempt_in = st.next_attempt and math.max(0, st.next_attempt - now) or nil,
    messages = st.messages, bytes = st.bytes, messages_per_second = rate(st.msg_meter),
    rows = st.rows, rows_per_second = rate(st.rows_meter), rows_pending = st.pending_n,
    batches = st.batches, lag_seconds = st.lag, lag_max_seconds = st.lag_max,
    last_message_age = st.last_message and now - st.last_message or nil,
    rows_dropped = st.rows_dropped, problems = problems,
  }
  for name, fn in pairs(st.views) do
    local ok, v = pcall(fn)
    out[name] = ok and v or { error = tostring(v) }
  end
  return out
end

--- handle(c) -> c's stream handle (s), or nil before start: tests and the
-- REPL read its views through stats.
function _M.handle(c)
  local st = states[c]
  return st and st.handle
end

return _M
