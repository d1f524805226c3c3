-- collectors.evm_mempool against a real node (anvil with mining off):
-- txpool_status and the txpool_content summary equal what the node holds and
-- what was sent, exactly; a node without txpool methods (a scripted
-- sluice.server) has the dataset disabled once, no breaker failure; the
-- response size bound; the kit's chain-id check and an HTML answer.
local anvil = require "support.anvil"
local logs = require "support.logs"
local wait_for = require("support.wait").wait_for
local log = require "sluice.log"
local server = require "sluice.server"
local store = require "sluice.store"
local json = require "sluice.json"
local bignum = require "sluice.bignum"
local sluice = require "sluice"
local collector = require "sluice.collector"
local mempool = require "sluice.evm.mempool"

local spec = require "collectors.evm_mempool"

local GWEI = 1000000000

-- Cleanups for the running test, last first, after it (busted keeps one
-- finally per test: the last registered).
local cleanups = {}
local function defer(fn) cleanups[#cleanups + 1] = fn end
local function run_cleanups()
  for i = #cleanups, 1, -1 do cleanups[i]() end
  cleanups = {}
end

-- Logs to /dev/null, the ring capturing from info up, until loud().
local restore_logs
local function quiet()
  log.output("/dev/null")
  restore_logs = logs.capture("info")
end
local function loud()
  if restore_logs then restore_logs() end
  restore_logs = nil
  log.output("-")
end

local function hex(n) return bignum.to_hex(n) end

local function new(url, db, extra)
  local o = { chain = "devnet", chain_id = 31337, rpc_url = url, retry = false, limiter = false }
  for k, v in pairs(extra or {}) do o[k] = v end
  return collector.new(spec, o, { store = db })
end

-- The nearest-rank percentile of decimal texts, by the book: sorted by
-- value, the value at rank max(1, ceil(p × n / 100)) (p integral here).
local function expected_percentile(values, p)
  local sorted = {}
  for i, v in ipairs(values) do sorted[i] = v end
  table.sort(sorted, function(a, b) return bignum.cmp(a, b) < 0 end)
  local n = #sorted
  local rank = math.max(1, math.floor((p * n + 99) / 100))
  return sorted[rank]
end

describe("evm_mempool against anvil (mining off)", function()
  after_each(run_cleanups)
  local node, db
  before_each(function()
    quiet()
    node = anvil.start{ no_mining = true }
    db = assert(store.open(":memory:"))
  end)
  after_each(function()
    loud()
    if node then node:stop() end
    if db then db:close() end
    node, db = nil, nil
  end)

  it("stores txpool_status and exact fee percentiles of what was sent; mining drains pending", function()
    local a = node.accounts
    -- what is sent: EIP-1559 (max fee, tip) and legacy gas prices, in wei;
    -- one max fee beyond 2^53 (no double holds it)
    local big = "10000000000000001"
    local sent = {
      { from = 1, max_fee = 30 * GWEI, tip = 2 * GWEI },
      { from = 1, max_fee = 50 * GWEI, tip = 5 * GWEI },     -- the same sender, nonce 1
      { from = 2, max_fee = 3 * GWEI, tip = 3 * GWEI },      -- capped by the max fee
      { from = 3, max_fee = big, tip = "1000000001" },
      { from = 4, gas_price = 20 * GWEI },
      { from = 5, gas_price = 7 * GWEI + 1 },
      { from = 6, max_fee = 12 * GWEI, tip = 1 },
    }
    for _, s in ipairs(sent) do
      local tx = { from = a[s.from], to = a[10], value = "0x1" }
      if s.gas_price then
        tx.gasPrice = hex(s.gas_price)
      else
        tx.maxFeePerGas, tx.maxPriorityFeePerGas = hex(s.max_fee), hex(s.tip)
      end
      node:rpc("eth_sendTransaction", { tx })
    end
    -- a nonce gap: queued, not pending
    node:rpc("eth_sendTransaction", { { from = a[7], to = a[10], value = "0x1", gasPrice = hex(9 * GWEI),
      nonce = "0x5" } })
    local st = node:rpc("txpool_status")
    assert.same({ "0x7", "0x1" }, { st.pending, st.queued })

    local c = new(node.url, db, { percentiles = { 0, 10, 25, 50, 75, 90, 100 } })
    assert.same({ true, 1 }, { c:run_once("status") })
    local row = db:query("SELECT chain, chain_id, pending, queued FROM evm_mempool")[1]
    assert.same({ chain = "devnet", chain_id = 31337, pending = 7, queued = 1 }, row)

    local ok, n = c:run_once("content")
    assert.is_true(ok, n)
    local base = bignum.from_hex(node:rpc("eth_feeHistory", { "0x1", "latest", json.empty_array }).baseFeePerGas[2])
    local content = db:query("SELECT pending, queued, senders, legacy, dynamic, next_base_fee_wei, "
      .. "next_base_fee_gwei FROM evm_mempool_content")[1]
    assert.same({ pending = 7, queued = 1, senders = 6, legacy = 2, dynamic = 5, next_base_fee_wei = base,
      next_base_fee_gwei = bignum.scale(base, -9) }, content)

    -- the expectation, from what was sent (not from what the node says)
    local want = { max_fee = {}, effective_price = {}, priority_fee = {} }
    for _, s in ipairs(sent) do
      if s.gas_price then
        local p = bignum.normalize(s.gas_price)
        table.insert(want.max_fee, p)
        table.insert(want.effective_price, p)
      else
        local cap, tip = bignum.normalize(s.max_fee), bignum.normalize(s.tip)
        table.insert(want.max_fee, cap)
        table.insert(want.priority_fee, tip)
        local sum = bignum.add(base, tip)
        table.insert(want.effective_price, bignum.cmp(cap, sum) < 0 and cap or sum)
      end
    end
    local rows = db:query("SELECT metric, percentile, txs, value_wei, value_gwei FROM evm_mempool_gas "
      .. "ORDER BY metric, percentile")
    assert.equal(21, #rows)
    assert.equal(21 + 1, n)
    local i = 0
    for _, metric in ipairs({ "effective_price", "max_fee", "priority_fee" }) do
      for _, p in ipairs({ 0, 10, 25, 50, 75, 90, 100 }) do
        i = i + 1
        local v = expected_percentile(want[metric], p)
        assert.same({ metric = metric, percentile = p, txs = #want[metric], value_wei = v,
          value_gwei = bignum.scale(v, -9) }, rows[i])
      end
    end
    -- spot checks by hand: the largest bid is the one beyond 2^53, the median tip 2 gwei
    assert.equal(big, db:query("SELECT value_wei FROM evm_mempool_gas WHERE metric = 'max_fee' "
      .. "AND percentile = 100")[1].value_wei)
    assert.equal("10000000.000000001", db:query("SELECT value_gwei FROM evm_mempool_gas WHERE "
      .. "metric = 'max_fee' AND percentile = 100")[1].value_gwei)
    assert.equal("2000000000", db:query("SELECT value_wei FROM evm_mempool_gas WHERE "
      .. "metric = 'priority_fee' AND percentile = 50")[1].value_wei)

    -- a block takes the pending transactions; the queued one stays
    node:rpc("evm_mine")
    st = node:rpc("txpool_status")
    assert.same({ "0x0", "0x1" }, { st.pending, st.queued })
    local t0 = db:query("SELECT ts FROM evm_mempool")[1].ts
    wait_for("a later millisecond", function() return math.floor(sluice.time() * 1000) > t0 end)
    assert.same({ true, 1 }, { c:run_once("status") })
    local last = db:query("SELECT pending, queued FROM evm_mempool ORDER BY ts DESC LIMIT 1")[1]
    assert.same({ pending = 0, queued = 1 }, last)
    -- an empty pool: counts, no percentiles
    assert.same({ true, 1 }, { c:run_once("content") })
    local latest = db:query("SELECT pending, queued FROM evm_mempool_content ORDER BY ts DESC LIMIT 1")[1]
    assert.same({ pending = 0, queued = 1 }, latest)
    assert.equal(0, c.breaker:status().statistics.total_failures)
  end)

  it("fails a txpool_content answer over max_body clearly: not retried, no breaker failure", function()
    for i = 1, 5 do node:send_eth(i, 10, 1) end
    local c = new(node.url, db, { max_body = 512, retry = { max_attempts = 3, base_delay = 0.01 } })
    local ok, err = c:run_once("content")
    assert.is_false(ok)
    assert.equal("txpool_content: the answer is larger than max_body (512 bytes; Maximum file size exceeded): "
      .. "a large pool -- raise the collector's max_body, or disable the content dataset "
      .. "(datasets = {content = {enabled = false}})", err)
    assert.equal(0, c.breaker:status().statistics.total_failures)
    -- one request: eth_chainId (the kit's check) is small; the batch was sent once
    assert.equal(2, c:counters().total_requests)
    assert.equal(0, #db:query("SELECT * FROM evm_mempool_gas"))
    assert.same({ true, 1 }, { c:run_once("status") }) -- the small answers pass
  end)

  it("goes through the kit's chain-id check: a wrong chain id stores nothing", function()
    local c = new(node.url, db, { chain_id = 1 })
    local ok, err = c:run_once("status")
    assert.is_false(ok)
    assert.matches("rpc_url answers chain id 31337, but chain 'devnet' is 1", err, 1, true)
    assert.equal(0, #db:query("SELECT * FROM evm_mempool"))
  end)
end)

-- A scripted node: eth_chainId and eth_feeHistory answered, the methods in
-- `missing` answered with `missing[method]` (an error object), single or
-- batched requests.
local function scripted(missing)
  local srv = assert(server.listen({ port = 0 }))
  local calls = {}
  local function one(r)
    calls[r.method] = (calls[r.method] or 0) + 1
    local e = missing[r.method]
    if e then return { jsonrpc = "2.0", id = r.id, error = e } end
    if r.method == "eth_chainId" then return { jsonrpc = "2.0", id = r.id, result = "0x7a69" } end
    if r.method == "txpool_status" then
      return { jsonrpc = "2.0", id = r.id, result = { pending = "0x2", queued = "0x0" } }
    end
    if r.method == "eth_feeHistory" then
      return { jsonrpc = "2.0", id = r.id, result = { oldestBlock = "0x1",
        baseFeePerGas = { "0x7", "0x8" }, gasUsedRatio = { 0 } } }
    end
    return { jsonrpc = "2.0", id = r.id, error = { code = -32601, message = "Method not found" } }
  end
  srv:route("POST", "/", function(req)
    local body = assert(req:json())
    if body[1] then
      local out = json.array()
      for i, r in ipairs(body) do out[i] = one(r) end
      return 200, out
    end
    return 200, one(body)
  end)
  return srv, "http://127.0.0.1:" .. srv.port .. "/", calls
end

describe("evm_mempool against a node without txpool methods", function()
  after_each(run_cleanups)
  before_each(quiet)
  after_each(loud)

  it("disables content once (a provider's message), keeps status; no breaker failure, health not degraded", function()
    local srv, url, calls = scripted({ txpool_content = { code = -32000,
      message = "the method txpool_content does not exist/is not available" } })
    defer(function() srv:close() end)
    local db = assert(store.open(":memory:"))
    defer(function() db:close() end)
    local c = new(url, db, { breaker = { failure_threshold = 1 }, datasets = { status = { interval = 0.05 },
      content = { interval = 0.05 } } })
    defer(function() c:stop() end)
    c:start()
    wait_for("content disabled, its run ended", function()
      local d = c:counters().datasets.content
      return d.enabled == false and d.collections_completed == 1
    end)
    wait_for("3 runs of status", function() return c:counters().datasets.status.collections_completed >= 3 end)
    assert.equal(1, calls.txpool_content) -- never asked again
    local reason = "the node has no txpool_content (txpool_content: JSON-RPC error -32000: "
      .. "the method txpool_content does not exist/is not available)"
    local d = c:counters().datasets.content
    assert.same({ false, reason, 1, 0 }, { d.enabled, d.disabled_reason, d.collections_completed,
      d.collections_failed })
    assert.same({ "disabled", reason }, { c:health("content") })
    assert.equal("healthy", (c:health()))
    assert.equal(0, c.breaker:status().statistics.total_failures)
    assert.equal("closed", c.breaker:status().state)
    assert.equal(1, #logs.logged("dataset disabled"))
    -- by name it still runs (and says the same, without a second warning)
    assert.same({ true, 0 }, { c:run_once("content") })
    assert.equal(1, #logs.logged("dataset disabled"))
    assert.equal(0, #db:query("SELECT * FROM evm_mempool_content"))
    assert.is_true(#db:query("SELECT * FROM evm_mempool") >= 3)
  end)

  it("disables both on -32601: the breaker counts nothing, the collector is disabled", function()
    local nf = { code = -32601, message = "Method not found" }
    local srv, url = scripted({ txpool_status = nf, txpool_content = nf })
    defer(function() srv:close() end)
    local c = new(url, nil, { breaker = { failure_threshold = 1 } })
    assert.same({ true, 0 }, { c:run_once() })
    assert.same({ false, false }, { c:counters().datasets.status.enabled, c:counters().datasets.content.enabled })
    assert.same({ "disabled", "every dataset is disabled: dataset content: the node has no txpool_content "
      .. "(txpool_content: JSON-RPC error -32601: Method not found); dataset status: the node has no "
      .. "txpool_status (txpool_status: JSON-RPC error -32601: Method not found)" }, { c:health() })
    local bs = c.breaker:status()
    assert.same({ "closed", 0 }, { bs.state, bs.statistics.total_failures })
    assert.equal(2, #logs.logged("dataset disabled"))
  end)

  it("fails clearly on an HTML answer, storing nothing", function()
    local srv = assert(server.listen({ port = 0 }))
    defer(function() srv:close() end)
    srv:route("POST", "/", function()
      return 200, "<html><body>hello</body></html>", { ["content-type"] = "text/html" }
    end)
    local db = assert(store.open(":memory:"))
    defer(function() db:close() end)
    local c = new("http://127.0.0.1:" .. srv.port .. "/", db)
    local ok, err = c:run_once("status")
    assert.is_false(ok)
    assert.matches("cannot check the node's chain id: eth_chainId: the reply is no JSON-RPC 2.0 response", err, 1, true)
    assert.equal(0, #db:query("SELECT * FROM evm_mempool"))
    assert.is_true(c:counters().datasets.status.enabled)
  end)
end)

describe("sluice.evm.mempool", function()
  after_each(run_cleanups)
  it("takes percentiles by nearest rank, exactly", function()
    local s = { "1", "2", "3", "4", "5", "6", "7", "8", "9", "10" }
    assert.same({ "1", "1", "3", "5", "7", "10", "10" },
      { mempool.nearest_rank(s, 0), mempool.nearest_rank(s, 10), mempool.nearest_rank(s, 25),
        mempool.nearest_rank(s, 50), mempool.nearest_rank(s, 70), mempool.nearest_rank(s, 99.9),
        mempool.nearest_rank(s, 100) })
    -- 7 of 100 is rank 7 (0.07 × 100 is 7.000000000000001 in doubles)
    local h = {}
    for i = 1, 100 do h[i] = tostring(i) end
    assert.equal("7", mempool.nearest_rank(h, 7))
    assert.equal("57", mempool.nearest_rank(h, 57))
    assert.is_nil(mempool.nearest_rank({}, 50))
  end)

  it("tells a missing method from other errors", function()
    assert.is_true(mempool.unavailable({ code = -32601, message = "Method not found" }))
    assert.is_true(mempool.unavailable({ code = -32004, message = "x" }))
    assert.is_true(mempool.unavailable({ code = -32600, message = "Unsupported method: txpool_content" }))
    assert.is_true(mempool.unavailable({ code = -32000, message = "method txpool_status not allowed" }))
    assert.is_false(mempool.unavailable({ code = -32000, message = "header not found" }))
    assert.is_false(mempool.unavailable({ code = -32603, message = "internal error" }))
    assert.is_false(mempool.unavailable(nil))
  end)

  it("refuses bad percentiles at start", function()
    quiet()
    defer(loud)
    local c = collector.new(spec, { chain = "devnet", chain_id = 31337, rpc_url = "http://127.0.0.1:1/",
      percentiles = { 50, 101 } })
    local ok, err = pcall(c.start, c)
    assert.is_false(ok)
    assert.matches("collector 'evm_mempool': init failed: collector 'evm_mempool': option 'percentiles': "
      .. "entry 2 must be a number 0..100, got 101", err, 1, true)
    assert.is_false(c.running)
  end)
end)
