--- sluice.evm.mempool: the node's transaction pool -- txpool_status, and a
-- summary of txpool_content with exact gas-price percentiles.
--
-- What collectors/evm_mempool.lua is made of (its datasets' collect, its
-- classify, its tables), usable on its own too:
--
--   mempool.status(self) -> rows | {} (dataset "status"): one evm_mempool
--     row {ts, pending, queued} from txpool_status.
--   mempool.content(self) -> {table = rows} | {} (dataset "content"): one
--     batch of txpool_content and eth_feeHistory(1, "latest", []) (the base
--     fee the pending transactions face next); one evm_mempool_content row
--     (counts) and evm_mempool_gas rows (percentiles), see summarize.
--   Both disable their dataset (collector:disable_dataset) when the node
--   answers that it has no such method (unavailable), and store nothing;
--   any other failure raises (the run fails, with the node's message).
--   mempool.classify(self, res) -> "ignored" for a reply saying the method
--     is unavailable (the collector's classify: the breaker counts nothing
--     for it, nor is it retried), else nil (sluice.jsonrpc's verdict stands).
--   mempool.unavailable(e) -> whether error object e ({code, message}) says
--     the node has no such method: -32601 (method not found), -32004
--     (method not supported, EIP-1474), or a message naming a method as
--     not found / not supported / unsupported / does not exist / not
--     available / not allowed / not whitelisted (providers' wordings).
--   mempool.summarize(content, next_base_fee, percentiles) -> summary:
--     {pending, queued, senders, legacy, dynamic, metrics = {name = sorted
--     values}}; content: txpool_content's result ({pending = {sender =
--     {nonce = tx}}, queued = ...}); next_base_fee: decimal wei text or nil.
--     Metrics, over the pending transactions: max_fee (the bid per gas:
--     gasPrice of a legacy or EIP-2930 transaction, maxFeePerGas of an
--     EIP-1559 one -- and of every type that has it, blob and 7702
--     included); effective_price (what the transaction pays per gas in the
--     next block: gasPrice, or min(maxFeePerGas, base fee +
--     maxPriorityFeePerGas); only with a base fee); priority_fee
--     (maxPriorityFeePerGas, transactions that have it). A transaction with
--     neither gasPrice nor maxFeePerGas counts in pending but in no metric.
--   mempool.nearest_rank(sorted, p) -> the p-th percentile (0 <= p <= 100)
--     of a sorted list by the nearest-rank method: the value at rank
--     ceil(p / 100 × n) (rank 1 for p = 0), computed exactly; nil when the
--     list is empty.
--   mempool.check_percentiles(list) -> list | raises naming the problem.
--
-- Amounts are exact: decimal wei text through sluice.bignum (never a
-- double), gwei derived from it (sluice.evm.gwei). The module owns no
-- state; status and content yield (requests), the rest does not.
local sluice = require "sluice"
local json = require "sluice.json"
local jsonrpc = require "sluice.jsonrpc"
local bignum = require "sluice.bignum"
local evm = require "sluice.evm"

local _M = {}

_M.DEFAULT_PERCENTILES = { 10, 25, 50, 75, 90, 99 }
_M.METRICS = { "max_fee", "effective_price", "priority_fee" }

-- --- what a node without the method answers ----------------------------------

local UNAVAILABLE_CODES = { [-32601] = true, [-32004] = true }
local UNAVAILABLE_WORDS = { "not found", "not supported", "unsupported", "does not exist",
  "not available", "not allowed", "not whitelisted" }

function _M.unavailable(e)
  if type(e) ~= "table" then return false end
  if UNAVAILABLE_CODES[e.code] then return true end
  local msg = type(e.message) == "string" and e.message:lower() or ""
  if not msg:find("method", 1, true) then return false end
  for _, w in ipairs(UNAVAILABLE_WORDS) do
    if msg:find(w, 1, true) then return true end
  end
  return false
end

