--- sluice.evm.blocks: the logic of the evm_blocks collector -- following a
-- chain's head block by block through reorgs, and backfilling block ranges.
--
--   local blocks = require "sluice.evm.blocks"
--   blocks.TABLES                       -- evm_blocks and evm_reorgs, as collector.define takes them
--   blocks.check(self)                  -- raises on a bad option (init and backfill call it)
--   blocks.follow(self) -> {evm_blocks = rows, evm_reorgs = rows} | nil
--   blocks.backfill(self, from, to) -> {evm_blocks = rows}
--   blocks.head(self) -> the node's head block number (eth_blockNumber)
--   blocks.row(self, block, seen_at) -> one evm_blocks row from an
--     eth_getBlockByNumber(n, false) result
--
-- self is an evm_blocks instance built by sluice.evm.define (its rpc object,
-- chain and chain id come from the kit); its options: batch_size (calls per
-- JSON-RPC batch), max_blocks (new blocks per run), confirmations (blocks
-- the head must be ahead of a block before it is stored), reorg_depth
-- (orphaned blocks one reorg may have at most) and start_block (where the
-- very first run starts: a block number, or negative, counting back from the
-- head: -1 is the head itself).
--
-- Following. A run reads the stored canonical tip (orphaned = 0, the
-- highest number of the instance's chain), asks the node for its head and
-- fetches, in batches of eth_getBlockByNumber(n, false), the tip again and
-- the blocks after it up to head - confirmations, at most max_blocks of
-- them: a head that jumped further is caught up over the next runs, so no
-- block is ever skipped. Each block's parent hash is checked against the
-- block before it (stored, or fetched by this run). A mismatch -- or the
-- node's block at the stored tip having another hash -- is a reorg: the run
-- walks back, fetching the node's blocks, to the common ancestor (the
-- highest number where the node's hash is the stored one), marks the stored
-- blocks above it orphaned (orphaned = 1, replaced_by = the node's hash at
-- that number; the rows are kept) and stores the node's blocks instead.
-- The orphan rows and the new ones are one list for evm_blocks, so one
-- upsert, one transaction: a crash leaves either the old chain or the new
-- one. A reorg deeper than reorg_depth fails the run (logged at error
-- level, naming the blocks and the option) and stores nothing; so does a
-- node whose chain changed again during the walk (the next run retries).
-- Blocks a run fetched but did not store because a reorg replaced them
-- within the run are dropped, not recorded as orphans: they were never in
-- the store.
--
-- Backfill. A window [from, to) is fetched in batches; a block the node
-- does not have (null) fails the window, and so does a window whose blocks
-- do not chain (the node reorged while it was fetched). Stored canonical
-- blocks of the window whose hash is not the node's are returned orphaned
-- (replaced_by the node's), in the window's one transaction, so a backfill
-- over a range where the follower missed a reorg leaves one canonical row
-- per number.
--
-- The module owns no state; every call yields (JSON-RPC requests): call it
-- in a task (collect, backfill).
local sluice = require "sluice"
local json = require "sluice.json"
local jsonrpc = require "sluice.jsonrpc"
local evm = require "sluice.evm"

local _M = {}

local quantity, to_quantity = jsonrpc.quantity, jsonrpc.to_quantity
local null = json.null
local floor, min, max = math.floor, math.min, math.max

_M.TABLES = {
  evm_blocks = {
    columns = {
      chain = "text", chain_id = "integer", number = "integer", hash = "text",
      parent_hash = "text", timestamp = "integer", miner = "text",
      gas_used = "integer", gas_limit = "integer", base_fee_wei = "uint256",
      tx_count = "integer", size = "integer", blob_gas_used = "integer",
      excess_blob_gas = "integer", orphaned = "integer", replaced_by = "text",
      seen_at = "integer",
    },
    key = { "chain", "number", "hash" },
    required = { "chain_id", "parent_hash", "timestamp", "gas_used", "gas_limit", "tx_count", "orphaned",
      "seen_at" },
  },
  evm_reorgs = {
    columns = {
      chain = "text", chain_id = "integer", detected_at = "integer", depth = "integer",
      old_head = "text", new_head = "text", head_number = "integer",
      common_ancestor = "integer", common_ancestor_hash = "text",
    },
    key = { "chain", "old_head", "new_head" },
    required = { "chain_id", "detected_at", "depth", "head_number", "common_ancestor" },
  },
}

local TWO53 = 9007199254740992

local function whole(v, lo)
  return type(v) == "number" and v % 1 == 0 and v >= lo and v <= TWO53
end

--- check(self): raises "collector 'x': option 'y' must be ..." on a bad
-- option value (the types are checked at load; this checks the ranges).
function _M.check(self)
  local o = self.options
  local function need(name, ok, what)
    if not ok then
      error("collector '" .. self.name .. "': option '" .. name .. "' must be " .. what .. ", got "
        .. tostring(o[name]), 0)
    end
  end
  need("batch_size", whole(o.batch_size, 1) and o.batch_size <= 10000, "an integer from 1 to 10000")
  need("max_blocks", whole(o.max_blocks, 1), "an integer >= 1")
  need("confirmations", whole(o.confirmations, 0), "an integer >= 0")
  need("reorg_depth", whole(o.reorg_depth, 1), "an integer >= 1")
  need("start_block", type(o.start_block) == "number" and o.start_block % 1 == 0
    and math.abs(o.start_block) <= TWO53, "an integer (a block number, or negative: from the head, -1 the head)")
end

-- --- the node -----------------------------------------------------------------

--- head(self) -> the node's latest block number.
function _M.head(self)
  local h, err = evm.rpc(self):call("eth_blockNumber")
  if h == nil then error("eth_blockNumber: " .. tostring(err), 0) end
  local ok, n = pcall(quantity, h)
  if not ok or type(n) ~= "number" then
    error("eth_blockNumber: the node answered " .. tostring(h) .. ", not a block number", 0)
  end
  return n
end

local function blk(n) return string.format("%d", n) end

-- The node's blocks at the given numbers (a list), in JSON-RPC batches of
-- batch_size -> {number = block}. A null block is nil in the result when
-- allow_null, else an error naming it.
local function fetch(self, numbers, allow_null)
  local rpc = evm.rpc(self)
  local size = self.options.batch_size
  local out = {}
  for i = 1, #numbers, size do
    local calls = {}
    for j = i, min(i + size - 1, #numbers) do
      calls[#calls + 1] = { "eth_getBlockByNumber", { to_quantity(numbers[j]), false } }
    end
    local entries, err = rpc:batch(calls)
    if not entries then
      error("eth_getBlockByNumber " .. blk(numbers[i]) .. ".." .. blk(numbers[i + #calls - 1]) .. ": "
        .. tostring(err), 0)
    end
    for k, e in ipairs(entries) do
      local n = numbers[i + k - 1]
      if e.error then error("block " .. blk(n) .. ": " .. e.error, 0) end
      local b = e.result
      if b == null or b == nil then
        if not allow_null then
          error("block " .. blk(n) .. ": the node has no such block (eth_getBlockByNumber returned null)", 0)
        end
      elseif type(b) ~= "table" or type(b.hash) ~= "string" or type(b.parentHash) ~= "string"
        or type(b.number) ~= "string" then
        error("block " .. blk(n) .. ": the node's answer is not a block", 0)
      else
        local ok, got = pcall(quantity, b.number)
        if not ok or got ~= n then
          error("block " .. blk(n) .. ": the node answered block " .. tostring(b.number), 0)
        end
        out[n] = b
      end
    end
  end
  return out
end

local function q(b, field, n)
  local v = b[field]
  if v == nil or v == null then return nil end
  local ok, r = pcall(quantity, v)
  if not ok then
    error("block " .. blk(n) .. ": field " .. field .. " is no hex quantity: " .. tostring(v):sub(1, 80), 0)
  end
  return r
end

--- row(self, block, seen_at) -> the evm_blocks row of a block as
-- eth_getBlockByNumber(n, false) returns it (canonical: orphaned = 0).
function _M.row(self, b, seen_at)
  local n = quantity(b.number)
  local txs = b.transactions
  if type(txs) ~= "table" then error("block " .. blk(n) .. ": no transactions list", 0) end
  local fee = b.baseFeePerGas
  return evm.row(self, {
    number = n, hash = b.hash, parent_hash = b.parentHash, timestamp = q(b, "timestamp", n),
    miner = type(b.miner) == "string" and b.miner or nil,
    gas_used = q(b, "gasUsed", n), gas_limit = q(b, "gasLimit", n),
    -- uint256 takes the hex quantity as it is
    base_fee_wei = type(fee) == "string" and fee or nil,
    tx_count = #txs, size = q(b, "size", n),
    blob_gas_used = q(b, "blobGasUsed", n), excess_blob_gas = q(b, "excessBlobGas", n),
    orphaned = 0, replaced_by = nil, seen_at = seen_at,
  })
end

-- --- the store ------------------------------------------------------------------

local function chain_name(self) return evm.chain(self).name end

-- The stored canonical tip {number, hash} of the instance's chain, or nil.
local function stored_tip(self)
  local rows = assert(self.store:query("SELECT number, hash FROM evm_blocks WHERE chain = ? AND orphaned = 0"
    .. " ORDER BY number DESC LIMIT 1", chain_name(self)))
  return rows[1]
end

-- The stored canonical rows at numbers [lo, hi] -> {number = {row, ...}}.
local function stored_rows(self, lo, hi)
  local out = {}
  for _, r in ipairs(assert(self.store:select("evm_blocks",
    "WHERE chain = ? AND number >= ? AND number <= ? AND orphaned = 0", chain_name(self), lo, hi))) do
    local n = tonumber(r.number)
    out[n] = out[n] or {}
    table.insert(out[n], r)
  end
  return out
end

-- A stored row marked orphaned, replaced by hash.
local function orphan_of(r, by)
  local o = {}
  for k, v in pairs(r) do o[k] = v end
  o.orphaned, o.replaced_by = 1, by
  return o
end

-- --- following ---------------------------------------------------------------------

local function now_ms() return floor(sluice.time() * 1000) end

-- A run's view of the canonical chain: the stored rows (read on demand)
-- under the blocks this run will store.
local View = {}
View.__index = View

local function view_new(self)
  return setmetatable({ self = self, pending = {}, stored = {}, read = {} }, View)
end

-- The stored canonical rows at n (a list, maybe empty).
function View:stored_at(n)
  if not self.read[n] then
    local lo = max(0, n - self.self.options.batch_size + 1)
    local got = stored_rows(self.self, lo, n)
    for k = lo, n do
      if not self.read[k] then
        self.read[k] = true
        self.stored[k] = got[k] or {}
      end
    end
  end
  return self.stored[n]
end

-- The hash of the canonical block at n as this run sees it, or nil.
function View:hash(n)
  local p = self.pending[n]
  if p then return p.hash end
  local s = self:stored_at(n)
  return s[1] and s[1].hash
end

-- Walks back from m, where the run's view and the node disagree, to the
-- common ancestor; node holds the node's blocks fetched so far (more are
-- added). Replaces the view's blocks above the ancestor with the node's
-- and returns the reorg's record and the orphan rows.
local function walk_back(self, view, node, m, seen_at)
  local o = self.options
  local floor_n = max(0, m - o.reorg_depth)
  local ancestor
  local cur = m
  while true do
    if not node[cur] then
      local lo = max(floor_n, cur - o.batch_size + 1)
      local want = {}
      for k = cur, lo, -1 do
        if not node[k] then want[#want + 1] = k end
      end
      for k, b in pairs(fetch(self, want, false)) do node[k] = b end
    end
    local mine = view:hash(cur)
    if mine == nil then
      -- below anything stored: nothing further down to compare or orphan
      ancestor = cur
      break
    end
    if node[cur].hash == mine then
      ancestor = cur
      break
    end
    if cur == floor_n then
      local msg = string.format("reorg deeper than reorg_depth (%d): the node's blocks %s..%s differ from the "
        .. "stored ones and no common ancestor was found down to block %s; nothing was stored (raise the "
        .. "option reorg_depth to follow it)", o.reorg_depth, blk(floor_n), blk(m), blk(floor_n))
      self.log.error("reorg deeper than reorg_depth", { chain = chain_name(self), from = floor_n, to = m,
        reorg_depth = o.reorg_depth })
      error(msg, 0)
    end
    cur = cur - 1
  end
  -- the node's blocks above the ancestor must chain: else it reorged again
  for k = ancestor + 1, m + 1 do
    if node[k] and node[k].parentHash ~= node[k - 1].hash then
      error("the node's chain changed during the walk back from block " .. blk(m) .. " (block " .. blk(k)
        .. "'s parent is not block " .. blk(k - 1) .. "); nothing was stored, the next run retries", 0)
    end
  end
  local orphans = {}
  local old_head = view:hash(m)
  for k = ancestor + 1, m do
    local new_hash = node[k].hash
    for _, r in ipairs(view:stored_at(k)) do
      if r.hash ~= new_hash then orphans[#orphans + 1] = orphan_of(r, new_hash) end
    end
    view.stored[k] = {}
    view.pending[k] = _M.row(self, node[k], seen_at)
  end
  local reorg = evm.row(self, {
    detected_at = seen_at, depth = m - ancestor, old_head = old_head, new_head = node[m].hash,
    head_number = m, common_ancestor = ancestor,
    common_ancestor_hash = node[ancestor] and node[ancestor].hash or view:hash(ancestor),
  })
  self.log.warning("reorg", { chain = chain_name(self), depth = m - ancestor, head_number = m,
    common_ancestor = ancestor, old_head = old_head, new_head = node[m].hash })
  return reorg, orphans
end

--- follow(self) -> {evm_blocks = rows, evm_reorgs = rows}, or nil when
-- there is nothing new. See the header.
function _M.follow(self)
  if not self.store then error("collector '" .. self.name .. "' follows the head into its store: it has none", 0) end
  local o = self.options
  local head = _M.head(self)
  local target = head - o.confirmations
  local tip = stored_tip(self)
  local first
  if tip then
    first = tonumber(tip.number) + 1
  elseif o.start_block >= 0 then
    first = o.start_block
  else
    first = max(0, target + o.start_block + 1)
  end
  local last = min(target, first + o.max_blocks - 1)
  local numbers = {}
  local check = tip and tonumber(tip.number) <= head and tonumber(tip.number) or nil
  if check then numbers[1] = check end
  for n = first, last do numbers[#numbers + 1] = n end
  if #numbers == 0 then return nil end
  local seen_at = now_ms()
  local node = fetch(self, numbers, false)
  local view = view_new(self)
  local orphans, reorgs = {}, {}
  local function reorg_at(m)
    local r, orph = walk_back(self, view, node, m, seen_at)
    reorgs[#reorgs + 1] = r
    for _, x in ipairs(orph) do orphans[#orphans + 1] = x end
  end
  if check and node[check] and node[check].hash ~= view:hash(check) then
    reorg_at(check) -- the stored tip is no longer the node's block there
  end
  for n = first, last do
    local b = node[n]
    local parent = n > 0 and view:hash(n - 1) or nil
    if parent and b.parentHash ~= parent then reorg_at(n - 1) end
    view.pending[n] = _M.row(self, b, seen_at)
  end
  local rows = orphans
  local nums = {}
  for n in pairs(view.pending) do nums[#nums + 1] = n end
  table.sort(nums)
  for _, n in ipairs(nums) do rows[#rows + 1] = view.pending[n] end
  if #rows == 0 and #reorgs == 0 then return nil end
  return { evm_blocks = rows, evm_reorgs = reorgs }
end

-- --- backfill ------------------------------------------------------------------------

--- backfill(self, from, to) -> {evm_blocks = rows}: the blocks [from, to),
-- and the stored canonical ones they replace, orphaned. See the header.
function _M.backfill(self, from, to)
  _M.check(self)
  local numbers = {}
  for n = from, to - 1 do numbers[#numbers + 1] = n end
  local node = fetch(self, numbers, false)
  local seen_at = now_ms()
  local rows = {}
  for n = from, to - 1 do
    local b = node[n]
    if n > from and b.parentHash ~= node[n - 1].hash then
      error("block " .. blk(n) .. "'s parent hash is not block " .. blk(n - 1) .. "'s: the node's chain changed"
        .. " while the window was fetched; the window is retried by the next run", 0)
    end
    rows[#rows + 1] = _M.row(self, b, seen_at)
  end
  -- (no yield from here to the window's commit: what is read is current)
  if self.store then
    local stored = stored_rows(self, from, to - 1)
    for n = from, to - 1 do
      for _, r in ipairs(stored[n] or {}) do
        if r.hash ~= node[n].hash then rows[#rows + 1] = orphan_of(r, node[n].hash) end
      end
    end
  end
  return { evm_blocks = rows }
end

return _M
