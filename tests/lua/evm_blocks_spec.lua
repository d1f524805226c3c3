-- evm_blocks against a real node (anvil, support.anvil): the follower
-- stores every block once while transactions are being sent, in batches,
-- within its per-run bound, and its rows equal the node's blocks field for
-- field; anvil_reorg at depth 3 and 10 leaves the stored canonical chain
-- equal to the node's with the orphans flagged (replaced_by the node's
-- block), a reorg at the stored head with no new block is caught, and one
-- deeper than reorg_depth fails the run loudly with nothing stored; a block
-- of 10,000 transactions is one exact row; a backfill by block range stores
-- every block once with the node's hash, skips covered windows, fails a
-- window the node has no blocks for with a clear message, and orphans a
-- stored block the node no longer has.
local sluice = require "sluice"
local collector = require "sluice.collector"
local store = require "sluice.store"
local backfill = require "sluice.backfill"
local http = require "sluice.http"
local json = require "sluice.json"
local bignum = require "sluice.bignum"
local jsonrpc = require "sluice.jsonrpc"
local log = require "sluice.log"
local anvil = require "support.anvil"
local logs = require "support.logs"
local wait_for = require("support.wait").wait_for

local quantity, to_quantity = jsonrpc.quantity, jsonrpc.to_quantity

local function head_of(node) return quantity(node:rpc("eth_blockNumber")) end

local function block_of(node, n)
  return node:rpc("eth_getBlockByNumber", { to_quantity(n), false })
end

-- The instance of the shipped collector on node into db (quick retries,
-- no rate limit), with option overrides.
local function instance(node, db, over)
  local cfg = { rpc_url = node.url, limiter = false, start_block = 0,
    retry = { strategy = "fixed", base_delay = 0.01, max_attempts = 2, budget = false } }
  for k, v in pairs(over or {}) do cfg[k] = v end
  return collector.new(require("collectors.evm_blocks"), cfg, { store = db })
end

local function canonical(db)
  return assert(db:select("evm_blocks", "WHERE orphaned = 0 ORDER BY number"))
end

-- The node's block n as the row evm_blocks should hold (exact values from
-- the node's own hex, not through the collector's code).
local function expected_row(b)
  local function int(v) return v and tonumber(bignum.from_hex(v)) end
  return {
    number = int(b.number), hash = b.hash, parent_hash = b.parentHash, timestamp = int(b.timestamp),
    miner = b.miner, gas_used = int(b.gasUsed), gas_limit = int(b.gasLimit),
    base_fee_wei = bignum.from_hex(b.baseFeePerGas), tx_count = #b.transactions, size = int(b.size),
    blob_gas_used = int(b.blobGasUsed), excess_blob_gas = int(b.excessBlobGas), orphaned = 0,
  }
end

local FIELDS = { "number", "hash", "parent_hash", "timestamp", "miner", "gas_used", "gas_limit",
  "base_fee_wei", "tx_count", "size", "blob_gas_used", "excess_blob_gas", "orphaned" }

local function pick(r)
  local out = {}
  for _, f in ipairs(FIELDS) do out[f] = r[f] end
  return out
end