function _M.classify(_, res)
  local r = res:json()
  if type(r) ~= "table" or r.jsonrpc ~= "2.0" or type(r.error) ~= "table" then return nil end
  if _M.unavailable(r.error) then return "ignored" end
  return nil
end

-- --- percentiles -----------------------------------------------------------------

function _M.check_percentiles(list)
  if type(list) ~= "table" or #list == 0 then
    error("option 'percentiles' must be a non-empty list of numbers 0..100", 0)
  end
  for i, p in ipairs(list) do
    if type(p) ~= "number" or p ~= p or p < 0 or p > 100 then
      error("option 'percentiles': entry " .. i .. " must be a number 0..100, got "
        .. (type(p) == "number" and tostring(p) or type(p)), 0)
    end
  end
  return list
end

-- ceil(p × n / 100), at least 1, exactly (p as the text that reads back as
-- the same double: 99.9 is "99.9").
local function rank(p, n)
  local prod = bignum.mul(json.number(p), n)
  local q = bignum.div(prod, 100, 0)
  if bignum.cmp(bignum.mul(q, 100), prod) < 0 then q = bignum.add(q, 1) end
  local r = tonumber(q)
  if r < 1 then r = 1 end
  return r
end

function _M.nearest_rank(sorted, p)
  if #sorted == 0 then return nil end
  return sorted[rank(p, #sorted)]
end

-- --- the summary -----------------------------------------------------------------

local WIDTH = 78 -- digits of 2^256 - 1: padded to it, decimal text sorts as numbers
local ZEROS = string.rep("0", WIDTH)

local function padded(dec)
  return ZEROS:sub(1, WIDTH - #dec) .. dec
end

-- A transaction's fee field as decimal wei text, nil when absent; raises
-- (naming the transaction) on what is no quantity.
local function amount(tx, field)
  local v = tx[field]
  if v == nil or v == json.null then return nil end
  if type(v) ~= "string" or not v:match("^0[xX]%x+$") or #v:gsub("^0[xX]0*", "") > 64 then
    error("txpool_content: transaction " .. tostring(tx.hash) .. ": " .. field
      .. " is no uint256 quantity: " .. tostring(v):sub(1, 80), 0)
  end
  return bignum.from_hex(v)
end

local function min_of(a, b)
  return bignum.cmp(a, b) <= 0 and a or b
end

-- Sorts a list of decimal texts numerically, in place.
local function sort_amounts(list)
  for i, v in ipairs(list) do list[i] = padded(v) end
  table.sort(list)
  for i, v in ipairs(list) do list[i] = v:gsub("^0+(%d)", "%1") end
  return list
end

local function each_tx(pool, fn)
  if pool == nil or pool == json.null then return end
  if type(pool) ~= "table" then error("txpool_content: a pool is no object", 0) end
  for sender, txs in pairs(pool) do
    if type(txs) ~= "table" then error("txpool_content: sender " .. tostring(sender) .. " maps to no object", 0) end
    for _, tx in pairs(txs) do
      if type(tx) ~= "table" then
        error("txpool_content: a transaction of " .. tostring(sender) .. " is no object", 0)
      end
      fn(sender, tx)
    end
  end
end

function _M.summarize(content, next_base_fee, percentiles)
  if type(content) ~= "table" then error("txpool_content: the result is no object", 0) end
  local out = { pending = 0, queued = 0, senders = 0, legacy = 0, dynamic = 0 }
  local max_fee, effective, priority = {}, {}, {}
  local seen = {}
  each_tx(content.pending, function(sender, tx)
    out.pending = out.pending + 1
    if not seen[sender] then
      seen[sender] = true
      out.senders = out.senders + 1
    end
    local cap, tip = amount(tx, "maxFeePerGas"), amount(tx, "maxPriorityFeePerGas")
    if cap then
      out.dynamic = out.dynamic + 1
      max_fee[#max_fee + 1] = cap
      if tip then
        priority[#priority + 1] = tip
        if next_base_fee then effective[#effective + 1] = min_of(cap, bignum.add(next_base_fee, tip)) end
      end
    else
      local price = amount(tx, "gasPrice")
      if price then
        out.legacy = out.legacy + 1
        max_fee[#max_fee + 1] = price
        if next_base_fee then effective[#effective + 1] = price end
      end
    end
  end)
  each_tx(content.queued, function() out.queued = out.queued + 1 end)
  out.metrics = {
    max_fee = sort_amounts(max_fee),
    effective_price = next_base_fee and sort_amounts(effective) or nil,
    priority_fee = sort_amounts(priority),
  }
  out.percentiles = percentiles
  return out
end

-- --- the datasets ------------------------------------------------------------------

local function now_ms()
  return math.floor(sluice.time() * 1000)
end

-- The dataset gives up on a node without the method: disabled, nothing stored.
local function give_up(self, dataset, method, err)
  self:disable_dataset(dataset, "the node has no " .. method .. " (" .. tostring(err) .. ")")
  return {}
end

function _M.status(self)
  local r, err, kind, e = evm.rpc(self):call("txpool_status")
  if r == nil then
    if kind == "rpc" and _M.unavailable(e) then return give_up(self, "status", "txpool_status", err) end
    error(err, 0)
  end
  if type(r) ~= "table" or type(r.pending) ~= "string" or type(r.queued) ~= "string" then
    error("txpool_status: the result is no {pending, queued} object", 0)
  end
  return { evm.row(self, { ts = now_ms(), pending = jsonrpc.quantity(r.pending),
    queued = jsonrpc.quantity(r.queued) }) }
end

-- The next block's base fee from eth_feeHistory's entry: decimal wei text,
-- or nil when the node has none (no EIP-1559, no such method).
local function next_base_fee(entry)
  if not entry or entry.error then return nil end
  local fees = type(entry.result) == "table" and entry.result.baseFeePerGas
  local last = type(fees) == "table" and fees[#fees]
  if type(last) ~= "string" or not last:match("^0[xX]%x+$") then return nil end
  return bignum.from_hex(last)
end

function _M.content(self)
  local percentiles = _M.check_percentiles(self.options.percentiles)
  local entries, err, kind = evm.rpc(self):batch{
    { "txpool_content" },
    { "eth_feeHistory", { "0x1", "latest", json.empty_array } },
  }
  if kind == "too_large" then
    error("txpool_content: the answer is larger than max_body (" .. json.number(self.config.max_body or 64 * 2 ^ 20)
      .. " bytes; " .. tostring(err) .. "): a large pool -- raise the collector's max_body, or disable "
      .. "the content dataset (datasets = {content = {enabled = false}})", 0)
  end
  if not entries then error(err, 0) end
  local c = entries[1]
  if c.error then
    if c.kind == "rpc" and _M.unavailable({ code = c.code, message = c.error }) then
      return give_up(self, "content", "txpool_content", c.error)
    end
    error(c.error, 0)
  end
  local base = next_base_fee(entries[2])
  local s = _M.summarize(c.result, base, percentiles)
  local ts = now_ms()
  local gas = {}
  for _, metric in ipairs(_M.METRICS) do
    local sorted = s.metrics[metric]
    if sorted and #sorted > 0 then
      for _, p in ipairs(percentiles) do
        local v = _M.nearest_rank(sorted, p)
        gas[#gas + 1] = evm.row(self, { ts = ts, metric = metric, percentile = p, txs = #sorted,
          value_wei = v, value_gwei = evm.gwei(v) })
      end
    end
  end
  return {
    evm_mempool_content = { evm.row(self, { ts = ts, pending = s.pending, queued = s.queued,
      senders = s.senders, legacy = s.legacy, dynamic = s.dynamic,
      next_base_fee_wei = base, next_base_fee_gwei = base and evm.gwei(base) or nil }) },
    evm_mempool_gas = gas,
  }
end

return _M
