--- sluice.mock.mev_relay: a mock MEV-Boost relay Data API on sluice.server,
-- answering as flashbots/mev-boost-relay does (services/api/service.go,
-- database/database.go) so the mev_relays collector is tested offline.
--
--   local mock = require "sluice.mock.mev_relay"
--   local m = mock.start{ name = "flashbots", head = 6214300,
--     fixtures = "tests/fixtures/mev-relays/builder_blocks_received_slot_6214255.json" }
--   http.get(m.url .. "/relay/v1/data/bidtraces/proposer_payload_delivered", { query = { limit = 10 } })
--   m:inject{ status = 503, count = 3 }     -- the next 3 requests answer 503
--   m:stop()
--
-- mock.start(opts) -> m   (raises when it cannot listen)
--   host, port   where to listen (default "127.0.0.1", 0 = a free port)
--   name         the relay's name (default "relay"): which slots it delivered
--                and its forked blocks depend on it
--   seed         integer mixed into every synthetic value (default 1)
--   head         the newest slot the relay has (a number, or a function
--                returning one; default 6214300)
--   share        the fraction of slots this relay delivered (default 0.6)
--   forks        {[slot] = true}: slots where this relay delivered a block
--                of its own (another hash, builder and value than the other
--                relays'), for disagreements
--   scan         how many slots below the start a filtered query walks
--                (default 10000: the relay's database answers any depth)
--   fixtures     path of the recorded builder_blocks_received file
--                (tests/fixtures/mev-relays/): its slot is delivered by every
--                mock (below)
--   rate_limit   requests allowed per rate_window seconds; the next ones
--                answer 429 with Retry-After until the window ends (default
--                none)
--   rate_window  seconds (default 1)
--   now          function returning epoch seconds (default sluice.time)
-- m.port, m.url, m.requests (count), m.log (list of {method, path, query,
-- status}), m:stop(), m:reset(), m:answer(req) -> status, body, headers.
-- m:delivered(slot) -> the trace the relay serves for slot (fields as the
--   API spells them), or nil when it delivered none.
-- m:inject{status, body, count = 1, path, retry_after, delay, abort}:
--   faults queued and consumed in order by the requests they match (path:
--   exact, optional); status answers with body or {"code": status,
--   "message": ...}; abort closes the connection unanswered.
--
-- Endpoints (GET):
--   /relay/v1/data/bidtraces/proposer_payload_delivered: slot, cursor,
--     limit (default and maximum 200), block_hash, block_number,
--     proposer_pubkey, builder_pubkey, order_by (value | -value); newest
--     slot first (cursor: slot <= cursor); slot = 0 and cursor = 0 are no
--     filter, as the relay's Slot > 0 / Cursor > 0 checks make them.
--   /relay/v1/data/bidtraces/builder_blocks_received: slot, block_hash,
--     block_number, builder_pubkey (at least one), limit (default and
--     maximum 500, ignored with slot, block_number or block_hash); newest
--     first; each with timestamp and timestamp_ms.
-- Errors are the relay's: 400 {"code":400,"message":"..."} with its
-- messages: "cannot specify both slot and cursor", "invalid slot argument",
-- "invalid cursor argument", "invalid block_hash argument", "invalid
-- block_number argument", "invalid proposer_pubkey argument", "invalid
-- builder_pubkey argument", "invalid limit argument", "maximum limit is
-- 200" (500 for bids), "cursor argument not supported" and "need to query
-- for specific slot or block_hash or block_number or builder_pubkey". The
-- relay's code has no rate limit of its own (relays put one in front of
-- it); the mock's 429 keeps the same error shape. Bodies are compact JSON
-- with a newline, as Go's json.Encoder writes them; every number is a
-- decimal string.
--
-- The recorded slot (with fixtures): builder_blocks_received?slot=S answers
-- the recorded entries, the fixture's "response" text without the
-- indentation (keys in their order, values as spelled); other filters
-- select among them. proposer_payload_delivered delivers, for S, the
-- recorded entry of the highest value (the bid that won the auction),
-- without timestamp fields. Other slots: deterministic synthetic traces of
-- the same shape, the same block at every relay that delivered the slot
-- (but forks), about one in twenty worth more than 2^64 wei.
local sluice = require "sluice"
local server = require "sluice.server"
local options = require "sluice.options"
local bignum = require "sluice.bignum"
local json = require "sluice.json"
local hashing = require "sluice.mock.hash"

local hash, str_hash = hashing.hash, hashing.str_hash
local floor, fmt, concat = math.floor, string.format, table.concat

local _M = {}

local PAYLOADS = "/relay/v1/data/bidtraces/proposer_payload_delivered"
local BIDS = "/relay/v1/data/bidtraces/builder_blocks_received"
local PAYLOAD_LIMIT, BIDS_LIMIT = 200, 500
-- block number = slot + this, as at the recorded slot (6214255 -> 17039004)
local BLOCK_OFFSET = 10824749
local GENESIS = 1606824023 -- beacon chain genesis, epoch seconds; 12 s a slot
local FIELDS = { "slot", "parent_hash", "block_hash", "builder_pubkey", "proposer_pubkey",
  "proposer_fee_recipient", "gas_limit", "gas_used", "value", "num_tx", "block_number" }
local BID_FIELDS = { "timestamp", "timestamp_ms" }
for i = #FIELDS, 1, -1 do table.insert(BID_FIELDS, 1, FIELDS[i]) end

-- ---- synthetic traces ------------------------------------------------------------

-- n hex digits drawn from state h and integers a, b.
local function hex(h, n, a, b)
  local out = {}
  for i = 1, math.ceil(n / 8) do
    out[i] = fmt("%08x", floor(hash(h, a, b or 0, i) * 4294967296))
  end
  return "0x" .. concat(out):sub(1, n)
end

-- Five builders, as a handful of builders win most slots.
local function builder(seed, k)
  return hex(str_hash(seed, "builder"), 96, k)
end

-- The block every relay that delivered slot s serves (one of its own with
-- salt: a fork), as the API spells it, with the slot's bids.
local function block(seed, s, salt)
  local h = str_hash(seed, "block" .. (salt or ""))
  local u = hash(h, s, 7)
  local value
  if u < 0.05 then
    -- a rich block: more than 2^64 wei (about 18.4 ETH and up)
    value = bignum.add("18446744073709551616", bignum.mul(floor(hash(h, s, 8) * 1e9), "1000000000"))
  else
    value = bignum.add("10000000000000000", bignum.mul(floor(hash(h, s, 8) * 1e9), "300000000"))
  end
  local gas_limit = 30000000
  return {
    slot = fmt("%d", s),
    parent_hash = hex(str_hash(seed, "block"), 64, s - 1, 1),
    block_hash = hex(h, 64, s, 1),
    builder_pubkey = builder(seed, floor(hash(h, s, 9) * 5)),
    proposer_pubkey = hex(str_hash(seed, "proposer"), 96, s),
    proposer_fee_recipient = hex(str_hash(seed, "fee"), 40, s),
    gas_limit = fmt("%d", gas_limit),
    gas_used = fmt("%d", 8000000 + floor(hash(h, s, 10) * (gas_limit - 8000000))),
    value = value,
    num_tx = fmt("%d", 50 + floor(hash(h, s, 11) * 350)),
    block_number = fmt("%d", s + BLOCK_OFFSET),
  }
end

-- A trace as the relay writes it: compact, in the struct's field order.
local function encode(t, fields)
  local out = {}
  for i, k in ipairs(fields) do out[i] = fmt("%q:%q", k, t[k]) end
  return "{" .. concat(out, ",") .. "}"
end

local function encode_list(list, fields)
  local out = {}
  for i, t in ipairs(list) do out[i] = encode(t, fields) end
  return "[" .. concat(out, ",") .. "]\n"
end

-- ---- the recorded slot -----------------------------------------------------------

-- JSON text without the whitespace between tokens (strings kept as they are).
local function compact(text)
  local out, i, n = {}, 1, #text
  while i <= n do
    local c = text:sub(i, i)
    if c == '"' then
      local j = i + 1
      while true do
        local d = text:sub(j, j)
        if d == "\\" then j = j + 2 elseif d == '"' or d == "" then break else j = j + 1 end
      end
      out[#out + 1] = text:sub(i, j)
      i = j + 1
    else
      if not c:match("%s") then out[#out + 1] = c end
      i = i + 1
    end
  end
  return concat(out)
end

-- The raw text of the fixture's "response" array.
local function response_text(text)
  local _, e = text:find('"response"%s*:%s*')
  if not e then return nil end
  local depth, i, in_str = 0, e + 1, false
  while i <= #text do
    local c = text:sub(i, i)
    if in_str then
      if c == "\\" then i = i + 1 elseif c == '"' then in_str = false end
    elseif c == '"' then
      in_str = true
    elseif c == "[" or c == "{" then
      depth = depth + 1
    elseif c == "]" or c == "}" then
      depth = depth - 1
      if depth == 0 then return text:sub(e + 1, i) end
    end
    i = i + 1
  end
  return nil
end

local function load_fixtures(path)
  local f, err = io.open(path, "rb")
  if not f then error("sluice.mock.mev_relay: " .. tostring(err), 3) end
  local text = f:read("*a")
  f:close()
  local raw = response_text(text)
  local list = raw and json.decode(raw)
  if type(list) ~= "table" or not list[1] then
    error("sluice.mock.mev_relay: " .. path .. " has no recorded response", 3)
  end
  local best
  for _, t in ipairs(list) do
    if not best or bignum.cmp(t.value, best.value) > 0 then best = t end
  end
  local delivered = {}
  for _, k in ipairs(FIELDS) do delivered[k] = best[k] end
  return { slot = tonumber(list[1].slot), body = compact(raw), bids = list, delivered = delivered }
end

-- ---- the mock --------------------------------------------------------------------

local Mock = {}
Mock.__index = Mock

function Mock:_head()
  local h = self._opts.head
  if type(h) == "function" then h = h() end
  return h
end

function Mock:delivered(s)
  local rec = self._recorded
  if rec and s == rec.slot then return rec.delivered end
  if s < 1 or s > self:_head() then return nil end
  if self._opts.forks[s] then return block(self._seed, s, self._opts.name) end
  if hash(self._relay, s, 1) >= self._opts.share then return nil end
  return block(self._seed, s)
end

-- The bids for slot s, newest first: the delivered block and the lower
-- bids before it (a synthetic slot the relay delivered has 3 to 8).
function Mock:_bids(s)
  local rec = self._recorded
  if rec and s == rec.slot then return rec.bids end
  local top = self:delivered(s)
  if not top then return {} end
  local out = {}
  local n = 3 + floor(hash(self._relay, s, 2) * 6)
  local t_ms = (GENESIS + 12 * s) * 1000 - 500
  for i = 0, n - 1 do
    local b = {}
    for _, k in ipairs(FIELDS) do b[k] = top[k] end
    if i > 0 then
      b.block_hash = hex(self._relay, 64, s, 100 + i)
      b.value = bignum.sub(top.value, fmt("%d", i * 1000000000000))
      b.builder_pubkey = builder(self._seed, (i + floor(hash(self._relay, s, 3) * 5)) % 5)
    end
    local ms = t_ms - i * 97
    b.timestamp, b.timestamp_ms = fmt("%d", floor(ms / 1000)), fmt("%d", ms)
    out[#out + 1] = b
  end
  return out
end

local function relay_error(code, message)
  return code, fmt('{"code":%d,"message":%s}\n', code, json.encode(message))
end

-- A query argument as the relay's strconv.ParseInt / ParseUint reads it
-- (base 10; int64 range; unsigned: no sign): the number, false when
-- invalid, nil when absent or empty (Go's args.Get gives "" for both).
local function int_arg(v, unsigned)
  if v == nil or v == "" then return nil end
  local pat = unsigned and "^%d+$" or "^[%+%-]?%d+$"
  if not v:match(pat) then return false end
  local digits = v:gsub("^[%+%-]", ""):gsub("^0+(%d)", "%1")
  if #digits > 18 then return false end -- beyond what a slot or limit needs
  return tonumber(v)
end

local function hex_arg(v, n)
  if v == nil or v == "" then return nil end
  if not (#v == n + 2 and v:match("^0[xX]%x+$")) then return false end
  return v:lower()
end

local function matches(t, f)
  return (not f.block_hash or t.block_hash == f.block_hash)
    and (not f.block_number or t.block_number == fmt("%d", f.block_number))
    and (not f.proposer_pubkey or t.proposer_pubkey == f.proposer_pubkey)
    and (not f.builder_pubkey or t.builder_pubkey == f.builder_pubkey)
end

function Mock:_payloads(q)
  local f, limit = {}, PAYLOAD_LIMIT
  local slot, cursor
  if (q.slot or "") ~= "" and (q.cursor or "") ~= "" then
    return relay_error(400, "cannot specify both slot and cursor")
  elseif (q.slot or "") ~= "" then
    slot = int_arg(q.slot)
    if not slot then return relay_error(400, "invalid slot argument") end
  elseif (q.cursor or "") ~= "" then
    cursor = int_arg(q.cursor)
    if not cursor then return relay_error(400, "invalid cursor argument") end
  end
  for _, a in ipairs{ { "block_hash", 64, "invalid block_hash argument" },
    { "proposer_pubkey", 96, "invalid proposer_pubkey argument" },
    { "builder_pubkey", 96, "invalid builder_pubkey argument" } } do
    local v = hex_arg(q[a[1]], a[2])
    if v == false then return relay_error(400, a[3]) end
    f[a[1]] = v
  end
  local bn = int_arg(q.block_number)
  if bn == false then return relay_error(400, "invalid block_number argument") end
  if bn and bn > 0 then f.block_number = bn end
  -- (the relay checks block_hash, block_number, proposer_pubkey, builder_pubkey, limit in that order)
  if (q.limit or "") ~= "" then
    local l = int_arg(q.limit, true)
    if not l then return relay_error(400, "invalid limit argument") end
    if l > PAYLOAD_LIMIT then return relay_error(400, "maximum limit is " .. PAYLOAD_LIMIT) end
    limit = l
  end
  local out = {}
  local order = q.order_by == "value" and 1 or q.order_by == "-value" and -1 or nil
  local function take(s)
    local t = self:delivered(s)
    if t and matches(t, f) then out[#out + 1] = t end
  end
  if slot and slot > 0 then
    take(slot)
  elseif f.block_number then
    take(f.block_number - BLOCK_OFFSET)
    local rec = self._recorded
    if rec and rec.slot ~= f.block_number - BLOCK_OFFSET then take(rec.slot) end
  else
    local start = self:_head()
    if cursor and cursor > 0 and cursor < start then start = cursor end
    local stop = math.max(1, start - self._opts.scan + 1)
    for s = start, stop, -1 do
      take(s)
      if not order and #out >= limit then break end
    end
  end
  if order then
    table.sort(out, function(a, b)
      local c = bignum.cmp(a.value, b.value)
      if c ~= 0 then return c == -order end
      return tonumber(a.slot) > tonumber(b.slot)
    end)
  end
  while #out > limit do out[#out] = nil end
  return 200, encode_list(out, FIELDS)
end

function Mock:_builder_bids(q)
  local f, limit = {}, BIDS_LIMIT
  if (q.cursor or "") ~= "" then return relay_error(400, "cursor argument not supported") end
  local slot = int_arg(q.slot)
  if slot == false then return relay_error(400, "invalid slot argument") end
  local bh = hex_arg(q.block_hash, 64)
  if bh == false then return relay_error(400, "invalid block_hash argument") end
  f.block_hash = bh
  local bn = int_arg(q.block_number)
  if bn == false then return relay_error(400, "invalid block_number argument") end
  if bn and bn > 0 then f.block_number = bn end
  local bp = hex_arg(q.builder_pubkey, 96)
  if bp == false then return relay_error(400, "invalid builder_pubkey argument") end
  f.builder_pubkey = bp
  if not (slot and slot > 0) and not f.block_hash and not f.block_number and not f.builder_pubkey then
    return relay_error(400, "need to query for specific slot or block_hash or block_number or builder_pubkey")
  end
  if (q.limit or "") ~= "" then
    local l = int_arg(q.limit)
    if not l then return relay_error(400, "invalid limit argument") end
    if l > BIDS_LIMIT then return relay_error(400, "maximum limit is " .. BIDS_LIMIT) end
    limit = l
  end
  -- the relay drops the limit when filtering by slot, block number or hash
  if (slot and slot > 0) or f.block_number or f.block_hash then limit = math.huge end
  local rec = self._recorded
  if rec and slot == rec.slot and not f.block_hash and not f.block_number and not f.builder_pubkey then
    return 200, rec.body
  end
  local out = {}
  local function take(s)
    for _, b in ipairs(self:_bids(s)) do
      if #out < limit and matches(b, f) then out[#out + 1] = b end
    end
  end
  if slot and slot > 0 then
    take(slot)
  elseif f.block_number then
    take(f.block_number - BLOCK_OFFSET)
    if rec and rec.slot ~= f.block_number - BLOCK_OFFSET then take(rec.slot) end
  else
    local head = self:_head()
    for s = head, math.max(1, head - self._opts.scan + 1), -1 do
      take(s)
      if #out >= limit then break end
    end
  end
  return 200, encode_list(out, BID_FIELDS)
end

local ROUTES = { [PAYLOADS] = Mock._payloads, [BIDS] = Mock._builder_bids }

function Mock:_take_fault(path)
  for i, f in ipairs(self._faults) do
    if f.path == nil or f.path == path then
      f.left = f.left - 1
      if f.left <= 0 then table.remove(self._faults, i) end
      return f
    end
  end
end

-- The rate limit: nil to go on, or the seconds until the window ends.
function Mock:_limited()
  local n = self._opts.rate_limit
  if not n then return nil end
  local w = self._opts.rate_window
  local now = self._now()
  local window = floor(now / w)
  if window ~= self._window then self._window, self._used = window, 0 end
  self._used = self._used + 1
  if self._used <= n then return nil end
  return math.max(1, math.ceil((window + 1) * w - now))
end

local MESSAGES = { [429] = "too many requests", [500] = "internal server error",
  [502] = "bad gateway", [503] = "service unavailable", [504] = "gateway timeout" }

function Mock:_handle(req)
  local entry = { method = req.method, path = req.path, query = req.query }
  self.requests = self.requests + 1
  self.log[#self.log + 1] = entry
  local fault = self:_take_fault(req.path)
  if fault and fault.delay then sluice.sleep(fault.delay) end
  if fault and fault.abort then
    entry.status = "abort"
    req:abort()
    return
  end
  local status, body, retry_after
  local route = ROUTES[req.path]
  if fault and fault.status then
    status, retry_after = fault.status, fault.retry_after
    body = fault.body
    if not body then
      local _
      _, body = relay_error(status, MESSAGES[status] or ("HTTP " .. status))
    end
  elseif not route then
    status, body = relay_error(404, "not found")
  elseif req.method ~= "GET" then
    status, body = relay_error(405, "method not allowed")
  else
    retry_after = self:_limited()
    if retry_after then
      status, body = relay_error(429, MESSAGES[429])
    else
      status, body = route(self, req.query or {})
    end
  end
  entry.status = status
  local headers = { ["Content-Type"] = "application/json" }
  if retry_after then headers["Retry-After"] = fmt("%d", retry_after) end
  return status, body, headers
end

function Mock:answer(req)
  return self:_handle(req)
end

local FAULT = { status = { integer = true, min = 200, max = 599 }, count = "number",
  retry_after = "number", body = "string", delay = "number", abort = "boolean", path = "string" }

function Mock:inject(spec)
  if type(spec) ~= "table" then
    error("sluice.mock.mev_relay.inject: bad argument #1 'fault' (table expected, got " .. type(spec) .. ")", 2)
  end
  options.check("sluice.mock.mev_relay.inject", spec, FAULT)
  if not (spec.status or spec.abort or spec.delay) then
    error("sluice.mock.mev_relay.inject: a fault needs status, abort or delay", 2)
  end
  local f = {}
  for k, v in pairs(spec) do f[k] = v end
  f.left = spec.count or 1
  self._faults[#self._faults + 1] = f
  return self
end

function Mock:reset()
  self.requests, self.log, self._faults = 0, {}, {}
  self._window, self._used = nil, 0
  return self
end

function Mock:stop()
  return self._srv:close()
end

local OPTIONS = { host = "string", port = "number", name = "string", seed = "number",
  head = "number|function", share = { finite = true, min = 0, max = 1 }, forks = "table",
  scan = { integer = true, min = 1 }, fixtures = "string", rate_limit = { integer = true, min = 1 },
  rate_window = { finite = true, gt = 0 }, now = "function" }

function _M.start(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("sluice.mock.mev_relay.start: bad argument #1 'opts' (table expected, got " .. type(opts) .. ")", 2)
  end
  opts = options.check("sluice.mock.mev_relay.start", opts, OPTIONS) or {}
  local name = opts.name or "relay"
  local seed = opts.seed or 1
  local m = setmetatable({
    _opts = { name = name, head = opts.head or 6214300, share = opts.share or 0.6,
      forks = opts.forks or {}, scan = opts.scan or 10000, rate_limit = opts.rate_limit,
      rate_window = opts.rate_window or 1 },
    _seed = seed, _relay = str_hash(seed, "relay:" .. name),
    _recorded = opts.fixtures and load_fixtures(opts.fixtures) or nil,
    _now = opts.now or sluice.time,
  }, Mock)
  local srv, err = server.listen{ host = opts.host or "127.0.0.1", port = opts.port or 0 }
  if not srv then error("sluice.mock.mev_relay: " .. err, 2) end
  m._srv, m.port, m.url = srv, srv.port,
    "http://" .. (srv.host:find(":") and "[" .. srv.host .. "]" or srv.host) .. ":" .. srv.port
  m:reset()
  srv:route("*", "/*", function(req) return m:_handle(req) end)
  return m
end

return _M
