-- sluice.collector.stream: a collector's stream function run by the
-- framework against a fake connection (support.fake_ws): reconnects with
-- backoff and the breaker, rows batched by size and by age, statistics,
-- health while disconnected, stop and drain.
local sluice = require "sluice"
local collector = require "sluice.collector"
local store = require "sluice.store"
local fake_ws = require "support.fake_ws"
local wait_for = require("support.wait").wait_for

local TABLES = { events = { columns = { id = "integer", v = "text" }, key = { "id" } } }

-- A stream that stores every message "id:v" as a row, until the connection ends.
local function echo_stream(fake, extra)
  return function(self, s)
    local conn, err = s:connect("ws://127.0.0.1:1/feed", { connector = fake:connector() })
    if not conn then return nil, err end
    if extra then extra(self, s) end
    while true do
      local data, why = s:receive()
      if not data then return nil, why end
      local id, v = data:match("^(%d+):(.*)$")
      s:emit("events", { id = tonumber(id), v = v }, 1700000000000 + tonumber(id))
    end
  end
end

describe("sluice.collector.stream", function()
  local c, db
  after_each(function()
    if c then c:stop() end
    if db then db:close() end
    c, db = nil, nil
  end)

  local function start(spec, over)
    db = assert(store.open(":memory:"))
    c = collector.new(collector.define(spec), over, { store = db })
    c:start()
    return c
  end

  local function count()
    return db:query("SELECT COUNT(*) AS n FROM events")[1].n
  end

  it("defines a stream-only collector, and refuses a bad stream_batch", function()
    local spec = collector.define{ name = "s", tables = TABLES, stream = function() end }
    assert.is_function(spec.stream)
    assert.has_error(function()
      collector.define{ name = "s", tables = TABLES, stream = function() end, stream_batch = { rows = 0 } }
    end)
  end)

  it("commits a batch when it is full, and an old one from receive's wait", function()
    local fake = fake_ws.new()
    start({ name = "feed", tables = TABLES, limiter = false, breaker = false,
      stream_batch = { rows = 3, age = 0.2 }, stream = echo_stream(fake) })
    wait_for("the connection", function() return fake.current end)
    fake:push("1:a"); fake:push("2:b")
    wait_for("two messages", function() return c:stats().stream.messages == 2 end)
    -- two rows wait for a third or for their age
    assert.equal(0, count())
    assert.equal(2, c:stats().stream.rows_pending)
    fake:push("3:c")
    wait_for("the full batch", function() return count() == 3 end)
    fake:push("4:d")
    local t0 = sluice.now()
    wait_for("the aged batch", function() return count() == 4 end)
    assert.is_true(sluice.now() - t0 >= 0.15)
    local st = c:stats()
    assert.equal(4, st.stream.rows)
    assert.equal(2, st.stream.batches)
    assert.equal(4, st.data_points_collected)
    assert.is_true(st.stream.lag_seconds > 0)
    assert.equal("healthy", st.status)
    assert.is_true(st.stream.connected)
    assert.is_true(st.stream.messages_per_second > 0)
  end)

  it("reconnects with backoff: failed connects count in the breaker; degraded while disconnected", function()
    local fake = fake_ws.new{ fail = 2 }
    start({ name = "feed", tables = TABLES, limiter = false,
      breaker = { failure_threshold = 10 }, retry = { strategy = "fixed", base_delay = 0.05 },
      stream = echo_stream(fake) })
    wait_for("the connection", function() return fake.current end)
    local st = c:stats().stream
    assert.equal(3, st.connects)
    assert.equal(2, st.connect_failures)
    assert.equal(0, st.reconnects)
    assert.equal(0, st.consecutive_failures)
    assert.equal(2, c.breaker:status().statistics.total_failures)
    fake:push("1:a")
    wait_for("the row", function() return count() == 1 end)
    -- the connection drops: degraded until the next one
    fake.fail = 1000
    fake:drop("connection reset")
    local h = wait_for("degraded", function()
      local s, w = c:health()
      return s == "degraded" and { s, w }
    end)
    assert.truthy(h[2]:find("^stream disconnected: connection reset"), h[2])
    fake.fail = 0
    wait_for("the reconnect", function() return c:stats().stream.reconnects == 1 end)
    assert.equal("healthy", (c:health()))
    assert.equal(2, #fake.conns)
    assert.is_true(fake.conns[1].closed)
  end)

  it("fails health after five failed connects in a row, and waits for an open breaker", function()
    local fake = fake_ws.new{ fail = 1000 }
    start({ name = "feed", tables = TABLES, limiter = false,
      breaker = { failure_threshold = 20 }, retry = { strategy = "fixed", base_delay = 0.01 },
      stream = echo_stream(fake) })
    local h = wait_for("failed", function() local s, w = c:health(); return s == "failed" and { s, w } end)
    assert.truthy(h[2]:find("stream connects failed in a row: connection refused", 1, true), h[2])
    c.breaker:force_open()
    local n = #fake.urls
    assert.equal("circuit_open", (c:health()))
    wait_for("a refused attempt", function()
      return c:stats().stream.last_error == "circuit breaker feed is open"
    end)
    assert.equal(n, #fake.urls)  -- no connect while the breaker is open
  end)

  it("paces connects and sends through the limiter", function()
    local fake = fake_ws.new()
    start({ name = "feed", tables = TABLES, breaker = false, limiter = { rate = 50 },
      stream = echo_stream(fake, function(_, s) assert(s:send('{"op":"subscribe"}')) end) })
    wait_for("the subscribe", function() return #fake.sent == 1 end)
    local eps = c.limiter:stats().endpoints
    assert.truthy(eps["ws:connect"], "no ws:connect endpoint in the limiter")
    assert.truthy(eps["ws:send"], "no ws:send endpoint in the limiter")
  end)

  it("runs tickers from receive, shows views and problems", function()
    local fake = fake_ws.new()
    local ticks = 0
    start({ name = "feed", tables = TABLES, limiter = false, breaker = false,
      stream = echo_stream(fake, function(_, s)
        s:every(0.05, function() ticks = ticks + 1 end)
        s:view("books", function() return { x = { synced = true } } end)
        s:problem("book x", "book x not synced")
      end) })
    wait_for("three ticks", function() return ticks >= 3 end)
    assert.same({ x = { synced = true } }, c:stats().stream.books)
    assert.same({ "degraded", "book x not synced" }, { c:health() })
  end)

  it("stop ends the stream; drain commits what it emitted", function()
    local fake = fake_ws.new()
    start({ name = "feed", tables = TABLES, limiter = false, breaker = false,
      stream_batch = { rows = 100, age = 60 }, stream = echo_stream(fake) })
    wait_for("the connection", function() return fake.current end)
    fake:push("1:a"); fake:push("2:b")
    wait_for("two messages", function() return c:stats().stream.messages == 2 end)
    assert.equal(0, count())
    c:stop()
    c:drain()
    assert.equal(2, count())
    local st = c:stats().stream
    assert.is_false(st.running)
    assert.is_false(st.connected)
  end)
end)
