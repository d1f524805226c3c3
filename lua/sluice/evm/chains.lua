--- sluice.evm.chains: the EVM chain presets sluice knows by name.
--
-- One record per chain: name (what the `chain` option and every row's
-- `chain` column say), chain_id (what the node must answer to eth_chainId),
-- title, l2 (true for a network that settles on another), l1 (the chain it
-- settles on, for savings against L1), native (the currency gas is paid
-- in), block_time (typical seconds between blocks) and rpc_url (a public
-- endpoint the chain's own documentation gives, used when the configuration
-- names none: keyless and rate limited, fine for a few calls a second,
-- not for backfills). Polygon PoS counts as an L2 as the reference treats
-- it (a sidechain checkpointed on Ethereum). aliases maps other spellings
-- to a preset's name. The tables are the module's: read them, never
-- write them (sluice.evm hands out copies). Nothing here yields.
local _M = {}

local PRESETS = {
  ethereum = { chain_id = 1, title = "Ethereum", l2 = false, native = "ETH", block_time = 12,
    -- ethereum.org lists PublicNode among its keyless providers
    rpc_url = "https://ethereum-rpc.publicnode.com" },
  arbitrum = { chain_id = 42161, title = "Arbitrum One", l2 = true, l1 = "ethereum", native = "ETH",
    block_time = 0.25, rpc_url = "https://arb1.arbitrum.io/rpc" },
  optimism = { chain_id = 10, title = "OP Mainnet", l2 = true, l1 = "ethereum", native = "ETH",
    block_time = 2, rpc_url = "https://mainnet.optimism.io" },
  base = { chain_id = 8453, title = "Base", l2 = true, l1 = "ethereum", native = "ETH",
    block_time = 2, rpc_url = "https://mainnet.base.org" },
  polygon = { chain_id = 137, title = "Polygon PoS", l2 = true, l1 = "ethereum", native = "POL",
    block_time = 2, rpc_url = "https://polygon-rpc.com" },
  zksync = { chain_id = 324, title = "zkSync Era", l2 = true, l1 = "ethereum", native = "ETH",
    block_time = 1, rpc_url = "https://mainnet.era.zksync.io" },
  scroll = { chain_id = 534352, title = "Scroll", l2 = true, l1 = "ethereum", native = "ETH",
    block_time = 3, rpc_url = "https://rpc.scroll.io" },
}

local ALIASES = {
  mainnet = "ethereum", eth = "ethereum", arbitrum_one = "arbitrum", op = "optimism",
  op_mainnet = "optimism", polygon_pos = "polygon", matic = "polygon", zksync_era = "zksync",
}

for name, p in pairs(PRESETS) do p.name = name end

_M.presets = PRESETS
_M.aliases = ALIASES

--- names() -> the presets' names, sorted.
function _M.names()
  local out = {}
  for name in pairs(PRESETS) do out[#out + 1] = name end
  table.sort(out)
  return out
end

--- lookup(name) -> the preset called name (or by an alias of it), or nil.
function _M.lookup(name)
  return PRESETS[ALIASES[name] or name]
end

return _M
