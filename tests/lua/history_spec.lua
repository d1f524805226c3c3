-- sluice.history: the status page's last hour, sampled on an injected
-- clock: breakers' transitions as they happen, limiters' sent rate, 429s
-- and bans, collectors' rows, the ring's bound and series that go away.
local sluice = require "sluice"
local breaker = require "sluice.breaker"
local limiter = require "sluice.limiter"
local history = require "sluice.history"
local log = require "sluice.log"
local wait_for = require("support.wait").wait_for

-- a fake collector: what history reads of one (counters, health)
local function fake(name)
  local c = { name = name, rows = 0, failed = 0, requests = 0, status = "healthy" }
  function c.counters(self)
    return { data_points_collected = self.rows, failed_requests = self.failed, total_requests = self.requests }
  end
  function c.health(self) return self.status, "because" end
  return c
end

describe("sluice.history", function()
  local now, app, made
  local function clock() return now end

  setup(function() log.output("/dev/null") end)
  teardown(function() log.output("-") end)

  before_each(function()
    now, app, made = 1000, { order = {} }, {}
  end)

  after_each(function()
    for _, x in ipairs(made) do x:close() end
  end)

  local function new(opts)
    opts = opts or {}
    opts.current, opts.clock = function() return app end, clock
    return history.new(opts)
  end

  it("records a breaker's transitions when they happen, with the time and reason", function()
    local cb = breaker.new({ name = "hist_cb", failure_threshold = 1, timeout = 3600, clock = clock })
    made[#made + 1] = cb
    local h = new()
    h:sample()
    now = 1003
    cb:force_open()
    wait_for("the open transition", function() return #h:view().breakers.hist_cb.transitions == 1 end)
    now = 1007
    cb:force_close()
    wait_for("the close transition", function() return #h:view().breakers.hist_cb.transitions == 2 end)
    now = 1010
    h:sample()
    local v = h:view().breakers.hist_cb
    assert.same({ { at = 1003, from = "closed", to = "open", reason = "force_open" },
      { at = 1007, from = "open", to = "closed", reason = "force_close" } }, v.transitions)
    assert.same({ "closed", "closed" }, v.states)
    assert.equal("closed", v.state)
    assert.same({ 1000, 1010 }, h:view().times)
    -- a reload's new breaker of the name, restored to the state of the old
    -- one: no transition; its own later changes are
    cb:force_open()
    wait_for("the second open", function() return #h:view().breakers.hist_cb.transitions == 3 end)
    local cb2 = breaker.new({ name = "hist_cb", failure_threshold = 1, timeout = 3600, clock = clock })
    made[#made + 1] = cb2
    h:watch()
    cb2:restore(cb:snapshot())
    now = 1020
    cb2:force_close()
    wait_for("the new breaker's close", function() return #h:view().breakers.hist_cb.transitions == 4 end)
    local tr = h:view().breakers.hist_cb.transitions
    assert.same({ "force_open", "force_close" }, { tr[3].reason, tr[4].reason })
  end)

  it("keeps limiters' sent rate, allowed and declared rate, 429s and bans per sample", function()
    -- (the limiter on the real clock: wait() waits; the samples on the injected one)
    local lim = limiter.new({ name = "hist_lim", rate = 200, max_rate = 200, burst = 30 })
    made[#made + 1] = lim
    now = math.floor(sluice.time())
    local h = new()
    h:sample()
    now = now + 10
    for _ = 1, 30 do lim:wait("/x") end
    h:sample()
    now = now + 10
    lim:observe("/x", 429, {}, 0.1)
    lim:observe("/x", 429, {}, 0.1, sluice.now())
    h:sample()
    now = now + 10
    lim:observe("/x", 418, { ["retry-after"] = "60" }, 0.1)
    h:sample()
    local v = h:view().limiters.hist_lim
    assert.same({ 0, 3, 0, 0 }, v.sent) -- 30 requests over 10 s
    assert.same({ 0, 0, 2, 1 }, v.throttled)
    assert.same({ false, false, false, true }, v.banned)
    assert.same({ 200, 200, 200, 200 }, v.declared)
    assert.same({ 200, 200 }, { v.rate[1], v.rate[2] })
    assert.is_true(v.rate[3] < 200, v.rate[3]) -- lowered by the 429s
  end)

  it("keeps collectors' rows and errors since the previous sample, and sinks' depth", function()
    local c = fake("feed")
    app.order = { c }
    app.outbox = { status = function() return { pg = { depth = 7, max_rows = 100 } } end }
    app.store = { is_open = function() return true end }
    local h = new()
    h:sample()
    c.rows, c.failed, c.requests, c.status = 120, 2, 5, "degraded"
    now = 1010
    h:sample()
    local v = h:view()
    assert.same({ rows = { 0, 120 }, errors = { 0, 2 }, requests = { 0, 5 }, status = { "healthy", "degraded" } },
      v.collectors.feed)
    assert.same({ depth = { 7, 7 }, max_rows = 100 }, v.sinks.pg)
  end)

  it("is bounded: span / interval samples, max_series series, gone series dropped", function()
    local a, b = fake("a"), fake("b")
    app.order = { a, b }
    local h = new({ interval = 10, span = 30, max_series = 1 })
    for i = 1, 5 do
      now = 1000 + 10 * i
      a.rows = i
      h:sample()
    end
    local v = h:view()
    assert.same({ 1030, 1040, 1050 }, v.times)
    assert.same({ 1, 1, 1 }, v.collectors.a.rows)
    assert.is_nil(v.collectors.b)
    assert.same({ collectors = 1 }, v.untracked)
    -- a collector no longer there is dropped after a whole span
    local c = fake("c")
    app.order = {}
    h:sample()
    h:sample()
    assert.is_table(h:view().collectors.a)
    h:sample()
    assert.is_nil(h:view().collectors.a)
    app.order = { c }
    h:sample()
    assert.same({ false, false, 0 }, h:view().collectors.c.rows) -- aligned with times
  end)

  it("keeps a breaker's last MAX_TRANSITIONS transitions in a ring made whole at the first", function()
    -- issue 22: a table per transition, up to 100 per breaker, grew a
    -- 500-collector soak's heap for its first 20 minutes (3.4 MB)
    local cb = breaker.new({ name = "hist_ring", failure_threshold = 1, timeout = 3600, clock = clock })
    made[#made + 1] = cb
    local h = new()
    h:watch()
    local max, total = history.MAX_TRANSITIONS, 2 * history.MAX_TRANSITIONS + 50
    local function last_at()
      local tr = h:view().breakers.hist_ring.transitions
      return tr[#tr] and tr[#tr].at
    end
    for i = 1, total do
      now = 2000 + i
      if i % 2 == 1 then cb:force_open() else cb:force_close() end
      wait_for("transition " .. i, function() return last_at() == now end)
    end
    local tr = h:view().breakers.hist_ring.transitions
    assert.equal(max, #tr)
    assert.same({ at = 2000 + total - max + 1, from = "closed", to = "open", reason = "force_open" }, tr[1])
    assert.same({ at = 2000 + total, from = "open", to = "closed", reason = "force_close" }, tr[max])
    assert.same({ at = 2000 + total - 1, from = "closed", to = "open", reason = "force_open" }, tr[max - 1])
    -- what the series holds: the same tables whatever the number of
    -- transitions (the series, its fields, the ring and its four columns)
    local seen, count = {}, 0
    local function walk(t)
      if type(t) ~= "table" or seen[t] then return end
      seen[t], count = true, count + 1
      for k, v in pairs(t) do
        walk(k)
        walk(v)
      end
    end
    walk(h.kinds.breakers.hist_ring)
    assert.equal(7, count)
  end)

  it("samples on a timer from start() until stop()", function()
    local h = history.new({ current = function() return app end, interval = 0.05 })
    h:start()
    wait_for("three samples", function() return #h:view().times >= 3 end)
    h:stop()
    local n = #h:view().times
    sluice.sleep(0.2)
    assert.equal(n, #h:view().times)
  end)

  it("stops its timer at the first tick once alive() is false (the process is not kept running)", function()
    local alive = true
    local h = history.new({ current = function() return app end, interval = 0.05,
      alive = function() return alive end })
    h:start()
    wait_for("two samples", function() return #h:view().times >= 2 end)
    alive = false
    wait_for("the timer's end", function() return h.stopped == true and h.timer == nil end)
  end)
end)
