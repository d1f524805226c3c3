-- sluice.evm: chain presets, the common options and their load errors, the
-- chain-id check against real nodes (anvil with --chain-id) and against a
-- scripted sluice.server node, the per-chain default upstream, wei helpers.
local anvil = require "support.anvil"
local fx = require "support.store"
local logs = require "support.logs"
local log = require "sluice.log"
local server = require "sluice.server"
local store = require "sluice.store"
local json = require "sluice.json"
local collector = require "sluice.collector"
local upstreams = require "sluice.collector.upstreams"
local evm = require "sluice.evm"

-- A kit collector storing one row per run: the node's block number.
local function heads_spec(extra)
  local s = {
    name = "heads", interval = 3600,
    retry = false,
    tables = { heads = { columns = { chain = "text", chain_id = "integer", n = "integer" },
      key = { "chain", "n" } } },
    collect = function(self)
      local n = assert(evm.rpc(self):call("eth_blockNumber"))
      return { evm.row(self, { n = require("sluice.jsonrpc").quantity(n) }) }
    end,
  }
  for k, v in pairs(extra or {}) do s[k] = v end
  return evm.define(s)
end

local function build(overrides, db, ctx)
  ctx = ctx or {}
  ctx.store = db
  return collector.new(heads_spec(), overrides, ctx)
end

describe("sluice.evm presets", function()
  it("has the seven chains with their ids, L1 and currency", function()
    local ids = {}
    for name, c in pairs(evm.chains) do ids[name] = c.chain_id end
    assert.same({ ethereum = 1, arbitrum = 42161, optimism = 10, base = 8453, polygon = 137,
      zksync = 324, scroll = 534352 }, ids)
    local a = evm.chains.arbitrum
    assert.same({ name = "arbitrum", chain_id = 42161, title = "Arbitrum One", l2 = true, l1 = "ethereum",
      native = "ETH", block_time = 0.25, rpc_url = "https://arb1.arbitrum.io/rpc" }, a)
    assert.equal("POL", evm.chains.polygon.native)
    assert.is_true(evm.chains.polygon.l2)
    assert.is_false(evm.chains.ethereum.l2)
    assert.is_nil(evm.chains.ethereum.l1)
    for _, c in pairs(evm.chains) do assert.truthy(c.rpc_url:match("^https://")) end
  end)

  it("resolves aliases and custom chains; refuses what names no chain", function()
    assert.equal("ethereum", evm.resolve({ chain = "mainnet" }).name)
    assert.equal("https://ethereum-rpc.publicnode.com", evm.resolve({}).rpc_url)
    assert.same({ name = "devnet", chain_id = 31337, title = "devnet", l2 = false, custom = true,
      rpc_url = "http://127.0.0.1:8545" }, evm.resolve({ chain = "devnet", chain_id = 31337,
        rpc_url = "http://127.0.0.1:8545" }))
    assert.same({ nil, "chain 'devnet' has no preset (arbitrum, base, ethereum, optimism, polygon, scroll, "
      .. "zksync): give its chain_id and rpc_url" }, { evm.resolve({ chain = "devnet" }) })
    assert.same({ nil, "chain 'devnet' has no preset, so no default endpoint: give its rpc_url" },
      { evm.resolve({ chain = "devnet", chain_id = 5 }) })
    assert.same({ nil, "chain 'arbitrum' is chain id 42161, not 1: for another chain, name it "
      .. "(chain = \"mychain\", chain_id = 1, rpc_url = ...)" }, { evm.resolve({ chain = "arbitrum", chain_id = 1 }) })
    assert.same({ nil, "rpc_url must be an http:// or https:// URL, got 'ws://x'" },
      { evm.resolve({ rpc_url = "ws://x" }) })
    assert.same({ nil, "option 'chain_id' must be a whole number >= 0, got 1.5" },
      { evm.resolve({ chain_id = 1.5 }) })
    assert.same({ nil, "option 'chain' must be a chain's name (letters, digits, _), got 'a-b'" },
      { evm.resolve({ chain = "a-b" }) })
  end)

  it("wei helpers are exact", function()
    assert.equal("1", evm.gwei("0x3b9aca00"))
    assert.equal("0.000000001", evm.gwei(1))
    assert.equal("1.5", evm.ether("1500000000000000000"))
    assert.equal("115792089237316195423570985008687907853269984665640564039457.584007913129639935",
      evm.ether("0xffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"))
    assert.equal("18446744073709551615", evm.wei(18446744073709551615ULL))
    assert.equal("12.3", evm.gwei(json.numeral("12300000000")))
    assert.equal("sluice.evm.gwei: bad argument #1 (a wei amount expected: a hex quantity or a whole number "
      .. ">= 0, got '-1')", fx.err_of(evm.gwei, "-1"))
    assert.equal("sluice.evm.ether: bad argument #1 (a wei amount expected: a hex quantity or a whole number "
      .. ">= 0, got 1.5)", fx.err_of(evm.ether, 1.5))
  end)
end)

