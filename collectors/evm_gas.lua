--- evm_gas: gas prices and fee history of an EVM chain, one JSON-RPC batch
-- per collection (docs/onchain.md, "evm_gas").
--
--   { use = "evm_gas", chain = "arbitrum", rpc_url = collector.env("ARB_RPC"), name = "gas_arbitrum" }
--
-- Each run sends eth_gasPrice, eth_maxPriorityFeePerGas and
-- eth_feeHistory(block_count, "latest", reward_percentiles) in one batch
-- and stores one evm_gas row (key chain, ts) and one evm_fee_history row
-- per block of the window (key chain, block; a block seen again, reorged
-- or not, is upserted). Wei amounts are uint256 digits, gwei decimals
-- derived from them exactly (sluice.evm), ratios the node's own numbers.
-- A node without eth_maxPriorityFeePerGas (method not found) leaves its
-- columns null, is logged once and not asked again; any other failure of
-- the batch, of eth_gasPrice or of eth_feeHistory fails the run with the
-- node's error and stores nothing.
--
-- L2s (a preset with l2, or any chain with the option l1_chain) carry
-- l1_chain, l1_gas_price_wei (eth_gasPrice of the newest evm_gas row of the
-- L1 chain in the same store, at most l1_max_age seconds older than this
-- row) and savings_percent = (1 - gas_price / l1_gas_price) * 100, exact,
-- truncated toward zero to 4 decimals (negative when the L2 is dearer);
-- null when there is no such row (or its gas price is 0).
--
-- The module owns each instance's state (whether the node lacks
-- eth_maxPriorityFeePerGas) in a table weak by instance. collect yields.
local sluice = require "sluice"
local json = require "sluice.json"
local bignum = require "sluice.bignum"
local jsonrpc = require "sluice.jsonrpc"
local options = require "sluice.options"
local evm = require "sluice.evm"

-- per instance: { no_tip = true once eth_maxPriorityFeePerGas is known
-- missing, tip_logged = the last error logged about it }
local state = setmetatable({}, { __mode = "k" })

local SAVINGS_PLACES = 4

-- Codes meaning the node does not have the method at all.
local NO_METHOD = { [-32601] = true, [-32004] = true }

local GAS_COLUMNS = {
  chain = "text", chain_id = "integer", ts = "integer", block = "integer",
  gas_price_wei = "uint256", gas_price_gwei = "decimal",
  max_priority_fee_wei = "uint256", max_priority_fee_gwei = "decimal",
  base_fee_wei = "uint256", base_fee_gwei = "decimal",
  next_base_fee_wei = "uint256", next_base_fee_gwei = "decimal",
  gas_used_ratio = "decimal", reward_percentiles = "json", rewards_wei = "json",
  blob_base_fee_wei = "uint256", next_blob_base_fee_wei = "uint256", blob_gas_used_ratio = "decimal",
  l1_chain = "text", l1_gas_price_wei = "uint256", savings_percent = "decimal",
}

local HISTORY_COLUMNS = {
  chain = "text", chain_id = "integer", block = "integer", ts = "integer",
  base_fee_wei = "uint256", base_fee_gwei = "decimal", gas_used_ratio = "decimal",
  reward_percentiles = "json", rewards_wei = "json",
  blob_base_fee_wei = "uint256", blob_gas_used_ratio = "decimal",
}

-- The collector's own checks of its options (a type says too little).
local function check_options(o)
  local n = o.block_count
  if n ~= math.floor(n) or n < 1 or n > 1024 then
    return "option 'block_count' must be a whole number from 1 to 1024, got " .. options.value(n)
  end
  local last = -1
  for i, p in ipairs(o.reward_percentiles) do
    if type(p) ~= "number" or p ~= p or p < 0 or p > 100 or p <= last then
      return "option 'reward_percentiles' must be increasing numbers from 0 to 100, got "
        .. options.value(p) .. " at [" .. i .. "]"
    end
    last = p
  end
  if #o.reward_percentiles > 100 then
    return "option 'reward_percentiles' takes at most 100 percentiles"
  end
  if o.l1_chain ~= "" and not o.l1_chain:match("^[%a][%w_]*$") then
    return "option 'l1_chain' must be a chain's name (letters, digits, _), got " .. options.value(o.l1_chain)
  end
  if not (o.l1_max_age > 0 and o.l1_max_age < math.huge) then
    return "option 'l1_max_age' must be a number of seconds > 0, got " .. options.value(o.l1_max_age)
  end
end

