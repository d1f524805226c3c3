-- sluice.stream.book: the local order book and its sequence rules, without a
-- network: scripted Binance diff-depth and Bybit delta sequences, a dropped
-- event (the book invalidates, is not served, and resyncs from a new
-- snapshot), and at every step the book equals the one rebuilt from the
-- full sequence at the same update id.
local book = require "sluice.stream.book"

-- The reference: every event applied in order to a plain map, no rules.
local function truth_new() return { bids = {}, asks = {}, id = 0 } end

local function truth_apply(t, ev)
  for _, side in ipairs({ "bids", "asks" }) do
    for _, lv in ipairs(ev[side] or {}) do
      local p = tostring(tonumber(lv[1]))
      if tonumber(lv[2]) == 0 then t[side][p] = nil else t[side][p] = lv[2] end
    end
  end
  t.id = ev.last
end

local function truth_levels(t, side)
  local out = {}
  for p, s in pairs(t[side]) do out[#out + 1] = { p, s } end
  table.sort(out, function(a, b)
    if side == "bids" then return tonumber(a[1]) > tonumber(b[1]) end
    return tonumber(a[1]) < tonumber(b[1])
  end)
  return out
end

local function snapshot_of(t)
  return t.id, truth_levels(t, "bids"), truth_levels(t, "asks")
end

local function copy(t)
  local c = { bids = {}, asks = {}, id = t.id }
  for _, side in ipairs({ "bids", "asks" }) do
    for k, v in pairs(t[side]) do c[side][k] = v end
  end
  return c
end

-- the book's levels with prices as the reference writes them
local function levels_of(b)
  local top = assert(b:top())
  local out = { bids = {}, asks = {} }
  for _, side in ipairs({ "bids", "asks" }) do
    for i, lv in ipairs(top[side]) do out[side][i] = { tostring(tonumber(lv[1])), lv[2] } end
  end
  return out, top.id
end

-- A scripted sequence: event i moves prices around 100 and covers update
-- ids [10i + 1, 10i + 10] (Binance compresses several updates into one).
local function events(n)
  local out = {}
  for i = 1, n do
    local bid = string.format("%.2f", 99 - (i % 5) * 0.5)
    local ask = string.format("%.2f", 101 + (i % 4) * 0.5)
    out[i] = {
      first = 10 * i + 1, last = 10 * i + 10, prev = nil, ts = 1700000000000 + i,
      bids = { { bid, tostring(i) }, { "98.00", i % 3 == 0 and "0" or "1.5" } },
      asks = { { ask, tostring(i + 0.25) }, { "102.00", i % 4 == 0 and "0.00000000" or "2" } },
    }
  end
  return out
end

describe("sluice.stream.book", function()
  it("applies a snapshot and diffs exactly, best first, zero sizes removed", function()
    local b = book.new{ symbol = "BTC/USDT" }
    assert.same({ false, "no snapshot yet" }, { b:synced() })
    assert.same({ nil, "not synced: no snapshot yet" }, { b:top(5) })
    assert.is_true(b:snapshot(100, { { "64000.10", "1.000" }, { "64000.5", "2" }, { "63999", "3" } },
      { { "64001.00", "0.5" }, { "64002", "0.25" } }, 1700000000000))
    assert.equal("applied", b:update{ first = 99, last = 101, bids = { { "64000.50", "0" }, { "64000.2", "4" } },
      asks = { { "64001", "0.75" }, { "64003", "0" } } })
    assert.same({ bids = { { "64000.2", "4" }, { "64000.1", "1.000" }, { "63999", "3" } },
      asks = { { "64001", "0.75" }, { "64002", "0.25" } }, id = 101, ts = 1700000000000 }, b:top())
    assert.same({ bids = { { "64000.2", "4" } }, asks = { { "64001", "0.75" } }, id = 101, ts = 1700000000000 },
      b:top(1))
    assert.same({ "64000.2", "64001" }, { b:best() })
    local st = b:status()
    assert.equal("0.8", st.spread)
    assert.equal(101, st.last_update_id)
    assert.equal(3, st.bid_levels)
    assert.equal(2, st.ask_levels)
    assert.equal(1, st.updates)
  end)

  it("orders prices exactly where their doubles tie", function()
    local b = book.new()
    b:snapshot(1, { { "1.00000000000000000001", "1" }, { "1.00000000000000000002", "2" } },
      { { "2", "1" } })
    assert.same({ { "1.00000000000000000002", "2" }, { "1.00000000000000000001", "1" } }, b:top().bids)
  end)

  it("follows Binance: buffer, drop u <= lastUpdateId, the first straddles, then U == u + 1", function()
    local evs = events(8)
    local truth = truth_new()
    local b = book.new{ symbol = "BTC/USDT" }
    -- the stream opens before the snapshot: events 1..3 are buffered
    for i = 1, 3 do
      truth_apply(truth, evs[i])
      assert.equal("buffered", b:update(evs[i]))
    end
    -- the REST snapshot was taken in the middle of event 2 (lastUpdateId 25):
    -- event 1 is dropped, event 2 straddles (21 <= 26 <= 30) and is applied
    -- on a book that already has updates 21..25: absolute sizes make that
    -- right, as Binance says
    local at2 = truth_new()
    truth_apply(at2, evs[1]); truth_apply(at2, evs[2])
    local _, sb, sa = snapshot_of(at2)
    assert.is_true(b:snapshot(25, sb, sa))
    local st = b:status()
    assert.equal(1, st.stale)
    assert.equal(2, st.updates)
    local got, id = levels_of(b)
    assert.equal(40, id)
    assert.same({ bids = truth_levels(truth, "bids"), asks = truth_levels(truth, "asks") }, got)
    for i = 4, 8 do
      truth_apply(truth, evs[i])
      assert.equal("applied", b:update(evs[i]))
      got, id = levels_of(b)
      assert.equal(truth.id, id)
      assert.same({ bids = truth_levels(truth, "bids"), asks = truth_levels(truth, "asks") }, got)
    end
  end)

  it("a dropped event: gap, not served, resynced from a new snapshot; equal to the full sequence at every step", function()
    local evs = events(14)
    local truth = truth_new()
    local history = {} -- the reference at every update id an event ends on
    local b = book.new{ symbol = "BTC/USDT" }
    truth_apply(truth, evs[1])
    history[truth.id] = copy(truth)
    assert.is_true(b:snapshot(snapshot_of(truth)))
    local served, resynced, refused = 0, false, 0
    for i = 2, 14 do
      truth_apply(truth, evs[i])
      history[truth.id] = copy(truth)
      if i ~= 6 then -- event 6 never arrives
        local r, why = b:update(evs[i])
        if i == 7 then
          assert.is_nil(r)
          assert.equal("gap: book at update 60, event 71..80", why)
          assert.same({ false, why }, { b:synced() })
          assert.same({ nil, "not synced: " .. why }, { b:top() })
          assert.same({ nil, "not synced: " .. why }, { b:best() })
          assert.equal(1, b:status().resyncs)
        elseif i == 8 or i == 9 then
          -- the stream goes on while the new snapshot is fetched: buffered
          assert.equal("buffered", r)
          if i == 9 then
            -- the new snapshot: taken at event 8's end (update 90)
            local h = history[90]
            assert.is_true(b:snapshot(h.id, truth_levels(h, "bids"), truth_levels(h, "asks")))
            resynced = true
          end
        else
          assert.equal("applied", r, why)
        end
      end
      if b:synced() then
        local got, id = levels_of(b)
        local h = history[id]
        assert.same({ bids = truth_levels(h, "bids"), asks = truth_levels(h, "asks") }, got)
        served = served + 1
      else
        refused = refused + 1
      end
    end
    assert.is_true(resynced)
    assert.equal(2, refused)   -- events 7 and 8: known wrong, then incomplete
    assert.equal(11, served)
    local got, id = levels_of(b)
    assert.equal(truth.id, id)
    assert.same({ bids = truth_levels(truth, "bids"), asks = truth_levels(truth, "asks") }, got)
    assert.equal(1, b:status().resyncs)
    assert.equal(2, b:status().snapshots)
  end)

  it("follows Binance futures' pu: each event's pu is the previous u", function()
    local b = book.new()
    b:snapshot(100, { { "10", "1" } }, { { "11", "1" } })
    assert.equal("applied", b:update{ first = 95, last = 105, prev = 94, bids = {}, asks = {} })
    assert.equal("applied", b:update{ first = 106, last = 110, prev = 105, bids = {}, asks = {} })
    assert.same({ nil, "gap: book at update 110, event 111..112 (prev 109)" },
      { b:update{ first = 111, last = 112, prev = 109, bids = {}, asks = {} } })
  end)

  it("follows Bybit: snapshot then deltas u + 1; a new snapshot (u = 1 after a restart) replaces the book", function()
    local b = book.new{ symbol = "BTC/USDT:USDT" }
    -- a delta before any snapshot waits; the snapshot makes it stale
    assert.equal("buffered", b:update{ first = 7, last = 7, bids = { { "1", "1" } }, asks = {} })
    assert.is_true(b:snapshot(8, { { "17440.00", "40.833" } }, { { "17440.50", "78.815" } }))
    assert.equal(1, b:status().stale)
    assert.equal("applied", b:update{ first = 9, last = 9, bids = {}, asks = { { "17440.50", "78.857" } } })
    assert.same({ { "17440.5", "78.857" } }, b:top().asks)
    -- a repeated delta is stale; a skipped one is a gap
    assert.equal("stale", b:update{ first = 9, last = 9, bids = {}, asks = {} })
    assert.same({ nil, "gap: book at update 9, event 11..11" }, { b:update{ first = 11, last = 11, bids = {}, asks = {} } })
    assert.is_false(b:synced())
    assert.is_true(b:snapshot(1, { { "17000", "1" } }, { { "17001", "2" } }))
    assert.equal("applied", b:update{ first = 2, last = 2, bids = { { "17000", "0" } }, asks = {} })
    assert.same({ bids = {}, asks = { { "17001", "2" } }, id = 2 }, b:top())
  end)

  it("Bybit: a snapshot on the stream after a service restart (u = 1) syncs a book holding older deltas", function()
    local b = book.new{ symbol = "BTC/USDT:USDT" }
    assert.is_true(b:snapshot(500, { { "100", "1" } }, { { "101", "1" } }, nil, { stream = true }))
    assert.same({ nil, "gap: book at update 500, event 502..502" }, { b:update{ first = 502, last = 502, bids = {}, asks = {} } })
    -- unsynced: the next deltas wait for a snapshot
    assert.equal("buffered", b:update{ first = 503, last = 503, bids = { { "99", "1" } }, asks = {} })
    assert.equal("buffered", b:update{ first = 504, last = 504, bids = {}, asks = {} })
    -- the service restarted: its snapshot starts again at u = 1, after the buffered deltas
    assert.is_true(b:snapshot(1, { { "200", "3" } }, { { "201", "4" } }, nil, { stream = true }))
    assert.is_true(b:synced())
    assert.equal("applied", b:update{ first = 2, last = 2, bids = { { "199", "5" } }, asks = {} })
    assert.same({ bids = { { "200", "3" }, { "199", "5" } }, asks = { { "201", "4" } }, id = 2 }, b:top())
    assert.equal(2, b:status().stale)
  end)

  it("invalidates a crossed book rather than serve it", function()
    local b = book.new()
    b:snapshot(1, { { "10", "1" } }, { { "11", "1" } })
    assert.same({ nil, "crossed book: best bid 11 >= best ask 11" },
      { b:update{ first = 2, last = 2, bids = { { "11", "1" } }, asks = {} } })
    assert.same({ nil, "not synced: crossed book: best bid 11 >= best ask 11" }, { b:top() })
    assert.same({ nil, "snapshot: crossed book: best bid 12 >= best ask 11" },
      { b:snapshot(5, { { "12", "1" } }, { { "11", "1" } }) })
  end)

  it("bounds the buffer before a snapshot", function()
    local b = book.new{ max_buffer = 2 }
    for i = 1, 3 do b:update{ first = i, last = i, bids = {}, asks = {} } end
    assert.equal(1, b:status().buffered)
  end)

  it("refuses misuse", function()
    assert.has_error(function() book.new{ max_buffer = -1 } end,
      "sluice.stream.book.new: option 'max_buffer' must be an integer >= 0")
    local b = book.new()
    assert.has_error(function() b:update{ first = "x", last = 1 } end,
      "sluice.stream.book: event field 'first' must be a number")
    assert.has_error(function() b:snapshot(1, { { "1" } }, {}) end,
      "sluice.stream.book: bids[1] is not a [price, size] pair")
  end)
end)
