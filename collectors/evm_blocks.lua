--- collectors.evm_blocks: every block of an EVM chain, once, following the
-- head through reorgs (orphans kept and flagged), and backfill by block
-- range (sluice.evm.blocks has the logic, docs/onchain.md the reference).
--
--   { use = "evm_blocks", chain = "ethereum", rpc_url = collector.env("ETH_RPC"),
--     confirmations = 0, max_blocks = 1000, batch_size = 50, reorg_depth = 64 }
--   sluice backfill config.lua evm_blocks --from 19000000 --to 19001000
local evm = require "sluice.evm"
local blocks = require "sluice.evm.blocks"

return evm.define({
  name = "evm_blocks",
  description = "blocks of an EVM chain: the head followed through reorgs, history by block range",
  interval = 12,
  options = {
    batch_size = 50,    -- eth_getBlockByNumber calls per JSON-RPC batch
    max_blocks = 1000,  -- new blocks one run stores at most (a head further ahead: the next runs)
    confirmations = 0,  -- a block is stored once the head is this many blocks past it
    reorg_depth = 64,   -- a reorg orphaning more blocks fails the run, loudly
    start_block = -1,   -- the very first run: a block number, or from the head (-1: the head)
  },
  tables = blocks.TABLES,
  init = blocks.check,
  collect = function(self)
    blocks.check(self)
    return blocks.follow(self)
  end,
  backfill_unit = "blocks",
  backfill_step = 500,
  backfill_requests = function(self)
    local step = self.config.backfill_step
    return math.ceil((type(step) == "number" and step or 500) / self.options.batch_size)
  end,
  -- the head (less the confirmations) is the default end of a backfill
  backfill_to = function(self)
    blocks.check(self)
    return blocks.head(self) - self.options.confirmations + 1
  end,
  -- one canonical row per block number of this instance's chain
  expect = function(self)
    return { table = "evm_blocks", column = "number", every = 1,
      where = { chain = evm.chain(self).name, orphaned = 0 } }
  end,
  backfill = function(self, from, to)
    return blocks.backfill(self, from, to)
  end,
})