-- Asserts the stored canonical chain is the node's blocks 0..head, one row
-- per number, field for field.
local function assert_chain_is_nodes(node, db)
  local head = head_of(node)
  local rows = canonical(db)
  assert.equal(head + 1, #rows)
  for n = 0, head do
    local r = rows[n + 1]
    assert.same(expected_row(block_of(node, n)), pick(r))
    assert.equal("ethereum", r.chain)
    assert.equal(1, r.chain_id)
    assert.is_nil(r.replaced_by)
  end
end

-- Runs the collector until it holds the node's head (bounded).
local function catch_up(c, node, db)
  local head = head_of(node)
  wait_for("the follower to reach block " .. head, function()
    assert(c:run_once())
    local r = db:query("SELECT MAX(number) AS n FROM evm_blocks WHERE orphaned = 0")[1]
    return r.n == head
  end, 30)
end

local function reorg(node, depth)
  -- a transaction in the first new block, so the new blocks differ from the old
  node:rpc("anvil_reorg", { depth, { { { from = node.accounts[3], to = node.accounts[4], value = "0x7" }, 0 } } })
end

describe("evm_blocks", function()
  local node, db, c
  before_each(function()
    log.output("/dev/null")
    db = assert(store.open(":memory:"))
  end)
  after_each(function()
    if c then c:stop() end
    if node then node:stop() end
    if db then db:close() end
    node, db, c = nil, nil, nil
  end)

  it("follows the head while transactions are sent: every block once, equal to the node's", function()
    node = anvil.start{ chain_id = 1 }
    c = instance(node, db, { max_blocks = 3, batch_size = 2 })
    -- a sender: transfers (a block each, automine) and empty blocks, 60 blocks
    local sent = false
    local sender = sluice.spawn(function()
      for i = 1, 30 do
        node:send_eth(1 + i % 5, 6 + i % 4, 1000 + i)
        node:rpc("anvil_mine", { "0x1" })
      end
      sent = true
    end)
    local runs = 0
    wait_for("the sender to finish while the follower runs", function()
      assert(c:run_once())
      runs = runs + 1
      return sent
    end, 60)
    assert(sluice.wait(sender))
    catch_up(c, node, db)
    assert.equal(60, head_of(node))
    assert_chain_is_nodes(node, db)
    local txs = db:query("SELECT SUM(tx_count) AS n, COUNT(*) AS rows FROM evm_blocks")[1]
    assert.same({ n = 30, rows = 61 }, txs)
    assert(runs > 1)
    -- a run with nothing new stores nothing
    local ok, count = c:run_once()
    assert.same({ true, 0 }, { ok, count })
  end)

  it("follows anvil_reorg at depth 3 and 10: the node's chain stored, the orphans flagged", function()
    node = anvil.start{ chain_id = 1 }
    c = instance(node, db, { batch_size = 4 })
    node:rpc("anvil_mine", { "0x14" })                 -- blocks 1..20
    catch_up(c, node, db)
    local old = {}
    for _, r in ipairs(canonical(db)) do old[r.number] = r.hash end

    -- depth 3, no new block: the stored head's hash is not the node's any more
    reorg(node, 3)
    assert.equal(20, head_of(node))
    local ok, count = c:run_once()
    assert.same({ true, 7 }, { ok, count })            -- 3 orphaned, 3 new, the reorg's record
    assert_chain_is_nodes(node, db)
    local orphans = assert(db:select("evm_blocks", "WHERE orphaned = 1 ORDER BY number"))
    assert.equal(3, #orphans)
    for i, r in ipairs(orphans) do
      assert.equal(17 + i, r.number)
      assert.equal(old[r.number], r.hash)
      assert.equal(block_of(node, r.number).hash, r.replaced_by)
    end
    local rg = assert(db:select("evm_reorgs"))
    assert.equal(1, #rg)
    assert.same({ depth = 3, head_number = 20, common_ancestor = 17, common_ancestor_hash = old[17],
      old_head = old[20], new_head = block_of(node, 20).hash },
      { depth = rg[1].depth, head_number = rg[1].head_number, common_ancestor = rg[1].common_ancestor,
        common_ancestor_hash = rg[1].common_ancestor_hash, old_head = rg[1].old_head, new_head = rg[1].new_head })

    -- depth 10, then 5 new blocks before the next run: walked back in batches of 4
    for _, r in ipairs(canonical(db)) do old[r.number] = r.hash end
    reorg(node, 10)
    node:rpc("anvil_mine", { "0x5" })
    assert.equal(25, head_of(node))
    ok, count = c:run_once()
    assert.same({ true, 26 }, { ok, count })           -- 10 orphaned, 10 replaced, 5 new, 1 record
    assert_chain_is_nodes(node, db)
    orphans = assert(db:select("evm_blocks", "WHERE orphaned = 1 AND number BETWEEN 11 AND 20 ORDER BY number, hash"))
    local flagged = {}
    for _, r in ipairs(orphans) do
      if r.hash == old[r.number] then
        flagged[#flagged + 1] = r.number
        assert.equal(block_of(node, r.number).hash, r.replaced_by)
      end
    end
    assert.same({ 11, 12, 13, 14, 15, 16, 17, 18, 19, 20 }, flagged)
    local n = db:query("SELECT COUNT(*) AS all_rows, SUM(orphaned) AS orphans FROM evm_blocks")[1]
    assert.same({ all_rows = 26 + 13, orphans = 13 }, n)
    rg = assert(db:select("evm_reorgs", "ORDER BY detected_at, depth"))
    assert.equal(2, #rg)
    assert.same({ 10, 20, 10 }, { rg[2].depth, rg[2].head_number, rg[2].common_ancestor })
  end)

  it("fails a reorg deeper than reorg_depth loudly and stores nothing", function()
    node = anvil.start{ chain_id = 1 }
    c = instance(node, db, { reorg_depth = 5 })
    node:rpc("anvil_mine", { "0xf" })                  -- blocks 1..15
    catch_up(c, node, db)
    local before = db:query("SELECT COUNT(*) AS n, SUM(orphaned) AS o FROM evm_blocks")[1]
    reorg(node, 10)
    node:rpc("anvil_mine", { "0x2" })
    local restore = logs.capture("error")
    local ok, err = c:run_once()
    local logged = logs.logged("reorg deeper than reorg_depth")
    restore()
    assert.is_false(ok)
    assert.equal("reorg deeper than reorg_depth (5): the node's blocks 10..15 differ from the stored ones and "
      .. "no common ancestor was found down to block 10; nothing was stored (raise the option reorg_depth "
      .. "to follow it)", err)
    assert.equal(1, #logged)
    assert.same({ "error", 10, 15, 5 }, { logged[1].level, logged[1].from, logged[1].to, logged[1].reorg_depth })
    assert.same(before, db:query("SELECT COUNT(*) AS n, SUM(orphaned) AS o FROM evm_blocks")[1])
    assert.equal(0, #assert(db:select("evm_reorgs")))
    -- with the bound raised, the next run follows it
    c:stop()
    c = instance(node, db, { reorg_depth = 64 })
    assert(c:run_once())
    assert_chain_is_nodes(node, db)
    assert.equal(10, db:query("SELECT SUM(orphaned) AS o FROM evm_blocks")[1].o)
  end)

  it("starts at the head by default and never leaves a gap behind a head that jumped", function()
    node = anvil.start{ chain_id = 1 }
    node:rpc("anvil_mine", { "0x64" })                 -- blocks 1..100
    c = instance(node, db, { start_block = -1, max_blocks = 7, confirmations = 2, batch_size = 3 })
    assert.same({ true, 1 }, { c:run_once() })
    assert.same({ number = 98, n = 1 }, db:query("SELECT MIN(number) AS number, COUNT(*) AS n FROM evm_blocks")[1])
    node:rpc("anvil_mine", { "0x14" })                 -- head 120: 20 new blocks, 7 a run
    assert.same({ true, 7 }, { c:run_once() })
    assert.same({ true, 7 }, { c:run_once() })
    assert.same({ true, 6 }, { c:run_once() })          -- up to 118 = head - confirmations
    assert.same({ true, 0 }, { c:run_once() })
    local r = db:query("SELECT MIN(number) AS lo, MAX(number) AS hi, COUNT(DISTINCT number) AS d, COUNT(*) AS n"
      .. " FROM evm_blocks WHERE orphaned = 0")[1]
    assert.same({ lo = 98, hi = 118, d = 21, n = 21 }, r)
    for _, row in ipairs(canonical(db)) do
      assert.equal(block_of(node, row.number).hash, row.hash)
    end
  end)

  it("stores a block of 10,000 transactions as one exact row", function()
    node = anvil.start{ chain_id = 1, no_mining = true, args = "--gas-limit 300000000" }
    local id = 0
    for a = 1, 10 do
      for k = 0, 999, 500 do
        local body = json.array()
        for i = 1, 500 do
          id = id + 1
          body[i] = { jsonrpc = "2.0", id = id, method = "eth_sendTransaction",
            params = { { from = node.accounts[a], to = node.accounts[a % 10 + 1], value = to_quantity(k + i),
              nonce = to_quantity(k + i - 1), gas = "0x5208" } } }
        end
        local res = assert(http.post(node.url, { json = body, timeout = 60 }))
        local out = assert(json.decode(res.body))
        assert.equal(500, #out)
        for _, e in ipairs(out) do assert(e.result, e.error and e.error.message) end
      end
    end
    assert.same({ pending = "0x2710", queued = "0x0" }, node:rpc("txpool_status"))
    node:rpc("evm_mine")
    c = instance(node, db, { batch_size = 2 })
    assert(c:run_once())
    local b = block_of(node, 1)
    assert.equal(10000, #b.transactions)
    local r = assert(db:select("evm_blocks", "WHERE number = 1"))[1]
    assert.same(expected_row(b), pick(r))
    assert.same({ 10000, 210000000 }, { r.tx_count, r.gas_used })
  end)

  it("backfills a block range exactly, window by window", function()
    node = anvil.start{ chain_id = 1 }
    for i = 1, 20 do node:send_eth(1 + i % 3, 5, i) end -- blocks with the transfers
    -- anvil answers a send before automining it, and under load puts two
    -- transfers in one block: wait for the pool to empty, then mine to 300
    wait_for("the transfers mined", function() return node:rpc("txpool_status").pending == "0x0" end)
    node:rpc("anvil_mine", { to_quantity(300 - head_of(node)) })
    assert.equal(300, head_of(node))
    c = instance(node, db, { batch_size = 7, backfill_step = 100 })
    -- a stored block the node no longer has at that number
    assert(db:upsert("evm_blocks", { { chain = "ethereum", chain_id = 1, number = 150, hash = "0xdead",
      parent_hash = "0xbeef", timestamp = 1, gas_used = 0, gas_limit = 1, tx_count = 0, orphaned = 0, seen_at = 1 } }))
    local plan = backfill.plan({ collector = c, from = 0 })
    assert.same({ 0, 301, 4 }, { plan.from, plan.to, #plan.windows }) -- to: the head + 1
    local st = backfill.wait(backfill.start({ collector = c, from = 0, parallel = 2 }))
    assert.same({ "done", 4, 0 }, { st.state, st.windows_done, st.windows_failed })
    assert_chain_is_nodes(node, db)
    local orphan = assert(db:select("evm_blocks", "WHERE orphaned = 1"))
    assert.equal(1, #orphan)
    assert.same({ 150, "0xdead", block_of(node, 150).hash }, { orphan[1].number, orphan[1].hash, orphan[1].replaced_by })
    -- covered: nothing planned again; a lost row is a gap, refetched alone
    assert.equal(0, #backfill.plan({ collector = c, from = 0, to = 301 }).windows)
    assert(db:exec("DELETE FROM evm_blocks WHERE number = 234") == 1)
    plan = backfill.plan({ collector = c, from = 0, to = 301 })
    assert.same({ 1, "gap", 200, 300 }, { #plan.windows, plan.windows[1].reason, plan.windows[1].from, plan.windows[1].to })
    st = backfill.wait(backfill.start({ collector = c, from = 0, to = 301 }))
    assert.same({ "done", 1 }, { st.state, st.windows_done })
    assert_chain_is_nodes(node, db)
    -- blocks the node does not have fail their window, saying which
    st = backfill.wait(backfill.start({ collector = c, from = 295, to = 310 }))
    assert.same({ "failed", 1 }, { st.state, st.windows_failed })
    assert.equal("block 301: the node has no such block (eth_getBlockByNumber returned null)", st.failed[1].error)
    assert.equal(301, db:query("SELECT COUNT(*) AS n FROM evm_blocks WHERE orphaned = 0")[1].n)
  end)
end)
