-- sluice.amqp and sluice.sinks.rabbitmq against a real RabbitMQ broker:
-- message properties, 100,000 rows through the outbox consumed by a
-- confirming consumer and equal value by value to the local table, the
-- broker killed mid-run and restarted, nacks retried, a killed publisher.
local sluice = require "sluice"
local store = require "sluice.store"
local json = require "sluice.json"
local amqp = require "sluice.amqp"
local crypto = require "sluice.crypto"
local sinkrmq = require "sluice.sinks.rabbitmq"
local collector = require "sluice.collector"
local outbox = require "sluice.outbox"
local wait = require "support.wait"
local rmq = require "support.rabbitmq"
local sink_rows = require "support.sink_rows"
local U256MAX, TRADES, trade = sink_rows.U256MAX, sink_rows.TRADES, sink_rows.trade
local wait_for = wait.wait_for

-- A value as text, the same for SQLite's reading and the message's.
local function canon(v, col)
  if v == nil then return "NULL" end
  if col == "meta" then
    if type(v) == "string" then v = assert(json.decode(v)) end
    return assert(json.encode(v))
  end
  if type(v) == "number" then return json.number(v) end
  return json.int64_text(v) or json.numeral_text(v) or tostring(v)
end

-- Every local row equals, column by column, the last message of its id.
local function equal_rows(db, tname, got)
  local cols = {}
  for col in pairs(TRADES.columns) do cols[#cols + 1] = col end
  local lrows = assert(db:query("SELECT * FROM " .. tname .. " ORDER BY id"))
  local n = 0
  for _, r in ipairs(lrows) do
    local m = got[tonumber(r.id)]
    if not m then error("row " .. tostring(r.id) .. " never received") end
    for _, col in ipairs(cols) do
      local a, b = canon(r[col], col), canon(m[col], col)
      if a ~= b then error(("row %s column %s: sqlite %s, message %s"):format(tostring(r.id), col, a, b)) end
    end
    n = n + 1
  end
  return n
end

-- A consumer task on its own connection: every message of queue, acked,
-- into by_id (the latest body of each row id) and ids (message_id -> body).
local function consumer(url, queue)
  local st = { by_id = {}, ids = {}, received = 0, distinct = 0, errors = 0, two_bodies = {}, stop = false }
  st.task = sluice.spawn(function()
    local c = amqp.new { url = url, connect_timeout = 1, timeout = 5 }
    while not st.stop do
      local msgs, err = c:consume(queue, 1000, 0.2)
      if not msgs then
        st.errors = st.errors + 1
        st.last_error = err
        sluice.sleep(0.1) -- the broker is down: try again (bounded by the spec's waits)
      else
        for _, m in ipairs(msgs) do
          st.received = st.received + 1
          local seen = st.ids[m.message_id]
          if seen then
            -- recorded, not raised: a raise would end the consumer and the
            -- spec would time out waiting instead of saying this
            if seen ~= m.body then st.two_bodies[#st.two_bodies + 1] = m.message_id end
          else
            st.ids[m.message_id] = m.body
            st.distinct = st.distinct + 1
          end
          local row = assert(json.decode(m.body))
          st.by_id[tonumber(row.id)] = row
          st.last = m
        end
      end
    end
    c:close()
  end)
  return st
end

describe("sluice.sinks.rabbitmq", function()
  local srv, admin

  setup(function()
    srv = rmq.start()
    admin = assert(amqp.connect { url = srv:url() })
  end)

  teardown(function()
    if admin then admin:close() end
    if srv then srv:shutdown() end
  end)

  it("publishes persistent JSON messages with a message id, and refuses what cannot be JSON", function()
    local sink = assert(sinkrmq.new("rmq", { url = srv:url(), exchange = "ex_props" }))
    assert.is_true(sink:ensure("trades", TRADES))
    assert(admin:declare { exchange = "ex_props", queue = "q_props", binding_key = "sluice.trades" })
    local row = trade(2)
    assert.is_true(sink:write("trades", { row }, TRADES))
    local msgs = wait_for("the message", function()
      local m = assert(admin:consume("q_props", 10, 1))
      return #m > 0 and m
    end)
    assert.equal(1, #msgs)
    local m = msgs[1]
    local body = assert(json.encode(row))
    assert.same({
      body = body, routing_key = "sluice.trades", type = "trades", content_type = "application/json",
      delivery_mode = 2, redelivered = false,
      message_id = crypto.digest("sha256", "rmq\0trades\0" .. body, "hex"),
    }, m)
    assert.equal("9007199254740993", json.int64_text(json.decode(m.body).seq))
    -- a row sluice.json cannot write: the data is refused, for the dead letters
    local ok, err, kind = sink:write("trades", { { id = 1, bad = function() end } }, TRADES)
    assert.is_nil(ok)
    assert.equal("rejected", kind)
    assert.truthy(err:match("^rabbitmq: row 1: "), err)
    local st = sink:stats()
    assert.same({ 1, 1, 0, 0, true, "127.0.0.1:" .. srv.port .. "/%2f" },
      { st.batches, st.messages, st.nacked, st.reconnects, st.connected, st.broker })
    sink:close()
  end)

  it("keeps the password out of errors, stats and the broker description", function()
    local url = srv:url():gsub("guest:guest", "guest:s3cr3t-pw")
    local sink = assert(sinkrmq.new("rmq", { url = url, exchange = "ex_pw" }))
    local ok, err, kind = sink:ensure("t", TRADES)
    assert.is_nil(ok)
    assert.equal("closed", kind)
    assert.truthy(err:match("^rabbitmq: login: 403 ACCESS_REFUSED"), err)
    assert.is_nil(err:find("s3cr3t", 1, true))
    assert.is_nil(json.encode(sink:stats()):find("s3cr3t", 1, true))
    sink:close()
  end)

  it("abandons the publish of a killed task and never resumes it; the connection goes on", function()
    local c = assert(amqp.connect { url = srv:url() })
    assert(c:declare { exchange = "ex_kill", type = "topic" })
    local msgs = {}
    for i = 1, 20000 do msgs[i] = { routing_key = "k", body = '{"i":' .. i .. "}" } end
    local resumed = false
    local t = sluice.spawn(function()
      c:publish("ex_kill", msgs)
      resumed = true
    end)
    wait_for("the publish to start", function() return sluice.status(t) == "waiting" end)
    assert.is_true(sluice.kill(t))
    assert.equal("killed", sluice.status(t))
    assert.equal(1, (c:publish("ex_kill", { msgs[1] }))) -- a new connection if the old one was dropped
    assert.is_false(resumed)
    assert.equal(0, c:status().pending)
    c:close()
    -- a closed connection refuses at once
    local ok, err, kind = c:publish("ex_kill", { msgs[1] })
    assert.same({ nil, "connection closed", "closed" }, { ok, err, kind })
  end)

  describe("through the outbox", function()
    local function run(tname, queue, sink_settings, queue_args, no_consumer)
      assert(admin:declare { exchange = "sluice", type = "topic", durable = true })
      assert(admin:declare { exchange = "sluice", queue = queue, binding_key = "sluice." .. tname,
        durable = true, arguments = queue_args })
      local db = assert(store.open(":memory:"))
      local c = collector.new(collector.define {
        name = "rmq_feed_" .. tname, interval = 3600, limiter = false, retry = false, breaker = false,
        tables = { [tname] = { columns = TRADES.columns, key = TRADES.key } }, collect = function() return {} end,
      }, nil, { store = db })
      local settings = { url = srv:url(), batch = 1000, max_age = 0.05, connect_timeout = 1, timeout = 5,
        retry = { base_delay = 0.05, max_delay = 0.2 }, breaker = { failure_threshold = 1000 } }
      for k, v in pairs(sink_settings or {}) do settings[k] = v end
      local box = assert(outbox.new(db, { rabbitmq = settings }))
      c:add_sink(box:route(c))
      box:start()
      local cons = not no_consumer and consumer(srv:url(), queue) or nil
      local cleanup = {} -- busted keeps one finally per test: this one runs them all
      finally(function()
        box:stop(0)
        for i = #cleanup, 1, -1 do cleanup[i]() end
        if cons then
          cons.stop = true
          wait_for("the consumer to end", function() return sluice.status(cons.task) == "done" end, 20)
        end
        db:close()
      end)
      return db, c, box, cons, cleanup
    end

    local function rows(from, to, rev)
      local batch = {}
      for i = from, to do batch[#batch + 1] = trade(i, rev) end
      return batch
    end

    it("publishes 100,000 rows and 2,000 changes, received and equal value by value to the local table", function()
      local db, c, box, cons = run("ob_trades", "q_trades")
      for from = 1, 100000, 5000 do assert.equal(5000, c:store_rows(rows(from, from + 4999))) end
      local function drained() return box:status().rabbitmq.depth == 0 end
      wait_for("the outbox to drain", drained, 300)
      c:store_rows(rows(1, 2000, 1)) -- changed rows: new messages, new ids
      wait_for("the outbox to drain", drained, 120)
      wait_for("every message", function() return cons.received >= 102000 end, 120)
      assert.same({ 102000, 102000, 0 }, { cons.received, cons.distinct, cons.errors })
      assert.same({}, cons.two_bodies)
      assert.equal(100000, equal_rows(db, "ob_trades", cons.by_id))
      assert.equal(U256MAX, cons.by_id[1].big) -- uint256 as the store keeps it: text
      local st = box:status().rabbitmq
      assert.same({ 0, 102000, 0 }, { st.depth, st.forwarded, st.dead_letters })
      assert.equal(102000, st.sink.messages)
    end)

    it("loses no row while the broker is killed and restarted; re-sends keep their message id", function()
      local db, c, box, cons = run("ob_restart", "q_restart")
      c:store_rows(rows(1, 5000))
      wait_for("some rows forwarded", function() return box:status().rabbitmq.forwarded > 0 end, 60)
      assert.is_true(srv:stop(true)) -- kill -9
      c:store_rows(rows(5001, 10000)) -- collection goes on: rows wait in the outbox
      c:store_rows(rows(2001, 3000, 1))
      wait_for("a failure noticed", function() return box:status().rabbitmq.errors > 0 end, 30)
      assert.is_true(box:status().rabbitmq.depth > 0)
      srv:restart()
      admin:close() -- its connection went with the broker
      admin = assert(amqp.connect { url = srv:url() })
      wait_for("the outbox to drain", function() return box:status().rabbitmq.depth == 0 end, 120)
      -- every row's latest version made it (an older version still queued
      -- when the newer one came is replaced by it: the outbox sends the
      -- latest row per key), each message id with one body (the consumer checks)
      local why
      local done = pcall(wait_for, "every row's latest version", function()
        local ok, err = pcall(equal_rows, db, "ob_restart", cons.by_id)
        why = err
        return ok
      end, 60)
      assert(done, "not every row's latest version arrived: " .. tostring(why) .. "; ids with two bodies: "
        .. table.concat(cons.two_bodies, " ") .. "; consumer: " .. sluice.status(cons.task))
      assert.same({}, cons.two_bodies)
      assert.equal(10000, equal_rows(db, "ob_restart", cons.by_id))
      assert.is_true(cons.distinct >= 10000 and cons.distinct <= 11000, tostring(cons.distinct))
      local st = box:status().rabbitmq
      assert.same({ 0, 0 }, { st.depth, st.dead_letters })
      assert.is_true(st.sink.reconnects >= 1)
    end)

    it("retries batches the broker nacks (a full queue, reject-publish) until they are taken", function()
      local db, c, box, _, cleanup = run("ob_nack", "q_nack", { batch = 500 },
        { ["x-max-length"] = 1000, ["x-overflow"] = "reject-publish" }, true)
      c:store_rows(rows(1, 3000))
      -- nobody consumes yet: the queue fills at 1000, the broker nacks the rest
      wait_for("nacks", function() return box:status().rabbitmq.sink.nacked > 0 end, 60)
      local st = box:status().rabbitmq
      assert.is_true(st.depth > 0)
      assert.equal(0, st.dead_letters)
      assert.truthy(tostring(st.last_error):match("^rabbitmq: the broker nacked "), tostring(st.last_error))
      -- a consumer drains the queue: the retried batches are taken
      local cons = consumer(srv:url(), "q_nack")
      cleanup[#cleanup + 1] = function()
        cons.stop = true
        wait_for("the consumer to end", function() return sluice.status(cons.task) == "done" end, 20)
      end
      wait_for("the outbox to drain", function() return box:status().rabbitmq.depth == 0 end, 120)
      wait_for("every row", function() return pcall(equal_rows, db, "ob_nack", cons.by_id) end, 60)
      assert.equal(3000, cons.distinct) -- re-sends of a batch partly taken: same ids
      assert.equal(0, box:status().rabbitmq.dead_letters)
    end)
  end)
end)