describe("sluice.evm options at load", function()
  it("are refused with the collector's name", function()
    assert.equal("collector 'heads': chain 'devnet' has no preset (arbitrum, base, ethereum, optimism, "
      .. "polygon, scroll, zksync): give its chain_id and rpc_url", fx.err_of(build, { chain = "devnet" }))
    assert.equal("collector 'gas_dev': chain 'devnet' has no preset, so no default endpoint: give its rpc_url",
      fx.err_of(build, { name = "gas_dev", chain = "devnet", chain_id = 7 }))
    assert.equal("collector 'heads': option 'chain_id' must be a number, got string",
      fx.err_of(build, { chain_id = "1" }))
    assert.equal("collector 'heads': option 'rpc_url' must be a string or collector.env(\"NAME\"), got number",
      fx.err_of(build, { rpc_url = 5 }))
    assert.equal("collector 'heads': option 'chain' must be a string or collector.env(\"NAME\"), got boolean",
      fx.err_of(build, { chain = true }))
  end)

  it("give the collectors of one chain one upstream, per chain", function()
    local reg = upstreams.new()
    local a = build({ name = "a", chain = "arbitrum" }, nil, { upstreams = reg })
    local b = build({ name = "b", chain = "arbitrum_one" }, nil, { upstreams = reg })
    local e = build({ name = "e" }, nil, { upstreams = reg })
    local x = build({ name = "x", upstream = "mine" }, nil, { upstreams = reg })
    assert.equal("evm_arbitrum", a.config.upstream)
    assert.equal(a.limiter, b.limiter)
    assert.equal(a.breaker, b.breaker)
    assert.equal("evm_arbitrum", a.limiter:name())
    assert.equal("evm_ethereum", e.config.upstream)
    assert.are_not.equal(a.limiter, e.limiter)
    assert.equal("mine", x.config.upstream)
    assert.same({ "evm_arbitrum", "evm_ethereum", "mine" }, reg:names())
    assert.same({ rate = 5, burst = 5 }, a.config.limiter)
  end)
end)

