-- sluice.backfill with window claims in Redis (a private redis-server):
-- two instances with their own stores share one backfill and fetch every
-- window exactly once between them; a dead holder's claim is taken over
-- once it expires; a failing window is released and fetched by the other
-- instance; a failed forced refetch restores the done mark it replaced;
-- with Redis unreachable (from the start, or lost mid-job) the backfill
-- completes locally.
--
-- The two "instances" are two collector instances of the same name in this
-- process, each with its own store and its own sluice.shared object (its
-- own instance id and Redis connection), against the in-process mock
-- Binance. binance_klines windows are 1000 1m candles (60000 s), aligned.
local sluice = require "sluice"
local store = require "sluice.store"
local mock = require "sluice.mock.binance"
local backfill = require "sluice.backfill"
local shared = require "sluice.shared"
local redis = require "sluice.redis"
local log = require "sluice.log"
local cjson = require "cjson.safe"
local redis_server = require "support.redis_server"
local wait_for = require("support.wait").wait_for
local klines = require "support.klines"
local logs = require "support.logs"
local logged = logs.logged

local S, A, SYMBOLS = klines.S, klines.A, klines.SYMBOLS -- A: 1704060000, a window boundary
local WEEK = 7 * 86400
local one, coverage = klines.one, klines.coverage

-- Waits for a job to end, at most limit seconds (20); returns its status.
local function wait_job(id, limit)
  wait_for("backfill " .. id .. " to end", function() return backfill.status(id).state ~= "running" end,
    limit or 20)
  return backfill.status(id)
end

-- {"SYMBOL/startTime" = n} of the mock's answered (200) kline requests.
local function fetched(m, into)
  into = into or {}
  for _, e in ipairs(m.log) do
    if e.status == 200 and e.path == "/api/v3/klines" then
      local k = e.query.symbol .. "/" .. tostring(e.query.startTime)
      into[k] = (into[k] or 0) + 1
    end
  end
  return into
end