-- The decimal digits of wei quantity v (a hex string) from field `what` of
-- method's result; raises naming it when v is none.
local function wei(method, what, v)
  if type(v) ~= "string" or not v:match("^0[xX]%x+$") then
    error(method .. ": " .. what .. " is no hex quantity: " .. options.value(v), 0)
  end
  return bignum.from_hex(v)
end

-- A ratio as the node wrote it (decoded exactly by sluice.json), as
-- decimal text.
local function ratio(method, what, v)
  local r = (type(v) == "number" or json.numeral_text(v)) and bignum.parse(v)
  if not r then error(method .. ": " .. what .. " is no number: " .. options.value(v), 0) end
  return r
end

local function gwei_or_nil(w)
  return w and bignum.scale(w, -9) or nil
end

-- A list of what the node sent (or nil for absent / null).
local function list(v)
  if type(v) == "table" and v ~= json.null then return v end
  return nil
end

-- The fee history result, read: { oldest, n, base_fees, ratios, rewards,
-- blob_fees, blob_ratios } (each a list of decimal text; rewards a list of
-- lists; absent fields nil). Raises for what is not a fee history.
local function read_history(r)
  local M = "eth_feeHistory"
  if type(r) ~= "table" or r == json.null then error(M .. ": the result is no object: " .. options.value(r), 0) end
  local ratios_in = list(r.gasUsedRatio)
  local base_in = list(r.baseFeePerGas)
  if not ratios_in or not base_in then
    error(M .. ": the result lacks gasUsedRatio or baseFeePerGas", 0)
  end
  local n = #ratios_in
  if n == 0 then error(M .. ": the node returned no blocks", 0) end
  if #base_in < n then
    error(M .. ": baseFeePerGas has " .. #base_in .. " entries for " .. n .. " blocks", 0)
  end
  local ok, oldest = pcall(jsonrpc.quantity, r.oldestBlock)
  if not ok or type(oldest) ~= "number" then
    error(M .. ": oldestBlock is no block number: " .. options.value(r.oldestBlock), 0)
  end
  local h = { oldest = oldest, n = n, base_fees = {}, ratios = {} }
  for i = 1, #base_in do h.base_fees[i] = wei(M, "baseFeePerGas[" .. i .. "]", base_in[i]) end
  for i = 1, n do h.ratios[i] = ratio(M, "gasUsedRatio[" .. i .. "]", ratios_in[i]) end
  local rewards_in = list(r.reward)
  if rewards_in then
    h.rewards = {}
    for i = 1, n do
      local row = list(rewards_in[i])
      if not row then error(M .. ": reward[" .. i .. "] is no list", 0) end
      local out = json.array()
      for j, v in ipairs(row) do out[j] = wei(M, "reward[" .. i .. "][" .. j .. "]", v) end
      h.rewards[i] = out
    end
  end
  local blob_in, blob_ratio_in = list(r.baseFeePerBlobGas), list(r.blobGasUsedRatio)
  if blob_in then
    h.blob_fees = {}
    for i, v in ipairs(blob_in) do h.blob_fees[i] = wei(M, "baseFeePerBlobGas[" .. i .. "]", v) end
  end
  if blob_ratio_in then
    h.blob_ratios = {}
    for i, v in ipairs(blob_ratio_in) do h.blob_ratios[i] = ratio(M, "blobGasUsedRatio[" .. i .. "]", v) end
  end
  return h
end

-- The L1 chain whose gas price an L2 row is compared with, or nil.
local function l1_of(self)
  local chain = evm.chain(self)
  local l1 = self.options.l1_chain
  if l1 == "" then l1 = chain.l2 and chain.l1 or nil end
  local preset = l1 and evm.chains[evm.aliases[l1] or l1]
  l1 = preset and preset.name or l1
  if l1 == chain.name then return nil end
  return l1
end

-- l1_gas_price_wei, savings_percent against the newest evm_gas row of chain
-- l1 in the store, at most max_age seconds older than ts; nil when none.
local function savings(self, l1, ts, gas_price)
  if not self.store then return nil end
  local rows, err = self.store:query("SELECT gas_price_wei FROM evm_gas WHERE chain = ? AND ts >= ? "
    .. "AND ts <= ? ORDER BY ts DESC LIMIT 1", l1, ts - math.floor(self.options.l1_max_age * 1000), ts)
  if not rows then error("reading the L1 gas price: " .. tostring(err), 0) end
  local l1_price = rows[1] and rows[1].gas_price_wei
  if not l1_price then return nil end
  if bignum.cmp(l1_price, 0) == 0 then return l1_price, nil end
  -- (1 - l2 / l1) * 100 = (l1 - l2) * 100 / l1
  return l1_price, bignum.div(bignum.mul(bignum.sub(l1_price, gas_price), 100), l1_price, SAVINGS_PLACES)
end

-- The batch's eth_maxPriorityFeePerGas entry: the tip in wei, or nil
-- (logged once per distinct error; a missing method is not asked again).
local function tip_of(self, st, entry)
  if not entry then return nil end
  if entry.result ~= nil then return wei("eth_maxPriorityFeePerGas", "the result", entry.result) end
  if entry.kind == "rpc" and NO_METHOD[entry.code] then st.no_tip = true end
  if st.tip_logged ~= entry.error then
    st.tip_logged = entry.error
    self.log.warning("eth_maxPriorityFeePerGas unavailable: max_priority_fee columns stay null"
      .. (st.no_tip and " (not asked again)" or ""), { error = entry.error })
  end
  return nil
end

local function collect(self)
  local st = state[self]
  if not st then
    st = {}
    state[self] = st
  end
  local o = self.options
  local percentiles = json.array()
  for i, p in ipairs(o.reward_percentiles) do percentiles[i] = p end
  local calls = {
    { "eth_gasPrice" },
    { "eth_feeHistory", { jsonrpc.to_quantity(o.block_count), "latest", percentiles } },
  }
  if not st.no_tip then calls[3] = { "eth_maxPriorityFeePerGas" } end
  local out, err = evm.rpc(self):batch(calls)
  if not out then error(err, 0) end
  for i = 1, 2 do
    if out[i].error then error(out[i].error, 0) end
  end
  local ts = math.floor(sluice.time() * 1000)
  local gas_price = wei("eth_gasPrice", "the result", out[1].result)
  local h = read_history(out[2].result)
  local tip = tip_of(self, st, out[3])
  local n = h.n
  local newest = h.oldest + n - 1
  local pjson = #percentiles > 0 and percentiles or json.empty_array
  local history = {}
  for i = 1, n do
    history[i] = evm.row(self, {
      block = h.oldest + i - 1, ts = ts,
      base_fee_wei = h.base_fees[i], base_fee_gwei = bignum.scale(h.base_fees[i], -9),
      gas_used_ratio = h.ratios[i], reward_percentiles = pjson, rewards_wei = h.rewards and h.rewards[i],
      blob_base_fee_wei = h.blob_fees and h.blob_fees[i],
      blob_gas_used_ratio = h.blob_ratios and h.blob_ratios[i],
    })
  end
  local gas = evm.row(self, {
    ts = ts, block = newest,
    gas_price_wei = gas_price, gas_price_gwei = bignum.scale(gas_price, -9),
    max_priority_fee_wei = tip, max_priority_fee_gwei = gwei_or_nil(tip),
    base_fee_wei = h.base_fees[n], base_fee_gwei = bignum.scale(h.base_fees[n], -9),
    next_base_fee_wei = h.base_fees[n + 1], next_base_fee_gwei = gwei_or_nil(h.base_fees[n + 1]),
    gas_used_ratio = h.ratios[n], reward_percentiles = pjson, rewards_wei = h.rewards and h.rewards[n],
    blob_base_fee_wei = h.blob_fees and h.blob_fees[n],
    next_blob_base_fee_wei = h.blob_fees and h.blob_fees[n + 1],
    blob_gas_used_ratio = h.blob_ratios and h.blob_ratios[n],
  })
  local l1 = l1_of(self)
  if l1 then
    gas.l1_chain = l1
    gas.l1_gas_price_wei, gas.savings_percent = savings(self, l1, ts, gas_price)
  end
  return { evm_gas = { gas }, evm_fee_history = history }
end

return evm.define({
  name = "evm_gas",
  description = "EVM gas prices and fee history (eth_gasPrice, eth_maxPriorityFeePerGas, eth_feeHistory)",
  interval = 15,
  jitter = 0.05,
  tables = {
    evm_gas = { columns = GAS_COLUMNS, key = { "chain", "ts" } },
    evm_fee_history = { columns = HISTORY_COLUMNS, key = { "chain", "block" } },
  },
  options = {
    block_count = 5,
    reward_percentiles = { 10, 25, 50, 75, 90 },
    l1_chain = "",
    l1_max_age = 600,
  },
  collect = collect,
}, { check = check_options })
