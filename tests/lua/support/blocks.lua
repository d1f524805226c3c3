--- support.blocks: a node serving blocks by number (sluice.server on
-- 127.0.0.1) and an evm_blocks collector backfilling them by block number
-- (backfill_unit = "blocks"), for the integer-unit backfill specs and
-- integration checks.
--
--   local blocks = require "support.blocks"
--   local node = blocks.node()                -- node.url, node.log, node:stop()
--   local c = blocks.collector(node, db, { chains = { "eth", "base" } })
--   node:inject({ status = 500, count = 3 })  -- the next 3 answers
--   node.missing["eth/19000017"] = true      -- the node lacks that block
--
-- GET /blocks?chain=C&from=F&to=T answers {"blocks": [{number, hash}, ...]}
-- for the blocks F <= n < T (at most 10000), each hash a function of chain
-- and number (blocks.hash). node.log lists every request answered:
-- {chain, from, to, status} with from and to as the node read them (exact
-- integers). Nothing here yields but the collector's backfill.
local server = require "sluice.server"
local collector = require "sluice.collector"

local _M = {}

--- hash(chain, n) -> the hash the node serves for block n of chain.
function _M.hash(chain, n)
  return string.format("%s:%d", chain, n)
end

local Node = {}
Node.__index = Node

function Node:inject(fault)
  self.faults[#self.faults + 1] = { status = fault.status or 500, count = fault.count or 1,
    chain = fault.chain, from = fault.from }
end

function Node:stop()
  self.srv:close()
end

-- The fault the request (chain, from) meets, if any (consumed).
local function fault_for(node, chain, from)
  for i, f in ipairs(node.faults) do
    if (f.chain == nil or f.chain == chain) and (f.from == nil or f.from == from) then
      f.count = f.count - 1
      if f.count <= 0 then table.remove(node.faults, i) end
      return f
    end
  end
  return nil
end

--- node() -> a node on a free loopback port.
function _M.node()
  local node = setmetatable({ log = {}, faults = {}, missing = {} }, Node)
  node.srv = assert(server.listen({ host = "127.0.0.1", port = 0 }))
  node.url = "http://127.0.0.1:" .. node.srv.port
  node.srv:route("GET", "/blocks", function(req)
    local q = req.query
    -- digits read exactly (tonumber of at most 16 digits, within 2^53)
    local from, to = tonumber(q.from), tonumber(q.to)
    if not (q.chain and from and to and q.from:match("^%d+$") and q.to:match("^%d+$")
      and to > from and to - from <= 10000) then
      node.log[#node.log + 1] = { chain = q.chain, from = q.from, to = q.to, status = 400 }
      return 400, { error = "bad range " .. tostring(q.from) .. ".." .. tostring(q.to) }
    end
    local f = fault_for(node, q.chain, from)
    if f then
      node.log[#node.log + 1] = { chain = q.chain, from = from, to = to, status = f.status }
      return f.status, { error = "injected" }
    end
    local out = {}
    for n = from, to - 1 do
      if not node.missing[q.chain .. "/" .. string.format("%d", n)] then
        out[#out + 1] = { number = n, hash = _M.hash(q.chain, n) }
      end
    end
    node.log[#node.log + 1] = { chain = q.chain, from = from, to = to, status = 200 }
    return 200, { blocks = out }
  end)
  return node
end

--- spec(opts) -> the evm_blocks collector spec: blocks by number, windows
-- of opts.step (1000) blocks, one partition per chain, one row per block
-- expected.
function _M.spec(opts)
  opts = opts or {}
  return collector.define({
    name = opts.name or "evm_blocks", interval = 12,
    options = { chains = { "eth" } },
    tables = { blocks = { columns = { chain = "text", number = "integer", hash = "text" },
      key = { "chain", "number" } } },
    backfill_unit = "blocks",
    backfill_step = opts.step or 1000,
    partitions = function(self) return self.options.chains end,
    expect = { column = "number", every = 1, partition = "chain" },
    collect = function() return {} end,
    backfill = function(self, from, to, chain)
      -- [from, to): the window's first block and the one after its last
      local data, err = self:get("/blocks", { query = { chain = chain, from = from, to = to } })
      if not data then error(chain .. ": " .. tostring(err), 0) end
      local rows = {}
      for _, b in ipairs(data.blocks) do
        rows[#rows + 1] = { chain = chain, number = b.number, hash = b.hash }
      end
      return rows
    end,
  })
end

--- collector(node, db, opts) -> an evm_blocks instance on node into store
-- db: opts.chains (default {"eth"}), opts.step; the rest of opts are
-- configuration overrides (retry, limiter, ...).
function _M.collector(node, db, opts)
  opts = opts or {}
  local over = { base_url = node.url, chains = opts.chains or { "eth" },
    limiter = { rate = 500, max_rate = 1000 },
    retry = { strategy = "exponential", max_attempts = 2, base_delay = 0.01, max_delay = 0.02, budget = false } }
  for k, v in pairs(opts) do
    if k ~= "chains" and k ~= "step" then over[k] = v end
  end
  return collector.new(_M.spec({ step = opts.step }), over, { store = db })
end

return _M