-- Asserts every window of the range was fetched once, counting both mocks.
local function assert_fetched_once(counts, symbols, from, n)
  local total = 0
  for _, v in pairs(counts) do total = total + v end
  assert.equal(#symbols * n, total)
  for _, sym in ipairs(symbols) do
    for i = 0, n - 1 do
      assert.equal(1, counts[sym .. "/" .. string.format("%d", (from + i * S) * 1000)],
        sym .. " window " .. i)
    end
  end
end

-- Asserts the stores together hold every 1m candle of the range exactly once.
local function assert_union(dbs, symbols, from, n)
  local seen, total = {}, 0
  for _, db in ipairs(dbs) do
    for _, r in ipairs(assert(db:query("SELECT raw_symbol AS symbol, open_time FROM klines WHERE interval = '1m'"))) do
      local k = r.symbol .. "/" .. string.format("%d", r.open_time)
      assert.is_nil(seen[k], "stored twice: " .. k)
      seen[k] = true
      total = total + 1
    end
  end
  assert.equal(#symbols * n * 1000, total)
  for _, sym in ipairs(symbols) do
    for t = from, from + n * S - 60, 60 do
      assert.is_true(seen[sym .. "/" .. string.format("%d", t * 1000)], sym .. " candle " .. t)
    end
  end
end

describe("sluice.backfill with shared claims", function()
  local srv, red, m
  local open = {}                               -- stores, clients and mocks to close
  local restore_logs

  setup(function()
    srv = redis_server.start()
    red = redis.connect({ url = srv:url(0) })
  end)

  teardown(function()
    if red then red:close() end
    if srv then srv:stop(false, true) end
  end)

  before_each(function()
    log.output("/dev/null")
    restore_logs = logs.capture("info", 10000)
    assert.equal("OK", red:call("FLUSHDB"))
    m = mock.start({ seed = 7 })
    open = { m }
  end)

  after_each(function()
    for i = #open, 1, -1 do
      local x = open[i]
      if x.stop then x:stop() elseif x.close then x:close() end
    end
    restore_logs()
    log.output("-")
  end)

  -- An instance: a binance_klines collector on mock mk with its own
  -- in-memory store and its own shared state over its own connection.
  local function instance(mk, extra, url)
    local db = assert(store.open(":memory:"))
    open[#open + 1] = db
    local client = redis.connect({ url = url or srv:url(0), connect_timeout = 0.5 })
    open[#open + 1] = client
    local sh = shared.new(client)
    return { c = klines.backfiller(mk, db, extra), db = db, sh = sh }
  end

  local function done_docs()
    local keys = assert(red:call("KEYS", "backfill:*"))
    local out = {}
    for _, k in ipairs(keys) do
      out[k] = cjson.decode((assert(red:call("GET", k))))
    end
    return out, #keys
  end

  it("two instances backfill one range concurrently, every window fetched once", function()
    local a, b = instance(m), instance(m)
    assert.are_not.equal(a.sh.id, b.sh.id)
    -- committed rows go to the stream sink, as a configuration's sinks do
    for _, x in ipairs({ a, b }) do x.c:add_sink(x.sh:stream_sink({ stream = "bf:{table}" })) end
    local range = { from = A, to = A + 10 * S, parallel = 2 }
    local function opts(x)
      local o = { collector = x.c, shared = x.sh }
      for k, v in pairs(range) do o[k] = v end
      return o
    end
    local ida = backfill.start(opts(a))
    local idb = backfill.start(opts(b))
    local sa, sb = wait_job(ida), wait_job(idb)
    for _, st in ipairs({ sa, sb }) do
      assert.equal("done", st.state)
      assert.equal("redis", st.claims)
      assert.equal(20, st.windows_total)
      assert.equal(0, st.windows_failed)
      assert.equal(0, st.errors)
      assert.equal(0, st.windows_waiting)
      assert.equal(20, st.windows_done + st.windows_elsewhere)
      assert.equal(1000 * st.windows_done, st.rows)
      assert.equal(1000 * st.windows_elsewhere, st.rows_elsewhere)
      assert.equal(st.windows_done, st.requests)
    end
    -- both took part, and each window is done in exactly one of them
    assert.is_true(sa.windows_done > 0 and sb.windows_done > 0,
      "A did " .. sa.windows_done .. ", B did " .. sb.windows_done)
    assert.equal(20, sa.windows_done + sb.windows_done)
    assert.equal(sb.windows_done, sa.windows_elsewhere)
    assert.equal(sa.windows_done, sb.windows_elsewhere)
    assert.equal(20, m.requests)
    assert_fetched_once(fetched(m), SYMBOLS, A, 10)
    assert_union({ a.db, b.db }, SYMBOLS, A, 10)
    -- the stream got every candle once, from whichever instance fetched it
    assert.equal(20000, red:call("XLEN", "bf:klines"))

    -- local coverage: own windows done, the others' recorded as elsewhere
    for _, x in ipairs({ { a, sa, b }, { b, sb, a } }) do
      local inst, st, other = x[1], x[2], x[3]
      assert.equal(st.windows_done, coverage(inst.db, "done").n)
      assert.equal(st.rows, coverage(inst.db, "done").rows)
      assert.equal(st.windows_elsewhere, coverage(inst.db, "elsewhere").n)
      assert.equal(st.rows_elsewhere, coverage(inst.db, "elsewhere").rows)
      assert.equal(st.windows_elsewhere, one(inst.db, "SELECT COUNT(*) AS n FROM sluice_backfill"
        .. " WHERE status = 'elsewhere' AND error = ?", "done elsewhere by " .. other.sh.id).n)
    end

    -- the done marks: one per window, by whoever fetched it, a week long
    assert.equal(1, red:call("DEL", "bf:klines"))
    local docs, n = done_docs()
    assert.equal(20, n)
    local by = { [a.sh.id] = 0, [b.sh.id] = 0 }
    for _, sym in ipairs(SYMBOLS) do
      for i = 0, 9 do
        local key = string.format("backfill:binance_klines:%s:%d", sym, A + i * S)
        local d = docs[key]
        assert.is_table(d, key)
        assert.equal("done", d.state)
        assert.equal(1000, d.rows)
        assert.equal(A + i * S, d.from)
        assert.equal(A + (i + 1) * S, d.to)
        assert.is_not_nil(by[d.by])
        by[d.by] = by[d.by] + 1
        local ttl = red:call("TTL", key)
        assert.is_true(ttl > WEEK - 30 and ttl <= WEEK, key .. " ttl " .. tostring(ttl))
      end
    end
    assert.equal(sa.windows_done, by[a.sh.id])
    assert.equal(sb.windows_done, by[b.sh.id])

    -- a later plan in A: its own windows skipped, B's done elsewhere, nothing to fetch
    local p = backfill.plan(opts(a))
    assert.equal(0, #p.windows)
    assert.equal(sa.windows_done, p.skipped)
    assert.equal(sb.windows_done, #p.elsewhere)
    assert.equal(0, p.estimate.requests)
    for _, w in ipairs(p.elsewhere) do
      assert.equal("elsewhere", w.reason)
      assert.equal(b.sh.id, w.by)
      assert.equal(1000, w.rows)
    end
    local st = wait_job(backfill.start(opts(a)))
    assert.equal("done", st.state)
    assert.equal(sb.windows_done, st.windows_total)
    assert.equal(sb.windows_done, st.windows_elsewhere)
    assert.equal(0, st.windows_done)
    assert.equal(20, m.requests)
    -- without shared state, the same store plans B's windows as missing
    p = backfill.plan({ collector = a.c, from = A, to = A + 10 * S, shared = false })
    assert.equal(sb.windows_done, #p.windows)
    for _, w in ipairs(p.windows) do assert.equal("missing", w.reason) end

    -- force refetches whatever the old marks say, still one fetch per window
    local ida2 = backfill.start({ collector = a.c, shared = a.sh, from = A, to = A + 2 * S,
      symbols = { "BTCUSDT" }, force = true })
    st = wait_job(ida2)
    assert.equal("done", st.state)
    assert.equal(2, st.windows_done)
    assert.equal(0, st.windows_elsewhere)
    assert.equal(22, m.requests)
  end)

  it("takes over a window whose holder died, once its claim has expired", function()
    local a = instance(m, { symbols = { "BTCUSDT" } })
    local key = string.format("backfill:binance_klines:BTCUSDT:%d", A + S)
    -- the dead claim lives until the free windows are done (however slow
    -- this machine or build), then gets a short life left: its expiry, not
    -- the speed of the other fetches, is what the takeover waits for
    assert.equal("OK", red:call("SET", key, cjson.encode({ state = "claimed", by = "dead-instance",
      token = "dead-instance/bf-1-1", at = sluice.time() }), "PX", 60000))
    local id = backfill.start({ collector = a.c, shared = a.sh, from = A, to = A + 4 * S,
      parallel = 2, claim_ttl = 1 })
    -- the three free windows are done while the dead one's claim lives
    wait_for("the free windows", function() return backfill.status(id).windows_done == 3 end, 10)
    local mid = backfill.status(id)
    assert.equal("running", mid.state)
    assert.equal(1, mid.windows_waiting)
    assert.equal(3, m.requests)
    assert.is_true(red:call("PTTL", key) > 0, "the dead claim lives")
    -- while a recheck's claim is in flight (Redis holds writes), the window
    -- still counts as waiting: it is neither put aside nor being fetched
    assert.equal("OK", red:call("CLIENT", "PAUSE", "5000", "WRITE"))
    finally(function() red:call("CLIENT", "UNPAUSE") end)
    wait_for("a recheck's claim held by the pause", function()
      for line in red:call("CLIENT", "LIST"):gmatch("[^\n]+") do
        if line:find(" flags=b ", 1, true) and line:find(" cmd=evalsha ", 1, true) then return true end
      end
      return false
    end, 5)
    mid = backfill.status(id)
    assert.equal(1, mid.windows_waiting)
    assert.equal(3, mid.windows_done)
    assert.equal("OK", red:call("CLIENT", "UNPAUSE"))
    local t_set = sluice.now()
    assert.equal(1, red:call("PEXPIRE", key, 500))
    local st = wait_job(id, 10)
    local took = sluice.now() - t_set
    assert.equal("done", st.state)
    assert.equal(4, st.windows_done)
    assert.equal(0, st.windows_elsewhere)
    assert.equal(0, st.windows_failed)
    assert.equal(0, st.windows_waiting)
    assert.equal(4, m.requests)
    assert_fetched_once(fetched(m), { "BTCUSDT" }, A, 4)
    assert_union({ a.db }, { "BTCUSDT" }, A, 4)
    -- after the claim expired (0.5 s), within a recheck (0.1 s) and some slack
    assert.is_true(took >= 0.5 and took < 2.5, "took " .. took .. " s")
    local d = cjson.decode(red:call("GET", key))
    assert.equal("done", d.state)
    assert.equal(a.sh.id, d.by)
    local lines = logged("backfill window taken over (its holder released it or died)")
    assert.equal(1, #lines)
    assert.equal("dead-instance", lines[1].by)
  end)

  it("releases a failing window, and the other instance fetches it", function()
    -- A fails its first window slowly (a 500 storm through its 3 attempts)
    -- and releases it; B, started while A holds it, puts it aside, does the
    -- rest, and fetches it once released. Both mocks serve the same candles.
    local ma = m
    local mb = mock.start({ seed = 7 })
    open[#open + 1] = mb
    local a = instance(ma, { symbols = { "BTCUSDT" }, breaker = false,
      retry = { strategy = "fixed", max_attempts = 3, base_delay = 0.3, max_delay = 0.3, budget = false } })
    local b = instance(mb, { symbols = { "BTCUSDT" }, limiter = { rate = 20, max_rate = 20 } })
    ma:inject({ status = 500, count = 3, path = "/api/v3/klines" })
    local key = string.format("backfill:binance_klines:BTCUSDT:%d", A)
    local ida = backfill.start({ collector = a.c, shared = a.sh, from = A, to = A + 6 * S, parallel = 1 })
    wait_for("A's claim", function()
      local v = red:call("GET", key)
      return v and cjson.decode(v).by == a.sh.id
    end, 5)
    local idb = backfill.start({ collector = b.c, shared = b.sh, from = A, to = A + 6 * S, parallel = 2,
      claim_ttl = 1 })
    wait_for("A's failure", function() return backfill.status(ida).windows_failed == 1 end, 5)
    -- released at once (A's claims would live 30 s; B may have claimed it already)
    wait_for("A's release", function()
      local v = red:call("GET", key)
      return v == nil or cjson.decode(v).by ~= a.sh.id
    end, 2)
    local sa, sb = wait_job(ida), wait_job(idb)

    assert.equal("failed", sa.state)
    assert.equal(1, sa.windows_failed)
    assert.same({ partition = "BTCUSDT", from = A, to = A + S,
      error = "BTCUSDT: Binance error -1000: An unknown error occurred while processing the request." },
      sa.failed[1])
    assert.equal("done", sb.state)
    assert.equal(0, sb.windows_failed)
    assert.equal(6, sb.windows_total)
    assert.equal(6, sa.windows_total)
    -- B did the failed window and the ones A did not get to
    assert.equal(6, sa.windows_done + sb.windows_done)
    assert.equal(6, sb.windows_done + sb.windows_elsewhere)
    assert.equal(5, sa.windows_done + sa.windows_elsewhere)
    assert.equal(sa.windows_done, sb.windows_elsewhere)
    assert.equal(sb.windows_done - 1, sa.windows_elsewhere)
    assert.equal(3 + sa.windows_done, ma.requests)
    assert.equal(sb.windows_done, mb.requests)
    assert_fetched_once(fetched(mb, fetched(ma)), { "BTCUSDT" }, A, 6)
    assert_union({ a.db, b.db }, { "BTCUSDT" }, A, 6)
    local d = cjson.decode(red:call("GET", key))
    assert.equal("done", d.state)
    assert.equal(b.sh.id, d.by)
    local lines = logged("backfill window taken over (its holder released it or died)")
    assert.equal(1, #lines)
    assert.equal(a.sh.id, lines[1].by)
    assert.equal(A, lines[1].from)
    -- A's store records the failure; its next plan finds the window done elsewhere
    assert.equal("failed", one(a.db, "SELECT status FROM sluice_backfill WHERE window_start = ?", A).status)
    local p = backfill.plan({ collector = a.c, shared = a.sh, from = A, to = A + 6 * S })
    assert.equal(0, #p.windows)
    assert.equal(sb.windows_done, #p.elsewhere)
    assert.equal(A, p.elsewhere[1].key)
  end)

  it("a forced refetch that fails puts the done mark it replaced back", function()
    local a = instance(m, { symbols = { "BTCUSDT" } })
    local b = instance(m, { symbols = { "BTCUSDT" }, breaker = false })
    local key = string.format("backfill:binance_klines:BTCUSDT:%d", A)
    local st = wait_job(backfill.start({ collector = a.c, shared = a.sh, from = A, to = A + S }))
    assert.equal(1, st.windows_done)
    local mark = red:call("GET", key)
    assert.equal(a.sh.id, cjson.decode(mark).by)
    m:inject({ status = 400, path = "/api/v3/klines" })
    st = wait_job(backfill.start({ collector = b.c, shared = b.sh, from = A, to = A + S, force = true }))
    assert.equal("failed", st.state)
    assert.equal(1, st.windows_failed)
    assert.equal(0, st.windows_elsewhere)
    assert.equal(mark, red:call("GET", key))
    local ttl = red:call("TTL", key)
    assert.is_true(ttl > WEEK - 30 and ttl <= WEEK, "ttl " .. tostring(ttl))
    -- and a plain (not forced) run in B then finds it done elsewhere
    st = wait_job(backfill.start({ collector = b.c, shared = b.sh, from = A, to = A + S }))
    assert.equal("done", st.state)
    assert.equal(1, st.windows_elsewhere)
    assert.equal(0, st.windows_done)
    assert.equal(2, m.requests)
  end)

  describe("with Redis unreachable", function()
    -- Asserts instance a's job did all n windows per symbol itself, each
    -- fetched once, with local claims, the outage logged once.
    local function assert_done_locally(a, st, n)
      assert.equal("done", st.state)
      assert.equal("degraded", st.claims)
      assert.equal(2 * n, st.windows_done)
      assert.equal(0, st.windows_elsewhere)
      assert.equal(0, st.windows_failed)
      assert.equal(2 * n * 1000, st.rows)
      assert.equal(2 * n, m.requests)
      assert_fetched_once(fetched(m), SYMBOLS, A, n)
      assert_union({ a.db }, SYMBOLS, A, n)
      assert.equal(2 * n, coverage(a.db, "done").n)
      assert.equal(1, #logged("redis unreachable: backfill windows are claimed locally only"))
    end

    it("from the start: the backfill completes with local claims, logged once", function()
      local dead = redis_server.start()
      local url = dead:url(0)
      dead:stop(true, true)
      local a = instance(m, nil, url)
      local p = backfill.plan({ collector = a.c, shared = a.sh, from = A, to = A + 5 * S })
      assert.equal(10, #p.windows)
      assert.equal(0, #p.elsewhere)
      local st = wait_job(backfill.start({ collector = a.c, shared = a.sh, from = A, to = A + 5 * S }))
      assert_done_locally(a, st, 5)
    end)

    it("lost mid-job: the windows left are fetched with local claims, nothing lost", function()
      local own = redis_server.start()
      local a = instance(m, { limiter = { rate = 20, max_rate = 20 } }, own:url(0))
      local id = backfill.start({ collector = a.c, shared = a.sh, from = A, to = A + 10 * S, parallel = 2 })
      wait_for("4 windows", function() return backfill.status(id).windows_done >= 4 end, 10)
      own:stop(true, true)
      assert_done_locally(a, wait_job(id, 20), 10)
    end)
  end)
end)
