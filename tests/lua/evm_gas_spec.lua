-- collectors.evm_gas against anvil (stored gas and fee history equal the
-- node's answers for the same blocks, digit for digit; L2 savings from two
-- nodes into one store) and against a scripted sluice.server node (HTML,
-- JSON-RPC error objects, throttling, a node without
-- eth_maxPriorityFeePerGas, a secret rpc_url kept out of logs and /status).
local anvil = require "support.anvil"
local logs = require "support.logs"
local files = require "support.files"
local log = require "sluice.log"
local http = require "sluice.http"
local server = require "sluice.server"
local store = require "sluice.store"
local json = require "sluice.json"
local bignum = require "sluice.bignum"
local jsonrpc = require "sluice.jsonrpc"
local collector = require "sluice.collector"

local spec = require "collectors.evm_gas"
local q = jsonrpc.to_quantity

local function gas(overrides, db)
  overrides.retry = overrides.retry or false
  return collector.new(spec, overrides, { store = db })
end

local function run(c)
  c:start({ first_delay = 3600 })
  local ok, n = c:run_once()
  c:stop()
  return ok, n
end

local function decimal(v) return bignum.normalize(v) end

local function wei_list(t)
  local out = {}
  for i, v in ipairs(t) do out[i] = bignum.from_hex(v) end
  return out
end

