-- mev_relays (sluice.mev) against sluice.mock.mev_relay: the relay Data
-- API's recorded traces stored exactly, cursor paging backwards, error
-- bodies as verdicts, six relays with one down (its own breaker opens, the
-- merged per-slot view fills from the others), and the mock's protocol.
local http = require "sluice.http"
local json = require "sluice.json"
local bignum = require "sluice.bignum"
local store = require "sluice.store"
local collector = require "sluice.collector"
local backfill = require "sluice.backfill"
local breaker = require "sluice.breaker"
local limiter = require "sluice.limiter"
local operator = require "sluice.operator"
local metrics = require "sluice.metrics"
local log = require "sluice.log"
local mev = require "sluice.mev"
local mock = require "sluice.mock.mev_relay"

local FIXTURE = "tests/fixtures/mev-relays/builder_blocks_received_slot_6214255.json"
local PAYLOADS = "/relay/v1/data/bidtraces/proposer_payload_delivered"
local BIDS = "/relay/v1/data/bidtraces/builder_blocks_received"
local FIELDS = { "slot", "parent_hash", "block_hash", "builder_pubkey", "proposer_pubkey",
  "proposer_fee_recipient", "gas_limit", "gas_used", "value", "num_tx", "block_number" }

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local function recorded()
  return assert(json.decode(read(FIXTURE))).response
end

-- A stored row's field as the API's decimal string.
local function text(v)
  if type(v) == "number" then return string.format("%d", v) end
  return tostring(v)
end

-- The stored row r equals trace t, every field (value as value_wei).
local function assert_trace(t, r, relay)
  assert.equal(relay, r.relay)
  for _, k in ipairs(FIELDS) do
    assert.equal(t[k], text(r[k == "value" and "value_wei" or k]), k)
  end
end

local spec = mev.spec()

-- An instance on relays {name = mock} (a list of {name, mock}) into db.
local function instance(relays, db, over)
  local list = {}
  for i, r in ipairs(relays) do list[i] = { name = r[1], url = r[2].url } end
  local o = { relays = list, retry = { strategy = "exponential", max_attempts = 3, base_delay = 0.01,
    max_delay = 0.02, budget = false }, limiter = { rate = 1000, max_rate = 1000, burst = 100 } }
  for k, v in pairs(over or {}) do o[k] = v end
  return collector.new(spec, o, { store = db })
end

