--- sluice.mev: the mev_relays collector -- MEV-Boost relays' Data API
-- (flashbots/relay-specs, apis/relay/data) from a list of relays, each
-- behind its own breaker and limiter, and the per-slot view merged across
-- them.
--
--   { use = "mev_relays", relays = { "flashbots", "ultrasound",
--       { name = "mine", url = "https://relay.example" } } }
--
-- mev.RELAYS: the presets, name -> {name, title, url}; mev.spec() -> the
-- collector spec (collectors/mev_relays.lua returns it); mev.relays(list)
-- -> the resolved entries {name, url} (raises naming a bad entry);
-- mev.merge(payloads, opts) -> mev_slots rows; mev.intensity(value_eth,
-- opts) and mev.utilization(gas_used, gas_limit): the per-block analysis.
--
-- Each run: the newest `limit` payloads of every relay, the relays at once
-- (each in a task of its own, through its target's breaker and limiter,
-- sluice.collector "targets"); the rows of those that answered are
-- stored, and the run fails naming the relays that did not. Backfill
-- (backfill_unit "slots", one partition per relay): pages backwards with
-- `cursor` from the window's last slot until below its first. mev_slots
-- rows are recomputed for the slots a run or window touched, from the
-- stored rows of every relay and the new ones, after the last request of
-- the run (nothing yields between that read and the commit, so two windows
-- of different relays cannot lose each other's rows). Owns no state of
-- its own beyond what the collector instance gives it.
local sluice = require "sluice"
local collector = require "sluice.collector"
local bignum = require "sluice.bignum"
local json = require "sluice.json"

local fmt, concat = string.format, table.concat

local _M = {}

local PAYLOADS = "/relay/v1/data/bidtraces/proposer_payload_delivered"
local BIDS = "/relay/v1/data/bidtraces/builder_blocks_received"
local PAGE_MAX = 200 -- the relay's maximum limit for proposer_payload_delivered
local GENESIS = 1606824023 -- beacon chain genesis (epoch seconds); 12 s a slot

--- RELAYS: the live mainnet relays. Their URLs are those the relays
-- publish for mev-boost (`-relays https://0x<pubkey>@host`, the host
-- without the pubkey), as listed in the ethstaker and coincashew relay
-- lists; the Data API is served on the same host.
_M.RELAYS = {
  flashbots = { title = "Flashbots", url = "https://boost-relay.flashbots.net" },
  ultrasound = { title = "Ultra Sound", url = "https://relay.ultrasound.money" },
  bloxroute_max_profit = { title = "bloXroute Max Profit", url = "https://bloxroute.max-profit.blxrbdn.com" },
  bloxroute_regulated = { title = "bloXroute Regulated", url = "https://bloxroute.regulated.blxrbdn.com" },
  agnostic = { title = "Agnostic", url = "https://agnostic-relay.net" },
  aestus = { title = "Aestus", url = "https://aestus.live" },
  titan = { title = "Titan", url = "https://titanrelay.xyz" },
}
for name, r in pairs(_M.RELAYS) do r.name = name end

local DEFAULT_RELAYS = { "flashbots", "ultrasound", "bloxroute_max_profit", "bloxroute_regulated",
  "agnostic", "aestus", "titan" }

--- relays(list) -> {{name, url}, ...}: presets by name, or {name, url}
-- entries (a preset's name with a url of its own points it elsewhere).
function _M.relays(list)
  if type(list) ~= "table" or list[1] == nil then
    error("mev_relays: option 'relays' must be a non-empty list of relay names or {name, url} entries", 2)
  end
  local out, seen = {}, {}
  for i, r in ipairs(list) do
    local e
    if type(r) == "string" then
      local p = _M.RELAYS[r]
      if not p then
        local names = {}
        for n in pairs(_M.RELAYS) do names[#names + 1] = n end
        table.sort(names)
        error("mev_relays: relays[" .. i .. "]: no preset '" .. r .. "' (presets: " .. concat(names, ", ")
          .. "; or give { name = ..., url = ... })", 2)
      end
      e = { name = r, url = p.url }
    elseif type(r) == "table" and type(r.name) == "string" and r.name:match("^[%w_%-]+$")
      and type(r.url) == "string" and r.url:match("^https?://") then
      e = { name = r.name, url = (r.url:gsub("/+$", "")) }
    else
      error("mev_relays: relays[" .. i .. "] must be a preset name or { name = <letters, digits, _, ->, "
        .. "url = \"https://...\" }", 2)
    end
    if seen[e.name] then error("mev_relays: relays name '" .. e.name .. "' twice", 2) end
    seen[e.name] = true
    out[i] = e
  end
  return out
end

-- ---- the per-block analysis ------------------------------------------------------

--- intensity(value_eth, opts) -> "low" | "medium" | "high": below
-- opts.intensity_medium ETH low, below opts.intensity_high medium, else
-- high (decimal text, compared exactly).
function _M.intensity(value_eth, opts)
  if bignum.cmp(value_eth, opts.intensity_high) >= 0 then return "high" end
  if bignum.cmp(value_eth, opts.intensity_medium) >= 0 then return "medium" end
  return "low"
end

--- UTILIZATION_SCALE: digits after the point of gas_utilization.
_M.UTILIZATION_SCALE = 4

--- utilization(gas_used, gas_limit) -> gas_used / gas_limit as a
-- percentage, truncated to UTILIZATION_SCALE places ("37.3633"), or nil
-- when gas_limit is 0.
function _M.utilization(gas_used, gas_limit)
  if bignum.cmp(gas_limit, 0) == 0 then return nil end
  return bignum.div(bignum.mul(gas_used, 100), gas_limit, _M.UTILIZATION_SCALE)
end

--- merge(payloads, opts) -> mev_slots rows, one per slot of payloads
-- (mev_payloads rows of any relays). The winner is the payload of the
-- highest value; its block hash, builder, value and gas make the row.
-- relays: the relays that delivered the winning block (sorted, a JSON
-- list); relay_count their number. When relays disagree on the block
-- (different hashes for one slot: a relay's record of an equivocation or a
-- bad entry), the highest value still wins, block_hashes lists every hash
-- seen (sorted) and disagreement = 1, so it stays visible.
function _M.merge(payloads, opts)
  local by_slot, order = {}, {}
  for _, p in ipairs(payloads) do
    local k = tostring(p.slot)
    if not by_slot[k] then by_slot[k] = {}; order[#order + 1] = k end
    local list = by_slot[k]
    list[#list + 1] = p
  end
  local out = {}
  for _, k in ipairs(order) do
    local list, best = by_slot[k], nil
    for _, p in ipairs(list) do
      local c = best and bignum.cmp(p.value_wei, best.value_wei)
      -- ties: the smaller block hash, so the answer does not depend on order
      if not best or c > 0 or (c == 0 and p.block_hash < best.block_hash) then best = p end
    end
    local relays, hashes, seen_h, seen_r = {}, {}, {}, {}
    for _, p in ipairs(list) do
      if not seen_h[p.block_hash] then seen_h[p.block_hash] = true; hashes[#hashes + 1] = p.block_hash end
      if p.block_hash == best.block_hash and not seen_r[p.relay] then
        seen_r[p.relay] = true
        relays[#relays + 1] = p.relay
      end
    end
    table.sort(relays)
    table.sort(hashes)
    local eth = bignum.scale(best.value_wei, -18)
    out[#out + 1] = {
      slot = best.slot, block_number = best.block_number, block_hash = best.block_hash,
      relays = json.encode(json.array(relays)), relay_count = #relays,
      builder_pubkey = best.builder_pubkey, value_wei = best.value_wei, value_eth = eth,
      mev_intensity = _M.intensity(eth, opts),
      gas_used = best.gas_used, gas_limit = best.gas_limit,
      gas_utilization = _M.utilization(best.gas_used, best.gas_limit),
      block_hashes = json.encode(json.array(hashes)), disagreement = #hashes > 1 and 1 or 0,
      updated_at = opts.now_ms,
    }
  end
  return out
end

-- ---- fetching --------------------------------------------------------------------

-- A trace's decimal-string field as the stored integer (text: exact).
local function int(v, what)
  if type(v) ~= "string" or not v:match("^%d+$") then
    error("relay answered a trace with " .. what .. " = " .. tostring(v) .. " (a decimal string expected)", 0)
  end
  return v
end

-- A bid trace (a list entry of either endpoint) as a mev_payloads row.
local function payload_row(relay, t, seen_at)
  return {
    relay = relay, slot = int(t.slot, "slot"), block_hash = t.block_hash,
    block_number = int(t.block_number, "block_number"), parent_hash = t.parent_hash,
    builder_pubkey = t.builder_pubkey, proposer_pubkey = t.proposer_pubkey,
    proposer_fee_recipient = t.proposer_fee_recipient,
    gas_limit = int(t.gas_limit, "gas_limit"), gas_used = int(t.gas_used, "gas_used"),
    value_wei = int(t.value, "value"), num_tx = int(t.num_tx, "num_tx"), seen_at = seen_at,
  }
end

local function bid_row(relay, t)
  local r = payload_row(relay, t)
  r.seen_at = nil
  r.timestamp = int(t.timestamp, "timestamp")
  r.timestamp_ms = int(t.timestamp_ms, "timestamp_ms")
  r.optimistic_submission = t.optimistic_submission == true and 1 or (t.optimistic_submission == false and 0 or nil)
  return r
end

-- The relay's answer as a list, or raises with the relay's own message.
local function get_list(self, relay, path, query)
  local data, err = self:get(relay.url .. path, { query = query, target = relay.name })
  if data == nil then error(relay.name .. ": " .. tostring(err), 0) end
  if type(data) ~= "table" or (data[1] == nil and next(data) ~= nil) then
    error(relay.name .. ": " .. path .. " answered no list", 0)
  end
  return data
end

-- The relay's verdicts: its 400 {"code", "message"} explains the failure.
local function classify(_, res)
  if res.status >= 400 then
    local ok, body = pcall(json.decode, res.body)
    if ok and type(body) == "table" and type(body.message) == "string" then
      return nil, "HTTP " .. res.status .. ": " .. body.message
    end
  end
  return nil
end

local function now_ms()
  return math.floor(sluice.time() * 1000)
end

-- The instance's relays, resolved from its options (keyed by instance:
-- nothing written on it).
local resolved = setmetatable({}, { __mode = "k" })
local function relays_of(self)
  local r = resolved[self]
  if not r then
    r = { list = _M.relays(self.options.relays), by = {} }
    for _, e in ipairs(r.list) do r.by[e.name] = e end
    resolved[self] = r
  end
  return r
end

-- Bids of the slots in payload rows (builder_bids = true): one request a slot.
local function fetch_bids(self, relay, rows)
  local out, done = {}, {}
  for _, p in ipairs(rows) do
    if not done[p.slot] then
      done[p.slot] = true
      for _, t in ipairs(get_list(self, relay, BIDS, { slot = p.slot })) do
        out[#out + 1] = bid_row(relay.name, t)
      end
    end
  end
  return out
end

-- The mev_slots rows for the slots of the new payload rows: merged with
-- what the store holds for those slots (other relays', earlier runs').
-- No yield from here to the commit.
local function merged(self, rows)
  local slots, list = {}, {}
  for _, p in ipairs(rows) do
    if not slots[p.slot] then slots[p.slot] = true; list[#list + 1] = p.slot end
  end
  if #list == 0 then return {} end
  local all, key = {}, {}
  local function add(p)
    local k = p.relay .. "/" .. p.slot .. "/" .. p.block_hash
    if key[k] then all[key[k]] = p else all[#all + 1] = p; key[k] = #all end
  end
  if self.store then
    for i = 1, #list, 500 do
      local part = {}
      for j = i, math.min(i + 499, #list) do part[#part + 1] = tonumber(list[j]) end
      local marks = ("?,"):rep(#part):sub(1, -2)
      local stored = self.store:select("mev_payloads", "WHERE slot IN (" .. marks .. ")", unpack(part))
      for _, p in ipairs(stored or {}) do
        p.slot = fmt("%d", p.slot)
        add(p)
      end
    end
  end
  for _, p in ipairs(rows) do add(p) end
  local o = self.options
  return _M.merge(all, { intensity_medium = o.intensity_medium, intensity_high = o.intensity_high,
    now_ms = now_ms() })
end

-- One relay's newest payloads (and bids): rows.
local function newest(self, relay)
  local seen = now_ms()
  local rows = {}
  for _, t in ipairs(get_list(self, relay, PAYLOADS, { limit = self.options.limit })) do
    rows[#rows + 1] = payload_row(relay.name, t, seen)
  end
  local bids = self.options.builder_bids and fetch_bids(self, relay, rows) or nil
  return rows, bids
end

local function collect(self)
  local r = relays_of(self)
  local tasks = {}
  for i, relay in ipairs(r.list) do tasks[i] = sluice.spawn(newest, self, relay) end
  local payloads, bids, failed = {}, {}, {}
  for _, t in ipairs(tasks) do
    -- true, the task's results | false, its error
    local ok, rows, b = sluice.wait(t)
    if ok then
      for _, p in ipairs(rows) do payloads[#payloads + 1] = p end
      for _, x in ipairs(b or {}) do bids[#bids + 1] = x end
    else
      failed[#failed + 1] = tostring(rows)
    end
  end
  local result = { mev_payloads = payloads, mev_slots = merged(self, payloads) }
  if self.options.builder_bids then result.mev_builder_bids = bids end
  if #failed == 0 then return result end
  -- the relays that answered are stored; the run fails naming the others
  if #payloads > 0 then self:store_rows(result) end
  error("relays failed: " .. concat(failed, "; "), 0)
end

--- backfill(self, from, to, relay): the payloads of slots [from, to) of
-- one relay, paging backwards with cursor (the slot to start at,
-- descending; the next page starts below the lowest slot seen) until below
-- from; each page fetched once.
local function backfill(self, from, to, name)
  local relay = relays_of(self).by[name]
  if not relay then error("mev_relays: no relay '" .. tostring(name) .. "'", 0) end
  local page = self.options.page_size
  local rows, seen = {}, now_ms()
  local cursor = to - 1
  while cursor >= from and cursor >= 1 do
    local list = get_list(self, relay, PAYLOADS, { cursor = fmt("%d", cursor), limit = page })
    local lowest
    for _, t in ipairs(list) do
      local p = payload_row(relay.name, t, seen)
      local s = tonumber(p.slot)
      if not lowest or s < lowest then lowest = s end
      if s >= from and s < to then rows[#rows + 1] = p end
    end
    if #list < page or not lowest then break end
    cursor = lowest - 1
  end
  local bids = self.options.builder_bids and fetch_bids(self, relay, rows) or nil
  local result = { mev_payloads = rows, mev_slots = merged(self, rows) }
  if bids then result.mev_builder_bids = bids end
  return result
end

local PAYLOAD_COLUMNS = {
  relay = "text", slot = "integer", block_hash = "text", block_number = "integer",
  parent_hash = "text", builder_pubkey = "text", proposer_pubkey = "text",
  proposer_fee_recipient = "text", gas_limit = "integer", gas_used = "integer",
  value_wei = "uint256", num_tx = "integer", seen_at = "integer",
}
local BID_COLUMNS = {}
for k, v in pairs(PAYLOAD_COLUMNS) do BID_COLUMNS[k] = v end
BID_COLUMNS.seen_at = nil
BID_COLUMNS.timestamp, BID_COLUMNS.timestamp_ms = "integer", "integer"
BID_COLUMNS.optimistic_submission = "integer"

--- spec() -> the mev_relays collector spec.
function _M.spec()
  return collector.define({
    name = "mev_relays",
    description = "MEV-Boost relays' delivered payloads (Data API), merged per slot",
    interval = 60, jitter = 0.1, timeout = 15,
    -- per relay (targets): the relays' Data API is public and rate limited
    -- by their proxies; 2 requests a second stays well inside
    limiter = { rate = 2, max_rate = 10, min_rate = 0.1 },
    breaker = { failure_threshold = 3, timeout = 60, max_timeout = 900 },
    retry = { strategy = "exponential_jitter", max_attempts = 3, base_delay = 1, max_delay = 10 },
    options = {
      relays = DEFAULT_RELAYS,
      limit = 50,                 -- payloads per relay per run (newest first; at most 200)
      page_size = PAGE_MAX,       -- backfill's page (at most 200)
      builder_bids = false,       -- also builder_blocks_received for each slot seen
      intensity_medium = "0.05",  -- ETH: about the median delivered value
      intensity_high = "0.5",     -- ETH: the top few percent of blocks
    },
    targets = function(self)
      local names = {}
      for i, e in ipairs(_M.relays(self.options.relays)) do names[i] = e.name end
      return names
    end,
    partitions = function(self)
      local names = {}
      for i, e in ipairs(relays_of(self).list) do names[i] = e.name end
      return names
    end,
    init = function(self)
      local o = self.options
      for _, k in ipairs{ "limit", "page_size" } do
        if not (o[k] >= 1 and o[k] <= PAGE_MAX and o[k] == math.floor(o[k])) then
          error("mev_relays: option '" .. k .. "' must be an integer from 1 to " .. PAGE_MAX, 0)
        end
      end
      for _, k in ipairs{ "intensity_medium", "intensity_high" } do
        if not bignum.parse(o[k]) then error("mev_relays: option '" .. k .. "' must be a decimal (ETH)", 0) end
      end
    end,
    classify = classify,
    tables = {
      mev_payloads = { columns = PAYLOAD_COLUMNS, key = { "relay", "slot", "block_hash" } },
      mev_builder_bids = { columns = BID_COLUMNS,
        key = { "relay", "slot", "builder_pubkey", "block_hash", "timestamp_ms" } },
      mev_slots = {
        columns = { slot = "integer", block_number = "integer", block_hash = "text", relays = "text",
          relay_count = "integer", builder_pubkey = "text", value_wei = "uint256", value_eth = "decimal",
          mev_intensity = "text", gas_used = "integer", gas_limit = "integer",
          gas_utilization = "decimal", block_hashes = "text", disagreement = "integer",
          updated_at = "integer" },
        key = { "slot" },
      },
    },
    collect = collect,
    backfill = backfill,
    backfill_unit = "slots",
    backfill_step = 7200, -- a day of slots
    backfill_requests = 36,
    -- the slot after the current one (12 s slots since genesis)
    backfill_to = function() return math.floor((sluice.time() - GENESIS) / 12) + 1 end,
  })
end

return _M