describe("evm_gas against anvil", function()
  local node, db
  setup(function()
    -- blocks only when mined here; a small gas limit so ratios are not tiny
    node = anvil.start{ no_mining = true, args = "--gas-limit 1000000" }
    -- three blocks of transactions with varied tips, and a changed base fee
    local tips = { { 1, 3, 7 }, { 2, 11 }, { 5, 6, 13, 17 } }
    for b, list in ipairs(tips) do
      if b == 3 then node:rpc("anvil_setNextBlockBaseFeePerGas", { q("7000000007") }) end
      for i, tip in ipairs(list) do
        node:rpc("eth_sendTransaction", { { from = node.accounts[i], to = node.accounts[9], value = q(1000 + b),
          maxFeePerGas = q("100000000000"), maxPriorityFeePerGas = q(tip * 1000000000 + b) } })
      end
      node:rpc("evm_mine")
    end
    node:rpc("evm_mine") -- an empty block too
  end)
  teardown(function() node:stop() end)
  before_each(function() db = assert(store.open(":memory:")) end)
  after_each(function() db:close() end)

  it("stores gas and fee history equal to the node's, digit for digit", function()
    local c = gas({ chain = "anvil", chain_id = 31337, rpc_url = node.url, block_count = 4,
      reward_percentiles = { 0, 20, 50, 90, 100 } }, db)
    assert.same({ true, 5 }, { run(c) })
    local head = jsonrpc.quantity(node:rpc("eth_blockNumber"))
    assert.equal(4, head)
    -- the node asked again, for the same window by number
    local fh = node:rpc("eth_feeHistory", { q(4), q(head), { 0, 20, 50, 90, 100 } })
    local gp, tip = node:rpc("eth_gasPrice"), node:rpc("eth_maxPriorityFeePerGas")
    local rows = db:select("evm_fee_history", "ORDER BY block")
    assert.equal(4, #rows)
    assert.equal(1, jsonrpc.quantity(fh.oldestBlock))
    local nontrivial = 0
    for i, r in ipairs(rows) do
      assert.equal(i, r.block)
      assert.equal("anvil", r.chain)
      assert.equal(31337, r.chain_id)
      assert.equal(bignum.from_hex(fh.baseFeePerGas[i]), r.base_fee_wei)
      assert.equal(bignum.scale(bignum.from_hex(fh.baseFeePerGas[i]), -9), r.base_fee_gwei)
      assert.equal(decimal(fh.gasUsedRatio[i]), r.gas_used_ratio)
      assert.same(wei_list(fh.reward[i]), r.rewards_wei)
      assert.same({ 0, 20, 50, 90, 100 }, r.reward_percentiles)
      assert.equal(bignum.from_hex(fh.baseFeePerBlobGas[i]), r.blob_base_fee_wei)
      assert.equal(decimal(fh.blobGasUsedRatio[i]), r.blob_gas_used_ratio)
      for _, w in ipairs(fh.reward[i]) do
        if w ~= "0x0" then nontrivial = nontrivial + 1 end
      end
    end
    assert.is_true(nontrivial >= 10) -- the tips really are in the rewards
    -- 21000-gas transfers in blocks of 1,000,000 gas: 3, 2, 4 and none
    assert.same({ "0.063", "0.042", "0.084", "0" },
      { rows[1].gas_used_ratio, rows[2].gas_used_ratio, rows[3].gas_used_ratio, rows[4].gas_used_ratio })
    assert.equal("7000000007", rows[3].base_fee_wei)
    -- what the row says, from the same answers
    local g = db:select("evm_gas")
    assert.equal(1, #g)
    g = g[1]
    assert.equal(4, g.block)
    assert.equal(bignum.from_hex(gp), g.gas_price_wei)
    assert.equal(bignum.scale(bignum.from_hex(gp), -9), g.gas_price_gwei)
    assert.equal(bignum.from_hex(tip), g.max_priority_fee_wei)
    assert.equal(bignum.scale(bignum.from_hex(tip), -9), g.max_priority_fee_gwei)
    assert.equal(bignum.from_hex(fh.baseFeePerGas[4]), g.base_fee_wei)
    assert.equal(bignum.from_hex(fh.baseFeePerGas[5]), g.next_base_fee_wei)
    assert.equal(bignum.scale(bignum.from_hex(fh.baseFeePerGas[5]), -9), g.next_base_fee_gwei)
    assert.equal(decimal(fh.gasUsedRatio[4]), g.gas_used_ratio)
    assert.same(wei_list(fh.reward[4]), g.rewards_wei)
    assert.equal(bignum.from_hex(fh.baseFeePerBlobGas[4]), g.blob_base_fee_wei)
    assert.equal(bignum.from_hex(fh.baseFeePerBlobGas[5]), g.next_blob_base_fee_wei)
    assert.equal(decimal(fh.blobGasUsedRatio[4]), g.blob_gas_used_ratio)
    assert.is_nil(g.l1_chain)
    assert.is_nil(g.savings_percent)
  end)

  it("upserts a block seen again (key chain, block)", function()
    local c = gas({ chain = "anvil", chain_id = 31337, rpc_url = node.url, block_count = 2 }, db)
    assert.is_true((run(c)))
    assert.is_true((run(c)))
    assert.same({ 3, 4 }, { db:select("evm_fee_history", "ORDER BY block")[1].block,
      db:select("evm_fee_history", "ORDER BY block")[2].block })
    assert.equal(2, #db:select("evm_fee_history"))
  end)
end)

describe("evm_gas L2 savings", function()
  local l1, l2, db
  setup(function()
    l1 = anvil.start{ chain_id = 1, no_mining = true, args = "--base-fee 20000000000" }
    l2 = anvil.start{ chain_id = 42161, no_mining = true, args = "--base-fee 3000000000" }
  end)
  teardown(function()
    l1:stop()
    l2:stop()
  end)
  before_each(function() db = assert(store.open(":memory:")) end)
  after_each(function() db:close() end)

  it("compares with the newest ethereum row in the same store, exactly", function()
    local l1_price = bignum.from_hex(l1:rpc("eth_gasPrice"))
    local l2_price = bignum.from_hex(l2:rpc("eth_gasPrice"))
    assert.equal("21000000000", l1_price) -- base fee + anvil's 1 gwei suggested tip
    assert.equal("4000000000", l2_price)
    local arb = gas({ name = "gas_arbitrum", chain = "arbitrum", rpc_url = l2.url }, db)
    local eth = gas({ name = "gas_ethereum", rpc_url = l1.url }, db)
    -- no ethereum row yet: null savings, the L1 named
    assert.is_true((run(arb)))
    local r = db:select("evm_gas", "WHERE chain = 'arbitrum'")[1]
    assert.same({ "ethereum", nil, nil }, { r.l1_chain, r.l1_gas_price_wei, r.savings_percent })
    assert.equal(42161, r.chain_id)
    assert.is_true((run(eth)))
    local e = db:select("evm_gas", "WHERE chain = 'ethereum'")[1]
    assert.same({ 1, nil }, { e.chain_id, e.l1_chain })
    -- wait for the next millisecond: the key is (chain, ts)
    local last = r.ts
    while math.floor(require("sluice").time() * 1000) <= last do require("sluice").sleep(0.001) end
    assert.is_true((run(arb)))
    local rows = db:select("evm_gas", "WHERE chain = 'arbitrum' ORDER BY ts DESC")
    assert.equal(2, #rows)
    -- (1 - 4/21) * 100 = 80.952380..., truncated to 4 decimals
    assert.same({ "ethereum", "21000000000", "80.9523" },
      { rows[1].l1_chain, rows[1].l1_gas_price_wei, rows[1].savings_percent })
  end)

  it("ignores an L1 row older than l1_max_age, and takes l1_chain for a custom chain", function()
    local sluice = require "sluice"
    local now = math.floor(sluice.time() * 1000)
    local eth = gas({ name = "gas_ethereum", rpc_url = l1.url }, db) -- defines the tables
    assert(eth)
    assert.equal(1, db:upsert("evm_gas", { { chain = "ethereum", chain_id = 1, ts = now - 5000, block = 1,
      gas_price_wei = "8000000000" } }))
    local arb = gas({ name = "gas_arb", chain = "arbitrum", rpc_url = l2.url, l1_max_age = 4 }, db)
    assert.is_true((run(arb)))
    local r = db:select("evm_gas", "WHERE chain = 'arbitrum'")[1]
    assert.same({ "ethereum", nil, nil }, { r.l1_chain, r.l1_gas_price_wei, r.savings_percent })
    -- a custom chain compared by l1_chain, a dearer L2: negative savings
    local x = gas({ name = "gas_x", chain = "orbit_x", chain_id = 42161, rpc_url = l2.url, l1_chain = "mainnet" }, db)
    assert.is_true((run(x)))
    r = db:select("evm_gas", "WHERE chain = 'orbit_x'")[1]
    -- (1 - 4/8) * 100
    assert.same({ "ethereum", "8000000000", "50" }, { r.l1_chain, r.l1_gas_price_wei, r.savings_percent })
    assert.equal(1, db:upsert("evm_gas", { { chain = "ethereum", chain_id = 1, ts = now - 1000, block = 2,
      gas_price_wei = "3000000000" } }))
    assert.is_true((run(x)))
    r = db:select("evm_gas", "WHERE chain = 'orbit_x' ORDER BY ts DESC")[1]
    -- (1 - 4/3) * 100 = -33.3333...
    assert.same({ "3000000000", "-33.3333" }, { r.l1_gas_price_wei, r.savings_percent })
  end)
end)

describe("evm_gas options", function()
  it("are checked when the instance is built", function()
    local function err_of(o)
      local ok, e = pcall(collector.new, spec, o)
      assert.is_false(ok)
      return (e:gsub("^[^:]+:%d+: ", ""))
    end
    assert.equal("collector 'evm_gas': option 'block_count' must be a whole number from 1 to 1024, got 0",
      err_of({ block_count = 0 }))
    assert.equal("collector 'evm_gas': option 'reward_percentiles' must be increasing numbers from 0 to 100, "
      .. "got 50 at [2]", err_of({ reward_percentiles = { 50, 50 } }))
    assert.equal("collector 'evm_gas': option 'l1_max_age' must be a number of seconds > 0, got 0",
      err_of({ l1_max_age = 0 }))
    assert.equal("collector 'evm_gas': option 'block_count' must be a number, got string",
      err_of({ block_count = "5" }))
  end)
end)

describe("evm_gas against a misbehaving node", function()
  local srv, url, answer, methods, db, restore
  setup(function()
    srv = assert(server.listen({ port = 0 }))
    url = "http://127.0.0.1:" .. srv.port .. "/v2/sekret-key-98765"
    srv:route("POST", "/v2/sekret-key-98765", function(req)
      local body = json.decode(req.body)
      if body.method == "eth_chainId" then
        return 200, json.encode({ jsonrpc = "2.0", id = body.id, result = "0xa4b1" }),
          { ["content-type"] = "application/json" }
      end
      for _, call in ipairs(body) do methods[#methods + 1] = call.method end
      return answer(body)
    end)
  end)
  teardown(function() srv:close() end)
  before_each(function()
    methods = {}
    db = assert(store.open(":memory:"))
    restore = logs.capture("info")
    log.output("/dev/null")
  end)
  after_each(function()
    db:close()
    log.output("-")
    restore()
  end)

  local JSON = { ["content-type"] = "application/json" }
  local FEE_HISTORY = { oldestBlock = "0x10", baseFeePerGas = { "0x5", "0x6" }, gasUsedRatio = { 0.5 },
    reward = { { "0x1", "0x2" } } }

  -- replies to a batch: results[method] or an error object
  local function replies(results)
    return function(batch)
      local out = json.array()
      for i, call in ipairs(batch) do
        local r = results[call.method]
        out[i] = r.error and { jsonrpc = "2.0", id = call.id, error = r.error }
          or { jsonrpc = "2.0", id = call.id, result = r }
      end
      return 200, json.encode(out), JSON
    end
  end

  local function arb()
    return gas({ name = "gas_arb", chain = "arbitrum", rpc_url = url, reward_percentiles = { 10, 90 } }, db)
  end

  local function fails_with(c, text)
    c:start({ first_delay = 3600 })
    local ok, err = c:run_once()
    c:stop()
    assert.is_false(ok)
    assert.truthy(tostring(err):find(text, 1, true), err)
    assert.same({}, db:select("evm_gas"))
    assert.same({}, db:select("evm_fee_history"))
  end

  it("an HTML page: a clear error, no rows", function()
    answer = function() return 200, "<html><body>Welcome</body></html>", { ["content-type"] = "text/html" } end
    fails_with(arb(), "JSON-RPC batch: the reply is not an array")
  end)

  it("one JSON-RPC error object for the whole batch: a clear error, no rows", function()
    answer = function()
      return 200, '{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"batch requests disabled"}}', JSON
    end
    fails_with(arb(), "JSON-RPC error -32600: batch requests disabled")
  end)

  it("429 and -32005: throttled, no rows", function()
    answer = function() return 429, "Too Many Requests", { ["content-type"] = "text/plain" } end
    local c = arb()
    fails_with(c, "HTTP 429")
    answer = function()
      return 200, '{"jsonrpc":"2.0","id":null,"error":{"code":-32005,"message":"limit exceeded"}}', JSON
    end
    c = arb()
    c:start({ first_delay = 3600 })
    local ok, err = c:run_once()
    c:stop()
    assert.same({ false, "JSON-RPC error -32005: limit exceeded" }, { ok, err })
    assert.same({}, db:select("evm_gas"))
  end)

  it("an eth_feeHistory error fails the run; a missing eth_maxPriorityFeePerGas leaves nulls, asked once",
    function()
      answer = replies({ eth_gasPrice = "0x3b9aca07", eth_maxPriorityFeePerGas = "0x1",
        eth_feeHistory = { error = { code = -32000, message = "historical state unavailable" } } })
      fails_with(arb(), "eth_feeHistory: JSON-RPC error -32000: historical state unavailable")
      answer = replies({ eth_gasPrice = "0x3b9aca07", eth_feeHistory = FEE_HISTORY,
        eth_maxPriorityFeePerGas = { error = { code = -32601, message = "the method does not exist" } } })
      methods = {}
      local c = arb()
      c:start({ first_delay = 3600 })
      assert.is_true((c:run_once()))
      local ok = c:run_once()
      c:stop()
      assert.is_true(ok)
      assert.same({ "eth_gasPrice", "eth_feeHistory", "eth_maxPriorityFeePerGas", "eth_gasPrice", "eth_feeHistory" },
        methods)
      local w = logs.logged("eth_maxPriorityFeePerGas unavailable: max_priority_fee columns stay null "
        .. "(not asked again)")
      assert.equal(1, #w)
      local g = db:select("evm_gas", "ORDER BY ts")[1]
      assert.same({ "1000000007", "1.000000007", nil, nil, "5", "6", "0.5", { "1", "2" }, nil },
        { g.gas_price_wei, g.gas_price_gwei, g.max_priority_fee_wei, g.max_priority_fee_gwei, g.base_fee_wei,
          g.next_base_fee_wei, g.gas_used_ratio, g.rewards_wei, g.blob_base_fee_wei })
      assert.equal(16, g.block)
      local h = db:select("evm_fee_history")
      assert.equal(1, #h)
      assert.same({ 16, "5", "0.5", nil, nil }, { h[1].block, h[1].base_fee_wei, h[1].gas_used_ratio,
        h[1].blob_base_fee_wei, h[1].blob_gas_used_ratio })
    end)

  it("keeps a secret rpc_url out of logs and /status", function()
    answer = function() return 200, "<html>no</html>", { ["content-type"] = "text/html" } end
    local dir = files.tmpdir()
    local app = require("sluice.app").run({
      store = dir .. "/db.sqlite",
      admin = { port = 0, token = "t0ken-evm" },
      collectors = {
        { use = "evm_gas", name = "gas_arbitrum", chain = "arbitrum", interval = 3600, retry = false,
          rpc_url = collector.env("SLUICE_TEST_UNSET_EVM_RPC", url) },
      },
    }, dir .. "/sluice.lua")
    local c = app.collectors.gas_arbitrum
    local ok = c:run_once()
    assert.is_false(ok)
    local base = "http://127.0.0.1:" .. app.admin.port
    local function get(path)
      local res = assert(http.request({ method = "GET", url = base .. path,
        headers = { Authorization = "Bearer t0ken-evm" } }))
      return res
    end
    local status = get("/status")
    local logs_res = get("/logs?limit=1000")
    for _, c2 in ipairs(app.order) do c2:stop() end
    app.admin:close()
    files.cleanup()
    assert.equal(200, status.status)
    assert.equal("<secret>", status:json().config.collectors[1].rpc_url)
    assert.is_nil(status.body:find("sekret-key", 1, true))
    assert.is_nil(logs_res.body:find("sekret-key", 1, true))
    assert.truthy(logs_res.body:find("JSON-RPC batch: the reply is not an array", 1, true))
    for _, e in ipairs(log.recent(1000)) do
      assert.is_nil(json.encode(e, true):find("sekret-key", 1, true))
    end
  end)
end)