describe("mev_relays", function()
  setup(function() log.output("/dev/null") end)
  teardown(function() log.output("-") end)

  it("stores the recorded bid traces exactly, and the delivered one as the slot's payload", function()
    local m = mock.start({ name = "flashbots", head = 6214255, fixtures = FIXTURE })
    local db = assert(store.open(":memory:"))
    finally(function() m:stop(); db:close() end)
    local c = instance({ { "flashbots", m } }, db, { limit = 1, builder_bids = true })
    local ok, n = c:run_once()
    assert.is_true(ok, n)
    local rec = recorded()
    assert.equal(100, #rec)
    -- the delivered payload: the recorded bid of the highest value
    local best = rec[1]
    for _, t in ipairs(rec) do if bignum.cmp(t.value, best.value) > 0 then best = t end end
    assert.equal("41833000007137365", best.value)
    local p = db:select("mev_payloads")
    assert.equal(1, #p)
    assert_trace(best, p[1], "flashbots")
    assert.equal("0x5bdd2027305805234853f4e3346f7eb9cfb0397de66b458033b122faa57312a4", p[1].block_hash)
    -- every recorded bid, every field, digit for digit
    local bids = db:select("mev_builder_bids")
    assert.equal(100, #bids)
    local by = {}
    for _, b in ipairs(bids) do by[b.block_hash .. "/" .. text(b.timestamp_ms)] = b end
    for _, t in ipairs(rec) do
      local b = assert(by[t.block_hash .. "/" .. t.timestamp_ms], t.block_hash)
      assert_trace(t, b, "flashbots")
      assert.equal(t.timestamp, text(b.timestamp))
      assert.equal(t.timestamp_ms, text(b.timestamp_ms))
    end
    -- the merged view
    local s = db:select("mev_slots")
    assert.equal(1, #s)
    assert.same({ slot = 6214255, block_number = 17039004, relays = '["flashbots"]', relay_count = 1,
      block_hash = best.block_hash, builder_pubkey = best.builder_pubkey, value_wei = "41833000007137365",
      value_eth = "0.041833000007137365", mev_intensity = "low", gas_used = 12487022, gas_limit = 30000000,
      gas_utilization = "41.6234", block_hashes = '["' .. best.block_hash .. '"]', disagreement = 0,
      updated_at = s[1].updated_at }, s[1])
    -- one payload request, one bids request for the slot it delivered
    assert.equal(2, #m.log)
    assert.equal(PAYLOADS, m.log[1].path)
    assert.equal("1", m.log[1].query.limit)
    assert.same({ BIDS, "6214255" }, { m.log[2].path, m.log[2].query.slot })
  end)

  it("backfills a slot range paging backwards with cursor: each page once, the window exact", function()
    local m = mock.start({ name = "flashbots", head = 6214300 })
    local db = assert(store.open(":memory:"))
    finally(function() m:stop(); db:close() end)
    local c = instance({ { "flashbots", m } }, db, { page_size = 5 })
    local from, to = 6214201, 6214260
    local st = backfill.wait(backfill.start({ collector = c, from = from, to = to }))
    assert.equal("done", st.state)
    -- the pages the relay should have been asked for, from its own answers
    local want, cursor = {}, to - 1
    while cursor >= from do
      want[#want + 1] = string.format("%d", cursor)
      local got, lowest = 0, nil
      for s = cursor, cursor - 10000, -1 do
        if m:delivered(s) then got, lowest = got + 1, s end
        if got == 5 then break end
      end
      cursor = lowest - 1
    end
    local asked = {}
    for i, e in ipairs(m.log) do
      assert.equal(PAYLOADS, e.path)
      assert.equal("5", e.query.limit)
      assert.is_nil(e.query.slot)
      asked[i] = e.query.cursor
    end
    assert.same(want, asked)
    assert.is_true(#asked >= 4, tostring(#asked))
    -- exactly the slots of [from, to) the relay delivered, each field as served
    local expect = {}
    for s = from, to - 1 do
      if m:delivered(s) then expect[#expect + 1] = s end
    end
    local rows = db:select("mev_payloads", "ORDER BY slot")
    assert.equal(#expect, #rows)
    for i, r in ipairs(rows) do
      assert.equal(expect[i], r.slot)
      assert_trace(m:delivered(expect[i]), r, "flashbots")
    end
    assert.equal(#expect, #db:select("mev_slots"))
    -- the edges: the relay delivered slots on both sides of the range
    assert.is_true(db:query("SELECT MIN(slot) AS lo, MAX(slot) AS hi FROM mev_payloads")[1].lo >= from)
    assert.is_true(db:query("SELECT MIN(slot) AS lo, MAX(slot) AS hi FROM mev_payloads")[1].hi < to)
  end)

  it("reads the relay's error bodies: 400 not retried, 429 throttled, 5xx retried", function()
    local m = mock.start({ name = "flashbots", head = 6214300 })
    local db = assert(store.open(":memory:"))
    finally(function() m:stop(); db:close() end)
    local c = instance({ { "flashbots", m } }, db, { limit = 3 })
    local cb, lim = c:target("flashbots")
    -- a real 400 of the relay, its message in the error
    local data, err, kind = c:get(m.url .. PAYLOADS, { query = { limit = 201 }, target = "flashbots" })
    assert.same({ nil, "HTTP 400: maximum limit is 200", "failure" }, { data, err, kind })
    assert.equal(1, #m.log)
    data, err = c:get(m.url .. PAYLOADS, { query = { slot = 5, cursor = 6 }, target = "flashbots" })
    assert.same({ nil, "HTTP 400: cannot specify both slot and cursor" }, { data, err })
    assert.equal(2, #m.log)
    assert.equal(2, cb:status().failure_count)
    cb:reset()
    -- 429: the limiter backs off, the request is retried
    m:reset()
    m:inject({ status = 429, retry_after = 0 })
    local ok, n = c:run_once()
    assert.is_true(ok, n)
    assert.equal(2, #m.log)
    assert.same({ 429, 200 }, { m.log[1].status, m.log[2].status })
    assert.equal(1, lim:stats().total_violations)
    -- 503 twice: retried, the third answer stored
    m:reset()
    m:inject({ status = 503, count = 2 })
    ok, n = c:run_once()
    assert.is_true(ok, n)
    assert.same({ 503, 503, 200 }, { m.log[1].status, m.log[2].status, m.log[3].status })
    assert.equal(3, #db:select("mev_payloads"))
  end)

  it("six relays, one down: its breaker opens, the others' rows and the merged view fill", function()
    local names = { "flashbots", "ultrasound", "bloxroute_max_profit", "bloxroute_regulated", "agnostic", "aestus" }
    local mocks, relays = {}, {}
    -- agnostic delivered a block of its own at one slot the others delivered too
    local fork
    local probe = mock.start({ name = "flashbots", head = 6214300 })
    for s = 6214300, 6214200, -1 do
      if probe:delivered(s) then fork = s; break end
    end
    probe:stop()
    for i, name in ipairs(names) do
      mocks[name] = mock.start({ name = name, head = 6214300,
        forks = name == "agnostic" and { [fork] = true } or nil })
      relays[i] = { name, mocks[name] }
    end
    local db = assert(store.open(":memory:"))
    finally(function()
      for _, name in ipairs(names) do if name ~= "ultrasound" then mocks[name]:stop() end end
      db:close()
    end)
    local c = instance(relays, db, { limit = 10 })
    -- ultrasound is down: connection refused
    mocks.ultrasound:stop()
    local ok, err = c:run_once()
    assert.is_false(ok)
    assert.matches("^relays failed: ultrasound: ", err)
    assert.is_nil(err:find("flashbots", 1, true))
    local ucb = c:target("ultrasound")
    assert.equal("open", ucb:state())
    for _, name in ipairs(names) do
      if name ~= "ultrasound" then assert.equal("closed", (c:target(name)):state(), name) end
    end
    -- each live relay's newest 10 payloads, as served
    local per_slot = {}
    for _, name in ipairs(names) do
      if name ~= "ultrasound" then
        local page = {}
        for s = 6214300, 6204300, -1 do
          if mocks[name]:delivered(s) then page[#page + 1] = s end
          if #page == 10 then break end
        end
        local rows = db:select("mev_payloads", "WHERE relay = ? ORDER BY slot DESC", name)
        assert.equal(10, #rows, name)
        for i, r in ipairs(rows) do
          assert.equal(page[i], r.slot)
          assert_trace(mocks[name]:delivered(page[i]), r, name)
          per_slot[page[i]] = per_slot[page[i]] or {}
          local t = mocks[name]:delivered(page[i])
          per_slot[page[i]][#per_slot[page[i]] + 1] = { name, t }
        end
      end
    end
    assert.equal(0, #db:select("mev_payloads", "WHERE relay = 'ultrasound'"))
    -- the merged view: one row per slot any live relay delivered, naming
    -- the relays that delivered the winning block
    local slots = db:select("mev_slots", "ORDER BY slot DESC")
    local n = 0
    for _ in pairs(per_slot) do n = n + 1 end
    assert.equal(n, #slots)
    local rich = 0
    for _, row in ipairs(slots) do
      local list = per_slot[row.slot]
      local best
      for _, e in ipairs(list) do
        if not best or bignum.cmp(e[2].value, best.value) > 0 then best = e[2] end
      end
      local who, hashes = {}, {}
      for _, e in ipairs(list) do
        if e[2].block_hash == best.block_hash then who[#who + 1] = e[1] end
        hashes[e[2].block_hash] = true
      end
      table.sort(who)
      assert.equal(json.encode(json.array(who)), row.relays)
      assert.equal(#who, row.relay_count)
      assert.is_nil(row.relays:find("ultrasound", 1, true))
      assert.equal(best.value, row.value_wei)
      assert.equal(bignum.scale(best.value, -18), row.value_eth)
      assert.equal(best.builder_pubkey, row.builder_pubkey)
      local nh = 0
      for _ in pairs(hashes) do nh = nh + 1 end
      assert.equal(nh > 1 and 1 or 0, row.disagreement)
      if bignum.cmp(best.value, "18446744073709551616") >= 0 then
        rich = rich + 1
        assert.equal("high", row.mev_intensity)
      end
      assert.equal(bignum.div(bignum.mul(best.gas_used, 100), best.gas_limit, 4), row.gas_utilization)
    end
    -- the fork: agnostic's own block next to the others'
    local f = db:select("mev_slots", "WHERE slot = ?", fork)[1]
    assert.equal(1, f.disagreement)
    local hs = json.decode(f.block_hashes)
    assert.equal(2, #hs)
    -- the views name each relay's breaker and limiter
    local ops = operator.new({ current = function() return { order = { c }, collectors = { mev_relays = c } } end })
    local bs, ls = ops:breakers(), ops:limiters()
    for _, name in ipairs(names) do
      assert.truthy(bs["mev_relays." .. name], name)
      assert.truthy(ls["mev_relays." .. name], name)
    end
    assert.equal("open", bs["mev_relays.ultrasound"].state)
    assert.equal("closed", bs["mev_relays.flashbots"].state)
    assert.is_nil(bs.mev_relays)
    local st = ops:status().collectors.mev_relays
    assert.same({ breaker = "mev_relays.ultrasound", state = "open", limiter = "mev_relays.ultrasound",
      rate = st.targets.ultrasound.rate }, st.targets.ultrasound)
    assert.equal("closed", st.targets.aestus.state)
    assert.equal("degraded", c:health())
    local text_ = metrics.render()
    assert.truthy(text_:find('sluice_breaker_state{breaker="mev_relays.ultrasound",state="open"} 1', 1, true))
    assert.truthy(text_:find('sluice_limiter_rate{limiter="mev_relays.flashbots"}', 1, true))
    assert.is_true(breaker.get("mev_relays.titan") == nil and limiter.get("mev_relays.aestus") ~= nil)
    -- the next run: ultrasound is refused by its open breaker at once, the others answer
    for _, name in ipairs(names) do if name ~= "ultrasound" then mocks[name]:reset() end end
    ok, err = c:run_once()
    assert.is_false(ok)
    assert.matches("^relays failed: ultrasound: circuit breaker mev_relays.ultrasound is open", err)
    assert.equal(1, #mocks.flashbots.log)
  end)

  it("resolves presets and refuses bad relay entries", function()
    local r = mev.relays({ "flashbots", "titan", { name = "mine", url = "https://relay.example/" } })
    assert.same({ { name = "flashbots", url = "https://boost-relay.flashbots.net" },
      { name = "titan", url = "https://titanrelay.xyz" }, { name = "mine", url = "https://relay.example" } }, r)
    assert.has_error(function() mev.relays({ "nope" }) end)
    assert.has_error(function() mev.relays({ "flashbots", "flashbots" }) end)
    assert.has_error(function() mev.relays({ { name = "x" } }) end)
    assert.equal("low", mev.intensity("0.0499", { intensity_medium = "0.05", intensity_high = "0.5" }))
    assert.equal("medium", mev.intensity("0.05", { intensity_medium = "0.05", intensity_high = "0.5" }))
    assert.equal("high", mev.intensity("5.2", { intensity_medium = "0.05", intensity_high = "0.5" }))
    assert.equal("37.3633", mev.utilization("11208998", "30000000"))
  end)
end)

describe("sluice.mock.mev_relay", function()
  local m
  before_each(function() m = mock.start({ name = "flashbots", head = 6214300, fixtures = FIXTURE }) end)
  after_each(function() m:stop() end)

  local function get(path, query)
    local res = assert(http.get(m.url .. path, { query = query }))
    return res.status, res.body, res
  end

  it("answers builder_blocks_received for the recorded slot byte for byte", function()
    local status, body = get(BIDS, { slot = 6214255 })
    assert.equal(200, status)
    local raw = read(FIXTURE)
    local s = raw:find('"response"', 1, true)
    local list = raw:sub(raw:find("[", s, true), raw:find("\n ]", s, true) + 2)
    assert.equal((list:gsub("%s", "")), body)
    assert.same(recorded(), json.decode(body))
  end)

  it("answers the relay's errors and a 429 over its rate", function()
    local cases = {
      { PAYLOADS, { slot = 1, cursor = 2 }, "cannot specify both slot and cursor" },
      { PAYLOADS, { slot = "x" }, "invalid slot argument" },
      { PAYLOADS, { cursor = "1.5" }, "invalid cursor argument" },
      { PAYLOADS, { limit = "-1" }, "invalid limit argument" },
      { PAYLOADS, { limit = 201 }, "maximum limit is 200" },
      { PAYLOADS, { block_hash = "0x12" }, "invalid block_hash argument" },
      { PAYLOADS, { builder_pubkey = "0x12" }, "invalid builder_pubkey argument" },
      { BIDS, { slot = 6214255, cursor = 1 }, "cursor argument not supported" },
      { BIDS, {}, "need to query for specific slot or block_hash or block_number or builder_pubkey" },
      { BIDS, { builder_pubkey = "0x" .. string.rep("0", 96), limit = 501 }, "maximum limit is 500" },
    }
    for _, k in ipairs(cases) do
      local status, body = get(k[1], k[2])
      assert.equal(400, status, k[3])
      assert.equal('{"code":400,"message":"' .. k[3] .. '"}\n', body)
    end
    m:stop()
    local t = 1000.2
    m = mock.start({ name = "flashbots", head = 6214300, rate_limit = 2, now = function() return t end })
    assert.equal(200, (get(PAYLOADS, { limit = 1 })))
    assert.equal(200, (get(PAYLOADS, { limit = 1 })))
    local status, body, res = get(PAYLOADS, { limit = 1 })
    assert.same({ 429, '{"code":429,"message":"too many requests"}\n', "1" },
      { status, body, res.headers["retry-after"] })
    t = 1001.0
    assert.equal(200, (get(PAYLOADS, { limit = 1 })))
  end)

  it("serves newest first, the cursor inclusive, values beyond 2^64 as decimal strings", function()
    local _, body = get(PAYLOADS, { cursor = 6214280, limit = 200 })
    local list = json.decode(body)
    assert.equal(200, #list)
    local prev, big = math.huge, 0
    for _, t in ipairs(list) do
      local s = tonumber(t.slot)
      assert.is_true(s < prev and s <= 6214280)
      prev = s
      assert.equal("string", type(t.value))
      if bignum.cmp(t.value, "18446744073709551616") >= 0 then big = big + 1 end
      assert.is_nil(t.timestamp)
    end
    assert.is_true(big > 0)
    -- the recorded slot's delivered payload: the highest recorded bid, no timestamps
    local _, one = get(PAYLOADS, { slot = 6214255 })
    local d = json.decode(one)[1]
    assert.equal("41833000007137365", d.value)
    assert.is_nil(d.timestamp_ms)
    local _, by_number = get(PAYLOADS, { block_number = 17039004 })
    assert.same({ "6214255" }, { json.decode(by_number)[1].slot })
  end)
end)
