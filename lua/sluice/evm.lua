--- sluice.evm: the EVM kit -- chain presets, the chain-id check and the
-- JSON-RPC helper the on-chain collectors (evm_gas, evm_blocks,
-- evm_mempool) are built on.
--
--   local evm = require "sluice.evm"
--   evm.chains.arbitrum  --> { name = "arbitrum", chain_id = 42161, title = "Arbitrum One",
--                        --    l2 = true, l1 = "ethereum", native = "ETH", block_time = 0.25,
--                        --    rpc_url = "https://arb1.arbitrum.io/rpc" }
--   return evm.define{ name = "evm_gas", tables = {...}, collect = function(self)
--     local rpc = evm.rpc(self)                         -- the instance's sluice.jsonrpc object
--     local gp = assert(rpc:call("eth_gasPrice"))
--     return { evm.row(self, { ts = ..., gas_price_wei = bignum.from_hex(gp),
--       gas_price_gwei = evm.gwei(gp) }) }
--   end }
--
-- evm.define(spec) -> collector.define(spec) with the common options
-- (sluice.evm.chains for the presets):
--   chain ("ethereum"): a preset's name (or an alias: mainnet, eth,
--     arbitrum_one, op, op_mainnet, polygon_pos, matic, zksync_era), or an
--     identifier for a chain without a preset, which then needs chain_id
--     and rpc_url;
--   rpc_url ("": the preset's public endpoint): an http(s) URL, or
--     collector.env("NAME") for one with a key in it (shown as <secret>;
--     revealed when the instance first calls the node, and scrubbed from
--     log lines from then on);
--   chain_id (0: the preset's): what the node must answer to eth_chainId;
--     for a preset it may only repeat the preset's id.
-- and, unless the spec sets them: upstream = "evm_<chain>" per instance
-- (the spec's upstream(options) hook, sluice.collector.spec), so the
-- collectors of one chain share one limiter and one breaker (a
-- configuration entry's upstream wins); limiter DEFAULT_LIMITER (5 calls a
-- second, a batch of n costing n: what public endpoints take); timeout 10.
-- The options are checked when the instance is built (the upstream hook
-- resolves the chain: an unknown chain without chain_id, a custom chain
-- without rpc_url, a bad chain_id or URL are load errors naming the
-- collector), and again at init and backfill.
--
-- The chain-id check: the kit wraps init, collect, every dataset's collect
-- and backfill. init asks the node eth_chainId: an answer other than the
-- chain's id is an error that stops the start ("collector 'gas_arb':
-- rpc_url answers chain id 1, but chain 'arbitrum' is 42161 -- check
-- rpc_url"); a node that cannot be asked (down, timing out, answering no
-- JSON-RPC) is a warning, and the check runs again before each run until
-- it passes: a run whose check fails stores nothing and fails with the
-- reason. backfill (which `sluice backfill` calls without init) checks
-- before its first window. A passed check holds for the instance's life
-- (a reload builds new instances, which check again).
--
-- Helpers for the collectors (self: the instance):
--   evm.rpc(self) -> the instance's sluice.jsonrpc object (limiter endpoint
--     "rpc", so the URL is never a limiter or metric name)
--   evm.chain(self) -> the resolved chain: a copy of the preset with
--     rpc_url the effective one (a secret stays a secret), or for a custom
--     chain { name, chain_id, title = name, l2 = false, custom = true,
--     rpc_url }; raises when the options name no valid chain
--   evm.check(self) -> true | nil, err, kind: the chain-id check now
--     (once passed, true without a call); kind "mismatch" for a wrong id,
--     else jsonrpc's kind
--   evm.row(self, fields) -> fields with chain (the chain's name) and
--     chain_id set
--   evm.wei(q) -> the decimal digits of a wei amount given as a hex quantity
--     ("0x3b9aca00"), decimal text, a number, a cdata or a numeral
--   evm.gwei(q), evm.ether(q) -> q in gwei / ether, exact decimal text
--     ("0x3b9aca00" -> "1"; "1500000000000000000" -> "1.5" ether)
--   evm.resolve(opts) -> chain | nil, err: the chain that options {chain,
--     chain_id, rpc_url} name (what evm.chain uses)
--   evm.upstream(opts) -> "evm_<chain>" (raises with resolve's error)
--
-- The module owns each instance's state (its rpc object, chain, whether the
-- check passed) in a table weak by instance; nothing is written on the
-- instance. rpc calls and check yield (requests); the rest does not.
local collector = require "sluice.collector"
local jsonrpc = require "sluice.jsonrpc"
local bignum = require "sluice.bignum"
local json = require "sluice.json"
local secret = require "sluice.collector.secret"
local redact = require "sluice.redact"
local options = require "sluice.options"
local chains = require "sluice.evm.chains"

local _M = {}

_M.chains = chains.presets
_M.aliases = chains.aliases

--- the limiter of an EVM collector unless its spec or configuration sets
-- one: public endpoints allow a few calls a second per IP.
_M.DEFAULT_LIMITER = { rate = 5, burst = 5 }

local COMMON = { chain = "ethereum", rpc_url = "", chain_id = 0 }

-- per instance: { rpc, chain, checked }
local state = setmetatable({}, { __mode = "k" })

-- --- chains and options -------------------------------------------------------

local function copy(t)
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  return out
end

local function url_problem(url)
  if secret.is_secret(url) then return nil end
  if not url:match("^https?://[^/]") then
    return "rpc_url must be an http:// or https:// URL, got " .. options.value(redact.url(url))
  end
end

function _M.resolve(opts)
  if type(opts) ~= "table" then
    error("sluice.evm.resolve: bad argument #1 (table of options expected, got " .. type(opts) .. ")", 2)
  end
  local name, id, url = opts.chain or COMMON.chain, opts.chain_id or 0, opts.rpc_url or ""
  if type(name) ~= "string" or not name:match("^[%a][%w_]*$") then
    return nil, "option 'chain' must be a chain's name (letters, digits, _), got " .. options.value(name)
  end
  if type(id) ~= "number" or id < 0 or id ~= math.floor(id) or id >= 2 ^ 53 then
    return nil, "option 'chain_id' must be a whole number >= 0, got " .. options.value(id)
  end
  if type(url) ~= "string" and not secret.is_secret(url) then
    return nil, "option 'rpc_url' must be a string or collector.env(\"NAME\"), got " .. type(url)
  end
  local given = secret.is_secret(url) or url ~= ""
  local preset = chains.lookup(name)
  local chain
  if preset then
    if id ~= 0 and id ~= preset.chain_id then
      return nil, "chain '" .. preset.name .. "' is chain id " .. preset.chain_id .. ", not " .. id
        .. ": for another chain, name it (chain = \"mychain\", chain_id = " .. id .. ", rpc_url = ...)"
    end
    chain = copy(preset)
    if given then chain.rpc_url = url end
  else
    if id == 0 then
      return nil, "chain '" .. name .. "' has no preset (" .. table.concat(chains.names(), ", ")
        .. "): give its chain_id and rpc_url"
    end
    if not given then
      return nil, "chain '" .. name .. "' has no preset, so no default endpoint: give its rpc_url"
    end
    chain = { name = name, chain_id = id, title = name, l2 = false, custom = true, rpc_url = url }
  end
  local bad = url_problem(chain.rpc_url)
  if bad then return nil, bad end
  return chain
end

function _M.upstream(opts)
  local chain, err = _M.resolve(opts)
  if not chain then error(err, 0) end
  return "evm_" .. chain.name
end

local function state_of(self)
  local st = state[self]
  if not st then
    st = {}
    state[self] = st
  end
  return st
end

function _M.chain(self)
  if type(self) ~= "table" or type(self.options) ~= "table" then
    error("sluice.evm.chain: bad argument #1 (a collector instance expected)", 2)
  end
  local st = state_of(self)
  if not st.chain then
    local chain, err = _M.resolve(self.options)
    if not chain then error("collector '" .. self.name .. "': " .. err, 0) end
    st.chain = chain
  end
  return st.chain
end

function _M.rpc(self)
  local st = state_of(self)
  if not st.rpc then
    local url = _M.chain(self).rpc_url
    if secret.is_secret(url) then
      local revealed = secret.reveal(url)
      if type(revealed) ~= "string" or revealed == "" then
        error("collector '" .. self.name .. "': rpc_url: environment variable " .. url.env .. " is not set", 0)
      end
      redact.register(revealed) -- never in a log line
      if not revealed:match("^https?://[^/]") then
        error("collector '" .. self.name .. "': rpc_url (from " .. url.env .. ") is no http(s) URL", 0)
      end
      url = revealed
    end
    st.rpc = jsonrpc.new(self, { path = url, endpoint = "rpc" })
  end
  return st.rpc
end

function _M.row(self, fields)
  local chain = _M.chain(self)
  fields.chain = chain.name
  fields.chain_id = chain.chain_id
  return fields
end

-- --- the chain-id check ---------------------------------------------------------

local function mismatch(self, chain, got)
  return "collector '" .. self.name .. "': rpc_url answers chain id " .. tostring(got) .. ", but chain '"
    .. chain.name .. "' is " .. chain.chain_id .. " — check rpc_url"
end

function _M.check(self)
  local st = state_of(self)
  if st.checked then return true end
  local chain = _M.chain(self)
  local r, err, kind = _M.rpc(self):call("eth_chainId")
  if r == nil then
    return nil, "collector '" .. self.name .. "': cannot check the node's chain id: " .. tostring(err), kind
  end
  local ok, got = pcall(jsonrpc.quantity, r)
  if not ok then
    return nil, "collector '" .. self.name .. "': eth_chainId answered " .. options.value(r)
      .. ", which is no chain id", "protocol"
  end
  if bignum.cmp(got, chain.chain_id) ~= 0 then return nil, mismatch(self, chain, got), "mismatch" end
  st.checked = true
  return true
end

-- fn wrapped so that it runs only once the chain-id check passed.
local function checked(fn)
  return function(self, ...)
    local ok, err = _M.check(self)
    if not ok then error(err, 0) end
    return fn(self, ...)
  end
end

local function wrapped_init(init)
  return function(self)
    _M.chain(self)
    local ok, err, kind = _M.check(self)
    if not ok then
      -- (the framework's "collector 'x': init failed: " names the collector)
      if kind == "mismatch" then error((err:gsub("^collector '[^']*': ", "")), 0) end
      self.log.warning("chain id not checked at start: checked again before the first run stores rows",
        { error = err })
    end
    if init then return init(self) end
  end
end

--- define(spec) -> a collector spec (collector.define's) with the common
-- options, the default upstream and limiter, and the chain-id check
-- around init, collect, each dataset's collect and backfill.
function _M.define(spec)
  if type(spec) ~= "table" then
    error("sluice.evm.define: bad argument #1 (table expected, got " .. type(spec) .. ")", 2)
  end
  local out = copy(spec)
  local own = copy(spec.options or {})
  for k, v in pairs(COMMON) do
    if own[k] == nil then own[k] = v end
  end
  local ok, err = _M.resolve(own)
  if not ok then error("sluice.evm.define: " .. err, 2) end
  out.options = own
  if out.upstream == nil then out.upstream = _M.upstream end
  if out.limiter == nil then out.limiter = copy(_M.DEFAULT_LIMITER) end
  if out.timeout == nil then out.timeout = 10 end
  out.init = wrapped_init(spec.init)
  if type(spec.collect) == "function" then out.collect = checked(spec.collect) end
  if type(spec.backfill) == "function" then out.backfill = checked(spec.backfill) end
  if type(spec.datasets) == "table" then
    out.datasets = {}
    for name, ds in pairs(spec.datasets) do
      local d = copy(ds)
      if type(ds.collect) == "function" then d.collect = checked(ds.collect) end
      out.datasets[name] = d
    end
  end
  return collector.define(out)
end

-- --- wei --------------------------------------------------------------------------

local function wei_text(fname, q)
  if type(q) == "string" and q:match("^0[xX]") then return bignum.from_hex(q) end
  local ok, v = pcall(bignum.normalize, q)
  if not ok or not v:match("^%d+$") then
    error("sluice.evm." .. fname .. ": bad argument #1 (a wei amount expected: a hex quantity or a "
      .. "whole number >= 0, got " .. (json.numeral_text(q) or options.value(q)) .. ")", 3)
  end
  return v
end

function _M.wei(q)
  return wei_text("wei", q)
end

function _M.gwei(q)
  return bignum.scale(wei_text("gwei", q), -9)
end

function _M.ether(q)
  return bignum.scale(wei_text("ether", q), -18)
end

return _M
