-- book.lua -- the local order book's update apply rate, and messages/s
-- through a whole stream collector, each next to an anchor measured in the
-- same run.
--   sluice run --lua-path tests/lua tests/bench/book.lua [-- UPDATES MESSAGES ROUNDS]
-- 1. UPDATES (100000) Binance depthUpdate diffs on a 1,000-level book (1-4
--    levels changed a side: a size changed, a level added or removed, now
--    and then a removal of a level the book never had), made up front as
--    JSON text: lua-cjson decoding each (the anchor), sluice.json decoding
--    each (exact), sluice.stream.book applying the decoded events
--    (updates/s), and all of a message's work: decode, the protocol's
--    parse, apply.
-- 2. MESSAGES (100000) diffs of the mock exchange (support/exchange_ws.py,
--    a 1,000-level Binance book, frames built before the first is written)
--    read by sluice.ws with sluice.json.decode (tests/bench/ws.lua's raw
--    figure), then by the shipped binance_stream collector (ws + decode +
--    parse + book, its snapshot from the mock's REST) until its book is at
--    the last update id. Best of ROUNDS (3) for each.
local sluice = require "sluice"
local ws = require "sluice.ws"
local json = require "sluice.json"
local cjson = require "cjson"
local book = require "sluice.stream.book"
local binance = require "sluice.stream.binance"
local collector = require "sluice.collector"
local mockmod = require "support.exchange_ws"

local arg1, arg2, arg3 = ...
io.stdout:setvbuf("line")
local updates = tonumber(arg1) or 100000
local messages = tonumber(arg2) or 100000
local rounds = tonumber(arg3) or 3

-- --- 1. the book alone ------------------------------------------------------

local seed = 20
local function rand(n) -- deterministic: 1..n
  seed = (seed * 1103515245 + 12345) % 2147483648
  return seed % n + 1
end

local LEVELS, MID = 1000, 3000000 -- ticks of 0.01
local function price(t) return ("%d.%02d000000"):format(math.floor(t / 100), t % 100) end
local function size() local q = rand(50000); return ("%d.%03d00000"):format(math.floor(q / 1000), q % 1000) end

local truth = { bids = {}, asks = {} }
for i = 1, LEVELS do
  truth.bids[MID - i] = size()
  truth.asks[MID + i] = size()
end
local function side_list(s, desc)
  local ps = {}
  for p in pairs(truth[s]) do ps[#ps + 1] = p end
  table.sort(ps, function(a, b) if desc then return a > b end return a < b end)
  local out = {}
  for i, p in ipairs(ps) do out[i] = { price(p), truth[s][p] } end
  return out
end
local snap_bids, snap_asks = side_list("bids", true), side_list("asks", false)

local function changes(s, sign)
  local out, seen, keys = {}, {}, nil
  for _ = 1, rand(4) do
    local r = rand(100)
    local p
    if r <= 30 then -- remove an existing level
      keys = keys or (function() local k = {} for q in pairs(truth[s]) do k[#k + 1] = q end return k end)()
      p = keys[rand(#keys)]
      if not seen[p] and truth[s][p] then truth[s][p] = nil; out[#out + 1] = { price(p), "0.00000000" } end
    elseif r <= 40 then -- remove one the book never had
      p = MID + sign * (2 * LEVELS + rand(LEVELS))
      if not seen[p] then out[#out + 1] = { price(p), "0.00000000" } end
    else -- change or add near the top
      p = MID + sign * rand(r <= 75 and LEVELS or 2 * LEVELS)
      if not seen[p] then truth[s][p] = size(); out[#out + 1] = { price(p), truth[s][p] } end
    end
    if p then seen[p] = true end
  end
  return out
end

local texts, id0 = {}, 7000000000
local id = id0
for i = 1, updates do
  local b, a = changes("bids", -1), changes("asks", 1)
  local first = id + 1
  id = id + rand(5)
  texts[i] = cjson.encode({ stream = "btcusdt@depth@100ms", data = { e = "depthUpdate", E = 1700000000000 + i,
    s = "BTCUSDT", U = first, u = id, b = b, a = a } })
end
local bytes = 0
for _, t in ipairs(texts) do bytes = bytes + #t end

local function timed(fn)
  collectgarbage()
  local t0, c0 = sluice.now(), os.clock()
  fn()
  return sluice.now() - t0, os.clock() - c0
end

local best = {}
local function keep(who, n, secs, cpu)
  local r = n / secs
  if not best[who] or r > best[who].rate then best[who] = { rate = r, cpu = cpu / n * 1e5 } end
end

for r = 1, rounds do
  keep("cjson", updates, timed(function() for i = 1, updates do cjson.decode(texts[i]) end end))
  keep("sluice.json", updates, timed(function() for i = 1, updates do json.decode(texts[i]) end end))
  local events = {}
  for i = 1, updates do events[i] = binance.parse(texts[i])[1] end
  local b = book.new{ symbol = "BTC/USDT" }
  b:snapshot(id0, snap_bids, snap_asks)
  keep("apply", updates, timed(function()
    for i = 1, updates do assert(b:update(events[i]) == "applied") end
  end))
  assert(b:top(1).id == id, "the book did not end at the last update")
  b = book.new{ symbol = "BTC/USDT" }
  b:snapshot(id0, snap_bids, snap_asks)
  keep("message", updates, timed(function()
    for i = 1, updates do assert(b:update(binance.parse(texts[i])[1]) == "applied") end
  end))
  local top = b:top()
  for _, s in ipairs { "bids", "asks" } do
    local want = side_list(s, s == "bids")
    assert(#top[s] == #want, "the book is not the true one")
    for i, lv in ipairs(want) do
      assert(mockmod.canon(lv[1]) == top[s][i][1] and lv[2] == top[s][i][2], "the book is not the true one")
    end
  end
  io.write(("round %d: apply %.0f updates/s, cjson %.0f/s\n"):format(r, best.apply.rate, best.cjson.rate))
end

print(("%d depthUpdate diffs of %.0f bytes on a %d-level book (%d levels at the end), best of %d rounds:"):format(
  updates, bytes / updates, LEVELS, #snap_bids, rounds))
local LABEL = {
  cjson = "lua-cjson decode (anchor)", ["sluice.json"] = "sluice.json decode (exact)",
  apply = "book:update, decoded events", message = "decode + parse + book:update",
}
for _, who in ipairs { "cjson", "sluice.json", "apply", "message" } do
  local x = best[who]
  print(("  %-34s %10.0f /s  %6.2f CPU s per 100,000  (%.2fx cjson)"):format(LABEL[who], x.rate, x.cpu,
    x.rate / best.cjson.rate))
  if who ~= "cjson" then
    require("support.bench").figure("book." .. who:gsub("%.", "_") .. "_vs_cjson", x.rate / best.cjson.rate, "ratio")
  end
end

-- --- 2. through the stream --------------------------------------------------

local mock = mockmod.start{ levels = LEVELS }
local function flood()
  return mock:control("flood", { ex = "binance", symbol = "BTCUSDT", kind = "depth", messages = messages,
    prebuild = 1 }, 600)
end
local function subs(key) return mock:control("state").subscriptions[key] or 0 end

local function raw_round()
  local c = assert(ws.connect(mock:ws() .. "/ws/btcusdt@depth@100ms", { max_message = 2 ^ 20 }))
  -- this connection alone (the last round's has gone)
  while subs("binance:btcusdt@depth@100ms") ~= 1 do sluice.sleep(0.01) end
  local done
  local t = sluice.spawn(function() done = flood() end)
  local got, t0, c0 = 0, nil, nil
  while got < messages do
    local m = assert(c:receive(60))
    if not t0 then t0, c0 = sluice.now(), os.clock() end
    json.decode(m)
    got = got + 1
  end
  local secs, cpu = sluice.now() - t0, os.clock() - c0
  sluice.wait(t)
  assert(done and done.messages == messages)
  c:close()
  return got, secs, cpu
end

local function collector_round()
  local c = collector.new(require("collectors.binance_stream"), { symbols = { "BTC/USDT" }, trades = false,
    ws_url = mock:ws(), base_url = mock:base(), limiter = false, book_interval = 3600 }, {})
  c:start()
  local function st() return c:stats().stream end
  while not (st() and st().connected and subs("binance:btcusdt@depth@100ms") == 1) do sluice.sleep(0.01) end
  -- a first diff: the book fetches its snapshot (1,000 levels)
  local step = mock:control("step", { ex = "binance", symbol = "BTCUSDT", diffs = 1 })
  while not (st().books["BTC/USDT"] and st().books["BTC/USDT"].last_update_id == step.id) do sluice.sleep(0.01) end
  local m0 = st().messages
  local done
  local t = sluice.spawn(function() done = flood() end)
  while st().messages == m0 do sluice.sleep(0.001) end
  local t0, c0 = sluice.now(), os.clock()
  while not (done and st().books["BTC/USDT"].last_update_id == done.id) do sluice.sleep(0.002) end
  local secs, cpu = sluice.now() - t0, os.clock() - c0
  sluice.wait(t)
  local b = st().books["BTC/USDT"]
  assert(b.synced and b.resyncs == 0, "the book resynced during the flood")
  local n = st().messages - m0
  c:stop()
  return n, secs, cpu
end

for r = 1, rounds do
  keep("ws", raw_round())
  keep("collector", collector_round())
  io.write(("round %d: ws %.0f/s, collector %.0f/s\n"):format(r, best.ws.rate, best.collector.rate))
end
mock:stop()
print(("%d mock diffs (1,000-level Binance book), best of %d rounds:"):format(messages, rounds))
print(("  %-34s %10.0f messages/s  %6.2f CPU s per 100,000"):format("sluice.ws receive + sluice.json.decode",
  best.ws.rate, best.ws.cpu))
print(("  %-34s %10.0f messages/s  %6.2f CPU s per 100,000  (%.2fx the raw rate)"):format(
  "binance_stream (ws + decode + book)", best.collector.rate, best.collector.cpu, best.collector.rate / best.ws.rate))
require("support.bench").figure("book.stream_collector_vs_ws", best.collector.rate / best.ws.rate, "ratio")