describe("sluice.evm chain-id check against anvil", function()
  local node, db
  setup(function()
    node = anvil.start{ chain_id = 42161 }
  end)
  teardown(function() node:stop() end)
  before_each(function() db = assert(store.open(":memory:")) end)
  after_each(function() db:close() end)

  it("accepts the preset the node is", function()
    local c = build({ name = "gas_arb", chain = "arbitrum", rpc_url = node.url }, db)
    c:start({ first_delay = 3600 })
    local ok, n = c:run_once()
    c:stop()
    assert.is_true(ok)
    assert.equal(1, n)
    assert.same({ { chain = "arbitrum", chain_id = 42161, n = 0 } }, db:select("heads"))
  end)

  it("refuses to start on another chain's node, storing nothing", function()
    local c = build({ name = "gas_op", chain = "optimism", rpc_url = node.url }, db)
    local ok, err = pcall(c.start, c, { first_delay = 3600 })
    assert.is_false(ok)
    assert.equal("collector 'gas_op': init failed: rpc_url answers chain id 42161, "
      .. "but chain 'optimism' is 10 — check rpc_url", err:match("^[^\n]*"))
    assert.is_false(c.running)
    -- run by hand anyway: the check stops it before a row is stored
    local rok, rerr = c:run_once()
    assert.is_false(rok)
    assert.truthy(rerr:find("rpc_url answers chain id 42161, but chain 'optimism' is 10", 1, true))
    assert.same({}, db:select("heads"))
  end)

  it("takes a custom chain by its chain_id", function()
    local c = build({ name = "l2x", chain = "orbit_x", chain_id = 42161, rpc_url = node.url }, db)
    c:start({ first_delay = 3600 })
    assert.is_true((c:run_once()))
    c:stop()
    assert.same({ { chain = "orbit_x", chain_id = 42161, n = 0 } }, db:select("heads"))
    local bad = build({ name = "l2y", chain = "orbit_y", chain_id = 42170, rpc_url = node.url }, db)
    assert.equal("collector 'l2y': init failed: rpc_url answers chain id 42161, "
      .. "but chain 'orbit_y' is 42170 — check rpc_url",
      fx.err_of(bad.start, bad, { first_delay = 3600 }):match("^[^\n]*"))
  end)

  it("checks backfill before its first window (backfill calls no init)", function()
    local windows = 0
    local spec = heads_spec({
      backfill_unit = "blocks", backfill_step = 10,
      backfill = function(self, from)
        windows = windows + 1
        return { evm.row(self, { n = from }) }
      end,
    })
    local c = collector.new(spec, { name = "bf", chain = "base", rpc_url = node.url }, { store = db })
    local ok, err = pcall(spec.backfill, c, 0, 10)
    assert.is_false(ok)
    assert.equal("collector 'bf': rpc_url answers chain id 42161, but chain 'base' is 8453 — check rpc_url", err)
    assert.equal(0, windows)
    local good = collector.new(spec, { name = "bf2", chain = "arbitrum", rpc_url = node.url }, { store = db })
    assert.same({ { n = 20, chain = "arbitrum", chain_id = 42161 } }, spec.backfill(good, 20, 30))
    assert.equal(1, windows)
  end)
end)

describe("sluice.evm against a node that is not yet one", function()
  local srv, url, answer
  setup(function()
    srv = assert(server.listen({ port = 0 }))
    url = "http://127.0.0.1:" .. srv.port .. "/rpc"
    srv:route("POST", "/rpc", function(req)
      return answer(json.decode(req.body))
    end)
  end)
  teardown(function() srv:close() end)

  local function rpc_answer(result)
    return function(call)
      return 200, json.encode({ jsonrpc = "2.0", id = call.id, result = result(call.method) }),
        { ["content-type"] = "application/json" }
    end
  end

  it("warns at start, then checks before each run until the node answers right", function()
    local restore = logs.capture("info")
    log.output("/dev/null")
    local db = assert(store.open(":memory:"))
    answer = function() return 503, "<html><body>Bad gateway</body></html>", { ["content-type"] = "text/html" } end
    local c = build({ name = "gas_arb", chain = "arbitrum", rpc_url = url }, db)
    c:start({ first_delay = 3600 })
    assert.is_true(c.running)
    local w = logs.logged("chain id not checked at start: checked again before the first run stores rows")
    assert.equal(1, #w)
    assert.equal("collector 'gas_arb': cannot check the node's chain id: HTTP 503", w[1].error)
    -- a 200 with HTML: no JSON-RPC, a clear error, no rows
    answer = function() return 200, "<html>hello</html>", { ["content-type"] = "text/html" } end
    local ok, err = c:run_once()
    assert.is_false(ok)
    assert.truthy(err:find("collector 'gas_arb': cannot check the node's chain id: eth_chainId: "
      .. "the reply is no JSON-RPC 2.0 response", 1, true), err)
    -- the wrong chain: refused before anything is stored
    answer = rpc_answer(function() return "0x1" end)
    ok, err = c:run_once()
    assert.is_false(ok)
    assert.truthy(err:find("collector 'gas_arb': rpc_url answers chain id 1, but chain 'arbitrum' is 42161", 1, true))
    assert.same({}, db:select("heads"))
    -- the right one: rows
    answer = rpc_answer(function(m) return m == "eth_chainId" and "0xa4b1" or "0x10" end)
    ok = c:run_once()
    assert.is_true(ok)
    assert.same({ { chain = "arbitrum", chain_id = 42161, n = 16 } }, db:select("heads"))
    c:stop()
    db:close()
    log.output("-")
    restore()
  end)
end)
