--- evm_mempool: an EVM node's transaction pool -- txpool_status (pending,
-- queued) every 15 s and a summary of txpool_content (counts, and
-- nearest-rank percentiles of the pending transactions' fee bids, exact in
-- wei) every 60 s. A node without the txpool methods (most hosted
-- providers) has the dataset disabled once, with the reason, and no breaker
-- failure. sluice.evm.mempool has the logic; docs/onchain.md the details.
--
--   { use = "evm_mempool", chain = "ethereum", rpc_url = collector.env("ETH_RPC"),
--     percentiles = { 10, 50, 90 }, max_body = 64 * 1024 * 1024,
--     datasets = { content = { interval = 30 } } }
local evm = require "sluice.evm"
local mempool = require "sluice.evm.mempool"

local COMMON = { chain = "text", chain_id = "integer", ts = "integer" }

local function columns(own)
  local out = {}
  for k, v in pairs(COMMON) do out[k] = v end
  for k, v in pairs(own) do out[k] = v end
  return out
end

return evm.define{
  name = "evm_mempool",
  description = "EVM node transaction pool: txpool_status and a txpool_content gas-price summary",
  -- txpool_content of a busy mainnet node is tens of MB: a longer answer
  -- fails as too_large (not retried, no breaker failure)
  max_body = 32 * 1024 * 1024,
  timeout = 30,
  options = {
    -- the percentiles of evm_mempool_gas (nearest rank), each 0..100
    percentiles = mempool.DEFAULT_PERCENTILES,
  },
  tables = {
    evm_mempool = {
      columns = columns({ pending = "integer", queued = "integer" }),
      key = { "chain", "ts" },
    },
    evm_mempool_content = {
      columns = columns({ pending = "integer", queued = "integer", senders = "integer",
        legacy = "integer", dynamic = "integer", next_base_fee_wei = "uint256",
        next_base_fee_gwei = "decimal" }),
      key = { "chain", "ts" },
    },
    evm_mempool_gas = {
      columns = columns({ metric = "text", percentile = "real", txs = "integer",
        value_wei = "uint256", value_gwei = "decimal" }),
      key = { "chain", "ts", "metric", "percentile" },
    },
  },
  classify = mempool.classify,
  init = function(self)
    local ok, err = pcall(mempool.check_percentiles, self.options.percentiles)
    if not ok then error("collector '" .. self.name .. "': " .. tostring(err), 0) end
  end,
  datasets = {
    status = { interval = 15, table = "evm_mempool", collect = mempool.status,
      description = "txpool_status: pending and queued transactions" },
    content = { interval = 60, collect = mempool.content,
      description = "txpool_content: counts and fee-bid percentiles of the pending transactions" },
  },
}
